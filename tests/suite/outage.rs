//! Database outages, with real processes: a `jobsd run` process works through a backlog while
//! its database server is stopped for 15 s and started again. The server is the test's own (its
//! own data directory, port and socket folder), so stopping it disturbs no other test. The daemon
//! must stay up, finish every job exactly once, log the outage a bounded number of times (its
//! loops back off rather than hammer a server that is down), never show the password, and on
//! PostgreSQL be woken by NOTIFY again once the server is back. A job that has finished must not
//! be taken for dead while its outcome waits to be written, behind an outage or a slow write.
//! Through an outage the liveness probe must pass all along (Kubernetes would restart a pod
//! that fails it), and the readiness probe fail, then pass again once the server is back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jobsd::store::Store;
use jobsd::{JobRow, Status};
use rand::Rng;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use tokio::process::Command;
use tokio::time::Instant;

use crate::common::{Backend, TestDb};
use crate::reliability::processes::{Jobsd, Launcher};
use crate::reliability::{
    Change, Job, history_on, insert, record_history_on, until, until_all_finished,
};

/// How long the server stays down.
const OUTAGE: Duration = Duration::from_secs(15);

/// How long a process may take to start and make its first pass on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

/// How long a SIGTERMed process may take to exit: its shutdown grace plus a wide margin.
const EXIT: Duration = Duration::from_secs(30);

/// How long a server may take to start or stop on a loaded machine.
const SERVER: Duration = Duration::from_secs(60);

/// The most warnings and errors the daemon may log about one 15 s outage. Its three loops
/// (new jobs, dead jobs, control) poll every 200 ms here: logging at every poll would be
/// 3 × 15 s / 200 ms = 225 lines. Backing off (doubling from the interval up to 5 s) allows
/// about 7 failed passes per loop in 15 s, so 21, plus the completer's 8 tries, LISTEN's
/// doubling retries (about 8), one "could not start" per consumer slot, and sqlx's warning for
/// each loop whose wait for a connection outlasted the outage: about 50 at worst.
const MAX_OUTAGE_LINES: usize = 60;

/// How soon a job inserted on PostgreSQL starts when NOTIFY wakes the daemon; its poll is 30 s.
const PICKUP: Duration = Duration::from_secs(5);

/// How long the server stays down while the probes are watched.
const PROBED_OUTAGE: Duration = Duration::from_secs(12);

/// The `--max-age` of both probes while they are watched.
const PROBE_AGE: Duration = Duration::from_secs(5);

/// How often the probes are run, as a kubelet would, only more often.
const PROBE_EVERY: Duration = Duration::from_millis(500);

mod postgres {
    use crate::common::{Backend, run};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_mid_backlog_loses_nothing_and_runs_nothing_twice() {
        super::an_outage_mid_backlog_loses_nothing_and_runs_nothing_twice(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_job_whose_lease_lapses_is_given_back_and_runs_again() {
        super::a_running_job_whose_lease_lapses_is_given_back_and_runs_again().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notify_wakes_the_daemon_again_after_an_outage() {
        super::notify_wakes_the_daemon_again_after_an_outage().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn liveness_passes_throughout_an_outage_and_readiness_follows_the_database() {
        super::liveness_passes_throughout_an_outage_and_readiness_follows_the_database(
            Backend::Postgres,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_job_is_not_taken_for_dead_while_its_outcome_waits() {
        run(
            Backend::Postgres,
            "outcome_waits",
            super::a_finished_job_is_not_taken_for_dead_while_its_outcome_waits,
        )
        .await;
    }
}

mod mysql {
    use crate::common::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_mid_backlog_loses_nothing_and_runs_nothing_twice() {
        super::an_outage_mid_backlog_loses_nothing_and_runs_nothing_twice(Backend::Mysql).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn liveness_passes_throughout_an_outage_and_readiness_follows_the_database() {
        super::liveness_passes_throughout_an_outage_and_readiness_follows_the_database(
            Backend::Mysql,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_against_a_database_that_does_not_answer_ends_in_bounded_time() {
        super::a_shutdown_against_a_database_that_does_not_answer_ends_in_bounded_time().await;
    }
}

// === 1. A backlog across an outage ===

/// What a daemon did with a backlog across an outage, read back once it was all finished.
struct Ridden {
    backend: Backend,
    jobs: i64,
    rows: Vec<JobRow>,
    history: BTreeMap<i64, Vec<Change>>,
    /// When the server answered again.
    back: chrono::DateTime<chrono::Utc>,
    /// The daemon's whole log, and where the outage began in it.
    log: String,
    log_at_stop: usize,
    password: String,
}

/// A backlog of short jobs; a quarter in, the server stops for 15 s, then comes back. The daemon
/// stays up throughout (checked every half second) and finishes the backlog; the rows and the
/// history of their status changes (which a trigger records) are returned once every job is
/// finished. PostgreSQL runs without a rate limit (a claim starts its jobs in the same write);
/// MariaDB with one, so that jobs also wait QUEUED in the daemon's memory when the server goes.
async fn ride_out_an_outage(backend: Backend) -> Ridden {
    const CONSUMERS: i64 = 4;
    let (jobs, rate) = match backend {
        Backend::Postgres => (400, "0"),
        _ => (200, "20"),
    };
    let mut server = PrivateServer::start(backend).await;
    let url = server.url();
    let store = connect(&url).await;
    store.migrate().await.expect("migrations apply");
    let sql = crate::common::sql_at(&url).await;
    record_history_on(backend, &sql).await;

    let consumers = CONSUMERS.to_string();
    let launcher = Launcher::for_url(
        &url,
        &[
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_CONTROL_INTERVAL", "200ms"),
            ("JOBSD_DEAD_AFTER", "3s"),
            ("JOBSD_CONSUMERS", &consumers),
            ("JOBSD_RATE_PER_SECOND", rate),
            ("JOBSD_SHUTDOWN_GRACE", "5s"),
        ],
    );
    let mut daemon = launcher.start("outage");
    daemon.ready(STARTUP).await;
    let backlog: Vec<Job> = (1..=jobs)
        .map(|n| Job::sleep(n, 50 + (n * 7) % 51))
        .collect();
    insert(&sql, &backlog).await;
    sql.close().await;

    until(Duration::from_secs(60), async || {
        daemon.assert_running();
        let done = count(&store, Status::Done).await;
        (done >= jobs / 4)
            .then_some(())
            .ok_or_else(|| format!("{done} of {jobs} done"))
    })
    .await;
    let open_at_stop = jobs - count(&store, Status::Done).await;
    let log_at_stop = daemon.log().len();
    let down = server.outage(&mut daemon).await;
    let back = chrono::Utc::now();
    println!(
        "{backend:?}: server down {down:.1?}, {open_at_stop} of {jobs} jobs unfinished when it stopped"
    );
    assert!(
        open_at_stop > jobs / 2,
        "the server stopped mid-run: {open_at_stop} of {jobs} unfinished"
    );

    let store = connect(&url).await;
    let rows = until_all_finished(&store, Duration::from_secs(120)).await;
    daemon.assert_running();
    let sql = crate::common::sql_at(&url).await;
    let history = history_on(&sql).await;
    sql.close().await;
    daemon.stop(EXIT).await;
    let worker = daemon
        .announced_worker()
        .expect("the daemon logs its worker id");
    assert_eq!(rows.len() as i64, jobs, "no job lost, none added");
    for row in &rows {
        assert_eq!(row.worker.as_deref(), Some(worker.as_str()), "{row:?}");
    }
    Ridden {
        backend,
        jobs,
        rows,
        history,
        back,
        log: daemon.log(),
        log_at_stop,
        password: server.password.clone(),
    }
}

/// The daemon rides out the outage: nothing is lost, no job is started or finished twice, none
/// fails, the work goes on after the outage, and the outage costs a bounded number of log lines,
/// none of which shows the password. Jobs that finish while the server is down end DONE too:
/// their outcomes wait for the server, and the replica vouches for them meanwhile.
async fn an_outage_mid_backlog_loses_nothing_and_runs_nothing_twice(backend: Backend) {
    let ridden = ride_out_an_outage(backend).await;
    let Ridden { jobs, back, .. } = ridden;
    let mut requeued = 0;
    for row in &ridden.rows {
        let path = &ridden.history[&row.id];
        let entered = |to: &str| path.iter().filter(|c| c.to == to).count();
        let starts = path.iter().filter(|c| c.starts()).count();
        assert_eq!(
            (starts, entered("DONE")),
            (1, 1),
            "job {} started once and finished once: {path:?}",
            row.id
        );
        assert!(
            path.iter()
                .all(|c| !matches!(c.to.as_str(), "FAILED" | "PAUSED")),
            "job {}: {path:?}",
            row.id
        );
        // A job that waited QUEUED through the outage may have been handed back to NEW (its
        // start could not be written); that costs no attempt, and it then ran once.
        for change in path.iter().filter(|c| c.is("QUEUED", "NEW")) {
            assert_eq!(
                change.attempts, 0,
                "handed back before it ever ran: {path:?}"
            );
            requeued += 1;
        }
        assert_eq!(row.attempts, 1, "{row:?}");
        match row.status {
            Status::Done => {
                assert!(
                    row.last_error.is_none() && row.cancelled_at.is_none(),
                    "{row:?}"
                );
            }
            _ => panic!("{row:?}"),
        }
    }
    let after = ridden
        .rows
        .iter()
        .filter(|row| row.finished_at.is_some_and(|at| at >= back))
        .count() as i64;
    assert!(
        after >= jobs / 2,
        "the work went on after the outage: only {after} of {jobs} finished after the restart"
    );

    let problems = problem_lines(&ridden.log);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for line in &problems {
        *kinds.entry(message_of(line)).or_default() += 1;
    }
    println!(
        "{:?}: {} warnings about the outage; {requeued} queued jobs handed back: {kinds:#?}",
        ridden.backend,
        problems.len()
    );
    let outage_log = &ridden.log[ridden.log_at_stop..];
    assert!(
        outage_log.contains("database error"),
        "the outage was noticed and logged:\n{outage_log}"
    );
    assert!(
        outage_log.contains("database answers again"),
        "the recovery was logged:\n{outage_log}"
    );
    assert!(
        problems.len() <= MAX_OUTAGE_LINES,
        "a 15 s outage logged in {} lines, more than {MAX_OUTAGE_LINES}: the loops do not back \
         off:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_no_password(&ridden.log, &ridden.password);
}

// === 2. NOTIFY after an outage ===

/// On PostgreSQL the daemon is woken by NOTIFY when jobs are inserted; its poll is only the
/// fallback. The LISTEN connection dies with the server, and must come back with it: with a
/// 30 s poll, a job inserted after the outage starts within seconds only if NOTIFY woke the
/// daemon.
async fn notify_wakes_the_daemon_again_after_an_outage() {
    let mut server = PrivateServer::start(Backend::Postgres).await;
    let url = server.url();
    let store = connect(&url).await;
    store.migrate().await.expect("migrations apply");
    let launcher = Launcher::for_url(
        &url,
        &[
            ("JOBSD_POLL_INTERVAL", "30s"),
            ("JOBSD_CONTROL_INTERVAL", "30s"),
            ("JOBSD_CONSUMERS", "4"),
            ("JOBSD_RATE_PER_SECOND", "0"),
        ],
    );
    let mut daemon = launcher.start("notify");
    daemon.ready(STARTUP).await;
    let sql = crate::common::sql_at(&url).await;
    listening(&sql, &mut daemon, Duration::from_secs(30)).await;
    // The pass that follows LISTEN's start is over; from now on only NOTIFY wakes the daemon.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pickup(&sql, &store, &mut daemon, 1).await;
    sql.close().await;

    server.outage(&mut daemon).await;
    let back = Instant::now();
    let sql = crate::common::sql_at(&url).await;
    listening(&sql, &mut daemon, Duration::from_secs(40)).await;
    let relistened = back.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store = connect(&url).await;
    let after = pickup(&sql, &store, &mut daemon, 2).await;
    sql.close().await;
    println!(
        "NOTIFY pick-up {before:?} before the outage, {after:?} after; LISTEN back {relistened:.1?} \
         after the server"
    );
    let rows = until_all_finished(&store, Duration::from_secs(30)).await;
    daemon.stop(EXIT).await;

    assert!(
        before < PICKUP,
        "before the outage NOTIFY woke the daemon: a job started {before:?} after its insert"
    );
    assert!(
        after < PICKUP,
        "after the outage NOTIFY woke the daemon again: a job started {after:?} after its insert \
         (the poll is 30 s)"
    );
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!((row.status, row.attempts), (Status::Done, 1), "{row:?}");
    }
    assert_no_password(&daemon.log(), &server.password);
}

/// Waits until the daemon's LISTEN connection is open (its last statement was the LISTEN).
async fn listening(sql: &AnyPool, daemon: &mut Jobsd, limit: Duration) {
    until(limit, async || {
        daemon.assert_running();
        let listeners: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE application_name = 'jobsd' AND query LIKE 'LISTEN%'",
        )
        .fetch_one(sql)
        .await
        .map_err(|e| e.to_string())?;
        (listeners > 0)
            .then_some(())
            .ok_or_else(|| "the daemon is not listening".to_owned())
    })
    .await;
}

/// Inserts one job and returns how long after its insert it started.
async fn pickup(
    sql: &AnyPool,
    store: &Arc<dyn Store>,
    daemon: &mut Jobsd,
    object_id: i64,
) -> Duration {
    insert(sql, &[Job::sleep(object_id, 0)]).await;
    let started = until(Duration::from_secs(60), async || {
        daemon.assert_running();
        let rows = store.rows(&[], 100).await.map_err(|e| e.to_string())?;
        let row = rows
            .iter()
            .find(|row| row.object_id == Some(object_id))
            .ok_or_else(|| "inserted row not found".to_owned())?;
        match row.started_at {
            Some(started) => Ok(started - row.created_at),
            None => Err(format!("job {object_id} not started: {row:?}")),
        }
    })
    .await;
    started.to_std().unwrap_or_default()
}

// === 3. An outcome that waits ===

/// The completer writes outcomes one batch after another, so an outcome can wait behind a slow
/// write, or behind a server that is down, for longer than `dead_after`. The job has finished
/// and its replica is alive: it must end DONE, not be cancelled as silent. Here a statement
/// trigger makes every write of DONE outcomes take 8 s, as an overloaded server might, without
/// holding any row meanwhile. (PostgreSQL only: MariaDB has no statement triggers, and a row
/// trigger would hold the row, so the daemon's own sweep would wait for the write instead of
/// racing it. The daemon's logic is the same on every backend.)
async fn a_finished_job_is_not_taken_for_dead_while_its_outcome_waits(db: TestDb) {
    let sql = db.sql().await;
    for statement in [
        "CREATE FUNCTION slow_outcome() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF current_query() LIKE '%SET status = ''DONE''%' THEN PERFORM pg_sleep(8); END IF; \
         RETURN NULL; END; $$",
        "CREATE TRIGGER slow_outcome BEFORE UPDATE ON jobs FOR EACH STATEMENT \
         EXECUTE FUNCTION slow_outcome()",
    ] {
        sqlx::raw_sql(statement)
            .execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    record_history_on(db.backend, &sql).await;
    let launcher = Launcher::new(
        &db,
        &[
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_DEAD_AFTER", "2s"),
            ("JOBSD_RATE_PER_SECOND", "0"),
        ],
    );
    let mut daemon = launcher.start("waits");
    daemon.ready(STARTUP).await;
    insert(&sql, &[Job::sleep(1, 100)]).await;
    let store = db.store().await;
    let rows = until_all_finished(&store, Duration::from_secs(60)).await;
    // The outcome's write, if it was overtaken, has ended by now.
    tokio::time::sleep(Duration::from_secs(9)).await;
    daemon.assert_running();
    let history = history_on(&sql).await;
    sql.close().await;
    daemon.stop(EXIT).await;
    let row = &rows[0];
    assert_eq!(
        (row.status, row.attempts, row.last_error.as_deref()),
        (Status::Done, 1, None),
        "the job finished, and its replica stayed up: {row:?}\nits history: {:?}\n{}",
        history[&row.id],
        daemon.tail()
    );
}

// === 4. The probes through an outage ===

/// One run of both probes: when, relative to the server's stop, and whether each passed.
struct Probed {
    /// Seconds since the server stopped; negative before.
    at: f64,
    live: bool,
    ready: bool,
}

/// A daemon on the test's own server; the server stops for 12 s and starts again, and both
/// probes run every half second with `--max-age 5s` from before the stop until readiness is
/// back. Liveness must pass at every run: the daemon runs all along, and a restart would cure
/// nothing. Readiness must pass before the stop, fail at every run from 5 s (and a margin) after
/// the stop until the server is back, and pass again soon after.
async fn liveness_passes_throughout_an_outage_and_readiness_follows_the_database(backend: Backend) {
    let mut server = PrivateServer::start(backend).await;
    let url = server.url();
    connect(&url)
        .await
        .migrate()
        .await
        .expect("migrations apply");
    let folder = tempfile::tempdir().expect("folder");
    let health_file = folder.path().join("probed.health");
    let launcher = Launcher::for_url(
        &url,
        &[
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_CONTROL_INTERVAL", "200ms"),
        ],
    );
    let health = health_file.to_str().expect("a UTF-8 path");
    let mut daemon = launcher.start_with("probed", &[("JOBSD_HEALTH_FILE", health)]);
    let probe = async |ready: bool| {
        let mut command = crate::common::bare_jobsd(folder.path());
        let max_age = format!("{}s", PROBE_AGE.as_secs());
        command
            .arg("health")
            .args(ready.then_some("--ready"))
            .args(["--max-age", &max_age])
            .env("JOBSD_HEALTH_FILE", &health_file)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("jobsd health runs")
            .status
            .success()
    };
    until(STARTUP, async || {
        daemon.assert_running();
        (probe(false).await && probe(true).await)
            .then_some(())
            .ok_or_else(|| "the probes do not pass yet".to_owned())
    })
    .await;

    let mut probed = Vec::new();
    let mut look = async |daemon: &mut Jobsd, at: f64| {
        daemon.assert_running();
        let (live, ready) = (probe(false).await, probe(true).await);
        probed.push(Probed { at, live, ready });
        tokio::time::sleep(PROBE_EVERY).await;
        ready
    };
    let before = Instant::now();
    while before.elapsed() < Duration::from_secs(2) {
        look(&mut daemon, -1.0).await;
    }
    server.stop().await;
    let down = Instant::now();
    while down.elapsed() < PROBED_OUTAGE {
        look(&mut daemon, down.elapsed().as_secs_f64()).await;
    }
    server.start_again().await;
    let back = down.elapsed().as_secs_f64();
    let mut ready_again = None;
    while down.elapsed() < PROBED_OUTAGE + Duration::from_secs(40) {
        let at = down.elapsed().as_secs_f64();
        if look(&mut daemon, at).await {
            ready_again = Some(at);
            break;
        }
    }
    // A little more, to see that it stays ready.
    for _ in 0..4 {
        look(&mut daemon, down.elapsed().as_secs_f64()).await;
    }
    daemon.stop(EXIT).await;

    let pattern = |pick: fn(&Probed) -> bool| -> String {
        probed
            .iter()
            .map(|p| if pick(p) { '+' } else { '-' })
            .collect()
    };
    let (live, ready) = (pattern(|p| p.live), pattern(|p| p.ready));
    println!(
        "{backend:?}: server down at 0 s, back at {back:.1} s, ready again at {ready_again:?} s\n\
         live:  {live}\nready: {ready}"
    );
    let failed_liveness: Vec<f64> = probed.iter().filter(|p| !p.live).map(|p| p.at).collect();
    assert!(
        failed_liveness.is_empty(),
        "liveness failed at {failed_liveness:?} s: an outage would restart the pod
{}",
        daemon.tail()
    );
    let stale = PROBE_AGE.as_secs_f64() + 1.0;
    let (before, during): (Vec<&Probed>, Vec<&Probed>) = (
        probed.iter().filter(|p| p.at < 0.0).collect(),
        probed
            .iter()
            .filter(|p| p.at >= stale && p.at < back)
            .collect(),
    );
    assert!(
        !before.is_empty() && before.iter().all(|p| p.ready),
        "ready before the outage: {ready}"
    );
    assert!(
        during.len() >= 5,
        "the probes ran through the outage: {} runs after {stale} s",
        during.len()
    );
    let still_ready: Vec<f64> = during.iter().filter(|p| p.ready).map(|p| p.at).collect();
    assert!(
        still_ready.is_empty(),
        "readiness passed at {still_ready:?} s, with the server down since 0 s and --max-age \
         {PROBE_AGE:?}: {ready}"
    );
    let Some(ready_again) = ready_again else {
        panic!(
            "readiness did not pass again within 40 s of the server's return: {ready}
{}",
            daemon.tail()
        );
    };
    let after: Vec<&Probed> = probed.iter().filter(|p| p.at >= ready_again).collect();
    assert!(
        after.iter().all(|p| p.ready),
        "readiness stays once the database answers: {ready}"
    );
    assert_no_password(&daemon.log(), &server.password);
}

// === 5. A shutdown the database does not answer ===

/// Kubernetes kills a pod `terminationGracePeriodSeconds` after SIGTERM, and build.yaml sets it
/// from `shutdown_grace` + [`jobsd::daemon::FINAL_WRITES`]. So with jobs still running and a
/// server that has stopped answering (stopped with SIGSTOP: connections stay open, nothing comes
/// back, no error ends a wait), the daemon must still have exited by then.
async fn a_shutdown_against_a_database_that_does_not_answer_ends_in_bounded_time() {
    const GRACE: Duration = Duration::from_secs(2);
    let server = PrivateServer::start(Backend::Mysql).await;
    let url = server.url();
    let store = connect(&url).await;
    store.migrate().await.expect("migrations apply");
    let grace = format!("{}s", GRACE.as_secs());
    let launcher = Launcher::for_url(
        &url,
        &[
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_SHUTDOWN_GRACE", &grace),
        ],
    );
    let mut daemon = launcher.start("hung");
    daemon.ready(STARTUP).await;
    let sql = crate::common::sql_at(&url).await;
    insert(&sql, &[Job::sleep(1, 600_000), Job::sleep(2, 600_000)]).await;
    sql.close().await;
    until(Duration::from_secs(30), async || {
        daemon.assert_running();
        let running = count(&store, Status::Running).await;
        (running == 2)
            .then_some(())
            .ok_or_else(|| format!("{running} of 2 jobs running"))
    })
    .await;

    let mariadbd = server
        .mariadbd
        .as_ref()
        .expect("mariadbd is running")
        .id()
        .to_string();
    run(Command::new("kill").args(["-STOP", &mariadbd])).await;
    let limit = GRACE + jobsd::daemon::FINAL_WRITES + Duration::from_secs(2);
    let began = Instant::now();
    let exit = daemon.terminate(limit + Duration::from_secs(30)).await;
    let took = began.elapsed();
    run(Command::new("kill").args(["-CONT", &mariadbd])).await;
    println!("shutdown against a stopped server: {took:.1?}, {exit}");
    assert!(
        took >= GRACE,
        "running jobs had their grace ({GRACE:?}), took {took:?}"
    );
    assert!(
        took <= limit,
        "shutdown took {took:?}, more than shutdown_grace + FINAL_WRITES ({limit:?} with a margin)\n{}",
        daemon.tail()
    );
    assert_no_password(&daemon.log(), &server.password);
}

// === What the daemon logged ===

/// The daemon's warnings and errors: in these tests only the outage causes any.
fn problem_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// A log line's message, without its time, level and fields: `database error`, say.
fn message_of(line: &str) -> String {
    let text = line.split_once(": ").map_or(line, |(_, rest)| rest);
    let text = text.split(';').next().unwrap_or(text);
    let mut words: Vec<&str> = text.split_whitespace().collect();
    // From the first field on (`name=value`), the words are no longer the message.
    if let Some(field) = words.iter().position(|word| word.contains('=')) {
        words.truncate(field);
    }
    words.join(" ")
}

fn assert_no_password(log: &str, password: &str) {
    let shown: Vec<&str> = log.lines().filter(|line| line.contains(password)).collect();
    assert!(shown.is_empty(), "log lines show the password: {shown:?}");
}

// === Talking to the database ===

async fn connect(url: &str) -> Arc<dyn Store> {
    jobsd::store::connect(url, 4).await.expect("store connects")
}

async fn count(store: &Arc<dyn Store>, status: Status) -> i64 {
    store
        .counts()
        .await
        .expect("counts")
        .into_iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| n)
}

// === A server of the test's own ===

/// A PostgreSQL or MariaDB server in a temporary folder, on a free port, with its socket in that
/// folder. Dropping it stops the server and removes the folder, also when the test panics.
struct PrivateServer {
    backend: Backend,
    /// Data directory, socket, password file and server log.
    folder: tempfile::TempDir,
    port: u16,
    /// The password jobsd connects with; no log line may show it.
    password: String,
    /// PostgreSQL refuses to run as root, so as root its tools run as the `postgres` user.
    root: bool,
    /// The running `mariadbd`; PostgreSQL's server is started and stopped by `pg_ctl`.
    mariadbd: Option<std::process::Child>,
}

impl PrivateServer {
    /// Initialises, starts, and creates database `jobs` with a user that has a password.
    async fn start(backend: Backend) -> PrivateServer {
        let folder = tempfile::Builder::new()
            .prefix("jobsd-server-")
            .tempdir()
            .expect("temporary folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let password: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let mut server = PrivateServer {
            backend,
            folder,
            port,
            password,
            root: running_as_root(),
            mariadbd: None,
        };
        server.initialise().await;
        server.start_again().await;
        let admin = crate::common::sql_at(&server.admin_url()).await;
        let statements = match backend {
            Backend::Postgres => vec!["CREATE DATABASE jobs".to_owned()],
            _ => vec![
                "CREATE DATABASE jobs".to_owned(),
                format!(
                    "CREATE USER 'jobsd'@'127.0.0.1' IDENTIFIED BY '{}'",
                    server.password
                ),
                "GRANT ALL ON jobs.* TO 'jobsd'@'127.0.0.1'".to_owned(),
            ],
        };
        for statement in &statements {
            sqlx::query(statement)
                .execute(&admin)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        admin.close().await;
        server
    }

    /// The database jobsd uses, as a user with a password.
    fn url(&self) -> String {
        match self.backend {
            Backend::Postgres => format!(
                "postgres://postgres:{}@127.0.0.1:{}/jobs",
                self.password, self.port
            ),
            _ => format!(
                "mysql://jobsd:{}@127.0.0.1:{}/jobs",
                self.password, self.port
            ),
        }
    }

    fn admin_url(&self) -> String {
        match self.backend {
            Backend::Postgres => format!(
                "postgres://postgres:{}@127.0.0.1:{}/postgres",
                self.password, self.port
            ),
            _ => format!("mysql://root@127.0.0.1:{}/mysql", self.port),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.folder.path().join(name)
    }

    async fn initialise(&self) {
        match self.backend {
            Backend::Postgres => {
                let password_file = self.path("password");
                std::fs::write(&password_file, &self.password).expect("password file");
                std::fs::create_dir(self.path("socket")).expect("socket folder");
                if self.root {
                    run(Command::new("chown")
                        .arg("-R")
                        .arg("postgres:")
                        .arg(self.folder.path()))
                    .await;
                }
                run(self
                    .postgres_tool("initdb")
                    .arg("-D")
                    .arg(self.path("data"))
                    .args(["-U", "postgres", "--auth-local=trust"])
                    .args([
                        "--auth-host=scram-sha-256",
                        "-N",
                        "-E",
                        "UTF8",
                        "--locale=C",
                    ])
                    .arg(format!("--pwfile={}", password_file.display())))
                .await;
            }
            _ => {
                // The bootstrap now and then fails on a machine busy with the rest of the
                // suite: a fresh data directory and another try, and the third failure shown.
                const TRIES: u32 = 3;
                for attempt in 1..=TRIES {
                    let data = self.path("data");
                    if data.exists() {
                        std::fs::remove_dir_all(&data).expect("a failed install's data removed");
                    }
                    let mut install = Command::new("mariadb-install-db");
                    install
                        .arg("--no-defaults")
                        .arg(format!("--datadir={}", data.display()))
                        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                        .arg("--innodb-log-file-size=8M");
                    if self.root {
                        install.arg("--user=root");
                    }
                    if attempt == TRIES {
                        run(&mut install).await;
                    } else if install
                        .stdin(Stdio::null())
                        .output()
                        .await
                        .is_ok_and(|output| output.status.success())
                    {
                        break;
                    }
                }
            }
        }
    }

    /// Starts the server on its data directory and waits until it answers.
    /// Stops the server for [`OUTAGE`], checking all the while that `daemon` stays up, and
    /// starts it again; returns how long it was down.
    async fn outage(&mut self, daemon: &mut Jobsd) -> Duration {
        let stopped = Instant::now();
        self.stop().await;
        while stopped.elapsed() < OUTAGE {
            daemon.assert_running();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.start_again().await;
        stopped.elapsed()
    }

    async fn start_again(&mut self) {
        match self.backend {
            Backend::Postgres => {
                let options = format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    self.port,
                    self.path("socket").display()
                );
                run(self
                    .postgres_tool("pg_ctl")
                    .arg("-D")
                    .arg(self.path("data"))
                    .arg("-l")
                    .arg(self.path("server.log"))
                    .args(["-w", "-t", "60", "-o", &options, "start"]))
                .await;
            }
            _ => {
                let mut server = std::process::Command::new("mariadbd");
                server
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", self.path("data").display()))
                    .arg(format!("--port={}", self.port))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!("--socket={}", self.path("mysqld.sock").display()))
                    .arg(format!("--pid-file={}", self.path("mysqld.pid").display()))
                    .arg(format!("--log-error={}", self.path("server.log").display()))
                    .args(["--skip-name-resolve", "--skip-log-bin"])
                    .args(["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if self.root {
                    server.arg("--user=root");
                }
                self.mariadbd = Some(server.spawn().expect("mariadbd starts"));
                let admin = self.admin_url();
                until(SERVER, async || {
                    if let Some(exit) = self.mariadbd.as_mut().and_then(|c| c.try_wait().ok()?) {
                        panic!("mariadbd exited ({exit}):\n{}", self.server_log());
                    }
                    sqlx::any::install_default_drivers();
                    let pool = AnyPoolOptions::new()
                        .max_connections(1)
                        .connect(&admin)
                        .await
                        .map_err(|e| e.to_string())?;
                    pool.close().await;
                    Ok(())
                })
                .await;
            }
        }
    }

    /// A clean stop (PostgreSQL's fast mode; SIGTERM for MariaDB): connections are closed.
    async fn stop(&mut self) {
        match self.backend {
            Backend::Postgres => {
                run(self
                    .postgres_tool("pg_ctl")
                    .arg("-D")
                    .arg(self.path("data"))
                    .args(["-m", "fast", "-w", "-t", "60", "stop"]))
                .await;
            }
            _ => {
                let mut child = self.mariadbd.take().expect("mariadbd is running");
                run(Command::new("kill").args(["-TERM", &child.id().to_string()])).await;
                let deadline = Instant::now() + SERVER;
                while child.try_wait().expect("mariadbd status").is_none() {
                    assert!(
                        Instant::now() < deadline,
                        "mariadbd still running {SERVER:?} after SIGTERM"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn postgres_tool(&self, tool: &str) -> Command {
        let program = postgres_bin().join(tool);
        let mut command = if self.root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir(self.folder.path());
        command
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.mariadbd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.backend == Backend::Postgres && self.path("data").join("postmaster.pid").exists() {
            let program = postgres_bin().join("pg_ctl");
            let mut command = if self.root {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            } else {
                std::process::Command::new(program)
            };
            let _ = command
                .arg("-D")
                .arg(self.path("data"))
                .args(["-m", "immediate", "-w", "-t", "60", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if std::thread::panicking() {
            eprintln!(
                "{:?} server log ({}):\n{}",
                self.backend,
                self.path("server.log").display(),
                self.server_log()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// The newest installed PostgreSQL's programs (Debian keeps them out of PATH).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server programs under /usr/lib/postgresql")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an installed PostgreSQL with initdb")
        .1
}

fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Runs `command` to its end and panics, quoting its output, unless it succeeds.
async fn run(command: &mut Command) {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// === 6. Two replicas with the real defaults across an outage ===

mod two_replicas {
    mod postgres {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_outage_under_two_default_replicas_runs_every_job_exactly_once() {
            super::super::two_default_replicas_ride_out_an_outage(crate::common::Backend::Postgres)
                .await;
        }
    }

    mod mysql {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_outage_under_two_default_replicas_runs_every_job_exactly_once() {
            super::super::two_default_replicas_ride_out_an_outage(crate::common::Backend::Mysql)
                .await;
        }
    }
}

/// Two `jobsd run` processes with the real defaults (dead_after 10 s, 50 starts a second, 1 s
/// polls) and 5 consumers each drain a backlog of 300 ms jobs; mid-backlog their server stops
/// for 15 s, longer than `dead_after`, and comes back. Both lost contact at once, so neither may
/// take the other's jobs for dead before it has had `dead_after` to vouch for them again: every
/// job enters RUNNING exactly once (the history trigger counts it), ends DONE on its first
/// attempt, nothing is cancelled, and both processes stay up throughout.
async fn two_default_replicas_ride_out_an_outage(backend: Backend) {
    const JOBS: i64 = 200;
    let mut server = PrivateServer::start(backend).await;
    let url = server.url();
    let store = connect(&url).await;
    store.migrate().await.expect("migrations apply");
    let sql = crate::common::sql_at(&url).await;
    record_history_on(backend, &sql).await;

    let launcher = Launcher::for_url(&url, &[("JOBSD_CONSUMERS", "5")]);
    let mut replicas = vec![launcher.start("a"), launcher.start("b")];
    for replica in &mut replicas {
        replica.ready(STARTUP).await;
    }
    let backlog: Vec<Job> = (1..=JOBS).map(|n| Job::sleep(n, 300)).collect();
    insert(&sql, &backlog).await;
    sql.close().await;

    until(Duration::from_secs(60), async || {
        for replica in replicas.iter_mut() {
            replica.assert_running();
        }
        let done = count(&store, Status::Done).await;
        (done >= JOBS / 5)
            .then_some(())
            .ok_or_else(|| format!("{done} of {JOBS} done"))
    })
    .await;
    let open_at_stop = JOBS - count(&store, Status::Done).await;
    let stopped = Instant::now();
    server.stop().await;
    while stopped.elapsed() < OUTAGE {
        for replica in &mut replicas {
            replica.assert_running();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    server.start_again().await;
    println!(
        "{backend:?}: server down {:.1?}, {open_at_stop} of {JOBS} jobs unfinished when it stopped",
        stopped.elapsed()
    );
    assert!(
        open_at_stop > JOBS / 2,
        "the server stopped mid-backlog: {open_at_stop} of {JOBS} unfinished"
    );

    let store = connect(&url).await;
    let rows = until_all_finished(&store, Duration::from_secs(180)).await;
    for replica in &mut replicas {
        replica.assert_running();
    }
    let sql = crate::common::sql_at(&url).await;
    let history = history_on(&sql).await;
    sql.close().await;
    for replica in &mut replicas {
        replica.stop(EXIT).await;
    }

    assert_eq!(rows.len() as i64, JOBS, "no job lost, none added");
    let mut by_replica: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        let path = history.get(&row.id).cloned().unwrap_or_default();
        let entered = |to: &str| path.iter().filter(|c| c.to == to).count();
        assert_eq!(
            (
                path.iter().filter(|c| c.starts()).count(),
                entered("DONE"),
                entered("CANCELLED")
            ),
            (1, 1, 0),
            "job {} started once and finished once, never cancelled: {path:?}",
            row.id
        );
        assert!(
            path.iter()
                .all(|c| !matches!(c.to.as_str(), "FAILED" | "PAUSED")),
            "job {}: {path:?}",
            row.id
        );
        assert_eq!(
            (row.status, row.attempts, row.last_error.as_deref()),
            (Status::Done, 1, None),
            "{row:?}"
        );
        assert!(row.cancelled_at.is_none(), "{row:?}");
        let worker = row.worker.clone().unwrap_or_default();
        let prefix = worker.split('-').next().unwrap_or_default().to_owned();
        *by_replica.entry(prefix).or_default() += 1;
    }
    println!("{backend:?}: jobs per replica {by_replica:?}");
    for prefix in ["a", "b"] {
        assert!(
            by_replica.get(prefix).copied().unwrap_or(0) > 0,
            "replica {prefix} did some of the work: {by_replica:?}"
        );
    }
    for replica in &replicas {
        assert_no_password(&replica.log(), &server.password);
    }
}

/// A running job holds its row as a lease of `dead_after`. Through an outage longer than that,
/// its heartbeats fail, so it stops (another replica could have taken it over), and when the
/// database answers again its replica gives it back to NEW with its attempt returned: it runs
/// again from its checkpoint and ends DONE. An outage never cancels it.
async fn a_running_job_whose_lease_lapses_is_given_back_and_runs_again() {
    let mut server = PrivateServer::start(Backend::Postgres).await;
    let url = server.url();
    let store = connect(&url).await;
    store.migrate().await.expect("migrations apply");
    let sql = crate::common::sql_at(&url).await;
    record_history_on(Backend::Postgres, &sql).await;
    let launcher = Launcher::for_url(
        &url,
        &[
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_DEAD_AFTER", "2s"),
            ("JOBSD_RATE_PER_SECOND", "0"),
        ],
    );
    let mut daemon = launcher.start("lease");
    daemon.ready(STARTUP).await;
    insert(&sql, &[Job::sleep(1, 6_000)]).await;
    sql.close().await;
    until(Duration::from_secs(30), async || {
        let rows = store.rows(&[], 10).await.map_err(|e| e.to_string())?;
        rows.first()
            .filter(|row| row.status == Status::Running && row.progress.is_some())
            .map(|_| ())
            .ok_or_else(|| format!("not running with a checkpoint yet: {rows:?}"))
    })
    .await;
    let down = server.outage(&mut daemon).await;

    let store = connect(&url).await;
    let rows = until_all_finished(&store, Duration::from_secs(60)).await;
    daemon.assert_running();
    let sql = crate::common::sql_at(&url).await;
    let history = history_on(&sql).await;
    sql.close().await;
    let log = daemon.log();
    daemon.stop(EXIT).await;

    let row = &rows[0];
    let path = history.get(&row.id).cloned().unwrap_or_default();
    let went: Vec<&str> = path.iter().map(|change| change.to.as_str()).collect();
    assert_eq!(
        (row.status, row.attempts),
        (Status::Done, 1),
        "DONE, the lapsed run's attempt given back ({down:.1?} down): {row:?} {path:?}"
    );
    assert_eq!(
        went,
        ["RUNNING", "NEW", "RUNNING", "DONE"],
        "stopped, given back, run again: {path:?}"
    );
    assert!(
        log.contains("within the lease") && log.contains("lease lapsed given back"),
        "the log says why: {}",
        daemon_tail(&log)
    );
}

fn daemon_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
