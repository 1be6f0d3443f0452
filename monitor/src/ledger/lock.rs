//! One agent per state dir: two agents on one ledger would each fire the
//! "once" findings and count reads from their own memory. The agent holds
//! an exclusive `flock` on `<state>/agent.lock` for as long as it runs,
//! with its pid written inside for the error the next one gives. The
//! kernel releases the lock when the process dies, `kill -9` included, so a
//! stale lock file never blocks a restart.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Read as _, Seek as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use super::LedgerError;

const FILE: &str = "agent.lock";

/// Held while the agent runs; released when dropped (or when it dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Take the lock of `state_dir` (made 0700 when missing), or say which
    /// agent holds it.
    pub fn acquire(state_dir: &Path) -> Result<Self, LedgerError> {
        let path = state_dir.join(FILE);
        let io_err = |err| LedgerError::Lock {
            path: path.display().to_string(),
            err,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LedgerError::Locked {
                    state_dir: state_dir.display().to_string(),
                    pid: holder(&mut file),
                });
            }
            Err(TryLockError::Error(err)) => return Err(io_err(err)),
        }
        write_pid(&mut file).map_err(io_err)?;
        Ok(Self { _file: file })
    }

    /// Where the lock of `state_dir` is.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()
}

/// The pid the holder wrote, if it did yet.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).unwrap();
        let err = StateLock::acquire(&state).unwrap_err().to_string();
        let pid = std::process::id().to_string();
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        assert!(err.contains(state.to_str().unwrap()), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        drop(first);
        // Released with its holder: the next one takes it.
        StateLock::acquire(&state).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, StateLock::path(dir.path())).unwrap();
        assert!(StateLock::acquire(dir.path()).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }
}
