//! Settles the dead jobs the dead-jobs publisher finds (ARCHITECTURE.md, "Life of a job"): a job that never started goes
//! back to NEW, one with attempts left is retried after a backoff, any other is CANCELLED. Each
//! settlement is conditional on the job still being dead, so a job that revived, or finished,
//! in the meantime is left alone; a job settled here that this replica runs is stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::job::{DeadJob, Settlement, backoff};
use crate::replica::Replica;

pub(crate) struct Canceller {
    pub replica: Arc<Replica>,
    pub dead_after: Duration,
    pub retry_backoff: Duration,
}

impl Canceller {
    /// Settles jobs until the publisher hangs up its end of the channel.
    pub async fn run(self, mut dead: mpsc::Receiver<DeadJob>) {
        while let Some(job) = dead.recv().await {
            let how = job.settlement(self.dead_after, backoff(self.retry_backoff, job.attempts));
            match self
                .replica
                .store
                .settle_dead(&job, self.dead_after, &how)
                .await
            {
                Ok(true) => {
                    let worker = job.worker.as_deref().unwrap_or("?");
                    match &how {
                        Settlement::Requeue => {
                            tracing::info!(
                                job = job.id,
                                worker,
                                "queued job of a silent replica back to NEW"
                            )
                        }
                        Settlement::Retry { reason, .. } => {
                            tracing::warn!(job = job.id, worker, "{reason}")
                        }
                        Settlement::Cancel { reason } => {
                            tracing::warn!(job = job.id, worker, "{reason}");
                            if let Some(labels) = self.replica.held.labels(job.id) {
                                self.replica.metrics.cancelled(&labels);
                            }
                        }
                    }
                    self.replica.held.take_away(job.id);
                }
                Ok(false) => {
                    tracing::debug!(job = job.id, "dead job settled by someone else first")
                }
                Err(error) => {
                    tracing::warn!(job = job.id, %error, "could not settle dead job; next pass retries")
                }
            }
        }
    }
}
