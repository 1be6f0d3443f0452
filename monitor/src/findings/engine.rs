//! The agent's side of the ledger and the rules: observations update the
//! in-memory snapshot and go to the ledger writer; the rules run over the
//! snapshot, and a finding is emitted the first time it holds, once, across
//! restarts too (the ledger keeps what fired).

use std::{collections::HashSet, path::Path, time::Duration};

use chrono::{DateTime, Utc};

use super::{Finding, Settings, liveness::Liveness, rules};
use crate::{
    inventory::Inventory,
    ledger::{
        self, Batching, Fired, Ledger, LedgerError, Observation, Row, Snapshot, StateLock, Writer,
        WriterStats,
        facts::{file_exists, secret_facts},
        to_ns,
    },
    watch_map::{self, Overflow},
};

pub use super::rules::Scope;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot start the ledger writer: {}", crate::errors::error_text(.0))]
    Writer(std::io::Error),
}

pub struct Engine {
    snapshot: Snapshot,
    settings: Settings,
    writer: Writer,
    retention: Duration,
    /// Something changed since the event rules last ran.
    dirty: bool,
    last_prune: DateTime<Utc>,
    /// Held until the engine is dropped, after the writer's last commit.
    _lock: StateLock,
}

impl Engine {
    /// Open the ledger in `state_dir`, whose `lock` the agent holds (one
    /// agent per ledger), record the settings for `report`, take the
    /// inventory of `watch` (fingerprinted with the key whose id is
    /// `key_id`) and prune what retention expired. Call before the probes
    /// watch anything: fingerprinting reads the files.
    pub fn start(
        state_dir: &Path,
        lock: StateLock,
        settings: Settings,
        retention: Duration,
        watch: &Inventory,
        key_id: &str,
    ) -> Result<Self, EngineError> {
        let mut ledger = Ledger::open(state_dir)?;
        let mut snapshot = ledger.snapshot()?;
        let now = Utc::now();
        let mut rows = vec![settings_row(&settings)];
        rows.extend(key_rows(&ledger, &mut snapshot, key_id, now)?);
        rows.push(snapshot.prune(crate::bounded::before(now, retention)));
        // Written before the writer starts, so `report` sees the inventory
        // as soon as the agent says it started.
        ledger.write(&rows)?;
        let writer = Writer::spawn(ledger, Batching::default()).map_err(EngineError::Writer)?;
        let mut engine = Self {
            snapshot,
            settings,
            writer,
            retention,
            dirty: false,
            last_prune: now,
            _lock: lock,
        };
        engine.refresh(watch, now);
        Ok(engine)
    }

    /// A reloaded configuration's windows, policy and retention, from now
    /// on; recorded for `report` as at start.
    pub fn reconfigure(&mut self, settings: Settings, retention: Duration) {
        self.writer.send(settings_row(&settings));
        self.settings = settings;
        self.retention = retention;
        self.dirty = true;
    }

    pub fn observe(&mut self, o: &Observation) {
        for row in self.snapshot.observe(o) {
            self.writer.send(row);
        }
        self.dirty = true;
    }

    /// Take the inventory again: its facts (mode, owner, a rotation) for
    /// the files it lists. A secret of the ledger it does not list is
    /// `removed` when its file is gone, and `unwatched` while the file is
    /// still there: this run may watch other paths than the one that found
    /// it, which says nothing about the file.
    pub fn refresh(&mut self, watch: &Inventory, now: DateTime<Utc>) {
        let mut present = HashSet::new();
        for record in watch.records() {
            present.insert(record.id.as_str());
            for row in self.snapshot.observe_secret(secret_facts(record), now) {
                self.writer.send(row);
            }
        }
        let unlisted: Vec<(String, String)> = self
            .snapshot
            .secrets
            .values()
            .filter(|r| r.removed.is_none() && !present.contains(r.facts.id.as_str()))
            .map(|r| (r.facts.id.clone(), r.facts.path.clone()))
            .collect();
        for (id, path) in unlisted {
            let exists = file_exists(Path::new(&path));
            for row in self.snapshot.secret_gone(&id, exists, now) {
                self.writer.send(row);
            }
        }
        self.dirty = true;
    }

    /// Mark identities whose workload left the host.
    pub fn check_liveness(&mut self, now: DateTime<Utc>) {
        let mut live = Liveness::of_host();
        let gone: Vec<String> = self
            .snapshot
            .identities
            .values()
            .filter(|i| i.gone_since.is_none() && live.gone(i))
            .map(|i| i.id.clone())
            .collect();
        for id in gone {
            for row in self.snapshot.identity_gone(&id, now) {
                self.writer.send(row);
            }
        }
    }

    /// Delete what retention expired, once a day.
    pub fn prune_daily(&mut self, now: DateTime<Utc>) {
        const DAY: chrono::TimeDelta = chrono::TimeDelta::days(1);
        if now - self.last_prune < DAY {
            return;
        }
        let row = self
            .snapshot
            .prune(crate::bounded::before(now, self.retention));
        self.writer.send(row);
        self.last_prune = now;
    }

    /// Findings that hold now and have not fired before. `Scope::Events`
    /// does nothing when nothing was observed since the last run.
    pub fn check(&mut self, now: DateTime<Utc>, scope: Scope) -> Vec<Finding> {
        if scope == Scope::Events && !self.dirty {
            return Vec::new();
        }
        self.dirty = false;
        let found = rules::evaluate(&self.snapshot, &self.settings, now, scope);
        self.fire_new(found, now)
    }

    /// Findings the agent raises itself (the watch map overflowing):
    /// emitted the first time they hold, as the rules' are.
    pub fn raise(&mut self, found: Vec<Finding>, now: DateTime<Utc>) -> Vec<Finding> {
        self.fire_new(found, now)
    }

    /// Leave the watch map's overflow in the ledger for `report`.
    pub fn record_overflow(&mut self, overflow: &Overflow) {
        if let Ok(json) = serde_json::to_string(overflow) {
            self.writer
                .send(Row::Meta(watch_map::LEDGER_META.into(), json));
        }
    }

    /// Those of `found` that have not fired before, recorded as fired.
    fn fire_new(&mut self, found: Vec<Finding>, now: DateTime<Utc>) -> Vec<Finding> {
        let mut new = Vec::new();
        for f in found {
            if self.snapshot.fired.contains_key(&f.id) {
                continue;
            }
            let row = self.snapshot.fire(Fired {
                key: f.id.clone(),
                finding_type: f.finding_type.as_str().into(),
                subject: f.subject.clone(),
                at: now,
            });
            self.writer.send(row);
            new.push(f);
        }
        new
    }

    /// Commit what is queued and close the ledger.
    pub fn close(self) -> WriterStats {
        self.writer.close()
    }
}

/// The settings `report` reads back from the ledger.
fn settings_row(settings: &Settings) -> Row {
    Row::Meta(
        "settings".into(),
        serde_json::to_string(settings).expect("settings serialize"),
    )
}

/// The rows that record which fingerprint key the ledger's fingerprints
/// are made with. A key that changed (a deleted `fingerprint.key` made
/// anew, a fleet key configured) makes every fingerprint new without any
/// value changing: the ledger notes when, so that no rotation is claimed
/// across it, and says so.
fn key_rows(
    ledger: &Ledger,
    snapshot: &mut Snapshot,
    key_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Row>, LedgerError> {
    let id_row = Row::Meta(ledger::KEY_ID.into(), key_id.into());
    Ok(match ledger.meta(ledger::KEY_ID)? {
        Some(known) if known == key_id => Vec::new(),
        // A ledger from before key ids were kept: its fingerprints are
        // taken to be this key's, as nothing says otherwise.
        None => vec![id_row],
        Some(_) => {
            tracing::warn!(
                "the fingerprint key is not the one this ledger's fingerprints were made with \
                 (fingerprint.key made anew, or a fleet key): fingerprints start a new baseline, \
                 and a new fingerprint is taken for a rotation only where the file changed"
            );
            snapshot.key_changed = Some(now);
            vec![
                id_row,
                Row::Meta(ledger::KEY_CHANGED.into(), to_ns(now).to_string()),
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        findings::{FindingType, Settings},
        ledger::{OpenMode, Seen},
    };

    const DAY: Duration = Duration::from_secs(86_400);

    /// `Engine::start` with the state dir's lock taken.
    fn start(
        state: &Path,
        settings: Settings,
        retention: Duration,
        watch: &Inventory,
        key_id: &str,
    ) -> Result<Engine, EngineError> {
        let lock = StateLock::acquire(state)?;
        Engine::start(state, lock, settings, retention, watch, key_id)
    }

    fn settings() -> Settings {
        Settings::new(
            Duration::from_secs(3600),
            Duration::from_secs(7200),
            Duration::from_secs(0),
            Vec::new(),
        )
        .unwrap()
    }

    fn read(secret_id: &str, id: &str) -> Observation {
        Observation::Read {
            at: Utc::now(),
            secret_id: secret_id.into(),
            who: Seen::named(id, "user"),
            pid: 1,
            uid: 0,
            count: 1,
            denied: false,
            mode: OpenMode::Read,
        }
    }

    #[test]
    fn findings_fire_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("api.token");
        std::fs::write(&secret, "value").unwrap();
        let watch = Inventory::new(vec![crate::inventory::test_record(&secret, 1)]);
        let state = dir.path().join("state");
        let id = watch.records().next().unwrap().id.clone();

        let mut e = start(&state, settings(), DAY, &watch, "key-1").unwrap();
        e.observe(&read(&id, "user:a:/bin/a"));
        e.observe(&read(&id, "user:b:/bin/b"));
        let now = Utc::now();
        let first = e.check(now, Scope::Events);
        // Both readers came after a zero-length baseline, and share it.
        let types: Vec<_> = first.iter().map(|f| f.finding_type).collect();
        assert!(types.contains(&FindingType::SharedSecret), "{types:?}");
        assert!(
            e.check(now, Scope::Events).is_empty(),
            "nothing new observed"
        );
        e.observe(&read(&id, "user:a:/bin/a"));
        assert!(e.check(now, Scope::Events).is_empty(), "fired already");
        let stats = e.close();
        assert_eq!(stats.dropped, 0);

        let mut e = start(&state, settings(), DAY, &watch, "key-1").unwrap();
        e.observe(&read(&id, "user:a:/bin/a"));
        assert!(
            e.check(Utc::now(), Scope::Events).is_empty(),
            "not again after a restart"
        );
        // A third reader is a new sharing.
        e.observe(&read(&id, "user:c:/bin/c"));
        let again = e.check(Utc::now(), Scope::Events);
        assert!(
            again
                .iter()
                .any(|f| f.finding_type == FindingType::SharedSecret)
        );
        e.close();

        let ledger = Ledger::open_read_only(&state).unwrap();
        assert_eq!(ledger.access_rows().unwrap(), 3);
        let s = ledger.snapshot().unwrap();
        assert_eq!(s.accesses[&(id.clone(), "user:a:/bin/a".into())].count, 3);
        assert!(s.secrets[&id].facts.fingerprint.is_some());
    }

    #[test]
    fn a_file_that_disappears_is_removed_from_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("api.token");
        std::fs::write(&secret, "value").unwrap();
        let mut watch = Inventory::new(vec![crate::inventory::test_record(&secret, 1)]);
        let id = watch.records().next().unwrap().id.clone();
        let mut e = start(dir.path(), settings(), DAY, &watch, "key-1").unwrap();
        std::fs::remove_file(&secret).unwrap();
        watch.apply(crate::inventory::InventoryChange::Remove(secret.clone()));
        e.refresh(&watch, Utc::now());
        let id = &id;
        assert!(e.snapshot.secrets[id].removed.is_some());
        e.close();
    }

    fn record(path: &Path, ino: u64, fingerprint: &str, mode: u32) -> crate::inventory::Record {
        crate::inventory::Record {
            fingerprint: fingerprint.into(),
            mode,
            ..crate::inventory::test_record(path, ino)
        }
    }

    /// A second run with another `--watch` on the same state dir: the
    /// first run's secrets are still there, so not removed, and their
    /// findings stay in the report.
    #[test]
    fn another_watch_leaves_the_first_runs_secrets_unwatched_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let state = dir.path().join("state");
        let first = Inventory::new(vec![record(&a, 1, "hmac-sha256:aa", 0o644)]);
        let mut e = start(&state, settings(), DAY, &first, "key-1").unwrap();
        let weak = e.check(Utc::now(), Scope::All);
        assert_eq!(weak.len(), 1, "{weak:?}");
        e.close();

        let second = Inventory::new(vec![record(&b, 2, "hmac-sha256:bb", 0o600)]);
        let mut e = start(&state, settings(), DAY, &second, "key-1").unwrap();
        let id_a = crate::secret::secret_id(&a);
        let row = &e.snapshot.secrets[&id_a];
        assert_eq!(row.removed, None);
        assert!(row.unwatched.is_some());
        let all = rules::evaluate(&e.snapshot, &e.settings, Utc::now(), Scope::All);
        assert!(all.iter().any(|f| f.id == weak[0].id), "{all:?}");
        // Its file goes: now it is removed.
        std::fs::remove_file(&a).unwrap();
        e.refresh(&second, Utc::now());
        assert!(e.snapshot.secrets[&id_a].removed.is_some());
        e.close();
    }

    /// Found while the agent runs (inotify, the kernel's name rules): a
    /// secret of the ledger at once, with the file rules' findings.
    #[test]
    fn a_secret_found_while_running_gets_its_row_and_findings() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut e = start(&state, settings(), DAY, &Inventory::default(), "key-1").unwrap();
        let late = dir.path().join("credentials");
        let r = record(&late, 3, "hmac-sha256:cc", 0o644);
        e.observe(&Observation::Secret {
            at: Utc::now(),
            facts: secret_facts(&r),
        });
        e.observe(&read(&r.id, "user:a:/bin/a"));
        let found = e.check(Utc::now(), Scope::All);
        assert!(
            found
                .iter()
                .any(|f| f.finding_type == FindingType::WeakPermissions && f.secret.id == r.id),
            "{found:?}"
        );
        e.close();
        let disk = Ledger::open_read_only(&state).unwrap().snapshot().unwrap();
        assert_eq!(disk.secrets[&r.id].facts.mode, Some(0o644));
    }

    /// `fingerprint.key` deleted between runs: every fingerprint is new,
    /// no value changed, and the ledger says so instead of a rotation.
    #[test]
    fn a_new_fingerprint_key_is_not_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.token");
        std::fs::write(&file, "value").unwrap();
        let state = dir.path().join("state");
        let before = Inventory::new(vec![record(&file, 1, "hmac-sha256:old", 0o600)]);
        start(&state, settings(), DAY, &before, "key-1")
            .unwrap()
            .close();
        let first = Ledger::open_read_only(&state).unwrap().snapshot().unwrap();
        let after = Inventory::new(vec![record(&file, 1, "hmac-sha256:new", 0o600)]);
        let e = start(&state, settings(), DAY, &after, "key-2").unwrap();
        e.close();
        let disk = Ledger::open_read_only(&state).unwrap().snapshot().unwrap();
        assert!(disk.key_changed.is_some());
        let id = crate::secret::secret_id(&file);
        let old = first.fingerprints[&(id.clone(), "hmac-sha256:old".into())];
        let new = disk.fingerprints[&(id, "hmac-sha256:new".into())];
        assert_eq!(
            new.first_seen, old.first_seen,
            "the same value, not a rotation"
        );
        // The same key again: nothing changes.
        start(&state, settings(), DAY, &after, "key-2")
            .unwrap()
            .close();
        let again = Ledger::open_read_only(&state).unwrap().snapshot().unwrap();
        assert_eq!(again.key_changed, disk.key_changed);
    }
}
