//! Upgrades from release 7aa111e, three of whose migration files were edited after it shipped
//! (`src/store/repairs.rs`). Each test empties its database and migrates it as that release
//! did, with its files as they shipped (`tests/fixtures/migrations-7aa111e/`), writes rows its
//! users could have written, and runs the real `jobsd migrate`. The database must end with this build's
//! records and schema (as this build's migrations made it on the same database, before the
//! test emptied it), the rows brought into it, and the new checks and triggers at work; a
//! second `jobsd migrate` must change nothing. Everything is read back from the database.

use std::borrow::Cow;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Connection, Executor, MySqlConnection, PgConnection};

use crate::common::{Backend, TestDb};

crate::on_backend!(
    Postgres,
    postgres: a_database_of_7aa111e_gets_the_time_checks_added_since,
    an_index_whose_build_failed_is_built_again_by_the_next_migrate,
);
crate::on_backend!(
    Mysql,
    mysql: a_database_of_7aa111e_gets_unique_live_kept_by_triggers,
    a_repair_stopped_part_way_is_finished_by_the_next_migrate,
);

/// The migrations whose text changed after that release shipped them, by dialect.
const EDITED_POSTGRES: [i64; 2] = [20261203000001, 20261204000003];
const EDITED_MYSQL: [i64; 1] = [20261204000001];

/// The MySQL migration that MariaDB refused in that release.
const MYSQL_SCHEDULES: i64 = 20261204000003;

/// That release's migration files for `dialect`, as it shipped them, read as it read them
/// (it took the migration lock itself).
async fn shipped(dialect: &str) -> Migrator {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrations-7aa111e")
        .join(dialect);
    let mut migrator = Migrator::new(folder)
        .await
        .expect("the shipped migrations read");
    migrator.set_locking(false);
    migrator
}

/// The records of this build's migrations: what every database should end with.
fn current(backend: Backend) -> Vec<(i64, Vec<u8>, bool)> {
    made_by(&match backend {
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        Backend::Mysql => sqlx::migrate!("migrations/mysql"),
        Backend::Sqlite => unreachable!("SQLite's migrations were not edited"),
    })
}

/// The records `migrator` leaves (version, checksum, success), in order.
fn made_by(migrator: &Migrator) -> Vec<(i64, Vec<u8>, bool)> {
    migrator
        .iter()
        .map(|migration| (migration.version, migration.checksum.to_vec(), true))
        .collect()
}

/// The versions whose records differ from this build's migrations.
fn edited(records: &[(i64, Vec<u8>, bool)], backend: Backend) -> Vec<i64> {
    let current = current(backend);
    records
        .iter()
        .filter(|record| !current.contains(record))
        .map(|(version, _, _)| *version)
        .collect()
}

/// Runs `jobsd migrate` on `db` as a user would, expects exit 0, and returns what it printed.
async fn jobsd_migrate(db: &TestDb) -> String {
    let folder = tempfile::tempdir().expect("folder");
    let mut command = crate::common::bare_jobsd(folder.path());
    command
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let done = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("jobsd migrate exits within two minutes")
        .expect("jobsd starts");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        done.status.success(),
        "jobsd migrate exits 0: {:?}\n{printed}",
        done.status
    );
    printed
}

/// The log lines that say a repair was applied.
fn repairs_logged(printed: &str) -> usize {
    printed
        .lines()
        .filter(|line| line.contains("INFO") && line.contains("repaired a migration"))
        .count()
}

/// The schema this build's migrations made on `db` (each test starts on a database the suite
/// migrated), then `db` emptied for the test to migrate as that release did.
async fn fresh_schema_then_empty(db: &TestDb) -> Vec<String> {
    let fresh = schema(db).await;
    crate::reliability::empty(db).await;
    fresh
}

/// Every column (by table and name, not position), index, constraint and trigger of `db`,
/// one line each, sorted.
async fn schema(db: &TestDb) -> Vec<String> {
    let listing = match db.backend {
        Backend::Postgres => {
            "SELECT 'column ' || table_name || ' ' || column_name || ' ' || data_type || ' ' \
                 || is_nullable || ' ' || COALESCE(column_default, '-') \
             FROM information_schema.columns WHERE table_schema = current_schema() \
             UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' \
                 || pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE connamespace = current_schema()::regnamespace \
             UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = current_schema() \
             UNION ALL SELECT 'trigger ' || tgrelid::regclass::text || ' ' || pg_get_triggerdef(oid) \
             FROM pg_trigger WHERE NOT tgisinternal \
             ORDER BY 1"
        }
        Backend::Mysql => {
            "SELECT CONVERT(CONCAT_WS(' ', 'column', TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, \
                 COALESCE(COLUMN_DEFAULT, '-'), EXTRA, COALESCE(GENERATION_EXPRESSION, '')) USING utf8mb4) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             UNION ALL SELECT CONVERT(CONCAT_WS(' ', 'index', TABLE_NAME, INDEX_NAME, NON_UNIQUE, \
                 SEQ_IN_INDEX, COLUMN_NAME) USING utf8mb4) \
             FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             UNION ALL SELECT CONVERT(CONCAT_WS(' ', 'constraint', TABLE_NAME, CONSTRAINT_NAME, \
                 CHECK_CLAUSE) USING utf8mb4) \
             FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() \
             UNION ALL SELECT CONVERT(CONCAT_WS(' ', 'trigger', EVENT_OBJECT_TABLE, TRIGGER_NAME, \
                 ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT, SQL_MODE) USING utf8mb4) \
             FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() \
             ORDER BY 1"
        }
        Backend::Sqlite => unreachable!("SQLite's migrations were not edited"),
    };
    // The drivers' own connections: sqlx's Any driver takes MySQL's TEXT for bytes.
    let listed = if db.backend == Backend::Postgres {
        let mut connection = PgConnection::connect(&db.url).await.expect("connects");
        sqlx::query_scalar(listing).fetch_all(&mut connection).await
    } else {
        let mut connection = MySqlConnection::connect(&db.url).await.expect("connects");
        sqlx::query_scalar(listing).fetch_all(&mut connection).await
    };
    listed.expect("schema listed")
}

// === PostgreSQL ===

async fn pg_records(connection: &mut PgConnection) -> Vec<(i64, Vec<u8>, bool)> {
    sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(connection)
        .await
        .expect("records read")
}

/// The constraint that refused `update`.
async fn refused_by(connection: &mut PgConnection, update: &str) -> Option<String> {
    let refused = connection
        .execute(update)
        .await
        .expect_err("the UPDATE is refused");
    refused
        .as_database_error()
        .and_then(|error| error.constraint())
        .map(str::to_owned)
}

async fn a_database_of_7aa111e_gets_the_time_checks_added_since(db: TestDb) {
    let fresh = fresh_schema_then_empty(&db).await;
    let mut connection = PgConnection::connect(&db.url).await.expect("connects");
    let release = shipped("postgres").await;
    release
        .run_direct(&mut connection)
        .await
        .expect("that release's migrations apply");
    let records = pg_records(&mut connection).await;
    assert_eq!(records, made_by(&release));
    assert_eq!(edited(&records, db.backend), EDITED_POSTGRES);

    // Times that release let in beside times in range, which the repair leaves as they are.
    connection
        .execute(
            "INSERT INTO queues (name, rate_per_second, next_start_at) VALUES \
             ('ahead', 1, 'infinity'), ('behind', 1, '-infinity'), ('far', 1, '20000-01-01'), \
             ('kept', 1, '2030-01-01T00:00:00Z'), ('unset', 1, NULL)",
        )
        .await
        .expect("queues of that release");
    connection
        .execute(
            "INSERT INTO schedules (name, cron, created_at, next_run_at, last_run_at) VALUES \
             ('lost', '0 0 * * *', '-infinity', 'infinity', '1900-01-01'), \
             ('kept', '0 0 * * *', '2026-01-01T00:00:00Z', '2026-01-03T00:00:00Z', '2026-01-02T00:00:00Z')",
        )
        .await
        .expect("schedules of that release");

    let printed = jobsd_migrate(&db).await;
    assert_eq!(repairs_logged(&printed), 2, "one line a repair: {printed}");
    assert_eq!(pg_records(&mut connection).await, current(db.backend));
    assert_eq!(schema(&db).await, fresh);

    let queues: Vec<(String, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT name, next_start_at FROM queues ORDER BY name")
            .fetch_all(&mut connection)
            .await
            .expect("queues read");
    let kept: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().expect("a time");
    assert_eq!(
        queues,
        [
            ("ahead".to_owned(), None),
            ("behind".to_owned(), None),
            ("far".to_owned(), None),
            ("kept".to_owned(), Some(kept)),
            ("unset".to_owned(), None),
        ]
    );
    type Schedule = (
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
    );
    let schedules: Vec<Schedule> = sqlx::query_as(
        "SELECT name, created_at, next_run_at, last_run_at, now() FROM schedules ORDER BY name",
    )
    .fetch_all(&mut connection)
    .await
    .expect("schedules read");
    let time = |text: &str| -> DateTime<Utc> { text.parse().expect("a time") };
    let [kept, lost] = schedules.as_slice() else {
        panic!("two schedules: {schedules:?}");
    };
    assert_eq!(
        (&kept.0, kept.1, kept.2, kept.3),
        (
            &"kept".to_owned(),
            time("2026-01-01T00:00:00Z"),
            Some(time("2026-01-03T00:00:00Z")),
            Some(time("2026-01-02T00:00:00Z"))
        ),
        "times in range stay"
    );
    let (name, created, next, last, now) = lost;
    assert_eq!(name, "lost");
    assert!(
        *created <= *now && *now - *created < chrono::TimeDelta::minutes(5),
        "created_at is the repair's time: {created}"
    );
    assert_eq!((*next, *last), (None, None), "the cursor is computed again");

    assert_eq!(
        refused_by(
            &mut connection,
            "UPDATE queues SET next_start_at = 'infinity' WHERE name = 'kept'"
        )
        .await
        .as_deref(),
        Some("queues_next_start_check")
    );
    assert_eq!(
        refused_by(
            &mut connection,
            "UPDATE schedules SET next_run_at = 'infinity' WHERE name = 'kept'"
        )
        .await
        .as_deref(),
        Some("schedules_times_check")
    );

    let printed = jobsd_migrate(&db).await;
    assert_eq!(
        repairs_logged(&printed),
        0,
        "nothing left to repair: {printed}"
    );
    assert_eq!(pg_records(&mut connection).await, current(db.backend));
    connection.close().await.expect("closes");
}

// === MySQL and MariaDB ===

async fn my_records(connection: &mut MySqlConnection) -> Vec<(i64, Vec<u8>, bool)> {
    sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(connection)
        .await
        .expect("records read")
}

/// A user's INSERT of a job holding `key`: its id, or the database's refusal.
async fn insert_keyed(connection: &mut MySqlConnection, key: &str) -> Result<i64, sqlx::Error> {
    inserted(
        sqlx::query("INSERT INTO jobs (sleep, unique_key) VALUES (1, ?)")
            .bind(key)
            .execute(connection)
            .await,
    )
}

/// The id an INSERT gave its row.
fn inserted(done: Result<sqlx::mysql::MySqlQueryResult, sqlx::Error>) -> Result<i64, sqlx::Error> {
    done.map(|done| i64::try_from(done.last_insert_id()).expect("an id"))
}

/// After `jobsd migrate`: this build's records and schema, every live keyed row's key in
/// `unique_live`, and a key refused while its job is live and free once it is DONE. `live` is
/// the id of a live job holding "nightly"; `rows` what `unique_live` should hold, by id.
async fn holds_keys_as_this_build(
    db: &TestDb,
    fresh: &[String],
    connection: &mut MySqlConnection,
    live: i64,
    rows: &[(i64, Option<&str>)],
) {
    assert_eq!(my_records(connection).await, current(db.backend));
    assert_eq!(schema(db).await, fresh);

    let held: Vec<(i64, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT id, unique_live FROM jobs ORDER BY id")
            .fetch_all(&mut *connection)
            .await
            .expect("rows read");
    let expected: Vec<(i64, Option<Vec<u8>>)> = rows
        .iter()
        .map(|(id, key)| (*id, key.map(|key| key.as_bytes().to_vec())))
        .collect();
    assert_eq!(held, expected);

    let refused = insert_keyed(connection, "nightly")
        .await
        .expect_err("a second live job with the key is refused");
    assert!(
        refused
            .as_database_error()
            .is_some_and(|error| error.is_unique_violation()),
        "{refused}"
    );
    let done = sqlx::query("UPDATE jobs SET status = 'DONE', finished_at = NOW(6) WHERE id = ?")
        .bind(live)
        .execute(&mut *connection)
        .await
        .expect("the job ends")
        .rows_affected();
    assert_eq!(done, 1);
    insert_keyed(connection, "nightly")
        .await
        .expect("the key is free once its job is DONE");
}

async fn a_database_of_7aa111e_gets_unique_live_kept_by_triggers(db: TestDb) {
    let fresh = fresh_schema_then_empty(&db).await;
    let mut connection = MySqlConnection::connect(&db.url).await.expect("connects");
    let release = shipped("mysql").await;
    // MySQL 8 applies every migration of that release. MariaDB adds no column instantly to
    // a table with an indexed virtual column: the schedules migration's first statement was
    // refused, and its record left failed, which sqlx calls dirty.
    let refused_schedules = match release.run_direct(&mut connection).await {
        Ok(()) => false,
        Err(MigrateError::ExecuteMigration(_, MYSQL_SCHEDULES)) => true,
        Err(error) => panic!("that release's migrations: {error}"),
    };
    let records = my_records(&mut connection).await;
    if refused_schedules {
        let applied = made_by(&release)
            .into_iter()
            .filter(|(version, _, _)| *version < MYSQL_SCHEDULES);
        let failed = made_by(&release)
            .into_iter()
            .filter(|(version, _, _)| *version == MYSQL_SCHEDULES)
            .map(|(version, checksum, _)| (version, checksum, false));
        assert_eq!(records, applied.chain(failed).collect::<Vec<_>>());
    } else {
        assert_eq!(records, made_by(&release));
    }
    assert_eq!(
        edited(&records, db.backend),
        if refused_schedules {
            vec![EDITED_MYSQL[0], MYSQL_SCHEDULES]
        } else {
            EDITED_MYSQL.to_vec()
        }
    );

    let live = insert_keyed(&mut connection, "nightly")
        .await
        .expect("a live keyed job");
    let finished = inserted(
        connection
            .execute(
                "INSERT INTO jobs (sleep, unique_key, status, finished_at) \
                 VALUES (1, 'nightly', 'DONE', NOW(6))",
            )
            .await,
    )
    .expect("a finished job with the key");
    let other = insert_keyed(&mut connection, "Weekly ")
        .await
        .expect("a live job with another key");
    let keyless = inserted(
        connection
            .execute("INSERT INTO jobs (sleep) VALUES (1)")
            .await,
    )
    .expect("a job without a key");

    let printed = jobsd_migrate(&db).await;
    assert_eq!(
        repairs_logged(&printed),
        if refused_schedules { 2 } else { 1 },
        "one line a repair: {printed}"
    );
    holds_keys_as_this_build(
        &db,
        &fresh,
        &mut connection,
        live,
        &[
            (live, Some("nightly")),
            (finished, None),
            (other, Some("Weekly ")),
            (keyless, None),
        ],
    )
    .await;

    let printed = jobsd_migrate(&db).await;
    assert_eq!(
        repairs_logged(&printed),
        0,
        "nothing left to repair: {printed}"
    );
    assert_eq!(my_records(&mut connection).await, current(db.backend));
    connection.close().await.expect("closes");
}

async fn a_repair_stopped_part_way_is_finished_by_the_next_migrate(db: TestDb) {
    let fresh = fresh_schema_then_empty(&db).await;
    let mut connection = MySqlConnection::connect(&db.url).await.expect("connects");
    // What MySQL 8 made of that release: every migration applied and recorded with the text it
    // shipped. MariaDB refuses the schedules migration's instant column beside the indexed
    // virtual one, so here the server chooses how to add it.
    let release = shipped("mysql").await;
    let mut before = shipped("mysql").await;
    before.migrations = Cow::Owned(
        release
            .iter()
            .filter(|migration| migration.version < MYSQL_SCHEDULES)
            .cloned()
            .collect(),
    );
    before
        .run_direct(&mut connection)
        .await
        .expect("that release's first migrations apply");
    for migration in release
        .iter()
        .filter(|migration| migration.version >= MYSQL_SCHEDULES)
    {
        let sql = migration
            .sql
            .replace("ALGORITHM = INSTANT", "ALGORITHM = DEFAULT");
        connection
            .execute(sql.as_str())
            .await
            .expect("that release's later migrations apply");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?, ?, TRUE, ?, 0)",
        )
        .bind(migration.version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .execute(&mut connection)
        .await
        .expect("recorded");
    }
    let records = my_records(&mut connection).await;
    assert_eq!(records, made_by(&release));
    assert_eq!(edited(&records, db.backend), EDITED_MYSQL);
    let early = insert_keyed(&mut connection, "nightly")
        .await
        .expect("a live keyed job");

    // A repair stopped after its first steps: the generated column and its index gone, the
    // plain column added, no trigger yet but one of that name with another body (the repair
    // replaces whatever has the name). Meanwhile a job was inserted that nothing gave its key.
    for step in [
        "ALTER TABLE jobs DROP INDEX jobs_unique_live_idx",
        "ALTER TABLE jobs DROP COLUMN unique_live",
        "ALTER TABLE jobs ADD COLUMN unique_live VARBINARY(1020) NULL",
        "CREATE TRIGGER jobs_unique_live_insert BEFORE INSERT ON jobs FOR EACH ROW SET NEW.unique_live = NULL",
    ] {
        connection
            .execute(step)
            .await
            .expect("a step of the repair");
    }
    let late = insert_keyed(&mut connection, "weekly")
        .await
        .expect("a live keyed job");

    let printed = jobsd_migrate(&db).await;
    assert_eq!(repairs_logged(&printed), 1, "one line a repair: {printed}");
    holds_keys_as_this_build(
        &db,
        &fresh,
        &mut connection,
        early,
        &[(early, Some("nightly")), (late, Some("weekly"))],
    )
    .await;

    let printed = jobsd_migrate(&db).await;
    assert_eq!(
        repairs_logged(&printed),
        0,
        "nothing left to repair: {printed}"
    );
    connection.close().await.expect("closes");
}

/// The migration that builds `jobs_finished_idx` concurrently.
const FINISHED_INDEX: i64 = 20261204000011;

/// `jobs_finished_idx` as the migration builds it, and whether PostgreSQL may use it.
async fn finished_index(connection: &mut PgConnection) -> Option<(String, bool)> {
    sqlx::query_as(
        "SELECT pg_get_indexdef(indexrelid), indisvalid FROM pg_index \
         WHERE indexrelid = to_regclass('jobs_finished_idx')",
    )
    .fetch_optional(&mut *connection)
    .await
    .expect("the index looked up")
}

/// Leaves `jobs_finished_idx` as a build that failed part-way leaves it: INVALID. (A unique
/// build over two DONE rows fails at its uniqueness check, after the index exists.)
async fn fail_a_build_of_the_finished_index(connection: &mut PgConnection) {
    connection
        .execute("DROP INDEX jobs_finished_idx")
        .await
        .expect("the built index dropped");
    let failed = connection
        .execute("CREATE UNIQUE INDEX CONCURRENTLY jobs_finished_idx ON jobs (status)")
        .await;
    assert!(failed.is_err(), "the build fails: {failed:?}");
    let (_, valid) = finished_index(connection).await.expect("the index is left");
    assert!(!valid, "the failed build leaves the index INVALID");
}

/// A `CREATE INDEX CONCURRENTLY` cut short leaves an INVALID index of its name, which `IF NOT
/// EXISTS` would take for built. The next `jobsd migrate` builds it again, both when the
/// migration is still pending (the build failed inside it) and when it is recorded as applied
/// (a release that took the INVALID index for built).
async fn an_index_whose_build_failed_is_built_again_by_the_next_migrate(db: TestDb) {
    let mut connection = PgConnection::connect(&db.url).await.expect("connects");
    let (built, _) = finished_index(&mut connection)
        .await
        .expect("the migrations built the index");
    assert!(built.contains("(status, finished_at)"), "{built}");
    connection
        .execute("INSERT INTO jobs (status, finished_at) VALUES ('DONE', now()), ('DONE', now())")
        .await
        .expect("finished rows");

    for pending in [true, false] {
        fail_a_build_of_the_finished_index(&mut connection).await;
        if pending {
            connection
                .execute(
                    format!("DELETE FROM _sqlx_migrations WHERE version = {FINISHED_INDEX}")
                        .as_str(),
                )
                .await
                .expect("the migration made pending");
        }
        let printed = jobsd_migrate(&db).await;
        assert!(printed.contains("building it again"), "{printed}");
        assert_eq!(
            finished_index(&mut connection).await,
            Some((built.clone(), true)),
            "built again as the migration builds it (pending: {pending})"
        );
        let recorded: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE version = $1 AND success",
        )
        .bind(FINISHED_INDEX)
        .fetch_all(&mut connection)
        .await
        .expect("records read");
        assert_eq!(recorded, [FINISHED_INDEX]);
    }
    // Nothing failed since: the next migrate leaves the index alone.
    assert!(!jobsd_migrate(&db).await.contains("building it again"));
}
