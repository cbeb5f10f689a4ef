//! What `msgd inspect-segment` reports about one segment object: its header,
//! its blocks with their checksums verified, its records, and whether the
//! metadata index agrees with its footer.
//!
//! The object is read by range through a [`SegmentSource`] — header,
//! trailer, footer, then one block at a time — never whole: a multi-gigabyte
//! file that is not a segment costs one 16-byte read, and a real one costs
//! its largest block. The codec stays pure (`crate::segment`, bytes in);
//! the reading by range is here.

use std::path::Path;

use serde::Serialize;

use crate::envelope::{decode_record, Envelope};
use crate::segment::{
    decode_block, decode_footer, decode_header, decode_trailer, BlockMeta, Footer, Header, HEADER_LEN, MAGIC,
    TRAILER_LEN, TRAILER_MAGIC,
};
use crate::store::{ConvKey, Metadata, Objects};
use crate::timeline::{apply_changes, index_rows};

/// A footer larger than this is refused without being read: at ~110 bytes a
/// block it would describe over half a million conversations, far beyond what
/// one flush writes.
pub const MAX_FOOTER_BYTES: u32 = 64 * 1024 * 1024;

/// Where a segment's bytes come from, read by range.
pub enum SegmentSource<'a> {
    /// A local file, read by positioned reads.
    File { path: &'a Path, file: std::fs::File, len: u64 },
    /// An object in the configured store, read with ranged GETs.
    Object { objects: &'a Objects, key: &'a str, len: u64 },
}

impl<'a> SegmentSource<'a> {
    pub fn file(path: &'a Path) -> Result<SegmentSource<'a>, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
        Ok(SegmentSource::File { path, file, len })
    }

    pub async fn object(objects: &'a Objects, key: &'a str) -> Result<SegmentSource<'a>, String> {
        let len = objects.size(key).await.map_err(|e| e.to_string())?;
        Ok(SegmentSource::Object { objects, key, len })
    }

    /// The object's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            SegmentSource::File { len, .. } | SegmentSource::Object { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[start, end)`; the caller keeps the range inside the object.
    async fn read(&self, start: u64, end: u64) -> Result<Vec<u8>, String> {
        match self {
            SegmentSource::File { path, file, .. } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; (end - start) as usize];
                file.read_exact_at(&mut buf, start).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Ok(buf)
            }
            SegmentSource::Object { objects, key, .. } => {
                objects.get_range(key, start, end).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// A segment's header and footer, read and checked; its blocks are read later, one at a time.
#[derive(Debug, Clone)]
pub struct Opened {
    pub len: u64,
    pub header: Header,
    pub footer: Footer,
}

/// Reads and checks the header, the trailer and the footer, by range.
pub async fn open(source: &SegmentSource<'_>) -> Result<Opened, String> {
    let len = source.len();
    let head = source.read(0, len.min(HEADER_LEN as u64)).await?;
    if head.len() < MAGIC.len() || &head[..MAGIC.len()] != MAGIC {
        return Err("invalid segment: not a segment (bad magic)".into());
    }
    let minimum = (HEADER_LEN + TRAILER_LEN) as u64;
    if len < minimum {
        return Err(format!("invalid segment: truncated: {len} bytes, and a segment has at least {minimum}"));
    }
    let header = decode_header(&head).map_err(|e| e.to_string())?;
    let tail = source.read(len - TRAILER_LEN as u64, len).await?;
    if &tail[TRAILER_LEN - TRAILER_MAGIC.len()..] != TRAILER_MAGIC {
        return Err(format!(
            "invalid segment: truncated: the header is a segment's but the object ends after {len} bytes without \
             its trailer (cut short, or still being written)"
        ));
    }
    let trailer = decode_trailer(&tail, len).map_err(|e| e.to_string())?;
    if trailer.footer_length > MAX_FOOTER_BYTES {
        return Err(format!(
            "invalid segment: a footer of {} bytes is over the {MAX_FOOTER_BYTES}-byte limit",
            trailer.footer_length
        ));
    }
    let footer_bytes =
        source.read(trailer.footer_offset, trailer.footer_offset + u64::from(trailer.footer_length)).await?;
    let footer = decode_footer(&head, &footer_bytes, &trailer).map_err(|e| e.to_string())?;
    Ok(Opened { len, header, footer })
}

/// Reads one block by range and decodes it.
async fn read_block(source: &SegmentSource<'_>, meta: &BlockMeta) -> Result<Vec<Vec<u8>>, String> {
    // zstd never grows data by more than a little: a compressed length far
    // above the raw size is a lie, refused before reading it.
    if meta.length > meta.raw_bytes + meta.raw_bytes / 64 + 4096 {
        return Err(format!("invalid segment: block of {} is larger than its records can be", meta.conversation_id));
    }
    let compressed = source.read(meta.offset, meta.offset + meta.length).await?;
    decode_block(&compressed, meta).map_err(|e| e.to_string())
}

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
    /// Blocks in the whole segment (the report may show only one conversation's).
    pub block_count: usize,
    pub blocks: Vec<BlockReport>,
}

/// The blocks of `conversation` (or all), or an error naming what the segment holds instead.
fn selected<'f>(footer: &'f Footer, conversation: Option<&str>) -> Result<Vec<&'f BlockMeta>, String> {
    let blocks: Vec<&BlockMeta> =
        footer.blocks.iter().filter(|b| conversation.is_none_or(|c| c == b.conversation_id)).collect();
    match conversation {
        Some(c) if blocks.is_empty() => Err(format!(
            "no block of conversation `{c}` in this segment (it holds {} conversation(s); run without \
             --conversation to list them)",
            footer.blocks.len()
        )),
        _ => Ok(blocks),
    }
}

/// Checks every selected block (reading and decompressing each in turn).
pub async fn inspect(
    object: &str,
    source: &SegmentSource<'_>,
    opened: &Opened,
    conversation: Option<&str>,
) -> Result<Inspection, String> {
    let mut blocks = Vec::new();
    for meta in selected(&opened.footer, conversation)? {
        let checked = read_block(source, meta).await;
        blocks.push(BlockReport {
            conversation_id: meta.conversation_id.clone(),
            seq_start: meta.seq_start,
            seq_end: meta.seq_end,
            ts_start: meta.ts_start,
            ts_end: meta.ts_end,
            record_count: meta.record_count,
            compressed_bytes: meta.length,
            raw_bytes: meta.raw_bytes,
            ratio: if meta.length == 0 {
                0.0
            } else {
                (meta.raw_bytes as f64 / meta.length as f64 * 10.0).round() / 10.0
            },
            checksum_ok: checked.is_ok(),
            error: checked.err(),
        });
    }
    Ok(Inspection {
        object: object.to_string(),
        bytes: opened.len,
        app_id: opened.footer.app_id.clone(),
        header: opened.header,
        block_count: opened.footer.blocks.len(),
        blocks,
    })
}

/// Hands each envelope of a segment (optionally one conversation's) to
/// `each`, in block order, one block in memory at a time; `each` returns
/// false to stop early. With the metadata store, records are shown as reads
/// show them: edits and deletes applied, a deleted payload never printed.
pub async fn records(
    source: &SegmentSource<'_>,
    opened: &Opened,
    conversation: Option<&str>,
    changes: Option<&Metadata>,
    mut each: impl FnMut(Envelope) -> bool,
) -> Result<(), String> {
    for meta in selected(&opened.footer, conversation)? {
        let mut envelopes = Vec::with_capacity(meta.record_count as usize);
        for (i, record) in read_block(source, meta).await?.iter().enumerate() {
            let seq = meta.seq_start + i as u64;
            envelopes.push(decode_record(opened.header.codec, seq, record).map_err(|e| e.to_string())?);
        }
        if let Some(metadata) = changes {
            let conv = ConvKey::new(&opened.footer.app_id, &meta.conversation_id);
            apply_changes(metadata, &conv, &mut envelopes).await.map_err(|e| {
                format!(
                    "edits and deletes could not be read from the index ({}); no records are shown without them",
                    e.message
                )
            })?;
        }
        for envelope in envelopes {
            if !each(envelope) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Differences between the index rows of `object_key` and its footer; empty
/// when they agree. An object with no index rows is reported as such.
pub async fn compare_index(meta: &Metadata, object_key: &str, opened: &Opened) -> Result<Vec<String>, String> {
    let Some(row) = meta.segment_by_key(object_key).await.map_err(|e| e.to_string())? else {
        return Ok(vec![format!("{object_key} has no index rows (an orphan until recovery runs)")]);
    };
    let indexed = meta.blocks_of_segment(&row.id).await.map_err(|e| e.to_string())?;
    let (expected_segment, expected_blocks) =
        index_rows(&opened.footer.app_id, &row.id, object_key, opened.len, opened.header.created_at_ms, &opened.footer);
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
