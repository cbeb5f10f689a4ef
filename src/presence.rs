//! Presence (README, "Presence"): who is online in a conversation, from the
//! live WebSocket subscriptions of its members on every instance.
//!
//! Each subscribed session is one field of the conversation's TTL'd state
//! hash (`presence:<app>:<conversation>`, field `<user>\x1f<session>`,
//! value its expiry in Unix ms). A session refreshes its fields every
//! [`REFRESH`] and removes them when it unsubscribes or closes; a session
//! that vanishes without closing (a crashed instance) drops out within
//! [`TTL`]. A user's first session in a conversation publishes a `presence`
//! frame with `status: online`, their last one leaving publishes `offline`.
//! The cost per connection is bounded: one state write per subscription per
//! [`REFRESH`], and `ws.max_subscriptions` bounds the subscriptions.

use std::time::Duration;

use serde::Serialize;

use crate::auth::Caller;
use crate::clock::now_ms;
use crate::context::Context;
use crate::error::Error;
use crate::keys::Scope;
use crate::store::ConvKey;

/// How long a session's presence lasts without a refresh.
pub const TTL: Duration = Duration::from_secs(90);
/// How often a session refreshes its presence.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Between a user id and a session id: a control character, which user ids never contain.
const SEPARATOR: char = '\u{1f}';

fn state_key(conv: &ConvKey) -> String {
    format!("presence:{}:{}", conv.app_id, conv.conversation_id)
}

fn field(user: &str, session: &str) -> String {
    format!("{user}{SEPARATOR}{session}")
}

/// The users online in a conversation.
#[derive(Debug, Serialize)]
pub struct Presence {
    pub conversation_id: String,
    /// Distinct users with a live session, sorted.
    pub users: Vec<String>,
}

/// The live sessions as (user, field); expired fields are removed on the way.
async fn sessions(ctx: &Context, key: &str) -> Result<Vec<(String, String)>, Error> {
    let now = now_ms();
    let (mut live, mut expired) = (Vec::new(), Vec::new());
    for (field, value) in ctx.stores.state.state_get(key).await? {
        let until = std::str::from_utf8(&value).ok().and_then(|text| text.parse::<i64>().ok()).unwrap_or(0);
        match field.split_once(SEPARATOR) {
            Some((user, _)) if until > now => live.push((user.to_string(), field)),
            _ => expired.push(field),
        }
    }
    if !expired.is_empty() {
        ctx.stores.state.state_remove(key, &expired).await?;
    }
    Ok(live)
}

async fn publish(ctx: &Context, conv: &ConvKey, user: &str, status: &str) -> Result<(), Error> {
    let event = serde_json::json!({
        "op": "presence",
        "conversation_id": conv.conversation_id,
        "user_id": user,
        "status": status,
    });
    ctx.stores.live.publish(conv, event.to_string().as_bytes()).await?;
    Ok(())
}

/// Marks `session` of `user` present (or still present) in `conv`;
/// publishes `online` when it is the user's first session there.
pub async fn join(ctx: &Context, conv: &ConvKey, user: &str, session: &str) -> Result<(), Error> {
    let key = state_key(conv);
    let was_online = sessions(ctx, &key).await?.iter().any(|(u, _)| u == user);
    refresh(ctx, conv, user, session).await?;
    if !was_online {
        publish(ctx, conv, user, "online").await?;
    }
    Ok(())
}

/// Moves `session`'s presence in `conv` [`TTL`] ahead.
pub async fn refresh(ctx: &Context, conv: &ConvKey, user: &str, session: &str) -> Result<(), Error> {
    let until = (now_ms() + TTL.as_millis() as i64).to_string();
    ctx.stores.state.state_set(&state_key(conv), &field(user, session), until.as_bytes(), TTL).await?;
    Ok(())
}

/// Removes `session`'s presence in `conv`; publishes `offline` when the user
/// has no other session there.
pub async fn leave(ctx: &Context, conv: &ConvKey, user: &str, session: &str) -> Result<(), Error> {
    let key = state_key(conv);
    ctx.stores.state.state_remove(&key, &[field(user, session)]).await?;
    if !sessions(ctx, &key).await?.iter().any(|(u, _)| u == user) {
        publish(ctx, conv, user, "offline").await?;
    }
    Ok(())
}

/// `GET .../presence`: the conversation's online users, for its members and the app.
pub async fn list(ctx: &Context, caller: &Caller, conversation_id: &str) -> Result<Presence, Error> {
    caller.require_scope(Scope::Read)?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let mut users: Vec<String> = sessions(ctx, &state_key(&conv)).await?.into_iter().map(|(user, _)| user).collect();
    users.sort();
    users.dedup();
    Ok(Presence { conversation_id, users })
}
