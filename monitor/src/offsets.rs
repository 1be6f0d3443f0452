//! Kernel struct field offsets, read from the running kernel's BTF.
//!
//! aya-ebpf cannot emit CO-RE relocations, so an offset compiled into the
//! object would be right for one kernel build only. Instead the agent looks
//! each field up in `/sys/kernel/btf/vmlinux` at start and hands the result
//! to the programs as a read-only global.

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use monitor_common::{KernelOffsets, NO_OFFSET, OVL_LAYOUT_UNKNOWN};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// overlayfs's own BTF when it is a module, next to vmlinux's once loaded.
const OVERLAY_MODULE_BTF: &str = "overlay";

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error(
        "this kernel exposes no BTF ({VMLINUX_BTF} is missing): secretmon needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("cannot parse {path}")]
    Parse { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("kernel BTF has no field {1} in struct {0}")]
    NoField(&'static str, &'static str),
}

/// What the programs need of the kernel's BTF besides CO-RE's relocations.
#[derive(Debug)]
pub struct BtfFacts {
    pub offsets: KernelOffsets,
    /// The kfunc `bpf_rdonly_cast` (6.2+): the open programs then load the
    /// file's fields directly (`monitor-ebpf/src/file_facts.c`).
    pub rdonly_cast: bool,
}

/// Look every field the programs walk up in `path` (normally [`VMLINUX_BTF`]).
pub fn from_btf_file(path: &Path) -> Result<BtfFacts, OffsetsError> {
    if !path.exists() {
        return Err(OffsetsError::NoBtf);
    }
    let btf = Btf::from_file(path).map_err(|source| OffsetsError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let overlay = Btf::from_split_file(path.with_file_name(OVERLAY_MODULE_BTF), &btf).ok();
    Ok(BtfFacts {
        offsets: from_btf(&btf, overlay.as_ref())?,
        rdonly_cast: has_function(&btf, "bpf_rdonly_cast"),
    })
}

fn has_function(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name(name)
        .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
}

/// The offsets in `btf` (vmlinux's), with overlayfs's module BTF `overlay`
/// when it is a loaded module.
pub fn from_btf(btf: &Btf, overlay: Option<&Btf>) -> Result<KernelOffsets, OffsetsError> {
    let field = |s, f| field_offset(btf, s, f);
    Ok(KernelOffsets {
        task_files: field("task_struct", "files")?,
        task_real_parent: field("task_struct", "real_parent")?,
        task_tgid: field("task_struct", "tgid")?,
        task_pid: field("task_struct", "pid")?,
        task_group_leader: field("task_struct", "group_leader")?,
        task_start_boottime: field("task_struct", "start_boottime")?,
        // Absent without CONFIG_AUDIT: events then carry no login uid.
        task_loginuid: field("task_struct", "loginuid").unwrap_or(NO_OFFSET),
        task_signal: field("task_struct", "signal")?,
        signal_tty: field("signal_struct", "tty")?,
        files_fdt: field("files_struct", "fdt")?,
        fdtable_max_fds: field("fdtable", "max_fds")?,
        fdtable_fd: field("fdtable", "fd")?,
        file_f_inode: field("file", "f_inode")?,
        file_f_flags: field("file", "f_flags")?,
        inode_i_ino: field("inode", "i_ino")?,
        inode_i_sb: field("inode", "i_sb")?,
        sb_s_dev: field("super_block", "s_dev")?,
        sb_s_magic: field("super_block", "s_magic")?,
        file_dentry: field("file", "f_path")? + field("path", "dentry")?,
        dentry_d_parent: field("dentry", "d_parent")?,
        dentry_name_len: field("dentry", "d_name")? + field("qstr", "len")?,
        dentry_name_ptr: field("dentry", "d_name")? + field("qstr", "name")?,
        task_mm: field("task_struct", "mm")?,
        mm_start_stack: field("mm_struct", "start_stack")?,
        mm_arg_start: field("mm_struct", "arg_start")?,
        mm_arg_end: field("mm_struct", "arg_end")?,
        mm_env_start: field("mm_struct", "env_start")?,
        mm_env_end: field("mm_struct", "env_end")?,
        file_vfsmount: field("file", "f_path")? + field("path", "mnt")?,
        vfsmount_mnt_root: field("vfsmount", "mnt_root")?,
        mount_mnt: field("mount", "mnt")?,
        mount_mnt_parent: field("mount", "mnt_parent")?,
        mount_mnt_mountpoint: field("mount", "mnt_mountpoint")?,
        task_fs: field("task_struct", "fs")?,
        fs_pwd_dentry: field("fs_struct", "pwd")? + field("path", "dentry")?,
        fs_pwd_mnt: field("fs_struct", "pwd")? + field("path", "mnt")?,
        // x86_64 names; elsewhere the agent keeps its enter hooks.
        regs_di: field("pt_regs", "di").unwrap_or(NO_OFFSET),
        regs_si: field("pt_regs", "si").unwrap_or(NO_OFFSET),
        regs_dx: field("pt_regs", "dx").unwrap_or(NO_OFFSET),
        regs_orig_ax: field("pt_regs", "orig_ax").unwrap_or(NO_OFFSET),
        task_flags: field("task_struct", "flags")?,
        // Internal to fs/: the fexit hook is not used without them.
        filename_name: field("filename", "name").unwrap_or(NO_OFFSET),
        open_flags_open_flag: field("open_flags", "open_flag").unwrap_or(NO_OFFSET),
        file_private_data: field("file", "private_data")?,
        ovl_file_realfile: ovl_file_realfile(overlay.unwrap_or(btf)),
    })
}

/// Where an overlayfs file's `private_data` leads to its layer's file, by
/// overlayfs's types in `btf` (vmlinux's when built in, else the module's):
/// a `struct ovl_file` holds it on newer kernels; on older ones
/// `private_data` is that file;
/// without overlayfs's types (a module not loaded yet) the programs tell.
fn ovl_file_realfile(btf: &Btf) -> u32 {
    match field_offset(btf, "ovl_file", "realfile") {
        Ok(at) => at,
        Err(_) if field_offset(btf, "ovl_inode", "vfs_inode").is_ok() => NO_OFFSET,
        Err(_) => OVL_LAYOUT_UNKNOWN,
    }
}

/// Byte offset of `field` in `struct name`, looking through anonymous
/// structs and unions, where kernels often move fields between releases.
fn field_offset(btf: &Btf, name: &'static str, field: &'static str) -> Result<u32, OffsetsError> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| OffsetsError::NoStruct(name))?;
    let st = types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or(OffsetsError::NoStruct(name))?;
    find_member(btf, &st, field, 0).ok_or(OffsetsError::NoField(name, field))
}

fn find_member(btf: &Btf, st: &btf_rs::Struct, field: &str, base_bits: u32) -> Option<u32> {
    // Named members first, so a direct hit wins over a nested one.
    for m in &st.members {
        if btf.resolve_name(m).ok().as_deref() == Some(field) {
            return Some((base_bits + m.bit_offset()) / 8);
        }
    }
    for m in &st.members {
        let anonymous = btf.resolve_name(m).map(|n| n.is_empty()).unwrap_or(true);
        if !anonymous {
            continue;
        }
        if let Some(inner) = aggregate(btf, m)
            && let Some(off) = find_member(btf, &inner, field, base_bits + m.bit_offset())
        {
            return Some(off);
        }
    }
    None
}

/// The struct or union a member's type names, through typedefs and qualifiers.
fn aggregate(btf: &Btf, member: &dyn BtfType) -> Option<btf_rs::Struct> {
    let mut t = btf.resolve_chained_type(member).ok()?;
    for _ in 0..8 {
        t = match t {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(ref x) => btf.resolve_chained_type(x).ok()?,
            Type::Const(ref x) | Type::Volatile(ref x) | Type::Restrict(ref x) => {
                btf.resolve_chained_type(x).ok()?
            }
            _ => return None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reads this machine's BTF: every kernel secretmon supports has it, and
    // the values are checked against invariants that hold on all of them.
    #[test]
    fn functions_are_told_from_other_types() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} not present on this machine");
            return;
        }
        let btf = Btf::from_file(path).expect("BTF parses");
        assert!(has_function(&btf, "do_filp_open"));
        assert!(!has_function(&btf, "task_struct"), "a struct");
        assert!(!has_function(&btf, "no_such_function_anywhere"));
    }

    #[test]
    fn offsets_from_running_kernel_are_plausible() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} not present on this machine");
            return;
        }
        let off = from_btf_file(path)
            .expect("BTF parses and has every field")
            .offsets;
        // `max_fds` is the first field of `struct fdtable` on every kernel.
        assert_eq!(off.fdtable_max_fds, 0);
        assert!(off.fdtable_fd >= 4 && off.fdtable_fd <= 16);
        assert!(off.task_files > 0 && off.task_files < 16384);
        assert_ne!(off.task_real_parent, off.task_tgid);
        assert_eq!(off.task_tgid, off.task_pid + 4, "pid and tgid are adjacent");
        assert_ne!(off.task_loginuid, NO_OFFSET, "this kernel has CONFIG_AUDIT");
        assert!(off.file_f_inode > 0 && off.inode_i_sb > 0);
        assert_eq!(off.mm_arg_end, off.mm_arg_start + 8);
        assert_eq!(off.mm_env_start, off.mm_arg_end + 8);
        assert_eq!(
            off.dentry_name_ptr,
            off.dentry_name_len + 4,
            "qstr: hash, len, name"
        );
        assert_ne!(off.file_private_data, off.file_f_inode);
        // The kernel's programs assume `realfile` first when the layout is
        // unknown: true wherever the struct is known.
        assert!(
            [0, NO_OFFSET, OVL_LAYOUT_UNKNOWN].contains(&off.ovl_file_realfile),
            "{}",
            off.ovl_file_realfile
        );
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = from_btf_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"));
    }
}
