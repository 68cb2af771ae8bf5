//! `jobsd status --watch`: the table as it moves, refreshed every second. In a terminal, a live
//! view: jobs by queue and status with the starts per second, each running job with its
//! progress as a bar, and the latest failures with their reasons. Anywhere else (a pipe, a log),
//! the same as plain text, one snapshot a second.
//!
//! It only reads: three small queries a second, which any replica's database user may run.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::job::{JobRow, Status};
use crate::store::Store;

/// How often the view is redrawn.
const EVERY: Duration = Duration::from_secs(1);

/// Running jobs and failures shown at most.
const SHOWN: u32 = 10;

/// What the view shows at one moment.
struct Snapshot {
    counts: Vec<(String, Status, i64)>,
    running: Vec<JobRow>,
    failures: Vec<JobRow>,
}

impl Snapshot {
    async fn read(store: &dyn Store) -> crate::store::Result<Snapshot> {
        Ok(Snapshot {
            counts: store.queue_counts().await?,
            running: store.rows_in(&[Status::Running], "id", SHOWN).await?,
            failures: store
                .rows_in(&[Status::Failed, Status::Cancelled], "finished_at", SHOWN)
                .await?,
        })
    }

    /// Jobs that have started, ever, as the table still holds them.
    fn started(&self) -> i64 {
        self.counts
            .iter()
            .filter(|(_, status, _)| !matches!(status, Status::New | Status::Queued))
            .map(|(_, _, count)| count)
            .sum()
    }
}

/// How far a running job has got, from its checkpoint: `(done, total, unit)`.
fn progress(row: &JobRow) -> Option<(u64, u64, &'static str)> {
    #[derive(Deserialize)]
    struct Slept {
        slept_ns: u64,
    }
    #[derive(Deserialize)]
    struct Imported {
        bytes: u64,
        size: u64,
    }
    let text = row.progress.as_deref()?;
    match row.kind.as_str() {
        "sleep" => {
            let total = u64::try_from(row.sleep?).ok()?;
            let slept = serde_json::from_str::<Slept>(text).ok()?.slept_ns;
            Some((slept.min(total), total, "ns"))
        }
        "csv_import" => {
            let imported = serde_json::from_str::<Imported>(text).ok()?;
            (imported.size > 0).then_some((
                imported.bytes.min(imported.size),
                imported.size,
                "bytes",
            ))
        }
        _ => None,
    }
}

/// Shows the view until `stop` (Ctrl-C), or a read fails.
pub async fn run(store: Arc<dyn Store>, stop: CancellationToken) -> anyhow::Result<()> {
    let live = std::io::stdout().is_terminal();
    let mut view = if live { Some(Live::new()) } else { None };
    let mut last: Option<(Instant, i64)> = None;
    loop {
        let snapshot = Snapshot::read(store.as_ref()).await?;
        let now = Instant::now();
        let started = snapshot.started();
        let per_second = last.map_or(0.0, |(at, before): (Instant, i64)| {
            let seconds = now.duration_since(at).as_secs_f64().max(0.001);
            // Pruned rows make the count drop: no negative starts.
            (started - before).max(0) as f64 / seconds
        });
        last = Some((now, started));
        let header = header(&snapshot, per_second);
        match view.as_mut() {
            Some(view) => view.draw(&header, &snapshot),
            None => println!("{}", plain(&header, &snapshot)),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    if let Some(view) = view {
        view.finish();
    }
    Ok(())
}

/// Jobs by queue and status, and the starts per second.
fn header(snapshot: &Snapshot, per_second: f64) -> String {
    format!(
        "{}\n{per_second:.1} starts/s",
        crate::table::queues(&snapshot.counts)
    )
}

fn failure_line(row: &JobRow) -> String {
    let reason = row.last_error.as_deref().unwrap_or("");
    let reason: String = reason.chars().take(160).collect();
    format!(
        "#{} {} {} {}: {reason}",
        row.id, row.queue, row.kind, row.status
    )
}

fn running_line(row: &JobRow) -> String {
    match progress(row) {
        Some((done, total, unit)) => {
            let width = 30;
            let filled = usize::try_from(done.saturating_mul(width) / total.max(1)).unwrap_or(0);
            format!(
                "#{} {} {} [{}{}] {done}/{total} {unit}",
                row.id,
                row.queue,
                row.kind,
                "#".repeat(filled),
                "-".repeat(30usize.saturating_sub(filled)),
            )
        }
        None => format!("#{} {} {} running", row.id, row.queue, row.kind),
    }
}

fn plain(header: &str, snapshot: &Snapshot) -> String {
    let mut text = format!("{header}\nrunning:\n");
    for row in &snapshot.running {
        text.push_str(&format!("  {}\n", running_line(row)));
    }
    text.push_str("recent failures:\n");
    for row in &snapshot.failures {
        text.push_str(&format!("  {}\n", failure_line(row)));
    }
    text
}

/// The live view: a line of text over the bars, a bar per running job, the failures below.
struct Live {
    bars: MultiProgress,
    header: ProgressBar,
    jobs: HashMap<i64, ProgressBar>,
    failures: ProgressBar,
}

impl Live {
    fn new() -> Live {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let text =
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let header = bars.add(ProgressBar::new(0).with_style(text.clone()));
        let failures = bars.add(ProgressBar::new(0).with_style(text));
        Live {
            bars,
            header,
            jobs: HashMap::new(),
            failures,
        }
    }

    fn draw(&mut self, header: &str, snapshot: &Snapshot) {
        self.header.set_message(format!("{header}\nrunning:"));
        let style =
            ProgressStyle::with_template("  {prefix} [{bar:30.cyan/blue}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("█▉▊▋▌▍▎▏ ");
        let plain = ProgressStyle::with_template("  {prefix} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let running: Vec<i64> = snapshot.running.iter().map(|row| row.id).collect();
        self.jobs.retain(|id, bar| {
            let keep = running.contains(id);
            if !keep {
                bar.finish_and_clear();
            }
            keep
        });
        for row in &snapshot.running {
            let bar = self.jobs.entry(row.id).or_insert_with(|| {
                let bar = self.bars.insert_before(&self.failures, ProgressBar::new(1));
                bar.set_prefix(format!("#{} {} {}", row.id, row.queue, row.kind));
                bar
            });
            match progress(row) {
                Some((done, total, unit)) => {
                    bar.set_style(style.clone());
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.set_message(format!("{done}/{total} {unit}"));
                }
                None => {
                    bar.set_style(plain.clone());
                    bar.set_message("running");
                }
            }
        }
        let failures: Vec<String> = snapshot.failures.iter().map(failure_line).collect();
        self.failures
            .set_message(format!("recent failures:\n{}", failures.join("\n")));
    }

    fn finish(self) {
        for bar in self.jobs.values() {
            bar.abandon();
        }
        self.header.abandon();
        self.failures.abandon();
    }
}
