//! Wires the loops together and runs them until shutdown, then drains in two phases: stop
//! claiming at once; give running jobs `shutdown_grace` to finish; then stop the rest and release
//! them to NEW. Nothing is lost and nothing is cancelled by a shutdown.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::canceller::Canceller;
use crate::config::Config;
use crate::consumer::{self, Pool};
use crate::handlers::Handlers;
use crate::held::Held;
use crate::publisher::{self, DeadJobs, NewJobs};
use crate::store::Store;

pub struct Daemon {
    store: Arc<dyn Store>,
    handlers: Handlers,
    config: Config,
    /// `worker_id` plus a suffix new at every start, so that a restarted container never
    /// mistakes its predecessor's jobs for its own.
    worker: Arc<str>,
}

impl Daemon {
    pub fn new(store: Arc<dyn Store>, handlers: Handlers, config: Config) -> Self {
        let suffix: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(8)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let worker = format!("{}-{suffix}", config.worker_id).into();
        Daemon {
            store,
            handlers,
            config,
            worker,
        }
    }

    /// This process's id, as written in the `worker` column.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Runs until `shutdown` fires, then drains (see the module doc) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = &self.config;
        tracing::info!(
            worker = %self.worker,
            consumers = config.consumers,
            rate_per_second = config.rate_per_second,
            poll_interval = ?config.poll_interval,
            dead_after = ?config.dead_after,
            "jobsd started"
        );
        let held = Arc::new(Held::default());
        let wake = Arc::new(Notify::new());
        let backlog = Arc::new(AtomicBool::new(false));
        let consumers = usize::try_from(config.consumers).unwrap_or(usize::MAX);
        let (claimed_tx, claimed_rx) = mpsc::channel(consumers);
        let (dead_tx, dead_rx) = mpsc::channel(64);

        let loops = TaskTracker::new();
        let jobs = TaskTracker::new();
        let interrupt = CancellationToken::new();

        loops.spawn({
            let store = Arc::clone(&self.store);
            let (wake, stop) = (Arc::clone(&wake), shutdown.clone());
            async move { store.watch_inserts(wake, stop).await }
        });
        let new_jobs = NewJobs {
            store: Arc::clone(&self.store),
            worker: Arc::clone(&self.worker),
            slots: Arc::new(Semaphore::new(consumers)),
            held: Arc::clone(&held),
            channel: claimed_tx,
            backlog: Arc::clone(&backlog),
        };
        loops.spawn(publisher::drive(
            new_jobs,
            config.poll_interval,
            Some(Arc::clone(&wake)),
            shutdown.clone(),
        ));
        let dead_jobs = DeadJobs {
            store: Arc::clone(&self.store),
            worker: Arc::clone(&self.worker),
            held: Arc::clone(&held),
            dead_after: config.dead_after,
            canceller: dead_tx,
        };
        loops.spawn(publisher::drive(
            dead_jobs,
            config.poll_interval,
            None,
            shutdown.clone(),
        ));
        let canceller = Canceller {
            store: Arc::clone(&self.store),
            held: Arc::clone(&held),
            dead_after: config.dead_after,
            retry_backoff: config.retry_backoff,
        };
        loops.spawn(canceller.run(dead_rx));
        let pool = Arc::new(Pool {
            store: Arc::clone(&self.store),
            worker: Arc::clone(&self.worker),
            handlers: self.handlers.clone(),
            held: Arc::clone(&held),
            limiter: consumer::limiter(config.rate_per_second),
            heartbeat_interval: config.heartbeat_interval(),
            retry_backoff: config.retry_backoff,
            backlog,
            wake,
        });
        let dispatcher = tokio::spawn(pool.run(
            claimed_rx,
            shutdown.clone(),
            jobs.clone(),
            interrupt.clone(),
        ));

        shutdown.cancelled().await;
        // Phase one: no more claims; what waits in the channel goes back to NEW.
        if let Err(error) = dispatcher.await {
            tracing::error!(%error, "consumer pool ended abnormally");
        }
        jobs.close();
        let running = jobs.len();
        if running > 0 {
            tracing::info!(running, grace = ?config.shutdown_grace, "shutdown: waiting for running jobs");
        }
        // Phase two: after the grace, stop what still runs and release it.
        if tokio::time::timeout(config.shutdown_grace, jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = jobs.len(),
                "shutdown grace over; releasing unfinished jobs to NEW"
            );
            interrupt.cancel();
            jobs.wait().await;
        }
        loops.close();
        loops.wait().await;
        // Anything still held (a release that failed above) goes back now.
        let stray = self.store.release(&self.worker, None).await?;
        if stray > 0 {
            tracing::info!(jobs = stray, "released leftover jobs to NEW");
        }
        tracing::info!(worker = %self.worker, "jobsd stopped");
        Ok(())
    }
}
