//! MySQL 8 and MariaDB 10.6+. Two oddities live here. MySQL has no `UPDATE ... RETURNING`, so a
//! claim selects `FOR UPDATE SKIP LOCKED` and updates the same rows in one transaction, and a
//! batch of outcomes locks the rows still ours before it writes them. And InnoDB settles lock
//! cycles by rolling back one side (error 1213), which the shared store retries; sessions use
//! READ COMMITTED, which drops the gap locks that cause most of them.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{Encode, Executor, MySql, MySqlConnection, MySqlPool, QueryBuilder, Type};

use super::files::{ExportDialect, backticked, inserts};
use super::repairs;
use super::sql::{Backend, SqlStore};
use super::statements::{Clock, Dialect};
use super::{ImportBatch, MIGRATION_WAIT, Result, micros, pool_options, probe, with_database};
use crate::job::NewJob;

/// `CHAR` is MySQL's text cast; backquoted names.
const EXPORT: ExportDialect = ExportDialect {
    quote: backticked,
    text: "CHAR",
    from: "?",
    until: "?",
};

/// The length an id list is padded to: the next power of two, and past 1024 the next multiple
/// of 1024, so that a statement has a dozen texts rather than one for every length.
fn padded(length: usize) -> usize {
    if length <= 1024 {
        length.next_power_of_two()
    } else {
        length.div_ceil(1024).saturating_mul(1024)
    }
}

/// Opens a pool of at most `pool_size` connections. sqlx sets every session's time zone to
/// UTC, which TIMESTAMP columns convert through.
pub async fn connect(options: MySqlConnectOptions, pool_size: u32) -> Result<SqlStore<MySql>> {
    probe(&options).await?;
    let pool = pool_options::<MySql>(pool_size)
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
    Ok(SqlStore::new(pool))
}

/// The server's clock, with microseconds, and microseconds bound as a number.
impl Dialect for MySql {
    const SAME: &'static str = "<=>";
    const INTEGER: &'static str = "SIGNED";

    /// MySQL has no UPDATE … RETURNING.
    const RETURNING: bool = false;
    const SELF_SUBQUERY: bool = false;

    fn seconds_since(column: &str) -> String {
        format!("TIMESTAMPDIFF(MICROSECOND, {column}, NOW(6)) / 1e6")
    }

    /// LENGTH counts bytes, from the row's header for an off-page value.
    fn byte_length(column: &str) -> String {
        format!("CAST(LENGTH({column}) AS SIGNED)")
    }

    fn push_time(query: &mut QueryBuilder<'_, Self>, at: DateTime<Utc>) {
        query.push_bind(at);
    }

    /// Not INSERT IGNORE, which would also hide errors other than the duplicate.
    fn skip_duplicate(key: &str) -> String {
        format!(" ON DUPLICATE KEY UPDATE {key} = {key}")
    }

    /// The column (kept by triggers) that holds a live job's key as bytes (the unique-jobs migration),
    /// read by its unique index; `unique_key` itself has no index, and compares by the table's
    /// collation, for which 'Key' and 'key ' are 'key'.
    fn push_held_key<'q>(query: &mut QueryBuilder<'q, Self>, key: &str)
    where
        String: Encode<'q, Self> + Type<Self>,
    {
        query.push("unique_live = CAST(");
        query.push_bind(key.to_owned());
        query.push(" AS BINARY)");
    }

    /// A list of placeholders rather than a JSON_TABLE subquery: MariaDB runs `UPDATE … WHERE
    /// id IN (subquery)` as a scan of the whole table, locking every row on the way. The list
    /// is padded to one of a few lengths by repeating its last id, which changes no result: a
    /// statement is prepared on each connection for each text, and with a list as long as
    /// each batch nearly every claim and batch of outcomes was a new text (a round trip to
    /// prepare it, hundreds of placeholders parsed, another statement pushed out of sqlx's
    /// cache).
    fn push_in_ids(query: &mut QueryBuilder<'_, Self>, ids: &[i64]) {
        query.push("IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        if let Some(last) = ids.last() {
            for _ in ids.len()..padded(ids.len()) {
                list.push_bind(*last);
            }
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

#[async_trait]
impl Backend for MySql {
    const EXPORT: ExportDialect = EXPORT;
    const UPKEEP: &'static [&'static str] = &["ANALYZE TABLE jobs"];

    async fn migrate(pool: &MySqlPool) -> Result<()> {
        // Replicas starting together take turns under a named lock. sqlx's own asks for
        // GET_LOCK(name, -1), which MariaDB refuses at once (NULL, warning 1411), so the lock is
        // taken here, with a finite wait, on the connection that then runs the migrations.
        let mut connection = pool.acquire().await?;
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
        let applied =
            repairs::then_migrate::<MySql>(&mut connection, &migrator, &repairs::MYSQL).await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('jobsd_migrate.', DATABASE()))")
            .execute(&mut *connection)
            .await?;
        applied?;
        Ok(())
    }

    /// MySQL has no RETURNING, and sqlx's sessions count the rows an upsert finds, not those
    /// it changes (CLIENT_FOUND_ROWS): a row skipped by `ON DUPLICATE KEY UPDATE id = id` and a
    /// row inserted both report one. So the skip is the unique violation, caught; INSERT IGNORE would also turn a
    /// key too long into a shortened one (and, on MySQL 8, a refused CHECK into a skipped row). The violation
    /// can only be the live key's: the id is the table's own.
    async fn insert(pool: &MySqlPool, job: &NewJob, skip_held: bool) -> Result<Option<i64>> {
        let inserted = sqlx::query(
            "INSERT INTO jobs (kind, object_id, sleep, payload, max_attempts, run_at, queue, priority, unique_key) \
             VALUES (COALESCE(?, 'sleep'), ?, ?, ?, COALESCE(?, 1), COALESCE(?, NOW(6)), \
             COALESCE(?, 'default'), COALESCE(?, 0), ?)",
        )
        .bind(&job.kind)
        .bind(job.object_id)
        .bind(job.sleep)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .bind(job.run_at)
        .bind(&job.queue)
        .bind(job.priority)
        .bind(&job.unique_key)
        .execute(pool)
        .await;
        match inserted {
            Ok(done) => Ok(Some(
                i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX),
            )),
            Err(sqlx::Error::Database(error)) if skip_held && error.is_unique_violation() => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    async fn columns(pool: &MySqlPool, table: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(pool)
        .await
    }

    // INSERTs of 1000 rows, four dozen a transaction: larger statements were no faster.
    const IMPORT_BYTES: usize = 4 * 1024 * 1024;

    async fn insert_rows(connection: &mut MySqlConnection, batch: &ImportBatch<'_>) -> Result<()> {
        // MySQL takes up to 65535 parameters per statement.
        for mut insert in inserts(batch, backticked, 1000, 60_000) {
            insert.build().execute(&mut *connection).await?;
        }
        Ok(())
    }

    async fn insert_many(pool: &MySqlPool, count: u32, nanos: i64, done: bool) -> Result<()> {
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
            .execute(pool)
            .await?;
            left -= chunk;
        }
        Ok(())
    }

    async fn statements(pool: &MySqlPool) -> Result<Option<u64>> {
        // Server-wide: meaningful on a database server that runs nothing else meanwhile.
        let (_, questions): (String, String) =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Questions'")
                .fetch_one(pool)
                .await?;
        Ok(questions.parse().ok())
    }

    async fn create_scratch(pool: &MySqlPool, url: &str, name: &str) -> Result<String> {
        sqlx::query(&format!("CREATE DATABASE {}", backticked(name)))
            .execute(pool)
            .await?;
        with_database(url, name)
    }

    async fn drop_scratch(pool: &MySqlPool, name: &str) -> Result<()> {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {}", backticked(name)))
            .execute(pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::padded;

    #[test]
    fn lists_are_padded_to_few_lengths() {
        assert_eq!(padded(1), 1);
        assert_eq!(padded(3), 4);
        assert_eq!(padded(500), 512);
        assert_eq!(padded(1024), 1024);
        assert_eq!(padded(1025), 2048);
        assert_eq!(padded(3000), 3072);
        let lengths: std::collections::BTreeSet<usize> = (1..=1000).map(padded).collect();
        assert_eq!(lengths.len(), 11);
    }
}
