//! The files the agent trusts: its state dir and what it keeps there (the
//! ledger, the fingerprint key), its `--output`, its config, policy and
//! key files. Another user who can write one of them, or a directory above
//! it, could make root follow a planted link (and chmod or append to a file
//! of their choice) or feed it a key or a policy of theirs. So, as sshd's
//! StrictModes does, each of them and every directory on the way to it
//! must be owned by root or the agent's user and not writable by its group
//! or others. A sticky directory (`/tmp`) is allowed above: there nobody
//! but an entry's owner can rename or remove it. Files are opened with
//! `O_NOFOLLOW`, created with `O_EXCL` and their final mode, and read only
//! when they are regular files no larger than their kind may be, so that
//! `/dev/zero` or a FIFO neither fills memory nor hangs the agent.

use std::{
    ffi::OsString,
    fmt,
    fs::{self, File, Metadata, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
};

use zeroize::Zeroizing;

/// Symbolic links followed while resolving one path, as the kernel allows.
const MAX_LINKS: usize = 40;
/// Mode bits that let the group or others write.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// Mode bits that let the group or others do anything.
const GROUP_OTHER_ANY: u32 = 0o077;
const STICKY: u32 = 0o1000;

/// What a file may be: how large, and whether others may read it.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// As the error names it: "a config file".
    pub what: &'static str,
    pub max_bytes: u64,
    /// No access at all for the group or others (a key).
    pub private: bool,
}

pub const CONFIG: Kind = Kind {
    what: "a config file",
    max_bytes: 1024 * 1024,
    private: false,
};
pub const POLICY: Kind = Kind {
    what: "a policy",
    max_bytes: 1024 * 1024,
    private: false,
};
pub const KEY: Kind = Kind {
    what: "a key file",
    max_bytes: 4096,
    private: true,
};

/// Why a path is refused.
#[derive(Debug)]
pub enum Why {
    Io(io::Error),
    Symlink,
    NotOwned { uid: u32, euid: u32 },
    Writable { mode: u32 },
    Exposed { mode: u32 },
    NotRegular(&'static str),
    TooBig { kind: Kind },
    TooManyLinks,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => f.write_str(&crate::errors::error_text(e)),
            Self::Symlink => f.write_str("a symbolic link; refused"),
            Self::NotOwned { uid, euid } if *euid == 0 => {
                write!(f, "owned by uid {uid}, not root; refused")
            }
            Self::NotOwned { uid, euid } => {
                write!(
                    f,
                    "owned by uid {uid}, neither root nor uid {euid}; refused"
                )
            }
            Self::Writable { mode } => write!(
                f,
                "writable by its group or others (mode {:04o}); refused",
                mode & 0o7777
            ),
            Self::Exposed { mode } => write!(
                f,
                "open to its group or others (mode {:04o}); refused: chmod 600 it",
                mode & 0o7777
            ),
            Self::NotRegular(what) => write!(f, "not a regular file but {what}; refused"),
            Self::TooBig { kind } => write!(
                f,
                "larger than {} bytes, the most {} may be; refused",
                kind.max_bytes, kind.what
            ),
            Self::TooManyLinks => f.write_str("too many levels of symbolic links; refused"),
        }
    }
}

/// A refused path: `at` is the directory above it that is the problem,
/// when it is not the path itself.
#[derive(Debug)]
pub struct TrustError {
    pub at: Option<PathBuf>,
    pub why: Why,
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(dir) => write!(f, "{}: {}", dir.display(), self.why),
            None => self.why.fmt(f),
        }
    }
}

impl std::error::Error for TrustError {}

impl From<io::Error> for TrustError {
    fn from(e: io::Error) -> Self {
        Self::here(Why::Io(e))
    }
}

fn not_a_directory() -> Why {
    Why::Io(io::Error::from_raw_os_error(libc::ENOTDIR))
}

impl TrustError {
    fn here(why: Why) -> Self {
        Self { at: None, why }
    }

    /// The file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(&self.why, Why::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }

    /// This user may not look: the path is there, or may be.
    pub fn is_denied(&self) -> bool {
        matches!(&self.why, Why::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// A permission or a filesystem said no, as opposed to a refusal: the
    /// caller may fall back (a one-time key where the state dir cannot be
    /// written).
    pub fn is_io(&self) -> bool {
        matches!(self.why, Why::Io(_))
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn owner_ok(meta: &Metadata) -> Result<(), Why> {
    let (uid, euid) = (meta.uid(), euid());
    if uid == 0 || uid == euid {
        Ok(())
    } else {
        Err(Why::NotOwned { uid, euid })
    }
}

/// A directory on the way: trusted owner, and nobody else can write it
/// unless it is sticky.
fn check_passage(meta: &Metadata) -> Result<(), Why> {
    owner_ok(meta)?;
    let mode = meta.mode();
    if mode & GROUP_OTHER_WRITE != 0 && mode & STICKY == 0 {
        return Err(Why::Writable { mode });
    }
    Ok(())
}

/// A file (or the state dir itself): trusted owner, nobody else can write
/// it, and with `private` nobody else can read it either.
fn check_own(meta: &Metadata, private: bool) -> Result<(), Why> {
    owner_ok(meta)?;
    let mode = meta.mode();
    if mode & GROUP_OTHER_WRITE != 0 {
        return Err(Why::Writable { mode });
    }
    if private && mode & GROUP_OTHER_ANY != 0 {
        return Err(Why::Exposed { mode });
    }
    Ok(())
}

fn file_kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("a symbolic link")
    }
}

/// `path` resolved as the kernel would, with every directory passed
/// through (and every link followed) checked. Returns the path without
/// links and what its last component is, `None` when it does not exist
/// (its directory does). `follow_last`: a link as the last component is
/// followed when its owner is trusted; otherwise it is refused.
fn resolve(path: &Path, follow_last: bool) -> Result<(PathBuf, Option<Metadata>), TrustError> {
    let abs = std::path::absolute(path).map_err(|e| TrustError::here(Why::Io(e)))?;
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, &abs);
    let mut at = PathBuf::from("/");
    let root = fs::symlink_metadata(&at).map_err(|e| TrustError::here(Why::Io(e)))?;
    check_passage(&root).map_err(|why| TrustError {
        at: Some(at.clone()),
        why,
    })?;
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        if name == "/" {
            at = PathBuf::from("/");
            continue;
        }
        let next = at.join(&name);
        let last = todo.is_empty();
        let blame = |why: Why| TrustError {
            // A missing part says enough by itself.
            at: (!last && !matches!(&why, Why::Io(e) if e.kind() == io::ErrorKind::NotFound))
                .then(|| next.clone()),
            why,
        };
        let meta = match fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if last && e.kind() == io::ErrorKind::NotFound => return Ok((next, None)),
            Err(e) => return Err(blame(Why::Io(e))),
        };
        if meta.file_type().is_symlink() {
            if last && !follow_last {
                return Err(blame(Why::Symlink));
            }
            owner_ok(&meta).map_err(blame)?;
            links += 1;
            if links > MAX_LINKS {
                return Err(blame(Why::TooManyLinks));
            }
            let target = fs::read_link(&next).map_err(|e| blame(Why::Io(e)))?;
            push_components(&mut todo, &target);
            continue;
        }
        if meta.is_dir() {
            check_passage(&meta).map_err(blame)?;
        } else if !last {
            return Err(blame(not_a_directory()));
        }
        at = next;
        if last {
            return Ok((at, Some(meta)));
        }
    }
    // The path was `/` or ended in `..`: a directory, checked on the way.
    let meta = fs::symlink_metadata(&at).map_err(|e| TrustError::here(Why::Io(e)))?;
    Ok((at, Some(meta)))
}

/// Push `path`'s components onto `todo` so that they pop in order; an
/// absolute path starts over at `/`.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some("/".into()),
            Component::ParentDir => Some("..".into()),
            Component::Normal(n) => Some(n.to_os_string()),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// The state dir: made 0700 where missing (and its missing parents), and
/// checked like every directory above it; nobody but root or this user
/// may write it, sticky or not. Returns it without symbolic links.
pub fn state_dir(dir: &Path) -> Result<PathBuf, TrustError> {
    let (resolved, meta) = resolve(dir, true).or_else(|e| {
        // A parent is missing too: make it first.
        match dir.parent() {
            Some(parent) if e.is_not_found() && !parent.as_os_str().is_empty() => {
                state_dir(parent)?;
                resolve(dir, true)
            }
            _ => Err(e),
        }
    })?;
    let meta = match meta {
        Some(m) => m,
        None => {
            match fs::DirBuilder::new().mode(0o700).create(&resolved) {
                // Made meanwhile by someone who can write a trusted dir.
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(TrustError::here(Why::Io(e)));
                }
                _ => {}
            }
            fs::symlink_metadata(&resolved).map_err(|e| TrustError::here(Why::Io(e)))?
        }
    };
    if !meta.is_dir() {
        return Err(TrustError::here(not_a_directory()));
    }
    check_own(&meta, false).map_err(TrustError::here)?;
    Ok(resolved)
}

/// A state dir that must exist already (`report`), checked as
/// [`state_dir`] does.
pub fn existing_state_dir(dir: &Path) -> Result<PathBuf, TrustError> {
    let (resolved, meta) = resolve(dir, true)?;
    let meta =
        meta.ok_or_else(|| TrustError::here(Why::Io(io::Error::from(io::ErrorKind::NotFound))))?;
    if !meta.is_dir() {
        return Err(TrustError::here(not_a_directory()));
    }
    check_own(&meta, false).map_err(TrustError::here)?;
    Ok(resolved)
}

/// A file of the agent's own in a trusted dir (the ledger and the files
/// SQLite keeps beside it), if it exists: not a link, a regular file,
/// owned by root or this user, writable by nobody else.
pub fn check_existing(path: &Path) -> Result<Option<Metadata>, TrustError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrustError::here(Why::Io(e))),
    };
    if meta.file_type().is_symlink() {
        return Err(TrustError::here(Why::Symlink));
    }
    if let Some(what) = file_kind(&meta) {
        return Err(TrustError::here(Why::NotRegular(what)));
    }
    check_own(&meta, false).map_err(TrustError::here)?;
    Ok(Some(meta))
}

/// Create `path` (in a trusted dir) with `mode` from the start, for
/// appending, failing if anything is there, a link included.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `path` (in a trusted dir): made 0600 when missing, else checked as
/// [`check_existing`] does.
pub fn ensure_private_file(path: &Path) -> Result<(), TrustError> {
    match create_new(path, 0o600) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_existing(path).map(drop),
        Err(e) => Err(TrustError::here(Why::Io(e))),
    }
}

/// The `--output` file, for appending: made 0600 when missing; an
/// existing one must be a regular file of root's or this user's that
/// nobody else can write, and not a link; every directory above it is
/// checked.
pub fn open_append(path: &Path) -> Result<File, TrustError> {
    let (resolved, _) = resolve(path, false)?;
    let file = match create_new(&resolved, 0o600) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
            .append(true)
            // A FIFO without a reader fails at once instead of blocking;
            // it is refused below anyway.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&resolved),
        other => other,
    }
    .map_err(|e| TrustError::here(open_why(e)))?;
    let meta = file.metadata().map_err(|e| TrustError::here(Why::Io(e)))?;
    if let Some(what) = file_kind(&meta) {
        return Err(TrustError::here(Why::NotRegular(what)));
    }
    check_own(&meta, false).map_err(TrustError::here)?;
    Ok(file)
}

/// A config, policy or key file given by path: every directory on the way
/// and every link followed is checked, the file must be a regular file no
/// larger than `kind` allows, owned by root or this user and writable by
/// nobody else. Returns its bytes, wiped when dropped.
pub fn read_trusted(path: &Path, kind: Kind) -> Result<Zeroizing<Vec<u8>>, TrustError> {
    let (resolved, _) = resolve(path, true)?;
    read_open(&resolved, kind)
}

/// A file of the agent's own in a trusted dir (the host key), not
/// following a link; `None` when it does not exist.
pub fn read_in(path: &Path, kind: Kind) -> Result<Option<Zeroizing<Vec<u8>>>, TrustError> {
    match read_open(path, kind) {
        Err(e) if e.is_not_found() => Ok(None),
        other => other.map(Some),
    }
}

fn read_open(path: &Path, kind: Kind) -> Result<Zeroizing<Vec<u8>>, TrustError> {
    let file = OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO opens at once (to be refused) instead of
        // waiting for a writer.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| TrustError::here(open_why(e)))?;
    let meta = file.metadata().map_err(|e| TrustError::here(Why::Io(e)))?;
    if let Some(what) = file_kind(&meta) {
        return Err(TrustError::here(Why::NotRegular(what)));
    }
    check_own(&meta, kind.private).map_err(TrustError::here)?;
    if meta.len() > kind.max_bytes {
        return Err(TrustError::here(Why::TooBig { kind }));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    (&file)
        .take(kind.max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TrustError::here(Why::Io(e)))?;
    // It grew since the fstat.
    if bytes.len() as u64 > kind.max_bytes {
        return Err(TrustError::here(Why::TooBig { kind }));
    }
    Ok(bytes)
}

/// `O_NOFOLLOW` on a link fails with `ELOOP`: say it is a link.
fn open_why(e: io::Error) -> Why {
    if e.raw_os_error() == Some(libc::ELOOP) {
        Why::Symlink
    } else {
        Why::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo").arg(path).status();
        assert!(made.unwrap().success());
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A private temp dir (0700) to work in.
    fn tmp() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o700);
        dir
    }

    #[test]
    fn reads_a_regular_file_within_its_cap() {
        let dir = tmp();
        let path = dir.path().join("c.toml");
        fs::write(&path, "a = 1\n").unwrap();
        chmod(&path, 0o644);
        assert_eq!(&read_trusted(&path, CONFIG).unwrap()[..], b"a = 1\n");
        // Through a link of ours too (a ConfigMap's `..data` layout).
        let link = dir.path().join("link.toml");
        symlink("c.toml", &link).unwrap();
        assert_eq!(&read_trusted(&link, CONFIG).unwrap()[..], b"a = 1\n");
    }

    #[test]
    fn writable_files_and_directories_are_refused() {
        let dir = tmp();
        let path = dir.path().join("c.toml");
        fs::write(&path, "a = 1\n").unwrap();
        chmod(&path, 0o666);
        let err = read_trusted(&path, CONFIG).unwrap_err().to_string();
        assert_eq!(err, "writable by its group or others (mode 0666); refused");
        chmod(&path, 0o600);
        chmod(dir.path(), 0o777);
        let err = read_trusted(&path, CONFIG).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: writable by its group or others (mode 0777); refused",
                dir.path().display()
            )
        );
        // Sticky, like /tmp: nobody else can swap what is in it.
        chmod(dir.path(), 0o1777);
        assert!(read_trusted(&path, CONFIG).is_ok());
    }

    #[test]
    fn special_and_huge_files_are_refused_without_reading_them() {
        let err = read_trusted(Path::new("/dev/zero"), KEY)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a regular file but a character device"),
            "{err}"
        );
        let dir = tmp();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let err = read_trusted(&fifo, POLICY).unwrap_err().to_string();
        assert!(err.contains("not a regular file but a FIFO"), "{err}");
        let huge = dir.path().join("huge");
        File::create(&huge).unwrap().set_len(1 << 40).unwrap();
        let err = read_trusted(&huge, CONFIG).unwrap_err().to_string();
        assert_eq!(
            err,
            "larger than 1048576 bytes, the most a config file may be; refused"
        );
    }

    #[test]
    fn keys_must_be_private() {
        let dir = tmp();
        let key = dir.path().join("k");
        fs::write(&key, [7u8; 32]).unwrap();
        chmod(&key, 0o640);
        let err = read_in(&key, KEY).unwrap_err().to_string();
        assert!(
            err.starts_with("open to its group or others (mode 0640)"),
            "{err}"
        );
        chmod(&key, 0o600);
        assert_eq!(read_in(&key, KEY).unwrap().unwrap().len(), 32);
        assert!(read_in(&dir.path().join("none"), KEY).unwrap().is_none());
    }

    #[test]
    fn links_are_not_followed_for_files_of_its_own() {
        let dir = tmp();
        let victim = dir.path().join("victim");
        fs::write(&victim, "x").unwrap();
        let link = dir.path().join("ledger.db");
        symlink(&victim, &link).unwrap();
        let err = ensure_private_file(&link).unwrap_err().to_string();
        assert_eq!(err, "a symbolic link; refused");
        let err = read_in(&link, KEY).unwrap_err().to_string();
        assert_eq!(err, "a symbolic link; refused");
        let err = open_append(&link).unwrap_err().to_string();
        assert_eq!(err, "a symbolic link; refused");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "x");
    }

    #[test]
    fn state_dirs_are_made_private_and_checked() {
        let dir = tmp();
        let state = dir.path().join("a/b/state");
        let made = state_dir(&state).unwrap();
        assert_eq!(made, state);
        let mode = fs::metadata(&state).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        chmod(&state, 0o1777);
        let err = state_dir(&state).unwrap_err().to_string();
        assert_eq!(err, "writable by its group or others (mode 1777); refused");
        chmod(&state, 0o755);
        assert!(existing_state_dir(&state).is_ok());
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(state_dir(&file.join("state")).is_err());
    }

    #[test]
    fn output_is_created_private_and_appended() {
        let dir = tmp();
        let out = dir.path().join("events.jsonl");
        {
            use std::io::Write as _;
            let mut f = open_append(&out).unwrap();
            f.write_all(b"one\n").unwrap();
            let mut f = open_append(&out).unwrap();
            f.write_all(b"two\n").unwrap();
        }
        assert_eq!(fs::read_to_string(&out).unwrap(), "one\ntwo\n");
        assert_eq!(fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        assert!(open_append(&fifo).is_err(), "a FIFO without a reader");
    }

    #[test]
    fn link_loops_end() {
        let dir = tmp();
        let a = dir.path().join("a");
        symlink("b", &a).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = read_trusted(&a, CONFIG).unwrap_err().to_string();
        assert!(err.contains("too many levels of symbolic links"), "{err}");
    }
}
