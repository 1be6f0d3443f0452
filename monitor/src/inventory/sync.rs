//! Keeps the inventory current while the agent runs: the [`Follower`]
//! puts inotify on the directories that hold secrets (and the ones that
//! may), and on any change in one of them rescans that directory. An atomic
//! rename, a kubelet `..data` swap, a new or deleted file each become an
//! [`InventoryChange`] within a fraction of a second.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use inotify::{Event, EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};
use monitor_common::FileKey;
use tokio::sync::mpsc;

use super::{
    InventoryChange, Record,
    scan::{Scanner, WatchPlan},
};

/// Events that arrive together (a rename and its create) are handled as
/// one batch after this pause.
const SETTLE: Duration = Duration::from_millis(100);

/// What sync remembers of a secret to tell whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    key: FileKey,
    fingerprint: String,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl From<&Record> for Known {
    fn from(r: &Record) -> Self {
        Self {
            key: r.key,
            fingerprint: r.fingerprint.clone(),
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        }
    }
}

pub struct Follower {
    scanner: Scanner,
    events: EventStream<Vec<u8>>,
    /// Watched directories, as shown.
    dirs: HashMap<WatchDescriptor, PathBuf>,
    trees: Vec<PathBuf>,
    planned: HashSet<PathBuf>,
    known: HashMap<PathBuf, Known>,
    /// Secrets whose fingerprint changed while watched.
    rotated: HashSet<PathBuf>,
    /// Directories that could not be watched (limits, permissions).
    pub unwatched: usize,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::ONLYDIR);

impl Follower {
    /// Watch what `plan` names. Must be called within a tokio runtime.
    pub fn new(scanner: Scanner, plan: WatchPlan, records: &[Record]) -> io::Result<Self> {
        let events = Inotify::init()?.into_event_stream(vec![0u8; 64 * 1024])?;
        let mut sync = Self {
            scanner,
            events,
            dirs: HashMap::new(),
            trees: plan.trees.clone(),
            planned: plan.planned.into_iter().collect(),
            known: records
                .iter()
                .map(|r| (r.path.clone(), Known::from(r)))
                .collect(),
            rotated: HashSet::new(),
            unwatched: 0,
        };
        for tree in &plan.trees {
            sync.watch_tree(tree);
        }
        for dir in plan.dirs.iter().chain(&sync.planned.clone()) {
            sync.watch(dir);
        }
        Ok(sync)
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.dirs.len()
    }

    /// Report changes on `tx` until the receiver is gone.
    pub async fn run(mut self, tx: mpsc::Sender<InventoryChange>) {
        loop {
            let mut events = match self.events.next().await {
                Some(Ok(ev)) => vec![ev],
                _ => {
                    tracing::warn!("inventory sync stopped: inotify failed");
                    return;
                }
            };
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    ev = self.events.next() => match ev {
                        Some(Ok(ev)) => events.push(ev),
                        _ => break,
                    },
                    _ = &mut settle => break,
                }
            }
            for change in self.handle(events) {
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The changes a batch of events leads to: removals first, so that a
    /// key moving from a temp name to the real one ends up watched.
    fn handle(&mut self, events: Vec<Event<OsString>>) -> Vec<InventoryChange> {
        let mut dirty: Vec<PathBuf> = Vec::new();
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                dirty.extend(self.dirs.values().cloned());
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            if ev.mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&ev.wd);
                dirty.push(dir);
                continue;
            }
            let Some(name) = ev.name else {
                dirty.push(dir);
                continue;
            };
            let child = dir.join(&name);
            if ev.mask.contains(EventMask::ISDIR) {
                let internal = name.as_encoded_bytes().starts_with(b"..");
                if !internal
                    && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                    && (self.in_tree(&child) || self.planned.contains(&child))
                {
                    dirty.extend(self.watch_tree(&child));
                }
                continue;
            }
            // Writes to unrelated files (shell history beside a .netrc)
            // need no rescan; kubelet `..data` swaps and candidates do.
            let relevant = name.as_encoded_bytes().starts_with(b"..")
                || self.known.contains_key(&child)
                || self.scanner.rule_for(&child).is_some();
            if relevant {
                dirty.push(dir);
            }
        }
        dirty.sort();
        dirty.dedup();
        let (mut removes, mut upserts) = (Vec::new(), Vec::new());
        for dir in dirty {
            self.rescan(&dir, &mut removes, &mut upserts);
        }
        removes.extend(upserts);
        removes
    }

    /// Compare what is in `dir` now with what was known there.
    fn rescan(
        &mut self,
        dir: &Path,
        removes: &mut Vec<InventoryChange>,
        upserts: &mut Vec<InventoryChange>,
    ) {
        let mut present: HashSet<PathBuf> = HashSet::new();
        let entries = fs::read_dir(self.scanner.fs_path(dir))
            .into_iter()
            .flatten()
            .flatten();
        for entry in entries {
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b"..") {
                continue;
            }
            let shown = dir.join(&name);
            let Some((rule, forced)) = self.scanner.rule_for(&shown) else {
                continue;
            };
            let previous = self.known.get(&shown).map(|k| k.fingerprint.as_str());
            let rotated = self.rotated.contains(&shown);
            let record = match self
                .scanner
                .inspect(&shown, rule, forced, previous, rotated)
            {
                Ok(r) => r,
                // Unreadable, too big or holding no secret (any more).
                Err(_) => continue,
            };
            present.insert(shown.clone());
            let known = Known::from(&record);
            if let Some(old) = self.known.get(&shown) {
                if *old == known {
                    continue;
                }
                if old.fingerprint != known.fingerprint {
                    self.rotated.insert(shown.clone());
                    tracing::info!("inventory: {} changed (new fingerprint)", shown.display());
                }
            } else {
                tracing::info!("inventory: new secret {}", shown.display());
            }
            self.known.insert(shown, known);
            upserts.push(InventoryChange::Upsert(record));
        }
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|p| p.parent() == Some(dir) && !present.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            tracing::info!("inventory: {} is gone", path.display());
            self.known.remove(&path);
            self.rotated.remove(&path);
            removes.push(InventoryChange::Remove(path));
        }
    }

    fn in_tree(&self, dir: &Path) -> bool {
        self.trees.iter().any(|t| dir.starts_with(t))
    }

    /// Watch `top` and the directories below it, within the depth limit;
    /// returns them all, to be rescanned.
    fn watch_tree(&mut self, top: &Path) -> Vec<PathBuf> {
        let fs_top = self.scanner.fs_path(top);
        let dirs: Vec<PathBuf> = walkdir::WalkDir::new(&fs_top)
            .max_depth(self.scanner.limits().max_depth)
            .into_iter()
            .filter_entry(|e| {
                e.file_type().is_dir()
                    && !(e.depth() > 0 && e.file_name().as_encoded_bytes().starts_with(b".."))
                    && !self.scanner.skips_dir(&self.scanner.shown(e.path()))
            })
            .filter_map(Result::ok)
            .map(|e| self.scanner.shown(e.path()))
            .collect();
        for dir in &dirs {
            self.watch(dir);
        }
        dirs
    }

    fn watch(&mut self, dir: &Path) {
        match self.events.watches().add(self.scanner.fs_path(dir), MASK) {
            // The same directory by another name (/var/run is /run) keeps
            // the name it was first watched by.
            Ok(wd) => {
                self.dirs.entry(wd).or_insert_with(|| dir.to_path_buf());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                self.unwatched += 1;
                tracing::debug!("cannot watch {}: {e}", dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use indicatif::ProgressBar;

    use super::*;
    use crate::inventory::{catalog::Catalog, fingerprint::Key, settings::Settings};

    const SA: &str = "var/run/secrets/kubernetes.io/serviceaccount";

    /// The next change `pred` accepts, within a few seconds.
    async fn until(
        rx: &mut mpsc::Receiver<InventoryChange>,
        pred: impl Fn(&InventoryChange) -> bool,
    ) -> InventoryChange {
        let wait = async {
            loop {
                let change = rx.recv().await.expect("sync stopped");
                if pred(&change) {
                    return change;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("no matching change within 5 s")
    }

    fn upsert_of(path: &'static str) -> impl Fn(&InventoryChange) -> bool {
        move |c| matches!(c, InventoryChange::Upsert(r) if r.path == Path::new(path))
    }

    #[tokio::test]
    async fn follows_renames_kubelet_swaps_new_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "ana:x:1000:1000::/home/ana:/bin/sh\n",
        )
        .unwrap();
        let aws = root.join("home/ana/.aws");
        fs::create_dir_all(&aws).unwrap();
        let creds =
            "[default]\naws_access_key_id = AKIAPLANTED000000000\naws_secret_access_key = a\n";
        fs::write(aws.join("credentials"), creds).unwrap();
        let sa = root.join(SA);
        fs::create_dir_all(sa.join("..2026_a")).unwrap();
        fs::write(sa.join("..2026_a/token"), "token-one").unwrap();
        symlink("..2026_a", sa.join("..data")).unwrap();
        symlink("..data/token", sa.join("token")).unwrap();

        let settings = Settings::default();
        let (key, _) = Key::load(&settings, &root.join("state")).unwrap();
        let scanner = Scanner::new(
            root,
            Catalog::new(&settings).unwrap(),
            Vec::new(),
            key,
            settings.limits(),
            settings.policy(),
        );
        let (records, _, plan) = scanner.scan(&ProgressBar::hidden());
        let old = |path: &str| {
            records
                .iter()
                .find(|r| r.path == Path::new(path))
                .unwrap()
                .clone()
        };
        let old_creds = old("/home/ana/.aws/credentials");
        let old_token = old("/var/run/secrets/kubernetes.io/serviceaccount/token");
        let sync = Follower::new(scanner, plan, &records).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(sync.run(tx));

        // An atomic rename over a watched file: same id, new inode and value.
        fs::write(aws.join("credentials.tmp"), creds.replace("= a", "= b")).unwrap();
        fs::rename(aws.join("credentials.tmp"), aws.join("credentials")).unwrap();
        let InventoryChange::Upsert(new) =
            until(&mut rx, upsert_of("/home/ana/.aws/credentials")).await
        else {
            unreachable!()
        };
        assert_eq!(new.id, old_creds.id);
        assert_ne!(new.key, old_creds.key);
        assert_ne!(new.fingerprint, old_creds.fingerprint);

        // The kubelet's swap: new timestamped dir, `..data` renamed onto it.
        fs::create_dir(sa.join("..2026_b")).unwrap();
        fs::write(sa.join("..2026_b/token"), "token-two").unwrap();
        symlink("..2026_b", sa.join("..data_tmp")).unwrap();
        fs::rename(sa.join("..data_tmp"), sa.join("..data")).unwrap();
        fs::remove_dir_all(sa.join("..2026_a")).unwrap();
        let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
        let InventoryChange::Upsert(new) = until(&mut rx, upsert_of(token)).await else {
            unreachable!()
        };
        assert_eq!(new.id, old_token.id);
        assert_ne!(new.key, old_token.key);
        assert_eq!(new.lifetime, crate::secret::Lifetime::Dynamic);

        // A directory the catalog expects, made after the start.
        let ssh = root.join("home/ana/.ssh");
        fs::create_dir(&ssh).unwrap();
        fs::write(
            ssh.join("id_ed25519"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        until(&mut rx, upsert_of("/home/ana/.ssh/id_ed25519")).await;

        fs::remove_file(aws.join("credentials")).unwrap();
        let gone = until(&mut rx, |c| matches!(c, InventoryChange::Remove(_))).await;
        assert_eq!(
            gone,
            InventoryChange::Remove(PathBuf::from("/home/ana/.aws/credentials"))
        );
    }
}
