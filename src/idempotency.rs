//! Idempotency keys: what names a claim, what makes two sends the same
//! request, and the compact durable record of the keys a flush moved out of
//! the tail (ARCHITECTURE.md, "Idempotency").
//!
//! A tail that holds its claims in memory (Redis) releases them once their
//! messages are in a segment: the flush first writes one record row per
//! conversation block — 24 bytes per keyed message (key hash, seq,
//! fingerprint) — and only then drops the claims. A later retry of such a key
//! is answered from that record; the tail tells the sender when to look
//! ([`crate::store::AppendOutcome::CheckRecord`]).

use sha2::{Digest, Sha256};

use crate::envelope::{Envelope, Sender};
use crate::error::Error;
use crate::store::{ConvKey, IdempotencyRecordRow, Stores, TailEntry};

/// Bytes per keyed message in a record row.
const ENTRY_BYTES: usize = 24;

/// Idempotency keys are scoped to their sender (app, conversation, sender and
/// key): two members who pick the same key never see each other's message.
/// The sender id's length keeps the parts apart whatever characters they hold.
pub fn claim_key(sender: &Sender, key: &str) -> String {
    format!("{}:{}:{}:{key}", sender.kind, sender.id.len(), sender.id)
}

/// What makes two sends "the same request": sender and content, not the
/// server-assigned id or time. 32 hex characters.
pub fn fingerprint(envelope: &Envelope) -> String {
    let canonical = serde_json::json!({
        "sender": envelope.sender,
        "payload": envelope.payload,
        "payload_base64": envelope.payload_base64,
        "content_type": envelope.content_type,
        "attachments": envelope.attachments,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// A claim key's 64-bit name in records. Within one conversation's window
/// (even a million keys) two keys share one with odds below 10⁻⁷.
fn key_hash(claim_key: &str) -> u64 {
    let digest = Sha256::digest(claim_key.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A fingerprint's first 64 bits, as records keep it.
fn fingerprint_bits(fingerprint: &str) -> u64 {
    fingerprint.get(..16).and_then(|hex| u64::from_str_radix(hex, 16).ok()).unwrap_or(0)
}

/// One conversation's keyed messages among `entries` (a flushed range): the
/// record row to write, and the claim keys it lets the tail release. `None`
/// when no message in the range had a key. A body that does not decode is
/// left out: its claim, if any, is not released and lives out its TTL.
pub fn record_of(conv: &ConvKey, entries: &[TailEntry]) -> Option<(IdempotencyRecordRow, Vec<String>)> {
    let mut bytes = Vec::new();
    let mut released = Vec::new();
    for entry in entries {
        let Ok(envelope) = Envelope::from_entry(entry) else { continue };
        let Some(key) = &envelope.client_msg_id else { continue };
        let claim = claim_key(&envelope.sender, key);
        bytes.extend_from_slice(&key_hash(&claim).to_le_bytes());
        bytes.extend_from_slice(&entry.seq.to_le_bytes());
        bytes.extend_from_slice(&fingerprint_bits(&fingerprint(&envelope)).to_le_bytes());
        released.push(claim);
    }
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return None };
    if released.is_empty() {
        return None;
    }
    let row = IdempotencyRecordRow {
        app_id: conv.app_id.clone(),
        conversation_id: conv.conversation_id.clone(),
        seq_start: first.seq as i64,
        seq_end: last.seq as i64,
        ts_end: entries.iter().map(|e| e.ts_ms).max().unwrap_or(last.ts_ms),
        entries: bytes,
    };
    Some((row, released))
}

/// What a record says of one key: the seq it was used for, and whether with
/// the same fingerprint (a replay) or another (a reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub seq: u64,
    pub same_request: bool,
}

/// Looks up `(claim key, fingerprint)` pairs in the conversation's records
/// of messages received at or after `since` (Unix ms); one answer per pair, in order.
pub async fn find_recorded(
    stores: &Stores,
    conv: &ConvKey,
    wanted: &[(&str, &str)],
    since: i64,
) -> Result<Vec<Option<Recorded>>, Error> {
    let rows = stores.metadata.idempotency_records(conv, since).await?;
    let hashes: Vec<u64> = wanted.iter().map(|(claim, _)| key_hash(claim)).collect();
    let mut found = vec![None; wanted.len()];
    for row in &rows {
        for entry in row.chunks_exact(ENTRY_BYTES) {
            let word = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().expect("8 bytes"));
            let (hash, seq, fingerprint) = (word(0), word(8), word(16));
            for (index, _) in hashes.iter().enumerate().filter(|(_, wanted)| **wanted == hash) {
                let same_request = fingerprint == fingerprint_bits(wanted[index].1);
                found[index] = Some(Recorded { seq, same_request });
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, key: Option<&str>, text: &str) -> TailEntry {
        let envelope = Envelope {
            v: crate::envelope::ENVELOPE_VERSION,
            id: format!("m{seq}"),
            conversation_id: "c".into(),
            seq: 0,
            ts: 1_000 + seq as i64,
            sender: Sender { kind: "user".into(), id: "u1".into() },
            payload: Some(serde_json::json!({ "text": text })),
            payload_base64: None,
            content_type: None,
            attachments: Vec::new(),
            client_msg_id: key.map(str::to_string),
        };
        TailEntry { seq, ts_ms: envelope.ts, body: serde_json::to_vec(&envelope).unwrap() }
    }

    #[test]
    fn a_record_holds_the_keyed_messages_only() {
        let conv = ConvKey::new("a", "c");
        let entries = [entry(7, Some("k1"), "hi"), entry(8, None, "x"), entry(9, Some("k2"), "yo")];
        let (row, released) = record_of(&conv, &entries).unwrap();
        assert_eq!((row.seq_start, row.seq_end, row.ts_end), (7, 9, 1_009));
        assert_eq!(row.entries.len(), 2 * ENTRY_BYTES);
        assert_eq!(released, ["user:2:u1:k1", "user:2:u1:k2"]);
        assert!(record_of(&conv, &[entry(1, None, "x")]).is_none());
    }

    #[test]
    fn fingerprints_keep_their_first_64_bits() {
        assert_eq!(fingerprint_bits("00000000000000ffeeeeeeeeeeeeeeee"), 255);
        assert_eq!(fingerprint_bits("short"), 0);
    }
}
