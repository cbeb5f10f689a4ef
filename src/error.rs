//! The domain's one error type: a refusal with a stable code that callers
//! (HTTP, WebSocket, CLI) show as is, or an internal failure they must not
//! leak. The HTTP edge maps [`Kind`] to a status; nothing here knows HTTP.

use crate::ratelimit::RateDecision;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or breaks a rule (400).
    Invalid,
    /// No or bad credentials (401).
    Unauthenticated,
    /// Authenticated but not allowed, or not a member (403).
    Forbidden,
    NotFound,
    /// A concurrent or replayed request conflicts (409).
    Conflict,
    /// The body or a part of it is larger than allowed (413).
    TooLarge,
    /// Well-formed but unacceptable, e.g. an idempotency key reused (422).
    Unprocessable,
    /// Over a rate limit, or over a cap on connections (429).
    RateLimited,
    /// The request took longer than allowed to arrive or be answered (408).
    TimedOut,
    /// A dependency is down; retry later (503).
    Unavailable,
    /// A bug or corrupt data (500).
    Internal,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    /// Stable snake_case code, part of the public API.
    pub code: &'static str,
    pub message: String,
    /// The limit that refused the request, for `Retry-After` and RateLimit fields.
    pub rate: Option<RateLimitInfo>,
}

/// Which limit refused a request, and its state.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitInfo {
    pub limit: u32,
    pub window_seconds: f64,
    pub decision: RateDecision,
}

impl Error {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Error { kind, code, message: message.into(), rate: None }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::new(Kind::Invalid, code, message)
    }

    /// The answer to anyone who may not see a conversation, whether it exists or not.
    pub fn not_member() -> Self {
        Error::new(Kind::Forbidden, "not_member", "not a member of this conversation (or it does not exist)")
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
