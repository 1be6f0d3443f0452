//! What the second-kernel tests (`tests/vm.rs`) need: qemu, a static
//! busybox and cpio for the guest's initramfs, and Debian's cloud kernel.
//!
//! The kernel is never installed: its package is downloaded and unpacked
//! under `<target>/vm/<package>/`, so `/boot` and the bootloader stay as
//! they are. The package name is resolved at setup time from the
//! `linux-image-cloud-amd64` meta package, so a new Debian point release is
//! picked up by the next setup.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, toolchain};

/// Debian packages: the emulator, the guest's userland (static: the
/// initramfs has no libraries for it), the archiver.
const PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "cpio"];
/// Depends on the current cloud kernel image package.
const KERNEL_META: &str = "linux-image-cloud-amd64";

/// Environment variable through which `cargo xtask test` hands the kernel
/// to the tests.
pub const KERNEL_ENV: &str = "SECRETMON_VM_KERNEL";
/// The same for the older kernel.
pub const OLD_KERNEL_ENV: &str = "SECRETMON_VM_KERNEL_5_10";

/// An older kernel: Debian bullseye's 5.10, before `bpf_task_pt_regs`, so
/// the agent takes its enter-hook path there. bullseye is not in this
/// machine's apt sources: fetched from the mirror's pool, pinned by hash.
const OLD_KERNEL_URL: &str = "http://deb.debian.org/debian/pool/main/l/linux-signed-amd64/\
                              linux-image-5.10.0-32-cloud-amd64_5.10.223-1_amd64.deb";
const OLD_KERNEL_SHA256: &str = "fb4a1229952d892138532c1d9f40a7fd0bd408e4dcf969c12e4524b6a89fdcb8";

/// The guest kernels.
pub struct Kernels {
    /// Debian's current cloud kernel (6.1).
    pub current: PathBuf,
    /// Debian bullseye's 5.10.
    pub old: PathBuf,
}

/// Install the packages and fetch the kernels.
pub fn ensure() -> Result<Kernels> {
    toolchain::ensure_apt("VM tools", &PACKAGES)?;
    Ok(Kernels {
        current: ensure_kernel()?,
        old: ensure_old_kernel()?,
    })
}

/// Download the pinned 5.10 package, check its hash and unpack its `boot/`
/// into `<target>/vm-5.10/<package>/`, apart from the current kernel's.
fn ensure_old_kernel() -> Result<PathBuf> {
    let package = "linux-image-5.10.0-32-cloud-amd64";
    let dir = cargo::target_dir().join("vm-5.10").join(package);
    let label = format!("VM kernel ({package})");
    if let Some(kernel) = unpacked_kernel(&dir) {
        eprintln!("xtask: {label}: present at {}", kernel.display());
        return Ok(kernel);
    }
    eprintln!(
        "xtask: {label}: missing, downloading into {} ...",
        dir.display()
    );
    let unpack = dir.with_file_name(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&unpack)?;
    let deb = unpack.join("kernel.deb");
    cargo::run(
        cargo::command("curl")?
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&deb)
            .arg(OLD_KERNEL_URL),
    )?;
    let sum = cargo::output(Command::new("sha256sum").arg(&deb)).unwrap_or_default();
    if sum.split_whitespace().next() != Some(OLD_KERNEL_SHA256) {
        bail!("{OLD_KERNEL_URL}: SHA-256 is not {OLD_KERNEL_SHA256} (got {sum:?})");
    }
    unpack_boot(&deb, &unpack, &dir)
}

/// The package `linux-image-cloud-amd64` depends on, e.g.
/// `linux-image-6.1.0-56-cloud-amd64`, from apt's local lists.
fn kernel_package() -> Option<String> {
    let out = cargo::output(
        cargo::command("apt-cache")
            .ok()?
            .args(["depends", KERNEL_META]),
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_owned)
}

/// `vmlinuz-*` under `dir/boot`, if unpacked there.
fn unpacked_kernel(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

fn ensure_kernel() -> Result<PathBuf> {
    let cache = cargo::target_dir().join("vm");
    let root = cargo::is_root();
    let package = match kernel_package() {
        Some(p) => p,
        None if root => {
            // A fresh image has no apt lists yet.
            eprintln!("xtask: VM kernel: {KERNEL_META} unknown to apt-cache, updating lists ...");
            cargo::run(cargo::command("apt-get")?.arg("update"))?;
            kernel_package().with_context(|| {
                format!("`apt-cache depends {KERNEL_META}` names no cloud kernel image")
            })?
        }
        None => bail!(
            "`apt-cache depends {KERNEL_META}` names no kernel image; run `sudo apt-get update` \
             and retry"
        ),
    };
    if let Some(kernel) = unpacked_kernel(&cache.join(&package)) {
        eprintln!(
            "xtask: VM kernel ({package}): present at {}",
            kernel.display()
        );
        return Ok(kernel);
    }
    eprintln!(
        "xtask: VM kernel ({package}): missing, downloading into {} ...",
        cache.display()
    );
    match fetch(&cache, &package) {
        Ok(kernel) => Ok(kernel),
        Err(e) if root => {
            // The lists may name a version the mirror no longer has.
            eprintln!("xtask: VM kernel: {e:#}; updating apt lists and retrying ...");
            cargo::run(cargo::command("apt-get")?.arg("update"))?;
            let package = kernel_package().unwrap_or(package);
            match unpacked_kernel(&cache.join(&package)) {
                Some(kernel) => Ok(kernel),
                None => fetch(&cache, &package),
            }
        }
        Err(e) => Err(e),
    }
}

/// Download `package` and unpack its `boot/` into `cache/package/`.
fn fetch(cache: &Path, package: &str) -> Result<PathBuf> {
    let download = cache.join("download");
    let unpack = cache.join(format!("{package}.partial"));
    let dir = cache.join(package);
    // Leftovers of an interrupted run.
    for d in [&download, &unpack, &dir] {
        let _ = fs::remove_dir_all(d);
    }
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let mut get = cargo::command("apt-get")?;
    get.current_dir(&download).args(["download", package]);
    if cargo::is_root() {
        // apt's `_apt` sandbox user cannot write into the target dir.
        get.args(["-o", "APT::Sandbox::User=root"]);
    }
    cargo::run(&mut get)?;
    let deb = fs::read_dir(&download)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
    let kernel = unpack_boot(&deb, &unpack, &dir)?;
    fs::remove_dir_all(&download)?;
    Ok(kernel)
}

/// Unpack the kernel package `deb` into `unpack`, keep its `boot/` and move
/// it to `dir`: the path of its `vmlinuz-*`. `deb` is removed.
fn unpack_boot(deb: &Path, unpack: &Path, dir: &Path) -> Result<PathBuf> {
    cargo::run(cargo::command("dpkg-deb")?.arg("-x").arg(deb).arg(unpack))?;
    // Only the kernel image (and its config) is booted; the modules are not.
    for sub in ["lib", "usr", "etc"] {
        let _ = fs::remove_dir_all(unpack.join(sub));
    }
    fs::remove_file(deb)?;
    fs::rename(unpack, dir).with_context(|| format!("renaming to {}", dir.display()))?;
    unpacked_kernel(dir).with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))
}
