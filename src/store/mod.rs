//! Every query the daemon makes, behind one trait.
//!
//! Publishers and consumers speak in domain terms (`claim`, `mark_started`, `finish`,
//! `find_dead`); each backend module is the only place that knows its SQL dialect. Every state
//! change is a single conditional UPDATE on the expected status (and holder), so two replicas, or
//! the canceller racing a finishing job, can never both win, and a terminal state is written once.

mod claim;
mod claiming;
mod files;
mod invalid_indexes;
mod mysql;
mod postgres;
mod pruning;
mod queues;
mod repairs;
mod schedules;
mod secrets;
mod sql;
mod sqlite;
mod statements;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::job::{
    ClaimedJob, Control, ControlAction, ControlRequest, DeadJob, JobRow, NewJob, Outcome,
    Settlement, Status,
};

use claim::{ATTEMPT_BACK, NEXT_ATTEMPT};
pub use claim::{Claim, Scope};
pub use files::{ImportBatch, is_identifier};
use queues::QueueLimits;
pub use queues::{QueueRow, Resume, Resumed};
pub use schedules::{Advance, NewSchedule, ScheduleRow};
pub use secrets::{redact, scrub, scrub_all, secrets};
pub use sql::SqlStore;

pub type Result<T> = std::result::Result<T, sqlx::Error>;

/// A table row as text fields, `None` for NULL: how the file kinds move data.
pub type TextRow = Vec<Option<String>>;

/// The database operations of jobsd, by duty. Methods that change a job return whether they
/// won: `false` means the row was not in the expected state (another replica or the canceller
/// got there first), which callers treat as a normal outcome, not an error.
pub trait Store:
    Lifecycle + Controls + Queues + Schedules + Pruning + Files + Inspect + Schema + 'static
{
}

impl<T> Store for T where
    T: Lifecycle + Controls + Queues + Schedules + Pruning + Files + Inspect + Schema + 'static
{
}

/// A job's way from NEW to its end, as the replica that holds it, or the sweep for dead jobs,
/// writes it.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// Inserts one job with the table's defaults for whatever `job` leaves out. If a live job
    /// holds `job.unique_key`, the database refuses it: the error is its unique violation.
    async fn insert(&self, job: &NewJob) -> Result<i64>;

    /// Inserts `job` as [`insert`](Self::insert) does, unless a live job (NEW, QUEUED, RUNNING
    /// or PAUSED) holds its `unique_key`: then it inserts nothing and returns `None`. The
    /// database decides, in the INSERT itself, so two callers racing with one key never both
    /// insert.
    async fn insert_or_skip(&self, job: &NewJob) -> Result<Option<i64>>;

    /// Claims up to `claim.limit` NEW jobs whose `run_at` has come, by `priority`, then `run_at`,
    /// then id: QUEUED, `queued_at`, `worker`. Rows another replica is claiming at the same
    /// moment are skipped, not waited for.
    ///
    /// [`Scope::Unlimited`] takes jobs only from queues without a pause or a limit in the
    /// `queues` table, as it stands at the claim. [`Scope::Limited`] locks the queue's row and
    /// takes only what its pause, concurrency and rate allow; with a rate, each job comes with
    /// its [`ClaimedJob::wait`], the start the queue reserved for it.
    ///
    /// With `claim.start`, the same write also starts them (RUNNING, `started_at` = `queued_at`,
    /// one more attempt): a replica without a rate limit starts what it claims at once, so the
    /// start is true and one write per job is saved. `attempts` in the result is still the
    /// count before this run.
    ///
    /// Every row claimed comes back, each decoded on its own: a row that cannot run (a value
    /// of the wrong type, a payload over `claim.max_bytes`, which is never fetched) comes back
    /// with [`ClaimedJob::unfit`] saying why, to end FAILED like any other run.
    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<ClaimedJob>>;

    /// QUEUED by `worker` → RUNNING, one more attempt, for the jobs `ids`, which started `since`
    /// ago (`started_at`, never before `queued_at`): one statement starts a whole batch. Returns
    /// the ids it started; a job missing from them was taken back first (terminated, paused,
    /// released).
    async fn mark_started(&self, worker: &str, ids: &[i64], since: Duration) -> Result<Vec<i64>>;

    /// QUEUED by `worker` → DONE, for the jobs `ids` that ran to the end before their start was
    /// written: the start is written with the outcome ([`Store::mark_started`]'s attempt and
    /// `started_at`, `since` ago). Returns the ids it changed; a job missing from them was
    /// taken back first.
    async fn finish_unstarted(
        &self,
        worker: &str,
        ids: &[i64],
        since: Duration,
    ) -> Result<Vec<i64>>;

    /// Records a sign of life of a RUNNING job, and its handler's `progress` (JSON) when given;
    /// `false` once the job is no longer this worker's to run (cancelled as dead, or
    /// terminated), so the task should stop.
    async fn heartbeat(&self, id: i64, worker: &str, progress: Option<&str>) -> Result<bool>;

    /// Records the outcomes of jobs `worker` ran, all or none: RUNNING → DONE, FAILED, or back
    /// to NEW for a retry. Returns the ids it changed; a job missing from them was settled
    /// elsewhere first (cancelled as dead, terminated). One call writes a whole batch, so a busy
    /// replica spends a statement or two on hundreds of jobs.
    async fn finish(&self, worker: &str, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>>;

    /// Returns this worker's QUEUED and RUNNING jobs (or just the jobs `ids`) to NEW, keeping their
    /// progress and giving back the attempt of an interrupted run: a shutdown never costs a job
    /// an attempt and never cancels it. A PAUSED job stays PAUSED, held by no one, so that a
    /// resume sends it back to NEW.
    async fn release(&self, worker: &str, ids: Option<&[i64]>) -> Result<u64>;

    /// Refreshes the sign of life of this worker's jobs `ids` that no handler speaks for
    /// (QUEUED in its channel, PAUSED in its memory, or RUNNING with the outcome about to be
    /// written), so that a live replica's jobs are never mistaken for those of a dead one.
    /// Only signs older than `older_than` are renewed: a job claimed, started or touched since
    /// is left alone, which spares the write, and the lock a job's own start or outcome is
    /// taking at the same moment (two statements locking the same rows in different orders
    /// deadlock).
    async fn touch(&self, worker: &str, ids: &[i64], older_than: Duration) -> Result<u64>;

    /// Of the jobs this worker is running or holds paused, those that are no longer so (a run
    /// whose start is not written yet is still QUEUED, and still this worker's).
    async fn lost(&self, worker: &str, running: &[i64]) -> Result<Vec<i64>>;

    /// QUEUED and RUNNING jobs of any worker whose last sign of life (`heartbeat_at`, else
    /// `started_at`, else `queued_at`) is older than `dead_after`.
    async fn find_dead(&self, dead_after: Duration, limit: u32) -> Result<Vec<DeadJob>>;

    /// Settles a dead job, if it is still in the state `find_dead` saw and still silent.
    async fn settle_dead(
        &self,
        job: &DeadJob,
        dead_after: Duration,
        how: &Settlement,
    ) -> Result<bool>;
}

/// The `control` requests users write, and what carries them out.
#[async_trait]
pub trait Controls: Send + Sync {
    /// RUNNING by `worker` → PAUSED, clearing the request; its task then waits. Only the request
    /// carried out is cleared: a terminate written meanwhile must stay.
    async fn pause(&self, id: i64, worker: &str) -> Result<bool>;

    /// PAUSED by `worker` → RUNNING, clearing the request; the dead-clock starts again. A job
    /// whose queue is paused, or at its concurrency, waits ([`Resumed::Wait`]).
    async fn resume(&self, resume: &Resume<'_>) -> Result<Resumed>;

    /// Jobs with a pending `control` request and an id above `after`, in id order; `silent`
    /// says whether the holder has vouched for the row within `dead_after`. Callers page
    /// through with `after`, so requests that must wait never hide the ones behind them.
    async fn find_controls(
        &self,
        dead_after: Duration,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ControlRequest>>;

    /// Carries out `action` on a request, if the row still has the status and request that
    /// `find_controls` saw. [`ControlAction::Signal`] and [`ControlAction::Leave`] write nothing.
    async fn apply_control(&self, request: &ControlRequest, action: ControlAction) -> Result<bool>;

    /// Writes a control request, exactly as `UPDATE jobs SET control = … WHERE id = …` would;
    /// `false` if there is no such job.
    async fn request(&self, id: i64, control: Control) -> Result<bool>;
}

/// The `queues` table: the queues users pause and limit with plain SQL.
#[async_trait]
pub trait Queues: Send + Sync {
    /// Every row of `queues`, by name.
    async fn queues(&self) -> Result<Vec<QueueRow>>;

    /// Pauses queue `name` (`paused`) or lets it run, as `UPDATE queues SET paused_at = …`
    /// does, making its row if it has none.
    async fn pause_queue(&self, name: &str, paused: bool) -> Result<()>;

    /// Sets queue `name`'s concurrency and rate (`None` lifts a limit), as `UPDATE queues SET
    /// concurrency = …, rate_per_second = …` does, making its row if it has none. The database
    /// refuses a limit out of range.
    async fn limit_queue(
        &self,
        name: &str,
        concurrency: Option<i64>,
        rate_per_second: Option<f64>,
    ) -> Result<()>;

    /// How many jobs each queue has in each status.
    async fn queue_counts(&self) -> Result<Vec<(String, Status, i64)>>;
}

/// Deleting old finished rows, one replica at a time.
#[async_trait]
pub trait Pruning: Send + Sync {
    /// Takes, or renews, the lease `name` for `holder` until `ttl` from now; whether `holder`
    /// holds it.
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool>;

    /// Deletes up to `limit` rows in `statuses` (finished ones only) that finished more than
    /// `older_than` ago, oldest first; how many it deleted.
    async fn prune(&self, statuses: &[Status], older_than: Duration, limit: u32) -> Result<u64>;
}

/// The `schedules` table: recurring jobs, exactly one per slot across replicas.
#[async_trait]
pub trait Schedules: Send + Sync {
    /// Every row of `schedules`, by name, each with the database's time. A row that cannot be
    /// read is left out with a warning.
    async fn schedules(&self) -> Result<Vec<ScheduleRow>>;

    /// In one transaction: moves the schedule's cursor as the step says, if the row still holds
    /// the cursor the step starts from, and if so inserts the job of the step's slot (quietly
    /// nothing, should the slot have one already). `false`: another replica moved it first.
    async fn advance_schedule(&self, advance: &Advance<'_>) -> Result<bool>;

    /// Records why a schedule inserts nothing (`None` clears it), unless its cron or timezone
    /// changed since it was read; whether the row changed.
    async fn mark_schedule(&self, schedule: &ScheduleRow, error: Option<&str>) -> Result<bool>;

    /// Adds a schedule; an error if one has the name already.
    async fn add_schedule(&self, schedule: &NewSchedule) -> Result<()>;

    /// Pauses schedule `name` (`paused`) or lets it run, as `UPDATE schedules SET paused_at =
    /// …` does; `false` if there is no such schedule.
    async fn pause_schedule(&self, name: &str, paused: bool) -> Result<bool>;

    /// Removes schedule `name` (its jobs stay); `false` if there is no such schedule.
    async fn remove_schedule(&self, name: &str) -> Result<bool>;
}

/// What the file kinds read and write: users' own tables.
#[async_trait]
pub trait Files: Send + Sync {
    /// The column names of `table`, in order; empty if there is no such table. A name may hold
    /// any character the database allows: every query quotes it.
    async fn columns(&self, table: &str) -> Result<Vec<String>>;

    /// The memory an import batch should take (its text, and a few words a field): each batch
    /// costs a transaction, so a larger one is faster, up to a size that differs by database.
    fn import_bytes(&self) -> usize;

    /// In one transaction: inserts the batch's rows (NULL for `None`, else text the database
    /// converts to each column's type) and records its `progress` as the job's checkpoint.
    /// Nothing is written, and `false` returned, if the job is no longer RUNNING on its worker:
    /// a batch is imported exactly when its checkpoint is.
    async fn import_batch(&self, batch: &ImportBatch<'_>) -> Result<bool>;

    /// The rows of `table` whose `date_column` falls on `day`, as text, in `columns` order, as
    /// the database sends them: a day of any size costs the memory of a row at a time.
    fn export_day<'a>(
        &'a self,
        table: &'a str,
        date_column: &'a str,
        columns: &'a [String],
        day: chrono::NaiveDate,
    ) -> BoxStream<'a, Result<TextRow>>;
}

/// Reading the table for people, and filling it for benchmarks.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// Whole rows for people and tests: the given ids, or else the newest `limit` rows.
    async fn rows(&self, ids: &[i64], limit: u32) -> Result<Vec<JobRow>>;

    /// How many jobs are in each status.
    async fn counts(&self) -> Result<Vec<(Status, i64)>>;

    /// How many jobs are NEW, QUEUED or RUNNING: what a drain waits for. Read through the
    /// indexes of the claim and of the live jobs, so it costs little beside millions of
    /// finished rows, where [`counts`](Self::counts) reads them all.
    async fn unfinished(&self) -> Result<i64>;

    /// Up to `limit` rows in `statuses`, the latest by `latest_by` (`"id"`, `"finished_at"`)
    /// first: the running jobs and recent failures of `jobsd status --watch`.
    async fn rows_in(
        &self,
        statuses: &[Status],
        latest_by: &'static str,
        limit: u32,
    ) -> Result<Vec<JobRow>>;

    /// The live job (NEW, QUEUED, RUNNING or PAUSED) that holds unique key `key`, if any: at
    /// most one does, by the database's unique index.
    async fn live_with_key(&self, key: &str) -> Result<Option<i64>>;

    /// Inserts `count` `sleep` jobs of `nanos` at once, for benchmarks; already DONE if `done`.
    async fn insert_many(&self, count: u32, nanos: i64, done: bool) -> Result<()>;

    /// Statements the database server has run so far, where it keeps count; for benchmarks.
    async fn statements(&self) -> Result<Option<u64>>;

    /// Leaves the jobs table as the database's own upkeep leaves it between bursts, for
    /// benchmarks that measure one thing after another: PostgreSQL's dead index entries of
    /// claimed rows removed (every claim walks past them until VACUUM does) and its statistics
    /// current; MySQL's statistics current (InnoDB purges on its own); SQLite has nothing to do.
    async fn upkeep(&self) -> Result<()>;

    /// Creates an empty database named `name` beside this one and returns its URL, for
    /// benchmarks; `drop_scratch` removes it. `name` is quoted (checked, where it names a file),
    /// never trusted.
    async fn create_scratch(&self, url: &str, name: &str) -> Result<String>;

    async fn drop_scratch(&self, name: &str) -> Result<()>;
}

/// The schema, the limits users read in it, and the notifications its triggers send.
#[async_trait]
pub trait Schema: Send + Sync {
    /// Applies pending migrations under the backend's migration lock, so replicas starting
    /// together neither fail nor apply a migration twice.
    async fn migrate(&self) -> Result<()>;

    /// Records `max_bytes` in `jobsd_limits`, so that users read with SQL the limit the replicas
    /// apply. SQLite, which shares the replica's memory, refuses a larger `kind`, `payload` or
    /// `progress` at INSERT by it: there, any change of such a row would load it whole.
    /// Elsewhere a claim fails such a row without fetching the value.
    async fn limit_payloads(&self, max_bytes: u64) -> Result<()>;

    /// Wakes the publishers in `wakes` when jobs are inserted or control requests written,
    /// until `stop`: any insert on PostgreSQL, which notifies; elsewhere only this store's own
    /// (the schedules loop's), and the publishers poll for the rest.
    async fn watch(&self, wakes: Wakes, stop: CancellationToken);
}

/// The publishers a database notification can wake.
#[derive(Clone, Default)]
pub struct Wakes {
    pub new_jobs: Arc<Notify>,
    pub control: Arc<Notify>,
    /// Set when the `queues` table changed, so that the new-jobs publisher reads it again
    /// before its next claim; it is woken too.
    pub queues_changed: Arc<std::sync::atomic::AtomicBool>,
}

/// Why the store could not be opened; each means "fix the setting and start again". The
/// reasons are text with the URL's secrets taken out, not the driver's errors: those may
/// quote parts of the URL.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("database_url {url:?} is not understood: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the database at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "cannot apply the migrations on {url}: {reason}; a user that may not create tables \
         runs `jobsd run --no-migrate` after `jobsd migrate` as one that may"
    )]
    Migrations { url: String, reason: String },
}

/// Applies the migrations, or says in one line why not and what to do instead.
pub async fn migrate(store: &dyn Store, url: &str) -> std::result::Result<(), ConnectError> {
    store
        .migrate()
        .await
        .map_err(|source| ConnectError::Migrations {
            url: redact(url),
            reason: scrub(&source.to_string(), url),
        })
}

/// Opens the store that `url`'s scheme names, with at most `pool_size` connections, and checks
/// that the database answers.
pub async fn connect(
    url: &str,
    pool_size: u32,
) -> std::result::Result<Arc<dyn Store>, ConnectError> {
    let shown = redact(url);
    let bad = |error: sqlx::Error| ConnectError::BadUrl {
        url: shown.clone(),
        reason: scrub(&error.to_string(), url),
    };
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .unwrap_or_default();
    let unreachable = |error: sqlx::Error| ConnectError::Unreachable {
        url: shown.clone(),
        reason: scrub(&error.to_string(), url),
    };
    let store: Arc<dyn Store> = match scheme {
        "postgres" | "postgresql" => {
            let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(bad)?;
            Arc::new(
                postgres::connect(options, pool_size)
                    .await
                    .map_err(unreachable)?,
            )
        }
        "mysql" | "mariadb" => {
            let url = url.replacen("mariadb:", "mysql:", 1);
            let options = sqlx::mysql::MySqlConnectOptions::from_str(&url).map_err(bad)?;
            Arc::new(
                mysql::connect(options, pool_size)
                    .await
                    .map_err(unreachable)?,
            )
        }
        "sqlite" => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(bad)?;
            Arc::new(
                sqlite::connect(options, pool_size)
                    .await
                    .map_err(unreachable)?,
            )
        }
        _ => {
            return Err(ConnectError::BadUrl {
                url: shown,
                reason: "expected postgres://, mysql:// or sqlite://".into(),
            });
        }
    };
    Ok(store)
}

/// How long a replica waits for another's migrations before it gives up.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// How long every pooled connection may take to open before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled connection idle this long is pinged before it is used again.
const IDLE_PING: Duration = Duration::from_secs(30);

/// The pool every dialect opens, of at most `pool_size` connections.
///
/// sqlx pings a connection when it goes back to the pool, and by default again when it is
/// taken out: while a replica drains a backlog that is a round trip before every claim and
/// every batch of outcomes, waiting on a server busy with the work itself. Here only a
/// connection that has been idle is pinged on the way out (a server or a proxy may have closed
/// it meanwhile); one that fails is closed and another taken. A connection broken since its
/// last use fails its statement with an I/O error, which callers retry like any outage.
fn pool_options<DB: sqlx::Database>(pool_size: u32) -> sqlx::pool::PoolOptions<DB> {
    use sqlx::Connection;
    sqlx::pool::PoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(CONNECT_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|connection: &mut DB::Connection, meta| {
            Box::pin(
                async move { Ok(meta.idle_for < IDLE_PING || connection.ping().await.is_ok()) },
            )
        })
}

/// Opens one connection and closes it again: unlike a pool, which retries until its timeout,
/// this reports the database's own reason (refused, unknown database, bad password).
async fn probe<C>(options: &C) -> Result<()>
where
    C: sqlx::ConnectOptions,
    C::Connection: Sized,
{
    use sqlx::Connection;
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(connection) => connection?.close().await,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ),
        ))),
    }
}

/// Rows, each decoded on its own: a row a user wrote with a value that cannot be read is left
/// out with a warning, and never hides the others from a sweep, a control pass or `jobsd
/// status`.
fn each_row<T, R>(rows: &[R]) -> Vec<T>
where
    R: sqlx::Row,
    for<'r> T: sqlx::FromRow<'r, R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .filter_map(|row| match T::from_row(row) {
            Ok(value) => Some(value),
            Err(error) => {
                let id: Option<i64> = row.try_get("id").ok();
                let error = why_unreadable(&error);
                tracing::warn!(job = ?id, %error, "a row cannot be read; left out");
                None
            }
        })
        .collect()
}

/// Why a row cannot be read, in words: a column it needs that reads as NULL was written NULL, or
/// held a time no replica can hold (see `Dialect::readable_time`).
fn why_unreadable(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::ColumnDecode { index, source }
            if source.is::<sqlx::error::UnexpectedNullError>() =>
        {
            format!("column {index} is NULL or holds a time no replica can hold")
        }
        other => other.to_string(),
    }
}

/// `url` with its database (path) replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let mut url = url::Url::parse(url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Decodes `(status, count)` rows.
fn status_counts(rows: Vec<(String, i64)>) -> Result<Vec<(Status, i64)>> {
    rows.into_iter()
        .map(|(status, count)| {
            let status = status
                .parse()
                .map_err(|e: crate::job::UnknownStatus| sqlx::Error::Decode(e.into()))?;
            Ok((status, count))
        })
        .collect()
}

/// A list of ids as a JSON array, for dialects that bind no arrays and unpack JSON instead.
fn json_ids(ids: &[i64]) -> String {
    serde_json::Value::from(ids).to_string()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The ids of the jobs that ended DONE: they share one statement.
fn done_ids(outcomes: &[(i64, Outcome)]) -> Vec<i64> {
    outcomes
        .iter()
        .filter(|(_, outcome)| matches!(outcome, Outcome::Done))
        .map(|(id, _)| *id)
        .collect()
}

/// Why a terminated job was cancelled, in its `last_error`.
pub const TERMINATED: &str = "terminated on request";

/// A job's last sign of life: a heartbeat, else its start, else its claim, else (a row a user
/// wrote as QUEUED or RUNNING) its creation.
const LAST_SIGN: &str = "COALESCE(heartbeat_at, started_at, queued_at, created_at)";

/// The longest `last_error` jobsd writes, in bytes: well inside MySQL's TEXT (65535 bytes), and
/// still a sentence a person reads.
pub const MAX_REASON_BYTES: usize = 4000;

/// `reason` as every database stores it: NUL bytes (PostgreSQL refuses them in text) replaced,
/// and cut on a character boundary to [`MAX_REASON_BYTES`].
pub fn storable(reason: &str) -> std::borrow::Cow<'_, str> {
    if reason.len() <= MAX_REASON_BYTES && !reason.contains('\0') {
        return std::borrow::Cow::Borrowed(reason);
    }
    const CUT: &str = " … (cut)";
    let mut text = reason.replace('\0', "\u{FFFD}");
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES - CUT.len();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(CUT);
    }
    std::borrow::Cow::Owned(text)
}

/// Whether `error` says the database user may not do this (no DELETE, no UPDATE on a table):
/// asking again will not help until someone grants it.
pub fn is_denied(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    if let Some(error) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // Table, column or command access denied.
        return matches!(error.number(), 1142 | 1143 | 1044);
    }
    // PostgreSQL's insufficient_privilege; SQLite's READONLY, in any extended form.
    let code = error.code().unwrap_or_default();
    code == "42501" || code.parse::<i32>().is_ok_and(|number| number & 0xff == 8)
}

/// Whether trying `error` again later may succeed: the connection, the server, or a lock race
/// failed, not the data. A data error will fail every time, so it is settled, never retried.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => {
            // MySQL: 1205 lock wait timeout (SQLSTATE HY000, too broad to go by).
            if let Some(error) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                if error.number() == 1205 {
                    return true;
                }
            }
            let code = error.code().unwrap_or_default();
            // SQLite: the numeric result code, BUSY (5) or LOCKED (6) in any extended form.
            if let Ok(number) = code.parse::<i32>() {
                return matches!(number & 0xff, 5 | 6);
            }
            // SQLSTATE classes: 08 connection, 40 rolled back (deadlock, serialization),
            // 53 out of resources, 57 operator intervention (shutdown, restart).
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }
        _ => false,
    }
}

/// The columns of [`DeadJob`], in every dialect.
const DEAD: &str = "id, status, attempts, max_attempts, worker";

/// The statuses in which a job holds its `unique_key` (DESIGN §2), as the migrations' unique
/// indexes spell them: SQLite uses a partial index only for a query that repeats its condition.
const LIVE: &str = "('NEW', 'QUEUED', 'RUNNING', 'PAUSED')";

/// What the INSERT of a job ends with, on PostgreSQL and SQLite, to skip it quietly when a live
/// job holds its unique key, and for no other reason: the conflict target names the partial
/// unique index by its column and condition. (MySQL catches the unique violation instead.)
fn skip_held_clause() -> String {
    format!(
        " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN {LIVE} DO NOTHING"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_every_database() {
        assert_eq!(storable("plain"), "plain");
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = storable(&long);
        assert!(cut.len() <= MAX_REASON_BYTES, "{}", cut.len());
        assert!(cut.ends_with("(cut)"));
    }
}
