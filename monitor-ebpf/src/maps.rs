//! The object's maps and read-only globals. Names are the contract with the
//! loader (`monitor_common::names`).

use core::mem::MaybeUninit;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
};
use monitor_common::{
    ENV_NAME_LEN, ENV_SUFFIX_LEN, FileKey, IoUringLayout, KernelOffsets, NameFilter, NameRule,
    RULE_NAME_LEN, WATCHED_INODE_WORDS, env_name::EnvFilter, names::Program,
};

use crate::{env_scan::EnvScratch, opens::PendingOpen};

/// A value the agent writes into the object before loading it. Read-only
/// and frozen once loaded, so the verifier knows its value: offsets read
/// from here are constants to it.
#[repr(transparent)]
pub struct ReadOnly<T>(MaybeUninit<T>);

impl<T> ReadOnly<T> {
    const fn new(value: T) -> Self {
        Self(MaybeUninit::new(value))
    }

    /// One field, read at run time: volatile, so that the compiler does not
    /// fold in the placeholder it was built with.
    #[inline(always)]
    pub fn field<U: Copy>(&self, field: impl FnOnce(*const T) -> *const U) -> U {
        // SAFETY: `field` projects to a field of the value, which is always
        // initialised (the placeholder, or what the agent wrote).
        unsafe { core::ptr::read_volatile(field(self.0.as_ptr())) }
    }
}

/// Field offsets from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static OFFSETS: ReadOnly<KernelOffsets> = ReadOnly::new(KernelOffsets::UNSET);

/// The cheap pre-tests of the name rules.
#[unsafe(no_mangle)]
pub static NAME_FILTER: ReadOnly<NameFilter> = ReadOnly::new(NameFilter::EMPTY);

/// Offset of `opcode` in the io_uring submit tracepoint.
#[unsafe(no_mangle)]
pub static IO_URING: ReadOnly<IoUringLayout> = ReadOnly::new(IoUringLayout {
    opcode_offset: u32::MAX,
});

/// 1 where the exec program finds the environment's entries through the
/// new stack's `envp` pointers and reads the environment at once; 0 where
/// it reads entry by entry. The first scan needs a verifier that prunes as
/// 6.18's does (6.1's gives up on it); the agent sets 1 from 6.2 on and
/// falls back to 0 if the program is refused.
#[unsafe(no_mangle)]
pub static ENV_FROM_ENVP: ReadOnly<u32> = ReadOnly::new(0);

/// Pending bytes in `EVENTS` at each multiple of which the reader is
/// woken; the agent sets an eighth of the ring. The placeholder wakes on
/// every 64 KiB.
#[unsafe(no_mangle)]
pub static WAKE_UP_BYTES: ReadOnly<u64> = ReadOnly::new(64 * 1024);

/// `CAPTURE_LSM_OPENS` once the agent has attached the `file_open` LSM hook:
/// a map, not a global, so that the agent switches both sides at once after
/// loading.
#[map]
pub static CAPTURE: Array<u32> = Array::with_max_entries(1, 0);

/// 4 MiB by default; the agent may resize it (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Events that did not fit in `EVENTS`: the kernel does not count a failed
/// reservation for us. One counter for all CPUs, added to atomically, so
/// that every event header can carry it and the reader sees a loss at the
/// first record after it.
#[map]
pub static LOST: Array<u64> = Array::with_max_entries(1, 0);

/// Failed kernel reads and map updates, per CPU, by program.
#[map]
pub static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Program::COUNT as u32, 0);

/// Files to report, filled and updated by the agent. Value: the agent's id.
#[map]
pub static WATCHED: HashMap<FileKey, u32> = HashMap::with_max_entries(65_536, 0);

/// The watched-inode filter: a bit per inode-number hash
/// (`monitor_common::watched_inode_bit`), set by the agent before it adds a
/// file to `WATCHED`, never cleared (a stale bit costs one lookup).
#[map]
pub static WATCHED_INODES: Array<u64> = Array::with_max_entries(WATCHED_INODE_WORDS, 0);

/// Arguments of opens in flight, by thread, kept for the exit to report a
/// denied open (the exit tracepoint has only the return value). LRU, so a
/// thread that dies mid-syscall cannot fill it.
#[map]
pub static OPEN_ARGS: LruHashMap<u64, PendingOpen> = LruHashMap::with_max_entries(16_384, 0);

/// Processes already reported for io_uring opens: once each is enough.
#[map]
pub static IO_URING_SEEN: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// Exact (`credentials`) and prefix (`id_`) name rules. Filled by the agent.
#[map]
pub static NAME_RULES: LpmTrie<[u8; RULE_NAME_LEN], NameRule> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Per-CPU room to build a name-rule event's path before reserving it.
#[map]
pub static NAME_SCRATCH: PerCpuArray<[u8; RULE_NAME_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Watched environment variable names, NUL-padded. Filled by the agent.
#[map]
pub static WATCHED_ENV: HashMap<[u8; ENV_NAME_LEN], u8> = HashMap::with_max_entries(1024, 0);

/// Watched name suffixes (`_TOKEN` for `*_TOKEN`), NUL-padded. Filled by the
/// agent. A name is checked with its last one and last two `_`-words.
#[map]
pub static WATCHED_ENV_SUFFIX: HashMap<[u8; ENV_SUFFIX_LEN], u8> =
    HashMap::with_max_entries(256, 0);

/// The lengths and first bytes of the watched environment names and
/// suffixes, tested before the lookups in the two maps above. Filled by the
/// agent with them.
#[map]
pub static ENV_FILTER: Array<EnvFilter> = Array::with_max_entries(1, 0);

/// Per-CPU working memory for the environment scan: too big for the stack.
#[map]
pub static ENV_SCRATCH: PerCpuArray<EnvScratch> = PerCpuArray::with_max_entries(1, 0);
