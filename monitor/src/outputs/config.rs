//! `--output URL` and `[[output]]`: where events go, and each output's own
//! settings, checked before anything starts so that a typo is one clear
//! line, not a silent default.

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::event::{KINDS, Severity};

/// Spool bound of a network output unless `spool_size` says otherwise.
pub const DEFAULT_SPOOL: ByteSize = ByteSize::mib(256);
/// Rotated files kept next to a file output with `max_size`.
const DEFAULT_MAX_FILES: u32 = 5;
/// Events in one HTTP POST, at most.
const DEFAULT_BATCH_EVENTS: usize = 500;

/// The schema an output writes: secretmon's own, or OCSF.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Native,
    Ocsf,
}

/// How an HTTP output shapes its POST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpBody {
    /// One JSON event per line (a webhook, Vector's or Fluent Bit's HTTP
    /// source, Logstash).
    #[default]
    Ndjson,
    /// Splunk's HTTP Event Collector: one `{"event": ...}` envelope each.
    SplunkHec,
    /// Elasticsearch's `_bulk`: a `create` action with the event id as
    /// `_id`, so a re-sent event is refused as a duplicate.
    ElasticBulk,
}

/// The syslog facility of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Facility {
    Auth,
    #[default]
    Authpriv,
    Daemon,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    /// Its RFC 5424 code.
    pub fn code(self) -> u8 {
        match self {
            Self::Auth => 4,
            Self::Authpriv => 10,
            Self::Daemon => 3,
            Self::Local0 => 16,
            Self::Local1 => 17,
            Self::Local2 => 18,
            Self::Local3 => 19,
            Self::Local4 => 20,
            Self::Local5 => 21,
            Self::Local6 => 22,
            Self::Local7 => 23,
        }
    }
}

/// A credential in the configuration (an HEC token, an API key): read from
/// `file:PATH` or given inline, and never shown.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Credential(String);

/// `secretmon config` shows that a token is set, never which.
impl Serialize for Credential {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(…)")
    }
}

impl Credential {
    /// The credential's value: the file's first line for `file:PATH`.
    pub fn value(&self) -> Result<String, OutputConfigError> {
        match self.0.strip_prefix("file:") {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    OutputConfigError::Invalid(format!(
                        "cannot read the token file {path}: {}",
                        crate::errors::error_text(&e)
                    ))
                })?;
                let token = text.lines().next().unwrap_or_default().trim().to_string();
                if token.is_empty() {
                    return Err(OutputConfigError::Invalid(format!(
                        "the token file {path} is empty"
                    )));
                }
                Ok(token)
            }
            None => Ok(self.0.clone()),
        }
    }
}

/// One `[[output]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// `-`, `file:///PATH` or a path, `syslog:///dev/log`,
    /// `syslog+udp|tcp|tls://HOST:PORT`, `http(s)://...`.
    pub url: String,
    /// Names the output in logs, metrics and `agent` events, and its spool
    /// directory; made from the URL when not given.
    #[serde(default)]
    pub name: Option<String>,
    /// `native` or `ocsf`; `--format` when not given.
    #[serde(default)]
    pub format: Option<Format>,
    /// Only these kinds of event; every kind when empty.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only events at least this severe: `info`, `low`, `medium`, `high`.
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// File outputs: rotate when the file would grow past this (`100MiB`).
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// File outputs: rotated files kept (`events.json.1` ...).
    #[serde(default)]
    pub max_files: Option<u32>,
    /// Network outputs: the most the spool holds on disk before the oldest
    /// events are dropped.
    #[serde(default)]
    pub spool_size: Option<ByteSize>,
    /// TLS: the CA that signs the receiver's certificate, instead of the
    /// system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// TLS: a client certificate (with `key`) for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// HTTP outputs: `ndjson`, `splunk_hec` or `elastic_bulk`.
    #[serde(default)]
    pub body: Option<HttpBody>,
    /// HTTP outputs: the HEC token, Elastic API key or bearer token, inline
    /// or `file:PATH`.
    #[serde(default)]
    pub token: Option<Credential>,
    /// HTTP outputs: the Splunk index, or the Elastic index or data stream.
    #[serde(default)]
    pub index: Option<String>,
    /// HTTP outputs: events in one POST, at most.
    #[serde(default)]
    pub batch_events: Option<usize>,
    /// Syslog outputs: the facility (default `authpriv`).
    #[serde(default)]
    pub facility: Option<Facility>,
}

impl OutputConfig {
    /// An output given as `--output URL`: every setting at its default.
    pub fn from_url(url: &str) -> Self {
        Self {
            url: url.to_string(),
            name: None,
            format: None,
            kinds: Vec::new(),
            min_severity: None,
            max_size: None,
            max_files: None,
            spool_size: None,
            ca: None,
            cert: None,
            key: None,
            body: None,
            token: None,
            index: None,
            batch_events: None,
            facility: None,
        }
    }
}

/// Where a syslog output sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// A local datagram socket such as `/dev/log`.
    Unix(PathBuf),
    Udp(String, u16),
    Tcp(String, u16),
    Tls(String, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
    Syslog(SyslogTarget),
    Http(url::Url),
}

impl Destination {
    /// Whether it goes over the network, and so through a spool.
    pub fn is_network(&self) -> bool {
        matches!(self, Self::Syslog(_) | Self::Http(_))
    }

    fn is_tls(&self) -> bool {
        match self {
            Self::Syslog(SyslogTarget::Tls(..)) => true,
            Self::Http(url) => url.scheme() == "https",
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputConfigError {
    #[error("output `{url}`: {why}")]
    Url { url: String, why: String },
    #[error("output `{name}`: {why}")]
    Setting { name: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

/// `text` with the user information of its URL (`user:password@`) hidden:
/// errors show where an output points, never its credentials.
fn without_userinfo(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => text.to_string(),
    }
}

/// Parse an output URL.
pub fn parse_destination(text: &str) -> Result<Destination, OutputConfigError> {
    let bad = |why: &str| OutputConfigError::Url {
        url: without_userinfo(text),
        why: why.to_string(),
    };
    if text == "-" {
        return Ok(Destination::Stdout);
    }
    if text.is_empty() {
        return Err(bad("empty; use - for stdout"));
    }
    if !text.contains("://") {
        return Ok(Destination::File(PathBuf::from(text)));
    }
    let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "carries credentials; give them as `token` (inline or file:PATH) instead",
        ));
    }
    let host_port = |default_port: u16| -> Result<(String, u16), OutputConfigError> {
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("needs a host, as in syslog+tcp://siem.example:514"))?;
        if url.path() != "" && url.path() != "/" {
            return Err(bad("takes no path"));
        }
        // `[::1]` is written with brackets in a URL, without them in an address.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok((host.to_string(), url.port().unwrap_or(default_port)))
    };
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad(
                    "a file URL names no host: file:///var/log/secretmon.json",
                ));
            }
            let path = url.to_file_path().map_err(|()| bad("not a file path"))?;
            if path.as_os_str().len() <= 1 {
                return Err(bad("names no file"));
            }
            Ok(Destination::File(path))
        }
        "syslog" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad(
                    "syslog:// is a local socket (syslog:///dev/log); use syslog+udp://, \
                     syslog+tcp:// or syslog+tls:// for a host",
                ));
            }
            if url.path().len() <= 1 {
                return Err(bad("names no socket: syslog:///dev/log"));
            }
            Ok(Destination::Syslog(SyslogTarget::Unix(PathBuf::from(
                url.path(),
            ))))
        }
        "syslog+udp" => {
            let (h, p) = host_port(514)?;
            Ok(Destination::Syslog(SyslogTarget::Udp(h, p)))
        }
        "syslog+tcp" => {
            let (h, p) = host_port(514)?;
            Ok(Destination::Syslog(SyslogTarget::Tcp(h, p)))
        }
        "syslog+tls" => {
            let (h, p) = host_port(6514)?;
            Ok(Destination::Syslog(SyslogTarget::Tls(h, p)))
        }
        "http" | "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(bad("needs a host"));
            }
            Ok(Destination::Http(url))
        }
        other => Err(bad(&format!(
            "unknown scheme `{other}`; use -, file://, a path, syslog://, syslog+udp://, \
             syslog+tcp://, syslog+tls://, http:// or https://"
        ))),
    }
}

/// The settings of an HTTP output.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    pub body: HttpBody,
    pub token: Option<Credential>,
    pub index: Option<String>,
    pub batch_events: usize,
}

/// TLS settings: the roots, and an optional client identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Which events an output takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Every kind when `None`.
    pub kinds: Option<HashSet<&'static str>>,
    pub min_severity: Severity,
}

impl Filter {
    pub fn accepts(&self, kind: &str, severity: Severity) -> bool {
        severity >= self.min_severity && self.kinds.as_ref().is_none_or(|k| k.contains(kind))
    }
}

/// One output, checked and with its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    pub name: String,
    pub destination: Destination,
    pub format: Format,
    pub filter: Filter,
    /// File outputs: rotate past this many bytes.
    pub max_size: Option<u64>,
    pub max_files: u32,
    /// Network outputs: the spool's bound in bytes.
    pub spool_bytes: u64,
    pub tls: TlsSettings,
    pub http: HttpSettings,
    pub facility: Facility,
}

/// Check every output and fill in its defaults. No output at all is stdout.
pub fn resolve(
    outputs: &[OutputConfig],
    default_format: Format,
) -> Result<Vec<OutputSpec>, OutputConfigError> {
    if outputs.is_empty() {
        return resolve(&[OutputConfig::from_url("-")], default_format);
    }
    let mut specs = Vec::with_capacity(outputs.len());
    let mut names = HashSet::new();
    for config in outputs {
        let spec = resolve_one(config, default_format)?;
        if !names.insert(spec.name.clone()) {
            return Err(OutputConfigError::Setting {
                name: spec.name,
                why: "two outputs have this name; give one of them another `name`".into(),
            });
        }
        specs.push(spec);
    }
    let stdouts = specs
        .iter()
        .filter(|s| s.destination == Destination::Stdout)
        .count();
    if stdouts > 1 {
        return Err(OutputConfigError::Invalid(
            "stdout (-) is named as an output twice".into(),
        ));
    }
    Ok(specs)
}

fn resolve_one(c: &OutputConfig, default_format: Format) -> Result<OutputSpec, OutputConfigError> {
    let destination = parse_destination(&c.url)?;
    let name = match &c.name {
        Some(n) => {
            if n.is_empty()
                || n.starts_with('.')
                || !n
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(OutputConfigError::Setting {
                    name: n.clone(),
                    why: "a name is letters, digits, `-`, `_` and `.`, not starting with `.`"
                        .into(),
                });
            }
            n.clone()
        }
        None => default_name(&destination),
    };
    let setting = |why: String| OutputConfigError::Setting {
        name: name.clone(),
        why,
    };
    let only = |present: bool, key: &str, what: &str| {
        if present {
            Err(setting(format!("`{key}` applies to {what} outputs only")))
        } else {
            Ok(())
        }
    };
    let is_file = matches!(destination, Destination::File(_));
    let is_http = matches!(destination, Destination::Http(_));
    let is_syslog = matches!(destination, Destination::Syslog(_));
    only(!is_file && c.max_size.is_some(), "max_size", "file")?;
    only(!is_file && c.max_files.is_some(), "max_files", "file")?;
    only(
        !destination.is_network() && c.spool_size.is_some(),
        "spool_size",
        "network",
    )?;
    for (present, key) in [
        (c.ca.is_some(), "ca"),
        (c.cert.is_some(), "cert"),
        (c.key.is_some(), "key"),
    ] {
        only(
            present && !destination.is_tls(),
            key,
            "syslog+tls:// and https://",
        )?;
    }
    if c.cert.is_some() != c.key.is_some() {
        return Err(setting(
            "`cert` and `key` go together (a client certificate and its key)".into(),
        ));
    }
    for (present, key) in [
        (c.body.is_some(), "body"),
        (c.token.is_some(), "token"),
        (c.index.is_some(), "index"),
        (c.batch_events.is_some(), "batch_events"),
    ] {
        only(present && !is_http, key, "http(s)")?;
    }
    only(!is_syslog && c.facility.is_some(), "facility", "syslog")?;
    let body = c.body.unwrap_or_default();
    if body == HttpBody::SplunkHec && c.token.is_none() {
        return Err(setting(
            "`body = \"splunk_hec\"` needs the HEC `token` (inline or file:PATH)".into(),
        ));
    }
    let batch_events = c.batch_events.unwrap_or(DEFAULT_BATCH_EVENTS);
    if batch_events == 0 {
        return Err(setting("`batch_events` must be at least 1".into()));
    }
    let kinds = if c.kinds.is_empty() {
        None
    } else {
        let mut set = HashSet::new();
        for k in &c.kinds {
            let known = KINDS
                .iter()
                .find(|known| **known == k.as_str())
                .ok_or_else(|| {
                    setting(format!(
                        "unknown kind `{k}` in `kinds`; kinds are {}",
                        KINDS.join(", ")
                    ))
                })?;
            set.insert(*known);
        }
        Some(set)
    };
    let max_size = c.max_size.map(|s| s.as_u64());
    if max_size == Some(0) {
        return Err(setting("`max_size` must be more than 0".into()));
    }
    let spool_bytes = c.spool_size.unwrap_or(DEFAULT_SPOOL).as_u64();
    if spool_bytes < crate::outputs::spool::MIN_BYTES {
        return Err(setting(format!(
            "`spool_size` must be at least {}",
            ByteSize(crate::outputs::spool::MIN_BYTES)
        )));
    }
    Ok(OutputSpec {
        name,
        format: c.format.unwrap_or(default_format),
        filter: Filter {
            kinds,
            min_severity: c.min_severity.unwrap_or(Severity::Info),
        },
        max_size,
        max_files: c.max_files.unwrap_or(DEFAULT_MAX_FILES),
        spool_bytes,
        tls: TlsSettings {
            ca: c.ca.clone(),
            cert: c.cert.clone(),
            key: c.key.clone(),
        },
        http: HttpSettings {
            body,
            token: c.token.clone(),
            index: c.index.clone(),
            batch_events,
        },
        facility: c.facility.unwrap_or_default(),
        destination,
    })
}

/// A name made from the URL: `stdout`, `file-events.json`,
/// `syslog-tcp-siem.example-514`, `https-es.example-9200`.
fn default_name(d: &Destination) -> String {
    let raw = match d {
        Destination::Stdout => "stdout".to_string(),
        Destination::File(p) => format!(
            "file-{}",
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        Destination::Syslog(SyslogTarget::Unix(p)) => format!("syslog-{}", p.display()),
        Destination::Syslog(SyslogTarget::Udp(h, p)) => format!("syslog-udp-{h}-{p}"),
        Destination::Syslog(SyslogTarget::Tcp(h, p)) => format!("syslog-tcp-{h}-{p}"),
        Destination::Syslog(SyslogTarget::Tls(h, p)) => format!("syslog-tls-{h}-{p}"),
        Destination::Http(u) => format!(
            "{}-{}-{}",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or_default()
        ),
    };
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    cleaned.trim_matches(|c| c == '_' || c == '.').to_string()
}

/// The spool directory of `name` under the state dir.
pub fn spool_dir(state: &Path, name: &str) -> PathBuf {
    state.join("spool").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(toml_text: &str) -> Result<OutputSpec, OutputConfigError> {
        #[derive(Deserialize)]
        struct Wrap {
            output: Vec<OutputConfig>,
        }
        let w: Wrap = toml::from_str(toml_text).unwrap();
        resolve(&w.output, Format::Native).map(|mut v| v.remove(0))
    }

    #[test]
    fn urls() {
        assert_eq!(parse_destination("-"), Ok(Destination::Stdout));
        assert_eq!(
            parse_destination("/var/log/s.json"),
            Ok(Destination::File("/var/log/s.json".into()))
        );
        assert_eq!(
            parse_destination("file:///var/log/s.json"),
            Ok(Destination::File("/var/log/s.json".into()))
        );
        assert_eq!(
            parse_destination("syslog:///dev/log"),
            Ok(Destination::Syslog(SyslogTarget::Unix("/dev/log".into())))
        );
        assert_eq!(
            parse_destination("syslog+tcp://siem.example:1514"),
            Ok(Destination::Syslog(SyslogTarget::Tcp(
                "siem.example".into(),
                1514
            )))
        );
        assert_eq!(
            parse_destination("syslog+tls://[::1]"),
            Ok(Destination::Syslog(SyslogTarget::Tls("::1".into(), 6514)))
        );
        assert_eq!(
            parse_destination("syslog+udp://10.0.0.1"),
            Ok(Destination::Syslog(SyslogTarget::Udp(
                "10.0.0.1".into(),
                514
            )))
        );
        assert!(matches!(
            parse_destination("https://splunk:8088/services/collector/event"),
            Ok(Destination::Http(_))
        ));
        for (bad, says) in [
            ("kafka://broker:9092", "unknown scheme `kafka`"),
            ("syslog://siem:514", "local socket"),
            ("syslog+tcp://", "needs a host"),
            ("syslog+tcp://h:514/x", "takes no path"),
            ("file://host/x", "names no host"),
            ("https://u:p@h/", "carries credentials"),
            ("syslog+tls://u:p@h:6514", "carries credentials"),
            ("", "empty"),
        ] {
            let err = parse_destination(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        // The credentials themselves are never repeated, even in a URL
        // that does not parse.
        for (bad, shown) in [
            (
                "https://ana:hunter2-pass@siem.example/x",
                "https://…@siem.example/x",
            ),
            ("https://tok-0000@h:notaport/", "https://…@h:notaport/"),
            ("syslog+tcp://ana:a@b@h:514", "syslog+tcp://…@h:514"),
        ] {
            let err = parse_destination(bad).unwrap_err().to_string();
            assert!(err.contains(shown), "{err}");
            assert!(
                !err.contains("hunter2") && !err.contains("tok-0000") && !err.contains("ana"),
                "{err}"
            );
        }
    }

    #[test]
    fn defaults_and_names() {
        let specs = resolve(&[], Format::Ocsf).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].destination, Destination::Stdout);
        assert_eq!(specs[0].name, "stdout");
        assert_eq!(specs[0].format, Format::Ocsf);
        let s = one("[[output]]\nurl = \"syslog+tcp://127.0.0.1:1514\"\n").unwrap();
        assert_eq!(s.name, "syslog-tcp-127.0.0.1-1514");
        assert_eq!(s.spool_bytes, 256 * 1024 * 1024);
        assert_eq!(s.facility, Facility::Authpriv);
        let s = one("[[output]]\nurl = \"syslog:///dev/log\"\n").unwrap();
        assert_eq!(s.name, "syslog-_dev_log");
        let s = one(
            "[[output]]\nurl = \"/var/log/secretmon/events.json\"\nmax_size = \"10 MiB\"\nmax_files = 3\n",
        )
        .unwrap();
        assert_eq!(s.name, "file-events.json");
        assert_eq!(s.max_size, Some(10 * 1024 * 1024));
        assert_eq!(s.max_files, 3);
    }

    #[test]
    fn filters() {
        let s = one(
            "[[output]]\nurl = \"-\"\nkinds = [\"finding\", \"agent\"]\nmin_severity = \"medium\"\n",
        )
        .unwrap();
        assert!(s.filter.accepts("finding", Severity::High));
        assert!(!s.filter.accepts("finding", Severity::Low));
        assert!(!s.filter.accepts("secret_read", Severity::High));
        let everything = one("[[output]]\nurl = \"-\"\n").unwrap();
        assert!(everything.filter.accepts("secret_read", Severity::Info));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            (
                "[[output]]\nurl = \"-\"\nkinds = [\"secret_reads\"]\n",
                "unknown kind `secret_reads`",
            ),
            (
                "[[output]]\nurl = \"syslog+tcp://h\"\nmax_size = \"1MiB\"\n",
                "`max_size` applies to file outputs only",
            ),
            (
                "[[output]]\nurl = \"syslog+tcp://h\"\nca = \"/ca.pem\"\n",
                "`ca` applies to syslog+tls:// and https:// outputs only",
            ),
            (
                "[[output]]\nurl = \"https://h/\"\ncert = \"/c.pem\"\n",
                "`cert` and `key` go together",
            ),
            (
                "[[output]]\nurl = \"https://h/\"\nbody = \"splunk_hec\"\n",
                "needs the HEC `token`",
            ),
            (
                "[[output]]\nurl = \"-\"\nfacility = \"auth\"\n",
                "`facility` applies to syslog outputs only",
            ),
            (
                "[[output]]\nurl = \"-\"\nname = \"../x\"\n",
                "a name is letters",
            ),
            (
                "[[output]]\nurl = \"syslog+tcp://h\"\nspool_size = \"1KiB\"\n",
                "`spool_size` must be at least",
            ),
            (
                "[[output]]\nurl = \"syslog+tcp://h\"\n[[output]]\nurl = \"syslog+tcp://h:514\"\n",
                "two outputs have this name",
            ),
        ] {
            let err = one(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrap {
            output: Vec<OutputConfig>,
        }
        let err = toml::from_str::<Wrap>("[[output]]\nurl = \"-\"\nfromat = \"ocsf\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fromat"), "{err}");
    }

    #[test]
    fn credentials_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hec.token");
        std::fs::write(&file, "hec-token-0000\n").unwrap();
        let c = Credential(format!("file:{}", file.display()));
        assert_eq!(c.value().unwrap(), "hec-token-0000");
        assert_eq!(format!("{c:?}"), "Credential(…)");
        let inline = Credential("inline-token-1111".into());
        assert_eq!(inline.value().unwrap(), "inline-token-1111");
        let s = one("[[output]]\nurl = \"https://h/\"\nbody = \"splunk_hec\"\ntoken = \"inline-token-1111\"\n").unwrap();
        assert!(!format!("{s:?}").contains("inline-token-1111"));
        let missing = Credential("file:/no/such/token".into());
        assert!(
            missing
                .value()
                .unwrap_err()
                .to_string()
                .contains("/no/such/token")
        );
    }
}
