//! `#[repr(C)]` types that cross between the kernel programs and the agent.
//!
//! Every event starts with an [`EventHeader`] whose `kind` says which struct
//! follows. Layouts are fixed-size so the kernel side can build them inside a
//! ring-buffer reservation instead of on its 512-byte stack.
#![no_std]

/// Length of `task_struct.comm`, NUL included.
pub const COMM_LEN: usize = 16;
/// Bytes of an exec filename or an opened path kept; longer is truncated.
pub const FILENAME_LEN: usize = 256;
/// Bytes of an exec's argv kept (NUL-separated); longer sets `args_truncated`.
pub const ARGS_LEN: usize = 4096;
/// Watched environment variable names reported per exec, at most.
pub const ENV_NAMES_MAX: usize = 8;
/// Bytes of one environment variable name kept.
pub const ENV_NAME_LEN: usize = 32;
/// Bytes of one watched suffix (`_API_KEY` for `*_API_KEY`).
pub const ENV_SUFFIX_LEN: usize = 16;

/// Discriminant in [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A watched file was opened: [`OpenEvent`].
    Open = 1,
    /// A process image was replaced: [`ExecEvent`].
    Exec = 2,
    /// A process (thread-group leader) exited: [`EventHeader`] only.
    Exit = 3,
    /// A new process (not a thread) was forked: [`ForkEvent`].
    Fork = 4,
    /// An open failed with EACCES or EPERM: [`DeniedOpenEvent`].
    DeniedOpen = 5,
    /// Another process's `/proc/<pid>/environ` was opened: [`EnvironReadEvent`].
    EnvironRead = 6,
    /// A process submitted an io_uring open, which the syscall tracepoints
    /// do not see: [`IoUringOpenEvent`]. Once per process.
    IoUringOpen = 7,
    /// A successful open of a file not in the watch map whose name matches
    /// a credential-file rule: [`NameRuleOpenEvent`].
    NameRuleOpen = 8,
}

impl EventKind {
    pub fn from_u32(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Open),
            2 => Some(Self::Exec),
            3 => Some(Self::Exit),
            4 => Some(Self::Fork),
            5 => Some(Self::DeniedOpen),
            6 => Some(Self::EnvironRead),
            7 => Some(Self::IoUringOpen),
            8 => Some(Self::NameRuleOpen),
            _ => None,
        }
    }
}

/// Who did it, and when. Filled from BPF helpers and `current`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread-group id (the user-visible pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread-group id of `current->real_parent`.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Audit login uid; [`UNSET_LOGINUID`] when unset or unknown.
    pub loginuid: u32,
    /// 1 when the process has a controlling terminal.
    pub tty: u32,
    /// `bpf_ktime_get_boot_ns`: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    /// Start of the process (thread-group leader), ns since boot.
    pub start_ns: u64,
    /// cgroup v2 id (the inode of its directory in cgroupfs).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// `AUDIT_UID_UNSET`: no login uid.
pub const UNSET_LOGINUID: u32 = u32::MAX;
/// An offset the running kernel lacks (e.g. `loginuid` without CONFIG_AUDIT).
pub const NO_OFFSET: u32 = u32::MAX;

/// `sched_process_fork` of a new process; the header describes the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub child_pid: u32,
    pub _pad: u32,
}

/// A successful open of a file whose (device, inode) is in the watch map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenEvent {
    pub header: EventHeader,
    pub key: FileKey,
    /// `file->f_flags` of the opened file (access mode and status flags).
    pub flags: u32,
    /// The syscall's return value (the new fd), or 0 when reported from a
    /// hook inside the kernel's open, before there is an fd.
    pub ret: i32,
    /// How the open reached the kernel: one of the `VIA_*` values.
    pub via: u32,
    pub _pad: u32,
}

/// An open-family syscall (`open`, `openat`, `openat2`, `creat`).
pub const VIA_SYSCALL: u32 = 0;
/// An io_uring open request, run inline or by an io_uring worker.
pub const VIA_IO_URING: u32 = 1;
/// Another way into the kernel's open (`open_by_handle_at`, exec, the
/// kernel itself), seen only by the LSM and fexit hooks.
pub const VIA_OTHER: u32 = 2;

/// Bit of the `CAPTURE` map: the `file_open` LSM program reports successful
/// opens, so the open exit tracepoints report only denials.
pub const CAPTURE_LSM_OPENS: u32 = 1;

/// An open refused with EACCES or EPERM: a denied read of a secret is a
/// signal in itself. The file was not opened, so there is no inode: the
/// agent resolves `filename` (relative to `dfd`) itself.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeniedOpenEvent {
    pub header: EventHeader,
    /// Flags as passed to the syscall.
    pub flags: u32,
    /// The syscall's return value (a negative errno).
    pub ret: i32,
    /// Directory fd for relative names (`AT_FDCWD` = -100).
    pub dfd: i32,
    /// Bytes of `filename` used, NUL excluded.
    pub filename_len: u32,
    pub filename: [u8; FILENAME_LEN],
    /// For a relative `filename`: the directory it is relative to (the cwd
    /// or `dfd`), walked by the kernel while the process still exists.
    /// Empty (depth 0) for an absolute one.
    pub base: WalkedPath,
}

/// A path walked in the kernel from a dentry up through the mounts to the
/// root of the mount namespace: race-free, whatever the process does next.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WalkedPath {
    /// Components used in `components`.
    pub depth: u32,
    /// 1 when the walk did not reach the root or a name was cut.
    pub truncated: u32,
    /// Innermost first, each NUL-terminated.
    pub components: [[u8; COMPONENT_LEN]; PATH_COMPONENTS],
}

/// A successful open of `/proc/<target_pid>/environ` by another process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvironReadEvent {
    pub header: EventHeader,
    pub target_pid: u32,
    pub _pad: u32,
}

/// Bytes of a basename a name rule sees (NUL included); longer names match
/// no exact or prefix rule.
pub const RULE_NAME_LEN: usize = 32;
/// Bytes of a parent directory name a rule can require (NUL included).
pub const RULE_PARENT_LEN: usize = 16;
/// Suffix rules (`*.pem`), at most, each at most 8 bytes.
pub const SUFFIX_RULES_MAX: usize = 8;
/// Path components a name-rule event carries, innermost first.
pub const PATH_COMPONENTS: usize = 16;
/// Bytes kept of one path component (NUL included).
pub const COMPONENT_LEN: usize = 32;

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

/// A name-rule match, with the path walked in the kernel from the opened
/// file up to its mount namespace's root: race-free, whatever the process
/// does next.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NameRuleOpenEvent {
    pub header: EventHeader,
    pub key: FileKey,
    pub flags: u32,
    pub ret: i32,
    pub rule: u32,
    /// One of the `VIA_*` values.
    pub via: u32,
    /// The opened file's path, its own name first.
    pub path: WalkedPath,
}

/// The first io_uring open request (`IORING_OP_OPENAT`/`OPENAT2`) of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoUringOpenEvent {
    pub header: EventHeader,
    pub opcode: u32,
    pub _pad: u32,
}

/// Where `opcode` sits in the io_uring submit tracepoint's record, read by
/// the agent from tracefs (the record's layout changed across kernels).
/// `u32::MAX` when the kernel has no such tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoUringLayout {
    pub opcode_offset: u32,
}

/// `sched_process_exec`: the new image's filename as the kernel resolved it,
/// its argv, and the *names* of watched environment variables it carries.
/// Environment values never leave the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// The pid before exec (differs when a non-leader thread execs).
    pub old_pid: u32,
    /// Bytes of `filename` used, NUL excluded.
    pub filename_len: u32,
    pub filename: [u8; FILENAME_LEN],
    /// Bytes of `args` used: NUL-separated argv.
    pub args_len: u32,
    /// 1 when argv was longer than [`ARGS_LEN`].
    pub args_truncated: u32,
    pub args: [u8; ARGS_LEN],
    /// Entries of `env_names` used.
    pub env_count: u32,
    /// 1 when the environment was not scanned to its end (too many or too
    /// long entries) or had more than [`ENV_NAMES_MAX`] watched names.
    pub env_truncated: u32,
    /// NUL-padded names.
    pub env_names: [[u8; ENV_NAME_LEN]; ENV_NAMES_MAX],
}

/// Key of the watch map: a file as the kernel sees it.
///
/// `dev` is the kernel's internal `dev_t` (`major << 20 | minor`), which is
/// not the encoding `stat(2)` returns; see the agent's conversion.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// Byte offsets of the kernel struct fields the programs walk.
///
/// aya-ebpf cannot emit CO-RE relocations, so the agent reads these from
/// `/sys/kernel/btf/vmlinux` at start and writes them into the object's
/// read-only data before loading. A zero `valid` means "not set": the
/// programs then do nothing rather than read garbage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
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
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], made only of integers, and have no padding
    // holes that could leak uninitialised bytes into a map.
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::IoUringLayout {}
    unsafe impl aya::Pod for super::NameRule {}
    unsafe impl aya::Pod for super::NameFilter {}
}
