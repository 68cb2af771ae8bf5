//! SQLite, the embedded default: one file, one writer at a time. Every change is a single
//! statement, which SQLite runs under its write lock from the first row it reads, so a claim's
//! `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING` needs no SKIP LOCKED. Timestamps are UTC
//! text (see the migration) written from the process clock with microseconds, as SQLite's own
//! clock has only milliseconds; a SQLite file has one host, so there is only one clock anyway.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::files::{ExportDialect, double_quoted, inserts};
use super::sql::{Backend, SqlStore};
use super::statements::{Clock, Dialect};
use super::{ImportBatch, Result, json_ids, pool_options, probe, skip_held_clause};
use crate::job::NewJob;

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

/// Opens a pool of at most `pool_size` connections (and at most four: one writer at a time).
pub async fn connect(options: SqliteConnectOptions, pool_size: u32) -> Result<SqlStore<Sqlite>> {
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
    let pool = pool_options::<Sqlite>(pool_size.min(MAX_CONNECTIONS))
        .connect_with(options)
        .await?;
    Ok(SqlStore::new(pool))
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

/// The process clock as the column's text (a file has one host, so one clock), fixed once
/// per statement; time arithmetic is done before binding.
impl Dialect for Sqlite {
    const SAME: &'static str = "IS";
    const INTEGER: &'static str = "INTEGER";

    /// One writer at a time: nothing to skip, and a write transaction excludes the others.
    const SKIP_LOCKED: &'static str = "";
    const LOCKED: &'static str = "";

    fn seconds_since(column: &str) -> String {
        format!("(julianday('now') - julianday({column})) * 86400.0")
    }

    /// octet_length reads a value's size from the record header, not the value itself.
    fn byte_length(column: &str) -> String {
        format!("octet_length({column})")
    }

    fn push_time(query: &mut QueryBuilder<'_, Self>, at: DateTime<Utc>) {
        query.push_bind(text(at));
    }

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

#[async_trait]
impl Backend for Sqlite {
    const EXPORT: ExportDialect = EXPORT;
    const UPKEEP: &'static [&'static str] = &[];

    /// IMMEDIATE takes the write lock up front: a deferred transaction that reads first may
    /// find another writer in the way when it upgrades, and fail instead of waiting.
    async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn migrate(pool: &SqlitePool) -> Result<()> {
        // sqlx takes no lock on SQLite. Each migration runs in a transaction, so when processes
        // starting together race, the loser's attempt fails whole ("table jobs already
        // exists") and rolls back; the next attempt finds it applied.
        let migrator = sqlx::migrate!("migrations/sqlite");
        taking_turns(|_| true, || migrator.run(pool)).await?;
        Ok(())
    }

    async fn insert(pool: &SqlitePool, job: &NewJob, skip_held: bool) -> Result<Option<i64>> {
        let skip = if skip_held {
            skip_held_clause()
        } else {
            String::new()
        };
        sqlx::query_scalar(&format!(
            "INSERT INTO jobs (kind, object_id, sleep, payload, max_attempts, run_at, queue, priority, unique_key) \
             VALUES (COALESCE(?1, 'sleep'), ?2, ?3, ?4, COALESCE(?5, 1), COALESCE(?6, ?7), \
             COALESCE(?8, 'default'), COALESCE(?9, 0), ?10){skip} RETURNING id"
        ))
        .bind(&job.kind)
        .bind(job.object_id)
        .bind(job.sleep)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .bind(job.run_at.map(text))
        .bind(now())
        .bind(&job.queue)
        .bind(job.priority)
        .bind(&job.unique_key)
        .fetch_optional(pool)
        .await
    }

    async fn columns(pool: &SqlitePool, table: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .bind(table)
            .fetch_all(pool)
            .await
    }

    // A transaction's pages stay in the daemon's own memory until it commits: a smaller batch,
    // as fast here as one of 1 MiB (bench/csv-import.sh).
    const IMPORT_BYTES: usize = 512 * 1024;

    async fn insert_rows(connection: &mut SqliteConnection, batch: &ImportBatch<'_>) -> Result<()> {
        // SQLite takes up to 32766 parameters per statement.
        for mut insert in inserts(batch, double_quoted, 1000, 32_000) {
            insert.build().execute(&mut *connection).await?;
        }
        Ok(())
    }

    async fn insert_many(pool: &SqlitePool, count: u32, nanos: i64, done: bool) -> Result<()> {
        sqlx::query(
            "WITH RECURSIVE n (x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?1) \
             INSERT INTO jobs (sleep, status, finished_at) \
             SELECT ?2, CASE WHEN ?3 THEN 'DONE' ELSE 'NEW' END, CASE WHEN ?3 THEN ?4 END FROM n",
        )
        .bind(count)
        .bind(nanos)
        .bind(done)
        .bind(now())
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn statements(_pool: &SqlitePool) -> Result<Option<u64>> {
        // An embedded file keeps no server-side count.
        Ok(None)
    }

    /// A file in the system's temporary folder.
    async fn create_scratch(_pool: &SqlitePool, _url: &str, name: &str) -> Result<String> {
        Ok(format!("sqlite://{}", scratch_file(name)?.display()))
    }

    async fn drop_scratch(_pool: &SqlitePool, name: &str) -> Result<()> {
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
