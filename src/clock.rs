//! Wall-clock time as Unix milliseconds, the one unit msgd stores and sends.
//!
//! Domain functions take `now` as a parameter instead of calling this, so
//! tests inject time; only the edges (CLI, HTTP handlers, stores' TTLs) read it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RFC 3339 (UTC, milliseconds) for display.
pub fn format_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
