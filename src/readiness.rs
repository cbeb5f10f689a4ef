//! Dependency readiness: the checks behind `/readyz`, `msgd flush`'s
//! pre-flight and the dependency watcher. It sits below `http` and `server`
//! so both use it without using each other.
//!
//! Every check records the dependency metrics and logs each change of state
//! once (down, then recovered), whoever ran it. msgd starts even when a
//! dependency is down: the watcher keeps checking, and a check that reaches
//! Postgres again applies pending migrations, so no restart is needed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::store::{DependencyStatus, Stores};
use crate::telemetry::Metrics;
use crate::worker::{Worker, WorkerState};

/// How long one dependency may take to answer a readiness check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the dependency watcher re-checks every dependency.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Dependency readiness, shared by `/readyz` and the watcher.
pub struct Readiness {
    stores: Stores,
    metrics: Metrics,
    /// The last known state of each dependency; absent before the first check.
    last: Mutex<HashMap<&'static str, bool>>,
    /// Counts recoveries (a dependency down, then up again), so workers
    /// backing off after failures retry at once instead of waiting out up to
    /// a minute of backoff.
    recoveries: watch::Sender<u64>,
}

impl Readiness {
    pub fn new(stores: Stores, metrics: Metrics) -> Readiness {
        Readiness { stores, metrics, last: Mutex::default(), recoveries: watch::Sender::new(0) }
    }

    /// Changes each time a dependency recovers.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    pub async fn check(&self, timeout: Duration) -> Vec<DependencyStatus> {
        let checks = self.stores.check(timeout).await;
        let mut last = self.last.lock().expect("readiness lock");
        for check in &checks {
            self.metrics.dependency_up.with_label_values(&[check.name]).set(i64::from(check.ok));
            self.metrics
                .dependency_check_duration_seconds
                .with_label_values(&[check.name])
                .set(check.latency_ms / 1000.0);
            let previous = last.insert(check.name, check.ok);
            if previous == Some(false) && check.ok {
                self.recoveries.send_modify(|n| *n += 1);
            }
            log_change(check, previous);
        }
        checks
    }
}

/// Logs a check's result against the dependency's previous state: at info or
/// warn when it changed (or on the first check), at debug otherwise.
fn log_change(check: &DependencyStatus, previous: Option<bool>) {
    let error = check.error.as_deref().unwrap_or("");
    match (previous, check.ok) {
        (None, true) => tracing::info!(
            component = "readiness",
            dependency = check.name,
            "latency-ms" = check.latency_ms,
            "dependency ok"
        ),
        (None, false) => tracing::warn!(
            component = "readiness",
            dependency = check.name,
            error,
            "dependency down; serving not-ready until it returns"
        ),
        (Some(true), false) => {
            tracing::warn!(component = "readiness", dependency = check.name, error, "dependency down")
        }
        (Some(false), true) => tracing::info!(
            component = "readiness",
            dependency = check.name,
            "latency-ms" = check.latency_ms,
            "dependency recovered"
        ),
        _ => tracing::debug!(component = "readiness", dependency = check.name, ok = check.ok, "dependency checked"),
    }
}

/// The worker that keeps the dependency gauges current, so an outage is
/// logged and visible in metrics without anyone polling `/readyz` (and
/// migrations are applied when Postgres returns).
pub struct DependencyWatcher {
    readiness: Arc<Readiness>,
}

impl DependencyWatcher {
    pub fn new(readiness: Arc<Readiness>) -> DependencyWatcher {
        DependencyWatcher { readiness }
    }
}

#[async_trait]
impl Worker for DependencyWatcher {
    fn name(&self) -> &'static str {
        "dependency-watcher"
    }

    fn component(&self) -> &'static str {
        "readiness"
    }

    fn interval(&self) -> Option<Duration> {
        Some(WATCH_INTERVAL)
    }

    async fn work(&mut self) -> anyhow::Result<WorkerState> {
        self.readiness.check(CHECK_TIMEOUT).await;
        Ok(WorkerState::Idle)
    }
}
