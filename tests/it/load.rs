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
                &[
                    "load",
                    "send",
                    "--base-url",
                    &base_url,
                    "--api-key",
                    &api.admin_key,
                    "--count",
                    "105",
                    "--concurrency",
                    concurrency,
                    "--batch",
                    batch,
                    "--users",
                    "3",
                    "--json",
                ],
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
        let out = api
            .env
            .run(&["load", "send", "--base-url", &base_url, "--api-key", "msgd_sk_bad", "--count", "1", "--json"], "");
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("dev token"), "{}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_history_and_ws_fanout_report_what_they_did() {
    let api = Api::start(crate::support::Backend::Embedded).await;
    let base_url = format!("http://{}", api.msgd.addr);
    let sent = api.env.run(
        &[
            "load",
            "send",
            "--base-url",
            &base_url,
            "--api-key",
            &api.admin_key,
            "--count",
            "120",
            "--users",
            "2",
            "--json",
        ],
        "",
    );
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let conversation = sent.json()["conversation_id"].as_str().unwrap().to_string();
    let out = api.env.run(
        &[
            "load",
            "history",
            "--base-url",
            &base_url,
            "--api-key",
            &api.admin_key,
            "--conversation-id",
            &conversation,
            "--requests",
            "20",
            "--limit",
            "10",
            "--after-to",
            "100",
            "--json",
        ],
        "",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!((out.json()["requests"].as_u64(), out.json()["errors"].as_u64()), (Some(20), Some(0)));
    let out = api.env.run(
        &[
            "load",
            "ws-fanout",
            "--base-url",
            &base_url,
            "--api-key",
            &api.admin_key,
            "--clients",
            "6",
            "--conversations",
            "3",
            "--messages",
            "5",
            "--rate",
            "200",
            "--json",
        ],
        "",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(
        (report["messages_sent"].as_u64(), report["frames_received"].as_u64()),
        (Some(15), Some(30)),
        "{report}"
    );
}
