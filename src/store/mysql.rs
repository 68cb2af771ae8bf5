//! MySQL 8 and MariaDB 10.6+. Three oddities live here. MySQL has no `UPDATE ... RETURNING`, so a
//! claim selects `FOR UPDATE SKIP LOCKED` and updates the same rows in one transaction.
//! Parameters are positional `?`, bound in the order they appear in the text. And InnoDB settles
//! lock cycles by rolling back one side (error 1213), so every write here is retried a few times
//! on a deadlock; sessions use READ COMMITTED, which drops the gap locks that cause most of them.

use std::future::Future;
use std::time::Duration;

use super::statements::{self, Clock, Dialect};
use super::{ExportDialect, backticked, export_sql, status_counts, text_row, with_database};
use crate::job::Status;
use async_stream::try_stream;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;
use sqlx::mysql::{MySqlArguments, MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::query::Query;
use sqlx::{Executor, MySql, MySqlPool, QueryBuilder};

use super::{
    CONNECT_TIMEOUT, Claim, ImportBatch, ROW, Result, Store, TextRow, before_run, claimed,
    claimed_as, claimed_columns, done_ids, each_row, inserts, micros, probe, storable,
};
use crate::job::{
    ClaimedJob, Control, ControlAction, ControlRequest, DeadJob, JobRow, NewJob, Outcome,
    Settlement,
};

/// How long a replica waits for another's migrations before it gives up.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// `id IN (?, ?, …)` for `count` ids. A list of placeholders rather than a JSON_TABLE
/// subquery: MariaDB runs `UPDATE … WHERE id IN (subquery)` as a scan of the whole table, locking
/// every row on the way.
fn in_ids(count: usize) -> String {
    format!("id IN ({})", vec!["?"; count.max(1)].join(", "))
}

/// Binds `ids` in order, for [`in_ids`].
fn bind_ids<'q, O>(
    mut query: sqlx::query::QueryAs<'q, MySql, O, MySqlArguments>,
    ids: &'q [i64],
) -> sqlx::query::QueryAs<'q, MySql, O, MySqlArguments> {
    for id in ids {
        query = query.bind(*id);
    }
    query
}

/// The same for a statement that returns no rows.
fn bind_each<'q>(
    mut query: Query<'q, MySql, MySqlArguments>,
    ids: &'q [i64],
) -> Query<'q, MySql, MySqlArguments> {
    for id in ids {
        query = query.bind(*id);
    }
    query
}

/// How many times a write that lost a deadlock is tried in all.
const DEADLOCK_TRIES: u32 = 5;

/// `CHAR` is MySQL's text cast; backquoted names.
const EXPORT: ExportDialect = ExportDialect {
    quote: backticked,
    text: "CHAR",
    from: "?",
    until: "?",
};

pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// sqlx sets every session's time zone to UTC, which TIMESTAMP columns convert through.
    pub async fn connect(options: MySqlConnectOptions, pool_size: u32) -> Result<Self> {
        probe(&options).await?;
        let pool = MySqlPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection
                        .execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(MySqlStore { pool })
    }

    async fn try_claim(&self, claim: &Claim<'_>) -> Result<Vec<ClaimedJob>> {
        let mut tx = self.pool.begin().await?;
        // LENGTH counts bytes, from the row's header for an off-page value.
        let sql = format!(
            "SELECT {} FROM jobs WHERE status = 'NEW' AND run_at <= NOW(6) \
             ORDER BY run_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
            claimed_columns(|column| format!("CAST(LENGTH({column}) AS SIGNED)"), "?")
        );
        let max = i64::try_from(claim.max_bytes).unwrap_or(i64::MAX);
        let rows = sqlx::query(&sql)
            .bind(max)
            .bind(max)
            .bind(max)
            .bind(claim.limit)
            .fetch_all(&mut *tx)
            .await?;
        let jobs: Vec<ClaimedJob> = rows
            .iter()
            .map(|row| claimed(row, claim.max_bytes))
            .collect::<Result<_>>()?;
        if jobs.is_empty() {
            return Ok(jobs);
        }
        let ids: Vec<i64> = jobs.iter().map(|job| job.id).collect();
        let sql = format!(
            "UPDATE jobs SET {}, queued_at = NOW(6), heartbeat_at = NULL, worker = ? WHERE {}",
            claimed_as(claim.start, "NOW(6)"),
            in_ids(ids.len())
        );
        bind_each(sqlx::query(&sql).bind(claim.worker), &ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // The rows were read before the update: `attempts` is already the count before the run.
        Ok(before_run(jobs, false))
    }

    async fn try_finish(&self, worker: &str, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>> {
        // MySQL has no UPDATE ... RETURNING: the rows still ours are locked first, and those are
        // the ones the batch changes and reports.
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let ids: Vec<i64> = outcomes.iter().map(|(id, _)| *id).collect();
        let sql = format!(
            "SELECT id FROM jobs WHERE {} AND status = 'RUNNING' AND worker = ? FOR UPDATE",
            in_ids(ids.len())
        );
        let ours: Vec<(i64,)> = bind_ids(sqlx::query_as(&sql), &ids)
            .bind(worker)
            .fetch_all(&mut *tx)
            .await?;
        let mut ours: Vec<i64> = ours.into_iter().map(|(id,)| id).collect();
        ours.sort_unstable();
        let is_ours = |id: &i64| ours.binary_search(id).is_ok();
        let done: Vec<i64> = done_ids(outcomes).into_iter().filter(is_ours).collect();
        if !done.is_empty() {
            let sql = format!(
                "UPDATE jobs SET status = 'DONE', finished_at = NOW(6), last_error = NULL WHERE {}",
                in_ids(done.len())
            );
            bind_each(sqlx::query(&sql), &done)
                .execute(&mut *tx)
                .await?;
        }
        // Still conditional on RUNNING: a batch that names a job twice settles it once.
        for (id, outcome) in outcomes.iter().filter(|(id, _)| is_ours(id)) {
            let query = match outcome {
                Outcome::Done => continue,
                Outcome::Failed { reason } => sqlx::query(
                    "UPDATE jobs SET status = 'FAILED', finished_at = NOW(6), last_error = ? \
                     WHERE id = ? AND status = 'RUNNING'",
                )
                .bind(storable(reason)),
                Outcome::Retry { backoff, reason } => sqlx::query(
                    "UPDATE jobs SET status = 'NEW', run_at = NOW(6) + INTERVAL ? MICROSECOND, \
                     last_error = ?, worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
                     WHERE id = ? AND status = 'RUNNING'",
                )
                .bind(micros(*backoff))
                .bind(storable(reason)),
            };
            query.bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ours)
    }
}

impl MySqlStore {
    async fn try_import(&self, batch: &ImportBatch<'_>) -> Result<bool> {
        let ImportBatch {
            id,
            worker,
            table,
            columns,
            rows,
            progress,
        } = *batch;
        let mut tx = self.pool.begin().await?;
        // MySQL takes up to 65535 parameters per statement.
        for mut insert in inserts(table, columns, rows, backticked, 60_000) {
            insert.build().execute(&mut *tx).await?;
        }
        // The checkpoint is a heartbeat with progress, in the same transaction.
        let checkpoint = statements::heartbeat::<MySql>(id, worker, Some(progress))
            .build()
            .execute(&mut *tx)
            .await?;
        if checkpoint.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}

async fn retry_deadlocks<T, F, Fut>(attempt: F) -> Result<T>
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

/// 1213: chosen as a deadlock victim; 1205: gave up waiting for a lock. Both rolled back.
fn is_deadlock(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|error| matches!(error.number(), 1213 | 1205)),
        _ => false,
    }
}

/// The server's clock, with microseconds, and microseconds bound as a number.
impl Dialect for MySql {
    const SAME: &'static str = "<=>";
    const INTEGER: &'static str = "SIGNED";

    /// A list of placeholders rather than a JSON_TABLE subquery: MariaDB runs `UPDATE … WHERE
    /// id IN (subquery)` as a scan of the whole table, locking every row on the way.
    fn push_in_ids(query: &mut QueryBuilder<'_, Self>, ids: &[i64]) {
        query.push("IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        query.push(")");
    }

    fn push_now(query: &mut QueryBuilder<'_, Self>, _clock: Clock) {
        query.push("NOW(6)");
    }

    fn push_shifted(
        query: &mut QueryBuilder<'_, Self>,
        _clock: Clock,
        wait: Duration,
        later: bool,
    ) {
        query.push(if later {
            "(NOW(6) + INTERVAL "
        } else {
            "(NOW(6) - INTERVAL "
        });
        query.push_bind(micros(wait));
        query.push(" MICROSECOND)");
    }
}

impl MySqlStore {
    /// Runs the state change `build` makes, again if it loses a deadlock; how many rows it
    /// changed.
    async fn change<'q>(&self, build: impl Fn() -> QueryBuilder<'q, MySql>) -> Result<u64> {
        retry_deadlocks(|| async { Ok(build().build().execute(&self.pool).await?.rows_affected()) })
            .await
    }
}

#[async_trait]
impl Store for MySqlStore {
    async fn migrate(&self) -> Result<()> {
        // Replicas starting together take turns under a named lock. sqlx's own asks for
        // GET_LOCK(name, -1), which MariaDB refuses at once (NULL, warning 1411), so the lock is
        // taken here, with a finite wait, on the connection that then runs the migrations.
        let mut connection = self.pool.acquire().await?;
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT('jobsd_migrate.', DATABASE()), ?)")
                .bind(MIGRATION_WAIT.as_secs())
                .fetch_one(&mut *connection)
                .await?;
        if locked != Some(1) {
            return Err(sqlx::Error::Protocol(format!(
                "another replica held the migration lock for over {MIGRATION_WAIT:?}"
            )));
        }
        let mut migrator = sqlx::migrate!("migrations/mysql");
        migrator.set_locking(false);
        let applied = migrator.run_direct(&mut *connection).await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('jobsd_migrate.', DATABASE()))")
            .execute(&mut *connection)
            .await?;
        applied?;
        Ok(())
    }

    async fn limit_payloads(&self, max_bytes: u64) -> Result<()> {
        let mut query = statements::limit_payloads::<MySql>(max_bytes);
        query.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn insert(&self, job: &NewJob) -> Result<i64> {
        let done = sqlx::query(
            "INSERT INTO jobs (kind, object_id, sleep, payload, max_attempts, run_at) \
             VALUES (COALESCE(?, 'sleep'), ?, ?, ?, COALESCE(?, 1), COALESCE(?, NOW(6)))",
        )
        .bind(&job.kind)
        .bind(job.object_id)
        .bind(job.sleep)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .bind(job.run_at)
        .execute(&self.pool)
        .await?;
        Ok(i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX))
    }

    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<ClaimedJob>> {
        retry_deadlocks(|| self.try_claim(claim)).await
    }

    async fn mark_started(&self, id: i64, worker: &str) -> Result<bool> {
        self.change(|| statements::mark_started(id, worker))
            .await
            .map(|changed| changed == 1)
    }

    async fn heartbeat(&self, id: i64, worker: &str, progress: Option<&str>) -> Result<bool> {
        self.change(|| statements::heartbeat(id, worker, progress))
            .await
            .map(|changed| changed == 1)
    }

    async fn pause(&self, id: i64, worker: &str) -> Result<bool> {
        let from = (Status::Running, Status::Paused, Control::Pause);
        self.change(|| statements::hand_over(id, worker, from.0, from.1, from.2))
            .await
            .map(|changed| changed == 1)
    }

    async fn resume(&self, id: i64, worker: &str) -> Result<bool> {
        let from = (Status::Paused, Status::Running, Control::Resume);
        self.change(|| statements::hand_over(id, worker, from.0, from.1, from.2))
            .await
            .map(|changed| changed == 1)
    }

    async fn finish(&self, worker: &str, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>> {
        retry_deadlocks(|| self.try_finish(worker, outcomes)).await
    }

    async fn release(&self, worker: &str, id: Option<i64>) -> Result<u64> {
        self.change(|| statements::release(worker, id)).await
    }

    async fn touch(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.change(|| statements::touch::<MySql>(worker, ids))
            .await
    }

    async fn find_dead(&self, dead_after: Duration, limit: u32) -> Result<Vec<DeadJob>> {
        let mut query = statements::find_dead::<MySql>(dead_after, limit);
        Ok(each_row(&query.build().fetch_all(&self.pool).await?))
    }

    async fn settle_dead(
        &self,
        job: &DeadJob,
        dead_after: Duration,
        how: &Settlement,
    ) -> Result<bool> {
        self.change(|| statements::settle_dead(job, dead_after, how))
            .await
            .map(|changed| changed == 1)
    }

    async fn lost(&self, worker: &str, running: &[i64]) -> Result<Vec<i64>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = statements::lost::<MySql>(worker, running);
        query.build_query_scalar().fetch_all(&self.pool).await
    }

    async fn find_controls(
        &self,
        dead_after: Duration,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ControlRequest>> {
        let mut query = statements::find_controls::<MySql>(dead_after, after, limit);
        Ok(each_row(&query.build().fetch_all(&self.pool).await?))
    }

    async fn apply_control(&self, request: &ControlRequest, action: ControlAction) -> Result<bool> {
        if !action.writes() {
            return Ok(false);
        }
        self.change(|| statements::apply_control(request, action))
            .await
            .map(|changed| changed == 1)
    }

    async fn request(&self, id: i64, control: Control) -> Result<bool> {
        self.change(|| statements::request(id, control))
            .await
            .map(|changed| changed == 1)
    }

    async fn columns(&self, table: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await
    }

    async fn import_batch(&self, batch: &ImportBatch<'_>) -> Result<bool> {
        retry_deadlocks(|| self.try_import(batch)).await
    }

    fn export_day<'a>(
        &'a self,
        table: &'a str,
        date_column: &'a str,
        columns: &'a [String],
        day: chrono::NaiveDate,
    ) -> BoxStream<'a, Result<TextRow>> {
        let sql = export_sql(table, date_column, columns, &EXPORT);
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

    async fn rows(&self, ids: &[i64], limit: u32) -> Result<Vec<JobRow>> {
        let only = if ids.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", in_ids(ids.len()))
        };
        let sql = format!(
            "SELECT * FROM (SELECT {ROW} FROM jobs {only} ORDER BY id DESC LIMIT ?) newest ORDER BY id"
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        Ok(each_row(&rows))
    }

    async fn counts(&self) -> Result<Vec<(Status, i64)>> {
        let rows = sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        status_counts(rows)
    }

    async fn insert_many(&self, count: u32, nanos: i64, done: bool) -> Result<()> {
        // MySQL stops recursive CTEs at 1000 rows unless told otherwise: go by chunks.
        let mut left = count;
        while left > 0 {
            let chunk = left.min(900);
            sqlx::query(
                "INSERT INTO jobs (sleep, status, finished_at) \
                 SELECT ?, IF(?, 'DONE', 'NEW'), IF(?, NOW(6), NULL) FROM \
                 (WITH RECURSIVE n (x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) SELECT x FROM n) AS seq",
            )
            .bind(nanos)
            .bind(done)
            .bind(done)
            .bind(chunk)
            .execute(&self.pool)
            .await?;
            left -= chunk;
        }
        Ok(())
    }

    async fn statements(&self) -> Result<Option<u64>> {
        // Server-wide: meaningful on a database server that runs nothing else meanwhile.
        let (_, questions): (String, String) =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Questions'")
                .fetch_one(&self.pool)
                .await?;
        Ok(questions.parse().ok())
    }

    async fn create_scratch(&self, url: &str, name: &str) -> Result<String> {
        sqlx::query(&format!("CREATE DATABASE {}", backticked(name)))
            .execute(&self.pool)
            .await?;
        with_database(url, name)
    }

    async fn drop_scratch(&self, name: &str) -> Result<()> {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {}", backticked(name)))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
