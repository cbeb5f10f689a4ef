//! The segment format (ARCHITECTURE.md, "Segments and the flush"): pure bytes in, records out. No IO, no
//! tokio, no knowledge of what a record means — the flush hands in encoded
//! records, readers get them back.
//!
//! Layout of one segment object (all integers little-endian):
//!
//! ```text
//! header   16 B   magic "MSGS", format version u16, codec u8, kind u8, created_at_ms i64
//! blocks          one per conversation: a zstd frame of records, each `u32 length ‖ bytes`
//! footer          app id (u16 len ‖ utf-8), block count u32, then per block:
//!                 conversation (u16 len ‖ utf-8), seq_start u64, seq_end u64, ts_start i64,
//!                 ts_end i64, record_count u32, offset u64, length u64, raw_bytes u64, crc32 u32
//! trailer  24 B   footer offset u64, footer length u32, crc32 of header ‖ footer u32,
//!                 version u16, reserved u16, magic "MSGE"
//! ```
//!
//! A block holds a gap-free seq range: record `i` has seq `seq_start + i`.
//! The kind says who wrote the segment: 0 a flush (created_at is when), 1 a
//! compaction (created_at is the start of the window it compacts). Writers
//! keep blocks to at most `flush.block_bytes` of raw records ([`split`]), so
//! a reader's ranged GET stays small; a conversation with more in one segment
//! has several blocks, in seq order.
//! Every part is checked (magics, lengths, CRC-32 of the footer and of each
//! compressed block, decompressed size); malformed input is an error, never a
//! panic. A change of layout bumps [`FORMAT_VERSION`].

use std::fmt;

pub const MAGIC: &[u8; 4] = b"MSGS";
pub const TRAILER_MAGIC: &[u8; 4] = b"MSGE";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 16;
pub const TRAILER_LEN: usize = 24;
/// A block never decompresses to more than this, whatever its footer claims.
pub const MAX_BLOCK_RAW_BYTES: u64 = 256 * 1024 * 1024;
/// The zstd level of a flush's blocks: fast, on the ingest side of the tail.
const FLUSH_LEVEL: i32 = 3;
/// The zstd level of a compaction's blocks: background work over larger
/// blocks, where level 5's parameters for inputs above 128 KiB pay (about
/// 6% smaller than level 3 at the seed load, still over 100 MB/s; see
/// load/README.md).
const COMPACTION_LEVEL: i32 = 5;

/// How records are encoded (recorded in the header; the flush chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Json = 0,
    Msgpack = 1,
    Raw = 2,
}

impl Codec {
    fn from_byte(byte: u8) -> Result<Codec, SegmentError> {
        match byte {
            0 => Ok(Codec::Json),
            1 => Ok(Codec::Msgpack),
            2 => Ok(Codec::Raw),
            other => Err(SegmentError::new(format!("unknown record codec {other}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Msgpack => "msgpack",
            Codec::Raw => "raw",
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Codec::Json),
            "msgpack" => Ok(Codec::Msgpack),
            "raw" => Ok(Codec::Raw),
            other => Err(format!("unknown codec `{other}` (expected json, msgpack or raw)")),
        }
    }
}

/// Who wrote a segment (the header's kind byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A flush tick: blocks from the tail; created_at is when it ran.
    Flush = 0,
    /// A compaction: the merged blocks of a window's segments; created_at is the window's start.
    Compaction = 1,
}

impl Kind {
    fn from_byte(byte: u8) -> Result<Kind, SegmentError> {
        match byte {
            0 => Ok(Kind::Flush),
            1 => Ok(Kind::Compaction),
            other => Err(SegmentError::new(format!("unknown segment kind {other}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Flush => "flush",
            Kind::Compaction => "compaction",
        }
    }
}

/// Why bytes are not a valid segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentError(String);

impl SegmentError {
    fn new(message: impl Into<String>) -> Self {
        SegmentError(message.into())
    }
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid segment: {}", self.0)
    }
}

impl std::error::Error for SegmentError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub version: u16,
    pub codec: Codec,
    pub kind: Kind,
    pub created_at_ms: i64,
}

/// One record to write: its position in the conversation and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: i64,
    pub bytes: Vec<u8>,
}

/// One conversation's records for one segment, in seq order without gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInput {
    pub conversation_id: String,
    pub records: Vec<Record>,
}

/// What the footer (and the index) says about one block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockMeta {
    pub conversation_id: String,
    pub seq_start: u64,
    pub seq_end: u64,
    pub ts_start: i64,
    pub ts_end: i64,
    pub record_count: u32,
    /// Byte offset of the compressed block within the object.
    pub offset: u64,
    /// Compressed length.
    pub length: u64,
    /// Decompressed length (the records with their length prefixes).
    pub raw_bytes: u64,
    /// CRC-32 of the compressed bytes.
    pub checksum: u32,
}

/// The parsed footer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Footer {
    pub app_id: String,
    pub blocks: Vec<BlockMeta>,
}

/// Where the footer is, read from the last [`TRAILER_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub footer_offset: u64,
    pub footer_length: u32,
    pub footer_checksum: u32,
}

pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The trailer's checksum covers the header and the footer together.
fn header_footer_crc(header: &[u8], footer: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(footer);
    hasher.finalize()
}

/// The raw size a record takes in a block (its length prefix and bytes).
pub fn raw_len(record: &[u8]) -> usize {
    4 + record.len()
}

/// Cuts one conversation's records, pushed in seq order, into blocks: a block
/// ends where the seq does not continue by one, or before a record that would
/// take it past `max_raw_bytes` of raw records (a larger record gets a block
/// of its own). The one rule for every writer, whole ([`split`]) or streaming
/// (compaction).
pub struct Cutter {
    conversation_id: String,
    max_raw_bytes: usize,
    records: Vec<Record>,
    raw_bytes: usize,
}

impl Cutter {
    pub fn new(conversation_id: &str, max_raw_bytes: usize) -> Cutter {
        Cutter { conversation_id: conversation_id.to_string(), max_raw_bytes, records: Vec::new(), raw_bytes: 0 }
    }

    pub fn conversation_id(&self) -> &str {
        &self.conversation_id
    }

    /// Adds `record`; returns the block it closed, if any.
    pub fn push(&mut self, record: Record) -> Option<BlockInput> {
        let len = raw_len(&record.bytes);
        let closed = match self.records.last() {
            Some(last) if last.seq + 1 != record.seq || self.raw_bytes + len > self.max_raw_bytes => self.finish(),
            _ => None,
        };
        self.raw_bytes += len;
        self.records.push(record);
        closed
    }

    /// The block being built, if it has records; the next starts empty.
    pub fn finish(&mut self) -> Option<BlockInput> {
        if self.records.is_empty() {
            return None;
        }
        self.raw_bytes = 0;
        Some(BlockInput { conversation_id: self.conversation_id.clone(), records: std::mem::take(&mut self.records) })
    }
}

/// One conversation's records (in seq order) as blocks, cut by [`Cutter`].
pub fn split(conversation_id: &str, records: Vec<Record>, max_raw_bytes: usize) -> Vec<BlockInput> {
    let mut cutter = Cutter::new(conversation_id, max_raw_bytes);
    let mut blocks: Vec<BlockInput> = records.into_iter().filter_map(|record| cutter.push(record)).collect();
    blocks.extend(cutter.finish());
    blocks
}

/// Encodes a segment. Blocks must be non-empty and gap-free; ts ranges are
/// taken from the records (min and max, so clock steps do not matter).
pub fn encode(
    app_id: &str,
    codec: Codec,
    kind: Kind,
    created_at_ms: i64,
    blocks: &[BlockInput],
) -> Result<(Vec<u8>, Footer), SegmentError> {
    let capacity = HEADER_LEN + blocks.iter().map(|b| b.records.len() * 64).sum::<usize>();
    let mut writer = Writer::new(codec, kind, created_at_ms, capacity);
    for block in blocks {
        writer.push(block)?;
    }
    writer.finish(app_id)
}

/// A segment built one block at a time: each block is compressed as it is
/// pushed, so the raw records need not all be held at once.
pub struct Writer {
    out: Vec<u8>,
    metas: Vec<BlockMeta>,
    level: i32,
}

impl Writer {
    pub fn new(codec: Codec, kind: Kind, created_at_ms: i64, capacity: usize) -> Writer {
        let mut out = Vec::with_capacity(capacity.max(HEADER_LEN));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(codec as u8);
        out.push(kind as u8);
        out.extend_from_slice(&created_at_ms.to_le_bytes());
        let level = match kind {
            Kind::Flush => FLUSH_LEVEL,
            Kind::Compaction => COMPACTION_LEVEL,
        };
        Writer { out, metas: Vec::new(), level }
    }

    /// Bytes written so far (header and blocks).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether no block was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Appends one block: non-empty and gap-free.
    pub fn push(&mut self, block: &BlockInput) -> Result<(), SegmentError> {
        let (first, last) = match (block.records.first(), block.records.last()) {
            (Some(first), Some(last)) => (first, last),
            _ => return Err(SegmentError::new(format!("block of {} has no records", block.conversation_id))),
        };
        if block.records.windows(2).any(|w| w[1].seq != w[0].seq + 1) {
            return Err(SegmentError::new(format!("block of {} is not a gap-free seq range", block.conversation_id)));
        }
        let mut raw = Vec::with_capacity(block.records.iter().map(|r| raw_len(&r.bytes)).sum());
        for record in &block.records {
            let len = u32::try_from(record.bytes.len()).map_err(|_| SegmentError::new("record larger than 4 GiB"))?;
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&record.bytes);
        }
        let compressed = zstd::bulk::compress(&raw, self.level).map_err(|e| SegmentError::new(format!("zstd: {e}")))?;
        self.metas.push(BlockMeta {
            conversation_id: block.conversation_id.clone(),
            seq_start: first.seq,
            seq_end: last.seq,
            ts_start: block.records.iter().map(|r| r.ts_ms).min().unwrap_or(first.ts_ms),
            ts_end: block.records.iter().map(|r| r.ts_ms).max().unwrap_or(last.ts_ms),
            record_count: u32::try_from(block.records.len()).map_err(|_| SegmentError::new("too many records"))?,
            offset: self.out.len() as u64,
            length: compressed.len() as u64,
            raw_bytes: raw.len() as u64,
            checksum: crc32(&compressed),
        });
        self.out.extend_from_slice(&compressed);
        Ok(())
    }

    /// The footer and trailer after the blocks: the whole object, and its footer.
    pub fn finish(self, app_id: &str) -> Result<(Vec<u8>, Footer), SegmentError> {
        let Writer { mut out, metas, .. } = self;
        let footer = Footer { app_id: app_id.to_string(), blocks: metas };
        let footer_offset = out.len() as u64;
        let footer_bytes = encode_footer(&footer)?;
        out.extend_from_slice(&footer_bytes);
        out.extend_from_slice(&footer_offset.to_le_bytes());
        out.extend_from_slice(&(footer_bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&header_footer_crc(&out[..HEADER_LEN], &footer_bytes).to_le_bytes());
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(TRAILER_MAGIC);
        Ok((out, footer))
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) -> Result<(), SegmentError> {
    let len = u16::try_from(text.len()).map_err(|_| SegmentError::new("identifier longer than 64 KiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn encode_footer(footer: &Footer) -> Result<Vec<u8>, SegmentError> {
    let mut out = Vec::with_capacity(16 + footer.blocks.len() * 96);
    put_str(&mut out, &footer.app_id)?;
    out.extend_from_slice(&(footer.blocks.len() as u32).to_le_bytes());
    for b in &footer.blocks {
        put_str(&mut out, &b.conversation_id)?;
        for value in [b.seq_start, b.seq_end] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for value in [b.ts_start, b.ts_end] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&b.record_count.to_le_bytes());
        for value in [b.offset, b.length, b.raw_bytes] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&b.checksum.to_le_bytes());
    }
    Ok(out)
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| SegmentError::new("truncated"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SegmentError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u16(&mut self) -> Result<u16, SegmentError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SegmentError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SegmentError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, SegmentError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, SegmentError> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| SegmentError::new("identifier is not UTF-8"))
    }
}

pub fn decode_header(bytes: &[u8]) -> Result<Header, SegmentError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(SegmentError::new("not a segment (bad magic)"));
    }
    let version = r.u16()?;
    if version != FORMAT_VERSION {
        return Err(SegmentError::new(format!("unsupported format version {version}")));
    }
    let codec = Codec::from_byte(r.array::<1>()?[0])?;
    let kind = Kind::from_byte(r.array::<1>()?[0])?;
    Ok(Header { version, codec, kind, created_at_ms: r.i64()? })
}

/// Reads the trailer from the last [`TRAILER_LEN`] bytes of an object of `object_len` bytes.
pub fn decode_trailer(bytes: &[u8], object_len: u64) -> Result<Trailer, SegmentError> {
    if bytes.len() != TRAILER_LEN {
        return Err(SegmentError::new("truncated trailer"));
    }
    let mut r = Reader { bytes, at: 0 };
    let trailer = Trailer { footer_offset: r.u64()?, footer_length: r.u32()?, footer_checksum: r.u32()? };
    let version = r.u16()?;
    if r.u16()? != 0 {
        return Err(SegmentError::new("reserved trailer bytes are set"));
    }
    if r.take(4)? != TRAILER_MAGIC {
        return Err(SegmentError::new("bad trailer magic (truncated object?)"));
    }
    if version != FORMAT_VERSION {
        return Err(SegmentError::new(format!("unsupported format version {version}")));
    }
    let footer_end = trailer.footer_offset.checked_add(u64::from(trailer.footer_length));
    if trailer.footer_offset < HEADER_LEN as u64 || footer_end != Some(object_len - TRAILER_LEN as u64) {
        return Err(SegmentError::new("the trailer points outside the object"));
    }
    Ok(trailer)
}

/// Parses the footer bytes the trailer locates, checking the CRC (over the
/// object's header and the footer) and that every block lies between them.
pub fn decode_footer(header: &[u8], bytes: &[u8], trailer: &Trailer) -> Result<Footer, SegmentError> {
    if header_footer_crc(header, bytes) != trailer.footer_checksum {
        return Err(SegmentError::new("header or footer checksum mismatch"));
    }
    let mut r = Reader { bytes, at: 0 };
    let app_id = r.string()?;
    let count = r.u32()? as usize;
    // Each block takes at least 70 bytes: refuse counts the bytes cannot hold.
    if count > bytes.len() / 70 + 1 {
        return Err(SegmentError::new("block count larger than the footer"));
    }
    let mut blocks = Vec::with_capacity(count);
    for _ in 0..count {
        let block = BlockMeta {
            conversation_id: r.string()?,
            seq_start: r.u64()?,
            seq_end: r.u64()?,
            ts_start: r.i64()?,
            ts_end: r.i64()?,
            record_count: r.u32()?,
            offset: r.u64()?,
            length: r.u64()?,
            raw_bytes: r.u64()?,
            checksum: r.u32()?,
        };
        let in_bounds = block.offset >= HEADER_LEN as u64
            && block.offset.checked_add(block.length).is_some_and(|end| end <= trailer.footer_offset);
        let consistent = block.seq_end >= block.seq_start
            && block.seq_end - block.seq_start + 1 == u64::from(block.record_count)
            && block.ts_end >= block.ts_start
            && block.raw_bytes <= MAX_BLOCK_RAW_BYTES;
        if !in_bounds || !consistent {
            return Err(SegmentError::new(format!("block of {} is inconsistent", block.conversation_id)));
        }
        blocks.push(block);
    }
    if r.at != bytes.len() {
        return Err(SegmentError::new("trailing bytes after the footer"));
    }
    Ok(Footer { app_id, blocks })
}

/// Verifies and decompresses one block fetched with a ranged read; returns
/// its records in seq order (record `i` has seq `meta.seq_start + i`).
pub fn decode_block(compressed: &[u8], meta: &BlockMeta) -> Result<Vec<Vec<u8>>, SegmentError> {
    if compressed.len() as u64 != meta.length {
        return Err(SegmentError::new("block length mismatch"));
    }
    if crc32(compressed) != meta.checksum {
        return Err(SegmentError::new(format!("block checksum mismatch ({})", meta.conversation_id)));
    }
    let raw = zstd::bulk::decompress(compressed, meta.raw_bytes.min(MAX_BLOCK_RAW_BYTES) as usize)
        .map_err(|e| SegmentError::new(format!("zstd: {e}")))?;
    if raw.len() as u64 != meta.raw_bytes {
        return Err(SegmentError::new("block size mismatch"));
    }
    let mut r = Reader { bytes: &raw, at: 0 };
    let mut records = Vec::with_capacity(meta.record_count as usize);
    while r.at < raw.len() {
        let len = r.u32()? as usize;
        records.push(r.take(len)?.to_vec());
    }
    if records.len() != meta.record_count as usize {
        return Err(SegmentError::new("record count mismatch"));
    }
    Ok(records)
}

/// A whole segment held in memory, parsed and checked.
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    pub bytes: &'a [u8],
    pub header: Header,
    pub footer: Footer,
}

impl<'a> Segment<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Segment<'a>, SegmentError> {
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            return Err(SegmentError::new("too short to be a segment"));
        }
        let header = decode_header(&bytes[..HEADER_LEN])?;
        let trailer = decode_trailer(&bytes[bytes.len() - TRAILER_LEN..], bytes.len() as u64)?;
        let start = trailer.footer_offset as usize;
        let footer =
            decode_footer(&bytes[..HEADER_LEN], &bytes[start..start + trailer.footer_length as usize], &trailer)?;
        Ok(Segment { bytes, header, footer })
    }

    /// The records of one block.
    pub fn block(&self, meta: &BlockMeta) -> Result<Vec<Vec<u8>>, SegmentError> {
        let start = meta.offset as usize;
        decode_block(&self.bytes[start..start + meta.length as usize], meta)
    }
}

/// The input of the committed golden segment `tests/data/segment-v1.seg`
/// (format version 1): decoding that file must give back exactly this, so
/// any drift of the format is caught.
pub fn golden_input() -> Vec<BlockInput> {
    let record = |conversation: &str, seq: u64, ts: i64, text: &str| {
        let id = format!("0190c0de-0000-7000-8000-{seq:012}");
        let head = format!(r#"{{"v":1,"id":"{id}","conversation_id":"{conversation}","seq":{seq},"ts":{ts},"#);
        let sender = r#"{"kind":"user","id":"alice"}"#;
        let tail = format!(r#""sender":{sender},"payload":{{"text":"{text}"}},"attachments":[]}}"#);
        Record { seq, ts_ms: ts, bytes: format!("{head}{tail}").into_bytes() }
    };
    let a = "0190c0de-0000-7000-8000-00000000000a";
    let b = "0190c0de-0000-7000-8000-00000000000b";
    vec![
        BlockInput {
            conversation_id: a.into(),
            records: vec![record(a, 1, 1_789_999_999_000, "hello"), record(a, 2, 1_789_999_999_500, "world")],
        },
        BlockInput { conversation_id: b.into(), records: vec![record(b, 7, 1_789_999_998_000, "seven")] },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_golden_segment_still_decodes_to_its_input() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/segment-v1.seg")).unwrap();
        let segment = Segment::parse(&bytes).unwrap();
        assert_eq!(
            segment.header,
            Header { version: 1, codec: Codec::Json, kind: Kind::Flush, created_at_ms: 1_790_000_000_000 }
        );
        assert_eq!(segment.footer.app_id, "app_golden");
        let input = golden_input();
        assert_eq!(segment.footer.blocks.len(), input.len());
        for (meta, block) in segment.footer.blocks.iter().zip(&input) {
            assert_eq!(meta.conversation_id, block.conversation_id);
            assert_eq!((meta.seq_start, meta.seq_end), (block.records[0].seq, block.records.last().unwrap().seq));
            let records: Vec<Vec<u8>> = block.records.iter().map(|r| r.bytes.clone()).collect();
            assert_eq!(segment.block(meta).unwrap(), records);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_blocks_round_trip(
            blocks in proptest::collection::vec(
                (
                    "[a-z0-9-]{1,40}",
                    1u64..1_000_000,
                    -1_000i64..1_000,
                    proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1..20),
                ),
                1..6,
            ),
            codec in proptest::sample::select(vec![Codec::Json, Codec::Msgpack, Codec::Raw]),
        ) {
            let input: Vec<BlockInput> = blocks
                .into_iter()
                .map(|(conversation, first, ts, payloads)| BlockInput {
                    conversation_id: conversation,
                    records: payloads
                        .into_iter()
                        .enumerate()
                        .map(|(i, bytes)| Record { seq: first + i as u64, ts_ms: ts * (i as i64 % 3), bytes })
                        .collect(),
                })
                .collect();
            let (bytes, footer) = encode("app", codec, Kind::Flush, 5, &input).unwrap();
            let segment = Segment::parse(&bytes).unwrap();
            proptest::prop_assert_eq!(&segment.footer, &footer);
            proptest::prop_assert_eq!(segment.header.codec, codec);
            for (meta, block) in footer.blocks.iter().zip(&input) {
                let records: Vec<Vec<u8>> = block.records.iter().map(|r| r.bytes.clone()).collect();
                proptest::prop_assert_eq!(segment.block(meta).unwrap(), records);
                proptest::prop_assert_eq!(meta.ts_start, block.records.iter().map(|r| r.ts_ms).min().unwrap());
            }
        }

        #[test]
        fn arbitrary_bytes_are_an_error_not_a_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
        ) {
            if let Ok(segment) = Segment::parse(&bytes) {
                for meta in &segment.footer.blocks {
                    let _ = segment.block(meta);
                }
            }
        }

        #[test]
        fn corrupted_segments_are_an_error_not_a_panic(
            cut in 0usize..400,
            flips in proptest::collection::vec((0usize..400, 1u8..=255), 0..8),
        ) {
            let (mut bytes, _) = encode("app", Codec::Json, Kind::Flush, 1, &golden_input()).unwrap();
            for (at, mask) in flips {
                let at = at % bytes.len();
                bytes[at] ^= mask;
            }
            bytes.truncate(bytes.len().saturating_sub(cut % 50));
            if let Ok(segment) = Segment::parse(&bytes) {
                for meta in &segment.footer.blocks {
                    let _ = segment.block(meta);
                }
            }
        }
    }

    fn block(conversation: &str, first_seq: u64, n: u64) -> BlockInput {
        BlockInput {
            conversation_id: conversation.into(),
            records: (0..n)
                .map(|i| Record {
                    seq: first_seq + i,
                    ts_ms: 1_000 + i as i64,
                    bytes: format!("record {i}").into_bytes(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_segment_round_trips() {
        let blocks = vec![block("c1", 1, 3), block("c2", 40, 2)];
        let (bytes, footer) = encode("app_1", Codec::Json, Kind::Flush, 99, &blocks).unwrap();
        let segment = Segment::parse(&bytes).unwrap();
        assert_eq!(
            segment.header,
            Header { version: FORMAT_VERSION, codec: Codec::Json, kind: Kind::Flush, created_at_ms: 99 }
        );
        assert_eq!(segment.footer, footer);
        assert_eq!((footer.blocks[1].seq_start, footer.blocks[1].seq_end, footer.blocks[1].ts_end), (40, 41, 1001));
        for (input, meta) in blocks.iter().zip(&footer.blocks) {
            let records = segment.block(meta).unwrap();
            assert_eq!(records, input.records.iter().map(|r| r.bytes.clone()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn split_keeps_blocks_within_the_raw_size_and_in_order() {
        let records = block("c1", 5, 40).records; // "record N": 8–9 bytes, 12–13 raw
        let blocks = split("c1", records.clone(), 64);
        assert!(blocks.iter().all(|b| b.records.iter().map(|r| raw_len(&r.bytes)).sum::<usize>() <= 64));
        assert!(blocks.iter().all(|b| b.conversation_id == "c1" && !b.records.is_empty()));
        let joined: Vec<Record> = blocks.iter().flat_map(|b| b.records.clone()).collect();
        assert_eq!(joined, records);
        assert_eq!(blocks.len(), 10, "as many records per block as fit");
        let big = Record { seq: 1, ts_ms: 0, bytes: vec![7; 100] };
        let blocks = split("c1", vec![big.clone(), Record { seq: 2, ..big }], 64);
        assert_eq!(blocks.iter().map(|b| b.records.len()).collect::<Vec<_>>(), vec![1, 1]);
        assert!(split("c1", Vec::new(), 64).is_empty());
    }

    #[test]
    fn a_block_is_cut_at_a_seq_gap_and_at_the_size_limit() {
        let record = |seq, len| Record { seq, ts_ms: 0, bytes: vec![b'x'; len] };
        let records = vec![record(1, 10), record(2, 10), record(3, 10), record(7, 10), record(8, 40)];
        let ranges: Vec<(u64, u64)> =
            split("c", records, 30).iter().map(|b| (b.records[0].seq, b.records[b.records.len() - 1].seq)).collect();
        // 14 raw bytes a record of 10: two fit in 30; 7 starts after the gap; 8 (44 bytes) alone.
        assert_eq!(ranges, vec![(1, 2), (3, 3), (7, 7), (8, 8)]);
    }

    #[test]
    fn the_kind_round_trips_and_an_unknown_kind_is_refused() {
        let (bytes, _) = encode("app_1", Codec::Msgpack, Kind::Compaction, 7, &[block("c1", 1, 2)]).unwrap();
        let header = Segment::parse(&bytes).unwrap().header;
        assert_eq!((header.codec, header.kind, header.created_at_ms), (Codec::Msgpack, Kind::Compaction, 7));
        let mut unknown = bytes[..HEADER_LEN].to_vec();
        unknown[7] = 9;
        assert!(decode_header(&unknown).unwrap_err().to_string().contains("unknown segment kind 9"));
    }

    #[test]
    fn gaps_and_empty_blocks_are_refused() {
        let mut gappy = block("c1", 1, 3);
        gappy.records[2].seq = 9;
        assert!(encode("a", Codec::Raw, Kind::Flush, 0, &[gappy]).is_err());
        assert!(encode(
            "a",
            Codec::Raw,
            Kind::Flush,
            0,
            &[BlockInput { conversation_id: "c".into(), records: vec![] }]
        )
        .is_err());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error() {
        let (bytes, _) =
            encode("app_1", Codec::Json, Kind::Flush, 99, &[block("c1", 1, 5), block("c2", 1, 1)]).unwrap();
        for len in 0..bytes.len() {
            assert!(Segment::parse(&bytes[..len]).is_err(), "truncated to {len} parsed");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            let parsed = Segment::parse(&flipped);
            let all_blocks_ok = parsed.as_ref().is_ok_and(|s| s.footer.blocks.iter().all(|m| s.block(m).is_ok()));
            assert!(!all_blocks_ok, "flipping byte {at} went unnoticed");
        }
    }
}
