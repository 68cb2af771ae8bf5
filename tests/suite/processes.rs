//! Real `jobsd run` processes, started, stopped and killed the way an orchestrator would: each
//! with its settings in the environment, its own health file, and its log in a file that failure
//! messages quote. A process still running when its handle is dropped (the test ended or
//! panicked) is killed.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::process::Child;

use crate::common::TestDb;

/// How many lines of a process's log a failure message quotes.
const TAIL: usize = 40;

/// Starts `jobsd run` processes on one database with shared settings. Their logs and health
/// files live in one temporary folder, kept (and named on stderr) when the test panics.
pub struct Launcher {
    database_url: String,
    /// `JOBSD_*` settings every process gets, before its own.
    settings: Vec<(String, String)>,
    folder: Option<tempfile::TempDir>,
    /// Numbers the processes, so that two started with one worker prefix get their own files.
    started: AtomicUsize,
    /// Arguments after `run`, such as `--no-migrate`.
    args: Vec<String>,
}

/// One `jobsd run` process.
pub struct Jobsd {
    /// The worker prefix it was given (`JOBSD_WORKER_ID`); the daemon appends a suffix.
    pub worker_id: String,
    /// The prefix and the process's number, for messages.
    pub name: String,
    child: Child,
    health_file: PathBuf,
    log_file: PathBuf,
}

impl Launcher {
    pub fn new(db: &TestDb, settings: &[(&str, &str)]) -> Launcher {
        Launcher::for_url(&db.url, settings)
    }

    /// Like [`new`](Self::new), for a database given by its URL alone.
    pub fn for_url(database_url: &str, settings: &[(&str, &str)]) -> Launcher {
        Launcher {
            database_url: database_url.to_owned(),
            settings: settings
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            folder: Some(tempfile::tempdir().expect("temporary folder")),
            started: AtomicUsize::new(0),
            args: Vec::new(),
        }
    }

    /// Gives every process `args` after `run`.
    pub fn with_args(mut self, args: &[&str]) -> Launcher {
        self.args = args.iter().map(|arg| (*arg).to_owned()).collect();
        self
    }

    fn folder(&self) -> &Path {
        self.folder.as_ref().expect("folder kept until drop").path()
    }

    /// Starts `jobsd run` with worker prefix `worker_id` and the shared settings.
    pub fn start(&self, worker_id: &str) -> Jobsd {
        self.start_with(worker_id, &[])
    }

    /// Like [`start`](Self::start), with `extra` settings over the shared ones.
    pub fn start_with(&self, worker_id: &str, extra: &[(&str, &str)]) -> Jobsd {
        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("{worker_id}#{number}");
        let health_file = self.folder().join(format!("{worker_id}-{number}.health"));
        let log_file = self.folder().join(format!("{worker_id}-{number}.log"));
        let log = std::fs::File::create(&log_file).expect("log file");
        // Only what this launcher says: no settings from the environment the tests run in.
        let mut command = crate::common::bare_jobsd(self.folder());
        command
            .arg("run")
            .args(&self.args)
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "info,sqlx=warn")
            .env("JOBSD_WORKER_ID", worker_id)
            .env("JOBSD_HEALTH_FILE", &health_file)
            .envs(self.settings.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().expect("jobsd run starts");
        Jobsd {
            worker_id: worker_id.to_owned(),
            name,
            child,
            health_file,
            log_file,
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(folder) = self.folder.take() {
            eprintln!("jobsd logs kept in {}", folder.keep().display());
        }
    }
}

impl Jobsd {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process has not been reaped")
    }

    /// Waits until the daemon has made a pass over the database (its health file exists),
    /// or panics after `limit`, or at once if it exited.
    pub async fn ready(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.health_file.exists() {
            self.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready after {limit:?}:\n{}",
                self.name,
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics, quoting the log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(exit) = self.child.try_wait().expect("process status") {
            panic!("{} exited early ({exit}):\n{}", self.name, self.tail());
        }
    }

    /// `kill -9`: no shutdown, no release; the process is gone when this returns.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let exit = self.child.wait().await.expect("killed process reaped");
        assert!(exit.code().is_none(), "{} was killed: {exit}", self.name);
    }

    /// SIGTERM, as Kubernetes sends to start a graceful shutdown; waits up to `limit` for the
    /// exit and returns its status.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent to {}", self.name);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(exit) => exit.expect("process status"),
            Err(_) => panic!(
                "{} still running {limit:?} after SIGTERM:\n{}",
                self.name,
                self.tail()
            ),
        }
    }

    /// SIGTERM and expect a clean exit (code 0) within `limit`.
    pub async fn stop(&mut self, limit: Duration) {
        let exit = self.terminate(limit).await;
        assert!(
            exit.success(),
            "{} exits 0 on SIGTERM, got {exit}:\n{}",
            self.name,
            self.tail()
        );
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(TAIL);
        format!("--- {} log ---\n{}", self.name, lines[from..].join("\n"))
    }

    /// The worker id the daemon announced when it started (`jobsd started worker=…`).
    pub fn announced_worker(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|line| line.contains("jobsd started"))?;
        let value = line.split("worker=").nth(1)?;
        Some(
            value
                .split_whitespace()
                .next()?
                .trim_matches('"')
                .to_owned(),
        )
    }
}
