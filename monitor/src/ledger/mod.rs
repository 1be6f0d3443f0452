//! The ledger: who read which secret, when and how often, and what each
//! secret looked like over time, in SQLite (WAL) in the state dir.
//!
//! The agent keeps a [`Snapshot`] in memory and sends the rows it changes to
//! a [`Writer`] thread that commits them in batches, off the event path.
//! `report` reads the same file, while the agent runs or after it stopped.
//! A crash (kill -9) loses at most the last uncommitted batch, never
//! corrupts the file, and a restart replays nothing, so nothing is counted
//! twice.

pub mod facts;
mod lock;
pub mod schema;
mod snapshot;
mod writer;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use serde::Deserialize;

use crate::secure_fs;

pub use self::{
    lock::StateLock,
    snapshot::{
        AccessRow, ExposureKind, ExposureRow, Fired, IdentityRow, Observation, OpenMode, Row,
        SecretFacts, SecretRow, Seen, Snapshot, Span,
    },
    writer::{Batching, Store, Writer, WriterStats},
};

const FILE: &str = "ledger.db";
/// Meta keys: the id of the fingerprint key the ledger's fingerprints were
/// made with, and when it last changed.
pub const KEY_ID: &str = "fingerprint_key";
pub const KEY_CHANGED: &str = "fingerprint_key_changed";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("state dir {path}: {err}")]
    StateDir {
        path: String,
        err: crate::secure_fs::TrustError,
    },
    #[error("ledger {path}: {err}")]
    Untrusted {
        path: String,
        err: crate::secure_fs::TrustError,
    },
    #[error("no ledger at {0}: has `secretmon run --state {1}` run here?")]
    Missing(String, String),
    #[error(
        "ledger {path}: permission denied (uid {uid}): run `sudo secretmon report`, \
         or as a member of the group the state dir is shared with"
    )]
    Denied { path: String, uid: u32 },
    #[error("ledger {path}: {}", crate::errors::error_text(err))]
    Open { path: String, err: rusqlite::Error },
    #[error("the ledger's schema is v{found}, newer than this secretmon knows (v{known})")]
    TooNew { found: u32, known: u32 },
    #[error(
        "the ledger's schema is v{found}, older than v{known}: run the agent once to migrate it"
    )]
    TooOld { found: u32, known: u32 },
    #[error("ledger: {}", crate::errors::error_text(.0))]
    Sql(#[from] rusqlite::Error),
    #[error("lock {path}: {}", crate::errors::error_text(err))]
    Lock { path: String, err: std::io::Error },
    #[error(
        "another secretmon agent{} runs on state dir {state_dir}: stop it, or give this one another --state",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { state_dir: String, pid: Option<u32> },
}

/// `[ledger]` of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Rows last seen longer ago than this are deleted.
    pub retention: crate::bounded::Window,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            retention: const { crate::bounded::Window::from_secs(90 * 86_400) },
        }
    }
}

fn untrusted(path: &Path) -> impl Fn(secure_fs::TrustError) -> LedgerError + '_ {
    move |err| LedgerError::Untrusted {
        path: path.display().to_string(),
        err,
    }
}

/// Open the ledger at `path` (checked) with SQLite, after checking the
/// write-ahead log and shared-memory files SQLite keeps beside it; SQLite
/// itself refuses a link at `path`.
fn open_checked(path: &Path, access: OpenFlags) -> Result<Connection, LedgerError> {
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        secure_fs::check_existing(&side).map_err(untrusted(&side))?;
    }
    let flags = access | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    Connection::open_with_flags(path, flags).map_err(|err| LedgerError::Open {
        path: path.display().to_string(),
        err,
    })
}

/// An open ledger file.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    /// Open (and create, and migrate) the ledger in `state_dir`, which is
    /// made 0700 when missing. The dir and the files in it are checked
    /// first ([`secure_fs`](crate::secure_fs)): SQLite follows links and
    /// chmods what it opens, so nobody else may have been able to plant
    /// one.
    pub fn open(state_dir: &Path) -> Result<Self, LedgerError> {
        let dir = secure_fs::state_dir(state_dir).map_err(|err| LedgerError::StateDir {
            path: state_dir.display().to_string(),
            err,
        })?;
        let path = dir.join(FILE);
        // Ledger rows name secrets and workloads: private from the start.
        secure_fs::ensure_private_file(&path).map_err(untrusted(&path))?;
        let mut conn = open_checked(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        // WAL: readers (`report`) never block the writer, and a crash
        // leaves the last committed transaction intact. NORMAL skips the
        // fsync per commit; a power loss may lose the last commits, never
        // the file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        schema::migrate(&mut conn, schema::MIGRATIONS)?;
        let ledger = Self { conn, path };
        if ledger.meta("created")?.is_none() {
            ledger.set_meta("created", &to_ns(Utc::now()).to_string())?;
        }
        Ok(ledger)
    }

    /// Open the ledger in `state_dir` for reading only, as `report` does
    /// while the agent may be writing.
    pub fn open_read_only(state_dir: &Path) -> Result<Self, LedgerError> {
        let missing = || {
            LedgerError::Missing(
                state_dir.join(FILE).display().to_string(),
                state_dir.display().to_string(),
            )
        };
        // A ledger in a 0700 state dir is there, just not readable by this
        // user: say so, not that there is none.
        let denied = |path: &Path| LedgerError::Denied {
            path: path.display().to_string(),
            uid: nix::unistd::geteuid().as_raw(),
        };
        let dir = match secure_fs::existing_state_dir(state_dir) {
            Err(e) if e.is_not_found() => return Err(missing()),
            Err(e) if e.is_denied() => return Err(denied(&state_dir.join(FILE))),
            other => other.map_err(|err| LedgerError::StateDir {
                path: state_dir.display().to_string(),
                err,
            })?,
        };
        let path = dir.join(FILE);
        match secure_fs::check_existing(&path) {
            Err(e) if e.is_denied() => return Err(denied(&path)),
            Err(e) => return Err(untrusted(&path)(e)),
            Ok(None) => return Err(missing()),
            Ok(Some(_)) => {}
        }
        if let Err(e) = std::fs::File::open(&path)
            && e.kind() == std::io::ErrorKind::PermissionDenied
        {
            return Err(denied(&path));
        }
        let conn = open_checked(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let found = schema::version(&conn)?;
        let known = schema::MIGRATIONS.len() as u32;
        if found > known {
            return Err(LedgerError::TooNew { found, known });
        }
        if found < known {
            return Err(LedgerError::TooOld { found, known });
        }
        Ok(Self { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// `PRAGMA integrity_check`: "ok" when the file is sound.
    #[cfg(test)]
    pub fn integrity(&self) -> Result<String, LedgerError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// Write `rows` in one transaction.
    pub fn write(&mut self, rows: &[Row]) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        for row in rows {
            write_row(&tx, row)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Everything the ledger holds.
    pub fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        let created = self
            .meta("created")?
            .and_then(|v| v.parse().ok())
            .map_or_else(Utc::now, from_ns);
        let mut s = Snapshot::new(created);
        s.key_changed = self
            .meta(KEY_CHANGED)?
            .and_then(|v| v.parse().ok())
            .map(from_ns);
        let c = &self.conn;
        let mut q = c.prepare(
            "SELECT id, path, type, fingerprint, lifetime, hint, uid, gid, mode, mtime, \
             expires, first_seen, last_seen, removed, unwatched FROM secret",
        )?;
        let rows = q.query_map([], |r| {
            Ok(SecretRow {
                facts: SecretFacts {
                    id: r.get(0)?,
                    path: r.get(1)?,
                    secret_type: r.get(2)?,
                    fingerprint: r.get(3)?,
                    lifetime: r.get(4)?,
                    hint: r.get(5)?,
                    uid: r.get(6)?,
                    gid: r.get(7)?,
                    mode: r.get(8)?,
                    mtime: r.get::<_, Option<i64>>(9)?.map(from_ns),
                    expires: r.get::<_, Option<i64>>(10)?.map(from_ns),
                },
                first_seen: from_ns(r.get(11)?),
                last_seen: from_ns(r.get(12)?),
                removed: r.get::<_, Option<i64>>(13)?.map(from_ns),
                unwatched: r.get::<_, Option<i64>>(14)?.map(from_ns),
            })
        })?;
        for row in rows {
            let row = row?;
            s.secrets.insert(row.facts.id.clone(), row);
        }
        let mut q = c.prepare(
            "SELECT secret_id, fingerprint, first_seen, last_seen FROM secret_fingerprint",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                Span {
                    first_seen: from_ns(r.get(2)?),
                    last_seen: from_ns(r.get(3)?),
                },
            ))
        })?;
        for row in rows {
            let (k, v) = row?;
            s.fingerprints.insert(k, v);
        }
        let mut q = c.prepare(
            "SELECT id, kind, spiffe_id, unit, user_manager, cgroup_id, exe, first_seen, \
             last_seen, gone_since FROM identity",
        )?;
        let rows = q.query_map([], |r| {
            Ok(IdentityRow {
                id: r.get(0)?,
                kind: r.get(1)?,
                spiffe_id: r.get(2)?,
                unit: r.get(3)?,
                user_manager: r.get(4)?,
                cgroup_id: r.get::<_, i64>(5)? as u64,
                exe: r.get(6)?,
                first_seen: from_ns(r.get(7)?),
                last_seen: from_ns(r.get(8)?),
                gone_since: r.get::<_, Option<i64>>(9)?.map(from_ns),
            })
        })?;
        for row in rows {
            let row = row?;
            s.identities.insert(row.id.clone(), row);
        }
        let mut q = c.prepare(
            "SELECT secret_id, identity_id, first_seen, last_seen, count, denied, human, \
             last_pid, last_uid, last_exe, reads, writes FROM access",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                AccessRow {
                    first_seen: from_ns(r.get(2)?),
                    last_seen: from_ns(r.get(3)?),
                    count: r.get::<_, i64>(4)? as u64,
                    denied: r.get::<_, i64>(5)? as u64,
                    reads: r.get::<_, i64>(10)? as u64,
                    writes: r.get::<_, i64>(11)? as u64,
                    human: r.get::<_, i64>(6)? as u64,
                    last_pid: r.get(7)?,
                    last_uid: r.get(8)?,
                    last_exe: r.get(9)?,
                },
            ))
        })?;
        for row in rows {
            let (k, v) = row?;
            s.accesses.insert(k, v);
        }
        let mut q = c.prepare(
            "SELECT kind, subject, identity_id, detail, first_seen, last_seen, count, last_pid, \
             last_exe FROM exposure",
        )?;
        let rows = q.query_map([], |r| {
            let kind: String = r.get(0)?;
            Ok((
                kind,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                ExposureRow {
                    detail: r.get(3)?,
                    first_seen: from_ns(r.get(4)?),
                    last_seen: from_ns(r.get(5)?),
                    count: r.get::<_, i64>(6)? as u64,
                    last_pid: r.get(7)?,
                    last_exe: r.get(8)?,
                },
            ))
        })?;
        for row in rows {
            let (kind, subject, identity, v) = row?;
            // A kind from a later release is not ours to judge.
            if let Some(kind) = ExposureKind::parse(&kind) {
                s.exposures.insert((kind, subject, identity), v);
            }
        }
        let mut q = c.prepare("SELECT key, fired_at FROM fired")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, from_ns(r.get(1)?))))?;
        for row in rows {
            let (k, at) = row?;
            s.fired.insert(k, at);
        }
        Ok(s)
    }

    /// Rows in the access table.
    #[cfg(test)]
    pub fn access_rows(&self) -> Result<u64, LedgerError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM access", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

fn write_row(tx: &rusqlite::Transaction<'_>, row: &Row) -> Result<(), rusqlite::Error> {
    match row {
        Row::Meta(k, v) => {
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                .execute(params![k, v])?;
        }
        Row::Secret(s) => {
            let f = &s.facts;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO secret (id, path, type, fingerprint, lifetime, hint, uid, \
                 gid, mode, mtime, expires, first_seen, last_seen, removed, unwatched) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                f.id,
                f.path,
                f.secret_type,
                f.fingerprint,
                f.lifetime,
                f.hint,
                f.uid,
                f.gid,
                f.mode,
                f.mtime.map(to_ns),
                f.expires.map(to_ns),
                to_ns(s.first_seen),
                to_ns(s.last_seen),
                s.removed.map(to_ns),
                s.unwatched.map(to_ns),
            ])?;
        }
        Row::Fingerprint(id, fp, span) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO secret_fingerprint (secret_id, fingerprint, first_seen, \
                 last_seen) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                id,
                fp,
                to_ns(span.first_seen),
                to_ns(span.last_seen)
            ])?;
        }
        Row::Identity(i) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO identity (id, kind, spiffe_id, unit, user_manager, \
                 cgroup_id, exe, first_seen, last_seen, gone_since) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                i.id,
                i.kind,
                i.spiffe_id,
                i.unit,
                i.user_manager,
                i.cgroup_id as i64,
                i.exe,
                to_ns(i.first_seen),
                to_ns(i.last_seen),
                i.gone_since.map(to_ns),
            ])?;
        }
        Row::Access((secret, identity), a) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO access (secret_id, identity_id, first_seen, last_seen, \
                 count, denied, human, last_pid, last_uid, last_exe, reads, writes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                secret,
                identity,
                to_ns(a.first_seen),
                to_ns(a.last_seen),
                a.count as i64,
                a.denied as i64,
                a.human as i64,
                a.last_pid,
                a.last_uid,
                a.last_exe,
                a.reads as i64,
                a.writes as i64,
            ])?;
        }
        Row::Exposure((kind, subject, identity), e) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO exposure (kind, subject, identity_id, detail, first_seen, \
                 last_seen, count, last_pid, last_exe) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                kind.as_str(),
                subject,
                identity,
                e.detail,
                to_ns(e.first_seen),
                to_ns(e.last_seen),
                e.count as i64,
                e.last_pid,
                e.last_exe,
            ])?;
        }
        Row::Fired(f) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO fired (key, type, subject, fired_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![f.key, f.finding_type, f.subject, to_ns(f.at)])?;
        }
        Row::Prune(cutoff) => {
            // The same criteria as `Snapshot::prune`.
            let c = to_ns(*cutoff);
            for sql in [
                "DELETE FROM access WHERE last_seen < ?1",
                "DELETE FROM exposure WHERE last_seen < ?1",
                "DELETE FROM secret_fingerprint WHERE last_seen < ?1",
                "DELETE FROM secret WHERE removed < ?1 OR (unwatched IS NOT NULL AND last_seen < ?1)",
                "DELETE FROM identity WHERE last_seen < ?1 \
                 AND id NOT IN (SELECT identity_id FROM access) \
                 AND id NOT IN (SELECT identity_id FROM exposure)",
                "DELETE FROM fired WHERE fired_at < ?1",
            ] {
                tx.prepare_cached(sql)?.execute([c])?;
            }
        }
    }
    Ok(())
}

pub fn to_ns(t: DateTime<Utc>) -> i64 {
    // Beyond 2262 a timestamp saturates rather than wraps.
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

pub fn from_ns(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    pub(crate) fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn facts(id: &str, fp: &str) -> SecretFacts {
        SecretFacts {
            id: id.into(),
            path: format!("/srv/{id}"),
            secret_type: "generic".into(),
            fingerprint: Some(fp.into()),
            lifetime: Some("static".into()),
            hint: None,
            uid: Some(0),
            gid: Some(0),
            mode: Some(0o600),
            mtime: Some(at(-100)),
            expires: None,
        }
    }

    fn seen(id: &str) -> Seen {
        Seen {
            id: id.into(),
            kind: "systemd".into(),
            spiffe_id: format!("spiffe://td/{id}"),
            unit: Some("app.service".into()),
            user_manager: false,
            cgroup_id: 42,
            exe: Some("/usr/bin/app".into()),
            human: false,
        }
    }

    fn read(secs: i64, secret: &str, who: &str, count: u64) -> Observation {
        Observation::Read {
            at: at(secs),
            secret_id: secret.into(),
            who: seen(who),
            pid: 7,
            uid: 0,
            count,
            denied: false,
            mode: OpenMode::Read,
        }
    }

    /// What the agent holds in memory is what `report` loads from disk.
    #[test]
    fn disk_and_memory_agree_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut ledger = Ledger::open(&state).unwrap();
        let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mut mem = ledger.snapshot().unwrap();
        let mut rows = Vec::new();
        rows.extend(mem.observe_secret(facts("a", "hmac-sha256:01"), at(0)));
        rows.extend(mem.observe_secret(facts("a", "hmac-sha256:02"), at(10)));
        rows.extend(mem.observe(&read(1, "a", "systemd:app.service", 3)));
        rows.extend(mem.observe(&read(5, "a", "systemd:app.service", 2)));
        let mut write = read(6, "a", "systemd:app.service", 1);
        if let Observation::Read { mode, .. } = &mut write {
            *mode = OpenMode::Write;
        }
        rows.extend(mem.observe(&write));
        rows.extend(mem.observe_secret(facts("b", "hmac-sha256:03"), at(0)));
        rows.extend(mem.secret_gone("b", true, at(12)));
        rows.extend(mem.observe(&Observation::Exposure {
            at: at(6),
            kind: ExposureKind::Env,
            subject: "GITHUB_TOKEN".into(),
            detail: None,
            who: seen("user:root:/bin/sh"),
            pid: 9,
        }));
        rows.extend(mem.identity_gone("systemd:app.service", at(20)));
        rows.push(mem.fire(Fired {
            key: "k".into(),
            finding_type: "shared_secret".into(),
            subject: "a".into(),
            at: at(7),
        }));
        ledger.write(&rows).unwrap();
        drop(ledger);

        let ledger = Ledger::open_read_only(&state).unwrap();
        let disk = ledger.snapshot().unwrap();
        assert_eq!(disk, mem);
        let access = &disk.accesses[&("a".into(), "systemd:app.service".into())];
        assert_eq!((access.count, access.reads, access.writes), (6, 5, 1));
        assert_eq!(disk.secrets["b"].unwatched, Some(at(12)));
        assert_eq!((access.first_seen, access.last_seen), (at(1), at(6)));
        assert_eq!(disk.fingerprints.len(), 3, "every fingerprint kept");
        assert_eq!(ledger.integrity().unwrap(), "ok");
    }

    #[test]
    fn pruning_on_disk_matches_pruning_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let mut mem = ledger.snapshot().unwrap();
        let mut rows = Vec::new();
        rows.extend(mem.observe_secret(facts("old", "hmac-sha256:01"), at(0)));
        rows.extend(mem.observe_secret(facts("new", "hmac-sha256:02"), at(0)));
        rows.extend(mem.observe_secret(facts("new", "hmac-sha256:03"), at(100)));
        rows.extend(mem.remove_secret("old", at(10)));
        rows.extend(mem.observe(&read(5, "new", "user:a:/bin/a", 1)));
        rows.extend(mem.observe(&read(200, "new", "user:b:/bin/b", 1)));
        rows.push(mem.prune(at(50)));
        ledger.write(&rows).unwrap();
        let disk = ledger.snapshot().unwrap();
        assert_eq!(disk, mem);
        assert_eq!(disk.secrets.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(
            disk.identities.keys().collect::<Vec<_>>(),
            ["user:b:/bin/b"]
        );
        assert_eq!(disk.fingerprints.len(), 1);
    }

    #[test]
    fn report_without_a_ledger_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = Ledger::open_read_only(dir.path()) else {
            panic!("opened a ledger that does not exist");
        };
        let err = err.to_string();
        assert!(err.contains("secretmon run --state"), "{err}");
    }

    #[test]
    fn planted_files_and_open_state_dirs_are_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(Ledger::open(&state).unwrap());
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&state.join(FILE)), 0o600, "made private, not chmodded");
        let victim = dir.path().join("victim");
        fs::write(&victim, "x").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        // SQLite's own files beside the ledger.
        for side in ["ledger.db-wal", "ledger.db-shm"] {
            let link = state.join(side);
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            for result in [
                Ledger::open(&state).err(),
                Ledger::open_read_only(&state).err(),
            ] {
                let err = result.expect("refused").to_string();
                assert!(
                    err.ends_with(&format!("{side}: a symbolic link; refused")),
                    "{err}"
                );
            }
            fs::remove_file(&link).unwrap();
        }
        fs::remove_file(state.join(FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, state.join(FILE)).unwrap();
        for result in [
            Ledger::open(&state).err(),
            Ledger::open_read_only(&state).err(),
        ] {
            let err = result.expect("refused").to_string();
            assert!(
                err.ends_with("ledger.db: a symbolic link; refused"),
                "{err}"
            );
        }
        assert_eq!(mode(&victim), 0o644);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "x");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let Err(err) = Ledger::open_read_only(&state) else {
            panic!("read a ledger others could have written");
        };
        assert!(
            err.to_string()
                .ends_with("writable by its group or others (mode 0777); refused"),
            "{err}"
        );
    }

    #[test]
    fn retention_parses_human_durations() {
        let c: LedgerConfig = toml::from_str("retention = \"30d\"").unwrap();
        assert_eq!(c.retention.get(), Duration::from_secs(30 * 86_400));
        let err = toml::from_str::<LedgerConfig>("retention = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
        let err = toml::from_str::<LedgerConfig>("retention = \"99999999999d\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range: from 1s to 36500d"), "{err}");
    }
}
