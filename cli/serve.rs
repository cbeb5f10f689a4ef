//! `msgd serve`: bind `http.listen`, run the server on it until SIGTERM or
//! SIGINT, then drain within `http.shutdown_timeout` (exit 0), or exit 1 when
//! the deadline passes.
//!
//! SIGHUP reads the configuration again (file and environment) and puts its
//! `[observability.logging]` section in force; a configuration that does not
//! check keeps the running settings. Signals an operator may send by habit
//! never kill it: SIGUSR1 and SIGUSR2 are logged and ignored until they are
//! given a meaning. SIGPIPE needs nothing: the Rust runtime ignores it, so a
//! closed socket or log pipe is a write error, not a death.

use msgd::config::{Config, ConfigError};
use msgd::server::{self, Exit};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {}

/// Serves `config`; `read_config` reads the configuration again on SIGHUP.
pub async fn run(
    _args: &Args,
    config: Config,
    read_config: impl Fn() -> Result<Config, ConfigError> + Send + 'static,
) -> Result<(), Failure> {
    msgd::logging::init(&config.observability.logging);
    // Installed before boot, so a signal sent while msgd starts is handled too.
    let signals = Signals::install()
        .map_err(|e| Failure::Failed(anyhow::Error::new(e).context("cannot install the signal handlers")))?;
    // At most one read waits to be applied; a SIGHUP meanwhile is a no-op.
    let (reloads_tx, reloads) = mpsc::channel(1);
    let served = async {
        let listener = server::bind(config.http.listen).await?;
        server::serve(config, listener, signals.until_shutdown(reloads_tx, read_config), reloads).await
    };
    match served.await {
        Ok(Exit::Clean) => Ok(()),
        Ok(Exit::DeadlineExceeded) => {
            Err(Failure::Failed(anyhow::anyhow!("shutdown deadline passed with work in flight")))
        }
        Err(e) => {
            // Driver and client errors may quote a dependency URL.
            let message = msgd::config::redact_text(&format!("{e:#}"));
            tracing::error!(component = "boot", error = %message, "serve failed");
            Err(Failure::Failed(anyhow::anyhow!(message)))
        }
    }
}

/// The signals `serve` handles.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Resolves on SIGTERM or SIGINT; meanwhile a SIGHUP sends the
    /// configuration read again to `reloads`, and the others are logged.
    async fn until_shutdown(
        mut self,
        reloads: mpsc::Sender<Result<Config, ConfigError>>,
        read_config: impl Fn() -> Result<Config, ConfigError>,
    ) {
        loop {
            let ignored = tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!(component = "shutdown", signal = "SIGTERM", "signal received");
                    return;
                }
                _ = self.int.recv() => {
                    tracing::info!(component = "shutdown", signal = "SIGINT", "signal received");
                    return;
                }
                _ = self.hup.recv() => {
                    tracing::info!(component = "config", signal = "SIGHUP", "signal received: reading the config");
                    let _ = reloads.try_send(read_config());
                    continue;
                }
                _ = self.usr1.recv() => "SIGUSR1",
                _ = self.usr2.recv() => "SIGUSR2",
            };
            tracing::info!(component = "signals", signal = ignored, "signal ignored: it has no meaning for msgd yet");
        }
    }
}
