//! The flush worker: moves messages from the tail into segments (ARCHITECTURE.md,
//! "Segments and the flush"). One function, [`Flusher::tick`], runs as a ticker in `serve` and
//! once from `msgd flush`; [`Flusher::recover`] and [`Flusher::reindex`]
//! repair the index from the objects.
//!
//! A tick takes the dirty conversations past a threshold (in the shards whose
//! lease this instance holds), packs their unflushed ranges into one object
//! per app, PUTs it, then in one metadata transaction indexes it and advances
//! each conversation's flushed seq — guarded, so a stale flusher cannot
//! commit — and only then trims the tail, keeping `flush.hot_window`. A crash
//! anywhere loses nothing: until the commit the tail holds every message, and
//! an object without index rows is an orphan that recovery indexes or deletes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::FlushConfig;
use crate::envelope::encode_record;
use crate::segment::{self, BlockInput, Record};
use crate::store::{
    BlockRow, ConvKey, DirtyConversation, FlushAdvance, SegmentRow, StoreError, Stores, TailEntry, TAIL_SHARDS,
};
use crate::telemetry::Metrics;
use crate::timeline::index_rows;

/// How long a shard lease lasts without renewal. A crashed instance's shards
/// wait this long for another instance; a long tick renews its leases.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// Tail entries read per request while snapshotting a conversation.
const READ_PAGE: usize = 1000;
/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct FlushOptions {
    /// Flush every dirty conversation, whatever the thresholds say.
    pub all: bool,
    /// Plan only: read and encode, write nothing.
    pub dry_run: bool,
}

/// One segment a tick wrote (or, dry, would write).
#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub app_id: String,
    pub object_key: String,
    pub blocks: Vec<segment::BlockMeta>,
    pub records: u64,
    pub bytes: u64,
    pub raw_bytes: u64,
}

/// What a tick did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlushReport {
    pub tick_id: String,
    pub dry_run: bool,
    pub segments: Vec<SegmentReport>,
    /// Tail entries removed after the commit.
    pub trimmed: u64,
    /// Shards another instance held the lease of.
    pub skipped_shards: u32,
    /// Dirty conversations below both thresholds, left for later.
    pub deferred: u64,
    /// Conversations skipped because their tail has a hole after the flushed
    /// seq (lost tail data: needs an operator, see runbooks/flush.md).
    pub holes: u64,
    /// Dry runs only: the tail entries the trim would remove.
    pub would_trim: u64,
    /// Dry runs only: every conversation with unflushed messages, due now or not.
    pub waiting: Vec<Waiting>,
}

/// One conversation with unflushed messages, as a dry run lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub app_id: String,
    pub conversation_id: String,
    /// Messages appended since the conversation became dirty.
    pub messages: u64,
    /// Body bytes appended since then.
    pub bytes: u64,
    /// Receive time of the oldest unflushed message (Unix ms).
    pub oldest_ts_ms: i64,
    /// Whether this tick flushes it (its app has a conversation past a
    /// threshold, or `--all`); otherwise it waits for `flush.max_age`/`max_bytes`.
    pub due: bool,
}

/// A flush stage failed.
#[derive(Debug, thiserror::Error)]
#[error("flush stage {stage} failed: {message}")]
pub struct FlushError {
    pub stage: &'static str,
    pub message: String,
}

fn stage_error(stage: &'static str, err: impl std::fmt::Display) -> FlushError {
    FlushError { stage, message: err.to_string() }
}

/// What recovery or reindexing did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub objects: u64,
    pub indexed: u64,
    pub deleted: u64,
    pub already_indexed: u64,
}

pub struct Flusher {
    stores: Stores,
    metrics: Metrics,
    config: FlushConfig,
    /// This instance's lease holder id.
    holder: String,
}

/// One conversation's unflushed range, read from the tail.
struct Snapshot {
    mark: DirtyConversation,
    flushed: u64,
    entries: Vec<TailEntry>,
}

impl Flusher {
    pub fn new(stores: Stores, metrics: Metrics, config: FlushConfig) -> Flusher {
        Flusher { stores, metrics, config, holder: uuid::Uuid::new_v4().to_string() }
    }

    /// One flush tick at `now` (Unix ms).
    pub async fn tick(&self, options: FlushOptions, now: i64) -> Result<FlushReport, FlushError> {
        self.tick_with_progress(options, now, &|_, _| {}).await
    }

    /// A tick that reports progress: `progress(done, total)` in conversations
    /// flushed, after each app (for `msgd flush`'s progress bar).
    pub async fn tick_with_progress(
        &self,
        options: FlushOptions,
        now: i64,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<FlushReport, FlushError> {
        let tick_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let started = Instant::now();
        tracing::debug!(component = "segment-flush", worker = "segment-flush", "tick-id" = %tick_id, "tick-started-at" = %crate::clock::format_ms(now), all = options.all, "dry-run" = options.dry_run, "segment flush tick start");
        let mut report = FlushReport { tick_id: tick_id.clone(), dry_run: options.dry_run, ..Default::default() };
        let result = self.run(&mut report, options, now, progress).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let records: u64 = report.segments.iter().map(|s| s.records).sum();
        match &result {
            Ok(()) => {
                self.metrics.flush_ticks_total.with_label_values(&["ok"]).inc();
                if report.segments.is_empty() {
                    tracing::debug!(component = "segment-flush", worker = "segment-flush", "tick-id" = %tick_id, "duration-ms" = duration_ms, deferred = report.deferred, success = true, "segment flush tick complete (nothing due)");
                } else {
                    tracing::info!(component = "segment-flush", worker = "segment-flush", "tick-id" = %tick_id, "duration-ms" = duration_ms, segments = report.segments.len(), "message-count" = records, trimmed = report.trimmed, deferred = report.deferred, success = true, "segment flush tick complete");
                }
            }
            Err(e) => {
                self.metrics.flush_ticks_total.with_label_values(&["error"]).inc();
                tracing::error!(component = "segment-flush", worker = "segment-flush", "tick-id" = %tick_id, "duration-ms" = duration_ms, stage = e.stage, "error.kind" = e.stage, "error.message" = %e.message, success = false, "segment flush tick failed");
            }
        }
        self.metrics.flush_duration_seconds.with_label_values(&["tick"]).observe(started.elapsed().as_secs_f64());
        result.map(|()| report)
    }

    async fn run(
        &self,
        report: &mut FlushReport,
        options: FlushOptions,
        now: i64,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(), FlushError> {
        let tail = &self.stores.tail;
        let mut held = Vec::new();
        // Per app: its dirty conversations, and whether any is past a threshold.
        let mut dirty: BTreeMap<String, (bool, Vec<DirtyConversation>)> = BTreeMap::new();
        let (mut backlog, mut oldest) = (0u64, None::<i64>);
        let result = async {
            for shard in 0..TAIL_SHARDS {
                let lease = format!("flush-s{shard}");
                if !tail.acquire_lease(&lease, &self.holder, LEASE_TTL).await.map_err(|e| stage_error("lease", e))? {
                    report.skipped_shards += 1;
                    continue;
                }
                held.push(lease);
                for mark in tail.dirty(shard).await.map_err(|e| stage_error("buffer-snapshot", e))? {
                    backlog += mark.messages;
                    oldest = Some(oldest.map_or(mark.first_ts_ms, |o| o.min(mark.first_ts_ms)));
                    let age_ms = now.saturating_sub(mark.first_ts_ms);
                    let past = mark.bytes >= self.config.max_bytes || age_ms >= self.config.max_age.as_millis() as i64;
                    let app = dirty.entry(mark.conv.app_id.clone()).or_default();
                    app.0 |= options.all || past;
                    app.1.push(mark);
                }
            }
            if options.dry_run {
                for (app_id, (due, marks)) in &dirty {
                    report.waiting.extend(marks.iter().map(|mark| Waiting {
                        app_id: app_id.clone(),
                        conversation_id: mark.conv.conversation_id.clone(),
                        messages: mark.messages,
                        bytes: mark.bytes,
                        oldest_ts_ms: mark.first_ts_ms,
                        due: *due,
                    }));
                }
            }
            self.metrics.flush_backlog_messages.set(backlog as i64);
            self.metrics
                .flush_oldest_unflushed_age_seconds
                .set(oldest.map_or(0.0, |ts| now.saturating_sub(ts) as f64 / 1000.0));
            let total: u64 = dirty.values().filter(|(due, _)| *due).map(|(_, marks)| marks.len() as u64).sum();
            let mut done = 0u64;
            progress(done, total);
            let mut renewed = Instant::now();
            // One conversation past a threshold flushes every dirty conversation of
            // its app: the object is written anyway, and taking the others along
            // keeps objects to about one per app per `max_age` under steady traffic
            // instead of one per tick (see ARCHITECTURE.md, "Flush policy").
            for (app_id, (any_due, marks)) in dirty {
                if !any_due {
                    report.deferred += marks.len() as u64;
                    continue;
                }
                if renewed.elapsed() > LEASE_TTL / 3 {
                    for lease in &held {
                        tail.acquire_lease(lease, &self.holder, LEASE_TTL)
                            .await
                            .map_err(|e| stage_error("lease", e))?;
                    }
                    renewed = Instant::now();
                }
                done += marks.len() as u64;
                self.flush_app(report, &app_id, marks, options, now).await?;
                progress(done, total);
            }
            Ok(())
        }
        .await;
        for lease in held {
            if let Err(e) = tail.release_lease(&lease, &self.holder).await {
                tracing::warn!(component = "segment-flush", lease = %lease, error = %e, "lease not released; it expires by itself");
            }
        }
        result
    }

    async fn flush_app(
        &self,
        report: &mut FlushReport,
        app_id: &str,
        marks: Vec<DirtyConversation>,
        options: FlushOptions,
        now: i64,
    ) -> Result<(), FlushError> {
        // buffer-snapshot: each conversation's range after its flushed seq.
        let stage = Instant::now();
        let mut snapshots = Vec::with_capacity(marks.len());
        for mark in marks {
            let flushed = self
                .stores
                .metadata
                .flushed_seq(app_id, &mark.conv.conversation_id)
                .await
                .map_err(|e| stage_error("buffer-snapshot", e))?;
            match self.read_unflushed(&mark.conv, flushed).await {
                Ok(entries) => snapshots.push(Snapshot { mark, flushed, entries }),
                // One broken conversation must not stop every other one from flushing.
                Err(e) if e.message.contains("has a hole") => {
                    report.holes += 1;
                    tracing::error!(component = "segment-flush", worker = "segment-flush", stage = "buffer-snapshot", "conversation-id" = %mark.conv.conversation_id, "error.message" = %e.message, "conversation skipped: its tail has a hole");
                }
                Err(e) => return Err(e),
            }
        }
        let (empty, snapshots): (Vec<_>, Vec<_>) = snapshots.into_iter().partition(|s| s.entries.is_empty());
        let records: usize = snapshots.iter().map(|s| s.entries.len()).sum();
        self.stage_done("buffer-snapshot", stage, &[("message-count", records as u64)]);
        if options.dry_run {
            for snapshot in &empty {
                report.would_trim += self.trim_count(&snapshot.mark.conv, snapshot.flushed).await?;
            }
        } else {
            // Nothing new since the last flush: only trim and clear the mark.
            for snapshot in &empty {
                report.trimmed += self.trim(&snapshot.mark.conv, snapshot.flushed).await?;
                self.stores.tail.clear_dirty(&snapshot.mark).await.map_err(|e| stage_error("trim", e))?;
            }
        }
        if snapshots.is_empty() {
            return Ok(());
        }

        // encode
        let stage = Instant::now();
        let codec = self.config.codec;
        let mut blocks = Vec::with_capacity(snapshots.len());
        for snapshot in &snapshots {
            let records = snapshot
                .entries
                .iter()
                .map(|entry| {
                    encode_record(codec, entry)
                        .map(|bytes| Record { seq: entry.seq, ts_ms: entry.ts_ms, bytes })
                        .map_err(|e| stage_error("encode", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            blocks.push(BlockInput { conversation_id: snapshot.mark.conv.conversation_id.clone(), records });
        }
        let segment_id = uuid::Uuid::now_v7().to_string();
        let object_key = segment_key(app_id, now, &segment_id);
        let (bytes, footer) = segment::encode(app_id, codec, now, &blocks).map_err(|e| stage_error("encode", e))?;
        let raw_bytes: u64 = footer.blocks.iter().map(|b| b.raw_bytes).sum();
        self.stage_done("encode", stage, &[("payload-bytes", bytes.len() as u64), ("raw-bytes", raw_bytes)]);
        let segment_report = SegmentReport {
            app_id: app_id.to_string(),
            object_key: object_key.clone(),
            blocks: footer.blocks.clone(),
            records: records as u64,
            bytes: bytes.len() as u64,
            raw_bytes,
        };
        if options.dry_run {
            for snapshot in &snapshots {
                let to = snapshot.entries.last().expect("non-empty snapshot").seq;
                report.would_trim += self.trim_count(&snapshot.mark.conv, to).await?;
            }
            report.segments.push(segment_report);
            return Ok(());
        }

        // object-put
        let stage = Instant::now();
        let size = bytes.len() as u64;
        if let Err(e) = self.stores.objects.put_object(&object_key, bytes, MULTIPART_THRESHOLD).await {
            tracing::error!(component = "segment-flush", worker = "segment-flush", stage = "object-put", "duration-ms" = stage.elapsed().as_millis() as u64, "storage.bucket" = %self.stores.objects.bucket, "storage.key" = %object_key, "error.message" = %e, success = false, "segment flush stage failed");
            return Err(stage_error("object-put", e));
        }
        tracing::info!(component = "segment-flush", worker = "segment-flush", stage = "object-put", "duration-ms" = stage.elapsed().as_millis() as u64, "storage.bucket" = %self.stores.objects.bucket, "storage.key" = %object_key, "payload-bytes" = size, success = true, "segment flush stage ok");
        self.metrics.flush_duration_seconds.with_label_values(&["object-put"]).observe(stage.elapsed().as_secs_f64());

        if self.config.failpoint.as_deref() == Some("after-put") {
            tracing::warn!(component = "segment-flush", failpoint = "after-put", "storage.key" = %object_key, "failpoint reached: stopping before the index commit");
            std::future::pending::<()>().await;
        }

        // index-write
        let stage = Instant::now();
        let (segment_row, block_rows) = index_rows(app_id, &segment_id, &object_key, size, now, &footer);
        let advances: Vec<FlushAdvance> = snapshots
            .iter()
            .map(|s| FlushAdvance {
                app_id: app_id.to_string(),
                conversation_id: s.mark.conv.conversation_id.clone(),
                from: s.flushed,
                to: s.entries.last().expect("non-empty snapshot").seq,
            })
            .collect();
        match self.stores.metadata.commit_segment(&segment_row, &block_rows, &advances).await {
            Ok(()) => {}
            Err(StoreError::Conflict(why)) => {
                // Recovery on another instance may have indexed this very object
                // from its footer: then it is in the index and must stay.
                if let Ok(Some(_)) = self.stores.metadata.segment_by_key(&object_key).await {
                    tracing::info!(component = "segment-flush", worker = "segment-flush", "storage.key" = %object_key, "segment was indexed by recovery meanwhile");
                    return Ok(());
                }
                // Otherwise another flusher got there first: this object is an orphan
                // nobody indexed; remove it and let the next tick continue.
                tracing::warn!(component = "segment-flush", worker = "segment-flush", stage = "index-write", "storage.key" = %object_key, reason = %why, "stale flush: commit refused, deleting the unindexed object");
                let _ = self.stores.objects.delete(&object_key).await;
                return Ok(());
            }
            Err(e) => return Err(stage_error("index-write", e)),
        }
        tracing::info!(component = "segment-flush", worker = "segment-flush", stage = "index-write", "duration-ms" = stage.elapsed().as_millis() as u64, "segment-id" = %segment_id, "pg.table" = "segments,segment_blocks,flush_state", "pg.operation" = "insert", "pg.rows" = 1 + block_rows.len() + advances.len(), success = true, "segment flush stage ok");
        self.metrics.flush_duration_seconds.with_label_values(&["index-write"]).observe(stage.elapsed().as_secs_f64());
        self.metrics.segment_bytes.observe(size as f64);
        self.metrics.segment_records.observe(records as f64);

        // trim
        let stage = Instant::now();
        for (snapshot, advance) in snapshots.iter().zip(&advances) {
            report.trimmed += self.trim(&snapshot.mark.conv, advance.to).await?;
            self.stores.tail.clear_dirty(&snapshot.mark).await.map_err(|e| stage_error("trim", e))?;
        }
        self.stage_done("trim", stage, &[("trimmed", report.trimmed)]);
        report.segments.push(segment_report);
        Ok(())
    }

    async fn read_unflushed(&self, conv: &ConvKey, flushed: u64) -> Result<Vec<TailEntry>, FlushError> {
        let mut entries: Vec<TailEntry> = Vec::new();
        loop {
            let after = entries.last().map_or(flushed, |e| e.seq);
            let page =
                self.stores.tail.read(conv, after, READ_PAGE).await.map_err(|e| stage_error("buffer-snapshot", e))?;
            let done = page.len() < READ_PAGE;
            entries.extend(page);
            if done {
                break;
            }
        }
        // The tail must continue exactly where the segments stop: a hole would be
        // written into history forever. Refuse and say so.
        if let Some(first) = entries.first() {
            if first.seq != flushed + 1 || entries.windows(2).any(|w| w[1].seq != w[0].seq + 1) {
                return Err(stage_error(
                    "buffer-snapshot",
                    format!("conversation {} has a hole after flushed seq {flushed}", conv.conversation_id),
                ));
            }
        }
        Ok(entries)
    }

    /// Trims the tail through `flushed − hot_window`.
    async fn trim(&self, conv: &ConvKey, flushed: u64) -> Result<u64, FlushError> {
        let through = flushed.saturating_sub(self.config.hot_window);
        if through == 0 {
            return Ok(0);
        }
        self.stores.tail.trim(conv, through).await.map_err(|e| stage_error("trim", e))
    }

    /// How many entries [`Flusher::trim`] would remove after flushing through
    /// `flushed`: the tail is gap-free, so its first seq tells.
    async fn trim_count(&self, conv: &ConvKey, flushed: u64) -> Result<u64, FlushError> {
        let through = flushed.saturating_sub(self.config.hot_window);
        let first = self.stores.tail.read(conv, 0, 1).await.map_err(|e| stage_error("buffer-snapshot", e))?;
        Ok(first.first().map_or(0, |entry| (through + 1).saturating_sub(entry.seq)))
    }

    fn stage_done(&self, stage: &'static str, started: Instant, fields: &[(&str, u64)]) {
        self.metrics.flush_duration_seconds.with_label_values(&[stage]).observe(started.elapsed().as_secs_f64());
        let details: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::debug!(component = "segment-flush", worker = "segment-flush", stage, "duration-ms" = started.elapsed().as_millis() as u64, details = %details.join(" "), success = true, "segment flush stage ok");
    }

    /// Finds segment objects without index rows (a crash between PUT and
    /// commit) and indexes each from its footer when its ranges continue
    /// exactly where the index stops, or deletes it (the tail still holds
    /// those messages: nothing was trimmed without a commit).
    pub async fn recover(&self) -> Result<RepairReport, FlushError> {
        let mut report = RepairReport::default();
        for key in self.stores.objects.list("segments/").await.map_err(|e| stage_error("recover-list", e))? {
            report.objects += 1;
            if self.stores.metadata.segment_by_key(&key).await.map_err(|e| stage_error("recover-index", e))?.is_some() {
                report.already_indexed += 1;
                continue;
            }
            let indexed = match self.read_segment(&key).await {
                Ok((segment_row, block_rows)) => {
                    let mut advances = Vec::with_capacity(block_rows.len());
                    for b in &block_rows {
                        advances.push(FlushAdvance {
                            app_id: b.app_id.clone(),
                            conversation_id: b.conversation_id.clone(),
                            from: (b.seq_start as u64).saturating_sub(1),
                            to: b.seq_end as u64,
                        });
                    }
                    match self.stores.metadata.commit_segment(&segment_row, &block_rows, &advances).await {
                        Ok(()) => true,
                        Err(StoreError::Conflict(_)) => false,
                        Err(e) => return Err(stage_error("recover-index", e)),
                    }
                }
                Err(e) => {
                    tracing::warn!(component = "recovery", worker = "segment-recovery", "storage.key" = %key, error = %e, "orphan segment unreadable");
                    false
                }
            };
            if indexed {
                report.indexed += 1;
                tracing::info!(component = "recovery", worker = "segment-recovery", "storage.key" = %key, "orphan segment indexed from its footer");
            } else if self
                .stores
                .metadata
                .segment_by_key(&key)
                .await
                .map_err(|e| stage_error("recover-index", e))?
                .is_some()
            {
                // Its own flusher committed it meanwhile: not an orphan after all.
                report.already_indexed += 1;
            } else {
                self.stores.objects.delete(&key).await.map_err(|e| stage_error("recover-delete", e))?;
                report.deleted += 1;
                tracing::info!(component = "recovery", worker = "segment-recovery", "storage.key" = %key, "orphan segment deleted (its ranges are indexed elsewhere or still in the tail)");
            }
        }
        Ok(report)
    }

    /// Rebuilds the index from every object's footer (metadata lost, objects
    /// kept): inserts missing segment and block rows and raises flushed seqs.
    pub async fn reindex(&self) -> Result<RepairReport, FlushError> {
        let mut report = RepairReport::default();
        for key in self.stores.objects.list("segments/").await.map_err(|e| stage_error("reindex-list", e))? {
            report.objects += 1;
            let (segment_row, block_rows) =
                self.read_segment(&key).await.map_err(|e| stage_error("reindex-read", e))?;
            if self
                .stores
                .metadata
                .reindex_segment(&segment_row, &block_rows)
                .await
                .map_err(|e| stage_error("reindex-write", e))?
            {
                report.indexed += 1;
            } else {
                report.already_indexed += 1;
            }
        }
        Ok(report)
    }

    async fn read_segment(&self, key: &str) -> Result<(SegmentRow, Vec<BlockRow>), String> {
        let bytes = self.stores.objects.get(key).await.map_err(|e| e.to_string())?;
        let parsed = segment::Segment::parse(&bytes).map_err(|e| e.to_string())?;
        let segment_id = segment_id_of(key).ok_or_else(|| format!("{key} is not named <segment-id>.seg"))?;
        Ok(index_rows(
            &parsed.footer.app_id,
            &segment_id,
            key,
            bytes.len() as u64,
            parsed.header.created_at_ms,
            &parsed.footer,
        ))
    }
}

/// `segments/<app>/<yyyy>/<mm>/<dd>/<hh>/<segment-id>.seg`, dated by `created_at_ms` (UTC).
pub fn segment_key(app_id: &str, created_at_ms: i64, segment_id: &str) -> String {
    let stamp = crate::clock::format_ms(created_at_ms); // 2026-11-27T08:05:17.123Z
    let (date, time) = stamp.split_once('T').unwrap_or((&stamp, "00"));
    let mut parts = date.split('-');
    let (year, month, day) =
        (parts.next().unwrap_or("1970"), parts.next().unwrap_or("01"), parts.next().unwrap_or("01"));
    format!("segments/{app_id}/{year}/{month}/{day}/{}/{segment_id}.seg", &time[..2])
}

fn segment_id_of(key: &str) -> Option<String> {
    key.rsplit('/').next()?.strip_suffix(".seg").map(str::to_string)
}

/// The ticker `serve` runs: a tick every `flush.interval`, backing off
/// exponentially (up to a minute) while ticks fail, and recovery at start and
/// every ten minutes. Flushes what is due once more on shutdown.
pub async fn run(flusher: Flusher, mut stop: tokio::sync::watch::Receiver<bool>) {
    const RECOVERY_EVERY: Duration = Duration::from_secs(600);
    let interval = flusher.config.interval;
    let mut failures: u32 = 0;
    let mut last_recovery: Option<Instant> = None;
    tracing::info!(
        component = "segment-flush",
        worker = "segment-flush",
        "interval-ms" = interval.as_millis() as u64,
        "flush ticker started"
    );
    loop {
        if last_recovery.is_none_or(|at| at.elapsed() >= RECOVERY_EVERY) {
            match flusher.recover().await {
                Ok(report) => {
                    last_recovery = Some(Instant::now());
                    tracing::info!(
                        component = "recovery",
                        worker = "segment-recovery",
                        objects = report.objects,
                        indexed = report.indexed,
                        deleted = report.deleted,
                        "segment recovery pass"
                    );
                }
                Err(e) => {
                    tracing::warn!(component = "recovery", worker = "segment-recovery", stage = e.stage, error = %e.message, "segment recovery failed; retrying next tick")
                }
            }
        }
        match flusher.tick(FlushOptions::default(), crate::clock::now_ms()).await {
            Ok(_) => failures = 0,
            Err(_) => failures = failures.saturating_add(1),
        }
        match flusher.stores.tail.purge_expired().await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(
                component = "segment-flush",
                worker = "tail-expiry",
                removed,
                "expired tail state purged"
            ),
            Err(e) => {
                tracing::warn!(component = "segment-flush", worker = "tail-expiry", error = %e, "purging expired tail state failed")
            }
        }
        let wait = if failures == 0 {
            interval
        } else {
            (interval * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(60))
        };
        if failures > 0 {
            tracing::warn!(
                component = "segment-flush",
                worker = "segment-flush",
                "retry-count" = failures,
                "next-tick-ms" = wait.as_millis() as u64,
                "flush failing; backing off"
            );
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Shutdown: whatever is due goes out now rather than waiting in the tail.
    if let Err(e) = flusher.tick(FlushOptions::default(), crate::clock::now_ms()).await {
        tracing::warn!(component = "segment-flush", stage = e.stage, error = %e.message, "final flush failed; messages stay in the tail");
    }
}
