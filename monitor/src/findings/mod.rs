//! Findings: what the ledger says is wrong. `rules` are pure functions of a
//! ledger snapshot and a clock; `engine` runs them as the agent observes,
//! and emits each finding once; `report` prints the current picture.

pub mod engine;
mod liveness;
pub mod policy;
pub mod report;
pub mod rules;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use self::policy::{Policy, PolicyError, PolicyRule};
use crate::bounded::{Period, Span, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingType {
    OrphanedSecret,
    SharedSecret,
    DuplicatedSecret,
    LongLivedSecret,
    HumanUse,
    SecretInArgv,
    SecretInEnv,
    EnvironRead,
    UnexpectedReader,
    WeakPermissions,
    StaticDespiteFederation,
    /// The kernel's watch map is full: secrets in a directory are not
    /// watched by inode (see `watch_map`).
    WatchOverflow,
}

impl FindingType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrphanedSecret => "orphaned_secret",
            Self::SharedSecret => "shared_secret",
            Self::DuplicatedSecret => "duplicated_secret",
            Self::LongLivedSecret => "long_lived_secret",
            Self::HumanUse => "human_use",
            Self::SecretInArgv => "secret_in_argv",
            Self::SecretInEnv => "secret_in_env",
            Self::EnvironRead => "environ_read",
            Self::UnexpectedReader => "unexpected_reader",
            Self::WeakPermissions => "weak_permissions",
            Self::StaticDespiteFederation => "static_despite_federation",
            Self::WatchOverflow => "watch_overflow",
        }
    }

    /// The OWASP Non-Human Identities Top 10 (2025) risks it is evidence of.
    pub fn owasp(self) -> &'static [&'static str] {
        match self {
            Self::OrphanedSecret => &["NHI1"],
            Self::SharedSecret => &["NHI9"],
            Self::LongLivedSecret => &["NHI7"],
            Self::HumanUse => &["NHI10"],
            Self::UnexpectedReader => &["NHI2", "NHI3"],
            Self::StaticDespiteFederation => &["NHI4"],
            // About the monitor, not an identity.
            Self::WatchOverflow => &[],
            Self::DuplicatedSecret
            | Self::SecretInArgv
            | Self::SecretInEnv
            | Self::EnvironRead
            | Self::WeakPermissions => &["NHI2"],
        }
    }

    /// A new set of identities makes it a new finding (a third sharer);
    /// for the others it is one fact about the secret whoever reads it.
    fn keyed_by_identities(self) -> bool {
        !matches!(
            self,
            Self::OrphanedSecret
                | Self::DuplicatedSecret
                | Self::LongLivedSecret
                | Self::WeakPermissions
                | Self::WatchOverflow
        )
    }

    /// How bad it is, unless the rule knows better (world-readable is worse
    /// than group-readable).
    pub fn severity(self) -> Severity {
        match self {
            Self::SecretInArgv
            | Self::EnvironRead
            | Self::UnexpectedReader
            | Self::WatchOverflow => Severity::High,
            Self::OrphanedSecret | Self::DuplicatedSecret | Self::StaticDespiteFederation => {
                Severity::Low
            }
            Self::SharedSecret
            | Self::LongLivedSecret
            | Self::HumanUse
            | Self::SecretInEnv
            | Self::WeakPermissions => Severity::Medium,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// The `finding` object of the event contract and of `report --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable for the same finding: type, subject, identities and state.
    pub id: String,
    #[serde(rename = "type")]
    pub finding_type: FindingType,
    pub severity: Severity,
    pub secret: FindingSecret,
    pub identities: Vec<FindingIdentity>,
    pub evidence: Evidence,
    pub owasp: &'static [&'static str],
    pub recommendation: String,
    /// What the finding is about: a secret id, a fingerprint, a variable.
    #[serde(skip)]
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FindingSecret {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub secret_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_name: Option<String>,
    /// A command line's secret, redacted.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub redacted: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingIdentity {
    pub id: String,
    pub kind: String,
    pub spiffe_id: String,
    /// Its workload is no longer on the host.
    pub gone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Evidence {
    /// Reads (or sightings) behind it.
    pub count: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub reason: String,
    /// Every path involved, when more than the secret's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

impl Finding {
    /// `state` is what else makes this finding new when it changes (a
    /// mode, a set of paths); so do the identities, where they define it.
    pub fn new(
        finding_type: FindingType,
        subject: String,
        state: &str,
        secret: FindingSecret,
        identities: Vec<FindingIdentity>,
        evidence: Evidence,
        recommendation: String,
    ) -> Self {
        let mut h = Sha256::new();
        for part in [finding_type.as_str(), &subject, state] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        if finding_type.keyed_by_identities() {
            for i in &identities {
                h.update(i.id.as_bytes());
                h.update([0]);
            }
        }
        Self {
            id: format!("fnd-{}", hex::encode(&h.finalize()[..8])),
            finding_type,
            severity: finding_type.severity(),
            secret,
            identities,
            evidence,
            owasp: finding_type.owasp(),
            recommendation,
            subject,
        }
    }
}

impl Finding {
    /// List `identities` instead of those the id was keyed by (a person's
    /// programs instead of the person).
    fn listing(mut self, identities: Vec<FindingIdentity>) -> Self {
        self.identities = identities;
        self
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What the rules need besides the ledger: windows, baseline, policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// A secret nobody read for this long is orphaned.
    pub orphan_window: Duration,
    /// A static secret in use and unrotated for longer is long-lived.
    pub max_age: Duration,
    /// Readers seen in a secret's first `baseline` are its expected ones,
    /// where no policy rule covers it.
    pub baseline: Duration,
    pub policy: Vec<PolicyRule>,
    #[serde(skip)]
    compiled: Policy,
}

impl Settings {
    pub fn new(
        orphan_window: Duration,
        max_age: Duration,
        baseline: Duration,
        policy: Vec<PolicyRule>,
    ) -> Result<Self, PolicyError> {
        Ok(Self {
            compiled: Policy::compile(&policy)?,
            orphan_window,
            max_age,
            baseline,
            policy,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.compiled
    }

    /// As the agent stored them in the ledger, for `report`.
    pub fn from_json(text: &str) -> Option<Self> {
        let s: Self = serde_json::from_str(text).ok()?;
        Self::new(s.orphan_window, s.max_age, s.baseline, s.policy).ok()
    }
}

/// `[findings]` of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FindingsConfig {
    pub orphan_window: Window,
    pub max_age: Window,
    pub baseline: Span,
    /// How often the clock-driven rules (orphaned, long-lived, duplicated,
    /// permissions, federation) and the inventory refresh run.
    pub interval: Period,
    /// The TOML policy: which identities may read which secrets.
    pub policy: Option<std::path::PathBuf>,
}

impl Default for FindingsConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            orphan_window: const { Window::from_secs(30 * DAY) },
            max_age: const { Window::from_secs(90 * DAY) },
            baseline: const { Span::from_secs(DAY) },
            interval: const { Period::from_secs(60) },
            policy: None,
        }
    }
}

impl FindingsConfig {
    pub fn settings(&self) -> Result<Settings, PolicyError> {
        let rules = match &self.policy {
            Some(path) => policy::load(path)?,
            None => Vec::new(),
        };
        Settings::new(
            self.orphan_window.get(),
            self.max_age.get(),
            self.baseline.get(),
            rules,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_durations_and_typos() {
        let c: FindingsConfig =
            toml::from_str("orphan_window = \"7d\"\nbaseline = \"90s\"\n").unwrap();
        assert_eq!(c.orphan_window.get(), Duration::from_secs(7 * 86_400));
        assert_eq!(c.baseline.get(), Duration::from_secs(90));
        assert_eq!(c.max_age, FindingsConfig::default().max_age);
        assert!(toml::from_str::<FindingsConfig>("orphan_windw = \"7d\"").is_err());
    }

    #[test]
    fn out_of_range_durations_are_refused_with_the_range() {
        let err = |text: &str| {
            toml::from_str::<FindingsConfig>(text)
                .unwrap_err()
                .message()
                .to_string()
        };
        assert_eq!(
            err("interval = \"0s\""),
            "`0s` is out of range: from 1s to 1d"
        );
        assert_eq!(
            err("interval = \"1ns\""),
            "`1ns` is out of range: from 1s to 1d"
        );
        for (key, min) in [
            ("orphan_window", "1s"),
            ("max_age", "1s"),
            ("baseline", "0s"),
        ] {
            assert_eq!(
                err(&format!("{key} = \"99999999999d\"")),
                format!("`99999999999d` is out of range: from {min} to 36500d"),
            );
        }
        let c: FindingsConfig = toml::from_str("baseline = \"0s\"").unwrap();
        assert_eq!(c.baseline.get(), Duration::ZERO, "no learning is allowed");
    }

    #[test]
    fn settings_round_trip_through_the_ledger() {
        let s = Settings::new(
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3),
            vec![PolicyRule {
                glob: "/srv/**".into(),
                allow: vec!["systemd:app.service".into()],
            }],
        )
        .unwrap();
        let back = Settings::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.baseline, Duration::from_secs(3));
        assert_eq!(
            back.policy().allows("/srv/x", "systemd:app.service"),
            Some(true)
        );
    }

    #[test]
    fn ids_depend_on_identities_and_state() {
        let f = |ids: &[&str], state| id(FindingType::SharedSecret, ids, state);
        assert_eq!(f(&["a", "b"], ""), f(&["a", "b"], ""));
        assert_ne!(f(&["a", "b"], ""), f(&["a", "b", "c"], ""));
        assert!(f(&["a"], "").starts_with("fnd-"));
        let w = |ids: &[&str], state| id(FindingType::WeakPermissions, ids, state);
        assert_eq!(
            w(&[], "644"),
            w(&["a"], "644"),
            "a new reader, the same mode"
        );
        assert_ne!(w(&["a"], "644"), w(&["a"], "640"));
    }

    fn id(ty: FindingType, ids: &[&str], state: &str) -> String {
        Finding::new(
            ty,
            "sec-1".into(),
            state,
            FindingSecret::default(),
            ids.iter()
                .map(|i| FindingIdentity {
                    id: i.to_string(),
                    kind: "user".into(),
                    spiffe_id: String::new(),
                    gone: false,
                })
                .collect(),
            Evidence::default(),
            String::new(),
        )
        .id
    }
}
