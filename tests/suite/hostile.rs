//! Hostile rows (DESIGN §9): anyone who may INSERT into `jobs` can write any value the column
//! types allow, and no such row may stop, stall or crash a replica, block other rows, or take
//! more than `max_payload_bytes` of memory. Each test writes rows with plain SQL, as a user at a
//! SQL prompt would, beside good rows (`sleep` jobs of 1 ms), and reads every verdict back from
//! the database:
//!
//! - a good row ends DONE within seconds, whatever sits beside it;
//! - a hostile row is refused by the database at INSERT (recorded), or ends in a terminal status,
//!   or stays in a state the contract defines for it (a `run_at` in the future waits NEW, a
//!   requested pause stays PAUSED, an endless `sleep` runs on a live replica);
//! - a FAILED or CANCELLED row says why, in words;
//! - the daemon is still up at the end, exits cleanly on SIGTERM, and its peak resident memory
//!   stays bounded.
//!
//! First a property test with random hostile rows (also on a SQLite table written before its
//! type triggers, whose odd rows the database no longer refuses), then the cases of a user's
//! report, each on its own.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner};
use sqlx::{AnyPool, Row as _};
use tokio::time::Instant;

use crate::common::{Backend, Replica, TestDb};
use crate::reliability::processes::{Jobsd, Launcher};

crate::on_every_backend!(
    random_hostile_rows_never_stop_jam_or_crash_the_daemon,
    a_failure_reason_with_a_nul_byte_is_cleaned_and_stored,
    attempts_at_their_maximum_do_not_jam_the_claim,
    ghost_rows_with_pause_or_resume_do_not_hold_up_a_terminate,
    a_thousand_pending_resumes_do_not_hide_a_terminate,
    twenty_megabyte_payloads_fail_without_being_loaded,
);

/// The cases of the user's report that only one backend's types allow.
mod only {
    use super::{
        a_seventy_thousand_character_reason_is_shortened_and_stored,
        a_text_sleep_fails_in_words_and_status_still_prints,
        random_hostile_rows_written_before_the_type_triggers,
        rows_written_before_the_type_triggers_fail_in_words,
        values_of_the_wrong_storage_class_are_refused_or_fail_in_words,
    };

    crate::on_backend!(
        Sqlite,
        sqlite: a_text_sleep_fails_in_words_and_status_still_prints,
        values_of_the_wrong_storage_class_are_refused_or_fail_in_words,
    );
    crate::on_backend!(
        Sqlite,
        sqlite_before_triggers: random_hostile_rows_written_before_the_type_triggers,
        rows_written_before_the_type_triggers_fail_in_words,
    );
    crate::on_backend!(
        Mysql,
        mysql: a_seventy_thousand_character_reason_is_shortened_and_stored
    );
}

/// How long a process may take to start and make its first pass on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

/// How long a SIGTERMed process may take to exit: its shutdown grace plus a wide margin.
const EXIT: Duration = Duration::from_secs(30);

/// How long good rows (and the hostile rows beside them) may take to reach their end.
const SETTLE: Duration = Duration::from_secs(20);

/// How soon a terminate must apply: `control_interval` is 100 ms here; the rest is margin for
/// a small shared machine.
const TERMINATE_WITHIN: Duration = Duration::from_secs(5);

/// A good row's sleep: 1 ms.
const GOOD_SLEEP: i64 = 1_000_000;

/// `max_payload_bytes`' default, 1 MiB.
const MAX_PAYLOAD: usize = 1024 * 1024;

/// Settings of the `jobsd run` processes: short intervals, no rate limit, defaults otherwise.
const SETTINGS: &[(&str, &str)] = &[
    ("JOBSD_POLL_INTERVAL", "100ms"),
    ("JOBSD_CONTROL_INTERVAL", "100ms"),
    ("JOBSD_DEAD_AFTER", "1s"),
    ("JOBSD_RATE_PER_SECOND", "0"),
    ("JOBSD_RETRY_BACKOFF", "100ms"),
    ("JOBSD_SHUTDOWN_GRACE", "1s"),
];

/// The worker prefix of the `jobsd run` processes; no hostile row names a worker like it.
const PREFIX: &str = "hostile";

// === Values as SQL ===

/// A value a user writes into a column, spelt in each backend's SQL.
#[derive(Clone, PartialEq)]
enum Lit {
    Null,
    Int(i64),
    Real(f64),
    /// Text made of pieces, so that NUL characters and long runs are built by the server: the
    /// statement stays small, and the test never holds the big value itself.
    Text(Vec<Piece>),
    /// Bytes, as a blob (SQLite only: its columns take any storage class).
    Blob(&'static [u8]),
}

#[derive(Clone, PartialEq)]
enum Piece {
    Plain(String),
    Nul,
    /// `n` copies of a character.
    Run(char, usize),
}

impl Lit {
    fn text(text: &str) -> Lit {
        Lit::Text(vec![Piece::Plain(text.to_owned())])
    }

    /// The text if it is plain text, without NULs or runs.
    fn plain(&self) -> Option<&str> {
        match self {
            Lit::Text(pieces) => match pieces.as_slice() {
                [Piece::Plain(text)] => Some(text),
                _ => None,
            },
            _ => None,
        }
    }

    /// The length of a text in bytes; 0 for anything else.
    fn text_len(&self) -> usize {
        match self {
            Lit::Text(pieces) => pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Plain(text) => text.len(),
                    Piece::Nul => 1,
                    Piece::Run(c, n) => c.len_utf8() * n,
                })
                .sum(),
            _ => 0,
        }
    }

    fn sql(&self, backend: Backend) -> String {
        match self {
            Lit::Null => "NULL".to_owned(),
            Lit::Int(n) => n.to_string(),
            Lit::Real(x) => format!("{x:?}"),
            Lit::Blob(bytes) => {
                assert_eq!(backend, Backend::Sqlite, "blobs only on SQLite");
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("x'{hex}'")
            }
            Lit::Text(pieces) => {
                let parts: Vec<String> = pieces.iter().map(|piece| piece.sql(backend)).collect();
                match (backend, parts.len()) {
                    (_, 1) => parts[0].clone(),
                    (Backend::Mysql, _) => format!("CONCAT({})", parts.join(", ")),
                    _ => format!("({})", parts.join(" || ")),
                }
            }
        }
    }
}

impl Piece {
    fn sql(&self, backend: Backend) -> String {
        match (self, backend) {
            (Piece::Plain(text), Backend::Mysql) => {
                // MariaDB reads backslashes in literals as escapes.
                format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
            }
            (Piece::Plain(text), _) => format!("'{}'", text.replace('\'', "''")),
            // PostgreSQL refuses it, as it refuses a NUL in any text: the INSERT fails.
            (Piece::Nul, Backend::Postgres) => "chr(0)".to_owned(),
            (Piece::Nul, Backend::Mysql) => "CHAR(0 USING utf8mb4)".to_owned(),
            (Piece::Nul, Backend::Sqlite) => "char(0)".to_owned(),
            (Piece::Run(c, n), Backend::Postgres) => format!("repeat('{c}', {n})"),
            (Piece::Run(c, n), Backend::Mysql) => format!("REPEAT('{c}', {n})"),
            // hex(zeroblob(n)) is n times "00".
            (Piece::Run(c, n), Backend::Sqlite) => {
                format!("replace(hex(zeroblob({n})), '00', '{c}')")
            }
        }
    }
}

impl fmt::Debug for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::Null => f.write_str("NULL"),
            Lit::Int(n) => write!(f, "{n}"),
            Lit::Real(x) => write!(f, "{x:?}"),
            Lit::Blob(bytes) => write!(f, "blob {bytes:02x?}"),
            Lit::Text(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Plain(text) if text.chars().count() > 40 => {
                            let head: String = text.chars().take(40).collect();
                            write!(f, "{head:?}…")?;
                        }
                        Piece::Plain(text) => write!(f, "{text:?}")?,
                        Piece::Nul => f.write_str("NUL")?,
                        Piece::Run(c, n) => write!(f, "{c:?}×{n}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

// === What the test reads back ===

/// The columns of a row that say what became of it.
#[derive(Debug)]
struct Seen {
    status: String,
    last_error: Option<String>,
    worker: Option<String>,
    control: Option<String>,
    /// `run_at` lies in the future.
    delayed: bool,
}

impl Seen {
    fn ours(&self) -> bool {
        self.worker
            .as_deref()
            .and_then(|worker| worker.strip_prefix(PREFIX))
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// `last_error` in words: not empty, with at least one real word in it.
    fn says_why(&self) -> bool {
        self.last_error.as_deref().is_some_and(in_words)
    }
}

fn in_words(text: &str) -> bool {
    text.split(|c: char| !c.is_alphabetic())
        .any(|word| word.chars().count() >= 3)
}

/// Every row, by id, read with plain SQL (not through the daemon's own code, which may not
/// read a hostile row at all).
async fn read_back(backend: Backend, pool: &AnyPool) -> Result<BTreeMap<i64, Seen>, String> {
    let future = match backend {
        Backend::Postgres => "run_at > now()",
        Backend::Mysql => "run_at > NOW(6)",
        Backend::Sqlite => "run_at > strftime('%Y-%m-%d %H:%M:%f', 'now')",
    };
    let sql = format!(
        "SELECT id, status, last_error, worker, control, \
         CAST(CASE WHEN {future} THEN 1 ELSE 0 END AS {}) FROM jobs ORDER BY id",
        if backend == Backend::Mysql {
            "SIGNED"
        } else {
            "BIGINT"
        }
    );
    let rows = sqlx::query(&sql)
        .fetch_all(pool)
        .await
        .map_err(|e| format!("reading the rows back: {e}"))?;
    let mut seen = BTreeMap::new();
    for row in rows {
        let id: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        seen.insert(
            id,
            Seen {
                status: text(&row, 1)?.unwrap_or_default(),
                last_error: text(&row, 2)?,
                worker: text(&row, 3)?,
                control: text(&row, 4)?,
                delayed: row.try_get::<i64, _>(5).map_err(|e| e.to_string())? == 1,
            },
        );
    }
    Ok(seen)
}

/// A text column: through the `Any` driver MariaDB's TEXT arrives as bytes.
fn text(row: &sqlx::any::AnyRow, index: usize) -> Result<Option<String>, String> {
    match row.try_get::<Option<String>, _>(index) {
        Ok(text) => Ok(text),
        Err(_) => row
            .try_get::<Option<Vec<u8>>, _>(index)
            .map(|bytes| bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| format!("column {index}: {e}")),
    }
}

/// Inserts one row with plain SQL, and returns its id or the database's refusal.
async fn insert_one(
    pool: &AnyPool,
    backend: Backend,
    columns: &BTreeMap<&'static str, Lit>,
) -> Result<i64, String> {
    let names: Vec<&str> = columns.keys().copied().collect();
    let values: Vec<String> = columns.values().map(|lit| lit.sql(backend)).collect();
    let sql = format!(
        "INSERT INTO jobs ({}) VALUES ({})",
        names.join(", "),
        values.join(", ")
    );
    sqlx::raw_sql(&sql)
        .execute(pool)
        .await
        .map_err(|e| first_line(&e.to_string()))?;
    // One writer: the newest id is this row's.
    sqlx::query_scalar::<_, i64>("SELECT MAX(id) FROM jobs")
        .fetch_one(pool)
        .await
        .map_err(|e| format!("reading the new id: {e}"))
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

/// A good row: kind `sleep`, 1 ms.
fn good(object_id: i64) -> BTreeMap<&'static str, Lit> {
    BTreeMap::from([
        ("kind", Lit::text("sleep")),
        ("sleep", Lit::Int(GOOD_SLEEP)),
        ("object_id", Lit::Int(object_id)),
    ])
}

/// Polls until every row in `ids` is DONE, FAILED or CANCELLED, and returns them all.
async fn until_finished(
    db: &TestDb,
    pool: &AnyPool,
    ids: &[i64],
    limit: Duration,
) -> BTreeMap<i64, Seen> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = read_back(db.backend, pool).await.expect("rows read back");
        let open: Vec<String> = ids
            .iter()
            .filter(|id| {
                !seen.get(id).is_some_and(|row| {
                    matches!(row.status.as_str(), "DONE" | "FAILED" | "CANCELLED")
                })
            })
            .map(|id| format!("job {id}: {:?}", seen.get(id)))
            .collect();
        if open.is_empty() {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}: after {limit:?}, jobs still unfinished:\n{}",
            db.backend,
            open.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_done(seen: &BTreeMap<i64, Seen>, id: i64) {
    let row = &seen[&id];
    assert_eq!(row.status, "DONE", "good job {id} ends DONE: {row:?}");
}

/// FAILED, with a reason in words that contains every one of `words`.
fn assert_failed_saying(seen: &BTreeMap<i64, Seen>, id: i64, words: &[&str]) {
    let row = &seen[&id];
    let error = row.last_error.as_deref().unwrap_or_default().to_lowercase();
    assert!(
        row.status == "FAILED"
            && row.says_why()
            && words.iter().all(|w| error.contains(&w.to_lowercase())),
        "job {id} ends FAILED saying why ({words:?}): {row:?}"
    );
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(daemon: &Jobsd) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

async fn start_daemon(launcher: &Launcher) -> Jobsd {
    let mut daemon = launcher.start(PREFIX);
    daemon.ready(STARTUP).await;
    daemon
}

// === 1. Random hostile rows beside good ones ===

/// Cases per backend unless `PROPTEST_CASES` says otherwise: each starts a process and waits
/// for its rows, a few seconds.
const CASES: u32 = 16;

/// Shrinking steps unless `PROPTEST_MAX_SHRINK_ITERS` says otherwise: each is a whole case.
const SHRINK_ITERS: u32 = 16;

/// How long shrinking may go on unless `PROPTEST_MAX_SHRINK_TIME` (ms) says otherwise: a
/// failing case costs the whole [`SETTLE`] wait.
const SHRINK_MILLIS: u32 = 60_000;

/// How much the daemon's peak resident memory may grow over its idle peak in one case. A case
/// holds up to a few dozen rows, several of them 2 MB over `max_payload_bytes`: those must never
/// be loaded. On SQLite the database's own write of such a row (the claim, the outcome)
/// rewrites its whole record inside the daemon's process, a few MB each.
fn random_growth_kib(backend: Backend) -> u64 {
    match backend {
        Backend::Sqlite => 40 * 1024,
        Backend::Postgres | Backend::Mysql => 24 * 1024,
    }
}

/// A change to a good row that makes it hostile: one or two columns, and what it is called.
#[derive(Clone)]
struct Set {
    what: &'static str,
    columns: Vec<(&'static str, Lit)>,
}

impl fmt::Debug for Set {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
}

fn set(what: &'static str, column: &'static str, value: Lit) -> Set {
    Set {
        what,
        columns: vec![(column, value)],
    }
}

/// Every hostile value this backend's column types allow (and a few they refuse, to record
/// the refusal).
fn catalog(backend: Backend) -> Vec<Set> {
    use Piece::{Nul, Plain, Run};
    let sqlite = backend == Backend::Sqlite;
    let plain = |text: &str| Plain(text.to_owned());
    let oversized = || Lit::Text(vec![plain("\""), Run('x', 2 * MAX_PAYLOAD), plain("\"")]);
    let deep = || Lit::Text(vec![Run('[', 100_000), Run(']', 100_000)]);
    let mut all = vec![
        // kind
        set("kind ''", "kind", Lit::text("")),
        set("kind unknown", "kind", Lit::text("no_such_kind")),
        set("kind 10 KB", "kind", Lit::Text(vec![Run('k', 10 * 1024)])),
        set("kind unicode", "kind", Lit::text("ünïcødé ✓ 🦀")),
        set(
            "kind with NUL",
            "kind",
            Lit::Text(vec![plain("sle"), Nul, plain("ep")]),
        ),
        // object_id
        set("object_id i64::MIN", "object_id", Lit::Int(i64::MIN)),
        set("object_id i64::MAX", "object_id", Lit::Int(i64::MAX)),
        // sleep
        set("sleep -1", "sleep", Lit::Int(-1)),
        set("sleep i64::MIN", "sleep", Lit::Int(i64::MIN)),
        set("sleep 0", "sleep", Lit::Int(0)),
        set("sleep i64::MAX", "sleep", Lit::Int(i64::MAX)),
        Set {
            what: "sleep NULL, kind csv_export",
            columns: vec![("kind", Lit::text("csv_export")), ("sleep", Lit::Null)],
        },
        // payload
        set("payload ''", "payload", Lit::text("")),
        set("payload not JSON", "payload", Lit::text("not json {")),
        set("payload nested 100000 deep", "payload", deep()),
        set("payload 2 MiB over the limit", "payload", oversized()),
        set("payload unicode", "payload", Lit::text("\"ünïcødé ✓ 🦀\"")),
        set(
            "payload with NUL",
            "payload",
            Lit::Text(vec![plain("\"a"), Nul, plain("b\"")]),
        ),
        set(
            "payload JSON \\u0000",
            "payload",
            Lit::text(r#""a\u0000b""#),
        ),
        set("payload an array", "payload", Lit::text("[1, 2, 3]")),
        Set {
            what: "payload of the wrong shape for csv_import",
            columns: vec![
                ("kind", Lit::text("csv_import")),
                ("payload", Lit::text(r#"{"path": 42}"#)),
            ],
        },
        // progress
        set("progress ''", "progress", Lit::text("")),
        set("progress not JSON", "progress", Lit::text("{\"slept_ns\":")),
        set("progress nested 100000 deep", "progress", deep()),
        set("progress 2 MiB over the limit", "progress", oversized()),
        set("progress unicode", "progress", Lit::text("\"ünïcødé ✓\"")),
        set(
            "progress with NUL",
            "progress",
            Lit::Text(vec![plain("{\"slept_ns\": 1"), Nul, plain("}")]),
        ),
        set(
            "progress of the wrong shape",
            "progress",
            Lit::text(r#"{"slept_ns": "soon"}"#),
        ),
        set(
            "progress past the end",
            "progress",
            Lit::text(r#"{"slept_ns": 18446744073709551615}"#),
        ),
        // attempts
        set("attempts 0", "attempts", Lit::Int(0)),
        set(
            "attempts i32::MAX",
            "attempts",
            Lit::Int(i64::from(i32::MAX)),
        ),
        set("attempts 5 > max_attempts", "attempts", Lit::Int(5)),
        set("attempts -1", "attempts", Lit::Int(-1)),
        // max_attempts
        set("max_attempts 1", "max_attempts", Lit::Int(1)),
        set(
            "max_attempts i32::MAX",
            "max_attempts",
            Lit::Int(i64::from(i32::MAX)),
        ),
        set("max_attempts 0", "max_attempts", Lit::Int(0)),
        // status preset, with and without a worker
        set("status RUNNING, no worker", "status", Lit::text("RUNNING")),
        set("status QUEUED, no worker", "status", Lit::text("QUEUED")),
        Set {
            what: "status RUNNING by worker 'ghost'",
            columns: vec![
                ("status", Lit::text("RUNNING")),
                ("worker", Lit::text("ghost")),
            ],
        },
        Set {
            what: "status QUEUED by worker 'ghost'",
            columns: vec![
                ("status", Lit::text("QUEUED")),
                ("worker", Lit::text("ghost")),
            ],
        },
        Set {
            what: "status RUNNING by worker ''",
            columns: vec![("status", Lit::text("RUNNING")), ("worker", Lit::text(""))],
        },
        Set {
            what: "status PAUSED by worker 'ghost'",
            columns: vec![
                ("status", Lit::text("PAUSED")),
                ("worker", Lit::text("ghost")),
            ],
        },
        // control
        set("control pause", "control", Lit::text("pause")),
        set("control resume", "control", Lit::text("resume")),
        set("control terminate", "control", Lit::text("terminate")),
        set("control 'explode'", "control", Lit::text("explode")),
    ];
    let run_at = |what, value: &str| set(what, "run_at", Lit::text(value));
    match backend {
        Backend::Postgres => all.extend([
            run_at("run_at -infinity", "-infinity"),
            run_at("run_at 4713 BC", "4713-01-01 00:00:00+00 BC"),
            run_at("run_at infinity", "infinity"),
            run_at("run_at year 294276", "294276-12-31 23:59:59+00"),
            run_at("run_at year 9999", "9999-12-31 23:59:59+00"),
        ]),
        Backend::Mysql => all.extend([
            run_at("run_at 1970", "1970-01-01 00:00:01"),
            run_at("run_at 2038", "2038-01-19 03:14:07"),
            run_at("run_at zero date", "0000-00-00 00:00:00"),
        ]),
        Backend::Sqlite => all.extend([
            run_at("run_at year 0", "0000-01-01 00:00:00"),
            run_at("run_at year 9998", "9998-12-31 23:59:59"),
            run_at("run_at year 9999", "9999-12-31 23:59:59.999999"),
            run_at("run_at month 13", "2020-13-45 99:99:99"),
            run_at("run_at with a tail", "2020-01-01 00:00:00 and then some"),
        ]),
    }
    if sqlite {
        all.extend([
            set("kind blob", "kind", Lit::Blob(&[0x80, 0xff])),
            set("object_id text", "object_id", Lit::text("abc")),
            set("object_id real", "object_id", Lit::Real(1.5)),
            set("object_id blob", "object_id", Lit::Blob(&[0x00, 0xff])),
            set("sleep text '1s'", "sleep", Lit::text("1s")),
            set("sleep real 1.5", "sleep", Lit::Real(1.5)),
            set("sleep blob", "sleep", Lit::Blob(&[0x01])),
            set("payload blob", "payload", Lit::Blob(&[0x80, 0xff])),
            set("progress blob", "progress", Lit::Blob(&[0x80, 0xff])),
            set("attempts i64::MAX", "attempts", Lit::Int(i64::MAX)),
            set("attempts text", "attempts", Lit::text("abc")),
            set(
                "max_attempts 3000000000",
                "max_attempts",
                Lit::Int(3_000_000_000),
            ),
            set("max_attempts i64::MAX", "max_attempts", Lit::Int(i64::MAX)),
        ]);
    }
    all
}

/// One row of a case.
#[derive(Clone)]
enum Planned {
    Good,
    Hostile(Vec<Set>),
}

impl fmt::Debug for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Planned::Good => f.write_str("good"),
            Planned::Hostile(sets) => f.debug_list().entries(sets).finish(),
        }
    }
}

/// What a case inserts, in order.
struct Case(Vec<Planned>);

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, row) in self.0.iter().enumerate() {
            writeln!(f, "  row {}: {row:?}", n + 1)?;
        }
        Ok(())
    }
}

fn case(backend: Backend) -> impl Strategy<Value = Case> {
    let hostile = prop::collection::vec(prop::sample::select(catalog(backend)), 1..=3)
        .prop_map(Planned::Hostile);
    let row = prop_oneof![1 => Just(Planned::Good), 2 => hostile];
    prop::collection::vec(row, 2..=8).prop_map(|mut rows| {
        // Good rows on both sides, whatever lies between.
        rows.insert(0, Planned::Good);
        rows.push(Planned::Good);
        Case(rows)
    })
}

impl Planned {
    /// The row's columns: a good row, with the hostile changes applied in order.
    fn columns(&self, object_id: i64) -> BTreeMap<&'static str, Lit> {
        let mut columns = good(object_id);
        if let Planned::Hostile(sets) = self {
            for set in sets {
                for (column, value) in &set.columns {
                    columns.insert(column, value.clone());
                }
            }
        }
        columns
    }

    /// Whether the row, as inserted, is where the contract wants it, or must still move.
    fn judge(&self, columns: &BTreeMap<&'static str, Lit>, seen: &Seen) -> Result<(), String> {
        let get = |column: &str| columns.get(column).cloned().unwrap_or(Lit::Null);
        let kind = get("kind");
        let known_kind = matches!(kind.plain(), Some("sleep" | "csv_import" | "csv_export"));
        let oversized =
            get("payload").text_len() > MAX_PAYLOAD || get("progress").text_len() > MAX_PAYLOAD;
        let control = get("control");
        // A sleep job that never ends (NULL hangs; i64::MAX ns is 292 years): it may be found
        // running, on a live replica.
        let endless = kind.plain() == Some("sleep")
            && match get("sleep") {
                Lit::Null => true,
                Lit::Int(nanos) => nanos >= 3_600_000_000_000,
                _ => false,
            };
        let paused_on_request = control.plain() == Some("pause")
            || (get("status").plain() == Some("PAUSED") && control.plain() != Some("resume"));
        match (self, seen.status.as_str()) {
            (Planned::Good, "DONE") => Ok(()),
            (Planned::Good, _) => Err("a good row must end DONE".into()),
            (_, "DONE") if !known_kind => Err("DONE, yet no handler runs this kind".into()),
            (_, "DONE") if oversized => {
                Err("DONE, yet its payload or progress is over max_payload_bytes".into())
            }
            (_, "DONE") => Ok(()),
            (_, "FAILED" | "CANCELLED") if seen.says_why() => Ok(()),
            (_, "FAILED" | "CANCELLED") => Err("finished without a reason in words".into()),
            (_, "NEW") if seen.delayed => Ok(()),
            (_, "PAUSED") if paused_on_request => Ok(()),
            (_, "RUNNING") if endless && seen.ours() => Ok(()),
            (_, _) => Err("not settled: nothing the contract allows keeps it here".into()),
        }
    }
}

/// What the cases saw, for the report: refusals at INSERT by hostile change, and how many
/// hostile rows ended in each status.
#[derive(Default)]
struct Tally {
    refused: BTreeMap<String, String>,
    ended: BTreeMap<String, usize>,
}

type Refusals = Mutex<Tally>;

async fn random_hostile_rows_never_stop_jam_or_crash_the_daemon(db: TestDb) {
    random_hostile_rows(db).await;
}

/// SQLite's triggers refuse values of the wrong storage class, and oversized texts, at
/// INSERT; rows written before those triggers existed are left as they are, and must end
/// FAILED in words when claimed (their migration says so). Here the triggers are dropped, as
/// on a table written before them, and the random rows go in unrefused.
async fn random_hostile_rows_written_before_the_type_triggers(db: TestDb) {
    drop_type_triggers(&db).await;
    random_hostile_rows(db).await;
}

/// Drops SQLite's triggers on `jobs`, as on a table filled before they were created.
async fn drop_type_triggers(db: &TestDb) {
    let pool = db.sql().await;
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'jobs'",
    )
    .fetch_all(&pool)
    .await
    .expect("triggers");
    println!("dropped {} triggers on jobs", triggers.len());
    for trigger in &triggers {
        sqlx::query(&format!("DROP TRIGGER {trigger}"))
            .execute(&pool)
            .await
            .expect("trigger dropped");
    }
    pool.close().await;
}

async fn random_hostile_rows(db: TestDb) {
    let cases = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => ProptestConfig::default().cases,
        None => CASES,
    };
    let max_shrink_iters = match std::env::var_os("PROPTEST_MAX_SHRINK_ITERS") {
        Some(_) => ProptestConfig::default().max_shrink_iters,
        None => SHRINK_ITERS,
    };
    let max_shrink_time = match std::env::var_os("PROPTEST_MAX_SHRINK_TIME") {
        Some(_) => ProptestConfig::default().max_shrink_time,
        None => SHRINK_MILLIS,
    };
    let config = ProptestConfig {
        cases,
        max_shrink_iters,
        max_shrink_time,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let refusals = Refusals::default();
    let handle = tokio::runtime::Handle::current();
    let began = Instant::now();
    let result = tokio::task::block_in_place(|| {
        TestRunner::new(config).run(&case(db.backend), |case| {
            handle
                .block_on(play(&db, &case, &refusals))
                .map_err(TestCaseError::fail)
        })
    });
    let tally = refusals.lock().expect("tally");
    println!(
        "{:?}: {cases} cases (and any shrinking) in {:.1?}; hostile rows ended {:?}; \
         refused at INSERT: {:#?}",
        db.backend,
        began.elapsed(),
        tally.ended,
        tally.refused
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            panic!(
                "{:?}: {reason}\n\nminimal failing case:\n{case:?}",
                db.backend
            )
        }
        Err(TestError::Abort(reason)) => panic!("{reason}"),
    }
}

/// One case: a fresh daemon on an emptied table, the rows inserted one statement each, then
/// every row watched until it is where it may stay.
async fn play(db: &TestDb, case: &Case, refusals: &Refusals) -> Result<(), String> {
    let pool = db.sql().await;
    sqlx::query("DELETE FROM jobs")
        .execute(&pool)
        .await
        .map_err(|e| format!("emptying the table: {e}"))?;
    let launcher = Launcher::new(db, SETTINGS);
    let mut daemon = start_daemon(&launcher).await;
    let idle = peak_rss_kib(&daemon);

    let mut inserted = Vec::new();
    for (n, planned) in case.0.iter().enumerate() {
        let columns = planned.columns(n as i64 + 1);
        match insert_one(&pool, db.backend, &columns).await {
            Ok(id) => inserted.push((id, planned, columns)),
            Err(error) => match planned {
                Planned::Good => return Err(format!("a good row was refused: {error}")),
                Planned::Hostile(_) => {
                    refusals
                        .lock()
                        .expect("tally")
                        .refused
                        .insert(format!("{planned:?}"), error);
                }
            },
        }
    }

    let deadline = Instant::now() + SETTLE;
    let unsettled = loop {
        daemon.assert_running();
        let seen = read_back(db.backend, &pool).await?;
        let unsettled: Vec<String> = inserted
            .iter()
            .filter_map(|(id, planned, columns)| {
                let verdict = match seen.get(id) {
                    Some(row) => planned
                        .judge(columns, row)
                        .map_err(|e| format!("{e}: {row:?}")),
                    None => Err("the row is gone".to_owned()),
                };
                verdict.err().map(|e| format!("job {id} {planned:?}: {e}"))
            })
            .collect();
        if unsettled.is_empty() {
            let mut tally = refusals.lock().expect("tally");
            for (id, planned, _) in &inserted {
                if let (Planned::Hostile(_), Some(row)) = (planned, seen.get(id)) {
                    *tally.ended.entry(row.status.clone()).or_default() += 1;
                }
            }
        }
        if unsettled.is_empty() || Instant::now() >= deadline {
            break unsettled;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemon.assert_running();
    let peak = peak_rss_kib(&daemon);
    pool.close().await;
    if !unsettled.is_empty() {
        return Err(format!(
            "after {SETTLE:?}:\n{}\n{}",
            unsettled.join("\n"),
            daemon.tail()
        ));
    }
    if peak > idle + random_growth_kib(db.backend) {
        return Err(format!(
            "peak resident memory grew from {idle} KiB idle to {peak} KiB"
        ));
    }
    daemon.stop(EXIT).await;
    Ok(())
}

// === 2. The cases of a user's report ===

/// SQLite takes text in an INTEGER column. The user's own statement, beside three good rows:
/// the bad row is refused at INSERT in words (as PostgreSQL and MariaDB refuse it by the
/// column's type) or ends FAILED in words, the good ones run, and `jobsd status` still prints
/// the table.
async fn a_text_sleep_fails_in_words_and_status_still_prints(db: TestDb) {
    let launcher = Launcher::new(&db, SETTINGS);
    let mut daemon = start_daemon(&launcher).await;
    let pool = db.sql().await;
    let mut goods = Vec::new();
    let mut bad = None;
    for statement in [
        "INSERT INTO jobs (sleep) VALUES (1000000)",
        "INSERT INTO jobs (sleep) VALUES ('1s')",
        "INSERT INTO jobs (sleep) VALUES (1000000)",
        "INSERT INTO jobs (sleep) VALUES (1000000)",
    ] {
        let inserted = sqlx::query(statement).execute(&pool).await;
        match (statement.contains("'1s'"), inserted) {
            (false, Ok(_)) => goods.push(max_id(&pool).await),
            (true, Ok(_)) => bad = Some(max_id(&pool).await),
            (true, Err(error)) => {
                println!("refused at INSERT: {statement}: {error}");
                let error = error.to_string();
                assert!(
                    error.contains("sleep") && in_words(&error),
                    "the refusal names the column, in words: {error}"
                );
            }
            (false, Err(error)) => panic!("{statement}: {error}"),
        }
    }
    let all: Vec<i64> = goods.iter().copied().chain(bad).collect();
    let seen = until_finished(&db, &pool, &all, SETTLE).await;
    daemon.assert_running();
    if let Some(id) = bad {
        assert_failed_saying(&seen, id, &["sleep"]);
    }
    for &id in &goods {
        assert_done(&seen, id);
    }

    assert_status_prints(&db, 3, usize::from(bad.is_some())).await;
    pool.close().await;
    daemon.stop(EXIT).await;
}

/// Runs `jobsd status` on the test's database: it exits 0 and prints the table, with a line
/// for each of `done` DONE and `failed` FAILED jobs.
async fn assert_status_prints(db: &TestDb, done: usize, failed: usize) {
    let folder = tempfile::tempdir().expect("temporary folder");
    let output = crate::common::bare_jobsd(folder.path())
        .arg("status")
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("jobsd status answers within 30 s")
        .expect("jobsd status starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "jobsd status exits 0 with hostile rows in the table: {}\n{stdout}\n{stderr}",
        output.status
    );
    // The jobs table comes first; the counts by queue follow a blank line.
    let lines: Vec<&str> = stdout.lines().take_while(|line| !line.is_empty()).collect();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("| status") && line.contains("| last_error")),
        "the table's header:\n{stdout}"
    );
    let cells = |status: &str| {
        lines
            .iter()
            .filter(|line| line.starts_with('|') && line.contains(&format!("| {status} ")))
            .count()
    };
    assert_eq!(
        (cells("DONE"), cells("FAILED")),
        (done, failed),
        "a line for every job:\n{stdout}"
    );
}

/// SQLite takes any storage class in any column: a fraction in `sleep`, a blob `payload`, text
/// in `object_id`, a `max_attempts` past 32 bits. Each is refused at INSERT or fails in words;
/// the good rows beside them run.
async fn values_of_the_wrong_storage_class_are_refused_or_fail_in_words(db: TestDb) {
    let launcher = Launcher::new(&db, SETTINGS);
    let mut daemon = start_daemon(&launcher).await;
    let pool = db.sql().await;
    let bad = [
        ("sleep", "1.5"),
        ("payload", "x'80ff'"),
        ("object_id", "'abc'"),
        ("max_attempts", "3000000000"),
    ];
    let mut goods = Vec::new();
    let mut bads = Vec::new();
    let mut refused = Vec::new();
    for (n, (column, value)) in bad.iter().enumerate() {
        goods.push(insert_good(&pool, n).await);
        let statement = bad_insert(column, value);
        match sqlx::query(&statement).execute(&pool).await {
            Ok(_) => bads.push((max_id(&pool).await, *column)),
            Err(error) => refused.push(format!("{statement}: {error}")),
        }
    }
    let good = format!("INSERT INTO jobs (object_id, sleep) VALUES (99, {GOOD_SLEEP})");
    sqlx::query(&good).execute(&pool).await.expect("good row");
    goods.push(max_id(&pool).await);
    println!("refused at INSERT: {refused:#?}");

    let all: Vec<i64> = goods
        .iter()
        .copied()
        .chain(bads.iter().map(|b| b.0))
        .collect();
    let seen = until_finished(&db, &pool, &all, SETTLE).await;
    daemon.assert_running();
    for &id in &goods {
        assert_done(&seen, id);
    }
    for &(id, column) in &bads {
        assert_failed_saying(&seen, id, &[column]);
    }
    pool.close().await;
    daemon.stop(EXIT).await;
}

/// On a SQLite table written before its type triggers, each value of the wrong storage class
/// (or out of range) sits beside good rows; when claimed, each ends FAILED with a reason that
/// names its column, the good rows run, and `jobsd status` still prints them all. The same
/// values on rows left RUNNING by a worker that is gone are settled by the dead-jobs sweep.
async fn rows_written_before_the_type_triggers_fail_in_words(db: TestDb) {
    drop_type_triggers(&db).await;
    let launcher = Launcher::new(&db, SETTINGS);
    let mut daemon = start_daemon(&launcher).await;
    let pool = db.sql().await;
    let bad = [
        ("sleep", "'1s'"),
        ("sleep", "1.5"),
        ("sleep", "x'01'"),
        ("payload", "x'80ff'"),
        ("progress", "x'80ff'"),
        ("object_id", "'abc'"),
        ("object_id", "x'00ff'"),
        ("kind", "x'80ff'"),
        ("attempts", "'abc'"),
        ("attempts", "9223372036854775807"),
        ("max_attempts", "3000000000"),
        ("max_attempts", "'many'"),
    ];
    let mut goods = Vec::new();
    let mut bads = Vec::new();
    for (n, (column, value)) in bad.iter().enumerate() {
        goods.push(insert_good(&pool, n).await);
        let statement = bad_insert(column, value);
        sqlx::query(&statement)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}, with the triggers dropped: {e}"));
        bads.push((max_id(&pool).await, *column, *value));
    }
    // The same values on rows that claim to run on a worker that is gone: the dead-jobs sweep,
    // not a claim, meets them, and must settle them too.
    let mut dead = Vec::new();
    for (column, value) in [
        ("attempts", "'abc'"),
        ("max_attempts", "3000000000"),
        ("sleep", "'1s'"),
    ] {
        let statement = if column == "sleep" {
            format!("INSERT INTO jobs (status, worker, sleep) VALUES ('RUNNING', 'ghost', {value})")
        } else {
            format!(
                "INSERT INTO jobs (sleep, status, worker, {column}) \
                 VALUES ({GOOD_SLEEP}, 'RUNNING', 'ghost', {value})"
            )
        };
        sqlx::query(&statement)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}, with the triggers dropped: {e}"));
        dead.push((max_id(&pool).await, column, value));
    }
    let good = format!("INSERT INTO jobs (object_id, sleep) VALUES (99, {GOOD_SLEEP})");
    sqlx::query(&good).execute(&pool).await.expect("good row");
    goods.push(max_id(&pool).await);

    let all: Vec<i64> = goods
        .iter()
        .copied()
        .chain(bads.iter().map(|b| b.0))
        .chain(dead.iter().map(|d| d.0))
        .collect();
    let seen = until_finished(&db, &pool, &all, SETTLE).await;
    daemon.assert_running();
    for &id in &goods {
        assert_done(&seen, id);
    }
    for &(id, column, value) in &dead {
        let row = &seen[&id];
        assert!(
            matches!(row.status.as_str(), "FAILED" | "CANCELLED") && row.says_why(),
            "RUNNING on a gone worker, {column} = {value}: settled in words: {row:?}"
        );
    }
    for &(id, column, value) in &bads {
        let row = &seen[&id];
        assert!(
            row.status == "FAILED"
                && row.says_why()
                && row
                    .last_error
                    .as_deref()
                    .unwrap_or_default()
                    .contains(column),
            "{column} = {value}: FAILED, naming the column: {row:?}"
        );
    }
    let failed = bads.len()
        + dead
            .iter()
            .filter(|(id, _, _)| seen[id].status == "FAILED")
            .count();
    assert_status_prints(&db, goods.len(), failed).await;
    pool.close().await;
    daemon.stop(EXIT).await;
}

/// Inserts a good row (object `n`) and returns its id.
async fn insert_good(pool: &AnyPool, n: usize) -> i64 {
    let good = format!("INSERT INTO jobs (object_id, sleep) VALUES ({n}, {GOOD_SLEEP})");
    sqlx::query(&good).execute(pool).await.expect("good row");
    max_id(pool).await
}

/// An INSERT of a sleep job whose `column` is `value`.
fn bad_insert(column: &str, value: &str) -> String {
    if column == "sleep" {
        format!("INSERT INTO jobs (sleep) VALUES ({value})")
    } else {
        format!("INSERT INTO jobs (sleep, {column}) VALUES ({GOOD_SLEEP}, {value})")
    }
}

async fn max_id(pool: &AnyPool) -> i64 {
    sqlx::query_scalar("SELECT MAX(id) FROM jobs")
        .fetch_one(pool)
        .await
        .expect("newest id")
}

/// MariaDB's TEXT holds 65,535 bytes. A `csv_import` names a table of 70,000 characters, so its
/// failure reason, which quotes the name, does not fit: the reason is shortened and stored, and
/// the good jobs beside it (whose outcomes may share its write) end DONE.
async fn a_seventy_thousand_character_reason_is_shortened_and_stored(db: TestDb) {
    let launcher = Launcher::new(&db, SETTINGS);
    let mut daemon = start_daemon(&launcher).await;
    let pool = db.sql().await;
    sqlx::query(&format!(
        "INSERT INTO jobs (object_id, kind, sleep, payload) VALUES \
         (1, 'sleep', {GOOD_SLEEP}, NULL), \
         (2, 'csv_import', NULL, CONCAT('{{\"path\":\"x.csv\",\"table\":\"', REPEAT('a', 70000), '\"}}')), \
         (3, 'sleep', {GOOD_SLEEP}, NULL)"
    ))
    .execute(&pool)
    .await
    .expect("one INSERT of the three jobs");
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY object_id")
        .fetch_all(&pool)
        .await
        .expect("ids");
    let seen = until_finished(&db, &pool, &ids, SETTLE).await;
    daemon.assert_running();
    assert_done(&seen, ids[0]);
    assert_done(&seen, ids[2]);
    assert_failed_saying(&seen, ids[1], &["table"]);
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT CAST(LENGTH(last_error) AS SIGNED) FROM jobs WHERE id = {}",
        ids[1]
    ))
    .fetch_one(&pool)
    .await
    .expect("length of the reason");
    println!("the reason was stored in {stored} bytes");
    assert!(
        stored > 0 && stored <= 65_535,
        "the reason is shortened to fit TEXT: {stored} bytes"
    );
    pool.close().await;
    daemon.stop(EXIT).await;
}

/// A handler whose failure reason carries a NUL byte, as one that quotes its input might.
struct NulReason;

#[async_trait::async_trait]
impl jobsd::Handler for NulReason {
    async fn run(&self, _ctx: &jobsd::JobContext) -> anyhow::Result<()> {
        Err(jobsd::Permanent::new("the input had a\0NUL byte in it").into())
    }
}

/// PostgreSQL's TEXT refuses a NUL byte, so a failure reason carrying one cannot be stored as
/// it is. Two such reasons: a `csv_import` whose path holds a NUL (a JSON `\u0000`; the file
/// cannot be opened and the reason names the path), and a job kind of the user's own whose
/// error carries one. Each ends FAILED with its reason cleaned and stored; the good jobs beside
/// them (whose outcomes may share the write) end DONE. On the other backends a NUL may be
/// stored as it is, and the same must hold.
async fn a_failure_reason_with_a_nul_byte_is_cleaned_and_stored(db: TestDb) {
    let csv_dir = tempfile::tempdir().expect("temporary folder");
    db.exec("CREATE TABLE imported (id INTEGER, name VARCHAR(40))")
        .await
        .expect("table for the import");
    let mut config = db.config();
    config.csv_tables = vec!["imported".into()];
    config.csv_dir = csv_dir.path().to_owned();
    let handlers = jobsd::Handlers::builtin(&config.csv()).register("nul_reason", NulReason);
    let replica = Replica::start(&db, config, handlers).await;
    let payload = Lit::text(r#"{"path": "a\u0000b.csv", "table": "imported"}"#).sql(db.backend);
    let pool = db.sql().await;
    sqlx::query(&format!(
        "INSERT INTO jobs (object_id, kind, sleep, payload) VALUES \
         (1, 'sleep', {GOOD_SLEEP}, NULL), (2, 'csv_import', NULL, {payload}), \
         (3, 'sleep', {GOOD_SLEEP}, NULL), (4, 'nul_reason', NULL, NULL), \
         (5, 'sleep', {GOOD_SLEEP}, NULL)"
    ))
    .execute(&pool)
    .await
    .expect("one INSERT of the five jobs");
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY object_id")
        .fetch_all(&pool)
        .await
        .expect("ids");
    let seen = until_finished(&db, &pool, &ids, SETTLE).await;
    for n in [0, 2, 4] {
        assert_done(&seen, ids[n]);
    }
    assert_failed_saying(&seen, ids[1], &["cannot read"]);
    assert_failed_saying(&seen, ids[3], &["NUL byte"]);
    if db.backend == Backend::Postgres {
        for n in [1, 3] {
            assert!(
                !seen[&ids[n]]
                    .last_error
                    .as_deref()
                    .unwrap_or_default()
                    .contains('\0')
            );
        }
    }
    pool.close().await;
    replica.shutdown().await;
}

/// `attempts` at the column's maximum on a NEW row that may have as many: one more attempt
/// cannot be counted. The row fails in words (or is refused), and it does not take the claim of
/// the good rows beside it down with it.
async fn attempts_at_their_maximum_do_not_jam_the_claim(db: TestDb) {
    let replica = Replica::start(&db, db.config(), jobsd::Handlers::default()).await;
    let pool = db.sql().await;
    let mut goods = Vec::new();
    let mut bad = None;
    for n in 1..=4 {
        let statement = if n == 2 {
            format!(
                "INSERT INTO jobs (object_id, sleep, attempts, max_attempts) \
                 VALUES ({n}, {GOOD_SLEEP}, 2147483647, 2147483647)"
            )
        } else {
            format!("INSERT INTO jobs (object_id, sleep) VALUES ({n}, {GOOD_SLEEP})")
        };
        match sqlx::query(&statement).execute(&pool).await {
            Ok(_) if n == 2 => bad = Some(max_id(&pool).await),
            Ok(_) => goods.push(max_id(&pool).await),
            Err(error) if n == 2 => println!("{:?}: refused at INSERT: {error}", db.backend),
            Err(error) => panic!("{statement}: {error}"),
        }
    }
    let all: Vec<i64> = goods.iter().copied().chain(bad).collect();
    let seen = until_finished(&db, &pool, &all, SETTLE).await;
    for &id in &goods {
        assert_done(&seen, id);
    }
    if let Some(id) = bad {
        assert_failed_saying(&seen, id, &[]);
    }
    pool.close().await;
    replica.shutdown().await;
}

/// Rows that claim to run on a worker that does not exist, and carry a pause or a resume that
/// nobody can carry out, sit before a real running job in the table. A terminate written for
/// that job still applies within seconds.
async fn ghost_rows_with_pause_or_resume_do_not_hold_up_a_terminate(db: TestDb) {
    let replica = Replica::start(&db, db.config(), jobsd::Handlers::default()).await;
    let pool = db.sql().await;
    let mut ghosts = Vec::new();
    for control in ["resume", "pause"] {
        sqlx::query(&format!(
            "INSERT INTO jobs (sleep, status, attempts, worker, control) \
             VALUES ({GOOD_SLEEP}, 'RUNNING', 0, 'ghost', '{control}')"
        ))
        .execute(&pool)
        .await
        .expect("ghost row");
        ghosts.push((max_id(&pool).await, control));
    }
    sqlx::query("INSERT INTO jobs (sleep) VALUES (60000000000)")
        .execute(&pool)
        .await
        .expect("long job");
    let long = max_id(&pool).await;
    sqlx::query(&format!("INSERT INTO jobs (sleep) VALUES ({GOOD_SLEEP})"))
        .execute(&pool)
        .await
        .expect("good job");
    let good = max_id(&pool).await;
    terminate_when_running(&db, &pool, long).await;
    let seen = until_finished(&db, &pool, &[good], SETTLE).await;
    assert_done(&seen, good);

    // The ghosts' worker never vouches for them: they are dead (DESIGN §3) and settled like any
    // dead job, here run again (an attempt remains) and so finished. A pause still pending
    // when the row is back to NEW may hold it PAUSED instead, as the user asked.
    let deadline = Instant::now() + SETTLE;
    loop {
        let seen = read_back(db.backend, &pool).await.expect("rows read back");
        let stuck: Vec<(&i64, &Seen)> = ghosts
            .iter()
            .map(|(id, control)| (id, &seen[id], *control))
            .filter(|(_, row, control)| {
                !(matches!(row.status.as_str(), "DONE" | "FAILED" | "CANCELLED")
                    || (*control == "pause" && row.status == "PAUSED"))
            })
            .map(|(id, row, _)| (id, row))
            .collect();
        if stuck.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}: rows of a worker that does not exist, still unsettled after {SETTLE:?}: \
             {stuck:?}",
            db.backend
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    replica.shutdown().await;
}

/// Waits until job `id` runs on a live replica, writes a terminate for it, and checks that it
/// is CANCELLED within [`TERMINATE_WITHIN`], saying so.
async fn terminate_when_running(db: &TestDb, pool: &AnyPool, id: i64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let seen = read_back(db.backend, pool).await.expect("rows read back");
        if seen[&id].status == "RUNNING" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not running after {SETTLE:?}: {:?}",
            seen[&id]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query(&format!(
        "UPDATE jobs SET control = 'terminate' WHERE id = {id}"
    ))
    .execute(pool)
    .await
    .expect("terminate");
    let written = Instant::now();
    loop {
        let seen = read_back(db.backend, pool).await.expect("rows read back");
        let row = &seen[&id];
        if row.status == "CANCELLED" {
            assert!(
                row.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("terminated on request")),
                "{row:?}"
            );
            println!(
                "{:?}: terminate applied {:.1?} after it was written",
                db.backend,
                written.elapsed()
            );
            return;
        }
        assert!(
            written.elapsed() < TERMINATE_WITHIN,
            "{:?}: a terminate written {TERMINATE_WITHIN:?} ago has not applied: {row:?}",
            db.backend
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many pending resumes sit before the terminate: more than the control loop reads in one
/// pass (500).
const PENDING_RESUMES: usize = 1000;

/// A thousand PAUSED rows that name the live replica as their holder (which knows nothing of
/// them) carry a resume, and sit before a running job in the table. A terminate written for
/// that job last must not hide behind them: it applies within seconds. The resumes themselves
/// resolve too: no request is left pending, no row left PAUSED. Their `run_at` lies an hour
/// ahead, so once resumed they wait rather than take the replica's only slot.
async fn a_thousand_pending_resumes_do_not_hide_a_terminate(db: TestDb) {
    let mut config = db.config();
    config.consumers = 1;
    let replica = Replica::start(&db, config, jobsd::Handlers::default()).await;
    let pool = db.sql().await;
    let now = db.now_plus(0);
    let later = db.now_plus(3600);
    let row = format!(
        "({GOOD_SLEEP}, 'PAUSED', '{}', 'resume', 1, 3, {now}, {now}, {later})",
        replica.worker
    );
    let rows = vec![row; PENDING_RESUMES];
    sqlx::query(&format!(
        "INSERT INTO jobs (sleep, status, worker, control, attempts, max_attempts, queued_at, \
         started_at, run_at) VALUES {}",
        rows.join(", ")
    ))
    .execute(&pool)
    .await
    .expect("paused rows");
    sqlx::query("INSERT INTO jobs (sleep) VALUES (60000000000)")
        .execute(&pool)
        .await
        .expect("long job");
    let long = max_id(&pool).await;
    terminate_when_running(&db, &pool, long).await;

    let deadline = Instant::now() + SETTLE;
    loop {
        let seen = read_back(db.backend, &pool).await.expect("rows read back");
        let pending: Vec<(&i64, &Seen)> = seen
            .iter()
            .filter(|(id, row)| **id != long && (row.control.is_some() || row.status == "PAUSED"))
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}: {} of {PENDING_RESUMES} resumes unresolved after {SETTLE:?}, e.g. {:?}",
            db.backend,
            pending.len(),
            pending[0]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.close().await;
    replica.shutdown().await;
}

/// The size of the big payloads: 20 MB, or on MariaDB whatever its `max_allowed_packet`
/// (16 MiB by default) lets one value be, less a margin.
async fn big_payload_bytes(db: &TestDb, pool: &AnyPool) -> usize {
    const WANTED: usize = 20 * 1000 * 1000;
    if db.backend != Backend::Mysql {
        return WANTED;
    }
    let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .fetch_one(pool)
        .await
        .expect("max_allowed_packet");
    WANTED.min(usize::try_from(packet).expect("a size") - 1024 * 1024)
}

/// The most the daemon's peak resident memory may reach, and grow by, while it turns away
/// three payloads of 20 MB. SQLite's own writes of such a row (the claim, the outcome) run
/// inside the daemon's process and rebuild its whole record: the old value and the new record
/// (twice the payload; `sqlite3` alone takes 21 MB more for an UPDATE of a 10 MB row's status),
/// and a claim that takes several such rows in one statement holds one more in pages. A daemon
/// that loads the payloads itself holds several copies of each, of all three at once.
fn big_payload_bounds_kib(backend: Backend, payload: usize) -> (u64, u64) {
    let payload_kib = (payload / 1024) as u64;
    match backend {
        Backend::Sqlite => (40 * 1024 + 3 * payload_kib, 20 * 1024 + 3 * payload_kib),
        Backend::Postgres | Backend::Mysql => (40 * 1024, 20 * 1024),
    }
}

/// Three jobs with 20 MB JSON payloads (the default `max_payload_bytes` is 1 MiB) beside good
/// ones, on a real `jobsd run`: the three are refused at INSERT as too large, or end FAILED
/// ("payload too large") without being loaded; the good ones run, and the daemon's peak
/// resident memory stays small.
async fn twenty_megabyte_payloads_fail_without_being_loaded(db: TestDb) {
    // The default `dead_after` (10 s): on SQLite a write of such a row is slow, and a good
    // job's outcome may wait behind it for more than a second.
    let launcher = Launcher::new(
        &db,
        &[
            ("JOBSD_POLL_INTERVAL", "100ms"),
            ("JOBSD_RATE_PER_SECOND", "0"),
            ("JOBSD_SHUTDOWN_GRACE", "1s"),
        ],
    );
    let mut daemon = start_daemon(&launcher).await;
    // Let the daemon's pools and loops settle before the idle peak is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = peak_rss_kib(&daemon);
    let pool = db.sql().await;
    let size = big_payload_bytes(&db, &pool).await;
    let big = Lit::Text(vec![
        Piece::Plain("\"".into()),
        Piece::Run('x', size - 2),
        Piece::Plain("\"".into()),
    ])
    .sql(db.backend);
    // One statement a row: a database may refuse a big one at INSERT (SQLite, whose rows live
    // in the replica's process, does), and that must not take the good ones with it.
    let mut goods = Vec::new();
    let mut bigs = Vec::new();
    for n in 1..=7 {
        let payload = if n % 2 == 0 { big.as_str() } else { "NULL" };
        let statement = format!(
            "INSERT INTO jobs (object_id, sleep, payload) VALUES ({n}, {GOOD_SLEEP}, {payload})"
        );
        match (n % 2 == 0, sqlx::raw_sql(&statement).execute(&pool).await) {
            (false, Ok(_)) => goods.push(max_id(&pool).await),
            (true, Ok(_)) => bigs.push(max_id(&pool).await),
            (true, Err(error)) => {
                println!("{:?}: refused at INSERT: {error}", db.backend);
                assert!(
                    error.to_string().contains("payload too large"),
                    "refused as too large, in words: {error}"
                );
            }
            (false, Err(error)) => panic!("good job {n}: {error}"),
        }
    }
    let ids: Vec<i64> = goods.iter().chain(&bigs).copied().collect();
    let seen = until_finished(&db, &pool, &ids, Duration::from_secs(60)).await;
    daemon.assert_running();
    let peak = peak_rss_kib(&daemon);
    let (most, growth) = big_payload_bounds_kib(db.backend, size);
    println!(
        "{:?}: payloads of {size} bytes; daemon peak resident memory {idle} KiB idle, \
         {peak} KiB after (bounds: {most} KiB, growth {growth} KiB)",
        db.backend
    );
    for &id in &bigs {
        assert_failed_saying(&seen, id, &["payload too large"]);
    }
    for &id in &goods {
        assert_done(&seen, id);
    }
    pool.close().await;
    daemon.stop(EXIT).await;
    assert!(
        peak <= idle + growth,
        "peak resident memory grew from {idle} KiB to {peak} KiB for payloads that must not be \
         loaded"
    );
    assert!(
        peak <= most,
        "peak resident memory {peak} KiB, over {most} KiB (idle: {idle} KiB)"
    );
}
