//! The jobs this replica holds: claimed and waiting in its channel, running, or paused in its
//! memory. Publishers read it to vouch for the waiting ones and to check on the others; the
//! canceller and the control publisher use it to reach a job's task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::job::ClaimedJob;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Running,
    Paused,
    /// The run has ended; its outcome waits for the completer. Still RUNNING in the table, so
    /// the replica vouches for it until the outcome is written.
    Finishing,
    /// The run stopped when its lease lapsed (the database was out of reach for `dead_after`);
    /// the job goes back to NEW once the database answers, and is vouched for until then.
    Releasing,
}

/// The task's end of a held job's wires.
pub struct Wires {
    /// Fires when the row no longer belongs to this replica's run (cancelled as dead,
    /// terminated, or taken over): the task stops without writing anything.
    pub lost: CancellationToken,
    /// Fires when the job must be released to NEW: shutdown's grace is over, or it is
    /// shutting down while the job is paused.
    pub interrupt: CancellationToken,
    /// Whether a pause is requested; a handler's checkpoint waits until it is lifted.
    pub pause: Arc<PauseSignal>,
    /// Fired by the run itself when no sign of life has reached the database for
    /// `dead_after`: it stops, and the job is given back once the database answers.
    pub lapsed: CancellationToken,
}

/// A claimed job on its way to a consumer.
pub(crate) struct Claimed {
    pub job: ClaimedJob,
    /// One of the pool's slots, held until the job's run ends.
    pub slot: OwnedSemaphorePermit,
    pub wires: Wires,
    /// The claim started it already (no rate limit stands between claim and start).
    pub started: bool,
}

pub struct Held {
    /// A `std::sync::Mutex` and not a Tokio one: no `.await` happens while it is held, and every
    /// critical section is a map lookup.
    jobs: Mutex<HashMap<i64, Entry>>,
    /// The parent of every job's interrupt token: fired when shutdown's grace is over.
    interrupt_all: CancellationToken,
}

struct Entry {
    state: State,
    lost: CancellationToken,
    interrupt: CancellationToken,
    pause: Arc<PauseSignal>,
}

/// Whether a pause is requested, and a wake-up when that changes. A watch channel would do, at
/// several times the size; every held job has one.
#[derive(Default)]
pub struct PauseSignal {
    requested: AtomicBool,
    changed: Notify,
}

impl PauseSignal {
    fn set(&self, pause: bool) {
        self.requested.store(pause, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Waits, without a timer, until no pause is requested.
    pub async fn lifted(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the two is not missed.
            changed.as_mut().enable();
            if !self.requested() {
                return;
            }
            changed.await;
        }
    }
}

impl Held {
    pub fn new() -> Self {
        Held {
            jobs: Mutex::default(),
            interrupt_all: CancellationToken::new(),
        }
    }

    /// A claimed job enters: QUEUED, or RUNNING if its claim started it.
    pub fn enter(&self, id: i64, state: State) -> Wires {
        let lost = CancellationToken::new();
        let interrupt = self.interrupt_all.child_token();
        let pause = Arc::new(PauseSignal::default());
        let entry = Entry {
            state,
            lost: lost.clone(),
            interrupt: interrupt.clone(),
            pause: Arc::clone(&pause),
        };
        self.lock().insert(id, entry);
        Wires {
            lost,
            interrupt,
            pause,
            lapsed: CancellationToken::new(),
        }
    }

    pub fn set(&self, id: i64, state: State) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.state = state;
        }
    }

    pub fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Lets go of a job whose outcome is written, unless it has come back meanwhile (a retry
    /// this replica claimed again): that entry is a new run's.
    pub fn finished(&self, id: i64) {
        let mut jobs = self.lock();
        if jobs
            .get(&id)
            .is_some_and(|entry| entry.state == State::Finishing)
        {
            jobs.remove(&id);
        }
    }

    /// Stops the job's task if this replica holds the job; `false` if it does not.
    pub fn take_away(&self, id: i64) -> bool {
        self.with(id, |entry| entry.lost.cancel())
    }

    /// Asks the job's task to pause (`true`) or go on (`false`) at its next checkpoint.
    pub fn signal_pause(&self, id: i64, pause: bool) -> bool {
        self.with(id, |entry| {
            entry.pause.set(pause);
        })
    }

    /// Releases every job still running: shutdown's grace is over.
    pub fn interrupt_all(&self) {
        self.interrupt_all.cancel();
    }

    /// Releases every paused job at once: a shutdown need not wait for a job nobody runs.
    pub fn interrupt_paused(&self) {
        for entry in self.lock().values() {
            if entry.state == State::Paused {
                entry.interrupt.cancel();
            }
        }
    }

    /// Ids of held jobs in one of `states`, in id order.
    pub fn ids(&self, states: &[State]) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .lock()
            .iter()
            .filter(|(_, entry)| states.contains(&entry.state))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn with(&self, id: i64, act: impl FnOnce(&Entry)) -> bool {
        match self.lock().get(&id) {
            Some(entry) => {
                act(entry);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Entry>> {
        // A panic while holding this lock cannot leave the map half-changed: every section is a
        // single map operation. So a poisoned lock is still a good one.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
