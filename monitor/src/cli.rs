//! Command-line interface. A flag that sets a setting has the setting's
//! name (`--state-dir` is `agent.state_dir`); `--set KEY=VALUE` reaches
//! every other one. The flags become the command line's layer of the
//! configuration ([`crate::config`]), which wins over the files.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, LogLevel, Sources, load::Layer};

/// Which workload still uses which static secret, seen from the kernel.
///
/// secretmon watches credential files (cloud keys, SSH keys, kubeconfigs,
/// registry auths, .netrc, .pgpass, service-account tokens, and any path you
/// add) with eBPF, and prints one JSON line per access naming the process
/// and workload identity that made it. Follow it with jq:
///
///   sudo secretmon run | jq -c 'select(.kind=="secret_read") | {who: .identity.id, what: .secret.path}'
///
/// Settings come from the command line, then /etc/secretmon/config.d/*.toml
/// (in order, a later file wins), then /etc/secretmon/config.toml; the first
/// to set a key wins. `secretmon config` prints the effective settings and
/// where each came from.
#[derive(Debug, Parser)]
#[command(
    name = "secretmon",
    version,
    max_term_width = 100,
    after_long_help = FILES_AND_SIGNALS
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The man page's and `--help`'s word on files and signals.
const FILES_AND_SIGNALS: &str = "\
Files:
  /etc/secretmon/config.toml     the main configuration (every setting, commented out)
  /etc/secretmon/config.d/*.toml drop-ins, read in file-name order; a later one wins
  /var/lib/secretmon/            the state dir (0700): ledger.db, fingerprint.key
  /var/log/secretmon/events.jsonl
                                 events, as the systemd unit writes them (--output)

Signals (secretmon run):
  SIGTERM, SIGINT, SIGQUIT  drain the ring buffer, write the `stopped` event, exit 0
  SIGHUP   reopen the file outputs (after logrotate moved them) and read the
           configuration again: the watch list, [inventory] (a rescan), [findings],
           [ledger], [[output]] and [events] take effect at once (outputs added,
           changed or removed; unchanged ones run on); other changed settings
           (metrics, fleet, capture...) are named as waiting for a restart (an
           `agent` event with status `reloaded`); a configuration that does not
           load, or an output that cannot start, leaves the running one in place
           (status `reload_failed`). No event is lost or written twice meanwhile.
  SIGUSR1  log a status line: files watched, records, secret reads, losses

Under systemd (Type=notify) the agent says READY=1 once the probes are attached and
sends WATCHDOG=1 from its event loop while WatchdogSec= is set.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the probes and print events as JSON lines until SIGINT/SIGTERM.
    ///
    /// Watches every secret `secretmon inventory` finds plus every --watch
    /// path, and follows them as they are created, rotated and removed.
    /// Prints an `agent` event with status "started" once the probes are
    /// attached, and one with "stopped" after draining the ring buffer on
    /// exit. Needs root.
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
    Check(CheckArgs),
    /// Print the effective configuration and where each value came from.
    ///
    /// Takes the same setting flags as `run`, so `secretmon config --opens
    /// tracepoints` shows what `secretmon run --opens tracepoints` would
    /// use. The text form is TOML (paste it into a file); a fleet key or a
    /// token shows as "<redacted>".
    Config(ConfigArgs),
    /// Write the man pages, shell completions and default configuration file
    /// that a package installs, generated from this binary, into DIR.
    #[command(hide = true)]
    Assets {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Where settings come from, and the settings every command has.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// The main configuration file; its drop-ins are read from `config.d/`
    /// next to it [default: /etc/secretmon/config.toml, which may be absent].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Set any setting by its dotted key, as in the files: e.g.
    /// `--set findings.interval=30s`, `--set capture.env_names='["MY_CRED"]'`.
    /// The value is TOML, or text when it is not. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Layer::parse_set)]
    pub set: Vec<Layer>,

    /// The agent's state dir: ledger, fingerprint key, spools; created 0700
    /// when missing [setting: agent.state_dir; default: /var/lib/secretmon].
    #[arg(long, visible_alias = "state", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// How much secretmon logs to stderr [setting: log.level; default: info].
    #[arg(long, value_name = "LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,

    /// Logs as text lines or JSON objects [setting: log.format; default: text].
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The agent's own settings, for `run` and `config`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Also watch PATH: a file, or every file below a directory. Repeatable;
    /// replaces the files' list [setting: agent.watch].
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,

    /// The host's name in events and reports [setting: agent.host_name;
    /// default: the kernel's host name].
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,

    /// SPIFFE trust domain of identities [setting: agent.trust_domain;
    /// default: the host name].
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,

    /// Which kernel hooks see opens [setting: capture.opens; default: auto].
    /// `auto` takes the cheapest that loads: `fexit` (one hook in the
    /// kernel's open: io_uring and denied opens included, other syscalls
    /// untouched), then `lsm` (BPF LSM `file_open` for opens, io_uring's
    /// included, and syscall tracepoints for denials), then `tracepoints`
    /// (every kernel >= 5.8; io_uring opens are not seen, their submitters
    /// are reported). Naming one fails if it cannot load. `secretmon check`
    /// says which load here.
    #[arg(long, value_name = "HOOKS", value_enum)]
    pub opens: Option<crate::features::OpenHooks>,

    /// Size of the kernel ring buffer in bytes: a power of two, at least the
    /// page size. Larger absorbs bigger bursts; losses are reported as
    /// `agent` events with `lost` [setting: capture.ring_buffer_size;
    /// default: 4194304].
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_buffer_size: Option<u32>,

    /// Send events to URL; repeatable, each output with its own queue:
    /// `-` (stdout), a path or `file:///PATH` (appended, created 0600,
    /// reopened on SIGHUP),
    /// `syslog:///dev/log`, `syslog+udp://HOST:PORT`,
    /// `syslog+tcp://HOST:PORT`, `syslog+tls://HOST:PORT` (RFC 5424, the
    /// message one JSON event), `http(s)://...` (batched NDJSON POSTs).
    /// Network outputs spool to <state-dir>/spool/ while their receiver is
    /// down. Replaces the files' outputs, whose `[[output]]` tables also
    /// take filters, TLS, Splunk HEC and Elastic _bulk settings [setting:
    /// output; default: -].
    #[arg(long, value_name = "URL")]
    pub output: Vec<String>,

    /// The schema of events on outputs that name none: secretmon's own or
    /// OCSF [setting: events.format; default: native].
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub format: Option<crate::outputs::config::Format>,

    /// Serve Prometheus metrics at http://ADDR/metrics, with /healthz and
    /// /readyz, e.g. 127.0.0.1:9464 [setting: metrics.listen; default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Sync the ledger to this PostgreSQL fleet store every fleet.interval
    /// and at shutdown: `postgres://USER@HOST/DB?sslmode=verify-full`.
    /// Never with a password in it: that comes from fleet.password_file or
    /// PGPASSWORD [setting: fleet.url].
    #[arg(long, value_name = "URL")]
    pub fleet: Option<String>,
    /// What events show of a command line [setting: process.args; default:
    /// redacted]. `redacted` hides every part a rule calls secret (options,
    /// variables, URLs, headers, tokens, and noise that looks like a key);
    /// `none` shows no arguments; `full` shows them as the process passed
    /// them, SECRETS INCLUDED: events are then as sensitive as the host's
    /// command lines, wherever they are shipped.
    #[arg(long, value_name = "POLICY", value_enum)]
    pub process_args: Option<crate::redact::ArgsPolicy>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// One JSON document (schema `secretmon/check/v1`): `ready`, the open
    /// hooks `run` will use, and each item's `name`, `required`, `status`
    /// (ok, missing, unknown), `detail` and `fix`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// One JSON document: `files` read and each setting's `value` and `from`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// One JSON object per secret per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Scan the filesystem under DIR (a mounted image, a fixture tree)
    /// instead of /; paths are shown relative to it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// One JSON document (schema `secretmon/report/v1`) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Observation window of the orphaned and long-lived rules: a secret
    /// nobody read for this long is orphaned, one unrotated for longer is
    /// long-lived. E.g. `30d`, `12h` [default: the settings'
    /// findings.orphan_window and findings.max_age].
    #[arg(long, value_name = "DURATION")]
    pub window: Option<crate::bounded::Window>,

    /// Age after which a static secret in use is long-lived, e.g. `90d`;
    /// overrides --window for that rule alone.
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<crate::bounded::Window>,

    /// Report on the whole fleet from its PostgreSQL store instead of this
    /// host's ledger: every host's copies grouped by fleet fingerprint,
    /// where each is read, unused or unknown. Without URL, fleet.url from
    /// the configuration. Schema `secretmon/fleet-report/v1` with --json.
    #[arg(long, value_name = "URL", num_args = 0..=1)]
    pub fleet: Option<Option<String>>,

    /// Write one self-contained HTML page to FILE instead (no network
    /// fetches): secrets by lifetime and finding, readers as a graph,
    /// reads over time, and the next step per finding.
    #[arg(long, value_name = "FILE", conflicts_with = "json")]
    pub html: Option<PathBuf>,
}

impl CommonArgs {
    /// The configuration sources these flags name, with `extra` settings
    /// from the command's own flags.
    pub fn sources(&self, extra: Vec<Layer>) -> Sources {
        let mut command_line = extra;
        if let Some(dir) = &self.state_dir {
            command_line.push(Layer::new(
                "--state-dir",
                "agent.state_dir",
                path_value(dir),
            ));
        }
        if let Some(level) = self.log_level {
            command_line.push(Layer::new("--log-level", "log.level", level.as_str()));
        }
        if let Some(format) = self.log_format {
            let name = match format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            };
            command_line.push(Layer::new("--log-format", "log.format", name));
        }
        // `--set` last: the most explicit wins.
        command_line.extend(self.set.iter().cloned());
        match &self.config {
            Some(main) => Sources {
                main: main.clone(),
                required: true,
                command_line,
            },
            None => Sources {
                command_line,
                ..Sources::system()
            },
        }
    }
}

impl AgentArgs {
    pub fn layers(&self) -> Vec<Layer> {
        let mut out = Vec::new();
        if !self.watch.is_empty() {
            let paths: Vec<figment::value::Value> =
                self.watch.iter().map(|p| path_value(p)).collect();
            out.push(Layer::new("--watch", "agent.watch", paths));
        }
        if let Some(name) = &self.host_name {
            out.push(Layer::new("--host-name", "agent.host_name", name.as_str()));
        }
        if let Some(td) = &self.trust_domain {
            out.push(Layer::new(
                "--trust-domain",
                "agent.trust_domain",
                td.as_str(),
            ));
        }
        if let Some(opens) = self.opens {
            let name = clap::ValueEnum::to_possible_value(&opens)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            out.push(Layer::new("--opens", "capture.opens", name));
        }
        if let Some(bytes) = self.ring_buffer_size {
            out.push(Layer::new(
                "--ring-buffer-size",
                "capture.ring_buffer_size",
                u64::from(bytes),
            ));
        }
        if !self.output.is_empty() {
            let tables: Vec<figment::value::Value> = self
                .output
                .iter()
                .map(|url| {
                    let mut table = figment::value::Dict::new();
                    table.insert("url".into(), url.as_str().into());
                    table.into()
                })
                .collect();
            out.push(Layer::new("--output", "output", tables));
        }
        if let Some(format) = self.format {
            out.push(Layer::new("--format", "events.format", value_name(format)));
        }
        if let Some(addr) = self.metrics {
            out.push(Layer::new("--metrics", "metrics.listen", addr.to_string()));
        }
        out.extend(fleet_layer(self.fleet.as_deref()));
        if let Some(policy) = self.process_args {
            out.push(Layer::new(
                "--process-args",
                "process.args",
                value_name(policy),
            ));
        }
        out
    }
}

/// A value of a flag as it is written on the command line (and in settings).
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

impl ReportArgs {
    pub fn layers(&self) -> Vec<Layer> {
        fleet_layer(self.fleet.as_ref().and_then(|u| u.as_deref()))
            .into_iter()
            .collect()
    }
}

/// `--fleet URL` sets `fleet.url`; the URL is checked (a password in it
/// refused) when the settings are read, in a message that never repeats it.
fn fleet_layer(url: Option<&str>) -> Option<Layer> {
    url.map(|u| Layer::new("--fleet", "fleet.url", u))
}

fn path_value(p: &std::path::Path) -> figment::value::Value {
    figment::value::Value::from(p.to_string_lossy().into_owned())
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    crate::config::check_ring_buffer_size(n)
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

    #[test]
    fn flags_become_settings_and_win_over_files() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("c.toml");
        std::fs::write(
            &main,
            "[agent]\nstate_dir = \"/file\"\nwatch = [\"/from/file\"]\n[capture]\nopens = \"fexit\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "secretmon",
            "run",
            "--config",
            main.to_str().unwrap(),
            "--state",
            "/flag",
            "--watch",
            "/a",
            "--watch",
            "/b",
            "--opens",
            "tracepoints",
            "--ring-buffer-size",
            "65536",
            "--host-name",
            "node-7",
            "--log-level",
            "debug",
            "--set",
            "findings.interval=5s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        let loaded = args.common.sources(args.agent.layers()).load().unwrap();
        let s = &loaded.settings;
        assert_eq!(s.agent.state_dir, PathBuf::from("/flag"));
        assert_eq!(s.agent.watch, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(s.agent.host_name.as_deref(), Some("node-7"));
        assert_eq!(s.capture.opens, crate::features::OpenHooks::Tracepoints);
        assert_eq!(s.capture.ring_buffer_size, 65536);
        assert_eq!(s.log.level, LogLevel::Debug);
        assert_eq!(s.findings.interval.get(), std::time::Duration::from_secs(5));
        assert_eq!(loaded.origin("agent.state_dir").to_string(), "--state-dir");
        assert_eq!(
            loaded.origin("findings.interval").to_string(),
            "--set findings.interval"
        );
    }
}
