//! Ledger and findings end to end: an afternoon on a host is scripted with
//! real processes, and every planted problem must come out as a `finding`
//! event, once, and in `secretmon report`. A second test kills the agent
//! with SIGKILL in the middle of a burst of reads and checks that the
//! ledger is intact and that nothing is counted twice after a restart.
//!
//! Needs root (eBPF, cgroup directories); without it each test says why and
//! returns. As root a probe that cannot load fails them.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use support::{
    Agent, BIN, PLANTED, assert_no_planted, can_load_probes, report, report_findings, report_json,
    run_ok, s, wait_until, which, write,
};

/// A GitHub-token-shaped value planted on a command line.
const ARGV_TOKEN: &str = "ghp_FAKEe2e00000000000000000000000000000";
/// A value planted in an environment.
const ENV_VALUE: &str = "FAKE-env-token-value-never-printed";

/// A cgroup v2 directory, removed when dropped.
struct Cgroup(PathBuf);

impl Cgroup {
    /// `system.slice/<unit>` under the cgroup2 mount: a systemd service's
    /// cgroup, as far as the agent can tell.
    fn service(unit: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo
            .lines()
            .find_map(|line| {
                let (pre, post) = line.split_once(" - ")?;
                (post.split(' ').next()? == "cgroup2").then(|| pre.split(' ').nth(4))?
            })
            .expect("cgroup2 is mounted");
        let dir = Path::new(mount).join("system.slice").join(unit);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..len].to_string()
}

/// A named test of a `finding` object.
type Check<'a> = (&'a str, &'a dyn Fn(&Value) -> bool);

/// Collect `finding` events until every check has matched one, or fail
/// with what was seen.
fn wait_findings(agent: &mut Agent, checks: &[Check<'_>]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = Vec::new();
    let mut missing: Vec<&str> = checks.iter().map(|(name, _)| *name).collect();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no finding for {missing:?}; got {found:#?}"
        );
        let ev = agent.wait_for(left, |v| v["kind"] == "finding");
        missing.retain(|name| {
            let (_, check) = checks.iter().find(|(n, _)| n == name).unwrap();
            !check(&ev["finding"])
        });
        found.push(ev);
    }
    found
}

#[test]
fn an_afternoon_on_a_host_raises_every_finding_once() {
    if !can_load_probes("an_afternoon_on_a_host_raises_every_finding_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The watched tree; state and configuration live beside it.
    let root = &dir.path().join("host");
    let state = dir.path().join("state");
    let unit = format!("secretmon-test-{}.service", random_hex(8));
    let unit_id = format!("systemd:{unit}");

    // The app's database password: read by its unit and by a second
    // identity; not rotated for 200 days.
    let db = write(
        &root.join("app/db.password"),
        &format!("{PLANTED}-db"),
        0o600,
    );
    run_ok(Command::new("touch").args(["-d", "200 days ago", s(&db)]));
    // The unit's SPIFFE SVID: it has a federated identity already.
    let svid = write(&root.join("spire/svid.pem"), "FAKE SVID", 0o600);
    // A token nobody reads any more.
    let old = write(
        &root.join("legacy/old.token"),
        &format!("{PLANTED}-old"),
        0o600,
    );
    // One API key in two places, readable by everyone.
    let key = write(
        &root.join("shared/api.key"),
        &format!("{PLANTED}-key"),
        0o644,
    );
    let copy = write(&root.join("copy/api.key"), &format!("{PLANTED}-key"), 0o644);
    // An operator's secret, read by hand from a terminal.
    let ops = write(
        &root.join("ops/admin.token"),
        &format!("{PLANTED}-ops"),
        0o600,
    );

    let policy = write(
        &dir.path().join("policy.toml"),
        &format!(
            "[[secret]]\nglob = \"{}/app/*\"\nallow = [\"{unit_id}\"]\n",
            s(root)
        ),
        0o600,
    );
    let config = write(
        &dir.path().join("secretmon.toml"),
        &format!(
            "[findings]\norphan_window = \"4s\"\nbaseline = \"1h\"\ninterval = \"1s\"\npolicy = \"{}\"\n",
            s(&policy)
        ),
        0o600,
    );
    let cgroup = Cgroup::service(&unit);
    let mut agent = Agent::start(&[
        "--config",
        s(&config),
        "--state",
        s(&state),
        "--watch",
        s(root),
    ]);

    // The unit reads its password and its SVID.
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && cat \"$1\" \"$2\"")
            .arg(cgroup.0.join("cgroup.procs"))
            .args([&db, &svid]),
    );
    // A second identity reads the password.
    run_ok(Command::new("head").args(["-c1", s(&db)]));
    // A person reads the operator's token in a terminal.
    run_ok(
        Command::new("script")
            .args(["-qec", &format!("cat '{}'", s(&ops)), "/dev/null"])
            .stdin(Stdio::null()),
    );
    // A secret in an environment, a token on a command line.
    run_ok(
        Command::new("sh")
            .args(["-c", "true"])
            .env("GITHUB_TOKEN", ENV_VALUE),
    );
    run_ok(Command::new("sh").args([
        "-c",
        "true",
        "sh",
        &format!("Authorization: Bearer {ARGV_TOKEN}"),
    ]));
    // Someone reads another process's environment.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    run_ok(Command::new("cat").arg(format!("/proc/{}/environ", sleeper.id())));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    let db_path = s(&db).to_string();
    let head = format!("user:root:{}", s(&which("head")));
    let ids = |f: &Value| -> Vec<String> {
        f["identities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let path_is = |f: &Value, p: &Path| f["secret"]["path"] == s(p);
    let shared = |f: &Value| {
        f["type"] == "shared_secret"
            && f["secret"]["path"] == db_path.as_str()
            && ids(f).contains(&unit_id)
            && ids(f).contains(&head)
    };
    let unexpected = |f: &Value| {
        f["type"] == "unexpected_reader"
            && f["secret"]["path"] == db_path.as_str()
            && ids(f) == [head.clone()]
    };
    let federation = |f: &Value| {
        f["type"] == "static_despite_federation"
            && f["secret"]["path"] == db_path.as_str()
            && ids(f) == [unit_id.clone()]
            && f["evidence"]["paths"][0] == s(&svid)
    };
    let long_lived = |f: &Value| f["type"] == "long_lived_secret" && path_is(f, &db);
    let orphaned = |f: &Value| f["type"] == "orphaned_secret" && path_is(f, &old);
    let duplicated = |f: &Value| {
        let paths = f["evidence"]["paths"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        f["type"] == "duplicated_secret"
            && paths.contains(&Value::from(s(&key)))
            && paths.contains(&Value::from(s(&copy)))
    };
    let weak =
        |f: &Value| f["type"] == "weak_permissions" && path_is(f, &key) && f["severity"] == "high";
    let human =
        |f: &Value| f["type"] == "human_use" && path_is(f, &ops) && f["owasp"][0] == "NHI10";
    let env = |f: &Value| f["type"] == "secret_in_env" && f["secret"]["env_name"] == "GITHUB_TOKEN";
    let argv = |f: &Value| {
        f["type"] == "secret_in_argv"
            && f["secret"]["type"] == "github_token"
            && f["secret"]["match"] == "ghp_…"
    };
    let environ = |f: &Value| f["type"] == "environ_read" && f["severity"] == "high";
    let checks: Vec<Check<'_>> = vec![
        ("shared_secret", &shared),
        ("unexpected_reader", &unexpected),
        ("static_despite_federation", &federation),
        ("long_lived_secret", &long_lived),
        ("orphaned_secret", &orphaned),
        ("duplicated_secret", &duplicated),
        ("weak_permissions", &weak),
        ("human_use", &human),
        ("secret_in_env", &env),
        ("secret_in_argv", &argv),
        ("environ_read", &environ),
    ];
    let found = wait_findings(&mut agent, &checks);
    for f in &found {
        let f = &f["finding"];
        for field in [
            "id",
            "type",
            "severity",
            "secret",
            "identities",
            "evidence",
            "owasp",
        ] {
            assert!(!f[field].is_null(), "{field} missing: {f}");
        }
        assert!(!f["recommendation"].as_str().unwrap().is_empty(), "{f}");
        assert!(!f["evidence"]["reason"].as_str().unwrap().is_empty(), "{f}");
    }
    // Three more timer rounds: nothing fires twice.
    std::thread::sleep(Duration::from_secs(3));
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["kind"] == "finding" {
            *fired
                .entry(v["finding"]["id"].as_str().unwrap().into())
                .or_default() += 1;
        }
    }
    assert!(
        fired.values().all(|n| *n == 1),
        "a finding fired twice: {fired:?}"
    );
    let all = lines.join("\n");
    assert_no_planted(&[&all, &stderr]);
    for value in [ARGV_TOKEN, ENV_VALUE] {
        assert!(
            !all.contains(value) && !stderr.contains(value),
            "{value} leaked"
        );
    }
    let stopped = lines.last().unwrap();
    assert!(
        stopped.contains("0 dropped, 0 failed commits (retried), 0 rows lost"),
        "{stopped}"
    );
    drop(cgroup);

    // The report, after the agent stopped: every planted problem. A window
    // of 10 minutes keeps the long-lived rule's reads in it; the orphaned
    // rule needs a window it has watched whole.
    let r = report_json(&state, &["--window", "10m", "--max-age", "90d"]);
    assert_eq!(r["schema"], "secretmon/report/v1");
    let got = report_findings(&r);
    for (ty, what) in [
        ("shared_secret", s(&db)),
        ("unexpected_reader", s(&db)),
        ("static_despite_federation", s(&db)),
        ("long_lived_secret", s(&db)),
        ("weak_permissions", s(&key)),
        ("weak_permissions", s(&copy)),
        ("human_use", s(&ops)),
        ("secret_in_env", "env:GITHUB_TOKEN"),
        ("secret_in_argv", "argv:github_token"),
    ] {
        assert!(
            got.contains(&(ty.into(), what.into())),
            "{ty} {what} not in {got:#?}"
        );
    }
    assert!(
        got.iter().any(|(t, _)| t == "duplicated_secret"),
        "{got:#?}"
    );
    assert!(got.iter().any(|(t, _)| t == "environ_read"), "{got:#?}");
    let db_entry = r["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == s(&db))
        .unwrap();
    let readers: BTreeSet<&str> = db_entry["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["identity"].as_str().unwrap())
        .collect();
    assert_eq!(readers, BTreeSet::from([unit_id.as_str(), head.as_str()]));
    let r = report_json(&state, &["--window", "3s"]);
    assert!(
        report_findings(&r).contains(&("orphaned_secret".into(), s(&old).into())),
        "{r:#}"
    );
    // And for a person: a table naming each secret and finding.
    let (text, _) = report(&state, &["--window", "10m"]);
    for want in [
        s(&db),
        s(&ops),
        s(&key),
        "shared_secret",
        "human_use",
        "HIGH",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    let json = serde_json::to_string(&r).unwrap();
    assert_no_planted(&[&text, &json]);
}

/// The access count of `path`'s secret by `identity`, committed so far, and
/// the integrity check, read through a connection of its own.
fn committed(state: &Path, identity: &str) -> (u64, String) {
    let conn =
        Connection::open_with_flags(state.join("ledger.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let count = conn
        .query_row(
            "SELECT coalesce(sum(count), 0) FROM access WHERE identity_id = ?1",
            [identity],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64;
    let integrity = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    (count, integrity)
}

/// Findings of `finding_type` about secret `subject` committed so far.
fn fired_count(state: &Path, finding_type: &str, subject: &str) -> u64 {
    let conn =
        Connection::open_with_flags(state.join("ledger.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM fired WHERE type = ?1 AND subject = ?2",
        [finding_type, subject],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

#[test]
fn sigkill_mid_burst_keeps_the_ledger_intact_and_counts_once() {
    if !can_load_probes("sigkill_mid_burst_keeps_the_ledger_intact_and_counts_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let secret = write(
        &dir.path().join("burst.token"),
        &format!("{PLANTED}-burst"),
        0o644,
    );
    let config = write(
        &dir.path().join("secretmon.toml"),
        "[findings]\ninterval = \"1s\"\n",
        0o600,
    );
    let args = [
        "--config",
        s(&config),
        "--state",
        s(&state),
        "--watch",
        s(&secret),
    ];
    let reader = format!("user:root:{}", s(&which("head")));

    let mut first = Agent::start(&args);
    // A finding that fired and was committed must not fire again.
    // Other secrets on the host may have loose permissions too: this one's.
    let weak = first.wait_for(Duration::from_secs(10), |v| {
        v["kind"] == "finding"
            && v["finding"]["type"] == "weak_permissions"
            && v["finding"]["secret"]["path"] == s(&secret)
    });
    let subject = weak["finding"]["secret"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("the finding to be committed", || {
        fired_count(&state, "weak_permissions", &subject) == 1
    });

    // A burst of reads, each by its own process; the agent dies in it.
    const BURST: usize = 3000;
    let mut burst = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq {BURST}); do head -c1 \"$1\" >/dev/null; done"
        ))
        .arg("sh")
        .arg(&secret)
        .spawn()
        .unwrap();
    wait_until("reads to be committed", || committed(&state, &reader).0 > 0);
    let (code, _, _) = first.stop(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(code, None, "killed by a signal");
    assert!(
        burst.try_wait().unwrap().is_none(),
        "the burst ended before the kill; make it longer"
    );
    assert!(burst.wait().unwrap().success());

    let (before, integrity) = committed(&state, &reader);
    assert_eq!(integrity, "ok");
    // Reads not committed at the kill are lost, never replayed.
    eprintln!("{before} of {BURST} reads were committed when the agent was killed");
    assert!(
        before > 0 && (before as usize) < BURST,
        "{before} of {BURST} reads committed before the kill"
    );

    // Restart on the same ledger; reads after it add up, nothing replays.
    let second = Agent::start(&args);
    const AFTER: usize = 40;
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for i in $(seq {AFTER}); do head -c1 \"$1\" >/dev/null; done"
            ))
            .arg("sh")
            .arg(&secret),
    );
    let (code, lines, stderr) = second.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let (after, integrity) = committed(&state, &reader);
    assert_eq!(integrity, "ok");
    assert_eq!(
        after,
        before + AFTER as u64,
        "committed {before} before the kill"
    );
    let again = lines
        .iter()
        .any(|l| l.contains("\"kind\":\"finding\"") && l.contains("\"type\":\"weak_permissions\""));
    assert!(!again, "weak_permissions fired again after the restart");
    assert_eq!(fired_count(&state, "weak_permissions", &subject), 1);
    assert_no_planted(&[&lines.join("\n"), &stderr]);
}

#[test]
fn report_without_a_ledger_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["report", "--state", s(dir.path())])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("secretmon run --state"), "{stderr}");
    let out = Command::new(BIN)
        .args(["report", "--window", "a while"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a while"), "{stderr}");
}
