//! `serve` as a boot script: one log line per step, then the HTTP server and
//! the background workers until shutdown, which is a parameter.
//!
//! msgd starts even when a dependency is down: it reports not-ready on
//! `/readyz` and the dependency watcher brings it back (including applying
//! migrations once Postgres answers) without a restart.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::store::{DependencyStatus, Stores};
use crate::telemetry::Metrics;

/// How often the dependency watcher re-checks every dependency.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Checks every dependency and records the result in the metrics.
pub async fn check_dependencies(stores: &Stores, metrics: &Metrics, timeout: Duration) -> Vec<DependencyStatus> {
    let checks = stores.check(timeout).await;
    for check in &checks {
        metrics.dependency_up.with_label_values(&[check.name]).set(i64::from(check.ok));
        metrics.dependency_check_duration_seconds.with_label_values(&[check.name]).set(check.latency_ms / 1000.0);
    }
    checks
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
    tracing::info!(component = "boot", step = "stores", backend = stores.backend, objects = stores.objects.location(), "stores opened");

    let checks = check_dependencies(&stores, &metrics, http::CHECK_TIMEOUT).await;
    for check in &checks {
        if check.ok {
            tracing::info!(component = "boot", step = "dependency", dependency = check.name, "latency-ms" = check.latency_ms, "dependency ok");
        } else {
            tracing::warn!(component = "boot", step = "dependency", dependency = check.name, error = check.error.as_deref().unwrap_or(""), "dependency down; serving not-ready until it returns");
        }
    }

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    let addr = listener.local_addr()?;
    let deadline = config.http.shutdown_timeout;

    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState { config: Arc::new(config), stores: stores.clone(), metrics: metrics.clone() };
    let watcher = tokio::spawn(watch_dependencies(stores, metrics, checks, stop_rx.clone()));

    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(component = "boot", step = "listen", addr = %addr, "duration-ms" = boot.elapsed().as_millis() as u64, "listening");

    shutdown.await;
    tracing::info!(component = "shutdown", "deadline-ms" = deadline.as_millis() as u64, "shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(deadline, async {
        let served = server.await;
        let _ = watcher.await;
        served
    })
    .await;
    match drained {
        Ok(Ok(Ok(()))) => {
            tracing::info!(component = "shutdown", "stopped");
            Ok(Exit::Clean)
        }
        Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context("the HTTP server failed")),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the HTTP server task panicked")),
        Err(_) => {
            tracing::warn!(component = "shutdown", "deadline-ms" = deadline.as_millis() as u64, "shutdown deadline passed with work in flight");
            Ok(Exit::DeadlineExceeded)
        }
    }
}

/// A ticker that keeps the dependency gauges current and logs each change of
/// state once (down, then back), so an outage is visible without polling
/// `/readyz`. Its checks also apply pending migrations when Postgres returns.
async fn watch_dependencies(
    stores: Stores,
    metrics: Metrics,
    mut last: Vec<DependencyStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        let checks = check_dependencies(&stores, &metrics, http::CHECK_TIMEOUT).await;
        for (now, before) in checks.iter().zip(&last) {
            match (before.ok, now.ok) {
                (true, false) => tracing::warn!(component = "dependency-watch", worker = "dependency-watch", dependency = now.name, error = now.error.as_deref().unwrap_or(""), "dependency down"),
                (false, true) => tracing::info!(component = "dependency-watch", worker = "dependency-watch", dependency = now.name, "latency-ms" = now.latency_ms, "dependency recovered"),
                _ => tracing::debug!(component = "dependency-watch", worker = "dependency-watch", dependency = now.name, ok = now.ok, "dependency checked"),
            }
        }
        last = checks;
    }
}
