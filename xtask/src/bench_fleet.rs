//! `cargo xtask bench`'s fleet run: 1,000 simulated hosts × 300 secrets ×
//! 10 readers sync through the agent's own sync code into a real
//! PostgreSQL (a throwaway cluster, fsync on, TLS verify-full), then the
//! real binary reports on the fleet as JSON and as HTML. The run is the
//! ignored test `bench_fleet` of tests/fleet.rs; it prints a Markdown table
//! (see BENCHMARKS.md).

use anyhow::{Context as _, Result};

use crate::cargo;

/// The bench lock other helpers' measurements take too.
const LOCK: &str = "/tmp/secretmon-bench.lock";

pub fn fleet() -> Result<()> {
    let test = |extra: &[&str]| -> Result<std::process::Command> {
        let mut cmd = cargo::cargo()?;
        cmd.args([
            "test",
            "--release",
            "--package",
            "monitor",
            "--test",
            "fleet",
        ])
        .args(extra);
        Ok(cmd)
    };
    // Compile outside the lock: only the measurement holds it.
    cargo::run(&mut test(&["--no-run"])?).context("building the fleet bench")?;
    let measure = test(&["--", "--ignored", "--exact", "bench_fleet", "--nocapture"])?;
    let mut locked = std::process::Command::new("flock");
    locked
        .arg(LOCK)
        .arg(measure.get_program())
        .args(measure.get_args());
    for (k, v) in measure.get_envs() {
        match v {
            Some(v) => locked.env(k, v),
            None => locked.env_remove(k),
        };
    }
    println!();
    cargo::run(&mut locked).context("the fleet bench failed")
}
