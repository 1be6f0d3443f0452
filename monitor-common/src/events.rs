//! The ring buffer's records. Every record is an [`Event`]: an
//! [`EventHeader`] whose `kind` says which data follows. Layouts are
//! fixed-size so that the kernel side builds them in place, inside a
//! ring-buffer reservation, instead of on its 512-byte stack.

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
/// Path components a walked path carries, innermost first.
pub const PATH_COMPONENTS: usize = 16;
/// Bytes kept of one path component (NUL included).
pub const COMPONENT_LEN: usize = 32;

/// Discriminant in [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A watched file was opened: [`OpenData`].
    Open = 1,
    /// A process image was replaced: [`ExecData`].
    Exec = 2,
    /// A process (thread-group leader) exited: the header only.
    Exit = 3,
    /// A new process (not a thread) was forked: [`ForkData`].
    Fork = 4,
    /// An open failed with EACCES or EPERM: [`DeniedOpenData`].
    DeniedOpen = 5,
    /// Another process's `/proc/<pid>/environ` was opened: [`EnvironReadData`].
    EnvironRead = 6,
    /// A process submitted an io_uring open, which the syscall tracepoints
    /// do not see: [`IoUringOpenData`]. Once per process.
    IoUringOpen = 7,
    /// A successful open of a file not in the watch map whose name matches
    /// a credential-file rule: [`NameRuleOpenData`].
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
    /// The kernel's count of lost events when this one was written: a rise
    /// from one record to the next says events were lost before this one,
    /// without the reader having to ask the kernel at every record.
    pub lost_before: u64,
    pub comm: [u8; COMM_LEN],
}

/// `AUDIT_UID_UNSET`: no login uid.
pub const UNSET_LOGINUID: u32 = u32::MAX;

/// One ring-buffer record: the header, then the data of its kind.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event<T> {
    pub header: EventHeader,
    pub data: T,
}

/// The data of one kind of event: which [`EventKind`] it is sent as.
pub trait Data {
    const KIND: EventKind;
}

/// A process exit carries nothing beyond its header.
impl Data for () {
    const KIND: EventKind = EventKind::Exit;
}

pub type OpenEvent = Event<OpenData>;
pub type ExecEvent = Event<ExecData>;
pub type ExitEvent = Event<()>;
pub type ForkEvent = Event<ForkData>;
pub type DeniedOpenEvent = Event<DeniedOpenData>;
pub type EnvironReadEvent = Event<EnvironReadData>;
pub type IoUringOpenEvent = Event<IoUringOpenData>;
pub type NameRuleOpenEvent = Event<NameRuleOpenData>;

/// `sched_process_fork` of a new process; the header describes the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkData {
    pub child_pid: u32,
    pub _pad: u32,
}

impl Data for ForkData {
    const KIND: EventKind = EventKind::Fork;
}

/// A successful open of a file whose (device, inode) is in the watch map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenData {
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

impl Data for OpenData {
    const KIND: EventKind = EventKind::Open;
}

/// An open-family syscall (`open`, `openat`, `openat2`, `creat`).
pub const VIA_SYSCALL: u32 = 0;
/// An io_uring open request, run inline or by an io_uring worker.
pub const VIA_IO_URING: u32 = 1;
/// Another way into the kernel's open (`open_by_handle_at`, exec, the
/// kernel itself), seen only by the LSM and fexit hooks.
pub const VIA_OTHER: u32 = 2;

/// An open refused with EACCES or EPERM: a denied read of a secret is a
/// signal in itself. The file was not opened, so there is no inode: the
/// agent resolves `filename` (relative to `dfd`) itself.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeniedOpenData {
    /// Flags as passed to the syscall.
    pub flags: u32,
    /// The syscall's return value (a negative errno).
    pub ret: i32,
    /// Directory fd for relative names ([`crate::abi::AT_FDCWD`] for the cwd).
    pub dfd: i32,
    /// Bytes of `filename` used, NUL excluded.
    pub filename_len: u32,
    pub filename: [u8; FILENAME_LEN],
    /// For a relative `filename`: the directory it is relative to (the cwd
    /// or `dfd`), walked by the kernel while the process still exists.
    /// Empty (depth 0) for an absolute one.
    pub base: WalkedPath,
}

impl Data for DeniedOpenData {
    const KIND: EventKind = EventKind::DeniedOpen;
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
pub struct EnvironReadData {
    pub target_pid: u32,
    pub _pad: u32,
}

impl Data for EnvironReadData {
    const KIND: EventKind = EventKind::EnvironRead;
}

/// A name-rule match, with the path walked in the kernel from the opened
/// file up to its mount namespace's root.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NameRuleOpenData {
    pub key: FileKey,
    pub flags: u32,
    pub ret: i32,
    pub rule: u32,
    /// One of the `VIA_*` values.
    pub via: u32,
    /// The opened file's path, its own name first.
    pub path: WalkedPath,
}

impl Data for NameRuleOpenData {
    const KIND: EventKind = EventKind::NameRuleOpen;
}

/// The first io_uring open request (`IORING_OP_OPENAT`/`OPENAT2`) of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoUringOpenData {
    pub opcode: u32,
    pub _pad: u32,
}

impl Data for IoUringOpenData {
    const KIND: EventKind = EventKind::IoUringOpen;
}

/// `sched_process_exec`: the new image's filename as the kernel resolved it,
/// its argv, and the *names* of watched environment variables it carries.
/// Environment values never leave the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecData {
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

impl Data for ExecData {
    const KIND: EventKind = EventKind::Exec;
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
