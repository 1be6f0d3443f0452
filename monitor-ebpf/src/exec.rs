//! Process lifecycle: exec (filename, argv, watched environment names),
//! fork of a new process, exit of a process.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use monitor_common::{ARGS_LEN, ExecData, ForkData, names::Program};

use crate::{
    emit::{emit, run},
    env_scan::scan_env,
    kernel::{self, ReadError, Task},
};

// `sched_process_exec`: `__data_loc char[] filename` at 8, `pid` at 12,
// `old_pid` at 16.
const EXEC_FILENAME_LOC: usize = 8;
const EXEC_OLD_PID: usize = 16;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    run(Program::SchedProcessExec, exec(&ctx));
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Threads exit one by one; only the leader's exit ends the process.
    if pid_tgid as u32 == (pid_tgid >> 32) as u32 {
        run(Program::SchedProcessExit, emit(|_: *mut ()| Ok(())));
    }
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
/// as a raw tracepoint: the task pointers tell a new process from a thread.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    run(Program::SchedProcessFork, fork(&ctx));
    0
}

#[inline(always)]
fn fork(ctx: &RawTracePointContext) -> kernel::Result<()> {
    let child = Task::at(ctx.arg(1));
    let pid = child.pid()?;
    if pid != child.tgid()? {
        return Ok(());
    }
    emit(|ev: *mut ForkData| {
        // SAFETY: `ev` points into the reservation.
        unsafe {
            ev.write(ForkData {
                child_pid: pid,
                _pad: 0,
            })
        };
        Ok(())
    })
}

/// Inlined: a frame of its own would stack on `exec_args`'s.
#[inline(always)]
fn exec(ctx: &TracePointContext) -> kernel::Result<()> {
    // SAFETY: within the tracepoint's fixed record.
    let loc: u32 = unsafe { ctx.read_at(EXEC_FILENAME_LOC) }.map_err(|_| ReadError)?;
    let old_pid: u32 = unsafe { ctx.read_at(EXEC_OLD_PID) }.map_err(|_| ReadError)?;
    emit(|ev: *mut ExecData| {
        // SAFETY: `ev` points into the reservation; the filename is in the
        // tracepoint's record, at the offset its `__data_loc` gives.
        unsafe {
            let src = ctx.as_ptr() as u64 + u64::from(loc & 0xffff);
            let len = kernel::kernel_str(src, &mut (*ev).filename).unwrap_or(0);
            (*ev).old_pid = old_pid;
            (*ev).filename_len = len as u32;
            (*ev).args_len = 0;
            (*ev).args_truncated = 0;
            (*ev).env_count = 0;
            (*ev).env_truncated = 0;
            // A failed read leaves the event with what it has.
            exec_args(ev)
        }
    })
}

/// argv, and the names of watched variables in the environment, from the
/// new image's `mm` (the user pointers of `execve` are gone by now).
/// Not inlined: its spills get a frame of their own, off the stack of the
/// program's other calls (kernels before 6.13 cap the sum at 512 bytes).
///
/// # Safety
/// `ev` points into a live reservation.
#[inline(never)]
unsafe fn exec_args(ev: *mut ExecData) -> kernel::Result<()> {
    let mm = Task::current().mm()?;
    let (arg_start, arg_end) = mm.args()?;
    let mut n = arg_end.saturating_sub(arg_start);
    if n > ARGS_LEN as u64 {
        n = ARGS_LEN as u64;
        unsafe { (*ev).args_truncated = 1 };
    }
    // SAFETY: `args` has room for `ARGS_LEN` bytes.
    let args = unsafe { kernel::user_bytes((*ev).args.as_mut_ptr(), n as u32, arg_start) };
    if args.is_ok() {
        unsafe { (*ev).args_len = n as u32 };
    }
    // Counted now, and the environment scanned anyway: a result kept until
    // the end would double the paths the verifier walks through the scan.
    run(Program::SchedProcessExec, args);
    let (env_start, env_end) = mm.env()?;
    unsafe { scan_env(ev, mm, arg_start, env_start, env_end) }
}
