// What the programs need of the current task (every event header) and of
// a file it just opened (the open hooks), read by direct loads through
// pointers the verifier knows the type of (`bpf_get_current_task_btf()` and
// what it leads to), where `bpf_probe_read_kernel` costs a helper call per
// field. Rust cannot emit CO-RE relocations: clang does, for the fields
// declared below, and aya rewrites them to the running kernel's offsets
// when it loads the programs. Linked into the Rust object as bitcode by
// bpf-linker (monitor-ebpf/build.rs); called only from `kernel.rs`.
//
// Needs `bpf_get_current_task_btf` (5.11+): the file's facts are read only
// by programs the agent loads on kernels that have it; the task's facts
// only where `HAS_TASK_BTF` says so.

typedef unsigned int u32;
typedef unsigned long long u64;

// Only the fields read here; CO-RE matches them by name in the kernel's BTF.
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct qstr {
	union {
		struct {
			u32 hash;
			u32 len;
		};
		u64 hash_len;
	};
	const unsigned char *name;
};
struct super_block {
	u32 s_dev;
	unsigned long s_magic;
};
struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
};
// A short name is kept in the dentry itself: `d_shortname` since 6.14,
// `d_iname` (in the `___old` flavour) before.
union shortname_store {
	u64 words[5];
};
struct dentry {
	struct qstr d_name;
	union shortname_store d_shortname;
};
struct dentry___old {
	u64 d_iname[4];
};
struct path {
	void *mnt;
	struct dentry *dentry;
};
struct file {
	struct path f_path;
	struct inode *f_inode;
};
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};
struct files_struct {
	struct fdtable *fdt;
};
struct tty_struct;
struct signal_struct {
	struct tty_struct *tty;
};
// `loginuid` exists only with CONFIG_AUDIT.
typedef struct {
	u32 val;
} kuid_t;
struct task_struct {
	int tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	u64 start_boottime;
	struct signal_struct *signal;
	kuid_t loginuid;
	struct files_struct *files;
};
// Only for its first field, a `struct file *`, at offset 0 on every kernel:
// see `fd_entry`.
struct kiocb {
	struct file *ki_filp;
};
#pragma clang attribute pop

static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;
static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *src) = (void *)113;

// `bpf_rdonly_cast` (6.2+): a kernel pointer as a pointer of a kernel type
// the verifier then lets the program load through. Weak: on older kernels
// aya leaves the call poisoned, and `HAS_RDONLY_CAST` keeps it unreached.
extern void *bpf_rdonly_cast(const void *obj, u32 btf_id) __attribute__((section(".ksyms"), weak));

// Set by the agent before loading (read-only then, so the verifier drops
// the branch not taken): whether the kernel has `bpf_rdonly_cast`, and
// `bpf_get_current_task_btf` in tracepoint programs.
volatile const u32 HAS_RDONLY_CAST = 0;
volatile const u32 HAS_TASK_BTF = 0;

// `__builtin_preserve_field_info`'s question: is the field there?
#define FIELD_EXISTS 2
// `monitor_common::UNSET_LOGINUID`.
#define UNSET_LOGINUID 0xffffffffu

// Mirrors `kernel::TaskFacts`.
struct task_facts {
	u64 start_ns;
	u32 ppid;
	u32 loginuid;
	u32 tty;
};

// What identity needs of the current task into `out`: 1 when read, 0 where
// the kernel lacks `bpf_get_current_task_btf` and the caller reads them by
// probe. A load through a typed pointer cannot fail: a bad address reads 0.
// Not noinline: bpf-linker inlines it into the caller, where the verifier
// then drops whichever of the two paths `HAS_TASK_BTF` rules out.
int secretmon_current_task_facts(struct task_facts *out)
{
	if (!HAS_TASK_BTF)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();

	out->ppid = task->real_parent->tgid;
	out->loginuid = __builtin_preserve_field_info(task->loginuid, FIELD_EXISTS) ? task->loginuid.val : UNSET_LOGINUID;
	out->tty = task->signal->tty != 0;
	out->start_ns = task->group_leader->start_boottime;
	return 1;
}

// Mirrors `kernel::FileFacts`.
struct file_facts {
	u64 file;
	u64 ino;
	u64 magic;
	u64 dentry;
	u64 name;
	u32 dev;
	u32 name_len;
	u64 name_tail;
	u32 name_first;
	u32 name_read;
};

// The outcomes, as `kernel::current_file_facts` reads them.
#define FACTS_READ 0
#define NO_FILE 1
#define FILE_ONLY 2
#define READ_FAILED 3

// The name's first byte and last 8 bytes (see `name_rules::tail`) into
// `out`, when the dentry keeps it inline, as short names are: direct loads
// then, where the name's own memory could only be read by probe.
static __attribute__((always_inline)) void
inline_name(struct dentry *dentry, u32 len, struct file_facts *out)
{
	u64 w[5] = {};

	if (__builtin_preserve_field_info(dentry->d_shortname, FIELD_EXISTS)) {
		if ((void *)dentry->d_name.name != (void *)&dentry->d_shortname || len > 40)
			return;
		w[0] = dentry->d_shortname.words[0];
		w[1] = dentry->d_shortname.words[1];
		w[2] = dentry->d_shortname.words[2];
		w[3] = dentry->d_shortname.words[3];
		w[4] = dentry->d_shortname.words[4];
	} else {
		struct dentry___old *old = (void *)dentry;

		if ((void *)dentry->d_name.name != (void *)&old->d_iname || len > 32)
			return;
		w[0] = old->d_iname[0];
		w[1] = old->d_iname[1];
		w[2] = old->d_iname[2];
		w[3] = old->d_iname[3];
	}
	if (len == 0)
		return;
	out->name_first = w[0] & 0xff;
	if (len <= 8) {
		// Bytes past the name (its NUL, stale bytes) shift out.
		out->name_tail = w[0] << (8 * (8 - len));
	} else {
		u32 at = len - 8, shift = 8 * (at % 8);
		u64 lo, hi;

		switch (at / 8) {
		case 0: lo = w[0]; hi = w[1]; break;
		case 1: lo = w[1]; hi = w[2]; break;
		case 2: lo = w[2]; hi = w[3]; break;
		default: lo = w[3]; hi = w[4]; break;
		}
		out->name_tail = shift ? (lo >> shift) | (hi << (64 - shift)) : lo;
	}
	out->name_read = 1;
}

// The facts of open file `fd` of the current task into `out`. The fd table
// is reached by direct loads; the table's entry is a plain pointer, read by
// probe; the file's fields by direct loads too where the kernel can give
// that pointer its type, else only `out->file` is set (FILE_ONLY) and the
// caller reads the rest by probe.
__attribute__((noinline)) int secretmon_fd_file_facts(u32 fd, struct file_facts *out)
{
	struct fdtable *fdt = bpf_get_current_task_btf()->files->fdt;
	struct file *file;

	if (fd >= fdt->max_fds)
		return NO_FILE;
	if (HAS_RDONLY_CAST) {
		// The entry is a `struct file *` in an array the verifier has no
		// type for. Cast as a `struct kiocb`, whose first field is a
		// `struct file *`, it is read by a direct load: a helper call
		// (`bpf_probe_read_kernel`) was a third of this program's time.
		struct kiocb *entry = bpf_rdonly_cast(&fdt->fd[fd], __builtin_btf_type_id(*(struct kiocb *)0, 1));

		file = entry->ki_filp;
		if (!file)
			return NO_FILE;
	} else {
		if (bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]))
			return READ_FAILED;
		if (!file)
			return NO_FILE;
		out->file = (u64)file;
		return FILE_ONLY;
	}
	out->file = (u64)file;

	struct inode *inode = file->f_inode;
	struct super_block *sb = inode->i_sb;
	struct dentry *dentry = file->f_path.dentry;

	out->ino = inode->i_ino;
	out->magic = sb->s_magic;
	out->dev = sb->s_dev;
	out->dentry = (u64)dentry;
	out->name = (u64)dentry->d_name.name;
	out->name_len = dentry->d_name.len;
	out->name_read = 0;
	inline_name(dentry, out->name_len, out);
	return FACTS_READ;
}
