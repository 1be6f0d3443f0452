//! secretmon's kernel object. The programs exist only when this crate is
//! built for the BPF target (by monitor/build.rs); a host build, as done by
//! `cargo test --workspace` or `cargo clippy --workspace`, is an empty binary.
//!
//! Tracepoints are the base: they load on every kernel >= 5.8 with BTF.
//! Where the kernel allows BPF trampolines, the agent uses instead an fexit
//! hook on `do_filp_open` (every open, io_uring's too, and no syscall
//! tracepoint) or the `file_open` LSM hook (successful opens, io_uring's
//! too; the exit tracepoints then report only denials). Only accesses to
//! watched files and process lifecycle events cross to userspace, through
//! one ring buffer.
//!
//! - `maps`: the maps and read-only globals;
//! - `kernel`: typed reads of kernel structs (the only kernel-facing
//!   `unsafe`);
//! - `emit`: the event header, the one way to send an event, and the loss
//!   and error counters;
//! - `opens`, `name_rules`: the open hooks and what they report;
//! - `exec`, `env_scan`: process lifecycle, argv and environment names;
//! - `path_walk`: a dentry's path, as `d_path` would give it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no `AtomicU64::fetch_add` (no compare-and-swap); the
// intrinsic is the kernel's atomic add.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// One unaligned load (`env_scan::load_u64`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod env_scan;
#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod name_rules;
#[cfg(target_arch = "bpf")]
mod opens;
#[cfg(target_arch = "bpf")]
mod path_walk;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
