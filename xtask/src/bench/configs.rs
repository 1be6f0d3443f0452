//! What runs while a workload is timed: nothing, the minimal hook, the
//! agent, or auditd with two rules.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cargo;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    Bare,
    /// The cheapest hook there is: an empty BPF program (`r0 = 0; exit`) on
    /// `syscalls:sys_exit_openat`, loaded by bpftrace.
    Hook,
    Agent,
    /// auditd with a watch rule on the secret and an `execve` rule.
    Auditd,
}

/// The order of the first round; later rounds rotate it.
pub const CONFIGS: [Config; 4] = [Config::Bare, Config::Hook, Config::Agent, Config::Auditd];

impl Config {
    pub fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Hook => "minimal hook",
            Self::Agent => "secretmon",
            Self::Auditd => "auditd",
        }
    }
}

/// bpftrace's program for [`Config::Hook`]: compiled to two instructions.
pub const HOOK_PROGRAM: &str = "tracepoint:syscalls:sys_exit_openat { }";

/// The files and binaries the configurations use.
pub struct Setup {
    pub agent_bin: PathBuf,
    pub secret: PathBuf,
    pub dir: PathBuf,
}

/// A configuration in place; [`Active::stop`] undoes it.
pub enum Active {
    Bare,
    Hook(Hook),
    Agent(Agent),
    Auditd(AuditRules),
}

impl Active {
    pub fn start(config: Config, setup: &Setup) -> Result<Self> {
        Ok(match config {
            Config::Bare => Self::Bare,
            Config::Hook => Self::Hook(Hook::start(&setup.dir)?),
            Config::Agent => Self::Agent(Agent::start(setup)?),
            Config::Auditd => Self::Auditd(AuditRules::add(&setup.secret)?),
        })
    }

    /// The daemon that does this configuration's work outside the measured
    /// processes: the agent, or auditd.
    pub fn daemon(&self) -> Option<u32> {
        match self {
            Self::Agent(a) => Some(a.pid()),
            Self::Auditd(_) => audit_pid(),
            Self::Bare | Self::Hook(_) => None,
        }
    }

    /// The pid whose BPF programs this configuration loaded.
    pub fn bpf_owner(&self) -> Option<u32> {
        match self {
            Self::Hook(h) => Some(h.0.pid),
            Self::Agent(a) => Some(a.pid()),
            Self::Bare | Self::Auditd(_) => None,
        }
    }

    pub fn stop(self) -> Result<()> {
        match self {
            Self::Bare => Ok(()),
            Self::Hook(h) => h.stop(),
            Self::Agent(a) => a.stop(),
            Self::Auditd(rules) => rules.remove(),
        }
    }
}

/// A child process we stop with a signal, and kill if we are unwound first.
struct Owned {
    child: Option<Child>,
    pid: u32,
}

impl Owned {
    fn new(child: Child) -> Self {
        Self {
            pid: child.id(),
            child: Some(child),
        }
    }

    /// Send `signal` and wait; the exit status must be a success.
    fn stop(mut self, signal: libc::c_int, what: &str) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal_pid(self.pid, signal);
        let status = child.wait()?;
        if !status.success() {
            bail!("{what} exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_pid(self.pid, libc::SIGTERM);
            let _ = child.wait();
        }
    }
}

fn signal_pid(pid: u32, signal: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we started and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// bpftrace holding [`HOOK_PROGRAM`] attached.
pub struct Hook(Owned);

impl Hook {
    fn start(dir: &Path) -> Result<Self> {
        let log = File::create(dir.join("bpftrace.log"))?;
        let child = Command::new("bpftrace")
            .args(["-e", HOOK_PROGRAM])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting bpftrace (cargo xtask setup --bench installs it)")?;
        let hook = Self(Owned::new(child));
        wait_for(
            Duration::from_secs(60),
            "bpftrace to load its program",
            || Ok(!super::stats::programs_of(hook.0.pid)?.is_empty()),
        )?;
        // It attaches right after loading, then idles.
        wait_quiet(hook.0.pid);
        Ok(hook)
    }

    fn stop(self) -> Result<()> {
        self.0.stop(libc::SIGINT, "bpftrace")
    }
}

/// `secretmon run` watching the secret, with its default settings.
pub struct Agent {
    process: Owned,
    pub output: PathBuf,
}

impl Agent {
    pub fn start(setup: &Setup) -> Result<Self> {
        let output = setup.dir.join("agent.jsonl");
        let state = setup.dir.join("agent-state");
        let _ = std::fs::remove_file(&output);
        let _ = std::fs::remove_dir_all(&state);
        let child = Command::new(&setup.agent_bin)
            .args(["run", "--watch"])
            .arg(&setup.secret)
            .arg("--output")
            .arg(&output)
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(File::create(setup.dir.join("agent.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", setup.agent_bin.display()))?;
        let agent = Self {
            process: Owned::new(child),
            output,
        };
        wait_for(Duration::from_secs(60), "the agent to start", || {
            Ok(std::fs::read_to_string(&agent.output)
                .unwrap_or_default()
                .contains("\"status\":\"started\""))
        })?;
        // Its first inventory scan and findings pass follow the start.
        wait_quiet(agent.pid());
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    pub fn stop(self) -> Result<()> {
        self.process.stop(libc::SIGTERM, "the agent")
    }
}

/// CPU time of all threads of process `pid` so far, in ns: the first field
/// of each thread's `/proc/<pid>/task/<tid>/schedstat`.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        // A thread that ended since the listing has no schedstat any more.
        if let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("schedstat")) {
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// Wait (at most 10 s) until `pid` uses less than 5 ms of CPU in 300 ms.
fn wait_quiet(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = cpu_ns(pid).unwrap_or(0);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(300));
        let now = cpu_ns(pid).unwrap_or(0);
        if now.saturating_sub(last) < 5_000_000 {
            return;
        }
        last = now;
    }
}

/// Poll `done` every 50 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        if Instant::now() > deadline {
            bail!("waited {} s for {what}", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kib: u64,
    /// The peak RSS.
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

const AUDIT_KEY: &str = "secretmon-bench";
/// Keeps tasks forked while it is loaded out of audit's syscall path (an
/// audit context is given at fork). Once auditd has run, every new task
/// gets one otherwise, and the baselines would pay for audit.
const NEVER_TASK: [&str; 2] = ["-a", "never,task"];
const EXECVE_RULE: [&str; 7] = [
    "always,exit",
    "-F",
    "arch=b64",
    "-S",
    "execve",
    "-k",
    AUDIT_KEY,
];

/// auditd running for the whole bench, and the `never,task` rule loaded
/// outside the auditd rounds.
pub struct Audit {
    /// The daemon's pid when the bench started it.
    started: Option<u32>,
}

impl Audit {
    pub fn prepare() -> Result<Self> {
        let mut started = None;
        if audit_pid().is_none() {
            eprintln!("bench: starting auditd");
            cargo::run(&mut Command::new("auditd")).context("starting auditd")?;
            wait_for(Duration::from_secs(10), "auditd to register", || {
                Ok(audit_pid().is_some())
            })?;
            started = audit_pid();
        }
        // Debian's default; the kernel's 64 would make audited processes wait
        // for auditd to drain its queue.
        auditctl(&["-b", "8192"])?;
        if !audit_rules()?.contains("-a never,task") {
            auditctl(&NEVER_TASK)?;
        }
        Ok(Self { started })
    }

    /// Stop auditd if the bench started it. `never,task` stays, so that
    /// the host's later processes don't pay for an audit the bench turned on.
    pub fn finish(self) -> Result<()> {
        if let Some(pid) = self.started {
            signal_pid(pid, libc::SIGTERM);
            wait_for(Duration::from_secs(10), "auditd to stop", || {
                Ok(audit_pid().is_none())
            })?;
        }
        Ok(())
    }
}

/// auditd's pid from `auditctl -s`, if it runs.
fn audit_pid() -> Option<u32> {
    let status = cargo::output(Command::new("auditctl").arg("-s"))?;
    let pid = status
        .lines()
        .find_map(|l| l.strip_prefix("pid "))?
        .trim()
        .parse()
        .ok()?;
    (pid != 0).then_some(pid)
}

fn audit_rules() -> Result<String> {
    cargo::output(Command::new("auditctl").arg("-l")).context("auditctl -l failed")
}

fn auditctl(args: &[&str]) -> Result<()> {
    let out = Command::new("auditctl")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .context("running auditctl")?;
    if !out.status.success() {
        bail!(
            "auditctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The auditd configuration's rules: a read watch on the secret (what
/// auditd offers for file access) and every `execve` (for processes).
pub struct AuditRules {
    secret: Option<PathBuf>,
}

impl AuditRules {
    fn add(secret: &Path) -> Result<Self> {
        let secret_arg = secret.to_str().context("a non-UTF-8 secret path")?;
        auditctl(&["-d", NEVER_TASK[1]])?;
        let rules = Self {
            secret: Some(secret.to_path_buf()),
        };
        auditctl(&["-w", secret_arg, "-p", "r", "-k", AUDIT_KEY])?;
        auditctl(&[&["-a"][..], &EXECVE_RULE].concat())?;
        Ok(rules)
    }

    fn remove(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        let Some(secret) = self.secret.take() else {
            return Ok(());
        };
        let secret_arg = secret.to_str().context("a non-UTF-8 secret path")?;
        // Each may be missing if adding failed half-way.
        let watch = auditctl(&["-W", secret_arg, "-p", "r", "-k", AUDIT_KEY]);
        let execve = auditctl(&[&["-d"][..], &EXECVE_RULE].concat());
        auditctl(&NEVER_TASK)?;
        watch.and(execve)
    }
}

impl Drop for AuditRules {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            eprintln!("bench: removing the audit rules: {e:#}");
        }
    }
}
