//! Spawning child processes (mostly cargo) with the environment the rest of
//! the workspace needs.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The nightly the workspace (and monitor/build.rs, via aya-build) builds with.
pub const TOOLCHAIN: &str = "nightly-2026-07-01";

/// Workspace root: xtask lives one level below it.
pub fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // An absolute path with at least one component always has a parent.
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// `$CARGO_HOME/bin` (default `$HOME/.cargo/bin`): where rustup's proxies and
/// `cargo install`ed tools such as bpf-linker live.
pub fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin")
}

/// PATH for children, with `extra_front` and then `$CARGO_HOME/bin` first.
///
/// `$CARGO_HOME/bin` must come before any toolchain's own bin directory: only
/// the rustup proxies there honour `RUSTUP_TOOLCHAIN`, and bpf-linker is
/// installed there.
pub fn child_path(extra_front: &[&Path]) -> Result<OsString> {
    let mut front: Vec<PathBuf> = extra_front.iter().map(|p| p.to_path_buf()).collect();
    front.push(cargo_bin_dir());
    let rest = env::var_os("PATH").unwrap_or_default();
    let rest = env::split_paths(&rest).filter(|p| !front.contains(p));
    env::join_paths(front.iter().cloned().chain(rest)).context("PATH contains an invalid entry")
}

/// Target directory: `CARGO_TARGET_DIR` (relative to the workspace root, where
/// children run) or `<workspace root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command pinned to [`TOOLCHAIN`], run from the workspace root.
pub fn cargo() -> Result<Command> {
    cargo_with_path(&[])
}

/// Like [`cargo`], with `extra_path` put first on PATH.
pub fn cargo_with_path(extra_path: &[&Path]) -> Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        // Honoured by the rustup proxy and by aya-build in monitor/build.rs,
        // which builds the eBPF crate with `rustup run $RUSTUP_TOOLCHAIN`.
        .env("RUSTUP_TOOLCHAIN", TOOLCHAIN)
        .env("PATH", child_path(extra_path)?)
        // Set by the `cargo run` that started xtask and points at the stable
        // cargo; don't let it leak into the nightly build.
        .env_remove("CARGO");
    Ok(cmd)
}

/// A non-cargo command with the children's PATH.
pub fn command(program: &str) -> Result<Command> {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path(&[])?);
    Ok(cmd)
}

/// Render a command for log and error messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Run `cmd` with inherited stdio and fail unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("xtask: running `{shown}`");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Run `cmd` and return its stdout; `None` if it could not start or failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether xtask runs with euid 0.
pub fn is_root() -> bool {
    // `id -u` prints the effective uid; avoids a libc dependency.
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}
