//! The HTTP edge: every route in [`router`], the JSON error shape, and the
//! request metrics middleware. Handlers parse, call the domain, and answer;
//! nothing here talks to a database directly.

mod error;
mod health;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

pub use error::ApiError;
pub use health::CHECK_TIMEOUT;

use crate::config::Config;
use crate::store::Stores;
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub stores: Stores,
    pub metrics: Metrics,
    pub readiness: Arc<crate::server::Readiness>,
}

/// Every route msgd serves.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        .with_state(state)
}

/// Counts and times each request under its route template (never the raw
/// path, which would carry ids and explode the label set).
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state.metrics.http_requests_total.with_label_values(&[&method, &route, &status]).inc();
    state
        .metrics
        .http_request_duration_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}
