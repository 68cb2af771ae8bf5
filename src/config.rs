//! Settings: built-in defaults, then an optional `jobsd.toml`, then `JOBSD_*` environment
//! variables, then `DATABASE_URL`. Everything is checked here, before any task starts, so that
//! a bad value stops the process with one line that names the setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::handlers::CsvSettings;

/// Where the daemon keeps its jobs when nothing says otherwise: a file beside the process.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://jobsd.db";

/// The file read when `--config` is not given; it may be absent.
pub const DEFAULT_CONFIG_FILE: &str = "jobsd.toml";

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `postgres://…`, `mysql://…` or `sqlite://…`.
    pub database_url: String,
    /// How often the publishers look at the table when nothing wakes them sooner.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often control requests (pause, resume, terminate) are looked for, when nothing
    /// wakes the control publisher sooner.
    #[serde(with = "humantime_serde")]
    pub control_interval: Duration,
    /// How long a QUEUED or RUNNING job may stay silent before it counts as dead.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// How many jobs one replica runs at once.
    pub consumers: u32,
    /// How many jobs a replica may claim beyond its free consumers, to start as consumers come
    /// free; with a rate limit, at most one second of starts at that rate. Unset: as many as
    /// make [`HELD`] claimed jobs with the consumers (see [`Config::prefetch`]).
    pub prefetch: Option<u32>,
    /// Job starts per second per replica; 0 turns the limiter off.
    pub rate_per_second: u32,
    /// How long running jobs may take to finish after SIGTERM before they are released.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The wait before a failed job's second attempt; it doubles for each further one.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// The start of this replica's id; a random suffix new at every start is appended.
    pub worker_id: String,
    /// `text` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// Rewritten after every pass of the dead-jobs loop that reached the database: its age is
    /// what `jobsd health --ready` reads. Beside it, [`Config::liveness_file`].
    pub health_file: PathBuf,
    /// The only tables `csv_import` and `csv_export` jobs may name.
    pub csv_tables: Vec<String>,
    /// The folder `csv_import` and `csv_export` paths are relative to; they cannot leave it.
    /// Not the working folder by default: that holds the SQLite file and the settings.
    pub csv_dir: PathBuf,
    /// The largest `payload` or `progress` a job may have: a larger one ends FAILED without
    /// ever being loaded, so one row cannot take a replica's memory.
    pub max_payload_bytes: u64,
    /// The only queues this replica serves; empty, every queue.
    pub queues: Vec<String>,
    /// Where `GET /metrics` is served; unset, nothing listens.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// DONE rows whose `finished_at` is older are deleted; 0 keeps them.
    #[serde(with = "humantime_serde")]
    pub retain_done: Duration,
    /// The same for FAILED and CANCELLED rows.
    #[serde(with = "humantime_serde")]
    pub retain_failed: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected text or json, got {other:?}")),
        }
    }
}

/// A setting that cannot be used; the message names it and says what would do.
#[derive(Debug, thiserror::Error)]
#[error("bad setting: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Reads the settings; `file` must exist when given, `jobsd.toml` is optional.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        use config::{Environment, File, FileFormat};

        let path = file.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
        let from_file = check_syntax(path)?;
        // A message about a value may quote it: take out the database URL's secrets, wherever
        // the URL came from.
        let mut secrets = Vec::new();
        for url in [from_file, std::env::var("DATABASE_URL").ok()]
            .into_iter()
            .flatten()
        {
            secrets.extend(crate::store::secrets(&url));
        }
        let scrubbed = |text: String| ConfigError(crate::store::scrub_all(&text, &secrets));
        let wrap = |e: config::ConfigError| scrubbed(e.to_string());
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder.set_default(*key, *value).map_err(wrap)?;
        }
        builder = match file {
            Some(path) => {
                builder.add_source(File::from(path).format(FileFormat::Toml).required(true))
            }
            None => {
                builder.add_source(File::new(DEFAULT_CONFIG_FILE, FileFormat::Toml).required(false))
            }
        };
        builder = builder
            .set_default("csv_tables", Vec::<String>::new())
            .map_err(wrap)?
            .set_default("queues", Vec::<String>::new())
            .map_err(wrap)?
            .add_source(Environment::with_prefix("JOBSD").try_parsing(false));
        // A list in one variable, comma-separated; `config` would only split it if it also
        // guessed the type of every other variable.
        for list in ["csv_tables", "queues"] {
            if let Ok(items) = std::env::var(env_name(list)) {
                let items: Vec<String> = items
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect();
                builder = builder.set_override(list, items).map_err(wrap)?;
            }
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            builder = builder.set_override("database_url", url).map_err(wrap)?;
        }
        let mut config: Config = builder
            .build()
            .map_err(wrap)?
            .try_deserialize()
            .map_err(|e| scrubbed(explain(&e)))?;
        if config.worker_id.is_empty() {
            config.worker_id = host_name();
        }
        config.validate()?;
        Ok(config)
    }

    /// The prefetch in effect: the setting, or unset, what the consumers lack of [`HELD`]; and
    /// never more jobs claimed ahead than the replica's rate limit starts in a second, so no
    /// replica hoards what others could start sooner.
    pub fn prefetch(&self) -> u32 {
        let prefetch = self
            .prefetch
            .unwrap_or_else(|| HELD.saturating_sub(self.consumers));
        if self.rate_per_second == 0 {
            prefetch
        } else {
            prefetch.min(self.rate_per_second)
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("poll_interval", self.poll_interval),
            ("control_interval", self.control_interval),
            ("dead_after", self.dead_after),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(ConfigError(format!(
                    "{name} ({}) must be longer than 0s",
                    env_name(name)
                )));
            }
        }
        if self.dead_after < Duration::from_millis(100) {
            return Err(ConfigError(format!(
                "dead_after ({}) must be at least 100ms, so that live jobs can prove they are alive",
                env_name("dead_after")
            )));
        }
        if !(1..=10_000).contains(&self.consumers) {
            return Err(ConfigError(format!(
                "consumers ({}) must be between 1 and 10000, got {}",
                env_name("consumers"),
                self.consumers
            )));
        }
        if let Some(prefetch) = self.prefetch
            && prefetch > 100_000
        {
            return Err(ConfigError(format!(
                "prefetch ({}) must be between 0 and 100000, got {prefetch}",
                env_name("prefetch"),
            )));
        }
        for table in &self.csv_tables {
            let reserved = ["jobs", "_sqlx_migrations"].contains(&table.as_str());
            if reserved || !crate::store::is_identifier(table) {
                return Err(ConfigError(format!(
                    "csv_tables ({}): {table:?} cannot be used; name plain tables other than jobs",
                    env_name("csv_tables")
                )));
            }
        }
        if !(1024..=1 << 30).contains(&self.max_payload_bytes) {
            return Err(ConfigError(format!(
                "max_payload_bytes ({}) must be between 1024 and 1073741824, got {}",
                env_name("max_payload_bytes"),
                self.max_payload_bytes
            )));
        }
        if let Some(queue) = self
            .queues
            .iter()
            .find(|queue| queue.is_empty() || queue.chars().count() > 128)
        {
            return Err(ConfigError(format!(
                "queues ({}): {queue:?} is not a queue name; names are 1 to 128 characters",
                env_name("queues")
            )));
        }
        if self.worker_id.trim().is_empty() || self.worker_id.len() > 200 {
            return Err(ConfigError(format!(
                "worker_id ({}) must be 1 to 200 characters",
                env_name("worker_id")
            )));
        }
        Ok(())
    }

    /// Rewritten every second by the running daemon, whatever the database does: its age is
    /// what `jobsd health` reads. `health_file` with `.live` added.
    pub fn liveness_file(&self) -> PathBuf {
        let mut name = self.health_file.clone().into_os_string();
        name.push(".live");
        name.into()
    }

    pub fn csv(&self) -> CsvSettings {
        CsvSettings {
            tables: self.csv_tables.clone(),
            dir: self.csv_dir.clone(),
        }
    }

    /// Connections this replica's pool may open: one per running job at most, plus the loops.
    pub fn pool_size(&self) -> u32 {
        self.consumers.min(16) + 4
    }

    /// How often the pruner looks for old finished rows: thirty polls, at most a minute.
    pub fn prune_interval(&self) -> Duration {
        (self.poll_interval * 30).min(Duration::from_secs(60))
    }

    /// How often a running job should prove it is alive: well inside `dead_after`.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.dead_after / 4).min(Duration::from_secs(1))
    }
}

/// How many claimed jobs a replica holds by default, its consumers' included: no-op jobs drain
/// fastest with about this many in flight (`jobsd bench` on PostgreSQL: with 24 consumers, 476
/// claimed ahead doubled the drain; with 500, any claimed ahead slowed it), and a claim's round
/// trip is hidden behind them.
pub const HELD: u32 = 500;

const DEFAULTS: &[(&str, &str)] = &[
    ("database_url", DEFAULT_DATABASE_URL),
    ("poll_interval", "1s"),
    ("control_interval", "1s"),
    ("dead_after", "10s"),
    ("consumers", "10"),
    ("rate_per_second", "50"),
    ("shutdown_grace", "25s"),
    ("retry_backoff", "1s"),
    ("worker_id", ""),
    ("log_format", "text"),
    ("csv_dir", "csv"),
    ("max_payload_bytes", "1048576"),
    ("health_file", "/tmp/jobsd.health"),
    ("retain_done", "7days"),
    ("retain_failed", "30days"),
];

/// The settings with no default value: unset, each means what its field says.
const UNSET_BY_DEFAULT: [&str; 2] = ["prefetch", "metrics_addr"];

fn env_name(setting: &str) -> String {
    format!("JOBSD_{}", setting.to_uppercase())
}

/// The `config` crate says "for key `x`"; add the environment variable people actually set.
fn explain(error: &config::ConfigError) -> String {
    let text = error.to_string();
    let named = DEFAULTS
        .iter()
        .map(|(key, _)| *key)
        .chain(UNSET_BY_DEFAULT)
        .find(|key| text.contains(&format!("`{key}`")));
    match named {
        Some(key) => format!("{key} ({}): {text}", env_name(key)),
        None => text,
    }
}

/// Reads the settings file, if there is one to read, and returns its `database_url`. A file
/// that is not TOML is refused by line and column, never with its text: the `config` crate
/// would quote the line, and it may hold a password. A file that cannot be read is left to
/// the `config` crate, which says so by name.
fn check_syntax(path: &Path) -> Result<Option<String>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            return Err(ConfigError(format!("{}: not UTF-8 text", path.display())));
        }
        Err(_) => return Ok(None),
    };
    match toml::from_str::<toml::Table>(&text) {
        Ok(table) => Ok(table
            .get("database_url")
            .and_then(toml::Value::as_str)
            .map(str::to_owned)),
        Err(error) => {
            let at = error.span().map_or(0, |span| span.start).min(text.len());
            let before = text.get(..at).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .map_or(0, |line| line.chars().count())
                + 1;
            Err(ConfigError(format!(
                "{} line {line}, column {column}: not valid TOML (the line is not shown: it may \
                 hold a password)",
                path.display()
            )))
        }
    }
}

/// This host's name, the default start of worker ids.
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "jobsd".to_owned())
}
