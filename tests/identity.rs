//! Workload identity end to end: a real reader process is moved into a
//! cgroup shaped like a systemd service, a docker container or a
//! Kubernetes pod's container (with kubelet and pod-log fixtures), or runs
//! as a plain user or under a terminal, and its `secret_read` must carry
//! the right `identity.id` and `identity.spiffe_id`.
//!
//! Needs root (eBPF, cgroup directories); without it each test says why and
//! returns. As root a probe that cannot load fails them.

mod support;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;
use support::{Agent, assert_no_planted, can_load_probes, plant_secret, which};

const TRUST_DOMAIN: &str = "secretmon.test";
/// The signature of the planted service-account token: neither it nor the
/// token may ever be printed.
const TOKEN_SIGNATURE: &str = "ZmFrZS1zaWduYXR1cmUtc2VjcmV0bW9uLW5ldmVyLXByaW50ZWQ";

/// Tests run in parallel and share parent cgroups (`system.slice`, …):
/// making and removing directories is done one test at a time.
static CGROUP_DIRS: Mutex<()> = Mutex::new(());

/// The cgroup2 mount, as the agent finds it (hybrid or unified host).
fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            (post.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("cgroup2 is mounted")
}

/// A cgroup directory made for one test, removed with the parents it made.
struct Cgroup {
    dir: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroup {
    fn create(relative: &str) -> Self {
        let _guard = CGROUP_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = cgroup2_mount().join(relative);
        let mut made = Vec::new();
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        missing.reverse();
        for d in missing {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            made.push(d.to_path_buf());
        }
        Self { dir, made }
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _guard = CGROUP_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        for d in self.made.iter().rev() {
            // A parent another test still uses is busy: leave it to that test.
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && d == &self.dir => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// `sh -c SCRIPT sh ARGS...` that first moves itself into `cgroup`, so the
/// program it execs opens the secret from inside it.
fn in_cgroup(cgroup: &Cgroup, script: &str, args: &[&Path]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("echo $$ > \"$0\" && {script}"))
        .arg(cgroup.procs())
        .args(args)
        .stdout(Stdio::null());
    cmd
}

fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    hex_string(&bytes)[..len].to_string()
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_uuid() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The host name as a SPIFFE path segment.
fn host_segment() -> String {
    host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A config file with the test trust domain and `extra` TOML.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("secretmon.toml");
    std::fs::write(
        &path,
        format!("[agent]\ntrust_domain = \"{TRUST_DOMAIN}\"\n{extra}"),
    )
    .unwrap();
    path
}

/// An agent watching `secret`, configured from `config`.
fn start_agent(config: &Path, secret: &Path) -> Agent {
    Agent::start(&[
        "--config",
        config.to_str().unwrap(),
        "--watch",
        secret.to_str().unwrap(),
    ])
}

fn wait_exit(mut child: Child) {
    let status = child.wait().unwrap();
    assert!(status.success(), "reader failed: {status}");
}

/// `cat SECRET` in `cgroup` while the agent is paused: by the time the agent
/// reads the event the reader has exited and been reaped, so its identity
/// can only come from what the kernel recorded (the cgroup id), not /proc.
fn read_while_paused(agent: &Agent, cgroup: &Cgroup, secret: &Path) -> u32 {
    agent.pause();
    let reader = in_cgroup(cgroup, "exec cat \"$1\"", &[secret])
        .spawn()
        .unwrap();
    let pid = reader.id();
    wait_exit(reader);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    agent.resume();
    pid
}

fn read_event(agent: &mut Agent, pid: u32) -> Value {
    agent.wait_for(Duration::from_secs(10), |v| {
        v["kind"] == "secret_read" && v["process"]["pid"] == pid
    })
}

/// Stop the agent and check that nothing secret was printed.
fn stop_clean(agent: Agent, also_secret: &[&str]) -> Vec<String> {
    let (code, lines, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let all = lines.join("\n");
    assert_no_planted(&[&all, &stderr]);
    for s in also_secret {
        assert!(
            !all.contains(s) && !stderr.contains(s),
            "token material leaked into output"
        );
    }
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["status"], "stopped");
    assert!(
        last["identity_cache"]["misses"].as_u64().unwrap() >= 1,
        "{last}"
    );
    lines
}

#[test]
fn systemd_service_reader_gone_before_its_event_is_read() {
    if !can_load_probes("systemd_service_reader_gone_before_its_event_is_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let unit = format!("secretmon-test-{}.service", random_hex(8));
    let cgroup = Cgroup::create(&format!("system.slice/{unit}"));
    let mut agent = start_agent(&config(dir.path(), ""), &secret);

    let pid = read_while_paused(&agent, &cgroup, &secret);
    let ev = read_event(&mut agent, pid);
    let id = &ev["identity"];
    assert_eq!(id["id"], format!("systemd:{unit}"), "{ev}");
    assert_eq!(
        id["spiffe_id"],
        format!(
            "spiffe://{TRUST_DOMAIN}/host/{}/unit/{unit}",
            host_segment()
        )
    );
    assert_eq!(id["kind"], "systemd");
    assert_eq!(id["systemd"]["unit"], unit.as_str());
    assert_eq!(id["human"], false);
    assert!(ev["secret"].get("container_path").is_none(), "{ev}");
    stop_clean(agent, &[]);
    drop(cgroup);
}

#[test]
fn docker_container_reader_in_its_own_mount_namespace() {
    if !can_load_probes("docker_container_reader_in_its_own_mount_namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    // The container sees the host's `.aws` directory at another place, as
    // `docker run -v HOST:CONTAINER` would show it.
    let inside = tempfile::tempdir().unwrap();
    let container_id = random_hex(64);
    let cgroup = Cgroup::create(&format!("system.slice/docker-{container_id}.scope"));
    let mut agent = start_agent(&config(dir.path(), ""), &secret);

    // `cat FILE -` keeps the reader alive on stdin after it opened the
    // secret, so the agent sees its mount namespace.
    let mut reader = in_cgroup(
        &cgroup,
        "exec unshare --mount --propagation private sh -c \
         'mount --bind \"$0\" \"$1\" && exec cat \"$1/credentials\" -' \"$1\" \"$2\"",
        &[secret.parent().unwrap(), inside.path()],
    )
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = reader.id();
    let ev = read_event(&mut agent, pid);
    drop(reader.stdin.take());
    wait_exit(reader);

    let short = &container_id[..12];
    let id = &ev["identity"];
    assert_eq!(id["id"], format!("container:docker:{short}"), "{ev}");
    assert_eq!(
        id["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/container/{short}")
    );
    assert_eq!(id["kind"], "container");
    assert_eq!(id["container"]["id"], container_id.as_str());
    assert_eq!(id["container"]["runtime"], "docker");
    assert_eq!(ev["secret"]["path"], secret.to_str().unwrap());
    assert_eq!(
        ev["secret"]["container_path"],
        inside.path().join("credentials").to_str().unwrap(),
        "{ev}"
    );
    stop_clean(agent, &[]);
    drop(cgroup);
}

/// A projected service-account token as the kubelet writes it.
fn fake_token(namespace: &str, pod: &str, pod_uid: &str, sa: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"secretmon-test"}"#);
    let claims = serde_json::json!({
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": 4_102_444_800u64,
        "iat": 1_700_000_000u64,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": random_uuid()},
            "pod": {"name": pod, "uid": pod_uid},
            "serviceaccount": {"name": sa, "uid": random_uuid()},
            "warnafter": 1_700_003_607u64
        },
        "nbf": 1_700_000_000u64,
        "sub": format!("system:serviceaccount:{namespace}:{sa}")
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.{TOKEN_SIGNATURE}")
}

#[test]
fn kubernetes_pod_container_reader_gone_before_its_event_is_read() {
    if !can_load_probes("kubernetes_pod_container_reader_gone_before_its_event_is_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let (namespace, pod, sa, container) = ("payments", "api-7f9c4d-x2z8q", "api", "server");
    let pod_uid = random_uuid();
    let container_id = random_hex(64);

    let kubelet = dir.path().join("kubelet");
    let token_dir = kubelet.join(format!(
        "pods/{pod_uid}/volumes/kubernetes.io~projected/kube-api-access-q8x2k"
    ));
    std::fs::create_dir_all(&token_dir).unwrap();
    let token = fake_token(namespace, pod, &pod_uid, sa);
    std::fs::write(token_dir.join("token"), &token).unwrap();
    std::fs::write(token_dir.join("namespace"), namespace).unwrap();
    let logs = dir.path().join("pods");
    let log_dir = logs.join(format!("{namespace}_{pod}_{pod_uid}/{container}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join("0.log"), "").unwrap();

    let cgroup = Cgroup::create(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope",
        pod_uid.replace('-', "_")
    ));
    let cfg = config(
        dir.path(),
        &format!(
            "[identity]\nkubelet_root = \"{}\"\npod_log_root = \"{}\"\n",
            kubelet.display(),
            logs.display()
        ),
    );
    let mut agent = start_agent(&cfg, &secret);

    let pid = read_while_paused(&agent, &cgroup, &secret);
    let ev = read_event(&mut agent, pid);
    let id = &ev["identity"];
    assert_eq!(id["id"], format!("k8s:{namespace}/{sa}"), "{ev}");
    assert_eq!(
        id["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}")
    );
    assert_eq!(id["kind"], "k8s");
    assert_eq!(
        id["k8s"],
        serde_json::json!({
            "namespace": namespace,
            "pod": pod,
            "pod_uid": pod_uid,
            "service_account": sa,
            "container": container,
        })
    );
    assert_eq!(id["container"]["id"], container_id.as_str());
    assert_eq!(id["container"]["runtime"], "containerd");
    stop_clean(agent, &[&token, TOKEN_SIGNATURE]);
    drop(cgroup);
}

#[test]
fn plain_user_process_reader() {
    if !can_load_probes("plain_user_process_reader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    // Readable by the unprivileged reader.
    for (path, mode) in [
        (dir.path(), 0o755),
        (secret.parent().unwrap(), 0o755),
        (&secret, 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // A cgroup that names no workload, whatever cgroup the tests run in.
    let cgroup = Cgroup::create(&format!("secretmon-test-{}", random_hex(8)));
    let mut agent = start_agent(&config(dir.path(), ""), &secret);

    let nobody = 65534;
    let user = nix::unistd::User::from_uid(nobody.into())
        .unwrap()
        .map_or_else(|| nobody.to_string(), |u| u.name);
    // Moved by root first: an unprivileged process may not write cgroup.procs.
    let reader = in_cgroup(
        &cgroup,
        "exec setpriv --reuid 65534 --regid 65534 --clear-groups cat \"$1\"",
        &[&secret],
    )
    .spawn()
    .unwrap();
    let pid = reader.id();
    wait_exit(reader);
    let ev = read_event(&mut agent, pid);
    let exe = which("cat");
    let exe = exe.to_str().unwrap();
    let id = &ev["identity"];
    assert_eq!(ev["process"]["uid"], nobody);
    assert_eq!(id["id"], format!("user:{user}:{exe}"), "{ev}");
    assert_eq!(
        id["spiffe_id"],
        format!(
            "spiffe://{TRUST_DOMAIN}/host/{}/uid/{nobody}/exe{exe}",
            host_segment()
        )
    );
    assert_eq!(id["kind"], "user");
    assert_eq!(id["human"], false);
    assert_eq!(ev["process"]["tty"], false);
    for part in ["systemd", "container", "k8s"] {
        assert!(id.get(part).is_none(), "{ev}");
    }
    stop_clean(agent, &[]);
    drop(cgroup);
}

#[test]
fn terminal_reader_is_human() {
    if !can_load_probes("terminal_reader_is_human") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let session = format!("session-smt{}.scope", random_hex(6));
    let cgroup = Cgroup::create(&format!("user.slice/user-0.slice/{session}"));
    let mut agent = start_agent(&config(dir.path(), ""), &secret);

    // script(1) runs the command on a new pseudo-terminal, as a login would.
    let reader = in_cgroup(
        &cgroup,
        "exec script -qec \"cat '$1'\" /dev/null",
        &[&secret],
    )
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    wait_exit(reader);
    let path = secret.to_str().unwrap().to_string();
    let ev = agent.wait_for(Duration::from_secs(10), |v| {
        v["kind"] == "secret_read" && v["secret"]["path"] == path.as_str()
    });
    let exe = which("cat");
    let exe = exe.to_str().unwrap();
    let id = &ev["identity"];
    assert_eq!(ev["process"]["comm"], "cat", "{ev}");
    assert_eq!(ev["process"]["tty"], true, "{ev}");
    assert_eq!(id["id"], format!("user:root:{exe}"), "{ev}");
    assert_eq!(
        id["spiffe_id"],
        format!(
            "spiffe://{TRUST_DOMAIN}/host/{}/uid/0/exe{exe}",
            host_segment()
        )
    );
    assert_eq!(id["human"], true);
    assert_eq!(id["systemd"]["unit"], session.as_str());
    let script = which("script");
    let ancestors = ev["process"]["ancestors"].as_array().unwrap();
    assert!(
        ancestors
            .iter()
            .any(|a| a["exe"] == script.to_str().unwrap()),
        "script among the ancestors: {ev}"
    );
    stop_clean(agent, &[]);
    drop(cgroup);
}

#[test]
fn bad_trust_domain_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[agent]\ntrust_domain = \"Not A Domain\"\n").unwrap();
    let out = Command::new(support::BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("trust domain `Not A Domain`"), "{stderr}");
}
