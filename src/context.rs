//! What a handler sees of its job, and how it talks back. `heartbeat()` proves the job is alive;
//! `checkpoint(progress)` also saves where it got to, so that a run after a restart, a rescue or
//! a retry continues from there. Both are where a requested pause takes effect: the task then
//! waits, using no CPU and no consumer slot, until it is resumed or terminated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::held::{HeldJob, State};
use crate::job::{ClaimedJob, Permanent};
use crate::replica::Replica;
use crate::store::{Resume, Resumed};

/// How long to wait before trying again to resume a job the database would not resume.
const RESUME_RETRY: Duration = Duration::from_secs(1);

/// The payload and progress columns as JSON, or why one of them is not.
type Parsed = (Option<serde_json::Value>, Option<serde_json::Value>);

fn parse(job: &ClaimedJob) -> Result<Parsed, Permanent> {
    let column = |name: &str, text: Option<&str>| match text {
        None => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| Permanent::new(format!("{name} is not valid JSON: {e}"))),
    };
    Ok((
        column("payload", job.payload.as_deref())?,
        column("progress", job.progress.as_deref())?,
    ))
}

pub struct JobContext {
    job: ClaimedJob,
    /// Parsed once before the handler runs, so a malformed payload fails the job up front.
    payload: Option<serde_json::Value>,
    /// The last checkpoint of an earlier run, parsed likewise.
    progress: Option<serde_json::Value>,
    replica: Arc<Replica>,
    /// The job's slot and wires, held by the run: it gives the slot back while paused, fires
    /// `lost` when the job is no longer this replica's and `lapsed` when its lease lapses (the
    /// daemon then drops the handler), and reads `pause`.
    held: HeldJob,
    /// When a sign of life of this run last reached the database: the run holds the job as a
    /// lease that lasts `dead_after` from then (see [`JobContext::heartbeat`]).
    vouched: Mutex<Instant>,
}

impl JobContext {
    /// Builds the context, or says in words why the row's payload or progress cannot be used;
    /// the job, `held`, then comes back with the reason, to be failed for it.
    pub(crate) fn new(
        job: ClaimedJob,
        replica: Arc<Replica>,
        held: HeldJob,
    ) -> Result<Self, Box<(Permanent, HeldJob)>> {
        let (payload, progress) = match parse(&job) {
            Ok(parsed) => parsed,
            Err(reason) => return Err(Box::new((reason, held))),
        };
        Ok(JobContext {
            job,
            payload,
            progress,
            replica,
            held,
            vouched: Mutex::new(Instant::now()),
        })
    }

    /// The job as the run holds it.
    pub(crate) fn held(&self) -> &HeldJob {
        &self.held
    }

    /// The job back from the run, once it has ended.
    pub(crate) fn into_held(self) -> HeldJob {
        self.held
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
        self.started().await;
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
        if self.held.wires().signals.pause_requested() {
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
            self.held.wires().lapsed.cancel();
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
            let beat = async {
                self.started().await;
                store
                    .heartbeat(self.job.id, &self.replica.worker, None)
                    .await
            };
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
        if self.held.wires().signals.pause_requested() {
            self.pause_here().await;
        }
    }

    /// The store, for a handler's own writes: once the run's start is written, which they
    /// must not overtake.
    pub(crate) async fn store(&self) -> &dyn crate::store::Store {
        self.started().await;
        &*self.replica.store
    }

    /// Waits until the run's start is written (the completer writes it behind the run of a job
    /// claimed ahead, within a round trip or two): a write of the run's own before it would find
    /// the job not yet RUNNING and take it for lost. While the database does not answer, the
    /// wait lasts the lease, as a heartbeat's does.
    async fn started(&self) {
        let signals = &self.held.wires().signals;
        loop {
            let left = self.replica.dead_after.saturating_sub(self.since_vouched());
            if tokio::time::timeout(left, signals.started()).await.is_ok() {
                return;
            }
            self.unvouched("its start is not written yet").await;
        }
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
        let held = &self.held;
        held.set(State::Paused);
        held.give_up_slot();
        tracing::info!(job = id, "paused");
        loop {
            // Waits for a wake-up, not a timer: a paused job costs no CPU. A job taken away
            // meanwhile is dropped by the daemon, wherever it waits.
            held.wires().signals.pause_lifted().await;
            if !held.take_back_slot().await {
                self.stop_here().await
            }
            let resume = Resume {
                id,
                worker: &replica.worker,
                queue: &self.job.queue,
                dead_after: replica.dead_after,
            };
            match replica.store.resume(&resume).await {
                Ok(Resumed::Yes) => {
                    self.vouched_now();
                    held.set(State::Running);
                    tracing::info!(job = id, "resumed");
                    return;
                }
                Ok(Resumed::Lost) => self.stop_here().await,
                Ok(Resumed::Wait) => {
                    // Its queue is paused or full: the job stays paused until there is room.
                    tracing::debug!(job = id, queue = %self.job.queue, "resume waits for its queue");
                    held.give_up_slot();
                    tokio::time::sleep(RESUME_RETRY).await;
                }
                Err(error) => {
                    tracing::warn!(job = id, %error, "could not resume; trying again");
                    held.give_up_slot();
                    tokio::time::sleep(RESUME_RETRY).await;
                }
            }
        }
    }

    /// The job was taken away: tell the daemon, which drops this handler, and go no further.
    async fn stop_here(&self) -> ! {
        self.held.wires().lost.cancel();
        std::future::pending().await
    }
}
