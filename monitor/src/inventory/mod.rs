//! The inventory: which secrets exist on the host, what they are, whether
//! they are static, and their keyed fingerprints. The one list of watched
//! secrets: the agent fills the kernel's watch map from it, and `sync`
//! keeps both current as files are created, rotated and removed.

pub mod catalog;
mod classify;
pub mod fingerprint;
pub mod listing;
pub mod scan;
pub mod settings;
pub mod sync;

use std::{collections::HashMap, io, path::PathBuf};

use chrono::{DateTime, Utc};
use monitor_common::FileKey;

use crate::secret::{Lifetime, SecretType};

/// One secret file. Holds no value: only where it is, what it is, and a
/// keyed fingerprint of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Stable across rotations: derived from the path.
    pub id: String,
    /// As shown: absolute, relative to the scanned root.
    pub path: PathBuf,
    /// What the kernel matches opens by.
    pub key: FileKey,
    /// This file's number while it is watched: a new inode gets a new one.
    /// Given by [`Inventory`]; events are folded by it.
    pub slot: u32,
    pub secret_type: SecretType,
    pub lifetime: Lifetime,
    /// Why the lifetime is what it is.
    pub reason: String,
    pub fingerprint: String,
    /// A safe prefix or label, e.g. `AKIA…`.
    pub hint: Option<String>,
    pub expires: Option<DateTime<Utc>>,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
    pub mtime: DateTime<Utc>,
}

/// What `sync` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryChange {
    /// A new secret, or a known one with new content, inode or mode.
    Upsert(Record),
    /// The secret at this path is gone.
    Remove(PathBuf),
}

/// The kernel watch-map edits a change needs: add before remove, so that
/// a rotated secret is never unwatched in between.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MapEdit {
    /// A key to watch, and its slot.
    pub add: Option<(FileKey, u32)>,
    pub remove: Option<FileKey>,
}

#[derive(Debug, Default)]
pub struct Inventory {
    by_key: HashMap<FileKey, Record>,
    keys: HashMap<PathBuf, FileKey>,
    slots: HashMap<u32, FileKey>,
    next_slot: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("--watch {path}: {}", crate::errors::error_text(err))]
pub struct WatchPathError {
    path: String,
    err: io::Error,
}

impl Inventory {
    pub fn new(records: Vec<Record>) -> Self {
        let mut inv = Self::default();
        for r in records {
            inv.apply(InventoryChange::Upsert(r));
        }
        inv
    }

    pub fn get(&self, key: &FileKey) -> Option<&Record> {
        self.by_key.get(key)
    }

    pub fn by_slot(&self, slot: u32) -> Option<&Record> {
        self.slots.get(&slot).and_then(|key| self.by_key.get(key))
    }

    /// The secret at `path` (symlinks followed), if any.
    pub fn lookup_path(&self, path: &std::path::Path) -> Option<&Record> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        self.get(&FileKey {
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
        })
    }

    /// Whether a secret at `path` (as shown) is watched.
    pub fn has_path(&self, path: &std::path::Path) -> bool {
        self.keys.contains_key(path)
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.by_key.values()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Apply a change; returns what the kernel map needs.
    pub fn apply(&mut self, change: InventoryChange) -> MapEdit {
        match change {
            InventoryChange::Upsert(mut record) => {
                let mut edit = MapEdit::default();
                // Another path to the same file (a rename onto it) loses it.
                if let Some(other) = self.by_key.get(&record.key)
                    && other.path != record.path
                {
                    self.keys.remove(&other.path);
                }
                let key = record.key;
                if let Some(old) = self.keys.insert(record.path.clone(), key)
                    && old != key
                {
                    self.forget(&old);
                    edit.remove = Some(old);
                }
                match self.by_key.get(&key) {
                    Some(known) => record.slot = known.slot,
                    None => {
                        record.slot = self.next_slot;
                        self.next_slot = self.next_slot.wrapping_add(1);
                        self.slots.insert(record.slot, key);
                        edit.add = Some((key, record.slot));
                    }
                }
                self.by_key.insert(key, record);
                edit
            }
            InventoryChange::Remove(path) => MapEdit {
                add: None,
                remove: self.keys.remove(&path).inspect(|key| self.forget(key)),
            },
        }
    }

    /// What a full rescan changes: an upsert for each secret found that is
    /// new or differs from what is watched, and a removal for each watched
    /// path the scan did not find and `was_scanned` says a scan covered
    /// before (a file the kernel's name rules found elsewhere stays).
    pub fn rescan_changes(
        &self,
        found: Vec<Record>,
        was_scanned: impl Fn(&std::path::Path) -> bool,
    ) -> Vec<InventoryChange> {
        let found_paths: std::collections::HashSet<PathBuf> =
            found.iter().map(|r| r.path.clone()).collect();
        let mut changes: Vec<InventoryChange> = found
            .into_iter()
            .filter(|r| {
                let known = self.keys.get(&r.path).and_then(|k| self.by_key.get(k));
                known.is_none_or(|k| {
                    *k != Record {
                        slot: k.slot,
                        ..r.clone()
                    }
                })
            })
            .map(InventoryChange::Upsert)
            .collect();
        let mut gone: Vec<&PathBuf> = self
            .keys
            .keys()
            .filter(|p| !found_paths.contains(*p) && was_scanned(p))
            .collect();
        gone.sort();
        changes.extend(gone.into_iter().cloned().map(InventoryChange::Remove));
        changes
    }

    fn forget(&mut self, key: &FileKey) {
        if let Some(record) = self.by_key.remove(key) {
            self.slots.remove(&record.slot);
        }
    }
}

/// `--watch` paths made absolute; a path that does not exist is an error
/// naming it.
pub fn user_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, WatchPathError> {
    paths
        .iter()
        .map(|p| {
            let err = |err| WatchPathError {
                path: p.display().to_string(),
                err,
            };
            std::fs::metadata(p).map_err(err)?;
            std::path::absolute(p).map_err(err)
        })
        .collect()
}

/// `stat(2)`'s `st_dev` to the kernel's internal `dev_t` (`major << 20 |
/// minor`), which is what `inode->i_sb->s_dev` holds.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = u64::from(libc::major(st_dev));
    let minor = u64::from(libc::minor(st_dev));
    (major << 20) | minor
}

/// A record for tests elsewhere, on device 1.
#[cfg(test)]
pub fn test_record(path: &std::path::Path, ino: u64) -> Record {
    Record {
        id: crate::secret::secret_id(path),
        path: path.to_path_buf(),
        key: FileKey { dev: 1, ino },
        slot: 0,
        secret_type: SecretType::Generic,
        lifetime: Lifetime::Unknown,
        reason: String::new(),
        fingerprint: "hmac-sha256:0123456789abcdef".into(),
        hint: None,
        expires: None,
        uid: 0,
        gid: 0,
        mode: 0o600,
        size: 1,
        mtime: DateTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn record(path: &str, ino: u64, fingerprint: &str) -> Record {
        Record {
            fingerprint: fingerprint.into(),
            ..test_record(Path::new(path), ino)
        }
    }

    #[test]
    fn kernel_dev_encoding() {
        // 254:1 (virtio disk partition) as stat encodes it.
        assert_eq!(kernel_dev(libc::makedev(254, 1)), (254 << 20) | 1);
        // A minor above 255 uses the split encoding in st_dev.
        assert_eq!(kernel_dev(libc::makedev(8, 300)), (8 << 20) | 300);
    }

    #[test]
    fn rotation_swaps_keys_and_keeps_the_id() {
        let mut inv = Inventory::new(vec![record("/s/a", 1, "f1")]);
        let key = |ino| FileKey { dev: 1, ino };
        // Atomic rename: same path, new inode and content.
        let edit = inv.apply(InventoryChange::Upsert(record("/s/a", 2, "f2")));
        let slot = inv.get(&key(2)).unwrap().slot;
        assert_eq!(
            edit,
            MapEdit {
                add: Some((key(2), slot)),
                remove: Some(key(1))
            }
        );
        assert!(inv.get(&key(1)).is_none());
        assert_eq!(inv.by_slot(slot).unwrap().key, key(2));
        assert!(inv.by_slot(0).is_none(), "the old inode's slot is gone");
        assert_eq!(inv.get(&key(2)).unwrap().fingerprint, "f2");
        assert_eq!(inv.get(&key(2)).unwrap().id, record("/s/a", 9, "").id);
        // In-place write: same inode, nothing for the kernel to do.
        let edit = inv.apply(InventoryChange::Upsert(record("/s/a", 2, "f3")));
        assert_eq!(edit, MapEdit::default());
        assert_eq!(inv.len(), 1);
        let edit = inv.apply(InventoryChange::Remove(PathBuf::from("/s/a")));
        assert_eq!(edit.remove, Some(key(2)));
        assert_eq!(inv.len(), 0);
        assert_eq!(
            inv.apply(InventoryChange::Remove(PathBuf::from("/s/a"))),
            MapEdit::default()
        );
    }

    #[test]
    fn rename_onto_another_secret_moves_its_key() {
        let mut inv = Inventory::new(vec![
            record("/s/tmp.key", 5, "f"),
            record("/s/a.key", 1, "g"),
        ]);
        let edit = inv.apply(InventoryChange::Upsert(record("/s/a.key", 5, "f")));
        assert_eq!(edit.remove, Some(FileKey { dev: 1, ino: 1 }));
        assert_eq!(inv.len(), 1);
        // The temp name is gone from the inventory: removing it is a no-op.
        let edit = inv.apply(InventoryChange::Remove(PathBuf::from("/s/tmp.key")));
        assert_eq!(edit, MapEdit::default());
        assert_eq!(
            inv.get(&FileKey { dev: 1, ino: 5 }).unwrap().path,
            Path::new("/s/a.key")
        );
    }

    #[test]
    fn a_rescan_changes_only_what_differs() {
        let inv = Inventory::new(vec![
            record("/home/a/.aws/credentials", 1, "f1"),
            record("/srv/app/.env", 2, "f2"),
            // Found by the kernel's name rules, outside every scanned place.
            record("/opt/x/sa.json", 3, "f3"),
            record("/home/a/.netrc", 4, "f4"),
        ]);
        let changes = inv.rescan_changes(
            vec![
                record("/home/a/.aws/credentials", 1, "f1"),
                record("/home/a/.netrc", 4, "f4-rotated"),
                record("/srv/new/token", 5, "f5"),
            ],
            |p| !p.starts_with("/opt"),
        );
        assert_eq!(
            changes,
            vec![
                InventoryChange::Upsert(record("/home/a/.netrc", 4, "f4-rotated")),
                InventoryChange::Upsert(record("/srv/new/token", 5, "f5")),
                InventoryChange::Remove(PathBuf::from("/srv/app/.env")),
            ]
        );
    }

    #[test]
    fn missing_user_path_is_an_error_naming_it() {
        let err = user_paths(&[PathBuf::from("/no/such/secret")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--watch /no/such/secret: No such file or directory"
        );
    }
}
