//! The dev token issuer: HS256 user tokens signed with a local key, for
//! development and load tests. Off unless `auth.dev_tokens.enabled`.
//!
//! Its tokens carry `kid = "msgd-dev"`, `iss = "msgd-dev"` and the app id as
//! `aud`, so a dev token minted for one app is refused by every other app.
//! The key comes from `auth.dev_tokens.signing_key`, or is generated once into
//! `<data_dir>/dev-token.key` (several instances must share the configured key).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::{invalid_token, subject_user_id, VerifiedToken};
use crate::config::DevTokensConfig;
use crate::error::{Error, Kind};

const DEV_KID: &str = "msgd-dev";
const DEV_ISSUER: &str = "msgd-dev";
const KEY_FILE: &str = "dev-token.key";

pub struct DevIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl DevIssuer {
    pub fn open(config: &DevTokensConfig, data_dir: &Path) -> anyhow::Result<DevIssuer> {
        let secret = match &config.signing_key {
            Some(key) => key.expose().as_bytes().to_vec(),
            None => load_or_create_key(&data_dir.join(KEY_FILE))?,
        };
        Ok(DevIssuer {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            ttl: config.ttl,
        })
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
            .map_err(|e| Error::new(Kind::Internal, "internal", format!("cannot sign a dev token: {e}")))?;
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
                    ErrorKind::ExpiredSignature => {
                        Error::new(Kind::Unauthenticated, "token_expired", "the token expired")
                    }
                    ErrorKind::InvalidAudience => {
                        Error::new(Kind::Unauthenticated, "wrong_audience", "the dev token was minted for another app")
                    }
                    ErrorKind::ImmatureSignature => invalid_token("the token is not valid yet (nbf)"),
                    _ => invalid_token(format!("the dev token failed validation: {e}")),
                })?;
        let expires_at_ms = data.claims.get("exp").and_then(|v| v.as_i64()).unwrap_or(0) * 1000;
        let subject =
            data.claims.get("sub").and_then(|v| v.as_str()).ok_or_else(|| invalid_token("the dev token has no subject"))?;
        Ok(VerifiedToken { user_id: subject_user_id(subject)?, expires_at_ms })
    }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text.trim().as_bytes().to_vec());
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS random number generator failed: {e}"))?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create the dev token key {}", path.display()))?;
        file.write_all(key.as_bytes())?;
    }
    Ok(key.into_bytes())
}
