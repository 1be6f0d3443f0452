//! Typed reads of the kernel's structs at the running kernel's offsets, and
//! of user memory: the only place that reads memory the program does not
//! own. Each type is a kernel pointer; each method reads one field.
//!
//! Reads go through `bpf_probe_read_*`, which turns a bad address into an
//! error instead of a fault, except on the hot paths: the current task's
//! facts every event carries ([`current_task_facts`]) and the facts of the
//! file just opened ([`current_file_facts`]) are loaded directly by
//! `file_facts.c`, where CO-RE relocations give the offsets. An error is a
//! [`ReadError`], counted per program by `emit::run`.

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::{self as helper, bpf_get_current_task},
    },
    programs::TracePointContext,
};
use monitor_common::{FileKey, NO_OFFSET, OVL_LAYOUT_UNKNOWN, UNSET_LOGINUID};

use crate::maps::OFFSETS;

/// A read of kernel or user memory, or a map update, that failed.
pub struct ReadError;

pub type Result<T> = core::result::Result<T, ReadError>;

/// The running kernel's offset of a field, from the agent's `OFFSETS`.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a field projection of the global's own pointer.
        u64::from(OFFSETS.field(|o| unsafe { &raw const (*o).$field }))
    };
}

/// Read a `T` at kernel address `addr`.
#[inline(always)]
fn read<T>(addr: u64) -> Result<T> {
    // SAFETY: `bpf_probe_read_kernel` checks the address: a bad one is an
    // error, never a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| ReadError)
}

/// A NUL-terminated kernel string into `dest`; its length without the NUL.
#[inline(always)]
pub fn kernel_str(src: u64, dest: &mut [u8]) -> Result<usize> {
    // SAFETY: as `read`.
    unsafe { bpf_probe_read_kernel_str_bytes(src as *const u8, dest) }
        .map(|s| s.len())
        .map_err(|_| ReadError)
}

/// A NUL-terminated user string into `dest`; its length without the NUL.
#[inline(always)]
pub fn user_str(src: u64, dest: &mut [u8]) -> Result<usize> {
    // SAFETY: `bpf_probe_read_user_str` checks the address.
    unsafe { bpf_probe_read_user_str_bytes(src as *const u8, dest) }
        .map(|s| s.len())
        .map_err(|_| ReadError)
}

/// A user string of at most `max` bytes into `dest`, which has room for
/// them; the length read, NUL included.
///
/// # Safety
/// `dest` is valid for `max` bytes.
#[inline(always)]
pub unsafe fn user_str_raw(dest: *mut u8, max: u32, src: u64) -> Result<usize> {
    let n = unsafe { helper::bpf_probe_read_user_str(dest.cast(), max, src as *const _) };
    if n > 0 {
        Ok(n as usize)
    } else {
        Err(ReadError)
    }
}

/// `len` bytes of user memory into `dest`.
///
/// # Safety
/// `dest` is valid for `len` bytes.
#[inline(always)]
pub unsafe fn user_bytes(dest: *mut u8, len: u32, src: u64) -> Result<()> {
    let rc = unsafe { helper::bpf_probe_read_user(dest.cast(), len, src as *const _) };
    if rc == 0 { Ok(()) } else { Err(ReadError) }
}

/// A `T` in user memory.
#[inline(always)]
pub fn user<T>(src: u64) -> Result<T> {
    // SAFETY: `bpf_probe_read_user` checks the address.
    unsafe { bpf_probe_read_user(src as *const T) }.map_err(|_| ReadError)
}

/// The current thread group (the user-visible pid).
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// `struct task_struct *`.
#[derive(Clone, Copy)]
pub struct Task(u64);

impl Task {
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: a plain helper call.
        Self(unsafe { bpf_get_current_task() })
    }

    #[inline(always)]
    pub fn at(ptr: u64) -> Self {
        Self(ptr)
    }

    #[inline(always)]
    pub fn pid(self) -> Result<u32> {
        read(self.0 + offset!(task_pid))
    }

    #[inline(always)]
    pub fn tgid(self) -> Result<u32> {
        read(self.0 + offset!(task_tgid))
    }

    #[inline(always)]
    pub fn flags(self) -> Result<u32> {
        read(self.0 + offset!(task_flags))
    }

    #[inline(always)]
    pub fn real_parent(self) -> Result<Task> {
        read(self.0 + offset!(task_real_parent)).map(Task)
    }

    #[inline(always)]
    pub fn group_leader(self) -> Result<Task> {
        read(self.0 + offset!(task_group_leader)).map(Task)
    }

    #[inline(always)]
    pub fn start_boottime(self) -> Result<u64> {
        read(self.0 + offset!(task_start_boottime))
    }

    /// The audit login uid; [`UNSET_LOGINUID`] without CONFIG_AUDIT.
    #[inline(always)]
    pub fn loginuid(self) -> Result<u32> {
        let off = OFFSETS.field(|o| unsafe { &raw const (*o).task_loginuid });
        if off == NO_OFFSET {
            return Ok(UNSET_LOGINUID);
        }
        read(self.0 + u64::from(off))
    }

    /// Whether the process has a controlling terminal (`signal->tty`).
    #[inline(always)]
    pub fn has_tty(self) -> Result<bool> {
        let signal: u64 = read(self.0 + offset!(task_signal))?;
        let tty: u64 = read(signal + offset!(signal_tty))?;
        Ok(tty != 0)
    }

    #[inline(always)]
    pub fn mm(self) -> Result<Mm> {
        read(self.0 + offset!(task_mm)).map(Mm)
    }

    /// The current directory (`fs->pwd`).
    #[inline(always)]
    pub fn cwd(self) -> Result<Path> {
        let fs: u64 = read(self.0 + offset!(task_fs))?;
        Ok(Path {
            dentry: Dentry(read(fs + offset!(fs_pwd_dentry))?),
            mnt: VfsMount(read(fs + offset!(fs_pwd_mnt))?),
        })
    }

    /// Open file `fd` (`files->fdt->fd[fd]`); `None` when out of range or
    /// not open.
    #[inline(always)]
    pub fn file(self, fd: u32) -> Result<Option<File>> {
        let files: u64 = read(self.0 + offset!(task_files))?;
        let fdt: u64 = read(files + offset!(files_fdt))?;
        let max_fds: u32 = read(fdt + offset!(fdtable_max_fds))?;
        if fd >= max_fds {
            return Ok(None);
        }
        let fd_array: u64 = read(fdt + offset!(fdtable_fd))?;
        let file: u64 = read(fd_array + u64::from(fd) * 8)?;
        Ok((file != 0).then_some(File(file)))
    }
}

/// The user registers `current` saved at syscall entry (`pt_regs`, x86_64).
pub struct UserRegs(u64);

impl UserRegs {
    /// Needs `bpf_task_pt_regs` (5.15+); the agent loads the programs that
    /// call this only where the kernel has it.
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: plain helper calls; the task pointer is `current`.
        let regs = unsafe { helper::bpf_task_pt_regs(helper::bpf_get_current_task_btf()) };
        Self(regs as u64)
    }

    /// The first three syscall arguments.
    #[inline(always)]
    pub fn args(&self) -> Result<[u64; 3]> {
        Ok([
            read(self.0 + offset!(regs_di))?,
            read(self.0 + offset!(regs_si))?,
            read(self.0 + offset!(regs_dx))?,
        ])
    }

    /// The syscall number.
    #[inline(always)]
    pub fn syscall(&self) -> Result<u64> {
        read(self.0 + offset!(regs_orig_ax))
    }
}

/// `struct mm_struct *`.
#[derive(Clone, Copy)]
pub struct Mm(u64);

impl Mm {
    /// Where the new image's `argc` is, followed by the `argv` and `envp`
    /// pointers (`start_stack`).
    #[inline(always)]
    pub fn start_stack(self) -> Result<u64> {
        read(self.0 + offset!(mm_start_stack))
    }

    /// `arg_start..arg_end`: argv in the process's memory.
    #[inline(always)]
    pub fn args(self) -> Result<(u64, u64)> {
        Ok((
            read(self.0 + offset!(mm_arg_start))?,
            read(self.0 + offset!(mm_arg_end))?,
        ))
    }

    /// `env_start..env_end`: the environment in the process's memory.
    #[inline(always)]
    pub fn env(self) -> Result<(u64, u64)> {
        Ok((
            read(self.0 + offset!(mm_env_start))?,
            read(self.0 + offset!(mm_env_end))?,
        ))
    }
}

/// `struct file *`.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct File(u64);

impl File {
    #[inline(always)]
    pub fn at(ptr: u64) -> Self {
        Self(ptr)
    }

    #[inline(always)]
    pub fn inode(self) -> Result<Inode> {
        read(self.0 + offset!(file_f_inode)).map(Inode)
    }

    #[inline(always)]
    pub fn flags(self) -> Result<u32> {
        read(self.0 + offset!(file_f_flags))
    }

    #[inline(always)]
    pub fn dentry(self) -> Result<Dentry> {
        read(self.0 + offset!(file_dentry)).map(Dentry)
    }

    /// Its watch key: device and inode number.
    #[inline(always)]
    pub fn key(self) -> Result<FileKey> {
        let inode = self.inode()?;
        Ok(FileKey {
            dev: u64::from(inode.sb()?.dev()?),
            ino: inode.ino()?,
        })
    }

    /// What the open hooks test first, by probe.
    #[inline(always)]
    pub fn facts(self) -> Result<FileFacts> {
        let inode = self.inode()?;
        let sb = inode.sb()?;
        let dentry = self.dentry()?;
        Ok(FileFacts {
            file: self,
            ino: inode.ino()?,
            magic: sb.magic()?,
            dentry,
            name: dentry.name()?,
            dev: sb.dev()?,
            name_len: dentry.name_len()?,
            name_tail: 0,
            name_first: 0,
            name_read: 0,
        })
    }

    /// `f_path`: where the file was opened.
    #[inline(always)]
    pub fn path(self) -> Result<Path> {
        Ok(Path {
            dentry: self.dentry()?,
            mnt: VfsMount(read(self.0 + offset!(file_vfsmount))?),
        })
    }

    /// The layer's file behind this overlayfs file, which overlayfs opens
    /// and keeps in `private_data` (directly, or in a `struct ovl_file`);
    /// `None` before overlayfs's own open has run (the LSM hook runs
    /// earlier, and then sees the layer's file opened in its own right).
    #[inline(always)]
    pub fn overlay_layer_file(self) -> Result<Option<File>> {
        let private: u64 = read(self.0 + offset!(file_private_data))?;
        if private == 0 {
            return Ok(None);
        }
        // SAFETY: a field projection of the global's own pointer.
        let realfile = OFFSETS.field(|o| unsafe { &raw const (*o).ovl_file_realfile });
        let layer: u64 = match realfile {
            NO_OFFSET => private,
            OVL_LAYOUT_UNKNOWN => {
                let first: u64 = read(private)?;
                if first >= KERNEL_SPACE {
                    first
                } else {
                    private
                }
            }
            at => read(private + u64::from(at))?,
        };
        Ok((layer != 0).then_some(File(layer)))
    }
}

/// What the open hooks test of every opened file: its watch key, its
/// filesystem, its name. The layout of `struct file_facts` in
/// `file_facts.c`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileFacts {
    pub file: File,
    pub ino: u64,
    /// The superblock's `s_magic`: which filesystem.
    pub magic: u64,
    pub dentry: Dentry,
    /// `d_name.name`, `name_len` long.
    pub name: KernelStr,
    /// The superblock's `s_dev`.
    pub dev: u32,
    pub name_len: u32,
    /// The name's last 8 bytes and first byte, when `name_read` is 1
    /// (`file_facts.c` loads them from a name kept in the dentry).
    pub name_tail: u64,
    pub name_first: u32,
    pub name_read: u32,
}

impl FileFacts {
    #[inline(always)]
    pub fn key(&self) -> FileKey {
        FileKey {
            dev: u64::from(self.dev),
            ino: self.ino,
        }
    }
}

// `file_facts.c`'s results.
const FACTS_READ: i32 = 0;
const NO_FILE: i32 = 1;
const FILE_ONLY: i32 = 2;

unsafe extern "C" {
    fn secretmon_fd_file_facts(fd: u32, out: *mut FileFacts) -> i32;
}

/// The facts of the current task's open file `fd`; `None` when `fd` is not
/// open. `file_facts.c` walks the fd table by direct loads, and the file
/// too where the kernel has `bpf_rdonly_cast` (6.2+); otherwise the file's
/// fields are read here by probe. Needs `bpf_get_current_task_btf` (5.11+):
/// only programs the agent loads where the kernel has it may call this.
#[inline(always)]
pub fn current_file_facts(fd: u32) -> Result<Option<FileFacts>> {
    let mut facts = MaybeUninit::<FileFacts>::uninit();
    // SAFETY: the C function writes all of `facts` for FACTS_READ, and its
    // `file` for FILE_ONLY.
    match unsafe { secretmon_fd_file_facts(fd, facts.as_mut_ptr()) } {
        FACTS_READ => Ok(Some(unsafe { facts.assume_init() })),
        NO_FILE => Ok(None),
        FILE_ONLY => {
            let file = unsafe { (*facts.as_ptr()).file };
            file.facts().map(Some)
        }
        _ => Err(ReadError),
    }
}

/// What identity needs of a task, read in the kernel because the process
/// may be gone by the time userspace could look in /proc. The layout of
/// `struct task_facts` in `file_facts.c`.
#[repr(C)]
pub struct TaskFacts {
    /// `group_leader->start_boottime`: the process's start.
    pub start_ns: u64,
    /// `real_parent->tgid`.
    pub ppid: u32,
    /// The audit login uid; [`UNSET_LOGINUID`] without CONFIG_AUDIT.
    pub loginuid: u32,
    /// 1 when the process has a controlling terminal (`signal->tty`).
    pub tty: u32,
}

unsafe extern "C" {
    fn secretmon_current_task_facts(out: *mut TaskFacts) -> i32;
}

/// The current task's [`TaskFacts`]: loaded directly by `file_facts.c`
/// where the kernel has `bpf_get_current_task_btf` (5.11+), else read
/// here by probe.
#[inline(always)]
pub fn current_task_facts() -> Result<TaskFacts> {
    let mut facts = MaybeUninit::<TaskFacts>::uninit();
    // SAFETY: the C function writes all of `facts` when it returns 1.
    if unsafe { secretmon_current_task_facts(facts.as_mut_ptr()) } == 1 {
        return Ok(unsafe { facts.assume_init() });
    }
    let task = Task::current();
    Ok(TaskFacts {
        ppid: task.real_parent()?.tgid()?,
        loginuid: task.loginuid()?,
        tty: u32::from(task.has_tty()?),
        start_ns: task.group_leader()?.start_boottime()?,
    })
}

/// A field of a tracepoint's record at offset `at`, loaded directly (aya's
/// `read_at` calls `bpf_probe_read_kernel`).
///
/// # Safety
/// `at` is within the tracepoint's record and aligned for `T`, which the
/// verifier checks.
#[inline(always)]
pub unsafe fn record<T: Copy>(ctx: &TracePointContext, at: usize) -> T {
    // SAFETY: by the caller's contract.
    unsafe { ctx.as_ptr().byte_add(at).cast::<T>().read() }
}

/// Where kernel addresses start (x86_64, 4- and 5-level paging alike).
const KERNEL_SPACE: u64 = 0xff00_0000_0000_0000;

/// `struct inode *`.
#[derive(Clone, Copy)]
pub struct Inode(u64);

impl Inode {
    #[inline(always)]
    pub fn ino(self) -> Result<u64> {
        read(self.0 + offset!(inode_i_ino))
    }

    #[inline(always)]
    pub fn sb(self) -> Result<SuperBlock> {
        read(self.0 + offset!(inode_i_sb)).map(SuperBlock)
    }
}

/// `struct super_block *`.
#[derive(Clone, Copy)]
pub struct SuperBlock(u64);

impl SuperBlock {
    /// `s_dev`, the kernel's internal `dev_t`.
    #[inline(always)]
    pub fn dev(self) -> Result<u32> {
        read(self.0 + offset!(sb_s_dev))
    }

    #[inline(always)]
    pub fn magic(self) -> Result<u64> {
        read(self.0 + offset!(sb_s_magic))
    }
}

/// `struct dentry *`.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Dentry(u64);

impl Dentry {
    #[inline(always)]
    pub fn parent(self) -> Result<Dentry> {
        read(self.0 + offset!(dentry_d_parent)).map(Dentry)
    }

    /// The name's length (`d_name.len`).
    #[inline(always)]
    pub fn name_len(self) -> Result<u32> {
        read(self.0 + offset!(dentry_name_len))
    }

    /// The name (`d_name.name`), NUL-terminated.
    #[inline(always)]
    pub fn name(self) -> Result<KernelStr> {
        read(self.0 + offset!(dentry_name_ptr)).map(KernelStr)
    }
}

/// A NUL-terminated string in kernel memory.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct KernelStr(u64);

impl KernelStr {
    /// Its first `N` bytes, whatever follows the NUL.
    #[inline(always)]
    pub fn bytes<const N: usize>(self) -> Result<[u8; N]> {
        read(self.0)
    }

    /// `N` bytes from `at`, for a tail whose place the caller knows.
    #[inline(always)]
    pub fn bytes_at<T>(self, at: u64) -> Result<T> {
        read(self.0 + at)
    }

    /// Copy it into `dest`, cut to fit; its length without the NUL.
    #[inline(always)]
    pub fn copy_to(self, dest: &mut [u8]) -> Result<usize> {
        kernel_str(self.0, dest)
    }
}

/// `struct vfsmount *`, which sits inside a `struct mount`.
#[derive(Clone, Copy)]
pub struct VfsMount(u64);

impl VfsMount {
    #[inline(always)]
    pub fn root(self) -> Result<Dentry> {
        read(self.0 + offset!(vfsmount_mnt_root)).map(Dentry)
    }

    /// The `struct mount` around it.
    #[inline(always)]
    pub fn mount(self) -> Mount {
        Mount(self.0.wrapping_sub(offset!(mount_mnt)))
    }
}

/// `struct mount *`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mount(u64);

impl Mount {
    #[inline(always)]
    pub fn parent(self) -> Result<Mount> {
        read(self.0 + offset!(mount_mnt_parent)).map(Mount)
    }

    /// Where it is mounted, in its parent.
    #[inline(always)]
    pub fn mountpoint(self) -> Result<Dentry> {
        read(self.0 + offset!(mount_mnt_mountpoint)).map(Dentry)
    }

    #[inline(always)]
    pub fn vfsmount(self) -> VfsMount {
        VfsMount(self.0 + offset!(mount_mnt))
    }
}

/// A dentry and the mount it was reached through.
#[derive(Clone, Copy)]
pub struct Path {
    pub dentry: Dentry,
    pub mnt: VfsMount,
}

/// `struct filename *`, the kernel's copy of a path argument.
pub struct Filename(u64);

impl Filename {
    #[inline(always)]
    pub fn at(ptr: u64) -> Self {
        Self(ptr)
    }

    /// The kernel pointer to the name.
    #[inline(always)]
    pub fn name(&self) -> Result<u64> {
        read(self.0 + offset!(filename_name))
    }
}

/// `struct open_flags *`, `do_filp_open`'s digest of the open's flags.
pub struct OpenFlags(u64);

impl OpenFlags {
    #[inline(always)]
    pub fn at(ptr: u64) -> Self {
        Self(ptr)
    }

    #[inline(always)]
    pub fn open_flag(&self) -> Result<u32> {
        read(self.0 + offset!(open_flags_open_flag))
    }
}
