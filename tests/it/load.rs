//! `msgd load send` against a real server: it sends what it says and its
//! report adds up.

use crate::support::api::Api;
use crate::support::{backend_test, Backend};

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_send_reports_what_it_sent(backend: Backend) {
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

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_reports_why_requests_failed_the_conversation_and_server_rss(backend: Backend) {
        // One message a second per user, a burst of 3: a load run meets the limiter at once.
        let api = Api::start_with(backend, &[("MSGD_LIMITS__USER_RATE", "1"), ("MSGD_LIMITS__USER_BURST", "3")]).await;
        let base_url = format!("http://{}", api.msgd.addr);
        let send = |extra: &[&str]| {
            let mut args = vec!["load", "send", "--base-url", &base_url, "--api-key", &api.admin_key, "--users", "1"];
            args.extend_from_slice(extra);
            api.env.run(&args, "")
        };

        // The table names the conversation `load history` needs.
        let out = send(&["--count", "2", "--concurrency", "1"]);
        assert_eq!(out.code, 0, "{backend:?}: {}", out.stderr);
        let shown =
            out.stdout.split(|c: char| c == '│' || c.is_whitespace()).find(|t| uuid::Uuid::parse_str(t).is_ok());
        assert!(shown.is_some(), "{backend:?}: no conversation id in\n{}", out.stdout);

        for extra in
            [&["--count", "12", "--concurrency", "1", "--json"][..], &["--count", "12", "--batch", "4", "--json"][..]]
        {
            let out = send(extra);
            assert_eq!(out.code, 1, "{backend:?} {extra:?}: {}", out.stdout);
            let report = out.json();
            let limited = report["failures"]["429 rate_limited"].as_u64().unwrap_or(0);
            assert!(limited >= 1, "{backend:?} {extra:?}: {report}");
            let failures: u64 = report["failures"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
            assert_eq!(report["errors"].as_u64(), Some(failures), "{report}");
            assert_eq!(
                report["messages"].as_u64().unwrap() + failures,
                12,
                "every message is acked or failed: {report}"
            );
            assert!(out.stderr.contains("429 rate_limited"), "{}", out.stderr);
            assert!(out.stderr.contains("limits.user_rate"), "the way out is named: {}", out.stderr);
            assert!(
                report["latency_ms_p50"].as_f64().unwrap().to_string().split('.').nth(1).is_none_or(|d| d.len() <= 3),
                "{report}"
            );
        }

        let out = api.env.run(
            &[
                "load",
                "ws-idle",
                "--base-url",
                &base_url,
                "--api-key",
                &api.admin_key,
                "--connections",
                "3",
                "--hold",
                "100ms",
                "--json",
            ],
            "",
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let report = out.json();
        assert_eq!(report["connections"], 3, "{report}");
        assert!(report["server_rss_bytes_held"].as_u64().unwrap() > 1 << 20, "{backend:?}: {report}");
        assert!(report["rss_bytes_per_connection"].is_u64(), "{report}");
    }
}
