//! Keycloak (OIDC) access-token validation against the realm's JWKS.
//!
//! The JWKS location is discovered from `<issuer>/.well-known/openid-configuration`
//! and is the only place keys ever come from: `jku`, `x5u` and embedded keys
//! in token headers are ignored. Keys are cached, refreshed in the background,
//! and refetched on an unknown `kid` at most once per [`REFETCH_MIN_INTERVAL`].
//! `iss`, `exp` and (when configured) `aud` are required, not merely checked
//! when present; `azp` is checked against the allowed clients.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{invalid_token, subject_user_id, VerifiedToken};
use crate::config::{redact_text, redact_url, KeycloakConfig};
use crate::error::{Code, Error};
use crate::worker::OwnedTask;

/// An unknown `kid` triggers a JWKS refetch at most this often.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct KeycloakVerifier {
    inner: Arc<Inner>,
    /// The background refresh, owned by the verifier and its clones: it ends
    /// with the last of them. It holds the keys only weakly, so it cannot
    /// keep them alive by itself.
    _refresh: Option<Arc<OwnedTask>>,
}

struct Inner {
    config: KeycloakConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    /// kid → verification key, from the last successful fetch.
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    /// When an unknown `kid` last caused a refetch, for the refetch limit
    /// (scheduled refreshes do not count).
    last_refetch: Mutex<Option<Instant>>,
    /// One fetch at a time; waiters reuse its result.
    fetching: tokio::sync::Mutex<()>,
}

impl KeycloakVerifier {
    /// Builds the verifier and starts its background refresh (the first fetch
    /// happens there, or on the first token, whichever comes first).
    pub fn new(config: &KeycloakConfig) -> anyhow::Result<KeycloakVerifier> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|name| Algorithm::from_str(name).map_err(|_| anyhow::anyhow!("unknown algorithm {name}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let inner = Arc::new(Inner {
            config: config.clone(),
            algorithms,
            http,
            keys: RwLock::default(),
            last_refetch: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        });
        let refresh = tokio::runtime::Handle::try_current()
            .is_ok()
            .then(|| Arc::new(OwnedTask::spawn(refresh_loop(Arc::downgrade(&inner), config.jwks_refresh_interval))));
        Ok(KeycloakVerifier { inner, _refresh: refresh })
    }

    /// Validates a token; the user id comes from the configured claim.
    pub(crate) async fn verify(&self, token: &str) -> Result<VerifiedToken, Error> {
        let inner = &self.inner;
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid_token(format!("malformed token: {e}")))?;
        if !inner.algorithms.contains(&header.alg) {
            return Err(invalid_token(format!("algorithm {:?} is not allowed", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| invalid_token("the token names no signing key (kid)"))?;
        let key = match inner.key(&kid) {
            Some(key) => key,
            None => {
                inner.refetch_if_due().await;
                inner.key(&kid).ok_or_else(|| invalid_token("the token is signed by an unknown key"))?
            }
        };

        let config = &inner.config;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = inner.algorithms.clone();
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        let mut required = vec!["exp", "iss"];
        if config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::new(Code::TokenExpired, "the token expired"),
                ErrorKind::InvalidIssuer => Error::new(Code::WrongIssuer, "the token was issued by another issuer"),
                ErrorKind::InvalidAudience => {
                    Error::new(Code::WrongAudience, "the token is meant for another audience")
                }
                ErrorKind::ImmatureSignature => invalid_token("the token is not valid yet (nbf)"),
                ErrorKind::MissingRequiredClaim(claim) => invalid_token(format!("the token has no `{claim}` claim")),
                _ => invalid_token(format!("the token failed validation: {e}")),
            })?
            .claims;

        if !config.allowed_clients.is_empty() {
            let azp = claims.get("azp").and_then(|v| v.as_str()).unwrap_or("");
            if !config.allowed_clients.iter().any(|client| client == azp) {
                return Err(Error::new(
                    Code::WrongAudience,
                    "the token was issued to a client that is not allowed (azp)",
                ));
            }
        }
        let expires_at_ms = claims.get("exp").and_then(|v| v.as_i64()).unwrap_or(0) * 1000;
        let subject = claims
            .get(&config.user_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid_token(format!("the token has no string `{}` claim", config.user_claim)))?;
        Ok(VerifiedToken { user_id: subject_user_id(subject)?, expires_at_ms })
    }
}

impl Inner {
    fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.read().expect("jwks lock").get(kid).cloned()
    }

    /// Refetches the JWKS unless it was fetched within the last
    /// [`REFETCH_MIN_INTERVAL`], so a flood of unknown `kid`s cannot turn msgd
    /// into a load generator against Keycloak.
    async fn refetch_if_due(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut last = self.last_refetch.lock().expect("jwks lock");
            if last.is_some_and(|at| at.elapsed() < REFETCH_MIN_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.fetch().await;
    }

    async fn fetch(&self) {
        match self.fetch_keys().await {
            Ok(keys) => {
                tracing::info!(
                    component = "auth",
                    worker = "jwks",
                    keys = keys.len(),
                    issuer = %redact_url(&self.config.issuer),
                    "jwks fetched"
                );
                *self.keys.write().expect("jwks lock") = keys;
            }
            Err(e) => {
                tracing::warn!(
                    component = "auth",
                    worker = "jwks",
                    issuer = %redact_url(&self.config.issuer),
                    error = %redact_text(&format!("{e:#}")),
                    "jwks fetch failed; keeping the cached keys"
                );
            }
        }
    }

    async fn fetch_keys(&self) -> anyhow::Result<HashMap<String, Arc<DecodingKey>>> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let discovery: serde_json::Value =
            self.http.get(&discovery_url).send().await?.error_for_status()?.json().await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow::anyhow!("{discovery_url} names no jwks_uri"))?;
        let set: JwkSet = self.http.get(jwks_uri).send().await?.error_for_status()?.json().await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else { continue };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid.clone(), Arc::new(key));
                }
                Err(e) => {
                    tracing::warn!(component = "auth", worker = "jwks", kid = %kid, error = %e, "unusable jwk skipped")
                }
            }
        }
        Ok(keys)
    }
}

/// Fetches the keys now and every `interval` after, until the verifier goes.
async fn refresh_loop(inner: Weak<Inner>, interval: Duration) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        {
            let _one_at_a_time = strong.fetching.lock().await;
            strong.fetch().await;
        }
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}
