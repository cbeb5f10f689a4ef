//! A deployment a test writes into with chosen receive times and flushes
//! "then" (the clock injected into the flush, retention and compaction), and
//! the physical checks the retention and compaction tests end with.

use std::collections::BTreeMap;

use msgd::config::Config;
use msgd::flush::{FlushOptions, Flusher};
use msgd::retention::Retention;
use msgd::store::{AppendOutcome, AppendRequest, ConvKey, SegmentRow, Stores};
use msgd::telemetry::Metrics;
use msgd::timeline::Timeline;
use serde_json::json;

use super::api::create_app;
use super::{Backend, TestEnv};

/// A deployment the test writes into with chosen receive times, flushing "then".
pub struct History {
    pub env: TestEnv,
    pub config: Config,
    pub stores: Stores,
    pub app_id: String,
    /// Per conversation, the receive time of each seq (index = seq − 1).
    pub sent: BTreeMap<String, Vec<i64>>,
}

impl History {
    pub async fn new(backend: Backend, vars: &[(&str, &str)]) -> History {
        let mut env = TestEnv::new(backend).await;
        env.set("MSGD_FLUSH__HOT_WINDOW", "3");
        for (name, value) in vars {
            env.set(name, value);
        }
        // Through the CLI, which also migrates the schema.
        let (app_id, _) = create_app(&env, "retention");
        let config = env.config();
        let stores = Stores::open(&config, &Metrics::new("test")).await.unwrap();
        History { env, config, stores, app_id, sent: BTreeMap::new() }
    }

    pub fn conv(&self, conversation: &str) -> ConvKey {
        ConvKey::new(&self.app_id, conversation)
    }

    /// Appends one message per receive time in `times` to `conversation`.
    pub async fn append(&mut self, conversation: &str, times: &[i64]) {
        let conv = self.conv(conversation);
        let sent = self.sent.entry(conversation.to_string()).or_default();
        self.stores.tail.seed_seq(&conv, sent.len() as u64).await.unwrap();
        for &ts in times {
            let envelope = json!({"v": 1, "id": uuid::Uuid::now_v7().to_string(), "conversation_id": conversation,
                                  "ts": ts, "sender": {"kind": "user", "id": "alice"}, "payload": {"n": sent.len()},
                                  "attachments": []});
            let request = AppendRequest {
                conv: conv.clone(),
                ts_ms: ts,
                body: serde_json::to_vec(&envelope).unwrap(),
                idempotency: None,
            };
            let outcome = self.stores.tail.append(&request).await.unwrap();
            assert!(matches!(outcome, AppendOutcome::Appended(_)), "{outcome:?}");
            sent.push(ts);
        }
    }

    /// A flush tick of everything dirty, at `now`: one segment.
    pub async fn flush_at(&self, now: i64) {
        let flusher = self.flusher(self.config.flush.clone());
        let report = flusher.tick(FlushOptions { all: true, dry_run: false }, now).await.unwrap();
        assert_eq!((report.holes, report.segments.len()), (0, 1), "{report:?}");
    }

    pub fn flusher(&self, config: msgd::config::FlushConfig) -> Flusher {
        Flusher::new(self.stores.clone(), Metrics::new("test"), config)
    }

    pub fn retention(&self) -> Retention {
        Retention::new(self.stores.clone(), Metrics::new("test"), &self.config)
    }

    /// Every segment row.
    pub async fn segments(&self) -> Vec<SegmentRow> {
        self.stores.metadata.expired_segments(i64::MAX, None, 10_000).await.unwrap()
    }

    /// No index row without its object (of the size the row says), no object
    /// without its row; returns the bytes the objects hold.
    pub async fn assert_index_matches_objects(&self) -> u64 {
        let segments = self.segments().await;
        let mut keys = self.stores.objects.list("segments/").await.unwrap();
        keys.sort();
        let mut indexed: Vec<String> = segments.iter().map(|s| s.object_key.clone()).collect();
        indexed.sort();
        assert_eq!(keys, indexed, "{:?}: objects and index rows differ", self.env.backend);
        let mut bytes = 0;
        for segment in &segments {
            let size = self.stores.objects.size(&segment.object_key).await.unwrap();
            assert_eq!(size, segment.byte_length as u64, "{}", segment.object_key);
            bytes += size;
            let blocks = self.stores.metadata.blocks_of_segment(&segment.id).await.unwrap();
            assert!(!blocks.is_empty(), "{:?}: segment {} has no block rows", self.env.backend, segment.id);
        }
        bytes
    }

    /// `conversation` reads back exactly its messages received at or after
    /// `cutoff`, in seq order with no gap, and keeps nothing older in its tail.
    pub async fn assert_window(&self, conversation: &str, cutoff: i64) {
        let conv = self.conv(conversation);
        let sent = &self.sent[conversation];
        let expected: Vec<u64> = (1..=sent.len() as u64).filter(|seq| sent[*seq as usize - 1] >= cutoff).collect();
        let timeline =
            Timeline::new(self.stores.clone(), Metrics::new("test"), 1 << 20, self.config.retention.period_ms());
        let read = timeline.read(&conv, 1, sent.len() as u64, cutoff).await.unwrap();
        let seqs: Vec<u64> = read.iter().map(|envelope| envelope.seq).collect();
        assert_eq!(seqs, expected, "{:?}: {conversation}", self.env.backend);
        for envelope in &read {
            assert_eq!(envelope.ts, sent[envelope.seq as usize - 1]);
        }
        let flushed = self.stores.metadata.flushed_seq(&conv).await.unwrap();
        for entry in self.stores.tail.read(&conv, 0, 10_000).await.unwrap() {
            assert!(
                entry.ts_ms >= cutoff || entry.seq > flushed,
                "{conversation}: tail keeps expired seq {}",
                entry.seq
            );
        }
    }
}

pub fn conversation() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Deletes the segment index and the flush state (metadata lost, objects kept).
pub async fn drop_index(env: &TestEnv) {
    match env.backend {
        Backend::Embedded => {
            let path = env.config().data_dir.join("msgd.sqlite");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
            for table in ["segment_blocks", "segments", "flush_state"] {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&pool).await.unwrap();
            }
        }
        Backend::Services => {
            let pool = sqlx::PgPool::connect(env.var("MSGD_POSTGRES__URL").unwrap()).await.unwrap();
            sqlx::query("TRUNCATE segment_blocks, segments, flush_state").execute(&pool).await.unwrap();
        }
    }
}

/// Where the object at `key` is on disk: the embedded store's directory, or
/// the test S3 server's (s3s-fs keeps one file per object).
pub fn object_path(env: &TestEnv, key: &str) -> std::path::PathBuf {
    match env.backend {
        Backend::Embedded => env.config().data_dir.join("objects").join(key),
        Backend::Services => {
            let root = super::services_env().expect("services env").s3_root;
            root.join(env.var("MSGD_S3__BUCKET").unwrap()).join(key)
        }
    }
}
