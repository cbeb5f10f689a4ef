//! Typing indicators: ephemeral, never stored, published on the
//! conversation's live channel; at most one per user and conversation every
//! 2 s (extra ones are dropped silently).

use serde_json::json;

use crate::auth::Caller;
use crate::context::Context;
use crate::error::{Code, Error};
use crate::ratelimit::Bucket;
use crate::store::ConvKey;

/// One indicator every `1 / RATE` seconds per user and conversation.
const RATE: f64 = 0.5;

/// Tells the conversation's subscribers that the caller's user is typing.
pub async fn typing(ctx: &Context, caller: &Caller, conversation_id: &str) -> Result<(), Error> {
    caller.require_participant()?;
    let user = caller.user_id.as_ref().ok_or_else(|| Error::new(Code::UserRequired, "typing belongs to a user"))?;
    let id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let bucket = Bucket::new(format!("t:{id}:{user}"), RATE, 1);
    if ctx.stores.coordination.rate_limit(&caller.app_id, &[bucket], 1).await?.granted == 0 {
        return Ok(());
    }
    let event = json!({"op": "typing", "conversation_id": id, "user_id": user});
    ctx.stores.live.publish(&ConvKey::new(&caller.app_id, &id), event.to_string().as_bytes()).await?;
    Ok(())
}
