//! Where events go: JSON lines on stdout (default) or appended to a file.

use std::{
    io::{self, BufWriter, Write},
    path::Path,
};

use serde::Serialize;

use crate::secure_fs;

pub struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl Sink {
    /// `None` or `-` is stdout. A file is made 0600, or must be a regular
    /// file nobody else can write, reached without a link
    /// ([`secure_fs::open_append`]).
    pub fn open(path: Option<&Path>) -> Result<Self, secure_fs::TrustError> {
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(io::stdout()),
            Some(p) if p == Path::new("-") => Box::new(io::stdout()),
            Some(p) => Box::new(secure_fs::open_append(p)?),
        };
        Ok(Self {
            out: BufWriter::new(out),
        })
    }

    #[cfg(test)]
    pub fn to_writer(w: impl Write + Send + 'static) -> Self {
        Self {
            out: BufWriter::new(Box::new(w)),
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
}
