//! Loading the kernel object and attaching its programs, and the agent's
//! handles on its maps: the watch lists, the ring buffer, the loss and
//! error counters. The only `unsafe` of the agent lives here. What the
//! records mean is `monitor_common`'s (the wire format); which hooks to use
//! is `features`'.

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{FExit, Lsm, ProgramError, RawTracePoint, TracePoint},
};
use monitor_common::{
    CAPTURE_LSM_OPENS, ENV_NAME_LEN, ENV_SUFFIX_LEN, FileKey, IoUringLayout, NameRule,
    RULE_NAME_LEN,
    env_name::EnvFilter,
    names::{Hook, Program, maps},
    user::padded,
    watched_inode_bit,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    env_names::EnvPattern,
    features::{ActiveHooks, KernelFeatures, OpenHooks},
    name_rules::CompiledRules,
    preflight,
};

/// The kernel object, built by build.rs for the BPF target.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/secretmon"));

/// The open-family hooks when a denied open's arguments come from enter
/// hooks (kernels before 5.15).
const OPEN_HOOKS_ENTER: &[Program] = &[
    Program::SysEnterOpenat,
    Program::SysEnterOpen,
    Program::SysEnterOpenat2,
    Program::SysEnterCreat,
    Program::SysExitOpenat,
    Program::SysExitOpen,
    Program::SysExitOpenat2,
    Program::SysExitCreat,
];

/// The open-family hooks when they come from the saved user registers:
/// exits only, half the hooks on every open.
const OPEN_HOOKS_REGS: &[Program] = &[
    Program::SysExitOpenatRegs,
    Program::SysExitOpenRegs,
    Program::SysExitOpenat2Regs,
    Program::SysExitCreatRegs,
];

/// Opens by file handle, which neither the path-open tracepoints nor
/// `do_filp_open` see: attached unless the LSM hook sees opens.
const HANDLE_OPEN_HOOKS: &[Program] = &[Program::SysExitOpenByHandleAt];

/// Process lifecycle: always attached.
const PROCESS_HOOKS: &[Program] = &[
    Program::SchedProcessExec,
    Program::SchedProcessExit,
    Program::SchedProcessFork,
];

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
    #[error("the watch map is full")]
    WatchMapFull,
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching {program} failed")]
    Attach {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("kernel BTF")]
    Btf(#[source] aya::BtfError),
}

/// The loaded, attached kernel side.
pub struct Probes {
    /// Hooks attached.
    pub hooks: usize,
    /// What sees opens.
    pub active: ActiveHooks,
    /// Denied opens' arguments come from saved registers, not enter hooks.
    pub from_registers: bool,
    /// The io_uring tracepoint attached (with `--opens tracepoints`), if
    /// this kernel has one.
    pub io_uring: Option<&'static str>,
    // Keeps programs and their links alive: dropping it detaches everything.
    _ebpf: Ebpf,
    watched: HashMap<MapData, FileKey, u32>,
    watched_inodes: Array<MapData, u64>,
    watched_env: HashMap<MapData, [u8; ENV_NAME_LEN], u8>,
    watched_env_suffix: HashMap<MapData, [u8; ENV_SUFFIX_LEN], u8>,
    /// What `env_filter_map` holds: the pre-test of both maps above.
    env_filter: EnvFilter,
    env_filter_map: Array<MapData, EnvFilter>,
    lost: Array<MapData, u64>,
    errors: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
}

impl Probes {
    /// Load the object for this kernel and attach its programs, with the
    /// open hooks `wanted` asks for. `ring_bytes` is the ring buffer's size
    /// (a power of two multiple of the page size); `watch_entries` sizes the
    /// watch map.
    ///
    /// The exec program's environment scan through `envp` is tried where
    /// the kernel is recent enough to be likely to verify it (6.2+, with
    /// `bpf_rdonly_cast`); if the exec program is refused, the object is
    /// loaded again with the scan that reads entry by entry.
    pub fn attach(
        kernel: &KernelFeatures,
        ring_bytes: u32,
        watch_entries: u32,
        name_rules: &CompiledRules,
        wanted: OpenHooks,
    ) -> Result<Self, ProbeError> {
        let load = |env_from_envp| {
            Self::load(
                kernel,
                ring_bytes,
                watch_entries,
                name_rules,
                wanted,
                env_from_envp,
            )
        };
        if !kernel.rdonly_cast {
            return load(false);
        }
        match load(true) {
            Err(ProbeError::Attach { program, source })
                if program == Program::SchedProcessExec.name() =>
            {
                tracing::warn!(
                    "the exec program's environment scan through envp was refused ({}); \
                     reading the environment entry by entry instead",
                    source
                );
                load(false)
            }
            loaded => loaded,
        }
    }

    fn load(
        kernel: &KernelFeatures,
        ring_bytes: u32,
        watch_entries: u32,
        name_rules: &CompiledRules,
        wanted: OpenHooks,
        env_from_envp: bool,
    ) -> Result<Self, ProbeError> {
        let offsets = kernel
            .offsets
            .as_ref()
            .map_err(|e| ProbeError::Unavailable {
                hooks: "any".into(),
                why: e.to_string(),
            })?;
        let candidates = kernel
            .open_hooks(wanted)
            .map_err(|why| unavailable(kernel, wanted, why))?;
        let layout = IoUringLayout {
            opcode_offset: kernel.io_uring.map_or(u32::MAX, |t| t.opcode_offset),
        };
        let mut loader = EbpfLoader::new();
        // Refusal reasons and statistics, not the per-instruction trace: that
        // can outgrow any log buffer, and before 6.4 a full log fails the load.
        loader.verifier_log_level(aya::VerifierLogLevel::STATS);
        // Read-only globals: the verifier knows their values.
        loader.override_global(maps::OFFSETS, offsets, true);
        loader.override_global(maps::NAME_FILTER, &name_rules.filter, true);
        loader.override_global(maps::IO_URING, &layout, true);
        let rdonly_cast = u32::from(kernel.rdonly_cast);
        loader.override_global(maps::HAS_RDONLY_CAST, &rdonly_cast, true);
        let task_btf = u32::from(kernel.task_btf);
        loader.override_global(maps::HAS_TASK_BTF, &task_btf, true);
        let env_from_envp = u32::from(env_from_envp);
        loader.override_global(maps::ENV_FROM_ENVP, &env_from_envp, true);
        // Woken at each eighth of the ring, the reader has 7/8 of it left
        // for what arrives while it wakes up; it polls on a timer besides.
        let wake_up_bytes = u64::from(ring_bytes / 8);
        loader.override_global(maps::WAKE_UP_BYTES, &wake_up_bytes, true);
        loader.map_max_entries(maps::EVENTS, ring_bytes);
        loader.map_max_entries(maps::WATCHED, watch_entries);
        let mut ebpf = loader.load(OBJECT).map_err(ProbeError::Load)?;
        let btf = Btf::from_sys_fs().map_err(ProbeError::Btf)?;
        let from_registers = kernel.saved_registers.is_yes();
        let active = attach_open_hook(&mut ebpf, &btf, &candidates)
            .map_err(|why| unavailable(kernel, wanted, why))?;
        let open_hooks = match (active, from_registers) {
            (ActiveHooks::Fexit, _) => &[][..],
            (_, true) => OPEN_HOOKS_REGS,
            (_, false) => OPEN_HOOKS_ENTER,
        };
        let handle_hooks = match active {
            ActiveHooks::Lsm => &[][..],
            ActiveHooks::Fexit | ActiveHooks::Tracepoints => HANDLE_OPEN_HOOKS,
        };
        for &program in PROCESS_HOOKS.iter().chain(open_hooks).chain(handle_hooks) {
            attach(&mut ebpf, program, None, &btf)?;
        }
        // The trampoline hooks see io_uring opens themselves.
        let io_uring = kernel
            .io_uring
            .filter(|_| active == ActiveHooks::Tracepoints);
        if let Some(tp) = io_uring {
            attach(&mut ebpf, Program::IoUringSubmit, Some(tp.name), &btf)?;
        }
        if active == ActiveHooks::Lsm {
            // From here the LSM hook reports successful opens and the exit
            // tracepoints only denials: one switch for both sides.
            set_config(&mut ebpf, maps::CAPTURE, &CAPTURE_LSM_OPENS)?;
        }
        let mut trie: LpmTrie<MapData, [u8; RULE_NAME_LEN], NameRule> =
            take_map(&mut ebpf, maps::NAME_RULES)?;
        for (bits, name, rule) in &name_rules.trie {
            trie.insert(&LpmKey::new(*bits, *name), rule, 0)
                .map_err(|source| ProbeError::Map {
                    name: maps::NAME_RULES,
                    source,
                })?;
        }
        Ok(Self {
            hooks: PROCESS_HOOKS.len()
                + open_hooks.len()
                + handle_hooks.len()
                + usize::from(active != ActiveHooks::Tracepoints)
                + usize::from(io_uring.is_some()),
            active,
            from_registers,
            io_uring: io_uring.map(|t| t.name),
            watched: take_map(&mut ebpf, maps::WATCHED)?,
            watched_inodes: take_map(&mut ebpf, maps::WATCHED_INODES)?,
            watched_env: take_map(&mut ebpf, maps::WATCHED_ENV)?,
            watched_env_suffix: take_map(&mut ebpf, maps::WATCHED_ENV_SUFFIX)?,
            env_filter: EnvFilter::EMPTY,
            env_filter_map: take_map(&mut ebpf, maps::ENV_FILTER)?,
            lost: take_map(&mut ebpf, maps::LOST)?,
            errors: take_map(&mut ebpf, maps::ERRORS)?,
            events: Some(take_map(&mut ebpf, maps::EVENTS)?),
            _ebpf: ebpf,
        })
    }

    /// Report opens of `key` from now on, tagged with `id`.
    pub fn watch(&mut self, key: FileKey, id: u32) -> Result<(), ProbeError> {
        // The filter first: the kernel looks in the map only past it.
        let (word, bit) = watched_inode_bit(key.ino);
        let filter_err = |source| ProbeError::Map {
            name: maps::WATCHED_INODES,
            source,
        };
        let bits = self.watched_inodes.get(&word, 0).map_err(filter_err)?;
        if bits & bit == 0 {
            self.watched_inodes
                .set(word, &(bits | bit), 0)
                .map_err(filter_err)?;
        }
        self.watched
            .insert(&key, &id, 0)
            .map_err(|source| match &source {
                aya::maps::MapError::SyscallError(e)
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    ProbeError::WatchMapFull
                }
                _ => ProbeError::Map {
                    name: maps::WATCHED,
                    source,
                },
            })
    }

    /// Stop reporting opens of `key` (a deleted or rotated-away file).
    pub fn unwatch(&mut self, key: &FileKey) -> Result<(), ProbeError> {
        self.watched.remove(key).map_err(|source| ProbeError::Map {
            name: maps::WATCHED,
            source,
        })
    }

    /// Report the *name* of environment variable `name` at exec: an exact
    /// name, or `*_SUFFIX` for every name ending in `_SUFFIX` (one or two
    /// `_`-separated words). Names that do not fit the kernel's fixed
    /// buffers are refused.
    pub fn watch_env(&mut self, pattern: &EnvPattern) -> Result<(), ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: maps::WATCHED_ENV,
            source,
        };
        let mut filter = self.env_filter;
        match pattern {
            EnvPattern::Exact(name) => {
                let key = padded::<ENV_NAME_LEN>(name).ok_or(ProbeError::EnvName(name.clone()))?;
                self.watched_env.insert(&key, &1, 0).map_err(map_err)?;
                filter.add_name(name.as_bytes());
            }
            EnvPattern::Suffix(suffix) => {
                let key =
                    padded::<ENV_SUFFIX_LEN>(suffix).ok_or(ProbeError::EnvName(suffix.clone()))?;
                self.watched_env_suffix
                    .insert(&key, &1, 0)
                    .map_err(map_err)?;
                filter.add_suffix(suffix.as_bytes());
            }
        }
        // After the maps: the kernel side may pass a name only once its
        // entry is there.
        self.env_filter_map
            .set(0, &filter, 0)
            .map_err(|source| ProbeError::Map {
                name: maps::ENV_FILTER,
                source,
            })?;
        self.env_filter = filter;
        Ok(())
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

    /// What the kernel side counted so far, all CPUs summed.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let mut errors = Vec::new();
        for program in Program::ALL {
            let n = per_cpu_sum(&self.errors, maps::ERRORS, program as u32)?;
            if n > 0 {
                errors.push((program, n));
            }
        }
        Ok(KernelCounters {
            lost: self.lost()?,
            errors,
        })
    }

    /// Each loaded program's run time and run count, which the kernel
    /// counts while `kernel.bpf_stats_enabled` is 1.
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        self._ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_string(), info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// Events dropped so far because the ring buffer was full, all CPUs:
    /// one map read, cheap enough to look at often during a drain.
    pub fn lost(&self) -> Result<u64, ProbeError> {
        self.lost.get(&0, 0).map_err(|source| ProbeError::Map {
            name: maps::LOST,
            source,
        })
    }
}

/// Entry `index` of a per-CPU counter map, summed over CPUs.
fn per_cpu_sum(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    index: u32,
) -> Result<u64, ProbeError> {
    map.get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum::<u64>())
        .map_err(|source| ProbeError::Map { name, source })
}

/// The kernel side's own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events dropped because the ring buffer was full.
    pub lost: u64,
    /// Failed kernel reads and map updates, for each program that had any.
    pub errors: Vec<(Program, u64)>,
}

impl KernelCounters {
    /// Errors of all programs.
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }

    /// Errors by program name, as the `agent` events carry them.
    pub fn errors_by_program(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.errors.iter().map(|&(p, n)| (p.name(), n)).collect()
    }
}

/// `wanted` cannot see opens here, and why; for BPF LSM with the fix
/// `check` gives.
fn unavailable(kernel: &KernelFeatures, wanted: OpenHooks, why: String) -> ProbeError {
    let why = match wanted {
        OpenHooks::Lsm => format!("{why}; fix: {}", preflight::lsm_fix(kernel)),
        _ => why,
    };
    ProbeError::Unavailable {
        hooks: clap::ValueEnum::to_possible_value(&wanted)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default(),
        why,
    }
}

/// Attach the first of `candidates` that loads: a trampoline hook (fexit or
/// LSM), or nothing for the tracepoints. For `auto` a refusal falls through
/// to the next; for a hook named on the command line it is the error (why).
fn attach_open_hook(
    ebpf: &mut Ebpf,
    btf: &Btf,
    candidates: &[ActiveHooks],
) -> Result<ActiveHooks, String> {
    let mut why = String::new();
    for &hooks in candidates {
        let program = match hooks {
            ActiveHooks::Tracepoints => return Ok(hooks),
            ActiveHooks::Fexit => Program::DoFilpOpenExit,
            ActiveHooks::Lsm => Program::FileOpen,
        };
        match attach(ebpf, program, None, btf) {
            Ok(()) => return Ok(hooks),
            Err(e) => {
                why = refusal(&e);
                tracing::info!("{} not used: {why}", hooks.opens());
            }
        }
    }
    Err(why)
}

/// Why a program did not load, in one line: the verifier's log is long
/// and, on a refusal, its last line before the statistics says why.
fn refusal(e: &ProbeError) -> String {
    let ProbeError::Attach {
        source: ProgramError::LoadError {
            io_error,
            verifier_log,
        },
        program,
    } = e
    else {
        return crate::errors::error_text(e);
    };
    let log = verifier_log.to_string();
    tracing::debug!("verifier log of {program}:\n{log}");
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

/// Load `program` and attach it to its hook; `tracepoint` picks one of a
/// tracepoint program's names.
fn attach(
    ebpf: &mut Ebpf,
    program: Program,
    tracepoint: Option<&'static str>,
    btf: &Btf,
) -> Result<(), ProbeError> {
    let name = program.name();
    let attach_err = |source| ProbeError::Attach {
        program: name,
        source,
    };
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?;
    match program.hook() {
        Hook::TracePoint { category, names } => {
            let tp_name = tracepoint.unwrap_or(names[0]);
            let p: &mut TracePoint = prog.try_into().map_err(attach_err)?;
            p.load()
                .and_then(|()| p.attach(category, tp_name).map(drop))
                .map_err(attach_err)?;
        }
        Hook::RawTracePoint(tp_name) => {
            let p: &mut RawTracePoint = prog.try_into().map_err(attach_err)?;
            p.load()
                .and_then(|()| p.attach(tp_name).map(drop))
                .map_err(attach_err)?;
        }
        Hook::Fexit(function) => {
            let p: &mut FExit = prog.try_into().map_err(attach_err)?;
            p.load(function, btf)
                .and_then(|()| p.attach().map(drop))
                .map_err(attach_err)?;
        }
        Hook::Lsm(hook) => {
            let p: &mut Lsm = prog.try_into().map_err(attach_err)?;
            p.load(hook, btf)
                .and_then(|()| p.attach().map(drop))
                .map_err(attach_err)?;
        }
    }
    tracing::debug!("attached {name} to {:?}", program.hook());
    Ok(())
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

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program and map the loader names is in the built object (the
    /// read-only globals are checked by the loader: it fails on a missing
    /// one).
    #[test]
    fn the_object_has_every_named_program_and_map() {
        let object = aya_obj::Object::parse(OBJECT).expect("the built object parses");
        for program in Program::ALL {
            assert!(
                object.programs.contains_key(program.name()),
                "no program {}",
                program.name()
            );
        }
        for name in [
            maps::EVENTS,
            maps::LOST,
            maps::ERRORS,
            maps::WATCHED,
            maps::WATCHED_INODES,
            maps::WATCHED_ENV,
            maps::WATCHED_ENV_SUFFIX,
            maps::ENV_FILTER,
            maps::NAME_RULES,
            maps::CAPTURE,
        ] {
            assert!(object.maps.contains_key(name), "no map {name}");
        }
    }
}
