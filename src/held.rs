//! The jobs this replica holds: claimed and waiting in its channel, or running. Publishers read
//! it to vouch for the queued ones and to check on the running ones; the canceller and the
//! publishers use it to stop a job's task when the job has been settled elsewhere.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Held {
    /// A `std::sync::Mutex` and not a Tokio one: no `.await` happens while it is held, and every
    /// critical section is a map lookup.
    jobs: Mutex<HashMap<i64, Entry>>,
}

struct Entry {
    running: bool,
    /// Cancelled when the job's row no longer belongs to this replica's run of it: the task
    /// stops without writing anything, because someone else already settled the row.
    lost: CancellationToken,
}

impl Held {
    /// A claimed job enters; the returned token fires if the job is taken away.
    pub fn queued(&self, id: i64) -> CancellationToken {
        let lost = CancellationToken::new();
        self.lock().insert(
            id,
            Entry {
                running: false,
                lost: lost.clone(),
            },
        );
        lost
    }

    pub fn started(&self, id: i64) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.running = true;
        }
    }

    pub fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Stops the job's task if this replica runs it; `false` if it does not hold the job.
    pub fn take_away(&self, id: i64) -> bool {
        match self.lock().get(&id) {
            Some(entry) => {
                entry.lost.cancel();
                true
            }
            None => false,
        }
    }

    /// Ids of held jobs that are (`true`) or are not yet (`false`) running, in id order.
    pub fn ids(&self, running: bool) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .lock()
            .iter()
            .filter(|(_, entry)| entry.running == running)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Entry>> {
        // A panic while holding this lock cannot leave the map half-changed: every section is a
        // single map operation. So a poisoned lock is still a good one.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
