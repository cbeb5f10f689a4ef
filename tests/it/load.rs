//! `msgd load send` against a real server: it sends what it says and its
//! report adds up.

use crate::support::api::Api;
use crate::support::{backend_test, Backend};

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_send_reports_what_it_sent(backend: Backend) {
        let api = Api::start(backend).await;
        let base_url = format!("http://{}", api.msgd.addr);
        let ws: &[&str] = &["--via", "ws", "--window", "8"];
        for (batch, concurrency, via) in [("1", "4", &[][..]), ("10", "2", &[]), ("1", "4", ws)] {
            let args = [
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
                ];
            let out = api.env.run(&[&args[..], via].concat(), "");
            assert_eq!(out.code, 0, "{backend:?} {via:?}: {}", out.stderr);
            let report = out.json();
            assert_eq!(report["messages"], 105, "{report}");
            assert_eq!(report["errors"], 0);
            assert_eq!(report["requests"], if batch == "1" { 105 } else { 11 });
            assert!(report["latency_ms_p99"].as_f64().unwrap() >= report["latency_ms_p50"].as_f64().unwrap());
            // Each acknowledged message is in the conversation once.
            let conversation = api.conv_key(report["conversation_id"].as_str().unwrap());
            let entries = api.stores().await.tail.read(&conversation, 0, 1000).await.unwrap();
            assert_eq!(entries.len(), 105, "{backend:?} {via:?}");
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

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_run_receivers_see_every_message_once_through_a_reconnect_storm(backend: Backend) {
        let limits = [
            ("MSGD_LIMITS__USER_RATE", "100000"),
            ("MSGD_LIMITS__USER_BURST", "100000"),
            ("MSGD_LIMITS__KEY_RATE", "100000"),
            ("MSGD_LIMITS__KEY_BURST", "100000"),
        ];
        let api = Api::start_with(backend, &limits).await;
        let base_url = format!("http://{}", api.msgd.addr);
        let scenario = api.env.dir.path().join("scenario.toml");
        std::fs::write(
            &scenario,
            "users = 4\nconversations = 2\nreceivers = 2\n\
             [[phases]]\nname = \"ramp\"\nduration = \"1s\"\nrate = 20\nrate_to = 200\n\
             [[phases]]\nname = \"storm\"\nduration = \"1s\"\nrate = 100\nreconnect = true\n",
        )
        .unwrap();
        let scenario = scenario.to_str().unwrap();
        let run = |extra: &[&str]| {
            let mut args = vec!["load", "run", "--base-url", &base_url, "--api-key", &api.admin_key, "--json"];
            args.extend_from_slice(extra);
            api.env.run(&args, "")
        };
        let steady = ["--rate", "300", "--duration", "1s", "--batch", "10", "--users", "3", "--conversations", "3"];
        // (arguments, reconnects: the storm brings back each of the 2 × 2 receivers once)
        for (extra, storms) in [(&["--scenario", scenario][..], 4), (&["--scenario", scenario, "--via", "ws"], 4), (&steady, 0)] {
            let out = run(extra);
            assert_eq!(out.code, 0, "{backend:?} {extra:?}: {}\n{}", out.stderr, out.stdout);
            let report = out.json();
            let acked = report["acked"].as_u64().unwrap();
            assert!(acked > 0 && report["sent"].as_u64() == Some(acked), "{report}");
            assert_eq!(report["expected_frames"].as_u64(), Some(acked * 2), "two receivers each: {report}");
            assert_eq!(report["received_frames"], report["expected_frames"], "{report}");
            assert_eq!((report["gaps"].as_u64(), report["duplicates"].as_u64()), (Some(0), Some(0)), "{report}");
            assert_eq!(report["reconnects"].as_u64(), Some(storms), "every receiver came back once: {report}");
            // Reported in whole CPU seconds by the server's process collector: 0 is possible in 2 s.
            assert!(report["server_cpu_share"].as_f64().is_some(), "{report}");
            assert!(report["server_rss_bytes"].as_u64().is_some_and(|rss| rss > 1 << 20), "{report}");
        }
        // The flag that does not fit is refused, not ignored.
        let out = run(&["--via", "ws", "--batch", "5"]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("--batch applies to HTTP"), "{}", out.stderr);

        // The small commands: a token, what it says, a conversation to send into.
        let token = api.env.run(&["load", "token", "--base-url", &base_url, "--api-key", &api.admin_key, "--user", "ann"], "");
        assert_eq!(token.code, 0, "{}", token.stderr);
        let token = token.stdout.trim().to_string();
        let whoami = api.env.run(&["load", "whoami", "--token", &token, "--json"], "");
        assert_eq!((whoami.json()["sub"].as_str(), whoami.json()["aud"].as_str()), (Some("ann"), Some(api.app_id.as_str())));
        assert_eq!(api.env.run(&["load", "whoami", "--token", "not-a-jwt"], "").code, 2);
        let created = api.env.run(
            &["load", "create-conversation", "--base-url", &base_url, "--api-key", &api.admin_key, "--members", "ann,bo", "--json"],
            "",
        );
        let conversation = created.json()["id"].as_str().unwrap().to_string();
        let sent = api.env.run(
            &[
                "load", "send", "--base-url", &base_url, "--api-key", &api.admin_key, "--conversation-id", &conversation,
                "--token", &token, "--count", "5", "--concurrency", "1", "--delay", "1ms", "--json",
            ],
            "",
        );
        assert_eq!(sent.code, 0, "{}", sent.stderr);
        assert_eq!(sent.json()["conversation_id"].as_str(), Some(conversation.as_str()));
        let history = api
            .request(
                reqwest::Method::GET,
                &format!("/v1/conversations/{conversation}/messages"),
                Some(&api.admin_key),
                Some(&token),
                None,
                &[],
            )
            .await;
        let senders: Vec<&str> =
            history.body["messages"].as_array().unwrap().iter().map(|m| m["sender"]["id"].as_str().unwrap()).collect();
        assert_eq!(senders, ["ann"; 5], "{backend:?}: sent as the token's user");
    }
}
