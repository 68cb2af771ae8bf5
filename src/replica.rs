//! What the loops and tasks of one replica share: its store and id, the jobs it holds (with the
//! consumer slots that bound how many of them it runs); and the two files the probes read.
//!
//! Liveness and readiness are separate files because an outage must make a replica unready
//! without making it look dead: Kubernetes restarts a container that fails its liveness probe,
//! and restarting every replica because the database is away helps nothing. So the liveness
//! file is rewritten by a ticker that never touches the database, and the readiness file only
//! by a pass that reached it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::held::Held;
use crate::metrics::Metrics;
use crate::store::{Store, Wakes};

pub(crate) struct Replica {
    pub store: Arc<dyn Store>,
    /// This process's id in the `worker` column.
    pub worker: Arc<str>,
    /// Shared with every [`HeldJob`](crate::held::HeldJob), which lets go of its own entry.
    pub held: Arc<Held>,
    pub wakes: Wakes,
    /// What this replica has done, for `/metrics`; recorded whether or not it is served.
    pub metrics: Arc<Metrics>,
    /// How often a running job should prove it is alive.
    pub heartbeat_interval: Duration,
    /// How long a job may go without a sign of life reaching the database before another
    /// replica may take it for dead: the lease a running job holds.
    pub dead_after: Duration,
    /// Where this replica records that it reached the database, for `jobsd health --ready`.
    pub health_file: PathBuf,
}

impl Replica {
    /// Records that a pass reached the database: `jobsd health --ready` reads the file's age. A
    /// file that cannot be written makes the probe fail, which is what it should do.
    pub async fn reached_database(&self) {
        write_now(&self.health_file).await;
    }
}

/// How often the liveness file is rewritten.
const TICK: Duration = Duration::from_secs(1);

/// Rewrites `file` every second until `stop`: `jobsd health` reads its age. It shares the
/// runtime with the loops, so a runtime that stops turning stops it too.
pub(crate) async fn keep_alive(file: PathBuf, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticks.tick() => write_now(&file).await,
        }
    }
}

/// Writes the time into `file`; the probes read its modification time, the text is for people.
async fn write_now(file: &Path) {
    let now = chrono::Utc::now().to_rfc3339();
    if let Err(error) = tokio::fs::write(file, now).await {
        tracing::debug!(file = %file.display(), %error, "cannot write a health file");
    }
}

/// Removes a health file, so that no probe reads one left by an earlier process.
pub(crate) async fn remove(file: &Path) {
    match tokio::fs::remove_file(file).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::debug!(file = %file.display(), %error, "cannot remove a health file");
        }
    }
}
