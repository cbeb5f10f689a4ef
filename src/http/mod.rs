//! The HTTP edge: the accept loop ([`listener`]), every route in
//! [`router`], the JSON error shape, and the request middleware (metrics,
//! request timeout, access log, JSON for every error). Handlers parse, call
//! the domain, and answer; nothing here talks to a database directly.

mod admin;
mod conv;
mod cors;
mod error;
mod frames;
mod health;
pub mod listener;
mod v1;
mod ws;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;

pub use error::{error_body, status_of, ApiError};
pub use frames::ClientFrame;
pub use ws::Admission;

use crate::auth::{Caller, Credentials};
use crate::clock::now_ms;
use crate::context::Context;
use crate::error::{Code, Error};
use crate::readiness::Readiness;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ctx: Arc<Context>,
    pub readiness: Arc<Readiness>,
    /// Becomes true at shutdown: long-lived connections (WebSockets) close.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Open WebSockets per user and per IP, against `ws.max_per_user`/`max_per_ip`.
    pub admission: Arc<Admission>,
}

impl AppState {
    pub fn new(ctx: Arc<Context>, readiness: Arc<Readiness>, shutdown: tokio::sync::watch::Receiver<bool>) -> AppState {
        let admission = Arc::new(Admission::new(&ctx.config.ws));
        // Every refusal code exists at 0 from the start: an alert sees 0, not "no data".
        let refusals = crate::error::Code::ALL
            .iter()
            .filter(|code| matches!(code.kind(), crate::error::Kind::Unauthenticated | crate::error::Kind::Forbidden));
        for code in refusals {
            ctx.metrics.auth_failures_total.with_label_values(&[code.as_str()]);
        }
        AppState { ctx, readiness, shutdown, admission }
    }
}

/// Every route msgd serves.
pub fn router(state: AppState) -> Router {
    let limits = &state.ctx.config.limits;
    // Room for a full batch of maximal payloads plus JSON overhead; anything
    // larger is refused before it is read.
    let body_limit = limits.max_batch * (limits.max_payload_bytes * 2 + 1024) + 64 * 1024;
    let attachment_limit = usize::try_from(limits.max_attachment_bytes).unwrap_or(usize::MAX);
    // The operator's routes, behind their own guard (operator token, audit).
    let admin = Router::new()
        .route("/v1/admin/apps", post(admin::create_app).get(admin::list_apps))
        .route("/v1/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/v1/admin/keys/{key_id}", delete(admin::revoke_key))
        .route("/v1/admin/keys/{key_id}/rotate", post(admin::rotate_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin::guard));
    Router::new()
        .route("/v1/conversations", post(conv::create).get(conv::list))
        .route("/v1/conversations/{id}", get(conv::get).patch(conv::update).delete(conv::delete))
        .route("/v1/conversations/{id}/members/{user_id}", put(conv::add_member).delete(conv::remove_member))
        .route("/v1/conversations/{id}/mute", put(conv::mute).delete(conv::unmute))
        .route("/v1/conversations/{id}/presence", get(v1::presence))
        .route("/v1/conversations/{id}/messages", post(v1::send_message).get(v1::history))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/conversations/{id}/messages/batch", post(v1::send_batch))
        .route("/v1/conversations/{id}/messages/{message}", get(v1::message).patch(v1::edit).delete(v1::delete))
        .route("/v1/conversations/{id}/messages/{message}/reactions/{reaction}", put(v1::react).delete(v1::unreact))
        .route("/v1/conversations/{id}/messages/{message}/thread", get(v1::thread))
        .route("/v1/conversations/{id}/receipts", post(v1::post_receipt).get(v1::get_receipts))
        .route("/v1/dev/token", post(v1::dev_token))
        .route("/v1/conversations/{id}/attachments", post(v1::create_upload))
        .route("/v1/conversations/{id}/attachments/{attachment_id}", get(v1::download))
        .merge(admin)
        .layer(DefaultBodyLimit::max(body_limit))
        // Embedded uploads carry the file itself: up to the attachment limit.
        .route("/v1/uploads/{token}", put(v1::receive_upload).layer(DefaultBodyLimit::max(attachment_limit)))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        .route("/demo", get(demo))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        // Outermost, so every answer (a timeout's 408 too) carries the CORS headers.
        // Preflights of allowed origins are answered there, before routing and the metrics.
        .layer(middleware::from_fn_with_state(state.clone(), cors::cors))
        .with_state(state)
}

/// The OpenAPI document of every route (kept in step with `router` by a tidy test).
async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// The demo chat page (README, "Demo page") when `http.demo` is on: one
/// self-contained file that talks to this server's API like any client.
async fn demo(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !state.ctx.config.http.demo {
        return Err(Error::new(Code::NotFound, "the demo page is off (http.demo = false)").into());
    }
    let headers = [
        (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            axum::http::header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ];
    Ok((headers, include_str!("demo.html")).into_response())
}

/// The method as a metric label: one of a fixed set, never the raw string
/// (a client may send any token as a method).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

tokio::task_local! {
    /// The app a request authenticated as, for its access log line.
    static REQUEST_APP: Arc<OnceLock<String>>;
}

/// What a request presented: the key and the `Authorization` value from its
/// headers, else from `query_key` and `query_authorization` (a browser's
/// WebSocket URL). A header that is present wins and must be readable.
fn credentials<'a>(
    headers: &'a HeaderMap,
    query_key: Option<&'a str>,
    query_authorization: Option<&'a str>,
) -> Result<Credentials<'a>, Error> {
    Ok(Credentials {
        api_key: header_text(headers, "x-api-key", Code::InvalidApiKey)?.or(query_key),
        authorization: header_text(headers, "authorization", Code::InvalidToken)?.or(query_authorization),
    })
}

/// The authenticated caller of a request: every `/v1` route's one way in
/// (the WebSocket upgrade reads its credentials from the query too, through
/// the same [`authenticate`]). Authorization stays an explicit domain call.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        Ok(authenticate(state, credentials(&parts.headers, None, None)?).await?)
    }
}

/// Authenticates a request, every route's one way in, and notes its app for
/// the access log.
async fn authenticate(state: &AppState, credentials: Credentials<'_>) -> Result<Caller, Error> {
    let caller = state.ctx.auth.authenticate(credentials, now_ms()).await?;
    let _ = REQUEST_APP.try_with(|slot| slot.set(caller.app_id.clone()));
    Ok(caller)
}

/// A request header that is present must be readable: an unreadable one is
/// refused with `code`, never taken as absent (an unreadable
/// `Authorization` must not turn a user's request into the app's). Two copies
/// of the header are refused too.
fn header_text<'a>(headers: &'a HeaderMap, name: &str, code: Code) -> Result<Option<&'a str>, Error> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Error::new(code, format!("send one {name} header, not several")));
    }
    value.to_str().map(Some).map_err(|_| Error::new(code, format!("the {name} header is not visible ASCII")))
}

/// Counts and times each request under its route template (never the raw
/// path, which would carry ids and explode the label set), bounds it by
/// `http.request_timeout`, turns every error answered without the JSON
/// shape (axum's own rejections, 405s) into it, and writes the access log.
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let app = Arc::new(OnceLock::new());
    let timeout = state.ctx.config.http.request_timeout;
    let response = match tokio::time::timeout(timeout, REQUEST_APP.scope(app.clone(), next.run(request))).await {
        Ok(response) => response,
        Err(_) => ApiError(Error::new(
            Code::RequestTimeout,
            format!(
                "the request was not complete within {} (http.request_timeout)",
                humantime::format_duration(timeout)
            ),
        ))
        .into_response(),
    };
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let response =
        if response.status().as_u16() >= 400 && !is_json { error::into_api_shape(response).await } else { response };
    let status = response.status();
    // Every authentication or authorization refusal, wherever it was decided.
    if let (401 | 403, Some(error::ErrorCode(code))) = (status.as_u16(), response.extensions().get()) {
        state.ctx.metrics.auth_failures_total.with_label_values(&[code]).inc();
    }
    let elapsed = started.elapsed();
    state.ctx.metrics.http_requests_total.with_label_values(&[method, &route, status.as_str()]).inc();
    state.ctx.metrics.http_request_duration_seconds.with_label_values(&[method, &route]).observe(elapsed.as_secs_f64());
    // Sampled by the log writer (`sampling.per_component.access`); 5xx answers are warnings, never sampled.
    if crate::logging::settings().config.access {
        let app_id = app.get().map(String::as_str).unwrap_or("");
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let status_code = status.as_u16();
        match status.is_server_error() {
            true => tracing::warn!(component = "access", method, route = %route, status = status_code,
                "duration-ms" = duration_ms, "app-id" = app_id, "request"),
            false => tracing::info!(component = "access", method, route = %route, status = status_code,
                "duration-ms" = duration_ms, "app-id" = app_id, "request"),
        }
    }
    response
}
