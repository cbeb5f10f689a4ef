//! The one JSON error shape of the public API (DESIGN §9):
//! `{"error": {"code": "<stable_snake_case>", "message": "<human text>"}}`.
//! Domain errors map to statuses here; internal failures become a 500 whose
//! message leaks no details (they were logged where they happened).

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::{Error, Kind};

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

pub fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error object as it appears in bodies (also inside batch results).
pub fn error_body(err: &Error) -> serde_json::Value {
    serde_json::json!({"code": err.code, "message": err.message})
}

/// `Retry-After` and the RateLimit header fields of
/// draft-ietf-httpapi-ratelimit-headers-06 (`RateLimit-Limit`,
/// `RateLimit-Remaining`, `RateLimit-Reset`, `RateLimit-Policy`).
pub fn rate_limit_headers(err: &Error) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(rate) = &err.rate {
        let seconds = |ms: u64| ms.div_ceil(1000).max(1).to_string();
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put("retry-after", seconds(rate.decision.retry_after_ms));
        put("ratelimit-limit", rate.limit.to_string());
        put("ratelimit-remaining", rate.decision.remaining.to_string());
        put("ratelimit-reset", seconds(rate.decision.reset_ms));
        put("ratelimit-policy", format!("{};w={}", rate.limit, rate.window_seconds.ceil().max(1.0)));
    }
    headers
}

/// The error code of a response, for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind);
        let headers = rate_limit_headers(&self.0);
        let mut response = (status, headers, Json(serde_json::json!({"error": error_body(&self.0)}))).into_response();
        response.extensions_mut().insert(ErrorCode(self.0.code));
        response
    }
}

pub(super) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError(Error::new(Kind::NotFound, "not_found", format!("no route for {method} {}", uri.path())))
}
