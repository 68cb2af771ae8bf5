//! Kind `csv_import` `{"path": …, "table": …}`: streams a CSV file (first line: column names)
//! into an allow-listed table, a batch at a time. Each batch and the checkpoint that counts it
//! commit in one transaction, so a run after a crash, a shutdown or a retry skips exactly the
//! rows already imported: none twice, none lost. Memory holds one batch, whatever the file size.

use std::fs::File;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::files::{column, table_columns};
use super::{Handler, Permanent};
use crate::config::CsvSettings;
use crate::context::JobContext;
use crate::store::TextRow;

/// Rows per transaction.
const BATCH_ROWS: usize = 1000;

pub struct CsvImport {
    pub files: CsvSettings,
}

#[derive(Deserialize)]
struct Args {
    path: String,
    table: String,
}

/// The checkpoint: data rows of the file committed so far.
#[derive(Serialize, Deserialize, Default)]
struct Imported {
    rows: u64,
}

#[async_trait]
impl Handler for CsvImport {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        let args: Args = ctx.payload_as()?;
        let table = self.files.table(&args.table)?;
        let path = self.files.path(&args.path)?;
        let known = table_columns(ctx, table).await?;
        let mut imported = ctx.progress_as::<Imported>()?.unwrap_or_default().rows;
        let (mut source, header) = run_blocking(move || Source::open(path, imported)).await??;
        let columns = header
            .iter()
            .map(|name| column(name, &known, table).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        loop {
            let batch;
            (source, batch) = run_blocking(move || source.next(BATCH_ROWS)).await?;
            let batch = batch?;
            if batch.is_empty() {
                return Ok(());
            }
            imported += u64::try_from(batch.len()).unwrap_or(u64::MAX);
            let progress = serde_json::to_string(&Imported { rows: imported })?;
            let store = ctx.store();
            let ours = store
                .import_batch(ctx.id(), ctx.worker(), table, &columns, &batch, &progress)
                .await?;
            ctx.checkpointed(ours).await;
        }
    }
}

/// The file, read on a blocking thread a batch at a time.
struct Source {
    reader: csv::Reader<File>,
    path: PathBuf,
}

impl Source {
    /// Opens the file, reads its header, and skips the `done` data rows already imported.
    fn open(path: PathBuf, done: u64) -> Result<(Source, Vec<String>), Permanent> {
        let unreadable = |e: &dyn std::fmt::Display| {
            Permanent::new(format!("cannot read {}: {e}", path.display()))
        };
        let file = File::open(&path).map_err(|e| unreadable(&e))?;
        let mut reader = csv::Reader::from_reader(file);
        let header = reader
            .headers()
            .map_err(|e| unreadable(&e))?
            .iter()
            .map(str::to_owned)
            .collect();
        let mut record = csv::StringRecord::new();
        for _ in 0..done {
            if !reader
                .read_record(&mut record)
                .map_err(|e| unreadable(&e))?
            {
                break;
            }
        }
        Ok((Source { reader, path }, header))
    }

    /// Up to `count` more rows; an empty field is NULL.
    fn next(mut self, count: usize) -> (Source, Result<Vec<TextRow>, Permanent>) {
        let mut rows = Vec::with_capacity(count);
        let mut record = csv::StringRecord::new();
        while rows.len() < count {
            match self.reader.read_record(&mut record) {
                Ok(true) => rows.push(
                    record
                        .iter()
                        .map(|field| (!field.is_empty()).then(|| field.to_owned()))
                        .collect(),
                ),
                Ok(false) => break,
                Err(error) => {
                    let reason = format!("cannot read {}: {error}", self.path.display());
                    return (self, Err(Permanent::new(reason)));
                }
            }
        }
        (self, Ok(rows))
    }
}

/// Runs file work off the async threads.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work).await?)
}
