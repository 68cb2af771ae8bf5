//! What the file kinds may touch, checked before any of it is used: a table must be on the
//! `csv_tables` allow-list, and a file must lie inside `csv_dir`.
//!
//! A payload names a file, and anyone who may INSERT a row writes payloads, so a path check on
//! the text alone is not enough: a symlink inside the folder could lead out of it, and a FIFO or
//! a device could hang a thread or stream without end. Files are therefore opened relative to the
//! folder through `cap-std`, which refuses any path (symlinks included) that resolves outside
//! it, and only regular files are taken, checked before opening and again on the opened handle,
//! which is opened non-blocking so that nothing swapped in between can block the open.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, FileTypeExt as _, OpenOptions, OpenOptionsExt as _};

use super::Permanent;
use crate::context::JobContext;

/// The permissions of a file jobsd creates: not for every user of the machine to read.
const CREATED_MODE: u32 = 0o640;

/// Flags of every open: a FIFO opens at once instead of waiting for a peer, and a terminal never
/// becomes the daemon's.
const OPEN_FLAGS: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

/// What the file kinds may touch: the `csv_tables` and `csv_dir` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvSettings {
    pub tables: Vec<String>,
    pub dir: PathBuf,
}

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

    /// `relative` inside `csv_dir`; absolute paths and `..` are refused here, in words, and
    /// symlinks that lead out when the file is opened.
    pub(crate) fn path(&self, relative: &str) -> Result<CsvPath, Permanent> {
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
        Ok(CsvPath {
            dir: self.dir.clone(),
            relative: path.to_owned(),
        })
    }
}

/// The device and inode of a file: which file it is, whatever its name now leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A file named by a payload, inside `csv_dir`. Its methods block: call them off the async
/// threads.
#[derive(Debug, Clone)]
pub(crate) struct CsvPath {
    dir: PathBuf,
    relative: PathBuf,
}

impl CsvPath {
    /// The path as messages show it.
    pub(crate) fn shown(&self) -> String {
        self.dir.join(&self.relative).display().to_string()
    }

    /// Opens an existing regular file to read.
    pub(crate) fn open_read(&self) -> Result<File, Permanent> {
        let cannot = |e: &dyn std::fmt::Display| self.refusal("read", e);
        let folder = self.folder().map_err(|e| cannot(&e))?;
        self.regular_before_open(&folder, "read")?;
        let mut options = OpenOptions::new();
        options.read(true).custom_flags(OPEN_FLAGS);
        let file = folder
            .open_with(&self.relative, &options)
            .map_err(|e| cannot(&e))?
            .into_std();
        self.regular_after_open(&file, "read")?;
        Ok(file)
    }

    /// Creates the file, which must not exist yet, to write; with its identity.
    pub(crate) fn create_new(&self) -> Result<(File, FileId), Permanent> {
        let cannot = |e: &dyn std::fmt::Display| self.refusal("write", e);
        let folder = self.folder().map_err(|e| cannot(&e))?;
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .mode(CREATED_MODE)
            .custom_flags(OPEN_FLAGS);
        let file = match folder.open_with(&self.relative, &options) {
            Ok(file) => file.into_std(),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Permanent::new(format!(
                    "{} already exists; csv_export never overwrites a file it did not create",
                    self.shown()
                )));
            }
            Err(e) => return Err(cannot(&e)),
        };
        let id = self.regular_after_open(&file, "write")?;
        Ok((file, id))
    }

    /// Opens the existing regular file to write, without truncating it; with its identity and
    /// length. `None` if there is no such file.
    pub(crate) fn open_write(&self) -> Result<Option<(File, FileId, u64)>, Permanent> {
        let cannot = |e: &dyn std::fmt::Display| self.refusal("write", e);
        let folder = self.folder().map_err(|e| cannot(&e))?;
        match folder.symlink_metadata(&self.relative) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            _ => self.regular_before_open(&folder, "write")?,
        }
        let mut options = OpenOptions::new();
        options.write(true).custom_flags(OPEN_FLAGS);
        let file = folder
            .open_with(&self.relative, &options)
            .map_err(|e| cannot(&e))?
            .into_std();
        let id = self.regular_after_open(&file, "write")?;
        let length = file.metadata().map_err(|e| cannot(&e))?.len();
        Ok(Some((file, id, length)))
    }

    /// `csv_dir` itself, the only place given ambient authority: every path is opened beneath it.
    fn folder(&self) -> io::Result<Dir> {
        Dir::open_ambient_dir(&self.dir, ambient_authority())
    }

    /// Refuses what is not a regular file before it is opened: opening some (a FIFO without a
    /// writer, a tape) could wait or act. A symlink is looked through, inside the folder only.
    fn regular_before_open(&self, folder: &Dir, doing: &str) -> Result<(), Permanent> {
        let cannot = |e: &dyn std::fmt::Display| self.refusal(doing, e);
        let mut kind = folder
            .symlink_metadata(&self.relative)
            .map_err(|e| cannot(&e))?
            .file_type();
        if kind.is_symlink() {
            kind = folder
                .metadata(&self.relative)
                .map_err(|e| cannot(&e))?
                .file_type();
        }
        let what = not_regular(
            kind.is_file(),
            kind.is_dir(),
            kind.is_fifo(),
            kind.is_socket(),
            kind.is_block_device() || kind.is_char_device(),
        );
        match what {
            None => Ok(()),
            Some(what) => Err(cannot(&format!("not a regular file but {what}"))),
        }
    }

    /// Refuses what is not a regular file once opened, whatever the name led to by then.
    fn regular_after_open(&self, file: &File, doing: &str) -> Result<FileId, Permanent> {
        let cannot = |e: &dyn std::fmt::Display| self.refusal(doing, e);
        let metadata = file.metadata().map_err(|e| cannot(&e))?;
        let kind = metadata.file_type();
        let what = not_regular(
            kind.is_file(),
            kind.is_dir(),
            kind.is_fifo(),
            kind.is_socket(),
            kind.is_block_device() || kind.is_char_device(),
        );
        match what {
            None => Ok(FileId {
                dev: metadata.dev(),
                ino: metadata.ino(),
            }),
            Some(what) => Err(cannot(&format!("not a regular file but {what}"))),
        }
    }

    fn refusal(&self, doing: &str, error: &dyn std::fmt::Display) -> Permanent {
        Permanent::new(format!("cannot {doing} {}: {error}", self.shown()))
    }
}

/// What a file is, in words, if it is not a regular file.
fn not_regular(
    file: bool,
    dir: bool,
    fifo: bool,
    socket: bool,
    device: bool,
) -> Option<&'static str> {
    if file {
        None
    } else if dir {
        Some("a directory")
    } else if fifo {
        Some("a FIFO")
    } else if socket {
        Some("a socket")
    } else if device {
        Some("a device")
    } else {
        Some("something else")
    }
}

/// The columns of `table`, or a permanent failure if it does not exist.
pub(crate) async fn table_columns(ctx: &JobContext, table: &str) -> anyhow::Result<Vec<String>> {
    let columns = ctx.store().await.columns(table).await?;
    if columns.is_empty() {
        return Err(Permanent::new(format!("table {table:?} does not exist")).into());
    }
    Ok(columns)
}

/// `column` if it is one of `columns`, which came from the database's catalog. Any such name
/// is taken, however odd: queries quote every identifier.
pub(crate) fn column<'a>(
    name: &'a str,
    columns: &[String],
    table: &str,
) -> Result<&'a str, Permanent> {
    if columns.iter().any(|column| column == name) {
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
            settings.path("in/orders.csv").unwrap().shown(),
            "/data/in/orders.csv"
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

    #[test]
    fn only_regular_files_inside_the_folder_open() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "top secret").unwrap();
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("plain.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), folder.path().join("out"))
            .unwrap();
        std::os::unix::fs::symlink("plain.csv", folder.path().join("in")).unwrap();
        std::fs::create_dir(folder.path().join("sub")).unwrap();
        let settings = CsvSettings {
            tables: Vec::new(),
            dir: folder.path().to_owned(),
        };
        let open = |name: &str| settings.path(name).unwrap().open_read();
        assert!(open("plain.csv").is_ok());
        assert!(open("in").is_ok(), "a link that stays inside is followed");
        let escaped = open("out").unwrap_err().to_string();
        assert!(escaped.starts_with("cannot read"), "{escaped}");
        assert!(!escaped.contains("top secret"), "{escaped}");
        let directory = open("sub").unwrap_err().to_string();
        assert!(directory.contains("not a regular file"), "{directory}");

        let created = settings.path("new.csv").unwrap().create_new().unwrap();
        let mode = created.0.metadata().unwrap().mode();
        assert_eq!(mode & 0o007, 0, "{mode:o}");
        let again = settings.path("new.csv").unwrap().create_new().unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        let (_, id, _) = settings
            .path("new.csv")
            .unwrap()
            .open_write()
            .unwrap()
            .unwrap();
        assert_eq!(id, created.1);
        let linked_out = settings.path("out").unwrap().create_new().unwrap_err();
        assert!(linked_out.to_string().contains("already exists"));
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "top secret"
        );
    }
}
