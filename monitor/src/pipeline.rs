//! One kernel record in, zero or more events out: process table upkeep,
//! attribution to a watched secret and an identity, and the JSON line.

use std::{
    collections::HashMap,
    io,
    num::NonZeroUsize,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use lru::LruCache;
use monitor_common::{EventHeader, FileKey};

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
    ledger::{ExposureKind, Observation, Seen},
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

/// Reads waiting to be folded: same process, secret, result and way in.
type FoldKey = (u32, u32, String, &'static str);

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
    /// The agent reads secret files to fingerprint them: not a use.
    own_pid: u32,
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
            own_pid: std::process::id(),
        })
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
                if open.header.pid == self.own_pid {
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
            self.sink
                .emit(&Event::new("secret_read", time, &self.host, body))?;
        }
        Ok(())
    }

    fn exec(&mut self, exec: Exec) -> io::Result<()> {
        if exec.env_truncated {
            self.stats.env_truncated += 1;
        }
        let (_, found) = self.procs.on_exec(
            &exec.header,
            &exec.filename,
            &exec.args,
            exec.args_truncated,
        );
        self.identities.forget(exec.header.pid);
        for secret in found {
            let (process, identity, info) = self.who(&exec.header);
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
            self.emit("secret_in_env", exec.header.boot_ns, &body)?;
        }
        Ok(())
    }

    /// An unwatched file whose name says credential: inventory it, so later
    /// reads match by inode, and report this read. The kernel's path is the
    /// one in the opener's mount namespace; it is the host's path when the
    /// host sees the same inode there.
    fn name_rule_open(&mut self, found: NameRuleOpen) -> io::Result<()> {
        if found.header.pid == self.own_pid {
            return Ok(());
        }
        if let Some(slot) = self.watch.get(&found.key).map(|r| r.slot) {
            return self.secret_read(&found.header, slot, found.flags, "ok".into(), found.via);
        }
        let meta = std::fs::metadata(&found.path).ok().filter(|m| {
            crate::inventory::kernel_dev(m.dev()) == found.key.dev && m.ino() == found.key.ino
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
        if !found.truncated
            && let Some(version) = version
            && let Some(scanner) = &self.discoverer
        {
            match scanner.inspect_discovered(&found.path) {
                Ok(record) => {
                    let edit = self.watch.apply(InventoryChange::Upsert(record));
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
        // Not inventoried (another namespace's file, unreadable, cut path):
        // report what the kernel saw.
        self.stats.secret_reads += 1;
        let (process, identity, _) = self.who(&found.header);
        let shown = found.path.to_string_lossy().into_owned();
        let body = SecretRead {
            process,
            identity,
            secret: event::Secret {
                id: crate::secret::secret_id(&found.path),
                path: shown.clone(),
                container_path: meta.is_none().then_some(shown),
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
        if h.pid == self.own_pid {
            return Ok(());
        }
        self.stats.secret_reads += 1;
        let key = (h.pid, file_id, result, via);
        if let Some((_, pending, _)) = self.folds.get_mut(&key) {
            pending.access.count += 1;
            return Ok(());
        }
        let Some(file) = self.watch.by_slot(file_id) else {
            return Ok(());
        };
        let path = file.path.clone();
        let mut secret = file.event_secret();
        let (process, identity, info) = self.who(h);
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
        OpenEvent,
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
        let out = Shared::default();
        let identities = IdentityResolver::new(
            Naming::new(Some("td"), "h").unwrap(),
            IdentityConfig::default(),
            dir.path(),
            CgroupTree::at(None),
            NonZeroUsize::new(8).unwrap(),
        );
        let mut p = Pipeline::new(
            watch,
            Host { name: "h".into() },
            identities,
            Sink::to_writer(out.clone()),
        )
        .unwrap();
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
        p.handle(&bytes_of(&exec)).unwrap();
        let open = OpenEvent {
            header: header(EventKind::Open, pid),
            key,
            flags: 0,
            ret: 3,
            via: monitor_common::VIA_SYSCALL,
            _pad: 0,
        };
        p.handle(&bytes_of(&open)).unwrap();
        p.handle(&bytes_of(&open)).unwrap();
        p.handle(&bytes_of(&header(EventKind::Exit, pid))).unwrap();
        p.handle(&[1, 2, 3]).unwrap();
        p.flush_folds().unwrap();
        p.sink.flush().unwrap();

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
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
