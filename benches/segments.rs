//! Segment benchmark (`cargo bench --bench segments`): the seed load (ARCHITECTURE.md, "The contract")
//! fast-forwarded over 24 hours through the flush policy, with the real codec.
//!
//! 1,000 users × 10 messages/min spread over 10,000 conversations, ~200-byte
//! text payloads; a flush tick every 10 s flushes an app's dirty conversations
//! once one of them passes 1 MiB or 15 minutes (the defaults). Reports objects
//! and block rows per day, segment bytes per message against the raw envelope
//! bytes and against `zstd -19` of the same envelopes concatenated, and
//! encode/decode throughput — then the same after compaction as `serve` runs
//! it (each 6-hour window's segments merged, blocks of at most 256 KiB raw,
//! objects closed at 16 MiB). Deterministic (fixed PRNG seed); no IO.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use msgd::segment::{self, BlockInput, Codec, Record};

mod support;
use support::{envelope, Rng};

const USERS: u64 = 1_000;
const MESSAGES_PER_USER_PER_MINUTE: u64 = 10;
const CONVERSATIONS: usize = 10_000;
const DAY_MS: i64 = 24 * 3600 * 1000;
const TICK_MS: i64 = 10_000;
const MAX_AGE_MS: i64 = 15 * 60 * 1000;
const MAX_BYTES: usize = 1024 * 1024;
/// The defaults of `flush.compact_window` and `flush.block_bytes`, and compaction's object size.
const COMPACT_WINDOW_MS: i64 = 6 * 3600 * 1000;
const BLOCK_BYTES: usize = 256 * 1024;
const COMPACT_OBJECT_BYTES: usize = msgd::flush::COMPACTION_OBJECT_BYTES;
struct Conversation {
    id: String,
    next_seq: u64,
    pending: Vec<Record>,
    pending_bytes: usize,
}

fn main() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut conversations: Vec<Conversation> = (0..CONVERSATIONS)
        .map(|i| Conversation {
            id: format!("0190c0de-0000-7000-8000-{i:012}"),
            next_seq: 1,
            pending: Vec::new(),
            pending_bytes: 0,
        })
        .collect();
    let per_tick = (USERS * MESSAGES_PER_USER_PER_MINUTE * TICK_MS as u64 / 60_000) as usize;

    let (mut objects, mut block_rows, mut messages) = (0u64, 0u64, 0u64);
    let (mut segment_bytes, mut raw_envelope_bytes) = (0u64, 0u64);
    let mut encode_time = Duration::ZERO;
    let mut sample_raw: Vec<u8> = Vec::new(); // the first 10 minutes' envelopes, for zstd -19
    let mut sample_messages = 0u64;
    let mut sample_segments: Vec<Vec<u8>> = Vec::new();
    let mut window: Vec<Vec<u8>> = Vec::new(); // this compaction window's segments
    let mut window_index = None;
    let mut compacted = Compacted::default();

    let mut now = 0i64;
    while now < DAY_MS {
        for i in 0..per_tick {
            let c = &mut conversations[rng.below(CONVERSATIONS as u64) as usize];
            let ts = now + (i as i64 * TICK_MS) / per_tick as i64;
            let bytes = envelope(&mut rng, &c.id, c.next_seq, ts, USERS);
            raw_envelope_bytes += bytes.len() as u64;
            if now < 600_000 {
                sample_raw.extend_from_slice(&bytes);
                sample_messages += 1;
            }
            c.pending_bytes += bytes.len();
            c.pending.push(Record { seq: c.next_seq, ts_ms: ts, bytes });
            c.next_seq += 1;
            messages += 1;
        }
        now += TICK_MS;
        let due = conversations
            .iter()
            .any(|c| c.pending_bytes >= MAX_BYTES || c.pending.first().is_some_and(|r| now - r.ts_ms >= MAX_AGE_MS));
        if due {
            let blocks: Vec<BlockInput> = conversations
                .iter_mut()
                .filter(|c| !c.pending.is_empty())
                .map(|c| {
                    c.pending_bytes = 0;
                    BlockInput { conversation_id: c.id.clone(), records: std::mem::take(&mut c.pending) }
                })
                .collect();
            let started = Instant::now();
            let blocks: Vec<BlockInput> =
                blocks.into_iter().flat_map(|b| segment::split(&b.conversation_id, b.records, BLOCK_BYTES)).collect();
            let (bytes, footer) =
                segment::encode("app_bench", Codec::Json, segment::Kind::Flush, now, &blocks).unwrap();
            encode_time += started.elapsed();
            objects += 1;
            block_rows += footer.blocks.len() as u64;
            segment_bytes += bytes.len() as u64;
            if sample_segments.len() < 8 {
                sample_segments.push(bytes.clone());
            }
            if window_index != Some(now.div_euclid(COMPACT_WINDOW_MS)) {
                // This flush opens a new window: the previous one is closed.
                compacted.window(&std::mem::take(&mut window));
                window_index = Some(now.div_euclid(COMPACT_WINDOW_MS));
            }
            window.push(bytes);
        }
    }
    compacted.window(&window);

    let started = Instant::now();
    let mut decoded = 0u64;
    for bytes in &sample_segments {
        let parsed = segment::Segment::parse(bytes).unwrap();
        for meta in &parsed.footer.blocks {
            decoded += parsed.block(meta).unwrap().iter().map(|r| r.len() as u64).sum::<u64>();
        }
    }
    let decode_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let zstd19 = zstd::bulk::compress(&sample_raw, 19).unwrap().len() as f64;
    let zstd19_secs = started.elapsed().as_secs_f64();

    let mb = |bytes: u64| bytes as f64 / 1_000_000.0;
    println!("seed load, 24 h fast-forwarded: {messages} messages, {CONVERSATIONS} conversations, tick 10 s, max_age 15 min, max_bytes 1 MiB");
    println!("objects per day              {objects}  (≈ {} per 30 days)", objects * 30);
    println!("block rows per day           {block_rows}  (≈ {} per 30 days)", block_rows * 30);
    println!("raw envelope bytes/message   {:.1}", raw_envelope_bytes as f64 / messages as f64);
    println!(
        "segment bytes/message        {:.1}  (ratio {:.2})",
        segment_bytes as f64 / messages as f64,
        raw_envelope_bytes as f64 / segment_bytes as f64
    );
    println!(
        "zstd -19 bytes/message       {:.1}  (the first 10 minutes' envelopes concatenated; {:.1} s)",
        zstd19 / sample_messages as f64,
        zstd19_secs
    );
    println!("segment storage per 30 days  {:.1} GB", mb(segment_bytes * 30) / 1000.0);
    println!(
        "encode                       {:.0} MB/s of raw envelopes",
        mb(raw_envelope_bytes) / encode_time.as_secs_f64()
    );
    println!(
        "decode                       {:.0} MB/s of raw records ({} segments)",
        mb(decoded) / decode_secs,
        sample_segments.len()
    );
    println!(
        "after compaction ({} h windows, blocks ≤ {} KiB raw):",
        COMPACT_WINDOW_MS / 3_600_000,
        BLOCK_BYTES / 1024
    );
    println!("objects per day              {}  (≈ {} per 30 days)", compacted.objects, compacted.objects * 30);
    println!("block rows per day           {}  (≈ {} per 30 days)", compacted.block_rows, compacted.block_rows * 30);
    println!(
        "segment bytes/message        {:.1}  ({:.2}× zstd -19)",
        compacted.bytes as f64 / messages as f64,
        compacted.bytes as f64 / messages as f64 / (zstd19 / sample_messages as f64)
    );
    println!("segment storage per 30 days  {:.1} GB", mb(compacted.bytes * 30) / 1000.0);
    println!(
        "compaction                   {:.0} MB/s of raw envelopes encoded; {:.0} MB/s read, decoded and encoded",
        mb(raw_envelope_bytes) / compacted.encode_time.as_secs_f64(),
        mb(raw_envelope_bytes) / compacted.total_time.as_secs_f64()
    );
}

/// Compaction of each window's segments, as `serve` runs it.
#[derive(Default)]
struct Compacted {
    objects: u64,
    block_rows: u64,
    bytes: u64,
    encode_time: Duration,
    total_time: Duration,
}

impl Compacted {
    fn window(&mut self, segments: &[Vec<u8>]) {
        let Some(first) = segments.first() else { return };
        let started = Instant::now();
        let start = segment::Segment::parse(first).unwrap().header.created_at_ms.div_euclid(COMPACT_WINDOW_MS)
            * COMPACT_WINDOW_MS;
        let parsed: Vec<segment::Segment> =
            segments.iter().map(|bytes| segment::Segment::parse(bytes).unwrap()).collect();
        let mut by_conversation: BTreeMap<&str, Vec<(usize, &segment::BlockMeta)>> = BTreeMap::new();
        for (i, segment) in parsed.iter().enumerate() {
            for meta in &segment.footer.blocks {
                by_conversation.entry(meta.conversation_id.as_str()).or_default().push((i, meta));
            }
        }
        let new_writer = || segment::Writer::new(Codec::Json, segment::Kind::Compaction, start, COMPACT_OBJECT_BYTES);
        let mut writer = new_writer();
        for (conversation, blocks) in by_conversation {
            let mut records = Vec::new();
            for (i, meta) in blocks {
                for (n, bytes) in parsed[i].block(meta).unwrap().into_iter().enumerate() {
                    let seq = meta.seq_start + n as u64;
                    let ts_ms = msgd::envelope::decode_record(Codec::Json, seq, &bytes).unwrap().ts;
                    records.push(Record { seq, ts_ms, bytes });
                }
            }
            let encoding = Instant::now();
            for block in segment::split(conversation, records, BLOCK_BYTES) {
                writer.push(&block).unwrap();
            }
            self.encode_time += encoding.elapsed();
            if writer.len() >= COMPACT_OBJECT_BYTES {
                self.close(std::mem::replace(&mut writer, new_writer()));
            }
        }
        self.close(writer);
        self.total_time += started.elapsed();
    }

    fn close(&mut self, writer: segment::Writer) {
        if writer.is_empty() {
            return;
        }
        let (bytes, footer) = writer.finish("app_bench").unwrap();
        self.objects += 1;
        self.block_rows += footer.blocks.len() as u64;
        self.bytes += bytes.len() as u64;
    }
}
