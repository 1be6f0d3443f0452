//! The run plan: the merged [`Settings`] resolved once into what the agent
//! is built from. Everything that can be wrong with a configuration (a bad
//! trust domain, a policy that does not parse, a `--watch` path that does
//! not exist, a bad name rule or environment pattern) fails here, before
//! anything is loaded into the kernel.

use std::path::PathBuf;

use crate::{
    config::{CaptureSettings, Settings},
    env_names::{self, BadEnvPattern, EnvPattern},
    event::Host,
    findings::{self, policy::PolicyError},
    identity::{IdentityConfig, Naming, spiffe::SpiffeError},
    inventory::{self, WatchPathError, catalog::Catalog, catalog::CatalogError},
    ledger::LedgerConfig,
    name_rules::{self, BadNameRule, CompiledRules},
};

/// What `secretmon run` does, fully resolved.
pub struct RunPlan {
    pub host: Host,
    pub naming: Naming,
    pub state_dir: PathBuf,
    /// `--watch` paths, absolute; each exists.
    pub watch: Vec<PathBuf>,
    pub capture: CaptureSettings,
    /// The kernel's exec-time watch list: the catalog's names and config's.
    pub env_patterns: Vec<EnvPattern>,
    /// The kernel's credential-file name rules: built-in and config's.
    pub name_rules: CompiledRules,
    pub inventory: inventory::settings::Settings,
    pub identity: IdentityConfig,
    pub ledger: LedgerConfig,
    /// The rules' windows and policy, loaded.
    pub findings: findings::Settings,
    /// How often the clock-driven rules and the inventory refresh run.
    pub findings_interval: std::time::Duration,
    /// Where events go: a file, or stdout when `None`.
    pub output: Option<PathBuf>,
    /// What events show of command lines.
    pub process_args: crate::redact::ArgsPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    TrustDomain(#[from] SpiffeError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    WatchPath(#[from] WatchPathError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    EnvName(#[from] BadEnvPattern),
    #[error(transparent)]
    NameRule(#[from] BadNameRule),
}

impl RunPlan {
    /// Resolve `settings`; `output` is the `--output` flag.
    pub fn resolve(settings: Settings, output: Option<PathBuf>) -> Result<Self, PlanError> {
        let host = Host {
            name: host_name(settings.agent.host_name.as_deref()),
        };
        // A bad trust domain is a configuration error: say so before
        // anything else is checked.
        let naming = Naming::new(settings.agent.trust_domain.as_deref(), &host.name)?;
        let findings = settings.findings.settings()?;
        let watch = inventory::user_paths(&settings.agent.watch)?;
        let catalog = Catalog::new(&settings.inventory)?;
        let env_patterns =
            env_names::watch_list(catalog.env_watch_names(), &settings.capture.env_names)?;
        let name_rules = name_rules::rules(&settings.capture.name_rules)?;
        Ok(Self {
            host,
            naming,
            state_dir: settings.agent.state_dir,
            watch,
            env_patterns,
            name_rules,
            findings,
            findings_interval: settings.findings.interval,
            capture: settings.capture,
            inventory: settings.inventory,
            identity: settings.identity,
            ledger: settings.ledger,
            output,
            process_args: settings.process.args,
        })
    }
}

/// The configured host name, else the kernel's.
pub fn host_name(configured: Option<&str>) -> String {
    match configured {
        Some(name) => name.to_string(),
        None => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Settings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_resolve() {
        let plan = RunPlan::resolve(settings(""), None).unwrap();
        assert_eq!(plan.host.name, host_name(None));
        assert!(!plan.env_patterns.is_empty());
        assert_eq!(
            plan.state_dir,
            PathBuf::from(crate::config::DEFAULT_STATE_DIR)
        );
    }

    #[test]
    fn configured_host_name_is_used() {
        let plan = RunPlan::resolve(settings("[agent]\nhost_name = \"node-7\"\n"), None).unwrap();
        assert_eq!(plan.host.name, "node-7");
    }

    #[test]
    fn every_bad_setting_fails_before_start() {
        for (text, says) in [
            ("[agent]\ntrust_domain = \"Not A Domain!\"\n", "trust"),
            (
                "[agent]\nwatch = [\"/no/such/secret\"]\n",
                "/no/such/secret",
            ),
            (
                "[findings]\npolicy = \"/no/such/policy.toml\"\n",
                "/no/such/policy.toml",
            ),
            ("[capture]\nenv_names = [\"\"]\n", ""),
            (
                "[capture]\nname_rules = [{ name = \"a\", suffix = \".b\" }]\n",
                "name rule",
            ),
        ] {
            let err = RunPlan::resolve(settings(text), None)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.to_lowercase().contains(&says.to_lowercase()),
                "{text}: {err}"
            );
        }
    }
}
