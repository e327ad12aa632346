//! Human-readable renderings shared by the CLI and the demo.

use std::fmt::Write as _;

use lakets_core::catalog::registry::Chunk;

/// A chunk bound as PostgreSQL writes a timestamptz in UTC (`2026-12-02 10:00:00+00`).
/// Bounds are whole seconds: chunk intervals are, and they are aligned to the epoch.
pub fn chunk_bound(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

/// An aligned text table of chunks: name, range, status, rows, size, last write LSN.
pub fn chunks_table(chunks: &[Chunk]) -> String {
    let header = [
        "chunk_name",
        "range_start",
        "range_end",
        "status",
        "row_count",
        "size",
        "last_write_lsn",
    ];
    let rows: Vec<[String; 7]> = chunks
        .iter()
        .map(|c| {
            [
                c.chunk_name.clone(),
                chunk_bound(c.range_start),
                chunk_bound(c.range_end),
                c.status.as_str().to_owned(),
                c.row_count
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.size_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                c.last_write_lsn.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Numbers right-aligned, text left-aligned.
            if i == 4 || i == 5 {
                let _ = write!(text, "{cell:>w$}");
            } else {
                let _ = write!(text, "{cell:<w$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    out
}

pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
