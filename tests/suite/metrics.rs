//! The optional `/metrics` listener: what it counts equals what the table says, it serves
//! nothing else, and without `metrics_addr` no port is open at all.

use std::collections::HashSet;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TestDb;
use crate::reliability::processes::Launcher;
use crate::reliability::until;

crate::on_every_backend!(
    metrics_count_what_the_table_says,
    without_metrics_addr_no_port_is_open,
);

const SETTINGS: &[(&str, &str)] = &[
    ("JOBSD_POLL_INTERVAL", "100ms"),
    ("JOBSD_RATE_PER_SECOND", "0"),
];

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// `GET path` over plain HTTP/1.1: the status line and the body.
async fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the metrics port answers");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The sum of the samples of `metric` whose labels include every one of `labels`.
fn sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name_and_labels, value) = line.rsplit_once(' ')?;
            let (name, rest) = name_and_labels
                .split_once('{')
                .unwrap_or((name_and_labels, ""));
            (name == metric && labels.iter().all(|label| rest.contains(label)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn table_count(db: &TestDb, status: &str) -> i64 {
    let pool = db.sql().await;
    let count = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM jobs WHERE status = '{status}'"
    ))
    .fetch_one(&pool)
    .await
    .expect("count");
    pool.close().await;
    count
}

async fn metrics_count_what_the_table_says(db: TestDb) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let launcher = Launcher::new(&db, SETTINGS);
    let mut replica = launcher.start_with("m", &[("JOBSD_METRICS_ADDR", addr.as_str())]);
    replica.ready(Duration::from_secs(30)).await;
    for n in 0..10 {
        db.exec(&format!(
            "INSERT INTO jobs (object_id, sleep) VALUES ({n}, 1000000)"
        ))
        .await
        .expect("job");
    }
    db.exec("INSERT INTO jobs (kind, object_id) VALUES ('no_such_kind', 99)")
        .await
        .expect("job of an unknown kind");
    db.until_all_finished(Duration::from_secs(30)).await;
    let (done, failed) = (
        table_count(&db, "DONE").await,
        table_count(&db, "FAILED").await,
    );
    assert_eq!((done, failed), (10, 1));

    // The gauges come from a count every few seconds; the counters at once.
    let text = until(Duration::from_secs(15), async || {
        let (status, text) = get(port, "/metrics").await;
        if !status.contains("200") {
            return Err(format!("GET /metrics: {status}"));
        }
        let rows = sum(&text, "jobsd_jobs", &["status=\"DONE\""]);
        if rows as i64 == done {
            Ok(text)
        } else {
            Err(format!("jobsd_jobs{{status=DONE}} is {rows}:\n{text}"))
        }
    })
    .await;
    assert_eq!(
        sum(&text, "jobsd_jobs_finished_total", &["outcome=\"done\""]) as i64,
        done,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "jobsd_jobs_finished_total",
            &["outcome=\"failed\"", "kind=\"no_such_kind\""]
        ) as i64,
        failed,
        "{text}"
    );
    assert_eq!(
        sum(&text, "jobsd_jobs_started_total", &["queue=\"default\""]) as i64,
        11
    );
    assert_eq!(
        sum(
            &text,
            "jobsd_job_duration_seconds_count",
            &["kind=\"sleep\""]
        ) as i64,
        10,
        "{text}"
    );
    assert!(text.contains("jobsd_job_wait_seconds_bucket"), "{text}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text:\n{text}"
    );

    // The check the other test relies on sees this listener.
    assert_eq!(listening_sockets(replica.pid()).len(), 1);
    // Nothing else is served.
    for path in ["/", "/metrics/x", "/jobs", "/health"] {
        let (status, _) = get(port, path).await;
        assert!(status.contains("404"), "GET {path}: {status}");
    }
    replica.stop(Duration::from_secs(30)).await;
}

/// The inodes of the TCP sockets `pid` has open that listen.
fn listening_sockets(pid: u32) -> Vec<String> {
    let own: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st is the fourth field, the inode the tenth; 0A is LISTEN.
            (fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9).map(|inode| (*inode).to_owned()))?
        })
        .filter(|inode| own.contains(inode))
        .collect()
}

async fn without_metrics_addr_no_port_is_open(db: TestDb) {
    let launcher = Launcher::new(&db, SETTINGS);
    let mut replica = launcher.start("quiet");
    replica.ready(Duration::from_secs(30)).await;
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (1, 1000000)")
        .await
        .expect("job");
    db.until_all_finished(Duration::from_secs(30)).await;
    assert_eq!(listening_sockets(replica.pid()), Vec::<String>::new());
    replica.stop(Duration::from_secs(30)).await;
}
