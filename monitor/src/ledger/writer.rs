//! The ledger's writer: a thread of its own that commits rows in batches,
//! so that SQLite never runs on the event path. Sending never blocks: when
//! the queue is full the row is dropped and counted, and since rows carry
//! cumulative state the next change of the same row makes up for it.

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

use super::{Ledger, Row};

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Rows the queue holds before sends are dropped.
    pub capacity: usize,
    /// A batch is committed once it holds this many rows...
    pub max_rows: usize,
    /// ...or this long after its first row arrived.
    pub max_delay: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            max_rows: 5_000,
            max_delay: Duration::from_secs(1),
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
    /// Rows in batches that failed to commit.
    pub failed: u64,
    /// Time spent in commits.
    pub busy: Duration,
}

pub struct Writer {
    tx: SyncSender<Row>,
    dropped: Arc<AtomicU64>,
    thread: JoinHandle<WriterStats>,
}

impl Writer {
    pub fn spawn(ledger: Ledger, batching: Batching) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(batching.capacity);
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(ledger, &rx, batching))?;
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
}

fn run(mut ledger: Ledger, rx: &mpsc::Receiver<Row>, batching: Batching) -> WriterStats {
    let mut stats = WriterStats::default();
    // Blocks until the first row of a batch, or until the agent closes.
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + batching.max_delay;
        let mut batch = Batch::default();
        batch.push(first);
        let mut received = 1;
        while received < batching.max_rows {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(row) => {
                    batch.push(row);
                    received += 1;
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let n = batch.rows.len() as u64;
        let started = Instant::now();
        match ledger.write(&batch.rows) {
            Ok(()) => {
                stats.rows += n;
                stats.batches += 1;
            }
            Err(e) => {
                tracing::warn!("ledger: a batch of {n} rows was not written: {e}");
                stats.failed += n;
            }
        }
        stats.busy += started.elapsed();
        crate::metrics::LEDGER_COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
    }
    stats
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::ledger::{Observation, Seen};

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
        }
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
