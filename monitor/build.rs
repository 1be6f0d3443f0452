//! Builds the kernel object (`monitor-ebpf`) for the BPF target and puts it
//! in OUT_DIR, where `probes.rs` embeds it.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // `cargo xtask` pins the toolchain through RUSTUP_TOOLCHAIN; build the
    // kernel object with the same one.
    println!("cargo::rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    println!("cargo::rerun-if-changed=../monitor-common/src");
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        Some(t) if !t.is_empty() => Toolchain::Custom(t),
        _ => Toolchain::Nightly,
    };
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitor-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "monitor-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
    .context("building the eBPF object (run `cargo xtask setup` to install bpf-linker and the pinned nightly)")
}
