//! The jobs table as people read it: the columns of the original design's table, plus why a job
//! failed or was cancelled.

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
    let mut counts: Vec<(Status, i64)> = Vec::new();
    for row in rows {
        match counts.iter_mut().find(|(status, _)| *status == row.status) {
            Some((_, count)) => *count += 1,
            None => counts.push((row.status, 1)),
        }
    }
    totals(&counts)
}

/// One line from counts by status, in the order of a job's life.
pub fn totals(counts: &[(Status, i64)]) -> String {
    let total: i64 = counts.iter().map(|(_, count)| count).sum();
    let parts: Vec<String> = Status::ALL
        .iter()
        .filter_map(|status| counts.iter().find(|(s, _)| s == status))
        .map(|(status, count)| format!("{count} {status}"))
        .collect();
    let noun = if total == 1 { "job" } else { "jobs" };
    format!("{total} {noun}: {}", parts.join(", "))
}

/// A table of how many jobs each queue has in each status, the statuses in the order of a
/// job's life.
pub fn queues(counts: &[(String, Status, i64)]) -> String {
    let mut table = Table::new();
    let mut header = vec!["queue".to_owned()];
    header.extend(Status::ALL.iter().map(ToString::to_string));
    table
        .load_preset(presets::ASCII_MARKDOWN)
        .set_header(header);
    let mut names: Vec<&str> = counts.iter().map(|(queue, _, _)| queue.as_str()).collect();
    names.dedup();
    for name in names {
        let mut line = vec![name.to_owned()];
        line.extend(Status::ALL.iter().map(|status| {
            counts
                .iter()
                .find(|(queue, s, _)| queue == name && s == status)
                .map_or(0, |(_, _, count)| *count)
                .to_string()
        }));
        table.add_row(line);
    }
    table.to_string()
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

/// The schedules as `jobsd schedule list` prints them. A schedule no replica has seen yet shows
/// the slot it will start with: the first after it was added.
pub fn schedules(rows: &[crate::store::ScheduleRow]) -> String {
    let mut table = Table::new();
    table.load_preset(presets::ASCII_MARKDOWN).set_header([
        "name",
        "cron",
        "timezone",
        "next slot",
        "last slot",
        "paused",
        "error",
    ]);
    for row in rows {
        let next = row.next_run_at.or_else(|| {
            crate::schedule::Slots::parse(&row.cron, &row.timezone)
                .and_then(|slots| slots.after(row.created_at))
                .ok()
        });
        table.add_row([
            row.name.clone(),
            row.cron.clone(),
            row.timezone.clone(),
            slot(next),
            slot(row.last_run_at),
            if row.paused != 0 { "yes" } else { "no" }.to_owned(),
            row.error.clone().unwrap_or_default(),
        ]);
    }
    table.to_string()
}

fn slot(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}
