//! The words the rest of the daemon speaks about a job: its status, the row a consumer runs, and
//! the ways a run can end. They are plain data so that stores, publishers and consumers agree on
//! them without sharing any SQL.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The `status` column. The database's CHECK constraint admits exactly these spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    New,
    Queued,
    Running,
    Paused,
    Done,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::New,
        Status::Queued,
        Status::Running,
        Status::Paused,
        Status::Done,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::Queued => "QUEUED",
            Status::Running => "RUNNING",
            Status::Paused => "PAUSED",
            Status::Done => "DONE",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// A terminal status is written once and never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl TryFrom<String> for Status {
    type Error = UnknownStatus;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown job status {0:?}")]
pub struct UnknownStatus(pub String);

/// The `control` column: a request a user writes; the database's CHECK admits only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    Pause,
    Resume,
    Terminate,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Terminate => "terminate",
        }
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Control {
    type Error = UnknownStatus;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        [Control::Pause, Control::Resume, Control::Terminate]
            .into_iter()
            .find(|control| control.as_str() == s)
            .ok_or(UnknownStatus(s))
    }
}

/// A pending `control` request, with what is needed to decide on it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ControlRequest {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub status: Status,
    #[sqlx(try_from = "String")]
    pub control: Control,
    pub worker: Option<String>,
    /// 1 when the holder has not vouched for the row for `dead_after` (it is gone), else 0.
    pub silent: i64,
}

/// What becomes of a control request (ARCHITECTURE.md, "Life of a job").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// A job that has not started yet becomes PAUSED.
    PauseWaiting,
    /// A PAUSED job that no live replica holds goes back to NEW, to continue from its progress;
    /// the attempt of a run its silent holder left paused is given back, as a release does.
    ResumeDetached,
    /// Any unfinished job becomes CANCELLED.
    Terminate,
    /// The job runs (or waits paused) on this replica: tell its task.
    Signal(Control),
    /// The request means nothing in the job's state (or it has finished): clear it.
    Clear,
    /// Another live replica holds the job and will act on it.
    Leave,
}

impl ControlAction {
    /// Whether the action is a write to the row; the others are carried out in memory or not
    /// at all.
    pub fn writes(self) -> bool {
        !matches!(self, ControlAction::Signal(_) | ControlAction::Leave)
    }
}

impl ControlRequest {
    /// The one place that decides what a control request does, seen from replica `me`.
    pub fn action(&self, me: &str) -> ControlAction {
        let mine = self.worker.as_deref() == Some(me);
        match (self.control, self.status) {
            (_, status) if status.is_terminal() => ControlAction::Clear,
            (Control::Terminate, _) => ControlAction::Terminate,
            // A QUEUED job may be running already, its start not yet written: only its holder
            // knows, unless the holder has gone silent.
            (Control::Pause, Status::Queued) if mine => ControlAction::Signal(Control::Pause),
            (Control::Pause, Status::Queued) if self.worker.is_some() && self.silent == 0 => {
                ControlAction::Leave
            }
            (Control::Pause, Status::New | Status::Queued) => ControlAction::PauseWaiting,
            (Control::Resume, Status::Paused) if mine => ControlAction::Signal(Control::Resume),
            (Control::Resume, Status::Paused) if self.worker.is_none() || self.silent != 0 => {
                ControlAction::ResumeDetached
            }
            (Control::Pause, Status::Running) if mine => ControlAction::Signal(Control::Pause),
            (Control::Pause, Status::Running) | (Control::Resume, Status::Paused) => {
                ControlAction::Leave
            }
            _ => ControlAction::Clear,
        }
    }
}

/// What a run tells the completer, in this order: its start, when the claim left the job
/// QUEUED, then its end.
#[derive(Debug)]
pub enum Report {
    /// The run of a job claimed QUEUED began at this moment; its start is to be written.
    Started(i64, std::time::Instant),
    /// The run ended so; the outcome is to be written.
    Ended(i64, Outcome),
}

/// A job a replica has claimed: what a consumer needs to run it, and nothing more.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    /// Lower first.
    pub priority: i16,
    /// Seconds from its `run_at` to the claim: what `jobsd_job_wait_seconds` shows, and the
    /// start order after priority.
    pub waited: Option<f64>,
    pub object_id: Option<i64>,
    /// Nanoseconds, for kind `sleep`.
    pub sleep: Option<i64>,
    /// The `payload` column as written by the user: JSON text, not yet parsed.
    pub payload: Option<String>,
    /// The last checkpoint a handler saved, as JSON text.
    pub progress: Option<String>,
    /// Attempts used before this run started.
    pub attempts: i32,
    pub max_attempts: i32,
    /// Why the row cannot run at all (a value of the wrong type or over `max_payload_bytes`,
    /// attempts already used up): the run ends FAILED with this reason without a handler.
    pub unfit: Option<String>,
    /// How long after the claim its queue's rate lets it start; `None`: at once.
    pub wait: Option<std::time::Duration>,
}

/// The status must be one of the statuses.
impl<'r, R> crate::row::Column<'r, R> for Status
where
    R: sqlx::Row,
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn read(row: &'r R, name: &'r str) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get(name)?;
        status
            .parse()
            .map_err(|error: UnknownStatus| sqlx::Error::Decode(error.into()))
    }
}

crate::row::table_row! {
    /// A whole row, for people reading the table (`jobsd status`, `jobsd demo`) and for tests,
    /// read leniently ([`crate::row`]): a row a user wrote with a value of the wrong type (SQLite
    /// rows from before its type checks) is still shown, and its `last_error` says what was
    /// wrong once it has been claimed.
    #[derive(Debug, Clone, PartialEq)]
    pub struct JobRow {
        pub id: i64,
        pub kind: String,
        pub object_id: Option<i64>,
        pub sleep: Option<i64>,
        pub status: Status,
        pub created_at: DateTime<Utc>,
        pub run_at: DateTime<Utc>,
        pub queued_at: Option<DateTime<Utc>>,
        pub started_at: Option<DateTime<Utc>>,
        pub finished_at: Option<DateTime<Utc>>,
        pub cancelled_at: Option<DateTime<Utc>>,
        pub heartbeat_at: Option<DateTime<Utc>>,
        pub attempts: i32,
        pub max_attempts: i32,
        pub last_error: Option<String>,
        pub control: Option<String>,
        pub progress: Option<String>,
        pub worker: Option<String>,
        pub queue: String,
        pub priority: i16,
        pub unique_key: Option<String>,
        pub schedule: Option<String>,
        pub scheduled_for: Option<DateTime<Utc>>,
    }
}

impl JobRow {
    /// The columns that hold times.
    pub const TIMES: &'static [&'static str] = &[
        "created_at",
        "run_at",
        "queued_at",
        "started_at",
        "finished_at",
        "cancelled_at",
        "heartbeat_at",
        "scheduled_for",
    ];
}

/// A row to insert, with the table's defaults for everything left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewJob {
    pub kind: Option<String>,
    pub object_id: Option<i64>,
    pub sleep: Option<i64>,
    pub payload: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<i32>,
    pub queue: Option<String>,
    pub priority: Option<i16>,
    /// While a job with this key is live (NEW, QUEUED, RUNNING or PAUSED), the database refuses
    /// another with the same key (DESIGN §2).
    pub unique_key: Option<String>,
}

impl NewJob {
    /// A `sleep` job as in the original design: `None` hangs forever.
    pub fn sleep(object_id: i64, nanos: Option<i64>) -> Self {
        NewJob {
            object_id: Some(object_id),
            sleep: nanos,
            ..NewJob::default()
        }
    }
}

/// A QUEUED or RUNNING job that has shown no sign of life for `dead_after`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadJob {
    pub id: i64,
    pub status: Status,
    pub attempts: i32,
    pub max_attempts: i32,
    pub worker: Option<String>,
}

/// Read leniently, so that no row stays RUNNING for good: counts that cannot be read (a SQLite
/// row from before its type checks) count as no attempt left, and the job is cancelled.
impl<'r, R> sqlx::FromRow<'r, R> for DeadJob
where
    R: sqlx::Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let status = <Status as crate::row::Column<R>>::read(row, "status")?;
        let (attempts, max_attempts) = match (row.try_get("attempts"), row.try_get("max_attempts"))
        {
            (Ok(attempts), Ok(max_attempts)) => (attempts, max_attempts),
            _ => (1, 1),
        };
        Ok(DeadJob {
            id: row.try_get("id")?,
            status,
            attempts,
            max_attempts,
            worker: row.try_get("worker")?,
        })
    }
}

/// How a dead job is settled (ARCHITECTURE.md, "Life of a job").
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Never started: back to NEW with no attempt used, for any replica to take.
    Requeue,
    /// Started and attempts remain: back to NEW, not before `backoff` has passed.
    Retry { backoff: Duration, reason: String },
    /// Out of attempts: CANCELLED for good.
    Cancel { reason: String },
}

impl DeadJob {
    /// The one place that decides what becomes of a dead job.
    pub fn settlement(&self, dead_after: Duration, backoff: Duration) -> Settlement {
        let silent = humantime::format_duration(dead_after);
        match self.status {
            Status::Queued => Settlement::Requeue,
            _ if self.attempts < self.max_attempts => Settlement::Retry {
                backoff,
                reason: format!(
                    "no sign of life for {silent} (attempt {} of {}); will retry",
                    self.attempts, self.max_attempts
                ),
            },
            _ => Settlement::Cancel {
                reason: format!("cancelled: no sign of life for {silent}"),
            },
        }
    }
}

/// A failure that another attempt cannot fix (bad input, say): the job ends FAILED at once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

impl Permanent {
    pub fn new(reason: impl Into<String>) -> Self {
        Permanent(reason.into())
    }

    /// Whether `error`, or anything it wraps, is permanent.
    pub fn is_in(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| cause.is::<Permanent>())
    }
}

/// How one run of a job ended, as the consumer records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    /// The handler failed and no attempt remains, or the failure is permanent.
    Failed {
        reason: String,
    },
    /// The handler failed and attempts remain: back to NEW, not before `backoff` has passed.
    Retry {
        backoff: Duration,
        reason: String,
    },
}

/// Exponential backoff before attempt `attempts + 1`: `base`, then doubling, at most an hour.
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1 << doublings)
        .min(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_columns_are_the_rows_times() {
        for column in JobRow::COLUMNS {
            let named_as_time = column.ends_with("_at") || *column == "scheduled_for";
            assert_eq!(JobRow::TIMES.contains(column), named_as_time, "{column}");
        }
        assert!(
            JobRow::TIMES
                .iter()
                .all(|time| JobRow::COLUMNS.contains(time))
        );
    }

    #[test]
    fn status_round_trips_through_its_spelling() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
        }
        assert!("running".parse::<Status>().is_err());
    }

    #[test]
    fn dead_jobs_settle_by_status_and_attempts() {
        let dead = |status, attempts, max_attempts| DeadJob {
            id: 1,
            status,
            attempts,
            max_attempts,
            worker: Some("w".into()),
        };
        let ten = Duration::from_secs(10);
        let one = Duration::from_secs(1);
        assert_eq!(
            dead(Status::Queued, 0, 1).settlement(ten, one),
            Settlement::Requeue
        );
        assert!(matches!(
            dead(Status::Running, 1, 3).settlement(ten, one),
            Settlement::Retry { .. }
        ));
        assert!(matches!(
            dead(Status::Running, 1, 1).settlement(ten, one),
            Settlement::Cancel { .. }
        ));
    }

    #[test]
    fn control_requests_act_by_status_and_holder() {
        use ControlAction::*;
        let request = |control, status, worker: Option<&str>, silent| ControlRequest {
            id: 1,
            status,
            control,
            worker: worker.map(str::to_owned),
            silent,
        };
        let me = Some("me");
        let other = Some("other");
        let cases = [
            (Control::Pause, Status::New, None, 0, PauseWaiting),
            (Control::Pause, Status::Queued, other, 0, Leave),
            (Control::Pause, Status::Queued, other, 1, PauseWaiting),
            (
                Control::Pause,
                Status::Queued,
                me,
                0,
                Signal(Control::Pause),
            ),
            (
                Control::Pause,
                Status::Running,
                me,
                0,
                Signal(Control::Pause),
            ),
            (Control::Pause, Status::Running, other, 0, Leave),
            (Control::Pause, Status::Paused, me, 0, Clear),
            (
                Control::Resume,
                Status::Paused,
                me,
                0,
                Signal(Control::Resume),
            ),
            (Control::Resume, Status::Paused, None, 0, ResumeDetached),
            (Control::Resume, Status::Paused, other, 1, ResumeDetached),
            (Control::Resume, Status::Paused, other, 0, Leave),
            (Control::Resume, Status::Running, me, 0, Clear),
            (Control::Resume, Status::New, None, 0, Clear),
            (Control::Terminate, Status::New, None, 0, Terminate),
            (Control::Terminate, Status::Running, other, 0, Terminate),
            (Control::Terminate, Status::Paused, me, 0, Terminate),
            (Control::Terminate, Status::Done, None, 0, Clear),
            (Control::Pause, Status::Cancelled, None, 0, Clear),
        ];
        for (control, status, worker, silent, expected) in cases {
            let got = request(control, status, worker, silent).action("me");
            assert_eq!(got, expected, "{control} on {status} held by {worker:?}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(4));
        assert_eq!(backoff(base, 40), Duration::from_secs(3600));
    }
}
