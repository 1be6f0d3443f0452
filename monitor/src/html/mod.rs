//! `secretmon report --html FILE`: one self-contained page (inline CSS, JS
//! and SVG; a Content-Security-Policy that allows nothing else, so it
//! fetches nothing) for people: the secrets by lifetime and by finding,
//! each secret's readers as a graph (secret → identities → hosts), reads
//! over time, and the next step per finding.
//!
//! Paths, identities and host names are chosen by whoever controls the
//! host: every one of them is escaped ([`render::esc`]), in text and in
//! attributes alike.
//!
//! The page is built from a [`Page`], which both the local report and the
//! fleet report convert into.

mod render;

use chrono::{DateTime, Utc};

pub use self::render::write;
use crate::{
    findings::{
        FindingType, Severity,
        report::{Report, SecretEntry},
    },
    fleet::rules::{CopyStatus, FleetReport, NextStep},
};

/// Secrets shown with their graphs (the worst first); the rest as table
/// rows. A page of a large fleet stays one people can open (a few MiB):
/// the JSON report has everything.
const CARDS: usize = 100;
/// Table rows of secrets beyond the cards.
const ROWS: usize = 1_000;
/// Findings listed one by one, per finding type (the widest first); every
/// finding is counted.
const FINDINGS_PER_TYPE: usize = 50;
/// Identities and hosts drawn per graph.
const GRAPH_NODES: usize = 8;

/// What the page shows, whoever built it.
#[derive(Debug, Clone)]
pub struct Page {
    pub title: String,
    /// One line on what was looked at.
    pub scope: String,
    pub generated: DateTime<Utc>,
    pub window_start: DateTime<Utc>,
    /// Said at the top: blind spots, grouping.
    pub notes: Vec<String>,
    pub secrets: Vec<PageSecret>,
    pub findings: Vec<PageFinding>,
}

#[derive(Debug, Clone)]
pub struct PageSecret {
    /// Paths, or `PATH and N more`.
    pub title: String,
    pub secret_type: String,
    /// `static`, `dynamic`, `unknown` (the most common one of its copies).
    pub lifetime: String,
    pub fingerprint: Option<String>,
    /// Where it is: host, path, and what is known of its use there.
    pub copies: Vec<PageCopy>,
    pub readers: Vec<PageReader>,
    /// Finding types and severities about it.
    pub findings: Vec<(String, Severity)>,
}

#[derive(Debug, Clone)]
pub struct PageCopy {
    pub host: String,
    pub path: String,
    /// `read`, `unused`, `unknown`, or empty for a single host.
    pub status: String,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PageReader {
    pub identity: String,
    pub hosts: Vec<String>,
    pub reads: u64,
    pub human: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct PageFinding {
    pub severity: Severity,
    pub finding_type: String,
    /// How many hosts it is about.
    pub hosts: usize,
    /// Index into [`Page::secrets`], when it is about one of them.
    pub secret: Option<usize>,
    pub subject: String,
    pub reason: String,
    pub next_step: NextStep,
    pub recommendation: String,
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The next step a local finding calls for.
pub fn next_step(t: FindingType) -> NextStep {
    match t {
        FindingType::OrphanedSecret | FindingType::DuplicatedSecret => NextStep::RemoveTheCopy,
        FindingType::SharedSecret | FindingType::StaticDespiteFederation => {
            NextStep::MoveToWorkloadIdentity
        }
        FindingType::WeakPermissions => NextStep::TightenTheMode,
        FindingType::WatchOverflow => NextStep::WatchMore,
        FindingType::LongLivedSecret
        | FindingType::HumanUse
        | FindingType::SecretInArgv
        | FindingType::SecretInEnv
        | FindingType::EnvironRead
        | FindingType::UnexpectedReader => NextStep::Rotate,
    }
}

impl Page {
    /// This host's report; `host` names it.
    pub fn local(r: &Report, host: &str) -> Self {
        let generated = parse_time(&r.generated).unwrap_or_else(Utc::now);
        let window = chrono::Duration::seconds(r.orphan_window_secs as i64);
        let secrets: Vec<PageSecret> = r.secrets.iter().map(|s| local_secret(s, host)).collect();
        let index = |id: &str| r.secrets.iter().position(|s| s.id == id);
        let findings = r
            .findings
            .iter()
            .map(|f| PageFinding {
                severity: f.severity,
                finding_type: f.finding_type.as_str().to_string(),
                hosts: 1,
                secret: index(&f.secret.id),
                subject: f
                    .secret
                    .path
                    .clone()
                    .or_else(|| f.secret.env_name.as_ref().map(|n| format!("${n}")))
                    .unwrap_or_else(|| f.secret.id.clone()),
                reason: f.evidence.reason.clone(),
                next_step: next_step(f.finding_type),
                recommendation: f.recommendation.clone(),
            })
            .collect();
        Self {
            title: format!("secretmon report: {host}"),
            scope: format!(
                "host {host}, ledger {}, observing since {}",
                r.ledger, r.observing_since
            ),
            generated,
            window_start: generated - window,
            notes: Vec::new(),
            secrets,
            findings,
        }
    }

    /// The fleet's report.
    pub fn fleet(r: &FleetReport) -> Self {
        let generated = parse_time(&r.generated).unwrap_or_else(Utc::now);
        let mut notes = Vec::new();
        if let Some(reason) = &r.grouping.reason {
            notes.push(reason.clone());
        }
        for h in r.hosts.iter().filter(|h| !h.observed_window) {
            notes.push(format!(
                "{}: {}; its unread copies are unknown, not unused",
                h.name,
                h.blind_spot.as_deref().unwrap_or("not observed")
            ));
        }
        // Past the cards and rows, a secret is only counted: its copies
        // and readers (millions on a large fleet) are left in the report.
        let secrets: Vec<PageSecret> = r
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let shown = i < CARDS + ROWS;
                let lifetime = s
                    .lifetimes
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(l, _)| l.clone())
                    .unwrap_or_else(|| "unknown".into());
                PageSecret {
                    title: title(&s.paths),
                    secret_type: s.secret_type.clone(),
                    lifetime,
                    fingerprint: s.fingerprint.clone(),
                    copies: s
                        .copies
                        .iter()
                        .take_while(|_| shown)
                        .map(|c| PageCopy {
                            host: c.host.clone(),
                            path: c.path.clone(),
                            status: match c.status {
                                CopyStatus::Read => "read",
                                CopyStatus::Unused => "unused",
                                CopyStatus::Unknown => "unknown",
                            }
                            .to_string(),
                            note: c.reason.clone(),
                        })
                        .collect(),
                    readers: s
                        .readers
                        .iter()
                        .take_while(|_| shown)
                        .map(|rd| PageReader {
                            identity: rd.identity.clone(),
                            hosts: rd.hosts.clone(),
                            reads: rd.reads,
                            human: rd.human,
                            first_seen: parse_time(&rd.first_seen).unwrap_or(generated),
                            last_seen: parse_time(&rd.last_seen).unwrap_or(generated),
                        })
                        .collect(),
                    findings: s
                        .findings
                        .iter()
                        .map(|f| (f.finding_type.as_str().to_string(), f.severity))
                        .collect(),
                }
            })
            .collect();
        let by_key: std::collections::HashMap<&str, usize> = r
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.as_str(), i))
            .collect();
        let findings = r
            .findings
            .iter()
            .map(|f| PageFinding {
                severity: f.severity,
                finding_type: f.finding_type.as_str().to_string(),
                hosts: f.hosts.len(),
                secret: by_key.get(f.secret.key.as_str()).copied(),
                subject: title(&f.secret.paths),
                reason: f.evidence.reason.clone(),
                next_step: f.next_step,
                recommendation: f.recommendation.clone(),
            })
            .collect();
        let observed = r.hosts.iter().filter(|h| h.observed_window).count();
        Self {
            title: "secretmon fleet report".into(),
            scope: format!(
                "{} hosts ({observed} observed the whole window), {} secrets, grouped by {}",
                r.hosts.len(),
                r.secrets.len(),
                r.grouping.by.replace('_', " ")
            ),
            generated,
            window_start: parse_time(&r.window_start).unwrap_or(generated),
            notes,
            secrets,
            findings,
        }
    }
}

fn title(paths: &[String]) -> String {
    match paths {
        [] => String::new(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more paths", rest.len()),
    }
}

fn local_secret(s: &SecretEntry, host: &str) -> PageSecret {
    PageSecret {
        title: s.path.clone(),
        secret_type: s.secret_type.clone(),
        lifetime: s.lifetime.clone().unwrap_or_else(|| "unknown".into()),
        fingerprint: s.fingerprint.clone(),
        copies: vec![PageCopy {
            host: host.to_string(),
            path: s.path.clone(),
            status: String::new(),
            note: s.removed.as_ref().map(|r| format!("removed {r}")),
        }],
        readers: s
            .readers
            .iter()
            .map(|r| PageReader {
                identity: r.identity.clone(),
                hosts: vec![host.to_string()],
                reads: r.count.saturating_sub(r.denied),
                human: r.human,
                first_seen: parse_time(&r.first_seen).unwrap_or_else(Utc::now),
                last_seen: parse_time(&r.last_seen).unwrap_or_else(Utc::now),
            })
            .collect(),
        findings: s
            .findings
            .iter()
            .map(|f| (f.finding_type.as_str().to_string(), f.severity))
            .collect(),
    }
}
