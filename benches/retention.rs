//! Retention benchmark (`cargo bench --bench retention`): a month of the seed load's segment
//! objects and index rows (the load of benches/segments.rs), fast-forwarded into real stores
//! through the public store API, then [`Retention::run`] timed on them.
//!
//! The seed load (1,000 users × 10 messages/min over 10,000 conversations, flush tick 10 s,
//! `max_age` 15 min, `max_bytes` 1 MiB) flushes its one app every 15 minutes: 96 segments a day,
//! each holding one ~15-record block of every conversation (960,000 block rows a day, ~2 KB of
//! segment bytes per block). This bench writes that month — one segment row with its block rows
//! per 15 minutes, through `Metadata::commit_segment`, and one object per segment through
//! `Objects::put` (small dummy bytes: retention never reads objects; the rows carry realistic
//! byte lengths) — spread over `MSGD_BENCH_DAYS` days and one hour ending now. Then three runs:
//!
//! - `hour`: at now − 1 day with period `DAYS − 1` days, the oldest hour expires (what an hourly
//!   run deletes in steady state: 1/720 of a month);
//! - `day`: at now with period `DAYS − 1` days (30 d, the default, for the default 31 days), the
//!   oldest day expires;
//! - `all`: at now with period 1 minute, everything left expires.
//!
//! Each run is timed and reports objects and block rows deleted per second and the process's
//! peak RSS during the run (VmHWM, reset before the run through /proc/self/clear_refs). Setup is
//! not measured.
//!
//! Knobs (environment):
//! - `MSGD_BENCH_BACKEND`: `embedded`, `services` or `auto` (the default: embedded, and services
//!   too when the `MSGDTEST_*` variables of scripts/services.sh are set; source
//!   `/tmp/msgd-services/env` or your own). Services mode gets a fresh Postgres database (dropped
//!   at the end), a unique Redis key prefix and a fresh bucket directory under `MSGDTEST_S3_ROOT`.
//! - `MSGD_BENCH_DAYS` (default 31).
//! - `MSGD_BENCH_CONVERSATIONS` (default 1,000): block rows per segment. The seed load has
//!   10,000 (29.8 M block rows in 31 days); writing them one insert at a time through
//!   `commit_segment` takes ~25 minutes embedded on the 2-core development VM, so the default
//!   writes a tenth (2.98 M rows, ~3 minutes per backend) and keeps the month's objects; the
//!   output says so and extrapolates linearly. `MSGD_BENCH_CONVERSATIONS=10000` is full scale.
//! - `MSGD_BENCH_SETUP_CONCURRENCY` (default 1 embedded, 4 services): commits in flight.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use msgd::config::Config;
use msgd::retention::{Retention, RetentionOptions, RetentionReport};
use msgd::segment::{BlockMeta, Footer};
use msgd::store::{AppRow, FlushAdvance, Stores};
use msgd::telemetry::Metrics;

mod support;
use support::{env_or, services_env, Deployment};

const SEED_CONVERSATIONS: u64 = 10_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Every flush of the seed load is due by `max_age` (15 min): 96 segments a day.
const FLUSH_EVERY_MS: i64 = 15 * MINUTE_MS;
/// 14.4 M messages a day over 10,000 conversations and 96 flushes.
const RECORDS_PER_BLOCK: u64 = 15;
/// 15 records at 133.6 segment bytes per message (benches/segments.rs).
const BLOCK_BYTES: u64 = 2_004;
/// Raw (decompressed) bytes of such a block: 15 envelopes of ~423 bytes with length prefixes.
const BLOCK_RAW_BYTES: u64 = 6_405;
/// What each dummy object holds.
const OBJECT_BYTES: usize = 64;
const APP_ID: &str = "app_retention_bench";

/// The deployment's config with `retention.period` set.
fn config(deployment: &Deployment, period: &str) -> Config {
    deployment.config(&[("MSGD_RETENTION__PERIOD", period)])
}

/// The month's shape.
#[derive(Clone, Copy)]
struct Shape {
    conversations: u64,
    /// When the first segment's 15 minutes start: `days` days and one hour before now.
    start: i64,
    segments: u64,
}

impl Shape {
    fn new(days: i64, conversations: u64, now: i64) -> Shape {
        let span = days * DAY_MS + HOUR_MS;
        Shape { conversations, start: now - span, segments: (span / FLUSH_EVERY_MS) as u64 }
    }

    fn conversation_id(c: u64) -> String {
        format!("0190c0de-0000-7000-8000-{c:012}")
    }

    /// Segment `i`'s footer and creation time: the flush at the end of its 15 minutes, one
    /// block per conversation whose messages arrived during them (the newest 1.5–2.5 minutes
    /// before the flush, so nothing is newer than a minute at the end).
    fn segment(&self, i: u64) -> (Footer, i64) {
        let created_at = self.start + (i as i64 + 1) * FLUSH_EVERY_MS;
        let blocks = (0..self.conversations)
            .map(|c| BlockMeta {
                conversation_id: Self::conversation_id(c),
                seq_start: i * RECORDS_PER_BLOCK + 1,
                seq_end: (i + 1) * RECORDS_PER_BLOCK,
                ts_start: created_at - FLUSH_EVERY_MS + 30_000 + (c as i64 * 7_919) % 60_000,
                ts_end: created_at - 90_000 - (c as i64 * 6_007) % 60_000,
                record_count: RECORDS_PER_BLOCK as u32,
                offset: 16 + c * BLOCK_BYTES,
                length: BLOCK_BYTES,
                raw_bytes: BLOCK_RAW_BYTES,
                checksum: (c as u32).wrapping_mul(0x9E37_79B9),
            })
            .collect();
        (Footer { app_id: APP_ID.into(), blocks }, created_at)
    }
}

/// Writes the month: objects (a few puts in flight), then the index, segment by segment.
async fn fast_forward(stores: &Stores, shape: Shape, concurrency: usize) -> Duration {
    let started = Instant::now();
    let app = AppRow { id: APP_ID.into(), name: "retention bench".into(), created_at: shape.start };
    stores.metadata.insert_app(&app).await.expect("insert the app");
    let last = shape.segments - 1;
    let done = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(0..shape.segments)
        .map(|i| {
            let done = &done;
            async move {
                let (footer, created_at) = shape.segment(i);
                let segment_id = uuid::Uuid::now_v7().to_string();
                let key = msgd::flush::segment_key(APP_ID, created_at, &segment_id);
                let byte_length = 16 + shape.conversations * BLOCK_BYTES + 120 * shape.conversations;
                let (segment_row, block_rows) =
                    msgd::timeline::index_rows(APP_ID, &segment_id, &key, byte_length, created_at, &footer);
                // The flushed seqs: once, with the last segment (every flush advances them; the
                // bench does it once to keep the setup short — retention only reads the last).
                let advances: Vec<FlushAdvance> = if i == last {
                    footer
                        .blocks
                        .iter()
                        .map(|b| FlushAdvance {
                            app_id: APP_ID.into(),
                            conversation_id: b.conversation_id.clone(),
                            from: 0,
                            to: b.seq_end,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                stores.objects.put(&key, vec![0x5a; OBJECT_BYTES]).await?;
                stores.metadata.commit_segment(&segment_row, &block_rows, &advances).await?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % (shape.segments / 20).max(1) == 0 {
                    eprintln!(
                        "  setup: {n}/{} segments, {} block rows, {:.0} s",
                        shape.segments,
                        n * shape.conversations,
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok::<(), msgd::store::StoreError>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
        .expect("fast-forward the month");
    started.elapsed()
}

/// `VmHWM` and `VmRSS` from /proc/self/status, in kB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false when that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

struct Measured {
    scenario: &'static str,
    period: String,
    report: RetentionReport,
    seconds: f64,
    rss_before_kb: u64,
    peak_kb: u64,
    peak_is_run_only: bool,
}

async fn measure(deployment: &Deployment, stores: &Stores, scenario: &'static str, period: &str, at: i64) -> Measured {
    let config = config(deployment, period);
    let metrics = Metrics::new(config.backend.name());
    let retention = Retention::new(stores.clone(), metrics, &config);
    let peak_is_run_only = reset_peak_rss();
    let (_, rss_before_kb) = memory_kb();
    let started = Instant::now();
    let report = retention.run(&RetentionOptions::default(), at).await.expect("retention run");
    let seconds = started.elapsed().as_secs_f64();
    let (peak_kb, _) = memory_kb();
    assert!(!report.skipped, "the retention lease was held by someone else");
    Measured { scenario, period: period.into(), report, seconds, rss_before_kb, peak_kb, peak_is_run_only }
}

fn per_second(n: u64, seconds: f64) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.0}", n as f64 / seconds)
    }
}

async fn bench(deployment: Deployment, days: i64, conversations: u64, concurrency: usize) {
    let config = config(&deployment, "30d");
    let metrics = Metrics::new(config.backend.name());
    let stores = Stores::open(&config, &metrics).await.expect("open the stores");
    if let Some(down) = stores.check(Duration::from_secs(10)).await.into_iter().find(|c| !c.ok) {
        panic!("{} is not available: {}", down.name, down.error.unwrap_or_default());
    }
    let now = msgd::clock::now_ms();
    let shape = Shape::new(days, conversations, now);
    eprintln!(
        "{}: fast-forwarding {} segments × {} block rows ({} days + 1 h ending now), {} commits in flight",
        deployment.name, shape.segments, conversations, days, concurrency
    );
    let setup = fast_forward(&stores, shape, concurrency).await;
    let (_, rss_after_setup) = memory_kb();
    eprintln!("{}: setup {:.0} s, RSS {:.1} MB", deployment.name, setup.as_secs_f64(), rss_after_setup as f64 / 1e3);

    let period = format!("{}d", days - 1);
    let runs = [
        measure(&deployment, &stores, "hour", &period, now - DAY_MS).await,
        measure(&deployment, &stores, "day", &period, now).await,
        measure(&deployment, &stores, "all", "1m", now).await,
    ];
    let left = stores.metadata.expired_totals(now + DAY_MS, None).await.expect("count what is left");
    assert_eq!(left.segments, 0, "segments left after the `all` run");

    println!();
    println!(
        "{} — {} days + 1 h of the seed load: {} objects, {} block rows ({} conversations{}); setup {:.0} s",
        deployment.name,
        days,
        shape.segments,
        shape.segments * conversations,
        conversations,
        if conversations == SEED_CONVERSATIONS {
            String::new()
        } else {
            format!(", {:.3}× the seed load's block rows", conversations as f64 / SEED_CONVERSATIONS as f64)
        },
        setup.as_secs_f64()
    );
    println!(
        "{:<5} {:>7} {:>8} {:>11} {:>9} {:>10} {:>13} {:>10} {:>10} {:>9} {:>10}",
        "run",
        "period",
        "objects",
        "block rows",
        "GB",
        "run s",
        "objects/s",
        "rows/s",
        "reclaimed",
        "RSS MB",
        "peak MB"
    );
    for m in &runs {
        let r = &m.report;
        println!(
            "{:<5} {:>7} {:>8} {:>11} {:>9.2} {:>10.3} {:>13} {:>10} {:>10} {:>9.1} {:>9.1}{}",
            m.scenario,
            m.period,
            r.objects,
            r.block_rows,
            r.bytes as f64 / 1e9,
            m.seconds,
            per_second(r.objects, m.seconds),
            per_second(r.block_rows, m.seconds),
            if r.reclaimed_bytes == 0 { "-".into() } else { format!("{:.1} MB", r.reclaimed_bytes as f64 / 1e6) },
            m.rss_before_kb as f64 / 1e3,
            m.peak_kb as f64 / 1e3,
            if m.peak_is_run_only { "" } else { "*" }
        );
    }
    if runs.iter().any(|m| !m.peak_is_run_only) {
        println!("* /proc/self/clear_refs not writable: the peak is the process's since start, setup included");
    }
    if conversations != SEED_CONVERSATIONS {
        let scale = SEED_CONVERSATIONS as f64 / conversations as f64;
        for m in &runs {
            let r = &m.report;
            if r.block_rows == 0 {
                continue;
            }
            let rows = r.block_rows as f64 * scale;
            println!(
                "{} at the seed load's 10,000 conversations (linear in block rows, at the measured rows/s): \
                 {:.0} block rows, ≈ {:.1} s",
                m.scenario,
                rows,
                rows / (r.block_rows as f64 / m.seconds)
            );
        }
    }
    drop(stores);
    deployment.cleanup().await;
}

#[tokio::main]
async fn main() {
    let days: i64 = env_or("MSGD_BENCH_DAYS", 31);
    assert!(days >= 2, "MSGD_BENCH_DAYS must be at least 2");
    let conversations: u64 = env_or("MSGD_BENCH_CONVERSATIONS", SEED_CONVERSATIONS / 10);
    let backend: String = env_or("MSGD_BENCH_BACKEND", "auto".to_string());
    let services = services_env();
    let (embedded, with_services) = match backend.as_str() {
        "embedded" => (true, false),
        "services" => (false, true),
        "auto" => (true, services.is_some()),
        other => panic!("MSGD_BENCH_BACKEND={other:?}: expected embedded, services or auto"),
    };
    let shown: Vec<String> =
        std::env::vars().filter(|(k, _)| k.starts_with("MSGD_BENCH_")).map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "command: {} cargo bench --bench retention  (args {:?}; cores available {})",
        shown.join(" "),
        std::env::args().skip(1).collect::<Vec<_>>(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if embedded {
        let concurrency = env_or("MSGD_BENCH_SETUP_CONCURRENCY", 1);
        bench(Deployment::embedded().await, days, conversations, concurrency).await;
    }
    if with_services {
        let Some(services) = &services else {
            panic!("MSGD_BENCH_BACKEND=services needs the MSGDTEST_* variables (source /tmp/msgd-services/env)")
        };
        let concurrency = env_or("MSGD_BENCH_SETUP_CONCURRENCY", 4);
        bench(Deployment::services(services).await, days, conversations, concurrency).await;
    } else if backend == "auto" {
        println!("note: services mode skipped (no MSGDTEST_* variables; source /tmp/msgd-services/env)");
    }
}
