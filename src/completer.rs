//! Writes what runs report, in batches: the outcomes of finished jobs, and the starts of jobs
//! that ran as soon as a consumer took them, before their start was written. A job's task hands
//! its report over and goes on (or frees its slot) at once; the completer writes whatever has
//! gathered in one call to the store per kind of write, and while that is on its way the next
//! batch gathers. So a lone job waits for no timer, and a busy replica spends one statement on
//! hundreds of jobs instead of one each. A job that ends before its start is written (most
//! short jobs claimed ahead) has both written by one UPDATE, from QUEUED to DONE: a job then
//! costs its claim and that one write, as one claimed for a free consumer does.
//!
//! Reports come in order: a job's start before its end, and each batch is written before the
//! next, so a row's writes never overtake each other. Until its outcome is written a job stays
//! in the table as its claim or start left it, held by this replica's worker id, so shutdown
//! waits for the completer before it releases what is left.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::job::{Outcome, Report};
use crate::replica::Replica;
use crate::store::is_transient;

/// The most reports written by one call: a statement's size stays well inside every
/// database's limits.
pub(crate) const BATCH: usize = 1000;

/// The longest wait between tries while the database does not answer.
const MAX_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Completer {
    pub replica: Arc<Replica>,
}

impl Completer {
    /// Writes reports from `reports` until every sender is gone and the channel is empty.
    pub async fn run(self, mut reports: mpsc::Receiver<Report>) {
        let mut batch = Vec::with_capacity(BATCH);
        while reports.recv_many(&mut batch, BATCH).await > 0 {
            self.write_batch(std::mem::take(&mut batch)).await;
        }
        tracing::debug!("completer stopped");
    }

    /// The starts first, then the outcomes: those of jobs whose start is in the same batch
    /// and that ended DONE in one write with it, the others as they come.
    async fn write_batch(&self, batch: Vec<Report>) {
        // A job's start comes before its end, so one pass pairs them.
        let mut starts: HashMap<i64, Instant> = HashMap::new();
        let mut unstarted = Vec::new();
        let mut ends = Vec::new();
        for report in batch {
            match report {
                Report::Started(id, at) => {
                    starts.insert(id, at);
                }
                Report::Ended(id, Outcome::Done) if !starts.is_empty() => {
                    match starts.remove(&id) {
                        Some(at) => unstarted.push((id, at)),
                        None => ends.push((id, Outcome::Done)),
                    }
                }
                Report::Ended(id, outcome) => ends.push((id, outcome)),
            }
        }
        if !starts.is_empty() {
            let starts: Vec<(i64, Instant)> = starts.into_iter().collect();
            self.start(&starts).await;
        }
        if !unstarted.is_empty() {
            self.finish_unstarted(&unstarted).await;
        }
        if !ends.is_empty() {
            self.record(&ends).await;
        }
        let held = &self.replica.held;
        for id in unstarted
            .iter()
            .map(|(id, _)| id)
            .chain(ends.iter().map(|(id, _)| id))
        {
            held.finished(*id);
        }
        held.slots.outcomes_written();
    }

    /// Writes the starts of jobs already running. A start the database may or may not have
    /// committed (the connection broke on the way back) is tried again until it answers, and
    /// then those RUNNING by this worker are started (only this replica's start could have
    /// made them so). A job whose start is refused was taken back first (terminated, paused,
    /// given back): its run is stopped.
    async fn start(&self, starts: &[(i64, Instant)]) {
        let (store, worker, held) = (
            &self.replica.store,
            &self.replica.worker,
            &self.replica.held,
        );
        let ids: Vec<i64> = starts.iter().map(|(id, _)| *id).collect();
        let ids = &ids[..];
        let started = self
            .until_answered(ids.len(), |retry| async move {
                let started = store.mark_started(worker, ids, since(starts)).await?;
                if !retry {
                    return Ok(started);
                }
                let lost = store.lost(worker, ids).await?;
                Ok(ids
                    .iter()
                    .copied()
                    .filter(|id| !lost.contains(id))
                    .collect())
            })
            .await;
        let mut started = match started {
            Ok(started) => started,
            Err(error) => {
                // The database refuses the start itself (a trigger or constraint of the
                // user's): the runs stop, and the dead-job sweep gives the jobs back.
                tracing::error!(jobs = ids.len(), %error, "could not write starts; stopping those runs");
                Vec::new()
            }
        };
        started.sort_unstable();
        for &id in ids {
            if started.binary_search(&id).is_ok() {
                held.start_written(id);
            } else if held.take_away(id) {
                tracing::info!(
                    job = id,
                    "taken back before its start was written; stopping its run"
                );
            }
        }
    }

    /// Writes jobs that ended DONE before their start was written, start and outcome at once.
    /// Should the database refuse that for the data of one, each is written as any other: the
    /// start, then the outcome.
    async fn finish_unstarted(&self, jobs: &[(i64, Instant)]) {
        let (store, worker) = (&self.replica.store, &self.replica.worker);
        let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
        let done = self
            .until_answered(ids.len(), |_| {
                store.finish_unstarted(worker, &ids, since(jobs))
            })
            .await;
        let outcomes: Vec<(i64, Outcome)> = ids.iter().map(|id| (*id, Outcome::Done)).collect();
        match done {
            Ok(won) => self.report(&outcomes, won),
            Err(error) => {
                tracing::warn!(jobs = ids.len(), %error, "jobs that ended before their start was written were refused; writing start and outcome apart");
                self.start(jobs).await;
                self.record(&outcomes).await;
            }
        }
    }

    /// Runs `write` (of `jobs` jobs) until the database answers: an error back is one of the
    /// data. Meanwhile runs wait for their starts before they begin ([`Held::stalled`]).
    /// `write` is told whether it is a retry, after which an earlier try may have been
    /// committed without the answer reaching here.
    ///
    /// [`Held::stalled`]: crate::held::Held::stalled
    async fn until_answered<T, F>(
        &self,
        jobs: usize,
        mut write: impl FnMut(bool) -> F,
    ) -> Result<T, sqlx::Error>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        let held = &self.replica.held;
        let mut wait = Duration::from_millis(100);
        let mut retry = false;
        loop {
            match write(retry).await {
                Err(error) if is_transient(&error) => {
                    tracing::warn!(jobs, %error, retry_in = ?wait, "could not write to the database; trying again");
                    held.set_stalled(true);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                    retry = true;
                }
                done => {
                    held.set_stalled(false);
                    return done;
                }
            }
        }
    }

    /// Writes outcomes. While the database is out of reach, it tries again until it answers: a
    /// job that finished must not be run again, nor cancelled as dead, because of an outage.
    /// Meanwhile the dead-jobs pass vouches for these jobs, and the pool claims nothing new once
    /// the channel is full. A batch the database refuses for its data is written one outcome at
    /// a time, so that one row it will never take cannot hold up the others.
    async fn record(&self, batch: &[(i64, Outcome)]) {
        let error = match self.write(batch).await {
            Ok(won) => return self.report(batch, won),
            Err(error) => error,
        };
        if batch.len() > 1 {
            tracing::warn!(jobs = batch.len(), %error, "a batch of outcomes was refused; writing them one by one");
        }
        for outcome in batch {
            let single = std::slice::from_ref(outcome);
            let error = match self.write(single).await {
                Ok(won) => {
                    self.report(single, won);
                    continue;
                }
                Err(error) => error,
            };
            // The database will not take this outcome as it is (a trigger, a constraint of the
            // user's): the job ends FAILED, saying so.
            let id = outcome.0;
            let failed = [(
                id,
                Outcome::Failed {
                    reason: format!(
                        "its outcome could not be stored: {}",
                        crate::in_words(&error.into())
                    ),
                },
            )];
            match self.write(&failed).await {
                Ok(won) => self.report(&failed, won),
                Err(error) => tracing::error!(
                    job = id,
                    %error,
                    "the outcome cannot be stored; the dead-job sweep will settle the job"
                ),
            }
        }
    }

    /// Writes `outcomes` until the database answers: an error back is one of the data.
    async fn write(&self, outcomes: &[(i64, Outcome)]) -> Result<Vec<i64>, sqlx::Error> {
        let (store, worker) = (&self.replica.store, &self.replica.worker);
        self.until_answered(outcomes.len(), |_| store.finish(worker, outcomes))
            .await
    }

    fn report(&self, batch: &[(i64, Outcome)], mut won: Vec<i64>) {
        won.sort_unstable();
        for (id, outcome) in batch {
            if won.binary_search(id).is_err() {
                tracing::info!(job = id, "job was settled elsewhere before it finished");
                continue;
            }
            if let Some(labels) = self.replica.held.labels(*id) {
                self.replica.metrics.finished(&labels, outcome);
            }
            match outcome {
                Outcome::Done => tracing::debug!(job = id, "done"),
                Outcome::Failed { reason } => tracing::warn!(job = id, "failed: {reason}"),
                Outcome::Retry { reason, backoff } => {
                    tracing::warn!(job = id, retry_in = ?backoff, "failed: {reason}")
                }
            }
        }
    }
}

/// How long ago the latest of `starts` began: the start written for all of them, which none
/// began after.
fn since(starts: &[(i64, Instant)]) -> Duration {
    starts
        .iter()
        .map(|(_, at)| at.elapsed())
        .min()
        .unwrap_or_default()
}
