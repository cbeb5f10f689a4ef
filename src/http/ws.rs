//! The WebSocket API (`GET /v1/ws`, README "WebSocket frames"): subscribe
//! with catch-up then live delivery, send, receipts, typing, ping — JSON
//! frames with an `op`. The edge only: frames are parsed in
//! [`super::frames`], and what a subscription delivers, and in which order,
//! is decided by [`crate::subscriptions`]; each subscription is one task of
//! the connection, delivering into the connection's queue.
//!
//! Each connection has one bounded send queue, drained by the connection's
//! own task between reads (what is queued together is written with one
//! flush). Frames that arrive together are read together: a run of `send`
//! frames to one conversation is stored as one batch, each frame answered
//! on its own, in order.
//!
//! Back-pressure: catch-up frames wait for room in the queue (and use at most
//! half of it), so a replay of any length is paced by the reader. Live
//! frames, acks and pongs never wait: a queue they find full, or a write that
//! stalls for 30 s, closes the connection (slow consumer) without slowing
//! anyone else.
//!
//! Caps: `ws.max_per_user` and `ws.max_per_ip` open sockets (429
//! `too_many_websockets` at the upgrade); each socket keeps its connection's
//! slot under `http.max_connections`.
//!
//! Close codes: 1000 normal, 1001 server shutting down, 1009 a frame over
//! 256 KiB, 4000 idle timeout, 4001 credentials revoked or expired
//! (re-checked every `auth.key_cache_ttl`), 4008 slow consumer (reconnect
//! with your last seq).
//! Malformed frames get an `error` frame (`invalid_frame`, `unknown_op`, ...)
//! and the connection stays open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::SplitSink;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::ApiError;
use super::frames::{ClientFrame, Echo};
use super::listener::ConnectionSlot;
use super::AppState;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::context::Context;
use crate::envelope::Envelope;
use crate::error::{Code, Error};
use crate::keys::Scope;
use crate::store::ConvKey;
use crate::subscriptions::{Delivery, Receiver, Subscription};
use crate::{messages, presence, receipts, typing};

pub const CLOSE_IDLE: u16 = 4000;
pub const CLOSE_CREDENTIALS: u16 = 4001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// RFC 6455: the message is too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// A single write may stall this long (the client not reading) before the
/// connection counts as a slow consumer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Queued frames written together before one flush.
const WRITE_COALESCE: usize = 64;
/// The goodbye (queued frames, close frame) gets at most this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
pub(super) struct WsQuery {
    api_key: Option<String>,
    access_token: Option<String>,
}

/// Open WebSockets per user and per client IP, held against `ws.max_per_user`
/// and `ws.max_per_ip`. Entries exist only while sockets are open, so the
/// maps are bounded by the connection cap.
pub struct Admission {
    max_per_user: usize,
    max_per_ip: usize,
    open: Mutex<AdmissionCounts>,
}

#[derive(Default)]
struct AdmissionCounts {
    per_user: HashMap<(String, String), usize>,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted socket; dropping it frees its place.
struct Admitted {
    admission: Arc<Admission>,
    user: Option<(String, String)>,
    ip: Option<IpAddr>,
}

impl Admission {
    pub fn new(config: &crate::config::WsConfig) -> Admission {
        Admission { max_per_user: config.max_per_user, max_per_ip: config.max_per_ip, open: Mutex::default() }
    }

    /// Admits one more socket for `caller` from `ip`, or says which cap
    /// refused it (the metric reason, and the error).
    fn admit(self: &Arc<Self>, caller: &Caller, ip: Option<IpAddr>) -> Result<Admitted, (&'static str, Error)> {
        let user = caller.user_id.as_ref().map(|user| (caller.app_id.clone(), user.clone()));
        let mut open = self.open.lock().expect("admission lock");
        if let Some(user) = &user {
            if open.per_user.get(user).copied().unwrap_or(0) >= self.max_per_user {
                return Err(too_many(
                    "ws_per_user",
                    format!("this user has {} WebSockets open (ws.max_per_user)", self.max_per_user),
                ));
            }
        }
        let ip = ip.filter(|_| self.max_per_ip > 0);
        if let Some(ip) = ip {
            if open.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
                return Err(too_many(
                    "ws_per_ip",
                    format!("this address has {} WebSockets open (ws.max_per_ip)", self.max_per_ip),
                ));
            }
            *open.per_ip.entry(ip).or_default() += 1;
        }
        if let Some(user) = &user {
            *open.per_user.entry(user.clone()).or_default() += 1;
        }
        Ok(Admitted { admission: self.clone(), user, ip })
    }
}

fn too_many(reason: &'static str, message: String) -> (&'static str, Error) {
    (reason, Error::new(Code::TooManyWebsockets, message))
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().expect("admission lock");
        if let Some(user) = &self.user {
            release(&mut open.per_user, user);
        }
        if let Some(ip) = &self.ip {
            release(&mut open.per_ip, ip);
        }
    }
}

/// Gives back one place under `key`; a key with none left is forgotten, so
/// the map holds only what is open.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Authenticates at the upgrade (headers, or query parameters for browsers)
/// and answers 401/403/429 as JSON before any WebSocket exists.
pub(super) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: Option<Extension<ConnectionSlot>>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| Error::new(Code::InvalidRequest, e.body_text()))?;
    let bearer = query.access_token.as_ref().map(|t| format!("Bearer {t}"));
    let credentials = super::credentials(&headers, query.api_key.as_deref(), bearer.as_deref())?;
    let presented_key = credentials.api_key;
    let caller = super::authenticate(&state, credentials).await?;
    caller.require_scope(Scope::Read)?;
    let ws = ws.map_err(|e| Error::new(Code::WebsocketRequired, format!("{e}: connect with a WebSocket client")))?;
    let admitted =
        state.admission.admit(&caller, peer.map(|Extension(ConnectInfo(addr))| addr.ip())).map_err(|(reason, e)| {
            state.ctx.metrics.connections_refused_total.with_label_values(&[reason]).inc();
            e
        })?;
    // Kept to re-check the key while the socket lives (the token is checked by
    // its expiry, so its bytes need not be kept).
    let api_key: Box<str> = presented_key.unwrap_or_default().into();
    let ctx = state.ctx.clone();
    let shutdown = state.shutdown.clone();
    let held = (admitted, slot.map(|Extension(slot)| slot));
    Ok(ws
        // Small buffers: tungstenite's defaults (128 KiB read) would cost ~1.3 GB
        // at 10k sockets. Frames larger than these just take more reads.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            // The socket keeps its connection slot and its admission while it lives.
            let _held = held;
            session(ctx, caller, api_key, socket, shutdown).await
        })
        .into_response())
}

/// What the session writes, in queue order.
enum Outbound {
    /// Boxed so a queue slot is one pointer: tokio allocates a connection's
    /// queue 32 slots at a time, and idle connections should stay small.
    Frame(Box<QueuedFrame>),
    Ping,
}

struct QueuedFrame {
    op: &'static str,
    text: String,
    /// A catch-up frame holds a place of the replay budget until it is written.
    _budget: Option<OwnedSemaphorePermit>,
}

/// The sending half every task of a connection shares.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<Outbound>,
    /// Set when the queue overflowed: the session closes with 4008.
    slow: watch::Sender<bool>,
    /// Catch-up (replay) frames may fill at most half the queue and wait for
    /// room instead of overflowing it: a replay of 10,000 messages is paced
    /// by the reader, while live frames, acks and pongs keep the other half.
    replay_budget: Arc<Semaphore>,
}

impl Outbox {
    /// Queues a live or control frame; a full queue marks the connection a
    /// slow consumer (it stopped reading while events kept coming).
    fn send(&self, op: &'static str, frame: Value) -> bool {
        self.send_text(op, frame.to_string())
    }

    /// Queues a frame already encoded.
    fn send_text(&self, op: &'static str, text: String) -> bool {
        let frame = QueuedFrame { op, text, _budget: None };
        match self.queue.try_send(Outbound::Frame(Box::new(frame))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let _ = self.slow.send(true);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a catch-up frame, waiting for room (back-pressure). A reader
    /// that stalls is cut off by the write timeout, not here. False when the
    /// connection is gone.
    async fn send_replayed(&self, op: &'static str, frame: Value) -> bool {
        let Ok(permit) = self.replay_budget.clone().acquire_owned().await else { return false };
        let frame = QueuedFrame { op, text: frame.to_string(), _budget: Some(permit) };
        self.queue.send(Outbound::Frame(Box::new(frame))).await.is_ok()
    }

    fn error(&self, err: &Error, extra: Value) {
        let mut frame = json!({"op": "error", "code": err.code, "message": err.message});
        if let (Some(frame), Value::Object(extra)) = (frame.as_object_mut(), extra) {
            frame.extend(extra);
        }
        self.send("error", frame);
    }
}

/// A subscription delivers into the connection's queue: catch-up messages
/// wait for the replay budget, live ones never wait.
impl Receiver for Outbox {
    async fn replayed(&self, message: Envelope) -> bool {
        let op = message.op();
        self.send_replayed(op, json!({"op": op, "message": message})).await
    }

    fn live(&self, delivery: Delivery) -> bool {
        match delivery {
            Delivery::Message(message) => {
                let op = message.envelope.op();
                let frame = message.frame(|envelope| json!({"op": op, "message": envelope}).to_string());
                self.send_text(op, frame.to_string())
            }
            Delivery::Event { op, frame } => self.send(op, frame),
        }
    }

    fn ended(&self, err: &Error, details: Value) {
        self.error(err, details);
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

/// Whether a read failed because the client's frame was over the size limit.
fn is_too_big(error: &axum::Error) -> bool {
    // tungstenite reports it as a capacity error; axum hides the type, so its
    // text is what can be matched ("Space limit exceeded: Message too long").
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long")
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
    let (mut sink, stream) = socket.split();
    let mut stream = stream.peekable();
    let (queue, mut outbound) = mpsc::channel::<Outbound>(config.send_queue);
    let (slow, mut slow_rx) = watch::channel(false);
    let replay_budget = Arc::new(Semaphore::new((config.send_queue / 2).max(1)));
    let outbox = Outbox { queue, slow, replay_budget };

    let mut subscriptions: HashMap<String, JoinHandle<()>> = HashMap::new();
    // This session's presence in its subscribed conversations (users only).
    let presence = caller.user_id.clone().map(|user| PresenceSession { user, id: uuid::Uuid::new_v4().to_string() });
    let mut next_presence = Instant::now() + presence::REFRESH;
    let mut last_seen = Instant::now();
    // Heartbeat and credential re-check each keep their own deadline, so each
    // runs exactly at its interval (a revoked key or an expired token ends the
    // connection within one key cache period, as it would refuse an HTTP
    // request).
    let recheck_every = ctx.config.auth.key_cache_ttl.max(Duration::from_secs(1));
    let mut next_ping = Instant::now() + config.heartbeat_interval;
    let mut next_check = Instant::now() + recheck_every;
    // One task per connection reads frames and writes the queue (a second,
    // writer task would cost memory on every idle socket). A write that stalls
    // past WRITE_TIMEOUT, like a queue that overflows, marks a slow consumer.
    let close = loop {
        let idle_at = last_seen + config.idle_timeout;
        let timer_at = next_ping.min(next_check).min(next_presence);
        tokio::select! {
            _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => break Some((1001, "server shutting down")),
            // Only a real overflow counts; the outbox outlives this loop, so the
            // watch never closes under it.
            _ = async { slow_rx.wait_for(|slow| *slow).await.map(|_| ()) } => {
                ctx.metrics.ws_slow_consumer_disconnects_total.inc();
                tracing::info!(component = "fanout", reason = "queue-full", "slow consumer disconnected");
                break Some((CLOSE_SLOW_CONSUMER, "slow consumer: send queue full; reconnect with since_seq"));
            }
            next = outbound.recv() => {
                let Some(next) = next else { break None };
                match tokio::time::timeout(WRITE_TIMEOUT, write_queued(&ctx, &mut sink, next, &mut outbound)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        ctx.metrics.ws_slow_consumer_disconnects_total.inc();
                        tracing::info!(component = "fanout", reason = "write-stalled", "slow consumer disconnected");
                        break Some((CLOSE_SLOW_CONSUMER, "slow consumer: writes stalled; reconnect with since_seq"));
                    }
                }
            }
            _ = tokio::time::sleep_until(timer_at) => {
                let now = Instant::now();
                if now >= next_ping {
                    next_ping = now + config.heartbeat_interval;
                    let _ = outbox.queue.try_send(Outbound::Ping);
                }
                if now >= next_presence {
                    next_presence = now + presence::REFRESH;
                    if let Some(session) = &presence {
                        let live = subscriptions.iter().filter(|(_, task)| !task.is_finished());
                        let conversations: Vec<String> = live.map(|(id, _)| id.clone()).collect();
                        tokio::spawn(session.clone().refresh(ctx.clone(), caller.app_id.clone(), conversations));
                    }
                }
                if now >= next_check {
                    next_check = now + recheck_every;
                    let now = now_ms();
                    let refused = match ctx.auth.recheck_key(&api_key, now).await {
                        Err(e) if e.kind() != crate::error::Kind::Unavailable => Some(e),
                        _ if caller.token_expires_at_ms.is_some_and(|exp| exp <= now) => {
                            Some(Error::new(Code::TokenExpired, "the token expired"))
                        }
                        _ => None,
                    };
                    if let Some(e) = refused {
                        outbox.error(&e, Value::Null);
                        break Some((CLOSE_CREDENTIALS, "credentials revoked or expired"));
                    }
                }
            }
            _ = tokio::time::sleep_until(idle_at) => break Some((CLOSE_IDLE, "idle timeout")),
            frame = stream.next() => {
                last_seen = Instant::now();
                match frame {
                    None => break None,
                    Some(Err(e)) if is_too_big(&e) => break Some((CLOSE_TOO_BIG, "frame too large (at most 256 KiB)")),
                    Some(Err(_)) => break None,
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) => {
                        // Text frames that have already arrived are read now, so the
                        // sends among them go to the tail together (one append for a
                        // run of sends to one conversation), bounded by a batch and by
                        // the room their replies need in the queue.
                        let mut texts = vec![text];
                        let max = ctx.config.limits.max_batch;
                        while texts.len() < max && texts.len() * 2 < outbox.queue.capacity() {
                            let is_text = |frame: &_| matches!(frame, Ok(Message::Text(_)));
                            let next = std::pin::Pin::new(&mut stream).next_if(is_text).now_or_never();
                            let Some(Some(Ok(Message::Text(text)))) = next else { break };
                            texts.push(text);
                        }
                        // Boxed: the handlers' futures are large, and an idle connection
                        // should not carry their state in its task.
                        let session = presence.as_ref();
                        let frames = handle_frames(&ctx, &caller, &outbox, &mut subscriptions, session, &texts);
                        Box::pin(frames).await;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        outbox.error(&Error::new(Code::InvalidFrame, "frames are JSON text"), Value::Null);
                    }
                    Some(Ok(_)) => {} // ping/pong: counted as activity
                }
            }
        }
    };
    let mut subscribed = Vec::with_capacity(subscriptions.len());
    for (id, task) in subscriptions.drain() {
        task.abort();
        subscribed.push(id);
    }
    if let Some(session) = presence {
        // In the background: the close frame does not wait on the state store.
        tokio::spawn(session.leave_all(ctx.clone(), caller.app_id.clone(), subscribed));
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

/// Writes a queued item and whatever else is queued already (up to a bound),
/// then flushes once: a burst of frames costs one socket write, not one each.
async fn write_queued(
    ctx: &Context,
    sink: &mut SplitSink<WebSocket, Message>,
    first: Outbound,
    outbound: &mut mpsc::Receiver<Outbound>,
) -> Result<(), axum::Error> {
    sink.feed(outbound_message(ctx, first)).await?;
    for _ in 1..WRITE_COALESCE {
        let Ok(next) = outbound.try_recv() else { break };
        sink.feed(outbound_message(ctx, next)).await?;
    }
    sink.flush().await
}

/// The WebSocket message for a queued item, counted by op.
fn outbound_message(ctx: &Context, next: Outbound) -> Message {
    match next {
        Outbound::Frame(frame) => {
            ctx.metrics.ws_frames_sent_total.with_label_values(&[frame.op]).inc();
            Message::Text(frame.text.into())
        }
        Outbound::Ping => Message::Ping(Default::default()),
    }
}

/// Handles frames in the order they came; each run of `send` frames to one
/// conversation is sent as one batch, each frame still answered on its own.
async fn handle_frames(
    ctx: &Arc<Context>,
    caller: &Caller,
    outbox: &Outbox,
    subscriptions: &mut HashMap<String, JoinHandle<()>>,
    presence: Option<&PresenceSession>,
    texts: &[Utf8Bytes],
) {
    let frames: Vec<_> = texts.iter().map(|text| ClientFrame::parse_with_echo(text.as_str())).collect();
    let mut frames = frames.into_iter().peekable();
    while let Some((frame, echo)) = frames.next() {
        let Ok(ClientFrame::Send { conversation_id, request }) = frame else {
            handle_frame(ctx, caller, outbox, subscriptions, presence, frame, echo).await;
            continue;
        };
        let mut run = vec![(request, echo)];
        let same = |(frame, _): &(Result<ClientFrame, Error>, Echo)| match frame {
            Ok(ClientFrame::Send { conversation_id: next, .. }) => *next == conversation_id,
            _ => false,
        };
        while let Some((Ok(ClientFrame::Send { request, .. }), echo)) = frames.next_if(same) {
            run.push((request, echo));
        }
        send_frames(ctx, caller, outbox, &conversation_id, run).await;
    }
}

/// Sends a run of `send` frames to one conversation and acks (or answers an
/// error to) each.
async fn send_frames(
    ctx: &Context,
    caller: &Caller,
    outbox: &Outbox,
    conversation_id: &str,
    run: Vec<(messages::SendRequest, Echo)>,
) {
    let (requests, echoes): (Vec<_>, Vec<_>) = run.into_iter().map(|(request, echo)| (Ok(request), echo)).unzip();
    let results = match messages::send_many(ctx, caller, conversation_id, requests, now_ms()).await {
        Ok(results) => results,
        Err(e) => echoes.iter().map(|_| Err(e.clone())).collect(),
    };
    for (result, echo) in results.into_iter().zip(echoes) {
        match result {
            Ok(sent) => {
                outbox.send(
                    "ack",
                    json!({
                        "op": "ack",
                        "conversation_id": sent.envelope.conversation_id,
                        "client_msg_id": sent.envelope.client_msg_id,
                        "seq": sent.envelope.seq,
                        "id": sent.envelope.id,
                        "replayed": sent.replayed,
                    }),
                );
            }
            Err(e) => outbox.error(&e, echo.fields()),
        }
    }
}

async fn handle_frame(
    ctx: &Arc<Context>,
    caller: &Caller,
    outbox: &Outbox,
    subscriptions: &mut HashMap<String, JoinHandle<()>>,
    presence: Option<&PresenceSession>,
    frame: Result<ClientFrame, Error>,
    echo: Echo,
) {
    let result: Result<(), Error> = async {
        match frame? {
            ClientFrame::Ping => {
                outbox.send("pong", json!({"op": "pong"}));
                Ok(())
            }
            ClientFrame::Subscribe { conversation_id, since_seq } => {
                let at_the_cap = subscriptions.len() >= ctx.config.ws.max_subscriptions;
                if at_the_cap && !subscriptions.contains_key(&conversation_id) {
                    return Err(Error::new(Code::TooManySubscriptions, "unsubscribe from something first"));
                }
                let subscription = Subscription::open(ctx, caller, &conversation_id).await?;
                let id = subscription.conversation_id().to_string();
                if let Some(previous) = subscriptions.remove(&id) {
                    previous.abort();
                }
                let last_seq = subscription.last_seq;
                outbox.send("subscribed", json!({"op": "subscribed", "conversation_id": id, "last_seq": last_seq}));
                let (task_ctx, outbox) = (ctx.clone(), outbox.clone());
                let task = tokio::spawn(async move {
                    let _subscription = Gauged::new(&task_ctx.metrics.ws_subscriptions);
                    subscription.run(task_ctx, since_seq, outbox).await
                });
                subscriptions.insert(id.clone(), task);
                if let Some(session) = presence {
                    session.join(ctx, &caller.app_id, &id).await;
                }
                Ok(())
            }
            ClientFrame::Unsubscribe { conversation_id } => {
                if let Some(task) = subscriptions.remove(&conversation_id) {
                    task.abort();
                    if let Some(session) = presence {
                        session.leave(ctx, &caller.app_id, &conversation_id).await;
                    }
                }
                outbox.send("unsubscribed", json!({"op": "unsubscribed", "conversation_id": conversation_id}));
                Ok(())
            }
            ClientFrame::Send { conversation_id, request } => {
                send_frames(ctx, caller, outbox, &conversation_id, vec![(request, echo.clone())]).await;
                Ok(())
            }
            ClientFrame::Receipt { conversation_id, request } => {
                receipts::mark(ctx, caller, &conversation_id, request).await?;
                Ok(())
            }
            ClientFrame::Typing { conversation_id } => typing::typing(ctx, caller, &conversation_id).await,
        }
    }
    .await;
    if let Err(e) = result {
        outbox.error(&e, echo.fields());
    }
}

/// A user's WebSocket session as presence sees it (`crate::presence`).
#[derive(Clone)]
struct PresenceSession {
    user: String,
    id: String,
}

impl PresenceSession {
    /// Presence is best effort: a failure is logged and the subscription goes on.
    fn logged(result: Result<(), Error>, what: &str) {
        if let Err(e) = result {
            tracing::warn!(component = "fanout", error = %e.message, "presence not {what}");
        }
    }

    async fn join(&self, ctx: &Context, app_id: &str, conversation_id: &str) {
        let conv = ConvKey::new(app_id, conversation_id);
        Self::logged(presence::join(ctx, &conv, &self.user, &self.id).await, "recorded");
    }

    async fn leave(&self, ctx: &Context, app_id: &str, conversation_id: &str) {
        let conv = ConvKey::new(app_id, conversation_id);
        Self::logged(presence::leave(ctx, &conv, &self.user, &self.id).await, "removed");
    }

    async fn leave_all(self, ctx: Arc<Context>, app_id: String, conversations: Vec<String>) {
        for conversation_id in conversations {
            self.leave(&ctx, &app_id, &conversation_id).await;
        }
    }

    async fn refresh(self, ctx: Arc<Context>, app_id: String, conversations: Vec<String>) {
        for conversation_id in conversations {
            let conv = ConvKey::new(&app_id, &conversation_id);
            Self::logged(presence::refresh(&ctx, &conv, &self.user, &self.id).await, "refreshed");
        }
    }
}
