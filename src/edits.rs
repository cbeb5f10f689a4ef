//! One message by seq or id, edits and deletes (ARCHITECTURE.md, "Edits
//! and deletes").
//!
//! Segments are immutable, so a change is itself an event in the
//! conversation's log, with its own seq: an envelope of `kind` `edit`
//! (carrying the new content) or `delete`, naming its `target_seq`. The
//! latest state of each changed message is also kept in the metadata table
//! `message_changes`, and every read of messages
//! ([`crate::timeline::Timeline::apply_changes`]: history pages, WebSocket
//! catch-up, one message, idempotent replays) applies it to the immutable
//! records:
//! - an edited message reads with the newest edit's content and `edited_at`;
//! - a deleted message reads as `deleted: true` with no content, and so does
//!   every edit event of it, from the tail, a segment or a restored backup
//!   (the table is in backups);
//! - an edit event reads with its target's current content, never an older
//!   version.
//!
//! A delete is recorded in the table first and only then appended as an
//! event, so a crash in between cannot leave a deleted message readable; a
//! retried delete appends the event that is missing. An edit is appended
//! first and recorded after; a crash in between loses that edit's effect,
//! and the client, which got no answer, retries it.

use serde::Deserialize;

use crate::auth::Caller;
use crate::context::Context;
use crate::envelope::{EditedContent, Envelope, EventKind};
use crate::error::{Code, Error};
use crate::ids::{message_ref, MessageRef};
use crate::membership::Role;
use crate::messages::{append_event, new_envelope, sender_of, validate, SendRequest};
use crate::store::{ConvKey, MessageChangeRow, Metadata};

/// The body of `PATCH /v1/conversations/{id}/messages/{message}`: the new
/// content, as a send gives it (attachments stay as sent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Edits the caller's own message; returns it as reads now see it.
pub async fn edit(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    message: &str,
    request: EditRequest,
    now: i64,
) -> Result<Envelope, Error> {
    caller.require_participant()?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.writable()?.conversation_id;
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let target = changeable(ctx, &conv, message, now).await?;
    let seq = target.seq;
    if target.sender != sender_of(caller) {
        return Err(Error::new(Code::NotSender, "only the sender may edit a message"));
    }
    let request = SendRequest {
        payload: request.payload,
        payload_base64: request.payload_base64,
        content_type: request.content_type,
        attachments: Vec::new(),
        client_msg_id: None,
        reply_to: None,
    };
    validate(ctx, &request, None)?;
    if deleted(&ctx.stores.metadata, &conv, seq).await?.is_some() {
        return Err(message_deleted(seq));
    }
    let event = Envelope {
        kind: Some(EventKind::Edit),
        target_seq: Some(seq),
        payload: request.payload,
        payload_base64: request.payload_base64,
        content_type: request.content_type,
        ..new_envelope(caller, &conversation_id, now)
    };
    let event = append_event(ctx, caller, &conversation_id, event, now).await?;
    let content = serde_json::to_string(&EditedContent::of(&event)).expect("content serializes");
    ctx.stores.metadata.record_edit(&conv, seq, target.ts, event.seq, event.ts, &content).await?;
    ctx.metrics.message_changes_total.with_label_values(&["edit"]).inc();
    tracing::info!(
        component = "messages",
        "conversation-id" = %conversation_id,
        seq,
        "event-seq" = event.seq,
        "message edited"
    );
    let mut message = target;
    ctx.timeline.apply_changes(&conv, std::slice::from_mut(&mut message)).await?;
    if message.deleted {
        // Deleted meanwhile: the edit is in the log, but the message stays deleted.
        return Err(message_deleted(seq));
    }
    Ok(message)
}

/// Deletes a message: the sender's own, or any as a moderator, an owner or
/// the app, also in an archived conversation (moderation goes on). Deleting
/// a deleted message succeeds again.
pub async fn delete(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    message: &str,
    now: i64,
) -> Result<(), Error> {
    caller.require_participant()?;
    let access = ctx.membership.require_access(caller, conversation_id).await?;
    let conv = ConvKey::new(&caller.app_id, &access.conversation_id);
    let target = changeable(ctx, &conv, message, now).await?;
    let seq = target.seq;
    let may = access.holds(caller, Role::Moderator) || target.sender == sender_of(caller);
    if !may {
        return Err(Error::new(Code::NotSender, "only the sender, a moderator or an owner may delete a message"));
    }
    let metadata = &ctx.stores.metadata;
    match deleted(metadata, &conv, seq).await? {
        // Deleted, and the event is in the log: nothing left to do.
        Some(change) if change.delete_seq.is_some() => return Ok(()),
        Some(_) => {}
        None => metadata.record_delete(&conv, seq, target.ts, now).await?,
    }
    let event = Envelope {
        kind: Some(EventKind::Delete),
        target_seq: Some(seq),
        ..new_envelope(caller, &conv.conversation_id, now)
    };
    let event = append_event(ctx, caller, &conv.conversation_id, event, now).await?;
    metadata.record_delete_seq(&conv, seq, event.seq).await?;
    ctx.metrics.message_changes_total.with_label_values(&["delete"]).inc();
    tracing::info!(
        component = "messages",
        "conversation-id" = %conv.conversation_id,
        seq,
        "event-seq" = event.seq,
        "message deleted"
    );
    Ok(())
}

/// How far a message's receive time may lie from its id's timestamp: both
/// are taken from the clock of the instance that accepted it, within a
/// moment of each other.
const ID_SLACK_MS: i64 = 2_000;
/// Messages looked at, at most, to find one by id: those received around its
/// id's timestamp (a busy conversation's two seconds hold far fewer).
const ID_SCAN: u64 = 5_000;

/// A message a path names, as reads show it, refused when it is a change
/// event or deleted: what reactions attach to.
pub async fn current_message(ctx: &Context, conv: &ConvKey, raw: &str, now: i64) -> Result<Envelope, Error> {
    let mut message = changeable(ctx, conv, raw, now).await?;
    ctx.timeline.apply_changes(conv, std::slice::from_mut(&mut message)).await?;
    if message.deleted {
        return Err(message_deleted(message.seq));
    }
    Ok(message)
}

/// The message a path names — by seq, or by id — as stored, if inside the
/// retention window.
pub async fn locate(ctx: &Context, conv: &ConvKey, raw: &str, now: i64) -> Result<Envelope, Error> {
    let cutoff = ctx.timeline.retention_cutoff(now);
    let found = match message_ref(raw) {
        Some(MessageRef::Seq(seq)) if seq > i64::MAX as u64 => None,
        Some(MessageRef::Seq(seq)) => {
            ctx.timeline.read(conv, seq, seq, cutoff).await?.into_iter().find(|m| m.seq == seq)
        }
        Some(MessageRef::Id { id, ts_ms }) => by_id(ctx, conv, &id, ts_ms, cutoff).await?,
        None => {
            let why = "a message is named by its seq (digits, no leading zero) or its id (a hyphenated UUIDv7)";
            return Err(Error::new(Code::InvalidRequest, why));
        }
    };
    found.ok_or_else(|| Error::new(Code::MessageNotFound, format!("no message {raw} here (or it is past retention)")))
}

/// Finds a message by id among those received around its id's timestamp.
async fn by_id(ctx: &Context, conv: &ConvKey, id: &str, ts_ms: i64, cutoff: i64) -> Result<Option<Envelope>, Error> {
    let last = ctx.timeline.last_seq(conv).await?;
    let mut next = ctx.timeline.first_seq_at_or_after(conv, ts_ms - ID_SLACK_MS, 1).await?;
    let end = last.min(next.saturating_add(ID_SCAN - 1));
    while next <= end {
        let upper = (next + 499).min(end);
        for message in ctx.timeline.read(conv, next, upper, cutoff).await? {
            if message.id == id {
                return Ok(Some(message));
            }
            if message.ts > ts_ms + ID_SLACK_MS {
                return Ok(None);
            }
        }
        next = upper + 1;
    }
    Ok(None)
}

/// The message a path names, refused when it is itself a change event.
async fn changeable(ctx: &Context, conv: &ConvKey, raw: &str, now: i64) -> Result<Envelope, Error> {
    let target = locate(ctx, conv, raw, now).await?;
    if target.kind.is_some() {
        let seq = target.seq;
        return Err(Error::new(Code::NotEditable, format!("seq {seq} is an edit or delete event, not a message")));
    }
    Ok(target)
}

/// The change row of a deleted message, if it is deleted.
async fn deleted(metadata: &Metadata, conv: &ConvKey, seq: u64) -> Result<Option<MessageChangeRow>, Error> {
    let rows = metadata.message_changes(conv, &[seq]).await?;
    Ok(rows.into_iter().find(|row| row.deleted_at.is_some()))
}

fn message_deleted(seq: u64) -> Error {
    Error::new(Code::MessageDeleted, format!("the message at seq {seq} was deleted"))
}
