//! Carries out the `control` requests users write: pause, resume, terminate. Requests on jobs
//! that wait (NEW, QUEUED, or PAUSED with no live holder) and every terminate are settled here
//! with a conditional UPDATE, by whichever replica sees them first; a pause or resume of a job
//! that runs (or waits paused) on this replica is passed to its task, which applies it at its
//! next checkpoint; requests for jobs another live replica holds are left to that replica.

use std::sync::Arc;
use std::time::Duration;

use super::Publisher;
use crate::job::{Control, ControlAction};
use crate::replica::Replica;
use crate::store::Result;

/// Requests read per pass; a full batch makes the next pass come at once.
const BATCH: u32 = 500;

pub(crate) struct Controls {
    pub replica: Arc<Replica>,
    pub dead_after: Duration,
}

impl Publisher for Controls {
    const NAME: &'static str = "control";

    async fn run_once(&mut self) -> Result<bool> {
        let replica = &self.replica;
        let requests = replica.store.find_controls(self.dead_after, BATCH).await?;
        let mut settled = 0;
        for request in &requests {
            let (id, control) = (request.id, request.control);
            match request.action(&replica.worker) {
                ControlAction::Leave => {}
                ControlAction::Signal(signal) => {
                    replica.held.signal_pause(id, signal == Control::Pause);
                }
                action => {
                    if replica.store.apply_control(request, action).await? {
                        settled += 1;
                        if action == ControlAction::Terminate {
                            replica.held.take_away(id);
                        }
                        tracing::info!(job = id, %control, from = %request.status, ?action, "control request applied");
                    }
                }
            }
        }
        // Only settled requests leave the table; a full batch of signals must not spin.
        Ok(settled > 0 && requests.len() == BATCH as usize)
    }
}
