//! The flush: moves messages from the tail into segments (ARCHITECTURE.md,
//! "Segments and the flush"). One function, [`Flusher::tick`], runs in the
//! [`FlushWorker`] `serve` runs and once from `msgd flush`;
//! [`Flusher::recover`] and [`Flusher::reindex`] repair the index from the
//! objects.
//!
//! A tick takes the dirty conversations past a threshold (in the shards whose
//! lease this instance holds), packs their unflushed ranges into one object
//! per app, PUTs it, then in one metadata transaction indexes it and advances
//! each conversation's flushed seq — guarded, so a stale flusher cannot
//! commit — and only then trims the tail, keeping `flush.hot_window`. A crash
//! anywhere loses nothing: until the commit the tail holds every message, and
//! an object without index rows is an orphan that recovery indexes or deletes.
//!
//! The parts: `tick` (the pipeline stages), `compact` (merging a window's
//! segments into fewer, larger blocks), `repair` (recovery and reindex),
//! `index` (segment object ↔ index rows) and `ticker` (the worker).

/// Logs a flush event with the `component` and `worker` fields every flush
/// line carries. A tick span would carry them (and `tick-id`) once, but the
/// JSON log format lists span fields under `spans` instead of flattening them
/// into the line, so the fields stay on each event, as operators query them.
macro_rules! flush_event {
    ($level:ident, $($fields:tt)+) => {
        tracing::$level!(component = "segment-flush", worker = "segment-flush", $($fields)+)
    };
}

/// Logs a compaction event with its `component` and `worker` fields.
macro_rules! compaction_event {
    ($level:ident, $($fields:tt)+) => {
        tracing::$level!(component = "segment-compaction", worker = "compaction", $($fields)+)
    };
}

mod check;
mod compact;
mod index;
mod repair;
mod tick;
mod ticker;

use std::time::Duration;

use serde::Serialize;

use crate::config::FlushConfig;
use crate::segment;
use crate::store::{StoreError, Stores};
use crate::telemetry::Metrics;

pub use check::{CheckReport, LostIn, LostRange};
pub use compact::{CompactReport, OBJECT_BYTES as COMPACTION_OBJECT_BYTES};
pub use index::segment_key;
pub use ticker::{CompactionWorker, FlushWorker};

/// How long a shard lease lasts without renewal. A crashed instance's shards
/// wait this long for another instance; a long tick renews its leases.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// Tail entries read per request while snapshotting a conversation.
const READ_PAGE: usize = 1000;
/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct FlushOptions {
    /// Flush every dirty conversation, whatever the thresholds say.
    pub all: bool,
    /// Plan only: read and encode, write nothing.
    pub dry_run: bool,
}

/// One segment a tick wrote (or, dry, would write).
#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub app_id: String,
    pub object_key: String,
    pub blocks: Vec<segment::BlockMeta>,
    pub records: u64,
    pub bytes: u64,
    pub raw_bytes: u64,
}

/// What a tick did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlushReport {
    pub tick_id: String,
    pub dry_run: bool,
    pub segments: Vec<SegmentReport>,
    /// Tail entries removed after the commit.
    pub trimmed: u64,
    /// Shards another instance held the lease of.
    pub skipped_shards: u32,
    /// Dirty conversations below both thresholds, left for later.
    pub deferred: u64,
    /// Conversations skipped because their tail has a hole after the flushed
    /// seq (lost tail data: needs an operator, see runbooks/flush.md).
    pub holes: u64,
    /// Dry runs only: the tail entries the trim would remove.
    pub would_trim: u64,
    /// Dry runs only: every conversation with unflushed messages, due now or not.
    pub waiting: Vec<Waiting>,
}

/// One conversation with unflushed messages, as a dry run lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub app_id: String,
    pub conversation_id: String,
    /// Messages appended since the conversation became dirty.
    pub messages: u64,
    /// Body bytes appended since then.
    pub bytes: u64,
    /// Receive time of the oldest unflushed message (Unix ms).
    pub oldest_ts_ms: i64,
    /// Whether this tick flushes it (its app has a conversation past a
    /// threshold, or `--all`); otherwise it waits for `flush.max_age`/`max_bytes`.
    pub due: bool,
}

/// Why a tick, recovery or reindex failed. Every failure belongs to a stage
/// (`stage()`), the `stage` log field and what operators look up in
/// runbooks/flush.md.
#[derive(Debug)]
pub enum FlushError {
    /// A store call failed; the next tick (or run) retries.
    Store { stage: &'static str, source: StoreError },
    /// A message or the segment did not encode.
    Encode(String),
    /// An object under `segments/` is not a readable segment.
    Unreadable(String),
    /// The conversation's tail does not continue right after its flushed seq
    /// (lost tail data): flushing it would write the hole into history.
    Hole { conversation_id: String, flushed: u64 },
}

impl FlushError {
    pub fn stage(&self) -> &'static str {
        match self {
            FlushError::Store { stage, .. } => stage,
            FlushError::Encode(_) => "encode",
            FlushError::Unreadable(_) => "reindex-read",
            FlushError::Hole { .. } => "buffer-snapshot",
        }
    }

    /// What went wrong, without the stage (the `error.message` log field).
    pub fn detail(&self) -> String {
        match self {
            FlushError::Store { source, .. } => source.to_string(),
            FlushError::Encode(message) | FlushError::Unreadable(message) => message.clone(),
            FlushError::Hole { conversation_id, flushed } => {
                format!("conversation {conversation_id} has a hole after flushed seq {flushed}")
            }
        }
    }
}

impl std::fmt::Display for FlushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flush stage {} failed: {}", self.stage(), self.detail())
    }
}

/// The source is not chained: [`FlushError::detail`] already says it, and a
/// chain would print it twice.
impl std::error::Error for FlushError {}

/// Maps a store failure to the stage it happened in.
fn store_error(stage: &'static str) -> impl Fn(StoreError) -> FlushError {
    move |source| FlushError::Store { stage, source }
}

/// What recovery or reindexing did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub objects: u64,
    pub indexed: u64,
    pub deleted: u64,
    pub already_indexed: u64,
    /// Compaction objects without rows, younger than an hour: possibly a
    /// running compaction's, so left for a later pass.
    pub pending: u64,
    /// Reindex only: flush segments whose ranges a compaction segment already
    /// indexes (compaction committed, the old object not yet deleted).
    pub superseded: u64,
}

pub struct Flusher {
    stores: Stores,
    metrics: Metrics,
    config: FlushConfig,
    /// This instance's lease holder id.
    holder: String,
}

impl Flusher {
    pub fn new(stores: Stores, metrics: Metrics, config: FlushConfig) -> Flusher {
        Flusher { stores, metrics, config, holder: uuid::Uuid::new_v4().to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_stage_and_say_what_went_wrong() {
        let hole = FlushError::Hole { conversation_id: "c1".into(), flushed: 7 };
        assert_eq!(hole.stage(), "buffer-snapshot");
        assert_eq!(
            hole.to_string(),
            "flush stage buffer-snapshot failed: conversation c1 has a hole after flushed seq 7"
        );
        let store = FlushError::Store { stage: "lease", source: StoreError::Conflict("held".into()) };
        assert_eq!((store.stage(), store.detail()), ("lease", "conflict: held".to_string()));
    }
}
