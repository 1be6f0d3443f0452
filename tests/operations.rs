//! Operating the agent as a service: `check --json`, one fix text for BPF
//! LSM, `report` as a user who may not read the ledger, signals, reload and
//! the sd_notify protocol.

mod support;

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
};

use serde_json::Value;
use support::{BIN, is_root};

fn check_json() -> Value {
    let out = Command::new(BIN).args(["check", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {:?}", out));
    assert_eq!(v["ready"], out.status.success(), "{v}");
    v
}

#[test]
fn check_json_lists_every_item_with_status_and_fix() {
    let v = check_json();
    assert_eq!(v["schema"], "secretmon/check/v1");
    let items = v["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    for name in [
        "privileges",
        "kernel",
        "BTF",
        "tracefs",
        "ring buffer",
        "tracepoints",
        "BPF LSM",
        "fentry/fexit",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for item in items {
        let status = item["status"].as_str().unwrap();
        assert!(["ok", "missing", "unknown"].contains(&status), "{item}");
        // A fix exactly where something is not ok.
        assert_eq!(item["fix"].is_null(), status == "ok", "{item}");
    }
    if is_root() {
        assert_eq!(v["ready"], true, "{v}");
        let opens = v["opens"].as_str().unwrap();
        assert!(
            ["fexit", "lsm", "tracepoints"]
                .iter()
                .any(|h| opens.starts_with(h)),
            "{opens}"
        );
    }
}

/// `check` and `run --opens lsm` give the same fix when BPF LSM cannot be
/// used here (one text, from one place).
#[test]
fn check_and_run_give_one_fix_for_bpf_lsm() {
    if !support::can_load_probes("check_and_run_give_one_fix_for_bpf_lsm") {
        return;
    }
    let v = check_json();
    let lsm = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "BPF LSM")
        .unwrap()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let secret = support::plant_secret(dir.path());
    let mut child = Command::new(BIN)
        .args(["run", "--opens", "lsm", "--watch"])
        .arg(&secret)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if lsm["status"] == "ok" {
        // It loads here: nothing to compare; the agent starts.
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        assert!(first.contains("lsm:file_open"), "{first}");
        child.kill().unwrap();
        child.wait().unwrap();
        return;
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    let fix = lsm["fix"].as_str().unwrap();
    assert!(
        last.contains(&format!("fix: {fix}")),
        "run's error does not give check's fix `{fix}`:\n{last}"
    );
}

/// A ledger in a 0700 state dir is there: a user who may not read it is
/// told so, not that there is no ledger.
#[test]
fn report_as_a_user_who_cannot_read_the_ledger_says_permission_denied() {
    if !is_root() {
        eprintln!(
            "report_as_a_user_who_cannot_read_the_ledger_says_permission_denied: skipped: \
             making a ledger another user cannot read needs root"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    drop(secretmon::ledger::Ledger::open(&state).unwrap());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let out = Command::new(BIN)
        .arg("report")
        .arg("--state-dir")
        .arg(&state)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("sudo secretmon report"), "{stderr}");
    assert!(!stderr.contains("no ledger"), "{stderr}");
    // Where there is none, it still says so.
    let out = Command::new(BIN)
        .arg("report")
        .arg("--state-dir")
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger"));
}
