//! Compaction benchmark (`cargo bench --bench compaction`): one 6-hour window of the seed load
//! (ARCHITECTURE.md, "The contract") — 24 flushes of 10,000 conversations × 15 messages, 3.6 M
//! messages with the envelopes of benches/segments.rs — written as flush segments into a fresh
//! deployment through the public store API, then compacted by the real binary,
//! `msgd flush --compact`. Reports its wall and CPU time, its peak RSS (VmHWM: about what the
//! compaction worker adds to `serve` while it runs) and the ranged GETs it made.
//!
//! The flush segments are written twice: with blocks in conversation order, as flushes write them
//! now, and shuffled, as flushes wrote them before (one GET per block then). Embedded always;
//! services too when the `MSGDTEST_*` variables of scripts/services.sh are set.
//! `MSGD_BENCH_CONVERSATIONS` scales the window (default 10,000, the seed load);
//! `MSGD_BENCH_SHUFFLED=0` leaves out the shuffled runs (a GET per block: ~20 minutes on s3s-fs
//! at the seed load).

use std::process::Command;
use std::time::Instant;

use msgd::segment::{self, BlockInput, Codec, Record};
use msgd::store::{AppRow, Stores};
use msgd::telemetry::Metrics;

mod support;
use support::{env_or, envelope, services_env, Deployment, Rng};

const APP_ID: &str = "app_compaction_bench";
const USERS: u64 = 1_000;
const MINUTE_MS: i64 = 60_000;
const WINDOW_MS: i64 = 6 * 60 * MINUTE_MS;
const FLUSHES: u64 = 24;
const RECORDS_PER_FLUSH: u64 = 15;

/// Writes one window of flush segments; returns the messages and the segment bytes written.
async fn write_window(deployment: &Deployment, conversations: u64, sorted: bool) -> (u64, u64) {
    let config = deployment.config(&[]);
    let stores = Stores::open(&config, &Metrics::new(deployment.name)).await.expect("open the stores");
    stores.metadata.ping().await.expect("the metadata store answers (and is migrated)");
    stores.metadata.insert_app(&AppRow { id: APP_ID.into(), name: "compaction".into(), created_at: 0 }).await.unwrap();
    // Two days back: closed, settled and well inside retention.
    let start = (msgd::clock::now_ms() - 2 * 24 * 60 * MINUTE_MS).div_euclid(WINDOW_MS) * WINDOW_MS;
    let ids: Vec<String> = (0..conversations).map(|c| format!("0190c0de-0000-7000-8000-{c:012}")).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut messages, mut bytes_written) = (0u64, 0u64);
    for f in 0..FLUSHES {
        let created_at = start + (f as i64 + 1) * 15 * MINUTE_MS - MINUTE_MS;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        if !sorted {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let blocks: Vec<BlockInput> = order
            .iter()
            .map(|&c| {
                let records = (0..RECORDS_PER_FLUSH)
                    .map(|r| {
                        let seq = f * RECORDS_PER_FLUSH + r + 1;
                        let ts_ms = created_at - 15 * MINUTE_MS + (r as i64 * 60_000) + c as i64 % 60_000;
                        Record { seq, ts_ms, bytes: envelope(&mut rng, &ids[c], seq, ts_ms, USERS) }
                    })
                    .collect();
                BlockInput { conversation_id: ids[c].clone(), records }
            })
            .collect();
        messages += conversations * RECORDS_PER_FLUSH;
        let (bytes, footer) = segment::encode(APP_ID, Codec::Json, segment::Kind::Flush, created_at, &blocks).unwrap();
        let id = uuid::Uuid::now_v7().to_string();
        let key = msgd::flush::segment_key(APP_ID, created_at, &id);
        let size = bytes.len() as u64;
        bytes_written += size;
        stores.objects.put_object(&key, bytes, msgd::flush::MULTIPART_THRESHOLD).await.expect("put the segment");
        let (row, block_rows) = msgd::timeline::index_rows(APP_ID, &id, &key, size, created_at, &footer);
        stores.metadata.commit_segment(&row, &block_rows, &[]).await.expect("index the segment");
    }
    (messages, bytes_written)
}

struct Run {
    wall_s: f64,
    cpu_s: f64,
    max_rss_mb: f64,
    report: serde_json::Value,
}

/// `msgd flush --compact --json` on the deployment: wall time, CPU time
/// (`wait4`'s rusage, which reaps the child: `Child::wait` would not return
/// it) and peak RSS.
#[allow(clippy::zombie_processes)]
fn compact(deployment: &Deployment) -> Run {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_msgd"));
    // The bench's own MSGD_BENCH_* knobs are not msgd config.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("MSGD_")) {
        command.env_remove(name);
    }
    let child = command
        .args(["flush", "--compact", "--json"])
        .envs(deployment.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("MSGD_OBSERVABILITY__LOGGING__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start msgd flush --compact");
    let pid = child.id() as libc::pid_t;
    // The peak RSS is the child's VmHWM, read every 10 ms until it exits (a spike in its last
    // 10 ms would be missed). Not wait4's ru_maxrss: Linux counts the spawning process's own
    // high-water mark into it (the child starts in the bench's address space until exec), and
    // this bench holds a whole window while writing it.
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    let mut max_rss_kb = 0u64;
    loop {
        let status_file = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(line) = status_file.lines().find(|line| line.starts_with("VmHWM:")) {
            let kb = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            max_rss_kb = max_rss_kb.max(kb);
        }
        // SAFETY: `pid` is our child, not yet reaped; `status` and `usage` are valid for writes.
        match unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) } {
            0 => std::thread::sleep(std::time::Duration::from_millis(10)),
            waited => {
                assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
                break;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.expect("stdout"), &mut out).expect("read the report");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "msgd flush --compact failed: {out}");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run {
        wall_s: started.elapsed().as_secs_f64(),
        cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        max_rss_mb: max_rss_kb as f64 / 1024.0,
        report: serde_json::from_str(&out).unwrap_or_else(|e| panic!("the --json report ({e}): {out}")),
    }
}

#[tokio::main]
async fn main() {
    let conversations: u64 = env_or("MSGD_BENCH_CONVERSATIONS", 10_000);
    println!(
        "one 6-hour window: {FLUSHES} flush segments × {conversations} conversations × {RECORDS_PER_FLUSH} messages"
    );
    println!(
        "{:<10} {:<9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>12} {:>10}",
        "backend", "blocks", "messages", "MB in", "MB out", "GETs", "wall s", "CPU s", "peak RSS MB"
    );
    let services = services_env();
    let orders: &[bool] = if env_or("MSGD_BENCH_SHUFFLED", 1) == 0 { &[true] } else { &[true, false] };
    for backend in ["embedded", "services"] {
        for &sorted in orders {
            let deployment = match (backend, &services) {
                ("embedded", _) => Deployment::embedded().await,
                (_, Some(services)) => Deployment::services(services).await,
                _ => {
                    eprintln!("services: skipped (no MSGDTEST_* variables; see scripts/services.sh)");
                    break;
                }
            };
            let (messages, bytes_in) = write_window(&deployment, conversations, sorted).await;
            let run = compact(&deployment);
            let field = |name: &str| run.report[name].as_u64().unwrap_or_default();
            assert_eq!(field("records"), messages, "every message compacted");
            assert_eq!(field("bytes_in"), bytes_in);
            println!(
                "{:<10} {:<9} {:>9} {:>9.1} {:>10.1} {:>8} {:>8.1} {:>12.1} {:>10.1}",
                backend,
                if sorted { "in order" } else { "shuffled" },
                messages,
                bytes_in as f64 / 1e6,
                field("bytes_out") as f64 / 1e6,
                field("reads"),
                run.wall_s,
                run.cpu_s,
                run.max_rss_mb
            );
            deployment.cleanup().await;
        }
    }
}
