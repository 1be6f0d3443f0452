//! What a fleet report reads from the store: every host with its runs, the
//! copies of secrets present in the window, and who read them in it. Plain
//! data, so that the rules are pure functions of it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;

use super::store::{Run, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub name: String,
    pub agent_version: String,
    /// The fleet key's id when its fingerprints are keyed with it.
    pub fleet_key_id: Option<String>,
    pub last_sync: DateTime<Utc>,
    /// How often it syncs: a gap between runs shorter than this is none.
    pub interval: Duration,
    /// How long one of its syncs may take.
    pub timeout: Duration,
    /// Its runs that reach into the window, oldest first.
    pub runs: Vec<Run>,
}

impl HostView {
    /// How long after its last heartbeat a live agent's next one may land:
    /// an interval to the next sync, and that sync's time to commit. A
    /// run is taken as observing this long past its last heartbeat.
    pub fn heartbeat_due(&self) -> Duration {
        self.interval + self.timeout
    }
}

/// One secret file on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyView {
    /// Index into [`FleetView::hosts`].
    pub host: usize,
    pub id: String,
    pub path: String,
    pub secret_type: String,
    pub fingerprint: Option<String>,
    pub lifetime: Option<String>,
    pub hint: Option<String>,
    pub mode: Option<u32>,
    pub first_seen: DateTime<Utc>,
    pub removed: Option<DateTime<Utc>>,
    /// Since when no agent watches it, its file still there.
    pub unwatched: Option<DateTime<Utc>>,
    pub mtime: Option<DateTime<Utc>>,
    /// When this host first saw its current value.
    pub value_since: Option<DateTime<Utc>>,
}

/// Reads of one copy by one identity, in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderView {
    /// Index into [`FleetView::copies`].
    pub copy: usize,
    /// A fleet has millions of readers and few identities: each name is
    /// held once.
    pub identity: Arc<str>,
    pub kind: Arc<str>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub reads: u64,
    pub human: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetView {
    pub hosts: Vec<HostView>,
    pub copies: Vec<CopyView>,
    pub readers: Vec<ReaderView>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Load what matters for the window that starts at `since`.
pub async fn load(store: &Store, since: DateTime<Utc>) -> Result<FleetView, StoreError> {
    let c = store.client();
    let mut view = FleetView::default();
    let mut host_index: HashMap<i32, usize> = HashMap::new();
    for row in c
        .query(
            "SELECT id, name, agent_version, fleet_key_id, last_sync, sync_interval_ms, \
             sync_timeout_ms FROM fleet_host ORDER BY name",
            &[],
        )
        .await?
    {
        host_index.insert(row.get(0), view.hosts.len());
        view.hosts.push(HostView {
            name: row.get(1),
            agent_version: row.get(2),
            fleet_key_id: row.get(3),
            last_sync: row.get(4),
            interval: Duration::from_millis(row.get::<_, i64>(5).max(0) as u64),
            timeout: Duration::from_millis(row.get::<_, i64>(6).max(0) as u64),
            runs: Vec::new(),
        });
    }
    // A run reaches into the window when it was alive in it, or shortly
    // before it (it may have gone on unreported).
    let earliest = view
        .hosts
        .iter()
        .map(|h| since - chrono::Duration::milliseconds(ms(h.heartbeat_due())))
        .min()
        .unwrap_or(since);
    for row in c
        .query(
            "SELECT host_id, started, alive, stopped, events_lost FROM fleet_run \
             WHERE alive >= $1 ORDER BY host_id, started",
            &[&earliest],
        )
        .await?
    {
        if let Some(&h) = host_index.get(&row.get::<_, i32>(0)) {
            view.hosts[h].runs.push(Run {
                started: row.get(1),
                alive: row.get(2),
                stopped: row.get(3),
                events_lost: row.get::<_, i64>(4).max(0) as u64,
            });
        }
    }
    // host id → secret id → index into the copies. Each copy's value is
    // joined by hashing both tables: `OFFSET 0` keeps the planner from an
    // index probe per copy (2.1 s for 300,000 copies, against 1.0 s).
    let mut copy_index: HashMap<i32, HashMap<String, usize>> = HashMap::new();
    for row in c
        .query(
            "SELECT s.host_id, s.id, s.path, s.type, s.fingerprint, s.lifetime, s.hint, s.mode, \
             s.first_seen, s.removed, s.mtime, f.first_seen, s.unwatched \
             FROM fleet_secret s LEFT JOIN \
             (SELECT host_id, secret_id, fingerprint, first_seen FROM fleet_fingerprint OFFSET 0) f \
             ON f.host_id = s.host_id AND f.secret_id = s.id AND f.fingerprint = s.fingerprint \
             WHERE s.removed IS NULL OR s.removed >= $1",
            &[&since],
        )
        .await?
    {
        let host_id: i32 = row.get(0);
        let Some(&host) = host_index.get(&host_id) else {
            continue;
        };
        let id: String = row.get(1);
        copy_index
            .entry(host_id)
            .or_default()
            .insert(id.clone(), view.copies.len());
        view.copies.push(CopyView {
            host,
            id,
            path: row.get(2),
            secret_type: row.get(3),
            fingerprint: row.get(4),
            lifetime: row.get(5),
            hint: row.get(6),
            mode: row.get::<_, Option<i32>>(7).map(|m| m as u32),
            first_seen: row.get(8),
            removed: row.get(9),
            mtime: row.get(10),
            value_since: row.get(11),
            unwatched: row.get(12),
        });
    }
    // Few identities per host: their kinds are looked up here rather than
    // joined to each of the millions of reader rows (half the query's time).
    let mut names = Names::default();
    let mut kinds: HashMap<i32, HashMap<String, Arc<str>>> = HashMap::new();
    for row in c
        .query("SELECT host_id, id, kind FROM fleet_identity", &[])
        .await?
    {
        let kind = names.get(row.get(2));
        kinds
            .entry(row.get(0))
            .or_default()
            .insert(row.get(1), kind);
    }
    let no_kind = names.get("");
    // Millions of rows on a large fleet: streamed, never all in memory;
    // only reads count (an identity that only wrote is no reader).
    let readers = c
        .query_raw(
            "SELECT host_id, secret_id, identity, first_seen, last_seen, reads, human \
             FROM fleet_reader WHERE last_seen >= $1 AND reads > 0",
            [&since],
        )
        .await?;
    let mut readers = std::pin::pin!(readers);
    while let Some(row) = readers.try_next().await? {
        let host_id: i32 = row.get(0);
        let Some(&copy) = copy_index
            .get(&host_id)
            .and_then(|by_id| by_id.get(row.get::<_, &str>(1)))
        else {
            continue;
        };
        let identity: &str = row.get(2);
        let kind = kinds
            .get(&host_id)
            .and_then(|by_id| by_id.get(identity))
            .unwrap_or(&no_kind)
            .clone();
        view.readers.push(ReaderView {
            copy,
            identity: names.get(identity),
            kind,
            first_seen: row.get(3),
            last_seen: row.get(4),
            reads: row.get::<_, i64>(5).max(0) as u64,
            human: row.get::<_, i64>(6).max(0) as u64,
        });
    }
    Ok(view)
}

/// Each distinct name once.
#[derive(Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(held) = self.0.get(name) {
            return held.clone();
        }
        let held: Arc<str> = name.into();
        self.0.insert(held.clone());
        held
    }
}
