//! Workload identity: which workload a process belongs to, as the design's
//! ids and SPIFFE ids, with the systemd, container and Kubernetes facts
//! that make it up.
//!
//! `cgroup` names the workload from a cgroup path, `k8s` reads what the node
//! knows of a pod, `cgroup_tree` maps the kernel's cgroup ids back to paths
//! for processes already gone, `mounts` translates host paths into a
//! container's view, and `resolver` puts them together with a cache.

pub mod cgroup;
pub mod cgroup_tree;
pub mod k8s;
mod mounts;
mod resolver;
pub mod spiffe;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use self::{
    cgroup::{ContainerId, Runtime},
    spiffe::{segment, segments},
};
pub use self::{
    resolver::{CacheStats, IdentityResolver},
    spiffe::Naming,
};

/// `[identity]` of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The kubelet's root directory, holding `pods/<uid>/`.
    pub kubelet_root: PathBuf,
    /// Where pod logs live, as `<namespace>_<pod>_<uid>/<container>/`.
    pub pod_log_root: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            kubelet_root: PathBuf::from("/var/lib/kubelet"),
            pod_log_root: PathBuf::from("/var/log/pods"),
        }
    }
}

/// The id, and kind, of an access whose process cannot be told.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    K8s,
    Container,
    Systemd,
    User,
    /// The process table cannot vouch for the process (events were lost
    /// since its exec or fork was seen, or its pid was reused): a wrong
    /// identity would be worse than none.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub id: String,
    pub kind: IdentityKind,
    pub spiffe_id: String,
    /// Read from a human session: a controlling terminal, a set login uid,
    /// or sshd/login/su/sudo among the ancestors.
    pub human: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd: Option<SystemdUnit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8s>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemdUnit {
    pub unit: String,
    /// `user@<uid>.service` when the unit is a user manager's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_manager: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub runtime: Runtime,
}

impl From<&ContainerId> for Container {
    fn from(c: &ContainerId) -> Self {
        Self {
            id: c.id.clone(),
            runtime: c.runtime,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct K8s {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub pod_uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl Identity {
    fn bare(kind: IdentityKind, id: String, spiffe_id: String) -> Self {
        Self {
            id,
            kind,
            spiffe_id,
            human: false,
            systemd: None,
            container: None,
            k8s: None,
        }
    }

    /// `unknown`: who made this access cannot be told. No SPIFFE id.
    pub fn unknown() -> Self {
        Self::bare(IdentityKind::Unknown, UNKNOWN.into(), String::new())
    }

    /// `user:<name>:<exe>`: a process that belongs to no more specific
    /// workload.
    pub fn user(naming: &Naming, user: &str, uid: u32, exe: &str) -> Self {
        Self::bare(
            IdentityKind::User,
            format!("user:{user}:{exe}"),
            naming.spiffe(&format!(
                "host/{}/uid/{uid}/exe/{}",
                naming.host_segment(),
                segments(exe)
            )),
        )
    }

    /// `systemd:<unit>`, or `systemd:user@<uid>.service/<unit>` for a unit
    /// of a user manager, which is that user's and not the system's.
    pub fn systemd(naming: &Naming, unit: &str, user_manager: Option<u32>) -> Self {
        let host = naming.host_segment();
        let (id, path) = match user_manager {
            None => (
                format!("systemd:{unit}"),
                format!("host/{host}/unit/{}", segment(unit)),
            ),
            Some(uid) => (
                format!("systemd:user@{uid}.service/{unit}"),
                format!("host/{host}/uid/{uid}/unit/{}", segment(unit)),
            ),
        };
        Self {
            systemd: Some(SystemdUnit {
                unit: unit.to_string(),
                user_manager: user_manager.map(|uid| format!("user@{uid}.service")),
            }),
            ..Self::bare(IdentityKind::Systemd, id, naming.spiffe(&path))
        }
    }

    /// `container:<runtime>:<first 12 of id>`.
    pub fn container(naming: &Naming, c: &ContainerId) -> Self {
        let short = &c.id[..c.id.len().min(12)];
        Self {
            container: Some(c.into()),
            ..Self::bare(
                IdentityKind::Container,
                format!("container:{}:{short}", c.runtime.as_str()),
                naming.spiffe(&format!("container/{short}")),
            )
        }
    }

    /// `k8s:<namespace>/<service_account>`.
    pub fn k8s(naming: &Naming, namespace: &str, service_account: &str) -> Self {
        Self::bare(
            IdentityKind::K8s,
            format!("k8s:{namespace}/{service_account}"),
            naming.spiffe(&format!(
                "ns/{}/sa/{}",
                segment(namespace),
                segment(service_account)
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> Naming {
        Naming::new(Some("example.org"), "web-1").unwrap()
    }

    #[test]
    fn ids_and_spiffe_ids_per_kind() {
        let n = naming();
        let user = Identity::user(&n, "ana", 1000, "/usr/bin/cat");
        assert_eq!(user.id, "user:ana:/usr/bin/cat");
        assert_eq!(
            user.spiffe_id,
            "spiffe://example.org/host/web-1/uid/1000/exe/usr/bin/cat"
        );
        assert_eq!(user.kind, IdentityKind::User);

        let unit = Identity::systemd(&n, "getty@tty1.service", None);
        assert_eq!(unit.id, "systemd:getty@tty1.service");
        // SPIFFE path segments allow only [A-Za-z0-9._-].
        assert_eq!(
            unit.spiffe_id,
            "spiffe://example.org/host/web-1/unit/getty_tty1.service"
        );
        let user_unit = Identity::systemd(&n, "syncthing.service", Some(1000));
        assert_eq!(user_unit.id, "systemd:user@1000.service/syncthing.service");
        assert_eq!(
            user_unit.spiffe_id,
            "spiffe://example.org/host/web-1/uid/1000/unit/syncthing.service"
        );

        let c = ContainerId {
            runtime: Runtime::Docker,
            id: "3f4a9c1b2d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a".into(),
        };
        let container = Identity::container(&n, &c);
        assert_eq!(container.id, "container:docker:3f4a9c1b2d8e");
        assert_eq!(
            container.spiffe_id,
            "spiffe://example.org/container/3f4a9c1b2d8e"
        );

        let k8s = Identity::k8s(&n, "payments", "api");
        assert_eq!(k8s.id, "k8s:payments/api");
        assert_eq!(k8s.spiffe_id, "spiffe://example.org/ns/payments/sa/api");
    }

    #[test]
    fn optional_parts_are_left_out() {
        let v = serde_json::to_value(Identity::user(&naming(), "ana", 1000, "/bin/sh")).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["human", "id", "kind", "spiffe_id"]);
        let v = serde_json::to_value(Identity::systemd(&naming(), "a.service", None)).unwrap();
        assert_eq!(v["systemd"], serde_json::json!({"unit": "a.service"}));
    }

    #[test]
    fn config_defaults_and_typos() {
        assert_eq!(
            IdentityConfig::default().kubelet_root,
            PathBuf::from("/var/lib/kubelet")
        );
        let c: IdentityConfig = toml::from_str("pod_log_root = \"/x\"").unwrap();
        assert_eq!(c.pod_log_root, PathBuf::from("/x"));
        assert_eq!(c.kubelet_root, PathBuf::from("/var/lib/kubelet"));
        assert!(toml::from_str::<IdentityConfig>("kubelet_rot = \"/x\"").is_err());
    }
}
