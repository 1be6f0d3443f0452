//! The configuration: one schema ([`Settings`]), each setting with one name
//! (its dotted key, e.g. `capture.opens`), set from three sources merged by
//! figment: the command line, then the drop-ins `config.d/*.toml` (read in
//! order, a later one wins), then the main file `/etc/secretmon/config.toml`.
//! The first of those to set a key wins; unset keys take their defaults.
//!
//! [`load`] merges the sources and names the file and line of a bad key;
//! [`show`] prints the effective values and where each came from.

pub mod load;
pub mod show;

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    findings::FindingsConfig,
    identity::IdentityConfig,
    ledger::LedgerConfig,
    metrics::MetricsConfig,
    outputs::config::{Format, OutputConfig},
};

pub use load::{ConfigError, Loaded, Sources};

/// Where `secretmon` looks for its main configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/secretmon/config.toml";
/// Drop-ins live in this directory next to the main file.
pub const DROP_IN_DIR: &str = "config.d";
/// The state dir: ledger, fingerprint key, spools.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/secretmon";
/// The kernel ring buffer's default size.
pub const DEFAULT_RING_BUFFER: u32 = 4 * 1024 * 1024;

/// Every setting of secretmon, by section.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[[output]]` tables: where events go, each with its own queue,
    /// filter, format and spool. None is stdout. Top-level, so it comes
    /// first in a file.
    pub output: Vec<OutputConfig>,
    /// Who this agent is and what it keeps.
    pub agent: AgentSettings,
    /// What the kernel side captures.
    pub capture: CaptureSettings,
    /// Its own logs (stderr).
    pub log: LogSettings,
    /// Catalog extensions, scan limits, fingerprint key, lifetime policy.
    pub inventory: crate::inventory::settings::Settings,
    /// Where workload identities come from on this node.
    pub identity: IdentityConfig,
    /// The ledger's retention.
    pub ledger: LedgerConfig,
    /// Windows, baseline and policy of the findings.
    pub findings: FindingsConfig,
    /// `[events]`: what every output gets unless it says otherwise.
    pub events: EventsSettings,
    /// `[metrics]`: Prometheus metrics, off unless `listen` is set.
    pub metrics: MetricsConfig,
    /// The fleet store the agent syncs its ledger to.
    pub fleet: crate::fleet::FleetSettings,
    /// What events show of a process's command line.
    pub process: crate::redact::ProcessSettings,
}

/// `[events]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// The schema of outputs that name none: `native` or `ocsf`.
    pub format: Format,
}

/// `[agent]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The host's name in events and reports [default: the kernel's host
    /// name].
    pub host_name: Option<String>,
    /// SPIFFE trust domain of identities [default: the host name].
    pub trust_domain: Option<String>,
    /// Ledger, fingerprint key and spools; created 0700 when missing.
    pub state_dir: PathBuf,
    /// Files or directories to watch besides what the inventory finds.
    pub watch: Vec<PathBuf>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            host_name: None,
            trust_domain: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            watch: Vec::new(),
        }
    }
}

/// `[capture]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureSettings {
    /// Which kernel hooks see opens.
    pub opens: crate::features::OpenHooks,
    /// Bytes of the kernel ring buffer: a power of two, at least a page.
    #[serde(deserialize_with = "ring_buffer_size")]
    pub ring_buffer_size: u32,
    /// Extra environment variable names reported at exec: `NAME` or
    /// `*_SUFFIX`, added to the built-in list.
    pub env_names: Vec<String>,
    /// Extra credential-file name rules the kernel applies to files not
    /// inventoried yet: `{ name = "sa.json" }`, `{ prefix = "id_", parent =
    /// ".ssh", not_suffix = ".pub" }`, `{ suffix = ".jks" }`.
    pub name_rules: Vec<crate::name_rules::NameRuleSpec>,
    /// How many secret files the kernel watches by inode at most; past it,
    /// secrets are watched by priority (system first) and the rest
    /// reported.
    pub max_watched: crate::watch_map::MaxWatched,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            opens: crate::features::OpenHooks::Auto,
            ring_buffer_size: DEFAULT_RING_BUFFER,
            env_names: Vec::new(),
            name_rules: Vec::new(),
            max_watched: const { crate::watch_map::MaxWatched::from_const(65_536) },
        }
    }
}

impl CaptureSettings {
    /// The kernel map's size: one more than `max_watched`, so that a
    /// rotated file's new inode is watched before its old one is dropped
    /// even when the map is full.
    pub fn map_entries(&self) -> u32 {
        // At most 1_048_577: fits.
        (self.max_watched.get() + 1) as u32
    }
}

/// `[log]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per message.
    #[default]
    Text,
    /// One JSON object per message, for a log collector.
    Json,
}

/// The ring buffer's size: the kernel wants a power of two of at least a
/// page.
pub fn check_ring_buffer_size(n: u64) -> Result<u32, String> {
    const PAGE: u64 = 4096;
    const MAX: u64 = 1 << 30;
    if !(PAGE..=MAX).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two from {PAGE} to {MAX} bytes"
        ));
    }
    Ok(n as u32)
}

fn ring_buffer_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    check_ring_buffer_size(u64::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn empty_is_default() {
        let c = parse("").unwrap();
        assert!(c.agent.trust_domain.is_none() && c.agent.watch.is_empty());
        assert_eq!(c.agent.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.capture.ring_buffer_size, DEFAULT_RING_BUFFER);
        assert_eq!(c.identity, IdentityConfig::default());
        assert_eq!(c.log.level, LogLevel::Info);
    }

    #[test]
    fn every_section_parses() {
        let c = parse(
            r#"
[agent]
host_name = "web-1"
trust_domain = "prod.example"
state_dir = "/srv/secretmon"
watch = ["/srv/app/.env"]
[capture]
opens = "tracepoints"
ring_buffer_size = 65536
env_names = ["MY_CRED"]
name_rules = [{ suffix = ".jks" }]
[log]
level = "debug"
format = "json"
[identity]
kubelet_root = "/srv/kubelet"
[ledger]
retention = "7d"
[findings]
baseline = "1h"
policy = "/etc/p.toml"
"#,
        )
        .unwrap();
        assert_eq!(c.agent.host_name.as_deref(), Some("web-1"));
        assert_eq!(c.agent.watch, [PathBuf::from("/srv/app/.env")]);
        assert_eq!(c.capture.opens, crate::features::OpenHooks::Tracepoints);
        assert_eq!(c.capture.ring_buffer_size, 65536);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.identity.kubelet_root, PathBuf::from("/srv/kubelet"));
        assert_eq!(
            c.ledger.retention.get(),
            std::time::Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            c.findings.baseline.get(),
            std::time::Duration::from_secs(3600)
        );
    }

    #[test]
    fn ring_buffer_must_be_a_power_of_two() {
        assert_eq!(check_ring_buffer_size(4096), Ok(4096));
        assert!(check_ring_buffer_size(5000).is_err());
        assert!(check_ring_buffer_size(1024).is_err());
        assert!(check_ring_buffer_size(1 << 40).is_err());
        let err = parse("[capture]\nring_buffer_size = 5000").unwrap_err();
        assert!(err.to_string().contains("power of two"), "{err}");
    }

    #[test]
    fn outputs_events_and_metrics() {
        let c = parse(
            "[[output]]\nurl = \"syslog+tls://siem.example:6514\"\nformat = \"ocsf\"\n\
             kinds = [\"finding\"]\n[[output]]\nurl = \"/var/log/secretmon.json\"\n\
             [events]\nformat = \"ocsf\"\n[metrics]\nlisten = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(c.output.len(), 2);
        assert_eq!(c.output[0].kinds, ["finding"]);
        assert_eq!(c.events.format, Format::Ocsf);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        for bad in [
            "[metrics]\nlisten = \"nope\"\n",
            "[[output]]\nurl = \"-\"\nfromat = \"ocsf\"\n",
            "[events]\nformat = \"cef\"\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn typos_are_errors() {
        for text in [
            "trust_domian = \"x\"",
            "[agent]\ntrust_domian = \"x\"",
            "[identity]\npod_logs = \"/x\"",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}

/// Every setting, from every source: each leaf key of the schema is set in
/// the main file, in a drop-in and on the command line, and must be read
/// from there.
#[cfg(test)]
mod every_setting {
    use std::path::Path;

    use super::{load::Layer, show, *};

    /// A valid value for each setting whose default is "unset".
    fn sample(key: &str) -> toml::Value {
        match key {
            "agent.host_name" => "node-7".into(),
            "agent.trust_domain" => "prod.example".into(),
            "inventory.fleet_key" => "0123456789abcdef0123".into(),
            "inventory.fleet_key_file" => "/etc/secretmon/fleet.key".into(),
            "inventory.max_file_size" => 4096.into(),
            "inventory.max_depth" => 4.into(),
            "inventory.scan_timeout" | "inventory.near_expiry" => "5s".into(),
            "inventory.static_after_days" => 30.into(),
            "findings.policy" => "/etc/secretmon/policy.toml".into(),
            "metrics.listen" => "127.0.0.1:9464".into(),
            "fleet.url" => "postgres://secretmon@db.example/fleet?sslmode=verify-full".into(),
            "fleet.password_file" => "/etc/secretmon/fleet.password".into(),
            other => panic!("no sample value for unset setting {other}: add one"),
        }
    }

    fn keys_and_values() -> Vec<(String, toml::Value)> {
        let dir = tempfile::tempdir().unwrap();
        let loaded = Sources {
            main: dir.path().join("absent.toml"),
            required: false,
            command_line: Vec::new(),
        }
        .load()
        .unwrap();
        show::entries(&loaded)
            .into_iter()
            .map(|e| {
                let value = e.value.unwrap_or_else(|| sample(&e.key));
                (e.key, value)
            })
            .collect()
    }

    fn toml_line(key: &str, value: &toml::Value) -> String {
        match key.rsplit_once('.') {
            Some((section, name)) => format!("[{section}]\n{name} = {value}\n"),
            // A top-level key (`output`), on line 2 as well.
            None => format!("# top level\n{key} = {value}\n"),
        }
    }

    fn origin(main: &Path, command_line: Vec<Layer>, key: &str) -> String {
        let loaded = Sources {
            main: main.to_path_buf(),
            required: true,
            command_line,
        }
        .load()
        .unwrap_or_else(|e| panic!("{key}: {e}"));
        loaded.origin(key).to_string()
    }

    #[test]
    fn each_from_file_drop_in_and_command_line() {
        let all = keys_and_values();
        assert!(all.len() > 25, "{all:?}");
        for (key, value) in all {
            let dir = tempfile::tempdir().unwrap();
            let main = dir.path().join("config.toml");
            std::fs::write(&main, toml_line(&key, &value)).unwrap();
            assert_eq!(
                origin(&main, vec![], &key),
                format!("{}:2", main.display()),
                "{key}"
            );
            let drop_in = dir.path().join("config.d/50-test.toml");
            std::fs::create_dir_all(drop_in.parent().unwrap()).unwrap();
            std::fs::write(&drop_in, toml_line(&key, &value)).unwrap();
            assert_eq!(
                origin(&main, vec![], &key),
                format!("{}:2", drop_in.display()),
                "{key}"
            );
            let set = Layer::parse_set(&format!("{key}={value}")).unwrap();
            assert_eq!(
                origin(&main, vec![set], &key),
                format!("--set {key}"),
                "{key}"
            );
        }
    }

    #[test]
    fn each_refuses_a_value_of_the_wrong_type() {
        for (key, value) in keys_and_values() {
            // A table where a value belongs is wrong for every setting.
            let wrong = toml::Value::Table(toml::Table::from_iter([(
                "x".to_string(),
                toml::Value::from(1),
            )]));
            let dir = tempfile::tempdir().unwrap();
            let main = dir.path().join("config.toml");
            std::fs::write(&main, toml_line(&key, &wrong)).unwrap();
            let err = Sources {
                main: main.clone(),
                required: true,
                command_line: Vec::new(),
            }
            .load()
            .err()
            .unwrap_or_else(|| panic!("{key} took a table instead of {value}"))
            .to_string();
            assert!(
                err.starts_with(&format!("config {}:", main.display())),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn capture_bounds() {
        let c: CaptureSettings = toml::from_str("").unwrap();
        assert_eq!(c.max_watched.get(), 65_536);
        assert_eq!(c.map_entries(), 65_537);
        let err = toml::from_str::<CaptureSettings>("max_watched = 0").unwrap_err();
        assert_eq!(err.message(), "`0` is out of range: from 16 to 1048576");
        let err = toml::from_str::<CaptureSettings>("max_watched = 99999999").unwrap_err();
        assert!(err.message().contains("out of range"));
    }
}
