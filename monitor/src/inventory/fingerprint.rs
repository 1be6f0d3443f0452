//! Keyed fingerprints: HMAC-SHA256 of a file's bytes. A plain hash of a
//! low-entropy password could be brute-forced from the output; a keyed one
//! cannot without the key. The key is made once per host and kept 0600 in
//! the state dir, or comes from config so that a fleet's fingerprints match.

use std::{
    fmt, fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::settings::Settings;
use crate::secure_fs::{self, TrustError};

const KEY_FILE: &str = "fingerprint.key";
const KEY_LEN: usize = 32;
/// A fleet key shorter than this is too easy to guess.
const MIN_FLEET_KEY: usize = 16;
/// Hex digits of the MAC shown.
const SHOWN_HEX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("fleet_key_file {path}: {err}")]
    FleetFile { path: String, err: TrustError },
    #[error("the fleet key is shorter than {MIN_FLEET_KEY} bytes")]
    FleetTooShort,
    #[error("state dir {path}: {err}")]
    StateDir { path: String, err: TrustError },
    #[error("{path}: {err}")]
    HostKey { path: String, err: TrustError },
    #[error("{path}: not a {KEY_LEN}-byte key; remove it to make a new one")]
    HostKeyCorrupt { path: String },
}

impl KeyError {
    /// The state dir or the key is refused, as opposed to unwritable.
    fn is_refusal(&self) -> bool {
        matches!(self, Self::StateDir { err, .. } | Self::HostKey { err, .. } if !err.is_io())
    }
}

/// The HMAC key. Never printed; wiped when dropped.
/// Cloned, not loaded again, for each scanner of one agent: a one-time key
/// must be the same one throughout a run.
#[derive(Clone)]
pub struct Key(Zeroizing<Vec<u8>>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Where the key came from, to tell the user.
#[derive(Debug)]
pub enum KeySource {
    Fleet,
    Host(PathBuf),
    /// The state dir could not hold a key: this run's fingerprints match
    /// no other run's.
    Ephemeral(KeyError),
}

impl Key {
    /// The fleet key from `settings` if there is one, else this host's key
    /// in `state_dir` (made on first use), else a one-time key.
    pub fn load(settings: &Settings, state_dir: &Path) -> Result<(Self, KeySource), KeyError> {
        if let Some(path) = &settings.fleet_key_file {
            let bytes = secure_fs::read_trusted(path, secure_fs::KEY).map_err(|err| {
                KeyError::FleetFile {
                    path: path.display().to_string(),
                    err,
                }
            })?;
            return Self::fleet(Zeroizing::new(bytes.trim_ascii().to_vec()));
        }
        if let Some(fleet) = &settings.fleet_key {
            return Self::fleet(Zeroizing::new(fleet.0.as_bytes().to_vec()));
        }
        match host_key(state_dir) {
            Ok((key, path)) => Ok((key, KeySource::Host(path))),
            // A key or a dir another user could have written is refused,
            // never worked around.
            Err(e) if e.is_refusal() => Err(e),
            Err(e) => Ok((Self::random(), KeySource::Ephemeral(e))),
        }
    }

    fn fleet(key: Zeroizing<Vec<u8>>) -> Result<(Self, KeySource), KeyError> {
        if key.len() < MIN_FLEET_KEY {
            return Err(KeyError::FleetTooShort);
        }
        Ok((Self(key), KeySource::Fleet))
    }

    fn random() -> Self {
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        getrandom::fill(&mut key).expect("the kernel's random source is available");
        Self(key)
    }

    /// Names this key without revealing it: the fingerprint of a fixed
    /// label. The ledger keeps it to tell when the key changed, which
    /// changes every fingerprint without any secret changing.
    pub fn id(&self) -> String {
        self.fingerprint(b"secretmon fingerprint key id")
    }

    /// `hmac-sha256:` and the first 16 hex digits of the MAC of `bytes`.
    pub fn fingerprint(&self, bytes: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(bytes);
        let digest = mac.finalize().into_bytes();
        let hex = hex::encode(digest);
        format!("hmac-sha256:{}", &hex[..SHOWN_HEX])
    }
}

/// The host key at `<state_dir>/fingerprint.key`, made atomically when
/// missing so that concurrent runs agree on one key. The state dir and the
/// key are checked first (see [`secure_fs`]): a key another user could
/// have written or read is refused.
fn host_key(state_dir: &Path) -> Result<(Key, PathBuf), KeyError> {
    let shown = state_dir.join(KEY_FILE);
    let err = |err| KeyError::HostKey {
        path: shown.display().to_string(),
        err,
    };
    let dir = secure_fs::state_dir(state_dir).map_err(|err| KeyError::StateDir {
        path: state_dir.display().to_string(),
        err,
    })?;
    let path = dir.join(KEY_FILE);
    if let Some(bytes) = secure_fs::read_in(&path, secure_fs::KEY).map_err(err)? {
        if bytes.len() != KEY_LEN {
            return Err(KeyError::HostKeyCorrupt {
                path: path.display().to_string(),
            });
        }
        return Ok((Key(bytes), path));
    }
    let key = Key::random();
    let tmp = dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
    let written = secure_fs::create_new(&tmp, 0o600)
        .and_then(|mut f| {
            f.write_all(&key.0)?;
            f.sync_all()
        })
        // A hard link fails if another run made the key first.
        .and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok((key, path)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => host_key(state_dir),
        Err(e) => Err(err(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    #[test]
    fn host_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (a, src) = Key::load(&Settings::default(), &state).unwrap();
        assert!(matches!(src, KeySource::Host(_)), "{src:?}");
        let meta = fs::metadata(state.join(KEY_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        let (b, _) = Key::load(&Settings::default(), &state).unwrap();
        let fp = a.fingerprint(b"hunter2");
        assert_eq!(fp, b.fingerprint(b"hunter2"));
        assert!(
            fp.starts_with("hmac-sha256:") && fp.len() == 12 + SHOWN_HEX,
            "{fp}"
        );
        assert_ne!(fp, a.fingerprint(b"hunter3"));
        assert_eq!(
            fs::read_dir(&state).unwrap().count(),
            1,
            "no temp file left"
        );
        assert_eq!(format!("{a:?}"), "Key(<redacted>)");
        assert_eq!(a.id(), b.id(), "the same key, the same id");
        // A deleted key is made anew: another key, another id.
        fs::remove_file(state.join(KEY_FILE)).unwrap();
        let (c, _) = Key::load(&Settings::default(), &state).unwrap();
        assert_ne!(a.id(), c.id());
        assert_ne!(a.fingerprint(b"hunter2"), c.fingerprint(b"hunter2"));
    }

    #[test]
    fn fleet_keys_match_across_hosts_and_differ_from_host_keys() {
        let dir = tempfile::tempdir().unwrap();
        let fleet: Settings = toml::from_str("fleet_key = \"0123456789abcdef-fleet\"").unwrap();
        let (a, src) = Key::load(&fleet, &dir.path().join("a")).unwrap();
        assert!(matches!(src, KeySource::Fleet));
        let (b, _) = Key::load(&fleet, &dir.path().join("b")).unwrap();
        assert_eq!(a.fingerprint(b"x"), b.fingerprint(b"x"));
        // The fleet key never touches the state dir.
        assert!(!dir.path().join("a").exists());
        let (host, _) = Key::load(&Settings::default(), &dir.path().join("c")).unwrap();
        assert_ne!(a.fingerprint(b"x"), host.fingerprint(b"x"));

        let key_file = dir.path().join("fleet.key");
        fs::write(&key_file, "0123456789abcdef-fleet\n").unwrap();
        let from_file: Settings = toml::from_str(&format!(
            "fleet_key_file = {:?}",
            key_file.to_str().unwrap()
        ))
        .unwrap();
        // A key others can read protects nothing: refused, as ssh does.
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Key::load(&from_file, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("open to its group or others (mode 0644)"),
            "{err}"
        );
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
        let (c, _) = Key::load(&from_file, dir.path()).unwrap();
        assert_eq!(a.fingerprint(b"x"), c.fingerprint(b"x"));

        let short: Settings = toml::from_str("fleet_key = \"short\"").unwrap();
        let err = Key::load(&short, dir.path()).unwrap_err().to_string();
        assert!(!err.contains("short\""), "{err}");
    }

    #[test]
    fn planted_or_loosened_host_keys_are_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        let path = state.join(KEY_FILE);
        fs::write(&path, [b'k'; KEY_LEN]).unwrap();
        for mode in [0o666, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Key::load(&Settings::default(), &state)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("(mode {mode:04o}); refused")),
                "{err}"
            );
            assert_eq!(
                fs::metadata(&path).unwrap().mode() & 0o777,
                mode,
                "no chmod"
            );
        }
        fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("planted");
        fs::write(&elsewhere, [b'k'; KEY_LEN]).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = Key::load(&Settings::default(), &state)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("a symbolic link; refused"), "{err}");
        // A state dir others can write is refused as a whole.
        fs::remove_file(&path).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let err = Key::load(&Settings::default(), &state)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("writable by its group or others (mode 0777)"),
            "{err}"
        );
        assert!(!path.exists(), "no key made there");
    }

    #[test]
    fn unwritable_state_dir_gives_a_one_time_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let (_, src) = Key::load(&Settings::default(), &file.join("state")).unwrap();
        assert!(matches!(src, KeySource::Ephemeral(_)), "{src:?}");
    }
}
