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
