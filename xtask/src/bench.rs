//! `cargo xtask bench`: what the agent costs the rest of the host, and how
//! fast it can go, measured in one run against baselines taken in the same
//! run. Prints ratios; writes nothing.
//!
//! 1. ns per open()+close() of an unwatched file in a tight loop: bare, with
//!    the agent, and with an auditd watch rule on one file (auditd from the
//!    distribution). Configurations alternate over several rounds and the
//!    median round counts, so drift of the machine hits all alike.
//! 2. The highest rate of watched-secret reads per second the agent keeps up
//!    with, zero loss, and its RSS at that rate: paced reads at rising rates
//!    until the agent loses or miscounts.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cargo;

/// open()+close() per round; a round takes a fraction of a second.
const OPS_PER_ROUND: u32 = 200_000;
const ROUNDS: usize = 7;
/// Read rates tried, per second; `None` is as fast as one thread can.
const RATES: &[Option<u32>] = &[
    Some(10_000),
    Some(25_000),
    Some(50_000),
    Some(100_000),
    Some(200_000),
    None,
];
const RATE_SECONDS: u64 = 3;

pub fn bench() -> Result<()> {
    if !cargo::is_root() {
        bail!("the benchmark loads the agent and audit rules: run it as root");
    }
    let bin = cargo::target_dir().join("release").join("secretmon");
    let dir = PathBuf::from("/tmp/secretmon-bench");
    std::fs::create_dir_all(&dir)?;
    let unwatched = dir.join("unwatched");
    let secret = dir.join("credentials");
    std::fs::write(&unwatched, "nothing here\n")?;
    std::fs::write(&secret, "[default]\naws_secret_access_key = BENCHFAKE\n")?;
    ensure_auditd()?;

    eprintln!(
        "bench: open()+close() of an unwatched file, {OPS_PER_ROUND} per round, {ROUNDS} rounds each"
    );
    let mut bare = Vec::new();
    let mut agent = Vec::new();
    let mut audit = Vec::new();
    for round in 0..ROUNDS {
        bare.push(ns_per_open(&unwatched)?);
        let running = AgentRun::start(&bin, &secret, &dir.join("agent-overhead.jsonl"))?;
        agent.push(ns_per_open(&unwatched)?);
        running.stop()?;
        let rule = AuditRule::add(&secret)?;
        audit.push(ns_per_open(&unwatched)?);
        drop(rule);
        eprintln!(
            "bench: round {}: bare {:.0} ns, agent {:.0} ns, auditd {:.0} ns",
            round + 1,
            bare[round],
            agent[round],
            audit[round]
        );
    }
    let (b, a, d) = (median(&mut bare), median(&mut agent), median(&mut audit));
    println!("open()+close() of an unwatched file, median of {ROUNDS} rounds of {OPS_PER_ROUND}:");
    println!("  bare          {b:8.0} ns/op   1.00x");
    println!("  secretmon     {a:8.0} ns/op   {:.3}x", a / b);
    println!("  auditd rule   {d:8.0} ns/op   {:.3}x", d / b);
    println!();

    println!("watched-secret reads/s the agent keeps up with ({RATE_SECONDS} s per rate):");
    let mut best = None;
    for &rate in RATES {
        let out = dir.join("agent-throughput.jsonl");
        let running = AgentRun::start(&bin, &secret, &out)?;
        let (reads, elapsed) = paced_reads(&secret, rate)?;
        // Give the agent a moment to fold and flush the last reads.
        thread::sleep(Duration::from_millis(1500));
        let rss_kib = running.rss_kib();
        running.stop()?;
        let (counted, lost) = count_reads(&out)?;
        let achieved = reads as f64 / elapsed.as_secs_f64();
        let ok = lost == 0 && counted == reads;
        println!(
            "  target {:>9}  achieved {:>9.0}/s  counted {counted}/{reads}  lost {lost}  agent RSS {} KiB  {}",
            rate.map_or("max".to_string(), |r| format!("{r}/s")),
            achieved,
            rss_kib.map_or("?".to_string(), |k| k.to_string()),
            if ok { "ok" } else { "LOSS" }
        );
        if !ok {
            break;
        }
        best = Some((achieved, rss_kib));
    }
    match best {
        Some((rate, rss)) => println!(
            "highest zero-loss rate: {rate:.0} reads/s, agent RSS {} KiB",
            rss.map_or("?".to_string(), |k| k.to_string())
        ),
        None => println!("no rate tried was free of loss"),
    }
    Ok(())
}

fn ns_per_open(path: &Path) -> Result<f64> {
    // Warm the dentry cache and the branch predictors first.
    for _ in 0..1000 {
        drop(File::open(path)?);
    }
    let start = Instant::now();
    for _ in 0..OPS_PER_ROUND {
        drop(File::open(path)?);
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(OPS_PER_ROUND))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Open+close `path` at `rate` per second (or flat out) for
/// `RATE_SECONDS`; returns how many and how long.
fn paced_reads(path: &Path, rate: Option<u32>) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let end = start + Duration::from_secs(RATE_SECONDS);
    let mut done: u64 = 0;
    while Instant::now() < end {
        // Batches of 1 ms worth keep the pacing cheap.
        let batch = rate.map_or(1000, |r| (r / 1000).max(1));
        for _ in 0..batch {
            drop(File::open(path)?);
        }
        done += u64::from(batch);
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(done as f64 / f64::from(r));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
    }
    Ok((done, start.elapsed()))
}

/// Sum of `access.count` of secret_read events, and the last `lost` total.
fn count_reads(out: &Path) -> Result<(u64, u64)> {
    let mut counted = 0;
    let mut lost = 0;
    for line in BufReader::new(File::open(out)?).lines() {
        let line = line?;
        if line.contains("\"kind\":\"secret_read\"") && line.contains("\"comm\":\"xtask\"") {
            counted += json_u64(&line, "\"count\":").unwrap_or(0);
        } else if line.contains("\"kind\":\"agent\"") {
            lost = lost.max(json_u64(&line, "\"lost\":").unwrap_or(0));
        }
    }
    Ok((counted, lost))
}

/// The integer after `key` in a JSON line; the lines are the agent's own
/// flat output, so a full parser is not needed here.
fn json_u64(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct AgentRun {
    child: Child,
}

impl AgentRun {
    fn start(bin: &Path, secret: &Path, out: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(out);
        let child = Command::new(bin)
            .args(["run", "--watch"])
            .arg(secret)
            .arg("--output")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(out)
            .unwrap_or_default()
            .contains("\"status\":\"started\"")
        {
            if Instant::now() > deadline {
                bail!("the agent did not start within 60 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child })
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        Ok(())
    }
}

/// Install auditd from the distribution if missing, and run its daemon.
fn ensure_auditd() -> Result<()> {
    if cargo::output(Command::new("auditctl").arg("-s")).is_none() {
        eprintln!("bench: installing auditd (apt-get)");
        cargo::run(Command::new("apt-get").args(["install", "-y", "auditd"]))
            .context("installing auditd for the comparison")?;
    }
    let status = cargo::output(Command::new("auditctl").arg("-s")).unwrap_or_default();
    if !status.contains("pid") || status.contains("pid 0") {
        eprintln!("bench: starting auditd");
        cargo::run(&mut Command::new("auditd")).context("starting auditd")?;
    }
    Ok(())
}

/// An audit watch rule on one file, removed on drop.
struct AuditRule {
    path: PathBuf,
}

impl AuditRule {
    fn add(path: &Path) -> Result<Self> {
        cargo::run(Command::new("auditctl").args(["-w"]).arg(path).args([
            "-p",
            "r",
            "-k",
            "secretmon-bench",
        ]))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for AuditRule {
    fn drop(&mut self) {
        let _ = Command::new("auditctl")
            .args(["-W"])
            .arg(&self.path)
            .args(["-p", "r", "-k", "secretmon-bench"])
            .status();
    }
}
