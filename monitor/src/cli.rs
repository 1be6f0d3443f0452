//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Which workload still uses which static secret, seen from the kernel.
///
/// secretmon watches credential files (cloud keys, SSH keys, kubeconfigs,
/// registry auths, .netrc, .pgpass, service-account tokens, and any path you
/// add) with eBPF tracepoints, and prints one JSON line per access naming the
/// process and workload identity that made it. Follow it with jq:
///
///   sudo secretmon run | jq -c 'select(.kind=="secret_read") | {who: .identity.id, what: .secret.path}'
#[derive(Debug, Parser)]
#[command(name = "secretmon", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the probes and print events as JSON lines until SIGINT/SIGTERM.
    ///
    /// Watches every secret `secretmon inventory` finds plus every --watch
    /// path, and follows them as they are created, rotated and removed.
    /// Prints an `agent`
    /// event with status "started" once the probes are attached, and one with
    /// "stopped" after draining the ring buffer on exit. Needs root.
    Run(RunArgs),
    /// Scan once for secrets and print what they are and whether they are
    /// static.
    ///
    /// Looks in every home in /etc/passwd and /root (cloud, kube, docker,
    /// registry and tool credentials, SSH and PEM keys, .env files), /etc,
    /// /var/run/secrets, /run/secrets and the kubelet's pod volumes, plus the
    /// config's `[inventory]` globs. Prints a table (PATH TYPE LIFETIME AGE
    /// MODE HINT), or with --json one JSON object per line with id, path,
    /// type, lifetime, reason, fingerprint, hint, expires, uid, gid, mode,
    /// size, mtime, dev and ino. Never prints a value: fingerprints are
    /// HMAC-SHA256 with this host's key (or the fleet key), hints at most a
    /// safe prefix such as `AKIA…`. A summary goes to stderr.
    Inventory(InventoryArgs),
    /// Print which workload reads which secret, and what is wrong with it.
    ///
    /// Reads the ledger that `secretmon run` keeps in its state dir, while
    /// the agent runs or after it stopped. For each secret: its readers
    /// (identity, count, first and last seen) and its findings: orphaned,
    /// shared, duplicated, long-lived, read by a person, loose permissions,
    /// unexpected readers, static despite federation; and secrets seen in
    /// environments and on command lines. Worst first. Never prints a
    /// secret's value: paths, fingerprints and redacted hints only.
    Report(ReportArgs),
    /// Report what this kernel supports, what is missing, and how to fix it.
    ///
    /// Exits 0 when `secretmon run` can work here, 1 otherwise.
    Check,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Read settings from this TOML file; flags given on the command line
    /// win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Also watch PATH: a file, or every file below a directory. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,

    /// Append events to FILE instead of stdout ("-" is stdout).
    #[arg(long, value_name = "FILE|-")]
    pub output: Option<PathBuf>,

    /// Keep the ledger (ledger.db) and the fingerprint key here; created
    /// 0700 when missing. `secretmon report --state DIR` reads it.
    #[arg(long, value_name = "DIR", default_value = crate::inventory::DEFAULT_STATE_DIR)]
    pub state: PathBuf,

    /// SPIFFE trust domain of identities [default: the host name].
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,

    /// Size of the kernel ring buffer in bytes: a power of two, at least the
    /// page size. Larger absorbs bigger bursts; losses are reported as
    /// `agent` events with `lost`.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Which kernel hooks see opens. `auto` takes the cheapest that loads:
    /// `fexit` (one hook in the kernel's open: io_uring and denied opens
    /// included, other syscalls untouched), then `lsm` (BPF LSM `file_open`
    /// for opens, io_uring's included, and syscall tracepoints for denials),
    /// then `tracepoints` (every kernel >= 5.8; io_uring opens are not seen,
    /// their submitters are reported). Naming one fails if it cannot load.
    /// `secretmon check` says which load here.
    #[arg(long, value_name = "HOOKS", value_enum, default_value_t = crate::probes::OpenHooks::Auto)]
    pub opens: crate::probes::OpenHooks,
}

#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    /// One JSON object per secret per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Scan the filesystem under DIR (a mounted image, a fixture tree)
    /// instead of /; paths are shown relative to it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Read the fingerprint key from here (made on first use). When it
    /// cannot be written, a one-time key is used and stderr says so.
    #[arg(long, value_name = "DIR", default_value = crate::inventory::DEFAULT_STATE_DIR)]
    pub state: PathBuf,

    /// Read settings (the `[inventory]` section) from this TOML file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// One JSON document (schema `secretmon/report/v1`) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Observation window of the orphaned and long-lived rules: a secret
    /// nobody read for this long is orphaned, one unrotated for longer is
    /// long-lived. E.g. `30d`, `12h` [default: the agent's, 30d and 90d].
    #[arg(long, value_name = "DURATION")]
    pub window: Option<crate::bounded::Window>,

    /// Age after which a static secret in use is long-lived, e.g. `90d`;
    /// overrides --window for that rule alone.
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<crate::bounded::Window>,

    /// The agent's state dir.
    #[arg(long, value_name = "DIR", default_value = crate::inventory::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    let page = 4096;
    if n < page || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two >= {page}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("1024").is_err());
        assert!(parse_ring_size("lots").is_err());
    }

    #[test]
    fn report_windows_are_bounded() {
        let parse = |w: &str| Cli::try_parse_from(["secretmon", "report", "--window", w]);
        let Command::Report(args) = parse("30d").unwrap().command else {
            panic!("not report");
        };
        assert_eq!(
            args.window.map(|w| w.get()),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        let err = parse("99999999999d").unwrap_err().to_string();
        assert!(
            err.contains("`99999999999d` is out of range: from 1s to 36500d"),
            "{err}"
        );
        assert!(parse("a month").is_err());
    }
}
