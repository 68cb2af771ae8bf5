//! The `jobsd` binary as a user runs it: the real defaults, the real signals, the real exit codes.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use jobsd::Status;
use tokio::process::Command;

use crate::common::{Backend, TestDb};

crate::on_every_backend!(
    the_binary_on_real_defaults_reproduces_the_original_table,
    csv_import_killed_mid_file_imports_every_row_exactly_once,
    bench_measures_every_workload_on_a_scratch_database,
    status_lists_what_it_can_read_beside_times_no_replica_holds,
);

/// `jobsd` with no settings from this environment: only what the test passes.
fn jobsd(folder: &Path) -> Command {
    let mut command = crate::common::bare_jobsd(folder);
    command.env("RUST_LOG", "info");
    command
}

async fn output(mut command: Command) -> Output {
    let run = command.stdin(Stdio::null()).output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("jobsd exits within a minute")
        .expect("jobsd starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn the_binary_on_real_defaults_reproduces_the_original_table(db: TestDb) {
    let folder = tempfile::tempdir().expect("folder");
    let mut command = jobsd(folder.path());
    command
        .arg("run")
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let daemon = command.spawn().expect("jobsd run starts");
    db.exec(
        "INSERT INTO jobs (object_id, sleep) VALUES (10, 1000000000), (10, NULL), (10, 1000000000)",
    )
    .await
    .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(30)).await;

    let pid = daemon.id().expect("pid").to_string();
    let signal = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(signal.expect("kill runs").success());
    let exit = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output())
        .await
        .expect("jobsd stops within the grace")
        .expect("jobsd exit status");
    let logs = text(&exit.stderr);
    assert!(
        exit.status.success(),
        "SIGTERM exits 0: {:?}\n{logs}",
        exit.status
    );

    let statuses: Vec<Status> = rows.iter().map(|row| row.status).collect();
    assert_eq!(
        statuses,
        [Status::Done, Status::Cancelled, Status::Done],
        "{logs}"
    );
    let stuck = &rows[1];
    let silent = stuck.cancelled_at.expect("cancelled_at") - stuck.started_at.expect("started_at");
    // dead_after is 10 s; the sweep runs every second, jittered by 10 %.
    assert!(
        silent >= chrono::Duration::seconds(10) && silent <= chrono::Duration::milliseconds(13_000),
        "cancelled {silent} after it started"
    );
    for row in &rows {
        let (queued, started, finished) = (
            row.queued_at.unwrap(),
            row.started_at.unwrap(),
            row.finished_at.unwrap(),
        );
        assert!(
            row.created_at <= queued && queued <= started && started <= finished,
            "{row:?}"
        );
    }
}

async fn csv_import_killed_mid_file_imports_every_row_exactly_once(db: TestDb) {
    const ROWS: i64 = 200_000;
    crate::files::create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    crate::files::orders_csv(&folder.path().join("orders.csv"), ROWS as u64);
    let store = db.store().await;
    let job = jobsd::NewJob {
        kind: Some("csv_import".into()),
        payload: Some(r#"{"path": "orders.csv", "table": "orders"}"#.into()),
        max_attempts: Some(3),
        ..jobsd::NewJob::default()
    };
    let id = store.insert(&job).await.expect("insert");
    let start = || {
        let mut command = jobsd(folder.path());
        command
            .arg("run")
            .env("DATABASE_URL", &db.url)
            .env("JOBSD_CSV_TABLES", "orders")
            .env("JOBSD_CSV_DIR", folder.path())
            .env("JOBSD_DEAD_AFTER", "1s")
            .env("JOBSD_POLL_INTERVAL", "200ms")
            .env("JOBSD_RETRY_BACKOFF", "100ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().expect("jobsd run starts")
    };
    let progress = |row: &jobsd::JobRow| -> i64 {
        let text = row.progress.as_deref().unwrap_or(r#"{"rows":0}"#);
        serde_json::from_str::<serde_json::Value>(text).expect("progress")["rows"]
            .as_i64()
            .expect("rows")
    };
    let count = || async {
        let pool = db.sql().await;
        let counted: (i64, i64) = sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM orders")
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        counted
    };

    let mut first = start();
    loop {
        if let Some(exit) = first.try_wait().expect("wait") {
            panic!("jobsd exited early: {exit:?}");
        }
        let row = db.rows(&store, &[id]).await.remove(0);
        assert_ne!(
            row.status,
            Status::Done,
            "the import finished before it could be killed"
        );
        if progress(&row) >= 20_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("killed");
    let killed = db.rows(&store, &[id]).await.remove(0);
    let checkpoint = progress(&killed);
    assert_eq!(killed.status, Status::Running, "killed mid-file");
    assert!(checkpoint < ROWS, "killed mid-file, at {checkpoint}");
    assert_eq!(
        count().await,
        (checkpoint, checkpoint),
        "exactly the checkpointed rows are in"
    );

    let mut second = start();
    let rows = db.until_all_finished(Duration::from_secs(120)).await;
    second.start_kill().expect("stop");
    second.wait().await.expect("stopped");
    let done = &rows[0];
    assert_eq!((done.status, done.attempts), (Status::Done, 2), "{done:?}");
    assert_eq!(progress(done), ROWS);
    assert_eq!(count().await, (ROWS, ROWS), "every row once, none twice");
}

#[tokio::test]
async fn demo_runs_in_an_empty_folder_on_the_defaults() {
    let folder = tempfile::tempdir().expect("folder");
    let mut command = jobsd(folder.path());
    command.arg("demo");
    let done = output(command).await;
    let (stdout, stderr) = (text(&done.stdout), text(&done.stderr));
    assert!(done.status.success(), "{stdout}\n{stderr}");
    assert!(
        folder.path().join("jobsd.db").exists(),
        "the embedded default database was created"
    );
    assert!(stdout.contains("9 jobs: 6 DONE, 3 CANCELLED"), "{stdout}");
    assert_eq!(stdout.matches("| DONE ").count(), 6, "{stdout}");
    assert_eq!(stdout.matches("| CANCELLED ").count(), 3, "{stdout}");

    let mut status = jobsd(folder.path());
    status.arg("status");
    let listed = output(status).await;
    assert!(listed.status.success());
    assert!(text(&listed.stdout).contains("9 jobs: 6 DONE, 3 CANCELLED"));
}

#[tokio::test]
async fn settings_come_from_jobsd_toml_and_the_environment_overrides_them() {
    let folder = tempfile::tempdir().expect("folder");
    std::fs::write(
        folder.path().join("jobsd.toml"),
        "database_url = \"sqlite://from-toml.db\"\ndead_after = \"1s\"\nconsumers = 99999\n",
    )
    .expect("write jobsd.toml");
    let mut command = jobsd(folder.path());
    command.args(["demo", "--jobs", "2"]);
    let done = output(command).await;
    assert_eq!(
        done.status.code(),
        Some(2),
        "consumers from the file is checked"
    );
    assert!(
        text(&done.stderr).contains("consumers"),
        "{}",
        text(&done.stderr)
    );

    let mut command = jobsd(folder.path());
    command
        .args(["demo", "--jobs", "2"])
        .env("JOBSD_CONSUMERS", "2");
    let done = output(command).await;
    let stdout = text(&done.stdout);
    assert!(done.status.success(), "{stdout}{}", text(&done.stderr));
    assert!(
        folder.path().join("from-toml.db").exists(),
        "database_url came from the file"
    );
    assert!(stdout.contains("2 jobs: 1 DONE, 1 CANCELLED"), "{stdout}");
    assert!(
        stdout.contains("no sign of life for 1s"),
        "dead_after came from the file: {stdout}"
    );

    let mut command = jobsd(folder.path());
    command.args(["--config", "missing.toml", "status"]);
    let done = output(command).await;
    assert_eq!(done.status.code(), Some(2));
    assert!(
        text(&done.stderr).contains("missing.toml"),
        "{}",
        text(&done.stderr)
    );
}

#[tokio::test]
async fn control_commands_write_exactly_what_the_sql_would() {
    let folder = tempfile::tempdir().expect("folder");
    let mut enqueue = jobsd(folder.path());
    enqueue.args([
        "enqueue",
        "sleep",
        "--sleep",
        "5000000000",
        "--run-at",
        "1h",
        "--max-attempts",
        "3",
    ]);
    let done = output(enqueue).await;
    assert!(done.status.success(), "{}", text(&done.stderr));
    let id: i64 = text(&done.stdout)
        .trim()
        .parse()
        .expect("enqueue prints the id");
    let row = |column: &str| {
        let sql = format!("SELECT {column} FROM jobs WHERE id = {id}");
        let out = std::process::Command::new("sqlite3")
            .arg(folder.path().join("jobsd.db"))
            .arg(sql)
            .output()
            .expect("sqlite3 runs");
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        row("status || ' ' || max_attempts || ' ' || sleep"),
        "NEW 3 5000000000"
    );
    assert!(
        row("run_at > strftime('%Y-%m-%d %H:%M:%f', 'now', '+50 minutes')") == "1",
        "delayed an hour"
    );
    for request in ["pause", "resume", "terminate"] {
        let mut command = jobsd(folder.path());
        command.args([request, &id.to_string()]);
        let done = output(command).await;
        assert!(done.status.success(), "{}", text(&done.stderr));
        assert_eq!(row("control"), request);
    }
    let mut missing = jobsd(folder.path());
    missing.args(["pause", "424242"]);
    let done = output(missing).await;
    assert_eq!(done.status.code(), Some(1));
    assert!(text(&done.stderr).contains("there is no job 424242"));
}

/// CPU seconds (user + system) the process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[tokio::test]
async fn a_hundred_paused_jobs_cost_next_to_no_cpu() {
    let folder = tempfile::tempdir().expect("folder");
    let url = format!("sqlite://{}", folder.path().join("jobsd.db").display());
    let mut command = jobsd(folder.path());
    command
        .arg("run")
        .env("DATABASE_URL", &url)
        .env("JOBSD_CONSUMERS", "100")
        .env("JOBSD_RATE_PER_SECOND", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let daemon = command.spawn().expect("jobsd run starts");
    let pid = daemon.id().expect("pid");
    let sql = |statement: String| {
        let out = std::process::Command::new("sqlite3")
            .arg(folder.path().join("jobsd.db"))
            .arg(statement)
            .output()
            .expect("sqlite3 runs");
        text(&out.stdout).trim().to_owned()
    };
    let count = |status: &str| {
        sql(format!(
            "SELECT count(*) FROM jobs WHERE status = '{status}'"
        ))
    };
    let until = |status: &'static str| async move {
        for _ in 0..200 {
            if count(status) == "100" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not all jobs {status}");
    };
    for _ in 0..100 {
        if folder.path().join("jobsd.db").exists()
            && !sql("SELECT count(*) FROM jobs".into()).is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sql(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100) \
         INSERT INTO jobs (sleep) SELECT 600000000000 FROM n"
            .into(),
    );
    until("RUNNING").await;
    sql("UPDATE jobs SET control = 'pause'".into());
    until("PAUSED").await;
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let used = cpu_seconds(pid) - before;
    println!("100 paused jobs: {used:.2} CPU seconds in 5 s");
    assert!(
        used < 0.5,
        "paused jobs should not use CPU: {used:.2} s in 5 s"
    );
    sql("UPDATE jobs SET control = 'terminate'".into());
    until("CANCELLED").await;
    let signal = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(signal.expect("kill runs").success());
    let exit = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output())
        .await
        .expect("jobsd stops")
        .expect("exit status");
    assert!(exit.status.success());
}

/// `jobsd health` (liveness) or `jobsd health --ready` (readiness) on `health_file`.
fn probe(folder: &Path, health_file: &Path, ready: bool, max_age: &str) -> Command {
    let mut command = jobsd(folder);
    command
        .arg("health")
        .args(ready.then_some("--ready"))
        .args(["--max-age", max_age])
        .env("JOBSD_HEALTH_FILE", health_file);
    command
}

#[tokio::test]
async fn the_health_probes_fail_without_a_daemon_pass_with_one_and_liveness_fails_when_the_loops_stop()
 {
    let folder = tempfile::tempdir().expect("folder");
    let health_file = folder.path().join("jobsd.health");
    let probes = || async {
        let live = output(probe(folder.path(), &health_file, false, "2s")).await;
        let ready = output(probe(folder.path(), &health_file, true, "2s")).await;
        (live, ready)
    };
    let (live, ready) = probes().await;
    assert_eq!(live.status.code(), Some(1), "no daemon yet: {live:?}");
    assert!(text(&live.stderr).contains("no sign of life"), "{live:?}");
    assert_eq!(ready.status.code(), Some(1), "no daemon yet: {ready:?}");
    assert!(text(&ready.stderr).contains("not ready"), "{ready:?}");

    let mut command = jobsd(folder.path());
    command
        .arg("run")
        .env("JOBSD_HEALTH_FILE", &health_file)
        .env("JOBSD_POLL_INTERVAL", "200ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let daemon = command.spawn().expect("jobsd run starts");
    let pid = daemon.id().expect("pid").to_string();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &pid])
            .status();
        assert!(sent.expect("kill runs").success());
    };
    let mut both = false;
    for _ in 0..100 {
        let (live, ready) = probes().await;
        if live.status.success() && ready.status.success() {
            assert!(text(&live.stdout).starts_with("alive"), "{live:?}");
            assert!(text(&ready.stdout).starts_with("ready"), "{ready:?}");
            both = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(both, "both probes pass while the daemon runs");

    // A stopped process is the hung daemon a liveness probe exists for.
    signal("-STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (live, ready) = probes().await;
    signal("-CONT");
    assert_eq!(
        live.status.code(),
        Some(1),
        "liveness fails when the loops stop"
    );
    assert!(
        text(&live.stderr).contains("loops have stopped"),
        "{}",
        text(&live.stderr)
    );
    assert_eq!(ready.status.code(), Some(1), "so does readiness");
    signal("-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output())
        .await
        .expect("jobsd stops")
        .expect("exit status");
    assert!(exit.status.success());
    let (live, ready) = probes().await;
    assert!(
        !live.status.success() && !ready.status.success(),
        "a stopped daemon leaves no file a probe could take for a live one"
    );
}

/// Whether any of `secrets` shows in `output`, naming the first found.
fn shown<'a>(output: &str, secrets: &[&'a str]) -> Option<&'a str> {
    secrets
        .iter()
        .copied()
        .find(|secret| output.contains(secret))
}

/// Every command that prints a database URL, on URLs with a password in every form, refused
/// (nothing listens on port 1; some URLs cannot be parsed at all): one line, exit 2, the
/// password in none of its spellings on stdout or stderr, `***` in its place.
#[tokio::test]
async fn no_form_of_password_in_a_refused_url_is_ever_printed() {
    let urls: &[(&str, &[&str])] = &[
        ("postgres://u@127.0.0.1:1/db?password=S3CRET", &["S3CRET"]),
        ("postgres://u:S3CRET@127.0.0.1:1/db", &["S3CRET"]),
        (
            "postgres://u@127.0.0.1:1/db?PASSWORD=S3CRET&sslpassword=S3CRET2",
            &["S3CRET", "S3CRET2"],
        ),
        (
            "postgres://u@127.0.0.1:1/db?Password=S3%2FCRET",
            &["S3%2FCRET", "S3/CRET"],
        ),
        ("mysql://u:S3%43RET@127.0.0.1:1/db", &["S3%43RET", "S3CRET"]),
        // Not parsed by the `url` crate: a bad port, a `/` in the password.
        ("postgres://u:S3CRET@127.0.0.1:notaport/db", &["S3CRET"]),
        ("postgres://u:S3/CRET@127.0.0.1/db", &["S3/CRET", "CRET"]),
        // Parsed, then refused by the driver, whose message quotes the value.
        (
            "postgres://u@127.0.0.1:1/db?sslmode=S3CRET&password=S3CRET",
            &["S3CRET"],
        ),
        ("sqlite://jobs.db?password=S3CRET", &["S3CRET"]),
    ];
    for &(url, secrets) in urls {
        for format in ["text", "json"] {
            for command in ["status", "migrate", "run", "bench"] {
                let folder = tempfile::tempdir().expect("folder");
                let mut jobsd = jobsd(folder.path());
                jobsd
                    .arg(command)
                    .env("DATABASE_URL", url)
                    .env("JOBSD_LOG_FORMAT", format)
                    .env("RUST_LOG", "debug");
                let done = output(jobsd).await;
                let (stdout, stderr) = (text(&done.stdout), text(&done.stderr));
                let all = format!("{stdout}{stderr}");
                assert_eq!(done.status.code(), Some(2), "{command} on {url}: {all}");
                assert_eq!(shown(&all, secrets), None, "{command} on {url}: {all}");
                let last = stderr.trim_end().lines().last().unwrap_or_default();
                assert!(last.starts_with("jobsd: "), "{command} on {url}: {all}");
                assert!(last.contains("***"), "{command} on {url}: {all}");
            }
        }
    }
}

/// PostgreSQL (whose test server trusts local connections, so a password is given but never
/// checked) and MariaDB take passwords in the user info and in query parameters, some of which
/// the driver does not know and logs with their values. `migrate`, `status`, and `run` until
/// SIGTERM, in text and JSON logs, print none of them.
async fn a_working_daemon_never_prints_the_password(db: TestDb) {
    const SECRETS: &[&str] = &["S3CRET1", "S3CRET2", "S3CRET3", "S3CRET4"];
    let mut url = url::Url::parse(&db.url).expect("test URL");
    if db.backend == Backend::Postgres {
        url.set_password(Some("S3CRET1")).expect("a password");
    }
    url.query_pairs_mut()
        .append_pair("password", "S3CRET2")
        .append_pair("PASSWORD", "S3CRET3")
        .append_pair("sslpassword", "S3CRET4");
    let url = url.to_string();
    let folder = tempfile::tempdir().expect("folder");
    let health_file = folder.path().join("jobsd.health");
    let with_url = |command: &str, format: &str| {
        let mut jobsd = jobsd(folder.path());
        jobsd
            .arg(command)
            .env("DATABASE_URL", &url)
            .env("JOBSD_LOG_FORMAT", format)
            .env("JOBSD_HEALTH_FILE", &health_file)
            .env("JOBSD_POLL_INTERVAL", "200ms");
        jobsd
    };
    let mut printed = String::new();
    for format in ["text", "json"] {
        let migrated = output(with_url("migrate", format)).await;
        let status = output(with_url("status", format)).await;
        for done in [&migrated, &status] {
            printed += &text(&done.stdout);
            printed += &text(&done.stderr);
            assert!(done.status.success(), "{printed}");
        }
        assert!(text(&migrated.stdout).contains("password=***"), "{printed}");

        let mut run = with_url("run", format);
        run.stdout(Stdio::piped()).stderr(Stdio::piped());
        let daemon = run.spawn().expect("jobsd run starts");
        let mut ready = false;
        for _ in 0..200 {
            if output(probe(folder.path(), &health_file, true, "5s"))
                .await
                .status
                .success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pid = daemon.id().expect("pid").to_string();
        let signal = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(signal.expect("kill runs").success());
        let exit = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output())
            .await
            .expect("jobsd stops within the grace")
            .expect("exit status");
        printed += &text(&exit.stdout);
        printed += &text(&exit.stderr);
        assert!(ready, "the daemon reached the database: {printed}");
        assert!(exit.status.success(), "{printed}");
        assert!(printed.contains("jobsd stopped"), "{printed}");
    }
    assert_eq!(shown(&printed, SECRETS), None, "{printed}");
    assert!(printed.contains("***"), "{printed}");
}

mod with_a_password {
    use crate::common::{Backend, run};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_working_daemon_never_prints_the_password() {
        run(
            Backend::Postgres,
            "never_prints",
            super::a_working_daemon_never_prints_the_password,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_a_working_daemon_never_prints_the_password() {
        run(
            Backend::Mysql,
            "never_prints",
            super::a_working_daemon_never_prints_the_password,
        )
        .await;
    }
}

/// A settings file that is not TOML may hold a password on the bad line: jobsd names the file
/// and the line, and quotes nothing of it.
#[tokio::test]
async fn a_settings_file_with_a_syntax_error_is_named_by_line_never_quoted() {
    for (file, line) in [
        (
            "consumers = 2\ndatabase_url = \"postgres://u:S3CRET@db/jobs\n",
            2,
        ),
        (
            "# jobsd\nconsumers = 2\n\ndatabase_url = postgres://u:S3CRET@db/jobs\n",
            4,
        ),
        (
            "consumers = 2\npassword = \"S3CRET\"\npassword = \"S3CRET\"\n",
            3,
        ),
    ] {
        let folder = tempfile::tempdir().expect("folder");
        std::fs::write(folder.path().join("jobsd.toml"), file).expect("write jobsd.toml");
        for config in [None, Some("jobsd.toml")] {
            let mut command = jobsd(folder.path());
            if let Some(config) = config {
                command.args(["--config", config]);
            }
            command.arg("status");
            let done = output(command).await;
            let (stdout, stderr) = (text(&done.stdout), text(&done.stderr));
            assert_eq!(done.status.code(), Some(2), "{file:?}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains(&format!("jobsd.toml line {line},")),
                "{file:?}: {stderr}"
            );
            assert!(stderr.contains("not valid TOML"), "{stderr}");
            assert_eq!(
                shown(&format!("{stdout}{stderr}"), &["S3CRET"]),
                None,
                "{stderr}"
            );
        }
    }
}

/// Runs `jobsd migrate` with `settings` and expects exit 2 and one line naming `words`.
async fn refused(settings: &[(&str, &str)], words: &str) -> String {
    let folder = tempfile::tempdir().expect("folder");
    let mut command = jobsd(folder.path());
    command.arg("migrate").envs(settings.iter().copied());
    let done = output(command).await;
    let stderr = text(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{settings:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(words),
        "{settings:?}: {stderr:?} should mention {words:?}"
    );
    assert!(
        !folder.path().join("jobsd.db").exists(),
        "nothing was created"
    );
    stderr
}

#[tokio::test]
async fn bad_settings_exit_2_with_one_line_naming_the_setting() {
    refused(&[("JOBSD_CONSUMERS", "lots")], "JOBSD_CONSUMERS").await;
    refused(&[("JOBSD_CONSUMERS", "0")], "JOBSD_CONSUMERS").await;
    refused(&[("JOBSD_DEAD_AFTER", "soon")], "JOBSD_DEAD_AFTER").await;
    refused(&[("JOBSD_POLL_INTERVAL", "0s")], "JOBSD_POLL_INTERVAL").await;
    refused(&[("JOBSD_RATE_PER_SECOND", "-1")], "JOBSD_RATE_PER_SECOND").await;
    refused(&[("JOBSD_LOG_FORMAT", "xml")], "JOBSD_LOG_FORMAT").await;
    refused(&[("DATABASE_URL", "oracle://db/jobs")], "database_url").await;
}

#[tokio::test]
async fn an_unreachable_database_exits_2_without_showing_the_password() {
    let line = refused(
        &[("DATABASE_URL", "postgres://app:s3cret@127.0.0.1:1/jobs")],
        "cannot reach the database",
    )
    .await;
    assert!(!line.contains("s3cret"), "{line}");
    assert!(line.contains("app:***@127.0.0.1:1"), "{line}");
}

/// `jobsd bench` with small figures: every workload runs and reports what it measured, on a
/// scratch database beside the given one, and the rate limit holds without a burst.
async fn bench_measures_every_workload_on_a_scratch_database(db: TestDb) {
    let folder = tempfile::tempdir().expect("folder");
    let mut command = jobsd(folder.path());
    command
        .args(["bench", "--jobs", "300", "--history", "300"])
        .args(["--consumers", "50", "--rate-for", "2s"])
        .env("DATABASE_URL", &db.url);
    let out = output(command).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("a JSON line last: {stdout}"));
    let figure = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {report}"))
    };
    assert!(figure("w1_jobs_per_second") > 0.0 && figure("w5_jobs_per_second") > 0.0);
    assert_eq!((figure("jobs"), figure("consumers")), (300.0, 50.0));
    let statements = report["w1_statements_per_job"].as_f64();
    match db.backend {
        Backend::Sqlite => assert_eq!(statements, None, "SQLite keeps no count"),
        _ => assert!(
            statements.is_some_and(|s| s > 0.0 && s < 3.0),
            "a few statements per job at most: {report}"
        ),
    }
    let pickup = [
        figure("w2_pickup_ms_p50"),
        figure("w2_pickup_ms_p95"),
        figure("w2_pickup_ms_p99"),
    ];
    assert!(
        pickup[0] >= 0.0 && pickup[0] <= pickup[1] && pickup[1] <= pickup[2],
        "{report}"
    );
    // 100 starts at 50/s, one at a time: no calendar second holds more than 50.
    let busiest = figure("w3_busiest_second");
    assert!(busiest > 0.0 && busiest <= 50.0, "{report}");
    let rate = figure("w3_starts_per_second");
    assert!((40.0..=51.0).contains(&rate), "{report}");
    let (peak, idle) = (figure("w4_peak_rss_mib"), figure("w4_idle_rss_mib"));
    assert!(peak > 1.0 && peak < 200.0 && idle <= peak, "{report}");
    for workload in ["W1 drain", "W2 pickup", "W3 rate", "W4 memory", "W5 drain"] {
        assert!(
            stdout.contains(workload),
            "{workload} in the table: {stdout}"
        );
    }
}

/// A time the column type takes but no replica's clock type holds (PostgreSQL's `infinity` and
/// years past 9999, a SQLite text that is no time) never stops `jobsd status`: a row that must
/// have that time is left out with a warning, one that may lack it shows without it, and the
/// counts and every other row show.
async fn status_lists_what_it_can_read_beside_times_no_replica_holds(db: TestDb) {
    // PostgreSQL takes them; MySQL's TIMESTAMP columns and SQLite's checks refuse them, and
    // the rows are written with times that are fine there.
    let (never, far) = match db.backend {
        Backend::Postgres => ("'infinity'", "'294276-12-31 23:59:59+00'"),
        Backend::Mysql | Backend::Sqlite => {
            let refused = db
                .exec("INSERT INTO jobs (object_id, sleep, created_at) VALUES (0, 0, '10000-01-01 00:00:00')")
                .await;
            assert!(refused.is_err(), "the database refuses a time past 9999");
            ("'2026-01-01 00:00:00'", "'2026-01-01 00:00:00'")
        }
    };
    db.exec(&format!(
        "INSERT INTO jobs (object_id, sleep, created_at) VALUES (1, 0, {never})"
    ))
    .await
    .expect("a row created at no time a replica holds");
    db.exec(&format!(
        "INSERT INTO jobs (object_id, sleep, status, finished_at) VALUES (2, 0, 'DONE', {far})"
    ))
    .await
    .expect("a row finished far beyond");
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (3, 0)")
        .await
        .expect("a plain row");
    let folder = tempfile::tempdir().expect("folder");
    let mut status = jobsd(folder.path());
    status.arg("status").env("DATABASE_URL", &db.url);
    let listed = output(status).await;
    let (stdout, stderr) = (text(&listed.stdout), text(&listed.stderr));
    assert!(listed.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    if db.backend == Backend::Postgres {
        assert!(
            stderr.contains("a row cannot be read; left out")
                && stderr
                    .contains("column \"created_at\" is NULL or holds a time no replica can hold"),
            "the row left out is named, and why: {stderr}"
        );
    }
    assert!(stdout.contains("3 jobs: 2 NEW, 1 DONE"), "{stdout}");
    let shown: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("| "))
        .collect();
    assert!(
        shown.iter().any(|line| line.contains("| DONE ")),
        "the DONE row shows, without a finish time no replica holds: {stdout}"
    );
    assert!(
        shown.iter().filter(|line| line.contains("| NEW ")).count() >= 1,
        "the plain row shows: {stdout}"
    );
}
