//! One fresh database per test, on the backend the test's module names. A test that passes
//! drops its database; one that fails keeps it, so it can be looked at.
//!
//! PostgreSQL and MariaDB/MySQL come from `JOBSD_TEST_POSTGRES_URL` and `JOBSD_TEST_MYSQL_URL`
//! (a server URL whose user may create databases). `scripts/test` skips a suite whose URL is
//! unset, and says so; run directly, such a test fails rather than pass without testing anything.

use std::future::Future;
use std::sync::{Arc, Once};
use std::time::Duration;

use jobsd::config::LogFormat;
use jobsd::store::{self, Store};
use jobsd::{Config, JobRow};
use rand::Rng;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

#[derive(Clone)]
pub struct TestDb {
    pub backend: Backend,
    /// The URL jobsd is given.
    pub url: String,
    name: String,
    /// The server URL databases are made and dropped through (not SQLite).
    server: Option<String>,
    /// Keeps the SQLite file's folder until the test ends.
    _folder: Option<Arc<tempfile::TempDir>>,
}

/// Creates a database for test `name` on `backend`, migrates it, runs `test`, and drops the
/// database if `test` returns (a panic skips the drop and keeps the database).
pub async fn run<F, Fut>(backend: Backend, name: &str, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    init_logging();
    let db = TestDb::create(backend, name).await;
    db.store().await.migrate().await.expect("migrations apply");
    test(db.clone()).await;
    db.drop_database().await;
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

fn server_url(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: scripts/test skips this suite when it is unset; set it to run it")
    })
}

impl TestDb {
    async fn create(backend: Backend, test: &str) -> TestDb {
        let suffix: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(8)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let short: String = test.chars().take(40).collect();
        let name = format!("jt_{short}_{suffix}");
        match backend {
            Backend::Sqlite => {
                let folder = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite://{}", folder.path().join("jobs.db").display());
                TestDb {
                    backend,
                    url,
                    name,
                    server: None,
                    _folder: Some(Arc::new(folder)),
                }
            }
            Backend::Postgres | Backend::Mysql => {
                let variable = if backend == Backend::Postgres {
                    "JOBSD_TEST_POSTGRES_URL"
                } else {
                    "JOBSD_TEST_MYSQL_URL"
                };
                let server = server_url(variable);
                admin(&server, &format!("CREATE DATABASE {name}")).await;
                let mut url = url::Url::parse(&server).expect("server URL parses");
                url.set_path(&format!("/{name}"));
                TestDb {
                    backend,
                    url: url.to_string(),
                    name,
                    server: Some(server),
                    _folder: None,
                }
            }
        }
    }

    async fn drop_database(&self) {
        if let Some(server) = &self.server {
            let force = if self.backend == Backend::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            admin(server, &format!("DROP DATABASE {}{force}", self.name)).await;
        }
    }

    /// A new store with its own pool: a separate replica, as far as the database can tell.
    pub async fn store(&self) -> Arc<dyn Store> {
        store::connect(&self.url, 8).await.expect("store connects")
    }

    /// Settings for tests: short intervals, no rate limit, real everything else.
    pub fn config(&self) -> Config {
        Config {
            database_url: self.url.clone(),
            poll_interval: Duration::from_millis(100),
            control_interval: Duration::from_millis(100),
            dead_after: Duration::from_secs(1),
            consumers: 10,
            prefetch: None,
            rate_per_second: 0,
            shutdown_grace: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(50),
            worker_id: "test".into(),
            log_format: LogFormat::Text,
            csv_tables: Vec::new(),
            csv_dir: ".".into(),
            max_payload_bytes: 1024 * 1024,
            queues: Vec::new(),
            metrics_addr: None,
            retain_done: Duration::from_secs(7 * 24 * 3600),
            retain_failed: Duration::from_secs(30 * 24 * 3600),
            health_file: std::env::temp_dir()
                .join(format!("jobsd-test-{}.health", std::process::id())),
        }
    }

    /// A raw SQL connection, as a user at psql, mariadb or sqlite3 would have.
    pub async fn sql(&self) -> AnyPool {
        sql_at(&self.url).await
    }

    /// Runs one statement as a user would, returning how many rows it touched.
    pub async fn exec(&self, statement: &str) -> Result<u64, sqlx::Error> {
        let pool = self.sql().await;
        let done = sqlx::query(statement).execute(&pool).await;
        pool.close().await;
        done.map(|done| done.rows_affected())
    }

    /// This backend's spelling of "now plus `seconds`" (negative for the past).
    pub fn now_plus(&self, seconds: i64) -> String {
        match self.backend {
            Backend::Postgres => format!("now() + interval '{seconds} seconds'"),
            Backend::Mysql => format!("NOW(6) + INTERVAL {seconds} SECOND"),
            Backend::Sqlite => {
                format!("strftime('%Y-%m-%d %H:%M:%f', 'now', '{seconds:+} seconds')")
            }
        }
    }

    pub async fn rows(&self, store: &Arc<dyn Store>, ids: &[i64]) -> Vec<JobRow> {
        store.rows(ids, 1_000_000).await.expect("rows read back")
    }

    /// Every row of the table, oldest first.
    pub async fn all_rows(&self) -> Vec<JobRow> {
        self.store()
            .await
            .rows(&[], 1_000_000)
            .await
            .expect("rows read back")
    }

    /// Waits until every row is in a terminal state, or panics after `limit`.
    pub async fn until_all_finished(&self, limit: Duration) -> Vec<JobRow> {
        let store = self.store().await;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let rows = store.rows(&[], 1_000_000).await.expect("rows read back");
            if rows.iter().all(|row| row.status.is_terminal()) {
                return rows;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs still unfinished after {limit:?}: {:?}",
                rows.iter()
                    .filter(|row| !row.status.is_terminal())
                    .map(|row| (row.id, row.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn admin(server: &str, statement: &str) {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach test server {}: {e}", store::redact(server)));
    sqlx::query(statement)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    pool.close().await;
}

/// Defines `sqlite::NAME`, `postgres::NAME` and `mysql::NAME` for each `async fn NAME(db: TestDb)`
/// listed, so the same test runs on every backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::Sqlite, stringify!($name), super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::Postgres, stringify!($name), super::$name).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::Mysql, stringify!($name), super::$name).await;
                }
            )*
        }
    };
}

/// Defines `MODULE::NAME` for each `async fn NAME(db: TestDb)` listed, on one backend only: what
/// only that backend's types allow. Name the module after the backend (`sqlite`, `mysql`), so
/// that `scripts/test` skips it with that backend's suite.
#[macro_export]
macro_rules! on_backend {
    ($backend:ident, $module:ident: $($name:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::$backend, stringify!($name), super::$name).await;
                }
            )*
        }
    };
}

/// A daemon running in this process, as one replica.
pub struct Replica {
    pub worker: String,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    pub async fn start(db: &TestDb, config: Config, handlers: jobsd::Handlers) -> Replica {
        let daemon = jobsd::Daemon::new(db.store().await, handlers, config);
        let worker = daemon.worker().to_owned();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(daemon.run(stop.clone()));
        Replica { worker, stop, task }
    }

    /// SIGTERM, in effect: returns once the daemon has drained.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("daemon task")
            .expect("daemon drains cleanly");
    }
}

/// The `jobsd` binary run in `folder`, with no settings from the environment the tests run in:
/// only what the test passes.
pub fn bare_jobsd(folder: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"));
    command.current_dir(folder).env_remove("DATABASE_URL");
    for (name, _) in std::env::vars() {
        if name.starts_with("JOBSD_") {
            command.env_remove(name);
        }
    }
    command
}

/// A raw SQL connection to any URL: another user's, another server's.
pub async fn sql_at(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("raw connection")
}
