//! secretmon's kernel object. The programs exist only when this crate is
//! built for the BPF target (by monitor/build.rs); a host build, as done by
//! `cargo test --workspace` or `cargo clippy --workspace`, is an empty binary.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
