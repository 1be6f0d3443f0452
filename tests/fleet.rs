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
    ledger::{Ledger, Observation, OpenMode, SecretFacts, Seen},
};
use support::{
    postgres::{Postgres, ServerTls},
    s,
};

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
        mode: OpenMode::Read,
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

    /// Opens for writing only: a rotation job, not a reader.
    fn write(&mut self, secret: &str, who: &str, at: i64) {
        let mut open = read(secret, who, at, 1);
        if let Observation::Read { mode, .. } = &mut open {
            *mode = OpenMode::Write;
        }
        let rows = self.mem.observe(&open);
        self.ledger.write(&rows).unwrap();
    }

    /// Another run's `--watch` left it out: its file is still there.
    fn unwatch(&mut self, secret: &str, at: i64) {
        let rows = self.mem.unwatch_secret(secret, t(at));
        self.ledger.write(&rows).unwrap();
    }
}

fn connection(pg: &Postgres, dir: &Path, query: &str) -> secretmon::fleet::Connection {
    FleetSettings {
        url: Some(pg.url("127.0.0.1", query).parse().unwrap()),
        password_file: Some(pg.password_file(dir)),
        interval: secretmon::bounded::Period::from_secs(1),
        timeout: secretmon::bounded::Period::from_secs(5),
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

    // The ledger's truths travel: a writer is no reader, an unwatched
    // secret is not removed.
    local.write("sec-c", "systemd:rotate.service", 40);
    local.unwatch("sec-b", 41);
    rt.block_on(forgetful.sync(Utc::now(), 0, false)).unwrap();
    assert_eq!(
        pg.query(
            "SELECT reads || '/' || writes FROM fleet_reader WHERE identity = 'systemd:rotate.service'"
        ),
        "0/1"
    );
    assert_eq!(
        pg.query(
            "SELECT unwatched IS NOT NULL AND removed IS NULL FROM fleet_secret WHERE id = 'sec-b'"
        ),
        "t"
    );

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
    assert_eq!(opens(&pg, "web-1"), 17, "16 reads and the writer's open");
    assert_eq!(pg.query("SELECT count(*) FROM fleet_host"), "2");
    assert_eq!(
        pg.query("SELECT count(*) FROM fleet_run r JOIN fleet_host h ON h.id = r.host_id WHERE h.name = 'web-2' AND stopped IS NOT NULL"),
        "1"
    );

    // Removing a host removes everything it sent, and nothing else.
    let rows = "SELECT (SELECT count(*) FROM fleet_run) || ' ' || (SELECT count(*) FROM fleet_secret) \
                || ' ' || (SELECT count(*) FROM fleet_fingerprint) || ' ' || (SELECT count(*) FROM fleet_identity) \
                || ' ' || (SELECT count(*) FROM fleet_reader)";
    let before = pg.query(rows);
    pg.query("DELETE FROM fleet_host WHERE name = 'web-2'");
    let after = pg.query(rows);
    let counts = |s: &str| -> Vec<u64> { s.split(' ').map(|n| n.parse().unwrap()).collect() };
    let removed: Vec<u64> = counts(&before)
        .iter()
        .zip(counts(&after))
        .map(|(b, a)| b - a)
        .collect();
    assert_eq!(removed, [1, 1, 1, 1, 1], "{before} → {after}");
    assert_eq!(opens(&pg, "web-1"), 17);
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
    let pg = Postgres::start_with(
        Some(ServerTls {
            cert_pem: &cert,
            key_pem: &key,
        }),
        false,
    );
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
            interval: secretmon::bounded::Period::from_secs(1),
            timeout: secretmon::bounded::Period::from_secs(5),
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

/// One simulated host of the fleet: its own state dir, host name and copy
/// of the shared secret, at a path the kernel's name rules do not match
/// (so that another host's agent does not pick up this host's copy).
struct Host {
    name: &'static str,
    state: std::path::PathBuf,
    copy: std::path::PathBuf,
}

/// The shared secret: the same bytes on every host.
fn plant(dir: &Path, name: &'static str) -> Host {
    let root = dir.join(name);
    Host {
        name,
        state: root.join("state"),
        copy: support::write(
            &root.join("srv/app/db.password"),
            &format!("{}\n", support::PLANTED),
            0o600,
        ),
    }
}

/// The fleet key every host shares, 0600.
fn fleet_key(dir: &Path) -> std::path::PathBuf {
    support::write(
        &dir.join("fleet.key"),
        "fleet-test-key-0123456789abcdef\n",
        0o600,
    )
}

/// `secretmon run` for `host`, syncing to `url` every second.
fn start_agent(host: &Host, url: &str, password: &Path, key: &Path) -> support::Agent {
    support::Agent::start(&[
        "--state",
        s(&host.state),
        "--host-name",
        host.name,
        "--watch",
        s(&host.copy),
        "--fleet",
        url,
        "--set",
        &format!("fleet.password_file={}", s(password)),
        "--set",
        "fleet.interval=1s",
        "--set",
        &format!("inventory.fleet_key_file={}", s(key)),
    ])
}

/// Wait until `sql` (one value) returns `want`.
fn wait_for_store(pg: &Postgres, sql: &str, want: &str) {
    support::wait_until(&format!("{sql} = {want}"), || {
        pg.try_query(sql).as_deref() == Ok(want)
    });
}

/// Reads of `copy` by `cat`, as the store has them.
fn store_reads(host: &str, copy: &Path) -> String {
    format!(
        "SELECT coalesce(sum(r.opens), 0) FROM fleet_reader r JOIN fleet_host h ON h.id = r.host_id \
         JOIN fleet_secret s ON s.host_id = r.host_id AND s.id = r.secret_id \
         WHERE h.name = '{host}' AND s.path = '{}' AND r.identity LIKE 'user:root:%cat'",
        copy.display()
    )
}

fn cat(path: &Path) {
    support::run_ok(std::process::Command::new("cat").arg(path));
}

/// `secretmon report --fleet URL ARGS`.
fn fleet_report(url: &str, password: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(support::BIN)
        .args(["report", "--fleet", url, "--set"])
        .arg(format!("fleet.password_file={}", s(password)))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "report: {stderr}");
    support::assert_no_planted(&[&stdout, &stderr]);
    stdout
}

/// The fleet report's entry for the planted secret: the group holding
/// `copy`'s path.
fn planted_entry<'a>(report: &'a serde_json::Value, copy: &Path) -> &'a serde_json::Value {
    report["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["copies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["path"] == s(copy))
        })
        .unwrap_or_else(|| panic!("no entry for {}: {report}", copy.display()))
}

fn findings_of<'a>(
    report: &'a serde_json::Value,
    entry: &serde_json::Value,
) -> Vec<&'a serde_json::Value> {
    let ids: Vec<&serde_json::Value> = entry["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["id"])
        .collect();
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| ids.contains(&&f["id"]))
        .collect()
}

const WINDOW: Duration = Duration::from_secs(6);

/// Once every copy was watched for a whole window, `first` (the host of
/// `agents[0]`) reads its copy; when the store has that read, the fleet
/// report over the window, as JSON.
fn read_on_the_first_and_report(
    mut agents: Vec<support::Agent>,
    first: &Host,
    pg: &Postgres,
    url: &str,
    password: &Path,
) -> (Vec<support::Agent>, serde_json::Value) {
    std::thread::sleep(WINDOW);
    cat(&first.copy);
    agents[0].wait_for(Duration::from_secs(10), |v| {
        v["kind"] == "secret_read" && v["secret"]["path"] == s(&first.copy)
    });
    wait_for_store(pg, &store_reads(first.name, &first.copy), "1");
    let window = format!("{}s", WINDOW.as_secs());
    let json = fleet_report(url, password, &["--json", "--window", &window]);
    (agents, serde_json::from_str(&json).unwrap())
}

/// Three hosts with one fleet key hold one secret; only the first reads it.
/// The fleet report shows it on 3 hosts, read on 1, with the 2 unused
/// copies named, and no fleet-wide orphan.
#[test]
fn one_secret_on_three_hosts_read_on_one() {
    if !support::can_load_probes("one_secret_on_three_hosts_read_on_one") {
        return;
    }
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let password = pg.password_file(dir.path());
    let key = fleet_key(dir.path());
    let url = pg.url("127.0.0.1", "sslmode=disable");
    let hosts = [
        plant(dir.path(), "host-a"),
        plant(dir.path(), "host-b"),
        plant(dir.path(), "host-c"),
    ];
    let agents: Vec<_> = hosts
        .iter()
        .map(|h| start_agent(h, &url, &password, &key))
        .collect();
    let (agents, json) = read_on_the_first_and_report(agents, &hosts[0], &pg, &url, &password);
    let window = format!("{}s", WINDOW.as_secs());
    assert_eq!(json["schema"], "secretmon/fleet-report/v1");
    assert_eq!(
        json["grouping"]["by"], "fingerprint",
        "{}",
        json["grouping"]
    );
    let entry = planted_entry(&json, &hosts[0].copy);
    assert_eq!(entry["hosts"], 3, "{entry}");
    assert_eq!(entry["read_on"], 1, "{entry}");
    assert_eq!(entry["unused_on"], 2, "{entry}");
    assert_eq!(entry["unknown_on"], 0, "{entry}");
    assert_eq!(entry["readers"][0]["hosts"], serde_json::json!(["host-a"]));
    let found = findings_of(&json, entry);
    let types: Vec<&str> = found.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert!(!types.contains(&"orphaned_secret"), "{types:?}");
    let unused = found
        .iter()
        .find(|f| f["type"] == "unused_copies")
        .unwrap_or_else(|| panic!("no unused_copies: {types:?}"));
    assert_eq!(unused["hosts"], serde_json::json!(["host-b", "host-c"]));
    let rec = unused["recommendation"].as_str().unwrap();
    for h in &hosts[1..] {
        assert!(rec.contains(&format!("{}:{}", h.name, s(&h.copy))), "{rec}");
    }
    assert!(types.contains(&"duplicated_secret"), "{types:?}");

    // The text form fits a terminal and says the same.
    let text = fleet_report(&url, &password, &["--window", &window]);
    for want in ["unused_copies", "host-b, host-c", "remove the copy"] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    for line in text.lines() {
        assert!(
            line.chars().count() <= 120,
            "{} columns: {line}",
            line.chars().count()
        );
    }

    for agent in agents {
        let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(code, Some(0), "{stderr}");
        support::assert_no_planted(&[&lines.join("\n"), &stderr]);
        assert!(!stderr.contains(support::postgres::PASSWORD), "{stderr}");
    }
}

/// PostgreSQL stops while the agent reads on, and comes back: the reads
/// made meanwhile arrive, none twice, with one line when it went and one
/// when it came back.
#[test]
fn store_down_mid_run_loses_nothing_and_counts_nothing_twice() {
    if !support::can_load_probes("store_down_mid_run_loses_nothing_and_counts_nothing_twice") {
        return;
    }
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let password = pg.password_file(dir.path());
    let key = fleet_key(dir.path());
    let url = pg.url("127.0.0.1", "sslmode=disable");
    let host = plant(dir.path(), "host-a");
    let mut agent = start_agent(&host, &url, &password, &key);
    let reads = store_reads("host-a", &host.copy);
    let read_and_wait = |agent: &mut support::Agent, n: usize| {
        for _ in 0..n {
            cat(&host.copy);
            agent.wait_for(Duration::from_secs(10), |v| {
                v["kind"] == "secret_read" && v["secret"]["path"] == s(&host.copy)
            });
        }
    };
    read_and_wait(&mut agent, 3);
    wait_for_store(&pg, &reads, "3");

    pg.stop();
    read_and_wait(&mut agent, 4);
    // Several syncs fail meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    pg.restart();
    wait_for_store(&pg, &reads, "7");
    // Later syncs send nothing twice.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pg.query(&reads), "7");

    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(pg.query(&reads), "7");
    assert_eq!(
        stderr.matches("fleet store unreachable").count(),
        1,
        "one line when it went: {stderr}"
    );
    assert_eq!(
        stderr.matches("reachable again").count(),
        1,
        "one line when it came back: {stderr}"
    );
    // The store holds what the ledger holds.
    let ledger = Ledger::open_read_only(&host.state)
        .unwrap()
        .snapshot()
        .unwrap();
    let local: u64 = ledger
        .accesses
        .iter()
        .filter(|((secret, who), _)| {
            ledger.secrets[secret].facts.path == s(&host.copy) && who.ends_with("cat")
        })
        .map(|(_, a)| a.count)
        .sum();
    assert_eq!(local, 7);
    assert_eq!(
        pg.query("SELECT count(*) FROM fleet_run WHERE stopped IS NOT NULL"),
        "1",
        "the last sync at shutdown"
    );
    support::assert_no_planted(&[&lines.join("\n"), &stderr]);
}

/// A host whose agent stopped before the window cannot prove that its copy
/// went unread: its copy is unknown, not unused, and the host is listed.
#[test]
fn a_host_down_for_the_window_is_unknown_not_unused() {
    if !support::can_load_probes("a_host_down_for_the_window_is_unknown_not_unused") {
        return;
    }
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let password = pg.password_file(dir.path());
    let key = fleet_key(dir.path());
    let url = pg.url("127.0.0.1", "sslmode=disable");
    let hosts = [
        plant(dir.path(), "host-a"),
        plant(dir.path(), "host-b"),
        plant(dir.path(), "host-c"),
    ];
    let down = start_agent(&hosts[2], &url, &password, &key);
    wait_for_store(
        &pg,
        "SELECT count(*) FROM fleet_secret s JOIN fleet_host h ON h.id = s.host_id WHERE h.name = 'host-c' AND s.path LIKE '%db.password'",
        "1",
    );
    let (code, _, stderr) = down.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    let agents: Vec<_> = hosts[..2]
        .iter()
        .map(|h| start_agent(h, &url, &password, &key))
        .collect();
    let (agents, json) = read_on_the_first_and_report(agents, &hosts[0], &pg, &url, &password);
    let window = format!("{}s", WINDOW.as_secs());
    let entry = planted_entry(&json, &hosts[0].copy);
    assert_eq!(
        (
            &entry["hosts"],
            &entry["read_on"],
            &entry["unused_on"],
            &entry["unknown_on"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{entry}"
    );
    let c = entry["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == "host-c")
        .unwrap();
    assert_eq!(c["status"], "unknown");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .starts_with("not reporting since"),
        "{c}"
    );
    let host_c = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "host-c")
        .unwrap();
    assert_eq!(host_c["observed_window"], false, "{host_c}");
    let found = findings_of(&json, entry);
    let unused = found.iter().find(|f| f["type"] == "unused_copies").unwrap();
    assert_eq!(unused["hosts"], serde_json::json!(["host-b"]), "{unused}");
    assert!(
        unused["evidence"]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown on host-c"),
        "{unused}"
    );
    let text = fleet_report(&url, &password, &["--window", &window]);
    assert!(text.contains("BLIND SPOTS (1)"), "{text}");

    for agent in agents {
        let (code, _, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(code, Some(0), "{stderr}");
    }
}

/// Hosts, secrets per host and readers per secret of the simulated fleet.
const BENCH_HOSTS: usize = 1_000;
const BENCH_SECRETS: usize = 300;
const BENCH_READERS: usize = 10;
/// Hosts share roles: a role's hosts hold the same application secrets.
const BENCH_ROLES: usize = 10;
/// Of the 300: the same on every host, and unique to each host; the rest
/// are the role's.
const BENCH_FLEET_WIDE: usize = 10;
const BENCH_HOST_UNIQUE: usize = 50;
/// Hosts whose incremental sync is timed after the first full one.
const BENCH_INCREMENTAL: usize = 100;

/// One simulated host's ledger, written through the ledger's own API: what
/// its agent would have recorded over two months.
fn bench_ledger(state: &Path, host: usize, now: DateTime<Utc>) -> LocalLedger {
    let mut local = LocalLedger::open(state);
    let day = chrono::Duration::days(1);
    let role = host % BENCH_ROLES;
    let mut rows = Vec::new();
    for k in 0..BENCH_SECRETS {
        let (id, path, value) = if k < BENCH_FLEET_WIDE {
            (
                format!("sec-f{k}"),
                format!("/etc/fleet/token-{k}"),
                format!("fleet-{k}"),
            )
        } else if k < BENCH_FLEET_WIDE + BENCH_HOST_UNIQUE {
            (
                format!("sec-h{k}"),
                format!("/etc/ssl/private/host-{k}.key"),
                format!("host-{host}-{k}"),
            )
        } else {
            (
                format!("sec-r{k}"),
                format!("/srv/app/config/secret-{k}.env"),
                format!("role-{role}-{k}"),
            )
        };
        let mut f = facts(&id);
        f.path = path;
        f.fingerprint = Some(format!("hmac-sha256:{value}"));
        f.mtime = Some(now - day * 200);
        rows.extend(local.mem.observe_secret(f, now - day * 60));
        // A fleet-wide token is read on three hosts in four.
        if k < BENCH_FLEET_WIDE && host % 4 == 3 {
            continue;
        }
        for j in 0..BENCH_READERS {
            let who = format!("systemd:svc-{}.service", (k + j) % 40);
            let mut o = read(&id, &who, 0, 1 + ((k * 7 + j * 13 + host) % 50) as u64);
            if let Observation::Read { at, .. } = &mut o {
                *at = now - chrono::Duration::minutes(((k * 31 + j * 17 + host) % 40_000) as i64);
            }
            rows.extend(local.mem.observe(&o));
        }
    }
    local.ledger.write(&rows).unwrap();
    local
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Names a directory that keeps the bench's populated store between runs:
/// a second run finds it and measures only the reports. Its agents'
/// heartbeats are moved to now, so that no host looks silent; their reads
/// age by the time since (a day or two changes nothing: the newest is 28
/// days old in a 30-day window).
const BENCH_KEEP_ENV: &str = "SECRETMON_BENCH_FLEET_DIR";

/// Sync times of the simulated fleet, as it was written.
struct Populated {
    full: Vec<Duration>,
    incremental: Vec<Duration>,
    rows: usize,
    took: Duration,
}

/// Every simulated host's ledger synced to the store at `url`, timed.
fn populate(dir: &Path, url: &str, password: &Path) -> Populated {
    let rt = runtime();
    let now = Utc::now();
    let mut full = Vec::new();
    let mut incremental = Vec::new();
    let mut rows = 0;
    let started = std::time::Instant::now();
    for host in 0..BENCH_HOSTS {
        let state = dir.join(format!("host-{host}"));
        let mut local = bench_ledger(&state, host, now);
        let settings = FleetSettings {
            url: Some(url.parse().unwrap()),
            password_file: Some(password.to_path_buf()),
            interval: secretmon::bounded::Period::from_secs(30),
            timeout: secretmon::bounded::Period::from_secs(60),
        };
        let mut syncer = Syncer::new(
            settings.connection(None).unwrap().unwrap(),
            who(&format!("node-{host:04}")),
            &state,
            now - chrono::Duration::days(31),
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        let synced = rt.block_on(syncer.sync(Utc::now(), 0, false)).unwrap();
        full.push(t0.elapsed());
        rows += synced.rows;
        if host < BENCH_INCREMENTAL {
            // Thirty seconds later: a few services read again.
            for j in 0..5 {
                local.read(
                    &format!("sec-r{}", 100 + j),
                    &format!("systemd:svc-{}.service", (100 + j) % 40),
                    0,
                    2,
                );
            }
            let t0 = std::time::Instant::now();
            let synced = rt.block_on(syncer.sync(Utc::now(), 0, false)).unwrap();
            incremental.push(t0.elapsed());
            assert!(synced.rows <= 15, "{synced:?}");
        }
        drop(syncer);
        drop(local);
        std::fs::remove_dir_all(&state).unwrap();
        if (host + 1) % 100 == 0 {
            eprintln!(
                "bench: {} hosts synced in {:.0?}",
                host + 1,
                started.elapsed()
            );
        }
    }
    Populated {
        full,
        incremental,
        rows,
        took: started.elapsed(),
    }
}

/// `cargo xtask bench`'s fleet run: simulated hosts write through the real
/// sync code into a real PostgreSQL (fsync on, TLS verify-full), then the
/// real binary reports on the fleet as JSON and as HTML.
#[test]
#[ignore = "a benchmark: cargo xtask bench runs it"]
fn bench_fleet() {
    let (ca, cert, key) = certificates();
    let tls = ServerTls {
        cert_pem: &cert,
        key_pem: &key,
    };
    let (pg, kept) = match std::env::var_os(BENCH_KEEP_ENV) {
        Some(keep) => Postgres::keep_in(Path::new(&keep), Some(tls), true),
        None => (Postgres::start_with(Some(tls), true), false),
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let query = format!("sslmode=verify-full&sslrootcert={}", ca_file.display());
    let url = pg.url("localhost", &query);
    let password = pg.password_file(dir.path());
    let populated = if kept {
        let hosts = pg.query("SELECT count(*) FROM fleet_host");
        assert_eq!(
            hosts,
            BENCH_HOSTS.to_string(),
            "{BENCH_KEEP_ENV}: a store not fully populated; remove the directory"
        );
        pg.query("UPDATE fleet_run SET alive = now(); UPDATE fleet_host SET last_sync = now()");
        eprintln!("bench: the store kept in ${BENCH_KEEP_ENV} is reused; syncs are not measured");
        None
    } else {
        Some(populate(dir.path(), &url, &password))
    };
    let readers: u64 = pg
        .query("SELECT count(*) FROM fleet_reader")
        .parse()
        .unwrap();
    let size = pg.query("SELECT pg_size_pretty(pg_database_size(current_database()))");
    pg.query("VACUUM ANALYZE");

    let report = |args: &[&str]| -> Duration {
        let t0 = std::time::Instant::now();
        let out = std::process::Command::new(support::BIN)
            .args(["report", "--fleet", &url, "--window", "30d"])
            .args(["--log-level", "debug", "--set"])
            .arg(format!("fleet.password_file={}", s(&password)))
            .args(args)
            .output()
            .unwrap();
        let took = t0.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !args.contains(&"--html") {
            std::fs::write(dir.path().join("fleet.json"), &out.stdout).unwrap();
        }
        // Where the time went, as the report logs it.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if line.contains("fleet report:") || line.contains("report page:") {
                eprintln!("bench: {args:?}: {}", line.trim());
            }
        }
        took
    };
    let json_file = dir.path().join("fleet.json");
    let html_file = dir.path().join("fleet.html");
    let mut json_times = Vec::new();
    let mut html_times = Vec::new();
    for _ in 0..3 {
        json_times.push(report(&["--json"]));
        html_times.push(report(&["--html", s(&html_file)]));
    }
    let json_size = std::fs::metadata(&json_file).unwrap().len();
    let html_size = std::fs::metadata(&html_file).unwrap().len();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_file).unwrap()).unwrap();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match &populated {
        Some(p) => println!(
            "fleet: {BENCH_HOSTS} hosts × {BENCH_SECRETS} secrets × {BENCH_READERS} readers; {} rows sent, {readers} reader rows, database {size}, {:.0?} to populate",
            p.rows, p.took
        ),
        None => println!(
            "fleet: {BENCH_HOSTS} hosts × {BENCH_SECRETS} secrets × {BENCH_READERS} readers (a kept store); {readers} reader rows, database {size}"
        ),
    }
    println!("| measure | median | p90 | max | goal |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, v: &mut Vec<Duration>, goal: &str| {
        let max = *v.iter().max().unwrap();
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {goal} |",
            median(v).as_secs_f64() * 1e3,
            percentile(v, 90).as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    };
    if let Some(mut p) = populated {
        row("one host's first (full) sync", &mut p.full, "≤ 100 ms");
        row(
            "one host's next sync (5 readers changed)",
            &mut p.incremental,
            "≤ 100 ms",
        );
    }
    row("fleet report --json (3 runs)", &mut json_times, "≤ 5 s");
    row("fleet report --html (3 runs)", &mut html_times, "≤ 10 s");
    println!(
        "JSON {:.1} MiB, {} secrets, {} findings; HTML {:.2} MiB (goal ≤ 10 MiB)",
        mib(json_size),
        doc["secrets"].as_array().unwrap().len(),
        doc["findings"].as_array().unwrap().len(),
        mib(html_size)
    );
}
