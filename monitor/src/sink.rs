//! Where events go: JSON lines on stdout (default) or appended to a file.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

pub struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The file appended to, reopened on SIGHUP; `None` for stdout.
    path: Option<PathBuf>,
}

/// Events name secrets and the paths that hold them: an output file is
/// created readable by its owner alone.
const OUTPUT_MODE: u32 = 0o600;

impl Sink {
    /// `None` or `-` is stdout.
    pub fn open(path: Option<&Path>) -> io::Result<Self> {
        let path = path.filter(|p| *p != Path::new("-"));
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(io::stdout()),
            Some(p) => Box::new(open_append(p)?),
        };
        Ok(Self {
            out: BufWriter::new(out),
            path: path.map(Path::to_path_buf),
        })
    }

    #[cfg(test)]
    pub fn to_writer(w: impl Write + Send + 'static) -> Self {
        Self {
            out: BufWriter::new(Box::new(w)),
            path: None,
        }
    }

    /// Write one event as one line. Buffered: call [`Sink::flush`] after a
    /// batch so `tail -f | jq` sees it promptly.
    pub fn emit<T: Serialize>(&mut self, event: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The file events are appended to; `None` for stdout.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// After logrotate moved the file away: flush what is buffered into
    /// the old file, then append to a new one at the same path. Returns
    /// the path reopened, if any.
    pub fn reopen(&mut self) -> io::Result<Option<&Path>> {
        self.out.flush()?;
        if let Some(p) = &self.path {
            self.out = BufWriter::new(Box::new(open_append(p)?));
        }
        Ok(self.path.as_deref())
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(OUTPUT_MODE)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_new_output_file_is_private_and_reopens_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut sink = Sink::open(Some(&path)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        sink.emit(&"first").unwrap();
        let rotated = dir.path().join("events.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.emit(&"second").unwrap();
        assert_eq!(sink.reopen().unwrap(), Some(path.as_path()));
        sink.emit(&"third").unwrap();
        sink.flush().unwrap();
        // What was buffered before the reopen went to the renamed file.
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "\"first\"\n\"second\"\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "\"third\"\n");
        assert_eq!(mode(&path), 0o600);
    }
}
