//! What the running kernel supports, probed once and cached: `check`
//! reports it, and the loader chooses its hooks from it, so the two never
//! disagree.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::{
    maps::MapType,
    programs::{LsmAttachType, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use caps::{CapSet, Capability};
use monitor_common::{
    KernelOffsets, NO_OFFSET,
    names::{Hook, Program},
};

use crate::{
    errors::error_text,
    offsets::{self, OffsetsError},
};

/// Where tracefs may be mounted; aya looks in the same places.
const TRACEFS_DIRS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// What loading and attaching the programs needs, short of root.
pub const NEEDED_CAPS: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_PTRACE,
];

/// Whether the kernel has a feature, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Yes(String),
    No(String),
    /// Not probed: without privileges, or the probe itself failed.
    Unknown(String),
}

impl Support {
    pub fn is_yes(&self) -> bool {
        matches!(self, Self::Yes(_))
    }

    /// What was seen, or why not.
    pub fn detail(&self) -> &str {
        match self {
            Self::Yes(d) | Self::No(d) | Self::Unknown(d) => d,
        }
    }
}

/// The io_uring submit tracepoint of this kernel, and where its `opcode`
/// field sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoUringTracepoint {
    pub name: &'static str,
    pub opcode_offset: u32,
}

/// Which hooks see opens (`--opens`, `capture.opens`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OpenHooks {
    /// The cheapest this kernel loads: fexit, then lsm, then tracepoints.
    Auto,
    /// fexit on `do_filp_open`: every open by path, io_uring's and denied
    /// ones included, and no syscall tracepoint (other syscalls keep their
    /// fast path). Needs BPF trampolines and Linux 5.15+.
    Fexit,
    /// The `file_open` BPF LSM hook for successful opens, io_uring's
    /// included; the syscall exit tracepoints for denied opens. Needs `bpf`
    /// among the active LSMs and Linux 5.15+.
    Lsm,
    /// The open-family syscall tracepoints: every kernel >= 5.8. io_uring
    /// opens are not seen; processes that submit them are reported.
    Tracepoints,
}

/// The hooks in use, as `check` and the `started` event name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveHooks {
    Fexit,
    Lsm,
    Tracepoints,
}

impl ActiveHooks {
    /// What sees successful opens.
    pub fn opens(self) -> &'static str {
        match self {
            Self::Fexit => "fexit:do_filp_open",
            Self::Lsm => "lsm:file_open",
            Self::Tracepoints => "tracepoints",
        }
    }

    /// What sees denied opens.
    pub fn denied_opens(self) -> &'static str {
        match self {
            Self::Fexit => "fexit:do_filp_open",
            Self::Lsm | Self::Tracepoints => "tracepoints",
        }
    }

    /// One line for `check`: what `run` will see opens with.
    pub fn summary(self) -> &'static str {
        match self {
            Self::Fexit => {
                "fexit:do_filp_open for every open (io_uring's and denied ones too), no syscall tracepoints"
            }
            Self::Lsm => "lsm:file_open for opens (io_uring's too), tracepoints for denied opens",
            Self::Tracepoints => "tracepoints",
        }
    }
}

/// Everything the agent needs to know about the kernel before loading.
#[derive(Debug)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// Capabilities the agent lacks; empty when it has them all.
    pub missing_caps: Vec<Capability>,
    /// The struct offsets the programs walk, from the kernel's BTF.
    pub offsets: Result<KernelOffsets, OffsetsError>,
    /// The kfunc `bpf_rdonly_cast` (6.2+), with which the open programs
    /// read the file just opened by direct loads instead of probe reads.
    pub rdonly_cast: bool,
    /// `bpf_get_current_task_btf` in tracepoint programs (5.11+), with which
    /// every program reads the current task's facts by direct loads instead
    /// of probe reads.
    pub task_btf: bool,
    pub tracefs: Option<PathBuf>,
    pub ring_buffer: Support,
    /// Tracepoint programs load and the syscall tracepoints exist.
    pub tracepoints: Support,
    /// Tracepoint programs may read a task's saved user registers
    /// (`bpf_task_pt_regs`, 5.15+) and the agent knows the architecture's
    /// register names: denied opens need no enter hooks, and the trampoline
    /// hooks can tell how an open came in.
    pub saved_registers: Support,
    pub bpf_lsm: Support,
    /// The active LSMs as securityfs lists them; `None` when unreadable.
    pub lsm_list: Option<String>,
    /// fentry/fexit (BPF trampolines).
    pub fentry: Support,
    pub io_uring: Option<IoUringTracepoint>,
}

static FEATURES: OnceLock<KernelFeatures> = OnceLock::new();

impl KernelFeatures {
    /// The running kernel's features, probed on first use.
    pub fn get() -> &'static Self {
        FEATURES.get_or_init(Self::probe)
    }

    fn probe() -> Self {
        let missing_caps = missing_caps();
        let privileged = missing_caps.is_empty();
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let btf = offsets::from_btf_file(Path::new(offsets::VMLINUX_BTF));
        let rdonly_cast = btf.as_ref().is_ok_and(|b| b.rdonly_cast);
        let offsets = btf.map(|b| b.offsets);
        let tracefs = tracefs_dir();
        let io_uring = tracefs.as_deref().and_then(io_uring_tracepoint);
        let ring_buffer = probed(privileged, || {
            is_map_supported(MapType::RingBuf).map_err(|e| error_text(&e))
        })
        .described("BPF_MAP_TYPE_RINGBUF", "BPF_MAP_TYPE_RINGBUF refused");
        let syscall_tracepoints = tracefs.as_ref().is_some_and(|d| {
            let events = d.join("events");
            events.join("syscalls/sys_exit_openat").is_dir()
                && events.join("sched/sched_process_exec").is_dir()
        });
        let tracepoints = match probed(privileged, || {
            is_program_supported(ProgramType::TracePoint).map_err(|e| error_text(&e))
        }) {
            Support::Yes(_) if syscall_tracepoints => {
                Support::Yes("syscalls/sys_exit_openat, sched/sched_process_exec".into())
            }
            Support::Yes(_) => Support::No(
                "syscall tracepoints absent (CONFIG_FTRACE_SYSCALLS) or tracefs unmounted".into(),
            ),
            Support::No(_) => Support::No("tracepoint programs refused".into()),
            unknown => unknown,
        };
        let x86_regs = offsets.as_ref().is_ok_and(|o| o.regs_di != NO_OFFSET);
        let helper =
            |h| is_helper_supported(ProgramType::TracePoint, h).map_err(|e| error_text(&e));
        let task_btf = probed(privileged, || {
            helper(BpfHelper::BPF_FUNC_get_current_task_btf)
        })
        .is_yes();
        let saved_registers = probed(privileged, || {
            Ok(task_btf && helper(BpfHelper::BPF_FUNC_task_pt_regs)?)
        })
        .described(
            "bpf_task_pt_regs",
            "no bpf_task_pt_regs in tracepoint programs (Linux < 5.15)",
        );
        let saved_registers = match saved_registers {
            Support::Yes(_) if !x86_regs => {
                Support::No("saved registers are read on x86_64 only".into())
            }
            other => other,
        };
        let lsm_list = std::fs::read_to_string(LSM_LIST);
        let bpf_lsm = probe_bpf_lsm(privileged, &lsm_list);
        let fentry = match probed(privileged, || {
            is_program_supported(ProgramType::Tracing).map_err(|e| error_text(&e))
        }) {
            Support::Yes(_) => Support::Yes("BPF trampolines load".into()),
            Support::No(_) => Support::No("refused by this kernel".into()),
            // The probe's refusal is the answer (EPERM under lockdown).
            Support::Unknown(why) if privileged => Support::No(format!("load refused: {why}")),
            unknown => unknown,
        };
        Self {
            release,
            missing_caps,
            offsets,
            rdonly_cast,
            task_btf,
            tracefs,
            ring_buffer,
            tracepoints,
            saved_registers,
            bpf_lsm,
            lsm_list: lsm_list.ok(),
            fentry,
            io_uring,
        }
    }

    pub fn privileged(&self) -> bool {
        self.missing_caps.is_empty()
    }

    /// Linux 5.8 or later: the ring buffer and the BTF the agent needs.
    pub fn kernel_supported(&self) -> bool {
        kernel_at_least(&self.release, 5, 8)
    }

    /// Whether `hooks` can see opens here, or why not. The trampoline hooks
    /// also need the saved registers, to tell how an open came in.
    pub fn usable(&self, hooks: ActiveHooks) -> Result<(), String> {
        let hook_needs_registers = || {
            if self.saved_registers.is_yes() {
                Ok(())
            } else {
                Err(format!(
                    "needs the saved user registers: {}",
                    self.saved_registers.detail()
                ))
            }
        };
        match hooks {
            ActiveHooks::Tracepoints => Ok(()),
            ActiveHooks::Fexit => {
                let Support::Yes(_) = self.fentry else {
                    return Err(format!("fentry/fexit: {}", self.fentry.detail()));
                };
                hook_needs_registers()?;
                let fs_internals = self.offsets.as_ref().is_ok_and(|o| {
                    o.filename_name != NO_OFFSET && o.open_flags_open_flag != NO_OFFSET
                });
                if !fs_internals {
                    return Err("this kernel's BTF lacks struct filename or open_flags".into());
                }
                Ok(())
            }
            ActiveHooks::Lsm => {
                let Support::Yes(_) = self.bpf_lsm else {
                    return Err(format!("BPF LSM: {}", self.bpf_lsm.detail()));
                };
                hook_needs_registers()
            }
        }
    }

    /// The hooks to try for `wanted`, best first: for `auto`, each usable
    /// trampoline hook and then the tracepoints; for one named, that one,
    /// or why it cannot be used.
    pub fn open_hooks(&self, wanted: OpenHooks) -> Result<Vec<ActiveHooks>, String> {
        let named = match wanted {
            OpenHooks::Auto => {
                let mut hooks: Vec<ActiveHooks> = [ActiveHooks::Fexit, ActiveHooks::Lsm]
                    .into_iter()
                    .filter(|&h| match self.usable(h) {
                        Ok(()) => true,
                        Err(why) => {
                            tracing::debug!("{} not used: {why}", h.opens());
                            false
                        }
                    })
                    .collect();
                hooks.push(ActiveHooks::Tracepoints);
                return Ok(hooks);
            }
            OpenHooks::Fexit => ActiveHooks::Fexit,
            OpenHooks::Lsm => ActiveHooks::Lsm,
            OpenHooks::Tracepoints => ActiveHooks::Tracepoints,
        };
        self.usable(named).map(|()| vec![named])
    }
}

impl Support {
    /// A yes/no probe's answer in words.
    fn described(self, yes: &str, no: &str) -> Self {
        match self {
            Self::Yes(_) => Self::Yes(yes.into()),
            Self::No(_) => Self::No(no.into()),
            unknown => unknown,
        }
    }
}

/// Capabilities the agent lacks; empty when it has them all.
fn missing_caps() -> Vec<Capability> {
    NEEDED_CAPS
        .iter()
        .copied()
        .filter(|c| !caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
        .collect()
}

/// The tracefs mount in use, if any.
fn tracefs_dir() -> Option<PathBuf> {
    TRACEFS_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("events").is_dir())
        .map(Path::to_path_buf)
}

/// Run `probe` when privileged: loading probe programs needs privileges,
/// and without them the answer is unknown, not a misleading "no".
fn probed(privileged: bool, probe: impl FnOnce() -> Result<bool, String>) -> Support {
    if !privileged {
        return Support::Unknown("probing needs root".into());
    }
    match probe() {
        Ok(true) => Support::Yes(String::new()),
        Ok(false) => Support::No(String::new()),
        Err(why) => Support::Unknown(format!("probe failed: {why}")),
    }
}

/// Where the active LSMs are listed.
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// BPF LSM: `bpf` among the active LSMs (elsewhere a program may load and
/// attach and yet never run) and LSM programs load.
fn probe_bpf_lsm(privileged: bool, list: &std::io::Result<String>) -> Support {
    if !privileged {
        return Support::Unknown("probing needs root".into());
    }
    let list = match list {
        Ok(list) if !lists_bpf(list) => {
            return Support::No(format!("`bpf` is not an active LSM ({})", list.trim()));
        }
        Ok(list) => list,
        Err(e) => {
            return Support::No(format!("cannot read {LSM_LIST}: {}", error_text(e)));
        }
    };
    match is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)) {
        Ok(true) => Support::Yes(format!("active ({})", list.trim())),
        Ok(false) => Support::No("program type refused".into()),
        Err(e) => Support::No(format!("load refused: {}", error_text(&e))),
    }
}

/// Whether `bpf` is in a list of active LSMs (`/sys/kernel/security/lsm`).
pub fn lists_bpf(lsm_list: &str) -> bool {
    lsm_list.split(',').any(|l| l.trim() == "bpf")
}

/// The io_uring submit tracepoint this kernel has (renamed in 5.19), from
/// tracefs, with the offset of its `opcode` field.
fn io_uring_tracepoint(tracefs: &Path) -> Option<IoUringTracepoint> {
    let Hook::TracePoint { category, names } = Program::IoUringSubmit.hook() else {
        return None;
    };
    names.iter().find_map(|&name| {
        let format = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(format).ok()?;
        Some(IoUringTracepoint {
            name,
            opcode_offset: field_offset(&text, "opcode")?,
        })
    })
}

/// The byte offset of `field` in a tracefs `format` description.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

/// `major.minor` of a release string such as `6.18.44-fc-v669`.
pub fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let ma = parts.next().and_then(|p| p.parse::<u32>().ok());
    let mi = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((ma, mi), (Some(a), Some(b)) if (a, b) >= (major, minor))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A kernel as Debian's 6.1 is: everything there.
    pub fn debian_6_1() -> KernelFeatures {
        let mut offsets = KernelOffsets::UNSET;
        offsets.regs_di = 112;
        offsets.filename_name = 0;
        offsets.open_flags_open_flag = 4;
        KernelFeatures {
            release: "6.1.0-56-cloud-amd64".into(),
            missing_caps: vec![],
            offsets: Ok(offsets),
            rdonly_cast: false,
            task_btf: true,
            tracefs: Some("/sys/kernel/tracing".into()),
            ring_buffer: Support::Yes("BPF_MAP_TYPE_RINGBUF".into()),
            tracepoints: Support::Yes("x".into()),
            saved_registers: Support::Yes("bpf_task_pt_regs".into()),
            bpf_lsm: Support::Yes("active".into()),
            lsm_list: Some("lockdown,capability,landlock,yama,apparmor,bpf".into()),
            fentry: Support::Yes("BPF trampolines load".into()),
            io_uring: None,
        }
    }

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.18.44-fc-v669", 5, 8));
        assert!(kernel_at_least("5.8.0", 5, 8));
        assert!(!kernel_at_least("5.4.0-150-generic", 5, 8));
        assert!(!kernel_at_least("garbage", 5, 8));
        assert!(kernel_at_least("10.0", 5, 8));
    }

    #[test]
    fn auto_prefers_fexit_then_lsm_then_tracepoints() {
        use ActiveHooks::*;
        let mut k = debian_6_1();
        assert_eq!(
            k.open_hooks(OpenHooks::Auto),
            Ok(vec![Fexit, Lsm, Tracepoints])
        );
        k.fentry = Support::No("refused by this kernel".into());
        assert_eq!(k.open_hooks(OpenHooks::Auto), Ok(vec![Lsm, Tracepoints]));
        let err = k.open_hooks(OpenHooks::Fexit).unwrap_err();
        assert!(err.contains("refused by this kernel"), "{err}");
        // No bpf_task_pt_regs (5.10): the trampoline hooks are not used.
        let mut k = debian_6_1();
        k.release = "5.10.0-30-amd64".into();
        k.saved_registers = Support::No("Linux < 5.15".into());
        assert_eq!(k.open_hooks(OpenHooks::Auto), Ok(vec![Tracepoints]));
        let err = k.open_hooks(OpenHooks::Lsm).unwrap_err();
        assert!(err.contains("saved user registers"), "{err}");
        assert_eq!(k.open_hooks(OpenHooks::Tracepoints), Ok(vec![Tracepoints]));
    }

    #[test]
    fn fexit_needs_the_fs_internals_in_btf() {
        let mut k = debian_6_1();
        if let Ok(o) = k.offsets.as_mut() {
            o.open_flags_open_flag = NO_OFFSET;
        }
        let err = k.usable(ActiveHooks::Fexit).unwrap_err();
        assert!(err.contains("open_flags"), "{err}");
    }

    #[test]
    fn tracefs_field_offsets() {
        let format = "name: io_uring_submit_req
ID: 2140
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;
\tfield:u8 opcode;\toffset:32;\tsize:1;\tsigned:0;
\tfield:__data_loc char[] op_str;\toffset:52;\tsize:4;\tsigned:0;
";
        assert_eq!(field_offset(format, "opcode"), Some(32));
        assert_eq!(field_offset(format, "req"), Some(16));
        assert_eq!(field_offset(format, "op_str"), Some(52));
        assert_eq!(field_offset(format, "missing"), None);
        assert_eq!(field_offset("garbage", "opcode"), None);
    }
}
