//! Recurring jobs on every backend, with real `jobsd run` processes: exactly one job per slot
//! across replicas that come and go, catch-up after a full stop, bad schedules marked in words
//! while the rest run on, and the `jobsd schedule` commands. Everything is read back from the
//! database.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use jobsd::store::{ScheduleRow, Store};
use tokio::time::Instant;

use crate::common::TestDb;
use crate::reliability::processes::{Jobsd, Launcher};

crate::on_every_backend!(
    replicas_insert_exactly_one_job_per_slot,
    catch_up_latest_inserts_only_the_latest_missed_slot,
    catch_up_none_inserts_no_missed_slot,
    catch_up_all_inserts_every_missed_slot,
    bad_schedules_are_marked_in_words_and_the_rest_run_on,
    jobsd_schedule_adds_lists_pauses_resumes_and_removes,
    a_schedule_time_no_replica_can_hold_is_refused,
);

/// How long a process may take to start and make its first pass.
const STARTUP: Duration = Duration::from_secs(30);

/// How long a SIGTERMed process may take to exit.
const EXIT: Duration = Duration::from_secs(30);

const POLL: &str = "200ms";

/// The schedules loop's own rule for the test's poll interval: a slot found later than twice
/// the interval and a second after it came due was missed.
const LATE: TimeDelta = TimeDelta::milliseconds(1400);

const SETTINGS: &[(&str, &str)] = &[
    ("JOBSD_POLL_INTERVAL", POLL),
    ("JOBSD_CONTROL_INTERVAL", POLL),
    ("JOBSD_DEAD_AFTER", "10s"),
];

/// Every two seconds.
const EVERY_TWO_SECONDS: &str = "*/2 * * * * *";

async fn exec(db: &TestDb, statement: &str) {
    db.exec(statement)
        .await
        .unwrap_or_else(|error| panic!("{statement}: {error}"));
}

/// Adds schedule `name` with plain SQL, as a user would.
async fn add(db: &TestDb, name: &str, cron: &str, timezone: &str, catch_up: &str) {
    exec(
        db,
        &format!(
            "INSERT INTO schedules (name, cron, timezone, sleep, catch_up) \
             VALUES ('{name}', '{cron}', '{timezone}', 1000000, '{catch_up}')"
        ),
    )
    .await;
}

/// The slots of schedule `name`'s jobs, each with how many jobs it has and when the first was
/// inserted.
async fn slots(
    store: &Arc<dyn Store>,
    name: &str,
) -> BTreeMap<DateTime<Utc>, (usize, DateTime<Utc>)> {
    let rows = store.rows(&[], 1_000_000).await.expect("rows read back");
    let mut slots: BTreeMap<DateTime<Utc>, (usize, DateTime<Utc>)> = BTreeMap::new();
    for row in rows {
        if row.schedule.as_deref() != Some(name) {
            continue;
        }
        let slot = row.scheduled_for.expect("a scheduled job has its slot");
        let entry = slots.entry(slot).or_insert((0, row.created_at));
        entry.0 += 1;
        entry.1 = entry.1.min(row.created_at);
    }
    slots
}

async fn schedule(store: &Arc<dyn Store>, name: &str) -> ScheduleRow {
    store
        .schedules()
        .await
        .expect("schedules read back")
        .into_iter()
        .find(|row| row.name == name)
        .unwrap_or_else(|| panic!("schedule {name} is in the table"))
}

/// Waits until schedule `name` has at least `count` jobs, or panics after `limit`.
async fn until_jobs(store: &Arc<dyn Store>, name: &str, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let found = slots(store, name).await.len();
        if found >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "schedule {name} has {found} jobs after {limit:?}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn started(launcher: &Launcher, prefix: &str) -> Jobsd {
    let mut replica = launcher.start(prefix);
    replica.ready(STARTUP).await;
    replica
}

/// Slots every two seconds, one job each, none missing from the first to the last.
fn assert_every_slot_once(slots: &BTreeMap<DateTime<Utc>, (usize, DateTime<Utc>)>) {
    for (slot, (jobs, _)) in slots {
        assert_eq!(*jobs, 1, "slot {slot} has {jobs} jobs");
        assert_eq!(slot.nanosecond(), 0, "slot {slot} is a whole second");
        assert_eq!(slot.second() % 2, 0, "slot {slot} is an even second");
    }
    let times: Vec<&DateTime<Utc>> = slots.keys().collect();
    for pair in times.windows(2) {
        assert_eq!(
            *pair[1] - *pair[0],
            TimeDelta::seconds(2),
            "no slot is missing between {} and {}: {times:?}",
            pair[0],
            pair[1]
        );
    }
}

async fn replicas_insert_exactly_one_job_per_slot(db: TestDb) {
    let store = db.store().await;
    add(&db, "tick", EVERY_TWO_SECONDS, "UTC", "latest").await;
    let launcher = Launcher::new(&db, SETTINGS);
    let began = Instant::now();
    let mut a = started(&launcher, "a").await;
    let mut b = started(&launcher, "b").await;
    let mut c = started(&launcher, "c").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut d = started(&launcher, "d").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.kill().await;
    let run_for = Duration::from_secs(22);
    tokio::time::sleep(run_for.saturating_sub(began.elapsed())).await;
    for replica in [&mut a, &mut c, &mut d] {
        replica.assert_running();
    }
    for replica in [&mut a, &mut c, &mut d] {
        replica.stop(EXIT).await;
    }
    let slots = slots(&store, "tick").await;
    assert!(slots.len() >= 9, "a slot every 2 s for 20 s: {slots:?}");
    assert_every_slot_once(&slots);
    let row = schedule(&store, "tick").await;
    assert_eq!(row.last_run_at, slots.keys().next_back().copied());
    assert!(row.error.is_none(), "{:?}", row.error);
    for replica in [&a, &b, &c, &d] {
        let log = replica.log();
        assert!(
            !log.contains("uplicate") && !log.contains("database error"),
            "{} logged no error:\n{}",
            replica.name,
            replica.tail()
        );
    }
}

/// Runs schedule `tick` with `catch_up`, stops every replica for 9 s, starts one again, and
/// returns the slot of the last job before the stop, when the first job after it was inserted,
/// and every slot's jobs.
async fn stop_for_nine_seconds(
    db: &TestDb,
    catch_up: &str,
) -> (
    DateTime<Utc>,
    DateTime<Utc>,
    BTreeMap<DateTime<Utc>, (usize, DateTime<Utc>)>,
) {
    let store = db.store().await;
    add(db, "tick", EVERY_TWO_SECONDS, "UTC", catch_up).await;
    let launcher = Launcher::new(db, SETTINGS);
    let mut first = started(&launcher, "a").await;
    until_jobs(&store, "tick", 2, Duration::from_secs(20)).await;
    first.stop(EXIT).await;
    let before = slots(&store, "tick").await;
    let last_before = *before.keys().next_back().expect("jobs before the stop");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut second = started(&launcher, "b").await;
    // Until a job after the stop, and two slots more on time.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = slots(&store, "tick").await;
        if now.range(last_before..).count() > 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no job after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    second.stop(EXIT).await;
    let slots = slots(&store, "tick").await;
    let back = slots
        .range(last_before + TimeDelta::seconds(1)..)
        .map(|(_, (_, created))| *created)
        .min()
        .expect("jobs after the restart");
    for (slot, (jobs, _)) in &slots {
        assert_eq!(*jobs, 1, "slot {slot} has {jobs} jobs");
    }
    (last_before, back, slots)
}

/// The slots every two seconds after `after` that were surely missed when the first replica
/// came back at `back`: older than the loop's `LATE`, with a margin for the pass's own time.
fn missed(after: DateTime<Utc>, back: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let until = back - LATE - TimeDelta::milliseconds(300);
    let mut slot = after + TimeDelta::seconds(2);
    let mut missed = Vec::new();
    while slot <= until {
        missed.push(slot);
        slot += TimeDelta::seconds(2);
    }
    assert!(missed.len() >= 2, "a 9 s stop misses slots: {missed:?}");
    missed
}

async fn catch_up_latest_inserts_only_the_latest_missed_slot(db: TestDb) {
    let (last_before, back, slots) = stop_for_nine_seconds(&db, "latest").await;
    let missed = missed(last_before, back);
    let latest = *missed.last().expect("missed slots");
    let inserted: Vec<_> = missed
        .iter()
        .filter(|slot| slots.contains_key(slot))
        .collect();
    assert!(
        inserted.is_empty() || inserted == [&latest],
        "of the missed slots {missed:?}, only the latest may have a job: {inserted:?}"
    );
    // The first job after the stop is the latest missed slot: none for any slot before it.
    let first_after = *slots
        .range(last_before + TimeDelta::seconds(1)..)
        .next()
        .expect("a job after the stop")
        .0;
    assert!(
        first_after >= latest && first_after <= back - LATE,
        "the first job after the stop ({first_after}) is for the latest slot missed before {back}"
    );
    // From there on, every slot once.
    let after: BTreeMap<_, _> = slots
        .range(first_after..)
        .map(|(slot, jobs)| (*slot, *jobs))
        .collect();
    assert_every_slot_once(&after);
}

async fn catch_up_none_inserts_no_missed_slot(db: TestDb) {
    let (last_before, back, slots) = stop_for_nine_seconds(&db, "none").await;
    let missed = missed(last_before, back);
    let inserted: Vec<_> = missed
        .iter()
        .filter(|slot| slots.contains_key(slot))
        .collect();
    assert!(
        inserted.is_empty(),
        "no missed slot {missed:?} has a job: {inserted:?}"
    );
    let first_after = *slots
        .range(last_before + TimeDelta::seconds(1)..)
        .next()
        .expect("a job after the stop")
        .0;
    assert!(first_after > back - LATE - TimeDelta::seconds(1));
    let after: BTreeMap<_, _> = slots
        .range(first_after..)
        .map(|(slot, jobs)| (*slot, *jobs))
        .collect();
    assert_every_slot_once(&after);
}

async fn catch_up_all_inserts_every_missed_slot(db: TestDb) {
    let (last_before, back, slots) = stop_for_nine_seconds(&db, "all").await;
    let missed = missed(last_before, back);
    for slot in &missed {
        assert!(slots.contains_key(slot), "missed slot {slot} has its job");
    }
    // Every slot once, from the first before the stop to the last after it.
    assert_every_slot_once(&slots);
}

async fn bad_schedules_are_marked_in_words_and_the_rest_run_on(db: TestDb) {
    let store = db.store().await;
    add(&db, "tick", EVERY_TWO_SECONDS, "UTC", "latest").await;
    add(&db, "bad_cron", "61 * * * *", "UTC", "latest").await;
    add(
        &db,
        "bad_zone",
        "* * * * * *",
        "Mars/Olympus_Mons",
        "latest",
    )
    .await;
    let launcher = Launcher::new(&db, SETTINGS);
    let mut replica = started(&launcher, "a").await;
    until_jobs(&store, "tick", 3, Duration::from_secs(20)).await;
    replica.assert_running();
    let bad_cron = schedule(&store, "bad_cron").await;
    let error = bad_cron.error.expect("a bad cron is marked");
    assert!(error.starts_with("bad cron \"61 * * * *\""), "{error}");
    let bad_zone = schedule(&store, "bad_zone").await;
    let error = bad_zone.error.expect("a bad timezone is marked");
    assert!(
        error.starts_with("unknown timezone \"Mars/Olympus_Mons\""),
        "{error}"
    );
    assert!(slots(&store, "bad_cron").await.is_empty());
    assert!(slots(&store, "bad_zone").await.is_empty());
    // Logged once each, however many passes met them.
    let log = replica.log();
    for name in ["bad_cron", "bad_zone"] {
        let lines = log
            .lines()
            .filter(|line| line.contains("schedule skipped") && line.contains(name))
            .count();
        assert_eq!(lines, 1, "{name} logged once:\n{}", replica.tail());
    }
    // Fixed with plain SQL, it runs, and the mark is gone.
    exec(
        &db,
        "UPDATE schedules SET cron = '*/2 * * * * *' WHERE name = 'bad_cron'",
    )
    .await;
    until_jobs(&store, "bad_cron", 1, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(error) = schedule(&store, "bad_cron").await.error {
        assert!(Instant::now() < deadline, "the mark stays: {error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replica.stop(EXIT).await;
    assert_every_slot_once(&slots(&store, "tick").await);
}

/// `jobsd schedule …` on the test's database; its exit code, stdout and stderr.
async fn jobsd_schedule(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let folder = tempfile::tempdir().expect("folder");
    let mut command = crate::common::bare_jobsd(folder.path());
    command
        .arg("schedule")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("jobsd exits within a minute")
        .expect("jobsd starts");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn jobsd_schedule_adds_lists_pauses_resumes_and_removes(db: TestDb) {
    let store = db.store().await;
    let (code, _, stderr) = jobsd_schedule(
        &db,
        &[
            "add",
            "nightly",
            "30 2 * * *",
            "sleep",
            "--sleep",
            "1000",
            "--timezone",
            "Europe/Berlin",
            "--catch-up",
            "none",
            "--priority",
            "-3",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let row = schedule(&store, "nightly").await;
    assert_eq!(
        (
            row.cron.as_str(),
            row.timezone.as_str(),
            row.catch_up.as_str()
        ),
        ("30 2 * * *", "Europe/Berlin", "none")
    );
    assert_eq!(
        (row.kind.as_str(), row.sleep, row.priority),
        ("sleep", Some(1000), -3)
    );
    assert_eq!(row.paused, 0);

    // The next slot: 02:30 in Berlin is 00:30 or 01:30 UTC.
    let (code, list, stderr) = jobsd_schedule(&db, &["list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let line = list
        .lines()
        .find(|line| line.contains("nightly"))
        .unwrap_or_else(|| panic!("nightly is listed:\n{list}"));
    assert!(
        line.contains(":30:00 UTC") && line.contains("Europe/Berlin"),
        "the next slot is listed: {line}"
    );

    let (code, _, stderr) = jobsd_schedule(&db, &["pause", "nightly"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(schedule(&store, "nightly").await.paused, 1);
    let (code, _, stderr) = jobsd_schedule(&db, &["resume", "nightly"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(schedule(&store, "nightly").await.paused, 0);

    // A bad cron or timezone is refused in one line, exit 2, and nothing is written.
    let (code, _, stderr) = jobsd_schedule(&db, &["add", "broken", "61 * * * *", "sleep"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad cron"), "{stderr}");
    let (code, _, stderr) = jobsd_schedule(
        &db,
        &[
            "add",
            "broken",
            "* * * * *",
            "sleep",
            "--timezone",
            "Nowhere/Town",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown timezone"), "{stderr}");
    let names: Vec<String> = store
        .schedules()
        .await
        .expect("schedules read back")
        .into_iter()
        .map(|row| row.name)
        .collect();
    assert_eq!(names, ["nightly"]);

    let (code, _, stderr) = jobsd_schedule(&db, &["remove", "nightly"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(store.schedules().await.expect("schedules").is_empty());
    let (code, _, stderr) = jobsd_schedule(&db, &["remove", "nightly"]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no schedule"), "{stderr}");
}

/// A schedule's times (`created_at`, `next_run_at`, `last_run_at`) take only a time from 1970
/// to 9999 on every database, the same schema everywhere: PostgreSQL's CHECK, MySQL's
/// TIMESTAMP columns, SQLite's checks and triggers. A time in range is taken.
async fn a_schedule_time_no_replica_can_hold_is_refused(db: TestDb) {
    add(&db, "nightly", "0 3 * * *", "UTC", "latest").await;
    for column in ["created_at", "next_run_at", "last_run_at"] {
        // With microseconds, the spelling SQLite's checks ask for: refused for the range.
        let bad_times = [
            "'0500-01-01 00:00:00.000000'",
            "'1969-12-31 23:59:59.000000'",
            "'soon'",
        ];
        for bad in bad_times {
            let refused = db
                .exec(&format!(
                    "UPDATE schedules SET {column} = {bad} WHERE name = 'nightly'"
                ))
                .await;
            assert!(refused.is_err(), "{column} {bad} was taken");
            let refused = db
                .exec(&format!(
                    "INSERT INTO schedules (name, cron, timezone, sleep, {column}) \
                     VALUES ('other', '0 3 * * *', 'UTC', 0, {bad})"
                ))
                .await;
            assert!(refused.is_err(), "{column} {bad} was taken at INSERT");
        }
        // In jobsd's own spelling, with microseconds, which SQLite's checks ask for.
        let taken = db
            .exec(&format!(
                "UPDATE schedules SET {column} = '2030-01-01 00:00:00.000000' WHERE name = 'nightly'"
            ))
            .await
            .expect("a time in range");
        assert_eq!(taken, 1, "{column}");
    }
}
