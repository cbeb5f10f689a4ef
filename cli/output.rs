//! Printing results: one JSON document on stdout with `--json`, a
//! comfy-table otherwise.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

pub fn json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("output serializes"));
}

pub fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(headers.to_vec());
    for row in rows {
        table.add_row(row);
    }
    println!("{table}");
}

/// A seq range as people write it: `1-35`, or `7` for one message.
pub fn seqs(start: u64, end: u64) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// A measured number for a table: at most two decimals, integers as integers.
pub fn number(value: &serde_json::Value) -> String {
    match value.as_f64() {
        Some(x) if value.is_f64() => format!("{:.2}", x),
        _ => match value.as_str() {
            Some(text) => text.to_string(),
            None => value.to_string(),
        },
    }
}
