//! End-to-end tests of what a local user must not be able to do to the
//! agent: turn it off with more secrets than its watch map holds, make it
//! follow a planted link or trust a file they wrote, hang it or fill its
//! memory with a special file, or crash it with an out-of-range setting.
//! Those that start the agent need root (and skip without it); the others
//! run anywhere.

mod support;

use std::{
    fs,
    io::{Read, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Agent, BIN, PLANTED, assert_no_planted, can_load_probes, is_root};

// The work dirs, config files and state dirs below are 0700/0600 and
// ours, as the agent now requires.

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(path: &Path, content: &str, mode: u32) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

/// A private work dir (0700, ours), as a careful admin's would be.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `secretmon ARGS`, killed if it runs longer than `limit` (a hang is a
/// failure, not a stuck test). Returns (exit code, stdout, stderr).
fn run_within(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs: a report of 70,000 secrets is far more than a
    // pipe holds, and a writer blocked on a full pipe never exits.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            r.read_to_string(&mut text).unwrap();
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("secretmon {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// The one line a refused start prints, checked to be one line.
fn refusal(args: &[&str]) -> String {
    let (code, out, err) = run_within(args, Duration::from_secs(60));
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(
        !out.contains("\"started\""),
        "refused only after it started: {out}"
    );
    // Besides the log (timestamped), one line.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    lines[0].to_string()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

// ---------------------------------------------------------------------------
// The watch map overflowing.

/// The files of a flooded home: distinct values (no giant duplicate
/// finding), 0600 (no permission findings), names the kernel's name rules
/// do not match, so that a read is reported only if watched by inode.
const FLOOD: usize = 70_000;
const MAX_WATCHED: u64 = 64;

#[test]
fn a_flooded_home_neither_stops_the_agent_nor_blinds_it_to_system_secrets() {
    if !can_load_probes("a_flooded_home_neither_stops_the_agent_nor_blinds_it_to_system_secrets") {
        return;
    }
    let dir = workdir();
    let home = dir.path().join("home/mallory");
    let proj = home.join("proj");
    fs::create_dir_all(&proj).unwrap();
    for i in 0..FLOOD {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(proj.join(format!(".env.{i}")))
            .unwrap();
        writeln!(f, "GITHUB_TOKEN=ghp_{i:036}").unwrap();
    }
    // System-class secrets: a --watch path, and a config glob outside any
    // home; neither name is one the kernel's name rules match.
    let watched = write(
        &dir.path().join("sys/app.secret"),
        &format!("{PLANTED}\n"),
        0o600,
    );
    let glob = write(
        &dir.path().join("srv/app/credentials"),
        &format!("[default]\naws_access_key_id = AKIAFAKE\naws_secret_access_key = {PLANTED}\n"),
        0o600,
    );
    let config = write(
        &dir.path().join("secretmon.toml"),
        &format!(
            // The scan's time is not under test: 70,000 files on a busy
            // machine can take longer than its default minute.
            "[capture]\nmax_watched = {MAX_WATCHED}\n\
             [inventory]\nglobs = [{:?}]\nscan_timeout = \"30m\"\n",
            s(&glob)
        ),
        0o600,
    );
    // Mallory's home, as the agent sees /etc/passwd: bind-mounted in a
    // mount namespace of its own, so the host's stays as it is.
    let mut passwd = fs::read_to_string("/etc/passwd").unwrap();
    passwd.push_str(&format!("mallory:x:4242:4242::{}:/bin/sh\n", s(&home)));
    let fake_passwd = write(&dir.path().join("passwd"), &passwd, 0o644);
    let state = dir.path().join("state");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/passwd && exec \"$@\"")
        .arg(&fake_passwd)
        .arg(BIN)
        .args(["run", "--config", s(&config), "--watch", s(&watched)])
        .args(["--state", s(&state)]);
    let mut agent = Agent::spawn(cmd, None, Duration::from_secs(300));

    // Reported at once, with the home responsible.
    let overflow = agent.wait_for(Duration::from_secs(30), |v| {
        v["kind"] == "agent" && v["status"] == "watch_overflow"
    });
    let o = &overflow["watch_overflow"];
    assert_eq!(o["max_watched"], MAX_WATCHED);
    assert_eq!(o["watched"], MAX_WATCHED);
    let unwatched = o["unwatched"].as_u64().unwrap();
    assert!(unwatched > FLOOD as u64 - MAX_WATCHED, "{overflow}");
    assert_eq!(o["dirs"].as_array().unwrap().len(), 1, "only the home: {o}");
    assert_eq!(o["dirs"][0]["dir"], s(&home));
    assert_eq!(o["dirs"][0]["unwatched"], unwatched);
    let finding = agent.wait_for(Duration::from_secs(30), |v| {
        v["kind"] == "finding" && v["finding"]["type"] == "watch_overflow"
    });
    assert_eq!(finding["finding"]["secret"]["path"], s(&home));
    assert_eq!(finding["finding"]["severity"], "high");
    assert_eq!(finding["finding"]["evidence"]["count"], unwatched);

    // The system secrets are watched by inode; so are the home's first
    // (its share of what is left), not its last. Reads come out in the
    // order they happened, so the last one's would come before the first's.
    // (The agent's first pass of its rules over 70,000 secrets can hold
    // the event loop for many seconds on a slow machine.)
    let (first, last) = (proj.join(".env.0"), proj.join(".env.9999"));
    let read_of = |paths: &[&Path]| {
        let paths: Vec<String> = paths.iter().map(|p| s(p).to_string()).collect();
        move |v: &Value| {
            v["kind"] == "secret_read" && paths.iter().any(|p| v["secret"]["path"] == p.as_str())
        }
    };
    for path in [&watched, &glob, &last, &first] {
        let cat = Command::new("cat").arg(path).output().unwrap();
        assert!(cat.status.success());
    }
    for path in [&watched, &glob, &first] {
        let read = agent.wait_for(Duration::from_secs(120), read_of(&[path, &last]));
        assert_eq!(
            read["secret"]["path"],
            s(path),
            "{} is beyond the home's share",
            s(&last)
        );
    }

    // It commits 70,000 secrets to its ledger on the way out.
    let (code, lines, stderr) =
        agent.stop_within(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(180));
    assert_eq!(code, Some(0), "{stderr}");
    let stdout = lines.join("\n");
    // Again only when it grew (a secret made elsewhere on the host
    // meanwhile takes a home's place).
    let counts: Vec<u64> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["status"] == "watch_overflow")
        .map(|v| v["watch_overflow"]["unwatched"].as_u64().unwrap())
        .collect();
    assert_eq!(counts[0], unwatched);
    assert!(counts.windows(2).all(|w| w[1] > w[0]), "{counts:?}");
    assert_no_planted(&[&stdout, &stderr]);

    // `report` shows it too (after reading 70,000 secrets).
    let (code, out, err) = run_within(
        &["report", "--json", "--state", s(&state)],
        Duration::from_secs(300),
    );
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["type"] == "watch_overflow" && f["secret"]["path"] == s(&home)),
        "{out}"
    );
}

// ---------------------------------------------------------------------------
// Files another user can write.

#[test]
fn a_planted_ledger_link_is_refused_and_its_target_untouched() {
    if !can_load_probes("a_planted_ledger_link_is_refused_and_its_target_untouched") {
        return;
    }
    let dir = workdir();
    let victim = write(&dir.path().join("victim"), "do not touch\n", 0o644);
    let secret = write(&dir.path().join("app.secret"), "x\n", 0o600);
    // In a state dir of root's: the link itself is refused.
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&victim, state.join("ledger.db")).unwrap();
    let line = refusal(&["run", "--watch", s(&secret), "--state", s(&state)]);
    assert_eq!(
        line,
        format!(
            "secretmon: ledger {}/ledger.db: a symbolic link; refused",
            s(&state)
        )
    );
    // In a state dir others can write, nothing in it is trusted.
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let line = refusal(&["run", "--watch", s(&secret), "--state", s(&state)]);
    assert!(
        line.ends_with("writable by its group or others (mode 0777); refused"),
        "{line}"
    );
    assert_eq!(mode(&victim), 0o644, "no chmod through the link");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "do not touch\n");
    // And in one owned by another user.
    let theirs = dir.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let line = refusal(&["run", "--watch", s(&secret), "--state", s(&theirs)]);
    assert!(
        line.contains("owned by uid 65534, not root; refused"),
        "{line}"
    );
}

#[test]
fn an_attacker_written_fingerprint_key_is_refused() {
    if !can_load_probes("an_attacker_written_fingerprint_key_is_refused") {
        return;
    }
    let dir = workdir();
    let secret = write(&dir.path().join("app.secret"), "x\n", 0o600);
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    let key = write(&state.join("fingerprint.key"), &"k".repeat(32), 0o666);
    let line = refusal(&["run", "--watch", s(&secret), "--state", s(&state)]);
    assert_eq!(
        line,
        format!(
            "secretmon: {}: writable by its group or others (mode 0666); refused",
            s(&key)
        )
    );
    // Written by another user, even 0600.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let line = refusal(&["run", "--watch", s(&secret), "--state", s(&state)]);
    assert!(
        line.ends_with("owned by uid 65534, not root; refused"),
        "{line}"
    );
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        "k".repeat(32),
        "not replaced"
    );
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn a_planted_output_link_is_refused_and_a_new_output_is_private() {
    if !can_load_probes("a_planted_output_link_is_refused_and_a_new_output_is_private") {
        return;
    }
    let dir = workdir();
    let victim = write(&dir.path().join("victim"), "do not touch\n", 0o644);
    let secret = write(&dir.path().join("app.secret"), "x\n", 0o600);
    let out = dir.path().join("events.jsonl");
    symlink(&victim, &out).unwrap();
    let line = refusal(&["run", "--watch", s(&secret), "--output", s(&out)]);
    assert!(
        line.ends_with(&format!(
            "cannot open {}: a symbolic link; refused",
            s(&out)
        )),
        "{line}"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "do not touch\n");
    fs::remove_file(&out).unwrap();
    // A file another user could have written before the agent appends.
    write(&out, "", 0o666);
    let line = refusal(&["run", "--watch", s(&secret), "--output", s(&out)]);
    assert!(line.contains("(mode 0666); refused"), "{line}");
    fs::remove_file(&out).unwrap();
    // A new one is made 0600, not 0644.
    let state = dir.path().join("state");
    let mut agent = Command::new(BIN)
        .args(["run", "--watch", s(&secret), "--output", s(&out)])
        .args(["--state", s(&state)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&out).is_ok_and(|t| t.contains("\"started\"")) {
        assert!(Instant::now() < deadline, "no started event in {}", s(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mode(&out), 0o600);
    let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(agent.wait().unwrap().success());
    assert!(fs::read_to_string(&out).unwrap().contains("\"stopped\""));
}

#[test]
fn config_and_policy_files_others_can_write_are_refused() {
    let dir = workdir();
    let config = write(&dir.path().join("c.toml"), "", 0o666);
    let line = refusal(&["run", "--config", s(&config)]);
    assert_eq!(
        line,
        format!(
            "secretmon: config {}: writable by its group or others (mode 0666); refused",
            s(&config)
        )
    );
    // The directory above counts too, as with sshd's StrictModes.
    let open_dir = dir.path().join("open");
    let config = write(&open_dir.join("c.toml"), "", 0o600);
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let line = refusal(&["run", "--config", s(&config)]);
    assert!(
        line.ends_with(&format!(
            "{}: writable by its group or others (mode 0777); refused",
            s(&open_dir)
        )),
        "{line}"
    );
    let policy = write(&dir.path().join("policy.toml"), "", 0o646);
    let config = write(
        &dir.path().join("p.toml"),
        &format!("[findings]\npolicy = {:?}\n", s(&policy)),
        0o600,
    );
    let line = refusal(&["run", "--config", s(&config)]);
    assert_eq!(
        line,
        format!(
            "secretmon: policy {}: writable by its group or others (mode 0646); refused",
            s(&policy)
        )
    );
    if is_root() {
        // Owned by another user, however tight its mode.
        let theirs = write(&dir.path().join("theirs.toml"), "", 0o600);
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let line = refusal(&["run", "--config", s(&theirs)]);
        assert!(
            line.ends_with("owned by uid 65534, not root; refused"),
            "{line}"
        );
    }
}

// ---------------------------------------------------------------------------
// Special files.

#[test]
fn special_and_huge_files_are_refused_without_hanging_or_filling_memory() {
    let dir = workdir();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let sparse = dir.path().join("sparse.toml");
    fs::File::create(&sparse).unwrap().set_len(8 << 30).unwrap();
    // Private, so that only its size is wrong for a key.
    fs::set_permissions(&sparse, fs::Permissions::from_mode(0o600)).unwrap();
    // What each file is refused for, as `kind` (with its cap) names it.
    let why = |file: &Path, kind: &str, cap: u64| {
        if file == sparse {
            format!("larger than {cap} bytes, the most {kind} may be; refused")
        } else if file == fifo {
            "not a regular file but a FIFO; refused".to_string()
        } else {
            "not a regular file but a character device; refused".to_string()
        }
    };
    for file in [Path::new("/dev/zero"), &fifo, &sparse] {
        let f = s(file);
        let line = refusal(&["inventory", "--config", f]);
        assert_eq!(
            line,
            format!(
                "secretmon: config {f}: {}",
                why(file, "a config file", 1 << 20)
            )
        );
        let config = write(
            &dir.path().join("c.toml"),
            &format!("[findings]\npolicy = {f:?}\n"),
            0o600,
        );
        let line = refusal(&["run", "--config", s(&config)]);
        assert_eq!(
            line,
            format!("secretmon: policy {f}: {}", why(file, "a policy", 1 << 20))
        );
        let config = write(
            &dir.path().join("c.toml"),
            &format!("[inventory]\nfleet_key_file = {f:?}\n"),
            0o600,
        );
        let line = refusal(&["inventory", "--config", s(&config), "--root", s(dir.path())]);
        assert_eq!(
            line,
            format!(
                "secretmon: fleet_key_file {f}: {}",
                why(file, "a key file", 4096)
            )
        );
    }
}

// ---------------------------------------------------------------------------
// Out-of-range settings.

#[test]
fn out_of_range_settings_are_refused_before_anything_starts() {
    let dir = workdir();
    for (section, key, value, range) in [
        ("findings", "interval", "0s", "from 1s to 1d"),
        ("findings", "interval", "1ns", "from 1s to 1d"),
        (
            "findings",
            "orphan_window",
            "99999999999d",
            "from 1s to 36500d",
        ),
        ("findings", "max_age", "99999999999d", "from 1s to 36500d"),
        ("findings", "baseline", "99999999999d", "from 0s to 36500d"),
        ("ledger", "retention", "99999999999d", "from 1s to 36500d"),
        ("inventory", "scan_timeout", "0s", "from 1s to 1d"),
        (
            "inventory",
            "near_expiry",
            "99999999999d",
            "from 0s to 36500d",
        ),
    ] {
        let config = write(
            &dir.path().join("c.toml"),
            &format!("[{section}]\n{key} = {value:?}\n"),
            0o600,
        );
        let line = refusal(&["run", "--config", s(&config)]);
        assert_eq!(
            line,
            format!(
                "secretmon: config {}:2: `{section}.{key}`: `{value}` is out of range: {range}",
                s(&config)
            )
        );
    }
    for (key, value) in [
        ("max_file_size", "0"),
        ("max_depth", "0"),
        ("static_after_days", "99999999999"),
    ] {
        let config = write(
            &dir.path().join("c.toml"),
            &format!("[inventory]\n{key} = {value}\n"),
            0o600,
        );
        let line = refusal(&["run", "--config", s(&config)]);
        assert!(
            line.contains(&format!("`inventory.{key}`: `{value}` is out of range")),
            "{line}"
        );
    }
    let config = write(
        &dir.path().join("c.toml"),
        "[capture]\nmax_watched = 1\n",
        0o600,
    );
    let line = refusal(&["run", "--config", s(&config)]);
    assert!(
        line.ends_with("`1` is out of range: from 16 to 1048576"),
        "{line}"
    );
    for flag in ["--window", "--max-age"] {
        let (code, _, err) = run_within(
            &["report", flag, "99999999999d", "--state", s(dir.path())],
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("`99999999999d` is out of range: from 1s to 36500d"),
            "{err}"
        );
    }
}
