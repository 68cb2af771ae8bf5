//! How soon a job inserted with SQL starts, with a poll interval long enough that only the
//! adaptive polling (or, for a schedule's job, the store's own wake-up) can explain a prompt
//! start. Everything is read back from the table: `started_at - created_at`, both the
//! database's (on SQLite, this host's) clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use jobsd::store::{Store, Wakes};
use jobsd::{Handlers, JobRow, NewJob};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::common::{Replica, TestDb};

crate::on_every_backend!(
    a_burst_starts_long_before_the_next_poll,
    a_schedules_job_starts_at_once_with_a_long_poll_interval,
    a_store_wakes_its_watchers_when_it_inserts_a_job,
);

/// Long enough that a job started within [`PROMPT`] of its insert was not found by a poll.
const LONG_POLL: Duration = Duration::from_secs(10);

/// Generous for a loaded machine: the adaptive polling looks every 50 ms during a burst.
const PROMPT: TimeDelta = TimeDelta::seconds(2);

fn long_polling(db: &TestDb, poll_interval: Duration) -> jobsd::Config {
    jobsd::Config {
        poll_interval,
        dead_after: Duration::from_secs(30),
        ..db.config()
    }
}

/// How long `row` waited from its insert to its start.
fn pickup(row: &JobRow) -> TimeDelta {
    row.started_at.expect("started") - row.created_at
}

/// Waits until `ready` holds of every row, or panics after `limit`; returns the rows.
async fn until_rows(
    store: &Arc<dyn Store>,
    limit: Duration,
    what: &str,
    ready: impl Fn(&[JobRow]) -> bool,
) -> Vec<JobRow> {
    let deadline = Instant::now() + limit;
    loop {
        let rows = store.rows(&[], 1_000_000).await.expect("rows read back");
        if ready(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not after {limit:?}: {:?}",
            rows.iter()
                .map(|row| (row.id, row.status, row.created_at, row.started_at))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first job is found by the daemon's first pass; a burst of single INSERTs 20 ms apart
/// right after it is started job by job, each long before the next 10 s poll would find it.
async fn a_burst_starts_long_before_the_next_poll(db: TestDb) {
    let store = db.store().await;
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (0, 1000000)")
        .await
        .expect("first insert");
    let replica = Replica::start(&db, long_polling(&db, LONG_POLL), Handlers::default()).await;
    until_rows(
        &store,
        Duration::from_secs(20),
        "the first job started",
        |rows| rows.iter().all(|row| row.started_at.is_some()),
    )
    .await;
    // One session, as an application inserting job by job.
    let sql = db.sql().await;
    for i in 1..=20 {
        sqlx::query(&format!(
            "INSERT INTO jobs (object_id, sleep) VALUES ({i}, 1000000)"
        ))
        .execute(&sql)
        .await
        .expect("burst insert");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sql.close().await;
    let rows = until_rows(
        &store,
        Duration::from_secs(30),
        "the burst started",
        |rows| rows.len() == 21 && rows.iter().all(|row| row.started_at.is_some()),
    )
    .await;
    replica.shutdown().await;
    for row in &rows[1..] {
        assert!(
            pickup(row) < PROMPT,
            "job {} waited {} to start, with polls {LONG_POLL:?} apart: {:?}",
            row.id,
            pickup(row),
            rows.iter().map(pickup).collect::<Vec<_>>()
        );
    }
}

/// The schedules loop inserts a slot's job inside the daemon, so the new-jobs loop is woken
/// at once, on every database. With 20 s polls, the schedules loop's second pass comes while
/// the new-jobs loop, idle since its first pass, waits about 13 s: a job of that pass started
/// within 2 s was woken, not polled for.
async fn a_schedules_job_starts_at_once_with_a_long_poll_interval(db: TestDb) {
    let poll = Duration::from_secs(20);
    let store = db.store().await;
    // Found by the first pass, so that the new-jobs loop's waits have grown by the time the
    // schedules loop's second pass inserts.
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (0, 1000000)")
        .await
        .expect("plain insert");
    db.exec("INSERT INTO schedules (name, cron, sleep) VALUES ('tick', '*/2 * * * * *', 1000000)")
        .await
        .expect("schedule insert");
    let replica = Replica::start(&db, long_polling(&db, poll), Handlers::default()).await;
    let began = chrono::Utc::now();
    let second_pass =
        |row: &JobRow| row.schedule.is_some() && row.created_at - began > TimeDelta::seconds(5);
    let rows = until_rows(
        &store,
        Duration::from_secs(60),
        "a job of the schedules loop's second pass started",
        |rows| rows.iter().any(second_pass) && rows.iter().all(|row| row.started_at.is_some()),
    )
    .await;
    replica.shutdown().await;
    let scheduled: Vec<&JobRow> = rows.iter().filter(|row| row.schedule.is_some()).collect();
    for row in &scheduled {
        assert!(
            pickup(row) < PROMPT,
            "scheduled job {} waited {} to start, with polls {poll:?} apart: {:?}",
            row.id,
            pickup(row),
            scheduled.iter().map(|row| pickup(row)).collect::<Vec<_>>()
        );
    }
}

/// The wake-up itself: a store tells the daemon watching it of each job it inserts, and the
/// watch ends with its stop token.
async fn a_store_wakes_its_watchers_when_it_inserts_a_job(db: TestDb) {
    let store = db.store().await;
    let wakes = Wakes::default();
    let stop = CancellationToken::new();
    let watch = tokio::spawn({
        let (store, wakes, stop) = (Arc::clone(&store), wakes.clone(), stop.clone());
        async move { store.watch(wakes, stop).await }
    });
    // Whatever the watch told on starting (PostgreSQL wakes every loop when it listens).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = timeout(Duration::from_millis(200), wakes.new_jobs.notified()).await;

    let id = store
        .insert(&NewJob::sleep(1, Some(0)))
        .await
        .expect("insert");
    timeout(Duration::from_secs(5), wakes.new_jobs.notified())
        .await
        .unwrap_or_else(|_| panic!("job {id} was inserted and nothing woke the new-jobs loop"));

    stop.cancel();
    timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch ends with its stop token")
        .expect("watch task");
}
