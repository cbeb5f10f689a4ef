//! The realtime tail interface: per-conversation seq assignment, the durable
//! recent-message log, live publish/subscribe and TTL'd state (receipts).
//!
//! Services mode keeps it in Redis, embedded mode in SQLite with in-process
//! fanout; both honour the same contract: one atomic step checks idempotency,
//! assigns the next seq, appends, marks the conversation dirty and publishes.
//! Bodies are opaque bytes: the envelope format belongs to the domain layer.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// Number of flush shards. Part of the Redis key schema (keys are hash-tagged
/// `{sN}` by shard), so it never changes for an existing deployment.
pub const TAIL_SHARDS: u32 = 64;

/// Names one conversation of one app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvKey {
    pub app_id: String,
    pub conversation_id: String,
}

impl ConvKey {
    pub fn new(app_id: impl Into<String>, conversation_id: impl Into<String>) -> Self {
        ConvKey { app_id: app_id.into(), conversation_id: conversation_id.into() }
    }

    /// The flush shard of this conversation: FNV-1a of the ids, stable across
    /// releases and platforms.
    pub fn shard(&self) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in self.app_id.bytes().chain([0u8]).chain(self.conversation_id.bytes()) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % TAIL_SHARDS
    }
}

/// A retry-safe claim on an idempotency key, checked inside the append step.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    /// A digest of the request; the same key with another fingerprint is a
    /// reuse, not a replay.
    pub fingerprint: String,
    pub ttl: Duration,
    /// The durable record was already searched for this key (after a
    /// [`AppendOutcome::CheckRecord`]): the tail must not ask again.
    pub record_checked: bool,
}

#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub conv: ConvKey,
    /// Server receive time, Unix milliseconds.
    pub ts_ms: i64,
    /// The encoded message without its seq (the domain layer adds it on read).
    pub body: Vec<u8>,
    pub idempotency: Option<IdempotencyClaim>,
}

/// One message in the tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailEntry {
    pub seq: u64,
    pub ts_ms: i64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Written with the next seq.
    Appended(TailEntry),
    /// The idempotency key was already used with the same fingerprint for `seq`:
    /// nothing was written.
    Replayed { seq: u64 },
    /// The idempotency key was already used with a different fingerprint.
    KeyReused { seq: u64 },
    /// The conversation's counter is missing (new conversation, or the tail lost
    /// it): call [`Tail::seed_seq`] with the highest seq known elsewhere, then
    /// append again. This is what keeps seq from regressing after a loss.
    NeedsSeed,
    /// The key may be one whose claim this tail released after its message
    /// was flushed ([`Tail::release_claims`]): nothing was written; look the
    /// key up in the durable record (`crate::idempotency`), then append again
    /// with `record_checked` set if it is not there.
    CheckRecord,
    /// An earlier message of the batch stopped the step (`CheckRecord`):
    /// nothing of this one was written; append it again.
    NotAttempted,
}

/// A conversation with messages not yet in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyConversation {
    pub conv: ConvKey,
    /// Receive time of the oldest unflushed message.
    pub first_ts_ms: i64,
    /// Body bytes appended since the conversation became dirty.
    pub bytes: u64,
    /// Messages appended since the conversation became dirty.
    pub messages: u64,
}

#[async_trait]
pub trait Tail: Send + Sync {
    /// Succeeds when the tail answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The atomic write step for messages of one conversation, in order, in
    /// one round trip (Redis) or one transaction (SQLite): per message the
    /// idempotency check (a key used earlier in the same batch counts), next
    /// seq, append; then the dirty mark and live publish. Returns one outcome
    /// per request, only once the appended entries are durable in the tail.
    /// Every request must name the same conversation.
    async fn append_batch(&self, requests: &[AppendRequest]) -> Result<Vec<AppendOutcome>, StoreError>;

    /// [`Tail::append_batch`] for one message.
    async fn append(&self, request: &AppendRequest) -> Result<AppendOutcome, StoreError> {
        let mut outcomes = self.append_batch(std::slice::from_ref(request)).await?;
        outcomes.pop().ok_or_else(|| StoreError::Corrupt { dependency: "tail", message: "no append outcome".into() })
    }

    /// The live claims on idempotency keys, as (seq, fingerprint), one per
    /// key in order: a read-only peek that lets a replay skip rate limiting.
    /// `append_batch` still decides.
    async fn idempotency_claims(&self, conv: &ConvKey, keys: &[&str])
        -> Result<Vec<Option<(u64, String)>>, StoreError>;

    /// Sets the conversation's counter to `last_seq` when it is missing or lower
    /// (never lowers it).
    async fn seed_seq(&self, conv: &ConvKey, last_seq: u64) -> Result<(), StoreError>;

    /// The last assigned seq, `None` when the counter is missing.
    async fn last_seq(&self, conv: &ConvKey) -> Result<Option<u64>, StoreError>;

    /// Entries with seq > `after_seq`, ascending, at most `limit`.
    async fn read(&self, conv: &ConvKey, after_seq: u64, limit: usize) -> Result<Vec<TailEntry>, StoreError>;

    /// Drops entries with seq ≤ `through_seq`; returns how many were removed.
    async fn trim(&self, conv: &ConvKey, through_seq: u64) -> Result<u64, StoreError>;

    /// The dirty conversations of one shard.
    async fn dirty(&self, shard: u32) -> Result<Vec<DirtyConversation>, StoreError>;

    /// Clears the dirty mark when nothing was appended since `seen` was read
    /// (otherwise the conversation stays dirty for the next flush).
    async fn clear_dirty(&self, seen: &DirtyConversation) -> Result<bool, StoreError>;

    /// Whether this tail releases the claims of flushed messages
    /// ([`Tail::release_claims`]), because they cost memory (Redis). A tail
    /// that keeps them on disk for the whole window (embedded) never asks
    /// for the durable record.
    fn releases_claims(&self) -> bool;

    /// Drops the claims on `keys` in `conv`, whose messages are in a segment
    /// and whose durable record is written, at `now` (Unix ms); returns how
    /// many were held. Until the idempotency window has passed, appends with
    /// one of these keys answer [`AppendOutcome::CheckRecord`]. Only called
    /// when [`Tail::releases_claims`]; a tail that keeps its claims releases none.
    async fn release_claims(&self, conv: &ConvKey, keys: &[String], now: i64) -> Result<u64, StoreError>;

    /// Deletes expired idempotency claims where the store does not expire
    /// them by itself (Redis does; the embedded tail needs this); returns how
    /// many were removed.
    async fn purge_expired(&self) -> Result<u64, StoreError>;

    /// The memory the tail's server uses, where it is a server of its own
    /// (Redis); `None` for the embedded tail, whose memory is msgd's.
    async fn memory(&self) -> Result<Option<TailMemory>, StoreError> {
        Ok(None)
    }
}

/// A tail server's memory, from Redis `INFO memory`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TailMemory {
    pub used_bytes: i64,
    pub peak_bytes: i64,
    /// `maxmemory`; 0 when no limit is set.
    pub max_bytes: i64,
    pub fragmentation_ratio: f64,
}

impl TailMemory {
    /// Reads the fields of an `INFO memory` reply (`name:value` lines).
    pub fn from_info(info: &str) -> TailMemory {
        let mut memory = TailMemory::default();
        for (name, value) in info.lines().filter_map(|line| line.trim().split_once(':')) {
            match name {
                "used_memory" => memory.used_bytes = value.parse().unwrap_or(0),
                "used_memory_peak" => memory.peak_bytes = value.parse().unwrap_or(0),
                "maxmemory" => memory.max_bytes = value.parse().unwrap_or(0),
                "mem_fragmentation_ratio" => memory.fragmentation_ratio = value.parse().unwrap_or(0.0),
                _ => {}
            }
        }
        memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_memory_is_read_by_field_name() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nused_memory_peak:2097152\r\n\
                    maxmemory:268435456\r\nmem_fragmentation_ratio:1.25\r\n";
        let memory = TailMemory::from_info(info);
        assert_eq!((memory.used_bytes, memory.peak_bytes, memory.max_bytes), (1 << 20, 2 << 20, 256 << 20));
        assert_eq!(memory.fragmentation_ratio, 1.25);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        let conv = ConvKey::new("app_1", "0190c0de-0000-7000-8000-000000000001");
        assert_eq!(conv.shard(), conv.clone().shard());
        assert!(conv.shard() < TAIL_SHARDS);
    }
}
