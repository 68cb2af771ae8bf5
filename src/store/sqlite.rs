//! SQLite, the embedded default: one file, one writer at a time. Every change is a single
//! statement, which SQLite runs under its write lock from the first row it reads, so a claim's
//! `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING` needs no SKIP LOCKED. Timestamps are UTC
//! text (see the migration) written from the process clock with microseconds, as SQLite's own
//! clock has only milliseconds; a SQLite file has one host, so there is only one clock anyway.

use std::time::Duration;

use super::statements::{self, Clock, Dialect};
use super::{ExportDialect, double_quoted, export_sql, status_counts, text_row};
use crate::job::Status;
use async_stream::try_stream;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::{
    CONNECT_TIMEOUT, Claim, ImportBatch, ROW, Result, Store, TextRow, before_run, claimed,
    claimed_as, claimed_columns, done_ids, each_row, inserts, json_ids, probe, storable,
};
use crate::job::{
    ClaimedJob, Control, ControlAction, ControlRequest, DeadJob, JobRow, NewJob, Outcome,
    Settlement,
};

/// The most connections a SQLite store opens.
const MAX_CONNECTIONS: u32 = 4;

/// Attempts at opening or migrating a file that other processes are opening too.
const RACE_TRIES: u32 = 5;

/// Text casts and numbered bounds.
const EXPORT: ExportDialect = ExportDialect {
    quote: double_quoted,
    text: "TEXT",
    from: "?1",
    until: "?2",
};

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(options: SqliteConnectOptions, pool_size: u32) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            // WAL lets `jobsd status` and a user's sqlite3 read while the daemon writes.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        // Processes opening a new file together race to switch it to WAL, and SQLite answers
        // the loser "database is locked" at once, busy timeout or not: it tries again.
        taking_turns(is_busy, || probe(&options)).await?;
        // One writer at a time: more connections would only wait for the lock, and each one
        // costs a thread and a page cache.
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size.min(MAX_CONNECTIONS))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }
}

/// Runs `attempt` until it succeeds, fails in a way `racing` does not accept, or has been tried
/// [`RACE_TRIES`] times, waiting a little longer each time: how processes that open one new
/// file together take turns.
async fn taking_turns<T, E, Fut>(
    racing: impl Fn(&E) -> bool,
    attempt: impl Fn() -> Fut,
) -> std::result::Result<T, E>
where
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
    E: std::fmt::Display,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if racing(&error) && tries < RACE_TRIES => {
                tracing::debug!(%error, tries, "raced another process on the file; again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await;
                tries += 1;
            }
            done => return done,
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED, in any of their extended forms.
fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// The column format: sorts as text in time order, and matches what `strftime` writes.
fn text(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

fn now() -> String {
    text(Utc::now())
}

fn after(wait: Duration) -> String {
    text(Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
}

/// The process clock as the column's text (a file has one host, so one clock), fixed once
/// per statement; time arithmetic is done before binding.
impl Dialect for Sqlite {
    const SAME: &'static str = "IS";
    const INTEGER: &'static str = "INTEGER";

    /// One parameter, a JSON array, whatever the list's length.
    fn push_in_ids(query: &mut QueryBuilder<'_, Self>, ids: &[i64]) {
        query.push("IN (SELECT value FROM json_each(");
        query.push_bind(json_ids(ids));
        query.push("))");
    }

    fn push_now(query: &mut QueryBuilder<'_, Self>, clock: Clock) {
        query.push_bind(text(clock.at));
    }

    fn push_shifted(query: &mut QueryBuilder<'_, Self>, clock: Clock, wait: Duration, later: bool) {
        let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        let at = if later {
            clock.at.checked_add_signed(wait)
        } else {
            clock.at.checked_sub_signed(wait)
        };
        query.push_bind(text(at.unwrap_or(clock.at)));
    }
}

impl SqliteStore {
    /// Runs a state change; how many rows it changed.
    async fn change(&self, mut query: QueryBuilder<'_, Sqlite>) -> Result<u64> {
        Ok(query.build().execute(&self.pool).await?.rows_affected())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        // sqlx takes no lock on SQLite. Each migration runs in a transaction, so when processes
        // starting together race, the loser's attempt fails whole ("table jobs already
        // exists") and rolls back; the next attempt finds it applied.
        let migrator = sqlx::migrate!("migrations/sqlite");
        taking_turns(|_| true, || migrator.run(&self.pool)).await?;
        Ok(())
    }

    async fn limit_payloads(&self, max_bytes: u64) -> Result<()> {
        let mut query = statements::limit_payloads::<Sqlite>(max_bytes);
        query.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn insert(&self, job: &NewJob) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO jobs (kind, object_id, sleep, payload, max_attempts, run_at) \
             VALUES (COALESCE(?1, 'sleep'), ?2, ?3, ?4, COALESCE(?5, 1), COALESCE(?6, ?7)) RETURNING id",
        )
        .bind(&job.kind)
        .bind(job.object_id)
        .bind(job.sleep)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .bind(job.run_at.map(text))
        .bind(now())
        .fetch_one(&self.pool)
        .await
    }

    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<ClaimedJob>> {
        // octet_length reads a value's size from the record header, not the value itself.
        let sql = format!(
            "UPDATE jobs SET {}, queued_at = ?1, worker = ?2, heartbeat_at = NULL \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'NEW' AND run_at <= ?1 \
                          ORDER BY run_at, id LIMIT ?3) \
             RETURNING {}",
            claimed_as(claim.start, "?1"),
            claimed_columns(|column| format!("octet_length({column})"), "?4")
        );
        let rows = sqlx::query(&sql)
            .bind(now())
            .bind(claim.worker)
            .bind(claim.limit)
            .bind(i64::try_from(claim.max_bytes).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(before_run(
            rows.iter()
                .map(|row| claimed(row, claim.max_bytes))
                .collect::<Result<_>>()?,
            claim.start,
        ))
    }

    async fn mark_started(&self, id: i64, worker: &str) -> Result<bool> {
        self.change(statements::mark_started(id, worker))
            .await
            .map(|changed| changed == 1)
    }

    async fn heartbeat(&self, id: i64, worker: &str, progress: Option<&str>) -> Result<bool> {
        self.change(statements::heartbeat(id, worker, progress))
            .await
            .map(|changed| changed == 1)
    }

    async fn pause(&self, id: i64, worker: &str) -> Result<bool> {
        let from = (Status::Running, Status::Paused, Control::Pause);
        self.change(statements::hand_over(id, worker, from.0, from.1, from.2))
            .await
            .map(|changed| changed == 1)
    }

    async fn resume(&self, id: i64, worker: &str) -> Result<bool> {
        let from = (Status::Paused, Status::Running, Control::Resume);
        self.change(statements::hand_over(id, worker, from.0, from.1, from.2))
            .await
            .map(|changed| changed == 1)
    }

    async fn finish(&self, worker: &str, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>> {
        // One transaction, so one commit for the batch: the DONE jobs in one statement, the
        // rare failures one each.
        let at = now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = done_ids(outcomes);
        let mut won: Vec<i64> = if done.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "UPDATE jobs SET status = 'DONE', finished_at = ?3, last_error = NULL \
                 WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'RUNNING' AND worker = ?2 \
                 RETURNING id",
            )
            .bind(json_ids(&done))
            .bind(worker)
            .bind(&at)
            .fetch_all(&mut *tx)
            .await?
        };
        for (id, outcome) in outcomes {
            let query = match outcome {
                Outcome::Done => continue,
                Outcome::Failed { reason } => sqlx::query(
                    "UPDATE jobs SET status = 'FAILED', finished_at = ?3, last_error = ?4 \
                     WHERE id = ?1 AND status = 'RUNNING' AND worker = ?2",
                )
                .bind(id)
                .bind(worker)
                .bind(&at)
                .bind(storable(reason)),
                Outcome::Retry { backoff, reason } => sqlx::query(
                    "UPDATE jobs SET status = 'NEW', run_at = ?3, last_error = ?4, worker = NULL, \
                     queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
                     WHERE id = ?1 AND status = 'RUNNING' AND worker = ?2",
                )
                .bind(id)
                .bind(worker)
                .bind(after(*backoff))
                .bind(storable(reason)),
            };
            if query.execute(&mut *tx).await?.rows_affected() == 1 {
                won.push(*id);
            }
        }
        tx.commit().await?;
        Ok(won)
    }

    async fn release(&self, worker: &str, id: Option<i64>) -> Result<u64> {
        self.change(statements::release(worker, id)).await
    }

    async fn touch(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.change(statements::touch::<Sqlite>(worker, ids)).await
    }

    async fn find_dead(&self, dead_after: Duration, limit: u32) -> Result<Vec<DeadJob>> {
        let mut query = statements::find_dead::<Sqlite>(dead_after, limit);
        Ok(each_row(&query.build().fetch_all(&self.pool).await?))
    }

    async fn settle_dead(
        &self,
        job: &DeadJob,
        dead_after: Duration,
        how: &Settlement,
    ) -> Result<bool> {
        self.change(statements::settle_dead(job, dead_after, how))
            .await
            .map(|changed| changed == 1)
    }

    async fn lost(&self, worker: &str, running: &[i64]) -> Result<Vec<i64>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = statements::lost::<Sqlite>(worker, running);
        query.build_query_scalar().fetch_all(&self.pool).await
    }

    async fn find_controls(
        &self,
        dead_after: Duration,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ControlRequest>> {
        let mut query = statements::find_controls::<Sqlite>(dead_after, after, limit);
        Ok(each_row(&query.build().fetch_all(&self.pool).await?))
    }

    async fn apply_control(&self, request: &ControlRequest, action: ControlAction) -> Result<bool> {
        if !action.writes() {
            return Ok(false);
        }
        self.change(statements::apply_control(request, action))
            .await
            .map(|changed| changed == 1)
    }

    async fn request(&self, id: i64, control: Control) -> Result<bool> {
        self.change(statements::request(id, control))
            .await
            .map(|changed| changed == 1)
    }

    async fn columns(&self, table: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .bind(table)
            .fetch_all(&self.pool)
            .await
    }

    async fn import_batch(&self, batch: &ImportBatch<'_>) -> Result<bool> {
        let ImportBatch {
            id,
            worker,
            table,
            columns,
            rows,
            progress,
        } = *batch;
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads first may
        // find another writer in the way when it upgrades, and fail instead of waiting.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // SQLite takes up to 32766 parameters per statement.
        for mut insert in inserts(table, columns, rows, double_quoted, 32_000) {
            insert.build().execute(&mut *tx).await?;
        }
        // The checkpoint is a heartbeat with progress, in the same transaction.
        let checkpoint = statements::heartbeat::<Sqlite>(id, worker, Some(progress))
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
                .bind(day.to_string())
                .bind((day + chrono::Days::new(1)).to_string())
                .fetch(&self.pool);
            while let Some(row) = rows.try_next().await? {
                yield text_row(&row)?;
            }
        })
    }

    async fn rows(&self, ids: &[i64], limit: u32) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT * FROM (SELECT {ROW} FROM jobs \
             WHERE ?1 = '[]' OR id IN (SELECT value FROM json_each(?1)) \
             ORDER BY id DESC LIMIT ?2) ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(json_ids(ids))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(each_row(&rows))
    }

    async fn counts(&self) -> Result<Vec<(Status, i64)>> {
        let rows = sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        status_counts(rows)
    }

    async fn insert_many(&self, count: u32, nanos: i64, done: bool) -> Result<()> {
        sqlx::query(
            "WITH RECURSIVE n (x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?1) \
             INSERT INTO jobs (sleep, status, finished_at) \
             SELECT ?2, CASE WHEN ?3 THEN 'DONE' ELSE 'NEW' END, CASE WHEN ?3 THEN ?4 END FROM n",
        )
        .bind(count)
        .bind(nanos)
        .bind(done)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn statements(&self) -> Result<Option<u64>> {
        // An embedded file keeps no server-side count.
        Ok(None)
    }

    /// A file in the system's temporary folder.
    async fn create_scratch(&self, _url: &str, name: &str) -> Result<String> {
        Ok(format!("sqlite://{}", scratch_file(name)?.display()))
    }

    async fn drop_scratch(&self, name: &str) -> Result<()> {
        let file = scratch_file(name)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut path = file.clone().into_os_string();
            path.push(suffix);
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The scratch file for `name`. Here the name becomes a file name and part of a URL, where no
/// quoting helps: only a plain identifier is taken, so it can neither leave the folder nor add
/// URL options.
fn scratch_file(name: &str) -> Result<std::path::PathBuf> {
    if !super::is_identifier(name) {
        return Err(sqlx::Error::Configuration(
            format!("scratch database name {name:?} must be letters, digits and _").into(),
        ));
    }
    Ok(std::env::temp_dir().join(format!("{name}.db")))
}
