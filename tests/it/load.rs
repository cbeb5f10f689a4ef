//! `msgd load send` against a real server: it sends what it says and its
//! report adds up.

use crate::api::Api;
use crate::support::backends;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_send_reports_what_it_sent() {
    for backend in backends() {
        let api = Api::start(backend).await;
        let base_url = format!("http://{}", api.msgd.addr);
        for (batch, concurrency) in [("1", "4"), ("10", "2")] {
            let out = api.env.run(
                &["load", "send", "--base-url", &base_url, "--api-key", &api.admin_key, "--count", "105", "--concurrency", concurrency, "--batch", batch, "--users", "3", "--json"],
                "",
            );
            assert_eq!(out.code, 0, "{backend:?}: {}", out.stderr);
            let report = out.json();
            assert_eq!(report["messages"], 105, "{report}");
            assert_eq!(report["errors"], 0);
            assert_eq!(report["requests"], if batch == "1" { 105 } else { 11 });
            assert!(report["latency_ms_p99"].as_f64().unwrap() >= report["latency_ms_p50"].as_f64().unwrap());
        }
        // A server without dev tokens is a clear failure, not a hang.
        let out = api.env.run(&["load", "send", "--base-url", &base_url, "--api-key", "msgd_sk_bad", "--count", "1", "--json"], "");
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("dev token"), "{}", out.stderr);
    }
}
