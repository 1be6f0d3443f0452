//! The environment of a new image, scanned in the kernel: only the names
//! of watched variables are reported, never a value.

use monitor_common::{
    ENV_NAME_LEN, ENV_NAMES_MAX, ENV_SUFFIX_LEN, ExecData,
    env_name::{EnvFilter, NAME_WORDS, NameScan},
};

use crate::{
    kernel::{self, ReadError},
    maps::{ENV_FILTER, ENV_SCRATCH, WATCHED_ENV, WATCHED_ENV_SUFFIX},
};

/// Bytes of one environment entry read at a time; an entry longer than this
/// ends the scan (flagged as truncated).
const ENV_ENTRY_MAX: usize = 4096;
/// Environment entries scanned per exec, at most.
const ENV_ENTRIES_MAX: u32 = 96;
/// The scratch name is longer than a name, so that masked indexing past its
/// end reads zeros.
const NAME_SCRATCH_LEN: usize = 64;

/// Per-CPU working memory of the scan: too big for the stack.
#[repr(C)]
pub struct EnvScratch {
    entry: [u8; ENV_ENTRY_MAX],
    /// The name, NUL-padded.
    name: [u8; NAME_SCRATCH_LEN],
    suffix: [u8; ENV_SUFFIX_LEN],
    state: NameScan,
    pos: u64,
}

/// Walk the environment entry by entry: the helper finds each entry's end,
/// and only the name (up to `=`) is looked at and, if watched, reported.
///
/// The per-word work is branch-free arithmetic: every branch on unknown
/// data leaves the verifier a path to explore later, and a byte loop over
/// many entries would exceed its limit on pending paths.
///
/// # Safety
/// `ev` points into a live reservation.
pub unsafe fn scan_env(ev: *mut ExecData, start: u64, end: u64) -> kernel::Result<()> {
    let scratch = ENV_SCRATCH.get_ptr_mut(0).ok_or(ReadError)?;
    // SAFETY: an array map's value, there while the program runs.
    let filter = unsafe { &*ENV_FILTER.get_ptr(0).ok_or(ReadError)? };
    let mut pos = start;
    for _ in 0..ENV_ENTRIES_MAX {
        if pos >= end {
            return Ok(());
        }
        // SAFETY: `entry` has room for `ENV_ENTRY_MAX` bytes. A failed read
        // (or an empty entry) ends the environment.
        let Ok(n) = (unsafe {
            kernel::user_str_raw((*scratch).entry.as_mut_ptr(), ENV_ENTRY_MAX as u32, pos)
        }) else {
            return Ok(());
        };
        let (name_len, has_eq, last_us, prev_us) = unsafe { copy_name(scratch) };
        if has_eq != 0 && name_len > 0 {
            let first = unsafe { (*scratch).name[0] };
            let watched = (filter.may_be_name(first, name_len)
                && unsafe {
                    WATCHED_ENV.get(&*(*scratch).name.as_ptr().cast::<[u8; ENV_NAME_LEN]>())
                }
                .is_some())
                || unsafe { suffix_watched(scratch, filter, name_len, last_us) }
                || unsafe { suffix_watched(scratch, filter, name_len, prev_us) };
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
        if n >= ENV_ENTRY_MAX {
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

/// Copy the entry's name into `scratch.name`, NUL-padded, eight bytes at a
/// time (see [`NameScan::fold`]), stopping after the word that ends it.
/// Returns (name length, 1 if a `=` ended it, position of the last `_`, of
/// the one before it), positions being `ENV_NAME_LEN` for none.
unsafe fn copy_name(scratch: *mut EnvScratch) -> (u64, u64, u64, u64) {
    let name = unsafe { (*scratch).name.as_mut_ptr().cast::<u64>() };
    let entry = unsafe { (*scratch).entry.as_ptr().cast::<u64>() };
    // The words after the name's end stay zero.
    for w in 0..NAME_WORDS {
        unsafe { core::ptr::write_volatile(name.add(w), 0) };
    }
    let mut st = NameScan::START;
    for w in 0..NAME_WORDS {
        // Volatile: one word at a time, so the compiler does not compute
        // them all at once and spill (kernels before 6.13 allow 512 bytes
        // of stack in all).
        let word = unsafe { core::ptr::read_volatile(entry.add(w)) };
        let kept = st.fold(w as u64, word);
        unsafe { core::ptr::write_volatile(name.add(w), kept) };
        // Launder the state through memory: the verifier forgets the value
        // ranges it derived, so the states of successive turns compare equal
        // and are pruned instead of piling up.
        unsafe {
            core::ptr::write_volatile(&raw mut (*scratch).state, st);
            st = core::ptr::read_volatile(&raw const (*scratch).state);
        }
        if st.found != 0 {
            break;
        }
    }
    (st.len, st.has_eq, st.last_us, st.prev_us)
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
