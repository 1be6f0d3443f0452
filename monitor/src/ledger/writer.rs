//! The ledger's writer: a thread of its own that commits rows in batches,
//! so that SQLite never runs on the event path. Sending never blocks: when
//! the queue is full the row is dropped and counted, and since rows carry
//! cumulative state the next change of the same row makes up for it.
//!
//! A batch that fails to commit (a full disk, a read-only remount) is kept
//! and retried with backoff, taking in what arrives meanwhile (a later
//! change of a row replaces the kept one), until a commit succeeds. At
//! close it is tried for a few seconds more; what still fails is counted
//! as lost.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Ledger, LedgerError, Row};

/// Where batches are committed: the ledger, or in tests one that fails.
pub trait Store: Send + 'static {
    /// Write `rows` in one transaction, all or nothing.
    fn write(&mut self, rows: &[Row]) -> Result<(), LedgerError>;
}

impl Store for Ledger {
    fn write(&mut self, rows: &[Row]) -> Result<(), LedgerError> {
        Ledger::write(self, rows)
    }
}

/// How the writer batches and retries.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Rows the queue holds before sends are dropped.
    pub capacity: usize,
    /// A batch is committed once it holds this many rows...
    pub max_rows: usize,
    /// ...or this long after its first row arrived.
    pub max_delay: Duration,
    /// The wait after a failed commit, doubled after each further failure
    /// up to `max_retry`.
    pub min_retry: Duration,
    pub max_retry: Duration,
    /// How long the last batch is retried at close.
    pub close_grace: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            max_rows: 5_000,
            max_delay: Duration::from_secs(1),
            min_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            close_grace: Duration::from_secs(5),
        }
    }
}

/// What the writer did, for the agent's stop message.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct WriterStats {
    /// Rows committed, after merging changes of the same row in a batch.
    pub rows: u64,
    pub batches: u64,
    /// Rows lost because the queue was full or the writer had stopped.
    pub dropped: u64,
    /// Commits that failed (each was retried).
    pub failed: u64,
    /// Rows never committed: the last batch still failed at close.
    pub lost: u64,
    /// Time spent in commits.
    pub busy: Duration,
}

pub struct Writer {
    tx: SyncSender<Row>,
    dropped: Arc<AtomicU64>,
    thread: JoinHandle<WriterStats>,
}

impl Writer {
    pub fn spawn(store: impl Store, batching: Batching) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(batching.capacity);
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(store, &rx, batching))?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            thread,
        })
    }

    /// Queue `row`; never blocks.
    pub fn send(&self, row: Row) {
        match self.tx.try_send(row) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Commit what is queued and stop.
    pub fn close(self) -> WriterStats {
        let dropped = self.dropped.load(Ordering::Relaxed);
        drop(self.tx);
        let mut stats = self.thread.join().unwrap_or_else(|_| {
            tracing::error!("the ledger writer panicked; its last batch is lost");
            WriterStats::default()
        });
        stats.dropped += dropped;
        stats
    }
}

/// Identifies a row, so that later changes of it in a batch replace the
/// earlier ones.
#[derive(Debug, PartialEq, Eq, Hash)]
enum RowKey {
    Meta(String),
    Secret(String),
    Fingerprint(String, String),
    Identity(String),
    Access(String, String),
    Exposure(&'static str, String, String),
    Fired(String),
}

fn key(row: &Row) -> Option<RowKey> {
    Some(match row {
        Row::Meta(k, _) => RowKey::Meta(k.clone()),
        Row::Secret(s) => RowKey::Secret(s.facts.id.clone()),
        Row::Fingerprint(id, fp, _) => RowKey::Fingerprint(id.clone(), fp.clone()),
        Row::Identity(i) => RowKey::Identity(i.id.clone()),
        Row::Access((s, i), _) => RowKey::Access(s.clone(), i.clone()),
        Row::Exposure((k, s, i), _) => RowKey::Exposure(k.as_str(), s.clone(), i.clone()),
        Row::Fired(f) => RowKey::Fired(f.key.clone()),
        Row::Prune(_) => return None,
    })
}

/// Rows of one transaction, each row once, in order.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    index: HashMap<RowKey, usize>,
}

impl Batch {
    fn push(&mut self, row: Row) {
        match key(&row) {
            Some(k) => match self.index.get(&k) {
                Some(&i) => self.rows[i] = row,
                None => {
                    self.index.insert(k, self.rows.len());
                    self.rows.push(row);
                }
            },
            // Rows after a prune must be written after it.
            None => {
                self.index.clear();
                self.rows.push(row);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The wait before the next attempt while commits fail.
struct Backoff {
    min: Duration,
    max: Duration,
    /// Failures in a row.
    failures: u32,
}

impl Backoff {
    fn wait(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let doubled = self.min.saturating_mul(1 << (self.failures - 1).min(16));
        doubled.min(self.max)
    }
}

fn run(mut store: impl Store, rx: &mpsc::Receiver<Row>, batching: Batching) -> WriterStats {
    let mut stats = WriterStats::default();
    let mut batch = Batch::default();
    let mut backoff = Backoff {
        min: batching.min_retry,
        max: batching.max_retry,
        failures: 0,
    };
    // Set once the agent closed the queue: from then on only the kept
    // batch is retried, until this deadline.
    let mut closing: Option<Instant> = None;
    loop {
        if closing.is_none() {
            if batch.is_empty() {
                // Blocks until the first row of a batch, or until the agent
                // closes.
                match rx.recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            // While commits fail, rows keep arriving and merge into the
            // kept batch until the next attempt.
            let deadline = Instant::now() + batching.max_delay.max(backoff.wait());
            let mut received = batch.rows.len();
            while received < batching.max_rows || backoff.failures > 0 {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(row) => {
                        batch.push(row);
                        received += 1;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closing = Some(Instant::now() + batching.close_grace);
                        break;
                    }
                }
            }
        } else {
            let left = closing.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            std::thread::sleep(backoff.wait().min(left));
        }
        let n = batch.rows.len() as u64;
        let started = Instant::now();
        let result = store.write(&batch.rows);
        stats.busy += started.elapsed();
        match result {
            Ok(()) => {
                if backoff.failures > 0 {
                    tracing::warn!(
                        "ledger: committed again after {} failed attempts; nothing was lost",
                        backoff.failures
                    );
                }
                stats.rows += n;
                stats.batches += 1;
                batch = Batch::default();
                backoff.failures = 0;
                if closing.is_some() {
                    break;
                }
            }
            Err(e) => {
                stats.failed += 1;
                backoff.failures += 1;
                if backoff.failures == 1 {
                    tracing::warn!(
                        "ledger: a batch of {n} rows was not written ({e}); kept and retried"
                    );
                }
                if closing.is_some_and(|deadline| Instant::now() >= deadline) {
                    tracing::error!(
                        "ledger: {n} rows are lost: the last batch still fails at stop ({e})"
                    );
                    stats.lost = n;
                    break;
                }
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::ledger::{Observation, OpenMode, Seen};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn read(i: u64) -> Observation {
        Observation::Read {
            at: at(i as i64),
            // 100 secrets, 10 identities: 1000 distinct rows.
            secret_id: format!("sec-{}", i % 100),
            who: Seen {
                id: format!("user:u{}:/bin/x", (i / 100) % 10),
                kind: "user".into(),
                spiffe_id: "spiffe://td/x".into(),
                unit: None,
                user_manager: false,
                cgroup_id: 1,
                exe: Some("/bin/x".into()),
                human: false,
            },
            pid: i as u32,
            uid: 0,
            count: 1,
            denied: false,
            mode: OpenMode::Read,
        }
    }

    /// The ledger, with its database capped at `pages` pages while the cap
    /// is not 0: a disk that is full, to SQLite exactly as a real one.
    struct Cappable {
        ledger: Ledger,
        pages: Arc<AtomicU64>,
    }

    impl Store for Cappable {
        fn write(&mut self, rows: &[Row]) -> Result<(), LedgerError> {
            let cap = match self.pages.load(Ordering::SeqCst) {
                0 => i64::from(u32::MAX),
                n => n as i64,
            };
            self.ledger
                .conn
                .pragma_update(None, "max_page_count", cap)?;
            self.ledger.write(rows)
        }
    }

    fn pages(ledger: &Ledger) -> u64 {
        ledger
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    fn quick() -> Batching {
        Batching {
            max_delay: Duration::from_millis(5),
            min_retry: Duration::from_millis(5),
            max_retry: Duration::from_millis(40),
            close_grace: Duration::from_millis(200),
            ..Batching::default()
        }
    }

    /// A full disk: the batch is kept and retried, rows that arrive
    /// meanwhile join it, and once there is room again nothing is missing.
    #[test]
    fn a_failed_commit_is_retried_until_it_succeeds_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut mem = ledger.snapshot().unwrap();
        let cap = Arc::new(AtomicU64::new(pages(&ledger)));
        let writer = Writer::spawn(
            Cappable {
                ledger,
                pages: cap.clone(),
            },
            quick(),
        )
        .unwrap();
        for i in 0..3_000 {
            for row in mem.observe(&read(i)) {
                writer.send(row);
            }
        }
        // Some attempts fail on the full disk while reads keep coming.
        std::thread::sleep(Duration::from_millis(150));
        for i in 3_000..4_000 {
            for row in mem.observe(&read(i)) {
                writer.send(row);
            }
        }
        cap.store(0, Ordering::SeqCst);
        let stats = writer.close();
        assert!(stats.failed > 0, "{stats:?}");
        assert_eq!((stats.dropped, stats.lost), (0, 0), "{stats:?}");
        let disk = Ledger::open_read_only(dir.path())
            .unwrap()
            .snapshot()
            .unwrap();
        assert_eq!(disk, mem);
        let total: u64 = disk.accesses.values().map(|a| a.count).sum();
        assert_eq!(total, 4_000);
    }

    /// A disk that stays full: the agent still stops, within the grace
    /// period, and says how many rows it could not keep.
    #[test]
    fn a_commit_that_never_succeeds_is_counted_as_lost_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut mem = ledger.snapshot().unwrap();
        let cap = Arc::new(AtomicU64::new(pages(&ledger)));
        let writer = Writer::spawn(Cappable { ledger, pages: cap }, quick()).unwrap();
        for i in 0..2_000 {
            for row in mem.observe(&read(i)) {
                writer.send(row);
            }
        }
        let started = Instant::now();
        let stats = writer.close();
        assert!(started.elapsed() < Duration::from_secs(5), "{stats:?}");
        assert!(stats.failed > 1, "{stats:?}");
        assert_eq!(stats.rows, 0, "{stats:?}");
        assert_eq!(
            stats.lost, 1_010,
            "1000 accesses and 10 identities: {stats:?}"
        );
        assert_eq!(
            Ledger::open_read_only(dir.path())
                .unwrap()
                .access_rows()
                .unwrap(),
            0
        );
    }

    #[test]
    fn batches_merge_rows_and_commit_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut mem = ledger.snapshot().unwrap();
        let writer = Writer::spawn(ledger, Batching::default()).unwrap();
        const READS: u64 = 20_000;
        let started = Instant::now();
        for i in 0..READS {
            for row in mem.observe(&read(i)) {
                writer.send(row);
            }
        }
        let stats = writer.close();
        let elapsed = started.elapsed();
        assert_eq!(stats.dropped, 0);
        assert_eq!(stats.failed, 0);
        eprintln!(
            "{READS} reads → {} rows in {} batches, {:?} committing, {:?} in all",
            stats.rows, stats.batches, stats.busy, elapsed
        );
        let ledger = Ledger::open_read_only(dir.path()).unwrap();
        assert_eq!(ledger.access_rows().unwrap(), 1000);
        let disk = ledger.snapshot().unwrap();
        assert_eq!(disk, mem);
        let total: u64 = disk.accesses.values().map(|a| a.count).sum();
        assert_eq!(total, READS);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut mem = ledger.snapshot().unwrap();
        let batching = Batching {
            capacity: 1,
            max_rows: 1,
            max_delay: Duration::from_millis(1),
            ..Batching::default()
        };
        let writer = Writer::spawn(ledger, batching).unwrap();
        for i in 0..10_000 {
            for row in mem.observe(&read(i)) {
                writer.send(row);
            }
        }
        let stats = writer.close();
        assert!(stats.dropped > 0, "{stats:?}");
        assert_eq!(stats.rows + stats.dropped, 20_000, "{stats:?}");
    }
}
