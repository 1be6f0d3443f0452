//! What the ledger records of a watched file until the inventory says it:
//! owner, mode and mtime from `stat`, a keyed fingerprint of its content,
//! and a lifetime guessed from its type. The inventory replaces
//! [`fingerprint_file`] and [`secret_facts`] with its own records; the key
//! file is the same (`fingerprint.key`, 32 bytes, 0600), so fingerprints
//! stay comparable across that change.

use std::{
    fs::{self, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

use chrono::DateTime;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::SecretFacts;
use crate::{secret::SecretType, watch::WatchedFile};

const KEY_FILE: &str = "fingerprint.key";
const KEY_LEN: usize = 32;
/// Hex digits of the MAC kept: enough to tell values apart, too few to
/// serve as a verifier of a guess.
const SHOWN_HEX: usize = 16;
/// Secret files are small; a larger one is fingerprinted on its start.
const MAX_BYTES: u64 = 1 << 20;

/// The HMAC key. Never printed.
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// This host's key in `state_dir`, made (atomically, 0600) on first use.
    pub fn load_or_create(state_dir: &Path) -> io::Result<Self> {
        let path = state_dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) if bytes.len() == KEY_LEN => return Ok(Self(bytes)),
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{}: not a {KEY_LEN}-byte key; remove it to make a new one",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut key = vec![0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(io::Error::other)?;
        // Written aside and linked into place, so that two agents starting
        // together agree on one key and nobody reads a half-written one.
        let tmp = state_dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        let linked = fs::hard_link(&tmp, &path);
        fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => Ok(Self(key)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load_or_create(state_dir),
            Err(e) => Err(e),
        }
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// `hmac-sha256:` and the first 16 hex digits of the MAC of `bytes`.
    pub fn fingerprint(&self, bytes: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(bytes);
        let hex = hex::encode(mac.finalize().into_bytes());
        format!("hmac-sha256:{}", &hex[..SHOWN_HEX])
    }
}

/// The keyed fingerprint of the file at `path`.
pub fn fingerprint_file(path: &Path, key: &Key) -> io::Result<String> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_BYTES)
        .read_to_end(&mut bytes)?;
    let fp = key.fingerprint(&bytes);
    // The value does not outlive the fingerprint.
    bytes.fill(0);
    Ok(fp)
}

/// What `stat` and the fingerprint say of a watched file. `None` when it
/// is gone; a file that cannot be read still has its stat facts.
pub fn secret_facts(file: &WatchedFile, key: &Key) -> Option<SecretFacts> {
    let meta = fs::metadata(&file.path).ok()?;
    let mtime = DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec() as u32);
    Some(SecretFacts {
        id: file.secret_id.clone(),
        path: file.path.to_string_lossy().into_owned(),
        secret_type: type_name(file.secret_type),
        fingerprint: fingerprint_file(&file.path, key).ok(),
        lifetime: Some(lifetime(file.secret_type).into()),
        hint: None,
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        mode: Some(meta.mode() & 0o7777),
        mtime,
        expires: None,
    })
}

fn type_name(t: SecretType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "generic".into())
}

/// Projected service-account tokens are rotated by the kubelet; every
/// other file the catalog knows is a static credential until the
/// inventory says otherwise.
fn lifetime(t: SecretType) -> &'static str {
    match t {
        SecretType::K8sSaToken => "dynamic",
        _ => "static",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::watch::WatchList;

    #[test]
    fn the_key_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Key::load_or_create(dir.path()).unwrap();
        let b = Key::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(b"x"), b.fingerprint(b"x"));
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(format!("{a:?}"), "Key(<redacted>)");
        fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(Key::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn facts_of_a_watched_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.key");
        let b = dir.path().join("copy.key");
        fs::write(&a, "same-value").unwrap();
        fs::write(&b, "same-value").unwrap();
        fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).unwrap();
        let list = WatchList::build("", &[a.clone(), b.clone()]).unwrap();
        let key = Key::from_bytes(&[7; 32]);
        let fa = secret_facts(&list.files()[0], &key).unwrap();
        let fb = secret_facts(&list.files()[1], &key).unwrap();
        assert_eq!(fa.fingerprint, fb.fingerprint);
        let fp = fa.fingerprint.as_deref().unwrap();
        assert!(
            fp.starts_with("hmac-sha256:") && fp.len() == 12 + SHOWN_HEX,
            "{fp}"
        );
        assert!(!fp.contains("same-value"));
        assert_eq!(fb.mode, Some(0o644));
        assert_eq!(fa.secret_type, "private_key");
        assert_eq!(fa.lifetime.as_deref(), Some("static"));
        // Another key, another fingerprint: nothing to compare across hosts.
        let other = Key::from_bytes(&[8; 32]);
        assert_ne!(fingerprint_file(&a, &other).unwrap(), fp);
        fs::remove_file(&a).unwrap();
        assert!(secret_facts(&list.files()[0], &key).is_none());
    }
}
