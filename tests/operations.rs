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
    let out = Command::new(BIN)
        .args(["check", "--json"])
        .output()
        .unwrap();
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
    let mut child = support::Reaped::spawn(
        Command::new(BIN)
            .args(["run", "--opens", "lsm", "--watch"])
            .arg(&secret)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    if lsm["status"] == "ok" {
        // It loads here: nothing to compare; the agent starts (and is
        // stopped when `child` drops).
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.child().stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        assert!(first.contains("lsm:file_open"), "{first}");
        return;
    }
    let out = child.wait_with_output();
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

/// The lines of every file given, parsed.
fn events_in(files: &[std::path::PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect::<Vec<Value>>()
        })
        .collect()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn send(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// logrotate's way, under a burst of reads: the output file is renamed and
/// the agent gets SIGHUP, again and again. Every read made is counted once,
/// in the files and in the ledger; each file is 0600; SIGUSR1 only logs.
#[test]
fn sighup_under_a_burst_reopens_the_output_and_loses_nothing() {
    use nix::sys::signal::Signal;
    if !support::can_load_probes("sighup_under_a_burst_reopens_the_output_and_loses_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = support::plant_secret(dir.path());
    let out = dir.path().join("events.jsonl");
    let state = dir.path().join("state");
    let mut agent = support::Reaped::spawn(
        Command::new(BIN)
            .args(["run", "--watch"])
            .arg(&secret)
            .arg("--output")
            .arg(&out)
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&out).is_ok_and(|t| t.contains("\"status\":\"started\"")) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the agent did not start"
        );
        assert!(
            agent.child().try_wait().unwrap().is_none(),
            "the agent exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(mode(&out), 0o600);

    const READS: usize = 600;
    let mut burst = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq {READS}); do head -c1 \"$1\" >/dev/null; done"
        ))
        .arg("sh")
        .arg(&secret)
        .spawn()
        .unwrap();
    let mut files = Vec::new();
    for i in 1..=4 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        // The reopen is queued behind the events already written, so on a
        // loaded machine the new file can appear after the next rename would.
        support::wait_until("the output reopened", || out.exists());
        let rotated = dir.path().join(format!("events.jsonl.{i}"));
        std::fs::rename(&out, &rotated).unwrap();
        files.push(rotated);
        send(agent.child().id(), Signal::SIGHUP);
        if i == 2 {
            send(agent.child().id(), Signal::SIGUSR1);
        }
    }
    assert!(burst.wait().unwrap().success());
    // The last reload applied before the stop: its file is the newest.
    std::thread::sleep(std::time::Duration::from_secs(2));
    send(agent.child().id(), Signal::SIGTERM);
    let done = agent.wait_with_output();
    let stderr = String::from_utf8(done.stderr).unwrap();
    assert_eq!(done.status.code(), Some(0), "{stderr}");
    files.push(out.clone());

    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let events = events_in(&files);
    let counted: u64 = events
        .iter()
        .filter(|v| v["kind"] == "secret_read" && v["process"]["comm"] == "head")
        .map(|v| v["access"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, READS as u64, "reads made vs reads counted");
    // A reload names the file outputs reopened since the last one (a
    // SIGHUP during a reload is named by that reload).
    let reloaded: Vec<&Value> = events
        .iter()
        .filter(|v| v["kind"] == "agent" && v["status"] == "reloaded")
        .collect();
    assert!(
        reloaded
            .iter()
            .any(|v| v["reload"]["reopened"] == serde_json::json!([out])),
        "no reloaded event names {}: {reloaded:?}",
        out.display()
    );
    for v in reloaded {
        let reopened = v["reload"]["reopened"].as_array().unwrap();
        assert!(reopened.iter().all(|p| p == out.to_str().unwrap()), "{v}");
    }
    // The stop is in the file at the configured path, last.
    let last = events_in(std::slice::from_ref(&out)).pop().unwrap();
    assert_eq!(last["status"], "stopped", "{last}");
    assert!(stderr.contains("status: watching "), "{stderr}");

    let report = Command::new(BIN)
        .args(["report", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let in_ledger: u64 = report["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["path"] == secret.to_str().unwrap())
        .flat_map(|s| s["readers"].as_array().unwrap().clone())
        .filter(|r| r["identity"].as_str().unwrap().contains("head"))
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(in_ledger, READS as u64, "reads made vs reads in the ledger");
    let all = events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    support::assert_no_planted(&[&all, &stderr]);
}

/// `[[output]]` changes on SIGHUP, under a burst of reads: a second file
/// output is added, then the first is rebuilt on its file (another
/// rotation setting) and the second removed. Every read is counted once in
/// the first file; the second holds exactly the events routed while it ran,
/// from the `reloaded` event that added it to the one that removed it.
#[test]
fn sighup_adds_changes_and_removes_outputs_under_a_burst_and_loses_nothing() {
    use nix::sys::signal::Signal;
    if !support::can_load_probes(
        "sighup_adds_changes_and_removes_outputs_under_a_burst_and_loses_nothing",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = support::plant_secret(dir.path());
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let config = dir.path().join("config.toml");
    let write_config = |outputs: &[(&str, &std::path::Path, &str)]| {
        let mut text = String::new();
        for (name, path, extra) in outputs {
            text += &format!("[[output]]\nname = {name:?}\nurl = {path:?}\n{extra}");
        }
        text += &format!("[agent]\nwatch = [{secret:?}]\n");
        std::fs::write(&config, text).unwrap();
    };
    write_config(&[("a", &a, "")]);
    let mut agent = support::Reaped::spawn(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let in_a = |pred: &dyn Fn(&Value) -> bool| {
        std::fs::read_to_string(&a).is_ok_and(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| pred(&v))
        })
    };
    support::wait_until("the agent started", || in_a(&|v| v["status"] == "started"));

    // Reads until told to stop; then says how many it made.
    let (stop, made) = (dir.path().join("stop"), dir.path().join("made"));
    let mut burst = support::Reaped::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(
                "n=0; while [ ! -e \"$2\" ]; do head -c1 \"$1\" >/dev/null; n=$((n+1)); done; \
                 echo $n >\"$3\"",
            )
            .arg("sh")
            .arg(&secret)
            .arg(&stop)
            .arg(&made),
    );
    let reloaded = |field: &'static str, name: &'static str| {
        move |v: &Value| {
            v["status"] == "reloaded" && v["reload"]["outputs"][field] == serde_json::json!([name])
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    write_config(&[("a", &a, ""), ("b", &b, "")]);
    send(agent.child().id(), Signal::SIGHUP);
    support::wait_until("b added", || in_a(&reloaded("added", "b")));
    std::thread::sleep(std::time::Duration::from_millis(300));
    write_config(&[("a", &a, "max_files = 3\n")]);
    send(agent.child().id(), Signal::SIGHUP);
    support::wait_until("b removed", || in_a(&reloaded("removed", "b")));
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(&stop, "").unwrap();
    assert!(burst.child().wait().unwrap().success());
    let made: u64 = std::fs::read_to_string(&made)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Folded reads go out within a second.
    std::thread::sleep(std::time::Duration::from_secs(2));
    send(agent.child().id(), Signal::SIGTERM);
    let done = agent.wait_with_output();
    let stderr = String::from_utf8(done.stderr).unwrap();
    assert_eq!(done.status.code(), Some(0), "{stderr}");

    let in_a = events_in(std::slice::from_ref(&a));
    let in_b = events_in(std::slice::from_ref(&b));
    let counted = |events: &[Value]| -> u64 {
        events
            .iter()
            .filter(|v| v["kind"] == "secret_read" && v["process"]["comm"] == "head")
            .map(|v| v["access"]["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(counted(&in_a), made, "reads made vs reads counted in a");
    let at = |pred: &dyn Fn(&Value) -> bool| in_a.iter().position(pred).unwrap();
    let (added, removed) = (at(&reloaded("added", "b")), at(&reloaded("removed", "b")));
    assert_eq!(
        in_a[added]["reload"]["outputs"]["changed"],
        serde_json::json!([])
    );
    assert_eq!(
        in_a[removed]["reload"]["outputs"]["changed"],
        serde_json::json!(["a"])
    );
    assert_eq!(
        in_a[added]["reload"]["applied"],
        serde_json::json!(["output"]),
        "{}",
        in_a[added]
    );
    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&in_b),
        ids(&in_a[added..removed]),
        "b has what was routed while it ran, once each"
    );
    assert!(counted(&in_b) > 0, "the burst ran while b did");
    assert_eq!(in_a.last().unwrap()["status"], "stopped");
    assert_eq!(mode(&b), 0o600);
    assert!(
        stderr.contains("outputs added: b, changed: none, removed: none"),
        "{stderr}"
    );
    assert!(
        stderr.contains("outputs added: none, changed: a, removed: b"),
        "{stderr}"
    );
    let all = [&in_a[..], &in_b[..]]
        .concat()
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    support::assert_no_planted(&[&all, &stderr]);
}
/// SIGHUP reads the configuration again: a watch list edited in the file
/// takes effect, a setting that needs a restart is named, a broken file
/// leaves the running configuration in place; SIGQUIT stops like SIGTERM.
#[test]
fn sighup_reloads_the_watch_list_and_keeps_a_running_config_over_a_bad_one() {
    use nix::sys::signal::Signal;
    if !support::can_load_probes(
        "sighup_reloads_the_watch_list_and_keeps_a_running_config_over_a_bad_one",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = support::plant_secret(dir.path());
    // A name that no rule of the kernel's or the catalog's knows: only the
    // watch list brings it in.
    let second = dir.path().join("b/settings.ini");
    std::fs::create_dir_all(second.parent().unwrap()).unwrap();
    std::fs::write(&second, format!("secret = {}\n", support::PLANTED)).unwrap();
    let config = dir.path().join("config.toml");
    let watch = |paths: &[&std::path::Path], extra: &str| {
        let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
        std::fs::write(
            &config,
            format!("[agent]\nwatch = [{}]\n{extra}", list.join(", ")),
        )
        .unwrap();
    };
    watch(&[&first], "");
    let mut agent = support::Agent::start(&["--config", config.to_str().unwrap()]);
    let read_by_cat = |agent: &mut support::Agent, path: &std::path::Path| {
        let cat = Command::new("cat")
            .arg(path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = cat.id();
        assert!(cat.wait_with_output().unwrap().status.success());
        agent.wait_for(std::time::Duration::from_secs(10), |v| {
            v["kind"] == "secret_read" && v["process"]["pid"] == pid
        })
    };

    watch(&[&first, &second], "[capture]\nring_buffer_size = 65536\n");
    agent.signal(Signal::SIGHUP);
    let reloaded = agent.wait_for(std::time::Duration::from_secs(20), |v| {
        v["kind"] == "agent" && v["status"] == "reloaded"
    });
    assert_eq!(
        reloaded["reload"]["applied"],
        serde_json::json!(["agent.watch"])
    );
    assert_eq!(
        reloaded["reload"]["restart_needed"],
        serde_json::json!(["capture.ring_buffer_size"])
    );
    assert_eq!(reloaded["reload"]["added"], 1, "{reloaded}");
    let ev = read_by_cat(&mut agent, &second);
    assert_eq!(ev["secret"]["path"], second.to_str().unwrap());

    std::fs::write(&config, "[agent]\nwatch_list = []\n").unwrap();
    agent.signal(Signal::SIGHUP);
    let failed = agent.wait_for(std::time::Duration::from_secs(20), |v| {
        v["kind"] == "agent" && v["status"] == "reload_failed"
    });
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{}:2", config.display())) && message.contains("agent.watch"),
        "{message}"
    );
    // Both files are still watched.
    read_by_cat(&mut agent, &first);
    read_by_cat(&mut agent, &second);

    let (code, lines, stderr) = agent.stop(Signal::SIGQUIT);
    assert_eq!(code, Some(0), "{stderr}");
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["status"], "stopped");
    assert!(last["message"].as_str().unwrap().contains("SIGQUIT"));
    assert!(
        stderr.contains("restart secretmon for these to take effect: capture.ring_buffer_size")
    );
    support::assert_no_planted(&[&lines.join("\n"), &stderr]);
}

/// What systemd sees of a `Type=notify` service with a watchdog: READY=1
/// once the probes are attached, WATCHDOG=1 from the event loop, RELOADING=1
/// then READY=1 around a SIGHUP, STOPPING=1 at the end. systemd is not PID 1
/// on the machines this runs on, so the test is the service manager: it
/// binds the notify socket and reads the datagrams.
#[test]
fn notify_socket_gets_ready_watchdog_reloading_and_stopping() {
    use nix::sys::signal::Signal;
    if !support::can_load_probes("notify_socket_gets_ready_watchdog_reloading_and_stopping") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let secret = support::plant_secret(dir.path());
    let mut agent = support::Agent::start_with_env(
        &["--watch", secret.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            // 0.4 s: a keep-alive every 0.2 s.
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let next = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains("STATUS=watching "), "{ready}");
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1\n");
    }
    agent.signal(Signal::SIGHUP);
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        seen.push(next());
    }
    let reloading = seen.iter().position(|m| m.starts_with("RELOADING=1\n"));
    assert!(
        reloading.is_some_and(|i| seen[i].contains("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    agent.wait_for(std::time::Duration::from_secs(10), |v| {
        v["status"] == "reloaded"
    });
    let (code, _, stderr) = agent.stop(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    let mut rest = Vec::new();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        rest.iter()
            .any(|m| m.starts_with("STOPPING=1\n") && m.contains("SIGTERM")),
        "{rest:?}"
    );
}
