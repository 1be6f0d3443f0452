//! Files the kernel's name rules found, inspected off the ring-buffer
//! drain: a worker thread stats, reads and fingerprints each one, and
//! reports back what it is, so a slow disk never holds up the drain.

use std::{
    ffi::OsStr,
    num::NonZeroUsize,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirEntryExt as _, MetadataExt as _},
    },
    path::{Component, Path, PathBuf},
    sync::mpsc::{self, Receiver, Sender},
};

use lru::LruCache;
use monitor_common::{COMPONENT_LEN, FileKey, PATH_COMPONENTS, user::NameRuleOpen};

use crate::{
    identity::Identity,
    inventory::{
        Record,
        scan::{Scanner, Skip},
    },
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
    /// kernel cut. `path` is the whole path when it could be told (`None`:
    /// the kernel's is cut and stays so); `host_path` is false when the host
    /// does not see this inode there (the reader's mount namespace differs).
    Uninventoried {
        path: Option<PathBuf>,
        host_path: bool,
    },
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

/// Stats, reads and fingerprints what the name rules found, remembering
/// the files that hold no secret (a CA bundle named `*.pem`), so that their
/// opens are not inspected again and again. Without a scanner (tests)
/// nothing is inventoried.
pub struct Inspector {
    scanner: Option<Scanner>,
    /// Keyed by what changes when the file does, or when its inode is
    /// recycled for another file.
    not_secrets: LruCache<FileVersion, ()>,
}

impl Inspector {
    pub fn new(scanner: Option<Scanner>) -> Self {
        Self {
            scanner,
            not_secrets: LruCache::new(NonZeroUsize::new(4096).expect("nonzero")),
        }
    }

    pub fn inspect(&mut self, found: &NameRuleOpen) -> Outcome {
        // A cut path is made whole where the directory listing can.
        let path = if found.truncated {
            whole_path(&found.path, found.key)
        } else {
            Some(found.path.clone())
        };
        let meta = path.as_ref().and_then(|p| {
            std::fs::metadata(p).ok().filter(|m| {
                crate::inventory::kernel_dev(m.dev()) == found.key.dev && m.ino() == found.key.ino
            })
        });
        let Some(meta) = meta else {
            return Outcome::Uninventoried {
                host_path: false,
                path,
            };
        };
        let version = FileVersion {
            key: found.key,
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        };
        if self.not_secrets.get(&version).is_some() {
            return Outcome::NotSecret;
        }
        let (Some(scanner), Some(whole)) = (&self.scanner, &path) else {
            return Outcome::Uninventoried {
                path,
                host_path: true,
            };
        };
        match scanner.inspect_discovered(whole) {
            Ok(record) => Outcome::Inventoried(Box::new(record)),
            Err(Skip::NoSecret) => {
                self.not_secrets.put(version, ());
                Outcome::NotSecret
            }
            Err(Skip::Unreadable | Skip::TooBig | Skip::Special) => Outcome::Uninventoried {
                path,
                host_path: true,
            },
        }
    }
}

/// The kernel keeps `COMPONENT_LEN - 1` bytes of each name and
/// `PATH_COMPONENTS` names. When only the last name was cut (the others
/// are shorter and the walk reached the root), the directory holds the
/// whole name: the entry with the file's inode and the cut name as prefix.
/// `None` when that cannot be told.
fn whole_path(cut: &Path, key: FileKey) -> Option<PathBuf> {
    /// Bounds the listing of a huge directory.
    const MAX_ENTRIES: usize = 65_536;
    let names: Vec<&OsStr> = cut
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let limit = COMPONENT_LEN - 1;
    let (leaf, dirs) = names.split_last()?;
    if names.len() >= PATH_COMPONENTS || leaf.len() < limit || dirs.iter().any(|d| d.len() >= limit)
    {
        return None;
    }
    let parent = cut.parent()?;
    let entry = std::fs::read_dir(parent)
        .ok()?
        .take(MAX_ENTRIES)
        .flatten()
        .find(|e| e.ino() == key.ino && e.file_name().as_bytes().starts_with(leaf.as_bytes()))?;
    let path = entry.path();
    let meta = std::fs::metadata(&path).ok()?;
    (crate::inventory::kernel_dev(meta.dev()) == key.dev && meta.ino() == key.ino).then_some(path)
}

/// Start the worker; it stops when the returned sender is dropped.
pub fn spawn(
    scanner: Scanner,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
) -> std::io::Result<Sender<Request>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("discovery".into())
        .spawn(move || run(Inspector::new(Some(scanner)), &rx, &reports))?;
    Ok(tx)
}

fn run(
    mut inspector: Inspector,
    requests: &Receiver<Request>,
    reports: &tokio::sync::mpsc::UnboundedSender<Report>,
) {
    for request in requests {
        let outcome = inspector.inspect(&request.found);
        if reports.send(Report { request, outcome }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name longer than the kernel keeps is found whole in its
    /// directory, by inode; a deep path or a cut directory name is not.
    #[test]
    fn a_cut_last_name_is_made_whole_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let long = "a-service-account-credentials-for-prod";
        let names = [format!("{long}-1.pem"), format!("{long}-2.pem")];
        let mut keys = Vec::new();
        for n in &names {
            let path = dir.path().join(n);
            std::fs::write(&path, "x").unwrap();
            let m = std::fs::metadata(&path).unwrap();
            keys.push(FileKey {
                dev: crate::inventory::kernel_dev(m.dev()),
                ino: m.ino(),
            });
        }
        let cut = dir.path().join(&long[..COMPONENT_LEN - 1]);
        for (n, key) in names.iter().zip(&keys) {
            assert_eq!(whole_path(&cut, *key), Some(dir.path().join(n)));
        }
        let other = FileKey {
            dev: keys[0].dev,
            ino: keys[0].ino + 1_000_000,
        };
        assert_eq!(whole_path(&cut, other), None, "no such inode here");
        let short = dir.path().join("short");
        assert_eq!(whole_path(&short, keys[0]), None, "not a cut name");
        let deep: PathBuf = std::iter::once("/".to_string())
            .chain((0..PATH_COMPONENTS - 1).map(|i| i.to_string()))
            .chain(std::iter::once(long[..COMPONENT_LEN - 1].to_string()))
            .collect();
        assert_eq!(
            whole_path(&deep, keys[0]),
            None,
            "the walk may have stopped short"
        );
    }
}
