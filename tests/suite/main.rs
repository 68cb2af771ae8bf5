//! The integration suite: real databases, real processes. Every test makes its own database.

mod bad_input;
mod cli;
mod common;
mod control;
mod daemon;
mod files;
mod hostile;
mod metrics;
mod outage;
mod pickup;
mod pruning;
mod queues;
mod reliability;
mod schedules;
mod state_machine;
mod store;
mod unique;
mod upgrade;
mod watch;
