//! Finds dead jobs (QUEUED or RUNNING, silent for `dead_after`) of any replica and hands them to
//! the canceller. Each pass first vouches for this replica's own queued jobs and checks that its
//! running jobs are still its own, stopping the tasks of those settled elsewhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Publisher;
use crate::held::Held;
use crate::job::DeadJob;
use crate::store::{Result, Store};

/// Dead jobs handed over per pass; the rest wait for the next one.
const BATCH: u32 = 1000;

pub(crate) struct DeadJobs {
    pub store: Arc<dyn Store>,
    pub worker: Arc<str>,
    pub held: Arc<Held>,
    pub dead_after: Duration,
    pub canceller: mpsc::Sender<DeadJob>,
}

impl Publisher for DeadJobs {
    const NAME: &'static str = "dead-jobs";

    async fn run_once(&mut self) -> Result<bool> {
        let queued = self.held.ids(false);
        if !queued.is_empty() {
            self.store.touch_queued(&self.worker, &queued).await?;
        }
        let running = self.held.ids(true);
        for id in self.store.lost(&self.worker, &running).await? {
            if self.held.take_away(id) {
                tracing::info!(job = id, "job was settled elsewhere; stopping its task");
            }
        }
        for job in self.store.find_dead(self.dead_after, BATCH).await? {
            if self.canceller.send(job).await.is_err() {
                break;
            }
        }
        // The canceller settles what was sent before the next pass looks again.
        Ok(false)
    }
}
