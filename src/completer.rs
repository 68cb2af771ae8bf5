//! Writes the outcomes of finished jobs in batches. A job's task hands its outcome over and
//! frees its slot at once; the completer writes whatever has gathered in one call to the store,
//! and while that write is on its way the next batch gathers. So a lone job waits for no timer,
//! and a busy replica spends one statement on hundreds of jobs instead of one each.
//!
//! Until its outcome is written a job stays RUNNING in the table and held by this replica's
//! worker id, so shutdown waits for the completer before it releases what is left.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::job::Outcome;
use crate::replica::Replica;
use crate::store::is_transient;

/// The most outcomes written by one call: a statement's size stays well inside every
/// database's limits.
pub(crate) const BATCH: usize = 1000;

/// The longest wait between tries while the database does not answer.
const MAX_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Completer {
    pub replica: Arc<Replica>,
}

impl Completer {
    /// Writes outcomes from `outcomes` until every sender is gone and the channel is empty.
    pub async fn run(self, mut outcomes: mpsc::Receiver<(i64, Outcome)>) {
        let mut batch = Vec::with_capacity(BATCH);
        while outcomes.recv_many(&mut batch, BATCH).await > 0 {
            self.record(&batch).await;
            for (id, _) in &batch {
                self.replica.held.finished(*id);
            }
            self.replica.held.slots.outcomes_written();
            batch.clear();
        }
        tracing::debug!("completer stopped");
    }

    /// Writes a batch. While the database is out of reach, it tries again until it answers: a
    /// job that finished must not be run again, nor cancelled as dead, because of an outage.
    /// Meanwhile the dead-jobs pass vouches for these jobs, and the pool claims nothing new once
    /// the channel is full. A batch the database refuses for its data is written one outcome at
    /// a time, so that one row it will never take cannot hold up the others.
    async fn record(&self, batch: &[(i64, Outcome)]) {
        let error = match self.write(batch).await {
            Ok(won) => return self.report(batch, won),
            Err(error) => error,
        };
        if batch.len() > 1 {
            tracing::warn!(jobs = batch.len(), %error, "a batch of outcomes was refused; writing them one by one");
        }
        for outcome in batch {
            let single = std::slice::from_ref(outcome);
            let error = match self.write(single).await {
                Ok(won) => {
                    self.report(single, won);
                    continue;
                }
                Err(error) => error,
            };
            // The database will not take this outcome as it is (a trigger, a constraint of the
            // user's): the job ends FAILED, saying so.
            let id = outcome.0;
            let failed = [(
                id,
                Outcome::Failed {
                    reason: format!(
                        "its outcome could not be stored: {}",
                        crate::in_words(&error.into())
                    ),
                },
            )];
            match self.write(&failed).await {
                Ok(won) => self.report(&failed, won),
                Err(error) => tracing::error!(
                    job = id,
                    %error,
                    "the outcome cannot be stored; the dead-job sweep will settle the job"
                ),
            }
        }
    }

    /// Writes `outcomes` until the database answers: an error back is one of the data.
    async fn write(&self, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>, sqlx::Error> {
        let mut wait = Duration::from_millis(100);
        let replica = &self.replica;
        loop {
            match replica.store.finish(&replica.worker, outcomes).await {
                Err(error) if is_transient(&error) => {
                    tracing::warn!(jobs = outcomes.len(), %error, retry_in = ?wait, "could not record outcomes");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
                done => return done,
            }
        }
    }

    fn report(&self, batch: &[(i64, Outcome)], mut won: Vec<i64>) {
        won.sort_unstable();
        for (id, outcome) in batch {
            if won.binary_search(id).is_err() {
                tracing::info!(job = id, "job was settled elsewhere before it finished");
                continue;
            }
            if let Some(labels) = self.replica.held.labels(*id) {
                self.replica.metrics.finished(&labels, outcome);
            }
            match outcome {
                Outcome::Done => tracing::debug!(job = id, "done"),
                Outcome::Failed { reason } => tracing::warn!(job = id, "failed: {reason}"),
                Outcome::Retry { reason, backoff } => {
                    tracing::warn!(job = id, retry_in = ?backoff, "failed: {reason}")
                }
            }
        }
    }
}
