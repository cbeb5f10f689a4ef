//! The one JSON error shape of the public API (README, "HTTP API"):
//! `{"error": {"code": "<stable_snake_case>", "message": "<human text>"}}`.
//! Domain errors map to statuses here; internal failures become a 500 whose
//! message leaks no details (they were logged where they happened).

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::{Code, Error, Kind};

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

impl From<crate::keys::KeyError> for ApiError {
    fn from(err: crate::keys::KeyError) -> Self {
        ApiError(err.into())
    }
}

pub fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Kind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Kind::TimedOut => StatusCode::REQUEST_TIMEOUT,
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

/// `Retry-After` on a 503, in seconds (as the listener's `too_many_connections`).
const UNAVAILABLE_RETRY_AFTER: &str = "1";

/// The error code of a response, for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind());
        let mut headers = rate_limit_headers(&self.0);
        // A dependency outage or an unassigned seq: retrying is right, after a pause.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static(UNAVAILABLE_RETRY_AFTER));
        }
        let mut response = (status, headers, Json(serde_json::json!({"error": error_body(&self.0)}))).into_response();
        response.extensions_mut().insert(ErrorCode(self.0.code.as_str()));
        response
    }
}

pub(super) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError(Error::new(Code::NotFound, format!("no route for {method} {}", uri.path())))
}

/// Rewrites an error answered without the API's shape (axum's extractor
/// rejections, a 405, a body-limit 413) into it, keeping its status and
/// headers (`Allow` on a 405) and its text as the message.
pub(super) async fn into_api_shape(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let code = match parts.status {
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
        StatusCode::REQUEST_TIMEOUT => Code::RequestTimeout,
        StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Code::HeadersTooLarge,
        status if status.is_server_error() => Code::Internal,
        _ => Code::InvalidRequest,
    };
    // Rejection texts are short; anything longer is cut, not echoed whole.
    let text =
        axum::body::to_bytes(body, 2048).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let message = match parts.status {
        // axum adds `Allow` after this layer has run, so the header is the
        // one place that lists the methods.
        StatusCode::METHOD_NOT_ALLOWED => {
            "this route does not take that method; Allow lists those it takes".to_string()
        }
        status if status.is_server_error() || text.trim().is_empty() => {
            status.canonical_reason().unwrap_or("error").to_string()
        }
        _ => text.trim().to_string(),
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.extensions.insert(ErrorCode(code.as_str()));
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unavailable_answer_says_when_to_retry_and_no_other_does() {
        for code in Code::ALL {
            let response = ApiError(Error::new(*code, "x")).into_response();
            let retry_after = response.headers().get(axum::http::header::RETRY_AFTER);
            match response.status() {
                StatusCode::SERVICE_UNAVAILABLE => assert_eq!(retry_after.unwrap(), "1", "{code:?}"),
                // 429s carry theirs with the rate-limit fields, from the decision.
                _ => assert!(retry_after.is_none(), "{code:?}"),
            }
        }
    }
}
