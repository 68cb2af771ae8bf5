//! Reliability with real processes: several `jobsd run` replicas on one database, killed with
//! `kill -9`, restarted one by one under load, restarted under the same worker prefix, and
//! started together on an empty database. Jobs go in with plain SQL, and every verdict is read back from the database: the rows themselves,
//! and a history of every status change that a trigger on `jobs` records, so that "ran once" and
//! "finished once" are counted rather than assumed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jobsd::store::Store;
use jobsd::{JobRow, Status};
use sqlx::AnyPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::common::{Backend, TestDb};
use processes::{Jobsd, Launcher};

// The process helpers serve the suites that run real processes; main.rs registers them here.
#[path = "processes.rs"]
pub(crate) mod processes;

crate::on_every_backend!(
    three_replicas_drain_ten_thousand_jobs_each_run_and_finished_once,
    a_replica_killed_mid_run_has_its_jobs_rescued_by_the_survivor,
    a_rolling_restart_under_load_loses_nothing_and_cancels_nothing,
    a_restart_under_the_same_worker_prefix_never_adopts_the_old_runs_jobs,
    replicas_starting_together_on_an_empty_database_all_come_up,
);

/// How long a process may take to start and make its first pass on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

/// How long a SIGTERMed process may take to exit: its shutdown grace plus a wide margin.
const EXIT: Duration = Duration::from_secs(30);

/// How often the tests look at the table while they wait for something.
const LOOK: Duration = Duration::from_millis(50);

/// Slack on timing bounds: the machine is small and shared.
const MARGIN: Duration = Duration::from_secs(8);

const MS: i64 = 1_000_000;

// === Jobs as a user inserts them ===

/// A `sleep` job; `object_id` names it in the test.
pub(crate) struct Job {
    object_id: i64,
    /// Nanoseconds; `None` hangs forever.
    sleep: Option<i64>,
    max_attempts: i32,
}

impl Job {
    pub(crate) fn sleep(object_id: i64, millis: i64) -> Job {
        Job {
            object_id,
            sleep: Some(millis * MS),
            max_attempts: 1,
        }
    }

    fn attempts(self, max_attempts: i32) -> Job {
        Job {
            max_attempts,
            ..self
        }
    }
}

/// Inserts `jobs` with one plain `INSERT … VALUES` statement, as a user at a SQL prompt would.
pub(crate) async fn insert(pool: &AnyPool, jobs: &[Job]) {
    let values: Vec<String> = jobs
        .iter()
        .map(|job| {
            let sleep = job
                .sleep
                .map_or("NULL".to_owned(), |nanos| nanos.to_string());
            format!("({}, {sleep}, {})", job.object_id, job.max_attempts)
        })
        .collect();
    let sql = format!(
        "INSERT INTO jobs (object_id, sleep, max_attempts) VALUES {}",
        values.join(", ")
    );
    sqlx::query(&sql).execute(pool).await.expect("insert jobs");
}

async fn rows(store: &Arc<dyn Store>) -> Vec<JobRow> {
    store.rows(&[], 1_000_000).await.expect("rows read back")
}

/// The rows by `object_id`.
fn by_object(rows: Vec<JobRow>) -> HashMap<i64, JobRow> {
    rows.into_iter()
        .map(|row| (row.object_id.expect("every test job has an object_id"), row))
        .collect()
}

/// Whether `worker` is an id the daemon made from prefix `worker_id`.
fn from_prefix(worker: Option<&str>, worker_id: &str) -> bool {
    worker.is_some_and(|worker| {
        worker
            .strip_prefix(worker_id)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|suffix| !suffix.is_empty())
    })
}

fn held(row: &JobRow) -> bool {
    matches!(row.status, Status::Queued | Status::Running)
}

fn last_sign_of_life(row: &JobRow) -> chrono::DateTime<chrono::Utc> {
    row.heartbeat_at
        .or(row.started_at)
        .or(row.queued_at)
        .expect("a job that was held has a sign of life")
}

fn as_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).expect("a short duration")
}

/// Polls `check` until it returns `Ok`; after `limit`, panics with the last `Err`, which says
/// what was still missing.
pub(crate) async fn until<T>(
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(missing) => assert!(Instant::now() < deadline, "after {limit:?}: {missing}"),
        }
        tokio::time::sleep(LOOK).await;
    }
}

/// Waits until no job is NEW, QUEUED, RUNNING or PAUSED, and returns the rows.
pub(crate) async fn until_all_finished(store: &Arc<dyn Store>, limit: Duration) -> Vec<JobRow> {
    until(limit, async || {
        let counts = store.counts().await.expect("counts");
        let open: Vec<_> = counts
            .iter()
            .filter(|(status, count)| !status.is_terminal() && *count > 0)
            .collect();
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("jobs still unfinished: {open:?}"))
        }
    })
    .await;
    rows(store).await
}

// === The history of status changes ===

/// One status change of one job, as the trigger saw the row after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) worker: Option<String>,
    pub(crate) attempts: i64,
    pub(crate) last_error: Option<String>,
}

impl Change {
    pub(crate) fn is(&self, from: &str, to: &str) -> bool {
        self.from == from && self.to == to
    }

    /// Whether the change is a run's start: into RUNNING, or straight from QUEUED to DONE, a run
    /// that ended before its start was written, which the one write records with its outcome.
    pub(crate) fn starts(&self) -> bool {
        self.to == "RUNNING" || self.is("QUEUED", "DONE")
    }
}

/// Adds a `job_history` table and a trigger that appends a row to it at every change of a job's
/// status. It only observes: the daemon never reads it.
async fn record_history(db: &TestDb) {
    let pool = db.sql().await;
    record_history_on(db.backend, &pool).await;
    pool.close().await;
}

/// [`record_history`] over a connection the caller holds.
pub(crate) async fn record_history_on(backend: Backend, pool: &AnyPool) {
    let statements: &[&str] = match backend {
        Backend::Postgres => &[
            "CREATE TABLE job_history (seq BIGSERIAL PRIMARY KEY, job_id BIGINT NOT NULL, \
             from_status TEXT NOT NULL, to_status TEXT NOT NULL, worker TEXT, \
             attempts INTEGER NOT NULL, last_error TEXT)",
            "CREATE FUNCTION job_history() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO job_history (job_id, from_status, to_status, worker, attempts, last_error) \
             VALUES (NEW.id, OLD.status, NEW.status, NEW.worker, NEW.attempts, NEW.last_error); \
             RETURN NULL; END; $$",
            "CREATE TRIGGER job_history AFTER UPDATE OF status ON jobs FOR EACH ROW \
             WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION job_history()",
        ],
        // A plain INSERT … VALUES in the trigger: InnoDB then takes no table-wide AUTO-INC lock,
        // so the history adds no lock waits between replicas.
        Backend::Mysql => &[
            "CREATE TABLE job_history (seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             job_id BIGINT NOT NULL, from_status VARCHAR(16) NOT NULL, to_status VARCHAR(16) NOT NULL, \
             worker VARCHAR(255) NULL, attempts INT NOT NULL, last_error VARCHAR(2000) NULL) \
             ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
            "CREATE TRIGGER job_history AFTER UPDATE ON jobs FOR EACH ROW BEGIN \
             IF NOT (OLD.status <=> NEW.status) THEN \
             INSERT INTO job_history (job_id, from_status, to_status, worker, attempts, last_error) \
             VALUES (NEW.id, OLD.status, NEW.status, NEW.worker, NEW.attempts, LEFT(NEW.last_error, 2000)); \
             END IF; END",
        ],
        Backend::Sqlite => &[
            "CREATE TABLE job_history (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, \
             from_status TEXT NOT NULL, to_status TEXT NOT NULL, worker TEXT, \
             attempts INTEGER NOT NULL, last_error TEXT)",
            "CREATE TRIGGER job_history AFTER UPDATE OF status ON jobs \
             WHEN OLD.status IS NOT NEW.status BEGIN \
             INSERT INTO job_history (job_id, from_status, to_status, worker, attempts, last_error) \
             VALUES (NEW.id, OLD.status, NEW.status, NEW.worker, NEW.attempts, NEW.last_error); END",
        ],
    };
    for statement in statements {
        sqlx::raw_sql(statement)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Every job's status changes in order, by job id.
async fn history(db: &TestDb) -> BTreeMap<i64, Vec<Change>> {
    let pool = db.sql().await;
    let history = history_on(&pool).await;
    pool.close().await;
    history
}

/// [`history`] over a connection the caller keeps, for reading it again and again.
pub(crate) async fn history_on(pool: &AnyPool) -> BTreeMap<i64, Vec<Change>> {
    // job_id, from_status, to_status, worker, attempts, last_error
    type Recorded = (i64, String, String, Option<String>, i64, Option<String>);
    let changes: Vec<Recorded> = sqlx::query_as(
        "SELECT job_id, from_status, to_status, worker, attempts, last_error \
             FROM job_history ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("history read back");
    let mut by_job: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
    for (job, from, to, worker, attempts, last_error) in changes {
        by_job.entry(job).or_default().push(Change {
            from,
            to,
            worker,
            attempts,
            last_error,
        });
    }
    by_job
}

/// The changes of a job that was claimed, run and finished by `worker` with nothing in between.
fn ran_once_by(worker: &str, finished: &str, attempts: i64) -> Vec<Change> {
    let change = |from: &str, to: &str, attempts| Change {
        from: from.into(),
        to: to.into(),
        worker: Some(worker.to_owned()),
        attempts,
        last_error: None,
    };
    vec![
        change("NEW", "QUEUED", attempts - 1),
        change("QUEUED", "RUNNING", attempts),
        change("RUNNING", finished, attempts),
    ]
}

/// The same for a job claimed ahead that was over before its start was written: start and
/// outcome in one write.
fn ran_ahead_by(worker: &str, finished: &str, attempts: i64) -> Vec<Change> {
    let mut path = ran_once_by(worker, finished, attempts);
    path.remove(1);
    path[1].from = "QUEUED".into();
    path
}

/// The same for a replica without a rate limit, whose claim starts the job in the same write.
fn ran_at_once_by(worker: &str, finished: &str, attempts: i64) -> Vec<Change> {
    let mut path = ran_once_by(worker, finished, attempts);
    path.remove(0);
    path[0].from = "NEW".into();
    path
}

// === 1. Replicas share a large backlog ===

/// Three processes drain one backlog: every job runs exactly once, finishes exactly once, and
/// every replica takes part.
async fn three_replicas_drain_ten_thousand_jobs_each_run_and_finished_once(db: TestDb) {
    const JOBS: i64 = 10_000;
    record_history(&db).await;
    let launcher = Launcher::new(
        &db,
        &[
            ("JOBSD_POLL_INTERVAL", "100ms"),
            ("JOBSD_CONSUMERS", "10"),
            ("JOBSD_RATE_PER_SECOND", "0"),
            ("JOBSD_DEAD_AFTER", "10s"),
            ("JOBSD_SHUTDOWN_GRACE", "5s"),
        ],
    );
    let prefixes = ["a", "b", "c"];
    let mut replicas: Vec<Jobsd> = prefixes.iter().map(|p| launcher.start(p)).collect();
    for replica in &mut replicas {
        replica.ready(STARTUP).await;
    }
    let sql = db.sql().await;
    let jobs: Vec<Job> = (1..=JOBS).map(|n| Job::sleep(n, 0)).collect();
    let began = Instant::now();
    insert(&sql, &jobs).await;
    sql.close().await;
    let store = db.store().await;
    let rows = until_all_finished(&store, Duration::from_secs(240)).await;
    println!(
        "{:?}: {JOBS} jobs drained by 3 processes in {:.1?}",
        db.backend,
        began.elapsed()
    );
    for replica in &mut replicas {
        replica.assert_running();
        replica.stop(EXIT).await;
    }

    assert_eq!(rows.len() as i64, JOBS, "no job lost, none added");
    let mut by_prefix: HashMap<&str, usize> = HashMap::new();
    let mut workers = HashSet::new();
    for row in &rows {
        assert_eq!(
            (row.status, row.attempts, row.last_error.as_deref()),
            (Status::Done, 1, None),
            "{row:?}"
        );
        assert!(row.cancelled_at.is_none(), "{row:?}");
        let (queued, started, finished) = (
            row.queued_at.expect("queued_at"),
            row.started_at.expect("started_at"),
            row.finished_at.expect("finished_at"),
        );
        assert!(
            row.created_at <= queued && queued <= started && started <= finished,
            "timestamps in order: {row:?}"
        );
        let prefix = prefixes
            .iter()
            .find(|p| from_prefix(row.worker.as_deref(), p))
            .unwrap_or_else(|| panic!("held by one of the three: {row:?}"));
        *by_prefix.entry(prefix).or_default() += 1;
        workers.insert(row.worker.clone());
    }
    println!("{:?}: jobs per replica {by_prefix:?}", db.backend);
    for prefix in prefixes {
        assert!(
            by_prefix.get(prefix).copied().unwrap_or(0) > 0,
            "replica {prefix} did some of the work: {by_prefix:?}"
        );
    }
    assert_eq!(workers.len(), 3, "one worker id per process: {workers:?}");

    let history = history(&db).await;
    assert_eq!(history.len() as i64, JOBS, "every job changed status");
    for row in &rows {
        let worker = row.worker.as_deref().expect("worker");
        // Started by its claim, or claimed ahead and started when a consumer came free, or
        // over before that start was written.
        let path = &history[&row.id];
        assert!(
            *path == ran_at_once_by(worker, "DONE", 1)
                || *path == ran_once_by(worker, "DONE", 1)
                || *path == ran_ahead_by(worker, "DONE", 1),
            "job {} claimed, started and finished once, by one replica: {path:?}",
            row.id
        );
    }
}

// === 2. kill -9 ===

/// A replica dies without a word (`kill -9`, an OOM kill, a lost node) while it holds running
/// and queued jobs. The survivor rescues them once they have been silent for `dead_after`: a
/// running job with no attempt left is cancelled, one with attempts left runs again, and a
/// queued one runs there without using an attempt. The survivor's own jobs, including one that
/// waits on its rate limiter for longer than `dead_after`, are left alone.
async fn a_replica_killed_mid_run_has_its_jobs_rescued_by_the_survivor(db: TestDb) {
    const DEAD_AFTER: Duration = Duration::from_secs(2);
    const POLL: Duration = Duration::from_millis(200);
    // Survivor's jobs: long enough to fill its slots until the killed replica has claimed its
    // own and the rescue has happened.
    const SURVIVOR: [i64; 4] = [101, 102, 103, 104];
    const LONG: i64 = 1; // max_attempts 1: cancelled when rescued
    const RETRIED: i64 = 2; // max_attempts 2: runs again on the survivor
    const QUEUED: [i64; 3] = [3, 4, 5]; // wait on the killed replica's rate limiter
    record_history(&db).await;
    let launcher = Launcher::new(
        &db,
        &[
            ("JOBSD_DEAD_AFTER", "2s"),
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_CONTROL_INTERVAL", "200ms"),
            ("JOBSD_RETRY_BACKOFF", "200ms"),
            // One start a second: claimed jobs wait in the channel, QUEUED, for seconds.
            ("JOBSD_RATE_PER_SECOND", "1"),
            ("JOBSD_SHUTDOWN_GRACE", "2s"),
        ],
    );
    let sql = db.sql().await;
    let store = db.store().await;

    // The survivor first, with its slots all taken, so that it cannot claim the other's jobs.
    let mut survivor = launcher.start_with("b", &[("JOBSD_CONSUMERS", "4")]);
    survivor.ready(STARTUP).await;
    let own: Vec<Job> = SURVIVOR.iter().map(|&n| Job::sleep(n, 6_000)).collect();
    insert(&sql, &own).await;
    until(Duration::from_secs(10), async || {
        let rows = by_object(rows(&store).await);
        let holds = SURVIVOR
            .iter()
            .all(|n| held(&rows[n]) && from_prefix(rows[n].worker.as_deref(), "b"));
        holds
            .then_some(())
            .ok_or_else(|| format!("survivor holds its jobs: {rows:?}"))
    })
    .await;

    let mut doomed = launcher.start_with("a", &[("JOBSD_CONSUMERS", "5")]);
    doomed.ready(STARTUP).await;
    let mut jobs = vec![
        Job::sleep(LONG, 60_000),
        Job::sleep(RETRIED, 5_000).attempts(2),
    ];
    jobs.extend(QUEUED.iter().map(|&n| Job::sleep(n, 300)));
    insert(&sql, &jobs).await;
    // Both long jobs running and at least one job still waiting on the limiter: the moment to die.
    until(Duration::from_secs(10), async || {
        doomed.assert_running();
        let rows = by_object(rows(&store).await);
        let running = [LONG, RETRIED].iter().all(|n| {
            rows[n].status == Status::Running && from_prefix(rows[n].worker.as_deref(), "a")
        });
        let waiting = QUEUED.iter().any(|n| {
            rows[n].status == Status::Queued && from_prefix(rows[n].worker.as_deref(), "a")
        });
        (running && waiting)
            .then_some(())
            .ok_or_else(|| format!("not yet running and queued on a: {rows:?}"))
    })
    .await;
    doomed.kill().await;
    let killed_at = Instant::now();

    let at_kill = by_object(rows(&store).await);
    let of_doomed = |status: Status| -> Vec<i64> {
        let mut ids: Vec<i64> = at_kill
            .values()
            .filter(|row| row.status == status && from_prefix(row.worker.as_deref(), "a"))
            .map(|row| row.object_id.expect("object_id"))
            .collect();
        ids.sort_unstable();
        ids
    };
    let (running, queued, done) = (
        of_doomed(Status::Running),
        of_doomed(Status::Queued),
        of_doomed(Status::Done),
    );
    let doomed_worker = at_kill[&LONG].worker.clone().expect("worker");
    assert!(
        running.contains(&LONG) && running.contains(&RETRIED) && !queued.is_empty(),
        "killed while running {running:?} and holding queued {queued:?}"
    );
    assert!(
        SURVIVOR
            .iter()
            .all(|n| held(&at_kill[n]) && from_prefix(at_kill[n].worker.as_deref(), "b")),
        "the survivor still holds its own jobs: {at_kill:?}"
    );

    // Rescued once silent for dead_after, found by a sweep within a poll of that.
    let rescue = DEAD_AFTER + POLL + MARGIN;
    until(rescue, async || {
        survivor.assert_running();
        let now = by_object(rows(&store).await);
        let stranded: Vec<&JobRow> = running
            .iter()
            .chain(&queued)
            .map(|n| &now[n])
            .filter(|row| held(row) && row.worker.as_deref() == Some(&doomed_worker))
            .collect();
        stranded
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("still held by the killed replica: {stranded:?}"))
    })
    .await;
    println!(
        "{:?}: the killed replica's jobs were rescued {:.1?} after the kill",
        db.backend,
        killed_at.elapsed()
    );

    let rows = by_object(until_all_finished(&store, Duration::from_secs(60)).await);
    survivor.stop(EXIT).await;
    let survivor_worker = rows[&SURVIVOR[0]].worker.clone().expect("worker");
    let history = history(&db).await;
    let changes = |n: i64| &history[&rows[&n].id];

    for n in &running {
        let row = &rows[n];
        let first_run = &changes(*n)[..2];
        assert_eq!(
            first_run,
            &ran_once_by(&doomed_worker, "-", 1)[..2],
            "job {n} ran on the killed replica"
        );
        if row.max_attempts == 1 {
            assert_eq!(
                (row.status, row.attempts, row.worker.as_deref()),
                (Status::Cancelled, 1, Some(doomed_worker.as_str())),
                "a dead job with no attempt left is cancelled: {row:?}"
            );
            let cancelled = row.cancelled_at.expect("cancelled_at");
            assert_eq!(row.finished_at, Some(cancelled), "{row:?}");
            assert!(
                row.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("no sign of life")),
                "{row:?}"
            );
            let silent = cancelled - last_sign_of_life(row);
            assert!(
                silent >= as_chrono(DEAD_AFTER) && silent <= as_chrono(rescue),
                "cancelled after {silent} of silence; dead_after is {DEAD_AFTER:?}: {row:?}"
            );
            assert_eq!(changes(*n).len(), 3, "{:?}", changes(*n));
            assert!(changes(*n)[2].is("RUNNING", "CANCELLED"));
        } else {
            assert_eq!(
                (row.status, row.attempts, row.worker.as_deref()),
                (Status::Done, 2, Some(survivor_worker.as_str())),
                "a dead job with an attempt left runs again on the survivor: {row:?}"
            );
            let rescued = &changes(*n)[2];
            assert!(
                rescued.is("RUNNING", "NEW")
                    && rescued.attempts == 1
                    && rescued
                        .last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("no sign of life")),
                "sent back to NEW as dead, its attempt counted: {rescued:?}"
            );
            let mut rerun = ran_once_by(&survivor_worker, "DONE", 2);
            rerun[0].last_error = rescued.last_error.clone();
            rerun[1].last_error = rescued.last_error.clone();
            assert_eq!(
                &changes(*n)[3..],
                &rerun[..],
                "job {n} then ran once more, on the survivor"
            );
        }
    }
    for n in &queued {
        let row = &rows[n];
        assert_eq!(
            (row.status, row.attempts, row.worker.as_deref()),
            (Status::Done, 1, Some(survivor_worker.as_str())),
            "a job queued on the killed replica runs on the survivor, no attempt used: {row:?}"
        );
        let path = changes(*n);
        assert!(
            path[0].is("NEW", "QUEUED") && path[0].worker.as_deref() == Some(&doomed_worker),
            "{path:?}"
        );
        assert!(
            path[1].is("QUEUED", "NEW") && path[1].attempts == 0,
            "requeued without using an attempt: {path:?}"
        );
        assert_eq!(
            &path[2..],
            &ran_once_by(&survivor_worker, "DONE", 1)[..],
            "job {n} then ran once on the survivor"
        );
    }
    for n in &done {
        let row = &rows[n];
        assert_eq!(
            (row.status, row.attempts, row.worker.as_deref()),
            (Status::Done, 1, Some(doomed_worker.as_str())),
            "what the killed replica finished stays finished: {row:?}"
        );
    }
    let mut waited_longest = chrono::Duration::zero();
    for n in SURVIVOR {
        let row = &rows[&n];
        assert_eq!(
            changes(n),
            &ran_once_by(&survivor_worker, "DONE", 1),
            "the survivor's own job {n} is untouched: {row:?}"
        );
        assert_eq!(row.last_error, None, "{row:?}");
        let waited = row.started_at.expect("started") - row.queued_at.expect("queued");
        waited_longest = waited_longest.max(waited);
    }
    assert!(
        waited_longest > as_chrono(DEAD_AFTER),
        "one of the survivor's jobs waited QUEUED on its limiter longer than dead_after \
         ({waited_longest}) and was not taken for dead"
    );
}

// === 3. Rolling restart ===

/// A Deployment's rolling update: under steady load, each replica in turn gets SIGTERM and a
/// replacement starts. Shutdown hands unfinished jobs back (giving back the attempt of a run it
/// interrupts), so nothing is lost, nothing cancelled, and every job finishes exactly once.
async fn a_rolling_restart_under_load_loses_nothing_and_cancels_nothing(db: TestDb) {
    // Shorter than most jobs, so that shutdown has running jobs to interrupt and hand back.
    const GRACE: Duration = Duration::from_millis(50);
    record_history(&db).await;
    let launcher = Launcher::new(
        &db,
        &[
            ("JOBSD_POLL_INTERVAL", "100ms"),
            ("JOBSD_CONTROL_INTERVAL", "200ms"),
            ("JOBSD_CONSUMERS", "4"),
            // The default pace; a claimed job may be waiting on it when SIGTERM comes.
            ("JOBSD_RATE_PER_SECOND", "50"),
            ("JOBSD_DEAD_AFTER", "5s"),
            ("JOBSD_SHUTDOWN_GRACE", "50ms"),
        ],
    );
    let store = db.store().await;
    let mut replicas: Vec<Jobsd> = ["r1", "r2", "r3"]
        .iter()
        .map(|p| launcher.start(p))
        .collect();
    for replica in &mut replicas {
        replica.ready(STARTUP).await;
    }

    // The feeder: four jobs of 100 to 300 ms every 50 ms, a little more than three replicas of
    // four consumers keep up with, so every replica stays busy.
    let stop_feeding = CancellationToken::new();
    let feeder = tokio::spawn({
        let (db, stop) = (db.clone(), stop_feeding.clone());
        async move {
            let pool = db.sql().await;
            let mut inserted: i64 = 0;
            while !stop.is_cancelled() {
                let jobs: Vec<Job> = (inserted + 1..=inserted + 4)
                    .map(|n| Job::sleep(n, 100 + (n * 53) % 201))
                    .collect();
                insert(&pool, &jobs).await;
                inserted += 4;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pool.close().await;
            inserted
        }
    });
    // Each replica, old or new, is in the swing of it before the next one is restarted.
    const SETTLED: usize = 20;
    let done_by = async |prefix: &str| -> Result<(), String> {
        let done = rows(&store)
            .await
            .iter()
            .filter(|row| row.status == Status::Done && from_prefix(row.worker.as_deref(), prefix))
            .count();
        (done >= SETTLED)
            .then_some(())
            .ok_or_else(|| format!("{prefix} has finished {done} jobs, not yet {SETTLED}"))
    };
    for prefix in ["r1", "r2", "r3"] {
        until(Duration::from_secs(30), async || done_by(prefix).await).await;
    }

    let mut interrupted_while_running = 0;
    for next in ["r4", "r5", "r6"] {
        let mut old = replicas.remove(0);
        // A moment when it runs a job that will outlast the grace; if none comes, go anyway.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let now = chrono::Utc::now();
            let outlasting = rows(&store).await.into_iter().any(|row| {
                row.status == Status::Running
                    && from_prefix(row.worker.as_deref(), &old.worker_id)
                    && row.started_at.zip(row.sleep).is_some_and(|(start, nanos)| {
                        start + chrono::Duration::nanoseconds(nanos)
                            > now + as_chrono(GRACE) + chrono::Duration::milliseconds(100)
                    })
            });
            if outlasting {
                interrupted_while_running += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        old.stop(EXIT).await;
        let mut replacement = launcher.start(next);
        replacement.ready(STARTUP).await;
        until(Duration::from_secs(30), async || done_by(next).await).await;
        replicas.push(replacement);
    }
    stop_feeding.cancel();
    let inserted = feeder.await.expect("feeder");
    let rows = until_all_finished(&store, Duration::from_secs(120)).await;
    for replica in &mut replicas {
        replica.assert_running();
        replica.stop(EXIT).await;
    }

    assert_eq!(rows.len() as i64, inserted, "no job lost");
    for row in &rows {
        assert_eq!(
            (row.status, row.attempts, row.last_error.as_deref()),
            (Status::Done, 1, None),
            "done once, no attempt spent on a shutdown: {row:?}"
        );
        assert!(
            row.cancelled_at.is_none() && row.finished_at.is_some(),
            "{row:?}"
        );
    }
    let history = history(&db).await;
    let mut released_running = 0;
    for row in &rows {
        let path = &history[&row.id];
        assert!(
            path.iter()
                .all(|c| !matches!(c.to.as_str(), "CANCELLED" | "FAILED")),
            "job {} never cancelled or failed: {path:?}",
            row.id
        );
        let dones = path.iter().filter(|c| c.to == "DONE").count();
        assert_eq!(dones, 1, "job {} finished exactly once: {path:?}", row.id);
        let releases = path.iter().filter(|c| c.is("RUNNING", "NEW")).count();
        let starts = path.iter().filter(|c| c.starts()).count();
        assert_eq!(
            starts,
            releases + 1,
            "job {} started once more than it was handed back: {path:?}",
            row.id
        );
        for change in path.iter().filter(|c| c.is("RUNNING", "NEW")) {
            assert!(
                change.attempts == 0 && change.last_error.is_none() && change.worker.is_none(),
                "handed back by a shutdown with its attempt returned: {path:?}"
            );
        }
        let last = path.last().expect("changes");
        assert_eq!(last.worker, row.worker, "{path:?}");
        released_running += releases;
    }
    println!(
        "{:?}: {inserted} jobs through 3 restarts; {released_running} running jobs handed back \
         ({interrupted_while_running} restarts caught a job outlasting the grace)",
        db.backend
    );
    for prefix in ["r4", "r5", "r6"] {
        assert!(
            rows.iter()
                .any(|row| from_prefix(row.worker.as_deref(), prefix)),
            "replacement {prefix} did some of the work"
        );
    }
    assert!(
        released_running > 0,
        "some shutdown interrupted a running job and handed it back"
    );
}

// === 4. Worker ids across restarts ===

/// Kubernetes restarts a container under the same pod name, so every process start sees the
/// same `worker_id` prefix. The daemon adds a suffix new at every start: the new process never
/// takes its predecessor's jobs for its own (not even when it shuts down and hands back what it
/// holds); those are rescued as dead, like any silent replica's.
async fn a_restart_under_the_same_worker_prefix_never_adopts_the_old_runs_jobs(db: TestDb) {
    const DEAD_AFTER: Duration = Duration::from_secs(2);
    const LONG: i64 = 1; // max_attempts 1: cancelled when rescued
    const RETRIED: i64 = 2; // max_attempts 2
    record_history(&db).await;
    let launcher = Launcher::new(
        &db,
        &[
            ("JOBSD_DEAD_AFTER", "2s"),
            ("JOBSD_POLL_INTERVAL", "200ms"),
            ("JOBSD_CONTROL_INTERVAL", "200ms"),
            ("JOBSD_CONSUMERS", "2"),
            ("JOBSD_RATE_PER_SECOND", "0"),
            ("JOBSD_RETRY_BACKOFF", "200ms"),
            ("JOBSD_SHUTDOWN_GRACE", "1s"),
        ],
    );
    let sql = db.sql().await;
    let store = db.store().await;

    let mut first = launcher.start("pod");
    first.ready(STARTUP).await;
    insert(
        &sql,
        &[
            Job::sleep(LONG, 60_000),
            Job::sleep(RETRIED, 3_000).attempts(2),
        ],
    )
    .await;
    let first_worker = until(Duration::from_secs(10), async || {
        let rows = by_object(rows(&store).await);
        let running = [LONG, RETRIED].map(|n| &rows[&n]);
        if running.iter().all(|row| row.status == Status::Running) {
            Ok(running[0].worker.clone().expect("worker"))
        } else {
            Err(format!("not both running yet: {rows:?}"))
        }
    })
    .await;
    first.kill().await;

    // The restart, under the same prefix; it runs a job of its own, then shuts down at once,
    // handing back whatever it holds.
    let mut second = launcher.start("pod");
    second.ready(STARTUP).await;
    insert(&sql, &[Job::sleep(3, 0)]).await;
    let second_worker = until(Duration::from_secs(10), async || {
        let row = &by_object(rows(&store).await)[&3];
        match row.status {
            Status::Done => Ok(row.worker.clone().expect("worker")),
            _ => Err(format!("not done yet: {row:?}")),
        }
    })
    .await;
    second.stop(EXIT).await;

    let mut third = launcher.start("pod");
    third.ready(STARTUP).await;
    insert(&sql, &[Job::sleep(4, 0)]).await;
    // Until the old run's jobs are settled, the long one may only have run on the killed
    // process, then be cancelled: handed back or started again, it would have been adopted.
    let long_id = by_object(rows(&store).await)[&LONG].id;
    let mut expected = ran_at_once_by(&first_worker, "CANCELLED", 1);
    let steps = expected.len() - 1;
    until(Duration::from_secs(30), async || {
        let changes = history_on(&sql).await.remove(&long_id).unwrap_or_default();
        let (so_far, last) = (changes.len().min(steps), changes.get(steps));
        assert!(
            changes.len() <= steps + 1
                && changes[..so_far] == expected[..so_far]
                && last.is_none_or(|last| last.is("RUNNING", "CANCELLED")),
            "the old run's job was taken up by a later process: {changes:?}"
        );
        let rows = by_object(rows(&store).await);
        let open: Vec<&JobRow> = rows
            .values()
            .filter(|row| !row.status.is_terminal())
            .collect();
        open.is_empty()
            .then_some(())
            .ok_or_else(|| format!("still unfinished: {open:?}"))
    })
    .await;
    let rows = by_object(rows(&store).await);
    third.stop(EXIT).await;
    let third_worker = rows[&4].worker.clone().expect("worker");

    let workers = [&first_worker, &second_worker, &third_worker];
    for (worker, process) in workers.iter().zip([&first, &second, &third]) {
        assert!(
            from_prefix(Some(worker.as_str()), "pod"),
            "{worker} is the prefix plus a suffix"
        );
        assert_eq!(
            process.announced_worker().as_deref(),
            Some(worker.as_str()),
            "{} ran under the id it logged at start",
            process.name
        );
    }
    assert_eq!(
        workers.iter().collect::<HashSet<_>>().len(),
        3,
        "a new worker id at every start: {workers:?}"
    );

    let history = history(&db).await;
    let long = &rows[&LONG];
    assert_eq!(
        (long.status, long.attempts, long.worker.as_deref()),
        (Status::Cancelled, 1, Some(first_worker.as_str())),
        "the old run's job is cancelled as dead, never adopted: {long:?}"
    );
    assert!(
        long.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no sign of life")),
        "{long:?}"
    );
    let silent = long.cancelled_at.expect("cancelled_at") - last_sign_of_life(long);
    assert!(silent >= as_chrono(DEAD_AFTER), "cancelled after {silent}");
    expected[steps].last_error = long.last_error.clone();
    assert_eq!(
        history[&long.id], expected,
        "neither later process handed it back or ran it"
    );

    let retried = &rows[&RETRIED];
    assert_eq!(
        (retried.status, retried.attempts),
        (Status::Done, 2),
        "the old run's job with an attempt left is retried: {retried:?}"
    );
    assert!(
        retried.worker.as_deref() != Some(first_worker.as_str()),
        "{retried:?}"
    );
    let path = &history[&retried.id];
    assert!(
        path[steps].is("RUNNING", "NEW")
            && path[steps].attempts == 1
            && path[steps]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("no sign of life")),
        "rescued as dead with its attempt counted, not handed back as the new process's own: {path:?}"
    );
    assert!(
        path.iter()
            .all(|c| c.to != "DONE" || c.worker.as_deref() != Some(first_worker.as_str())),
        "{path:?}"
    );
    for (n, worker) in [(3, &second_worker), (4, &third_worker)] {
        assert_eq!(
            history[&rows[&n].id],
            ran_at_once_by(worker, "DONE", 1),
            "job {n} ran on the process that was up"
        );
    }
}

// === 5. A first start ===

/// A new Deployment's replicas start together on an empty database. Each applies the pending
/// migrations first, under the backend's migration lock: none fails, none applies one twice.
async fn replicas_starting_together_on_an_empty_database_all_come_up(db: TestDb) {
    // The race is short; a few rounds make a lost one likely to show.
    const ROUNDS: usize = 5;
    const REPLICAS: usize = 4;
    const JOBS: i64 = 20;
    let migrations = std::fs::read_dir(format!(
        "{}/migrations/{}",
        env!("CARGO_MANIFEST_DIR"),
        match db.backend {
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    ))
    .expect("migrations folder")
    .count() as i64;
    for round in 1..=ROUNDS {
        empty(&db).await;
        let launcher = Launcher::new(
            &db,
            &[
                ("JOBSD_POLL_INTERVAL", "100ms"),
                ("JOBSD_RATE_PER_SECOND", "0"),
            ],
        );
        let mut replicas: Vec<Jobsd> = (1..=REPLICAS)
            .map(|n| launcher.start(&format!("r{n}")))
            .collect();
        for replica in &mut replicas {
            replica.ready(STARTUP).await;
        }
        let sql = db.sql().await;
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&sql)
            .await
            .expect("migrations table");
        assert_eq!(
            applied, migrations,
            "round {round}: each migration applied once"
        );
        let jobs: Vec<Job> = (1..=JOBS).map(|n| Job::sleep(n, 0)).collect();
        insert(&sql, &jobs).await;
        sql.close().await;
        let store = db.store().await;
        let rows = until_all_finished(&store, Duration::from_secs(60)).await;
        for replica in &mut replicas {
            replica.assert_running();
            replica.stop(EXIT).await;
        }
        assert_eq!(rows.len() as i64, JOBS, "round {round}");
        assert!(
            rows.iter().all(|row| row.status == Status::Done),
            "round {round}: {rows:?}"
        );
    }
}

/// Takes the database back to empty, as before its first migration.
pub(crate) async fn empty(db: &TestDb) {
    match db.backend {
        Backend::Sqlite => {
            let file = db.url.strip_prefix("sqlite://").expect("a SQLite URL");
            for suffix in ["", "-wal", "-shm"] {
                let path = format!("{file}{suffix}");
                if std::path::Path::new(&path).exists() {
                    std::fs::remove_file(&path).expect("remove the database file");
                }
            }
        }
        Backend::Postgres => {
            let pool = db.sql().await;
            for statement in ["DROP SCHEMA public CASCADE", "CREATE SCHEMA public"] {
                sqlx::query(statement)
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
            pool.close().await;
        }
        Backend::Mysql => {
            let url = url::Url::parse(&db.url).expect("URL");
            let name = url.path().trim_start_matches('/').to_owned();
            let pool = db.sql().await;
            // One connection for both: a new one could not open the dropped database.
            let mut connection = pool.acquire().await.expect("connection");
            for statement in [
                format!("DROP DATABASE {name}"),
                format!("CREATE DATABASE {name}"),
            ] {
                sqlx::query(&statement)
                    .execute(&mut *connection)
                    .await
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
            drop(connection);
            pool.close().await;
        }
    }
}
