//! Where events go: JSON lines on stdout (default) or appended to a file.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use serde::Serialize;

pub struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl Sink {
    /// `None` or `-` is stdout.
    pub fn open(path: Option<&Path>) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(io::stdout()),
            Some(p) if p == Path::new("-") => Box::new(io::stdout()),
            Some(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
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
