//! Carries out the `control` requests users write: pause, resume, terminate. Requests on jobs
//! that wait (NEW, QUEUED, or PAUSED with no live holder) and every terminate are settled here
//! with a conditional UPDATE, by whichever replica sees them first; a pause or resume of a job
//! that runs (or waits paused) on this replica is passed to its task, which applies it at its
//! next checkpoint; requests for jobs another live replica holds are left to that replica.
//!
//! Requests that must wait (a resume waiting for a free slot, a pause of another replica's
//! job) stay in the table, so each pass pages through all of them by id: however many wait at
//! the front, a terminate behind them is read within a pass or two.

use std::sync::Arc;
use std::time::Duration;

use super::{Pass, Publisher};
use crate::held::PauseTaken;
use crate::job::{Control, ControlAction, ControlRequest, Status};
use crate::replica::Replica;
use crate::store::{Result, is_transient};

/// Requests read per page; a full page makes the next page come at once.
const BATCH: u32 = 500;

pub(crate) struct Controls {
    pub replica: Arc<Replica>,
    pub dead_after: Duration,
    /// The last id of the previous page while a pass pages through; 0 starts from the front.
    /// Only this loop reads and writes it.
    pub after: i64,
}

impl Controls {
    /// Carries out `action`. Only an unreachable database is an error: this page comes again
    /// at the next pass. A row the database refuses must not hold up the requests behind it.
    async fn apply(&self, request: &ControlRequest, action: ControlAction) -> Result<()> {
        let (id, control, replica) = (request.id, request.control, &self.replica);
        match replica.store.apply_control(request, action).await {
            Ok(true) => {
                if action == ControlAction::Terminate {
                    if let Some(labels) = replica.held.labels(id) {
                        replica.metrics.cancelled(&labels);
                    }
                    replica.held.take_away(id);
                }
                tracing::info!(job = id, %control, from = %request.status, ?action, "control request applied");
            }
            Ok(false) => {}
            Err(error) if is_transient(&error) => return Err(error),
            Err(error) => {
                tracing::warn!(job = id, %control, %error, "control request cannot be applied")
            }
        }
        Ok(())
    }
}

impl Publisher for Controls {
    const NAME: &'static str = "control";

    async fn run_once(&mut self) -> Result<Pass> {
        let replica = &self.replica;
        let requests = replica
            .store
            .find_controls(self.dead_after, self.after, BATCH)
            .await?;
        for request in &requests {
            let id = request.id;
            match request.action(&replica.worker) {
                ControlAction::Leave => {}
                ControlAction::Signal(Control::Pause) => {
                    // A QUEUED job not yet running here (or not held at all) pauses as any
                    // waiting job does.
                    let taken = replica.held.pause(id);
                    if request.status == Status::Queued && taken != PauseTaken::Signalled {
                        self.apply(request, ControlAction::PauseWaiting).await?;
                    }
                }
                ControlAction::Signal(_) => {
                    // A paused row in this replica's name that it does not hold (written so
                    // by hand) has no task to resume it: it goes back to NEW, as an abandoned
                    // one does.
                    if !replica.held.resume(id) {
                        self.apply(request, ControlAction::ResumeDetached).await?;
                    }
                }
                action => self.apply(request, action).await?,
            }
        }
        let full = requests.len() == BATCH as usize;
        self.after = match requests.last() {
            Some(last) if full => last.id,
            _ => 0,
        };
        Ok(Pass::full_if(full))
    }
}
