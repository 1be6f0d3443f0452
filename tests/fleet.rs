//! The fleet store end to end, on a real PostgreSQL started by each test.
//!
//! Without eBPF: the sync of a ledger built through the library (only
//! changes sent, nothing counted twice across a store restart, a lost
//! cursor or an agent restart) and TLS as `sslmode` says.
//! With eBPF (root): three agents on one machine, each its own host, feed
//! one store; the fleet report must tell read, unused and unknown copies
//! apart.

mod support;

use std::{path::Path, time::Duration};

use chrono::{DateTime, Utc};
use secretmon::{
    fleet::{
        FleetSettings,
        sync::{Identity, Syncer},
    },
    ledger::{Ledger, Observation, SecretFacts, Seen},
};
use support::postgres::{Postgres, ServerTls};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn facts(id: &str) -> SecretFacts {
    SecretFacts {
        id: id.into(),
        path: format!("/srv/{id}/.env"),
        secret_type: "env_file".into(),
        fingerprint: Some(format!("hmac-sha256:{id}")),
        lifetime: Some("static".into()),
        hint: None,
        uid: Some(0),
        gid: Some(0),
        mode: Some(0o600),
        mtime: Some(t(0)),
        expires: None,
    }
}

fn read(secret: &str, who: &str, at: i64, count: u64) -> Observation {
    Observation::Read {
        at: t(at),
        secret_id: secret.into(),
        who: Seen {
            id: who.into(),
            kind: "systemd".into(),
            spiffe_id: format!("spiffe://td/{who}"),
            unit: None,
            user_manager: false,
            cgroup_id: 1,
            exe: Some("/usr/bin/app".into()),
            human: false,
        },
        pid: 7,
        uid: 0,
        count,
        denied: false,
    }
}

/// What a running agent does to its ledger: observe, then commit.
struct LocalLedger {
    ledger: Ledger,
    mem: secretmon::ledger::Snapshot,
}

impl LocalLedger {
    fn open(state: &Path) -> Self {
        let ledger = Ledger::open(state).unwrap();
        let mem = ledger.snapshot().unwrap();
        Self { ledger, mem }
    }

    fn secret(&mut self, id: &str) {
        let rows = self.mem.observe_secret(facts(id), t(0));
        self.ledger.write(&rows).unwrap();
    }

    fn read(&mut self, secret: &str, who: &str, at: i64, count: u64) {
        let rows = self.mem.observe(&read(secret, who, at, count));
        self.ledger.write(&rows).unwrap();
    }
}

fn connection(pg: &Postgres, dir: &Path, query: &str) -> secretmon::fleet::Connection {
    FleetSettings {
        url: Some(pg.url("127.0.0.1", query).parse().unwrap()),
        password_file: Some(pg.password_file(dir)),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    }
    .connection(None)
    .unwrap()
    .unwrap()
}

fn who(host: &str) -> Identity {
    Identity {
        host: host.into(),
        fleet_key_id: Some("hmac-sha256:testfleetkey".into()),
    }
}

/// `opens` summed over the store's reader rows of `host`.
fn opens(pg: &Postgres, host: &str) -> u64 {
    pg.query(&format!(
        "SELECT coalesce(sum(opens), 0) FROM fleet_reader r JOIN fleet_host h ON h.id = r.host_id WHERE h.name = '{host}'"
    ))
    .parse()
    .unwrap()
}

#[test]
fn sync_sends_changes_once_and_never_counts_twice() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut local = LocalLedger::open(&state);
    for id in ["sec-a", "sec-b", "sec-c"] {
        local.secret(id);
    }
    local.read("sec-a", "systemd:app.service", 10, 3);
    local.read("sec-b", "systemd:app.service", 11, 2);
    local.read("sec-b", "systemd:cron.service", 12, 1);

    let rt = runtime();
    let mut syncer = Syncer::new(
        connection(&pg, dir.path(), "sslmode=disable"),
        who("web-1"),
        &state,
        Utc::now(),
    )
    .unwrap();
    let first = rt.block_on(syncer.sync(Utc::now(), 0, false)).unwrap();
    // 1 run, 3 secrets, 3 fingerprints, 2 identities, 3 readers.
    assert_eq!(first.rows, 12);
    assert_eq!(opens(&pg, "web-1"), 6);
    assert_eq!(pg.query("SELECT count(*) FROM fleet_secret"), "3");

    // Nothing new: only the run's heartbeat moves.
    let again = rt.block_on(syncer.sync(Utc::now(), 0, false)).unwrap();
    assert_eq!(again.rows, 1);

    // One more read: its reader and identity rows, with the totals.
    local.read("sec-a", "systemd:app.service", 20, 4);
    let more = rt.block_on(syncer.sync(Utc::now(), 0, false)).unwrap();
    assert_eq!(more.rows, 3);
    assert_eq!(opens(&pg, "web-1"), 10);

    // The store goes away: syncs fail, reads go on into the ledger.
    pg.stop();
    local.read("sec-c", "systemd:app.service", 30, 5);
    assert!(rt.block_on(syncer.sync(Utc::now(), 0, false)).is_err());
    local.read("sec-c", "systemd:app.service", 31, 1);
    assert!(rt.block_on(syncer.sync(Utc::now(), 0, false)).is_err());
    pg.restart();
    let caught_up = rt.block_on(syncer.sync(Utc::now(), 0, false)).unwrap();
    assert!(caught_up.rows >= 2, "{caught_up:?}");
    assert_eq!(opens(&pg, "web-1"), 16, "nothing lost, nothing twice");

    // The agent restarts: its cursor is in the ledger, nothing is resent.
    drop(syncer);
    let mut restarted = Syncer::new(
        connection(&pg, dir.path(), "sslmode=disable"),
        who("web-1"),
        &state,
        Utc::now(),
    )
    .unwrap();
    let after_restart = rt.block_on(restarted.sync(Utc::now(), 0, false)).unwrap();
    assert_eq!(after_restart.rows, 1, "the new run, no ledger row");
    assert_eq!(pg.query("SELECT count(*) FROM fleet_run"), "2");

    // The cursor lost (a crash between the store's commit and the ledger's):
    // everything is sent again, and the totals stay the same.
    let conn = rusqlite::Connection::open(state.join("ledger.db")).unwrap();
    conn.execute("DELETE FROM fleet_sent", []).unwrap();
    drop(conn);
    let mut forgetful = Syncer::new(
        connection(&pg, dir.path(), "sslmode=disable"),
        who("web-1"),
        &state,
        Utc::now(),
    )
    .unwrap();
    let resent = rt.block_on(forgetful.sync(Utc::now(), 0, false)).unwrap();
    assert!(resent.rows >= 11, "{resent:?}");
    assert_eq!(opens(&pg, "web-1"), 16);
    assert_eq!(pg.query("SELECT count(*) FROM fleet_reader"), "4");

    // A second host with the same secret ids is its own host.
    let other = dir.path().join("other");
    let mut local2 = LocalLedger::open(&other);
    local2.secret("sec-a");
    local2.read("sec-a", "systemd:app.service", 10, 7);
    let mut web2 = Syncer::new(
        connection(&pg, dir.path(), "sslmode=disable"),
        who("web-2"),
        &other,
        Utc::now(),
    )
    .unwrap();
    rt.block_on(web2.sync(Utc::now(), 0, true)).unwrap();
    assert_eq!(opens(&pg, "web-2"), 7);
    assert_eq!(opens(&pg, "web-1"), 16);
    assert_eq!(pg.query("SELECT count(*) FROM fleet_host"), "2");
    assert_eq!(
        pg.query("SELECT count(*) FROM fleet_run r JOIN fleet_host h ON h.id = r.host_id WHERE h.name = 'web-2' AND stopped IS NOT NULL"),
        "1"
    );
}

/// A CA, and a server certificate it signed for `localhost` only.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), server_key.serialize_pem())
}

#[test]
fn tls_is_verified_as_sslmode_says() {
    let (ca, cert, key) = certificates();
    let (other_ca, _, _) = certificates();
    let pg = Postgres::start_with(Some(ServerTls {
        cert_pem: &cert,
        key_pem: &key,
    }));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut local = LocalLedger::open(&state);
    local.secret("sec-a");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, &other_ca).unwrap();
    let rt = runtime();
    let attempt = |host: &str, query: String| {
        let settings = FleetSettings {
            url: Some(pg.url(host, &query).parse().unwrap()),
            password_file: Some(pg.password_file(dir.path())),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        };
        let mut syncer = Syncer::new(
            settings.connection(None).unwrap().unwrap(),
            who("tls-host"),
            &state,
            Utc::now(),
        )
        .unwrap();
        rt.block_on(syncer.sync(Utc::now(), 0, false))
            .map(drop)
            .map_err(|e| secretmon::errors::error_text(&e))
    };
    let ca_arg = format!("sslrootcert={}", ca_file.display());
    attempt("localhost", format!("sslmode=verify-full&{ca_arg}")).unwrap();
    assert_eq!(pg.query("SELECT name FROM fleet_host"), "tls-host");
    // The name is checked: 127.0.0.1 is not in the certificate...
    let err = attempt("127.0.0.1", format!("sslmode=verify-full&{ca_arg}")).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    // ...unless only the chain is to be verified.
    attempt("127.0.0.1", format!("sslmode=verify-ca&{ca_arg}")).unwrap();
    // Another CA does not vouch for it.
    let err = attempt(
        "localhost",
        format!("sslmode=verify-full&sslrootcert={}", other_file.display()),
    )
    .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    // `require` encrypts without verifying, as libpq does.
    attempt("127.0.0.1", "sslmode=require".into()).unwrap();
    assert!(!err.contains(support::postgres::PASSWORD), "{err}");
}
