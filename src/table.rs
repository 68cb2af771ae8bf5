//! The jobs table as people read it: the columns of the original design's table, plus why a job
//! failed or was cancelled.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use comfy_table::{Table, presets};

use crate::job::{JobRow, Status};

/// Renders `rows` as a text table.
pub fn render(rows: &[JobRow]) -> String {
    let mut table = Table::new();
    table.load_preset(presets::ASCII_MARKDOWN).set_header([
        "id",
        "object_id",
        "sleep",
        "status",
        "created_at",
        "queued_at",
        "started_at",
        "finished_at",
        "cancelled_at",
        "last_error",
    ]);
    for row in rows {
        table.add_row([
            row.id.to_string(),
            optional(row.object_id),
            optional(row.sleep),
            row.status.to_string(),
            time(Some(row.created_at)),
            time(row.queued_at),
            time(row.started_at),
            time(row.finished_at),
            time(row.cancelled_at),
            row.last_error.clone().unwrap_or_default(),
        ]);
    }
    table.to_string()
}

/// One line counting `rows` by status, e.g. `3 jobs: 2 DONE, 1 CANCELLED`.
pub fn summary(rows: &[JobRow]) -> String {
    let mut counts: BTreeMap<usize, (Status, usize)> = BTreeMap::new();
    for row in rows {
        let order = Status::ALL
            .iter()
            .position(|s| *s == row.status)
            .unwrap_or_default();
        counts.entry(order).or_insert((row.status, 0)).1 += 1;
    }
    let parts: Vec<String> = counts
        .values()
        .map(|(status, count)| format!("{count} {status}"))
        .collect();
    let noun = if rows.len() == 1 { "job" } else { "jobs" };
    format!("{} {noun}: {}", rows.len(), parts.join(", "))
}

fn optional(value: Option<i64>) -> String {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| "NULL".to_owned())
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| at.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}
