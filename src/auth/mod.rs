//! Who is calling: the API key (which app, which scope) and, optionally, the
//! user behind a bearer token (Keycloak or the dev issuer). Every refusal is
//! an [`Error`] with a stable code, counted in `msgd_auth_failures_total`.
//!
//! Validated keys are cached for `auth.key_cache_ttl` per instance, so the hot
//! path neither hashes against the database nor verifies RSA on every
//! request, while a revocation still takes effect everywhere within that TTL.

mod dev;
mod keycloak;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use dev::{DevIssuer, DevTokens};
pub use keycloak::KeycloakVerifier;

use crate::config::Config;
use crate::error::{Code, Error};
use crate::keys::{self, AuthenticatedKey, KeyError, Scope};
use crate::store::Metadata;

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub app_id: String,
    pub key_id: String,
    pub scope: Scope,
    /// The user named by the bearer token; `None` when an admin key acts as the app.
    pub user_id: Option<String>,
    /// When the bearer token expires (Unix ms): long-lived connections end then.
    pub token_expires_at_ms: Option<i64>,
}

impl Caller {
    /// Refuses unless the key's scope allows `needed`.
    pub fn require_scope(&self, needed: Scope) -> Result<(), Error> {
        if self.scope.allows(needed) {
            Ok(())
        } else {
            Err(Error::new(
                Code::InsufficientScope,
                format!("this needs a key with the {} scope; this key has {}", needed.as_str(), self.scope.as_str()),
            ))
        }
    }

    /// Refuses unless the caller may act inside a conversation as a member
    /// (send, receipts, typing, managing members as its role allows). A
    /// server-secret key with the write scope may; so may a publishable
    /// (read-scope) key *with* a user token: what happens is then decided by
    /// that user's memberships and role alone, so the key a browser holds
    /// grants nothing of its own. Creating conversations still needs a
    /// server-secret key.
    pub fn require_participant(&self) -> Result<(), Error> {
        if self.user_id.is_some() {
            return Ok(());
        }
        self.require_scope(Scope::Write)
    }

    /// An admin key acting as the app, without a user.
    pub fn is_app(&self) -> bool {
        self.user_id.is_none()
    }
}

/// What a request presented.
pub struct Credentials<'a> {
    pub api_key: Option<&'a str>,
    /// The raw `Authorization` header value.
    pub authorization: Option<&'a str>,
}

/// Bearer tokens larger than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

pub struct Authenticator {
    metadata: Arc<Metadata>,
    key_cache_ttl: Duration,
    /// SHA-256(presented key) → the validated key and when it was validated.
    key_cache: Mutex<HashMap<[u8; 32], (AuthenticatedKey, Instant)>>,
    /// SHA-256(app id, token) → the user and when the token stops being
    /// accepted, so RSA is verified once per token rather than per request.
    token_cache: Mutex<HashMap<[u8; 32], (VerifiedToken, Instant)>>,
    keycloak: Option<KeycloakVerifier>,
    dev: Option<DevTokens>,
    /// SHA-256 of `auth.operator_token`; `None` keeps the admin API off.
    operator_token: Option<[u8; 32]>,
}

/// A verified token is trusted from the cache at most this long (and never
/// past its own expiry).
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);

/// Above this many cached keys, stale entries are dropped on the next insert.
const KEY_CACHE_MAX: usize = 10_000;

impl Authenticator {
    pub fn new(config: &Config, metadata: Arc<Metadata>) -> anyhow::Result<Authenticator> {
        let dev = config.auth.dev_tokens.enabled.then(|| DevTokens::open(&config.auth.dev_tokens, metadata.clone()));
        Ok(Authenticator {
            metadata,
            key_cache_ttl: config.auth.key_cache_ttl,
            key_cache: Mutex::default(),
            token_cache: Mutex::default(),
            keycloak: config.auth.keycloak.as_ref().map(KeycloakVerifier::new).transpose()?,
            dev,
            operator_token: config.auth.operator_token.as_ref().map(|token| Sha256::digest(token.expose()).into()),
        })
    }

    pub fn dev_issuer(&self) -> Option<&DevTokens> {
        self.dev.as_ref()
    }

    /// Authenticates a request at `now` (Unix ms). Refusals are counted by the
    /// edge that answers them (`msgd_auth_failures_total`).
    pub async fn authenticate(&self, credentials: Credentials<'_>, now: i64) -> Result<Caller, Error> {
        let presented = credentials
            .api_key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error::new(Code::MissingApiKey, "send the app's API key in X-Api-Key"))?;
        let key = self.api_key(presented, now).await?;
        let token = match credentials.authorization {
            None => {
                if key.scope != Scope::Admin {
                    return Err(Error::new(
                        Code::MissingToken,
                        "only an admin key may act without a user; send Authorization: Bearer <user token>",
                    ));
                }
                None
            }
            Some(header) => Some(self.user(header, &key.app_id, now).await?),
        };
        let (user_id, token_expires_at_ms) = match token {
            Some(token) => (Some(token.user_id), Some(token.expires_at_ms)),
            None => (None, None),
        };
        Ok(Caller { app_id: key.app_id, key_id: key.key_id, scope: key.scope, user_id, token_expires_at_ms })
    }

    /// Admits the operator of the admin API (`/v1/admin`), whose raw
    /// `Authorization` header must be `Bearer <auth.operator_token>`. App keys
    /// and user tokens grant nothing here. `not_found` while the API is off.
    pub fn operator(&self, authorization: Option<&str>) -> Result<(), Error> {
        let Some(expected) = &self.operator_token else { return Err(admin_api_off()) };
        let presented = authorization.and_then(bearer).ok_or_else(|| {
            Error::new(Code::InvalidOperatorToken, "send Authorization: Bearer <auth.operator_token>")
        })?;
        // Digests of equal length, compared in constant time: neither the
        // token's length nor its prefix leaks through timing.
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if !crate::mac::constant_time_eq(&digest, expected) {
            return Err(Error::new(Code::InvalidOperatorToken, "that is not this server's operator token"));
        }
        Ok(())
    }

    /// `not_found` while the admin API is off, whatever was presented.
    pub fn require_admin_api(&self) -> Result<(), Error> {
        self.operator_token.map(|_| ()).ok_or_else(admin_api_off)
    }

    /// Drops a key from this instance's cache at once (a revocation through
    /// the admin API); other instances see it within `auth.key_cache_ttl`.
    pub fn forget_key(&self, key_id: &str) {
        self.key_cache.lock().expect("key cache lock").retain(|_, (key, _)| key.key_id != key_id);
    }

    /// Re-checks an API key already accepted once (cached; a revocation shows
    /// within `auth.key_cache_ttl`), for connections that outlive a request.
    pub async fn recheck_key(&self, api_key: &str, now: i64) -> Result<(), Error> {
        self.api_key(api_key.trim(), now).await.map(|_| ())
    }

    async fn api_key(&self, presented: &str, now: i64) -> Result<AuthenticatedKey, Error> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let cached = self.key_cache.lock().expect("key cache lock").get(&digest).cloned();
        if let Some((key, at)) = cached {
            if at.elapsed() < self.key_cache_ttl {
                if key.expires_at.is_some_and(|exp| exp <= now) {
                    return Err(key_refusal(keys::KeyRejection::Expired));
                }
                return Ok(key);
            }
        }
        match keys::authenticate(self.metadata.as_ref(), presented, now).await {
            Ok(key) => {
                let mut cache = self.key_cache.lock().expect("key cache lock");
                if cache.len() >= KEY_CACHE_MAX {
                    let ttl = self.key_cache_ttl;
                    cache.retain(|_, (_, at)| at.elapsed() < ttl);
                }
                cache.insert(digest, (key.clone(), Instant::now()));
                Ok(key)
            }
            Err(KeyError::Rejected(rejection)) => Err(key_refusal(rejection)),
            Err(KeyError::Store(e)) => Err(e.into()),
            Err(other) => Err(Error::new(Code::Internal, other.to_string())),
        }
    }

    async fn user(&self, header: &str, app_id: &str, now: i64) -> Result<VerifiedToken, Error> {
        let token = bearer(header).ok_or_else(|| invalid_token("the Authorization header must be `Bearer <token>`"))?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid_token("the token is too large"));
        }
        let digest: [u8; 32] =
            Sha256::new().chain_update(app_id).chain_update([0]).chain_update(token).finalize().into();
        if let Some((token, until)) = self.token_cache.lock().expect("token cache lock").get(&digest) {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let verified = match (&self.dev, &self.keycloak) {
            (Some(dev), _) if dev.issued(token) => dev.issuer().await?.verify(token, app_id)?,
            (_, Some(keycloak)) => keycloak.verify(token).await?,
            (Some(_), None) => {
                return Err(invalid_token(
                    "the token is not a dev token of this server (no other issuer is configured)",
                ))
            }
            (None, None) => {
                return Err(invalid_token(
                    "this server accepts no user tokens (neither auth.keycloak nor auth.dev_tokens is configured)",
                ))
            }
        };
        let remaining_ms = u64::try_from(verified.expires_at_ms - now).unwrap_or(0);
        let until = Instant::now() + TOKEN_CACHE_TTL.min(Duration::from_millis(remaining_ms));
        let mut cache = self.token_cache.lock().expect("token cache lock");
        if cache.len() >= KEY_CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
        }
        cache.insert(digest, (verified.clone(), until));
        Ok(verified)
    }
}

/// The credentials of an `Authorization: Bearer <credentials>` header value.
fn bearer(header: &str) -> Option<&str> {
    header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).map(str::trim)
}

fn admin_api_off() -> Error {
    Error::new(Code::NotFound, "the admin API is off (auth.operator_token is not set)")
}

fn key_refusal(rejection: keys::KeyRejection) -> Error {
    Error::new(rejection.code(), rejection.to_string())
}

/// A token that passed verification.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedToken {
    pub user_id: String,
    /// The token's `exp`, in Unix ms.
    pub expires_at_ms: i64,
}

/// The user id a token's subject names, under the one user-id rule
/// ([`crate::ids::user_id`]); a subject that breaks it refuses the token.
pub(crate) fn subject_user_id(subject: &str) -> Result<String, Error> {
    crate::ids::user_id(subject)
        .map_err(|e| invalid_token(format!("the token's subject is not a usable user id: {}", e.message)))
}

pub(crate) fn invalid_token(message: impl Into<String>) -> Error {
    Error::new(Code::InvalidToken, message)
}
