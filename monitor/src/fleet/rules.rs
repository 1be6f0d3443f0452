//! The fleet's findings: the union of every host's copies and readers,
//! grouped by fleet fingerprint (one value, wherever it sits), judged over
//! one window. Pure functions of a [`FleetView`] and a clock.
//!
//! A copy nobody read in the window is "unused" only when its host proves
//! it: the agent observed for the whole window (restarts shorter than its
//! sync interval aside), lost no events, and watched the copy since before
//! the window. Otherwise it is "unknown", never "unused".

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::view::{CopyView, FleetView, HostView, ReaderView};
use crate::{
    durations::human_duration,
    findings::{
        Severity, rfc3339,
        rules::{principal, principal_names},
    },
    identity::UNKNOWN,
};

pub const SCHEMA: &str = "secretmon/fleet-report/v1";

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub now: DateTime<Utc>,
    /// Reads are looked for in the window that ends now.
    pub window: Duration,
    /// A static value in use and older than this is long-lived.
    pub max_age: Duration,
}

impl Settings {
    pub fn window_start(&self) -> DateTime<Utc> {
        self.now - chrono::Duration::from_std(self.window).unwrap_or(chrono::TimeDelta::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetFindingType {
    /// Present, and read on no host in the window, every copy proven unused.
    OrphanedSecret,
    /// Read on some hosts, proven unused on others.
    UnusedCopies,
    SharedSecret,
    DuplicatedSecret,
    LongLivedSecret,
    HumanUse,
}

impl FleetFindingType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrphanedSecret => "orphaned_secret",
            Self::UnusedCopies => "unused_copies",
            Self::SharedSecret => "shared_secret",
            Self::DuplicatedSecret => "duplicated_secret",
            Self::LongLivedSecret => "long_lived_secret",
            Self::HumanUse => "human_use",
        }
    }

    pub fn owasp(self) -> &'static [&'static str] {
        match self {
            Self::OrphanedSecret | Self::UnusedCopies => &["NHI1"],
            Self::SharedSecret => &["NHI9"],
            Self::DuplicatedSecret => &["NHI2"],
            Self::LongLivedSecret => &["NHI7"],
            Self::HumanUse => &["NHI10"],
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::OrphanedSecret | Self::UnusedCopies | Self::DuplicatedSecret => Severity::Low,
            Self::SharedSecret | Self::LongLivedSecret | Self::HumanUse => Severity::Medium,
        }
    }

    /// The one thing to do about it.
    pub fn next_step(self) -> NextStep {
        match self {
            Self::OrphanedSecret | Self::UnusedCopies | Self::DuplicatedSecret => {
                NextStep::RemoveTheCopy
            }
            Self::SharedSecret => NextStep::MoveToWorkloadIdentity,
            Self::LongLivedSecret | Self::HumanUse => NextStep::Rotate,
        }
    }
}

/// The recommended next step of a finding, as the HTML report groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NextStep {
    Rotate,
    MoveToWorkloadIdentity,
    RemoveTheCopy,
    TightenTheMode,
    WatchMore,
}

impl NextStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "rotate",
            Self::MoveToWorkloadIdentity => "move to a workload identity",
            Self::RemoveTheCopy => "remove the copy",
            Self::TightenTheMode => "tighten the mode",
            Self::WatchMore => "raise [capture] max_watched, or remove the flood of files",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyStatus {
    Read,
    Unused,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub schema: &'static str,
    pub generated: String,
    pub window_start: String,
    pub window_secs: u64,
    pub max_age_secs: u64,
    pub grouping: Grouping,
    pub hosts: Vec<HostEntry>,
    /// Worst first.
    pub secrets: Vec<FleetSecret>,
    /// Worst first.
    pub findings: Vec<FleetFinding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Grouping {
    /// `fingerprint`, or `path_and_type` when fingerprints cannot be
    /// compared across hosts.
    pub by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostEntry {
    pub name: String,
    pub agent_version: String,
    pub fleet_keyed: bool,
    pub last_sync: String,
    /// It observed the whole window: what it did not see did not happen.
    pub observed_window: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blind_spot: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetSecret {
    /// The fingerprint, or `PATH (TYPE)` when grouped by path.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(rename = "type")]
    pub secret_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Copies per lifetime verdict (`static`, `dynamic`, `unknown`).
    pub lifetimes: BTreeMap<String, usize>,
    /// The oldest first sighting of this value on any host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_since: Option<String>,
    /// Hosts with a copy; of them, where it was read, proven unused, unknown.
    pub hosts: usize,
    pub read_on: usize,
    pub unused_on: usize,
    pub unknown_on: usize,
    pub paths: Vec<String>,
    pub copies: Vec<CopyEntry>,
    pub readers: Vec<ReaderEntry>,
    pub findings: Vec<FindingRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyEntry {
    pub host: String,
    pub path: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
    pub status: CopyStatus,
    /// Why `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_read: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
}

/// One identity's reads of a value, on every host it read it on.
#[derive(Debug, Clone, Serialize)]
pub struct ReaderEntry {
    pub identity: String,
    pub kind: String,
    pub hosts: Vec<String>,
    pub reads: u64,
    pub human: u64,
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FindingRef {
    pub id: String,
    #[serde(rename = "type")]
    pub finding_type: FleetFindingType,
    pub severity: Severity,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetFinding {
    pub id: String,
    #[serde(rename = "type")]
    pub finding_type: FleetFindingType,
    pub severity: Severity,
    pub owasp: &'static [&'static str],
    pub secret: FindingSecret,
    /// The hosts it is about (for unused copies: where to remove them).
    pub hosts: Vec<String>,
    pub identities: Vec<String>,
    pub evidence: FleetEvidence,
    pub recommendation: String,
    pub next_step: NextStep,
}

#[derive(Debug, Clone, Serialize)]
pub struct FindingSecret {
    pub key: String,
    #[serde(rename = "type")]
    pub secret_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetEvidence {
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    pub reason: String,
}

/// Why `host` cannot prove non-use over [`Settings::window`], if it cannot:
/// its runs, each taken as observing until its stop or until its next
/// heartbeat was due ([`HostView::heartbeat_due`]), must cover the window
/// with no gap longer than an interval, and it must have lost no events in
/// them.
pub fn blind_spot(host: &HostView, s: &Settings) -> Option<String> {
    let start = s.window_start();
    let grace = chrono::Duration::from_std(host.interval).unwrap_or_default();
    let due = chrono::Duration::from_std(host.heartbeat_due()).unwrap_or_default();
    let mut runs: Vec<(DateTime<Utc>, DateTime<Utc>, u64)> = host
        .runs
        .iter()
        .map(|r| (r.started, r.stopped.unwrap_or(r.alive + due), r.events_lost))
        .filter(|(_, end, _)| *end >= start)
        .collect();
    runs.sort_by_key(|r| r.0);
    let Some(first) = runs.first() else {
        return Some(match host.runs.iter().map(|r| r.alive).max() {
            Some(t) => format!("not reporting since {}", rfc3339(t)),
            None => format!("not reporting since {}", rfc3339(host.last_sync)),
        });
    };
    if first.0 > start + grace {
        return Some(format!("observing only since {}", rfc3339(first.0)));
    }
    let mut covered = first.1;
    for &(started, end, _) in &runs[1..] {
        if started > covered + grace {
            return Some(format!(
                "not observing from {} to {}",
                rfc3339(covered),
                rfc3339(started)
            ));
        }
        covered = covered.max(end);
    }
    if covered < s.now {
        return Some(format!("not reporting since {}", rfc3339(covered)));
    }
    let lost: u64 = runs.iter().map(|r| r.2).sum();
    (lost > 0).then(|| format!("lost {lost} events to a full ring buffer"))
}

/// One identity's reads of a value, summed over hosts.
struct Tally<'a> {
    kind: &'a str,
    hosts: BTreeSet<&'a str>,
    reads: u64,
    human: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

/// The copies of one value (or one path and type).
struct Group<'a> {
    key: String,
    fingerprint: Option<&'a str>,
    copies: Vec<usize>,
}

/// Run the fleet rules over `view`.
pub fn evaluate(view: &FleetView, s: &Settings) -> FleetReport {
    let start = s.window_start();
    let blind: Vec<Option<String>> = view.hosts.iter().map(|h| blind_spot(h, s)).collect();
    let with_copies: BTreeSet<usize> = view.copies.iter().map(|c| c.host).collect();
    let grouping = grouping(view, &with_copies);
    let by_fingerprint = grouping.reason.is_none();

    let mut readers_of: Vec<Vec<&ReaderView>> = vec![Vec::new(); view.copies.len()];
    for r in &view.readers {
        if r.last_seen >= start && r.reads > 0 {
            readers_of[r.copy].push(r);
        }
    }
    let mut groups: HashMap<String, Group<'_>> = HashMap::new();
    for (i, c) in view.copies.iter().enumerate() {
        let (key, fingerprint) = match (&c.fingerprint, by_fingerprint) {
            (Some(fp), true) => (fp.clone(), Some(fp.as_str())),
            _ => (format!("{} ({})", c.path, c.secret_type), None),
        };
        groups
            .entry(key.clone())
            .or_insert_with(|| Group {
                key,
                fingerprint,
                copies: Vec::new(),
            })
            .copies
            .push(i);
    }

    let mut secrets = Vec::with_capacity(groups.len());
    let mut findings = Vec::new();
    for group in groups.into_values() {
        let (secret, found) = judge(view, s, &blind, &readers_of, &group);
        secrets.push(secret);
        findings.extend(found);
    }
    secrets.sort_by(|a, b| {
        let worst = |e: &FleetSecret| e.findings.iter().map(|f| f.severity).max();
        worst(b)
            .cmp(&worst(a))
            .then(b.hosts.cmp(&a.hosts))
            .then_with(|| a.key.cmp(&b.key))
    });
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.finding_type.cmp(&b.finding_type))
            .then_with(|| a.secret.key.cmp(&b.secret.key))
    });
    let hosts = view
        .hosts
        .iter()
        .zip(&blind)
        .map(|(h, b)| HostEntry {
            name: h.name.clone(),
            agent_version: h.agent_version.clone(),
            fleet_keyed: h.fleet_key_id.is_some(),
            last_sync: rfc3339(h.last_sync),
            observed_window: b.is_none(),
            blind_spot: b.clone(),
        })
        .collect();
    FleetReport {
        schema: SCHEMA,
        generated: rfc3339(s.now),
        window_start: rfc3339(start),
        window_secs: s.window.as_secs(),
        max_age_secs: s.max_age.as_secs(),
        grouping,
        hosts,
        secrets,
        findings,
    }
}

/// By fingerprint when every host with a copy keys its fingerprints with
/// one and the same fleet key; otherwise by path and type, saying why.
fn grouping(view: &FleetView, with_copies: &BTreeSet<usize>) -> Grouping {
    let unkeyed: Vec<&str> = with_copies
        .iter()
        .map(|&h| &view.hosts[h])
        .filter(|h| h.fleet_key_id.is_none())
        .map(|h| h.name.as_str())
        .collect();
    let keys: BTreeSet<&str> = with_copies
        .iter()
        .filter_map(|&h| view.hosts[h].fleet_key_id.as_deref())
        .collect();
    let reason = if !unkeyed.is_empty() {
        Some(format!(
            "fingerprints cannot be compared across hosts: {} without the fleet key (inventory.fleet_key_file); grouped by path and type only",
            list(&unkeyed, 5)
        ))
    } else if keys.len() > 1 {
        Some(format!(
            "fingerprints cannot be compared across hosts: they use {} different fleet keys; grouped by path and type only",
            keys.len()
        ))
    } else {
        None
    };
    Grouping {
        by: if reason.is_none() {
            "fingerprint"
        } else {
            "path_and_type"
        },
        reason,
    }
}

/// `a, b, c and 7 more`.
pub fn list(items: &[&str], shown: usize) -> String {
    if items.len() <= shown {
        return items.join(", ");
    }
    format!(
        "{} and {} more",
        items[..shown].join(", "),
        items.len() - shown
    )
}

fn finding_id(kind: FleetFindingType, key: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in [kind.as_str(), key].iter().chain(parts) {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("fnd-{}", hex::encode(&h.finalize()[..8]))
}

fn judge(
    view: &FleetView,
    s: &Settings,
    blind: &[Option<String>],
    readers_of: &[Vec<&ReaderView>],
    group: &Group<'_>,
) -> (FleetSecret, Vec<FleetFinding>) {
    let start = s.window_start();
    let copies: Vec<&CopyView> = group.copies.iter().map(|&i| &view.copies[i]).collect();
    let host_name = |c: &CopyView| view.hosts[c.host].name.as_str();
    let mut entries = Vec::with_capacity(copies.len());
    // Per host: the best status among its copies (read > unused > unknown
    // would lie: a host proves non-use only if none of its copies was read).
    let mut per_host: BTreeMap<&str, CopyStatus> = BTreeMap::new();
    let mut readers: BTreeMap<&str, Tally<'_>> = BTreeMap::new();
    let mut lifetimes: BTreeMap<String, usize> = BTreeMap::new();
    let mut paths: BTreeSet<&str> = BTreeSet::new();
    for (&i, c) in group.copies.iter().zip(&copies) {
        let host = host_name(c);
        paths.insert(&c.path);
        *lifetimes
            .entry(c.lifetime.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        let read_by = &readers_of[i];
        let (status, reason) = if !read_by.is_empty() {
            (CopyStatus::Read, None)
        } else if let Some(b) = &blind[c.host] {
            (CopyStatus::Unknown, Some(b.clone()))
        } else if let Some(since) = c.unwatched {
            (
                CopyStatus::Unknown,
                Some(format!("not watched since {}", rfc3339(since))),
            )
        } else if c.first_seen > start {
            (
                CopyStatus::Unknown,
                Some(format!("watched only since {}", rfc3339(c.first_seen))),
            )
        } else {
            (CopyStatus::Unused, None)
        };
        let slot = per_host.entry(host).or_insert(status);
        *slot = match (*slot, status) {
            (CopyStatus::Read, _) | (_, CopyStatus::Read) => CopyStatus::Read,
            (CopyStatus::Unknown, _) | (_, CopyStatus::Unknown) => CopyStatus::Unknown,
            _ => CopyStatus::Unused,
        };
        for r in read_by {
            let e = readers.entry(&r.identity).or_insert_with(|| Tally {
                kind: &r.kind,
                hosts: BTreeSet::new(),
                reads: 0,
                human: 0,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
            });
            e.hosts.insert(host);
            e.reads += r.reads;
            e.human += r.human;
            e.first_seen = e.first_seen.min(r.first_seen);
            e.last_seen = e.last_seen.max(r.last_seen);
        }
        entries.push(CopyEntry {
            host: host.to_string(),
            path: c.path.clone(),
            id: c.id.clone(),
            mode: c.mode.map(|m| format!("{m:04o}")),
            lifetime: c.lifetime.clone(),
            status,
            reason,
            last_read: read_by.iter().map(|r| r.last_seen).max().map(rfc3339),
            removed: c.removed.map(rfc3339),
        });
    }
    entries.sort_by(|a, b| a.host.cmp(&b.host).then_with(|| a.path.cmp(&b.path)));
    let hosts_with = |want: CopyStatus| -> Vec<&str> {
        per_host
            .iter()
            .filter(|(_, st)| **st == want)
            .map(|(h, _)| *h)
            .collect()
    };
    let (read_on, unused_on, unknown_on) = (
        hosts_with(CopyStatus::Read),
        hosts_with(CopyStatus::Unused),
        hosts_with(CopyStatus::Unknown),
    );
    let first = &copies[0];
    let paths: Vec<String> = paths.into_iter().map(str::to_string).collect();
    let value_since = copies
        .iter()
        .filter_map(|c| match (c.value_since, c.mtime) {
            (Some(v), Some(m)) => Some(v.min(m)),
            (v, m) => v.or(m),
        })
        .min();
    let finding_secret = FindingSecret {
        key: group.key.clone(),
        secret_type: first.secret_type.clone(),
        fingerprint: group.fingerprint.map(str::to_string),
        paths: paths.clone(),
    };
    let window = human_duration(s.window);
    let total_reads: u64 = readers.values().map(|r| r.reads).sum();
    let first_read = readers.values().map(|r| r.first_seen).min();
    let last_read = readers.values().map(|r| r.last_seen).max();
    let mut found = Vec::new();
    let mut add = |kind: FleetFindingType,
                   hosts: Vec<String>,
                   identities: Vec<String>,
                   count: u64,
                   reason: String,
                   recommendation: String| {
        let mut parts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        parts.extend(identities.iter().map(String::as_str));
        found.push(FleetFinding {
            id: finding_id(kind, &group.key, &parts),
            finding_type: kind,
            severity: kind.severity(),
            owasp: kind.owasp(),
            secret: finding_secret.clone(),
            hosts,
            identities,
            evidence: FleetEvidence {
                count,
                first_seen: first_read.map(rfc3339),
                last_seen: last_read.map(rfc3339),
                reason,
            },
            recommendation,
            next_step: kind.next_step(),
        });
    };
    let copies_on = |hosts: &[&str]| -> String {
        let wanted: BTreeSet<&str> = hosts.iter().copied().collect();
        let places: Vec<String> = entries
            .iter()
            .filter(|e| wanted.contains(e.host.as_str()))
            .map(|e| format!("{}:{}", e.host, e.path))
            .collect();
        let refs: Vec<&str> = places.iter().map(String::as_str).collect();
        list(&refs, 10)
    };
    let owned = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    let unknown_note = if unknown_on.is_empty() {
        String::new()
    } else {
        format!(
            "; unknown on {} (not observed for the whole window)",
            list(&unknown_on, 5)
        )
    };

    if read_on.is_empty() && unknown_on.is_empty() && !unused_on.is_empty() {
        add(
            FleetFindingType::OrphanedSecret,
            owned(&unused_on),
            Vec::new(),
            0,
            format!(
                "present on {} hosts at {} paths and read on none in {window}",
                unused_on.len(),
                paths.len()
            ),
            format!(
                "revoke it once its owner confirms nothing needs it, then delete {}",
                copies_on(&unused_on)
            ),
        );
    }
    if !read_on.is_empty() && !unused_on.is_empty() {
        add(
            FleetFindingType::UnusedCopies,
            owned(&unused_on),
            Vec::new(),
            0,
            format!(
                "present on {} hosts, read on {} ({}); unused for {window} on {}{unknown_note}",
                per_host.len(),
                read_on.len(),
                list(&read_on, 5),
                list(&unused_on, 5)
            ),
            format!("remove the copies nobody read: {}", copies_on(&unused_on)),
        );
    }
    // An unknown reader proves use, and nothing about who: it takes no
    // part in the rules about who reads.
    let known: BTreeMap<&str, &Tally<'_>> = readers
        .iter()
        .filter(|(who, _)| **who != UNKNOWN)
        .map(|(who, t)| (*who, t))
        .collect();
    let identities: Vec<&str> = known.keys().copied().collect();
    // Principal → the identities behind it: a person's tools are one.
    let mut principals: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (who, t) in &known {
        principals
            .entry(principal(who, t.kind, t.reads, t.human))
            .or_default()
            .insert(who);
    }
    if principals.len() >= 2 {
        let on: BTreeSet<&str> = known
            .values()
            .flat_map(|r| r.hosts.iter().copied())
            .collect();
        let named = principal_names(&principals);
        let named: Vec<&str> = named.iter().map(String::as_str).collect();
        let keys: Vec<String> = principals.into_keys().collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        add(
            FleetFindingType::SharedSecret,
            on.iter().map(|h| h.to_string()).collect(),
            keys.clone(),
            known.values().map(|r| r.reads).sum(),
            format!(
                "{} identities on {} hosts read the same value: {}",
                named.len(),
                on.len(),
                list(&named, 5)
            ),
            format!(
                "give each of {} its own credential, ideally a workload identity, instead of sharing one",
                list(&key_refs, 5)
            ),
        );
    }
    if group.fingerprint.is_some() && (per_host.len() >= 2 || paths.len() >= 2) {
        add(
            FleetFindingType::DuplicatedSecret,
            per_host.keys().map(|h| h.to_string()).collect(),
            Vec::new(),
            copies.len() as u64,
            format!(
                "the same value is stored {} times on {} hosts at {} paths",
                copies.len(),
                per_host.len(),
                paths.len()
            ),
            "keep it in one secret store and deliver it where it is read; remove the other copies"
                .to_string(),
        );
    }
    let is_static = lifetimes.contains_key("static");
    if is_static
        && !read_on.is_empty()
        && let Some(since) = value_since
        && s.now - since > chrono::Duration::from_std(s.max_age).unwrap_or(chrono::TimeDelta::MAX)
    {
        let age = (s.now - since).to_std().unwrap_or_default();
        add(
            FleetFindingType::LongLivedSecret,
            owned(&read_on),
            owned(&identities),
            total_reads,
            format!(
                "static, in use, and unrotated for {} (over {})",
                human_duration(age),
                human_duration(s.max_age)
            ),
            "rotate it now, then move its readers to short-lived credentials (a projected token, Vault dynamic secrets or OIDC federation)"
                .to_string(),
        );
    }
    let human: Vec<(&str, &BTreeSet<&str>, u64)> = known
        .iter()
        .filter(|(_, r)| r.human > 0)
        .map(|(i, r)| (*i, &r.hosts, r.human))
        .collect();
    if !human.is_empty() {
        let on: BTreeSet<&str> = human.iter().flat_map(|h| h.1.iter().copied()).collect();
        let who: Vec<&str> = human.iter().map(|h| h.0).collect();
        let count = human.iter().map(|h| h.2).sum();
        add(
            FleetFindingType::HumanUse,
            on.iter().map(|h| h.to_string()).collect(),
            owned(&who),
            count,
            format!(
                "opened {count} times from a human session by {} on {}",
                list(&who, 5),
                list(&on.iter().copied().collect::<Vec<_>>(), 5)
            ),
            "people should use their own short-lived credentials (SSO, OIDC); rotate it if it was copied"
                .to_string(),
        );
    }
    let secret = FleetSecret {
        key: group.key.clone(),
        fingerprint: group.fingerprint.map(str::to_string),
        secret_type: first.secret_type.clone(),
        hint: first.hint.clone(),
        lifetimes,
        value_since: value_since.map(rfc3339),
        hosts: per_host.len(),
        read_on: read_on.len(),
        unused_on: unused_on.len(),
        unknown_on: unknown_on.len(),
        paths,
        copies: entries,
        readers: readers
            .into_iter()
            .map(|(identity, t)| ReaderEntry {
                identity: identity.to_string(),
                kind: t.kind.to_string(),
                hosts: t.hosts.into_iter().map(str::to_string).collect(),
                reads: t.reads,
                human: t.human,
                first_seen: rfc3339(t.first_seen),
                last_seen: rfc3339(t.last_seen),
            })
            .collect(),
        findings: found
            .iter()
            .map(|f| FindingRef {
                id: f.id.clone(),
                finding_type: f.finding_type,
                severity: f.severity,
            })
            .collect(),
    };
    (secret, found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::store::Run;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    const DAY: i64 = 86_400;

    fn settings() -> Settings {
        Settings {
            now: t(40 * DAY),
            window: Duration::from_secs(30 * 86_400),
            max_age: Duration::from_secs(90 * 86_400),
        }
    }

    /// A host whose agent ran from day 0 and synced a minute ago.
    fn host(name: &str) -> HostView {
        HostView {
            name: name.into(),
            agent_version: "0.1.0".into(),
            fleet_key_id: Some("hmac-sha256:fleetkey".into()),
            last_sync: t(40 * DAY - 60),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            runs: vec![Run {
                started: t(0),
                alive: t(40 * DAY - 20),
                stopped: None,
                events_lost: 0,
            }],
        }
    }

    fn copy(host: usize, path: &str, fp: &str) -> CopyView {
        CopyView {
            host,
            id: format!("sec-{host}-{path}"),
            path: path.into(),
            secret_type: "aws_credentials".into(),
            fingerprint: Some(fp.into()),
            lifetime: Some("static".into()),
            hint: Some("AKIA…".into()),
            mode: Some(0o600),
            first_seen: t(0),
            removed: None,
            unwatched: None,
            mtime: Some(t(0)),
            value_since: Some(t(0)),
        }
    }

    fn reader(copy: usize, identity: &str, human: u64) -> ReaderView {
        ReaderView {
            copy,
            identity: identity.into(),
            kind: "systemd".into(),
            first_seen: t(35 * DAY),
            last_seen: t(39 * DAY),
            reads: 5,
            human,
        }
    }

    fn types(r: &FleetReport) -> Vec<&'static str> {
        r.findings.iter().map(|f| f.finding_type.as_str()).collect()
    }

    /// One key on three hosts, read on one: the other two copies can go,
    /// and it is no orphan.
    #[test]
    fn unused_copies_are_named_and_no_orphan() {
        let view = FleetView {
            hosts: vec![host("web-1"), host("web-2"), host("web-3")],
            copies: vec![
                copy(0, "/srv/app/.aws/credentials", "hmac-sha256:aa"),
                copy(1, "/srv/app/.aws/credentials", "hmac-sha256:aa"),
                copy(2, "/opt/old/.aws/credentials", "hmac-sha256:aa"),
            ],
            readers: vec![reader(0, "systemd:app.service", 0)],
        };
        let r = evaluate(&view, &settings());
        assert_eq!(r.grouping.by, "fingerprint");
        assert_eq!(r.secrets.len(), 1);
        let s = &r.secrets[0];
        assert_eq!(
            (s.hosts, s.read_on, s.unused_on, s.unknown_on),
            (3, 1, 2, 0)
        );
        assert!(!types(&r).contains(&"orphaned_secret"), "{:?}", types(&r));
        let unused = r
            .findings
            .iter()
            .find(|f| f.finding_type == FleetFindingType::UnusedCopies)
            .unwrap();
        assert_eq!(unused.hosts, ["web-2", "web-3"]);
        assert!(
            unused
                .recommendation
                .contains("web-3:/opt/old/.aws/credentials"),
            "{}",
            unused.recommendation
        );
        assert_eq!(unused.next_step, NextStep::RemoveTheCopy);
        assert!(types(&r).contains(&"duplicated_secret"));
    }

    #[test]
    fn read_nowhere_and_proven_is_orphaned_fleet_wide() {
        let view = FleetView {
            hosts: vec![host("a"), host("b")],
            copies: vec![
                copy(0, "/x", "hmac-sha256:aa"),
                copy(1, "/x", "hmac-sha256:aa"),
            ],
            readers: Vec::new(),
        };
        let r = evaluate(&view, &settings());
        let orphan = &r.findings[0];
        assert_eq!(orphan.finding_type, FleetFindingType::OrphanedSecret);
        assert_eq!(orphan.hosts, ["a", "b"]);
    }

    /// A host that was down for part of the window cannot prove non-use:
    /// its copy is unknown, and then nothing is orphaned.
    #[test]
    fn a_host_down_in_the_window_is_unknown_never_unused() {
        let mut down = host("c");
        down.runs = vec![
            Run {
                started: t(0),
                alive: t(12 * DAY),
                stopped: Some(t(12 * DAY)),
                events_lost: 0,
            },
            Run {
                started: t(20 * DAY),
                alive: t(40 * DAY - 10),
                stopped: None,
                events_lost: 0,
            },
        ];
        let view = FleetView {
            hosts: vec![host("a"), host("b"), down],
            copies: vec![
                copy(0, "/x", "hmac-sha256:aa"),
                copy(1, "/x", "hmac-sha256:aa"),
                copy(2, "/x", "hmac-sha256:aa"),
            ],
            readers: vec![reader(0, "systemd:app.service", 0)],
        };
        let r = evaluate(&view, &settings());
        let s = &r.secrets[0];
        assert_eq!((s.read_on, s.unused_on, s.unknown_on), (1, 1, 1));
        let c = s.copies.iter().find(|c| c.host == "c").unwrap();
        assert_eq!(c.status, CopyStatus::Unknown);
        assert!(c.reason.as_deref().unwrap().contains("not observing from"));
        let unused = &r
            .findings
            .iter()
            .find(|f| f.finding_type == FleetFindingType::UnusedCopies)
            .unwrap();
        assert_eq!(unused.hosts, ["b"], "c is not named as removable");
        assert!(unused.evidence.reason.contains("unknown on c"));
        let h = r.hosts.iter().find(|h| h.name == "c").unwrap();
        assert!(!h.observed_window);

        // Nobody read it, one host blind: no orphan finding.
        let view = FleetView {
            readers: Vec::new(),
            ..view
        };
        assert!(!types(&evaluate(&view, &settings())).contains(&"orphaned_secret"));
    }

    #[test]
    fn blind_spots_say_why() {
        let s = settings();
        assert_eq!(blind_spot(&host("a"), &s), None);
        let mut late = host("a");
        late.runs[0].started = t(15 * DAY);
        assert!(
            blind_spot(&late, &s)
                .unwrap()
                .starts_with("observing only since")
        );
        let mut stopped = host("a");
        stopped.runs[0].stopped = Some(t(39 * DAY));
        assert!(
            blind_spot(&stopped, &s)
                .unwrap()
                .starts_with("not reporting since")
        );
        let mut silent = host("a");
        silent.runs[0].alive = t(38 * DAY);
        assert!(
            blind_spot(&silent, &s)
                .unwrap()
                .starts_with("not reporting since")
        );
        // A sync slow to commit is no silence: the next heartbeat is due
        // an interval (30 s) and a sync's timeout (10 s) after the last.
        let mut slow = host("a");
        slow.runs[0].alive = s.now - chrono::Duration::seconds(35);
        assert_eq!(blind_spot(&slow, &s), None);
        slow.runs[0].alive = s.now - chrono::Duration::seconds(45);
        assert!(
            blind_spot(&slow, &s)
                .unwrap()
                .starts_with("not reporting since")
        );
        let mut never = host("a");
        never.runs.clear();
        assert!(blind_spot(&never, &s).is_some());
        let mut lossy = host("a");
        lossy.runs[0].events_lost = 7;
        assert_eq!(
            blind_spot(&lossy, &s).as_deref(),
            Some("lost 7 events to a full ring buffer")
        );
        // A restart within one interval is no gap.
        let mut restarted = host("a");
        restarted.runs = vec![
            Run {
                started: t(0),
                alive: t(20 * DAY),
                stopped: Some(t(20 * DAY)),
                events_lost: 0,
            },
            Run {
                started: t(20 * DAY + 5),
                alive: t(40 * DAY - 5),
                stopped: None,
                events_lost: 0,
            },
        ];
        assert_eq!(blind_spot(&restarted, &s), None);
    }

    #[test]
    fn without_one_fleet_key_fingerprints_are_not_compared() {
        let mut own_key = host("b");
        own_key.fleet_key_id = None;
        let view = FleetView {
            hosts: vec![host("a"), own_key],
            copies: vec![
                copy(0, "/x", "hmac-sha256:aa"),
                copy(1, "/x", "hmac-sha256:bb"),
            ],
            readers: vec![reader(0, "systemd:app.service", 0)],
        };
        let r = evaluate(&view, &settings());
        assert_eq!(r.grouping.by, "path_and_type");
        let reason = r.grouping.reason.as_deref().unwrap();
        assert!(
            reason.contains("cannot be compared") && reason.contains('b'),
            "{reason}"
        );
        assert_eq!(r.secrets.len(), 1, "one path and type");
        assert_eq!(r.secrets[0].key, "/x (aws_credentials)");
        assert!(r.secrets[0].fingerprint.is_none());
        assert!(!types(&r).contains(&"duplicated_secret"), "values unknown");
    }

    #[test]
    fn sharing_long_life_and_people_anywhere() {
        let mut old = copy(1, "/y", "hmac-sha256:aa");
        old.value_since = Some(t(-200 * DAY));
        let view = FleetView {
            hosts: vec![host("a"), host("b")],
            copies: vec![copy(0, "/x", "hmac-sha256:aa"), old],
            readers: vec![
                reader(0, "systemd:app.service", 0),
                reader(1, "user:ana:/usr/bin/cat", 2),
            ],
        };
        let r = evaluate(&view, &settings());
        let found = types(&r);
        for want in [
            "shared_secret",
            "long_lived_secret",
            "human_use",
            "duplicated_secret",
        ] {
            assert!(found.contains(&want), "{want}: {found:?}");
        }
        let human = r
            .findings
            .iter()
            .find(|f| f.finding_type == FleetFindingType::HumanUse)
            .unwrap();
        assert_eq!(human.hosts, ["b"]);
        assert_eq!(human.identities, ["user:ana:/usr/bin/cat"]);
        let shared = &r.secrets[0].readers;
        assert_eq!(shared.len(), 2);
        // Worst first: medium before low.
        assert_eq!(r.findings[0].severity, Severity::Medium);
        // Reads before the window count for nothing.
        let mut stale = view.clone();
        for rd in &mut stale.readers {
            rd.last_seen = t(DAY);
        }
        let r = evaluate(&stale, &settings());
        assert_eq!(r.secrets[0].read_on, 0);
        assert!(types(&r).contains(&"orphaned_secret"));
    }

    /// A copy another run stopped watching (its file still there): nobody
    /// vouches it was not read, so it is unknown, never unused or orphaned.
    #[test]
    fn an_unwatched_copy_is_unknown_never_unused() {
        let mut unwatched = copy(1, "/x", "hmac-sha256:aa");
        unwatched.unwatched = Some(t(30 * DAY));
        let view = FleetView {
            hosts: vec![host("a"), host("b")],
            copies: vec![copy(0, "/x", "hmac-sha256:aa"), unwatched],
            readers: Vec::new(),
        };
        let r = evaluate(&view, &settings());
        let s = &r.secrets[0];
        assert_eq!((s.read_on, s.unused_on, s.unknown_on), (0, 1, 1));
        let b = s.copies.iter().find(|c| c.host == "b").unwrap();
        assert_eq!(b.status, CopyStatus::Unknown);
        assert!(
            b.reason
                .as_deref()
                .unwrap()
                .starts_with("not watched since")
        );
        assert!(!types(&r).contains(&"orphaned_secret"), "{:?}", types(&r));

        let view = FleetView {
            readers: vec![reader(0, "systemd:app.service", 0)],
            ..view
        };
        let r = evaluate(&view, &settings());
        assert!(!types(&r).contains(&"unused_copies"), "{:?}", types(&r));
    }

    /// A read by an unknown process (after lost events) proves use, and
    /// nothing about who: it makes no sharing and no human use.
    #[test]
    fn an_unknown_reader_is_use_but_no_identity() {
        let mut unknown = reader(1, UNKNOWN, 3);
        unknown.kind = UNKNOWN.into();
        let view = FleetView {
            hosts: vec![host("a"), host("b")],
            copies: vec![
                copy(0, "/x", "hmac-sha256:aa"),
                copy(1, "/x", "hmac-sha256:aa"),
            ],
            readers: vec![reader(0, "systemd:app.service", 0), unknown],
        };
        let r = evaluate(&view, &settings());
        let s = &r.secrets[0];
        assert_eq!((s.read_on, s.unused_on), (2, 0));
        let found = types(&r);
        for absent in ["shared_secret", "human_use", "unused_copies"] {
            assert!(!found.contains(&absent), "{absent}: {found:?}");
        }
    }

    /// One person's tools on two hosts are one principal, as on one host;
    /// a workload beside them makes two.
    #[test]
    fn a_persons_tools_are_one_principal() {
        let by_hand = |copy: usize, exe: &str| ReaderView {
            kind: "user".into(),
            human: 5,
            ..reader(copy, &format!("user:ana:{exe}"), 0)
        };
        let view = FleetView {
            hosts: vec![host("a"), host("b")],
            copies: vec![
                copy(0, "/x", "hmac-sha256:aa"),
                copy(1, "/x", "hmac-sha256:aa"),
            ],
            readers: vec![by_hand(0, "/usr/bin/cat"), by_hand(1, "/usr/bin/less")],
        };
        let r = evaluate(&view, &settings());
        assert!(!types(&r).contains(&"shared_secret"), "{:?}", types(&r));

        let mut view = view;
        view.readers.push(reader(1, "systemd:app.service", 0));
        let r = evaluate(&view, &settings());
        let shared = r
            .findings
            .iter()
            .find(|f| f.finding_type == FleetFindingType::SharedSecret)
            .unwrap();
        assert_eq!(shared.identities, ["systemd:app.service", "user:ana"]);
        assert!(
            shared
                .evidence
                .reason
                .contains("user:ana (by hand: /usr/bin/cat, /usr/bin/less)"),
            "{}",
            shared.evidence.reason
        );
    }
}
