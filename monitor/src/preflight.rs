//! What the agent needs from the host, checked from the kernel's features
//! before anything is loaded, so that each gap is one clear line naming its
//! fix.

use crate::{
    features::KernelFeatures,
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
