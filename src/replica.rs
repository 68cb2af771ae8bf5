//! What the loops and tasks of one replica share: its store and id, the jobs it holds, and the
//! consumer slots that bound how many of them it runs.

use std::path::PathBuf;
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
    /// How long a job may go without a sign of life reaching the database before another
    /// replica may take it for dead: the lease a running job holds.
    pub dead_after: Duration,
    /// Where this replica says it is alive, for `jobsd health`.
    pub health_file: PathBuf,
}

impl Replica {
    /// Records that the loops tick and the database answers; `jobsd health` reads the file's
    /// age. A file that cannot be written makes the probe fail, which is what it should do.
    pub async fn alive(&self) {
        let now = chrono::Utc::now().to_rfc3339();
        if let Err(error) = tokio::fs::write(&self.health_file, now).await {
            tracing::debug!(file = %self.health_file.display(), %error, "cannot write the health file");
        }
    }

    /// A slot came free: if work is waiting, claim it now rather than at the next poll.
    pub fn slot_freed(&self) {
        if self.backlog.load(Ordering::Relaxed) {
            self.wakes.new_jobs.notify_one();
        }
    }
}
