//! `msgd retention`: one retention run now (for cron or a systemd timer),
//! safe beside a live `serve`. `--dry-run` shows what would be deleted. The
//! report goes to stdout, the run's log lines to stderr (as `serve` logs
//! them). Exits 1 when the run failed, naming the stage.

use indicatif::{ProgressBar, ProgressStyle};
use msgd::clock::{format_ms, now_ms};
use msgd::config::Config;
use msgd::retention::{Retention, RetentionOptions, RetentionReport};
use msgd::telemetry::Metrics;

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// Count what would be deleted; delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Only this app's data (default: every app)
    #[arg(long, value_name = "ID")]
    app: Option<String>,
    /// Print one JSON document instead of a table
    #[arg(long)]
    json: bool,
}

pub async fn run(args: &Args, config: Config) -> Result<(), Failure> {
    // The run's log lines (stderr, `[observability.logging]`) are its record under cron or a timer.
    msgd::logging::init(&config.observability.logging);
    let metrics = Metrics::new(config.backend.name());
    let stores = crate::open_available_stores(&config, &metrics).await?;
    if let Some(app_id) = &args.app {
        let found = stores.metadata.get_app(app_id).await.map_err(|e| Failure::Failed(e.into()))?;
        if found.is_none() {
            return Err(Failure::Usage(format!("--app: no app has the id {app_id:?} (msgd keys list-apps)")));
        }
    }
    let retention = Retention::new(stores, metrics, &config);
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    let style = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} segments {elapsed}").expect("valid template");
    bar.set_style(style);
    bar.set_message(if args.dry_run { "counting" } else { "deleting" });
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let options = RetentionOptions { dry_run: args.dry_run, app_id: args.app.clone(), exclusive: false };
    let report = retention.run_with_progress(&options, now_ms(), &progress).await;
    bar.finish_and_clear();
    let report = report.map_err(|e| Failure::Failed(e.into()))?;
    if args.json {
        output::json(&report);
    } else {
        print_summary(&report, &config);
    }
    Ok(())
}

fn print_summary(report: &RetentionReport, config: &Config) {
    let period = humantime::format_duration(config.retention.period);
    println!("cutoff {} (retention.period {period})", format_ms(report.cutoff_ms));
    let counted = |n: u64| if report.dry_run { "-".to_string() } else { n.to_string() };
    output::table(
        &["kind", if report.dry_run { "would delete" } else { "deleted" }],
        [
            vec!["segment objects".into(), report.objects.to_string()],
            vec!["segment bytes".into(), report.bytes.to_string()],
            vec!["index block rows".into(), report.block_rows.to_string()],
            vec!["attachments".into(), report.attachments.to_string()],
            vec!["attachment bytes".into(), report.attachment_bytes.to_string()],
            vec!["tail entries".into(), report.tail_entries.to_string()],
            vec!["expired idempotency claims".into(), counted(report.idempotency_claims)],
            vec!["expired state entries".into(), counted(report.state_entries)],
            vec!["expired idempotency records".into(), counted(report.idempotency_records)],
            vec!["edits and deletes of expired messages".into(), counted(report.message_changes)],
            vec!["reactions to expired messages".into(), counted(report.reactions)],
            vec!["thread entries of expired replies".into(), counted(report.replies)],
            vec!["deleted conversations".into(), counted(report.conversations)],
            vec!["reclaimed file bytes".into(), counted(report.reclaimed_bytes)],
        ],
    );
    if report.dry_run {
        println!("dry run: nothing was deleted (expired claims and state are counted only when purged)");
    }
}
