//! `secretmon report --html` in a real headless Chromium: the page shows
//! the secrets, their readers and findings, runs no script but its own,
//! fetches nothing, and shows hostile names as text.

mod support;

use std::{path::Path, process::Command};

use chrono::{DateTime, Duration, Utc};
use secretmon::ledger::{Ledger, Observation, OpenMode, SecretFacts, Seen};

/// A path an attacker chose: markup that would run if it were not escaped.
const HOSTILE_DIR: &str = "/srv/<img src=x onerror=document.title='pwned'>";

fn facts(id: &str, path: &str, mode: u32, at: DateTime<Utc>) -> SecretFacts {
    SecretFacts {
        id: id.into(),
        path: path.into(),
        secret_type: "aws_credentials".into(),
        fingerprint: Some(format!("hmac-sha256:{id}")),
        lifetime: Some("static".into()),
        hint: Some("AKIA…".into()),
        uid: Some(0),
        gid: Some(0),
        mode: Some(mode),
        mtime: Some(at),
        expires: None,
    }
}

fn read(secret: &str, who: &str, human: bool, at: DateTime<Utc>) -> Observation {
    Observation::Read {
        at,
        secret_id: secret.into(),
        who: Seen {
            id: who.into(),
            kind: "user".into(),
            spiffe_id: String::new(),
            unit: None,
            user_manager: false,
            cgroup_id: 1,
            exe: Some("/usr/bin/cat".into()),
            human,
        },
        pid: 9,
        uid: 0,
        count: 3,
        denied: false,
        mode: OpenMode::Read,
    }
}

/// A ledger with a planted secret read by a service and by a person, and a
/// world-readable one nobody reads, at a hostile path.
fn ledger(state: &Path) -> (String, String) {
    let mut ledger = Ledger::open(state).unwrap();
    let mut mem = ledger.snapshot().unwrap();
    let now = Utc::now();
    let planted = "/srv/app/.aws/credentials".to_string();
    let hostile = format!("{HOSTILE_DIR}/.aws/credentials");
    let mut rows = Vec::new();
    rows.extend(mem.observe_secret(
        facts("sec-app", &planted, 0o600, now),
        now - Duration::minutes(50),
    ));
    rows.extend(mem.observe_secret(
        facts("sec-evil", &hostile, 0o644, now),
        now - Duration::minutes(50),
    ));
    rows.extend(mem.observe(&read(
        "sec-app",
        "systemd:app.service",
        false,
        now - Duration::minutes(40),
    )));
    rows.extend(mem.observe(&read(
        "sec-app",
        "user:<b>ana</b>:/usr/bin/cat",
        true,
        now - Duration::minutes(5),
    )));
    ledger.write(&rows).unwrap();
    (planted, hostile)
}

#[test]
fn html_report_renders_in_chromium_and_fetches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (planted, _hostile) = ledger(&state);
    let page = dir.path().join("report.html");
    let out = Command::new(support::BIN)
        .args(["report", "--state"])
        .arg(&state)
        .arg("--html")
        .arg(&page)
        .args(["--window", "1h", "--set", "agent.host_name=web-<7>"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.len() < 1 << 20);

    let r = support::chromium::render(&page, dir.path());
    // Kept for a look: target/report-html.png.
    let _ = std::fs::copy(
        &r.screenshot,
        concat!(env!("CARGO_TARGET_TMPDIR"), "/report-html.png"),
    );
    assert!(
        r.page_requests.is_empty(),
        "the page tried the network: {:?}",
        r.page_requests
    );
    // Rendered, scripts run: the title is ours, the filter box is there.
    assert!(
        r.dom
            .contains("<title>secretmon report: web-&lt;7&gt;</title>"),
        "{}",
        &r.dom[..500.min(r.dom.len())]
    );
    assert!(!r.dom.contains("<title>pwned"), "an injected handler ran");
    assert!(
        !r.dom.contains("<img"),
        "markup from a path became an element"
    );
    assert!(
        !r.dom.contains("<b>ana"),
        "markup from an identity became an element"
    );
    assert!(
        r.dom.contains("&lt;img src=x onerror="),
        "the hostile path is shown as text"
    );
    for want in [
        planted.as_str(),
        "systemd:app.service",
        "human_use",
        "weak_permissions",
        "tighten the mode",
        "move to a workload identity",
        "Secrets by lifetime",
        "Reads over time",
        "<svg",
        "id=\"filter\"",
    ] {
        assert!(r.dom.contains(want), "{want} not on the page");
    }
    support::assert_no_planted(&[&r.dom, &html]);
    let png = std::fs::read(&r.screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
