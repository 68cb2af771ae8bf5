//! Wires the loops together and runs them until shutdown, then drains in two phases: stop
//! claiming at once; give running jobs `shutdown_grace` (counted from the shutdown) to finish;
//! then stop the rest and release them to NEW; write the outcomes still waiting in the
//! completer; release whatever is left. Nothing is lost and nothing is cancelled by a shutdown.
//!
//! The drain must end before the orchestrator's patience does (Kubernetes kills the process
//! `terminationGracePeriodSeconds` after SIGTERM), also when the database does not answer. So
//! everything after the grace shares [`FINAL_WRITES`]: the worst case of a shutdown is
//! `shutdown_grace` + `FINAL_WRITES`, whatever the database does. What could not be written by
//! then is left to the other replicas' dead-job sweep, as after a crash.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::canceller::Canceller;
use crate::completer::{self, Completer};
use crate::config::Config;
use crate::consumer::{self, Pool};
use crate::handlers::Handlers;
use crate::held::{Held, Slots};
use crate::metrics::{self, Metrics};
use crate::publisher::{self, Controls, DeadJobs, NewJobs, Pruner, Recurring};
use crate::replica::{self, Replica};
use crate::store::{Store, Wakes};

/// How long a shutdown may take after `shutdown_grace`, against a database that does not
/// answer: releasing the jobs the grace did not see finish, the completer's last writes, the
/// loops' last passes, and the final release. build.yaml's grace period counts on it.
pub const FINAL_WRITES: Duration = Duration::from_secs(10);

/// Of [`FINAL_WRITES`], what is kept for the final release, however long the rest took.
const FINAL_RELEASE: Duration = Duration::from_secs(3);

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
            prefetch = config.prefetch(),
            rate_per_second = config.rate_per_second,
            poll_interval = ?config.poll_interval,
            dead_after = ?config.dead_after,
            "jobsd started"
        );
        // A least-privilege user may not write it; the claims apply the limit all the same.
        if let Err(error) = self.store.limit_payloads(config.max_payload_bytes).await {
            tracing::info!(%error, "jobsd_limits not updated");
        }
        let consumers = usize::try_from(config.consumers).unwrap_or(usize::MAX);
        let liveness_file = config.liveness_file();
        // Files an earlier process left say nothing about this one.
        replica::remove(&config.health_file).await;
        replica::remove(&liveness_file).await;
        // Bound before anything starts: an address in use is an error now, not a silent gap.
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(metrics::bind(addr).await.map_err(|error| {
                anyhow::anyhow!("cannot serve metrics on metrics_addr {addr}: {error}")
            })?),
            None => None,
        };
        let ticker = tokio::spawn(replica::keep_alive(liveness_file.clone(), shutdown.clone()));
        let wakes = Wakes::default();
        let prefetch = usize::try_from(config.prefetch()).unwrap_or(usize::MAX);
        let slots = Slots::new(consumers, prefetch, Arc::clone(&wakes.new_jobs));
        let replica = Arc::new(Replica {
            store: Arc::clone(&self.store),
            worker: Arc::clone(&self.worker),
            held: Arc::new(Held::new(slots)),
            wakes,
            metrics: Arc::new(Metrics::default()),
            heartbeat_interval: config.heartbeat_interval(),
            dead_after: config.dead_after,
            health_file: config.health_file.clone(),
        });
        // Room for every job the slots let a replica hold: a claim never waits on the channel.
        let (claimed_tx, claimed_rx) = mpsc::channel(consumers.saturating_add(prefetch));
        let (dead_tx, dead_rx) = mpsc::channel(64);
        let loops = TaskTracker::new();
        let jobs = TaskTracker::new();

        loops.spawn({
            let (store, wakes, stop) = (
                Arc::clone(&self.store),
                replica.wakes.clone(),
                shutdown.clone(),
            );
            async move { store.watch(wakes, stop).await }
        });
        if let Some(listener) = metrics_listener {
            tracing::info!(addr = ?listener.local_addr().ok(), "serving GET /metrics");
            loops.spawn(metrics::serve(
                listener,
                Arc::clone(&replica.metrics),
                Arc::clone(&self.store),
                shutdown.clone(),
            ));
        }
        let limiter = consumer::limiter(config.rate_per_second);
        let new_jobs = NewJobs {
            start: limiter.is_none(),
            max_bytes: config.max_payload_bytes,
            served: config.queues.clone(),
            poll_interval: config.poll_interval,
            ..NewJobs::new(Arc::clone(&replica), claimed_tx)
        };
        let wake = Some(Arc::clone(&replica.wakes.new_jobs));
        loops.spawn(publisher::drive(
            new_jobs,
            config.poll_interval,
            wake,
            shutdown.clone(),
        ));
        let dead_jobs = DeadJobs::new(Arc::clone(&replica), config.dead_after, dead_tx);
        loops.spawn(publisher::drive(
            dead_jobs,
            config.poll_interval,
            None,
            shutdown.clone(),
        ));
        let recurring = Recurring::new(Arc::clone(&self.store), config.poll_interval);
        loops.spawn(publisher::drive(
            recurring,
            config.poll_interval,
            None,
            shutdown.clone(),
        ));
        let canceller = Canceller {
            replica: Arc::clone(&replica),
            dead_after: config.dead_after,
            retry_backoff: config.retry_backoff,
        };
        loops.spawn(canceller.run(dead_rx));
        let controls = Controls {
            replica: Arc::clone(&replica),
            dead_after: config.dead_after,
            after: 0,
        };
        let wake = Some(Arc::clone(&replica.wakes.control));
        loops.spawn(publisher::drive(
            controls,
            config.control_interval,
            wake,
            shutdown.clone(),
        ));
        let pruner = Pruner {
            replica: Arc::clone(&replica),
            retain_done: config.retain_done,
            retain_failed: config.retain_failed,
            lease_for: config.prune_interval() * 3,
            off: false,
        };
        loops.spawn(publisher::drive(
            pruner,
            config.prune_interval(),
            None,
            shutdown.clone(),
        ));
        let (outcomes_tx, outcomes_rx) = mpsc::channel(completer::BATCH);
        let mut completer = tokio::spawn(
            Completer {
                replica: Arc::clone(&replica),
            }
            .run(outcomes_rx),
        );
        let pool = Arc::new(Pool {
            replica: Arc::clone(&replica),
            handlers: self.handlers.clone(),
            limiter,
            retry_backoff: config.retry_backoff,
            completer: outcomes_tx,
        });
        let mut dispatcher = tokio::spawn(pool.run(claimed_rx, shutdown.clone(), jobs.clone()));

        shutdown.cancelled().await;
        let grace_over = Instant::now() + config.shutdown_grace;
        let all_over = grace_over + FINAL_WRITES;
        let writes_over = all_over - FINAL_RELEASE;
        if let Err(error) = ticker.await {
            tracing::error!(%error, "the liveness ticker ended abnormally");
        }
        // Phase one: no more claims; what waits in the channel goes back to NEW, and paused
        // jobs are let go at once, staying PAUSED for whoever resumes them. The pool holds the
        // completer's channel open, so it must end for the completer to end.
        match timeout_at(grace_over, &mut dispatcher).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "consumer pool ended abnormally"),
            Err(_) => {
                tracing::warn!("shutdown: queued jobs could not be given back within the grace");
                dispatcher.abort();
            }
        }
        replica.held.interrupt_paused();
        jobs.close();
        let running = jobs.len();
        if running > 0 {
            tracing::info!(running, grace = ?config.shutdown_grace, "shutdown: waiting for running jobs");
        }
        // Phase two: after the grace, stop what still runs and release it.
        if timeout_at(grace_over, jobs.wait()).await.is_err() {
            tracing::warn!(
                still_running = jobs.len(),
                "shutdown grace over; releasing unfinished jobs to NEW"
            );
            replica.held.interrupt_all();
            if timeout_at(writes_over, jobs.wait()).await.is_err() {
                tracing::error!(
                    jobs = jobs.len(),
                    "shutdown: the database does not answer; the final release or the dead-job sweep will take those jobs"
                );
            }
        }
        // Every job task has ended (unless the database kept them past the budget), so the pool
        // and its end of the outcome channel are gone: the completer writes what is left and
        // stops. Only then is it safe to release. What it cannot write in time is left to the
        // dead-job sweep.
        let ended = match timeout_at(writes_over, &mut completer).await {
            Ok(ended) => ended,
            Err(_) => {
                tracing::error!(
                    "shutdown: outcomes could not be written; the dead-job sweep will settle those jobs"
                );
                completer.abort();
                completer.await
            }
        };
        if let Err(error) = ended
            && !error.is_cancelled()
        {
            tracing::error!(%error, "completer ended abnormally");
        }
        loops.close();
        if timeout_at(writes_over, loops.wait()).await.is_err() {
            tracing::warn!("shutdown: a loop's last pass got no answer from the database");
        }
        // Anything still held (a release that failed above) goes back now.
        let release = self.store.release(&self.worker, None);
        let released = timeout_at(all_over, release).await;
        replica::remove(&config.health_file).await;
        replica::remove(&liveness_file).await;
        let stray = match released {
            Ok(released) => released?,
            Err(_) => anyhow::bail!(
                "the final release got no answer from the database in time; the dead-job sweep \
                 will hand this replica's jobs on"
            ),
        };
        if stray > 0 {
            tracing::info!(jobs = stray, "released leftover jobs");
        }
        tracing::info!(worker = %self.worker, "jobsd stopped");
        Ok(())
    }
}
