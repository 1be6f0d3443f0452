//! `secretmon report`: the current picture from the ledger, while the agent
//! runs or after it stopped. For each secret: who read it and what is wrong
//! with it. A table for people (coloured on a terminal, worst first), or
//! one JSON document for machines.

use std::{collections::HashMap, io::Write, path::Path, time::Duration};

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_HORIZONTAL_ONLY};
use serde::Serialize;

use super::{Finding, FindingType, FindingsConfig, Settings, Severity, rfc3339, rules};
use crate::{
    bounded::Window,
    durations::human_duration,
    ledger::{ExposureKind, Ledger, LedgerError, Snapshot},
    terminal::escape,
    watch_map::{self, Overflow},
};

pub const SCHEMA: &str = "secretmon/report/v1";
const NON_TERMINAL_WIDTH: u16 = 160;

#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Overrides the orphaned (and, without `max_age`, the long-lived) window.
    pub window: Option<Window>,
    pub max_age: Option<Window>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub generated: String,
    pub ledger: String,
    pub observing_since: String,
    /// When the fingerprint key last changed: fingerprints before it are
    /// not comparable with later ones, and no rotation is claimed across it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint_key_changed: Option<String>,
    /// The windows the rules used, in seconds.
    pub orphan_window_secs: u64,
    pub max_age_secs: u64,
    pub secrets: Vec<SecretEntry>,
    pub exposures: Vec<ExposureEntry>,
    /// Every finding, worst first.
    pub findings: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct SecretEntry {
    pub id: String,
    pub path: String,
    #[serde(rename = "type")]
    pub secret_type: String,
    pub fingerprint: Option<String>,
    pub lifetime: Option<String>,
    pub hint: Option<String>,
    /// Octal, e.g. `0600`.
    pub mode: Option<String>,
    pub uid: Option<u32>,
    pub first_seen: String,
    /// When its file was found gone.
    pub removed: Option<String>,
    /// Since when no agent watches it although its file is still there:
    /// its facts are as last seen then.
    pub unwatched: Option<String>,
    /// Its values over time, oldest first: a new one is a rotation.
    pub fingerprints: Vec<FingerprintSpan>,
    pub readers: Vec<Reader>,
    /// The findings about it, in full in the top-level list.
    pub findings: Vec<FindingRef>,
}

#[derive(Debug, Serialize)]
pub struct FingerprintSpan {
    pub fingerprint: String,
    pub first_seen: String,
    pub last_seen: String,
    /// Made with a fingerprint key used before the last key change: not
    /// comparable with the fingerprints after it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub earlier_key: bool,
}

#[derive(Debug, Serialize)]
pub struct FindingRef {
    pub id: String,
    #[serde(rename = "type")]
    pub finding_type: FindingType,
    pub severity: Severity,
}

#[derive(Debug, Serialize)]
pub struct Reader {
    pub identity: String,
    pub kind: String,
    pub spiffe_id: String,
    /// Opens, refused ones included.
    pub count: u64,
    pub denied: u64,
    /// Successful opens that could read.
    pub reads: u64,
    /// Successful opens that could write: a writer, not a reader, when
    /// it never read.
    pub writes: u64,
    /// Reads from a human session.
    pub human: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub last_pid: u32,
    pub last_exe: Option<String>,
    pub gone: bool,
}

#[derive(Debug, Serialize)]
pub struct ExposureEntry {
    pub kind: ExposureKind,
    /// The variable, the token kind, or the environment's owner.
    pub subject: String,
    pub identity: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub last_exe: Option<String>,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Read the ledger in `state_dir` and build the report as of `now`.
pub fn build(
    state_dir: &Path,
    opts: &ReportOptions,
    now: DateTime<Utc>,
) -> Result<Report, LedgerError> {
    let ledger = Ledger::open_read_only(state_dir)?;
    let snapshot = ledger.snapshot()?;
    // The agent's settings (its policy, its baseline); the defaults when it
    // stored none.
    let stored = ledger
        .meta("settings")?
        .and_then(|t| Settings::from_json(&t));
    let mut settings = match stored {
        Some(s) => s,
        None => FindingsConfig::default()
            .settings()
            .expect("the default settings have no policy to fail"),
    };
    if let Some(w) = opts.window {
        settings.orphan_window = w.get();
        settings.max_age = w.get();
    }
    if let Some(m) = opts.max_age {
        settings.max_age = m.get();
    }
    let mut report = assemble(&snapshot, &settings, now, ledger.path());
    // The agent's own blind spot, as it last saw it, first.
    let overflow: Option<Overflow> = ledger
        .meta(watch_map::LEDGER_META)?
        .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(o) = overflow {
        let mut findings = rules::watch_overflow(&o);
        findings.append(&mut report.findings);
        report.findings = findings;
    }
    Ok(report)
}

fn assemble(s: &Snapshot, settings: &Settings, now: DateTime<Utc>, path: &Path) -> Report {
    let findings = rules::evaluate(s, settings, now, rules::Scope::All);
    // Which findings name each secret, by id or by path, indexed once: a
    // host with tens of thousands of secrets has as many findings.
    let mut about_index: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, x) in findings.iter().enumerate() {
        about_index.entry(x.secret.id.as_str()).or_default().push(i);
        for path in &x.evidence.paths {
            about_index.entry(path.as_str()).or_default().push(i);
        }
    }
    let mut secrets: Vec<SecretEntry> = s
        .secrets
        .values()
        .map(|r| {
            let f = &r.facts;
            let readers = s
                .accesses
                .range((f.id.clone(), String::new())..)
                .take_while(|((id, _), _)| *id == f.id)
                .map(|((_, who), a)| {
                    let i = s.identities.get(who);
                    Reader {
                        identity: who.clone(),
                        kind: i.map(|i| i.kind.clone()).unwrap_or_default(),
                        spiffe_id: i.map(|i| i.spiffe_id.clone()).unwrap_or_default(),
                        count: a.count,
                        denied: a.denied,
                        reads: a.reads,
                        writes: a.writes,
                        human: a.human,
                        first_seen: rfc3339(a.first_seen),
                        last_seen: rfc3339(a.last_seen),
                        last_pid: a.last_pid,
                        last_exe: a.last_exe.clone(),
                        gone: i.is_some_and(|i| i.gone_since.is_some()),
                    }
                })
                .collect();
            let mut about_ids: Vec<usize> = [f.id.as_str(), f.path.as_str()]
                .iter()
                .filter_map(|k| about_index.get(k))
                .flatten()
                .copied()
                .collect();
            about_ids.sort_unstable();
            about_ids.dedup();
            let about = about_ids
                .into_iter()
                .map(|i| &findings[i])
                .map(|x| FindingRef {
                    id: x.id.clone(),
                    finding_type: x.finding_type,
                    severity: x.severity,
                })
                .collect();
            let mut fingerprints: Vec<_> = s
                .fingerprints
                .range((f.id.clone(), String::new())..)
                .take_while(|((id, _), _)| *id == f.id)
                .collect();
            // A value seen under two fingerprint keys keeps its first
            // sighting: those spans start together, the earlier key's ends
            // first.
            fingerprints.sort_by_key(|(_, span)| (span.first_seen, span.last_seen));
            SecretEntry {
                fingerprints: fingerprints
                    .into_iter()
                    .map(|((_, fp), span)| FingerprintSpan {
                        fingerprint: fp.clone(),
                        first_seen: rfc3339(span.first_seen),
                        last_seen: rfc3339(span.last_seen),
                        earlier_key: s.key_changed.is_some_and(|k| span.last_seen < k),
                    })
                    .collect(),
                id: f.id.clone(),
                path: f.path.clone(),
                secret_type: f.secret_type.clone(),
                fingerprint: f.fingerprint.clone(),
                lifetime: f.lifetime.clone(),
                hint: f.hint.clone(),
                mode: f.mode.map(|m| format!("{m:04o}")),
                uid: f.uid,
                first_seen: rfc3339(r.first_seen),
                removed: r.removed.map(rfc3339),
                unwatched: r.unwatched.map(rfc3339),
                readers,
                findings: about,
            }
        })
        .collect();
    // Worst first, then by path.
    secrets.sort_by(|a, b| {
        let worst = |e: &SecretEntry| e.findings.iter().map(|f| f.severity).max();
        worst(b).cmp(&worst(a)).then_with(|| a.path.cmp(&b.path))
    });
    let exposures = s
        .exposures
        .iter()
        .map(|((kind, subject, who), e)| ExposureEntry {
            kind: *kind,
            subject: subject.clone(),
            identity: who.clone(),
            count: e.count,
            first_seen: rfc3339(e.first_seen),
            last_seen: rfc3339(e.last_seen),
            last_exe: e.last_exe.clone(),
            detail: e.detail.clone(),
        })
        .collect();
    Report {
        schema: SCHEMA,
        generated: rfc3339(now),
        ledger: path.display().to_string(),
        observing_since: rfc3339(s.created),
        fingerprint_key_changed: s.key_changed.map(rfc3339),
        orphan_window_secs: settings.orphan_window.as_secs(),
        max_age_secs: settings.max_age.as_secs(),
        secrets,
        exposures,
        findings,
    }
}

pub fn write_json(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, report)?;
    writeln!(out)
}

/// `user:ana:/usr/bin/cat read ×3, wrote ×1, refused ×2, last …`: only
/// what it did.
fn reader_text(r: &Reader) -> String {
    let did: Vec<String> = [
        ("read", r.reads),
        ("wrote", r.writes),
        ("refused", r.denied),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{what} ×{n}"))
    .collect();
    let did = if did.is_empty() {
        format!("opened ×{}", r.count)
    } else {
        did.join(", ")
    };
    format!("{} {did}, last {}", escape(&r.identity), r.last_seen)
}

fn severity_cell(s: Severity) -> Cell {
    let color = match s {
        Severity::High => Color::Red,
        Severity::Medium => Color::Yellow,
        Severity::Low => Color::Cyan,
    };
    Cell::new(s.as_str().to_uppercase()).fg(color)
}

fn table(header: &[&str], terminal: bool) -> Table {
    let mut t = Table::new();
    if !terminal {
        // Off a terminal there is no width to fit: wrap at one a pager or
        // a CI log shows whole.
        t.force_no_tty().set_width(NON_TERMINAL_WIDTH);
    }
    t.load_style(UTF8_HORIZONTAL_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

/// The tables for people; `terminal`: fit its width, and colour. Every
/// text that came from the host (paths, identities, executables, hints,
/// reasons naming them) is escaped: a file name must not drive the
/// reader's terminal or forge a row.
pub fn write_text(report: &Report, out: &mut impl Write, terminal: bool) -> std::io::Result<()> {
    writeln!(
        out,
        "secretmon report of {}: observing since {}; orphaned after {} without a read, long-lived after {} unrotated",
        escape(&report.ledger),
        report.observing_since,
        human_duration(Duration::from_secs(report.orphan_window_secs)),
        human_duration(Duration::from_secs(report.max_age_secs)),
    )?;
    if let Some(at) = &report.fingerprint_key_changed {
        writeln!(
            out,
            "the fingerprint key changed at {at}: fingerprints before it are not comparable with later ones, and no rotation is claimed across it"
        )?;
    }
    writeln!(out, "\nFINDINGS ({})", report.findings.len())?;
    if report.findings.is_empty() {
        writeln!(out, "none")?;
    } else {
        let mut t = table(
            &[
                "SEVERITY",
                "FINDING",
                "SECRET",
                "IDENTITIES",
                "EVIDENCE",
                "RECOMMENDATION",
            ],
            terminal,
        );
        for f in &report.findings {
            let secret = f
                .secret
                .path
                .clone()
                .or_else(|| f.secret.env_name.as_ref().map(|n| format!("${n}")))
                .unwrap_or_else(|| f.secret.id.clone());
            let ids = f
                .identities
                .iter()
                .map(|i| {
                    if i.gone {
                        format!("{} (gone)", escape(&i.id))
                    } else {
                        escape(&i.id).into_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            t.add_row(vec![
                severity_cell(f.severity),
                Cell::new(format!(
                    "{}\n{}",
                    f.finding_type.as_str(),
                    f.owasp.join(", ")
                )),
                Cell::new(escape(&secret)),
                Cell::new(ids),
                Cell::new(format!(
                    "{} (×{})",
                    escape(&f.evidence.reason),
                    f.evidence.count
                )),
                Cell::new(escape(&f.recommendation)),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    writeln!(out, "\nSECRETS ({})", report.secrets.len())?;
    let mut t = table(&["SECRET", "TYPE", "READERS", "FINDINGS"], terminal);
    for s in &report.secrets {
        let mut name = escape(&s.path).into_owned();
        if let Some(r) = &s.removed {
            name.push_str(&format!("\n(removed {r})"));
        } else if let Some(u) = &s.unwatched {
            name.push_str(&format!("\n(not watched since {u})"));
        }
        let readers = if s.readers.is_empty() {
            "none".to_string()
        } else {
            s.readers
                .iter()
                .map(reader_text)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let findings = s
            .findings
            .iter()
            .map(|f| f.finding_type.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        t.add_row(vec![
            Cell::new(name),
            Cell::new(escape(&s.secret_type)),
            Cell::new(readers),
            Cell::new(findings),
        ]);
    }
    writeln!(out, "{t}")?;
    if !report.exposures.is_empty() {
        writeln!(out, "\nOUTSIDE FILES ({})", report.exposures.len())?;
        let mut t = table(&["WHERE", "WHAT", "IDENTITY", "SEEN"], terminal);
        for e in &report.exposures {
            let what = match (&e.kind, &e.detail) {
                (ExposureKind::Argv, Some(m)) => format!("{} {m}", e.subject),
                _ => e.subject.clone(),
            };
            t.add_row(vec![
                e.kind.as_str().to_string(),
                escape(&what).into_owned(),
                escape(&e.identity).into_owned(),
                format!("×{}, last {}", e.count, e.last_seen),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Observation, OpenMode, SecretFacts, Seen};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    /// `/srv/NAME`, unchanged since t=0.
    fn secret(name: &str, mode: u32, fingerprint: &str) -> SecretFacts {
        SecretFacts {
            id: format!("sec-{name}"),
            path: format!("/srv/{name}"),
            secret_type: "generic".into(),
            fingerprint: Some(fingerprint.into()),
            lifetime: Some("static".into()),
            hint: None,
            uid: Some(0),
            gid: Some(0),
            mode: Some(mode),
            mtime: Some(t(0)),
            expires: None,
        }
    }

    fn json_of(r: &Report) -> serde_json::Value {
        let mut json = Vec::new();
        write_json(r, &mut json).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    /// The report's entry of the secret at `path`.
    fn secret_entry<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
        v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .unwrap()
    }

    fn fixture() -> Snapshot {
        let mut s = Snapshot::new(t(0));
        for (name, mode) in [("a", 0o600), ("b", 0o644)] {
            s.observe_secret(secret(name, mode, &format!("hmac-sha256:{name}")), t(0));
        }
        for who in ["systemd:app.service", "user:ana:/usr/bin/cat"] {
            s.observe(&Observation::Read {
                at: t(10),
                secret_id: "sec-a".into(),
                who: Seen::named(who, "systemd"),
                pid: 3,
                uid: 0,
                count: 2,
                denied: false,
                mode: OpenMode::Read,
            });
        }
        s
    }

    #[test]
    fn text_and_json_show_readers_and_findings_worst_first() {
        let settings = FindingsConfig::default().settings().unwrap();
        let r = assemble(&fixture(), &settings, t(20), Path::new("/state/ledger.db"));
        let mut text = Vec::new();
        write_text(&r, &mut text, false).unwrap();
        let text = String::from_utf8(text).unwrap();
        for want in [
            "shared_secret",
            "weak_permissions",
            "/srv/a",
            "/srv/b",
            "systemd:app.service read ×2, last",
            "HIGH",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(
            !text.contains('\u{1b}'),
            "no colours off a terminal:\n{text}"
        );
        // Weak permissions (high) come before sharing (medium).
        assert!(text.find("weak_permissions").unwrap() < text.find("shared_secret").unwrap());

        let mut json = Vec::new();
        write_json(&r, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["secrets"][0]["path"], "/srv/b", "worst first");
        assert_eq!(v["secrets"][0]["mode"], "0644");
        let a = &v["secrets"][1];
        assert_eq!(a["readers"].as_array().unwrap().len(), 2);
        assert_eq!(a["fingerprints"][0]["fingerprint"], "hmac-sha256:a");
        assert_eq!(a["findings"][0]["type"], "shared_secret");
        let id = &a["findings"][0]["id"];
        let full = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == *id)
            .unwrap();
        assert_eq!(full["owasp"][0], "NHI9");
        assert!(
            full["recommendation"]
                .as_str()
                .unwrap()
                .contains("own credential")
        );
    }

    /// One value under two fingerprint keys: the earlier key's span first,
    /// whatever the order of the fingerprints' text.
    #[test]
    fn the_earlier_keys_fingerprint_is_listed_first() {
        let mut s = fixture();
        s.key_changed = Some(t(20));
        s.observe_secret(secret("a", 0o600, "hmac-sha256:0-sorts-first"), t(20));
        let settings = FindingsConfig::default().settings().unwrap();
        let r = assemble(&s, &settings, t(30), Path::new("/state/ledger.db"));
        let v = json_of(&r);
        let spans = secret_entry(&v, "/srv/a")["fingerprints"]
            .as_array()
            .unwrap();
        assert_eq!(spans.len(), 2, "{spans:#?}");
        assert_eq!(spans[0]["first_seen"], spans[1]["first_seen"]);
        assert_eq!(spans[0]["fingerprint"], "hmac-sha256:a");
        assert_eq!(spans[0]["earlier_key"], true);
        assert_eq!(spans[1]["fingerprint"], "hmac-sha256:0-sorts-first");
    }

    #[test]
    fn hostile_names_are_escaped_in_text() {
        let hostile_path = "/srv/evil\u{1b}[2J\nHIGH weak_permissions /etc/shadow\r";
        let hostile_id = "user:root:/tmp/\u{1b}]0;pwned\u{7}cat";
        let mut s = Snapshot::new(t(0));
        s.observe_secret(
            SecretFacts {
                id: "sec-evil".into(),
                path: hostile_path.into(),
                secret_type: "generic".into(),
                fingerprint: Some("hmac-sha256:e".into()),
                lifetime: Some("static".into()),
                hint: None,
                uid: Some(0),
                gid: Some(0),
                mode: Some(0o644),
                mtime: Some(t(0)),
                expires: None,
            },
            t(0),
        );
        for who in [hostile_id, "systemd:app.service"] {
            s.observe(&Observation::Read {
                at: t(10),
                secret_id: "sec-evil".into(),
                who: Seen {
                    exe: Some("/tmp/\u{1b}[31mred".into()),
                    ..Seen::named(who, "user")
                },
                pid: 3,
                uid: 0,
                count: 1,
                denied: false,
                mode: OpenMode::Read,
            });
        }
        s.observe(&Observation::Exposure {
            at: t(11),
            kind: ExposureKind::Env,
            subject: "EVIL\u{1b}[8m_TOKEN".into(),
            detail: None,
            who: Seen::named(hostile_id, "user"),
            pid: 4,
        });
        let settings = FindingsConfig::default().settings().unwrap();
        let r = assemble(&s, &settings, t(20), Path::new("/state/\u{1b}[1mledger.db"));
        for terminal in [false, true] {
            let mut text = Vec::new();
            write_text(&r, &mut text, terminal).unwrap();
            let text = String::from_utf8(text).unwrap();
            // Colours are the table's own; none of the names' escapes.
            let raw = text.replace("\u{1b}[38;5;", "").replace("\u{1b}[39m", "");
            for bad in [
                "\u{1b}[2J",
                "\u{1b}]0;",
                "\u{1b}[1m",
                "\u{1b}[8m",
                "\u{7}",
                "\r",
            ] {
                assert!(!raw.contains(bad), "{bad:?} printed raw:\n{text}");
            }
            assert!(text.contains("/srv/evil\\x1b[2J\\nHIGH"), "{text}");
            assert!(
                text.contains("user:root:/tmp/\\x1b]0;pwned\\x07cat"),
                "{text}"
            );
            assert!(text.contains("EVIL\\x1b[8m_TOKEN"), "{text}");
            assert!(
                !text
                    .lines()
                    .any(|l| l.trim_start().starts_with("HIGH weak_permissions /etc")),
                "a forged row:\n{text}"
            );
        }
        // JSON keeps the names as they are, escaped by JSON itself.
        let mut json = Vec::new();
        write_json(&r, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["secrets"][0]["path"], hostile_path);
    }

    /// Writers, unwatched secrets and a fingerprint key change, as the
    /// report says them.
    #[test]
    fn writers_unwatched_secrets_and_key_changes_are_said() {
        let mut s = fixture();
        s.observe(&Observation::Read {
            at: t(11),
            secret_id: "sec-a".into(),
            who: Seen::named("user:root:/usr/bin/touch", "user"),
            pid: 4,
            uid: 0,
            count: 1,
            denied: false,
            mode: OpenMode::Write,
        });
        s.unwatch_secret("sec-b", t(12));
        s.key_changed = Some(t(5));
        let settings = FindingsConfig::default().settings().unwrap();
        let r = assemble(&s, &settings, t(20), Path::new("/state/ledger.db"));
        let mut text = Vec::new();
        write_text(&r, &mut text, false).unwrap();
        let text = String::from_utf8(text).unwrap();
        for want in [
            "user:root:/usr/bin/touch wrote ×1, last",
            "/srv/b",
            "(not watched since",
            "the fingerprint key changed at",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        let v = json_of(&r);
        assert!(v["fingerprint_key_changed"].is_string());
        let a = secret_entry(&v, "/srv/a");
        assert_eq!(a["fingerprints"][0]["earlier_key"], true);
        let touch = a["readers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["identity"] == "user:root:/usr/bin/touch")
            .unwrap();
        assert_eq!(
            (touch["reads"].as_u64(), touch["writes"].as_u64()),
            (Some(0), Some(1))
        );
        // The writer is no sharer: still the two readers' finding alone.
        let shared: Vec<_> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == "shared_secret")
            .collect();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0]["identities"].as_array().unwrap().len(), 2);
        let b = v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == "/srv/b")
            .unwrap();
        assert!(b["unwatched"].is_string() && b["removed"].is_null());
        assert_eq!(b["findings"][0]["type"], "weak_permissions");
    }
}
