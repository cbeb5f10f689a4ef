//! History pages (ARCHITECTURE.md, "Reads and live delivery"): seq and time
//! ranges in both directions, paged with an opaque cursor, read through the
//! [`crate::timeline`] (tail where it still holds the range, segment blocks
//! below it) — the caller never sees the boundary. Nothing older than the
//! retention window is ever returned.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::context::Context;
use crate::envelope::Envelope;
use crate::error::{Code, Error};
use crate::keys::Scope;
use crate::store::ConvKey;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;
/// Seqs fetched per step while filtering a time range. Without a time range
/// the first step reads as many seqs as the page has room for, so a page
/// touches only the one or two blocks that hold it; each further step (past
/// messages the retention cutoff leaves out) doubles, up to this.
const CHUNK: u64 = 500;
const CURSOR_VERSION: u32 = 1;

/// The query parameters of `GET /v1/conversations/{id}/messages`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub after_seq: Option<u64>,
    pub before_seq: Option<u64>,
    pub from_ts: Option<i64>,
    pub to_ts: Option<i64>,
    pub limit: Option<u32>,
    pub order: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub messages: Vec<Envelope>,
    pub next_cursor: Option<String>,
}

/// What a cursor carries: the query it belongs to and where the next page starts.
/// Public (fields private) only so the cursor codec can be fuzzed from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    v: u32,
    /// The conversation it is bound to.
    c: String,
    desc: bool,
    after: Option<u64>,
    before: Option<u64>,
    from: Option<i64>,
    to: Option<i64>,
    limit: u32,
    /// The last seq returned: the next page continues past it.
    pos: u64,
    /// A thread's page: the parent's seq (absent on a history page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<u64>,
}

/// One page of history for the caller.
pub async fn page(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    query: HistoryQuery,
    now: i64,
) -> Result<Page, Error> {
    caller.require_scope(Scope::Read)?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let started = Instant::now();
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let key = ctx.cursor_key().await?;
    let state = match &query.cursor {
        Some(cursor) => {
            let state = decode_cursor(key, cursor).ok_or_else(invalid_cursor)?;
            if state.c != conversation_id || state.t.is_some() || !same_query(&state, &query) {
                return Err(invalid_cursor());
            }
            state
        }
        None => new_state(&conversation_id, &query)?,
    };
    let cutoff = ctx.timeline.retention_cutoff(now);
    let last_seq = ctx.timeline.last_seq(&conv).await?;
    let (mut messages, more) = collect(ctx, &conv, &state, last_seq, cutoff).await?;
    present(ctx, &conv, caller, &mut messages).await?;
    let next_cursor = match (more, messages.last()) {
        (true, Some(last)) => Some(encode_cursor(key, &CursorState { pos: last.seq, ..state })),
        _ => None,
    };
    ctx.metrics.history_duration_seconds.observe(started.elapsed().as_secs_f64());
    Ok(Page { messages, next_cursor })
}

/// The message `message` names (its seq or its id) as the caller's reads
/// show it: changes applied, with its reactions.
pub async fn message(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    message: &str,
    now: i64,
) -> Result<Envelope, Error> {
    caller.require_scope(Scope::Read)?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let mut found = [crate::edits::locate(ctx, &conv, message, now).await?];
    present(ctx, &conv, caller, &mut found).await?;
    let [found] = found;
    Ok(found)
}

/// The query parameters of `GET /v1/conversations/{id}/messages/{message}/thread`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A message and a page of the messages that reply to it, in seq order.
#[derive(Debug, Serialize)]
pub struct Thread {
    pub parent: Envelope,
    pub replies: Vec<Envelope>,
    pub next_cursor: Option<String>,
}

/// One page of the replies to the message `message` names.
pub async fn thread(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    message: &str,
    query: ThreadQuery,
    now: i64,
) -> Result<Thread, Error> {
    caller.require_scope(Scope::Read)?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let conv = ConvKey::new(&caller.app_id, &conversation_id);
    let mut parent = [crate::edits::locate(ctx, &conv, message, now).await?];
    let parent_seq = parent[0].seq;
    let key = ctx.cursor_key().await?;
    let (limit, after) = match &query.cursor {
        Some(cursor) => {
            let state = decode_cursor(key, cursor).ok_or_else(invalid_cursor)?;
            let same = state.c == conversation_id && state.t == Some(parent_seq);
            if !same || query.limit.is_some_and(|limit| limit != state.limit) {
                return Err(invalid_cursor());
            }
            (state.limit, state.pos)
        }
        None => {
            let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
            if limit == 0 || limit > MAX_LIMIT {
                return Err(Error::new(Code::InvalidRequest, format!("limit must be 1 to {MAX_LIMIT}")));
            }
            (limit, 0)
        }
    };
    let mut seqs = ctx.stores.metadata.replies(&conv, parent_seq, after, i64::from(limit) + 1).await?;
    let more = seqs.len() > limit as usize;
    seqs.truncate(limit as usize);
    let cutoff = ctx.timeline.retention_cutoff(now);
    let mut replies = Vec::with_capacity(seqs.len());
    for &seq in &seqs {
        let seq = seq as u64;
        replies.extend(ctx.timeline.read(&conv, seq, seq, cutoff).await?.into_iter().filter(|m| m.seq == seq));
    }
    present(ctx, &conv, caller, &mut parent).await?;
    present(ctx, &conv, caller, &mut replies).await?;
    let next_cursor = match (more, seqs.last()) {
        (true, Some(&last)) => Some(encode_cursor(
            key,
            &CursorState {
                v: CURSOR_VERSION,
                c: conversation_id,
                desc: false,
                after: None,
                before: None,
                from: None,
                to: None,
                limit,
                pos: last as u64,
                t: Some(parent_seq),
            },
        )),
        _ => None,
    };
    let [parent] = parent;
    Ok(Thread { parent, replies, next_cursor })
}

/// What reads show beyond the log: the recorded edits and deletes,
/// reactions as the caller sees them, and reply counts.
async fn present(ctx: &Context, conv: &ConvKey, caller: &Caller, messages: &mut [Envelope]) -> Result<(), Error> {
    ctx.timeline.apply_changes(conv, messages).await?;
    crate::reactions::attach(ctx, conv, caller.user_id.as_deref(), messages).await?;
    let seqs: Vec<u64> = messages.iter().filter(|m| m.kind.is_none()).map(|m| m.seq).collect();
    let counts: std::collections::HashMap<i64, i64> =
        ctx.stores.metadata.reply_counts(conv, &seqs).await?.into_iter().collect();
    for message in messages.iter_mut().filter(|m| m.kind.is_none()) {
        message.reply_count = counts.get(&(message.seq as i64)).map_or(0, |n| *n as u64);
    }
    Ok(())
}

fn invalid_cursor() -> Error {
    Error::new(Code::InvalidCursor, "the cursor is not valid for this conversation and query")
}

fn new_state(conversation_id: &str, query: &HistoryQuery) -> Result<CursorState, Error> {
    let desc = match query.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(Error::new(Code::InvalidRequest, format!("order must be asc or desc, not {other:?}")))
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Error::new(Code::InvalidRequest, format!("limit must be 1 to {MAX_LIMIT}")));
    }
    // Seqs are stored as signed 64-bit integers; anything larger names nothing.
    if query.after_seq.into_iter().chain(query.before_seq).any(|seq| seq > i64::MAX as u64) {
        return Err(Error::new(Code::InvalidRequest, "after_seq and before_seq are at most 2^63 - 1"));
    }
    if let (Some(from), Some(to)) = (query.from_ts, query.to_ts) {
        if from > to {
            return Err(Error::new(Code::InvalidRequest, "from_ts is after to_ts"));
        }
    }
    Ok(CursorState {
        v: CURSOR_VERSION,
        c: conversation_id.to_string(),
        desc,
        after: query.after_seq,
        before: query.before_seq,
        from: query.from_ts,
        to: query.to_ts,
        limit,
        pos: 0,
        t: None,
    })
}

/// A cursor comes with its query, or alone; it never changes the query.
fn same_query(state: &CursorState, query: &HistoryQuery) -> bool {
    let order_ok = match query.order.as_deref() {
        None => true,
        Some("desc") => state.desc,
        Some("asc") => !state.desc,
        Some(_) => false,
    };
    order_ok
        && query.after_seq.is_none_or(|a| Some(a) == state.after)
        && query.before_seq.is_none_or(|b| Some(b) == state.before)
        && query.from_ts.is_none_or(|f| Some(f) == state.from)
        && query.to_ts.is_none_or(|t| Some(t) == state.to)
        && query.limit.is_none_or(|l| l == state.limit)
}

/// Walks the seq range the state describes from its position, collecting up
/// to `limit` messages inside the time range; says whether more may follow.
async fn collect(
    ctx: &Context,
    conv: &ConvKey,
    state: &CursorState,
    last_seq: u64,
    cutoff: i64,
) -> Result<(Vec<Envelope>, bool), Error> {
    let floor_ts = state.from.unwrap_or(i64::MIN).max(cutoff);
    let ceiling_ts = state.to.unwrap_or(i64::MAX);
    // The seq bounds, exclusive: (low, high).
    let low = state.after.unwrap_or(0);
    let high = state.before.unwrap_or(last_seq + 1).min(last_seq + 1);
    let limit = state.limit as usize;
    let mut out = Vec::with_capacity(limit);
    let filtered = state.from.is_some() || state.to.is_some();
    let mut span = if filtered { CHUNK } else { (limit as u64).clamp(1, CHUNK) };
    if !state.desc {
        let mut next = if state.pos > 0 { state.pos + 1 } else { low + 1 };
        if state.pos == 0 && floor_ts > i64::MIN {
            next = next.max(ctx.timeline.first_seq_at_or_after(conv, floor_ts, next).await?);
        }
        while next < high && out.len() < limit {
            let end = (next + span - 1).min(high - 1);
            for envelope in ctx.timeline.read(conv, next, end, cutoff).await? {
                if envelope.ts > ceiling_ts {
                    return Ok((out, false));
                }
                if envelope.ts >= floor_ts {
                    out.push(envelope);
                    if out.len() == limit {
                        let more = out.last().is_some_and(|e| e.seq + 1 < high);
                        return Ok((out, more));
                    }
                }
            }
            next = end + 1;
            span = (span * 2).min(CHUNK);
        }
        Ok((out, false))
    } else {
        // Nothing below the first seq that can reach the time floor (or the
        // retention cutoff) is looked at: expired history costs no walk.
        let low = low.max(ctx.timeline.first_seq_at_or_after(conv, floor_ts, low + 1).await? - 1);
        // Exclusive. Nor is anything above the last block that can hold a
        // message from before the time ceiling: an old `to_ts` costs no walk
        // either.
        let mut top = if state.pos > 0 { state.pos } else { high };
        if let Some(to) = state.to {
            if let Some(bound) = ctx.timeline.seq_bound_before(conv, to).await? {
                top = top.min(bound);
            }
        }
        while top > low + 1 && out.len() < limit {
            let start = top.saturating_sub(span).max(low + 1);
            let chunk = ctx.timeline.read(conv, start, top - 1, cutoff).await?;
            for envelope in chunk.into_iter().rev() {
                if envelope.ts < floor_ts {
                    return Ok((out, false));
                }
                if envelope.ts <= ceiling_ts {
                    out.push(envelope);
                    if out.len() == limit {
                        let more = out.last().is_some_and(|e| e.seq > low + 1);
                        return Ok((out, more));
                    }
                }
            }
            if start <= low + 1 {
                break;
            }
            top = start;
            span = (span * 2).min(CHUNK);
        }
        Ok((out, false))
    }
}

/// The opaque cursor string for `state`: a token signed with the
/// deployment's cursor key (`crate::mac`).
pub fn encode_cursor(key: &[u8], state: &CursorState) -> String {
    crate::mac::sign_json(key, state)
}

/// The state in a cursor made by [`encode_cursor`] with the same key; `None`
/// for anything else (forged, tampered, another version, an out-of-range limit).
pub fn decode_cursor(key: &[u8], cursor: &str) -> Option<CursorState> {
    let state: CursorState = crate::mac::verify_json(key, cursor)?;
    (state.v == CURSOR_VERSION && state.limit >= 1 && state.limit <= MAX_LIMIT).then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_any_change_is_refused() {
        let key = [7u8; 32];
        let state = new_state("c", &HistoryQuery { limit: Some(10), ..Default::default() }).unwrap();
        let cursor = encode_cursor(&key, &CursorState { pos: 42, ..state.clone() });
        assert_eq!(decode_cursor(&key, &cursor).unwrap().pos, 42);
        assert!(decode_cursor(&[8u8; 32], &cursor).is_none(), "another deployment's key");
        for at in 0..cursor.len() {
            let mut bytes = cursor.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            if let Ok(tampered) = String::from_utf8(bytes) {
                if tampered != cursor {
                    assert!(decode_cursor(&key, &tampered).is_none(), "tampering at {at} accepted");
                }
            }
        }
    }
}
