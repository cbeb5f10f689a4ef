//! Retention: the strict history window made physical (ARCHITECTURE.md,
//! "Retention"). One function, [`Retention::run`], runs in the
//! [`RetentionWorker`] `serve` runs every `retention.interval` and once from
//! `msgd retention`. For every app (or one), it deletes:
//!
//! 1. `segments`: segment objects whose newest message is older than the
//!    cutoff, a batch at a time — the objects first, then their segment and
//!    block rows in one transaction. A crash between the two leaves index
//!    rows whose objects are gone; they are expired (no read looks at them)
//!    and the next run deletes them again, idempotently. No object is ever
//!    left without rows by retention, so nothing has to list the bucket.
//! 2. `attachments`: uploads whose last referencing message is older than
//!    the cutoff, and orphans no message referenced within
//!    `attachments.orphan_ttl` — objects first, then rows, as for segments.
//! 3. `tail`: tail entries older than the cutoff that are already in a
//!    segment (the hot window of a quiet conversation). Unflushed entries
//!    stay whatever their age: deleting them would leave a hole the flush
//!    refuses; once flushed they expire with their segment.
//! 4. `state`: expired idempotency claims and TTL'd state where the store
//!    does not expire them by itself (the embedded tail; Redis does), the
//!    durable idempotency records past their window, and the edits, deletes,
//!    reactions and thread entries of messages past the history window.
//! 5. `vacuum`: embedded mode hands the freed SQLite pages back to the file
//!    system; deleted object files are removed with their empty directories.
//!
//! Conversations, members and flushed seqs stay. The workers share a lease so
//! that one instance runs at a time; it is not needed for safety — every step
//! is idempotent, so `msgd retention` (which takes no lease) beside a live
//! `serve`, or two runs at once, is safe.
//! Segment deletion is exact to the object: a segment is deleted once its
//! newest message is past the cutoff, so data outlives the window by at most
//! one flush age plus one interval, and reads filter by the exact cutoff.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::config::{Config, RetentionConfig};
use crate::store::{ConvKey, Expiring, StoreError, Stores};
use crate::telemetry::Metrics;
use crate::worker::{Worker, WorkerState};

/// The lease that lets one instance run retention at a time.
const LEASE: &str = "retention";
/// How long the lease lasts without renewal; a run renews it as it goes.
const LEASE_TTL: Duration = Duration::from_secs(300);
/// Conversations read from the index per page while trimming the tail.
const CONVERSATION_PAGE: usize = 500;
/// Tail entries read per request while looking for expired ones.
const TAIL_PAGE: usize = 100;
/// Object deletions in flight at once.
const DELETE_CONCURRENCY: usize = 8;
/// Rows of the tables that expire with their message deleted per statement.
const DELETE_BATCH: i64 = 10_000;

/// Logs a retention event with the `component` and `worker` fields every
/// retention line carries.
macro_rules! retention_event {
    ($level:ident, $($fields:tt)+) => {
        tracing::$level!(component = "retention", worker = "retention", $($fields)+)
    };
}

/// `progress(done, total)`, in segments deleted.
type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

#[derive(Debug, Clone, Default)]
pub struct RetentionOptions {
    /// Count what would be deleted; delete nothing.
    pub dry_run: bool,
    /// Only this app's data.
    pub app_id: Option<String>,
    /// Take the retention lease first, and skip the run while another
    /// instance holds it: what the `serve` workers do, so that N instances do
    /// not repeat each other's work. `msgd retention` runs regardless (every
    /// step is idempotent), so a killed run never holds up the next one.
    pub exclusive: bool,
}

/// What a run deleted (or, dry, would delete).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub run_id: String,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// Messages received before this (Unix ms) are past the window.
    pub cutoff_ms: i64,
    /// Another instance holds the retention lease: this run did nothing.
    pub skipped: bool,
    /// Segment objects, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// Block rows of the index (one per conversation per segment).
    pub block_rows: u64,
    /// Tail entries past the window (already in segments).
    pub tail_entries: u64,
    /// Attachments (objects and rows) past the window, or never referenced
    /// by a message within `attachments.orphan_ttl`; and their bytes.
    pub attachments: u64,
    pub attachment_bytes: u64,
    /// Uploads created before this (Unix ms) that no message referenced are orphans.
    pub orphans_before_ms: i64,
    /// Expired idempotency claims and TTL'd state entries (receipts) purged
    /// where the store keeps them until purged (embedded); a dry run does not count them.
    pub idempotency_claims: u64,
    pub state_entries: u64,
    /// Durable idempotency records (rows of flushed messages' keys) past
    /// `limits.idempotency_ttl`; a dry run does not count them.
    pub idempotency_records: u64,
    /// Edits and deletes of messages past the history window; a dry run
    /// does not count them.
    pub message_changes: u64,
    /// Reactions to messages past the history window; a dry run does not count them.
    pub reactions: u64,
    /// Thread entries of replies past the history window; a dry run does not count them.
    pub replies: u64,
    /// Rows of conversations deleted a history window ago; a dry run does not count them.
    pub conversations: u64,
    /// Bytes the SQLite file shrank by (embedded).
    pub reclaimed_bytes: u64,
}

/// Why a run failed: the stage (the `stage` log field, and what
/// runbooks/retention.md is organised by) and the store failure.
#[derive(Debug)]
pub struct RetentionError {
    pub stage: &'static str,
    pub source: StoreError,
}

impl std::fmt::Display for RetentionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "retention stage {} failed: {}", self.stage, self.source)
    }
}

impl std::error::Error for RetentionError {}

fn stage(stage: &'static str) -> impl Fn(StoreError) -> RetentionError {
    move |source| RetentionError { stage, source }
}

/// The lease a run holds, renewed as a long run goes on.
struct Lease {
    held: bool,
    renewed: Instant,
}

pub struct Retention {
    stores: Stores,
    metrics: Metrics,
    config: RetentionConfig,
    /// `attachments.orphan_ttl` in milliseconds.
    orphan_ttl_ms: i64,
    idempotency_ttl_ms: i64,
    /// This instance's lease holder id.
    holder: String,
}

impl Retention {
    pub fn new(stores: Stores, metrics: Metrics, config: &Config) -> Retention {
        Retention {
            stores,
            metrics,
            config: config.retention.clone(),
            orphan_ttl_ms: config.attachments.orphan_ttl.as_millis() as i64,
            idempotency_ttl_ms: config.limits.idempotency_ttl.as_millis() as i64,
            holder: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The earliest receive time inside the window at `now`.
    pub fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(self.config.period_ms())
    }

    /// One run at `now` (Unix ms).
    pub async fn run(&self, options: &RetentionOptions, now: i64) -> Result<RetentionReport, RetentionError> {
        self.run_with_progress(options, now, &|_, _| {}).await
    }

    /// A run that reports progress in segments deleted (for `msgd retention`'s bar).
    pub async fn run_with_progress(
        &self,
        options: &RetentionOptions,
        now: i64,
        progress: Progress<'_>,
    ) -> Result<RetentionReport, RetentionError> {
        let started = Instant::now();
        let mut report = RetentionReport {
            run_id: crate::worker::current_tick_id(),
            dry_run: options.dry_run,
            app_id: options.app_id.clone(),
            cutoff_ms: self.cutoff(now),
            orphans_before_ms: now.saturating_sub(self.orphan_ttl_ms),
            ..Default::default()
        };
        retention_event!(
            debug,
            "tick-id" = %report.run_id,
            "tick-started-at" = %crate::clock::format_ms(now),
            cutoff = %crate::clock::format_ms(report.cutoff_ms),
            "dry-run" = options.dry_run,
            "retention run start"
        );
        let result = if options.dry_run {
            self.count(&mut report, options).await
        } else {
            self.leased(&mut report, options, now, progress).await
        };
        self.run_done(&report, &result, started, now).await;
        result.map(|()| report)
    }

    /// Takes the lease when asked to, deletes, and gives the lease back whatever happened.
    async fn leased(
        &self,
        report: &mut RetentionReport,
        options: &RetentionOptions,
        now: i64,
        progress: Progress<'_>,
    ) -> Result<(), RetentionError> {
        let coordination = &self.stores.coordination;
        let held = options.exclusive
            && coordination.acquire_lease(LEASE, &self.holder, LEASE_TTL).await.map_err(stage("lease"))?;
        if options.exclusive && !held {
            report.skipped = true;
            return Ok(());
        }
        let mut lease = Lease { held, renewed: Instant::now() };
        let result = async {
            self.delete_segments(report, options, &mut lease, progress).await?;
            self.delete_attachments(report, options, &mut lease).await?;
            self.trim_tails(report, options, &mut lease).await?;
            self.purge_state(report, now).await?;
            report.reclaimed_bytes = self.stores.metadata.reclaim_space().await.map_err(stage("vacuum"))?;
            Ok(())
        }
        .await;
        if lease.held {
            if let Err(e) = coordination.release_lease(LEASE, &self.holder).await {
                retention_event!(warn, error = %e, "retention lease not released; it expires by itself");
            }
        }
        result
    }

    /// A dry run: what each stage would delete, from the index and the tail.
    async fn count(&self, report: &mut RetentionReport, options: &RetentionOptions) -> Result<(), RetentionError> {
        let totals = self
            .stores
            .metadata
            .expired_totals(report.cutoff_ms, options.app_id.as_deref())
            .await
            .map_err(stage("plan"))?;
        (report.objects, report.bytes, report.block_rows) = (totals.segments, totals.bytes, totals.block_rows);
        let expired = self.expired_attachments(report, options).await?;
        (report.attachments, report.attachment_bytes) = (expired.len() as u64, attachment_bytes(&expired));
        let mut lease = Lease { held: false, renewed: Instant::now() };
        self.trim_tails(report, options, &mut lease).await
    }

    /// `segments`: expired objects, then their index rows, a batch at a time.
    async fn delete_segments(
        &self,
        report: &mut RetentionReport,
        options: &RetentionOptions,
        lease: &mut Lease,
        progress: Progress<'_>,
    ) -> Result<(), RetentionError> {
        let stage_started = Instant::now();
        let metadata = &self.stores.metadata;
        let app_id = options.app_id.as_deref();
        let total = metadata.expired_totals(report.cutoff_ms, app_id).await.map_err(stage("plan"))?.segments;
        progress(0, total);
        loop {
            self.renew_if_due(lease).await?;
            let batch =
                metadata.expired_segments(report.cutoff_ms, app_id, self.config.batch).await.map_err(stage("plan"))?;
            if batch.is_empty() {
                break;
            }
            self.delete_objects(batch.iter().map(|segment| segment.object_key.clone()).collect()).await?;
            self.failpoint("after-objects").await;
            let ids: Vec<String> = batch.iter().map(|segment| segment.id.clone()).collect();
            let (segments, block_rows) = metadata.delete_segments(&ids).await.map_err(stage("index-delete"))?;
            let bytes = if segments == 0 { 0 } else { batch.iter().map(|s| s.byte_length as u64).sum() };
            report.objects += segments;
            report.bytes += bytes;
            report.block_rows += block_rows;
            self.metrics.retention_deleted_total.with_label_values(&["objects"]).inc_by(segments);
            self.metrics.retention_deleted_total.with_label_values(&["block_rows"]).inc_by(block_rows);
            self.metrics.retention_deleted_bytes_total.inc_by(bytes);
            self.failpoint("after-rows").await;
            progress(report.objects, total.max(report.objects));
            if segments == 0 {
                // Another run deleted these rows meanwhile: it is doing this stage.
                break;
            }
        }
        self.stage_done("segments", stage_started, &[("objects", report.objects), ("block-rows", report.block_rows)]);
        Ok(())
    }

    /// The objects of a batch, a few at a time; a missing one is already gone.
    async fn delete_objects(&self, keys: Vec<String>) -> Result<(), RetentionError> {
        for chunk in keys.chunks(DELETE_CONCURRENCY) {
            let mut deletions = tokio::task::JoinSet::new();
            for key in chunk {
                let (objects, key) = (self.stores.objects.clone(), key.clone());
                deletions.spawn(async move { objects.delete(&key).await });
            }
            while let Some(done) = deletions.join_next().await {
                done.expect("an object deletion panicked").map_err(stage("object-delete"))?;
            }
        }
        Ok(())
    }

    /// `attachments`: uploads past the window (by their last reference) and
    /// orphans (never referenced within `attachments.orphan_ttl`), objects
    /// first, then their rows, a batch at a time.
    async fn delete_attachments(
        &self,
        report: &mut RetentionReport,
        options: &RetentionOptions,
        lease: &mut Lease,
    ) -> Result<(), RetentionError> {
        let stage_started = Instant::now();
        loop {
            self.renew_if_due(lease).await?;
            let batch = self.expired_attachments(report, options).await?;
            if batch.is_empty() {
                break;
            }
            self.delete_objects(batch.iter().map(|a| a.object_key.clone()).collect()).await?;
            let ids: Vec<(String, String)> = batch.iter().map(|a| (a.app_id.clone(), a.id.clone())).collect();
            let deleted = self.stores.metadata.delete_attachments(&ids).await.map_err(stage("index-delete"))?;
            let bytes = if deleted == 0 { 0 } else { attachment_bytes(&batch) };
            report.attachments += deleted;
            report.attachment_bytes += bytes;
            self.metrics.retention_deleted_total.with_label_values(&["attachments"]).inc_by(deleted);
            self.metrics.retention_deleted_bytes_total.inc_by(bytes);
            if deleted == 0 {
                break;
            }
        }
        self.stage_done("attachments", stage_started, &[("attachments", report.attachments)]);
        Ok(())
    }

    async fn expired_attachments(
        &self,
        report: &RetentionReport,
        options: &RetentionOptions,
    ) -> Result<Vec<crate::store::AttachmentRow>, RetentionError> {
        let (cutoff, orphans_before, app_id) = (report.cutoff_ms, report.orphans_before_ms, options.app_id.as_deref());
        self.stores
            .metadata
            .expired_attachments(cutoff, orphans_before, app_id, self.config.batch)
            .await
            .map_err(stage("plan"))
    }

    /// `tail`: per conversation with something in segments, the entries past
    /// the window that a segment already holds (dry: counted only).
    async fn trim_tails(
        &self,
        report: &mut RetentionReport,
        options: &RetentionOptions,
        lease: &mut Lease,
    ) -> Result<(), RetentionError> {
        let stage_started = Instant::now();
        let mut after: Option<ConvKey> = None;
        loop {
            self.renew_if_due(lease).await?;
            let page = self
                .stores
                .metadata
                .flushed_conversations(options.app_id.as_deref(), after.as_ref(), CONVERSATION_PAGE)
                .await
                .map_err(stage("tail-plan"))?;
            for (conv, flushed) in &page {
                let (through, count) =
                    self.expired_in_tail(conv, *flushed, report.cutoff_ms).await.map_err(stage("tail-trim"))?;
                if count == 0 {
                    continue;
                }
                report.tail_entries += if options.dry_run {
                    count
                } else {
                    let removed = self.stores.tail.trim(conv, through).await.map_err(stage("tail-trim"))?;
                    self.metrics.retention_deleted_total.with_label_values(&["tail_entries"]).inc_by(removed);
                    removed
                };
            }
            if page.len() < CONVERSATION_PAGE {
                break;
            }
            after = page.last().map(|(conv, _)| conv.clone());
        }
        self.stage_done("tail", stage_started, &[("tail-entries", report.tail_entries)]);
        Ok(())
    }

    /// The last seq of the run of tail entries from the start that are both
    /// in a segment (seq ≤ `flushed`) and older than `cutoff`, and how many.
    async fn expired_in_tail(&self, conv: &ConvKey, flushed: u64, cutoff: i64) -> Result<(u64, u64), StoreError> {
        let (mut through, mut count) = (0u64, 0u64);
        loop {
            let page = self.stores.tail.read(conv, through, TAIL_PAGE).await?;
            for entry in &page {
                if entry.seq > flushed || entry.ts_ms >= cutoff {
                    return Ok((through, count));
                }
                (through, count) = (entry.seq, count + 1);
            }
            if page.len() < TAIL_PAGE {
                return Ok((through, count));
            }
        }
    }

    /// `state`: expired idempotency claims and TTL'd state, where the store
    /// keeps them until purged, the durable idempotency records past the
    /// idempotency window, and the edits, deletes and reactions of messages
    /// past the history window (in batches, so no statement runs long).
    async fn purge_state(&self, report: &mut RetentionReport, now: i64) -> Result<(), RetentionError> {
        let stage_started = Instant::now();
        report.idempotency_claims = self.stores.tail.purge_expired().await.map_err(stage("state-purge"))?;
        report.state_entries = self.stores.state.purge_expired().await.map_err(stage("state-purge"))?;
        let idempotency_cutoff = now.saturating_sub(self.idempotency_ttl_ms);
        let history_cutoff = report.cutoff_ms;
        for (table, cutoff, count) in [
            (Expiring::IdempotencyRecords, idempotency_cutoff, &mut report.idempotency_records),
            (Expiring::MessageChanges, history_cutoff, &mut report.message_changes),
            (Expiring::Reactions, history_cutoff, &mut report.reactions),
            (Expiring::Replies, history_cutoff, &mut report.replies),
            (Expiring::DeletedConversations, history_cutoff, &mut report.conversations),
        ] {
            loop {
                let metadata = &self.stores.metadata;
                let deleted =
                    metadata.delete_expired(table, cutoff, DELETE_BATCH).await.map_err(stage("state-purge"))?;
                *count += deleted;
                if deleted < DELETE_BATCH as u64 {
                    break;
                }
            }
        }
        let deleted = &self.metrics.retention_deleted_total;
        deleted.with_label_values(&["idempotency_claims"]).inc_by(report.idempotency_claims);
        deleted.with_label_values(&["state_entries"]).inc_by(report.state_entries);
        deleted.with_label_values(&["idempotency_records"]).inc_by(report.idempotency_records);
        deleted.with_label_values(&["message_changes"]).inc_by(report.message_changes);
        deleted.with_label_values(&["reactions"]).inc_by(report.reactions);
        deleted.with_label_values(&["replies"]).inc_by(report.replies);
        deleted.with_label_values(&["conversations"]).inc_by(report.conversations);
        let counts = [
            ("idempotency-claims", report.idempotency_claims),
            ("state-entries", report.state_entries),
            ("idempotency-records", report.idempotency_records),
            ("message-changes", report.message_changes),
            ("reactions", report.reactions),
            ("replies", report.replies),
            ("conversations", report.conversations),
        ];
        self.stage_done("state", stage_started, &counts);
        Ok(())
    }

    async fn renew_if_due(&self, lease: &mut Lease) -> Result<(), RetentionError> {
        if !lease.held || lease.renewed.elapsed() <= LEASE_TTL / 3 {
            return Ok(());
        }
        let coordination = &self.stores.coordination;
        if !coordination.acquire_lease(LEASE, &self.holder, LEASE_TTL).await.map_err(stage("lease"))? {
            // Taken over after an expiry: carry on (every step is idempotent), without it.
            retention_event!(warn, "retention lease lost to another instance; finishing this run");
            lease.held = false;
        }
        lease.renewed = Instant::now();
        Ok(())
    }

    /// Testing only: stops the run here, forever, when `retention.failpoint` names this point.
    async fn failpoint(&self, point: &'static str) {
        if self.config.failpoint.as_deref() == Some(point) {
            retention_event!(warn, failpoint = point, "failpoint reached: stopping the run here");
            std::future::pending::<()>().await;
        }
    }

    fn stage_done(&self, stage: &'static str, started: Instant, fields: &[(&str, u64)]) {
        let details: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        retention_event!(
            debug,
            stage,
            "duration-ms" = started.elapsed().as_millis() as u64,
            details = %details.join(" "),
            success = true,
            "retention stage ok"
        );
    }

    /// Records and logs how a run ended.
    async fn run_done(
        &self,
        report: &RetentionReport,
        result: &Result<(), RetentionError>,
        started: Instant,
        now: i64,
    ) {
        let (run_id, duration_ms) = (&report.run_id, started.elapsed().as_millis() as u64);
        let outcome = match result {
            Err(_) => "error",
            Ok(()) if report.skipped => "skipped",
            Ok(()) => "ok",
        };
        if !report.dry_run {
            self.metrics.retention_runs_total.with_label_values(&[outcome]).inc();
            self.metrics.retention_run_duration_seconds.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) if report.skipped => retention_event!(
                debug,
                "tick-id" = %run_id,
                "retention run skipped: another instance holds the lease"
            ),
            Ok(()) => {
                if !report.dry_run {
                    self.metrics.retention_last_success_timestamp_seconds.set(now as f64 / 1000.0);
                    // For the alert, whichever instance or cron job ran it (`serve` polls this).
                    if let Err(e) = self.stores.metadata.record_job_success("retention", now).await {
                        retention_event!(warn, error = %e, "retention success not recorded in the metadata store");
                    }
                }
                retention_event!(
                    info,
                    "tick-id" = %run_id,
                    "duration-ms" = duration_ms,
                    cutoff = %crate::clock::format_ms(report.cutoff_ms),
                    "dry-run" = report.dry_run,
                    objects = report.objects,
                    "payload-bytes" = report.bytes,
                    "block-rows" = report.block_rows,
                    "tail-entries" = report.tail_entries,
                    attachments = report.attachments,
                    "idempotency-claims" = report.idempotency_claims,
                    "state-entries" = report.state_entries,
                    "idempotency-records" = report.idempotency_records,
                    success = true,
                    "retention run complete"
                )
            }
            Err(e) => retention_event!(
                error,
                "tick-id" = %run_id,
                "duration-ms" = duration_ms,
                stage = e.stage,
                "error.kind" = e.stage,
                "error.message" = %e.source,
                objects = report.objects,
                "tail-entries" = report.tail_entries,
                success = false,
                "retention run failed"
            ),
        }
    }
}

fn attachment_bytes(rows: &[crate::store::AttachmentRow]) -> u64 {
    rows.iter().map(|a| a.size.max(0) as u64).sum()
}

/// The retention worker `serve` runs: the first run a little after start
/// (once the dependencies had a moment to answer; the readiness checks then
/// own the first connection attempts), then every `retention.interval` (the
/// runner backs off, up to a minute, while runs fail).
pub struct RetentionWorker {
    retention: Retention,
    /// Whether the wait before the first run is over.
    first_wait_done: bool,
}

/// The wait before the first run (or the interval, when shorter).
const START_DELAY: Duration = Duration::from_secs(30);

impl RetentionWorker {
    pub fn new(retention: Retention) -> RetentionWorker {
        RetentionWorker { retention, first_wait_done: false }
    }
}

#[async_trait]
impl Worker for RetentionWorker {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn component(&self) -> &'static str {
        "retention"
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.retention.config.interval)
    }

    async fn work(&mut self) -> anyhow::Result<WorkerState> {
        if self.first_wait_done {
            let options = RetentionOptions { exclusive: true, ..RetentionOptions::default() };
            self.retention.run(&options, crate::clock::now_ms()).await?;
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let interval = self.retention.config.interval;
        tokio::time::sleep(if self.first_wait_done { interval } else { interval.min(START_DELAY) }).await;
        self.first_wait_done = true;
    }
}
