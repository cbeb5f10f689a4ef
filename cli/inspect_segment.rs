//! `msgd inspect-segment`: look inside one segment object — a local file or
//! an object key in the configured store — needing nothing but the object
//! (and, for `--verify`, the index). The object is read by range (header,
//! trailer, footer, one block at a time), never whole.

use std::path::Path;

use msgd::clock::format_ms;
use msgd::config::{Backend, Config};
use msgd::inspect::{self, SegmentSource};
use msgd::store::Stores;
use msgd::telemetry::Metrics;

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// A local file, or an object key such as segments/<app>/…/<id>.seg
    object: String,
    /// Print the envelopes as JSON lines, as reads show them (edits and deletes applied) when the segment is
    /// in the deployment's store
    #[arg(long)]
    records: bool,
    /// Only this conversation's block (exit 1 when the segment has none)
    #[arg(long)]
    conversation: Option<String>,
    /// Also check that the index rows match the footer, and print a verdict (exit 1 on any mismatch, or when
    /// the index cannot be checked: a local file outside the deployment's object store has no index rows)
    #[arg(long)]
    verify: bool,
    /// Print one JSON document
    #[arg(long, conflicts_with = "records")]
    json: bool,
}

fn failed(message: String) -> Failure {
    Failure::Failed(anyhow::anyhow!(message))
}

/// The object key of a local file inside embedded mode's object directory.
fn embedded_key(path: &Path, config: &Config) -> Option<String> {
    if !matches!(config.backend, Backend::Embedded) {
        return None;
    }
    let root = config.data_dir.join("objects").canonicalize().ok()?;
    let relative = path.canonicalize().ok()?.strip_prefix(&root).ok()?.to_path_buf();
    let parts: Vec<&str> = relative.components().filter_map(|c| c.as_os_str().to_str()).collect();
    Some(parts.join("/"))
}

pub async fn run(args: &Args, config: Config) -> Result<(), Failure> {
    let path = Path::new(&args.object);
    let local = path.is_file();
    // The key the index knows the object by, when there is one.
    let key = if local { embedded_key(path, &config) } else { Some(args.object.clone()) };
    // The store is opened for an object, and for a local file it indexes when
    // the index is compared or records are shown (with edits and deletes applied).
    let stores = if !local || ((args.verify || args.records) && key.is_some()) {
        Some(Stores::open(&config, &Metrics::new(config.backend.name())).await?)
    } else {
        None
    };
    let source = match &stores {
        Some(stores) if !local => SegmentSource::object(&stores.objects, &args.object).await.map_err(failed)?,
        _ => SegmentSource::file(path).map_err(failed)?,
    };
    let opened = inspect::open(&source).await.map_err(failed)?;
    let conversation = args.conversation.as_deref();

    if args.records {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the listing quietly.
        let changes = stores.as_ref().map(|stores| stores.metadata.as_ref());
        return inspect::records(&source, &opened, conversation, changes, |envelope| {
            writeln!(out, "{}", serde_json::to_string(&envelope).expect("envelopes serialize")).is_ok()
        })
        .await
        .map_err(failed);
    }

    let report = inspect::inspect(&args.object, &source, &opened, conversation).await.map_err(failed)?;
    let mut problems: Vec<String> =
        report.blocks.iter().filter_map(|b| b.error.as_ref().map(|e| format!("{}: {e}", b.conversation_id))).collect();
    // Why the index was not compared, when --verify could not compare it.
    let mut index_unchecked = None;
    if args.verify {
        match (&stores, &key) {
            (Some(stores), Some(key)) => match inspect::compare_index(stores.metadata.as_ref(), key, &opened).await {
                Ok(found) => problems.extend(found),
                Err(e) => index_unchecked = Some(format!("the index could not be read: {e}")),
            },
            _ => {
                index_unchecked = Some(format!(
                    "{} is a local file outside this deployment's object store, so no index rows describe it; \
                     pass its object key, or drop --verify to check only the checksums",
                    args.object
                ))
            }
        }
    }
    let verified = problems.is_empty() && index_unchecked.is_none();
    if args.json {
        let mut value = serde_json::to_value(&report).expect("report serializes");
        value["problems"] = serde_json::json!(problems);
        if args.verify {
            value["verified"] = verified.into();
            value["index_checked"] = index_unchecked.is_none().into();
            if let Some(why) = &index_unchecked {
                value["index_not_checked"] = why.clone().into();
            }
        }
        output::json(&value);
    } else {
        output::table(
            &["object", "app", "bytes", "format", "codec", "kind", "created", "blocks"],
            [vec![
                report.object.clone(),
                report.app_id.clone(),
                report.bytes.to_string(),
                report.header.version.to_string(),
                report.header.codec.name().to_string(),
                report.header.kind.name().to_string(),
                format_ms(report.header.created_at_ms),
                report.block_count.to_string(),
            ]],
        );
        output::table(
            &["conversation", "seqs", "time", "records", "bytes", "raw bytes", "ratio", "checksum"],
            report.blocks.iter().map(|b| {
                vec![
                    b.conversation_id.clone(),
                    output::seqs(b.seq_start, b.seq_end),
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
        if args.verify && verified {
            println!("verified: {} block(s), every checksum ok, the index rows match the footer", report.blocks.len());
        }
    }
    if !problems.is_empty() {
        return Err(failed(format!("verification failed: {} problem(s) found", problems.len())));
    }
    if let Some(why) = index_unchecked {
        return Err(failed(format!("not verified: every checksum is ok, but the index was not checked: {why}")));
    }
    Ok(())
}
