//! Live publish/subscribe ([`Live`]: what travels on a conversation's
//! channel, and a subscription to it), and the per-instance live hub both
//! tails deliver through: one local broadcast channel per conversation with
//! subscribers, reference-counted.
//!
//! An instance holds at most one upstream subscription per conversation (a
//! Redis channel in services mode; nothing upstream when embedded) and
//! releases it when its last local subscriber leaves.
//!
//! Releasing upstream is async but a subscription ends in `Drop`, so the
//! guard hands the channel to the hub's release task, which the hub owns:
//! the task ends with the hub, whose upstream connection goes with it, so
//! nothing is left to unsubscribe from.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};

use super::tail::{ConvKey, TailEntry};
use super::StoreError;
use crate::worker::OwnedTask;

/// How many events one local channel buffers for its slowest subscriber
/// before that subscriber is told it lagged (and catches up from the
/// timeline). The buffer is allocated whole for every conversation with a
/// local subscriber, ~46 bytes a slot: 1,024 slots cost 41 MB more RSS at
/// 1,000 subscribed conversations than 128 (load/README.md). 128 holds a
/// whole batch (`limits.max_batch`, 100) for a subscriber that is a moment late.
const CHANNEL_CAPACITY: usize = 128;

/// Live publish/subscribe: what an instance's subscribers receive. A
/// conversation's live channel carries its new messages (published by the
/// append step) and ephemeral events (receipts, typing); nothing on it is
/// stored.
#[async_trait]
pub trait Live: Send + Sync {
    /// Publishes an ephemeral event on the conversation's live channel.
    async fn publish(&self, conv: &ConvKey, event: &[u8]) -> Result<(), StoreError>;

    /// Subscribes to the conversation's live channel.
    async fn subscribe(&self, conv: &ConvKey) -> Result<LiveSubscription, StoreError>;
}

/// What travels on a conversation's live channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A message just appended.
    Message(LiveMessage),
    /// An ephemeral event (receipt, typing), opaque to the store.
    Event(Vec<u8>),
}

/// A message on the live channel, shared by every local subscriber: one
/// copy of the entry, and one slot where the first subscriber to handle it
/// leaves what it made of it (the decoded envelope, the frame) for the others.
#[derive(Clone)]
pub struct LiveMessage {
    entry: Arc<TailEntry>,
    memo: Arc<OnceLock<Option<Arc<dyn Any + Send + Sync>>>>,
}

impl LiveMessage {
    pub fn new(entry: TailEntry) -> LiveMessage {
        LiveMessage { entry: Arc::new(entry), memo: Arc::default() }
    }

    /// What `make` made of this message, made once for all its subscribers
    /// in this process; `None` when `make` gave nothing (or another type was
    /// memoized first).
    pub fn memo<T: Any + Send + Sync>(&self, make: impl FnOnce(&TailEntry) -> Option<T>) -> Option<Arc<T>> {
        let made =
            self.memo.get_or_init(|| make(&self.entry).map(|value| Arc::new(value) as Arc<dyn Any + Send + Sync>));
        made.clone()?.downcast::<T>().ok()
    }
}

impl std::ops::Deref for LiveMessage {
    type Target = TailEntry;
    fn deref(&self) -> &TailEntry {
        &self.entry
    }
}

impl PartialEq for LiveMessage {
    fn eq(&self, other: &Self) -> bool {
        self.entry == other.entry
    }
}

impl Eq for LiveMessage {}

impl std::fmt::Debug for LiveMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.entry.fmt(f)
    }
}

impl LiveEvent {
    /// A message event for `entry`.
    pub fn message(entry: TailEntry) -> LiveEvent {
        LiveEvent::Message(LiveMessage::new(entry))
    }

    /// Wire form on the live channel: `m<seq>:<ts>:<body>` or `e<bytes>`. The
    /// Redis append script builds the first form itself.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            LiveEvent::Message(entry) => {
                let mut out = format!("m{}:{}:", entry.seq, entry.ts_ms).into_bytes();
                out.extend_from_slice(&entry.body);
                out
            }
            LiveEvent::Event(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(b'e');
                out.extend_from_slice(bytes);
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<LiveEvent> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            b'e' => Some(LiveEvent::Event(rest.to_vec())),
            b'm' => {
                let mut parts = rest.splitn(3, |&b| b == b':');
                let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
                let ts_ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
                let body = parts.next()?.to_vec();
                Some(LiveEvent::message(TailEntry { seq, ts_ms, body }))
            }
            _ => None,
        }
    }
}

/// A live subscription to one conversation. Dropping it releases the
/// instance-wide channel subscription when it was the last one.
pub struct LiveSubscription {
    receiver: broadcast::Receiver<Carried>,
    _guard: SubscriptionGuard,
}

impl LiveSubscription {
    /// The next event; `Err(Lagged(n))` when this subscriber fell `n` events
    /// behind and must catch up from the tail.
    /// After an upstream reconnect it is `Err(Lagged(0))` as well: events
    /// published meanwhile never arrived.
    pub async fn recv(&mut self) -> Result<LiveEvent, broadcast::error::RecvError> {
        match self.receiver.recv().await? {
            Carried::Event(event) => Ok(event),
            Carried::Resync => Err(broadcast::error::RecvError::Lagged(0)),
        }
    }
}

/// What a local channel carries: events, and the hub's word that some may
/// have been missed.
#[derive(Clone)]
enum Carried {
    Event(LiveEvent),
    Resync,
}

/// Where a hub's events come from beyond this process.
#[async_trait]
pub(super) trait Upstream: Send + Sync {
    async fn subscribe(&self, channel: &str) -> Result<(), StoreError>;
    async fn unsubscribe(&self, channel: &str) -> Result<(), StoreError>;
}

#[derive(Clone)]
pub(super) struct LiveHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    channels: Mutex<HashMap<String, Channel>>,
    upstream: Option<Box<dyn Upstream>>,
    /// Serializes upstream (un)subscribe calls so a release racing a new
    /// subscription cannot leave the channel unsubscribed upstream.
    upstream_ops: tokio::sync::Mutex<()>,
    /// Channels whose last local subscriber left, for the release task (only
    /// with an upstream).
    released: Option<mpsc::UnboundedSender<String>>,
    _release_task: Option<OwnedTask>,
}

struct Channel {
    sender: broadcast::Sender<Carried>,
    subscribers: usize,
}

/// Releases one local subscription when dropped.
struct SubscriptionGuard {
    hub: Arc<HubInner>,
    channel: String,
}

impl LiveHub {
    /// A hub; with an upstream, it starts its release task (so it must be
    /// built inside the runtime).
    pub(super) fn new(upstream: Option<Box<dyn Upstream>>) -> Self {
        let inner = Arc::new_cyclic(|hub: &Weak<HubInner>| {
            let (released, release_task) = if upstream.is_some() {
                let (sender, receiver) = mpsc::unbounded_channel();
                (Some(sender), Some(OwnedTask::spawn(release_upstream(hub.clone(), receiver))))
            } else {
                (None, None)
            };
            HubInner {
                channels: Mutex::default(),
                upstream,
                upstream_ops: tokio::sync::Mutex::new(()),
                released,
                _release_task: release_task,
            }
        });
        LiveHub { inner }
    }

    pub(super) async fn subscribe(&self, channel: String) -> Result<LiveSubscription, StoreError> {
        let _ops = self.inner.upstream_ops.lock().await;
        let (receiver, first) = {
            let mut channels = self.inner.channels.lock().expect("live hub lock");
            match channels.get_mut(&channel) {
                Some(existing) => {
                    existing.subscribers += 1;
                    (existing.sender.subscribe(), false)
                }
                None => {
                    let (sender, receiver) = broadcast::channel(CHANNEL_CAPACITY);
                    channels.insert(channel.clone(), Channel { sender, subscribers: 1 });
                    (receiver, true)
                }
            }
        };
        if first {
            if let Some(upstream) = &self.inner.upstream {
                if let Err(e) = upstream.subscribe(&channel).await {
                    self.inner.channels.lock().expect("live hub lock").remove(&channel);
                    return Err(e);
                }
            }
        }
        Ok(LiveSubscription { receiver, _guard: SubscriptionGuard { hub: self.inner.clone(), channel } })
    }

    /// Hands an event to this instance's local subscribers of `channel`.
    pub(super) fn deliver(&self, channel: &str, event: LiveEvent) {
        let channels = self.inner.channels.lock().expect("live hub lock");
        if let Some(local) = channels.get(channel) {
            // No receiver left is fine: the guard is about to remove the channel.
            let _ = local.sender.send(Carried::Event(event));
        }
    }

    /// Tells every local subscriber that events may have been missed (the
    /// upstream connection was lost and is back): each catches up from the
    /// timeline as if it had lagged.
    pub(super) fn resync_all(&self) {
        for local in self.inner.channels.lock().expect("live hub lock").values() {
            let _ = local.sender.send(Carried::Resync);
        }
    }

    /// Number of channels with local subscribers.
    #[cfg(test)]
    pub(super) fn channel_count(&self) -> usize {
        self.inner.channels.lock().expect("live hub lock").len()
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let released = {
            let mut channels = self.hub.channels.lock().expect("live hub lock");
            match channels.get_mut(&self.channel) {
                Some(local) if local.subscribers > 1 => {
                    local.subscribers -= 1;
                    false
                }
                Some(_) => {
                    channels.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if let (true, Some(release)) = (released, &self.hub.released) {
            // Fails only when the release task is gone, and with it the hub.
            let _ = release.send(std::mem::take(&mut self.channel));
        }
    }
}

/// The release task: unsubscribes upstream from each channel whose last
/// local subscriber left, unless a new one arrived meanwhile. Holds the hub
/// weakly (the hub owns the task); ends when the hub goes.
async fn release_upstream(hub: Weak<HubInner>, mut released: mpsc::UnboundedReceiver<String>) {
    while let Some(channel) = released.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        let _ops = hub.upstream_ops.lock().await;
        // A new local subscriber may have arrived meanwhile and re-subscribed.
        if hub.channels.lock().expect("live hub lock").contains_key(&channel) {
            continue;
        }
        if let Some(upstream) = &hub.upstream {
            if let Err(e) = upstream.unsubscribe(&channel).await {
                tracing::warn!(component = "live", channel = %channel, error = %e, "live unsubscribe failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_events_round_trip() {
        for event in [
            LiveEvent::message(TailEntry { seq: 42, ts_ms: 1_700_000_000_123, body: b"{\"a\":\"x:y\"}".to_vec() }),
            LiveEvent::Event(b"{\"op\":\"typing\"}".to_vec()),
        ] {
            assert_eq!(LiveEvent::decode(&event.encode()), Some(event));
        }
        assert_eq!(LiveEvent::decode(b"mx:1:"), None);
        assert_eq!(LiveEvent::decode(b""), None);
    }

    #[tokio::test]
    async fn a_resync_reads_as_lagged_to_every_subscriber_then_events_flow() {
        let hub = LiveHub::new(None);
        let (mut a, mut b) = (hub.subscribe("a".into()).await.unwrap(), hub.subscribe("b".into()).await.unwrap());
        hub.resync_all();
        let event = LiveEvent::Event(b"e".to_vec());
        hub.deliver("a", event.clone());
        assert!(matches!(a.recv().await, Err(broadcast::error::RecvError::Lagged(0))));
        assert!(matches!(b.recv().await, Err(broadcast::error::RecvError::Lagged(0))));
        assert_eq!(a.recv().await.unwrap(), event);
    }

    #[tokio::test]
    async fn channels_are_released_with_their_last_subscriber() {
        let hub = LiveHub::new(None);
        let mut first = hub.subscribe("c".into()).await.unwrap();
        let second = hub.subscribe("c".into()).await.unwrap();
        assert_eq!(hub.channel_count(), 1);
        let event = LiveEvent::message(TailEntry { seq: 1, ts_ms: 1, body: b"x".to_vec() });
        hub.deliver("c", event.clone());
        assert_eq!(first.recv().await.unwrap(), event);
        drop(second);
        assert_eq!(hub.channel_count(), 1);
        drop(first);
        assert_eq!(hub.channel_count(), 0);
    }

    /// Records upstream calls as `+channel` and `-channel`.
    struct Recorder(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Upstream for Recorder {
        async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(format!("+{channel}"));
            Ok(())
        }
        async fn unsubscribe(&self, channel: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(format!("-{channel}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_release_task_unsubscribes_upstream_after_the_last_subscriber() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let hub = LiveHub::new(Some(Box::new(Recorder(calls.clone()))));
        let first = hub.subscribe("c".into()).await.unwrap();
        let second = hub.subscribe("c".into()).await.unwrap();
        drop(first);
        drop(second);
        for _ in 0..1000 {
            if calls.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(*calls.lock().unwrap(), ["+c", "-c"]);
    }
}
