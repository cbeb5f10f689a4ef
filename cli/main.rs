//! The `msgd` binary: parses the command line, loads the one config, and
//! dispatches to a subcommand. Each subcommand lives in its own file with its
//! options and a `run`; the work itself is in the `msgd` library.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage or configuration error.

mod backup_r2;
mod config;
mod flush;
mod inspect_segment;
mod keys;
mod load;
mod output;
mod retention;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// msgd — a self-hosted real-time messaging backend.
///
/// Runs embedded (SQLite + local files under the data dir) unless the config
/// names Postgres, Redis and S3, in which case it runs on those services.
#[derive(Parser)]
#[command(name = "msgd", version, propagate_version = true)]
struct Cli {
    /// Config file (TOML). Every key can also be set as MSGD_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "MSGD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: HTTP and WebSocket API, the flush and retention workers, /healthz, /readyz, /metrics
    Serve(serve::Args),
    /// Apps and their API keys: create, list, rotate, revoke, verify
    Keys(keys::Args),
    /// Flush the tail into segments now, or rebuild the segment index
    Flush(flush::Args),
    /// Back up to R2 (any S3 endpoint), list, verify, restore and prune backups
    BackupR2(backup_r2::Args),
    /// Delete what is past retention.period now: segments, index rows, tail entries, expired state
    Retention(retention::Args),
    /// Show a segment object's header, blocks and records; verify it
    InspectSegment(inspect_segment::Args),
    /// Print the effective configuration (secrets redacted) or check it
    Config(config::Args),
    /// Generate load against a running msgd and report throughput and latency
    Load(load::Args),
}

/// A failure with the exit code it maps to.
pub enum Failure {
    /// Something went wrong doing the work: exit 1.
    Failed(anyhow::Error),
    /// The invocation or configuration is wrong: exit 2.
    Usage(String),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Failed(err)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command piped into `head` ends quietly when the reader leaves, as
        // Unix tools do, instead of panicking on the write. serve keeps SIGPIPE
        // ignored: its sockets report a gone peer as an error.
        // SAFETY: restoring a signal's default disposition, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let loaded = msgd::config::load(cli.config.as_deref(), env);

    if let Command::Config(args) = &cli.command {
        return exit(config::run(args, loaded));
    }
    // Load talks to a server over HTTP; it needs no local config.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return exit(Err(Failure::Failed(anyhow::Error::new(e).context("cannot start the async runtime")))),
    };
    if let Command::Load(args) = &cli.command {
        return exit(runtime.block_on(load::run(args)));
    }
    let config = match loaded {
        Ok(config) => config,
        Err(e) => return exit(Err(Failure::Usage(e.to_string()))),
    };
    let result = match cli.command {
        Command::Serve(args) => {
            let path = cli.config.clone();
            let read_config = move || msgd::config::load(path.as_deref(), std::env::vars());
            runtime.block_on(serve::run(&args, config, read_config))
        }
        Command::Keys(args) => runtime.block_on(keys::run(&args, config)),
        Command::Flush(args) => runtime.block_on(flush::run(&args, config)),
        Command::Retention(args) => runtime.block_on(retention::run(&args, config)),
        Command::BackupR2(args) => runtime.block_on(backup_r2::run(&args, config)),
        Command::InspectSegment(args) => runtime.block_on(inspect_segment::run(&args, config)),
        Command::Config(_) | Command::Load(_) => unreachable!("handled above"),
    };
    // Background tasks (lazy connections' reconnect loops) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    exit(result)
}

/// The stores of a one-shot command that works on the data (flush,
/// retention, backups), refused at once when a dependency is down.
pub async fn open_available_stores(
    config: &msgd::config::Config,
    metrics: &msgd::telemetry::Metrics,
) -> Result<msgd::store::Stores, Failure> {
    let stores = msgd::store::Stores::open(config, metrics).await?;
    match stores.check(msgd::readiness::CHECK_TIMEOUT).await.into_iter().find(|c| !c.ok) {
        Some(down) => {
            Err(Failure::Failed(anyhow::anyhow!("{} is not available: {}", down.name, down.error.unwrap_or_default())))
        }
        None => Ok(stores),
    }
}

fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(e)) => {
            eprintln!("msgd: error: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("msgd: {message}");
            ExitCode::from(2)
        }
    }
}
