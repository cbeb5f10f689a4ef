//! Compaction (ARCHITECTURE.md, "Compaction"): the segments an app's flushes
//! wrote within one `flush.compact_window` are merged into one (or, above
//! [`OBJECT_BYTES`], a few) segments of kind `compaction`, with one block per
//! conversation per window instead of one per flush — or a few, each at most
//! `flush.block_bytes` of raw records. Fewer block rows, larger zstd frames.
//!
//! Steps per window: read the window's block rows, fetch each conversation's
//! blocks (ranged GETs), re-encode them in seq order, PUT the new objects,
//! then in one metadata transaction delete the old segments' rows and insert
//! the new ones — refused, and the new objects deleted, if any old segment
//! is gone meanwhile (retention, another compactor). Only after the commit
//! are the old objects deleted; a reader that looked up an old block just
//! before looks the range up again (`Timeline::read`). A crash before the
//! commit leaves a compaction object without rows, which recovery deletes
//! once it is an hour old (never earlier: it may be a running compaction's);
//! a crash after it leaves old objects without rows, which recovery deletes
//! as orphans whose ranges are indexed elsewhere.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::{segment_key, store_error, FlushError, Flusher};
use crate::envelope::decode_record;
use crate::segment::{self, Codec, Kind, Record};
use crate::store::{BlockRow, SegmentRow, StoreError};
use crate::timeline::{block_meta, index_rows};

/// Windows one run compacts at most (the worker's next run takes the rest).
const WINDOWS_PER_RUN: usize = 16;
/// A compaction object is closed once its blocks reach this many bytes; a
/// window with more becomes several objects. It bounds the memory a run holds.
pub const OBJECT_BYTES: usize = 16 * 1024 * 1024;
/// Block reads in flight while gathering one conversation's blocks.
const READS_IN_FLIGHT: usize = 8;
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
    /// Windows whose commit was refused (a segment went away meanwhile); retried next run.
    pub conflicts: u64,
}

/// One compaction object, encoded.
struct Output {
    segment_id: String,
    object_key: String,
    bytes: Vec<u8>,
    footer: segment::Footer,
}

impl Flusher {
    /// One compaction run at `now`: up to [`WINDOWS_PER_RUN`] windows that
    /// ended before `now` and hold more than one segment, oldest first.
    pub async fn compact(&self, now: i64) -> Result<CompactReport, FlushError> {
        let mut report = CompactReport::default();
        let window_ms = self.config.compact_window.as_millis() as i64;
        if window_ms == 0 {
            return Ok(report);
        }
        let before = (now - SETTLE_MS).div_euclid(window_ms) * window_ms;
        let metadata = &self.stores.metadata;
        let windows = metadata
            .compaction_windows(window_ms, before, WINDOWS_PER_RUN)
            .await
            .map_err(store_error("compact-plan"))?;
        for (app_id, start) in windows {
            self.compact_window(&mut report, &app_id, start, start + window_ms).await?;
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
        let metadata = &self.stores.metadata;
        // Conversation → its blocks with their object keys (ordered by conversation for a stable layout).
        let mut blocks: std::collections::BTreeMap<String, Vec<(BlockRow, String)>> = Default::default();
        for row in &old {
            for block in metadata.blocks_of_segment(&row.id).await.map_err(store_error("compact-plan"))? {
                blocks.entry(block.conversation_id.clone()).or_default().push((block, row.object_key.clone()));
            }
        }
        let rows_in: u64 = blocks.values().map(|b| b.len() as u64).sum();
        let records_in: u64 = blocks.values().flatten().map(|(b, _)| b.record_count as u64).sum();

        let new_writer = || segment::Writer::new(codec, Kind::Compaction, start, OBJECT_BYTES + OBJECT_BYTES / 8);
        let mut outputs = Vec::new();
        let mut writer = new_writer();
        for (conversation_id, mut located) in blocks {
            located.sort_by_key(|(block, _)| block.seq_start);
            let records = self.gather(codec, &located).await?;
            for run in gap_free_runs(records) {
                for block in segment::split(&conversation_id, run, self.config.block_bytes as usize) {
                    writer.push(&block).map_err(|e| FlushError::Encode(e.to_string()))?;
                }
            }
            if writer.len() >= OBJECT_BYTES {
                outputs.push(close(app_id, start, std::mem::replace(&mut writer, new_writer()))?);
            }
        }
        if !writer.is_empty() {
            outputs.push(close(app_id, start, writer)?);
        }
        let records_out: u64 = outputs.iter().flat_map(|o| &o.footer.blocks).map(|b| u64::from(b.record_count)).sum();
        if records_out != records_in {
            return Err(FlushError::Encode(format!(
                "compaction of {app_id} at {start} read {records_in} records but encoded {records_out}"
            )));
        }

        let mut rows = Vec::with_capacity(outputs.len());
        for output in &outputs {
            let size = output.bytes.len() as u64;
            rows.push(index_rows(app_id, &output.segment_id, &output.object_key, size, start, &output.footer));
        }
        for output in outputs.iter_mut() {
            let bytes = std::mem::take(&mut output.bytes);
            self.stores
                .objects
                .put_object(&output.object_key, bytes, super::MULTIPART_THRESHOLD)
                .await
                .map_err(store_error("compact-put"))?;
        }
        if self.config.failpoint.as_deref() == Some("compact-after-put") {
            compaction_event!(
                warn,
                failpoint = "compact-after-put",
                "failpoint reached: stopping before the index swap"
            );
            std::future::pending::<()>().await;
        }
        let old_ids: Vec<String> = old.iter().map(|row| row.id.clone()).collect();
        match metadata.replace_segments(&old_ids, &rows).await {
            Ok(()) => {}
            Err(StoreError::Conflict(why)) => {
                report.conflicts += 1;
                compaction_event!(warn, "app-id" = %app_id, reason = %why, "compaction refused; its objects deleted");
                for output in &outputs {
                    self.stores.objects.delete(&output.object_key).await.map_err(store_error("compact-delete"))?;
                }
                return Ok(());
            }
            Err(e) => return Err(FlushError::Store { stage: "compact-swap", source: e }),
        }
        for row in &old {
            if let Err(e) = self.stores.objects.delete(&row.object_key).await {
                compaction_event!(
                    warn,
                    "storage.key" = %row.object_key,
                    error = %e,
                    "replaced segment not deleted; recovery deletes it as an orphan"
                );
            }
        }

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

    /// The records of one conversation's blocks (in seq order), each with its
    /// receive time read back from the record.
    async fn gather(&self, codec: Codec, located: &[(BlockRow, String)]) -> Result<Vec<Record>, FlushError> {
        // Collected first: a stream mapping over borrowed rows trips the
        // compiler's Send inference in the worker's future.
        let reads: Vec<_> = located.iter().map(|(block, key)| self.read_records(block, key)).collect();
        let fetched: Vec<Vec<Vec<u8>>> = futures::stream::iter(reads).buffered(READS_IN_FLIGHT).try_collect().await?;
        let mut records = Vec::with_capacity(located.iter().map(|(b, _)| b.record_count as usize).sum());
        for ((block, key), block_records) in located.iter().zip(fetched) {
            for (i, bytes) in block_records.into_iter().enumerate() {
                let seq = block.seq_start as u64 + i as u64;
                let ts_ms = decode_record(codec, seq, &bytes)
                    .map_err(|e| FlushError::Unreadable(format!("{key}: {}", e.message)))?
                    .ts;
                records.push(Record { seq, ts_ms, bytes });
            }
        }
        Ok(records)
    }
}

impl Flusher {
    /// One block's records, fetched with a ranged GET and checked.
    async fn read_records(&self, block: &BlockRow, key: &str) -> Result<Vec<Vec<u8>>, FlushError> {
        let start = block.byte_offset as u64;
        let end = start + block.byte_length as u64;
        let bytes = self.stores.objects.get_range(key, start, end).await.map_err(store_error("compact-read"))?;
        segment::decode_block(&bytes, &block_meta(block)).map_err(|e| FlushError::Unreadable(format!("{key}: {e}")))
    }
}

/// The footer and trailer of a finished compaction object, and where it goes.
fn close(app_id: &str, start: i64, writer: segment::Writer) -> Result<Output, FlushError> {
    let (bytes, footer) = writer.finish(app_id).map_err(|e| FlushError::Encode(e.to_string()))?;
    let segment_id = uuid::Uuid::now_v7().to_string();
    let object_key = segment_key(app_id, start, &segment_id);
    Ok(Output { segment_id, object_key, bytes, footer })
}

/// Records in seq order cut where the seq does not continue by one: each run
/// can be one block (the index never had a gap, but a block must not invent one).
fn gap_free_runs(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut runs: Vec<Vec<Record>> = Vec::new();
    for record in records {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|last| last.seq + 1 == record.seq) => run.push(record),
            _ => runs.push(vec![record]),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_cut_where_the_seq_jumps() {
        let record = |seq| Record { seq, ts_ms: 0, bytes: vec![] };
        let runs = gap_free_runs([1, 2, 3, 7, 8, 10].into_iter().map(record).collect());
        let seqs: Vec<Vec<u64>> = runs.iter().map(|run| run.iter().map(|r| r.seq).collect()).collect();
        assert_eq!(seqs, vec![vec![1, 2, 3], vec![7, 8], vec![10]]);
        assert!(gap_free_runs(Vec::new()).is_empty());
    }
}
