//! What the agent hands the programs: read-only globals written into the
//! object before it is loaded (the verifier then knows their values), and
//! the switches of the `CAPTURE` map, flipped after attaching.

/// Byte offsets of the kernel struct fields the programs walk.
///
/// aya-ebpf cannot emit CO-RE relocations, so the agent reads these from
/// `/sys/kernel/btf/vmlinux` at start and writes them into the object's
/// read-only data (`OFFSETS`) before loading it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    /// [`NO_OFFSET`] without CONFIG_AUDIT.
    pub task_loginuid: u32,
    pub task_signal: u32,
    pub signal_tty: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_f_inode: u32,
    pub file_f_flags: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub sb_s_magic: u32,
    /// `file.f_path` + `path.dentry`.
    pub file_dentry: u32,
    pub dentry_d_parent: u32,
    /// `dentry.d_name` + `qstr.len`.
    pub dentry_name_len: u32,
    /// `dentry.d_name` + `qstr.name`.
    pub dentry_name_ptr: u32,
    pub task_mm: u32,
    /// Where the new image's `argc` is, with `argv` and `envp` after it.
    pub mm_start_stack: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_env_start: u32,
    pub mm_env_end: u32,
    /// `file.f_path` + `path.mnt`.
    pub file_vfsmount: u32,
    pub vfsmount_mnt_root: u32,
    /// Where `struct vfsmount` sits inside `struct mount`.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub task_fs: u32,
    /// `fs_struct.pwd` + `path.dentry` / `path.mnt`: the cwd.
    pub fs_pwd_dentry: u32,
    pub fs_pwd_mnt: u32,
    /// `struct pt_regs` (x86_64): the first syscall arguments;
    /// [`NO_OFFSET`] on other architectures.
    pub regs_di: u32,
    pub regs_si: u32,
    pub regs_dx: u32,
    /// `pt_regs.orig_ax`: the syscall number; [`NO_OFFSET`] where the
    /// programs may not read the saved registers.
    pub regs_orig_ax: u32,
    pub task_flags: u32,
    /// `struct filename.name` and `struct open_flags.open_flag`: the
    /// arguments of `do_filp_open`, for the fexit hook.
    pub filename_name: u32,
    pub open_flags_open_flag: u32,
    /// `file.private_data`: on an overlayfs file, where its layer's file is.
    pub file_private_data: u32,
    /// Where the layer's file sits in overlayfs's `struct ovl_file`, which
    /// `private_data` points to on kernels that have it; [`NO_OFFSET`] where
    /// `private_data` is the layer's file itself; [`OVL_LAYOUT_UNKNOWN`]
    /// where the agent could not tell (overlayfs a module not loaded yet).
    pub ovl_file_realfile: u32,
}

/// An offset the running kernel lacks (e.g. `loginuid` without CONFIG_AUDIT).
pub const NO_OFFSET: u32 = u32::MAX;

/// `ovl_file_realfile` when overlayfs's types were not in the kernel's BTF
/// at start: the programs tell the two layouts apart by the first word of
/// what `private_data` points to, a kernel address in a `struct ovl_file`
/// (`realfile`, its first field) and never in an open `struct file` (a
/// reference count or flags there).
pub const OVL_LAYOUT_UNKNOWN: u32 = u32::MAX - 1;

impl KernelOffsets {
    /// Every field [`NO_OFFSET`]: what the object holds until the agent
    /// writes the running kernel's offsets.
    pub const UNSET: Self = {
        const WORDS: usize = size_of::<KernelOffsets>() / 4;
        // SAFETY: `KernelOffsets` is #[repr(C)] and made only of `u32`s, so
        // it is exactly `WORDS` of them, and any value is valid.
        unsafe { core::mem::transmute::<[u32; WORDS], KernelOffsets>([NO_OFFSET; WORDS]) }
    };
}

/// Bit of the `CAPTURE` map: the `file_open` LSM program reports successful
/// opens, so the open exit tracepoints report only denials.
pub const CAPTURE_LSM_OPENS: u32 = 1;

/// Bytes of a basename a name rule sees (NUL included); longer names match
/// no exact or prefix rule.
pub const RULE_NAME_LEN: usize = 32;
/// Bytes of a parent directory name a rule can require (NUL included).
pub const RULE_PARENT_LEN: usize = 16;
/// Suffix rules (`*.pem`), at most, each at most 8 bytes.
pub const SUFFIX_RULES_MAX: usize = 8;

/// What a name rule requires besides the name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameRule {
    /// The agent's rule number, reported back.
    pub id: u32,
    /// Bytes of `not_suffix` used; 0 for none.
    pub not_suffix_len: u32,
    /// The parent directory's name, NUL-padded; all zero for any.
    pub parent: [u8; RULE_PARENT_LEN],
    /// Names ending so are excluded (`.pub` for `id_*`).
    pub not_suffix: [u8; 8],
}

/// A `*SUFFIX` rule: names whose last `len` bytes are `bytes[..len]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuffixRule {
    /// 0 marks an unused slot.
    pub len: u32,
    pub id: u32,
    pub bytes: [u8; 8],
}

/// The suffix rules and the first bytes the exact/prefix rules start with:
/// cheap tests that spare most opens the full name lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameFilter {
    /// Bit `b` of word `b / 64`: some exact/prefix rule starts with byte `b`.
    pub first_bytes: [u64; 4],
    pub suffixes: [SuffixRule; SUFFIX_RULES_MAX],
}

impl NameFilter {
    /// No rule at all, until the agent writes its own.
    pub const EMPTY: Self = Self {
        first_bytes: [0; 4],
        suffixes: [SuffixRule {
            len: 0,
            id: 0,
            bytes: [0; 8],
        }; SUFFIX_RULES_MAX],
    };
}

/// Where `opcode` sits in the io_uring submit tracepoint's record, read by
/// the agent from tracefs (the record's layout changed across kernels).
/// `u32::MAX` when the kernel has no such tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoUringLayout {
    pub opcode_offset: u32,
}
