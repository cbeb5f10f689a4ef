//! Signed tokens for values msgd hands out and must recognise when they come
//! back (history and inbox cursors, embedded upload URLs): `base64url(body).base64url(mac)`
//! with a truncated HMAC-SHA256 (RFC 2104) under a key every instance shares;
//! and the one constant-time comparison of secrets (API keys, the operator
//! token, MACs). Pure functions; the callers own the body's format and its checks.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Bytes of the HMAC kept in a token: 128 bits.
const MAC_LEN: usize = 16;

/// `body` (JSON, say) as a token signed with `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = engine.encode(body);
    let mac = engine.encode(&hmac_sha256(key, body.as_bytes())[..MAC_LEN]);
    format!("{body}.{mac}")
}

/// The body of a token [`sign`] made with the same key; `None` for anything
/// else (forged, tampered, malformed). The comparison takes constant time.
pub fn verify(key: &[u8], token: &str) -> Option<Vec<u8>> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (body, mac) = token.split_once('.')?;
    let expected = hmac_sha256(key, body.as_bytes());
    let given = engine.decode(mac).ok()?;
    if !constant_time_eq(&given, &expected[..MAC_LEN]) {
        return None;
    }
    engine.decode(body).ok()
}

/// `value`, as JSON, in a token signed with `key`.
pub fn sign_json<T: serde::Serialize>(key: &[u8], value: &T) -> String {
    sign(key, &serde_json::to_vec(value).expect("a token body serializes"))
}

/// The value in a token [`sign_json`] made with the same key; `None` for
/// anything else (forged, tampered, malformed, another shape).
pub fn verify_json<T: serde::de::DeserializeOwned>(key: &[u8], token: &str) -> Option<T> {
    serde_json::from_slice(&verify(key, token)?).ok()
}

/// Equality whose running time does not depend on where the inputs differ
/// (only on their lengths): every comparison of a secret or a MAC uses it.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 (RFC 2104) over sha2.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&inner_pad).chain_update(message).finalize();
    Sha256::new().chain_update(&outer_pad).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn tokens_round_trip_and_any_change_is_refused() {
        let key = [7u8; 32];
        let token = sign(&key, br#"{"a":1}"#);
        assert_eq!(verify(&key, &token).as_deref(), Some(&br#"{"a":1}"#[..]));
        assert!(verify(&[8u8; 32], &token).is_none(), "another deployment's key");
        for at in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            if tampered != token {
                assert!(verify(&key, &tampered).is_none(), "tampering at {at} accepted");
            }
        }
    }
}
