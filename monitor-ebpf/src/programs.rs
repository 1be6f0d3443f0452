//! Kernel programs of secretmon.
//!
//! Tracepoints only: they load on every kernel >= 5.8 with BTF and need no
//! BPF LSM. Only accesses to watched files and process lifecycle events cross
//! to userspace, through one ring buffer; a failed reservation is counted in
//! `LOST` because the kernel does not count it for us.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use monitor_common::{
    EventHeader, EventKind, ExecEvent, FileKey, ForkEvent, KernelOffsets, NO_OFFSET, OpenEvent,
    UNSET_LOGINUID,
};

/// Field offsets from the running kernel's BTF, written by the agent.
#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    valid: 0,
    task_files: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_pid: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_loginuid: 0,
    task_signal: 0,
    signal_tty: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_f_inode: 0,
    file_f_flags: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    sb_s_dev: 0,
});

/// 4 MiB by default; the agent may resize it (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Files to report, filled and updated by the agent. Value: the agent's id.
#[map]
static WATCHED: HashMap<FileKey, u32> = HashMap::with_max_entries(65_536, 0);

/// Events that did not fit in `EVENTS`, per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// Layout of the syscall tracepoints (`struct syscall_trace_exit`): an 8-byte
// common header, the syscall number, then `long ret` at 16. This is the
// tracepoint ABI, unchanged since syscall tracepoints were added.
const SYS_EXIT_RET: usize = 16;
// `sched_process_exec`: `__data_loc char[] filename` at 8, `pid` at 12,
// `old_pid` at 16.
const EXEC_FILENAME_LOC: usize = 8;
const EXEC_OLD_PID: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
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
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let off = OFFSETS.load();
    if off.valid == 0 {
        return Ok(());
    }
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

fn on_open_exit(ctx: &TracePointContext) -> u32 {
    let _ = try_open_exit(ctx);
    0
}

fn try_open_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let ret: i64 = unsafe { ctx.read_at(SYS_EXIT_RET) }.map_err(i64::from)?;
    if ret < 0 {
        return Ok(());
    }
    let off = OFFSETS.load();
    if off.valid == 0 {
        return Ok(());
    }
    let file = unsafe { current_fd_file(&off, ret as u32) }?;
    if file == 0 {
        return Ok(());
    }
    let key = unsafe { file_key(&off, file) }?;
    if unsafe { WATCHED.get(&key) }.is_none() {
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
            }
            entry.submit(0);
        }
        None => count_lost(),
    }
    Ok(())
}

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
    }
    entry.submit(0);
    Ok(())
}

/// Fill the common header from `current`, in place in the reservation.
fn fill_header(h: *mut EventHeader, kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let off = OFFSETS.load();
    let task = unsafe { bpf_get_current_task() };
    let facts = unsafe { task_facts(&off, task) }.unwrap_or(TaskFacts {
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

/// (`file->f_inode->i_sb->s_dev`, `file->f_inode->i_ino`).
unsafe fn file_key(off: &KernelOffsets, file: u64) -> Result<FileKey, i64> {
    let inode: u64 = unsafe { read(file + off.file_f_inode as u64) }?;
    let ino: u64 = unsafe { read(inode + off.inode_i_ino as u64) }?;
    let sb: u64 = unsafe { read(inode + off.inode_i_sb as u64) }?;
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
