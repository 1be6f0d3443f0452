//! The timed loops. Each runs in a process of its own (`xtask bench-worker`),
//! started while the configuration under test is in place: audit decides at
//! fork whether a task is audited, and several readers must be processes.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// What a worker does in its loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// open()+close() of `--path` (an unwatched file), timed.
    Open,
    /// getppid(), timed: a syscall no program hooks.
    Getppid,
    /// posix_spawn of /bin/true, then waitpid, timed.
    Spawn,
    /// open()+close() of `--path` (a watched secret) for `--seconds`,
    /// counted, flat out or at `--rate` per second.
    Reads,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Self::Open => "open()+close() of an unwatched file",
            Self::Getppid => "getppid()",
            Self::Spawn => "posix_spawn of /bin/true, waited",
            Self::Reads => "open()+close() of the watched secret",
        }
    }
}

/// `xtask bench-worker`: run one loop and print a [`Sample`] as JSON.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    workload: Workload,
    /// Operations to time, in `--batches` equal batches (timed loops).
    #[arg(long, default_value_t = 0)]
    ops: u64,
    #[arg(long, default_value_t = 1)]
    batches: u64,
    /// The file that `open` and `reads` open.
    #[arg(long)]
    path: Option<PathBuf>,
    /// How long `reads` runs.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Opens per second for `reads`; flat out without it.
    #[arg(long)]
    rate: Option<u64>,
}

/// What a worker measured.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// Operations done (timed ones only, warm-up excluded).
    pub ops: u64,
    /// CPU time per operation, of the worker's thread and of the children it
    /// reaped, in the median batch. Unlike wall time, it does not count the
    /// time other processes had the CPU, so it holds on a loaded machine;
    /// it counts the BPF programs and interrupts that run in the worker's
    /// syscalls (and its children's), which is what a hook costs.
    pub cpu_ns_per_op: f64,
    /// Wall time per operation in the median batch.
    pub wall_ns_per_op: f64,
    /// Wall time of the timed operations in all.
    pub elapsed_ns: u64,
}

pub fn worker(args: &WorkerArgs) -> Result<()> {
    let sample = match args.workload {
        Workload::Open => {
            let path = c_path(args.path.as_deref())?;
            timed(args.ops, args.batches, || open_close(&path))?
        }
        Workload::Getppid => timed(args.ops, args.batches, || {
            // SAFETY: getppid has no preconditions.
            std::hint::black_box(unsafe { libc::getppid() });
            Ok(())
        })?,
        Workload::Spawn => {
            let spawner = Spawner::new()?;
            timed(args.ops, args.batches, || spawner.spawn_and_wait())?
        }
        Workload::Reads => {
            let path = c_path(args.path.as_deref())?;
            reads(&path, Duration::from_secs_f64(args.seconds), args.rate)?
        }
    };
    println!("{}", serde_json::to_string(&sample)?);
    Ok(())
}

fn c_path(path: Option<&Path>) -> Result<CString> {
    let path = path.context("this workload needs --path")?;
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

/// Wall time after which a timed loop stops early, once it has done
/// [`MIN_BATCHES`]: keeps the bench's length bounded on a loaded machine.
const TIME_LIMIT: Duration = Duration::from_secs(2);
const MIN_BATCHES: u64 = 3;

/// `ops` calls of `op` after a warm-up of a tenth as many (at most 1,000),
/// timed in `batches` batches (fewer after [`TIME_LIMIT`]).
fn timed(ops: u64, batches: u64, mut op: impl FnMut() -> Result<()>) -> Result<Sample> {
    if ops == 0 || batches == 0 || ops < batches {
        bail!("need ops >= batches > 0");
    }
    // Warm the dentry cache, the page tables and the branch predictors.
    for _ in 0..(ops / 10).clamp(1, 1000) {
        op()?;
    }
    let per_batch = ops / batches;
    let mut cpu = Vec::with_capacity(batches as usize);
    let mut wall = Vec::with_capacity(batches as usize);
    let mut elapsed = Duration::ZERO;
    for batch in 0..batches {
        if batch >= MIN_BATCHES && elapsed > TIME_LIMIT {
            break;
        }
        let cpu_start = cpu_time()?;
        let start = Instant::now();
        for _ in 0..per_batch {
            op()?;
        }
        let took = start.elapsed();
        let cpu_took = cpu_time()? - cpu_start;
        elapsed += took;
        wall.push(took.as_nanos() as f64 / per_batch as f64);
        cpu.push(cpu_took.as_nanos() as f64 / per_batch as f64);
    }
    Ok(Sample {
        ops: per_batch * cpu.len() as u64,
        cpu_ns_per_op: super::report::median(&cpu),
        wall_ns_per_op: super::report::median(&wall),
        elapsed_ns: elapsed.as_nanos() as u64,
    })
}

/// CPU time of this thread plus that of the children reaped so far.
fn cpu_time() -> Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: writes one rusage we own.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
            + tv(usage.ru_utime)
            + tv(usage.ru_stime),
    )
}

fn open_close(path: &CString) -> Result<()> {
    // SAFETY: a NUL-terminated path; the fd is ours and closed at once.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("open");
    }
    // SAFETY: as above.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Open+close for `duration`, at `rate` per second or flat out, in batches of
/// 1 ms worth so that pacing costs little.
fn reads(path: &CString, duration: Duration, rate: Option<u64>) -> Result<Sample> {
    let cpu_start = cpu_time()?;
    let start = Instant::now();
    let mut done: u64 = 0;
    let batch = rate.map_or(1000, |r| (r / 1000).max(1));
    while start.elapsed() < duration {
        for _ in 0..batch {
            open_close(path)?;
        }
        done += batch;
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(done as f64 / r as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time()? - cpu_start;
    Ok(Sample {
        ops: done,
        cpu_ns_per_op: cpu.as_nanos() as f64 / done as f64,
        wall_ns_per_op: elapsed.as_nanos() as f64 / done as f64,
        elapsed_ns: elapsed.as_nanos() as u64,
    })
}

/// posix_spawn of /bin/true with the worker's own environment.
struct Spawner {
    program: CString,
    argv0: CString,
}

impl Spawner {
    fn new() -> Result<Self> {
        Ok(Self {
            program: CString::new("/bin/true")?,
            argv0: CString::new("true")?,
        })
    }

    fn spawn_and_wait(&self) -> Result<()> {
        unsafe extern "C" {
            static environ: *const *mut libc::c_char;
        }
        let argv = [self.argv0.as_ptr().cast_mut(), std::ptr::null_mut()];
        let mut pid: libc::pid_t = 0;
        // SAFETY: NUL-terminated program and argv; `environ` is the
        // process's environment, which nothing in the worker changes.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.program.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                argv.as_ptr(),
                environ,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("posix_spawn /bin/true");
        }
        let mut status = 0;
        // SAFETY: `pid` is our child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(std::io::Error::last_os_error()).context("waitpid");
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("/bin/true failed (wait status {status})");
        }
        Ok(())
    }
}

/// The environment of every worker, and so of every /bin/true it spawns:
/// fixed, so that the exec program's environment scan does the same work in
/// every run; 20 variables, as a login shell over SSH has.
const WORKER_ENV: [(&str, &str); 20] = [
    ("SHELL", "/bin/bash"),
    ("PWD", "/root"),
    ("LOGNAME", "root"),
    ("XDG_SESSION_TYPE", "tty"),
    ("MOTD_SHOWN", "pam"),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("SSH_CONNECTION", "192.0.2.10 50022 192.0.2.20 22"),
    ("XDG_SESSION_CLASS", "user"),
    ("TERM", "xterm-256color"),
    ("USER", "root"),
    ("SHLVL", "1"),
    ("XDG_SESSION_ID", "3"),
    ("XDG_RUNTIME_DIR", "/run/user/0"),
    ("SSH_CLIENT", "192.0.2.10 50022 22"),
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/0/bus"),
    ("MAIL", "/var/mail/root"),
    ("SSH_TTY", "/dev/pts/0"),
    ("_", "/usr/bin/env"),
];

/// How one worker is to run.
pub struct Job<'a> {
    pub workload: Workload,
    pub ops: u64,
    pub batches: u64,
    pub path: Option<&'a Path>,
    pub seconds: f64,
    pub rate: Option<u64>,
}

impl Job<'_> {
    fn command(&self) -> Result<Command> {
        let exe = std::env::current_exe().context("finding the xtask binary")?;
        let mut cmd = Command::new(exe);
        let workload = clap::ValueEnum::to_possible_value(&self.workload)
            .context("a workload without a name")?;
        cmd.arg("bench-worker")
            .arg(workload.get_name())
            .args(["--ops", &self.ops.to_string()])
            .args(["--batches", &self.batches.to_string()])
            .args(["--seconds", &self.seconds.to_string()])
            .env_clear()
            .envs(WORKER_ENV)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(path) = self.path {
            cmd.arg("--path").arg(path);
        }
        if let Some(rate) = self.rate {
            cmd.args(["--rate", &rate.to_string()]);
        }
        Ok(cmd)
    }

    /// Start the worker; [`finish`] collects its sample.
    pub fn start(&self) -> Result<Child> {
        self.command()?.spawn().context("starting a bench worker")
    }

    /// Run the worker to its end.
    pub fn run(&self) -> Result<Sample> {
        finish(self.start()?)
    }
}

/// Wait for a worker and read its sample.
pub fn finish(child: Child) -> Result<Sample> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("a bench worker failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading a bench worker's sample")
}
