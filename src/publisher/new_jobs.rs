//! Claims NEW jobs whose time has come and puts them on the consumers' channel. It never claims
//! more than the pool has free slots for, so a replica never hoards jobs it cannot start soon.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Publisher;
use crate::held::{Claimed, State};
use crate::replica::Replica;
use crate::store::{Claim, Result};

pub(crate) struct NewJobs {
    pub replica: Arc<Replica>,
    pub channel: mpsc::Sender<Claimed>,
    /// Claims start jobs in the same write: set when the replica has no rate limit.
    pub start: bool,
    /// `max_payload_bytes`: larger values are never fetched.
    pub max_bytes: u64,
}

impl Publisher for NewJobs {
    const NAME: &'static str = "new-jobs";

    async fn run_once(&mut self) -> Result<bool> {
        let replica = &self.replica;
        let slots = replica.held.slots.take_free();
        if slots.is_empty() {
            replica.held.slots.set_backlog(true);
            return Ok(false);
        }
        let wanted = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        let claim = Claim {
            worker: &replica.worker,
            limit: wanted,
            start: self.start,
            max_bytes: self.max_bytes,
        };
        let jobs = replica.store.claim(&claim).await?;
        let full = jobs.len() == slots.len();
        replica.held.slots.set_backlog(full);
        for (job, slot) in jobs.into_iter().zip(slots) {
            let id = job.id;
            let state = if self.start {
                State::Running
            } else {
                State::Queued
            };
            let held = replica.held.enter(id, state, slot);
            let claimed = Claimed {
                job,
                held,
                started: self.start,
            };
            // The pool has stopped taking jobs (shutdown): the refused job, dropped here, lets
            // go of its entry and slot, and goes back to NEW at once.
            if self.channel.send(claimed).await.is_err() {
                replica.store.release(&replica.worker, Some(id)).await?;
            }
        }
        Ok(full)
    }
}
