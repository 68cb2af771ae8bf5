//! The store contract, the same on every backend: what the schema accepts and refuses, and how
//! each state change behaves when replicas race.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jobsd::job::{Control, ControlAction, ControlRequest, DeadJob, Outcome, Settlement};
use jobsd::{NewJob, Status};

use crate::common::TestDb;

crate::on_every_backend!(
    minimal_insert_is_a_complete_job,
    database_refuses_bad_status_and_control,
    migrations_run_concurrently_and_again,
    concurrent_claims_never_share_a_job,
    claim_takes_only_due_jobs_oldest_first,
    a_claim_can_start_what_it_claims,
    finish_writes_a_mixed_batch_and_names_the_winners,
    dead_jobs_settle_three_ways,
    finish_racing_cancel_has_exactly_one_winner,
    heartbeat_reports_a_job_taken_away,
    one_statement_starts_a_batch_and_names_what_it_started,
    a_start_written_behind_its_run_is_dated_when_the_run_began,
    release_gives_jobs_back_without_using_an_attempt,
    a_claim_reads_each_row_on_its_own,
    attempts_at_the_edges_never_break_a_statement,
    any_reason_is_stored_shortened_and_clean,
    a_row_written_as_running_by_a_user_is_found_dead,
    control_requests_page_past_those_that_wait,
    the_payload_limit_is_recorded_for_users_to_read,
);

/// What only SQLite needs: its columns take a value of any type unless told otherwise.
mod sqlite_only {
    use super::{rows_of_the_wrong_type_from_before_end_unfit, wrong_types_are_refused_at_insert};

    crate::on_backend!(
        Sqlite,
        sqlite: wrong_types_are_refused_at_insert,
        rows_of_the_wrong_type_from_before_end_unfit
    );
}

/// What only PostgreSQL needs: its planner picks the claim's plan from the table's statistics.
mod postgres_only {
    use super::{
        a_claim_from_several_queues_takes_each_queues_first_without_sorting_their_backlog,
        a_claim_walks_a_backlog_the_statistics_have_not_seen_in_order,
    };

    crate::on_backend!(
        Postgres,
        postgres: a_claim_walks_a_backlog_the_statistics_have_not_seen_in_order,
        a_claim_from_several_queues_takes_each_queues_first_without_sorting_their_backlog,
    );
}

const SECOND: i64 = 1_000_000_000;

async fn minimal_insert_is_a_complete_job(db: TestDb) {
    let inserted = db
        .exec("INSERT INTO jobs (object_id, sleep) VALUES (10, 1000000000), (10, NULL), (10, 1000000000)")
        .await
        .expect("the original design's insert works");
    assert_eq!(inserted, 3);
    let rows = db.all_rows().await;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row.kind, "sleep");
        assert_eq!(row.status, Status::New);
        assert_eq!(row.object_id, Some(10));
        assert_eq!((row.attempts, row.max_attempts), (0, 1));
        assert!(row.queued_at.is_none() && row.started_at.is_none() && row.finished_at.is_none());
        let gap = (row.run_at - row.created_at).num_milliseconds().abs();
        assert!(
            gap < 1000,
            "run_at defaults to the insert time, off by {gap} ms"
        );
    }
    assert_eq!(rows[1].sleep, None);
}

async fn database_refuses_bad_status_and_control(db: TestDb) {
    for status in ["BOGUS", "new", ""] {
        let refused = db
            .exec(&format!(
                "INSERT INTO jobs (sleep, status) VALUES (1, '{status}')"
            ))
            .await;
        assert!(refused.is_err(), "status {status:?} was accepted");
    }
    db.exec("INSERT INTO jobs (sleep) VALUES (1)")
        .await
        .expect("insert");
    for control in ["bogus", "PAUSE"] {
        let refused = db
            .exec(&format!("UPDATE jobs SET control = '{control}'"))
            .await;
        assert!(refused.is_err(), "control {control:?} was accepted");
    }
    assert!(
        db.exec("UPDATE jobs SET status = 'FINISHED'")
            .await
            .is_err()
    );
    assert!(db.exec("UPDATE jobs SET max_attempts = 0").await.is_err());
    assert_eq!(
        db.exec("UPDATE jobs SET control = 'pause'")
            .await
            .expect("valid control"),
        1
    );
    let rows = db.all_rows().await;
    assert_eq!(rows.len(), 1, "nothing refused was stored");
    assert_eq!(rows[0].status, Status::New);
}

async fn migrations_run_concurrently_and_again(db: TestDb) {
    // `run` already migrated once; three replicas starting together must all succeed too.
    let stores = [db.store().await, db.store().await, db.store().await];
    let results = futures_util::future::join_all(stores.iter().map(|store| store.migrate())).await;
    for result in results {
        result.expect("concurrent migration");
    }
    db.store()
        .await
        .migrate()
        .await
        .expect("migrating an up-to-date database");
    db.exec("INSERT INTO jobs (sleep) VALUES (1)")
        .await
        .expect("table usable");
}

async fn concurrent_claims_never_share_a_job(db: TestDb) {
    let store = db.store().await;
    for n in 0..300 {
        store
            .insert(&NewJob::sleep(n, Some(0)))
            .await
            .expect("insert");
    }
    let mut replicas = Vec::new();
    for replica in 0..4 {
        let store = db.store().await;
        replicas.push(tokio::spawn(async move {
            let worker = format!("replica-{replica}");
            let mut claimed = Vec::new();
            loop {
                let batch = store
                    .claim(&jobsd::store::Claim::new(&worker, 7, false))
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return (worker, claimed);
                }
                claimed.extend(batch.into_iter().map(|job| job.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut owner = std::collections::HashMap::new();
    for replica in replicas {
        let (worker, ids) = replica.await.expect("replica task");
        for id in ids {
            assert!(seen.insert(id), "job {id} claimed twice");
            owner.insert(id, worker.clone());
        }
    }
    assert_eq!(seen.len(), 300, "every job claimed once");
    for row in db.all_rows().await {
        assert_eq!(row.status, Status::Queued);
        assert!(row.queued_at.is_some());
        assert_eq!(
            row.worker.as_ref(),
            owner.get(&row.id),
            "job {} held by its claimer",
            row.id
        );
    }
}

async fn claim_takes_only_due_jobs_oldest_first(db: TestDb) {
    let store = db.store().await;
    db.exec(&format!(
        "INSERT INTO jobs (sleep, run_at) VALUES (1, {})",
        db.now_plus(3600)
    ))
    .await
    .expect("delayed insert");
    let mut due = Vec::new();
    for n in 0..5 {
        due.push(
            store
                .insert(&NewJob::sleep(n, Some(1)))
                .await
                .expect("insert"),
        );
    }
    let first = store
        .claim(&jobsd::store::Claim::new("w", 3, false))
        .await
        .expect("claim");
    assert_eq!(first.iter().map(|job| job.id).collect::<Vec<_>>(), due[..3]);
    let rest = store
        .claim(&jobsd::store::Claim::new("w", 10, false))
        .await
        .expect("claim");
    assert_eq!(rest.iter().map(|job| job.id).collect::<Vec<_>>(), due[3..]);
    assert!(
        store
            .claim(&jobsd::store::Claim::new("w", 10, false))
            .await
            .expect("claim")
            .is_empty(),
        "the delayed job waits"
    );
    let delayed = &db.all_rows().await[0];
    assert_eq!(delayed.status, Status::New);
}

/// A burst into a table never analyzed: PostgreSQL guesses a few NEW rows and, with bitmap scans,
/// would read and sort all 20,000 to claim 10. Here such a sort would need a temporary file,
/// which the database refuses: the claims succeed only by walking their index in order.
async fn a_claim_walks_a_backlog_the_statistics_have_not_seen_in_order(db: TestDb) {
    db.store()
        .await
        .insert_many(20_000, 0, false)
        .await
        .expect("backlog");
    let ids: Vec<i64> = db.all_rows().await.iter().map(|row| row.id).collect();
    refuse_temporary_files(&db).await;
    let store = db.store().await;
    for (start, expected) in [(false, &ids[..10]), (true, &ids[10..20])] {
        let claimed = store
            .claim(&jobsd::store::Claim::new("w", 10, start))
            .await
            .expect("the claim needs no sort of the backlog");
        assert_eq!(
            claimed.iter().map(|job| job.id).collect::<Vec<_>>(),
            expected
        );
    }
}

/// Makes the database refuse what needs a temporary file (a sort of more than 64 kB) to the
/// sessions that connect after.
async fn refuse_temporary_files(db: &TestDb) {
    for setting in ["work_mem = ''64kB''", "temp_file_limit = 0"] {
        db.exec(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {setting}', current_database()); END $$"
        ))
        .await
        .expect("a setting of the test's database");
    }
}

/// A replica serving two of three queues, on a table never analyzed: no index gives the order
/// of the two together, and PostgreSQL would read and sort all 100,000 of their jobs for one
/// ordered claim over both. Each queue's first jobs are taken in its own index's order, and the first of them all
/// claimed: the urgent jobs of `b` inserted last, then the oldest of either, none of `c`.
async fn a_claim_from_several_queues_takes_each_queues_first_without_sorting_their_backlog(
    db: TestDb,
) {
    db.exec(
        "INSERT INTO jobs (sleep, queue) SELECT 0, CASE WHEN n % 2 = 0 THEN 'a' ELSE 'b' END \
         FROM generate_series(1, 100000) AS n",
    )
    .await
    .expect("backlog");
    db.exec(
        "INSERT INTO jobs (sleep, queue, priority) SELECT 0, 'c', -5 FROM generate_series(1, 3)",
    )
    .await
    .expect("jobs of a queue not served");
    db.exec(
        "INSERT INTO jobs (sleep, queue, priority) SELECT 0, 'b', -1 FROM generate_series(1, 3)",
    )
    .await
    .expect("urgent jobs");
    let rows = db.all_rows().await;
    let urgent = rows
        .iter()
        .filter(|row| row.priority == -1)
        .map(|row| row.id);
    let oldest = rows.iter().take(7).map(|row| row.id);
    let expected: Vec<i64> = urgent.chain(oldest).collect();
    refuse_temporary_files(&db).await;
    let store = db.store().await;
    let served = ["a".to_owned(), "b".to_owned()];
    let claimed = store
        .claim(&jobsd::store::Claim {
            scope: jobsd::store::Scope::UnlimitedOf(&served),
            ..jobsd::store::Claim::new("w", 10, true)
        })
        .await
        .expect("the claim needs no sort of the backlog");
    assert_eq!(
        claimed.iter().map(|job| job.id).collect::<Vec<_>>(),
        expected
    );
    let changed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status <> 'NEW'")
        .fetch_one(&db.sql().await)
        .await
        .expect("count");
    assert_eq!(changed, 10, "only the claimed rows changed");
}

async fn dead_jobs_settle_three_ways(db: TestDb) {
    let store = db.store().await;
    let never_started = store.insert(&NewJob::sleep(1, None)).await.expect("insert");
    let retryable = store
        .insert(&NewJob {
            max_attempts: Some(3),
            ..NewJob::sleep(2, None)
        })
        .await
        .expect("insert");
    let exhausted = store.insert(&NewJob::sleep(3, None)).await.expect("insert");
    let alive = store.insert(&NewJob::sleep(4, None)).await.expect("insert");
    assert_eq!(
        store
            .claim(&jobsd::store::Claim::new("gone", 3, false))
            .await
            .expect("claim")
            .len(),
        3
    );
    assert_eq!(
        store
            .claim(&jobsd::store::Claim::new("here", 1, false))
            .await
            .expect("claim")
            .len(),
        1
    );
    for id in [retryable, exhausted] {
        assert_eq!(
            store
                .mark_started("gone", &[id], Duration::ZERO)
                .await
                .expect("start"),
            [id]
        );
    }
    assert_eq!(
        store
            .mark_started("here", &[alive], Duration::ZERO)
            .await
            .expect("start"),
        [alive]
    );

    let dead_after = Duration::from_millis(300);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        store
            .heartbeat(alive, "here", None)
            .await
            .expect("heartbeat")
    );
    let dead = store.find_dead(dead_after, 100).await.expect("find dead");
    let dead_ids: Vec<i64> = dead.iter().map(|job| job.id).collect();
    assert_eq!(
        dead_ids,
        [never_started, retryable, exhausted],
        "the job with a heartbeat is alive"
    );

    let backoff = Duration::from_secs(60);
    for job in &dead {
        let how = job.settlement(dead_after, backoff);
        assert!(
            store
                .settle_dead(job, dead_after, &how)
                .await
                .expect("settle")
        );
        assert!(
            !store
                .settle_dead(job, dead_after, &how)
                .await
                .expect("settle"),
            "settled once"
        );
    }
    let rows = db.all_rows().await;
    let row = |id: i64| rows.iter().find(|row| row.id == id).expect("row");

    let requeued = row(never_started);
    assert_eq!((requeued.status, requeued.attempts), (Status::New, 0));
    assert!(requeued.worker.is_none() && requeued.queued_at.is_none());

    let retried = row(retryable);
    assert_eq!((retried.status, retried.attempts), (Status::New, 1));
    assert!(
        retried.run_at > retried.created_at + chrono::Duration::seconds(30),
        "backoff applied"
    );
    assert!(
        retried
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("will retry")
    );

    let cancelled = row(exhausted);
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(cancelled.cancelled_at.is_some());
    assert_eq!(cancelled.finished_at, cancelled.cancelled_at);
    assert!(
        cancelled
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("no sign of life")
    );

    assert_eq!(row(alive).status, Status::Running);
}

async fn finish_racing_cancel_has_exactly_one_winner(db: TestDb) {
    let store = db.store().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(store.insert(&NewJob::sleep(n, None)).await.expect("insert"));
    }
    assert_eq!(
        store
            .claim(&jobsd::store::Claim::new("w", 20, false))
            .await
            .expect("claim")
            .len(),
        20
    );
    for id in &ids {
        assert_eq!(
            store
                .mark_started("w", &[*id], Duration::ZERO)
                .await
                .expect("start"),
            [*id]
        );
    }
    let dead_after = Duration::from_millis(100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = store.find_dead(dead_after, 100).await.expect("find dead");
    assert_eq!(dead.len(), 20);

    let canceller = db.store().await;
    let mut races = Vec::new();
    for job in dead {
        let (finisher, canceller) = (Arc::clone(&store), Arc::clone(&canceller));
        races.push(tokio::spawn(async move {
            let cancel = Settlement::Cancel {
                reason: "dead".into(),
            };
            let outcome = [(job.id, Outcome::Done)];
            let finish = finisher.finish("w", &outcome);
            let settle = canceller.settle_dead(&job, dead_after, &cancel);
            let (finished, cancelled) = tokio::join!(finish, settle);
            (
                job.id,
                finished.expect("finish") == [job.id],
                cancelled.expect("cancel"),
            )
        }));
    }
    for race in races {
        let (id, finished, cancelled) = race.await.expect("race task");
        assert!(
            finished ^ cancelled,
            "job {id}: exactly one wins (finish {finished}, cancel {cancelled})"
        );
        let row = &db.rows(&store, &[id]).await[0];
        let expected = if finished {
            Status::Done
        } else {
            Status::Cancelled
        };
        assert_eq!(row.status, expected, "job {id}");
        assert_eq!(row.cancelled_at.is_some(), cancelled, "job {id}");
        assert!(row.finished_at.is_some());
    }
}

async fn one_statement_starts_a_batch_and_names_what_it_started(db: TestDb) {
    let store = db.store().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            store
                .insert(&NewJob::sleep(1, Some(SECOND)))
                .await
                .expect("insert"),
        );
    }
    let claimed = store
        .claim(&jobsd::store::Claim::new("w", 4, false))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    // Of the batch: one released, one already started, one never claimed (NEW), one of
    // another worker's ids that does not exist.
    let [a, b, c, d, never] = ids[..] else {
        panic!("five ids")
    };
    assert_eq!(store.release("w", Some(&[a])).await.expect("release"), 1);
    assert_eq!(
        store
            .mark_started("w", &[b], Duration::ZERO)
            .await
            .expect("start"),
        [b]
    );
    assert!(
        store
            .mark_started("other", &[c, d], Duration::ZERO)
            .await
            .expect("start")
            .is_empty(),
        "only the holder starts its jobs"
    );
    let mut started = store
        .mark_started("w", &[a, b, c, d, never, i64::MAX], Duration::ZERO)
        .await
        .expect("start");
    started.sort_unstable();
    assert_eq!(started, [c, d]);
    for row in store.rows(&ids, 10).await.expect("rows") {
        let (status, attempts) = match row.id {
            id if id == b || id == c || id == d => (Status::Running, 1),
            _ => (Status::New, 0),
        };
        assert_eq!(
            (row.status, row.attempts),
            (status, attempts),
            "job {}",
            row.id
        );
        assert_eq!(row.started_at.is_some(), status == Status::Running);
    }
    assert!(
        store
            .mark_started("w", &[], Duration::ZERO)
            .await
            .expect("start")
            .is_empty()
    );
    assert_eq!(store.release("w", Some(&[])).await.expect("release"), 0);
}

async fn heartbeat_reports_a_job_taken_away(db: TestDb) {
    let store = db.store().await;
    let id = store
        .insert(&NewJob::sleep(1, Some(SECOND)))
        .await
        .expect("insert");
    store
        .claim(&jobsd::store::Claim::new("w", 1, false))
        .await
        .expect("claim");
    assert_eq!(
        store
            .mark_started("w", &[id], Duration::ZERO)
            .await
            .expect("start"),
        [id]
    );
    assert!(
        store
            .mark_started("w", &[id], Duration::ZERO)
            .await
            .expect("start")
            .is_empty(),
        "started once"
    );
    assert!(store.heartbeat(id, "w", None).await.expect("heartbeat"));
    assert!(
        !store.heartbeat(id, "other", None).await.expect("heartbeat"),
        "only the holder beats"
    );
    assert!(store.lost("w", &[id]).await.expect("lost").is_empty());
    assert_eq!(store.lost("other", &[id]).await.expect("lost"), [id]);

    let dead_after = Duration::from_millis(100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = DeadJob {
        id,
        status: Status::Running,
        attempts: 1,
        max_attempts: 1,
        worker: Some("w".into()),
    };
    let cancel = Settlement::Cancel {
        reason: "dead".into(),
    };
    assert!(
        store
            .settle_dead(&job, dead_after, &cancel)
            .await
            .expect("cancel")
    );
    assert!(
        !store.heartbeat(id, "w", None).await.expect("heartbeat"),
        "a cancelled job cannot beat"
    );
    assert_eq!(store.lost("w", &[id]).await.expect("lost"), [id]);
    assert!(
        store
            .finish("w", &[(id, Outcome::Done)])
            .await
            .expect("finish")
            .is_empty(),
        "terminal is final"
    );
    assert_eq!(db.rows(&store, &[id]).await[0].status, Status::Cancelled);
}

async fn release_gives_jobs_back_without_using_an_attempt(db: TestDb) {
    let store = db.store().await;
    let running = store.insert(&NewJob::sleep(1, None)).await.expect("insert");
    let queued = store.insert(&NewJob::sleep(2, None)).await.expect("insert");
    let others = store.insert(&NewJob::sleep(3, None)).await.expect("insert");
    store
        .claim(&jobsd::store::Claim::new("w", 2, false))
        .await
        .expect("claim");
    store
        .claim(&jobsd::store::Claim::new("other", 1, false))
        .await
        .expect("claim");
    assert_eq!(
        store
            .mark_started("w", &[running], Duration::ZERO)
            .await
            .expect("start"),
        [running]
    );
    assert_eq!(store.release("w", None).await.expect("release"), 2);
    for row in db.rows(&store, &[running, queued]).await {
        assert_eq!(
            (row.status, row.attempts),
            (Status::New, 0),
            "job {}",
            row.id
        );
        assert!(row.worker.is_none() && row.started_at.is_none() && row.queued_at.is_none());
        assert!(row.cancelled_at.is_none() && row.finished_at.is_none());
    }
    assert_eq!(
        db.rows(&store, &[others]).await[0].status,
        Status::Queued,
        "others' jobs untouched"
    );
}

async fn a_claim_can_start_what_it_claims(db: TestDb) {
    let store = db.store().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            store
                .insert(&NewJob::sleep(n, Some(1)))
                .await
                .expect("insert"),
        );
    }
    let claimed = store
        .claim(&jobsd::store::Claim::new("w", 2, true))
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|job| job.id).collect::<Vec<_>>(),
        ids[..2]
    );
    assert!(
        claimed.iter().all(|job| job.attempts == 0),
        "attempts are counted before the run"
    );
    for row in db.rows(&store, &ids[..2]).await {
        assert_eq!(
            (row.status, row.attempts),
            (Status::Running, 1),
            "job {}",
            row.id
        );
        assert_eq!(row.worker.as_deref(), Some("w"));
        assert!(row.queued_at.is_some(), "job {}", row.id);
        assert_eq!(
            row.started_at, row.queued_at,
            "claimed and started in one write"
        );
    }
    assert!(
        store
            .mark_started("w", &[ids[0]], Duration::ZERO)
            .await
            .expect("start")
            .is_empty(),
        "started once"
    );
    assert_eq!(db.rows(&store, &ids[2..]).await[0].status, Status::New);
    // A release gives the attempt back, as for any started job.
    assert_eq!(store.release("w", None).await.expect("release"), 2);
    for row in db.rows(&store, &ids[..2]).await {
        assert_eq!(
            (row.status, row.attempts),
            (Status::New, 0),
            "job {}",
            row.id
        );
    }
}

async fn finish_writes_a_mixed_batch_and_names_the_winners(db: TestDb) {
    let store = db.store().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let job = NewJob {
            max_attempts: Some(3),
            ..NewJob::sleep(n, Some(1))
        };
        ids.push(store.insert(&job).await.expect("insert"));
    }
    assert_eq!(
        store
            .claim(&jobsd::store::Claim::new("w", 4, true))
            .await
            .expect("claim")
            .len(),
        4
    );
    assert_eq!(
        store
            .claim(&jobsd::store::Claim::new("other", 1, true))
            .await
            .expect("claim")
            .len(),
        1
    );
    let (done, failed, retried, terminated, others) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    assert!(
        store
            .request(terminated, Control::Terminate)
            .await
            .expect("request")
    );
    let request = ControlRequest {
        id: terminated,
        status: Status::Running,
        control: Control::Terminate,
        worker: Some("w".into()),
        silent: 0,
    };
    assert!(
        store
            .apply_control(&request, ControlAction::Terminate)
            .await
            .expect("terminate")
    );
    let outcomes = [
        (done, Outcome::Done),
        (
            failed,
            Outcome::Failed {
                reason: "broken".into(),
            },
        ),
        (
            retried,
            Outcome::Retry {
                backoff: Duration::from_secs(60),
                reason: "flaky".into(),
            },
        ),
        (terminated, Outcome::Done),
        (others, Outcome::Done),
    ];
    let mut won = store.finish("w", &outcomes).await.expect("finish");
    won.sort_unstable();
    assert_eq!(
        won,
        [done, failed, retried],
        "only the jobs still ours change"
    );

    let rows = db.rows(&store, &ids).await;
    let row = |id: i64| rows.iter().find(|row| row.id == id).expect("row");
    assert_eq!(row(done).status, Status::Done);
    assert!(row(done).finished_at.is_some() && row(done).last_error.is_none());
    assert_eq!(row(failed).status, Status::Failed);
    assert_eq!(row(failed).last_error.as_deref(), Some("broken"));
    assert!(row(failed).finished_at.is_some());
    let retry = row(retried);
    assert_eq!(retry.status, Status::New);
    assert_eq!(retry.last_error.as_deref(), Some("flaky"));
    assert!(retry.worker.is_none() && retry.started_at.is_none() && retry.finished_at.is_none());
    assert!(retry.run_at > retry.created_at + chrono::Duration::seconds(50));
    assert_eq!(retry.attempts, 1, "the attempt used stays used");
    assert_eq!(
        row(terminated).status,
        Status::Cancelled,
        "terminal is final"
    );
    assert_eq!(
        row(others).status,
        Status::Running,
        "others' jobs untouched"
    );
    assert!(
        store
            .finish("w", &outcomes)
            .await
            .expect("finish")
            .is_empty(),
        "a batch is written once"
    );
}

// === Hostile rows ===

/// The ids `claim` returned, with each one's `unfit` reason.
fn unfit_by_id(jobs: &[jobsd::job::ClaimedJob]) -> std::collections::HashMap<i64, Option<String>> {
    jobs.iter().map(|job| (job.id, job.unfit.clone())).collect()
}

async fn a_claim_reads_each_row_on_its_own(db: TestDb) {
    let store = db.store().await;
    if db.backend == crate::common::Backend::Sqlite {
        // SQLite refuses big values at INSERT (its rows live in the replica's memory); rows
        // from before a lower limit are what a claim meets there.
        db.exec("UPDATE jobsd_limits SET max_payload_bytes = 16777216")
            .await
            .expect("raise the database's limit");
        let refused = store
            .insert(&NewJob {
                payload: Some("x".repeat(17 << 20)),
                ..NewJob::sleep(0, Some(1))
            })
            .await
            .expect_err("a payload over the limit is refused at INSERT");
        assert!(
            refused.to_string().contains("payload too large"),
            "{refused}"
        );
    }
    let big = "x".repeat(2 << 20);
    let good = store
        .insert(&NewJob::sleep(1, Some(1)))
        .await
        .expect("insert");
    let big_payload = store
        .insert(&NewJob {
            payload: Some(format!("{{\"note\": \"{big}\"}}")),
            ..NewJob::sleep(2, Some(1))
        })
        .await
        .expect("insert");
    let big_kind = store
        .insert(&NewJob {
            kind: Some(big.clone()),
            ..NewJob::sleep(3, Some(1))
        })
        .await;
    let used_up = db
        .exec("INSERT INTO jobs (object_id, sleep, attempts, max_attempts) VALUES (4, 1, 5, 1)")
        .await;
    used_up.expect("attempts above max_attempts is a row the types allow");
    let last = store
        .insert(&NewJob::sleep(5, Some(1)))
        .await
        .expect("insert");

    let mut claim = jobsd::store::Claim::new("w", 10, true);
    claim.max_bytes = 1 << 20;
    let jobs = store
        .claim(&claim)
        .await
        .expect("one bad row never fails a claim");
    let unfit = unfit_by_id(&jobs);
    assert_eq!(unfit[&good], None);
    assert_eq!(unfit[&last], None);
    let reason = unfit[&big_payload].clone().expect("a big payload is unfit");
    assert!(reason.contains("payload too large"), "{reason}");
    let job = jobs
        .iter()
        .find(|job| job.id == big_payload)
        .expect("claimed");
    assert!(
        job.payload.is_none(),
        "a payload over the limit is never fetched"
    );
    // MySQL's kind is VARCHAR(64): it refuses the big kind at INSERT.
    if let Ok(big_kind) = big_kind {
        let reason = unfit[&big_kind].clone().expect("a big kind is unfit");
        assert!(reason.contains("kind too large"), "{reason}");
    }
    let used_up = jobs
        .iter()
        .find(|job| job.object_id == Some(4))
        .expect("claimed");
    let reason = used_up.unfit.clone().expect("used-up attempts are unfit");
    assert!(reason.contains("max_attempts"), "{reason}");
}

async fn attempts_at_the_edges_never_break_a_statement(db: TestDb) {
    let store = db.store().await;
    db.exec(
        "INSERT INTO jobs (object_id, sleep, attempts, max_attempts) VALUES \
         (1, 1, 2147483647, 2147483647), (2, 1, 0, 1)",
    )
    .await
    .expect("insert");
    let jobs = store
        .claim(&jobsd::store::Claim::new("w", 10, true))
        .await
        .expect("attempts at the maximum do not overflow the claim");
    assert_eq!(jobs.len(), 2);
    // A row a user wrote as RUNNING with no attempt used: giving the attempt back stays at 0.
    db.exec("INSERT INTO jobs (object_id, sleep, status, worker, attempts) VALUES (3, 1, 'RUNNING', 'w', 0)")
        .await
        .expect("insert");
    db.exec("UPDATE jobs SET attempts = 0 WHERE object_id = 2")
        .await
        .expect("update");
    assert_eq!(store.release("w", None).await.expect("release"), 3);
    for row in db.all_rows().await {
        assert_eq!(row.status, Status::New, "{row:?}");
        assert!(row.attempts >= 0, "{row:?}");
    }
    let ghost = db
        .exec(&format!(
            "INSERT INTO jobs (object_id, sleep, status, worker, attempts, control, heartbeat_at) \
             VALUES (4, 1, 'PAUSED', 'ghost', 0, 'resume', {})",
            db.now_plus(-60)
        ))
        .await;
    ghost.expect("insert");
    let requests = store
        .find_controls(Duration::from_secs(1), 0, 10)
        .await
        .expect("find controls");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].action("me"), ControlAction::ResumeDetached);
    assert!(
        store
            .apply_control(&requests[0], ControlAction::ResumeDetached)
            .await
            .expect("a resume of a row with no attempt to give back applies")
    );
    let row = db
        .all_rows()
        .await
        .into_iter()
        .find(|row| row.object_id == Some(4))
        .expect("row");
    assert_eq!((row.status, row.attempts), (Status::New, 0));
}

async fn any_reason_is_stored_shortened_and_clean(db: TestDb) {
    let store = db.store().await;
    let failed = store
        .insert(&NewJob::sleep(1, Some(1)))
        .await
        .expect("insert");
    let retried = store
        .insert(&NewJob {
            max_attempts: Some(3),
            ..NewJob::sleep(2, Some(1))
        })
        .await
        .expect("insert");
    store
        .claim(&jobsd::store::Claim::new("w", 2, true))
        .await
        .expect("claim");
    let reason = format!("table \"a\0b\" {}", "z".repeat(70_000));
    let outcomes = [
        (
            failed,
            Outcome::Failed {
                reason: reason.clone(),
            },
        ),
        (
            retried,
            Outcome::Retry {
                backoff: Duration::from_secs(60),
                reason,
            },
        ),
    ];
    let mut won = store
        .finish("w", &outcomes)
        .await
        .expect("any reason is stored");
    won.sort_unstable();
    assert_eq!(won, [failed, retried]);
    for row in db.rows(&store, &[failed, retried]).await {
        let error = row.last_error.clone().expect("a reason");
        assert!(
            error.len() <= jobsd::store::MAX_REASON_BYTES,
            "{}",
            error.len()
        );
        assert!(
            error.starts_with("table \"a") && !error.contains('\0'),
            "{error:.40}"
        );
    }
}

async fn a_row_written_as_running_by_a_user_is_found_dead(db: TestDb) {
    let store = db.store().await;
    db.exec(&format!(
        "INSERT INTO jobs (object_id, sleep, status, created_at) VALUES (1, 1, 'RUNNING', {})",
        db.now_plus(-60)
    ))
    .await
    .expect("insert");
    let dead = store
        .find_dead(Duration::from_secs(1), 10)
        .await
        .expect("find dead");
    assert_eq!(
        dead.len(),
        1,
        "a RUNNING row with no sign of life at all is dead"
    );
    let how = dead[0].settlement(Duration::from_secs(1), Duration::from_secs(1));
    assert!(
        store
            .settle_dead(&dead[0], Duration::from_secs(1), &how)
            .await
            .expect("settle")
    );
    // It never ran under jobsd (no attempt used), so it gets its run.
    let row = &db.all_rows().await[0];
    assert_eq!((row.status, row.attempts), (Status::New, 0), "{row:?}");
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no sign of life")),
        "{row:?}"
    );
}

async fn control_requests_page_past_those_that_wait(db: TestDb) {
    let store = db.store().await;
    let values: Vec<String> = (1..=600)
        .map(|n| format!("({n}, 1, 'RUNNING', 'other', 'pause', {})", db.now_plus(0)))
        .collect();
    db.exec(&format!(
        "INSERT INTO jobs (object_id, sleep, status, worker, control, heartbeat_at) VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("insert");
    db.exec("INSERT INTO jobs (object_id, sleep, control) VALUES (601, 1, 'terminate')")
        .await
        .expect("insert");
    let first = store
        .find_controls(Duration::from_secs(60), 0, 500)
        .await
        .expect("page");
    assert_eq!(first.len(), 500);
    let after = first.last().expect("a page").id;
    let rest = store
        .find_controls(Duration::from_secs(60), after, 500)
        .await
        .expect("page");
    assert_eq!(rest.len(), 101);
    let terminate = rest.last().expect("the terminate");
    assert_eq!(terminate.control, Control::Terminate);
    assert_eq!(terminate.action("me"), ControlAction::Terminate);
}

async fn wrong_types_are_refused_at_insert(db: TestDb) {
    for (column, value) in [
        ("sleep", "'1s'"),
        ("sleep", "1.5"),
        ("object_id", "'abc'"),
        ("payload", "X'7B7D'"),
        ("progress", "X'00'"),
        ("max_attempts", "3000000000"),
        ("attempts", "-1"),
        ("kind", "X'61'"),
        ("run_at", "'soon'"),
        ("heartbeat_at", "42"),
    ] {
        let refused = db
            .exec(&format!("INSERT INTO jobs ({column}) VALUES ({value})"))
            .await;
        let error = refused.expect_err(&format!("{column} = {value} was accepted"));
        assert!(
            error.to_string().contains(&format!("jobs.{column}")) || column.ends_with("_at"),
            "{error}"
        );
    }
    db.exec("INSERT INTO jobs (sleep, object_id) VALUES ('42', 7.0)")
        .await
        .expect("values the column affinity makes whole numbers are taken");
    db.exec("UPDATE jobs SET sleep = 'soon'")
        .await
        .expect_err("an UPDATE is checked too");
}

async fn rows_of_the_wrong_type_from_before_end_unfit(db: TestDb) {
    // Rows written before the triggers existed.
    for trigger in [
        "jobs_sleep_type_insert",
        "jobs_object_id_type_insert",
        "jobs_payload_type_insert",
        "jobs_attempts_type_insert",
    ] {
        db.exec(&format!("DROP TRIGGER {trigger}"))
            .await
            .expect("drop");
    }
    db.exec(
        "INSERT INTO jobs (object_id, sleep, payload, attempts) VALUES \
         (1, '1s', NULL, 0), (2, 1, X'7B7D', 0), ('abc', 1, NULL, 0), (4, 1, NULL, 0), \
         (5, 1, NULL, 'x')",
    )
    .await
    .expect("insert");
    let store = db.store().await;
    // A claim that starts writes `attempts`: a count that is text must not fail it either.
    let jobs = store
        .claim(&jobsd::store::Claim::new("w", 10, true))
        .await
        .expect("rows of the wrong type never fail a claim");
    assert_eq!(jobs.len(), 5);
    assert!(
        jobs[4]
            .unfit
            .as_deref()
            .is_some_and(|r| r.contains("attempts")),
        "{jobs:?}"
    );
    let reasons: Vec<Option<String>> = jobs.iter().map(|job| job.unfit.clone()).collect();
    assert!(
        reasons[0].as_deref().is_some_and(|r| r.contains("sleep")),
        "{reasons:?}"
    );
    assert!(
        reasons[1].as_deref().is_some_and(|r| r.contains("payload")),
        "{reasons:?}"
    );
    assert!(
        reasons[2]
            .as_deref()
            .is_some_and(|r| r.contains("object_id")),
        "{reasons:?}"
    );
    assert_eq!(reasons[3], None);
}

async fn the_payload_limit_is_recorded_for_users_to_read(db: TestDb) {
    let read = async || -> i64 {
        let pool = db.sql().await;
        let limit = sqlx::query_scalar("SELECT max_payload_bytes FROM jobsd_limits")
            .fetch_one(&pool)
            .await
            .expect("one row of limits");
        pool.close().await;
        limit
    };
    assert_eq!(read().await, 1 << 20, "the default, as migrated");
    let store = db.store().await;
    store.limit_payloads(5 << 20).await.expect("recorded");
    assert_eq!(read().await, 5 << 20);
}

/// The completer writes a start behind its run, alone or with the run's DONE outcome: the start
/// is dated back to when the run began, never before the claim, and uses one attempt.
async fn a_start_written_behind_its_run_is_dated_when_the_run_began(db: TestDb) {
    let store = db.store().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(store.insert(&NewJob::sleep(1, None)).await.expect("insert"));
    }
    let claimed = store
        .claim(&jobsd::store::Claim::new("w", 4, false))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (running, done, stranger, early) = (ids[0], ids[1], ids[2], ids[3]);
    let since = Duration::from_millis(200);
    assert_eq!(
        store
            .mark_started("w", &[running], since)
            .await
            .expect("start"),
        [running]
    );
    assert!(
        store
            .finish_unstarted("other", &[stranger], since)
            .await
            .expect("finish")
            .is_empty(),
        "only the holder writes its jobs"
    );
    let mut won = store
        .finish_unstarted("w", &[done, running, stranger, i64::MAX], since)
        .await
        .expect("finish");
    won.sort_unstable();
    assert_eq!(won, [done, stranger], "QUEUED by w, and nothing else");
    // A run cannot have begun before its claim, whatever it says.
    assert_eq!(
        store
            .finish_unstarted("w", &[early], Duration::from_secs(3600))
            .await
            .expect("finish"),
        [early]
    );

    let rows = db.rows(&store, &ids).await;
    let row = |id: i64| rows.iter().find(|row| row.id == id).expect("row");
    for id in [running, done, stranger] {
        let row = row(id);
        let queued = row.queued_at.expect("queued_at");
        let started = row.started_at.expect("started_at");
        // Written 400 ms or more after the claim, dated 200 ms back.
        let after_claim = (started - queued).num_milliseconds();
        assert!(
            (195..2000).contains(&after_claim),
            "started {after_claim} ms after its claim: {row:?}"
        );
        assert_eq!(row.attempts, 1, "{row:?}");
    }
    assert_eq!(row(running).status, Status::Running);
    for id in [done, stranger, early] {
        let row = row(id);
        assert_eq!(row.status, Status::Done, "{row:?}");
        assert!(row.finished_at.expect("finished_at") >= row.started_at.expect("started_at"));
        assert_eq!((row.last_error.as_deref(), row.attempts), (None, 1));
    }
    assert_eq!(row(early).started_at, row(early).queued_at);
}
