//! Deletes finished rows once they are older than `retain_done` (DONE) or `retain_failed`
//! (FAILED, CANCELLED), so the table does not grow without end. One replica at a time prunes,
//! holding a lease row; small batches with a pause between them keep every statement short and
//! leave room for the claims. A database user that may not delete is told once, and pruning
//! stays off while the daemon runs on.

use std::sync::Arc;
use std::time::Duration;

use super::{Pass, Publisher};
use crate::job::Status;
use crate::replica::Replica;
use crate::store::{Result, is_denied};

/// Rows deleted per statement.
const BATCH: u32 = 1000;

/// Statements per pass at most; a pass that used them all runs again at once.
const BATCHES_PER_PASS: u32 = 20;

/// The pause between two batches.
const BREATHER: Duration = Duration::from_millis(10);

/// The lease's name in `jobsd_leases`.
const LEASE: &str = "pruner";

pub(crate) struct Pruner {
    pub replica: Arc<Replica>,
    /// 0: kept for good.
    pub retain_done: Duration,
    pub retain_failed: Duration,
    /// How long the lease lasts: a few passes, so that a replica that dies gives it up soon.
    pub lease_for: Duration,
    /// Set once the database refused: this user may not prune.
    pub off: bool,
}

impl Pruner {
    /// Turns pruning off for good if `error` is a refusal of rights; otherwise passes it on.
    fn refused(&mut self, error: sqlx::Error) -> Result<Pass> {
        if is_denied(&error) {
            tracing::warn!(%error, "pruning is off: the database user may not delete old rows (grant DELETE on jobs and UPDATE on jobsd_leases, or set retain_done and retain_failed to 0)");
            self.off = true;
            return Ok(Pass::Idle);
        }
        Err(error)
    }
}

impl Publisher for Pruner {
    const NAME: &'static str = "pruner";

    async fn run_once(&mut self) -> Result<Pass> {
        if self.off || (self.retain_done.is_zero() && self.retain_failed.is_zero()) {
            return Ok(Pass::Idle);
        }
        let (store, worker) = (&self.replica.store, &self.replica.worker);
        match store.lease(LEASE, worker, self.lease_for).await {
            Ok(true) => {}
            Ok(false) => return Ok(Pass::Idle),
            Err(error) => return self.refused(error),
        }
        let kinds = [
            (&[Status::Done][..], self.retain_done),
            (&[Status::Failed, Status::Cancelled][..], self.retain_failed),
        ];
        let (mut deleted, mut batches, mut more) = (0, 0, false);
        for (statuses, retain) in kinds {
            if retain.is_zero() {
                continue;
            }
            loop {
                if batches == BATCHES_PER_PASS {
                    more = true;
                    break;
                }
                let gone = match store.prune(statuses, retain, BATCH).await {
                    Ok(gone) => gone,
                    Err(error) => return self.refused(error),
                };
                deleted += gone;
                batches += 1;
                if gone < u64::from(BATCH) {
                    break;
                }
                tokio::time::sleep(BREATHER).await;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "old finished jobs deleted");
        }
        Ok(Pass::full_if(more))
    }
}
