//! Which secrets the kernel's watch map holds. The map has a fixed size,
//! set at load from `[capture] max_watched`, and any user can make more
//! secret-looking files than that (70,000 `.env` files in a home). The
//! agent never stops for it: it watches by priority and reports the rest.
//!
//! - **System before homes.** A secret outside the homes of accounts other
//!   than root (`/etc`, `/run/secrets`, `/var/run/secrets`, the kubelet's
//!   volumes, `/root`, config globs) or below a `--watch` path is only made
//!   by root or a service; a home's files by whoever owns it. A system
//!   secret always displaces a home's.
//! - **Homes share fairly.** What is left is shared between homes, each
//!   getting as many as the one with the fewest not yet watched (max-min
//!   fair): a user who floods their own home uses up their own share, not
//!   another user's.
//! - **Within a group, shallow first.** `--watch` paths first, then the
//!   shallowest paths (the catalog's `~/.aws/credentials` before a
//!   project's `.env` ten levels down), then by path, so that the choice is
//!   the same at every start.
//!
//! An unwatched secret stays in the inventory: opens of it that the
//! kernel's name rules match are still reported. The overflow is an
//! `agent` event (at start, and again whenever it grows) and one
//! `watch_overflow` finding per directory responsible.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use monitor_common::FileKey;
use serde::{Deserialize, Serialize};

use crate::{bounded::Bounded, inventory::MapEdit};

/// `[capture] max_watched`: at most a million, about 100 MB of kernel
/// memory.
pub type MaxWatched = Bounded<16, 1_048_576>;

/// The ledger's `meta` key under which the agent leaves the overflow for
/// `report`.
pub const LEDGER_META: &str = "watch_overflow";

/// Directories named in the report, most unwatched secrets first.
const MAX_DIRS_SHOWN: usize = 10;

/// Who can make the files of a group: root and services, or one home's
/// owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    System,
    Home(PathBuf),
}

impl Group {
    /// Higher displaces lower.
    fn class(&self) -> u8 {
        match self {
            Self::System => 1,
            Self::Home(_) => 0,
        }
    }
}

/// Tells a secret's group from its path.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// Homes other than `/root`, deepest first.
    homes: Vec<PathBuf>,
    /// `--watch` paths.
    configured: Vec<PathBuf>,
}

impl Classifier {
    pub fn new(homes: &[PathBuf], configured: &[PathBuf]) -> Self {
        let mut homes: Vec<PathBuf> = homes
            .iter()
            .filter(|h| h.as_path() != Path::new("/root"))
            .cloned()
            .collect();
        homes.sort_by(|a, b| b.as_os_str().len().cmp(&a.as_os_str().len()).then(a.cmp(b)));
        Self {
            homes,
            configured: configured.to_vec(),
        }
    }

    fn configured(&self, path: &Path) -> bool {
        self.configured.iter().any(|c| path.starts_with(c))
    }

    pub fn group(&self, path: &Path) -> Group {
        if self.configured(path) {
            return Group::System;
        }
        self.homes
            .iter()
            .find(|h| path.starts_with(h))
            .map_or(Group::System, |h| Group::Home(h.clone()))
    }

    fn rank(&self, path: &Path, key: FileKey) -> Rank {
        Rank {
            tier: u8::from(!self.configured(path)),
            depth: path.components().count(),
            path: path.to_path_buf(),
            key: (key.dev, key.ino),
        }
    }
}

/// Order within a group: lower first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// 0 for a `--watch` path.
    tier: u8,
    depth: usize,
    path: PathBuf,
    key: (u64, u64),
}

#[derive(Debug, Default)]
struct GroupState {
    watched: BTreeSet<Rank>,
    waiting: BTreeSet<Rank>,
}

#[derive(Debug)]
struct Entry {
    slot: u32,
    group: Group,
    rank: Rank,
    watched: bool,
}

/// What the kernel map needs, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOp {
    Watch(FileKey, u32),
    Unwatch(FileKey),
}

/// The secrets the map holds and those waiting for room.
#[derive(Debug)]
pub struct WatchBudget {
    capacity: usize,
    classifier: Classifier,
    entries: HashMap<FileKey, Entry>,
    groups: BTreeMap<Group, GroupState>,
    watched: usize,
    /// Something changed since [`WatchBudget::take_changed`].
    changed: bool,
}

impl WatchBudget {
    pub fn new(max_watched: MaxWatched, classifier: Classifier) -> Self {
        Self {
            capacity: max_watched.get() as usize,
            classifier,
            entries: HashMap::new(),
            groups: BTreeMap::new(),
            watched: 0,
            changed: true,
        }
    }

    /// Whether anything changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The secrets to watch, as (key, slot).
    pub fn watched(&self) -> impl Iterator<Item = (FileKey, u32)> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.watched)
            .map(|(k, e)| (*k, e.slot))
    }

    /// Secrets known but not watched.
    pub fn unwatched(&self) -> usize {
        self.entries.len() - self.watched
    }

    /// The ops an inventory change needs: a rotated file's new inode takes
    /// its old one's place; a new file is watched if there is room or it
    /// outranks one that is; a removed one makes room for the best waiting.
    pub fn apply(&mut self, edit: &MapEdit, added_path: Option<&Path>) -> Vec<MapOp> {
        match (edit.add, edit.remove, added_path) {
            (Some((new, slot)), Some(old), Some(path)) => self.replace(old, new, slot, path),
            (Some((new, slot)), None, Some(path)) => self.insert(new, slot, path),
            (_, Some(old), _) => self.remove(old),
            _ => Vec::new(),
        }
    }

    /// A new secret.
    pub fn insert(&mut self, key: FileKey, slot: u32, path: &Path) -> Vec<MapOp> {
        if self.entries.contains_key(&key) {
            return Vec::new();
        }
        let group = self.classifier.group(path);
        let rank = self.classifier.rank(path, key);
        if self.watched < self.capacity {
            self.add(key, slot, group, rank, true);
            return vec![MapOp::Watch(key, slot)];
        }
        match self.victim_for(&group, &rank) {
            Some(victim) => {
                self.set_watched(victim, false);
                self.add(key, slot, group, rank, true);
                vec![MapOp::Watch(key, slot), MapOp::Unwatch(victim)]
            }
            None => {
                self.add(key, slot, group, rank, false);
                Vec::new()
            }
        }
    }

    /// A secret gone.
    pub fn remove(&mut self, key: FileKey) -> Vec<MapOp> {
        let Some(entry) = self.take(key) else {
            return Vec::new();
        };
        if !entry.watched {
            return Vec::new();
        }
        let mut ops = vec![MapOp::Unwatch(key)];
        if let Some((key, slot)) = self.promote() {
            ops.push(MapOp::Watch(key, slot));
        }
        ops
    }

    /// The kernel refused to watch `key`: it waits like an overflowed one.
    pub fn failed(&mut self, key: FileKey) {
        self.set_watched(key, false);
    }

    /// A rotated secret: the new inode gets the old one's place.
    fn replace(&mut self, old: FileKey, new: FileKey, slot: u32, path: &Path) -> Vec<MapOp> {
        if !self.entries.get(&old).is_some_and(|e| e.watched) {
            let mut ops = self.remove(old);
            ops.extend(self.insert(new, slot, path));
            return ops;
        }
        self.take(old);
        let group = self.classifier.group(path);
        let rank = self.classifier.rank(path, new);
        self.add(new, slot, group, rank, true);
        vec![MapOp::Watch(new, slot), MapOp::Unwatch(old)]
    }

    /// Who makes room for a secret of `group` and `rank` in a full map, if
    /// anyone should.
    fn victim_for(&self, group: &Group, rank: &Rank) -> Option<FileKey> {
        let class = group.class();
        let lowest = self
            .groups
            .iter()
            .filter(|(_, g)| !g.watched.is_empty())
            .map(|(k, _)| k.class())
            .min()?;
        if lowest > class {
            return None;
        }
        // The group holding the most of the lowest class gives one up.
        let (largest, state) = self
            .groups
            .iter()
            .filter(|(k, g)| k.class() == lowest && !g.watched.is_empty())
            .max_by_key(|(_, g)| g.watched.len())?;
        let own = self.groups.get(group).map_or(0, |g| g.watched.len());
        if lowest < class || (largest != group && state.watched.len() >= own + 2) {
            return state.watched.last().map(key_of);
        }
        // Within its own group, a better secret displaces the worst.
        let worst = self.groups.get(group)?.watched.last()?;
        (rank < worst).then(|| key_of(worst))
    }

    /// The best waiting secret, watched now that there is room: from the
    /// highest class, from the group with the fewest watched.
    fn promote(&mut self) -> Option<(FileKey, u32)> {
        if self.watched >= self.capacity {
            return None;
        }
        let class = self
            .groups
            .iter()
            .filter(|(_, g)| !g.waiting.is_empty())
            .map(|(k, _)| k.class())
            .max()?;
        let rank = self
            .groups
            .iter()
            .filter(|(k, g)| k.class() == class && !g.waiting.is_empty())
            .min_by_key(|(_, g)| g.watched.len())
            .and_then(|(_, g)| g.waiting.first())?;
        let key = key_of(rank);
        self.set_watched(key, true);
        self.entries.get(&key).map(|e| (key, e.slot))
    }

    fn add(&mut self, key: FileKey, slot: u32, group: Group, rank: Rank, watched: bool) {
        self.changed = true;
        let state = self.groups.entry(group.clone()).or_default();
        if watched {
            state.watched.insert(rank.clone());
            self.watched += 1;
        } else {
            state.waiting.insert(rank.clone());
        }
        self.entries.insert(
            key,
            Entry {
                slot,
                group,
                rank,
                watched,
            },
        );
    }

    fn take(&mut self, key: FileKey) -> Option<Entry> {
        let entry = self.entries.remove(&key)?;
        self.changed = true;
        if let Some(state) = self.groups.get_mut(&entry.group) {
            if entry.watched {
                state.watched.remove(&entry.rank);
                self.watched -= 1;
            } else {
                state.waiting.remove(&entry.rank);
            }
            if state.watched.is_empty() && state.waiting.is_empty() {
                self.groups.remove(&entry.group);
            }
        }
        Some(entry)
    }

    fn set_watched(&mut self, key: FileKey, watched: bool) {
        if let Some(entry) = self.take(key) {
            self.add(key, entry.slot, entry.group, entry.rank, watched);
        }
    }

    /// Where the unwatched secrets are: per home, and per directory for
    /// the system's; most first.
    pub fn overflow(&self) -> Overflow {
        let mut by_dir: BTreeMap<PathBuf, u64> = BTreeMap::new();
        for (group, state) in &self.groups {
            match group {
                Group::Home(home) if !state.waiting.is_empty() => {
                    *by_dir.entry(home.clone()).or_default() += state.waiting.len() as u64;
                }
                Group::Home(_) => {}
                Group::System => {
                    for r in &state.waiting {
                        let dir = r.path.parent().unwrap_or(&r.path).to_path_buf();
                        *by_dir.entry(dir).or_default() += 1;
                    }
                }
            }
        }
        let mut dirs: Vec<OverflowDir> = by_dir
            .into_iter()
            .map(|(dir, unwatched)| OverflowDir {
                dir: dir.to_string_lossy().into_owned(),
                unwatched,
            })
            .collect();
        dirs.sort_by(|a, b| b.unwatched.cmp(&a.unwatched).then(a.dir.cmp(&b.dir)));
        let more_dirs = dirs.len().saturating_sub(MAX_DIRS_SHOWN) as u64;
        dirs.truncate(MAX_DIRS_SHOWN);
        Overflow {
            max_watched: self.capacity as u64,
            watched: self.watched as u64,
            unwatched: self.unwatched() as u64,
            dirs,
            more_dirs,
        }
    }
}

fn key_of(rank: &Rank) -> FileKey {
    FileKey {
        dev: rank.key.0,
        ino: rank.key.1,
    }
}

/// The `watch_overflow` object of an `agent` event, and what the ledger
/// keeps of it for `report`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overflow {
    pub max_watched: u64,
    pub watched: u64,
    pub unwatched: u64,
    /// Where the unwatched ones are, most first (at most 10).
    pub dirs: Vec<OverflowDir>,
    /// Directories with unwatched secrets beyond those listed.
    pub more_dirs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverflowDir {
    pub dir: String,
    pub unwatched: u64,
}

impl Overflow {
    /// One line for the `agent` event and the log.
    pub fn message(&self) -> String {
        let mut text = format!(
            "{} of {} secrets are not watched by inode: [capture] max_watched is {}",
            self.unwatched,
            self.watched + self.unwatched,
            self.max_watched
        );
        if !self.dirs.is_empty() {
            let dirs: Vec<String> = self
                .dirs
                .iter()
                .map(|d| format!("{} ({})", d.dir, d.unwatched))
                .collect();
            text.push_str(&format!("; they are in {}", dirs.join(", ")));
            if self.more_dirs > 0 {
                text.push_str(&format!(" and {} more directories", self.more_dirs));
            }
        }
        text.push_str("; system secrets are watched first, homes share the rest");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey { dev: 1, ino }
    }

    fn budget(max: u64) -> WatchBudget {
        let classifier = Classifier::new(
            &[
                PathBuf::from("/root"),
                PathBuf::from("/home/ana"),
                PathBuf::from("/home/mallory"),
            ],
            &[PathBuf::from("/home/ana/app/.env")],
        );
        WatchBudget::new(MaxWatched::new(max).unwrap(), classifier)
    }

    fn watched_paths(b: &WatchBudget) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = b
            .entries
            .values()
            .filter(|e| e.watched)
            .map(|e| e.rank.path.clone())
            .collect();
        paths.sort();
        paths
    }

    /// Does the kernel side of `ops` hold what the budget says?
    fn apply_ops(map: &mut BTreeSet<(u64, u64)>, ops: &[MapOp], room: usize) {
        for op in ops {
            match op {
                MapOp::Watch(k, _) => {
                    map.insert((k.dev, k.ino));
                    assert!(map.len() <= room, "the spare slot is enough");
                }
                MapOp::Unwatch(k) => {
                    map.remove(&(k.dev, k.ino));
                }
            }
        }
    }

    #[test]
    fn classes_come_from_the_path() {
        let b = budget(16);
        let c = &b.classifier;
        assert_eq!(c.group(Path::new("/etc/ssl/private/a.key")), Group::System);
        assert_eq!(c.group(Path::new("/root/.aws/credentials")), Group::System);
        assert_eq!(
            c.group(Path::new("/home/mallory/x/.env")),
            Group::Home(PathBuf::from("/home/mallory"))
        );
        assert_eq!(
            c.group(Path::new("/home/ana/app/.env")),
            Group::System,
            "a --watch path is the admin's"
        );
        assert_eq!(c.group(Path::new("/home/anabel/.env")), Group::System);
    }

    #[test]
    fn a_flooded_home_cannot_displace_system_secrets_or_other_homes() {
        let mut b = budget(16);
        let mut map = BTreeSet::new();
        let mut ino = 0;
        let mut next = || {
            ino += 1;
            ino
        };
        // The flood comes first: it fills the map.
        for i in 0..1000 {
            let ops = b.insert(
                key(next()),
                0,
                &PathBuf::from(format!("/home/mallory/d{i}/.env")),
            );
            apply_ops(&mut map, &ops, 17);
        }
        assert_eq!(b.unwatched(), 1000 - 16);
        for path in [
            "/etc/ssl/private/site.key",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/root/.aws/credentials",
            "/home/ana/app/.env",
        ] {
            let ops = b.insert(key(next()), 0, Path::new(path));
            apply_ops(&mut map, &ops, 17);
        }
        for i in 0..3 {
            let ops = b.insert(
                key(next()),
                0,
                &PathBuf::from(format!("/home/ana/p{i}/.env")),
            );
            apply_ops(&mut map, &ops, 17);
        }
        let watched = watched_paths(&b);
        assert_eq!(watched.len(), 16);
        for system in [
            "/etc/ssl/private/site.key",
            "/root/.aws/credentials",
            "/home/ana/app/.env",
        ] {
            assert!(watched.contains(&PathBuf::from(system)), "{system}");
        }
        // Ana's three fit in her fair share of the remaining twelve.
        let ana = watched
            .iter()
            .filter(|p| p.to_string_lossy().starts_with("/home/ana/p"))
            .count();
        assert_eq!(ana, 3);
        assert_eq!(map.len(), 16, "the kernel holds what the budget says");
        let o = b.overflow();
        assert_eq!((o.watched, o.unwatched), (16, 1000 - 9));
        assert_eq!(o.dirs[0].dir, "/home/mallory");
        assert_eq!(o.dirs.len(), 1);
        // Mallory keeps her shallowest ones.
        assert!(watched.contains(&PathBuf::from("/home/mallory/d0/.env")));
        assert!(!watched.contains(&PathBuf::from("/home/mallory/d999/.env")));
    }

    #[test]
    fn homes_share_max_min_fairly() {
        let mut b = budget(16);
        for i in 0..100 {
            b.insert(
                key(i),
                0,
                &PathBuf::from(format!("/home/mallory/{i:03}/.env")),
            );
        }
        for i in 0..100 {
            b.insert(
                key(1000 + i),
                0,
                &PathBuf::from(format!("/home/ana/{i:03}/.env")),
            );
        }
        let count = |home| {
            watched_paths(&b)
                .iter()
                .filter(|p| p.starts_with(home))
                .count()
        };
        assert_eq!((count("/home/mallory"), count("/home/ana")), (8, 8));
    }

    #[test]
    fn removal_makes_room_for_the_best_waiting_and_rotation_keeps_its_place() {
        let mut b = budget(16);
        for i in 0..20 {
            b.insert(
                key(i),
                i as u32,
                &PathBuf::from(format!("/home/mallory/{i:02}/.env")),
            );
        }
        b.insert(key(100), 100, Path::new("/etc/a.key"));
        assert_eq!(b.unwatched(), 5);
        // The system key's rotation: new inode, same place, no gap.
        let edit = MapEdit {
            add: Some((key(101), 101)),
            remove: Some(key(100)),
        };
        let ops = b.apply(&edit, Some(Path::new("/etc/a.key")));
        assert_eq!(ops, [MapOp::Watch(key(101), 101), MapOp::Unwatch(key(100))]);
        // Removing a watched one promotes the best waiting one.
        let ops = b.apply(
            &MapEdit {
                add: None,
                remove: Some(key(101)),
            },
            None,
        );
        assert_eq!(ops[0], MapOp::Unwatch(key(101)));
        let MapOp::Watch(promoted, slot) = ops[1] else {
            panic!("{ops:?}");
        };
        assert_eq!((promoted, slot), (key(15), 15), "the best waiting");
        assert_eq!(b.unwatched(), 4);
        // A refused insert waits and is counted.
        b.failed(key(0));
        assert_eq!(b.unwatched(), 5);
        // Removing a waiting one changes nothing in the kernel.
        let ops = b.remove(key(19));
        assert!(ops.is_empty());
        assert_eq!(b.unwatched(), 4);
    }

    #[test]
    fn overflow_is_reported_per_directory() {
        let mut b = budget(16);
        for i in 0..40 {
            b.insert(
                key(i),
                0,
                &PathBuf::from(format!("/home/mallory/{i:02}/.env")),
            );
        }
        let o = b.overflow();
        assert_eq!(o.unwatched, 24);
        assert_eq!(
            o.dirs,
            [OverflowDir {
                dir: "/home/mallory".into(),
                unwatched: 24
            }]
        );
        let message = o.message();
        assert!(
            message.starts_with("24 of 40 secrets are not watched by inode: [capture] max_watched is 16; they are in /home/mallory (24)"),
            "{message}"
        );
        assert!(budget(16).overflow().dirs.is_empty());
    }
}
