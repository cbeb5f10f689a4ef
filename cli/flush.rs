//! `msgd flush`: one flush tick now (`--all` ignores the thresholds,
//! `--dry-run` only shows what would be written), `--compact` to merge every
//! closed compaction window now, `--reindex` to rebuild the segment index
//! from the objects' footers, or `--check` to check (and repair) every
//! conversation's history. Exits 1 when anything failed or was found lost.

use indicatif::{ProgressBar, ProgressStyle};
use msgd::clock::{format_ms, now_ms};
use msgd::config::Config;
use msgd::flush::{CheckReport, CompactReport, FlushOptions, Flusher};
use msgd::telemetry::Metrics;

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// Flush every dirty conversation now, whatever the thresholds say
    #[arg(long)]
    all: bool,
    /// Show what is waiting per conversation and what would be written and trimmed; write nothing
    #[arg(long, conflicts_with = "reindex")]
    dry_run: bool,
    /// Rebuild the segment index from every object's footer (metadata lost, objects kept)
    #[arg(long, conflicts_with = "all")]
    reindex: bool,
    /// Merge the segments of every closed `flush.compact_window` now (what serve does every 5 minutes)
    #[arg(long, conflicts_with_all = ["all", "dry_run", "reindex"])]
    compact: bool,
    /// Check every conversation: flushed seq, index ranges, tail and seq counter agree; repair what
    /// can be (reindex, seed counters; not with --dry-run) and exit 1 on history that is lost
    #[arg(long, conflicts_with_all = ["all", "reindex", "compact"])]
    check: bool,
    /// With --check: accept what it finds lost (recorded; later checks and the alert no longer report it)
    #[arg(long, requires = "check", conflicts_with = "dry_run")]
    accept_loss: bool,
    /// Print one JSON document instead of a table
    #[arg(long)]
    json: bool,
}

pub async fn run(args: &Args, config: Config) -> Result<(), Failure> {
    msgd::logging::init(&config.observability.logging);
    let metrics = Metrics::new(config.backend.name());
    let stores = crate::open_available_stores(&config, &metrics).await?;
    let flusher = Flusher::new(stores, metrics, config.flush.clone());
    let spinner = if args.json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));

    if args.reindex {
        spinner.set_message("reindexing segments");
        let report = flusher.reindex().await.map_err(|e| Failure::Failed(e.into()));
        spinner.finish_and_clear();
        let report = report?;
        if args.json {
            output::json(&report);
        } else {
            output::table(
                &["objects", "indexed", "already indexed"],
                [vec![report.objects.to_string(), report.indexed.to_string(), report.already_indexed.to_string()]],
            );
        }
        return Ok(());
    }

    if args.check {
        spinner.set_message("checking conversations");
        let expired_before = now_ms().saturating_sub(config.retention.period.as_millis() as i64);
        let report = flusher.check(expired_before, args.dry_run).await.map_err(|e| Failure::Failed(e.into()));
        spinner.finish_and_clear();
        let report = report?;
        print_check(&report, args.json);
        if args.accept_loss && !report.lost.is_empty() {
            flusher.accept_losses(&report.lost, now_ms()).await.map_err(|e| Failure::Failed(e.into()))?;
            eprintln!("accepted {} lost seq(s): later checks count them as accepted, not lost", report.lost_seqs());
            return Ok(());
        }
        return match report.lost_seqs() {
            0 => Ok(()),
            n => Err(Failure::Failed(anyhow::anyhow!(
                "{n} acknowledged seq(s) are in neither the tail nor the segments \
                 (see runbooks/flush.md, \"Lost history\"; --accept-loss once accepted)"
            ))),
        };
    }

    if args.compact {
        spinner.set_message("compacting segments");
        let report = compact_all(&flusher).await.map_err(|e| Failure::Failed(e.into()));
        spinner.finish_and_clear();
        let report = report?;
        if args.json {
            output::json(&report);
        } else {
            let in_out = |a: u64, b: u64| format!("{a} → {b}");
            output::table(
                &["windows", "segments", "block rows", "bytes", "messages", "reads", "refused", "skipped"],
                [vec![
                    report.windows.to_string(),
                    in_out(report.segments_in, report.segments_out),
                    in_out(report.block_rows_in, report.block_rows_out),
                    in_out(report.bytes_in, report.bytes_out),
                    report.records.to_string(),
                    report.reads.to_string(),
                    report.conflicts.to_string(),
                    report.skipped.to_string(),
                ]],
            );
        }
        return match report.skipped {
            0 => Ok(()),
            n => Err(Failure::Failed(anyhow::anyhow!(
                "{n} window(s) left uncompacted: a segment in them is unreadable (see the log and runbooks/flush.md)"
            ))),
        };
    }

    spinner.finish_and_clear();
    // A bar over the conversations due, filled as each app's segment is committed.
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} conversations {elapsed}").expect("valid template"),
    );
    bar.set_message(if args.dry_run { "planning" } else { "flushing" });
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let options = FlushOptions { all: args.all, dry_run: args.dry_run };
    let report = flusher.tick_with_progress(options, now_ms(), &progress).await;
    bar.finish_and_clear();
    let report = report.map_err(|e| Failure::Failed(e.into()))?;
    // Conversations skipped for a hole in their tail are a failure to report.
    let outcome = match report.holes {
        0 => Ok(()),
        n => Err(Failure::Failed(anyhow::anyhow!(
            "{n} conversation(s) skipped: their tail has a hole after the flushed seq (see runbooks/flush.md)"
        ))),
    };
    if args.json {
        output::json(&report);
        return outcome;
    }
    if report.dry_run && !report.waiting.is_empty() {
        println!("waiting (unflushed messages per conversation):");
        output::table(
            &["app", "conversation", "messages", "bytes", "oldest", "this tick"],
            report.waiting.iter().map(|w| {
                vec![
                    w.app_id.clone(),
                    w.conversation_id.clone(),
                    w.messages.to_string(),
                    w.bytes.to_string(),
                    format_ms(w.oldest_ts_ms),
                    if w.due { "flushes".into() } else { "waits (below the thresholds)".into() },
                ]
            }),
        );
    }
    if !report.segments.is_empty() {
        if report.dry_run {
            println!("would write:");
        }
        let rows = report.segments.iter().flat_map(|segment| {
            segment.blocks.iter().map(move |b| {
                vec![
                    segment.object_key.clone(),
                    b.conversation_id.clone(),
                    output::seqs(b.seq_start, b.seq_end),
                    format!("{} → {}", format_ms(b.ts_start), format_ms(b.ts_end)),
                    b.record_count.to_string(),
                    b.length.to_string(),
                    b.raw_bytes.to_string(),
                ]
            })
        });
        output::table(&["object", "conversation", "seqs", "time", "records", "bytes", "raw bytes"], rows);
    }
    let (write, trim, trimmed) = if report.dry_run {
        ("would write", "would trim", report.would_trim)
    } else {
        ("wrote", "trimmed", report.trimmed)
    };
    let mut summary = format!("{write} {} segment(s); {trim} {trimmed} tail entries", report.segments.len());
    if report.deferred > 0 {
        summary += &format!(
            "; {} conversation(s) wait below the thresholds (flush.max_age, flush.max_bytes; --all flushes them now)",
            report.deferred
        );
    }
    if report.skipped_shards > 0 {
        summary += &format!("; {} shard(s) held by other instances", report.skipped_shards);
    }
    if report.dry_run && report.waiting.is_empty() {
        summary += "; nothing is waiting";
    }
    println!("{summary}");
    outcome
}

/// The check's findings.
fn print_check(report: &CheckReport, json: bool) {
    if json {
        output::json(report);
    } else {
        if !report.lost.is_empty() {
            println!("lost (in neither the tail nor the segments):");
            output::table(
                &["app", "conversation", "seqs", "missing from"],
                report.lost.iter().map(|range| {
                    vec![
                        range.app_id.clone(),
                        range.conversation_id.clone(),
                        output::seqs(range.from, range.to),
                        format!("{:?}", range.lost_in).to_lowercase(),
                    ]
                }),
            );
        }
        let (reindex, seed) = if report.dry_run { ("would reindex", "would seed") } else { ("reindexed", "seeded") };
        let noted = |n: u64, what: &str| if n > 0 { format!("{n} ({what})") } else { n.to_string() };
        output::table(
            &["conversations", "index incomplete", "counters behind", "busy", "lost seqs", "accepted ranges"],
            [vec![
                report.conversations.to_string(),
                noted(report.index_incomplete, reindex),
                noted(report.counters_behind, seed),
                report.busy.to_string(),
                report.lost_seqs().to_string(),
                report.accepted.to_string(),
            ]],
        );
    }
}

/// Compaction runs until one finds nothing left to merge; the totals.
async fn compact_all(flusher: &Flusher) -> Result<CompactReport, msgd::flush::FlushError> {
    let mut total = CompactReport::default();
    loop {
        let run = flusher.compact(now_ms(), 16).await?;
        total.windows += run.windows;
        total.segments_in += run.segments_in;
        total.segments_out += run.segments_out;
        total.block_rows_in += run.block_rows_in;
        total.block_rows_out += run.block_rows_out;
        total.bytes_in += run.bytes_in;
        total.bytes_out += run.bytes_out;
        total.records += run.records;
        total.reads += run.reads;
        total.conflicts += run.conflicts;
        // Each run meets the same unreadable windows again: the last run's count is theirs.
        total.skipped = run.skipped;
        if run.windows == 0 {
            return Ok(total);
        }
    }
}
