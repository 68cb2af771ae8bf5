//! Migrations are never edited after a release: sqlx records the SHA-384 of each migration it
//! applies and refuses to go on (`VersionMismatch`) once a file's text no longer matches. These
//! are the ones that were: release 7aa111e shipped three migration files whose text changed
//! afterwards, so that a database it migrated could not be migrated by any later build. Each
//! [`Repair`] names the text that release shipped, by its checksum, and the steps that bring such
//! a database to what the current text makes; then the record takes the current checksum, from
//! the migrations embedded in the binary, and sqlx goes on as on any other database. On MariaDB
//! that release could not even apply its own schedules migration, and left it recorded as
//! failed: that record is removed, so that the migration runs again once the repair before it
//! made it possible.
//!
//! A dialect's `migrate` runs [`then_migrate`] on the connection that holds the migration lock,
//! before sqlx's own migrator. A database with the current checksum, or without the migration
//! yet, is left alone: a repair applies to the record that release left only, read from
//! `_sqlx_migrations`, never guessed from the schema. On PostgreSQL each repair is one
//! transaction. MySQL commits every DDL statement on its own, so there each step checks first
//! whether it is still to do, and a repair stopped part-way (a crash, a lost connection) is
//! finished by the next `jobsd migrate`: the record changes last.

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{ColumnIndex, Connection, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::Result;

/// A migration that release 7aa111e recorded as other than the current text says.
pub(super) struct Repair {
    pub version: i64,
    pub found: Found,
    /// What the repair changes, in words, for the log.
    pub change: &'static str,
    /// What brings a database of that release to the schema the current text makes.
    pub steps: &'static [Step],
}

/// The record a repair applies to.
pub(super) enum Found {
    /// Applied, from the text whose SHA-384 is this (hex): the steps bring the schema to what
    /// the current text makes, and the record takes the current text's checksum.
    Edited(&'static str),
    /// Recorded as failed (`success` false), from the current text, and none of it applied: the
    /// record is removed once the steps are done, and sqlx applies the migration again. The
    /// query counts what of the migration is in the database; the record stays unless it is 0.
    Failed { applied: &'static str },
}

/// One statement of a repair, run when `when` says there is something for it to do.
pub(super) struct Step {
    pub when: When,
    pub sql: &'static str,
}

/// Whether a step runs, from a query that counts something in the database.
pub(super) enum When {
    Always,
    Any(&'static str),
    None(&'static str),
}

/// The repairs of a dialect, in the order of their migrations.
pub(super) struct Repairs {
    /// Each repair is one transaction: the database's DDL is transactional (PostgreSQL).
    /// Without, every step checks itself and may run again after a crash.
    pub transactional: bool,
    pub list: &'static [Repair],
}

/// A time every replica can hold, as the migrations of PostgreSQL check it.
macro_rules! in_range {
    ($column:literal) => {
        concat!($column, " BETWEEN '1970-01-01' AND '9999-12-31'")
    };
}

/// PostgreSQL: two CHECKs added to the text of two migrations, refusing times no replica can
/// hold. A row of that release may hold one: it is moved into range first, as the comments say.
pub(super) const POSTGRES: Repairs = Repairs {
    transactional: true,
    list: &[
        Repair {
            version: 20261203000001,
            found: Found::Edited(
                "469a73c0ead8472f7904acea6474cf7a851cc6f56ad36e94d8a977baac8d4c81d3638ef6fbca8f6ef3a644e644f52ea8",
            ),
            change: "queues.next_start_at out of range set to NULL, queues_next_start_check added",
            steps: &[
                // NULL is no reservation: the queue's next start is now, paced by its rate from
                // there. A replica of that release could not read 'infinity' and took it for
                // NULL; a year past 9999 kept the queue from ever starting a job.
                Step {
                    when: When::Always,
                    sql: concat!(
                        "UPDATE queues SET next_start_at = NULL WHERE NOT (",
                        in_range!("next_start_at"),
                        ")"
                    ),
                },
                Step {
                    when: When::None(
                        "SELECT COUNT(*) FROM pg_constraint \
                         WHERE conrelid = 'queues'::regclass AND conname = 'queues_next_start_check'",
                    ),
                    sql: concat!(
                        "ALTER TABLE queues ADD CONSTRAINT queues_next_start_check CHECK (",
                        in_range!("next_start_at"),
                        ")"
                    ),
                },
            ],
        },
        Repair {
            version: 20261204000003,
            found: Found::Edited(
                "82238adadce7fa2f78d0e1cd39fef9700594f46233b7de8a0b99cfaa4b40e5566aad6da8fb44a5b8bf16afae788f5a5e",
            ),
            change: "schedules' times out of range moved, schedules_times_check added",
            steps: &[
                // A new schedule's first slot is the first after `created_at`: from now on.
                Step {
                    when: When::Always,
                    sql: concat!(
                        "UPDATE schedules SET created_at = now() WHERE NOT (",
                        in_range!("created_at"),
                        ")"
                    ),
                },
                // A NULL cursor is one the next pass of any replica computes again
                // (`schedule::plan`): the first slot after `last_run_at` (or `created_at`), with
                // the missed ones as `catch_up` says. `last_run_at` is read only then, and a slot
                // that has its job already is skipped by the unique (schedule, scheduled_for)
                // index, so no slot gets a second job. A replica of that release could not read
                // the row at all ('infinity') or never found a slot due (a year past 9999): such
                // a schedule inserted nothing, and now resumes.
                Step {
                    when: When::Always,
                    sql: concat!(
                        "UPDATE schedules SET next_run_at = NULL WHERE NOT (",
                        in_range!("next_run_at"),
                        ")"
                    ),
                },
                Step {
                    when: When::Always,
                    sql: concat!(
                        "UPDATE schedules SET last_run_at = NULL WHERE NOT (",
                        in_range!("last_run_at"),
                        ")"
                    ),
                },
                Step {
                    when: When::None(
                        "SELECT COUNT(*) FROM pg_constraint \
                         WHERE conrelid = 'schedules'::regclass AND conname = 'schedules_times_check'",
                    ),
                    sql: concat!(
                        "ALTER TABLE schedules ADD CONSTRAINT schedules_times_check CHECK (\n        ",
                        in_range!("created_at"),
                        "\n        AND (next_run_at IS NULL OR ",
                        in_range!("next_run_at"),
                        ")\n        AND (last_run_at IS NULL OR ",
                        in_range!("last_run_at"),
                        "))"
                    ),
                },
            ],
        },
    ],
};

/// `jobs.unique_live` as that release made it: an indexed generated column.
const GENERATED_UNIQUE_LIVE: &str = "SELECT COUNT(*) FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs' AND COLUMN_NAME = 'unique_live' \
     AND COALESCE(GENERATION_EXPRESSION, '') <> ''";

/// [`GENERATED_UNIQUE_LIVE`], while its index is still there.
const INDEXED_GENERATED_UNIQUE_LIVE: &str = "SELECT COUNT(*) FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs' AND COLUMN_NAME = 'unique_live' \
     AND COALESCE(GENERATION_EXPRESSION, '') <> '' \
     AND EXISTS (SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
     AND TABLE_NAME = 'jobs' AND INDEX_NAME = 'jobs_unique_live_idx')";

/// The unique index on `jobs.unique_live`.
const UNIQUE_LIVE_INDEX: &str = "SELECT COUNT(*) FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs' AND INDEX_NAME = 'jobs_unique_live_idx'";

/// MySQL and MariaDB: `unique_live` became a plain column kept by triggers. Every step checks
/// the schema first (MySQL 8 has no DROP INDEX or DROP COLUMN IF EXISTS): each may run again.
pub(super) const MYSQL: Repairs = Repairs {
    transactional: false,
    list: &[
        Repair {
            version: 20261204000001,
            found: Found::Edited(
                "b5ff681205706adb664582f63057c7c438a812a1e2ff90365bfd054fdcc3bb0a57c289bb569500165702c69f5a91be1e",
            ),
            change: "jobs.unique_live made a plain column kept by triggers",
            steps: &[
                // From here until the new index is built, nothing refuses a second live job
                // with a key (seconds, on millions of rows). Should one be written meanwhile,
                // the index build fails on it, and `jobsd migrate` says so until one of the
                // two jobs has finished.
                Step {
                    when: When::Any(INDEXED_GENERATED_UNIQUE_LIVE),
                    sql: "ALTER TABLE jobs DROP INDEX jobs_unique_live_idx",
                },
                Step {
                    when: When::Any(GENERATED_UNIQUE_LIVE),
                    sql: "ALTER TABLE jobs DROP COLUMN unique_live",
                },
                // At the end of the table, where a fresh database has it after `unique_key`:
                // MySQL before 8.0.29 adds a column instantly only at the end.
                Step {
                    when: When::None(
                        "SELECT COUNT(*) FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs' AND COLUMN_NAME = 'unique_live'",
                    ),
                    sql: "ALTER TABLE jobs ADD COLUMN unique_live VARBINARY(1020) NULL, ALGORITHM = INSTANT",
                },
                // The triggers as the migration creates them, character for character.
                Step {
                    when: When::Always,
                    sql: "DROP TRIGGER IF EXISTS jobs_unique_live_insert",
                },
                Step {
                    when: When::Always,
                    sql: "CREATE TRIGGER jobs_unique_live_insert BEFORE INSERT ON jobs FOR EACH ROW\n    \
                          SET NEW.unique_live = CASE WHEN NEW.status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED') THEN CAST(NEW.unique_key AS BINARY) END",
                },
                Step {
                    when: When::Always,
                    sql: "DROP TRIGGER IF EXISTS jobs_unique_live_update",
                },
                Step {
                    when: When::Always,
                    sql: "CREATE TRIGGER jobs_unique_live_update BEFORE UPDATE ON jobs FOR EACH ROW\n    \
                          SET NEW.unique_live = CASE WHEN NEW.status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED') THEN CAST(NEW.unique_key AS BINARY) END",
                },
                // Rows written before the triggers; those written since have it already.
                Step {
                    when: When::Always,
                    sql: "UPDATE jobs SET unique_live = CAST(unique_key AS BINARY) \
                          WHERE unique_key IS NOT NULL AND status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED') \
                          AND unique_live IS NULL",
                },
                Step {
                    when: When::None(UNIQUE_LIVE_INDEX),
                    sql: "ALTER TABLE jobs ADD UNIQUE INDEX jobs_unique_live_idx (unique_live), \
                          ALGORITHM = INPLACE, LOCK = NONE",
                },
            ],
        },
        // On MariaDB that release could not apply its schedules migration: MariaDB adds no
        // column instantly to a table with an indexed virtual column (the old `unique_live`),
        // and the migration's first statement, refused, left the record failed and nothing
        // else. With the column repaired above it applies; sqlx would call the database dirty.
        Repair {
            version: 20261204000003,
            found: Found::Failed {
                applied: "SELECT CAST(\
                    (SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                     AND TABLE_NAME = 'jobs' AND COLUMN_NAME IN ('schedule', 'scheduled_for')) \
                    + (SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
                     AND TABLE_NAME = 'jobs' AND INDEX_NAME = 'jobs_schedule_slot_idx') \
                    + (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
                     AND TABLE_NAME = 'schedules') AS SIGNED)",
            },
            change: "its failed record removed, so that the schedules migration runs again",
            steps: &[],
        },
    ],
};

/// Applies the `repairs` a database needs, then `migrator`'s pending migrations, on the
/// connection that holds the migration lock.
pub(super) async fn then_migrate<DB>(
    connection: &mut DB::Connection,
    migrator: &Migrator,
    repairs: &Repairs,
) -> Result<()>
where
    DB: Database,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a, 'q> DB::Arguments<'a>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    // What sqlx's migrator does first: on a new database the records' table is made here.
    connection.ensure_migrations_table().await?;
    for repair in repairs.list {
        let current = migrator
            .iter()
            .find(|migration| {
                migration.version == repair.version && migration.migration_type.is_up_migration()
            })
            .map(|migration| migration.checksum.to_vec())
            .ok_or_else(|| {
                sqlx::Error::Protocol(format!(
                    "the repair of migration {} names no migration of this build",
                    repair.version
                ))
            })?;
        let mut record =
            sqlx::QueryBuilder::<DB>::new("SELECT checksum FROM _sqlx_migrations WHERE version = ");
        record.push_bind(repair.version);
        record.push(match repair.found {
            Found::Edited(_) => " AND success",
            Found::Failed { .. } => " AND NOT success",
        });
        let recorded: Option<Vec<u8>> = record
            .build_query_scalar()
            .fetch_optional(&mut *connection)
            .await?;
        let due = recorded.is_some_and(|recorded| match repair.found {
            Found::Edited(shipped) => hex(&recorded) == shipped,
            Found::Failed { .. } => recorded == current,
        });
        if !due {
            continue;
        }
        let repaired = if repairs.transactional {
            let mut transaction = connection.begin().await?;
            let repaired = apply::<DB>(&mut transaction, repair, current).await?;
            transaction.commit().await?;
            repaired
        } else {
            apply::<DB>(connection, repair, current).await?
        };
        if repaired {
            tracing::info!(
                migration = repair.version,
                "repaired a migration as release 7aa111e left it: {}",
                repair.change
            );
        } else {
            tracing::warn!(
                migration = repair.version,
                "migration {} is recorded as failed and part of it is in the database: \
                 finish or undo it by hand, then delete its row from _sqlx_migrations",
                repair.version
            );
        }
    }
    migrator.run_direct(connection).await?;
    Ok(())
}

/// Runs `repair`'s steps and rewrites its record to `current`, the checksum of the migration's
/// text in this build. False: a failed migration turned out to be partly applied, and nothing
/// was done.
async fn apply<DB>(
    connection: &mut DB::Connection,
    repair: &Repair,
    current: Vec<u8>,
) -> Result<bool>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a, 'q> DB::Arguments<'a>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    for step in repair.steps {
        let runs = match step.when {
            When::Always => true,
            When::Any(count) => counted::<DB>(connection, count).await? > 0,
            When::None(count) => counted::<DB>(connection, count).await? == 0,
        };
        if runs {
            connection.execute(step.sql).await?;
        }
    }
    let mut record = match repair.found {
        Found::Edited(_) => {
            let mut update =
                sqlx::QueryBuilder::<DB>::new("UPDATE _sqlx_migrations SET checksum = ");
            update.push_bind(current);
            update.push(" WHERE success AND version = ");
            update.push_bind(repair.version);
            update
        }
        Found::Failed { applied } => {
            if counted::<DB>(connection, applied).await? != 0 {
                return Ok(false);
            }
            let mut delete = sqlx::QueryBuilder::<DB>::new(
                "DELETE FROM _sqlx_migrations WHERE NOT success AND version = ",
            );
            delete.push_bind(repair.version);
            delete
        }
    };
    record.build().execute(&mut *connection).await?;
    Ok(true)
}

/// The count a step's query returns.
async fn counted<DB>(connection: &mut DB::Connection, count: &'static str) -> Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a, 'q> DB::Arguments<'a>: IntoArguments<'q, DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    sqlx::query_scalar(count).fetch_one(connection).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialects() -> [(&'static Repairs, Migrator); 2] {
        [
            (&POSTGRES, sqlx::migrate!("migrations/postgres")),
            (&MYSQL, sqlx::migrate!("migrations/mysql")),
        ]
    }

    /// Runs of white space as one space.
    fn words(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn every_repair_names_a_migration_of_this_build_and_another_text() {
        for (repairs, migrator) in dialects() {
            for repair in repairs.list {
                let migration = migrator
                    .iter()
                    .find(|migration| migration.version == repair.version)
                    .expect("the repaired migration is embedded");
                if let Found::Edited(shipped) = repair.found {
                    assert_eq!(shipped.len(), 96, "{}: a SHA-384 in hex", repair.version);
                    assert_ne!(hex(&migration.checksum), shipped, "{}", repair.version);
                }
            }
        }
    }

    /// What a repair adds is what the migration's current text makes: each constraint, column
    /// and index as the file writes it, each trigger character for character (MySQL keeps a
    /// trigger's text).
    #[test]
    fn the_repairs_add_what_the_current_files_make() {
        let mut checked = 0;
        for (repairs, migrator) in dialects() {
            for repair in repairs.list {
                let file = &migrator
                    .iter()
                    .find(|migration| migration.version == repair.version)
                    .expect("the repaired migration is embedded")
                    .sql;
                for step in repair.steps {
                    if step.sql.starts_with("CREATE TRIGGER") {
                        assert!(file.contains(&format!("{};", step.sql)), "{}", step.sql);
                        checked += 1;
                    } else if let Some((_, added)) = step
                        .sql
                        .strip_prefix("ALTER TABLE ")
                        .and_then(|alter| alter.split_once(" ADD "))
                    {
                        assert!(words(file).contains(&words(added)), "{added}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(
            checked, 6,
            "two CHECKs, a column, two triggers and an index"
        );
    }

    #[test]
    fn checksums_are_written_as_sha384sum_writes_them() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
