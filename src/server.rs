//! `serve` as a boot script: one log line per step, then the HTTP server and
//! the background workers until shutdown, which is a parameter.
//!
//! msgd starts even when a dependency is down: it reports not-ready on
//! `/readyz` and the dependency watcher brings it back (including applying
//! migrations once Postgres answers) without a restart.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::http::{self, AppState};
use crate::store::{DependencyStatus, Stores};
use crate::telemetry::Metrics;

/// How often the dependency watcher re-checks every dependency.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Dependency readiness, shared by `/readyz` and the watcher: every check
/// records the metrics and logs each change of state once (down, then
/// recovered), whoever ran it.
pub struct Readiness {
    stores: Stores,
    metrics: Metrics,
    /// The last known state of each dependency; absent before the first check.
    last: Mutex<HashMap<&'static str, bool>>,
}

impl Readiness {
    pub fn new(stores: Stores, metrics: Metrics) -> Readiness {
        Readiness { stores, metrics, last: Mutex::default() }
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
            let error = check.error.as_deref().unwrap_or("");
            match (last.insert(check.name, check.ok), check.ok) {
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
                _ => tracing::debug!(
                    component = "readiness",
                    dependency = check.name,
                    ok = check.ok,
                    "dependency checked"
                ),
            }
        }
        checks
    }
}

/// How `serve` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every in-flight request finished within the deadline.
    Clean,
    /// The deadline passed with work still in flight.
    DeadlineExceeded,
}

/// Runs the server until `shutdown` resolves, then drains for at most
/// `http.shutdown_timeout`.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<Exit> {
    let boot = Instant::now();
    tracing::info!(component = "boot", step = "config", backend = config.backend.name(), data_dir = %config.data_dir.display(), "config loaded");

    let metrics = Metrics::new(config.backend.name());
    let stores = Stores::open(&config, &metrics).await?;
    tracing::info!(
        component = "boot",
        step = "stores",
        backend = stores.backend,
        objects = stores.objects.location(),
        "stores opened"
    );

    let readiness = Arc::new(Readiness::new(stores.clone(), metrics.clone()));
    let ready = readiness.check(http::CHECK_TIMEOUT).await.iter().all(|check| check.ok);
    tracing::info!(component = "boot", step = "dependencies", ready, "dependencies checked");

    let max_connections = http::listener::fit_to_file_limit(config.http.max_connections);
    let bounds = http::listener::Bounds { max_connections, header_read_timeout: config.http.header_read_timeout };

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    let addr = listener.local_addr()?;
    let deadline = config.http.shutdown_timeout;

    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Context::new(Arc::new(config), stores, metrics)?);
    tracing::info!(
        component = "boot",
        step = "auth",
        keycloak = ctx.config.auth.keycloak.is_some(),
        dev_tokens = ctx.config.auth.dev_tokens.enabled,
        "auth ready"
    );
    let state = AppState::new(ctx.clone(), readiness.clone(), stop_rx.clone());
    let server_metrics = ctx.metrics.clone();
    let watcher = tokio::spawn(watch_dependencies(readiness, stop_rx.clone()));
    let flusher = crate::flush::Flusher::new(ctx.stores.clone(), ctx.metrics.clone(), ctx.config.flush.clone());
    let flush = tokio::spawn(crate::flush::run(flusher, stop_rx.clone()));
    let membership_stop = stop_rx.clone();
    let membership = tokio::spawn(async move { ctx.membership.listen(membership_stop).await });

    let server =
        tokio::spawn(http::listener::serve(listener, http::router(state), bounds, server_metrics, stop_rx.clone()));
    tracing::info!(component = "boot", step = "listen", addr = %addr, "duration-ms" = boot.elapsed().as_millis() as u64, "listening");

    shutdown.await;
    tracing::info!(component = "shutdown", "deadline-ms" = deadline.as_millis() as u64, "shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(deadline, async {
        let served = server.await;
        let _ = watcher.await;
        let _ = membership.await;
        let _ = flush.await;
        served
    })
    .await;
    match drained {
        Ok(Ok(())) => {
            tracing::info!(component = "shutdown", "stopped");
            Ok(Exit::Clean)
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the HTTP server task panicked")),
        Err(_) => {
            tracing::warn!(
                component = "shutdown",
                "deadline-ms" = deadline.as_millis() as u64,
                "shutdown deadline passed with work in flight"
            );
            Ok(Exit::DeadlineExceeded)
        }
    }
}

/// A ticker that keeps the dependency gauges current, so an outage is logged
/// and visible in metrics without anyone polling `/readyz`. Its checks also
/// apply pending migrations when Postgres returns.
async fn watch_dependencies(readiness: Arc<Readiness>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        readiness.check(http::CHECK_TIMEOUT).await;
    }
}
