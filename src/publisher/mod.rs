//! Publishers: loops with one duty each that look at the table on an interval, find rows that
//! need something done, and hand them to consumers through a channel. They never run a job.
//!
//! [`drive`] is the one loop they all share: a pass, then a jittered wait (so replicas do not
//! march in step) that a wake-up cuts short, until the stop token fires. A database error is
//! logged once per pass and the wait grows, so an outage neither floods the log nor the database.

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

pub(crate) trait Publisher: Send {
    /// Names the loop in log lines.
    const NAME: &'static str;

    /// One pass over the table. `Ok(true)` means the pass filled a whole batch, so there may be
    /// more to do at once.
    fn run_once(&mut self) -> impl Future<Output = crate::store::Result<bool>> + Send;
}

/// Runs `publisher` every `interval`, and at once when `wake` is notified, until `stop`.
pub(crate) async fn drive<P: Publisher>(
    mut publisher: P,
    interval: Duration,
    wake: Option<Arc<Notify>>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    while !stop.is_cancelled() {
        let wait = match publisher.run_once().await {
            Ok(more) => {
                if failures > 0 {
                    tracing::info!(publisher = P::NAME, failures, "database answers again");
                    failures = 0;
                }
                if more {
                    Duration::ZERO
                } else {
                    jittered(interval)
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
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let wait = jittered(Duration::from_secs(1));
            assert!(wait >= Duration::from_millis(900) && wait <= Duration::from_millis(1100));
        }
    }
}
