//! The accept loop: every TCP connection msgd serves passes through here, so
//! this is where the edge is bounded (ARCHITECTURE.md, "Architecture invariants").
//!
//! - At most `http.max_connections` connections are open at once (WebSockets
//!   included: an upgraded socket keeps its connection's slot). One more gets
//!   a JSON 503 `too_many_connections` and is closed, cheaply, so a flood of
//!   idle sockets cannot starve the process of file descriptors.
//! - A connection must send a complete request head within
//!   `http.header_read_timeout` of opening and of each previous response:
//!   slow-header trickles, silent sockets and idle keep-alives are closed.
//! - Running out of file descriptors (EMFILE/ENFILE) backs off instead of
//!   spinning on `accept`.
//! - Each request carries the peer address (`ConnectInfo`) for the per-IP
//!   WebSocket cap.
//!
//! Shutdown: the loop stops accepting, open HTTP connections finish their
//! in-flight request and close, and the loop returns once every connection
//! slot is back (WebSockets close themselves on the same signal).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::error::{Code, Error};
use crate::telemetry::Metrics;

/// How long `accept` pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A refused connection gets this long to take its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection's slot under `http.max_connections`, shared by the request
/// that upgrades to a WebSocket so the socket keeps the slot while it lives.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>); // held, never read: its drop frees the slot

/// The bounds the loop applies.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` turns true, then waits for the
/// open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(bounds.header_read_timeout).keep_alive(true);
    let mut last_exhaustion_log: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_exhaustion(&e) => {
                metrics.connections_refused_total.with_label_values(&["fd_exhausted"]).inc();
                if last_exhaustion_log.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    last_exhaustion_log = Some(std::time::Instant::now());
                    tracing::warn!(
                        component = "http",
                        error = %e,
                        "out of file descriptors; accept backs off (raise the file limit or lower http.max_connections)"
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(component = "http", error = %e, "accept failed");
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused_total.with_label_values(&["max_connections"]).inc();
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = ConnectionSlot(Arc::new(permit));
        let gauge = metrics.http_connections.clone();
        let router = router.clone();
        let http = http.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            gauge.inc();
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(slot.clone());
                router.clone().oneshot(request)
            });
            let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = async { stop.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(component = "http", error = %e, "connection ended with an error");
            }
            gauge.dec();
        });
    }
    // Every slot back means every connection (and WebSocket) has ended.
    let _ = slots.acquire_many(u32::try_from(bounds.max_connections).unwrap_or(u32::MAX)).await;
}

fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Answers a connection over the cap with a JSON 503 and closes it. What the
/// client already sent is read (briefly) so the close is not a reset.
/// The whole answer to a connection over the cap, built once: refusals are
/// the flood path and should cost a write, nothing more.
static REFUSAL: LazyLock<String> = LazyLock::new(|| {
    let error = Error::new(
        Code::TooManyConnections,
        "the server is at its connection limit (http.max_connections); retry later",
    );
    let body = serde_json::json!({"error": super::error::error_body(&error)}).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
});

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut scratch)).await;
        stream.write_all(REFUSAL.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut scratch).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Raises the soft open-file limit to the hard one (a boot step, logged with
/// both) and answers the connection cap that fits it.
pub fn fit_to_file_limit(configured: usize) -> usize {
    match raise_file_limit() {
        Ok((before, soft, hard)) => {
            let cap = connection_cap(configured, soft);
            tracing::info!(
                component = "boot",
                step = "limits",
                "nofile-soft-before" = before,
                "nofile-soft" = soft,
                "nofile-hard" = hard,
                "max-connections" = cap,
                "file limit raised"
            );
            if cap < configured {
                tracing::warn!(
                    component = "boot",
                    step = "limits",
                    configured,
                    "max-connections" = cap,
                    "http.max_connections lowered to fit the file limit"
                );
            }
            cap
        }
        Err(e) => {
            tracing::warn!(component = "boot", step = "limits", error = %e, "cannot read or raise the file limit");
            configured
        }
    }
}

/// Raises the soft open-file limit to the hard limit; returns (soft before,
/// soft after, hard).
fn raise_file_limit() -> std::io::Result<(u64, u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit = raised;
        }
        Ok((before, limit.rlim_cur, limit.rlim_max))
    }
}

/// Descriptors kept free of connections: the stores' pools, log files,
/// refusing over-limit connections.
const RESERVED_FILES: u64 = 64;

/// The connection cap that fits `file_limit`.
fn connection_cap(configured: usize, file_limit: u64) -> usize {
    let fits = file_limit.saturating_sub(RESERVED_FILES).max(1);
    configured.min(usize::try_from(fits).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_file_limit() {
        assert_eq!(connection_cap(10_000, 256), 256 - RESERVED_FILES as usize);
        assert_eq!(connection_cap(100, 1_048_576), 100);
        assert_eq!(connection_cap(100, 10), 1, "never zero");
    }
}
