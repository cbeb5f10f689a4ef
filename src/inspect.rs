//! What `msgd inspect-segment` reports about one segment object: its header,
//! its blocks with their checksums verified, its records, and whether the
//! metadata index agrees with its footer.

use serde::Serialize;

use crate::flush::index_rows;
use crate::messages::{decode_record, Envelope};
use crate::segment::{Header, Segment, SegmentError};
use crate::store::Metadata;

#[derive(Debug, Clone, Serialize)]
pub struct BlockReport {
    pub conversation_id: String,
    pub seq_start: u64,
    pub seq_end: u64,
    pub ts_start: i64,
    pub ts_end: i64,
    pub record_count: u32,
    pub compressed_bytes: u64,
    pub raw_bytes: u64,
    pub ratio: f64,
    pub checksum_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub object: String,
    pub bytes: u64,
    pub app_id: String,
    pub header: Header,
    pub blocks: Vec<BlockReport>,
}

/// Parses a segment and checks every block (decompressing each).
pub fn inspect(object: &str, bytes: &[u8], conversation: Option<&str>) -> Result<Inspection, SegmentError> {
    let segment = Segment::parse(bytes)?;
    let blocks = segment
        .footer
        .blocks
        .iter()
        .filter(|b| conversation.is_none_or(|c| c == b.conversation_id))
        .map(|meta| {
            let checked = segment.block(meta);
            BlockReport {
                conversation_id: meta.conversation_id.clone(),
                seq_start: meta.seq_start,
                seq_end: meta.seq_end,
                ts_start: meta.ts_start,
                ts_end: meta.ts_end,
                record_count: meta.record_count,
                compressed_bytes: meta.length,
                raw_bytes: meta.raw_bytes,
                ratio: if meta.length == 0 { 0.0 } else { meta.raw_bytes as f64 / meta.length as f64 },
                checksum_ok: checked.is_ok(),
                error: checked.err().map(|e| e.to_string()),
            }
        })
        .collect();
    Ok(Inspection {
        object: object.to_string(),
        bytes: bytes.len() as u64,
        app_id: segment.footer.app_id.clone(),
        header: segment.header,
        blocks,
    })
}

/// The envelopes of a segment (optionally one conversation's), in block order.
pub fn records(bytes: &[u8], conversation: Option<&str>) -> Result<Vec<Envelope>, String> {
    let segment = Segment::parse(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for meta in segment.footer.blocks.iter().filter(|b| conversation.is_none_or(|c| c == b.conversation_id)) {
        for (i, record) in segment.block(meta).map_err(|e| e.to_string())?.iter().enumerate() {
            let envelope =
                decode_record(segment.header.codec, meta.seq_start + i as u64, record).map_err(|e| e.to_string())?;
            out.push(envelope);
        }
    }
    Ok(out)
}

/// Differences between the index rows of `object_key` and its footer; empty
/// when they agree. An object with no index rows is reported as such.
pub async fn compare_index(meta: &dyn Metadata, object_key: &str, bytes: &[u8]) -> Result<Vec<String>, String> {
    let segment = Segment::parse(bytes).map_err(|e| e.to_string())?;
    let Some(row) = meta.segment_by_key(object_key).await.map_err(|e| e.to_string())? else {
        return Ok(vec![format!("{object_key} has no index rows (an orphan until recovery runs)")]);
    };
    let indexed = meta.blocks_of_segment(&row.id).await.map_err(|e| e.to_string())?;
    let (expected_segment, expected_blocks) = index_rows(
        &segment.footer.app_id,
        &row.id,
        object_key,
        bytes.len() as u64,
        segment.header.created_at_ms,
        &segment.footer,
    );
    let mut problems = Vec::new();
    if row != expected_segment {
        problems.push(format!("segment row differs: index {row:?}, footer {expected_segment:?}"));
    }
    if indexed.len() != expected_blocks.len() {
        problems.push(format!(
            "{} block rows in the index, {} blocks in the footer",
            indexed.len(),
            expected_blocks.len()
        ));
    }
    for expected in &expected_blocks {
        match indexed
            .iter()
            .find(|b| b.conversation_id == expected.conversation_id && b.seq_start == expected.seq_start)
        {
            Some(found) if found == expected => {}
            Some(found) => problems.push(format!("block row differs: index {found:?}, footer {expected:?}")),
            None => problems
                .push(format!("block of {} from seq {} is not indexed", expected.conversation_id, expected.seq_start)),
        }
    }
    Ok(problems)
}
