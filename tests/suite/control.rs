//! Pause, resume and terminate through SQL, on every backend, for jobs in every state.

use std::time::{Duration, Instant};

use jobsd::job::ControlAction;
use jobsd::{Handlers, JobRow, NewJob, Status};

use crate::common::{Replica, TestDb};

crate::on_every_backend!(
    a_running_job_pauses_outlives_dead_after_and_resumes_on_any_replica,
    a_running_job_terminated_is_cancelled_and_frees_its_slot,
    a_delayed_job_terminated_is_cancelled_without_starting,
    a_waiting_job_pauses_and_resumes_to_new,
    a_paused_job_can_be_terminated,
    requests_on_finished_jobs_are_cleared_and_ignored,
    shutdown_lets_a_paused_job_go_and_a_resume_continues_it,
    a_queued_job_paused_is_not_started_by_its_holder,
    a_job_claimed_ahead_and_paused_is_withdrawn_by_its_holder,
);

const MS: i64 = 1_000_000;

async fn control(db: &TestDb, id: i64, request: &str) {
    let touched = db
        .exec(&format!(
            "UPDATE jobs SET control = '{request}' WHERE id = {id}"
        ))
        .await
        .expect("control request");
    assert_eq!(touched, 1);
}

/// Inserts a job due in an hour, as a user would, and returns its id.
async fn insert_delayed(db: &TestDb) -> i64 {
    let sql = format!(
        "INSERT INTO jobs (sleep, run_at) VALUES (1, {})",
        db.now_plus(3600)
    );
    db.exec(&sql).await.expect("insert");
    db.all_rows().await[0].id
}

async fn row(db: &TestDb, id: i64) -> JobRow {
    let store = db.store().await;
    db.rows(&store, &[id]).await.remove(0)
}

/// Waits up to `limit` for job `id` to reach `status`, and returns its row.
async fn until(db: &TestDb, id: i64, status: Status, limit: Duration) -> JobRow {
    let store = db.store().await;
    let deadline = Instant::now() + limit;
    loop {
        let row = db.rows(&store, &[id]).await.remove(0);
        if row.status == status {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not {status} after {limit:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn a_running_job_pauses_outlives_dead_after_and_resumes_on_any_replica(db: TestDb) {
    let first = Replica::start(&db, db.config(), Handlers::default()).await;
    let second = Replica::start(&db, db.config(), Handlers::default()).await;
    let store = db.store().await;
    let id = store
        .insert(&NewJob::sleep(1, Some(1500 * MS)))
        .await
        .expect("insert");
    until(&db, id, Status::Running, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    control(&db, id, "pause").await;
    let paused = until(&db, id, Status::Paused, Duration::from_secs(3)).await;
    let paused_at = Instant::now();
    assert_eq!(paused.control, None, "the request is cleared once applied");
    assert!(
        paused
            .progress
            .as_deref()
            .unwrap_or_default()
            .contains("slept_ns"),
        "{paused:?}"
    );
    // Three times dead_after: a paused job is never dead.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = row(&db, id).await;
    assert_eq!(still.status, Status::Paused, "{still:?}");

    control(&db, id, "resume").await;
    let done = until(&db, id, Status::Done, Duration::from_secs(5)).await;
    first.shutdown().await;
    second.shutdown().await;
    assert_eq!(
        (done.attempts, done.cancelled_at, done.control.clone()),
        (1, None, None)
    );
    let ran = done.finished_at.expect("finished") - done.started_at.expect("started");
    assert!(
        ran >= chrono::Duration::milliseconds(4400),
        "slept 1.5 s plus 3 s paused, took {ran}"
    );
    assert!(
        paused_at.elapsed() < Duration::from_secs(5),
        "resumed where it left off"
    );
}

async fn a_running_job_terminated_is_cancelled_and_frees_its_slot(db: TestDb) {
    let config = jobsd::Config {
        consumers: 1,
        ..db.config()
    };
    let replica = Replica::start(&db, config, Handlers::default()).await;
    let store = db.store().await;
    let long = store
        .insert(&NewJob::sleep(1, Some(60_000 * MS)))
        .await
        .expect("insert");
    let next = store
        .insert(&NewJob::sleep(2, Some(0)))
        .await
        .expect("insert");
    until(&db, long, Status::Running, Duration::from_secs(5)).await;
    let asked = Instant::now();
    control(&db, long, "terminate").await;
    let cancelled = until(&db, long, Status::Cancelled, Duration::from_secs(3)).await;
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(
        cancelled.last_error.as_deref(),
        Some("terminated on request")
    );
    assert!(cancelled.cancelled_at.is_some() && cancelled.cancelled_at == cancelled.finished_at);
    assert_eq!(cancelled.control, None);
    let after = until(&db, next, Status::Done, Duration::from_secs(5)).await;
    replica.shutdown().await;
    assert_eq!(
        after.attempts, 1,
        "the only slot was freed by stopping the terminated task"
    );
}

async fn a_delayed_job_terminated_is_cancelled_without_starting(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let id = insert_delayed(&db).await;
    control(&db, id, "terminate").await;
    let cancelled = until(&db, id, Status::Cancelled, Duration::from_secs(3)).await;
    replica.shutdown().await;
    assert_eq!((cancelled.attempts, cancelled.started_at), (0, None));
    assert_eq!(
        cancelled.last_error.as_deref(),
        Some("terminated on request")
    );
}

async fn a_waiting_job_pauses_and_resumes_to_new(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let id = insert_delayed(&db).await;
    control(&db, id, "pause").await;
    let paused = until(&db, id, Status::Paused, Duration::from_secs(3)).await;
    assert_eq!((paused.started_at, paused.control.clone()), (None, None));
    // Due now, but paused: it must not start.
    db.exec(&format!(
        "UPDATE jobs SET run_at = {} WHERE id = {id}",
        db.now_plus(-1)
    ))
    .await
    .expect("make it due");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(row(&db, id).await.status, Status::Paused);
    control(&db, id, "resume").await;
    let done = until(&db, id, Status::Done, Duration::from_secs(5)).await;
    replica.shutdown().await;
    assert_eq!(done.attempts, 1);
}

async fn a_paused_job_can_be_terminated(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let store = db.store().await;
    let id = store
        .insert(&NewJob::sleep(1, Some(60_000 * MS)))
        .await
        .expect("insert");
    until(&db, id, Status::Running, Duration::from_secs(5)).await;
    control(&db, id, "pause").await;
    until(&db, id, Status::Paused, Duration::from_secs(3)).await;
    control(&db, id, "terminate").await;
    let cancelled = until(&db, id, Status::Cancelled, Duration::from_secs(3)).await;
    replica.shutdown().await;
    assert_eq!(
        cancelled.last_error.as_deref(),
        Some("terminated on request")
    );
    assert_eq!(cancelled.attempts, 1);
}

async fn requests_on_finished_jobs_are_cleared_and_ignored(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let store = db.store().await;
    let id = store
        .insert(&NewJob::sleep(1, Some(0)))
        .await
        .expect("insert");
    let done = until(&db, id, Status::Done, Duration::from_secs(5)).await;
    for request in ["pause", "resume", "terminate"] {
        control(&db, id, request).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while row(&db, id).await.control.is_some() {
            assert!(
                Instant::now() < deadline,
                "{request} on a finished job was not cleared"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let after = row(&db, id).await;
        assert_eq!(
            (after.status, after.finished_at, after.cancelled_at),
            (Status::Done, done.finished_at, None)
        );
    }
    replica.shutdown().await;
}

async fn shutdown_lets_a_paused_job_go_and_a_resume_continues_it(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let store = db.store().await;
    let id = store
        .insert(&NewJob::sleep(1, Some(2000 * MS)))
        .await
        .expect("insert");
    until(&db, id, Status::Running, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    control(&db, id, "pause").await;
    until(&db, id, Status::Paused, Duration::from_secs(3)).await;
    let stopping = Instant::now();
    replica.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "a paused job does not hold up shutdown"
    );
    let released = row(&db, id).await;
    assert_eq!(
        (released.status, released.worker.clone(), released.attempts),
        (Status::Paused, None, 0)
    );
    assert!(
        released
            .progress
            .as_deref()
            .unwrap_or_default()
            .contains("slept_ns")
    );

    let next = Replica::start(&db, db.config(), Handlers::default()).await;
    control(&db, id, "resume").await;
    let done = until(&db, id, Status::Done, Duration::from_secs(5)).await;
    next.shutdown().await;
    assert_eq!(done.attempts, 1);
    let second_run = done.finished_at.expect("finished") - done.started_at.expect("started");
    assert!(
        second_run < chrono::Duration::milliseconds(1500),
        "continued from its checkpoint: {second_run}"
    );
}

async fn a_queued_job_paused_is_not_started_by_its_holder(db: TestDb) {
    let store = db.store().await;
    let id = store
        .insert(&NewJob::sleep(1, Some(0)))
        .await
        .expect("insert");
    assert_eq!(
        store
            .claim(&jobsd::store::Claim::new("w", 1, false))
            .await
            .expect("claim")
            .len(),
        1
    );
    assert!(
        store
            .request(id, jobsd::job::Control::Pause)
            .await
            .expect("request")
    );
    // Its holder may be running it already, the start not yet written: only the holder decides,
    // while it vouches for the job.
    let requests = store
        .find_controls(Duration::from_secs(10), 0, 10)
        .await
        .expect("find");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].action("another"), ControlAction::Leave);
    assert_eq!(
        requests[0].action("w"),
        ControlAction::Signal(jobsd::job::Control::Pause)
    );
    // Once the holder is silent, any replica pauses it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let requests = store
        .find_controls(Duration::from_millis(1), 0, 10)
        .await
        .expect("find");
    let action = requests[0].action("another");
    assert_eq!(action, ControlAction::PauseWaiting);
    assert!(
        store
            .apply_control(&requests[0], action)
            .await
            .expect("apply")
    );
    assert!(
        !store
            .apply_control(&requests[0], action)
            .await
            .expect("apply"),
        "applied once"
    );
    assert!(
        store
            .mark_started("w", &[id], Duration::ZERO)
            .await
            .expect("start")
            .is_empty(),
        "its holder cannot start it"
    );
    let paused = row(&db, id).await;
    assert_eq!(
        (paused.status, paused.worker, paused.control),
        (Status::Paused, None, None)
    );
}

/// A job claimed ahead waits QUEUED in its holder's memory, where it would start the moment a
/// consumer takes it: a pause goes to the holder, which withdraws it, so it never runs.
async fn a_job_claimed_ahead_and_paused_is_withdrawn_by_its_holder(db: TestDb) {
    for _ in 0..3 {
        db.exec("INSERT INTO jobs (sleep) VALUES (0)")
            .await
            .expect("insert");
    }
    let ids: Vec<i64> = db.all_rows().await.iter().map(|row| row.id).collect();
    let last = *ids.iter().max().expect("three jobs");
    // One start a second: the three are claimed at once, the last starts two seconds later.
    let config = jobsd::Config {
        consumers: 1,
        rate_per_second: 1,
        prefetch: Some(2),
        ..db.config()
    };
    let replica = Replica::start(&db, config, Handlers::default()).await;
    let queued = until(&db, last, Status::Queued, Duration::from_secs(5)).await;
    assert!(queued.worker.is_some(), "{queued:?}");
    control(&db, last, "pause").await;
    let paused = until(&db, last, Status::Paused, Duration::from_secs(5)).await;
    for id in ids.iter().filter(|id| **id != last) {
        until(&db, *id, Status::Done, Duration::from_secs(10)).await;
    }
    replica.shutdown().await;
    let after = row(&db, last).await;
    assert_eq!(
        (after.status, after.worker, after.control, after.attempts),
        (Status::Paused, None, None, 0),
        "paused before it started: {paused:?}"
    );
    assert_eq!(after.started_at, None, "it never ran");
}
