//! What workload a cgroup path names. Pure: the text of `/proc/<pid>/cgroup`
//! (or one cgroup v2 path) in, a [`Workload`] out, no I/O.
//!
//! Covers cgroup v1, v2 and hybrid files; systemd services, scopes, user
//! managers and login sessions; docker, containerd, cri-o and podman
//! (rootless included, which nest under `user@<uid>.service`); and kubepods
//! under both the systemd driver (`kubepods-…-pod<uid_with_underscores>.slice`)
//! and the cgroupfs driver (`/kubepods/<qos>/pod<uid>/<id>`).
//!
//! The file is written by the kernel, but cgroup names below a delegated
//! subtree are chosen by whoever owns it, so nothing here is trusted beyond
//! its shape: ids must be well-formed, and a file whose lines disagree on a
//! pod or container is not attributed to either.

use std::collections::HashMap;

use serde::Serialize;

/// Longer paths are not cgroups the kernel would show (PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// A v1 host has a line per hierarchy (about a dozen) plus the v2 line.
const MAX_LINES: usize = 64;
/// systemd's limit on unit names.
const MAX_UNIT_LEN: usize = 255;
/// Container ids of every runtime here are 64 lowercase hex digits.
const CONTAINER_ID_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A bare id under a cgroupfs-driver pod, which does not say whose.
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerId {
    pub runtime: Runtime,
    /// 64 lowercase hex digits.
    pub id: String,
}

/// The most specific workload a cgroup names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// A Kubernetes pod; `uid` in its canonical dashed form.
    Pod {
        uid: String,
        container: Option<ContainerId>,
    },
    Container(ContainerId),
    /// A systemd service or scope: of the system manager, or of the user
    /// manager `user@<uid>.service` when `user_manager` is set.
    Unit {
        unit: String,
        user_manager: Option<u32>,
    },
    /// A login session scope (`session-<n>.scope`) in a user's slice.
    Session {
        unit: String,
    },
    /// Nothing more specific than the host.
    Host,
}

/// The workload named by the text of `/proc/<pid>/cgroup`.
///
/// Each line is `hierarchy:controllers:path`; malformed lines are skipped.
/// A hierarchy listed twice means the text is not what the kernel wrote (a
/// newline smuggled into a name, say), so every line of that hierarchy is
/// ignored. Pods and containers must agree across the lines that name one;
/// otherwise the result falls back to the unit, session or host.
pub fn parse(text: &str) -> Workload {
    let mut lines: Vec<(u32, &str, &str)> = text
        .lines()
        .take(MAX_LINES)
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some((hierarchy, controllers, path))
        })
        .collect();
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for (hierarchy, ..) in &lines {
        *seen.entry(*hierarchy).or_default() += 1;
    }
    lines.retain(|(hierarchy, ..)| seen[hierarchy] == 1);
    // The unified line first, then systemd's own v1 hierarchy: where the
    // lines name different units, those are the ones systemd manages.
    lines.sort_by_key(|&(hierarchy, controllers, _)| {
        if hierarchy == 0 {
            0
        } else if controllers == "name=systemd" {
            1
        } else {
            2
        }
    });
    merge(lines.iter().map(|&(_, _, path)| classify_path(path)))
}

/// Combine what each line says: the one pod and the one container they
/// agree on, else the first unit or session.
fn merge(workloads: impl Iterator<Item = Workload>) -> Workload {
    let mut pods: Vec<String> = Vec::new();
    let mut containers: Vec<ContainerId> = Vec::new();
    let mut unit: Option<Workload> = None;
    for w in workloads {
        match w {
            Workload::Pod { uid, container } => {
                pods.push(uid);
                containers.extend(container);
            }
            Workload::Container(c) => containers.push(c),
            Workload::Unit { .. } | Workload::Session { .. } => {
                unit.get_or_insert(w);
            }
            Workload::Host => {}
        }
    }
    let container = agreed_container(&containers);
    pods.sort_unstable();
    pods.dedup();
    match (pods.as_slice(), container) {
        ([uid], container) => Workload::Pod {
            uid: uid.clone(),
            container,
        },
        (_, Some(c)) if pods.is_empty() => Workload::Container(c),
        _ => unit.unwrap_or(Workload::Host),
    }
}

/// The container every line names, with the most telling runtime; `None`
/// when there is none or they disagree.
fn agreed_container(containers: &[ContainerId]) -> Option<ContainerId> {
    let first = containers.first()?;
    if containers.iter().any(|c| c.id != first.id) {
        return None;
    }
    let runtime = containers
        .iter()
        .map(|c| c.runtime)
        .find(|&r| r != Runtime::Unknown)
        .unwrap_or(Runtime::Unknown);
    Some(ContainerId {
        runtime,
        id: first.id.clone(),
    })
}

/// The workload named by one cgroup path (v1 or v2), relative to the root
/// of its hierarchy.
pub fn classify_path(path: &str) -> Workload {
    if path.len() > MAX_PATH_LEN || !path.starts_with('/') || path.contains(['\n', '\0']) {
        return Workload::Host;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut pod: Option<String> = None;
    let mut in_kubepods = false;
    let mut container: Option<ContainerId> = None;
    let mut unit: Option<&str> = None;
    let mut user_manager: Option<u32> = None;
    let mut in_user_slice = false;
    let mut parent = "";
    // The outermost match wins: the runtime, the kubelet and systemd name
    // those, while anything below may be a delegated subtree named by the
    // workload itself (which could call a cgroup `nginx.service` or
    // `docker-<someone else's id>.scope`). The one nesting honoured is the
    // user manager, whose units are that user's own.
    for &seg in &segments {
        if let Some(c) = container_segment(seg, parent, pod.is_some()) {
            container.get_or_insert(c);
        } else if let Some(uid) = pod_segment(seg, in_kubepods) {
            pod.get_or_insert(uid);
        } else if let Some(uid) = user_manager_segment(seg) {
            if unit.is_none() {
                user_manager = Some(uid);
                unit = Some(seg);
            }
        } else if is_unit(seg) {
            if unit.is_none() || unit.is_some_and(|u| user_manager_segment(u).is_some()) {
                unit = Some(seg);
            }
        } else if numbered(seg, "user-", ".slice").is_some() {
            in_user_slice = true;
        }
        in_kubepods |= seg.contains("kubepods");
        parent = seg;
    }
    match (pod, container, unit) {
        (Some(uid), container, _) => Workload::Pod { uid, container },
        (None, Some(c), _) => Workload::Container(c),
        (None, None, Some(unit)) => {
            let session = unit.starts_with("session-") && unit.ends_with(".scope");
            match user_manager {
                None if session && in_user_slice => Workload::Session {
                    unit: unit.to_string(),
                },
                // The user manager's own unit is a system unit; the units
                // below it belong to that user's manager.
                Some(uid) if unit != format!("user@{uid}.service") => Workload::Unit {
                    unit: unit.to_string(),
                    user_manager: Some(uid),
                },
                _ => Workload::Unit {
                    unit: unit.to_string(),
                    user_manager: None,
                },
            }
        }
        (None, None, None) => Workload::Host,
    }
}

/// A segment that is a container's own cgroup, by runtime naming:
/// systemd driver `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `nerdctl-<id>.scope`; cgroupfs
/// driver `/docker/<id>`, `crio-<id>`, `libpod-<id>`, or a bare id in a pod.
/// The conmon scopes (`crio-conmon-<id>`, `libpod-conmon-<id>`) hold the
/// runtime's monitor, not the container, and fail the id check.
fn container_segment(seg: &str, parent: &str, in_pod: bool) -> Option<ContainerId> {
    const PREFIXED: &[(&str, Runtime)] = &[
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    let base = seg.strip_suffix(".scope").unwrap_or(seg);
    for &(prefix, runtime) in PREFIXED {
        if let Some(id) = base.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some(ContainerId {
                runtime,
                id: id.to_string(),
            });
        }
    }
    let runtime = match parent {
        "docker" => Runtime::Docker,
        _ if in_pod => Runtime::Unknown,
        _ => return None,
    };
    is_container_id(seg).then(|| ContainerId {
        runtime,
        id: seg.to_string(),
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pod's cgroup: `kubepods[-<qos>]-pod<uid_>.slice` (systemd driver, where
/// systemd's slice naming turns the uid's dashes into underscores), or
/// `pod<uid>` below a kubepods cgroup (cgroupfs driver).
fn pod_segment(seg: &str, in_kubepods: bool) -> Option<String> {
    let raw = match seg.strip_suffix(".slice") {
        Some(slice) if slice.contains("kubepods") => &slice[slice.rfind("-pod")? + 4..],
        Some(_) => return None,
        None if in_kubepods => seg.strip_prefix("pod")?,
        None => return None,
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A Kubernetes object uid: a dashed UUID, 8-4-4-4-12 hex digits.
pub fn is_pod_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `user@<uid>.service`, the per-user systemd manager.
fn user_manager_segment(seg: &str) -> Option<u32> {
    numbered(seg, "user@", ".service")
}

/// The number in `<prefix><n><suffix>`.
fn numbered(seg: &str, prefix: &str, suffix: &str) -> Option<u32> {
    seg.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

/// A systemd service or scope name as systemd would accept it.
fn is_unit(seg: &str) -> bool {
    let Some(name) = seg
        .strip_suffix(".service")
        .or_else(|| seg.strip_suffix(".scope"))
    else {
        return false;
    };
    !name.is_empty()
        && seg.len() <= MAX_UNIT_LEN
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\@-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a9c1b2d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const POD: &str = "7d3c4a5e-1b2f-4c6d-8e9f-0a1b2c3d4e5f";
    const POD_: &str = "7d3c4a5e_1b2f_4c6d_8e9f_0a1b2c3d4e5f";

    fn pod(runtime: Option<Runtime>, id: &str) -> Workload {
        Workload::Pod {
            uid: POD.into(),
            container: runtime.map(|runtime| ContainerId {
                runtime,
                id: id.into(),
            }),
        }
    }

    fn container(runtime: Runtime, id: &str) -> Workload {
        Workload::Container(ContainerId {
            runtime,
            id: id.into(),
        })
    }

    fn unit(unit: &str) -> Workload {
        Workload::Unit {
            unit: unit.into(),
            user_manager: None,
        }
    }

    fn user_unit(unit: &str, uid: u32) -> Workload {
        Workload::Unit {
            unit: unit.into(),
            user_manager: Some(uid),
        }
    }

    /// A cgroup v1 file as a hybrid or legacy host writes it, every
    /// controller in `path`, systemd's own hierarchy in `systemd_path`.
    fn v1(path: &str, systemd_path: &str) -> String {
        format!(
            "12:pids:{path}\n11:hugetlb:{path}\n10:net_cls,net_prio:{path}\n\
             9:perf_event:{path}\n8:cpu,cpuacct:{path}\n7:blkio:{path}\n\
             6:devices:{path}\n5:memory:{path}\n4:freezer:{path}\n3:cpuset:{path}\n\
             2:rdma:/\n1:name=systemd:{systemd_path}\n"
        )
    }

    #[test]
    fn table_of_real_looking_files() {
        let cases: Vec<(&str, String, Workload)> = vec![
            // cgroup v2, systemd.
            ("v2 root", "0::/\n".into(), Workload::Host),
            ("v2 init", "0::/init.scope\n".into(), unit("init.scope")),
            (
                "v2 system service",
                "0::/system.slice/nginx.service\n".into(),
                unit("nginx.service"),
            ),
            (
                "v2 templated service in a sub-slice",
                "0::/system.slice/system-getty.slice/getty@tty1.service\n".into(),
                unit("getty@tty1.service"),
            ),
            (
                "v2 service with a delegated subtree",
                "0::/system.slice/buildkitd.service/payload/sshd.service\n".into(),
                unit("buildkitd.service"),
            ),
            (
                "v2 transient scope",
                "0::/system.slice/run-r5f1e2d3c4b5a.scope\n".into(),
                unit("run-r5f1e2d3c4b5a.scope"),
            ),
            (
                "v2 login session",
                "0::/user.slice/user-1000.slice/session-3.scope\n".into(),
                Workload::Session {
                    unit: "session-3.scope".into(),
                },
            ),
            (
                "v2 user manager itself",
                "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n".into(),
                user_unit("init.scope", 1000),
            ),
            (
                "v2 user service",
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service\n"
                    .into(),
                user_unit("syncthing.service", 1000),
            ),
            (
                "v2 user slice, no unit",
                "0::/user.slice/user-1000.slice\n".into(),
                Workload::Host,
            ),
            // Docker.
            (
                "v2 docker, systemd driver",
                format!("0::/system.slice/docker-{ID}.scope\n"),
                container(Runtime::Docker, ID),
            ),
            (
                "v2 docker, cgroupfs driver",
                format!("0::/docker/{ID}\n"),
                container(Runtime::Docker, ID),
            ),
            (
                "v1 docker, cgroupfs driver",
                v1(&format!("/docker/{ID}"), &format!("/docker/{ID}")),
                container(Runtime::Docker, ID),
            ),
            (
                "hybrid docker, systemd driver",
                format!(
                    "{}0::/system.slice/docker-{ID}.scope\n",
                    v1(
                        &format!("/system.slice/docker-{ID}.scope"),
                        &format!("/system.slice/docker-{ID}.scope")
                    )
                ),
                container(Runtime::Docker, ID),
            ),
            (
                "v2 rootless docker",
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope\n"
                ),
                container(Runtime::Docker, ID),
            ),
            (
                "v2 docker with systemd inside",
                format!("0::/system.slice/docker-{ID}.scope/init.scope\n"),
                container(Runtime::Docker, ID),
            ),
            (
                "v2 container naming another container inside it",
                format!("0::/system.slice/docker-{ID}.scope/docker-{ID2}.scope\n"),
                container(Runtime::Docker, ID),
            ),
            (
                "v2 dockerd itself",
                "0::/system.slice/docker.service\n".into(),
                unit("docker.service"),
            ),
            // containerd without Kubernetes.
            (
                "v2 nerdctl, systemd driver",
                format!("0::/system.slice/nerdctl-{ID}.scope\n"),
                container(Runtime::Containerd, ID),
            ),
            // Podman.
            (
                "v2 podman rootful",
                format!("0::/machine.slice/libpod-{ID}.scope\n"),
                container(Runtime::Podman, ID),
            ),
            (
                "v2 podman rootful, split container cgroup",
                format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
                container(Runtime::Podman, ID),
            ),
            (
                "v2 podman rootless",
                format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"),
                container(Runtime::Podman, ID),
            ),
            (
                "v2 podman conmon is not the container",
                format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope\n"),
                user_unit(&format!("libpod-conmon-{ID}.scope"), 1000),
            ),
            (
                "v1 podman, cgroupfs driver",
                v1(&format!("/libpod_parent/libpod-{ID}"), &format!("/libpod_parent/libpod-{ID}")),
                container(Runtime::Podman, ID),
            ),
            // Kubernetes, systemd driver.
            (
                "v2 kubepods containerd besteffort",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/cri-containerd-{ID}.scope\n"
                ),
                pod(Some(Runtime::Containerd), ID),
            ),
            (
                "v2 kubepods guaranteed (no qos slice)",
                format!("0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{ID}.scope\n"),
                pod(Some(Runtime::Containerd), ID),
            ),
            (
                "v2 kubepods cri-o burstable",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/crio-{ID}.scope\n"
                ),
                pod(Some(Runtime::CriO), ID),
            ),
            (
                "v2 kubepods cri-o conmon: the pod, no container",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/crio-conmon-{ID}.scope\n"
                ),
                pod(None, ""),
            ),
            (
                "v2 kind node (kubelet cgroup root)",
                format!(
                    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_}.slice/cri-containerd-{ID}.scope\n"
                ),
                pod(Some(Runtime::Containerd), ID),
            ),
            (
                "hybrid kubepods docker (dockershim), systemd driver",
                format!(
                    "{}0::/\n",
                    v1(
                        &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/docker-{ID}.scope"),
                        &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/docker-{ID}.scope"),
                    )
                ),
                pod(Some(Runtime::Docker), ID),
            ),
            // Kubernetes, cgroupfs driver.
            (
                "v2 kubepods cgroupfs besteffort",
                format!("0::/kubepods/besteffort/pod{POD}/{ID}\n"),
                pod(Some(Runtime::Unknown), ID),
            ),
            (
                "v1 kubepods cgroupfs guaranteed",
                v1(&format!("/kubepods/pod{POD}/{ID}"), &format!("/kubepods/pod{POD}/{ID}")),
                pod(Some(Runtime::Unknown), ID),
            ),
            (
                "v1 kubepods cgroupfs cri-o",
                v1(
                    &format!("/kubepods/burstable/pod{POD}/crio-{ID}"),
                    &format!("/kubepods/burstable/pod{POD}/crio-{ID}"),
                ),
                pod(Some(Runtime::CriO), ID),
            ),
            (
                "v1 cgroupfs id, systemd hierarchy says the runtime",
                format!(
                    "5:memory:/kubepods/besteffort/pod{POD}/{ID}\n\
                     1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/cri-containerd-{ID}.scope\n"
                ),
                pod(Some(Runtime::Containerd), ID),
            ),
            (
                "v2 pod-level cgroup",
                format!("0::/kubepods/burstable/pod{POD}\n"),
                pod(None, ""),
            ),
            // Hybrid and v1 hosts without containers.
            (
                "hybrid service",
                format!("{}0::/system.slice/cron.service\n", v1("/system.slice/cron.service", "/system.slice/cron.service")),
                unit("cron.service"),
            ),
            (
                "v1 session: controllers at the root, systemd in the session",
                v1("/", "/user.slice/user-0.slice/session-c1.scope"),
                Workload::Session {
                    unit: "session-c1.scope".into(),
                },
            ),
            (
                "this machine: hybrid, a sandbox memory cgroup, v2 at the root",
                "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/86818c8fa3a13e95a469fa19fcb860d2\n0::/\n".into(),
                Workload::Host,
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(parse(&text), want, "{name}:\n{text}");
        }
    }

    #[test]
    fn malformed_and_hostile_files() {
        let long = format!("0::/{}/docker-{ID}.scope\n", "a/".repeat(MAX_PATH_LEN));
        let cases: Vec<(&str, String, Workload)> = vec![
            ("empty", String::new(), Workload::Host),
            ("no colons", format!("docker-{ID}.scope\n"), Workload::Host),
            (
                "hierarchy not a number",
                format!("x::/system.slice/docker-{ID}.scope\n"),
                Workload::Host,
            ),
            (
                "relative path",
                format!("0::system.slice/docker-{ID}.scope\n"),
                Workload::Host,
            ),
            ("very long path", long, Workload::Host),
            (
                "id too short",
                "0::/system.slice/docker-3f4a9c1b2d8e.scope\n".into(),
                unit("docker-3f4a9c1b2d8e.scope"),
            ),
            (
                "id with uppercase hex",
                format!("0::/docker/{}\n", ID.to_uppercase()),
                Workload::Host,
            ),
            (
                "id with a path trick",
                format!("0::/system.slice/docker-../../{ID}.scope\n"),
                unit(&format!("{ID}.scope")),
            ),
            (
                "pod uid malformed",
                format!(
                    "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope\n",
                    "zz_1b2f"
                ),
                container(Runtime::Containerd, ID),
            ),
            (
                "pod segment outside kubepods is not a pod",
                format!("0::/system.slice/pod{POD}/{ID}\n"),
                Workload::Host,
            ),
            (
                // A cgroup named "x\n0::/…docker-<id>.scope" would forge a
                // second unified line: a hierarchy listed twice is ignored.
                "embedded newline forges a unified line",
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/x\n0::/system.slice/docker-{ID}.scope\n"
                ),
                Workload::Host,
            ),
            (
                "embedded newline forges a v1 line",
                format!(
                    "{}5:memory:/docker/{ID2}\n",
                    v1(&format!("/docker/{ID}"), &format!("/docker/{ID}"))
                ),
                container(Runtime::Docker, ID),
            ),
            (
                "container id conflicts between lines",
                format!(
                    "5:memory:/docker/{ID}\n4:cpu:/docker/{ID2}\n0::/system.slice/cron.service\n"
                ),
                unit("cron.service"),
            ),
            (
                "container id conflicts between v1 and v2",
                format!(
                    "1:name=systemd:/system.slice/docker-{ID}.scope\n0::/system.slice/docker-{ID2}.scope\n"
                ),
                Workload::Host,
            ),
            (
                "pod conflicts between lines",
                format!(
                    "5:memory:/kubepods/pod{POD}/{ID}\n4:cpu:/kubepods/pod11111111-2222-3333-4444-555555555555/{ID}\n"
                ),
                Workload::Host,
            ),
            (
                "unit name with forbidden characters",
                "0::/system.slice/we ird$.service\n".into(),
                Workload::Host,
            ),
            (
                "NUL in path",
                format!("0::/docker/{ID}\0\n"),
                Workload::Host,
            ),
            (
                "garbage lines around a good one",
                format!(":::\n\n\u{1b}[31m\n0::/system.slice/docker-{ID}.scope\n#comment\n"),
                container(Runtime::Docker, ID),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(parse(&text), want, "{name}:\n{text:?}");
        }
    }

    #[test]
    fn only_the_first_lines_are_read() {
        let mut text = "9:cpu:/\n".repeat(MAX_LINES);
        text.push_str(&format!("0::/docker/{ID}\n"));
        assert_eq!(parse(&text), Workload::Host);
    }

    #[test]
    fn pod_uids() {
        assert!(is_pod_uid(POD));
        assert!(!is_pod_uid(POD_));
        assert!(!is_pod_uid("7d3c4a5e-1b2f-4c6d-8e9f"));
        assert!(!is_pod_uid("../../../../etc/passwd"));
    }
}
