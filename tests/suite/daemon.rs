//! The daemon as a whole, on every backend: jobs inserted with SQL end in the right state with
//! the right timestamps, whatever the rows hold, however many replicas run, and across shutdown.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use jobsd::{Handler, Handlers, JobContext, NewJob, Status};

use crate::common::{Replica, TestDb};

crate::on_every_backend!(
    original_rows_end_done_cancelled_done,
    bad_rows_fail_with_a_reason_and_the_daemon_goes_on,
    failed_jobs_retry_until_attempts_run_out,
    a_hung_job_with_attempts_left_runs_again_then_is_cancelled,
    a_job_settled_by_another_replica_stops_here,
    three_replicas_share_the_work_and_run_each_job_once,
    wide_replicas_race_for_the_same_rows_and_run_each_job_once,
    starts_never_outpace_the_rate_limit,
    a_job_waiting_on_the_limiter_is_not_taken_for_dead,
    shutdown_lets_running_jobs_finish_within_the_grace,
    shutdown_releases_what_outlives_the_grace,
);

const MS: i64 = 1_000_000;

/// Fails every attempt before `succeeds_on`.
struct Flaky {
    succeeds_on: i32,
}

#[async_trait]
impl Handler for Flaky {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        anyhow::ensure!(
            ctx.attempt() >= self.succeeds_on,
            "flaky failure on attempt {}",
            ctx.attempt()
        );
        Ok(())
    }
}

struct Panics;

#[async_trait]
impl Handler for Panics {
    async fn run(&self, _ctx: &JobContext) -> anyhow::Result<()> {
        panic!("handler bug");
    }
}

async fn original_rows_end_done_cancelled_done(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    db.exec(
        "INSERT INTO jobs (object_id, sleep) VALUES (10, 1000000000), (10, NULL), (10, 1000000000)",
    )
    .await
    .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(20)).await;
    replica.shutdown().await;

    let statuses: Vec<Status> = rows.iter().map(|row| row.status).collect();
    assert_eq!(statuses, [Status::Done, Status::Cancelled, Status::Done]);
    for row in &rows {
        let queued = row.queued_at.expect("queued_at");
        let started = row.started_at.expect("started_at");
        let finished = row.finished_at.expect("finished_at");
        assert!(
            row.created_at <= queued && queued <= started && started <= finished,
            "{row:?}"
        );
        assert_eq!(row.attempts, 1);
    }
    let done = &rows[0];
    let ran = done.finished_at.expect("finished") - done.started_at.expect("started");
    assert!(
        ran >= chrono::Duration::milliseconds(1000),
        "slept a full second, took {ran}"
    );
    let stuck = &rows[1];
    assert_eq!(stuck.cancelled_at, stuck.finished_at);
    let silent = stuck.cancelled_at.expect("cancelled") - stuck.started_at.expect("started");
    assert!(
        silent >= chrono::Duration::seconds(1),
        "cancelled after dead_after, not {silent}"
    );
    assert!(rows[0].cancelled_at.is_none() && rows[2].cancelled_at.is_none());
}

async fn bad_rows_fail_with_a_reason_and_the_daemon_goes_on(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    db.exec("INSERT INTO jobs (kind, sleep) VALUES ('transcode', 1)")
        .await
        .expect("insert");
    db.exec("INSERT INTO jobs (sleep) VALUES (-5)")
        .await
        .expect("insert");
    db.exec("INSERT INTO jobs (sleep, payload) VALUES (1, '{not json')")
        .await
        .expect("insert");
    db.exec("INSERT INTO jobs (kind) VALUES ('panics')")
        .await
        .expect("insert");
    db.exec("INSERT INTO jobs (sleep, payload) VALUES (1000000, '{\"fine\": true}')")
        .await
        .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(20)).await;
    replica.shutdown().await;

    let failed = |index: usize, words: &str| {
        let row = &rows[index];
        assert_eq!(row.status, Status::Failed, "{row:?}");
        let reason = row.last_error.as_deref().unwrap_or_default();
        assert!(
            reason.contains(words),
            "job {}: {reason:?} should mention {words:?}",
            row.id
        );
        assert!(row.finished_at.is_some());
    };
    failed(0, "unknown job kind \"transcode\"");
    failed(1, "negative");
    failed(2, "payload is not valid JSON");
    failed(3, "unknown job kind \"panics\"");
    assert_eq!(
        rows[4].status,
        Status::Done,
        "a good row after bad ones still runs"
    );
}

async fn failed_jobs_retry_until_attempts_run_out(db: TestDb) {
    let handlers = Handlers::default()
        .register("flaky", Flaky { succeeds_on: 2 })
        .register(
            "hopeless",
            Flaky {
                succeeds_on: i32::MAX,
            },
        )
        .register("panics", Panics);
    let replica = Replica::start(&db, db.config(), handlers).await;
    let store = db.store().await;
    let job = |kind: &str, max_attempts| NewJob {
        kind: Some(kind.into()),
        max_attempts: Some(max_attempts),
        ..NewJob::default()
    };
    let flaky = store.insert(&job("flaky", 3)).await.expect("insert");
    let hopeless = store.insert(&job("hopeless", 3)).await.expect("insert");
    let once = store.insert(&job("flaky", 1)).await.expect("insert");
    let panics = store.insert(&job("panics", 2)).await.expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(20)).await;
    replica.shutdown().await;
    let row = |id: i64| rows.iter().find(|row| row.id == id).expect("row");

    assert_eq!((row(flaky).status, row(flaky).attempts), (Status::Done, 2));
    assert_eq!(
        (row(hopeless).status, row(hopeless).attempts),
        (Status::Failed, 3)
    );
    assert!(
        row(hopeless)
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("attempt 3")
    );
    assert_eq!((row(once).status, row(once).attempts), (Status::Failed, 1));
    assert_eq!(
        (row(panics).status, row(panics).attempts),
        (Status::Failed, 2)
    );
    assert!(
        row(panics)
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("handler panicked: handler bug")
    );
}

async fn a_hung_job_with_attempts_left_runs_again_then_is_cancelled(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    db.exec("INSERT INTO jobs (sleep, max_attempts) VALUES (NULL, 2)")
        .await
        .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(20)).await;
    replica.shutdown().await;
    let row = &rows[0];
    assert_eq!(
        (row.status, row.attempts),
        (Status::Cancelled, 2),
        "{row:?}"
    );
    assert!(row.cancelled_at.is_some());
}

async fn a_job_settled_by_another_replica_stops_here(db: TestDb) {
    // One consumer, and a dead_after this replica will not reach: only someone else can free
    // the slot that the hung job holds.
    let config = jobsd::Config {
        consumers: 1,
        dead_after: Duration::from_secs(60),
        ..db.config()
    };
    let replica = Replica::start(&db, config, Handlers::default()).await;
    let store = db.store().await;
    let hung = store.insert(&NewJob::sleep(1, None)).await.expect("insert");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.rows(&store, &[hung]).await[0].status, Status::Running);
    // Inserted once the hung job runs, so that the one claim cannot take it first.
    let next = store
        .insert(&NewJob::sleep(2, Some(MS)))
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.rows(&store, &[next]).await[0].status,
        Status::New,
        "the only slot is taken"
    );

    let dead_after = Duration::from_millis(100);
    let dead = store.find_dead(dead_after, 10).await.expect("find dead");
    assert_eq!(dead.iter().map(|job| job.id).collect::<Vec<_>>(), [hung]);
    let how = dead[0].settlement(dead_after, Duration::from_secs(1));
    assert!(
        store
            .settle_dead(&dead[0], dead_after, &how)
            .await
            .expect("settle")
    );

    let rows = db.until_all_finished(Duration::from_secs(10)).await;
    replica.shutdown().await;
    assert_eq!(rows[0].status, Status::Cancelled);
    assert_eq!(
        rows[1].status,
        Status::Done,
        "the slot was freed by stopping the hung task"
    );
}

async fn three_replicas_share_the_work_and_run_each_job_once(db: TestDb) {
    let config = jobsd::Config {
        consumers: 4,
        ..db.config()
    };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Replica::start(&db, config.clone(), Handlers::default()).await);
    }
    db.exec(&format!(
        "INSERT INTO jobs (object_id, sleep) VALUES {}",
        (0..300)
            .map(|n| format!("({n}, {})", 20 * MS))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await
    .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(60)).await;
    let workers: HashSet<String> = replicas
        .iter()
        .map(|replica| replica.worker.clone())
        .collect();
    for replica in replicas {
        replica.shutdown().await;
    }
    assert_eq!(rows.len(), 300);
    let mut used = HashSet::new();
    for row in &rows {
        assert_eq!((row.status, row.attempts), (Status::Done, 1), "{row:?}");
        let worker = row.worker.clone().expect("worker recorded");
        assert!(workers.contains(&worker), "unknown worker {worker}");
        used.insert(worker);
    }
    assert_eq!(used.len(), 3, "all three replicas did work");
}

/// Two replicas with hundreds of free consumers each claim hundreds of rows at a time, racing
/// for the same rows, and still every job runs exactly once.
async fn wide_replicas_race_for_the_same_rows_and_run_each_job_once(db: TestDb) {
    let config = jobsd::Config {
        consumers: 300,
        prefetch: Some(0),
        ..db.config()
    };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(Replica::start(&db, config.clone(), Handlers::default()).await);
    }
    let jobs: usize = 3000;
    db.exec(&format!(
        "INSERT INTO jobs (object_id, sleep) VALUES {}",
        (0..jobs)
            .map(|n| format!("({n}, {})", MS * (n as i64 % 3)))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await
    .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(120)).await;
    for replica in replicas {
        replica.shutdown().await;
    }
    assert_eq!(rows.len(), jobs);
    let objects: HashSet<i64> = rows.iter().filter_map(|row| row.object_id).collect();
    assert_eq!(objects.len(), jobs, "every job is its own row");
    for row in &rows {
        assert_eq!((row.status, row.attempts), (Status::Done, 1), "{row:?}");
        assert!(
            row.started_at.is_some() && row.finished_at.is_some(),
            "{row:?}"
        );
    }
}

async fn starts_never_outpace_the_rate_limit(db: TestDb) {
    let config = jobsd::Config {
        rate_per_second: 20,
        ..db.config()
    };
    let replica = Replica::start(&db, config, Handlers::default()).await;
    db.exec(&format!(
        "INSERT INTO jobs (sleep) VALUES {}",
        ["(0)"; 41].join(", ")
    ))
    .await
    .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(30)).await;
    replica.shutdown().await;
    let starts: Vec<_> = rows
        .iter()
        .map(|row| row.started_at.expect("started"))
        .collect();
    let span = *starts.iter().max().expect("starts") - *starts.iter().min().expect("starts");
    // 41 starts at 20/s, one at a time, take at least 2 s; allow for clock rounding only.
    assert!(
        span >= chrono::Duration::milliseconds(1950),
        "41 starts took only {span}"
    );
}

async fn a_job_waiting_on_the_limiter_is_not_taken_for_dead(db: TestDb) {
    // At 4 starts a second the tenth job waits about 2.25 s in the channel, past dead_after.
    let config = jobsd::Config {
        rate_per_second: 4,
        dead_after: Duration::from_millis(500),
        ..db.config()
    };
    let replica = Replica::start(&db, config, Handlers::default()).await;
    db.exec(&format!(
        "INSERT INTO jobs (sleep) VALUES {}",
        ["(0)"; 10].join(", ")
    ))
    .await
    .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(30)).await;
    replica.shutdown().await;
    let last = rows.last().expect("rows");
    let waited = last.started_at.expect("started") - last.queued_at.expect("queued");
    assert!(
        waited >= chrono::Duration::milliseconds(1500),
        "queued once and kept: waited {waited}"
    );
    for row in &rows {
        assert_eq!((row.status, row.attempts), (Status::Done, 1), "{row:?}");
    }
}

async fn shutdown_lets_running_jobs_finish_within_the_grace(db: TestDb) {
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let store = db.store().await;
    let id = store
        .insert(&NewJob::sleep(1, Some(800 * MS)))
        .await
        .expect("insert");
    wait_for_status(&db, id, Status::Running).await;
    replica.shutdown().await;
    let row = &db.rows(&store, &[id]).await[0];
    assert_eq!((row.status, row.attempts), (Status::Done, 1), "{row:?}");
}

async fn shutdown_releases_what_outlives_the_grace(db: TestDb) {
    let config = jobsd::Config {
        shutdown_grace: Duration::from_millis(300),
        dead_after: Duration::from_secs(60),
        ..db.config()
    };
    let replica = Replica::start(&db, config.clone(), Handlers::default()).await;
    let store = db.store().await;
    let hung = store.insert(&NewJob::sleep(1, None)).await.expect("insert");
    let long = store
        .insert(&NewJob::sleep(2, Some(60_000 * MS)))
        .await
        .expect("insert");
    wait_for_status(&db, long, Status::Running).await;
    wait_for_status(&db, hung, Status::Running).await;
    replica.shutdown().await;
    for row in db.all_rows().await {
        assert_eq!((row.status, row.attempts), (Status::New, 0), "{row:?}");
        assert!(row.worker.is_none() && row.cancelled_at.is_none() && row.finished_at.is_none());
    }
    // Another replica takes them up where they were left.
    let next = Replica::start(&db, config, Handlers::default()).await;
    wait_for_status(&db, long, Status::Running).await;
    let row = &db.rows(&store, &[long]).await[0];
    assert_eq!(row.worker.as_deref(), Some(next.worker.as_str()));
    next.shutdown().await;
}

async fn wait_for_status(db: &TestDb, id: i64, status: Status) {
    let store = db.store().await;
    for _ in 0..200 {
        if db.rows(&store, &[id]).await[0].status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never reached {status}");
}

mod wakeups {
    mod postgres {
        use std::time::Duration;

        use jobsd::{Handlers, Status};

        use crate::common::{Backend, Replica, TestDb, run};

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_insert_wakes_the_daemon_without_waiting_for_the_poll() {
            run(Backend::Postgres, "notify_wakes", wakes).await;
        }

        async fn wakes(db: TestDb) {
            let config = jobsd::Config {
                poll_interval: Duration::from_secs(60),
                ..db.config()
            };
            let replica = Replica::start(&db, config, Handlers::default()).await;
            // The first poll happens at start; give the listener a moment to subscribe.
            tokio::time::sleep(Duration::from_millis(500)).await;
            db.exec("INSERT INTO jobs (sleep) VALUES (0), (0)")
                .await
                .expect("insert");
            let rows = db.until_all_finished(Duration::from_secs(10)).await;
            replica.shutdown().await;
            for row in rows {
                assert_eq!(row.status, Status::Done);
                let pickup = row.started_at.expect("started") - row.created_at;
                assert!(
                    pickup < chrono::Duration::seconds(5),
                    "picked up after {pickup}, not by NOTIFY"
                );
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_control_request_wakes_the_daemon_without_waiting_for_the_poll() {
            run(Backend::Postgres, "notify_control", controls).await;
        }

        async fn controls(db: TestDb) {
            let config = jobsd::Config {
                control_interval: Duration::from_secs(60),
                ..db.config()
            };
            let replica = Replica::start(&db, config, Handlers::default()).await;
            db.exec("INSERT INTO jobs (sleep) VALUES (60000000000)")
                .await
                .expect("insert");
            let id = db.all_rows().await[0].id;
            super::super::wait_for_status(&db, id, Status::Running).await;
            let asked = tokio::time::Instant::now();
            db.exec(&format!(
                "UPDATE jobs SET control = 'terminate' WHERE id = {id}"
            ))
            .await
            .expect("terminate");
            super::super::wait_for_status(&db, id, Status::Cancelled).await;
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "applied by NOTIFY, not the 60 s poll"
            );
            replica.shutdown().await;
        }
    }
}
