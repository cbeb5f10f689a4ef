//! Read and delivered receipts: per member, the highest delivered and read
//! seq of a conversation. Ephemeral: kept in the tail's TTL'd
//! state for the retention window, never in segments, published live.
//!
//! Marks only move forward: a lower seq never moves one back, and marking
//! something read marks it delivered too.

use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::context::Context;
use crate::error::{Code, Error};
use crate::keys::Scope;
use crate::store::ConvKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRequest {
    pub seq: u64,
    pub kind: ReceiptKind,
}

/// One member's marks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Marks {
    pub user_id: String,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

#[derive(Debug, Serialize)]
pub struct ReceiptsView {
    pub last_seq: u64,
    pub receipts: Vec<Marks>,
    /// The caller's unread count: messages after both their read mark and
    /// the last message they sent (sending implies having read what came
    /// before, and your own messages are never unread); absent for an app caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

fn state_key(conv: &ConvKey) -> String {
    format!("receipts:{}:{}", conv.app_id, conv.conversation_id)
}

/// Moves the caller's mark forward and publishes the new marks.
pub async fn mark(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    request: ReceiptRequest,
) -> Result<Marks, Error> {
    caller.require_participant()?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let user = caller
        .user_id
        .clone()
        .ok_or_else(|| Error::new(Code::UserRequired, "receipts belong to a user; send a user token"))?;
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let last_seq = ctx.timeline.last_seq(&conv).await?;
    if request.seq == 0 || request.seq > last_seq {
        return Err(Error::new(
            Code::SeqOutOfRange,
            format!("seq must be between 1 and the conversation's last seq ({last_seq})"),
        ));
    }
    let ttl = state_ttl(ctx);
    let key = state_key(&conv);
    let delivered = ctx.stores.state.state_raise(&key, &format!("{user}:delivered"), request.seq, ttl).await?;
    let read = match request.kind {
        ReceiptKind::Read => ctx.stores.state.state_raise(&key, &format!("{user}:read"), request.seq, ttl).await?,
        ReceiptKind::Delivered => current(ctx, &key, &user).await?.read_seq,
    };
    let marks = Marks { user_id: user, delivered_seq: delivered, read_seq: read };
    let event = serde_json::json!({
        "op": "receipt",
        "conversation_id": conversation_id,
        "user_id": marks.user_id,
        "delivered_seq": marks.delivered_seq,
        "read_seq": marks.read_seq,
    });
    ctx.stores.live.publish(&conv, event.to_string().as_bytes()).await?;
    Ok(marks)
}

/// `user`'s read mark and unread count in a conversation whose last seq is
/// `last_seq` (as [`list`] counts it).
pub async fn unread(ctx: &Context, conv: &ConvKey, user: &str, last_seq: u64) -> Result<(u64, u64), Error> {
    let (marks, sent) = all_marks(ctx, &state_key(conv)).await?;
    Ok(marks_of(&marks, &sent, user, last_seq))
}

/// `user`'s read mark, and the messages after both it and the last message
/// they sent.
fn marks_of(marks: &[Marks], sent: &[(String, u64)], user: &str, last_seq: u64) -> (u64, u64) {
    let read = marks.iter().find(|m| m.user_id == user).map_or(0, |m| m.read_seq);
    let sent = sent.iter().find(|(u, _)| u == user).map_or(0, |(_, seq)| *seq);
    (read, last_seq.saturating_sub(read.max(sent)))
}

/// Remembers the last seq `user` sent, so their own messages never count as
/// unread for them. Not published: the message itself says as much.
pub async fn note_sent(ctx: &Context, conv: &ConvKey, user: &str, seq: u64) -> Result<(), Error> {
    ctx.stores.state.state_raise(&state_key(conv), &format!("{user}:{SENT}"), seq, state_ttl(ctx)).await?;
    Ok(())
}

/// The state field suffix of the last seq a user sent.
const SENT: &str = "sent";

fn state_ttl(ctx: &Context) -> std::time::Duration {
    ctx.config.retention.period
}

async fn current(ctx: &Context, key: &str, user: &str) -> Result<Marks, Error> {
    Ok(all_marks(ctx, key).await?.0.into_iter().find(|m| m.user_id == user).unwrap_or(Marks {
        user_id: user.to_string(),
        delivered_seq: 0,
        read_seq: 0,
    }))
}

/// Every member's marks, and the last seq each member sent.
async fn all_marks(ctx: &Context, key: &str) -> Result<(Vec<Marks>, Vec<(String, u64)>), Error> {
    let mut marks: Vec<Marks> = Vec::new();
    let mut sent = Vec::new();
    for (field, value) in ctx.stores.state.state_get(key).await? {
        let Some((user, kind)) = field.rsplit_once(':') else { continue };
        let seq = std::str::from_utf8(&value).ok().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        if kind == SENT {
            sent.push((user.to_string(), seq));
            continue;
        }
        let index = match marks.iter().position(|m| m.user_id == user) {
            Some(index) => index,
            None => {
                marks.push(Marks { user_id: user.to_string(), delivered_seq: 0, read_seq: 0 });
                marks.len() - 1
            }
        };
        match kind {
            "delivered" => marks[index].delivered_seq = seq,
            "read" => marks[index].read_seq = seq,
            _ => {}
        }
    }
    Ok((marks, sent))
}

/// Every member's marks, and the caller's unread count.
pub async fn list(ctx: &Context, caller: &Caller, conversation_id: &str) -> Result<ReceiptsView, Error> {
    caller.require_scope(Scope::Read)?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let last_seq = ctx.timeline.last_seq(&conv).await?;
    let (receipts, sent) = all_marks(ctx, &state_key(&conv)).await?;
    let unread = caller.user_id.as_ref().map(|user| marks_of(&receipts, &sent, user, last_seq).1);
    Ok(ReceiptsView { last_seq, receipts, unread })
}
