//! What the agent needs from the host, checked before anything is loaded so
//! that each gap is one clear line naming its fix.

use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};

use crate::offsets::VMLINUX_BTF;

/// Where tracefs may be mounted; aya looks in the same places.
const TRACEFS_DIRS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
pub const TRACEFS_FIX: &str = "mount -t tracefs tracefs /sys/kernel/tracing";
const NEEDED_CAPS: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_PTRACE,
];

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "this needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (missing: {0}): run it with sudo"
    )]
    Privileges(String),
    #[error(
        "this kernel exposes no BTF ({VMLINUX_BTF} is missing): secretmon needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("tracefs is not mounted: run `{TRACEFS_FIX}`")]
    NoTracefs,
}

/// Capabilities the agent lacks; empty when it has them all.
pub fn missing_caps() -> Vec<Capability> {
    NEEDED_CAPS
        .iter()
        .copied()
        .filter(|c| !caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
        .collect()
}

/// The tracefs mount in use, if any.
pub fn tracefs_dir() -> Option<PathBuf> {
    TRACEFS_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("events").is_dir())
        .map(Path::to_path_buf)
}

pub fn check() -> Result<(), PreflightError> {
    let missing = missing_caps();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|c| c.to_string()).collect();
        return Err(PreflightError::Privileges(names.join(", ")));
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(PreflightError::NoBtf);
    }
    if tracefs_dir().is_none() {
        return Err(PreflightError::NoTracefs);
    }
    Ok(())
}

/// The active LSMs, in securityfs.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Why BPF LSM programs cannot watch opens here. Its [`LsmGap::fix`] is
/// the one text `check` and `run --opens lsm` give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsmGap {
    /// The list of active LSMs cannot be read.
    NoSecurityfs,
    /// `bpf` is not among the active LSMs: programs would load and never run.
    NotActive,
    /// `bpf` is active, yet the kernel refuses the program.
    Refused,
}

impl LsmGap {
    pub fn fix(self) -> &'static str {
        match self {
            Self::NoSecurityfs => {
                "mount securityfs (`mount -t securityfs securityfs /sys/kernel/security`) \
                 so that the active LSMs can be read"
            }
            Self::NotActive => {
                "boot with `bpf` in the kernel's `lsm=` list (e.g. \
                 lsm=lockdown,capability,landlock,yama,apparmor,bpf) on a kernel built with \
                 CONFIG_BPF_LSM=y"
            }
            Self::Refused => {
                "this kernel refuses BPF LSM programs although `bpf` is an active LSM \
                 (a hardened or hypervisor-restricted build): use --opens auto, or another \
                 kernel"
            }
        }
    }
}

/// Whether `bpf` is among the active LSMs, as `check` and `run --opens lsm`
/// both decide it first: without it a BPF LSM program may load and attach
/// and yet never run. The gap and why, when it is not.
pub fn bpf_lsm_listed() -> Result<(), (LsmGap, String)> {
    let list = std::fs::read_to_string(LSM_LIST);
    lsm_gap(list.as_deref().ok()).map_err(|gap| {
        let why = match &list {
            Err(e) => format!("cannot read {LSM_LIST}: {}", crate::errors::error_text(e)),
            Ok(list) => format!("`bpf` is not an active LSM ({})", list.trim()),
        };
        (gap, why)
    })
}

/// Whether BPF LSM can be active, from the list in `LSM_LIST` (`None` when
/// it cannot be read).
pub fn lsm_gap(lsm_list: Option<&str>) -> Result<(), LsmGap> {
    match lsm_list {
        None => Err(LsmGap::NoSecurityfs),
        Some(list) if list.split(',').any(|l| l.trim() == "bpf") => Ok(()),
        Some(_) => Err(LsmGap::NotActive),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_in_lsm_lists() {
        assert_eq!(lsm_gap(Some("lockdown,capability,landlock,bpf\n")), Ok(()));
        assert_eq!(
            lsm_gap(Some("lockdown,capability,landlock,yama,apparmor,tomoyo")),
            Err(LsmGap::NotActive)
        );
        assert_eq!(lsm_gap(Some("bpf_not,ebpf")), Err(LsmGap::NotActive));
        assert_eq!(lsm_gap(None), Err(LsmGap::NoSecurityfs));
    }
}
