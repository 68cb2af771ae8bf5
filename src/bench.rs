//! `jobsd bench`: the speed, latency and memory of this build on a given database, measured on
//! a scratch database it creates beside the given one and drops afterwards. The daemon runs as
//! a child process (`jobsd run`), so its resident set is its own.
//!
//! - W1 drain: `jobs` no-op jobs inserted first, then the daemon started with the limiter off
//!   and `consumers` slots; jobs/s from its start until all are finished, and database
//!   statements per job (the daemon's, counted by the server; not on SQLite).
//! - W2 pickup: 200 single-row INSERTs 20 ms apart, default settings with the limiter off;
//!   percentiles of `started_at - created_at`.
//! - W3 rate: 50 jobs a second of `rate_for` at the default limit of 50/s; the achieved rate
//!   and the busiest second.
//! - W4 memory: the daemon's peak resident set during W1, and its resident set when idle after.
//! - W5 scale: W1 again with `history` finished rows already in the table.
//! - W6 queues: W1 again while the `queues` table holds a paused queue and a limited one (none
//!   of the drained jobs is in either): what the claim pays for looking past them.
//!
//! W6 and W5 start from the table as the database's own upkeep leaves it (`Inspect::upkeep`),
//! not as the drain before left it: on PostgreSQL every claim walks past the dead index entries
//! of the rows claimed since the last VACUUM, which would make them measure the drains before.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::job::NewJob;
use crate::store::{self, Store};

/// How often the bench looks whether the jobs are finished.
const WATCH: Duration = Duration::from_millis(20);

/// Consumers for the drains: a no-op job ends as soon as it starts, so slots are cheap and
/// more of them make bigger claims.
pub const DRAIN_CONSUMERS: u32 = 500;

/// The default limit W3 checks, in starts per second.
const RATE: u32 = 50;

pub struct Options {
    pub jobs: u32,
    pub history: u32,
    pub consumers: u32,
    pub rate_for: Duration,
}

/// What the bench measured; printed as a table and as one JSON line.
#[derive(Debug, Serialize)]
pub struct Report {
    pub database: String,
    pub jobs: u32,
    pub consumers: u32,
    pub w1_jobs_per_second: f64,
    pub w1_statements_per_job: Option<f64>,
    pub w2_pickup_ms_p50: f64,
    pub w2_pickup_ms_p95: f64,
    pub w2_pickup_ms_p99: f64,
    pub w3_starts_per_second: f64,
    pub w3_busiest_second: usize,
    pub w4_peak_rss_mib: f64,
    pub w4_idle_rss_mib: f64,
    pub history: u32,
    pub w5_jobs_per_second: f64,
    pub w6_jobs_per_second: f64,
}

/// Runs W1 to W5 against a scratch database beside `url`.
pub async fn run(url: &str, options: &Options) -> anyhow::Result<Report> {
    let admin = store::connect(url, 2).await?;
    let suffix: String = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric)
        .take(8)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    let name = format!("jobsd_bench_{suffix}");
    let scratch = admin.create_scratch(url, &name).await?;
    let result = workloads(&scratch, options).await;
    if let Err(error) = admin.drop_scratch(&name).await {
        tracing::warn!(%error, database = name, "could not drop the scratch database");
    }
    let mut report = result?;
    report.database = store::redact(url);
    Ok(report)
}

async fn workloads(url: &str, options: &Options) -> anyhow::Result<Report> {
    // One connection, so that its own statements are counted when the bench reads the count.
    let store = store::connect(url, 1).await?;
    store.migrate().await?;
    let health = std::env::temp_dir().join(format!("jobsd-bench-{}.health", std::process::id()));
    let daemon = |rate: u32, consumers: Option<u32>| spawn(url, rate, consumers, &health);
    let drainer = || daemon(0, Some(options.consumers));

    eprintln!(
        "W1: draining {} jobs with {} consumers",
        options.jobs, options.consumers
    );
    let (w1, w1_statements, peak, idle) = drain(&store, options.jobs, &drainer).await?;

    eprintln!("W6: W1 again, with a paused queue and a limited queue");
    // Each drain on the table as the database's upkeep leaves it, not as the last one left it.
    store.upkeep().await?;
    store.pause_queue("bench_paused", true).await?;
    store
        .limit_queue("bench_limited", Some(10), Some(100.0))
        .await?;
    let (w6, _, _, _) = drain(&store, options.jobs, &drainer).await?;
    store.pause_queue("bench_paused", false).await?;
    store.limit_queue("bench_limited", None, None).await?;

    eprintln!("W2: 200 single inserts, 20 ms apart");
    let mut child = daemon(0, None)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(store.insert(&NewJob::sleep(0, Some(0))).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_finished(&store, &mut child).await?;
    stop(child).await?;
    let mut pickups: Vec<f64> = store
        .rows(&ids, 200)
        .await?
        .iter()
        .filter_map(|row| {
            row.started_at
                .map(|at| (at - row.created_at).num_microseconds())
        })
        .flatten()
        .map(|micros| micros as f64 / 1000.0)
        .collect();
    pickups.sort_by(f64::total_cmp);

    let rate_jobs = u32::try_from(u128::from(RATE) * options.rate_for.as_millis() / 1000)
        .unwrap_or(u32::MAX)
        .max(2);
    eprintln!("W3: {rate_jobs} jobs at {RATE} starts/s");
    store.insert_many(rate_jobs, 0, false).await?;
    let mut child = daemon(RATE, None)?;
    until_finished(&store, &mut child).await?;
    stop(child).await?;
    let starts: Vec<_> = store
        .rows(&[], rate_jobs)
        .await?
        .iter()
        .filter_map(|row| row.started_at)
        .collect();
    let first = starts.iter().min().copied().unwrap_or_default();
    let last = starts.iter().max().copied().unwrap_or_default();
    let span = (last - first).num_microseconds().unwrap_or(1).max(1) as f64 / 1e6;
    let mut per_second: HashMap<i64, usize> = HashMap::new();
    for at in &starts {
        *per_second.entry(at.timestamp()).or_default() += 1;
    }

    eprintln!("W5: {} finished rows, then W1 again", options.history);
    store.insert_many(options.history, 0, true).await?;
    store.upkeep().await?;
    let (w5, _, _, _) = drain(&store, options.jobs, &drainer).await?;

    Ok(Report {
        database: String::new(),
        jobs: options.jobs,
        consumers: options.consumers,
        w1_jobs_per_second: w1,
        w1_statements_per_job: w1_statements,
        w2_pickup_ms_p50: percentile(&pickups, 50.0),
        w2_pickup_ms_p95: percentile(&pickups, 95.0),
        w2_pickup_ms_p99: percentile(&pickups, 99.0),
        w3_starts_per_second: (starts.len().saturating_sub(1)) as f64 / span,
        w3_busiest_second: per_second.values().copied().max().unwrap_or_default(),
        w4_peak_rss_mib: peak,
        w4_idle_rss_mib: idle,
        history: options.history,
        w5_jobs_per_second: w5,
        w6_jobs_per_second: w6,
    })
}

/// W1: inserts `jobs`, runs a daemon with the limiter off until all are finished. Returns
/// jobs/s, statements per job, and the daemon's peak and idle resident set in MiB.
async fn drain(
    store: &Arc<dyn Store>,
    jobs: u32,
    daemon: &impl Fn() -> anyhow::Result<Child>,
) -> anyhow::Result<(f64, Option<f64>, f64, f64)> {
    store.insert_many(jobs, 0, false).await?;
    let before = store.statements().await?;
    let started = Instant::now();
    let mut child = daemon()?;
    let polls = until_finished(store, &mut child).await?;
    let seconds = started.elapsed().as_secs_f64();
    let pid = child.id().context("daemon pid")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The high-water mark after the idle time, so that it covers whatever idling touched too.
    let idle = memory(pid, "VmRSS")?;
    let peak = memory(pid, "VmHWM")?;
    // The daemon's database sessions report their counts as they end.
    stop(child).await?;
    let after = store.statements().await?;
    // Less the bench's own: its polls, and the two statements of each count it reads.
    let own = polls + 2;
    let statements = before.zip(after).map(|(before, after)| {
        after.saturating_sub(before).saturating_sub(own) as f64 / f64::from(jobs.max(1))
    });
    Ok((f64::from(jobs) / seconds, statements, peak, idle))
}

/// `jobsd run` on `url` at `rate` starts/s, with `consumers` or the default.
fn spawn(url: &str, rate: u32, consumers: Option<u32>, health: &PathBuf) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("the jobsd executable")?;
    let mut command = Command::new(exe);
    if let Some(consumers) = consumers {
        command.env("JOBSD_CONSUMERS", consumers.to_string());
    }
    command
        .args(["run", "--no-migrate"])
        .env("DATABASE_URL", url)
        .env("JOBSD_RATE_PER_SECOND", rate.to_string())
        .env("JOBSD_HEALTH_FILE", health)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting jobsd run")
}

/// Waits until no job is left unfinished, or fails if the daemon exits first. Returns how
/// many times it looked.
async fn until_finished(store: &Arc<dyn Store>, child: &mut Child) -> anyhow::Result<u64> {
    let mut polls = 0;
    loop {
        // Not a count of every status: on a table of finished rows (W5) that would read them
        // all, fifty times a second, and the bench would measure itself.
        let unfinished = store.unfinished().await?;
        polls += 1;
        if unfinished == 0 {
            return Ok(polls);
        }
        if let Some(exit) = child.try_wait()? {
            anyhow::bail!("jobsd run exited during the bench: {exit}");
        }
        tokio::time::sleep(WATCH).await;
    }
}

async fn stop(mut child: Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    child.wait().await?;
    Ok(())
}

/// A `/proc/PID/status` memory line (`VmHWM`, `VmRSS`) in MiB.
fn memory(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .context("memory figure")?;
    Ok(kib / 1024.0)
}

fn percentile(sorted: &[f64], percent: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (percent / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The report as a table for people.
pub fn render(report: &Report) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::ASCII_MARKDOWN)
        .set_header(["workload", "result"]);
    let statements = report
        .w1_statements_per_job
        .map(|s| format!(", {s:.2} statements/job"))
        .unwrap_or_default();
    table.add_row([
        format!(
            "W1 drain {} jobs, {} consumers",
            report.jobs, report.consumers
        ),
        format!("{:.0} jobs/s{statements}", report.w1_jobs_per_second),
    ]);
    table.add_row([
        "W2 pickup (ms)".to_owned(),
        format!(
            "p50 {:.1} / p95 {:.1} / p99 {:.1}",
            report.w2_pickup_ms_p50, report.w2_pickup_ms_p95, report.w2_pickup_ms_p99
        ),
    ]);
    table.add_row([
        format!("W3 rate limit {RATE}/s"),
        format!(
            "{:.2} starts/s, busiest second {}",
            report.w3_starts_per_second, report.w3_busiest_second
        ),
    ]);
    table.add_row([
        "W4 memory".to_owned(),
        format!(
            "peak {:.1} MiB, idle {:.1} MiB",
            report.w4_peak_rss_mib, report.w4_idle_rss_mib
        ),
    ]);
    table.add_row([
        format!("W5 drain with {} finished rows", report.history),
        format!("{:.0} jobs/s", report.w5_jobs_per_second),
    ]);
    table.add_row([
        "W6 drain with a paused and a limited queue".to_owned(),
        format!("{:.0} jobs/s", report.w6_jobs_per_second),
    ]);
    table.to_string()
}
