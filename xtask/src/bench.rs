//! `cargo xtask bench`: what the agent costs the rest of the host, and how
//! fast it goes, in one run, against baselines taken in the same run.
//!
//! 1. **Rounds.** Each workload (open()+close() of an unwatched file,
//!    getppid(), posix_spawn of /bin/true) is timed bare, under the minimal
//!    hook, under the agent and under auditd, in rounds that rotate the order
//!    of the configurations; the median round counts and the range is shown.
//! 2. **Per program.** With BPF run-time statistics on, the same workloads
//!    (and watched reads) under the agent and the minimal hook: each
//!    program's calls per operation and ns per call.
//! 3. **Watched reads.** Several reader processes open the watched secret at
//!    a total rate, then flat out: reads made against reads the agent
//!    counted, losses, the agent's RSS and CPU.
//!
//! Every timed loop runs in a worker process of its own (see `workload`).
//! Prints Markdown tables to stdout (progress on stderr); writes nothing
//! else. See BENCHMARKS.md.

mod configs;
mod report;
mod stats;
mod workload;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use self::workload::{WorkerArgs, worker};
use self::{
    configs::{Active, Agent, Audit, CONFIGS, Config, Setup},
    report::{Spread, Table, minus, over, rounds, thousands},
    workload::{Job, Sample, Workload},
};
use crate::cargo;

/// The timed workloads of the rounds.
const TIMED: [Workload; 3] = [Workload::Open, Workload::Getppid, Workload::Spawn];
/// Passes of the per-program phase, alternating the hook and the agent.
const STATS_PASSES: usize = 3;
/// Readers and their total rate (`None`: flat out) in the throughput phase.
const READ_PLAN: [(u64, Option<u64>); 3] = [(2, Some(100_000)), (4, Some(200_000)), (4, None)];
const READ_SECONDS: f64 = 3.0;
/// Flat-out readers in the per-program phase.
const STATS_READ_SECONDS: f64 = 1.0;

const DIR: &str = "/tmp/secretmon-bench";
const BENCH_LOCK: &str = "/tmp/secretmon-bench.lock";

/// Operations and batches per worker: a worker takes 0.1-0.3 s bare.
fn job<'a>(workload: Workload, unwatched: &'a Path) -> Job<'a> {
    let (ops, batches) = match workload {
        Workload::Open => (200_000, 20),
        Workload::Getppid => (1_000_000, 20),
        Workload::Spawn => (200, 10),
        Workload::Reads => (0, 1),
    };
    Job {
        workload,
        ops,
        batches,
        path: Some(unwatched),
        seconds: 0.0,
        rate: None,
    }
}

/// `rounds`: rounds of every configuration; odd, so the median is a round.
pub fn bench(rounds: usize) -> Result<()> {
    if rounds.is_multiple_of(2) {
        bail!("--rounds must be odd, so that the median is a round");
    }
    if !cargo::is_root() {
        bail!("the benchmark loads BPF programs and audit rules: run it as root");
    }
    let dir = PathBuf::from(DIR);
    std::fs::create_dir_all(&dir)?;
    let unwatched = dir.join("unwatched");
    let secret = dir.join("credentials");
    std::fs::write(&unwatched, "nothing here\n")?;
    std::fs::write(&secret, "[default]\naws_secret_access_key = BENCHFAKE\n")?;
    let setup = Setup {
        agent_bin: cargo::target_dir().join("release").join("secretmon"),
        secret,
        dir,
    };

    // Not the probe lock: tests wait behind it, and a bench is long. Others'
    // tracing programs are counted at each round instead (see `render`).
    let _bench = Lock::take(BENCH_LOCK)?;
    let start = Instant::now();
    let cpu_before = CpuTimes::read()?;
    let load_before = load_average();
    let audit = Audit::prepare()?;

    let measured = measure(&setup, &unwatched, rounds);
    let finished = audit.finish();
    let (timings, costs, reads) = measured?;
    finished?;
    let cpu = CpuTimes::read()?.since(&cpu_before);

    println!(
        "{}",
        header(start.elapsed(), &cpu, [load_before, load_average()])
    );
    println!("{}", timings.render());
    println!("{}", render_costs(&costs));
    println!("{}", render_reads(&reads));
    Ok(())
}

fn measure(
    setup: &Setup,
    unwatched: &Path,
    rounds: usize,
) -> Result<(Timings, Costs, Vec<ReadRun>)> {
    Ok((
        run_rounds(setup, unwatched, rounds)?,
        run_program_costs(setup, unwatched)?,
        run_reads(setup)?,
    ))
}

/// An exclusive `flock` on `path`, released on drop (the fd closes).
struct Lock {
    _file: File,
}

impl Lock {
    fn take(path: &str) -> Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {path}"))?;
        // SAFETY: flock(2) on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Self { _file: file });
        }
        eprintln!("bench: waiting for {path} (another helper measures or tests)");
        // A blocking wait, in the kernel's queue with the other waiters
        // (`flock -o ...`): a poller loses the lock to them at every release.
        // The thread is left blocked if the wait times out; the bench exits.
        let fd = file.as_raw_fd();
        let (done, wait) = std::sync::mpsc::channel();
        thread::spawn(move || {
            // SAFETY: flock(2) on the fd `file` keeps open until we return.
            let locked = match unsafe { libc::flock(fd, libc::LOCK_EX) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            };
            let _ = done.send(locked);
        });
        match wait.recv_timeout(Duration::from_secs(1800)) {
            Ok(locked) => locked.with_context(|| format!("locking {path}"))?,
            Err(_) => {
                bail!("{path} stayed locked for 30 min (is this run inside `flock {path}`?)")
            }
        }
        Ok(Self { _file: file })
    }
}

/// Per workload and configuration, one entry per round: the worker's
/// sample, and the CPU time the configuration's daemon spent meanwhile per
/// operation. Also the tracing programs of other processes seen at each
/// round's start.
struct Timings {
    samples: BTreeMap<(Workload, Config), Vec<Sample>>,
    daemon: BTreeMap<(Workload, Config), Vec<f64>>,
    foreign: Vec<usize>,
}

fn run_rounds(setup: &Setup, unwatched: &Path, rounds: usize) -> Result<Timings> {
    let mut timings = Timings {
        samples: BTreeMap::new(),
        daemon: BTreeMap::new(),
        foreign: Vec::new(),
    };
    for round in 0..rounds {
        // None of ours is loaded between configurations.
        let foreign = stats::programs()?.iter().filter(|p| p.traces()).count();
        timings.foreign.push(foreign);
        let mut line = format!("bench: round {}/{rounds}:", round + 1);
        for i in 0..CONFIGS.len() {
            let config = CONFIGS[(i + round) % CONFIGS.len()];
            let active = Active::start(config, setup)?;
            let daemon = active.daemon();
            let mut cells = Vec::new();
            for workload in TIMED {
                let daemon_before = daemon.and_then(configs::cpu_ns);
                let sample = job(workload, unwatched).run()?;
                if let Some((after, before)) = daemon.and_then(configs::cpu_ns).zip(daemon_before) {
                    let per_op = (after - before) as f64 / sample.ops as f64;
                    timings
                        .daemon
                        .entry((workload, config))
                        .or_default()
                        .push(per_op);
                }
                timings
                    .samples
                    .entry((workload, config))
                    .or_default()
                    .push(sample);
                cells.push(format!("{:.0}", sample.cpu_ns_per_op));
            }
            active.stop()?;
            line.push_str(&format!(" {} {}", config.label(), cells.join("/")));
        }
        eprintln!("{line}");
    }
    Ok(timings)
}

impl Timings {
    fn of(&self, workload: Workload, config: Config, f: fn(&Sample) -> f64) -> Vec<f64> {
        self.samples
            .get(&(workload, config))
            .map_or_else(Vec::new, |v| v.iter().map(f).collect())
    }

    fn cpu(&self, workload: Workload, config: Config) -> Vec<f64> {
        self.of(workload, config, |s| s.cpu_ns_per_op)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let disturbed = self.foreign.iter().filter(|&&n| n > 0).count();
        if disturbed > 0 {
            out.push_str(&format!(
                "**Other processes had tracing programs loaded at the start of {disturbed} \
                 of {} rounds (up to {}): their cost is in every configuration's \
                 figures.**\n\n",
                self.foreign.len(),
                self.foreign.iter().max().unwrap_or(&0)
            ));
        }
        for workload in TIMED {
            let (unit, scale, digits) = match workload {
                Workload::Spawn => ("µs", 1e-3, 1),
                _ => ("ns", 1.0, 1),
            };
            let scaled = |v: &[f64]| v.iter().map(|x| x * scale).collect::<Vec<_>>();
            let bare = self.cpu(workload, Config::Bare);
            out.push_str(&format!(
                "### {} (CPU {unit}/op, median of {} rounds, range)\n\n",
                workload.label(),
                self.foreign.len()
            ));
            let mut table = Table::new(&[
                "configuration",
                &format!("{unit}/op"),
                &format!("added {unit}"),
                "x bare",
                &format!("daemon CPU {unit}/op"),
            ]);
            for config in CONFIGS {
                let values = self.cpu(workload, config);
                let daemon = self
                    .daemon
                    .get(&(workload, config))
                    .map_or(String::new(), |d| Spread::of(&scaled(d)).show(digits));
                table.row(vec![
                    config.label().to_string(),
                    Spread::of(&scaled(&values)).show(digits),
                    if config == Config::Bare {
                        String::new()
                    } else {
                        Spread::of(&scaled(&minus(&values, &bare))).show(digits)
                    },
                    Spread::of(&over(&values, &bare)).show(3),
                    daemon,
                ]);
            }
            out.push_str(&table.render());
            let wall_bare = self.of(workload, Config::Bare, |s| s.wall_ns_per_op);
            out.push_str(&format!(
                "\nBare varied by {:.0} % between rounds; its wall time was {} {unit}/op \
                 (others' load).\n",
                Spread::of(&bare).range_pct(),
                Spread::of(&scaled(&wall_bare)).show(digits),
            ));
            if workload == Workload::Open {
                let hook = minus(&self.cpu(workload, Config::Hook), &bare);
                let agent = minus(&self.cpu(workload, Config::Agent), &bare);
                let auditd = minus(&self.cpu(workload, Config::Auditd), &bare);
                out.push_str(&format!(
                    "secretmon's added cost ÷ the minimal hook's, per round: {} (goal <= 1.5); \
                     auditd's ÷ the hook's: {}.\n",
                    Spread::of(&over(&agent, &hook)).show(2),
                    Spread::of(&over(&auditd, &hook)).show(2),
                ));
            }
            let configs: Vec<Vec<f64>> = CONFIGS
                .iter()
                .map(|&c| scaled(&self.cpu(workload, c)))
                .collect();
            out.push_str(&format!(
                "Rounds ({}): {}.\n\n",
                CONFIGS.map(Config::label).join(" / "),
                rounds(&configs, digits)
            ));
        }
        out
    }
}

/// Per configuration and workload: operations done, and each program's
/// calls and run time, one entry per pass.
type Costs = BTreeMap<(Config, Workload), Vec<(u64, Vec<stats::Cost>)>>;

fn run_program_costs(setup: &Setup, unwatched: &Path) -> Result<Costs> {
    let _on = stats::enable()?;
    let mut costs = Costs::new();
    for pass in 0..STATS_PASSES {
        eprintln!("bench: per-program pass {}/{STATS_PASSES}", pass + 1);
        for config in [Config::Hook, Config::Agent] {
            let active = Active::start(config, setup)?;
            let owner = active
                .bpf_owner()
                .context("a configuration without programs")?;
            let ids = stats::programs_of(owner)?;
            let mut workloads = TIMED.to_vec();
            if config == Config::Agent {
                workloads.push(Workload::Reads);
            }
            for workload in workloads {
                let job = match workload {
                    Workload::Reads => Job {
                        path: Some(&setup.secret),
                        seconds: STATS_READ_SECONDS,
                        ..job(workload, unwatched)
                    },
                    _ => job(workload, unwatched),
                };
                let before = stats::programs()?;
                let sample = job.run()?;
                let after = stats::programs()?;
                costs
                    .entry((config, workload))
                    .or_default()
                    .push((sample.ops, stats::costs(&before, &after, &ids)));
            }
            active.stop()?;
        }
    }
    Ok(costs)
}

fn render_costs(costs: &Costs) -> String {
    let mut out = format!(
        "### Per program (BPF run-time statistics, median of {STATS_PASSES} passes, range)\n\n"
    );
    let mut table = Table::new(&[
        "workload / configuration / program",
        "calls per op",
        "ns per call",
        "ns per op",
    ]);
    for ((config, workload), passes) in costs {
        let names: BTreeSet<&str> = passes
            .iter()
            .flat_map(|(_, c)| c.iter().map(|c| c.name.as_str()))
            .collect();
        for name in names {
            let of = |f: &dyn Fn(u64, &stats::Cost) -> f64| -> Vec<f64> {
                passes
                    .iter()
                    .filter_map(|(ops, c)| c.iter().find(|c| c.name == name).map(|c| f(*ops, c)))
                    .collect()
            };
            let per_op = Spread::of(&of(&|ops, c| c.calls as f64 / ops as f64));
            let ns_call = Spread::of(&of(&|_, c| c.ns_per_call()));
            let ns_op = Spread::of(&of(&|ops, c| c.run_time_ns as f64 / ops as f64));
            table.row(vec![
                format!("{} / {} / `{name}`", workload.label(), config.label()),
                format!("{:.2}", per_op.median),
                ns_call.show(0),
                ns_op.show(0),
            ]);
        }
    }
    out.push_str(&table.render());
    out.push_str(
        "\nns per call includes the statistics' own clock reads: compare with the \
         minimal hook's empty program.\n",
    );
    out
}

/// One throughput run.
struct ReadRun {
    readers: u64,
    rate: Option<u64>,
    made: u64,
    counted: u64,
    lost: u64,
    elapsed: Duration,
    memory: Option<configs::Memory>,
    /// The agent's CPU time over the run, as a share of one CPU.
    agent_cpu: f64,
}

fn run_reads(setup: &Setup) -> Result<Vec<ReadRun>> {
    let mut runs = Vec::new();
    for (readers, rate) in READ_PLAN {
        eprintln!(
            "bench: watched reads, {readers} readers, {}",
            rate.map_or("flat out".to_string(), |r| format!("{r}/s in all"))
        );
        let agent = Agent::start(setup)?;
        let cpu_before = configs::cpu_ns(agent.pid());
        let wall = Instant::now();
        let reader = Job {
            workload: Workload::Reads,
            ops: 0,
            batches: 1,
            path: Some(&setup.secret),
            seconds: READ_SECONDS,
            rate: rate.map(|r| r / readers),
        };
        let children = (0..readers)
            .map(|_| reader.start())
            .collect::<Result<Vec<_>>>()?;
        let pids: BTreeSet<u32> = children.iter().map(|c| c.id()).collect();
        let samples = children
            .into_iter()
            .map(workload::finish)
            .collect::<Result<Vec<_>>>()?;
        // The agent folds reads and writes them out every 500 ms.
        thread::sleep(Duration::from_millis(1500));
        let memory = configs::memory(agent.pid());
        let cpu = configs::cpu_ns(agent.pid())
            .zip(cpu_before)
            .map_or(0, |(a, b)| a - b);
        let wall = wall.elapsed();
        let output = agent.output.clone();
        agent.stop()?;
        let (counted, lost) = count_reads(&output, &pids)?;
        runs.push(ReadRun {
            readers,
            rate,
            made: samples.iter().map(|s| s.ops).sum(),
            counted,
            lost,
            elapsed: samples
                .iter()
                .map(|s| Duration::from_nanos(s.elapsed_ns))
                .max()
                .unwrap_or_default(),
            memory,
            agent_cpu: cpu as f64 / wall.as_nanos() as f64,
        });
    }
    Ok(runs)
}

/// Sum of `access.count` of the readers' `secret_read` events in the
/// agent's output, and the highest `lost` it reported.
fn count_reads(output: &Path, readers: &BTreeSet<u32>) -> Result<(u64, u64)> {
    tally_reads(&std::fs::read_to_string(output)?, readers)
}

fn tally_reads(events: &str, readers: &BTreeSet<u32>) -> Result<(u64, u64)> {
    let mut counted = 0;
    let mut lost = 0;
    for line in events.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).context("reading the agent's output")?;
        match event["kind"].as_str() {
            Some("secret_read") => {
                let pid = event["process"]["pid"].as_u64().unwrap_or(0);
                if readers.contains(&(pid as u32)) {
                    counted += event["access"]["count"].as_u64().unwrap_or(0);
                }
            }
            Some("agent") => lost = lost.max(event["lost"].as_u64().unwrap_or(0)),
            _ => {}
        }
    }
    Ok((counted, lost))
}

fn render_reads(runs: &[ReadRun]) -> String {
    let mut out =
        format!("### Watched reads ({READ_SECONDS} s per run, readers are processes)\n\n");
    let mut table = Table::new(&[
        "readers, target",
        "achieved reads/s",
        "counted / made",
        "lost",
        "agent RSS (peak) MiB",
        "agent CPU",
    ]);
    for run in runs {
        let mib = |kib: u64| kib as f64 / 1024.0;
        table.row(vec![
            format!(
                "{}, {}",
                run.readers,
                run.rate.map_or("flat out".to_string(), |r| format!(
                    "{}/s",
                    thousands(r as f64)
                ))
            ),
            thousands(run.made as f64 / run.elapsed.as_secs_f64()),
            format!(
                "{} / {}",
                thousands(run.counted as f64),
                thousands(run.made as f64)
            ),
            run.lost.to_string(),
            run.memory.map_or("?".to_string(), |m| {
                format!("{:.1} ({:.1})", mib(m.rss_kib), mib(m.hwm_kib))
            }),
            format!("{:.0} %", run.agent_cpu * 100.0),
        ]);
    }
    out.push_str(&table.render());
    let best = runs
        .iter()
        .filter(|r| r.lost == 0 && r.counted == r.made)
        .map(|r| r.made as f64 / r.elapsed.as_secs_f64())
        .fold(None, |best: Option<f64>, x| {
            Some(best.map_or(x, |b| b.max(x)))
        });
    out.push_str(&match best {
        Some(rate) => format!(
            "\nHighest zero-loss rate: {} reads/s (goal >= 200,000 at RSS <= 64 MiB).\n",
            thousands(rate)
        ),
        None => "\nNo run was free of loss.\n".to_string(),
    });
    out
}

/// CPU time of the whole machine from `/proc/stat`, in ticks.
struct CpuTimes {
    busy: u64,
    steal: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        // cpu user nice system idle iowait irq softirq steal ...
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 8 {
            bail!("unexpected /proc/stat: {line}");
        }
        let total = f.iter().take(8).sum();
        Ok(Self {
            busy: total - f[3] - f[4],
            steal: f[7],
            total,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            busy: self.busy - before.busy,
            steal: self.steal - before.steal,
            total: self.total - before.total,
        }
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn header(elapsed: Duration, cpu: &CpuTimes, load: [Option<f64>; 2]) -> String {
    let kernel = cargo::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let commit = cargo::output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(cargo::workspace_root()),
    )
    .unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let share = |x: u64| x as f64 * 100.0 / cpu.total.max(1) as f64;
    let show = |l: Option<f64>| l.map_or("unknown".to_string(), |l| format!("{l:.1}"));
    format!(
        "## cargo xtask bench: tree {}, kernel {}, {cpus} CPUs\n\n\
         Measured in {:.0} s. The machine's CPUs were {:.0} % busy over the run \
         (this bench's own loops included), steal {:.1} %; 1-minute load average \
         {} at the start, {} at the end.\n",
        commit.trim(),
        kernel.trim(),
        elapsed.as_secs_f64(),
        share(cpu.busy),
        share(cpu.steal),
        show(load[0]),
        show(load[1]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_for_the_readers_only() {
        let events = concat!(
            r#"{"kind":"agent","status":"started","lost":0}"#,
            "\n",
            r#"{"kind":"secret_read","process":{"pid":10,"comm":"xtask"},"access":{"op":"open","count":700}}"#,
            "\n",
            r#"{"kind":"secret_read","process":{"pid":11,"comm":"xtask"},"access":{"op":"open","count":300}}"#,
            "\n",
            r#"{"kind":"secret_read","process":{"pid":12,"comm":"cat"},"access":{"op":"open","count":5}}"#,
            "\n",
            r#"{"kind":"agent","status":"lost","lost":3}"#,
            "\n",
            r#"{"kind":"agent","status":"stopped","lost":3}"#,
            "\n",
        );
        assert_eq!(
            tally_reads(events, &BTreeSet::from([10, 11])).unwrap(),
            (1000, 3)
        );
        assert!(tally_reads("not json\n", &BTreeSet::new()).is_err());
    }
}
