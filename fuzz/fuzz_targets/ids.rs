//! Fuzzes the identifier validators: any string is accepted or refused —
//! never a panic — and what they return is canonical, a fixed point:
//! validating a canonical form gives it back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msgd::ids::{conversation_id, user_id};

fuzz_target!(|bytes: &[u8]| {
    let Ok(raw) = std::str::from_utf8(bytes) else { return };
    if let Ok(canonical) = user_id(raw) {
        match user_id(&canonical) {
            Ok(again) => assert_eq!(again, canonical, "user id {raw:?}: canonical form is not a fixed point"),
            Err(e) => panic!("user id {raw:?}: canonical form {canonical:?} refused: {e:?}"),
        }
    }
    if let Some(canonical) = conversation_id(raw) {
        assert!(is_lowercase_hyphenated_uuid(&canonical), "conversation id {raw:?} gave {canonical:?}");
        assert_eq!(conversation_id(&canonical).as_deref(), Some(canonical.as_str()), "conversation id {raw:?}");
    }
});

fn is_lowercase_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}
