//! Cross-origin requests from browsers (README, "Browsers on another
//! origin"): for an origin in `http.cors_origins`, preflights (`OPTIONS`
//! with `Access-Control-Request-Method`) are answered here, before routing,
//! and every answer names the origin and exposes the headers clients act on.
//! Credentials are headers (`X-Api-Key`, `Authorization`), never cookies, so
//! no `Access-Control-Allow-Credentials`. The admin API (`/v1/admin`) and
//! origins not listed get no CORS headers: the browser refuses the answer.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const ALLOW_HEADERS: &str = "X-Api-Key, Authorization, Content-Type, Idempotency-Key";
const EXPOSE_HEADERS: &str =
    "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy, Content-Disposition";
/// How long a browser may reuse a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

pub(super) async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let allowed = allowed_origin(&state.ctx.config.http.cors_origins, request.headers(), request.uri().path());
    let Some(origin) = allowed else { return next.run(request).await };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// The request's `Origin` when CORS allows it for `path`: listed (or `*`
/// configured), one header, and not the admin API.
fn allowed_origin(allowed: &[String], headers: &HeaderMap, path: &str) -> Option<HeaderValue> {
    if allowed.is_empty() || path == "/v1/admin" || path.starts_with("/v1/admin/") {
        return None;
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = origins.next()?;
    if origins.next().is_some() {
        return None;
    }
    let text = origin.to_str().ok()?;
    allowed.iter().any(|a| a == "*" || a == text).then(|| origin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.append(header::ORIGIN, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_listed_origins_outside_the_admin_api_are_allowed() {
        let listed = vec!["https://app.example.com".to_string()];
        let app = origin("https://app.example.com");
        assert!(allowed_origin(&listed, &app, "/v1/conversations").is_some());
        assert!(allowed_origin(&listed, &origin("https://evil.example.com"), "/v1/conversations").is_none());
        assert!(allowed_origin(&listed, &origin("https://app.example.com.evil.com"), "/v1/ws").is_none());
        assert!(allowed_origin(&listed, &app, "/v1/admin/keys").is_none());
        assert!(allowed_origin(&[], &app, "/v1/conversations").is_none());
        assert!(allowed_origin(&listed, &HeaderMap::new(), "/v1/conversations").is_none());
        let mut twice = app.clone();
        twice.append(header::ORIGIN, HeaderValue::from_static("https://app.example.com"));
        assert!(allowed_origin(&listed, &twice, "/v1/conversations").is_none());
        let any = vec!["*".to_string()];
        assert_eq!(
            allowed_origin(&any, &origin("http://localhost:5173"), "/healthz").unwrap(),
            "http://localhost:5173"
        );
    }
}
