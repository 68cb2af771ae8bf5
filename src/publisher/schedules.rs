//! Inserts the jobs of the `schedules` table's slots, on every replica, with no leader: each
//! pass plans every schedule from its row ([`crate::schedule::plan`]) and writes the plan step
//! by step, each step one transaction whose conditional UPDATE of the cursor only one replica
//! wins; the winner inserts the slot's job in it. A replica that loses a step leaves the
//! schedule to the winner until its next pass. So a replica that dies between passes costs
//! nothing (any other one goes on from the cursor in the table), and after a time when none
//! ran, the first one back applies the schedule's `catch_up`.
//!
//! A schedule whose cron or timezone cannot be read is marked with the reason in its `error`
//! column and skipped; only the replica that writes the mark logs it, so it is logged once per
//! change, however many replicas and passes meet it.

use std::sync::Arc;
use std::time::Duration;

use super::{Pass, Publisher};
use crate::schedule::{CatchUp, Cursor, Slots, plan};
use crate::store::{Advance, Result, ScheduleRow, Store, is_transient};

pub(crate) struct Recurring {
    pub store: Arc<dyn Store>,
    /// How late a slot may be found and still count as on time rather than missed: a little
    /// more than the time between two passes.
    pub late: Duration,
}

impl Recurring {
    pub fn new(store: Arc<dyn Store>, poll_interval: Duration) -> Self {
        Recurring {
            store,
            late: late_after(poll_interval),
        }
    }

    /// Writes `schedule`'s plan for this pass; whether more slots are due than it inserted.
    async fn run_schedule(&self, schedule: &ScheduleRow) -> Result<bool> {
        let planned = Slots::parse(&schedule.cron, &schedule.timezone).and_then(|slots| {
            let catch_up: CatchUp = schedule.catch_up.parse()?;
            let cursor = Cursor {
                catch_up,
                paused: schedule.paused != 0,
                created_at: schedule.created_at,
                last_run_at: schedule.last_run_at,
                next_run_at: schedule.next_run_at,
                now: schedule.now,
            };
            plan(&slots, &cursor, self.late)
        });
        let plan = match planned {
            Ok(plan) => plan,
            Err(reason) => {
                self.mark(schedule, Some(&reason)).await?;
                return Ok(false);
            }
        };
        let mut refused = None;
        let (mut last_run_at, mut next_run_at) = (schedule.last_run_at, schedule.next_run_at);
        for step in &plan.steps {
            let advance = Advance {
                schedule,
                last_run_at,
                next_run_at,
                step,
            };
            match self.store.advance_schedule(&advance).await {
                Ok(true) => {
                    if let Some(slot) = step.slot {
                        tracing::debug!(schedule = %schedule.name, %slot, "scheduled job inserted");
                    }
                    (last_run_at, next_run_at) = (step.last_run_at, Some(step.next_run_at));
                }
                // Another replica moved the cursor first: it writes the rest.
                Ok(false) => break,
                Err(error) if is_transient(&error) => return Err(error),
                // The database refuses the job itself (SQLite's payload limit, a value its
                // column refuses): the schedule says why, and the others run on.
                Err(error) => {
                    refused = Some(format!("its job cannot be inserted: {error}"));
                    break;
                }
            }
        }
        if schedule.error != refused {
            self.mark(schedule, refused.as_deref()).await?;
        }
        if refused.is_some() {
            return Ok(false);
        }
        Ok(plan.more)
    }

    /// Records what is wrong with `schedule` (or that nothing is), logging it if this replica
    /// is the one that wrote it.
    async fn mark(&self, schedule: &ScheduleRow, error: Option<&str>) -> Result<()> {
        if self.store.mark_schedule(schedule, error).await? {
            match error {
                Some(reason) => {
                    tracing::warn!(schedule = %schedule.name, %reason, "schedule skipped")
                }
                None => tracing::info!(schedule = %schedule.name, "schedule runs again"),
            }
        }
        Ok(())
    }
}

/// A slot found later than this after it came due was missed: twice the time between passes
/// (a pass may be late, and another replica's too), and a second more.
fn late_after(poll_interval: Duration) -> Duration {
    poll_interval.saturating_mul(2) + Duration::from_secs(1)
}

impl Publisher for Recurring {
    const NAME: &'static str = "schedules";

    async fn run_once(&mut self) -> Result<Pass> {
        let mut more = false;
        for schedule in self.store.schedules().await? {
            more |= self.run_schedule(&schedule).await?;
        }
        Ok(Pass::full_if(more))
    }
}
