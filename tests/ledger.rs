//! What the ledger says must be true, end to end: each test scripts one way
//! a real agent on a real host used to lose or invent a fact (a run with
//! another `--watch`, a secret found while running, secretmon reading its
//! own secrets, a refused open, a `touch`, lost events, cut paths, a new
//! fingerprint key, two agents on one state dir) and checks the events and
//! `secretmon report`.
//!
//! Needs root (eBPF); without it each test says why and returns. As root a
//! probe that cannot load fails them.

mod support;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{
    Agent, BIN, PLANTED, assert_no_planted, can_load_probes, is_read_by, report, report_findings,
    report_json, run_ok, s, wait_until, which, write,
};

const WAIT: Duration = Duration::from_secs(15);

/// A configuration whose clock-driven rules run every `interval`.
fn config(dir: &Path, interval: &str) -> PathBuf {
    write(
        &dir.join("secretmon.toml"),
        &format!("[findings]\ninterval = \"{interval}\"\n"),
        0o600,
    )
}

fn start(config: &Path, state: &Path, watch: &[&Path]) -> Agent {
    let mut args = vec!["--config", s(config), "--state", s(state)];
    for w in watch {
        args.extend(["--watch", s(w)]);
    }
    Agent::start(&args)
}

/// Stop with SIGTERM; every stdout line as JSON, and stderr.
fn stop(agent: Agent) -> (Vec<Value>, String) {
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_no_planted(&[&lines.join("\n"), &stderr]);
    let events = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (events, stderr)
}

fn findings_of<'a>(events: &'a [Value], ty: &str, path: &Path) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|v| {
            v["kind"] == "finding"
                && v["finding"]["type"] == ty
                && v["finding"]["secret"]["path"] == s(path)
        })
        .collect()
}

/// The report's entry of the secret at `path`.
fn entry<'a>(report: &'a Value, path: &Path) -> &'a Value {
    report["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == s(path))
        .unwrap_or_else(|| panic!("{} not in the report", path.display()))
}

/// The reader `identity` of a report entry.
fn reader<'a>(entry: &'a Value, identity: &str) -> &'a Value {
    entry["readers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["identity"] == identity)
        .unwrap_or_else(|| panic!("{identity} not among the readers of {entry:#}"))
}

fn has(report: &Value, ty: &str, path: &Path) -> bool {
    report_findings(report).contains(&(ty.into(), s(path).into()))
}

/// A directory others may enter, as a home or /srv is (a tempdir is 0700).
fn open_dir(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A PEM private key by its label only: what the inventory types as one.
fn pem_key() -> String {
    format!("-----BEGIN PRIVATE KEY-----\n{PLANTED}\n-----END PRIVATE KEY-----\n")
}

#[test]
fn a_run_with_another_watch_keeps_what_the_first_run_found() {
    if !can_load_probes("a_run_with_another_watch_keeps_what_the_first_run_found") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(dir.path(), "1s");
    let first = dir.path().join("first");
    let key = write(&first.join("api.key"), &format!("{PLANTED}-key"), 0o644);
    let db = write(&first.join("db.password"), &format!("{PLANTED}-db"), 0o644);
    let second = dir.path().join("second");
    write(
        &second.join("other.key"),
        &format!("{PLANTED}-other"),
        0o600,
    );

    let mut agent = start(&config, &state, &[&first]);
    for path in [&key, &db] {
        agent.wait_for(WAIT, |v| {
            v["kind"] == "finding"
                && v["finding"]["type"] == "weak_permissions"
                && v["finding"]["secret"]["path"] == s(path)
        });
    }
    stop(agent);
    let before = report_json(&state, &[]);
    assert!(has(&before, "weak_permissions", &key) && has(&before, "weak_permissions", &db));

    // Another run watches another directory: the first one's files are
    // still there, so they are not removed, and their findings stay.
    let agent = start(&config, &state, &[&second]);
    std::thread::sleep(Duration::from_millis(2500));
    stop(agent);
    let after = report_json(&state, &[]);
    for path in [&key, &db] {
        assert!(has(&after, "weak_permissions", path), "{after:#}");
        let e = entry(&after, path);
        assert!(e["removed"].is_null(), "{e:#}");
        assert!(e["unwatched"].is_string(), "{e:#}");
    }
    let (text, _) = report(&state, &[]);
    assert!(text.contains("(not watched since"), "{text}");

    // One of them is deleted: now it is removed, and its finding goes.
    std::fs::remove_file(&db).unwrap();
    let agent = start(&config, &state, &[&second]);
    std::thread::sleep(Duration::from_millis(1500));
    stop(agent);
    let last = report_json(&state, &[]);
    assert!(entry(&last, &db)["removed"].is_string());
    assert!(!has(&last, "weak_permissions", &db));
    assert!(has(&last, "weak_permissions", &key));
}

#[test]
fn secrets_found_while_running_are_in_the_ledger_at_once() {
    if !can_load_probes("secrets_found_while_running_are_in_the_ledger_at_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // No refresh of the inventory while the test runs: what reaches the
    // ledger reaches it as it is found.
    let config = config(dir.path(), "1h");
    let watched = dir.path().join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let mut agent = start(&config, &state, &[&watched]);

    // Made after the start, where inotify watches.
    let late = write(
        &watched.join("late.token"),
        &format!("{PLANTED}-late"),
        0o644,
    );
    // Made where no scan looked: the kernel's name rules find it.
    let found = write(&dir.path().join("deploy/server.key"), &pem_key(), 0o644);
    for path in [&late, &found] {
        wait_until("the new secret to be read as one", || {
            let pid = run_ok(Command::new("head").args(["-c1", s(path)]));
            agent
                .try_wait_for(Duration::from_secs(2), |v| {
                    is_read_by(v, pid) && v["secret"]["path"] == s(path)
                })
                .is_some()
        });
    }
    stop(agent);

    let r = report_json(&state, &[]);
    let head = format!("user:root:{}", s(&which("head")));
    for path in [&late, &found] {
        let e = entry(&r, path);
        assert_eq!(e["mode"], "0644", "{e:#}");
        assert!(reader(e, &head)["reads"].as_u64().unwrap() >= 1);
        assert!(has(&r, "weak_permissions", path), "{r:#}");
    }
}

#[test]
fn secretmon_inventory_during_a_run_is_no_reader() {
    if !can_load_probes("secretmon_inventory_during_a_run_is_no_reader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(dir.path(), "1s");
    let root = dir.path().join("root");
    write(
        &root.join("etc/passwd"),
        "ana:x:1000:1000::/home/ana:/bin/sh\n",
        0o644,
    );
    let creds = write(
        &root.join("home/ana/.aws/credentials"),
        &format!(
            "[default]\naws_access_key_id = AKIAFAKEFAKEFAKE0000\naws_secret_access_key = {PLANTED}\n"
        ),
        0o600,
    );
    let mut agent = start(&config, &state, &[&creds]);
    let pid = run_ok(Command::new("head").args(["-c1", s(&creds)]));
    agent.wait_for(WAIT, |v| is_read_by(v, pid));

    // The inventory reads every secret below its root, this one included.
    let inventory = Command::new(BIN)
        .args([
            "inventory",
            "--json",
            "--root",
            s(&root),
            "--state",
            s(&state),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let inventory_pid = inventory.id();
    let out = inventory.wait_with_output().unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    let said = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{said}");
    assert_no_planted(&[&listed, &said]);
    assert!(listed.contains("/home/ana/.aws/credentials"), "{listed}");
    // Two timer rounds: the read, if it were one, would be folded and ruled.
    std::thread::sleep(Duration::from_millis(2500));
    let (events, _) = stop(agent);
    assert!(
        !events.iter().any(|v| is_read_by(v, inventory_pid)),
        "secretmon inventory was reported as a reader"
    );
    assert!(findings_of(&events, "shared_secret", &creds).is_empty());
    let r = report_json(&state, &[]);
    let readers: Vec<&str> = entry(&r, &creds)["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["identity"].as_str().unwrap())
        .collect();
    assert_eq!(readers, [format!("user:root:{}", s(&which("head")))]);
    assert!(!has(&r, "shared_secret", &creds));
}

#[test]
fn a_refused_open_from_a_terminal_is_no_human_use() {
    if !can_load_probes("a_refused_open_from_a_terminal_is_no_human_use") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    open_dir(dir.path());
    let state = dir.path().join("state");
    let config = config(dir.path(), "1s");
    let token = write(
        &dir.path().join("ops/admin.token"),
        &format!("{PLANTED}-ops"),
        0o600,
    );
    open_dir(&dir.path().join("ops"));
    let mut agent = start(&config, &state, &[&token]);

    // nobody, at a terminal, tries to read root's 0600 token.
    let attempt = format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups cat '{}' || true",
        s(&token)
    );
    run_ok(
        Command::new("script")
            .args(["-qec", &attempt, "/dev/null"])
            .stdin(Stdio::null()),
    );
    let refused = agent.wait_for(WAIT, |v| {
        v["kind"] == "secret_read" && v["secret"]["path"] == s(&token)
    });
    assert_eq!(refused["access"]["result"], "EACCES", "{refused}");
    assert_eq!(refused["identity"]["human"], true, "{refused}");
    // Three timer rounds.
    std::thread::sleep(Duration::from_secs(3));
    let (events, _) = stop(agent);
    assert!(findings_of(&events, "human_use", &token).is_empty());
    let r = report_json(&state, &[]);
    assert!(!has(&r, "human_use", &token));
    let who = refused["identity"]["id"].as_str().unwrap();
    let row = reader(entry(&r, &token), who);
    assert_eq!(
        (
            row["denied"].as_u64(),
            row["reads"].as_u64(),
            row["human"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{row}"
    );
}

#[test]
fn public_keys_in_a_watched_directory_are_no_secrets() {
    if !can_load_probes("public_keys_in_a_watched_directory_are_no_secrets") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(dir.path(), "1s");
    let keys = dir.path().join("keys");
    let public = write(
        &keys.join("id_ed25519.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEpublic ana@laptop\n",
        0o644,
    );
    let private = write(&keys.join("deploy.key"), &pem_key(), 0o600);
    let agent = start(&config, &state, &[&keys, &public]);
    std::thread::sleep(Duration::from_millis(1500));
    let (events, stderr) = stop(agent);
    assert!(
        stderr.contains("holds no secret (a public key)"),
        "the --watch of a public key is answered: {stderr}"
    );
    assert!(findings_of(&events, "weak_permissions", &public).is_empty());
    let r = report_json(&state, &[]);
    entry(&r, &private);
    assert!(
        !r["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == s(&public)),
        "{r:#}"
    );
}

#[test]
fn touch_is_a_writer_not_a_second_reader() {
    if !can_load_probes("touch_is_a_writer_not_a_second_reader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(dir.path(), "1s");
    let db = write(
        &dir.path().join("app/db.password"),
        &format!("{PLANTED}-db"),
        0o600,
    );
    let mut agent = start(&config, &state, &[&db]);
    let pid = run_ok(Command::new("head").args(["-c1", s(&db)]));
    agent.wait_for(WAIT, |v| is_read_by(v, pid));
    let pid = run_ok(Command::new("touch").arg(&db));
    let touched = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(touched["access"]["flags"][0], "O_WRONLY", "{touched}");
    std::thread::sleep(Duration::from_millis(2500));
    let (events, _) = stop(agent);
    assert!(findings_of(&events, "shared_secret", &db).is_empty());
    let r = report_json(&state, &[]);
    assert!(!has(&r, "shared_secret", &db));
    let e = entry(&r, &db);
    let touch = reader(e, &format!("user:root:{}", s(&which("touch"))));
    assert_eq!(
        (touch["reads"].as_u64(), touch["writes"].as_u64()),
        (Some(0), Some(1))
    );
    let head = reader(e, &format!("user:root:{}", s(&which("head"))));
    assert_eq!(
        (head["reads"].as_u64(), head["writes"].as_u64()),
        (Some(1), Some(0))
    );
    let (text, _) = report(&state, &[]);
    assert!(text.contains("wrote ×1"), "{text}");
}

#[test]
fn after_lost_events_a_reader_is_unknown_never_its_parent() {
    if !can_load_probes("after_lost_events_a_reader_is_unknown_never_its_parent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token = write(
        &dir.path().join("app/api.token"),
        &format!("{PLANTED}-api"),
        0o600,
    );
    // 4 KiB: no exec record fits (argv alone is 4 KiB), so every exec is
    // lost while forks and opens, far smaller, are not.
    let mut agent = Agent::start(&[
        "--state",
        s(&state),
        "--watch",
        s(&token),
        "--ring-buffer-size",
        "4096",
    ]);
    let sh = which("sh");
    let head = which("head");
    let me = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let mut read = None;
    wait_until("a read to get through the tiny ring buffer", || {
        // The shell forks head: without head's exec (nor the shell's), the
        // table knew only the parents.
        run_ok(Command::new(&sh).args(["-c", "head -c1 \"$1\" >/dev/null; true", "sh", s(&token)]));
        read = agent.try_wait_for(Duration::from_secs(2), |v| {
            v["kind"] == "secret_read" && v["secret"]["path"] == s(&token)
        });
        read.is_some()
    });
    let read = read.unwrap();
    let id = read["identity"]["id"].as_str().unwrap();
    let exe = read["process"]["exe"].as_str();
    for parent in [&sh, &me] {
        assert_ne!(exe, Some(s(parent)), "attributed to its parent: {read}");
        assert_ne!(id, format!("user:root:{}", s(parent)), "{read}");
    }
    if id == "unknown" {
        assert_eq!(read["identity"]["kind"], "unknown");
        assert_eq!(exe, None, "{read}");
        assert_eq!(read["process"]["args"], serde_json::json!([]), "{read}");
    } else {
        // Still alive when its read was handled: /proc named it.
        assert_eq!(exe, Some(s(&head)), "{read}");
    }
    agent.wait_for(WAIT, |v| v["kind"] == "agent" && v["status"] == "lost");
    stop(agent);
}

#[test]
fn cut_paths_of_name_rule_files_are_made_whole_or_said_cut() {
    if !can_load_probes("cut_paths_of_name_rule_files_are_made_whole_or_said_cut") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(dir.path(), "1s");
    let mut agent = start(&config, &state, &[]);
    // Names longer than the kernel's 31 bytes, alike in their first 31.
    let long = "a-service-account-credentials-for-prod";
    let longs: Vec<PathBuf> = (1..=2)
        .map(|i| {
            write(
                &dir.path().join(format!("keys/{long}-{i}.pem")),
                &pem_key(),
                0o600,
            )
        })
        .collect();
    // Deeper than the kernel's 16 names, alike in their last 16.
    let deep_dirs: PathBuf = (2..=18).map(|i| i.to_string()).collect();
    let deeps: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|top| {
            write(
                &dir.path().join(top).join(&deep_dirs).join("deep.pem"),
                &pem_key(),
                0o600,
            )
        })
        .collect();
    let mut ids = Vec::new();
    for path in longs.iter().chain(&deeps) {
        let pid = run_ok(Command::new("cat").arg(path));
        let read = agent.wait_for(WAIT, |v| is_read_by(v, pid));
        ids.push(read["secret"]["id"].as_str().unwrap().to_string());
        if longs.contains(path) {
            assert_eq!(read["secret"]["path"], s(path), "{read}");
            assert!(read["secret"]["path_truncated"].is_null(), "{read}");
        } else {
            let shown = read["secret"]["path"].as_str().unwrap();
            assert!(
                shown.ends_with("/18/deep.pem") && shown != s(path),
                "{read}"
            );
            assert_eq!(read["secret"]["path_truncated"], true, "{read}");
        }
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{ids:?}");
    stop(agent);
    let r = report_json(&state, &[]);
    for path in &longs {
        entry(&r, path);
    }
}

#[test]
fn a_new_fingerprint_key_claims_no_rotation() {
    if !can_load_probes("a_new_fingerprint_key_claims_no_rotation") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(dir.path(), "1s");
    let token = write(
        &dir.path().join("app/api.token"),
        &format!("{PLANTED}-api"),
        0o600,
    );
    stop(start(&config, &state, &[&token]));
    let before = report_json(&state, &[]);
    let first = entry(&before, &token)["fingerprints"][0].clone();

    std::fs::remove_file(state.join("fingerprint.key")).unwrap();
    let (_, stderr) = stop(start(&config, &state, &[&token]));
    assert!(
        stderr.contains("fingerprint key is not the one"),
        "{stderr}"
    );
    let after = report_json(&state, &[]);
    assert!(after["fingerprint_key_changed"].is_string(), "{after:#}");
    let spans = entry(&after, &token)["fingerprints"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(spans[0]["fingerprint"], first["fingerprint"]);
    assert_eq!(spans[0]["earlier_key"], true);
    assert_ne!(spans[1]["fingerprint"], first["fingerprint"]);
    assert_eq!(
        spans[1]["first_seen"], first["first_seen"],
        "the same value since the first run, not a rotation"
    );
    let (text, _) = report(&state, &[]);
    assert!(text.contains("the fingerprint key changed at"), "{text}");
}

#[test]
fn a_second_agent_on_one_state_dir_is_refused_naming_the_first() {
    if !can_load_probes("a_second_agent_on_one_state_dir_is_refused_naming_the_first") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token = write(
        &dir.path().join("app/api.token"),
        &format!("{PLANTED}-api"),
        0o600,
    );
    let first = Agent::start(&["--state", s(&state), "--watch", s(&token)]);
    let out = Command::new(BIN)
        .args(["run", "--state", s(&state), "--watch", s(&token)])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    assert!(String::from_utf8(out.stdout).unwrap().is_empty());
    // The first one is unharmed.
    stop(first);
}
