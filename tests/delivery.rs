//! Delivery: every event kind's OCSF form against the OCSF schema, and the
//! real agent against real receivers on loopback: rsyslogd over TCP and
//! mutual TLS through an outage, over UDP and a local socket with filters,
//! a file output that logrotate moves, an HTTP receiver taking a webhook's
//! NDJSON, Splunk HEC and Elasticsearch `_bulk`, `promtool check metrics`,
//! and a spool that survives kill -9. The agent tests need root to load
//! eBPF; without it they say why and return.

mod support;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use secretmon::{
    event::{
        Access, Agent, AgentStatus, Body, Capture, EnvSecret, EnvironRead, Event, FindingBody,
        Host, IoUringOpen, OutputChanges, Process, ReloadSummary, Secret, SecretInArgv,
        SecretInEnv, SecretRead, Target,
    },
    findings::{Evidence, Finding, FindingIdentity, FindingSecret, FindingType},
    identity::{
        Identity, K8s, Naming,
        cgroup::{ContainerId, Runtime},
    },
    process::Ancestor,
    redact::ArgSecret,
    secret::{Lifetime, SecretType},
};
use serde_json::Value;
use support::{
    Agent as RunningAgent, PLANTED, assert_no_planted, can_load_probes, plant_secret,
    receivers::{Certs, HttpReceiver, Rsyslog, free_port, validate_ocsf},
};

fn process(pid: u32) -> Process {
    Process {
        pid,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        user: "app".into(),
        comm: "python3".into(),
        exe: Some("/usr/bin/python3.11".into()),
        args: vec!["python3".into(), "app.py".into(), "--token=…".into()],
        args_truncated: false,
        tty: false,
        loginuid: None,
        start_time: "2026-11-30T08:00:00.000000001Z".into(),
        ancestors: vec![Ancestor {
            pid: 1,
            exe: Some("/usr/lib/systemd/systemd".into()),
        }],
    }
}

/// One identity of each kind, a pod's container the richest.
fn identities() -> Vec<Identity> {
    let naming = Naming::new(Some("prod.example"), "web-1").unwrap();
    let pod = {
        let mut i = Identity::k8s(&naming, "payments", "api");
        let c = ContainerId {
            runtime: Runtime::Containerd,
            id: "a".repeat(64),
        };
        i.container = Some((&c).into());
        i.k8s = Some(K8s {
            namespace: Some("payments".into()),
            pod: Some("api-7d9f".into()),
            pod_uid: "0f9a3c1e-2b4d-4e6f-8a0b-1c2d3e4f5a6b".into(),
            service_account: Some("api".into()),
            container: Some("api".into()),
        });
        i
    };
    let container = Identity::container(
        &naming,
        &ContainerId {
            runtime: Runtime::Docker,
            id: "b".repeat(64),
        },
    );
    let mut human = Identity::user(&naming, "ana", 1000, "/usr/bin/cat");
    human.human = true;
    vec![
        pod,
        container,
        Identity::systemd(&naming, "billing.service", None),
        human,
        Identity::unknown(),
    ]
}

fn secret() -> Secret {
    Secret {
        id: "sec-0123456789abcdef".into(),
        path: "/srv/app/.aws/credentials".into(),
        container_path: Some("/home/app/.aws/credentials".into()),
        path_truncated: false,
        secret_type: SecretType::AwsCredentials,
        fingerprint: "hmac-sha256:0123456789abcdef".into(),
        lifetime: Lifetime::Static,
        hint: Some("AKIA…".into()),
    }
}

fn finding(t: FindingType) -> Finding {
    Finding::new(
        t,
        "sec-0123456789abcdef".into(),
        "",
        FindingSecret {
            id: "sec-0123456789abcdef".into(),
            path: Some("/srv/app/.aws/credentials".into()),
            secret_type: "aws_credentials".into(),
            hint: Some("AKIA…".into()),
            fingerprint: Some("hmac-sha256:0123456789abcdef".into()),
            env_name: None,
            redacted: None,
        },
        vec![FindingIdentity {
            id: "k8s:payments/api".into(),
            kind: "k8s".into(),
            spiffe_id: "spiffe://prod.example/ns/payments/sa/api".into(),
            gone: false,
        }],
        Evidence {
            count: 42,
            first_seen: Some("2026-10-01T00:00:00Z".into()),
            last_seen: Some("2026-11-30T08:00:00Z".into()),
            reason: "read by 2 identities".into(),
            paths: vec![
                "/srv/app/.aws/credentials".into(),
                "/srv/other/.aws/credentials".into(),
            ],
        },
        "give each workload its own credential".into(),
    )
}

/// Every kind of event, in each shape it takes.
fn every_kind() -> Vec<Event> {
    let host = Host {
        name: "web-1.prod.example".into(),
    };
    let time: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 5).unwrap();
    let ev = |body| Event::new(time, &host, body);
    let mut events = Vec::new();
    for (i, identity) in identities().into_iter().enumerate() {
        let pid = 100 + i as u32;
        for result in ["ok", "EACCES"] {
            events.push(ev(Body::SecretRead(SecretRead {
                process: process(pid),
                identity: identity.clone(),
                secret: secret(),
                access: Access {
                    op: "open",
                    flags: vec!["O_RDONLY"],
                    result: result.into(),
                    count: 3,
                    via: "syscall",
                },
            })));
        }
        events.push(ev(Body::SecretInEnv(SecretInEnv {
            process: process(pid),
            identity: identity.clone(),
            secret: EnvSecret {
                env_name: "GITHUB_TOKEN".into(),
            },
        })));
        events.push(ev(Body::SecretInArgv(SecretInArgv {
            process: process(pid),
            identity: identity.clone(),
            secret: ArgSecret {
                kind: "secret_flag".into(),
                redacted: "--token=…".into(),
                arg: 2,
            },
        })));
        events.push(ev(Body::EnvironRead(EnvironRead {
            process: process(pid),
            identity: identity.clone(),
            target: Target {
                pid: 4242,
                exe: Some("/usr/sbin/sshd".into()),
            },
        })));
        events.push(ev(Body::IoUringOpen(IoUringOpen {
            process: process(pid),
            identity,
            opcode: "IORING_OP_OPENAT",
            message: "opens files through io_uring",
        })));
    }
    // A read of a file the inventory could not read: no fingerprint.
    let mut bare = secret();
    bare.fingerprint = String::new();
    bare.lifetime = Lifetime::Unknown;
    events.push(ev(Body::SecretRead(SecretRead {
        process: Process {
            exe: None,
            args: Vec::new(),
            ancestors: Vec::new(),
            ..process(7)
        },
        identity: identities().remove(2),
        secret: bare,
        access: Access {
            op: "open",
            flags: vec!["O_RDONLY"],
            result: "ok".into(),
            count: 1,
            via: "io_uring",
        },
    })));
    for t in [
        FindingType::OrphanedSecret,
        FindingType::SharedSecret,
        FindingType::LongLivedSecret,
        FindingType::HumanUse,
        FindingType::UnexpectedReader,
        FindingType::SecretInEnv,
    ] {
        events.push(ev(Body::Finding(FindingBody {
            finding: finding(t),
        })));
    }
    for status in [
        AgentStatus::Started,
        AgentStatus::Lost,
        AgentStatus::Stopped,
        AgentStatus::OutputDown,
        AgentStatus::OutputUp,
        AgentStatus::SpoolDropped,
        AgentStatus::WatchOverflow,
        AgentStatus::KernelErrors,
        AgentStatus::Reloaded,
        AgentStatus::ReloadFailed,
    ] {
        events.push(ev(Body::Agent(Agent {
            status,
            message: "a message".into(),
            lost: 3,
            kernel_errors: [("sys_exit_openat", 2)].into_iter().collect(),
            output: Some("siem".into()),
            identity_cache: None,
            capture: Some(Capture {
                opens: "tracepoints",
                denied_opens: "tracepoints",
                io_uring_opens: "submitters reported".into(),
            }),
            watch_overflow: None,
            reload: matches!(status, AgentStatus::Reloaded).then(|| ReloadSummary {
                reopened: vec!["/var/log/secretmon/events.jsonl".into()],
                applied: vec!["agent.watch".into(), "output".into()],
                restart_needed: vec!["capture.opens".into()],
                outputs: OutputChanges {
                    added: vec!["siem".into()],
                    changed: vec![],
                    removed: vec!["webhook".into()],
                },
                watched: 12,
                added: 1,
                removed: 0,
            }),
        })));
    }
    events
}

#[test]
fn ocsf_of_every_kind_validates_against_the_schema() {
    let events = every_kind();
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds.len(),
        secretmon::event::KINDS.len(),
        "every kind covered"
    );
    let lines: Vec<String> = events.iter().map(secretmon::ocsf::to_json).collect();
    validate_ocsf(&lines);
    let classes: Vec<(String, u64, u64)> = events
        .iter()
        .zip(&lines)
        .map(|(e, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["metadata"]["uid"], e.id.as_str());
            assert_eq!(v["metadata"]["version"], secretmon::ocsf::VERSION);
            (
                e.kind().to_string(),
                v["class_uid"].as_u64().unwrap(),
                v["activity_id"].as_u64().unwrap(),
            )
        })
        .collect();
    let class_of = |kind: &str| -> Vec<(u64, u64)> {
        classes
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, c, a)| (*c, *a))
            .collect()
    };
    assert!(class_of("secret_read").iter().all(|c| *c == (1001, 14)));
    assert!(class_of("secret_in_env").iter().all(|c| *c == (1007, 1)));
    assert!(class_of("secret_in_argv").iter().all(|c| *c == (1007, 1)));
    assert!(class_of("environ_read").iter().all(|c| *c == (1007, 3)));
    assert!(class_of("finding").iter().all(|c| *c == (2004, 1)));
    assert!(class_of("agent").iter().all(|c| c.0 == 1008));

    // The identity, the secret and the fingerprint are where OCSF has them.
    let read: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(read["actor"]["user"]["name"], "k8s:payments/api");
    assert_eq!(
        read["actor"]["user"]["uid"],
        "spiffe://prod.example/ns/payments/sa/api"
    );
    assert_eq!(
        read["actor"]["process"]["container"]["pod_uuid"],
        "0f9a3c1e-2b4d-4e6f-8a0b-1c2d3e4f5a6b"
    );
    assert_eq!(read["file"]["uid"], "sec-0123456789abcdef");
    assert_eq!(read["file"]["hashes"][0]["value"], "0123456789abcdef");
    assert_eq!(read["file"]["tags"][1]["value"], "static");
    assert_eq!(
        read["unmapped"]["secret"]["container_path"],
        "/home/app/.aws/credentials"
    );
    let f = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["class_uid"] == 2004)
        .unwrap();
    assert_eq!(f["finding_info"]["tags"][0]["name"], "owasp_nhi");
    assert_eq!(f["resources"][0]["uid"], "sec-0123456789abcdef");
    assert_eq!(
        f["resources"][0]["data"]["fingerprint"],
        "hmac-sha256:0123456789abcdef"
    );
}

/// `N` reads of `secret`, each by a process of its own (so none fold).
fn reads(secret: &Path, n: usize) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq {n}); do head -c1 \"$1\" >/dev/null; done"
        ))
        .arg("sh")
        .arg(secret)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The agent configured with `outputs` (`[[output]]` tables), watching
/// `secret`.
fn start_with_outputs(dir: &Path, secret: &Path, outputs: &str) -> RunningAgent {
    let config = dir.join("secretmon.toml");
    std::fs::write(&config, outputs).unwrap();
    RunningAgent::start(&[
        "--config",
        config.to_str().unwrap(),
        "--watch",
        secret.to_str().unwrap(),
    ])
}

/// The ids of native events, one a line, in order.
fn native_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The agent's next events, up to the first point where `done` holds of
/// them.
fn collect(agent: &mut RunningAgent, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut events = Vec::new();
    while !done(&events) {
        events.push(agent.wait_for(Duration::from_secs(60), |_| true));
    }
    events
}

/// The ids of the reads of `secret` by `head` among `events`, in order.
fn ids_of_reads(events: &[Value], secret: &Path) -> Vec<String> {
    let path = secret.to_str().unwrap();
    events
        .iter()
        .filter(|v| {
            v["kind"] == "secret_read"
                && v["process"]["comm"] == "head"
                && v["secret"]["path"] == path
        })
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

/// The ids of the next `n` reads of `secret` by `head`, in the order the
/// agent printed them.
fn read_ids(agent: &mut RunningAgent, secret: &Path, n: usize) -> Vec<String> {
    let events = collect(agent, |e| ids_of_reads(e, secret).len() >= n);
    ids_of_reads(&events, secret)
}

/// Whether `events` has an `agent` event with `status` for each output.
fn said_of_each(events: &[Value], status: &str, outputs: &[&str]) -> bool {
    outputs.iter().all(|o| {
        events
            .iter()
            .any(|v| v["status"] == status && v["output"] == *o)
    })
}

/// The OCSF event ids among `lines`, in order.
fn ocsf_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["metadata"]["uid"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Each of `ids` once in `got`, and in this order.
fn assert_once_in_order(got: &[String], ids: &[String], what: &str) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *count.entry(g.as_str()).or_default() += 1;
    }
    for id in ids {
        assert_eq!(
            count.get(id.as_str()),
            Some(&1),
            "{what}: {id} not exactly once"
        );
    }
    let order: Vec<&String> = got.iter().filter(|g| ids.contains(g)).collect();
    assert_eq!(
        order,
        ids.iter().collect::<Vec<_>>(),
        "{what}: out of order"
    );
}

fn has_all(lines: &[String], ids: &[String]) -> bool {
    ids.iter()
        .all(|id| lines.iter().any(|l| l.contains(id.as_str())))
}

#[test]
fn rsyslog_outage_over_tcp_and_mutual_tls_delivers_every_read_once_in_order() {
    if !can_load_probes("rsyslog_outage_over_tcp_and_mutual_tls_delivers_every_read_once_in_order")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let certs = Certs::make(dir.path());
    let mut rsyslog = Rsyslog::start(&dir.path().join("rsyslog"), &certs);
    let outputs = format!(
        r#"[[output]]
url = "-"

[[output]]
url = "syslog+tcp://127.0.0.1:{tcp}"
name = "siem-tcp"
format = "ocsf"

[[output]]
url = "syslog+tls://127.0.0.1:{tls}"
name = "siem-tls"
format = "ocsf"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        tcp = rsyslog.tcp_port,
        tls = rsyslog.tls_port,
        ca = certs.ca.display(),
        cert = certs.client_cert.display(),
        key = certs.client_key.display(),
    );
    let mut agent = start_with_outputs(dir.path(), &secret, &outputs);
    const WAIT: Duration = Duration::from_secs(60);

    reads(&secret, 5);
    let mut ids = read_ids(&mut agent, &secret, 5);
    for input in ["tcp", "tls"] {
        rsyslog.wait_for(input, WAIT, |l| has_all(l, &ids));
    }

    // The receiver goes away; reads go on.
    rsyslog.pause();
    reads(&secret, 10);
    let outputs = ["siem-tcp", "siem-tls"];
    let events = collect(&mut agent, |e| {
        ids_of_reads(e, &secret).len() >= 10 && said_of_each(e, "output_down", &outputs)
    });
    ids.extend(ids_of_reads(&events, &secret));
    rsyslog.resume();
    collect(&mut agent, |e| said_of_each(e, "output_up", &outputs));
    for input in ["tcp", "tls"] {
        rsyslog.wait_for(input, WAIT, |l| has_all(l, &ids));
    }
    let (code, stdout, stderr) = agent.stop(Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(
        stderr.matches("receiver unreachable").count(),
        2,
        "said once per output: {stderr}"
    );
    for input in ["tcp", "tls"] {
        let lines = rsyslog.lines(input);
        assert_once_in_order(&ocsf_ids(&lines), &ids, input);
        validate_ocsf(&lines);
        assert_no_planted(&[&lines.join("\n")]);
    }
    assert_no_planted(&[&stdout.join("\n"), &stderr]);
}

/// SIGHUP rebuilds a changed syslog output while its receiver is down: the
/// new output takes over the spool the old one left (never two writers on
/// it), and once rsyslogd is back it has every event the agent made, once
/// and in order, from before the reload, across it and after it.
#[test]
fn sighup_rebuilds_a_syslog_output_on_its_spool_and_rsyslog_gets_every_event_once() {
    if !can_load_probes(
        "sighup_rebuilds_a_syslog_output_on_its_spool_and_rsyslog_gets_every_event_once",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let certs = Certs::make(dir.path());
    let mut rsyslog = Rsyslog::start(&dir.path().join("rsyslog"), &certs);
    let port = rsyslog.tcp_port;
    let outputs = |facility: &str| {
        format!(
            "[[output]]\nurl = \"-\"\n\n[[output]]\nurl = \"syslog+tcp://127.0.0.1:{port}\"\n\
             name = \"siem\"\nfacility = \"{facility}\"\n"
        )
    };
    let mut agent = start_with_outputs(dir.path(), &secret, &outputs("authpriv"));
    const WAIT: Duration = Duration::from_secs(60);
    reads(&secret, 5);
    let mut ids = read_ids(&mut agent, &secret, 5);
    rsyslog.wait_for("tcp", WAIT, |l| has_all(l, &ids));

    rsyslog.pause();
    reads(&secret, 5);
    let events = collect(&mut agent, |e| {
        ids_of_reads(e, &secret).len() >= 5 && said_of_each(e, "output_down", &["siem"])
    });
    ids.extend(ids_of_reads(&events, &secret));
    std::fs::write(dir.path().join("secretmon.toml"), outputs("local0")).unwrap();
    agent.signal(Signal::SIGHUP);
    let reloaded = agent.wait_for(WAIT, |v| v["status"] == "reloaded");
    assert_eq!(
        reloaded["reload"]["outputs"],
        serde_json::json!({"added": [], "changed": ["siem"], "removed": []}),
        "{reloaded}"
    );
    reads(&secret, 5);
    ids.extend(read_ids(&mut agent, &secret, 5));
    rsyslog.resume();
    rsyslog.wait_for("tcp", WAIT, |l| has_all(l, &ids));

    let (code, stdout, stderr) = agent.stop(Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let all = native_ids(&stdout);
    rsyslog.wait_for("tcp", WAIT, |l| has_all(l, &all));
    let received = rsyslog.lines("tcp");
    assert_once_in_order(&native_ids(&received), &all, "tcp");
    assert!(
        stderr.contains("outputs added: none, changed: siem, removed: none"),
        "{stderr}"
    );
    assert_no_planted(&[&received.join("\n"), &stdout.join("\n"), &stderr]);
}

#[test]
fn rsyslog_over_udp_and_a_local_socket_receives_what_each_filter_takes() {
    if !can_load_probes("rsyslog_over_udp_and_a_local_socket_receives_what_each_filter_takes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let certs = Certs::make(dir.path());
    let rsyslog = Rsyslog::start(&dir.path().join("rsyslog"), &certs);
    let outputs = format!(
        r#"[[output]]
url = "-"

[[output]]
url = "syslog+udp://127.0.0.1:{udp}"
name = "siem-udp"
kinds = ["secret_read"]

[[output]]
url = "syslog://{socket}"
name = "local"
format = "ocsf"
min_severity = "medium"
"#,
        udp = rsyslog.udp_port,
        socket = rsyslog.socket.display(),
    );
    let mut agent = start_with_outputs(dir.path(), &secret, &outputs);
    const WAIT: Duration = Duration::from_secs(60);
    reads(&secret, 3);
    let ids = read_ids(&mut agent, &secret, 3);
    // A token on a command line: a medium event, reported redacted.
    let token = "ghp_FAKEfakeFAKEfakeFAKEfakeFAKEfake7777";
    let pid = support::run_ok(
        Command::new("true").args(["--header", &format!("Authorization: token {token}")]),
    );
    let argv = agent.wait_for(WAIT, |v| {
        v["kind"] == "secret_in_argv" && v["process"]["pid"] == pid
    });
    rsyslog.wait_for("udp", WAIT, |l| has_all(l, &ids));
    let argv_id = argv["id"].as_str().unwrap().to_string();
    rsyslog.wait_for("unix", WAIT, |l| ocsf_ids(l).contains(&argv_id));
    let (code, stdout, stderr) = agent.stop(Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");

    // UDP: only reads, each once, in order.
    let udp = rsyslog.lines("udp");
    let kinds: Vec<Value> = udp
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].clone())
        .collect();
    assert!(kinds.iter().all(|k| k == "secret_read"), "{udp:?}");
    assert_once_in_order(&native_ids(&udp), &ids, "udp");

    // The local socket: OCSF, medium and above only, so no reads.
    let unix = rsyslog.lines("unix");
    validate_ocsf(&unix);
    for l in &unix {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["severity_id"].as_u64().unwrap() >= 3, "below medium: {l}");
        assert_ne!(v["class_uid"], 1001, "a read passed the filter: {l}");
    }
    let all = [udp.join("\n"), unix.join("\n"), stdout.join("\n"), stderr];
    for text in &all {
        assert!(!text.contains(token), "the token is never shown");
    }
    assert_no_planted(&all.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn a_file_output_moved_by_logrotate_is_reopened_on_sighup() {
    if !can_load_probes("a_file_output_moved_by_logrotate_is_reopened_on_sighup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let file = dir.path().join("events.json");
    let mut agent = RunningAgent::start(&[
        "--watch",
        secret.to_str().unwrap(),
        "--output",
        "-",
        "--output",
        file.to_str().unwrap(),
    ]);
    let ids_in = |path: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        native_ids(&text.lines().map(str::to_owned).collect::<Vec<_>>())
    };
    let wait_for_ids = |path: &Path, ids: &[String]| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ids.iter().all(|id| ids_in(path).contains(id)) {
            assert!(Instant::now() < deadline, "not in {}", path.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    reads(&secret, 2);
    let before = read_ids(&mut agent, &secret, 2);
    wait_for_ids(&file, &before);

    // logrotate: move the file, then SIGHUP (its postrotate).
    let rotated = dir.path().join("events.json.1");
    std::fs::rename(&file, &rotated).unwrap();
    agent.signal(Signal::SIGHUP);
    // Until the reopen is handled, events may still land in the moved file.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        assert!(Instant::now() < deadline, "not reopened");
        std::thread::sleep(Duration::from_millis(50));
    }
    reads(&secret, 2);
    let after = read_ids(&mut agent, &secret, 2);
    wait_for_ids(&file, &after);

    let (code, _, stderr) = agent.stop(Signal::SIGTERM);
    assert_eq!(
        code,
        Some(0),
        "SIGHUP does not end the agent; stderr: {stderr}"
    );
    let old = ids_in(&rotated);
    assert!(before.iter().all(|id| old.contains(id)));
    assert!(
        after.iter().all(|id| !old.contains(id)),
        "written after the reopen"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the new file is private too");
}

#[test]
fn splunk_hec_elastic_bulk_and_webhook_bodies_reach_an_http_receiver() {
    if !can_load_probes("splunk_hec_elastic_bulk_and_webhook_bodies_reach_an_http_receiver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    // The first POST is refused with 503: it is sent again.
    let receiver = HttpReceiver::start(1);
    const TOKEN: &str = "hec-token-not-real-0000";
    const BEARER: &str = "webhook-token-not-real-1111";
    let token = dir.path().join("hec.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let outputs = format!(
        r#"[[output]]
url = "-"

[[output]]
url = "http://127.0.0.1:{port}/services/collector/event"
name = "splunk"
body = "splunk_hec"
token = "file:{token}"
index = "security"
kinds = ["secret_read"]

[[output]]
url = "http://127.0.0.1:{port}/_bulk"
name = "elastic"
body = "elastic_bulk"
index = "secretmon-events"
format = "ocsf"
kinds = ["secret_read"]

[[output]]
url = "http://127.0.0.1:{port}/hook"
name = "webhook"
token = "{BEARER}"
kinds = ["secret_read"]
"#,
        port = receiver.port,
        token = token.display(),
    );
    let mut agent = start_with_outputs(dir.path(), &secret, &outputs);
    reads(&secret, 3);
    let ids = read_ids(&mut agent, &secret, 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (hec, bulk, hook) = loop {
        let requests = receiver.requests();
        let of = |path: &str| -> Vec<String> {
            requests
                .iter()
                .filter(|r| r.path == path)
                .flat_map(|r| r.body.lines().map(str::to_owned).collect::<Vec<_>>())
                .collect()
        };
        let (hec, bulk, hook) = (of("/services/collector/event"), of("/_bulk"), of("/hook"));
        if has_all(&hec, &ids) && has_all(&bulk, &ids) && has_all(&hook, &ids) {
            break (hec, bulk, hook);
        }
        assert!(Instant::now() < deadline, "not delivered: {requests:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let requests = receiver.requests();
    let splunk = requests
        .iter()
        .find(|r| r.path == "/services/collector/event")
        .unwrap();
    assert_eq!(
        splunk.header("Authorization"),
        Some(format!("Splunk {TOKEN}").as_str())
    );
    let mut hec_ids = Vec::new();
    for line in &hec {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["sourcetype"], "secretmon:native");
        assert_eq!(v["source"], "secretmon");
        assert_eq!(v["index"], "security");
        assert!(v["time"].as_f64().unwrap() > 1.7e9);
        assert_eq!(v["host"], v["event"]["host"]["name"]);
        assert_eq!(v["event"]["kind"], "secret_read");
        hec_ids.push(v["event"]["id"].as_str().unwrap().to_string());
    }
    assert_once_in_order(&hec_ids, &ids, "HEC");

    let elastic = requests.iter().find(|r| r.path == "/_bulk").unwrap();
    assert_eq!(elastic.header("Content-Type"), Some("application/x-ndjson"));
    assert_eq!(elastic.header("Authorization"), None);
    assert_eq!(bulk.len() % 2, 0, "action and document pairs");
    let mut docs = Vec::new();
    let mut bulk_ids = Vec::new();
    for pair in bulk.chunks(2) {
        let action: Value = serde_json::from_str(&pair[0]).unwrap();
        let doc: Value = serde_json::from_str(&pair[1]).unwrap();
        assert_eq!(action["create"]["_index"], "secretmon-events");
        assert_eq!(action["create"]["_id"], doc["metadata"]["uid"]);
        assert_eq!(doc["class_uid"], 1001);
        bulk_ids.push(doc["metadata"]["uid"].as_str().unwrap().to_string());
        docs.push(pair[1].clone());
    }
    assert_once_in_order(&bulk_ids, &ids, "_bulk");
    validate_ocsf(&docs);

    // The webhook: native events, one a line, with the bearer token.
    let webhook = requests.iter().find(|r| r.path == "/hook").unwrap();
    assert_eq!(webhook.header("Content-Type"), Some("application/x-ndjson"));
    assert_eq!(
        webhook.header("Authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert_once_in_order(&native_ids(&hook), &ids, "webhook");

    let (code, stdout, stderr) = agent.stop(Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let all = stdout.join("\n");
    for token in [TOKEN, BEARER] {
        assert!(
            !all.contains(token) && !stderr.contains(token),
            "the token is never shown"
        );
    }
    assert_no_planted(&[
        &all,
        &stderr,
        &hec.join("\n"),
        &bulk.join("\n"),
        &hook.join("\n"),
    ]);
}

#[test]
fn metrics_pass_promtool_and_health_is_served() {
    if !can_load_probes("metrics_pass_promtool_and_health_is_served") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let port = free_port();
    // A receiver that is not there: its output spools and fails.
    let dead = free_port();
    let mut agent = RunningAgent::start(&[
        "--watch",
        secret.to_str().unwrap(),
        "--metrics",
        &format!("127.0.0.1:{port}"),
        "--output",
        "-",
        "--output",
        &format!("syslog+tcp://127.0.0.1:{dead}"),
    ]);
    reads(&secret, 2);
    read_ids(&mut agent, &secret, 2);
    let get = |path: &str| -> (u16, String) {
        let mut r = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(get("/readyz").0, 200);
    let output = format!("syslog-tcp-127.0.0.1-{dead}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = get("/metrics");
        assert_eq!(status, 200);
        let spooled = text.lines().any(|l| {
            l.starts_with(&format!(
                "secretmon_output_spool_bytes{{output=\"{output}\"}}"
            )) && !l.ends_with(" 0")
        });
        if spooled {
            break text;
        }
        assert!(Instant::now() < deadline, "nothing spooled:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (cargo xtask setup installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for name in [
        "secretmon_events_total{kind=\"secret_read\"}",
        "secretmon_kernel_events_lost_total",
        "secretmon_kernel_errors_total",
        "secretmon_watched_secrets",
        "secretmon_tracked_processes",
        "secretmon_build_info{",
        "secretmon_ledger_commit_duration_seconds_bucket",
        &format!("secretmon_output_queued_events{{output=\"{output}\"}}"),
        &format!("secretmon_output_failed_sends_total{{output=\"{output}\"}}"),
        &format!("secretmon_output_spool_dropped_events_total{{output=\"{output}\"}}"),
        &format!("secretmon_output_dropped_events_total{{output=\"{output}\"}}"),
        "secretmon_output_delivered_events_total{output=\"stdout\"}",
    ] {
        assert!(text.contains(name), "no {name} in\n{text}");
    }
    let (code, _, stderr) = agent.stop(Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
}

#[test]
fn the_spool_survives_kill_9() {
    if !can_load_probes("the_spool_survives_kill_9") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = plant_secret(dir.path());
    let certs = Certs::make(dir.path());
    let mut rsyslog = Rsyslog::start(&dir.path().join("rsyslog"), &certs);
    // Down from the start: everything the first agent sees is spooled.
    rsyslog.pause();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap().to_string();
    let out = format!("syslog+tcp://127.0.0.1:{}", rsyslog.tcp_port);
    let args = [
        "--state",
        &state_arg,
        "--watch",
        secret.to_str().unwrap(),
        "--output",
        "-",
        "--output",
        &out,
        "--format",
        "native",
    ];
    let mut first = RunningAgent::start(&args);
    reads(&secret, 10);
    let ids = read_ids(&mut first, &secret, 10);
    let spool = state.join(format!("spool/syslog-tcp-127.0.0.1-{}", rsyslog.tcp_port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_all(&spooled(&spool), &ids) {
        assert!(
            Instant::now() < deadline,
            "not spooled in {}",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, _) = first.stop(Signal::SIGKILL);
    assert_eq!(code, None, "killed");

    rsyslog.resume();
    let second = RunningAgent::start(&args);
    rsyslog.wait_for("tcp", Duration::from_secs(60), |l| has_all(l, &ids));
    let (code, _, stderr) = second.stop(Signal::SIGTERM);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_once_in_order(&native_ids(&rsyslog.lines("tcp")), &ids, "after kill -9");
    assert!(!rsyslog.lines("tcp").join("\n").contains(PLANTED));
}

/// The spool's segments, as text.
fn spooled(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .map(|e| String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned())
                .collect()
        })
        .unwrap_or_default()
}
