//! A second Linux kernel for the end-to-end tests: Debian's cloud kernel
//! booted in qemu (TCG) with an initramfs of a static busybox, the agent,
//! and a copy of the test binary for guest-side helpers. The guest's /init
//! runs a scenario and prints its results on the serial console between
//! markers; [`Boot`] parses them back.
//!
//! Console protocol (one marker per line, so kernel messages in between do
//! not break it):
//!
//! ```text
//! ==VAL key value==          a scalar (step pids and exit codes, ...)
//! ==BEGIN name== ... ==END name==   a file's contents
//! ==DONE==                   the scenario ran to its end
//! ```

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Set by `cargo xtask test` to the kernel `cargo xtask setup` unpacked.
pub const KERNEL_ENV: &str = "SECRETMON_VM_KERNEL";
/// The older kernel (Debian bullseye's 5.10), which `cargo xtask setup`
/// unpacks under `<target>/vm-5.10/`.
pub const OLD_KERNEL_ENV: &str = "SECRETMON_VM_KERNEL_5_10";
/// No boot may take longer; qemu is killed then.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the guest waits for the agent's `started` event.
const AGENT_START_SECS: u32 = 150;
/// Where the guest finds the test binary, for guest-side helpers.
pub const GUEST_TEST_BIN: &str = "/usr/local/bin/vmtest";
pub const GUEST_SECRETMON: &str = "/usr/local/bin/secretmon";
/// Lines of console shown when a boot fails.
const TAIL_LINES: usize = 80;
const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet loglevel=1";

/// What is missing for booting a guest, if anything.
fn missing() -> Option<String> {
    for (program, arg) in [("qemu-system-x86_64", "--version"), ("cpio", "--version")] {
        let ok = Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{program}` is not installed"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox (busybox-static) is not installed".into());
    }
    None
}

/// The kernel to boot: `$SECRETMON_VM_KERNEL`, else the one `cargo xtask
/// setup` unpacked under `<target>/vm`. `None` (after saying why) when it or
/// qemu is missing; under CI that is a failure instead.
pub fn kernel(test: &str) -> Option<PathBuf> {
    let kernel = std::env::var_os(KERNEL_ENV)
        .map(PathBuf::from)
        .or_else(|| cached_kernel("vm"));
    usable(test, KERNEL_ENV, kernel)
}

/// The older kernel, as [`kernel`] finds the current one.
pub fn old_kernel(test: &str) -> Option<PathBuf> {
    let kernel = std::env::var_os(OLD_KERNEL_ENV)
        .map(PathBuf::from)
        .or_else(|| cached_kernel("vm-5.10"));
    usable(test, OLD_KERNEL_ENV, kernel)
}

fn usable(test: &str, env: &str, kernel: Option<PathBuf>) -> Option<PathBuf> {
    let why = match &kernel {
        None => Some(format!("{env} is not set and no kernel is cached")),
        Some(k) if !k.exists() => Some(format!("{env}={} does not exist", k.display())),
        Some(_) => missing(),
    };
    match why {
        None => kernel,
        Some(why) if std::env::var_os("CI").is_some() => panic!(
            "{test}: cannot boot the second kernel: {why}; `cargo xtask test` sets it up \
             (qemu-system-x86, busybox-static, cpio, Debian's cloud kernel)"
        ),
        Some(why) => {
            eprintln!(
                "{test}: skipped: {why}; run `cargo xtask setup` (or `cargo xtask test`) to \
                 fetch qemu and the Debian kernel"
            );
            None
        }
    }
}

/// `<target>/<cache>/*/boot/vmlinuz-*`, found from the agent binary's place
/// (`<target>/<profile>/secretmon`).
fn cached_kernel(cache: &str) -> Option<PathBuf> {
    let target = Path::new(super::BIN).parent()?.parent()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(target.join(cache))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_dir(e.path().join("boot")).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Quote for the guest's shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One shell command the guest runs and reports on: its pid (a step that
/// `exec`s its program keeps the pid), exit code and output.
#[derive(Clone)]
pub struct Step {
    pub name: String,
    pub script: String,
}

impl Step {
    /// `script` runs with `sh -c`; its stdout and stderr are printed on the
    /// console, so a step that reads a secret must send it to /dev/null.
    pub fn sh(name: &str, script: &str) -> Self {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "step names are [A-Za-z0-9_]: {name}"
        );
        Self {
            name: name.into(),
            script: script.into(),
        }
    }
}

/// What a guest boots with and runs.
pub struct Guest {
    name: String,
    kernel: PathBuf,
    cmdline: Vec<String>,
    files: Vec<(String, Vec<u8>, u32)>,
    before: Vec<Step>,
    agent: Option<Vec<String>>,
    after: Vec<Step>,
}

impl Guest {
    pub fn new(name: &str, kernel: &Path) -> Self {
        Self {
            name: name.into(),
            kernel: kernel.into(),
            cmdline: Vec::new(),
            files: Vec::new(),
            before: Vec::new(),
            agent: None,
            after: Vec::new(),
        }
    }

    /// Append to the kernel command line (e.g. `lsm=...`).
    pub fn cmdline(mut self, arg: &str) -> Self {
        self.cmdline.push(arg.into());
        self
    }

    /// A file in the guest, owned by root, with `mode`; parents are 0755.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        assert!(path.starts_with('/'), "guest paths are absolute: {path}");
        self.files.push((path.into(), contents.into(), mode));
        self
    }

    /// A step run before the agent starts (or without one).
    pub fn before(mut self, step: Step) -> Self {
        self.before.push(step);
        self
    }

    /// Run `secretmon run ARGS --output /tmp/events.json --state
    /// /tmp/state` in the background, and the `after` steps once it printed
    /// `started`.
    pub fn agent(mut self, args: &[&str]) -> Self {
        self.agent = Some(args.iter().map(|a| a.to_string()).collect());
        self
    }

    pub fn after(mut self, step: Step) -> Self {
        self.after.push(step);
        self
    }

    fn init_script(&self) -> String {
        let mut s = String::from(INIT_PROLOGUE);
        for step in &self.before {
            writeln!(s, "step {} {}", step.name, sh_quote(&step.script)).unwrap();
        }
        if let Some(args) = &self.agent {
            let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
            write!(
                s,
                r#"
{GUEST_SECRETMON} run {args} --output /tmp/events.json --state /tmp/state 2>/tmp/agent.err &
AGENT=$!
i=0
while ! grep -q '"status":"started"' /tmp/events.json 2>/dev/null; do
    kill -0 $AGENT 2>/dev/null || break
    i=$((i + 1))
    [ $i -ge {ticks} ] && break
    sleep 0.1
done
if grep -q '"status":"started"' /tmp/events.json 2>/dev/null; then
    echo "==VAL agent.started 1=="
"#,
                args = args.join(" "),
                ticks = AGENT_START_SECS * 10,
            )
            .unwrap();
            for step in &self.after {
                writeln!(s, "    step {} {}", step.name, sh_quote(&step.script)).unwrap();
            }
            s.push_str(
                r#"fi
kill -TERM $AGENT 2>/dev/null
wait $AGENT
echo "==VAL agent.rc $?=="
show events /tmp/events.json
show agent.stderr /tmp/agent.err
"#,
            );
        }
        s.push_str(INIT_EPILOGUE);
        s
    }

    /// Build the initramfs, boot, run the scenario, and parse the console.
    /// Panics (with the console's tail) when the guest does not finish.
    pub fn boot(&self) -> Boot {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd.cpio");
        self.build_initramfs(&dir.path().join("root"), &initrd);
        let built = started.elapsed();

        let cmdline = std::iter::once(BASE_CMDLINE.to_string())
            .chain(self.cmdline.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        // A guest that hangs under emulation (seen once in many boots of
        // 5.10) is an accident of TCG, not a result: one more boot, said.
        for attempt in 1..=2 {
            let (status, boot, qemu_stderr) = self.run_qemu(&initrd, &cmdline, built);
            match status {
                None if attempt == 1 => eprintln!(
                    "vm: {}: qemu killed after the {BOOT_TIMEOUT:?} boot timeout; booting again. \
                     The console's end:\n{}",
                    self.name,
                    boot.tail()
                ),
                None => boot.fail(&format!(
                    "qemu killed after the {BOOT_TIMEOUT:?} boot timeout, twice"
                )),
                Some(_) if !boot.done => boot.fail(&format!(
                    "the guest stopped before the end of its scenario (qemu stderr: {})",
                    qemu_stderr.trim()
                )),
                Some(_) => return boot,
            }
        }
        unreachable!("the second timeout fails")
    }

    /// One boot: qemu's exit status (`None` when killed at the timeout),
    /// the parsed console and qemu's stderr.
    fn run_qemu(
        &self,
        initrd: &Path,
        cmdline: &str,
        built: Duration,
    ) -> (Option<std::process::ExitStatus>, Boot, String) {
        let mut child = Command::new("qemu-system-x86_64")
            // KVM hangs on the nested development VM; TCG works everywhere.
            .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", cmdline])
            .args(["-nographic", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-system-x86_64");
        let boot_start = Instant::now();
        let lines: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let reader = {
            let lines = lines.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    lines.lock().unwrap().push((boot_start.elapsed(), line));
                    buf.clear();
                }
            })
        };
        let mut stderr = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let deadline = boot_start + BOOT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(100));
        };
        let ran = boot_start.elapsed();
        let _ = reader.join();
        let qemu_stderr = stderr.join().unwrap_or_default();
        let lines = std::mem::take(&mut *lines.lock().unwrap());
        let boot = Boot::parse(&self.name, lines, built, ran);
        eprintln!(
            "vm: {}: initramfs {:.1}s, guest {:.1}s{}",
            self.name,
            built.as_secs_f64(),
            ran.as_secs_f64(),
            boot.val("agent.started")
                .and(boot.marked("==VAL agent.started"))
                .map(|t| format!(" (agent started at {:.1}s)", t.as_secs_f64()))
                .unwrap_or_default()
        );
        (status, boot, qemu_stderr)
    }

    fn build_initramfs(&self, root: &Path, out: &Path) {
        let put = |guest: &str, f: &dyn Fn(&Path)| {
            let dst = root.join(guest.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            f(&dst);
        };
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "root", "etc", "tmp", "proc", "sys", "dev", "run",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::set_permissions(root.join("root"), PermissionsExt::from_mode(0o700)).unwrap();
        let test_bin = std::env::current_exe().unwrap();
        let binaries = [
            (Path::new("/bin/busybox"), "/bin/busybox"),
            (Path::new(super::BIN), GUEST_SECRETMON),
            (test_bin.as_path(), GUEST_TEST_BIN),
        ];
        let mut libs = Vec::new();
        for (host, guest) in binaries {
            put(guest, &|dst| strip_copy(host, dst));
            libs.extend(shared_libs(host));
        }
        libs.sort();
        libs.dedup();
        for lib in libs {
            put(lib.to_str().unwrap(), &|dst| {
                std::fs::copy(&lib, dst).unwrap();
            });
        }
        put("/etc/passwd", &|dst| {
            std::fs::write(
                dst,
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
            )
            .unwrap()
        });
        put("/etc/group", &|dst| {
            std::fs::write(dst, "root:x:0:\nnogroup:x:65534:\n").unwrap()
        });
        for (path, contents, mode) in &self.files {
            put(path, &|dst| {
                std::fs::write(dst, contents).unwrap();
                std::fs::set_permissions(dst, PermissionsExt::from_mode(*mode)).unwrap();
            });
        }
        put("/init", &|dst| {
            std::fs::write(dst, self.init_script()).unwrap();
            std::fs::set_permissions(dst, PermissionsExt::from_mode(0o755)).unwrap();
        });
        // Uncompressed: decompressing under TCG costs more than copying.
        let status = Command::new("sh")
            .arg("-c")
            .arg("find . -print | cpio --quiet -o -H newc -R 0:0 > \"$0\"")
            .arg(out)
            .current_dir(root)
            .status()
            .expect("run cpio");
        assert!(status.success(), "cpio failed: {status}");
    }
}

/// Copy `src` to `dst` without symbols (the debug agent is ~140 MB with
/// them); a plain copy where `strip` is missing.
fn strip_copy(src: &Path, dst: &Path) {
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(dst)
        .arg(src)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(src, dst).unwrap();
    }
    std::fs::set_permissions(dst, PermissionsExt::from_mode(0o755)).unwrap();
}

/// The shared libraries `ldd` names for `bin` (none for a static one).
fn shared_libs(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(bin).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // `libc.so.6 => /lib/.../libc.so.6 (0x...)` or `/lib64/ld-linux... (0x...)`
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

const INIT_PROLOGUE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname secretmon-vm
cd /root
mkdir -p /tmp/steps

show() {
    echo "==BEGIN $1=="
    [ -f "$2" ] && cat "$2"
    echo
    echo "==END $1=="
}

# step NAME SCRIPT: run SCRIPT with sh -c, report its pid, exit code, output.
step() {
    sh -c "echo \$\$ > /tmp/steps/$1.pid; $2" > /tmp/steps/$1.out 2>&1 < /dev/null
    echo "==VAL step.$1.rc $?=="
    echo "==VAL step.$1.pid $(cat /tmp/steps/$1.pid)=="
    show "step.$1.out" /tmp/steps/$1.out
}

echo "==VAL kernel $(uname -r)=="
show lsm /sys/kernel/security/lsm
"#;

const INIT_EPILOGUE: &str = r#"
dmesg -r | grep '^<[0-4]>' > /tmp/dmesg.warn
show dmesg.warn /tmp/dmesg.warn
echo "==DONE=="
poweroff -f
"#;

/// A finished boot: the console and what the scenario reported.
pub struct Boot {
    name: String,
    /// Console lines with when they arrived after qemu started.
    lines: Vec<(Duration, String)>,
    vals: HashMap<String, String>,
    sections: HashMap<String, String>,
    done: bool,
    /// Whether the console tail was already shown for a failure.
    reported: std::cell::Cell<bool>,
    pub initramfs_time: Duration,
    pub guest_time: Duration,
}

impl Boot {
    fn parse(name: &str, lines: Vec<(Duration, String)>, built: Duration, ran: Duration) -> Self {
        let mut vals = HashMap::new();
        let mut sections = HashMap::new();
        let mut done = false;
        let mut open: Option<(String, Vec<&str>)> = None;
        for (_, line) in &lines {
            let line = line.as_str();
            if let Some((name, body)) = &mut open {
                if line == format!("==END {name}==") {
                    let (name, body) = open.take().unwrap();
                    sections.insert(name, body.join("\n").trim_end().to_string());
                } else {
                    body.push(line);
                }
                continue;
            }
            let Some(marker) = line.strip_prefix("==").and_then(|l| l.strip_suffix("==")) else {
                continue;
            };
            if let Some(name) = marker.strip_prefix("BEGIN ") {
                open = Some((name.to_string(), Vec::new()));
            } else if let Some(kv) = marker.strip_prefix("VAL ") {
                let (k, v) = kv.split_once(' ').unwrap_or((kv, ""));
                vals.insert(k.to_string(), v.to_string());
            } else if marker == "DONE" {
                done = true;
            }
        }
        Self {
            name: name.into(),
            lines,
            vals,
            sections,
            done,
            reported: std::cell::Cell::new(false),
            initramfs_time: built,
            guest_time: ran,
        }
    }

    /// The whole console, kernel messages included.
    pub fn console(&self) -> String {
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// When the first line starting with `prefix` appeared.
    pub fn marked(&self, prefix: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }

    pub fn val(&self, key: &str) -> Option<&str> {
        self.vals.get(key).map(String::as_str)
    }

    pub fn section(&self, name: &str) -> Option<&str> {
        self.sections.get(name).map(String::as_str)
    }

    /// The step's (pid, exit code, output).
    pub fn step(&self, name: &str) -> (u32, i32, &str) {
        let get = |k: &str| {
            self.val(&format!("step.{name}.{k}"))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| self.fail(&format!("step {name} reported no {k}")))
        };
        let pid: i64 = get("pid");
        let rc: i64 = get("rc");
        let out = self.section(&format!("step.{name}.out")).unwrap_or("");
        (pid as u32, rc as i32, out)
    }

    /// A step that must have exited 0; its (pid, output).
    pub fn step_ok(&self, name: &str) -> (u32, &str) {
        let (pid, rc, out) = self.step(name);
        if rc != 0 {
            self.fail(&format!("step {name} exited {rc}: {out}"));
        }
        (pid, out)
    }

    /// The agent's events (the JSON lines of `--output`).
    pub fn events(&self) -> Vec<Value> {
        let Some(text) = self.section("events") else {
            self.fail("the guest printed no events")
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| self.fail(&format!("event not JSON ({e}): {l}")))
            })
            .collect()
    }

    /// Every event matching `pred`; a failure listing all events if none.
    pub fn find_all(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let events = self.events();
        let found: Vec<Value> = events.iter().filter(|v| pred(v)).cloned().collect();
        if found.is_empty() {
            let all: Vec<String> = events.iter().map(Value::to_string).collect();
            self.fail(&format!("no event: {what}; events:\n{}", all.join("\n")));
        }
        found
    }

    pub fn find(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.find_all(what, pred).swap_remove(0)
    }

    /// The console's last lines, with arrival times; the planted secret
    /// masked, should it have leaked.
    fn tail(&self) -> String {
        let skip = self.lines.len().saturating_sub(TAIL_LINES);
        let tail: Vec<String> = self.lines[skip..]
            .iter()
            .map(|(t, l)| {
                format!(
                    "[{:7.2}] {}",
                    t.as_secs_f64(),
                    l.replace(super::PLANTED, "<PLANTED>")
                )
            })
            .collect();
        format!(
            "--- guest console of {}, last {} lines ---\n{}\n--- end of console ---",
            self.name,
            tail.len(),
            tail.join("\n")
        )
    }

    /// Panic with `msg` and the console's tail.
    pub fn fail(&self, msg: &str) -> ! {
        self.reported.set(true);
        panic!("vm {}: {msg}\n{}", self.name, self.tail())
    }
}

impl Drop for Boot {
    /// A plain `assert!` that fails while the boot is alive shows the
    /// console too.
    fn drop(&mut self) {
        if thread::panicking() && !self.reported.get() {
            eprintln!("{}", self.tail());
        }
    }
}
