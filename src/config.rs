//! The one typed, validated configuration every subcommand shares (README, "Configuration").
//!
//! A TOML file (optional) is merged with `MSGD_<SECTION>__<KEY>` environment
//! overrides, deserialized strictly (unknown keys are errors) and validated once
//! into [`Config`]. Errors name the key, the offending value (secrets redacted)
//! and the reason. This module never reads the process environment itself: the
//! CLI passes the variables in, so tests can drive it with any set.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "MSGD_";
/// The environment variable naming the config file; not an override.
pub const ENV_CONFIG_FILE: &str = "MSGD_CONFIG";

/// Keys whose values are secrets in full.
const SECRET_KEYS: &[&str] = &["s3.secret_access_key", "auth.dev_tokens.signing_key"];
/// Keys holding URLs, shown through [`redact_url`] even when they fail to parse.
const URL_KEYS: &[&str] = &["postgres.url", "redis.url", "s3.endpoint", "auth.keycloak.issuer"];

/// A configuration error: which key, which value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`s3.endpoint`), or `config` for the file as a whole.
    pub key: String,
    /// The offending value as given, with secrets redacted; `None` when missing.
    pub value: Option<String>,
    /// Why the value was refused.
    pub reason: String,
    /// The environment variable the value came from, when it did.
    pub env_var: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`", self.key)?;
        if let Some(value) = &self.value {
            write!(f, " = {value:?}")?;
        }
        if let Some(var) = &self.env_var {
            write!(f, " (from {var})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Every error is built here, so every shown value and reason passes the
    /// redaction: secret keys by name, URLs by [`redact_url`].
    fn new(key: &str, value: Option<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            value: value.map(|value| shown_value(key, &value)),
            reason: redact_text(&reason.into()),
            env_var: None,
        }
    }
}

/// A secret string: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The clear value, for the one place that needs it (a client constructor).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

const REDACTED: &str = "<redacted>";

/// A URL that may carry a password: shown with the password redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
    pub fn redacted(&self) -> String {
        redact_url(self.0.as_str())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A URL as it may be shown (config view, errors, logs, `/readyz`): the whole
/// userinfo, every query parameter whose name suggests a secret, and any
/// fragment are replaced by `<redacted>`, and so is a path or a query
/// parameter holding an `@` (mistyped userinfo); scheme, host, port and path
/// stay.
/// Text that is not a URL keeps only its scheme, since it may hide a password
/// anywhere. The one redaction of URLs: everything that shows one calls this.
pub fn redact_url(text: &str) -> String {
    use url::Position;
    let is_scheme = |s: &str| s.starts_with(|c: char| c.is_ascii_alphabetic()) && s.chars().all(is_scheme_char);
    let Ok(url) = url::Url::parse(text) else {
        // Unparsable: nothing of it is shown but a well-formed scheme (what
        // precedes `://` may be a mistyped password).
        return match text.split_once("://") {
            Some((scheme, _)) if is_scheme(scheme) => format!("{scheme}://{REDACTED}"),
            _ => REDACTED.to_string(),
        };
    };
    if url.host_str().is_none() {
        // No authority (`postgres:/user:pw@host`, a missing slash): userinfo
        // was not recognised as such, so nothing after the scheme is shown.
        return format!("{}:{REDACTED}", url.scheme());
    }
    let mut shown = url[..Position::BeforeUsername].to_string();
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str(REDACTED);
        shown.push('@');
    }
    if url.path().contains('@') {
        // `scheme://host//user:pw@…` (a doubled scheme, a stray slash): what
        // looks like userinfo in the path is treated as userinfo.
        shown.push_str(&url[Position::BeforeHost..Position::BeforePath]);
        shown.push('/');
        shown.push_str(REDACTED);
    } else {
        shown.push_str(&url[Position::BeforeHost..Position::AfterPath]);
    }
    // The parser adds `/` as the path of `scheme://host`; show what was written.
    if url.path() == "/" && !text.split(['?', '#']).next().unwrap_or_default().ends_with('/') {
        shown.pop();
    }
    if let Some(query) = url.query() {
        shown.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                let decoded: String =
                    url::form_urlencoded::parse(name.as_bytes()).map(|(k, _)| k.into_owned()).collect();
                if name.contains('@') {
                    // Mistyped userinfo may reach into the name itself.
                    REDACTED.to_string()
                } else if is_secret_param(&decoded) || pair.contains('@') {
                    format!("{name}={REDACTED}")
                } else {
                    pair.to_string()
                }
            })
            .collect();
        shown.push_str(&pairs.join("&"));
    }
    if url.fragment().is_some() {
        shown.push('#');
        shown.push_str(REDACTED);
    }
    shown
}

/// Free text (an error message, a log field) with every URL in it passed
/// through [`redact_url`]; a URL runs from its scheme to the next space or quote.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start =
            rest[..at].char_indices().rev().find(|(_, c)| !is_scheme_char(*c)).map_or(0, |(i, c)| i + c.len_utf8());
        let mut end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(rest.len(), |i| at + i);
        // Punctuation closing the sentence around a URL is not part of it.
        while let Some(last) = rest[at..end].chars().last().filter(|c| matches!(c, ')' | ',' | '.' | ';' | ':')) {
            if last == ')' && rest[start..end].contains('(') {
                break;
            }
            end -= 1;
        }
        out.push_str(&rest[..start]);
        if start == at {
            // No scheme before `://`: not a URL, but what follows may still be userinfo.
            out.push_str(&redact_url(&format!("x{}", &rest[at..end]))[1..]);
        } else {
            out.push_str(&redact_url(&rest[start..end]));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A character a URL scheme may hold (RFC 3986: letters, digits, `+`, `-`, `.`).
fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// Query parameters that carry credentials: passwords (`password`,
/// `sslpassword`, `pwd`), tokens (`access_token`, `X-Amz-Security-Token`),
/// keys, secrets and signatures (`X-Amz-Signature`, `X-Amz-Credential`, `sig`).
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "signature", "credential", "auth"].iter().any(|word| name.contains(word))
        || name == "sig"
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where embedded mode keeps its SQLite file and objects.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    /// Embedded or services, decided by which sections are present.
    pub backend: Backend,
    pub retention: RetentionConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub flush: FlushConfig,
    pub history: HistoryConfig,
    pub ws: WsConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryConfig {
    /// Memory for decoded segment blocks, shared by history reads and catch-up.
    pub block_cache_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WsConfig {
    /// The server pings each connection this often.
    #[serde(serialize_with = "ser_duration")]
    pub heartbeat_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Frames queued for one connection before it counts as a slow consumer.
    pub send_queue: usize,
    pub max_subscriptions: usize,
    /// Open WebSockets per user (app + user id) at most.
    pub max_per_user: usize,
    /// Open WebSockets per client IP address at most; 0 turns the limit off
    /// (behind a reverse proxy every client shares the proxy's address).
    pub max_per_ip: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlushConfig {
    /// How often `serve` runs a flush tick.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// A conversation is flushed once this many unflushed bytes accumulate ...
    pub max_bytes: u64,
    /// ... or once its oldest unflushed message is this old.
    #[serde(serialize_with = "ser_duration")]
    pub max_age: Duration,
    /// Messages kept in the tail after they are in a segment (recent reads
    /// and reconnect catch-up stay in the tail).
    pub hot_window: u64,
    pub codec: crate::segment::Codec,
    /// Testing only: `after-put` stops a flush between the object PUT and the
    /// index commit, to prove crash recovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    /// Validated API keys are cached this long per instance, so revocation
    /// takes effect everywhere within it.
    #[serde(serialize_with = "ser_duration")]
    pub key_cache_ttl: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keycloak: Option<KeycloakConfig>,
    pub dev_tokens: DevTokensConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeycloakConfig {
    /// `https://keycloak.example.com/realms/REALM`; the JWKS is discovered from it.
    #[serde(serialize_with = "ser_url")]
    pub issuer: String,
    /// Accepted `aud` values (any one must be present); empty = not checked.
    pub audiences: Vec<String>,
    /// Accepted `azp` (client) values; empty = not checked. At least one of
    /// audiences and allowed_clients must be set.
    pub allowed_clients: Vec<String>,
    /// The claim holding the user id.
    pub user_claim: String,
    pub algorithms: Vec<String>,
    #[serde(serialize_with = "ser_duration")]
    pub leeway: Duration,
    /// How often the JWKS is refreshed in the background.
    #[serde(serialize_with = "ser_duration")]
    pub jwks_refresh_interval: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct DevTokensConfig {
    pub enabled: bool,
    #[serde(serialize_with = "ser_duration")]
    pub ttl: Duration,
    /// HMAC key for dev tokens; generated into the data dir when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsConfig {
    pub max_payload_bytes: usize,
    pub max_batch: usize,
    #[serde(serialize_with = "ser_duration")]
    pub idempotency_ttl: Duration,
    /// Sustained messages per second per user, and the burst above it.
    pub user_rate: f64,
    pub user_burst: u32,
    /// Sustained messages per second per API key, and the burst above it.
    pub key_rate: f64,
    pub key_burst: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// How long `serve` waits for in-flight work after SIGTERM before exiting.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_timeout: Duration,
    /// A connection must deliver a complete request head within this long of
    /// opening, and of its previous response (so it is also the keep-alive
    /// idle timeout): slow-header trickles and silent sockets are closed.
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// A request (body included) must be answered within this long, else 408.
    #[serde(serialize_with = "ser_duration")]
    pub request_timeout: Duration,
    /// Open connections (HTTP and WebSocket) at most; beyond it new ones get a 503.
    /// Lowered at start to fit the process's file limit.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Backend {
    Embedded,
    Services(ServicesConfig),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Services(_) => "services",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicesConfig {
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub s3: S3Config,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresConfig {
    pub url: SecretUrl,
    pub max_connections: u32,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisConfig {
    pub url: SecretUrl,
    /// Prefix of every key msgd writes, so several deployments (or tests) can
    /// share one Redis.
    pub key_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct S3Config {
    /// Custom endpoint (MinIO, R2); `None` means AWS for the region.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_optional_url")]
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO.
    pub path_style: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionConfig {
    pub days: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// A tracing filter directive, e.g. `info` or `msgd=debug`.
    pub level: String,
    pub format: LogFormat,
    /// One log line per HTTP request (method, route template, status, duration, app id).
    pub access: bool,
    /// The share of requests the access log shows (0 < rate ≤ 1); 5xx answers are always shown.
    pub access_sample_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

impl Config {
    /// The effective configuration in the file's own shape (services sections
    /// at the top level), secrets redacted: what `msgd config` prints.
    pub fn effective_view(&self) -> serde_json::Value {
        let mut view = serde_json::to_value(self).expect("config serializes");
        let object = view.as_object_mut().expect("config is an object");
        let backend = object.remove("backend").expect("backend is serialized");
        object.insert("mode".into(), self.backend.name().into());
        if let serde_json::Value::Object(sections) = backend {
            for (name, section) in sections.into_iter().filter(|(name, _)| name != "mode") {
                object.insert(name, section);
            }
        }
        view
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// A URL-valued key in the config view, through [`redact_url`].
fn ser_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

fn ser_optional_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => ser_url(url, s),
        None => s.serialize_none(),
    }
}

// ---------------------------------------------------------------------------
// The raw, file-shaped configuration.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    data_dir: Option<String>,
    http: RawHttp,
    postgres: Option<RawPostgres>,
    redis: Option<RawRedis>,
    s3: Option<RawS3>,
    retention: RawRetention,
    log: RawLog,
    auth: RawAuth,
    limits: RawLimits,
    flush: RawFlush,
    history: RawHistory,
    ws: RawWs,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHistory {
    #[serde(deserialize_with = "lenient")]
    block_cache_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawWs {
    heartbeat_interval: Option<String>,
    idle_timeout: Option<String>,
    #[serde(deserialize_with = "lenient")]
    send_queue: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    max_subscriptions: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    max_per_user: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    max_per_ip: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFlush {
    interval: Option<String>,
    #[serde(deserialize_with = "lenient")]
    max_bytes: Option<u64>,
    max_age: Option<String>,
    #[serde(deserialize_with = "lenient")]
    hot_window: Option<u64>,
    codec: Option<String>,
    failpoint: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    key_cache_ttl: Option<String>,
    keycloak: Option<RawKeycloak>,
    dev_tokens: RawDevTokens,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeycloak {
    issuer: String,
    #[serde(default, deserialize_with = "string_list")]
    audiences: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_list")]
    allowed_clients: Option<Vec<String>>,
    #[serde(default)]
    user_claim: Option<String>,
    #[serde(default, deserialize_with = "string_list")]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    leeway: Option<String>,
    #[serde(default)]
    jwks_refresh_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDevTokens {
    #[serde(deserialize_with = "lenient")]
    enabled: Option<bool>,
    ttl: Option<String>,
    signing_key: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    #[serde(deserialize_with = "lenient")]
    max_payload_bytes: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    max_batch: Option<usize>,
    idempotency_ttl: Option<String>,
    #[serde(deserialize_with = "lenient")]
    user_rate: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    user_burst: Option<u32>,
    #[serde(deserialize_with = "lenient")]
    key_rate: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    key_burst: Option<u32>,
}

/// A list of strings, as a TOML array or (from the environment) a
/// comma-separated string.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Option::<Either>::deserialize(d).map_err(|_| serde::de::Error::custom("expected a list of strings"))? {
        None => None,
        Some(Either::List(items)) => Some(items),
        Some(Either::Text(text)) => {
            Some(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        }
    })
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    listen: Option<String>,
    shutdown_timeout: Option<String>,
    header_read_timeout: Option<String>,
    request_timeout: Option<String>,
    #[serde(deserialize_with = "lenient")]
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: String,
    #[serde(default, deserialize_with = "lenient")]
    max_connections: Option<u32>,
    #[serde(default)]
    connect_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    #[serde(default)]
    key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    #[serde(default)]
    endpoint: Option<String>,
    bucket: String,
    #[serde(default)]
    region: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default, deserialize_with = "lenient")]
    path_style: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRetention {
    #[serde(deserialize_with = "lenient")]
    days: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
    #[serde(deserialize_with = "lenient")]
    access: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    access_sample_rate: Option<f64>,
}

/// Accepts a typed TOML value or a string (environment overrides are always
/// strings), parsing the latter with `FromStr`.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Typed(T),
        Text(String),
    }
    match Option::<Either<T>>::deserialize(d) {
        Ok(None) => Ok(None),
        Ok(Some(Either::Typed(v))) => Ok(Some(v)),
        Ok(Some(Either::Text(s))) => {
            s.trim().parse().map(Some).map_err(|e| serde::de::Error::custom(format!("cannot parse {s:?}: {e}")))
        }
        Err(_) => Err(serde::de::Error::custom(format!(
            "expected a {}",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("value")
        ))),
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// Reads the file (when given), applies the `MSGD_*` overrides from `env`,
/// and validates the result.
pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("config", Some(path.display().to_string()), format!("cannot read the config file: {e}"))
        })?,
        None => String::new(),
    };
    from_toml(&text, env)
}

/// As [`load`], from TOML text.
pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigError::new("config", None, format!("the file is not valid TOML: {}", e.message())))?;
    let mut from_env = BTreeMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if name == ENV_CONFIG_FILE || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let key = path.join(".");
        set_path(&mut table, &path, value)
            .map_err(|reason| ConfigError { env_var: Some(name.clone()), ..ConfigError::new(&key, None, reason) })?;
        from_env.insert(key, name);
    }
    check_services_set(&table)?;
    let merged = toml::Value::Table(table);
    let raw: RawConfig = serde_path_to_error::deserialize(merged.clone()).map_err(|e| {
        let mut key = e.path().to_string();
        let full = e.inner().to_string();
        // The TOML deserializer appends "in `key`"; the key is named already.
        let message = full.split("\nin `").next().unwrap_or(&full).trim().to_string();
        // serde reports a missing field at its parent; name the field itself.
        let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
        if let Some(field) = missing {
            key = if key == "." { field.to_string() } else { format!("{key}.{field}") };
        }
        // An unknown key's value is never shown: nothing says whether it is a
        // secret (a `[backup]` section of a newer release may hold credentials).
        // Nor is a whole section's: only a scalar or a list of them.
        let unknown = message.starts_with("unknown field");
        let value = match lookup(&merged, &key) {
            _ if missing.is_some() || unknown => None,
            Some(toml::Value::String(text)) => Some(text.clone()),
            Some(toml::Value::Table(_)) | None => None,
            Some(toml::Value::Array(items)) if items.iter().any(|item| item.is_table()) => None,
            Some(other) => Some(other.to_string()),
        };
        let reason = if missing.is_some() {
            "required but missing".to_string()
        } else if is_secret(&key) && !unknown {
            "invalid value".to_string()
        } else {
            message
        };
        ConfigError { env_var: from_env.get(&key).cloned(), ..ConfigError::new(&key, value, reason) }
    })?;
    validate(raw).map_err(|err| ConfigError { env_var: from_env.get(&err.key).cloned(), ..err })
}

/// Services mode needs postgres, redis and s3 together: a partial set is
/// refused before anything else, since the rest of the errors would mislead.
fn check_services_set(table: &toml::Table) -> Result<(), ConfigError> {
    let sections = ["postgres", "redis", "s3"];
    let (set, missing): (Vec<&str>, Vec<&str>) = sections.iter().partition(|name| table.contains_key(**name));
    if set.is_empty() || missing.is_empty() {
        return Ok(());
    }
    Err(ConfigError::new(
        missing[0],
        None,
        format!(
            "services mode needs postgres, redis and s3 together; {} set but {} missing \
             (set none of them for embedded mode)",
            set.join(", "),
            missing.join(", ")
        ),
    ))
}

fn set_path(table: &mut toml::Table, path: &[String], value: String) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("path has at least one part");
    let mut current = table;
    for part in parents {
        let entry = current.entry(part.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        current = entry.as_table_mut().ok_or_else(|| format!("`{part}` is not a section"))?;
    }
    current.insert(last.clone(), toml::Value::String(value));
    Ok(())
}

fn lookup<'a>(value: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(value, |v, part| v.get(part))
}

/// Whether a key's value must never be shown: the known secrets, and any
/// key (even a mistyped, unknown one) whose name suggests a secret.
fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
        || ["secret", "password", "passwd", "token", "signing"]
            .iter()
            .any(|word| key.to_ascii_lowercase().contains(word))
}

/// A value as an error may show it: nothing of a secret key, URLs redacted.
fn shown_value(key: &str, text: &str) -> String {
    if is_secret(key) {
        REDACTED.to_string()
    } else if URL_KEYS.contains(&key) {
        redact_url(text)
    } else {
        redact_text(text)
    }
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| "./msgd-data".into()));
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::new("data_dir", Some(String::new()), "must not be empty"));
    }

    let listen_text = raw.http.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = listen_text.parse().map_err(|e| {
        ConfigError::new("http.listen", Some(listen_text.clone()), format!("not a socket address (host:port): {e}"))
    })?;
    let shutdown_timeout = duration("http.shutdown_timeout", raw.http.shutdown_timeout, Duration::from_secs(10))?;
    let positive = |key: &str, text: Option<String>, default: Duration| {
        let value = duration(key, text, default)?;
        if value.is_zero() {
            return Err(ConfigError::new(key, Some("0s".into()), "must be more than zero"));
        }
        Ok(value)
    };
    let http = HttpConfig {
        listen,
        shutdown_timeout,
        header_read_timeout: positive(
            "http.header_read_timeout",
            raw.http.header_read_timeout,
            Duration::from_secs(10),
        )?,
        request_timeout: positive("http.request_timeout", raw.http.request_timeout, Duration::from_secs(30))?,
        max_connections: match raw.http.max_connections.unwrap_or(10_000) {
            0 => return Err(ConfigError::new("http.max_connections", Some("0".into()), "must be at least 1")),
            n => n,
        },
    };

    let backend = match (raw.postgres, raw.redis, raw.s3) {
        (None, None, None) => Backend::Embedded,
        (Some(pg), Some(redis), Some(s3)) => Backend::Services(ServicesConfig {
            postgres: PostgresConfig {
                url: service_url("postgres.url", &pg.url, &["postgres", "postgresql"])?,
                max_connections: match pg.max_connections.unwrap_or(10) {
                    0 => {
                        return Err(ConfigError::new(
                            "postgres.max_connections",
                            Some("0".into()),
                            "must be at least 1",
                        ))
                    }
                    n => n,
                },
                connect_timeout: duration("postgres.connect_timeout", pg.connect_timeout, Duration::from_secs(5))?,
            },
            redis: RedisConfig {
                url: service_url("redis.url", &redis.url, &["redis", "rediss"])?,
                key_prefix: match redis.key_prefix.unwrap_or_else(|| "msgd".into()) {
                    prefix if prefix.is_empty() || prefix.contains(['{', '}']) => {
                        return Err(ConfigError::new(
                            "redis.key_prefix",
                            Some(prefix),
                            "must be non-empty and free of `{` and `}` (msgd adds its own hash tags)",
                        ))
                    }
                    prefix => prefix,
                },
            },
            s3: validate_s3(s3)?,
        }),
        _ => unreachable!("a partial services set is refused by check_services_set"),
    };

    let days = raw.retention.days.unwrap_or(30);
    if days == 0 {
        return Err(ConfigError::new("retention.days", Some("0".into()), "must be at least 1"));
    }

    let level = raw.log.level.unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        return Err(ConfigError::new("log.level", Some(level), format!("not a log filter: {e}")));
    }
    let format = match raw.log.format.as_deref().unwrap_or("json") {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => return Err(ConfigError::new("log.format", Some(other.into()), "must be `json` or `text`")),
    };

    let auth = validate_auth(raw.auth)?;
    let limits = validate_limits(raw.limits)?;
    let flush = validate_flush(raw.flush)?;
    let history = HistoryConfig { block_cache_bytes: raw.history.block_cache_bytes.unwrap_or(64 * 1024 * 1024) };
    let ws = WsConfig {
        heartbeat_interval: duration("ws.heartbeat_interval", raw.ws.heartbeat_interval, Duration::from_secs(25))?,
        idle_timeout: duration("ws.idle_timeout", raw.ws.idle_timeout, Duration::from_secs(60))?,
        send_queue: raw.ws.send_queue.unwrap_or(256).max(2),
        max_subscriptions: raw.ws.max_subscriptions.unwrap_or(100).max(1),
        max_per_user: raw.ws.max_per_user.unwrap_or(32).max(1),
        max_per_ip: raw.ws.max_per_ip.unwrap_or(1024),
    };
    let access_sample_rate = raw.log.access_sample_rate.unwrap_or(1.0);
    if !(access_sample_rate > 0.0 && access_sample_rate <= 1.0) {
        return Err(ConfigError::new(
            "log.access_sample_rate",
            Some(access_sample_rate.to_string()),
            "must be more than 0 and at most 1",
        ));
    }

    Ok(Config {
        data_dir,
        http,
        backend,
        retention: RetentionConfig { days },
        log: LogConfig { level, format, access: raw.log.access.unwrap_or(false), access_sample_rate },
        auth,
        limits,
        flush,
        history,
        ws,
    })
}

fn validate_auth(raw: RawAuth) -> Result<AuthConfig, ConfigError> {
    let keycloak = match raw.keycloak {
        None => None,
        Some(kc) => {
            let url = url::Url::parse(&kc.issuer).map_err(|e| {
                ConfigError::new("auth.keycloak.issuer", Some(kc.issuer.clone()), format!("not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new("auth.keycloak.issuer", Some(kc.issuer), "must be an http(s) URL"));
            }
            let audiences = kc.audiences.unwrap_or_default();
            let allowed_clients = kc.allowed_clients.unwrap_or_default();
            if audiences.is_empty() && allowed_clients.is_empty() {
                return Err(ConfigError::new(
                    "auth.keycloak.audiences",
                    None,
                    "set audiences and/or allowed_clients: a token for another client must not be accepted",
                ));
            }
            let algorithms = kc.algorithms.unwrap_or_else(|| vec!["RS256".into()]);
            for alg in &algorithms {
                if !matches!(
                    alg.as_str(),
                    "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA"
                ) {
                    return Err(ConfigError::new(
                        "auth.keycloak.algorithms",
                        Some(alg.clone()),
                        "only asymmetric algorithms are allowed (RS*, PS*, ES256, ES384, EdDSA)",
                    ));
                }
            }
            Some(KeycloakConfig {
                issuer: kc.issuer.trim_end_matches('/').to_string(),
                audiences,
                allowed_clients,
                user_claim: kc.user_claim.unwrap_or_else(|| "sub".into()),
                algorithms,
                leeway: duration("auth.keycloak.leeway", kc.leeway, Duration::from_secs(30))?,
                jwks_refresh_interval: duration(
                    "auth.keycloak.jwks_refresh_interval",
                    kc.jwks_refresh_interval,
                    Duration::from_secs(600),
                )?,
            })
        }
    };
    let signing_key = match raw.dev_tokens.signing_key {
        Some(key) if key.len() < 32 => {
            return Err(ConfigError::new(
                "auth.dev_tokens.signing_key",
                Some(REDACTED.into()),
                "must be at least 32 characters",
            ))
        }
        other => other.map(Secret::new),
    };
    let key_cache_ttl = duration("auth.key_cache_ttl", raw.key_cache_ttl.clone(), Duration::from_secs(5))?;
    if key_cache_ttl > Duration::from_secs(60) {
        return Err(ConfigError::new(
            "auth.key_cache_ttl",
            raw.key_cache_ttl,
            "at most 60s: it is how long a revoked key keeps working",
        ));
    }
    Ok(AuthConfig {
        key_cache_ttl,
        keycloak,
        dev_tokens: DevTokensConfig {
            enabled: raw.dev_tokens.enabled.unwrap_or(false),
            ttl: duration("auth.dev_tokens.ttl", raw.dev_tokens.ttl, Duration::from_secs(3600))?,
            signing_key,
        },
    })
}

fn validate_flush(raw: RawFlush) -> Result<FlushConfig, ConfigError> {
    let codec = match raw.codec {
        None => crate::segment::Codec::Json,
        Some(text) => text.parse().map_err(|e: String| ConfigError::new("flush.codec", Some(text.clone()), e))?,
    };
    if let Some(failpoint) = &raw.failpoint {
        if failpoint != "after-put" {
            return Err(ConfigError::new(
                "flush.failpoint",
                Some(failpoint.clone()),
                "the only failpoint is `after-put`",
            ));
        }
    }
    let interval = duration("flush.interval", raw.interval, Duration::from_secs(10))?;
    if interval.is_zero() {
        return Err(ConfigError::new("flush.interval", Some("0s".into()), "must be longer than zero"));
    }
    Ok(FlushConfig {
        interval,
        max_bytes: raw.max_bytes.unwrap_or(1024 * 1024).max(1),
        max_age: duration("flush.max_age", raw.max_age, Duration::from_secs(15 * 60))?,
        hot_window: raw.hot_window.unwrap_or(20),
        codec,
        failpoint: raw.failpoint,
    })
}

fn validate_limits(raw: RawLimits) -> Result<LimitsConfig, ConfigError> {
    let positive = |key: &str, value: f64| {
        if value > 0.0 && value.is_finite() {
            Ok(value)
        } else {
            Err(ConfigError::new(key, Some(value.to_string()), "must be a positive number"))
        }
    };
    let at_least_one = |key: &str, value: u64| {
        if value >= 1 {
            Ok(value)
        } else {
            Err(ConfigError::new(key, Some(value.to_string()), "must be at least 1"))
        }
    };
    Ok(LimitsConfig {
        max_payload_bytes: at_least_one("limits.max_payload_bytes", raw.max_payload_bytes.unwrap_or(32 * 1024) as u64)?
            as usize,
        max_batch: at_least_one("limits.max_batch", raw.max_batch.unwrap_or(100) as u64)? as usize,
        idempotency_ttl: duration("limits.idempotency_ttl", raw.idempotency_ttl, Duration::from_secs(24 * 3600))?,
        user_rate: positive("limits.user_rate", raw.user_rate.unwrap_or(10.0))?,
        user_burst: at_least_one("limits.user_burst", u64::from(raw.user_burst.unwrap_or(20)))? as u32,
        key_rate: positive("limits.key_rate", raw.key_rate.unwrap_or(1000.0))?,
        key_burst: at_least_one("limits.key_burst", u64::from(raw.key_burst.unwrap_or(2000)))? as u32,
    })
}

fn validate_s3(s3: RawS3) -> Result<S3Config, ConfigError> {
    let endpoint = match s3.endpoint {
        None => None,
        Some(text) => {
            let url = url::Url::parse(&text)
                .map_err(|e| ConfigError::new("s3.endpoint", Some(text.clone()), format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError::new(
                    "s3.endpoint",
                    Some(text),
                    "must be an http:// or https:// URL with a host",
                ));
            }
            Some(text.trim_end_matches('/').to_string())
        }
    };
    if !valid_bucket_name(&s3.bucket) {
        return Err(ConfigError::new(
            "s3.bucket",
            Some(s3.bucket),
            "not a valid bucket name (3-63 characters: lowercase letters, digits, `-`, `.`)",
        ));
    }
    if s3.access_key_id.is_empty() {
        return Err(ConfigError::new("s3.access_key_id", Some(String::new()), "must not be empty"));
    }
    if s3.secret_access_key.is_empty() {
        return Err(ConfigError::new("s3.secret_access_key", Some(String::new()), "must not be empty"));
    }
    Ok(S3Config {
        endpoint,
        bucket: s3.bucket,
        region: s3.region.unwrap_or_else(|| "us-east-1".into()),
        access_key_id: s3.access_key_id,
        secret_access_key: Secret::new(s3.secret_access_key),
        path_style: s3.path_style.unwrap_or(true),
    })
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn service_url(key: &str, text: &str, schemes: &[&str]) -> Result<SecretUrl, ConfigError> {
    let shown = || Some(text.to_string());
    let url = url::Url::parse(text).map_err(|e| ConfigError::new(key, shown(), format!("not a URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::new(
            key,
            shown(),
            format!("unsupported scheme `{}`; expected {}", url.scheme(), schemes.join(" or ")),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(key, shown(), "the URL has no host"));
    }
    Ok(SecretUrl(url))
}

fn duration(key: &str, text: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text.trim())
            .map_err(|e| ConfigError::new(key, Some(text.clone()), format!("not a duration like `10s` or `5m`: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_never_show_their_userinfo() {
        for (text, shown) in [
            ("postgres:/msgd:pw@db/msgd", "postgres:<redacted>"),
            ("redis:/u:pw@h", "redis:<redacted>"),
            ("redisB//m1s:pw@h:6379tp://x", "<redacted>"),
            ("mailto:user:pw@example.com", "mailto:<redacted>"),
            ("pos2gres://is://m2s:pw@h:6379", "pos2gres://is/<redacted>"),
            ("redis://h/db?x=/u:pw@h&db=1", "redis://h/db?x=<redacted>&db=1"),
            ("redis://h?/u:pw@h/k=v", "redis://h?<redacted>"),
        ] {
            assert_eq!(redact_url(text), shown, "{text}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_embedded() {
        let config = from_toml("", env(&[])).unwrap();
        assert_eq!(config.backend.name(), "embedded");
        assert_eq!(config.retention.days, 30);
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_file_and_parses_numbers() {
        let config = from_toml("[retention]\ndays = 7\n", env(&[("MSGD_RETENTION__DAYS", "14")])).unwrap();
        assert_eq!(config.retention.days, 14);
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = from_toml("", env(&[("MSGD_HTTP__LISTN", "x")])).unwrap_err();
        assert_eq!(err.key, "http.listn");
        assert_eq!(err.env_var.as_deref(), Some("MSGD_HTTP__LISTN"));
    }

    #[test]
    fn secret_values_never_appear_in_errors() {
        let text = "[postgres]\nurl = \"postgres://u:hunter2@h/db\"\n[redis]\nurl = \"redis://:hunter2@h\"\n\
                    [s3]\nbucket = \"b-1\"\naccess_key_id = \"a\"\nsecret_access_key = 12345\n";
        let err = from_toml(text, env(&[])).unwrap_err();
        assert_eq!(err.key, "s3.secret_access_key");
        assert!(!err.to_string().contains("12345"), "{err}");
        let err = from_toml("[postgres]\nurl = \"mysql://u:hunter2@h/db\"\n", env(&[])).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // A mistyped secret key is unknown, and its value still never shows.
        let err = from_toml("", env(&[("MSGD_HTTP__ADMIN_PASSWORD", "hunter2")])).unwrap_err();
        assert_eq!(err.key, "http.admin_password");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn urls_lose_userinfo_and_secret_parameters_everywhere() {
        let cases = [
            ("postgres://u:hunter2@db:5432/msgd", "postgres://<redacted>@db:5432/msgd"),
            ("postgres://db/msgd?user=u&password=hunter2", "postgres://db/msgd?user=u&password=<redacted>"),
            (
                "postgres://db/msgd?sslmode=require&SSLPassword=hunter2",
                "postgres://db/msgd?sslmode=require&SSLPassword=<redacted>",
            ),
            ("redis://:hunter2@cache:6379", "redis://<redacted>@cache:6379"),
            ("https://hunter2@sso.example.com/realms/a", "https://<redacted>@sso.example.com/realms/a"),
            (
                "https://s3.example.com/b?X-Amz-Credential=AKIA%2Fhunter2&X-Amz-Signature=hunter2&x=1",
                "https://s3.example.com/b?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&x=1",
            ),
            (
                "http://h/?access_token=hunter2&PWD=hunter2&pass=hunter2",
                "http://h/?access_token=<redacted>&PWD=<redacted>&pass=<redacted>",
            ),
            ("http://h/p#access_token=hunter2", "http://h/p#<redacted>"),
            ("postgres//u:hunter2@nohost", "<redacted>"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
        }
        let text = "error sending request for url (https://u:hunter2@sso/x?token=hunter2): refused; é://a:hunter2@b";
        let shown = redact_text(text);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.starts_with("error sending request for url (https://<redacted>@sso/x?token=<redacted>)"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_sections_and_url_keys_never_echo_secrets() {
        // A section this release does not know is named, its contents never shown.
        let err =
            from_toml("[backup]\nurl = \"s3://AKIA:hunter2@b\"\npassphrase = \"hunter2\"\n", env(&[])).unwrap_err();
        assert_eq!(err.key, "backup");
        assert!(err.value.is_none() && !err.to_string().contains("hunter2"), "{err}");
        let err = from_toml("[http]\nlisten_token = \"hunter2\"\n", env(&[])).unwrap_err();
        assert_eq!(err.key, "http.listen_token");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // URL-valued keys other than postgres.url and redis.url.
        let err = from_toml("[auth.keycloak]\nissuer = \"ftp://u:hunter2@sso\"\naudiences = [\"a\"]\n", env(&[]))
            .unwrap_err();
        assert_eq!(err.key, "auth.keycloak.issuer");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let services = "[postgres]\nurl = \"postgres://h/db?password=hunter2\"\n[redis]\nurl = \"redis://h\"\n\
                        [s3]\nbucket = \"b-1\"\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\n\
                        endpoint = \"ftp://a:hunter2@minio\"\n";
        let err = from_toml(services, env(&[])).unwrap_err();
        assert_eq!(err.key, "s3.endpoint");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let config = from_toml(&services.replace("ftp://", "http://"), env(&[])).unwrap();
        let view = config.effective_view().to_string();
        assert!(!view.contains("hunter2") && view.contains("minio"), "{view}");
    }
}
