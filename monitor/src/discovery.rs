//! Files the kernel's name rules found, inspected off the ring-buffer
//! drain: a worker thread stats, reads and fingerprints each one, and
//! reports back what it is, so a slow disk never holds up the drain.

use std::{
    num::NonZeroUsize,
    os::unix::fs::MetadataExt as _,
    sync::mpsc::{self, Receiver, Sender},
};

use lru::LruCache;
use monitor_common::FileKey;

use crate::{
    identity::Identity,
    inventory::{
        Record,
        scan::{Scanner, Skip},
    },
    probes::NameRuleOpen,
    process::ProcessInfo,
};

/// An open of a file not watched yet, with who made it, taken when the
/// record was drained (the process may be gone by the time of the report).
#[derive(Debug)]
pub struct Request {
    pub found: NameRuleOpen,
    pub process: crate::event::Process,
    pub identity: Identity,
    pub info: ProcessInfo,
}

/// What the file turned out to be.
#[derive(Debug)]
pub enum Outcome {
    /// A secret, inventoried from now on.
    Inventoried(Box<Record>),
    /// A name that looked like a secret's, but the file holds none.
    NotSecret,
    /// Not inventoried: another namespace's file, unreadable, or a path the
    /// kernel cut. `host_path` is false when the host does not see this
    /// inode at the kernel's path (the reader's mount namespace differs).
    Uninventoried { host_path: bool },
}

#[derive(Debug)]
pub struct Report {
    pub request: Request,
    pub outcome: Outcome,
}

/// A file's identity and state: (dev, ino) can be reused after a delete,
/// the change time then differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    key: FileKey,
    ctime: i64,
    ctime_nsec: i64,
}

/// Start the worker; it stops when the returned sender is dropped.
pub fn spawn(
    scanner: Scanner,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
) -> std::io::Result<Sender<Request>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("discovery".into())
        .spawn(move || run(&scanner, &rx, &reports))?;
    Ok(tx)
}

fn run(
    scanner: &Scanner,
    requests: &Receiver<Request>,
    reports: &tokio::sync::mpsc::UnboundedSender<Report>,
) {
    // Files the name rules matched that hold no secret (a CA bundle named
    // `*.pem`), so that their opens are not inspected again and again.
    let mut not_secrets = LruCache::new(NonZeroUsize::new(4096).expect("nonzero"));
    for request in requests {
        let outcome = inspect(scanner, &request.found, &mut not_secrets);
        if reports.send(Report { request, outcome }).is_err() {
            return;
        }
    }
}

fn inspect(
    scanner: &Scanner,
    found: &NameRuleOpen,
    not_secrets: &mut LruCache<FileVersion, ()>,
) -> Outcome {
    let meta = std::fs::metadata(&found.path).ok().filter(|m| {
        crate::inventory::kernel_dev(m.dev()) == found.key.dev && m.ino() == found.key.ino
    });
    let Some(meta) = meta else {
        return Outcome::Uninventoried { host_path: false };
    };
    let version = FileVersion {
        key: found.key,
        ctime: meta.ctime(),
        ctime_nsec: meta.ctime_nsec(),
    };
    if not_secrets.get(&version).is_some() {
        return Outcome::NotSecret;
    }
    if found.truncated {
        return Outcome::Uninventoried { host_path: true };
    }
    match scanner.inspect_discovered(&found.path) {
        Ok(record) => Outcome::Inventoried(Box::new(record)),
        Err(Skip::NoSecret) => {
            not_secrets.put(version, ());
            Outcome::NotSecret
        }
        Err(Skip::Unreadable | Skip::TooBig | Skip::Special) => {
            Outcome::Uninventoried { host_path: true }
        }
    }
}
