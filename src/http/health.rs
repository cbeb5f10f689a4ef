//! Liveness, readiness and the metrics endpoint.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::AppState;
use crate::readiness::CHECK_TIMEOUT;

/// Alive: the process serves HTTP. Says nothing about dependencies.
pub(super) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready: every dependency answered; 503 naming the failing ones otherwise.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = state.readiness.check(CHECK_TIMEOUT).await;
    let ready = checks.iter().all(|c| c.ok);
    let dependencies: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|c| (c.name.to_string(), serde_json::to_value(&c).expect("status serializes")))
        .collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "backend": state.ctx.stores.deployment.as_str(),
        "dependencies": dependencies,
    });
    (status, Json(body))
}

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.ctx.metrics.render())
}
