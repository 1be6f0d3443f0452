//! No planted value leaves the agent: real processes carry fake secrets on
//! their command lines in the forms people write them (`mysql -pV`,
//! `curl -u user:V`, headers, URLs, `NAME=V`, JSON, a shell string, a
//! token cut by the kernel's 4 KiB limit), and one renames itself to one.
//! Each reads a watched file, so its argv and comm are in the events. No
//! run of six characters of any value may then appear anywhere: in the
//! events, the agent's stderr, `secretmon report` (text and JSON),
//! `secretmon inventory`, or the state dir (ledger, its WAL).
//!
//! Needs root; without it each test says why and returns. As root a probe
//! that cannot load fails them.

mod support;

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Agent, BIN, assert_no_planted, can_load_probes, plant_secret};

/// The shortest run of a value that counts as a leak.
const MIN_LEAK: usize = 6;
/// Bytes of argv the kernel reports (monitor-common's `ARGS_LEN`).
const ARGS_LEN: usize = 4096;

/// A fake credential: random, and every six characters of it hold a letter
/// that no hex digest, id or fingerprint in the outputs has.
fn fake(len: usize) -> String {
    const NOT_HEX: &[u8] = b"ghjkmnpqrstvwxyzGHJKMNPQRSTVWXYZ";
    const ANY: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut random = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .unwrap();
    random
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let alphabet = if i % 3 == 0 { NOT_HEX } else { ANY };
            alphabet[usize::from(r) % alphabet.len()] as char
        })
        .collect()
}

/// A fake credential of the kind the high-entropy fallback catches (most
/// random ones are: the unit tests measure how many), to test the agent's
/// plumbing, not the heuristic.
fn noisy_fake(len: usize, min_len: usize) -> String {
    loop {
        let v = fake(len);
        if secretmon::redact::entropy::looks_like_credential(&v, min_len) {
            return v;
        }
    }
}

/// A program of that name that opens the watched file and exits: run with
/// argv `[/bin/sh, <its path>, args…]` as the kernel runs a script, its
/// comm the name.
fn program(bin: &Path, name: &str, secret: &Path) -> PathBuf {
    let path = bin.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec 3< '{}'\n", secret.display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn run(cmd: &mut Command) -> u32 {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", out.status);
    pid
}

/// The runs of `value` found in `text`.
fn leaks(value: &str, text: &str) -> Vec<String> {
    let chars: Vec<char> = value.chars().collect();
    chars
        .windows(MIN_LEAK)
        .map(|w| w.iter().collect::<String>())
        .filter(|run| text.contains(run.as_str()))
        .collect()
}

/// Every file in the state dir, as text (SQLite's pages hold text as is).
fn state_files(state: &Path) -> Vec<(String, String)> {
    std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect()
}

fn secretmon(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "secretmon {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// argv of `len` bytes in all, NUL-separated, that the kernel cuts
/// `inside` bytes into `value`, the last argument: a filler argument
/// after the fixed ones makes up the length.
fn cut_inside(fixed: &[&str], prefix: &str, value: &str, inside: usize) -> Vec<String> {
    let before: usize = fixed.iter().map(|a| a.len() + 1).sum::<usize>() + prefix.len();
    // fixed…, filler, NUL, prefix, value: the cut falls `inside` bytes in.
    let filler = ARGS_LEN - before - inside - 1;
    vec!["f".repeat(filler), format!("{prefix}{value}")]
}

#[test]
fn no_planted_value_leaves_the_agent() {
    if !can_load_probes("no_planted_value_leaves_the_agent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let state = dir.path().join("state");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mut agent = Agent::start(&[
        "--watch",
        secret.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]);

    let mut planted: Vec<String> = Vec::new();
    let mut plant = |v: String| {
        planted.push(v.clone());
        v
    };
    let p = |name: &str| program(&bin, name, &secret);
    let secret_path = secret.to_str().unwrap().to_string();
    // (program, argv after it) as people write them.
    let forms: Vec<(PathBuf, Vec<String>)> = vec![
        (
            p("mysql"),
            vec![
                "-uroot".into(),
                format!("-p{}", plant(fake(14))),
                "shop".into(),
            ],
        ),
        (
            p("curl"),
            vec![
                "-u".into(),
                format!("admin:{}", plant(fake(14))),
                "https://api.example/".into(),
            ],
        ),
        (
            p("curl"),
            vec![
                "-sH".into(),
                format!("Authorization: Bearer {}", plant(fake(24))),
                "https://api.example/".into(),
            ],
        ),
        (
            p("deploy"),
            vec!["--password".into(), format!("-{}", plant(fake(12)))],
        ),
        (
            p("deploy"),
            vec![format!("AWS_SECRET_ACCESS_KEY={}", plant(fake(30)))],
        ),
        (
            p("sshpass"),
            vec![
                "-p".into(),
                plant(fake(12)),
                "ssh".into(),
                "deploy@web1".into(),
            ],
        ),
        (
            p("redis-cli"),
            vec![
                "-h".into(),
                "cache".into(),
                "-a".into(),
                plant(fake(16)),
                "ping".into(),
            ],
        ),
        (
            p("curl"),
            vec![
                "-d".into(),
                format!(
                    r#"{{"client_id":"app","client_secret":"{}"}}"#,
                    plant(fake(20))
                ),
                "https://idp.example/token".into(),
            ],
        ),
        (
            p("deploy"),
            vec![format!("--db-password={}", plant(fake(12)))],
        ),
        (
            p("psql"),
            vec![format!(
                "host=db user=app password={} dbname=shop",
                plant(fake(12))
            )],
        ),
        (
            p("deploy"),
            vec![format!(
                "https://ana:{}@git.example/repo.git",
                plant(fake(14))
            )],
        ),
        (
            p("curl"),
            vec![format!(
                "https://api.example/v1?access_token={}&page=2",
                plant(fake(18))
            )],
        ),
        (
            p("htpasswd"),
            vec![
                "-b".into(),
                "/etc/nginx/.htpasswd".into(),
                "ana".into(),
                plant(fake(12)),
            ],
        ),
        (
            p("openssl"),
            vec![
                "rsa".into(),
                "-passin".into(),
                format!("pass:{}", plant(fake(12))),
            ],
        ),
        (
            p("git"),
            vec![
                "-c".into(),
                format!("http.extraHeader=Authorization: Basic {}", plant(fake(20))),
                "fetch".into(),
            ],
        ),
        (
            p("docker"),
            vec![
                "login".into(),
                "-u".into(),
                "ci".into(),
                "-p".into(),
                plant(fake(16)),
                "registry.example".into(),
            ],
        ),
        (
            p("kubectl"),
            vec![
                "--token".into(),
                plant(fake(24)),
                "get".into(),
                "pods".into(),
            ],
        ),
        (
            p("env"),
            vec![
                format!("GITHUB_TOKEN={}", plant(fake(20))),
                "gh".into(),
                "pr".into(),
                "list".into(),
            ],
        ),
        (p("deploy"), vec![format!("ghp_{}", plant(fake(36)))]),
        (
            p("deploy"),
            vec!["--release".into(), plant(noisy_fake(28, 16))],
        ),
        (
            p("mongosh"),
            vec!["-u".into(), "admin".into(), "-p".into(), plant(fake(14))],
        ),
        (
            p("deploy"),
            vec![
                "-e".into(),
                format!("password: {}\nuser: ana", plant(fake(14))),
            ],
        ),
        (
            p("sqlplus"),
            vec!["-s".into(), format!("scott/{}@orcl", plant(fake(12)))],
        ),
    ];
    let mut pids = Vec::new();
    for (program, args) in &forms {
        pids.push(run(Command::new(program).args(args)));
    }
    // A real shell with a real command string.
    let shell_value = plant(fake(14));
    pids.push(run(Command::new("sh").arg("-c").arg(format!(
        "exec 3< '{secret_path}'; : mysql -uroot -p'{shell_value}' shop"
    ))));
    // A process that names itself a credential: the value comes through
    // the environment, whose values never leave the kernel.
    let comm = plant(noisy_fake(15, 8));
    let renamed = run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf %s \"$NAME\" > /proc/self/comm && exec 3< '{secret_path}'"
        ))
        .env("NAME", &comm));
    // The kernel's 4 KiB cut inside a secret flag's value, and inside a
    // token (whose cut end has no token shape any more).
    let deploy = p("deploy");
    let fixed = ["/bin/sh", deploy.to_str().unwrap()];
    let cut_flag = plant(fake(24));
    let cut_pid = run(Command::new(&deploy).args(cut_inside(&fixed, "--password=", &cut_flag, 9)));
    let cut_token = plant(fake(36));
    let cut_token_pid = run(Command::new(&deploy).args(cut_inside(&fixed, "ghp_", &cut_token, 17)));

    // Every process's read is an event, with its argv and comm.
    let mut waiting: BTreeSet<u32> = pids.iter().copied().collect();
    waiting.extend([renamed, cut_pid, cut_token_pid]);
    let mut reads = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no secret_read for pids {waiting:?}");
        let ev = agent.wait_for(left, |v| {
            v["kind"] == "secret_read"
                && v["process"]["pid"]
                    .as_u64()
                    .is_some_and(|p| waiting.contains(&(p as u32)))
        });
        waiting.remove(&(ev["process"]["pid"].as_u64().unwrap() as u32));
        reads.push(ev);
    }
    let by_pid = |pid: u32| {
        reads
            .iter()
            .find(|v| v["process"]["pid"] == pid)
            .unwrap_or_else(|| panic!("no read by {pid}"))
    };
    for pid in &pids {
        let args = by_pid(*pid)["process"]["args"].as_array().unwrap().len();
        assert!(args >= 2, "argv shown, redacted: {}", by_pid(*pid));
    }
    assert_eq!(
        by_pid(renamed)["process"]["comm"],
        "…",
        "{}",
        by_pid(renamed)
    );
    for pid in [cut_pid, cut_token_pid] {
        let ev = by_pid(pid);
        assert_eq!(ev["process"]["args_truncated"], true, "{ev}");
        assert_eq!(
            ev["process"]["args"].as_array().unwrap().last().unwrap(),
            "…",
            "{ev}"
        );
    }

    // What the ledger holds while the agent runs (a WAL not checkpointed).
    let running_state = state_files(&state);
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    let events = lines.join("\n");
    let kinds: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "secret_in_argv")
        .map(|v| v["secret"]["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in [
        "program_flag",
        "secret_flag",
        "secret_assignment",
        "auth_header",
        "url_password",
        "url_query",
        "key_value",
        "program_argument",
        "github_token",
        "high_entropy",
    ] {
        assert!(
            kinds.contains(kind),
            "no secret_in_argv of kind {kind}: {kinds:?}"
        );
    }

    let state_str = state.to_str().unwrap();
    let mut outputs = vec![
        ("events".to_string(), events),
        ("agent stderr".to_string(), stderr),
        (
            "report".to_string(),
            secretmon(&["report", "--state", state_str]),
        ),
        (
            "report --json".to_string(),
            secretmon(&["report", "--json", "--state", state_str]),
        ),
        (
            "inventory".to_string(),
            secretmon(&["inventory", "--state", state_str]),
        ),
        (
            "inventory --json".to_string(),
            secretmon(&["inventory", "--json", "--state", state_str]),
        ),
    ];
    outputs.extend(running_state);
    outputs.extend(state_files(&state));
    assert!(
        outputs.iter().any(|(name, _)| name.ends_with("ledger.db")),
        "no ledger"
    );
    for (name, text) in &outputs {
        for value in &planted {
            let found = leaks(value, text);
            assert!(
                found.is_empty(),
                "{name}: {} characters of a planted value: {found:?}",
                MIN_LEAK
            );
        }
        assert_no_planted(&[text]);
    }
}

#[test]
fn process_args_none_shows_no_argument() {
    if !can_load_probes("process_args_none_shows_no_argument") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mut agent = Agent::start(&[
        "--watch",
        secret.to_str().unwrap(),
        "--process-args",
        "none",
    ]);
    let mysql = program(&bin, "mysql", &secret);
    let planted = fake(14);
    let pid = run(Command::new(&mysql).args(["-uroot", &format!("-p{planted}"), "shop"]));
    let found = agent.wait_for(Duration::from_secs(10), |v| {
        v["kind"] == "secret_in_argv" && v["process"]["pid"] == pid
    });
    assert_eq!(found["secret"]["kind"], "program_flag", "{found}");
    assert_eq!(found["secret"]["match"], "…", "{found}");
    let read = agent.wait_for(Duration::from_secs(10), |v| {
        v["kind"] == "secret_read" && v["process"]["pid"] == pid
    });
    assert_eq!(read["process"]["args"], Value::Array(Vec::new()), "{read}");
    assert_eq!(
        read["process"]["comm"], "mysql",
        "the kernel's name is shown"
    );
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(leaks(&planted, &lines.join("\n")).is_empty());
}
