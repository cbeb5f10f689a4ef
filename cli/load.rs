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
        /// Send into this conversation instead of a new one: as --token's user, or as the app
        #[arg(long)]
        conversation_id: Option<String>,
        /// A user token to send as (see `msgd load token`) instead of minting dev tokens
        #[arg(long)]
        token: Option<String>,
        /// Each client pauses this long after each request, e.g. 10ms (HTTP only)
        #[arg(long, default_value = "0s", value_parser = parse_hold)]
        delay: std::time::Duration,
        /// HTTP requests, or `send` frames over one WebSocket per client
        #[arg(long, value_enum, default_value = "http")]
        via: load::Via,
        /// Over WebSocket: frames each client keeps in flight before waiting for acks
        #[arg(long, default_value_t = 1)]
        window: usize,
    },
    /// Print a dev token for a user (needs auth.dev_tokens.enabled): `TOKEN=$(msgd load token ...)`
    Token {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        #[arg(long)]
        api_key: String,
        /// The user id the token names
        #[arg(long)]
        user: String,
    },
    /// Show what a user token says (its claims, decoded here and not verified: the server decides)
    Whoami {
        #[arg(long)]
        token: String,
    },
    /// Create a conversation as the app and print its id
    CreateConversation {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        #[arg(long)]
        api_key: String,
        /// Member user ids, comma-separated
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        #[arg(long, default_value = "msgd load")]
        title: String,
    },
    /// A scenario at a set rate with live receivers that check every message arrives exactly once,
    /// in order: a live display while it runs (Ctrl-C stops it and prints what happened so far),
    /// a summary at the end; exits 1 on errors, gaps or duplicates. Needs an admin key,
    /// auth.dev_tokens.enabled and raised rate limits, as `send`
    Run(RunArgs),
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

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base_url: String,
    #[arg(long)]
    api_key: String,
    /// A scenario file (TOML, e.g. load/scenarios/seed.toml): its settings replace the flags below, and its
    /// [[phases]] (name, duration, rate, rate_to, reconnect) replace --rate and --duration
    #[arg(long)]
    scenario: Option<std::path::PathBuf>,
    /// Messages per second
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long to send, e.g. 30s
    #[arg(long, default_value = "10s", value_parser = parse_hold)]
    duration: std::time::Duration,
    /// Sending users (dev tokens load-0..)
    #[arg(long, default_value_t = 16)]
    users: usize,
    #[arg(long, default_value_t = 4)]
    conversations: usize,
    /// Receiving WebSockets per conversation
    #[arg(long, default_value_t = 2)]
    receivers: usize,
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Messages per HTTP request (the batch endpoint above 1)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How senders send: HTTP requests or `send` frames on one WebSocket per user
    #[arg(long, value_enum, default_value = "http")]
    via: load::Via,
    /// Requests in flight at most
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Stop after this many messages whatever the duration
    #[arg(long, default_value_t = 10_000_000)]
    max_messages: usize,
}

/// A scenario file: every field optional, the flags fill the rest.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    users: Option<usize>,
    conversations: Option<usize>,
    receivers: Option<usize>,
    payload_bytes: Option<usize>,
    batch: Option<usize>,
    via: Option<load::Via>,
    in_flight: Option<usize>,
    max_messages: Option<usize>,
    #[serde(default)]
    phases: Vec<load::Phase>,
}

fn run_plan(args: &RunArgs) -> Result<load::RunPlan, Failure> {
    let scenario = match &args.scenario {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
            let scenario: Scenario =
                toml::from_str(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            Some(scenario)
        }
    };
    let pick = |from: Option<usize>, flag: usize| from.unwrap_or(flag);
    let default_phase = load::Phase {
        name: "steady".into(),
        duration: args.duration,
        rate: args.rate,
        rate_to: None,
        reconnect: false,
    };
    let phases = match &scenario {
        Some(s) if !s.phases.is_empty() => s.phases.clone(),
        _ => vec![default_phase],
    };
    let s = scenario.as_ref();
    Ok(load::RunPlan {
        base_url: args.base_url.clone(),
        admin_key: args.api_key.clone(),
        phases,
        users: pick(s.and_then(|s| s.users), args.users),
        conversations: pick(s.and_then(|s| s.conversations), args.conversations),
        receivers: pick(s.and_then(|s| s.receivers), args.receivers),
        payload_bytes: pick(s.and_then(|s| s.payload_bytes), args.payload_bytes),
        batch: pick(s.and_then(|s| s.batch), args.batch),
        via: s.and_then(|s| s.via).unwrap_or(args.via),
        in_flight: pick(s.and_then(|s| s.in_flight), args.in_flight),
        max_messages: pick(s.and_then(|s| s.max_messages), args.max_messages),
    })
}

async fn run_scenario(args: &RunArgs, json: bool) -> Result<(), Failure> {
    let plan = run_plan(args)?;
    let counters = std::sync::Arc::new(load::Counters::default());
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"));
    let display = {
        let (bar, counters) = (bar.clone(), counters.clone());
        tokio::spawn(async move {
            loop {
                use std::sync::atomic::Ordering::Relaxed;
                bar.set_message(format!(
                    "{}: sent {} acked {} received {} errors {} ack p99 {:.2} ms",
                    counters.phase.lock().expect("phase lock"),
                    counters.sent.load(Relaxed),
                    counters.acked.load(Relaxed),
                    counters.received.load(Relaxed),
                    counters.errors.load(Relaxed),
                    counters.ack_p99_ms(),
                ));
                bar.tick();
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = load::run(&plan, counters, stop).await;
    display.abort();
    bar.finish_and_clear();
    let report = report?;
    print_report(json, &report);
    let mut problems = Vec::new();
    if !report.failures.is_empty() {
        problems.push(load::describe_failures(&report.failures));
    }
    if report.gaps > 0 || report.duplicates > 0 {
        problems.push(format!("receivers saw {} gaps and {} duplicates", report.gaps, report.duplicates));
    }
    if report.interrupted {
        problems.push("interrupted".to_string());
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Failure::Failed(anyhow::anyhow!(problems.join("; ")))),
    }
}

/// The claims of a JWT, decoded without verifying it.
fn claims(token: &str) -> Result<serde_json::Value, Failure> {
    use base64::Engine;
    let bad = || Failure::Usage("not a JWT (three base64url parts separated by dots)".into());
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let decode = |part: &str| -> Result<serde_json::Value, Failure> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    };
    let (header, mut claims) = (decode(header)?, decode(payload)?);
    if let Some(map) = claims.as_object_mut() {
        for name in ["alg", "kid"] {
            if let Some(value) = header.get(name) {
                map.insert(format!("header.{name}"), value.clone());
            }
        }
    }
    Ok(claims)
}

/// Parses `--hold` as a human duration (`30s`, `5m`).
fn parse_hold(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

pub async fn run(args: &Args) -> Result<(), Failure> {
    let plan = match &args.command {
        LoadCommand::Send {
            base_url,
            api_key,
            count,
            concurrency,
            batch,
            users,
            payload_bytes,
            conversation_id,
            token,
            delay,
            via,
            window,
        } => SendPlan {
            conversation_id: conversation_id.clone(),
            token: token.clone(),
            delay: *delay,
            base_url: base_url.clone(),
            admin_key: api_key.clone(),
            count: *count,
            concurrency: *concurrency,
            batch: *batch,
            users: *users,
            payload_bytes: *payload_bytes,
            via: *via,
            window: *window,
        },
        other => return run_other(args.json, other).await,
    };
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(plan.count as u64) };
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

/// Every subcommand but `send`.
async fn run_other(json: bool, command: &LoadCommand) -> Result<(), Failure> {
    match command {
        LoadCommand::Send { .. } => unreachable!("send is run by `run`"),
        LoadCommand::Token { base_url, api_key, user } => {
            let client = reqwest::Client::new();
            let token = load::dev_token(&client, base_url.trim_end_matches('/'), api_key, user).await?;
            match json {
                true => output::json(&serde_json::json!({"user_id": user, "access_token": token})),
                false => println!("{token}"),
            }
            Ok(())
        }
        LoadCommand::Whoami { token } => {
            let claims = claims(token)?;
            print_report(json, &claims);
            Ok(())
        }
        LoadCommand::CreateConversation { base_url, api_key, members, title } => {
            let client = reqwest::Client::new();
            let id = load::conversation_of(&client, base_url.trim_end_matches('/'), api_key, members, title).await?;
            match json {
                true => output::json(&serde_json::json!({"id": id})),
                false => println!("{id}"),
            }
            Ok(())
        }
        LoadCommand::Run(run) => run_scenario(run, json).await,
        LoadCommand::History { base_url, api_key, conversation_id, requests, limit, after_from, after_to } => {
            let report =
                load::history(base_url, api_key, conversation_id, *requests, *limit, *after_from, *after_to).await?;
            print_report(json, &report);
            check(&report.failures, 0)
        }
        LoadCommand::WsFanout { base_url, api_key, clients, conversations, messages, rate } => {
            let report = load::fanout(base_url, api_key, *clients, *conversations, *messages, *rate).await?;
            print_report(json, &report);
            // Every client should see every message of its conversation.
            let missing = (report.clients * *messages).saturating_sub(report.frames_received);
            check(&report.failures, missing)
        }
        LoadCommand::WsIdle { base_url, api_key, connections, hold } => {
            let report = load::idle(base_url, api_key, *connections, *hold).await?;
            print_report(json, &report);
            Ok(())
        }
    }
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
