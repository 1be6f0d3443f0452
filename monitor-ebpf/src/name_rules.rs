//! Credential-file name rules, applied to opens of files not in the watch
//! map: cheap tests on the name's first and last bytes first, so most opens
//! cost a few reads; then the rule lookup, the parent check and the path
//! walk of a match.

use aya_ebpf::maps::lpm_trie::Key;
use monitor_common::{
    FileKey, NameRuleOpenData, RULE_NAME_LEN, RULE_PARENT_LEN, SUFFIX_RULES_MAX, names::Program,
};

use crate::{
    emit::{emit, run},
    kernel::{self, FileFacts, ReadError},
    maps::{NAME_FILTER, NAME_RULES, NAME_SCRATCH},
    path_walk::walk_path,
};

/// Report the open of `file` by `program` if its name matches a rule. Not
/// inlined (the programs' stack), so at most five arguments.
#[inline(never)]
pub fn name_rule_open(program: Program, facts: &FileFacts, key: &FileKey, ret: i64, via: u32) {
    run(program, try_name_rule_open(facts, key, ret, via));
}

/// The last 8 bytes of `name`, `len` long, as a little-endian word (the
/// whole name, NUL-padded and shifted up, when shorter).
#[inline(always)]
fn tail(name: kernel::KernelStr, len: u32) -> kernel::Result<u64> {
    if len >= 8 {
        return name.bytes_at(u64::from(len) - 8);
    }
    let mut buf = [0u8; 8];
    name.copy_to(&mut buf)?;
    Ok(u64::from_le_bytes(buf) << (8 * (8 - len)))
}

/// Whether the last `n` bytes of a name whose tail is `tail` are `bytes`.
#[inline(always)]
fn ends_with(tail: u64, bytes: [u8; 8], n: u32) -> bool {
    let mask = u64::MAX << (8 * (8 - n));
    tail & mask == u64::from_le_bytes(bytes) << (8 * (8 - n))
}

#[inline(always)]
fn try_name_rule_open(facts: &FileFacts, key: &FileKey, ret: i64, via: u32) -> kernel::Result<()> {
    let (file, dentry, len, name) = (facts.file, facts.dentry, facts.name_len, facts.name);
    if len == 0 || len > 255 {
        return Ok(());
    }
    let (first, tail) = if facts.name_read != 0 {
        (facts.name_first as u8, facts.name_tail)
    } else {
        (name.bytes::<1>()?[0], tail(name, len)?)
    };
    // Field by field: a copy of the filter would take a quarter of the
    // stack. SAFETY: field projections of the global's own pointer.
    let word = usize::from(first >> 6);
    let first_bits = NAME_FILTER.field(|f| unsafe { &raw const (*f).first_bytes[word] });
    let by_name = first_bits & (1u64 << (first & 63)) != 0;
    let mut rule_id = u32::MAX;
    for i in 0..SUFFIX_RULES_MAX {
        // SAFETY: as above.
        let n = NAME_FILTER.field(|f| unsafe { &raw const (*f).suffixes[i].len });
        if n == 0 || n > len {
            continue;
        }
        let bytes = NAME_FILTER.field(|f| unsafe { &raw const (*f).suffixes[i].bytes });
        if ends_with(tail, bytes, n) {
            rule_id = NAME_FILTER.field(|f| unsafe { &raw const (*f).suffixes[i].id });
            break;
        }
    }
    if rule_id == u32::MAX {
        if !by_name || len as usize >= RULE_NAME_LEN {
            return Ok(());
        }
        let scratch = NAME_SCRATCH.get_ptr_mut(0).ok_or(ReadError)?;
        // SAFETY: the per-CPU scratch is this program's alone.
        let whole = unsafe {
            *scratch = [0; RULE_NAME_LEN];
            name.copy_to(&mut *scratch)?;
            *scratch
        };
        let Some(rule) = NAME_RULES
            .get(&Key::new((RULE_NAME_LEN * 8) as u32, whole))
            .copied()
        else {
            return Ok(());
        };
        let n = rule.not_suffix_len;
        if n > 0 && n <= len && ends_with(tail, rule.not_suffix, n) {
            return Ok(());
        }
        if rule.parent[0] != 0 {
            let mut parent = [0u8; RULE_PARENT_LEN];
            // A name longer than the buffer is cut, and then no match.
            let _ = dentry.parent()?.name()?.copy_to(&mut parent);
            if parent != rule.parent {
                return Ok(());
            }
        }
        rule_id = rule.id;
    }
    let flags = file.flags()?;
    let path = file.path();
    emit(|ev: *mut NameRuleOpenData| {
        // SAFETY: `ev` points into the reservation; the walk writes the
        // path in place.
        unsafe {
            (*ev).key = *key;
            (*ev).flags = flags;
            (*ev).ret = ret as i32;
            (*ev).rule = rule_id;
            (*ev).via = via;
            (*ev).path.depth = 0;
            (*ev).path.truncated = 0;
            match path {
                Ok(path) => walk_path(path, &raw mut (*ev).path),
                Err(_) => (*ev).path.truncated = 1,
            }
        }
        Ok(())
    })
}
