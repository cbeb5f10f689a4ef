//! `msgd config`: print the effective configuration with secrets redacted,
//! or `--check` it (exit 0 when valid, 2 when not).

use msgd::config::{Config, ConfigError};

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// Only validate; print a one-line verdict
    #[arg(long)]
    check: bool,
    /// Print one JSON document instead of TOML
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, loaded: Result<Config, ConfigError>) -> Result<(), Failure> {
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            if args.json {
                output::json(&serde_json::json!({
                    "ok": false,
                    "error": {"key": e.key, "value": e.value, "reason": e.reason, "env_var": e.env_var},
                }));
            }
            return Err(Failure::Usage(e.to_string()));
        }
    };
    let mut view = config.effective_view();
    match (args.check, args.json) {
        (true, true) => output::json(&serde_json::json!({"ok": true, "mode": config.backend.name()})),
        (true, false) => println!("config ok ({} mode)", config.backend.name()),
        (false, true) => output::json(&view),
        (false, false) => {
            view.as_object_mut().expect("config is an object").remove("mode");
            let text = toml::to_string(&view).map_err(|e| Failure::Failed(e.into()))?;
            println!("# msgd effective configuration ({} mode); secrets redacted\n{text}", config.backend.name());
        }
    }
    Ok(())
}
