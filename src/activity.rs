//! Each conversation's last activity (the time of its newest message), the
//! order of the inbox (README, "Inbox"). Sends note it here in memory; the
//! [`ActivityWriter`] worker writes what changed about once a second, in one
//! transaction, so the send path never waits on the metadata store for it.
//! A crash loses at most the last second of notes: the inbox order lags
//! until those conversations' next message, and nothing else depends on it
//! (the last seq, last message and unread counts are read from the
//! timeline).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::{ConvKey, Metadata};
use crate::worker::{Worker, WorkerState};

/// Conversations noted and not yet written, at most; more are dropped (and
/// counted in the writer's next log line) rather than grow without bound
/// while the metadata store is down.
const MAX_PENDING: usize = 100_000;
const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Pending activity, shared by the send path and the writer.
#[derive(Default)]
pub struct Activity {
    pending: Mutex<HashMap<ConvKey, i64>>,
    dropped: AtomicU64,
}

impl Activity {
    /// Notes a message at `ts` (Unix ms) in `conv`.
    pub fn touch(&self, conv: &ConvKey, ts: i64) {
        let mut pending = self.pending.lock().expect("activity lock");
        let full = pending.len() >= MAX_PENDING;
        match pending.get_mut(conv) {
            Some(at) => *at = (*at).max(ts),
            None if full => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                pending.insert(conv.clone(), ts);
            }
        }
    }

    fn take(&self) -> Vec<(ConvKey, i64)> {
        std::mem::take(&mut *self.pending.lock().expect("activity lock")).into_iter().collect()
    }

    /// Notes that failed to be written go back, to be tried again.
    fn put_back(&self, notes: Vec<(ConvKey, i64)>) {
        for (conv, ts) in notes {
            self.touch(&conv, ts);
        }
    }

    fn len(&self) -> usize {
        self.pending.lock().expect("activity lock").len()
    }
}

/// Writes pending activity to the metadata store, once a second and once
/// more at shutdown.
pub struct ActivityWriter {
    activity: Arc<Activity>,
    metadata: Arc<Metadata>,
}

impl ActivityWriter {
    pub fn new(activity: Arc<Activity>, metadata: Arc<Metadata>) -> ActivityWriter {
        ActivityWriter { activity, metadata }
    }
}

#[async_trait::async_trait]
impl Worker for ActivityWriter {
    fn name(&self) -> &'static str {
        "activity"
    }

    fn component(&self) -> &'static str {
        "conversations"
    }

    fn interval(&self) -> Option<Duration> {
        Some(WRITE_INTERVAL)
    }

    async fn work(&mut self) -> anyhow::Result<WorkerState> {
        let dropped = self.activity.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                component = "conversations",
                "conversation-count" = dropped,
                "inbox activity not recorded: too many conversations pending; their order lags until their next message"
            );
        }
        let notes = self.activity.take();
        if notes.is_empty() {
            return Ok(WorkerState::Idle);
        }
        if let Err(e) = self.metadata.record_activity(&notes).await {
            self.activity.put_back(notes);
            return Err(e.into());
        }
        Ok(WorkerState::Idle)
    }

    fn queue_depth(&self) -> Option<i64> {
        Some(self.activity.len() as i64)
    }

    async fn finish(&mut self) {
        if let Err(e) = self.work().await {
            tracing::warn!(component = "conversations", error = %e, "inbox activity not written at shutdown");
        }
    }
}
