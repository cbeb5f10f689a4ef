//! `msgd keys`: create and list apps; issue, list, rotate, revoke and verify their API keys.
//! The rules live in `msgd::keys`; this file parses and prints.
//!
//! A key is named by one id form everywhere (`keys list`, the issuing
//! commands, `verify`) and every command accepts it; with `--json` every
//! issuing command prints the same key document as the admin HTTP API
//! ([`msgd::keys::IssuedKey::document`]).

use std::io::Read;
use std::time::Duration;

use msgd::clock::{format_ms, now_ms};
use msgd::config::Config;
use msgd::keys::{self, IssuedKey, KeyError, Scope};
use msgd::store::Stores;

use crate::{output, Failure};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KeysCommand,
    /// Print one JSON document instead of a table
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum KeysCommand {
    /// Create an app and its first admin key
    CreateApp {
        /// A human name for the app
        name: String,
    },
    /// Issue a key for an app (shown once)
    Create {
        /// The app id (app_…)
        #[arg(long)]
        app: String,
        /// admin: manage everything in the app; write: send and create; read: read
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
        /// A label to recognise the key by
        #[arg(long)]
        name: Option<String>,
        /// Expire the key after this long (e.g. 30d, 12h)
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List apps
    ListApps,
    /// List keys (never their secrets)
    List {
        /// Only this app's keys
        #[arg(long)]
        app: Option<String>,
    },
    /// Issue a successor; the old key keeps working for the grace period
    Rotate {
        /// The key id, as `keys list` and `keys create` print it
        key_id: String,
        /// How long the old key stays valid
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Revoke a key now
    Revoke {
        /// The key id, as `keys list` and `keys create` print it
        key_id: String,
    },
    /// Check a key read from stdin: which app, scope and status (exit 1 when refused)
    Verify,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse()
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("not a duration like 24h or 30d: {e}"))
}

pub async fn run(args: &Args, config: Config) -> Result<(), Failure> {
    let meta = Stores::open_metadata(&config).await?;
    let meta = meta.as_ref();
    let now = now_ms();
    match &args.command {
        KeysCommand::CreateApp { name } => {
            let (app, key) = keys::create_app(meta, name, now).await.map_err(failure)?;
            if args.json {
                let mut issued = key.document(now);
                issued["app"] = serde_json::to_value(&app).expect("app serializes");
                output::json(&issued);
            } else {
                output::table(
                    &["app id", "name", "created"],
                    [vec![app.id.clone(), app.name.clone(), format_ms(app.created_at)]],
                );
                print_issued(&key);
            }
        }
        KeysCommand::Create { app, scope, name, expires_in } => {
            let key = keys::create_key(meta, app, *scope, name.as_deref(), *expires_in, now).await.map_err(failure)?;
            if args.json {
                output::json(&key.document(now));
            } else {
                print_issued(&key);
            }
        }
        KeysCommand::ListApps => {
            let apps = keys::list_apps(meta).await.map_err(failure)?;
            if args.json {
                output::json(&serde_json::json!({"apps": apps}));
            } else {
                output::table(
                    &["app id", "name", "created"],
                    apps.iter().map(|app| vec![app.id.clone(), app.name.clone(), format_ms(app.created_at)]),
                );
            }
        }
        KeysCommand::List { app } => {
            let keys = keys::list_keys(meta, app.as_deref()).await.map_err(failure)?;
            if args.json {
                let listed: Vec<_> = keys.iter().map(|k| k.document(now)).collect();
                output::json(&serde_json::json!({"keys": listed}));
            } else {
                output::table(
                    &["key id", "app", "scope", "name", "status", "created", "expires", "last used"],
                    keys.iter().map(|k| {
                        vec![
                            k.id.clone(),
                            k.app_id.clone(),
                            k.scope.as_str().into(),
                            k.name.clone().unwrap_or_default(),
                            k.status(now).into(),
                            format_ms(k.created_at),
                            k.expires_at.map(format_ms).unwrap_or_else(|| "never".into()),
                            k.last_used_at.map(format_ms).unwrap_or_else(|| "never".into()),
                        ]
                    }),
                );
            }
        }
        KeysCommand::Rotate { key_id, grace } => {
            let old_id = keys::parse_key_id(key_id).map_err(failure)?;
            let (key, old_valid_until) = keys::rotate_key(meta, &old_id, *grace, now).await.map_err(failure)?;
            if args.json {
                let mut issued = key.document(now);
                issued["replaces"] = serde_json::json!({"id": old_id, "valid_until": old_valid_until});
                output::json(&issued);
            } else {
                eprintln!("key {old_id} stays valid until {}", format_ms(old_valid_until));
                print_issued(&key);
            }
        }
        KeysCommand::Revoke { key_id } => {
            let info = keys::revoke_key(meta, key_id, now).await.map_err(failure)?;
            if args.json {
                output::json(&info.document(now));
            } else {
                println!("revoked {} ({}) of {}", info.id, info.scope.as_str(), info.app_id);
            }
        }
        KeysCommand::Verify => {
            let mut presented = String::new();
            std::io::stdin().read_to_string(&mut presented).map_err(|e| Failure::Failed(e.into()))?;
            match keys::authenticate(meta, presented.trim(), now).await {
                Ok(auth) => {
                    if args.json {
                        output::json(&serde_json::json!({
                            "ok": true, "key_id": auth.key_id, "app_id": auth.app_id,
                            "scope": auth.scope, "expires_at": auth.expires_at,
                        }));
                    } else {
                        output::table(
                            &["key id", "app", "scope", "expires"],
                            [vec![
                                auth.key_id,
                                auth.app_id,
                                auth.scope.as_str().into(),
                                auth.expires_at.map(format_ms).unwrap_or_else(|| "never".into()),
                            ]],
                        );
                    }
                }
                Err(KeyError::Rejected(rejection)) => {
                    if args.json {
                        output::json(&serde_json::json!({
                            "ok": false, "error": {"code": rejection.code(), "message": rejection.to_string()},
                        }));
                    }
                    return Err(Failure::Failed(anyhow::anyhow!("{} ({})", rejection, rejection.code())));
                }
                Err(e) => return Err(failure(e)),
            }
        }
    }
    Ok(())
}

fn print_issued(key: &IssuedKey) {
    output::table(
        &["key id", "app", "scope", "expires", "key"],
        [vec![
            key.info.id.clone(),
            key.info.app_id.clone(),
            key.info.scope.as_str().into(),
            key.info.expires_at.map(format_ms).unwrap_or_else(|| "never".into()),
            key.key.clone(),
        ]],
    );
    eprintln!("store this key now: it is shown once and cannot be recovered");
}

/// Caller mistakes (unknown app or key, bad names) and refusals are failures
/// of the request: exit 1 with the reason.
fn failure(err: KeyError) -> Failure {
    Failure::Failed(anyhow::Error::new(err))
}
