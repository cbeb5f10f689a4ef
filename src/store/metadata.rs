//! The metadata interface: apps, API keys and (as later capabilities land)
//! conversations, members and the segment index. Plain rows in, plain rows
//! out; the rules about what the rows mean live in the domain modules.

use async_trait::async_trait;

use super::StoreError;

/// One application (tenant).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// One API key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    pub app_id: String,
    pub id: String,
    pub title: Option<String>,
    /// JSON text.
    pub metadata: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
}

/// One member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub user_id: String,
    /// `owner` or `member`.
    pub role: String,
    pub joined_at: i64,
}

/// One segment object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// A guarded move of one conversation's flushed seq: it only happens if the
/// stored value still equals `from` (0 when there is no row yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushAdvance {
    pub app_id: String,
    pub conversation_id: String,
    pub from: u64,
    pub to: u64,
}

#[async_trait]
pub trait Metadata: Send + Sync {
    /// Succeeds when the database answers a trivial query and the schema is
    /// migrated.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn insert_app(&self, app: &AppRow) -> Result<(), StoreError>;
    async fn get_app(&self, id: &str) -> Result<Option<AppRow>, StoreError>;
    async fn list_apps(&self) -> Result<Vec<AppRow>, StoreError>;

    async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), StoreError>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StoreError>;
    /// Keys of one app, or of all apps, oldest first.
    async fn list_api_keys(&self, app_id: Option<&str>) -> Result<Vec<ApiKeyRow>, StoreError>;
    /// Inserts `new` and, in the same transaction, points `old_id` at it and
    /// moves its expiry to `old_expires_at` (the end of the grace period).
    async fn rotate_api_key(&self, old_id: &str, old_expires_at: i64, new: &ApiKeyRow) -> Result<(), StoreError>;
    /// Marks a key revoked; returns false when no such key exists.
    async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Records use, at most once per `min_interval_ms` per key so the hot path
    /// does not write on every request.
    async fn touch_api_key(&self, id: &str, at: i64, min_interval_ms: i64) -> Result<(), StoreError>;

    /// Inserts a conversation and its first members in one transaction.
    async fn insert_conversation(
        &self,
        conversation: &ConversationRow,
        members: &[MemberRow],
    ) -> Result<(), StoreError>;
    async fn get_conversation(&self, app_id: &str, id: &str) -> Result<Option<ConversationRow>, StoreError>;
    /// Conversations of an app, newest first; only those `user_id` is a member of when given.
    async fn list_conversations(
        &self,
        app_id: &str,
        user_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ConversationRow>, StoreError>;
    async fn list_members(&self, app_id: &str, conversation_id: &str) -> Result<Vec<MemberRow>, StoreError>;
    async fn get_member(
        &self,
        app_id: &str,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberRow>, StoreError>;
    /// Adds a member; returns false when already a member (nothing changes).
    async fn add_member(&self, app_id: &str, conversation_id: &str, member: &MemberRow) -> Result<bool, StoreError>;
    /// Removes a member; returns false when not a member.
    async fn remove_member(&self, app_id: &str, conversation_id: &str, user_id: &str) -> Result<bool, StoreError>;

    /// The highest seq of a conversation durably in a segment (0 when none).
    async fn flushed_seq(&self, app_id: &str, conversation_id: &str) -> Result<u64, StoreError>;

    /// Indexes a segment: in one transaction inserts its row and its block
    /// rows and advances each conversation's flushed seq. Fails with
    /// [`StoreError::Conflict`] and changes nothing when any advance's guard
    /// does not hold (a stale or concurrent flusher).
    async fn commit_segment(
        &self,
        segment: &SegmentRow,
        blocks: &[BlockRow],
        advances: &[FlushAdvance],
    ) -> Result<(), StoreError>;
    /// Re-indexes a segment from its footer (disaster recovery): inserts what
    /// is missing and raises flushed seqs, never lowering one.
    async fn reindex_segment(&self, segment: &SegmentRow, blocks: &[BlockRow]) -> Result<bool, StoreError>;
    async fn segment_by_key(&self, object_key: &str) -> Result<Option<SegmentRow>, StoreError>;
    async fn blocks_of_segment(&self, segment_id: &str) -> Result<Vec<BlockRow>, StoreError>;
    /// A conversation's blocks, by seq.
    async fn blocks_of_conversation(&self, app_id: &str, conversation_id: &str) -> Result<Vec<BlockRow>, StoreError>;
    /// The blocks overlapping seqs `lo..=hi`, by seq, each with its object key.
    async fn blocks_in_range(
        &self,
        app_id: &str,
        conversation_id: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(BlockRow, String)>, StoreError>;

    /// The first block (by seq) of a conversation whose newest message is at
    /// or after `ts`: where a read from `ts` on starts in the segments.
    async fn first_block_since(
        &self,
        app_id: &str,
        conversation_id: &str,
        ts: i64,
    ) -> Result<Option<BlockRow>, StoreError>;

    /// The shared secret `name`, created from `candidate` when it does not exist
    /// yet; every caller gets the same value.
    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
}
