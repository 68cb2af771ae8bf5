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
            batch.clear();
        }
        tracing::debug!("completer stopped");
    }

    /// Writes a batch, trying again until the database answers: a job that finished must not
    /// be run again, nor cancelled as dead, because of an outage. Meanwhile the dead-jobs pass
    /// vouches for these jobs, and the pool claims nothing new once the channel is full.
    async fn record(&self, batch: &[(i64, Outcome)]) {
        let mut wait = Duration::from_millis(100);
        let replica = &self.replica;
        loop {
            match replica.store.finish(&replica.worker, batch).await {
                Ok(mut won) => {
                    won.sort_unstable();
                    for (id, outcome) in batch {
                        if won.binary_search(id).is_err() {
                            tracing::info!(
                                job = id,
                                "job was settled elsewhere before it finished"
                            );
                            continue;
                        }
                        match outcome {
                            Outcome::Done => tracing::debug!(job = id, "done"),
                            Outcome::Failed { reason } => {
                                tracing::warn!(job = id, "failed: {reason}")
                            }
                            Outcome::Retry { reason, backoff } => {
                                tracing::warn!(job = id, retry_in = ?backoff, "failed: {reason}")
                            }
                        }
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(jobs = batch.len(), %error, retry_in = ?wait, "could not record outcomes");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
            }
        }
    }
}
