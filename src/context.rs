//! What a handler sees of its job, and how it talks back. `heartbeat()` proves the job is alive;
//! `checkpoint(progress)` also saves where it got to, so that a run after a restart, a rescue or
//! a retry continues from there. Both are where a requested pause takes effect: the task then
//! waits, using no CPU and no consumer slot, until it is resumed or terminated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::held::{PauseSignal, State};
use crate::job::{ClaimedJob, Permanent};
use crate::replica::Replica;

/// How long to wait before trying again to resume a job the database would not resume.
const RESUME_RETRY: Duration = Duration::from_secs(1);

pub struct JobContext {
    job: ClaimedJob,
    /// Parsed once before the handler runs, so a malformed payload fails the job up front.
    payload: Option<serde_json::Value>,
    /// The last checkpoint of an earlier run, parsed likewise.
    progress: Option<serde_json::Value>,
    replica: Arc<Replica>,
    /// Fired when the job is no longer this replica's to run; the daemon then drops the handler.
    lost: CancellationToken,
    /// Fired when the lease lapses; the daemon then drops the handler and gives the job back.
    lapsed: CancellationToken,
    pause: Arc<PauseSignal>,
    /// The consumer slot this run holds; empty while paused. A `std::sync::Mutex`: it is only
    /// swapped, never held across an `.await`.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// When a sign of life of this run last reached the database: the run holds the job as a
    /// lease that lasts `dead_after` from then (see [`JobContext::heartbeat`]).
    vouched: Mutex<Instant>,
}

impl JobContext {
    /// Builds the context, or says in words why the row's payload or progress cannot be used.
    /// The run's slot comes with [`JobContext::swap_slot`].
    pub(crate) fn new(
        job: ClaimedJob,
        replica: Arc<Replica>,
        lost: CancellationToken,
        lapsed: CancellationToken,
        pause: Arc<PauseSignal>,
    ) -> Result<Self, Permanent> {
        let parse = |column: &str, text: Option<&str>| match text {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| Permanent::new(format!("{column} is not valid JSON: {e}"))),
        };
        let payload = parse("payload", job.payload.as_deref())?;
        let progress = parse("progress", job.progress.as_deref())?;
        Ok(JobContext {
            job,
            payload,
            progress,
            replica,
            lost,
            lapsed,
            pause,
            slot: Mutex::new(None),
            vouched: Mutex::new(Instant::now()),
        })
    }

    pub fn id(&self) -> i64 {
        self.job.id
    }

    pub fn kind(&self) -> &str {
        &self.job.kind
    }

    pub fn object_id(&self) -> Option<i64> {
        self.job.object_id
    }

    /// The `sleep` column: nanoseconds, for kind `sleep`.
    pub fn sleep(&self) -> Option<i64> {
        self.job.sleep
    }

    pub fn payload(&self) -> Option<&serde_json::Value> {
        self.payload.as_ref()
    }

    /// The payload as the handler's own type; a mismatch is a permanent failure, in words.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Permanent> {
        let value = self.payload.clone().unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| {
            Permanent::new(format!(
                "payload does not fit kind {:?}: {e}",
                self.job.kind
            ))
        })
    }

    /// The progress saved by the last checkpoint of an earlier run, if any.
    pub fn progress_as<T: DeserializeOwned>(&self) -> Result<Option<T>, Permanent> {
        self.progress
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| {
                Permanent::new(format!(
                    "progress does not fit kind {:?}: {e}",
                    self.job.kind
                ))
            })
    }

    /// This run's attempt, from 1.
    pub fn attempt(&self) -> i32 {
        self.job.attempts + 1
    }

    pub fn max_attempts(&self) -> i32 {
        self.job.max_attempts
    }

    /// How often the handler should call [`heartbeat`](Self::heartbeat) or
    /// [`checkpoint`](Self::checkpoint): well inside `dead_after`.
    pub fn heartbeat_interval(&self) -> Duration {
        self.replica.heartbeat_interval
    }

    /// Records a sign of life, and pauses here if a pause was requested.
    ///
    /// The job is held as a lease: once no sign of life has reached the database for
    /// `dead_after`, another replica may take the job for dead and run it again, so the
    /// handler stops here rather than risk two runs of one job.
    pub async fn heartbeat(&self) {
        self.beat(None).await;
    }

    /// Saves `progress` (as JSON in the `progress` column) and records a sign of life, then
    /// pauses here if a pause was requested. Fails only if `progress` cannot be written as JSON.
    pub async fn checkpoint<T: Serialize + ?Sized>(&self, progress: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string(progress)?;
        self.beat(Some(&text)).await;
        Ok(())
    }

    /// If the job is no longer this replica's (cancelled as dead, or terminated), the handler
    /// stops here for good. A database that does not answer is not the handler's problem: the
    /// job carries on, and the publishers report the outage.
    async fn beat(&self, progress: Option<&str>) {
        let (id, replica) = (self.job.id, &self.replica);
        // A database that hangs rather than fails must not hold the handler past its lease;
        // one that answers says itself whether the job is still ours, however late it is.
        let left = replica.dead_after.saturating_sub(self.since_vouched());
        let wait = left.max(replica.heartbeat_interval);
        let beat = replica.store.heartbeat(id, &replica.worker, progress);
        let error = match tokio::time::timeout(wait, beat).await {
            Ok(Ok(ours)) => return self.checkpointed(ours).await,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        self.unvouched(&error).await;
        if self.pause.requested() {
            self.pause_here().await;
        }
    }

    /// A sign of life did not reach the database: once none has for `dead_after`, the lease
    /// is over and the handler stops here; the daemon gives the job back (NEW, its attempt
    /// returned) as soon as the database answers, unless another replica took it meanwhile.
    async fn unvouched(&self, error: &str) {
        let (id, lease) = (self.job.id, self.replica.dead_after);
        if self.since_vouched() >= lease {
            tracing::warn!(
                job = id,
                %error,
                ?lease,
                "no sign of life reached the database within the lease; stopping, as another replica may take the job over"
            );
            self.lapsed.cancel();
            std::future::pending::<()>().await;
        }
        tracing::debug!(job = id, %error, "heartbeat not recorded");
    }

    /// A sign of life of this run has just reached the database.
    fn vouched_now(&self) {
        *self
            .vouched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
    }

    fn since_vouched(&self) -> Duration {
        self.vouched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .elapsed()
    }

    /// Runs `work`, a step too long to leave the job silent (a query, a skip through a file),
    /// recording a sign of life every [`heartbeat_interval`](Self::heartbeat_interval) while it
    /// runs. It never pauses: a step is paused only between steps, where the handler can say
    /// where it got to. A job no longer this replica's stops here, as at a heartbeat.
    pub(crate) async fn beating<T>(&self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let store = &self.replica.store;
        loop {
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep(self.heartbeat_interval()) => {}
            }
            // The work goes on while the database answers.
            let beat = store.heartbeat(self.job.id, &self.replica.worker, None);
            let ours = tokio::select! {
                done = &mut work => return done,
                ours = beat => ours,
            };
            match ours {
                Ok(true) => self.vouched_now(),
                Ok(false) => self.stop_here().await,
                Err(error) => self.unvouched(&error.to_string()).await,
            }
        }
    }

    /// For built-in kinds that write their work and its checkpoint in one transaction of their
    /// own: `ours` says whether the checkpoint found the job still this replica's. Stops the
    /// handler if not, and pauses here if a pause was requested.
    pub(crate) async fn checkpointed(&self, ours: bool) {
        if !ours {
            self.stop_here().await;
        }
        self.vouched_now();
        if self.pause.requested() {
            self.pause_here().await;
        }
    }

    pub(crate) fn store(&self) -> &dyn crate::store::Store {
        &*self.replica.store
    }

    pub(crate) fn worker(&self) -> &str {
        &self.replica.worker
    }

    async fn pause_here(&self) {
        let (id, replica) = (self.job.id, &self.replica);
        match replica.store.pause(id, &replica.worker).await {
            Ok(true) => {}
            Ok(false) => self.stop_here().await,
            Err(error) => {
                tracing::warn!(job = id, %error, "could not pause; trying at the next checkpoint");
                return;
            }
        }
        replica.held.set(id, State::Paused);
        drop(self.swap_slot(None));
        replica.slot_freed();
        tracing::info!(job = id, "paused");
        loop {
            // Waits for a wake-up, not a timer: a paused job costs no CPU. A job taken away
            // meanwhile is dropped by the daemon, wherever it waits.
            self.pause.lifted().await;
            let Ok(slot) = Arc::clone(&replica.slots).acquire_owned().await else {
                self.stop_here().await
            };
            match replica.store.resume(id, &replica.worker).await {
                Ok(true) => {
                    self.vouched_now();
                    self.swap_slot(Some(slot));
                    replica.held.set(id, State::Running);
                    tracing::info!(job = id, "resumed");
                    return;
                }
                Ok(false) => self.stop_here().await,
                Err(error) => {
                    tracing::warn!(job = id, %error, "could not resume; trying again");
                    drop(slot);
                    tokio::time::sleep(RESUME_RETRY).await;
                }
            }
        }
    }

    /// Puts `slot` in the run's hands and returns the one it held, if any.
    pub(crate) fn swap_slot(
        &self,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<OwnedSemaphorePermit> {
        let mut held = self
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *held, slot)
    }

    /// The job was taken away: tell the daemon, which drops this handler, and go no further.
    async fn stop_here(&self) -> ! {
        self.lost.cancel();
        std::future::pending().await
    }
}
