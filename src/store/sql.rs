//! One store for every dialect: [`SqlStore`] over a pool of the dialect's connections. Each
//! duty is written once here, from the statements in `statements.rs`; a dialect file implements
//! [`Backend`] with only what truly differs whole (claiming, batched finishing, the INSERT of
//! a job and of a file's rows, migration locks, notifications, scratch databases). See
//! ARCHITECTURE.md, "The store".
//!
//! The duties are implemented by [`shared_duties!`] for each dialect in turn rather than once
//! over a type parameter: sqlx's bounds for running a query on any database (its executor, its
//! argument buffers, each bound and decoded type) would be restated on every impl, and say
//! nothing the three concrete dialects do not already promise.
//!
//! A store tells the daemons watching it of the jobs its own process inserts ([`Inserted`]):
//! MySQL and SQLite cannot tell a replica of an insert, but the schedules loop inserts inside
//! the daemon, and its jobs need not wait for a poll. It is the same on every dialect, as it
//! costs nothing; on PostgreSQL the NOTIFY that follows makes one more pass.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Database, Pool, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::files::ExportDialect;
use super::statements::Dialect;
use super::{ImportBatch, Result, Wakes};
use crate::job::NewJob;

/// A store on a pool of `DB` connections.
pub struct SqlStore<DB: Database> {
    pub(super) pool: Pool<DB>,
    inserted: Inserted,
}

impl<DB: Database> SqlStore<DB> {
    pub(super) fn new(pool: Pool<DB>) -> Self {
        SqlStore {
            pool,
            inserted: Inserted::default(),
        }
    }
}

/// The new-jobs wake-ups of the daemons watching a store, told when the store inserts a job.
#[derive(Default)]
struct Inserted(Mutex<Vec<Arc<Notify>>>);

impl Inserted {
    /// Tells `wake` of this store's inserts until `stop`.
    async fn watch(&self, wake: Arc<Notify>, stop: CancellationToken) {
        self.wakes().push(Arc::clone(&wake));
        // Removed however the watch ends, cancelled or dropped.
        let _watching = Watching {
            inserted: self,
            wake,
        };
        stop.cancelled().await;
    }

    /// A job was inserted: the new-jobs publishers of this process look now.
    fn tell(&self) {
        for wake in self.wakes().iter() {
            wake.notify_one();
        }
    }

    /// The list, whole even if a thread panicked holding it: it is only pushed to and pruned.
    fn wakes(&self) -> MutexGuard<'_, Vec<Arc<Notify>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One wake-up in [`Inserted`], removed when dropped.
struct Watching<'a> {
    inserted: &'a Inserted,
    wake: Arc<Notify>,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.inserted
            .wakes()
            .retain(|wake| !Arc::ptr_eq(wake, &self.wake));
    }
}

/// What a dialect does its own way, whole. Everything else is shared.
#[async_trait]
pub(super) trait Backend: Dialect {
    /// Text casts, identifier quoting and the bounds of an export's day.
    const EXPORT: ExportDialect;

    /// Applies pending migrations, taking turns with replicas starting at the same moment.
    async fn migrate(pool: &Pool<Self>) -> Result<()>;

    /// Inserts `job` and returns its id. With `skip_held`, a live job holding its unique key
    /// makes the INSERT skip it quietly (`None`); without, the unique violation is the error.
    async fn insert(pool: &Pool<Self>, job: &NewJob, skip_held: bool) -> Result<Option<i64>>;

    async fn columns(pool: &Pool<Self>, table: &str) -> Result<Vec<String>>;

    /// A transaction for a write that reads first. SQLite overrides it.
    async fn begin(pool: &Pool<Self>) -> Result<Transaction<'static, Self>> {
        pool.begin().await
    }

    /// [`super::Files::import_bytes`]: the batch past which a larger one no longer imports
    /// faster here.
    const IMPORT_BYTES: usize;

    /// Inserts an import batch's rows ([`super::Files::import_batch`] records the checkpoint
    /// in the same transaction).
    async fn insert_rows(connection: &mut Self::Connection, batch: &ImportBatch<'_>) -> Result<()>;

    async fn insert_many(pool: &Pool<Self>, count: u32, nanos: i64, done: bool) -> Result<()>;

    async fn statements(pool: &Pool<Self>) -> Result<Option<u64>>;

    /// [`super::Inspect::upkeep`]'s statements.
    const UPKEEP: &'static [&'static str];

    async fn create_scratch(pool: &Pool<Self>, url: &str, name: &str) -> Result<String>;

    async fn drop_scratch(pool: &Pool<Self>, name: &str) -> Result<()>;

    /// [`super::Schema::watch`]; dialects that cannot be told return at once.
    async fn watch(_pool: &Pool<Self>, _wakes: Wakes, _stop: CancellationToken) {}
}

/// How many times a write that lost a deadlock is tried in all.
const DEADLOCK_TRIES: u32 = 5;

/// Runs `attempt` again while it loses a deadlock, a few times: the database rolled the loser
/// back whole, so trying again is safe. Mostly MySQL's: InnoDB settles lock cycles this way.
pub(super) async fn retry_deadlocks<T, F, Fut>(attempt: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if is_deadlock(&error) && tries < DEADLOCK_TRIES => {
                tracing::debug!(%error, tries, "lost a deadlock; trying again");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
            }
            done => return done,
        }
    }
}

/// MySQL 1213 (a deadlock victim) and 1205 (gave up waiting for a lock), PostgreSQL 40P01: the
/// transaction was rolled back.
fn is_deadlock(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    if let Some(error) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(error.number(), 1213 | 1205);
    }
    error.code().as_deref() == Some("40P01")
}

/// The duties of [`super::Store`] for `SqlStore<$db>`, written once.
macro_rules! shared_duties {
    ($db:ty) => {
        impl SqlStore<$db> {
            /// Runs the state change `build` makes (again, should it lose a deadlock); whether
            /// it changed a row.
            async fn change<'q>(
                &self,
                build: impl Fn() -> sqlx::QueryBuilder<'q, $db>,
            ) -> Result<u64> {
                retry_deadlocks(|| async {
                    Ok(build().build().execute(&self.pool).await?.rows_affected())
                })
                .await
            }

            async fn won<'q>(
                &self,
                build: impl Fn() -> sqlx::QueryBuilder<'q, $db>,
            ) -> Result<bool> {
                Ok(self.change(build).await? == 1)
            }
        }

        claiming!($db);

        #[async_trait]
        impl Lifecycle for SqlStore<$db> {
            async fn insert(&self, job: &NewJob) -> Result<i64> {
                // Without the skip, the INSERT returns its id or fails.
                let id = <$db as Backend>::insert(&self.pool, job, false)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                self.inserted.tell();
                Ok(id)
            }

            async fn insert_or_skip(&self, job: &NewJob) -> Result<Option<i64>> {
                let id = <$db as Backend>::insert(&self.pool, job, true).await?;
                if id.is_some() {
                    self.inserted.tell();
                }
                Ok(id)
            }

            async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<ClaimedJob>> {
                retry_deadlocks(|| async {
                    match claim.scope {
                        Scope::Limited(name) => self.claim_limited(claim, name).await,
                        Scope::Unlimited | Scope::UnlimitedOf(_) => self.claim_unlimited(claim).await,
                    }
                })
                .await
            }

            async fn mark_started(
                &self,
                worker: &str,
                ids: &[i64],
                since: Duration,
            ) -> Result<Vec<i64>> {
                // One job, the usual start under a rate limit: one statement says whether it
                // won, with no transaction around it.
                if let [id] = ids {
                    let won = self
                        .won(|| Sql::<$db>::mark_started(worker, ids, since))
                        .await?;
                    return Ok(if won { vec![*id] } else { Vec::new() });
                }
                self.change_all_named(Status::Queued, worker, ids, |worker, ids| {
                    Sql::<$db>::mark_started(worker, ids, since)
                })
                .await
            }

            async fn finish_unstarted(
                &self,
                worker: &str,
                ids: &[i64],
                since: Duration,
            ) -> Result<Vec<i64>> {
                self.change_all_named(Status::Queued, worker, ids, |worker, ids| {
                    Sql::<$db>::finish_unstarted(worker, ids, since)
                })
                .await
            }

            async fn heartbeat(
                &self,
                id: i64,
                worker: &str,
                progress: Option<&str>,
            ) -> Result<bool> {
                self.won(|| Sql::<$db>::heartbeat(id, worker, progress))
                    .await
            }

            async fn finish(&self, worker: &str, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>> {
                // The DONE jobs in one statement, found by key; the rare others one each, in
                // the same transaction. (A single statement joined with arrays of outcomes was
                // tried on PostgreSQL: its generic plan compares every row with every outcome.)
                if outcomes.is_empty() {
                    return Ok(Vec::new());
                }
                let done = done_ids(outcomes);
                if done.len() == outcomes.len() && <$db as Dialect>::RETURNING {
                    return self
                        .change_all_named(Status::Running, worker, &done, Sql::<$db>::finish_done)
                        .await;
                }
                retry_deadlocks(|| async {
                    let mut tx = <$db as Backend>::begin(&self.pool).await?;
                    let mut won = if done.is_empty() {
                        Vec::new()
                    } else {
                        Self::change_named(
                            &mut tx,
                            Status::Running,
                            worker,
                            &done,
                            Sql::<$db>::finish_done,
                        )
                        .await?
                    };
                    for (id, outcome) in outcomes {
                        let Some(mut query) = Sql::<$db>::settle_outcome(*id, worker, outcome)
                        else {
                            continue;
                        };
                        if query.build().execute(&mut *tx).await?.rows_affected() == 1 {
                            won.push(*id);
                        }
                    }
                    tx.commit().await?;
                    Ok(won)
                })
                .await
            }

            async fn release(&self, worker: &str, ids: Option<&[i64]>) -> Result<u64> {
                if ids.is_some_and(<[i64]>::is_empty) {
                    return Ok(0);
                }
                self.change(|| Sql::<$db>::release(worker, ids)).await
            }

            async fn touch(&self, worker: &str, ids: &[i64], older_than: Duration) -> Result<u64> {
                if ids.is_empty() {
                    return Ok(0);
                }
                self.change(|| Sql::<$db>::touch(worker, ids, older_than)).await
            }

            async fn lost(&self, worker: &str, running: &[i64]) -> Result<Vec<i64>> {
                if running.is_empty() {
                    return Ok(Vec::new());
                }
                let mut query = Sql::<$db>::lost(worker, running);
                query.build_query_scalar().fetch_all(&self.pool).await
            }

            async fn find_dead(&self, dead_after: Duration, limit: u32) -> Result<Vec<DeadJob>> {
                let mut query = Sql::<$db>::find_dead(dead_after, limit);
                Ok(each_row(&query.build().fetch_all(&self.pool).await?))
            }

            async fn settle_dead(
                &self,
                job: &DeadJob,
                dead_after: Duration,
                how: &Settlement,
            ) -> Result<bool> {
                self.won(|| Sql::<$db>::settle_dead(job, dead_after, how))
                    .await
            }
        }

        #[async_trait]
        impl Controls for SqlStore<$db> {
            async fn pause(&self, id: i64, worker: &str) -> Result<bool> {
                let (from, to) = (Status::Running, Status::Paused);
                self.won(|| Sql::<$db>::hand_over(id, worker, from, to, Control::Pause))
                    .await
            }

            async fn resume(&self, resume: &Resume<'_>) -> Result<Resumed> {
                retry_deadlocks(|| async {
                    let mut tx = <$db as Backend>::begin(&self.pool).await?;
                    let mut lock = Sql::<$db>::lock_queue(resume.queue);
                    if let Some(row) = lock.build().fetch_optional(&mut *tx).await? {
                        let limits = QueueLimits::read(&row)?;
                        if limits.paused {
                            return Ok(Resumed::Wait);
                        }
                        if let Some(concurrency) = limits.concurrency {
                            let mut count = Sql::<$db>::busy(resume.queue, resume.dead_after);
                            let busy: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
                            if busy >= concurrency {
                                return Ok(Resumed::Wait);
                            }
                        }
                    }
                    let (from, to) = (Status::Paused, Status::Running);
                    let mut query =
                        Sql::<$db>::hand_over(resume.id, resume.worker, from, to, Control::Resume);
                    let won = query.build().execute(&mut *tx).await?.rows_affected() == 1;
                    tx.commit().await?;
                    Ok(if won { Resumed::Yes } else { Resumed::Lost })
                })
                .await
            }

            async fn find_controls(
                &self,
                dead_after: Duration,
                after: i64,
                limit: u32,
            ) -> Result<Vec<ControlRequest>> {
                let mut query = Sql::<$db>::find_controls(dead_after, after, limit);
                Ok(each_row(&query.build().fetch_all(&self.pool).await?))
            }

            async fn apply_control(
                &self,
                request: &ControlRequest,
                action: ControlAction,
            ) -> Result<bool> {
                if !action.writes() {
                    return Ok(false);
                }
                self.won(|| Sql::<$db>::apply_control(request, action))
                    .await
            }

            async fn request(&self, id: i64, control: Control) -> Result<bool> {
                self.won(|| Sql::<$db>::request(id, control)).await
            }
        }

        #[async_trait]
        impl Queues for SqlStore<$db> {
            async fn queues(&self) -> Result<Vec<QueueRow>> {
                let mut query = Sql::<$db>::queues();
                Ok(each_row(&query.build().fetch_all(&self.pool).await?))
            }

            async fn pause_queue(&self, name: &str, paused: bool) -> Result<()> {
                self.change(|| Sql::<$db>::add_queue(name)).await?;
                self.change(|| Sql::<$db>::set_paused("queues", name, paused)).await?;
                Ok(())
            }

            async fn limit_queue(
                &self,
                name: &str,
                concurrency: Option<i64>,
                rate_per_second: Option<f64>,
            ) -> Result<()> {
                self.change(|| Sql::<$db>::add_queue(name)).await?;
                self.change(|| Sql::<$db>::set_limits(name, concurrency, rate_per_second))
                    .await?;
                Ok(())
            }

            async fn queue_counts(&self) -> Result<Vec<(String, Status, i64)>> {
                let rows: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT queue, status, COUNT(*) FROM jobs GROUP BY queue, status ORDER BY queue, status",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(queue, status, count)| {
                        let status = status
                            .parse()
                            .map_err(|e: UnknownStatus| sqlx::Error::Decode(e.into()))?;
                        Ok((queue, status, count))
                    })
                    .collect()
            }
        }

        #[async_trait]
        impl Pruning for SqlStore<$db> {
            async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
                self.won(|| Sql::<$db>::take_lease(name, holder, ttl)).await
            }

            async fn prune(
                &self,
                statuses: &[Status],
                older_than: Duration,
                limit: u32,
            ) -> Result<u64> {
                if <$db as Dialect>::SELF_SUBQUERY {
                    return self
                        .change(|| Sql::<$db>::prune(statuses, older_than, limit))
                        .await;
                }
                retry_deadlocks(|| async {
                    let mut tx = <$db as Backend>::begin(&self.pool).await?;
                    let mut old = Sql::<$db>::old_finished(statuses, older_than, limit);
                    let ids: Vec<i64> = old.build_query_scalar().fetch_all(&mut *tx).await?;
                    if ids.is_empty() {
                        return Ok(0);
                    }
                    let mut delete = Sql::<$db>::delete_finished(statuses, &ids);
                    let deleted = delete.build().execute(&mut *tx).await?.rows_affected();
                    tx.commit().await?;
                    Ok(deleted)
                })
                .await
            }
        }

        #[async_trait]
        impl Schedules for SqlStore<$db> {
            async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
                let mut query = Sql::<$db>::schedules();
                let rows = query.build().fetch_all(&self.pool).await?;
                Ok(rows
                    .iter()
                    .filter_map(|row| match ScheduleRow::from_row(row) {
                        Ok(schedule) => Some(schedule),
                        Err(error) => {
                            let name: Option<String> = row.try_get("name").ok();
                            tracing::warn!(schedule = ?name, %error, "a schedule cannot be read; left out");
                            None
                        }
                    })
                    .collect())
            }

            async fn advance_schedule(&self, advance: &Advance<'_>) -> Result<bool> {
                let moved = retry_deadlocks(|| async {
                    let mut tx = <$db as Backend>::begin(&self.pool).await?;
                    let mut moved = Sql::<$db>::advance_schedule(advance);
                    if moved.build().execute(&mut *tx).await?.rows_affected() != 1 {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                    if let Some(slot) = advance.step.slot {
                        let mut insert = Sql::<$db>::insert_scheduled(advance.schedule, slot);
                        insert.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                })
                .await?;
                if moved && advance.step.slot.is_some() {
                    self.inserted.tell();
                }
                Ok(moved)
            }

            async fn mark_schedule(
                &self,
                schedule: &ScheduleRow,
                error: Option<&str>,
            ) -> Result<bool> {
                self.won(|| Sql::<$db>::mark_schedule(schedule, error)).await
            }

            async fn add_schedule(&self, schedule: &NewSchedule) -> Result<()> {
                self.change(|| Sql::<$db>::add_schedule(schedule)).await?;
                Ok(())
            }

            async fn pause_schedule(&self, name: &str, paused: bool) -> Result<bool> {
                self.won(|| Sql::<$db>::set_paused("schedules", name, paused)).await
            }

            async fn remove_schedule(&self, name: &str) -> Result<bool> {
                self.won(|| Sql::<$db>::remove_schedule(name)).await
            }
        }

        #[async_trait]
        impl Files for SqlStore<$db> {
            async fn columns(&self, table: &str) -> Result<Vec<String>> {
                <$db as Backend>::columns(&self.pool, table).await
            }

            fn import_bytes(&self) -> usize {
                <$db as Backend>::IMPORT_BYTES
            }

            async fn import_batch(&self, batch: &ImportBatch<'_>) -> Result<bool> {
                retry_deadlocks(|| async {
                    let mut tx = <$db as Backend>::begin(&self.pool).await?;
                    <$db as Backend>::insert_rows(&mut tx, batch).await?;
                    // The checkpoint is a heartbeat with progress, in the same transaction.
                    let checkpoint =
                        Sql::<$db>::heartbeat(batch.id, batch.worker, Some(batch.progress))
                            .build()
                            .execute(&mut *tx)
                            .await?;
                    if checkpoint.rows_affected() != 1 {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                    tx.commit().await?;
                    Ok(true)
                })
                .await
            }

            fn export_day<'a>(
                &'a self,
                table: &'a str,
                date_column: &'a str,
                columns: &'a [String],
                day: chrono::NaiveDate,
            ) -> BoxStream<'a, Result<TextRow>> {
                let sql = export_sql(table, date_column, columns, &<$db as Backend>::EXPORT);
                Box::pin(try_stream! {
                    let mut rows = sqlx::query(&sql)
                        .bind(day)
                        .bind(day + chrono::Days::new(1))
                        .fetch(&self.pool);
                    while let Some(row) = rows.try_next().await? {
                        yield text_row(&row)?;
                    }
                })
            }
        }

        #[async_trait]
        impl Inspect for SqlStore<$db> {
            async fn rows(&self, ids: &[i64], limit: u32) -> Result<Vec<JobRow>> {
                let mut query = Sql::<$db>::rows(ids, limit);
                Ok(each_row(&query.build().fetch_all(&self.pool).await?))
            }

            async fn rows_in(
                &self,
                statuses: &[Status],
                latest_by: &'static str,
                limit: u32,
            ) -> Result<Vec<JobRow>> {
                let mut query = Sql::<$db>::rows_in(statuses, latest_by, limit);
                Ok(each_row(&query.build().fetch_all(&self.pool).await?))
            }

            async fn counts(&self) -> Result<Vec<(Status, i64)>> {
                let rows = sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                    .fetch_all(&self.pool)
                    .await?;
                status_counts(rows)
            }

            async fn unfinished(&self) -> Result<i64> {
                // Each count reads the partial index whose condition it repeats.
                sqlx::query_scalar(&format!(
                    "SELECT CAST((SELECT COUNT(*) FROM jobs WHERE status = 'NEW') \
                     + (SELECT COUNT(*) FROM jobs WHERE status IN ('QUEUED', 'RUNNING')) AS {})",
                    <$db as Dialect>::INTEGER
                ))
                .fetch_one(&self.pool)
                .await
            }

            async fn live_with_key(&self, key: &str) -> Result<Option<i64>> {
                let mut query = Sql::<$db>::live_with_key(key);
                query.build_query_scalar().fetch_optional(&self.pool).await
            }

            async fn insert_many(&self, count: u32, nanos: i64, done: bool) -> Result<()> {
                <$db as Backend>::insert_many(&self.pool, count, nanos, done).await?;
                if !done {
                    self.inserted.tell();
                }
                Ok(())
            }

            async fn statements(&self) -> Result<Option<u64>> {
                <$db as Backend>::statements(&self.pool).await
            }

            async fn upkeep(&self) -> Result<()> {
                for statement in <$db as Backend>::UPKEEP {
                    sqlx::raw_sql(statement).execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn create_scratch(&self, url: &str, name: &str) -> Result<String> {
                <$db as Backend>::create_scratch(&self.pool, url, name).await
            }

            async fn drop_scratch(&self, name: &str) -> Result<()> {
                <$db as Backend>::drop_scratch(&self.pool, name).await
            }
        }

        #[async_trait]
        impl Schema for SqlStore<$db> {
            async fn migrate(&self) -> Result<()> {
                <$db as Backend>::migrate(&self.pool).await
            }

            async fn limit_payloads(&self, max_bytes: u64) -> Result<()> {
                self.change(|| Sql::<$db>::limit_payloads(max_bytes))
                    .await?;
                Ok(())
            }

            async fn watch(&self, wakes: Wakes, stop: CancellationToken) {
                let new_jobs = std::sync::Arc::clone(&wakes.new_jobs);
                tokio::join!(
                    self.inserted.watch(new_jobs, stop.clone()),
                    <$db as Backend>::watch(&self.pool, wakes, stop),
                );
            }
        }
    };
}

mod duties {
    use std::time::Duration;

    use async_stream::try_stream;
    use async_trait::async_trait;
    use futures_util::TryStreamExt;
    use futures_util::stream::BoxStream;
    use sqlx::{MySql, Postgres, Sqlite};
    use tokio_util::sync::CancellationToken;

    use super::{Backend, SqlStore, retry_deadlocks};
    use crate::job::{
        ClaimedJob, Control, ControlAction, ControlRequest, DeadJob, JobRow, NewJob, Outcome,
        Settlement, Status, UnknownStatus,
    };
    use crate::store::claim::claimed_rows;
    use crate::store::claiming::claiming;
    use crate::store::files::{export_sql, text_row};
    use crate::store::statements::Dialect;
    use crate::store::statements::Sql;
    use crate::store::{Advance, NewSchedule, ScheduleRow, Schedules};
    use crate::store::{
        Claim, Controls, Files, ImportBatch, Inspect, Lifecycle, Result, Schema, TextRow, Wakes,
        done_ids, each_row, status_counts,
    };
    use crate::store::{Pruning, QueueLimits, QueueRow, Queues, Resume, Resumed, Scope};
    use sqlx::{FromRow, Row};

    shared_duties!(Postgres);
    shared_duties!(MySql);
    shared_duties!(Sqlite);
}
