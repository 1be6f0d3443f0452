//! Real receivers for the delivery tests, on loopback: Debian's rsyslogd
//! (TCP and mutual-TLS inputs, certificates made here), an HTTP server that
//! records what it is sent, and the OCSF schema validator.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback UDP port nobody listens on now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate,
/// as PEM files in `dir`.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    pub fn make(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "secretmon test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            "127.0.0.1",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            "secretmon-agent",
            vec!["secretmon-agent".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
        }
    }
}

/// Debian's rsyslogd with a plain TCP input, a TLS input that requires a
/// client certificate signed by the test CA, a UDP input and a local
/// datagram socket (as `/dev/log` is), each writing the MSG of what it
/// receives, one per line, to its own file.
pub struct Rsyslog {
    dir: PathBuf,
    pub tcp_port: u16,
    pub tls_port: u16,
    pub udp_port: u16,
    /// The local socket, in the test's directory.
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start(dir: &Path, certs: &Certs) -> Self {
        let mut r = Self {
            dir: dir.to_path_buf(),
            tcp_port: free_port(),
            tls_port: free_port(),
            udp_port: free_udp_port(),
            socket: dir.join("log.sock"),
            child: None,
        };
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let conf = format!(
            r#"global(workDirectory="{dir}/work" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp")
module(load="imudp")
module(load="imuxsock" SysSock.Use="off")
template(name="msg" type="string" string="%msg%\n")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="udp")
input(type="imuxsock" socket="{socket}" ruleset="unix" useSpecialParser="off"
      parseHostname="on")
ruleset(name="tcp") {{ action(type="omfile" file="{dir}/tcp.log" template="msg") }}
ruleset(name="tls") {{ action(type="omfile" file="{dir}/tls.log" template="msg") }}
ruleset(name="udp") {{ action(type="omfile" file="{dir}/udp.log" template="msg") }}
ruleset(name="unix") {{ action(type="omfile" file="{dir}/unix.log" template="msg") }}
"#,
            dir = dir.display(),
            ca = certs.ca.display(),
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
            tcp = r.tcp_port,
            tls = r.tls_port,
            udp = r.udp_port,
            socket = r.socket.display(),
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        r.resume();
        r
    }

    /// Start it (again), and wait until its stream inputs accept
    /// connections and its local socket exists.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "rsyslogd is running");
        // Its own messages go to a file: a pipe nobody reads would fill and
        // stop it.
        let own = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))
            .unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(own)
            .spawn()
            .expect("rsyslogd is installed (cargo xtask setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.tcp_port, self.tls_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    self.child = None;
                    panic!("rsyslogd exited ({status}): {}", self.own_messages());
                }
                assert!(Instant::now() < deadline, "rsyslogd does not listen");
                thread::sleep(Duration::from_millis(50));
            }
        }
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "rsyslogd made no socket");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it (SIGTERM) and wait until it is gone.
    pub fn pause(&mut self) {
        let mut child = self.child.take().expect("rsyslogd is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap();
    }

    /// What rsyslogd said about itself.
    pub fn own_messages(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
    }

    /// The messages received on `input` ("tcp", "tls", "udp" or "unix") so
    /// far.
    pub fn lines(&self, input: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(format!("{input}.log")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Wait until `pred` holds of what `input` received.
    pub fn wait_for(&self, input: &str, timeout: Duration, pred: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines(input);
            if pred(&lines) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslog {input} input: not there within {timeout:?}; received:\n{}\n\
                 rsyslogd said: {}",
                lines.join("\n"),
                self.own_messages()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("rsyslogd said: {}", self.own_messages());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request an [`HttpReceiver`] took.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP server on loopback that answers like Splunk HEC and
/// Elasticsearch's `_bulk`, after refusing the first `fail_first` requests
/// with 503, and records every request it accepted.
pub struct HttpReceiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpReceiver {
    pub fn start(fail_first: usize) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (server.clone(), received.clone());
        let thread = thread::spawn(move || {
            let mut refused = 0;
            for mut request in s.incoming_requests() {
                let mut body = String::new();
                std::io::Read::read_to_string(request.as_reader(), &mut body).unwrap();
                if refused < fail_first {
                    refused += 1;
                    let _ = request.respond(tiny_http::Response::empty(503));
                    continue;
                }
                let path = request.url().to_string();
                let answer = if path.ends_with("/_bulk") {
                    let items: Vec<String> = body
                        .lines()
                        .step_by(2)
                        .map(|_| r#"{"create":{"status":201}}"#.to_string())
                        .collect();
                    format!(
                        r#"{{"took":1,"errors":false,"items":[{}]}}"#,
                        items.join(",")
                    )
                } else {
                    r#"{"text":"Success","code":0}"#.to_string()
                };
                r.lock().unwrap().push(Received {
                    path,
                    headers: request
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body,
                });
                let _ = request.respond(tiny_http::Response::from_string(answer));
            }
        });
        Self {
            port,
            received,
            server,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Python that `cargo xtask setup` gave the OCSF schema package and
/// jsonschema (a virtualenv under the target dir).
fn ocsf_python() -> PathBuf {
    let python = std::env::var_os("SECRETMON_OCSF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/python3")
        });
    assert!(
        python.exists(),
        "no OCSF schema validator at {}: run `cargo xtask setup`",
        python.display()
    );
    python
}

/// Validate OCSF events (one JSON object per line) against the OCSF
/// schema with `tests/ocsf/validate.py`; fails the test with every
/// violation.
pub fn validate_ocsf(lines: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ocsf/validate.py");
    let out = Command::new(ocsf_python())
        .arg(script)
        .arg(&file)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "OCSF validation failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
