//! Group commit: calls that arrive while the same kind of call on the same
//! key is in flight wait, and go together in the next one. Concurrent sends
//! to a conversation become one append (one Redis script call, one SQLite
//! transaction), their rate-limit checks of one app one script call, their
//! senders' own-message marks on one conversation one raise.
//!
//! Each caller's items stay contiguous and in its order, and callers are
//! served in arrival order, so the result is what the same calls one after
//! another would give (idempotency included: a key used by an earlier caller
//! of a group replays for a later one). A group runs in a task of its own, so
//! a caller that goes away (a client disconnecting) never strands the callers
//! queued behind it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::coordination::Coordination;
use super::state::TtlState;
use super::tail::{AppendOutcome, AppendRequest, ConvKey, DirtyConversation, Tail, TailEntry, TailMemory};
use super::StoreError;
use crate::ratelimit::{Grant, RateCheck};
use crate::telemetry::Metrics;

/// Items one group takes at most; the rest wait for the next.
const MAX_GROUP_ITEMS: usize = 1000;

/// One caller's items waiting for the next group of their key.
struct Waiting<T, R> {
    items: Vec<T>,
    reply: oneshot::Sender<Result<Vec<R>, StoreError>>,
}

/// A key present here has a group in flight; its callers queue.
type Queues<K, T, R> = Arc<Mutex<HashMap<K, Vec<Waiting<T, R>>>>>;

/// Groups the calls of one operation by key.
struct Coalescer<K, T, R> {
    /// The operation's name in `msgd_store_group_items{op}`.
    op: &'static str,
    queues: Queues<K, T, R>,
    metrics: Metrics,
}

impl<K, T, R> Coalescer<K, T, R>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    fn new(op: &'static str, metrics: &Metrics) -> Self {
        Coalescer { op, queues: Arc::default(), metrics: metrics.clone() }
    }

    /// Runs `items` under `key` in the key's next group; `run` performs a
    /// group (all its callers' items, in order) and answers one result per item.
    async fn call<F, Fut>(&self, key: K, items: Vec<T>, run: F) -> Result<Vec<R>, StoreError>
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queues = self.queues.lock().expect("group commit lock");
            let waiting = Waiting { items, reply };
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push(waiting);
                    false
                }
                None => {
                    queues.insert(key.clone(), vec![waiting]);
                    true
                }
            }
        };
        if lead {
            let histogram = self.metrics.store_group_items.with_label_values(&[self.op]);
            tokio::spawn(drain(self.queues.clone(), key, run, histogram));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable { dependency: "store", message: "a grouped call ended early".into() })
        })
    }
}

/// Runs the key's queued calls, group after group, until none are left; then
/// the key leaves the map.
async fn drain<K, T, R, F, Fut>(queues: Queues<K, T, R>, key: K, mut run: F, histogram: prometheus::Histogram)
where
    K: Hash + Eq,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, StoreError>>,
{
    loop {
        let group: Vec<Waiting<T, R>> = {
            let mut queues = queues.lock().expect("group commit lock");
            let queue = queues.get_mut(&key).expect("a draining key stays queued");
            if queue.is_empty() {
                queues.remove(&key);
                return;
            }
            let (mut taken, mut items) = (0, 0);
            while taken < queue.len() && (taken == 0 || items + queue[taken].items.len() <= MAX_GROUP_ITEMS) {
                items += queue[taken].items.len();
                taken += 1;
            }
            queue.drain(..taken).collect()
        };
        let mut counts = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let mut items = Vec::new();
        for waiting in group {
            counts.push(waiting.items.len());
            replies.push(waiting.reply);
            items.extend(waiting.items);
        }
        let total = items.len();
        histogram.observe(total as f64);
        match run(items).await {
            Ok(results) if results.len() == total => {
                let mut results = results.into_iter();
                for (reply, count) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(results.by_ref().take(count).collect()));
                }
            }
            Ok(results) => {
                let error = StoreError::Corrupt {
                    dependency: "store",
                    message: format!("a group of {total} answered {} results", results.len()),
                };
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The tail, its state and its rate limits with group commit in front.
pub(crate) struct Grouped {
    tail: Arc<dyn Tail>,
    state: Arc<dyn TtlState>,
    coordination: Arc<dyn Coordination>,
    appends: Coalescer<ConvKey, AppendRequest, AppendOutcome>,
    raises: Coalescer<String, (String, u64, Duration), u64>,
    rates: Coalescer<String, RateCheck, Grant>,
}

impl Grouped {
    pub(crate) fn new(
        tail: Arc<dyn Tail>,
        state: Arc<dyn TtlState>,
        coordination: Arc<dyn Coordination>,
        metrics: &Metrics,
    ) -> Grouped {
        Grouped {
            tail,
            state,
            coordination,
            appends: Coalescer::new("append", metrics),
            raises: Coalescer::new("state_raise", metrics),
            rates: Coalescer::new("rate_limit", metrics),
        }
    }
}

#[async_trait]
impl Tail for Grouped {
    async fn ping(&self) -> Result<(), StoreError> {
        self.tail.ping().await
    }

    async fn append_batch(&self, requests: &[AppendRequest]) -> Result<Vec<AppendOutcome>, StoreError> {
        let Some(first) = requests.first() else { return Ok(Vec::new()) };
        let tail = self.tail.clone();
        let run = move |group: Vec<AppendRequest>| {
            let tail = tail.clone();
            async move { tail.append_batch(&group).await }
        };
        self.appends.call(first.conv.clone(), requests.to_vec(), run).await
    }

    async fn idempotency_claims(
        &self,
        conv: &ConvKey,
        keys: &[&str],
    ) -> Result<Vec<Option<(u64, String)>>, StoreError> {
        self.tail.idempotency_claims(conv, keys).await
    }

    async fn seed_seq(&self, conv: &ConvKey, last_seq: u64) -> Result<(), StoreError> {
        self.tail.seed_seq(conv, last_seq).await
    }

    async fn last_seq(&self, conv: &ConvKey) -> Result<Option<u64>, StoreError> {
        self.tail.last_seq(conv).await
    }

    async fn read(&self, conv: &ConvKey, after_seq: u64, limit: usize) -> Result<Vec<TailEntry>, StoreError> {
        self.tail.read(conv, after_seq, limit).await
    }

    async fn trim(&self, conv: &ConvKey, through_seq: u64) -> Result<u64, StoreError> {
        self.tail.trim(conv, through_seq).await
    }

    async fn dirty(&self, shard: u32) -> Result<Vec<DirtyConversation>, StoreError> {
        self.tail.dirty(shard).await
    }

    async fn clear_dirty(&self, seen: &DirtyConversation) -> Result<bool, StoreError> {
        self.tail.clear_dirty(seen).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Tail::purge_expired(self.tail.as_ref()).await
    }

    fn releases_claims(&self) -> bool {
        self.tail.releases_claims()
    }

    async fn release_claims(&self, conv: &ConvKey, keys: &[String], now: i64) -> Result<u64, StoreError> {
        self.tail.release_claims(conv, keys, now).await
    }

    async fn memory(&self) -> Result<Option<TailMemory>, StoreError> {
        self.tail.memory().await
    }
}

#[async_trait]
impl TtlState for Grouped {
    async fn state_set(&self, key: &str, field: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.state.state_set(key, field, value, ttl).await
    }

    async fn state_raise_many(
        &self,
        key: &str,
        raises: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        let (state, name) = (self.state.clone(), key.to_string());
        let run = move |group: Vec<(String, u64, Duration)>| {
            let (state, name) = (state.clone(), name.clone());
            async move {
                // The hash lives as long as the longest TTL asked for.
                let ttl = group.iter().map(|(_, _, ttl)| *ttl).max().unwrap_or_default();
                let raises: Vec<(String, u64)> = group.into_iter().map(|(field, value, _)| (field, value)).collect();
                state.state_raise_many(&name, &raises, ttl).await
            }
        };
        let items = raises.iter().map(|(field, value)| (field.clone(), *value, ttl)).collect();
        self.raises.call(key.to_string(), items, run).await
    }

    async fn state_remove(&self, key: &str, fields: &[String]) -> Result<(), StoreError> {
        self.state.state_remove(key, fields).await
    }

    async fn state_get(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.state.state_get(key).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        TtlState::purge_expired(self.state.as_ref()).await
    }
}

#[async_trait]
impl Coordination for Grouped {
    async fn rate_limit_many(&self, app_id: &str, checks: &[RateCheck]) -> Result<Vec<Grant>, StoreError> {
        let (coordination, app) = (self.coordination.clone(), app_id.to_string());
        let run = move |group: Vec<RateCheck>| {
            let (coordination, app) = (coordination.clone(), app.clone());
            async move { coordination.rate_limit_many(&app, &group).await }
        };
        self.rates.call(app_id.to_string(), checks.to_vec(), run).await
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.coordination.acquire_lease(name, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.coordination.release_lease(name, holder).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group runs for 50 ms and records what it carried; each item's result
    /// is the item times ten.
    fn slow_run(
        groups: Arc<Mutex<Vec<Vec<u32>>>>,
    ) -> impl FnMut(Vec<u32>) -> futures::future::BoxFuture<'static, Result<Vec<u32>, StoreError>> {
        move |items: Vec<u32>| {
            let groups = groups.clone();
            Box::pin(async move {
                groups.lock().unwrap().push(items.clone());
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(items.into_iter().map(|item| item * 10).collect())
            })
        }
    }

    #[tokio::test]
    async fn callers_that_wait_go_together_in_order_and_a_leaving_caller_strands_nobody() {
        let coalescer = Arc::new(Coalescer::<&str, u32, u32>::new("append", &Metrics::new("embedded")));
        let groups: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let first = {
            let (coalescer, groups) = (coalescer.clone(), groups.clone());
            tokio::spawn(async move { coalescer.call("c", vec![1], slow_run(groups)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await; // the first group is in flight
        let mut waiting = Vec::new();
        for caller in 0..4u32 {
            let (coalescer, groups) = (coalescer.clone(), groups.clone());
            let items = vec![100 + caller * 2, 101 + caller * 2];
            waiting.push(tokio::spawn(async move { coalescer.call("c", items, slow_run(groups)).await }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Another key is not held up by this one.
        let other = coalescer.call("d", vec![7], slow_run(groups.clone())).await.unwrap();
        assert_eq!(other, vec![70]);
        // A caller that goes away while queued: the others are still answered.
        waiting.remove(1).abort();
        assert_eq!(first.await.unwrap().unwrap(), vec![10]);
        let answers: Vec<Vec<u32>> =
            futures::future::join_all(waiting).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(answers, vec![vec![1000, 1010], vec![1040, 1050], vec![1060, 1070]]);
        let groups = groups.lock().unwrap().clone();
        assert_eq!(
            groups,
            vec![vec![1], vec![7], vec![100, 101, 102, 103, 104, 105, 106, 107]],
            "queued callers went as one group, in order"
        );
        assert!(coalescer.queues.lock().unwrap().is_empty(), "drained keys leave the map");
    }
}
