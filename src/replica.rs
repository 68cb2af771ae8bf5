//! What the loops and tasks of one replica share: its store and id, the jobs it holds, and the
//! consumer slots that bound how many of them it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::held::Held;
use crate::store::{Store, Wakes};

pub(crate) struct Replica {
    pub store: Arc<dyn Store>,
    /// This process's id in the `worker` column.
    pub worker: Arc<str>,
    pub held: Held,
    /// One permit per consumer, taken by the new-jobs publisher with each claimed job and given
    /// back when the job ends or pauses: running jobs never outnumber the consumers.
    pub slots: Arc<Semaphore>,
    /// Set by the new-jobs publisher when its last pass could have claimed more than it had
    /// slots for; read when a slot frees, to wake it at once.
    pub backlog: AtomicBool,
    pub wakes: Wakes,
    /// How often a running job should prove it is alive.
    pub heartbeat_interval: Duration,
}

impl Replica {
    /// A slot came free: if work is waiting, claim it now rather than at the next poll.
    pub fn slot_freed(&self) {
        if self.backlog.load(Ordering::Relaxed) {
            self.wakes.new_jobs.notify_one();
        }
    }
}
