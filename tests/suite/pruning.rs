//! Retention: old finished rows are deleted in batches by one replica at a time, recent and
//! live rows never are, and jobs keep running while it happens.

use std::time::{Duration, Instant};

use jobsd::Status;

use crate::common::{Backend, TestDb};
use crate::reliability::processes::Launcher;

crate::on_every_backend!(
    old_finished_rows_go_and_everything_else_stays,
    a_user_that_may_not_delete_gets_one_warning_and_jobs_still_run,
);

const DAY: i64 = 24 * 3600;

/// Settings that make the pruner pass every 3 s (30 polls), with the real retention defaults.
const SETTINGS: &[(&str, &str)] = &[
    ("JOBSD_POLL_INTERVAL", "100ms"),
    ("JOBSD_DEAD_AFTER", "2s"),
    ("JOBSD_RATE_PER_SECOND", "0"),
];

/// Inserts `count` rows in `status`, finished `seconds_ago`, in one statement.
async fn seed(db: &TestDb, count: u32, status: Status, seconds_ago: i64, object_id: i64) {
    let finished = db.now_plus(-seconds_ago);
    let rows = match db.backend {
        Backend::Postgres => format!("generate_series(1, {count})"),
        Backend::Mysql => format!("seq_1_to_{count}"),
        Backend::Sqlite => format!(
            "(WITH RECURSIVE n (x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {count}) SELECT x FROM n)"
        ),
    };
    let statement = format!(
        "INSERT INTO jobs (object_id, sleep, status, created_at, run_at, finished_at) \
         SELECT {object_id}, 0, '{status}', {finished}, {finished}, {finished} FROM {rows} AS seq"
    );
    db.exec(&statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// Rows with `object_id`, and `also` (an SQL condition, or nothing).
async fn count(db: &TestDb, object_id: i64, also: &str) -> i64 {
    let pool = db.sql().await;
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM jobs WHERE object_id = {object_id}{also}"
    ))
    .fetch_one(&pool)
    .await
    .expect("count");
    pool.close().await;
    count
}

async fn old_finished_rows_go_and_everything_else_stays(db: TestDb) {
    // object_id tells the groups apart.
    seed(&db, 2500, Status::Done, 30 * DAY, 1).await; // older than retain_done (7 days)
    seed(&db, 100, Status::Done, 3600, 2).await; // an hour old: kept
    seed(&db, 50, Status::Failed, 10 * DAY, 3).await; // younger than retain_failed (30 days)
    seed(&db, 50, Status::Failed, 40 * DAY, 4).await; // gone
    seed(&db, 50, Status::Cancelled, 40 * DAY, 5).await; // gone
    for _ in 0..5 {
        // Delayed NEW rows, and a PAUSED one held by nobody: live, never touched.
        db.exec(&format!(
            "INSERT INTO jobs (object_id, sleep, run_at) VALUES (6, 0, {})",
            db.now_plus(3600)
        ))
        .await
        .expect("delayed job");
    }
    db.exec("INSERT INTO jobs (object_id, sleep, status) VALUES (7, 0, 'PAUSED')")
        .await
        .expect("paused job");

    let launcher = Launcher::new(&db, SETTINGS);
    let mut replicas = [launcher.start("a"), launcher.start("b")];
    for replica in &mut replicas {
        replica.ready(Duration::from_secs(30)).await;
    }
    // A job inserted while pruning goes on runs promptly.
    let inserted = Instant::now();
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (8, 0)")
        .await
        .expect("new job");
    let store = db.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ran_in = None;
    loop {
        let rows = store.rows(&[], 1_000_000).await.expect("rows");
        if ran_in.is_none()
            && rows
                .iter()
                .any(|row| row.object_id == Some(8) && row.status == Status::Done)
        {
            ran_in = Some(inserted.elapsed());
        }
        if ran_in.is_some()
            && [1, 4, 5]
                .iter()
                .all(|&id| !rows.iter().any(|row| row.object_id == Some(id)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "old rows still there after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ran_in = ran_in.expect("the new job ran");
    eprintln!("the job inserted while pruning ran in {ran_in:?}");
    assert!(
        ran_in < Duration::from_secs(2),
        "a new job waited {ran_in:?}"
    );
    assert_eq!(count(&db, 2, "").await, 100, "recent DONE rows stay");
    assert_eq!(
        count(&db, 3, "").await,
        50,
        "FAILED rows younger than retain_failed stay"
    );
    assert_eq!(count(&db, 6, "").await, 5, "delayed NEW rows stay");
    assert_eq!(count(&db, 7, "").await, 1, "a PAUSED row stays");
    let rows = store.rows(&[], 1_000_000).await.expect("rows");
    assert!(
        rows.iter()
            .filter(|row| row.object_id == Some(6))
            .all(|row| row.status == Status::New)
    );

    // One replica at a time held the lease, and says so in the table.
    let pool = db.sql().await;
    let holder: Option<String> =
        sqlx::query_scalar("SELECT holder FROM jobsd_leases WHERE name = 'pruner'")
            .fetch_one(&pool)
            .await
            .expect("lease row");
    pool.close().await;
    let holder = holder.expect("a replica took the lease");
    assert!(
        replicas
            .iter()
            .any(|replica| replica.log().contains(&holder)),
        "the holder {holder} is one of the replicas"
    );
    let pruned: Vec<bool> = replicas
        .iter()
        .map(|replica| replica.log().contains("old finished jobs deleted"))
        .collect();
    assert_eq!(
        pruned.iter().filter(|&&p| p).count(),
        1,
        "one replica pruned: {pruned:?}"
    );
    for replica in &mut replicas {
        replica.stop(Duration::from_secs(30)).await;
    }
}

async fn a_user_that_may_not_delete_gets_one_warning_and_jobs_still_run(db: TestDb) {
    if db.backend == Backend::Sqlite {
        // A SQLite file has no users; its rights are the file's.
        return;
    }
    seed(&db, 10, Status::Done, 30 * DAY, 1).await;
    // SELECT and UPDATE on jobs and queues: no DELETE, nothing on jobsd_leases.
    let mut user = crate::bad_input::DbUser::create(&db).await;
    let launcher = Launcher::for_url(&user.url(&db.url), SETTINGS).with_args(&["--no-migrate"]);
    let mut replica = launcher.start("a");
    replica.ready(Duration::from_secs(30)).await;
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (2, 0)")
        .await
        .expect("new job");
    crate::reliability::until(Duration::from_secs(10), async || {
        match count(&db, 2, " AND status = 'DONE'").await {
            1 => Ok(()),
            _ => Err("the new job has not run".to_owned()),
        }
    })
    .await;
    // Two pruner passes at least (every 3 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    replica.assert_running();
    assert_eq!(count(&db, 1, "").await, 10, "nothing deleted");
    let warnings = replica.log().matches("pruning is off").count();
    assert_eq!(warnings, 1, "one warning:\n{}", replica.tail());
    replica.stop(Duration::from_secs(30)).await;
    user.drop_now().await;
}
