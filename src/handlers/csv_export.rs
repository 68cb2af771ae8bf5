//! Kind `csv_export` `{"table", "date_column", "from", "to", "path"}`: writes the rows of an
//! allow-listed table whose `date_column` falls in `[from, to)` to a CSV file, one date at a time.
//! After each date the file is synced and the checkpoint records the next date and the file's
//! length; a later run cuts the file back to that length and goes on from that date, so a
//! crash never leaves a date half-written or written twice.

use std::io::SeekFrom;

use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::files::{column, table_columns};
use super::{Handler, Permanent};
use crate::config::CsvSettings;
use crate::context::JobContext;

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

/// The checkpoint: the next date to write, and the file's length and row count so far.
#[derive(Serialize, Deserialize)]
struct Exported {
    next: NaiveDate,
    bytes: u64,
    rows: u64,
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
        let cannot =
            |e: std::io::Error| Permanent::new(format!("cannot write {}: {e}", path.display()));

        let (mut file, mut done) = match ctx.progress_as::<Exported>()? {
            Some(done) => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .await
                    .map_err(cannot)?;
                file.set_len(done.bytes).await.map_err(cannot)?;
                file.seek(SeekFrom::End(0)).await.map_err(cannot)?;
                (file, done)
            }
            None => {
                let mut file = File::create(&path).await.map_err(cannot)?;
                let header = csv_lines([columns.iter().map(|c| Some(c.as_str())).collect()])?;
                file.write_all(&header).await.map_err(cannot)?;
                file.sync_data().await.map_err(cannot)?;
                let bytes = u64::try_from(header.len()).unwrap_or(u64::MAX);
                (
                    file,
                    Exported {
                        next: from,
                        bytes,
                        rows: 0,
                    },
                )
            }
        };
        while done.next < to {
            let rows = ctx
                .store()
                .export_day(table, date_column, &columns, done.next)
                .await?;
            let lines = csv_lines(
                rows.iter()
                    .map(|row| row.iter().map(Option::as_deref).collect()),
            )?;
            file.write_all(&lines).await.map_err(cannot)?;
            file.sync_data().await.map_err(cannot)?;
            done = Exported {
                next: done.next + Days::new(1),
                bytes: done.bytes + u64::try_from(lines.len()).unwrap_or(u64::MAX),
                rows: done.rows + u64::try_from(rows.len()).unwrap_or(u64::MAX),
            };
            ctx.checkpoint(&done).await?;
        }
        Ok(())
    }
}
