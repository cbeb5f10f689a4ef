//! WebSocket client frames (README, "WebSocket frames") as one typed enum, parsed once at the
//! edge: JSON text with an `op`, each op with the fields it needs, every
//! conversation id in its canonical form ([`crate::ids::conversation_id`]),
//! so `unsubscribe` by `{ID}` or `urn:uuid:id` names the same subscription
//! as `subscribe` by `id`. Pure: no IO.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::Error;
use crate::messages::SendRequest;
use crate::receipts::{ReceiptKind, ReceiptRequest};

/// One frame a client sent.
#[derive(Debug)]
pub enum ClientFrame {
    Ping,
    /// Replay everything after `since_seq` (when given), then live.
    Subscribe {
        conversation_id: String,
        since_seq: Option<u64>,
    },
    Unsubscribe {
        conversation_id: String,
    },
    Send {
        conversation_id: String,
        request: SendRequest,
    },
    Receipt {
        conversation_id: String,
        request: ReceiptRequest,
    },
    Typing {
        conversation_id: String,
    },
}

/// The loose shape every frame is first read into.
#[derive(Deserialize)]
struct RawFrame {
    op: String,
    conversation_id: Option<String>,
    since_seq: Option<u64>,
    seq: Option<u64>,
    kind: Option<String>,
    client_msg_id: Option<String>,
    payload: Option<Value>,
    payload_base64: Option<String>,
    content_type: Option<String>,
    attachments: Option<Value>,
}

/// What an `error` frame repeats of the frame it answers, so a client can
/// tell which of its frames failed.
#[derive(Debug, Default)]
pub struct Echo {
    pub op: Option<String>,
    pub conversation_id: Option<String>,
    pub client_msg_id: Option<String>,
}

impl Echo {
    /// The fields as they appear in an `error` frame.
    pub fn fields(&self) -> Value {
        json!({"for": self.op, "conversation_id": self.conversation_id, "client_msg_id": self.client_msg_id})
    }
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<ClientFrame, Error> {
        Self::parse_with_echo(text).0
    }

    /// Parses one text frame, and says what an error answer should repeat.
    pub fn parse_with_echo(text: &str) -> (Result<ClientFrame, Error>, Echo) {
        let raw: RawFrame = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(e) => return (Err(Error::invalid("invalid_frame", format!("not a frame: {e}"))), Echo::default()),
        };
        // A conversation id that is no UUID is kept as given: the domain
        // answers it as it answers any conversation the caller cannot see.
        let conversation_id =
            raw.conversation_id.as_deref().map(|id| crate::ids::conversation_id(id).unwrap_or_else(|| id.to_string()));
        let echo = Echo {
            op: Some(raw.op.clone()),
            conversation_id: conversation_id.clone(),
            client_msg_id: raw.client_msg_id.clone(),
        };
        (Self::from_raw(raw, conversation_id), echo)
    }

    fn from_raw(raw: RawFrame, conversation_id: Option<String>) -> Result<ClientFrame, Error> {
        let op = raw.op.as_str();
        let conversation = || {
            conversation_id
                .clone()
                .ok_or_else(|| Error::invalid("invalid_frame", format!("`{op}` needs a conversation_id")))
        };
        Ok(match op {
            "ping" => ClientFrame::Ping,
            "subscribe" => ClientFrame::Subscribe { conversation_id: conversation()?, since_seq: raw.since_seq },
            "unsubscribe" => ClientFrame::Unsubscribe { conversation_id: conversation()? },
            "typing" => ClientFrame::Typing { conversation_id: conversation()? },
            "send" => {
                let attachments = match raw.attachments {
                    None => Vec::new(),
                    Some(value) => serde_json::from_value(value)
                        .map_err(|e| Error::invalid("invalid_attachments", e.to_string()))?,
                };
                let request = SendRequest {
                    payload: raw.payload,
                    payload_base64: raw.payload_base64,
                    content_type: raw.content_type,
                    attachments,
                    client_msg_id: raw.client_msg_id,
                };
                ClientFrame::Send { conversation_id: conversation()?, request }
            }
            "receipt" => {
                let kind = match raw.kind.as_deref() {
                    Some("read") => ReceiptKind::Read,
                    Some("delivered") => ReceiptKind::Delivered,
                    _ => return Err(Error::invalid("invalid_frame", "receipt needs kind delivered or read")),
                };
                let seq = raw.seq.ok_or_else(|| Error::invalid("invalid_frame", "receipt needs a seq"))?;
                ClientFrame::Receipt { conversation_id: conversation()?, request: ReceiptRequest { seq, kind } }
            }
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(Error::invalid("unknown_op", format!("unknown op {shown:?}")));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_canonical_in_every_frame() {
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        for form in [
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e5504410b1426f9247bb680e5fe0c8",
        ] {
            let text = json!({"op": "unsubscribe", "conversation_id": form}).to_string();
            match ClientFrame::parse(&text).unwrap() {
                ClientFrame::Unsubscribe { conversation_id } => assert_eq!(conversation_id, id),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn malformed_frames_are_refused_with_a_code() {
        for (text, code) in [
            ("not json", "invalid_frame"),
            (r#"{"op":"subscribe"}"#, "invalid_frame"),
            (r#"{"op":"receipt","conversation_id":"x","seq":1}"#, "invalid_frame"),
            (r#"{"op":"receipt","conversation_id":"x","kind":"read"}"#, "invalid_frame"),
            (r#"{"op":"dance"}"#, "unknown_op"),
            (r#"{"op":"send","conversation_id":"x","payload":1,"attachments":3}"#, "invalid_attachments"),
            (r#"{"op":"subscribe","conversation_id":"x","since_seq":-1}"#, "invalid_frame"),
        ] {
            assert_eq!(ClientFrame::parse(text).unwrap_err().code, code, "{text}");
        }
    }
}
