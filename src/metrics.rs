//! What a replica has done, for Prometheus: jobs started and finished (by queue, kind and
//! outcome), how long they ran and waited, and how many rows the table holds by queue and
//! status. Counters are this replica's own work, recorded at the few places every job passes
//! (its start, and its outcome once written); the table's gauges come from one grouped count
//! every few seconds while someone scrapes. That count reads every row of the table, finished
//! ones too, so a replica nobody scrapes never makes it, and one scraped every 30 s makes it
//! once per scrape, not six times.
//!
//! The listener serves `GET /metrics` and nothing else: jobsd has no HTTP API. It starts only
//! when `metrics_addr` is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::held::Labels;
use crate::job::{Outcome, Status};
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Job {
    queue: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    queue: String,
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Queue {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rows {
    queue: String,
    status: &'static str,
}

/// Seconds, from a millisecond to about four and a half hours.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

/// How many different queue or kind names get series of their own; the rest count as "other".
/// Anyone may write any name into a row, and every name would be a series kept for good.
const NAMES: usize = 64;

/// The label values seen so far, up to [`NAMES`].
#[derive(Default)]
struct Names(std::sync::Mutex<std::collections::HashSet<String>>);

impl Names {
    fn label(&self, name: &str) -> String {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(name) {
            return name.to_owned();
        }
        if seen.len() < NAMES {
            seen.insert(name.to_owned());
            return name.to_owned();
        }
        "other".to_owned()
    }
}

/// The replica's metrics.
pub struct Metrics {
    registry: Registry,
    queues: Names,
    kinds: Names,
    started: Family<Job, Counter>,
    finished: Family<Finished, Counter>,
    duration: Family<Job, Histogram, fn() -> Histogram>,
    wait: Family<Queue, Histogram, fn() -> Histogram>,
    rows: Family<Rows, Gauge>,
    /// Set by a scrape, taken by the next count: the table is counted only for someone.
    scraped: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("jobsd");
        let started = Family::<Job, Counter>::default();
        let finished = Family::<Finished, Counter>::default();
        let duration = Family::<Job, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        let wait = Family::<Queue, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        let rows = Family::<Rows, Gauge>::default();
        registry.register("jobs_started", "Jobs this replica started", started.clone());
        registry.register(
            "jobs_finished",
            "Outcomes of this replica's jobs, once written: done, failed, retried or cancelled",
            finished.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "How long this replica's jobs ran",
            duration.clone(),
        );
        registry.register(
            "job_wait_seconds",
            "How long this replica's jobs waited from their run_at to their start",
            wait.clone(),
        );
        registry.register("jobs", "Rows in the jobs table", rows.clone());
        Metrics {
            registry,
            queues: Names::default(),
            kinds: Names::default(),
            started,
            finished,
            duration,
            wait,
            rows,
            scraped: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// A job started, `waited` after it was due.
    pub fn started(&self, queue: &str, kind: &str, waited: Duration) {
        let job = self.job(queue, kind);
        self.started.get_or_create(&job).inc();
        self.wait
            .get_or_create(&Queue { queue: job.queue })
            .observe(waited.as_secs_f64());
    }

    /// A job's run ended after `took`, whatever its outcome.
    pub fn ran(&self, queue: &str, kind: &str, took: Duration) {
        let job = self.job(queue, kind);
        self.duration
            .get_or_create(&job)
            .observe(took.as_secs_f64());
    }

    /// A job's outcome was written.
    pub fn finished(&self, labels: &Labels, outcome: &Outcome) {
        let outcome = match outcome {
            Outcome::Done => "done",
            Outcome::Failed { .. } => "failed",
            Outcome::Retry { .. } => "retried",
        };
        self.count_finished(labels, outcome);
    }

    /// A job this replica held was cancelled (terminated, or taken for dead) instead.
    pub fn cancelled(&self, labels: &Labels) {
        self.count_finished(labels, "cancelled");
    }

    fn count_finished(&self, labels: &Labels, outcome: &'static str) {
        let job = self.job(&labels.queue, &labels.kind);
        let finished = Finished {
            queue: job.queue,
            kind: job.kind,
            outcome,
        };
        self.finished.get_or_create(&finished).inc();
    }

    /// The table's rows by queue and status, replacing the last count.
    pub fn rows(&self, counts: &[(String, Status, i64)]) {
        self.rows.clear();
        for (queue, status, count) in counts {
            let rows = Rows {
                queue: self.queues.label(queue),
                status: status.as_str(),
            };
            self.rows.get_or_create(&rows).inc_by(*count);
        }
    }

    fn job(&self, queue: &str, kind: &str) -> Job {
        Job {
            queue: self.queues.label(queue),
            kind: self.kinds.label(kind),
        }
    }

    /// The OpenMetrics text of everything.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// How often the table's rows are counted for the gauges, at most: after a scrape.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `addr` until `stop`, counting the table's rows meanwhile; every
/// connection's task is awaited before it returns. An address that cannot be bound is an error
/// at once, before anything else starts.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let counter = tokio::spawn(count_rows(Arc::clone(&metrics), store, stop.clone()));
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics: cannot accept a connection");
                    continue;
                }
            },
        };
        let (metrics, stop) = (Arc::clone(&metrics), stop.clone());
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, hyper::Error>(answer(&request, &metrics)) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    connections.wait().await;
    let _ = counter.await;
}

/// Binds `addr`, or says why not.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let response = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return response(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    metrics.scraped.store(true, Ordering::Relaxed);
    let mut ok = response(StatusCode::OK, metrics.render());
    ok.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    ok
}

async fn count_rows(metrics: Arc<Metrics>, store: Arc<dyn Store>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(COUNT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !metrics.scraped.swap(false, Ordering::Relaxed) {
            continue;
        }
        match store.queue_counts().await {
            Ok(counts) => metrics.rows(&counts),
            Err(error) => tracing::debug!(%error, "metrics: cannot count the table's rows"),
        }
    }
}
