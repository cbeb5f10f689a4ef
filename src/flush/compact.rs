//! Compaction (ARCHITECTURE.md, "Compaction"): the segments an app's flushes
//! wrote within one `flush.compact_window` are merged into one (or, above
//! [`OBJECT_BYTES`], a few) segments of kind `compaction`, with one block per
//! conversation per window instead of one per flush — or a few, each at most
//! `flush.block_bytes` of raw records. Fewer block rows, larger zstd frames.
//!
//! Steps per window: read the window's block rows in conversation order,
//! fetch them in runs (one ranged GET per stretch of blocks that lie end to
//! end in an object), re-encode them in seq order, PUT each new object as it
//! closes, then in one metadata transaction delete the old segments' rows and insert
//! the new ones — refused, and the new objects deleted, if any old segment
//! is gone meanwhile (retention, another compactor). Only after the commit
//! are the old objects deleted; a reader that looked up an old block just
//! before looks the range up again (`Timeline::read`). A crash before the
//! commit leaves a compaction object without rows, which recovery deletes
//! once it is an hour old (never earlier: it may be a running compaction's);
//! a crash after it leaves old objects without rows, which recovery deletes
//! as orphans whose ranges are indexed elsewhere.

use std::collections::HashMap;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::{segment_key, store_error, FlushError, Flusher};
use crate::envelope::decode_record;
use crate::segment::{self, Codec, Kind, Record};
use crate::store::{BlockRow, SegmentRow, StoreError};
use crate::timeline::{block_meta, index_rows};

/// Candidate windows one run looks at beyond the ones it may compact: a
/// window that cannot be compacted (an unreadable segment; one segment per
/// record codec) must not hold up the ones after it.
const EXTRA_CANDIDATES: usize = 48;
/// A compaction object is closed once its blocks reach this many bytes; a
/// window with more becomes several objects. It bounds the memory a run holds.
pub const OBJECT_BYTES: usize = 16 * 1024 * 1024;
/// Ranged GETs in flight while fetching a run of blocks.
const READS_IN_FLIGHT: usize = 8;
/// Compressed bytes of input blocks fetched and held at once.
const FETCH_BYTES: u64 = 4 * 1024 * 1024;
/// Block rows read from the index at a time (whole conversations).
const BLOCK_PAGE: usize = 10_000;
/// A window is compacted once it ended this long ago: a flush that read the
/// clock before the window ended may still be committing into it.
const SETTLE_MS: i64 = 5 * 60 * 1000;

/// What a compaction run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    /// Windows whose segments were replaced.
    pub windows: u64,
    pub segments_in: u64,
    pub segments_out: u64,
    pub block_rows_in: u64,
    pub block_rows_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records: u64,
    /// Ranged GETs of input blocks (blocks that lie end to end in an object are one GET).
    pub reads: u64,
    /// Windows whose commit was refused (a segment went away meanwhile); retried next run.
    pub conflicts: u64,
    /// Windows left as they are because a segment in them is unreadable (logged with its key).
    pub skipped: u64,
}

impl Flusher {
    /// One compaction run at `now`: up to `max_windows` windows that ended
    /// before `now` and hold more than one segment, one of them a flush's,
    /// oldest first.
    pub async fn compact(&self, now: i64, max_windows: usize) -> Result<CompactReport, FlushError> {
        let mut report = CompactReport::default();
        let window_ms = self.config.compact_window.as_millis() as i64;
        if window_ms == 0 {
            return Ok(report);
        }
        let before = (now - SETTLE_MS).div_euclid(window_ms) * window_ms;
        let metadata = &self.stores.metadata;
        let windows = metadata
            .compaction_windows(window_ms, before, max_windows + EXTRA_CANDIDATES)
            .await
            .map_err(store_error("compact-plan"))?;
        for (app_id, start) in windows {
            if report.windows >= max_windows as u64 {
                break;
            }
            match self.compact_window(&mut report, &app_id, start, start + window_ms).await {
                Ok(()) => {}
                Err(e @ (FlushError::Unreadable(_) | FlushError::Encode(_))) => {
                    report.skipped += 1;
                    compaction_event!(
                        error,
                        stage = e.stage(),
                        "app-id" = %app_id,
                        "window-start" = %crate::clock::format_ms(start),
                        "error.message" = %e.detail(),
                        "window left uncompacted"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// The segments of one window, grouped by record codec (a codec change
    /// within a window gives one compaction object per codec).
    async fn compact_window(
        &self,
        report: &mut CompactReport,
        app_id: &str,
        start: i64,
        end: i64,
    ) -> Result<(), FlushError> {
        let metadata = &self.stores.metadata;
        let segments = metadata.segments_created_in(app_id, start, end).await.map_err(store_error("compact-plan"))?;
        let mut groups: Vec<(Codec, Vec<SegmentRow>)> = Vec::new();
        for row in segments {
            let codec = self.codec_of(&row.object_key).await?;
            match groups.iter_mut().find(|(c, _)| *c == codec) {
                Some((_, rows)) => rows.push(row),
                None => groups.push((codec, vec![row])),
            }
        }
        for (codec, rows) in groups.into_iter().filter(|(_, rows)| rows.len() > 1) {
            self.compact_group(report, app_id, start, codec, rows).await?;
        }
        Ok(())
    }

    async fn codec_of(&self, object_key: &str) -> Result<Codec, FlushError> {
        let objects = &self.stores.objects;
        let header =
            objects.get_range(object_key, 0, segment::HEADER_LEN as u64).await.map_err(store_error("compact-read"))?;
        let header =
            segment::decode_header(&header).map_err(|e| FlushError::Unreadable(format!("{object_key}: {e}")))?;
        Ok(header.codec)
    }

    /// Re-encodes the blocks of `old` (one window, one codec), PUTs the
    /// result and swaps the index rows.
    async fn compact_group(
        &self,
        report: &mut CompactReport,
        app_id: &str,
        start: i64,
        codec: Codec,
        old: Vec<SegmentRow>,
    ) -> Result<(), FlushError> {
        let started = Instant::now();
        let ids: Vec<String> = old.iter().map(|row| row.id.clone()).collect();
        // Each object is PUT as soon as it closes, so a run holds one open object at most.
        let mut rows = Vec::new();
        let (rows_in, records_in) = match self.write_objects(report, app_id, start, codec, &old, &mut rows).await {
            Ok(read) => read,
            Err(e) => {
                self.delete_uncommitted(&rows).await;
                return Err(e);
            }
        };
        let records_out: u64 = rows.iter().flat_map(|(_, blocks)| blocks).map(|b| b.record_count as u64).sum();
        if records_out != records_in {
            self.delete_uncommitted(&rows).await;
            return Err(FlushError::Encode(format!(
                "compaction of {app_id} at {start} read {records_in} records but encoded {records_out}"
            )));
        }

        if self.config.failpoint.as_deref() == Some("compact-after-put") {
            compaction_event!(
                warn,
                failpoint = "compact-after-put",
                "failpoint reached: stopping before the index swap"
            );
            std::future::pending::<()>().await;
        }
        match self.stores.metadata.replace_segments(&ids, &rows).await {
            Ok(()) => {}
            Err(StoreError::Conflict(why)) => {
                report.conflicts += 1;
                compaction_event!(warn, "app-id" = %app_id, reason = %why, "compaction refused; its objects deleted");
                self.delete_uncommitted(&rows).await;
                return Ok(());
            }
            Err(e) => return Err(FlushError::Store { stage: "compact-swap", source: e }),
        }
        let replaced = old.iter().map(|row| row.object_key.as_str());
        self.delete_objects(replaced, "replaced segment not deleted; recovery deletes it as an orphan").await;

        let rows_out: u64 = rows.iter().map(|(_, blocks)| blocks.len() as u64).sum();
        let bytes_in: u64 = old.iter().map(|row| row.byte_length as u64).sum();
        let bytes_out: u64 = rows.iter().map(|(segment, _)| segment.byte_length as u64).sum();
        report.windows += 1;
        report.segments_in += old.len() as u64;
        report.segments_out += rows.len() as u64;
        report.block_rows_in += rows_in;
        report.block_rows_out += rows_out;
        report.bytes_in += bytes_in;
        report.bytes_out += bytes_out;
        report.records += records_out;
        let m = &self.metrics;
        for (direction, segments, block_rows, bytes) in
            [("in", old.len() as u64, rows_in, bytes_in), ("out", rows.len() as u64, rows_out, bytes_out)]
        {
            m.compaction_segments_total.with_label_values(&[direction]).inc_by(segments);
            m.compaction_block_rows_total.with_label_values(&[direction]).inc_by(block_rows);
            m.compaction_bytes_total.with_label_values(&[direction]).inc_by(bytes);
        }
        compaction_event!(
            info,
            stage = "compact",
            "duration-ms" = started.elapsed().as_millis() as u64,
            "app-id" = %app_id,
            "window-start" = %crate::clock::format_ms(start),
            "segments-in" = old.len(),
            "segments-out" = rows.len(),
            "block-rows-in" = rows_in,
            "block-rows-out" = rows_out,
            "bytes-in" = bytes_in,
            "bytes-out" = bytes_out,
            "message-count" = records_out,
            success = true,
            "segments compacted"
        );
        Ok(())
    }

    /// Reads `old`'s blocks conversation by conversation and writes them
    /// into compaction objects, each PUT when it closes; their index rows go
    /// to `rows` (so the caller can delete what was PUT if this fails).
    /// Returns the block rows and records read.
    async fn write_objects(
        &self,
        report: &mut CompactReport,
        app_id: &str,
        start: i64,
        codec: Codec,
        old: &[SegmentRow],
        rows: &mut Vec<(SegmentRow, Vec<BlockRow>)>,
    ) -> Result<(u64, u64), FlushError> {
        let keys: HashMap<&str, &str> = old.iter().map(|row| (row.id.as_str(), row.object_key.as_str())).collect();
        let ids: Vec<String> = old.iter().map(|row| row.id.clone()).collect();
        let (mut rows_in, mut records_in) = (0u64, 0u64);
        let new_writer = || segment::Writer::new(codec, Kind::Compaction, start, OBJECT_BYTES + OBJECT_BYTES / 8);
        let mut writer = new_writer();
        let mut after = String::new();
        let mut cutter: Option<segment::Cutter> = None;
        let block_bytes = self.config.block_bytes as usize;
        let push = |writer: &mut segment::Writer, block: segment::BlockInput| {
            writer.push(&block).map_err(|e| FlushError::Encode(e.to_string()))
        };
        loop {
            let page = self.conversations_page(&ids, &after).await?;
            let Some(last) = page.last() else { break };
            after = last.conversation_id.clone();
            rows_in += page.len() as u64;
            records_in += page.iter().map(|block| block.record_count as u64).sum::<u64>();
            for run in fetch_runs(&page) {
                let (fetched, reads) = self.fetch_blocks(run, &keys).await?;
                report.reads += reads as u64;
                for (block, compressed) in run.iter().zip(fetched) {
                    if cutter.as_ref().is_some_and(|c| c.conversation_id() != block.conversation_id) {
                        if let Some(closed) = cutter.take().and_then(|mut c| c.finish()) {
                            push(&mut writer, closed)?;
                        }
                        // Objects close between conversations only: a flush block is in one of them, whole.
                        if writer.len() >= OBJECT_BYTES {
                            rows.push(
                                self.put_object(app_id, start, std::mem::replace(&mut writer, new_writer())).await?,
                            );
                        }
                    }
                    let cutter =
                        cutter.get_or_insert_with(|| segment::Cutter::new(&block.conversation_id, block_bytes));
                    let key = keys.get(block.segment_id.as_str()).copied().unwrap_or_default();
                    let records = segment::decode_block(&compressed, &block_meta(block))
                        .map_err(|e| FlushError::Unreadable(format!("{key}: {e}")))?;
                    for (i, bytes) in records.into_iter().enumerate() {
                        let seq = block.seq_start as u64 + i as u64;
                        let ts_ms = decode_record(codec, seq, &bytes)
                            .map_err(|e| FlushError::Unreadable(format!("{}: {}", block.segment_id, e.message)))?
                            .ts;
                        if let Some(closed) = cutter.push(Record { seq, ts_ms, bytes }) {
                            push(&mut writer, closed)?;
                        }
                    }
                }
            }
        }
        if let Some(closed) = cutter.and_then(|mut c| c.finish()) {
            push(&mut writer, closed)?;
        }
        if !writer.is_empty() {
            rows.push(self.put_object(app_id, start, writer).await?);
        }
        Ok((rows_in, records_in))
    }

    /// Finishes a compaction object and PUTs it; its index rows.
    async fn put_object(
        &self,
        app_id: &str,
        start: i64,
        writer: segment::Writer,
    ) -> Result<(SegmentRow, Vec<BlockRow>), FlushError> {
        let (bytes, footer) = writer.finish(app_id).map_err(|e| FlushError::Encode(e.to_string()))?;
        let segment_id = uuid::Uuid::now_v7().to_string();
        let object_key = segment_key(app_id, start, &segment_id);
        let rows = index_rows(app_id, &segment_id, &object_key, bytes.len() as u64, start, &footer);
        // One PUT, not multipart: an object is at most OBJECT_BYTES and one
        // block, and a multipart upload would copy it into parts.
        self.stores.objects.put(&object_key, bytes).await.map_err(store_error("compact-put"))?;
        release_freed_memory();
        Ok(rows)
    }

    /// Deletes the objects of a compaction that did not commit; recovery
    /// deletes one left behind once it is an hour old.
    async fn delete_uncommitted(&self, rows: &[(SegmentRow, Vec<BlockRow>)]) {
        let keys = rows.iter().map(|(segment, _)| segment.object_key.as_str());
        self.delete_objects(keys, "uncommitted compaction object not deleted; recovery deletes it").await;
    }

    /// Deletes `keys`, best effort: a failure is logged as `failed` and the
    /// rest are still deleted.
    async fn delete_objects<'a>(&self, keys: impl Iterator<Item = &'a str>, failed: &str) {
        for key in keys {
            if let Err(e) = self.stores.objects.delete(key).await {
                compaction_event!(warn, "storage.key" = %key, error = %e, "{failed}");
            }
        }
    }

    /// The next block rows of `ids` after conversation `after`, whole
    /// conversations only, in (conversation, seq) order; empty at the end.
    async fn conversations_page(&self, ids: &[String], after: &str) -> Result<Vec<BlockRow>, FlushError> {
        let metadata = &self.stores.metadata;
        let read = |through: Option<String>, limit: usize| async move {
            metadata
                .blocks_of_segments(ids, after, through.as_deref(), limit)
                .await
                .map_err(store_error("compact-plan"))
        };
        let mut page = read(None, BLOCK_PAGE).await?;
        if page.len() < BLOCK_PAGE {
            return Ok(page);
        }
        let last = page[page.len() - 1].conversation_id.clone();
        if page[0].conversation_id == last {
            // One conversation fills the page: take all of it.
            return read(Some(last), usize::MAX).await;
        }
        page.retain(|block| block.conversation_id != last);
        Ok(page)
    }

    /// The compressed bytes of `run`'s blocks, in `run`'s order. Blocks that lie
    /// end to end in one object are read with one ranged GET: a flush writes
    /// its blocks in conversation order, so a run of conversations is about
    /// one GET per segment of the window instead of one per block.
    /// Also returns the number of GETs.
    async fn fetch_blocks(
        &self,
        run: &[BlockRow],
        keys: &HashMap<&str, &str>,
    ) -> Result<(Vec<Vec<u8>>, usize), FlushError> {
        let mut order: Vec<usize> = (0..run.len()).collect();
        order.sort_unstable_by_key(|&i| (run[i].segment_id.as_str(), run[i].byte_offset));
        // (object key, start, end, the blocks in it as indexes into `run`).
        let mut stretches: Vec<(&str, i64, i64, Vec<usize>)> = Vec::new();
        for i in order {
            let block = &run[i];
            let key = keys.get(block.segment_id.as_str()).copied().unwrap_or_default();
            match stretches.last_mut() {
                Some((k, _, end, members)) if *k == key && *end == block.byte_offset => {
                    *end += block.byte_length;
                    members.push(i);
                }
                _ => stretches.push((key, block.byte_offset, block.byte_offset + block.byte_length, vec![i])),
            }
        }
        let objects = &self.stores.objects;
        let requests: Vec<_> =
            stretches.iter().map(|(key, start, end, _)| objects.get_range(key, *start as u64, *end as u64)).collect();
        let fetched: Vec<Vec<u8>> = futures::stream::iter(requests)
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await
            .map_err(store_error("compact-read"))?;
        let mut out = vec![Vec::new(); run.len()];
        for ((_, start, _, members), bytes) in stretches.iter().zip(fetched) {
            for &i in members {
                let from = (run[i].byte_offset - start) as usize;
                // A short read leaves the block short; its checksum then names the object.
                out[i] =
                    bytes.get(from..).unwrap_or_default().iter().take(run[i].byte_length as usize).copied().collect();
            }
        }
        Ok((out, stretches.len()))
    }
}

/// `page` in runs of consecutive block rows of at most [`FETCH_BYTES`]
/// compressed bytes (a larger block is a run of its own): what one
/// [`Flusher::fetch_blocks`] holds.
fn fetch_runs(page: &[BlockRow]) -> Vec<&[BlockRow]> {
    let mut runs = Vec::new();
    let (mut first, mut bytes) = (0, 0u64);
    for (i, block) in page.iter().enumerate() {
        let length = block.byte_length as u64;
        if i > first && bytes + length > FETCH_BYTES {
            runs.push(&page[first..i]);
            (first, bytes) = (i, 0);
        }
        bytes += length;
    }
    if first < page.len() {
        runs.push(&page[first..]);
    }
    runs
}

/// Hands the heap freed since the last object back to the OS. glibc keeps
/// freed memory for reuse, and the buffers of each 16 MiB object would
/// otherwise pile up, during a run and in a long-running `serve` after it
/// (load/README.md, "Compaction of one window").
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}
