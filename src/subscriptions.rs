//! Subscriptions: one conversation delivered to one receiver, catch-up from
//! `since_seq` first, then live — no gap and no duplicate across the switch.
//!
//! A subscription subscribes to the live channel *first*, then reads the
//! last seq, then replays from `since_seq` through the [`crate::timeline`]
//! (tail, then segments), then forwards live events skipping what it already
//! sent; a gap seen live (a missed publish, a lagging local channel) is
//! filled from the timeline. Membership is re-checked per live event
//! (cached, invalidated on change), so a removed member stops receiving at
//! once.
//!
//! The edge (the WebSocket session) is the [`Receiver`]: it decides how a
//! delivery is framed and queued, and how back-pressure works.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Caller;
use crate::clock::now_ms;
use crate::context::Context;
use crate::envelope::Envelope;
use crate::error::{Code, Error};
use crate::store::{ConvKey, LiveEvent, LiveSubscription};

/// Seqs replayed per timeline read during catch-up.
const CATCH_UP_CHUNK: u64 = 500;

/// What a subscription hands its receiver.
#[derive(Debug)]
pub enum Delivery {
    /// A live message, shared by every local subscriber of its conversation.
    Message(Arc<SharedMessage>),
    /// An ephemeral event (`receipt`, `typing`) as published, with its op.
    Event { op: &'static str, frame: Value },
}

/// A live message decoded once for all local subscribers, with a slot for
/// its frame, encoded once by the first receiver that sends it.
#[derive(Debug)]
pub struct SharedMessage {
    pub envelope: Envelope,
    frame: OnceLock<String>,
}

impl SharedMessage {
    /// The message's frame as `encode` makes it, made once.
    pub fn frame(&self, encode: impl FnOnce(&Envelope) -> String) -> &str {
        self.frame.get_or_init(|| encode(&self.envelope))
    }
}

/// Where a subscription delivers.
pub trait Receiver: Send + Sync + 'static {
    /// A catch-up message: may wait for room (back-pressure). False when the
    /// receiver is gone.
    fn replayed(&self, message: Envelope) -> impl Future<Output = bool> + Send;
    /// A live delivery: never waits. False when the receiver is gone or too
    /// slow to take it.
    fn live(&self, delivery: Delivery) -> bool;
    /// The subscription ends because of `err`; `details` names the
    /// conversation (and what else the error concerns).
    fn ended(&self, err: &Error, details: Value);
}

/// An opened subscription, not yet delivering.
pub struct Subscription {
    caller: Caller,
    conv: ConvKey,
    live: LiveSubscription,
    /// The conversation's last seq when the subscription was opened.
    pub last_seq: u64,
    /// The membership version when access was last confirmed, and when: the
    /// answer stands until the version moves or [`MEMBERSHIP_RECHECK`] passes.
    confirmed: (u64, Instant),
}

/// How long a subscription's confirmed access stands without a membership
/// change: the backstop for an invalidation that was never published.
const MEMBERSHIP_RECHECK: Duration = Duration::from_secs(60);

impl Subscription {
    /// Checks access and subscribes to the live channel, then reads the last
    /// seq (in that order: nothing published after the read is missed).
    pub async fn open(ctx: &Context, caller: &Caller, conversation_id: &str) -> Result<Subscription, Error> {
        let version = crate::ids::conversation_id(conversation_id)
            .map(|id| ctx.membership.version(&caller.app_id, &id))
            .unwrap_or_default();
        let id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
        let conv = ConvKey::new(&caller.app_id, &id);
        let live = ctx.stores.live.subscribe(&conv).await?;
        let last_seq = ctx.timeline.last_seq(&conv).await?;
        Ok(Subscription { caller: caller.clone(), conv, live, last_seq, confirmed: (version, Instant::now()) })
    }

    /// The canonical conversation id.
    pub fn conversation_id(&self) -> &str {
        &self.conv.conversation_id
    }

    /// Delivers until the receiver is gone, the caller loses access, or the
    /// live channel closes: catch-up from `since_seq` (when given), then live.
    pub async fn run(mut self, ctx: Arc<Context>, since_seq: Option<u64>, to: impl Receiver) {
        let details = json!({"conversation_id": self.conv.conversation_id});
        let mut delivered = match since_seq {
            None => self.last_seq,
            Some(since) if since > self.last_seq => {
                let message = format!("since_seq is past the last seq {}", self.last_seq);
                to.ended(&Error::new(Code::InvalidSinceSeq, message), details);
                return;
            }
            Some(since) => match Box::pin(replay(&ctx, &to, &self.conv, since, self.last_seq)).await {
                Some(through) => through,
                None => return,
            },
        };
        loop {
            let event = match self.live.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    // Fell behind the local channel: refill from the timeline up to now.
                    tracing::debug!(
                        component = "fanout",
                        "conversation-id" = %self.conv.conversation_id,
                        "message-count" = missed,
                        "subscriber lagged; catching up from the timeline"
                    );
                    let Ok(last) = ctx.timeline.last_seq(&self.conv).await else { continue };
                    match Box::pin(replay(&ctx, &to, &self.conv, delivered, last)).await {
                        Some(through) => delivered = through,
                        None => return,
                    }
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if let LiveEvent::Event(bytes) = &event {
                // Its members are gone with it: the frame says why the subscription ends.
                if let Some(delivery @ Delivery::Event { op: "conversation.deleted", .. }) = event_delivery(bytes) {
                    to.live(delivery);
                    return;
                }
            }
            if !self.still_member(&ctx).await {
                to.ended(&Error::not_member(), details);
                return;
            }
            match event {
                LiveEvent::Message(entry) => {
                    if entry.seq <= delivered {
                        continue;
                    }
                    if entry.seq > delivered + 1 {
                        match Box::pin(replay(&ctx, &to, &self.conv, delivered, entry.seq - 1)).await {
                            Some(through) => delivered = through,
                            None => return,
                        }
                    }
                    let shared = entry.memo(|entry| {
                        let envelope = Envelope::from_entry(entry).ok()?;
                        Some(SharedMessage { envelope, frame: OnceLock::new() })
                    });
                    let Some(shared) = shared else { continue };
                    let latency = (now_ms() - shared.envelope.ts).max(0) as f64 / 1000.0;
                    ctx.metrics.delivery_latency_seconds.observe(latency);
                    if !to.live(Delivery::Message(shared)) {
                        return;
                    }
                    delivered = entry.seq;
                }
                LiveEvent::Event(bytes) => {
                    let Some(delivery) = event_delivery(&bytes) else { continue };
                    if !to.live(delivery) {
                        return;
                    }
                }
            }
        }
    }

    /// Whether the caller may still read the conversation. When the metadata
    /// store is unreachable the answer given at subscribe time stands, rather
    /// than silently dropping events. Asked for each event, it reads
    /// membership only when the conversation's membership version moved or
    /// the last answer is [`MEMBERSHIP_RECHECK`] old (a quiet conversation's
    /// events would otherwise each miss the membership cache and query the
    /// database). The version is read first, so a change during the read
    /// moves it past the one recorded.
    async fn still_member(&mut self, ctx: &Context) -> bool {
        let Some(user) = &self.caller.user_id else { return true };
        let (app, conversation) = (&self.caller.app_id, &self.conv.conversation_id);
        let version = ctx.membership.version(app, conversation);
        if version == self.confirmed.0 && self.confirmed.1.elapsed() < MEMBERSHIP_RECHECK {
            return true;
        }
        match Box::pin(ctx.membership.role(app, conversation, user)).await {
            Ok(None) => false,
            Ok(Some(_)) => {
                self.confirmed = (version, Instant::now());
                true
            }
            Err(_) => true,
        }
    }
}

/// A published ephemeral event as a delivery; anything else is ignored.
fn event_delivery(bytes: &[u8]) -> Option<Delivery> {
    let frame = serde_json::from_slice::<Value>(bytes).ok()?;
    let op = match frame["op"].as_str() {
        Some("receipt") => "receipt",
        Some("typing") => "typing",
        Some("reaction") => "reaction",
        Some("presence") => "presence",
        Some("conversation.updated") => "conversation.updated",
        Some("conversation.deleted") => "conversation.deleted",
        _ => return None,
    };
    Some(Delivery::Event { op, frame })
}

/// Delivers messages `after+1..=through` from the timeline; returns the last
/// seq delivered, or `None` when the subscription must end (retention
/// passed, a read failed, or the receiver is gone) — the receiver was told.
async fn replay(ctx: &Context, to: &impl Receiver, conv: &ConvKey, after: u64, through: u64) -> Option<u64> {
    let cutoff = ctx.timeline.retention_cutoff(now_ms());
    let mut delivered = after;
    while delivered < through {
        let end = (delivered + CATCH_UP_CHUNK).min(through);
        let read = async {
            let mut batch = ctx.timeline.read(conv, delivered + 1, end, cutoff).await?;
            ctx.timeline.apply_changes(conv, &mut batch).await?;
            Ok::<_, Error>(batch)
        };
        let batch = match read.await {
            Ok(batch) => batch,
            Err(e) => {
                to.ended(&e, json!({"conversation_id": conv.conversation_id}));
                return None;
            }
        };
        if batch.first().map(|e| e.seq) != Some(delivered + 1) {
            to.ended(
                &Error::new(
                    Code::SinceSeqExpired,
                    "messages after since_seq are past the retention window; \
                     resync from GET /v1/conversations/{id}/messages",
                ),
                json!({"conversation_id": conv.conversation_id, "since_seq": after}),
            );
            return None;
        }
        for envelope in batch {
            if envelope.seq != delivered + 1 {
                break;
            }
            delivered = envelope.seq;
            if !to.replayed(envelope).await {
                return None;
            }
        }
    }
    Some(delivered)
}
