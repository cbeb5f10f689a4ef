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
//! - **Reactions** (an emoji, or a short name such as `+1`) are NFC text of
//!   1 to 64 bytes and at most 16 characters, with no control characters,
//!   whitespace, bidirectional controls or `/ ? # % \\ "`, and not `.` or `..`; zero-width joiners
//!   and variation selectors stay (emoji are built from them).
//! - **Message references** in paths are a seq (digits, no leading zero) or
//!   a message id (a hyphenated UUIDv7, either case).
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

/// The longest reaction, in bytes of its NFC form, and in characters.
pub const MAX_REACTION_BYTES: usize = 64;
pub const MAX_REACTION_CHARS: usize = 16;

/// The canonical form of a reaction, or `invalid_reaction` saying why not.
pub fn reaction(raw: &str) -> Result<String, Error> {
    let canonical: String = raw.nfc().collect();
    let refuse = |why: &str| {
        let shown: String = raw.chars().take(16).collect();
        Error::new(
            Code::InvalidReaction,
            format!(
                "a reaction is 1 to {MAX_REACTION_BYTES} bytes and {MAX_REACTION_CHARS} characters of visible text: \
                 {why}: {shown:?}"
            ),
        )
    };
    if canonical.is_empty() {
        return Err(refuse("empty"));
    }
    if canonical.len() > MAX_REACTION_BYTES || canonical.chars().count() > MAX_REACTION_CHARS {
        return Err(refuse("too long"));
    }
    let refused = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c as u32, 0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069)
            || "/?#%\\\"".contains(c)
    };
    if let Some(c) = canonical.chars().find(|&c| refused(c)) {
        return Err(refuse(&format!("U+{:04X} is not allowed", c as u32)));
    }
    if canonical == "." || canonical == ".." {
        return Err(refuse("a path segment of its own"));
    }
    Ok(canonical)
}

/// A message named in a path: by its seq or by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRef {
    /// Digits without a leading zero, at most 19: a seq past 2^63 - 1 names
    /// no message (seqs are stored as signed 64-bit integers).
    Seq(u64),
    /// A UUIDv7 in its hyphenated form (either case), kept lowercase, with
    /// its timestamp: within a moment of the message's receive time.
    Id { id: String, ts_ms: i64 },
}

/// Parses a message reference; anything else is `None` (one spelling each:
/// no leading zero, no other UUID form or version).
pub fn message_ref(raw: &str) -> Option<MessageRef> {
    let digits = raw.bytes().all(|b| b.is_ascii_digit());
    if digits && (1..=19).contains(&raw.len()) && !raw.starts_with('0') {
        return raw.parse::<u64>().ok().map(MessageRef::Seq);
    }
    if raw.len() != 36 {
        return None;
    }
    let id = uuid::Uuid::try_parse(raw).ok()?;
    if id.get_version_num() != 7 || id.get_variant() != uuid::Variant::RFC4122 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    let ts_ms = i64::try_from(secs).ok()?.checked_mul(1000)? + i64::from(nanos / 1_000_000);
    Some(MessageRef::Id { id: id.hyphenated().to_string(), ts_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_have_one_spelling() {
        for ok in ["👍", "👍🏽", "❤\u{fe0f}", "👩\u{200d}💻", "+1", ":tada:", "ok"] {
            assert_eq!(reaction(ok).unwrap(), ok, "{ok:?}");
        }
        assert_eq!(reaction("e\u{301}").unwrap(), "\u{e9}", "NFC");
        let bad =
            ["", " ", "a b", "\u{202e}x", "a/b", "50%", "x\u{0}", ".", "..", "12345678901234567", &"👍".repeat(17)];
        for bad in bad {
            assert_eq!(reaction(bad).unwrap_err().code, Code::InvalidReaction, "{bad:?}");
        }
    }

    #[test]
    fn a_message_is_named_by_seq_or_by_uuid_v7() {
        assert_eq!(message_ref("1"), Some(MessageRef::Seq(1)));
        assert_eq!(message_ref("9999999999999999999"), Some(MessageRef::Seq(9_999_999_999_999_999_999)));
        let bad =
            ["0", "01", "10000000000000000000", "", "-1", "+1", "1.0", "x", "00000000-0000-4000-8000-000000000000"];
        let v7 = "0190c0de-0000-7000-8000-000000000001";
        let other_forms = ["0190c0de00007000800000000000000a", "{0190c0de-0000-7000-8000-000000000001}"];
        let wrong_variant = "0190c0de-0000-7000-c000-000000000001";
        assert!(matches!(message_ref(v7), Some(MessageRef::Id { .. })));
        for bad in bad.into_iter().chain(other_forms).chain([wrong_variant]) {
            assert_eq!(message_ref(bad), None, "{bad:?}");
        }
        let id = uuid::Uuid::now_v7();
        let now = crate::clock::now_ms();
        match message_ref(&id.to_string().to_uppercase()) {
            Some(MessageRef::Id { id: parsed, ts_ms }) => {
                assert_eq!(parsed, id.to_string());
                assert!((now - ts_ms).abs() < 1000, "{ts_ms} vs {now}");
            }
            other => panic!("{other:?}"),
        }
    }

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
