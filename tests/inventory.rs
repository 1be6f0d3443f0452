//! End-to-end tests of the inventory: `secretmon inventory` over the
//! fixture root, the leak test (no planted value in any output, log or
//! state file), and rotation followed by the kernel watch map (root).

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Agent, BIN, can_load_probes};

/// The fixture root copied to a temp dir (tests may add to it).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/.");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(dir.path())
        .status();
    assert!(cp.unwrap().success());
    dir
}

/// What must never be printed: the fixture's marker, the base64 of it,
/// and a slice of every PEM body.
fn planted(root: &Path) -> Vec<String> {
    let mut values = vec!["PLANTED".to_string(), "UExBTlRFRD".to_string()];
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.unwrap();
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if text.contains("-----BEGIN") {
            values.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 40)
                    .map(|l| l[..40].to_string()),
            );
        }
    }
    values
}

fn assert_no_leak(what: &str, text: &str, planted: &[String]) {
    for value in planted {
        assert!(
            !text.contains(value.as_str()),
            "a planted value leaked into {what}"
        );
    }
}

/// Every file below `dir`, as lossy text.
fn dir_text(dir: &Path) -> String {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned())
        .collect()
}

fn inventory(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("inventory")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn inventory_of_the_fixture_root_finds_every_type_and_leaks_nothing() {
    let root = fixture();
    let state = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let s = state.path().to_str().unwrap();

    let json = inventory(&["--json", "--root", r, "--state", s]);
    let stdout = String::from_utf8(json.stdout).unwrap();
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut types: Vec<&str> = rows.iter().map(|v| v["type"].as_str().unwrap()).collect();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), 21, "{types:?}");
    let creds = rows
        .iter()
        .find(|v| v["path"] == "/home/ana/.aws/credentials")
        .expect("paths are relative to --root");
    assert_eq!(creds["lifetime"], "static");
    assert_eq!(creds["hint"], "AKIA…");
    assert!(
        creds["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    for field in [
        "id", "reason", "uid", "gid", "mode", "size", "mtime", "dev", "ino",
    ] {
        assert!(!creds[field].is_null(), "{field}");
    }
    let stderr = String::from_utf8(json.stderr).unwrap();
    assert!(stderr.contains("secrets in"), "{stderr}");

    // The same key gives the same fingerprints on the next run.
    let again = inventory(&["--json", "--root", r, "--state", s]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), stdout);

    let table = inventory(&["--root", r, "--state", s]);
    let table_out = String::from_utf8(table.stdout).unwrap();
    assert!(
        table_out.starts_with("PATH") && table_out.lines().next().unwrap().ends_with("HINT"),
        "{table_out}"
    );
    assert!(
        table_out.contains("/home/ana/.ssh/id_ed25519"),
        "{table_out}"
    );

    let planted = planted(root.path());
    assert!(planted.len() > 10);
    assert_no_leak("--json output", &stdout, &planted);
    assert_no_leak("stderr", &stderr, &planted);
    assert_no_leak("the table", &table_out, &planted);
    assert_no_leak("the state dir", &dir_text(state.path()), &planted);
}

#[test]
fn an_unwritable_state_dir_gives_a_one_time_key_and_one_line() {
    let root = fixture();
    let r = root.path().to_str().unwrap();
    let out = inventory(&["--json", "--root", r, "--state", "/dev/null/state"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("secretmon: state dir /dev/null/state: ")
            && lines[0].contains("one-time key"),
        "{stderr}"
    );
}

#[test]
fn hostile_file_names_are_escaped_in_the_table() {
    use std::os::unix::ffi::OsStrExt as _;
    let root = fixture();
    let state = tempfile::tempdir().unwrap();
    // A directory name that would clear the screen and forge a row.
    let evil = std::ffi::OsStr::from_bytes(b"x\x1b[2J\x1b]0;pwned\x07\n/root/.aws/credentials\rz");
    let dir = root.path().join("home/ana/src").join(evil);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(".env"),
        "GITHUB_TOKEN=ghp_PLANTED000000000000000000000000000000\n",
    )
    .unwrap();
    let r = root.path().to_str().unwrap();
    let out = inventory(&["--root", r, "--state", state.path().to_str().unwrap()]);
    let table = String::from_utf8(out.stdout).unwrap();
    for raw in ['\u{1b}', '\u{7}', '\r'] {
        assert!(!table.contains(raw), "{raw:?} printed raw:\n{table}");
    }
    assert!(
        table.contains(
            "/home/ana/src/x\\x1b[2J\\x1b]0;pwned\\x07\\n/root/.aws/credentials\\rz/.env"
        ),
        "{table}"
    );
    assert!(
        !table
            .lines()
            .any(|l| l.starts_with("/root/.aws/credentials\\r")),
        "a forged row:\n{table}"
    );
}

/// `cat PATH`, then the secret_read event of that cat, if one comes.
fn cat(agent: &mut Agent, path: &Path, wait: Duration) -> Option<Value> {
    let child = Command::new("cat")
        .arg(path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    agent.try_wait_for(wait, |v| {
        v["kind"] == "secret_read" && v["process"]["pid"] == pid
    })
}

#[test]
fn a_rotated_file_keeps_its_id_with_a_new_fingerprint() {
    if !can_load_probes("a_rotated_file_keeps_its_id_with_a_new_fingerprint") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    fs::create_dir(&app).unwrap();
    let secret = app.join("api.token");
    fs::write(&secret, "PLANTED-token-one\n").unwrap();
    let state = dir.path().join("state");
    let mut agent = Agent::start(&[
        "--watch",
        app.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--log-level",
        "debug",
    ]);

    let first = cat(&mut agent, &secret, Duration::from_secs(10)).expect("first read reported");
    assert_eq!(first["secret"]["path"], secret.to_str().unwrap());
    assert!(first["secret"]["lifetime"].is_string());

    // Rotate as tools do: write a temp file, rename it over the secret.
    let tmp = app.join(".api.token.new");
    fs::write(&tmp, "PLANTED-token-two\n").unwrap();
    fs::rename(&tmp, &secret).unwrap();
    let rotated_at = Instant::now();
    let second = loop {
        if let Some(ev) = cat(&mut agent, &secret, Duration::from_millis(500)) {
            break ev;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(10),
            "reads of the rotated file are not reported"
        );
    };
    eprintln!("rotation followed within {:?}", rotated_at.elapsed());
    assert_eq!(second["secret"]["id"], first["secret"]["id"]);
    assert_eq!(second["secret"]["path"], first["secret"]["path"]);
    assert_ne!(
        second["secret"]["fingerprint"],
        first["secret"]["fingerprint"]
    );
    assert_eq!(second["secret"]["lifetime"], "dynamic");

    // Removed: dropped from the map, so a new file at another path is not
    // confused with it, and the agent keeps running.
    fs::remove_file(&secret).unwrap();
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    // The agent's own re-reads of the rotated file are not reported
    // (other agents' scans, from tests running alongside, may be).
    let path = format!("\"path\":{}", Value::from(secret.to_str().unwrap()));
    let own = lines
        .iter()
        .filter(|l| l.contains("\"kind\":\"secret_read\"") && l.contains(&path))
        .filter(|l| l.contains("\"comm\":\"secretmon\""))
        .count();
    assert_eq!(own, 0);
    let planted = vec!["PLANTED".to_string()];
    assert_no_leak("events", &lines.join("\n"), &planted);
    assert_no_leak("logs", &stderr, &planted);
    assert_no_leak("the state dir", &dir_text(&state), &planted);
}

#[test]
fn the_agent_leaks_no_planted_value() {
    if !can_load_probes("the_agent_leaks_no_planted_value") {
        return;
    }
    let root = fixture();
    let home = root.path().join("home/ana");
    let state = root.path().join("state");
    let mut agent = Agent::start(&[
        "--watch",
        home.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--log-level",
        "debug",
    ]);
    let mut read = Vec::new();
    for rel in [
        ".aws/credentials",
        ".netrc",
        "src/app/.env",
        ".ssh/id_ed25519",
    ] {
        let path: PathBuf = home.join(rel);
        let ev = cat(&mut agent, &path, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no secret_read for {rel}"));
        read.push(ev);
    }
    assert_eq!(read[0]["secret"]["type"], "aws_credentials");
    assert_eq!(read[0]["secret"]["hint"], "AKIA…");
    assert_eq!(read[2]["secret"]["type"], "env_file");
    // In-place edit while watched: picked up, nothing printed but a path.
    fs::write(
        home.join(".netrc"),
        "machine x login y password PLANTED-new\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    let planted = planted(root.path());
    assert_no_leak("events", &lines.join("\n"), &planted);
    assert_no_leak("logs", &stderr, &planted);
    assert_no_leak("the state dir", &dir_text(&state), &planted);
}
