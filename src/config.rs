//! The one typed, validated configuration every subcommand shares (README, "Configuration").
//!
//! A TOML file (optional) is merged with `MSGD_<SECTION>__<KEY>` environment
//! overrides, deserialized strictly (unknown keys are errors) and validated once
//! into [`Config`]. Errors name the key, the offending value (secrets redacted)
//! and the reason. This module never reads the process environment itself: the
//! CLI passes the variables in, so tests can drive it with any set.
//!
//! Each section is declared once: serde reads the file straight into the same
//! structs the rest of msgd uses, an absent key taking its section's `Default`,
//! and a value that needs parsing (a duration, an address, a URL) is parsed as
//! it is read. What types cannot say is checked afterwards, in one pass.

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
const SECRET_KEYS: &[&str] =
    &["s3.secret_access_key", "backup.secret_access_key", "auth.dev_tokens.signing_key", "auth.operator_token"];
/// Keys a release replaced, and what replaced them (named in the refusal).
const RENAMED: &[(&str, &str)] = &[
    ("retention.days", "`retention.period`, a duration such as \"30d\""),
    ("log", "the `[observability.logging]` section (`log.access_sample_rate` is `sampling.per_component.access`)"),
];
/// Keys holding URLs, shown through [`redact_url`] even when they fail to parse.
const URL_KEYS: &[&str] = &["postgres.url", "redis.url", "s3.endpoint", "backup.endpoint", "auth.keycloak.issuer"];

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

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
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
    /// Where `msgd backup-r2` writes backups; `None` when `[backup]` is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupConfig>,
    pub observability: ObservabilityConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub flush: FlushConfig,
    pub history: HistoryConfig,
    pub ws: WsConfig,
    pub attachments: AttachmentsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Memory for decoded segment blocks, shared by history reads and catch-up.
    #[serde(deserialize_with = "lenient")]
    pub block_cache_bytes: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { block_cache_bytes: 64 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// The server pings each connection this often.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Frames queued for one connection before it counts as a slow consumer.
    #[serde(deserialize_with = "lenient")]
    pub send_queue: usize,
    #[serde(deserialize_with = "lenient")]
    pub max_subscriptions: usize,
    /// Open WebSockets per user (app + user id) at most.
    #[serde(deserialize_with = "lenient")]
    pub max_per_user: usize,
    /// Open WebSockets per client IP address at most; 0 turns the limit off
    /// (behind a reverse proxy every client shares the proxy's address).
    #[serde(deserialize_with = "lenient")]
    pub max_per_ip: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            heartbeat_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            send_queue: 256,
            max_subscriptions: 100,
            max_per_user: 32,
            max_per_ip: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// How often `serve` runs a flush tick.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// A conversation is flushed once this many unflushed bytes accumulate ...
    #[serde(deserialize_with = "lenient")]
    pub max_bytes: u64,
    /// ... or once its oldest unflushed message is this old.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// Messages kept in the tail after they are in a segment (recent reads
    /// and reconnect catch-up stay in the tail).
    #[serde(deserialize_with = "lenient")]
    pub hot_window: u64,
    #[serde(deserialize_with = "codec")]
    pub codec: crate::segment::Codec,
    /// The most raw record bytes in one block: a history read fetches and
    /// decompresses one block, so this bounds a cold read.
    #[serde(deserialize_with = "lenient")]
    pub block_bytes: u64,
    /// Compaction merges the segments an app's flushes wrote within each
    /// window of this length into one (fewer, larger blocks); `0s` turns it off.
    #[serde(with = "duration")]
    pub compact_window: Duration,
    /// How often the consistency check of every conversation runs (one
    /// instance at a time), the first time one interval after start.
    #[serde(with = "duration")]
    pub check_interval: Duration,
    /// Testing only: `after-put` stops a flush (or a compaction) between the
    /// object PUT and the index commit, to prove crash recovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failpoint: Option<String>,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            interval: Duration::from_secs(10),
            max_bytes: 1024 * 1024,
            max_age: Duration::from_secs(15 * 60),
            hot_window: 20,
            codec: crate::segment::Codec::Json,
            block_bytes: 256 * 1024,
            compact_window: Duration::from_secs(6 * 3600),
            check_interval: Duration::from_secs(3600),
            failpoint: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Validated API keys are cached this long per instance, so revocation
    /// takes effect everywhere within it.
    #[serde(serialize_with = "duration::serialize", deserialize_with = "key_cache_ttl")]
    pub key_cache_ttl: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keycloak: Option<KeycloakConfig>,
    pub dev_tokens: DevTokensConfig,
    /// The bearer token of the admin HTTP API (`/v1/admin`, README "Admin
    /// API"); the API is off (404) while this is unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token: Option<Secret>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_cache_ttl: Duration::from_secs(5),
            keycloak: None,
            dev_tokens: DevTokensConfig::default(),
            operator_token: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakConfig {
    /// `https://keycloak.example.com/realms/REALM`; the JWKS is discovered from it.
    #[serde(serialize_with = "ser_url", deserialize_with = "issuer")]
    pub issuer: String,
    /// Accepted `aud` values (any one must be present); empty = not checked.
    #[serde(default, deserialize_with = "string_list")]
    pub audiences: Vec<String>,
    /// Accepted `azp` (client) values; empty = not checked. At least one of
    /// audiences and allowed_clients must be set.
    #[serde(default, deserialize_with = "string_list")]
    pub allowed_clients: Vec<String>,
    /// The claim holding the user id.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default = "default_algorithms", deserialize_with = "string_list")]
    pub algorithms: Vec<String>,
    #[serde(default = "seconds::<30>", with = "duration")]
    pub leeway: Duration,
    /// How often the JWKS is refreshed in the background.
    #[serde(default = "seconds::<600>", with = "duration")]
    pub jwks_refresh_interval: Duration,
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevTokensConfig {
    #[serde(deserialize_with = "lenient")]
    pub enabled: bool,
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// HMAC key for dev tokens; generated into the data dir when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<Secret>,
}

impl Default for DevTokensConfig {
    fn default() -> Self {
        DevTokensConfig { enabled: false, ttl: Duration::from_secs(3600), signing_key: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(deserialize_with = "lenient")]
    pub max_payload_bytes: usize,
    #[serde(deserialize_with = "lenient")]
    pub max_batch: usize,
    #[serde(with = "duration")]
    pub idempotency_ttl: Duration,
    /// Sustained messages per second per user, and the burst above it.
    #[serde(deserialize_with = "lenient")]
    pub user_rate: f64,
    #[serde(deserialize_with = "lenient")]
    pub user_burst: u32,
    /// Sustained messages per second per API key, and the burst above it.
    #[serde(deserialize_with = "lenient")]
    pub key_rate: f64,
    #[serde(deserialize_with = "lenient")]
    pub key_burst: u32,
    /// The largest attachment, in bytes.
    #[serde(deserialize_with = "lenient")]
    pub max_attachment_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 32 * 1024,
            max_batch: 100,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            user_rate: 10.0,
            user_burst: 20,
            key_rate: 1000.0,
            key_burst: 2000,
            max_attachment_bytes: 25 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// How long `serve` waits for in-flight work after SIGTERM before exiting.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// A connection must deliver a complete request head within this long of
    /// opening, and of its previous response (so it is also the keep-alive
    /// idle timeout): slow-header trickles and silent sockets are closed.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A request (body included) must be answered within this long, else 408.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Open connections (HTTP and WebSocket) at most; beyond it new ones get a 503.
    /// Lowered at start to fit the process's file limit.
    #[serde(deserialize_with = "lenient")]
    pub max_connections: usize,
    /// Serve the demo chat page at `/demo` (README, "Demo page"): for
    /// development; off by default.
    #[serde(deserialize_with = "lenient")]
    pub demo: bool,
    /// Browser origins (`https://app.example.com`) allowed to call the API
    /// from another origin (CORS; README, "Browsers on another origin"), or
    /// `*` for any; empty (the default): none.
    #[serde(deserialize_with = "string_list")]
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            demo: false,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Backend {
    Embedded,
    /// Boxed: the services settings are large, the embedded variant empty.
    Services(Box<ServicesConfig>),
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    #[serde(deserialize_with = "postgres_url")]
    pub url: SecretUrl,
    #[serde(default = "default_pool_size", deserialize_with = "lenient")]
    pub max_connections: u32,
    #[serde(default = "seconds::<5>", with = "duration")]
    pub connect_timeout: Duration,
}

fn default_pool_size() -> u32 {
    10
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(deserialize_with = "redis_url")]
    pub url: SecretUrl,
    /// Prefix of every key msgd writes, so several deployments (or tests) can
    /// share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Redis memory for the filter that says which idempotency keys may be
    /// among the claims released after their messages were flushed (three
    /// generations of half the idempotency window each). Bigger means fewer
    /// needless lookups of the durable record: 32 MiB keeps them near 1% of
    /// new keys at 167 keyed messages/s and a 24 h window.
    #[serde(default = "default_idempotency_filter_bytes", deserialize_with = "lenient")]
    pub idempotency_filter_bytes: u64,
}

fn default_idempotency_filter_bytes() -> u64 {
    32 << 20
}

fn default_key_prefix() -> String {
    "msgd".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Custom endpoint (MinIO, R2); `None` means AWS for the region.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_optional_url",
        deserialize_with = "endpoint"
    )]
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO.
    #[serde(default = "default_path_style", deserialize_with = "lenient")]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_path_style() -> bool {
    true
}

/// Files sent in conversations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// Content types an upload may declare: exact (`image/png`), a family
    /// (`image/*`) or `*/*` for any.
    #[serde(deserialize_with = "string_list")]
    pub allowed_types: Vec<String>,
    /// Content types refused even when allowed: by default, executables.
    #[serde(deserialize_with = "string_list")]
    pub denied_types: Vec<String>,
    /// How long an upload target stays valid.
    #[serde(with = "duration")]
    pub upload_ttl: Duration,
    /// An upload no message referenced within this is deleted by retention.
    #[serde(with = "duration")]
    pub orphan_ttl: Duration,
    /// Upload targets per second per user, and the burst above it.
    #[serde(deserialize_with = "lenient")]
    pub upload_rate: f64,
    #[serde(deserialize_with = "lenient")]
    pub upload_burst: u32,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            allowed_types: vec!["*/*".into()],
            denied_types: [
                "application/x-msdownload",
                "application/x-msdos-program",
                "application/x-dosexec",
                "application/vnd.microsoft.portable-executable",
                "application/x-executable",
                "application/x-elf",
                "application/x-mach-binary",
                "application/x-sh",
                "application/x-csh",
                "application/x-bat",
                "application/x-msi",
                "application/java-archive",
                "application/vnd.android.package-archive",
            ]
            .map(String::from)
            .to_vec(),
            upload_ttl: Duration::from_secs(15 * 60),
            orphan_ttl: Duration::from_secs(24 * 3600),
            upload_rate: 1.0,
            upload_burst: 20,
        }
    }
}

impl AttachmentsConfig {
    /// Whether an upload may declare `content_type` (compared without parameters, case-insensitively).
    pub fn allows(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let matches = |pattern: &String| {
            let pattern = pattern.to_ascii_lowercase();
            pattern == "*/*"
                || pattern == essence
                || pattern.strip_suffix("/*").is_some_and(|family| essence.split('/').next() == Some(family))
        };
        self.allowed_types.iter().any(matches) && !self.denied_types.iter().any(matches)
    }
}

/// A backup target: any S3 endpoint (Cloudflare R2 by design), and what to keep there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    #[serde(serialize_with = "ser_url", deserialize_with = "required_endpoint")]
    pub endpoint: String,
    pub bucket: String,
    /// `auto`, as R2 wants.
    #[serde(default = "default_backup_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Every backup key starts with this.
    #[serde(default = "default_backup_prefix")]
    pub prefix: String,
    /// Daily backups kept by `prune`.
    #[serde(default = "default_backup_keep", deserialize_with = "lenient")]
    pub keep: u32,
    /// Objects above this size are uploaded in parts of exactly this size
    /// (R2 wants equal parts but the last), 5 MiB to 5 GiB.
    #[serde(default = "default_part_size", deserialize_with = "lenient")]
    pub multipart_part_size: u64,
    /// Path-style addressing (`endpoint/bucket/key`).
    #[serde(default = "default_path_style", deserialize_with = "lenient")]
    pub path_style: bool,
    /// Testing only: `after-first-copy` stops a backup run after it copied one object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failpoint: Option<String>,
}

/// The keys a `[backup]` section cannot do without.
const BACKUP_REQUIRED: [&str; 4] = ["endpoint", "bucket", "access_key_id", "secret_access_key"];

fn default_backup_region() -> String {
    "auto".into()
}

fn default_backup_prefix() -> String {
    "msgd-backups/".into()
}

fn default_backup_keep() -> u32 {
    7
}

fn default_part_size() -> u64 {
    16 * 1024 * 1024
}

fn required_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parse_text(d, |text| http_url(text, "must be an http:// or https:// URL with a host"))
}

impl BackupConfig {
    /// The target as an object store connection.
    pub fn target(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            path_style: self.path_style,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How long messages are kept: older ones are never returned, and the
    /// retention worker deletes them physically (at least a minute).
    #[serde(with = "duration")]
    pub period: Duration,
    /// How often `serve` runs retention.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Segments deleted per step (objects, then their index rows).
    #[serde(deserialize_with = "lenient")]
    pub batch: usize,
    /// Testing only: `after-objects` stops a run between deleting a batch's
    /// objects and deleting its index rows; `after-rows` right after the rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failpoint: Option<String>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            period: Duration::from_secs(30 * 86_400),
            interval: Duration::from_secs(3600),
            batch: 100,
            failpoint: None,
        }
    }
}

impl RetentionConfig {
    /// The period in milliseconds.
    pub fn period_ms(&self) -> i64 {
        self.period.as_millis().min(i64::MAX as u128) as i64
    }
}

/// `[observability]`: today its `logging` subsection (metrics need no settings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    pub logging: LoggingConfig,
}

/// `[observability.logging]`: what msgd logs and how (README, "Logging"). The
/// whole section is re-read on SIGHUP; everything else needs a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A level (`info`, `debug`, ...) or tracing filter directives (`info,msgd::flush=debug`).
    pub level: String,
    #[serde(deserialize_with = "log_format")]
    pub format: LogFormat,
    /// One log line per HTTP request (component `access`: method, route template, status, duration, app id).
    #[serde(deserialize_with = "lenient")]
    pub access: bool,
    /// When not empty, lines below `info` come only from these components (warnings always pass).
    #[serde(deserialize_with = "string_list")]
    pub components: Vec<String>,
    /// When not empty, worker lines below `info` come only from these workers.
    #[serde(deserialize_with = "string_list")]
    pub workers: Vec<String>,
    /// Adds `error.stack` (the error's whole cause chain) to error lines.
    #[serde(deserialize_with = "lenient")]
    pub include_stacktraces: bool,
    /// Field names whose values every line shows as `<redacted>` (case-insensitive).
    #[serde(deserialize_with = "string_list")]
    pub redact_fields: Vec<String>,
    pub segment_flush: SegmentFlushLogging,
    pub ticker: TickerLogging,
    pub sampling: SamplingConfig,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Json,
            access: false,
            components: Vec::new(),
            workers: Vec::new(),
            include_stacktraces: false,
            redact_fields: ["authorization", "cookie", "password", "secret", "token", "api_key"]
                .map(String::from)
                .to_vec(),
            segment_flush: SegmentFlushLogging::default(),
            ticker: TickerLogging::default(),
            sampling: SamplingConfig::default(),
        }
    }
}

/// `[observability.logging.segment_flush]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentFlushLogging {
    /// The flush's info and debug lines (component `segment-flush`); warnings and errors always show.
    #[serde(deserialize_with = "lenient")]
    pub enabled: bool,
    /// One line per flush stage (`stage`: buffer-snapshot, encode, object-put, index-write, trim).
    #[serde(deserialize_with = "lenient")]
    pub stage_logs: bool,
}

impl Default for SegmentFlushLogging {
    fn default() -> Self {
        SegmentFlushLogging { enabled: true, stage_logs: true }
    }
}

/// `[observability.logging.ticker]`: the worker runner's own lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TickerLogging {
    /// Per-tick lines (`tick start`, `tick complete`, at debug) and the periodic summary.
    #[serde(deserialize_with = "lenient")]
    pub enabled: bool,
    /// How often each worker logs a `worker ticking` summary (ticks, failures, skipped, last and next tick).
    #[serde(with = "duration")]
    pub tick_log_interval: Duration,
}

impl Default for TickerLogging {
    fn default() -> Self {
        TickerLogging { enabled: true, tick_log_interval: Duration::from_secs(300) }
    }
}

/// `[observability.logging.sampling]`: keeps a share of the lines below
/// `warn`, per component; kept lines say `sampled` and `sample-rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    #[serde(deserialize_with = "lenient")]
    pub enabled: bool,
    /// The share kept (0 < rate ≤ 1) of a component not in `per_component`.
    #[serde(deserialize_with = "lenient")]
    pub default_rate: f64,
    /// Rates by component, e.g. `{ access = 0.01 }`.
    #[serde(deserialize_with = "rate_map")]
    pub per_component: BTreeMap<String, f64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { enabled: false, default_rate: 1.0, per_component: BTreeMap::new() }
    }
}

impl SamplingConfig {
    /// The share of `component`'s lines below `warn` that are kept.
    pub fn rate(&self, component: &str) -> f64 {
        match self.enabled {
            true => self.per_component.get(component).copied().unwrap_or(self.default_rate),
            false => 1.0,
        }
    }
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

/// The file's own layout, which differs from [`Config`] in one place: the
/// services sections stand at the top level, where `Config` holds them as
/// its [`Backend`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    #[serde(default = "default_data_dir", deserialize_with = "path")]
    data_dir: PathBuf,
    http: HttpConfig,
    postgres: Option<PostgresConfig>,
    redis: Option<RedisConfig>,
    s3: Option<S3Config>,
    retention: RetentionConfig,
    backup: Option<BackupConfig>,
    observability: ObservabilityConfig,
    auth: AuthConfig,
    limits: LimitsConfig,
    flush: FlushConfig,
    history: HistoryConfig,
    ws: WsConfig,
    attachments: AttachmentsConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./msgd-data")
}

impl From<ConfigFile> for Config {
    fn from(file: ConfigFile) -> Config {
        let backend = match (file.postgres, file.redis, file.s3) {
            (None, None, None) => Backend::Embedded,
            (Some(postgres), Some(redis), Some(s3)) => {
                Backend::Services(Box::new(ServicesConfig { postgres, redis, s3 }))
            }
            _ => unreachable!("a partial services set is refused by check_services_set"),
        };
        Config {
            data_dir: file.data_dir,
            http: file.http,
            backend,
            retention: file.retention,
            backup: file.backup,
            observability: file.observability,
            auth: file.auth,
            limits: file.limits,
            flush: file.flush,
            history: file.history,
            ws: file.ws,
            attachments: file.attachments,
        }
    }
}

// ---------------------------------------------------------------------------
// Reading values: each field's text (environment overrides are always text)
// becomes its type here, and a refusal's message is the reason shown.

/// Durations as people write them (`10s`, `5m`, `1h 30m`), read and shown.
mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// How a refused duration's reason starts.
    pub const NOT_A_DURATION: &str = "not a duration like `10s` or `5m`";

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_text(d, parse)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|e| format!("{NOT_A_DURATION}: {e}"))
    }
}

/// `seconds::<N>` as a serde default: N seconds.
fn seconds<const N: u64>() -> Duration {
    Duration::from_secs(N)
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

/// A string value turned into its field's type by `parse`, whose error is the
/// reason the value is refused.
fn parse_text<'de, D, T>(d: D, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Accepts a typed TOML value or a string (environment overrides are always
/// strings), parsing the latter with `FromStr`.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
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
    match Either::<T>::deserialize(d) {
        Ok(Either::Typed(v)) => Ok(v),
        Ok(Either::Text(s)) => {
            s.trim().parse().map_err(|e| serde::de::Error::custom(format!("cannot parse {s:?}: {e}")))
        }
        Err(_) => Err(serde::de::Error::custom(format!(
            "expected a {}",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("value")
        ))),
    }
}

/// A list of strings, as a TOML array or (from the environment) a
/// comma-separated string.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d).map_err(|_| serde::de::Error::custom("expected a list of strings"))? {
        Either::List(items) => items,
        Either::Text(text) => text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}

/// A map of names to numbers; from the environment each number is text.
fn rate_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    #[derive(Deserialize)]
    struct Rate(#[serde(deserialize_with = "lenient")] f64);
    let map = BTreeMap::<String, Rate>::deserialize(d)?;
    Ok(map.into_iter().map(|(name, Rate(rate))| (name, rate)).collect())
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    parse_text(d, |text| Ok(PathBuf::from(text)))
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_text(d, |text| text.parse().map_err(|e| format!("not a socket address (host:port): {e}")))
}

fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    parse_text(d, |text| match text {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        _ => Err("must be `json` or `text`".into()),
    })
}

fn codec<'de, D: Deserializer<'de>>(d: D) -> Result<crate::segment::Codec, D::Error> {
    parse_text(d, str::parse)
}

/// `auth.key_cache_ttl` is how long a revoked key keeps working, so it is
/// bounded where it is read: the refusal then shows the value as written.
fn key_cache_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_text(d, |text| match duration::parse(text)? {
        ttl if ttl > Duration::from_secs(60) => Err("at most 60s: it is how long a revoked key keeps working".into()),
        ttl => Ok(ttl),
    })
}

fn issuer<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parse_text(d, |text| http_url(text, "must be an http(s) URL"))
}

fn endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_text(d, |text| http_url(text, "must be an http:// or https:// URL with a host").map(Some))
}

/// An http(s) URL with a host, kept without its trailing `/`; `refusal` is
/// the reason for any other URL.
fn http_url(text: &str, refusal: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(refusal.into());
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn postgres_url<'de, D: Deserializer<'de>>(d: D) -> Result<SecretUrl, D::Error> {
    parse_text(d, |text| service_url(text, &["postgres", "postgresql"]))
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<SecretUrl, D::Error> {
    parse_text(d, |text| service_url(text, &["redis", "rediss"]))
}

fn service_url(text: &str, schemes: &[&str]) -> Result<SecretUrl, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("unsupported scheme `{}`; expected {}", url.scheme(), schemes.join(" or ")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(SecretUrl(url))
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
    check_backup_set(&table)?;
    let merged = toml::Value::Table(table);
    serde_path_to_error::deserialize(merged.clone())
        .map_err(|e| refusal(&e, &merged))
        .map(|file: ConfigFile| Config::from(file))
        .and_then(|mut config| config.validate().map(|()| config))
        .map_err(|err| ConfigError { env_var: from_env.get(&err.key).cloned(), ..err })
}

/// The error for a value serde refused, named by its dotted key.
fn refusal(e: &serde_path_to_error::Error<toml::de::Error>, merged: &toml::Value) -> ConfigError {
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
    let renamed = RENAMED.iter().find(|(old, _)| unknown && key == *old).map(|(_, new)| format!("replaced by {new}"));
    let value = match lookup(merged, &key) {
        _ if missing.is_some() || unknown => None,
        Some(toml::Value::String(text)) => Some(text.clone()),
        // Read as a string by a field that wants one: shown as written.
        Some(toml::Value::Datetime(at)) => Some(at.to_string()),
        Some(toml::Value::Table(_)) | None => None,
        Some(toml::Value::Array(items)) if items.iter().any(|item| item.is_table()) => None,
        Some(other) => Some(other.to_string()),
    };
    // serde's own messages may quote the value (`invalid type: string "…"`),
    // so under a key named like a secret they give way to a plain reason. A
    // duration's reason is msgd's own: `auth.dev_tokens.ttl` keeps it.
    let reason = if missing.is_some() {
        "required but missing".to_string()
    } else if let Some(renamed) = renamed {
        renamed
    } else if is_secret(&key) && !unknown && !message.starts_with(duration::NOT_A_DURATION) {
        "invalid value".to_string()
    } else {
        message
    };
    ConfigError::new(&key, value, reason)
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

/// A `[backup]` section names its target whole: every missing key is named at once.
fn check_backup_set(table: &toml::Table) -> Result<(), ConfigError> {
    let Some(backup) = table.get("backup").and_then(toml::Value::as_table) else { return Ok(()) };
    let missing: Vec<String> =
        BACKUP_REQUIRED.iter().filter(|key| !backup.contains_key(**key)).map(|key| format!("backup.{key}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ConfigError::new(
        &missing[0],
        None,
        format!("a [backup] section needs {}; missing: {}", BACKUP_REQUIRED.join(", "), missing.join(", ")),
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

// ---------------------------------------------------------------------------
// Validation: what the field types do not say. Each check refuses the first
// value it finds wrong; the few counts that have a floor are raised to it.

impl Config {
    fn validate(&mut self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", Some(String::new()), "must not be empty"));
        }
        self.http.validate()?;
        if let Backend::Services(services) = &self.backend {
            services.validate()?;
        }
        self.retention.validate()?;
        if let Some(backup) = &self.backup {
            backup.validate()?;
        }
        self.observability.logging.validate()?;
        self.auth.validate()?;
        self.limits.validate()?;
        self.flush.validate()?;
        self.attachments.validate()?;
        self.ws.raise_to_floors();
        Ok(())
    }
}

impl HttpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        more_than_zero("http.header_read_timeout", self.header_read_timeout, "must be more than zero")?;
        more_than_zero("http.request_timeout", self.request_timeout, "must be more than zero")?;
        for origin in &self.cors_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(ConfigError::new(
                    "http.cors_origins",
                    Some(origin.clone()),
                    "each must be `*` or an origin: scheme://host[:port], no path (https://app.example.com)",
                ));
            }
        }
        at_least_one("http.max_connections", self.max_connections)
    }
}

/// Whether `text` is exactly a serialized web origin: `http` or `https`,
/// a host, an optional port, nothing else (a browser's `Origin` header).
fn is_origin(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https") && url.host().is_some() && url.origin().ascii_serialization() == text
    })
}

impl ServicesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("postgres.max_connections", self.postgres.max_connections)?;
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "redis.key_prefix",
                Some(prefix.clone()),
                "must be non-empty and free of `{` and `}` (msgd adds its own hash tags)",
            ));
        }
        let filter = self.redis.idempotency_filter_bytes;
        if !(1 << 20..=4 << 30).contains(&filter) {
            return Err(ConfigError::new(
                "redis.idempotency_filter_bytes",
                Some(filter.to_string()),
                "must be between 1 MiB (1048576) and 4 GiB",
            ));
        }
        self.s3.validate()
    }
}

impl S3Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_as("s3")
    }

    /// The checks of an S3 target, its keys named under `section`.
    fn validate_as(&self, section: &str) -> Result<(), ConfigError> {
        if !valid_bucket_name(&self.bucket) {
            return Err(ConfigError::new(
                &format!("{section}.bucket"),
                Some(self.bucket.clone()),
                "not a valid bucket name (3-63 characters: lowercase letters, digits, `-`, `.`)",
            ));
        }
        if self.access_key_id.is_empty() {
            return Err(ConfigError::new(
                &format!("{section}.access_key_id"),
                Some(String::new()),
                "must not be empty",
            ));
        }
        if self.secret_access_key.expose().is_empty() {
            let key = format!("{section}.secret_access_key");
            return Err(ConfigError::new(&key, Some(String::new()), "must not be empty"));
        }
        Ok(())
    }
}

/// The multipart part sizes S3 and R2 accept.
const PART_SIZES: std::ops::RangeInclusive<u64> = 5 * 1024 * 1024..=5 * 1024 * 1024 * 1024;

impl BackupConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.target().validate_as("backup")?;
        if !PART_SIZES.contains(&self.multipart_part_size) {
            let value = Some(self.multipart_part_size.to_string());
            return Err(ConfigError::new("backup.multipart_part_size", value, "must be 5 MiB to 5 GiB (in bytes)"));
        }
        at_least_one("backup.keep", self.keep)?;
        if !self.prefix.is_empty() && !self.prefix.ends_with('/') || self.prefix.starts_with('/') {
            let reason = "must end with `/` and not start with one (or be empty)";
            return Err(ConfigError::new("backup.prefix", Some(self.prefix.clone()), reason));
        }
        if let Some(failpoint) = self.failpoint.as_ref().filter(|f| *f != "after-first-copy") {
            return Err(ConfigError::new(
                "backup.failpoint",
                Some(failpoint.clone()),
                "the only failpoint is `after-first-copy`",
            ));
        }
        Ok(())
    }
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

impl LoggingConfig {
    /// Also what a SIGHUP reload checks before it applies anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const KEY: &str = "observability.logging";
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.level) {
            return Err(ConfigError::new(
                &format!("{KEY}.level"),
                Some(self.level.clone()),
                format!("not a log filter: {e}"),
            ));
        }
        more_than_zero(
            &format!("{KEY}.ticker.tick_log_interval"),
            self.ticker.tick_log_interval,
            "must be more than zero",
        )?;
        let rates = std::iter::once(("default_rate".to_string(), self.sampling.default_rate))
            .chain(self.sampling.per_component.iter().map(|(name, rate)| (format!("per_component.{name}"), *rate)));
        for (name, rate) in rates {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(ConfigError::new(
                    &format!("{KEY}.sampling.{name}"),
                    Some(rate.to_string()),
                    "must be more than 0 and at most 1",
                ));
            }
        }
        Ok(())
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(keycloak) = &self.keycloak {
            keycloak.validate()?;
        }
        for (key, secret) in [
            ("auth.dev_tokens.signing_key", &self.dev_tokens.signing_key),
            ("auth.operator_token", &self.operator_token),
        ] {
            if secret.as_ref().is_some_and(|secret| secret.expose().len() < 32) {
                return Err(ConfigError::new(key, Some(REDACTED.into()), "must be at least 32 characters"));
            }
        }
        Ok(())
    }
}

impl KeycloakConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.audiences.is_empty() && self.allowed_clients.is_empty() {
            return Err(ConfigError::new(
                "auth.keycloak.audiences",
                None,
                "set audiences and/or allowed_clients: a token for another client must not be accepted",
            ));
        }
        let symmetric = |alg: &&String| {
            !matches!(
                alg.as_str(),
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA"
            )
        };
        match self.algorithms.iter().find(symmetric) {
            Some(alg) => Err(ConfigError::new(
                "auth.keycloak.algorithms",
                Some(alg.clone()),
                "only asymmetric algorithms are allowed (RS*, PS*, ES256, ES384, EdDSA)",
            )),
            None => Ok(()),
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("limits.max_payload_bytes", self.max_payload_bytes)?;
        at_least_one("limits.max_batch", self.max_batch)?;
        positive("limits.user_rate", self.user_rate)?;
        at_least_one("limits.user_burst", self.user_burst)?;
        positive("limits.key_rate", self.key_rate)?;
        at_least_one("limits.key_burst", self.key_burst)?;
        at_least_one("limits.max_attachment_bytes", self.max_attachment_bytes)
    }
}

impl AttachmentsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        more_than_zero("attachments.upload_ttl", self.upload_ttl, "must be longer than zero")?;
        more_than_zero("attachments.orphan_ttl", self.orphan_ttl, "must be longer than zero")?;
        positive("attachments.upload_rate", self.upload_rate)?;
        at_least_one("attachments.upload_burst", self.upload_burst)?;
        if let Some(bad) = self.allowed_types.iter().chain(&self.denied_types).find(|t| !t.contains('/')) {
            let reason = "content types look like `image/png`, `image/*` or `*/*`";
            return Err(ConfigError::new("attachments.allowed_types", Some(bad.clone()), reason));
        }
        Ok(())
    }
}

impl FlushConfig {
    fn validate(&mut self) -> Result<(), ConfigError> {
        if let Some(failpoint) =
            self.failpoint.as_ref().filter(|f| !["after-put", "compact-after-put"].contains(&f.as_str()))
        {
            return Err(ConfigError::new(
                "flush.failpoint",
                Some(failpoint.clone()),
                "the failpoints are `after-put` and `compact-after-put`",
            ));
        }
        more_than_zero("flush.interval", self.interval, "must be longer than zero")?;
        more_than_zero("flush.check_interval", self.check_interval, "must be longer than zero")?;
        self.max_bytes = self.max_bytes.max(1);
        if !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&self.block_bytes) {
            let reason = format!("must be between {MIN_BLOCK_BYTES} and {MAX_BLOCK_BYTES} bytes");
            return Err(ConfigError::new("flush.block_bytes", Some(self.block_bytes.to_string()), reason));
        }
        let window = self.compact_window;
        if !window.is_zero() && !(MIN_COMPACT_WINDOW..=MAX_COMPACT_WINDOW).contains(&window) {
            let shown = humantime::format_duration(window).to_string();
            return Err(ConfigError::new(
                "flush.compact_window",
                Some(shown),
                "must be `0s` (off) or between 10 minutes and 7 days",
            ));
        }
        Ok(())
    }
}

/// The bounds of `flush.block_bytes`: a block holds at least one ordinary
/// message, and a reader never decompresses more than a few MiB per block.
const MIN_BLOCK_BYTES: u64 = 4 * 1024;
const MAX_BLOCK_BYTES: u64 = 16 * 1024 * 1024;
/// The bounds of a non-zero `flush.compact_window`.
const MIN_COMPACT_WINDOW: Duration = Duration::from_secs(600);
const MAX_COMPACT_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// The shortest retention period: a test deployment with a period of
/// minutes behaves like production with days.
const MIN_RETENTION_PERIOD: Duration = Duration::from_secs(60);
/// The most segments one retention step deletes.
const MAX_RETENTION_BATCH: usize = 10_000;
/// The retention failpoints (testing only).
const RETENTION_FAILPOINTS: [&str; 2] = ["after-objects", "after-rows"];

impl RetentionConfig {
    fn validate(&mut self) -> Result<(), ConfigError> {
        if self.period < MIN_RETENTION_PERIOD {
            let shown = humantime::format_duration(self.period).to_string();
            return Err(ConfigError::new("retention.period", Some(shown), "must be at least 1m"));
        }
        more_than_zero("retention.interval", self.interval, "must be longer than zero")?;
        if !(1..=MAX_RETENTION_BATCH).contains(&self.batch) {
            let reason = format!("must be 1 to {MAX_RETENTION_BATCH}");
            return Err(ConfigError::new("retention.batch", Some(self.batch.to_string()), reason));
        }
        if let Some(failpoint) = self.failpoint.as_ref().filter(|f| !RETENTION_FAILPOINTS.contains(&f.as_str())) {
            return Err(ConfigError::new(
                "retention.failpoint",
                Some(failpoint.clone()),
                "the failpoints are `after-objects` and `after-rows`",
            ));
        }
        Ok(())
    }
}

impl WsConfig {
    /// A queue of fewer than 2 frames, or room for no subscription or
    /// connection, would stall every client: such values mean the least.
    fn raise_to_floors(&mut self) {
        self.send_queue = self.send_queue.max(2);
        self.max_subscriptions = self.max_subscriptions.max(1);
        self.max_per_user = self.max_per_user.max(1);
    }
}

fn at_least_one<N: Copy + PartialEq + From<u8> + fmt::Display>(key: &str, value: N) -> Result<(), ConfigError> {
    if value == N::from(0) {
        return Err(ConfigError::new(key, Some(value.to_string()), "must be at least 1"));
    }
    Ok(())
}

fn positive(key: &str, value: f64) -> Result<(), ConfigError> {
    if value > 0.0 && value.is_finite() {
        return Ok(());
    }
    Err(ConfigError::new(key, Some(value.to_string()), "must be a positive number"))
}

/// A zero duration is shown as `0s` whichever way it was written.
fn more_than_zero(key: &str, value: Duration, reason: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(key, Some("0s".into()), reason));
    }
    Ok(())
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
        assert_eq!(config.retention.period, Duration::from_secs(30 * 86_400));
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_file_and_parses_numbers() {
        let config = from_toml("[retention]\nbatch = 7\n", env(&[("MSGD_RETENTION__BATCH", "14")])).unwrap();
        assert_eq!(config.retention.batch, 14);
    }

    #[test]
    fn every_number_and_switch_can_come_from_the_environment() {
        // Environment values are strings: a numeric or boolean key without
        // `lenient` would refuse its own default from MSGD_*.
        let services = "[postgres]\nurl = \"postgres://h/db\"\n[redis]\nurl = \"redis://h\"\n\
                        [s3]\nbucket = \"b-1\"\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\n";
        fn leaves(path: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
            match value {
                serde_json::Value::Object(fields) => {
                    for (name, field) in fields {
                        let separator = if path == "MSGD" { "_" } else { "__" };
                        leaves(&format!("{path}{separator}{}", name.to_uppercase()), field, out);
                    }
                }
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => out.push((path.into(), value.to_string())),
                _ => {}
            }
        }
        let mut vars = Vec::new();
        leaves("MSGD", &from_toml(services, env(&[])).unwrap().effective_view(), &mut vars);
        assert!(vars.len() > 25, "{vars:?}");
        for (name, value) in vars {
            let parsed = from_toml(services, env(&[(&name, &value)]));
            assert!(parsed.is_ok(), "{name}={value}: {}", parsed.err().map(|e| e.to_string()).unwrap_or_default());
        }
    }

    #[test]
    fn a_backup_target_is_named_whole_and_its_secret_never_shown() {
        let err = from_toml("[backup]\nbucket = \"msgd-backups\"\n", env(&[])).unwrap_err();
        assert_eq!(err.key, "backup.endpoint");
        assert!(err.reason.contains("backup.access_key_id, backup.secret_access_key"), "{err}");
        let vars = env(&[
            ("MSGD_BACKUP__ENDPOINT", "https://acct.r2.cloudflarestorage.com"),
            ("MSGD_BACKUP__BUCKET", "msgd-backups"),
            ("MSGD_BACKUP__ACCESS_KEY_ID", "AKIA"),
            ("MSGD_BACKUP__SECRET_ACCESS_KEY", "r2-hunter2"),
        ]);
        let config = from_toml("", vars).unwrap();
        let backup = config.backup.as_ref().unwrap();
        assert_eq!((backup.region.as_str(), backup.prefix.as_str(), backup.keep), ("auto", "msgd-backups/", 7));
        assert_eq!(backup.multipart_part_size, 16 * 1024 * 1024);
        let view = config.effective_view().to_string();
        assert!(!view.contains("r2-hunter2") && view.contains("r2.cloudflarestorage.com"), "{view}");
        let err = from_toml(
            "[backup]\nendpoint = \"https://r2\"\nbucket = \"b-1\"\naccess_key_id = \"a\"\n\
                             secret_access_key = \"s\"\nmultipart_part_size = 1024\n",
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(err.key, "backup.multipart_part_size");
    }

    #[test]
    fn retention_is_a_period_of_a_minute_or_more() {
        let config = from_toml("[retention]\nperiod = \"75s\"\ninterval = \"5s\"\n", env(&[])).unwrap();
        assert_eq!((config.retention.period_ms(), config.retention.interval), (75_000, Duration::from_secs(5)));
        let config = from_toml("", env(&[("MSGD_RETENTION__PERIOD", "7d")])).unwrap();
        assert_eq!(config.retention.period, Duration::from_secs(7 * 86_400));
        let err = from_toml("[retention]\nperiod = \"59s\"\n", env(&[])).unwrap_err();
        assert_eq!((err.key.as_str(), err.reason.as_str()), ("retention.period", "must be at least 1m"));
        for (toml, key) in [("batch = 0", "retention.batch"), ("interval = \"0s\"", "retention.interval")] {
            let err = from_toml(&format!("[retention]\n{toml}\n"), env(&[])).unwrap_err();
            assert_eq!(err.key, key, "{toml}");
        }
        // The old key is refused with the name of the one that replaced it, from a file or the environment.
        let err = from_toml("[retention]\ndays = 30\n", env(&[])).unwrap_err();
        assert_eq!(err.key, "retention.days");
        assert!(err.reason.contains("retention.period"), "{err}");
        let err = from_toml("", env(&[("MSGD_RETENTION__DAYS", "30")])).unwrap_err();
        assert!(err.reason.contains("retention.period") && err.env_var.is_some(), "{err}");
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
            from_toml("[archive]\nurl = \"s3://AKIA:hunter2@b\"\npassphrase = \"hunter2\"\n", env(&[])).unwrap_err();
        assert_eq!(err.key, "archive");
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
        let backup = "[backup]\nbucket = \"b-1\"\naccess_key_id = \"a\"\nsecret_access_key = \"hunter2\"\n\
                      endpoint = \"ftp://a:hunter2@r2\"\n";
        let err = from_toml(backup, env(&[])).unwrap_err();
        assert_eq!(err.key, "backup.endpoint");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let config = from_toml(&services.replace("ftp://", "http://"), env(&[])).unwrap();
        let view = config.effective_view().to_string();
        assert!(!view.contains("hunter2") && view.contains("minio"), "{view}");
    }

    #[test]
    fn an_empty_file_means_the_documented_defaults() {
        let documented = "data_dir = \"./msgd-data\"\n\
            [http]\nlisten = \"127.0.0.1:8080\"\nshutdown_timeout = \"10s\"\nheader_read_timeout = \"10s\"\n\
            request_timeout = \"30s\"\nmax_connections = 10000\ndemo = false\ncors_origins = []\n\
            [retention]\nperiod = \"30days\"\ninterval = \"1h\"\nbatch = 100\n\
            [observability.logging]\nlevel = \"info\"\nformat = \"json\"\naccess = false\ncomponents = []\n\
            workers = []\ninclude_stacktraces = false\n\
            redact_fields = [\"authorization\", \"cookie\", \"password\", \"secret\", \"token\", \"api_key\"]\n\
            [observability.logging.segment_flush]\nenabled = true\nstage_logs = true\n\
            [observability.logging.ticker]\nenabled = true\ntick_log_interval = \"5m\"\n\
            [observability.logging.sampling]\nenabled = false\ndefault_rate = 1.0\nper_component = {}\n\
            [limits]\nmax_payload_bytes = 32768\nmax_batch = 100\nidempotency_ttl = \"24h\"\nuser_rate = 10\n\
            user_burst = 20\nkey_rate = 1000\nkey_burst = 2000\n\
            [flush]\ninterval = \"10s\"\nmax_bytes = 1048576\nmax_age = \"15m\"\nhot_window = 20\ncodec = \"json\"\n\
            block_bytes = 262144\ncompact_window = \"6h\"\ncheck_interval = \"1h\"\n\
            [history]\nblock_cache_bytes = 67108864\n\
            [ws]\nheartbeat_interval = \"25s\"\nidle_timeout = \"60s\"\nsend_queue = 256\nmax_subscriptions = 100\n\
            max_per_user = 32\nmax_per_ip = 1024\n\
            [auth]\nkey_cache_ttl = \"5s\"\n[auth.dev_tokens]\nenabled = false\nttl = \"1h\"\n";
        let defaults = from_toml("", env(&[])).unwrap().effective_view();
        assert_eq!(from_toml(documented, env(&[])).unwrap().effective_view(), defaults);
        let keycloak = "[auth.keycloak]\nissuer = \"https://sso/realms/a/\"\naudiences = \"account, api\"\n";
        let keycloak = from_toml(keycloak, env(&[])).unwrap().auth.keycloak.unwrap();
        assert_eq!(keycloak.issuer, "https://sso/realms/a");
        assert_eq!(keycloak.audiences, ["account", "api"]);
        assert_eq!((keycloak.user_claim.as_str(), keycloak.algorithms.as_slice()), ("sub", &["RS256".to_string()][..]));
        assert_eq!(
            (keycloak.leeway, keycloak.jwks_refresh_interval),
            (Duration::from_secs(30), Duration::from_secs(600))
        );
    }

    #[test]
    fn parsed_values_are_refused_naming_key_value_and_reason() {
        let err = from_toml("", env(&[("MSGD_WS__IDLE_TIMEOUT", "soon")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `ws.idle_timeout` = \"soon\" (from MSGD_WS__IDLE_TIMEOUT): \
             not a duration like `10s` or `5m`: expected number at 0"
        );
        // Named like a secret, so the value is hidden; the reason is msgd's own and stays.
        let err = from_toml("", env(&[("MSGD_AUTH__DEV_TOKENS__TTL", "soon")])).unwrap_err();
        assert_eq!(
            (err.value.as_deref(), err.reason.as_str()),
            (Some(REDACTED), "not a duration like `10s` or `5m`: expected number at 0")
        );
        // serde's reason may quote the value: under such a key it is replaced.
        let err = from_toml("", env(&[("MSGD_AUTH__DEV_TOKENS__ENABLED", "maybe")])).unwrap_err();
        assert_eq!((err.value.as_deref(), err.reason.as_str()), (Some(REDACTED), "invalid value"));
        // A bounded value is shown as written, a zero duration as `0s`.
        let err = from_toml("[auth]\nkey_cache_ttl = \"120s\"\n", env(&[])).unwrap_err();
        assert_eq!(err.value.as_deref(), Some("120s"));
        let err = from_toml("", env(&[("MSGD_HTTP__REQUEST_TIMEOUT", "0ms")])).unwrap_err();
        assert_eq!((err.value.as_deref(), err.reason.as_str()), (Some("0s"), "must be more than zero"));
        let err = from_toml("[http]\nlisten = 1979-05-27\n", env(&[])).unwrap_err();
        assert_eq!((err.key.as_str(), err.value.as_deref()), ("http.listen", Some("1979-05-27")));
    }

    #[test]
    fn counts_below_their_floor_are_raised_to_it() {
        let config = from_toml(
            "[ws]\nsend_queue = 0\nmax_subscriptions = 0\nmax_per_user = 0\n[flush]\nmax_bytes = 0\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!((config.ws.send_queue, config.ws.max_subscriptions, config.ws.max_per_user), (2, 1, 1));
        assert_eq!(config.flush.max_bytes, 1);
    }
}
