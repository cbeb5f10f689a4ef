//! Segment objects ↔ index rows: where a segment object is stored, the rows
//! that describe it (from its footer), and the way back from a block row to
//! the block's footer entry. Pure functions, no IO.

use crate::segment;
use crate::store::{BlockRow, SegmentRow};

/// `segments/<app>/<yyyy>/<mm>/<dd>/<hh>/<segment-id>.seg`, dated by `created_at_ms` (UTC).
pub fn segment_key(app_id: &str, created_at_ms: i64, segment_id: &str) -> String {
    let stamp = crate::clock::format_ms(created_at_ms); // 2026-11-27T08:05:17.123Z
    let (date, time) = stamp.split_once('T').unwrap_or((&stamp, "00"));
    let mut parts = date.split('-');
    let (year, month, day) =
        (parts.next().unwrap_or("1970"), parts.next().unwrap_or("01"), parts.next().unwrap_or("01"));
    format!("segments/{app_id}/{year}/{month}/{day}/{}/{segment_id}.seg", &time[..2])
}

/// The segment id a [`segment_key`] ends with.
pub(super) fn segment_id_of(key: &str) -> Option<String> {
    key.rsplit('/').next()?.strip_suffix(".seg").map(str::to_string)
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
