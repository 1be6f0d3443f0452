//! Sending events: the header every event starts with, the one function
//! that reserves, fills and submits a record, and the per-CPU counters of
//! what could not be sent or read.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
};
use monitor_common::{Data, Event, EventHeader, UNSET_LOGINUID, names::Program};

use crate::{
    kernel::{self, TaskFacts},
    maps::{ERRORS, EVENTS, LOST, WAKE_UP_BYTES},
};

/// Send one event of `T`: reserve it in the ring buffer, fill its header
/// from `current`, let `fill` write the data in place, submit. A full ring
/// buffer counts the event as lost. When `fill` fails the event is sent
/// with what it has, and the error returned for the program to count.
///
/// The reader is woken only when the pending data crosses a multiple of
/// `WAKE_UP_BYTES`; otherwise it finds the event on its timed poll. A
/// wake-up raises an irq_work, which costs ~10 µs on a virtual machine.
#[inline(always)]
pub fn emit<T: Data + 'static>(
    fill: impl FnOnce(*mut T) -> kernel::Result<()>,
) -> kernel::Result<()> {
    let Some(mut entry) = EVENTS.reserve::<Event<T>>(0) else {
        count_lost();
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the live reservation, sized for `Event<T>`.
    let filled = unsafe {
        fill_header(&raw mut (*ev).header, T::KIND as u32);
        fill(&raw mut (*ev).data)
    };
    entry.submit(wake_up_flag(size_of::<Event<T>>() as u64));
    filled
}

/// `BPF_RB_FORCE_WAKEUP` when the record just reserved (`size` bytes) took
/// the pending data past a multiple of `WAKE_UP_BYTES`, else
/// `BPF_RB_NO_WAKEUP`. Past a multiple, not above it: a reader that is
/// behind is not woken again by every event. A crossing missed because
/// another CPU reserved at the same time is caught at the next multiple.
#[inline(always)]
fn wake_up_flag(size: u64) -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let every = WAKE_UP_BYTES.field(|b| b).max(1);
    if pending / every != pending.saturating_sub(size) / every {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// A program's result: an error is counted for the agent to report.
#[inline(always)]
pub fn run(program: Program, result: kernel::Result<()>) {
    if result.is_err() {
        count(&ERRORS, program as u32);
    }
}

/// Rare, and never on the hot path: a failed reservation.
#[inline(always)]
fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: a live, 8-byte aligned map value; every writer adds to
        // it atomically (an `XADD`: the result is not used).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    }
}

#[inline(always)]
fn count(counters: &aya_ebpf::maps::PerCpuArray<u64>, index: u32) {
    if let Some(n) = counters.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: no other writer can race us.
        unsafe { *n += 1 };
    }
}

/// Fill the common header from `current`, in place in the reservation.
///
/// # Safety
/// `h` points into a live reservation.
unsafe fn fill_header(h: *mut EventHeader, kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // Read before the clock: a loss counted by now happened before
    // `boot_ns`, which the reader takes as the loss's time.
    let lost_before = LOST.get(0).copied().unwrap_or(0);
    // A failed read leaves the field at its "unknown" value.
    let facts = kernel::current_task_facts().unwrap_or(TaskFacts {
        ppid: 0,
        loginuid: UNSET_LOGINUID,
        tty: 0,
        start_ns: 0,
    });
    // SAFETY: plain helper calls; `h` is valid by the caller's contract.
    unsafe {
        (*h).kind = kind;
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
        (*h).lost_before = lost_before;
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}
