//! The integration suite: real databases, real processes. Every test makes its own database.

mod cli;
mod common;
mod control;
mod daemon;
mod files;
mod reliability;
mod store;
