//! Kernel programs of secretmon.
//!
//! Tracepoints are the base: they load on every kernel >= 5.8 with BTF. Where
//! the kernel allows BPF trampolines, the agent uses instead an fexit hook on
//! `do_filp_open` (every open, io_uring's too, and no syscall tracepoint) or
//! the `file_open` LSM hook (successful opens, io_uring's too; the exit
//! tracepoints then report only denials). Only accesses to watched files and
//! process lifecycle events cross to userspace, through one ring buffer; a
//! failed reservation is counted in `LOST` because the kernel does not count
//! it for us; a program that stopped part-way (a read of kernel or user
//! memory failed) is counted in `ERRORS`.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
        generated::{
            self as helper, bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns,
        },
    },
    macros::{fexit, lsm, map, raw_tracepoint, tracepoint},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{FExitContext, LsmContext, RawTracePointContext, TracePointContext},
};
use monitor_common::{
    ARGS_LEN, CAPTURE_LSM_OPENS, COMPONENT_LEN, DeniedOpenEvent, ENV_NAME_LEN, ENV_NAMES_MAX,
    ENV_SUFFIX_LEN, EnvironReadEvent, EventHeader, EventKind, ExecEvent, FileKey, ForkEvent,
    IoUringLayout, IoUringOpenEvent, KernelOffsets, NO_OFFSET, NameFilter, NameRule,
    NameRuleOpenEvent, OpenEvent, PATH_COMPONENTS, RULE_NAME_LEN, RULE_PARENT_LEN, UNSET_LOGINUID,
    VIA_IO_URING, VIA_OTHER, VIA_SYSCALL, WalkedPath,
};

/// Field offsets from the running kernel's BTF, written by the agent before
/// it attaches anything. A map, not a global: programs read the fields in
/// place, where a copy would take a third of the 512-byte stack.
#[map]
static OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

/// The offsets, once the agent has written them.
#[inline(always)]
fn offsets() -> Option<&'static KernelOffsets> {
    OFFSETS.get(0).filter(|off| off.valid != 0)
}

/// `CAPTURE_LSM_OPENS` once the agent has attached the `file_open` LSM hook:
/// a map, not a global, so that the agent switches both sides at once after
/// loading.
#[map]
static CAPTURE: Array<u32> = Array::with_max_entries(1, 0);

/// The cheap pre-tests of the name rules, written by the agent before it
/// attaches anything. A map read in place, like `OFFSETS`.
#[map]
static NAME_FILTER: Array<NameFilter> = Array::with_max_entries(1, 0);

/// Exact (`credentials`) and prefix (`id_`) name rules. Filled by the agent.
#[map]
static NAME_RULES: LpmTrie<[u8; RULE_NAME_LEN], NameRule> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Per-CPU room to build a name-rule event's path before reserving it.
#[map]
static NAME_SCRATCH: PerCpuArray<[u8; RULE_NAME_LEN]> = PerCpuArray::with_max_entries(1, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Offset of `opcode` in the io_uring submit tracepoint, written by the agent.
#[unsafe(no_mangle)]
static IO_URING: Global<IoUringLayout> = Global::new(IoUringLayout {
    opcode_offset: u32::MAX,
});

/// Processes already reported for io_uring opens: once each is enough.
#[map]
static IO_URING_SEEN: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_OPENAT2: u8 = 28;

/// 4 MiB by default; the agent may resize it (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Files to report, filled and updated by the agent. Value: the agent's id.
#[map]
static WATCHED: HashMap<FileKey, u32> = HashMap::with_max_entries(65_536, 0);

/// Arguments of opens in flight, by thread, kept for the exit to report a
/// denied open (the exit tracepoint has only the return value). LRU, so a
/// thread that dies mid-syscall cannot fill it.
#[map]
static OPEN_ARGS: LruHashMap<u64, PendingOpen> = LruHashMap::with_max_entries(16_384, 0);

/// Watched environment variable names, NUL-padded. Filled by the agent.
#[map]
static WATCHED_ENV: HashMap<[u8; ENV_NAME_LEN], u8> = HashMap::with_max_entries(1024, 0);

/// Watched name suffixes (`_TOKEN` for `*_TOKEN`), NUL-padded. Filled by the
/// agent. A name is checked with its last one and last two `_`-words.
#[map]
static WATCHED_ENV_SUFFIX: HashMap<[u8; ENV_SUFFIX_LEN], u8> = HashMap::with_max_entries(256, 0);

/// Per-CPU working memory for the environment scan: too big for the stack.
#[map]
static ENV_SCRATCH: PerCpuArray<EnvScratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct EnvScratch {
    entry: [u8; ENV_ENTRY_MAX],
    /// The name, NUL-padded; longer than a name so that masked indexing
    /// past its end reads zeros.
    name: [u8; NAME_SCRATCH_LEN],
    suffix: [u8; ENV_SUFFIX_LEN],
    state: NameScan,
    pos: u64,
}

const NAME_SCRATCH_LEN: usize = 64;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    filename: u64,
    flags: u32,
    dfd: i32,
    /// `filename` is a kernel pointer (fexit), not a user one (syscalls).
    kernel_name: u32,
    _pad: u32,
}

/// Bytes of one environment entry read at a time; an entry longer than this
/// ends the scan (flagged as truncated).
const ENV_ENTRY_MAX: usize = 4096;
/// Environment entries scanned per exec, at most.
const ENV_ENTRIES_MAX: u32 = 96;
const AT_FDCWD: i32 = -100;
const EPERM: i64 = 1;
const EACCES: i64 = 13;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// `PF_IO_WORKER`: an io_uring worker thread of the submitting process.
const PF_IO_WORKER: u32 = 0x10;
/// x86_64 syscall numbers, to tell how an open reached an LSM/fexit hook.
const NR_OPEN: u64 = 2;
const NR_CREAT: u64 = 85;
const NR_OPENAT: u64 = 257;
const NR_IO_URING_ENTER: u64 = 426;
const NR_OPENAT2: u64 = 437;
const MAX_ERRNO: i64 = 4095;
// O_CREAT | O_WRONLY | O_TRUNC, what creat(2) means.
const CREAT_FLAGS: u32 = 0o1101;

/// Events that did not fit in `EVENTS`, per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Program runs that stopped part-way, the event they were making not
/// sent, per CPU.
#[map]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// Layout of the syscall tracepoints (`struct syscall_trace_exit`): an 8-byte
// common header, the syscall number, then `long ret` at 16. This is the
// tracepoint ABI, unchanged since syscall tracepoints were added.
const SYS_EXIT_RET: usize = 16;
// `struct syscall_trace_enter`: the arguments, 8 bytes each, from 16.
const SYS_ENTER_ARG0: usize = 16;
const SYS_ENTER_ARG1: usize = 24;
const SYS_ENTER_ARG2: usize = 32;
// `sched_process_exec`: `__data_loc char[] filename` at 8, `pid` at 12,
// `old_pid` at 16.
const EXEC_FILENAME_LOC: usize = 8;
const EXEC_OLD_PID: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let dfd: i64 = unsafe { ctx.read_at(SYS_ENTER_ARG0) }.unwrap_or(0);
    let name: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG1) }.unwrap_or(0);
    let flags: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG2) }.unwrap_or(0);
    remember_open(name, flags as u32, dfd as i32)
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let name: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG0) }.unwrap_or(0);
    let flags: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG1) }.unwrap_or(0);
    remember_open(name, flags as u32, AT_FDCWD)
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    let name: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG0) }.unwrap_or(0);
    remember_open(name, CREAT_FLAGS, AT_FDCWD)
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let dfd: i64 = unsafe { ctx.read_at(SYS_ENTER_ARG0) }.unwrap_or(0);
    let name: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG1) }.unwrap_or(0);
    let how: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG2) }.unwrap_or(0);
    // `struct open_how` starts with `__u64 flags`.
    let flags: u64 = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    remember_open(name, flags as u32, dfd as i32)
}

fn remember_open(filename: u64, flags: u32, dfd: i32) -> u32 {
    let pending = PendingOpen {
        filename,
        flags,
        dfd,
        kernel_name: 0,
        _pad: 0,
    };
    let _ = OPEN_ARGS.insert(&bpf_get_current_pid_tgid(), &pending, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::EnterHook)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::EnterHook)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::EnterHook)
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::EnterHook)
}

// The same exits for kernels with `bpf_task_pt_regs` (5.15+): a denied
// open's arguments come from the registers saved at syscall entry, so no
// enter hook runs on every open. The agent loads one set or the other.

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat_regs(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::Registers(OpenSyscall::OpenAt))
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open_regs(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::Registers(OpenSyscall::Open))
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2_regs(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::Registers(OpenSyscall::OpenAt2))
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat_regs(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, ArgsFrom::Registers(OpenSyscall::Creat))
}

#[derive(Clone, Copy)]
enum OpenSyscall {
    Open,
    OpenAt,
    Creat,
    OpenAt2,
}

/// Where a denied open's arguments come from.
#[derive(Clone, Copy)]
enum ArgsFrom {
    EnterHook,
    Registers(OpenSyscall),
}

/// io_uring opens bypass the syscall tracepoints: report processes that
/// submit them. Attached by the agent to `io_uring:io_uring_submit_req`
/// (`io_uring_submit_sqe` before 5.19).
#[tracepoint]
pub fn io_uring_submit(ctx: TracePointContext) -> u32 {
    let layout = IO_URING.load();
    if layout.opcode_offset == u32::MAX {
        return 0;
    }
    let Ok(opcode) = (unsafe { ctx.read_at::<u8>(layout.opcode_offset as usize) }) else {
        return 0;
    };
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { IO_URING_SEEN.get(&tgid) }.is_some() {
        return 0;
    }
    let _ = IO_URING_SEEN.insert(&tgid, &1, 0);
    match EVENTS.reserve::<IoUringOpenEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            fill_header(ev.cast(), EventKind::IoUringOpen);
            unsafe {
                (*ev).opcode = u32::from(opcode);
                (*ev)._pad = 0;
            }
            entry.submit(0);
        }
        None => count_lost(),
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    counted(try_exec(&ctx));
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Threads exit one by one; only the leader's exit ends the process.
    if pid_tgid as u32 != (pid_tgid >> 32) as u32 {
        return 0;
    }
    match EVENTS.reserve::<EventHeader>(0) {
        Some(mut entry) => {
            fill_header(entry.as_mut_ptr(), EventKind::Exit);
            entry.submit(0);
        }
        None => count_lost(),
    }
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
/// as a raw tracepoint: the task pointers tell a new process from a thread.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    counted(try_fork(&ctx));
    0
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let Some(off) = offsets() else {
        return Ok(());
    };
    let child: u64 = ctx.arg(1);
    let pid: u32 = unsafe { read(child + off.task_pid as u64) }?;
    let tgid: u32 = unsafe { read(child + off.task_tgid as u64) }?;
    if pid != tgid {
        return Ok(());
    }
    match EVENTS.reserve::<ForkEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            fill_header(ev.cast(), EventKind::Fork);
            unsafe {
                (*ev).child_pid = pid;
                (*ev)._pad = 0;
            }
            entry.submit(0);
        }
        None => count_lost(),
    }
    Ok(())
}

fn on_open_exit(ctx: &TracePointContext, from: ArgsFrom) -> u32 {
    counted(try_open_exit(ctx, from));
    0
}

#[inline(always)]
fn try_open_exit(ctx: &TracePointContext, from: ArgsFrom) -> Result<(), i64> {
    let ret: i64 = unsafe { ctx.read_at(SYS_EXIT_RET) }.map_err(i64::from)?;
    if ret < 0 && ret != -EACCES && ret != -EPERM {
        return Ok(());
    }
    if ret >= 0 && lsm_reports_opens() {
        return Ok(());
    }
    let Some(off) = offsets() else {
        return Ok(());
    };
    if ret < 0 {
        let args = match from {
            ArgsFrom::EnterHook => unsafe { OPEN_ARGS.get(&bpf_get_current_pid_tgid()) }.copied(),
            ArgsFrom::Registers(syscall) => unsafe { args_from_regs(off, syscall) }.ok(),
        };
        return match args {
            Some(args) => denied_open(off, ret, &args),
            None => Ok(()),
        };
    }
    let file = unsafe { current_fd_file(off, ret as u32) }?;
    if file == 0 {
        return Ok(());
    }
    unsafe { opened_file(off, file, ret, VIA_SYSCALL) }
}

fn lsm_reports_opens() -> bool {
    CAPTURE
        .get(0)
        .is_some_and(|mode| mode & CAPTURE_LSM_OPENS != 0)
}

/// `security_file_open(struct file *file)`: every successful open, io_uring's
/// included, before the fd exists. Reports only once the agent has set
/// `CAPTURE_LSM_OPENS`; until then the exit tracepoints do. Returns the
/// decision of the LSM programs before it: this hook never denies.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if lsm_reports_opens() {
        let file: u64 = ctx.arg(0);
        if let Some(off) = offsets() {
            let via = unsafe { hook_via(off) };
            counted(unsafe { opened_file(off, file, 0, via) });
        }
    }
    previous
}

/// `struct file *do_filp_open(int dfd, struct filename *pathname,
/// const struct open_flags *op)`: every open by path, from any syscall or
/// io_uring, with its result. Replaces the syscall tracepoints where it
/// loads, so other syscalls stay on their fast path.
#[fexit(function = "do_filp_open")]
pub fn do_filp_open_exit(ctx: FExitContext) -> i32 {
    counted(try_filp_open_exit(&ctx));
    0
}

fn try_filp_open_exit(ctx: &FExitContext) -> Result<(), i64> {
    let ret: i64 = ctx.arg(3);
    // A `struct file *` or an `ERR_PTR`; kernel pointers are negative too.
    let failed = (-MAX_ERRNO..0).contains(&ret);
    if ret == 0 || (failed && ret != -EACCES && ret != -EPERM) {
        return Ok(());
    }
    let Some(off) = offsets() else {
        return Ok(());
    };
    if failed {
        let dfd: i64 = ctx.arg(0);
        let name: u64 = ctx.arg(1);
        let op: u64 = ctx.arg(2);
        let args = PendingOpen {
            filename: unsafe { read(name + off.filename_name as u64) }?,
            flags: unsafe { read(op + off.open_flags_open_flag as u64) }?,
            dfd: dfd as i32,
            kernel_name: 1,
            _pad: 0,
        };
        return denied_open(off, ret, &args);
    }
    unsafe { opened_file(off, ret as u64, 0, hook_via(off)) }
}

/// How the open in progress reached a hook inside the kernel's open: an
/// io_uring worker, or the syscall the current task is in.
unsafe fn hook_via(off: &KernelOffsets) -> u32 {
    let task = unsafe { helper::bpf_get_current_task_btf() };
    let flags: u32 = unsafe { read(task as u64 + off.task_flags as u64) }.unwrap_or(0);
    if flags & PF_IO_WORKER != 0 {
        return VIA_IO_URING;
    }
    let regs = unsafe { helper::bpf_task_pt_regs(task) } as u64;
    match unsafe { read::<u64>(regs + off.regs_orig_ax as u64) } {
        Ok(NR_OPEN | NR_OPENAT | NR_OPENAT2 | NR_CREAT) => VIA_SYSCALL,
        Ok(NR_IO_URING_ENTER) => VIA_IO_URING,
        _ => VIA_OTHER,
    }
}

/// A successful open of `file`: report it if it is watched, an environ
/// read, or a name-rule match. `ret` is the new fd, or 0 from a hook.
#[inline(always)]
unsafe fn opened_file(off: &KernelOffsets, file: u64, ret: i64, via: u32) -> Result<(), i64> {
    let inode: u64 = unsafe { read(file + off.file_f_inode as u64) }?;
    let sb: u64 = unsafe { read(inode + off.inode_i_sb as u64) }?;
    let key = unsafe { inode_key(off, inode, sb) }?;
    if unsafe { WATCHED.get(&key) }.is_none() {
        let magic: u64 = unsafe { read(sb + off.sb_s_magic as u64) }?;
        if magic == PROC_SUPER_MAGIC {
            return unsafe { proc_open(off, file) };
        }
        unsafe { name_rule_open(off, file, &key, ret, via) };
        return Ok(());
    }
    let flags: u32 = unsafe { read(file + off.file_f_flags as u64) }?;
    match EVENTS.reserve::<OpenEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            fill_header(ev.cast(), EventKind::Open);
            unsafe {
                (*ev).key = key;
                (*ev).flags = flags;
                (*ev).ret = ret as i32;
                (*ev).via = via;
                (*ev)._pad = 0;
            }
            entry.submit(0);
        }
        None => count_lost(),
    }
    Ok(())
}

/// A successful open of an unwatched file: does its name match a
/// credential-file rule? Cheap tests on the first and last bytes first, so
/// most opens cost a few reads; then the rule lookup, the parent check and
/// the path walk.
/// Not inlined (the programs' stack), so at most five arguments: the
/// `Result` of the inner function would be a sixth.
#[inline(never)]
unsafe fn name_rule_open(off: &KernelOffsets, file: u64, key: &FileKey, ret: i64, via: u32) {
    counted(unsafe { try_name_rule_open(off, file, key, ret, via) });
}

#[inline(always)]
unsafe fn try_name_rule_open(
    off: &KernelOffsets,
    file: u64,
    key: &FileKey,
    ret: i64,
    via: u32,
) -> Result<(), i64> {
    let dentry: u64 = unsafe { read(file + off.file_dentry as u64) }?;
    let len: u32 = unsafe { read(dentry + off.dentry_name_len as u64) }?;
    if len == 0 || len > 255 {
        return Ok(());
    }
    let name_ptr: u64 = unsafe { read(dentry + off.dentry_name_ptr as u64) }?;
    let filter = NAME_FILTER.get(0).ok_or(0i64)?;
    let first: u8 = unsafe { read(name_ptr) }?;
    let by_name = filter.first_bytes[usize::from(first >> 6)] & (1u64 << (first & 63)) != 0;
    // The last 8 bytes (or the whole name, NUL-padded, if shorter).
    let tail: u64 = if len >= 8 {
        unsafe { read(name_ptr + u64::from(len) - 8) }?
    } else {
        let mut buf = [0u8; 8];
        unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut buf) }
            .map_err(i64::from)?;
        u64::from_le_bytes(buf) << (8 * (8 - len))
    };
    let mut rule_id = u32::MAX;
    for s in filter.suffixes.iter() {
        if s.len == 0 || s.len > len {
            continue;
        }
        let want = u64::from_le_bytes(s.bytes) << (8 * (8 - s.len));
        let mask = u64::MAX << (8 * (8 - s.len));
        if tail & mask == want {
            rule_id = s.id;
            break;
        }
    }
    if rule_id == u32::MAX {
        if !by_name || len as usize >= RULE_NAME_LEN {
            return Ok(());
        }
        let name = NAME_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
        unsafe {
            *name = [0; RULE_NAME_LEN];
            bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut *name)
                .map_err(i64::from)?;
        }
        let lookup = Key::new((RULE_NAME_LEN * 8) as u32, unsafe { *name });
        let Some(rule) = NAME_RULES.get(&lookup).copied() else {
            return Ok(());
        };
        if rule.not_suffix_len > 0 && rule.not_suffix_len <= len {
            let n = rule.not_suffix_len;
            let mask = u64::MAX << (8 * (8 - n));
            if tail & mask == u64::from_le_bytes(rule.not_suffix) << (8 * (8 - n)) {
                return Ok(());
            }
        }
        if rule.parent[0] != 0 {
            let parent: u64 = unsafe { read(dentry + off.dentry_d_parent as u64) }?;
            let pname_ptr: u64 = unsafe { read(parent + off.dentry_name_ptr as u64) }?;
            let mut pname = [0u8; RULE_PARENT_LEN];
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(pname_ptr as *const u8, &mut pname) };
            if pname != rule.parent {
                return Ok(());
            }
        }
        rule_id = rule.id;
    }
    let flags: u32 = unsafe { read(file + off.file_f_flags as u64) }?;
    let Some(mut entry) = EVENTS.reserve::<NameRuleOpenEvent>(0) else {
        count_lost();
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    fill_header(ev.cast(), EventKind::NameRuleOpen);
    unsafe {
        (*ev).key = *key;
        (*ev).flags = flags;
        (*ev).ret = ret as i32;
        (*ev).rule = rule_id;
        (*ev).via = via;
        (*ev).path.depth = 0;
        (*ev).path.truncated = 0;
        match (
            read::<u64>(file + off.file_dentry as u64),
            read::<u64>(file + off.file_vfsmount as u64),
        ) {
            (Ok(dentry), Ok(vfsmnt)) => walk_path(off, dentry, vfsmnt, &raw mut (*ev).path),
            _ => (*ev).path.truncated = 1,
        }
    }
    entry.submit(0);
    Ok(())
}

/// The opened file's path, component by component, from its dentry up
/// through the mounts to the root of the mount namespace, as `d_path` would
/// (which tracepoints may not call).
#[inline(never)]
unsafe fn walk_path(off: &KernelOffsets, dentry: u64, vfsmnt: u64, p: *mut WalkedPath) {
    let (mut dentry, mut vfsmnt) = (dentry, vfsmnt);
    // The depth lives in the event, read and written volatile: a value the
    // verifier cannot know keeps it from tracking every (turn, depth) pair.
    let depth = unsafe { &raw mut (*p).depth };
    // Mount crossings take a turn without a component; bound both.
    for _ in 0..(PATH_COMPONENTS + 8) {
        let Ok(mnt_root) = (unsafe { read::<u64>(vfsmnt + off.vfsmount_mnt_root as u64) }) else {
            break;
        };
        if dentry == mnt_root {
            let mnt = vfsmnt - off.mount_mnt as u64;
            let Ok(parent) = (unsafe { read::<u64>(mnt + off.mount_mnt_parent as u64) }) else {
                break;
            };
            if parent == mnt {
                // The root of the namespace: the path is whole.
                return;
            }
            let Ok(mountpoint) = (unsafe { read::<u64>(mnt + off.mount_mnt_mountpoint as u64) })
            else {
                break;
            };
            dentry = mountpoint;
            vfsmnt = parent + off.mount_mnt as u64;
            continue;
        }
        let Ok(parent) = (unsafe { read::<u64>(dentry + off.dentry_d_parent as u64) }) else {
            break;
        };
        let d = unsafe { core::ptr::read_volatile(depth) } as usize;
        if parent == dentry || d >= PATH_COMPONENTS {
            break;
        }
        let Ok(name_ptr) = (unsafe { read::<u64>(dentry + off.dentry_name_ptr as u64) }) else {
            break;
        };
        let slot = unsafe { &mut (*p).components[d & (PATH_COMPONENTS - 1)] };
        if !matches!(
            unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, slot) },
            Ok(s) if s.len() < COMPONENT_LEN - 1
        ) {
            unsafe { (*p).truncated = 1 };
        }
        unsafe { core::ptr::write_volatile(depth, d as u32 + 1) };
        dentry = parent;
    }
    unsafe { (*p).truncated = 1 };
}

/// An open refused with EACCES/EPERM: report what was asked for. Only
/// denials cross, not the far commoner ENOENT of path searches.
/// The open's arguments from the user registers saved at syscall entry.
unsafe fn args_from_regs(off: &KernelOffsets, syscall: OpenSyscall) -> Result<PendingOpen, i64> {
    let task = unsafe { helper::bpf_get_current_task_btf() };
    let regs = unsafe { helper::bpf_task_pt_regs(task) } as u64;
    let arg0: u64 = unsafe { read(regs + off.regs_di as u64) }?;
    let arg1: u64 = unsafe { read(regs + off.regs_si as u64) }?;
    let arg2: u64 = unsafe { read(regs + off.regs_dx as u64) }?;
    Ok(match syscall {
        OpenSyscall::Open => PendingOpen {
            filename: arg0,
            flags: arg1 as u32,
            dfd: AT_FDCWD,
            kernel_name: 0,
            _pad: 0,
        },
        OpenSyscall::Creat => PendingOpen {
            filename: arg0,
            flags: CREAT_FLAGS,
            dfd: AT_FDCWD,
            kernel_name: 0,
            _pad: 0,
        },
        OpenSyscall::OpenAt => PendingOpen {
            filename: arg1,
            flags: arg2 as u32,
            dfd: arg0 as i32,
            kernel_name: 0,
            _pad: 0,
        },
        OpenSyscall::OpenAt2 => PendingOpen {
            filename: arg1,
            // `struct open_how` starts with `__u64 flags`.
            flags: unsafe { bpf_probe_read_user(arg2 as *const u64) }.unwrap_or(0) as u32,
            dfd: arg0 as i32,
            kernel_name: 0,
            _pad: 0,
        },
    })
}

#[inline(never)]
fn denied_open(off: &KernelOffsets, ret: i64, args: &PendingOpen) -> Result<(), i64> {
    let Some(mut entry) = EVENTS.reserve::<DeniedOpenEvent>(0) else {
        count_lost();
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    fill_header(ev.cast(), EventKind::DeniedOpen);
    let src = args.filename as *const u8;
    let name = unsafe {
        if args.kernel_name != 0 {
            bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename)
        } else {
            bpf_probe_read_user_str_bytes(src, &mut (*ev).filename)
        }
    };
    let len = match name {
        Ok(s) => s.len() as u32,
        Err(_) => 0,
    };
    unsafe {
        (*ev).flags = args.flags;
        (*ev).ret = ret as i32;
        (*ev).dfd = args.dfd;
        (*ev).filename_len = len;
        (*ev).base.depth = 0;
        (*ev).base.truncated = 0;
    }
    // A relative name: walk the directory it is relative to now, while the
    // process exists; the agent may look only after it is gone.
    if len > 0 && unsafe { (*ev).filename[0] } != b'/' {
        let base = if args.dfd == AT_FDCWD {
            unsafe { cwd(off) }
        } else {
            unsafe { fd_path(off, args.dfd as u32) }
        };
        match base {
            Ok((dentry, vfsmnt)) => unsafe { walk_path(off, dentry, vfsmnt, &raw mut (*ev).base) },
            Err(_) => unsafe { (*ev).base.truncated = 1 },
        }
    }
    entry.submit(0);
    Ok(())
}

/// `current->fs->pwd` as (dentry, vfsmount).
unsafe fn cwd(off: &KernelOffsets) -> Result<(u64, u64), i64> {
    let task = unsafe { bpf_get_current_task() };
    let fs: u64 = unsafe { read(task + off.task_fs as u64) }?;
    let dentry: u64 = unsafe { read(fs + off.fs_pwd_dentry as u64) }?;
    let mnt: u64 = unsafe { read(fs + off.fs_pwd_mnt as u64) }?;
    Ok((dentry, mnt))
}

/// The path of `current`'s open file `fd` as (dentry, vfsmount).
unsafe fn fd_path(off: &KernelOffsets, fd: u32) -> Result<(u64, u64), i64> {
    let file = unsafe { current_fd_file(off, fd) }?;
    if file == 0 {
        return Err(0);
    }
    let dentry: u64 = unsafe { read(file + off.file_dentry as u64) }?;
    let mnt: u64 = unsafe { read(file + off.file_vfsmount as u64) }?;
    Ok((dentry, mnt))
}

/// A successful open on procfs: report `/proc/<pid>/environ` of another
/// process. The parent dentry's name is the target pid.
unsafe fn proc_open(off: &KernelOffsets, file: u64) -> Result<(), i64> {
    let dentry: u64 = unsafe { read(file + off.file_dentry as u64) }?;
    let len: u32 = unsafe { read(dentry + off.dentry_name_len as u64) }?;
    if len != 7 {
        return Ok(());
    }
    let name_ptr: u64 = unsafe { read(dentry + off.dentry_name_ptr as u64) }?;
    let name: [u8; 7] = unsafe { read(name_ptr) }?;
    if &name != b"environ" {
        return Ok(());
    }
    let parent: u64 = unsafe { read(dentry + off.dentry_d_parent as u64) }?;
    let plen: u32 = unsafe { read(parent + off.dentry_name_len as u64) }?;
    let pname_ptr: u64 = unsafe { read(parent + off.dentry_name_ptr as u64) }?;
    let digits: [u8; 10] = unsafe { read(pname_ptr) }.unwrap_or([0; 10]);
    let mut target: u32 = 0;
    for (i, &d) in digits.iter().enumerate() {
        if i as u32 >= plen {
            break;
        }
        if !d.is_ascii_digit() {
            return Ok(());
        }
        target = target.wrapping_mul(10).wrapping_add(u32::from(d - b'0'));
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if target == 0 || target == tgid {
        return Ok(());
    }
    match EVENTS.reserve::<EnvironReadEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            fill_header(ev.cast(), EventKind::EnvironRead);
            unsafe {
                (*ev).target_pid = target;
                (*ev)._pad = 0;
            }
            entry.submit(0);
        }
        None => count_lost(),
    }
    Ok(())
}

/// Inlined: a frame of its own would stack on `exec_args`'s.
#[inline(always)]
fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let loc: u32 = unsafe { ctx.read_at(EXEC_FILENAME_LOC) }.map_err(i64::from)?;
    let old_pid: u32 = unsafe { ctx.read_at(EXEC_OLD_PID) }.map_err(i64::from)?;
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_lost();
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    fill_header(ev.cast(), EventKind::Exec);
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    let len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename) } {
        Ok(s) => s.len() as u32,
        Err(_) => 0,
    };
    unsafe {
        (*ev).old_pid = old_pid;
        (*ev).filename_len = len;
        (*ev).args_len = 0;
        (*ev).args_truncated = 0;
        (*ev).env_count = 0;
        (*ev).env_truncated = 0;
    }
    if let Some(off) = offsets() {
        // A failed read leaves the event with what it has.
        let _ = unsafe { exec_args(off, ev) };
    }
    entry.submit(0);
    Ok(())
}

/// argv, and the names of watched variables in the environment, from the
/// new image's `mm` (the user pointers of `execve` are gone by now).
/// Not inlined: its spills get a frame of their own, off the stack of the
/// program's other calls (kernels before 6.13 cap the sum at 512 bytes).
#[inline(never)]
unsafe fn exec_args(off: &KernelOffsets, ev: *mut ExecEvent) -> Result<(), i64> {
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = unsafe { read(task + off.task_mm as u64) }?;
    let arg_start: u64 = unsafe { read(mm + off.mm_arg_start as u64) }?;
    let arg_end: u64 = unsafe { read(mm + off.mm_arg_end as u64) }?;
    let mut n = arg_end.saturating_sub(arg_start);
    if n > ARGS_LEN as u64 {
        n = ARGS_LEN as u64;
        unsafe { (*ev).args_truncated = 1 };
    }
    let rc = unsafe {
        helper::bpf_probe_read_user(
            (*ev).args.as_mut_ptr().cast(),
            n as u32,
            arg_start as *const core::ffi::c_void,
        )
    };
    if rc == 0 {
        unsafe { (*ev).args_len = n as u32 };
    }
    let env_start: u64 = unsafe { read(mm + off.mm_env_start as u64) }?;
    let env_end: u64 = unsafe { read(mm + off.mm_env_end as u64) }?;
    unsafe { scan_env(ev, env_start, env_end) }
}

/// Walk the environment entry by entry: the helper finds each entry's end,
/// and only the name (up to `=`) is looked at and, if watched, reported.
///
/// The per-byte work is branch-free arithmetic: every branch on unknown
/// data leaves the verifier a path to explore later, and a byte loop over
/// many entries would exceed its limit on pending paths.
unsafe fn scan_env(ev: *mut ExecEvent, start: u64, end: u64) -> Result<(), i64> {
    let scratch = ENV_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    let mut pos = start;
    for _ in 0..ENV_ENTRIES_MAX {
        if pos >= end {
            return Ok(());
        }
        let n = unsafe {
            helper::bpf_probe_read_user_str(
                (*scratch).entry.as_mut_ptr().cast(),
                ENV_ENTRY_MAX as u32,
                pos as *const core::ffi::c_void,
            )
        };
        if n <= 0 {
            return Ok(());
        }
        let (name_len, has_eq, last_us, prev_us) = unsafe { copy_name(scratch) };
        if has_eq != 0 && name_len > 0 {
            let watched =
                unsafe { WATCHED_ENV.get(&*(*scratch).name.as_ptr().cast::<[u8; ENV_NAME_LEN]>()) }
                    .is_some()
                    || unsafe { suffix_watched(scratch, last_us) }
                    || unsafe { suffix_watched(scratch, prev_us) };
            if watched {
                let count = unsafe { (*ev).env_count } as usize;
                if count >= ENV_NAMES_MAX {
                    unsafe { (*ev).env_truncated = 1 };
                    return Ok(());
                }
                unsafe {
                    let name = &*(*scratch).name.as_ptr().cast::<[u8; ENV_NAME_LEN]>();
                    (*ev).env_names[count & (ENV_NAMES_MAX - 1)] = *name;
                    (*ev).env_count = count as u32 + 1;
                }
            }
        }
        if n as usize >= ENV_ENTRY_MAX {
            // An entry longer than the scratch: its end is unknown.
            unsafe { (*ev).env_truncated = 1 };
            return Ok(());
        }
        // Laundered through memory like the name scan's state (see there).
        unsafe {
            core::ptr::write_volatile(&raw mut (*scratch).pos, pos + n as u64);
            pos = core::ptr::read_volatile(&raw const (*scratch).pos);
        }
    }
    if pos < end {
        unsafe { (*ev).env_truncated = 1 };
    }
    Ok(())
}

/// 1 when `a == b`, else 0, without a branch.
#[inline(always)]
fn eq(a: u64, b: u64) -> u64 {
    (a ^ b).wrapping_sub(1) >> 63
}

/// Name-scan state carried from byte to byte.
#[derive(Clone, Copy)]
pub struct NameScan {
    name_len: u64,
    found: u64,
    has_eq: u64,
    last_us: u64,
    prev_us: u64,
}

/// Copy the entry's name into `scratch.name`, NUL-padded to the end of the
/// buffer. Returns (name length, 1 if a `=` ended it, position of the last
/// `_`, of the one before it), positions being `ENV_NAME_LEN` for none.
///
/// Four bytes per loop turn, written out: the verifier keeps a state per
/// turn and compares each new one against all kept, so fewer turns verify
/// far faster; more bytes per turn would make the compiler spill more than
/// the stack of kernels before 6.13 holds.
unsafe fn copy_name(scratch: *mut EnvScratch) -> (u64, u64, u64, u64) {
    let max = ENV_NAME_LEN as u64;
    let mut st = NameScan {
        name_len: max,
        found: 0,
        has_eq: 0,
        last_us: max,
        prev_us: max,
    };
    for w in 0..ENV_NAME_LEN / 4 {
        let base = w * 4;
        for k in [0, 1, 2, 3] {
            unsafe { name_step(scratch, &mut st, base + k) };
        }
        // Launder the state through memory: the verifier forgets the value
        // ranges it derived, so the states of successive turns compare equal
        // and are pruned instead of piling up.
        unsafe {
            core::ptr::write_volatile(&raw mut (*scratch).state, st);
            st = core::ptr::read_volatile(&raw const (*scratch).state);
        }
    }
    (st.name_len, st.has_eq, st.last_us, st.prev_us)
}

#[inline(always)]
unsafe fn name_step(scratch: *mut EnvScratch, st: &mut NameScan, j: usize) {
    // Volatile, like the write below: steps stay in order, so the compiler
    // does not compute many bytes' values at once and spill them (kernels
    // before 6.13 allow 512 bytes of stack in all).
    let b = u64::from(unsafe { core::ptr::read_volatile(&raw const (*scratch).entry[j]) });
    let is_eq = eq(b, u64::from(b'='));
    let ends = (is_eq | eq(b, 0)) & (1 - st.found);
    // name_len >= j until found, so this never wraps.
    st.name_len -= ends * (st.name_len - j as u64);
    st.has_eq |= ends & is_eq;
    st.found |= ends;
    let in_name = 1 - st.found;
    let us = eq(b, u64::from(b'_')) & in_name;
    st.prev_us = st
        .prev_us
        .wrapping_add(us.wrapping_mul(st.last_us.wrapping_sub(st.prev_us)));
    st.last_us = st
        .last_us
        .wrapping_add(us.wrapping_mul((j as u64).wrapping_sub(st.last_us)));
    unsafe { core::ptr::write_volatile(&raw mut (*scratch).name[j], (b * in_name) as u8) };
}

/// Is the name from `from` on a watched suffix? `from` is a `_` position,
/// or `ENV_NAME_LEN` for none, which reads only padding and matches nothing.
/// Inlined: a call from `exec_args` would stack its frame on that one's.
#[inline(always)]
unsafe fn suffix_watched(scratch: *mut EnvScratch, from: u64) -> bool {
    for t in 0..ENV_SUFFIX_LEN {
        let i = (from as usize + t) & (NAME_SCRATCH_LEN - 1);
        unsafe { (*scratch).suffix[t] = (*scratch).name[i] };
    }
    unsafe { WATCHED_ENV_SUFFIX.get(&(*scratch).suffix) }.is_some()
}

/// Fill the common header from `current`, in place in the reservation.
fn fill_header(h: *mut EventHeader, kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let task = unsafe { bpf_get_current_task() };
    let facts = offsets().and_then(|off| unsafe { task_facts(off, task) }.ok());
    let facts = facts.unwrap_or(TaskFacts {
        ppid: 0,
        loginuid: UNSET_LOGINUID,
        tty: 0,
        start_ns: 0,
    });
    // SAFETY: plain helper calls; `h` points into a live reservation.
    unsafe {
        (*h).kind = kind as u32;
        (*h).pid = (pid_tgid >> 32) as u32;
        (*h).tid = pid_tgid as u32;
        (*h).ppid = facts.ppid;
        (*h).uid = uid_gid as u32;
        (*h).gid = (uid_gid >> 32) as u32;
        (*h).loginuid = facts.loginuid;
        (*h).tty = facts.tty;
        (*h).boot_ns = bpf_ktime_get_boot_ns();
        (*h).start_ns = facts.start_ns;
        (*h).cgroup_id = bpf_get_current_cgroup_id();
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}

struct TaskFacts {
    ppid: u32,
    loginuid: u32,
    tty: u32,
    start_ns: u64,
}

/// What identity needs from `task`, read here because the process may be
/// gone by the time userspace could look in /proc.
unsafe fn task_facts(off: &KernelOffsets, task: u64) -> Result<TaskFacts, i64> {
    if off.valid == 0 {
        return Err(0);
    }
    let parent: u64 = unsafe { read(task + off.task_real_parent as u64) }?;
    let ppid: u32 = unsafe { read(parent + off.task_tgid as u64) }?;
    let loginuid = if off.task_loginuid == NO_OFFSET {
        UNSET_LOGINUID
    } else {
        unsafe { read(task + off.task_loginuid as u64) }?
    };
    let signal: u64 = unsafe { read(task + off.task_signal as u64) }?;
    let tty: u64 = unsafe { read(signal + off.signal_tty as u64) }?;
    let leader: u64 = unsafe { read(task + off.task_group_leader as u64) }?;
    let start_ns: u64 = unsafe { read(leader + off.task_start_boottime as u64) }?;
    Ok(TaskFacts {
        ppid,
        loginuid,
        tty: u32::from(tty != 0),
        start_ns,
    })
}

fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // Per-CPU slot: no other writer can race us.
        unsafe { *n += 1 };
    }
}

/// Count a program run that failed part-way in `ERRORS`.
#[inline(always)]
fn counted<T>(result: Result<T, i64>) {
    if result.is_err()
        && let Some(n) = ERRORS.get_ptr_mut(0)
    {
        // Per-CPU slot, as in `count_lost`.
        unsafe { *n += 1 };
    }
}

/// Read a `T` at kernel address `addr`.
///
/// # Safety
/// `addr` comes from a kernel pointer walk; `bpf_probe_read_kernel` makes a
/// bad address an error instead of a fault.
#[inline(always)]
unsafe fn read<T>(addr: u64) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(i64::from)
}

/// `current->files->fdt->fd[fd]`, or 0 when out of range.
unsafe fn current_fd_file(off: &KernelOffsets, fd: u32) -> Result<u64, i64> {
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = unsafe { read(task + off.task_files as u64) }?;
    let fdt: u64 = unsafe { read(files + off.files_fdt as u64) }?;
    let max_fds: u32 = unsafe { read(fdt + off.fdtable_max_fds as u64) }?;
    if fd >= max_fds {
        return Ok(0);
    }
    let fd_array: u64 = unsafe { read(fdt + off.fdtable_fd as u64) }?;
    unsafe { read(fd_array + u64::from(fd) * 8) }
}

/// (`inode->i_sb->s_dev`, `inode->i_ino`).
unsafe fn inode_key(off: &KernelOffsets, inode: u64, sb: u64) -> Result<FileKey, i64> {
    let ino: u64 = unsafe { read(inode + off.inode_i_ino as u64) }?;
    let dev: u32 = unsafe { read(sb + off.sb_s_dev as u64) }?;
    Ok(FileKey {
        dev: u64::from(dev),
        ino,
    })
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
