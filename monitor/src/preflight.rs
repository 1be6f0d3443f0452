//! What the agent needs from the host, checked from the kernel's features
//! before anything is loaded, so that each gap is one clear line naming its
//! fix.

use crate::{
    features::{KernelFeatures, lists_bpf},
    offsets::{OffsetsError, VMLINUX_BTF},
};

pub const TRACEFS_FIX: &str = "mount -t tracefs tracefs /sys/kernel/tracing";

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
    #[error(transparent)]
    Btf(&'static OffsetsError),
    #[error("tracefs is not mounted: run `{TRACEFS_FIX}`")]
    NoTracefs,
}

/// The running kernel's features, when the agent can run on it.
pub fn check() -> Result<&'static KernelFeatures, PreflightError> {
    let kernel = KernelFeatures::get();
    if !kernel.privileged() {
        let names: Vec<String> = kernel.missing_caps.iter().map(|c| c.to_string()).collect();
        return Err(PreflightError::Privileges(names.join(", ")));
    }
    match &kernel.offsets {
        Err(OffsetsError::NoBtf) => return Err(PreflightError::NoBtf),
        Err(e) => return Err(PreflightError::Btf(e)),
        Ok(_) => {}
    }
    if kernel.tracefs.is_none() {
        return Err(PreflightError::NoTracefs);
    }
    Ok(kernel)
}

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

/// Whether BPF LSM can be active, from the list of active LSMs (`None`
/// when it cannot be read): without `bpf` in it a BPF LSM program may load
/// and attach and yet never run.
pub fn lsm_gap(lsm_list: Option<&str>) -> Result<(), LsmGap> {
    match lsm_list {
        None => Err(LsmGap::NoSecurityfs),
        Some(list) if lists_bpf(list) => Ok(()),
        Some(_) => Err(LsmGap::NotActive),
    }
}

/// The fix `check` and `run --opens lsm` give when BPF LSM cannot be used
/// here: the LSM list first, then the kernel's refusal of the program.
pub fn lsm_fix(kernel: &KernelFeatures) -> &'static str {
    lsm_gap(kernel.lsm_list.as_deref())
        .err()
        .unwrap_or(LsmGap::Refused)
        .fix()
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

    #[test]
    fn the_lsm_fix_follows_the_list_then_the_refusal() {
        let mut k = crate::features::tests::debian_6_1();
        k.bpf_lsm = crate::features::Support::No("load refused: EPERM".into());
        assert_eq!(lsm_fix(&k), LsmGap::Refused.fix());
        k.lsm_list = Some("lockdown,capability,yama".into());
        assert_eq!(lsm_fix(&k), LsmGap::NotActive.fix());
        k.lsm_list = None;
        assert_eq!(lsm_fix(&k), LsmGap::NoSecurityfs.fix());
    }
}
