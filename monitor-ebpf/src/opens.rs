//! The open hooks: the open-family syscall tracepoints, the `file_open` LSM
//! hook and fexit on `do_filp_open`, the io_uring submit tracepoint, and
//! what each reports: watched files, other processes' environments, name
//! rule matches and denied opens.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, lsm, tracepoint},
    programs::{FExitContext, LsmContext, TracePointContext},
};
use monitor_common::{
    CAPTURE_LSM_OPENS, DeniedOpenData, EnvironReadData, FileKey, IoUringOpenData, OpenData,
    VIA_IO_URING, VIA_OTHER, VIA_SYSCALL,
    abi::{
        AT_FDCWD, CREAT_FLAGS, EACCES, EPERM, IORING_OP_OPENAT, IORING_OP_OPENAT2, MAX_ERRNO,
        NR_CREAT, NR_IO_URING_ENTER, NR_OPEN, NR_OPEN_BY_HANDLE_AT, NR_OPENAT, NR_OPENAT2,
        OVERLAYFS_SUPER_MAGIC, PF_IO_WORKER, PROC_SUPER_MAGIC,
    },
    names::Program,
    watched_inode_bit,
};

use crate::{
    emit::{emit, run},
    kernel::{self, File, FileFacts, Filename, OpenFlags, ReadError, Task, UserRegs},
    maps::{CAPTURE, IO_URING, IO_URING_SEEN, OPEN_ARGS, WATCHED, WATCHED_INODES},
    name_rules::name_rule_open,
    path_walk::walk_path,
};

// Layout of the syscall tracepoints (`struct syscall_trace_exit`): an 8-byte
// common header, the syscall number, then `long ret` at 16. This is the
// tracepoint ABI, unchanged since syscall tracepoints were added.
const SYS_EXIT_RET: usize = 16;
// `struct syscall_trace_enter`: the arguments, 8 bytes each, from 16.
const SYS_ENTER_ARG0: usize = 16;
const SYS_ENTER_ARG1: usize = 24;
const SYS_ENTER_ARG2: usize = 32;

/// An open's arguments, kept from its start for a denied open's report.
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

impl PendingOpen {
    fn user(filename: u64, flags: u32, dfd: i32) -> Self {
        Self {
            filename,
            flags,
            dfd,
            kernel_name: 0,
            _pad: 0,
        }
    }
}

/// An argument of a syscall enter tracepoint.
#[inline(always)]
fn enter_arg(ctx: &TracePointContext, at: usize) -> u64 {
    // SAFETY: within the tracepoint's fixed record, aligned.
    unsafe { kernel::record(ctx, at) }
}

/// A syscall exit tracepoint's return value.
#[inline(always)]
fn exit_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: within the tracepoint's fixed record, aligned.
    unsafe { kernel::record(ctx, SYS_EXIT_RET) }
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let (dfd, name, flags) = (
        enter_arg(&ctx, SYS_ENTER_ARG0),
        enter_arg(&ctx, SYS_ENTER_ARG1),
        enter_arg(&ctx, SYS_ENTER_ARG2),
    );
    let pending = PendingOpen::user(name, flags as u32, dfd as i32);
    run(Program::SysEnterOpenat, remember_open(&pending));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let (name, flags) = (
        enter_arg(&ctx, SYS_ENTER_ARG0),
        enter_arg(&ctx, SYS_ENTER_ARG1),
    );
    let pending = PendingOpen::user(name, flags as u32, AT_FDCWD);
    run(Program::SysEnterOpen, remember_open(&pending));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    let pending = PendingOpen::user(enter_arg(&ctx, SYS_ENTER_ARG0), CREAT_FLAGS, AT_FDCWD);
    run(Program::SysEnterCreat, remember_open(&pending));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let (dfd, name, how) = (
        enter_arg(&ctx, SYS_ENTER_ARG0),
        enter_arg(&ctx, SYS_ENTER_ARG1),
        enter_arg(&ctx, SYS_ENTER_ARG2),
    );
    // `struct open_how` starts with `__u64 flags`; a bad pointer fails the
    // syscall with EFAULT, which is not reported.
    let flags: u64 = kernel::user(how).unwrap_or(0);
    let pending = PendingOpen::user(name, flags as u32, dfd as i32);
    run(Program::SysEnterOpenat2, remember_open(&pending));
    0
}

#[inline(always)]
fn remember_open(pending: &PendingOpen) -> kernel::Result<()> {
    OPEN_ARGS
        .insert(&bpf_get_current_pid_tgid(), pending, 0)
        .map_err(|_| ReadError)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, Program::SysExitOpenat, ArgsFrom::EnterHook)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, Program::SysExitOpen, ArgsFrom::EnterHook)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, Program::SysExitOpenat2, ArgsFrom::EnterHook)
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx, Program::SysExitCreat, ArgsFrom::EnterHook)
}

// The same exits for kernels with `bpf_task_pt_regs` (5.15+): a denied
// open's arguments come from the registers saved at syscall entry, so no
// enter hook runs on every open. The agent loads one set or the other.

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat_regs(ctx: TracePointContext) -> u32 {
    let from = ArgsFrom::Registers(OpenSyscall::OpenAt);
    on_open_exit(&ctx, Program::SysExitOpenatRegs, from)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open_regs(ctx: TracePointContext) -> u32 {
    let from = ArgsFrom::Registers(OpenSyscall::Open);
    on_open_exit(&ctx, Program::SysExitOpenRegs, from)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2_regs(ctx: TracePointContext) -> u32 {
    let from = ArgsFrom::Registers(OpenSyscall::OpenAt2);
    on_open_exit(&ctx, Program::SysExitOpenat2Regs, from)
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat_regs(ctx: TracePointContext) -> u32 {
    let from = ArgsFrom::Registers(OpenSyscall::Creat);
    on_open_exit(&ctx, Program::SysExitCreatRegs, from)
}

/// `open_by_handle_at(2)`: an open by file handle, which names no path, so
/// a denial has nothing to report; a success is reported as any open.
/// Not attached with the LSM hook, which sees these opens itself.
#[tracepoint(category = "syscalls", name = "sys_exit_open_by_handle_at")]
pub fn sys_exit_open_by_handle_at(ctx: TracePointContext) -> u32 {
    let program = Program::SysExitOpenByHandleAt;
    let ret = exit_ret(&ctx);
    if ret >= 0 {
        run(program, opened_fd(program, ret, FileReads::Probe));
    }
    0
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

#[inline(always)]
fn on_open_exit(ctx: &TracePointContext, program: Program, from: ArgsFrom) -> u32 {
    run(program, open_exit(ctx, program, from));
    0
}

#[inline(always)]
fn open_exit(ctx: &TracePointContext, program: Program, from: ArgsFrom) -> kernel::Result<()> {
    let ret = exit_ret(ctx);
    if ret < 0 && ret != -i64::from(EACCES) && ret != -i64::from(EPERM) {
        return Ok(());
    }
    if ret >= 0 && lsm_reports_opens() {
        return Ok(());
    }
    if ret < 0 {
        let args = match from {
            ArgsFrom::EnterHook => {
                // SAFETY: a copy out of the map's value.
                unsafe { OPEN_ARGS.get(&bpf_get_current_pid_tgid()) }.copied()
            }
            ArgsFrom::Registers(syscall) => Some(args_from_regs(syscall)?),
        };
        return match args {
            Some(args) => denied_open(ret, &args),
            None => Ok(()),
        };
    }
    let reads = match from {
        // The kernels with `bpf_task_pt_regs` have `bpf_get_current_task_btf`.
        ArgsFrom::Registers(_) => FileReads::Direct,
        ArgsFrom::EnterHook => FileReads::Probe,
    };
    opened_fd(program, ret, reads)
}

/// How a syscall exit reads the file it opened.
#[derive(Clone, Copy)]
enum FileReads {
    /// `kernel::current_file_facts` (5.11+).
    Direct,
    Probe,
}

/// A syscall's successful open of new fd `ret`.
#[inline(always)]
fn opened_fd(program: Program, ret: i64, reads: FileReads) -> kernel::Result<()> {
    let fd = ret as u32;
    let facts = match reads {
        FileReads::Direct => kernel::current_file_facts(fd)?,
        FileReads::Probe => Task::current().file(fd)?.map(File::facts).transpose()?,
    };
    match facts {
        Some(facts) => opened_file(program, &facts, ret, VIA_SYSCALL),
        None => Ok(()),
    }
}

/// The open's arguments from the user registers saved at syscall entry.
#[inline(always)]
fn args_from_regs(syscall: OpenSyscall) -> kernel::Result<PendingOpen> {
    let [arg0, arg1, arg2] = UserRegs::current().args()?;
    Ok(match syscall {
        OpenSyscall::Open => PendingOpen::user(arg0, arg1 as u32, AT_FDCWD),
        OpenSyscall::Creat => PendingOpen::user(arg0, CREAT_FLAGS, AT_FDCWD),
        OpenSyscall::OpenAt => PendingOpen::user(arg1, arg2 as u32, arg0 as i32),
        // `struct open_how` starts with `__u64 flags`; it was read by the
        // syscall, so it is readable.
        OpenSyscall::OpenAt2 => {
            PendingOpen::user(arg1, kernel::user::<u64>(arg2)? as u32, arg0 as i32)
        }
    })
}

#[inline(always)]
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
        let opened = File::at(ctx.arg(0))
            .facts()
            .and_then(|facts| opened_file(Program::FileOpen, &facts, 0, hook_via()));
        run(Program::FileOpen, opened);
    }
    previous
}

/// `struct file *do_filp_open(int dfd, struct filename *pathname,
/// const struct open_flags *op)`: every open by path, from any syscall or
/// io_uring, with its result. Replaces the syscall tracepoints where it
/// loads, so other syscalls stay on their fast path.
#[fexit(function = "do_filp_open")]
pub fn do_filp_open_exit(ctx: FExitContext) -> i32 {
    run(Program::DoFilpOpenExit, filp_open_exit(&ctx));
    0
}

#[inline(always)]
fn filp_open_exit(ctx: &FExitContext) -> kernel::Result<()> {
    let ret: i64 = ctx.arg(3);
    // A `struct file *` or an `ERR_PTR`; kernel pointers are negative too.
    let failed = (-MAX_ERRNO..0).contains(&ret);
    let denied = ret == -i64::from(EACCES) || ret == -i64::from(EPERM);
    if ret == 0 || (failed && !denied) {
        return Ok(());
    }
    if failed {
        let dfd: i64 = ctx.arg(0);
        let args = PendingOpen {
            filename: Filename::at(ctx.arg(1)).name()?,
            flags: OpenFlags::at(ctx.arg(2)).open_flag()?,
            dfd: dfd as i32,
            kernel_name: 1,
            _pad: 0,
        };
        return denied_open(ret, &args);
    }
    let facts = File::at(ret as u64).facts()?;
    opened_file(Program::DoFilpOpenExit, &facts, 0, hook_via())
}

/// How the open in progress reached a hook inside the kernel's open: an
/// io_uring worker, or the syscall the current task is in.
#[inline(always)]
fn hook_via() -> u32 {
    let task = Task::current();
    if task.flags().is_ok_and(|f| f & PF_IO_WORKER != 0) {
        return VIA_IO_URING;
    }
    match UserRegs::current().syscall() {
        Ok(NR_OPEN | NR_OPENAT | NR_OPENAT2 | NR_CREAT | NR_OPEN_BY_HANDLE_AT) => VIA_SYSCALL,
        Ok(NR_IO_URING_ENTER) => VIA_IO_URING,
        _ => VIA_OTHER,
    }
}

/// A successful open of the file of `facts`: report it if it is watched
/// (itself, or the layer's file behind an overlayfs file), an environ read,
/// or a name-rule match. `ret` is the new fd, or 0 from a hook.
#[inline(always)]
fn opened_file(program: Program, facts: &FileFacts, ret: i64, via: u32) -> kernel::Result<()> {
    let (file, key) = (facts.file, facts.key());
    if watched(&key) {
        return watched_open(file, key, ret, via);
    }
    if facts.magic == PROC_SUPER_MAGIC {
        return proc_open(facts);
    }
    // Through an overlay mount (a container's image layers) a file has the
    // overlay's device and inode: the layer's file is the watched one.
    if facts.magic == OVERLAYFS_SUPER_MAGIC
        && let Some(layer) = file.overlay_layer_file()?
    {
        let layer_key = layer.key()?;
        if watched(&layer_key) {
            return watched_open(file, layer_key, ret, via);
        }
    }
    name_rule_open(program, facts, &key, ret, via);
    Ok(())
}

#[inline(always)]
fn watched(key: &FileKey) -> bool {
    let (word, bit) = watched_inode_bit(key.ino);
    if WATCHED_INODES.get(word).is_none_or(|w| w & bit == 0) {
        return false;
    }
    // SAFETY: only tested for presence.
    unsafe { WATCHED.get(key) }.is_some()
}

/// Report the open of watched file `key` through `file`.
#[inline(always)]
fn watched_open(file: File, key: FileKey, ret: i64, via: u32) -> kernel::Result<()> {
    let flags = file.flags()?;
    emit(|ev: *mut OpenData| {
        // SAFETY: `ev` points into the reservation.
        unsafe {
            ev.write(OpenData {
                key,
                flags,
                ret: ret as i32,
                via,
                _pad: 0,
            })
        };
        Ok(())
    })
}

/// A successful open on procfs: report `/proc/<pid>/environ` of another
/// process. The parent dentry's name is the target pid.
#[inline(always)]
fn proc_open(facts: &FileFacts) -> kernel::Result<()> {
    let dentry = facts.dentry;
    if facts.name_len != 7 || &facts.name.bytes::<7>()? != b"environ" {
        return Ok(());
    }
    let parent = dentry.parent()?;
    let len = parent.name_len()?;
    let digits: [u8; 10] = parent.name()?.bytes().unwrap_or([0; 10]);
    let mut target: u32 = 0;
    for (i, &d) in digits.iter().enumerate() {
        if i as u32 >= len {
            break;
        }
        if !d.is_ascii_digit() {
            return Ok(());
        }
        target = target.wrapping_mul(10).wrapping_add(u32::from(d - b'0'));
    }
    if target == 0 || target == kernel::current_tgid() {
        return Ok(());
    }
    emit(|ev: *mut EnvironReadData| {
        // SAFETY: `ev` points into the reservation.
        unsafe {
            ev.write(EnvironReadData {
                target_pid: target,
                _pad: 0,
            })
        };
        Ok(())
    })
}

/// An open refused with EACCES/EPERM: report what was asked for. Only
/// denials cross, not the far commoner ENOENT of path searches.
#[inline(never)]
fn denied_open(ret: i64, args: &PendingOpen) -> kernel::Result<()> {
    emit(|ev: *mut DeniedOpenData| {
        // SAFETY: `ev` points into the reservation; fields are written in
        // place, the name and the walk straight into it.
        unsafe {
            let name = if args.kernel_name != 0 {
                kernel::kernel_str(args.filename, &mut (*ev).filename)
            } else {
                kernel::user_str(args.filename, &mut (*ev).filename)
            };
            let len = name.unwrap_or(0) as u32;
            (*ev).flags = args.flags;
            (*ev).ret = ret as i32;
            (*ev).dfd = args.dfd;
            (*ev).filename_len = len;
            (*ev).base.depth = 0;
            (*ev).base.truncated = 0;
            // A relative name: walk the directory it is relative to now,
            // while the process exists; the agent may look only after it
            // is gone.
            if len > 0 && (*ev).filename[0] != b'/' {
                let task = Task::current();
                let base = if args.dfd == AT_FDCWD {
                    task.cwd()
                } else {
                    task.file(args.dfd as u32)
                        .and_then(|f| f.ok_or(ReadError))
                        .and_then(File::path)
                };
                match base {
                    Ok(path) => walk_path(path, &raw mut (*ev).base),
                    Err(_) => (*ev).base.truncated = 1,
                }
            }
        }
        Ok(())
    })
}

/// io_uring opens bypass the syscall tracepoints: report processes that
/// submit them. Attached by the agent to `io_uring:io_uring_submit_req`
/// (`io_uring_submit_sqe` before 5.19).
#[tracepoint]
pub fn io_uring_submit(ctx: TracePointContext) -> u32 {
    run(Program::IoUringSubmit, io_uring_open(&ctx));
    0
}

#[inline(always)]
fn io_uring_open(ctx: &TracePointContext) -> kernel::Result<()> {
    let at = IO_URING.field(|l| unsafe { &raw const (*l).opcode_offset });
    if at == u32::MAX {
        return Ok(());
    }
    // SAFETY: the agent read the offset from this tracepoint's format.
    let opcode: u8 = unsafe { ctx.read_at(at as usize) }.map_err(|_| ReadError)?;
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return Ok(());
    }
    let tgid = kernel::current_tgid();
    // SAFETY: only tested for presence.
    if unsafe { IO_URING_SEEN.get(&tgid) }.is_some() {
        return Ok(());
    }
    IO_URING_SEEN.insert(&tgid, &1, 0).map_err(|_| ReadError)?;
    emit(|ev: *mut IoUringOpenData| {
        // SAFETY: `ev` points into the reservation.
        unsafe {
            ev.write(IoUringOpenData {
                opcode: u32::from(opcode),
                _pad: 0,
            })
        };
        Ok(())
    })
}
