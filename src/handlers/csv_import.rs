//! Kind `csv_import` `{"path": …, "table": …}`: streams a CSV file (first line: column names)
//! into an allow-listed table, a batch at a time. Each batch and the checkpoint that counts it
//! commit in one transaction, so a run after a crash, a shutdown or a retry skips exactly the
//! rows already imported: none twice, none lost. Memory holds two batches, whatever the file
//! size: one read from the file while the database writes the other, in buffers kept from batch
//! to batch. A batch is bounded in bytes, which the store sets (each batch is a transaction,
//! and how large one must be before more stops paying differs by database), and not in rows,
//! since one line of a file can be long: a line longer than [`MAX_RECORD_BYTES`] fails the job
//! before the reader has buffered much more.

use std::fs::File;
use std::io::{self, Read};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::files::CsvSettings;
use super::files::{CsvPath, column, table_columns};
use super::{Handler, Permanent};
use crate::context::JobContext;
use crate::store::ImportBatch;

/// The longest line (CSV record) of a file to import, header included.
pub(crate) const MAX_RECORD_BYTES: u64 = 1024 * 1024;

/// What a field costs a batch beside its text: where it ends in the batch's buffer, and its
/// place in the list handed to the store.
const FIELD_BYTES: usize = size_of::<usize>() + size_of::<Option<&str>>();

/// What the CSV reader reads ahead of the record it parses.
const READ_BUFFER: usize = 64 * 1024;

pub struct CsvImport {
    pub files: CsvSettings,
}

#[derive(Deserialize)]
struct Args {
    path: String,
    table: String,
}

/// The checkpoint: data rows of the file committed so far. `bytes` of the file's `size` are
/// read by then: for people watching (`jobsd status --watch`); the run goes by `rows`.
#[derive(Serialize, Deserialize, Default)]
struct Imported {
    rows: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    size: u64,
}

#[async_trait]
impl Handler for CsvImport {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        let args: Args = ctx.payload_as()?;
        let table = self.files.table(&args.table)?;
        let path = self.files.path(&args.path)?;
        let known = table_columns(ctx, table).await?;
        let mut imported = ctx.progress_as::<Imported>()?.unwrap_or_default().rows;
        // Skipping what an earlier run imported reads the file that far: the job stays alive.
        let (source, header) = ctx
            .beating(run_blocking(move || Source::open(path, imported)))
            .await??;
        let columns = header
            .iter()
            .map(|name| column(name, &known, table).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        // Past this many bytes a batch goes to the database: with the line that crossed it, a
        // batch holds little more than that and [`MAX_RECORD_BYTES`].
        let bytes = ctx.store().await.import_bytes();
        let mut reading = read_next(source, Batch::default(), bytes);
        // Two batches take turns, one read while the other is written, their buffers kept:
        // the import's memory stays what its first two batches took.
        let mut spare = Batch::default();
        loop {
            let (source, batch) = reading.await?;
            let batch = batch?;
            if batch.rows == 0 {
                return Ok(());
            }
            imported += u64::try_from(batch.rows).unwrap_or(u64::MAX);
            let progress = serde_json::to_string(&Imported {
                rows: imported,
                bytes: source.reader.position().byte(),
                size: source.size,
            })?;
            reading = read_next(source, spare, bytes);
            let store = ctx.store().await;
            let ours = store
                .import_batch(&ImportBatch {
                    id: ctx.id(),
                    worker: ctx.worker(),
                    table,
                    columns: &columns,
                    fields: &batch.fields(),
                    progress: &progress,
                })
                .await?;
            spare = batch;
            ctx.checkpointed(ours).await;
        }
    }
}

/// A reader that fails once more than `limit` bytes were read since the last record boundary,
/// so a line without end cannot make the CSV reader's buffers grow without end.
struct Bounded<R> {
    inner: R,
    /// Bytes read from `inner` in all.
    read: u64,
    /// `read` at the start of the record being parsed.
    boundary: u64,
    limit: u64,
}

impl<R> Bounded<R> {
    /// The record being parsed starts at byte `at` of the file.
    fn record_starts(&mut self, at: u64) {
        self.boundary = at;
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read.saturating_sub(self.boundary) > self.limit {
            return Err(too_long());
        }
        let count = self.inner.read(buf)?;
        self.read += u64::try_from(count).unwrap_or(u64::MAX);
        Ok(count)
    }
}

fn too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a line is longer than {MAX_RECORD_BYTES} bytes, the most one CSV record may hold"),
    )
}

/// The file, read on a blocking thread a batch at a time.
struct Source {
    reader: csv::Reader<Bounded<File>>,
    /// The file's size when it was opened.
    size: u64,
    path: CsvPath,
    record: csv::StringRecord,
}

impl Source {
    /// Opens the file, reads its header, and skips the `done` data rows already imported.
    fn open(path: CsvPath, done: u64) -> Result<(Source, Vec<String>), Permanent> {
        let file = path.open_read()?;
        let size = file.metadata().map_or(0, |metadata| metadata.len());
        let bounded = Bounded {
            inner: file,
            read: 0,
            boundary: 0,
            // The reader may have read a buffer ahead of the record it parses.
            limit: MAX_RECORD_BYTES + READ_BUFFER as u64,
        };
        // The header is read as a record like any other, under the same limit.
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .buffer_capacity(READ_BUFFER)
            .from_reader(bounded);
        let mut source = Source {
            reader,
            size,
            path,
            record: csv::StringRecord::new(),
        };
        let mut header = Vec::new();
        if source.advance().map_err(|e| source.unreadable(&e))? {
            header = source.record.iter().map(str::to_owned).collect();
        }
        for _ in 0..done {
            if !source.advance().map_err(|e| source.unreadable(&e))? {
                break;
            }
        }
        Ok((source, header))
    }

    /// Reads the next record into `record`; `false` at the end of the file.
    fn advance(&mut self) -> Result<bool, String> {
        let start = self.reader.position().byte();
        self.reader.get_mut().record_starts(start);
        if !self
            .reader
            .read_record(&mut self.record)
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        // The reader's own count: the line's exact length, read-ahead left out.
        if self.reader.position().byte() - start > MAX_RECORD_BYTES {
            return Err(too_long().to_string());
        }
        Ok(true)
    }

    fn unreadable(&self, error: &str) -> Permanent {
        Permanent::new(format!("cannot read {}: {error}", self.path.shown()))
    }

    /// The next rows, not many more than `bytes` of memory, in `batch`'s buffer.
    fn next(mut self, mut batch: Batch, bytes: usize) -> (Source, Result<Batch, Permanent>) {
        batch.text.clear();
        batch.rows = 0;
        let mut size = 0;
        while size < bytes {
            match self.advance() {
                Ok(true) => {
                    size += self.record.as_slice().len() + self.record.len() * FIELD_BYTES;
                    for field in &self.record {
                        batch.text.push_field(field);
                    }
                    batch.rows += 1;
                }
                Ok(false) => break,
                Err(error) => {
                    let reason = self.unreadable(&error);
                    return (self, Err(reason));
                }
            }
        }
        (self, Ok(batch))
    }
}

/// Rows read from the file: all their fields in one record, row after row. One buffer a batch
/// rather than one a field: a batch of short fields costs little more than its text.
#[derive(Debug, Default)]
struct Batch {
    text: csv::StringRecord,
    rows: usize,
}

impl Batch {
    /// The fields as the store takes them: an empty field is NULL.
    fn fields(&self) -> Vec<Option<&str>> {
        self.text
            .iter()
            .map(|field| (!field.is_empty()).then_some(field))
            .collect()
    }
}

/// The next batch of `source`, read on a blocking thread. A handler that stops meanwhile drops
/// the handle: the read ends with its batch, and the file is closed.
fn read_next(
    source: Source,
    batch: Batch,
    bytes: usize,
) -> JoinHandle<(Source, Result<Batch, Permanent>)> {
    tokio::task::spawn_blocking(move || source.next(batch, bytes))
}

/// Runs file work off the async threads.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: usize = 4 * 1024 * 1024;

    fn source_of(text: &[u8]) -> (Source, Vec<String>) {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("f.csv"), text).unwrap();
        let settings = CsvSettings {
            tables: Vec::new(),
            dir: folder.path().to_owned(),
        };
        let path = settings.path("f.csv").unwrap();
        Source::open(path, 0).unwrap()
    }

    #[test]
    fn a_line_over_the_limit_fails_and_one_at_it_does_not() {
        let at_limit = "x".repeat(usize::try_from(MAX_RECORD_BYTES).unwrap() - 1);
        let (source, header) = source_of(format!("a\n{at_limit}\nshort\n").as_bytes());
        assert_eq!(header, ["a"]);
        let (_, batch) = source.next(Batch::default(), BATCH);
        assert_eq!(batch.unwrap().rows, 2);

        let over = "x".repeat(usize::try_from(MAX_RECORD_BYTES).unwrap());
        let (source, _) = source_of(format!("a\nshort\n{over}\n").as_bytes());
        let (_, rows) = source.next(Batch::default(), BATCH);
        let reason = rows.unwrap_err().to_string();
        assert!(reason.contains("longer than 1048576 bytes"), "{reason}");
    }

    #[test]
    fn a_line_without_end_stops_the_reader_near_the_limit() {
        // A quoted field never closed: the reader would buffer the whole file.
        let mut text = b"a\n\"".to_vec();
        text.resize(8 * 1024 * 1024, b'x');
        let (source, _) = source_of(&text);
        let (source, rows) = source.next(Batch::default(), BATCH);
        let reason = rows.unwrap_err().to_string();
        assert!(reason.contains("longer than"), "{reason}");
        assert!(source.reader.get_ref().read < 2 * MAX_RECORD_BYTES);
    }

    #[test]
    fn an_oversize_header_fails() {
        let mut text = "h".repeat(usize::try_from(MAX_RECORD_BYTES).unwrap() + 10);
        text.push_str("\n1\n");
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("f.csv"), text).unwrap();
        let settings = CsvSettings {
            tables: Vec::new(),
            dir: folder.path().to_owned(),
        };
        let Err(reason) = Source::open(settings.path("f.csv").unwrap(), 0) else {
            panic!("an oversize header is refused");
        };
        assert!(reason.to_string().contains("longer than"), "{reason}");
    }
}
