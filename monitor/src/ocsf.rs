//! Events in the Open Cybersecurity Schema Framework, for SIEMs that map
//! OCSF already. One version, [`VERSION`]; every kind has a class:
//!
//! | kind | OCSF class (activity) |
//! |---|---|
//! | `secret_read` | File System Activity 1001 (Open) |
//! | `secret_in_env`, `secret_in_argv` | Process Activity 1007 (Launch) |
//! | `environ_read` | Process Activity 1007 (Open) |
//! | `io_uring_open` | Process Activity 1007 (Other) |
//! | `finding` | Detection Finding 2004 (Create) |
//! | `agent` | Event Log Activity 1008 (Start, Stop, Other) |
//!
//! `environ_read` is Process Activity / Open: reading `/proc/PID/environ`
//! reads another process's memory, what OCSF models as the actor opening
//! the target `process` (Windows' OpenProcess); the target is the subject
//! whose secrets are exposed, which File System Activity on a procfs path
//! would hide. `agent` events go to Event Log Activity, the class SIEMs
//! alert on when a log source stops, loses events or cannot deliver them.
//!
//! The workload identity is the actor's `user` (`name` the identity id,
//! `uid` the SPIFFE ID); the Unix account is the process's `user`. A
//! secret is a `file` (`uid` the secret id, `hashes` its keyed fingerprint,
//! `tags` its type and lifetime) or, in a finding, a `resources` entry.
//! Everything else of the native event goes under `unmapped`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::{
    event::{
        Agent, AgentStatus, Body, Event, Process, SecretInArgv, SecretInEnv, SecretRead, Severity,
    },
    findings::Finding,
    identity::{Identity, IdentityKind},
};

/// The OCSF version every event names in `metadata.version`.
pub const VERSION: &str = "1.5.0";
/// The profiles whose attributes the events use.
pub const PROFILES: [&str; 2] = ["host", "container"];

struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const FILE_SYSTEM_ACTIVITY: Class = Class {
    uid: 1001,
    name: "File System Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const PROCESS_ACTIVITY: Class = Class {
    uid: 1007,
    name: "Process Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const EVENT_LOG_ACTIVITY: Class = Class {
    uid: 1008,
    name: "Event Log Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};

/// `event` as one OCSF JSON object.
pub fn to_json(event: &Event) -> String {
    to_value(event).to_string()
}

pub fn to_value(event: &Event) -> Value {
    let (class, activity_id, activity_name, mut fields) = match &event.body {
        Body::SecretRead(r) => (&FILE_SYSTEM_ACTIVITY, 14, "Open", secret_read(r)),
        Body::SecretInEnv(e) => (&PROCESS_ACTIVITY, 1, "Launch", secret_in_env(e)),
        Body::SecretInArgv(a) => (&PROCESS_ACTIVITY, 1, "Launch", secret_in_argv(a)),
        Body::EnvironRead(e) => {
            let f = json!({
                "actor": actor(&e.process, &e.identity),
                "process": target(e.target.pid, e.target.exe.as_deref()),
                "message": format!(
                    "{} read the environment of process {}{}",
                    e.identity.id,
                    e.target.pid,
                    e.target.exe.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()
                ),
                "unmapped": {
                    "process": process_rest(&e.process),
                    "identity": e.identity,
                },
            });
            (&PROCESS_ACTIVITY, 3, "Open", f)
        }
        Body::IoUringOpen(u) => {
            let f = json!({
                "actor": actor(&u.process, &u.identity),
                "process": process(&u.process, Some(&u.identity)),
                "message": u.message,
                "unmapped": {
                    "opcode": u.opcode,
                    "process": process_rest(&u.process),
                    "identity": u.identity,
                },
            });
            (&PROCESS_ACTIVITY, 99, "io_uring open", f)
        }
        Body::Finding(f) => (&DETECTION_FINDING, 1, "Create", finding(&f.finding)),
        Body::Agent(a) => {
            let (id, name) = match a.status {
                AgentStatus::Started => (6, "Start"),
                AgentStatus::Stopped => (7, "Stop"),
                AgentStatus::Lost => (99, "Events Lost"),
                AgentStatus::OutputDown => (99, "Delivery Failed"),
                AgentStatus::OutputUp => (99, "Delivery Restored"),
                AgentStatus::SpoolDropped => (99, "Events Dropped"),
                AgentStatus::WatchOverflow => (99, "Watch Overflow"),
                AgentStatus::KernelErrors => (99, "Kernel Errors"),
                AgentStatus::Reloaded => (99, "Reloaded"),
                AgentStatus::ReloadFailed => (99, "Reload Failed"),
            };
            (&EVENT_LOG_ACTIVITY, id, name, agent(a))
        }
    };
    let severity = event.body.severity();
    let (severity_id, severity_name) = match severity {
        Severity::Info => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
    };
    let obj = fields.as_object_mut().expect("an object");
    let mut unmapped = match obj.remove("unmapped") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    unmapped.insert("schema".into(), json!(crate::event::SCHEMA));
    unmapped.insert("kind".into(), json!(event.kind()));
    let common = json!({
        "class_uid": class.uid,
        "class_name": class.name,
        "category_uid": class.category_uid,
        "category_name": class.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": u64::from(class.uid) * 100 + activity_id,
        "type_name": format!("{}: {activity_name}", class.name),
        "time": event.time.timestamp_millis(),
        "severity_id": severity_id,
        "severity": severity_name,
        "metadata": {
            "version": VERSION,
            "uid": event.id,
            "event_code": event.kind(),
            "original_time": event.time_text(),
            "profiles": PROFILES,
            "product": {
                "name": "secretmon",
                "vendor_name": "secretmon",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "device": {
            "hostname": event.host.name,
            "name": event.host.name,
            "type_id": 0,
            "type": "Unknown",
        },
        "unmapped": unmapped,
    });
    for (k, v) in common.as_object().expect("an object") {
        obj.insert(k.clone(), v.clone());
    }
    fields
}

fn millis(rfc3339: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

fn basename(path: &str) -> &str {
    path.rsplit('/').find(|p| !p.is_empty()).unwrap_or(path)
}

/// A regular file at `path`.
fn file(path: &str) -> Value {
    json!({
        "name": basename(path),
        "path": path,
        "type_id": 1,
        "type": "Regular File",
    })
}

/// The workload identity, a non-human user unless a person is behind it.
fn workload(identity: &Identity) -> Value {
    let (type_id, kind) = match (identity.human, identity.kind) {
        (true, _) => (1, "User"),
        (false, IdentityKind::K8s) => (99, "Kubernetes Service Account"),
        (false, IdentityKind::Container) => (99, "Container Workload"),
        (false, IdentityKind::Systemd) => (99, "Systemd Service"),
        (false, IdentityKind::User) => (99, "Host Workload"),
        (false, IdentityKind::Unknown) => (0, "Unknown"),
    };
    let mut user = json!({
        "name": identity.id,
        "type_id": type_id,
        "type": kind,
    });
    if !identity.spiffe_id.is_empty() {
        user["uid"] = json!(identity.spiffe_id);
    }
    if let Some(ns) = identity.k8s.as_ref().and_then(|k| k.namespace.as_ref()) {
        user["domain"] = json!(ns);
    }
    user
}

fn container(identity: &Identity) -> Option<Value> {
    let c = identity.container.as_ref()?;
    let mut v = json!({"uid": c.id, "runtime": c.runtime.as_str()});
    if let Some(k8s) = &identity.k8s {
        v["orchestrator"] = json!("kubernetes");
        if let Some(name) = &k8s.container {
            v["name"] = json!(name);
        }
        if uuid::Uuid::parse_str(&k8s.pod_uid).is_ok() {
            v["pod_uuid"] = json!(k8s.pod_uid);
        }
    }
    Some(v)
}

fn process(p: &Process, identity: Option<&Identity>) -> Value {
    let mut v = json!({
        "pid": p.pid,
        "name": p.comm,
        "user": {"name": p.user, "uid": p.uid.to_string()},
    });
    if let Some(exe) = &p.exe {
        v["file"] = file(exe);
    }
    if !p.args.is_empty() {
        v["cmd_line"] = json!(p.args.join(" "));
    }
    if let Some(ms) = millis(&p.start_time) {
        v["created_time"] = json!(ms);
    }
    let mut parent = json!({"pid": p.ppid});
    if let Some(exe) = p
        .ancestors
        .first()
        .filter(|a| a.pid == p.ppid)
        .and_then(|a| a.exe.as_deref())
    {
        parent["file"] = file(exe);
    }
    v["parent_process"] = parent;
    let lineage: Vec<&str> = p
        .ancestors
        .iter()
        .filter_map(|a| a.exe.as_deref())
        .collect();
    if !lineage.is_empty() {
        v["lineage"] = json!(lineage);
    }
    if let Some(c) = identity.and_then(container) {
        v["container"] = c;
    }
    v
}

/// What of a process OCSF has no attribute for (outside the Linux profile).
fn process_rest(p: &Process) -> Value {
    json!({
        "gid": p.gid,
        "tty": p.tty,
        "loginuid": p.loginuid,
        "args_truncated": p.args_truncated,
    })
}

fn target(pid: u32, exe: Option<&str>) -> Value {
    let mut v = json!({"pid": pid});
    if let Some(exe) = exe {
        v["file"] = file(exe);
        v["name"] = json!(basename(exe));
    }
    v
}

fn actor(p: &Process, identity: &Identity) -> Value {
    json!({
        "process": process(p, Some(identity)),
        "user": workload(identity),
    })
}

/// The launched process's parent, as the actor of a launch. The workload
/// identity is the launcher's too: a child inherits its parent's cgroup at
/// fork, and exec does not change it.
fn launcher(p: &Process, identity: &Identity) -> Value {
    let mut parent = json!({"pid": p.ppid});
    if let Some(exe) = p
        .ancestors
        .first()
        .filter(|a| a.pid == p.ppid)
        .and_then(|a| a.exe.as_deref())
    {
        parent["file"] = file(exe);
        parent["name"] = json!(basename(exe));
    }
    json!({"process": parent, "user": workload(identity)})
}

/// The keyed fingerprint as an OCSF hash: `hmac-sha256:HEX`.
fn hashes(fingerprint: &str) -> Option<Value> {
    let (algorithm, value) = fingerprint.split_once(':')?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(json!([{
        "algorithm_id": 99,
        "algorithm": algorithm.to_ascii_uppercase(),
        "value": value,
    }]))
}

fn secret_read(r: &SecretRead) -> Value {
    let mut f = file(&r.secret.path);
    f["uid"] = json!(r.secret.id);
    f["tags"] = json!([
        {"name": "secret_type", "value": r.secret.secret_type.as_str()},
        {"name": "lifetime", "value": r.secret.lifetime.to_string()},
    ]);
    if let Some(h) = hashes(&r.secret.fingerprint) {
        f["hashes"] = h;
    }
    let ok = r.access.result == "ok";
    let mut v = json!({
        "actor": actor(&r.process, &r.identity),
        "file": f,
        "count": r.access.count,
        "status_id": if ok { 1 } else { 2 },
        "status": if ok { "Success" } else { "Failure" },
        "message": if ok {
            format!("{} opened {}", r.identity.id, r.secret.path)
        } else {
            format!("{} was refused {} ({})", r.identity.id, r.secret.path, r.access.result)
        },
        "unmapped": {
            "access": {"op": r.access.op, "flags": r.access.flags, "via": r.access.via},
            "secret": {
                "container_path": r.secret.container_path,
                "path_truncated": r.secret.path_truncated,
                "hint": r.secret.hint,
            },
            "process": process_rest(&r.process),
            "identity": r.identity,
        },
    });
    if !ok {
        v["status_code"] = json!(r.access.result);
    }
    v
}

fn secret_in_env(e: &SecretInEnv) -> Value {
    launch(
        &e.process,
        &e.identity,
        format!("the secret variable {}", e.secret.env_name),
        json!({"env_name": e.secret.env_name}),
    )
}

fn secret_in_argv(a: &SecretInArgv) -> Value {
    launch(
        &a.process,
        &a.identity,
        format!("a {} on its command line", a.secret.kind),
        json!(a.secret),
    )
}

/// A process that started with `what`, a secret described by `secret`.
fn launch(p: &Process, identity: &Identity, what: String, secret: Value) -> Value {
    json!({
        "actor": launcher(p, identity),
        "process": process(p, Some(identity)),
        "message": format!(
            "{} started with {what}",
            p.exe.as_deref().unwrap_or(&p.comm),
        ),
        "unmapped": {
            "secret": secret,
            "process": process_rest(p),
            "identity": identity,
        },
    })
}

fn finding(f: &Finding) -> Value {
    let s = &f.secret;
    let mut resource = json!({
        "uid": s.id,
        "type": s.secret_type,
    });
    let name = s
        .path
        .as_deref()
        .or(s.env_name.as_deref())
        .or(s.redacted.as_deref());
    if let Some(name) = name {
        resource["name"] = json!(name);
    }
    let mut data = Map::new();
    for (k, v) in [
        ("fingerprint", &s.fingerprint),
        ("hint", &s.hint),
        ("env_name", &s.env_name),
        ("match", &s.redacted),
    ] {
        if let Some(v) = v {
            data.insert(k.into(), json!(v));
        }
    }
    if !data.is_empty() {
        resource["data"] = Value::Object(data);
    }
    let mut evidences: Vec<Value> = f
        .identities
        .iter()
        .map(|i| {
            json!({
                "name": if i.gone { "reader (gone)" } else { "reader" },
                "actor": {"user": {"name": i.id, "uid": i.spiffe_id, "type": i.kind, "type_id": 99}},
            })
        })
        .collect();
    let mut paths: Vec<&str> = f.evidence.paths.iter().map(String::as_str).collect();
    if paths.is_empty()
        && let Some(p) = &s.path
    {
        paths.push(p);
    }
    for p in paths {
        let mut ev_file = file(p);
        if let Some(h) = s.fingerprint.as_deref().and_then(hashes) {
            ev_file["hashes"] = h;
        }
        evidences.push(json!({"name": "secret file", "file": ev_file}));
    }
    let mut info = json!({
        "uid": f.id,
        "title": f.finding_type.as_str().replace('_', " "),
        "desc": f.evidence.reason,
        "types": [f.finding_type.as_str()],
        "analytic": {
            "uid": f.finding_type.as_str(),
            "name": f.finding_type.as_str(),
            "type_id": 1,
            "type": "Rule",
        },
        "tags": f.owasp.iter().map(|o| json!({"name": "owasp_nhi", "value": o})).collect::<Vec<_>>(),
    });
    if let Some(ms) = f.evidence.first_seen.as_deref().and_then(millis) {
        info["first_seen_time"] = json!(ms);
    }
    if let Some(ms) = f.evidence.last_seen.as_deref().and_then(millis) {
        info["last_seen_time"] = json!(ms);
    }
    let mut v = json!({
        "finding_info": info,
        "resources": [resource],
        "remediation": {"desc": f.recommendation},
        "count": f.evidence.count,
        "is_alert": true,
        "status_id": 1,
        "status": "New",
        "message": f.evidence.reason,
        "unmapped": {
            "owasp": f.owasp,
            "identities": f.identities,
        },
    });
    if !evidences.is_empty() {
        v["evidences"] = json!(evidences);
    }
    v
}

fn agent(a: &Agent) -> Value {
    let failed = matches!(
        a.status,
        AgentStatus::Lost
            | AgentStatus::OutputDown
            | AgentStatus::SpoolDropped
            | AgentStatus::WatchOverflow
            | AgentStatus::KernelErrors
            | AgentStatus::ReloadFailed
    );
    let mut v = json!({
        "actor": {
            "app_name": "secretmon",
            "process": {"pid": std::process::id(), "name": "secretmon"},
        },
        "log_provider": "secretmon",
        "log_name": a.output.as_deref().unwrap_or("secretmon"),
        "log_type_id": 2,
        "log_type": "Application",
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "status_detail": a.message,
        "message": a.message,
        "unmapped": {
            "status": a.status,
            "lost": a.lost,
            "output": a.output,
            "capture": a.capture,
            "identity_cache": a.identity_cache,
            "watch_overflow": a.watch_overflow,
            "kernel_errors": a.kernel_errors,
            "reload": a.reload,
        },
    });
    if a.lost > 0 && matches!(a.status, AgentStatus::Lost | AgentStatus::SpoolDropped) {
        v["count"] = json!(a.lost);
    }
    v
}
