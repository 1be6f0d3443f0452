//! `cargo xtask package`: the .deb. The release binary writes its man
//! pages, completions and default config (`secretmon assets`), then
//! cargo-deb packs them with the systemd unit and the files under
//! `packaging/` as monitor/Cargo.toml's `[package.metadata.deb]` says.
//! Also the tools the packaging tests use (`ensure_tools`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, toolchain};

const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian's tools the packaging tests run: dpkg-shlibdeps (cargo-deb's
/// `$auto` dependencies), systemd-analyze, strace (the unit's syscall
/// filter), and Python's venv for the tools `toolchain` installs from PyPI.
const APT_TOOLS: [&str; 4] = ["dpkg-dev", "systemd", "strace", "python3-venv"];

/// Shared libraries the binary may link: glibc's and libgcc's, on every
/// Debian and Ubuntu. Anything else would be a dependency the .deb must
/// pull in ("static enough").
const ALLOWED_LIBS: [&str; 6] = [
    "linux-vdso.so",
    "libc.so",
    "libm.so",
    "libgcc_s.so",
    "ld-linux-x86-64.so",
    "libpthread.so",
];

/// Build the .deb; returns its path.
pub fn package() -> Result<PathBuf> {
    ensure_cargo_deb()?;
    cargo::run(cargo::cargo()?.args(["build", "--release", "--package", "monitor"]))
        .context("release build failed")?;
    let release = cargo::target_dir().join("release");
    let binary = release.join("secretmon");
    check_linkage(&binary)?;
    let assets = release.join("secretmon-assets");
    match std::fs::remove_dir_all(&assets) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", assets.display()));
        }
        _ => {}
    }
    cargo::run(
        std::process::Command::new(&binary)
            .arg("assets")
            .arg(&assets),
    )
    .context("generating the man pages, completions and default config failed")?;
    let out = cargo::target_dir().join("debian");
    let mut deb = cargo::cargo()?;
    deb.args(["deb", "--package", "monitor", "--no-build", "--output"])
        .arg(&out);
    cargo::run(&mut deb).context("cargo deb failed")?;
    let version = env!("CARGO_PKG_VERSION");
    let path = out.join(format!("secretmon_{version}-1_amd64.deb"));
    if !path.exists() {
        bail!("cargo deb wrote no {}", path.display());
    }
    eprintln!("xtask: package: {}", path.display());
    Ok(path)
}

/// `ldd`: only glibc and libgcc, which every target system has.
fn check_linkage(binary: &Path) -> Result<()> {
    let out = cargo::output(std::process::Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    let extra: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|lib| !ALLOWED_LIBS.iter().any(|ok| lib.contains(ok)))
        .collect();
    if !extra.is_empty() {
        bail!(
            "{} links {}: the package would need them installed",
            binary.display(),
            extra.join(", ")
        );
    }
    Ok(())
}

fn ensure_cargo_deb() -> Result<()> {
    let label = format!("cargo-deb {CARGO_DEB_VERSION}");
    let found = cargo::output(cargo::command("cargo-deb")?.arg("--version"));
    if found
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION))
    {
        eprintln!("xtask: {label}: present");
        return Ok(());
    }
    eprintln!("xtask: {label}: missing, installing ...");
    // The machine's stable toolchain builds it, as it builds xtask.
    cargo::run(cargo::command("cargo")?.args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// What the packaging tests need besides the package and the Python tools
/// (`toolchain`).
pub fn ensure_tools() -> Result<()> {
    toolchain::ensure_debs("packaging test tools", &APT_TOOLS)?;
    ensure_cargo_deb()
}
