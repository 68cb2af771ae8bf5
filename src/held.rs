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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::job::{ClaimedJob, Outcome, Report};

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
    /// Whether a pause is requested (a handler's checkpoint waits until it is lifted), and
    /// whether the run's start is written (the run's own writes wait for it).
    pub signals: Arc<Signals>,
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
    /// The completer's last write failed for want of the database: until one succeeds, a run
    /// waits for its start to be written before it begins ([`HeldJob::begin_run`]).
    stalled: AtomicBool,
    pub slots: Slots,
}

struct Entry {
    state: State,
    /// The job's queue and kind, for the metrics of its outcome.
    labels: Arc<Labels>,
    lost: CancellationToken,
    interrupt: CancellationToken,
    /// Also tells this run's entry from a later run's of the same job: each run has its own.
    signals: Arc<Signals>,
}

impl Entry {
    fn is_of(&self, signals: &Arc<Signals>) -> bool {
        Arc::ptr_eq(&self.signals, signals)
    }
}

/// The two bounds on what a replica holds. A claimed job takes a place (`room`: one per consumer,
/// plus `prefetch` for jobs claimed ahead, QUEUED until a consumer is free) and keeps it until
/// its run ends or pauses; it takes a consumer (`run`) to start, or at the claim when the claim
/// starts it. So running jobs never outnumber the consumers, and claimed jobs never outnumber
/// the consumers plus the prefetch.
///
/// The prefetch keeps the consumers fed while the next claim is on its way: without it a
/// replica with few consumers waits a round trip for every few jobs. But jobs claimed ahead
/// wait here while other replicas may idle, so only as many are claimed ahead as the consumers
/// would start within [`AHEAD`] at the pace jobs have been running: hundreds of short jobs,
/// a few of those that take a while, none of those that take seconds.
pub(crate) struct Slots {
    room: Arc<Semaphore>,
    run: Arc<Semaphore>,
    consumers: usize,
    /// The most jobs claimed ahead: the `prefetch` setting.
    prefetch: usize,
    /// How many may be claimed ahead now (at most `prefetch`), from the mean run time.
    ahead: AtomicUsize,
    /// The mean run time in seconds, moving (an `f64`'s bits); 0 until a job has run.
    mean_run: AtomicU64,
    /// Claimed jobs waiting for a consumer: while any does, no job is claimed for a free
    /// consumer ahead of them, so jobs start in the order they were claimed.
    waiting: AtomicUsize,
    /// Set by the new-jobs publisher when its last pass could have claimed more than it had
    /// room for; read when a place frees, to wake it.
    backlog: AtomicBool,
    /// Set by the new-jobs publisher when a queue's concurrency or rate held its last claim
    /// back; read when outcomes are written, since a finished job makes room in its queue.
    held_back: AtomicBool,
    /// The new-jobs publisher's wake-up.
    wake: Arc<Notify>,
}

impl Slots {
    pub fn new(consumers: usize, prefetch: usize, wake: Arc<Notify>) -> Self {
        Slots {
            room: Arc::new(Semaphore::new(consumers.saturating_add(prefetch))),
            run: Arc::new(Semaphore::new(consumers)),
            consumers,
            prefetch,
            ahead: AtomicUsize::new(0),
            mean_run: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            backlog: AtomicBool::new(false),
            held_back: AtomicBool::new(false),
            wake,
        }
    }

    /// Every place free right now, for a claim of as many jobs. Those the claim does not fill
    /// go back without a wake-up: the pass that took them claimed all there was, or failed and
    /// waits on its own.
    pub fn take_room(&self) -> Vec<OwnedSemaphorePermit> {
        let kept = self.prefetch - self.ahead.load(Ordering::Relaxed);
        take(
            &self.room,
            self.room.available_permits().saturating_sub(kept),
        )
    }

    /// A job ran for `time`: the pace that sets how many jobs are claimed ahead.
    pub fn ran(&self, time: Duration) {
        // A moving mean over roughly the last 16 runs; a lost update between two runs ending
        // at once costs nothing worth a lock.
        let seconds = time.as_secs_f64();
        let before = f64::from_bits(self.mean_run.load(Ordering::Relaxed));
        let mean = if before == 0.0 {
            seconds
        } else {
            before + (seconds - before) / 16.0
        };
        self.mean_run.store(mean.to_bits(), Ordering::Relaxed);
        let ahead = if mean <= 0.0 {
            self.prefetch
        } else {
            let starts = self.consumers as f64 * AHEAD.as_secs_f64() / mean;
            (starts as usize).min(self.prefetch)
        };
        self.ahead.store(ahead, Ordering::Relaxed);
    }

    /// Up to `at_most` free consumers, for jobs to start as they are claimed; none while
    /// jobs claimed earlier wait for one, as they start first.
    pub fn take_run(&self, at_most: usize) -> Vec<OwnedSemaphorePermit> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return Vec::new();
        }
        take(&self.run, at_most)
    }

    /// Waits for a free consumer; `None` if the slots are closed.
    pub async fn run(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.run).acquire_owned().await.ok()
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

    /// A place came free: if work is waiting, claim it now rather than at the next poll; with
    /// jobs claimed ahead, once half of them have started, so that claims come in batches
    /// while the rest keep the consumers busy.
    fn freed(&self) {
        if !self.backlog.load(Ordering::Relaxed) {
            return;
        }
        let ahead = self.ahead.load(Ordering::Relaxed);
        let wake_at = self.prefetch - ahead + (ahead / 2).max(1);
        if self.room.available_permits() >= wake_at {
            self.wake.notify_one();
        }
    }
}

/// How far ahead a replica claims: the jobs its consumers would start within this time. Long
/// enough to hide a claim's round trip; short enough that replicas share a burst of work.
const AHEAD: Duration = Duration::from_millis(100);

/// Up to `at_most` permits of `semaphore`, as many as are free.
fn take(semaphore: &Arc<Semaphore>, at_most: usize) -> Vec<OwnedSemaphorePermit> {
    let mut permits = Vec::new();
    while permits.len() < at_most {
        match Arc::clone(semaphore).try_acquire_owned() {
            Ok(permit) => permits.push(permit),
            Err(_) => break,
        }
    }
    permits
}

/// What a held job holds of [`Slots`]: its place from the claim, its consumer from the start.
#[derive(Default)]
struct Permits {
    room: Option<OwnedSemaphorePermit>,
    run: Option<OwnedSemaphorePermit>,
    /// Counted in [`Slots::waiting`]: claimed without a consumer, and given none yet.
    waiting: bool,
}

/// A claimed job as this replica holds it, from the claim until its run ends: its entry in
/// [`Held`], its slot (none while paused) and its wires. Dropping it lets go of the job: the
/// entry leaves, unless the outcome was handed over, and the slot is freed, with its wake-up.
pub(crate) struct HeldJob {
    id: i64,
    held: Arc<Held>,
    wires: Wires,
    /// A `std::sync::Mutex`: it is only swapped, never held across an `.await`. The run pauses
    /// and resumes through a shared reference, so the permits need one.
    permits: Mutex<Permits>,
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
        self.held.set(self.id, &self.wires.signals, state);
    }

    /// The run is about to begin: the job is Running here, unless it was taken away or withdrawn
    /// meanwhile (`false`: it is let go of). A job the claim left QUEUED runs before its start
    /// is written: the completer writes it behind the run, in the same write as the outcome when
    /// the run is over by then, and the run's own writes wait for it ([`Signals::started`]).
    /// Only while the database answers, though (see [`Held::stalled`]): a run the database
    /// does not know of must not begin in an outage, which may outlast its claim's lease.
    pub fn begin_run(&self) -> bool {
        let mut jobs = self.held.lock();
        // Under the lock that a pause's withdrawal takes too: one of the two wins.
        if self.wires.lost.is_cancelled() {
            return false;
        }
        if let Some(entry) = jobs.get_mut(&self.id)
            && entry.is_of(&self.wires.signals)
        {
            entry.state = State::Running;
        }
        true
    }

    /// Whether the job holds a consumer: its claim started it, or gave it one for its start.
    pub fn has_consumer(&self) -> bool {
        self.lock_permits().run.is_some()
    }

    /// Holds `consumer` for the job's start.
    pub fn take_consumer(&self, consumer: OwnedSemaphorePermit) {
        let mut permits = self.lock_permits();
        permits.run = Some(consumer);
        if std::mem::take(&mut permits.waiting) {
            self.held.slots.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Frees the job's place and consumer, if it holds them, and wakes the new-jobs publisher
    /// if work waits: a paused job takes up neither.
    pub fn give_up_slot(&self) {
        let permits = std::mem::take(&mut *self.lock_permits());
        if permits.waiting {
            self.held.slots.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if permits.room.is_some() {
            drop(permits);
            self.held.slots.freed();
        }
    }

    /// Waits for a free place and a free consumer and holds them, for a paused job about to
    /// resume. `false` if the slots are closed.
    pub async fn take_back_slot(&self) -> bool {
        let slots = &self.held.slots;
        let Ok(room) = Arc::clone(&slots.room).acquire_owned().await else {
            return false;
        };
        let Some(run) = slots.run().await else {
            return false;
        };
        let before = std::mem::replace(
            &mut *self.lock_permits(),
            Permits {
                room: Some(room),
                run: Some(run),
                waiting: false,
            },
        );
        if before.waiting {
            slots.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if before.room.is_some() {
            // It held a place already; the one it let go of is free now.
            drop(before);
            slots.freed();
        }
        true
    }

    /// The run ended with `outcome`: hands it to the completer. The entry stays, FINISHING,
    /// until the outcome is written (see [`Held::finished`]): the row is still RUNNING and this
    /// replica's. The slot is kept until the completer takes the outcome: if it falls behind,
    /// claims wait rather than pile up finished jobs in memory. `false` if the completer has
    /// stopped; the job is then let go of like any other.
    pub async fn hand_over(mut self, completer: &mpsc::Sender<Report>, outcome: Outcome) -> bool {
        self.held
            .set(self.id, &self.wires.signals, State::Finishing);
        self.handed_over = completer
            .send(Report::Ended(self.id, outcome))
            .await
            .is_ok();
        self.handed_over
    }

    fn lock_permits(&self) -> MutexGuard<'_, Permits> {
        // Every section is a single swap, so a poisoned lock is still a good one.
        self.permits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for HeldJob {
    fn drop(&mut self) {
        if !self.handed_over {
            self.held.leave(self.id, &self.wires.signals);
        }
        self.give_up_slot();
    }
}

/// Whether a pause is requested, whether the run's start is written, and a wake-up when either
/// changes. Watch channels would do, at several times the size; every held job has one.
#[derive(Default)]
pub struct Signals {
    pause: AtomicBool,
    started: AtomicBool,
    changed: Notify,
}

impl Signals {
    fn set_pause(&self, pause: bool) {
        self.pause.store(pause, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    /// Waits, without a timer, until no pause is requested.
    pub async fn pause_lifted(&self) {
        self.until(|signals| !signals.pause_requested()).await;
    }

    /// Waits, without a timer, until the run's start is written: the claim's, or the
    /// completer's, which writes it behind the run (see [`HeldJob::begin_run`]).
    pub async fn started(&self) {
        self.until(|signals| signals.started.load(Ordering::SeqCst))
            .await;
    }

    async fn until(&self, done: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the two is not missed.
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }
}

/// What a pause request did to a job this replica holds, or would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseTaken {
    /// It runs: the pause is passed to its task, which applies it at its next checkpoint.
    Signalled,
    /// It waited for a consumer: it will not start here, and the request is to be applied as
    /// to any waiting job.
    Withdrawn,
    /// This replica does not hold it.
    NotHeld,
}

impl Held {
    pub fn new(slots: Slots) -> Self {
        Held {
            jobs: Mutex::default(),
            interrupt_all: CancellationToken::new(),
            stalled: AtomicBool::new(false),
            slots,
        }
    }

    /// A claimed job enters, QUEUED or RUNNING if its claim started it, with the place taken
    /// for it, and the consumer if it has one already; it leaves when the [`HeldJob`] is
    /// dropped.
    pub fn enter(
        self: &Arc<Self>,
        id: i64,
        state: State,
        room: OwnedSemaphorePermit,
        run: Option<OwnedSemaphorePermit>,
        labels: Labels,
    ) -> HeldJob {
        let lost = CancellationToken::new();
        let interrupt = self.interrupt_all.child_token();
        let signals = Arc::new(Signals::default());
        if state == State::Running {
            // The claim started it.
            signals.set_started();
        }
        let entry = Entry {
            state,
            labels: Arc::new(labels),
            lost: lost.clone(),
            interrupt: interrupt.clone(),
            signals: Arc::clone(&signals),
        };
        self.lock().insert(id, entry);
        let waiting = run.is_none();
        if waiting {
            self.slots.waiting.fetch_add(1, Ordering::SeqCst);
        }
        HeldJob {
            id,
            held: Arc::clone(self),
            wires: Wires {
                lost,
                interrupt,
                signals,
                lapsed: CancellationToken::new(),
            },
            permits: Mutex::new(Permits {
                room: Some(room),
                run,
                waiting,
            }),
            handed_over: false,
        }
    }

    /// Sets the state of the run whose signals are `signals`, if its entry is still here.
    fn set(&self, id: i64, signals: &Arc<Signals>, state: State) {
        if let Some(entry) = self.lock().get_mut(&id)
            && entry.is_of(signals)
        {
            entry.state = state;
        }
    }

    /// Removes the entry of the run whose signals are `signals`, and not a later run's.
    fn leave(&self, id: i64, signals: &Arc<Signals>) {
        let mut jobs = self.lock();
        if jobs.get(&id).is_some_and(|entry| entry.is_of(signals)) {
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

    /// A pause requested of a job: one that waits for a consumer is withdrawn (its run never
    /// begins: see [`HeldJob::begin_run`]); one that runs is asked to pause at its next
    /// checkpoint.
    pub fn pause(&self, id: i64) -> PauseTaken {
        let jobs = self.lock();
        let Some(entry) = jobs.get(&id) else {
            return PauseTaken::NotHeld;
        };
        if entry.state == State::Queued {
            entry.lost.cancel();
            PauseTaken::Withdrawn
        } else {
            entry.signals.set_pause(true);
            PauseTaken::Signalled
        }
    }

    /// Asks the job's task to go on from its pause; `false` if this replica does not hold it.
    pub fn resume(&self, id: i64) -> bool {
        self.with(id, |entry| entry.signals.set_pause(false))
    }

    /// Whether the completer's writes reach the database: set by the completer after each.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
    }

    /// Whether the completer's last write failed for want of the database.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// The job's start is written: its run's own writes may go ahead.
    pub fn start_written(&self, id: i64) {
        self.with(id, |entry| entry.signals.set_started());
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
        let held = Arc::new(Held::new(Slots::new(consumers, 0, Arc::clone(&wake))));
        (held, wake)
    }

    fn claim(held: &Arc<Held>, id: i64) -> HeldJob {
        let mut room = held.slots.take_room();
        let place = room.pop().expect("a free place");
        held.enter(id, State::Queued, place, None, Labels::default())
    }

    fn woken(wake: &Notify) -> bool {
        wake.notified().now_or_never().is_some()
    }

    fn free(held: &Held) -> usize {
        held.slots.room.available_permits()
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
        assert!(matches!(
            outcomes.recv().await,
            Some(Report::Ended(7, Outcome::Done))
        ));
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

    #[test]
    fn a_prefetch_adds_places_but_never_consumers() {
        let wake = Arc::new(Notify::new());
        let slots = Slots::new(2, 4, wake);
        slots.ran(Duration::ZERO);
        let room = slots.take_room();
        assert_eq!(room.len(), 6, "two consumers and four jobs ahead");
        let run = slots.take_run(usize::MAX);
        assert_eq!(run.len(), 2);
        assert!(slots.take_run(1).is_empty());
        drop(run);
        assert_eq!(slots.take_run(1).len(), 1, "at most as many as asked");
    }

    #[test]
    fn jobs_are_claimed_ahead_only_as_far_as_the_consumers_will_start_them_soon() {
        let slots = Slots::new(2, 100, Arc::new(Notify::new()));
        assert_eq!(
            slots.take_room().len(),
            2,
            "nothing ahead before a job has run"
        );
        slots.ran(Duration::from_millis(20));
        assert_eq!(
            slots.take_room().len(),
            2 + 10,
            "two consumers start ten in 100 ms"
        );
        let slots = Slots::new(2, 100, Arc::new(Notify::new()));
        slots.ran(Duration::from_secs(3));
        assert_eq!(slots.take_room().len(), 2, "none of jobs that take seconds");
        slots.ran(Duration::from_micros(10));
        assert_eq!(
            slots.take_room().len(),
            2,
            "one short job hardly moves the mean"
        );
        for _ in 0..1000 {
            slots.ran(Duration::from_micros(10));
        }
        assert_eq!(slots.take_room().len(), 102, "many do, up to the prefetch");
    }

    #[test]
    fn no_consumer_is_taken_for_a_new_claim_while_an_earlier_one_waits() {
        let (held, _) = held(2);
        let waiting = claim(&held, 7);
        assert!(held.slots.take_run(2).is_empty(), "job 7 starts first");
        let consumer = Arc::clone(&held.slots.run)
            .try_acquire_owned()
            .expect("a free consumer");
        waiting.take_consumer(consumer);
        assert_eq!(held.slots.take_run(2).len(), 1, "job 7 has its consumer");
        let dropped = claim(&held, 8);
        assert!(held.slots.take_run(2).is_empty());
        drop(dropped);
        assert_eq!(held.slots.take_run(2).len(), 1, "job 8 waits no more");
    }

    #[test]
    fn with_a_prefetch_a_claim_is_woken_once_half_of_it_is_free() {
        let wake = Arc::new(Notify::new());
        let held = Arc::new(Held::new(Slots::new(1, 4, Arc::clone(&wake))));
        held.slots.ran(Duration::ZERO);
        let mut jobs: Vec<HeldJob> = (1..=5).map(|id| claim(&held, id)).collect();
        held.slots.set_backlog(true);
        drop(jobs.pop());
        assert!(!woken(&wake), "one free place is not worth a claim");
        drop(jobs.pop());
        assert!(woken(&wake), "two are");
    }
}
