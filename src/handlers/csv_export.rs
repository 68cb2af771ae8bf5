//! Kind `csv_export` `{"table", "date_column", "from", "to", "path"}`: writes the rows of an
//! allow-listed table whose `date_column` falls in `[from, to)` to a CSV file, one date at a time.
//! After each date the file is synced and the checkpoint records the next date and the file's
//! length; a later run cuts the file back to that length and goes on from that date, so a
//! crash never leaves a date half-written or written twice.
//!
//! Cutting a file back is only safe on the file this job made. So a first run creates its file
//! and refuses one that already exists, and the checkpoint records the file's device and inode:
//! a later run that finds another file under the name, none, or one shorter than what was
//! written fails the job in words rather than cut anything. A date's rows stream from the
//! database to the file a buffer at a time, so memory is bounded whatever a date holds.

use std::io::SeekFrom;

use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::fs::File;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::files::CsvSettings;
use super::files::{CsvPath, FileId, column, table_columns};
use super::{Handler, Permanent};
use crate::context::JobContext;
use crate::store::Store;

/// Bytes gathered before they are written to the file.
const FLUSH_BYTES: usize = 64 * 1024;

pub struct CsvExport {
    pub files: CsvSettings,
}

#[derive(Deserialize)]
struct Args {
    table: String,
    date_column: String,
    from: String,
    to: String,
    path: String,
}

/// The checkpoint: the next date to write, the file's length and row count so far, and which
/// file it is. Checkpoints written before the file's identity was recorded lack `dev` and `ino`.
#[derive(Serialize, Deserialize)]
struct Exported {
    next: NaiveDate,
    bytes: u64,
    rows: u64,
    #[serde(default)]
    dev: Option<u64>,
    #[serde(default)]
    ino: Option<u64>,
}

impl Exported {
    fn file(&self) -> Option<FileId> {
        Some(FileId {
            dev: self.dev?,
            ino: self.ino?,
        })
    }
}

fn date(field: &str, text: &str) -> Result<NaiveDate, Permanent> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| {
        Permanent::new(format!(
            "{field} {text:?} is not a date like 2018-07-01: {e}"
        ))
    })
}

/// `rows` as CSV lines; NULL is written as an empty field.
fn csv_lines<'a>(rows: impl IntoIterator<Item = Vec<Option<&'a str>>>) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.write_record(row.iter().map(|field| field.unwrap_or("")))?;
    }
    Ok(writer.into_inner()?)
}

#[async_trait]
impl Handler for CsvExport {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        let args: Args = ctx.payload_as()?;
        let (from, to) = (date("from", &args.from)?, date("to", &args.to)?);
        if from > to {
            return Err(Permanent::new(format!("from {from} is after to {to}")).into());
        }
        let table = self.files.table(&args.table)?;
        let path = self.files.path(&args.path)?;
        let columns = table_columns(ctx, table).await?;
        let date_column = column(&args.date_column, &columns, table)?;
        let shown = path.shown();
        let cannot = |e: std::io::Error| Permanent::new(format!("cannot write {shown}: {e}"));

        let (mut file, mut done) = match ctx.progress_as::<Exported>()? {
            Some(done) => {
                let file = reopen(path, &done).await?;
                (file, done)
            }
            None => {
                let (file, id) = run_blocking(move || path.create_new()).await??;
                let mut file = File::from_std(file);
                let header = csv_lines([columns.iter().map(|c| Some(c.as_str())).collect()])?;
                file.write_all(&header).await.map_err(cannot)?;
                file.sync_data().await.map_err(cannot)?;
                let done = Exported {
                    next: from,
                    bytes: u64::try_from(header.len()).unwrap_or(u64::MAX),
                    rows: 0,
                    dev: Some(id.dev),
                    ino: Some(id.ino),
                };
                // At once: a run after a crash must know this file as its own.
                ctx.checkpoint(&done).await?;
                (file, done)
            }
        };
        while done.next < to {
            let day = done.next;
            let written = write_day(
                ctx.store().await,
                &mut file,
                table,
                date_column,
                &columns,
                day,
            );
            let (bytes, rows) = ctx.beating(written).await?.map_err(cannot)?;
            file.sync_data().await.map_err(cannot)?;
            done = Exported {
                next: day + Days::new(1),
                bytes: done.bytes + bytes,
                rows: done.rows + rows,
                ..done
            };
            ctx.checkpoint(&done).await?;
        }
        Ok(())
    }
}

/// The file an earlier run created, cut back to its checkpoint; or why it cannot be.
async fn reopen(path: CsvPath, done: &Exported) -> anyhow::Result<File> {
    let shown = path.shown();
    let never = "csv_export never overwrites a file it did not create";
    let Some(expected) = done.file() else {
        return Err(Permanent::new(format!(
            "cannot tell whether {shown} is the file an earlier run of this job created (its \
             checkpoint does not record which file it wrote); {never}"
        ))
        .into());
    };
    let Some((file, found, length)) = run_blocking(move || path.open_write()).await?? else {
        return Err(Permanent::new(format!(
            "{shown}, which an earlier run of this job was writing, is gone"
        ))
        .into());
    };
    if found != expected {
        return Err(Permanent::new(format!(
            "{shown} is no longer the file an earlier run of this job created; {never}"
        ))
        .into());
    }
    if length < done.bytes {
        return Err(Permanent::new(format!(
            "{shown} holds {length} bytes, fewer than the {} an earlier run of this job wrote: \
             it was changed by someone else",
            done.bytes
        ))
        .into());
    }
    let cannot = |e: std::io::Error| Permanent::new(format!("cannot write {shown}: {e}"));
    let mut file = File::from_std(file);
    file.set_len(done.bytes).await.map_err(cannot)?;
    file.seek(SeekFrom::End(0)).await.map_err(cannot)?;
    Ok(file)
}

/// Appends the rows of `day` to `file` as they arrive, without syncing; returns the bytes and
/// rows written. The outer error is the database's, the inner one the file's.
async fn write_day(
    store: &dyn Store,
    file: &mut File,
    table: &str,
    date_column: &str,
    columns: &[String],
    day: NaiveDate,
) -> anyhow::Result<std::io::Result<(u64, u64)>> {
    let mut rows = store.export_day(table, date_column, columns, day);
    let mut lines = csv::Writer::from_writer(Vec::with_capacity(FLUSH_BYTES));
    let (mut bytes, mut count) = (0, 0);
    while let Some(row) = rows.try_next().await? {
        let fields = row.iter().map(|field| field.as_deref().unwrap_or(""));
        if let Err(error) = lines.write_record(fields) {
            return Ok(Err(error.into()));
        }
        count += 1;
        if lines.get_ref().len() >= FLUSH_BYTES {
            match drain(lines, file).await {
                Ok((emptied, written)) => (lines, bytes) = (emptied, bytes + written),
                Err(error) => return Ok(Err(error)),
            }
        }
    }
    Ok(drain(lines, file)
        .await
        .map(|(_, last)| (bytes + last, count)))
}

/// Writes out what `lines` gathered, and hands it back empty with the count of bytes written.
async fn drain(
    lines: csv::Writer<Vec<u8>>,
    file: &mut File,
) -> std::io::Result<(csv::Writer<Vec<u8>>, u64)> {
    let mut buffer = lines
        .into_inner()
        .map_err(csv::IntoInnerError::into_error)?;
    file.write_all(&buffer).await?;
    let written = u64::try_from(buffer.len()).unwrap_or(u64::MAX);
    buffer.clear();
    Ok((csv::Writer::from_writer(buffer), written))
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

    #[test]
    fn a_checkpoint_from_before_file_identities_still_reads() {
        let old: Exported =
            serde_json::from_str(r#"{"next":"2018-07-02","bytes":10,"rows":1}"#).unwrap();
        assert!(old.file().is_none());
        let new = Exported {
            dev: Some(1),
            ino: Some(2),
            ..old
        };
        let text = serde_json::to_string(&new).unwrap();
        let back: Exported = serde_json::from_str(&text).unwrap();
        assert_eq!(back.file(), Some(FileId { dev: 1, ino: 2 }));
    }
}
