//! A conversation's timeline: its messages by seq across the tail and the
//! segments, read as one sequence. A shared domain primitive: history pages,
//! idempotent replays, WebSocket catch-up and receipts all read through it,
//! so there is one "last seq" and one way to cross the tail → segment
//! boundary.
//!
//! Correctness across a concurrent flush: the tail is read first. Whatever it
//! no longer holds was trimmed, and a trim only ever follows the index commit,
//! so the blocks found afterwards cover it.
//!
//! Also here: the mapping between a segment's footer and its index rows, the
//! one place that knows both shapes (flush writes rows from footers, reads
//! turn rows back into block locations, inspect compares the two).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::envelope::{decode_record, EditedContent, Envelope, EventKind};
use crate::error::{Code, Error};
use crate::segment::{self, Codec};
use crate::store::{BlockRow, ConvKey, MessageChangeRow, Metadata, SegmentRow, Stores};
use crate::telemetry::Metrics;

/// Reads conversations for one instance; holds the decoded-block cache.
pub struct Timeline {
    stores: Stores,
    cache: BlockCache,
    metrics: Metrics,
    retention_ms: i64,
}

impl Timeline {
    pub fn new(stores: Stores, metrics: Metrics, block_cache_bytes: usize, retention_ms: i64) -> Timeline {
        let cache = BlockCache::new(block_cache_bytes, metrics.clone());
        Timeline { stores, cache, metrics, retention_ms }
    }

    /// The earliest receive time still inside the retention window at `now`.
    pub fn retention_cutoff(&self, now: i64) -> i64 {
        now - self.retention_ms
    }

    /// A conversation's last seq. When the tail lost its counter (a Redis
    /// restart without AOF, say) the conversation must not look empty until
    /// the next write re-seeds it: fall back to the highest seq durably in
    /// segments.
    pub async fn last_seq(&self, conv: &ConvKey) -> Result<u64, Error> {
        match self.stores.tail.last_seq(conv).await? {
            Some(seq) => Ok(seq),
            None => Ok(self.stores.metadata.flushed_seq(conv).await?),
        }
    }

    /// Messages with seq in `lo..=hi` (at most a few thousand), in seq order,
    /// from the tail and the segments; messages older than `cutoff_ms` are
    /// left out.
    pub async fn read(&self, conv: &ConvKey, lo: u64, hi: u64, cutoff_ms: i64) -> Result<Vec<Envelope>, Error> {
        if lo > hi || hi == 0 {
            return Ok(Vec::new());
        }
        let lo = lo.max(1);
        let tail = self.stores.tail.read(conv, lo - 1, (hi - lo + 1) as usize).await?;
        let tail: Vec<_> = tail.into_iter().filter(|e| e.seq <= hi).collect();
        let first_in_tail = tail.first().map_or(hi + 1, |e| e.seq);
        let mut out = Vec::with_capacity((hi - lo + 1) as usize);
        if first_in_tail > lo {
            self.metrics.history_requests_total.with_label_values(&["segments"]).inc();
            let upper = first_in_tail - 1;
            let blocks = self.stores.metadata.blocks_in_range(conv, lo, upper).await?;
            match self.read_blocks(&blocks, lo, upper, cutoff_ms).await {
                Ok(envelopes) => out.extend(envelopes),
                Err(e) => {
                    // Compaction may have replaced these blocks (and deleted
                    // their object) since the lookup: look the range up again.
                    let again = self.stores.metadata.blocks_in_range(conv, lo, upper).await?;
                    if again == blocks {
                        return Err(e);
                    }
                    out.extend(self.read_blocks(&again, lo, upper, cutoff_ms).await?);
                }
            }
        }
        if !tail.is_empty() {
            self.metrics.history_requests_total.with_label_values(&["tail"]).inc();
        }
        for entry in &tail {
            out.push(Envelope::from_entry(entry)?);
        }
        out.retain(|e| e.ts >= cutoff_ms);
        Ok(out)
    }

    /// The messages with seq in `lo..=upper` of these blocks, skipping blocks
    /// wholly older than `cutoff_ms`.
    async fn read_blocks(
        &self,
        blocks: &[(BlockRow, String)],
        lo: u64,
        upper: u64,
        cutoff_ms: i64,
    ) -> Result<Vec<Envelope>, Error> {
        let mut out = Vec::new();
        for (block, object_key) in blocks.iter().filter(|(block, _)| block.ts_end >= cutoff_ms) {
            let envelopes = self.read_block(block, object_key).await?;
            out.extend(envelopes.iter().filter(|e| e.seq >= lo && e.seq <= upper).cloned());
        }
        Ok(out)
    }

    /// The message stored at `seq` whatever its age, if still stored.
    pub async fn message(&self, conv: &ConvKey, seq: u64) -> Result<Option<Envelope>, Error> {
        let found = self.read(conv, seq, seq, i64::MIN).await?;
        Ok(found.into_iter().next().filter(|envelope| envelope.seq == seq))
    }

    /// Applies the recorded edits and deletes to messages read from the log:
    /// [`apply_changes`].
    pub async fn apply_changes(&self, conv: &ConvKey, messages: &mut [Envelope]) -> Result<(), Error> {
        apply_changes(&self.stores.metadata, conv, messages).await
    }

    /// The first seq at or after `from` that may hold a message received at
    /// or after `ts`: the start of the first block reaching `ts`, or, when no
    /// block does, the first seq after the segments (the tail).
    pub async fn first_seq_at_or_after(&self, conv: &ConvKey, ts: i64, from: u64) -> Result<u64, Error> {
        let metadata = &self.stores.metadata;
        let start = match metadata.first_block_since(conv, ts).await? {
            Some(block) => block.seq_start as u64,
            None => metadata.flushed_seq(conv).await? + 1,
        };
        Ok(start.max(from))
    }

    /// One past the last seq of the last block that holds a message received
    /// at or before `ts`, if any block was received after it.
    pub async fn seq_bound_before(&self, conv: &ConvKey, ts: i64) -> Result<Option<u64>, Error> {
        let metadata = &self.stores.metadata;
        let block = metadata.first_block_since(conv, ts.saturating_add(1)).await?;
        Ok(block.map(|block| block.seq_end as u64 + 1))
    }

    async fn read_block(&self, block: &BlockRow, object_key: &str) -> Result<Arc<Vec<Envelope>>, Error> {
        let key = (block.segment_id.clone(), block.byte_offset);
        if let Some(found) = self.cache.get(&key) {
            return Ok(found);
        }
        let objects = &self.stores.objects;
        let codec = match self.cache.codec(&block.segment_id) {
            Some(codec) => codec,
            None => {
                let header = objects.get_range(object_key, 0, segment::HEADER_LEN as u64).await?;
                let codec = segment::decode_header(&header).map_err(corrupt)?.codec;
                self.cache.set_codec(&block.segment_id, codec);
                codec
            }
        };
        let start = block.byte_offset as u64;
        let bytes = objects.get_range(object_key, start, start + block.byte_length as u64).await?;
        let meta = block_meta(block);
        let records = segment::decode_block(&bytes, &meta).map_err(corrupt)?;
        let envelopes = records
            .iter()
            .enumerate()
            .map(|(i, record)| decode_record(codec, meta.seq_start + i as u64, record))
            .collect::<Result<Vec<_>, _>>()?;
        let block = Arc::new(envelopes);
        self.cache.put(key, block.clone(), meta.raw_bytes as usize);
        Ok(block)
    }
}

/// Applies the recorded edits and deletes (`crate::edits`) to messages
/// read from the log (history, catch-up, replays, inspection), in one
/// metadata query: an edited message gets the
/// newest content and `edited_at`; a deleted one, and every edit event
/// of it, loses its content; an edit event shows its target's current
/// content, never an older version.
pub async fn apply_changes(metadata: &Metadata, conv: &ConvKey, messages: &mut [Envelope]) -> Result<(), Error> {
    let target = |m: &Envelope| match m.kind {
        None => Some(m.seq),
        Some(EventKind::Edit) => m.target_seq,
        Some(EventKind::Delete) => None,
    };
    let mut seqs: Vec<u64> = messages.iter().filter_map(target).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let changes: HashMap<u64, MessageChangeRow> =
        metadata.message_changes(conv, &seqs).await?.into_iter().map(|row| (row.seq as u64, row)).collect();
    if changes.is_empty() {
        return Ok(());
    }
    for message in messages.iter_mut() {
        let Some(change) = target(message).and_then(|seq| changes.get(&seq)) else { continue };
        if change.deleted_at.is_some() {
            message.redact();
            continue;
        }
        let (Some(edit_seq), Some(content)) = (change.edit_seq, &change.content) else { continue };
        // A message, or an edit event older than the newest edit, takes the newest content.
        if message.kind.is_none() || (edit_seq as u64) > message.seq {
            let content: EditedContent = serde_json::from_str(content).map_err(|e| {
                tracing::error!(component = "messages", error = %e, "undecodable edited content");
                Error::new(Code::Internal, "internal error")
            })?;
            content.apply_to(message);
        }
        message.edited_at = change.edited_at;
    }
    Ok(())
}

/// The index rows that describe a segment, from its footer.
pub fn index_rows(
    app_id: &str,
    segment_id: &str,
    object_key: &str,
    byte_length: u64,
    created_at: i64,
    footer: &segment::Footer,
) -> (SegmentRow, Vec<BlockRow>) {
    let blocks: Vec<BlockRow> = footer
        .blocks
        .iter()
        .map(|b| BlockRow {
            app_id: app_id.to_string(),
            conversation_id: b.conversation_id.clone(),
            seq_start: b.seq_start as i64,
            seq_end: b.seq_end as i64,
            ts_start: b.ts_start,
            ts_end: b.ts_end,
            segment_id: segment_id.to_string(),
            byte_offset: b.offset as i64,
            byte_length: b.length as i64,
            raw_length: b.raw_bytes as i64,
            record_count: i64::from(b.record_count),
            checksum: i64::from(b.checksum),
        })
        .collect();
    let segment = SegmentRow {
        id: segment_id.to_string(),
        app_id: app_id.to_string(),
        object_key: object_key.to_string(),
        format_version: i32::from(segment::FORMAT_VERSION),
        byte_length: byte_length as i64,
        record_count: blocks.iter().map(|b| b.record_count).sum(),
        min_ts: blocks.iter().map(|b| b.ts_start).min().unwrap_or(created_at),
        max_ts: blocks.iter().map(|b| b.ts_end).max().unwrap_or(created_at),
        created_at,
    };
    (segment, blocks)
}

/// What the footer said about a block, back from its index row (the inverse
/// of [`index_rows`]): what a reader needs to fetch and check one block.
pub fn block_meta(row: &BlockRow) -> segment::BlockMeta {
    segment::BlockMeta {
        conversation_id: row.conversation_id.clone(),
        seq_start: row.seq_start as u64,
        seq_end: row.seq_end as u64,
        ts_start: row.ts_start,
        ts_end: row.ts_end,
        record_count: row.record_count as u32,
        offset: row.byte_offset as u64,
        length: row.byte_length as u64,
        raw_bytes: row.raw_length as u64,
        checksum: row.checksum as u32,
    }
}

fn corrupt(err: segment::SegmentError) -> Error {
    tracing::error!(component = "history", error = %err, "unreadable segment block");
    Error::new(Code::CorruptSegment, "a stored segment could not be read")
}

/// The decoded blocks most recently read, capped in bytes; shared by every
/// reader of an instance.
struct BlockCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
    metrics: Metrics,
}

/// (segment id, byte offset): one block.
type BlockKey = (String, i64);

#[derive(Default)]
struct CacheInner {
    /// Decoded blocks and their raw size.
    blocks: HashMap<BlockKey, (Arc<Vec<Envelope>>, usize)>,
    /// Insertion order, for eviction.
    order: VecDeque<BlockKey>,
    bytes: usize,
    /// Segment id → its record codec (from the header).
    codecs: HashMap<String, Codec>,
}

impl BlockCache {
    fn new(capacity: usize, metrics: Metrics) -> BlockCache {
        BlockCache { capacity, inner: Mutex::default(), metrics }
    }

    fn get(&self, key: &BlockKey) -> Option<Arc<Vec<Envelope>>> {
        let found = self.inner.lock().expect("block cache lock").blocks.get(key).map(|(b, _)| b.clone());
        match &found {
            Some(_) => self.metrics.block_cache_hits_total.inc(),
            None => self.metrics.block_cache_misses_total.inc(),
        }
        found
    }

    fn put(&self, key: BlockKey, block: Arc<Vec<Envelope>>, size: usize) {
        if size > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().expect("block cache lock");
        if inner.blocks.insert(key.clone(), (block, size)).is_none() {
            inner.order.push_back(key);
            inner.bytes += size;
        }
        while inner.bytes > self.capacity {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some((_, freed)) = inner.blocks.remove(&oldest) {
                inner.bytes -= freed;
            }
        }
        self.metrics.block_cache_bytes.set(inner.bytes as i64);
    }

    fn codec(&self, segment_id: &str) -> Option<Codec> {
        self.inner.lock().expect("block cache lock").codecs.get(segment_id).copied()
    }

    fn set_codec(&self, segment_id: &str, codec: Codec) {
        let mut inner = self.inner.lock().expect("block cache lock");
        if inner.codecs.len() > 100_000 {
            inner.codecs.clear();
        }
        inner.codecs.insert(segment_id.to_string(), codec);
    }
}
