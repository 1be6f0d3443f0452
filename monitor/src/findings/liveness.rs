//! Is a reader's workload still on this host? The one impure input of the
//! orphaned rule, checked on the agent's timer and recorded in the ledger
//! as `gone_since`.
//!
//! Gone means: a container's or pod's cgroup no longer exists; a systemd
//! unit's cgroup no longer exists and neither does its unit file (a timer
//! unit between runs is not gone); a plain process's executable was
//! deleted. An identity whose cgroup is unknown is never called gone.

use std::path::{Path, PathBuf};

use crate::{identity::cgroup_tree::CgroupTree, ledger::IdentityRow};

/// Where systemd looks for unit files, most specific first.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/run/systemd/transient",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

pub struct Liveness {
    cgroups: CgroupTree,
    unit_dirs: Vec<PathBuf>,
}

impl Liveness {
    /// This host, as of now: the cgroup tree is read afresh on first use.
    pub fn of_host() -> Self {
        Self {
            cgroups: CgroupTree::discover(),
            unit_dirs: UNIT_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    #[cfg(test)]
    fn at(cgroup_mount: &Path, unit_dir: &Path) -> Self {
        Self {
            cgroups: CgroupTree::at(Some(cgroup_mount.to_path_buf())),
            unit_dirs: vec![unit_dir.to_path_buf()],
        }
    }

    pub fn gone(&mut self, i: &IdentityRow) -> bool {
        match i.kind.as_str() {
            // Many processes, none of them vouched for: never called gone.
            "unknown" => false,
            "user" => i.exe.as_deref().is_some_and(|exe| !Path::new(exe).exists()),
            "systemd" => {
                self.cgroup_gone(i.cgroup_id)
                    && (i.user_manager
                        || !i.unit.as_deref().is_some_and(|u| self.unit_file_exists(u)))
            }
            _ => self.cgroup_gone(i.cgroup_id),
        }
    }

    fn cgroup_gone(&mut self, id: u64) -> bool {
        id != 0 && self.cgroups.path_of(id).is_none()
    }

    /// `getty@tty1.service` is also installed as the template `getty@.service`.
    fn unit_file_exists(&self, unit: &str) -> bool {
        let template = unit
            .split_once('@')
            .and_then(|(name, rest)| rest.rsplit_once('.').map(|(_, ty)| format!("{name}@.{ty}")));
        self.unit_dirs
            .iter()
            .any(|d| d.join(unit).exists() || template.as_ref().is_some_and(|t| d.join(t).exists()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use chrono::DateTime;

    use super::*;

    fn row(kind: &str, unit: Option<&str>, cgroup_id: u64, exe: Option<&str>) -> IdentityRow {
        let t = DateTime::from_timestamp(0, 0).unwrap();
        IdentityRow {
            id: "x".into(),
            kind: kind.into(),
            spiffe_id: String::new(),
            unit: unit.map(str::to_string),
            user_manager: false,
            cgroup_id,
            exe: exe.map(str::to_string),
            first_seen: t,
            last_seen: t,
            gone_since: None,
        }
    }

    #[test]
    fn gone_by_cgroup_unit_file_or_executable() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cgroup");
        let units = dir.path().join("units");
        std::fs::create_dir_all(cg.join("system.slice/live.service")).unwrap();
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("getty@.service"), "").unwrap();
        std::fs::write(units.join("timer.service"), "").unwrap();
        let live = std::fs::metadata(cg.join("system.slice/live.service"))
            .unwrap()
            .ino();
        let removed = live + 1_000_000;
        let mut l = Liveness::at(&cg, &units);

        assert!(!l.gone(&row("systemd", Some("live.service"), live, None)));
        assert!(l.gone(&row("systemd", Some("old.service"), removed, None)));
        // Installed, just not running now.
        assert!(!l.gone(&row("systemd", Some("timer.service"), removed, None)));
        assert!(!l.gone(&row("systemd", Some("getty@tty1.service"), removed, None)));
        assert!(l.gone(&row("container", None, removed, None)));
        assert!(!l.gone(&row("k8s", None, live, None)));
        assert!(
            !l.gone(&row("container", None, 0, None)),
            "unknown is not gone"
        );
        assert!(!l.gone(&row("user", None, 0, Some("/bin/sh"))));
        assert!(l.gone(&row("user", None, 0, Some("/no/such/exe"))));
        assert!(!l.gone(&row("unknown", None, removed, Some("/no/such/exe"))));
    }
}
