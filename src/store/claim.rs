//! The claim, written once for every dialect: what it asks for, the columns it returns, and how
//! each row is decoded on its own, so that one row a user wrote badly never fails the claim of
//! the rows beside it.

use crate::job::ClaimedJob;

use super::Result;

/// What a claim asks for.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub worker: &'a str,
    /// At most this many jobs: the consumer slots free right now.
    pub limit: u32,
    /// Start them in the same write: no rate limit stands between claim and start. A claim
    /// from a queue with a rate of its own never starts them: each waits for its turn.
    pub start: bool,
    /// A `payload`, `progress` or `kind` longer than this many bytes is not fetched; its job
    /// ends FAILED.
    pub max_bytes: u64,
    /// Which queues the jobs may come from.
    pub scope: Scope<'a>,
    /// Whether the `queues` table pauses or limits any queue, as last read. Without, a claim
    /// from the unlimited queues skips looking: the table is read again within
    /// `poll_interval` (at once on PostgreSQL, whose trigger says when it changes).
    pub any_limits: bool,
    /// For a queue's concurrency: a QUEUED or RUNNING job counts while its last sign of life
    /// is younger than this (a dead replica's jobs stop counting).
    pub dead_after: std::time::Duration,
    /// For a queue's rate: starts are reserved at most this far ahead.
    pub ahead: std::time::Duration,
}

/// The queues a claim takes jobs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every queue without a pause or a limit in the `queues` table.
    Unlimited,
    /// Those of the named queues without a pause or a limit (the `queues` setting).
    UnlimitedOf(&'a [String]),
    /// One queue with a limit: its `queues` row is locked, and the claim takes only what the
    /// pause, the concurrency and the rate allow.
    Limited(&'a str),
}

impl<'a> Claim<'a> {
    /// A claim from every unlimited queue, with the default `max_payload_bytes` and
    /// `dead_after`.
    pub fn new(worker: &'a str, limit: u32, start: bool) -> Self {
        Claim {
            worker,
            limit,
            start,
            max_bytes: 1 << 20,
            scope: Scope::Unlimited,
            any_limits: true,
            dead_after: std::time::Duration::from_secs(10),
            ahead: std::time::Duration::from_secs(2),
        }
    }
}

/// One more attempt, saturating: a row a user wrote with `attempts` at the column's maximum
/// must not make the whole statement fail ("out of range") and take the other rows with it.
pub(super) const NEXT_ATTEMPT: &str =
    "attempts = CASE WHEN attempts < 2147483647 THEN attempts + 1 ELSE attempts END";

/// One attempt given back, never below zero (a user may write `attempts = 0` on any row).
pub(super) const ATTEMPT_BACK: &str = "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END";

/// The big text columns a claim fetches only when they fit `max_payload_bytes`, each with its
/// size beside it (`<column>_bytes`), so a huge value is never sent to the replica at all.
pub(super) const GATED: [&str; 3] = ["kind", "payload", "progress"];

/// The other columns a claim returns.
pub(super) const PLAIN: &str = "id, queue, priority, object_id, sleep, attempts, max_attempts";

/// Decodes one claimed row, each on its own. A value that does not decode, or a text over
/// `max_bytes`, makes the job unfit to run rather than failing the claim: the other rows of the
/// batch run.
pub(super) fn claimed<R>(row: &R, max_bytes: u64) -> Result<ClaimedJob>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i16: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    // The id always decodes (an integer key); without it the row could not even be failed.
    let id: i64 = row.try_get("id")?;
    let mut unfit = Vec::new();
    // Each text column with the column of its size beside it (see `claimed_columns`).
    let mut get = |column: &str, size: &str| -> Option<String> {
        let bytes = match row.try_get::<Option<i64>, _>(size) {
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
    let kind = get("kind", "kind_bytes").unwrap_or_default();
    // Always readable (a VARCHAR, or checked text on SQLite); a row that says otherwise still
    // runs in the default queue's place rather than failing.
    let queue: String = row
        .try_get::<Option<String>, _>("queue")
        .ok()
        .flatten()
        .unwrap_or_else(|| "default".to_owned());
    let priority: i16 = row.try_get("priority").unwrap_or_default();
    // Seconds since `run_at`, reckoned by the database (see `Dialect::seconds_since`).
    let waited: Option<f64> = row.try_get("waited").ok();
    let payload = get("payload", "payload_bytes");
    let progress = get("progress", "progress_bytes");
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
        queue,
        priority,
        waited,
        object_id,
        sleep,
        payload,
        progress,
        attempts,
        max_attempts,
        unfit: (!unfit.is_empty()).then(|| unfit.join("; ")),
        wait: None,
    })
}

/// Why `column` cannot be read as `wanted`, in words: the storage type found when the database
/// says which (a SQLite row from before its type checks), else the decoder's own reason.
pub(super) fn unreadable(column: &str, wanted: &str, error: &sqlx::Error) -> String {
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

/// The rows a claim returned, each decoded on its own ([`claimed`]), as [`before_run`] hands
/// them over; `started` says whether the claim started them.
pub(super) fn claimed_rows<R>(
    rows: &[R],
    claim: &Claim<'_>,
    started: bool,
) -> Result<Vec<ClaimedJob>>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i16: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let jobs = rows
        .iter()
        .map(|row| claimed(row, claim.max_bytes))
        .collect::<Result<_>>()?;
    Ok(before_run(jobs, started))
}

/// What a claim returns: `attempts` counted before the run, whether or not the claim started it,
/// oldest first; a job whose attempts were used up before it ran is unfit to run.
pub(super) fn before_run(mut jobs: Vec<ClaimedJob>, started: bool) -> Vec<ClaimedJob> {
    // RETURNING keeps no order; start them in the claim's.
    // The longest waiting first: the earliest run_at.
    jobs.sort_by(|a, b| {
        (a.priority, b.waited.unwrap_or(0.0), a.id)
            .partial_cmp(&(b.priority, a.waited.unwrap_or(0.0), b.id))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
