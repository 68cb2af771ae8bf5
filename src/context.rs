//! What a handler sees of its job, and how it talks back: the row's arguments, and `heartbeat()`
//! to prove it is alive. A handler that stops calling `heartbeat` is, after `dead_after`, dead.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::handlers::Permanent;
use crate::job::ClaimedJob;
use crate::store::Store;

pub struct JobContext {
    job: ClaimedJob,
    /// Parsed once before the handler runs, so a malformed payload fails the job up front.
    payload: Option<serde_json::Value>,
    store: Arc<dyn Store>,
    worker: Arc<str>,
    heartbeat_interval: Duration,
    /// Fired when the job is no longer this replica's to run; the daemon then drops the handler.
    lost: CancellationToken,
}

impl JobContext {
    /// Builds the context, or says in words why the row's payload cannot be used.
    pub(crate) fn new(
        job: ClaimedJob,
        store: Arc<dyn Store>,
        worker: Arc<str>,
        heartbeat_interval: Duration,
        lost: CancellationToken,
    ) -> Result<Self, Permanent> {
        let payload = match job.payload.as_deref() {
            None => None,
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| Permanent::new(format!("payload is not valid JSON: {e}")))?,
            ),
        };
        Ok(JobContext {
            job,
            payload,
            store,
            worker,
            heartbeat_interval,
            lost,
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

    /// This run's attempt, from 1.
    pub fn attempt(&self) -> i32 {
        self.job.attempts + 1
    }

    pub fn max_attempts(&self) -> i32 {
        self.job.max_attempts
    }

    /// How often the handler should call [`heartbeat`](Self::heartbeat): well inside `dead_after`.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Records a sign of life. If the job is no longer this replica's (it was cancelled as dead
    /// meanwhile), the daemon stops the handler at its next `.await`. A database that does not
    /// answer is not the handler's problem: the job carries on, and the publishers report it.
    pub async fn heartbeat(&self) {
        match self.store.heartbeat(self.job.id, &self.worker).await {
            Ok(true) => {}
            Ok(false) => self.lost.cancel(),
            Err(error) => tracing::debug!(job = self.job.id, %error, "heartbeat not recorded"),
        }
    }
}
