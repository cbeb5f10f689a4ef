//! Fuzzes configuration loading: any TOML text and any `MSGD_*` overrides
//! give a `Config` or a `ConfigError` — never a panic — and no secret given
//! ever shows in what msgd prints: the error message, or `msgd config`'s
//! effective view.
//!
//! Input: TOML text, optionally followed by a line `# env` and then
//! `NAME=VALUE` lines, the environment passed alongside.
//!
//! For the secret property the target plants a marker in every secret it
//! finds in the input — each string value of a key named like a secret (with
//! config.rs's words: `secret`, `password`, `passwd`, `token`, `signing`),
//! known or mistyped, and a password in each URL written as `…user@…` under
//! a key named like `url` (`postgres.url`, `redis.url`, or in a mistyped
//! section) — then checks the marker never appears in the output. Inputs
//! that hold the marker elsewhere are skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msgd::config::{from_toml, Config, ConfigError};

const MARKER: &str = "hunter2";

fuzz_target!(|bytes: &[u8]| {
    let Ok(input) = std::str::from_utf8(bytes) else { return };
    let (text, env) = split_input(input);
    // As given: must not panic, and whatever comes out must print.
    shown(from_toml(text, env.clone()));
    check_secrets(text, &env);
});

fn split_input(input: &str) -> (&str, Vec<(String, String)>) {
    let (text, env_lines) = match input.split_once("\n# env\n") {
        Some((text, env)) => (text, env),
        None => (input, ""),
    };
    let env = env_lines
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    (text, env)
}

/// Everything msgd would print for this outcome.
fn shown(outcome: Result<Config, ConfigError>) -> String {
    match outcome {
        Ok(config) => format!("{}\n{config:?}", config.effective_view()),
        Err(e) => e.to_string(),
    }
}

fn check_secrets(text: &str, env: &[(String, String)]) {
    let Ok(mut table) = text.parse::<toml::Table>() else { return };
    let Ok(before) = toml::to_string(&table) else { return };
    // msgd shows env names lowercased, and URL hosts too (`HUNTER2.example` is
    // shown `hunter2.example`): a marker in any case in the input is no secret.
    let holds_marker = |text: &str| text.to_ascii_lowercase().contains(MARKER);
    if holds_marker(&before) || env.iter().any(|(name, value)| holds_marker(name) || holds_marker(value)) {
        return;
    }
    let mut planted = plant_in_table(&mut table, "");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| {
            let key = name.strip_prefix("MSGD_").unwrap_or("").to_ascii_lowercase().replace("__", ".");
            let secret = is_secret_name(key.rsplit('.').next().unwrap_or(""));
            let value = plant(&key, value, secret).unwrap_or_else(|| value.clone());
            (name.clone(), value)
        })
        .collect();
    planted |= env.iter().any(|(_, value)| value.contains(MARKER));
    if !planted {
        return;
    }
    let Ok(text) = toml::to_string(&table) else { return };
    let output = shown(from_toml(&text, env.clone()));
    assert!(!output.contains(MARKER), "a secret shows:\n{output}\nconfig:\n{text}\nenv: {env:?}");
}

/// Plants the marker in every secret under `table` (at dotted `prefix`);
/// whether any was planted.
fn plant_in_table(table: &mut toml::Table, prefix: &str) -> bool {
    let mut planted = false;
    for (name, value) in table.iter_mut() {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        planted |= plant_in_value(value, &key, is_secret_name(name));
    }
    planted
}

/// `secret`: the value's own key is named like a secret (a section's name
/// says nothing of its keys: `auth.dev_tokens.ttl` is no secret).
fn plant_in_value(value: &mut toml::Value, key: &str, secret: bool) -> bool {
    match value {
        toml::Value::String(text) => match plant(key, text, secret) {
            Some(with_marker) => {
                *text = with_marker;
                true
            }
            None => false,
        },
        toml::Value::Array(items) => items.iter_mut().fold(false, |any, item| plant_in_value(item, key, secret) | any),
        toml::Value::Table(table) => plant_in_table(table, key),
        _ => false,
    }
}

/// The value with the marker planted where its secret is, if it holds one.
fn plant(key: &str, value: &str, secret: bool) -> Option<String> {
    if secret {
        return Some(format!("{value}{MARKER}"));
    }
    if key.rsplit('.').next().is_some_and(|name| name.to_ascii_lowercase().contains("url")) {
        return with_password(value);
    }
    None
}

/// A key named like a secret (config.rs's words), known or mistyped:
/// `secret_access_key`, `signing_key`, `password`, ...
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["secret", "password", "passwd", "token", "signing"].iter().any(|word| name.contains(word))
}

/// `scheme://user@rest` (or a mistyped `scheme:/user@…`, `scheme:user@…`)
/// with the marker as the user's password: `user:hunter2@rest`. A value
/// without a user name after a `:` or `/` is left alone.
fn with_password(url: &str) -> Option<String> {
    let (before, after) = url.split_once('@')?;
    let user_start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || "._~%-".contains(*c))
        .last()
        .map(|(i, _)| i)?;
    let (prefix, user) = before.split_at(user_start);
    if !(prefix.ends_with(':') || prefix.ends_with('/')) {
        return None;
    }
    Some(format!("{prefix}{user}:{MARKER}@{after}"))
}
