//! The environment of a new image, scanned in the kernel: only the names
//! of watched variables are reported, never a value.
//!
//! Two ways, one per kind of verifier (see `ENV_FROM_ENVP`): where it
//! prunes well, the `envp` pointers that exec left on the new stack say
//! where each entry starts, so one read of the environment serves all its
//! entries; elsewhere each entry is read alone (the helper finding its
//! end), at ~195 ns each.

use monitor_common::{
    ENV_NAME_LEN, ENV_NAMES_MAX, ENV_SUFFIX_LEN, ExecData,
    env_name::{EnvFilter, NAME_WORDS, NameScan},
};

use crate::{
    kernel::{self, Mm, ReadError},
    maps::{ENV_FILTER, ENV_FROM_ENVP, ENV_SCRATCH, WATCHED_ENV, WATCHED_ENV_SUFFIX},
};

/// Bytes of one environment entry read at a time by the walk; an entry
/// longer than this ends it (flagged as truncated).
const ENV_ENTRY_MAX: usize = 4096;
/// Environment entries scanned per exec, at most.
const ENV_ENTRIES_MAX: usize = 96;
/// Bytes of the environment read at once, at most: entries past them are
/// not scanned (the event is flagged as truncated).
const ENV_BULK: usize = 16384;
/// Bytes from an entry's start that can hold its name and `=`.
const NAME_WINDOW: usize = NAME_WORDS * 8;
/// Offsets into `bulk` are masked to this.
const BULK_MASK: u64 = (ENV_BULK - 1) as u64;
/// `envp` indices are masked to this.
const ENVP_MASK: u64 = 127;
/// `argc` above this is taken for a layout other than the one expected.
const ARGC_MAX: u64 = 1 << 24;
/// The scratch name is longer than a name, so that masked indexing past its
/// end reads zeros.
const NAME_SCRATCH_LEN: usize = 64;

/// Per-CPU working memory of the scan: too big for the stack.
#[repr(C)]
pub struct EnvScratch {
    /// The environment's first `ENV_BULK` bytes, and room for a name
    /// window past any masked offset; the walk reads each entry here.
    bulk: [u8; ENV_BULK + NAME_WINDOW],
    /// The new image's `envp`: where each entry starts (indices are masked
    /// to its length).
    envp: [u64; ENVP_MASK as usize + 1],
    /// The next of them.
    next: u64,
    /// The name, NUL-padded.
    name: [u8; NAME_SCRATCH_LEN],
    suffix: [u8; ENV_SUFFIX_LEN],
    state: NameScan,
    /// The entry's offset in `bulk`, or the walk's position in the
    /// environment: laundered (see [`launder`]).
    off: u64,
    bounds: ListBounds,
}

/// What [`scan_listed`] compares each entry with.
#[derive(Clone, Copy)]
#[repr(C)]
struct ListBounds {
    /// `envp` pointers read.
    listed: u64,
    /// The environment's start.
    start: u64,
    /// Entries starting at this offset or past it are not scanned: the
    /// environment's length when `bulk` holds it all, else where a name
    /// window would cross the end of what `bulk` holds.
    limit: u64,
}

/// `value`, stored at `slot` and loaded back: the verifier knows nothing of
/// it but its type.
///
/// # Safety
/// `slot` is valid for writes and reads.
#[inline(always)]
unsafe fn launder<T: Copy>(slot: *mut T, value: T) -> T {
    unsafe {
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot)
    }
}

/// Report the watched names among the entries of the environment
/// `start..end` of the new image of `mm`, whose argv starts at `arg_start`.
///
/// Through `envp` where the pointers point into the environment (a 32-bit
/// process's are four bytes wide: its environment is not scanned, and the
/// event is flagged as truncated); else entry by entry.
///
/// # Safety
/// `ev` points into a live reservation.
pub unsafe fn scan_env(
    ev: *mut ExecData,
    mm: Mm,
    arg_start: u64,
    start: u64,
    end: u64,
) -> kernel::Result<()> {
    if start >= end {
        return Ok(());
    }
    let scratch = ENV_SCRATCH.get_ptr_mut(0).ok_or(ReadError)?;
    // SAFETY: an array map's value, there while the program runs.
    let filter = unsafe { &*ENV_FILTER.get_ptr(0).ok_or(ReadError)? };
    // Read-only: the verifier walks only the way taken.
    if ENV_FROM_ENVP.field(|v| v) == 0 {
        return unsafe { scan_walk(ev, scratch, filter, start, end) };
    }
    match unsafe { read_envp(scratch, mm, arg_start, start) } {
        Some(listed) => unsafe { scan_listed(ev, scratch, filter, listed, start, end) },
        None => {
            unsafe { (*ev).env_truncated = 1 };
            Ok(())
        }
    }
}

/// Read the `envp` pointers into `scratch.envp`, as many as fit below
/// argv's strings. Returns how many were read, or `None` when the first
/// does not point at the environment's start.
#[inline(always)]
unsafe fn read_envp(scratch: *mut EnvScratch, mm: Mm, arg_start: u64, start: u64) -> Option<u64> {
    // `argc`, then `argc` argv pointers and a NULL, then `envp`.
    let sp = mm.start_stack().ok()?;
    let argc: u64 = kernel::user(sp).ok()?;
    if argc > ARGC_MAX {
        return None;
    }
    let at = sp + 8 * (argc + 2);
    let bytes = arg_start
        .saturating_sub(at)
        .min((8 * (ENV_ENTRIES_MAX + 1)) as u64);
    // SAFETY: `envp` has room for `8 * (ENV_ENTRIES_MAX + 1)` bytes.
    unsafe { kernel::user_bytes((*scratch).envp.as_mut_ptr().cast(), bytes as u32, at) }.ok()?;
    let listed = bytes / 8;
    (listed > 0 && unsafe { (*scratch).envp[0] } == start).then_some(listed)
}

/// The entries `envp` lists, the first `ENV_BULK` bytes of the environment
/// read at once.
#[inline(always)]
unsafe fn scan_listed(
    ev: *mut ExecData,
    scratch: *mut EnvScratch,
    filter: &EnvFilter,
    listed: u64,
    start: u64,
    end: u64,
) -> kernel::Result<()> {
    let total = end - start;
    let read = total.min(ENV_BULK as u64);
    // SAFETY: `bulk` has room for `ENV_BULK` bytes.
    unsafe { kernel::user_bytes((*scratch).bulk.as_mut_ptr(), read as u32, start) }?;
    // Read in full, the environment ends every entry (NUL) inside `bulk`.
    // Cut short, it may not end an entry near the cut.
    let limit = if read == total {
        total
    } else {
        read - NAME_WINDOW as u64
    };
    let mut next = 0;
    let bounds = ListBounds {
        listed,
        start,
        limit,
    };
    for _ in 0..ENV_ENTRIES_MAX {
        // Laundered through memory each turn, like the name scan's state
        // (see there): what one turn's comparisons taught the verifier
        // about them would keep the next turns' states from comparing equal.
        let b = unsafe { launder(&raw mut (*scratch).bounds, bounds) };
        let i = unsafe { launder(&raw mut (*scratch).next, next) };
        if i >= b.listed {
            break;
        }
        next = i + 1;
        let entry = unsafe { (*scratch).envp[(i & ENVP_MASK) as usize] };
        if entry == 0 {
            return Ok(());
        }
        let off = entry.wrapping_sub(b.start);
        if off >= b.limit {
            unsafe { (*ev).env_truncated = 1 };
            return Ok(());
        }
        let off = unsafe { launder(&raw mut (*scratch).off, off) };
        if !unsafe { note_entry(ev, scratch, filter, off) } {
            return Ok(());
        }
    }
    // More entries than scanned, or than pointers read.
    if listed <= ENV_ENTRIES_MAX as u64 || unsafe { (*scratch).envp[ENV_ENTRIES_MAX] } != 0 {
        unsafe { (*ev).env_truncated = 1 };
    }
    Ok(())
}

/// Walk the environment entry by entry: the helper finds each entry's end.
///
/// The per-word work is branch-free arithmetic: every branch on unknown
/// data leaves the verifier a path to explore later, and a byte loop over
/// many entries would exceed its limit on pending paths.
#[inline(always)]
unsafe fn scan_walk(
    ev: *mut ExecData,
    scratch: *mut EnvScratch,
    filter: &EnvFilter,
    start: u64,
    end: u64,
) -> kernel::Result<()> {
    let mut pos = start;
    for _ in 0..ENV_ENTRIES_MAX {
        if pos >= end {
            return Ok(());
        }
        // SAFETY: `bulk` has room for `ENV_ENTRY_MAX` bytes. A failed read
        // (or an empty entry) ends the environment.
        let Ok(n) = (unsafe {
            kernel::user_str_raw((*scratch).bulk.as_mut_ptr(), ENV_ENTRY_MAX as u32, pos)
        }) else {
            return Ok(());
        };
        if !unsafe { note_entry(ev, scratch, filter, 0) } {
            return Ok(());
        }
        if n >= ENV_ENTRY_MAX {
            // An entry longer than the scratch: its end is unknown.
            unsafe { (*ev).env_truncated = 1 };
            return Ok(());
        }
        pos = unsafe { launder(&raw mut (*scratch).off, pos + n as u64) };
    }
    if pos < end {
        unsafe { (*ev).env_truncated = 1 };
    }
    Ok(())
}

/// Look at the name of the entry at `bulk[off..]` and report it if it is
/// watched. Returns `false` when the event has no room left for it.
#[inline(always)]
unsafe fn note_entry(
    ev: *mut ExecData,
    scratch: *mut EnvScratch,
    filter: &EnvFilter,
    off: u64,
) -> bool {
    let (name_len, has_eq, last_us, prev_us) = unsafe { copy_name(scratch, off) };
    if has_eq == 0 || name_len == 0 {
        return true;
    }
    let first = unsafe { (*scratch).name[0] };
    let watched = (filter.may_be_name(first, name_len)
        && unsafe { WATCHED_ENV.get(&*(*scratch).name.as_ptr().cast::<[u8; ENV_NAME_LEN]>()) }
            .is_some())
        || unsafe { suffix_watched(scratch, filter, name_len, last_us) }
        || unsafe { suffix_watched(scratch, filter, name_len, prev_us) };
    if !watched {
        return true;
    }
    let count = unsafe { (*ev).env_count } as usize;
    if count >= ENV_NAMES_MAX {
        unsafe { (*ev).env_truncated = 1 };
        return false;
    }
    unsafe {
        let name = &*(*scratch).name.as_ptr().cast::<[u8; ENV_NAME_LEN]>();
        (*ev).env_names[count & (ENV_NAMES_MAX - 1)] = *name;
        (*ev).env_count = count as u32 + 1;
    }
    true
}

/// Copy the name of the entry at `bulk[off..]` into `scratch.name`,
/// NUL-padded, eight bytes at a time (see [`NameScan::fold`]), stopping
/// after the word that ends it.
/// Returns (name length, 1 if a `=` ended it, position of the last `_`, of
/// the one before it), positions being `ENV_NAME_LEN` for none.
unsafe fn copy_name(scratch: *mut EnvScratch, off: u64) -> (u64, u64, u64, u64) {
    let name = unsafe { (*scratch).name.as_mut_ptr().cast::<u64>() };
    let entry = unsafe { (*scratch).bulk.as_ptr().add((off & BULK_MASK) as usize) };
    // The words after the name's end stay zero.
    for w in 0..NAME_WORDS {
        unsafe { core::ptr::write_volatile(name.add(w), 0) };
    }
    let mut st = NameScan::START;
    for w in 0..NAME_WORDS {
        // One word at a time (the load is an `asm!` with effects: not
        // moved), so the compiler does not compute them all at once and
        // spill (kernels before 6.13 allow 512 bytes of stack in all).
        let word = unsafe { load_u64(entry.add(8 * w)) };
        let kept = st.fold(w as u64, word);
        unsafe { core::ptr::write_volatile(name.add(w), kept) };
        // Laundered: the verifier forgets the value ranges it derived, so
        // the states of successive turns compare equal and are pruned
        // instead of piling up.
        st = unsafe { launder(&raw mut (*scratch).state, st) };
        if st.found != 0 {
            break;
        }
    }
    (st.len, st.has_eq, st.last_us, st.prev_us)
}

/// The 8 bytes at `p`, wherever they are: one load, where an unaligned
/// load in Rust compiles to eight byte loads for the BPF target. The
/// kernel lets a program load unaligned on the architectures the agent
/// runs on (x86_64, arm64).
///
/// # Safety
/// `p` is valid for 8 bytes.
#[inline(always)]
unsafe fn load_u64(p: *const u8) -> u64 {
    let v: u64;
    // SAFETY: by the caller's contract; the load does not write.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({p} + 0)",
            v = out(reg) v,
            p = in(reg) p,
            options(nostack, readonly, preserves_flags)
        );
    }
    v
}

/// Is the name, `len` bytes long, from `from` on a watched suffix? `from`
/// is a `_` position, `ENV_NAME_LEN` for none: a name without one is not
/// looked up, nor one whose suffix fails the filter.
/// Inlined: a call from `exec_args` would stack its frame on that one's.
#[inline(always)]
unsafe fn suffix_watched(
    scratch: *mut EnvScratch,
    filter: &EnvFilter,
    len: u64,
    from: u64,
) -> bool {
    if from >= ENV_NAME_LEN as u64 {
        return false;
    }
    // Hidden from the compiler, which knows `from < ENV_NAME_LEN` from the
    // check above and would drop the masks below; older verifiers need them.
    let from = unsafe { core::ptr::read_volatile(&from) };
    let after = unsafe { (*scratch).name[(from as usize + 1) & (NAME_SCRATCH_LEN - 1)] };
    if !filter.may_be_suffix(after, len.wrapping_sub(from)) {
        return false;
    }
    for t in 0..ENV_SUFFIX_LEN {
        let i = (from as usize + t) & (NAME_SCRATCH_LEN - 1);
        unsafe { (*scratch).suffix[t] = (*scratch).name[i] };
    }
    unsafe { WATCHED_ENV_SUFFIX.get(&(*scratch).suffix) }.is_some()
}
