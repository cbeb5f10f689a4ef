//! Repairing the index from the objects: [`Flusher::recover`] (orphans of a
//! crash between PUT and commit, of a flush or a compaction, run by the flush
//! worker at start and every ten minutes) and [`Flusher::reindex`] (metadata
//! lost, objects kept; run by `msgd flush --reindex` and restores).

use super::index::segment_id_of;
use super::{store_error, FlushError, Flusher, RepairReport};
use crate::segment::{self, Kind};
use crate::store::{BlockRow, FlushAdvance, SegmentRow, StoreError};
use crate::timeline::index_rows;

/// How old a compaction object without rows must be before recovery deletes it.
const COMPACTION_ORPHAN_AGE_MS: i64 = 3_600_000;

/// Logs a recovery event with its `component` and `worker` fields.
macro_rules! recovery_event {
    ($level:ident, $($fields:tt)+) => {
        tracing::$level!(component = "recovery", worker = "recovery", $($fields)+)
    };
}

impl Flusher {
    /// Finds segment objects without index rows (a crash between PUT and
    /// commit) and indexes each from its footer when its ranges continue
    /// exactly where the index stops, or deletes it (the tail still holds
    /// those messages: nothing was trimmed without a commit). An orphan whose
    /// newest message is older than `expired_before` (the retention cutoff)
    /// is deleted, never indexed: retention would only delete it again.
    ///
    /// A compaction object without rows is never indexed (its messages are
    /// indexed in the segments it was to replace): it is deleted once it is
    /// [`COMPACTION_ORPHAN_AGE_MS`] old, and left alone before — it may be a
    /// running compaction's, between its PUT and its commit.
    pub async fn recover(&self, expired_before: i64) -> Result<RepairReport, FlushError> {
        let mut report = RepairReport::default();
        let listed = self.stores.objects.list_detailed("segments/").await.map_err(store_error("recover-list"))?;
        for (key, _, modified_ms) in listed {
            report.objects += 1;
            if self.is_indexed(&key).await? {
                report.already_indexed += 1;
            } else if self.kind_of(&key).await == Some(Kind::Compaction) {
                if crate::clock::now_ms() - modified_ms < COMPACTION_ORPHAN_AGE_MS || self.is_indexed(&key).await? {
                    report.pending += 1;
                } else {
                    let why = "orphan compaction segment deleted (its messages are indexed elsewhere)";
                    self.delete_orphan(&mut report, &key, why).await?;
                }
            } else if self.index_orphan(&key, expired_before).await? {
                report.indexed += 1;
                recovery_event!(info, "storage.key" = %key, "orphan segment indexed from its footer");
            } else if self.is_indexed(&key).await? {
                // Its own flusher committed it meanwhile: not an orphan after all.
                report.already_indexed += 1;
            } else {
                let why = "orphan segment deleted (its ranges are indexed elsewhere or still in the tail)";
                self.delete_orphan(&mut report, &key, why).await?;
            }
        }
        Ok(report)
    }

    async fn delete_orphan(&self, report: &mut RepairReport, key: &str, why: &str) -> Result<(), FlushError> {
        self.stores.objects.delete(key).await.map_err(store_error("recover-delete"))?;
        report.deleted += 1;
        recovery_event!(info, "storage.key" = %key, "{why}");
        Ok(())
    }

    /// The kind in an object's header; `None` when unreadable (the orphan
    /// path then reports it).
    async fn kind_of(&self, key: &str) -> Option<Kind> {
        let header = self.stores.objects.get_range(key, 0, segment::HEADER_LEN as u64).await.ok()?;
        segment::decode_header(&header).ok().map(|header| header.kind)
    }

    async fn is_indexed(&self, key: &str) -> Result<bool, FlushError> {
        Ok(self.stores.metadata.segment_by_key(key).await.map_err(store_error("recover-index"))?.is_some())
    }

    /// Indexes an orphan from its footer; false when it must not be (unreadable,
    /// past retention, or its ranges do not continue where the index stops).
    async fn index_orphan(&self, key: &str, expired_before: i64) -> Result<bool, FlushError> {
        let (_, segment_row, block_rows) = match self.read_segment(key).await {
            Ok(read) => read,
            Err(e) => {
                recovery_event!(warn, "storage.key" = %key, error = %e.detail(), "orphan segment unreadable");
                return Ok(false);
            }
        };
        if segment_row.max_ts < expired_before {
            recovery_event!(info, "storage.key" = %key, "orphan segment is past retention");
            return Ok(false);
        }
        let advances: Vec<FlushAdvance> = block_rows
            .iter()
            .map(|b| FlushAdvance {
                app_id: b.app_id.clone(),
                conversation_id: b.conversation_id.clone(),
                from: (b.seq_start as u64).saturating_sub(1),
                to: b.seq_end as u64,
            })
            .collect();
        match self.stores.metadata.commit_segment(&segment_row, &block_rows, &advances).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(FlushError::Store { stage: "recover-index", source: e }),
        }
    }

    /// Rebuilds the index from every object's footer (metadata lost, objects
    /// kept): inserts missing segment and block rows and raises flushed seqs.
    /// Compaction segments go first; then each flush segment with only its
    /// blocks whose ranges no compaction segment holds (none when compaction
    /// committed but the old object was not deleted yet), so no message is
    /// indexed twice. A compaction object whose commit never happened is
    /// indexed in place of the flush blocks it was built from: the same
    /// messages either way (compaction closes an object only between
    /// conversations, so it covers a flush block whole or not at all).
    pub async fn reindex(&self) -> Result<RepairReport, FlushError> {
        let mut report = RepairReport::default();
        let mut flushed = Vec::new();
        for key in self.stores.objects.list("segments/").await.map_err(store_error("reindex-list"))? {
            report.objects += 1;
            let (kind, segment_row, block_rows) = self.read_segment(&key).await?;
            match kind {
                Kind::Compaction => self.reindex_one(&mut report, &segment_row, &block_rows).await?,
                Kind::Flush => flushed.push((segment_row, block_rows)),
            }
        }
        for (segment_row, block_rows) in flushed {
            let block_rows = match self.is_indexed(&segment_row.object_key).await? {
                true => block_rows,
                false => self.not_indexed(block_rows).await?,
            };
            if block_rows.is_empty() {
                report.superseded += 1;
            } else {
                self.reindex_one(&mut report, &segment_row, &block_rows).await?;
            }
        }
        Ok(report)
    }

    async fn reindex_one(
        &self,
        report: &mut RepairReport,
        segment_row: &SegmentRow,
        block_rows: &[BlockRow],
    ) -> Result<(), FlushError> {
        let metadata = &self.stores.metadata;
        if metadata.reindex_segment(segment_row, block_rows).await.map_err(store_error("reindex-write"))? {
            report.indexed += 1;
        } else {
            report.already_indexed += 1;
        }
        Ok(())
    }

    /// The blocks whose ranges no indexed block holds yet.
    async fn not_indexed(&self, block_rows: Vec<BlockRow>) -> Result<Vec<BlockRow>, FlushError> {
        let mut kept = Vec::with_capacity(block_rows.len());
        for block in block_rows {
            let conv = crate::store::ConvKey::new(&block.app_id, &block.conversation_id);
            let (lo, hi) = (block.seq_start as u64, block.seq_end as u64);
            let found =
                self.stores.metadata.blocks_in_range(&conv, lo, hi).await.map_err(store_error("reindex-read"))?;
            if found.is_empty() {
                kept.push(block);
            }
        }
        Ok(kept)
    }

    /// The kind and index rows of the segment object at `key`, from its header and footer.
    async fn read_segment(&self, key: &str) -> Result<(Kind, SegmentRow, Vec<BlockRow>), FlushError> {
        let unreadable = |e: &dyn std::fmt::Display| FlushError::Unreadable(e.to_string());
        let bytes = self.stores.objects.get(key).await.map_err(|e| unreadable(&e))?;
        let parsed = segment::Segment::parse(&bytes).map_err(|e| unreadable(&e))?;
        let segment_id =
            segment_id_of(key).ok_or_else(|| FlushError::Unreadable(format!("{key} is not named <segment-id>.seg")))?;
        let (segment_row, block_rows) = index_rows(
            &parsed.footer.app_id,
            &segment_id,
            key,
            bytes.len() as u64,
            parsed.header.created_at_ms,
            &parsed.footer,
        );
        Ok((parsed.header.kind, segment_row, block_rows))
    }
}
