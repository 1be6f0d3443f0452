//! The ledger's content in memory: what the rules read. The agent keeps one
//! current as observations arrive and hands the rows it changed to the
//! writer; `report` loads one from disk. A changed row is written whole
//! (its cumulative count, not an increment), so a batch lost to a crash
//! or a full queue is made good by the next write of the same row, and a
//! restart never counts anything twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityKind};

/// What the inventory knows of one secret file. Fields it has not filled
/// are `None`; the rules that need them then stay silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFacts {
    pub id: String,
    pub path: String,
    /// `secret.type` of the event contract (`aws_credentials`, ...).
    pub secret_type: String,
    /// `hmac-sha256:` and a hex prefix.
    pub fingerprint: Option<String>,
    /// `static`, `dynamic` or `unknown`.
    pub lifetime: Option<String>,
    /// A safe prefix or label, e.g. `AKIA…`.
    pub hint: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits.
    pub mode: Option<u32>,
    pub mtime: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub facts: SecretFacts,
    /// First and last time the inventory listed it.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// When its file was found gone (or, through the inventory, holding
    /// no secret any more).
    pub removed: Option<DateTime<Utc>>,
    /// Since when no agent watches it although its file is still there
    /// (a later run with another `--watch` or `--config`): its facts are as
    /// last seen, and nobody can vouch that it was not read since.
    pub unwatched: Option<DateTime<Utc>>,
}

/// One fingerprint a secret had, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRow {
    pub id: String,
    /// `k8s`, `container`, `systemd` or `user`.
    pub kind: String,
    pub spiffe_id: String,
    /// The systemd unit, to tell a stopped unit from a removed one.
    pub unit: Option<String>,
    /// The unit is a user manager's.
    pub user_manager: bool,
    /// The cgroup its last process ran in (0 when unknown).
    pub cgroup_id: u64,
    pub exe: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// When the workload was found gone from the host (unit and cgroup
    /// removed, executable deleted); cleared when it is seen again.
    pub gone_since: Option<DateTime<Utc>>,
}

/// Opens of one secret by one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Opens, successful or not.
    pub count: u64,
    /// Opens the kernel refused.
    pub denied: u64,
    /// Successful opens that could read (`O_RDONLY`, `O_RDWR`).
    pub reads: u64,
    /// Successful opens that could write (`O_WRONLY`, `O_RDWR`): a
    /// `touch`, an editor saving, a rotation job.
    pub writes: u64,
    /// Reads from a human session.
    pub human: u64,
    pub last_pid: u32,
    pub last_uid: u32,
    pub last_exe: Option<String>,
}

impl AccessRow {
    /// At least one open that could read succeeded.
    pub fn read(&self) -> bool {
        self.reads > 0
    }
}

/// What an open could do with the file, from its access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenMode {
    Read,
    Write,
    ReadWrite,
    /// `O_PATH`: a handle to the name, neither read nor write.
    Path,
}

impl OpenMode {
    /// From the open's flags (the syscall's or `file->f_flags`, which keep
    /// the access mode and `O_PATH`).
    pub fn from_flags(flags: u32) -> Self {
        let f = flags as i32;
        if f & libc::O_PATH != 0 {
            return Self::Path;
        }
        match f & libc::O_ACCMODE {
            libc::O_WRONLY => Self::Write,
            libc::O_RDWR => Self::ReadWrite,
            _ => Self::Read,
        }
    }

    pub fn reads(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }

    pub fn writes(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposureKind {
    /// `subject` is the variable's name.
    Env,
    /// `subject` is the token kind (`github_token`); `detail` the redacted match.
    Argv,
    /// `subject` is the target's executable.
    Environ,
}

impl ExposureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::Argv => "argv",
            Self::Environ => "environ",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Env, Self::Argv, Self::Environ]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposureRow {
    pub detail: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub count: u64,
    pub last_pid: u32,
    pub last_exe: Option<String>,
}

pub type AccessKey = (String, String);
pub type ExposureKey = (ExposureKind, String, String);

/// One row to write; the writer replaces the stored row with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Meta(String, String),
    Secret(SecretRow),
    Fingerprint(String, String, Span),
    Identity(IdentityRow),
    Access(AccessKey, AccessRow),
    Exposure(ExposureKey, ExposureRow),
    Fired(Fired),
    /// Delete what was last seen before this time.
    Prune(DateTime<Utc>),
}

/// A finding already emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub key: String,
    pub finding_type: String,
    pub subject: String,
    pub at: DateTime<Utc>,
}

/// Who made an access, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub kind: String,
    pub spiffe_id: String,
    pub unit: Option<String>,
    pub user_manager: bool,
    pub cgroup_id: u64,
    pub exe: Option<String>,
    pub human: bool,
}

#[cfg(test)]
impl Seen {
    /// A reader known by its id and kind only, as tests name one.
    pub fn named(id: &str, kind: &str) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            spiffe_id: String::new(),
            unit: None,
            user_manager: false,
            cgroup_id: 0,
            exe: None,
            human: false,
        }
    }
}

impl Seen {
    pub fn new(identity: &Identity, cgroup_id: u64, exe: Option<String>) -> Self {
        let kind = match identity.kind {
            IdentityKind::K8s => "k8s",
            IdentityKind::Container => "container",
            IdentityKind::Systemd => "systemd",
            IdentityKind::User => "user",
            IdentityKind::Unknown => "unknown",
        };
        Self {
            id: identity.id.clone(),
            kind: kind.into(),
            spiffe_id: identity.spiffe_id.clone(),
            unit: identity.systemd.as_ref().map(|s| s.unit.clone()),
            user_manager: identity
                .systemd
                .as_ref()
                .is_some_and(|s| s.user_manager.is_some()),
            cgroup_id,
            exe,
            human: identity.human,
        }
    }
}

/// What the pipeline saw, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Opens of a watched file folded into one: same process, result and
    /// mode.
    Read {
        at: DateTime<Utc>,
        secret_id: String,
        who: Seen,
        pid: u32,
        uid: u32,
        count: u64,
        denied: bool,
        mode: OpenMode,
    },
    /// The inventory found a secret while the agent runs (a new file, a
    /// rotation, a changed mode), or the kernel's name rules did.
    Secret {
        at: DateTime<Utc>,
        facts: SecretFacts,
    },
    /// The inventory no longer lists secret `id`; `file_exists`: its file
    /// is still there (it holds no secret any more, or cannot be read).
    SecretGone {
        at: DateTime<Utc>,
        id: String,
        file_exists: bool,
    },
    Exposure {
        at: DateTime<Utc>,
        kind: ExposureKind,
        subject: String,
        detail: Option<String>,
        who: Seen,
        pid: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When this ledger began observing: the first run on this state dir.
    pub created: DateTime<Utc>,
    pub secrets: BTreeMap<String, SecretRow>,
    /// (secret id, fingerprint) → when.
    pub fingerprints: BTreeMap<(String, String), Span>,
    pub identities: BTreeMap<String, IdentityRow>,
    /// (secret id, identity id) → reads.
    pub accesses: BTreeMap<AccessKey, AccessRow>,
    /// (kind, subject, identity id) → sightings.
    pub exposures: BTreeMap<ExposureKey, ExposureRow>,
    /// Finding key → when it fired.
    pub fired: BTreeMap<String, DateTime<Utc>>,
    /// When the fingerprint key last changed (a deleted `fingerprint.key`
    /// made anew, a fleet key configured): fingerprints seen before are
    /// not comparable with later ones.
    pub key_changed: Option<DateTime<Utc>>,
}

impl Snapshot {
    pub fn new(created: DateTime<Utc>) -> Self {
        Self {
            created,
            secrets: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            identities: BTreeMap::new(),
            accesses: BTreeMap::new(),
            exposures: BTreeMap::new(),
            fired: BTreeMap::new(),
            key_changed: None,
        }
    }

    /// The inventory lists `facts` at `at`. Returns the rows that changed.
    pub fn observe_secret(&mut self, facts: SecretFacts, at: DateTime<Utc>) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Some(fp) = &facts.fingerprint {
            let first_seen = self.value_seen_under_old_key(&facts).unwrap_or(at);
            let span = self
                .fingerprints
                .entry((facts.id.clone(), fp.clone()))
                .and_modify(|s| s.last_seen = s.last_seen.max(at))
                .or_insert(Span {
                    first_seen,
                    last_seen: at,
                });
            rows.push(Row::Fingerprint(facts.id.clone(), fp.clone(), *span));
        }
        let row = match self.secrets.remove(&facts.id) {
            Some(old) => SecretRow {
                facts,
                first_seen: old.first_seen,
                last_seen: old.last_seen.max(at),
                removed: None,
                unwatched: None,
            },
            None => SecretRow {
                facts,
                first_seen: at,
                last_seen: at,
                removed: None,
                unwatched: None,
            },
        };
        rows.push(Row::Secret(row.clone()));
        self.secrets.insert(row.facts.id.clone(), row);
        rows
    }

    /// After a change of the fingerprint key, the first fingerprint of a
    /// secret under the new key is a new string for the same value, not a
    /// rotation, as long as the file was not modified since the value was
    /// last seen under the old key: then the value keeps its first sighting.
    /// A file modified since may have been rotated meanwhile: its value is
    /// then dated from now, as any new value is.
    fn value_seen_under_old_key(&self, facts: &SecretFacts) -> Option<DateTime<Utc>> {
        let changed = self.key_changed?;
        let spans: Vec<&Span> = self
            .fingerprints
            .range((facts.id.clone(), String::new())..)
            .take_while(|((id, _), _)| *id == facts.id)
            .map(|(_, span)| span)
            .collect();
        if spans.iter().any(|s| s.last_seen >= changed) {
            return None;
        }
        let old = self.secrets.get(&facts.id)?.facts.fingerprint.as_ref()?;
        let span = self.fingerprints.get(&(facts.id.clone(), old.clone()))?;
        let unmodified = facts.mtime.is_some_and(|m| m <= span.last_seen);
        unmodified.then_some(span.first_seen)
    }

    /// The inventory no longer lists secret `id`: removed when its file is
    /// gone, unwatched while it is still there.
    pub fn secret_gone(&mut self, id: &str, file_exists: bool, at: DateTime<Utc>) -> Vec<Row> {
        if file_exists {
            self.unwatch_secret(id, at)
        } else {
            self.remove_secret(id, at)
        }
    }

    /// Secret `id`'s file is gone.
    pub fn remove_secret(&mut self, id: &str, at: DateTime<Utc>) -> Vec<Row> {
        match self.secrets.get_mut(id) {
            Some(row) if row.removed.is_none() => {
                row.removed = Some(at);
                vec![Row::Secret(row.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// Secret `id`'s file is still there, but no longer watched.
    pub fn unwatch_secret(&mut self, id: &str, at: DateTime<Utc>) -> Vec<Row> {
        match self.secrets.get_mut(id) {
            Some(row) if row.removed.is_none() && row.unwatched.is_none() => {
                row.unwatched = Some(at);
                vec![Row::Secret(row.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// Record what the pipeline saw. Returns the rows that changed.
    pub fn observe(&mut self, o: &Observation) -> Vec<Row> {
        match o {
            Observation::Secret { at, facts } => self.observe_secret(facts.clone(), *at),
            Observation::SecretGone {
                at,
                id,
                file_exists,
            } => self.secret_gone(id, *file_exists, *at),
            Observation::Read {
                at,
                secret_id,
                who,
                pid,
                uid,
                count,
                denied,
                mode,
            } => {
                let identity = self.seen(who, *at);
                let key = (secret_id.clone(), who.id.clone());
                let row = self
                    .accesses
                    .entry(key.clone())
                    .or_insert_with(|| AccessRow {
                        first_seen: *at,
                        last_seen: *at,
                        count: 0,
                        denied: 0,
                        reads: 0,
                        writes: 0,
                        human: 0,
                        last_pid: *pid,
                        last_uid: *uid,
                        last_exe: None,
                    });
                row.first_seen = row.first_seen.min(*at);
                row.last_seen = row.last_seen.max(*at);
                row.count += count;
                if *denied {
                    // A refused open neither read nor wrote anything.
                    row.denied += count;
                } else {
                    if mode.reads() {
                        row.reads += count;
                        if who.human {
                            row.human += count;
                        }
                    }
                    if mode.writes() {
                        row.writes += count;
                    }
                }
                row.last_pid = *pid;
                row.last_uid = *uid;
                row.last_exe.clone_from(&who.exe);
                vec![identity, Row::Access(key, row.clone())]
            }
            Observation::Exposure {
                at,
                kind,
                subject,
                detail,
                who,
                pid,
            } => {
                let identity = self.seen(who, *at);
                let key = (*kind, subject.clone(), who.id.clone());
                let row = self
                    .exposures
                    .entry(key.clone())
                    .or_insert_with(|| ExposureRow {
                        detail: None,
                        first_seen: *at,
                        last_seen: *at,
                        count: 0,
                        last_pid: *pid,
                        last_exe: None,
                    });
                row.first_seen = row.first_seen.min(*at);
                row.last_seen = row.last_seen.max(*at);
                row.count += 1;
                row.detail.clone_from(detail);
                row.last_pid = *pid;
                row.last_exe.clone_from(&who.exe);
                vec![identity, Row::Exposure(key, row.clone())]
            }
        }
    }

    /// The workload of identity `id` is no longer on the host.
    pub fn identity_gone(&mut self, id: &str, at: DateTime<Utc>) -> Vec<Row> {
        match self.identities.get_mut(id) {
            Some(row) if row.gone_since.is_none() => {
                row.gone_since = Some(at);
                vec![Row::Identity(row.clone())]
            }
            _ => Vec::new(),
        }
    }

    pub fn fire(&mut self, fired: Fired) -> Row {
        self.fired.insert(fired.key.clone(), fired.at);
        Row::Fired(fired)
    }

    /// Forget what was last seen before `cutoff`: reads, exposures, past
    /// fingerprints, removed secrets and unwatched ones last listed before
    /// it, identities that made none of what is left, and fired findings
    /// (which may then fire again).
    pub fn prune(&mut self, cutoff: DateTime<Utc>) -> Row {
        self.accesses.retain(|_, a| a.last_seen >= cutoff);
        self.exposures.retain(|_, e| e.last_seen >= cutoff);
        self.fingerprints.retain(|_, s| s.last_seen >= cutoff);
        self.secrets.retain(|_, s| {
            s.removed.is_none_or(|r| r >= cutoff)
                && (s.unwatched.is_none() || s.last_seen >= cutoff)
        });
        let used: std::collections::BTreeSet<&String> = self
            .accesses
            .keys()
            .map(|(_, i)| i)
            .chain(self.exposures.keys().map(|(_, _, i)| i))
            .collect();
        self.identities
            .retain(|id, i| i.last_seen >= cutoff || used.contains(id));
        self.fired.retain(|_, at| *at >= cutoff);
        Row::Prune(cutoff)
    }

    fn seen(&mut self, who: &Seen, at: DateTime<Utc>) -> Row {
        let row = self
            .identities
            .entry(who.id.clone())
            .or_insert_with(|| IdentityRow {
                id: who.id.clone(),
                kind: who.kind.clone(),
                spiffe_id: who.spiffe_id.clone(),
                unit: None,
                user_manager: false,
                cgroup_id: 0,
                exe: None,
                first_seen: at,
                last_seen: at,
                gone_since: None,
            });
        row.kind.clone_from(&who.kind);
        row.spiffe_id.clone_from(&who.spiffe_id);
        row.unit.clone_from(&who.unit);
        row.user_manager = who.user_manager;
        if who.cgroup_id != 0 {
            row.cgroup_id = who.cgroup_id;
        }
        if who.exe.is_some() {
            row.exe.clone_from(&who.exe);
        }
        row.first_seen = row.first_seen.min(at);
        row.last_seen = row.last_seen.max(at);
        row.gone_since = None;
        Row::Identity(row.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn facts(fp: &str, mtime: i64) -> SecretFacts {
        SecretFacts {
            id: "sec-a".into(),
            path: "/srv/a".into(),
            secret_type: "generic".into(),
            fingerprint: Some(fp.into()),
            lifetime: Some("static".into()),
            hint: None,
            uid: Some(0),
            gid: Some(0),
            mode: Some(0o600),
            mtime: Some(t(mtime)),
            expires: None,
        }
    }

    fn open(s: &mut Snapshot, mode: OpenMode, denied: bool, human: bool) -> AccessRow {
        let who = Seen {
            id: "user:ana:/usr/bin/vi".into(),
            kind: "user".into(),
            spiffe_id: String::new(),
            unit: None,
            user_manager: false,
            cgroup_id: 0,
            exe: None,
            human,
        };
        s.observe(&Observation::Read {
            at: t(1),
            secret_id: "sec-a".into(),
            who: who.clone(),
            pid: 1,
            uid: 1000,
            count: 2,
            denied,
            mode,
        });
        s.accesses[&("sec-a".into(), who.id)].clone()
    }

    #[test]
    fn open_modes_from_flags() {
        use OpenMode::*;
        for (flags, mode) in [
            (libc::O_RDONLY, Read),
            (
                libc::O_WRONLY | libc::O_CREAT | libc::O_NOCTTY | libc::O_NONBLOCK,
                Write,
            ),
            (libc::O_RDWR | libc::O_APPEND, ReadWrite),
            (libc::O_PATH | libc::O_RDONLY, Path),
        ] {
            assert_eq!(OpenMode::from_flags(flags as u32), mode, "{flags:#o}");
        }
        assert!(Read.reads() && !Read.writes());
        assert!(!Write.reads() && Write.writes());
        assert!(ReadWrite.reads() && ReadWrite.writes());
        assert!(!Path.reads() && !Path.writes());
    }

    /// A `touch` writes, a refused open does nothing, and neither is a read
    /// or a human's use.
    #[test]
    fn writes_and_refusals_are_not_reads() {
        let mut s = Snapshot::new(t(0));
        let touched = open(&mut s, OpenMode::Write, false, true);
        assert_eq!((touched.count, touched.reads, touched.writes), (2, 0, 2));
        assert_eq!(touched.human, 0);
        assert!(!touched.read());
        let refused = open(&mut s, OpenMode::Read, true, true);
        assert_eq!((refused.count, refused.denied, refused.reads), (4, 2, 0));
        assert_eq!(refused.human, 0, "a refused open is no use");
        let edited = open(&mut s, OpenMode::ReadWrite, false, true);
        assert_eq!((edited.reads, edited.writes, edited.human), (2, 4, 2));
        assert!(edited.read());
    }

    /// Not listed by a run: removed only when the file is gone; listed
    /// again, watched again.
    #[test]
    fn unlisted_secrets_are_unwatched_while_their_file_exists() {
        let mut s = Snapshot::new(t(0));
        s.observe_secret(facts("hmac-sha256:01", 0), t(0));
        let rows = s.secret_gone("sec-a", true, t(5));
        assert_eq!(rows.len(), 1);
        let row = &s.secrets["sec-a"];
        assert_eq!((row.removed, row.unwatched), (None, Some(t(5))));
        assert!(s.secret_gone("sec-a", true, t(6)).is_empty(), "once");
        s.observe_secret(facts("hmac-sha256:01", 0), t(7));
        assert_eq!(s.secrets["sec-a"].unwatched, None);
        s.secret_gone("sec-a", false, t(8));
        assert_eq!(s.secrets["sec-a"].removed, Some(t(8)));
        // Retention forgets an unwatched secret by when it was last listed.
        let mut s = Snapshot::new(t(0));
        s.observe_secret(facts("hmac-sha256:01", 0), t(0));
        s.secret_gone("sec-a", true, t(100));
        s.prune(t(1));
        assert!(s.secrets.is_empty());
    }

    /// After a key change the same value has a new fingerprint: it keeps
    /// its first sighting while the file did not change, and is new when
    /// the file changed since it was last seen.
    #[test]
    fn a_new_key_is_no_rotation_unless_the_file_changed() {
        let mut s = Snapshot::new(t(0));
        s.observe_secret(facts("hmac-sha256:old", -50), t(0));
        s.observe_secret(facts("hmac-sha256:old", -50), t(10));
        s.key_changed = Some(t(20));
        s.observe_secret(facts("hmac-sha256:new", -50), t(20));
        let span = s.fingerprints[&("sec-a".into(), "hmac-sha256:new".into())];
        assert_eq!(span.first_seen, t(0), "the same value since t=0");
        // Later sightings under the new key change nothing.
        s.observe_secret(facts("hmac-sha256:new", -50), t(30));
        let span = s.fingerprints[&("sec-a".into(), "hmac-sha256:new".into())];
        assert_eq!((span.first_seen, span.last_seen), (t(0), t(30)));
        // A rotation under the new key is one.
        s.observe_secret(facts("hmac-sha256:newer", 35), t(40));
        let span = s.fingerprints[&("sec-a".into(), "hmac-sha256:newer".into())];
        assert_eq!(span.first_seen, t(40));

        // Modified after it was last seen under the old key: a new value.
        let mut s = Snapshot::new(t(0));
        s.observe_secret(facts("hmac-sha256:old", -50), t(0));
        s.key_changed = Some(t(20));
        s.observe_secret(facts("hmac-sha256:new", 15), t(20));
        let span = s.fingerprints[&("sec-a".into(), "hmac-sha256:new".into())];
        assert_eq!(span.first_seen, t(20));
    }
}
