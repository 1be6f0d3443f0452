//! The packaging: the .deb `cargo xtask package` builds, installed with
//! dpkg and removed again; the systemd unit (verify, security, and the
//! agent run with exactly its capabilities and syscall filter); the
//! Kubernetes DaemonSet against the Kubernetes schema; the Dockerfile
//! through hadolint. The tools come from `cargo xtask setup`.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{BIN, is_root};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `<target>`, from the agent binary's place (`<target>/<profile>/secretmon`).
fn target_dir() -> PathBuf {
    Path::new(BIN)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

const UNIT: &str = "packaging/secretmon.service";
const DAEMONSET: &str = "packaging/kubernetes/daemonset.yaml";
const DOCKERFILE: &str = "packaging/container/Dockerfile";

/// A tool `cargo xtask setup` put in `<target>/tools/venv/bin`, or why not.
fn python_tool(test: &str, name: &str) -> Option<PathBuf> {
    let tool = target_dir().join("tools/venv/bin").join(name);
    if tool.exists() {
        return Some(tool);
    }
    eprintln!(
        "{test}: skipped: {} is missing; `cargo xtask setup` installs it",
        tool.display()
    );
    None
}

/// The unit's value of `key` (the last assignment wins, as in systemd).
fn unit_setting(key: &str) -> String {
    let text = std::fs::read_to_string(workspace().join(UNIT)).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .next_back()
        .unwrap_or_else(|| panic!("{UNIT} sets no {key}"))
        .to_string()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The exposure score `systemd-analyze security` gives the unit; the README
/// states it.
const EXPOSURE_AT_MOST: f64 = 3.0;

#[test]
fn deb_installs_with_dpkg_runs_and_purges() {
    let test = "deb_installs_with_dpkg_runs_and_purges";
    if !is_root() {
        eprintln!("{test}: skipped: dpkg -i needs root");
        return;
    }
    let version = env!("CARGO_PKG_VERSION");
    let deb = target_dir().join(format!("debian/secretmon_{version}-1_amd64.deb"));
    if !deb.exists() {
        eprintln!(
            "{test}: skipped: no {}; `cargo xtask package` (and `cargo xtask test`) builds it",
            deb.display()
        );
        return;
    }
    // One install at a time on this machine.
    let lock = std::fs::File::create("/tmp/secretmon-package-test.lock").unwrap();
    lock.lock().unwrap();

    run(Command::new("dpkg").arg("-i").arg(&deb));
    let installed = std::panic::catch_unwind(|| check_installed(version));
    run(Command::new("dpkg").args(["--purge", "secretmon"]));
    for gone in ["/usr/bin/secretmon", "/var/lib/secretmon", "/etc/secretmon"] {
        assert!(!Path::new(gone).exists(), "{gone} is left after --purge");
    }
    if let Err(panic) = installed {
        std::panic::resume_unwind(panic);
    }
}

fn check_installed(version: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for file in [
        "/usr/bin/secretmon",
        "/lib/systemd/system/secretmon.service",
        "/etc/secretmon/config.toml",
        "/etc/logrotate.d/secretmon",
        "/usr/share/bash-completion/completions/secretmon",
        "/usr/share/zsh/vendor-completions/_secretmon",
        "/usr/share/fish/vendor_completions.d/secretmon.fish",
    ] {
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }
    assert_eq!(mode("/var/lib/secretmon"), 0o700);
    assert_eq!(mode("/var/log/secretmon"), 0o700);
    assert!(Path::new("/etc/secretmon/config.d").is_dir());
    let conffiles = text(&run(Command::new("dpkg-query").args([
        "-W",
        "-f=${Conffiles}",
        "secretmon",
    ])));
    assert!(
        conffiles.contains("/etc/secretmon/config.toml"),
        "{conffiles}"
    );
    // The man pages, as man finds them.
    for page in ["secretmon", "secretmon-run", "secretmon-report"] {
        run(Command::new("man").args(["-w", page]));
    }

    let out = run(Command::new("/usr/bin/secretmon").arg("--version"));
    assert_eq!(text(&out).trim(), format!("secretmon {version}"));
    let out = run(Command::new("/usr/bin/secretmon").arg("check"));
    assert!(
        text(&out).contains("ready: secretmon run will use"),
        "{}",
        text(&out)
    );
    // The default config sets nothing: every value is the built-in one.
    let out = run(Command::new("/usr/bin/secretmon").args(["config", "--json"]));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["files"][0], "/etc/secretmon/config.toml");
    for (key, setting) in config["settings"].as_object().unwrap() {
        assert_eq!(setting["from"], "default", "{key}");
    }

    let unit = "/lib/systemd/system/secretmon.service";
    let out = run(Command::new("systemd-analyze").args(["verify", unit]));
    assert!(
        out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "--no-pager",
        unit,
    ]));
    let report = text(&out);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("secretmon.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        score <= EXPOSURE_AT_MOST,
        "exposure {score} > {EXPOSURE_AT_MOST}:\n{report}"
    );
}

/// Every syscall of `SystemCallFilter=` (sets expanded by systemd-analyze).
fn allowed_syscalls() -> BTreeSet<String> {
    let listing = text(&run(Command::new("systemd-analyze").arg("syscall-filter")));
    let mut sets: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in listing.lines() {
        if line.starts_with('@') {
            current = line.split_whitespace().next().map(str::to_string);
            sets.entry(current.clone().unwrap()).or_default();
        } else if let Some(set) = &current {
            let name = line.trim();
            if !name.is_empty() && !name.starts_with('#') {
                sets.get_mut(set).unwrap().push(name.to_string());
            }
        }
    }
    fn expand(
        name: &str,
        sets: &std::collections::HashMap<String, Vec<String>>,
        out: &mut BTreeSet<String>,
    ) {
        match sets.get(name) {
            Some(members) => {
                for m in members {
                    if out.insert(m.clone()) {
                        expand(m, sets, out);
                    }
                }
            }
            None => {
                out.insert(name.to_string());
            }
        }
    }
    let mut allowed = BTreeSet::new();
    for item in unit_setting("SystemCallFilter").split_whitespace() {
        expand(item, &sets, &mut allowed);
    }
    allowed
}

/// The agent under the unit's `CapabilityBoundingSet=` (as root, as systemd
/// runs it) and traced by strace: it starts, sees a read, reloads, reports
/// and stops, and makes no syscall that `SystemCallFilter=` would refuse.
#[test]
fn the_agent_runs_within_the_units_capabilities_and_syscall_filter() {
    let test = "the_agent_runs_within_the_units_capabilities_and_syscall_filter";
    if !support::can_load_probes(test) {
        return;
    }
    let caps: Vec<String> = unit_setting("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(
        caps,
        ["+bpf", "+perfmon", "+sys_ptrace", "+dac_read_search"],
        "the capabilities the README names"
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = support::plant_secret(dir.path());
    let out = dir.path().join("events.jsonl");
    let trace = dir.path().join("strace.txt");
    let mut agent = support::Reaped::spawn(
        Command::new("setpriv")
            .arg(format!("--bounding-set=-all,{}", caps.join(",")))
            .arg("--inh-caps=-all")
            .args(["strace", "-f", "-qq", "-o"])
            .arg(&trace)
            .args([BIN, "run", "--watch"])
            .arg(&secret)
            .arg("--output")
            .arg(&out)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let events = || std::fs::read_to_string(&out).unwrap_or_default();
    let wait = |what: &str, agent: &mut support::Reaped| {
        // strace slows the start-up (BTF is read in small pieces).
        let deadline = Instant::now() + Duration::from_secs(120);
        while !events().contains(what) {
            assert!(Instant::now() < deadline, "no {what} in:\n{}", events());
            assert!(
                agent.child().try_wait().unwrap().is_none(),
                "the agent exited"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("\"status\":\"started\"", &mut agent);
    // The tracee's pid is strace's child's.
    let pid = std::fs::read_to_string(&trace)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s).unwrap();
    run(Command::new("cat").arg(&secret).stdout(Stdio::null()));
    wait("\"kind\":\"secret_read\"", &mut agent);
    signal(nix::sys::signal::Signal::SIGHUP);
    wait("\"status\":\"reloaded\"", &mut agent);
    signal(nix::sys::signal::Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    signal(nix::sys::signal::Signal::SIGTERM);
    let done = agent.wait_with_output();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(events().contains("\"status\":\"stopped\""), "{}", events());

    let used: BTreeSet<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let call = l.split_whitespace().nth(1)?;
            let name = call.split('(').next()?;
            (call.contains('(')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .then(|| name.to_string())
        })
        .collect();
    assert!(used.contains("bpf") && used.contains("openat"), "{used:?}");
    let allowed = allowed_syscalls();
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter refuses {refused:?}, which the agent calls"
    );
}

#[test]
fn daemonset_validates_against_the_kubernetes_schema() {
    let test = "daemonset_validates_against_the_kubernetes_schema";
    let Some(validate) = python_tool(test, "kubernetes-validate") else {
        return;
    };
    let manifest = workspace().join(DAEMONSET);
    let out = Command::new(&validate)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&manifest)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("passed for resource daemonset/secretmon"),
        "{said}"
    );

    // What a node agent needs, beyond the schema.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--host-name=$(NODE_NAME)"), "{args:?}");
    assert_eq!(c["env"][0]["name"], "NODE_NAME");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // The image's `secretmon run` takes these arguments: `config` parses
    // the same agent flags, without the kernel.
    let node_args: Vec<String> = args
        .iter()
        .map(|a| a.replace("$(NODE_NAME)", "node-1"))
        .collect();
    let out = Command::new(BIN)
        .arg("config")
        .args(&node_args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "secretmon refuses the DaemonSet's arguments {node_args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["settings"]["agent.host_name"]["value"], "node-1");
    assert_eq!(
        config["settings"]["agent.state_dir"]["value"],
        "/var/lib/secretmon"
    );
    // The kubelet restarts a stalled agent: liveness on the metrics
    // listener's /healthz, held off by a start-up probe on /readyz until
    // the probes are attached.
    assert_eq!(
        config["settings"]["metrics.listen"]["value"],
        "0.0.0.0:9464"
    );
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    let port = &c["ports"][0]["name"];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(&c["livenessProbe"]["httpGet"]["port"], port);
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(&c["startupProbe"]["httpGet"]["port"], port);
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert!(c["resources"]["limits"]["cpu"].is_string());
    let mut caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    caps.sort();
    assert_eq!(caps, ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"]);
    assert_eq!(c["securityContext"]["privileged"], false);
    // Every host mount read-only but the state dir.
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        let writable = m["readOnly"] != true;
        assert_eq!(writable, path == "/var/lib/secretmon", "{path}");
    }
}

#[test]
fn dockerfile_passes_hadolint_and_installs_the_package_xtask_builds() {
    let test = "dockerfile_passes_hadolint_and_installs_the_package_xtask_builds";
    let Some(hadolint) = python_tool(test, "hadolint") else {
        return;
    };
    let dockerfile = workspace().join(DOCKERFILE);
    let out = Command::new(&hadolint)
        .args(["--failure-threshold", "info"])
        .arg(&dockerfile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(text.contains(&format!("ARG VERSION={}", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains("COPY target/debian/secretmon_${VERSION}-1_amd64.deb"));
}
