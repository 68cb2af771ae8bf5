//! Bad input, with a real `jobsd run` process. Users insert rows with plain SQL, so the daemon
//! meets whatever they write: a kind nobody runs, a payload that is not JSON or does not fit its
//! kind, a negative sleep, a progress that is not JSON, a 10 MB payload. Bad rows end FAILED at
//! once (no attempt is wasted on a retry) with the reason in words, the good rows around them
//! run, the daemon stays up and its memory stays modest. Values outside the contract (`status`,
//! `control`) are refused by the database itself. Last, a database user with the least
//! privileges the daemon needs runs it, and one that may not migrate is told so in one line.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use jobsd::{JobRow, Status};
use rand::Rng;
use sqlx::AnyPool;

use crate::common::{Backend, TestDb};
use crate::reliability::processes::{Jobsd, Launcher};
use crate::reliability::{until, until_all_finished};

crate::on_every_backend!(bad_rows_fail_in_words_while_good_ones_run);

/// How long a process may take to start and make its first pass on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

/// How long a SIGTERMed process may take to exit: its shutdown grace plus a wide margin.
const EXIT: Duration = Duration::from_secs(30);

/// The size of the big payload's string.
const BIG: usize = 10 * 1024 * 1024;

/// The most the daemon's peak resident memory may grow while it runs the batch with the big
/// payload. The payload is held a few times over on its way (the row as read, the text kept with
/// the job, its parsed JSON): about 40 MiB on PostgreSQL and MariaDB. SQLite's own writes of a
/// row carry its whole record, payload included, and it costs about 100 MiB there. A copy per
/// poll or per consumer, or a payload that is never let go, would go far past these bounds.
fn max_growth_kib(backend: Backend) -> u64 {
    match backend {
        Backend::Sqlite => 180 * 1024,
        Backend::Postgres | Backend::Mysql => 90 * 1024,
    }
}

// === 1. A batch of good and bad rows ===

/// What a row of the batch is, and what must become of it.
struct Row {
    object_id: i64,
    kind: &'static str,
    sleep: Option<i64>,
    payload: Option<String>,
    progress: Option<&'static str>,
    /// `None`: DONE. `Some(words)`: FAILED, its `last_error` containing every one of `words`.
    fails_with: Option<&'static [&'static str]>,
}

impl Row {
    fn good(object_id: i64) -> Row {
        Row {
            object_id,
            kind: "sleep",
            sleep: Some(20_000_000),
            payload: None,
            progress: None,
            fails_with: None,
        }
    }

    fn bad(object_id: i64, kind: &'static str, words: &'static [&'static str]) -> Row {
        Row {
            kind,
            fails_with: Some(words),
            ..Row::good(object_id)
        }
    }

    fn payload(self, payload: &str) -> Row {
        Row {
            payload: Some(payload.to_owned()),
            ..self
        }
    }
}

/// One INSERT with bad rows between good ones, and a 10 MB payload for a kind that reads its
/// payload (`csv_import`, whose file and table exist, so it ends DONE). Every bad row may be
/// tried three times, yet must fail on its first attempt: another run cannot fix it.
async fn bad_rows_fail_in_words_while_good_ones_run(db: TestDb) {
    const BIG_ONE: i64 = 10;
    let csv_dir = tempfile::tempdir().expect("temporary folder");
    std::fs::write(
        csv_dir.path().join("people.csv"),
        "id,name\n1,one\n2,two\n3,three\n",
    )
    .expect("CSV file");
    db.exec("CREATE TABLE imported (id INTEGER, name VARCHAR(40))")
        .await
        .expect("table for the import");
    let big_payload = format!(
        r#"{{"path": "people.csv", "table": "imported", "note": "{}"}}"#,
        "x".repeat(BIG)
    );
    let batch = vec![
        Row::good(1),
        Row::bad(2, "no_such_kind", &["unknown job kind", "no_such_kind"]),
        Row::good(3),
        Row::bad(4, "csv_import", &["payload is not valid JSON"])
            .payload(r#"{"path": "people.csv", "table": "#),
        Row::good(5),
        Row {
            sleep: Some(-5),
            ..Row::bad(6, "sleep", &["sleep must not be negative", "-5"])
        },
        Row::good(7),
        Row::bad(
            8,
            "csv_import",
            &["payload does not fit kind", "csv_import"],
        )
        .payload(r#"{"path": 42}"#),
        Row::good(9),
        Row {
            kind: "csv_import",
            ..Row::good(BIG_ONE)
        }
        .payload(&big_payload),
        Row::good(11),
        Row {
            progress: Some("not json"),
            ..Row::bad(12, "sleep", &["progress is not valid JSON"])
        },
        Row::bad(13, "sleep", &["payload is not valid JSON"]).payload("hello"),
        Row::good(14),
    ];

    let csv_dir_setting = csv_dir.path().display().to_string();
    let launcher = Launcher::new(
        &db,
        &[
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_CONSUMERS", "4"),
            ("JOBSD_RATE_PER_SECOND", "0"),
            ("JOBSD_CSV_TABLES", "imported"),
            ("JOBSD_CSV_DIR", &csv_dir_setting),
            // The big payload is under the limit here: it runs, and memory stays modest.
            // (Over the limit it is never loaded at all: the hostile-row tests.)
            ("JOBSD_MAX_PAYLOAD_BYTES", "16777216"),
        ],
    );
    let mut daemon = launcher.start("bad");
    daemon.ready(STARTUP).await;
    let idle_peak = peak_rss_kib(&daemon);

    let values: Vec<String> = batch
        .iter()
        .map(|row| {
            let text = |value: Option<&str>| value.map_or("NULL".to_owned(), |v| format!("'{v}'"));
            format!(
                "({}, '{}', {}, {}, {}, {})",
                row.object_id,
                row.kind,
                row.sleep.map_or("NULL".to_owned(), |n| n.to_string()),
                text(row.payload.as_deref()),
                text(row.progress),
                if row.fails_with.is_some() { 3 } else { 1 },
            )
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO jobs (object_id, kind, sleep, payload, progress, max_attempts) VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("one INSERT of the whole batch, the 10 MB payload included");

    let store = db.store().await;
    let rows = until_all_finished(&store, Duration::from_secs(120)).await;
    daemon.assert_running();
    let peak = peak_rss_kib(&daemon);
    println!(
        "{:?}: daemon peak resident memory {} KiB idle, {} KiB after the batch",
        db.backend, idle_peak, peak
    );

    let by_object: HashMap<i64, &JobRow> = rows
        .iter()
        .map(|row| (row.object_id.expect("object_id"), row))
        .collect();
    assert_eq!(rows.len(), batch.len(), "{rows:?}");
    for row in &batch {
        let got = by_object[&row.object_id];
        assert_eq!(got.attempts, 1, "run once, never retried: {got:?}");
        assert!(
            got.finished_at.is_some() && got.cancelled_at.is_none(),
            "{got:?}"
        );
        match row.fails_with {
            None => assert_eq!(
                (got.status, got.last_error.as_deref()),
                (Status::Done, None),
                "{got:?}"
            ),
            Some(words) => {
                let error = got.last_error.as_deref().unwrap_or_default();
                assert!(
                    got.status == Status::Failed && words.iter().all(|w| error.contains(w)),
                    "FAILED, saying {words:?}: {got:?}"
                );
            }
        }
    }
    let pool = db.sql().await;
    let imported: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM imported")
        .fetch_one(&pool)
        .await
        .expect("imported rows");
    assert_eq!(imported, 3, "the job with the big payload did its work");
    let kept: i64 = sqlx::query_scalar(&format!(
        "SELECT LENGTH(payload) FROM jobs WHERE object_id = {BIG_ONE}"
    ))
    .fetch_one(&pool)
    .await
    .expect("payload length");
    assert_eq!(
        kept as usize,
        big_payload.len(),
        "the payload is kept as inserted"
    );

    refused_values(&db, &pool, by_object[&1].id).await;
    pool.close().await;
    daemon.assert_running();
    daemon.stop(EXIT).await;

    assert!(
        peak <= idle_peak + max_growth_kib(db.backend),
        "peak resident memory grew from {idle_peak} KiB to {peak} KiB for one 10 MB payload"
    );
    let log = daemon.log();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 10_000,
        "no log line quotes a payload: the longest has {longest} characters"
    );
}

/// The CHECK constraints refuse a `status` or `control` outside the contract, in an UPDATE (the
/// row is left as it was) and in an INSERT (no row is added), while the daemon runs.
async fn refused_values(db: &TestDb, pool: &AnyPool, id: i64) {
    let before = db.rows(&db.store().await, &[id]).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM jobs")
            .fetch_one(pool)
            .await
            .expect("count")
    };
    let rows_before = count().await;
    for statement in [
        format!("UPDATE jobs SET status = 'BOGUS' WHERE id = {id}"),
        format!("UPDATE jobs SET status = 'done' WHERE id = {id}"),
        format!("UPDATE jobs SET status = 'NEW', control = 'explode' WHERE id = {id}"),
        format!("UPDATE jobs SET control = 'explode' WHERE id = {id}"),
        "INSERT INTO jobs (sleep, status) VALUES (1, 'BOGUS')".to_owned(),
        "INSERT INTO jobs (sleep, control) VALUES (1, 'explode')".to_owned(),
    ] {
        match sqlx::query(&statement).execute(pool).await {
            Ok(done) => panic!(
                "{:?}: {statement} was accepted ({} rows)",
                db.backend,
                done.rows_affected()
            ),
            Err(error) => assert!(
                error.to_string().to_lowercase().contains("check"),
                "{statement} refused by a CHECK constraint, not otherwise: {error}"
            ),
        }
    }
    let after = db.rows(&db.store().await, &[id]).await;
    assert_eq!(
        format!("{after:?}"),
        format!("{before:?}"),
        "a refused UPDATE leaves the row as it was"
    );
    assert_eq!(count().await, rows_before, "a refused INSERT adds no row");
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(daemon: &Jobsd) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

// === 2. The least privileges the daemon needs ===

mod least_privilege {
    mod postgres {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_user_with_select_and_update_on_jobs_runs_the_daemon_but_cannot_migrate() {
            crate::common::run(
                crate::common::Backend::Postgres,
                "least_privilege",
                super::super::a_user_with_select_and_update_on_jobs_runs_the_daemon_but_cannot_migrate,
            )
            .await;
        }
    }

    mod mysql {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_user_with_select_and_update_on_jobs_runs_the_daemon_but_cannot_migrate() {
            crate::common::run(
                crate::common::Backend::Mysql,
                "least_privilege",
                super::super::a_user_with_select_and_update_on_jobs_runs_the_daemon_but_cannot_migrate,
            )
            .await;
        }
    }
}

/// Production runs `jobsd migrate` once as a privileged user, and the replicas with
/// `--no-migrate` as a user that may only read and update the `jobs`, `queues` and `schedules`
/// tables, and insert into `jobs` (the jobs of schedules): no DELETE, nothing on
/// `_sqlx_migrations`, nothing on the schema. Every write the daemon makes (claim, start,
/// heartbeat, finish, cancel as dead, terminate, release on shutdown, a schedule's slot) works
/// with that. Without `--no-migrate` that user cannot migrate, and the daemon says so in one line,
/// with what to do instead, and exits with code 2. No log line shows the password.
async fn a_user_with_select_and_update_on_jobs_runs_the_daemon_but_cannot_migrate(db: TestDb) {
    let mut user = DbUser::create(&db).await;
    let user_url = user.url(&db.url);
    let as_user = crate::common::sql_at(&user_url).await;
    for statement in [
        "INSERT INTO queues (name) VALUES ('q')",
        "DELETE FROM jobs",
        "DELETE FROM schedules",
        "SELECT COUNT(*) FROM _sqlx_migrations",
        "CREATE TABLE scratch (id INTEGER)",
    ] {
        let refused = sqlx::query(statement).execute(&as_user).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("denied")),
            "the user's privileges are only SELECT and UPDATE (and INSERT on jobs): {statement}: {refused:?}"
        );
    }
    as_user.close().await;

    let launcher = Launcher::for_url(
        &user_url,
        &[
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_CONTROL_INTERVAL", "200ms"),
            ("JOBSD_DEAD_AFTER", "2s"),
            ("JOBSD_CONSUMERS", "4"),
            ("JOBSD_RATE_PER_SECOND", "20"),
            ("JOBSD_SHUTDOWN_GRACE", "1s"),
        ],
    )
    .with_args(&["--no-migrate"]);
    let mut daemon = launcher.start("least");
    daemon.ready(STARTUP).await;
    // A schedule's slot: the daemon inserts its job, then the schedule is paused.
    db.exec("INSERT INTO schedules (name, cron, sleep) VALUES ('least', '* * * * * *', 1000)")
        .await
        .expect("a schedule added");
    let store = db.store().await;
    until(Duration::from_secs(30), async || {
        let rows = store.rows(&[], 100).await.map_err(|e| e.to_string())?;
        rows.iter()
            .any(|row| row.schedule.as_deref() == Some("least"))
            .then_some(())
            .ok_or_else(|| "no scheduled job yet".to_owned())
    })
    .await;
    let now = if db.backend == Backend::Postgres {
        "now()"
    } else {
        "NOW(6)"
    };
    db.exec(&format!(
        "UPDATE schedules SET paused_at = {now} WHERE name = 'least'"
    ))
    .await
    .expect("the schedule paused");
    // 1–8 run, 9 hangs (cancelled as dead), 10 is terminated, 11 is handed back by the shutdown.
    db.exec(
        "INSERT INTO jobs (object_id, sleep) VALUES (1, 50000000), (2, 50000000), \
         (3, 50000000), (4, 50000000), (5, 50000000), (6, 50000000), (7, 50000000), \
         (8, 50000000), (9, NULL), (10, 60000000000)",
    )
    .await
    .expect("jobs inserted by the application's user");
    let running = |object_id: i64| {
        let store = &store;
        async move || {
            let rows = store.rows(&[], 100).await.map_err(|e| e.to_string())?;
            let row = rows
                .iter()
                .find(|row| row.object_id == Some(object_id))
                .ok_or_else(|| format!("no job {object_id}"))?;
            (row.status == Status::Running)
                .then_some(row.id)
                .ok_or_else(|| format!("not running yet: {row:?}"))
        }
    };
    let long = until(Duration::from_secs(30), running(10)).await;
    db.exec(&format!(
        "UPDATE jobs SET control = 'terminate' WHERE id = {long}"
    ))
    .await
    .expect("terminate");
    until_all_finished(&store, Duration::from_secs(60)).await;
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (11, 60000000000)")
        .await
        .expect("insert");
    until(Duration::from_secs(30), running(11)).await;
    daemon.assert_running();
    daemon.stop(EXIT).await;

    let rows: HashMap<i64, JobRow> = db
        .all_rows()
        .await
        .into_iter()
        .filter(|row| row.schedule.is_none())
        .map(|row| (row.object_id.expect("object_id"), row))
        .collect();
    for n in 1..=8 {
        assert_eq!(
            (rows[&n].status, rows[&n].attempts),
            (Status::Done, 1),
            "{:?}",
            rows[&n]
        );
    }
    let said = |n: i64, words: &str| {
        rows[&n].status == Status::Cancelled
            && rows[&n]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(words))
    };
    assert!(said(9, "no sign of life"), "{:?}", rows[&9]);
    assert!(said(10, "terminated on request"), "{:?}", rows[&10]);
    assert_eq!(
        (
            rows[&11].status,
            rows[&11].attempts,
            rows[&11].worker.as_deref()
        ),
        (Status::New, 0, None),
        "handed back by the shutdown: {:?}",
        rows[&11]
    );
    assert_no_password(&daemon.log(), &user.password);

    // Without --no-migrate: the daemon tries to migrate first, and may not.
    let migrations = migrations_applied(&db).await;
    let folder = tempfile::tempdir().expect("temporary folder");
    let output = crate::common::bare_jobsd(folder.path())
        .arg("run")
        .env("DATABASE_URL", &user_url)
        .env("JOBSD_HEALTH_FILE", folder.path().join("health"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("jobsd run gives up within a minute")
        .expect("jobsd run starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "{:?}: `jobsd run` as the least-privileged user: {}, stderr:\n{stderr}",
        db.backend, output.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let denied = match db.backend {
        Backend::Postgres => "permission denied for schema public",
        _ => "CREATE command denied",
    };
    assert!(
        output.status.code() == Some(2)
            && lines.len() == 1
            && lines[0].starts_with("jobsd: cannot apply the migrations")
            && lines[0].matches(denied).count() == 1
            && lines[0].contains("--no-migrate"),
        "one line saying the migrations were denied and what to do, exit code 2: {}\n{stderr}",
        output.status
    );
    assert_no_password(&stderr, &user.password);
    assert_eq!(
        migrations_applied(&db).await,
        migrations,
        "the refused migration changed nothing"
    );

    user.drop_now().await;
}

async fn migrations_applied(db: &TestDb) -> i64 {
    let pool = db.sql().await;
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("migrations table");
    pool.close().await;
    count
}

/// A database user with SELECT and UPDATE on `jobs` only, and a password. It is dropped when the
/// guard goes, also when the test panics (roles outlive a PostgreSQL database).
pub(crate) struct DbUser {
    backend: Backend,
    /// The test database's own URL, whose user may create and drop users.
    admin_url: String,
    name: String,
    password: String,
    dropped: bool,
}

impl DbUser {
    pub(crate) async fn create(db: &TestDb) -> DbUser {
        let random = |n: usize| -> String {
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(n)
                .map(|c| char::from(c).to_ascii_lowercase())
                .collect()
        };
        let user = DbUser {
            backend: db.backend,
            admin_url: db.url.clone(),
            name: format!("jt_least_{}", random(8)),
            password: format!("pw{}", random(24)),
            dropped: false,
        };
        let statements = match db.backend {
            Backend::Postgres => vec![
                format!(
                    "CREATE ROLE {} LOGIN PASSWORD '{}'",
                    user.name, user.password
                ),
                format!("GRANT SELECT, INSERT, UPDATE ON jobs TO {}", user.name),
                format!("GRANT SELECT, UPDATE ON queues, schedules TO {}", user.name),
            ],
            _ => {
                let database = url::Url::parse(&db.url).expect("URL").path()[1..].to_owned();
                vec![
                    format!(
                        "CREATE USER '{}'@'%' IDENTIFIED BY '{}'",
                        user.name, user.password
                    ),
                    format!(
                        "GRANT SELECT, INSERT, UPDATE ON {database}.jobs TO '{}'@'%'",
                        user.name
                    ),
                    format!(
                        "GRANT SELECT, UPDATE ON {database}.queues TO '{}'@'%'",
                        user.name
                    ),
                    format!(
                        "GRANT SELECT, UPDATE ON {database}.schedules TO '{}'@'%'",
                        user.name
                    ),
                ]
            }
        };
        for statement in statements {
            db.exec(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        user
    }

    /// The database's URL with this user and password.
    pub(crate) fn url(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("URL");
        url.set_username(&self.name).expect("user name");
        url.set_password(Some(&self.password)).expect("password");
        url.to_string()
    }

    fn drop_statements(&self) -> Vec<String> {
        match self.backend {
            Backend::Postgres => vec![
                format!("REVOKE ALL ON jobs, queues, schedules FROM {}", self.name),
                format!("DROP ROLE {}", self.name),
            ],
            _ => vec![format!("DROP USER '{}'@'%'", self.name)],
        }
    }

    pub(crate) async fn drop_now(&mut self) {
        let pool = crate::common::sql_at(&self.admin_url).await;
        for statement in self.drop_statements() {
            sqlx::query(&statement)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        pool.close().await;
        self.dropped = true;
    }
}

impl Drop for DbUser {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // The test's runtime may be unwinding: a runtime of its own, on a thread of its own.
        let (url, statements) = (self.admin_url.clone(), self.drop_statements());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let pool = crate::common::sql_at(&url).await;
                for statement in statements {
                    let _ = sqlx::query(&statement).execute(&pool).await;
                }
                pool.close().await;
            });
        })
        .join();
    }
}

fn assert_no_password(log: &str, password: &str) {
    let shown: Vec<&str> = log.lines().filter(|line| line.contains(password)).collect();
    assert!(shown.is_empty(), "log lines show the password: {shown:?}");
}
