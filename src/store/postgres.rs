//! PostgreSQL: claims with `FOR UPDATE SKIP LOCKED` inside one `UPDATE ... RETURNING`, reads
//! time from the database clock (replicas' clocks may disagree), and learns of new jobs and of
//! control requests from the NOTIFYs that the jobs table's triggers send.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use tokio_util::sync::CancellationToken;

use super::files::{ExportDialect, column_list, copy_csv, double_quoted};
use super::sql::{Backend, SqlStore};
use super::statements::{Clock, Dialect};
use super::{
    ImportBatch, MIGRATION_WAIT, Result, Wakes, invalid_indexes, micros, pool_options, probe,
    repairs, skip_held_clause, with_database,
};
use crate::job::NewJob;

/// The channel the migration's trigger notifies on every INSERT statement.
const NEW_JOBS_CHANNEL: &str = "jobsd_new_jobs";

/// The channel the migration's trigger notifies when a `control` request is written.
const CONTROL_CHANNEL: &str = "jobsd_control";

/// The channel the migration's trigger notifies when the `queues` table changes.
const QUEUES_CHANNEL: &str = "jobsd_queues";

/// The CSV an import batch sends at a time: the batch's rows are encoded as they go.
const COPY_PIECE_BYTES: usize = 64 * 1024;

/// Text casts and `$n` bounds.
const EXPORT: ExportDialect = ExportDialect {
    quote: double_quoted,
    text: "TEXT",
    from: "$1",
    until: "$2",
};

/// Opens a pool of at most `pool_size` connections, each planning without bitmap scans.
///
/// The claim walks `jobs_claim_order_idx` in order and stops after its LIMIT. When the table's
/// statistics say few jobs are NEW (a table analyzed while its rows were finished, or never
/// analyzed), PostgreSQL prefers a bitmap scan of every NEW row and a sort of them all, since
/// the sort sits under `FOR UPDATE` and no LIMIT bounds it: a burst of 100,000 jobs then costs
/// each claim a sort of the whole backlog, spilled to disk, until autovacuum analyzes the table
/// again. Without bitmap scans a claim from every queue, or from one, has only a sequential
/// scan left besides its index, which the planner prefers on a tiny table alone; a claim from
/// several named queues takes each queue's first through its own index (`PER_QUEUE`). Set on
/// the session, not in the startup packet, which poolers such as PgBouncer refuse.
pub async fn connect(options: PgConnectOptions, pool_size: u32) -> Result<SqlStore<Postgres>> {
    let options = options.application_name("jobsd");
    probe(&options).await?;
    let pool = pool_options::<Postgres>(pool_size)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::Executor::execute(&mut *connection, "SET enable_bitmapscan = off").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(SqlStore::new(pool))
}

/// The database's clock, and microseconds bound as a number (a replica's clock may disagree).
impl Dialect for Postgres {
    const SAME: &'static str = "IS NOT DISTINCT FROM";
    const PER_QUEUE: bool = true;
    const INTEGER: &'static str = "BIGINT";

    /// `infinity` and years past 9999 read as NULL: sqlx's decoding panics on them.
    fn readable_time(column: &str) -> String {
        format!(
            "CASE WHEN {column} >= '0001-01-01' AND {column} < '10000-01-01' THEN {column} END AS {column}"
        )
    }

    fn seconds_since(column: &str) -> String {
        // Each side on its own: a difference with an infinite time is out of range, an epoch is not.
        format!(
            "CAST(EXTRACT(EPOCH FROM statement_timestamp()) - EXTRACT(EPOCH FROM {column}) AS DOUBLE PRECISION)"
        )
    }

    /// The size of a TOASTed value is read without the value.
    fn byte_length(column: &str) -> String {
        format!("CAST(octet_length({column}) AS BIGINT)")
    }

    fn push_time(query: &mut QueryBuilder<'_, Self>, at: DateTime<Utc>) {
        query.push_bind(at);
    }

    fn push_in_ids(query: &mut QueryBuilder<'_, Self>, ids: &[i64]) {
        query.push("= ANY(");
        query.push_bind(ids.to_vec());
        query.push(")");
    }

    /// The statement's start, not `now()`, which is the transaction's: a claim that waited
    /// inside its transaction for a queue's lock would otherwise record a start from before
    /// the wait, earlier than the finish of the job whose place it took.
    fn push_now(query: &mut QueryBuilder<'_, Self>, _clock: Clock) {
        query.push("statement_timestamp()");
    }

    fn push_shifted(
        query: &mut QueryBuilder<'_, Self>,
        _clock: Clock,
        wait: Duration,
        later: bool,
    ) {
        query.push(if later {
            "(statement_timestamp() + "
        } else {
            "(statement_timestamp() - "
        });
        query.push_bind(micros(wait));
        query.push(" * interval '1 microsecond')");
    }
}

#[async_trait]
impl Backend for Postgres {
    const EXPORT: ExportDialect = EXPORT;
    const UPKEEP: &'static [&'static str] = &["VACUUM (ANALYZE) jobs"];

    async fn migrate(pool: &PgPool) -> Result<()> {
        // Replicas starting together take turns under an advisory lock, taken here rather than
        // by sqlx: sqlx waits inside pg_advisory_lock, and a CREATE INDEX CONCURRENTLY waits for
        // every open transaction to end, that wait among them, which PostgreSQL ends as a
        // deadlock. Polling with pg_try_advisory_lock holds nothing between tries.
        let mut connection = pool.acquire().await?;
        let key = "hashtext('jobsd_migrate.' || current_database())";
        let started = std::time::Instant::now();
        loop {
            let locked: bool = sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({key})"))
                .fetch_one(&mut *connection)
                .await?;
            if locked {
                break;
            }
            if started.elapsed() > MIGRATION_WAIT {
                return Err(sqlx::Error::Protocol(format!(
                    "another replica held the migration lock for over {MIGRATION_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut migrator = sqlx::migrate!("migrations/postgres");
        migrator.set_locking(false);
        let applied = match invalid_indexes::rebuild(&mut connection, &migrator).await {
            Ok(()) => {
                repairs::then_migrate::<Postgres>(&mut connection, &migrator, &repairs::POSTGRES)
                    .await
            }
            Err(error) => Err(error),
        };
        sqlx::query(&format!("SELECT pg_advisory_unlock({key})"))
            .execute(&mut *connection)
            .await?;
        applied?;
        Ok(())
    }

    async fn insert(pool: &PgPool, job: &NewJob, skip_held: bool) -> Result<Option<i64>> {
        let skip = if skip_held {
            skip_held_clause()
        } else {
            String::new()
        };
        sqlx::query_scalar(&format!(
            "INSERT INTO jobs (kind, object_id, sleep, payload, max_attempts, run_at, queue, priority, unique_key) \
             VALUES (COALESCE($1, 'sleep'), $2, $3, $4, COALESCE($5, 1), COALESCE($6, now()), \
             COALESCE($7, 'default'), COALESCE($8, 0), $9){skip} RETURNING id"
        ))
        .bind(&job.kind)
        .bind(job.object_id)
        .bind(job.sleep)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .bind(job.run_at)
        .bind(&job.queue)
        .bind(job.priority)
        .bind(&job.unique_key)
        .fetch_optional(pool)
        .await
    }

    async fn columns(pool: &PgPool, table: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(pool)
        .await
    }

    // Batches of 4 MiB (34,000 rows of 52 bytes) imported 1.3 to 2 times as fast as batches
    // of 1 MiB (bench/csv-import.sh): a transaction costs round trips and a flush to disk.
    const IMPORT_BYTES: usize = 4 * 1024 * 1024;

    async fn insert_rows(connection: &mut PgConnection, batch: &ImportBatch<'_>) -> Result<()> {
        let ImportBatch { table, columns, .. } = *batch;
        // COPY, PostgreSQL's own loader, on the transaction's connection: each text field is read
        // with its column type's input function, and the batch commits with its checkpoint.
        let list = column_list(columns, double_quoted);
        let statement = format!(
            "COPY {} ({list}) FROM STDIN WITH (FORMAT csv, FORCE_NULL ({list}))",
            double_quoted(table)
        );
        let mut copy = connection.copy_in_raw(&statement).await?;
        for piece in copy_csv(batch.rows(), COPY_PIECE_BYTES) {
            // An error drops `copy`, which tells the server to give the COPY up.
            copy.send(piece?).await?;
        }
        // A value the column refuses is reported here, and the transaction rolls back whole.
        copy.finish().await?;
        Ok(())
    }

    async fn insert_many(pool: &PgPool, count: u32, nanos: i64, done: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (sleep, status, finished_at) \
             SELECT $2, CASE WHEN $3 THEN 'DONE' ELSE 'NEW' END, CASE WHEN $3 THEN now() END \
             FROM generate_series(1, $1)",
        )
        .bind(i64::from(count))
        .bind(nanos)
        .bind(done)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn statements(pool: &PgPool) -> Result<Option<u64>> {
        // Every statement jobsd sends runs in a transaction of its own or of a claim's. A
        // backend reports its counts when it exits or idles; this one's are made to count now
        // (PostgreSQL 15 and later).
        let mut connection = pool.acquire().await?;
        let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *connection)
            .await;
        let commits: i64 = sqlx::query_scalar(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut *connection)
        .await?;
        Ok(u64::try_from(commits).ok())
    }

    async fn create_scratch(pool: &PgPool, url: &str, name: &str) -> Result<String> {
        sqlx::query(&format!("CREATE DATABASE {}", double_quoted(name)))
            .execute(pool)
            .await?;
        with_database(url, name)
    }

    async fn drop_scratch(pool: &PgPool, name: &str) -> Result<()> {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            double_quoted(name)
        ))
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn watch(pool: &PgPool, wakes: Wakes, stop: CancellationToken) {
        let mut retry = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match listen(pool, &wakes, &stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "LISTEN failed; polling meanwhile");
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

/// Relays notifications to `wakes` until `stop`, or until the connection fails for good.
async fn listen(pool: &PgPool, wakes: &Wakes, stop: &CancellationToken) -> Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([NEW_JOBS_CHANNEL, CONTROL_CHANNEL, QUEUES_CHANNEL])
        .await?;
    // Anything written while nobody listened is found by one pass of each publisher now.
    wake_all(wakes);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            received = listener.try_recv() => match received? {
                Some(notification) if notification.channel() == CONTROL_CHANNEL => wakes.control.notify_one(),
                Some(notification) if notification.channel() == QUEUES_CHANNEL => {
                    wakes.queues_changed.store(true, std::sync::atomic::Ordering::Relaxed);
                    wakes.new_jobs.notify_one();
                }
                Some(_) => wakes.new_jobs.notify_one(),
                None => {
                    // The listener reconnects on the next call; notifications sent in between are
                    // lost, so each publisher makes one pass as if one had arrived.
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    wake_all(wakes);
                }
            },
        }
    }
}

fn wake_all(wakes: &Wakes) {
    wakes
        .queues_changed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    wakes.new_jobs.notify_one();
    wakes.control.notify_one();
}
