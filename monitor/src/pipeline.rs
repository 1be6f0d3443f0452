//! One kernel record in, zero or more events out: process table upkeep,
//! attribution to a watched secret and an identity, and the JSON line.

use std::{io, num::NonZeroUsize};

use chrono::{DateTime, Utc};
use monitor_common::OpenEvent;

use crate::{
    event::{self, Access, Event, Host, Process, SecretRead},
    identity::user_identity,
    inventory::Inventory,
    probes::KernelEvent,
    process::ProcessTable,
    sink::Sink,
};

/// Ancestors listed on each event, parent first.
const MAX_ANCESTORS: usize = 5;

/// Converts the kernel's boot-time clock to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock nanoseconds at boot.
    boot_epoch_ns: i128,
}

impl Clock {
    pub fn now() -> io::Result<Self> {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
        let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
        let ns = |t: nix::sys::time::TimeSpec| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        Ok(Self {
            boot_epoch_ns: ns(real) - ns(boot),
        })
    }

    pub fn wall(&self, boot_ns: u64) -> DateTime<Utc> {
        let ns = self.boot_epoch_ns + i128::from(boot_ns);
        let secs = (ns.div_euclid(1_000_000_000)) as i64;
        let nanos = ns.rem_euclid(1_000_000_000) as u32;
        DateTime::from_timestamp(secs, nanos).unwrap_or_else(Utc::now)
    }
}

/// Counters for the stop message.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub records: u64,
    pub malformed: u64,
    pub secret_reads: u64,
}

pub struct Pipeline {
    pub inventory: Inventory,
    pub procs: ProcessTable,
    pub host: Host,
    pub trust_domain: String,
    pub clock: Clock,
    pub sink: Sink,
    pub stats: Stats,
}

impl Pipeline {
    pub fn new(
        inventory: Inventory,
        host: Host,
        trust_domain: String,
        sink: Sink,
    ) -> io::Result<Self> {
        Ok(Self {
            inventory,
            procs: ProcessTable::new(NonZeroUsize::new(65_536).expect("nonzero"), "/proc"),
            host,
            trust_domain,
            clock: Clock::now()?,
            sink,
            stats: Stats::default(),
        })
    }

    /// Handle one ring-buffer record.
    pub fn handle(&mut self, record: &[u8]) -> io::Result<()> {
        self.stats.records += 1;
        let Some(ev) = crate::probes::decode(record) else {
            self.stats.malformed += 1;
            return Ok(());
        };
        match ev {
            KernelEvent::Exec { header, filename } => {
                self.procs.on_exec(&header, &filename);
                Ok(())
            }
            KernelEvent::Fork { header, child_pid } => {
                self.procs.on_fork(&header, child_pid);
                Ok(())
            }
            KernelEvent::Exit(header) => {
                self.procs.on_exit(header.pid);
                Ok(())
            }
            KernelEvent::Open(open) => self.secret_read(&open),
        }
    }

    fn secret_read(&mut self, open: &OpenEvent) -> io::Result<()> {
        // A key the inventory no longer has (a race with a later update)
        // is not attributable: skip it rather than guess.
        let Some(file) = self.inventory.get(&open.key) else {
            self.stats.malformed += 1;
            return Ok(());
        };
        // The agent fingerprinting a rotated file is not a workload's use.
        if open.header.pid == std::process::id() {
            return Ok(());
        }
        let h = &open.header;
        let info = self.procs.observe(h);
        let user = self.procs.user_name(h.uid);
        let ancestors = self.procs.ancestors(info.ppid, MAX_ANCESTORS);
        let exe_for_id = info.exe.as_deref().unwrap_or(&info.comm);
        let identity = user_identity(
            &self.trust_domain,
            &self.host.name,
            &user,
            h.uid,
            exe_for_id,
        );
        let start_time = self
            .clock
            .wall(info.start_ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let body = SecretRead {
            process: Process {
                pid: info.pid,
                ppid: info.ppid,
                uid: info.uid,
                gid: info.gid,
                user,
                comm: info.comm,
                exe: info.exe,
                tty: info.tty,
                loginuid: info.loginuid,
                start_time,
                ancestors,
            },
            identity,
            secret: file.event_secret(),
            access: Access {
                op: "open",
                flags: event::open_flags(open.flags),
                result: "ok",
            },
        };
        self.stats.secret_reads += 1;
        let time = self.clock.wall(h.boot_ns);
        self.sink
            .emit(&Event::new("secret_read", time, &self.host, body))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use monitor_common::{EventHeader, EventKind, ExecEvent, FILENAME_LEN};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: the bytes of a plain #[repr(C)] value, in a test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind, pid: u32) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid,
            tid: pid,
            ppid: 1,
            uid: 0,
            gid: 0,
            loginuid: monitor_common::UNSET_LOGINUID,
            tty: 0,
            boot_ns: 1_000,
            start_ns: 500,
            cgroup_id: 1,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn exec_then_open_of_a_gone_process_is_attributed() {
        let secret = PathBuf::from("/srv/app/credentials");
        let record = crate::inventory::test_record(&secret, 77);
        let key = record.key;
        let out = Shared::default();
        let mut p = Pipeline::new(
            crate::inventory::Inventory::new(vec![record]),
            Host { name: "h".into() },
            "td".into(),
            Sink::to_writer(out.clone()),
        )
        .unwrap();
        // A pid that cannot exist, so /proc cannot help: only the exec event.
        let pid = u32::MAX - 1;
        let mut exec = ExecEvent {
            header: header(EventKind::Exec, pid),
            old_pid: pid,
            filename_len: 12,
            filename: [0; FILENAME_LEN],
        };
        exec.filename[..12].copy_from_slice(b"/usr/bin/cat");
        p.handle(&bytes_of(&exec)).unwrap();
        let open = OpenEvent {
            header: header(EventKind::Open, pid),
            key,
            flags: 0,
            ret: 3,
        };
        p.handle(&bytes_of(&open)).unwrap();
        p.handle(&bytes_of(&header(EventKind::Exit, pid))).unwrap();
        p.handle(&[1, 2, 3]).unwrap();
        p.sink.flush().unwrap();

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["kind"], "secret_read");
        assert_eq!(v["process"]["pid"], pid);
        assert_eq!(v["process"]["exe"], "/usr/bin/cat");
        assert_eq!(v["process"]["user"], "root");
        assert_eq!(v["identity"]["id"], "user:root:/usr/bin/cat");
        assert_eq!(v["secret"]["path"], secret.to_str().unwrap());
        assert_eq!(v["secret"]["fingerprint"], "hmac-sha256:0123456789abcdef");
        assert_eq!(v["secret"]["lifetime"], "unknown");
        assert_eq!(v["access"]["result"], "ok");
        assert_eq!(p.stats.malformed, 1);
        assert_eq!(p.stats.secret_reads, 1);
    }
}
