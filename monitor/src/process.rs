//! The process table: what the agent knows of each process, fed by the
//! kernel's fork, exec and exit events, so that a process that is gone by the
//! time its event is read is still attributed, with its ancestry.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

use lru::LruCache;
use monitor_common::{EventHeader, UNSET_LOGINUID};

use crate::probes::comm_str;

/// What the table keeps per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Absolute path of the executable, symlinks resolved, like
    /// `/proc/<pid>/exe`; `None` when it could not be learned.
    pub exe: Option<String>,
    pub comm: String,
    /// argv as seen at exec, already redacted.
    pub args: Vec<String>,
    pub args_truncated: bool,
    pub uid: u32,
    pub gid: u32,
    /// Audit login uid, `None` when unset.
    pub loginuid: Option<u32>,
    /// Has a controlling terminal.
    pub tty: bool,
    /// Process start, ns since boot.
    pub start_ns: u64,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// The kernel reported its exit; kept a while for its children's ancestry.
    pub exited: bool,
}

impl ProcessInfo {
    /// The facts every kernel event carries about `current`.
    fn from_header(h: &EventHeader) -> Self {
        Self {
            pid: h.pid,
            ppid: h.ppid,
            exe: None,
            comm: comm_str(&h.comm),
            args: Vec::new(),
            args_truncated: false,
            uid: h.uid,
            gid: h.gid,
            loginuid: (h.loginuid != UNSET_LOGINUID).then_some(h.loginuid),
            tty: h.tty != 0,
            start_ns: h.start_ns,
            cgroup_id: h.cgroup_id,
            exited: false,
        }
    }
}

/// One step of a process's ancestry, parent first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ancestor {
    pub pid: u32,
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

    /// Processes tracked now.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// `parent` (the header's process) forked `child`: the child runs the
    /// parent's image until it execs.
    pub fn on_fork(&mut self, parent: &EventHeader, child: u32) {
        let parent_info = self.observe(parent);
        let info = ProcessInfo {
            pid: child,
            ppid: parent.pid,
            exited: false,
            ..parent_info
        };
        self.procs.put(child, info);
    }

    /// The header's process replaced its image with `filename`, started
    /// with the (redacted) `args`.
    pub fn on_exec(
        &mut self,
        h: &EventHeader,
        filename: &[u8],
        args: Vec<String>,
        args_truncated: bool,
    ) -> ProcessInfo {
        let filename = String::from_utf8_lossy(filename);
        let exe = if links_to_proc_self(Path::new(&*filename)) {
            // Exec'ing its own image (busybox's shell runs its applets so):
            // the image before, known since the fork, is the image after.
            let before = self.procs.peek(&h.pid).and_then(|p| p.exe.clone());
            before.or_else(|| self.read_exe(h.pid))
        } else {
            resolve_exe(&filename, || self.read_exe(h.pid))
        };
        let info = ProcessInfo {
            exe,
            args,
            args_truncated,
            ..ProcessInfo::from_header(h)
        };
        self.procs.put(h.pid, info.clone());
        info
    }

    pub fn on_exit(&mut self, pid: u32) {
        if let Some(p) = self.procs.peek_mut(&pid) {
            p.exited = true;
        }
    }

    /// Record what `h` says of its process and return all that is known of
    /// it, learning the executable from /proc on first sight.
    pub fn observe(&mut self, h: &EventHeader) -> ProcessInfo {
        let known = self.procs.get(&h.pid).filter(|p| !p.exited).cloned();
        let info = match known {
            Some(p) => ProcessInfo {
                exe: p.exe,
                args: p.args,
                args_truncated: p.args_truncated,
                ..ProcessInfo::from_header(h)
            },
            None => ProcessInfo {
                exe: self.read_exe(h.pid),
                ..ProcessInfo::from_header(h)
            },
        };
        self.procs.put(h.pid, info.clone());
        info
    }

    /// The executable of `pid` if known, without touching recency.
    pub fn peek_exe(&self, pid: u32) -> Option<String> {
        match self.procs.peek(&pid) {
            Some(p) => p.exe.clone(),
            None => self.read_exe(pid),
        }
    }

    /// Up to `max` ancestors of the process whose parent is `ppid`, parent
    /// first, from the table or else from /proc. Stops at pid 1 and at
    /// anything unknown.
    pub fn ancestors(&mut self, ppid: u32, max: usize) -> Vec<Ancestor> {
        let mut out = Vec::new();
        let mut pid = ppid;
        while pid > 0 && out.len() < max {
            let (exe, next) = match self.procs.get(&pid) {
                Some(p) => (p.exe.clone(), p.ppid),
                None => match self.read_ppid(pid) {
                    Some(next) => (self.read_exe(pid), next),
                    None => break,
                },
            };
            out.push(Ancestor { pid, exe });
            if pid == 1 || next == pid {
                break;
            }
            pid = next;
        }
        out
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

    fn proc(&self, pid: u32) -> Option<procfs::process::Process> {
        procfs::process::Process::new_with_root(self.proc_root.join(pid.to_string())).ok()
    }

    fn read_exe(&self, pid: u32) -> Option<String> {
        let exe = self.proc(pid)?.exe().ok()?;
        Some(exe.to_string_lossy().into_owned())
    }

    fn read_ppid(&self, pid: u32) -> Option<u32> {
        let ppid = self.proc(pid)?.stat().ok()?.ppid;
        u32::try_from(ppid).ok()
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

/// Whether `path` is in, or a symlink into, `/proc/self` or
/// `/proc/thread-self`, which mean the reader, not the process that exec'ed
/// (busybox's shell runs its applets as `/proc/self/exe`).
fn links_to_proc_self(path: &Path) -> bool {
    let is_self = |p: &Path| p.starts_with("/proc/self") || p.starts_with("/proc/thread-self");
    is_self(path) || std::fs::read_link(path).is_ok_and(|t| is_self(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(root: &Path) -> ProcessTable {
        ProcessTable::new(NonZeroUsize::new(4).unwrap(), root)
    }

    fn header(pid: u32, ppid: u32) -> EventHeader {
        EventHeader {
            kind: 0,
            pid,
            tid: pid,
            ppid,
            uid: 1000,
            gid: 1000,
            loginuid: UNSET_LOGINUID,
            tty: 0,
            boot_ns: 0,
            start_ns: 0,
            cgroup_id: 1,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn exec_filename_is_canonicalised() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-tool");
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("tool");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut t = table(dir.path());
        t.on_exec(
            &header(7, 1),
            link.to_str().unwrap().as_bytes(),
            Vec::new(),
            false,
        );
        assert_eq!(t.observe(&header(7, 1)).exe.as_deref(), real.to_str());
    }

    #[test]
    fn a_link_to_proc_self_exe_is_not_resolved_as_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("11")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/true", dir.path().join("11/exe")).unwrap();
        // How busybox --install -s links its applets.
        let cat = dir.path().join("cat");
        std::os::unix::fs::symlink("/proc/self/exe", &cat).unwrap();
        let mut t = table(dir.path());
        // Forked from a process whose image is known: an exec of its own
        // image keeps it, whatever /proc says by the time it is read.
        t.on_exec(&header(11, 1), b"/usr/bin/busybox", Vec::new(), false);
        t.on_exec(
            &header(11, 1),
            cat.to_str().unwrap().as_bytes(),
            Vec::new(),
            false,
        );
        assert_eq!(
            t.observe(&header(11, 1)).exe.as_deref(),
            Some("/usr/bin/busybox")
        );
        t.on_exec(&header(11, 1), b"/proc/self/exe", Vec::new(), false);
        assert_eq!(
            t.observe(&header(11, 1)).exe.as_deref(),
            Some("/usr/bin/busybox")
        );
        // Nothing known before: /proc says, never the agent's own image.
        t.on_exec(&header(11, 1), b"/proc/self/exe", Vec::new(), false);
        let mut fresh = table(dir.path());
        fresh.on_exec(&header(11, 1), b"/proc/self/exe", Vec::new(), false);
        assert_eq!(
            fresh.observe(&header(11, 1)).exe.as_deref(),
            Some("/usr/bin/true")
        );
    }

    #[test]
    fn relative_exec_falls_back_to_proc_then_filename() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("9")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/true", dir.path().join("9/exe")).unwrap();
        let mut t = table(dir.path());
        t.on_exec(&header(9, 1), b"./true", Vec::new(), false);
        assert_eq!(
            t.observe(&header(9, 1)).exe.as_deref(),
            Some("/usr/bin/true")
        );
        t.on_exec(&header(10, 1), b"./gone", Vec::new(), false);
        assert_eq!(t.observe(&header(10, 1)).exe.as_deref(), Some("./gone"));
    }

    #[test]
    fn fork_inherits_then_exec_replaces_and_ancestry_survives_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        t.on_exec(&header(100, 1), b"/bin/sh", Vec::new(), false);
        t.on_fork(&header(100, 1), 101);
        let parent_exe = t.procs.peek(&100).unwrap().exe.clone();
        assert!(parent_exe.is_some());
        assert_eq!(t.observe(&header(101, 100)).exe, parent_exe);
        t.on_exec(&header(101, 100), b"/usr/bin/env", Vec::new(), false);
        t.on_exit(100);
        let anc = t.ancestors(100, 5);
        assert_eq!(anc.len(), 1, "pid 1 is not in the fake /proc: {anc:?}");
        assert_eq!(anc[0].pid, 100);
        assert_eq!(anc[0].exe, t.procs.peek(&100).unwrap().exe);
        // An exited pid seen again is a new process: learn it afresh.
        assert_eq!(t.observe(&header(100, 1)).exe, None);
    }

    #[test]
    fn ancestry_from_proc_when_unknown() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, ppid, exe) in [
            (50, 40, "/usr/sbin/sshd"),
            (40, 1, "/usr/lib/systemd/systemd"),
            (1, 0, "/sbin/init"),
        ] {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            // The comm field may hold spaces and parentheses.
            std::fs::write(
                d.join("stat"),
                format!(
                    "{pid} (a (weird) name) S {ppid} 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                     1000 1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"
                ),
            )
            .unwrap();
            std::os::unix::fs::symlink(exe, d.join("exe")).unwrap();
        }
        let mut t = table(dir.path());
        let anc = t.ancestors(50, 8);
        let pids: Vec<u32> = anc.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [50, 40, 1]);
        assert_eq!(anc[0].exe.as_deref(), Some("/usr/sbin/sshd"));
        assert_eq!(t.ancestors(50, 2).len(), 2);
    }

    #[test]
    fn capacity_bounds_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        for pid in 1..=10 {
            t.on_exec(&header(pid, 1), b"/x", Vec::new(), false);
        }
        assert_eq!(t.procs.len(), 4);
    }

    #[test]
    fn user_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        assert_eq!(t.user_name(0), "root");
        assert_eq!(t.user_name(4_000_000_000), "4000000000");
    }
}
