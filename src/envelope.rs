//! The message envelope: what clients see and what segments store, and its
//! record codec (JSON, MessagePack or the raw tail body). A shared domain
//! primitive: sending writes envelopes, the timeline, history, catch-up and
//! flush read or re-encode them.

use serde::{Deserialize, Serialize};

use crate::error::{Code, Error};
use crate::segment::Codec;
use crate::store::TailEntry;

/// Format version of [`Envelope`]; bumped on any incompatible change.
pub const ENVELOPE_VERSION: u32 = 1;

/// Who sent a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// `user`, or `app` for an admin key acting as the app.
    pub kind: String,
    /// The user id, or the app id.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Object key of the uploaded attachment.
    pub key: String,
    pub content_type: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

/// A message as clients and segments see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    /// UUIDv7, server-assigned.
    pub id: String,
    pub conversation_id: String,
    /// Per-conversation, gap-free, from 1. Absent in the tail body (the tail
    /// stores it as the entry's id) and filled in on read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// Server receive time, Unix ms.
    pub ts: i64,
    pub sender: Sender,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Binary payload, base64 (with `content_type`), instead of `payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The seq of the message this one replies to (its thread's parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// A change event's kind; absent for a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventKind>,
    /// The seq a change event edits or deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<u64>,
    /// Set by reads, never stored: when the message (or an edit event's
    /// target) was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    /// Set by reads, never stored: the message (or an edit event's target)
    /// was deleted, and its content is not returned.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Set by reads, never stored: the message's reactions, in the order
    /// each was first given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// Set by history pages and one message, never stored: how many
    /// messages reply to this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_count: u64,
}

/// One reaction to a message as reads show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub reaction: String,
    /// How many users gave it.
    pub count: i64,
    /// Whether the reader gave it.
    pub mine: bool,
}

/// What a change event in a conversation's log does to its `target_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Edit,
    Delete,
}

/// The content an edit sets, as the edit event carries it and as the
/// latest state of an edited message is kept (`crate::edits`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditedContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl EditedContent {
    pub fn of(envelope: &Envelope) -> EditedContent {
        EditedContent {
            payload: envelope.payload.clone(),
            payload_base64: envelope.payload_base64.clone(),
            content_type: envelope.content_type.clone(),
        }
    }

    /// Replaces `envelope`'s content with this one (attachments stay).
    pub fn apply_to(self, envelope: &mut Envelope) {
        envelope.payload = self.payload;
        envelope.payload_base64 = self.payload_base64;
        envelope.content_type = self.content_type;
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Envelope {
    /// Rebuilds an envelope from a tail entry.
    pub fn from_entry(entry: &TailEntry) -> Result<Envelope, Error> {
        let mut envelope: Envelope = serde_json::from_slice(&entry.body).map_err(|e| {
            tracing::error!(component = "messages", seq = entry.seq, error = %e, "undecodable tail entry");
            Error::new(Code::Internal, "internal error")
        })?;
        envelope.seq = entry.seq;
        Ok(envelope)
    }

    /// The WebSocket op that carries it: `message`, or `message.updated` /
    /// `message.deleted` for a change event.
    pub fn op(&self) -> &'static str {
        match self.kind {
            None => "message",
            Some(EventKind::Edit) => "message.updated",
            Some(EventKind::Delete) => "message.deleted",
        }
    }

    /// Drops the content (a deleted message's, or an edit of one).
    pub fn redact(&mut self) {
        self.payload = None;
        self.payload_base64 = None;
        self.content_type = None;
        self.attachments.clear();
        self.reactions.clear();
        self.deleted = true;
    }
}

/// Encodes a tail entry as a segment record in `codec`: JSON and MessagePack
/// carry the whole envelope (seq included, self-describing); raw stores the
/// tail body as is (its seq is its position in the block).
pub fn encode_record(codec: Codec, entry: &TailEntry) -> Result<Vec<u8>, Error> {
    match codec {
        Codec::Raw => Ok(entry.body.clone()),
        Codec::Json => Ok(serde_json::to_vec(&Envelope::from_entry(entry)?).expect("envelopes serialize")),
        Codec::Msgpack => rmp_serde::to_vec_named(&Envelope::from_entry(entry)?)
            .map_err(|e| Error::new(Code::Internal, format!("msgpack encoding failed: {e}"))),
    }
}

/// Decodes a segment record written by [`encode_record`]; `seq` is the
/// record's position-derived seq.
pub fn decode_record(codec: Codec, seq: u64, bytes: &[u8]) -> Result<Envelope, Error> {
    let corrupt = |e: String| Error::new(Code::CorruptSegment, format!("undecodable record at seq {seq}: {e}"));
    let mut envelope: Envelope = match codec {
        Codec::Raw | Codec::Json => serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?,
        Codec::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?,
    };
    envelope.seq = seq;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_the_tail_body_has_no_seq() {
        let envelope = Envelope {
            v: ENVELOPE_VERSION,
            id: "0190c0de-0000-7000-8000-000000000001".into(),
            conversation_id: "0190c0de-0000-7000-8000-000000000002".into(),
            seq: 0,
            ts: 1_790_000_000_000,
            sender: Sender { kind: "user".into(), id: "alice".into() },
            payload: Some(serde_json::json!({"text": "hi"})),
            payload_base64: None,
            content_type: None,
            attachments: vec![],
            reply_to: None,
            client_msg_id: Some("c-1".into()),
            kind: None,
            target_seq: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            reply_count: 0,
        };
        let body = serde_json::to_vec(&envelope).unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("\"seq\""));
        let entry = TailEntry { seq: 7, ts_ms: envelope.ts, body };
        let read = Envelope::from_entry(&entry).unwrap();
        assert_eq!(read, Envelope { seq: 7, ..envelope });
        for codec in [Codec::Json, Codec::Msgpack, Codec::Raw] {
            let record = encode_record(codec, &entry).unwrap();
            assert_eq!(decode_record(codec, 7, &record).unwrap(), read, "{codec:?}");
        }
    }
}
