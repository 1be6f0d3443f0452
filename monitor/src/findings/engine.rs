//! The agent's side of the ledger and the rules: observations update the
//! in-memory snapshot and go to the ledger writer; the rules run over the
//! snapshot, and a finding is emitted the first time it holds, once, across
//! restarts too (the ledger keeps what fired).

use std::{collections::HashSet, path::Path, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Finding, Settings, liveness::Liveness, rules};
use crate::{
    event::{Event, Host},
    inventory::Inventory,
    ledger::{
        Batching, Fired, Ledger, LedgerError, Observation, Row, Snapshot, Writer, WriterStats,
        facts::secret_facts,
    },
    sink::Sink,
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
}

impl Engine {
    /// Open the ledger in `state_dir`, record the settings for `report`,
    /// take the inventory of `watch` and prune what retention expired.
    /// Call before the probes watch anything: fingerprinting reads the files.
    pub fn start(
        state_dir: &Path,
        settings: Settings,
        retention: Duration,
        watch: &Inventory,
    ) -> Result<Self, EngineError> {
        let mut ledger = Ledger::open(state_dir)?;
        let mut snapshot = ledger.snapshot()?;
        let now = Utc::now();
        let mut rows = vec![settings_row(&settings)];
        if let Ok(span) = chrono::Duration::from_std(retention) {
            rows.push(snapshot.prune(now - span));
        }
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
    /// the files still there, `removed` for those that are not.
    pub fn refresh(&mut self, watch: &Inventory, now: DateTime<Utc>) {
        let mut present = HashSet::new();
        for record in watch.records() {
            present.insert(record.id.as_str());
            for row in self.snapshot.observe_secret(secret_facts(record), now) {
                self.writer.send(row);
            }
        }
        let gone: Vec<String> = self
            .snapshot
            .secrets
            .keys()
            .filter(|id| !present.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            for row in self.snapshot.remove_secret(&id, now) {
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
        if let Ok(span) = chrono::Duration::from_std(self.retention) {
            let row = self.snapshot.prune(now - span);
            self.writer.send(row);
        }
        self.last_prune = now;
    }

    /// Findings that hold now and have not fired before. `Scope::Events`
    /// does nothing when nothing was observed since the last run.
    pub fn check(&mut self, now: DateTime<Utc>, scope: Scope) -> Vec<Finding> {
        if scope == Scope::Events && !self.dirty {
            return Vec::new();
        }
        self.dirty = false;
        let mut new = Vec::new();
        for f in rules::evaluate(&self.snapshot, &self.settings, now, scope) {
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

#[derive(Serialize)]
struct FindingBody<'a> {
    finding: &'a Finding,
}

/// Emit each finding as a `finding` event.
pub fn emit(sink: &mut Sink, host: &Host, findings: &[Finding]) -> std::io::Result<()> {
    let now = Utc::now();
    for finding in findings {
        sink.emit(&Event::new("finding", now, host, FindingBody { finding }))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        findings::{FindingType, Settings},
        ledger::Seen,
    };

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
            who: Seen {
                id: id.into(),
                kind: "user".into(),
                spiffe_id: String::new(),
                unit: None,
                user_manager: false,
                cgroup_id: 0,
                exe: None,
                human: false,
            },
            pid: 1,
            uid: 0,
            count: 1,
            denied: false,
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

        let mut e = Engine::start(&state, settings(), Duration::from_secs(86_400), &watch).unwrap();
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

        let mut e = Engine::start(&state, settings(), Duration::from_secs(86_400), &watch).unwrap();
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
        let mut e =
            Engine::start(dir.path(), settings(), Duration::from_secs(86_400), &watch).unwrap();
        std::fs::remove_file(&secret).unwrap();
        watch.apply(crate::inventory::InventoryChange::Remove(secret.clone()));
        e.refresh(&watch, Utc::now());
        let id = &id;
        assert!(e.snapshot.secrets[id].removed.is_some());
        e.close();
    }
}
