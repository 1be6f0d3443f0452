//! One kernel record in, zero or more events out: process table upkeep,
//! attribution to a watched secret and an identity. The events are
//! returned; the agent routes them to the outputs. Files the kernel's name
//! rules found are inspected off the drain ([`discovery`]).

use std::{
    collections::HashMap,
    io,
    num::NonZeroUsize,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::mpsc::Sender,
};

use chrono::{DateTime, Utc};
use lru::LruCache;
use monitor_common::{
    EventHeader,
    abi::{AT_FDCWD, io_uring_op_name},
    user::{DeniedOpen, Exec, KernelEvent, NameRuleOpen},
};

use crate::{
    discovery::{self, Inspector, Outcome},
    event::{
        self, Access, Body, EnvSecret, EnvironRead, Event, Host, IoUringOpen, Process,
        SecretInArgv, SecretInEnv, SecretRead, Target,
    },
    identity::{Identity, IdentityResolver},
    inventory::Inventory,
    inventory::{InventoryChange, MapEdit},
    ledger::{
        ExposureKind, Observation, OpenMode, Seen,
        facts::{file_exists, secret_facts},
    },
    process::ProcessInfo,
    process::ProcessTable,
    redact::Redactor,
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
    pub stats: Stats,
    /// What the ledger should record, taken by the agent after each batch.
    pub observed: Vec<Observation>,
    /// Folded reads, with the reader's cgroup id for the ledger.
    folds: HashMap<FoldKey, (DateTime<Utc>, SecretRead, u64)>,
    proc_root: PathBuf,
    /// Inspects the files the kernel's name rules found, to inventory
    /// them: a worker that reports back through [`Pipeline::discovered`],
    /// or, without one, here (unit tests).
    discoverer: Discoverer,
    /// Watch-map edits for the agent to apply after this batch.
    edits: Vec<MapEdit>,
    /// secretmon's own processes read secret files to fingerprint them
    /// (the agent, `secretmon inventory`): not a use.
    own: OwnExe,
    /// Events of the record being handled.
    produced: Vec<Event>,
    /// The kernel's lost-event count in the last record's header.
    lost_before: u64,
}

enum Discoverer {
    Worker(Sender<discovery::Request>),
    // Boxed: an inspector is large, and the worker is what the agent uses.
    Inline(Box<Inspector>),
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

/// Pending folds are flushed early when this many are waiting.
const MAX_PENDING_FOLDS: usize = 4096;

impl Pipeline {
    pub fn new(watch: Inventory, host: Host, identities: IdentityResolver) -> io::Result<Self> {
        Ok(Self {
            watch,
            procs: ProcessTable::new(PROCESS_CAPACITY, "/proc", Redactor::default()),
            host,
            identities,
            clock: Clock::now()?,
            stats: Stats::default(),
            observed: Vec::new(),
            folds: HashMap::new(),
            proc_root: PathBuf::from("/proc"),
            discoverer: Discoverer::Inline(Box::new(Inspector::new(None))),
            edits: Vec::new(),
            own: OwnExe::of_this_process(),
            produced: Vec::new(),
            lost_before: 0,
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

    /// The kernel lost events, the last of them before `boot_ns` (the
    /// first record written after them): from now on a process is
    /// attributed only when an exec or fork seen since, or `/proc`, vouches
    /// for what runs.
    fn events_lost(&mut self, boot_ns: u64) {
        self.procs.on_loss(boot_ns);
        self.identities.forget_all();
    }

    /// Hand the files the name rules find to this discovery worker.
    pub fn with_discoverer(mut self, worker: Sender<discovery::Request>) -> Self {
        self.discoverer = Discoverer::Worker(worker);
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

    /// Handle one ring-buffer record; returns the events it produced.
    pub fn handle(&mut self, record: &[u8]) -> Vec<Event> {
        self.record(record);
        std::mem::take(&mut self.produced)
    }

    fn record(&mut self, record: &[u8]) {
        self.stats.records += 1;
        let ev = match KernelEvent::decode(record) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!("skipped a kernel record: {e}");
                self.stats.malformed += 1;
                return;
            }
        };
        // Before this record is handled: a lost exec or fork makes what
        // the process table knows stale.
        let header = ev.header();
        if header.lost_before > self.lost_before {
            self.lost_before = header.lost_before;
            self.events_lost(header.boot_ns);
        }
        match ev {
            KernelEvent::Exec(exec) => self.exec(exec),
            KernelEvent::Fork { header, child_pid } => {
                self.procs.on_fork(&header, child_pid);
            }
            KernelEvent::Exit(header) => {
                self.procs.on_exit(header.pid);
                self.identities.forget(header.pid);
            }
            KernelEvent::Open(open) => {
                // An id the watch list no longer has (a race with a later
                // update) is not attributable: skip it rather than guess.
                let Some(id) = self.watch.get(&open.key).map(|f| f.slot) else {
                    self.stats.malformed += 1;
                    return;
                };
                // The agent fingerprinting a rotated file is not a workload.
                if open.header.pid == self.own.pid {
                    return;
                }
                let via = open.via.as_str();
                self.secret_read(&open.header, id, open.flags, "ok".into(), via, None);
            }
            KernelEvent::DeniedOpen(denied) => self.denied_open(&denied),
            KernelEvent::NameRuleOpen(found) => self.name_rule_open(found),
            KernelEvent::IoUringOpen { header, opcode } => {
                let (process, identity, _) = self.who(&header);
                let body = IoUringOpen {
                    process,
                    identity,
                    opcode: io_uring_op_name(opcode),
                    message: "opens files through io_uring, which the syscall tracepoints do not see: its secret reads may be missing",
                };
                self.emit(header.boot_ns, Body::IoUringOpen(body));
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
                self.emit(header.boot_ns, Body::EnvironRead(body));
            }
        }
    }

    /// The number of processes the table tracks.
    pub fn tracked_processes(&self) -> usize {
        self.procs.len()
    }

    /// Every folded read, as events; call at least once a second.
    pub fn flush_folds(&mut self) -> Vec<Event> {
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
            self.produced
                .push(Event::new(time, &self.host, Body::SecretRead(body)));
        }
        std::mem::take(&mut self.produced)
    }

    fn exec(&mut self, exec: Exec) {
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
            self.emit(exec.header.boot_ns, Body::SecretInArgv(body));
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
            self.emit(exec.header.boot_ns, Body::SecretInEnv(body));
        }
    }

    /// An unwatched file whose name says credential: the discovery worker
    /// inventories it, so later reads match by inode, and this read is
    /// reported when it says what the file is. The kernel's path is the one
    /// in the opener's mount namespace; it is the host's path when the host
    /// sees the same inode there.
    fn name_rule_open(&mut self, found: NameRuleOpen) {
        if found.header.pid == self.own.pid {
            return;
        }
        if let Some(slot) = self.watch.get(&found.key).map(|r| r.slot) {
            self.secret_read(
                &found.header,
                slot,
                found.flags,
                "ok".into(),
                found.via.as_str(),
                None,
            );
            return;
        }
        let (process, identity, info) = self.who(&found.header);
        // `secretmon inventory` fingerprinting it: not a use.
        if self.own.is(&info) {
            return;
        }
        let request = discovery::Request {
            found,
            process,
            identity,
            info,
        };
        match &mut self.discoverer {
            Discoverer::Worker(worker) => {
                if let Err(returned) = worker.send(request) {
                    self.report_discovered(
                        returned.0,
                        Outcome::Uninventoried {
                            path: None,
                            host_path: false,
                        },
                    );
                }
            }
            Discoverer::Inline(inspector) => {
                let outcome = inspector.inspect(&request.found);
                self.report_discovered(request, outcome);
            }
        }
    }

    /// What the discovery worker found out about a file a name rule matched:
    /// watch it if it is a secret, and report the read that found it.
    pub fn discovered(&mut self, report: discovery::Report) -> Vec<Event> {
        self.report_discovered(report.request, report.outcome);
        std::mem::take(&mut self.produced)
    }

    fn report_discovered(&mut self, request: discovery::Request, outcome: Outcome) {
        let discovery::Request {
            found,
            process,
            identity,
            info,
        } = request;
        // Opens of a new file queue up while the worker inspects the first
        // (the process that wrote it, then its reader): the first report
        // inventoried it, the later ones are reads of a watched secret.
        let watched = self.watch.get(&found.key).map(|r| r.slot);
        let (slot, path, host_path) = match (watched, outcome) {
            (Some(slot), _) => (Some(slot), None, true),
            (None, Outcome::Inventoried(record)) => {
                let path = record.path.clone();
                let edit = self.inventory_change(InventoryChange::Upsert(*record));
                let slot = edit.add.map(|(_, slot)| slot);
                self.edits.push(edit);
                (slot, Some(path), true)
            }
            (None, Outcome::NotSecret) => return,
            (None, Outcome::Uninventoried { path, host_path }) => (None, path, host_path),
        };
        if let Some(slot) = slot {
            let who = (process, identity, info);
            self.secret_read(
                &found.header,
                slot,
                found.flags,
                "ok".into(),
                found.via.as_str(),
                Some(who),
            );
            return;
        }
        // Not inventoried (another namespace's file, unreadable, a path the
        // kernel cut): report what the kernel saw. A cut path may be another
        // file's too: the id is then the file's, and the event says so.
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
                container_path: (!host_path).then(|| shown.clone()),
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
                via: found.via.as_str(),
            },
        };
        self.emit(found.header.boot_ns, Body::SecretRead(body));
    }

    /// A denied open names a path, not an inode: resolve it as the process
    /// saw it, and report it if it is a watched secret.
    fn denied_open(&mut self, d: &DeniedOpen) {
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
            return;
        };
        let Some(id) = self.watch.lookup_path(&path).map(|f| f.slot) else {
            return;
        };
        self.secret_read(&d.header, id, d.flags, errno_name(d.errno), "syscall", None);
    }

    fn secret_read(
        &mut self,
        h: &EventHeader,
        file_id: u32,
        flags: u32,
        result: String,
        via: &'static str,
        who: Option<(Process, Identity, ProcessInfo)>,
    ) {
        if h.pid == self.own.pid {
            return;
        }
        let key = (h.pid, file_id, result, via, OpenMode::from_flags(flags));
        if let Some((_, pending, _)) = self.folds.get_mut(&key) {
            self.stats.secret_reads += 1;
            pending.access.count += 1;
            return;
        }
        let Some(file) = self.watch.by_slot(file_id) else {
            return;
        };
        let path = file.path.clone();
        let mut secret = event::Secret::from(file);
        let (process, identity, info) = match who {
            Some(who) => who,
            None => self.who(h),
        };
        // `secretmon inventory` (or another secretmon of this installation)
        // fingerprinting the file: not a use. Its opens are never folded,
        // so each is checked here.
        if self.own.is(&info) {
            return;
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
            let flushed = self.flush_folds();
            self.produced.extend(flushed);
        }
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

    fn emit(&mut self, boot_ns: u64, body: Body) {
        let time = self.clock.wall(boot_ns);
        self.produced.push(Event::new(time, &self.host, body));
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

/// `EACCES` for 13: the errno's name, as the event contract wants.
fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

#[cfg(test)]
mod tests {

    use monitor_common::{
        ARGS_LEN, COMPONENT_LEN, ENV_NAME_LEN, ENV_NAMES_MAX, Event as Wire, EventHeader,
        EventKind, ExecData, ExecEvent, FILENAME_LEN, FileKey, NameRuleOpenData, NameRuleOpenEvent,
        OpenData, OpenEvent, PATH_COMPONENTS,
    };

    use super::*;
    use crate::identity::{IdentityConfig, Naming, cgroup_tree::CgroupTree};

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
            lost_before: 0,
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

    fn pipeline(dir: &Path, records: Vec<crate::inventory::Record>) -> (Pipeline, Vec<Event>) {
        let out = Vec::new();
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
        )
        .unwrap();
        (p, out)
    }

    fn exec_of(pid: u32, filename: &[u8]) -> ExecEvent {
        let mut exec = Wire {
            header: header(EventKind::Exec, pid),
            data: ExecData {
                old_pid: pid,
                filename_len: filename.len() as u32,
                filename: [0; FILENAME_LEN],
                args_len: 0,
                args_truncated: 0,
                args: [0; ARGS_LEN],
                env_count: 0,
                env_truncated: 0,
                env_names: [[0; ENV_NAME_LEN]; ENV_NAMES_MAX],
            },
        };
        exec.data.filename[..filename.len()].copy_from_slice(filename);
        exec
    }

    fn open_of(pid: u32, key: FileKey, flags: i32) -> OpenEvent {
        Wire {
            header: header(EventKind::Open, pid),
            data: OpenData {
                key,
                flags: flags as u32,
                ret: 3,
                via: monitor_common::VIA_SYSCALL,
                _pad: 0,
            },
        }
    }

    fn events(out: &[Event]) -> Vec<serde_json::Value> {
        out.iter()
            .map(|e| serde_json::to_value(e).unwrap())
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
        let (mut p, mut out) = pipeline(dir.path(), vec![record]);
        let (shell, child) = (PID, PID + 1);
        out.extend(p.handle(&bytes_of(&exec_of(shell, b"/usr/bin/bash"))));
        let fork = Wire {
            header: header(EventKind::Fork, shell),
            data: monitor_common::ForkData {
                child_pid: child,
                _pad: 0,
            },
        };
        out.extend(p.handle(&bytes_of(&fork)));
        // The first record written after the loss says so.
        let mut open = open_of(child, key, libc::O_RDONLY);
        open.header.boot_ns = 2_000;
        open.header.lost_before = 1;
        out.extend(p.handle(&bytes_of(&open)));
        out.extend(p.flush_folds());
        let mut exec = exec_of(child, b"/usr/bin/cat");
        exec.header.boot_ns = 3_000;
        exec.header.lost_before = 1;
        out.extend(p.handle(&bytes_of(&exec)));
        open.header.boot_ns = 4_000;
        out.extend(p.handle(&bytes_of(&open)));
        out.extend(p.flush_folds());
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
        exec.data.env_count = 1;
        exec.data.env_names[0][..12].copy_from_slice(b"GITHUB_TOKEN");
        out.extend(p.handle(&bytes_of(&exec)));
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
        let (mut p, mut out) = pipeline(dir.path(), vec![record]);
        let own = std::fs::read_link("/proc/self/exe").unwrap();
        out.extend(p.handle(&bytes_of(&exec_of(PID, own.as_os_str().as_bytes()))));
        out.extend(p.handle(&bytes_of(&open_of(PID, key, libc::O_RDONLY))));
        out.extend(p.handle(&bytes_of(&exec_of(PID + 1, b"/usr/bin/cat"))));
        out.extend(p.handle(&bytes_of(&open_of(PID + 1, key, libc::O_RDONLY))));
        out.extend(p.flush_folds());
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
        let (mut p, mut out) = pipeline(dir.path(), vec![record]);
        out.extend(p.handle(&bytes_of(&exec_of(PID, b"/usr/bin/touch"))));
        for flags in [libc::O_WRONLY, libc::O_RDONLY, libc::O_WRONLY] {
            out.extend(p.handle(&bytes_of(&open_of(PID, key, flags))));
        }
        out.extend(p.flush_folds());
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

    fn name_rule_open(pid: u32, key: FileKey, inner_first: &[&str]) -> NameRuleOpenEvent {
        let mut ev = Wire {
            header: header(EventKind::NameRuleOpen, pid),
            data: NameRuleOpenData {
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
            },
        };
        for (slot, name) in ev.data.path.components.iter_mut().zip(inner_first) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        ev
    }

    /// A file is written, then read, before the discovery worker reported
    /// on the first open: both reports name the inventoried secret, once.
    #[test]
    fn opens_queued_behind_a_discovery_are_reads_of_the_found_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "x").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (p, mut out) = pipeline(dir.path(), Vec::new());
        let mut p = p.with_discoverer(tx);
        let key = FileKey { dev: 1, ino: 903 };
        out.extend(p.handle(&bytes_of(&exec_of(PID, b"/usr/bin/cat"))));
        let ev = name_rule_open(PID, key, &["credentials"]);
        out.extend(p.handle(&bytes_of(&ev)));
        out.extend(p.handle(&bytes_of(&ev)));
        let mut record = crate::inventory::test_record(&path, 903);
        record.secret_type = crate::secret::SecretType::AwsCredentials;
        for request in rx.try_iter().collect::<Vec<_>>() {
            let outcome = Outcome::Inventoried(Box::new(record.clone()));
            out.extend(p.discovered(discovery::Report { request, outcome }));
        }
        out.extend(p.flush_folds());
        let reads: Vec<_> = events(&out)
            .into_iter()
            .filter(|v| v["kind"] == "secret_read")
            .collect();
        assert!(!reads.is_empty());
        let count: u64 = reads
            .iter()
            .map(|r| r["access"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(count, 2, "{reads:?}");
        for r in &reads {
            assert_eq!(r["secret"]["type"], "aws_credentials", "{r}");
            assert_eq!(r["secret"]["fingerprint"], "hmac-sha256:0123456789abcdef");
        }
        let found = observed(&p)
            .iter()
            .filter(|o| o.starts_with("secret "))
            .count();
        assert_eq!(found, 1, "inventoried once");
    }

    /// Two deep files the kernel's name rules found, whose paths it cut
    /// alike: two ids, and the events say the path is cut.
    #[test]
    fn cut_paths_keep_files_apart_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, mut out) = pipeline(dir.path(), Vec::new());
        out.extend(p.handle(&bytes_of(&exec_of(PID, b"/usr/bin/cat"))));
        let inner_first: Vec<String> = std::iter::once("deep.pem".to_string())
            .chain((4..=18).rev().map(|i| i.to_string()))
            .collect();
        let names: Vec<&str> = inner_first.iter().map(String::as_str).collect();
        for ino in [901, 902] {
            let ev = name_rule_open(PID, FileKey { dev: 1, ino }, &names);
            out.extend(p.handle(&bytes_of(&ev)));
        }
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
        let (mut p, mut out) = pipeline(dir.path(), vec![record]);
        // A pid that cannot exist, so /proc cannot help: only the exec event.
        let pid = u32::MAX - 1;
        let mut exec = exec_of(pid, b"/usr/bin/cat");
        exec.data.env_count = 1;
        let argv = b"cat\0--token=not-a-real-token-0000\0";
        exec.data.args[..argv.len()].copy_from_slice(argv);
        exec.data.args_len = argv.len() as u32;
        exec.data.env_names[0][..12].copy_from_slice(b"GITHUB_TOKEN");
        out.extend(p.handle(&bytes_of(&exec)));
        let open = open_of(pid, key, 0);
        out.extend(p.handle(&bytes_of(&open)));
        out.extend(p.handle(&bytes_of(&open)));
        out.extend(p.handle(&bytes_of(&header(EventKind::Exit, pid))));
        out.extend(p.handle(&[1, 2, 3]));
        out.extend(p.flush_folds());

        let lines = events(&out);
        let text = lines
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n");
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
