//! `msgd inspect-segment`: look inside one segment object — a local file or
//! an object key in the configured store — needing nothing but the object
//! (and, for `--verify`, the index when it is reachable).

use std::path::Path;

use msgd::clock::format_ms;
use msgd::config::Config;
use msgd::inspect;
use msgd::store::Stores;
use msgd::telemetry::Metrics;

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// A local file, or an object key such as segments/<app>/…/<id>.seg
    object: String,
    /// Print the envelopes as JSON lines
    #[arg(long)]
    records: bool,
    /// Only this conversation's block
    #[arg(long)]
    conversation: Option<String>,
    /// Check every checksum and that the index rows match the footer (exit 1 on any mismatch)
    #[arg(long)]
    verify: bool,
    /// Print one JSON document
    #[arg(long, conflicts_with = "records")]
    json: bool,
}

pub async fn run(args: &Args, config: Config) -> Result<(), Failure> {
    let local = Path::new(&args.object).is_file();
    let stores = if local { None } else { Some(Stores::open(&config, &Metrics::new(config.backend.name())).await?) };
    let bytes = match &stores {
        None => std::fs::read(&args.object)
            .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot read {}: {e}", args.object)))?,
        Some(stores) => stores.objects.get(&args.object).await.map_err(|e| Failure::Failed(e.into()))?,
    };
    let conversation = args.conversation.as_deref();

    if args.records {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for envelope in inspect::records(&bytes, conversation).map_err(|e| Failure::Failed(anyhow::anyhow!(e)))? {
            // A closed pipe (`| head`) ends the listing quietly.
            if writeln!(out, "{}", serde_json::to_string(&envelope).expect("envelopes serialize")).is_err() {
                break;
            }
        }
        return Ok(());
    }

    let report = inspect::inspect(&args.object, &bytes, conversation).map_err(|e| Failure::Failed(e.into()))?;
    let mut problems: Vec<String> =
        report.blocks.iter().filter_map(|b| b.error.as_ref().map(|e| format!("{}: {e}", b.conversation_id))).collect();
    if args.verify {
        match (&stores, local) {
            (Some(stores), false) => match inspect::compare_index(stores.metadata.as_ref(), &args.object, &bytes).await
            {
                Ok(found) => problems.extend(found),
                Err(e) => eprintln!("index not checked: {e}"),
            },
            _ => eprintln!("index not checked: a local file has no object key to look up"),
        }
    }
    if args.json {
        let mut value = serde_json::to_value(&report).expect("report serializes");
        value["problems"] = serde_json::json!(problems);
        output::json(&value);
    } else {
        output::table(
            &["object", "app", "bytes", "format", "codec", "created"],
            [vec![
                report.object.clone(),
                report.app_id.clone(),
                report.bytes.to_string(),
                report.header.version.to_string(),
                report.header.codec.name().to_string(),
                format_ms(report.header.created_at_ms),
            ]],
        );
        output::table(
            &["conversation", "seqs", "time", "records", "bytes", "raw bytes", "ratio", "checksum"],
            report.blocks.iter().map(|b| {
                vec![
                    b.conversation_id.clone(),
                    format!("{}..={}", b.seq_start, b.seq_end),
                    format!("{} → {}", format_ms(b.ts_start), format_ms(b.ts_end)),
                    b.record_count.to_string(),
                    b.compressed_bytes.to_string(),
                    b.raw_bytes.to_string(),
                    format!("{:.1}", b.ratio),
                    if b.checksum_ok { "ok".into() } else { "BAD".into() },
                ]
            }),
        );
        for problem in &problems {
            eprintln!("problem: {problem}");
        }
    }
    if !problems.is_empty() && (args.verify || report.blocks.iter().any(|b| !b.checksum_ok)) {
        return Err(Failure::Failed(anyhow::anyhow!("{} problem(s) found", problems.len())));
    }
    Ok(())
}
