//! Publishers: loops with one duty each that look at the table on an interval, find rows that
//! need something done, and hand them to consumers through a channel. They never run a job.
//!
//! [`drive`] is the one loop they all share: a pass, then a jittered wait (so replicas do not
//! march in step) that a wake-up cuts short, until the stop token fires. A database error is
//! logged once per pass and the wait grows, so an outage neither floods the log nor the database.
//!
//! How soon the next pass comes is the pass's own report ([`Pass`]). A full batch goes again at
//! once. A pass that found some work is followed by another after [`SOON`], then, while passes
//! find nothing, by waits that double back to the interval ([`pace`]). Users insert jobs in
//! bursts, and only PostgreSQL tells a replica of another process's inserts: elsewhere a job
//! inserted during a burst would wait half an interval on average, where now it waits about
//! half of [`SOON`] (the burst's first jobs still wait for a poll). The doubling keeps the
//! cost of an idle replica where the interval puts it (one claim per interval, a few more in
//! the seconds after work stops), while a job that comes a while after the last waits at most
//! about that while again, and never more than the interval. On PostgreSQL, whose inserts
//! wake the loop, the short waits cost only the few passes after a burst, so they stay on
//! there too, with no dialect to ask.
//!
//! Only the new-jobs publisher reports [`Pass::Found`]; the others keep their fixed interval.
//! Their work does not come in bursts a user waits on: dead jobs are found on the scale of
//! `dead_after`, control requests have their own interval (and a wake-up on PostgreSQL),
//! schedules come due on their cron, not in bursts, and the pruner's rows are days old.

mod control;
mod dead_jobs;
mod new_jobs;
mod pruner;
mod schedules;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) use control::Controls;
pub(crate) use dead_jobs::DeadJobs;
pub(crate) use new_jobs::NewJobs;
pub(crate) use pruner::Pruner;
pub(crate) use schedules::Recurring;

/// The longest wait between passes while the database fails, unless the interval is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait after a pass that found some work, unless the interval is shorter. Measured on
/// MariaDB, 200 single INSERTs 20 ms apart (`jobsd bench` W2): 25 ms gave a median pickup of
/// 20 ms for 210 statements/s during the burst, 50 ms 35 ms for 126/s, 100 ms 65 ms for 70/s
/// (a fixed 1 s poll: 540 ms for 42/s). 50 ms keeps the median well inside 100 ms on a busy
/// machine for three times the statements of a burst; shorter buys little for much more.
const SOON: Duration = Duration::from_millis(50);

/// What a pass found, which decides how soon the next one comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Nothing to do, or no free slot to do it with (a freed slot wakes the new-jobs loop):
    /// the waits grow back toward the interval.
    Idle,
    /// Some work, less than a batch: more is likely on its way, so look again [`SOON`].
    Found,
    /// A whole batch: more may be waiting now, so go again at once.
    Full,
}

impl Pass {
    /// A pass that could have taken more: [`Pass::Found`] if it took any of `found`, else
    /// [`Pass::Idle`].
    pub fn some(found: usize) -> Pass {
        if found == 0 { Pass::Idle } else { Pass::Found }
    }

    /// [`Pass::Full`] if `full`, else [`Pass::Idle`]: for the loops that keep a fixed interval.
    pub fn full_if(full: bool) -> Pass {
        if full { Pass::Full } else { Pass::Idle }
    }
}

pub(crate) trait Publisher: Send {
    /// Names the loop in log lines.
    const NAME: &'static str;

    /// One pass over the table, and what it found.
    fn run_once(&mut self) -> impl Future<Output = crate::store::Result<Pass>> + Send;
}

/// Runs `publisher` every `interval`, sooner after passes that found work, and at once when
/// `wake` is notified, until `stop`.
pub(crate) async fn drive<P: Publisher>(
    mut publisher: P,
    interval: Duration,
    wake: Option<Arc<Notify>>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    // Passes that found nothing since the last that found work; `None` before any work and
    // once the waits are back at `interval`.
    let mut idle: Option<u32> = None;
    while !stop.is_cancelled() {
        let wait = match publisher.run_once().await {
            Ok(pass) => {
                if failures > 0 {
                    tracing::info!(publisher = P::NAME, failures, "database answers again");
                    failures = 0;
                }
                match pass {
                    Pass::Full => {
                        idle = idle.map(|_| 0);
                        Duration::ZERO
                    }
                    Pass::Found => {
                        idle = Some(0);
                        jittered(pace(interval, 0))
                    }
                    Pass::Idle => {
                        idle = idle.map(|passes| passes.saturating_add(1));
                        let wait = idle.map_or(interval, |passes| pace(interval, passes));
                        if wait >= interval {
                            idle = None;
                        }
                        jittered(wait)
                    }
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = backoff(interval, failures);
                tracing::warn!(publisher = P::NAME, %error, retry_in = ?wait, "database error");
                wait
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            () = notified(wake.as_deref()) => {}
        }
    }
    tracing::debug!(publisher = P::NAME, "stopped");
}

async fn notified(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

/// The wait after a pass that found nothing, `idle` passes after the last that found work (0:
/// this one found some): [`SOON`], doubled for each idle pass, at most `interval`.
fn pace(interval: Duration, idle: u32) -> Duration {
    SOON.saturating_mul(1 << idle.min(31)).min(interval)
}

/// `interval` ± 10 %.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// The wait after the `failures`-th failed pass in a row: doubling from `interval`, capped.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(interval);
    interval
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let second = Duration::from_secs(1);
        assert_eq!(backoff(second, 1), second);
        assert_eq!(backoff(second, 2), 2 * second);
        assert_eq!(backoff(second, 30), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(60), 3), Duration::from_secs(60));
    }

    #[test]
    fn after_work_the_waits_double_from_soon_back_to_the_interval() {
        let second = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..7).map(|idle| pace(second, idle)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            waits,
            [ms(50), ms(100), ms(200), ms(400), ms(800), second, second]
        );
        // Idle for good: the interval, never more, however long.
        assert_eq!(pace(second, u32::MAX), second);
        assert_eq!(
            pace(Duration::from_secs(3600), u32::MAX),
            Duration::from_secs(3600)
        );
        // An interval shorter than SOON is never exceeded.
        assert_eq!(pace(ms(20), 0), ms(20));
    }

    #[test]
    fn a_pass_is_full_found_or_idle_by_what_it_took() {
        assert_eq!(Pass::some(0), Pass::Idle);
        assert_eq!(Pass::some(3), Pass::Found);
        assert_eq!(Pass::full_if(true), Pass::Full);
        assert_eq!(Pass::full_if(false), Pass::Idle);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let wait = jittered(Duration::from_secs(1));
            assert!(wait >= Duration::from_millis(900) && wait <= Duration::from_millis(1100));
        }
    }
}
