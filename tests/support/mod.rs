//! The harness of the end-to-end tests: the real binary, started and
//! stopped as a script would. Shared by the test files that need it.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_secretmon");

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
    stderr: thread::JoinHandle<String>,
}

impl Agent {
    /// `secretmon run ARGS` with `env` added, once it says "started".
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
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
            stderr,
        };
        agent.wait_for(Duration::from_secs(60), |v| {
            v["kind"] == "agent" && v["status"] == "started"
        });
        agent
    }

    /// The first new event matching `pred`, or a failure with what was seen.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.try_wait_for(timeout, pred).unwrap_or_else(|| {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "no matching event within {timeout:?} (agent exit: {status:?}); seen:\n{}",
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

    /// Send `signal`, collect the rest of stdout and stderr, and return
    /// (exit code, all stdout lines, stderr).
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> (Option<i32>, Vec<String>, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
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
        let stderr = self.stderr.join().unwrap();
        (status.code(), self.seen, stderr)
    }
}
