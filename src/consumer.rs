//! The consumer pool: takes claimed jobs off the channel, waits for the rate limiter before each
//! start, and runs each job in its own task to one recorded outcome. Concurrency is bounded by
//! the slots the new-jobs publisher hands out with each job, not here.

use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::JobContext;
use crate::handlers::{Handlers, Permanent};
use crate::held::{Claimed, HeldJob, State};
use crate::job::{ClaimedJob, Outcome, Report, backoff};
use crate::replica::Replica;

pub(crate) struct Pool {
    pub replica: Arc<Replica>,
    pub handlers: Handlers,
    /// `None` when `rate_per_second` is 0.
    pub limiter: Option<DefaultDirectRateLimiter>,
    pub retry_backoff: Duration,
    /// Where a run's start (when the claim left it QUEUED) and outcome go to be written.
    pub completer: mpsc::Sender<Report>,
}

/// How a job's task ended.
enum Run {
    Ended(Outcome),
    /// The row was settled elsewhere (cancelled as dead); nothing more to write.
    Lost,
    /// Shutdown's grace ran out, or shutdown found the job paused; it is released.
    Interrupted,
    /// The run's lease lapsed while the database was out of reach; it is released once the
    /// database answers.
    Lapsed,
}

/// `rate_per_second` starts a second, one at a time: no burst, so the database sees an even pace.
pub(crate) fn limiter(rate_per_second: u32) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(rate_per_second)?;
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(NonZeroU32::MIN),
    ))
}

impl Pool {
    /// Starts jobs from `channel` until `stop`, then gives back what is still waiting in it,
    /// except jobs whose claim started them: those are running as far as the table says, so
    /// they run, under shutdown's grace like the rest. Jobs run in `jobs`.
    ///
    /// A job that waits QUEUED takes a free consumer and the limiter's leave, and runs at once:
    /// its start is written behind the run, by the completer (see [`HeldJob::begin_run`]).
    pub async fn run(
        self: Arc<Self>,
        mut channel: mpsc::Receiver<Claimed>,
        stop: CancellationToken,
        jobs: TaskTracker,
    ) {
        let mut next: Option<Claimed> = None;
        loop {
            let claimed = match next.take() {
                Some(claimed) => claimed,
                None => tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    next = channel.recv() => match next {
                        Some(claimed) => claimed,
                        None => break,
                    },
                },
            };
            let Some(claimed) = self.dispatch(claimed, &jobs, &stop) else {
                continue;
            };
            if claimed.held.wires().lost.is_cancelled() {
                // Withdrawn by a pause, or terminated, while it waited: dropped, it needs
                // neither a consumer nor the limiter's leave.
                continue;
            }
            if !claimed.held.has_consumer() {
                let consumer = tokio::select! {
                    biased;
                    () = stop.cancelled() => None,
                    consumer = self.replica.held.slots.run() => consumer,
                };
                let Some(consumer) = consumer else {
                    next = Some(claimed);
                    break;
                };
                claimed.held.take_consumer(consumer);
            }
            if !self.ready(&stop).await {
                next = Some(claimed);
                break;
            }
            Arc::clone(&self).start(claimed, &jobs, &stop).await;
        }
        channel.close();
        let mut back = Vec::new();
        for claimed in next
            .into_iter()
            .chain(std::iter::from_fn(|| channel.try_recv().ok()))
        {
            if claimed.started {
                let pool = Arc::clone(&self);
                jobs.spawn(async move { pool.run_job(claimed).await });
            } else {
                back.push(claimed);
            }
        }
        self.give_back(back).await;
    }

    /// Sends on their way the jobs that need no start from the pool: those the claim started,
    /// and those whose queue reserved a later start, which wait in a task of their own so that
    /// the jobs behind them do not wait with them. Returns the others.
    fn dispatch(
        self: &Arc<Self>,
        claimed: Claimed,
        jobs: &TaskTracker,
        stop: &CancellationToken,
    ) -> Option<Claimed> {
        if claimed.started {
            let pool = Arc::clone(self);
            jobs.spawn(async move { pool.run_job(claimed).await });
            return None;
        }
        if let Some(at) = claimed.not_before {
            let (pool, stop, started) = (Arc::clone(self), stop.clone(), jobs.clone());
            jobs.spawn(async move { pool.run_paced(claimed, at, stop, &started).await });
            return None;
        }
        Some(claimed)
    }

    /// Waits for the replica's own rate limiter; `false` if `stop` came first.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => false,
            () = limiter.until_ready() => true,
        }
    }

    /// Whether the replica's own rate limiter lets a job start now, counting it if so.
    fn allowed(&self) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|limiter| limiter.check().is_ok())
    }

    /// Runs a job at the start its queue's rate reserved, if the replica's limiter allows it
    /// then.
    async fn run_paced(
        self: Arc<Self>,
        claimed: Claimed,
        at: tokio::time::Instant,
        stop: CancellationToken,
        jobs: &TaskTracker,
    ) {
        let due = tokio::select! {
            biased;
            () = stop.cancelled() => false,
            () = tokio::time::sleep_until(at) => true,
        };
        // The replica's own limit applies on top, but must not push the start past its
        // reserved moment, where it would crowd the starts other replicas reserved next: a job
        // the limiter would delay goes back, to be reserved again.
        if due && self.allowed() {
            self.start(claimed, jobs, &stop).await;
        } else {
            if due {
                tracing::debug!(
                    job = claimed.job.id,
                    "the replica's rate limit missed the queue's reserved start; given back"
                );
            }
            self.give_back(vec![claimed]).await;
        }
    }

    /// Runs a QUEUED job that holds a consumer, in a task of its own in `jobs`, and hands its
    /// start to the completer to be written behind the run. One taken back meanwhile
    /// (terminated, or withdrawn by a pause) is let go of.
    async fn start(
        self: Arc<Self>,
        claimed: Claimed,
        jobs: &TaskTracker,
        stop: &CancellationToken,
    ) {
        let id = claimed.job.id;
        if !claimed.held.begin_run() {
            tracing::debug!(job = id, "taken back before it started");
            // Dropping it lets go of the job and frees its place and consumer.
            return;
        }
        // Sent before the run can end, so that the start is written before the outcome.
        let began = std::time::Instant::now();
        if self
            .completer
            .send(Report::Started(id, began))
            .await
            .is_err()
        {
            tracing::error!(job = id, "the completer has stopped; the job is given back");
            self.give_back(vec![claimed]).await;
            return;
        }
        if self.replica.held.stalled() {
            // The database does not answer: the run waits until it knows of it.
            let wires = claimed.held.wires();
            tokio::select! {
                biased;
                () = wires.lost.cancelled() => return,
                () = stop.cancelled() => return self.give_back(vec![claimed]).await,
                () = wires.signals.started() => {}
            }
        }
        jobs.spawn(async move { self.run_job(claimed).await });
    }

    /// Claimed jobs this replica will not start after all go back to NEW for anyone to take.
    async fn give_back(&self, claimed: Vec<Claimed>) {
        if claimed.is_empty() {
            return;
        }
        let replica = &self.replica;
        let ids: Vec<i64> = claimed.iter().map(|claimed| claimed.job.id).collect();
        // Dropping them removes their entries and frees their places.
        drop(claimed);
        if let Err(error) = replica.store.release(&replica.worker, Some(&ids)).await {
            tracing::warn!(jobs = ids.len(), %error, "could not give back queued jobs; the dead-job sweep will");
        }
    }

    async fn run_job(&self, claimed: Claimed) {
        let Claimed { job, held, .. } = claimed;
        let (id, replica) = (job.id, &self.replica);
        let metrics = &replica.metrics;
        let (queue, kind) = (job.queue.clone(), job.kind.clone());
        let waited = job
            .waited
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .unwrap_or_default();
        metrics.started(&queue, &kind, waited);
        let began = std::time::Instant::now();
        let (run, held) = self.execute(job, held).await;
        let time = began.elapsed();
        metrics.ran(&queue, &kind, time);
        replica.held.slots.ran(time);
        match run {
            Run::Ended(outcome) => {
                // The row stays RUNNING and ours until the completer writes the outcome, and
                // lets go of it then.
                if !held.hand_over(&self.completer, outcome).await {
                    tracing::error!(
                        job = id,
                        "the completer has stopped; the dead-job sweep will settle the job"
                    );
                }
            }
            Run::Lost => {
                tracing::info!(job = id, "task stopped: the job was cancelled or handed on")
            }
            Run::Interrupted => match replica.store.release(&replica.worker, Some(&[id])).await {
                Ok(_) => tracing::info!(job = id, "shutdown: job released"),
                Err(error) => {
                    tracing::warn!(job = id, %error, "shutdown: could not release job")
                }
            },
            Run::Lapsed => {
                held.set(State::Releasing);
                self.release_when_reached(&held).await;
            }
        }
    }

    /// Gives back a job whose lease lapsed, trying until the database answers: a job stopped
    /// by an outage runs again, and is never cancelled for it. Shutdown's end stops the trying;
    /// its last release of everything still held takes over.
    async fn release_when_reached(&self, held: &HeldJob) {
        let (id, replica) = (held.id(), &self.replica);
        let mut wait = Duration::from_millis(100);
        loop {
            match replica.store.release(&replica.worker, Some(&[id])).await {
                Ok(released) => {
                    tracing::info!(job = id, released, "job whose lease lapsed given back");
                    return;
                }
                Err(error) => tracing::debug!(job = id, %error, "cannot give back the job yet"),
            }
            tokio::select! {
                () = held.wires().interrupt.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs the job's handler to an outcome. The run holds the job (and gives its slot back
    /// while it is paused), and hands it back with the outcome.
    async fn execute(&self, job: ClaimedJob, held: HeldJob) -> (Run, HeldJob) {
        let attempt = job.attempts.saturating_add(1);
        let max_attempts = job.max_attempts;
        if let Some(reason) = job.unfit {
            return (Run::Ended(Outcome::Failed { reason }), held);
        }
        let Some(handler) = self.handlers.get(&job.kind) else {
            let reason = format!(
                "unknown job kind {:?}; this daemon runs: {}",
                job.kind,
                self.handlers.kinds().join(", ")
            );
            return (Run::Ended(Outcome::Failed { reason }), held);
        };
        let ctx = match JobContext::new(job, Arc::clone(&self.replica), held) {
            Ok(ctx) => ctx,
            Err(unfit) => {
                let (Permanent(reason), held) = *unfit;
                return (Run::Ended(Outcome::Failed { reason }), held);
            }
        };
        let wires = ctx.held().wires();
        let run = tokio::select! {
            biased;
            () = wires.lost.cancelled() => Run::Lost,
            () = wires.interrupt.cancelled() => Run::Interrupted,
            () = wires.lapsed.cancelled() => Run::Lapsed,
            result = AssertUnwindSafe(handler.run(&ctx)).catch_unwind() => {
                Run::Ended(self.outcome(result, attempt, max_attempts))
            }
        };
        (run, ctx.into_held())
    }

    /// What a handler's result means for the row: done, failed for good, or retried later.
    fn outcome(
        &self,
        result: std::thread::Result<anyhow::Result<()>>,
        attempt: i32,
        max_attempts: i32,
    ) -> Outcome {
        let error = match result {
            Ok(Ok(())) => return Outcome::Done,
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
        let reason = crate::in_words(&error);
        if Permanent::is_in(&error) || attempt >= max_attempts {
            Outcome::Failed { reason }
        } else {
            Outcome::Retry {
                backoff: backoff(self.retry_backoff, attempt),
                reason: format!("{reason} (attempt {attempt} of {max_attempts}; will retry)"),
            }
        }
    }
}
