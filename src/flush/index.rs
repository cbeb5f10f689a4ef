//! Where a segment object is stored: its key, and the segment id back from
//! a key. Pure functions, no IO. (The rows that describe a segment, from its
//! footer, are [`crate::timeline::index_rows`]: readers map them back.)

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
