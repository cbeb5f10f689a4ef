//! The one rule per identifier, applied at every edge that accepts one (HTTP
//! paths and bodies, WebSocket frames, token subjects), so that two spellings
//! of the same id can never name two different things.
//!
//! - **User ids** are Unicode text normalised to NFC, then 1 to 255 bytes of
//!   UTF-8, with no control characters, no default-ignorable code points
//!   (zero-width spaces, joiners, soft hyphens, variation selectors, tags, ...),
//!   no bidirectional controls, no whitespace other than an inner U+0020 space.
//!   `"alice"`, `"alice\u{200b}"` and an NFD spelling of `"é"` therefore either
//!   are the same user or are refused; never two members.
//! - **Display text** (a conversation title, an app or key name) is at most a
//!   given number of characters with no control characters: it is one line,
//!   and Postgres cannot store U+0000 in text, so both backends refuse it alike.
//! - **Conversation ids** are UUIDs in any form the `uuid` crate reads
//!   (hyphenated, simple, braced, `urn:uuid:`, any case), always used and
//!   answered in the canonical lowercase hyphenated form.
//!
//! Pure functions: no IO, no config.

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::error::{Code, Error};

/// The longest user id, in bytes of its NFC form.
pub const MAX_USER_ID_BYTES: usize = 255;

/// The canonical form of a user id, or `invalid_user_id` saying why not.
pub fn user_id(raw: &str) -> Result<String, Error> {
    let canonical: String = match is_nfc_quick(raw.chars()) {
        IsNormalized::Yes => raw.to_string(),
        _ => raw.nfc().collect(),
    };
    let refuse = |why: &str| {
        let shown: String = raw.chars().take(64).collect();
        Error::new(
            Code::InvalidUserId,
            format!("user ids are 1 to {MAX_USER_ID_BYTES} bytes (after NFC) of visible text: {why}: {shown:?}"),
        )
    };
    if canonical.is_empty() {
        return Err(refuse("empty"));
    }
    if canonical.len() > MAX_USER_ID_BYTES {
        return Err(refuse("too long"));
    }
    if canonical.starts_with(' ') || canonical.ends_with(' ') {
        return Err(refuse("leading or trailing space"));
    }
    if let Some(c) = canonical.chars().find(|&c| !allowed_in_user_id(c)) {
        return Err(refuse(&format!("U+{:04X} is not allowed", c as u32)));
    }
    Ok(canonical)
}

/// Why `raw` is not display text of at most `max_chars` characters, if it is not.
pub fn display_text_problem(raw: &str, max_chars: usize) -> Option<String> {
    if raw.chars().count() > max_chars {
        return Some(format!("must be at most {max_chars} characters"));
    }
    let control = raw.chars().find(|c| c.is_control())?;
    Some(format!("must hold no control characters (U+{:04X} is one)", control as u32))
}

fn allowed_in_user_id(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace() || is_default_ignorable(c))
}

/// Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties
/// 15.1), which includes every bidirectional formatting control (U+061C,
/// U+200E/F, U+202A–E, U+2066–9): characters that render as nothing.
fn is_default_ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// The canonical form of a conversation id, or `None` when it is no UUID.
pub fn conversation_id(raw: &str) -> Option<String> {
    uuid::Uuid::parse_str(raw).ok().map(|id| id.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_have_one_spelling() {
        assert_eq!(user_id("alice").unwrap(), "alice");
        assert_eq!(user_id("Jean Dupont").unwrap(), "Jean Dupont");
        // NFD "é" (e + combining acute) is the NFC "é".
        assert_eq!(user_id("caf\u{65}\u{301}").unwrap(), "caf\u{e9}");
        assert_eq!(user_id("caf\u{e9}").unwrap(), "caf\u{e9}");
        for bad in [
            "",
            " alice",
            "alice ",
            "alice\u{200b}",
            "\u{feff}alice",
            "al\u{ad}ice",
            "alice\u{202e}",
            "alice\u{2066}",
            "ali\u{200d}ce",
            "alice\u{fe0f}",
            "a\u{0}b",
            "a\nb",
            "a\tb",
            "a\u{2028}b",
            "a\u{3000}b",
            "alice\u{e0041}",
        ] {
            let err = user_id(bad).unwrap_err();
            assert_eq!(err.code.as_str(), "invalid_user_id", "{bad:?}");
        }
        assert!(user_id(&"a".repeat(255)).is_ok());
        assert!(user_id(&"a".repeat(256)).is_err());
        // The limit counts bytes of the NFC form: 127 two-byte characters fit, 128 do not.
        assert!(user_id(&"\u{e9}".repeat(127)).is_ok());
        assert!(user_id(&"\u{e9}".repeat(128)).is_err());
        assert!(user_id(&"x".repeat(10_000)).unwrap_err().message.len() < 400, "the refusal does not echo it all");
    }

    #[test]
    fn display_text_is_one_line_of_bounded_length() {
        assert_eq!(display_text_problem("Team chat \u{1f4ac} caf\u{e9}", 200), None);
        assert_eq!(display_text_problem(&"\u{e9}".repeat(200), 200), None);
        assert!(display_text_problem(&"a".repeat(201), 200).unwrap().contains("200"));
        for bad in ["a\u{0}b", "a\nb", "a\tb", "\u{1b}[31mred", "a\u{7f}", "a\u{85}b"] {
            assert!(display_text_problem(bad, 200).unwrap().contains("control"), "{bad:?}");
        }
    }

    #[test]
    fn conversation_ids_are_canonical_uuids() {
        let canonical = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        for form in [
            canonical,
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            assert_eq!(conversation_id(form).as_deref(), Some(canonical), "{form}");
        }
        for bad in ["", "nope", "67e55044-10b1-426f-9247-bb680e5fe0c", "67e55044-10b1-426f-9247-bb680e5fe0c8x"] {
            assert_eq!(conversation_id(bad), None, "{bad}");
        }
    }
}
