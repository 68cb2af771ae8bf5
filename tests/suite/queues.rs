//! Named queues and priorities (DESIGN §2, §6): a paused queue waits across restarts while the
//! others run, priorities set the start order, and a queue's concurrency and rate hold across
//! three real `jobsd run` processes; at the store, what each claim scope takes and when a resume
//! must wait. Jobs and queues are written with plain SQL, as users write them, and every verdict
//! is read back from the database.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobsd::job::Outcome;
use jobsd::store::{Claim, Resume, Resumed, Scope};
use jobsd::{JobRow, Status};
use sqlx::AnyPool;
use tokio::time::Instant;

use crate::common::{Backend, TestDb};
use crate::reliability::processes::{Jobsd, Launcher};
use crate::reliability::until;

crate::on_every_backend!(
    a_paused_queue_waits_across_a_restart_while_others_run_and_resumes_on_request,
    jobsd_queue_pause_and_resume_write_paused_at,
    jobsd_queue_limit_writes_the_limits_and_refuses_what_the_table_would,
    a_queue_time_no_replica_can_hold_is_refused,
    priorities_set_the_start_order,
    a_concurrency_of_two_holds_across_three_replicas,
    a_rate_of_twenty_a_second_holds_across_three_replicas,
    an_unlimited_claim_never_takes_a_paused_or_limited_queue,
    a_limited_claim_takes_only_the_room_its_concurrency_leaves,
    a_claim_of_named_queues_takes_only_those,
    a_claim_takes_by_priority_then_run_at_then_id,
    a_resume_waits_while_its_queue_is_full_or_paused,
);

/// How long a process may take to start and make its first pass on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

/// How long a SIGTERMed process may take to exit: its shutdown grace plus a wide margin.
const EXIT: Duration = Duration::from_secs(30);

/// How often the tests look at the table while they watch.
const LOOK: Duration = Duration::from_millis(100);

const MS: i64 = 1_000_000;

/// Settings every process gets: short intervals, a `dead_after` well beyond any job here (a
/// `sleep` job sends no heartbeat), the real defaults otherwise (10 consumers, 50 starts a
/// second).
const SETTINGS: &[(&str, &str)] = &[
    ("JOBSD_POLL_INTERVAL", "200ms"),
    ("JOBSD_CONTROL_INTERVAL", "200ms"),
    ("JOBSD_DEAD_AFTER", "10s"),
    ("JOBSD_RETRY_BACKOFF", "100ms"),
    ("JOBSD_SHUTDOWN_GRACE", "2s"),
];

// === SQL as users write it ===

/// "Now" as a user writes it on this backend (DESIGN §6).
fn now(db: &TestDb) -> &'static str {
    match db.backend {
        Backend::Postgres => "now()",
        Backend::Mysql => "NOW(6)",
        Backend::Sqlite => "datetime('now')",
    }
}

/// Runs `statement` as a user would; panics with it if the database refuses.
async fn exec(db: &TestDb, statement: &str) -> u64 {
    db.exec(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
}

/// One number a `SELECT COUNT(*) …` returns.
async fn count(pool: &AnyPool, statement: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(statement)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
}

/// [`count`] over a connection of its own.
async fn count_in(db: &TestDb, statement: &str) -> i64 {
    let pool = db.sql().await;
    let n = count(&pool, statement).await;
    pool.close().await;
    n
}

/// Inserts `sleep` jobs into `queue` with one plain INSERT: `object_id`s `objects`, each with
/// the priority `priority` gives it, and `run_at` when given (an SQL expression).
async fn insert_jobs(
    db: &TestDb,
    queue: &str,
    objects: std::ops::RangeInclusive<i64>,
    sleep: i64,
    priority: impl Fn(i64) -> i16,
    run_at: Option<&str>,
) {
    let values: Vec<String> = objects
        .map(|n| match run_at {
            Some(at) => format!("({n}, {sleep}, '{queue}', {}, {at})", priority(n)),
            None => format!("({n}, {sleep}, '{queue}', {})", priority(n)),
        })
        .collect();
    let columns = if run_at.is_some() {
        "object_id, sleep, queue, priority, run_at"
    } else {
        "object_id, sleep, queue, priority"
    };
    exec(
        db,
        &format!("INSERT INTO jobs ({columns}) VALUES {}", values.join(", ")),
    )
    .await;
}

fn by_queue<'a>(rows: &'a [JobRow], queue: &'a str) -> impl Iterator<Item = &'a JobRow> + 'a {
    rows.iter().filter(move |row| row.queue == queue)
}

/// Starts a process and waits for its first pass over the database.
async fn started(launcher: &Launcher, prefix: &str, extra: &[(&str, &str)]) -> Jobsd {
    let mut replica = launcher.start_with(prefix, extra);
    replica.ready(STARTUP).await;
    replica
}

/// Watches queue `queue` for `period`: every look, all `jobs` of it are still NEW and held by no
/// one, and `replica` is still up.
async fn stays_new(db: &TestDb, replica: &mut Jobsd, queue: &str, jobs: i64, period: Duration) {
    let pool = db.sql().await;
    let end = Instant::now() + period;
    let mut looks = 0;
    while Instant::now() < end {
        let waiting = count(
            &pool,
            &format!(
                "SELECT COUNT(*) FROM jobs WHERE queue = '{queue}' AND status = 'NEW' \
                 AND queued_at IS NULL AND started_at IS NULL AND worker IS NULL"
            ),
        )
        .await;
        assert_eq!(
            waiting, jobs,
            "look {looks}: every job of paused queue {queue:?} is still NEW and unheld"
        );
        replica.assert_running();
        looks += 1;
        tokio::time::sleep(LOOK).await;
    }
    pool.close().await;
}

// === 1. Pause ===

/// A paused queue starts nothing while another queue runs; the pause, being a row, survives a
/// restart; `UPDATE queues SET paused_at = NULL` lets its jobs run.
async fn a_paused_queue_waits_across_a_restart_while_others_run_and_resumes_on_request(db: TestDb) {
    exec(
        &db,
        &format!(
            "INSERT INTO queues (name, paused_at) VALUES ('emails', {})",
            now(&db)
        ),
    )
    .await;
    insert_jobs(&db, "emails", 1..=10, 20 * MS, |_| 0, None).await;
    // The default queue, by the column's default.
    exec(
        &db,
        "INSERT INTO jobs (object_id, sleep) VALUES (101, 20000000), (102, 20000000), (103, 20000000)",
    )
    .await;

    let launcher = Launcher::new(&db, SETTINGS);
    let mut first = started(&launcher, "a", &[]).await;
    let pool = db.sql().await;
    until(Duration::from_secs(20), async || {
        let done = count(
            &pool,
            "SELECT COUNT(*) FROM jobs WHERE queue = 'default' AND status = 'DONE'",
        )
        .await;
        if done == 3 {
            Ok(())
        } else {
            Err(format!("{done} of 3 default jobs DONE"))
        }
    })
    .await;
    stays_new(&db, &mut first, "emails", 10, Duration::from_millis(1500)).await;
    first.stop(EXIT).await;

    let mut second = started(&launcher, "b", &[]).await;
    stays_new(&db, &mut second, "emails", 10, Duration::from_millis(1500)).await;
    let resumed = exec(
        &db,
        "UPDATE queues SET paused_at = NULL WHERE name = 'emails'",
    )
    .await;
    assert_eq!(resumed, 1);
    let rows = db.until_all_finished(Duration::from_secs(20)).await;
    second.assert_running();
    second.stop(EXIT).await;
    pool.close().await;

    assert_eq!(rows.len(), 13, "no job lost, none added");
    assert!(
        rows.iter().all(|row| row.status == Status::Done),
        "every job DONE: {:?}",
        rows.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>()
    );
    let defaults_done = by_queue(&rows, "default")
        .map(|row| row.finished_at.expect("DONE has finished_at"))
        .max()
        .expect("three default jobs");
    for row in by_queue(&rows, "emails") {
        assert!(
            row.worker.as_deref().is_some_and(|w| w.starts_with("b-")),
            "job {} ran on the replica started after the restart, not {:?}",
            row.id,
            row.worker
        );
        let waited = row.started_at.expect("started_at") - defaults_done;
        // Two watches of 1.5 s and a restart lie between the default jobs and any resume.
        assert!(
            waited >= chrono::Duration::milliseconds(2500),
            "job {} started {waited} after the default jobs finished",
            row.id
        );
    }
}

/// `queues.next_start_at` takes only a time from 1970 to 9999 on every database, the same
/// schema everywhere; a time in range is taken.
async fn a_queue_time_no_replica_can_hold_is_refused(db: TestDb) {
    exec(
        &db,
        "INSERT INTO queues (name, rate_per_second) VALUES ('api', 1)",
    )
    .await;
    for bad in ["'0500-01-01 00:00:00'", "'1969-12-31 23:59:59'", "'soon'"] {
        let refused = db
            .exec(&format!(
                "UPDATE queues SET next_start_at = {bad} WHERE name = 'api'"
            ))
            .await;
        assert!(refused.is_err(), "next_start_at {bad} was taken");
        let refused = db
            .exec(&format!(
                "INSERT INTO queues (name, next_start_at) VALUES ('other', {bad})"
            ))
            .await;
        assert!(refused.is_err(), "next_start_at {bad} was taken at INSERT");
    }
    let taken = db
        .exec(&format!(
            "UPDATE queues SET next_start_at = {} WHERE name = 'api'",
            db.now_plus(5)
        ))
        .await
        .expect("a time in range");
    assert_eq!(taken, 1);
}

/// `jobsd queue limit NAME [--concurrency N] [--rate R]` writes both limits (one left out is
/// lifted), making the row when there is none; a limit the table would refuse stops it with
/// exit code 2 and writes nothing.
async fn jobsd_queue_limit_writes_the_limits_and_refuses_what_the_table_would(db: TestDb) {
    let folder = tempfile::tempdir().expect("folder");
    let limit = async |args: &[&str]| {
        let mut command = crate::common::bare_jobsd(folder.path());
        command
            .args(["queue", "limit", "api"])
            .args(args)
            .env("DATABASE_URL", &db.url)
            .stdin(Stdio::null());
        tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("jobsd queue exits within a minute")
            .expect("jobsd starts")
    };
    let rows =
        |condition: &str| format!("SELECT COUNT(*) FROM queues WHERE name = 'api' AND {condition}");
    let output = limit(&["--concurrency", "2", "--rate", "0.5"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        count_in(&db, &rows("concurrency = 2 AND rate_per_second = 0.5")).await,
        1
    );
    let output = limit(&["--rate", "20"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        count_in(&db, &rows("concurrency IS NULL AND rate_per_second = 20")).await,
        1
    );
    for bad in [
        &["--rate", "0"][..],
        &["--rate", "NaN"],
        &["--concurrency", "-1"],
    ] {
        let output = limit(bad).await;
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.starts_with("error:"),
            "one line saying why: {bad:?}: {said}"
        );
    }
    assert_eq!(
        count_in(&db, &rows("concurrency IS NULL AND rate_per_second = 20")).await,
        1,
        "nothing written by a refused limit"
    );
}

/// `jobsd queue pause|resume NAME` writes `queues.paused_at` as the SQL of DESIGN §6 does,
/// making the row when there is none and leaving the row's limits alone; claims honour it.
async fn jobsd_queue_pause_and_resume_write_paused_at(db: TestDb) {
    let folder = tempfile::tempdir().expect("folder");
    let queue = async |action: &str, name: &str| {
        let mut command = crate::common::bare_jobsd(folder.path());
        command
            .args(["queue", action, name])
            .env("DATABASE_URL", &db.url)
            .stdin(Stdio::null());
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("jobsd queue exits within a minute")
            .expect("jobsd starts");
        assert!(
            output.status.success(),
            "jobsd queue {action} {name}: {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let rows_of = |name: &str, condition: &str| {
        format!("SELECT COUNT(*) FROM queues WHERE name = '{name}' AND {condition}")
    };

    // No row yet: the pause makes one, paused now.
    assert_eq!(count_in(&db, &rows_of("reports", "1 = 1")).await, 0);
    let said = queue("pause", "reports").await;
    assert!(said.contains("reports"), "{said}");
    let recent = format!("paused_at IS NOT NULL AND paused_at > {}", db.now_plus(-60));
    assert_eq!(count_in(&db, &rows_of("reports", &recent)).await, 1);
    assert_eq!(count_in(&db, &rows_of("reports", "1 = 1")).await, 1);

    // A claim from every unlimited queue leaves its jobs alone.
    exec(
        &db,
        "INSERT INTO jobs (object_id, sleep, queue) VALUES (1, 0, 'reports'), (2, 0, 'default')",
    )
    .await;
    let store = db.store().await;
    let taken = store
        .claim(&Claim::new("w", 10, false))
        .await
        .expect("claim");
    let queues: Vec<&str> = taken.iter().map(|job| job.queue.as_str()).collect();
    assert_eq!(queues, ["default"], "the paused queue's job waits");

    // A pause already in place keeps its time.
    exec(
        &db,
        &format!(
            "UPDATE queues SET paused_at = {} WHERE name = 'reports'",
            db.now_plus(-3600)
        ),
    )
    .await;
    queue("pause", "reports").await;
    let old = format!("paused_at < {}", db.now_plus(-1800));
    assert_eq!(count_in(&db, &rows_of("reports", &old)).await, 1);

    // Resume: NULL, the same one row; the job can be claimed.
    queue("resume", "reports").await;
    assert_eq!(
        count_in(&db, &rows_of("reports", "paused_at IS NULL")).await,
        1
    );
    assert_eq!(count_in(&db, &rows_of("reports", "1 = 1")).await, 1);
    let taken = store
        .claim(&Claim::new("w", 10, false))
        .await
        .expect("claim");
    let queues: Vec<&str> = taken.iter().map(|job| job.queue.as_str()).collect();
    assert_eq!(queues, ["reports"], "the resumed queue's job is claimed");

    // A resume of a queue with no row makes the row, running.
    queue("resume", "fresh").await;
    assert_eq!(
        count_in(&db, &rows_of("fresh", "paused_at IS NULL")).await,
        1
    );

    // A pause keeps the queue's limits.
    exec(
        &db,
        "INSERT INTO queues (name, concurrency, rate_per_second) VALUES ('api', 3, 20)",
    )
    .await;
    queue("pause", "api").await;
    let kept = "paused_at IS NOT NULL AND concurrency = 3 AND rate_per_second = 20";
    assert_eq!(count_in(&db, &rows_of("api", kept)).await, 1);
    queue("resume", "api").await;
    let kept = "paused_at IS NULL AND concurrency = 3 AND rate_per_second = 20";
    assert_eq!(count_in(&db, &rows_of("api", kept)).await, 1);
}

// === 2. Priorities ===

/// One consumer, jobs of mixed priorities waiting before the replica starts: they start by
/// priority, then `run_at`, then id.
async fn priorities_set_the_start_order(db: TestDb) {
    const PRIORITIES: [i16; 10] = [5, 0, -1, 0, 5, 3, -1, 0, 0, 5];
    let earlier = db.now_plus(-20);
    let later = db.now_plus(-10);
    insert_jobs(
        &db,
        "default",
        1..=10,
        20 * MS,
        |n| PRIORITIES[(n - 1) as usize],
        Some(&later),
    )
    .await;
    // Higher ids, but due earlier: among their priority they come first.
    insert_jobs(
        &db,
        "default",
        11..=12,
        20 * MS,
        |n| if n == 11 { 0 } else { 5 },
        Some(&earlier),
    )
    .await;

    let launcher = Launcher::new(&db, SETTINGS);
    let mut replica = started(
        &launcher,
        "p",
        &[("JOBSD_CONSUMERS", "1"), ("JOBSD_RATE_PER_SECOND", "0")],
    )
    .await;
    let rows = db.until_all_finished(Duration::from_secs(30)).await;
    replica.stop(EXIT).await;

    assert_eq!(rows.len(), 12);
    assert!(
        rows.iter().all(|row| row.status == Status::Done),
        "every job DONE: {:?}",
        rows.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>()
    );
    let mut by_start: Vec<&JobRow> = rows.iter().collect();
    by_start.sort_by_key(|row| (row.started_at.expect("started_at"), row.id));
    let mut expected: Vec<&JobRow> = rows.iter().collect();
    expected.sort_by_key(|row| (row.priority, row.run_at, row.id));
    let shown = |rows: &[&JobRow]| -> Vec<(i64, i16)> {
        rows.iter()
            .map(|row| (row.object_id.expect("object_id"), row.priority))
            .collect()
    };
    assert_eq!(
        shown(&by_start),
        shown(&expected),
        "(object_id, priority) in the order they started, and by priority, run_at, id"
    );
    for pair in by_start.windows(2) {
        assert!(
            pair[0].started_at < pair[1].started_at,
            "one consumer starts one job at a time: {:?} and {:?}",
            pair[0].started_at,
            pair[1].started_at
        );
    }
}

// === 3. Concurrency across replicas ===

/// Sixteen 1 s jobs in a queue of concurrency 2, three replicas of one consumer each (so two
/// RUNNING at once are two replicas', and the third must be refused by the count in the
/// database; one replica has no rate limit, so what it claims starts in the same write): never
/// more than two RUNNING, by the samples and by the rows' own timestamps; all sixteen DONE in
/// about eight seconds. (That one replica of ten consumers takes no more than the room is
/// `a_limited_claim_takes_only_the_room_its_concurrency_leaves`.)
async fn a_concurrency_of_two_holds_across_three_replicas(db: TestDb) {
    const JOBS: i64 = 16;
    exec(
        &db,
        "INSERT INTO queues (name, concurrency) VALUES ('heavy', 2)",
    )
    .await;
    let launcher = Launcher::new(&db, SETTINGS);
    let mut replicas = vec![
        started(&launcher, "a", &[("JOBSD_CONSUMERS", "1")]).await,
        started(&launcher, "b", &[("JOBSD_CONSUMERS", "1")]).await,
        started(
            &launcher,
            "c",
            &[("JOBSD_CONSUMERS", "1"), ("JOBSD_RATE_PER_SECOND", "0")],
        )
        .await,
    ];

    insert_jobs(&db, "heavy", 1..=JOBS, 1000 * MS, |_| 0, None).await;
    let began = Instant::now();
    let pool = db.sql().await;
    let (mut most_running, mut most_held, mut samples) = (0, 0, 0);
    loop {
        let running = count(
            &pool,
            "SELECT COUNT(*) FROM jobs WHERE queue = 'heavy' AND status = 'RUNNING'",
        )
        .await;
        let held = count(
            &pool,
            "SELECT COUNT(*) FROM jobs WHERE queue = 'heavy' AND status IN ('QUEUED', 'RUNNING')",
        )
        .await;
        let done = count(
            &pool,
            "SELECT COUNT(*) FROM jobs WHERE queue = 'heavy' AND status = 'DONE'",
        )
        .await;
        samples += 1;
        most_running = most_running.max(running);
        most_held = most_held.max(held);
        assert!(
            running <= 2,
            "{running} jobs of queue heavy RUNNING at once after {:.1?}",
            began.elapsed()
        );
        if done == JOBS {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "only {done} of {JOBS} DONE after a minute"
        );
        tokio::time::sleep(LOOK).await;
    }
    let elapsed = began.elapsed();
    pool.close().await;
    for replica in &mut replicas {
        replica.assert_running();
        replica.stop(EXIT).await;
    }

    let rows = db.all_rows().await;
    assert_eq!(rows.len() as i64, JOBS);
    assert!(rows.iter().all(|row| row.status == Status::Done));
    // The rows' own account: at each start, how many ran over it (finished_at is exclusive).
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = rows
        .iter()
        .map(|row| {
            (
                row.started_at.expect("started_at"),
                row.finished_at.expect("finished_at"),
            )
        })
        .collect();
    let overlap = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, f)| s <= start && start < f)
                .count()
        })
        .max()
        .unwrap_or(0);
    let first = spans.iter().map(|(s, _)| *s).min().expect("rows");
    let last = spans.iter().map(|(_, f)| *f).max().expect("rows");
    let workers: BTreeSet<&str> = rows
        .iter()
        .filter_map(|row| row.worker.as_deref())
        .map(|w| w.split('-').next().unwrap_or(w))
        .collect();
    eprintln!(
        "{:?}: {JOBS} jobs of 1 s at concurrency 2 on 3 replicas: all DONE {elapsed:.2?} after \
         the insert (first start to last finish {:.2}s); most RUNNING at once: {most_running} \
         sampled, {overlap} by the rows; most QUEUED+RUNNING sampled: {most_held}; {samples} \
         samples; replicas that ran jobs: {workers:?}",
        db.backend,
        (last - first).as_seconds_f64(),
    );
    assert!(
        overlap <= 2,
        "by started_at/finished_at, {overlap} jobs ran at once"
    );
    assert_eq!(
        most_running.max(overlap as i64),
        2,
        "the queue ran at its concurrency"
    );
    assert!(
        workers.len() >= 2,
        "two at once with one consumer each are two replicas': {workers:?}"
    );
    assert!(
        (last - first) >= chrono::Duration::milliseconds(7900),
        "16 jobs of 1 s two at a time take 8 s at least, not {}",
        last - first
    );
    assert!(
        elapsed < Duration::from_secs(16),
        "16 jobs of 1 s two at a time should take about 8 s, not {elapsed:?}"
    );
}

// === 4. Rate across replicas ===

/// A queue of 20 starts a second, three replicas of 10 consumers and 50 starts a second each:
/// no whole second holds more than 21 starts, and over the run the queue keeps its pace.
async fn a_rate_of_twenty_a_second_holds_across_three_replicas(db: TestDb) {
    const JOBS: i64 = 100;
    exec(
        &db,
        "INSERT INTO queues (name, rate_per_second) VALUES ('api', 20)",
    )
    .await;
    let launcher = Launcher::new(&db, SETTINGS);
    let mut replicas = vec![
        started(&launcher, "a", &[]).await,
        started(&launcher, "b", &[]).await,
        started(&launcher, "c", &[]).await,
    ];
    insert_jobs(&db, "api", 1..=JOBS, 0, |_| 0, None).await;
    let rows = db.until_all_finished(Duration::from_secs(40)).await;
    for replica in &mut replicas {
        replica.assert_running();
        replica.stop(EXIT).await;
    }

    assert_eq!(rows.len() as i64, JOBS);
    assert!(
        rows.iter().all(|row| row.status == Status::Done),
        "every job DONE"
    );
    let mut starts: Vec<DateTime<Utc>> = rows
        .iter()
        .map(|row| row.started_at.expect("started_at"))
        .collect();
    starts.sort();
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for start in &starts {
        *per_second.entry(start.timestamp()).or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap_or(0);
    // The busiest window of one second anywhere, not only on whole seconds: reported.
    let sliding = (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|s| **s - starts[i] < chrono::Duration::seconds(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let span = (starts[starts.len() - 1] - starts[0]).as_seconds_f64();
    let average = (starts.len() - 1) as f64 / span;
    let workers: BTreeMap<&str, usize> = rows.iter().fold(BTreeMap::new(), |mut workers, row| {
        let worker = row.worker.as_deref().unwrap_or("?");
        *workers
            .entry(worker.split('-').next().unwrap_or(worker))
            .or_default() += 1;
        workers
    });
    eprintln!(
        "{:?}: {JOBS} jobs at 20/s on 3 replicas: starts per whole second {:?}; busiest second \
         {busiest}, busiest sliding second {sliding}; first to last start {span:.2}s, average \
         {average:.1}/s; jobs per replica {workers:?}",
        db.backend,
        per_second.values().collect::<Vec<_>>(),
    );
    assert!(
        busiest <= 21,
        "{busiest} starts in one second: {per_second:?}"
    );
    assert!(
        average >= 18.0,
        "average {average:.1} starts a second over {span:.2}s"
    );
}

// === 5. What each claim scope takes (store) ===

/// A claim in `scope` by `worker`, of at most `limit`, started or not.
fn claim_in<'a>(worker: &'a str, limit: u32, start: bool, scope: Scope<'a>) -> Claim<'a> {
    Claim {
        scope,
        ..Claim::new(worker, limit, start)
    }
}

/// The queues of claimed jobs, each once.
fn queues_of(jobs: &[jobsd::job::ClaimedJob]) -> BTreeSet<String> {
    jobs.iter().map(|job| job.queue.clone()).collect()
}

/// A claim from every unlimited queue takes none of a queue whose row has a pause, a
/// concurrency or a rate, and all of those without a row or whose row sets nothing.
async fn an_unlimited_claim_never_takes_a_paused_or_limited_queue(db: TestDb) {
    exec(
        &db,
        &format!(
            "INSERT INTO queues (name, paused_at) VALUES ('paused', {})",
            now(&db)
        ),
    )
    .await;
    exec(
        &db,
        "INSERT INTO queues (name, concurrency) VALUES ('heavy', 2)",
    )
    .await;
    exec(
        &db,
        "INSERT INTO queues (name, rate_per_second) VALUES ('api', 20)",
    )
    .await;
    // Concurrency 0 is a limit too (nothing runs), not "none".
    exec(
        &db,
        "INSERT INTO queues (name, concurrency) VALUES ('closed', 0)",
    )
    .await;
    exec(&db, "INSERT INTO queues (name) VALUES ('plain')").await;
    for (first, queue) in [
        (1, "paused"),
        (11, "heavy"),
        (21, "api"),
        (31, "closed"),
        (41, "plain"),
        (51, "default"),
        (61, "other"),
    ] {
        insert_jobs(&db, queue, first..=first + 2, 0, |_| 0, None).await;
    }

    let store = db.store().await;
    let taken = store
        .claim(&Claim::new("w", 100, true))
        .await
        .expect("claim");
    assert_eq!(taken.len(), 9, "three jobs each of the three free queues");
    let free: BTreeSet<String> = ["default", "other", "plain"].map(String::from).into();
    assert_eq!(queues_of(&taken), free);
    assert!(
        store
            .claim(&Claim::new("w", 100, true))
            .await
            .expect("claim")
            .is_empty(),
        "nothing else may be claimed without its queue's row"
    );
    let rows = db.all_rows().await;
    for row in &rows {
        let expected = if free.contains(&row.queue) {
            Status::Running
        } else {
            Status::New
        };
        assert_eq!(
            row.status, expected,
            "job {} of queue {}",
            row.id, row.queue
        );
    }

    // The queue's row is read at the claim: a limit added now holds now.
    insert_jobs(&db, "plain", 71..=72, 0, |_| 0, None).await;
    exec(
        &db,
        "UPDATE queues SET rate_per_second = 5 WHERE name = 'plain'",
    )
    .await;
    assert!(
        store
            .claim(&Claim::new("w", 100, true))
            .await
            .expect("claim")
            .is_empty(),
        "a queue limited a moment ago is left to limited claims"
    );
    // And a limit removed: its jobs are anyone's again.
    exec(
        &db,
        "UPDATE queues SET paused_at = NULL WHERE name = 'paused'",
    )
    .await;
    let taken = store
        .claim(&Claim::new("w", 100, false))
        .await
        .expect("claim");
    assert_eq!(taken.len(), 3);
    assert_eq!(queues_of(&taken), ["paused".to_owned()].into());
}

/// A queue of concurrency 2 with one job RUNNING elsewhere: a claim takes one, then none; a
/// finished job makes room for one more; a job whose holder has gone silent stops counting; a
/// paused queue, or one without a row, gives nothing to a limited claim.
async fn a_limited_claim_takes_only_the_room_its_concurrency_leaves(db: TestDb) {
    exec(
        &db,
        "INSERT INTO queues (name, concurrency) VALUES ('heavy', 2)",
    )
    .await;
    insert_jobs(&db, "heavy", 1..=8, 0, |_| 0, None).await;
    let store = db.store().await;
    let heavy = |worker, limit, start| claim_in(worker, limit, start, Scope::Limited("heavy"));

    let other = store.claim(&heavy("other", 1, true)).await.expect("claim");
    assert_eq!(other.len(), 1);
    let mine = store.claim(&heavy("me", 10, true)).await.expect("claim");
    assert_eq!(mine.len(), 1, "one RUNNING elsewhere leaves room for one");
    assert!(
        store
            .claim(&heavy("me", 10, false))
            .await
            .expect("claim")
            .is_empty(),
        "the queue is full"
    );
    let pool = db.sql().await;
    let held =
        "SELECT COUNT(*) FROM jobs WHERE queue = 'heavy' AND status IN ('QUEUED', 'RUNNING')";
    assert_eq!(count(&pool, held).await, 2);

    // A finished job makes room for one; a QUEUED one holds its place as a RUNNING one does.
    let done = store
        .finish("other", &[(other[0].id, Outcome::Done)])
        .await
        .expect("finish");
    assert_eq!(done, [other[0].id]);
    let queued = store.claim(&heavy("me", 10, false)).await.expect("claim");
    assert_eq!(queued.len(), 1, "one finished, one more");
    assert!(
        store
            .claim(&heavy("me", 10, true))
            .await
            .expect("claim")
            .is_empty(),
        "a QUEUED job holds its place"
    );

    // A job whose holder has been silent for longer than dead_after holds no place.
    exec(
        &db,
        &format!(
            "UPDATE jobs SET queued_at = {at}, heartbeat_at = {at} WHERE id = {id}",
            at = db.now_plus(-3600),
            id = queued[0].id
        ),
    )
    .await;
    assert_eq!(
        store
            .claim(&heavy("me", 10, true))
            .await
            .expect("claim")
            .len(),
        1,
        "a silent job's place is free"
    );

    // Paused: nothing, whatever the room.
    assert_eq!(
        exec(
            &db,
            "UPDATE queues SET concurrency = 100 WHERE name = 'heavy'"
        )
        .await,
        1
    );
    exec(
        &db,
        &format!(
            "UPDATE queues SET paused_at = {} WHERE name = 'heavy'",
            now(&db)
        ),
    )
    .await;
    assert!(
        store
            .claim(&heavy("me", 10, true))
            .await
            .expect("claim")
            .is_empty(),
        "a paused queue gives nothing"
    );
    // No row: nothing to a limited claim (the unlimited claim takes it).
    exec(&db, "DELETE FROM queues WHERE name = 'heavy'").await;
    assert!(
        store
            .claim(&heavy("me", 10, true))
            .await
            .expect("claim")
            .is_empty(),
        "a queue without a row is not limited"
    );
    let rest = store
        .claim(&Claim::new("me", 10, true))
        .await
        .expect("claim");
    assert_eq!(rest.len(), 4, "the unlimited claim takes the rest");
    let new = count(
        &pool,
        "SELECT COUNT(*) FROM jobs WHERE queue = 'heavy' AND status = 'NEW'",
    )
    .await;
    assert_eq!(new, 0);
    pool.close().await;
}

/// The `queues` setting's claim takes only the queues named, and of those never a limited one.
async fn a_claim_of_named_queues_takes_only_those(db: TestDb) {
    for (first, queue) in [(1, "a"), (11, "b"), (21, "default"), (31, "heavy")] {
        insert_jobs(&db, queue, first..=first + 2, 0, |_| 0, None).await;
    }
    exec(
        &db,
        "INSERT INTO queues (name, concurrency) VALUES ('heavy', 5)",
    )
    .await;
    let store = db.store().await;

    let none: Vec<String> = Vec::new();
    assert!(
        store
            .claim(&claim_in("w", 100, false, Scope::UnlimitedOf(&none)))
            .await
            .expect("claim")
            .is_empty(),
        "no queue named, no job"
    );
    let a = vec!["a".to_owned()];
    let taken = store
        .claim(&claim_in("w", 100, false, Scope::UnlimitedOf(&a)))
        .await
        .expect("claim");
    assert_eq!(taken.len(), 3);
    assert_eq!(queues_of(&taken), ["a".to_owned()].into());

    let named = vec!["b".to_owned(), "heavy".to_owned(), "missing".to_owned()];
    let taken = store
        .claim(&claim_in("w", 100, true, Scope::UnlimitedOf(&named)))
        .await
        .expect("claim");
    assert_eq!(taken.len(), 3);
    assert_eq!(
        queues_of(&taken),
        ["b".to_owned()].into(),
        "a limited queue is never taken by an unlimited claim, named or not"
    );

    let rows = db.all_rows().await;
    let still_new: BTreeSet<&str> = rows
        .iter()
        .filter(|row| row.status == Status::New)
        .map(|row| row.queue.as_str())
        .collect();
    assert_eq!(still_new, ["default", "heavy"].into());
}

/// Claims take by priority, then `run_at`, then id, in an unlimited and in a limited queue; a
/// claim of a few takes the first few; a job not yet due waits whatever its priority.
async fn a_claim_takes_by_priority_then_run_at_then_id(db: TestDb) {
    exec(
        &db,
        "INSERT INTO queues (name, concurrency) VALUES ('heavy', 100)",
    )
    .await;
    for queue in ["default", "heavy"] {
        let base = if queue == "default" { 0 } else { 100 };
        insert_jobs(
            &db,
            queue,
            base + 1..=base + 8,
            0,
            |n| [3, 0, -2, 0, 3, 0, -2, 7][((n - 1) % 100) as usize],
            Some(&db.now_plus(-10)),
        )
        .await;
        // Higher ids, due earlier.
        insert_jobs(
            &db,
            queue,
            base + 9..=base + 10,
            0,
            |n| if n % 100 == 9 { 0 } else { 3 },
            Some(&db.now_plus(-30)),
        )
        .await;
        // The most urgent, but not due for an hour.
        insert_jobs(
            &db,
            queue,
            base + 11..=base + 11,
            0,
            |_| -100,
            Some(&db.now_plus(3600)),
        )
        .await;
    }
    let rows = db.all_rows().await;
    let store = db.store().await;
    for (queue, scope) in [
        ("default", Scope::Unlimited),
        ("heavy", Scope::Limited("heavy")),
    ] {
        let mut expected: Vec<&JobRow> = by_queue(&rows, queue)
            .filter(|row| row.priority != -100)
            .collect();
        expected.sort_by_key(|row| (row.priority, row.run_at, row.id));
        let expected: Vec<i64> = expected.iter().map(|row| row.id).collect();

        // A claim of three takes the first three.
        let three = store
            .claim(&claim_in("w", 3, false, scope))
            .await
            .expect("claim");
        let three: BTreeSet<i64> = three.iter().map(|job| job.id).collect();
        assert_eq!(
            three,
            expected[..3].iter().copied().collect(),
            "{queue}: the first three by priority, run_at, id"
        );
        // One at a time, the rest in order.
        let mut order = Vec::new();
        loop {
            let one = store
                .claim(&claim_in("w", 1, false, scope))
                .await
                .expect("claim");
            match one.as_slice() {
                [] => break,
                [job] => order.push(job.id),
                more => panic!("a claim of one took {}", more.len()),
            }
        }
        assert_eq!(order, expected[3..], "{queue}: claims one by one");
    }
    let waiting: Vec<i16> = db
        .all_rows()
        .await
        .iter()
        .filter(|row| row.status == Status::New)
        .map(|row| row.priority)
        .collect();
    assert_eq!(waiting, [-100, -100], "the jobs not yet due wait");
}

// === 6. Resume ===

/// A resume of a paused job waits while its queue has no room (fresh QUEUED or RUNNING jobs at
/// its concurrency) and while the queue is paused; it goes through once there is room.
async fn a_resume_waits_while_its_queue_is_full_or_paused(db: TestDb) {
    exec(
        &db,
        "INSERT INTO queues (name, concurrency) VALUES ('heavy', 2)",
    )
    .await;
    insert_jobs(&db, "heavy", 1..=4, 0, |_| 0, None).await;
    insert_jobs(&db, "emails", 5..=5, 0, |_| 0, None).await;
    let store = db.store().await;
    let dead_after = Duration::from_secs(10);
    let heavy = |worker, limit, start| claim_in(worker, limit, start, Scope::Limited("heavy"));
    let resume = |id, queue| Resume {
        id,
        worker: "w",
        queue,
        dead_after,
    };
    let status = async |id: i64| db.rows(&store, &[id]).await.remove(0).status;

    // w runs one heavy job and pauses it: a PAUSED job holds no place.
    let mine = store.claim(&heavy("w", 1, true)).await.expect("claim");
    assert_eq!(mine.len(), 1);
    let id = mine[0].id;
    assert!(store.pause(id, "w").await.expect("pause"));
    let theirs = store.claim(&heavy("x", 10, true)).await.expect("claim");
    assert_eq!(theirs.len(), 2, "a paused job leaves its place");

    assert_eq!(
        store.resume(&resume(id, "heavy")).await.expect("resume"),
        Resumed::Wait,
        "two RUNNING of two"
    );
    assert_eq!(status(id).await, Status::Paused);

    let done = store
        .finish("x", &[(theirs[0].id, Outcome::Done)])
        .await
        .expect("finish");
    assert_eq!(done, [theirs[0].id]);
    assert_eq!(
        store.resume(&resume(id, "heavy")).await.expect("resume"),
        Resumed::Yes,
        "one finished: room for one"
    );
    assert_eq!(status(id).await, Status::Running);

    // Paused again; a QUEUED job takes the place.
    assert!(store.pause(id, "w").await.expect("pause"));
    let queued = store.claim(&heavy("y", 10, false)).await.expect("claim");
    assert_eq!(queued.len(), 1);
    assert_eq!(
        store.resume(&resume(id, "heavy")).await.expect("resume"),
        Resumed::Wait,
        "a QUEUED job holds its place"
    );
    // Its holder silent for longer than dead_after: the place is free.
    exec(
        &db,
        &format!(
            "UPDATE jobs SET queued_at = {} WHERE id = {}",
            db.now_plus(-3600),
            queued[0].id
        ),
    )
    .await;
    assert_eq!(
        store.resume(&resume(id, "heavy")).await.expect("resume"),
        Resumed::Yes,
        "a silent job holds no place"
    );
    assert_eq!(status(id).await, Status::Running);

    // A queue paused: the resume waits, room or not, until the queue runs again.
    let emails = store
        .claim(&claim_in(
            "w",
            10,
            true,
            Scope::UnlimitedOf(&["emails".to_owned()]),
        ))
        .await
        .expect("claim");
    assert_eq!(emails.len(), 1);
    let email = emails[0].id;
    assert!(store.pause(email, "w").await.expect("pause"));
    exec(
        &db,
        &format!(
            "INSERT INTO queues (name, paused_at) VALUES ('emails', {})",
            now(&db)
        ),
    )
    .await;
    assert_eq!(
        store
            .resume(&resume(email, "emails"))
            .await
            .expect("resume"),
        Resumed::Wait,
        "its queue is paused"
    );
    assert_eq!(status(email).await, Status::Paused);
    exec(
        &db,
        "UPDATE queues SET paused_at = NULL WHERE name = 'emails'",
    )
    .await;
    assert_eq!(
        store
            .resume(&resume(email, "emails"))
            .await
            .expect("resume"),
        Resumed::Yes
    );
    assert_eq!(status(email).await, Status::Running);

    // Another worker's job is not this worker's to resume.
    assert!(store.pause(email, "w").await.expect("pause"));
    let not_mine = Resume {
        worker: "x",
        ..resume(email, "emails")
    };
    assert_eq!(
        store.resume(&not_mine).await.expect("resume"),
        Resumed::Lost
    );
}
