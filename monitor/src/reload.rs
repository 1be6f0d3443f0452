//! SIGHUP: the configuration read again from the same sources and compared
//! with the one running. What the agent can take without reattaching probes
//! or reopening the ledger (the watch list, the inventory's settings, the
//! findings' windows and policy, the ledger's retention, the `[[output]]`
//! list and `[events]`) is applied; what it cannot (capture, identity, host,
//! state dir, logging, metrics, the fleet and its key) is named as waiting
//! for a restart. A configuration that does not load or resolve, or an
//! output that cannot start, leaves the running one as it is. The outputs
//! are swapped without dropping an event: see `outputs::swap`.

use crate::{
    config::{self, Loaded, Sources, show},
    plan::{PlanError, RunPlan},
};

/// Settings a running agent takes on SIGHUP, as prefixes of dotted keys.
const RELOADABLE: &[&str] = &[
    "agent.watch",
    "inventory.",
    "findings.",
    "ledger.",
    "output",
    "events.",
];
/// Read once at start, though under a reloadable prefix: fingerprints made
/// with another key would all look rotated.
const AT_START_ONLY: &[&str] = &["inventory.fleet_key", "inventory.fleet_key_file"];

/// Each setting's dotted key and value, as `secretmon config` shows them.
type Values = Vec<(String, Option<toml::Value>)>;

/// Reads the configuration again; cheap to clone into a blocking task.
#[derive(Clone)]
pub struct Reloader {
    sources: Sources,
    /// The settings in effect: at start, then with each reload's applied
    /// changes, so that a change waiting for a restart is named each time.
    running: Values,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// A configuration read again and resolved.
pub struct Candidate {
    pub plan: RunPlan,
    pub changes: Changes,
    values: Values,
}

/// What differs from the running configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Now in effect.
    pub applied: Vec<String>,
    /// In effect from the next start.
    pub restart_needed: Vec<String>,
}

impl Reloader {
    /// `loaded` is what the agent started with.
    pub fn new(sources: Sources, loaded: &Loaded) -> Self {
        Self {
            sources,
            running: values(loaded),
        }
    }

    /// Read and resolve the configuration (blocking: files, the policy).
    pub fn read(&self) -> Result<Candidate, ReloadError> {
        let loaded = self.sources.load()?;
        let values = values(&loaded);
        let changes = compare(&self.running, &values);
        let plan = RunPlan::resolve(loaded.settings)?;
        Ok(Candidate {
            plan,
            changes,
            values,
        })
    }

    /// `candidate` was applied: its reloadable values are now the running
    /// ones; the others still wait for a restart.
    pub fn applied(&mut self, candidate: &Candidate) {
        for (key, value) in &mut self.running {
            if candidate.changes.applied.contains(key)
                && let Some((_, new)) = candidate.values.iter().find(|(k, _)| k == key)
            {
                *value = new.clone();
            }
        }
    }
}

fn values(loaded: &Loaded) -> Values {
    show::entries(loaded)
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

/// Whether a running agent takes a new value of `key`.
pub fn reloadable(key: &str) -> bool {
    RELOADABLE.iter().any(|p| key.starts_with(p)) && !AT_START_ONLY.contains(&key)
}

fn compare(running: &Values, new: &Values) -> Changes {
    let mut changes = Changes::default();
    for (key, value) in new {
        let before = running.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if before == Some(value) {
            continue;
        }
        if reloadable(key) {
            changes.applied.push(key.clone());
        } else {
            changes.restart_needed.push(key.clone());
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &std::path::Path) -> Sources {
        Sources {
            main: dir.join("config.toml"),
            required: false,
            command_line: Vec::new(),
        }
    }

    fn write(dir: &std::path::Path, text: &str) {
        std::fs::write(dir.join("config.toml"), text).unwrap();
    }

    #[test]
    fn which_settings_reload() {
        for key in [
            "agent.watch",
            "inventory.globs",
            "inventory.extra",
            "inventory.max_depth",
            "findings.policy",
            "findings.interval",
            "ledger.retention",
            "output",
            "events.format",
        ] {
            assert!(reloadable(key), "{key}");
        }
        for key in [
            "agent.host_name",
            "agent.trust_domain",
            "agent.state_dir",
            "capture.opens",
            "capture.ring_buffer_size",
            "capture.env_names",
            "capture.name_rules",
            "identity.kubelet_root",
            "process.args",
            "log.level",
            "metrics.listen",
            "inventory.fleet_key",
            "inventory.fleet_key_file",
        ] {
            assert!(!reloadable(key), "{key}");
        }
    }

    #[test]
    fn a_reload_applies_what_it_can_and_names_the_rest_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "x").unwrap();
        write(dir.path(), "[findings]\nbaseline = \"1h\"\n");
        let src = sources(dir.path());
        let mut reloader = Reloader::new(src.clone(), &src.load().unwrap());
        assert_eq!(reloader.read().unwrap().changes, Changes::default());

        write(
            dir.path(),
            &format!(
                "[agent]\nwatch = [{:?}]\n[capture]\nring_buffer_size = 65536\n\
                 [findings]\nbaseline = \"2h\"\n",
                secret.to_str().unwrap()
            ),
        );
        let candidate = reloader.read().unwrap();
        assert_eq!(
            candidate.changes,
            Changes {
                applied: vec!["agent.watch".into(), "findings.baseline".into()],
                restart_needed: vec!["capture.ring_buffer_size".into()],
            }
        );
        assert_eq!(candidate.plan.watch, std::slice::from_ref(&secret));
        reloader.applied(&candidate);
        // The applied ones are running; the ring buffer still waits.
        assert_eq!(
            reloader.read().unwrap().changes,
            Changes {
                applied: vec![],
                restart_needed: vec!["capture.ring_buffer_size".into()],
            }
        );
    }

    #[test]
    fn a_bad_configuration_is_an_error_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "");
        let src = sources(dir.path());
        let reloader = Reloader::new(src.clone(), &src.load().unwrap());
        write(dir.path(), "[agent]\nwatch = [\"/no/such/secret\"]\n");
        let err = reloader.read().err().unwrap().to_string();
        assert!(err.contains("/no/such/secret"), "{err}");
        write(dir.path(), "[agent]\nwatch_list = []\n");
        let err = reloader.read().err().unwrap().to_string();
        assert!(err.contains("config.toml:2"), "{err}");
        assert!(err.contains("agent.watch"), "{err}");
    }
}
