// What the open hooks need of a file the current task just opened, read by
// direct loads through pointers the verifier knows the type of
// (`bpf_get_current_task_btf()` and what it leads to), where
// `bpf_probe_read_kernel` costs a helper call per field. Rust cannot emit
// CO-RE relocations: clang does, for the fields declared below, and aya
// rewrites them to the running kernel's offsets when it loads the
// programs. Linked into the Rust object as bitcode by bpf-linker
// (monitor-ebpf/build.rs); called only from `kernel.rs`.
//
// Needs `bpf_get_current_task_btf` (5.11+): only programs the agent loads
// on kernels that have it call this.

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
struct dentry {
	struct qstr d_name;
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
// `fd_array` is `NR_OPEN_DEFAULT` (BITS_PER_LONG) long on every kernel.
#define FD_ARRAY_LEN 64
struct files_struct {
	struct fdtable *fdt;
	struct file *fd_array[FD_ARRAY_LEN];
};
struct task_struct {
	struct files_struct *files;
};
#pragma clang attribute pop

static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;

// Mirrors `kernel::FileFacts`.
struct file_facts {
	u64 file;
	u64 ino;
	u64 magic;
	u64 dentry;
	u64 name;
	u32 dev;
	u32 name_len;
};

// The outcomes, as `kernel::FdFile` reads them.
#define FACTS_READ 0
#define NO_FILE 1
#define NOT_INLINE 2

// `files->fd_array[fd]`, at a constant offset on each branch: the verifier
// refuses a variable offset on a typed pointer. The empty asm keeps the
// compiler from folding the branches back into `fd * 8`.
#define CASE(i)                                                                \
	case i:                                                                \
		slot = &files->fd_array[i];                                    \
		break;
#define CASES8(i)                                                              \
	CASE(i) CASE(i + 1) CASE(i + 2) CASE(i + 3) CASE(i + 4) CASE(i + 5)    \
	CASE(i + 6) CASE(i + 7)

static __attribute__((always_inline)) struct file *
fd_array_file(struct files_struct *files, u32 fd)
{
	struct file **slot;

	switch (fd) {
		CASES8(0)
		CASES8(8)
		CASES8(16)
		CASES8(24)
		CASES8(32)
		CASES8(40)
		CASES8(48)
		CASES8(56)
	default:
		return 0;
	}
	asm volatile("" : "+r"(slot));
	return *slot;
}

// The facts of open file `fd` of the current task into `out`. The file
// comes from the table embedded in `files_struct` (the first 64 fds, until
// the table grows); otherwise NOT_INLINE, and the caller reads it by probe.
__attribute__((noinline)) int secretmon_fd_file_facts(u32 fd, struct file_facts *out)
{
	struct files_struct *files = bpf_get_current_task_btf()->files;
	struct fdtable *fdt = files->fdt;

	if (fd >= fdt->max_fds)
		return NO_FILE;
	if (fd >= FD_ARRAY_LEN || (void *)fdt->fd != (void *)&files->fd_array[0])
		return NOT_INLINE;
	struct file *file = fd_array_file(files, fd);
	if (!file)
		return NO_FILE;
	struct inode *inode = file->f_inode;
	struct super_block *sb = inode->i_sb;
	struct dentry *dentry = file->f_path.dentry;

	out->file = (u64)file;
	out->ino = inode->i_ino;
	out->magic = sb->s_magic;
	out->dev = sb->s_dev;
	out->dentry = (u64)dentry;
	out->name = (u64)dentry->d_name.name;
	out->name_len = dentry->d_name.len;
	return FACTS_READ;
}
