//! `[observability.logging]` on a real `msgd serve`: SIGHUP puts a new
//! logging section in force (and a bad file changes nothing), the worker
//! runner's tick lines and summaries, component selection, and sampling that
//! says so on every kept line.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::api::Api;
use crate::support::{backend_test, eventually, sample, scrape, Backend, Msgd, TestEnv};

/// The value of the metric series `series` (name and labels as printed) in a scrape.
async fn metric(msgd: &Msgd, series: &str) -> Option<f64> {
    sample(&scrape(msgd).await, series)
}

fn lines_where(msgd: &Msgd, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    msgd.log_lines().into_iter().filter(|line| pick(line)).collect()
}

fn tick_starts(msgd: &Msgd, worker: &str) -> usize {
    lines_where(msgd, |l| l["message"] == "tick start" && l["worker"] == worker).len()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the config file");
}

backend_test! {
    #[tokio::test]
    async fn sighup_puts_the_logging_section_in_force_and_a_bad_file_changes_nothing(backend: Backend) {
        let mut env = TestEnv::new(backend).await;
        // Both workers tick every second or two, so their debug lines come quickly.
        env.set("MSGD_FLUSH__INTERVAL", "1s");
        let path = env.dir.path().join("msgd.toml");
        write(&path, "[observability.logging]\nlevel = \"info\"\n");
        let msgd = Msgd::start(env.command(&["--config", path.to_str().unwrap(), "serve"]), env.dir.path());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(tick_starts(&msgd, "dependency-watcher"), 0, "{backend:?}: debug lines at level info");

        // Debug, but only for the readiness component: the watcher's ticks show, the flush's do not.
        write(&path, "[observability.logging]\nlevel = \"debug\"\ncomponents = [\"readiness\"]\n");
        msgd.signal("HUP");
        let reloaded = eventually(Duration::from_secs(10), async || {
            !lines_where(&msgd, |l| l["message"] == "logging settings reloaded").is_empty()
                && tick_starts(&msgd, "dependency-watcher") >= 2
        })
        .await;
        assert!(reloaded, "{backend:?}: no reload:\n{}", msgd.log_text());
        let tick = &lines_where(&msgd, |l| l["message"] == "tick start" && l["worker"] == "dependency-watcher")[0];
        for field in ["tick-id", "tick-scheduled-at", "tick-started-at", "ts"] {
            assert!(tick[field].is_string(), "{backend:?}: {field} missing from {tick}");
        }
        assert_eq!((tick["component"].as_str(), tick["level"].as_str()), (Some("readiness"), Some("debug")));
        // Lines inside a tick carry the tick's worker and id (the runner's span).
        let inside = lines_where(&msgd, |l| l["message"] == "dependency checked");
        assert!(inside.iter().any(|l| l["tick-id"].is_string() && l["worker"] == "dependency-watcher"), "{inside:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(tick_starts(&msgd, "segment-flush"), 0, "{backend:?}: components = [readiness] lets flush debug in");

        // A file that does not check is refused whole; the debug lines keep coming.
        write(&path, "[observability.logging]\nlevel = \"info\"\nbogus = 1\n");
        msgd.signal("HUP");
        let refused = eventually(Duration::from_secs(10), async || {
            lines_where(&msgd, |l| l["message"] == "config reload refused; the running settings stay")
                .iter()
                .any(|l| l["level"] == "error" && l["error.message"].as_str().is_some_and(|m| m.contains("bogus")))
        })
        .await;
        assert!(refused, "{backend:?}: bad file not refused:\n{}", msgd.log_text());
        let before = tick_starts(&msgd, "dependency-watcher");
        let still = eventually(Duration::from_secs(10), async || tick_starts(&msgd, "dependency-watcher") > before).await;
        assert!(still, "{backend:?}: the refused file changed the settings");

        // Another section that changed is named: it needs a restart.
        write(&path, "[observability.logging]\nlevel = \"info\"\n[history]\nblock_cache_bytes = 1048576\n");
        msgd.signal("HUP");
        let named = eventually(Duration::from_secs(10), async || {
            lines_where(&msgd, |l| l["restart-needed"] == "history" && l["level"] == "warn").len() == 1
        })
        .await;
        assert!(named, "{backend:?}: restart not asked for:\n{}", msgd.log_text());
        assert_eq!(metric(&msgd, "msgd_config_reloads_total{result=\"ok\"}").await, Some(2.0));
        assert_eq!(metric(&msgd, "msgd_config_reloads_total{result=\"error\"}").await, Some(1.0));
    }
}

backend_test! {
    #[tokio::test]
    async fn sampled_lines_say_so_and_workers_report_that_they_tick(backend: Backend) {
        let api = Api::start_with(
            backend,
            &[
                ("MSGD_OBSERVABILITY__LOGGING__ACCESS", "true"),
                ("MSGD_OBSERVABILITY__LOGGING__SAMPLING__ENABLED", "true"),
                ("MSGD_OBSERVABILITY__LOGGING__SAMPLING__PER_COMPONENT__ACCESS", "0.25"),
                ("MSGD_OBSERVABILITY__LOGGING__TICKER__TICK_LOG_INTERVAL", "1s"),
            ],
        )
        .await;
        let before = lines_where(&api.msgd, |l| l["component"] == "access").len();
        for _ in 0..40 {
            let reply = reqwest::get(api.msgd.url("/healthz")).await.expect("healthz");
            assert_eq!(reply.status(), 200);
        }
        let access = || lines_where(&api.msgd, |l| l["component"] == "access");
        let written = eventually(Duration::from_secs(5), async || access().len() >= before + 10).await;
        assert!(written, "{backend:?}: {} access lines", access().len());
        let kept = access().len() - before;
        assert!((10..=11).contains(&kept), "{backend:?}: a quarter of 40 requests, got {kept}");
        for line in access() {
            assert_eq!((line["sampled"].as_bool(), line["sample-rate"].as_f64()), (Some(true), Some(0.25)), "{line}");
        }
        let dropped = metric(&api.msgd, "msgd_log_lines_sampled_out_total").await.unwrap_or(0.0);
        assert!(dropped >= 30.0, "{backend:?}: {dropped} lines counted as sampled out");

        // "Never ticks" and "ticks but fails" look different: each worker says how it ticks.
        let summary = eventually(Duration::from_secs(10), async || {
            lines_where(&api.msgd, |l| l["message"] == "worker ticking" && l["worker"] == "dependency-watcher")
                .iter()
                .any(|l| l["ticks"].as_u64() >= Some(1) && l["failures"] == 0 && l["next-tick-at"].is_string())
        })
        .await;
        assert!(summary, "{backend:?}: no worker summary:\n{}", api.msgd.log_text());
        let steps = metric(&api.msgd, "msgd_worker_steps_total{result=\"ok\",worker=\"dependency-watcher\"}").await;
        assert!(steps >= Some(1.0), "{backend:?}: worker steps {steps:?}");
    }
}
