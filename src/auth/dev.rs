//! The dev token issuer: HS256 user tokens signed with a local key, for
//! development and load tests. Off unless `auth.dev_tokens.enabled`.
//!
//! Its tokens carry `kid = "msgd-dev"`, `iss = "msgd-dev"` and the app id as
//! `aud`, so a dev token minted for one app is refused by every other app.
//! The key comes from `auth.dev_tokens.signing_key`, or else is generated once
//! per deployment and kept in the metadata store (`server_secrets`), like the
//! history cursor key: every instance — embedded or services — signs and
//! accepts with the same key. It is read on first use, so `serve` starts while
//! Postgres is down.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::{invalid_token, subject_user_id, VerifiedToken};
use crate::config::DevTokensConfig;
use crate::error::{Code, Error};
use crate::store::Metadata;

const DEV_KID: &str = "msgd-dev";
const DEV_ISSUER: &str = "msgd-dev";
/// The name of the generated key in the metadata store's shared secrets.
const SHARED_KEY_NAME: &str = "dev-token-signing";

/// The dev issuer of a running msgd: its key is the configured one, or the
/// deployment's shared key fetched on first use.
pub struct DevTokens {
    metadata: Arc<Metadata>,
    ttl: Duration,
    issuer: tokio::sync::OnceCell<DevIssuer>,
}

impl DevTokens {
    pub fn open(config: &DevTokensConfig, metadata: Arc<Metadata>) -> DevTokens {
        let issuer = match &config.signing_key {
            Some(key) => tokio::sync::OnceCell::new_with(Some(DevIssuer::open(key.expose().as_bytes(), config.ttl))),
            None => tokio::sync::OnceCell::new(),
        };
        DevTokens { metadata, ttl: config.ttl, issuer }
    }

    /// The keyed issuer; the first call reads (or creates) the shared key,
    /// and fails as unavailable while the metadata store is down.
    pub async fn issuer(&self) -> Result<&DevIssuer, Error> {
        self.issuer
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                getrandom::fill(&mut candidate).expect("the OS random number generator failed");
                let key = self.metadata.shared_secret(SHARED_KEY_NAME, &candidate).await?;
                Ok::<_, Error>(DevIssuer::open(&key, self.ttl))
            })
            .await
    }

    /// As [`DevIssuer::mint`], with the deployment's key.
    pub async fn mint(&self, app_id: &str, user_id: &str, now_ms: i64) -> Result<(String, u64), Error> {
        self.issuer().await?.mint(app_id, user_id, now_ms)
    }

    /// Whether a token claims to come from this issuer (by its `kid`); needs no key.
    pub fn issued(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token).is_ok_and(|h| h.kid.as_deref() == Some(DEV_KID))
    }
}

pub struct DevIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl DevIssuer {
    fn open(secret: &[u8], ttl: Duration) -> DevIssuer {
        DevIssuer { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), ttl }
    }

    /// Mints a token for `user_id` of `app_id`; returns it and its lifetime in seconds.
    pub fn mint(&self, app_id: &str, user_id: &str, now_ms: i64) -> Result<(String, u64), Error> {
        let now = now_ms / 1000;
        let claims = serde_json::json!({
            "iss": DEV_ISSUER,
            "aud": app_id,
            "sub": user_id,
            "iat": now,
            "exp": now + self.ttl.as_secs() as i64,
            "typ": "Bearer",
        });
        let header = Header { kid: Some(DEV_KID.into()), ..Header::new(Algorithm::HS256) };
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::new(Code::Internal, format!("cannot sign a dev token: {e}")))?;
        Ok((token, self.ttl.as_secs()))
    }

    /// Whether a token claims to come from this issuer (by its `kid`).
    pub fn issued(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token).is_ok_and(|h| h.kid.as_deref() == Some(DEV_KID))
    }

    pub(crate) fn verify(&self, token: &str, app_id: &str) -> Result<VerifiedToken, Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[DEV_ISSUER]);
        validation.set_audience(&[app_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &self.decoding, &validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => Error::new(Code::TokenExpired, "the token expired"),
                    ErrorKind::InvalidAudience => {
                        Error::new(Code::WrongAudience, "the dev token was minted for another app")
                    }
                    ErrorKind::ImmatureSignature => invalid_token("the token is not valid yet (nbf)"),
                    _ => invalid_token(format!("the dev token failed validation: {e}")),
                })?;
        let expires_at_ms = data.claims.get("exp").and_then(|v| v.as_i64()).unwrap_or(0) * 1000;
        let subject = data
            .claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid_token("the dev token has no subject"))?;
        Ok(VerifiedToken { user_id: subject_user_id(subject)?, expires_at_ms })
    }
}
