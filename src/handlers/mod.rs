//! Job kinds: the [`Handler`] trait a kind implements, and the registry that picks a handler by
//! the row's `kind`. Built-in kinds live one per file beside this one; a library user registers
//! their own with [`Handlers::register`].

mod csv_export;
mod csv_import;
mod files;
mod sleep;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::context::JobContext;

pub use crate::job::Permanent;
pub use csv_export::CsvExport;
pub use csv_import::CsvImport;
pub use files::CsvSettings;
pub use sleep::Sleep;

/// Runs one kind of job. An `Err` fails this attempt: the job is retried while attempts remain,
/// unless the error is (or wraps) a [`Permanent`] one. The daemon may drop the returned future
/// at any `.await` (the job was cancelled, or shutdown's grace ran out), so a handler keeps
/// nothing half-done across an `.await` that it could not redo.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()>;
}

/// The handlers a daemon knows, by kind.
#[derive(Clone)]
pub struct Handlers {
    by_kind: BTreeMap<String, Arc<dyn Handler>>,
}

impl Default for Handlers {
    /// The built-in kinds, with no tables open to the file kinds.
    fn default() -> Self {
        Handlers::builtin(&CsvSettings::default())
    }
}

impl Handlers {
    /// The built-in kinds: `sleep`, and `csv_import` and `csv_export` limited by `csv`.
    pub fn builtin(csv: &CsvSettings) -> Self {
        Handlers::empty()
            .register("sleep", Sleep)
            .register("csv_import", CsvImport { files: csv.clone() })
            .register("csv_export", CsvExport { files: csv.clone() })
    }

    /// No kinds at all; every job would fail as unknown.
    pub fn empty() -> Self {
        Handlers {
            by_kind: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the handler for `kind`.
    pub fn register(mut self, kind: impl Into<String>, handler: impl Handler) -> Self {
        self.by_kind.insert(kind.into(), Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.by_kind.get(kind).cloned()
    }

    /// The registered kinds, in order, for messages.
    pub fn kinds(&self) -> Vec<&str> {
        self.by_kind.keys().map(String::as_str).collect()
    }
}
