//! Kernel capture end to end: every way a process reaches a watched secret
//! is seen, with real programs. Root only; without root each test says why
//! and returns.

mod support;

use std::{
    cell::Cell,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{
    Agent, PLANTED, assert_no_planted, can_load_probes, is_read_by, plant_secret, run_ok, which,
};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn every_path_form_reaches_the_same_secret() {
    if !can_load_probes("every_path_form_reaches_the_same_secret") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let shown = secret.to_str().unwrap();
    let mut agent = Agent::start(&["--watch", shown]);

    // Relative to the cwd.
    let pid = run_ok(
        Command::new("cat")
            .current_dir(dir.path())
            .arg(".aws/credentials"),
    );
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["secret"]["path"], shown);

    // Relative to a directory fd (openat with a real dirfd).
    let script = "import os,sys\nd=os.open(sys.argv[1], os.O_RDONLY)\nos.close(os.open('credentials', os.O_RDONLY, dir_fd=d))";
    let pid = run_ok(
        Command::new("python3")
            .args(["-c", script])
            .arg(dir.path().join(".aws")),
    );
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["secret"]["path"], shown);

    // Through a symlink and through a hardlink.
    let link = dir.path().join("innocent-looking");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let pid = run_ok(Command::new("cat").arg(&link));
    agent.wait_for(WAIT, |v| is_read_by(v, pid));
    let hard = dir.path().join("hardlink");
    std::fs::hard_link(&secret, &hard).unwrap();
    let pid = run_ok(Command::new("cat").arg(&hard));
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["secret"]["path"], shown, "reported by the watched path");

    // Through a bind mount in another mount namespace.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sh = format!(
        "mount --bind {} {} && exec cat {}/.aws/credentials",
        dir.path().display(),
        mnt.display(),
        mnt.display()
    );
    let pid = run_ok(Command::new("unshare").args(["-m", "sh", "-c", &sh]));
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["secret"]["path"], shown);

    // A renamed copy of a binary is reported as what it is.
    let kitty = dir.path().join("kitty");
    std::fs::copy(which("cat"), &kitty).unwrap();
    let pid = run_ok(Command::new(&kitty).arg(&secret));
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["process"]["exe"], kitty.to_str().unwrap());
    assert_eq!(ev["process"]["comm"], "kitty");

    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_planted(&[&lines.join("\n"), &stderr]);
}

#[test]
fn a_burst_of_reads_is_counted_exactly() {
    if !can_load_probes("a_burst_of_reads_is_counted_exactly") {
        return;
    }
    const READS: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let mut agent = Agent::start(&["--watch", secret.to_str().unwrap()]);
    let script = format!(
        "import os,sys\nfor _ in range({READS}):\n    os.close(os.open(sys.argv[1], os.O_RDONLY))"
    );
    let pid = run_ok(Command::new("python3").args(["-c", &script]).arg(&secret));
    let counted = Cell::new(0u64);
    agent.wait_for(Duration::from_secs(60), |v| {
        if is_read_by(v, pid) {
            counted.set(counted.get() + v["access"]["count"].as_u64().unwrap());
        }
        counted.get() >= READS
    });
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    // Nothing was lost, and nothing more arrived after the total.
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["kind"] == "agent" {
            assert_eq!(v["lost"], 0, "{line}");
        }
    }
    let total: u64 = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| is_read_by(v, pid))
        .map(|v| v["access"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, READS);
    assert!(
        lines.len() < 200,
        "{} lines: reads were not folded",
        lines.len()
    );
}

#[test]
fn a_denied_open_is_reported_with_its_errno() {
    if !can_load_probes("a_denied_open_is_reported_with_its_errno") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut agent = Agent::start(&["--watch", secret.to_str().unwrap()]);
    let child = Command::new("cat")
        .arg(&secret)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(!child.wait_with_output().unwrap().status.success());
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["access"]["result"], "EACCES");
    assert_eq!(ev["access"]["flags"][0], "O_RDONLY");
    assert_eq!(ev["process"]["uid"], 65534);
    assert_eq!(ev["secret"]["path"], secret.to_str().unwrap());

    // A relative name, by a process gone before the agent looks: the
    // kernel walked its cwd at the time of the open.
    agent.pause();
    let child = Command::new("cat")
        .current_dir(dir.path())
        .arg(".aws/credentials")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(!child.wait_with_output().unwrap().status.success());
    agent.resume();
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["access"]["result"], "EACCES");
    assert_eq!(ev["secret"]["path"], secret.to_str().unwrap());
    agent.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn secret_env_names_are_reported_and_values_never() {
    if !can_load_probes("secret_env_names_are_reported_and_values_never") {
        return;
    }
    let mut agent = Agent::start(&[]);
    let pid = run_ok(
        Command::new("true")
            .env("GITHUB_TOKEN", PLANTED)
            .env("BILLING_SERVICE_API_KEY", PLANTED)
            // No `_`: only the exact-name lookup can find it.
            .env("PGPASSWORD", PLANTED)
            .env("HARMLESS_SETTING", PLANTED)
            // Shorter than the name scanned before it: nothing of that one
            // may be left in its padding.
            .env("GH", PLANTED),
    );
    let names = std::cell::RefCell::new(Vec::new());
    agent.wait_for(WAIT, |v| {
        if v["kind"] == "secret_in_env" && v["process"]["pid"] == pid {
            names
                .borrow_mut()
                .push(v["secret"]["env_name"].as_str().unwrap().to_string());
        }
        names.borrow().len() == 3
    });
    let mut names = names.into_inner();
    names.sort();
    assert_eq!(
        names,
        ["BILLING_SERVICE_API_KEY", "GITHUB_TOKEN", "PGPASSWORD"]
    );
    let (_, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    let all = lines.join("\n");
    assert!(
        !all.contains("HARMLESS_SETTING") && !all.contains("\"GH\""),
        "an unwatched name was reported"
    );
    assert_no_planted(&[&all, &stderr]);
}

/// Names far into a large environment, after values of almost 4 KiB, one
/// across the block's first 4 KiB, are found, and unwatched ones that pass
/// the kernel's pre-test on length and first byte are not reported.
#[test]
fn secret_env_names_past_the_first_4_kib_are_reported() {
    if !can_load_probes("secret_env_names_past_the_first_4_kib_are_reported") {
        return;
    }
    let mut agent = Agent::start(&[]);
    // std passes the variables in name order. `A_FILLER=x…\0` takes the
    // block's first 4,091 bytes, so the next name spans byte 4,096.
    let filler = "x".repeat(4090 - "A_FILLER=".len());
    let pid = run_ok(
        Command::new("/bin/true")
            .env_clear()
            .env("A_FILLER", &filler)
            .env("B_ACROSS_TOKEN", PLANTED)
            .env("C_LONG_SETTING", "y".repeat(4000))
            .env("D_AFTER_PASSWORD", PLANTED)
            // Same length and first byte as a watched name or suffix.
            .env("PGPASSWORX", PLANTED)
            .env("E_HARMLESS_TOKEX", "z=\u{e9}=="),
    );
    let names = std::cell::RefCell::new(Vec::new());
    agent.wait_for(WAIT, |v| {
        if v["kind"] == "secret_in_env" && v["process"]["pid"] == pid {
            names
                .borrow_mut()
                .push(v["secret"]["env_name"].as_str().unwrap().to_string());
        }
        names.borrow().len() == 2
    });
    let mut names = names.into_inner();
    names.sort();
    assert_eq!(names, ["B_ACROSS_TOKEN", "D_AFTER_PASSWORD"]);
    let (_, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    let all = lines.join("\n");
    assert!(
        !all.contains("HARMLESS") && !all.contains("FILLER") && !all.contains("PGPASSWORX"),
        "an unwatched name was reported"
    );
    assert_no_planted(&[&all, &stderr]);
}

/// An environment longer than the 16 KiB the kernel reads: the names in
/// them are found, and the exec is counted as partly scanned.
#[test]
fn an_environment_past_16_kib_is_scanned_up_to_there_and_counted() {
    if !can_load_probes("an_environment_past_16_kib_is_scanned_up_to_there_and_counted") {
        return;
    }
    let mut agent = Agent::start(&[]);
    let pid = run_ok(
        Command::new("/bin/true")
            .env_clear()
            .env("A_EARLY_TOKEN", PLANTED)
            .env("B_FILLER", "x".repeat(10_000))
            .env("C_FILLER", "y".repeat(10_000))
            .env("D_LATE_TOKEN", PLANTED),
    );
    let ev = agent.wait_for(WAIT, |v| {
        v["kind"] == "secret_in_env" && v["process"]["pid"] == pid
    });
    assert_eq!(ev["secret"]["env_name"], "A_EARLY_TOKEN");
    let (_, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    let stopped = lines
        .iter()
        .rev()
        .find(|l| l.contains("\"status\":\"stopped\""))
        .expect("a stopped event");
    let partly: u64 = stopped
        .split(" environments partly scanned")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the count of environments partly scanned");
    assert!(partly >= 1, "{stopped}");
    assert_no_planted(&[&lines.join("\n"), &stderr]);
}

#[test]
fn a_token_on_a_command_line_is_reported_redacted() {
    if !can_load_probes("a_token_on_a_command_line_is_reported_redacted") {
        return;
    }
    let token = "ghp_FAKEfakeFAKEfakeFAKEfakeFAKEfake9999";
    let mut agent = Agent::start(&[]);
    let pid =
        run_ok(Command::new("true").args(["--header", &format!("Authorization: token {token}")]));
    let ev = agent.wait_for(WAIT, |v| {
        v["kind"] == "secret_in_argv" && v["process"]["pid"] == pid
    });
    assert_eq!(ev["secret"]["kind"], "github_token");
    assert_eq!(ev["secret"]["match"], "ghp_…");
    assert_eq!(ev["process"]["args"][2], "Authorization: token ghp_…");
    let (_, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(!lines.join("\n").contains(token) && !stderr.contains(token));
}

#[test]
fn reading_another_process_environ_is_reported() {
    if !can_load_probes("reading_another_process_environ_is_reported") {
        return;
    }
    let mut agent = Agent::start(&[]);
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let target_pid = target.id();
    // spawn() returns at exec's point of no return, a moment before the
    // kernel reports the exec: let the report come first, so the target is
    // known as `sleep` and not as this test binary it was forked from.
    std::thread::sleep(Duration::from_millis(300));
    let environ = format!("/proc/{target_pid}/environ");
    let pid = run_ok(Command::new("cat").arg(&environ));
    // Reading one's own environment is not reported.
    let own = run_ok(Command::new("cat").arg("/proc/self/environ"));
    let ev = agent.wait_for(WAIT, |v| {
        v["kind"] == "environ_read" && v["process"]["pid"] == pid
    });
    assert_eq!(ev["target"]["pid"], target_pid);
    assert_eq!(ev["target"]["exe"], which("sleep").to_str().unwrap());
    target.kill().unwrap();
    target.wait().unwrap();
    let (_, lines, _) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("environ_read") && l.contains(&format!("\"pid\":{own},"))),
        "own environ reported"
    );
}

#[test]
fn a_process_gone_before_its_event_is_read_keeps_its_exe() {
    if !can_load_probes("a_process_gone_before_its_event_is_read_keeps_its_exe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let mut agent = Agent::start(&["--watch", secret.to_str().unwrap()]);
    agent.pause();
    let pid = run_ok(Command::new("cat").arg(&secret));
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    agent.resume();
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    let exe = which("cat");
    assert_eq!(ev["process"]["exe"], exe.to_str().unwrap());
    assert_eq!(ev["identity"]["id"], format!("user:root:{}", exe.display()));
    agent.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn overflow_of_a_tiny_ring_buffer_is_reported_as_lost() {
    if !can_load_probes("overflow_of_a_tiny_ring_buffer_is_reported_as_lost") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let mut agent = Agent::start(&[
        "--watch",
        secret.to_str().unwrap(),
        "--ring-buffer-size",
        "4096",
    ]);
    // Frozen, the agent drains nothing: 2,000 reads cannot fit in 4 KiB.
    agent.pause();
    let script =
        "import os,sys\nfor _ in range(2000):\n    os.close(os.open(sys.argv[1], os.O_RDONLY))";
    run_ok(Command::new("python3").args(["-c", script]).arg(&secret));
    agent.resume();
    let ev = agent.wait_for(WAIT, |v| v["kind"] == "agent" && v["status"] == "lost");
    assert!(ev["lost"].as_u64().unwrap() > 0, "{ev}");
    let (code, lines, _) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0));
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(
        last["lost"].as_u64().unwrap() > 0,
        "the stop event carries the total"
    );
}

/// With the syscall tracepoints, io_uring opens are a blind spot that is
/// stated (the submitter is reported); with the fexit or LSM hook, they are
/// seen as reads. The same test checks whichever hooks the agent chose.
#[test]
fn io_uring_opens_are_seen_or_stated() {
    if !can_load_probes("io_uring_opens_are_seen_or_stated") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let mut agent = Agent::start(&["--watch", secret.to_str().unwrap()]);
    // This test process opens the secret through io_uring itself.
    support::io_uring_open(&secret);
    let hooks = agent.started["capture"]["opens"].clone();
    if hooks == "tracepoints" {
        let ev = agent.wait_for(WAIT, |v| v["kind"] == "io_uring_open");
        assert_eq!(ev["process"]["pid"], std::process::id());
        assert_eq!(ev["opcode"], "IORING_OP_OPENAT");
    } else {
        assert!(
            hooks == "fexit:do_filp_open" || hooks == "lsm:file_open",
            "unknown hooks {hooks}"
        );
        let ev = agent.wait_for(WAIT, |v| {
            v["kind"] == "secret_read" && v["access"]["via"] == "io_uring"
        });
        assert_eq!(ev["process"]["pid"], std::process::id());
        assert_eq!(ev["secret"]["path"], secret.to_str().unwrap());
    }
    let (_, lines, _) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_no_planted(&lines.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn name_rules_find_credential_files_the_inventory_did_not_know() {
    if !can_load_probes("name_rules_find_credential_files_the_inventory_did_not_know") {
        return;
    }
    let mut agent = Agent::start(&[]);
    // Created after the agent started, in a place no catalog scan covers.
    let dir = tempfile::tempdir().unwrap();
    let aws = dir.path().join("app/.aws");
    std::fs::create_dir_all(&aws).unwrap();
    let creds = aws.join("credentials");
    std::fs::write(
        &creds,
        format!("[default]\naws_access_key_id = AKIAFAKEFAKEFAKE0000\naws_secret_access_key = {PLANTED}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("app/.ssh")).unwrap();
    let public = dir.path().join("app/.ssh/id_ed25519.pub");
    std::fs::write(&public, "ssh-ed25519 AAAAC3NzaFAKE user@host\n").unwrap();
    let bundle = dir.path().join("ca-bundle.pem");
    std::fs::write(
        &bundle,
        "-----BEGIN CERTIFICATE-----\nMIIFAKE\n-----END CERTIFICATE-----\n",
    )
    .unwrap();

    // A relative open: the kernel walks the real path from the file.
    let pid = run_ok(
        Command::new("cat")
            .current_dir(dir.path().join("app"))
            .arg(".aws/credentials"),
    );
    let first = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(first["secret"]["path"], creds.to_str().unwrap());
    assert_eq!(first["secret"]["type"], "aws_credentials");
    assert!(
        first["secret"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );

    // Inventoried now: the next read is matched by inode, with the same id.
    let pid2 = run_ok(Command::new("cat").arg(&creds));
    let second = agent.wait_for(WAIT, |v| is_read_by(v, pid2));
    assert_eq!(second["secret"]["id"], first["secret"]["id"]);

    // A certificate named *.pem and a public key are not secrets.
    let pid3 = run_ok(Command::new("cat").arg(&bundle).arg(&public));
    let (_, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(
        !lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| is_read_by(&v, pid3)),
        "a non-secret was reported"
    );
    assert_no_planted(&[&lines.join("\n"), &stderr]);
}

/// `name_to_handle_at` + `open_by_handle_at` (root, CAP_DAC_READ_SEARCH):
/// an open that names no path, by its own syscall.
#[test]
fn an_open_by_file_handle_is_reported() {
    if !can_load_probes("an_open_by_file_handle_is_reported") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let mut agent = Agent::start(&["--watch", secret.to_str().unwrap()]);
    // The secret is never opened by path: only its directory, as the
    // handle's mount fd.
    let script = "\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [('bytes', ctypes.c_uint), ('type', ctypes.c_int), ('data', ctypes.c_ubyte * 128)]
h = Handle(128)
mount_id = ctypes.c_int()
if libc.name_to_handle_at(-100, sys.argv[1].encode(), ctypes.byref(h), ctypes.byref(mount_id), 0):
    raise OSError(ctypes.get_errno(), 'name_to_handle_at')
mount_fd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY | os.O_DIRECTORY)
fd = libc.open_by_handle_at(mount_fd, ctypes.byref(h), os.O_RDONLY)
if fd < 0:
    raise OSError(ctypes.get_errno(), 'open_by_handle_at')
os.read(fd, 1)
os.close(fd)
";
    let pid = run_ok(Command::new("python3").args(["-c", script]).arg(&secret));
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["secret"]["path"], secret.to_str().unwrap());
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_planted(&[&lines.join("\n"), &stderr]);
}

/// A read through an overlay mount's merged view, as a container reads its
/// image layers, is reported for the layer's file where it is watched:
/// from the lower layer and from the upper one. The overlay is mounted in
/// a mount namespace of its own, so it is gone with the reader.
#[test]
fn reads_through_an_overlay_are_reported_for_the_layer_file() {
    if !can_load_probes("reads_through_an_overlay_are_reported_for_the_layer_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = dir.path().join(d);
        std::fs::create_dir(&p).unwrap();
        p
    });
    let in_lower = plant_secret(&lower);
    let in_upper = plant_secret(&upper.join("app"));
    let mut agent = Agent::start(&[
        "--watch",
        in_lower.to_str().unwrap(),
        "--watch",
        in_upper.to_str().unwrap(),
    ]);
    let read_merged = |relative: &str| {
        let sh = format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m} && \
             cat {m}/{relative} && umount {m}",
            lower.display(),
            upper.display(),
            work.display(),
            m = merged.display(),
        );
        run_ok(Command::new("unshare").args(["-m", "sh", "-c", &sh]))
    };
    for (relative, watched) in [
        (".aws/credentials", &in_lower),
        ("app/.aws/credentials", &in_upper),
    ] {
        let sh = read_merged(relative);
        // The reader is `cat`, a child of the shell that mounted.
        let ev = agent.wait_for(WAIT, |v| {
            v["kind"] == "secret_read" && v["process"]["ppid"] == sh
        });
        assert_eq!(ev["secret"]["path"], watched.to_str().unwrap(), "{ev}");
    }
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_planted(&[&lines.join("\n"), &stderr]);
}

/// Opening another process's open file again through `/proc/<pid>/fd/N`
/// is an open of the file itself.
#[test]
fn a_reopen_through_proc_fd_is_reported() {
    if !can_load_probes("a_reopen_through_proc_fd_is_reported") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let mut agent = Agent::start(&["--watch", secret.to_str().unwrap()]);
    let mut holder = Command::new("sh")
        .args(["-c", "exec 3<\"$1\"; exec sleep 30", "sh"])
        .arg(&secret)
        .spawn()
        .unwrap();
    agent.wait_for(WAIT, |v| is_read_by(v, holder.id()));
    let pid = run_ok(Command::new("cat").arg(format!("/proc/{}/fd/3", holder.id())));
    let ev = agent.wait_for(WAIT, |v| is_read_by(v, pid));
    assert_eq!(ev["secret"]["path"], secret.to_str().unwrap());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let (_, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_no_planted(&[&lines.join("\n"), &stderr]);
}
