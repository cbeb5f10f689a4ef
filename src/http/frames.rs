//! WebSocket client frames (README, "WebSocket frames") as one typed enum,
//! parsed once at the edge: JSON text tagged by its `op` (serde's internally
//! tagged enum), each op with the fields it needs, every
//! conversation id in its canonical form ([`crate::ids::conversation_id`]),
//! so `unsubscribe` by `{ID}` or `urn:uuid:id` names the same subscription
//! as `subscribe` by `id`. Pure: no IO.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Code, Error};
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

/// A frame as it arrives on the wire, tagged by its `op`; unknown fields are
/// ignored. Conversation ids are made canonical after.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum WireFrame {
    Ping,
    Subscribe {
        conversation_id: String,
        since_seq: Option<u64>,
    },
    Unsubscribe {
        conversation_id: String,
    },
    Typing {
        conversation_id: String,
    },
    Send {
        conversation_id: String,
        payload: Option<Value>,
        payload_base64: Option<String>,
        content_type: Option<String>,
        /// Read as JSON first: a bad list is `invalid_attachments`, not `invalid_frame`.
        attachments: Option<Value>,
        client_msg_id: Option<String>,
        reply_to: Option<u64>,
    },
    Receipt {
        conversation_id: String,
        seq: u64,
        kind: ReceiptKind,
    },
}

/// Every op [`WireFrame`] knows; anything else is `unknown_op`.
const OPS: [&str; 6] = ["ping", "subscribe", "unsubscribe", "typing", "send", "receipt"];

/// What an `error` frame repeats of the frame it answers, so a client can
/// tell which of its frames failed.
#[derive(Debug, Default, Clone)]
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
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => return (Err(Error::new(Code::InvalidFrame, format!("not a frame: {e}"))), Echo::default()),
        };
        let Some(op) = value.get("op").and_then(Value::as_str).map(str::to_string) else {
            return (Err(Error::new(Code::InvalidFrame, "a frame is a JSON object with an `op`")), Echo::default());
        };
        let text_field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
        let echo = Echo {
            op: Some(op.clone()),
            conversation_id: text_field("conversation_id").map(|id| canonical(&id)),
            client_msg_id: text_field("client_msg_id"),
        };
        if !OPS.contains(&op.as_str()) {
            let shown: String = op.chars().take(32).collect();
            return (Err(Error::new(Code::UnknownOp, format!("unknown op {shown:?}"))), echo);
        }
        let frame = serde_json::from_value::<WireFrame>(value)
            .map_err(|e| Error::new(Code::InvalidFrame, format!("not a valid `{op}` frame: {e}")))
            .and_then(ClientFrame::from_wire);
        (frame, echo)
    }

    fn from_wire(frame: WireFrame) -> Result<ClientFrame, Error> {
        Ok(match frame {
            WireFrame::Ping => ClientFrame::Ping,
            WireFrame::Subscribe { conversation_id, since_seq } => {
                ClientFrame::Subscribe { conversation_id: canonical(&conversation_id), since_seq }
            }
            WireFrame::Unsubscribe { conversation_id } => {
                ClientFrame::Unsubscribe { conversation_id: canonical(&conversation_id) }
            }
            WireFrame::Typing { conversation_id } => {
                ClientFrame::Typing { conversation_id: canonical(&conversation_id) }
            }
            WireFrame::Send {
                conversation_id,
                payload,
                payload_base64,
                content_type,
                attachments,
                client_msg_id,
                reply_to,
            } => {
                let attachments = match attachments {
                    None => Vec::new(),
                    Some(value) => serde_json::from_value(value)
                        .map_err(|e| Error::new(Code::InvalidAttachments, e.to_string()))?,
                };
                let request =
                    SendRequest { payload, payload_base64, content_type, attachments, client_msg_id, reply_to };
                ClientFrame::Send { conversation_id: canonical(&conversation_id), request }
            }
            WireFrame::Receipt { conversation_id, seq, kind } => ClientFrame::Receipt {
                conversation_id: canonical(&conversation_id),
                request: ReceiptRequest { seq, kind },
            },
        })
    }
}

/// A conversation id in canonical form. One that is no UUID is kept as
/// given: the domain answers it as it answers any conversation the caller
/// cannot see.
fn canonical(id: &str) -> String {
    crate::ids::conversation_id(id).unwrap_or_else(|| id.to_string())
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
            assert_eq!(ClientFrame::parse(text).unwrap_err().code.as_str(), code, "{text}");
        }
    }
}
