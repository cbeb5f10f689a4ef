//! The metadata rows: apps, API keys, conversations, members and the
//! segment index, as [`super::Metadata`] (src/store/sql.rs) reads and writes
//! them. Plain rows; the rules about what the rows mean live in the domain
//! modules.

/// One application (tenant).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct AppRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// One API key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ApiKeyRow {
    /// The short public id embedded in the key, used for lookup and display.
    pub id: String,
    pub app_id: String,
    pub name: Option<String>,
    pub scope: String,
    /// The visible prefix (`msgd_sk` or `msgd_pk`).
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// The key that replaced this one by rotation.
    pub rotated_to: Option<String>,
}

/// One conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ConversationRow {
    pub app_id: String,
    pub id: String,
    pub title: Option<String>,
    /// JSON text.
    pub metadata: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    /// When it was archived (read-only); `None` while active.
    #[serde(default)]
    pub archived_at: Option<i64>,
    /// When it was deleted; a deleted conversation is never answered again
    /// and its row goes with retention. Absent in older backups.
    #[serde(default)]
    pub deleted_at: Option<i64>,
    /// The last change of title, metadata or archive state.
    #[serde(default)]
    pub updated_at: Option<i64>,
    /// The time of its newest message, as the activity worker last wrote it.
    #[serde(default)]
    pub last_activity_at: Option<i64>,
}

/// One conversation of an inbox page, with the caller's membership.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InboxRow {
    #[sqlx(flatten)]
    pub conversation: ConversationRow,
    /// The user's role; `None` for the app's own listing.
    pub role: Option<String>,
    pub muted: Option<bool>,
}

/// A change to a conversation's title, metadata or archive state; `None`
/// leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationUpdate {
    /// `Some(None)` clears the title.
    pub title: Option<Option<String>>,
    /// JSON text; `Some(None)` clears the metadata.
    pub metadata: Option<Option<String>>,
    /// `Some(true)` archives (keeping the first archive time), `Some(false)` unarchives.
    pub archived: Option<bool>,
}

/// One member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MemberRow {
    pub user_id: String,
    /// `owner`, `moderator` or `member`.
    pub role: String,
    pub joined_at: i64,
}

/// A change to one member: added or given a role, or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange<'a> {
    /// Adds the user (as `role`, else `member`) or sets an existing member's
    /// role (`None` keeps it).
    Put {
        role: Option<&'a str>,
        joined_at: i64,
    },
    Remove,
}

/// What [`MemberChange`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOutcome {
    /// The member's role before (`None`: was not a member) and after (`None`: is not one now).
    Done { before: Option<String>, after: Option<String> },
    /// The caller's rule refused the change, given the member's role before it.
    Refused { before: Option<String> },
    /// Refused: the conversation's other members would be left without an owner.
    LastOwner,
    /// No such conversation, or it was deleted.
    NoConversation,
}

/// One segment object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct SegmentRow {
    pub id: String,
    pub app_id: String,
    pub object_key: String,
    pub format_version: i32,
    pub byte_length: i64,
    pub record_count: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub created_at: i64,
}

/// One conversation's block within a segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct BlockRow {
    pub app_id: String,
    pub conversation_id: String,
    pub seq_start: i64,
    pub seq_end: i64,
    pub ts_start: i64,
    pub ts_end: i64,
    pub segment_id: String,
    pub byte_offset: i64,
    pub byte_length: i64,
    pub raw_length: i64,
    pub record_count: i64,
    pub checksum: i64,
}

/// The idempotency keys of one conversation's flushed range, kept for the
/// idempotency window after the tail released their claims: 24 bytes per
/// keyed message (key hash, seq, fingerprint; `crate::idempotency`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRecordRow {
    pub app_id: String,
    pub conversation_id: String,
    pub seq_start: i64,
    pub seq_end: i64,
    /// Receive time of the range's newest message: the row expires with it.
    pub ts_end: i64,
    pub entries: Vec<u8>,
}

/// A message edited or deleted after it was sent: what reads apply to its
/// immutable record (`crate::edits`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct MessageChangeRow {
    pub app_id: String,
    pub conversation_id: String,
    pub seq: i64,
    /// The message's receive time: the row expires with it.
    pub ts: i64,
    pub edit_seq: Option<i64>,
    pub edited_at: Option<i64>,
    /// The content the newest edit set, as JSON.
    pub content: Option<String>,
    pub deleted_at: Option<i64>,
    /// The delete event's seq, once it is in the log.
    pub delete_seq: Option<i64>,
}

/// A message sent in reply to another (its thread's parent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ReplyRow {
    pub app_id: String,
    pub conversation_id: String,
    pub parent_seq: i64,
    pub seq: i64,
    /// The reply's receive time: the row expires with it.
    pub ts: i64,
}

/// One user's reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ReactionRow {
    pub app_id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub reaction: String,
    pub user_id: String,
    /// The message's receive time: the row expires with it.
    pub ts: i64,
    pub created_at: i64,
}

/// The reactions of one message by reaction: how many users, and whether
/// the asking user is one of them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReactionCount {
    pub seq: i64,
    pub reaction: String,
    pub count: i64,
    pub mine: i64,
}

/// A guarded move of one conversation's flushed seq: it only happens if the
/// stored value still equals `from` (0 when there is no row yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushAdvance {
    pub app_id: String,
    pub conversation_id: String,
    pub from: u64,
    pub to: u64,
}

/// One attachment upload: where its object is and what it must hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct AttachmentRow {
    pub app_id: String,
    pub conversation_id: String,
    pub id: String,
    pub object_key: String,
    pub content_type: String,
    pub size: i64,
    /// Lowercase hex SHA-256 the uploader declared.
    pub sha256: String,
    pub filename: Option<String>,
    /// The user who asked for the upload, or `None` for an app key.
    pub uploaded_by: Option<String>,
    pub created_at: i64,
    pub upload_expires_at: i64,
    /// When the stored bytes were found to match the declared size and SHA-256.
    pub verified_at: Option<i64>,
    /// When a message last referenced it.
    pub referenced_at: Option<i64>,
}

/// The metadata a backup carries, read in one consistent snapshot: every
/// table but the segment index, which a restore rebuilds from the segment
/// objects' footers (so a backup never copies millions of block rows).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetadataSnapshot {
    pub apps: Vec<AppRow>,
    pub api_keys: Vec<ApiKeyRow>,
    pub conversations: Vec<ConversationRow>,
    pub members: Vec<SnapshotMember>,
    pub flush_state: Vec<FlushStateRow>,
    pub server_secrets: Vec<ServerSecretRow>,
    /// Absent in backups taken before attachments existed.
    #[serde(default)]
    pub attachments: Vec<AttachmentRow>,
    /// Absent in backups taken before edits and deletes existed.
    #[serde(default)]
    pub message_changes: Vec<MessageChangeRow>,
    /// Absent in backups taken before reactions existed.
    #[serde(default)]
    pub reactions: Vec<ReactionRow>,
    /// Absent in backups taken before replies existed.
    #[serde(default)]
    pub replies: Vec<ReplyRow>,
}

impl MetadataSnapshot {
    /// Rows per table, by table name.
    pub fn row_counts(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("apps", self.apps.len()),
            ("api_keys", self.api_keys.len()),
            ("conversations", self.conversations.len()),
            ("members", self.members.len()),
            ("flush_state", self.flush_state.len()),
            ("server_secrets", self.server_secrets.len()),
            ("attachments", self.attachments.len()),
            ("message_changes", self.message_changes.len()),
            ("message_reactions", self.reactions.len()),
            ("message_replies", self.replies.len()),
        ]
        .into_iter()
        .map(|(table, rows)| (table.to_string(), rows as u64))
        .collect()
    }
}

/// A member row with its conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct SnapshotMember {
    pub app_id: String,
    pub conversation_id: String,
    pub user_id: String,
    pub role: String,
    pub joined_at: i64,
    /// Absent in backups taken before the inbox existed.
    #[serde(default)]
    pub muted: bool,
}

/// How far a conversation is durably in segments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct FlushStateRow {
    pub app_id: String,
    pub conversation_id: String,
    pub flushed_seq: i64,
    pub updated_at: i64,
}

/// A key every instance shares (cursor HMAC, dev token signing).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ServerSecretRow {
    pub name: String,
    pub value: Vec<u8>,
    pub created_at: i64,
}
