//! The process table: what the agent knows of each live process, fed by the
//! kernel's exec and exit events so that a process that is gone by the time
//! its event is read is still attributed to the right executable.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

use lru::LruCache;

/// What the table keeps per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Absolute path of the executable, symlinks resolved, like
    /// `/proc/<pid>/exe`; `None` when it could not be learned.
    pub exe: Option<String>,
}

pub struct ProcessTable {
    procs: LruCache<u32, ProcessInfo>,
    users: HashMap<u32, String>,
    proc_root: PathBuf,
}

impl ProcessTable {
    /// `capacity` bounds memory on hosts with many processes; the least
    /// recently seen entry is evicted first and re-read from /proc if needed.
    pub fn new(capacity: NonZeroUsize, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            procs: LruCache::new(capacity),
            users: HashMap::new(),
            proc_root: proc_root.into(),
        }
    }

    /// A process replaced its image with `filename` (as the kernel saw it).
    pub fn on_exec(&mut self, pid: u32, filename: &[u8]) {
        let filename = String::from_utf8_lossy(filename);
        let exe = resolve_exe(&filename, || self.read_exe(pid));
        self.procs.put(pid, ProcessInfo { exe });
    }

    pub fn on_exit(&mut self, pid: u32) {
        self.procs.pop(&pid);
    }

    /// What is known of `pid`, learning it from /proc on first sight.
    pub fn get(&mut self, pid: u32) -> ProcessInfo {
        if let Some(info) = self.procs.get(&pid) {
            return info.clone();
        }
        let info = ProcessInfo {
            exe: self.read_exe(pid),
        };
        self.procs.put(pid, info.clone());
        info
    }

    /// The account name of `uid`, or the number when it has none.
    pub fn user_name(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .clone()
    }

    fn read_exe(&self, pid: u32) -> Option<String> {
        let link = self.proc_root.join(pid.to_string()).join("exe");
        std::fs::read_link(link)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

/// The executable of an exec: the kernel's filename made canonical when it
/// is absolute (as `/proc/<pid>/exe` would show it), else what /proc says.
fn resolve_exe(filename: &str, proc_exe: impl FnOnce() -> Option<String>) -> Option<String> {
    let path = Path::new(filename);
    if path.is_absolute() {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        return Some(canonical.to_string_lossy().into_owned());
    }
    proc_exe().or_else(|| (!filename.is_empty()).then(|| filename.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(root: &Path) -> ProcessTable {
        ProcessTable::new(NonZeroUsize::new(2).unwrap(), root)
    }

    #[test]
    fn exec_filename_is_canonicalised() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-tool");
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("tool");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut t = table(dir.path());
        t.on_exec(7, link.to_str().unwrap().as_bytes());
        assert_eq!(t.get(7).exe.as_deref(), real.to_str());
    }

    #[test]
    fn relative_exec_falls_back_to_proc_then_filename() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("9")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/true", dir.path().join("9/exe")).unwrap();
        let mut t = table(dir.path());
        t.on_exec(9, b"./true");
        assert_eq!(t.get(9).exe.as_deref(), Some("/usr/bin/true"));
        t.on_exec(10, b"./gone");
        assert_eq!(t.get(10).exe.as_deref(), Some("./gone"));
    }

    #[test]
    fn exit_forgets_and_capacity_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        t.on_exec(1, b"/bin/sh");
        t.on_exit(1);
        // Unknown to the table and absent from this fake /proc.
        assert_eq!(t.get(1).exe, None);
        t.on_exec(2, b"/a");
        t.on_exec(3, b"/b");
        t.on_exec(4, b"/c");
        assert_eq!(t.procs.len(), 2);
    }

    #[test]
    fn user_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        assert_eq!(t.user_name(0), "root");
        assert_eq!(t.user_name(4_000_000_000), "4000000000");
    }
}
