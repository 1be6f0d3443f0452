//! Linux constants the programs and the agent share. Stable kernel ABI:
//! they are the same on every kernel secretmon supports.

/// `dirfd` meaning "relative to the current directory".
pub const AT_FDCWD: i32 = -100;
pub const EPERM: i32 = 1;
pub const EACCES: i32 = 13;
/// Error pointers (`ERR_PTR`) are the last 4095 values of the address space.
pub const MAX_ERRNO: i64 = 4095;
/// `O_CREAT | O_WRONLY | O_TRUNC`: what `creat(2)` opens with.
pub const CREAT_FLAGS: u32 = 0o1101;

/// `super_block.s_magic` of procfs.
pub const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// `super_block.s_magic` of overlayfs.
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// `task_struct.flags`: an io_uring worker thread of the submitting process.
pub const PF_IO_WORKER: u32 = 0x10;

/// io_uring opcodes of the requests that open files.
pub const IORING_OP_OPENAT: u8 = 18;
pub const IORING_OP_OPENAT2: u8 = 28;

/// x86_64 syscall numbers, to tell how an open reached a hook inside the
/// kernel's open from the number saved at syscall entry.
pub const NR_OPEN: u64 = 2;
pub const NR_CREAT: u64 = 85;
pub const NR_OPENAT: u64 = 257;
pub const NR_OPEN_BY_HANDLE_AT: u64 = 304;
pub const NR_IO_URING_ENTER: u64 = 426;
pub const NR_OPENAT2: u64 = 437;

/// The name of an io_uring open opcode.
pub fn io_uring_op_name(opcode: u32) -> &'static str {
    if opcode == u32::from(IORING_OP_OPENAT2) {
        "IORING_OP_OPENAT2"
    } else {
        "IORING_OP_OPENAT"
    }
}
