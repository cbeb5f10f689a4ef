//! Sending messages: validation, rate limits, idempotency and the atomic
//! append (ARCHITECTURE.md, "The write path"). The reply is given only once the tail holds the message.

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use serde::Deserialize;

use crate::auth::Caller;
use crate::context::Context;
use crate::envelope::{Attachment, Envelope, Sender, ENVELOPE_VERSION};
use crate::error::{Code, Error, RateLimitInfo};
use crate::idempotency::{claim_key, find_recorded, fingerprint};
use crate::ratelimit::Bucket;
use crate::store::{AppendOutcome, AppendRequest, ConvKey, IdempotencyClaim, ReplyRow};

const MAX_ATTACHMENTS: usize = 32;
const MAX_CLIENT_MSG_ID: usize = 255;
/// How many append steps a send takes before giving up: a re-seed of a
/// missing counter and a look in the durable idempotency record may each
/// need one more.
const APPEND_ROUNDS: usize = 4;

/// One message to send, as the API accepts it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub client_msg_id: Option<String>,
    /// The seq of a message of this conversation this one replies to.
    #[serde(default)]
    pub reply_to: Option<u64>,
}

/// The outcome of a send.
#[derive(Debug, Clone)]
pub struct Sent {
    pub envelope: Envelope,
    /// True when the idempotency key had been seen: nothing was written.
    pub replayed: bool,
}

/// Checks a request's shape and sizes; returns the idempotency key to use.
pub fn validate(
    ctx: &Context,
    request: &SendRequest,
    idempotency_header: Option<&str>,
) -> Result<Option<String>, Error> {
    let max = ctx.config.limits.max_payload_bytes;
    match (&request.payload, &request.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(Error::new(Code::InvalidPayload, "send either payload or payload_base64, not both"))
        }
        (None, None) => {
            return Err(Error::new(Code::InvalidPayload, "a message needs a payload (JSON) or payload_base64"))
        }
        (Some(payload), None) => {
            if payload.is_null() {
                return Err(Error::new(Code::InvalidPayload, "payload must not be null"));
            }
            let size = serde_json::to_vec(payload).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > max {
                return Err(too_large(size, max));
            }
            if request.content_type.is_some() {
                return Err(Error::new(Code::InvalidPayload, "content_type goes with payload_base64"));
            }
        }
        (None, Some(encoded)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| Error::new(Code::InvalidPayload, format!("payload_base64 is not base64: {e}")))?;
            if bytes.len() > max {
                return Err(too_large(bytes.len(), max));
            }
            match &request.content_type {
                Some(ct) if ct.len() <= 255 && ct.contains('/') && !ct.chars().any(char::is_control) => {}
                _ => {
                    return Err(Error::new(
                        Code::InvalidContentType,
                        "payload_base64 needs a content_type like `image/png`",
                    ))
                }
            }
        }
    }
    if request.reply_to.is_some_and(|seq| seq == 0 || seq > i64::MAX as u64) {
        return Err(invalid_reply_to());
    }
    if request.attachments.len() > MAX_ATTACHMENTS {
        return Err(Error::new(Code::InvalidAttachments, format!("at most {MAX_ATTACHMENTS} attachments")));
    }
    for (i, a) in request.attachments.iter().enumerate() {
        let bad = |why: &str| Error::new(Code::InvalidAttachments, format!("attachments[{i}]: {why}"));
        if a.key.is_empty() || a.key.len() > 1024 {
            return Err(bad("key must be 1 to 1024 characters"));
        }
        if a.content_type.is_empty() || a.content_type.len() > 255 || !a.content_type.contains('/') {
            return Err(bad("content_type must look like `type/subtype`"));
        }
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("sha256 must be 64 lowercase hex characters"));
        }
    }
    let check_key = |key: &str, name: &str| {
        if key.is_empty() || key.len() > MAX_CLIENT_MSG_ID || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            Err(Error::new(
                Code::InvalidClientMsgId,
                format!("{name} must be 1 to {MAX_CLIENT_MSG_ID} printable ASCII characters"),
            ))
        } else {
            Ok(())
        }
    };
    if let Some(id) = &request.client_msg_id {
        check_key(id, "client_msg_id")?;
    }
    if let Some(header) = idempotency_header {
        check_key(header, "Idempotency-Key")?;
        if request.client_msg_id.as_deref().is_some_and(|id| id != header) {
            return Err(Error::new(Code::InvalidClientMsgId, "Idempotency-Key and client_msg_id differ"));
        }
    }
    Ok(idempotency_header.map(str::to_string).or_else(|| request.client_msg_id.clone()))
}

fn invalid_reply_to() -> Error {
    Error::new(
        Code::InvalidReplyTo,
        "reply_to names no message of this conversation (or one past retention, or an edit or delete event)",
    )
}

/// Refuses a `reply_to` that names no message of the conversation.
async fn check_reply_to(ctx: &Context, conv: &ConvKey, seq: u64, now: i64) -> Result<(), Error> {
    let cutoff = ctx.timeline.retention_cutoff(now);
    let found = ctx.timeline.read(conv, seq, seq, cutoff).await?;
    match found.iter().find(|message| message.seq == seq) {
        Some(message) if message.kind.is_none() => Ok(()),
        _ => Err(invalid_reply_to()),
    }
}

fn too_large(size: usize, max: usize) -> Error {
    Error::new(Code::PayloadTooLarge, format!("the payload is {size} bytes; the limit is {max}"))
}

/// Sends one message to a conversation the caller may write to.
pub async fn send(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    request: SendRequest,
    idempotency_header: Option<&str>,
    now: i64,
) -> Result<Sent, Error> {
    caller.require_participant()?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.writable()?.conversation_id;
    let item = prepare(ctx, caller, &conversation_id, request, idempotency_header, now);
    let mut results = send_checked(ctx, caller, &conversation_id, vec![item], now).await?;
    results.pop().expect("one result per message")
}

/// Sends up to `limits.max_batch` messages in order, each with its own
/// result: one rate-limit check and one append for the whole batch.
pub async fn send_batch(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    requests: Vec<serde_json::Value>,
    now: i64,
) -> Result<Vec<Result<Sent, Error>>, Error> {
    caller.require_participant()?;
    let max = ctx.config.limits.max_batch;
    if requests.is_empty() || requests.len() > max {
        return Err(Error::new(Code::InvalidBatch, format!("a batch holds 1 to {max} messages")));
    }
    let requests = requests
        .into_iter()
        .map(|item| {
            // serde reads a struct from an array too; a message is an object.
            if !item.is_object() {
                return Err(Error::new(Code::InvalidRequest, "not a message: a batch item is a JSON object"));
            }
            serde_json::from_value::<SendRequest>(item)
                .map_err(|e| Error::new(Code::InvalidRequest, format!("not a message: {e}")))
        })
        .collect();
    send_many(ctx, caller, conversation_id, requests, now).await
}

/// Sends messages of one conversation in order, each with its own result (a
/// request that failed to parse keeps its error): a batch's work, also used
/// for the `send` frames a WebSocket delivered together. The caller bounds
/// the count.
pub async fn send_many(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    requests: Vec<Result<SendRequest, Error>>,
    now: i64,
) -> Result<Vec<Result<Sent, Error>>, Error> {
    caller.require_participant()?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.writable()?.conversation_id;
    let items = requests
        .into_iter()
        .map(|request| request.and_then(|request| prepare(ctx, caller, &conversation_id, request, None, now)))
        .collect();
    send_checked(ctx, caller, &conversation_id, items, now).await
}

/// A valid message on its way to the tail.
struct Pending {
    envelope: Envelope,
    /// The sender-scoped idempotency key and the request's fingerprint, if
    /// the client gave a key.
    key: Option<(String, String)>,
}

/// Validates a request and builds its envelope (seq 0 until appended).
fn prepare(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    request: SendRequest,
    idempotency_header: Option<&str>,
    now: i64,
) -> Result<Pending, Error> {
    let key = validate(ctx, &request, idempotency_header)?;
    let envelope = Envelope {
        payload: request.payload,
        payload_base64: request.payload_base64,
        content_type: request.content_type,
        attachments: request.attachments,
        reply_to: request.reply_to,
        // The key the client gave, by header or body: a flush finds it here
        // to record it durably.
        client_msg_id: key,
        ..new_envelope(caller, conversation_id, now)
    };
    let key = envelope.client_msg_id.as_ref().map(|key| (claim_key(&envelope.sender, key), fingerprint(&envelope)));
    Ok(Pending { envelope, key })
}

/// An envelope from the caller, without content (seq 0 until appended).
pub(crate) fn new_envelope(caller: &Caller, conversation_id: &str, now: i64) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        conversation_id: conversation_id.to_string(),
        seq: 0,
        ts: now,
        sender: sender_of(caller),
        payload: None,
        payload_base64: None,
        content_type: None,
        attachments: Vec::new(),
        client_msg_id: None,
        reply_to: None,
        kind: None,
        target_seq: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        reply_count: 0,
    }
}

/// Who the caller sends as: its user, or the app for an admin key.
pub(crate) fn sender_of(caller: &Caller) -> Sender {
    match &caller.user_id {
        Some(user) => Sender { kind: "user".into(), id: user.clone() },
        None => Sender { kind: "app".into(), id: caller.app_id.clone() },
    }
}

/// Appends a change event (an edit or a delete, built by `crate::edits`) to
/// a conversation the caller was checked to access: rate-limited and
/// appended like a message, without an idempotency key. Returns it with its seq.
pub(crate) async fn append_event(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    envelope: Envelope,
    now: i64,
) -> Result<Envelope, Error> {
    let item = Ok(Pending { envelope, key: None });
    let mut results = send_checked(ctx, caller, conversation_id, vec![item], now).await?;
    results.pop().expect("one result per message").map(|sent| sent.envelope)
}

/// Sends prepared messages of one conversation, in order: one rate-limit
/// check (the refused answered as replays where their key was claimed, so a
/// client that resends after a timeout gets its message back, not a 429),
/// attachment checks, and one append step for everything still standing
/// (which answers the granted replays).
async fn send_checked(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    items: Vec<Result<Pending, Error>>,
    now: i64,
) -> Result<Vec<Result<Sent, Error>>, Error> {
    let started = Instant::now();
    let conv = ConvKey::new(&caller.app_id, conversation_id);
    let mut results: Vec<Option<Result<Sent, Error>>> = (0..items.len()).map(|_| None).collect();
    let mut pending: Vec<(usize, Pending)> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(item) => pending.push((index, item)),
            Err(e) => results[index] = Some(Err(e)),
        }
    }

    // One rate-limit check for every valid message. The append finds a
    // granted message's earlier claim by itself; the keyed ones refused are
    // looked up, so a client resending after a timeout gets its message back,
    // not a 429.
    if !pending.is_empty() {
        if let Some(limited) = rate_limit(ctx, caller, pending.len()).await? {
            let refused: Vec<(usize, Pending)> = pending.drain(limited.granted..).collect();
            let mut still_refused = 0;
            for (index, answer) in answer_replays(ctx, &conv, refused).await? {
                results[index] = Some(answer.unwrap_or_else(|| {
                    still_refused += 1;
                    Err(limited.error.clone())
                }));
            }
            ctx.metrics.rate_limited_total.with_label_values(&[limited.scope]).inc_by(still_refused);
        }
    }

    let mut checked = Vec::with_capacity(pending.len());
    for (index, item) in pending {
        let attachments = &item.envelope.attachments;
        let check = async {
            if let Some(seq) = item.envelope.reply_to {
                check_reply_to(ctx, &conv, seq, now).await?;
            }
            if !attachments.is_empty() {
                crate::attachments::check_references(ctx, &caller.app_id, conversation_id, attachments, now).await?;
            }
            Ok::<_, Error>(())
        };
        match check.await {
            Ok(()) => checked.push((index, item)),
            Err(e) => results[index] = Some(Err(e)),
        }
    }
    for (index, result) in append(ctx, caller, &conv, checked, now, started).await? {
        results[index] = Some(result);
    }
    Ok(results.into_iter().map(|result| result.expect("every message has a result")).collect())
}

/// Appends checked messages in one step, re-seeding the counter where the
/// tail asks for it; returns each message's result by its index.
async fn append(
    ctx: &Context,
    caller: &Caller,
    conv: &ConvKey,
    checked: Vec<(usize, Pending)>,
    now: i64,
    started: Instant,
) -> Result<Vec<(usize, Result<Sent, Error>)>, Error> {
    let ttl = ctx.config.limits.idempotency_ttl;
    // The messages still to append and their requests, side by side.
    let (mut waiting, mut requests): (Vec<(usize, Pending)>, Vec<AppendRequest>) = checked
        .into_iter()
        .map(|(index, item)| {
            let request = AppendRequest {
                conv: conv.clone(),
                ts_ms: now,
                body: serde_json::to_vec(&item.envelope).expect("envelopes serialize"),
                idempotency: item.key.clone().map(|(key, fingerprint)| IdempotencyClaim {
                    key,
                    fingerprint,
                    ttl,
                    record_checked: false,
                }),
            };
            ((index, item), request)
        })
        .unzip();
    let mut done = Vec::with_capacity(waiting.len());
    let mut last_seq = 0;
    for _ in 0..APPEND_ROUNDS {
        if waiting.is_empty() {
            break;
        }
        let outcomes = ctx.stores.tail.append_batch(&requests).await?;
        let (mut again, mut again_requests, mut to_check) = (Vec::new(), Vec::new(), Vec::new());
        let mut needs_seed = false;
        for (((index, item), request), outcome) in waiting.into_iter().zip(requests).zip(outcomes) {
            match outcome {
                AppendOutcome::Appended(entry) => {
                    ctx.metrics.messages_ingested_total.inc();
                    ctx.metrics.ingest_duration_seconds.observe(started.elapsed().as_secs_f64());
                    tracing::debug!(
                        component = "ingest",
                        "conversation-id" = %conv.conversation_id,
                        seq = entry.seq,
                        "payload-bytes" = entry.body.len(),
                        "duration-ms" = started.elapsed().as_millis() as u64,
                        "message accepted"
                    );
                    last_seq = last_seq.max(entry.seq);
                    let envelope = Envelope { seq: entry.seq, ..item.envelope };
                    done.push((index, Ok(Sent { envelope, replayed: false })));
                    continue;
                }
                AppendOutcome::Replayed { seq } => {
                    done.push((index, replayed(ctx, conv, seq).await));
                    continue;
                }
                AppendOutcome::KeyReused { seq } => {
                    done.push((index, Err(key_reused(seq))));
                    continue;
                }
                AppendOutcome::NeedsSeed => needs_seed = true,
                AppendOutcome::CheckRecord => to_check.push(again.len()),
                AppendOutcome::NotAttempted => {}
            }
            again.push((index, item));
            again_requests.push(request);
        }
        if !to_check.is_empty() {
            let answers = check_records(ctx, conv, &to_check, &again_requests, now).await?;
            let mut answers: HashMap<usize, Option<Result<Sent, Error>>> = to_check.into_iter().zip(answers).collect();
            let pairs = std::mem::take(&mut again).into_iter().zip(std::mem::take(&mut again_requests));
            for (position, ((index, item), mut request)) in pairs.enumerate() {
                match answers.remove(&position) {
                    Some(Some(result)) => {
                        done.push((index, result));
                        continue;
                    }
                    // Not recorded: a new message, which the filter no longer stops.
                    Some(None) => request.idempotency.iter_mut().for_each(|claim| claim.record_checked = true),
                    None => {}
                }
                again.push((index, item));
                again_requests.push(request);
            }
        }
        (waiting, requests) = (again, again_requests);
        if needs_seed {
            // New conversation, or the tail lost its counter: continue after the
            // highest seq known durably, never from 1 again.
            let floor = ctx.stores.metadata.flushed_seq(conv).await?;
            let id = &conv.conversation_id;
            tracing::info!(component = "ingest", "conversation-id" = %id, floor, "seq counter seeded");
            ctx.stores.tail.seed_seq(conv, floor).await?;
        }
    }
    for (index, _) in waiting {
        done.push((index, Err(Error::new(Code::SeqUnavailable, "could not assign a seq; retry"))));
    }
    // Thread entries of the replies, replays too: a retry after a failure
    // here records what the first attempt did not.
    let replies: Vec<ReplyRow> = done
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .filter_map(|sent| {
            sent.envelope.reply_to.map(|parent| ReplyRow {
                app_id: conv.app_id.clone(),
                conversation_id: conv.conversation_id.clone(),
                parent_seq: parent as i64,
                seq: sent.envelope.seq as i64,
                ts: sent.envelope.ts,
            })
        })
        .collect();
    if !replies.is_empty() {
        ctx.stores.metadata.insert_replies(&replies).await?;
    }
    let newest = done.iter().filter_map(|(_, result)| result.as_ref().ok()).filter(|sent| !sent.replayed);
    if let Some(ts) = newest.map(|sent| sent.envelope.ts).max() {
        ctx.activity.touch(conv, ts);
    }
    if let (Some(user), true) = (&caller.user_id, last_seq > 0) {
        // The messages are durable already; a failure here only costs an unread count.
        if let Err(e) = crate::receipts::note_sent(ctx, conv, user, last_seq).await {
            tracing::warn!(component = "ingest", error = %e.message, "sender's own-message mark not saved");
        }
    }
    Ok(done)
}

/// For the messages the tail could not place ([`AppendOutcome::CheckRecord`]),
/// at `positions` of `requests`: their keys in the durable record. One answer
/// per position: the original message (a late retry of the same request),
/// `idempotency_key_reused` (the key's original had another fingerprint), or
/// `None` when the key is not recorded (the filter's false positive: a new
/// message).
async fn check_records(
    ctx: &Context,
    conv: &ConvKey,
    positions: &[usize],
    requests: &[AppendRequest],
    now: i64,
) -> Result<Vec<Option<Result<Sent, Error>>>, Error> {
    let claims: Vec<Option<&IdempotencyClaim>> = positions.iter().map(|&p| requests[p].idempotency.as_ref()).collect();
    let keys: Vec<&str> = claims.iter().flatten().map(|claim| claim.key.as_str()).collect();
    let since = now - ctx.config.limits.idempotency_ttl.as_millis() as i64;
    let mut found = find_recorded(&ctx.stores, conv, &keys, since).await?.into_iter();
    let mut answers = Vec::with_capacity(positions.len());
    for claim in claims {
        // Only keyed messages are asked about; an unkeyed one is simply appended again.
        let Some(claim) = claim else {
            answers.push(None);
            continue;
        };
        let Some(seq) = found.next().flatten() else {
            ctx.metrics.idempotency_record_lookups_total.with_label_values(&["absent"]).inc();
            answers.push(None);
            continue;
        };
        ctx.metrics.idempotency_record_lookups_total.with_label_values(&["found"]).inc();
        answers.push(Some(match ctx.timeline.message(conv, seq).await? {
            Some(mut original) if fingerprint(&original) == claim.fingerprint => {
                ctx.metrics.idempotent_replays_total.inc();
                ctx.timeline.apply_changes(conv, std::slice::from_mut(&mut original)).await?;
                Ok(Sent { envelope: original, replayed: true })
            }
            Some(_) => Err(key_reused(seq)),
            None => Err(original_unavailable(seq)),
        }));
    }
    Ok(answers)
}

fn key_reused(seq: u64) -> Error {
    Error::new(Code::IdempotencyKeyReused, format!("this idempotency key was used for a different message (seq {seq})"))
}

/// An idempotent replay: the envelope originally stored at `seq`, from the
/// tail, or from segments once it was flushed and trimmed.
async fn replayed(ctx: &Context, conv: &ConvKey, seq: u64) -> Result<Sent, Error> {
    ctx.metrics.idempotent_replays_total.inc();
    match ctx.timeline.message(conv, seq).await? {
        Some(mut envelope) => {
            ctx.timeline.apply_changes(conv, std::slice::from_mut(&mut envelope)).await?;
            Ok(Sent { envelope, replayed: true })
        }
        None => Err(original_unavailable(seq)),
    }
}

fn original_unavailable(seq: u64) -> Error {
    Error::new(
        Code::IdempotencyOriginalUnavailable,
        format!("this idempotency key was used for seq {seq}, which is no longer stored"),
    )
}

/// The per-user and per-key limits, checked together for `wanted` messages:
/// `None` when all may go, otherwise how many may and the refusal for the
/// rest (the user's bucket is named first, so one noisy user is told it is
/// the one over its limit, not the key).
/// What a rate-limit check refused: the first `granted` messages may go, the
/// rest get `error`, counted under `scope` by the caller.
struct Limited {
    granted: usize,
    error: Error,
    scope: &'static str,
}

async fn rate_limit(ctx: &Context, caller: &Caller, wanted: usize) -> Result<Option<Limited>, Error> {
    let limits = &ctx.config.limits;
    let mut buckets = Vec::with_capacity(2);
    let mut scopes = Vec::with_capacity(2);
    if let Some(user) = &caller.user_id {
        buckets.push(Bucket::new(format!("u:{user}"), limits.user_rate, limits.user_burst));
        scopes.push("user");
    }
    buckets.push(Bucket::new(format!("k:{}", caller.key_id), limits.key_rate, limits.key_burst));
    scopes.push("key");
    let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
    let grant = ctx.stores.coordination.rate_limit(&caller.app_id, &buckets, wanted).await?;
    let Some((refused, decision)) = grant.refused() else { return Ok(None) };
    let (scope, bucket) = (scopes[refused], &buckets[refused]);
    let (rate, burst) = (bucket.rate_per_second, bucket.burst);
    let mut error =
        Error::new(Code::RateLimited, format!("too many messages for this {scope}: {rate}/s with a burst of {burst}"));
    error.rate = Some(RateLimitInfo { limit: burst, window_seconds: f64::from(burst) / rate, decision });
    Ok(Some(Limited { granted: grant.granted as usize, error, scope }))
}

/// Looks up the keyed messages' earlier claims (one read for all): a replay
/// answers with the original message, a key used for another payload with
/// `idempotency_key_reused`; `None` for a message sent for the first time.
async fn answer_replays(
    ctx: &Context,
    conv: &ConvKey,
    items: Vec<(usize, Pending)>,
) -> Result<Vec<(usize, Option<Result<Sent, Error>>)>, Error> {
    let keys: Vec<&str> = items.iter().filter_map(|(_, item)| item.key.as_ref().map(|(key, _)| key.as_str())).collect();
    let mut claims = match keys.is_empty() {
        true => Vec::new(),
        false => ctx.stores.tail.idempotency_claims(conv, &keys).await?,
    }
    .into_iter();
    let mut answers = Vec::with_capacity(items.len());
    for (index, item) in items {
        // One claim per keyed message, in order.
        let claim = if item.key.is_some() { claims.next().flatten() } else { None };
        let answer = match (claim, &item.key) {
            (Some((seq, seen)), Some((_, fingerprint))) if seen == *fingerprint => Some(replayed(ctx, conv, seq).await),
            (Some((seq, _)), _) => Some(Err(key_reused(seq))),
            (None, _) => None,
        };
        answers.push((index, answer));
    }
    Ok(answers)
}
