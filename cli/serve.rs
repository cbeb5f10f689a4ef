//! `msgd serve`: run the server until SIGTERM or SIGINT, then drain within
//! `http.shutdown_timeout` (exit 0), or exit 1 when the deadline passes.

use msgd::config::Config;
use msgd::server::{self, Exit};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: &Args, config: Config) -> Result<(), Failure> {
    msgd::telemetry::init_logging(&config.log);
    match server::serve(config, shutdown_signal()).await {
        Ok(Exit::Clean) => Ok(()),
        Ok(Exit::DeadlineExceeded) => {
            Err(Failure::Failed(anyhow::anyhow!("shutdown deadline passed with work in flight")))
        }
        Err(e) => {
            tracing::error!(component = "boot", error = %format!("{e:#}"), "serve failed");
            Err(Failure::Failed(e))
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(component = "shutdown", signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(component = "shutdown", signal = "SIGINT", "signal received"),
    }
}
