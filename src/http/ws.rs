//! The WebSocket API (`GET /v1/ws`, DESIGN §9): subscribe with catch-up then
//! live delivery, send, receipts, typing, ping — JSON frames with an `op`.
//!
//! Each connection has one bounded send queue, drained by the connection's
//! own task between reads. A
//! subscription is a task that subscribes to the live channel *first*, then
//! replays from `since_seq` (tail, then segments), then forwards live events
//! skipping what it already sent — no gap and no duplicate across the switch;
//! a gap seen live (a missed publish) is filled from history. A queue that
//! fills up closes the connection (slow consumer) without slowing anyone else.
//!
//! Close codes: 1000 normal, 1001 server shutting down, 4000 idle timeout,
//! 4001 credentials revoked or expired (re-checked every `auth.key_cache_ttl`),
//! 4008 slow consumer (reconnect with your last seq). A frame over 256 KiB
//! ends the connection.
//! Malformed frames get an `error` frame (`invalid_frame`, `unknown_op`, ...)
//! and the connection stays open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::error::ApiError;
use super::AppState;
use crate::auth::{Caller, Credentials};
use crate::clock::now_ms;
use crate::context::Context;
use crate::conversations::require_access;
use crate::error::Error;
use crate::history;
use crate::keys::Scope;
use crate::messages::{self, Envelope, SendRequest};
use crate::receipts::{self, ReceiptRequest};
use crate::store::{ConvKey, LiveEvent};

pub const CLOSE_IDLE: u16 = 4000;
pub const CLOSE_CREDENTIALS: u16 = 4001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// A single write may stall this long (the client not reading) before the
/// connection counts as a slow consumer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The goodbye (queued frames, close frame) gets at most this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Seqs replayed per history read during catch-up.
const CATCH_UP_CHUNK: u64 = 500;

#[derive(Deserialize)]
pub(super) struct WsQuery {
    api_key: Option<String>,
    access_token: Option<String>,
}

/// Authenticates at the upgrade (headers, or query parameters for browsers)
/// and answers 401/403 as JSON before any WebSocket exists.
pub(super) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = query.access_token.as_ref().map(|t| format!("Bearer {t}"));
    let presented_key = header("x-api-key").or(query.api_key.as_deref());
    let credentials =
        Credentials { api_key: presented_key, authorization: header("authorization").or(bearer.as_deref()) };
    let caller = state.ctx.auth.authenticate(credentials, now_ms()).await?;
    caller.require_scope(Scope::Read)?;
    // Kept to re-check the key while the socket lives (the token is checked by
    // its expiry, so its bytes need not be kept).
    let api_key: Box<str> = presented_key.unwrap_or_default().into();
    let ws = ws.map_err(|e| Error::invalid("websocket_required", format!("{e}: connect with a WebSocket client")))?;
    let ctx = state.ctx.clone();
    let shutdown = state.shutdown.clone();
    Ok(ws
        // Small buffers: tungstenite's defaults (128 KiB read) would cost ~1.3 GB
        // at 10k sockets. Frames larger than these just take more reads.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| session(ctx, caller, api_key, socket, shutdown))
        .into_response())
}

/// What the session writes, in queue order.
enum Outbound {
    /// Boxed so a queue slot is one pointer: tokio allocates a connection's
    /// queue 32 slots at a time, and idle connections should stay small.
    Frame(Box<(&'static str, String)>),
    Ping,
}

/// The sending half every task of a connection shares.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<Outbound>,
    /// Set when the queue overflowed: the session closes with 4008.
    slow: watch::Sender<bool>,
}

impl Outbox {
    /// Queues a frame; a full queue marks the connection a slow consumer.
    fn send(&self, op: &'static str, frame: Value) -> bool {
        match self.queue.try_send(Outbound::Frame(Box::new((op, frame.to_string())))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let _ = self.slow.send(true);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn error(&self, err: &Error, extra: Value) {
        let mut frame = json!({"op": "error", "code": err.code, "message": err.message});
        if let (Some(frame), Value::Object(extra)) = (frame.as_object_mut(), extra) {
            frame.extend(extra);
        }
        self.send("error", frame);
    }
}

/// Counts a connection or subscription in a gauge for as long as it lives.
struct Gauged(prometheus::IntGauge);

impl Gauged {
    fn new(gauge: &prometheus::IntGauge) -> Gauged {
        gauge.inc();
        Gauged(gauge.clone())
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn session(
    ctx: Arc<Context>,
    caller: Caller,
    api_key: Box<str>,
    socket: WebSocket,
    mut shutdown: watch::Receiver<bool>,
) {
    let _connection = Gauged::new(&ctx.metrics.ws_connections);
    let config = ctx.config.ws.clone();
    let (mut sink, mut stream) = socket.split();
    let (queue, mut outbound) = mpsc::channel::<Outbound>(config.send_queue);
    let (slow, mut slow_rx) = watch::channel(false);
    let outbox = Outbox { queue, slow };

    let mut subscriptions: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut last_seen = Instant::now();
    // One timer drives both the heartbeat and the credential re-check (a
    // revoked key or an expired token ends the connection within one key cache
    // period, as it would refuse an HTTP request).
    let recheck_every = ctx.config.auth.key_cache_ttl.max(Duration::from_secs(1));
    let mut timer = tokio::time::interval(config.heartbeat_interval.min(recheck_every));
    timer.tick().await;
    let (mut last_ping, mut last_check) = (Instant::now(), Instant::now());
    // One task per connection reads frames and writes the queue (a second,
    // writer task would cost memory on every idle socket). A write that stalls
    // past WRITE_TIMEOUT, like a queue that overflows, marks a slow consumer.
    let close = loop {
        let idle_left = config.idle_timeout.saturating_sub(last_seen.elapsed());
        tokio::select! {
            _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => break Some((1001, "server shutting down")),
            // Only a real overflow counts; the outbox outlives this loop, so the
            // watch never closes under it.
            _ = async { slow_rx.wait_for(|slow| *slow).await.map(|_| ()) } => {
                ctx.metrics.ws_slow_consumer_disconnects_total.inc();
                break Some((CLOSE_SLOW_CONSUMER, "slow consumer: send queue full; reconnect with since_seq"));
            }
            next = outbound.recv() => {
                let Some(next) = next else { break None };
                match tokio::time::timeout(WRITE_TIMEOUT, sink.send(outbound_message(&ctx, next))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        ctx.metrics.ws_slow_consumer_disconnects_total.inc();
                        break Some((CLOSE_SLOW_CONSUMER, "slow consumer: writes stalled; reconnect with since_seq"));
                    }
                }
            }
            _ = timer.tick() => {
                if last_ping.elapsed() >= config.heartbeat_interval {
                    last_ping = Instant::now();
                    let _ = outbox.queue.try_send(Outbound::Ping);
                }
                if last_check.elapsed() >= recheck_every {
                    last_check = Instant::now();
                    let now = now_ms();
                    let refused = match ctx.auth.recheck_key(&api_key, now).await {
                        Err(e) if e.kind != crate::error::Kind::Unavailable => Some(e),
                        _ if caller.token_expires_at_ms.is_some_and(|exp| exp <= now) => {
                            Some(Error::new(crate::error::Kind::Unauthenticated, "token_expired", "the token expired"))
                        }
                        _ => None,
                    };
                    if let Some(e) = refused {
                        outbox.error(&e, Value::Null);
                        break Some((CLOSE_CREDENTIALS, "credentials revoked or expired"));
                    }
                }
            }
            _ = tokio::time::sleep(idle_left) => break Some((CLOSE_IDLE, "idle timeout")),
            frame = stream.next() => {
                last_seen = Instant::now();
                match frame {
                    None | Some(Err(_)) => break None,
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) => {
                        // Boxed: the handlers' futures are large, and an idle connection
                        // should not carry their state in its task.
                        Box::pin(handle_frame(&ctx, &caller, &outbox, &mut subscriptions, text.as_str())).await;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        outbox.error(&Error::invalid("invalid_frame", "frames are JSON text"), Value::Null);
                    }
                    Some(Ok(_)) => {} // ping/pong: counted as activity
                }
            }
        }
    };
    for (_, task) in subscriptions.drain() {
        task.abort();
    }
    drop(outbox);
    // Say goodbye within a bounded time: what is still queued (an error frame
    // explaining the close, say), then the close frame itself.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some((code, reason)) = close {
            if code != CLOSE_SLOW_CONSUMER {
                while let Ok(next) = outbound.try_recv() {
                    if sink.send(outbound_message(&ctx, next)).await.is_err() {
                        return;
                    }
                }
            }
            let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
        }
        let _ = sink.close().await;
    })
    .await;
}

/// The WebSocket message for a queued item, counted by op.
fn outbound_message(ctx: &Context, next: Outbound) -> Message {
    match next {
        Outbound::Frame(frame) => {
            let (op, text) = *frame;
            ctx.metrics.ws_frames_sent_total.with_label_values(&[op]).inc();
            Message::Text(text.into())
        }
        Outbound::Ping => Message::Ping(Default::default()),
    }
}

#[derive(Deserialize)]
struct Frame {
    op: String,
    conversation_id: Option<String>,
    since_seq: Option<u64>,
    seq: Option<u64>,
    kind: Option<String>,
    client_msg_id: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    attachments: Option<Value>,
}

async fn handle_frame(
    ctx: &Arc<Context>,
    caller: &Caller,
    outbox: &Outbox,
    subscriptions: &mut HashMap<String, JoinHandle<()>>,
    text: &str,
) {
    let frame: Frame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => return outbox.error(&Error::invalid("invalid_frame", format!("not a frame: {e}")), Value::Null),
    };
    let needs_conversation = || {
        frame
            .conversation_id
            .clone()
            .ok_or_else(|| Error::invalid("invalid_frame", format!("`{}` needs a conversation_id", frame.op)))
    };
    let result: Result<(), Error> = async {
        match frame.op.as_str() {
            "ping" => {
                outbox.send("pong", json!({"op": "pong"}));
                Ok(())
            }
            "subscribe" => {
                let id = needs_conversation()?;
                if subscriptions.len() >= ctx.config.ws.max_subscriptions && !subscriptions.contains_key(&id) {
                    return Err(Error::invalid("too_many_subscriptions", "unsubscribe from something first"));
                }
                let (id, _) = require_access(ctx, caller, &id).await?;
                let conv = ConvKey::new(&caller.app_id, &id);
                let live = ctx.stores.tail.subscribe(&conv).await?;
                let last_seq = messages::last_seq(ctx, &conv).await?;
                if let Some(previous) = subscriptions.remove(&id) {
                    previous.abort();
                }
                outbox.send("subscribed", json!({"op": "subscribed", "conversation_id": id, "last_seq": last_seq}));
                let task = tokio::spawn(forward(ctx.clone(), caller.clone(), outbox.clone(), conv, live, frame.since_seq, last_seq));
                subscriptions.insert(id, task);
                Ok(())
            }
            "unsubscribe" => {
                let id = needs_conversation()?;
                if let Some(task) = subscriptions.remove(&id) {
                    task.abort();
                }
                outbox.send("unsubscribed", json!({"op": "unsubscribed", "conversation_id": id}));
                Ok(())
            }
            "send" => {
                let id = needs_conversation()?;
                let request = SendRequest {
                    payload: frame.payload.clone(),
                    payload_base64: frame.payload_base64.clone(),
                    content_type: frame.content_type.clone(),
                    attachments: match &frame.attachments {
                        None => Vec::new(),
                        Some(value) => serde_json::from_value(value.clone())
                            .map_err(|e| Error::invalid("invalid_attachments", e.to_string()))?,
                    },
                    client_msg_id: frame.client_msg_id.clone(),
                };
                let sent = messages::send(ctx, caller, &id, request, None, now_ms()).await?;
                outbox.send(
                    "ack",
                    json!({"op": "ack", "conversation_id": id, "client_msg_id": frame.client_msg_id, "seq": sent.envelope.seq, "id": sent.envelope.id, "replayed": sent.replayed}),
                );
                Ok(())
            }
            "receipt" => {
                let id = needs_conversation()?;
                let kind = match frame.kind.as_deref() {
                    Some("read") => receipts::ReceiptKind::Read,
                    Some("delivered") => receipts::ReceiptKind::Delivered,
                    _ => return Err(Error::invalid("invalid_frame", "receipt needs kind delivered or read")),
                };
                let seq = frame.seq.ok_or_else(|| Error::invalid("invalid_frame", "receipt needs a seq"))?;
                receipts::mark(ctx, caller, &id, ReceiptRequest { seq, kind }).await?;
                Ok(())
            }
            "typing" => {
                let id = needs_conversation()?;
                typing(ctx, caller, &id).await
            }
            other => Err(Error::invalid("unknown_op", format!("unknown op {other:?}"))),
        }
    }
    .await;
    if let Err(e) = result {
        outbox.error(
            &e,
            json!({"conversation_id": frame.conversation_id, "client_msg_id": frame.client_msg_id, "for": frame.op}),
        );
    }
}

/// Typing indicators: ephemeral, never stored, at most one per user and
/// conversation every 2 s (extra ones are dropped silently).
async fn typing(ctx: &Context, caller: &Caller, conversation_id: &str) -> Result<(), Error> {
    caller.require_scope(Scope::Write)?;
    let user = caller.user_id.as_ref().ok_or_else(|| Error::invalid("user_required", "typing belongs to a user"))?;
    let (id, _) = require_access(ctx, caller, conversation_id).await?;
    let bucket = format!("t:{}:{id}:{user}", caller.app_id);
    if !ctx.stores.tail.rate_limit(&bucket, 0.5, 1).await?.allowed {
        return Ok(());
    }
    let event = json!({"op": "typing", "conversation_id": id, "user_id": user});
    ctx.stores.tail.publish(&ConvKey::new(&caller.app_id, &id), event.to_string().as_bytes()).await?;
    Ok(())
}

/// One subscription: catch up from `since_seq`, then forward live events.
async fn forward(
    ctx: Arc<Context>,
    caller: Caller,
    outbox: Outbox,
    conv: ConvKey,
    mut live: crate::store::LiveSubscription,
    since_seq: Option<u64>,
    last_seq: u64,
) {
    let _subscription = Gauged::new(&ctx.metrics.ws_subscriptions);
    let mut delivered = match since_seq {
        None => last_seq,
        Some(since) => {
            if since > last_seq {
                outbox.error(
                    &Error::invalid("invalid_since_seq", format!("since_seq is past the last seq {last_seq}")),
                    json!({"conversation_id": conv.conversation_id}),
                );
                return;
            }
            match Box::pin(replay(&ctx, &outbox, &conv, since, last_seq)).await {
                Ok(Some(delivered)) => delivered,
                Ok(None) => return,
                Err(e) => {
                    outbox.error(&e, json!({"conversation_id": conv.conversation_id}));
                    return;
                }
            }
        }
    };
    loop {
        let event = match live.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Fell behind the local channel: refill from history up to now.
                let Ok(Some(last)) = ctx.stores.tail.last_seq(&conv).await else { continue };
                match Box::pin(replay(&ctx, &outbox, &conv, delivered, last)).await {
                    Ok(Some(through)) => delivered = through,
                    Ok(None) => return,
                    Err(e) => {
                        outbox.error(&e, json!({"conversation_id": conv.conversation_id}));
                        return;
                    }
                }
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        // Membership is re-checked per event (cached, invalidated on change), so a
        // removed member stops receiving at once.
        if let Some(user) = &caller.user_id {
            match Box::pin(ctx.membership.role(&caller.app_id, &conv.conversation_id, user)).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    outbox.error(&Error::not_member(), json!({"conversation_id": conv.conversation_id}));
                    return;
                }
                // The metadata store is unreachable: keep delivering on the answer
                // given at subscribe time rather than silently dropping events.
                Err(_) => {}
            }
        }
        match event {
            LiveEvent::Message(entry) => {
                if entry.seq <= delivered {
                    continue;
                }
                if entry.seq > delivered + 1 {
                    match Box::pin(replay(&ctx, &outbox, &conv, delivered, entry.seq - 1)).await {
                        Ok(Some(through)) => delivered = through,
                        Ok(None) => return,
                        Err(e) => {
                            outbox.error(&e, json!({"conversation_id": conv.conversation_id}));
                            return;
                        }
                    }
                }
                let Ok(envelope) = Envelope::from_entry(&entry) else { continue };
                ctx.metrics.delivery_latency_seconds.observe((now_ms() - envelope.ts).max(0) as f64 / 1000.0);
                if !outbox.send("message", json!({"op": "message", "message": envelope})) {
                    return;
                }
                delivered = entry.seq;
            }
            LiveEvent::Event(bytes) => {
                let Ok(frame) = serde_json::from_slice::<Value>(&bytes) else { continue };
                let op = match frame["op"].as_str() {
                    Some("receipt") => "receipt",
                    Some("typing") => "typing",
                    _ => continue,
                };
                if !outbox.send(op, frame) {
                    return;
                }
            }
        }
    }
}

/// Sends messages `after+1..=through` from history; returns the last seq
/// sent, or `None` when the subscription must end (retention passed, or the
/// connection is gone).
async fn replay(
    ctx: &Context,
    outbox: &Outbox,
    conv: &ConvKey,
    after: u64,
    through: u64,
) -> Result<Option<u64>, Error> {
    let cutoff = history::retention_cutoff(ctx, now_ms());
    let mut delivered = after;
    while delivered < through {
        let end = (delivered + CATCH_UP_CHUNK).min(through);
        let batch =
            history::fetch(&ctx.stores, &ctx.block_cache, &ctx.metrics, conv, delivered + 1, end, cutoff).await?;
        if batch.first().map(|e| e.seq) != Some(delivered + 1) {
            outbox.error(
                &Error::invalid("since_seq_expired", "messages after since_seq are past the retention window; resync from GET /v1/conversations/{id}/messages"),
                json!({"conversation_id": conv.conversation_id, "since_seq": after}),
            );
            return Ok(None);
        }
        for envelope in batch {
            if envelope.seq != delivered + 1 {
                break;
            }
            delivered = envelope.seq;
            if !outbox.send("message", json!({"op": "message", "message": envelope})) {
                return Ok(None);
            }
        }
    }
    Ok(Some(delivered))
}
