//! Fuzzes the segment decoder: any bytes must parse or fail with an error,
//! and every block of a parsed segment must decode or fail — never panic,
//! never allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(segment) = msgd::segment::Segment::parse(bytes) {
        for meta in &segment.footer.blocks {
            let _ = segment.block(meta);
        }
    }
});
