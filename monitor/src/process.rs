//! The process table: what the agent knows of each process, fed by the
//! kernel's fork, exec and exit events, so that a process that is gone by the
//! time its event is read is still attributed, with its ancestry.
//!
//! When the ring buffer lost events, an exec, fork or exit may be among
//! them: what the table knew of every process may then be stale (the
//! parent's image for a child whose exec was lost, another process behind
//! a reused pid). Such an entry is no longer *vouched* for until an exec or
//! fork seen after the loss, or `/proc` for the same live process, says
//! again what runs; until then the reader's identity is unknown, never a
//! guess.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

use lru::LruCache;
use monitor_common::{EventHeader, UNSET_LOGINUID, user::comm_str};

use crate::redact::{ArgSecret, RedactedArgs, Redactor};

/// What the table keeps per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Absolute path of the executable, symlinks resolved, like
    /// `/proc/<pid>/exe`; `None` when it could not be learned.
    pub exe: Option<String>,
    /// As the redactor lets it be shown: a name the process gave itself is
    /// treated as an argument is.
    pub comm: String,
    /// argv as seen at exec, redacted as the policy says.
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
    /// `exe` and `args` are known to be this process's: learned from an
    /// exec or fork seen since the last loss of events, or from `/proc`
    /// while the process (same start time) was alive.
    pub vouched: bool,
}

impl ProcessInfo {
    /// The facts every kernel event carries about `current`, with its
    /// `comm` as it may be shown.
    fn from_header(h: &EventHeader, comm: String) -> Self {
        Self {
            pid: h.pid,
            ppid: h.ppid,
            exe: None,
            comm,
            args: Vec::new(),
            args_truncated: false,
            uid: h.uid,
            gid: h.gid,
            loginuid: (h.loginuid != UNSET_LOGINUID).then_some(h.loginuid),
            tty: h.tty != 0,
            start_ns: h.start_ns,
            cgroup_id: h.cgroup_id,
            exited: false,
            vouched: false,
        }
    }
}

/// One step of a process's ancestry, parent first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: Option<String>,
}

/// A table entry: what is shown of a process, and the name the kernel
/// gave it at exec, against which the `comm` of its events is checked.
#[derive(Debug, Clone)]
struct Entry {
    info: ProcessInfo,
    exec_name: Option<String>,
}

pub struct ProcessTable {
    procs: LruCache<u32, Entry>,
    users: HashMap<u32, String>,
    proc_root: PathBuf,
    redactor: Redactor,
    /// Events up to this boot time may have been lost: an exec or fork
    /// stamped no later proves nothing about what followed it.
    suspect_until: Option<u64>,
    /// `/proc/<pid>/stat` counts start time in these.
    ticks_per_second: u64,
}

impl ProcessTable {
    /// `capacity` bounds memory on hosts with many processes; the least
    /// recently seen entry is evicted first and re-read from /proc if needed.
    /// `redactor` decides what of argv and `comm` is kept.
    pub fn new(capacity: NonZeroUsize, proc_root: impl Into<PathBuf>, redactor: Redactor) -> Self {
        Self {
            procs: LruCache::new(capacity),
            users: HashMap::new(),
            proc_root: proc_root.into(),
            redactor,
            suspect_until: None,
            ticks_per_second: procfs::ticks_per_second().max(1),
        }
    }

    /// Processes tracked now.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The kernel lost events, the last of them at or before `boot_ns`:
    /// nothing the table knows is vouched for any more.
    pub fn on_loss(&mut self, boot_ns: u64) {
        self.suspect_until = Some(self.suspect_until.unwrap_or(0).max(boot_ns));
        for (_, p) in self.procs.iter_mut() {
            p.info.vouched = false;
        }
    }

    /// An exec or fork stamped `boot_ns` came after every known loss.
    fn after_losses(&self, boot_ns: u64) -> bool {
        self.suspect_until.is_none_or(|t| boot_ns > t)
    }

    /// `parent` (the header's process) forked `child`: the child runs the
    /// parent's image until it execs.
    pub fn on_fork(&mut self, parent: &EventHeader, child: u32) {
        let parent_info = self.observe(parent);
        let exec_name = self
            .procs
            .peek(&parent.pid)
            .and_then(|e| e.exec_name.clone());
        let info = ProcessInfo {
            pid: child,
            ppid: parent.pid,
            exited: false,
            vouched: parent_info.vouched && self.after_losses(parent.boot_ns),
            ..parent_info
        };
        self.procs.put(child, Entry { info, exec_name });
    }

    /// The header's process replaced its image with `filename`, started
    /// with `args`: they are kept redacted as the policy says, and the
    /// secrets found in them returned.
    pub fn on_exec(
        &mut self,
        h: &EventHeader,
        filename: &[u8],
        args: &[String],
        args_truncated: bool,
    ) -> (ProcessInfo, Vec<ArgSecret>) {
        let filename = String::from_utf8_lossy(filename);
        let exe = if links_to_proc_self(Path::new(&*filename)) {
            // Exec'ing its own image (busybox's shell runs its applets so):
            // the image before, known since the fork, is the image after.
            let before = self.procs.peek(&h.pid).and_then(|e| e.info.exe.clone());
            before.or_else(|| self.read_exe(h.pid))
        } else {
            resolve_exe(&filename, || self.read_exe(h.pid)).map(|e| self.redactor.exe(e))
        };
        let RedactedArgs { args, found } = self.redactor.argv(args, args_truncated);
        // At exec, before the new image runs, `comm` is the kernel's: the
        // base name of the file.
        let exec_name = comm_str(&h.comm);
        let info = ProcessInfo {
            exe,
            args,
            args_truncated,
            vouched: self.after_losses(h.boot_ns),
            ..ProcessInfo::from_header(h, exec_name.clone())
        };
        let entry = Entry {
            info: info.clone(),
            exec_name: Some(exec_name),
        };
        self.procs.put(h.pid, entry);
        (info, found)
    }

    pub fn on_exit(&mut self, pid: u32) {
        if let Some(e) = self.procs.peek_mut(&pid) {
            e.info.exited = true;
        }
    }

    /// Record what `h` says of its process and return all that is known of
    /// it, learning the executable from /proc on first sight, or again when
    /// what was known is no longer vouched for.
    pub fn observe(&mut self, h: &EventHeader) -> ProcessInfo {
        let known = self.procs.get(&h.pid).filter(|e| !e.info.exited).cloned();
        let (info, exec_name) = match known {
            Some(Entry { info: p, exec_name }) if p.vouched => {
                let comm = self.shown_comm(h, exec_name.as_deref(), p.exe.as_deref());
                let info = ProcessInfo {
                    exe: p.exe,
                    args: p.args,
                    args_truncated: p.args_truncated,
                    vouched: true,
                    ..ProcessInfo::from_header(h, comm)
                };
                (info, exec_name)
            }
            stale => match self.read_live_exe(h) {
                // The live process says what runs; argv seen at an exec
                // that may not be its last is dropped.
                Some(exe) => {
                    let comm = self.shown_comm(h, None, Some(&exe));
                    let info = ProcessInfo {
                        exe: Some(exe),
                        vouched: true,
                        ..ProcessInfo::from_header(h, comm)
                    };
                    (info, None)
                }
                None => {
                    let exe = stale.and_then(|e| e.info.exe);
                    let comm = self.shown_comm(h, None, exe.as_deref());
                    (
                        ProcessInfo {
                            exe,
                            ..ProcessInfo::from_header(h, comm)
                        },
                        None,
                    )
                }
            },
        };
        self.procs.put(
            h.pid,
            Entry {
                info: info.clone(),
                exec_name,
            },
        );
        info
    }

    /// The header's `comm` as it may be shown: the name the kernel gave at
    /// exec, or else the executable's base name as the kernel cuts it, is
    /// shown; any other is redacted.
    fn shown_comm(&self, h: &EventHeader, exec_name: Option<&str>, exe: Option<&str>) -> String {
        let comm = comm_str(&h.comm);
        let from_exe = exe.and_then(|e| Path::new(e).file_name()).map(|n| {
            let n = n.to_string_lossy();
            let mut end = n.len().min(monitor_common::COMM_LEN - 1);
            while !n.is_char_boundary(end) {
                end -= 1;
            }
            n[..end].to_string()
        });
        let known = exec_name.or(from_exe.as_deref());
        self.redactor.comm(&comm, known)
    }

    /// The executable of the header's process while it is alive: the pid
    /// must still name the process that made the event (its start time).
    /// A kernel that gave no start time cannot be checked against.
    fn read_live_exe(&self, h: &EventHeader) -> Option<String> {
        let proc = self.proc(h.pid)?;
        if h.start_ns != 0 {
            let started = proc.stat().ok()?.starttime;
            if started != h.start_ns / (1_000_000_000 / self.ticks_per_second) {
                return None;
            }
        }
        let exe = proc.exe().ok()?;
        Some(self.redactor.exe(exe.to_string_lossy().into_owned()))
    }

    /// The executable of `pid` if known, without touching recency.
    pub fn peek_exe(&self, pid: u32) -> Option<String> {
        match self.procs.peek(&pid) {
            Some(e) => e.info.exe.clone(),
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
                Some(e) => (e.info.exe.clone(), e.info.ppid),
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

    /// `/proc/<pid>/exe`, a memfd's name redacted.
    fn read_exe(&self, pid: u32) -> Option<String> {
        let exe = self.proc(pid)?.exe().ok()?;
        Some(self.redactor.exe(exe.to_string_lossy().into_owned()))
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
        ProcessTable::new(NonZeroUsize::new(4).unwrap(), root, Redactor::default())
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
            lost_before: 0,
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
        t.on_exec(&header(7, 1), link.to_str().unwrap().as_bytes(), &[], false);
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
        t.on_exec(&header(11, 1), b"/usr/bin/busybox", &[], false);
        t.on_exec(&header(11, 1), cat.to_str().unwrap().as_bytes(), &[], false);
        assert_eq!(
            t.observe(&header(11, 1)).exe.as_deref(),
            Some("/usr/bin/busybox")
        );
        t.on_exec(&header(11, 1), b"/proc/self/exe", &[], false);
        assert_eq!(
            t.observe(&header(11, 1)).exe.as_deref(),
            Some("/usr/bin/busybox")
        );
        // Nothing known before: /proc says, never the agent's own image.
        t.on_exec(&header(11, 1), b"/proc/self/exe", &[], false);
        let mut fresh = table(dir.path());
        fresh.on_exec(&header(11, 1), b"/proc/self/exe", &[], false);
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
        t.on_exec(&header(9, 1), b"./true", &[], false);
        assert_eq!(
            t.observe(&header(9, 1)).exe.as_deref(),
            Some("/usr/bin/true")
        );
        t.on_exec(&header(10, 1), b"./gone", &[], false);
        assert_eq!(t.observe(&header(10, 1)).exe.as_deref(), Some("./gone"));
    }

    #[test]
    fn fork_inherits_then_exec_replaces_and_ancestry_survives_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        t.on_exec(&header(100, 1), b"/bin/sh", &[], false);
        t.on_fork(&header(100, 1), 101);
        let parent_exe = t.procs.peek(&100).unwrap().info.exe.clone();
        assert!(parent_exe.is_some());
        assert_eq!(t.observe(&header(101, 100)).exe, parent_exe);
        t.on_exec(&header(101, 100), b"/usr/bin/env", &[], false);
        t.on_exit(100);
        let anc = t.ancestors(100, 5);
        assert_eq!(anc.len(), 1, "pid 1 is not in the fake /proc: {anc:?}");
        assert_eq!(anc[0].pid, 100);
        assert_eq!(anc[0].exe, t.procs.peek(&100).unwrap().info.exe);
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

    /// A fake `/proc/<pid>` started at `ticks` after boot, running `exe`.
    fn fake_proc(root: &Path, pid: u32, ticks: u64, exe: &str) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("stat"),
            format!(
                "{pid} (x) S 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {ticks} 1000000 100 \
                 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"
            ),
        )
        .unwrap();
        std::os::unix::fs::symlink(exe, d.join("exe")).unwrap();
    }

    #[test]
    fn after_lost_events_only_a_later_exec_or_the_live_process_vouches() {
        let dir = tempfile::tempdir().unwrap();
        fake_proc(dir.path(), 60, 1000, "/usr/bin/less");
        let mut t = ProcessTable::new(
            NonZeroUsize::new(16).unwrap(),
            dir.path(),
            Redactor::default(),
        );
        let ns_per_tick = 1_000_000_000 / t.ticks_per_second;
        let at = |pid, boot_ns| EventHeader {
            boot_ns,
            ..header(pid, 1)
        };
        t.on_exec(&at(50, 100), b"/no/such/sh", &[], false);
        t.on_fork(&at(50, 120), 51);
        assert!(t.observe(&at(51, 130)).vouched);
        t.on_loss(200);
        // 51 may have exec'd meanwhile: gone from /proc, it is not vouched
        // for, whatever the table knew.
        let stale = t.observe(&at(51, 210));
        assert!(!stale.vouched);
        assert_eq!(
            stale.exe.as_deref(),
            Some("/no/such/sh"),
            "kept, not trusted"
        );
        // A fork of a process not vouched for is not either.
        t.on_fork(&at(51, 220), 54);
        assert!(!t.observe(&at(54, 230)).vouched);
        // An exec stamped before the loss was noticed proves nothing...
        t.on_exec(&at(52, 150), b"/usr/bin/cat", &[], false);
        assert!(!t.observe(&at(52, 160)).vouched);
        // ...one after it does, and so do its forks.
        t.on_exec(&at(52, 300), b"/usr/bin/cat", &[], false);
        assert!(t.observe(&at(52, 310)).vouched);
        t.on_fork(&at(52, 320), 53);
        assert!(t.observe(&at(53, 330)).vouched);
        // A live process with the event's start time: /proc vouches.
        let live = EventHeader {
            start_ns: 1000 * ns_per_tick,
            ..at(60, 400)
        };
        let info = t.observe(&live);
        assert!(info.vouched);
        assert_eq!(info.exe.as_deref(), Some("/usr/bin/less"));
        // The same pid with another start: a reused pid, not that process.
        let mut fresh = ProcessTable::new(
            NonZeroUsize::new(16).unwrap(),
            dir.path(),
            Redactor::default(),
        );
        let reused = fresh.observe(&EventHeader {
            start_ns: 2000 * ns_per_tick,
            ..at(60, 400)
        });
        assert!(!reused.vouched);
        assert_eq!(reused.exe, None);
    }

    #[test]
    fn args_and_a_comm_the_process_set_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        let args = ["sh".to_string(), "--token".into(), "Xq9Vz1101".into()];
        let (info, found) = t.on_exec(&header(12, 1), b"/bin/sh", &args, false);
        assert_eq!(info.args, ["sh", "--token", "…"]);
        assert_eq!(found[0].kind, "secret_flag");
        // The kernel named it `sh` at exec: shown.
        assert_eq!(t.observe(&header(12, 1)).comm, "sh");
        // It renamed itself (prctl, /proc/self/comm) to a credential.
        let mut renamed = header(12, 1);
        renamed.comm = *b"Qx7Lp2Zr9Wk4Tm6\0";
        assert_eq!(t.observe(&renamed).comm, "…");
        // A child inherits the exec name with the image.
        t.on_fork(&header(12, 1), 13);
        assert_eq!(t.observe(&header(13, 12)).comm, "sh");
        assert_eq!(t.observe(&header(13, 12)).args, ["sh", "--token", "…"]);
    }

    #[test]
    fn capacity_bounds_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(dir.path());
        for pid in 1..=10 {
            t.on_exec(&header(pid, 1), b"/x", &[], false);
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
