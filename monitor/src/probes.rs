//! Everything that touches the kernel: loading the object, choosing and
//! attaching the hooks, the watch map, the loss counter and decoding
//! ring-buffer records. The only `unsafe` of the agent lives here.

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{FExit, Lsm, RawTracePoint, TracePoint},
};

use std::{
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use crate::{env_names::EnvPattern, name_rules::CompiledRules, preflight};
use monitor_common::{
    CAPTURE_LSM_OPENS, COMM_LEN, DeniedOpenEvent, ENV_NAME_LEN, ENV_NAMES_MAX, ENV_SUFFIX_LEN,
    EnvironReadEvent, EventHeader, EventKind, ExecEvent, FileKey, ForkEvent, IoUringLayout,
    IoUringOpenEvent, KernelOffsets, NO_OFFSET, NameRule, NameRuleOpenEvent, OpenEvent,
    RULE_NAME_LEN, WalkedPath,
};
use tokio::io::{Interest, unix::AsyncFd};

/// The kernel object, built by build.rs for the BPF target.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/secretmon"));

/// The io_uring submit tracepoint, by kernel generation (5.19+, older).
const IO_URING_TRACEPOINTS: &[&str] = &["io_uring_submit_req", "io_uring_submit_sqe"];

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

/// The open-family hooks when a denied open's arguments come from enter
/// hooks (kernels before 5.15).
const OPEN_HOOKS_ENTER: &[(&str, &str, &str)] = &[
    ("sys_enter_openat", "syscalls", "sys_enter_openat"),
    ("sys_enter_open", "syscalls", "sys_enter_open"),
    ("sys_enter_openat2", "syscalls", "sys_enter_openat2"),
    ("sys_enter_creat", "syscalls", "sys_enter_creat"),
    ("sys_exit_openat", "syscalls", "sys_exit_openat"),
    ("sys_exit_open", "syscalls", "sys_exit_open"),
    ("sys_exit_openat2", "syscalls", "sys_exit_openat2"),
    ("sys_exit_creat", "syscalls", "sys_exit_creat"),
];

/// The open-family hooks when they come from the saved user registers:
/// exits only, half the hooks on every open.
const OPEN_HOOKS_REGS: &[(&str, &str, &str)] = &[
    ("sys_exit_openat_regs", "syscalls", "sys_exit_openat"),
    ("sys_exit_open_regs", "syscalls", "sys_exit_open"),
    ("sys_exit_openat2_regs", "syscalls", "sys_exit_openat2"),
    ("sys_exit_creat_regs", "syscalls", "sys_exit_creat"),
];

/// Whether this kernel lets tracepoint programs read a task's saved user
/// registers (`bpf_task_pt_regs`, 5.15+) and the architecture is one whose
/// register names the agent knows.
fn registers_readable(offsets: &KernelOffsets) -> bool {
    use aya::{programs::ProgramType, sys::BpfHelper};
    let supported = |h| aya::sys::is_helper_supported(ProgramType::TracePoint, h).unwrap_or(false);
    offsets.regs_di != NO_OFFSET
        && supported(BpfHelper::BPF_FUNC_task_pt_regs)
        && supported(BpfHelper::BPF_FUNC_get_current_task_btf)
}

/// The raw tracepoints of the object: (program name, tracepoint).
pub const RAW_TRACEPOINTS: &[(&str, &str)] = &[("sched_process_fork", "sched_process_fork")];

/// The tracepoints of the object: (program name, category, tracepoint).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

/// Which hooks see opens (`--opens`).
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
}

/// The kernel functions the fexit and LSM programs attach to.
const FEXIT_HOOK: &str = "do_filp_open";
const LSM_HOOK: &str = "file_open";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("--opens {hooks} is not available here: {why}")]
    Unavailable { hooks: String, why: String },
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("environment variable pattern {0:?} is empty or too long for the kernel filter")]
    EnvName(String),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching {category}:{name} failed")]
    Attach {
        category: &'static str,
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// The loaded, attached kernel side.
pub struct Probes {
    /// Hooks attached, io_uring's aside.
    pub hooks: usize,
    /// What sees opens.
    pub active: ActiveHooks,
    /// Denied opens' arguments come from saved registers, not enter hooks.
    pub from_registers: bool,
    /// The io_uring tracepoint attached, if this kernel has one.
    pub io_uring: Option<&'static str>,
    // Keeps programs and their links alive: dropping it detaches everything.
    _ebpf: Ebpf,
    watched: HashMap<MapData, FileKey, u32>,
    watched_env: HashMap<MapData, [u8; ENV_NAME_LEN], u8>,
    watched_env_suffix: HashMap<MapData, [u8; ENV_SUFFIX_LEN], u8>,
    lost: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
}

impl Probes {
    /// Load the object with this kernel's field offsets and attach every
    /// tracepoint. `ring_bytes` overrides the ring buffer size (a power of
    /// two multiple of the page size).
    pub fn attach(
        offsets: KernelOffsets,
        ring_bytes: Option<u32>,
        tracefs: &Path,
        name_rules: &CompiledRules,
        wanted: OpenHooks,
    ) -> Result<Self, ProbeError> {
        let io_uring = IO_URING_TRACEPOINTS.iter().find_map(|&name| {
            let format = tracefs.join("events/io_uring").join(name).join("format");
            let text = std::fs::read_to_string(format).ok()?;
            Some((name, field_offset(&text, "opcode")?))
        });
        let layout = IoUringLayout {
            opcode_offset: io_uring.map_or(u32::MAX, |(_, off)| off),
        };
        let mut loader = EbpfLoader::new();
        // Refusal reasons and statistics, not the per-instruction trace: that
        // can outgrow any log buffer, and before 6.4 a full log fails the load.
        loader.verifier_log_level(aya::VerifierLogLevel::STATS);
        loader.override_global("IO_URING", &layout, true);
        if let Some(bytes) = ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let mut ebpf = loader.load(OBJECT).map_err(ProbeError::Load)?;
        // Before any program runs.
        set_config(&mut ebpf, "OFFSETS", &offsets)?;
        set_config(&mut ebpf, "NAME_FILTER", &name_rules.filter)?;
        let from_registers = registers_readable(&offsets);
        let active = attach_open_hook(&mut ebpf, &offsets, from_registers, wanted)?;
        let open_hooks = match (active, from_registers) {
            (ActiveHooks::Fexit, _) => &[][..],
            (_, true) => OPEN_HOOKS_REGS,
            (_, false) => OPEN_HOOKS_ENTER,
        };
        for &(prog, category, name) in TRACEPOINTS.iter().chain(open_hooks) {
            attach_tracepoint(&mut ebpf, prog, category, name)?;
        }
        for &(prog, name) in RAW_TRACEPOINTS {
            let attach_err = |source| ProbeError::Attach {
                category: "raw_tp",
                name,
                source,
            };
            let program: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .ok_or(ProbeError::MissingProgram(prog))?
                .try_into()
                .map_err(attach_err)?;
            program
                .load()
                .and_then(|()| program.attach(name).map(drop))
                .map_err(attach_err)?;
        }
        // The trampoline hooks see io_uring opens themselves.
        let io_uring = io_uring.filter(|_| active == ActiveHooks::Tracepoints);
        if let Some((name, _)) = io_uring {
            attach_tracepoint(&mut ebpf, "io_uring_submit", "io_uring", name)?;
        }
        if active == ActiveHooks::Lsm {
            // From here the LSM hook reports successful opens and the exit
            // tracepoints only denials: one switch for both sides.
            set_config(&mut ebpf, "CAPTURE", &CAPTURE_LSM_OPENS)?;
        }
        let mut trie: LpmTrie<MapData, [u8; RULE_NAME_LEN], NameRule> =
            take_map(&mut ebpf, "NAME_RULES")?;
        for (bits, name, rule) in &name_rules.trie {
            trie.insert(&LpmKey::new(*bits, *name), rule, 0)
                .map_err(|source| ProbeError::Map {
                    name: "NAME_RULES",
                    source,
                })?;
        }
        let watched = take_map(&mut ebpf, "WATCHED")?;
        let watched_env = take_map(&mut ebpf, "WATCHED_ENV")?;
        let watched_env_suffix = take_map(&mut ebpf, "WATCHED_ENV_SUFFIX")?;
        let lost = take_map(&mut ebpf, "LOST")?;
        let events = take_map(&mut ebpf, "EVENTS")?;
        Ok(Self {
            _ebpf: ebpf,
            hooks: TRACEPOINTS.len()
                + open_hooks.len()
                + RAW_TRACEPOINTS.len()
                + usize::from(active != ActiveHooks::Tracepoints),
            active,
            from_registers,
            io_uring: io_uring.map(|(name, _)| name),
            watched,
            watched_env,
            watched_env_suffix,
            lost,
            events: Some(events),
        })
    }

    /// Report opens of `key` from now on, tagged with `id`.
    pub fn watch(&mut self, key: FileKey, id: u32) -> Result<(), ProbeError> {
        self.watched
            .insert(&key, &id, 0)
            .map_err(|source| ProbeError::Map {
                name: "WATCHED",
                source,
            })
    }

    /// Stop reporting opens of `key` (a deleted or rotated-away file).
    pub fn unwatch(&mut self, key: &FileKey) -> Result<(), ProbeError> {
        self.watched.remove(key).map_err(|source| ProbeError::Map {
            name: "WATCHED",
            source,
        })
    }

    /// Report the *name* of environment variable `name` at exec: an exact
    /// name, or `*_SUFFIX` for every name ending in `_SUFFIX` (one or two
    /// `_`-separated words). Names that do not fit the kernel's fixed
    /// buffers are refused.
    pub fn watch_env(&mut self, pattern: &EnvPattern) -> Result<(), ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "WATCHED_ENV",
            source,
        };
        match pattern {
            EnvPattern::Exact(name) => {
                let key = padded::<ENV_NAME_LEN>(name).ok_or(ProbeError::EnvName(name.clone()))?;
                self.watched_env.insert(&key, &1, 0).map_err(map_err)
            }
            EnvPattern::Suffix(suffix) => {
                let key =
                    padded::<ENV_SUFFIX_LEN>(suffix).ok_or(ProbeError::EnvName(suffix.clone()))?;
                self.watched_env_suffix.insert(&key, &1, 0).map_err(map_err)
            }
        }
    }

    /// The ring buffer, handed over once to the reader, registered with
    /// the tokio reactor so the reader wakes when records arrive. Must be
    /// called within a tokio runtime.
    pub fn take_events(&mut self) -> Option<std::io::Result<AsyncFd<RingBuf<MapData>>>> {
        let ring = self.events.take()?;
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // until the RingBuf, and so the AsyncFd that owns it, is dropped.
        Some(
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| e.into()),
        )
    }

    /// Events dropped so far because the ring buffer was full, all CPUs.
    pub fn lost(&self) -> Result<u64, ProbeError> {
        let per_cpu = self.lost.get(&0, 0).map_err(|source| ProbeError::Map {
            name: "LOST",
            source,
        })?;
        Ok(per_cpu.iter().sum())
    }
}

/// `s` NUL-padded to `N` bytes, if it fits with room for no NUL inside.
fn padded<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() >= N || bytes.contains(&0) {
        return None;
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Some(out)
}

/// Attach the open hook `wanted` asks for: the first of fexit and LSM that
/// loads for `Auto` (tracepoints when neither does), or exactly the one
/// named, failing with why it cannot be used.
fn attach_open_hook(
    ebpf: &mut Ebpf,
    offsets: &KernelOffsets,
    from_registers: bool,
    wanted: OpenHooks,
) -> Result<ActiveHooks, ProbeError> {
    let candidates: &[ActiveHooks] = match wanted {
        OpenHooks::Auto => &[ActiveHooks::Fexit, ActiveHooks::Lsm],
        OpenHooks::Fexit => &[ActiveHooks::Fexit],
        OpenHooks::Lsm => &[ActiveHooks::Lsm],
        OpenHooks::Tracepoints => return Ok(ActiveHooks::Tracepoints),
    };
    let mut why = String::new();
    for &hooks in candidates {
        match attach_trampoline(ebpf, offsets, from_registers, hooks) {
            Ok(()) => return Ok(hooks),
            Err(reason) => {
                tracing::info!("{} not used: {reason}", hooks.opens());
                why = reason;
            }
        }
    }
    if wanted == OpenHooks::Auto {
        return Ok(ActiveHooks::Tracepoints);
    }
    let hooks = clap::ValueEnum::to_possible_value(&wanted)
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    Err(ProbeError::Unavailable { hooks, why })
}

/// Load and attach the fexit or LSM program, or say why not.
fn attach_trampoline(
    ebpf: &mut Ebpf,
    offsets: &KernelOffsets,
    from_registers: bool,
    hooks: ActiveHooks,
) -> Result<(), String> {
    // The hooks tell how an open came in from the saved registers.
    if !from_registers || offsets.regs_orig_ax == NO_OFFSET {
        return Err("needs bpf_task_pt_regs (Linux 5.15+) on x86_64".into());
    }
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    let result = match hooks {
        ActiveHooks::Fexit => {
            if offsets.filename_name == NO_OFFSET || offsets.open_flags_open_flag == NO_OFFSET {
                return Err("this kernel's BTF lacks struct filename or open_flags".into());
            }
            let program: &mut FExit = program(ebpf, "do_filp_open_exit")?;
            program
                .load(FEXIT_HOOK, &btf)
                .and_then(|()| program.attach().map(drop))
        }
        ActiveHooks::Lsm => {
            // Without `bpf` among the active LSMs the program may load and
            // attach and yet never run: opens would go unseen.
            bpf_lsm_active()?;
            let program: &mut Lsm = program(ebpf, LSM_HOOK)?;
            return program
                .load(LSM_HOOK, &btf)
                .and_then(|()| program.attach().map(drop))
                .map_err(|e| {
                    format!(
                        "{}; fix: {}",
                        load_refusal(hooks, e),
                        preflight::LsmGap::Refused.fix()
                    )
                });
        }
        ActiveHooks::Tracepoints => Ok(()),
    };
    result.map_err(|e| load_refusal(hooks, e))
}

/// Why the kernel refused a program, from its verifier log's verdict.
fn load_refusal(hooks: ActiveHooks, e: aya::programs::ProgramError) -> String {
    match e {
        // The verifier's log is long and, on a refusal, empty: its last line
        // says why when there is one.
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!("verifier log of the {} hook:\n{log}", hooks.opens());
            // The log ends with statistics; the refusal is the line before.
            let stats = ["processed ", "verification time", "stack depth"];
            let reason = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !stats.iter().any(|s| l.starts_with(s)));
            match reason {
                Some(reason) => format!("BPF_PROG_LOAD: {io_error} (verifier: {reason})"),
                None => format!("BPF_PROG_LOAD: {io_error}"),
            }
        }
        e => crate::errors::error_text(&e),
    }
}

/// Whether `bpf` is among the active LSMs: the reason and fix `check`
/// gives when it is not.
fn bpf_lsm_active() -> Result<(), String> {
    preflight::bpf_lsm_listed().map_err(|(gap, why)| format!("{why}; fix: {}", gap.fix()))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .map_err(|e| crate::errors::error_text(&e))
}

/// Write `value` into the one-entry array map `name`. Borrowed, not taken:
/// programs loaded later refer to the map by the fd the object keeps.
fn set_config<T: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    value: &T,
) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    Array::<_, T>::try_from(map)
        .and_then(|mut a| a.set(0, value, 0))
        .map_err(|source| ProbeError::Map { name, source })
}

/// Load program `prog` and attach it to tracepoint `category:name`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &'static str,
    category: &'static str,
    name: &'static str,
) -> Result<(), ProbeError> {
    let attach_err = |source| ProbeError::Attach {
        category,
        name,
        source,
    };
    let program: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or(ProbeError::MissingProgram(prog))?
        .try_into()
        .map_err(attach_err)?;
    program
        .load()
        .and_then(|()| program.attach(category, name).map(drop))
        .map_err(attach_err)?;
    tracing::debug!("attached {prog} to {category}:{name}");
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// A decoded exec.
#[derive(Debug, Clone)]
pub struct Exec {
    pub header: EventHeader,
    pub filename: Vec<u8>,
    /// argv, lossily decoded; may hold secrets until redacted.
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// Names of watched environment variables (never values).
    pub env_names: Vec<String>,
    pub env_truncated: bool,
}

/// A decoded name-rule match.
#[derive(Debug, Clone)]
pub struct NameRuleOpen {
    pub header: EventHeader,
    pub key: FileKey,
    pub flags: u32,
    /// The path in the opener's mount namespace, walked by the kernel.
    pub path: PathBuf,
    /// The walk stopped short or cut a name: `path` is not the whole path.
    pub truncated: bool,
    /// How the open reached the kernel ([`crate::event::open_via`]).
    pub via: &'static str,
}

/// A decoded denied open.
#[derive(Debug, Clone)]
pub struct DeniedOpen {
    pub header: EventHeader,
    pub flags: u32,
    /// Positive errno.
    pub errno: i32,
    pub dfd: i32,
    pub filename: Vec<u8>,
    /// The directory a relative `filename` is relative to, walked by the
    /// kernel at the time of the open; `None` for an absolute one or when
    /// the walk fell short.
    pub base: Option<PathBuf>,
}

/// A decoded ring-buffer record.
#[derive(Debug, Clone)]
pub enum KernelEvent {
    Open(OpenEvent),
    Exec(Exec),
    DeniedOpen(DeniedOpen),
    EnvironRead {
        header: EventHeader,
        target_pid: u32,
    },
    IoUringOpen {
        header: EventHeader,
        opcode: u32,
    },
    NameRuleOpen(NameRuleOpen),
    Exit(EventHeader),
    /// `header` is the parent.
    Fork {
        header: EventHeader,
        child_pid: u32,
    },
}

/// Decode one record. `None` for a record too short for its kind or of an
/// unknown kind: a mismatched object, never trusted blindly.
pub fn decode(record: &[u8]) -> Option<KernelEvent> {
    let header: EventHeader = read_record(record)?;
    match EventKind::from_u32(header.kind)? {
        EventKind::Open => read_record(record).map(KernelEvent::Open),
        EventKind::Exec => {
            let ev: ExecEvent = read_record(record)?;
            let args_len = (ev.args_len as usize).min(ev.args.len());
            let mut args: Vec<String> = ev.args[..args_len]
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // argv ends with a NUL, which leaves one empty piece.
            if ev.args[..args_len].last() == Some(&0) {
                args.pop();
            }
            let env_count = (ev.env_count as usize).min(ENV_NAMES_MAX);
            let env_names = ev.env_names[..env_count]
                .iter()
                .map(|n| nul_terminated(n))
                .collect();
            Some(KernelEvent::Exec(Exec {
                header: ev.header,
                filename: bounded(&ev.filename, ev.filename_len).to_vec(),
                args,
                args_truncated: ev.args_truncated != 0,
                env_names,
                env_truncated: ev.env_truncated != 0,
            }))
        }
        EventKind::DeniedOpen => {
            let ev: DeniedOpenEvent = read_record(record)?;
            let walked = ev.base.depth > 0 && ev.base.truncated == 0;
            Some(KernelEvent::DeniedOpen(DeniedOpen {
                header: ev.header,
                flags: ev.flags,
                errno: -ev.ret,
                dfd: ev.dfd,
                filename: bounded(&ev.filename, ev.filename_len).to_vec(),
                base: walked.then(|| joined(&ev.base)),
            }))
        }
        EventKind::NameRuleOpen => {
            let ev: NameRuleOpenEvent = read_record(record)?;
            Some(KernelEvent::NameRuleOpen(NameRuleOpen {
                header: ev.header,
                key: ev.key,
                flags: ev.flags,
                path: joined(&ev.path),
                truncated: ev.path.truncated != 0,
                via: crate::event::open_via(ev.via),
            }))
        }
        EventKind::IoUringOpen => {
            let ev: IoUringOpenEvent = read_record(record)?;
            Some(KernelEvent::IoUringOpen {
                header: ev.header,
                opcode: ev.opcode,
            })
        }
        EventKind::EnvironRead => {
            let ev: EnvironReadEvent = read_record(record)?;
            Some(KernelEvent::EnvironRead {
                header: ev.header,
                target_pid: ev.target_pid,
            })
        }
        EventKind::Exit => Some(KernelEvent::Exit(header)),
        EventKind::Fork => {
            let ev: ForkEvent = read_record(record)?;
            Some(KernelEvent::Fork {
                header: ev.header,
                child_pid: ev.child_pid,
            })
        }
    }
}

/// Copy a `T` out of a record that may be shorter than `T` or unaligned.
fn read_record<T: Copy>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, `read_unaligned` copes with any
    // alignment, and every `T` used here is a #[repr(C)] struct of integers
    // and byte arrays, for which any bit pattern is valid.
    Some(unsafe { record.as_ptr().cast::<T>().read_unaligned() })
}

/// `comm` up to its first NUL, lossily as UTF-8.
pub fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    nul_terminated(comm)
}

fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A kernel-walked path as an absolute path, outermost first.
fn joined(p: &WalkedPath) -> PathBuf {
    let depth = (p.depth as usize).min(p.components.len());
    let mut path = PathBuf::from("/");
    for c in p.components[..depth].iter().rev() {
        let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
        path.push(std::ffi::OsStr::from_bytes(&c[..end]));
    }
    path
}

/// The first `len` bytes of `buf`, never past its end.
fn bounded(buf: &[u8], len: u32) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid: 42,
            tid: 43,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            loginuid: 1000,
            tty: 1,
            boot_ns: 5,
            start_ns: 1,
            cgroup_id: 1,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value in a test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_open() {
        let ev = OpenEvent {
            header: header(EventKind::Open),
            key: FileKey {
                dev: 0xfe00001,
                ino: 77,
            },
            flags: 0,
            ret: 3,
            via: monitor_common::VIA_SYSCALL,
            _pad: 0,
        };
        match decode(&bytes_of(&ev)) {
            Some(KernelEvent::Open(o)) => {
                assert_eq!(o.key, ev.key);
                assert_eq!(o.header.pid, 42);
                assert_eq!(comm_str(&o.header.comm), "cat");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_exec_and_bounds_filename() {
        let mut ev = ExecEvent {
            header: header(EventKind::Exec),
            old_pid: 42,
            filename_len: 9999,
            filename: [b'a'; monitor_common::FILENAME_LEN],
            args_len: 9999,
            args_truncated: 1,
            args: [b'x'; monitor_common::ARGS_LEN],
            env_count: 99,
            env_truncated: 0,
            env_names: [[0; ENV_NAME_LEN]; ENV_NAMES_MAX],
        };
        ev.filename[..12].copy_from_slice(b"/usr/bin/cat");
        let Some(KernelEvent::Exec(exec)) = decode(&bytes_of(&ev)) else {
            panic!("not an exec");
        };
        assert_eq!(exec.filename.len(), monitor_common::FILENAME_LEN);
        assert_eq!(exec.args.len(), 1);
        assert!(exec.args_truncated);
        assert_eq!(exec.env_names.len(), ENV_NAMES_MAX);

        ev.filename_len = 12;
        ev.args[..13].copy_from_slice(b"cat\0-n\0file\0\0");
        ev.args_len = 12;
        ev.env_count = 1;
        ev.env_names[0][..12].copy_from_slice(b"GITHUB_TOKEN");
        let Some(KernelEvent::Exec(exec)) = decode(&bytes_of(&ev)) else {
            panic!("not an exec");
        };
        assert_eq!(exec.filename, b"/usr/bin/cat");
        assert_eq!(exec.args, ["cat", "-n", "file"]);
        assert_eq!(exec.env_names, ["GITHUB_TOKEN"]);
    }

    #[test]
    fn decodes_denied_open() {
        let mut ev = DeniedOpenEvent {
            header: header(EventKind::DeniedOpen),
            flags: 0,
            ret: -13,
            dfd: -100,
            filename_len: 4,
            filename: [0; monitor_common::FILENAME_LEN],
            base: empty_path(),
        };
        ev.filename[..4].copy_from_slice(b"/etc");
        let Some(KernelEvent::DeniedOpen(d)) = decode(&bytes_of(&ev)) else {
            panic!("not a denied open");
        };
        assert_eq!(
            (d.errno, d.dfd, d.filename.as_slice()),
            (13, -100, &b"/etc"[..])
        );
        assert_eq!(d.base, None);
        ev.base.depth = 1;
        ev.base.components[0][..3].copy_from_slice(b"srv");
        let Some(KernelEvent::DeniedOpen(d)) = decode(&bytes_of(&ev)) else {
            panic!("not a denied open");
        };
        assert_eq!(d.base, Some(PathBuf::from("/srv")));
        ev.base.truncated = 1;
        let Some(KernelEvent::DeniedOpen(d)) = decode(&bytes_of(&ev)) else {
            panic!("not a denied open");
        };
        assert_eq!(d.base, None, "a cut walk is not trusted");
    }

    fn empty_path() -> WalkedPath {
        WalkedPath {
            depth: 0,
            truncated: 0,
            components: [[0; monitor_common::COMPONENT_LEN]; monitor_common::PATH_COMPONENTS],
        }
    }

    #[test]
    fn name_rule_paths_are_joined_outermost_first() {
        let mut ev = NameRuleOpenEvent {
            header: header(EventKind::NameRuleOpen),
            key: FileKey { dev: 1, ino: 2 },
            flags: 0,
            ret: 3,
            rule: 0,
            via: monitor_common::VIA_IO_URING,
            path: empty_path(),
        };
        ev.path.depth = 3;
        for (i, c) in ["credentials", ".aws", "ana"].iter().enumerate() {
            ev.path.components[i][..c.len()].copy_from_slice(c.as_bytes());
        }
        let Some(KernelEvent::NameRuleOpen(n)) = decode(&bytes_of(&ev)) else {
            panic!("not a name-rule open");
        };
        assert_eq!(n.path, PathBuf::from("/ana/.aws/credentials"));
        assert_eq!(n.via, "io_uring");
        ev.path.depth = 99;
        assert!(decode(&bytes_of(&ev)).is_some(), "depth is bounded");
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

    #[test]
    fn env_keys_are_padded_and_bounded() {
        assert_eq!(&padded::<8>("AB").unwrap()[..3], b"AB\0");
        assert!(padded::<8>("12345678").is_none());
        assert!(padded::<8>("").is_none());
        assert!(padded::<8>("A\0B").is_none());
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let ev = OpenEvent {
            header: header(EventKind::Open),
            key: FileKey { dev: 1, ino: 2 },
            flags: 0,
            ret: 3,
            via: monitor_common::VIA_SYSCALL,
            _pad: 0,
        };
        let bytes = bytes_of(&ev);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(&[0u8; 3]).is_none());
        let mut unknown = header(EventKind::Exit);
        unknown.kind = 99;
        assert!(decode(&bytes_of(&unknown)).is_none());
    }

    #[test]
    fn comm_without_nul_is_whole() {
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
