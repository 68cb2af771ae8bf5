//! The file kinds on every backend: csv_import and csv_export, their allow-list and their
//! checkpoints.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use jobsd::{Handlers, NewJob, Status};

use crate::common::{Backend, Replica, TestDb};

crate::on_every_backend!(
    csv_import_streams_a_file_into_an_allowed_table,
    csv_import_refuses_bad_input_and_imports_nothing_of_a_bad_batch,
    csv_export_writes_the_dates_asked_for,
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
    assert_eq!(row.progress.as_deref(), Some(r#"{"rows":2500}"#));
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
