//! Claims NEW jobs whose time has come and puts them on the consumers' channel. It never claims
//! more than the pool has free slots for, so a replica never hoards jobs it cannot start soon.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Publisher;
use crate::held::Held;
use crate::job::ClaimedJob;
use crate::store::{Result, Store};

/// A claimed job on its way to a consumer.
pub(crate) struct Claimed {
    pub job: ClaimedJob,
    /// One of the pool's slots, held until the job's run ends.
    pub slot: OwnedSemaphorePermit,
    /// Fires if the job is taken away from this replica.
    pub lost: CancellationToken,
}

pub(crate) struct NewJobs {
    pub store: Arc<dyn Store>,
    pub worker: Arc<str>,
    /// One permit per consumer: claimed-but-unfinished jobs never outnumber the consumers.
    pub slots: Arc<Semaphore>,
    pub held: Arc<Held>,
    pub channel: mpsc::Sender<Claimed>,
    /// Set when the last pass could have claimed more than it had slots for. Written here, read
    /// by consumers, which then wake this publisher as soon as a slot frees.
    pub backlog: Arc<AtomicBool>,
}

impl Publisher for NewJobs {
    const NAME: &'static str = "new-jobs";

    async fn run_once(&mut self) -> Result<bool> {
        let mut slots = Vec::new();
        while let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            slots.push(slot);
        }
        if slots.is_empty() {
            self.backlog.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        let wanted = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        let jobs = self.store.claim(&self.worker, wanted).await?;
        let full = jobs.len() == slots.len();
        self.backlog.store(full, Ordering::Relaxed);
        for (job, slot) in jobs.into_iter().zip(slots) {
            let id = job.id;
            let lost = self.held.queued(id);
            if self
                .channel
                .send(Claimed { job, slot, lost })
                .await
                .is_err()
            {
                // The pool has stopped taking jobs (shutdown): give this one back at once.
                self.held.remove(id);
                self.store.release(&self.worker, Some(id)).await?;
            }
        }
        Ok(full)
    }
}
