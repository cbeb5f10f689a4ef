//! Emoji reactions to messages (README, "Edits, deletes, replies and
//! reactions"): a member adds or removes their reaction; reads show each
//! message's reactions aggregated, with whether the caller gave each; every
//! change is published live as a
//! `reaction` event. Kept in the metadata table `message_reactions` (not in
//! the log: a reaction is state, not a message), deleted by retention with
//! their message and carried by backups.
//!
//! Bounded: a message holds at most [`MAX_PER_MESSAGE`] distinct reactions
//! and [`MAX_PER_USER`] from one user; a reaction is one short token
//! (`crate::ids::reaction`).

use serde::Serialize;

use crate::auth::Caller;
use crate::clock::now_ms;
use crate::context::Context;
use crate::edits;
use crate::envelope::{Envelope, Reaction};
use crate::error::{Code, Error};
use crate::store::{ConvKey, ReactionRow};

/// Distinct reactions one message may hold.
pub const MAX_PER_MESSAGE: i64 = 32;
/// Reactions one user may give one message.
pub const MAX_PER_USER: i64 = 8;

/// What adding or removing a reaction did.
#[derive(Debug, Serialize)]
pub struct ReactionChange {
    pub seq: u64,
    pub reaction: String,
    /// False when the reaction was already there (add) or absent (remove).
    pub changed: bool,
    /// How many users now give this reaction to the message.
    pub count: i64,
}

/// Adds the caller's reaction to a message.
pub async fn add(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    message: &str,
    reaction: &str,
) -> Result<ReactionChange, Error> {
    let (conv, user, target, reaction) = prepare(ctx, caller, conversation_id, message, reaction).await?;
    let row = ReactionRow {
        app_id: conv.app_id.clone(),
        conversation_id: conv.conversation_id.clone(),
        seq: target.seq as i64,
        reaction: reaction.clone(),
        user_id: user.clone(),
        ts: target.ts,
        created_at: now_ms(),
    };
    let changed = match ctx.stores.metadata.add_reaction(&row, MAX_PER_MESSAGE, MAX_PER_USER).await? {
        None => false,
        Some(true) => true,
        Some(false) => {
            return Err(Error::new(
                Code::TooManyReactions,
                format!(
                    "a message holds at most {MAX_PER_MESSAGE} distinct reactions, and {MAX_PER_USER} from one user"
                ),
            ))
        }
    };
    finish(ctx, &conv, &user, target.seq, reaction, changed, "add").await
}

/// Removes the caller's reaction from a message; removing one that is not
/// there succeeds too.
pub async fn remove(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    message: &str,
    reaction: &str,
) -> Result<ReactionChange, Error> {
    let (conv, user, target, reaction) = prepare(ctx, caller, conversation_id, message, reaction).await?;
    let changed = ctx.stores.metadata.remove_reaction(&conv, target.seq, &reaction, &user).await?;
    finish(ctx, &conv, &user, target.seq, reaction, changed, "remove").await
}

/// Shows each message's reactions as `user` (or the app, `None`) sees them.
pub async fn attach(ctx: &Context, conv: &ConvKey, user: Option<&str>, messages: &mut [Envelope]) -> Result<(), Error> {
    let seqs: Vec<u64> = messages.iter().filter(|m| m.kind.is_none() && !m.deleted).map(|m| m.seq).collect();
    // A user id is never empty: the app matches no row as "mine".
    let counts = ctx.stores.metadata.reaction_counts(conv, &seqs, user.unwrap_or("")).await?;
    if counts.is_empty() {
        return Ok(());
    }
    for message in messages.iter_mut().filter(|m| m.kind.is_none() && !m.deleted) {
        message.reactions = counts
            .iter()
            .filter(|c| c.seq as u64 == message.seq)
            .map(|c| Reaction { reaction: c.reaction.clone(), count: c.count, mine: c.mine > 0 })
            .collect();
    }
    Ok(())
}

/// The conversation, the caller's user, the message reacted to (a member's,
/// a message, not a change event, that is not deleted) and the reaction in
/// its canonical form.
async fn prepare(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    message: &str,
    reaction: &str,
) -> Result<(ConvKey, String, Envelope, String), Error> {
    caller.require_participant()?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.writable()?.conversation_id;
    let user = caller
        .user_id
        .clone()
        .ok_or_else(|| Error::new(Code::UserRequired, "reactions belong to a user; send a user token"))?;
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let reaction = crate::ids::reaction(reaction)?;
    let target = edits::current_message(ctx, &conv, message, now_ms()).await?;
    Ok((conv, user, target, reaction))
}

/// Counts, publishes and logs a change; answers with the new count.
async fn finish(
    ctx: &Context,
    conv: &ConvKey,
    user: &str,
    seq: u64,
    reaction: String,
    changed: bool,
    action: &'static str,
) -> Result<ReactionChange, Error> {
    let counts = ctx.stores.metadata.reaction_counts(conv, &[seq], user).await?;
    let count = counts.iter().find(|c| c.reaction == reaction).map_or(0, |c| c.count);
    if changed {
        ctx.metrics.reactions_total.with_label_values(&[action]).inc();
        let event = serde_json::json!({
            "op": "reaction",
            "conversation_id": conv.conversation_id,
            "seq": seq,
            "reaction": reaction,
            "user_id": user,
            "action": if action == "add" { "added" } else { "removed" },
            "count": count,
        });
        ctx.stores.live.publish(conv, event.to_string().as_bytes()).await?;
        tracing::debug!(component = "messages", "conversation-id" = %conv.conversation_id, seq, action, "reaction");
    }
    Ok(ReactionChange { seq, reaction, changed, count })
}
