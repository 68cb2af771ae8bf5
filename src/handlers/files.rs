//! What the file kinds may touch, checked before any of it is used: a table must be on the
//! `csv_tables` allow-list (so no identifier from a payload reaches SQL unchecked), and a path
//! must stay inside `csv_dir`.

use std::path::{Component, Path, PathBuf};

use super::Permanent;
use crate::config::CsvSettings;
use crate::context::JobContext;
use crate::store::is_identifier;

impl CsvSettings {
    /// `name` if it is on the allow-list.
    pub(crate) fn table<'a>(&self, name: &'a str) -> Result<&'a str, Permanent> {
        if self.tables.iter().any(|allowed| allowed == name) {
            return Ok(name);
        }
        let allowed = if self.tables.is_empty() {
            "none; set csv_tables".to_owned()
        } else {
            self.tables.join(", ")
        };
        Err(Permanent::new(format!(
            "table {name:?} is not in csv_tables (allowed: {allowed})"
        )))
    }

    /// `relative` inside `csv_dir`; absolute paths and `..` are refused.
    pub(crate) fn path(&self, relative: &str) -> Result<PathBuf, Permanent> {
        let path = Path::new(relative);
        let inside = !relative.is_empty()
            && path
                .components()
                .all(|part| matches!(part, Component::Normal(_)));
        if !inside {
            return Err(Permanent::new(format!(
                "path {relative:?} must be relative to csv_dir, without '..'"
            )));
        }
        Ok(self.dir.join(path))
    }
}

/// The columns of `table`, or a permanent failure if it does not exist.
pub(crate) async fn table_columns(ctx: &JobContext, table: &str) -> anyhow::Result<Vec<String>> {
    let columns = ctx.store().columns(table).await?;
    if columns.is_empty() {
        return Err(Permanent::new(format!("table {table:?} does not exist")).into());
    }
    Ok(columns)
}

/// `column` if it is one of `columns`, which came from the database's catalog.
pub(crate) fn column<'a>(
    name: &'a str,
    columns: &[String],
    table: &str,
) -> Result<&'a str, Permanent> {
    if is_identifier(name) && columns.iter().any(|column| column == name) {
        Ok(name)
    } else {
        Err(Permanent::new(format!(
            "{name:?} is not a column of table {table:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_folder_and_tables_on_the_list() {
        let settings = CsvSettings {
            tables: vec!["orders".into()],
            dir: "/data".into(),
        };
        assert_eq!(
            settings.path("in/orders.csv").unwrap(),
            Path::new("/data/in/orders.csv")
        );
        for bad in ["", "/etc/passwd", "../secret.csv", "in/../../x", "./x"] {
            assert!(settings.path(bad).is_err(), "{bad}");
        }
        assert!(settings.table("orders").is_ok());
        let refused = settings.table("jobs").unwrap_err().to_string();
        assert!(
            refused.contains("not in csv_tables (allowed: orders)"),
            "{refused}"
        );
    }
}
