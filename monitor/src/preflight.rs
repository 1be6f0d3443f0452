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
