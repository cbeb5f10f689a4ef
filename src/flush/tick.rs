//! One flush tick, stage by stage: take the shard leases and read the dirty
//! marks (plan), then per app due: `buffer-snapshot` (each conversation's
//! unflushed range), `encode` (one segment), `object-put`, `index-write` (the
//! guarded commit) and `trim`. Each stage is timed into
//! `msgd_flush_duration_seconds{stage}` and logged with its `stage` field.

use std::collections::BTreeMap;
use std::time::Instant;

use super::index::segment_key;
use super::{
    store_error, FlushError, FlushOptions, FlushReport, Flusher, SegmentReport, Waiting, LEASE_TTL,
    MULTIPART_THRESHOLD, READ_PAGE,
};
use crate::envelope::encode_record;
use crate::idempotency;
use crate::segment::{self, Record};
use crate::store::{ConvKey, DirtyConversation, FlushAdvance, StoreError, TailEntry, TAIL_SHARDS};
use crate::timeline::index_rows;

/// `progress(done, total)`, in conversations flushed.
type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Per app: whether any of its dirty conversations is due, and all of them.
type DirtyApps = BTreeMap<String, (bool, Vec<DirtyConversation>)>;

/// One conversation's unflushed range, read from the tail.
struct Snapshot {
    mark: DirtyConversation,
    flushed: u64,
    entries: Vec<TailEntry>,
}

impl Snapshot {
    /// The last seq read (the snapshot is non-empty when encoded).
    fn last_seq(&self) -> u64 {
        self.entries.last().expect("non-empty snapshot").seq
    }
}

/// An encoded segment, apart from its bytes.
struct Encoded {
    segment_id: String,
    object_key: String,
    footer: segment::Footer,
    records: u64,
    size: u64,
}

/// The shard leases a tick holds, renewed as a long tick goes on.
struct Leases {
    held: Vec<String>,
    renewed: Instant,
}

impl Flusher {
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
        progress: Progress<'_>,
    ) -> Result<FlushReport, FlushError> {
        let tick_id = crate::worker::current_tick_id();
        let started = Instant::now();
        flush_event!(
            debug,
            "tick-id" = %tick_id,
            "tick-started-at" = %crate::clock::format_ms(now),
            all = options.all,
            "dry-run" = options.dry_run,
            "segment flush tick start"
        );
        let mut report = FlushReport { tick_id: tick_id.clone(), dry_run: options.dry_run, ..Default::default() };
        let result = self.run(&mut report, options, now, progress).await;
        self.tick_done(&report, &result, started);
        result.map(|()| report)
    }

    /// Records and logs how a tick ended.
    fn tick_done(&self, report: &FlushReport, result: &Result<(), FlushError>, started: Instant) {
        let (tick_id, duration_ms) = (&report.tick_id, started.elapsed().as_millis() as u64);
        let records: u64 = report.segments.iter().map(|s| s.records).sum();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.flush_ticks_total.with_label_values(&[outcome]).inc();
        match result {
            Ok(()) if report.segments.is_empty() => flush_event!(
                debug,
                "tick-id" = %tick_id,
                "duration-ms" = duration_ms,
                deferred = report.deferred,
                success = true,
                "segment flush tick complete (nothing due)"
            ),
            Ok(()) => flush_event!(
                info,
                "tick-id" = %tick_id,
                "duration-ms" = duration_ms,
                segments = report.segments.len(),
                "message-count" = records,
                trimmed = report.trimmed,
                deferred = report.deferred,
                success = true,
                "segment flush tick complete"
            ),
            Err(e) => flush_event!(
                error,
                "tick-id" = %tick_id,
                "duration-ms" = duration_ms,
                stage = e.stage(),
                "error.kind" = e.stage(),
                "error.message" = %e.detail(),
                success = false,
                "segment flush tick failed"
            ),
        }
        self.metrics.flush_duration_seconds.with_label_values(&["tick"]).observe(started.elapsed().as_secs_f64());
    }

    /// Takes the leases, flushes every app due, and releases the leases
    /// whatever happened.
    async fn run(
        &self,
        report: &mut FlushReport,
        options: FlushOptions,
        now: i64,
        progress: Progress<'_>,
    ) -> Result<(), FlushError> {
        let mut leases = Leases { held: Vec::new(), renewed: Instant::now() };
        let result = async {
            let dirty = self.plan(report, &mut leases, options, now).await?;
            self.flush_due(report, &mut leases, dirty, options, now, progress).await
        }
        .await;
        // When the coordination store fails, the other leases are not tried
        // one by one against it: each waits out a reconnect (~0.5 s with Redis
        // down), so 64 of them would keep the tick, and so its failure, from
        // ending for over 30 s. They all expire by themselves.
        let mut held = leases.held.into_iter();
        while let Some(lease) = held.next() {
            if let Err(e) = self.stores.coordination.release_lease(&lease, &self.holder).await {
                tracing::warn!(
                    component = "segment-flush",
                    lease = %lease,
                    unreleased = 1 + held.len(),
                    error = %e,
                    "lease not released; it expires by itself"
                );
                break;
            }
        }
        result
    }

    /// Takes each free shard lease, reads its dirty marks, and decides which
    /// apps are due; records the backlog gauges (and, dry, what is waiting).
    async fn plan(
        &self,
        report: &mut FlushReport,
        leases: &mut Leases,
        options: FlushOptions,
        now: i64,
    ) -> Result<DirtyApps, FlushError> {
        let tail = &self.stores.tail;
        let mut dirty = DirtyApps::new();
        let (mut backlog, mut oldest) = (0u64, None::<i64>);
        for shard in 0..TAIL_SHARDS {
            let lease = format!("flush-s{shard}");
            if !self
                .stores
                .coordination
                .acquire_lease(&lease, &self.holder, LEASE_TTL)
                .await
                .map_err(store_error("lease"))?
            {
                report.skipped_shards += 1;
                continue;
            }
            leases.held.push(lease);
            for mark in tail.dirty(shard).await.map_err(store_error("buffer-snapshot"))? {
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
            report.waiting.extend(waiting(&dirty));
        }
        self.metrics.flush_backlog_messages.set(backlog as i64);
        self.metrics
            .flush_oldest_unflushed_age_seconds
            .set(oldest.map_or(0.0, |ts| now.saturating_sub(ts) as f64 / 1000.0));
        Ok(dirty)
    }

    /// Flushes every app due, renewing the leases as it goes.
    ///
    /// One conversation past a threshold flushes every dirty conversation of
    /// its app: the object is written anyway, and taking the others along
    /// keeps objects to about one per app per `max_age` under steady traffic
    /// instead of one per tick (see ARCHITECTURE.md, "Flush policy").
    async fn flush_due(
        &self,
        report: &mut FlushReport,
        leases: &mut Leases,
        dirty: DirtyApps,
        options: FlushOptions,
        now: i64,
        progress: Progress<'_>,
    ) -> Result<(), FlushError> {
        let total: u64 = dirty.values().filter(|(due, _)| *due).map(|(_, marks)| marks.len() as u64).sum();
        let mut done = 0u64;
        progress(done, total);
        leases.renewed = Instant::now();
        for (app_id, (any_due, marks)) in dirty {
            if !any_due {
                report.deferred += marks.len() as u64;
                continue;
            }
            self.renew_if_due(leases).await?;
            done += marks.len() as u64;
            self.flush_app(report, &app_id, marks, options, now).await?;
            progress(done, total);
        }
        Ok(())
    }

    async fn renew_if_due(&self, leases: &mut Leases) -> Result<(), FlushError> {
        if leases.renewed.elapsed() <= LEASE_TTL / 3 {
            return Ok(());
        }
        for lease in &leases.held {
            self.stores
                .coordination
                .acquire_lease(lease, &self.holder, LEASE_TTL)
                .await
                .map_err(store_error("lease"))?;
        }
        leases.renewed = Instant::now();
        Ok(())
    }

    /// Every stage for one app: its dirty conversations into one segment.
    async fn flush_app(
        &self,
        report: &mut FlushReport,
        app_id: &str,
        mut marks: Vec<DirtyConversation>,
        options: FlushOptions,
        now: i64,
    ) -> Result<(), FlushError> {
        // Blocks in conversation order: a compaction reads the blocks of a run
        // of conversations from each segment as one ranged GET.
        marks.sort_unstable_by(|a, b| a.conv.conversation_id.cmp(&b.conv.conversation_id));
        let (empty, snapshots) = self.snapshot(report, marks).await?;
        self.trim_unchanged(report, &empty, options).await?;
        if snapshots.is_empty() {
            return Ok(());
        }
        let (encoded, bytes) = self.encode(app_id, &snapshots, now)?;
        let segment_report = SegmentReport {
            app_id: app_id.to_string(),
            object_key: encoded.object_key.clone(),
            blocks: encoded.footer.blocks.clone(),
            records: encoded.records,
            bytes: encoded.size,
            raw_bytes: encoded.footer.blocks.iter().map(|b| b.raw_bytes).sum(),
        };
        if options.dry_run {
            for snapshot in &snapshots {
                report.would_trim += self.trim_count(&snapshot.mark.conv, snapshot.last_seq()).await?;
            }
            report.segments.push(segment_report);
            return Ok(());
        }
        self.put(&encoded.object_key, bytes).await?;
        if self.config.failpoint.as_deref() == Some("after-put") {
            tracing::warn!(
                component = "segment-flush",
                failpoint = "after-put",
                "storage.key" = %encoded.object_key,
                "failpoint reached: stopping before the index commit"
            );
            std::future::pending::<()>().await;
        }
        if !self.commit(app_id, &encoded, &snapshots, now).await? {
            return Ok(());
        }
        self.metrics.segment_bytes.observe(encoded.size as f64);
        self.metrics.segment_records.observe(encoded.records as f64);

        let stage = Instant::now();
        self.release_claims(&snapshots, now).await?;
        for snapshot in &snapshots {
            report.trimmed += self.trim(&snapshot.mark.conv, snapshot.last_seq()).await?;
            self.stores.tail.clear_dirty(&snapshot.mark).await.map_err(store_error("trim"))?;
        }
        self.stage_done("trim", stage, &[("trimmed", report.trimmed)]);
        report.segments.push(segment_report);
        Ok(())
    }

    /// `buffer-snapshot`: each conversation's range after its flushed seq, as
    /// (nothing new, something to flush). A conversation whose tail has a hole
    /// is counted and skipped: one broken conversation must not stop every
    /// other one from flushing.
    async fn snapshot(
        &self,
        report: &mut FlushReport,
        marks: Vec<DirtyConversation>,
    ) -> Result<(Vec<Snapshot>, Vec<Snapshot>), FlushError> {
        let stage = Instant::now();
        let mut snapshots = Vec::with_capacity(marks.len());
        for mark in marks {
            let conversation_id = &mark.conv.conversation_id;
            let flushed = self.stores.metadata.flushed_seq(&mark.conv).await.map_err(store_error("buffer-snapshot"))?;
            match self.read_unflushed(&mark.conv, flushed).await {
                Ok(entries) => snapshots.push(Snapshot { mark, flushed, entries }),
                Err(e @ FlushError::Hole { .. }) => {
                    report.holes += 1;
                    flush_event!(
                        error,
                        stage = "buffer-snapshot",
                        "conversation-id" = %conversation_id,
                        "error.message" = %e.detail(),
                        "conversation skipped: its tail has a hole"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let (empty, snapshots): (Vec<_>, Vec<_>) = snapshots.into_iter().partition(|s| s.entries.is_empty());
        let records: usize = snapshots.iter().map(|s| s.entries.len()).sum();
        self.stage_done("buffer-snapshot", stage, &[("message-count", records as u64)]);
        Ok((empty, snapshots))
    }

    /// Conversations with nothing new since the last flush: only trim and
    /// clear the mark (dry: count what the trim would remove).
    async fn trim_unchanged(
        &self,
        report: &mut FlushReport,
        empty: &[Snapshot],
        options: FlushOptions,
    ) -> Result<(), FlushError> {
        for snapshot in empty {
            if options.dry_run {
                report.would_trim += self.trim_count(&snapshot.mark.conv, snapshot.flushed).await?;
            } else {
                report.trimmed += self.trim(&snapshot.mark.conv, snapshot.flushed).await?;
                self.stores.tail.clear_dirty(&snapshot.mark).await.map_err(store_error("trim"))?;
            }
        }
        Ok(())
    }

    /// `encode`: the snapshots as one segment of the app.
    fn encode(&self, app_id: &str, snapshots: &[Snapshot], now: i64) -> Result<(Encoded, Vec<u8>), FlushError> {
        let stage = Instant::now();
        let codec = self.config.codec;
        let encode_error = |e: &dyn std::fmt::Display| FlushError::Encode(e.to_string());
        let mut blocks = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            let records = snapshot
                .entries
                .iter()
                .map(|entry| {
                    encode_record(codec, entry)
                        .map(|bytes| Record { seq: entry.seq, ts_ms: entry.ts_ms, bytes })
                        .map_err(|e| encode_error(&e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let conversation_id = &snapshot.mark.conv.conversation_id;
            blocks.extend(segment::split(conversation_id, records, self.config.block_bytes as usize));
        }
        let records = snapshots.iter().map(|s| s.entries.len() as u64).sum();
        let segment_id = uuid::Uuid::now_v7().to_string();
        let object_key = segment_key(app_id, now, &segment_id);
        let (bytes, footer) =
            segment::encode(app_id, codec, segment::Kind::Flush, now, &blocks).map_err(|e| encode_error(&e))?;
        let raw_bytes: u64 = footer.blocks.iter().map(|b| b.raw_bytes).sum();
        self.stage_done("encode", stage, &[("payload-bytes", bytes.len() as u64), ("raw-bytes", raw_bytes)]);
        let size = bytes.len() as u64;
        Ok((Encoded { segment_id, object_key, footer, records, size }, bytes))
    }

    /// `object-put`: the segment object.
    async fn put(&self, object_key: &str, bytes: Vec<u8>) -> Result<(), FlushError> {
        let stage = Instant::now();
        let size = bytes.len() as u64;
        let bucket = &self.stores.objects.bucket;
        if let Err(e) = self.stores.objects.put_object(object_key, bytes, MULTIPART_THRESHOLD).await {
            flush_event!(
                error,
                stage = "object-put",
                "duration-ms" = stage.elapsed().as_millis() as u64,
                "storage.bucket" = %bucket,
                "storage.key" = %object_key,
                "error.message" = %e,
                success = false,
                "segment flush stage failed"
            );
            return Err(FlushError::Store { stage: "object-put", source: e });
        }
        flush_event!(
            info,
            stage = "object-put",
            "duration-ms" = stage.elapsed().as_millis() as u64,
            "storage.bucket" = %bucket,
            "storage.key" = %object_key,
            "payload-bytes" = size,
            success = true,
            "segment flush stage ok"
        );
        self.metrics.flush_duration_seconds.with_label_values(&["object-put"]).observe(stage.elapsed().as_secs_f64());
        Ok(())
    }

    /// `index-write`: in one metadata transaction, the segment's index rows and
    /// each conversation's flushed seq — guarded, so a stale flusher cannot
    /// commit. False when the commit was refused (nothing to trim then).
    async fn commit(
        &self,
        app_id: &str,
        encoded: &Encoded,
        snapshots: &[Snapshot],
        now: i64,
    ) -> Result<bool, FlushError> {
        let stage = Instant::now();
        let object_key = &encoded.object_key;
        let (segment_row, block_rows) =
            index_rows(app_id, &encoded.segment_id, object_key, encoded.size, now, &encoded.footer);
        let advances: Vec<FlushAdvance> = snapshots
            .iter()
            .map(|s| FlushAdvance {
                app_id: app_id.to_string(),
                conversation_id: s.mark.conv.conversation_id.clone(),
                from: s.flushed,
                to: s.last_seq(),
            })
            .collect();
        match self.stores.metadata.commit_segment(&segment_row, &block_rows, &advances).await {
            Ok(()) => {}
            Err(StoreError::Conflict(why)) => {
                self.refused(object_key, &why).await;
                return Ok(false);
            }
            Err(e) => return Err(FlushError::Store { stage: "index-write", source: e }),
        }
        flush_event!(
            info,
            stage = "index-write",
            "duration-ms" = stage.elapsed().as_millis() as u64,
            "segment-id" = %encoded.segment_id,
            "pg.table" = "segments,segment_blocks,flush_state",
            "pg.operation" = "insert",
            "pg.rows" = 1 + block_rows.len() + advances.len(),
            success = true,
            "segment flush stage ok"
        );
        self.metrics.flush_duration_seconds.with_label_values(&["index-write"]).observe(stage.elapsed().as_secs_f64());
        Ok(true)
    }

    /// Part of `trim`, where the tail releases the idempotency claims of
    /// flushed messages (Redis): their keys' durable record first, then the
    /// claims. A failure before the release leaves the claims to their TTL.
    async fn release_claims(&self, snapshots: &[Snapshot], now: i64) -> Result<(), FlushError> {
        let tail = &self.stores.tail;
        if !tail.releases_claims() {
            return Ok(());
        }
        let (rows, released): (Vec<_>, Vec<_>) = snapshots
            .iter()
            .filter_map(|s| idempotency::record_of(&s.mark.conv, &s.entries).map(|(row, keys)| (row, (s, keys))))
            .unzip();
        if rows.is_empty() {
            return Ok(());
        }
        self.stores.metadata.insert_idempotency_records(&rows).await.map_err(store_error("trim"))?;
        for (snapshot, keys) in released {
            let count = tail.release_claims(&snapshot.mark.conv, &keys, now).await.map_err(store_error("trim"))?;
            self.metrics.idempotency_claims_released_total.inc_by(count);
        }
        Ok(())
    }

    /// After a refused commit: keeps the object when recovery on another
    /// instance indexed it from its footer meanwhile; otherwise another
    /// flusher got there first, and this object is an orphan nobody indexed,
    /// removed here (the next tick continues).
    async fn refused(&self, object_key: &str, why: &str) {
        if let Ok(Some(_)) = self.stores.metadata.segment_by_key(object_key).await {
            flush_event!(info, "storage.key" = %object_key, "segment was indexed by recovery meanwhile");
            return;
        }
        flush_event!(
            warn,
            stage = "index-write",
            "storage.key" = %object_key,
            reason = %why,
            "stale flush: commit refused, deleting the unindexed object"
        );
        let _ = self.stores.objects.delete(object_key).await;
    }

    /// Every tail entry of `conv` after seq `after`, a page at a time; a
    /// failure is reported as `stage`.
    pub(super) async fn tail_after(
        &self,
        conv: &ConvKey,
        after: u64,
        stage: &'static str,
    ) -> Result<Vec<TailEntry>, FlushError> {
        let mut entries: Vec<TailEntry> = Vec::new();
        loop {
            let from = entries.last().map_or(after, |e| e.seq);
            let page = self.stores.tail.read(conv, from, READ_PAGE).await.map_err(store_error(stage))?;
            let done = page.len() < READ_PAGE;
            entries.extend(page);
            if done {
                return Ok(entries);
            }
        }
    }

    /// The tail of `conv` after `flushed`, which must continue exactly where
    /// the segments stop: a hole would be written into history forever, so it
    /// is refused as [`FlushError::Hole`].
    async fn read_unflushed(&self, conv: &ConvKey, flushed: u64) -> Result<Vec<TailEntry>, FlushError> {
        let entries = self.tail_after(conv, flushed, "buffer-snapshot").await?;
        if let Some(first) = entries.first() {
            if first.seq != flushed + 1 || entries.windows(2).any(|w| w[1].seq != w[0].seq + 1) {
                return Err(FlushError::Hole { conversation_id: conv.conversation_id.clone(), flushed });
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
        self.stores.tail.trim(conv, through).await.map_err(store_error("trim"))
    }

    /// How many entries [`Flusher::trim`] would remove after flushing through
    /// `flushed`: the tail is gap-free, so its first seq tells.
    async fn trim_count(&self, conv: &ConvKey, flushed: u64) -> Result<u64, FlushError> {
        let through = flushed.saturating_sub(self.config.hot_window);
        let first = self.stores.tail.read(conv, 0, 1).await.map_err(store_error("buffer-snapshot"))?;
        Ok(first.first().map_or(0, |entry| (through + 1).saturating_sub(entry.seq)))
    }

    fn stage_done(&self, stage: &'static str, started: Instant, fields: &[(&str, u64)]) {
        self.metrics.flush_duration_seconds.with_label_values(&[stage]).observe(started.elapsed().as_secs_f64());
        let details: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        flush_event!(
            debug,
            stage,
            "duration-ms" = started.elapsed().as_millis() as u64,
            details = %details.join(" "),
            success = true,
            "segment flush stage ok"
        );
    }
}

/// A dry run's list of every conversation with unflushed messages.
fn waiting(dirty: &DirtyApps) -> impl Iterator<Item = Waiting> + '_ {
    dirty.iter().flat_map(|(app_id, (due, marks))| {
        marks.iter().map(move |mark| Waiting {
            app_id: app_id.clone(),
            conversation_id: mark.conv.conversation_id.clone(),
            messages: mark.messages,
            bytes: mark.bytes,
            oldest_ts_ms: mark.first_ts_ms,
            due: *due,
        })
    })
}
