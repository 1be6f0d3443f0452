//! `cargo xtask`: bootstrap, build, run, test and lint secretmon.
//!
//! xtask itself compiles with the machine's default stable toolchain; every
//! cargo it spawns uses the pinned nightly (see `cargo.rs`).

mod bench;
mod bench_fleet;
mod cargo;
mod module_cycles;
mod package;
mod toolchain;
mod vm;

use std::{
    os::unix::process::CommandExt as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::toolchain::Scope;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for secretmon",
    long_about = "Developer tasks for secretmon.\n\n\
        Each subcommand first runs the idempotent setup, which installs the pinned \
        toolchain nightly-2026-07-01 and bpf-linker 0.13.0 when missing and mounts \
        tracefs when needed. Every cargo that xtask starts uses the pinned toolchain."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the pinned nightly toolchain and bpf-linker, mount tracefs, and
    /// fetch what the second-kernel tests boot.
    ///
    /// Idempotent: each step checks first and only installs what is missing,
    /// printing one status line per step. Installing LLVM 22 (apt) and mounting
    /// tracefs need root. The second-kernel tests (tests/vm.rs) need qemu,
    /// busybox-static and cpio (apt) and Debian's cloud kernel, downloaded and
    /// unpacked under <target>/vm, never installed; `test` runs this step too.
    Setup {
        /// Also install what `cargo xtask bench` needs: bpftool, bpftrace
        /// and auditd (apt).
        #[arg(long)]
        bench: bool,
    },
    /// Set up, then build the monitor package (and with it the eBPF objects).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run target/<profile>/secretmon (needs root).
    ///
    /// ARGS are passed to secretmon and default to `run`, e.g.
    /// `sudo -E cargo xtask run --release -- run --help`.
    Run {
        /// Build and run with the release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for secretmon [default: run].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then build the .deb into target/debian (cargo-deb, installed
    /// when missing): the release binary, the systemd unit, the default
    /// config, man pages and shell completions generated from the binary.
    Package,
    /// Set up, build the .deb (as `package` does), then run
    /// `cargo test --workspace [ARGS...]`.
    ///
    /// ARGS are passed to `cargo test --workspace` as is, e.g.
    /// `cargo xtask test --release -- --nocapture`. A leading `--` is eaten by
    /// xtask, so flags for the test binaries alone need two:
    /// `cargo xtask test -- -- --nocapture`.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then check formatting and run clippy with warnings denied.
    ///
    /// Fails on an import cycle among the top-level modules of
    /// monitor/src (naming the imports that close it), then runs
    /// `cargo fmt --all -- --check`,
    /// `cargo clippy --workspace --all-targets -- -D warnings`, and clippy
    /// on the kernel programs as they are built: for the BPF target
    /// (`--package monitor-ebpf --target bpfel-unknown-none`).
    Lint,
    /// Set up, build the release agent, then measure its cost and
    /// throughput against baselines taken in the same run (needs root).
    ///
    /// Times open()+close() of an unwatched file, getppid() and posix_spawn
    /// of /bin/true bare, under a minimal bpftrace hook, under the agent and
    /// under auditd, in alternating rounds; each BPF program's run time per
    /// call from the kernel's statistics; and watched reads by several
    /// processes against what the agent counts. Prints Markdown tables
    /// (about 3 minutes), then times the open hooks in the second kernel
    /// (about 2 minutes more). Takes /tmp/secretmon-bench.lock (not the
    /// probe lock) while measuring. See BENCHMARKS.md.
    Bench {
        /// Skip the open hooks' comparison in the second kernel (qemu).
        #[arg(long)]
        skip_vm: bool,
        /// Skip the fleet run (1,000 simulated hosts into PostgreSQL, ~7 min).
        #[arg(long)]
        skip_fleet: bool,
        /// Rounds of every configuration (odd); fewer for a quick look.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// One timed loop of `bench`, run in a process of its own.
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` keeps the whole context chain on one line.
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup { bench } => {
            toolchain::setup(if bench { Scope::Bench } else { Scope::Test }).map(drop)
        }
        Cmd::Build { release } => {
            toolchain::setup(Scope::Full)?;
            build(release)
        }
        Cmd::Run { release, args } => run(release, args),
        Cmd::Package => {
            toolchain::setup(Scope::Build)?;
            package::package().map(drop)
        }
        Cmd::Test { args } => test(&args),
        Cmd::Lint => lint(),
        Cmd::Bench {
            skip_vm,
            skip_fleet,
            rounds,
        } => {
            let kernel = toolchain::setup(Scope::Bench)?;
            build(true)?;
            bench::bench(rounds)?;
            if !skip_fleet {
                bench_fleet::fleet()?;
            }
            if skip_vm {
                return Ok(());
            }
            bench_hooks_in_vm(kernel)
        }
        Cmd::BenchWorker(args) => bench::worker(&args),
    }
}

/// The open hooks this host refuses (fexit, BPF LSM), timed against each
/// other and bare on the second kernel: an ignored test of tests/vm.rs.
fn bench_hooks_in_vm(kernels: Option<vm::Kernels>) -> Result<()> {
    let Some(vm::Kernels {
        current: kernel, ..
    }) = kernels
    else {
        eprintln!("xtask: bench: no second kernel fetched: the open hooks are not compared");
        return Ok(());
    };
    println!();
    let mut cmd = cargo::cargo()?;
    cmd.args([
        "test",
        "--package",
        "monitor",
        "--test",
        "vm",
        "--",
        "--ignored",
        "--exact",
        "bench_open_hooks_on_debian_6_1",
        "--nocapture",
    ])
    .env(vm::KERNEL_ENV, kernel);
    cargo::run(&mut cmd)
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo::cargo()?;
    cmd.args(["build", "--package", "monitor"]);
    if release {
        cmd.arg("--release");
    }
    cargo::run(&mut cmd).context("build failed")
}

fn run(release: bool, mut args: Vec<String>) -> Result<()> {
    // Check before spending minutes on setup and build.
    if !cargo::is_root() {
        bail!(
            "secretmon needs root (or CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE): \
             run `sudo -E cargo xtask run`"
        );
    }
    toolchain::setup(Scope::Full)?;
    build(release)?;

    if args.is_empty() {
        args.push("run".to_owned());
    }
    let profile = if release { "release" } else { "debug" };
    let bin = cargo::target_dir().join(profile).join("secretmon");
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(&args);
    eprintln!("xtask: running `{}`", cargo::display(&cmd));
    // exec replaces xtask (cargo and rustup exec too), so secretmon receives
    // Ctrl-C/SIGTERM directly and its exit status is ours. exec only returns
    // on error.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not execute {}", bin.display()))
}

fn test(args: &[String]) -> Result<()> {
    let kernel = toolchain::setup(Scope::Test)?;
    let start = Instant::now();
    // tests/package.rs installs it.
    package::package()?;
    let mut cmd = cargo::cargo()?;
    cmd.args(["test", "--workspace"]).args(args);
    if let Some(kernels) = kernel {
        // tests/vm.rs boots them in qemu.
        cmd.env(vm::KERNEL_ENV, kernels.current);
        cmd.env(vm::OLD_KERNEL_ENV, kernels.old);
    }
    // tests/delivery.rs validates OCSF with the schema setup installed.
    cmd.env(toolchain::OCSF_PYTHON_ENV, toolchain::ocsf_python());
    // Every end-to-end test runs a real agent that sees the whole host, so
    // one test's burst of reads lands in another's ring buffer: one test at
    // a time keeps their results their own.
    cmd.env("RUST_TEST_THREADS", "1");
    let result = cargo::run(&mut cmd);
    let elapsed = secs(start.elapsed());
    match result {
        Ok(()) => {
            eprintln!("xtask: test passed in {elapsed}");
            Ok(())
        }
        Err(e) => Err(e.context(format!("test failed after {elapsed}"))),
    }
}

fn lint() -> Result<()> {
    // clippy runs monitor/build.rs, which links the eBPF objects with
    // bpf-linker; tracefs is not needed.
    toolchain::setup(Scope::Build)?;
    // Run them all so one CI run reports every problem.
    let cycles = module_cycles::check(&cargo::workspace_root().join("monitor/src"));
    let fmt = cargo::run(cargo::cargo()?.args(["fmt", "--all", "--", "--check"]));
    let clippy = cargo::run(cargo::cargo()?.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]));
    let bpf_clippy = cargo::run(&mut bpf_clippy()?);
    let failures: Vec<String> = [cycles, fmt, clippy, bpf_clippy]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("lint failed: {}", failures.join("; also "))
    }
}

/// clippy on the kernel programs, built as monitor/build.rs builds them
/// (aya-build): for the BPF target, with core from source and the BPF
/// target architecture the programs' register access is compiled for. A
/// target directory of its own, so it does not invalidate the host build.
fn bpf_clippy() -> Result<std::process::Command> {
    let mut cmd = cargo::cargo()?;
    cmd.args([
        "clippy",
        "--package",
        "monitor-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
    ])
    .arg(cargo::target_dir().join("bpf-clippy"))
    .args(["--", "-D", "warnings"])
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    );
    Ok(cmd)
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Cmd {
        Cli::try_parse_from(["xtask"].iter().chain(args))
            .unwrap()
            .command
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_args_keep_hyphens() {
        let Cmd::Run { release, args } = parse(&["run", "--release", "run", "--verbose"]) else {
            panic!("not run");
        };
        assert!(release);
        assert_eq!(args, ["run", "--verbose"]);

        let Cmd::Run { release, args } = parse(&["run"]) else {
            panic!("not run");
        };
        assert!(!release);
        assert!(args.is_empty());
    }

    #[test]
    fn test_args_reach_cargo_test() {
        let Cmd::Test { args } = parse(&["test", "--release", "--", "--nocapture"]) else {
            panic!("not test");
        };
        assert_eq!(args, ["--release", "--", "--nocapture"]);

        let Cmd::Test { args } = parse(&["test", "--", "--", "--nocapture"]) else {
            panic!("not test");
        };
        assert_eq!(args, ["--", "--nocapture"]);
    }
}
