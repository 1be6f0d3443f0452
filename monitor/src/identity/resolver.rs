//! From what the agent knows of a process to its [`Identity`], cached per
//! process.
//!
//! A process still alive is read through procfs (its cgroup file has the v1
//! paths too); one already gone is known by the cgroup id its event
//! carried. Either way the cgroup names the workload, and for a pod the
//! kubelet's directories name the namespace, pod and service account.

use std::{
    ffi::OsStr,
    io::Read as _,
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

use lru::LruCache;
use procfs::process::Process;
use serde::Serialize;

use super::{
    Identity, IdentityConfig, K8s, Naming, SystemdUnit,
    cgroup::{self, Workload},
    cgroup_tree::CgroupTree,
    k8s, mounts,
};
use crate::process::{Ancestor, ProcessInfo};

/// Processes whose identity is kept. Only readers of secrets are resolved,
/// so this is generous.
const DEFAULT_CAPACITY: usize = 4096;
/// `/proc/<pid>/cgroup` is a line per hierarchy; more than this is not it.
const MAX_CGROUP_FILE: u64 = 64 * 1024;
/// Executables whose presence among the ancestors means a person logged in
/// or switched user (`sshd-session` is OpenSSH ≥ 9.8's per-session process).
const HUMAN_ANCESTORS: &[&str] = &["sshd", "sshd-session", "login", "su", "sudo"];

/// How the per-process cache is doing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CacheStats {
    pub size: usize,
    pub capacity: usize,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); 0 before the first lookup.
    pub hit_rate: f64,
}

struct Cached {
    /// With the pid, names the process: a reused pid has another start.
    start_ns: u64,
    /// A process moved to another cgroup is another workload.
    cgroup_id: u64,
    identity: Identity,
}

pub struct IdentityResolver {
    naming: Naming,
    config: IdentityConfig,
    proc_root: PathBuf,
    cgroups: CgroupTree,
    cache: LruCache<u32, Cached>,
    hits: u64,
    misses: u64,
    /// `/proc/<pid>/stat` counts start time in these.
    ticks_per_second: u64,
}

impl IdentityResolver {
    /// The resolver of this host: `/proc`, its cgroup2 mount.
    pub fn for_host(naming: Naming, config: IdentityConfig) -> Self {
        Self::new(
            naming,
            config,
            "/proc",
            CgroupTree::discover(),
            NonZeroUsize::new(DEFAULT_CAPACITY).expect("nonzero"),
        )
    }

    pub fn new(
        naming: Naming,
        config: IdentityConfig,
        proc_root: impl Into<PathBuf>,
        cgroups: CgroupTree,
        capacity: NonZeroUsize,
    ) -> Self {
        Self {
            naming,
            config,
            proc_root: proc_root.into(),
            cgroups,
            cache: LruCache::new(capacity),
            hits: 0,
            misses: 0,
            ticks_per_second: procfs::ticks_per_second().max(1),
        }
    }

    /// The identity of `p`, whose parent chain is `ancestors` and whose
    /// account is `user`.
    pub fn resolve(&mut self, p: &ProcessInfo, user: &str, ancestors: &[Ancestor]) -> Identity {
        if let Some(c) = self.cache.get(&p.pid)
            && c.start_ns == p.start_ns
            && c.cgroup_id == p.cgroup_id
        {
            self.hits += 1;
            return c.identity.clone();
        }
        self.misses += 1;
        let live = self.live(p);
        let workload = match live.as_ref().and_then(read_cgroup_file) {
            Some(text) => cgroup::parse(&text),
            None => self
                .cgroups
                .path_of(p.cgroup_id)
                .map_or(Workload::Host, cgroup::classify_path),
        };
        let identity = Identity {
            human: is_human(p, ancestors),
            ..self.identity_of(&workload, p, user, live.as_ref())
        };
        self.cache.put(
            p.pid,
            Cached {
                start_ns: p.start_ns,
                cgroup_id: p.cgroup_id,
                identity: identity.clone(),
            },
        );
        identity
    }

    /// `pid` exec'd or exited: what was resolved for it no longer holds.
    pub fn forget(&mut self, pid: u32) {
        self.cache.pop(&pid);
    }

    /// Events were lost (an exec among them, maybe): nothing resolved
    /// before holds for sure.
    pub fn forget_all(&mut self) {
        self.cache.clear();
    }

    pub fn cache_stats(&self) -> CacheStats {
        let lookups = self.hits + self.misses;
        CacheStats {
            size: self.cache.len(),
            capacity: self.cache.cap().get(),
            hits: self.hits,
            misses: self.misses,
            hit_rate: if lookups == 0 {
                0.0
            } else {
                self.hits as f64 / lookups as f64
            },
        }
    }

    /// Where `host_path` is for `p` when `p` sees the filesystem otherwise
    /// than the agent does (a container's mount namespace, a chroot); `None`
    /// when the view is the same or `p` is gone.
    pub fn container_path(&self, p: &ProcessInfo, host_path: &Path) -> Option<String> {
        let live = self.live(p)?;
        let me = Process::new_with_root(self.proc_root.join("self")).ok()?;
        let inner = if mount_ns(&live)? == mount_ns(&me)? {
            let root = live.root().ok()?;
            if root == Path::new("/") {
                return None;
            }
            Path::new("/").join(host_path.strip_prefix(&root).ok()?)
        } else {
            let host = me.mountinfo().ok()?;
            let theirs = live.mountinfo().ok()?;
            mounts::inner_path(&host.0, &theirs.0, host_path, |layer| {
                std::fs::canonicalize(layer).ok()
            })?
        };
        Some(inner.to_string_lossy().into_owned())
    }

    /// `p`'s entry in /proc, if it is still `p` (not a reused pid). procfs
    /// keeps the directory open, so later reads are of this same process.
    fn live(&self, p: &ProcessInfo) -> Option<Process> {
        let proc = Process::new_with_root(self.proc_root.join(p.pid.to_string())).ok()?;
        let started = proc.stat().ok()?.starttime;
        let expected = p.start_ns / (1_000_000_000 / self.ticks_per_second);
        (started == expected).then_some(proc)
    }

    fn identity_of(
        &self,
        workload: &Workload,
        p: &ProcessInfo,
        user: &str,
        live: Option<&Process>,
    ) -> Identity {
        let exe = p.exe.as_deref().unwrap_or(&p.comm);
        let user_identity = || Identity::user(&self.naming, user, p.uid, exe);
        match workload {
            Workload::Pod { uid, container } => {
                let meta = k8s::pod_meta(&self.config.kubelet_root, &self.config.pod_log_root, uid);
                let roots = match (meta.containers.len() > 1, live) {
                    (true, Some(proc)) => mount_roots(proc),
                    _ => Vec::new(),
                };
                let name =
                    k8s::container_name(&meta.containers, uid, roots.iter().map(String::as_str));
                let base = match (&meta.namespace, &meta.service_account, container) {
                    (Some(ns), Some(sa), _) => Identity::k8s(&self.naming, ns, sa),
                    (_, _, Some(c)) => Identity::container(&self.naming, c),
                    _ => user_identity(),
                };
                Identity {
                    container: container.as_ref().map(Into::into),
                    k8s: Some(K8s {
                        namespace: meta.namespace,
                        pod: meta.pod,
                        pod_uid: uid.clone(),
                        service_account: meta.service_account,
                        container: name,
                    }),
                    ..base
                }
            }
            Workload::Container(c) => Identity::container(&self.naming, c),
            Workload::Unit { unit, user_manager } => {
                Identity::systemd(&self.naming, unit, *user_manager)
            }
            // A login session is a person's, not a workload: the user
            // identity, with the session for context.
            Workload::Session { unit } => Identity {
                systemd: Some(SystemdUnit {
                    unit: unit.clone(),
                    user_manager: None,
                }),
                ..user_identity()
            },
            Workload::Host => user_identity(),
        }
    }
}

/// A human session: a controlling terminal, a login uid (set by
/// pam_loginuid at login and inherited), or a login or user-switch program
/// among the ancestors.
fn is_human(p: &ProcessInfo, ancestors: &[Ancestor]) -> bool {
    p.tty
        || p.loginuid.is_some()
        || ancestors.iter().any(|a| {
            a.exe
                .as_deref()
                .and_then(|exe| Path::new(exe).file_name())
                .and_then(OsStr::to_str)
                .is_some_and(|name| HUMAN_ANCESTORS.contains(&name))
        })
}

fn read_cgroup_file(proc: &Process) -> Option<String> {
    let mut text = String::new();
    proc.open_relative("cgroup")
        .ok()?
        .take(MAX_CGROUP_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn mount_ns(proc: &Process) -> Option<u64> {
    let namespaces = proc.namespaces().ok()?;
    namespaces.0.get(OsStr::new("mnt")).map(|ns| ns.identifier)
}

/// The `root` of each of the process's mounts.
fn mount_roots(proc: &Process) -> Vec<String> {
    proc.mountinfo()
        .map(|m| m.0.into_iter().map(|m| m.root).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::identity::IdentityKind;

    fn info(pid: u32, cgroup_id: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 1,
            exe: Some("/usr/bin/cat".into()),
            comm: "cat".into(),
            args: Vec::new(),
            args_truncated: false,
            uid: 1000,
            gid: 1000,
            loginuid: None,
            tty: false,
            start_ns: 500,
            cgroup_id,
            vouched: true,
            exited: false,
        }
    }

    /// A resolver over a fake /proc (so no process is alive) and a fake
    /// cgroup2 tree with `dirs`; returns it and the inode of each dir.
    fn resolver(
        dirs: &[&str],
        kubelet: &Path,
        logs: &Path,
    ) -> (IdentityResolver, Vec<u64>, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let inos = dirs
            .iter()
            .map(|d| {
                let path = root.path().join("cgroup").join(d);
                std::fs::create_dir_all(&path).unwrap();
                std::fs::metadata(&path).unwrap().ino()
            })
            .collect();
        let r = IdentityResolver::new(
            Naming::new(Some("td"), "h").unwrap(),
            IdentityConfig {
                kubelet_root: kubelet.to_path_buf(),
                pod_log_root: logs.to_path_buf(),
            },
            root.path().join("proc"),
            CgroupTree::at(Some(root.path().join("cgroup"))),
            NonZeroUsize::new(2).unwrap(),
        );
        (r, inos, root)
    }

    const POD: &str = "7d3c4a5e-1b2f-4c6d-8e9f-0a1b2c3d4e5f";
    const ID: &str = "3f4a9c1b2d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn gone_processes_are_resolved_by_cgroup_id() {
        let none = Path::new("/nonexistent");
        let docker = format!("system.slice/docker-{ID}.scope");
        let (mut r, inos, _root) = resolver(
            &[
                "system.slice/cron.service",
                &docker,
                "user.slice/user-1000.slice/session-4.scope",
            ],
            none,
            none,
        );
        let cron = r.resolve(&info(10, inos[0]), "ana", &[]);
        assert_eq!(cron.id, "systemd:cron.service");
        assert_eq!(cron.spiffe_id, "spiffe://td/host/h/unit/cron.service");
        let c = r.resolve(&info(11, inos[1]), "ana", &[]);
        assert_eq!(c.id, "container:docker:3f4a9c1b2d8e");
        assert_eq!(c.kind, IdentityKind::Container);
        let session = r.resolve(&info(12, inos[2]), "ana", &[]);
        assert_eq!(session.id, "user:ana:/usr/bin/cat");
        assert_eq!(session.systemd.unwrap().unit, "session-4.scope");
        // An id no cgroup has: the user identity.
        assert_eq!(r.resolve(&info(13, 1), "ana", &[]).kind, IdentityKind::User);
    }

    #[test]
    fn pods_take_namespace_and_service_account_from_the_kubelet() {
        use base64::Engine as _;
        let kubelet = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let token_dir = kubelet.path().join(format!(
            "pods/{POD}/volumes/kubernetes.io~projected/kube-api-access-x"
        ));
        std::fs::create_dir_all(&token_dir).unwrap();
        let payload = serde_json::json!({"kubernetes.io": {
            "namespace": "payments",
            "pod": {"name": "api-7f9c", "uid": POD},
            "serviceaccount": {"name": "api"}
        }});
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        std::fs::write(
            token_dir.join("token"),
            format!("e30.{}.sig", b64.encode(payload.to_string())),
        )
        .unwrap();
        std::fs::create_dir_all(logs.path().join(format!("payments_api-7f9c_{POD}/api"))).unwrap();
        let pod_ = POD.replace('-', "_");
        let path = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice/cri-containerd-{ID}.scope"
        );
        let (mut r, inos, _root) = resolver(&[&path], kubelet.path(), logs.path());
        let id = r.resolve(&info(20, inos[0]), "root", &[]);
        assert_eq!(id.id, "k8s:payments/api");
        assert_eq!(id.spiffe_id, "spiffe://td/ns/payments/sa/api");
        let k8s = id.k8s.unwrap();
        assert_eq!(
            (
                k8s.namespace.as_deref(),
                k8s.pod.as_deref(),
                k8s.container.as_deref()
            ),
            (Some("payments"), Some("api-7f9c"), Some("api"))
        );
        assert_eq!(k8s.pod_uid, POD);
        assert_eq!(id.container.unwrap().id, ID);
    }

    #[test]
    fn cache_hits_misses_and_invalidation() {
        let none = Path::new("/nonexistent");
        let (mut r, inos, _root) = resolver(&["system.slice/a.service"], none, none);
        let p = info(30, inos[0]);
        r.resolve(&p, "ana", &[]);
        r.resolve(&p, "ana", &[]);
        let s = r.cache_stats();
        assert_eq!((s.size, s.capacity, s.hits, s.misses), (1, 2, 1, 1));
        assert_eq!(s.hit_rate, 0.5);
        // exec/exit forget; a reused pid (another start) or a move to
        // another cgroup is a miss.
        r.forget(30);
        r.resolve(&p, "ana", &[]);
        r.resolve(
            &ProcessInfo {
                start_ns: 9,
                ..p.clone()
            },
            "ana",
            &[],
        );
        r.resolve(
            &ProcessInfo {
                cgroup_id: 1,
                ..p.clone()
            },
            "ana",
            &[],
        );
        assert_eq!(r.cache_stats().misses, 4);
        // Bounded: the least recently used goes.
        r.resolve(&info(31, inos[0]), "ana", &[]);
        r.resolve(&info(32, inos[0]), "ana", &[]);
        assert_eq!(r.cache_stats().size, 2);
    }

    #[test]
    fn human_sessions() {
        let p = info(1, 1);
        assert!(!is_human(&p, &[]));
        assert!(is_human(
            &ProcessInfo {
                tty: true,
                ..p.clone()
            },
            &[]
        ));
        assert!(is_human(
            &ProcessInfo {
                loginuid: Some(1000),
                ..p.clone()
            },
            &[]
        ));
        let via = |exe: &str| {
            is_human(
                &p,
                &[
                    Ancestor {
                        pid: 5,
                        exe: Some("/usr/bin/bash".into()),
                    },
                    Ancestor {
                        pid: 4,
                        exe: Some(exe.into()),
                    },
                ],
            )
        };
        assert!(via("/usr/sbin/sshd"));
        assert!(via("/usr/lib/openssh/sshd-session"));
        assert!(via("/usr/bin/sudo"));
        assert!(via("/bin/su"));
        assert!(!via("/usr/sbin/cron"));
        assert!(!via("/opt/sudoku"));
    }

    #[test]
    fn this_process_is_alive_and_sees_the_host_view() {
        let me = std::process::id();
        let proc = Process::myself().unwrap();
        let tps = procfs::ticks_per_second();
        let start_ns = proc.stat().unwrap().starttime * (1_000_000_000 / tps);
        let r = IdentityResolver::for_host(
            Naming::new(Some("td"), "h").unwrap(),
            IdentityConfig::default(),
        );
        let p = ProcessInfo {
            pid: me,
            start_ns,
            ..info(me, 1)
        };
        assert!(r.live(&p).is_some());
        assert!(
            r.live(&ProcessInfo {
                start_ns: start_ns + 1_000_000_000,
                ..p.clone()
            })
            .is_none()
        );
        assert_eq!(r.container_path(&p, Path::new("/etc/hostname")), None);
    }
}
