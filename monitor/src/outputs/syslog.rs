//! Syslog: RFC 5424 messages whose MSG is one JSON event, over a local
//! datagram socket, UDP, or TCP and TLS with RFC 6587 octet counting.

use std::{
    io,
    net::{TcpStream, ToSocketAddrs as _, UdpSocket},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use super::{Record, SendError, config::SyslogTarget};
use crate::event::Severity;

const APP_NAME: &str = "secretmon";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The RFC 5424 severity of an event's.
fn severity_code(s: Severity) -> u8 {
    match s {
        Severity::Info => 6,
        Severity::Low => 5,
        Severity::Medium => 4,
        Severity::High => 3,
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`, with the
/// timestamp in microseconds (RFC 5424 allows six digits), the event's kind
/// as MSGID and no structured data.
pub fn message(record: &Record, facility: u8, procid: u32) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + u16::from(severity_code(record.severity));
    let time = record
        .time
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    format!(
        "<{pri}>1 {time} {} {APP_NAME} {procid} {} - {}",
        header_field(&record.host, 255),
        header_field(record.kind, 32),
        record.json
    )
    .into_bytes()
}

/// A header field: printable US-ASCII without spaces, at most `max`
/// characters, or `-` (NILVALUE) when nothing is left.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() { "-".into() } else { f }
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Self::Tcp(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }

    fn writer(&mut self) -> &mut dyn io::Write {
        match self {
            Self::Tcp(s) => s,
            Self::Tls(s) => s.as_mut(),
        }
    }

    /// A syslog receiver never sends: anything readable (its FIN, a TLS
    /// close_notify) means it has closed this connection, and what we
    /// would write now would be lost.
    fn closed_by_peer(&self) -> bool {
        let sock = self.socket();
        if sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let closed =
            !matches!(sock.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        closed || sock.set_nonblocking(false).is_err()
    }
}

pub struct SyslogSender {
    target: SyslogTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
    stream: Option<Stream>,
    udp: Option<UdpSocket>,
    unix: Option<UnixDatagram>,
}

impl SyslogSender {
    pub fn new(target: SyslogTarget, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            target,
            tls,
            stream: None,
            udp: None,
            unix: None,
        }
    }

    /// Send every message, in order; an error means some may not have
    /// arrived, and the batch is to be sent again.
    pub fn send(&mut self, messages: &[Vec<u8>]) -> Result<(), SendError> {
        match self.target.clone() {
            SyslogTarget::Unix(path) => self.send_unix(&path, messages),
            SyslogTarget::Udp(host, port) => self.send_udp(&host, port, messages),
            SyslogTarget::Tcp(host, port) | SyslogTarget::Tls(host, port) => {
                self.send_stream(&host, port, messages)
            }
        }
    }

    fn send_unix(&mut self, path: &PathBuf, messages: &[Vec<u8>]) -> Result<(), SendError> {
        let sock = match &self.unix {
            Some(s) => s,
            None => self
                .unix
                .insert(UnixDatagram::unbound().map_err(SendError::retry)?),
        };
        for m in messages {
            if let Err(e) = sock.send_to(m, path) {
                self.unix = None;
                return Err(SendError::retry(e));
            }
        }
        Ok(())
    }

    fn send_udp(&mut self, host: &str, port: u16, messages: &[Vec<u8>]) -> Result<(), SendError> {
        let sock = match &self.udp {
            Some(s) => s,
            None => {
                let addr = resolve(host, port)?;
                let local = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let s = UdpSocket::bind(local).map_err(SendError::retry)?;
                // Connected: an ICMP "port unreachable" comes back as an error.
                s.connect(addr).map_err(SendError::retry)?;
                self.udp.insert(s)
            }
        };
        for m in messages {
            if let Err(e) = sock.send(m) {
                self.udp = None;
                return Err(SendError::retry(e));
            }
        }
        Ok(())
    }

    fn send_stream(
        &mut self,
        host: &str,
        port: u16,
        messages: &[Vec<u8>],
    ) -> Result<(), SendError> {
        if self.stream.as_ref().is_some_and(Stream::closed_by_peer) {
            self.stream = None;
        }
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = self.connect(host, port)?;
                self.stream.insert(s)
            }
        };
        // Octet counting: `LEN SP MSG`, so a message may hold newlines.
        let mut framed = Vec::new();
        for m in messages {
            framed.extend_from_slice(m.len().to_string().as_bytes());
            framed.push(b' ');
            framed.extend_from_slice(m);
        }
        let w = stream.writer();
        if let Err(e) = w.write_all(&framed).and_then(|()| w.flush()) {
            self.stream = None;
            return Err(SendError::retry(e));
        }
        Ok(())
    }

    fn connect(&self, host: &str, port: u16) -> Result<Stream, SendError> {
        let addr = resolve(host, port)?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(SendError::retry)?;
        tcp.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(SendError::retry)?;
        tcp.set_nodelay(true).map_err(SendError::retry)?;
        let Some(config) = &self.tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| SendError::Retry(format!("`{host}` is not a TLS server name: {e}")))?;
        let conn = rustls::ClientConnection::new(config.clone(), name)
            .map_err(|e| SendError::Retry(format!("TLS: {e}")))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Handshake now, so a bad certificate is reported as such.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| SendError::Retry(format!("TLS handshake: {e}")))?;
        }
        Ok(Stream::Tls(Box::new(tls)))
    }
}

fn resolve(host: &str, port: u16) -> Result<std::net::SocketAddr, SendError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| SendError::Retry(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| SendError::Retry(format!("{host} has no address")))
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    #[test]
    fn rfc5424_header() {
        let r = Record {
            id: "0190".into(),
            kind: "secret_read",
            severity: Severity::Info,
            time: DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
            host: "web 1".into(),
            json: "{\"kind\":\"secret_read\"}".into(),
        };
        let m = String::from_utf8(message(&r, 10, 42)).unwrap();
        assert_eq!(
            m,
            "<86>1 2023-11-14T22:13:20.123456Z web1 secretmon 42 secret_read - {\"kind\":\"secret_read\"}"
        );
        let high = Record {
            severity: Severity::High,
            host: String::new(),
            ..r
        };
        let m = String::from_utf8(message(&high, 4, 1)).unwrap();
        assert!(
            m.starts_with("<35>1 2023-11-14T22:13:20.123456Z - secretmon 1 "),
            "{m}"
        );
    }
}
