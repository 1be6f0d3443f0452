//! One kernel record in, zero or more events out: process table upkeep,
//! attribution to a watched secret and an identity. The events are
//! returned; the agent routes them to the outputs.

use std::{
    collections::HashMap,
    io,
    num::NonZeroUsize,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::mpsc::Sender,
};

use chrono::{DateTime, Utc};
use monitor_common::EventHeader;

use crate::{
    discovery,
    event::{
        self, Access, Body, EnvSecret, EnvironRead, Event, Host, IoUringOpen, Process,
        SecretInArgv, SecretInEnv, SecretRead, Target,
    },
    identity::{Identity, IdentityResolver},
    inventory::Inventory,
    inventory::{InventoryChange, MapEdit},
    ledger::{ExposureKind, Observation, Seen},
    probes::{DeniedOpen, Exec, KernelEvent, NameRuleOpen},
    process::ProcessInfo,
    process::ProcessTable,
    redact::redact_args,
};

/// Ancestors listed on each event, parent first.
const MAX_ANCESTORS: usize = 5;

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

/// Reads waiting to be folded: same process, secret, result and way in.
type FoldKey = (u32, u32, String, &'static str);

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
    /// The worker that inspects files the kernel's name rules found, to
    /// inventory them; it reports back through [`Pipeline::discovered`].
    discoverer: Option<Sender<discovery::Request>>,
    /// Watch-map edits for the agent to apply after this batch.
    edits: Vec<MapEdit>,
    /// The agent reads secret files to fingerprint them: not a use.
    own_pid: u32,
    /// Events of the record being handled.
    produced: Vec<Event>,
}

/// Pending folds are flushed early when this many are waiting.
const MAX_PENDING_FOLDS: usize = 4096;

impl Pipeline {
    pub fn new(watch: Inventory, host: Host, identities: IdentityResolver) -> io::Result<Self> {
        Ok(Self {
            watch,
            procs: ProcessTable::new(NonZeroUsize::new(65_536).expect("nonzero"), "/proc"),
            host,
            identities,
            clock: Clock::now()?,
            stats: Stats::default(),
            observed: Vec::new(),
            folds: HashMap::new(),
            proc_root: PathBuf::from("/proc"),
            discoverer: None,
            edits: Vec::new(),
            own_pid: std::process::id(),
            produced: Vec::new(),
        })
    }

    /// Hand the files the name rules find to this discovery worker.
    pub fn with_discoverer(mut self, worker: Sender<discovery::Request>) -> Self {
        self.discoverer = Some(worker);
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
        let Some(ev) = crate::probes::decode(record) else {
            self.stats.malformed += 1;
            return;
        };
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
                if open.header.pid == self.own_pid {
                    return;
                }
                let via = event::open_via(open.via);
                self.secret_read(&open.header, id, open.flags, "ok".into(), via, None);
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
        let mut pending: Vec<_> = self.folds.drain().map(|(_, v)| v).collect();
        pending.sort_by_key(|(time, _, _)| *time);
        for (time, body, cgroup_id) in pending {
            self.observed.push(Observation::Read {
                at: time,
                secret_id: body.secret.id.clone(),
                who: Seen::new(&body.identity, cgroup_id, body.process.exe.clone()),
                pid: body.process.pid,
                uid: body.process.uid,
                count: body.access.count,
                denied: body.access.result != "ok",
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
        let (args, found) = redact_args(&exec.args);
        self.procs
            .on_exec(&exec.header, &exec.filename, args, exec.args_truncated);
        self.identities.forget(exec.header.pid);
        for secret in found {
            let (process, identity, info) = self.who(&exec.header);
            let (kind, shown) = (secret.kind.to_string(), Some(secret.redacted.clone()));
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
            let (process, identity, info) = self.who(&exec.header);
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
        if found.header.pid == self.own_pid {
            return;
        }
        if let Some(slot) = self.watch.get(&found.key).map(|r| r.slot) {
            self.secret_read(
                &found.header,
                slot,
                found.flags,
                "ok".into(),
                found.via,
                None,
            );
            return;
        }
        let (process, identity, info) = self.who(&found.header);
        let request = discovery::Request {
            found,
            process,
            identity,
            info,
        };
        match &self.discoverer {
            Some(worker) => {
                if let Err(returned) = worker.send(request) {
                    self.uninventoried_read(returned.0, true);
                }
            }
            None => self.uninventoried_read(request, true),
        }
    }

    /// What the discovery worker found out about a file a name rule matched:
    /// watch it if it is a secret, and report the read that found it.
    pub fn discovered(&mut self, report: discovery::Report) -> Vec<Event> {
        let discovery::Report { request, outcome } = report;
        match outcome {
            discovery::Outcome::Inventoried(record) => {
                let edit = self.watch.apply(InventoryChange::Upsert(*record));
                let slot = edit.add.map(|(_, slot)| slot);
                self.edits.push(edit);
                match slot {
                    Some(slot) => {
                        let found = &request.found;
                        let who = (request.process, request.identity, request.info);
                        self.secret_read(
                            &found.header,
                            slot,
                            found.flags,
                            "ok".into(),
                            found.via,
                            Some(who),
                        );
                    }
                    None => self.uninventoried_read(request, true),
                }
            }
            discovery::Outcome::NotSecret => {}
            discovery::Outcome::Uninventoried { host_path } => {
                self.uninventoried_read(request, host_path)
            }
        }
        std::mem::take(&mut self.produced)
    }

    /// Report what the kernel saw of a file the inventory does not hold.
    fn uninventoried_read(&mut self, request: discovery::Request, host_path: bool) {
        let discovery::Request {
            found,
            process,
            identity,
            ..
        } = request;
        self.stats.secret_reads += 1;
        let shown = found.path.to_string_lossy().into_owned();
        let body = SecretRead {
            process,
            identity,
            secret: event::Secret {
                id: crate::secret::secret_id(&found.path),
                path: shown.clone(),
                container_path: (!host_path).then_some(shown),
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
        if h.pid == self.own_pid {
            return;
        }
        self.stats.secret_reads += 1;
        let key = (h.pid, file_id, result, via);
        if let Some((_, pending, _)) = self.folds.get_mut(&key) {
            pending.access.count += 1;
            return;
        }
        let Some(file) = self.watch.by_slot(file_id) else {
            return;
        };
        let path = file.path.clone();
        let mut secret = file.event_secret();
        let (process, identity, info) = match who {
            Some(who) => who,
            None => self.who(h),
        };
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
            who: Seen::new(identity, info.cgroup_id, info.exe.clone()),
            pid: h.pid,
        });
    }

    /// The process and identity of the header's process, and what the
    /// table knows of it.
    fn who(&mut self, h: &EventHeader) -> (Process, Identity, ProcessInfo) {
        let info = self.procs.observe(h);
        let user = self.procs.user_name(h.uid);
        let ancestors = self.procs.ancestors(info.ppid, MAX_ANCESTORS);
        let identity = self.identities.resolve(&info, &user, &ancestors);
        let start_time = self
            .clock
            .wall(info.start_ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
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

const AT_FDCWD: i32 = -100;

#[cfg(test)]
mod tests {

    use monitor_common::{
        ARGS_LEN, ENV_NAME_LEN, ENV_NAMES_MAX, EventHeader, EventKind, ExecEvent, FILENAME_LEN,
        OpenEvent,
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
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
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
        let watch = Inventory::new(vec![record]);
        let identities = IdentityResolver::new(
            Naming::new(Some("td"), "h").unwrap(),
            IdentityConfig::default(),
            dir.path(),
            CgroupTree::at(None),
            NonZeroUsize::new(8).unwrap(),
        );
        let mut p = Pipeline::new(watch, Host { name: "h".into() }, identities).unwrap();
        // A pid that cannot exist, so /proc cannot help: only the exec event.
        let pid = u32::MAX - 1;
        let mut exec = ExecEvent {
            header: header(EventKind::Exec, pid),
            old_pid: pid,
            filename_len: 12,
            filename: [0; FILENAME_LEN],
            args_len: 0,
            args_truncated: 0,
            args: [0; ARGS_LEN],
            env_count: 1,
            env_truncated: 0,
            env_names: [[0; ENV_NAME_LEN]; ENV_NAMES_MAX],
        };
        let argv = b"cat\0--token=not-a-real-token-0000\0";
        exec.args[..argv.len()].copy_from_slice(argv);
        exec.args_len = argv.len() as u32;
        exec.env_names[0][..12].copy_from_slice(b"GITHUB_TOKEN");
        exec.filename[..12].copy_from_slice(b"/usr/bin/cat");
        let mut events = p.handle(&bytes_of(&exec));
        let open = OpenEvent {
            header: header(EventKind::Open, pid),
            key,
            flags: 0,
            ret: 3,
            via: monitor_common::VIA_SYSCALL,
            _pad: 0,
        };
        events.extend(p.handle(&bytes_of(&open)));
        events.extend(p.handle(&bytes_of(&open)));
        events.extend(p.handle(&bytes_of(&header(EventKind::Exit, pid))));
        events.extend(p.handle(&[1, 2, 3]));
        events.extend(p.flush_folds());

        let lines: Vec<serde_json::Value> = events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
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
        let observed: Vec<String> = p
            .observed
            .iter()
            .map(|o| match o {
                Observation::Exposure {
                    kind,
                    subject,
                    detail,
                    who,
                    ..
                } => {
                    format!("{} {subject} {detail:?} {}", kind.as_str(), who.id)
                }
                Observation::Read {
                    secret_id,
                    count,
                    denied,
                    who,
                    ..
                } => {
                    format!(
                        "read {} {count} {denied} {}",
                        secret_id == v["secret"]["id"].as_str().unwrap(),
                        who.id
                    )
                }
            })
            .collect();
        assert_eq!(
            observed,
            [
                "argv secret_flag Some(\"--token=…\") user:root:/usr/bin/cat",
                "env GITHUB_TOKEN None user:root:/usr/bin/cat",
                "read true 2 false user:root:/usr/bin/cat",
            ]
        );
    }
}
