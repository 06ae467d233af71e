//! How client commands print: aligned tables for people, one JSON document for tools.

pub(super) fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// An aligned table: a header row, then one row per entry.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(header.to_vec()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// A time in Unix milliseconds as RFC 3339 to the second; 0 is `never` (no expiry).
pub(super) fn time_text(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Whole seconds from now until a time in Unix milliseconds (0 once it has passed).
pub(super) fn seconds_until(unix_ms: u64) -> u64 {
    let left = (unix_ms as i64).saturating_sub(now_unix_ms()).max(0) as u64;
    left.div_ceil(1000)
}

/// Whole seconds since a time in Unix milliseconds (0 if it is still to come).
pub(super) fn seconds_since(unix_ms: i64) -> i64 {
    now_unix_ms().saturating_sub(unix_ms).max(0) / 1000
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
