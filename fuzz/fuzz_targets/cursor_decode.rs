//! Fuzzes the history cursor codec: any string must decode or be refused —
//! never panic — and a state that decodes survives a round trip: encoding it
//! and decoding again gives the same state, and encoding is stable.
//!
//! A forged cursor almost never carries a valid MAC, so each input is tried
//! twice: as a cursor string, and as a cursor *body* signed here with the
//! fuzz key, which takes the fuzzer past the MAC to the JSON and its checks.
#![no_main]

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use msgd::history::{decode_cursor, encode_cursor};

const KEY: [u8; 32] = [7; 32];

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        check(text);
    }
    check(&signed(bytes));
});

/// `bytes` as the body of a cursor with a valid MAC under [`KEY`].
fn signed(bytes: &[u8]) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = engine.encode(bytes);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&KEY).expect("any key length");
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{body}.{}", engine.encode(&tag[..16]))
}

fn check(cursor: &str) {
    let Some(state) = decode_cursor(&KEY, cursor) else { return };
    let encoded = encode_cursor(&KEY, &state);
    let again = decode_cursor(&KEY, &encoded).expect("a re-encoded cursor decodes");
    assert_eq!(again, state, "round trip changed the state of {cursor:?}");
    assert_eq!(encode_cursor(&KEY, &again), encoded, "encoding is not stable");
    assert!(decode_cursor(&[8; 32], &encoded).is_none(), "another key's cursor accepted");
}
