//! The rules: pure functions of a ledger snapshot, the settings and `now`.
//! The same functions serve the agent (as events arrive and on its timer)
//! and `report`.
//!
//! Windows include their boundary: a read exactly `orphan_window` ago is
//! within it, an age of exactly `max_age` is not over it.
//!
//! A reader is an identity with at least one successful open that could
//! read: refused opens and opens for writing only (a `touch`) are not
//! reads. A read by an `unknown` identity is a read (the secret is in
//! use), but it takes no part in the rules about who reads.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::{
    Evidence, Finding, FindingIdentity, FindingSecret, FindingType, Settings, Severity, rfc3339,
};
use crate::{
    durations::human_duration,
    identity::UNKNOWN,
    ledger::{AccessRow, ExposureKind, SecretRow, Snapshot},
    watch_map::Overflow,
};

/// Which rules to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Those that events make true: sharing, human use, unexpected
    /// readers, and secrets in environments and on command lines.
    Events,
    All,
}

/// Every finding that holds now, sorted by severity (worst first), then
/// type and subject.
pub fn evaluate(
    s: &Snapshot,
    settings: &Settings,
    now: DateTime<Utc>,
    scope: Scope,
) -> Vec<Finding> {
    let mut out = Vec::new();
    shared_secret(s, &mut out);
    human_use(s, &mut out);
    exposures(s, settings, &mut out);
    unexpected_reader(s, settings, &mut out);
    if scope == Scope::All {
        orphaned_secret(s, settings, now, &mut out);
        duplicated_secret(s, &mut out);
        long_lived_secret(s, settings, now, &mut out);
        weak_permissions(s, &mut out);
        static_despite_federation(s, &mut out);
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.finding_type.cmp(&b.finding_type))
            .then_with(|| a.secret.path.cmp(&b.secret.path))
            .then_with(|| a.subject.cmp(&b.subject))
    });
    out
}

/// One `watch_overflow` finding per directory the kernel's watch map had no
/// room for. Not a rule over the snapshot: the agent raises these as the
/// overflow changes, and `report` from what the ledger kept of it.
pub fn watch_overflow(overflow: &Overflow) -> Vec<Finding> {
    let total = overflow.watched + overflow.unwatched;
    overflow
        .dirs
        .iter()
        .map(|d| {
            let subject = format!("dir:{}", d.dir);
            Finding::new(
                FindingType::WatchOverflow,
                subject.clone(),
                "",
                FindingSecret {
                    id: subject,
                    path: Some(d.dir.clone()),
                    secret_type: "directory".into(),
                    ..FindingSecret::default()
                },
                Vec::new(),
                Evidence {
                    count: d.unwatched,
                    reason: format!(
                        "{} secret files here are not watched: {total} were found and \
                         [capture] max_watched is {}",
                        d.unwatched, overflow.max_watched
                    ),
                    ..Evidence::default()
                },
                format!(
                    "find out who made {} secret files in {} (a user can make them to \
                     blind secretmon); if they are real, raise [capture] max_watched \
                     above {total}",
                    d.unwatched, d.dir
                ),
            )
        })
        .collect()
}

fn live_secrets(s: &Snapshot) -> impl Iterator<Item = &SecretRow> {
    s.secrets.values().filter(|r| r.removed.is_none())
}

/// Identities that read secret `id`: at least one open that could read
/// succeeded.
fn readers<'a>(s: &'a Snapshot, id: &str) -> Vec<(&'a str, &'a AccessRow)> {
    s.accesses
        .range((id.to_string(), String::new())..)
        .take_while(|((secret, _), _)| secret == id)
        .filter(|(_, a)| a.read())
        .map(|((_, identity), a)| (identity.as_str(), a))
        .collect()
}

/// Readers whose identity is known: the rules about who reads.
fn known_readers<'a>(s: &'a Snapshot, id: &str) -> Vec<(&'a str, &'a AccessRow)> {
    let mut r = readers(s, id);
    r.retain(|(who, _)| *who != UNKNOWN);
    r
}

/// Who stands behind a read, for the sharing rule. A person's own tools
/// (`user:ana:/usr/bin/cat`, `user:ana:/usr/bin/less`) are one principal,
/// the person `user:ana`: a user identity whose every read came from a
/// human session. Any other identity is a workload of its own (a cron
/// script and a daemon of one uid are two consumers of the credential).
/// The fleet's sharing rule asks the same of its readers.
pub fn principal(who: &str, kind: &str, reads: u64, human: u64) -> String {
    match who.strip_prefix("user:").and_then(|r| r.split_once(':')) {
        // A user name holds no `:` (it is the passwd file's separator).
        Some((name, _)) if kind == "user" && human == reads => format!("user:{name}"),
        _ => who.to_string(),
    }
}

/// Principals by name; a person by the programs they used too.
pub fn principal_names(principals: &BTreeMap<String, BTreeSet<&str>>) -> Vec<String> {
    principals
        .iter()
        .map(|(p, behind)| {
            if behind.len() == 1 && behind.contains(p.as_str()) {
                return p.clone();
            }
            let programs: Vec<&str> = behind
                .iter()
                .map(|who| who.splitn(3, ':').nth(2).unwrap_or(who))
                .collect();
            format!("{p} (by hand: {})", programs.join(", "))
        })
        .collect()
}

fn identity(s: &Snapshot, id: &str) -> FindingIdentity {
    match s.identities.get(id) {
        Some(i) => FindingIdentity {
            id: i.id.clone(),
            kind: i.kind.clone(),
            spiffe_id: i.spiffe_id.clone(),
            gone: i.gone_since.is_some(),
        },
        None => FindingIdentity {
            id: id.to_string(),
            kind: String::new(),
            spiffe_id: String::new(),
            gone: false,
        },
    }
}

fn identities<'a>(s: &Snapshot, ids: impl IntoIterator<Item = &'a str>) -> Vec<FindingIdentity> {
    let ids: BTreeSet<&str> = ids.into_iter().collect();
    ids.into_iter().map(|i| identity(s, i)).collect()
}

fn secret(r: &SecretRow) -> FindingSecret {
    FindingSecret {
        id: r.facts.id.clone(),
        path: Some(r.facts.path.clone()),
        secret_type: r.facts.secret_type.clone(),
        hint: r.facts.hint.clone(),
        fingerprint: r.facts.fingerprint.clone(),
        ..FindingSecret::default()
    }
}

/// Count and first/last seen of some reads.
fn evidence<'a>(reads: impl IntoIterator<Item = &'a AccessRow>, reason: String) -> Evidence {
    let mut e = Evidence {
        reason,
        ..Evidence::default()
    };
    let mut first: Option<DateTime<Utc>> = None;
    let mut last: Option<DateTime<Utc>> = None;
    for a in reads {
        e.count += a.reads;
        first = Some(first.map_or(a.first_seen, |f| f.min(a.first_seen)));
        last = Some(last.map_or(a.last_seen, |l| l.max(a.last_seen)));
    }
    e.first_seen = first.map(rfc3339);
    e.last_seen = last.map(rfc3339);
    e
}

fn list(ids: &[FindingIdentity]) -> String {
    ids.iter()
        .map(|i| i.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Live secrets with one value: by fingerprint, or alone when it has none.
fn by_value(s: &Snapshot) -> BTreeMap<String, Vec<&SecretRow>> {
    let mut groups: BTreeMap<String, Vec<&SecretRow>> = BTreeMap::new();
    for r in live_secrets(s) {
        let key = r
            .facts
            .fingerprint
            .clone()
            .unwrap_or_else(|| r.facts.id.clone());
        groups.entry(key).or_default().push(r);
    }
    for g in groups.values_mut() {
        g.sort_by(|a, b| a.facts.path.cmp(&b.facts.path));
    }
    groups
}

/// One value read by two or more principals, at one path or several.
fn shared_secret(s: &Snapshot, out: &mut Vec<Finding>) {
    for (value, group) in by_value(s) {
        let reads: Vec<(&str, &AccessRow)> = group
            .iter()
            .flat_map(|r| known_readers(s, &r.facts.id))
            .collect();
        // Principal → the identities behind it.
        let mut principals: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for (who, a) in &reads {
            let kind = s.identities.get(*who).map_or("", |i| i.kind.as_str());
            principals
                .entry(principal(who, kind, a.reads, a.human))
                .or_default()
                .insert(who);
        }
        if principals.len() < 2 {
            continue;
        }
        let named = principal_names(&principals);
        let first = group[0];
        let paths: Vec<String> = group.iter().map(|r| r.facts.path.clone()).collect();
        let reason = format!(
            "{} identities read the same value: {}",
            principals.len(),
            named.join(", ")
        );
        let mut ev = evidence(reads.iter().map(|(_, a)| *a), reason);
        if paths.len() > 1 {
            ev.paths = paths;
        }
        let rec = format!(
            "give each of {} its own credential, ideally a workload identity, instead of sharing {}",
            principals.keys().cloned().collect::<Vec<_>>().join(", "),
            first.facts.path
        );
        // A person's next program is not a new sharing: the finding is
        // keyed by principals, and lists every identity behind them.
        let keyed = principals
            .keys()
            .map(|p| FindingIdentity {
                id: p.clone(),
                kind: String::new(),
                spiffe_id: String::new(),
                gone: false,
            })
            .collect();
        let ids = identities(s, reads.iter().map(|(i, _)| *i));
        out.push(
            Finding::new(
                FindingType::SharedSecret,
                value,
                "",
                secret(first),
                keyed,
                ev,
                rec,
            )
            .listing(ids),
        );
    }
}

/// One value at two or more paths.
fn duplicated_secret(s: &Snapshot, out: &mut Vec<Finding>) {
    for (value, group) in by_value(s) {
        if group.len() < 2 || group[0].facts.fingerprint.is_none() {
            continue;
        }
        let reads: Vec<(&str, &AccessRow)> =
            group.iter().flat_map(|r| readers(s, &r.facts.id)).collect();
        let paths: Vec<String> = group.iter().map(|r| r.facts.path.clone()).collect();
        let mut ev = evidence(
            reads.iter().map(|(_, a)| *a),
            format!("the same value is stored at {} paths", paths.len()),
        );
        let rec = format!(
            "keep one copy ({}) and delete the other {}, or issue each consumer its own credential",
            paths[0],
            paths.len() - 1
        );
        let state = paths.join("\n");
        ev.paths = paths;
        out.push(Finding::new(
            FindingType::DuplicatedSecret,
            value,
            &state,
            secret(group[0]),
            identities(s, reads.iter().map(|(i, _)| *i)),
            ev,
            rec,
        ));
    }
}

/// Nobody read it in the window, or everybody who did is gone. Silent
/// until the ledger has watched the secret for a whole window.
fn orphaned_secret(s: &Snapshot, settings: &Settings, now: DateTime<Utc>, out: &mut Vec<Finding>) {
    let window = settings.orphan_window;
    let since = crate::bounded::before(now, window);
    for r in live_secrets(s) {
        // Not watched now: nobody can vouch that it was not read.
        if r.unwatched.is_some() {
            continue;
        }
        let watched_from = s.created.max(r.first_seen);
        if watched_from > since {
            continue;
        }
        let reads = readers(s, &r.facts.id);
        let recent: Vec<_> = reads.iter().filter(|(_, a)| a.last_seen >= since).collect();
        let ids = identities(s, reads.iter().map(|(i, _)| *i));
        let reason = if recent.is_empty() {
            match reads.iter().map(|(_, a)| a.last_seen).max() {
                Some(last) => format!(
                    "no read in the last {}; last read {} ago",
                    human_duration(window),
                    human_duration((now - last).to_std().unwrap_or_default())
                ),
                None => format!(
                    "never read since secretmon began watching it {} ago",
                    human_duration((now - watched_from).to_std().unwrap_or_default())
                ),
            }
        } else if recent.iter().all(|(i, _)| identity(s, i).gone) {
            format!("every identity that read it is gone: {}", list(&ids))
        } else {
            continue;
        };
        let rec = format!(
            "revoke {} once its owner confirms nothing needs it; then delete the file",
            r.facts.path
        );
        out.push(Finding::new(
            FindingType::OrphanedSecret,
            r.facts.id.clone(),
            "",
            secret(r),
            ids,
            evidence(reads.iter().map(|(_, a)| *a), reason),
            rec,
        ));
    }
}

/// Static, in use in the window, and unrotated for longer than `max_age`
/// (or valid for longer than that).
fn long_lived_secret(
    s: &Snapshot,
    settings: &Settings,
    now: DateTime<Utc>,
    out: &mut Vec<Finding>,
) {
    let Ok(max_age) = chrono::Duration::from_std(settings.max_age) else {
        return;
    };
    let since = crate::bounded::before(now, settings.orphan_window);
    for r in live_secrets(s) {
        if r.facts.lifetime.as_deref() != Some("static") {
            continue;
        }
        let reads = readers(s, &r.facts.id);
        if !reads.iter().any(|(_, a)| a.last_seen >= since) {
            continue;
        }
        // The value's age: since the file last changed, or since the
        // ledger first saw this value, whichever is older (a `touch` does
        // not rotate).
        let value_seen = r
            .facts
            .fingerprint
            .as_ref()
            .and_then(|fp| s.fingerprints.get(&(r.facts.id.clone(), fp.clone())))
            .map_or(r.first_seen, |span| span.first_seen);
        let rotated = r.facts.mtime.map_or(value_seen, |m| m.min(value_seen));
        let age = now - rotated;
        let validity = r.facts.expires.map(|e| e - rotated);
        let reason = if age > max_age {
            format!(
                "static and unrotated for {} (over {}); {}",
                human_duration(age.to_std().unwrap_or_default()),
                human_duration(settings.max_age),
                match r.facts.expires {
                    Some(e) => format!("expires {}", rfc3339(e)),
                    None => "no expiry".into(),
                }
            )
        } else if let Some(v) = validity.filter(|v| *v > max_age) {
            format!(
                "static and valid for {} (over {})",
                human_duration(v.to_std().unwrap_or_default()),
                human_duration(settings.max_age)
            )
        } else {
            continue;
        };
        let ids = identities(s, reads.iter().map(|(i, _)| *i));
        let rec = format!(
            "rotate {} now, then move {} to short-lived credentials (a projected token, Vault dynamic secrets or OIDC federation)",
            r.facts.path,
            list(&ids)
        );
        out.push(Finding::new(
            FindingType::LongLivedSecret,
            r.facts.id.clone(),
            "",
            secret(r),
            ids,
            evidence(reads.iter().map(|(_, a)| *a), reason),
            rec,
        ));
    }
}

/// Read from a terminal, a login session, or under sshd/su/sudo.
fn human_use(s: &Snapshot, out: &mut Vec<Finding>) {
    for r in live_secrets(s) {
        let human: Vec<(&str, &AccessRow)> = s
            .accesses
            .range((r.facts.id.clone(), String::new())..)
            .take_while(|((secret, _), _)| *secret == r.facts.id)
            .filter(|(_, a)| a.human > 0)
            .map(|((_, i), a)| (i.as_str(), a))
            .collect();
        if human.is_empty() {
            continue;
        }
        let ids = identities(s, human.iter().map(|(i, _)| *i));
        let count: u64 = human.iter().map(|(_, a)| a.human).sum();
        let mut ev = evidence(
            human.iter().map(|(_, a)| *a),
            format!(
                "opened {count} times from a human session by {}",
                list(&ids)
            ),
        );
        ev.count = count;
        let rec = format!(
            "people should use their own short-lived credentials (SSO, OIDC), not {}; rotate it if it was copied",
            r.facts.path
        );
        out.push(Finding::new(
            FindingType::HumanUse,
            r.facts.id.clone(),
            "",
            secret(r),
            ids,
            ev,
            rec,
        ));
    }
}

/// Secrets seen outside files: variables, command lines, environ reads.
fn exposures(s: &Snapshot, settings: &Settings, out: &mut Vec<Finding>) {
    for ((kind, subject, who), e) in &s.exposures {
        let ids = vec![identity(s, who)];
        let exe = e.last_exe.as_deref().unwrap_or("the process");
        let (finding_type, id, secret, reason, rec) = match kind {
            ExposureKind::Env => {
                if settings.policy().allows(&format!("env:{subject}"), who) == Some(true) {
                    continue;
                }
                (
                    FindingType::SecretInEnv,
                    format!("env:{subject}"),
                    FindingSecret {
                        id: format!("env:{subject}"),
                        secret_type: "env_var".into(),
                        env_name: Some(subject.clone()),
                        ..FindingSecret::default()
                    },
                    format!("{exe} started with {subject} in its environment"),
                    format!(
                        "deliver {subject} to {who} as a file from a secret store or use a workload identity; environments are inherited by children and readable in /proc"
                    ),
                )
            }
            ExposureKind::Argv => (
                FindingType::SecretInArgv,
                format!("argv:{subject}"),
                FindingSecret {
                    id: format!("argv:{subject}"),
                    secret_type: subject.clone(),
                    redacted: e.detail.clone(),
                    ..FindingSecret::default()
                },
                format!("{exe} ran with a {subject} on its command line"),
                format!(
                    "rotate that {subject}: every user of the host can read command lines; pass it to {exe} in a file or on stdin"
                ),
            ),
            ExposureKind::Environ => (
                FindingType::EnvironRead,
                format!("environ:{subject}"),
                FindingSecret {
                    id: format!("environ:{subject}"),
                    secret_type: "environ".into(),
                    ..FindingSecret::default()
                },
                format!("{exe} read the environment of {subject}"),
                format!(
                    "find out why {who} reads other processes' environments; keep secrets out of environments"
                ),
            ),
        };
        let ev = Evidence {
            count: e.count,
            first_seen: Some(rfc3339(e.first_seen)),
            last_seen: Some(rfc3339(e.last_seen)),
            reason,
            paths: Vec::new(),
        };
        out.push(Finding::new(finding_type, id, "", secret, ids, ev, rec));
    }
}

/// A reader the policy does not list, or, where no policy rule covers the
/// secret, one first seen after the secret's baseline period.
fn unexpected_reader(s: &Snapshot, settings: &Settings, out: &mut Vec<Finding>) {
    for r in live_secrets(s) {
        let baseline_end = crate::bounded::after(s.created.max(r.first_seen), settings.baseline);
        for (who, a) in known_readers(s, &r.facts.id) {
            let reason = match settings.policy().allows(&r.facts.path, who) {
                Some(true) => continue,
                Some(false) => format!("{who} is not on the policy's allow list for this path"),
                None if a.first_seen >= baseline_end => format!(
                    "{who} first read it {}, after the baseline learned until {}",
                    rfc3339(a.first_seen),
                    rfc3339(baseline_end)
                ),
                None => continue,
            };
            let rec = format!(
                "if {who} should read {}, add it to the policy; otherwise find out why it did and rotate the secret",
                r.facts.path
            );
            out.push(Finding::new(
                FindingType::UnexpectedReader,
                r.facts.id.clone(),
                "",
                secret(r),
                vec![identity(s, who)],
                evidence([a], reason),
                rec,
            ));
        }
    }
}

/// Readable or writable by group or others, or owned by another uid than
/// a (non-root) reader's.
fn weak_permissions(s: &Snapshot, out: &mut Vec<Finding>) {
    for r in live_secrets(s) {
        let Some(mode) = r.facts.mode else { continue };
        let reads = readers(s, &r.facts.id);
        let mut problems = Vec::new();
        let mut severity = Severity::Medium;
        if mode & 0o004 != 0 {
            problems.push(format!("readable by every user (mode {mode:04o})"));
            severity = Severity::High;
        } else if mode & 0o040 != 0 {
            problems.push(format!("readable by its group (mode {mode:04o})"));
        }
        if mode & 0o022 != 0 {
            problems.push(format!("writable by group or others (mode {mode:04o})"));
            severity = Severity::High;
        }
        let mut foreign = BTreeSet::new();
        if let Some(owner) = r.facts.uid {
            foreign.extend(
                reads
                    .iter()
                    .map(|(_, a)| a.last_uid)
                    .filter(|uid| *uid != 0 && *uid != owner),
            );
            if !foreign.is_empty() {
                problems.push(format!(
                    "owned by uid {owner} but read by uid {}",
                    foreign
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if problems.is_empty() {
            continue;
        }
        let owner = match foreign.first() {
            Some(uid) => format!("uid {uid}, its reader"),
            None => "the uid that reads it".into(),
        };
        let rec = format!("chmod 600 {} and chown it to {owner}", r.facts.path);
        let state = format!("{mode:o} {:?} {foreign:?}", r.facts.uid);
        let mut f = Finding::new(
            FindingType::WeakPermissions,
            r.facts.id.clone(),
            &state,
            secret(r),
            identities(s, reads.iter().map(|(i, _)| *i)),
            evidence(reads.iter().map(|(_, a)| *a), problems.join("; ")),
            rec,
        );
        f.severity = severity;
        out.push(f);
    }
}

/// A credential that comes from federation: a projected service-account
/// token, a SPIFFE SVID, a cloud web-identity token.
fn federated(r: &SecretRow) -> bool {
    let path = r.facts.path.as_str();
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(
        r.facts.secret_type.as_str(),
        "k8s_sa_token" | "spiffe_svid" | "web_identity_token"
    ) || name.contains("svid")
        || path.contains("/eks.amazonaws.com/serviceaccount/")
        || path.contains("web-identity")
        || path.contains("web_identity")
}

/// An identity that reads a static secret although it already has a
/// federated credential.
fn static_despite_federation(s: &Snapshot, out: &mut Vec<Finding>) {
    let mut federated_by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for ((secret_id, who), a) in &s.accesses {
        if let Some(r) = s.secrets.get(secret_id)
            && a.read()
            && who != UNKNOWN
            && federated(r)
        {
            federated_by.entry(who).or_default().push(&r.facts.path);
        }
    }
    for ((secret_id, who), a) in &s.accesses {
        let Some(fed) = federated_by.get(who.as_str()) else {
            continue;
        };
        let Some(r) = s.secrets.get(secret_id) else {
            continue;
        };
        if r.removed.is_some()
            || !a.read()
            || federated(r)
            || r.facts.lifetime.as_deref() != Some("static")
        {
            continue;
        }
        let mut ev = evidence(
            [a],
            format!(
                "{who} reads this static secret and also the federated credential {}",
                fed.join(", ")
            ),
        );
        ev.paths = fed.iter().map(|p| p.to_string()).collect();
        let rec = format!(
            "{who} already has a federated credential ({}): grant it what {} grants and revoke the static secret",
            fed[0], r.facts.path
        );
        out.push(Finding::new(
            FindingType::StaticDespiteFederation,
            r.facts.id.clone(),
            "",
            secret(r),
            vec![identity(s, who)],
            ev,
            rec,
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        findings::policy::PolicyRule,
        ledger::{ExposureRow, Observation, OpenMode, SecretFacts, Seen},
        watch_map::OverflowDir,
    };

    const DAY: i64 = 86_400;

    /// The ledger began at t=0; times are seconds from it.
    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn settings() -> Settings {
        Settings::new(
            Duration::from_secs(30 * DAY as u64),
            Duration::from_secs(90 * DAY as u64),
            Duration::from_secs(DAY as u64),
            Vec::new(),
        )
        .unwrap()
    }

    fn facts(name: &str, fp: &str) -> SecretFacts {
        SecretFacts {
            id: format!("sec-{name}"),
            path: format!("/srv/{name}"),
            secret_type: "generic".into(),
            fingerprint: Some(format!("hmac-sha256:{fp}")),
            lifetime: Some("static".into()),
            hint: None,
            uid: Some(0),
            gid: Some(0),
            mode: Some(0o600),
            mtime: Some(t(0)),
            expires: None,
        }
    }

    fn who(id: &str) -> Seen {
        Seen {
            id: id.into(),
            kind: "systemd".into(),
            spiffe_id: format!("spiffe://td/{id}"),
            unit: None,
            user_manager: false,
            cgroup_id: 1,
            exe: Some("/usr/bin/app".into()),
            human: false,
        }
    }

    struct Fixture(Snapshot);

    impl Fixture {
        fn new() -> Self {
            Self(Snapshot::new(t(0)))
        }
        fn secret(mut self, f: SecretFacts) -> Self {
            self.0.observe_secret(f, t(0));
            self
        }
        fn read_as(self, secs: i64, name: &str, w: Seen) -> Self {
            self.open(secs, name, w, OpenMode::Read, false)
        }
        fn open(mut self, secs: i64, name: &str, w: Seen, mode: OpenMode, denied: bool) -> Self {
            self.0.observe(&Observation::Read {
                at: t(secs),
                secret_id: format!("sec-{name}"),
                who: w,
                pid: 10,
                uid: 0,
                count: 1,
                denied,
                mode,
            });
            self
        }
        fn found(&self, now: i64, ty: FindingType) -> Vec<Finding> {
            evaluate(&self.0, &settings(), t(now), Scope::All)
                .into_iter()
                .filter(|f| f.finding_type == ty)
                .collect()
        }
        fn read(self, secs: i64, name: &str, id: &str) -> Self {
            self.read_as(secs, name, who(id))
        }
        fn types_at(&self, now: i64, settings: &Settings) -> Vec<(FindingType, String)> {
            evaluate(&self.0, settings, t(now), Scope::All)
                .into_iter()
                .map(|f| (f.finding_type, f.subject))
                .collect()
        }
        fn has(&self, now: i64, ty: FindingType) -> bool {
            self.types_at(now, &settings())
                .iter()
                .any(|(t, _)| *t == ty)
        }
    }

    #[test]
    fn orphaned_at_the_window_boundary() {
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read(10, "a", "systemd:app.service");
        let w = 30 * DAY;
        // Read exactly a window ago: still within it.
        assert!(!f.has(10 + w, FindingType::OrphanedSecret));
        assert!(!f.has(10 + w - 1, FindingType::OrphanedSecret));
        assert!(f.has(10 + w + 1, FindingType::OrphanedSecret));
    }

    #[test]
    fn never_read_is_orphaned_only_after_a_whole_window_of_watching() {
        let f = Fixture::new().secret(facts("a", "01"));
        let w = 30 * DAY;
        assert!(!f.has(w - 1, FindingType::OrphanedSecret));
        assert!(f.has(w, FindingType::OrphanedSecret));
        let found = evaluate(&f.0, &settings(), t(w), Scope::All);
        assert!(
            found[0].evidence.reason.starts_with("never read"),
            "{found:?}"
        );
        assert!(found[0].identities.is_empty());
        // Events alone never run the clock rules.
        assert!(evaluate(&f.0, &settings(), t(w), Scope::Events).is_empty());
    }

    #[test]
    fn orphaned_when_every_reader_is_gone() {
        let mut f = Fixture::new()
            .secret(facts("a", "01"))
            .read(10, "a", "systemd:old.service")
            .read(20, "a", "systemd:older.service");
        let now = 31 * DAY;
        let f2 = Fixture(f.0.clone()).read(now - 5, "a", "systemd:old.service");
        assert!(!f2.has(now, FindingType::OrphanedSecret));
        f = f2;
        f.0.identity_gone("systemd:old.service", t(now - 1));
        // The other reader is gone too, but read outside the window: only
        // the readers in the window count.
        assert!(f.has(now, FindingType::OrphanedSecret));
        let found = evaluate(&f.0, &settings(), t(now), Scope::All);
        let o = found
            .iter()
            .find(|x| x.finding_type == FindingType::OrphanedSecret)
            .unwrap();
        assert!(o.evidence.reason.contains("gone"), "{o:?}");
        assert!(o.identities.iter().any(|i| i.gone));
        // Seen again: no longer gone.
        let f = f.read(now, "a", "systemd:old.service");
        assert!(!f.has(now, FindingType::OrphanedSecret));
    }

    #[test]
    fn removed_secrets_are_never_orphaned() {
        let mut f = Fixture::new().secret(facts("a", "01"));
        f.0.remove_secret("sec-a", t(5));
        assert!(f.types_at(100 * DAY, &settings()).is_empty());
    }

    #[test]
    fn shared_by_two_identities_at_one_or_two_paths() {
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read(1, "a", "systemd:app.service")
            .read(2, "a", "systemd:app.service");
        assert!(!f.has(3, FindingType::SharedSecret));
        let f = f.read(3, "a", "user:ana:/usr/bin/cat");
        let found = evaluate(&f.0, &settings(), t(4), Scope::Events);
        let s = found
            .iter()
            .find(|x| x.finding_type == FindingType::SharedSecret)
            .unwrap();
        assert_eq!(s.identities.len(), 2);
        assert_eq!(s.evidence.count, 3);
        assert_eq!(s.owasp, ["NHI9"]);
        // A copy of the same value read by a third is the same sharing.
        let f = f
            .secret(facts("copy", "01"))
            .read(5, "copy", "container:docker:abc");
        let found = evaluate(&f.0, &settings(), t(6), Scope::All);
        let s = found
            .iter()
            .find(|x| x.finding_type == FindingType::SharedSecret)
            .unwrap();
        assert_eq!(s.identities.len(), 3);
        assert_eq!(s.evidence.paths, ["/srv/a", "/srv/copy"]);
    }

    #[test]
    fn denied_opens_are_not_reads() {
        let mut f = Fixture::new()
            .secret(facts("a", "01"))
            .read(1, "a", "systemd:app.service");
        f.0.observe(&Observation::Read {
            at: t(2),
            secret_id: "sec-a".into(),
            who: who("user:eve:/usr/bin/cat"),
            pid: 11,
            uid: 1000,
            count: 4,
            denied: true,
            mode: OpenMode::Read,
        });
        assert!(!f.has(3, FindingType::SharedSecret));
    }

    #[test]
    fn duplicated_needs_fingerprints() {
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .secret(facts("b", "01"));
        assert!(f.has(1, FindingType::DuplicatedSecret));
        let mut no_fp = facts("c", "");
        no_fp.fingerprint = None;
        let mut no_fp2 = facts("d", "");
        no_fp2.fingerprint = None;
        let f = Fixture::new().secret(no_fp).secret(no_fp2);
        assert!(!f.has(1, FindingType::DuplicatedSecret));
    }

    #[test]
    fn long_lived_at_the_age_boundary_and_only_in_use() {
        let max = 90 * DAY;
        let f = Fixture::new().secret(facts("a", "01"));
        // Not in use: not long-lived (but orphaned).
        assert!(!f.has(max + 1, FindingType::LongLivedSecret));
        let f = f.read(max - 5, "a", "systemd:app.service");
        assert!(!f.has(max, FindingType::LongLivedSecret));
        assert!(f.has(max + 1, FindingType::LongLivedSecret));
        // A dynamic secret is never long-lived.
        let mut dynamic = facts("b", "02");
        dynamic.lifetime = Some("dynamic".into());
        let f = Fixture::new()
            .secret(dynamic)
            .read(max, "b", "systemd:app.service");
        assert!(!f.has(max + DAY, FindingType::LongLivedSecret));
    }

    #[test]
    fn long_lived_by_an_old_mtime_or_a_long_validity() {
        let mut old = facts("a", "01");
        old.mtime = Some(t(-200 * DAY));
        let f = Fixture::new()
            .secret(old)
            .read(5, "a", "systemd:app.service");
        assert!(f.has(10, FindingType::LongLivedSecret));
        let mut valid = facts("b", "02");
        valid.expires = Some(t(365 * DAY));
        let f = Fixture::new()
            .secret(valid)
            .read(5, "b", "systemd:app.service");
        let found = evaluate(&f.0, &settings(), t(10), Scope::All);
        let l = found
            .iter()
            .find(|x| x.finding_type == FindingType::LongLivedSecret)
            .unwrap();
        assert!(l.evidence.reason.contains("valid for"), "{l:?}");
    }

    #[test]
    fn human_use_from_a_terminal() {
        let mut person = who("user:root:/usr/bin/cat");
        person.human = true;
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read(1, "a", "systemd:app.service");
        assert!(!f.has(2, FindingType::HumanUse));
        let f = f.read_as(2, "a", person);
        let found = evaluate(&f.0, &settings(), t(3), Scope::Events);
        let h = found
            .iter()
            .find(|x| x.finding_type == FindingType::HumanUse)
            .unwrap();
        assert_eq!(h.identities[0].id, "user:root:/usr/bin/cat");
        assert_eq!(h.evidence.count, 1);
        assert_eq!(h.owasp, ["NHI10"]);
    }

    fn person(id: &str) -> Seen {
        Seen {
            kind: "user".into(),
            human: true,
            ..who(id)
        }
    }

    #[test]
    fn a_refused_open_from_a_terminal_is_no_human_use() {
        let f = Fixture::new().secret(facts("a", "01")).open(
            1,
            "a",
            person("user:eve:/usr/bin/cat"),
            OpenMode::Read,
            true,
        );
        assert!(!f.has(2, FindingType::HumanUse));
        assert!(f.found(2, FindingType::UnexpectedReader).is_empty());
    }

    /// `touch` by another identity: a writer, not a second reader.
    #[test]
    fn writers_are_not_readers() {
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read(1, "a", "systemd:app.service")
            .open(
                DAY + 2,
                "a",
                who("user:root:/usr/bin/touch"),
                OpenMode::Write,
                false,
            );
        assert!(!f.has(DAY + 3, FindingType::SharedSecret));
        assert!(!f.has(DAY + 3, FindingType::UnexpectedReader));
        let a = &f.0.accesses[&("sec-a".into(), "user:root:/usr/bin/touch".into())];
        assert_eq!((a.writes, a.reads), (1, 0));
        // One that opens it for reading and writing reads it.
        let f = f.open(
            DAY + 4,
            "a",
            who("user:root:/usr/bin/vi"),
            OpenMode::ReadWrite,
            false,
        );
        assert!(f.has(DAY + 5, FindingType::SharedSecret));
    }

    /// An unknown reader proves the secret is in use, and nothing about who.
    #[test]
    fn unknown_readers_are_use_but_no_identity() {
        let unknown = Seen {
            kind: "unknown".into(),
            ..who(UNKNOWN)
        };
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read(1, "a", "systemd:app.service")
            .read_as(DAY + 1, "a", unknown.clone());
        for ty in [
            FindingType::SharedSecret,
            FindingType::UnexpectedReader,
            FindingType::OrphanedSecret,
        ] {
            assert!(!f.has(DAY + 2, ty), "{ty:?}");
        }
        // Read only by an unknown process: in use, so not orphaned even a
        // window later.
        let f = Fixture::new()
            .secret(facts("b", "02"))
            .read_as(89 * DAY, "b", unknown);
        assert!(!f.has(89 * DAY + 1, FindingType::OrphanedSecret));
        assert!(f.has(90 * DAY + 1, FindingType::LongLivedSecret));
    }

    /// One person's tools are one principal; a person and a workload, or
    /// two workloads of one uid, are two.
    #[test]
    fn a_persons_own_programs_do_not_share_a_secret() {
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read_as(1, "a", person("user:ana:/usr/bin/cat"))
            .read_as(2, "a", person("user:ana:/usr/bin/less"));
        assert!(!f.has(3, FindingType::SharedSecret));
        let f = f.read(4, "a", "systemd:app.service");
        let shared = f.found(5, FindingType::SharedSecret);
        assert_eq!(shared.len(), 1);
        let listed: Vec<&str> = shared[0].identities.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            listed,
            [
                "systemd:app.service",
                "user:ana:/usr/bin/cat",
                "user:ana:/usr/bin/less"
            ]
        );
        assert_eq!(
            shared[0].evidence.reason,
            "2 identities read the same value: systemd:app.service, user:ana (by hand: /usr/bin/cat, /usr/bin/less)"
        );
        // Her next program is the same sharing, not a new finding.
        let g = Fixture(f.0.clone()).read_as(6, "a", person("user:ana:/usr/bin/vim"));
        assert_eq!(g.found(7, FindingType::SharedSecret)[0].id, shared[0].id);
        // A second person is a new one.
        let g = g.read_as(8, "a", person("user:bob:/usr/bin/cat"));
        assert_ne!(g.found(9, FindingType::SharedSecret)[0].id, shared[0].id);
        // Two programs of one uid outside a session: two workloads.
        let f = Fixture::new()
            .secret(facts("b", "02"))
            .read_as(
                1,
                "b",
                Seen {
                    kind: "user".into(),
                    ..who("user:root:/opt/a")
                },
            )
            .read_as(
                2,
                "b",
                Seen {
                    kind: "user".into(),
                    ..who("user:root:/opt/b")
                },
            );
        assert!(f.has(3, FindingType::SharedSecret));
    }

    /// Another run's `--watch` leaves a secret unwatched: what the ledger
    /// knew of it stands, but it cannot be called orphaned.
    #[test]
    fn unwatched_secrets_keep_their_findings_but_are_never_orphaned() {
        let mut loose = facts("a", "01");
        loose.mode = Some(0o644);
        let mut f = Fixture::new().secret(loose);
        f.0.unwatch_secret("sec-a", t(1));
        assert!(f.has(100 * DAY, FindingType::WeakPermissions));
        assert!(!f.has(100 * DAY, FindingType::OrphanedSecret));
    }

    #[test]
    fn unexpected_reader_after_the_baseline() {
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read(5, "a", "systemd:app.service")
            .read(DAY - 1, "a", "systemd:backup.service");
        assert!(!f.has(DAY, FindingType::UnexpectedReader));
        let f = f.read(DAY, "a", "user:eve:/usr/bin/cat");
        let found = evaluate(&f.0, &settings(), t(DAY), Scope::Events);
        let u: Vec<_> = found
            .iter()
            .filter(|x| x.finding_type == FindingType::UnexpectedReader)
            .collect();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].identities[0].id, "user:eve:/usr/bin/cat");
        assert_eq!(u[0].owasp, ["NHI2", "NHI3"]);
        // A secret that appears later learns its own baseline.
        let mut g = Fixture(f.0.clone());
        g.0.observe_secret(facts("late", "09"), t(10 * DAY));
        let g = g.read(10 * DAY + 5, "late", "user:eve:/usr/bin/cat");
        let found = evaluate(&g.0, &settings(), t(10 * DAY + 6), Scope::Events);
        assert!(
            !found
                .iter()
                .any(|x| x.finding_type == FindingType::UnexpectedReader && x.subject == "sec-late")
        );
    }

    #[test]
    fn unexpected_reader_by_policy() {
        let s = Settings::new(
            Duration::from_secs(30 * DAY as u64),
            Duration::from_secs(90 * DAY as u64),
            Duration::from_secs(DAY as u64),
            vec![PolicyRule {
                glob: "/srv/*".into(),
                allow: vec!["systemd:app.service".into()],
            }],
        )
        .unwrap();
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .read(1, "a", "systemd:app.service")
            .read(2, "a", "user:ana:/usr/bin/cat");
        let found: Vec<_> = f
            .types_at(3, &s)
            .into_iter()
            .filter(|(t, _)| *t == FindingType::UnexpectedReader)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "within the baseline, the policy still rules"
        );
    }

    #[test]
    fn weak_permissions_by_mode_and_owner() {
        let mut loose = facts("a", "01");
        loose.mode = Some(0o644);
        let f = Fixture::new().secret(loose);
        let found = evaluate(&f.0, &settings(), t(1), Scope::All);
        let w = found
            .iter()
            .find(|x| x.finding_type == FindingType::WeakPermissions)
            .unwrap();
        assert_eq!(w.severity, Severity::High);
        assert!(w.evidence.reason.contains("0644"), "{w:?}");
        assert!(
            !Fixture::new()
                .secret(facts("b", "02"))
                .has(1, FindingType::WeakPermissions)
        );
        let mut f = Fixture::new().secret(facts("c", "03"));
        f.0.observe(&Observation::Read {
            at: t(1),
            secret_id: "sec-c".into(),
            who: who("user:ana:/usr/bin/app"),
            pid: 5,
            uid: 1000,
            count: 1,
            denied: false,
            mode: OpenMode::Read,
        });
        let found = evaluate(&f.0, &settings(), t(2), Scope::All);
        let w = found
            .iter()
            .find(|x| x.finding_type == FindingType::WeakPermissions)
            .unwrap();
        assert!(w.evidence.reason.contains("read by uid 1000"), "{w:?}");
        assert_eq!(w.severity, Severity::Medium);
    }

    #[test]
    fn static_despite_a_federated_token() {
        let mut token = facts("token", "02");
        token.path = "/var/run/secrets/kubernetes.io/serviceaccount/token".into();
        token.secret_type = "k8s_sa_token".into();
        token.lifetime = Some("dynamic".into());
        let f = Fixture::new()
            .secret(facts("a", "01"))
            .secret(token)
            .read(1, "a", "k8s:prod/api")
            .read(2, "token", "k8s:prod/api")
            .read(3, "a", "k8s:prod/other");
        let found = evaluate(&f.0, &settings(), t(4), Scope::All);
        let s: Vec<_> = found
            .iter()
            .filter(|x| x.finding_type == FindingType::StaticDespiteFederation)
            .collect();
        assert_eq!(s.len(), 1, "{found:?}");
        assert_eq!(s[0].identities[0].id, "k8s:prod/api");
        assert_eq!(s[0].subject, "sec-a");
        let mut svid = facts("svid", "03");
        svid.path = "/run/spire/svid.pem".into();
        assert!(federated(&SecretRow {
            facts: svid,
            first_seen: t(0),
            last_seen: t(0),
            removed: None,
            unwatched: None,
        }));
    }

    #[test]
    fn exposures_and_the_env_policy() {
        let mut f = Fixture::new();
        for (kind, subject, detail) in [
            (ExposureKind::Env, "GITHUB_TOKEN", None),
            (ExposureKind::Argv, "github_token", Some("ghp_…")),
            (ExposureKind::Environ, "/usr/bin/app", None),
        ] {
            f.0.exposures.insert(
                (kind, subject.into(), "user:root:/usr/bin/curl".into()),
                ExposureRow {
                    detail: detail.map(str::to_string),
                    first_seen: t(1),
                    last_seen: t(2),
                    count: 2,
                    last_pid: 4,
                    last_exe: Some("/usr/bin/curl".into()),
                },
            );
        }
        let found = evaluate(&f.0, &settings(), t(3), Scope::Events);
        let types: Vec<_> = found.iter().map(|x| x.finding_type).collect();
        assert_eq!(
            types,
            [
                FindingType::SecretInArgv,
                FindingType::EnvironRead,
                FindingType::SecretInEnv
            ],
            "worst first"
        );
        let argv = &found[0];
        assert_eq!(argv.secret.redacted.as_deref(), Some("ghp_…"));
        assert_eq!(argv.evidence.count, 2);
        let allowed = Settings::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            vec![PolicyRule {
                glob: "env:GITHUB_TOKEN".into(),
                allow: vec!["user:root:*".into()],
            }],
        )
        .unwrap();
        let found = evaluate(&f.0, &allowed, t(3), Scope::Events);
        assert!(
            !found
                .iter()
                .any(|x| x.finding_type == FindingType::SecretInEnv)
        );
    }

    #[test]
    fn watch_overflow_is_one_finding_per_directory() {
        let overflow = |unwatched| Overflow {
            max_watched: 16,
            watched: 16,
            unwatched,
            dirs: vec![OverflowDir {
                dir: "/home/mallory".into(),
                unwatched,
            }],
            more_dirs: 0,
        };
        let findings = watch_overflow(&overflow(24));
        assert_eq!(findings.len(), 1);
        let f = &findings[0];
        assert_eq!(f.finding_type, FindingType::WatchOverflow);
        assert_eq!(f.secret.path.as_deref(), Some("/home/mallory"));
        assert_eq!(f.evidence.count, 24);
        assert!(
            f.recommendation
                .contains("raise [capture] max_watched above 40")
        );
        // The same directory is the same finding, however many files.
        assert_eq!(watch_overflow(&overflow(25))[0].id, f.id);
        assert!(watch_overflow(&Overflow::default()).is_empty());
    }
}
