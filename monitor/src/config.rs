//! `--config FILE`: the agent's TOML configuration. Every section is
//! optional; an unknown key is an error, so a typo is not silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{findings::FindingsConfig, identity::IdentityConfig, ledger::LedgerConfig};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// SPIFFE trust domain of identities; defaults to the host name.
    pub trust_domain: Option<String>,
    /// Extra files or directories to watch, as `--watch` does.
    pub watch: Vec<PathBuf>,
    /// Catalog extensions, scan limits, fingerprint key, lifetime policy.
    pub inventory: crate::inventory::settings::Settings,
    /// Extra environment variable names to report at exec: `NAME` or
    /// `*_SUFFIX`, added to the built-in list.
    pub env_names: Vec<String>,
    /// Extra credential-file name rules the kernel applies to files not
    /// inventoried yet: `{ name = "sa.json" }`, `{ prefix = "id_", parent =
    /// ".ssh", not_suffix = ".pub" }`, `{ suffix = ".jks" }`.
    pub name_rules: Vec<crate::name_rules::NameRuleSpec>,
    /// Where workload identities come from on this node.
    pub identity: IdentityConfig,
    /// The ledger's retention.
    pub ledger: LedgerConfig,
    /// Windows, baseline and policy of the findings.
    pub findings: FindingsConfig,
    /// The kernel side's sizes.
    pub capture: crate::watch_map::CaptureConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {err}")]
    Read {
        path: String,
        err: crate::secure_fs::TrustError,
    },
    #[error("--config {path}: not UTF-8")]
    Encoding { path: String },
    #[error("--config {path}: {message}")]
    Parse { path: String, message: String },
}

impl Config {
    /// The file at `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let shown = path.display().to_string();
        let bytes =
            crate::secure_fs::read_trusted(path, crate::secure_fs::CONFIG).map_err(|err| {
                ConfigError::Read {
                    path: shown.clone(),
                    err,
                }
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ConfigError::Encoding {
            path: shown.clone(),
        })?;
        Self::parse(text).map_err(|err| ConfigError::Parse {
            message: crate::errors::toml_error(text, &err),
            path: shown,
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        let c = Config::parse("").unwrap();
        assert!(c.trust_domain.is_none() && c.watch.is_empty());
        assert_eq!(c.identity, IdentityConfig::default());
    }

    #[test]
    fn values_and_typos() {
        let c = Config::parse("trust_domain = \"prod.example\"\nwatch = [\"/srv/app/.env\"]\n")
            .unwrap();
        assert_eq!(c.trust_domain.as_deref(), Some("prod.example"));
        assert_eq!(c.watch, [PathBuf::from("/srv/app/.env")]);
        let err = Config::parse("trust_domian = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trust_domian"), "{err}");
    }

    #[test]
    fn identity_section() {
        let c = Config::parse("[identity]\nkubelet_root = \"/srv/kubelet\"\n").unwrap();
        assert_eq!(c.identity.kubelet_root, PathBuf::from("/srv/kubelet"));
        assert_eq!(c.identity.pod_log_root, PathBuf::from("/var/log/pods"));
        let err = Config::parse("[identity]\npod_logs = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pod_logs"), "{err}");
    }

    #[test]
    fn ledger_and_findings_sections() {
        let c = Config::parse(
            "[ledger]\nretention = \"7d\"\n[findings]\nbaseline = \"1h\"\npolicy = \"/etc/p.toml\"\n",
        )
        .unwrap();
        assert_eq!(
            c.ledger.retention.get(),
            std::time::Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            c.findings.baseline.get(),
            std::time::Duration::from_secs(3600)
        );
        assert_eq!(c.findings.policy, Some(PathBuf::from("/etc/p.toml")));
    }

    #[test]
    fn bad_values_say_where_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[findings]\ninterval = \"0s\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "--config {}: line 2, `interval`: `0s` is out of range: from 1s to 1d",
                path.display()
            )
        );
    }

    #[test]
    fn missing_file_names_the_flag() {
        let err = Config::load(Some(Path::new("/no/such.toml")))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--config /no/such.toml: No such file or directory");
    }
}
