//! The `schedules` table: rows as replicas read them, and the statements of one step of a
//! schedule's cursor. The step's UPDATE names the cursor it expects, NULL-safe, so of the
//! replicas that planned the same step only one moves the row; the job of the step's slot is
//! inserted in the same transaction, quietly skipped should the slot already have one. See
//! ARCHITECTURE.md, "Recurring jobs".

use chrono::{DateTime, Utc};
use sqlx::{Encode, QueryBuilder, Type};

use super::statements::{Clock, Dialect, Sql};
use super::storable;
use crate::schedule::Step;

/// A row of `schedules`, with the database's time when it was read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: String,
    pub object_id: Option<i64>,
    pub sleep: Option<i64>,
    pub payload: Option<String>,
    pub queue: String,
    pub priority: i16,
    pub max_attempts: i32,
    pub catch_up: String,
    /// 1 when `paused_at` is set.
    pub paused: i64,
    pub created_at: DateTime<Utc>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub now: DateTime<Utc>,
}

/// A schedule to add (`jobsd schedule add`), every column given.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: String,
    pub object_id: Option<i64>,
    pub sleep: Option<i64>,
    pub payload: Option<String>,
    pub queue: String,
    pub priority: i16,
    pub max_attempts: i32,
    pub catch_up: crate::schedule::CatchUp,
}

/// One step of a schedule's cursor, from the cursor as `schedule` was read or as the step
/// before left it.
#[derive(Debug, Clone, Copy)]
pub struct Advance<'a> {
    pub schedule: &'a ScheduleRow,
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub step: &'a Step,
}

impl<'a, DB> Sql<DB>
where
    DB: Dialect,
    i64: Encode<'a, DB> + Type<DB>,
    i32: Encode<'a, DB> + Type<DB>,
    i16: Encode<'a, DB> + Type<DB>,
    Option<i64>: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
    Option<String>: Encode<'a, DB> + Type<DB>,
{
    /// Every row of `schedules`, by name: the columns of [`ScheduleRow`].
    pub fn schedules() -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "SELECT name, cron, timezone, kind, object_id, sleep, payload, queue, priority, \
             max_attempts, catch_up, CAST(CASE WHEN paused_at IS NULL THEN 0 ELSE 1 END AS {int}) \
             AS paused, created_at, next_run_at, last_run_at, error, ",
            int = DB::INTEGER
        ));
        DB::push_now(&mut query, Clock::now());
        query.push(" AS now FROM schedules ORDER BY name");
        query
    }

    /// Moves the cursor of [`Advance::schedule`] as its step says, if the row still holds the
    /// cursor the step starts from (and, for a step that inserts, is not paused).
    pub fn advance_schedule(advance: &Advance<'_>) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("UPDATE schedules SET last_run_at = ");
        push_optional_time(&mut query, advance.step.last_run_at);
        query.push(", next_run_at = ");
        DB::push_time(&mut query, advance.step.next_run_at);
        query.push(" WHERE name = ");
        query.push_bind(advance.schedule.name.clone());
        query.push(format_args!(" AND last_run_at {} ", DB::SAME));
        push_optional_time(&mut query, advance.last_run_at);
        query.push(format_args!(" AND next_run_at {} ", DB::SAME));
        push_optional_time(&mut query, advance.next_run_at);
        if advance.step.slot.is_some() {
            query.push(" AND paused_at IS NULL");
        }
        query
    }

    /// The job of `schedule`'s `slot`, skipped quietly if the slot has one already.
    pub fn insert_scheduled(schedule: &ScheduleRow, slot: DateTime<Utc>) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(
            "INSERT INTO jobs (kind, object_id, sleep, payload, queue, priority, max_attempts, \
             schedule, scheduled_for, run_at) VALUES (",
        );
        query.push_bind(schedule.kind.clone());
        query.push(", ");
        query.push_bind(schedule.object_id);
        query.push(", ");
        query.push_bind(schedule.sleep);
        query.push(", ");
        query.push_bind(schedule.payload.clone());
        query.push(", ");
        query.push_bind(schedule.queue.clone());
        query.push(", ");
        query.push_bind(schedule.priority);
        query.push(", ");
        query.push_bind(schedule.max_attempts);
        query.push(", ");
        query.push_bind(schedule.name.clone());
        query.push(", ");
        DB::push_time(&mut query, slot);
        query.push(", ");
        DB::push_now(&mut query, Clock::now());
        query.push(")");
        query.push(DB::skip_duplicate("schedule"));
        query
    }

    /// Records why `schedule` inserts nothing (`None`: nothing wrong), unless its cron or
    /// timezone changed since it was read, or the row says so already.
    pub fn mark_schedule(schedule: &ScheduleRow, error: Option<&str>) -> QueryBuilder<'a, DB> {
        let error = error.map(|error| storable(error).into_owned());
        let mut query = QueryBuilder::new("UPDATE schedules SET error = ");
        query.push_bind(error.clone());
        query.push(" WHERE name = ");
        query.push_bind(schedule.name.clone());
        query.push(" AND cron = ");
        query.push_bind(schedule.cron.clone());
        query.push(" AND timezone = ");
        query.push_bind(schedule.timezone.clone());
        query.push(format_args!(" AND NOT (error {} ", DB::SAME));
        query.push_bind(error);
        query.push(")");
        query
    }

    /// A new schedule (`jobsd schedule add`); `created_at` is the database's default.
    pub fn add_schedule(new: &NewSchedule) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(
            "INSERT INTO schedules (name, cron, timezone, kind, object_id, sleep, payload, queue, \
             priority, max_attempts, catch_up) ",
        );
        query.push_values([new], |mut row, new| {
            row.push_bind(new.name.clone())
                .push_bind(new.cron.clone())
                .push_bind(new.timezone.clone())
                .push_bind(new.kind.clone())
                .push_bind(new.object_id)
                .push_bind(new.sleep)
                .push_bind(new.payload.clone())
                .push_bind(new.queue.clone())
                .push_bind(new.priority)
                .push_bind(new.max_attempts)
                .push_bind(new.catch_up.as_str().to_owned());
        });
        query
    }

    pub fn remove_schedule(name: &str) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("DELETE FROM schedules WHERE name = ");
        query.push_bind(name.to_owned());
        query
    }
}

/// A time the statement writes or compares with, or NULL.
fn push_optional_time<DB: Dialect>(query: &mut QueryBuilder<'_, DB>, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => DB::push_time(query, at),
        None => {
            query.push("NULL");
        }
    }
}
