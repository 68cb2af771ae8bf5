//! jobsd: a background-job daemon that applications talk to only through their database.
//!
//! They INSERT rows into the `jobs` table and read `status` and the timestamp columns back with
//! SQL; jobsd moves each row from NEW to DONE, FAILED or CANCELLED, on PostgreSQL, MySQL/MariaDB
//! or an embedded SQLite file, with any number of replicas sharing one database.
//!
//! A map of the crate, in the order a job travels:
//!
//! - [`config`]: settings, checked before anything starts.
//! - [`store`]: the one trait for every query, and a module per SQL dialect.
//! - `publisher`: loops that poll the table. `new_jobs` claims work for free consumer slots;
//!   `dead_jobs` finds jobs whose replica or handler went silent.
//! - `consumer`: the rate-limited pool that starts claimed jobs and runs each to an outcome.
//! - `completer`: writes those outcomes in batches.
//! - `canceller`: settles dead jobs: requeue, retry or cancel.
//! - `publisher::control`: carries out pause, resume and terminate requests.
//! - [`schedule`] and `publisher::schedules`: recurring jobs, one per slot across replicas.
//! - [`handlers`]: job kinds by name, and the [`Handler`] trait to add your own.
//! - [`context`]: what a running handler sees ([`JobContext`]).
//! - [`daemon`]: wires the loops together and drains them on shutdown.
//! - [`demo`] and [`table`]: the `jobsd demo` and `jobsd status` commands.
//! - [`bench`]: the `jobsd bench` command.

pub mod bench;
mod canceller;
mod completer;
pub mod config;
mod consumer;
pub mod context;
pub mod daemon;
pub mod demo;
pub mod handlers;
mod held;
pub mod job;
pub mod metrics;
mod publisher;
mod replica;
mod row;
pub mod schedule;
pub mod store;
pub mod table;
pub mod watch;

pub use config::Config;
pub use context::JobContext;
pub use daemon::Daemon;
pub use handlers::{Handler, Handlers, Permanent};
pub use job::{JobRow, NewJob, Status};
pub use store::Store;

/// The error and its causes in one line, leaving out a cause that only repeats its parent (as
/// database errors do).
pub fn in_words(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
