//! The `queues` table: what a replica reads of it, and the statements that lock, count and
//! reserve for a limited queue. See ARCHITECTURE.md, "Queues and their limits".

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Encode, QueryBuilder, Type};

use super::statements::{Clock, Dialect, Sql};
use super::{LAST_SIGN, Result};

/// A resume of a paused job that a replica holds.
#[derive(Debug, Clone, Copy)]
pub struct Resume<'a> {
    pub id: i64,
    pub worker: &'a str,
    /// The job's queue, whose pause and concurrency the resume respects.
    pub queue: &'a str,
    /// How fresh a sign of life must be for a job to count in the queue's concurrency.
    pub dead_after: Duration,
}

/// What became of a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// RUNNING again.
    Yes,
    /// The job is no longer this worker's (terminated, or taken over).
    Lost,
    /// Its queue is paused or at its concurrency: still PAUSED; try again later.
    Wait,
}

/// A row of `queues`, as the replicas read it to know which queues to claim from one by one.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct QueueRow {
    pub name: String,
    /// 1 when `paused_at` is set.
    pub paused: i64,
    pub concurrency: Option<i64>,
    pub rate_per_second: Option<f64>,
}

impl QueueRow {
    /// Whether its jobs are claimed one queue at a time, under its row's lock.
    pub fn limited(&self) -> bool {
        self.paused == 0 && (self.concurrency.is_some() || self.rate_per_second.is_some())
    }
}

/// The longest wait between two starts a queue's rate can ask for.
const DAY_SECONDS: f64 = 86_400.0;

/// A limited queue's row, locked, with the database's time.
#[derive(Debug, Clone)]
pub(super) struct QueueLimits {
    pub paused: bool,
    pub concurrency: Option<i64>,
    pub rate_per_second: Option<f64>,
    pub next_start_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

impl QueueLimits {
    /// Reads the row of [`Sql::lock_queue`]. A value that cannot be read (SQLite
    /// text a user wrote into `next_start_at`) is taken as unknown, which never lets more run.
    pub(super) fn read<R>(row: &R) -> Result<Self>
    where
        R: sqlx::Row,
        for<'c> &'c str: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(QueueLimits {
            paused: row
                .try_get::<i64, _>("paused")
                .map_or(true, |paused| paused != 0),
            concurrency: row.try_get("concurrency").unwrap_or(Some(0)),
            rate_per_second: row
                .try_get("rate_per_second")
                .unwrap_or(Some(f64::MIN_POSITIVE)),
            next_start_at: row.try_get("next_start_at").ok().flatten(),
            now: row.try_get("now")?,
        })
    }

    /// How many starts the queue's rate lets a claim reserve now (at most `wanted`), the first
    /// of them, and the seconds between them: one `1 / rate` apart, from the next free start
    /// (never in the past), none further than `ahead` from now. Replicas reserve in turn, under
    /// the row's lock, so starts across the cluster are never closer than the rate allows.
    pub(super) fn starts(&self, wanted: u32, ahead: Duration) -> (u32, DateTime<Utc>, f64) {
        let Some(rate) = self.rate_per_second else {
            return (wanted, self.now, 0.0);
        };
        // A rate below one start a day is taken as one a day: the reserved times stay times.
        let gap = (1.0 / rate).min(DAY_SECONDS);
        let first = self
            .next_start_at
            .map_or(self.now, |next| next.max(self.now));
        let room = (self.now - first).as_seconds_f64() + ahead.as_secs_f64();
        let fit = if room < 0.0 {
            0.0
        } else {
            (room / gap).floor() + 1.0
        };
        // The cast saturates: a fit beyond u32 is as good as `wanted`.
        (wanted.min(fit as u32), first, gap)
    }
}

impl<'a, DB> Sql<DB>
where
    DB: Dialect,
    i64: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
    Option<String>: Encode<'a, DB> + Type<DB>,
{
    /// A limited queue's row, locked until the transaction ends, with the statement's time:
    /// the columns of [`QueueLimits`].
    pub fn lock_queue(name: &str) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "SELECT CAST(CASE WHEN paused_at IS NULL THEN 0 ELSE 1 END AS {int}) AS paused, \
             CAST(concurrency AS {int}) AS concurrency, rate_per_second, next_start_at, ",
            int = DB::INTEGER
        ));
        DB::push_now(&mut query, Clock::now());
        query.push(" AS now FROM queues WHERE name = ");
        query.push_bind(name.to_owned());
        query.push(DB::LOCKED);
        query
    }

    /// How many of queue `name`'s jobs hold a place in its concurrency: QUEUED or RUNNING, with
    /// a sign of life younger than `dead_after` (a dead replica's jobs stop counting).
    pub fn busy(name: &str, dead_after: Duration) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('QUEUED', 'RUNNING') AND queue = ",
        );
        query.push_bind(name.to_owned());
        query.push(format_args!(" AND {LAST_SIGN} >= "));
        DB::push_shifted(&mut query, Clock::now(), dead_after, false);
        query
    }

    /// Records the next start a queue's rate allows.
    pub fn reserve_starts(name: &str, next: DateTime<Utc>) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("UPDATE queues SET next_start_at = ");
        DB::push_time(&mut query, next);
        query.push(" WHERE name = ");
        query.push_bind(name.to_owned());
        query
    }

    /// The `queues` rows, as [`QueueRow`]s.
    pub fn queues() -> QueryBuilder<'a, DB> {
        QueryBuilder::new(format!(
            "SELECT name, CAST(CASE WHEN paused_at IS NULL THEN 0 ELSE 1 END AS {int}) AS paused, \
             CAST(concurrency AS {int}) AS concurrency, rate_per_second FROM queues ORDER BY name",
            int = DB::INTEGER
        ))
    }

    /// The row of queue `name`, made if there is none (`jobsd queue pause|resume`).
    pub fn add_queue(name: &str) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("INSERT INTO queues (name) VALUES (");
        query.push_bind(name.to_owned());
        query.push(")");
        query.push(DB::skip_duplicate("name"));
        query
    }

    /// Pauses the row `name` of `table` (`queues` or `schedules`), as `UPDATE … SET paused_at
    /// = now()` does, or lets it run.
    pub fn set_paused(table: &'static str, name: &str, paused: bool) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!("UPDATE {table} SET paused_at = "));
        if paused {
            // A pause already in place keeps its time.
            query.push("COALESCE(paused_at, ");
            DB::push_now(&mut query, Clock::now());
            query.push(")");
        } else {
            query.push("NULL");
        }
        query.push(" WHERE name = ");
        query.push_bind(name.to_owned());
        query
    }
}

impl<'a, DB> Sql<DB>
where
    DB: Dialect,
    String: Encode<'a, DB> + Type<DB>,
    Option<i64>: Encode<'a, DB> + Type<DB>,
    Option<f64>: Encode<'a, DB> + Type<DB>,
{
    /// Sets queue `name`'s limits, as `UPDATE queues SET concurrency = …, rate_per_second = …`
    /// does; `None` lifts one.
    pub fn set_limits(
        name: &str,
        concurrency: Option<i64>,
        rate_per_second: Option<f64>,
    ) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("UPDATE queues SET concurrency = ");
        query.push_bind(concurrency);
        query.push(", rate_per_second = ");
        query.push_bind(rate_per_second);
        query.push(" WHERE name = ");
        query.push_bind(name.to_owned());
        query
    }
}
