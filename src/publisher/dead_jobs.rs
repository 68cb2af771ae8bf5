//! Finds dead jobs (QUEUED or RUNNING, silent for `dead_after`) of any replica and hands them to
//! the canceller. Each pass first vouches for this replica's own jobs that no handler speaks
//! for (waiting in its channel, paused, or finished with the outcome not yet written), and
//! checks that its running jobs are still its own, stopping the tasks of those settled elsewhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Publisher;
use crate::held::State;
use crate::job::DeadJob;
use crate::replica::Replica;
use crate::store::Result;

/// Dead jobs handed over per pass; the rest wait for the next one.
const BATCH: u32 = 1000;

pub(crate) struct DeadJobs {
    pub replica: Arc<Replica>,
    pub dead_after: Duration,
    pub canceller: mpsc::Sender<DeadJob>,
}

impl Publisher for DeadJobs {
    const NAME: &'static str = "dead-jobs";

    async fn run_once(&mut self) -> Result<bool> {
        let replica = &self.replica;
        let (store, worker, held) = (&replica.store, &replica.worker, &replica.held);
        let waiting = held.ids(&[State::Queued, State::Paused, State::Finishing]);
        if !waiting.is_empty() {
            store.touch(worker, &waiting).await?;
        }
        let running = held.ids(&[State::Running, State::Paused]);
        for id in store.lost(worker, &running).await? {
            if held.take_away(id) {
                tracing::info!(job = id, "job was settled elsewhere; stopping its task");
            }
        }
        for job in store.find_dead(self.dead_after, BATCH).await? {
            if self.canceller.send(job).await.is_err() {
                break;
            }
        }
        replica.reached_database().await;
        // The canceller settles what was sent before the next pass looks again.
        Ok(false)
    }
}
