//! Unique jobs (DESIGN §2): while a job with a `unique_key` is NEW, QUEUED, RUNNING or PAUSED,
//! the database itself refuses another INSERT with that key, whoever writes it: users' plain SQL,
//! connections racing each other, `jobsd enqueue --unique-key`. A job never conflicts with
//! itself on its way (a retry, a pause and resume, a release, a requeue), and its key is free
//! again once it is DONE, FAILED or CANCELLED. Every verdict is read back from the database.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jobsd::job::{Control, ControlAction, Outcome, Settlement};
use jobsd::store::{Claim, Resume, Resumed, Store};
use jobsd::{Handler, Handlers, JobContext, JobRow, NewJob, Status};

use crate::common::{Backend, Replica, TestDb};

crate::on_every_backend!(
    twenty_racing_inserts_of_one_key_leave_one_row,
    the_skip_forms_skip_a_held_key_quietly,
    keys_compare_exactly_and_are_text_of_at_most_255_characters,
    a_key_is_free_again_once_its_job_is_done_failed_or_cancelled,
    a_job_keeps_its_key_through_retry_pause_resume_release_and_requeue,
    a_daemon_retries_pauses_resumes_and_releases_a_unique_job_to_done,
    enqueue_with_a_unique_key_prints_the_holders_id_until_it_is_done,
    a_row_from_before_the_migration_keeps_working,
);

/// How many connections race to insert one key.
const RACERS: usize = 20;

/// How long a daemon may take to move a job along on a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// A user's INSERT of a sleep job holding `key`.
fn insert_sql(key: &str) -> String {
    format!("INSERT INTO jobs (sleep, unique_key) VALUES (1, '{key}')")
}

/// Whether `error` is the database refusing a duplicate key.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| error.is_unique_violation())
}

/// A user's INSERT with `key` is refused, as a duplicate.
async fn refused(db: &TestDb, key: &str, when: &str) {
    let error = db
        .exec(&insert_sql(key))
        .await
        .expect_err(&format!("a second job with key {key:?} was taken {when}"));
    assert!(is_unique_violation(&error), "{when}: {error}");
}

/// The rows holding `key`, oldest first.
async fn with_key(db: &TestDb, key: &str) -> Vec<JobRow> {
    db.all_rows()
        .await
        .into_iter()
        .filter(|row| row.unique_key.as_deref() == Some(key))
        .collect()
}

/// Twenty connections INSERT one key at the same moment: the database keeps exactly one row,
/// and refuses the others as duplicates; with the skip form, they all succeed and one inserts.
/// The store's own insert-or-skip, raced the same way, inserts once too.
async fn twenty_racing_inserts_of_one_key_leave_one_row(db: TestDb) {
    let skip_form = |key: &str| match db.backend {
        Backend::Mysql => {
            format!("INSERT IGNORE INTO jobs (sleep, unique_key) VALUES (1, '{key}')")
        }
        Backend::Postgres | Backend::Sqlite => {
            format!("{} ON CONFLICT DO NOTHING", insert_sql(key))
        }
    };
    for (key, statement) in [
        ("plain", insert_sql("plain")),
        ("skipped", skip_form("skipped")),
    ] {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let (db, barrier, statement) = (db.clone(), barrier.clone(), statement.clone());
                tokio::spawn(async move {
                    // Each its own connection, opened before the race starts.
                    let pool = db.sql().await;
                    let mut connection = pool.acquire().await.expect("connection");
                    barrier.wait().await;
                    let done = sqlx::query(&statement).execute(&mut *connection).await;
                    drop(connection);
                    pool.close().await;
                    done.map(|done| done.rows_affected())
                })
            })
            .collect();
        let mut inserted = 0;
        for racer in racers {
            match racer.await.expect("racer") {
                Ok(rows) => inserted += rows,
                Err(error) => assert!(
                    key == "plain" && is_unique_violation(&error),
                    "{key}: {error}"
                ),
            }
        }
        assert_eq!(inserted, 1, "{key}: one INSERT took the key");
        let rows = with_key(&db, key).await;
        assert_eq!(rows.len(), 1, "{key}: {rows:?}");
        assert_eq!(rows[0].status, Status::New);
    }

    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (db, barrier) = (db.clone(), barrier.clone());
            tokio::spawn(async move {
                let store = db.store().await;
                let job = NewJob {
                    unique_key: Some("store".into()),
                    ..NewJob::sleep(1, Some(1))
                };
                barrier.wait().await;
                store.insert_or_skip(&job).await.expect("insert or skip")
            })
        })
        .collect();
    let mut ids = Vec::new();
    for racer in racers {
        ids.extend(racer.await.expect("racer"));
    }
    let rows = with_key(&db, "store").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(ids, [rows[0].id], "the one insert returned its id");
    let store = db.store().await;
    assert_eq!(
        store.live_with_key("store").await.expect("look-up"),
        Some(rows[0].id)
    );
}

/// Users skip a held key with their database's form: no error, no row affected, one row.
async fn the_skip_forms_skip_a_held_key_quietly(db: TestDb) {
    assert_eq!(db.exec(&insert_sql("k")).await.expect("first insert"), 1);
    let forms: Vec<String> = match db.backend {
        Backend::Postgres => vec![
            format!("{} ON CONFLICT DO NOTHING", insert_sql("k")),
            format!(
                "{} ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL \
                 AND status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED') DO NOTHING",
                insert_sql("k")
            ),
        ],
        Backend::Sqlite => vec![
            format!("{} ON CONFLICT DO NOTHING", insert_sql("k")),
            "INSERT OR IGNORE INTO jobs (sleep, unique_key) VALUES (1, 'k')".into(),
        ],
        Backend::Mysql => {
            vec!["INSERT IGNORE INTO jobs (sleep, unique_key) VALUES (1, 'k')".into()]
        }
    };
    for form in &forms {
        assert_eq!(
            db.exec(form)
                .await
                .unwrap_or_else(|e| panic!("{form}: {e}")),
            0,
            "{form}"
        );
    }
    if db.backend == Backend::Mysql {
        // Skips only a duplicate (INSERT IGNORE also shortens a key too long); the count it
        // reports depends on the client's flags, so the table is what tells.
        db.exec(&format!(
            "{} ON DUPLICATE KEY UPDATE id = id",
            insert_sql("k")
        ))
        .await
        .expect("ON DUPLICATE KEY UPDATE skips quietly");
    }
    refused(&db, "k", "by a plain INSERT").await;
    let rows = db.all_rows().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].unique_key.as_deref(), Some("k"));
    // Jobs without a key never conflict.
    assert_eq!(
        db.exec("INSERT INTO jobs (sleep) VALUES (1), (1), (1)")
            .await
            .expect("keyless jobs"),
        3
    );
}

/// Keys compare byte for byte on every database (MySQL's collation would take 'K' and 'k ' for
/// 'k'); a key is text of at most 255 characters.
async fn keys_compare_exactly_and_are_text_of_at_most_255_characters(db: TestDb) {
    for key in ["k", "K", "k ", "é", "e"] {
        assert_eq!(
            db.exec(&insert_sql(key))
                .await
                .unwrap_or_else(|e| panic!("{key:?}: {e}")),
            1
        );
    }
    let store = db.store().await;
    for key in ["k", "K", "k ", "é", "e"] {
        let holder = store.live_with_key(key).await.expect("look-up");
        let rows = with_key(&db, key).await;
        assert_eq!(rows.len(), 1, "{key:?}: {rows:?}");
        assert_eq!(holder, Some(rows[0].id), "{key:?}");
    }
    assert_eq!(store.live_with_key("k  ").await.expect("look-up"), None);
    refused(&db, "é", "for an equal key").await;

    let longest = "x".repeat(255);
    db.exec(&insert_sql(&longest))
        .await
        .expect("255 characters are a key");
    let error = db
        .exec(&insert_sql(&"x".repeat(256)))
        .await
        .expect_err("256 characters are refused");
    assert!(!is_unique_violation(&error), "{error}");
    if db.backend == Backend::Sqlite {
        // A blob would never equal the same key written as text. (A number is stored as
        // text, by the column's affinity, as the other databases' casts store it.)
        let error = db
            .exec("INSERT INTO jobs (sleep, unique_key) VALUES (1, X'6B')")
            .await
            .expect_err("a blob was taken for a key");
        assert!(error.to_string().contains("jobs.unique_key"), "{error}");
        db.exec("UPDATE jobs SET unique_key = X'6B' WHERE unique_key = 'K'")
            .await
            .expect_err("an UPDATE is checked too");
    }
    assert_eq!(db.all_rows().await.len(), 6, "nothing refused was stored");
}

/// Claims job `id`, the only NEW one, and starts it, as worker `w`.
async fn start(store: &Arc<dyn Store>, id: i64) {
    let claimed = store
        .claim(&Claim::new("w", 10, true))
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|job| job.id).collect::<Vec<_>>(),
        [id],
        "the one NEW job is claimed"
    );
}

/// Carries out the pending control request on job `id` as replica `me` decides it.
async fn apply_request(store: &Arc<dyn Store>, id: i64, control: Control, expected: ControlAction) {
    assert!(store.request(id, control).await.expect("request"));
    let requests = store
        .find_controls(Duration::from_secs(60), 0, 10)
        .await
        .expect("requests");
    let request = requests
        .iter()
        .find(|request| request.id == id)
        .expect("the request");
    let action = request.action("me");
    assert_eq!(action, expected);
    assert!(
        store.apply_control(request, action).await.expect("apply"),
        "{action:?} carried out"
    );
}

/// The key is taken while its job is live, and free again once it ends each way.
async fn a_key_is_free_again_once_its_job_is_done_failed_or_cancelled(db: TestDb) {
    let store = db.store().await;
    let job = NewJob {
        unique_key: Some("k".into()),
        ..NewJob::sleep(1, Some(1))
    };
    let done = store.insert(&job).await.expect("insert");
    start(&store, done).await;
    refused(&db, "k", "while RUNNING").await;
    assert_eq!(
        store
            .finish("w", &[(done, Outcome::Done)])
            .await
            .expect("finish"),
        [done]
    );

    let failed = store.insert(&job).await.expect("the key is free once DONE");
    start(&store, failed).await;
    let outcome = Outcome::Failed {
        reason: "broken".into(),
    };
    assert_eq!(
        store
            .finish("w", &[(failed, outcome)])
            .await
            .expect("finish"),
        [failed]
    );

    assert_eq!(
        db.exec(&insert_sql("k"))
            .await
            .expect("the key is free once FAILED"),
        1
    );
    let cancelled = store
        .live_with_key("k")
        .await
        .expect("look-up")
        .expect("the new job holds the key");
    refused(&db, "k", "while NEW").await;
    apply_request(
        &store,
        cancelled,
        Control::Terminate,
        ControlAction::Terminate,
    )
    .await;

    let last = store
        .insert_or_skip(&job)
        .await
        .expect("insert")
        .expect("the key is free once CANCELLED");
    assert_eq!(store.live_with_key("k").await.expect("look-up"), Some(last));
    assert_eq!(store.insert_or_skip(&job).await.expect("skip"), None);

    let statuses: Vec<(i64, Status)> = with_key(&db, "k")
        .await
        .iter()
        .map(|row| (row.id, row.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (done, Status::Done),
            (failed, Status::Failed),
            (cancelled, Status::Cancelled),
            (last, Status::New)
        ]
    );
}

/// Job `id` is in `status` with `attempts`, still holds key `k`, is the one the look-up finds,
/// and a second INSERT with the key is refused.
async fn holds_key(db: &TestDb, store: &Arc<dyn Store>, id: i64, status: Status, attempts: i32) {
    let row = db.rows(store, &[id]).await.remove(0);
    assert_eq!((row.status, row.attempts), (status, attempts), "{row:?}");
    assert_eq!(row.unique_key.as_deref(), Some("k"), "{row:?}");
    assert_eq!(store.live_with_key("k").await.expect("look-up"), Some(id));
    refused(db, "k", &format!("while the job is {status}")).await;
}

/// Every way a job moves between the live statuses rewrites its row; none of them makes it
/// conflict with itself, and none lets a second job take its key meanwhile.
async fn a_job_keeps_its_key_through_retry_pause_resume_release_and_requeue(db: TestDb) {
    let store = db.store().await;
    let job = NewJob {
        unique_key: Some("k".into()),
        max_attempts: Some(2),
        ..NewJob::sleep(1, Some(1))
    };
    let id = store.insert(&job).await.expect("insert");
    holds_key(&db, &store, id, Status::New, 0).await;

    let claimed = store
        .claim(&Claim::new("w", 10, false))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    holds_key(&db, &store, id, Status::Queued, 0).await;
    assert_eq!(
        store
            .mark_started("w", &[id], Duration::ZERO)
            .await
            .expect("start"),
        [id]
    );
    holds_key(&db, &store, id, Status::Running, 1).await;

    // The first attempt fails, and attempts remain: back to NEW.
    let retry = Outcome::Retry {
        backoff: Duration::ZERO,
        reason: "first attempt fails".into(),
    };
    assert_eq!(
        store.finish("w", &[(id, retry)]).await.expect("retry"),
        [id]
    );
    holds_key(&db, &store, id, Status::New, 1).await;

    // Paused while waiting, and resumed by whichever replica reads the request.
    apply_request(&store, id, Control::Pause, ControlAction::PauseWaiting).await;
    holds_key(&db, &store, id, Status::Paused, 1).await;
    apply_request(&store, id, Control::Resume, ControlAction::ResumeDetached).await;
    holds_key(&db, &store, id, Status::New, 1).await;

    // Claimed by a replica that goes silent: requeued as dead.
    assert_eq!(
        store
            .claim(&Claim::new("gone", 10, false))
            .await
            .expect("claim")
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let dead = store
        .find_dead(Duration::from_millis(1), 10)
        .await
        .expect("dead jobs");
    assert_eq!(dead.iter().map(|job| job.id).collect::<Vec<_>>(), [id]);
    assert!(
        store
            .settle_dead(&dead[0], Duration::from_millis(1), &Settlement::Requeue)
            .await
            .expect("requeue")
    );
    holds_key(&db, &store, id, Status::New, 1).await;

    // Running, paused and resumed by its holder, then released at a shutdown.
    start(&store, id).await;
    holds_key(&db, &store, id, Status::Running, 2).await;
    assert!(store.pause(id, "w").await.expect("pause"));
    holds_key(&db, &store, id, Status::Paused, 2).await;
    let resume = Resume {
        id,
        worker: "w",
        queue: "default",
        dead_after: Duration::from_secs(10),
    };
    assert_eq!(store.resume(&resume).await.expect("resume"), Resumed::Yes);
    holds_key(&db, &store, id, Status::Running, 2).await;
    assert_eq!(store.release("w", Some(&[id])).await.expect("release"), 1);
    holds_key(&db, &store, id, Status::New, 1).await;

    start(&store, id).await;
    assert_eq!(
        store
            .finish("w", &[(id, Outcome::Done)])
            .await
            .expect("done"),
        [id]
    );
    let row = db.rows(&store, &[id]).await.remove(0);
    assert_eq!((row.status, row.attempts), (Status::Done, 2), "{row:?}");
    assert_eq!(
        row.unique_key.as_deref(),
        Some("k"),
        "a finished job keeps its key"
    );
    assert_eq!(store.live_with_key("k").await.expect("look-up"), None);
    assert_eq!(
        db.exec(&insert_sql("k"))
            .await
            .expect("the key is free once DONE"),
        1
    );
}

/// Fails its first attempt; later attempts beat until the test lets them finish, so that the
/// test can pause, resume and release a run that is truly in progress.
struct Gated {
    go: Arc<AtomicBool>,
}

#[async_trait]
impl Handler for Gated {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        anyhow::ensure!(ctx.attempt() > 1, "the first attempt fails");
        while !self.go.load(Ordering::SeqCst) {
            // A sign of life, and the place a requested pause takes effect.
            ctx.heartbeat().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Waits until job `id` is in `status` with `attempts`.
async fn until_at(db: &TestDb, store: &Arc<dyn Store>, id: i64, status: Status, attempts: i32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = db.rows(store, &[id]).await.remove(0);
        if (row.status, row.attempts) == (status, attempts) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} not {status} with {attempts} attempts after {WAIT:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The same with real daemons: the job fails once and is retried, is paused and resumed while
/// it runs, is released by a shutdown and taken up by the next replica, and ends DONE, holding
/// its key throughout.
async fn a_daemon_retries_pauses_resumes_and_releases_a_unique_job_to_done(db: TestDb) {
    let go = Arc::new(AtomicBool::new(false));
    let handlers = || Handlers::default().register("gated", Gated { go: go.clone() });
    let config = jobsd::Config {
        shutdown_grace: Duration::from_millis(200),
        ..db.config()
    };
    let store = db.store().await;
    let id = store
        .insert(&NewJob {
            kind: Some("gated".into()),
            max_attempts: Some(2),
            unique_key: Some("k".into()),
            ..NewJob::default()
        })
        .await
        .expect("insert");
    let replica = Replica::start(&db, config.clone(), handlers()).await;
    until_at(&db, &store, id, Status::Running, 2).await;
    let row = db.rows(&store, &[id]).await.remove(0);
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|error| error.contains("first attempt fails")),
        "retried after the first attempt failed: {row:?}"
    );
    holds_key(&db, &store, id, Status::Running, 2).await;

    db.exec(&format!(
        "UPDATE jobs SET control = 'pause' WHERE id = {id}"
    ))
    .await
    .expect("pause");
    until_at(&db, &store, id, Status::Paused, 2).await;
    holds_key(&db, &store, id, Status::Paused, 2).await;
    db.exec(&format!(
        "UPDATE jobs SET control = 'resume' WHERE id = {id}"
    ))
    .await
    .expect("resume");
    until_at(&db, &store, id, Status::Running, 2).await;
    holds_key(&db, &store, id, Status::Running, 2).await;

    // Shutdown outlives the grace and gives the job back, its attempt returned.
    replica.shutdown().await;
    holds_key(&db, &store, id, Status::New, 1).await;

    let next = Replica::start(&db, config, handlers()).await;
    until_at(&db, &store, id, Status::Running, 2).await;
    holds_key(&db, &store, id, Status::Running, 2).await;
    go.store(true, Ordering::SeqCst);
    until_at(&db, &store, id, Status::Done, 2).await;
    next.shutdown().await;
    assert_eq!(store.live_with_key("k").await.expect("look-up"), None);
    assert_eq!(
        db.exec(&insert_sql("k"))
            .await
            .expect("the key is free once DONE"),
        1
    );
    let rows = with_key(&db, "k").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
}

/// `jobsd enqueue … --unique-key K` with the test's database and nothing else.
async fn enqueue(db: &TestDb, folder: &std::path::Path, key: &str) -> (i64, String) {
    let mut command = crate::common::bare_jobsd(folder);
    command
        .args(["enqueue", "sleep", "--sleep", "1000", "--unique-key", key])
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null());
    let done = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("jobsd exits within a minute")
        .expect("jobsd starts");
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    assert!(done.status.success(), "{:?}: {stderr}", done.status);
    let stdout = String::from_utf8_lossy(&done.stdout);
    let id = stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("enqueue prints an id, not {stdout:?}; {stderr}"));
    (id, stderr)
}

/// The command line inserts a unique job once; while it is live, the same command prints its
/// id and says it skipped; once it is DONE, the command inserts a new job.
async fn enqueue_with_a_unique_key_prints_the_holders_id_until_it_is_done(db: TestDb) {
    let folder = tempfile::tempdir().expect("folder");
    let (first, said) = enqueue(&db, folder.path(), "nightly").await;
    assert!(!said.contains("skipped"), "{said}");
    let (again, said) = enqueue(&db, folder.path(), "nightly").await;
    assert_eq!(again, first, "the live job's id");
    assert!(
        said.contains("skipped") && said.contains(&format!("job {first}")),
        "says it skipped, and for which job: {said}"
    );
    let (other, _) = enqueue(&db, folder.path(), "weekly").await;
    assert_ne!(other, first, "another key is another job");
    let rows = db.all_rows().await;
    assert_eq!(rows.len(), 2, "{rows:?}");

    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let rows = db.until_all_finished(WAIT).await;
    replica.shutdown().await;
    assert!(
        rows.iter().all(|row| row.status == Status::Done),
        "{rows:?}"
    );

    let (next, said) = enqueue(&db, folder.path(), "nightly").await;
    assert!(next != first && !said.contains("skipped"), "{next}: {said}");
    let rows = with_key(&db, "nightly").await;
    let statuses: Vec<(i64, Status)> = rows.iter().map(|row| (row.id, row.status)).collect();
    assert_eq!(statuses, [(first, Status::Done), (next, Status::New)]);
}

/// The migrations as they stood before unique jobs, read from the migrations folder.
async fn migrations_before_unique_jobs(db: &TestDb) -> sqlx::migrate::Migrator {
    let dialect = match db.backend {
        Backend::Postgres => "postgres",
        Backend::Mysql => "mysql",
        Backend::Sqlite => "sqlite",
    };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let folder = tempfile::tempdir().expect("folder");
    for entry in std::fs::read_dir(&source).expect("migrations folder") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "20261204000001" {
            std::fs::copy(&path, folder.path().join(&name)).expect("copy");
        }
    }
    let mut migrator = sqlx::migrate::Migrator::new(folder.path())
        .await
        .expect("migrations read");
    // MariaDB refuses sqlx's lock, which waits forever; nothing races here.
    migrator.set_locking(false);
    migrator
}

/// A table in use before the migration: its rows keep working, they hold no key, and unique
/// jobs work from then on.
async fn a_row_from_before_the_migration_keeps_working(db: TestDb) {
    crate::reliability::empty(&db).await;
    if let Some(file) = db.url.strip_prefix("sqlite://") {
        // An empty file is an empty database; the raw connection does not create one.
        std::fs::File::create(file).expect("database file");
    }
    let pool = db.sql().await;
    migrations_before_unique_jobs(&db)
        .await
        .run(&pool)
        .await
        .expect("the earlier migrations apply");
    sqlx::query("INSERT INTO jobs (object_id, sleep) VALUES (1, 1000000), (2, 1000000)")
        .execute(&pool)
        .await
        .expect("an insert as before");
    sqlx::query("UPDATE jobs SET status = 'PAUSED' WHERE object_id = 2")
        .execute(&pool)
        .await
        .expect("a paused job");
    pool.close().await;

    let store = db.store().await;
    store
        .migrate()
        .await
        .expect("the unique-jobs migration applies");
    let before = db.all_rows().await;
    assert_eq!(before.len(), 2);
    assert!(
        before.iter().all(|row| row.unique_key.is_none()),
        "{before:?}"
    );

    db.exec(&insert_sql("k")).await.expect("a unique job");
    refused(&db, "k", "after the migration").await;
    db.exec(&format!(
        "UPDATE jobs SET control = 'resume' WHERE id = {}",
        before[1].id
    ))
    .await
    .expect("resume");
    let replica = Replica::start(&db, db.config(), Handlers::default()).await;
    let rows = db.until_all_finished(WAIT).await;
    replica.shutdown().await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|row| row.status == Status::Done),
        "{rows:?}"
    );
    assert_eq!(rows[2].unique_key.as_deref(), Some("k"));
    db.exec(&insert_sql("k"))
        .await
        .expect("the key is free once DONE");
}
