//! The `jobsd` command: parse, load settings, set up logging, and call the library.

use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use jobsd::config::LogFormat;
use jobsd::job::Control;
use jobsd::schedule::{CatchUp, Slots};
use jobsd::store::{self, ConnectError, NewSchedule, Store};
use jobsd::{Config, Daemon, Handlers, NewJob, table};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

mod math;

#[derive(Parser)]
#[command(
    name = "jobsd",
    version,
    about = "A database-backed background job daemon"
)]
struct Cli {
    /// Settings file [default: jobsd.toml, if present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT
    Run {
        /// Do not apply pending migrations first
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations and exit
    Migrate,
    /// Insert demo jobs (every third one stuck), run until all have finished, print them
    Demo {
        /// How many jobs to insert
        #[arg(long, default_value_t = 9)]
        jobs: u32,
    },
    /// Print the newest jobs, and how many jobs there are in each status
    Status {
        /// How many rows to print
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// A live view, refreshed every second, until Ctrl-C: jobs by queue and status, starts
        /// per second, running jobs with their progress, recent failures
        #[arg(long)]
        watch: bool,
    },
    /// Insert a job and print its id (applies pending migrations first)
    Enqueue {
        /// The job's kind, e.g. sleep
        kind: String,
        /// JSON arguments for the kind
        #[arg(long)]
        payload: Option<String>,
        /// Nanoseconds, for kind sleep
        #[arg(long)]
        sleep: Option<i64>,
        /// Your own reference
        #[arg(long)]
        object_id: Option<i64>,
        /// Not before this time: RFC 3339 (2030-01-31T12:00:00Z) or a delay from now (10m)
        #[arg(long, value_parser = parse_run_at)]
        run_at: Option<DateTime<Utc>>,
        /// Runs allowed before the job fails for good
        #[arg(long)]
        max_attempts: Option<i32>,
        /// The job's queue [default: default]
        #[arg(long)]
        queue: Option<String>,
        /// Lower starts first [default: 0]
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i16>,
        /// Insert nothing while a job with this key is NEW, QUEUED, RUNNING or PAUSED: print
        /// that job's id instead
        #[arg(long)]
        unique_key: Option<String>,
    },
    /// Pause or resume a queue on every replica, as `UPDATE queues SET paused_at = …` does
    /// (applies pending migrations first)
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Recurring jobs: add, list, pause, resume or remove a row of the schedules table
    /// (applies pending migrations first)
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Exit 0 if a `jobsd run` on this machine is alive (liveness probe), or with --ready if it
    /// reached the database within MAX_AGE (readiness probe)
    Health {
        /// Ask whether the daemon reaches the database, not only whether it runs
        #[arg(long)]
        ready: bool,
        /// How old the last sign of life may be
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        max_age: std::time::Duration,
    },
    /// Measure drain speed, pickup latency, rate limit and memory on a scratch database
    Bench {
        /// Jobs drained in W1 and W5
        #[arg(long, default_value_t = 100_000)]
        jobs: u32,
        /// Finished rows already in the table for W5
        #[arg(long, default_value_t = 1_000_000)]
        history: u32,
        /// Consumers of the daemon in W1 and W5 (no-op jobs want many)
        #[arg(long, default_value_t = jobsd::bench::DRAIN_CONSUMERS)]
        consumers: u32,
        /// How long W3 runs the limiter at 50 starts/s
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        rate_for: std::time::Duration,
    },
    /// Ask for a job to pause at its next checkpoint (as `UPDATE jobs SET control = 'pause'`)
    Pause { id: i64 },
    /// Ask for a paused job to go on
    Resume { id: i64 },
    /// Ask for a job to be cancelled, running or not
    Terminate { id: i64 },
}

#[derive(Subcommand)]
enum QueueAction {
    /// No job of the queue starts until it is resumed; running ones finish
    Pause { name: String },
    /// The queue's jobs start again
    Resume { name: String },
    /// Limit the queue across all replicas; a limit left out is lifted
    Limit {
        name: String,
        /// At most this many of its jobs QUEUED or RUNNING at once
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(i32::MAX)))]
        concurrency: Option<u32>,
        /// At most this many starts a second (fractions allowed: 0.5 is one every 2 s)
        #[arg(long, value_parser = queue_rate)]
        rate: Option<f64>,
    },
}

#[derive(Subcommand)]
enum ScheduleAction {
    /// Add a schedule; its first slot is the first one after now
    Add {
        /// The schedule's name (unique)
        name: String,
        /// 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first
        cron: String,
        /// The kind of the jobs it inserts, e.g. sleep
        kind: String,
        /// JSON arguments for the kind
        #[arg(long)]
        payload: Option<String>,
        /// Nanoseconds, for kind sleep
        #[arg(long)]
        sleep: Option<i64>,
        /// Your own reference
        #[arg(long)]
        object_id: Option<i64>,
        /// The jobs' queue
        #[arg(long, default_value = "default")]
        queue: String,
        /// Lower starts first
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i16,
        /// Runs allowed before a job fails for good
        #[arg(long, default_value_t = 1)]
        max_attempts: i32,
        /// The IANA time zone the cron is read in
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// After a time when no replica ran: latest, none or all
        #[arg(long, default_value = "latest")]
        catch_up: CatchUp,
    },
    /// Print the schedules with their next slot
    List,
    /// No slots are inserted until it is resumed
    Pause { name: String },
    /// Slots are inserted again, from the next one on
    Resume { name: String },
    /// Remove a schedule; the jobs it inserted stay
    Remove { name: String },
}

/// Input that cannot be used as given: one line, and exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn parse_run_at(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let delay = humantime::parse_duration(text).map_err(|_| {
        format!("expected a time like 2030-01-31T12:00:00Z or a delay like 10m, got {text:?}")
    })?;
    let delay = chrono::Duration::from_std(delay).map_err(|e| e.to_string())?;
    Ok(Utc::now() + delay)
}

/// Exit code for bad settings and an unreachable database: fix the input and try again.
const EXIT_USAGE: u8 = 2;

/// One thread: the daemon's own work is waiting on the database, which one thread does
/// without cross-thread wake-ups, and leaves the cores to the handlers' blocking work and to a
/// database on the same machine. It also keeps the resident set small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("jobsd: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Whatever jobsd says on stderr, its own words or a driver's, goes through this.
    let secrets: Arc<[String]> = store::secrets(&config.database_url).into();
    init_logging(config.log_format, Arc::clone(&secrets));
    match run(cli.command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<ConnectError>() || error.is::<Usage>() => {
            eprintln!("jobsd: {}", store::scrub_all(&error.to_string(), &secrets));
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => {
            let line = jobsd::in_words(&error);
            eprintln!("jobsd: {}", store::scrub_all(&line, &secrets));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    if let Command::Health { ready, max_age } = command {
        let file = if ready {
            config.health_file.clone()
        } else {
            config.liveness_file()
        };
        return probe(&file, max_age, ready);
    }
    if let Command::Schedule {
        action: ScheduleAction::Add { cron, timezone, .. },
    } = &command
    {
        Slots::parse(cron, timezone).map_err(Usage)?;
    }
    let store = store::connect(&config.database_url, config.pool_size()).await?;
    let database = store::redact(&config.database_url);
    match command {
        Command::Migrate => {
            store::migrate(store.as_ref(), &config.database_url).await?;
            println!("migrations applied to {database}");
        }
        Command::Run { no_migrate } => {
            if !no_migrate {
                store::migrate(store.as_ref(), &config.database_url).await?;
            }
            tracing::info!(%database, "database ready");
            let shutdown = CancellationToken::new();
            let daemon = Daemon::new(store, Handlers::builtin(&config.csv()), config);
            until_done(&shutdown, daemon.run(shutdown.clone())).await?;
        }
        Command::Demo { jobs } => {
            store::migrate(store.as_ref(), &config.database_url).await?;
            eprintln!(
                "jobsd demo: {jobs} jobs on {database}; stuck ones are cancelled after {}",
                humantime::format_duration(config.dead_after)
            );
            let daemon = Daemon::new(store.clone(), Handlers::builtin(&config.csv()), config);
            let interrupted = CancellationToken::new();
            let demo = jobsd::demo::run(store, daemon, jobs, interrupted.clone());
            let rows = until_done(&interrupted, demo).await?;
            println!("{}", table::render(&rows));
            println!("{}", table::summary(&rows));
        }
        Command::Status { watch: true, .. } => {
            let stop = CancellationToken::new();
            until_done(&stop, jobsd::watch::run(store, stop.clone())).await?;
        }
        Command::Status { limit, .. } => {
            let rows = store.rows(&[], limit).await?;
            println!("{}", table::render(&rows));
            println!(
                "\nJobs by queue:\n{}",
                table::queues(&store.queue_counts().await?)
            );
            println!("{}", table::totals(&store.counts().await?));
        }
        Command::Enqueue {
            kind,
            payload,
            sleep,
            object_id,
            run_at,
            max_attempts,
            queue,
            priority,
            unique_key,
        } => {
            store::migrate(store.as_ref(), &config.database_url).await?;
            let job = NewJob {
                kind: Some(kind),
                object_id,
                sleep,
                payload,
                run_at,
                max_attempts,
                queue,
                priority,
                unique_key,
            };
            let id = match &job.unique_key {
                Some(key) => insert_unique(&*store, &job, key).await?,
                None => store.insert(&job).await?,
            };
            println!("{id}");
        }
        Command::Bench {
            jobs,
            history,
            consumers,
            rate_for,
        } => {
            let options = jobsd::bench::Options {
                jobs,
                history,
                consumers,
                rate_for,
            };
            let report = jobsd::bench::run(&config.database_url, &options).await?;
            println!("{}", jobsd::bench::render(&report));
            println!("{}", serde_json::to_string(&report)?);
        }
        // Answered above, without a database connection.
        Command::Health { .. } => {}
        Command::Pause { id } => request(&*store, id, Control::Pause).await?,
        Command::Resume { id } => request(&*store, id, Control::Resume).await?,
        Command::Terminate { id } => request(&*store, id, Control::Terminate).await?,
        Command::Queue { action } => {
            store::migrate(store.as_ref(), &config.database_url).await?;
            let (name, paused) = match action {
                QueueAction::Pause { name } => (name, true),
                QueueAction::Resume { name } => (name, false),
                QueueAction::Limit {
                    name,
                    concurrency,
                    rate,
                } => {
                    store
                        .limit_queue(&name, concurrency.map(i64::from), rate)
                        .await?;
                    println!(
                        "queue {name:?}: concurrency {}, rate {}",
                        concurrency.map_or_else(|| "unlimited".into(), |n| n.to_string()),
                        rate.map_or_else(|| "unlimited".into(), |r| format!("{r}/s"))
                    );
                    return Ok(());
                }
            };
            store.pause_queue(&name, paused).await?;
            let state = if paused { "paused" } else { "running" };
            println!("queue {name:?} {state}");
        }
        Command::Schedule { action } => {
            store::migrate(store.as_ref(), &config.database_url).await?;
            schedule(&*store, action).await?;
        }
    }
    Ok(())
}

/// A probe reads the age of a file the daemon rewrites: the liveness file every second,
/// whatever the database does, so an old one means its loops have stopped turning; the
/// readiness file after every pass that reached the database, so an old one means the database
/// has not answered for `max_age` (or the loops stopped).
fn probe(file: &Path, max_age: Duration, ready: bool) -> anyhow::Result<()> {
    let (missing, stale, fine) = if ready {
        (
            "not ready: no pass has reached the database",
            "not ready: the database last answered",
            "ready: the database answered",
        )
    } else {
        (
            "no sign of life",
            "the loops have stopped: last sign of life",
            "alive: last sign of life",
        )
    };
    let age = age(file).map_err(|e| {
        anyhow::anyhow!(
            "{missing} ({}: {e}); is `jobsd run` running?",
            file.display()
        )
    })?;
    if age > max_age {
        anyhow::bail!(
            "{stale} {} ago, more than {}",
            seconds(age),
            humantime::format_duration(max_age)
        );
    }
    println!("{fine} {} ago", seconds(age));
    Ok(())
}

/// How long ago `file` was last written.
fn age(file: &Path) -> std::io::Result<Duration> {
    let modified = std::fs::metadata(file)?.modified()?;
    Ok(modified.elapsed().unwrap_or_default())
}

fn seconds(age: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(age.as_secs()))
}

/// A queue's rate as the `queues` table takes it: above 0, at most a million a second.
fn queue_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if rate > 0.0 && rate <= 1_000_000.0 {
        Ok(rate)
    } else {
        Err(format!("{text} is not above 0 and at most 1000000"))
    }
}

/// How many times `enqueue --unique-key` tries before it gives up on a key that live jobs keep
/// taking and finishing between its INSERT and its look-up.
const UNIQUE_TRIES: u32 = 5;

/// Inserts `job`, whose unique key is `key`, unless a live job holds the key; the id of the new
/// job, or of the one holding the key (said on stderr). The INSERT decides, never a look-up
/// before it: two of these racing insert one job. The look-up after a skip may find the key
/// freed meanwhile (its job finished), and then the INSERT is tried again.
async fn insert_unique(store: &dyn Store, job: &NewJob, key: &str) -> anyhow::Result<i64> {
    for _ in 0..UNIQUE_TRIES {
        if let Some(id) = store.insert_or_skip(job).await? {
            return Ok(id);
        }
        if let Some(id) = store.live_with_key(key).await? {
            eprintln!(
                "jobsd: skipped: job {id} holds unique key {key:?} and is not finished; nothing inserted"
            );
            return Ok(id);
        }
    }
    anyhow::bail!(
        "unique key {key:?} was taken and freed again {UNIQUE_TRIES} times while enqueueing; try again"
    )
}

/// Carries out a `jobsd schedule` command.
async fn schedule(store: &dyn Store, action: ScheduleAction) -> anyhow::Result<()> {
    let (name, done, what) = match action {
        ScheduleAction::Add {
            name,
            cron,
            kind,
            payload,
            sleep,
            object_id,
            queue,
            priority,
            max_attempts,
            timezone,
            catch_up,
        } => {
            let schedule = NewSchedule {
                name: name.clone(),
                cron,
                timezone,
                kind,
                object_id,
                sleep,
                payload,
                queue,
                priority,
                max_attempts,
                catch_up,
            };
            store.add_schedule(&schedule).await.map_err(|error| {
                anyhow::Error::new(error).context(format!("cannot add schedule {name:?}"))
            })?;
            (name, true, "added")
        }
        ScheduleAction::List => {
            println!("{}", table::schedules(&store.schedules().await?));
            return Ok(());
        }
        ScheduleAction::Pause { name } => {
            let done = store.pause_schedule(&name, true).await?;
            (name, done, "paused")
        }
        ScheduleAction::Resume { name } => {
            let done = store.pause_schedule(&name, false).await?;
            (name, done, "resumed")
        }
        ScheduleAction::Remove { name } => {
            let done = store.remove_schedule(&name).await?;
            (name, done, "removed")
        }
    };
    if !done {
        anyhow::bail!("there is no schedule {name:?}");
    }
    println!("schedule {name:?} {what}");
    Ok(())
}

/// Writes a control request; the daemon carries it out within `control_interval`.
async fn request(store: &dyn Store, id: i64, control: Control) -> anyhow::Result<()> {
    if !store.request(id, control).await? {
        anyhow::bail!("there is no job {id}");
    }
    println!("job {id}: {control} requested");
    Ok(())
}

/// Runs `work` to its end. A SIGTERM (Kubernetes sends it to start a graceful shutdown) or
/// SIGINT meanwhile fires `shutdown`, which `work` watches to drain and return.
async fn until_done<T>(shutdown: &CancellationToken, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return done,
        () = signalled() => shutdown.cancel(),
    }
    work.await
}

async fn signalled() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops jobsd");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Logs to stderr at `RUST_LOG`'s levels (`info,sqlx=warn` unless set; `level` and
/// `target=level` items), with `secrets` taken out of every line. Targets, not EnvFilter: no
/// regular-expression engine in the binary, which is a good part of its resident set.
fn init_logging(format: LogFormat, secrets: Arc<[String]>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("sqlx", LevelFilter::WARN)
        });
    // Colour only for a person at a terminal, never in a collected log.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_writer(move || Scrubbed {
            secrets: Arc::clone(&secrets),
        })
        .with_ansi(colour);
    match format {
        LogFormat::Text => logs.finish().with(filter).init(),
        LogFormat::Json => logs.json().finish().with(filter).init(),
    }
}

/// Standard error, with the database URL's secrets replaced in everything written. jobsd's own
/// lines show URLs redacted, but a driver may log what it was given: sqlx warns about a URL
/// parameter it does not know, value and all (`sslpassword=…`, `PASSWORD=…`). Each log line
/// arrives in one write, so no secret is split between two.
struct Scrubbed {
    secrets: Arc<[String]>,
}

impl std::io::Write for Scrubbed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        match std::str::from_utf8(buf) {
            Ok(text) if !self.secrets.is_empty() => {
                stderr.write_all(store::scrub_all(text, &self.secrets).as_bytes())?;
            }
            _ => stderr.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
