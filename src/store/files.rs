//! What the file kinds need of SQL: identifiers quoted with each dialect's own escaping, since
//! table and column names come from payloads and from the catalog, which may hold any name;
//! multi-row INSERTs of text fields; and the export query.

use super::Result;
use super::TextRow;

/// Whether `name` is a plain identifier: letters, digits and `_`, not starting with a digit.
/// Table names on the `csv_tables` allow-list must be; SQL never relies on it, as every
/// identifier is quoted.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// A batch of a `csv_import` job, and the checkpoint that counts it.
#[derive(Debug, Clone, Copy)]
pub struct ImportBatch<'a> {
    /// The job, and the worker that runs it.
    pub id: i64,
    pub worker: &'a str,
    /// An allow-listed table, and the columns the rows fill, in order.
    pub table: &'a str,
    pub columns: &'a [String],
    /// The rows' fields, row after row, as many to a row as there are `columns`: NULL for
    /// `None`, else text the database converts to its column's type.
    pub fields: &'a [Option<&'a str>],
    /// The job's checkpoint once the batch is in (JSON).
    pub progress: &'a str,
}

/// A dialect's way of quoting an identifier so that any name, whatever it holds, stays one name.
type Quote = fn(&str) -> String;

/// PostgreSQL's and SQLite's identifier quoting: `"` around, a `"` inside doubled.
pub(super) fn double_quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// MySQL's and MariaDB's identifier quoting: a backtick around, a backtick inside doubled.
pub(super) fn backticked(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `names` quoted and joined with commas, for a column list.
pub(super) fn column_list(names: &[String], quote: Quote) -> String {
    names
        .iter()
        .map(|name| quote(name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'a> ImportBatch<'a> {
    /// The rows, each its fields in `columns` order.
    pub(super) fn rows(&self) -> std::slice::Chunks<'a, Option<&'a str>> {
        self.fields.chunks(self.columns.len().max(1))
    }
}

/// `INSERT INTO table (columns) VALUES (?, …), …` for the batch's rows, `per_statement` rows
/// a statement at most, and fewer if a limit of `max_params` bound parameters needs it, for
/// dialects that take text for any column type.
pub(super) fn inserts<'a, DB>(
    batch: &ImportBatch<'a>,
    quote: Quote,
    per_statement: usize,
    max_params: usize,
) -> impl Iterator<Item = sqlx::QueryBuilder<'a, DB>> + 'a
where
    DB: sqlx::Database,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let width = batch.columns.len().max(1);
    let per_statement = per_statement.min(max_params / width).max(1);
    let head = format!(
        "INSERT INTO {} ({}) ",
        quote(batch.table),
        column_list(batch.columns, quote)
    );
    // Each statement is built when the one before has run: one statement's text in memory.
    batch
        .fields
        .chunks(per_statement * width)
        .map(move |chunk| {
            let mut insert = sqlx::QueryBuilder::new(&head);
            insert.push_values(chunk.chunks(width), |mut values, row| {
                for value in row {
                    values.push_bind(*value);
                }
            });
            insert
        })
}

/// Rows as CSV for PostgreSQL's `COPY … FROM STDIN (FORMAT csv, FORCE_NULL …)`, in pieces of
/// about `piece_bytes`, encoded as they are sent: the batch is not held twice. Every field is
/// quoted, so that no text can read as NULL or as the end of the data (`\.`), and quotes,
/// commas, line breaks and backslashes inside stay data; NULL is the empty quoted field, which
/// FORCE_NULL reads as NULL. An empty string would read as NULL too: `csv_import`, which reads
/// every empty field as NULL, never has one.
pub(super) fn copy_csv<'a>(
    rows: impl Iterator<Item = &'a [Option<&'a str>]> + 'a,
    piece_bytes: usize,
) -> impl Iterator<Item = Result<Vec<u8>>> + 'a {
    let mut rows = rows.peekable();
    std::iter::from_fn(move || {
        rows.peek()?;
        let mut writer = csv::WriterBuilder::new()
            .quote_style(csv::QuoteStyle::Always)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::with_capacity(piece_bytes + piece_bytes / 8));
        while writer.get_ref().len() < piece_bytes {
            let Some(row) = rows.next() else { break };
            let fields = row.iter().map(|field| field.unwrap_or(""));
            // Flushed record by record, so that the piece's length is known.
            if let Err(error) = writer
                .write_record(fields)
                .and_then(|()| Ok(writer.flush()?))
            {
                return Some(Err(sqlx::Error::Encode(Box::new(error))));
            }
        }
        Some(
            writer
                .into_inner()
                .map_err(|error| sqlx::Error::Encode(Box::new(error.into_error()))),
        )
    })
}

/// The dialect's spellings an export query needs: identifier quoting, text type, and the two
/// placeholders of a day's bounds.
pub(super) struct ExportDialect {
    pub(super) quote: Quote,
    pub(super) text: &'static str,
    pub(super) from: &'static str,
    pub(super) until: &'static str,
}

/// `SELECT` the `columns` of `table` as text for rows whose `date_column` lies between the two
/// bound placeholders, in date order. Every name is quoted: one the catalog returns may hold
/// anything, quotes and parentheses included.
pub(super) fn export_sql(
    table: &str,
    date_column: &str,
    columns: &[String],
    dialect: &ExportDialect,
) -> String {
    let ExportDialect {
        quote,
        text,
        from,
        until,
    } = dialect;
    let fields: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST({} AS {text})", quote(c)))
        .collect();
    let date = quote(date_column);
    let first = quote(columns.first().map(String::as_str).unwrap_or(date_column));
    format!(
        "SELECT {} FROM {} WHERE {date} >= {from} AND {date} < {until} ORDER BY {date}, {first}",
        fields.join(", "),
        quote(table),
    )
}

/// A row as text fields, in column order.
pub(super) fn text_row<R: sqlx::Row>(row: &R) -> Result<TextRow>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    (0..row.len()).map(|i| row.try_get(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain_names_only() {
        for good in ["orders", "_tmp", "Order_2018"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in [
            "",
            "2018",
            "orders; DROP TABLE jobs",
            "a.b",
            "naïve",
            "a\"b",
            &"x".repeat(65),
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    /// Reads `copy_csv`'s output back as PostgreSQL's CSV mode does: a quoted empty field
    /// (FORCE_NULL) is NULL.
    fn read_back(pieces: &[Vec<u8>]) -> Vec<TextRow> {
        let text: Vec<u8> = pieces.concat();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_slice());
        reader
            .records()
            .map(|record| {
                let record = record.unwrap();
                record
                    .iter()
                    .map(|field| (!field.is_empty()).then(|| field.to_owned()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn copy_csv_quotes_every_field_and_keeps_nulls() {
        let hostile = [
            "a,b",
            "say \"hi\"",
            "two\nlines\r\n",
            "back\\slash",
            "\\N",
            "\\.",
            "NULL",
            "naïve ✓ 日本",
            " padded ",
            "nul\0byte",
        ];
        let rows: Vec<TextRow> = hostile
            .iter()
            .map(|text| vec![Some((*text).to_owned()), None, Some("x".to_owned())])
            .chain([vec![None, None, None]])
            .collect();
        let fields: Vec<Vec<Option<&str>>> = rows
            .iter()
            .map(|row| row.iter().map(Option::as_deref).collect())
            .collect();
        let encode = |piece_bytes| -> Vec<Vec<u8>> {
            copy_csv(fields.iter().map(Vec::as_slice), piece_bytes)
                .map(Result::unwrap)
                .collect()
        };
        let pieces = encode(1);
        assert_eq!(pieces.len(), rows.len(), "a piece a row");
        assert!(encode(40).len() < rows.len(), "rows share pieces");
        assert_eq!(encode(1 << 20).len(), 1);
        let text = String::from_utf8(pieces.concat()).unwrap();
        assert!(text.starts_with("\"a,b\",\"\",\"x\"\n"), "{text}");
        assert!(text.contains("\"\\.\""), "the end marker is quoted: {text}");
        assert!(text.ends_with("\"\",\"\",\"\"\n"), "{text}");
        assert_eq!(read_back(&pieces), rows);
        assert_eq!(copy_csv(std::iter::empty(), 16).count(), 0);
    }

    #[test]
    fn quoting_keeps_any_name_one_identifier() {
        assert_eq!(double_quoted("orders"), "\"orders\"");
        assert_eq!(double_quoted("a\"b"), "\"a\"\"b\"");
        assert_eq!(backticked("a`b"), "`a``b`");
        let crafted = "a\"AS TEXT),(SELECT current_user)::TEXT,CAST(\"a".to_owned();
        let dialect = ExportDialect {
            quote: double_quoted,
            text: "TEXT",
            from: "$1",
            until: "$2",
        };
        let sql = export_sql("t", "day", &[crafted, "day".into()], &dialect);
        assert_eq!(
            sql,
            "SELECT CAST(\"a\"\"AS TEXT),(SELECT current_user)::TEXT,CAST(\"\"a\" AS TEXT), \
             CAST(\"day\" AS TEXT) FROM \"t\" WHERE \"day\" >= $1 AND \"day\" < $2 \
             ORDER BY \"day\", \"a\"\"AS TEXT),(SELECT current_user)::TEXT,CAST(\"\"a\""
        );
    }
}
