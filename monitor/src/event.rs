//! The native JSON-lines event contract (`secretmon/v1`).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::{
    identity::{CacheStats, Identity},
    inventory::Record,
    process::Ancestor,
    redact::ArgSecret,
    secret::{Lifetime, SecretType},
};

pub const SCHEMA: &str = "secretmon/v1";

/// Every event: the common fields, then the kind's own, flattened. Owned:
/// the pipeline produces it, the agent routes it to the outputs.
#[derive(Debug)]
pub struct Event {
    /// Unique on this host (a UUIDv7: time-ordered, and unique across
    /// restarts), so a receiver can drop what at-least-once delivery sent
    /// twice.
    pub id: String,
    pub time: DateTime<Utc>,
    pub host: Host,
    pub body: Body,
}

impl Event {
    pub fn new(time: DateTime<Utc>, host: &Host, body: Body) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            time,
            host: host.clone(),
            body,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }

    /// `time` as the contract writes it: RFC 3339, UTC, nanoseconds.
    pub fn time_text(&self) -> String {
        self.time.to_rfc3339_opts(SecondsFormat::Nanos, true)
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Native<'a> {
            schema: &'static str,
            id: &'a str,
            kind: &'static str,
            time: String,
            host: &'a Host,
            #[serde(flatten)]
            body: &'a Body,
        }
        Native {
            schema: SCHEMA,
            id: &self.id,
            kind: self.kind(),
            time: self.time_text(),
            host: &self.host,
            body: &self.body,
        }
        .serialize(serializer)
    }
}

/// What an event is about: one variant per `kind`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Body {
    Agent(Agent),
    SecretRead(SecretRead),
    SecretInEnv(SecretInEnv),
    SecretInArgv(SecretInArgv),
    EnvironRead(EnvironRead),
    IoUringOpen(IoUringOpen),
    Finding(FindingBody),
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Agent(_) => "agent",
            Self::SecretRead(_) => "secret_read",
            Self::SecretInEnv(_) => "secret_in_env",
            Self::SecretInArgv(_) => "secret_in_argv",
            Self::EnvironRead(_) => "environ_read",
            Self::IoUringOpen(_) => "io_uring_open",
            Self::Finding(_) => "finding",
        }
    }

    /// How urgent it is, for per-output filters, syslog and OCSF: a finding
    /// says so itself; a leak is worse than a read; losing events is high.
    pub fn severity(&self) -> Severity {
        match self {
            Self::Agent(a) => match a.status {
                AgentStatus::Started
                | AgentStatus::Stopped
                | AgentStatus::OutputUp
                | AgentStatus::Reloaded => Severity::Info,
                // A reload that did not take: the old configuration runs on.
                AgentStatus::OutputDown | AgentStatus::KernelErrors | AgentStatus::ReloadFailed => {
                    Severity::Medium
                }
                // Secrets unwatched, as events lost: what is not seen.
                AgentStatus::Lost | AgentStatus::SpoolDropped | AgentStatus::WatchOverflow => {
                    Severity::High
                }
            },
            Self::SecretRead(r) if r.access.result != "ok" => Severity::Low,
            Self::SecretRead(_) => Severity::Info,
            Self::SecretInEnv(_) | Self::IoUringOpen(_) => Severity::Low,
            Self::SecretInArgv(_) | Self::EnvironRead(_) => Severity::Medium,
            Self::Finding(f) => match f.finding.severity {
                crate::findings::Severity::Low => Severity::Low,
                crate::findings::Severity::Medium => Severity::Medium,
                crate::findings::Severity::High => Severity::High,
            },
        }
    }
}

/// Every kind an event can have, for `kinds` filters.
pub const KINDS: [&str; 7] = [
    "agent",
    "secret_read",
    "secret_in_env",
    "secret_in_argv",
    "environ_read",
    "io_uring_open",
    "finding",
];

/// An event's urgency, in OCSF's order and words.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

#[derive(Debug, Serialize)]
pub struct FindingBody {
    pub finding: crate::findings::Finding,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Started,
    Lost,
    /// Kernel reads or map updates failed: some events may be incomplete.
    KernelErrors,
    /// SIGHUP: outputs reopened, the configuration read again.
    Reloaded,
    /// SIGHUP with a configuration that does not load: the old one runs on.
    ReloadFailed,
    Stopped,
    /// An output's receiver stopped taking events; they wait in its spool.
    OutputDown,
    /// It takes them again.
    OutputUp,
    /// An output's spool was full: its oldest events were dropped.
    SpoolDropped,
    /// More secrets than the kernel's watch map holds.
    WatchOverflow,
}

#[derive(Debug, Serialize)]
pub struct Agent {
    pub status: AgentStatus,
    pub message: String,
    pub lost: u64,
    /// Failed kernel reads and map updates so far, by program; absent when
    /// there were none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kernel_errors: BTreeMap<&'static str, u64>,
    /// The output an `output_*` or `spool_dropped` status is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// On `stopped`: how the per-process identity cache did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_cache: Option<CacheStats>,
    /// On `started`: which kernel hooks see what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    /// On `watch_overflow`: how many are not watched, and where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_overflow: Option<crate::watch_map::Overflow>,
    /// On `reloaded`: which settings changed, and which of them wait for a
    /// restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadSummary>,
}

#[derive(Debug, Default, Serialize)]
pub struct ReloadSummary {
    /// The file outputs opened again at their paths (after logrotate moved
    /// them).
    pub reopened: Vec<String>,
    /// Changed settings now in effect (dotted keys).
    pub applied: Vec<String>,
    /// Changed settings that take effect only at the next start.
    pub restart_needed: Vec<String>,
    /// The outputs started, rebuilt and stopped.
    #[serde(skip_serializing_if = "OutputChanges::is_empty")]
    pub outputs: OutputChanges,
    /// Secrets watched after the rescan, and how many came and went.
    pub watched: usize,
    pub added: usize,
    pub removed: usize,
}

/// What a reload did to the outputs, by name.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutputChanges {
    pub added: Vec<String>,
    /// Rebuilt with new settings.
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl OutputChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct Capture {
    /// `fexit:do_filp_open`, `lsm:file_open` or `tracepoints`.
    pub opens: &'static str,
    pub denied_opens: &'static str,
    /// How io_uring opens are handled: seen, or only their submitters.
    pub io_uring_opens: String,
}

#[derive(Debug, Serialize)]
pub struct SecretRead {
    pub process: Process,
    pub identity: Identity,
    pub secret: Secret,
    pub access: Access,
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub comm: String,
    pub exe: Option<String>,
    /// argv with secret-shaped parts redacted; empty when not seen at exec.
    pub args: Vec<String>,
    pub args_truncated: bool,
    pub tty: bool,
    pub loginuid: Option<u32>,
    pub start_time: String,
    pub ancestors: Vec<Ancestor>,
}

#[derive(Debug, Serialize)]
pub struct Secret {
    pub id: String,
    /// As seen from the host.
    pub path: String,
    /// As the reader saw it, when it sees the filesystem otherwise than the
    /// host (a container's mount namespace, a chroot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
    /// `path` is not the whole path: the kernel keeps 16 names of 31 bytes
    /// each, and this file's path is deeper or a name longer. `id` is then
    /// the file's (device and inode), not the path's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    #[serde(rename = "type")]
    pub secret_type: SecretType,
    /// `hmac-sha256:` and a hex prefix: keyed, so it reveals nothing.
    /// Absent for a file the inventory could not read.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    pub lifetime: Lifetime,
    /// A safe prefix or label such as `AKIA…`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl From<&Record> for Secret {
    /// What the inventory knows of a watched file, as a `secret_read`
    /// event shows it.
    fn from(record: &Record) -> Self {
        Self {
            id: record.id.clone(),
            path: record.path.to_string_lossy().into_owned(),
            container_path: None,
            path_truncated: false,
            secret_type: record.secret_type,
            fingerprint: record.fingerprint.clone(),
            lifetime: record.lifetime,
            hint: record.hint.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Access {
    pub op: &'static str,
    pub flags: Vec<&'static str>,
    /// `ok`, or the errno name (`EACCES`).
    pub result: String,
    /// Reads folded into this event: same process, secret, result and
    /// `via`, within one flush interval.
    pub count: u64,
    /// How the open reached the kernel: `syscall` (open, openat, openat2,
    /// creat), `io_uring`, or `other` (open_by_handle_at, exec, the kernel
    /// itself: seen only by the LSM and fexit hooks).
    pub via: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SecretInEnv {
    pub process: Process,
    pub identity: Identity,
    pub secret: EnvSecret,
}

#[derive(Debug, Serialize)]
pub struct EnvSecret {
    pub env_name: String,
}

#[derive(Debug, Serialize)]
pub struct SecretInArgv {
    pub process: Process,
    pub identity: Identity,
    pub secret: ArgSecret,
}

#[derive(Debug, Serialize)]
pub struct EnvironRead {
    pub process: Process,
    pub identity: Identity,
    pub target: Target,
}

/// A blind spot stated out loud: this process opens files through io_uring.
#[derive(Debug, Serialize)]
pub struct IoUringOpen {
    pub process: Process,
    pub identity: Identity,
    pub opcode: &'static str,
    pub message: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub pid: u32,
    pub exe: Option<String>,
}

/// Names of the open flags worth showing, from the syscall's flags or from
/// `file->f_flags` (which no longer holds `O_CREAT`, `O_EXCL`, `O_TRUNC`).
/// `O_LARGEFILE` is set by the kernel on every 64-bit open and says nothing.
pub fn open_flags(f_flags: u32) -> Vec<&'static str> {
    let f = f_flags as i32;
    let mut names = vec![match f & libc::O_ACCMODE {
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_RDONLY",
    }];
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_PATH, "O_PATH"),
    ] {
        // O_SYNC includes O_DSYNC's bit; require all of a flag's bits.
        if f & bit == bit {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names() {
        assert_eq!(open_flags(0), ["O_RDONLY"]);
        assert_eq!(open_flags(libc::O_LARGEFILE as u32), ["O_RDONLY"]);
        assert_eq!(
            open_flags((libc::O_WRONLY | libc::O_APPEND) as u32),
            ["O_WRONLY", "O_APPEND"]
        );
        assert_eq!(
            open_flags((libc::O_RDWR | libc::O_NOFOLLOW) as u32),
            ["O_RDWR", "O_NOFOLLOW"]
        );
        assert_eq!(open_flags(libc::O_DSYNC as u32), ["O_RDONLY"]);
    }

    #[test]
    fn event_shape() {
        let host = Host {
            name: "web-1".into(),
        };
        let time = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let ev = Event::new(
            time,
            &host,
            Body::Agent(Agent {
                status: AgentStatus::Started,
                message: "probes attached".into(),
                lost: 0,
                kernel_errors: BTreeMap::new(),
                output: None,
                identity_cache: None,
                capture: None,
                watch_overflow: None,
                reload: None,
            }),
        );
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["schema"], "secretmon/v1");
        assert_eq!(v["kind"], "agent");
        assert_eq!(v["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(v["host"]["name"], "web-1");
        assert_eq!(v["status"], "started");
        assert_eq!(v["lost"], 0);
        assert!(v.get("kernel_errors").is_none(), "absent when none");
        let id = v["id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        let next = Event::new(
            time,
            &host,
            Body::Agent(Agent {
                status: AgentStatus::Lost,
                message: String::new(),
                lost: 1,
                kernel_errors: BTreeMap::new(),
                output: None,
                identity_cache: None,
                capture: None,
                watch_overflow: None,
                reload: None,
            }),
        );
        assert!(next.id.as_str() > id, "ids are time-ordered and unique");
        assert_eq!(next.body.severity(), Severity::High);
    }
}
