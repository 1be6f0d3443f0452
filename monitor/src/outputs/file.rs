//! Local outputs: JSON lines on stdout, or appended to a file that rotates
//! by size and is reopened when logrotate moved it.

use crate::secure_fs;

use std::{
    fs::File,
    io::{self, BufWriter, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Open `path` to append events: created 0600 when missing, else a
/// regular file nobody else can write, never reached through a link planted
/// in its place ([`secure_fs::open_append`]).
pub fn open_append(path: &Path) -> io::Result<File> {
    secure_fs::open_append(path).map_err(|e| io::Error::other(e.to_string()))
}

enum Target {
    Stdout,
    File {
        path: PathBuf,
        /// Rotate past this many bytes, keeping `max_files` old files.
        max_size: Option<u64>,
        max_files: u32,
        size: u64,
    },
}

pub struct LineWriter {
    target: Target,
    out: BufWriter<Box<dyn io::Write + Send>>,
}

impl LineWriter {
    pub fn stdout() -> Self {
        Self {
            target: Target::Stdout,
            out: BufWriter::new(Box::new(io::stdout())),
        }
    }

    pub fn file(path: &Path, max_size: Option<u64>, max_files: u32) -> io::Result<Self> {
        let f = open_append(path)?;
        let size = f.metadata()?.size();
        Ok(Self {
            target: Target::File {
                path: path.to_path_buf(),
                max_size,
                max_files,
                size,
            },
            out: BufWriter::new(Box::new(f)),
        })
    }

    /// Write one event as one line, rotating first when it would not fit.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let n = line.len() as u64 + 1;
        if let Target::File { max_size, size, .. } = &self.target
            && max_size.is_some_and(|max| *size > 0 && *size + n > max)
        {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        if let Target::File { size, .. } = &mut self.target {
            *size += n;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// `path` → `path.1` → ... → `path.N` (dropped), then a new `path`.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let Target::File {
            path, max_files, ..
        } = &self.target
        else {
            return Ok(());
        };
        let numbered = |i: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if *max_files == 0 {
            std::fs::remove_file(path)?;
        } else {
            for i in (1..*max_files).rev() {
                match std::fs::rename(numbered(i), numbered(i + 1)) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.reopen()
    }

    /// Close the file and open `path` again: after logrotate moved it away,
    /// events go to a new file. Stdout stays as it is.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if let Target::File { path, size, .. } = &mut self.target {
            let f = open_append(path)?;
            *size = f.metadata()?.size();
            self.out = BufWriter::new(Box::new(f));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn created_private_appended_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut w = LineWriter::file(&path, None, 0).unwrap();
        w.write_line("{\"a\":1}").unwrap();
        w.flush().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut w = LineWriter::file(&path, None, 0).unwrap();
        w.write_line("{\"a\":2}").unwrap();
        w.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(open_append(&link).is_err());
    }

    #[test]
    fn rotates_by_size_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let line = "x".repeat(99);
        let mut w = LineWriter::file(&path, Some(250), 2).unwrap();
        for _ in 0..7 {
            w.write_line(&line).unwrap();
        }
        w.flush().unwrap();
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size(&path), 100);
        assert_eq!(size(&dir.path().join("events.json.1")), 200);
        assert_eq!(size(&dir.path().join("events.json.2")), 200);
        assert!(!dir.path().join("events.json.3").exists());

        // logrotate moves the file away; a reopen starts a new one.
        std::fs::rename(&path, dir.path().join("moved.json")).unwrap();
        w.reopen().unwrap();
        w.write_line("after").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }
}
