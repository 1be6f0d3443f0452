//! Compiles the C part of the kernel object (`src/file_facts.c`, direct
//! reads with CO-RE relocations, which Rust cannot emit) to LLVM bitcode,
//! and hands it to bpf-linker, which links it with the Rust code into one
//! object. Only for the BPF target; a host build has no programs.
use std::{env, path::PathBuf, process::Command};

/// The clang of the LLVM that bpf-linker and the pinned nightly use
/// (`cargo xtask setup` installs it); `CLANG` overrides.
const CLANG: &str = "clang-22";
const SOURCE: &str = "src/file_facts.c";

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=CLANG");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bitcode = out.join("file_facts.bc");
    let clang = env::var("CLANG").unwrap_or_else(|_| CLANG.to_owned());
    // -g: the relocations are emitted with the BTF, from the debug info.
    let status = Command::new(&clang)
        .args([
            "--target=bpfel",
            "-g",
            "-O2",
            "-Wall",
            "-Werror",
            "-emit-llvm",
        ])
        .args(["-c", SOURCE, "-o"])
        .arg(&bitcode)
        .status()
        .unwrap_or_else(|e| panic!("running {clang} (run `cargo xtask setup`): {e}"));
    assert!(status.success(), "{clang} failed on {SOURCE}");
    println!("cargo::rustc-link-arg-bins={}", bitcode.display());
}
