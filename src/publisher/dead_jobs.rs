//! Finds dead jobs (QUEUED or RUNNING, silent for `dead_after`) of any replica and hands them to
//! the canceller. Each pass first vouches for this replica's own jobs that no handler speaks
//! for (waiting in its channel, paused, or finished with the outcome not yet written), and
//! checks that its running jobs are still its own, stopping the tasks of those settled elsewhere.
//!
//! After the database has been out of reach, every replica lost it at the same moment, so every
//! job looks silent. A replica that has just got the database back therefore vouches for its
//! own jobs but sweeps for nobody else's until `dead_after` has passed: by then every live
//! replica has had the time to vouch for its jobs again, and only the dead ones' stay silent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Pass, Publisher};
use crate::held::State;
use crate::job::DeadJob;
use crate::replica::Replica;
use crate::store::Result;

/// Dead jobs handed over per pass; the rest wait for the next one.
const BATCH: u32 = 1000;

pub(crate) struct DeadJobs {
    pub replica: Arc<Replica>,
    pub dead_after: Duration,
    pub canceller: mpsc::Sender<DeadJob>,
    /// Set when a pass failed or crawled: the database was out of reach. Only this loop reads
    /// and writes it, as it does `quiet_until`.
    pub out_of_touch: bool,
    /// No sweep before this instant: other replicas are still vouching again after an outage.
    pub quiet_until: Option<Instant>,
}

impl DeadJobs {
    pub fn new(
        replica: Arc<Replica>,
        dead_after: Duration,
        canceller: mpsc::Sender<DeadJob>,
    ) -> Self {
        DeadJobs {
            replica,
            dead_after,
            canceller,
            out_of_touch: false,
            quiet_until: None,
        }
    }

    /// Vouches for this replica's waiting jobs and stops the tasks of jobs it no longer holds.
    async fn vouch(&self) -> Result<()> {
        let replica = &self.replica;
        let (store, worker, held) = (&replica.store, &replica.worker, &replica.held);
        let waiting = held.ids(&[
            State::Queued,
            State::Paused,
            State::Finishing,
            State::Releasing,
        ]);
        if !waiting.is_empty() {
            // A sign younger than a quarter of the lease lasts until a later pass renews it.
            store.touch(worker, &waiting, self.dead_after / 4).await?;
        }
        let running = held.ids(&[State::Running, State::Paused]);
        for id in store.lost(worker, &running).await? {
            if held.take_away(id) {
                tracing::info!(job = id, "job was settled elsewhere; stopping its task");
            }
        }
        Ok(())
    }

    /// Hands the dead jobs to the canceller, unless `quiet`.
    async fn sweep(&self, quiet: bool) -> Result<()> {
        let dead = self.replica.store.find_dead(self.dead_after, BATCH).await?;
        if quiet {
            return Ok(());
        }
        for job in dead {
            if self.canceller.send(job).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

impl Publisher for DeadJobs {
    const NAME: &'static str = "dead-jobs";

    async fn run_once(&mut self) -> Result<Pass> {
        let began = Instant::now();
        if let Err(error) = self.vouch().await {
            self.out_of_touch = true;
            return Err(error);
        }
        // A pass that took half of `dead_after` met a database that hardly answered: the other
        // replicas may not have reached it either.
        if self.out_of_touch || began.elapsed() > self.dead_after / 2 {
            self.out_of_touch = false;
            self.quiet_until = Some(Instant::now() + self.dead_after);
            tracing::info!(
                wait = ?self.dead_after,
                "database reached again; no sweep for dead jobs until the other replicas have vouched for theirs"
            );
        }
        let quiet = self.quiet_until.is_some_and(|until| Instant::now() < until);
        if !quiet {
            self.quiet_until = None;
        }
        // The sweep's query runs while quiet too: it is the pass's one sure round trip to the
        // database, which readiness reports.
        if let Err(error) = self.sweep(quiet).await {
            self.out_of_touch = true;
            return Err(error);
        }
        self.replica.reached_database().await;
        // The canceller settles what was sent before the next pass looks again.
        Ok(Pass::Idle)
    }
}
