//! The file kinds on every backend: csv_import and csv_export, their allow-list and their
//! checkpoints.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

use jobsd::{Handlers, JobRow, NewJob, Status};

use crate::common::{Backend, Replica, TestDb};

crate::on_every_backend!(
    csv_import_streams_a_file_into_an_allowed_table,
    csv_import_refuses_bad_input_and_imports_nothing_of_a_bad_batch,
    csv_export_writes_the_dates_asked_for,
    csv_import_reads_no_file_through_a_symlink_out_of_the_folder,
    csv_export_writes_no_file_through_a_symlink_out_of_the_folder,
    csv_import_refuses_a_fifo_at_once,
    csv_export_never_overwrites_a_file_it_did_not_create,
    csv_export_creates_private_files_and_resumes_only_its_own,
    crafted_column_names_run_no_sql,
    csv_import_refuses_an_oversize_line,
    csv_export_stays_alive_through_a_slow_query,
    csv_import_keeps_every_field_as_written,
);

/// The `orders` table in this backend's types.
pub async fn create_orders(db: &TestDb) {
    // A STRICT table, so that SQLite refuses a bad value as the other databases do.
    let sql = match db.backend {
        Backend::Sqlite => {
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL, day TEXT, note TEXT) STRICT"
        }
        _ => {
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, amount INTEGER NOT NULL, day DATE, note TEXT)"
        }
    };
    db.exec(sql).await.expect("create orders");
}

/// `rows` orders, one a day from 2018-06-01 round a 90-day cycle, amount = id.
pub fn orders_csv(path: &Path, rows: u64) {
    let mut text = String::from("id,amount,day,note\n");
    let start = chrono::NaiveDate::from_ymd_opt(2018, 6, 1).expect("date");
    for id in 1..=rows {
        let day = start + chrono::Days::new(id % 90);
        let note = match id % 3 {
            0 => "",
            1 => "plain",
            _ => "\"with, comma\"",
        };
        writeln!(text, "{id},{id},{day},{note}").expect("write");
    }
    std::fs::write(path, text).expect("write csv");
}

fn with_tables(db: &TestDb, folder: &Path) -> (jobsd::Config, Handlers) {
    let config = jobsd::Config {
        csv_tables: vec!["orders".into()],
        csv_dir: folder.to_owned(),
        ..db.config()
    };
    let handlers = Handlers::builtin(&config.csv());
    (config, handlers)
}

fn job(kind: &str, payload: serde_json::Value) -> NewJob {
    NewJob {
        kind: Some(kind.into()),
        payload: Some(payload.to_string()),
        ..NewJob::default()
    }
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    let pool = db.sql().await;
    let value: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.expect(sql);
    pool.close().await;
    value
}

async fn csv_import_streams_a_file_into_an_allowed_table(db: TestDb) {
    create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    orders_csv(&folder.path().join("orders.csv"), 2500);
    let (config, handlers) = with_tables(&db, folder.path());
    let replica = Replica::start(&db, config, handlers).await;
    let store = db.store().await;
    let payload = serde_json::json!({"path": "orders.csv", "table": "orders"});
    let id = store
        .insert(&job("csv_import", payload))
        .await
        .expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(30)).await;
    replica.shutdown().await;

    let row = rows.iter().find(|row| row.id == id).expect("row");
    assert_eq!(row.status, Status::Done, "{row:?}");
    // Rows imported, and how far into the file that is: all of it.
    let progress: serde_json::Value =
        serde_json::from_str(row.progress.as_deref().expect("a checkpoint")).expect("JSON");
    assert_eq!(progress["rows"], 2500, "{progress}");
    assert!(
        progress["bytes"].as_u64().is_some_and(|bytes| bytes > 0)
            && progress["bytes"] == progress["size"],
        "{progress}"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM orders").await, 2500);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(DISTINCT id) FROM orders WHERE amount = id"
        )
        .await,
        2500
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM orders WHERE note IS NULL").await,
        833
    );
    let commas = "SELECT COUNT(*) FROM orders WHERE note = 'with, comma'";
    assert_eq!(scalar(&db, commas).await, 833);
}

async fn csv_import_refuses_bad_input_and_imports_nothing_of_a_bad_batch(db: TestDb) {
    create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    std::fs::write(
        folder.path().join("bad_value.csv"),
        "id,amount\n1,10\n2,lots\n",
    )
    .expect("write");
    std::fs::write(folder.path().join("bad_column.csv"), "id,price\n1,10\n").expect("write");
    std::fs::write(folder.path().join("ragged.csv"), "id,amount\n1,10\n2\n").expect("write");
    let (config, handlers) = with_tables(&db, folder.path());
    let replica = Replica::start(&db, config, handlers).await;
    let store = db.store().await;
    let cases = [
        (
            serde_json::json!({"table": "orders"}),
            "missing field `path`",
        ),
        (
            serde_json::json!({"path": "x.csv", "table": "jobs"}),
            "not in csv_tables",
        ),
        (
            serde_json::json!({"path": "missing.csv", "table": "orders"}),
            "cannot read",
        ),
        (
            serde_json::json!({"path": "../orders.csv", "table": "orders"}),
            "must be relative",
        ),
        (
            serde_json::json!({"path": "bad_column.csv", "table": "orders"}),
            "\"price\" is not a column",
        ),
        (
            serde_json::json!({"path": "ragged.csv", "table": "orders"}),
            "cannot read",
        ),
        (
            serde_json::json!({"path": "bad_value.csv", "table": "orders"}),
            "integer",
        ),
    ];
    let mut ids = Vec::new();
    for (payload, _) in &cases {
        ids.push(
            store
                .insert(&job("csv_import", payload.clone()))
                .await
                .expect("insert"),
        );
    }
    let rows = db.until_all_finished(Duration::from_secs(30)).await;
    replica.shutdown().await;
    for ((_, words), id) in cases.iter().zip(ids) {
        let row = rows.iter().find(|row| row.id == id).expect("row");
        let reason = row.last_error.as_deref().unwrap_or_default().to_lowercase();
        assert_eq!(row.status, Status::Failed, "{row:?}");
        assert!(
            reason.contains(words),
            "job {id}: {reason:?} should mention {words:?}"
        );
    }
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM orders").await,
        0,
        "bad batches roll back whole"
    );
}

async fn csv_export_writes_the_dates_asked_for(db: TestDb) {
    create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    orders_csv(&folder.path().join("orders.csv"), 900);
    let (config, handlers) = with_tables(&db, folder.path());
    let replica = Replica::start(&db, config, handlers).await;
    let store = db.store().await;
    let import = serde_json::json!({"path": "orders.csv", "table": "orders"});
    store
        .insert(&job("csv_import", import))
        .await
        .expect("insert");
    db.until_all_finished(Duration::from_secs(30)).await;
    let july = serde_json::json!({
        "table": "orders", "date_column": "day", "from": "2018-07-01", "to": "2018-08-01", "path": "july.csv"
    });
    let export = store
        .insert(&job("csv_export", july))
        .await
        .expect("insert");
    let bad = serde_json::json!({
        "table": "orders", "date_column": "day", "from": "2018-07-32", "to": "2018-08-01", "path": "x.csv"
    });
    let bad = store.insert(&job("csv_export", bad)).await.expect("insert");
    let rows = db.until_all_finished(Duration::from_secs(30)).await;
    replica.shutdown().await;

    let row = rows.iter().find(|row| row.id == export).expect("row");
    assert_eq!(row.status, Status::Done, "{row:?}");
    let written = std::fs::read_to_string(folder.path().join("july.csv")).expect("export written");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines[0], "id,amount,day,note");
    // 900 orders round a 90-day cycle: 10 a day, 31 days of July.
    assert_eq!(
        lines.len(),
        1 + 310,
        "{}",
        &written[..200.min(written.len())]
    );
    assert!(
        lines[1..].iter().all(|line| line.contains(",2018-07-")),
        "only July"
    );
    assert!(
        written.contains("\"with, comma\""),
        "quoted fields stay quoted"
    );
    let progress: serde_json::Value =
        serde_json::from_str(row.progress.as_deref().unwrap_or("{}")).expect("json");
    assert_eq!(progress["next"], "2018-08-01");
    assert_eq!(progress["rows"], 310);
    assert_eq!(progress["bytes"], written.len());

    let refused = rows.iter().find(|row| row.id == bad).expect("row");
    assert_eq!(refused.status, Status::Failed);
    assert!(
        refused
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("\"2018-07-32\" is not a date")
    );
}

/// Runs `jobs` (payloads of `kind`) on a replica whose csv_dir is `folder` until all have
/// finished, and returns their rows in the same order.
async fn run_all(
    db: &TestDb,
    folder: &Path,
    kind: &str,
    jobs: &[serde_json::Value],
) -> Vec<JobRow> {
    let (config, handlers) = with_tables(db, folder);
    let replica = Replica::start(db, config, handlers).await;
    let store = db.store().await;
    let mut ids = Vec::new();
    for payload in jobs {
        ids.push(
            store
                .insert(&job(kind, payload.clone()))
                .await
                .expect("insert"),
        );
    }
    let rows = db.until_all_finished(Duration::from_secs(30)).await;
    replica.shutdown().await;
    ids.iter()
        .map(|id| rows.iter().find(|row| row.id == *id).expect("row").clone())
        .collect()
}

/// Inserts a job with a checkpoint, as an earlier run would have left it, by raw SQL.
async fn insert_with_progress(
    db: &TestDb,
    kind: &str,
    payload: &serde_json::Value,
    progress: &str,
) -> i64 {
    let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let statement = format!(
        "INSERT INTO jobs (kind, payload, progress) VALUES ({}, {}, {})",
        quote(kind),
        quote(&payload.to_string()),
        quote(progress)
    );
    db.exec(&statement).await.expect("insert with progress");
    scalar(db, "SELECT MAX(id) FROM jobs").await
}

fn failed_with(row: &JobRow, words: &str) -> String {
    let reason = row.last_error.clone().unwrap_or_default();
    assert_eq!(row.status, Status::Failed, "{row:?}");
    assert!(
        reason.contains(words),
        "job {}: {reason:?} should mention {words:?}",
        row.id
    );
    reason
}

fn export_of(path: &str, from: &str, to: &str) -> serde_json::Value {
    serde_json::json!({
        "table": "orders", "date_column": "day", "from": from, "to": to, "path": path
    })
}

async fn csv_import_reads_no_file_through_a_symlink_out_of_the_folder(db: TestDb) {
    create_orders(&db).await;
    let outside = tempfile::tempdir().expect("folder");
    // Were it read, the job would fail naming this column, and so show what the file holds.
    std::fs::write(
        outside.path().join("secret.csv"),
        "TOPSECRET_column\nhunter2\n",
    )
    .expect("write");
    orders_csv(&outside.path().join("orders.csv"), 10);
    let folder = tempfile::tempdir().expect("folder");
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, folder.path().join(name)).expect("symlink")
    };
    link(&outside.path().join("secret.csv"), "secret.csv");
    link(&outside.path().join("orders.csv"), "orders.csv");
    link(outside.path(), "sub");
    orders_csv(&folder.path().join("inside.csv"), 10);
    link(Path::new("inside.csv"), "alias.csv");

    let payload = |path: &str| serde_json::json!({"path": path, "table": "orders"});
    let rows = run_all(
        &db,
        folder.path(),
        "csv_import",
        &[
            payload("secret.csv"),
            payload("orders.csv"),
            payload("sub/secret.csv"),
            payload("alias.csv"),
        ],
    )
    .await;
    for row in &rows[..3] {
        let reason = failed_with(row, "cannot read");
        assert!(
            !reason.contains("TOPSECRET") && !reason.contains("hunter2"),
            "{reason}"
        );
    }
    assert_eq!(
        rows[3].status,
        Status::Done,
        "a link inside the folder is followed: {:?}",
        rows[3]
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM orders").await,
        10,
        "only the file inside the folder was imported"
    );
}

async fn csv_export_writes_no_file_through_a_symlink_out_of_the_folder(db: TestDb) {
    create_orders(&db).await;
    db.exec("INSERT INTO orders (id, amount, day, note) VALUES (1, 1, '2018-07-01', 'x')")
        .await
        .expect("order");
    let outside = tempfile::tempdir().expect("folder");
    std::fs::write(outside.path().join("kept.csv"), "untouched\n").expect("write");
    let folder = tempfile::tempdir().expect("folder");
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, folder.path().join(name)).expect("symlink")
    };
    link(&outside.path().join("kept.csv"), "existing.csv");
    link(&outside.path().join("new.csv"), "dangling.csv");
    link(outside.path(), "sub");
    let rows = run_all(
        &db,
        folder.path(),
        "csv_export",
        &[
            export_of("existing.csv", "2018-07-01", "2018-07-02"),
            export_of("dangling.csv", "2018-07-01", "2018-07-02"),
            export_of("sub/fresh.csv", "2018-07-01", "2018-07-02"),
        ],
    )
    .await;
    failed_with(&rows[0], "already exists");
    failed_with(&rows[1], "already exists");
    failed_with(&rows[2], "cannot write");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("kept.csv")).expect("read"),
        "untouched\n"
    );
    assert!(
        !outside.path().join("new.csv").exists(),
        "nothing created outside"
    );
    assert!(
        !outside.path().join("fresh.csv").exists(),
        "nothing created outside"
    );
}

async fn csv_import_refuses_a_fifo_at_once(db: TestDb) {
    create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    let made = std::process::Command::new("mkfifo")
        .arg(folder.path().join("pipe.csv"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo");
    std::fs::create_dir(folder.path().join("folder.csv")).expect("dir");
    let started = Instant::now();
    let rows = run_all(
        &db,
        folder.path(),
        "csv_import",
        &[
            serde_json::json!({"path": "pipe.csv", "table": "orders"}),
            serde_json::json!({"path": "folder.csv", "table": "orders"}),
        ],
    )
    .await;
    failed_with(&rows[0], "not a regular file but a FIFO");
    failed_with(&rows[1], "not a regular file but a directory");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let export = run_all(
        &db,
        folder.path(),
        "csv_export",
        &[export_of("pipe.csv", "2018-07-01", "2018-07-02")],
    )
    .await;
    failed_with(&export[0], "already exists");
}

async fn csv_export_never_overwrites_a_file_it_did_not_create(db: TestDb) {
    create_orders(&db).await;
    db.exec("INSERT INTO orders (id, amount, day, note) VALUES (1, 1, '2018-07-01', 'x')")
        .await
        .expect("order");
    let folder = tempfile::tempdir().expect("folder");
    let someone_elses = "someone else's file\n";
    for name in ["existing.csv", "old.csv", "other.csv"] {
        std::fs::write(folder.path().join(name), someone_elses).expect("write");
    }
    // A checkpoint from before file identities were recorded, and one naming another file.
    let old = export_of("old.csv", "2018-07-01", "2018-07-03");
    let old = insert_with_progress(
        &db,
        "csv_export",
        &old,
        r#"{"next":"2018-07-02","bytes":5,"rows":1}"#,
    )
    .await;
    let other = export_of("other.csv", "2018-07-01", "2018-07-03");
    let identity = std::fs::metadata(folder.path().join("other.csv")).expect("stat");
    let progress = format!(
        r#"{{"next":"2018-07-02","bytes":5,"rows":1,"dev":{},"ino":{}}}"#,
        identity.dev(),
        identity.ino() + 1
    );
    let other = insert_with_progress(&db, "csv_export", &other, &progress).await;
    let gone = export_of("gone.csv", "2018-07-01", "2018-07-03");
    let gone = insert_with_progress(&db, "csv_export", &gone, &progress).await;

    let rows = run_all(
        &db,
        folder.path(),
        "csv_export",
        &[export_of("existing.csv", "2018-07-01", "2018-07-02")],
    )
    .await;
    failed_with(
        &rows[0],
        "already exists; csv_export never overwrites a file it did not create",
    );
    let all = db.all_rows().await;
    let find = |id: i64| all.iter().find(|row| row.id == id).expect("row");
    failed_with(find(old), "cannot tell whether");
    failed_with(
        find(other),
        "is no longer the file an earlier run of this job created",
    );
    failed_with(find(gone), "is gone");
    for name in ["existing.csv", "old.csv", "other.csv"] {
        let kept = std::fs::read_to_string(folder.path().join(name)).expect("read");
        assert_eq!(kept, someone_elses, "{name} untouched");
    }
    assert!(!folder.path().join("gone.csv").exists());
}

async fn csv_export_creates_private_files_and_resumes_only_its_own(db: TestDb) {
    create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    orders_csv(&folder.path().join("orders.csv"), 900);
    let import = serde_json::json!({"path": "orders.csv", "table": "orders"});
    let imported = run_all(&db, folder.path(), "csv_import", &[import]).await;
    assert_eq!(imported[0].status, Status::Done, "{:?}", imported[0]);
    let rows = run_all(
        &db,
        folder.path(),
        "csv_export",
        &[export_of("july.csv", "2018-07-01", "2018-08-01")],
    )
    .await;
    assert_eq!(rows[0].status, Status::Done, "{:?}", rows[0]);
    let whole = std::fs::read_to_string(folder.path().join("july.csv")).expect("export");
    let metadata = std::fs::metadata(folder.path().join("july.csv")).expect("stat");
    let mode = metadata.permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "not world-readable: {mode:o}");
    assert_eq!(mode & !0o640, 0, "at most rw-r-----: {mode:o}");
    let progress: serde_json::Value =
        serde_json::from_str(rows[0].progress.as_deref().expect("progress")).expect("json");
    assert_eq!(progress["dev"], metadata.dev());
    assert_eq!(progress["ino"], metadata.ino());

    // A run that stopped after 15 July, and left half a day more in the file: the next run
    // cuts that back and ends with what one whole run writes.
    let cut = whole
        .match_indices('\n')
        .map(|(at, _)| at + 1)
        .take_while(|&end| !whole[..end].contains("2018-07-16"))
        .last()
        .expect("a line of 16 July");
    let first_half: Vec<&str> = whole[..cut].lines().collect();
    let mut torn = whole[..cut].to_owned();
    torn.push_str("16,16,2018-07-16,half a li");
    std::fs::write(folder.path().join("july.csv"), &torn).expect("tear");
    let progress = format!(
        r#"{{"next":"2018-07-16","bytes":{cut},"rows":{},"dev":{},"ino":{}}}"#,
        first_half.len() - 1,
        metadata.dev(),
        metadata.ino()
    );
    let resumed = export_of("july.csv", "2018-07-01", "2018-08-01");
    let resumed = insert_with_progress(&db, "csv_export", &resumed, &progress).await;
    let (config, handlers) = with_tables(&db, folder.path());
    let replica = Replica::start(&db, config, handlers).await;
    let all = db.until_all_finished(Duration::from_secs(30)).await;
    replica.shutdown().await;
    let row = all.iter().find(|row| row.id == resumed).expect("row");
    assert_eq!(row.status, Status::Done, "{row:?}");
    let again = std::fs::read_to_string(folder.path().join("july.csv")).expect("export");
    assert_eq!(again, whole, "resumed from its checkpoint");
    let progress: serde_json::Value =
        serde_json::from_str(row.progress.as_deref().expect("progress")).expect("json");
    assert_eq!(progress["rows"], 310);
    assert_eq!(progress["bytes"], whole.len());
}

async fn crafted_column_names_run_no_sql(db: TestDb) {
    // Quoted without escaping, this name closes its quote and selects one more value: who the
    // database user is. Column `a` exists so that the SQL it would make is valid.
    let (crafted, quoted, types) = match db.backend {
        Backend::Postgres => {
            let name = r#"a"AS TEXT),(SELECT current_user)::TEXT,CAST("a"#;
            (
                name,
                format!("\"{}\"", name.replace('"', "\"\"")),
                "BIGINT PRIMARY KEY, day DATE",
            )
        }
        Backend::Sqlite => {
            let name = r#"a"AS TEXT),(SELECT sqlite_version()),CAST("a"#;
            (
                name,
                format!("\"{}\"", name.replace('"', "\"\"")),
                "INTEGER PRIMARY KEY, day TEXT",
            )
        }
        Backend::Mysql => {
            let name = "a` AS CHAR),(SELECT CAST(current_user() AS CHAR)),CAST(`a";
            (
                name,
                format!("`{}`", name.replace('`', "``")),
                "BIGINT PRIMARY KEY, day DATE",
            )
        }
    };
    db.exec(&format!(
        "CREATE TABLE orders ({quoted} TEXT, a TEXT, id {types})"
    ))
    .await
    .expect("create the crafted table");
    db.exec(&format!(
        "INSERT INTO orders ({quoted}, a, id, day) VALUES ('x1', 'a1', 1, '2018-07-01'), ('x2', 'a2', 2, '2018-07-02')"
    ))
    .await
    .expect("rows");
    let folder = tempfile::tempdir().expect("folder");
    let mut file = csv::Writer::from_path(folder.path().join("in.csv")).expect("csv");
    file.write_record([crafted, "a", "id", "day"])
        .expect("header");
    file.write_record(["x3", "a3", "3", "2018-07-03"])
        .expect("row");
    file.flush().expect("flush");
    drop(file);

    let exported = |name: &str| {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_path(folder.path().join(name))
            .expect("exported");
        reader
            .records()
            .map(|record| record.expect("record").iter().map(str::to_owned).collect())
            .collect::<Vec<Vec<String>>>()
    };
    let header = vec![crafted, "a", "id", "day"];
    let rows = run_all(
        &db,
        folder.path(),
        "csv_export",
        &[export_of("before.csv", "2018-07-01", "2018-07-04")],
    )
    .await;
    assert_eq!(rows[0].status, Status::Done, "{:?}", rows[0]);
    assert_eq!(
        exported("before.csv"),
        [
            header.clone(),
            vec!["x1", "a1", "1", "2018-07-01"],
            vec!["x2", "a2", "2", "2018-07-02"],
        ],
        "the crafted name is one column, and no other value came back"
    );

    let rows = run_all(
        &db,
        folder.path(),
        "csv_import",
        &[serde_json::json!({"path": "in.csv", "table": "orders"})],
    )
    .await;
    assert_eq!(rows[0].status, Status::Done, "{:?}", rows[0]);
    let sql = format!("SELECT COUNT(*) FROM orders WHERE {quoted} = 'x3' AND a = 'a3' AND id = 3");
    assert_eq!(
        scalar(&db, &sql).await,
        1,
        "imported into the crafted column"
    );
    let rows = run_all(
        &db,
        folder.path(),
        "csv_export",
        &[export_of("after.csv", "2018-07-03", "2018-07-04")],
    )
    .await;
    assert_eq!(rows[0].status, Status::Done, "{:?}", rows[0]);
    assert_eq!(
        exported("after.csv"),
        [header, vec!["x3", "a3", "3", "2018-07-03"]]
    );
}

async fn csv_import_refuses_an_oversize_line(db: TestDb) {
    create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    let long = "n".repeat(1024 * 1024 + 1);
    std::fs::write(
        folder.path().join("long_line.csv"),
        format!(
            "id,amount,day,note\n1,1,2018-07-01,short\n2,2,2018-07-02,{long}\n3,3,2018-07-03,x\n"
        ),
    )
    .expect("write");
    // An unclosed quote: one line to the end of the file.
    let mut endless = b"id,amount,day,note\n1,1,2018-07-01,\"".to_vec();
    endless.resize(16 * 1024 * 1024, b'n');
    std::fs::write(folder.path().join("endless.csv"), endless).expect("write");
    std::fs::write(
        folder.path().join("long_header.csv"),
        format!("id,{long}\n1,2\n"),
    )
    .expect("write");
    let payload = |path: &str| serde_json::json!({"path": path, "table": "orders"});
    let rows = run_all(
        &db,
        folder.path(),
        "csv_import",
        &[
            payload("long_line.csv"),
            payload("endless.csv"),
            payload("long_header.csv"),
        ],
    )
    .await;
    for row in &rows {
        let reason = failed_with(row, "longer than 1048576 bytes");
        assert!(reason.len() < 1000, "{} bytes of reason", reason.len());
    }
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM orders").await, 0);
}

async fn csv_export_stays_alive_through_a_slow_query(db: TestDb) {
    // A view whose one row takes seconds to compute: several times `dead_after` (1 s) without a
    // checkpoint, in which only heartbeats show the job is alive.
    let view = match db.backend {
        Backend::Postgres => {
            "CREATE VIEW orders AS SELECT 1 AS id, DATE '2018-07-01' AS day, pg_sleep(3)::TEXT AS slow"
        }
        Backend::Mysql => {
            "CREATE VIEW orders AS SELECT 1 AS id, DATE '2018-07-01' AS day, SLEEP(3) AS slow"
        }
        Backend::Sqlite => {
            "CREATE VIEW orders AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
             WHERE x < 8000000) SELECT 1 AS id, '2018-07-01' AS day, (SELECT COUNT(*) FROM c) AS slow"
        }
    };
    db.exec(view).await.expect("slow view");
    let folder = tempfile::tempdir().expect("folder");
    let rows = run_all(
        &db,
        folder.path(),
        "csv_export",
        &[export_of("slow.csv", "2018-07-01", "2018-07-02")],
    )
    .await;
    let row = &rows[0];
    assert_eq!(row.status, Status::Done, "{row:?}");
    assert_eq!(row.attempts, 1, "never taken for dead: {row:?}");
    let took = row.finished_at.expect("finished") - row.started_at.expect("started");
    eprintln!("the slow export took {took}");
    if db.backend != Backend::Sqlite {
        assert!(took >= chrono::TimeDelta::seconds(3), "{took}");
    }
    let written = std::fs::read_to_string(folder.path().join("slow.csv")).expect("export");
    assert_eq!(written.lines().count(), 2, "{written}");
}

/// The notes of `orders` by id, read back as text.
async fn notes(db: &TestDb) -> Vec<(i64, Option<String>)> {
    use sqlx::Row as _;
    let pool = db.sql().await;
    let rows = sqlx::query("SELECT id, note FROM orders ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("notes");
    pool.close().await;
    rows.iter()
        .map(|row| {
            let id: i64 = row.get(0);
            // MySQL's TEXT reaches the generic driver as bytes.
            let note = match db.backend {
                Backend::Mysql => row
                    .get::<Option<Vec<u8>>, _>(1)
                    .map(|bytes| String::from_utf8(bytes).expect("UTF-8")),
                _ => row.get(1),
            };
            (id, note)
        })
        .collect()
}

async fn csv_import_keeps_every_field_as_written(db: TestDb) {
    create_orders(&db).await;
    let folder = tempfile::tempdir().expect("folder");
    // Longer than a piece of a COPY, with quotes and line breaks across; short enough for a
    // MySQL TEXT.
    let long = "\"q\",\n\\".repeat(10_000);
    // (the note as the file spells it, the note the table must hold); an empty field, quoted or
    // not, is NULL.
    let cases: Vec<(String, Option<String>)> = [
        ("\"with, comma\"", Some("with, comma")),
        ("\"say \"\"hi\"\"\"", Some("say \"hi\"")),
        ("\"a\\\"\"b\"", Some("a\\\"b")),
        ("\"two\nlines\"", Some("two\nlines")),
        ("\"crlf\r\nkept\"", Some("crlf\r\nkept")),
        ("back\\slash\\", Some("back\\slash\\")),
        ("\\N", Some("\\N")),
        ("\"\\N\"", Some("\\N")),
        ("\\.", Some("\\.")),
        ("\"\\.\"", Some("\\.")),
        ("NULL", Some("NULL")),
        ("'single'", Some("'single'")),
        ("tab\there", Some("tab\there")),
        ("naïve ✓ 日本語 🦀", Some("naïve ✓ 日本語 🦀")),
        (" padded ", Some(" padded ")),
        ("", None),
        ("\"\"", None),
    ]
    .into_iter()
    .map(|(spelled, kept)| (spelled.to_owned(), kept.map(str::to_owned)))
    .chain([(
        format!("\"{}\"", long.replace('"', "\"\"")),
        Some(long.clone()),
    )])
    .collect();
    let mut text = String::from("id,amount,day,note\n");
    for (id, (spelled, _)) in (1..).zip(&cases) {
        writeln!(text, "{id},{id},,{spelled}").expect("write");
    }
    // Rows after the hostile ones, so that they share batches with plain rows.
    for id in 1000..4000 {
        writeln!(text, "{id},{id},2018-07-01,\"plain, \"\"{id}\"\"\"").expect("write");
    }
    std::fs::write(folder.path().join("hostile.csv"), text).expect("write");
    // A value the column refuses, after good rows of its batch.
    std::fs::write(
        folder.path().join("refused.csv"),
        "id,amount,day,note\n5001,5001,,fine\n5002,5002,,fine\n5003,a lot,,fine\n5004,5004,,fine\n",
    )
    .expect("write");
    // A NUL byte: PostgreSQL's text cannot hold one, the other databases keep it.
    std::fs::write(
        folder.path().join("nul.csv"),
        "id,amount,day,note\n6001,6001,,a\0b\n",
    )
    .expect("write");

    let payload = |path: &str| serde_json::json!({"path": path, "table": "orders"});
    let rows = run_all(
        &db,
        folder.path(),
        "csv_import",
        &[
            payload("hostile.csv"),
            payload("refused.csv"),
            payload("nul.csv"),
        ],
    )
    .await;
    assert_eq!(rows[0].status, Status::Done, "{:?}", rows[0]);
    let reason = failed_with(&rows[1], "").to_lowercase();
    assert!(reason.contains("integer"), "{reason}");
    let nul_kept = db.backend != Backend::Postgres;
    if nul_kept {
        assert_eq!(rows[2].status, Status::Done, "{:?}", rows[2]);
    } else {
        failed_with(&rows[2], "0x00");
    }

    let read = notes(&db).await;
    let hostile: Vec<(i64, Option<String>)> =
        read.iter().filter(|(id, _)| *id < 1000).cloned().collect();
    let expected: Vec<(i64, Option<String>)> = (1..)
        .zip(cases.iter().map(|(_, kept)| kept.clone()))
        .collect();
    for ((id, got), (_, want)) in hostile.iter().zip(&expected) {
        let shown = |note: &Option<String>| {
            note.as_ref()
                .map(|n| n.chars().take(80).collect::<String>())
        };
        assert_eq!(
            got,
            want,
            "row {id}: {:?} should be {:?}",
            shown(got),
            shown(want)
        );
    }
    assert_eq!(hostile.len(), expected.len());
    let plain = read.iter().filter(|(id, _)| (1000..4000).contains(id));
    assert!(
        plain
            .clone()
            .all(|(id, note)| note.as_deref() == Some(&format!("plain, \"{id}\"")[..])),
        "plain rows as written"
    );
    assert_eq!(plain.count(), 3000);
    assert!(
        read.iter().all(|(id, _)| !(5000..6000).contains(id)),
        "nothing of the refused batch"
    );
    let nul: Vec<_> = read.iter().filter(|(id, _)| *id == 6001).collect();
    if nul_kept {
        assert_eq!(nul, [&(6001, Some("a\0b".to_owned()))]);
    } else {
        assert!(nul.is_empty());
    }
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM orders WHERE day IS NULL AND id < 1000"
        )
        .await,
        i64::try_from(cases.len()).expect("count"),
        "an empty date is NULL"
    );
}
