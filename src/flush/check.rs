//! The consistency check of every conversation's history
//! ([`Flusher::check`]: `msgd flush --check`, and the flush worker every
//! `flush.check_interval`): its flushed seq, its index ranges, its unflushed tail and its seq
//! counter must agree. What can be repaired is (a lost index is rebuilt from
//! the objects' footers when it has a gap or stops short, a lost or lagging
//! counter is seeded above every seq
//! known); a seq range found in neither the tail nor the segments cannot be,
//! and is reported loudly: an `error` log line per range, the
//! `msgd_recovery_lost_seqs` gauge, and the `MsgdHistoryLost` alert — until
//! an operator accepts the loss (`--accept-loss`: recorded in the metadata,
//! and no longer reported).
//!
//! Per conversation, with `F` its flushed seq:
//! - the index's block ranges continue one another up to `F` (retention
//!   removes the oldest first, so a gap before a range that is not itself
//!   past retention is lost history);
//! - the tail after `F` starts at `F + 1` and has no gap (the flush refuses
//!   such a conversation, so it would wait forever);
//! - the counter is at least the highest seq held anywhere, and no higher:
//!   seqs above every held one were acknowledged and then lost.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{store_error, FlushError, Flusher};
use crate::store::{ConvKey, TAIL_SHARDS};

/// Conversations read from the metadata per page.
const PAGE: usize = 500;

/// Where a lost range was missing from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostIn {
    /// Between two indexed ranges, or past the last one up to the flushed
    /// seq after a reindex did not restore it: in no segment.
    Segments,
    /// After the flushed seq: assigned (acknowledged) but not in the tail.
    Tail,
}

/// Seqs `from..=to` of a conversation, in neither the tail nor the segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostRange {
    pub app_id: String,
    pub conversation_id: String,
    pub from: u64,
    pub to: u64,
    pub lost_in: LostIn,
}

/// What a check found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub dry_run: bool,
    pub conversations: u64,
    /// Conversations whose index has a gap or stops short of their flushed
    /// seq (what a reindex does not restore is then reported lost).
    pub index_incomplete: u64,
    /// Whether the index was rebuilt from the objects' footers.
    pub reindexed: bool,
    /// Counters that were missing or below a held seq (seeded unless dry).
    pub counters_behind: u64,
    /// Conversations a concurrent flush moved during two reads: checked next time.
    pub busy: u64,
    /// Lost ranges not accepted yet.
    pub lost: Vec<LostRange>,
    /// Lost ranges found again that an operator had accepted.
    pub accepted: u64,
}

impl CheckReport {
    /// Seqs in neither the tail nor the segments.
    pub fn lost_seqs(&self) -> u64 {
        self.lost.iter().map(|range| range.to - range.from + 1).sum()
    }

    /// Logs each lost range, loudly.
    fn logged(self) -> CheckReport {
        for range in &self.lost {
            tracing::error!(
                component = "recovery",
                worker = "recovery",
                "app-id" = %range.app_id,
                "conversation-id" = %range.conversation_id,
                from = range.from,
                to = range.to,
                "lost-in" = ?range.lost_in,
                "acknowledged messages lost: in neither the tail nor the segments"
            );
        }
        self
    }
}

/// One conversation's state, read consistently (the flushed seq did not move meanwhile).
struct Reading {
    flushed: u64,
    /// Indexed ranges as (first seq, last seq, first message's receive time), ascending.
    ranges: Vec<(u64, u64, i64)>,
    /// Unflushed tail seqs, ascending.
    tail: Vec<u64>,
    counter: Option<u64>,
}

impl Flusher {
    /// Checks every conversation with history or a tail; repairs unless
    /// `dry_run`. Messages received before `expired_before` (the retention
    /// cutoff) may be gone. Safe beside running flushes, compactions and retention.
    pub async fn check(&self, expired_before: i64, dry_run: bool) -> Result<CheckReport, FlushError> {
        let mut report = self.find(expired_before, dry_run).await?;
        let mut lost = Vec::with_capacity(report.lost.len());
        let mut accepted: Option<(ConvKey, Vec<(u64, u64)>)> = None;
        for range in std::mem::take(&mut report.lost) {
            let conv = ConvKey::new(&range.app_id, &range.conversation_id);
            if accepted.as_ref().is_none_or(|(of, _)| *of != conv) {
                let ranges = self.stores.metadata.accepted_losses(&conv).await.map_err(store_error("check-read"))?;
                accepted = Some((conv, ranges));
            }
            let ranges = accepted.as_ref().map_or(&[][..], |(_, ranges)| ranges.as_slice());
            if covered(ranges, range.from, range.to) {
                report.accepted += 1;
            } else {
                lost.push(range);
            }
        }
        report.lost = lost;
        self.metrics.recovery_lost_seqs.set(report.lost_seqs() as i64);
        Ok(report.logged())
    }

    /// Accepts lost ranges (an operator's decision, after `check`): later
    /// checks count them as `accepted` instead of lost.
    pub async fn accept_losses(&self, lost: &[LostRange], now: i64) -> Result<(), FlushError> {
        let ranges: Vec<_> = lost.iter().map(|r| (ConvKey::new(&r.app_id, &r.conversation_id), r.from, r.to)).collect();
        self.stores.metadata.accept_losses(&ranges, now).await.map_err(store_error("check-repair"))
    }

    /// Finds what is lost (accepted or not) and repairs unless `dry_run`.
    async fn find(&self, expired_before: i64, dry_run: bool) -> Result<CheckReport, FlushError> {
        let mut report = CheckReport { dry_run, ..CheckReport::default() };
        let conversations = self.conversations().await?;
        let mut incomplete = Vec::new();
        for conv in &conversations {
            report.conversations += 1;
            let Some(reading) = self.read_consistently(conv).await? else {
                report.busy += 1;
                continue;
            };
            self.examine_tail(conv, &reading, &mut report, dry_run).await?;
            let gaps = index_gaps(&reading, expired_before);
            if gaps.is_empty() {
                continue;
            }
            // Gaps all accepted are not worth a reindex (it reads every object) each
            // time: they are reported as found, and `check` counts them accepted.
            let accepted = self.stores.metadata.accepted_losses(conv).await.map_err(store_error("check-read"))?;
            if gaps.iter().all(|&(from, to)| covered(&accepted, from, to)) {
                gaps.into_iter().for_each(|(from, to)| lose(&mut report, conv, from, to, LostIn::Segments));
            } else {
                incomplete.push(conv);
            }
        }
        report.index_incomplete = incomplete.len() as u64;
        if incomplete.is_empty() || dry_run {
            // A dry run only counts: a reindex might restore what is missing.
            return Ok(report);
        }
        self.reindex().await?;
        report.reindexed = true;
        self.metrics.recovery_repairs_total.with_label_values(&["reindexed"]).inc();
        // What the index still lacks after a reindex is in no object either.
        for conv in incomplete {
            let Some(reading) = self.read_consistently(conv).await? else { continue };
            for (from, to) in index_gaps(&reading, expired_before) {
                lose(&mut report, conv, from, to, LostIn::Segments);
            }
        }
        Ok(report)
    }

    /// Every conversation with a flushed seq or a dirty tail, once each.
    async fn conversations(&self) -> Result<BTreeSet<ConvKey>, FlushError> {
        let mut all = BTreeSet::new();
        let mut after: Option<ConvKey> = None;
        loop {
            let page = self
                .stores
                .metadata
                .flushed_conversations(None, after.as_ref(), PAGE)
                .await
                .map_err(store_error("check-read"))?;
            let done = page.len() < PAGE;
            after = page.last().map(|(conv, _)| conv.clone());
            all.extend(page.into_iter().map(|(conv, _)| conv));
            if done {
                break;
            }
        }
        for shard in 0..TAIL_SHARDS {
            let dirty = self.stores.tail.dirty(shard).await.map_err(store_error("check-read"))?;
            all.extend(dirty.into_iter().map(|mark| mark.conv));
        }
        Ok(all)
    }

    /// The conversation's state, or `None` when a flush moved it between
    /// the reads twice in a row. The counter is read before the tail, so a
    /// message appended meanwhile lands above it, never as a seq it claims.
    async fn read_consistently(&self, conv: &ConvKey) -> Result<Option<Reading>, FlushError> {
        let read = store_error("check-read");
        for _ in 0..2 {
            let flushed = self.stores.metadata.flushed_seq(conv).await.map_err(&read)?;
            let blocks = self.stores.metadata.blocks_of_conversation(conv).await.map_err(&read)?;
            let counter = self.stores.tail.last_seq(conv).await.map_err(&read)?;
            let tail: Vec<u64> =
                self.tail_after(conv, flushed, "check-read").await?.iter().map(|entry| entry.seq).collect();
            if self.stores.metadata.flushed_seq(conv).await.map_err(&read)? != flushed {
                continue;
            }
            let mut ranges: Vec<(u64, u64, i64)> =
                blocks.iter().map(|b| (b.seq_start as u64, b.seq_end as u64, b.ts_start)).collect();
            ranges.sort_unstable();
            return Ok(Some(Reading { flushed, ranges, tail, counter }));
        }
        Ok(None)
    }

    /// Records the tail's gaps and the counter's state; seeds a lagging
    /// counter unless dry.
    async fn examine_tail(
        &self,
        conv: &ConvKey,
        reading: &Reading,
        report: &mut CheckReport,
        dry_run: bool,
    ) -> Result<(), FlushError> {
        let Reading { flushed, tail, counter, .. } = reading;
        let mut expected = flushed + 1;
        for &seq in tail {
            if seq > expected {
                lose(report, conv, expected, seq - 1, LostIn::Tail);
            }
            expected = seq + 1;
        }
        let held = tail.last().copied().unwrap_or(*flushed);
        match *counter {
            Some(counter) if counter > held => lose(report, conv, held + 1, counter, LostIn::Tail),
            Some(counter) if counter == held => {}
            _ if held == 0 => {}
            // Behind what the tail held: an append after the counter was read,
            // unless the counter still is (the tail's server lost it). Seeding
            // it keeps the next message from reusing a seq.
            _ if self.stores.tail.last_seq(conv).await.map_err(store_error("check-read"))? >= Some(held) => {}
            _ => {
                report.counters_behind += 1;
                if !dry_run {
                    self.stores.tail.seed_seq(conv, held).await.map_err(store_error("check-repair"))?;
                    self.metrics.recovery_repairs_total.with_label_values(&["counter_seeded"]).inc();
                    let id = &conv.conversation_id;
                    tracing::warn!(component = "recovery", worker = "recovery", "conversation-id" = %id,
                        seq = held, "seq counter missing or behind: seeded");
                }
            }
        }
        Ok(())
    }
}

/// The seq ranges up to the flushed seq that no indexed range holds, except
/// those past retention: before a range that begins past the cutoff (seqs
/// follow receive order, so the gap held only messages past it too), and
/// everything when no range is left (all of it expired).
fn index_gaps(reading: &Reading, expired_before: i64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    for pair in reading.ranges.windows(2) {
        let ((_, end, _), (start, _, received)) = (pair[0], pair[1]);
        if start > end + 1 && received >= expired_before {
            gaps.push((end + 1, start - 1));
        }
    }
    if let Some(&(_, last, _)) = reading.ranges.last() {
        if last < reading.flushed {
            gaps.push((last + 1, reading.flushed));
        }
    }
    gaps
}

/// Whether one of the accepted `ranges` holds `from..=to`.
fn covered(ranges: &[(u64, u64)], from: u64, to: u64) -> bool {
    ranges.iter().any(|&(start, end)| start <= from && to <= end)
}

fn lose(report: &mut CheckReport, conv: &ConvKey, from: u64, to: u64, lost_in: LostIn) {
    report.lost.push(LostRange {
        app_id: conv.app_id.clone(),
        conversation_id: conv.conversation_id.clone(),
        from,
        to,
        lost_in,
    });
}
