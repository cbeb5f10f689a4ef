//! The one way msgd runs background work: a [`Worker`] says what one step of
//! its work is, and [`Workers`] runs every worker of a process the same way —
//! interval waits, error backoff, the start and failure log lines, and
//! shutdown on the `serve` stop channel, which it then joins so no work is
//! cut off or left running. [`OwnedTask`] is for the few tasks that belong to
//! a value rather than to the process (a store's dispatch loop): they end with
//! their owner.
//!
//! This module sits low in the layer graph (it knows no domain or store
//! module), so every layer may run its loops on it.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest a failing worker waits before it tries again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a worker's step leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// More work is waiting: step again at once.
    Busy,
    /// Nothing to do until [`Worker::wait_for_work`] returns.
    Idle,
    /// The worker has finished for good.
    Done,
}

/// A background loop, one step at a time.
#[async_trait]
pub trait Worker: Send + 'static {
    /// The `worker` log field. Names are a fixed set (one per worker type), so
    /// they may label metrics too.
    fn name(&self) -> &'static str;

    /// The `component` log field of the runner's lines about this worker.
    fn component(&self) -> &'static str;

    /// How long the default [`Worker::wait_for_work`] waits between steps;
    /// `None` for a worker that waits on events instead.
    fn interval(&self) -> Option<Duration> {
        None
    }

    /// How long to wait after the `failures`-th failed step in a row:
    /// by default the interval (or a second), doubling per failure up to a minute.
    fn backoff(&self, failures: u32) -> Duration {
        exponential_backoff(self.interval().unwrap_or(Duration::from_secs(1)), failures)
    }

    /// One step of work. Never cancelled: shutdown waits for the step to end,
    /// so no step is ever cut off halfway. An `Err` is logged and retried
    /// after [`Worker::backoff`].
    async fn work(&mut self) -> anyhow::Result<WorkerState>;

    /// Waits until there is work again. Cancelled when shutdown begins, so
    /// it must not hold anything it cannot drop at any await point.
    async fn wait_for_work(&mut self) {
        match self.interval() {
            Some(interval) => tokio::time::sleep(interval).await,
            None => std::future::pending().await,
        }
    }

    /// Runs once at shutdown, after the last step (for example, a last flush).
    async fn finish(&mut self) {}
}

/// `base` doubled per failure after the first (up to 2⁶ times), and never
/// more than a minute.
pub fn exponential_backoff(base: Duration, failures: u32) -> Duration {
    (base * 2u32.saturating_pow(failures.min(6))).min(MAX_BACKOFF)
}

/// The workers of one process, stopped together by one stop channel.
pub struct Workers {
    stop: watch::Receiver<bool>,
    running: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Workers that stop once `stop` becomes true.
    pub fn new(stop: watch::Receiver<bool>) -> Workers {
        Workers { stop, running: Vec::new() }
    }

    /// Starts `worker` now.
    pub fn spawn(&mut self, worker: impl Worker) {
        self.running.push(tokio::spawn(run(worker, self.stop.clone())));
    }

    /// Waits until every worker has finished (after the stop signal, each
    /// ends its current step and runs [`Worker::finish`]).
    pub async fn join(self) {
        for worker in self.running {
            if let Err(e) = worker.await {
                tracing::error!(component = "workers", error = %e, "a worker panicked");
            }
        }
    }
}

/// One worker's loop: step, then wait (for work, or out a backoff) until stop.
async fn run(mut worker: impl Worker, mut stop: watch::Receiver<bool>) {
    let (component, name) = (worker.component(), worker.name());
    let interval_ms = worker.interval().map(|interval| interval.as_millis() as u64);
    tracing::info!(component, worker = name, "interval-ms" = interval_ms, "worker started");
    let mut failures: u32 = 0;
    loop {
        let state = match worker.work().await {
            Ok(state) => {
                failures = 0;
                state
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = worker.backoff(failures);
                tracing::warn!(
                    component,
                    worker = name,
                    "retry-count" = failures,
                    "next-tick-ms" = wait.as_millis() as u64,
                    error = %format!("{e:#}"),
                    "worker failing; backing off"
                );
                if until_stopped(&mut stop, tokio::time::sleep(wait)).await {
                    break;
                }
                continue;
            }
        };
        let stopped = match state {
            WorkerState::Busy => *stop.borrow(),
            WorkerState::Idle => until_stopped(&mut stop, worker.wait_for_work()).await,
            WorkerState::Done => break,
        };
        if stopped {
            break;
        }
    }
    worker.finish().await;
    tracing::debug!(component, worker = name, "worker stopped");
}

/// Runs `wait` unless `stop` becomes true first; says whether it did.
async fn until_stopped(stop: &mut watch::Receiver<bool>, wait: impl Future<Output = ()>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => true,
        () = wait => false,
    }
}

/// A task that belongs to a value and ends with it: aborted when dropped.
/// For loops that hold no state of their own between awaits (a dispatch or
/// release loop), so stopping them at any await loses nothing their owner
/// still needs.
pub struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    /// Spawns `task` on the current runtime.
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> OwnedTask {
        OwnedTask(tokio::spawn(task))
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// Fails twice, then counts steps until stopped; counts its finish too.
    struct Counter {
        steps: Arc<AtomicU32>,
        finished: Arc<AtomicU32>,
    }

    #[async_trait]
    impl Worker for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn component(&self) -> &'static str {
            "test"
        }
        fn interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(1))
        }
        async fn work(&mut self) -> anyhow::Result<WorkerState> {
            match self.steps.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => anyhow::bail!("not yet"),
                _ => Ok(WorkerState::Idle),
            }
        }
        async fn finish(&mut self) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn workers_retry_failures_and_finish_once_on_stop() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (steps, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let mut workers = Workers::new(stop_rx);
        workers.spawn(Counter { steps: steps.clone(), finished: finished.clone() });
        while steps.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop_tx.send(true).unwrap();
        workers.join().await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let base = Duration::from_millis(500);
        assert_eq!(exponential_backoff(base, 1), Duration::from_secs(1));
        assert_eq!(exponential_backoff(base, 3), Duration::from_secs(4));
        assert_eq!(exponential_backoff(base, 40), Duration::from_secs(32), "doubling stops after six failures");
        assert_eq!(exponential_backoff(Duration::from_secs(5), 6), MAX_BACKOFF);
    }
}
