//! The admin HTTP API (`/v1/admin`, README "Admin API"): apps and API keys
//! for operators, through the same [`crate::keys`] functions and documents
//! as `msgd keys`. [`guard`] admits only the operator token
//! (`auth.operator_token`; the API is a 404 while it is unset), and writes
//! one `admin` audit log line and one `msgd_admin_requests_total` count for
//! every call, refusals included.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, ErrorCode};
use super::v1::json_body;
use super::AppState;
use crate::clock::now_ms;
use crate::error::Code;
use crate::keys::{self, Scope};

/// The grace period of a rotation that names none: the old key keeps working
/// this long (as `msgd keys rotate`'s default).
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a call acted on, for its audit line: handlers attach it to their
/// answer. `key_id` is the key created, rotated or revoked.
#[derive(Clone, Default)]
struct Audited {
    app_id: Option<String>,
    key_id: Option<String>,
}

/// An answer carrying what it acted on.
fn audited(status: StatusCode, body: serde_json::Value, app_id: &str, key_id: Option<&str>) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(Audited { app_id: Some(app_id.to_string()), key_id: key_id.map(str::to_string) });
    response
}

/// The `action` label of a call: one per route and method, else `other`.
fn action_of(method: &Method, route: Option<&str>) -> &'static str {
    match (method.as_str(), route.unwrap_or("")) {
        ("POST", "/v1/admin/apps") => "create_app",
        ("GET", "/v1/admin/apps") => "list_apps",
        ("POST", "/v1/admin/keys") => "create_key",
        ("GET", "/v1/admin/keys") => "list_keys",
        ("POST", "/v1/admin/keys/{key_id}/rotate") => "rotate_key",
        ("DELETE", "/v1/admin/keys/{key_id}") => "revoke_key",
        _ => "other",
    }
}

/// Authenticates the operator and audits the call. While the API is off
/// nothing is audited: there is no admin API to call, only a 404.
pub(super) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let auth = &state.ctx.auth;
    if let Err(off) = auth.require_admin_api() {
        return ApiError(off).into_response();
    }
    let admitted = super::header_text(request.headers(), "authorization", Code::InvalidOperatorToken)
        .and_then(|authorization| auth.operator(authorization));
    let action = action_of(request.method(), request.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string());
    let response = match admitted {
        Ok(()) => next.run(request).await,
        Err(e) => ApiError(e).into_response(),
    };
    let status = response.status();
    let outcome = match status.as_u16() {
        200..=399 => "ok",
        401 => "unauthenticated",
        400..=499 => "refused",
        _ => "failed",
    };
    state.ctx.metrics.admin_requests_total.with_label_values(&[action, outcome]).inc();
    let target = response.extensions().get::<Audited>().cloned().unwrap_or_default();
    let code = response.extensions().get::<ErrorCode>().map_or("", |ErrorCode(code)| code);
    let (app_id, key_id) = (target.app_id.unwrap_or_default(), target.key_id.unwrap_or_default());
    let peer = peer.unwrap_or_default();
    let status = status.as_u16();
    if outcome == "ok" {
        tracing::info!(component = "admin", action, outcome, status, "app-id" = %app_id, "key-id" = %key_id,
            peer = %peer, "admin call");
    } else {
        tracing::warn!(component = "admin", action, outcome, status, code, "app-id" = %app_id, "key-id" = %key_id,
            peer = %peer, "admin call refused");
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApp {
    name: String,
}

pub(super) async fn create_app(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CreateApp = json_body(body)?;
    let now = now_ms();
    let (app, key) = keys::create_app(&state.ctx.stores.metadata, &request.name, now).await?;
    let mut document = key.document(now);
    document["app"] = serde_json::to_value(&app).expect("app serializes");
    Ok(audited(StatusCode::CREATED, document, &app.id, Some(&key.info.id)))
}

pub(super) async fn list_apps(State(state): State<AppState>) -> Result<Response, ApiError> {
    let apps = keys::list_apps(&state.ctx.stores.metadata).await?;
    Ok(Json(serde_json::json!({ "apps": apps })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    app_id: String,
    scope: Scope,
    name: Option<String>,
    /// Seconds until the key expires; never when absent.
    #[serde(default, deserialize_with = "whole_seconds")]
    expires_in: Option<u64>,
}

pub(super) async fn create_key(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CreateKey = json_body(body)?;
    let now = now_ms();
    let expires_in = request.expires_in.map(Duration::from_secs);
    let key = keys::create_key(
        &state.ctx.stores.metadata,
        &request.app_id,
        request.scope,
        request.name.as_deref(),
        expires_in,
        now,
    )
    .await?;
    Ok(audited(StatusCode::CREATED, key.document(now), &key.info.app_id, Some(&key.info.id)))
}

#[derive(Deserialize)]
pub(super) struct ListKeys {
    app_id: Option<String>,
}

pub(super) async fn list_keys(
    State(state): State<AppState>,
    Query(query): Query<ListKeys>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let listed = keys::list_keys(&state.ctx.stores.metadata, query.app_id.as_deref()).await?;
    let documents: Vec<_> = listed.iter().map(|key| key.document(now)).collect();
    Ok(Json(serde_json::json!({ "keys": documents })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Rotate {
    /// Seconds the old key keeps working.
    #[serde(default, deserialize_with = "whole_seconds")]
    grace: Option<u64>,
}

/// The body is optional: without one, the grace period is a day.
pub(super) async fn rotate_key(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: Rotate = match &body {
        Ok(bytes) if bytes.is_empty() => Rotate::default(),
        _ => json_body(body)?,
    };
    let grace = request.grace.map_or(DEFAULT_GRACE, Duration::from_secs);
    let old_id = keys::parse_key_id(&key_id)?;
    let now = now_ms();
    let (key, old_valid_until) = keys::rotate_key(&state.ctx.stores.metadata, &old_id, grace, now).await?;
    // Cached, the old key would outlive a grace period shorter than the cache's TTL here.
    state.ctx.auth.forget_key(&old_id);
    let mut document = key.document(now);
    document["replaces"] = serde_json::json!({"id": old_id, "valid_until": old_valid_until});
    Ok(audited(StatusCode::CREATED, document, &key.info.app_id, Some(&old_id)))
}

/// Revokes at once; this instance's key cache forgets the key too.
pub(super) async fn revoke_key(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let key = keys::revoke_key(&state.ctx.stores.metadata, &key_id, now).await?;
    state.ctx.auth.forget_key(&key.id);
    Ok(audited(StatusCode::OK, key.document(now), &key.app_id, Some(&key.id)))
}

/// Seconds, optional: absent, or a whole number, which JSON may spell
/// `3600` or `3600.0` (one value to JSON Schema's `integer`). `null`,
/// fractions and negatives are refused.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let number = serde_json::Number::deserialize(d)?;
    let whole = number.as_u64().or_else(|| {
        // Exact below 2^53, far above any accepted duration.
        number.as_f64().filter(|f| f.fract() == 0.0 && (0.0..9.0e15).contains(f)).map(|f| f as u64)
    });
    whole.map(Some).ok_or_else(|| serde::de::Error::custom(format!("expected whole seconds, got {number}")))
}
