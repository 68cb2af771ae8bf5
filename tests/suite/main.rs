//! The integration suite: real databases, real processes. Every test makes its own database.

mod common;
mod store;
mod daemon;
