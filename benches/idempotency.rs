//! Idempotency memory benchmark (`cargo bench --bench idempotency`): what a keyed message costs
//! in Redis while its claim is held, what the flush leaves behind (the filter of released keys)
//! and what the durable record costs in Postgres, then the seed load's steady state from those
//! figures, against the design that kept every claim for the whole window.
//!
//! Services mode only: the embedded tail keeps its claims as SQLite rows on disk, which cost no
//! memory. Needs the `MSGDTEST_*` variables of scripts/services.sh (source
//! `/tmp/msgd-services/env`); gets a fresh Postgres database, Redis key prefix and bucket, and
//! measures only its own keys (`MEMORY USAGE` per key), so a shared Redis does not disturb it.
//!
//! Real ids throughout: UUIDv7 conversations, users and `client_msg_id`s, sent through
//! `messages::send_batch` as SDKs send them, flushed by the real flush. Then late retries (the
//! clock two hours on) are answered from the record, and their time is reported.
//!
//! Knobs: `MSGD_BENCH_MESSAGES` (default 20,000), `MSGD_BENCH_CONVERSATIONS` (1,000),
//! `MSGD_BENCH_FILTER_BYTES` (`redis.idempotency_filter_bytes`, default 16 MiB as in
//! load/vps.toml). The run fails if the seed load's idempotency memory in Redis would exceed
//! half of the 256 MiB budget (the other half is the tail's: 108 MB with load/vps.toml).

use std::sync::Arc;
use std::time::Instant;

use msgd::auth::Caller;
use msgd::context::Context;
use msgd::conversations::{self, CreateConversation};
use msgd::flush::{FlushOptions, Flusher};
use msgd::keys::Scope;
use msgd::messages;
use msgd::store::{AppRow, Stores};
use msgd::telemetry::Metrics;

mod support;
use support::{env_or, services_env, Deployment};

/// The seed load: 1,000 users × 10 keyed messages a minute.
const SEED_RATE: f64 = 167.0;
/// How long a claim waits for its flush at load/vps.toml's settings: `max_age` 15 min + a 10 s tick.
const SEED_UNFLUSHED_SECONDS: f64 = 910.0;
const WINDOW_SECONDS: f64 = 86_400.0;
const REDIS_BUDGET: f64 = 256.0 * 1024.0 * 1024.0;
const HOUR_MS: i64 = 3_600_000;
const APP_ID: &str = "app_idempotency_bench";

/// Bytes of this deployment's Redis keys whose names contain `family`, and how many.
async fn redis_family(redis: &mut redis::aio::MultiplexedConnection, prefix: &str, family: &str) -> (u64, u64) {
    let pattern = format!("{prefix}:*:{family}:*");
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(redis).await.expect("KEYS");
    let mut bytes = 0u64;
    for key in &keys {
        let used: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query_async(redis).await.expect("MEMORY");
        bytes += used.unwrap_or(0);
    }
    (keys.len() as u64, bytes)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1_000_000.0)
}

#[tokio::main]
async fn main() {
    let messages: usize = env_or("MSGD_BENCH_MESSAGES", 20_000);
    let conversation_count: usize = env_or("MSGD_BENCH_CONVERSATIONS", 1_000);
    let filter_bytes: u64 = env_or("MSGD_BENCH_FILTER_BYTES", 16 << 20);
    println!(
        "command: MSGD_BENCH_MESSAGES={messages} MSGD_BENCH_CONVERSATIONS={conversation_count} \
         MSGD_BENCH_FILTER_BYTES={filter_bytes} cargo bench --bench idempotency"
    );
    let Some(services) = services_env() else {
        println!("skipped: needs the MSGDTEST_* variables of scripts/services.sh (source /tmp/msgd-services/env)");
        return;
    };
    let deployment = Deployment::services(&services).await;
    let filter = filter_bytes.to_string();
    let config = Arc::new(deployment.config(&[
        ("MSGD_REDIS__IDEMPOTENCY_FILTER_BYTES", &filter),
        ("MSGD_LIMITS__USER_RATE", "1000000"),
        ("MSGD_LIMITS__USER_BURST", "1000000"),
        ("MSGD_LIMITS__KEY_RATE", "1000000"),
        ("MSGD_LIMITS__KEY_BURST", "1000000"),
    ]));
    let metrics = Metrics::new("bench");
    let stores = Stores::open(&config, &metrics).await.expect("open the stores");
    stores.metadata.ping().await.expect("postgres answers (and is migrated)");
    let now = msgd::clock::now_ms();
    let app = AppRow { id: APP_ID.into(), name: "idempotency bench".into(), created_at: now };
    stores.metadata.insert_app(&app).await.expect("insert the app");
    let flusher = Flusher::new(stores.clone(), metrics.clone(), config.flush.clone());
    let ctx = Context::new(config.clone(), stores.clone(), metrics.clone()).expect("context");
    let var = |name: &str| deployment.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).expect(name);
    let prefix = var("MSGD_REDIS__KEY_PREFIX");
    let client = redis::Client::open(services.redis_url.as_str()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("connect to redis");

    // One UUID user per conversation, which it creates and writes to.
    let mut senders = Vec::with_capacity(conversation_count);
    for _ in 0..conversation_count {
        let caller = Caller {
            app_id: APP_ID.into(),
            key_id: "k_bench".into(),
            scope: Scope::Write,
            user_id: Some(uuid::Uuid::now_v7().to_string()),
            token_expires_at_ms: None,
        };
        let create = CreateConversation { members: Vec::new(), title: None, metadata: None, owner: None };
        let id = conversations::create(&ctx, &caller, create, now).await.expect("create a conversation").id;
        senders.push((caller, id));
    }
    let mut sent: Vec<(usize, serde_json::Value)> = Vec::with_capacity(messages);
    let per_batch = 20;
    for start in (0..messages).step_by(per_batch) {
        let c = (start / per_batch) % conversation_count;
        let (caller, conversation) = &senders[c];
        let batch: Vec<serde_json::Value> = (start..(start + per_batch).min(messages))
            .map(|n| {
                serde_json::json!({"payload": {"text": format!("message {n} of the idempotency bench")},
                                   "client_msg_id": uuid::Uuid::now_v7().to_string()})
            })
            .collect();
        let results = messages::send_batch(&ctx, caller, conversation, batch.clone(), now).await.expect("send a batch");
        assert!(results.iter().all(Result::is_ok), "every message is accepted");
        sent.extend(batch.into_iter().map(|body| (c, body)));
    }

    let (claims, claim_bytes) = redis_family(&mut redis, &prefix, "idem").await;
    assert_eq!(claims as usize, messages, "one claim per keyed message before the flush");
    let per_claim = claim_bytes as f64 / claims as f64;

    let report = flusher.tick(FlushOptions { all: true, dry_run: false }, now + 1_000).await.expect("flush");
    let (left, _) = redis_family(&mut redis, &prefix, "idem").await;
    let (filters, filter_used) = redis_family(&mut redis, &prefix, "idem-filter").await;
    let released = metrics.idempotency_claims_released_total.get();
    let postgres = sqlx::PgPool::connect(&var("MSGD_POSTGRES__URL")).await.expect("connect to postgres");
    let sizes = "SELECT count(*), pg_total_relation_size('idempotency_records') FROM idempotency_records";
    let records: (i64, i64) = sqlx::query_as(sizes).fetch_one(&postgres).await.expect("record sizes");
    postgres.close().await;

    // Late retries, two hours on: each found in the record and answered with its original.
    let retries = sent.len().min(200);
    let mut took = Vec::with_capacity(retries);
    for (c, body) in sent.iter().step_by(sent.len() / retries).take(retries) {
        let (caller, conversation) = &senders[*c];
        let started = Instant::now();
        let results =
            messages::send_batch(&ctx, caller, conversation, vec![body.clone()], now + 2 * HOUR_MS).await.unwrap();
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(results[0].as_ref().is_ok_and(|sent| sent.replayed), "a late retry gets its original");
    }
    took.sort_by(f64::total_cmp);
    deployment.cleanup().await;

    let full_filter = filter_used as f64 / filters.max(1) as f64 * 64.0 * 3.0;
    let before = SEED_RATE * WINDOW_SECONDS * per_claim;
    let after_claims = SEED_RATE * SEED_UNFLUSHED_SECONDS * per_claim;
    let after = after_claims + full_filter;
    let record_per_key = records.1 as f64 / messages as f64;
    println!(
        "{messages} keyed messages in {conversation_count} conversations (UUID ids); flush wrote {} segment(s)",
        report.segments.len()
    );
    println!("claims before the flush      {claims} × {per_claim:.0} bytes = {}", mb(claim_bytes as f64));
    println!("claims after the flush       {left} ({released} released)");
    println!(
        "filter of released keys      {filters} bitmap(s) × {:.0} bytes (configured {} over 192)",
        filter_used as f64 / filters.max(1) as f64,
        filter_bytes
    );
    println!(
        "durable record               {} rows, {} bytes with the index = {record_per_key:.1} bytes a key",
        records.0, records.1
    );
    println!(
        "late retry (from the record) p50 {:.2} ms, p99 {:.2} ms over {retries}",
        took[took.len() / 2],
        took[(took.len() * 99 / 100).min(took.len() - 1)]
    );
    println!("seed load, 167 keyed msg/s, 24 h window:");
    println!("  before: claims for the whole window   {}", mb(before));
    println!("  after:  claims until the flush {} + filter {} = {}", mb(after_claims), mb(full_filter), mb(after));
    println!("  Postgres records for the window       {}", mb(SEED_RATE * WINDOW_SECONDS * record_per_key));
    assert_eq!(left, 0, "the flush released every claim");
    assert!(after <= REDIS_BUDGET / 2.0, "idempotency would take {} of Redis at the seed load", mb(after));
}
