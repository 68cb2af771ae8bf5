//! The `jobsd` command: parse, load settings, set up logging, and call the library.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jobsd::config::LogFormat;
use jobsd::store::{self, ConnectError};
use jobsd::{Config, Daemon, Handlers, table};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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
    /// Print the newest jobs
    Status {
        /// How many rows to print
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Exit code for bad settings and an unreachable database: fix the input and try again.
const EXIT_USAGE: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("jobsd: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(config.log_format);
    match run(cli.command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<ConnectError>() => {
            eprintln!("jobsd: {error}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => {
            eprintln!("jobsd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let store = store::connect(&config.database_url, config.pool_size()).await?;
    let database = store::redact(&config.database_url);
    match command {
        Command::Migrate => {
            store.migrate().await?;
            println!("migrations applied to {database}");
        }
        Command::Run { no_migrate } => {
            if !no_migrate {
                store.migrate().await?;
            }
            tracing::info!(%database, "database ready");
            let shutdown = CancellationToken::new();
            let daemon = Daemon::new(store, Handlers::default(), config);
            until_done(&shutdown, daemon.run(shutdown.clone())).await?;
        }
        Command::Demo { jobs } => {
            store.migrate().await?;
            eprintln!(
                "jobsd demo: {jobs} jobs on {database}; stuck ones are cancelled after {}",
                humantime::format_duration(config.dead_after)
            );
            let daemon = Daemon::new(store.clone(), Handlers::default(), config);
            let interrupted = CancellationToken::new();
            let demo = jobsd::demo::run(store, daemon, jobs, interrupted.clone());
            let rows = until_done(&interrupted, demo).await?;
            println!("{}", table::render(&rows));
            println!("{}", table::summary(&rows));
        }
        Command::Status { limit } => {
            let rows = store.rows(&[], limit).await?;
            println!("{}", table::render(&rows));
            println!("{}", table::summary(&rows));
        }
    }
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

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colour only for a person at a terminal, never in a collected log.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
