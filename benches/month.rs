//! Month benchmark (`cargo bench --bench month`, services mode): what a month of the seed load
//! leaves in Postgres, for the design before compaction and durable idempotency records and for
//! this one, each written into a fresh database through the public store API and measured with
//! `pg_total_relation_size`.
//!
//! - before: one segment per 15-minute flush (2,880 in 30 days), one block row per conversation
//!   in each; idempotency claims lived in Redis, so Postgres held no records.
//! - after: one compaction segment set per 6-hour window (120 windows; 22 objects a window at
//!   the seed load, ~89 a day), one block row per conversation per window; the last window's 24
//!   flush segments not compacted yet (its peak, just before compaction); and the idempotency
//!   records of the 24-hour window (one row per conversation per flush, 15 keys of 16 bytes).
//!
//! Rows scale with the conversations: `MSGD_BENCH_CONVERSATIONS` (default 1,000, a tenth of the
//! seed load's 10,000; writing 28.8 M rows one insert at a time takes ~40 minutes here) — the
//! output extrapolates linearly to 10,000 and says so. Needs the `MSGDTEST_*` variables of
//! scripts/services.sh (`. /tmp/msgd-services/env`).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use msgd::segment::{BlockMeta, Footer};
use msgd::store::{AppRow, IdempotencyRecordRow, Stores};
use msgd::telemetry::Metrics;

mod support;
use support::{env_or, services_env, Deployment};

const SEED_CONVERSATIONS: u64 = 10_000;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
const DAYS: i64 = 30;
const APP_ID: &str = "app_month_bench";
/// 14.4 M messages a day over 10,000 conversations: 15 per conversation per 15-minute flush.
const RECORDS_PER_FLUSH: u64 = 15;
/// Compaction objects per 6-hour window at the seed load (benches/segments.rs: 89 a day).
const OBJECTS_PER_WINDOW: u64 = 22;
/// Segment bytes per message: flushed (133.6) and compacted (98.9), benches/segments.rs.
const FLUSHED_BYTES_PER_MESSAGE: f64 = 133.6;
const COMPACTED_BYTES_PER_MESSAGE: f64 = 98.9;
const CONCURRENCY: usize = 4;

/// One segment's rows: `conversations` blocks of `records` each, starting at `seq_start`.
fn segment(conversations: std::ops::Range<u64>, seq_start: u64, records: u64, created_at: i64, bytes: f64) -> Footer {
    let length = (records as f64 * bytes) as u64;
    let blocks = conversations
        .enumerate()
        .map(|(i, c)| BlockMeta {
            conversation_id: format!("0190c0de-0000-7000-8000-{c:012}"),
            seq_start,
            seq_end: seq_start + records - 1,
            ts_start: created_at - 15 * MINUTE_MS + (c as i64 * 7_919) % 60_000,
            ts_end: created_at - (c as i64 * 6_007) % 60_000,
            record_count: records as u32,
            offset: 16 + i as u64 * length,
            length,
            raw_bytes: records * 427,
            checksum: (c as u32).wrapping_mul(0x9E37_79B9),
        })
        .collect();
    Footer { app_id: APP_ID.into(), blocks }
}

/// Indexes `segments` (footer, creation time) with a few commits in flight.
async fn index(stores: &Stores, segments: Vec<(Footer, i64)>) {
    futures::stream::iter(segments)
        .map(|(footer, created_at)| async move {
            let id = uuid::Uuid::now_v7().to_string();
            let key = msgd::flush::segment_key(APP_ID, created_at, &id);
            let size = footer.blocks.iter().map(|b| b.length).sum::<u64>() + 16;
            let (row, blocks) = msgd::timeline::index_rows(APP_ID, &id, &key, size, created_at, &footer);
            stores.metadata.commit_segment(&row, &blocks, &[]).await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await
        .expect("index the month");
}

/// `pg_total_relation_size` of each table (rows, indexes and TOAST), in bytes.
async fn sizes(url: &str, tables: &[&str]) -> Vec<i64> {
    let pool = sqlx::PgPool::connect(url).await.expect("connect to the bench database");
    let mut out = Vec::new();
    for table in tables {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}"))).execute(&pool).await.expect("vacuum");
        let size: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT pg_total_relation_size('{table}')")))
            .fetch_one(&pool)
            .await
            .expect("relation size");
        out.push(size);
    }
    pool.close().await;
    out
}

struct Month {
    block_rows: u64,
    segments: u64,
    bytes: Vec<i64>,
}

async fn month(services: &support::Services, conversations: u64, after: bool) -> Month {
    let deployment = Deployment::services(services).await;
    let config = deployment.config(&[]);
    let stores = Stores::open(&config, &Metrics::new("services")).await.expect("open the stores");
    stores.metadata.ping().await.expect("postgres answers (and is migrated)");
    stores.metadata.insert_app(&AppRow { id: APP_ID.into(), name: "month".into(), created_at: 0 }).await.unwrap();
    let start = msgd::clock::now_ms() - DAYS * DAY_MS;
    let flush = 15 * MINUTE_MS;
    let mut segments = Vec::new();
    if after {
        let window = 6 * 60 * MINUTE_MS;
        let per_window = RECORDS_PER_FLUSH * 24;
        let per_object = conversations.div_ceil(OBJECTS_PER_WINDOW);
        for w in 0..(DAYS * DAY_MS / window) as u64 - 1 {
            let created_at = start + w as i64 * window;
            for first in (0..conversations).step_by(per_object as usize) {
                let range = first..(first + per_object).min(conversations);
                segments.push((
                    segment(range, w * per_window + 1, per_window, created_at, COMPACTED_BYTES_PER_MESSAGE),
                    created_at,
                ));
            }
        }
        let last = (DAYS * DAY_MS / window) as u64 - 1;
        for f in 0..24 {
            let created_at = start + last as i64 * window + (f + 1) * flush;
            let seq = last * per_window + f as u64 * RECORDS_PER_FLUSH + 1;
            segments.push((
                segment(0..conversations, seq, RECORDS_PER_FLUSH, created_at, FLUSHED_BYTES_PER_MESSAGE),
                created_at,
            ));
        }
        // The idempotency window: a row per conversation per flush of the last 24 hours, 15 keys.
        let rows: Vec<IdempotencyRecordRow> = (0..96u64)
            .flat_map(|f| {
                (0..conversations).map(move |c| IdempotencyRecordRow {
                    app_id: APP_ID.into(),
                    conversation_id: format!("0190c0de-0000-7000-8000-{c:012}"),
                    seq_start: (f * RECORDS_PER_FLUSH + 1) as i64,
                    seq_end: ((f + 1) * RECORDS_PER_FLUSH) as i64,
                    ts_end: start + DAYS * DAY_MS - DAY_MS + f as i64 * flush,
                    entries: (0..RECORDS_PER_FLUSH * 16).map(|b| (b * 37 + c) as u8).collect(),
                })
            })
            .collect();
        for chunk in rows.chunks(1_000) {
            stores.metadata.insert_idempotency_records(chunk).await.expect("insert records");
        }
    } else {
        for f in 0..(DAYS * DAY_MS / flush) as u64 {
            let created_at = start + (f as i64 + 1) * flush;
            let seq = f * RECORDS_PER_FLUSH + 1;
            segments.push((
                segment(0..conversations, seq, RECORDS_PER_FLUSH, created_at, FLUSHED_BYTES_PER_MESSAGE),
                created_at,
            ));
        }
    }
    let count = segments.len() as u64;
    let block_rows = segments.iter().map(|(footer, _)| footer.blocks.len() as u64).sum();
    index(&stores, segments).await;
    let url = deployment.vars.iter().find(|(k, _)| k == "MSGD_POSTGRES__URL").map(|(_, v)| v.clone()).unwrap();
    let bytes = sizes(&url, &["segment_blocks", "segments", "idempotency_records"]).await;
    deployment.cleanup().await;
    Month { block_rows, segments: count, bytes }
}

#[tokio::main]
async fn main() {
    let Some(services) = services_env() else {
        eprintln!("the month bench needs the MSGDTEST_* variables of scripts/services.sh; skipped");
        return;
    };
    let conversations: u64 = env_or("MSGD_BENCH_CONVERSATIONS", 1_000);
    let scale = SEED_CONVERSATIONS as f64 / conversations as f64;
    let mut results = Vec::new();
    for (name, after) in [("before", false), ("after", true)] {
        let started = Instant::now();
        let measured = month(&services, conversations, after).await;
        eprintln!("{name}: written and measured in {:.0} s", started.elapsed().as_secs_f64());
        results.push((name, measured));
    }
    let mb = |bytes: f64| bytes / 1_000_000.0;
    println!(
        "a month of the seed load in Postgres, {conversations} conversations written, ×{scale:.0} to 10,000 (linear)"
    );
    println!(
        "{:<8} {:>12} {:>10} {:>16} {:>12} {:>20} {:>12}",
        "design", "block rows", "segments", "segment_blocks", "segments", "idempotency_records", "total"
    );
    for (name, m) in &results {
        // Block and record rows grow with the conversations; segment rows do not.
        let (blocks, segments, records) =
            (mb(m.bytes[0] as f64 * scale), mb(m.bytes[1] as f64), mb(m.bytes[2] as f64 * scale));
        println!(
            "{name:<8} {:>12.0} {:>10} {:>13.0} MB {:>9.1} MB {:>17.0} MB {:>9.0} MB",
            m.block_rows as f64 * scale,
            m.segments,
            blocks,
            segments,
            records,
            blocks + segments + records
        );
    }
}
