//! The HTTP edge: every route in [`router`], the JSON error shape, and the
//! request metrics middleware. Handlers parse, call the domain, and answer;
//! nothing here talks to a database directly.

mod error;
mod health;
mod v1;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;

pub use error::{error_body, status_of, ApiError};
pub use health::CHECK_TIMEOUT;

use crate::context::Context;
use crate::server::Readiness;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ctx: Arc<Context>,
    pub readiness: Arc<Readiness>,
    /// Becomes true at shutdown: long-lived connections (WebSockets) close.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Every route msgd serves.
pub fn router(state: AppState) -> Router {
    let limits = &state.ctx.config.limits;
    // Room for a full batch of maximal payloads plus JSON overhead; anything
    // larger is refused before it is read.
    let body_limit = limits.max_batch * (limits.max_payload_bytes * 2 + 1024) + 64 * 1024;
    Router::new()
        .route("/v1/conversations", post(v1::create_conversation).get(v1::list_conversations))
        .route("/v1/conversations/{id}", get(v1::get_conversation))
        .route("/v1/conversations/{id}/members/{user_id}", put(v1::add_member).delete(v1::remove_member))
        .route("/v1/conversations/{id}/messages", post(v1::send_message).get(v1::history))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/conversations/{id}/messages/batch", post(v1::send_batch))
        .route("/v1/conversations/{id}/receipts", post(v1::post_receipt).get(v1::get_receipts))
        .route("/v1/dev/token", post(v1::dev_token))
        .layer(DefaultBodyLimit::max(body_limit))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        .with_state(state)
}

/// The OpenAPI document of every route (kept in step with `router` by a tidy test).
async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// Counts and times each request under its route template (never the raw
/// path, which would carry ids and explode the label set).
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status();
    // Every authentication or authorization refusal, wherever it was decided.
    if let (401 | 403, Some(error::ErrorCode(code))) = (status.as_u16(), response.extensions().get()) {
        state.ctx.metrics.auth_failures_total.with_label_values(&[code]).inc();
    }
    let status = status.as_u16().to_string();
    state.ctx.metrics.http_requests_total.with_label_values(&[&method, &route, &status]).inc();
    state
        .ctx
        .metrics
        .http_request_duration_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}
