//! Idempotency keys: what names a claim, what makes two sends the same
//! request, and the compact durable record of the keys a flush moved out of
//! the tail (ARCHITECTURE.md, "Idempotency").
//!
//! A tail that holds its claims in memory (Redis) releases them once their
//! messages are in a segment: the flush first writes one record row per
//! conversation range — 16 bytes per keyed message (key hash, seq) — and
//! only then drops the claims. A later retry of such a key
//! is answered from that record; the tail tells the sender when to look
//! ([`crate::store::AppendOutcome::CheckRecord`]).

use sha2::{Digest, Sha256};

use crate::envelope::{Envelope, Sender};
use crate::error::Error;
use crate::store::{ConvKey, IdempotencyRecordRow, Stores, TailEntry};

/// Bytes per keyed message in a record row.
const ENTRY_BYTES: usize = 16;

/// Idempotency keys are scoped to their sender (app, conversation, sender and
/// key): two members who pick the same key never see each other's message.
/// The sender id's length keeps the parts apart whatever characters they hold.
pub fn claim_key(sender: &Sender, key: &str) -> String {
    format!("{}:{}:{}:{key}", sender.kind, sender.id.len(), sender.id)
}

/// What makes two sends "the same request": sender and content, not the
/// server-assigned id or time. 32 hex characters.
pub fn fingerprint(envelope: &Envelope) -> String {
    let mut canonical = serde_json::json!({
        "sender": envelope.sender,
        "payload": envelope.payload,
        "payload_base64": envelope.payload_base64,
        "content_type": envelope.content_type,
        "attachments": envelope.attachments,
    });
    // Only when present, so that every key claimed before replies existed
    // keeps its fingerprint.
    if let Some(parent) = envelope.reply_to {
        canonical["reply_to"] = parent.into();
    }
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// A claim key's 64-bit name in records. Within one conversation's window
/// (even a million keys) two keys share one with odds below 10⁻⁷.
fn key_hash(claim_key: &str) -> u64 {
    let digest = Sha256::digest(claim_key.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What a flush needs of a tail entry to record its key: the rest of the
/// envelope is skipped, not decoded.
#[derive(serde::Deserialize)]
struct KeyedEntry {
    sender: Sender,
    client_msg_id: Option<String>,
}

/// One conversation's keyed messages among `entries` (a flushed range): the
/// record row to write, and the claim keys it lets the tail release. `None`
/// when no message in the range had a key. A body that does not decode is
/// left out: its claim, if any, is not released and lives out its TTL.
pub fn record_of(conv: &ConvKey, entries: &[TailEntry]) -> Option<(IdempotencyRecordRow, Vec<String>)> {
    let mut bytes = Vec::new();
    let mut released = Vec::new();
    for entry in entries {
        let Ok(KeyedEntry { sender, client_msg_id: Some(key) }) = serde_json::from_slice(&entry.body) else {
            continue;
        };
        let claim = claim_key(&sender, &key);
        bytes.extend_from_slice(&key_hash(&claim).to_le_bytes());
        bytes.extend_from_slice(&entry.seq.to_le_bytes());
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

/// Looks up claim keys in the conversation's records of messages received
/// at or after `since` (Unix ms): the seq each was used for, one answer per
/// key, in order. Whether a retry is the same request is for the caller to
/// tell from the original message ([`fingerprint`]).
pub async fn find_recorded(
    stores: &Stores,
    conv: &ConvKey,
    keys: &[&str],
    since: i64,
) -> Result<Vec<Option<u64>>, Error> {
    let rows = stores.metadata.idempotency_records(conv, since).await?;
    let hashes: Vec<u64> = keys.iter().map(|key| key_hash(key)).collect();
    let mut found = vec![None; keys.len()];
    for row in &rows {
        for entry in row.chunks_exact(ENTRY_BYTES) {
            let hash = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
            let seq = u64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
            for (slot, _) in hashes.iter().enumerate().filter(|(_, wanted)| **wanted == hash) {
                found[slot] = Some(seq);
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
            reply_to: None,
            client_msg_id: key.map(str::to_string),
            kind: None,
            target_seq: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            reply_count: 0,
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
        assert_eq!(row.entries[8..16], 7u64.to_le_bytes());
        assert_eq!(row.entries[16..24], key_hash("user:2:u1:k2").to_le_bytes());
        assert_eq!(released, ["user:2:u1:k1", "user:2:u1:k2"]);
        assert!(record_of(&conv, &[entry(1, None, "x")]).is_none());
    }
}
