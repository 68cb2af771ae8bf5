//! The life of a job (ARCHITECTURE.md, "Life of a job") as a property of the store. Random interleavings of what
//! replicas `a`, `b` and `c` do to a handful of jobs (claim, start, beat, pause, resume, finish
//! in batches, finish runs whose start was not yet written, control requests, dead sweeps,
//! shutdown releases, touches, lost checks) run against a real store on SQLite, PostgreSQL and
//! MariaDB/MySQL, one fresh database per case (`sqlite::`, `postgres::` and
//! `mysql::the_job_state_machine_keeps_its_invariants`). After every step the whole table is
//! read back and checked:
//!
//! - **Terminal is final.** A DONE, FAILED or CANCELLED row never changes again, in any column
//!   but `control` (a user may still write a request, which is then cleared).
//! - **A paused job is never dead.** `find_dead` never returns a PAUSED row, a dead sweep never
//!   changes one, and only an explicit terminate cancels it.
//! - **`finish` and `finish_unstarted` name their winners.** The ids each returns are exactly
//!   the rows the call changed, each at most once, and exactly those of its ids that were
//!   RUNNING (`finish`) or QUEUED (`finish_unstarted`) by that worker before.
//! - **Attempts move by one rule.** `attempts` goes up by one exactly when a job enters RUNNING
//!   from NEW (a claim that starts) or from QUEUED (`mark_started`), and when `finish_unstarted`
//!   takes a job from QUEUED to DONE (the run's start is written with its end); it goes down by
//!   one exactly when `release` hands back the interrupted run of a RUNNING job, or of a PAUSED
//!   job the releasing worker holds, and when a resume sends a PAUSED job whose holder went
//!   silent back to NEW (that run was interrupted too); every other step leaves it alone.
//! - **Attempts are bounded.** Replicas retry only while attempts remain, as the consumer does,
//!   and the canceller retries a dead job only while attempts remain. So every row has
//!   `attempts <= max_attempts`, and every waiting row (NEW, QUEUED, or PAUSED and held by no
//!   one) has `attempts < max_attempts`.
//! - **Rows are well formed.** Terminal rows have `finished_at`, CANCELLED rows `cancelled_at`
//!   (equal to it) and a `last_error`, DONE rows no `last_error`, unfinished rows neither
//!   timestamp; RUNNING rows have a worker, `queued_at` and `started_at`; QUEUED rows a worker
//!   and `queued_at` but no `started_at`; NEW rows no worker, `queued_at`, `started_at` or
//!   `heartbeat_at`; a PAUSED row has
//!   `started_at` exactly when a worker holds it.
//! - **Every step does exactly what the store documents**, row by row and column by column
//!   (which rows a claim takes, what each settlement and control action writes, which
//!   timestamps are set to the step's time and which are cleared), and nothing else; the
//!   statuses each job passes through are edges of the diagram in §3.
//!
//! "The step's time" is checked against this process's clock, read before and after the step.
//! SQLite's timestamps are this process's clock; PostgreSQL's `now()` and MariaDB's `NOW(6)` are
//! the server's, which must therefore be this machine's clock, as it is for the suite's local
//! servers: each server test first checks that it is, and fails saying so if not. All three keep
//! microseconds, truncated, hence one microsecond of slack below a window and nothing more.
//!
//! A failing case is shrunk to a minimal sequence, which is then played once more in a database
//! that is kept (on the servers), so its table can be looked at.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobsd::job::{Control, ControlAction, ControlRequest, DeadJob, Outcome, Settlement};
use jobsd::store::{Resume, Resumed, TERMINATED};
use jobsd::{JobRow, NewJob, Status, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner};

use crate::common::{self, Backend, TestDb};

/// Cases per run on SQLite, unless `PROPTEST_CASES` asks for another number.
const CASES: u32 = 128;

/// Cases per run on PostgreSQL, unless `PROPTEST_CASES` asks for another number: each case
/// creates, migrates and drops a database on the server, about 0.15 s on two cores (64 cases:
/// 10 s alone, 20 s beside the other backends' runs).
const POSTGRES_CASES: u32 = 64;

/// Cases per run on MariaDB/MySQL, likewise: about 0.06 s a case (128 cases: 8 s alone).
const MYSQL_CASES: u32 = 128;

/// The most jobs in one case (the fewest is 3).
const MAX_JOBS: usize = 6;

/// The longest sequence of operations in one case.
const MAX_OPS: usize = 40;

/// A dead sweep's "tiny" silence: recent signs of life survive it, older ones do not.
const TINY: Duration = Duration::from_millis(2);

/// A `find_controls` horizon no row of a case is older than: every holder has vouched.
const VOUCHED: Duration = Duration::from_secs(3600);

/// The tests of this file, once per backend, named `sqlite::…`, `postgres::…` and `mysql::…`
/// so that `scripts/test` skips a backend whose server URL is unset.
macro_rules! on_each_backend {
    ($($module:ident: $backend:ident, $cases:expr;)*) => {
        $(
            mod $module {
                use crate::common::Backend;

                #[test]
                fn the_job_state_machine_keeps_its_invariants() {
                    super::check(Backend::$backend, $cases);
                }

                #[test]
                fn a_batch_naming_a_job_twice_settles_it_once() {
                    super::twice_in_one_batch(Backend::$backend);
                }
            }
        )*
    };
}

on_each_backend! {
    sqlite: Sqlite, super::CASES;
    postgres: Postgres, super::POSTGRES_CASES;
    mysql: Mysql, super::MYSQL_CASES;
}

fn check(backend: Backend, default_cases: u32) {
    let cases = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => ProptestConfig::default().cases,
        None => default_cases,
    };
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(common::run(backend, "state_machine_clock", same_clock));
    let mut runner = TestRunner::new(config);
    let result = runner.run(&scenario(), |scenario| {
        runtime
            .block_on(play(backend, &scenario))
            .map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, scenario)) => {
            let failure = format!("{reason}\n\nminimal failing sequence:\n{scenario}");
            runtime.block_on(keep(backend, &scenario, failure));
        }
        Err(TestError::Abort(reason)) => panic!("{reason}"),
    }
}

/// Each way a batch given to `finish` can name one RUNNING job twice: the store settles it
/// once, as one of the two outcomes, and names it once. (The daemon's completer sends one
/// outcome per run; the store's contract takes any batch.) The property test draws such batches
/// too; these are its minimal cases, all played on every backend, the first that fails played
/// again and kept. Then the same of `finish_unstarted` and a QUEUED job.
fn twice_in_one_batch(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ends = [End::Done, End::Failed, End::Retry];
    let mut failed = Vec::new();
    for first in ends {
        for second in ends {
            let scenario = Scenario {
                max_attempts: vec![2],
                ops: vec![
                    Op::Claim {
                        worker: Worker::A,
                        limit: 1,
                        start: true,
                    },
                    Op::Finish {
                        worker: Worker::A,
                        outcomes: vec![(Target::Job(0), first), (Target::Job(0), second)],
                    },
                ],
            };
            if let Err(reason) = runtime.block_on(play(backend, &scenario)) {
                failed.push(((first, second), scenario, reason));
            }
        }
    }
    if let Some((_, scenario, reason)) = failed.first() {
        let pairs: Vec<_> = failed.iter().map(|(pair, _, _)| *pair).collect();
        let failure = format!(
            "{reason}\n\nfailing sequence:\n{scenario}\nall the pairs of outcomes that fail: {pairs:?}"
        );
        runtime.block_on(keep(backend, scenario, failure));
    }
    let unstarted = Scenario {
        max_attempts: vec![2],
        ops: vec![
            Op::Claim {
                worker: Worker::A,
                limit: 1,
                start: false,
            },
            Op::FinishUnstarted {
                worker: Worker::A,
                jobs: vec![Target::Job(0), Target::Job(0)],
            },
        ],
    };
    if let Err(reason) = runtime.block_on(play(backend, &unstarted)) {
        let failure = format!("{reason}\n\nfailing sequence:\n{unstarted}");
        runtime.block_on(keep(backend, &unstarted, failure));
    }
}

/// The model reads "the step's time" on this process's clock; on PostgreSQL and MariaDB the
/// store writes the server's (`now()`, `NOW(6)`). Checks that the server's clock is this
/// process's, to the microsecond the server truncates to, so that a server elsewhere fails here
/// and plainly, not as a broken invariant.
async fn same_clock(db: TestDb) {
    let sql = match db.backend {
        Backend::Sqlite => return,
        Backend::Postgres => "SELECT CAST(EXTRACT(EPOCH FROM now()) * 1000000 AS BIGINT)",
        Backend::Mysql => "SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)",
    };
    let pool = db.sql().await;
    for _ in 0..3 {
        let before = Utc::now();
        let micros: i64 = sqlx::query_scalar(sql)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let window = window_since(before);
        let server = DateTime::from_timestamp_micros(micros).expect("a time");
        assert!(
            window.0 <= server && server <= window.1,
            "the server's clock reads {server} within {window:?} on this machine's: the model \
             compares the server's timestamps with this machine's clock, so the test server \
             must run on this machine (or one whose clock agrees to the microsecond)"
        );
    }
    pool.close().await;
}

/// Plays `scenario`, a failing case, once more in a database that is kept, and fails with
/// `failure` and where to look.
async fn keep(backend: Backend, scenario: &Scenario, failure: String) {
    let failure = &failure;
    common::run(backend, "state_machine", |db| async move {
        if Table::play(db.store().await, scenario).await.is_err() {
            // A panic here skips the drop: the database stays as the case left it.
            match backend {
                Backend::Sqlite => panic!("{failure}"),
                _ => panic!(
                    "{failure}\nplayed again, it failed again in {}, which is kept",
                    jobsd::store::redact(&db.url)
                ),
            }
        }
    })
    .await;
    panic!("{failure}\nplayed again, it passed: the failure depends on timing");
}

// ---------------------------------------------------------------------------------------------
// Operations and their strategies

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    A,
    B,
    C,
}

impl Worker {
    fn id(self) -> &'static str {
        match self {
            Worker::A => "a",
            Worker::B => "b",
            Worker::C => "c",
        }
    }
}

/// How a replica reports a run: a Retry of a run with no attempt left is written as Failed,
/// as the consumer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Failed,
    Retry,
}

/// Whether the holders count as alive when control requests are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Vouched,
    Silent,
}

/// A dead sweep's `dead_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    Zero,
    Tiny,
}

impl Silence {
    fn duration(self) -> Duration {
        match self {
            Silence::Zero => Duration::ZERO,
            Silence::Tiny => TINY,
        }
    }
}

/// Which job a step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Job `n` of the case (modulo the jobs).
    Job(usize),
    /// The `n`-th (modulo their number, by id) of the jobs the step's worker holds in the status
    /// the step acts on, else of all the unfinished jobs it holds; job `n` (modulo the jobs)
    /// when it holds none. Most steps of a real replica are about jobs it holds. For a control
    /// request, a job of any holder in a status the request acts on.
    Held(usize),
}

/// One step of a replica (or of a user, for `Control`).
#[derive(Debug, Clone)]
enum Op {
    Claim {
        worker: Worker,
        limit: u32,
        start: bool,
    },
    MarkStarted {
        worker: Worker,
        job: Target,
    },
    Heartbeat {
        worker: Worker,
        job: Target,
        progress: bool,
    },
    Pause {
        worker: Worker,
        job: Target,
    },
    Resume {
        worker: Worker,
        job: Target,
    },
    Finish {
        worker: Worker,
        outcomes: Vec<(Target, End)>,
    },
    /// Runs of jobs claimed QUEUED that ended DONE before their start was written: the start
    /// is written with the outcome.
    FinishUnstarted {
        worker: Worker,
        jobs: Vec<Target>,
    },
    /// A user writes `control`, then `worker`'s control publisher carries out every pending
    /// request as it would (a signal is passed on to the task, which pauses or resumes; a
    /// QUEUED job never runs in the model before its start is written, so its holder pauses it
    /// as a waiting job).
    Control {
        worker: Worker,
        job: Target,
        control: Control,
        holder: Holder,
    },
    DeadSweep {
        silence: Silence,
    },
    Release {
        worker: Worker,
        job: Option<Target>,
    },
    Touch {
        worker: Worker,
        jobs: Vec<Target>,
    },
    Lost {
        worker: Worker,
        jobs: Vec<Target>,
    },
}

#[derive(Debug, Clone)]
struct Scenario {
    /// One job per entry, with this `max_attempts`.
    max_attempts: Vec<i32>,
    ops: Vec<Op>,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let jobs = self.max_attempts.len();
        writeln!(
            f,
            "  {jobs} jobs (ids 1..={jobs}), max_attempts {:?}",
            self.max_attempts
        )?;
        for (n, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {n:>2}. {op:?}")?;
        }
        Ok(())
    }
}

fn worker() -> impl Strategy<Value = Worker> {
    prop_oneof![3 => Just(Worker::A), 2 => Just(Worker::B), 1 => Just(Worker::C)]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![Just(End::Done), Just(End::Failed), Just(End::Retry)]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => (0..MAX_JOBS).prop_map(Target::Job),
        3 => (0..MAX_JOBS).prop_map(Target::Held),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let control = prop_oneof![
        1 => Just(Control::Terminate),
        1 => Just(Control::Pause),
        1 => Just(Control::Resume),
    ];
    let holder = prop_oneof![Just(Holder::Vouched), Just(Holder::Silent)];
    let silence = prop_oneof![Just(Silence::Zero), Just(Silence::Tiny)];
    let some_jobs = || prop::collection::vec(target(), 1..=3);
    prop_oneof![
        4 => (worker(), 1..=3u32, any::<bool>())
            .prop_map(|(worker, limit, start)| Op::Claim { worker, limit, start }),
        3 => (worker(), target()).prop_map(|(worker, job)| Op::MarkStarted { worker, job }),
        1 => (worker(), target(), any::<bool>())
            .prop_map(|(worker, job, progress)| Op::Heartbeat { worker, job, progress }),
        2 => (worker(), target()).prop_map(|(worker, job)| Op::Pause { worker, job }),
        2 => (worker(), target()).prop_map(|(worker, job)| Op::Resume { worker, job }),
        4 => (worker(), prop::collection::vec((target(), end()), 1..=3))
            .prop_map(|(worker, outcomes)| Op::Finish { worker, outcomes }),
        2 => (worker(), some_jobs())
            .prop_map(|(worker, jobs)| Op::FinishUnstarted { worker, jobs }),
        3 => (worker(), target(), control, holder).prop_map(|(worker, job, control, holder)| {
            Op::Control { worker, job, control, holder }
        }),
        1 => silence.prop_map(|silence| Op::DeadSweep { silence }),
        1 => (worker(), prop::option::of(target()))
            .prop_map(|(worker, job)| Op::Release { worker, job }),
        1 => (worker(), some_jobs()).prop_map(|(worker, jobs)| Op::Touch { worker, jobs }),
        1 => (worker(), some_jobs()).prop_map(|(worker, jobs)| Op::Lost { worker, jobs }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(1..=3i32, 3..=MAX_JOBS),
        prop::collection::vec(op(), 1..=MAX_OPS),
    )
        .prop_map(|(max_attempts, ops)| Scenario { max_attempts, ops })
}

// ---------------------------------------------------------------------------------------------
// What a step may do to a row

/// A timestamp column after a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Stamp {
    #[default]
    Kept,
    /// Set to a time within the step.
    Now,
    Null,
}

/// Any other column after a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Set<T> {
    #[default]
    Kept,
    To(T),
}

/// The change a step makes to one row; everything left at its default stays as it was.
#[derive(Debug, Clone, Default)]
struct Edit {
    status: Option<Status>,
    worker: Set<Option<String>>,
    attempts: i32,
    run_at: Stamp,
    queued_at: Stamp,
    started_at: Stamp,
    finished_at: Stamp,
    cancelled_at: Stamp,
    heartbeat_at: Stamp,
    last_error: Set<Option<String>>,
    control: Set<Option<String>>,
    progress: Set<Option<String>>,
}

impl Edit {
    /// Back to NEW, held by no one, with no run under way.
    fn to_new() -> Edit {
        Edit {
            status: Some(Status::New),
            worker: Set::To(None),
            queued_at: Stamp::Null,
            started_at: Stamp::Null,
            heartbeat_at: Stamp::Null,
            ..Edit::default()
        }
    }

    /// CANCELLED now, for `reason`.
    fn cancelled(reason: &str) -> Edit {
        Edit {
            status: Some(Status::Cancelled),
            cancelled_at: Stamp::Now,
            finished_at: Stamp::Now,
            last_error: Set::To(Some(reason.to_owned())),
            ..Edit::default()
        }
    }

    /// A waiting job paused (`ControlAction::PauseWaiting`): held by no one, its request
    /// cleared.
    fn pause_waiting() -> Edit {
        Edit {
            status: Some(Status::Paused),
            control: Set::To(None),
            worker: Set::To(None),
            queued_at: Stamp::Null,
            heartbeat_at: Stamp::Null,
            ..Edit::default()
        }
    }

    /// `pause` or `resume` by the holder: the new status, a fresh sign of life, and the
    /// request carried out (only that one) cleared.
    fn hand_over(before: &JobRow, to: Status, request: Control) -> Edit {
        Edit {
            status: Some(to),
            heartbeat_at: Stamp::Now,
            control: if before.control.as_deref() == Some(request.as_str()) {
                Set::To(None)
            } else {
                Set::Kept
            },
            ..Edit::default()
        }
    }

    /// `after` is `before` with this edit applied, timestamps set "now" falling in `window`;
    /// else what differs.
    fn check(
        &self,
        before: &JobRow,
        after: &JobRow,
        window: (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<(), String> {
        let mut expected = before.clone();
        let mut errors = Vec::new();
        let in_window = |at: DateTime<Utc>| window.0 <= at && at <= window.1;
        let mut stamp =
            |name: &str, how: Stamp, expected: &mut Option<DateTime<Utc>>, actual| match how {
                Stamp::Kept => {}
                Stamp::Null => *expected = None,
                Stamp::Now => {
                    match actual {
                        Some(at) if in_window(at) => {}
                        _ => errors.push(format!(
                            "{name} should be set within the step {window:?}, is {actual:?}"
                        )),
                    }
                    *expected = actual;
                }
            };
        let stamps = [
            (
                "queued_at",
                self.queued_at,
                &mut expected.queued_at,
                after.queued_at,
            ),
            (
                "started_at",
                self.started_at,
                &mut expected.started_at,
                after.started_at,
            ),
            (
                "finished_at",
                self.finished_at,
                &mut expected.finished_at,
                after.finished_at,
            ),
            (
                "cancelled_at",
                self.cancelled_at,
                &mut expected.cancelled_at,
                after.cancelled_at,
            ),
            (
                "heartbeat_at",
                self.heartbeat_at,
                &mut expected.heartbeat_at,
                after.heartbeat_at,
            ),
        ];
        for (name, how, slot, actual) in stamps {
            stamp(name, how, slot, actual);
        }
        let mut run_at = Some(expected.run_at);
        stamp("run_at", self.run_at, &mut run_at, Some(after.run_at));
        expected.run_at = run_at.unwrap_or(expected.run_at);
        if let Some(status) = self.status {
            expected.status = status;
        }
        if let Set::To(worker) = &self.worker {
            expected.worker.clone_from(worker);
        }
        expected.attempts += self.attempts;
        if let Set::To(last_error) = &self.last_error {
            expected.last_error.clone_from(last_error);
        }
        if let Set::To(control) = &self.control {
            expected.control.clone_from(control);
        }
        if let Set::To(progress) = &self.progress {
            expected.progress.clone_from(progress);
        }
        errors.extend(differences(&expected, after));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The columns in which `actual` differs from `expected`, as `column: expected … got …`.
fn differences(expected: &JobRow, actual: &JobRow) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! compare {
        ($($field:ident),*) => {
            $(
                if expected.$field != actual.$field {
                    out.push(format!(
                        "{}: expected {:?}, got {:?}",
                        stringify!($field),
                        expected.$field,
                        actual.$field
                    ));
                }
            )*
        };
    }
    compare!(
        id,
        kind,
        object_id,
        sleep,
        status,
        created_at,
        run_at,
        queued_at,
        started_at,
        finished_at,
        cancelled_at,
        heartbeat_at,
        attempts,
        max_attempts,
        last_error,
        control,
        progress,
        worker
    );
    out
}

/// The edges of the diagram in ARCHITECTURE.md, "Life of a job".
fn is_edge(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (New, Queued | Running | Paused | Cancelled)
            // DONE straight from QUEUED: a run that ended before its start was written.
            | (Queued, Running | New | Paused | Cancelled | Done)
            | (Running, Done | Failed | New | Paused | Cancelled)
            | (Paused, Running | New | Cancelled)
    )
}

/// The checks every row must pass after every step, whatever the step was.
fn well_formed(row: &JobRow) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{} row {}: {what}", row.status, row.id));
    if row.attempts < 0 {
        return fail("negative attempts");
    }
    if row.status.is_terminal() != row.finished_at.is_some() {
        return fail("finished_at must be set exactly on terminal rows");
    }
    if (row.status == Status::Cancelled) != row.cancelled_at.is_some() {
        return fail("cancelled_at must be set exactly on CANCELLED rows");
    }
    match row.status {
        Status::Cancelled if row.cancelled_at != row.finished_at => {
            fail("cancelled_at differs from finished_at")
        }
        Status::Cancelled | Status::Failed if row.last_error.is_none() => fail("no last_error"),
        Status::Done if row.last_error.is_some() => fail("DONE with a last_error"),
        Status::Running
            if row.worker.is_none() || row.started_at.is_none() || row.queued_at.is_none() =>
        {
            fail("RUNNING without worker, queued_at or started_at")
        }
        Status::Queued
            if row.worker.is_none() || row.queued_at.is_none() || row.started_at.is_some() =>
        {
            fail("QUEUED without worker or queued_at, or with started_at")
        }
        Status::New
            if row.worker.is_some()
                || row.queued_at.is_some()
                || row.started_at.is_some()
                || row.heartbeat_at.is_some() =>
        {
            fail("NEW with a worker, queued_at, started_at or heartbeat_at")
        }
        Status::Paused if row.worker.is_some() != row.started_at.is_some() => {
            fail("PAUSED with started_at but no holder, or a holder but no started_at")
        }
        _ => Ok(()),
    }
}

/// Whether the row waits for a run: no attempt of it is under way.
fn is_waiting(row: &JobRow) -> bool {
    match row.status {
        Status::New | Status::Queued => true,
        Status::Paused => row.worker.is_none(),
        _ => false,
    }
}

/// The time now, and a window around `[from, now]` that the store's microsecond text
/// timestamps of that interval fall in.
fn window_since(from: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let slack = chrono::Duration::microseconds(1);
    (from - slack, Utc::now() + slack)
}

fn since(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    at - chrono::Duration::from_std(wait).expect("short duration")
}

// ---------------------------------------------------------------------------------------------
// Playing a case

async fn play(backend: Backend, scenario: &Scenario) -> Result<(), String> {
    let mut verdict = Err("the case did not run".to_owned());
    let slot = &mut verdict;
    common::run(backend, "state_machine", |db| async move {
        *slot = Table::play(db.store().await, scenario).await;
    })
    .await;
    verdict
}

/// The table as last read, with what the checks remember between steps.
struct Table {
    store: Arc<dyn Store>,
    ids: Vec<i64>,
    rows: BTreeMap<i64, JobRow>,
    /// The statuses each job has been seen in, in order, each change once.
    log: BTreeMap<i64, Vec<Status>>,
    /// The step being checked, for messages.
    step: String,
}

type Edits = BTreeMap<i64, Vec<Edit>>;

fn one(edits: &mut Edits, id: i64, edit: Edit) {
    edits.entry(id).or_default().push(edit);
}

fn db<T>(result: jobsd::store::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("database error: {e}"))
}

impl Table {
    async fn play(store: Arc<dyn Store>, scenario: &Scenario) -> Result<(), String> {
        let mut ids = Vec::new();
        for (n, max_attempts) in scenario.max_attempts.iter().enumerate() {
            let job = NewJob {
                max_attempts: Some(*max_attempts),
                ..NewJob::sleep(n as i64, None)
            };
            ids.push(db(store.insert(&job).await)?);
        }
        let mut table = Table {
            store,
            ids,
            rows: BTreeMap::new(),
            log: BTreeMap::new(),
            step: "insert".into(),
        };
        table.rows = table.read().await?;
        for row in table.rows.values() {
            well_formed(row)?;
            table.log.insert(row.id, vec![row.status]);
        }
        for (n, op) in scenario.ops.iter().enumerate() {
            table.step = format!("op {n} {op:?}");
            table.apply(n, op).await?;
        }
        Ok(())
    }

    async fn read(&self) -> Result<BTreeMap<i64, JobRow>, String> {
        let rows = db(self.store.rows(&[], 100).await)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }

    /// The job id `target` names for a step of `worker` (of a user, for `None`: any holder
    /// will do) that acts on jobs in `statuses`; noted in the step's description.
    fn resolve(&mut self, worker: Option<Worker>, target: Target, statuses: &[Status]) -> i64 {
        let holding = |statuses: &[Status]| -> Vec<i64> {
            self.rows
                .values()
                .filter(|row| {
                    statuses.contains(&row.status)
                        && worker.is_none_or(|worker| row.worker.as_deref() == Some(worker.id()))
                })
                .map(|row| row.id)
                .collect()
        };
        let id = match target {
            Target::Job(n) => self.ids[n % self.ids.len()],
            Target::Held(n) => {
                let mut held = holding(statuses);
                if held.is_empty() {
                    held = holding(&[Status::Queued, Status::Running, Status::Paused]);
                }
                match held.len() {
                    0 => self.ids[n % self.ids.len()],
                    len => held[n % len],
                }
            }
        };
        self.step.push_str(&format!(" [{target:?} = job {id}]"));
        id
    }

    fn row(&self, id: i64) -> &JobRow {
        &self.rows[&id]
    }

    fn fail<T>(&self, what: impl fmt::Display) -> Result<T, String> {
        Err(format!("{}: {what}", self.step))
    }

    fn ensure(&self, holds: bool, what: impl FnOnce() -> String) -> Result<(), String> {
        if holds { Ok(()) } else { self.fail(what()) }
    }

    async fn apply(&mut self, n: usize, op: &Op) -> Result<(), String> {
        let start = Utc::now();
        let store = Arc::clone(&self.store);
        let mut edits = Edits::new();
        match op {
            Op::Claim {
                worker,
                limit,
                start: starting,
            } => {
                let claimed = db(store
                    .claim(&jobsd::store::Claim::new(worker.id(), *limit, *starting))
                    .await)?;
                let mut waiting: Vec<&JobRow> = self
                    .rows
                    .values()
                    .filter(|row| row.status == Status::New)
                    .collect();
                self.ensure(waiting.iter().all(|row| row.run_at <= start), || {
                    "a NEW row is not due, though every backoff is zero".into()
                })?;
                waiting.sort_by_key(|row| (row.run_at, row.id));
                // Which rows: the batch's own order follows how long each waited, as the
                // database reckons it to the millisecond (SQLite), so it is not compared here.
                let mut expected: Vec<i64> = waiting
                    .iter()
                    .take(*limit as usize)
                    .map(|row| row.id)
                    .collect();
                expected.sort_unstable();
                let mut got: Vec<i64> = claimed.iter().map(|job| job.id).collect();
                got.sort_unstable();
                self.ensure(got == expected, || {
                    format!("claimed {got:?}, expected the oldest NEW rows {expected:?}")
                })?;
                for job in &claimed {
                    let before = self.row(job.id);
                    self.ensure(
                        (job.attempts, job.max_attempts) == (before.attempts, before.max_attempts),
                        || format!("claim reports {job:?}, the row had {before:?}"),
                    )?;
                    let edit = Edit {
                        status: Some(if *starting {
                            Status::Running
                        } else {
                            Status::Queued
                        }),
                        worker: Set::To(Some(worker.id().to_owned())),
                        attempts: i32::from(*starting),
                        queued_at: Stamp::Now,
                        started_at: if *starting { Stamp::Now } else { Stamp::Kept },
                        heartbeat_at: Stamp::Null,
                        ..Edit::default()
                    };
                    one(&mut edits, job.id, edit);
                }
                let after = self.advance(start, edits).await?;
                if *starting {
                    for job in &claimed {
                        let row = &after[&job.id];
                        self.ensure(row.started_at == row.queued_at, || {
                            format!("claimed and started in one write, yet {row:?}")
                        })?;
                    }
                }
            }
            Op::MarkStarted { worker, job } => {
                let id = self.resolve(Some(*worker), *job, &[Status::Queued]);
                let before = self.row(id);
                let wins = before.status == Status::Queued
                    && before.worker.as_deref() == Some(worker.id());
                let won = db(store.mark_started(worker.id(), &[id], Duration::ZERO).await)? == [id];
                self.ensure(won == wins, || {
                    format!("mark_started returned {won}, row was {before:?}")
                })?;
                if wins {
                    let edit = Edit {
                        status: Some(Status::Running),
                        started_at: Stamp::Now,
                        heartbeat_at: Stamp::Null,
                        attempts: 1,
                        ..Edit::default()
                    };
                    one(&mut edits, id, edit);
                }
                self.advance(start, edits).await?;
            }
            Op::Heartbeat {
                worker,
                job,
                progress,
            } => {
                let id = self.resolve(Some(*worker), *job, &[Status::Running]);
                let before = self.row(id);
                let wins = before.status == Status::Running
                    && before.worker.as_deref() == Some(worker.id());
                let checkpoint = progress.then(|| format!("{{\"step\":{n}}}"));
                let won = db(store
                    .heartbeat(id, worker.id(), checkpoint.as_deref())
                    .await)?;
                self.ensure(won == wins, || {
                    format!("heartbeat returned {won}, row was {before:?}")
                })?;
                if wins {
                    let edit = Edit {
                        heartbeat_at: Stamp::Now,
                        progress: match checkpoint {
                            Some(progress) => Set::To(Some(progress)),
                            None => Set::Kept,
                        },
                        ..Edit::default()
                    };
                    one(&mut edits, id, edit);
                }
                self.advance(start, edits).await?;
            }
            Op::Pause { worker, job } | Op::Resume { worker, job } => {
                let (from, to, request) = match op {
                    Op::Pause { .. } => (Status::Running, Status::Paused, Control::Pause),
                    _ => (Status::Paused, Status::Running, Control::Resume),
                };
                let id = self.resolve(Some(*worker), *job, &[from]);
                let before = self.row(id);
                let wins = before.status == from && before.worker.as_deref() == Some(worker.id());
                let won = match request {
                    Control::Pause => db(store.pause(id, worker.id()).await)?,
                    _ => db(store.resume(&resume(id, worker.id())).await)? == Resumed::Yes,
                };
                self.ensure(won == wins, || {
                    format!("{request} returned {won}, row was {before:?}")
                })?;
                if wins {
                    one(&mut edits, id, Edit::hand_over(before, to, request));
                }
                self.advance(start, edits).await?;
            }
            Op::Finish { worker, outcomes } => self.finish(n, *worker, outcomes).await?,
            Op::FinishUnstarted { worker, jobs } => self.finish_unstarted(*worker, jobs).await?,
            Op::Control {
                worker,
                job,
                control,
                holder,
            } => {
                let statuses = match control {
                    Control::Pause => [Status::Running, Status::Queued],
                    Control::Resume => [Status::Paused; 2],
                    Control::Terminate => [Status::Paused, Status::Running],
                };
                let id = self.resolve(None, *job, &statuses);
                self.control(*worker, id, *control, *holder).await?
            }
            Op::DeadSweep { silence } => self.sweep(silence.duration()).await?,
            Op::Release { worker, job } => {
                let only = job.map(|job| self.resolve(Some(*worker), job, &[]));
                let released = db(store
                    .release(worker.id(), only.as_ref().map(std::slice::from_ref))
                    .await)?;
                for row in self.rows.values() {
                    let held = row.worker.as_deref() == Some(worker.id())
                        && only.is_none_or(|id| id == row.id);
                    let edit = match row.status {
                        Status::Queued if held => Edit::to_new(),
                        Status::Running if held => Edit {
                            attempts: -1,
                            ..Edit::to_new()
                        },
                        Status::Paused if held => Edit {
                            status: Some(Status::Paused),
                            attempts: -1,
                            ..Edit::to_new()
                        },
                        _ => continue,
                    };
                    one(&mut edits, row.id, edit);
                }
                self.ensure(released == edits.len() as u64, || {
                    format!("release counted {released}, expected {}", edits.len())
                })?;
                self.advance(start, edits).await?;
            }
            Op::Touch { worker, jobs } => {
                let list: Vec<i64> = jobs
                    .iter()
                    .map(|job| self.resolve(Some(*worker), *job, &[]))
                    .collect();
                let ids: BTreeSet<i64> = list.iter().copied().collect();
                // Every sign in the model is in the past.
                let touched = db(store.touch(worker.id(), &list, Duration::ZERO).await)?;
                for id in ids {
                    let row = self.row(id);
                    let unfinished = matches!(
                        row.status,
                        Status::Queued | Status::Running | Status::Paused
                    );
                    if unfinished && row.worker.as_deref() == Some(worker.id()) {
                        let edit = Edit {
                            heartbeat_at: Stamp::Now,
                            ..Edit::default()
                        };
                        one(&mut edits, id, edit);
                    }
                }
                self.ensure(touched == edits.len() as u64, || {
                    format!("touch counted {touched}, expected {}", edits.len())
                })?;
                self.advance(start, edits).await?;
            }
            Op::Lost { worker, jobs } => {
                let list: Vec<i64> = jobs
                    .iter()
                    .map(|job| self.resolve(Some(*worker), *job, &[]))
                    .collect();
                let mut lost = db(store.lost(worker.id(), &list).await)?;
                lost.sort_unstable();
                let expected: Vec<i64> = list
                    .iter()
                    .copied()
                    .collect::<BTreeSet<i64>>()
                    .into_iter()
                    .filter(|id| {
                        let row = self.row(*id);
                        // A QUEUED row may be a run whose start is not written yet: still the
                        // worker's.
                        !matches!(
                            row.status,
                            Status::Queued | Status::Running | Status::Paused
                        ) || row.worker.as_deref() != Some(worker.id())
                    })
                    .collect();
                self.ensure(lost == expected, || {
                    format!("lost {lost:?}, expected {expected:?}")
                })?;
                self.advance(start, edits).await?;
            }
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        n: usize,
        worker: Worker,
        ends: &[(Target, End)],
    ) -> Result<(), String> {
        let ends: Vec<(i64, End)> = ends
            .iter()
            .map(|(job, end)| (self.resolve(Some(worker), *job, &[Status::Running]), *end))
            .collect();
        let start = Utc::now();
        let holds = |row: &JobRow| {
            row.status == Status::Running && row.worker.as_deref() == Some(worker.id())
        };
        let outcomes: Vec<(i64, Outcome)> = ends
            .iter()
            .map(|(id, end)| {
                let row = self.row(*id);
                let outcome = match end {
                    End::Done => Outcome::Done,
                    End::Retry if row.attempts < row.max_attempts => Outcome::Retry {
                        backoff: Duration::ZERO,
                        reason: format!("op {n}: will retry"),
                    },
                    End::Retry | End::Failed => Outcome::Failed {
                        reason: format!("op {n}: failed"),
                    },
                };
                (row.id, outcome)
            })
            .collect();
        let won = db(self.store.finish(worker.id(), &outcomes).await)?;
        let winners: BTreeSet<i64> = won.iter().copied().collect();
        self.ensure(winners.len() == won.len(), || {
            format!("finish named a job twice: {won:?}")
        })?;
        let held: BTreeSet<i64> = outcomes
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| holds(self.row(*id)))
            .collect();
        self.ensure(winners == held, || {
            format!(
                "finish won {won:?}, but the jobs RUNNING by {} were {held:?}",
                worker.id()
            )
        })?;
        let mut edits = Edits::new();
        for (id, outcome) in &outcomes {
            if !held.contains(id) {
                continue;
            }
            // A batch that names a job twice settles it once, as one of its outcomes.
            let edit = match outcome {
                Outcome::Done => Edit {
                    status: Some(Status::Done),
                    finished_at: Stamp::Now,
                    last_error: Set::To(None),
                    ..Edit::default()
                },
                Outcome::Failed { reason } => Edit {
                    status: Some(Status::Failed),
                    finished_at: Stamp::Now,
                    last_error: Set::To(Some(reason.clone())),
                    ..Edit::default()
                },
                Outcome::Retry { reason, .. } => Edit {
                    run_at: Stamp::Now,
                    last_error: Set::To(Some(reason.clone())),
                    ..Edit::to_new()
                },
            };
            one(&mut edits, *id, edit);
        }
        let (_, changed) = self.advance_changed(start, edits).await?;
        self.ensure(changed == winners, || {
            format!("finish won {won:?}, but the rows it changed were {changed:?}")
        })
    }

    async fn finish_unstarted(&mut self, worker: Worker, jobs: &[Target]) -> Result<(), String> {
        let ids: Vec<i64> = jobs
            .iter()
            .map(|job| self.resolve(Some(worker), *job, &[Status::Queued]))
            .collect();
        let start = Utc::now();
        // Every run in the model is over by the step: it began no earlier than the write.
        let won = db(self
            .store
            .finish_unstarted(worker.id(), &ids, Duration::ZERO)
            .await)?;
        let winners: BTreeSet<i64> = won.iter().copied().collect();
        self.ensure(winners.len() == won.len(), || {
            format!("finish_unstarted named a job twice: {won:?}")
        })?;
        let held: BTreeSet<i64> = ids
            .iter()
            .copied()
            .filter(|id| {
                let row = self.row(*id);
                row.status == Status::Queued && row.worker.as_deref() == Some(worker.id())
            })
            .collect();
        self.ensure(winners == held, || {
            format!(
                "finish_unstarted won {won:?}, but the jobs QUEUED by {} were {held:?}",
                worker.id()
            )
        })?;
        let mut edits = Edits::new();
        for id in &held {
            // The start and the end in one write: the attempt mark_started would have counted.
            let edit = Edit {
                status: Some(Status::Done),
                attempts: 1,
                started_at: Stamp::Now,
                finished_at: Stamp::Now,
                heartbeat_at: Stamp::Null,
                last_error: Set::To(None),
                ..Edit::default()
            };
            one(&mut edits, *id, edit);
        }
        let (after, changed) = self.advance_changed(start, edits).await?;
        self.ensure(changed == winners, || {
            format!("finish_unstarted won {won:?}, but the rows it changed were {changed:?}")
        })?;
        for id in &winners {
            let row = &after[id];
            self.ensure(row.started_at == row.finished_at, || {
                format!("started and finished in one write, no time ago, yet {row:?}")
            })?;
        }
        Ok(())
    }

    async fn control(
        &mut self,
        worker: Worker,
        id: i64,
        control: Control,
        holder: Holder,
    ) -> Result<(), String> {
        let start = Utc::now();
        let written = db(self.store.request(id, control).await)?;
        self.ensure(written, || "request found no job".into())?;
        let mut edits = Edits::new();
        let request = Edit {
            control: Set::To(Some(control.as_str().to_owned())),
            ..Edit::default()
        };
        one(&mut edits, id, request);
        self.advance(start, edits).await?;

        let start = Utc::now();
        let dead_after = match holder {
            Holder::Vouched => VOUCHED,
            Holder::Silent => Duration::ZERO,
        };
        let requests = db(self.store.find_controls(dead_after, 0, 100).await)?;
        let pending: Vec<ControlRequest> = self
            .rows
            .values()
            .filter_map(|row| {
                let control = Control::try_from(row.control.clone()?).ok()?;
                Some(ControlRequest {
                    id: row.id,
                    status: row.status,
                    control,
                    worker: row.worker.clone(),
                    silent: i64::from(holder == Holder::Silent),
                })
            })
            .collect();
        self.ensure(requests == pending, || {
            format!("find_controls returned {requests:?}, expected {pending:?}")
        })?;
        let mut edits = Edits::new();
        for request in &requests {
            let before = self.row(request.id);
            let action = request.action(worker.id());
            let applied = db(self.store.apply_control(request, action).await)?;
            let writes = !matches!(action, ControlAction::Signal(_) | ControlAction::Leave);
            self.ensure(applied == writes, || {
                format!("apply_control({request:?}, {action:?}) returned {applied}")
            })?;
            let edit = match action {
                ControlAction::Clear => Edit {
                    control: Set::To(None),
                    ..Edit::default()
                },
                ControlAction::Terminate => Edit {
                    control: Set::To(None),
                    ..Edit::cancelled(TERMINATED)
                },
                ControlAction::PauseWaiting => Edit::pause_waiting(),
                ControlAction::Signal(Control::Pause) if request.status == Status::Queued => {
                    // The holder runs nothing of a QUEUED row here: it pauses the job as a
                    // waiting one, as the control publisher does.
                    let paused = db(self
                        .store
                        .apply_control(request, ControlAction::PauseWaiting)
                        .await)?;
                    self.ensure(paused, || {
                        format!("the holder could not pause waiting {request:?}")
                    })?;
                    Edit::pause_waiting()
                }
                ControlAction::ResumeDetached => Edit {
                    control: Set::To(None),
                    // A run its silent holder left paused was interrupted: its attempt is
                    // given back, as a release does.
                    attempts: -i32::from(before.worker.is_some()),
                    ..Edit::to_new()
                },
                ControlAction::Signal(signal) => {
                    // The task carries the request out at its next checkpoint.
                    let (to, done) = match signal {
                        Control::Pause => (
                            Status::Paused,
                            db(self.store.pause(request.id, worker.id()).await)?,
                        ),
                        _ => (
                            Status::Running,
                            db(self.store.resume(&resume(request.id, worker.id())).await)?
                                == Resumed::Yes,
                        ),
                    };
                    self.ensure(done, || format!("the task could not carry out {request:?}"))?;
                    Edit::hand_over(before, to, signal)
                }
                ControlAction::Leave => continue,
            };
            one(&mut edits, request.id, edit);
        }
        self.advance(start, edits).await?;
        Ok(())
    }

    async fn sweep(&mut self, dead_after: Duration) -> Result<(), String> {
        let start = Utc::now();
        let dead = db(self.store.find_dead(dead_after, 100).await)?;
        let found = Utc::now();
        let ids: Vec<i64> = dead.iter().map(|job| job.id).collect();
        self.ensure(ids.windows(2).all(|w| w[0] < w[1]), || {
            format!("find_dead returned {ids:?}")
        })?;
        for job in &dead {
            let row = self.row(job.id);
            self.ensure(row.status != Status::Paused, || {
                format!("find_dead returned PAUSED job {}: {row:?}", row.id)
            })?;
            let seen = DeadJob {
                id: row.id,
                status: row.status,
                attempts: row.attempts,
                max_attempts: row.max_attempts,
                worker: row.worker.clone(),
            };
            self.ensure(
                matches!(row.status, Status::Queued | Status::Running) && *job == seen,
                || format!("find_dead returned {job:?}, the row is {row:?}"),
            )?;
        }
        for row in self.rows.values() {
            if !matches!(row.status, Status::Queued | Status::Running) {
                continue;
            }
            let Some(sign) = row.heartbeat_at.or(row.started_at).or(row.queued_at) else {
                return self.fail(format!("no sign of life at all: {row:?}"));
            };
            let listed = ids.contains(&row.id);
            // A microsecond of slack for the store's microsecond timestamps.
            if sign < since(start, dead_after) - chrono::Duration::microseconds(1) {
                self.ensure(listed, || {
                    format!("silent since {sign}, not found dead: {row:?}")
                })?;
            }
            if listed {
                self.ensure(sign < since(found, dead_after), || {
                    format!("alive at {sign}, found dead: {row:?}")
                })?;
            }
        }
        let mut edits = Edits::new();
        for job in &dead {
            let how = job.settlement(dead_after, Duration::ZERO);
            let settled = db(self.store.settle_dead(job, dead_after, &how).await)?;
            self.ensure(settled, || format!("settle_dead({job:?}, {how:?}) lost"))?;
            let edit = match &how {
                Settlement::Requeue => Edit {
                    status: Some(Status::New),
                    worker: Set::To(None),
                    queued_at: Stamp::Null,
                    heartbeat_at: Stamp::Null,
                    ..Edit::default()
                },
                Settlement::Retry { reason, .. } => Edit {
                    run_at: Stamp::Now,
                    last_error: Set::To(Some(reason.clone())),
                    ..Edit::to_new()
                },
                Settlement::Cancel { reason } => Edit::cancelled(reason),
            };
            one(&mut edits, job.id, edit);
        }
        let before = self.rows.clone();
        let after = self.advance(start, edits).await?;
        for (id, row) in &before {
            if row.status == Status::Paused {
                self.ensure(after[id] == *row, || {
                    format!("a dead sweep changed PAUSED job {id}: {:?}", after[id])
                })?;
            }
        }
        Ok(())
    }

    /// [`Self::advance`], and the ids of the rows the step changed.
    async fn advance_changed(
        &mut self,
        start: DateTime<Utc>,
        edits: Edits,
    ) -> Result<(BTreeMap<i64, JobRow>, BTreeSet<i64>), String> {
        let before = self.rows.clone();
        let after = self.advance(start, edits).await?;
        let changed = before
            .iter()
            .filter(|(id, row)| after[*id] != **row)
            .map(|(id, _)| *id)
            .collect();
        Ok((after, changed))
    }

    /// Reads the table after a step that began at `start`, checks it against `edits` (the rows
    /// the step may change, each in one of the ways listed) and every invariant, and keeps it.
    async fn advance(
        &mut self,
        start: DateTime<Utc>,
        edits: Edits,
    ) -> Result<BTreeMap<i64, JobRow>, String> {
        let window = window_since(start);
        let after = self.read().await?;
        let (old, new): (Vec<i64>, Vec<i64>) = (
            self.rows.keys().copied().collect(),
            after.keys().copied().collect(),
        );
        self.ensure(old == new, || {
            format!("the table's ids went from {old:?} to {new:?}")
        })?;
        for (id, before) in &self.rows {
            let row = &after[id];
            let log = &self.log[id];
            let context = || format!("job {id} (statuses so far {log:?})");
            if before.status.is_terminal() {
                let mut same = row.clone();
                same.control.clone_from(&before.control);
                self.ensure(same == *before, || {
                    format!(
                        "{}: a terminal row changed: {}",
                        context(),
                        differences(before, row).join("; ")
                    )
                })?;
            }
            if before.status == Status::Paused && row.status == Status::Cancelled {
                self.ensure(row.last_error.as_deref() == Some(TERMINATED), || {
                    format!(
                        "{}: PAUSED job cancelled other than by terminate: {row:?}",
                        context()
                    )
                })?;
            }
            let candidates = edits.get(id).map(Vec::as_slice).unwrap_or_default();
            if candidates.is_empty() {
                self.ensure(row == before, || {
                    format!(
                        "{}: changed by a step that should leave it: {}",
                        context(),
                        differences(before, row).join("; ")
                    )
                })?;
            } else {
                let checked: Vec<Result<(), String>> = candidates
                    .iter()
                    .map(|edit| edit.check(before, row, window))
                    .collect();
                if !checked.iter().any(Result::is_ok) {
                    let why: Vec<String> = checked.into_iter().filter_map(Result::err).collect();
                    return self.fail(format!(
                        "{}: not what the step writes: {}",
                        context(),
                        why.join(" | or | ")
                    ));
                }
            }
            if let Err(e) = well_formed(row) {
                return self.fail(format!("{}: {e}", context()));
            }
            let limit = row.max_attempts - i32::from(is_waiting(row));
            self.ensure(row.attempts <= limit, || {
                format!(
                    "{}: {} attempts of {}, at most {limit} allowed for a {} row: {row:?}",
                    context(),
                    row.attempts,
                    row.max_attempts,
                    if is_waiting(row) {
                        "waiting"
                    } else {
                        "held or finished"
                    },
                )
            })?;
        }
        for (id, row) in &after {
            let log = self.log.get_mut(id).expect("every job has a log");
            let last = *log.last().expect("logs start with the inserted status");
            if row.status != last {
                log.push(row.status);
                if !is_edge(last, row.status) {
                    let log = log.clone();
                    return self.fail(format!(
                        "job {id} went {last} → {}, statuses {log:?}",
                        row.status
                    ));
                }
            }
        }
        self.rows.clone_from(&after);
        Ok(after)
    }
}

/// A resume of a job in the default queue, which has no limits here.
fn resume(id: i64, worker: &str) -> Resume<'_> {
    Resume {
        id,
        worker,
        queue: "default",
        dead_after: Duration::from_secs(10),
    }
}
