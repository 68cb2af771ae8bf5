//! Claims NEW jobs whose time has come and puts them on the consumers' channel. It claims for
//! the free consumers, whose jobs the claim starts, and up to `prefetch` more, which wait QUEUED
//! for a consumer: a replica holds no more than it can start soon, yet its consumers never wait
//! a round trip for their next job.
//!
//! Queues with a concurrency or a rate in the `queues` table are claimed one at a time, first,
//! each under its row's lock (the store counts and reserves there, so the limits hold across
//! replicas); then one claim takes from every other queue, by priority. Which queues are limited
//! is read at most once per `poll_interval` (and at once on PostgreSQL when the table changes).
//! While any queue is paused or limited, the claim itself never takes such a queue's jobs,
//! whatever this replica last read; while none is, it skips looking.

use std::collections::HashMap;
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
    /// When a limited queue's claim last found it empty.
    pub found_empty: HashMap<String, Instant>,
    /// Whether the last pass claimed all it had room for: a backlog is being drained.
    pub draining: bool,
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
            found_empty: HashMap::new(),
            draining: false,
        }
    }

    /// Whether to skip queue `name` this pass: while a backlog elsewhere keeps every pass full,
    /// a limited queue found empty is looked at again once per `poll_interval`, not on every
    /// pass, where its lock, count and claim would cost more than the jobs they find.
    fn skip(&self, name: &str) -> bool {
        self.draining
            && self
                .found_empty
                .get(name)
                .is_some_and(|at| at.elapsed() < self.poll_interval)
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
                let limited = &self.limited;
                self.found_empty
                    .retain(|name, _| limited.iter().any(|row| row.name == *name));
                self.read_at = Some(Instant::now());
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the queues table; using the last read")
            }
        }
    }

    fn claim<'a>(&'a self, scope: Scope<'a>, limit: usize, start: bool) -> Claim<'a> {
        Claim {
            worker: &self.replica.worker,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            start,
            max_bytes: self.max_bytes,
            scope,
            any_limits: self.any_limits,
            dead_after: self.replica.dead_after,
            // Starts reserved beyond the next pass of any replica, so a queue's rate is met
            // while its jobs wait, and no further.
            ahead: self.poll_interval * 2,
        }
    }

    /// Hands claimed jobs to the consumers, each with one of `room`'s places, and one of
    /// `consumers` if given (the claim took as many jobs as there are of either).
    async fn hand_out(
        &self,
        jobs: Vec<ClaimedJob>,
        room: &mut Vec<OwnedSemaphorePermit>,
        mut consumers: Option<&mut Vec<OwnedSemaphorePermit>>,
        started: bool,
    ) -> Result<()> {
        let replica = &self.replica;
        for job in jobs {
            let consumer = consumers.as_mut().and_then(|consumers| consumers.pop());
            let Some(place) = room
                .pop()
                .filter(|_| consumers.is_none() || consumer.is_some())
            else {
                // Never: a claim takes at most as many jobs as there are places (and consumers
                // when it asks for them). Were it to, the job goes back rather than run beyond
                // the bounds.
                replica
                    .store
                    .release(&replica.worker, Some(&[job.id]))
                    .await?;
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
            let held = replica.held.enter(id, state, place, consumer, labels);
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
                replica.store.release(&replica.worker, Some(&[id])).await?;
            }
        }
        Ok(())
    }
}

impl Publisher for NewJobs {
    const NAME: &'static str = "new-jobs";

    async fn run_once(&mut self) -> Result<Pass> {
        let replica = Arc::clone(&self.replica);
        let slots = &replica.held.slots;
        let mut room = slots.take_room();
        if room.is_empty() {
            // A place coming free wakes the loop.
            slots.set_backlog(true);
            return Ok(Pass::Idle);
        }
        self.read_queues().await;
        let mut found = 0;
        // Consumers free now: the jobs claimed for them start at once. Claimed jobs beyond them
        // wait QUEUED, prefetched, for consumers to come free.
        let mut consumers = slots.take_run(room.len());
        let mut held_back = false;
        let mut found_empty = Vec::new();
        for queue in &self.limited {
            // A limited queue's jobs are claimed only for free consumers: claimed ahead, they
            // would take up its concurrency, and its reserved starts, while they wait.
            if consumers.is_empty() {
                break;
            }
            if self.skip(&queue.name) {
                continue;
            }
            let wanted = consumers.len();
            let claim = self.claim(Scope::Limited(&queue.name), wanted, self.start);
            match self.replica.store.claim(&claim).await {
                Ok(jobs) => {
                    held_back |= jobs.len() < wanted;
                    found += jobs.len();
                    if jobs.is_empty() {
                        found_empty.push(queue.name.clone());
                    } else {
                        self.found_empty.remove(&queue.name);
                    }
                    // A job whose start the rate reserved was claimed QUEUED.
                    let started = self.start && queue.rate_per_second.is_none();
                    self.hand_out(jobs, &mut room, Some(&mut consumers), started)
                        .await?;
                }
                // One queue's trouble never holds up the others.
                Err(error) => {
                    tracing::warn!(queue = %queue.name, %error, "cannot claim from a limited queue")
                }
            }
        }
        slots.set_held_back(held_back);
        let now = Instant::now();
        for name in found_empty {
            self.found_empty.insert(name, now);
        }
        let scope = if self.served.is_empty() {
            Scope::Unlimited
        } else {
            Scope::UnlimitedOf(&self.served)
        };
        if self.start && !consumers.is_empty() {
            let wanted = consumers.len();
            let jobs = self
                .replica
                .store
                .claim(&self.claim(scope, wanted, true))
                .await?;
            let full = jobs.len() == wanted;
            found += jobs.len();
            self.hand_out(jobs, &mut room, Some(&mut consumers), true)
                .await?;
            if !full {
                // All there is to claim is claimed.
                slots.set_backlog(false);
                self.draining = false;
                return Ok(Pass::some(found));
            }
        }
        drop(consumers);
        if room.is_empty() {
            slots.set_backlog(true);
            self.draining = true;
            return Ok(Pass::Found);
        }
        let wanted = room.len();
        let jobs = self
            .replica
            .store
            .claim(&self.claim(scope, wanted, false))
            .await?;
        let full = jobs.len() == wanted;
        slots.set_backlog(full);
        self.draining = full;
        found += jobs.len();
        self.hand_out(jobs, &mut room, None, false).await?;
        Ok(if full { Pass::Full } else { Pass::some(found) })
    }
}
