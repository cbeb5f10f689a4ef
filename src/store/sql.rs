//! The SQL metadata store: one implementation of [`Metadata`] over either a
//! Postgres pool (services) or a SQLite file in WAL mode (embedded).
//!
//! Both dialects accept the same statements here (`$N` placeholders, `ON
//! CONFLICT`, integer milliseconds for time), so each query is written once and
//! run against whichever pool is open. The schemas live in `migrations/postgres`
//! and `migrations/sqlite`, embedded in the binary.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgConnection, PgPool, SqlitePool};

use super::metadata::{
    ApiKeyRow, AppRow, AttachmentRow, BlockRow, ConversationRow, ConversationUpdate, FlushAdvance,
    IdempotencyRecordRow, InboxRow, MemberChange, MemberOutcome, MemberRow, MessageChangeRow, MetadataSnapshot,
    ReactionCount, ReactionRow, ReplyRow, SegmentRow,
};
use super::tail::ConvKey;
use super::StoreError;
use crate::config::PostgresConfig;

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The file embedded mode keeps its metadata and tail in.
pub const SQLITE_FILE: &str = "msgd.sqlite";

#[derive(Clone)]
pub(crate) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A metadata database handle; cheap to clone.
#[derive(Clone)]
pub struct Metadata {
    pub(crate) pool: Pool,
    /// Set once the migrations have been applied; `ping` reports not-ready until then.
    migrated: Arc<AtomicBool>,
    /// Where a Postgres pool connects, for [`Metadata::probe`]; `None` for SQLite.
    postgres: Option<Arc<PostgresTarget>>,
}

/// A Postgres server as a direct connection attempt reaches it.
struct PostgresTarget {
    options: PgConnectOptions,
    /// `host:port`, for messages: never the URL, which may hold a password.
    address: String,
    timeout: std::time::Duration,
}

/// Runs `$body` with `$pool` bound to the open pool, whichever dialect it is,
/// mapping driver errors to [`StoreError`].
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.pool {
            Pool::Postgres($pool) => $body.map_err(|e| db_error("postgres", e)),
            Pool::Sqlite($pool) => $body.map_err(|e| db_error("sqlite", e)),
        }
    };
}

fn db_error(dependency: &'static str, err: sqlx::Error) -> StoreError {
    if let Some(db) = err.as_database_error() {
        if db.is_unique_violation() || db.is_foreign_key_violation() {
            return StoreError::Conflict(db.message().to_string());
        }
    }
    match err {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            StoreError::Corrupt { dependency, message: err.to_string() }
        }
        other => StoreError::unavailable(dependency, other),
    }
}

/// Seqs as an SQL list, `1, 2, 3`: integers formatted here, never client
/// text, so safe to inline in a statement.
fn seq_list(seqs: &[u64]) -> String {
    seqs.iter().map(|seq| (*seq as i64).to_string()).collect::<Vec<_>>().join(", ")
}

impl Metadata {
    /// A lazily connecting Postgres pool: nothing is dialled until first use,
    /// so `serve` starts while Postgres is down. Call [`Metadata::migrate`] before
    /// relying on the schema.
    pub(crate) fn connect_postgres(config: &PostgresConfig) -> anyhow::Result<Metadata> {
        let options: PgConnectOptions = config
            .url
            .expose()
            .parse()
            .with_context(|| format!("postgres.url {} is not a usable connection string", config.url.redacted()))?;
        let options = options.application_name("msgd");
        let address = format!("{}:{}", options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options.clone());
        let target = PostgresTarget { options, address, timeout: config.connect_timeout };
        Ok(Metadata { pool: Pool::Postgres(pool), migrated: Arc::default(), postgres: Some(Arc::new(target)) })
    }

    /// While the pool holds no connection, one direct connection attempt: the
    /// pool retries a refused connection until its acquire timeout and then
    /// says only "pool timed out", where this names the cause at once
    /// (connection refused, no such host, authentication failed).
    async fn probe(&self) -> Result<(), StoreError> {
        let (Pool::Postgres(pool), Some(target)) = (&self.pool, &self.postgres) else { return Ok(()) };
        if pool.size() > 0 {
            return Ok(());
        }
        let refused = |reason: String| {
            StoreError::unavailable("postgres", format!("cannot connect to {}: {reason}", target.address))
        };
        match tokio::time::timeout(target.timeout, PgConnection::connect_with(&target.options)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(refused(e.to_string())),
            Err(_) => Err(refused(format!(
                "no answer within {} (postgres.connect_timeout)",
                humantime::format_duration(target.timeout)
            ))),
        }
    }

    /// Opens (creating when missing) the SQLite file under `data_dir` and
    /// applies the migrations.
    pub(crate) async fn open_sqlite(data_dir: &Path) -> anyhow::Result<Metadata> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
        let probe = data_dir.join(".msgd-write-test");
        std::fs::write(&probe, b"ok")
            .with_context(|| format!("the data dir {} is not writable", data_dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let path = data_dir.join(SQLITE_FILE);
        // WAL with synchronous=NORMAL survives any process crash; a power loss may
        // drop the last commits, the same window as Redis' `appendfsync everysec`.
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let db = Metadata { pool: Pool::Sqlite(pool), migrated: Arc::default(), postgres: None };
        db.migrate().await.with_context(|| format!("cannot migrate {}", path.display()))?;
        db.enable_incremental_vacuum().await.with_context(|| format!("cannot vacuum {}", path.display()))?;
        Ok(db)
    }

    /// Applies the embedded migrations; idempotent, and safe to run from several
    /// instances at once (the migrator takes a database lock).
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        self.probe().await?;
        match &self.pool {
            Pool::Postgres(pool) => PG_MIGRATOR.run(pool).await,
            Pool::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await,
        }
        .map_err(|e| StoreError::unavailable(self.dependency(), format!("migrations failed: {e}")))?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// A file created before msgd asked for incremental vacuum keeps the mode
    /// it was created with until a full `VACUUM` rewrites it: done once here,
    /// so that retention can hand deleted pages back to the file system.
    async fn enable_incremental_vacuum(&self) -> Result<(), sqlx::Error> {
        let Pool::Sqlite(pool) = &self.pool else { return Ok(()) };
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(pool).await?;
        if mode != 2 {
            tracing::info!(component = "store", "converting the SQLite file to incremental vacuum (once)");
            sqlx::query("PRAGMA auto_vacuum = INCREMENTAL").execute(pool).await?;
            sqlx::query("VACUUM").execute(pool).await?;
        }
        Ok(())
    }

    fn dependency(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }
}

const CONVERSATION_COLUMNS: &str =
    "app_id, id, title, metadata, created_by, created_at, archived_at, deleted_at, updated_at, last_activity_at";
const INSERT_MEMBER: &str = "INSERT INTO members (app_id, conversation_id, user_id, role, joined_at) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

const SEGMENT_COLUMNS: &str =
    "id, app_id, object_key, format_version, byte_length, record_count, min_ts, max_ts, created_at";
const BLOCK_COLUMNS: &str = "app_id, conversation_id, seq_start, seq_end, ts_start, ts_end, segment_id, byte_offset, \
                             byte_length, raw_length, record_count, checksum";
const INSERT_SEGMENT: &str =
    "INSERT INTO segments (id, app_id, object_key, format_version, byte_length, record_count, \
     min_ts, max_ts, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";
const INSERT_BLOCK: &str =
    "INSERT INTO segment_blocks (app_id, conversation_id, seq_start, seq_end, ts_start, ts_end, \
                            segment_id, byte_offset, byte_length, raw_length, record_count, checksum) \
                            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING";

/// Inserts a segment row and its block rows on `$executor` (a transaction);
/// evaluates to the number of segment rows inserted (0 when it existed).
macro_rules! insert_segment {
    ($tx:expr, $segment:expr, $blocks:expr) => {
        async {
            let s = $segment;
            let inserted = sqlx::query(INSERT_SEGMENT)
                .bind(&s.id)
                .bind(&s.app_id)
                .bind(&s.object_key)
                .bind(s.format_version)
                .bind(s.byte_length)
                .bind(s.record_count)
                .bind(s.min_ts)
                .bind(s.max_ts)
                .bind(s.created_at)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
            for b in $blocks {
                sqlx::query(INSERT_BLOCK)
                    .bind(&b.app_id)
                    .bind(&b.conversation_id)
                    .bind(b.seq_start)
                    .bind(b.seq_end)
                    .bind(b.ts_start)
                    .bind(b.ts_end)
                    .bind(&b.segment_id)
                    .bind(b.byte_offset)
                    .bind(b.byte_length)
                    .bind(b.raw_length)
                    .bind(b.record_count)
                    .bind(b.checksum)
                    .execute(&mut *$tx)
                    .await?;
            }
            Ok::<u64, sqlx::Error>(inserted)
        }
    };
}

/// Moves a flushed seq from `from` to `to` only if it still equals `from`.
const ADVANCE_FLUSH: &str = "UPDATE flush_state SET flushed_seq = $4, updated_at = $5 \
                             WHERE app_id = $1 AND conversation_id = $2 AND flushed_seq = $3";
const CREATE_FLUSH: &str = "INSERT INTO flush_state (app_id, conversation_id, flushed_seq, updated_at) \
                            VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const RAISE_FLUSH: &str = "INSERT INTO flush_state (app_id, conversation_id, flushed_seq, updated_at) \
                           VALUES ($1, $2, $3, $4) \
                           ON CONFLICT (app_id, conversation_id) DO UPDATE SET \
                           flushed_seq = CASE WHEN flush_state.flushed_seq < excluded.flushed_seq \
                           THEN excluded.flushed_seq ELSE flush_state.flushed_seq END, \
                           updated_at = excluded.updated_at";

const KEY_COLUMNS: &str =
    "id, app_id, name, scope, prefix, secret_hash, created_at, expires_at, revoked_at, last_used_at, rotated_to";
const INSERT_KEY: &str = "INSERT INTO api_keys (id, app_id, name, scope, prefix, secret_hash, created_at, expires_at) \
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

macro_rules! insert_key {
    ($executor:expr, $key:expr) => {
        sqlx::query(INSERT_KEY)
            .bind(&$key.id)
            .bind(&$key.app_id)
            .bind(&$key.name)
            .bind(&$key.scope)
            .bind(&$key.prefix)
            .bind(&$key.secret_hash)
            .bind($key.created_at)
            .bind($key.expires_at)
            .execute($executor)
    };
}

impl Metadata {
    /// Succeeds when the database answers a trivial query and the schema is
    /// migrated.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.probe().await?;
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|r| r.rows_affected()))?;
        if !self.migrated.load(Ordering::Acquire) {
            // Reachable but not migrated yet: migrate now rather than wait for the
            // boot loop's next attempt.
            self.migrate().await?;
        }
        Ok(())
    }

    pub async fn insert_app(&self, app: &AppRow) -> Result<(), StoreError> {
        on_db!(self, pool => sqlx::query("INSERT INTO apps (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&app.id)
            .bind(&app.name)
            .bind(app.created_at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn get_app(&self, id: &str) -> Result<Option<AppRow>, StoreError> {
        let sql = "SELECT id, name, created_at FROM apps WHERE id = $1";
        let row = on_db!(self, pool => sqlx::query_as::<_, AppRow>(sql)
            .bind(id)
            .fetch_optional(pool)
            .await)?;
        Ok(row)
    }

    pub async fn list_apps(&self) -> Result<Vec<AppRow>, StoreError> {
        let sql = "SELECT id, name, created_at FROM apps ORDER BY created_at, id";
        let rows = on_db!(self, pool => sqlx::query_as::<_, AppRow>(sql)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// Keys of one app, or of all apps, oldest first.
    /// Inserts `new` and, in the same transaction, points `old_id` at it and
    /// moves its expiry to `old_expires_at` (the end of the grace period).
    /// Marks a key revoked; returns false when no such key exists.
    /// Records use, at most once per `min_interval_ms` per key so the hot path
    /// does not write on every request.
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), StoreError> {
        on_db!(self, pool => insert_key!(pool, key).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = on_db!(self, pool => sqlx::query_as::<_, ApiKeyRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(pool)
            .await)?;
        Ok(row)
    }

    /// Keys of one app, or of all apps, oldest first.
    pub async fn list_api_keys(&self, app_id: Option<&str>) -> Result<Vec<ApiKeyRow>, StoreError> {
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1 IS NULL OR app_id = $1) ORDER BY created_at, id");
        let rows = on_db!(self, pool => sqlx::query_as::<_, ApiKeyRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(app_id)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// Inserts `new` and, in the same transaction, points `old_id` at it and
    /// moves its expiry to `old_expires_at` (the end of the grace period).
    pub async fn rotate_api_key(&self, old_id: &str, old_expires_at: i64, new: &ApiKeyRow) -> Result<(), StoreError> {
        // The guard on `rotated_to` makes a concurrent second rotation of the same
        // key fail instead of leaving two live successors.
        let update = "UPDATE api_keys SET rotated_to = $2, \
                      expires_at = CASE WHEN expires_at IS NULL OR expires_at > $3 THEN $3 ELSE expires_at END \
                      WHERE id = $1 AND rotated_to IS NULL AND revoked_at IS NULL";
        let updated = on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            insert_key!(&mut *tx, new).await?;
            let done = sqlx::query(update).bind(old_id).bind(&new.id).bind(old_expires_at).execute(&mut *tx).await?;
            if done.rows_affected() == 1 {
                tx.commit().await?;
            }
            Ok(done.rows_affected())
        }.await)?;
        if updated != 1 {
            return Err(StoreError::Conflict(format!("key {old_id} was already rotated or revoked")));
        }
        Ok(())
    }

    /// Marks a key revoked; returns false when no such key exists.
    pub async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
        let done = on_db!(self, pool => sqlx::query(sql)
            .bind(id)
            .bind(at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// Records use, at most once per `min_interval_ms` per key so the hot path
    /// does not write on every request.
    pub async fn touch_api_key(&self, id: &str, at: i64, min_interval_ms: i64) -> Result<(), StoreError> {
        on_db!(self, pool => sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id)
        .bind(at)
        .bind(at - min_interval_ms)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Inserts a conversation and its first members in one transaction.
    pub async fn insert_conversation(
        &self,
        conversation: &ConversationRow,
        members: &[MemberRow],
    ) -> Result<(), StoreError> {
        let c = conversation;
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO conversations (app_id, id, title, metadata, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&c.app_id)
            .bind(&c.id)
            .bind(&c.title)
            .bind(&c.metadata)
            .bind(&c.created_by)
            .bind(c.created_at)
            .execute(&mut *tx)
            .await?;
            for m in members {
                sqlx::query(INSERT_MEMBER)
                    .bind(&c.app_id)
                    .bind(&c.id)
                    .bind(&m.user_id)
                    .bind(&m.role)
                    .bind(m.joined_at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }.await)
    }

    pub async fn get_conversation(&self, conv: &ConvKey) -> Result<Option<ConversationRow>, StoreError> {
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL"
        );
        let row = on_db!(self, pool => sqlx::query_as::<_, ConversationRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .fetch_optional(pool)
            .await)?;
        Ok(row)
    }

    /// Conversations of an app, newest first; only those `user_id` is a member of when given.
    pub async fn list_conversations(
        &self,
        app_id: &str,
        user_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.app_id = $1 AND c.deleted_at IS NULL AND \
             ($2 IS NULL OR EXISTS \
             (SELECT 1 FROM members m WHERE m.app_id = c.app_id AND m.conversation_id = c.id AND m.user_id = $2)) \
             ORDER BY c.created_at DESC, c.id LIMIT $3"
        );
        let rows = on_db!(self, pool => sqlx::query_as::<_, ConversationRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(app_id)
            .bind(user_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    pub async fn list_members(&self, conv: &ConvKey) -> Result<Vec<MemberRow>, StoreError> {
        let rows = on_db!(self, pool => sqlx::query_as::<_, MemberRow>(
            "SELECT user_id, role, joined_at FROM members WHERE app_id = $1 AND conversation_id = $2 \
             ORDER BY joined_at, user_id",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .fetch_all(pool)
        .await)?;
        Ok(rows)
    }

    pub async fn get_member(&self, conv: &ConvKey, user_id: &str) -> Result<Option<MemberRow>, StoreError> {
        let row = on_db!(self, pool => sqlx::query_as::<_, MemberRow>(
            "SELECT user_id, role, joined_at FROM members WHERE app_id = $1 AND conversation_id = $2 AND user_id = $3",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .bind(user_id)
        .fetch_optional(pool)
        .await)?;
        Ok(row)
    }

    /// Changes a title, metadata or archive state; answers the conversation as
    /// it is now, `None` when it does not exist (or was deleted).
    pub async fn update_conversation(
        &self,
        conv: &ConvKey,
        update: &ConversationUpdate,
        now: i64,
    ) -> Result<Option<ConversationRow>, StoreError> {
        let archive: i32 = match update.archived {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        let sql = format!(
            "UPDATE conversations SET title = CASE WHEN $3 THEN $4 ELSE title END, \
             metadata = CASE WHEN $5 THEN $6 ELSE metadata END, \
             archived_at = CASE $7 WHEN 1 THEN COALESCE(archived_at, $8) WHEN 2 THEN NULL ELSE archived_at END, \
             updated_at = $8 WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING {CONVERSATION_COLUMNS}"
        );
        let row = on_db!(self, pool => sqlx::query_as::<_, ConversationRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(update.title.is_some())
            .bind(update.title.clone().flatten())
            .bind(update.metadata.is_some())
            .bind(update.metadata.clone().flatten())
            .bind(archive)
            .bind(now)
            .fetch_optional(pool)
            .await)?;
        Ok(row)
    }

    /// Marks a conversation deleted and removes its members, in one
    /// transaction; false when it does not exist (or was deleted already).
    pub async fn delete_conversation(&self, conv: &ConvKey, now: i64) -> Result<bool, StoreError> {
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            let marked = sqlx::query(
                "UPDATE conversations SET deleted_at = $3, updated_at = $3 \
                 WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL",
            )
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if marked == 0 {
                return Ok(false);
            }
            sqlx::query("DELETE FROM members WHERE app_id = $1 AND conversation_id = $2")
                .bind(&conv.app_id)
                .bind(&conv.conversation_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        }.await)
    }

    /// Applies `change` to `user_id`'s membership when `allowed` accepts the
    /// member's current role, in one transaction that holds the conversation
    /// (a row lock on Postgres, the write lock on SQLite), so two concurrent
    /// changes cannot both take away the last owner.
    pub async fn change_member(
        &self,
        conv: &ConvKey,
        user_id: &str,
        change: MemberChange<'_>,
        allowed: &(dyn Fn(Option<&str>) -> bool + Sync),
    ) -> Result<MemberOutcome, StoreError> {
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            let held = sqlx::query(
                "UPDATE conversations SET updated_at = updated_at WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL",
            )
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 0 {
                return Ok(MemberOutcome::NoConversation);
            }
            let before: Option<String> = sqlx::query_scalar(
                "SELECT role FROM members WHERE app_id = $1 AND conversation_id = $2 AND user_id = $3",
            )
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            if !allowed(before.as_deref()) {
                return Ok(MemberOutcome::Refused { before });
            }
            let after = match change {
                MemberChange::Put { role, .. } => Some(role.or(before.as_deref()).unwrap_or("member").to_string()),
                MemberChange::Remove => None,
            };
            if after == before {
                return Ok(MemberOutcome::Done { before, after });
            }
            let write = match (change, &after) {
                (MemberChange::Put { joined_at, .. }, Some(role)) => sqlx::query(
                    "INSERT INTO members (app_id, conversation_id, user_id, role, joined_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (app_id, conversation_id, user_id) DO UPDATE SET role = excluded.role",
                )
                .bind(&conv.app_id)
                .bind(&conv.conversation_id)
                .bind(user_id)
                .bind(role)
                .bind(joined_at),
                _ => sqlx::query("DELETE FROM members WHERE app_id = $1 AND conversation_id = $2 AND user_id = $3")
                    .bind(&conv.app_id)
                    .bind(&conv.conversation_id)
                    .bind(user_id),
            };
            write.execute(&mut *tx).await?;
            if before.as_deref() == Some("owner") {
                let (owners, members): (i64, i64) = sqlx::query_as(
                    "SELECT COALESCE(SUM(CASE WHEN role = 'owner' THEN 1 ELSE 0 END), 0), COUNT(*) \
                     FROM members WHERE app_id = $1 AND conversation_id = $2",
                )
                .bind(&conv.app_id)
                .bind(&conv.conversation_id)
                .fetch_one(&mut *tx)
                .await?;
                if owners == 0 && members > 0 {
                    return Ok(MemberOutcome::LastOwner);
                }
            }
            tx.commit().await?;
            Ok(MemberOutcome::Done { before, after })
        }.await)
    }

    /// Raises conversations' last activity to the given times (Unix ms), in
    /// one transaction; deleted and unknown conversations are skipped.
    pub async fn record_activity(&self, notes: &[(ConvKey, i64)]) -> Result<(), StoreError> {
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            for (conv, at) in notes {
                sqlx::query(
                    "UPDATE conversations SET last_activity_at = $3 WHERE app_id = $1 AND id = $2 \
                     AND deleted_at IS NULL AND (last_activity_at IS NULL OR last_activity_at < $3)",
                )
                .bind(&conv.app_id)
                .bind(&conv.conversation_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }.await)
    }

    /// One page of the inbox: an app's conversations (`user_id`'s only, with
    /// their role and mute flag, when given), by last activity (else creation
    /// time), newest first, after `after` (an activity time and id).
    pub async fn inbox(
        &self,
        app_id: &str,
        user_id: Option<&str>,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<InboxRow>, StoreError> {
        const ACTIVITY: &str = "COALESCE(c.last_activity_at, c.created_at)";
        let columns: String =
            CONVERSATION_COLUMNS.split(", ").map(|column| format!("c.{column}")).collect::<Vec<_>>().join(", ");
        let (member_columns, from) = match user_id {
            Some(_) => (
                "m.role AS role, m.muted AS muted",
                "members m JOIN conversations c ON c.app_id = m.app_id AND c.id = m.conversation_id \
                 WHERE m.app_id = $1 AND m.user_id = $2",
            ),
            None => ("NULL AS role, NULL AS muted", "conversations c WHERE c.app_id = $1 AND CAST($2 AS TEXT) IS NULL"),
        };
        let sql = format!(
            "SELECT {columns}, {member_columns} FROM {from} AND c.deleted_at IS NULL \
             AND ($3 IS NULL OR {ACTIVITY} < $3 OR ({ACTIVITY} = $3 AND c.id < $4)) \
             ORDER BY {ACTIVITY} DESC, c.id DESC LIMIT $5"
        );
        let (at, id) = after.unzip();
        let rows = on_db!(self, pool => sqlx::query_as::<_, InboxRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(app_id)
            .bind(user_id)
            .bind(at)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// Sets a member's mute flag; false when they are not a member.
    pub async fn set_muted(&self, conv: &ConvKey, user_id: &str, muted: bool) -> Result<bool, StoreError> {
        let changed = on_db!(self, pool => sqlx::query(
            "UPDATE members SET muted = $4 WHERE app_id = $1 AND conversation_id = $2 AND user_id = $3",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .bind(user_id)
        .bind(muted)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }

    /// Records lost seq ranges an operator accepted, as (conversation, from,
    /// to), at `now`; a range already accepted from the same seq only grows.
    pub async fn accept_losses(&self, ranges: &[(ConvKey, u64, u64)], now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO accepted_losses (app_id, conversation_id, seq_from, seq_to, accepted_at) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, conversation_id, seq_from) DO UPDATE SET \
                   seq_to = CASE WHEN accepted_losses.seq_to < excluded.seq_to \
                   THEN excluded.seq_to ELSE accepted_losses.seq_to END";
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            for (conv, from, to) in ranges {
                sqlx::query(sql)
                    .bind(&conv.app_id)
                    .bind(&conv.conversation_id)
                    .bind(*from as i64)
                    .bind(*to as i64)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }.await)
    }

    /// The accepted lost ranges of a conversation, as (from, to).
    pub async fn accepted_losses(&self, conv: &ConvKey) -> Result<Vec<(u64, u64)>, StoreError> {
        let rows: Vec<(i64, i64)> = on_db!(self, pool => sqlx::query_as(
            "SELECT seq_from, seq_to FROM accepted_losses WHERE app_id = $1 AND conversation_id = $2",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(|(from, to)| (from as u64, to as u64)).collect())
    }

    /// The highest seq of a conversation durably in a segment (0 when none).
    pub async fn flushed_seq(&self, conv: &ConvKey) -> Result<u64, StoreError> {
        let seq: Option<i64> = on_db!(self, pool => sqlx::query_scalar(
            "SELECT flushed_seq FROM flush_state WHERE app_id = $1 AND conversation_id = $2",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .fetch_optional(pool)
        .await)?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Indexes a segment: in one transaction inserts its row and its block
    /// rows and advances each conversation's flushed seq. Fails with
    /// [`StoreError::Conflict`] and changes nothing when any advance's guard
    /// does not hold (a stale or concurrent flusher).
    pub async fn commit_segment(
        &self,
        segment: &SegmentRow,
        blocks: &[BlockRow],
        advances: &[FlushAdvance],
    ) -> Result<(), StoreError> {
        let now = crate::clock::now_ms();
        let held = on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            insert_segment!(tx, segment, blocks).await?;
            for advance in advances {
                let moved = if advance.from == 0 {
                    // No row yet is "flushed through 0"; a row that exists must still say 0.
                    let created = sqlx::query(CREATE_FLUSH)
                        .bind(&advance.app_id)
                        .bind(&advance.conversation_id)
                        .bind(advance.to as i64)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    created == 1 || sqlx::query(ADVANCE_FLUSH)
                        .bind(&advance.app_id)
                        .bind(&advance.conversation_id)
                        .bind(0i64)
                        .bind(advance.to as i64)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected() == 1
                } else {
                    sqlx::query(ADVANCE_FLUSH)
                        .bind(&advance.app_id)
                        .bind(&advance.conversation_id)
                        .bind(advance.from as i64)
                        .bind(advance.to as i64)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected() == 1
                };
                if !moved {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            tx.commit().await?;
            Ok(true)
        }.await)?;
        if !held {
            return Err(StoreError::Conflict(
                "a flushed seq moved since it was read (stale or concurrent flush)".into(),
            ));
        }
        Ok(())
    }

    /// Re-indexes a segment from its footer (disaster recovery): inserts what
    /// is missing and raises flushed seqs, never lowering one.
    pub async fn reindex_segment(&self, segment: &SegmentRow, blocks: &[BlockRow]) -> Result<bool, StoreError> {
        let now = crate::clock::now_ms();
        let inserted = on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            let inserted = insert_segment!(tx, segment, blocks).await?;
            for b in blocks {
                sqlx::query(RAISE_FLUSH)
                    .bind(&b.app_id)
                    .bind(&b.conversation_id)
                    .bind(b.seq_end)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(inserted)
        }.await)?;
        Ok(inserted == 1)
    }

    pub async fn segment_by_key(&self, object_key: &str) -> Result<Option<SegmentRow>, StoreError> {
        let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE object_key = $1");
        let row = on_db!(self, pool => sqlx::query_as::<_, SegmentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(object_key)
            .fetch_optional(pool)
            .await)?;
        Ok(row)
    }

    pub async fn blocks_of_segment(&self, segment_id: &str) -> Result<Vec<BlockRow>, StoreError> {
        let sql = format!("SELECT {BLOCK_COLUMNS} FROM segment_blocks WHERE segment_id = $1 ORDER BY byte_offset");
        let rows = on_db!(self, pool => sqlx::query_as::<_, BlockRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(segment_id)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// A conversation's blocks, by seq.
    pub async fn blocks_of_conversation(&self, conv: &ConvKey) -> Result<Vec<BlockRow>, StoreError> {
        let sql = format!(
            "SELECT {BLOCK_COLUMNS} FROM segment_blocks WHERE app_id = $1 AND conversation_id = $2 ORDER BY seq_start"
        );
        let rows = on_db!(self, pool => sqlx::query_as::<_, BlockRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// The blocks overlapping seqs `lo..=hi`, by seq, each with its object key.
    pub async fn blocks_in_range(
        &self,
        conv: &ConvKey,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(BlockRow, String)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Located {
            #[sqlx(flatten)]
            block: BlockRow,
            object_key: String,
        }
        let columns: String =
            BLOCK_COLUMNS.split(", ").map(|c| format!("b.{}", c.trim())).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT {columns}, s.object_key FROM segment_blocks b JOIN segments s ON s.id = b.segment_id \
             WHERE b.app_id = $1 AND b.conversation_id = $2 AND b.seq_end >= $3 AND b.seq_start <= $4 \
             ORDER BY b.seq_start"
        );
        let rows = on_db!(self, pool => sqlx::query_as::<_, Located>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(lo as i64)
            .bind(hi as i64)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(|r| (r.block, r.object_key)).collect())
    }

    /// The first block (by seq) of a conversation whose newest message is at
    /// or after `ts`: where a read from `ts` on starts in the segments.
    pub async fn first_block_since(&self, conv: &ConvKey, ts: i64) -> Result<Option<BlockRow>, StoreError> {
        let sql = format!(
            "SELECT {BLOCK_COLUMNS} FROM segment_blocks WHERE app_id = $1 AND conversation_id = $2 AND ts_end >= $3 \
             ORDER BY seq_start LIMIT 1"
        );
        let row = on_db!(self, pool => sqlx::query_as::<_, BlockRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(ts)
            .fetch_optional(pool)
            .await)?;
        Ok(row)
    }

    /// Records that `job` succeeded at `at_ms` (a later time never goes back).
    pub async fn record_job_success(&self, job: &str, at_ms: i64) -> Result<(), StoreError> {
        let upsert = "INSERT INTO job_runs (job, last_success_ms) VALUES ($1, $2) ON CONFLICT (job) DO UPDATE \
                      SET last_success_ms = CASE WHEN excluded.last_success_ms > job_runs.last_success_ms \
                      THEN excluded.last_success_ms ELSE job_runs.last_success_ms END";
        on_db!(self, pool => sqlx::query(upsert).bind(job).bind(at_ms).execute(pool).await.map(|_| ()))
    }

    /// When each job last succeeded (Unix ms), by job name. Polled in the
    /// background, so it fails fast on a refused Postgres ([`Metadata::probe`])
    /// rather than hold a pool connection attempt that `/readyz` would wait behind.
    pub async fn job_successes(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.probe().await?;
        on_db!(self, pool => sqlx::query_as("SELECT job, last_success_ms FROM job_runs").fetch_all(pool).await)
    }

    /// Writes idempotency records (one transaction); a row already there
    /// (the same range flushed again after a crash) is kept.
    pub async fn insert_idempotency_records(&self, rows: &[IdempotencyRecordRow]) -> Result<(), StoreError> {
        let insert = "INSERT INTO idempotency_records (app_id, conversation_id, seq_start, seq_end, ts_end, entries) \
                      VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            for row in rows {
                sqlx::query(insert)
                    .bind(&row.app_id)
                    .bind(&row.conversation_id)
                    .bind(row.seq_start)
                    .bind(row.seq_end)
                    .bind(row.ts_end)
                    .bind(&row.entries)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }.await)
    }

    /// The entries of a conversation's idempotency records whose newest
    /// message was received at or after `since` (Unix ms).
    pub async fn idempotency_records(&self, conv: &ConvKey, since: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        let select = "SELECT entries FROM idempotency_records \
                      WHERE app_id = $1 AND conversation_id = $2 AND ts_end >= $3 ORDER BY seq_end";
        on_db!(self, pool => sqlx::query_scalar(select)
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(since)
            .fetch_all(pool)
            .await)
    }

    /// The changes recorded for these seqs of a conversation (at most a page's worth).
    pub async fn message_changes(&self, conv: &ConvKey, seqs: &[u64]) -> Result<Vec<MessageChangeRow>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!(
            "SELECT {CHANGE_COLUMNS} FROM message_changes WHERE app_id = $1 AND conversation_id = $2 AND seq IN ({})",
            seq_list(seqs)
        );
        on_db!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .fetch_all(pool)
            .await)
    }

    /// Records an edit of message `seq` (received at `ts`) by the event at
    /// `edit_seq`: kept only when newer than the edit recorded, and never
    /// for a deleted message. True when it was recorded.
    pub async fn record_edit(
        &self,
        conv: &ConvKey,
        seq: u64,
        ts: i64,
        edit_seq: u64,
        edited_at: i64,
        content: &str,
    ) -> Result<bool, StoreError> {
        let upsert = "INSERT INTO message_changes (app_id, conversation_id, seq, ts, edit_seq, edited_at, content) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (app_id, conversation_id, seq) DO UPDATE \
                      SET edit_seq = excluded.edit_seq, edited_at = excluded.edited_at, content = excluded.content \
                      WHERE message_changes.deleted_at IS NULL \
                      AND (message_changes.edit_seq IS NULL OR message_changes.edit_seq < excluded.edit_seq)";
        on_db!(self, pool => sqlx::query(upsert)
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(seq as i64)
            .bind(ts)
            .bind(edit_seq as i64)
            .bind(edited_at)
            .bind(content)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() > 0))
    }

    /// Marks message `seq` (received at `ts`) deleted at `at` and drops any
    /// edited content; a message deleted already keeps its first time.
    pub async fn record_delete(&self, conv: &ConvKey, seq: u64, ts: i64, at: i64) -> Result<(), StoreError> {
        let upsert = "INSERT INTO message_changes (app_id, conversation_id, seq, ts, deleted_at) \
                      VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, conversation_id, seq) DO UPDATE \
                      SET content = NULL, deleted_at = COALESCE(message_changes.deleted_at, excluded.deleted_at)";
        on_db!(self, pool => sqlx::query(upsert)
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(seq as i64)
            .bind(ts)
            .bind(at)
            .execute(pool)
            .await
            .map(|_| ()))
    }

    /// Notes that message `seq`'s delete event is in the log at `delete_seq`.
    pub async fn record_delete_seq(&self, conv: &ConvKey, seq: u64, delete_seq: u64) -> Result<(), StoreError> {
        let update = "UPDATE message_changes SET delete_seq = $4 \
                      WHERE app_id = $1 AND conversation_id = $2 AND seq = $3 AND delete_seq IS NULL";
        on_db!(self, pool => sqlx::query(update)
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(seq as i64)
            .bind(delete_seq as i64)
            .execute(pool)
            .await
            .map(|_| ()))
    }

    /// Adds `row` (one user's reaction) unless the message would then hold
    /// more than `max_per_message` reactions or the user more than
    /// `max_per_user` on it: `Ok(None)` when it was there already,
    /// `Ok(Some(true))` when added, `Ok(Some(false))` when over a bound.
    pub async fn add_reaction(
        &self,
        row: &ReactionRow,
        max_per_message: i64,
        max_per_user: i64,
    ) -> Result<Option<bool>, StoreError> {
        // The bounds are checked by the insert itself, against the rows it sees.
        let insert = "INSERT INTO message_reactions \
                      (app_id, conversation_id, seq, reaction, user_id, ts, created_at) \
                      SELECT $1, $2, $3, $4, $5, $6, $7 \
                      WHERE (EXISTS (SELECT 1 FROM message_reactions \
                                     WHERE app_id = $1 AND conversation_id = $2 AND seq = $3 AND reaction = $4) \
                             OR (SELECT COUNT(DISTINCT reaction) FROM message_reactions \
                                 WHERE app_id = $1 AND conversation_id = $2 AND seq = $3) < $8) \
                      AND (SELECT COUNT(*) FROM message_reactions \
                           WHERE app_id = $1 AND conversation_id = $2 AND seq = $3 AND user_id = $5) < $9 \
                      ON CONFLICT DO NOTHING";
        let exists = "SELECT COUNT(*) FROM message_reactions \
                      WHERE app_id = $1 AND conversation_id = $2 AND seq = $3 AND reaction = $4 AND user_id = $5";
        on_db!(self, pool => async {
            let present: i64 = sqlx::query_scalar(exists)
                .bind(&row.app_id).bind(&row.conversation_id).bind(row.seq).bind(&row.reaction).bind(&row.user_id)
                .fetch_one(pool).await?;
            if present > 0 {
                return Ok(None);
            }
            let inserted = sqlx::query(insert)
                .bind(&row.app_id).bind(&row.conversation_id).bind(row.seq).bind(&row.reaction).bind(&row.user_id)
                .bind(row.ts).bind(row.created_at).bind(max_per_message).bind(max_per_user)
                .execute(pool).await?.rows_affected();
            Ok(Some(inserted > 0))
        }.await)
    }

    /// Removes one user's reaction; true when it was there.
    pub async fn remove_reaction(
        &self,
        conv: &ConvKey,
        seq: u64,
        reaction: &str,
        user_id: &str,
    ) -> Result<bool, StoreError> {
        let delete = "DELETE FROM message_reactions \
                      WHERE app_id = $1 AND conversation_id = $2 AND seq = $3 AND reaction = $4 AND user_id = $5";
        on_db!(self, pool => sqlx::query(delete)
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(seq as i64)
            .bind(reaction)
            .bind(user_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() > 0))
    }

    /// The reactions of these seqs by reaction, in the order each was first
    /// given, with whether `user` gave it.
    pub async fn reaction_counts(
        &self,
        conv: &ConvKey,
        seqs: &[u64],
        user: &str,
    ) -> Result<Vec<ReactionCount>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!(
            "SELECT seq, reaction, COUNT(*) AS count, \
             CAST(MAX(CASE WHEN user_id = $3 THEN 1 ELSE 0 END) AS BIGINT) AS mine FROM message_reactions \
             WHERE app_id = $1 AND conversation_id = $2 AND seq IN ({}) \
             GROUP BY seq, reaction ORDER BY seq, MIN(created_at), reaction",
            seq_list(seqs)
        );
        on_db!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(user)
            .fetch_all(pool)
            .await)
    }

    /// Records replies (a thread entry each); one already there is kept.
    pub async fn insert_replies(&self, rows: &[ReplyRow]) -> Result<(), StoreError> {
        let insert = "INSERT INTO message_replies (app_id, conversation_id, parent_seq, seq, ts) \
                      VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            for row in rows {
                sqlx::query(insert)
                    .bind(&row.app_id)
                    .bind(&row.conversation_id)
                    .bind(row.parent_seq)
                    .bind(row.seq)
                    .bind(row.ts)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }.await)
    }

    /// How many replies each of these seqs has, for those with any: (seq, count).
    pub async fn reply_counts(&self, conv: &ConvKey, seqs: &[u64]) -> Result<Vec<(i64, i64)>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!(
            "SELECT parent_seq, COUNT(*) FROM message_replies \
             WHERE app_id = $1 AND conversation_id = $2 AND parent_seq IN ({}) GROUP BY parent_seq",
            seq_list(seqs)
        );
        on_db!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .fetch_all(pool)
            .await)
    }

    /// The seqs of the replies to `parent` after seq `after`, in seq order,
    /// at most `limit`.
    pub async fn replies(&self, conv: &ConvKey, parent: u64, after: u64, limit: i64) -> Result<Vec<i64>, StoreError> {
        let select = "SELECT seq FROM message_replies \
                      WHERE app_id = $1 AND conversation_id = $2 AND parent_seq = $3 AND seq > $4 \
                      ORDER BY seq LIMIT $5";
        on_db!(self, pool => sqlx::query_scalar(select)
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(parent as i64)
            .bind(after as i64)
            .bind(limit)
            .fetch_all(pool)
            .await)
    }

    /// Deletes at most `limit` rows of `table` whose message was received
    /// before `cutoff` (Unix ms); returns how many.
    pub async fn delete_expired(&self, table: Expiring, cutoff: i64, limit: i64) -> Result<u64, StoreError> {
        let (name, key, ts) = match table {
            Expiring::IdempotencyRecords => ("idempotency_records", "app_id, conversation_id, seq_end", "ts_end"),
            Expiring::MessageChanges => ("message_changes", "app_id, conversation_id, seq", "ts"),
            Expiring::Reactions => ("message_reactions", "app_id, conversation_id, seq, reaction, user_id", "ts"),
            Expiring::Replies => ("message_replies", "app_id, conversation_id, parent_seq, seq", "ts"),
            Expiring::DeletedConversations => ("conversations", "app_id, id", "deleted_at"),
        };
        let delete = format!("DELETE FROM {name} WHERE ({key}) IN (SELECT {key} FROM {name} WHERE {ts} < $1 LIMIT $2)");
        on_db!(self, pool => sqlx::query(sqlx::AssertSqlSafe(delete))
            .bind(cutoff)
            .bind(limit)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
    }

    /// The shared secret `name`, created from `candidate` when it does not exist
    /// yet; every caller gets the same value.
    pub async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let now = crate::clock::now_ms();
        let insert = "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
        on_db!(self, pool => sqlx::query(insert)
            .bind(name)
            .bind(candidate)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        on_db!(self, pool => sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await)
    }
}

/// The tables whose rows expire with their message (retention's `state` stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiring {
    /// Flushed messages' idempotency keys, past `limits.idempotency_ttl`.
    IdempotencyRecords,
    /// Edits and deletes, past the history window.
    MessageChanges,
    /// Reactions, past the history window.
    Reactions,
    /// Thread entries, past the history window.
    Replies,
    /// Deleted conversations' rows, a history window after the deletion (their
    /// messages have gone with their segments by then).
    DeletedConversations,
}

/// What a retention run would delete from the index: segments older than a
/// cutoff, their bytes and their block rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredTotals {
    pub segments: u64,
    pub bytes: u64,
    pub block_rows: u64,
}

/// `$N = '' OR app_id = $N`: an app filter bound as `""` for every app (app ids are never empty).
fn app_filter(app_id: Option<&str>) -> &str {
    app_id.unwrap_or("")
}

impl Metadata {
    /// Up to `limit` segments whose newest message is older than `cutoff`, oldest first.
    pub async fn expired_segments(
        &self,
        cutoff: i64,
        app_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SegmentRow>, StoreError> {
        let sql = format!(
            "SELECT {SEGMENT_COLUMNS} FROM segments WHERE max_ts < $1 AND ($2 = '' OR app_id = $2) \
             ORDER BY max_ts, id LIMIT $3"
        );
        let rows = on_db!(self, pool => sqlx::query_as::<_, SegmentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(cutoff)
            .bind(app_filter(app_id))
            .bind(limit as i64)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// The totals of [`Metadata::expired_segments`] over every batch.
    pub async fn expired_totals(&self, cutoff: i64, app_id: Option<&str>) -> Result<ExpiredTotals, StoreError> {
        let segments = "SELECT COUNT(*), CAST(COALESCE(SUM(byte_length), 0) AS BIGINT) FROM segments \
                        WHERE max_ts < $1 AND ($2 = '' OR app_id = $2)";
        let (count, bytes): (i64, i64) = on_db!(self, pool => sqlx::query_as(segments)
            .bind(cutoff)
            .bind(app_filter(app_id))
            .fetch_one(pool)
            .await)?;
        let blocks = "SELECT COUNT(*) FROM segment_blocks b JOIN segments s ON s.id = b.segment_id \
                      WHERE s.max_ts < $1 AND ($2 = '' OR s.app_id = $2)";
        let block_rows: i64 = on_db!(self, pool => sqlx::query_scalar(blocks)
            .bind(cutoff)
            .bind(app_filter(app_id))
            .fetch_one(pool)
            .await)?;
        Ok(ExpiredTotals { segments: count as u64, bytes: bytes as u64, block_rows: block_rows as u64 })
    }

    /// Deletes the index rows of the segments `ids` (block rows, then segment
    /// rows) in one transaction; returns (segment rows, block rows) deleted.
    pub async fn delete_segments(&self, ids: &[String]) -> Result<(u64, u64), StoreError> {
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let list: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let list = list.join(", ");
        let blocks = format!("DELETE FROM segment_blocks WHERE segment_id IN ({list})");
        let segments = format!("DELETE FROM segments WHERE id IN ({list})");
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            let mut query = sqlx::query(sqlx::AssertSqlSafe(blocks.as_str()));
            for id in ids {
                query = query.bind(id);
            }
            let block_rows = query.execute(&mut *tx).await?.rows_affected();
            let mut query = sqlx::query(sqlx::AssertSqlSafe(segments.as_str()));
            for id in ids {
                query = query.bind(id);
            }
            let segment_rows = query.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok((segment_rows, block_rows))
        }.await)
    }

    /// Up to `limit` compaction windows, oldest first: (app, window start) for
    /// every `window_ms`-aligned window that ends at or before `before` and
    /// holds more than one segment, one of them a flush's.
    pub async fn compaction_windows(
        &self,
        window_ms: i64,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        // A compaction's segments are dated at their window's start: a window
        // whose segments are all its own (one was closed at 16 MiB) is done.
        let sql = "SELECT app_id, (created_at / $1) * $1 AS window_start FROM segments WHERE created_at < $2 \
                   GROUP BY app_id, window_start \
                   HAVING COUNT(*) > 1 AND MAX(created_at % $1) > 0 \
                   ORDER BY window_start, app_id LIMIT $3";
        let rows = on_db!(self, pool => sqlx::query_as::<_, (String, i64)>(sql)
            .bind(window_ms)
            .bind(before)
            .bind(limit as i64)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// An app's segments created in `start..end`, oldest first.
    pub async fn segments_created_in(&self, app_id: &str, start: i64, end: i64) -> Result<Vec<SegmentRow>, StoreError> {
        let sql = format!(
            "SELECT {SEGMENT_COLUMNS} FROM segments WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 \
             ORDER BY created_at, id"
        );
        let rows = on_db!(self, pool => sqlx::query_as::<_, SegmentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(app_id)
            .bind(start)
            .bind(end)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// Up to `limit` block rows of the segments `ids` whose conversation sorts
    /// after `after` (and at or before `through`, when given), in
    /// (conversation, seq) order.
    pub async fn blocks_of_segments(
        &self,
        ids: &[String],
        after: &str,
        through: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlockRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (4..4 + ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT {BLOCK_COLUMNS} FROM segment_blocks \
             WHERE conversation_id > $1 AND ($2 = '' OR conversation_id <= $2) AND segment_id IN ({}) \
             ORDER BY conversation_id, seq_start LIMIT $3",
            list.join(", ")
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = on_db!(self, pool => {
            let mut query = sqlx::query_as::<_, BlockRow>(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(after)
                .bind(through.unwrap_or(""))
                .bind(limit);
            for id in ids {
                query = query.bind(id);
            }
            query.fetch_all(pool).await
        })?;
        Ok(rows)
    }

    /// In one transaction, the segments `old` (rows and blocks) are replaced by
    /// `new`, which index the same messages. A conflict when any of `old` is
    /// gone already (retention or another compaction got there first): then
    /// nothing changes.
    pub async fn replace_segments(
        &self,
        old: &[String],
        new: &[(SegmentRow, Vec<BlockRow>)],
    ) -> Result<(), StoreError> {
        let replaced = on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            for id in old {
                sqlx::query("DELETE FROM segment_blocks WHERE segment_id = $1").bind(id).execute(&mut *tx).await?;
                let gone = sqlx::query("DELETE FROM segments WHERE id = $1").bind(id).execute(&mut *tx).await?;
                if gone.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            for (segment, blocks) in new {
                insert_segment!(tx, segment, blocks).await?;
            }
            tx.commit().await?;
            Ok(true)
        }.await)?;
        if !replaced {
            return Err(StoreError::Conflict(
                "a segment being compacted is gone (retention or a concurrent compaction)".into(),
            ));
        }
        Ok(())
    }

    /// Up to `limit` conversations with something in segments, as (conversation,
    /// flushed seq), in (app, conversation) order after `after`.
    pub async fn flushed_conversations(
        &self,
        app_id: Option<&str>,
        after: Option<&ConvKey>,
        limit: usize,
    ) -> Result<Vec<(ConvKey, u64)>, StoreError> {
        let sql = "SELECT app_id, conversation_id, flushed_seq FROM flush_state \
                   WHERE ($1 = '' OR app_id = $1) AND flushed_seq > 0 \
                   AND (app_id > $2 OR (app_id = $2 AND conversation_id > $3)) \
                   ORDER BY app_id, conversation_id LIMIT $4";
        let (after_app, after_conversation) =
            after.map_or(("", ""), |conv| (conv.app_id.as_str(), conv.conversation_id.as_str()));
        let rows: Vec<(String, String, i64)> = on_db!(self, pool => sqlx::query_as(sql)
            .bind(app_filter(app_id))
            .bind(after_app)
            .bind(after_conversation)
            .bind(limit as i64)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(|(app, conversation, seq)| (ConvKey::new(app, conversation), seq as u64)).collect())
    }

    /// Hands the pages freed by deletions back to the file system (SQLite:
    /// incremental vacuum, then a WAL checkpoint that truncates the log);
    /// returns the bytes the file shrank by. Postgres reuses freed space by
    /// itself (autovacuum): nothing to do there.
    pub async fn reclaim_space(&self) -> Result<u64, StoreError> {
        let Pool::Sqlite(pool) = &self.pool else { return Ok(0) };
        let reclaim = async {
            let size = "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()";
            let before: i64 = sqlx::query_scalar(size).fetch_one(pool).await?;
            sqlx::query("PRAGMA incremental_vacuum").execute(pool).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await?;
            let after: i64 = sqlx::query_scalar(size).fetch_one(pool).await?;
            Ok::<_, sqlx::Error>((before - after).max(0) as u64)
        };
        reclaim.await.map_err(|e| db_error("sqlite", e))
    }
}

/// The snapshot's tables in insert order (parents first), with their columns.
const SNAPSHOT_TABLES: [(&str, &str); 10] = [
    ("apps", "id, name, created_at"),
    ("api_keys", KEY_COLUMNS),
    ("conversations", CONVERSATION_COLUMNS),
    ("members", "app_id, conversation_id, user_id, role, joined_at, muted"),
    ("flush_state", "app_id, conversation_id, flushed_seq, updated_at"),
    ("server_secrets", "name, value, created_at"),
    ("attachments", ATTACHMENT_COLUMNS),
    ("message_changes", CHANGE_COLUMNS),
    ("message_reactions", "app_id, conversation_id, seq, reaction, user_id, ts, created_at"),
    ("message_replies", "app_id, conversation_id, parent_seq, seq, ts"),
];

const CHANGE_COLUMNS: &str = "app_id, conversation_id, seq, ts, edit_seq, edited_at, content, deleted_at, delete_seq";

const ATTACHMENT_COLUMNS: &str = "app_id, conversation_id, id, object_key, content_type, size, sha256, filename, \
                                  uploaded_by, created_at, upload_expires_at, verified_at, referenced_at";

/// `SELECT <columns> FROM <table>` for the snapshot's `index`-th table, in a stable order.
fn snapshot_select(index: usize) -> String {
    let (table, columns) = SNAPSHOT_TABLES[index];
    let order = columns
        .split(", ")
        .take(match table {
            "members" | "message_changes" => 3,
            "message_replies" => 4,
            "message_reactions" => 5,
            _ => 2,
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {columns} FROM {table} ORDER BY {order}")
}

/// `INSERT INTO <table> (<columns>) VALUES ($1, …) ON CONFLICT DO NOTHING` for the `index`-th table.
fn snapshot_insert(index: usize) -> String {
    let (table, columns) = SNAPSHOT_TABLES[index];
    let params: Vec<String> = (1..=columns.split(", ").count()).map(|n| format!("${n}")).collect();
    format!("INSERT INTO {table} ({columns}) VALUES ({}) ON CONFLICT DO NOTHING", params.join(", "))
}

/// Reads every snapshot table on `$tx` into a [`MetadataSnapshot`].
macro_rules! read_snapshot {
    ($tx:expr) => {
        async {
            macro_rules! rows {
                ($index:expr) => {
                    sqlx::query_as(sqlx::AssertSqlSafe(snapshot_select($index))).fetch_all(&mut *$tx).await?
                };
            }
            Ok::<_, sqlx::Error>(MetadataSnapshot {
                apps: rows!(0),
                api_keys: rows!(1),
                conversations: rows!(2),
                members: rows!(3),
                flush_state: rows!(4),
                server_secrets: rows!(5),
                attachments: rows!(6),
                message_changes: rows!(7),
                reactions: rows!(8),
                replies: rows!(9),
            })
        }
    };
}

impl Metadata {
    /// The version of the newest schema migration this binary applies.
    pub fn schema_version() -> i64 {
        PG_MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Every segment row whose newest message is at or after `since`, oldest first.
    pub async fn segments_since(&self, since: i64) -> Result<Vec<SegmentRow>, StoreError> {
        let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE max_ts >= $1 ORDER BY max_ts, id");
        let rows = on_db!(self, pool => sqlx::query_as::<_, SegmentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(since)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// True when no app exists (a fresh deployment, which a restore may fill).
    pub async fn has_no_apps(&self) -> Result<bool, StoreError> {
        let apps: i64 = on_db!(self, pool => sqlx::query_scalar("SELECT COUNT(*) FROM apps").fetch_one(pool).await)?;
        Ok(apps == 0)
    }

    /// Every snapshot table read in one transaction: REPEATABLE READ on
    /// Postgres, a read transaction on SQLite (WAL: one consistent view).
    pub async fn export_snapshot(&self) -> Result<MetadataSnapshot, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => async {
                let mut tx = pool.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
                let snapshot = read_snapshot!(tx).await?;
                tx.commit().await?;
                Ok(snapshot)
            }
            .await
            .map_err(|e| db_error("postgres", e)),
            Pool::Sqlite(pool) => async {
                let mut tx = pool.begin().await?;
                let snapshot = read_snapshot!(tx).await?;
                tx.commit().await?;
                Ok(snapshot)
            }
            .await
            .map_err(|e| db_error("sqlite", e)),
        }
    }

    /// Inserts a snapshot's rows in one transaction, parents first; rows that
    /// exist already are kept as they are.
    pub async fn import_snapshot(&self, snapshot: &MetadataSnapshot) -> Result<(), StoreError> {
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            for app in &snapshot.apps {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(0)))
                    .bind(&app.id).bind(&app.name).bind(app.created_at)
                    .execute(&mut *tx).await?;
            }
            for key in &snapshot.api_keys {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(1)))
                    .bind(&key.id).bind(&key.app_id).bind(&key.name).bind(&key.scope).bind(&key.prefix)
                    .bind(&key.secret_hash).bind(key.created_at).bind(key.expires_at).bind(key.revoked_at)
                    .bind(key.last_used_at).bind(&key.rotated_to)
                    .execute(&mut *tx).await?;
            }
            for c in &snapshot.conversations {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(2)))
                    .bind(&c.app_id).bind(&c.id).bind(&c.title).bind(&c.metadata).bind(&c.created_by)
                    .bind(c.created_at).bind(c.archived_at).bind(c.deleted_at).bind(c.updated_at)
                    .bind(c.last_activity_at)
                    .execute(&mut *tx).await?;
            }
            for m in &snapshot.members {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(3)))
                    .bind(&m.app_id).bind(&m.conversation_id).bind(&m.user_id).bind(&m.role).bind(m.joined_at)
                    .bind(m.muted)
                    .execute(&mut *tx).await?;
            }
            for f in &snapshot.flush_state {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(4)))
                    .bind(&f.app_id).bind(&f.conversation_id).bind(f.flushed_seq).bind(f.updated_at)
                    .execute(&mut *tx).await?;
            }
            for secret in &snapshot.server_secrets {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(5)))
                    .bind(&secret.name).bind(&secret.value).bind(secret.created_at)
                    .execute(&mut *tx).await?;
            }
            for attachment in &snapshot.attachments {
                bind_attachment(sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(6))), attachment)
                    .execute(&mut *tx).await?;
            }
            for r in &snapshot.replies {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(9)))
                    .bind(&r.app_id).bind(&r.conversation_id).bind(r.parent_seq).bind(r.seq).bind(r.ts)
                    .execute(&mut *tx).await?;
            }
            for r in &snapshot.reactions {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(8)))
                    .bind(&r.app_id).bind(&r.conversation_id).bind(r.seq).bind(&r.reaction).bind(&r.user_id)
                    .bind(r.ts).bind(r.created_at)
                    .execute(&mut *tx).await?;
            }
            for c in &snapshot.message_changes {
                sqlx::query(sqlx::AssertSqlSafe(snapshot_insert(7)))
                    .bind(&c.app_id).bind(&c.conversation_id).bind(c.seq).bind(c.ts).bind(c.edit_seq)
                    .bind(c.edited_at).bind(&c.content).bind(c.deleted_at).bind(c.delete_seq)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        }.await)
    }
}

/// Binds every column of an attachment row, in [`ATTACHMENT_COLUMNS`] order.
fn bind_attachment<'q, DB: sqlx::Database>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    a: &'q AttachmentRow,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(a.app_id.clone())
        .bind(a.conversation_id.clone())
        .bind(a.id.clone())
        .bind(a.object_key.clone())
        .bind(a.content_type.clone())
        .bind(a.size)
        .bind(a.sha256.clone())
        .bind(a.filename.clone())
        .bind(a.uploaded_by.clone())
        .bind(a.created_at)
        .bind(a.upload_expires_at)
        .bind(a.verified_at)
        .bind(a.referenced_at)
}

impl Metadata {
    pub async fn insert_attachment(&self, attachment: &AttachmentRow) -> Result<(), StoreError> {
        let params: Vec<String> = (1..=ATTACHMENT_COLUMNS.split(", ").count()).map(|n| format!("${n}")).collect();
        let sql = format!("INSERT INTO attachments ({ATTACHMENT_COLUMNS}) VALUES ({})", params.join(", "));
        on_db!(self, pool => bind_attachment(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), attachment)
            .execute(pool)
            .await
            .map(|_| ()))
    }

    /// The attachment `id` of an app.
    pub async fn get_attachment(&self, app_id: &str, id: &str) -> Result<Option<AttachmentRow>, StoreError> {
        let sql = format!("SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE app_id = $1 AND id = $2");
        on_db!(self, pool => sqlx::query_as::<_, AttachmentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(app_id)
            .bind(id)
            .fetch_optional(pool)
            .await)
    }

    /// The attachment stored at `object_key`, if any.
    pub async fn attachment_by_key(&self, object_key: &str) -> Result<Option<AttachmentRow>, StoreError> {
        let sql = format!("SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE object_key = $1");
        on_db!(self, pool => sqlx::query_as::<_, AttachmentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(object_key)
            .fetch_optional(pool)
            .await)
    }

    /// Records that the stored bytes of an attachment matched what was declared.
    pub async fn mark_attachment_verified(&self, app_id: &str, id: &str, at: i64) -> Result<(), StoreError> {
        let sql = "UPDATE attachments SET verified_at = $3 WHERE app_id = $1 AND id = $2 AND verified_at IS NULL";
        on_db!(self, pool => sqlx::query(sql).bind(app_id).bind(id).bind(at).execute(pool).await.map(|_| ()))
    }

    /// Records that a message referenced an attachment at `at`.
    pub async fn mark_attachment_referenced(&self, app_id: &str, id: &str, at: i64) -> Result<(), StoreError> {
        let sql = "UPDATE attachments SET referenced_at = $3 WHERE app_id = $1 AND id = $2";
        on_db!(self, pool => sqlx::query(sql).bind(app_id).bind(id).bind(at).execute(pool).await.map(|_| ()))
    }

    /// Up to `limit` attachments to delete: those last referenced before
    /// `cutoff` (past the retention window), and those never referenced and
    /// created before `orphan_before`.
    pub async fn expired_attachments(
        &self,
        cutoff: i64,
        orphan_before: i64,
        app_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AttachmentRow>, StoreError> {
        let sql = format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE ($3 = '' OR app_id = $3) AND \
             ((referenced_at IS NOT NULL AND referenced_at < $1) OR (referenced_at IS NULL AND created_at < $2)) \
             ORDER BY created_at, id LIMIT $4"
        );
        on_db!(self, pool => sqlx::query_as::<_, AttachmentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(cutoff)
            .bind(orphan_before)
            .bind(app_filter(app_id))
            .bind(limit as i64)
            .fetch_all(pool)
            .await)
    }

    /// Deletes attachment rows by (app, id); returns how many went.
    pub async fn delete_attachments(&self, ids: &[(String, String)]) -> Result<u64, StoreError> {
        on_db!(self, pool => async {
            let mut tx = pool.begin().await?;
            let mut deleted = 0;
            for (app_id, id) in ids {
                deleted += sqlx::query("DELETE FROM attachments WHERE app_id = $1 AND id = $2")
                    .bind(app_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(deleted)
        }.await)
    }
}
