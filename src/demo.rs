//! `jobsd demo`: the original design's experiment in one command. Sleep jobs of one second,
//! every third one stuck (`sleep` NULL), run until each has finished; the stuck ones are
//! cancelled as dead after `dead_after`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::daemon::Daemon;
use crate::job::{JobRow, NewJob};
use crate::store::Store;

const ONE_SECOND_NS: i64 = 1_000_000_000;

/// How often the demo looks whether its jobs have all finished.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Inserts `count` demo jobs, runs `daemon` until all of them have finished (or `interrupted`
/// fires), shuts it down, and returns the demo's rows.
pub async fn run(
    store: Arc<dyn Store>,
    daemon: Daemon,
    count: u32,
    interrupted: CancellationToken,
) -> anyhow::Result<Vec<JobRow>> {
    let mut ids = Vec::new();
    for n in 0..count {
        let sleep = (n % 3 != 1).then_some(ONE_SECOND_NS);
        ids.push(store.insert(&NewJob::sleep(10, sleep)).await?);
    }
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(daemon.run(stop.clone()));
    let rows = loop {
        tokio::select! {
            () = interrupted.cancelled() => break store.rows(&ids, count).await?,
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        let rows = store.rows(&ids, count).await?;
        if rows.iter().all(|row| row.status.is_terminal()) {
            break rows;
        }
    };
    stop.cancel();
    daemon.await??;
    Ok(rows)
}
