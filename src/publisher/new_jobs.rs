//! Claims NEW jobs whose time has come and puts them on the consumers' channel. It never claims
//! more than the pool has free slots for, so a replica never hoards jobs it cannot start soon.
//!
//! Queues with a concurrency or a rate in the `queues` table are claimed one at a time, first,
//! each under its row's lock (the store counts and reserves there, so the limits hold across
//! replicas); then one claim takes from every other queue, by priority. Which queues are limited
//! is read at most once per `poll_interval` (and at once on PostgreSQL when the table changes).
//! While any queue is paused or limited, the claim itself never takes such a queue's jobs,
//! whatever this replica last read; while none is, it skips looking.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{Pass, Publisher};
use crate::held::{Claimed, Labels, State};
use crate::job::ClaimedJob;
use crate::replica::Replica;
use crate::store::{Claim, QueueRow, Result, Scope};

pub(crate) struct NewJobs {
    pub replica: Arc<Replica>,
    pub channel: mpsc::Sender<Claimed>,
    /// Claims start jobs in the same write: set when the replica has no rate limit.
    pub start: bool,
    /// `max_payload_bytes`: larger values are never fetched.
    pub max_bytes: u64,
    /// The `queues` setting: the only queues this replica serves; empty, all of them.
    pub served: Vec<String>,
    /// How often the `queues` table is read again.
    pub poll_interval: Duration,
    /// The limited queues this replica serves, as last read, and when.
    pub limited: Vec<QueueRow>,
    pub read_at: Option<Instant>,
    /// Whether any queue had a pause or a limit when last read.
    pub any_limits: bool,
}

impl NewJobs {
    pub fn new(replica: Arc<Replica>, channel: mpsc::Sender<Claimed>) -> Self {
        NewJobs {
            replica,
            channel,
            start: false,
            max_bytes: 1 << 20,
            served: Vec::new(),
            poll_interval: Duration::from_secs(1),
            limited: Vec::new(),
            read_at: None,
            any_limits: true,
        }
    }

    /// Reads which queues are limited, once per `poll_interval`. A failed read keeps the last
    /// list: the claims themselves stay exact.
    async fn read_queues(&mut self) {
        let changed = (self.replica.wakes.queues_changed).swap(false, Ordering::Relaxed);
        if !changed
            && self
                .read_at
                .is_some_and(|at| at.elapsed() < self.poll_interval)
        {
            return;
        }
        match self.replica.store.queues().await {
            Ok(rows) => {
                self.any_limits = rows.iter().any(|row| row.paused != 0 || row.limited());
                let served =
                    |row: &QueueRow| self.served.is_empty() || self.served.contains(&row.name);
                self.limited = rows
                    .into_iter()
                    .filter(|row| row.limited() && served(row))
                    .collect();
                self.read_at = Some(Instant::now());
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the queues table; using the last read")
            }
        }
    }

    fn claim<'a>(&'a self, scope: Scope<'a>, limit: usize) -> Claim<'a> {
        Claim {
            worker: &self.replica.worker,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            start: self.start,
            max_bytes: self.max_bytes,
            scope,
            any_limits: self.any_limits,
            dead_after: self.replica.dead_after,
            // Starts reserved beyond the next pass of any replica, so a queue's rate is met
            // while its jobs wait, and no further.
            ahead: self.poll_interval * 2,
        }
    }

    /// Hands claimed jobs to the consumers, each with one of `slots`.
    async fn hand_out(
        &self,
        jobs: Vec<ClaimedJob>,
        slots: &mut Vec<OwnedSemaphorePermit>,
        started: bool,
    ) -> Result<()> {
        let replica = &self.replica;
        for job in jobs {
            let Some(slot) = slots.pop() else {
                // Never: a claim takes at most as many jobs as there are slots. Were it to, the
                // job goes back rather than run without one.
                replica.store.release(&replica.worker, Some(job.id)).await?;
                continue;
            };
            let id = job.id;
            let state = if started {
                State::Running
            } else {
                State::Queued
            };
            let labels = Labels {
                queue: job.queue.clone(),
                kind: job.kind.clone(),
            };
            let held = replica.held.enter(id, state, slot, labels);
            let not_before = job.wait.map(|wait| tokio::time::Instant::now() + wait);
            let claimed = Claimed {
                job,
                held,
                started,
                not_before,
            };
            // The pool has stopped taking jobs (shutdown): the refused job, dropped here, lets
            // go of its entry and slot, and goes back to NEW at once.
            if self.channel.send(claimed).await.is_err() {
                replica.store.release(&replica.worker, Some(id)).await?;
            }
        }
        Ok(())
    }
}

impl Publisher for NewJobs {
    const NAME: &'static str = "new-jobs";

    async fn run_once(&mut self) -> Result<Pass> {
        let mut slots = self.replica.held.slots.take_free();
        if slots.is_empty() {
            self.replica.held.slots.set_backlog(true);
            return Ok(Pass::Idle);
        }
        self.read_queues().await;
        let mut held_back = false;
        for queue in &self.limited {
            if slots.is_empty() {
                break;
            }
            let claim = self.claim(Scope::Limited(&queue.name), slots.len());
            match self.replica.store.claim(&claim).await {
                Ok(jobs) => {
                    held_back |= jobs.len() < slots.len();
                    // A job whose start the rate reserved was claimed QUEUED.
                    let started = self.start && queue.rate_per_second.is_none();
                    self.hand_out(jobs, &mut slots, started).await?;
                }
                // One queue's trouble never holds up the others.
                Err(error) => {
                    tracing::warn!(queue = %queue.name, %error, "cannot claim from a limited queue")
                }
            }
        }
        self.replica.held.slots.set_held_back(held_back);
        if slots.is_empty() {
            self.replica.held.slots.set_backlog(true);
            return Ok(Pass::Found);
        }
        let scope = if self.served.is_empty() {
            Scope::Unlimited
        } else {
            Scope::UnlimitedOf(&self.served)
        };
        let wanted = slots.len();
        let jobs = self.replica.store.claim(&self.claim(scope, wanted)).await?;
        let full = jobs.len() == wanted;
        let pass = Pass::of(jobs.len(), wanted);
        self.replica.held.slots.set_backlog(full);
        self.hand_out(jobs, &mut slots, self.start).await?;
        Ok(pass)
    }
}
