//! The jobs this replica holds: claimed and waiting in its channel, running, or paused in its
//! memory. Publishers read it to vouch for the waiting ones and to check on the others; the
//! canceller and the control publisher use it to reach a job's task.
//!
//! One value, a [`HeldJob`], owns a claimed job's entry, its consumer slot and its wires from the
//! claim until its run ends, and letting go of the job is dropping it. A run ends in many places
//! (not started, lost, interrupted, lapsed, finished, given back at shutdown), and each once had
//! to remove the entry, free the slot and wake the new-jobs publisher by hand: one that forgot
//! the wake-up left work waiting until the next poll. The slots live here, not in the replica,
//! so that a held job can free its own without this module depending on anything above it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::job::{ClaimedJob, Outcome};

/// A held job's queue and kind: what its metrics are labelled with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub queue: String,
    pub kind: String,
}

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
    /// Its entry, slot and wires, until its run ends.
    pub held: HeldJob,
    /// The claim started it already (no rate limit stands between claim and start).
    pub started: bool,
    /// Not before this moment: the start its queue's rate reserved for it.
    pub not_before: Option<tokio::time::Instant>,
}

pub(crate) struct Held {
    /// A `std::sync::Mutex` and not a Tokio one: no `.await` happens while it is held, and every
    /// critical section is a map lookup.
    jobs: Mutex<HashMap<i64, Entry>>,
    /// The parent of every job's interrupt token: fired when shutdown's grace is over.
    interrupt_all: CancellationToken,
    pub slots: Slots,
}

struct Entry {
    state: State,
    /// The job's queue and kind, for the metrics of its outcome.
    labels: Arc<Labels>,
    lost: CancellationToken,
    interrupt: CancellationToken,
    /// Also tells this run's entry from a later run's of the same job: each run has its own.
    pause: Arc<PauseSignal>,
}

impl Entry {
    fn is_of(&self, pause: &Arc<PauseSignal>) -> bool {
        Arc::ptr_eq(&self.pause, pause)
    }
}

/// One permit per consumer, taken by the new-jobs publisher with each claimed job and given back
/// when the job ends or pauses: running jobs never outnumber the consumers.
pub(crate) struct Slots {
    free: Arc<Semaphore>,
    /// Set by the new-jobs publisher when its last pass could have claimed more than it had
    /// slots for; read when a slot frees, to wake it at once.
    backlog: AtomicBool,
    /// Set by the new-jobs publisher when a queue's concurrency or rate held its last claim
    /// back; read when outcomes are written, since a finished job makes room in its queue.
    held_back: AtomicBool,
    /// The new-jobs publisher's wake-up.
    wake: Arc<Notify>,
}

impl Slots {
    pub fn new(consumers: usize, wake: Arc<Notify>) -> Self {
        Slots {
            free: Arc::new(Semaphore::new(consumers)),
            backlog: AtomicBool::new(false),
            held_back: AtomicBool::new(false),
            wake,
        }
    }

    /// Every slot free right now, for a claim of as many jobs. Those the claim does not fill go
    /// back without a wake-up: the pass that took them claimed all there was, or failed and
    /// waits on its own.
    pub fn take_free(&self) -> Vec<OwnedSemaphorePermit> {
        let mut slots = Vec::new();
        while let Ok(slot) = Arc::clone(&self.free).try_acquire_owned() {
            slots.push(slot);
        }
        slots
    }

    /// Whether the new-jobs publisher's last pass left work it had no slot for.
    pub fn set_backlog(&self, backlog: bool) {
        self.backlog.store(backlog, Ordering::Relaxed);
    }

    /// Whether a queue's limit held back the new-jobs publisher's last pass.
    pub fn set_held_back(&self, held_back: bool) {
        self.held_back.store(held_back, Ordering::Relaxed);
    }

    /// Outcomes were written: if a queue's limit held work back, claim again now, as the
    /// jobs that ended no longer count in their queues.
    pub fn outcomes_written(&self) {
        if self.held_back.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// A slot came free: if work is waiting, claim it now rather than at the next poll.
    fn freed(&self) {
        if self.backlog.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }
}

/// A claimed job as this replica holds it, from the claim until its run ends: its entry in
/// [`Held`], its slot (none while paused) and its wires. Dropping it lets go of the job: the
/// entry leaves, unless the outcome was handed over, and the slot is freed, with its wake-up.
pub(crate) struct HeldJob {
    id: i64,
    held: Arc<Held>,
    wires: Wires,
    /// A `std::sync::Mutex`: it is only swapped, never held across an `.await`. The run pauses
    /// and resumes through a shared reference, so the slot needs one.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// The completer has the outcome: the entry, FINISHING, is its to remove.
    handed_over: bool,
}

impl HeldJob {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn wires(&self) -> &Wires {
        &self.wires
    }

    /// Running, Paused or Releasing; FINISHING comes with [`HeldJob::hand_over`].
    pub fn set(&self, state: State) {
        debug_assert!(state != State::Queued && state != State::Finishing);
        self.held.set(self.id, &self.wires.pause, state);
    }

    /// Frees the slot, if the run holds one, and wakes the new-jobs publisher if work waits: a
    /// paused job runs on no slot.
    pub fn give_up_slot(&self) {
        let slot = self.lock_slot().take();
        if slot.is_some() {
            drop(slot);
            self.held.slots.freed();
        }
    }

    /// Waits for a free slot and holds it, for a paused job about to resume. `false` if the
    /// slots are closed.
    pub async fn take_back_slot(&self) -> bool {
        let Ok(slot) = Arc::clone(&self.held.slots.free).acquire_owned().await else {
            return false;
        };
        if self.lock_slot().replace(slot).is_some() {
            // It held one already; the one it let go of is free now.
            self.held.slots.freed();
        }
        true
    }

    /// The run ended with `outcome`: hands it to the completer. The entry stays, FINISHING,
    /// until the outcome is written (see [`Held::finished`]): the row is still RUNNING and this
    /// replica's. The slot is kept until the completer takes the outcome: if it falls behind,
    /// claims wait rather than pile up finished jobs in memory. `false` if the completer has
    /// stopped; the job is then let go of like any other.
    pub async fn hand_over(
        mut self,
        completer: &mpsc::Sender<(i64, Outcome)>,
        outcome: Outcome,
    ) -> bool {
        self.held.set(self.id, &self.wires.pause, State::Finishing);
        self.handed_over = completer.send((self.id, outcome)).await.is_ok();
        self.handed_over
    }

    fn lock_slot(&self) -> MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        // Every section is a single swap, so a poisoned lock is still a good one.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for HeldJob {
    fn drop(&mut self) {
        if !self.handed_over {
            self.held.leave(self.id, &self.wires.pause);
        }
        self.give_up_slot();
    }
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
    pub fn new(slots: Slots) -> Self {
        Held {
            jobs: Mutex::default(),
            interrupt_all: CancellationToken::new(),
            slots,
        }
    }

    /// A claimed job enters, QUEUED or RUNNING if its claim started it, with the slot taken for
    /// it; it leaves when the [`HeldJob`] is dropped.
    pub fn enter(
        self: &Arc<Self>,
        id: i64,
        state: State,
        slot: OwnedSemaphorePermit,
        labels: Labels,
    ) -> HeldJob {
        let lost = CancellationToken::new();
        let interrupt = self.interrupt_all.child_token();
        let pause = Arc::new(PauseSignal::default());
        let entry = Entry {
            state,
            labels: Arc::new(labels),
            lost: lost.clone(),
            interrupt: interrupt.clone(),
            pause: Arc::clone(&pause),
        };
        self.lock().insert(id, entry);
        HeldJob {
            id,
            held: Arc::clone(self),
            wires: Wires {
                lost,
                interrupt,
                pause,
                lapsed: CancellationToken::new(),
            },
            slot: Mutex::new(Some(slot)),
            handed_over: false,
        }
    }

    /// Sets the state of the run whose pause signal is `pause`, if its entry is still here.
    fn set(&self, id: i64, pause: &Arc<PauseSignal>, state: State) {
        if let Some(entry) = self.lock().get_mut(&id)
            && entry.is_of(pause)
        {
            entry.state = state;
        }
    }

    /// Removes the entry of the run whose pause signal is `pause`, and not a later run's.
    fn leave(&self, id: i64, pause: &Arc<PauseSignal>) {
        let mut jobs = self.lock();
        if jobs.get(&id).is_some_and(|entry| entry.is_of(pause)) {
            jobs.remove(&id);
        }
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

    /// The queue and kind of a job this replica holds.
    pub fn labels(&self, id: i64) -> Option<Arc<Labels>> {
        self.lock().get(&id).map(|entry| Arc::clone(&entry.labels))
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

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Entry>> {
        // A panic while holding this lock cannot leave the map half-changed: every section is a
        // single map operation. So a poisoned lock is still a good one.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// A replica's held jobs with `consumers` slots, and the wake-up its slots ring.
    fn held(consumers: usize) -> (Arc<Held>, Arc<Notify>) {
        let wake = Arc::new(Notify::new());
        let held = Arc::new(Held::new(Slots::new(consumers, Arc::clone(&wake))));
        (held, wake)
    }

    fn claim(held: &Arc<Held>, id: i64) -> HeldJob {
        let mut slots = held.slots.take_free();
        let slot = slots.pop().expect("a free slot");
        held.enter(id, State::Queued, slot, Labels::default())
    }

    fn woken(wake: &Notify) -> bool {
        wake.notified().now_or_never().is_some()
    }

    fn free(held: &Held) -> usize {
        held.slots.free.available_permits()
    }

    #[test]
    fn dropping_a_job_lets_go_of_its_entry_and_slot_and_wakes_a_waiting_claim() {
        let (held, wake) = held(2);
        let job = claim(&held, 7);
        job.set(State::Running);
        assert_eq!(held.ids(&[State::Running]), [7]);
        assert_eq!(free(&held), 1);
        held.slots.set_backlog(true);
        drop(job);
        assert!(held.ids(&[State::Running]).is_empty());
        assert_eq!(free(&held), 2);
        assert!(woken(&wake));
    }

    #[test]
    fn a_freed_slot_wakes_nobody_when_no_work_waits() {
        let (held, wake) = held(1);
        drop(claim(&held, 7));
        assert_eq!(free(&held), 1);
        assert!(!woken(&wake));
    }

    #[tokio::test]
    async fn a_handed_over_job_stays_finishing_until_its_outcome_is_written() {
        let (held, wake) = held(1);
        held.slots.set_backlog(true);
        let (completer, mut outcomes) = mpsc::channel(1);
        assert!(claim(&held, 7).hand_over(&completer, Outcome::Done).await);
        assert_eq!(free(&held), 1);
        assert!(woken(&wake));
        assert_eq!(held.ids(&[State::Finishing]), [7]);
        assert!(matches!(outcomes.recv().await, Some((7, Outcome::Done))));
        held.finished(7);
        assert!(held.ids(&[State::Finishing]).is_empty());
    }

    #[tokio::test]
    async fn finished_spares_a_job_claimed_again_meanwhile() {
        let (held, _) = held(1);
        let (completer, _outcomes) = mpsc::channel(1);
        assert!(claim(&held, 7).hand_over(&completer, Outcome::Done).await);
        let again = claim(&held, 7);
        held.finished(7);
        assert_eq!(held.ids(&[State::Queued]), [7]);
        drop(again);
        assert!(held.ids(&[State::Queued]).is_empty());
    }

    #[tokio::test]
    async fn a_job_the_completer_cannot_take_is_let_go_of() {
        let (held, _) = held(1);
        let (completer, outcomes) = mpsc::channel(1);
        drop(outcomes);
        assert!(!claim(&held, 7).hand_over(&completer, Outcome::Done).await);
        assert!(held.ids(&[State::Finishing]).is_empty());
        assert_eq!(free(&held), 1);
    }

    #[test]
    fn an_earlier_run_leaves_a_later_runs_entry_alone() {
        let (held, _) = held(2);
        let earlier = claim(&held, 7);
        let later = claim(&held, 7);
        earlier.set(State::Releasing);
        drop(earlier);
        assert_eq!(held.ids(&[State::Queued]), [7]);
        drop(later);
        assert!(held.ids(&[State::Queued]).is_empty());
    }

    #[tokio::test]
    async fn a_paused_job_gives_its_slot_up_and_takes_one_back_to_resume() {
        let (held, wake) = held(1);
        let job = claim(&held, 7);
        held.slots.set_backlog(true);
        job.set(State::Paused);
        job.give_up_slot();
        assert_eq!(held.ids(&[State::Paused]), [7]);
        assert_eq!(free(&held), 1);
        assert!(woken(&wake));
        job.give_up_slot();
        assert!(!woken(&wake), "no slot was freed twice");
        let other = claim(&held, 8);
        let mut resume = Box::pin(job.take_back_slot());
        assert!(
            (&mut resume).now_or_never().is_none(),
            "every slot is taken"
        );
        drop(other);
        assert!(resume.await);
        assert_eq!(free(&held), 0);
        job.set(State::Running);
        drop(job);
        assert_eq!(free(&held), 1);
        assert!(held.ids(&[State::Running, State::Paused]).is_empty());
    }
}
