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
    pub rows: &'a [TextRow],
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

/// `INSERT INTO table (columns) VALUES (?, …), …` for `rows`, in as many statements as a limit
/// of `max_params` bound parameters needs, for dialects that take text for any column type.
pub(super) fn inserts<'a, DB>(
    table: &str,
    columns: &[String],
    rows: &'a [TextRow],
    quote: Quote,
    max_params: usize,
) -> Vec<sqlx::QueryBuilder<'a, DB>>
where
    DB: sqlx::Database,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let per_statement = (max_params / columns.len().max(1)).clamp(1, 1000);
    let head = format!(
        "INSERT INTO {} ({}) ",
        quote(table),
        column_list(columns, quote)
    );
    rows.chunks(per_statement)
        .map(|chunk| {
            let mut insert = sqlx::QueryBuilder::new(head.clone());
            insert.push_values(chunk, |mut values, row| {
                for value in row {
                    values.push_bind(value.as_deref());
                }
            });
            insert
        })
        .collect()
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
