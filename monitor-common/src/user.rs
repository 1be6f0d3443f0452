//! The agent's side of the wire format: records decoded into owned values,
//! and `aya::Pod` for the types the agent writes into maps and globals.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
    string::{String, ToString as _},
    vec::Vec,
};

use crate::{
    COMM_LEN, DeniedOpenEvent, ENV_NAMES_MAX, EnvironReadEvent, EventHeader, EventKind, ExecEvent,
    FileKey, ForkEvent, IoUringLayout, IoUringOpenEvent, KernelOffsets, NameFilter, NameRule,
    NameRuleOpenEvent, OpenEvent, VIA_IO_URING, VIA_SYSCALL, WalkedPath,
};

// SAFETY: all are #[repr(C)], made only of integers, and have no padding
// holes that could leak uninitialised bytes into a map.
unsafe impl aya::Pod for FileKey {}
unsafe impl aya::Pod for KernelOffsets {}
unsafe impl aya::Pod for IoUringLayout {}
unsafe impl aya::Pod for NameRule {}
unsafe impl aya::Pod for NameFilter {}
unsafe impl aya::Pod for crate::env_name::EnvFilter {}

/// How an open reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// `open`, `openat`, `openat2`, `creat`.
    Syscall,
    IoUring,
    /// `open_by_handle_at`, exec, the kernel itself: seen only by the LSM
    /// and fexit hooks.
    Other,
}

impl Via {
    pub fn from_raw(via: u32) -> Self {
        match via {
            VIA_SYSCALL => Self::Syscall,
            VIA_IO_URING => Self::IoUring,
            _ => Self::Other,
        }
    }

    /// As the event contract spells it (`access.via`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syscall => "syscall",
            Self::IoUring => "io_uring",
            Self::Other => "other",
        }
    }
}

/// A decoded open of a watched file.
#[derive(Debug, Clone)]
pub struct Open {
    pub header: EventHeader,
    pub key: FileKey,
    /// `file->f_flags`.
    pub flags: u32,
    pub via: Via,
}

/// A decoded exec.
#[derive(Debug, Clone)]
pub struct Exec {
    pub header: EventHeader,
    pub filename: Vec<u8>,
    /// argv, lossily decoded; may hold secrets until redacted.
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// Names of watched environment variables (never values).
    pub env_names: Vec<String>,
    pub env_truncated: bool,
}

/// A decoded name-rule match.
#[derive(Debug, Clone)]
pub struct NameRuleOpen {
    pub header: EventHeader,
    pub key: FileKey,
    pub flags: u32,
    /// The path in the opener's mount namespace, walked by the kernel.
    pub path: PathBuf,
    /// The walk stopped short or cut a name: `path` is not the whole path.
    pub truncated: bool,
    pub via: Via,
}

/// A decoded denied open.
#[derive(Debug, Clone)]
pub struct DeniedOpen {
    pub header: EventHeader,
    pub flags: u32,
    /// Positive errno.
    pub errno: i32,
    pub dfd: i32,
    pub filename: Vec<u8>,
    /// The directory a relative `filename` is relative to, walked by the
    /// kernel at the time of the open; `None` for an absolute one or when
    /// the walk fell short.
    pub base: Option<PathBuf>,
}

/// A decoded ring-buffer record.
#[derive(Debug, Clone)]
pub enum KernelEvent {
    Open(Open),
    Exec(Exec),
    DeniedOpen(DeniedOpen),
    EnvironRead {
        header: EventHeader,
        target_pid: u32,
    },
    IoUringOpen {
        header: EventHeader,
        opcode: u32,
    },
    NameRuleOpen(NameRuleOpen),
    Exit(EventHeader),
    /// `header` is the parent.
    Fork {
        header: EventHeader,
        child_pid: u32,
    },
}

/// Why a record was not decoded: a mismatched object, never trusted blindly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a {len}-byte record is too short for its header")]
    NoHeader { len: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("a {len}-byte record is too short for a {kind:?} event ({need} bytes)")]
    TooShort {
        kind: EventKind,
        len: usize,
        need: usize,
    },
}

impl KernelEvent {
    /// Who did it, and when.
    pub fn header(&self) -> &EventHeader {
        match self {
            Self::Open(Open { header, .. })
            | Self::Exec(Exec { header, .. })
            | Self::DeniedOpen(DeniedOpen { header, .. })
            | Self::EnvironRead { header, .. }
            | Self::IoUringOpen { header, .. }
            | Self::NameRuleOpen(NameRuleOpen { header, .. })
            | Self::Exit(header)
            | Self::Fork { header, .. } => header,
        }
    }

    /// Decode one ring-buffer record.
    pub fn decode(record: &[u8]) -> Result<Self, DecodeError> {
        let header: EventHeader =
            read_record(record).ok_or(DecodeError::NoHeader { len: record.len() })?;
        let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
        let body = |need: usize| DecodeError::TooShort {
            kind,
            len: record.len(),
            need,
        };
        macro_rules! record {
            ($t:ty) => {
                read_record::<$t>(record).ok_or(body(size_of::<$t>()))?
            };
        }
        Ok(match kind {
            EventKind::Open => {
                let ev = record!(OpenEvent);
                Self::Open(Open {
                    header: ev.header,
                    key: ev.data.key,
                    flags: ev.data.flags,
                    via: Via::from_raw(ev.data.via),
                })
            }
            EventKind::Exec => Self::Exec(exec(&record!(ExecEvent))),
            EventKind::DeniedOpen => {
                let ev = record!(DeniedOpenEvent);
                let d = &ev.data;
                let walked = d.base.depth > 0 && d.base.truncated == 0;
                Self::DeniedOpen(DeniedOpen {
                    header: ev.header,
                    flags: d.flags,
                    errno: -d.ret,
                    dfd: d.dfd,
                    filename: bounded(&d.filename, d.filename_len).to_vec(),
                    base: walked.then(|| joined(&d.base)),
                })
            }
            EventKind::NameRuleOpen => {
                let ev = record!(NameRuleOpenEvent);
                Self::NameRuleOpen(NameRuleOpen {
                    header: ev.header,
                    key: ev.data.key,
                    flags: ev.data.flags,
                    path: joined(&ev.data.path),
                    truncated: ev.data.path.truncated != 0,
                    via: Via::from_raw(ev.data.via),
                })
            }
            EventKind::IoUringOpen => {
                let ev = record!(IoUringOpenEvent);
                Self::IoUringOpen {
                    header: ev.header,
                    opcode: ev.data.opcode,
                }
            }
            EventKind::EnvironRead => {
                let ev = record!(EnvironReadEvent);
                Self::EnvironRead {
                    header: ev.header,
                    target_pid: ev.data.target_pid,
                }
            }
            EventKind::Exit => Self::Exit(header),
            EventKind::Fork => {
                let ev = record!(ForkEvent);
                Self::Fork {
                    header: ev.header,
                    child_pid: ev.data.child_pid,
                }
            }
        })
    }
}

fn exec(ev: &ExecEvent) -> Exec {
    let d = &ev.data;
    let argv = bounded(&d.args, d.args_len);
    let mut args: Vec<String> = argv
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // argv ends with a NUL, which leaves one empty piece.
    if argv.last() == Some(&0) {
        args.pop();
    }
    let env_count = (d.env_count as usize).min(ENV_NAMES_MAX);
    Exec {
        header: ev.header,
        filename: bounded(&d.filename, d.filename_len).to_vec(),
        args,
        args_truncated: d.args_truncated != 0,
        env_names: d.env_names[..env_count]
            .iter()
            .map(|n| nul_terminated(n))
            .collect(),
        env_truncated: d.env_truncated != 0,
    }
}

/// Copy a `T` out of a record that may be shorter than `T` or unaligned.
fn read_record<T: Copy>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, `read_unaligned` copes with any
    // alignment, and every `T` used here is a #[repr(C)] struct of integers
    // and byte arrays, for which any bit pattern is valid.
    Some(unsafe { record.as_ptr().cast::<T>().read_unaligned() })
}

/// `comm` up to its first NUL, lossily as UTF-8.
pub fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    nul_terminated(comm)
}

fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).to_string()
}

/// A kernel-walked path as an absolute path, outermost first.
fn joined(p: &WalkedPath) -> PathBuf {
    let depth = (p.depth as usize).min(p.components.len());
    let mut path = PathBuf::from("/");
    for c in p.components[..depth].iter().rev() {
        let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
        path.push(OsStr::from_bytes(&c[..end]));
    }
    path
}

/// The first `len` bytes of `buf`, never past its end.
fn bounded(buf: &[u8], len: u32) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

/// `s` NUL-padded to `N` bytes, as the kernel's fixed-size map keys hold
/// names: `None` when it is empty, holds a NUL or leaves no room for one.
pub fn padded<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() >= N || bytes.contains(&0) {
        return None;
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        ARGS_LEN, COMPONENT_LEN, DeniedOpenData, ENV_NAME_LEN, Event, ExecData, FILENAME_LEN,
        NameRuleOpenData, OpenData, PATH_COMPONENTS, abi::AT_FDCWD,
    };

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid: 42,
            tid: 43,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            loginuid: 1000,
            tty: 1,
            boot_ns: 5,
            start_ns: 1,
            cgroup_id: 1,
            lost_before: 0,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value in a test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn open_event() -> OpenEvent {
        Event {
            header: header(EventKind::Open),
            data: OpenData {
                key: FileKey {
                    dev: 0xfe00001,
                    ino: 77,
                },
                flags: 0,
                ret: 3,
                via: VIA_SYSCALL,
                _pad: 0,
            },
        }
    }

    #[test]
    fn decodes_open() {
        let ev = open_event();
        match KernelEvent::decode(&bytes_of(&ev)) {
            Ok(KernelEvent::Open(o)) => {
                assert_eq!(o.key, ev.data.key);
                assert_eq!(o.header.pid, 42);
                assert_eq!(o.via, Via::Syscall);
                assert_eq!(comm_str(&o.header.comm), "cat");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_exec_and_bounds_filename() {
        let mut ev = Event {
            header: header(EventKind::Exec),
            data: ExecData {
                old_pid: 42,
                filename_len: 9999,
                filename: [b'a'; FILENAME_LEN],
                args_len: 9999,
                args_truncated: 1,
                args: [b'x'; ARGS_LEN],
                env_count: 99,
                env_truncated: 0,
                env_names: [[0; ENV_NAME_LEN]; ENV_NAMES_MAX],
            },
        };
        ev.data.filename[..12].copy_from_slice(b"/usr/bin/cat");
        let Ok(KernelEvent::Exec(exec)) = KernelEvent::decode(&bytes_of(&ev)) else {
            panic!("not an exec");
        };
        assert_eq!(exec.filename.len(), FILENAME_LEN);
        assert_eq!(exec.args.len(), 1);
        assert!(exec.args_truncated);
        assert_eq!(exec.env_names.len(), ENV_NAMES_MAX);

        ev.data.filename_len = 12;
        ev.data.args[..13].copy_from_slice(b"cat\0-n\0file\0\0");
        ev.data.args_len = 12;
        ev.data.env_count = 1;
        ev.data.env_names[0][..12].copy_from_slice(b"GITHUB_TOKEN");
        let Ok(KernelEvent::Exec(exec)) = KernelEvent::decode(&bytes_of(&ev)) else {
            panic!("not an exec");
        };
        assert_eq!(exec.filename, b"/usr/bin/cat");
        assert_eq!(exec.args, ["cat", "-n", "file"]);
        assert_eq!(exec.env_names, ["GITHUB_TOKEN"]);
    }

    fn empty_path() -> WalkedPath {
        WalkedPath {
            depth: 0,
            truncated: 0,
            components: [[0; COMPONENT_LEN]; PATH_COMPONENTS],
        }
    }

    #[test]
    fn decodes_denied_open() {
        let mut ev = Event {
            header: header(EventKind::DeniedOpen),
            data: DeniedOpenData {
                flags: 0,
                ret: -13,
                dfd: AT_FDCWD,
                filename_len: 4,
                filename: [0; FILENAME_LEN],
                base: empty_path(),
            },
        };
        ev.data.filename[..4].copy_from_slice(b"/etc");
        let decoded = |ev: &DeniedOpenEvent| match KernelEvent::decode(&bytes_of(ev)) {
            Ok(KernelEvent::DeniedOpen(d)) => d,
            other => panic!("not a denied open: {other:?}"),
        };
        let d = decoded(&ev);
        assert_eq!(
            (d.errno, d.dfd, d.filename.as_slice()),
            (13, AT_FDCWD, &b"/etc"[..])
        );
        assert_eq!(d.base, None);
        ev.data.base.depth = 1;
        ev.data.base.components[0][..3].copy_from_slice(b"srv");
        assert_eq!(decoded(&ev).base, Some(PathBuf::from("/srv")));
        ev.data.base.truncated = 1;
        assert_eq!(decoded(&ev).base, None, "a cut walk is not trusted");
    }

    #[test]
    fn name_rule_paths_are_joined_outermost_first() {
        let mut ev = Event {
            header: header(EventKind::NameRuleOpen),
            data: NameRuleOpenData {
                key: FileKey { dev: 1, ino: 2 },
                flags: 0,
                ret: 3,
                rule: 0,
                via: VIA_IO_URING,
                path: empty_path(),
            },
        };
        ev.data.path.depth = 3;
        for (i, c) in ["credentials", ".aws", "ana"].iter().enumerate() {
            ev.data.path.components[i][..c.len()].copy_from_slice(c.as_bytes());
        }
        let Ok(KernelEvent::NameRuleOpen(n)) = KernelEvent::decode(&bytes_of(&ev)) else {
            panic!("not a name-rule open");
        };
        assert_eq!(n.path, PathBuf::from("/ana/.aws/credentials"));
        assert_eq!(n.via.as_str(), "io_uring");
        ev.data.path.depth = 99;
        assert!(
            KernelEvent::decode(&bytes_of(&ev)).is_ok(),
            "depth is bounded"
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let bytes = bytes_of(&open_event());
        assert_eq!(
            KernelEvent::decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            DecodeError::TooShort {
                kind: EventKind::Open,
                len: bytes.len() - 1,
                need: bytes.len()
            }
        );
        assert_eq!(
            KernelEvent::decode(&[0u8; 3]).unwrap_err(),
            DecodeError::NoHeader { len: 3 }
        );
        let mut unknown = header(EventKind::Exit);
        unknown.kind = 99;
        assert_eq!(
            KernelEvent::decode(&bytes_of(&unknown)).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
    }

    #[test]
    fn comm_without_nul_is_whole() {
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn map_keys_are_padded_and_bounded() {
        assert_eq!(&padded::<8>("AB").unwrap()[..3], b"AB\0");
        assert!(padded::<8>("12345678").is_none());
        assert!(padded::<8>("").is_none());
        assert!(padded::<8>("A\0B").is_none());
    }

    #[test]
    fn offsets_start_unset() {
        assert_eq!(KernelOffsets::UNSET.task_files, crate::NO_OFFSET);
        assert_eq!(KernelOffsets::UNSET.open_flags_open_flag, crate::NO_OFFSET);
    }

    #[test]
    fn every_program_has_a_distinct_name_and_index() {
        use crate::names::Program;
        for (i, p) in Program::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?} is out of order in ALL");
        }
        let mut names: Vec<&str> = Program::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Program::COUNT);
    }
}
