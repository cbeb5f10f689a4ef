//! `msgd serve` as a real process: readiness on both backends, readiness
//! through real dependency outages, metrics, errors and shutdown.

use std::time::Duration;

use crate::support::servers::{PrivatePostgres, PrivateRedis};
use crate::support::{backend_test, eventually, sample, services_test, Backend, Msgd, ServicesEnv, TestEnv};

async fn get(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

backend_test! {
    #[tokio::test]
    async fn serve_is_ready_and_exports_metrics_by_route_template(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let msgd = env.serve();
        let (status, body) = get(&msgd.url("/readyz")).await;
        assert_eq!(status, 200, "{backend:?}: {body}");
        assert_eq!(body["status"], "ready");
        let names: Vec<_> = body["dependencies"].as_object().unwrap().keys().cloned().collect();
        let expected = match backend {
            Backend::Embedded => ["filesystem", "sqlite", "tail"],
            Backend::Services => ["postgres", "redis", "s3"],
        };
        assert_eq!(names, expected);
        assert!(body["dependencies"]["sqlite"].get("latency_ms").is_some() || backend == Backend::Services);

        assert_eq!(get(&msgd.url("/healthz")).await.0, 200);
        let (status, body) = get(&msgd.url("/v1/conversations/123e4567/nothing")).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "not_found");

        let metrics = reqwest::get(msgd.url("/metrics")).await.unwrap().text().await.unwrap();
        assert!(
            metrics.contains(r#"msgd_http_requests_total{method="GET",route="/readyz",status="200"} 1"#),
            "{metrics}"
        );
        assert!(metrics.contains(r#"route="unmatched",status="404""#), "unmatched paths share one label");
        assert!(!metrics.contains("123e4567"), "raw paths never become labels");
        assert!(metrics.contains("msgd_http_request_duration_seconds_bucket"));
        assert!(metrics.contains("msgd_process_resident_memory_bytes"));
        assert!(metrics.contains(r#"msgd_dependency_up{dependency="#));
        let boot_steps: Vec<_> = msgd.log_lines().iter().filter_map(|l| l["step"].as_str().map(String::from)).collect();
        assert!(boot_steps.starts_with(&["config".into(), "stores".into()]), "{boot_steps:?}");
    }
}

backend_test! {
    #[tokio::test]
    async fn sigterm_exits_0_within_the_deadline(backend: Backend) {
        let mut env = TestEnv::new(backend).await;
        env.set("MSGD_HTTP__SHUTDOWN_TIMEOUT", "5s");
        let mut msgd = env.serve();
        assert_eq!(get(&msgd.url("/readyz")).await.0, 200);
        msgd.signal("TERM");
        let status = msgd.wait_exit(Duration::from_secs(5)).expect("exits within the deadline");
        assert_eq!(status.code(), Some(0), "{}", msgd.log_text());
        assert!(msgd.log_lines().iter().any(|l| l["message"] == "stopped"));
    }
}

/// Stops and restarts a real dependency under a running `msgd serve`.
async fn outage(env: &TestEnv, dependency: &str, stop: impl FnOnce(), resume: impl FnOnce()) -> Msgd {
    let mut msgd = env.serve();
    assert_eq!(get(&msgd.url("/readyz")).await.0, 200, "{}", msgd.log_text());

    stop();
    let down = eventually(Duration::from_secs(10), async || {
        let (status, body) = get(&msgd.url("/readyz")).await;
        status == 503
            && body["dependencies"][dependency]["ok"] == false
            && body["dependencies"][dependency]["error"].is_string()
    })
    .await;
    assert!(down, "/readyz did not report {dependency} down:\n{}", msgd.log_text());
    assert_eq!(get(&msgd.url("/healthz")).await.0, 200, "still alive while not ready");

    resume();
    let up = eventually(Duration::from_secs(20), async || get(&msgd.url("/readyz")).await.0 == 200).await;
    assert!(up, "/readyz did not recover after {dependency} returned:\n{}", msgd.log_text());
    assert!(msgd.still_running(), "serve never exits on an outage");
    let logged = eventually(Duration::from_secs(5), async || {
        msgd.log_lines().iter().any(|l| l["message"] == "dependency recovered" && l["dependency"] == dependency)
    })
    .await;
    assert!(logged, "the watcher logs the recovery:\n{}", msgd.log_text());
    msgd
}

/// The value of the series `series` (name and labels as printed) in a scrape.
async fn scraped(msgd: &Msgd, series: &str) -> Option<f64> {
    let text = reqwest::get(msgd.url("/metrics")).await.ok()?.text().await.ok()?;
    sample(&text, series)
}

services_test! {
    #[tokio::test]
    async fn readiness_follows_a_real_redis_outage(services: ServicesEnv) {
        let mut env = TestEnv::new(Backend::Services).await;
        let redis = std::sync::Mutex::new(PrivateRedis::start(&services.redis_server));
        env.set("MSGD_REDIS__URL", &redis.lock().unwrap().url());
        // A flush tick every second, so the outage shows as failing ticks.
        env.set("MSGD_FLUSH__INTERVAL", "1s");
        let msgd = outage(&env, "redis", || redis.lock().unwrap().stop(), || redis.lock().unwrap().resume()).await;
        // "Ticks but fails" is told apart from "never ticks": a warning per failed tick, and a counter.
        redis.lock().unwrap().stop();
        let failed_tick = || {
            msgd.log_lines().into_iter().find(|l| {
                l["message"] == "tick failed; backing off" && l["worker"] == "segment-flush" && l["success"] == false
            })
        };
        let failed = eventually(Duration::from_secs(15), async || failed_tick().is_some()).await;
        redis.lock().unwrap().resume();
        assert!(failed, "no failed tick logged:\n{}", msgd.log_text());
        let failed = failed_tick().unwrap();
        assert!(failed["error.message"].is_string() && failed["tick-id"].is_string(), "{failed}");
        let errors = scraped(&msgd, "msgd_worker_steps_total{result=\"error\",worker=\"segment-flush\"}").await;
        assert!(errors >= Some(1.0), "{errors:?}");
        // The stats worker reads Redis' memory once Redis is back.
        let polled = eventually(Duration::from_secs(20), async || {
            scraped(&msgd, "msgd_redis_memory_used_bytes").await > Some(0.0)
        })
        .await;
        assert!(polled, "Redis memory never polled");
    }
}

services_test! {
    #[tokio::test]
    async fn readiness_follows_a_real_postgres_outage_and_migrates_when_it_returns(services: ServicesEnv) {
        let mut env = TestEnv::new(Backend::Services).await;
        let postgres = PrivatePostgres::start(&services.pg_bin);
        env.set("MSGD_POSTGRES__URL", &postgres.url());
        let _ = outage(&env, "postgres", || postgres.stop(), || postgres.resume()).await;

        // Started while Postgres is down: not ready, then ready with the schema applied.
        postgres.stop();
        let msgd = env.serve();
        let (status, body) = get(&msgd.url("/readyz")).await;
        assert_eq!(status, 503, "{body}");
        postgres.resume();
        let up = eventually(Duration::from_secs(20), async || get(&msgd.url("/readyz")).await.0 == 200).await;
        assert!(up, "{}", msgd.log_text());
        let out = env.run(&["keys", "create-app", "after-outage", "--json"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
}

backend_test! {
    #[tokio::test]
    async fn bad_dependencies_are_named_never_panicked(backend: Backend) {
        match backend {
            Backend::Embedded => an_unwritable_data_dir_is_named().await,
            Backend::Services => bad_services_are_named().await,
        }
    }
}

/// An unwritable data dir stops embedded serve with the path in the message.
async fn an_unwritable_data_dir_is_named() {
    let mut env = TestEnv::new(Backend::Embedded).await;
    let blocker = env.dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    env.set("MSGD_DATA_DIR", &blocker.join("data").display().to_string());
    let out = env.run(&["serve"], "");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("data dir") && out.stderr.contains(&blocker.display().to_string()), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
}

/// Wrong S3 credentials and an unreachable Postgres are named, never panicked on.
async fn bad_services_are_named() {
    // Wrong credentials: serve runs, /readyz names the problem. (A missing bucket
    // is created: segments::a_missing_bucket_is_created_and_flushed_into.)
    for (var, value, expected) in [("MSGD_S3__SECRET_ACCESS_KEY", "wrong-secret", "SignatureDoesNotMatch")] {
        let mut env = TestEnv::new(Backend::Services).await;
        env.set(var, value);
        let msgd = env.serve();
        let (status, body) = get(&msgd.url("/readyz")).await;
        assert_eq!(status, 503);
        let error = body["dependencies"]["s3"]["error"].as_str().unwrap();
        assert!(error.contains(expected), "{error}");
    }
    // Unreachable Postgres: one-shot commands fail fast with the (redacted) URL.
    let mut env = TestEnv::new(Backend::Services).await;
    let port = crate::support::free_port();
    env.set("MSGD_POSTGRES__URL", &format!("postgres://msgd:topsecret@127.0.0.1:{port}/msgd"));
    env.set("MSGD_POSTGRES__CONNECT_TIMEOUT", "1s");
    let out = env.run(&["keys", "list"], "");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("127.0.0.1:{port}")) && !out.stderr.contains("topsecret"), "{}", out.stderr);
}

backend_test! {
    #[tokio::test]
    async fn habitual_signals_are_logged_and_ignored(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let mut msgd = env.serve();
        // SIGHUP reloads the logging settings (tests/it/logging.rs).
        for signal in ["USR1", "USR2"] {
            msgd.signal(signal);
            let logged = eventually(Duration::from_secs(5), async || {
                msgd.log_lines().iter().any(|l| {
                    l["message"] == "signal ignored: it has no meaning for msgd yet"
                        && l["signal"] == format!("SIG{signal}")
                })
            })
            .await;
            assert!(logged, "{backend:?}: SIG{signal} not logged:\n{}", msgd.log_text());
            assert!(msgd.still_running(), "{backend:?}: SIG{signal} killed serve:\n{}", msgd.log_text());
            assert_eq!(get(&msgd.url("/healthz")).await.0, 200, "{backend:?}: after SIG{signal}");
        }
        // SIGTERM still stops it cleanly.
        msgd.signal("TERM");
        let status = msgd.wait_exit(Duration::from_secs(10)).expect("exits");
        assert_eq!(status.code(), Some(0), "{}", msgd.log_text());
    }
}

backend_test! {
    #[tokio::test]
    async fn text_logs_to_a_file_carry_no_colour_codes(backend: Backend) {
        let mut env = TestEnv::new(backend).await;
        env.set("MSGD_OBSERVABILITY__LOGGING__FORMAT", "text");
        let log = env.dir.path().join("serve-text.log");
        let mut child = env
            .command(&["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn msgd serve");
        let listening = eventually(Duration::from_secs(30), async || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("listening")
        })
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(listening, "{backend:?}: serve did not listen:\n{text}");
        assert!(!text.contains('\x1b'), "{backend:?}: ANSI escape codes in a log file:\n{text:?}");
        assert!(text.contains("INFO") && text.contains("component=boot"), "{backend:?}: still text logs:\n{text}");
    }
}

services_test! {
    #[tokio::test]
    async fn a_refused_postgres_is_named_at_once_with_its_address_never_its_password(_: ServicesEnv) {
        let mut env = TestEnv::new(Backend::Services).await;
        let port = crate::support::free_port();
        env.set("MSGD_POSTGRES__URL", &format!("postgres://msgd@127.0.0.1:{port}/msgd?password=topsecret"));
        // Longer than /readyz's own 2 s bound and than the test waits: the cause
        // must come from the refused connection, not from a timeout.
        env.set("MSGD_POSTGRES__CONNECT_TIMEOUT", "30s");
        let msgd = env.serve();
        let (status, body) = get(&msgd.url("/readyz")).await;
        assert_eq!(status, 503, "{body}");
        let error = body["dependencies"]["postgres"]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.to_lowercase().contains("connection refused"), "{error}");
        assert!(error.contains(&format!("127.0.0.1:{port}")) && !error.contains("topsecret"), "{error}");
        let log = msgd.log_text();
        assert!(log.to_lowercase().contains("connection refused") && !log.contains("topsecret"), "{log}");

        // One-shot commands say the same.
        let out = env.run(&["keys", "list"], "");
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.to_lowercase().contains("connection refused"), "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("127.0.0.1:{port}")) && !out.stderr.contains("topsecret"),
            "{}",
            out.stderr
        );
    }
}
