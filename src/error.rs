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
    /// The path is served, but not for this method (405).
    MethodNotAllowed,
    /// A concurrent or replayed request conflicts (409).
    Conflict,
    /// The body or a part of it is larger than allowed (413).
    TooLarge,
    /// The body comes in a media type the route does not read (415).
    UnsupportedMediaType,
    /// Well-formed but unacceptable, e.g. an idempotency key reused (422).
    Unprocessable,
    /// Over a rate limit, or over a cap on connections (429).
    RateLimited,
    /// The request's header fields are larger than allowed (431).
    HeadersTooLarge,
    /// The request took longer than allowed to arrive or be answered (408).
    TimedOut,
    /// A dependency is down; retry later (503).
    Unavailable,
    /// A bug or corrupt data (500).
    Internal,
}

/// Declares [`Code`] from one table of `Variant = "string", Kind;` rows, so
/// that a code's string, its kind and its place in [`Code::ALL`] are written
/// once and cannot drift apart.
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal, $kind:ident;)+) => {
        /// Every stable error code msgd answers with. The strings are public
        /// API (README, "HTTP API"; `openapi.json`): a variant may be added,
        /// never renamed. Each code has exactly one [`Kind`], hence one status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)+
        }

        impl Code {
            /// Every code, in the order of the README's list.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            /// The snake_case string clients see in `error.code`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)+
                }
            }

            pub const fn kind(self) -> Kind {
                match self {
                    $(Code::$variant => Kind::$kind,)+
                }
            }
        }
    };
}

codes! {
    MissingApiKey = "missing_api_key", Unauthenticated;
    InvalidApiKey = "invalid_api_key", Unauthenticated;
    KeyRevoked = "key_revoked", Unauthenticated;
    KeyExpired = "key_expired", Unauthenticated;
    MissingToken = "missing_token", Unauthenticated;
    InvalidToken = "invalid_token", Unauthenticated;
    TokenExpired = "token_expired", Unauthenticated;
    WrongIssuer = "wrong_issuer", Unauthenticated;
    WrongAudience = "wrong_audience", Unauthenticated;
    /// A missing or wrong operator token on `/v1/admin` (`auth.operator_token`).
    InvalidOperatorToken = "invalid_operator_token", Unauthenticated;
    InsufficientScope = "insufficient_scope", Forbidden;
    /// An upload URL that is forged, or past its expiry.
    InvalidUploadUrl = "invalid_upload_url", Forbidden;
    /// Also for a conversation that does not exist: a non-member must not
    /// learn which ones do.
    NotMember = "not_member", Forbidden;
    /// The caller's role does not allow the action (it names who may).
    NotOwner = "not_owner", Forbidden;
    /// Editing someone else's message, or deleting it without being a moderator or owner.
    NotSender = "not_sender", Forbidden;
    NotFound = "not_found", NotFound;
    /// Removing someone who is not a member.
    NotAMember = "not_a_member", NotFound;
    /// No attachment with this id in this conversation, or not uploaded yet.
    AttachmentNotFound = "attachment_not_found", NotFound;
    /// No message at this seq, or it is past the retention window.
    MessageNotFound = "message_not_found", NotFound;
    MethodNotAllowed = "method_not_allowed", MethodNotAllowed;
    RequestTimeout = "request_timeout", TimedOut;
    InvalidRequest = "invalid_request", Invalid;
    InvalidPayload = "invalid_payload", Invalid;
    InvalidContentType = "invalid_content_type", Invalid;
    InvalidAttachments = "invalid_attachments", Invalid;
    InvalidClientMsgId = "invalid_client_msg_id", Invalid;
    InvalidBatch = "invalid_batch", Invalid;
    InvalidUserId = "invalid_user_id", Invalid;
    InvalidReaction = "invalid_reaction", Invalid;
    /// A `reply_to` that names no message of the conversation.
    InvalidReplyTo = "invalid_reply_to", Invalid;
    InvalidTitle = "invalid_title", Invalid;
    /// A member role other than owner, moderator or member.
    InvalidRole = "invalid_role", Invalid;
    InvalidMetadata = "invalid_metadata", Invalid;
    TooManyMembers = "too_many_members", Invalid;
    UserRequired = "user_required", Invalid;
    SeqOutOfRange = "seq_out_of_range", Invalid;
    InvalidCursor = "invalid_cursor", Invalid;
    WebsocketRequired = "websocket_required", Invalid;
    IdempotencyKeyNotSupported = "idempotency_key_not_supported", Invalid;
    IdempotencyOriginalUnavailable = "idempotency_original_unavailable", Conflict;
    /// Editing a deleted message.
    MessageDeleted = "message_deleted", Conflict;
    /// Editing or deleting an edit or delete event instead of a message.
    NotEditable = "not_editable", Conflict;
    /// Writing to an archived conversation (it is read-only until unarchived).
    ConversationArchived = "conversation_archived", Conflict;
    /// Demoting or removing the last owner while other members remain.
    LastOwner = "last_owner", Conflict;
    /// Rotating a revoked key, or one already rotated (rotate its successor).
    KeyNotRotatable = "key_not_rotatable", Conflict;
    /// A reaction past the distinct reactions a message may hold, or the
    /// reactions one user may give it (`crate::reactions`).
    TooManyReactions = "too_many_reactions", Conflict;
    PayloadTooLarge = "payload_too_large", TooLarge;
    MetadataTooLarge = "metadata_too_large", TooLarge;
    /// Over `limits.max_attachment_bytes`.
    AttachmentTooLarge = "attachment_too_large", TooLarge;
    /// A content type `attachments.allowed_types` does not allow (or denies).
    ContentTypeNotAllowed = "content_type_not_allowed", UnsupportedMediaType;
    UnsupportedMediaType = "unsupported_media_type", UnsupportedMediaType;
    IdempotencyKeyReused = "idempotency_key_reused", Unprocessable;
    /// Uploaded bytes that differ from the declared size, SHA-256 or content type.
    AttachmentMismatch = "attachment_mismatch", Unprocessable;
    RateLimited = "rate_limited", RateLimited;
    /// Over `ws.max_per_user` or `ws.max_per_ip`, at the upgrade.
    TooManyWebsockets = "too_many_websockets", RateLimited;
    HeadersTooLarge = "headers_too_large", HeadersTooLarge;
    Internal = "internal", Internal;
    CorruptSegment = "corrupt_segment", Internal;
    DependencyUnavailable = "dependency_unavailable", Unavailable;
    SeqUnavailable = "seq_unavailable", Unavailable;
    /// Over `http.max_connections`: answered by the listener before any
    /// request is read, so it is written out there rather than built here.
    TooManyConnections = "too_many_connections", Unavailable;
    // WebSocket `error` frames only.
    InvalidFrame = "invalid_frame", Invalid;
    UnknownOp = "unknown_op", Invalid;
    TooManySubscriptions = "too_many_subscriptions", Invalid;
    InvalidSinceSeq = "invalid_since_seq", Invalid;
    /// The messages after `since_seq` are past retention: resync from history.
    SinceSeqExpired = "since_seq_expired", Invalid;
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A code serializes as its string, so error bodies and frames can embed it as is.
impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Error {
    /// Stable code, part of the public API; it decides the [`Kind`].
    pub code: Code,
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
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), rate: None }
    }

    /// The answer to anyone who may not see a conversation, whether it exists or not.
    pub fn not_member() -> Self {
        Error::new(Code::NotMember, "not a member of this conversation (or it does not exist)")
    }

    pub fn kind(&self) -> Kind {
        self.code.kind()
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn codes_are_distinct_snake_case_strings() {
        let mut seen = std::collections::BTreeSet::new();
        for code in Code::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} is the string of two codes");
            assert!(text.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{text} is not snake_case");
        }
    }
}
