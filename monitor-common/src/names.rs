//! The object's programs and maps by name: the contract between the kernel
//! programs (whose function and static names these are) and the loader.
//! A unit test of the agent checks every name against the built object.

/// The kernel hook a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `category:name`; for a program with several names, the first the
    /// running kernel has (they are the same tracepoint across releases).
    TracePoint {
        category: &'static str,
        names: &'static [&'static str],
    },
    RawTracePoint(&'static str),
    /// fexit on a kernel function.
    Fexit(&'static str),
    /// A BPF LSM hook.
    Lsm(&'static str),
}

/// Every program of the object. The discriminant indexes the `ERRORS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    SysEnterOpenat,
    SysEnterOpen,
    SysEnterOpenat2,
    SysEnterCreat,
    SysExitOpenat,
    SysExitOpen,
    SysExitOpenat2,
    SysExitCreat,
    SysExitOpenatRegs,
    SysExitOpenRegs,
    SysExitOpenat2Regs,
    SysExitCreatRegs,
    SysExitOpenByHandleAt,
    IoUringSubmit,
    SchedProcessExec,
    SchedProcessExit,
    SchedProcessFork,
    FileOpen,
    DoFilpOpenExit,
}

const fn tp(category: &'static str, names: &'static [&'static str]) -> Hook {
    Hook::TracePoint { category, names }
}

impl Program {
    pub const COUNT: usize = Self::ALL.len();

    pub const ALL: [Self; 19] = [
        Self::SysEnterOpenat,
        Self::SysEnterOpen,
        Self::SysEnterOpenat2,
        Self::SysEnterCreat,
        Self::SysExitOpenat,
        Self::SysExitOpen,
        Self::SysExitOpenat2,
        Self::SysExitCreat,
        Self::SysExitOpenatRegs,
        Self::SysExitOpenRegs,
        Self::SysExitOpenat2Regs,
        Self::SysExitCreatRegs,
        Self::SysExitOpenByHandleAt,
        Self::IoUringSubmit,
        Self::SchedProcessExec,
        Self::SchedProcessExit,
        Self::SchedProcessFork,
        Self::FileOpen,
        Self::DoFilpOpenExit,
    ];

    /// The program's name in the object (its function's name).
    pub const fn name(self) -> &'static str {
        match self {
            Self::SysEnterOpenat => "sys_enter_openat",
            Self::SysEnterOpen => "sys_enter_open",
            Self::SysEnterOpenat2 => "sys_enter_openat2",
            Self::SysEnterCreat => "sys_enter_creat",
            Self::SysExitOpenat => "sys_exit_openat",
            Self::SysExitOpen => "sys_exit_open",
            Self::SysExitOpenat2 => "sys_exit_openat2",
            Self::SysExitCreat => "sys_exit_creat",
            Self::SysExitOpenatRegs => "sys_exit_openat_regs",
            Self::SysExitOpenRegs => "sys_exit_open_regs",
            Self::SysExitOpenat2Regs => "sys_exit_openat2_regs",
            Self::SysExitCreatRegs => "sys_exit_creat_regs",
            Self::SysExitOpenByHandleAt => "sys_exit_open_by_handle_at",
            Self::IoUringSubmit => "io_uring_submit",
            Self::SchedProcessExec => "sched_process_exec",
            Self::SchedProcessExit => "sched_process_exit",
            Self::SchedProcessFork => "sched_process_fork",
            Self::FileOpen => "file_open",
            Self::DoFilpOpenExit => "do_filp_open_exit",
        }
    }

    /// Where the program attaches.
    pub const fn hook(self) -> Hook {
        match self {
            Self::SysEnterOpenat => tp("syscalls", &["sys_enter_openat"]),
            Self::SysEnterOpen => tp("syscalls", &["sys_enter_open"]),
            Self::SysEnterOpenat2 => tp("syscalls", &["sys_enter_openat2"]),
            Self::SysEnterCreat => tp("syscalls", &["sys_enter_creat"]),
            Self::SysExitOpenat | Self::SysExitOpenatRegs => tp("syscalls", &["sys_exit_openat"]),
            Self::SysExitOpen | Self::SysExitOpenRegs => tp("syscalls", &["sys_exit_open"]),
            Self::SysExitOpenat2 | Self::SysExitOpenat2Regs => {
                tp("syscalls", &["sys_exit_openat2"])
            }
            Self::SysExitCreat | Self::SysExitCreatRegs => tp("syscalls", &["sys_exit_creat"]),
            Self::SysExitOpenByHandleAt => tp("syscalls", &["sys_exit_open_by_handle_at"]),
            // Renamed in 5.19.
            Self::IoUringSubmit => tp("io_uring", &["io_uring_submit_req", "io_uring_submit_sqe"]),
            Self::SchedProcessExec => tp("sched", &["sched_process_exec"]),
            Self::SchedProcessExit => tp("sched", &["sched_process_exit"]),
            // Raw: the task pointers tell a new process from a thread.
            Self::SchedProcessFork => Hook::RawTracePoint("sched_process_fork"),
            Self::FileOpen => Hook::Lsm("file_open"),
            Self::DoFilpOpenExit => Hook::Fexit("do_filp_open"),
        }
    }
}

/// The object's maps and read-only globals.
pub mod maps {
    /// The ring buffer of events.
    pub const EVENTS: &str = "EVENTS";
    /// Failed ring-buffer reservations, for all CPUs.
    pub const LOST: &str = "LOST";
    /// Failed kernel reads and map updates, per CPU, by [`super::Program`].
    pub const ERRORS: &str = "ERRORS";
    /// Watched files: (device, inode) to the agent's id.
    pub const WATCHED: &str = "WATCHED";
    /// The watched-inode filter ([`crate::watched_inode_bit`]).
    pub const WATCHED_INODES: &str = "WATCHED_INODES";
    pub const WATCHED_ENV: &str = "WATCHED_ENV";
    pub const WATCHED_ENV_SUFFIX: &str = "WATCHED_ENV_SUFFIX";
    /// The pre-test of both: [`crate::env_name::EnvFilter`], one entry.
    pub const ENV_FILTER: &str = "ENV_FILTER";
    pub const NAME_RULES: &str = "NAME_RULES";
    /// The `CAPTURE_*` switches.
    pub const CAPTURE: &str = "CAPTURE";
    /// Read-only globals: [`crate::KernelOffsets`], [`crate::NameFilter`],
    /// [`crate::IoUringLayout`].
    pub const OFFSETS: &str = "OFFSETS";
    pub const NAME_FILTER: &str = "NAME_FILTER";
    pub const IO_URING: &str = "IO_URING";
    /// Read-only global: pending bytes in [`EVENTS`] at each multiple of
    /// which the reader is woken (`u64`).
    pub const WAKE_UP_BYTES: &str = "WAKE_UP_BYTES";
    /// Read-only global: 1 where the exec program finds environment entries
    /// through `envp` (`u32`).
    pub const ENV_FROM_ENVP: &str = "ENV_FROM_ENVP";
    /// Read-only global of `file_facts.c`: 1 where the kernel has the
    /// `bpf_rdonly_cast` kfunc (`u32`).
    pub const HAS_RDONLY_CAST: &str = "HAS_RDONLY_CAST";
    /// Read-only global of `file_facts.c`: 1 where tracepoint programs have
    /// `bpf_get_current_task_btf` (`u32`).
    pub const HAS_TASK_BTF: &str = "HAS_TASK_BTF";
}
