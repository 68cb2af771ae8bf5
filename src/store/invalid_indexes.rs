//! PostgreSQL's indexes on `jobs` are built with `CREATE INDEX CONCURRENTLY IF NOT EXISTS`, so
//! that a migration never blocks writes to a live table. A build that fails part-way (a
//! deploy that kills the pod, a `statement_timeout`, a cancel) leaves an INVALID index of its
//! name, which PostgreSQL maintains but never reads. On the next start IF NOT EXISTS takes it
//! for built and sqlx records the migration as applied: the claim, or a unique key, would go
//! without its index for good. So before the migrator, under the migration lock, an INVALID
//! index that one of this build's migrations builds is dropped and built again by that
//! migration's own text: by the migrator when the migration is still pending, else here.
//!
//! Under the lock no other replica builds an index, so an INVALID one is a failed build, not
//! one under way: a build whose session still runs holds the lock until it ends.

use sqlx::PgConnection;
use sqlx::migrate::{Migrate, Migrator};

use super::Result;

/// Drops and builds again every INVALID index on `jobs` that a migration of `migrator` builds.
pub(super) async fn rebuild(connection: &mut PgConnection, migrator: &Migrator) -> Result<()> {
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT index.relname FROM pg_index JOIN pg_class index ON index.oid = pg_index.indexrelid \
         WHERE pg_index.indrelid = to_regclass('jobs') AND NOT pg_index.indisvalid",
    )
    .fetch_all(&mut *connection)
    .await?;
    if invalid.is_empty() {
        return Ok(());
    }
    // sqlx's own records, read as its migrator reads them (the table made first if missing).
    connection.ensure_migrations_table().await?;
    let applied: Vec<i64> = connection
        .list_applied_migrations()
        .await?
        .iter()
        .map(|migration| migration.version)
        .collect();
    // Each failed index, and the text that builds it when the migrator will not.
    let failed: Vec<(String, Option<String>)> = migrator
        .iter()
        .filter_map(|migration| {
            let name = built_by(&migration.sql)?;
            invalid.iter().any(|index| index == name).then(|| {
                let again = applied
                    .contains(&migration.version)
                    .then(|| migration.sql.to_string());
                (name.to_owned(), again)
            })
        })
        .collect();
    for (name, again) in failed {
        tracing::warn!(
            index = name,
            "a build of this index failed and left it INVALID; building it again"
        );
        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {name}");
        // Text without arguments goes as a simple query: CONCURRENTLY refuses a transaction.
        sqlx::Executor::execute(&mut *connection, drop.as_str()).await?;
        if let Some(again) = again {
            sqlx::Executor::execute(&mut *connection, again.as_str()).await?;
        }
    }
    Ok(())
}

/// The index a migration's text builds concurrently, if it builds one.
fn built_by(sql: &str) -> Option<&str> {
    let (_, rest) = sql.split_once("INDEX CONCURRENTLY IF NOT EXISTS ")?;
    rest.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_concurrent_build_names_its_index() {
        let migrator = sqlx::migrate!("migrations/postgres");
        let built: Vec<&str> = migrator
            .iter()
            .filter_map(|migration| built_by(&migration.sql))
            .collect();
        assert_eq!(
            built,
            [
                "jobs_claim_order_idx",
                "jobs_queue_claim_idx",
                "jobs_unique_key_idx",
                "jobs_schedule_slot_idx",
                "jobs_finished_idx",
            ]
        );
        assert_eq!(
            built_by("DROP INDEX CONCURRENTLY IF EXISTS jobs_claim_idx;"),
            None
        );
    }
}
