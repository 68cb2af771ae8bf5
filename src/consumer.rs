//! The consumer pool: takes claimed jobs off the channel, waits for the rate limiter before each
//! start, and runs each job in its own task to one recorded outcome. Concurrency is bounded by
//! the slots the new-jobs publisher hands out with each job, not here.

use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::JobContext;
use crate::handlers::{Handlers, Permanent};
use crate::held::{State, Wires};
use crate::job::{ClaimedJob, Outcome, backoff};
use crate::publisher::Claimed;
use crate::replica::Replica;

/// How many times a finished job's outcome is offered to a database that does not answer.
const RECORD_TRIES: u32 = 8;

pub(crate) struct Pool {
    pub replica: Arc<Replica>,
    pub handlers: Handlers,
    /// `None` when `rate_per_second` is 0.
    pub limiter: Option<DefaultDirectRateLimiter>,
    pub retry_backoff: Duration,
}

/// How a job's task ended.
enum Run {
    Ended(Outcome),
    /// The row was settled elsewhere (cancelled as dead); nothing more to write.
    Lost,
    /// Shutdown's grace ran out, or shutdown found the job paused; it is released.
    Interrupted,
}

/// `rate_per_second` starts a second, one at a time: no burst, so the database sees an even pace.
pub(crate) fn limiter(rate_per_second: u32) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(rate_per_second)?;
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(NonZeroU32::MIN),
    ))
}

impl Pool {
    /// Starts jobs from `channel` until `stop`, then gives back what is still waiting in it.
    /// Jobs run in `jobs`.
    pub async fn run(
        self: Arc<Self>,
        mut channel: mpsc::Receiver<Claimed>,
        stop: CancellationToken,
        jobs: TaskTracker,
    ) {
        loop {
            let claimed = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                next = channel.recv() => match next {
                    Some(claimed) => claimed,
                    None => break,
                },
            };
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => {
                        self.give_back(claimed).await;
                        break;
                    }
                    () = limiter.until_ready() => {}
                }
            }
            let pool = Arc::clone(&self);
            jobs.spawn(async move { pool.run_job(claimed).await });
        }
        channel.close();
        while let Some(claimed) = channel.recv().await {
            self.give_back(claimed).await;
        }
    }

    /// A claimed job this replica will not start after all goes back to NEW for anyone to take.
    async fn give_back(&self, claimed: Claimed) {
        let (id, replica) = (claimed.job.id, &self.replica);
        replica.held.remove(id);
        if let Err(error) = replica.store.release(&replica.worker, Some(id)).await {
            tracing::warn!(job = id, %error, "could not give back a queued job; the dead-job sweep will");
        }
    }

    async fn run_job(&self, claimed: Claimed) {
        let Claimed { job, slot, wires } = claimed;
        let (id, replica) = (job.id, &self.replica);
        match replica.store.mark_started(id, &replica.worker).await {
            Ok(true) => {
                replica.held.set(id, State::Running);
                match self.execute(job, slot, &wires).await {
                    Run::Ended(outcome) => self.record(id, &outcome).await,
                    Run::Lost => {
                        tracing::info!(job = id, "task stopped: the job was cancelled or handed on")
                    }
                    Run::Interrupted => {
                        match replica.store.release(&replica.worker, Some(id)).await {
                            Ok(_) => tracing::info!(job = id, "shutdown: job released"),
                            Err(error) => {
                                tracing::warn!(job = id, %error, "shutdown: could not release job")
                            }
                        }
                    }
                }
            }
            Ok(false) => tracing::debug!(job = id, "taken back before it started"),
            Err(error) => {
                tracing::warn!(job = id, %error, "could not start job; the dead-job sweep will requeue it")
            }
        }
        replica.held.remove(id);
        replica.slot_freed();
    }

    /// Runs the job's handler to an outcome; the slot is held by the run (and given back while
    /// it is paused), and freed when this returns.
    async fn execute(&self, job: ClaimedJob, slot: OwnedSemaphorePermit, wires: &Wires) -> Run {
        let attempt = job.attempts + 1;
        let max_attempts = job.max_attempts;
        let Some(handler) = self.handlers.get(&job.kind) else {
            let reason = format!(
                "unknown job kind {:?}; this daemon runs: {}",
                job.kind,
                self.handlers.kinds().join(", ")
            );
            return Run::Ended(Outcome::Failed { reason });
        };
        let ctx = match JobContext::new(
            job,
            Arc::clone(&self.replica),
            slot,
            wires.lost.clone(),
            wires.pause.clone(),
        ) {
            Ok(ctx) => ctx,
            Err(Permanent(reason)) => return Run::Ended(Outcome::Failed { reason }),
        };
        let result = tokio::select! {
            biased;
            () = wires.lost.cancelled() => return Run::Lost,
            () = wires.interrupt.cancelled() => return Run::Interrupted,
            result = AssertUnwindSafe(handler.run(&ctx)).catch_unwind() => result,
        };
        let error = match result {
            Ok(Ok(())) => return Run::Ended(Outcome::Done),
            Ok(Err(error)) => error,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                anyhow::anyhow!("handler panicked: {message}")
            }
        };
        let reason = words(&error);
        Run::Ended(if Permanent::is_in(&error) || attempt >= max_attempts {
            Outcome::Failed { reason }
        } else {
            Outcome::Retry {
                backoff: backoff(self.retry_backoff, attempt),
                reason: format!("{reason} (attempt {attempt} of {max_attempts}; will retry)"),
            }
        })
    }

    /// Writes the outcome, retrying while the database does not answer: a job that finished must
    /// not be cancelled as dead because of a short outage.
    async fn record(&self, id: i64, outcome: &Outcome) {
        let mut wait = Duration::from_millis(100);
        let replica = &self.replica;
        for _ in 0..RECORD_TRIES {
            match replica.store.finish(id, &replica.worker, outcome).await {
                Ok(true) => {
                    match outcome {
                        Outcome::Done => tracing::debug!(job = id, "done"),
                        Outcome::Failed { reason } => tracing::warn!(job = id, "failed: {reason}"),
                        Outcome::Retry { reason, backoff } => {
                            tracing::warn!(job = id, retry_in = ?backoff, "failed: {reason}")
                        }
                    }
                    return;
                }
                Ok(false) => {
                    tracing::info!(job = id, "job was settled elsewhere before it finished");
                    return;
                }
                Err(error) => {
                    tracing::warn!(job = id, %error, retry_in = ?wait, "could not record outcome");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        tracing::error!(
            job = id,
            "outcome lost; the dead-job sweep will settle the job"
        );
    }
}

/// The error and its causes in one line, leaving out a cause that only repeats its parent (as
/// database errors do).
fn words(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
