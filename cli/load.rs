//! `msgd load`: generate load against a running msgd over its public API
//! and report throughput and ack latency.

use indicatif::{ProgressBar, ProgressStyle};
use msgd::load::{self, SendPlan};

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LoadCommand,
    /// Print one JSON document instead of a table
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum LoadCommand {
    /// Send messages into one new conversation and measure ack latency
    /// (needs an admin key and auth.dev_tokens.enabled on the server, and rate limits raised for the test:
    /// limits.user_rate/user_burst and limits.key_rate/key_burst, see load/README.md). Prints the
    /// conversation id for `load history`, and failures by HTTP status and error code
    Send {
        /// The server, e.g. http://127.0.0.1:8080
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        /// An admin key of the app to load
        #[arg(long)]
        api_key: String,
        /// Messages to send in all
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Concurrent clients
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Messages per request (1 = single sends, more = the batch endpoint)
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Distinct senders (dev-token users)
        #[arg(long, default_value_t = 16)]
        users: usize,
        /// Bytes of text in each payload
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
    },
    /// Time history pages of a conversation `load send` created
    History {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        #[arg(long)]
        api_key: String,
        #[arg(long)]
        conversation_id: String,
        #[arg(long, default_value_t = 500)]
        requests: usize,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Pages start at random after_seq values in after_from..after_to
        #[arg(long, default_value_t = 0)]
        after_from: u64,
        #[arg(long, default_value_t = 1000)]
        after_to: u64,
    },
    /// WebSocket fanout: clients over conversations, send → frame latency
    WsFanout {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        #[arg(long)]
        api_key: String,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        conversations: usize,
        /// Messages sent to each conversation
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Sends per second, all conversations together
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// Hold idle, subscribed WebSockets open (measure the server's RSS meanwhile)
    WsIdle {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        #[arg(long)]
        api_key: String,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// How long to hold them, e.g. 30s
        #[arg(long, default_value = "30s", value_parser = parse_hold)]
        hold: std::time::Duration,
    },
}

/// Parses `--hold` as a human duration (`30s`, `5m`).
fn parse_hold(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

pub async fn run(args: &Args) -> Result<(), Failure> {
    let (base_url, api_key, count, concurrency, batch, users, payload_bytes) = match &args.command {
        LoadCommand::Send { base_url, api_key, count, concurrency, batch, users, payload_bytes } => {
            (base_url, api_key, count, concurrency, batch, users, payload_bytes)
        }
        LoadCommand::History { base_url, api_key, conversation_id, requests, limit, after_from, after_to } => {
            let report =
                load::history(base_url, api_key, conversation_id, *requests, *limit, *after_from, *after_to).await?;
            print_report(args.json, &report);
            return check(&report.failures, 0);
        }
        LoadCommand::WsFanout { base_url, api_key, clients, conversations, messages, rate } => {
            let report = load::fanout(base_url, api_key, *clients, *conversations, *messages, *rate).await?;
            print_report(args.json, &report);
            // Every client should see every message of its conversation.
            let missing = (report.clients * *messages).saturating_sub(report.frames_received);
            return check(&report.failures, missing);
        }
        LoadCommand::WsIdle { base_url, api_key, connections, hold } => {
            let report = load::idle(base_url, api_key, *connections, *hold).await?;
            print_report(args.json, &report);
            return Ok(());
        }
    };
    let plan = SendPlan {
        base_url: base_url.clone(),
        admin_key: api_key.clone(),
        count: *count,
        concurrency: *concurrency,
        batch: *batch,
        users: *users,
        payload_bytes: *payload_bytes,
    };
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(*count as u64) };
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} messages {per_sec}").expect("valid template"));
    let shown = bar.clone();
    let report = load::send(&plan, move |acked| shown.set_position(acked as u64)).await?;
    bar.finish_and_clear();
    if args.json {
        output::json(&report);
    } else {
        output::table(
            &[
                "conversation",
                "messages",
                "errors",
                "seconds",
                "msg/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "clients",
                "batch",
            ],
            [vec![
                report.conversation_id.clone(),
                report.messages.to_string(),
                report.errors.to_string(),
                format!("{:.2}", report.elapsed_seconds),
                format!("{:.0}", report.messages_per_second),
                format!("{:.2}", report.latency_ms_p50),
                format!("{:.2}", report.latency_ms_p90),
                format!("{:.2}", report.latency_ms_p99),
                format!("{:.2}", report.latency_ms_max),
                report.concurrency.to_string(),
                report.batch.to_string(),
            ]],
        );
    }
    check(&report.failures, 0)
}

/// Prints a report as JSON or as a two-column table (numbers to two decimals,
/// the failure breakdown one `status code: count` per line).
fn print_report(json: bool, report: &impl serde::Serialize) {
    let value = serde_json::to_value(report).expect("reports serialize");
    if json {
        output::json(&value);
    } else if let Some(fields) = value.as_object() {
        output::table(
            &["measure", "value"],
            fields.iter().map(|(k, v)| {
                let shown = match v.as_object() {
                    Some(map) if map.is_empty() => "none".to_string(),
                    Some(map) => map.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n"),
                    None if v.is_null() => "not reported".to_string(),
                    None => output::number(v),
                };
                vec![k.clone(), shown]
            }),
        );
    }
}

/// Fails when requests failed (saying how, by status and code) or frames are missing.
fn check(failures: &load::Failures, missing_frames: usize) -> Result<(), Failure> {
    let mut problems = Vec::new();
    if !failures.is_empty() {
        problems.push(load::describe_failures(failures));
    }
    if missing_frames > 0 {
        problems.push(format!("{missing_frames} frames never arrived"));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Failure::Failed(anyhow::anyhow!(problems.join("; ")))),
    }
}
