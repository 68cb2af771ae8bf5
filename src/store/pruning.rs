//! Deleting old finished rows: in small batches, oldest first, never a live row, one replica at
//! a time under a lease row. A big DELETE would lock a huge table for long (one of the peers'
//! users' complaints); a batch of a thousand by an index on (status, finished_at) is quick, and
//! a job inserted meanwhile runs as usual.

use std::time::Duration;

use sqlx::{Encode, QueryBuilder, Type};

use super::statements::{Clock, Dialect, Sql};
use crate::job::Status;

/// `status IN (…)` for `statuses`, which are only ever finished ones (the enum's spellings).
fn finished_in(statuses: &[Status]) -> String {
    let list: Vec<String> = statuses
        .iter()
        .filter(|status| status.is_terminal())
        .map(|status| format!("'{status}'"))
        .collect();
    if list.is_empty() {
        // Nothing finished asked for: a condition no row meets.
        "1 = 0".to_owned()
    } else {
        format!("status IN ({})", list.join(", "))
    }
}

impl<'a, DB> Sql<DB>
where
    DB: Dialect,
    i64: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
    Option<String>: Encode<'a, DB> + Type<DB>,
{
    /// Takes the lease `name` for `holder` until `ttl` from now, if it is free, has lapsed, or is
    /// already `holder`'s (which renews it).
    pub fn take_lease(name: &str, holder: &str, ttl: Duration) -> QueryBuilder<'a, DB> {
        let clock = Clock::now();
        let mut query = QueryBuilder::new("UPDATE jobsd_leases SET until = ");
        DB::push_shifted(&mut query, clock, ttl, true);
        query.push(", holder = ");
        query.push_bind(holder.to_owned());
        query.push(" WHERE name = ");
        query.push_bind(name.to_owned());
        query.push(" AND (holder = ");
        query.push_bind(holder.to_owned());
        query.push(" OR until IS NULL OR until < ");
        DB::push_now(&mut query, clock);
        query.push(")");
        query
    }

    /// The ids of up to `limit` rows in `statuses` that finished more than `older_than` ago,
    /// oldest first; rows another session has locked are skipped, not waited for.
    pub fn old_finished(
        statuses: &[Status],
        older_than: Duration,
        limit: u32,
    ) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("");
        Self::push_old_finished(&mut query, statuses, older_than, limit);
        query
    }

    /// Deletes the rows [`Sql::old_finished`] names, in one statement: for dialects whose
    /// statements may read the table they change.
    pub fn prune(statuses: &[Status], older_than: Duration, limit: u32) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new("DELETE FROM jobs WHERE id IN (");
        Self::push_old_finished(&mut query, statuses, older_than, limit);
        query.push(")");
        query
    }

    /// Deletes the rows `ids` (never empty) that [`Sql::old_finished`] locked, if still finished.
    pub fn delete_finished(statuses: &[Status], ids: &[i64]) -> QueryBuilder<'a, DB> {
        let mut query = QueryBuilder::new(format!(
            "DELETE FROM jobs WHERE {} AND id ",
            finished_in(statuses)
        ));
        DB::push_in_ids(&mut query, ids);
        query
    }

    fn push_old_finished(
        query: &mut QueryBuilder<'a, DB>,
        statuses: &[Status],
        older_than: Duration,
        limit: u32,
    ) {
        query.push(format_args!(
            "SELECT id FROM jobs WHERE {} AND finished_at < ",
            finished_in(statuses)
        ));
        DB::push_shifted(query, Clock::now(), older_than, false);
        query.push(" ORDER BY finished_at LIMIT ");
        query.push_bind(i64::from(limit));
        query.push(DB::SKIP_LOCKED);
    }
}
