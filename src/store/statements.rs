//! Statements written once for every dialect, built with sqlx's `QueryBuilder`, whose
//! `push_bind` writes `$n` or `?` itself; what truly differs per database (the clock, time
//! arithmetic, a NULL-safe comparison, a list of ids) comes from its [`Dialect`]. Each state
//! change is one conditional UPDATE. The dialect files run them, and keep only what differs
//! whole: claiming, batched finishing, notifications, migration locks.
//!
//! Every SET lists the columns it reads before those it changes: MySQL assigns left to right,
//! so a later expression would see the new value where PostgreSQL and SQLite see the old one.

use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::claim::{GATED, PLAIN};
use super::{
    ATTEMPT_BACK, Claim, DEAD, LAST_SIGN, LIVE, NEXT_ATTEMPT, Scope, TERMINATED, storable,
};
use crate::job::{
    Control, ControlAction, ControlRequest, DeadJob, JobRow, Outcome, Settlement, Status,
};

/// The moment a statement happens, fixed once so that every time it writes is the same one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub at: DateTime<Utc>,
}

impl Clock {
    pub fn now() -> Self {
        Clock { at: Utc::now() }
    }
}

/// The queues whose jobs only their own claims take: paused, or with a concurrency or a rate.
const LIMITED_QUEUES: &str = "SELECT name FROM queues WHERE paused_at IS NOT NULL \
     OR concurrency IS NOT NULL OR rate_per_second IS NOT NULL";

/// What a dialect writes differently in a state change.
pub(super) trait Dialect: Database {
    /// The comparison that also holds when both sides are NULL.
    const SAME: &'static str;

    /// The statement's time.
    fn push_now(query: &mut QueryBuilder<'_, Self>, clock: Clock);

    /// The statement's time plus `wait` (`later`) or minus it.
    fn push_shifted(query: &mut QueryBuilder<'_, Self>, clock: Clock, wait: Duration, later: bool);

    /// `IN` (or `= ANY`) the list `ids`, which is never empty.
    fn push_in_ids(query: &mut QueryBuilder<'_, Self>, ids: &[i64]);

    /// The 64-bit integer type of a CAST.
    const INTEGER: &'static str;

    /// Whether an UPDATE can name the rows it changed (`RETURNING`); without it (MySQL) the
    /// rows are selected `FOR UPDATE` first and updated by id in the same transaction.
    const RETURNING: bool = true;

    /// Whether a statement may change a table that its own subquery reads; MySQL refuses it
    /// (error 1093), so there the rows are selected `FOR UPDATE` first, in a transaction.
    const SELF_SUBQUERY: bool = true;

    /// What a claim's SELECT ends with, so that replicas claiming at once skip each other's
    /// rows instead of waiting; empty where one writer at a time is all there is (SQLite).
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    /// What a SELECT ends with to lock the row it reads until the transaction ends; empty on
    /// SQLite, whose write transactions already exclude each other.
    const LOCKED: &'static str = " FOR UPDATE";

    /// Whether a claim from several named queues takes each queue's first jobs through a
    /// lateral join ([`Sql::push_claimable_per_queue`]) rather than in one ordered scan.
    const PER_QUEUE: bool = false;

    /// Seconds from `column`'s time to the statement's, as a double, reckoned by the database:
    /// a time a user wrote may lie beyond what a replica's clock type holds.
    fn seconds_since(column: &str) -> String;

    /// The size of `column`'s value in bytes, as a 64-bit integer, read without the value.
    fn byte_length(column: &str) -> String;

    /// A time the statement writes.
    fn push_time(query: &mut QueryBuilder<'_, Self>, at: DateTime<Utc>);

    /// `column`, a time, as rows read for a person select it. Where the column type holds
    /// times beyond what a replica's clock type does (PostgreSQL's `infinity`, years past
    /// 9999), those read as NULL: a row then shows no such time, or, without a time it must
    /// have, is left out with a warning, and never stops the reading of the others.
    fn readable_time(column: &str) -> String {
        column.to_owned()
    }

    /// What an INSERT ends with to skip a row whose key `key` is taken, quietly.
    fn skip_duplicate(_key: &str) -> String {
        " ON CONFLICT DO NOTHING".to_owned()
    }

    /// The condition that finds the live job holding unique key `key`: the partial unique
    /// index's own, so that the database reads that index. MySQL, which has no partial indexes,
    /// compares the column its triggers keep instead.
    fn push_held_key<'q>(query: &mut QueryBuilder<'q, Self>, key: &str)
    where
        String: Encode<'q, Self> + Type<Self>,
    {
        query.push("unique_key = ");
        query.push_bind(key.to_owned());
        query.push(format_args!(" AND status IN {LIVE}"));
    }
}

/// The statements, over one set of bounds: what each dialect's sqlx binds.
pub(super) struct Sql<DB>(PhantomData<DB>);

impl<'a, DB> Sql<DB>
where
    DB: Dialect,
    i64: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
    Option<String>: Encode<'a, DB> + Type<DB>,
{
    /// QUEUED → NEW, RUNNING → NEW for a retry, or RUNNING → CANCELLED ([`Settlement`]), if the job
    /// is still as silent as when it was found dead and still held by the same worker (or none).
    pub fn settle_dead(
        job: &DeadJob,
        dead_after: Duration,
        how: &Settlement,
    ) -> QueryBuilder<'a, DB> {
        let clock = Clock::now();
        let mut query = QueryBuilder::new("UPDATE jobs SET ");
        let expected = match how {
            Settlement::Requeue => {
                query.push("status = 'NEW', worker = NULL, queued_at = NULL, heartbeat_at = NULL");
                Status::Queued
            }
            Settlement::Retry { backoff, reason } => {
                query.push("status = 'NEW', run_at = ");
                DB::push_shifted(&mut query, clock, *backoff, true);
                query.push(", last_error = ");
                query.push_bind(storable(reason).into_owned());
                query.push(
                    ", worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL",
                );
                Status::Running
            }
            Settlement::Cancel { reason } => {
                query.push("status = 'CANCELLED', cancelled_at = ");
                DB::push_now(&mut query, clock);
                query.push(", finished_at = ");
                DB::push_now(&mut query, clock);
                query.push(", last_error = ");
                query.push_bind(storable(reason).into_owned());
                Status::Running
            }
        };
        query.push(" WHERE id = ");
        query.push_bind(job.id);
        query.push(format_args!(
            " AND status = '{expected}' AND worker {} ",
            DB::SAME
        ));
        query.push_bind(job.worker.clone());
        query.push(format_args!(" AND {LAST_SIGN} < "));
        DB::push_shifted(&mut query, clock, dead_after, false);
        query
    }

    /// [`Store::release`](super::Store::release): this worker's QUEUED and RUNNING jobs (or just
    /// `id`) back to NEW, the attempt of an interrupted run given back; PAUSED ones stay PAUSED,
    /// held by no one.
    pub fn release(worker: &str, ids: Option<&[i64]>) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "UPDATE jobs SET attempts = CASE WHEN status = 'QUEUED' THEN attempts ELSE {ATTEMPT_BACK} END, \
             status = CASE WHEN status = 'PAUSED' THEN 'PAUSED' ELSE 'NEW' END, \
             worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
             WHERE status IN ('QUEUED', 'RUNNING', 'PAUSED') AND worker = "
        ));
        query.push_bind(worker.to_owned());
        if let Some(ids) = ids {
            query.push(" AND id ");
            DB::push_in_ids(&mut query, ids);
        }
        query
    }

    /// [`Store::pause`](super::Store::pause) and [`Store::resume`](super::Store::resume): `from` →
    /// `to` for the job `worker` holds, clearing only the request carried out (a terminate written
    /// meanwhile must stay); the dead-clock starts again.
    pub fn hand_over(
        id: i64,
        worker: &str,
        from: Status,
        to: Status,
        request: Control,
    ) -> QueryBuilder<'a, DB> {
        let clock = Clock::now();
        // The text holds only the enums' own spellings.
        let mut query = QueryBuilder::new(format!(
            "UPDATE jobs SET control = CASE WHEN control = '{request}' THEN NULL ELSE control END, \
             status = '{to}', heartbeat_at = "
        ));
        DB::push_now(&mut query, clock);
        query.push(" WHERE id = ");
        query.push_bind(id);
        query.push(format_args!(" AND status = '{from}' AND worker = "));
        query.push_bind(worker.to_owned());
        query
    }

    /// [`Store::apply_control`](super::Store::apply_control), if the row still has the status and
    /// request that were seen. Only for actions that write ([`ControlAction::writes`]).
    pub fn apply_control(request: &ControlRequest, action: ControlAction) -> QueryBuilder<'a, DB> {
        let clock = Clock::now();
        let mut query = QueryBuilder::new("UPDATE jobs SET ");
        match action {
            ControlAction::PauseWaiting => {
                query.push(
                    "status = 'PAUSED', control = NULL, worker = NULL, queued_at = NULL, heartbeat_at = NULL",
                );
            }
            ControlAction::ResumeDetached => {
                query.push(format_args!(
                    "attempts = CASE WHEN worker IS NULL THEN attempts ELSE {ATTEMPT_BACK} END, \
                     status = 'NEW', control = NULL, worker = NULL, queued_at = NULL, started_at = NULL, \
                     heartbeat_at = NULL"
                ));
            }
            ControlAction::Terminate => {
                query.push("status = 'CANCELLED', control = NULL, cancelled_at = ");
                DB::push_now(&mut query, clock);
                query.push(", finished_at = ");
                DB::push_now(&mut query, clock);
                query.push(", last_error = ");
                query.push_bind(TERMINATED.to_owned());
            }
            ControlAction::Clear => {
                query.push("control = NULL");
            }
            // Nothing to write: the request stays as it is.
            ControlAction::Signal(_) | ControlAction::Leave => {
                query.push("control = control");
            }
        }
        query.push(" WHERE id = ");
        query.push_bind(request.id);
        query.push(format_args!(
            " AND status = '{}' AND control = '{}'",
            request.status, request.control
        ));
        if action == ControlAction::ResumeDetached {
            query.push(format_args!(" AND worker {} ", DB::SAME));
            query.push_bind(request.worker.clone());
        }
        query
    }

    /// [`Store::limit_payloads`](super::Store::limit_payloads).
    pub fn limit_payloads(max_bytes: u64) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("UPDATE jobsd_limits SET max_payload_bytes = ");
        query.push_bind(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        query
    }

    /// [`Store::mark_started`](super::Store::mark_started): QUEUED by `worker` → RUNNING, one more
    /// attempt, started `since` ago.
    pub fn mark_started(worker: &str, ids: &[i64], since: Duration) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "UPDATE jobs SET status = 'RUNNING', heartbeat_at = NULL, {NEXT_ATTEMPT}, started_at = "
        ));
        Self::push_started(&mut query, Clock::now(), since);
        Self::push_held_by(&mut query, Status::Queued, worker, ids);
        query
    }

    /// [`Store::finish_unstarted`](super::Store::finish_unstarted): QUEUED by `worker` → DONE, its
    /// start written with it: one more attempt, started `since` ago.
    pub fn finish_unstarted(worker: &str, ids: &[i64], since: Duration) -> QueryBuilder<'a, DB> {
        let clock = Clock::now();
        let mut query = QueryBuilder::new(format!(
            "UPDATE jobs SET status = 'DONE', last_error = NULL, heartbeat_at = NULL, {NEXT_ATTEMPT}, \
             started_at = "
        ));
        Self::push_started(&mut query, clock, since);
        query.push(", finished_at = ");
        DB::push_now(&mut query, clock);
        Self::push_held_by(&mut query, Status::Queued, worker, ids);
        query
    }

    /// A start `since` before the statement, written behind the run: never before the claim
    /// (`queued_at`), which the run cannot precede, whatever the clocks say.
    fn push_started(query: &mut QueryBuilder<'a, DB>, clock: Clock, since: Duration) {
        if since.is_zero() {
            DB::push_now(query, clock);
            return;
        }
        query.push("CASE WHEN queued_at > ");
        DB::push_shifted(query, clock, since, false);
        query.push(" THEN queued_at ELSE ");
        DB::push_shifted(query, clock, since, false);
        query.push(" END");
    }

    /// [`Store::heartbeat`](super::Store::heartbeat): a sign of life of a RUNNING job, and its
    /// checkpoint when given.
    pub fn heartbeat(id: i64, worker: &str, progress: Option<&str>) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("UPDATE jobs SET progress = COALESCE(");
        query.push_bind(progress.map(str::to_owned));
        query.push(", progress), heartbeat_at = ");
        DB::push_now(&mut query, Clock::now());
        query.push(" WHERE id = ");
        query.push_bind(id);
        query.push(" AND status = 'RUNNING' AND worker = ");
        query.push_bind(worker.to_owned());
        query
    }

    /// [`Store::touch`](super::Store::touch): a sign of life of `worker`'s waiting jobs `ids`
    /// (never empty) whose last one is older than `older_than`.
    pub fn touch(worker: &str, ids: &[i64], older_than: Duration) -> QueryBuilder<'a, DB> {
        let clock = Clock::now();
        let mut query = QueryBuilder::new("UPDATE jobs SET heartbeat_at = ");
        DB::push_now(&mut query, clock);
        query.push(" WHERE status IN ('QUEUED', 'RUNNING', 'PAUSED') AND worker = ");
        query.push_bind(worker.to_owned());
        query.push(" AND id ");
        DB::push_in_ids(&mut query, ids);
        query.push(format_args!(" AND {LAST_SIGN} < "));
        DB::push_shifted(&mut query, clock, older_than, false);
        query
    }

    /// [`Store::request`](super::Store::request): a control request, as a user's UPDATE writes it.
    pub fn request(id: i64, control: Control) -> QueryBuilder<'a, DB> {
        // The text holds only the enum's own spelling.
        let mut query =
            QueryBuilder::new(format!("UPDATE jobs SET control = '{control}' WHERE id = "));
        query.push_bind(id);
        query
    }

    /// [`Store::find_dead`](super::Store::find_dead): the columns of [`DeadJob`].
    pub fn find_dead(dead_after: Duration, limit: u32) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {DEAD} FROM jobs WHERE status IN ('QUEUED', 'RUNNING') AND {LAST_SIGN} < "
        ));
        DB::push_shifted(&mut query, Clock::now(), dead_after, false);
        query.push(" ORDER BY id LIMIT ");
        query.push_bind(i64::from(limit));
        query
    }

    /// [`Store::lost`](super::Store::lost): of `running` (never empty), the ids no longer RUNNING,
    /// PAUSED or, their start not yet written, QUEUED by `worker`.
    pub fn lost(worker: &str, running: &[i64]) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("SELECT id FROM jobs WHERE id ");
        DB::push_in_ids(&mut query, running);
        query.push(format_args!(
            " AND (status NOT IN ('QUEUED', 'RUNNING', 'PAUSED') OR NOT (worker {} ",
            DB::SAME
        ));
        query.push_bind(Some(worker.to_owned()));
        query.push("))");
        query
    }

    /// [`Store::find_controls`](super::Store::find_controls): the columns of [`ControlRequest`].
    pub fn find_controls(dead_after: Duration, after: i64, limit: u32) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "SELECT id, status, control, worker, CAST(CASE WHEN {LAST_SIGN} < ",
        ));
        DB::push_shifted(&mut query, Clock::now(), dead_after, false);
        query.push(format_args!(
            " THEN 1 ELSE 0 END AS {}) AS silent FROM jobs WHERE control IS NOT NULL AND id > ",
            DB::INTEGER
        ));
        query.push_bind(after);
        query.push(" ORDER BY id LIMIT ");
        query.push_bind(i64::from(limit));
        query
    }

    /// [`Store::finish`](super::Store::finish) of the jobs `ids` (never empty) that ended DONE:
    /// RUNNING by `worker` → DONE. One statement for a whole batch.
    pub fn finish_done(worker: &str, ids: &[i64]) -> QueryBuilder<'a, DB> {
        let mut query =
            QueryBuilder::new("UPDATE jobs SET status = 'DONE', last_error = NULL, finished_at = ");
        DB::push_now(&mut query, Clock::now());
        Self::push_held_by(&mut query, Status::Running, worker, ids);
        query
    }

    /// Of the jobs `ids` (never empty), those still in `status` by `worker`, locked until the
    /// transaction ends: where an UPDATE cannot name its rows, these are the ones
    /// [`Sql::finish_done`], [`Sql::finish_unstarted`] or [`Sql::mark_started`] then changes.
    pub fn locked(status: Status, worker: &str, ids: &[i64]) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("SELECT id FROM jobs");
        Self::push_held_by(&mut query, status, worker, ids);
        query.push(DB::LOCKED);
        query
    }

    /// ` WHERE` the jobs `ids` (never empty) are in `status` by `worker`: the condition of every
    /// batched write of a worker's jobs.
    fn push_held_by(query: &mut QueryBuilder<'a, DB>, status: Status, worker: &str, ids: &[i64]) {
        query.push(format_args!(
            " WHERE status = '{}' AND worker = ",
            status.as_str()
        ));
        query.push_bind(worker.to_owned());
        query.push(" AND id ");
        DB::push_in_ids(query, ids);
    }

    /// [`Store::finish`](super::Store::finish) of one job that did not end DONE: RUNNING by
    /// `worker` → FAILED, or back to NEW after `backoff` for a retry; `None` for DONE, which the
    /// dialects write for a whole batch at once.
    pub fn settle_outcome(
        id: i64,
        worker: &str,
        outcome: &Outcome,
    ) -> Option<QueryBuilder<'a, DB>> {
        let clock = Clock::now();
        let mut query = QueryBuilder::new("UPDATE jobs SET ");
        match outcome {
            Outcome::Done => return None,
            Outcome::Failed { reason } => {
                query.push("status = 'FAILED', finished_at = ");
                DB::push_now(&mut query, clock);
                query.push(", last_error = ");
                query.push_bind(storable(reason).into_owned());
            }
            Outcome::Retry { backoff, reason } => {
                query.push("status = 'NEW', run_at = ");
                DB::push_shifted(&mut query, clock, *backoff, true);
                query.push(", last_error = ");
                query.push_bind(storable(reason).into_owned());
                query.push(
                    ", worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL",
                );
            }
        }
        query.push(" WHERE id = ");
        query.push_bind(id);
        query.push(" AND status = 'RUNNING' AND worker = ");
        query.push_bind(worker.to_owned());
        Some(query)
    }

    /// [`Store::live_with_key`](super::Store::live_with_key): the id of the live job holding
    /// unique key `key`, read from the index that keeps the key unique.
    pub fn live_with_key(key: &str) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("SELECT id FROM jobs WHERE ");
        DB::push_held_key(&mut query, key);
        query
    }

    /// The columns of [`JobRow`] as a SELECT of rows for a person lists them.
    fn row_columns() -> String {
        JobRow::COLUMNS
            .iter()
            .map(|column| {
                if JobRow::TIMES.contains(column) {
                    DB::readable_time(column)
                } else {
                    (*column).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// [`Store::rows_in`](super::Store::rows_in): the columns of [`JobRow`] of up to `limit`
    /// rows in `statuses`, the latest by `latest_by` (a column this crate names) first.
    pub fn rows_in(statuses: &[Status], latest_by: &str, limit: u32) -> QueryBuilder<'a, DB> {
        let list: Vec<String> = statuses
            .iter()
            .map(|status| format!("'{status}'"))
            .collect();
        let mut query = QueryBuilder::new(format!(
            "SELECT {} FROM jobs WHERE status IN ({}) ORDER BY {latest_by} DESC LIMIT ",
            Self::row_columns(),
            list.join(", ")
        ));
        query.push_bind(i64::from(limit));
        query
    }

    /// [`Store::rows`](super::Store::rows): the columns of [`JobRow`] for `ids`, or else for the
    /// newest `limit` rows, in id order.
    pub fn rows(ids: &[i64], limit: u32) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "SELECT * FROM (SELECT {} FROM jobs",
            Self::row_columns()
        ));
        if !ids.is_empty() {
            query.push(" WHERE id ");
            DB::push_in_ids(&mut query, ids);
        }
        query.push(" ORDER BY id DESC LIMIT ");
        query.push_bind(i64::from(limit));
        query.push(") newest ORDER BY id");
        query
    }

    /// [`Store::claim`](super::Store::claim) where an UPDATE names its rows: one statement
    /// that picks, changes and returns them.
    pub fn claim_returning(claim: &Claim<'_>) -> QueryBuilder<'a, DB> {
        let clock = Clock::now();
        let mut query = QueryBuilder::new("UPDATE jobs SET ");
        Self::push_claimed_as(&mut query, claim, clock);
        query.push(" WHERE id IN (");
        match claim.scope {
            Scope::UnlimitedOf(names) if DB::PER_QUEUE && names.len() > 1 => {
                Self::push_claimable_per_queue(&mut query, claim, names, clock);
            }
            _ => {
                query.push("SELECT id FROM jobs");
                Self::push_claimable(&mut query, claim, clock);
            }
        }
        query.push(") RETURNING ");
        Self::push_claimed_columns(&mut query, claim.max_bytes);
        query
    }

    /// The first half of a claim where an UPDATE cannot name its rows: the rows, locked.
    pub fn claim_select(claim: &Claim<'_>) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("SELECT ");
        Self::push_claimed_columns(&mut query, claim.max_bytes);
        query.push(" FROM jobs");
        Self::push_claimable(&mut query, claim, Clock::now());
        query
    }

    /// The second half: the rows `ids` (never empty) that the first half locked, changed.
    pub fn claim_update(claim: &Claim<'_>, ids: &[i64]) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("UPDATE jobs SET ");
        Self::push_claimed_as(&mut query, claim, Clock::now());
        query.push(" WHERE id ");
        DB::push_in_ids(&mut query, ids);
        query
    }

    /// The SET of a claim: QUEUED by the worker, or with `start` RUNNING as well.
    fn push_claimed_as(query: &mut QueryBuilder<'a, DB>, claim: &Claim<'_>, clock: Clock) {
        if claim.start {
            query.push(format_args!(
                "status = 'RUNNING', {NEXT_ATTEMPT}, started_at = "
            ));
            DB::push_now(query, clock);
            query.push(", ");
        } else {
            query.push("status = 'QUEUED', ");
        }
        query.push("heartbeat_at = NULL, worker = ");
        query.push_bind(claim.worker.to_owned());
        query.push(", queued_at = ");
        DB::push_now(query, clock);
    }

    /// Which NEW rows a claim takes, in what order, how many: those whose time has come, from
    /// the queues it asks for, by priority, then `run_at`, then id.
    fn push_claimable(query: &mut QueryBuilder<'a, DB>, claim: &Claim<'_>, clock: Clock) {
        query.push(" WHERE status = 'NEW' AND run_at <= ");
        DB::push_now(query, clock);
        match claim.scope {
            Scope::Limited(name) => {
                query.push(" AND queue = ");
                query.push_bind(name.to_owned());
            }
            Scope::Unlimited | Scope::UnlimitedOf(_) => {
                if let Scope::UnlimitedOf(names) = claim.scope {
                    query.push(" AND queue IN (");
                    let mut list = query.separated(", ");
                    for name in names {
                        list.push_bind(name.clone());
                    }
                    query.push(")");
                }
                // Exact at the moment of the claim, whatever this replica last read of the
                // queues table: a paused or limited queue's jobs are never claimed here. NOT IN
                // rather than NOT EXISTS: PostgreSQL hashes the few names once and still walks
                // the claim's index in order, where an anti-join sorts every NEW row first.
                // (Neither side is ever NULL: `name` is the key, `queue` is NOT NULL.) Left
                // out while no queue has a pause or a limit: it costs a claim of hundreds some
                // tenths of a millisecond.
                if claim.any_limits {
                    query.push(format_args!(" AND queue NOT IN ({LIMITED_QUEUES})"));
                }
            }
        }
        query.push(" ORDER BY priority, run_at, id LIMIT ");
        query.push_bind(i64::from(claim.limit));
        query.push(DB::SKIP_LOCKED);
    }

    /// The ids a claim from several named queues takes where the database joins laterally:
    /// each queue's first jobs in the order of its own index, locked, then the first of them
    /// all. One ordered scan over the list has no index that gives the list's order, so
    /// PostgreSQL reads and sorts every NEW row of the listed queues for it; each queue's
    /// subquery here stops at the LIMIT. A queue's rows locked beyond the first `limit` of all
    /// go free when the claim ends, a moment later.
    fn push_claimable_per_queue(
        query: &mut QueryBuilder<'a, DB>,
        claim: &Claim<'_>,
        names: &[String],
        clock: Clock,
    ) {
        query.push("SELECT claimable.id FROM (VALUES ");
        let mut list = query.separated(", ");
        for name in names {
            list.push("(");
            list.push_bind_unseparated(name.clone());
            list.push_unseparated(")");
        }
        query.push(
            ") AS listed (name) CROSS JOIN LATERAL (SELECT id, priority, run_at FROM jobs \
             WHERE status = 'NEW' AND run_at <= ",
        );
        DB::push_now(query, clock);
        query.push(" AND queue = listed.name ORDER BY priority, run_at, id LIMIT ");
        query.push_bind(i64::from(claim.limit));
        query.push(DB::SKIP_LOCKED);
        query.push(") AS claimable");
        if claim.any_limits {
            query.push(format_args!(" WHERE listed.name NOT IN ({LIMITED_QUEUES})"));
        }
        query.push(" ORDER BY claimable.priority, claimable.run_at, claimable.id LIMIT ");
        query.push_bind(i64::from(claim.limit));
    }

    /// The columns a claim returns: what [`claimed`](super::claim::claimed) decodes. Each big
    /// text comes only when it fits `max_bytes`, with its size beside it.
    fn push_claimed_columns(query: &mut QueryBuilder<'a, DB>, max_bytes: u64) {
        query.push(PLAIN);
        query.push(format_args!(", {} AS waited", DB::seconds_since("run_at")));
        for column in GATED {
            let bytes = DB::byte_length(column);
            query.push(format_args!(", CASE WHEN {bytes} <= "));
            query.push_bind(i64::try_from(max_bytes).unwrap_or(i64::MAX));
            query.push(format_args!(
                " THEN {column} END AS {column}, {bytes} AS {column}_bytes"
            ));
        }
    }
}
