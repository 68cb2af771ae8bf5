//! Every query the daemon makes, behind one trait.
//!
//! Publishers and consumers speak in domain terms (`claim`, `mark_started`, `finish`,
//! `find_dead`); each backend module is the only place that knows its SQL dialect. Every state
//! change is a single conditional UPDATE on the expected status (and holder), so two replicas, or
//! the canceller racing a finishing job, can never both win, and a terminal state is written once.

mod mysql;
mod postgres;
mod sqlite;

use std::ops::Range;
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

pub use mysql::MySqlStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

pub type Result<T> = std::result::Result<T, sqlx::Error>;

/// A table row as text fields, `None` for NULL: how the file kinds move data.
pub type TextRow = Vec<Option<String>>;

/// The database operations of jobsd. Methods that change a job return whether they won: `false`
/// means the row was not in the expected state (another replica or the canceller got there
/// first), which callers treat as a normal outcome, not an error.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations under the backend's migration lock, so replicas starting
    /// together neither fail nor apply a migration twice.
    async fn migrate(&self) -> Result<()>;

    /// Inserts one job with the table's defaults for whatever `job` leaves out.
    async fn insert(&self, job: &NewJob) -> Result<i64>;

    /// Claims up to `claim.limit` NEW jobs whose `run_at` has come, by `run_at` then id: QUEUED,
    /// `queued_at`, `worker`. Rows another replica is claiming at the same moment are skipped,
    /// not waited for.
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

    /// QUEUED by `worker` → RUNNING, `started_at`, one more attempt.
    async fn mark_started(&self, id: i64, worker: &str) -> Result<bool>;

    /// Records a sign of life of a RUNNING job, and its handler's `progress` (JSON) when given;
    /// `false` once the job is no longer this worker's to run (cancelled as dead, or
    /// terminated), so the task should stop.
    async fn heartbeat(&self, id: i64, worker: &str, progress: Option<&str>) -> Result<bool>;

    /// RUNNING by `worker` → PAUSED, clearing the request; its task then waits. Only the request
    /// carried out is cleared: a terminate written meanwhile must stay.
    async fn pause(&self, id: i64, worker: &str) -> Result<bool>;

    /// PAUSED by `worker` → RUNNING, clearing the request; the dead-clock starts again.
    async fn resume(&self, id: i64, worker: &str) -> Result<bool>;

    /// Records the outcomes of jobs `worker` ran, all or none: RUNNING → DONE, FAILED, or back
    /// to NEW for a retry. Returns the ids it changed; a job missing from them was settled
    /// elsewhere first (cancelled as dead, terminated). One call writes a whole batch, so a busy
    /// replica spends a statement or two on hundreds of jobs.
    async fn finish(&self, worker: &str, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>>;

    /// Returns this worker's QUEUED and RUNNING jobs (or just job `id`) to NEW, keeping their
    /// progress and giving back the attempt of an interrupted run: a shutdown never costs a job
    /// an attempt and never cancels it. A PAUSED job stays PAUSED, held by no one, so that a
    /// resume sends it back to NEW.
    async fn release(&self, worker: &str, id: Option<i64>) -> Result<u64>;

    /// Refreshes the sign of life of this worker's jobs `ids` that no handler speaks for
    /// (QUEUED in its channel, PAUSED in its memory, or RUNNING with the outcome about to be
    /// written), so that a live replica's jobs are never mistaken for those of a dead one.
    async fn touch(&self, worker: &str, ids: &[i64]) -> Result<u64>;

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

    /// Of the jobs this worker is running or holds paused, those that are no longer so.
    async fn lost(&self, worker: &str, running: &[i64]) -> Result<Vec<i64>>;

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

    /// The column names of `table`, in order; empty if there is no such table. A name may hold
    /// any character the database allows: every query quotes it.
    async fn columns(&self, table: &str) -> Result<Vec<String>>;

    /// In one transaction: inserts `rows` (NULL for `None`, else text the database converts to
    /// each column's type) into `columns` of `table`, and records `progress` for job `id` as a
    /// checkpoint. Nothing is written, and `false` returned, if the job is no longer RUNNING on
    /// `worker`: a batch is imported exactly when its checkpoint is.
    async fn import_batch(
        &self,
        id: i64,
        worker: &str,
        table: &str,
        columns: &[String],
        rows: &[TextRow],
        progress: &str,
    ) -> Result<bool>;

    /// The rows of `table` whose `date_column` falls on `day`, as text, in `columns` order, as
    /// the database sends them: a day of any size costs the memory of a row at a time.
    fn export_day<'a>(
        &'a self,
        table: &'a str,
        date_column: &'a str,
        columns: &'a [String],
        day: chrono::NaiveDate,
    ) -> BoxStream<'a, Result<TextRow>>;

    /// Whole rows for people and tests: the given ids, or else the newest `limit` rows.
    async fn rows(&self, ids: &[i64], limit: u32) -> Result<Vec<JobRow>>;

    /// How many jobs are in each status.
    async fn counts(&self) -> Result<Vec<(Status, i64)>>;

    /// Inserts `count` `sleep` jobs of `nanos` at once, for benchmarks; already DONE if `done`.
    async fn insert_many(&self, count: u32, nanos: i64, done: bool) -> Result<()>;

    /// Statements the database server has run so far, where it keeps count; for benchmarks.
    async fn statements(&self) -> Result<Option<u64>>;

    /// Creates an empty database named `name` beside this one and returns its URL, for
    /// benchmarks; `drop_scratch` removes it. `name` is quoted (checked, where it names a file),
    /// never trusted.
    async fn create_scratch(&self, url: &str, name: &str) -> Result<String>;

    async fn drop_scratch(&self, name: &str) -> Result<()>;

    /// Makes the database refuse, at INSERT, a `kind`, `payload` or `progress` over
    /// `max_bytes`, where it shares the replica's memory (SQLite): there, any change of such a
    /// row would load it whole. Elsewhere a claim fails such a row without fetching the value.
    async fn limit_payloads(&self, _max_bytes: u64) -> Result<()> {
        Ok(())
    }

    /// Wakes the publishers in `wakes` when jobs are inserted or control requests written,
    /// until `stop`. Backends that cannot be told return at once, and the publishers poll.
    async fn watch(&self, _wakes: Wakes, _stop: CancellationToken) {}
}

/// What a claim asks for.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub worker: &'a str,
    /// At most this many jobs: the consumer slots free right now.
    pub limit: u32,
    /// Start them in the same write: no rate limit stands between claim and start.
    pub start: bool,
    /// A `payload`, `progress` or `kind` longer than this many bytes is not fetched; its job
    /// ends FAILED.
    pub max_bytes: u64,
}

impl<'a> Claim<'a> {
    /// A claim with the default `max_payload_bytes`.
    pub fn new(worker: &'a str, limit: u32, start: bool) -> Self {
        Claim {
            worker,
            limit,
            start,
            max_bytes: 1 << 20,
        }
    }
}

/// The publishers a database notification can wake.
#[derive(Clone, Default)]
pub struct Wakes {
    pub new_jobs: Arc<Notify>,
    pub control: Arc<Notify>,
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
                PostgresStore::connect(options, pool_size)
                    .await
                    .map_err(unreachable)?,
            )
        }
        "mysql" | "mariadb" => {
            let url = url.replacen("mariadb:", "mysql:", 1);
            let options = sqlx::mysql::MySqlConnectOptions::from_str(&url).map_err(bad)?;
            Arc::new(
                MySqlStore::connect(options, pool_size)
                    .await
                    .map_err(unreachable)?,
            )
        }
        "sqlite" => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(bad)?;
            Arc::new(
                SqliteStore::connect(options, pool_size)
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

/// What stands in for a secret in anything jobsd prints.
const HIDDEN: &str = "***";

/// Words in a query parameter's name (compared in lower case, percent-decoded) that make its
/// value a secret: `password`, `sslpassword`, `PASSWORD`, `db_passwd`, `client_secret`, ….
const SECRET_WORDS: &[&str] = &["password", "passwd", "pwd", "secret", "token"];

/// The URL with every secret in it replaced by `***`, for log lines and error messages: the
/// password of the user info, and the value of every query parameter whose name says it is a
/// secret. A URL the `url` crate cannot parse is still shown, with what follows the `:` of
/// anything that looks like user info hidden, and the values of such parameters.
pub fn redact(url: &str) -> String {
    let (text, secrets) = secret_ranges(url);
    if secrets.is_empty() {
        return url.to_owned();
    }
    let mut shown = String::with_capacity(text.len());
    let mut from = 0;
    for range in secrets {
        shown.push_str(&text[from..range.start]);
        shown.push_str(HIDDEN);
        from = range.end;
    }
    shown.push_str(&text[from..]);
    shown
}

/// Every spelling of the URL's secrets that a message could carry: as the URL spells them,
/// percent-decoded as drivers use them, and escaped as Rust's `{:?}` and JSON write strings
/// (log fields). Longest first, so that [`scrub`] replaces a secret before
/// any part of it.
pub fn secrets(url: &str) -> Vec<String> {
    let (text, ranges) = secret_ranges(url);
    let mut spellings: Vec<String> = Vec::new();
    for range in ranges {
        // A value after `?` may spell a space as `+`; the user info may not.
        let in_query = text[..range.start].contains('?');
        let raw = text[range].to_owned();
        let plus = if in_query {
            raw.replace('+', " ")
        } else {
            raw.clone()
        };
        let decoded = percent_encoding::percent_decode_str(&plus)
            .decode_utf8_lossy()
            .into_owned();
        for secret in [raw, decoded] {
            let json = serde_json::Value::from(secret.as_str()).to_string();
            let debug = format!("{secret:?}");
            spellings.push(json[1..json.len() - 1].to_owned());
            spellings.push(debug[1..debug.len() - 1].to_owned());
            spellings.push(secret);
        }
    }
    spellings.retain(|secret| !secret.is_empty() && secret != HIDDEN);
    spellings.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    spellings.dedup();
    spellings
}

/// `text` with every spelling of `url`'s secrets replaced by `***`: for messages that came
/// from parsing `url` or connecting with it, which drivers may fill with parts of it.
pub fn scrub(text: &str, url: &str) -> String {
    scrub_all(text, &secrets(url))
}

/// `text` with each of `secrets` (as [`secrets`] lists them) replaced by `***`.
pub fn scrub_all(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), HIDDEN);
        }
    }
    text
}

/// The text `redact` starts from and the byte ranges of it to hide, in order, not overlapping:
/// the `url` crate's spelling of the URL when it parses, else the URL as written.
fn secret_ranges(url: &str) -> (String, Vec<Range<usize>>) {
    let Ok(parsed) = url::Url::parse(url) else {
        return (url.to_owned(), fallback_ranges(url));
    };
    // An `@` that did not end the user info: most likely a password with a `/`, `?` or `#` in
    // it, which ended the authority early, so the rest of it is now path, query or fragment.
    let user_info = !parsed.username().is_empty() || parsed.password().is_some();
    if url.matches('@').count() > usize::from(user_info) {
        return (url.to_owned(), fallback_ranges(url));
    }
    let text = parsed.as_str();
    let mut ranges = Vec::new();
    // The `url` crate writes `scheme://user:password@…`, encoding any `:`, `@` or `?` inside.
    if let Some(password) = parsed.password() {
        let start = parsed.scheme().len() + "://".len() + parsed.username().len() + ":".len();
        let range = start..start + password.len();
        if text.get(range.clone()) == Some(password) {
            ranges.push(range);
        } else {
            return (text.to_owned(), fallback_ranges(text));
        }
    }
    if let Some(query) = parsed.query()
        && let Some(at) = text.find('?').map(|at| at + 1)
    {
        ranges.extend(
            secret_values(query)
                .into_iter()
                .map(|range| at + range.start..at + range.end),
        );
    }
    (parsed.as_str().to_owned(), merged(ranges))
}

/// For a URL the `url` crate cannot read, so its parts are guesses: a password may hold `/`,
/// `?` or `@`, which is often why it cannot be read. So the user info runs to the last `@`
/// and all of it after its first `:` is hidden, and every `name=value` pair with a secret name
/// anywhere in the URL has its value hidden. Hiding too much is the safe side.
fn fallback_ranges(url: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let authority = match url.find("://") {
        Some(at) => at + 3,
        None => url.find(':').map_or(0, |at| at + 1),
    };
    if let Some(end) = url[authority..].rfind('@').map(|at| authority + at)
        && let Some(colon) = url[authority..end].find(':').map(|at| authority + at)
        && colon + 1 < end
    {
        ranges.push(colon + 1..end);
    }
    let query = url.find('?').map_or(authority, |at| at + 1);
    ranges.extend(
        secret_values(&url[query..])
            .into_iter()
            .map(|range| query + range.start..query + range.end),
    );
    merged(ranges)
}

/// The ranges of the values of `query`'s `name=value` pairs (split at `&`, `;` and `?`) whose
/// name holds one of [`SECRET_WORDS`]. A value runs to the next `&` or `#`.
fn secret_values(query: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < query.len() {
        let end = query[start..]
            .find(['&', '#'])
            .map_or(query.len(), |at| start + at);
        let pair = &query[start..end];
        if let Some(equals) = pair.find('=') {
            let name = pair[..equals].rsplit([';', '?']).next().unwrap_or_default();
            if is_secret_name(name) && equals + 1 < pair.len() {
                ranges.push(start + equals + 1..end);
            }
        }
        start = end + 1;
    }
    ranges
}

fn is_secret_name(name: &str) -> bool {
    let name = name.replace('+', " ");
    let name = percent_encoding::percent_decode_str(&name)
        .decode_utf8_lossy()
        .to_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// `ranges` sorted, with overlapping ones joined.
fn merged(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|range| range.start);
    let mut joined: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match joined.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => joined.push(range),
        }
    }
    joined
}

/// How long every pooled connection may take to open before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Whether `name` is a plain identifier: letters, digits and `_`, not starting with a digit.
/// Table names on the `csv_tables` allow-list must be; SQL never relies on it, as every
/// identifier is quoted.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// A dialect's way of quoting an identifier so that any name, whatever it holds, stays one name.
type Quote = fn(&str) -> String;

/// PostgreSQL's and SQLite's identifier quoting: `"` around, a `"` inside doubled.
fn double_quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// MySQL's and MariaDB's identifier quoting: a backtick around, a backtick inside doubled.
fn backticked(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `names` quoted and joined with commas, for a column list.
fn column_list(names: &[String], quote: Quote) -> String {
    names
        .iter()
        .map(|name| quote(name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT INTO table (columns) VALUES (?, …), …` for `rows`, in as many statements as a limit
/// of `max_params` bound parameters needs, for dialects that take text for any column type.
fn inserts<'a, DB>(
    table: &str,
    columns: &[String],
    rows: &'a [TextRow],
    quote: Quote,
    max_params: usize,
) -> Vec<sqlx::QueryBuilder<'a, DB>>
where
    DB: sqlx::Database,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let per_statement = (max_params / columns.len().max(1)).clamp(1, 1000);
    let head = format!(
        "INSERT INTO {} ({}) ",
        quote(table),
        column_list(columns, quote)
    );
    rows.chunks(per_statement)
        .map(|chunk| {
            let mut insert = sqlx::QueryBuilder::new(head.clone());
            insert.push_values(chunk, |mut values, row| {
                for value in row {
                    values.push_bind(value.as_deref());
                }
            });
            insert
        })
        .collect()
}

/// The dialect's spellings an export query needs: identifier quoting, text type, and the two
/// placeholders of a day's bounds.
struct ExportDialect {
    quote: Quote,
    text: &'static str,
    from: &'static str,
    until: &'static str,
}

/// `SELECT` the `columns` of `table` as text for rows whose `date_column` lies between the two
/// bound placeholders, in date order. Every name is quoted: one the catalog returns may hold
/// anything, quotes and parentheses included.
fn export_sql(
    table: &str,
    date_column: &str,
    columns: &[String],
    dialect: &ExportDialect,
) -> String {
    let ExportDialect {
        quote,
        text,
        from,
        until,
    } = dialect;
    let fields: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST({} AS {text})", quote(c)))
        .collect();
    let date = quote(date_column);
    let first = quote(columns.first().map(String::as_str).unwrap_or(date_column));
    format!(
        "SELECT {} FROM {} WHERE {date} >= {from} AND {date} < {until} ORDER BY {date}, {first}",
        fields.join(", "),
        quote(table),
    )
}

/// A row as text fields, in column order.
fn text_row<R: sqlx::Row>(row: &R) -> Result<TextRow>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    (0..row.len()).map(|i| row.try_get(i)).collect()
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
                tracing::warn!(job = ?id, %error, "a row cannot be read; left out");
                None
            }
        })
        .collect()
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

/// One more attempt, saturating: a row a user wrote with `attempts` at the column's maximum
/// must not make the whole statement fail ("out of range") and take the other rows with it.
const NEXT_ATTEMPT: &str =
    "attempts = CASE WHEN attempts < 2147483647 THEN attempts + 1 ELSE attempts END";

/// One attempt given back, never below zero (a user may write `attempts = 0` on any row).
const ATTEMPT_BACK: &str = "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END";

/// The SET of a claim: QUEUED, or with `start` RUNNING as well; `now` is the dialect's clock.
fn claimed_as(start: bool, now: &str) -> String {
    if start {
        format!("status = 'RUNNING', started_at = {now}, {NEXT_ATTEMPT}")
    } else {
        "status = 'QUEUED'".to_owned()
    }
}

/// The columns a claim returns: what [`claimed`] decodes. Each big text comes only when it
/// fits `max` bytes, with its size beside it, so a huge value is never sent to the replica at
/// all. `size` is the dialect's byte length of a column, as a 64-bit integer.
fn claimed_columns(size: fn(&str) -> String, max: &str) -> String {
    let gated = |column: &str| {
        let bytes = size(column);
        format!(
            "CASE WHEN {bytes} <= {max} THEN {column} END AS {column}, {bytes} AS {column}_bytes"
        )
    };
    format!(
        "id, {}, object_id, sleep, {}, {}, attempts, max_attempts",
        gated("kind"),
        gated("payload"),
        gated("progress")
    )
}

/// Decodes one claimed row, each on its own. A value that does not decode, or a text over `max_bytes`, makes
/// the job unfit to run rather than failing the claim: the other rows of the batch run.
fn claimed<R>(row: &R, max_bytes: u64) -> Result<ClaimedJob>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    // The id always decodes (an integer key); without it the row could not even be failed.
    let id: i64 = row.try_get("id")?;
    let mut unfit = Vec::new();
    let mut get = |column: &str| -> Option<String> {
        let bytes = match row.try_get::<Option<i64>, _>(format!("{column}_bytes").as_str()) {
            Ok(bytes) => bytes,
            Err(error) => {
                unfit.push(format!("the size of {column} cannot be read: {error}"));
                return None;
            }
        };
        match bytes {
            Some(bytes) if u64::try_from(bytes).unwrap_or(u64::MAX) > max_bytes => {
                unfit.push(format!(
                    "{column} too large: {bytes} bytes, more than max_payload_bytes ({max_bytes})"
                ));
                None
            }
            _ => match row.try_get::<Option<String>, _>(column) {
                Ok(value) => value,
                Err(error) => {
                    unfit.push(unreadable(column, "text", &error));
                    None
                }
            },
        }
    };
    let kind = get("kind").unwrap_or_default();
    let payload = get("payload");
    let progress = get("progress");
    let number = |column: &str, unfit: &mut Vec<String>| -> Option<i64> {
        match row.try_get::<Option<i64>, _>(column) {
            Ok(value) => value,
            Err(error) => {
                unfit.push(unreadable(column, "a whole number", &error));
                None
            }
        }
    };
    let object_id = number("object_id", &mut unfit);
    let sleep = number("sleep", &mut unfit);
    let mut count = |column: &str, fallback: i32| -> i32 {
        match row.try_get::<i32, _>(column) {
            Ok(value) => value,
            Err(error) => {
                unfit.push(unreadable(column, "a count from 0 to 2147483647", &error));
                fallback
            }
        }
    };
    let attempts = count("attempts", 0);
    let max_attempts = count("max_attempts", 1);
    Ok(ClaimedJob {
        id,
        kind,
        object_id,
        sleep,
        payload,
        progress,
        attempts,
        max_attempts,
        unfit: (!unfit.is_empty()).then(|| unfit.join("; ")),
    })
}

/// Why `column` cannot be read as `wanted`, in words: the storage type found when the database
/// says which (a SQLite row from before its type checks), else the decoder's own reason.
fn unreadable(column: &str, wanted: &str, error: &sqlx::Error) -> String {
    let text = error.to_string();
    let found = text
        .rsplit_once("SQL type `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(found, _)| found);
    match found {
        Some(found) => format!("{column} holds a {found} value, not {wanted}"),
        None if text.contains("out of range") => format!("{column} is out of range for {wanted}"),
        None => format!("{column} cannot be read as {wanted}: {text}"),
    }
}

/// What a claim returns: `attempts` counted before the run, whether or not the claim started it,
/// oldest first; a job whose attempts were used up before it ran is unfit to run.
fn before_run(mut jobs: Vec<ClaimedJob>, started: bool) -> Vec<ClaimedJob> {
    // RETURNING keeps no order; start the oldest first.
    jobs.sort_by_key(|job| job.id);
    for job in &mut jobs {
        // A count the claim found at its maximum stayed there (`NEXT_ATTEMPT`): it was used up.
        if started && job.attempts < i32::MAX {
            job.attempts -= 1;
        }
        if job.unfit.is_none() && job.attempts >= job.max_attempts {
            job.unfit = Some(format!(
                "attempts ({}) had already reached max_attempts ({}) before this run",
                job.attempts, job.max_attempts
            ));
        }
    }
    jobs
}

/// The ids of the jobs that ended DONE: they share one statement.
fn done_ids(outcomes: &[(i64, Outcome)]) -> Vec<i64> {
    outcomes
        .iter()
        .filter(|(_, outcome)| matches!(outcome, Outcome::Done))
        .map(|(id, _)| *id)
        .collect()
}

/// The columns of [`JobRow`], in every dialect.
const ROW: &str = "id, kind, object_id, sleep, status, created_at, run_at, queued_at, started_at, \
                   finished_at, cancelled_at, heartbeat_at, attempts, max_attempts, last_error, control, \
                   progress, worker";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain_names_only() {
        for good in ["orders", "_tmp", "Order_2018"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in [
            "",
            "2018",
            "orders; DROP TABLE jobs",
            "a.b",
            "naïve",
            "a\"b",
            &"x".repeat(65),
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn unreadable_values_are_named_in_words() {
        let mismatch = sqlx::Error::ColumnDecode {
            index: "\"sleep\"".into(),
            source: "mismatched types; Rust type `core::option::Option<i64>` (as SQL type \
                     `INTEGER`) is not compatible with SQL type `TEXT`"
                .into(),
        };
        assert_eq!(
            unreadable("sleep", "a whole number", &mismatch),
            "sleep holds a TEXT value, not a whole number"
        );
    }

    #[test]
    fn reasons_fit_every_database() {
        assert_eq!(storable("plain"), "plain");
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = storable(&long);
        assert!(cut.len() <= MAX_REASON_BYTES, "{}", cut.len());
        assert!(cut.ends_with("(cut)"));
    }

    #[test]
    fn quoting_keeps_any_name_one_identifier() {
        assert_eq!(double_quoted("orders"), "\"orders\"");
        assert_eq!(double_quoted("a\"b"), "\"a\"\"b\"");
        assert_eq!(backticked("a`b"), "`a``b`");
        let crafted = "a\"AS TEXT),(SELECT current_user)::TEXT,CAST(\"a".to_owned();
        let dialect = ExportDialect {
            quote: double_quoted,
            text: "TEXT",
            from: "$1",
            until: "$2",
        };
        let sql = export_sql("t", "day", &[crafted, "day".into()], &dialect);
        assert_eq!(
            sql,
            "SELECT CAST(\"a\"\"AS TEXT),(SELECT current_user)::TEXT,CAST(\"\"a\" AS TEXT), \
             CAST(\"day\" AS TEXT) FROM \"t\" WHERE \"day\" >= $1 AND \"day\" < $2 \
             ORDER BY \"day\", \"a\"\"AS TEXT),(SELECT current_user)::TEXT,CAST(\"\"a\""
        );
    }

    #[test]
    fn redact_hides_the_password_of_the_user_info() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/jobs?sslmode=require"),
            "postgres://app:***@db:5432/jobs?sslmode=require"
        );
        assert_eq!(
            redact("mysql://root:s3cret@127.0.0.1:3306/jobs"),
            "mysql://root:***@127.0.0.1:3306/jobs"
        );
        // Percent-encoded: hidden whole, and known decoded too.
        assert_eq!(redact("postgres://u:p%40ss@h/db"), "postgres://u:***@h/db");
        assert!(secrets("postgres://u:p%40ss@h/db").contains(&"p@ss".to_owned()));
    }

    #[test]
    fn redact_hides_every_secret_query_parameter_in_any_case_and_spelling() {
        for (url, shown) in [
            (
                "postgres://u@h:1/db?password=S3CRET",
                "postgres://u@h:1/db?password=***",
            ),
            (
                "postgres://u@h/db?sslmode=require&sslpassword=S3CRET&application_name=a",
                "postgres://u@h/db?sslmode=require&sslpassword=***&application_name=a",
            ),
            (
                "postgres://u@h/db?PASSWORD=S3CRET",
                "postgres://u@h/db?PASSWORD=***",
            ),
            (
                "postgres://u@h/db?Password=S3CRET",
                "postgres://u@h/db?Password=***",
            ),
            (
                "mysql://u@h/db?db_passwd=S3CRET",
                "mysql://u@h/db?db_passwd=***",
            ),
            (
                "mysql://u@h/db?client_Secret=S3CRET",
                "mysql://u@h/db?client_Secret=***",
            ),
            (
                "postgres://u@h/db?pass%77ord=S3CRET",
                "postgres://u@h/db?pass%77ord=***",
            ),
            (
                "postgres://u@h/db?password=S3CRET#top",
                "postgres://u@h/db?password=***#top",
            ),
            (
                "postgres://u:S3CRET@h/db?password=S3CRET&sslpassword=S3CRET2",
                "postgres://u:***@h/db?password=***&sslpassword=***",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let spellings = secrets("postgres://u@h/db?password=a+b%21&x=1");
        assert!(spellings.contains(&"a b!".to_owned()), "{spellings:?}");
        assert!(spellings.contains(&"a+b%21".to_owned()), "{spellings:?}");
    }

    #[test]
    fn redact_leaves_urls_without_secrets_as_they_are() {
        for url in [
            "mysql://root@127.0.0.1/jobs",
            "sqlite://jobsd.db",
            "sqlite::memory:",
            "postgres://h/db?sslmode=require&application_name=jobsd",
            "postgres://u:@h/db",
        ] {
            assert_eq!(redact(url), url);
        }
        assert!(secrets("postgres://u@h/db?sslmode=require").is_empty());
    }

    #[test]
    fn redact_hides_secrets_of_urls_that_do_not_parse() {
        for (url, secret) in [
            ("postgres://a:b c@", "b c"),
            ("postgres://u:pa/ss@h/db", "pa/ss"),
            ("postgres://u:S3CRET@h:notaport/db", "S3CRET"),
            (
                "postgres://u@h:notaport/db?sslmode=x&PassWord=S3CRET",
                "S3CRET",
            ),
            ("postgres://u@[::1/db?password=S3CRET", "S3CRET"),
        ] {
            assert!(url::Url::parse(url).is_err(), "{url} parses after all");
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(shown.contains(HIDDEN), "{shown}");
            assert!(secrets(url).contains(&secret.to_owned()), "{url}");
        }
        assert_eq!(
            redact("postgres://u:S3CRET@h:notaport/db"),
            "postgres://u:***@h:notaport/db"
        );
        // These parse, but not as meant: the password's `?`, `#` or `/` ended the authority.
        for (url, secret) in [
            ("postgres://u:p@ss?w#rd@h:5432/db", "p@ss?w#rd"),
            ("postgres://u:12/ss@h/db", "12/ss"),
            ("postgres://u:p@ss@h/db", "p@ss"),
        ] {
            assert!(url::Url::parse(url).is_ok(), "{url}");
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(shown.starts_with("postgres://u:***@"), "{shown}");
        }
    }

    #[test]
    fn scrub_takes_every_spelling_of_the_secrets_out_of_a_message() {
        let url = "postgres://u:pa%22ss@h/db?sslpassword=S3%2FCRET";
        let message = concat!(
            r#"value=S3/CRET, "pa\"ss", {"v":"pa\"ss"}, pa"ss, "#,
            "S3%2FCRET, pa%22ss"
        );
        let clean = scrub(message, url);
        assert_eq!(clean, r#"value=***, "***", {"v":"***"}, ***, ***, ***"#);
        assert_eq!(scrub("nothing to hide", url), "nothing to hide");
    }
}
