//! The agent's side of the fleet: every `interval` (and once at shutdown)
//! send the fleet store what changed in the local ledger since the store
//! last acknowledged it, plus a heartbeat.
//!
//! What was acknowledged is a digest per row, kept in the ledger's file
//! (`fleet_sent`, per store and host name) and advanced only after the
//! store committed: a sync that fails, or an agent killed between the
//! commit and the cursor, sends the same rows again, and since rows carry
//! totals, never deltas, nothing is counted twice. Only committed ledger
//! rows are read, so the store never knows more than the ledger.
//!
//! Each run of the agent is recorded locally too (`fleet_run`: started,
//! last alive, stopped, events lost), whether the store is reachable or
//! not: the report needs to know when a host was observing to tell
//! "unused" from "unknown".

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};
use tokio::sync::{oneshot, watch};

use super::{
    Connection,
    store::{Batch, Heartbeat, Run, Store, StoreError},
};
use crate::ledger::{Ledger, LedgerError, Snapshot, from_ns, to_ns};

/// The local tables, as migrations counted in the ledger's `meta`.
const LOCAL_VERSION_KEY: &str = "fleet_schema";
const LOCAL_MIGRATIONS: &[&str] = &["
CREATE TABLE fleet_sent (
    store  TEXT NOT NULL,
    host   TEXT NOT NULL,
    kind   TEXT NOT NULL,
    key    TEXT NOT NULL,
    digest INTEGER NOT NULL,
    PRIMARY KEY (store, host, kind, key)
) WITHOUT ROWID;
CREATE TABLE fleet_run (
    started INTEGER PRIMARY KEY,
    alive   INTEGER NOT NULL,
    stopped INTEGER,
    lost    INTEGER NOT NULL
);
"];

/// A secret's and a fingerprint's `last_seen` move at every inventory
/// refresh; the store gets them at this resolution, not every interval.
const LAST_SEEN_RESOLUTION: TimeDelta = TimeDelta::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("ledger: {}", crate::errors::error_text(.0))]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("fleet store: no answer within {0:?}")]
    Timeout(Duration),
    #[error("the local ledger's fleet tables are v{0}, newer than this secretmon knows")]
    TooNew(u32),
}

/// What a row is, in the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Run,
    Secret,
    Fingerprint,
    Identity,
    Reader,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Secret => "secret",
            Self::Fingerprint => "fingerprint",
            Self::Identity => "identity",
            Self::Reader => "reader",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Run,
            Self::Secret,
            Self::Fingerprint,
            Self::Identity,
            Self::Reader,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What the store acknowledged: a digest per row.
pub type Sent = HashMap<(Kind, String), i64>;

/// A change of the cursor once the store committed: the row's new digest,
/// or `None` when it was deleted.
pub type Ack = ((Kind, String), Option<i64>);

fn digest(text: &str) -> i64 {
    let d = Sha256::digest(text.as_bytes());
    i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn coarse(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(LAST_SEEN_RESOLUTION).unwrap_or(t)
}

/// Two-part keys in one cursor string.
fn pair(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

fn split_pair(key: &str) -> Option<(String, String)> {
    key.split_once('\0')
        .map(|(a, b)| (a.to_string(), b.to_string()))
}

/// The rows of `snapshot` and `runs` that differ from what the store
/// acknowledged (`sent`), and those it has that the ledger no longer has.
pub fn changes(snapshot: &Snapshot, runs: &[Run], sent: &Sent) -> (Batch, Vec<Ack>) {
    let mut batch = Batch::default();
    let mut acks = Vec::new();
    let mut present: HashSet<(Kind, String)> = HashSet::new();
    let mut consider = |kind: Kind, key: String, d: i64| -> bool {
        present.insert((kind, key.clone()));
        if sent.get(&(kind, key.clone())) == Some(&d) {
            return false;
        }
        acks.push(((kind, key), Some(d)));
        true
    };
    for run in runs {
        if consider(
            Kind::Run,
            to_ns(run.started).to_string(),
            digest(&format!("{run:?}")),
        ) {
            batch.runs.push(*run);
        }
    }
    for row in snapshot.secrets.values() {
        let d = digest(&format!(
            "{:?}|{}|{}|{:?}|{:?}",
            row.facts,
            row.first_seen,
            coarse(row.last_seen),
            row.removed,
            row.unwatched
        ));
        if consider(Kind::Secret, row.facts.id.clone(), d) {
            batch.secrets.push(row.clone());
        }
    }
    for ((id, fp), span) in &snapshot.fingerprints {
        let d = digest(&format!("{}|{}", span.first_seen, coarse(span.last_seen)));
        if consider(Kind::Fingerprint, pair(id, fp), d) {
            batch.fingerprints.push(((id.clone(), fp.clone()), *span));
        }
    }
    for row in snapshot.identities.values() {
        if consider(Kind::Identity, row.id.clone(), digest(&format!("{row:?}"))) {
            batch.identities.push(row.clone());
        }
    }
    for ((secret, who), row) in &snapshot.accesses {
        if consider(Kind::Reader, pair(secret, who), digest(&format!("{row:?}"))) {
            batch
                .readers
                .push(((secret.clone(), who.clone()), row.clone()));
        }
    }
    for (kind, key) in sent.keys() {
        if present.contains(&(*kind, key.clone())) {
            continue;
        }
        let d = &mut batch.deleted;
        match kind {
            // Runs stay: the store keeps when a host observed.
            Kind::Run => continue,
            Kind::Secret => d.secrets.push(key.clone()),
            Kind::Identity => d.identities.push(key.clone()),
            Kind::Fingerprint => d.fingerprints.extend(split_pair(key)),
            Kind::Reader => d.readers.extend(split_pair(key)),
        }
        acks.push(((*kind, key.clone()), None));
    }
    (batch, acks)
}

/// The ledger's file, read for its rows and written for the fleet's own
/// tables.
pub struct Local {
    ledger: Ledger,
    conn: rusqlite::Connection,
}

impl Local {
    /// The ledger in `state_dir`, which the agent has opened (and so
    /// created and migrated) first.
    pub fn open(state_dir: &Path) -> Result<Self, SyncError> {
        let ledger = Ledger::open_read_only(state_dir)?;
        let mut conn = rusqlite::Connection::open(ledger.path())?;
        conn.busy_timeout(Duration::from_secs(5))?;
        migrate_local(&mut conn)?;
        Ok(Self { ledger, conn })
    }

    pub fn snapshot(&self) -> Result<Snapshot, SyncError> {
        Ok(self.ledger.snapshot()?)
    }

    /// Record that the run that began at `started` is alive at `at`.
    pub fn record_run(&self, run: &Run) -> Result<(), SyncError> {
        self.conn.execute(
            "INSERT INTO fleet_run (started, alive, stopped, lost) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (started) DO UPDATE SET alive = max(alive, excluded.alive), \
             stopped = excluded.stopped, lost = excluded.lost",
            params![
                to_ns(run.started),
                to_ns(run.alive),
                run.stopped.map(to_ns),
                run.events_lost as i64
            ],
        )?;
        Ok(())
    }

    /// Every recorded run, oldest first.
    pub fn runs(&self) -> Result<Vec<Run>, SyncError> {
        let mut q = self
            .conn
            .prepare("SELECT started, alive, stopped, lost FROM fleet_run ORDER BY started")?;
        let rows = q.query_map([], |r| {
            Ok(Run {
                started: from_ns(r.get(0)?),
                alive: from_ns(r.get(1)?),
                stopped: r.get::<_, Option<i64>>(2)?.map(from_ns),
                events_lost: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What `store` acknowledged of host `host`.
    pub fn sent(&self, store: &str, host: &str) -> Result<Sent, SyncError> {
        let mut q = self
            .conn
            .prepare("SELECT kind, key, digest FROM fleet_sent WHERE store = ?1 AND host = ?2")?;
        let rows = q.query_map(params![store, host], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut sent = Sent::new();
        for row in rows {
            let (kind, key, d) = row?;
            if let Some(kind) = Kind::parse(&kind) {
                sent.insert((kind, key), d);
            }
        }
        Ok(sent)
    }

    /// Advance the cursor: the store committed `acks`.
    pub fn acknowledge(&mut self, store: &str, host: &str, acks: &[Ack]) -> Result<(), SyncError> {
        let tx = self.conn.transaction()?;
        for ((kind, key), d) in acks {
            match d {
                Some(d) => tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO fleet_sent (store, host, kind, key, digest) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![store, host, kind.as_str(), key, d])?,
                None => tx
                    .prepare_cached(
                        "DELETE FROM fleet_sent WHERE store = ?1 AND host = ?2 AND kind = ?3 \
                         AND key = ?4",
                    )?
                    .execute(params![store, host, kind.as_str(), key])?,
            };
        }
        tx.commit()?;
        Ok(())
    }
}

fn migrate_local(conn: &mut rusqlite::Connection) -> Result<(), SyncError> {
    let tx = conn.transaction()?;
    let found: u32 = tx
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [LOCAL_VERSION_KEY],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let known = LOCAL_MIGRATIONS.len() as u32;
    if found > known {
        return Err(SyncError::TooNew(found));
    }
    for sql in LOCAL_MIGRATIONS.iter().skip(found as usize) {
        tx.execute_batch(sql)?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![LOCAL_VERSION_KEY, known.to_string()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Who this host is to the fleet.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: String,
    /// The fleet key's id when fingerprints are keyed with it.
    pub fleet_key_id: Option<String>,
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub rows: usize,
}

/// One agent's syncs, from the first to the last.
pub struct Syncer {
    connection: Connection,
    who: Identity,
    local: Option<Local>,
    run: Run,
    /// Store id and what it acknowledged, once known.
    cursor: Option<(String, Sent)>,
    migrated: bool,
}

impl Syncer {
    /// A run that starts now; the local ledger in `state_dir` must exist.
    pub fn new(
        connection: Connection,
        who: Identity,
        state_dir: &Path,
        started: DateTime<Utc>,
    ) -> Result<Self, SyncError> {
        let local = Local::open(state_dir)?;
        let run = Run {
            started,
            alive: started,
            stopped: None,
            events_lost: 0,
        };
        local.record_run(&run)?;
        Ok(Self {
            connection,
            who,
            local: Some(local),
            run,
            cursor: None,
            migrated: false,
        })
    }

    /// Record that the agent is alive at `now` (stopped, when `stopping`)
    /// with `lost` events lost so far, then send what changed.
    pub async fn sync(
        &mut self,
        now: DateTime<Utc>,
        lost: u64,
        stopping: bool,
    ) -> Result<Synced, SyncError> {
        self.run.alive = self.run.alive.max(now);
        self.run.events_lost = lost;
        if stopping {
            self.run.stopped = Some(now);
        }
        let run = self.run;
        self.blocking(move |local| local.record_run(&run)).await?;
        let timeout = self.connection.timeout;
        match tokio::time::timeout(timeout, self.push(now)).await {
            Ok(result) => result,
            Err(_) => Err(SyncError::Timeout(timeout)),
        }
    }

    async fn push(&mut self, now: DateTime<Utc>) -> Result<Synced, SyncError> {
        let c = &self.connection;
        let mut store = Store::connect(&c.url, c.password.as_ref(), c.timeout).await?;
        if !self.migrated {
            store.migrate().await?;
            self.migrated = true;
        }
        let store_id = store.store_id.clone();
        if self.cursor.as_ref().is_none_or(|(id, _)| *id != store_id) {
            let (id, host) = (store_id.clone(), self.who.host.clone());
            let sent = self.blocking(move |l| l.sent(&id, &host)).await?;
            self.cursor = Some((store_id.clone(), sent));
        }
        let (snapshot, runs) = self.blocking(|l| Ok((l.snapshot()?, l.runs()?))).await?;
        let sent = &self.cursor.as_ref().expect("loaded above").1;
        let (batch, acks) = changes(&snapshot, &runs, sent);
        let beat = Heartbeat {
            host: self.who.host.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            fleet_key_id: self.who.fleet_key_id.clone(),
            observing_since: runs.first().map_or(self.run.started, |r| r.started),
            at: now,
            interval: self.connection.interval,
            timeout: self.connection.timeout,
            events_lost: self.run.events_lost,
        };
        store.push(&beat, &batch).await?;
        let rows = batch.rows();
        let (id, host) = (store_id, self.who.host.clone());
        let recorded = acks.clone();
        self.blocking(move |l| l.acknowledge(&id, &host, &recorded))
            .await?;
        if let Some((_, sent)) = &mut self.cursor {
            for (key, d) in acks {
                match d {
                    Some(d) => sent.insert(key, d),
                    None => sent.remove(&key),
                };
            }
        }
        Ok(Synced { rows })
    }

    /// Run `f` on the local ledger off the async thread.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Local) -> Result<T, SyncError> + Send + 'static,
    ) -> Result<T, SyncError> {
        let mut local = self.local.take().expect("the local ledger is put back");
        let (local, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut local);
            (local, result)
        })
        .await
        .expect("the fleet's ledger work does not panic");
        self.local = Some(local);
        result
    }
}

/// The running sync task, as the agent holds it.
pub struct Handle {
    lost: watch::Sender<u64>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Handle {
    /// The kernel has dropped `total` events in this run.
    pub fn lost(&self, total: u64) {
        self.lost.send_replace(total);
    }

    /// Sync one last time (the ledger is closed and complete), then stop.
    pub async fn finish(self) {
        if self.stop.send(()).is_err() {
            return;
        }
        // The last sync has its own timeout; this one bounds the rest.
        let _ = tokio::time::timeout(self.timeout * 2, self.task).await;
    }
}

/// Start syncing the ledger in `state_dir` every `connection.interval`.
pub fn spawn(connection: Connection, who: Identity, state_dir: &Path) -> Result<Handle, SyncError> {
    let url = connection.url.to_string();
    let interval = connection.interval;
    let timeout = connection.timeout;
    let syncer = Syncer::new(connection, who, state_dir, Utc::now())?;
    let (lost_tx, lost) = watch::channel(0);
    let (stop_tx, stop) = oneshot::channel();
    let task = tokio::spawn(run(syncer, url, interval, lost, stop));
    Ok(Handle {
        lost: lost_tx,
        stop: stop_tx,
        task,
        timeout,
    })
}

async fn run(
    mut syncer: Syncer,
    url: String,
    interval: Duration,
    lost: watch::Receiver<u64>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut notices = Notices::new(url);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let started = Instant::now();
        let lost_now = *lost.borrow();
        let result = syncer.sync(Utc::now(), lost_now, stopping).await;
        notices.after(&result, started.elapsed());
        if stopping {
            return;
        }
    }
}

/// One line when the store goes away, one when it is back: never a line
/// per failed sync.
struct Notices {
    url: String,
    down: bool,
}

impl Notices {
    fn new(url: String) -> Self {
        Self { url, down: false }
    }

    fn after(&mut self, result: &Result<Synced, SyncError>, took: Duration) {
        match result {
            Ok(s) if self.down => {
                self.down = false;
                tracing::info!(
                    "fleet store {} reachable again: {} rows caught up",
                    self.url,
                    s.rows
                );
            }
            Ok(s) => tracing::debug!("fleet sync: {} rows in {took:?}", s.rows),
            Err(e) if !self.down => {
                self.down = true;
                tracing::warn!(
                    "fleet store unreachable: {}; the ledger keeps everything and a later sync catches up",
                    crate::errors::error_text(e)
                );
            }
            Err(e) => tracing::debug!("fleet sync failed again: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Observation, OpenMode, SecretFacts, Seen};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::new(t(0));
        s.observe_secret(
            SecretFacts {
                id: "sec-a".into(),
                path: "/srv/a/.env".into(),
                secret_type: "env_file".into(),
                fingerprint: Some("hmac-sha256:aa".into()),
                lifetime: Some("static".into()),
                hint: None,
                uid: Some(0),
                gid: Some(0),
                mode: Some(0o600),
                mtime: Some(t(0)),
                expires: None,
            },
            t(0),
        );
        s
    }

    fn read(s: &mut Snapshot, at: i64) {
        s.observe(&Observation::Read {
            at: t(at),
            secret_id: "sec-a".into(),
            who: Seen {
                id: "systemd:app.service".into(),
                kind: "systemd".into(),
                spiffe_id: "spiffe://td/app".into(),
                unit: Some("app.service".into()),
                user_manager: false,
                cgroup_id: 1,
                exe: Some("/usr/bin/app".into()),
                human: false,
            },
            pid: 1,
            uid: 0,
            count: 1,
            denied: false,
            mode: OpenMode::Read,
        });
    }

    fn acknowledge(sent: &mut Sent, acks: Vec<Ack>) {
        for (k, d) in acks {
            match d {
                Some(d) => sent.insert(k, d),
                None => sent.remove(&k),
            };
        }
    }

    #[test]
    fn only_what_changed_since_the_last_acknowledged_sync_is_sent() {
        let mut s = snapshot();
        read(&mut s, 10);
        let mut sent = Sent::new();
        let (first, acks) = changes(&s, &[], &sent);
        assert_eq!(
            (
                first.secrets.len(),
                first.fingerprints.len(),
                first.identities.len(),
                first.readers.len()
            ),
            (1, 1, 1, 1)
        );
        // Not acknowledged (the store failed): everything again.
        assert_eq!(changes(&s, &[], &sent).0, first);
        acknowledge(&mut sent, acks);
        assert_eq!(changes(&s, &[], &sent).0.rows(), 0, "nothing new");

        // A read changes its reader and identity rows, with the totals.
        read(&mut s, 20);
        let (second, acks) = changes(&s, &[], &sent);
        assert_eq!(second.readers.len(), 1);
        assert_eq!(second.readers[0].1.count, 2, "totals, never deltas");
        assert!(second.secrets.is_empty());
        acknowledge(&mut sent, acks);

        // The inventory listing the secret again within the hour is no change.
        s.observe_secret(s.secrets["sec-a"].facts.clone(), t(30));
        assert_eq!(changes(&s, &[], &sent).0.rows(), 0);
        s.observe_secret(s.secrets["sec-a"].facts.clone(), t(2 * 3600));
        let (later, acks) = changes(&s, &[], &sent);
        assert_eq!((later.secrets.len(), later.fingerprints.len()), (1, 1));
        acknowledge(&mut sent, acks);

        // Pruned locally: deleted in the store.
        s.prune(t(10 * 86_400));
        let (pruned, acks) = changes(&s, &[], &sent);
        assert_eq!(
            pruned.deleted.readers,
            [("sec-a".into(), "systemd:app.service".into())]
        );
        assert_eq!(pruned.deleted.identities, ["systemd:app.service"]);
        acknowledge(&mut sent, acks);
        assert_eq!(changes(&s, &[], &sent).0.rows(), 0);
    }

    #[test]
    fn runs_are_sent_when_they_move_and_never_deleted() {
        let s = Snapshot::new(t(0));
        let mut run = Run {
            started: t(0),
            alive: t(0),
            stopped: None,
            events_lost: 0,
        };
        let mut sent = Sent::new();
        let (b, acks) = changes(&s, &[run], &sent);
        assert_eq!(b.runs, [run]);
        acknowledge(&mut sent, acks);
        run.alive = t(30);
        let (b, acks) = changes(&s, &[run], &sent);
        assert_eq!(b.runs, [run]);
        acknowledge(&mut sent, acks);
        let (b, _) = changes(&s, &[], &sent);
        assert_eq!(b.rows(), 0);
    }

    #[test]
    fn the_cursor_and_runs_survive_in_the_ledger_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(Ledger::open(dir.path()).unwrap());
        let mut local = Local::open(dir.path()).unwrap();
        let run = Run {
            started: t(0),
            alive: t(5),
            stopped: None,
            events_lost: 3,
        };
        local.record_run(&run).unwrap();
        // An older "alive" never moves it back.
        local.record_run(&Run { alive: t(1), ..run }).unwrap();
        let acks = vec![
            ((Kind::Secret, "sec-a".to_string()), Some(7)),
            ((Kind::Reader, pair("sec-a", "user:x")), Some(9)),
        ];
        local.acknowledge("store-1", "web-1", &acks).unwrap();
        local
            .acknowledge(
                "store-1",
                "web-1",
                &[((Kind::Secret, "sec-a".into()), None)],
            )
            .unwrap();
        drop(local);
        let local = Local::open(dir.path()).unwrap();
        assert_eq!(local.runs().unwrap(), [run]);
        let sent = local.sent("store-1", "web-1").unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[&(Kind::Reader, pair("sec-a", "user:x"))], 9);
        assert!(
            local.sent("store-2", "web-1").unwrap().is_empty(),
            "per store"
        );
        assert!(
            local.sent("store-1", "web-2").unwrap().is_empty(),
            "per host"
        );
        // The ledger itself still opens: its schema is untouched.
        assert!(Ledger::open_read_only(dir.path()).is_ok());
    }
}
