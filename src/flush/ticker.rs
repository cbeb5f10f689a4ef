//! The workers `serve` runs for segments. [`FlushWorker`]: a tick every
//! `flush.interval` (the worker runner backs off exponentially, up to a
//! minute, while ticks fail), a recovery pass at start and every ten minutes
//! (orphan segments), the consistency check of every conversation
//! ([`Flusher::check`], repairing) every `flush.check_interval` from one
//! interval after start, on the instance holding its lease,
//! and one more tick at shutdown so whatever is due goes out rather than
//! waiting in the tail. (Expired tail state is purged by the retention
//! worker.) [`CompactionWorker`]: every five minutes (the first five minutes
//! after start), on the instance holding the compaction lease, one window
//! per step until none is left — a worker of its own, so a long compaction
//! never holds up the flush, and a shutdown waits for one window at most.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{FlushOptions, Flusher};
use crate::worker::{Worker, WorkerState};

/// How often recovery looks for orphan segments.
const RECOVERY_EVERY: Duration = Duration::from_secs(600);
/// The lease that lets one instance check at a time.
const CHECK_LEASE: &str = "check";
const CHECK_LEASE_TTL: Duration = Duration::from_secs(900);
/// How often compaction looks for windows to merge.
const COMPACTION_EVERY: Duration = Duration::from_secs(300);
/// The lease that lets one instance compact at a time (a second one would
/// only have its commits refused); longer than one window usually takes.
const COMPACTION_LEASE: &str = "compaction";
const COMPACTION_LEASE_TTL: Duration = Duration::from_secs(900);

pub struct FlushWorker {
    flusher: Flusher,
    /// The retention period: recovery deletes orphans older than it rather than index them.
    retention_ms: i64,
    /// When the last recovery pass succeeded; `None` before the first.
    last_recovery: Option<Instant>,
    /// When the next consistency check is due.
    next_check: Instant,
}

impl FlushWorker {
    pub fn new(flusher: Flusher, retention_ms: i64) -> FlushWorker {
        // Not at start: a restart (or a crash loop) adds no load, and the
        // dependencies have had their interval to come up.
        let next_check = Instant::now() + flusher.config.check_interval;
        FlushWorker { flusher, retention_ms, last_recovery: None, next_check }
    }

    /// A recovery pass when one is due. A failure is logged and retried on
    /// the next tick; it does not stop the flush.
    async fn recover_if_due(&mut self) {
        if self.last_recovery.is_some_and(|at| at.elapsed() < RECOVERY_EVERY) {
            return;
        }
        let expired_before = crate::clock::now_ms().saturating_sub(self.retention_ms);
        let started = Instant::now();
        let recovered = self.flusher.recover(expired_before).await;
        crate::worker::record_step(&self.flusher.metrics, "recovery", recovered.is_ok(), started.elapsed());
        match recovered {
            Ok(report) => {
                self.last_recovery = Some(Instant::now());
                tracing::info!(
                    component = "recovery",
                    worker = "recovery",
                    objects = report.objects,
                    indexed = report.indexed,
                    deleted = report.deleted,
                    "segment recovery pass"
                );
            }
            Err(e) => tracing::warn!(
                component = "recovery",
                worker = "recovery",
                stage = e.stage(),
                error = %e.detail(),
                "segment recovery failed; retrying next tick"
            ),
        }
    }

    /// The consistency check when it is due, repairing, on one instance at a
    /// time; counted as a `recovery` step. After a failure it is due again
    /// with the next recovery pass's interval.
    async fn check_if_due(&mut self) {
        if self.last_recovery.is_none() || Instant::now() < self.next_check {
            return;
        }
        let interval = self.flusher.config.check_interval;
        let coordination = &self.flusher.stores.coordination;
        let holder = &self.flusher.holder;
        match coordination.acquire_lease(CHECK_LEASE, holder, CHECK_LEASE_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                self.next_check = Instant::now() + interval;
                return;
            }
            Err(e) => {
                tracing::warn!(component = "recovery", worker = "recovery", error = %e, "check lease unavailable");
                self.next_check = Instant::now() + interval.min(RECOVERY_EVERY);
                return;
            }
        }
        let expired_before = crate::clock::now_ms().saturating_sub(self.retention_ms);
        let started = Instant::now();
        let checked = self.flusher.check(expired_before, false).await;
        crate::worker::record_step(&self.flusher.metrics, "recovery", checked.is_ok(), started.elapsed());
        if let Err(e) = coordination.release_lease(CHECK_LEASE, holder).await {
            tracing::warn!(component = "recovery", worker = "recovery", error = %e, "check lease not released");
        }
        match checked {
            Ok(report) => {
                self.next_check = Instant::now() + interval;
                tracing::info!(
                    component = "recovery",
                    worker = "recovery",
                    conversations = report.conversations,
                    "index-incomplete" = report.index_incomplete,
                    "counters-behind" = report.counters_behind,
                    "lost-seqs" = report.lost_seqs(),
                    "consistency check"
                );
            }
            Err(e) => {
                self.next_check = Instant::now() + interval.min(RECOVERY_EVERY);
                tracing::warn!(
                    component = "recovery",
                    worker = "recovery",
                    stage = e.stage(),
                    error = %e.detail(),
                    "consistency check failed; retrying later"
                )
            }
        }
    }
}

#[async_trait]
impl Worker for FlushWorker {
    fn name(&self) -> &'static str {
        "segment-flush"
    }

    fn component(&self) -> &'static str {
        "segment-flush"
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.flusher.config.interval)
    }

    async fn work(&mut self) -> anyhow::Result<WorkerState> {
        self.recover_if_due().await;
        self.check_if_due().await;
        self.flusher.tick(FlushOptions::default(), crate::clock::now_ms()).await?;
        Ok(WorkerState::Idle)
    }

    fn queue_depth(&self) -> Option<i64> {
        Some(self.flusher.metrics.flush_backlog_messages.get())
    }

    async fn finish(&mut self) {
        if let Err(e) = self.flusher.tick(FlushOptions::default(), crate::clock::now_ms()).await {
            tracing::warn!(
                component = "segment-flush",
                stage = e.stage(),
                error = %e.detail(),
                "final flush failed; messages stay in the tail"
            );
        }
    }
}

pub struct CompactionWorker {
    flusher: Flusher,
    /// No step compacts before this: a start is not also a compaction.
    not_before: Instant,
}

impl CompactionWorker {
    /// `serve` waits [`CompactionWorker::FIRST_AFTER`] before the first step.
    pub const FIRST_AFTER: Duration = COMPACTION_EVERY;

    pub fn new(flusher: Flusher, first_after: Duration) -> CompactionWorker {
        CompactionWorker { flusher, not_before: Instant::now() + first_after }
    }
}

#[async_trait]
impl Worker for CompactionWorker {
    fn name(&self) -> &'static str {
        "compaction"
    }

    fn component(&self) -> &'static str {
        "segment-compaction"
    }

    fn interval(&self) -> Option<Duration> {
        Some(COMPACTION_EVERY)
    }

    /// One window, under the lease; `Busy` while windows remain.
    async fn work(&mut self) -> anyhow::Result<WorkerState> {
        if Instant::now() < self.not_before {
            return Ok(WorkerState::Idle);
        }
        let coordination = &self.flusher.stores.coordination;
        let holder = &self.flusher.holder;
        if !coordination.acquire_lease(COMPACTION_LEASE, holder, COMPACTION_LEASE_TTL).await? {
            return Ok(WorkerState::Idle);
        }
        let compacted = self.flusher.compact(crate::clock::now_ms(), 1).await;
        if let Err(e) = coordination.release_lease(COMPACTION_LEASE, holder).await {
            compaction_event!(warn, error = %e, "compaction lease not released; it expires by itself");
        }
        Ok(if compacted?.windows > 0 { WorkerState::Busy } else { WorkerState::Idle })
    }
}
