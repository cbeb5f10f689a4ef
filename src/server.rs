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
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::flush::{FlushWorker, Flusher};
use crate::http::{self, AppState};
use crate::membership::MembershipListener;
use crate::readiness::{DependencyWatcher, Readiness, CHECK_TIMEOUT};
use crate::retention::{Retention, RetentionWorker};
use crate::store::Stores;
use crate::telemetry::Metrics;
use crate::worker::Workers;

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
/// flush worker flushes what is due once more).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
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

/// Every background worker of a serving instance; all stop when `stop`
/// becomes true, and `serve` joins them before it returns.
fn start_workers(ctx: &Arc<Context>, readiness: Arc<Readiness>, stop: watch::Receiver<bool>) -> Workers {
    let mut workers = Workers::new(stop);
    workers.spawn(DependencyWatcher::new(readiness));
    let flusher = Flusher::new(ctx.stores.clone(), ctx.metrics.clone(), ctx.config.flush.clone());
    workers.spawn(FlushWorker::new(flusher, ctx.config.retention.period_ms()));
    let retention = Retention::new(ctx.stores.clone(), ctx.metrics.clone(), &ctx.config);
    workers.spawn(RetentionWorker::new(retention));
    workers.spawn(MembershipListener::new(ctx.membership.clone()));
    workers
}
