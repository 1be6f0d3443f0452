//! `cargo xtask setup`: install what building and running secretmon needs.
//!
//! Every step checks first and only installs what is missing, so a second
//! run installs nothing. Each step prints one status line to stderr.

use std::{io, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo::{self, TOOLCHAIN},
    vm,
};

/// Components of the pinned toolchain: rust-src to build core for the bpfel
/// target, rustfmt and clippy for `cargo xtask lint`.
const COMPONENTS: [&str; 3] = ["rust-src", "rustfmt", "clippy"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker 0.13.0 is built against LLVM 22. `/usr/bin/llvm-config` may be
/// an older LLVM, so the install points at this prefix explicitly.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_DEB: &str = "llvm-22-dev";

const TRACEFS: &str = "/sys/kernel/tracing";

/// How much of the bootstrap a subcommand needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Toolchain and bpf-linker: enough to compile (monitor/build.rs links
    /// the eBPF objects with bpf-linker).
    Build,
    /// Also tracefs, which the agent's tracepoints need at run time.
    Full,
    /// Also qemu, busybox, cpio and the Debian kernel that the
    /// second-kernel tests (`tests/vm.rs`) boot, and what the packaging
    /// tests (`tests/package.rs`) run: cargo-deb, systemd-analyze, strace,
    /// kubernetes-validate and hadolint.
    Test,
}

/// Returns the guest kernels for the second-kernel tests when `scope` is
/// [`Scope::Test`] and it could be set up.
pub fn setup(scope: Scope) -> Result<Option<vm::Kernels>> {
    let start = std::time::Instant::now();
    ensure_toolchain().context(
        "setup step `toolchain` failed; check network access, or run \
         `rustup toolchain install nightly-2026-07-01 --profile minimal \
         --component rust-src,rustfmt,clippy` by hand",
    )?;
    ensure_bpf_linker().context(
        "setup step `bpf-linker` failed; see the output above, install LLVM 22 \
         (apt package llvm-22-dev) and retry",
    )?;
    if scope != Scope::Build {
        ensure_tracefs().context("setup step `tracefs` failed")?;
    }
    let mut kernel = None;
    if scope == Scope::Test {
        crate::package::ensure_tools().context("setup step `packaging test tools` failed")?;
        match vm::ensure() {
            Ok(k) => kernel = Some(k),
            // CI must run them; elsewhere they skip and say why.
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("xtask: VM: {e:#}; the second-kernel tests (tests/vm.rs) will skip")
            }
            Err(e) => return Err(e.context("setup step `VM` (second-kernel tests) failed")),
        }
    }
    eprintln!("xtask: setup done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(kernel)
}

fn ensure_toolchain() -> Result<()> {
    let label = format!("toolchain {TOOLCHAIN} ({})", COMPONENTS.join(", "));

    let list = cargo::output(cargo::command("rustup")?.args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed; is rustup installed (https://rustup.rs)?")?;
    // Lines look like `nightly-2026-07-01-x86_64-unknown-linux-gnu (default)`.
    let installed = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name == TOOLCHAIN
                || name
                    .strip_prefix(TOOLCHAIN)
                    .is_some_and(|rest| rest.starts_with('-'))
        });
    if !installed {
        eprintln!("xtask: {label}: missing, installing ...");
        return cargo::run(cargo::command("rustup")?.args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            &COMPONENTS.join(","),
        ]));
    }

    let components = cargo::output(cargo::command("rustup")?.args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        TOOLCHAIN,
    ]))
    .with_context(|| format!("`rustup component list --toolchain {TOOLCHAIN}` failed"))?;
    // Names carry the host triple (`clippy-x86_64-unknown-linux-gnu`) except
    // target-independent ones (`rust-src`).
    let missing: Vec<&str> = COMPONENTS
        .into_iter()
        .filter(|c| {
            !components.lines().any(|l| {
                l.trim() == *c || l.strip_prefix(c).is_some_and(|rest| rest.starts_with('-'))
            })
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: {label}: present");
        return Ok(());
    }
    eprintln!(
        "xtask: {label}: adding missing component(s) {} ...",
        missing.join(", ")
    );
    cargo::run(
        cargo::command("rustup")?
            .args(["component", "add", "--toolchain", TOOLCHAIN])
            .args(&missing),
    )
}

/// Version line printed by the bpf-linker found on the children's PATH.
fn bpf_linker_version() -> Option<String> {
    let out = cargo::output(cargo::command("bpf-linker").ok()?.arg("--version"))?;
    Some(out.trim().to_owned())
}

fn ensure_bpf_linker() -> Result<()> {
    let label = format!("bpf-linker {BPF_LINKER_VERSION}");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    match bpf_linker_version() {
        Some(v) if v == wanted => {
            eprintln!("xtask: {label}: present");
            return Ok(());
        }
        Some(v) => eprintln!("xtask: {label}: found `{v}` instead, reinstalling ..."),
        None => eprintln!("xtask: {label}: missing, installing ..."),
    }

    ensure_llvm()?;

    let llvm_bin = Path::new(LLVM_PREFIX).join("bin");
    let mut install = cargo::cargo_with_path(&[&llvm_bin])?;
    install
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        // Otherwise llvm-sys may find `/usr/bin/llvm-config`, an older LLVM.
        .env("LLVM_PREFIX", LLVM_PREFIX);
    cargo::run(&mut install)?;

    match bpf_linker_version() {
        Some(v) if v == wanted => Ok(()),
        Some(v) => bail!("installed bpf-linker reports `{v}`, expected `{wanted}`"),
        None => bail!(
            "bpf-linker is still not runnable from {}",
            cargo::cargo_bin_dir().display()
        ),
    }
}

/// LLVM 22 development files, which bpf-linker links against.
fn ensure_llvm() -> Result<()> {
    let label = format!("LLVM ({LLVM_DEB})");
    let has_dpkg = cargo::output(cargo::command("dpkg")?.arg("--version")).is_some();
    if !has_dpkg {
        // Not Debian/Ubuntu: accept any LLVM 22 installed under the prefix.
        if Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
            eprintln!("xtask: {label}: found {LLVM_PREFIX}");
            return Ok(());
        }
        bail!("no dpkg and no {LLVM_PREFIX}/bin/llvm-config; install LLVM 22 under {LLVM_PREFIX}");
    }
    if cargo::output(cargo::command("dpkg")?.args(["-s", LLVM_DEB])).is_some() {
        eprintln!("xtask: {label}: present");
        return Ok(());
    }
    if !cargo::is_root() {
        bail!(
            "{LLVM_DEB} is not installed and installing it needs root; run \
             `sudo apt-get update && sudo apt-get install -y {LLVM_DEB}` and retry"
        );
    }
    eprintln!("xtask: {label}: missing, installing with apt-get ...");
    cargo::run(cargo::command("apt-get")?.arg("update"))?;
    cargo::run(
        cargo::command("apt-get")?
            .args(["install", "-y", LLVM_DEB])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn ensure_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    match events.try_exists() {
        Ok(true) => {
            eprintln!("xtask: tracefs: mounted at {TRACEFS}");
            return Ok(());
        }
        // A mounted tracefs is root-only (0700); an empty mount point is not.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            eprintln!("xtask: tracefs: mounted at {TRACEFS} (not readable without root)");
            return Ok(());
        }
        Ok(false) | Err(_) => {}
    }
    let mount = format!("mount -t tracefs tracefs {TRACEFS}");
    if !cargo::is_root() {
        bail!("tracefs is not mounted at {TRACEFS} and mounting needs root; run `sudo {mount}`");
    }
    eprintln!("xtask: tracefs: not mounted, mounting ...");
    cargo::run(cargo::command("mount")?.args(["-t", "tracefs", "tracefs", TRACEFS]))
        .with_context(|| format!("could not mount tracefs; run `{mount}` by hand"))?;
    if !events.exists() {
        bail!("mounted tracefs but {} is still missing", events.display());
    }
    Ok(())
}

/// Whether dpkg has `package` installed: a `busybox` on PATH may be the
/// dynamically linked one.
pub fn installed(package: &str) -> bool {
    cargo::output(std::process::Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// Install the Debian `packages` that are missing, with apt-get (as root).
pub fn ensure_apt(what: &str, packages: &[&str]) -> Result<()> {
    let label = format!("{what} ({})", packages.join(", "));
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: {label}: present");
        return Ok(());
    }
    if !cargo::is_root() {
        bail!(
            "{} not installed and installing needs root; run `sudo apt-get update && \
             sudo apt-get install -y {}` and retry",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!(
        "xtask: {label}: missing {}, installing with apt-get ...",
        missing.join(", ")
    );
    cargo::run(cargo::command("apt-get")?.arg("update"))?;
    cargo::run(
        cargo::command("apt-get")?
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
