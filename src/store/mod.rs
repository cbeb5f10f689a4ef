//! The storage layer: the only code that talks to Postgres, SQLite, Redis or an
//! object store (ARCHITECTURE.md, "Bird's-eye view").
//!
//! By concern: [`Metadata`] (one type over Postgres or SQLite: the same
//! query text for both dialects), the tail's four interfaces — [`Tail`] (the
//! log: seqs, appends, idempotency, dirty marks), [`Live`] (publish and
//! subscribe), [`TtlState`] (ephemeral hashes) and [`Coordination`] (rate
//! limits, leases) — and [`Objects`] (S3 or the local filesystem). Services
//! mode backs the tail interfaces with Redis; embedded mode with SQLite,
//! in-process fanout and [`coordination::InProcess`]. [`Stores::open`] picks
//! them from the config. Nothing here knows about HTTP,
//! keys' formats or messages' shapes: callers hand in bytes and plain rows.

pub mod coordination;
mod group_commit;
mod live;
mod metadata;
mod objects;
mod redis_tail;
mod sql;
mod sqlite_tail;
mod state;
mod tail;

use std::sync::Arc;

use anyhow::Context;
use std::time::{Duration, Instant};

pub use coordination::Coordination;
pub use live::{Live, LiveEvent, LiveMessage, LiveSubscription};
pub use metadata::{
    ApiKeyRow, AppRow, AttachmentRow, BlockRow, ConversationRow, ConversationUpdate, FlushAdvance, FlushStateRow,
    IdempotencyRecordRow, InboxRow, MemberChange, MemberOutcome, MemberRow, MessageChangeRow, MetadataSnapshot,
    ReactionCount, ReactionRow, ReplyRow, SegmentRow, ServerSecretRow, SnapshotMember,
};
pub use objects::Objects;
pub use sql::{ExpiredTotals, Expiring, Metadata, SQLITE_FILE};
pub use state::TtlState;
pub use tail::{
    AppendOutcome, AppendRequest, ConvKey, DirtyConversation, IdempotencyClaim, Tail, TailEntry, TailMemory,
    TAIL_SHARDS,
};

use crate::config::{Backend, Config};
use crate::error::{Code, Error};
use crate::telemetry::Metrics;

/// Why a storage call failed, in the terms callers branch on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The dependency could not be reached or answered with an error; the
    /// request may succeed later.
    /// Shown with every URL redacted: driver errors may quote the dependency's.
    #[error("{dependency} unavailable: {}", crate::config::redact_text(.message))]
    Unavailable { dependency: &'static str, message: String },
    /// A uniqueness or state precondition failed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data did not have the expected shape.
    #[error("corrupt data in {dependency}: {message}")]
    Corrupt { dependency: &'static str, message: String },
}

/// A storage failure as the domain answers it: a dependency outage is
/// retryable, anything else an internal error whose details stay in the log.
impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable { .. } => {
                tracing::warn!(component = "store", error = %err, "dependency unavailable");
                Error::new(Code::DependencyUnavailable, "a storage dependency is unavailable; retry later")
            }
            StoreError::Conflict(_) | StoreError::Corrupt { .. } => {
                tracing::error!(component = "store", error = %err, "storage failure");
                Error::new(Code::Internal, "internal error")
            }
        }
    }
}

impl StoreError {
    pub(crate) fn unavailable(dependency: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Unavailable { dependency, message: err.to_string() }
    }
}

/// One dependency's readiness, as `/readyz` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DependencyStatus {
    /// `postgres`, `redis`, `s3`, or `sqlite`, `tail`, `filesystem` when embedded.
    pub name: &'static str,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The opened stores of one deployment.
#[derive(Clone)]
pub struct Stores {
    pub metadata: Arc<Metadata>,
    pub tail: Arc<dyn Tail>,
    pub live: Arc<dyn Live>,
    pub state: Arc<dyn TtlState>,
    pub coordination: Arc<dyn Coordination>,
    pub objects: Objects,
    pub deployment: Deployment,
}

/// Which deployment a set of stores is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// SQLite, the in-process tail, local files.
    Embedded,
    /// Postgres, Redis, S3.
    Services,
}

impl Deployment {
    /// The name logs and `/readyz` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Deployment::Embedded => "embedded",
            Deployment::Services => "services",
        }
    }
}

impl Stores {
    /// Opens the stores the config names. Services are connected lazily: a
    /// dependency that is down now makes [`Stores::check`] report it, and work
    /// resumes by itself when it returns. Embedded stores are opened eagerly
    /// because a failure there (an unwritable data dir) is a config problem.
    pub async fn open(config: &Config, metrics: &Metrics) -> anyhow::Result<Stores> {
        Self::open_unredacted(config, metrics).await.map_err(redacted)
    }

    async fn open_unredacted(config: &Config, metrics: &Metrics) -> anyhow::Result<Stores> {
        match &config.backend {
            Backend::Embedded => {
                let db = Metadata::open_sqlite(&config.data_dir).await?;
                let objects = Objects::local(&config.data_dir.join("objects"), metrics)?;
                let tail = Arc::new(sqlite_tail::SqliteTail::new(db.clone()));
                let coordination = Arc::new(coordination::InProcess::default());
                let grouped =
                    Arc::new(group_commit::Grouped::new(tail.clone(), tail.clone(), coordination.clone(), metrics));
                Ok(Stores {
                    metadata: Arc::new(db),
                    tail: grouped.clone(),
                    live: tail,
                    state: grouped,
                    // Rate limits in memory gain nothing from grouping.
                    coordination,
                    objects,
                    deployment: Deployment::Embedded,
                })
            }
            Backend::Services(services) => {
                let db = Metadata::connect_postgres(&services.postgres)?;
                let tail =
                    Arc::new(redis_tail::RedisTail::open(&services.redis, config.limits.idempotency_ttl, metrics)?);
                let objects = Objects::s3(&services.s3, metrics)?;
                let grouped = Arc::new(group_commit::Grouped::new(tail.clone(), tail.clone(), tail.clone(), metrics));
                Ok(Stores {
                    metadata: Arc::new(db),
                    tail: grouped.clone(),
                    live: tail,
                    state: grouped.clone(),
                    coordination: grouped,
                    objects,
                    deployment: Deployment::Services,
                })
            }
        }
    }

    /// Opens only the metadata store, connected and migrated now: for one-shot
    /// commands (`msgd keys`) that should fail fast with a clear error.
    pub async fn open_metadata(config: &Config) -> anyhow::Result<Arc<Metadata>> {
        match &config.backend {
            Backend::Embedded => Ok(Arc::new(Metadata::open_sqlite(&config.data_dir).await?)),
            Backend::Services(services) => {
                let db = Metadata::connect_postgres(&services.postgres).map_err(redacted)?;
                db.migrate()
                    .await
                    .with_context(|| format!("postgres at {} is not usable", services.postgres.url.redacted()))?;
                Ok(Arc::new(db))
            }
        }
    }

    /// Checks every dependency concurrently, each bounded by `timeout`.
    pub async fn check(&self, timeout: Duration) -> Vec<DependencyStatus> {
        let (meta_name, tail_name, objects_name) = match self.deployment {
            Deployment::Embedded => ("sqlite", "tail", "filesystem"),
            Deployment::Services => ("postgres", "redis", "s3"),
        };
        let (meta, tail, objects) = tokio::join!(
            timed(meta_name, timeout, self.metadata.ping()),
            timed(tail_name, timeout, self.tail.ping()),
            timed(objects_name, timeout, self.objects.ping()),
        );
        vec![meta, tail, objects]
    }
}

/// An opening error as it may be shown: client constructors quote the URLs
/// they were given (an endpoint with credentials, a malformed URL).
fn redacted(err: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(crate::config::redact_text(&format!("{err:#}")))
}

async fn timed(
    name: &'static str,
    timeout: Duration,
    check: impl std::future::Future<Output = Result<(), StoreError>>,
) -> DependencyStatus {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, check).await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("{name} did not answer within {} ms", timeout.as_millis())),
    };
    DependencyStatus { name, ok: error.is_none(), latency_ms, error }
}
