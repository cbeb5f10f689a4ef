//! `serve` as a boot script: one log line per step, then the HTTP server and
//! the background workers until shutdown, which is a parameter.
//!
//! msgd starts even when a dependency is down: it reports not-ready on
//! `/readyz` and the dependency watcher brings it back (including applying
//! migrations once Postgres answers) without a restart.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::activity::ActivityWriter;
use crate::config::{Config, ConfigError};
use crate::context::Context;
use crate::flush::{CompactionWorker, FlushWorker, Flusher};
use crate::http::{self, AppState};
use crate::membership::MembershipListener;
use crate::readiness::{DependencyWatcher, Readiness, CHECK_TIMEOUT};
use crate::retention::{Retention, RetentionWorker};
use crate::stats::StatsWorker;
use crate::store::Stores;
use crate::telemetry::Metrics;
use crate::worker::{OwnedTask, Workers};

/// How `serve` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every in-flight request finished within the deadline.
    Clean,
    /// The deadline passed with work still in flight.
    DeadlineExceeded,
}

/// Binds the listening socket `serve` takes (`http.listen`).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (http.listen)"))
}

/// Runs the server on `listener` until `shutdown` resolves, then drains for
/// at most `http.shutdown_timeout`: the HTTP server and every worker (the
/// flush worker flushes what is due once more). Each configuration read from
/// `reloads` (SIGHUP) puts its logging settings in force ([`reload`]).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: mpsc::Receiver<Result<Config, ConfigError>>,
) -> anyhow::Result<Exit> {
    let boot = Instant::now();
    tracing::info!(
        component = "boot",
        step = "config",
        backend = config.backend.name(),
        data_dir = %config.data_dir.display(),
        "config loaded"
    );

    let metrics = Metrics::new(config.backend.name());
    let stores = Stores::open(&config, &metrics).await?;
    tracing::info!(
        component = "boot",
        step = "stores",
        backend = stores.deployment.as_str(),
        objects = stores.objects.location(),
        "stores opened"
    );

    let readiness = Arc::new(Readiness::new(stores.clone(), metrics.clone()));
    let ready = readiness.check(CHECK_TIMEOUT).await.iter().all(|check| check.ok);
    tracing::info!(component = "boot", step = "dependencies", ready, "dependencies checked");

    let max_connections = http::listener::fit_to_file_limit(config.http.max_connections);
    let bounds = http::listener::Bounds { max_connections, header_read_timeout: config.http.header_read_timeout };
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
    let workers = start_workers(&ctx, readiness, stop_rx.clone());
    let router = http::router(state);
    let reloading = ctx.clone();
    let _reloader = OwnedTask::spawn(async move {
        while let Some(loaded) = reloads.recv().await {
            reload(&reloading, loaded);
        }
    });
    let server = tokio::spawn(http::listener::serve(listener, router, bounds, ctx.metrics.clone(), stop_rx));
    tracing::info!(
        component = "boot",
        step = "listen",
        addr = %addr,
        "duration-ms" = boot.elapsed().as_millis() as u64,
        "listening"
    );

    shutdown.await;
    tracing::info!(component = "shutdown", "deadline-ms" = deadline.as_millis() as u64, "shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(deadline, async {
        let served = server.await;
        workers.join().await;
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

/// Puts the logging section of a configuration read again in force, or
/// keeps the running settings when it was refused. Every other section is
/// read at start only: one that changed is named as needing a restart.
pub fn reload(ctx: &Context, loaded: Result<Config, ConfigError>) {
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            ctx.metrics.config_reloads_total.with_label_values(&["error"]).inc();
            tracing::error!(component = "config", "error.kind" = "config.invalid", "error.message" = %e,
                "config reload refused; the running settings stay");
            return;
        }
    };
    if let Err(e) = crate::logging::reload(&config.observability.logging) {
        ctx.metrics.config_reloads_total.with_label_values(&["error"]).inc();
        tracing::error!(component = "config", "error.message" = %e, "config reload failed; the running settings stay");
        return;
    }
    ctx.metrics.config_reloads_total.with_label_values(&["ok"]).inc();
    let (running, read) = (ctx.config.effective_view(), config.effective_view());
    let sections = |view: &serde_json::Value| view.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    let changed: std::collections::BTreeSet<String> = sections(&read)
        .unwrap_or_default()
        .into_iter()
        .chain(sections(&running).unwrap_or_default())
        .filter(|name| name != "observability" && running.get(name) != read.get(name))
        .collect();
    if changed.is_empty() {
        tracing::info!(component = "config", "logging settings reloaded");
    } else {
        tracing::warn!(component = "config", "restart-needed" = %changed.into_iter().collect::<Vec<_>>().join(","),
            "logging settings reloaded; other sections changed and need a restart to apply");
    }
}

/// Every background worker of a serving instance; all stop when `stop`
/// becomes true, and `serve` joins them before it returns.
fn start_workers(ctx: &Arc<Context>, readiness: Arc<Readiness>, stop: watch::Receiver<bool>) -> Workers {
    let mut workers = Workers::new(stop, readiness.recoveries(), ctx.metrics.clone());
    workers.spawn(DependencyWatcher::new(readiness));
    workers.spawn(StatsWorker::new(ctx.stores.clone(), ctx.metrics.clone()));
    let flusher = Flusher::new(ctx.stores.clone(), ctx.metrics.clone(), ctx.config.flush.clone());
    workers.spawn(FlushWorker::new(flusher, ctx.config.retention.period_ms()));
    if !ctx.config.flush.compact_window.is_zero() {
        let flusher = Flusher::new(ctx.stores.clone(), ctx.metrics.clone(), ctx.config.flush.clone());
        workers.spawn(CompactionWorker::new(flusher, CompactionWorker::FIRST_AFTER));
    }
    let retention = Retention::new(ctx.stores.clone(), ctx.metrics.clone(), &ctx.config);
    workers.spawn(RetentionWorker::new(retention));
    workers.spawn(MembershipListener::new(ctx.membership.clone()));
    workers.spawn(ActivityWriter::new(ctx.activity.clone(), ctx.stores.metadata.clone()));
    workers
}
