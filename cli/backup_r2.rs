//! `msgd backup-r2 run|list|verify|restore|prune`: backups to the S3
//! endpoint `[backup]` names (Cloudflare R2 by design). Reports go to stdout
//! (a table, or `--json`), log lines to stderr. Exits 1 when a command
//! failed (naming the stage) or `verify` found a bad object.

use indicatif::{ProgressBar, ProgressStyle};
use msgd::backup::Backup;
use msgd::clock::{format_ms, now_ms};
use msgd::config::Config;
use msgd::telemetry::Metrics;

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// Print one JSON document instead of a table
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Flush, then back up the metadata and every new segment object; write the manifest last; prune
    Run {
        /// Also write the backup metrics to this file (node_exporter's textfile collector)
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<std::path::PathBuf>,
    },
    /// List the backups in the target: id, time, objects, bytes, complete or not
    List,
    /// Check a backup against the target: every object present with its size
    Verify {
        /// The backup id (see `list`)
        #[arg(required_unless_present = "latest", conflicts_with = "latest")]
        id: Option<String>,
        /// The newest complete backup
        #[arg(long)]
        latest: bool,
        /// Also re-read every object, check its SHA-256 and decode every segment's footer
        #[arg(long)]
        full: bool,
    },
    /// Restore a backup into this (empty) deployment
    Restore {
        #[arg(required_unless_present = "latest", conflicts_with = "latest")]
        id: Option<String>,
        #[arg(long)]
        latest: bool,
        /// Restore into a deployment that already holds data (rows and objects that exist are kept)
        #[arg(long)]
        force: bool,
    },
    /// Keep the newest backup of each of the last `backup.keep` days; delete the rest and unreferenced objects
    Prune,
}

pub async fn run(args: &Args, config: Config) -> Result<(), Failure> {
    msgd::logging::init(&config.observability.logging);
    if config.backup.is_none() {
        return Err(Failure::Usage(
            "no [backup] section in the config: set backup.endpoint, backup.bucket, backup.access_key_id and \
             backup.secret_access_key (or MSGD_BACKUP__ENDPOINT, ...)"
                .into(),
        ));
    }
    let metrics = Metrics::new(config.backend.name());
    let stores = crate::open_available_stores(&config, &metrics).await?;
    let backup = Backup::new(stores, &config, metrics.clone())?;
    let stage = |e: msgd::backup::BackupError| Failure::Failed(e.into());
    let now = now_ms();
    match &args.command {
        Command::Run { metrics_file } => {
            let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
            let style = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} objects {elapsed}").expect("template");
            bar.set_style(style);
            bar.set_message("backing up");
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let report = backup.run(now, &progress).await;
            bar.finish_and_clear();
            // Only a success rewrites the file: the last success time stays what the alert watches.
            if let (Some(path), Ok(_)) = (metrics_file, &report) {
                write_metrics(path, &metrics)?;
            }
            let report = report.map_err(stage)?;
            if args.json {
                output::json(&report);
            } else {
                println!(
                    "backup {} of {} → {}",
                    report.backup_id,
                    format_ms(report.created_at_ms),
                    backup.target().location()
                );
                output::table(
                    &[
                        "objects",
                        "copied now",
                        "bytes",
                        "bytes copied",
                        "metadata bytes",
                        "backups pruned",
                        "objects pruned",
                    ],
                    [vec![
                        report.objects.to_string(),
                        report.objects_copied.to_string(),
                        report.bytes.to_string(),
                        report.bytes_copied.to_string(),
                        report.metadata_bytes.to_string(),
                        report.pruned.backups_deleted.to_string(),
                        report.pruned.objects_deleted.to_string(),
                    ]],
                );
            }
        }
        Command::List => {
            let backups = backup.list().await.map_err(stage)?;
            if args.json {
                output::json(&backups);
            } else {
                output::table(
                    &["id", "time", "objects", "bytes", "complete"],
                    backups.iter().map(|b| {
                        vec![
                            b.backup_id.clone(),
                            format_ms(b.created_at_ms),
                            b.objects.to_string(),
                            b.bytes.to_string(),
                            if b.complete { "yes".into() } else { "no (no manifest: never used)".into() },
                        ]
                    }),
                );
            }
        }
        Command::Verify { id, latest, full } => {
            let id = chosen(&backup, id, *latest).await?;
            let report = backup.verify(&id, *full, now).await.map_err(stage)?;
            if args.json {
                output::json(&report);
            } else if report.problems.is_empty() {
                let how = if *full {
                    "present, sized and hashed as the manifest says"
                } else {
                    "present and sized as the manifest says"
                };
                println!("backup {id}: all {} objects {how}", report.objects_checked);
            } else {
                output::table(
                    &["object", "problem"],
                    report.problems.iter().map(|p| vec![p.key.clone(), p.problem.clone()]),
                );
            }
            if !report.problems.is_empty() {
                let bad: Vec<&str> = report.problems.iter().map(|p| p.key.as_str()).collect();
                return Err(Failure::Failed(anyhow::anyhow!(
                    "backup {id} has {} bad object(s): {}",
                    bad.len(),
                    bad.join(", ")
                )));
            }
        }
        Command::Restore { id, latest, force } => {
            let id = chosen(&backup, id, *latest).await?;
            let report = backup.restore(&id, *force, now).await.map_err(stage)?;
            if args.json {
                output::json(&report);
            } else {
                output::table(
                    &["backup", "rows", "objects restored", "objects past retention", "segments indexed"],
                    [vec![
                        report.backup_id.clone(),
                        report.tables.values().sum::<u64>().to_string(),
                        report.objects_restored.to_string(),
                        report.objects_expired.to_string(),
                        report.segments_indexed.to_string(),
                    ]],
                );
            }
        }
        Command::Prune => {
            let report = backup.prune(now).await.map_err(stage)?;
            if args.json {
                output::json(&report);
            } else {
                output::table(
                    &["backups kept", "backups deleted", "objects deleted", "bytes deleted"],
                    [vec![
                        report.backups_kept.to_string(),
                        report.backups_deleted.to_string(),
                        report.objects_deleted.to_string(),
                        report.bytes_deleted.to_string(),
                    ]],
                );
            }
        }
    }
    Ok(())
}

/// The backup a command names: an id, or the newest complete one.
async fn chosen(backup: &Backup, id: &Option<String>, latest: bool) -> Result<String, Failure> {
    match (id, latest) {
        (Some(id), false) => Ok(id.clone()),
        _ => backup.latest_id().await.map_err(|e| Failure::Failed(e.into())),
    }
}

/// Writes the backup metrics for node_exporter's textfile collector, atomically (a temp file, then rename).
fn write_metrics(path: &std::path::Path, metrics: &Metrics) -> Result<(), Failure> {
    let temp = path.with_extension("prom.tmp");
    std::fs::write(&temp, metrics.render_prefixed("msgd_backup_"))
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot write {}: {e}", path.display())))
}
