//! The embedded tail: the same contract as the Redis tail, kept in SQLite
//! tables beside the metadata (so it survives a crash) with an in-process
//! broadcast hub for live fanout.
//!
//! Appends are serialized by one in-process writer lock, held across the
//! transaction and the publish, so live subscribers see messages in seq order.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Row, SqlitePool};

use super::live::{Live, LiveEvent, LiveHub, LiveSubscription};
use super::sql::{Metadata, Pool};
use super::state::TtlState;
use super::tail::{AppendOutcome, AppendRequest, ConvKey, DirtyConversation, Tail, TailEntry};
use super::StoreError;

const DEPENDENCY: &str = "tail";

pub(crate) struct SqliteTail {
    pool: SqlitePool,
    hub: LiveHub,
    writer: tokio::sync::Mutex<()>,
}

fn failed(err: sqlx::Error) -> StoreError {
    StoreError::unavailable(DEPENDENCY, err)
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

fn channel(conv: &ConvKey) -> String {
    format!("{}/{}", conv.app_id, conv.conversation_id)
}

impl SqliteTail {
    pub(crate) fn new(db: Metadata) -> SqliteTail {
        let Pool::Sqlite(pool) = db.pool else { panic!("the embedded tail needs the SQLite pool") };
        SqliteTail { pool, hub: LiveHub::new(None), writer: tokio::sync::Mutex::new(()) }
    }

    /// Deletes the expired rows of `table` (SQLite has no TTLs of its own).
    async fn purge(&self, table: &'static str) -> Result<u64, StoreError> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE expires_at <= $1")))
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(failed)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Tail for SqliteTail {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT count(*) FROM tail_counters WHERE 0").execute(&self.pool).await.map_err(failed)?;
        Ok(())
    }

    async fn append_batch(&self, requests: &[AppendRequest]) -> Result<Vec<AppendOutcome>, StoreError> {
        let Some(first) = requests.first() else { return Ok(Vec::new()) };
        let conv = &first.conv;
        assert!(requests.iter().all(|r| r.conv == *conv), "a batch appends to one conversation");
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;

        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM tail_counters WHERE app_id = $1 AND conversation_id = $2")
                .bind(&conv.app_id)
                .bind(&conv.conversation_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(failed)?;
        let Some(mut seq) = last else { return Ok(vec![AppendOutcome::NeedsSeed; requests.len()]) };

        let mut outcomes = Vec::with_capacity(requests.len());
        let mut appended = Vec::new();
        for request in requests {
            if outcomes.last() == Some(&AppendOutcome::NeedsSeed) {
                outcomes.push(AppendOutcome::NeedsSeed);
                continue;
            }
            if let Some(claim) = &request.idempotency {
                if let Some((prior, fingerprint)) =
                    find_claim(&mut *tx, conv, &claim.key, request.ts_ms.max(now_ms())).await?
                {
                    outcomes.push(if fingerprint == claim.fingerprint {
                        AppendOutcome::Replayed { seq: prior }
                    } else {
                        AppendOutcome::KeyReused { seq: prior }
                    });
                    continue;
                }
            }
            if !insert_entry(&mut tx, request, seq + 1).await? {
                // The log already holds this seq: the counter is behind. Re-seed.
                outcomes.push(AppendOutcome::NeedsSeed);
                continue;
            }
            seq += 1;
            let entry = TailEntry { seq: seq as u64, ts_ms: request.ts_ms, body: request.body.clone() };
            appended.push(entry.clone());
            outcomes.push(AppendOutcome::Appended(entry));
        }
        if appended.is_empty() {
            return Ok(outcomes);
        }
        sqlx::query("UPDATE tail_counters SET last_seq = $3 WHERE app_id = $1 AND conversation_id = $2")
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let bytes: usize = appended.iter().map(|entry| entry.body.len()).sum();
        sqlx::query(
            "INSERT INTO tail_dirty (shard, app_id, conversation_id, first_ts, bytes, messages) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (shard, app_id, conversation_id) \
             DO UPDATE SET bytes = bytes + excluded.bytes, messages = messages + excluded.messages",
        )
        .bind(conv.shard() as i64)
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .bind(appended[0].ts_ms)
        .bind(bytes as i64)
        .bind(appended.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;

        let channel = channel(conv);
        for entry in appended {
            self.hub.deliver(&channel, LiveEvent::message(entry));
        }
        Ok(outcomes)
    }

    async fn idempotency_claims(
        &self,
        conv: &ConvKey,
        keys: &[&str],
    ) -> Result<Vec<Option<(u64, String)>>, StoreError> {
        let mut claims = Vec::with_capacity(keys.len());
        for key in keys {
            claims.push(find_claim(&self.pool, conv, key, now_ms()).await?);
        }
        Ok(claims)
    }

    /// Claims here are rows on disk, kept the whole window: no memory to save.
    fn releases_claims(&self) -> bool {
        false
    }

    async fn release_claims(&self, _conv: &ConvKey, _keys: &[String], _now: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn seed_seq(&self, conv: &ConvKey, last_seq: u64) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO tail_counters (app_id, conversation_id, last_seq) \
             VALUES ($1, $2, max($3, COALESCE(\
             (SELECT max(seq) FROM tail_entries WHERE app_id = $1 AND conversation_id = $2), 0))) \
             ON CONFLICT (app_id, conversation_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .bind(last_seq as i64)
        .execute(&self.pool)
        .await
        .map_err(failed)?;
        Ok(())
    }

    async fn last_seq(&self, conv: &ConvKey) -> Result<Option<u64>, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM tail_counters WHERE app_id = $1 AND conversation_id = $2")
                .bind(&conv.app_id)
                .bind(&conv.conversation_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(failed)?;
        Ok(last.map(|s| s as u64))
    }

    async fn read(&self, conv: &ConvKey, after_seq: u64, limit: usize) -> Result<Vec<TailEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, ts, body FROM tail_entries WHERE app_id = $1 AND conversation_id = $2 AND seq > $3 \
             ORDER BY seq LIMIT $4",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .bind(after_seq as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(failed)?;
        Ok(rows
            .into_iter()
            .map(|row| TailEntry { seq: row.get::<i64, _>("seq") as u64, ts_ms: row.get("ts"), body: row.get("body") })
            .collect())
    }

    async fn trim(&self, conv: &ConvKey, through_seq: u64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tail_entries WHERE app_id = $1 AND conversation_id = $2 AND seq <= $3")
            .bind(&conv.app_id)
            .bind(&conv.conversation_id)
            .bind(through_seq as i64)
            .execute(&self.pool)
            .await
            .map_err(failed)?;
        Ok(done.rows_affected())
    }

    async fn dirty(&self, shard: u32) -> Result<Vec<DirtyConversation>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, conversation_id, first_ts, bytes, messages FROM tail_dirty WHERE shard = $1 \
             ORDER BY first_ts",
        )
        .bind(shard as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(failed)?;
        Ok(rows
            .into_iter()
            .map(|row| DirtyConversation {
                conv: ConvKey::new(row.get::<String, _>("app_id"), row.get::<String, _>("conversation_id")),
                first_ts_ms: row.get("first_ts"),
                bytes: row.get::<i64, _>("bytes") as u64,
                messages: row.get::<i64, _>("messages") as u64,
            })
            .collect())
    }

    async fn clear_dirty(&self, seen: &DirtyConversation) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        let done = sqlx::query(
            "DELETE FROM tail_dirty WHERE shard = $1 AND app_id = $2 AND conversation_id = $3 \
             AND first_ts = $4 AND bytes = $5",
        )
        .bind(seen.conv.shard() as i64)
        .bind(&seen.conv.app_id)
        .bind(&seen.conv.conversation_id)
        .bind(seen.first_ts_ms)
        .bind(seen.bytes as i64)
        .execute(&self.pool)
        .await
        .map_err(failed)?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.purge("tail_idempotency").await
    }
}

#[async_trait]
impl Live for SqliteTail {
    async fn publish(&self, conv: &ConvKey, event: &[u8]) -> Result<(), StoreError> {
        self.hub.deliver(&channel(conv), LiveEvent::Event(event.to_vec()));
        Ok(())
    }

    async fn subscribe(&self, conv: &ConvKey) -> Result<LiveSubscription, StoreError> {
        self.hub.subscribe(channel(conv)).await
    }
}

#[async_trait]
impl TtlState for SqliteTail {
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.purge("tail_state").await
    }

    async fn state_set(&self, key: &str, field: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
        drop_expired_state(&mut tx, key, now).await?;
        write_state(&mut tx, key, field, value, now + ttl.as_millis() as i64).await?;
        tx.commit().await.map_err(failed)
    }

    async fn state_raise_many(
        &self,
        key: &str,
        raises: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
        drop_expired_state(&mut tx, key, now).await?;
        let mut raised = Vec::with_capacity(raises.len());
        for (field, value) in raises {
            let current: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT value FROM tail_state WHERE state_key = $1 AND field = $2")
                    .bind(key)
                    .bind(field)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(failed)?;
            let current = current
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or(0);
            let value = current.max(*value);
            write_state(&mut tx, key, field, value.to_string().as_bytes(), now + ttl.as_millis() as i64).await?;
            raised.push(value);
        }
        tx.commit().await.map_err(failed)?;
        Ok(raised)
    }

    async fn state_remove(&self, key: &str, fields: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
        for field in fields {
            sqlx::query("DELETE FROM tail_state WHERE state_key = $1 AND field = $2")
                .bind(key)
                .bind(field)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)
    }

    async fn state_get(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows =
            sqlx::query("SELECT field, value FROM tail_state WHERE state_key = $1 AND expires_at > $2 ORDER BY field")
                .bind(key)
                .bind(now_ms())
                .fetch_all(&self.pool)
                .await
                .map_err(failed)?;
        Ok(rows.into_iter().map(|row| (row.get("field"), row.get("value"))).collect())
    }
}

/// Drops a TTL'd hash's fields once the key has expired.
async fn drop_expired_state(tx: &mut sqlx::SqliteConnection, key: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM tail_state WHERE state_key = $1 AND expires_at <= $2")
        .bind(key)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    Ok(())
}

/// Sets one field and moves the whole key's expiry, as a Redis hash with
/// PEXPIRE behaves.
async fn write_state(
    tx: &mut sqlx::SqliteConnection,
    key: &str,
    field: &str,
    value: &[u8],
    expires_at: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT OR REPLACE INTO tail_state (state_key, field, value, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(key)
        .bind(field)
        .bind(value)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    sqlx::query("UPDATE tail_state SET expires_at = $2 WHERE state_key = $1")
        .bind(key)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    Ok(())
}

/// Inserts one tail entry at `seq` with its idempotency claim; false when the
/// log already holds `seq` (nothing written).
async fn insert_entry(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    request: &AppendRequest,
    seq: i64,
) -> Result<bool, StoreError> {
    let conv = &request.conv;
    let inserted = sqlx::query(
        "INSERT INTO tail_entries (app_id, conversation_id, seq, ts, body) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&conv.app_id)
    .bind(&conv.conversation_id)
    .bind(seq)
    .bind(request.ts_ms)
    .bind(&request.body)
    .execute(&mut **tx)
    .await
    .map_err(failed)?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    if let Some(claim) = &request.idempotency {
        sqlx::query(
            "INSERT OR REPLACE INTO tail_idempotency \
             (app_id, conversation_id, idempotency_key, fingerprint, seq, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&conv.app_id)
        .bind(&conv.conversation_id)
        .bind(&claim.key)
        .bind(&claim.fingerprint)
        .bind(seq)
        .bind(request.ts_ms.max(now_ms()) + claim.ttl.as_millis() as i64)
        .execute(&mut **tx)
        .await
        .map_err(failed)?;
    }
    Ok(true)
}

/// The claim on `key` still live at `now` (Unix ms; inside an append, the
/// later of the wall clock and the request's receive time, so tests can move
/// the clock forward), as (seq, fingerprint): read inside the append
/// transaction, and alone for the replay peek.
async fn find_claim<'e, E>(
    executor: E,
    conv: &ConvKey,
    key: &str,
    now: i64,
) -> Result<Option<(u64, String)>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query(
        "SELECT seq, fingerprint FROM tail_idempotency \
         WHERE app_id = $1 AND conversation_id = $2 AND idempotency_key = $3 AND expires_at > $4",
    )
    .bind(&conv.app_id)
    .bind(&conv.conversation_id)
    .bind(key)
    .bind(now)
    .fetch_optional(executor)
    .await
    .map_err(failed)?;
    Ok(row.map(|row| (row.get::<i64, _>("seq") as u64, row.get::<String, _>("fingerprint"))))
}
