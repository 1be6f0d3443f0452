//! The harness the end-to-end test binaries share: the real agent started
//! as a child, its JSON lines collected, secrets planted that must never be
//! printed.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

pub mod chromium;
pub mod postgres;
pub mod receivers;
pub mod vm;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_secretmon");
/// A fake secret planted in watched files: it must never be printed.
pub const PLANTED: &str = "AKIAFAKEE2E0000SECRET+planted/value";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `true` when the test can load probes; otherwise prints why it skips.
pub fn can_load_probes(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("{test}: skipped: loading eBPF programs needs root (run `sudo -E cargo xtask test`)");
    false
}

/// A running agent whose stdout lines arrive on a channel.
pub struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Taken when a failure needs it to explain an exit.
    stderr: Option<thread::JoinHandle<String>>,
    /// The ledger of a test that gave no `--state`, removed with it.
    _state: Option<tempfile::TempDir>,
    /// The `started` agent event: which hooks it attached.
    pub started: Value,
}

impl Agent {
    /// `secretmon run ARGS`; with a state dir of its own unless ARGS name one,
    /// so that tests do not share a ledger.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// As [`Agent::start`], with `env` set for the agent.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let state = (!args.contains(&"--state")).then(|| tempfile::tempdir().unwrap());
        let mut cmd = Command::new(BIN);
        cmd.arg("run").args(args).envs(env.iter().copied());
        if let Some(dir) = &state {
            cmd.arg("--state").arg(dir.path());
        }
        Self::spawn(cmd, state, Duration::from_secs(30))
    }

    /// The agent as `cmd` starts it (with a wrapper in front, say), waiting
    /// `timeout` for `started`; `state` is removed with it.
    pub fn spawn(mut cmd: Command, state: Option<tempfile::TempDir>, timeout: Duration) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn secretmon");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut agent = Self {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
            _state: state,
            started: Value::Null,
        };
        agent.started = agent.wait_for(timeout, |v| {
            v["kind"] == "agent" && v["status"] == "started"
        });
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first new event matching `pred`, or a failure with what was seen.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.try_wait_for(timeout, pred).unwrap_or_else(|| {
            let status = self.child.try_wait().ok().flatten();
            // An agent that exited said why on stderr.
            let stderr = match (status, self.stderr.take()) {
                (Some(_), Some(h)) => h.join().unwrap_or_default(),
                _ => String::new(),
            };
            panic!(
                "no matching event within {timeout:?} (agent exit: {status:?}, stderr: {stderr}); seen:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// The first new event matching `pred` within `timeout`, if any.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if pred(&v) {
                return Some(v);
            }
        }
    }

    /// Freeze the agent (SIGSTOP): events wait in the ring buffer, so what
    /// happens meanwhile is read only after `resume`, as a busy agent would.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Send `signal`, collect the rest of stdout and stderr, and return
    /// (exit code, all stdout lines, stderr).
    pub fn stop(self, signal: nix::sys::signal::Signal) -> (Option<i32>, Vec<String>, String) {
        self.stop_within(signal, Duration::from_secs(20))
    }

    /// As [`Agent::stop`], for an agent with much to commit on the way out.
    pub fn stop_within(
        mut self,
        signal: nix::sys::signal::Signal,
        limit: Duration,
    ) -> (Option<i32>, Vec<String>, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after {signal}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status.code(), std::mem::take(&mut self.seen), stderr)
    }
}

/// An agent a failed test leaves behind is killed, so that it holds no
/// probes (and no inherited lock) after the test.
impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child started by hand (an agent with `--output`, one under strace...),
/// killed with everything it started when dropped, as [`Agent`] is. It runs
/// in a process group of its own: killing strace alone would leave its
/// tracee running.
pub struct Reaped(Option<Child>);

impl Reaped {
    pub fn spawn(cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt as _;
        Self(Some(cmd.process_group(0).spawn().expect("spawn")))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("not yet waited for")
    }

    /// Wait for the child to exit, as [`Child::wait_with_output`].
    pub fn wait_with_output(mut self) -> std::process::Output {
        let child = self.0.take().expect("not yet waited for");
        child.wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

pub fn plant_secret(dir: &Path) -> PathBuf {
    let aws = dir.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    let path = aws.join("credentials");
    std::fs::write(
        &path,
        format!("[default]\naws_access_key_id = AKIAFAKE\naws_secret_access_key = {PLANTED}\n"),
    )
    .unwrap();
    path
}

pub fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    let path = String::from_utf8(out.stdout).unwrap();
    std::fs::canonicalize(path.trim()).unwrap()
}

pub fn assert_no_planted(texts: &[&str]) {
    for t in texts {
        assert!(!t.contains(PLANTED), "planted secret leaked into output");
    }
}

/// Open `path` read-only through io_uring (not an open syscall) from this
/// process, and close it.
pub fn io_uring_open(path: &Path) {
    let path =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).unwrap();
    let mut ring = io_uring::IoUring::new(8).expect("io_uring is enabled");
    let open = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDONLY)
        .build();
    // SAFETY: `path` outlives the request, which completes before it drops.
    unsafe { ring.submission().push(&open).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let fd = ring.completion().next().unwrap().result();
    assert!(fd >= 0, "io_uring open failed: {fd}");
    // SAFETY: the fd was just opened by the ring and is ours.
    unsafe { libc::close(fd) };
}

/// Open `path` read-only by file handle from this process, and close it:
/// `name_to_handle_at`, then `open_by_handle_at` (CAP_DAC_READ_SEARCH)
/// with its directory as the mount fd, so the file is never opened by path.
pub fn handle_open(path: &Path) {
    use std::os::fd::AsRawFd as _;
    /// `struct file_handle` with room for `MAX_HANDLE_SZ` bytes.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let name =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).unwrap();
    let mut handle = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    // SAFETY: `name` is a C string and `handle` has room for the largest
    // handle, as its `bytes` says.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            name.as_ptr(),
            (&raw mut handle).cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at: {}",
        std::io::Error::last_os_error()
    );
    let dir = std::fs::File::open(path.parent().unwrap()).unwrap();
    // SAFETY: `handle` was filled by the kernel above.
    let fd = unsafe {
        libc::open_by_handle_at(dir.as_raw_fd(), (&raw mut handle).cast(), libc::O_RDONLY)
    };
    assert!(
        fd >= 0,
        "open_by_handle_at: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the fd was just opened and is ours.
    unsafe { libc::close(fd) };
}

/// Write `content` to `path` (its directory made) with `mode`.
pub fn write(path: &Path, content: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

/// A path as text (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run `cmd` to its successful end, its stdout discarded; its pid.
pub fn run_ok(cmd: &mut Command) -> u32 {
    let child = cmd.stdout(Stdio::null()).spawn().expect("spawn");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
    pid
}

/// A `secret_read` event of process `pid`.
pub fn is_read_by(v: &Value, pid: u32) -> bool {
    v["kind"] == "secret_read" && v["process"]["pid"] == pid
}

/// `secretmon report --state STATE ARGS`: (stdout, stderr) of a success.
pub fn report(state: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(BIN)
        .args(["report", "--state", s(state)])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "report {args:?}: {stderr}");
    (stdout, stderr)
}

pub fn report_json(state: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    serde_json::from_str(&report(state, &all).0).unwrap()
}

/// (type, secret path or id) of every finding in a JSON report.
pub fn report_findings(r: &Value) -> BTreeSet<(String, String)> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let secret = &f["secret"];
            let what = secret["path"].as_str().or(secret["id"].as_str()).unwrap();
            (f["type"].as_str().unwrap().to_string(), what.to_string())
        })
        .collect()
}

/// Poll `done` until it holds, for at most 20 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
