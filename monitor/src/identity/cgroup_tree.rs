//! From the kernel's cgroup id back to a cgroup v2 path.
//!
//! Every event carries `bpf_get_current_cgroup_id()`, which is the inode
//! number of the process's directory in the cgroup2 mount. A process gone
//! by the time its event is read has no `/proc/<pid>/cgroup`, but its
//! cgroup usually outlives it, so the path is found by inode.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Deeper than any runtime nests (kind nodes reach about 8).
const MAX_DEPTH: usize = 32;
/// Directories indexed per scan, so a host with a runaway cgroup tree
/// costs bounded time and memory.
const MAX_DIRS: usize = 100_000;

/// The cgroup2 hierarchy's directories by inode.
#[derive(Debug)]
pub struct CgroupTree {
    mount: Option<PathBuf>,
    paths: HashMap<u64, String>,
    /// Cgroup ids only grow (kernfs allocates them increasing), so an id
    /// above every id seen is a cgroup newer than the last scan, worth a
    /// rescan; a lower one that is missing is already gone.
    newest: u64,
    /// Scans done, for the tests.
    scans: u64,
}

impl CgroupTree {
    /// The cgroup2 mount of this mount namespace, from `/proc/self/mountinfo`
    /// (`/sys/fs/cgroup` on a v2 host, `/sys/fs/cgroup/unified` on a hybrid
    /// one). None on a v1-only host: then only /proc/<pid>/cgroup helps.
    pub fn discover() -> Self {
        let mount = procfs::process::Process::myself()
            .and_then(|me| me.mountinfo())
            .ok()
            .and_then(|mounts| {
                mounts
                    .into_iter()
                    .find(|m| m.fs_type == "cgroup2")
                    .map(|m| m.mount_point)
            });
        Self::at(mount)
    }

    pub fn at(mount: Option<PathBuf>) -> Self {
        Self {
            mount,
            paths: HashMap::new(),
            newest: 0,
            scans: 0,
        }
    }

    /// The path (as `/proc/<pid>/cgroup` would show it) of cgroup `id`.
    pub fn path_of(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id) && id > self.newest {
            self.rescan();
            // Looked for once: a cgroup beyond the scan bounds must not
            // cause a rescan on each of its events.
            self.newest = self.newest.max(id);
        }
        self.paths.get(&id).map(String::as_str)
    }

    fn rescan(&mut self) {
        let Some(mount) = &self.mount else { return };
        self.scans += 1;
        self.paths = scan(mount);
        self.newest = self
            .newest
            .max(self.paths.keys().copied().max().unwrap_or(0));
    }
}

fn scan(mount: &Path) -> HashMap<u64, String> {
    let mut paths = HashMap::new();
    let dirs = walkdir::WalkDir::new(mount)
        .max_depth(MAX_DEPTH)
        .same_file_system(true)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .take(MAX_DIRS);
    for entry in dirs {
        // walkdir's d_ino for the root is not from readdir; stat it.
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(rel) = entry.path().strip_prefix(mount) else {
            continue;
        };
        paths.insert(meta.ino(), format!("/{}", rel.to_string_lossy()));
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_paths_and_new_ones_trigger_a_rescan() {
        let root = tempfile::tempdir().unwrap();
        let svc = root.path().join("system.slice/a.service");
        std::fs::create_dir_all(&svc).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let mut tree = CgroupTree::at(Some(root.path().to_path_buf()));
        assert_eq!(tree.path_of(ino(&svc)), Some("/system.slice/a.service"));
        assert_eq!(tree.path_of(ino(root.path())), Some("/"));
        assert_eq!(tree.scans, 1);

        // A directory made after the scan: found by one more scan.
        let later = root.path().join("system.slice/b.service");
        std::fs::create_dir(&later).unwrap();
        let later_ino = ino(&later);
        if later_ino > tree.newest {
            assert_eq!(tree.path_of(later_ino), Some("/system.slice/b.service"));
            assert_eq!(tree.scans, 2);
        }
        // Unknown ids below the newest seen do not rescan.
        assert_eq!(tree.path_of(1), None);
        let scans = tree.scans;
        assert_eq!(tree.path_of(u64::MAX), None);
        assert_eq!(tree.path_of(u64::MAX), None);
        assert_eq!(tree.scans, scans + 1);
    }

    #[test]
    fn no_mount_no_paths() {
        let mut tree = CgroupTree::at(None);
        assert_eq!(tree.path_of(1), None);
        assert_eq!(tree.scans, 0);
    }

    #[test]
    fn finds_this_machines_cgroup2_mount() {
        // Every test machine here has cgroup2 mounted (hybrid or unified).
        let mut tree = CgroupTree::discover();
        let mount = tree.mount.clone().expect("a cgroup2 mount");
        let root_ino = std::fs::metadata(&mount).unwrap().ino();
        assert_eq!(tree.path_of(root_ino), Some("/"));
    }
}
