//! MySQL 8 and MariaDB 10.6+: like PostgreSQL, but MySQL has no `UPDATE ... RETURNING`, so a
//! claim selects `FOR UPDATE SKIP LOCKED` and updates the same rows in one transaction, and
//! parameters are positional `?`, bound in the order they appear in the text.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySql, MySqlPool, QueryBuilder};

use super::{CLAIMED, CONNECT_TIMEOUT, DEAD, ROW, Result, Store, micros, probe};
use crate::job::{ClaimedJob, DeadJob, JobRow, NewJob, Outcome, Settlement};

/// Binds `dead_after` in microseconds: the row is still as silent as when it was found dead.
const STILL_DEAD: &str =
    "COALESCE(heartbeat_at, started_at, queued_at) < NOW(6) - INTERVAL ? MICROSECOND";

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
            .connect_with(options)
            .await?;
        Ok(MySqlStore { pool })
    }
}

/// `WHERE id IN (?, ?, ...)` for a non-empty list.
fn push_ids(builder: &mut QueryBuilder<'_, MySql>, ids: &[i64]) {
    builder.push("id IN (");
    let mut list = builder.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    builder.push(")");
}

#[async_trait]
impl Store for MySqlStore {
    async fn migrate(&self) -> Result<()> {
        // sqlx holds GET_LOCK for the whole run, so concurrent replicas take turns.
        sqlx::migrate!("migrations/mysql").run(&self.pool).await?;
        Ok(())
    }

    async fn insert(&self, job: &NewJob) -> Result<i64> {
        let done = sqlx::query(
            "INSERT INTO jobs (kind, object_id, sleep, payload, max_attempts) \
             VALUES (COALESCE(?, 'sleep'), ?, ?, ?, COALESCE(?, 1))",
        )
        .bind(&job.kind)
        .bind(job.object_id)
        .bind(job.sleep)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .execute(&self.pool)
        .await?;
        Ok(i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX))
    }

    async fn claim(&self, worker: &str, limit: u32) -> Result<Vec<ClaimedJob>> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "SELECT {CLAIMED} FROM jobs WHERE status = 'NEW' AND run_at <= NOW(6) \
             ORDER BY run_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
        );
        let jobs: Vec<ClaimedJob> = sqlx::query_as(&sql).bind(limit).fetch_all(&mut *tx).await?;
        if jobs.is_empty() {
            return Ok(jobs);
        }
        let ids: Vec<i64> = jobs.iter().map(|job| job.id).collect();
        let mut update = QueryBuilder::new(
            "UPDATE jobs SET status = 'QUEUED', queued_at = NOW(6), heartbeat_at = NULL, worker = ",
        );
        update.push_bind(worker).push(" WHERE ");
        push_ids(&mut update, &ids);
        update.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    async fn mark_started(&self, id: i64, worker: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'RUNNING', started_at = NOW(6), heartbeat_at = NULL, \
             attempts = attempts + 1 WHERE id = ? AND status = 'QUEUED' AND worker = ?",
        )
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn heartbeat(&self, id: i64, worker: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET heartbeat_at = NOW(6) WHERE id = ? AND status = 'RUNNING' AND worker = ?",
        )
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish(&self, id: i64, worker: &str, outcome: &Outcome) -> Result<bool> {
        let query = match outcome {
            Outcome::Done => sqlx::query(
                "UPDATE jobs SET status = 'DONE', finished_at = NOW(6), last_error = NULL \
                 WHERE id = ? AND status = 'RUNNING' AND worker = ?",
            ),
            Outcome::Failed { reason } => sqlx::query(
                "UPDATE jobs SET status = 'FAILED', finished_at = NOW(6), last_error = ? \
                 WHERE id = ? AND status = 'RUNNING' AND worker = ?",
            )
            .bind(reason),
            Outcome::Retry { backoff, reason } => sqlx::query(
                "UPDATE jobs SET status = 'NEW', run_at = NOW(6) + INTERVAL ? MICROSECOND, last_error = ?, \
                 worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
                 WHERE id = ? AND status = 'RUNNING' AND worker = ?",
            )
            .bind(micros(*backoff))
            .bind(reason),
        };
        let done = query.bind(id).bind(worker).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(&self, worker: &str, id: Option<i64>) -> Result<u64> {
        // The CASE reads `status` before this statement's SET changes it: MySQL assigns left to
        // right, so `attempts` comes before `status` here.
        let done = sqlx::query(
            "UPDATE jobs SET attempts = CASE WHEN status = 'RUNNING' THEN attempts - 1 ELSE attempts END, \
             status = 'NEW', worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
             WHERE status IN ('QUEUED', 'RUNNING') AND worker = ? AND (? IS NULL OR id = ?)",
        )
        .bind(worker)
        .bind(id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn touch_queued(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut update = QueryBuilder::new(
            "UPDATE jobs SET heartbeat_at = NOW(6) WHERE status = 'QUEUED' AND worker = ",
        );
        update.push_bind(worker).push(" AND ");
        push_ids(&mut update, ids);
        let done = update.build().execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn find_dead(&self, dead_after: Duration, limit: u32) -> Result<Vec<DeadJob>> {
        let sql = format!(
            "SELECT {DEAD} FROM jobs WHERE status IN ('QUEUED', 'RUNNING') AND {STILL_DEAD} \
             ORDER BY id LIMIT ?"
        );
        sqlx::query_as(&sql)
            .bind(micros(dead_after))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    async fn settle_dead(
        &self,
        job: &DeadJob,
        dead_after: Duration,
        how: &Settlement,
    ) -> Result<bool> {
        let (sql, query);
        match how {
            Settlement::Requeue => {
                sql = format!(
                    "UPDATE jobs SET status = 'NEW', worker = NULL, queued_at = NULL, heartbeat_at = NULL \
                     WHERE id = ? AND status = 'QUEUED' AND worker = ? AND {STILL_DEAD}"
                );
                query = sqlx::query(&sql);
            }
            Settlement::Retry { backoff, reason } => {
                sql = format!(
                    "UPDATE jobs SET status = 'NEW', run_at = NOW(6) + INTERVAL ? MICROSECOND, \
                     last_error = ?, worker = NULL, queued_at = NULL, started_at = NULL, heartbeat_at = NULL \
                     WHERE id = ? AND status = 'RUNNING' AND worker = ? AND {STILL_DEAD}"
                );
                query = sqlx::query(&sql).bind(micros(*backoff)).bind(reason);
            }
            Settlement::Cancel { reason } => {
                sql = format!(
                    "UPDATE jobs SET status = 'CANCELLED', cancelled_at = NOW(6), finished_at = NOW(6), \
                     last_error = ? WHERE id = ? AND status = 'RUNNING' AND worker = ? AND {STILL_DEAD}"
                );
                query = sqlx::query(&sql).bind(reason);
            }
        }
        let done = query
            .bind(job.id)
            .bind(&job.worker)
            .bind(micros(dead_after))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn lost(&self, worker: &str, running: &[i64]) -> Result<Vec<i64>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let mut select = QueryBuilder::new("SELECT id FROM jobs WHERE ");
        push_ids(&mut select, running);
        select
            .push(" AND (status <> 'RUNNING' OR NOT (worker <=> ")
            .push_bind(worker)
            .push("))");
        select.build_query_scalar().fetch_all(&self.pool).await
    }

    async fn rows(&self, ids: &[i64], limit: u32) -> Result<Vec<JobRow>> {
        let mut select = QueryBuilder::new(format!("SELECT * FROM (SELECT {ROW} FROM jobs "));
        if !ids.is_empty() {
            select.push("WHERE ");
            push_ids(&mut select, ids);
        }
        select
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(limit)
            .push(") newest ORDER BY id");
        select.build_query_as().fetch_all(&self.pool).await
    }
}
