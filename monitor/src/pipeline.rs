//! One kernel record in, zero or more events out: process table upkeep,
//! attribution to a watched secret and an identity, and the JSON line.

use std::{
    collections::HashMap,
    ffi::OsStr,
    io,
    num::NonZeroUsize,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirEntryExt as _, MetadataExt as _},
    },
    path::{Component, Path, PathBuf},
};

use chrono::{DateTime, Utc};
use lru::LruCache;
use monitor_common::{COMPONENT_LEN, EventHeader, FileKey, PATH_COMPONENTS};

use crate::{
    event::{
        self, Access, EnvSecret, EnvironRead, Event, Host, IoUringOpen, Process, SecretInArgv,
        SecretInEnv, SecretRead, Target,
    },
    identity::{Identity, IdentityResolver},
    inventory::Inventory,
    inventory::{
        InventoryChange, MapEdit,
        scan::{Scanner, Skip},
    },
    ledger::{
        ExposureKind, Observation, OpenMode, Seen,
        facts::{file_exists, secret_facts},
    },
    probes::{DeniedOpen, Exec, KernelEvent, NameRuleOpen},
    process::ProcessInfo,
    process::ProcessTable,
    redact::Redactor,
    sink::Sink,
};

/// Ancestors listed on each event, parent first.
const MAX_ANCESTORS: usize = 5;
/// Processes the table keeps.
const PROCESS_CAPACITY: NonZeroUsize = NonZeroUsize::new(65_536).expect("nonzero");

/// Converts the kernel's boot-time clock to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock nanoseconds at boot.
    boot_epoch_ns: i128,
}

impl Clock {
    pub fn now() -> io::Result<Self> {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
        let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
        let ns = |t: nix::sys::time::TimeSpec| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        Ok(Self {
            boot_epoch_ns: ns(real) - ns(boot),
        })
    }

    pub fn wall(&self, boot_ns: u64) -> DateTime<Utc> {
        let ns = self.boot_epoch_ns + i128::from(boot_ns);
        let secs = (ns.div_euclid(1_000_000_000)) as i64;
        let nanos = ns.rem_euclid(1_000_000_000) as u32;
        DateTime::from_timestamp(secs, nanos).unwrap_or_else(Utc::now)
    }
}

/// Counters for the stop message.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub records: u64,
    pub malformed: u64,
    pub secret_reads: u64,
    /// Denied opens whose path could not be resolved (process gone).
    pub denied_unresolved: u64,
    /// Execs whose environment was not scanned to its end.
    pub env_truncated: u64,
}

/// Reads waiting to be folded: same process, secret, result, way in and
/// mode (a write is not folded into a read).
type FoldKey = (u32, u32, String, &'static str, OpenMode);

pub struct Pipeline {
    pub watch: Inventory,
    pub procs: ProcessTable,
    pub host: Host,
    pub identities: IdentityResolver,
    pub clock: Clock,
    pub sink: Sink,
    pub stats: Stats,
    /// What the ledger should record, taken by the agent after each batch.
    pub observed: Vec<Observation>,
    /// Folded reads, with the reader's cgroup id for the ledger.
    folds: HashMap<FoldKey, (DateTime<Utc>, SecretRead, u64)>,
    proc_root: PathBuf,
    /// Inspects files the kernel's name rules found, to inventory them.
    discoverer: Option<Scanner>,
    /// Watch-map edits for the agent to apply after this batch.
    edits: Vec<MapEdit>,
    /// Files the name rules matched that hold no secret (a CA bundle named
    /// `*.pem`), so that their opens are not inspected again and again.
    /// Keyed by what changes when the file does, or when its inode is
    /// recycled for another file.
    not_secrets: LruCache<FileVersion, ()>,
    /// secretmon's own processes read secret files to fingerprint them
    /// (the agent, `secretmon inventory`): not a use.
    own: OwnExe,
}

/// This installation's executable, to tell secretmon's own processes by:
/// its path, and its (device, inode) for another path to the same file.
struct OwnExe {
    pid: u32,
    path: Option<String>,
    file: Option<(u64, u64)>,
    /// Executables already compared, by path.
    seen: LruCache<String, bool>,
}

impl OwnExe {
    fn of_this_process() -> Self {
        let link = std::fs::read_link("/proc/self/exe").ok();
        // Replaced by an upgrade while running: the new file at the same
        // path is this installation too.
        let path = link.map(|p| {
            let p = p.to_string_lossy();
            p.strip_suffix(" (deleted)").unwrap_or(&p).to_string()
        });
        let file = std::fs::metadata("/proc/self/exe")
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Self {
            pid: std::process::id(),
            path,
            file,
            seen: LruCache::new(NonZeroUsize::new(256).expect("nonzero")),
        }
    }

    /// Whether `p` runs secretmon. A process the table cannot vouch for is
    /// not known to be ours.
    fn is(&mut self, p: &ProcessInfo) -> bool {
        if p.pid == self.pid {
            return true;
        }
        let Some(exe) = p.exe.as_deref().filter(|_| p.vouched) else {
            return false;
        };
        if let Some(&ours) = self.seen.get(exe) {
            return ours;
        }
        let ours = self.path.as_deref() == Some(exe)
            || std::fs::metadata(exe)
                .ok()
                .is_some_and(|m| self.file == Some((m.dev(), m.ino())));
        self.seen.put(exe.to_string(), ours);
        ours
    }
}

/// A file's identity and state: (dev, ino) can be reused after a delete,
/// the change time then differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    key: FileKey,
    ctime: i64,
    ctime_nsec: i64,
}

/// Pending folds are flushed early when this many are waiting.
const MAX_PENDING_FOLDS: usize = 4096;

impl Pipeline {
    pub fn new(
        watch: Inventory,
        host: Host,
        identities: IdentityResolver,
        sink: Sink,
    ) -> io::Result<Self> {
        Ok(Self {
            watch,
            procs: ProcessTable::new(PROCESS_CAPACITY, "/proc", Redactor::default()),
            host,
            identities,
            clock: Clock::now()?,
            sink,
            stats: Stats::default(),
            observed: Vec::new(),
            folds: HashMap::new(),
            proc_root: PathBuf::from("/proc"),
            discoverer: None,
            edits: Vec::new(),
            not_secrets: LruCache::new(NonZeroUsize::new(4096).expect("nonzero")),
            own: OwnExe::of_this_process(),
        })
    }

    /// Apply a change of the inventory to the watch list, and tell the
    /// ledger at once: a secret found while the agent runs is a secret of
    /// the ledger before its first read is.
    pub fn inventory_change(&mut self, change: InventoryChange) -> MapEdit {
        let at = Utc::now();
        self.observed.push(match &change {
            InventoryChange::Upsert(record) => Observation::Secret {
                at,
                facts: secret_facts(record),
            },
            InventoryChange::Remove(path) => Observation::SecretGone {
                at,
                id: crate::secret::secret_id(path),
                file_exists: file_exists(path),
            },
        });
        self.watch.apply(change)
    }

    /// The kernel lost events, the last of them at or before `boot_ns`
    /// (the boot clock when the loss was noticed): from now on a process
    /// is attributed only when an exec or fork seen since, or `/proc`,
    /// vouches for what runs.
    pub fn events_lost(&mut self, boot_ns: u64) {
        self.procs.on_loss(boot_ns);
        self.identities.forget_all();
    }

    /// Inventory the files the name rules find with `scanner`.
    pub fn with_discoverer(mut self, scanner: Scanner) -> Self {
        self.discoverer = Some(scanner);
        self
    }

    /// Redact argv and `comm` with `redactor` (its policy, the config's
    /// secret variable names); the default is the built-in rules,
    /// `redacted`.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.procs = ProcessTable::new(PROCESS_CAPACITY, &self.proc_root, redactor);
        self
    }

    /// The watch-map edits of the records handled since the last call.
    pub fn take_edits(&mut self) -> Vec<MapEdit> {
        std::mem::take(&mut self.edits)
    }

    /// Handle one ring-buffer record.
    pub fn handle(&mut self, record: &[u8]) -> io::Result<()> {
        self.stats.records += 1;
        let Some(ev) = crate::probes::decode(record) else {
            self.stats.malformed += 1;
            return Ok(());
        };
        match ev {
            KernelEvent::Exec(exec) => self.exec(exec),
            KernelEvent::Fork { header, child_pid } => {
                self.procs.on_fork(&header, child_pid);
                Ok(())
            }
            KernelEvent::Exit(header) => {
                self.procs.on_exit(header.pid);
                self.identities.forget(header.pid);
                Ok(())
            }
            KernelEvent::Open(open) => {
                // An id the watch list no longer has (a race with a later
                // update) is not attributable: skip it rather than guess.
                let Some(id) = self.watch.get(&open.key).map(|f| f.slot) else {
                    self.stats.malformed += 1;
                    return Ok(());
                };
                // The agent fingerprinting a rotated file is not a workload.
                if open.header.pid == self.own.pid {
                    return Ok(());
                }
                let via = event::open_via(open.via);
                self.secret_read(&open.header, id, open.flags, "ok".into(), via)
            }
            KernelEvent::DeniedOpen(denied) => self.denied_open(&denied),
            KernelEvent::NameRuleOpen(found) => self.name_rule_open(found),
            KernelEvent::IoUringOpen { header, opcode } => {
                let (process, identity, _) = self.who(&header);
                let body = IoUringOpen {
                    process,
                    identity,
                    opcode: if opcode == 28 {
                        "IORING_OP_OPENAT2"
                    } else {
                        "IORING_OP_OPENAT"
                    },
                    message: "opens files through io_uring, which the syscall tracepoints do not see: its secret reads may be missing",
                };
                self.emit("io_uring_open", header.boot_ns, &body)
            }
            KernelEvent::EnvironRead { header, target_pid } => {
                let (process, identity, info) = self.who(&header);
                let target = Target {
                    pid: target_pid,
                    exe: self.procs.peek_exe(target_pid),
                };
                let subject = target.exe.clone().unwrap_or_else(|| target_pid.to_string());
                self.observe(
                    &header,
                    ExposureKind::Environ,
                    subject,
                    None,
                    &identity,
                    &info,
                );
                let body = EnvironRead {
                    process,
                    identity,
                    target,
                };
                self.emit("environ_read", header.boot_ns, &body)
            }
        }
    }

    /// Emit every folded read; called at least once a second.
    pub fn flush_folds(&mut self) -> io::Result<()> {
        let mut pending: Vec<_> = self
            .folds
            .drain()
            .map(|((.., mode), (time, body, cgroup_id))| (time, body, cgroup_id, mode))
            .collect();
        pending.sort_by_key(|(time, ..)| *time);
        for (time, body, cgroup_id, mode) in pending {
            self.observed.push(Observation::Read {
                at: time,
                secret_id: body.secret.id.clone(),
                who: Seen::new(&body.identity, cgroup_id, body.process.exe.clone()),
                pid: body.process.pid,
                uid: body.process.uid,
                count: body.access.count,
                denied: body.access.result != "ok",
                mode,
            });
            self.sink
                .emit(&Event::new("secret_read", time, &self.host, body))?;
        }
        Ok(())
    }

    fn exec(&mut self, exec: Exec) -> io::Result<()> {
        if exec.env_truncated {
            self.stats.env_truncated += 1;
        }
        let (mut execed, found) = self.procs.on_exec(
            &exec.header,
            &exec.filename,
            &exec.args,
            exec.args_truncated,
        );
        // The exec itself says what runs, events lost around it or not.
        execed.vouched = true;
        self.identities.forget(exec.header.pid);
        for secret in found {
            let (process, identity, info) = self.describe(execed.clone());
            let (kind, shown) = (secret.kind.clone(), Some(secret.redacted.clone()));
            self.observe(
                &exec.header,
                ExposureKind::Argv,
                kind,
                shown,
                &identity,
                &info,
            );
            let body = SecretInArgv {
                process,
                identity,
                secret,
            };
            self.emit("secret_in_argv", exec.header.boot_ns, &body)?;
        }
        for env_name in exec.env_names {
            let (process, identity, info) = self.describe(execed.clone());
            self.observe(
                &exec.header,
                ExposureKind::Env,
                env_name.clone(),
                None,
                &identity,
                &info,
            );
            let body = SecretInEnv {
                process,
                identity,
                secret: EnvSecret { env_name },
            };
            self.emit("secret_in_env", exec.header.boot_ns, &body)?;
        }
        Ok(())
    }

    /// An unwatched file whose name says credential: inventory it, so later
    /// reads match by inode, and report this read. The kernel's path is the
    /// one in the opener's mount namespace; it is the host's path when the
    /// host sees the same inode there.
    fn name_rule_open(&mut self, found: NameRuleOpen) -> io::Result<()> {
        if found.header.pid == self.own.pid {
            return Ok(());
        }
        if let Some(slot) = self.watch.get(&found.key).map(|r| r.slot) {
            return self.secret_read(&found.header, slot, found.flags, "ok".into(), found.via);
        }
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
        let version = meta.as_ref().map(|m| FileVersion {
            key: found.key,
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        });
        if let Some(v) = version
            && self.not_secrets.get(&v).is_some()
        {
            return Ok(());
        }
        if let Some(path) = &path
            && let Some(version) = version
            && let Some(scanner) = &self.discoverer
        {
            match scanner.inspect_discovered(path) {
                Ok(record) => {
                    let edit = self.inventory_change(InventoryChange::Upsert(record));
                    let slot = edit.add.map(|(_, slot)| slot);
                    self.edits.push(edit);
                    if let Some(slot) = slot {
                        return self.secret_read(
                            &found.header,
                            slot,
                            found.flags,
                            "ok".into(),
                            found.via,
                        );
                    }
                }
                // A name that looked like a secret but holds none.
                Err(Skip::NoSecret) => {
                    self.not_secrets.put(version, ());
                    return Ok(());
                }
                Err(_) => {}
            }
        }
        // Not inventoried (another namespace's file, unreadable, a path the
        // kernel cut): report what the kernel saw. A cut path may be another
        // file's too: the id is then the file's, and the event says so.
        let (process, identity, info) = self.who(&found.header);
        if self.own.is(&info) {
            return Ok(());
        }
        self.stats.secret_reads += 1;
        let (id, shown) = match &path {
            Some(p) => (
                crate::secret::secret_id(p),
                p.to_string_lossy().into_owned(),
            ),
            None => (
                crate::secret::file_secret_id(found.key.dev, found.key.ino),
                found.path.to_string_lossy().into_owned(),
            ),
        };
        let body = SecretRead {
            process,
            identity,
            secret: event::Secret {
                id,
                container_path: meta.is_none().then(|| shown.clone()),
                path: shown,
                path_truncated: path.is_none(),
                secret_type: crate::secret::SecretType::Generic,
                fingerprint: String::new(),
                lifetime: crate::secret::Lifetime::Unknown,
                hint: None,
            },
            access: Access {
                op: "open",
                flags: event::open_flags(found.flags),
                result: "ok".into(),
                count: 1,
                via: found.via,
            },
        };
        self.emit("secret_read", found.header.boot_ns, &body)
    }

    /// A denied open names a path, not an inode: resolve it as the process
    /// saw it, and report it if it is a watched secret.
    fn denied_open(&mut self, d: &DeniedOpen) -> io::Result<()> {
        let name = Path::new(std::ffi::OsStr::from_bytes(&d.filename));
        let walked = d
            .base
            .as_ref()
            .filter(|_| name.is_relative())
            .map(|b| b.join(name));
        let Some(path) =
            walked.or_else(|| resolve_open_path(&self.proc_root, d.header.pid, d.dfd, &d.filename))
        else {
            self.stats.denied_unresolved += 1;
            return Ok(());
        };
        let Some(id) = self.watch.lookup_path(&path).map(|f| f.slot) else {
            return Ok(());
        };
        self.secret_read(&d.header, id, d.flags, errno_name(d.errno), "syscall")
    }

    fn secret_read(
        &mut self,
        h: &EventHeader,
        file_id: u32,
        flags: u32,
        result: String,
        via: &'static str,
    ) -> io::Result<()> {
        if h.pid == self.own.pid {
            return Ok(());
        }
        let key = (h.pid, file_id, result, via, OpenMode::from_flags(flags));
        if let Some((_, pending, _)) = self.folds.get_mut(&key) {
            self.stats.secret_reads += 1;
            pending.access.count += 1;
            return Ok(());
        }
        let Some(file) = self.watch.by_slot(file_id) else {
            return Ok(());
        };
        let path = file.path.clone();
        let mut secret = event::Secret::from(file);
        let (process, identity, info) = self.who(h);
        // `secretmon inventory` (or another secretmon of this installation)
        // fingerprinting the file: not a use. Its opens are never folded,
        // so each is checked here.
        if self.own.is(&info) {
            return Ok(());
        }
        self.stats.secret_reads += 1;
        secret.container_path = self.identities.container_path(&info, &path);
        let body = SecretRead {
            process,
            identity,
            secret,
            access: Access {
                op: "open",
                flags: event::open_flags(flags),
                result: key.2.clone(),
                count: 1,
                via,
            },
        };
        self.folds
            .insert(key, (self.clock.wall(h.boot_ns), body, info.cgroup_id));
        if self.folds.len() >= MAX_PENDING_FOLDS {
            self.flush_folds()?;
        }
        Ok(())
    }

    /// Record a secret seen outside a file for the ledger.
    fn observe(
        &mut self,
        h: &EventHeader,
        kind: ExposureKind,
        subject: String,
        detail: Option<String>,
        identity: &Identity,
        info: &ProcessInfo,
    ) {
        self.observed.push(Observation::Exposure {
            at: self.clock.wall(h.boot_ns),
            kind,
            subject,
            detail,
            who: Seen::new(
                identity,
                info.cgroup_id,
                info.exe.clone().filter(|_| info.vouched),
            ),
            pid: h.pid,
        });
    }

    /// The process and identity of the header's process, and what the
    /// table knows of it. A process the table cannot vouch for (events
    /// lost since its exec, a reused pid) has an `unknown` identity, no
    /// executable, arguments or ancestry: only what the event itself
    /// carries (pid, uid, comm, terminal, login uid, start).
    fn who(&mut self, h: &EventHeader) -> (Process, Identity, ProcessInfo) {
        let info = self.procs.observe(h);
        self.describe(info)
    }

    /// The process and identity of what the table says of a process.
    fn describe(&mut self, info: ProcessInfo) -> (Process, Identity, ProcessInfo) {
        let user = self.procs.user_name(info.uid);
        let start_time = self
            .clock
            .wall(info.start_ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        if !info.vouched {
            let process = Process {
                pid: info.pid,
                ppid: info.ppid,
                uid: info.uid,
                gid: info.gid,
                user,
                comm: info.comm.clone(),
                exe: None,
                args: Vec::new(),
                args_truncated: false,
                tty: info.tty,
                loginuid: info.loginuid,
                start_time,
                ancestors: Vec::new(),
            };
            let identity = Identity {
                human: info.tty || info.loginuid.is_some(),
                ..Identity::unknown()
            };
            return (process, identity, info);
        }
        let ancestors = self.procs.ancestors(info.ppid, MAX_ANCESTORS);
        let identity = self.identities.resolve(&info, &user, &ancestors);
        let process = Process {
            pid: info.pid,
            ppid: info.ppid,
            uid: info.uid,
            gid: info.gid,
            user,
            comm: info.comm.clone(),
            exe: info.exe.clone(),
            args: info.args.clone(),
            args_truncated: info.args_truncated,
            tty: info.tty,
            loginuid: info.loginuid,
            start_time,
            ancestors,
        };
        (process, identity, info)
    }

    fn emit<B: serde::Serialize>(
        &mut self,
        kind: &'static str,
        boot_ns: u64,
        body: &B,
    ) -> io::Result<()> {
        let time = self.clock.wall(boot_ns);
        self.sink.emit(&Event::new(kind, time, &self.host, body))
    }
}

/// The path a failed open asked for, absolute: relative names are taken
/// from the process's cwd or its `dfd`, while it still exists.
fn resolve_open_path(proc_root: &Path, pid: u32, dfd: i32, name: &[u8]) -> Option<PathBuf> {
    let name = Path::new(std::ffi::OsStr::from_bytes(name));
    if name.as_os_str().is_empty() {
        return None;
    }
    if name.is_absolute() {
        return Some(name.to_path_buf());
    }
    let proc_dir = proc_root.join(pid.to_string());
    let base = if dfd == AT_FDCWD {
        std::fs::read_link(proc_dir.join("cwd")).ok()?
    } else {
        std::fs::read_link(proc_dir.join("fd").join(dfd.to_string())).ok()?
    };
    Some(base.join(name))
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

/// `EACCES` for 13: the errno's name, as the event contract wants.
fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

const AT_FDCWD: i32 = -100;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use monitor_common::{
        ARGS_LEN, ENV_NAME_LEN, ENV_NAMES_MAX, EventHeader, EventKind, ExecEvent, FILENAME_LEN,
        NameRuleOpenEvent, OpenEvent,
    };

    use super::*;
    use crate::identity::{IdentityConfig, Naming, cgroup_tree::CgroupTree};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: the bytes of a plain #[repr(C)] value, in a test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind, pid: u32) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid,
            tid: pid,
            ppid: 1,
            uid: 0,
            gid: 0,
            loginuid: monitor_common::UNSET_LOGINUID,
            tty: 0,
            boot_ns: 1_000,
            start_ns: 500,
            cgroup_id: 1,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    /// The pipeline's observations for the ledger, one line each.
    fn observed(p: &Pipeline) -> Vec<String> {
        p.observed
            .iter()
            .map(|o| match o {
                Observation::Exposure {
                    kind,
                    subject,
                    detail,
                    who,
                    ..
                } => format!("{} {subject} {detail:?} {}", kind.as_str(), who.id),
                Observation::Read {
                    secret_id,
                    count,
                    denied,
                    mode,
                    who,
                    ..
                } => format!("read {secret_id} {count} {denied} {mode:?} {}", who.id),
                Observation::Secret { facts, .. } => format!("secret {} {}", facts.id, facts.path),
                Observation::SecretGone {
                    id, file_exists, ..
                } => format!("gone {id} {file_exists}"),
            })
            .collect()
    }

    fn pipeline(dir: &Path, records: Vec<crate::inventory::Record>) -> (Pipeline, Shared) {
        let out = Shared::default();
        let identities = IdentityResolver::new(
            Naming::new(Some("td"), "h").unwrap(),
            IdentityConfig::default(),
            dir,
            CgroupTree::at(None),
            NonZeroUsize::new(8).unwrap(),
        );
        let p = Pipeline::new(
            Inventory::new(records),
            Host { name: "h".into() },
            identities,
            Sink::to_writer(out.clone()),
        )
        .unwrap();
        (p, out)
    }

    fn exec_of(pid: u32, filename: &[u8]) -> ExecEvent {
        let mut exec = ExecEvent {
            header: header(EventKind::Exec, pid),
            old_pid: pid,
            filename_len: filename.len() as u32,
            filename: [0; FILENAME_LEN],
            args_len: 0,
            args_truncated: 0,
            args: [0; ARGS_LEN],
            env_count: 0,
            env_truncated: 0,
            env_names: [[0; ENV_NAME_LEN]; ENV_NAMES_MAX],
        };
        exec.filename[..filename.len()].copy_from_slice(filename);
        exec
    }

    fn open_of(pid: u32, key: FileKey, flags: i32) -> OpenEvent {
        OpenEvent {
            header: header(EventKind::Open, pid),
            key,
            flags: flags as u32,
            ret: 3,
            via: monitor_common::VIA_SYSCALL,
            _pad: 0,
        }
    }

    fn events(out: &Shared) -> Vec<serde_json::Value> {
        String::from_utf8(out.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Pids that cannot exist, so that /proc cannot help.
    const PID: u32 = u32::MAX - 10;

    /// Lost events may hold the child's exec: its read is the unknown
    /// identity's, never the parent shell's; an exec seen after the loss
    /// names it again.
    #[test]
    fn after_lost_events_a_reader_is_unknown_not_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let record = crate::inventory::test_record(&dir.path().join("credentials"), 7);
        let key = record.key;
        let (mut p, out) = pipeline(dir.path(), vec![record]);
        let (shell, child) = (PID, PID + 1);
        p.handle(&bytes_of(&exec_of(shell, b"/usr/bin/bash")))
            .unwrap();
        let fork = monitor_common::ForkEvent {
            header: header(EventKind::Fork, shell),
            child_pid: child,
            _pad: 0,
        };
        p.handle(&bytes_of(&fork)).unwrap();
        p.events_lost(1_500);
        let mut open = open_of(child, key, libc::O_RDONLY);
        open.header.boot_ns = 2_000;
        p.handle(&bytes_of(&open)).unwrap();
        p.flush_folds().unwrap();
        let mut exec = exec_of(child, b"/usr/bin/cat");
        exec.header.boot_ns = 3_000;
        p.handle(&bytes_of(&exec)).unwrap();
        open.header.boot_ns = 4_000;
        p.handle(&bytes_of(&open)).unwrap();
        p.flush_folds().unwrap();
        p.sink.flush().unwrap();
        let reads: Vec<_> = events(&out)
            .into_iter()
            .filter(|v| v["kind"] == "secret_read")
            .collect();
        assert_eq!(reads.len(), 2, "{reads:#?}");
        let unknown = &reads[0];
        assert_eq!(unknown["identity"]["id"], "unknown");
        assert_eq!(unknown["identity"]["kind"], "unknown");
        assert_eq!(unknown["process"]["exe"], serde_json::Value::Null);
        assert_eq!(unknown["process"]["args"], serde_json::json!([]));
        assert_eq!(unknown["process"]["ancestors"], serde_json::json!([]));
        assert_eq!(unknown["process"]["comm"], "cat", "the event's own comm");
        assert_eq!(reads[1]["identity"]["id"], "user:root:/usr/bin/cat");
        let seen: Vec<String> = observed(&p)
            .into_iter()
            .map(|o| o.rsplit(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(seen, ["unknown", "user:root:/usr/bin/cat"]);
        // An exec handled after the loss names its own image, whenever it
        // was stamped: its secrets in the environment are its own.
        let mut exec = exec_of(PID + 2, b"/usr/bin/env");
        exec.env_count = 1;
        exec.env_names[0][..12].copy_from_slice(b"GITHUB_TOKEN");
        p.handle(&bytes_of(&exec)).unwrap();
        p.sink.flush().unwrap();
        let env = events(&out)
            .into_iter()
            .find(|v| v["kind"] == "secret_in_env")
            .unwrap();
        assert_eq!(env["identity"]["id"], "user:root:/usr/bin/env", "{env}");
    }

    /// `secretmon inventory` reads every secret while the agent runs: any
    /// process of this installation's executable is no reader.
    #[test]
    fn secretmon_itself_is_no_reader() {
        let dir = tempfile::tempdir().unwrap();
        let record = crate::inventory::test_record(&dir.path().join("credentials"), 7);
        let key = record.key;
        let (mut p, out) = pipeline(dir.path(), vec![record]);
        let own = std::fs::read_link("/proc/self/exe").unwrap();
        p.handle(&bytes_of(&exec_of(PID, own.as_os_str().as_bytes())))
            .unwrap();
        p.handle(&bytes_of(&open_of(PID, key, libc::O_RDONLY)))
            .unwrap();
        p.handle(&bytes_of(&exec_of(PID + 1, b"/usr/bin/cat")))
            .unwrap();
        p.handle(&bytes_of(&open_of(PID + 1, key, libc::O_RDONLY)))
            .unwrap();
        p.flush_folds().unwrap();
        p.sink.flush().unwrap();
        let readers: Vec<_> = events(&out)
            .into_iter()
            .filter(|v| v["kind"] == "secret_read")
            .map(|v| v["process"]["pid"].as_u64().unwrap())
            .collect();
        assert_eq!(readers, [u64::from(PID + 1)]);
        assert_eq!(p.stats.secret_reads, 1);
        assert_eq!(observed(&p).len(), 1);
    }

    /// A `touch` and a `cat` by one process are two things: a write and a
    /// read, never folded together.
    #[test]
    fn writes_are_observed_apart_from_reads() {
        let dir = tempfile::tempdir().unwrap();
        let record = crate::inventory::test_record(&dir.path().join("credentials"), 7);
        let (key, id) = (record.key, record.id.clone());
        let (mut p, _) = pipeline(dir.path(), vec![record]);
        p.handle(&bytes_of(&exec_of(PID, b"/usr/bin/touch")))
            .unwrap();
        for flags in [libc::O_WRONLY, libc::O_RDONLY, libc::O_WRONLY] {
            p.handle(&bytes_of(&open_of(PID, key, flags))).unwrap();
        }
        p.flush_folds().unwrap();
        let mut seen = observed(&p);
        seen.sort();
        assert_eq!(
            seen,
            [
                format!("read {id} 1 false Read user:root:/usr/bin/touch"),
                format!("read {id} 2 false Write user:root:/usr/bin/touch"),
            ]
        );
    }

    /// What inotify finds (or loses) while the agent runs reaches the
    /// ledger at once; a removal says whether the file is still there.
    #[test]
    fn inventory_changes_are_observed_for_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "x").unwrap();
        let record = crate::inventory::test_record(&path, 7);
        let id = record.id.clone();
        let (mut p, _) = pipeline(dir.path(), Vec::new());
        let edit = p.inventory_change(InventoryChange::Upsert(record));
        assert!(edit.add.is_some());
        p.inventory_change(InventoryChange::Remove(path.clone()));
        std::fs::remove_file(&path).unwrap();
        p.inventory_change(InventoryChange::Remove(path.clone()));
        assert_eq!(
            observed(&p),
            [
                format!("secret {id} {}", path.display()),
                format!("gone {id} true"),
                format!("gone {id} false"),
            ]
        );
    }

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

    fn name_rule_open(pid: u32, key: FileKey, inner_first: &[&str]) -> NameRuleOpenEvent {
        let mut ev = NameRuleOpenEvent {
            header: header(EventKind::NameRuleOpen, pid),
            key,
            flags: 0,
            ret: 3,
            rule: 0,
            via: monitor_common::VIA_SYSCALL,
            path: monitor_common::WalkedPath {
                depth: inner_first.len() as u32,
                truncated: 1,
                components: [[0; COMPONENT_LEN]; PATH_COMPONENTS],
            },
        };
        for (slot, name) in ev.path.components.iter_mut().zip(inner_first) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        ev
    }

    /// Two deep files the kernel's name rules found, whose paths it cut
    /// alike: two ids, and the events say the path is cut.
    #[test]
    fn cut_paths_keep_files_apart_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, out) = pipeline(dir.path(), Vec::new());
        p.handle(&bytes_of(&exec_of(PID, b"/usr/bin/cat"))).unwrap();
        let inner_first: Vec<String> = std::iter::once("deep.pem".to_string())
            .chain((4..=18).rev().map(|i| i.to_string()))
            .collect();
        let names: Vec<&str> = inner_first.iter().map(String::as_str).collect();
        for ino in [901, 902] {
            let ev = name_rule_open(PID, FileKey { dev: 1, ino }, &names);
            p.handle(&bytes_of(&ev)).unwrap();
        }
        p.sink.flush().unwrap();
        let reads: Vec<_> = events(&out)
            .into_iter()
            .filter(|v| v["kind"] == "secret_read")
            .collect();
        assert_eq!(reads.len(), 2);
        for r in &reads {
            assert_eq!(r["secret"]["path_truncated"], true, "{r}");
            assert!(
                r["secret"]["path"]
                    .as_str()
                    .unwrap()
                    .ends_with("/18/deep.pem")
            );
        }
        assert_ne!(reads[0]["secret"]["id"], reads[1]["secret"]["id"]);
        assert_eq!(
            reads[0]["secret"]["id"],
            crate::secret::file_secret_id(1, 901).as_str()
        );
    }

    #[test]
    fn denied_paths_resolve_against_cwd_and_dfd() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join("77");
        std::fs::create_dir_all(proc_dir.join("fd")).unwrap();
        std::os::unix::fs::symlink("/home/ana", proc_dir.join("cwd")).unwrap();
        std::os::unix::fs::symlink("/srv", proc_dir.join("fd/5")).unwrap();
        let r = |dfd, name: &[u8]| resolve_open_path(dir.path(), 77, dfd, name);
        assert_eq!(r(AT_FDCWD, b"/etc/shadow"), Some("/etc/shadow".into()));
        assert_eq!(
            r(AT_FDCWD, b".aws/credentials"),
            Some("/home/ana/.aws/credentials".into())
        );
        assert_eq!(r(5, b"app/.env"), Some("/srv/app/.env".into()));
        assert_eq!(r(6, b"x"), None, "unknown fd");
        assert_eq!(r(AT_FDCWD, b""), None);
        assert_eq!(
            resolve_open_path(dir.path(), 78, AT_FDCWD, b"x"),
            None,
            "gone"
        );
        assert_eq!(errno_name(13), "EACCES");
        assert_eq!(errno_name(1), "EPERM");
    }

    #[test]
    fn exec_then_open_of_a_gone_process_is_attributed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("credentials");
        std::fs::write(&secret, "not-a-real-secret").unwrap();
        let record = crate::inventory::test_record(&secret, 77);
        let key = record.key;
        let (mut p, out) = pipeline(dir.path(), vec![record]);
        // A pid that cannot exist, so /proc cannot help: only the exec event.
        let pid = u32::MAX - 1;
        let mut exec = exec_of(pid, b"/usr/bin/cat");
        exec.env_count = 1;
        let argv = b"cat\0--token=not-a-real-token-0000\0";
        exec.args[..argv.len()].copy_from_slice(argv);
        exec.args_len = argv.len() as u32;
        exec.env_names[0][..12].copy_from_slice(b"GITHUB_TOKEN");
        p.handle(&bytes_of(&exec)).unwrap();
        let open = open_of(pid, key, 0);
        p.handle(&bytes_of(&open)).unwrap();
        p.handle(&bytes_of(&open)).unwrap();
        p.handle(&bytes_of(&header(EventKind::Exit, pid))).unwrap();
        p.handle(&[1, 2, 3]).unwrap();
        p.flush_folds().unwrap();
        p.sink.flush().unwrap();

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines = events(&out);
        let kinds: Vec<&str> = lines.iter().map(|v| v["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["secret_in_argv", "secret_in_env", "secret_read"],
            "{text}"
        );
        assert_eq!(lines[0]["secret"]["kind"], "secret_flag");
        assert_eq!(lines[0]["secret"]["match"], "--token=…");
        assert_eq!(lines[0]["process"]["args"][1], "--token=…");
        assert_eq!(lines[1]["secret"]["env_name"], "GITHUB_TOKEN");
        let v = &lines[2];
        assert_eq!(v["kind"], "secret_read");
        assert_eq!(v["process"]["pid"], pid);
        assert_eq!(v["process"]["exe"], "/usr/bin/cat");
        assert_eq!(v["process"]["user"], "root");
        assert_eq!(v["identity"]["id"], "user:root:/usr/bin/cat");
        assert_eq!(v["secret"]["path"], secret.to_str().unwrap());
        assert_eq!(v["secret"]["fingerprint"], "hmac-sha256:0123456789abcdef");
        assert_eq!(v["secret"]["lifetime"], "unknown");
        assert_eq!(v["access"]["result"], "ok");
        assert_eq!(v["access"]["count"], 2, "two reads fold into one event");
        assert_eq!(v["access"]["via"], "syscall");
        assert!(!text.contains("not-a-real-secret"));
        assert!(!text.contains("not-a-real-token"));
        assert_eq!(p.stats.malformed, 1);
        assert_eq!(p.stats.secret_reads, 2);

        // The same, for the ledger: redacted, the read folded.
        assert_eq!(
            observed(&p),
            [
                "argv secret_flag Some(\"--token=…\") user:root:/usr/bin/cat".to_string(),
                "env GITHUB_TOKEN None user:root:/usr/bin/cat".into(),
                format!(
                    "read {} 2 false Read user:root:/usr/bin/cat",
                    v["secret"]["id"].as_str().unwrap()
                ),
            ]
        );
    }
}
