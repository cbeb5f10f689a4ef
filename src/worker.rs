//! The one way msgd runs background work: a [`Worker`] says what one step of
//! its work is, and [`Workers`] runs every worker of a process the same way —
//! interval waits, error backoff, shutdown on the `serve` stop channel (which
//! it then joins so no work is cut off or left running), and the same
//! record of every tick: a span with the `worker` and `tick-id` every line of
//! the step carries, the tick lines (`tick start`/`tick complete` at debug, a
//! `worker ticking` summary every `ticker.tick_log_interval`, warnings for a
//! failed or overrunning tick) and the `msgd_worker_*` metrics. [`OwnedTask`] is for the few tasks that belong to
//! a value rather than to the process (a store's dispatch loop): they end with
//! their owner.
//!
//! This module sits low in the layer graph (it knows no domain or store
//! module), so every layer may run its loops on it.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::telemetry::Metrics;

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
    /// The `worker` log field and metric label: one of [`crate::telemetry::WORKERS`].
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

    /// Work waiting after the last step (`msgd_worker_queue_depth`), for a
    /// worker that knows it.
    fn queue_depth(&self) -> Option<i64> {
        None
    }

    /// Runs once at shutdown, after the last step (for example, a last flush).
    async fn finish(&mut self) {}
}

/// Records one finished step of `worker` in the `msgd_worker_*` metrics
/// (also for work that runs inside another worker's step, as recovery does).
pub fn record_step(metrics: &Metrics, worker: &str, ok: bool, took: Duration) {
    let result = if ok { "ok" } else { "error" };
    metrics.worker_steps_total.with_label_values(&[worker, result]).inc();
    metrics.worker_step_duration_seconds.with_label_values(&[worker]).observe(took.as_secs_f64());
    if ok {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        metrics.worker_last_success_timestamp_seconds.with_label_values(&[worker]).set(now.as_secs_f64());
    }
}

/// `base` doubled per failure after the first (up to 2⁶ times), and never
/// more than a minute.
pub fn exponential_backoff(base: Duration, failures: u32) -> Duration {
    (base * 2u32.saturating_pow(failures.min(6))).min(MAX_BACKOFF)
}

/// The workers of one process, stopped together by one stop channel.
pub struct Workers {
    stop: watch::Receiver<bool>,
    /// Changes when a dependency recovers: ends every backoff early.
    recoveries: watch::Receiver<u64>,
    metrics: Metrics,
    running: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Workers that stop once `stop` becomes true, retry at once (instead of
    /// waiting out a backoff) when `recoveries` changes, and record into `metrics`.
    pub fn new(stop: watch::Receiver<bool>, recoveries: watch::Receiver<u64>, metrics: Metrics) -> Workers {
        Workers { stop, recoveries, metrics, running: Vec::new() }
    }

    /// Starts `worker` now.
    pub fn spawn(&mut self, worker: impl Worker) {
        let run = run(worker, self.stop.clone(), self.recoveries.clone(), self.metrics.clone());
        self.running.push(tokio::spawn(run));
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
async fn run(
    mut worker: impl Worker,
    mut stop: watch::Receiver<bool>,
    mut recoveries: watch::Receiver<u64>,
    metrics: Metrics,
) {
    let (component, name) = (worker.component(), worker.name());
    let interval = worker.interval();
    let interval_ms = interval.map(|interval| interval.as_millis() as u64);
    tracing::info!(component, worker = name, "interval-ms" = interval_ms, "worker started");
    let mut failures: u32 = 0;
    let mut summary = Summary::new();
    let mut scheduled_at = SystemTime::now();
    loop {
        let tick_id = tick_id();
        let ticker = crate::logging::settings().config.ticker.clone();
        let started_at = SystemTime::now();
        if ticker.enabled {
            tracing::debug!(
                component,
                worker = name,
                "tick-id" = %tick_id,
                "tick-scheduled-at" = %humantime::format_rfc3339_millis(scheduled_at),
                "tick-started-at" = %humantime::format_rfc3339_millis(started_at),
                "tick start"
            );
        }
        let span = tracing::info_span!("tick", component, worker = name, "tick-id" = %tick_id);
        let started = Instant::now();
        let stepped = TICK_ID.scope(tick_id.clone(), worker.work().instrument(span)).await;
        let took = started.elapsed();
        record_step(&metrics, name, stepped.is_ok(), took);
        if let Some(depth) = worker.queue_depth() {
            metrics.worker_queue_depth.with_label_values(&[name]).set(depth);
        }
        let ended_at = SystemTime::now();
        let duration_ms = took.as_millis() as u64;
        // A step longer than the interval swallowed the ticks due meanwhile.
        let skipped = interval.filter(|i| !i.is_zero()).map_or(0, |i| (took.as_nanos() / i.as_nanos()) as u64);
        if skipped > 0 {
            metrics.worker_ticks_skipped_total.with_label_values(&[name]).inc_by(skipped);
            tracing::warn!(component, worker = name, "tick-id" = %tick_id, "duration-ms" = duration_ms,
                "interval-ms" = interval_ms, skipped, "tick overran its interval; ticks skipped");
        }
        summary.tick(stepped.is_ok(), skipped, ended_at);
        let state = match stepped {
            Ok(state) => {
                failures = 0;
                if ticker.enabled {
                    tracing::debug!(component, worker = name, "tick-id" = %tick_id,
                        "tick-ended-at" = %humantime::format_rfc3339_millis(ended_at),
                        "duration-ms" = duration_ms, success = true, "tick complete");
                }
                state
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = worker.backoff(failures);
                tracing::warn!(
                    component,
                    worker = name,
                    "tick-id" = %tick_id,
                    "tick-ended-at" = %humantime::format_rfc3339_millis(ended_at),
                    "duration-ms" = duration_ms,
                    success = false,
                    "retry-count" = failures,
                    "next-tick-ms" = wait.as_millis() as u64,
                    "error.kind" = "worker.step",
                    "error.message" = %format!("{e:#}"),
                    "error.stack" = %format!("{e:?}"),
                    "tick failed; backing off"
                );
                scheduled_at = ended_at + wait;
                summary.maybe_log(component, name, &ticker, Some(scheduled_at));
                // A recovery before this failure does not cut its backoff short.
                recoveries.mark_unchanged();
                let backoff = async {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        Ok(()) = recoveries.changed() => {
                            tracing::info!(component, worker = name, "a dependency recovered; retrying now");
                        }
                    }
                };
                if until_stopped(&mut stop, backoff).await {
                    break;
                }
                continue;
            }
        };
        scheduled_at = match state {
            WorkerState::Idle => interval.map_or(ended_at, |interval| ended_at + interval),
            _ => ended_at,
        };
        summary.maybe_log(component, name, &ticker, interval.map(|_| scheduled_at));
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

tokio::task_local! {
    /// The id of the tick the runner is running on this task.
    static TICK_ID: String;
}

/// The id of the tick this code runs in, so work that logs its own tick
/// lines (flush, retention) uses the runner's id; a new one outside a worker
/// (a CLI run).
pub fn current_tick_id() -> String {
    TICK_ID.try_with(Clone::clone).unwrap_or_else(|_| tick_id())
}

/// A short random id that ties a tick's lines together (`tick-id`).
fn tick_id() -> String {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a worker did since its last `worker ticking` line: the line that
/// tells "never ticks" from "ticks but fails".
struct Summary {
    since: Instant,
    ticks: u64,
    failures: u64,
    skipped: u64,
    last_tick_at: Option<SystemTime>,
}

impl Summary {
    fn new() -> Summary {
        Summary { since: Instant::now(), ticks: 0, failures: 0, skipped: 0, last_tick_at: None }
    }

    fn tick(&mut self, ok: bool, skipped: u64, at: SystemTime) {
        self.ticks += 1;
        self.failures += u64::from(!ok);
        self.skipped += skipped;
        self.last_tick_at = Some(at);
    }

    /// Logs the summary when `tick_log_interval` has passed since the last one.
    fn maybe_log(
        &mut self,
        component: &str,
        worker: &str,
        ticker: &crate::config::TickerLogging,
        next_tick_at: Option<SystemTime>,
    ) {
        if !ticker.enabled || self.since.elapsed() < ticker.tick_log_interval {
            return;
        }
        let stamp = |at: Option<SystemTime>| at.map(|at| humantime::format_rfc3339_millis(at).to_string());
        tracing::info!(
            component,
            worker,
            ticks = self.ticks,
            failures = self.failures,
            skipped = self.skipped,
            "last-tick-at" = stamp(self.last_tick_at).as_deref(),
            "next-tick-at" = stamp(next_tick_at).as_deref(),
            "window-ms" = self.since.elapsed().as_millis() as u64,
            "worker ticking"
        );
        *self = Summary { last_tick_at: self.last_tick_at, ..Summary::new() };
    }
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
        interval: Duration,
    }

    #[async_trait]
    impl Worker for Counter {
        fn name(&self) -> &'static str {
            "retention"
        }
        fn component(&self) -> &'static str {
            "test"
        }
        fn interval(&self) -> Option<Duration> {
            Some(self.interval)
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
        let metrics = Metrics::new("embedded");
        let mut workers = Workers::new(stop_rx, watch::channel(0).1, metrics.clone());
        workers.spawn(Counter { steps: steps.clone(), finished: finished.clone(), interval: Duration::from_millis(1) });
        while steps.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop_tx.send(true).unwrap();
        workers.join().await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        let steps = |result: &str| metrics.worker_steps_total.with_label_values(&["retention", result]).get();
        assert_eq!(steps("error"), 2);
        assert!(steps("ok") >= 3);
    }

    #[tokio::test]
    async fn a_recovery_ends_the_backoff() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (recovered, recoveries) = watch::channel(0);
        let (steps, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let mut workers = Workers::new(stop_rx, recoveries, Metrics::new("embedded"));
        // Failures back off an hour or more: only a recovery brings the next step.
        let interval = Duration::from_secs(3600);
        workers.spawn(Counter { steps: steps.clone(), finished: finished.clone(), interval });
        for expected in [2, 3] {
            while steps.load(Ordering::SeqCst) < expected - 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(steps.load(Ordering::SeqCst), expected - 1, "backing off");
            recovered.send_modify(|n| *n += 1);
            while steps.load(Ordering::SeqCst) < expected {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
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
