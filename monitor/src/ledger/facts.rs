//! What the ledger records of an inventoried secret: the inventory's own
//! facts (type, fingerprint, lifetime, hint, owner, mode, mtime, expiry),
//! turned into the ledger's row; and whether a secret's file is still there.

use std::{io::ErrorKind, path::Path};

use super::SecretFacts;
use crate::inventory::Record;

/// Whether a file is still at `path` (symlinks followed). Only "no such
/// file" (or a parent that is no directory any more) is gone: a removal is
/// claimed only when it is certain.
pub fn file_exists(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory),
    }
}

pub fn secret_facts(r: &Record) -> SecretFacts {
    SecretFacts {
        id: r.id.clone(),
        path: r.path.to_string_lossy().into_owned(),
        secret_type: r.secret_type.as_str().to_string(),
        fingerprint: Some(r.fingerprint.clone()).filter(|f| !f.is_empty()),
        lifetime: serde_json::to_value(r.lifetime)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned)),
        hint: r.hint.clone(),
        uid: Some(r.uid),
        gid: Some(r.gid),
        mode: Some(r.mode),
        mtime: Some(r.mtime),
        expires: r.expires,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::inventory::test_record;

    #[test]
    fn facts_come_from_the_record() {
        let mut r = test_record(Path::new("/srv/app/.env"), 7);
        r.mode = 0o644;
        r.hint = Some("AKIA…".into());
        let f = secret_facts(&r);
        assert_eq!(f.id, r.id);
        assert_eq!(f.path, "/srv/app/.env");
        assert_eq!(f.secret_type, "generic");
        assert_eq!(f.lifetime.as_deref(), Some("unknown"));
        assert_eq!(
            f.fingerprint.as_deref(),
            Some("hmac-sha256:0123456789abcdef")
        );
        assert_eq!(f.mode, Some(0o644));
        assert_eq!(f.hint.as_deref(), Some("AKIA…"));
    }

    #[test]
    fn only_a_missing_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "x").unwrap();
        assert!(file_exists(&file));
        assert!(!file_exists(&dir.path().join("nothing")));
        assert!(!file_exists(&file.join("below-a-file")));
    }
}
