//! PostgreSQL: claims with `FOR UPDATE SKIP LOCKED` inside one `UPDATE ... RETURNING`, reads
//! time from the database clock (replicas' clocks may disagree), and learns of new jobs from the
//! NOTIFY that the jobs table's statement-level trigger sends.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{CLAIMED, CONNECT_TIMEOUT, DEAD, ROW, Result, Store, micros, probe};
use crate::job::{ClaimedJob, DeadJob, JobRow, NewJob, Outcome, Settlement};

/// The channel the migration's trigger notifies on every INSERT statement.
const NEW_JOBS_CHANNEL: &str = "jobsd_new_jobs";

/// `$3` is `dead_after` in microseconds: the row is still as silent as when it was found dead.
const STILL_DEAD: &str =
    "COALESCE(heartbeat_at, started_at, queued_at) < now() - $3 * interval '1 microsecond'";

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn connect(options: PgConnectOptions, pool_size: u32) -> Result<Self> {
        let options = options.application_name("jobsd");
        probe(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(PostgresStore { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<()> {
        // sqlx holds an advisory lock for the whole run, so concurrent replicas take turns.
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert(&self, job: &NewJob) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO jobs (kind, object_id, sleep, payload, max_attempts) \
             VALUES (COALESCE($1, 'sleep'), $2, $3, $4, COALESCE($5, 1)) RETURNING id",
        )
        .bind(&job.kind)
        .bind(job.object_id)
        .bind(job.sleep)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .fetch_one(&self.pool)
        .await
    }

    async fn claim(&self, worker: &str, limit: u32) -> Result<Vec<ClaimedJob>> {
        let sql = format!(
            "UPDATE jobs SET status = 'QUEUED', queued_at = now(), worker = $1, heartbeat_at = NULL \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'NEW' AND run_at <= now() \
                          ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING {CLAIMED}"
        );
        let mut jobs: Vec<ClaimedJob> = sqlx::query_as(&sql)
            .bind(worker)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        // RETURNING keeps no order; start the oldest first.
        jobs.sort_by_key(|job| job.id);
        Ok(jobs)
    }

    async fn mark_started(&self, id: i64, worker: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'RUNNING', started_at = now(), heartbeat_at = NULL, \
             attempts = attempts + 1 WHERE id = $1 AND status = 'QUEUED' AND worker = $2",
        )
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn heartbeat(&self, id: i64, worker: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET heartbeat_at = now() WHERE id = $1 AND status = 'RUNNING' AND worker = $2",
        )
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish(&self, id: i64, worker: &str, outcome: &Outcome) -> Result<bool> {
        let sql = match outcome {
            Outcome::Done => {
                "UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = NULL \
                 WHERE id = $1 AND status = 'RUNNING' AND worker = $2"
            }
            Outcome::Failed { .. } => {
                "UPDATE jobs SET status = 'FAILED', finished_at = now(), last_error = $3 \
                 WHERE id = $1 AND status = 'RUNNING' AND worker = $2"
            }
            Outcome::Retry { .. } => {
                "UPDATE jobs SET status = 'NEW', run_at = now() + $3 * interval '1 microsecond', \
                 last_error = $4, worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
                 WHERE id = $1 AND status = 'RUNNING' AND worker = $2"
            }
        };
        let query = sqlx::query(sql).bind(id).bind(worker);
        let query = match outcome {
            Outcome::Done => query,
            Outcome::Failed { reason } => query.bind(reason),
            Outcome::Retry { backoff, reason } => query.bind(micros(*backoff)).bind(reason),
        };
        let done = query.execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(&self, worker: &str, id: Option<i64>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'NEW', worker = NULL, queued_at = NULL, started_at = NULL, \
             heartbeat_at = NULL, attempts = CASE WHEN status = 'RUNNING' THEN attempts - 1 ELSE attempts END \
             WHERE status IN ('QUEUED', 'RUNNING') AND worker = $1 AND ($2::BIGINT IS NULL OR id = $2)",
        )
        .bind(worker)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn touch_queued(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET heartbeat_at = now() WHERE id = ANY($2) AND status = 'QUEUED' AND worker = $1",
        )
        .bind(worker)
        .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn find_dead(&self, dead_after: Duration, limit: u32) -> Result<Vec<DeadJob>> {
        let sql = format!(
            "SELECT {DEAD} FROM jobs WHERE status IN ('QUEUED', 'RUNNING') \
             AND COALESCE(heartbeat_at, started_at, queued_at) < now() - $1 * interval '1 microsecond' \
             ORDER BY id LIMIT $2"
        );
        sqlx::query_as(&sql)
            .bind(micros(dead_after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
    }

    async fn settle_dead(
        &self,
        job: &DeadJob,
        dead_after: Duration,
        how: &Settlement,
    ) -> Result<bool> {
        let sql = match how {
            Settlement::Requeue => format!(
                "UPDATE jobs SET status = 'NEW', worker = NULL, queued_at = NULL, heartbeat_at = NULL \
                 WHERE id = $1 AND status = 'QUEUED' AND worker = $2 AND {STILL_DEAD}"
            ),
            Settlement::Retry { .. } => format!(
                "UPDATE jobs SET status = 'NEW', run_at = now() + $4 * interval '1 microsecond', \
                 last_error = $5, worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
                 WHERE id = $1 AND status = 'RUNNING' AND worker = $2 AND {STILL_DEAD}"
            ),
            Settlement::Cancel { .. } => format!(
                "UPDATE jobs SET status = 'CANCELLED', cancelled_at = now(), finished_at = now(), \
                 last_error = $4 WHERE id = $1 AND status = 'RUNNING' AND worker = $2 AND {STILL_DEAD}"
            ),
        };
        let mut query = sqlx::query(&sql)
            .bind(job.id)
            .bind(&job.worker)
            .bind(micros(dead_after));
        query = match how {
            Settlement::Requeue => query,
            Settlement::Retry { backoff, reason } => query.bind(micros(*backoff)).bind(reason),
            Settlement::Cancel { reason } => query.bind(reason),
        };
        let done = query.execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn lost(&self, worker: &str, running: &[i64]) -> Result<Vec<i64>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(
            "SELECT id FROM jobs WHERE id = ANY($1) AND (status <> 'RUNNING' OR worker IS DISTINCT FROM $2)",
        )
        .bind(running)
        .bind(worker)
        .fetch_all(&self.pool)
        .await
    }

    async fn rows(&self, ids: &[i64], limit: u32) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {ROW} FROM (SELECT * FROM jobs WHERE cardinality($1::BIGINT[]) = 0 OR id = ANY($1) \
             ORDER BY id DESC LIMIT $2) newest ORDER BY id"
        );
        sqlx::query_as(&sql)
            .bind(ids)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
    }

    async fn watch_inserts(&self, wake: Arc<Notify>, stop: CancellationToken) {
        let mut retry = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match listen(&self.pool, &wake, &stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "LISTEN for new jobs failed; polling meanwhile");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Relays notifications to `wake` until `stop`, or until the connection fails for good.
async fn listen(pool: &PgPool, wake: &Notify, stop: &CancellationToken) -> Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NEW_JOBS_CHANNEL).await?;
    // Anything inserted while nobody listened is found by one claim now.
    wake.notify_one();
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            received = listener.try_recv() => match received? {
                Some(_) => wake.notify_one(),
                None => {
                    // The listener reconnects on the next call; notifications sent in between are
                    // lost, so claim once as if one had arrived.
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    wake.notify_one();
                }
            },
        }
    }
}
