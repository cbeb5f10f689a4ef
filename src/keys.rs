//! Application API keys: format, issuing, rotation, revocation and
//! authentication (README, "HTTP API"). `msgd keys` and the admin HTTP API
//! (`/v1/admin`) both call these functions and show the same documents
//! ([`KeyInfo::document`], [`IssuedKey::document`]); nothing here prints or
//! parses arguments.
//!
//! A key reads `msgd_sk_<id><secret><check>`:
//! - `msgd_sk_` (server-secret: admin and write scopes) or `msgd_pk_`
//!   (publishable: read scope) says at a glance what leaked;
//! - `<id>` is 12 base62 characters, the public key id used for lookup;
//! - `<secret>` is 24 base62 characters (≈142 bits) from the OS CSPRNG;
//! - `<check>` is 6 base62 characters of CRC-32 over everything before it,
//!   so a mistyped key is refused without a database lookup.
//!
//! Only SHA-256(key) is stored; comparison is constant-time.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Code, Error};
use crate::store::{ApiKeyRow, AppRow, Metadata, StoreError};

const ID_LEN: usize = 12;
const SECRET_LEN: usize = 24;
const CHECK_LEN: usize = 6;
const BODY_LEN: usize = ID_LEN + SECRET_LEN + CHECK_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// How often `last_used_at` is written at most, per key.
const TOUCH_INTERVAL_MS: i64 = 60_000;
/// The longest app or key name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// The longest key lifetime and rotation grace period: ten years, far past
/// any sensible value and far from overflowing a millisecond timestamp.
pub const MAX_KEY_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Manages anything in its app and may act as the app without a user.
    Admin,
    /// Sends messages and creates conversations.
    Write,
    /// Reads.
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Write => "write",
            Scope::Read => "read",
        }
    }

    /// The visible prefix of keys with this scope.
    pub fn prefix(self) -> &'static str {
        match self {
            Scope::Admin | Scope::Write => "msgd_sk_",
            Scope::Read => "msgd_pk_",
        }
    }

    /// Whether a key of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        matches!(
            (self, needed),
            (Scope::Admin, _) | (Scope::Write, Scope::Write | Scope::Read) | (Scope::Read, Scope::Read)
        )
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Scope::Admin),
            "write" => Ok(Scope::Write),
            "read" => Ok(Scope::Read),
            other => Err(format!("unknown scope `{other}` (expected admin, write or read)")),
        }
    }
}

/// Why a presented key was refused, with the stable code clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("not an msgd API key")]
    Malformed,
    #[error("the key's checksum does not match (mistyped or truncated)")]
    BadChecksum,
    #[error("no such API key")]
    Unknown,
    #[error("the API key was revoked")]
    Revoked,
    #[error("the API key expired")]
    Expired,
}

impl KeyRejection {
    pub fn code(self) -> Code {
        match self {
            KeyRejection::Malformed | KeyRejection::BadChecksum | KeyRejection::Unknown => Code::InvalidApiKey,
            KeyRejection::Revoked => Code::KeyRevoked,
            KeyRejection::Expired => Code::KeyExpired,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Rejected(#[from] KeyRejection),
    #[error("no app with id `{0}`")]
    NoSuchApp(String),
    #[error("no API key with id `{0}`")]
    NoSuchKey(String),
    #[error("API key `{0}` is revoked")]
    KeyRevoked(String),
    #[error("key `{key}` was already rotated to `{successor}`; rotate that one")]
    AlreadyRotated { key: String, successor: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<KeyError> for Error {
    /// How the admin HTTP API answers each failure.
    fn from(err: KeyError) -> Error {
        let code = match err {
            KeyError::Store(e) => return e.into(),
            KeyError::Rejected(rejection) => rejection.code(),
            KeyError::NoSuchApp(_) | KeyError::NoSuchKey(_) => Code::NotFound,
            KeyError::KeyRevoked(_) | KeyError::AlreadyRotated { .. } => Code::KeyNotRotatable,
            KeyError::Invalid(_) => Code::InvalidRequest,
        };
        Error::new(code, err.to_string())
    }
}

/// A key just issued. `key` is the only time the secret exists outside the
/// caller's hands: show it once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// What may be shown about a key at any time: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub app_id: String,
    pub name: Option<String>,
    pub scope: Scope,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub rotated_to: Option<String>,
}

impl KeyInfo {
    /// `active`, `rotating` (replaced, in its grace period), `expired` or `revoked`, at `now`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else if self.rotated_to.is_some() {
            "rotating"
        } else {
            "active"
        }
    }

    /// The key as `msgd keys --json` and the admin API show it: its fields
    /// and its `status` at `now`.
    pub fn document(&self, now: i64) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("key info serializes");
        value["status"] = self.status(now).into();
        value
    }

    fn from_row(row: ApiKeyRow) -> Result<KeyInfo, StoreError> {
        let scope = row.scope.parse().map_err(|e| StoreError::Corrupt { dependency: "metadata", message: e })?;
        Ok(KeyInfo {
            id: row.id,
            app_id: row.app_id,
            name: row.name,
            scope,
            prefix: row.prefix,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
            rotated_to: row.rotated_to,
        })
    }
}

impl IssuedKey {
    /// A newly issued key as a document, one shape wherever a key is issued:
    /// its [`KeyInfo::document`] plus `key`, the secret, shown this once.
    /// Callers add `app` (a new app) and `replaces` (a rotation).
    pub fn document(&self, now: i64) -> serde_json::Value {
        let mut value = self.info.document(now);
        value["key"] = self.key.clone().into();
        value
    }
}

/// The result of a successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedKey {
    pub key_id: String,
    pub app_id: String,
    pub scope: Scope,
    pub expires_at: Option<i64>,
}

/// A key split into its parts, checksum verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub prefix: &'a str,
    pub id: &'a str,
}

/// The visible prefixes of keys: server-secret and publishable (see [`Scope::prefix`]).
const KEY_PREFIXES: [&str; 2] = ["msgd_sk_", "msgd_pk_"];

fn is_base62(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks a key's shape and checksum without any lookup.
pub fn parse_key(key: &str) -> Result<ParsedKey<'_>, KeyRejection> {
    let prefix = KEY_PREFIXES.into_iter().find(|p| key.starts_with(p)).ok_or(KeyRejection::Malformed)?;
    let body = &key[prefix.len()..];
    if body.len() != BODY_LEN || !is_base62(body) {
        return Err(KeyRejection::Malformed);
    }
    let (signed, check) = key.split_at(key.len() - CHECK_LEN);
    if encode_check(crc32(signed.as_bytes())) != check {
        return Err(KeyRejection::BadChecksum);
    }
    Ok(ParsedKey { prefix, id: &body[..ID_LEN] })
}

/// The key id a command names, in the one form every command prints (the 12
/// characters after `msgd_sk_`/`msgd_pk_`). The prefixed form `msgd_sk_<id>`
/// (with or without a trailing `…`) is accepted too; a whole key is refused,
/// naming its id, because a secret on a command line lands in shell history.
pub fn parse_key_id(text: &str) -> Result<String, KeyError> {
    let text = text.trim();
    let unprefixed = KEY_PREFIXES.into_iter().find_map(|p| text.strip_prefix(p)).unwrap_or(text);
    let id = unprefixed.trim_end_matches('…').trim_end_matches("...");
    if id.len() == ID_LEN && is_base62(id) {
        return Ok(id.to_string());
    }
    if let Ok(parsed) = parse_key(text) {
        return Err(KeyError::Invalid(format!(
            "that is a whole key, secret included; name it by its id `{}` (and consider it exposed)",
            parsed.id
        )));
    }
    Err(KeyError::NoSuchKey(text.to_string()))
}

/// A fresh id for an app, `app_` and 12 base62 characters.
pub fn new_app_id() -> String {
    format!("app_{}", random_base62(12))
}

/// The app `app_id` names, when it has the shape of one: anything else
/// (a NUL, which Postgres refuses in text, or a megabyte) is no app, and
/// is never sent to the database.
async fn known_app(meta: &Metadata, app_id: &str) -> Result<(), KeyError> {
    let shaped = app_id.strip_prefix("app_").is_some_and(|id| id.len() == 12 && is_base62(id));
    if !shaped || meta.get_app(app_id).await?.is_none() {
        let shown: String = app_id.chars().take(40).collect();
        return Err(KeyError::NoSuchApp(shown));
    }
    Ok(())
}

/// Every app, oldest first.
pub async fn list_apps(meta: &Metadata) -> Result<Vec<AppRow>, KeyError> {
    Ok(meta.list_apps().await?)
}

/// Refuses a lifetime or grace period past [`MAX_KEY_DURATION`].
fn check_duration(what: &str, duration: Duration) -> Result<i64, KeyError> {
    if duration > MAX_KEY_DURATION {
        return Err(KeyError::Invalid(format!("{what} is at most ten years")));
    }
    Ok(duration.as_millis() as i64)
}

/// Creates an app and its first admin key.
pub async fn create_app(meta: &Metadata, name: &str, now: i64) -> Result<(AppRow, IssuedKey), KeyError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(KeyError::Invalid("an app name is 1 to 200 characters".into()));
    }
    if let Some(why) = crate::ids::display_text_problem(name, MAX_NAME_CHARS) {
        return Err(KeyError::Invalid(format!("an app name {why}")));
    }
    let app = AppRow { id: new_app_id(), name: name.to_string(), created_at: now };
    meta.insert_app(&app).await?;
    let key = create_key(meta, &app.id, Scope::Admin, Some("initial admin key"), None, now).await?;
    Ok((app, key))
}

/// Issues a key for an app.
pub async fn create_key(
    meta: &Metadata,
    app_id: &str,
    scope: Scope,
    name: Option<&str>,
    expires_in: Option<Duration>,
    now: i64,
) -> Result<IssuedKey, KeyError> {
    if let Some(why) = name.and_then(|n| crate::ids::display_text_problem(n, MAX_NAME_CHARS)) {
        return Err(KeyError::Invalid(format!("a key name {why}")));
    }
    if expires_in.is_some_and(|d| d.is_zero()) {
        return Err(KeyError::Invalid("a key's lifetime must be more than zero".into()));
    }
    let expires_at = expires_in.map(|d| check_duration("a key's lifetime", d)).transpose()?.map(|ms| now + ms);
    known_app(meta, app_id).await?;
    let (key, row) = new_key_row(app_id, scope, name, expires_at, now);
    meta.insert_api_key(&row).await?;
    Ok(IssuedKey { key, info: KeyInfo::from_row(row)? })
}

/// Lists keys, of one app or all; never their secrets.
pub async fn list_keys(meta: &Metadata, app_id: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
    if let Some(app_id) = app_id {
        known_app(meta, app_id).await?;
    }
    let rows = meta.list_api_keys(app_id).await?;
    Ok(rows.into_iter().map(KeyInfo::from_row).collect::<Result<_, _>>()?)
}

/// Issues a successor with the same app, scope and name; the old key keeps
/// working until `now + grace` (or its own earlier expiry), which is returned
/// beside the new key.
pub async fn rotate_key(
    meta: &Metadata,
    key_id: &str,
    grace: Duration,
    now: i64,
) -> Result<(IssuedKey, i64), KeyError> {
    let key_id = &parse_key_id(key_id)?;
    let grace_end = now + check_duration("the grace period", grace)?;
    let old = meta.get_api_key(key_id).await?.ok_or_else(|| KeyError::NoSuchKey(key_id.to_string()))?;
    if old.revoked_at.is_some() {
        return Err(KeyError::KeyRevoked(key_id.to_string()));
    }
    if let Some(successor) = old.rotated_to {
        return Err(KeyError::AlreadyRotated { key: key_id.to_string(), successor });
    }
    let scope: Scope = old.scope.parse().map_err(KeyError::Invalid)?;
    // The successor keeps the remaining lifetime of a key that had one.
    let (key, row) = new_key_row(&old.app_id, scope, old.name.as_deref(), old.expires_at, now);
    meta.rotate_api_key(key_id, grace_end, &row).await?;
    let old_valid_until = old.expires_at.map_or(grace_end, |at| at.min(grace_end));
    Ok((IssuedKey { key, info: KeyInfo::from_row(row)? }, old_valid_until))
}

/// Revokes a key at once.
pub async fn revoke_key(meta: &Metadata, key_id: &str, now: i64) -> Result<KeyInfo, KeyError> {
    let key_id = &parse_key_id(key_id)?;
    if !meta.revoke_api_key(key_id, now).await? {
        return Err(KeyError::NoSuchKey(key_id.to_string()));
    }
    let row = meta.get_api_key(key_id).await?.ok_or_else(|| KeyError::NoSuchKey(key_id.to_string()))?;
    Ok(KeyInfo::from_row(row)?)
}

/// Authenticates a presented key at `now`.
pub async fn authenticate(meta: &Metadata, presented: &str, now: i64) -> Result<AuthenticatedKey, KeyError> {
    let parsed = parse_key(presented)?;
    let row = meta.get_api_key(parsed.id).await?.ok_or(KeyRejection::Unknown)?;
    if !crate::mac::constant_time_eq(&row.secret_hash, &hash_key(presented)) || row.prefix != parsed.prefix {
        return Err(KeyRejection::Unknown.into());
    }
    if row.revoked_at.is_some() {
        return Err(KeyRejection::Revoked.into());
    }
    if row.expires_at.is_some_and(|at| at <= now) {
        return Err(KeyRejection::Expired.into());
    }
    let scope = row.scope.parse().map_err(KeyError::Invalid)?;
    // Recording use is best effort: a failed write must not refuse a valid key.
    if let Err(e) = meta.touch_api_key(&row.id, now, TOUCH_INTERVAL_MS).await {
        tracing::warn!(component = "keys", key_id = %row.id, error = %e, "could not record key use");
    }
    Ok(AuthenticatedKey { key_id: row.id, app_id: row.app_id, scope, expires_at: row.expires_at })
}

fn new_key_row(
    app_id: &str,
    scope: Scope,
    name: Option<&str>,
    expires_at: Option<i64>,
    now: i64,
) -> (String, ApiKeyRow) {
    let id = random_base62(ID_LEN);
    let signed = format!("{}{}{}", scope.prefix(), id, random_base62(SECRET_LEN));
    let key = format!("{signed}{}", encode_check(crc32(signed.as_bytes())));
    let row = ApiKeyRow {
        id,
        app_id: app_id.to_string(),
        name: name.map(str::to_string),
        scope: scope.as_str().to_string(),
        prefix: scope.prefix().to_string(),
        secret_hash: hash_key(&key),
        created_at: now,
        expires_at,
        revoked_at: None,
        last_used_at: None,
        rotated_to: None,
    };
    (key, row)
}

fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// `len` characters drawn uniformly from base62 with the OS CSPRNG.
fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).expect("the OS random number generator failed");
        // Rejection sampling: 248 = 4 × 62 keeps the distribution uniform.
        for &byte in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(BASE62[(byte % 62) as usize] as char);
        }
    }
    out
}

fn encode_check(mut value: u32) -> String {
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

/// CRC-32 (IEEE), bitwise: keys are short, so a table buys nothing.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn issued_keys_parse_and_any_single_change_is_caught() {
        let (key, row) = new_key_row("app_x", Scope::Write, None, None, 0);
        assert_eq!(parse_key(&key).unwrap().id, row.id);
        assert!(key.starts_with("msgd_sk_"));
        for position in "msgd_sk_".len()..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[position] = if bytes[position] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(parse_key(&changed), Err(KeyRejection::BadChecksum), "change at {position} not caught");
        }
        assert_eq!(parse_key("sk_live_abc"), Err(KeyRejection::Malformed));
        assert_eq!(parse_key(&key[..key.len() - 1]), Err(KeyRejection::Malformed));
    }

    #[test]
    fn key_ids_are_accepted_in_every_printed_form() {
        let (key, row) = new_key_row("app_x", Scope::Write, None, None, 0);
        for form in [row.id.clone(), format!("msgd_sk_{}", row.id), format!("msgd_sk_{}…", row.id)] {
            assert_eq!(parse_key_id(&form).unwrap(), row.id, "{form}");
        }
        let whole = parse_key_id(&key).unwrap_err().to_string();
        assert!(whole.contains(&row.id) && !whole.contains(&key), "{whole}");
        assert!(matches!(parse_key_id("nosuchkey"), Err(KeyError::NoSuchKey(_))));
    }

    #[test]
    fn read_keys_are_publishable() {
        let (key, _) = new_key_row("app_x", Scope::Read, None, None, 0);
        assert!(key.starts_with("msgd_pk_"));
    }

    #[test]
    fn scopes_nest() {
        assert!(Scope::Admin.allows(Scope::Write));
        assert!(Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
        assert!(!Scope::Write.allows(Scope::Admin));
    }
}
