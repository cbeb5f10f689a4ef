//! Repairing the index from the objects: [`Flusher::recover`] (orphans of a
//! crash between PUT and commit, run by the flush worker at start and every
//! ten minutes) and [`Flusher::reindex`] (metadata lost, objects kept; run by
//! `msgd flush --reindex`).

use super::index::segment_id_of;
use super::{store_error, FlushError, Flusher, RepairReport};
use crate::segment;
use crate::store::{BlockRow, FlushAdvance, SegmentRow, StoreError};
use crate::timeline::index_rows;

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
    pub async fn recover(&self, expired_before: i64) -> Result<RepairReport, FlushError> {
        let mut report = RepairReport::default();
        for key in self.stores.objects.list("segments/").await.map_err(store_error("recover-list"))? {
            report.objects += 1;
            if self.is_indexed(&key).await? {
                report.already_indexed += 1;
            } else if self.index_orphan(&key, expired_before).await? {
                report.indexed += 1;
                recovery_event!(info, "storage.key" = %key, "orphan segment indexed from its footer");
            } else if self.is_indexed(&key).await? {
                // Its own flusher committed it meanwhile: not an orphan after all.
                report.already_indexed += 1;
            } else {
                self.stores.objects.delete(&key).await.map_err(store_error("recover-delete"))?;
                report.deleted += 1;
                recovery_event!(
                    info,
                    "storage.key" = %key,
                    "orphan segment deleted (its ranges are indexed elsewhere or still in the tail)"
                );
            }
        }
        Ok(report)
    }

    async fn is_indexed(&self, key: &str) -> Result<bool, FlushError> {
        Ok(self.stores.metadata.segment_by_key(key).await.map_err(store_error("recover-index"))?.is_some())
    }

    /// Indexes an orphan from its footer; false when it must not be (unreadable,
    /// past retention, or its ranges do not continue where the index stops).
    async fn index_orphan(&self, key: &str, expired_before: i64) -> Result<bool, FlushError> {
        let (segment_row, block_rows) = match self.read_segment(key).await {
            Ok(rows) => rows,
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
    pub async fn reindex(&self) -> Result<RepairReport, FlushError> {
        let mut report = RepairReport::default();
        for key in self.stores.objects.list("segments/").await.map_err(store_error("reindex-list"))? {
            report.objects += 1;
            let (segment_row, block_rows) = self.read_segment(&key).await?;
            let metadata = &self.stores.metadata;
            if metadata.reindex_segment(&segment_row, &block_rows).await.map_err(store_error("reindex-write"))? {
                report.indexed += 1;
            } else {
                report.already_indexed += 1;
            }
        }
        Ok(report)
    }

    /// The index rows of the segment object at `key`, from its footer.
    async fn read_segment(&self, key: &str) -> Result<(SegmentRow, Vec<BlockRow>), FlushError> {
        let unreadable = |e: &dyn std::fmt::Display| FlushError::Unreadable(e.to_string());
        let bytes = self.stores.objects.get(key).await.map_err(|e| unreadable(&e))?;
        let parsed = segment::Segment::parse(&bytes).map_err(|e| unreadable(&e))?;
        let segment_id =
            segment_id_of(key).ok_or_else(|| FlushError::Unreadable(format!("{key} is not named <segment-id>.seg")))?;
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
