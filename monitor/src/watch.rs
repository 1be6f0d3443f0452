//! The files the kernel should report: the built-in catalog plus `--watch`.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use monitor_common::FileKey;

use crate::secret::{SecretType, classify_path, secret_id};

/// Per-home credential files of the built-in catalog, relative to a home.
const HOME_PATTERNS: &[&str] = &[
    ".aws/credentials",
    ".ssh/id_*",
    ".kube/config",
    ".docker/config.json",
    ".netrc",
    ".pgpass",
    ".git-credentials",
];
/// Host-wide patterns of the built-in catalog.
const HOST_PATTERNS: &[&str] = &["/var/run/secrets/**/token"];
/// Files taken from one `--watch` directory, at most.
const MAX_FILES_PER_DIR: usize = 10_000;
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("--watch {path}: {}", crate::error_text(err))]
    Path { path: String, err: io::Error },
    #[error(
        "--watch {0}: more than {MAX_FILES_PER_DIR} files below it; watch a narrower directory"
    )]
    TooMany(String),
}

/// One watched file.
#[derive(Debug, Clone)]
pub struct WatchedFile {
    /// Index in the list; the kernel map's value.
    pub id: u32,
    pub path: PathBuf,
    pub key: FileKey,
    pub secret_id: String,
    pub secret_type: SecretType,
}

#[derive(Debug, Default)]
pub struct WatchList {
    files: Vec<WatchedFile>,
    by_key: HashMap<FileKey, usize>,
    /// Catalog matches that could not be stat'ed (races, permissions).
    pub skipped: usize,
}

impl WatchList {
    /// The built-in catalog for every home in `passwd`, plus `extra` paths
    /// given by the user. A user path that does not exist is an error; a
    /// catalog file that vanishes while we look is only counted.
    pub fn build(passwd: &str, extra: &[PathBuf]) -> Result<Self, WatchError> {
        let mut list = Self::default();
        for path in extra {
            list.add_user_path(path)?;
        }
        for pattern in catalog_patterns(&homes_from_passwd(passwd)) {
            let Ok(paths) = glob::glob(&pattern) else {
                continue;
            };
            for entry in paths {
                match entry {
                    Ok(path) if !is_public_key(&path) => {
                        if list.add_file(&path).is_err() {
                            list.skipped += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => list.skipped += 1,
                }
            }
        }
        Ok(list)
    }

    pub fn files(&self) -> &[WatchedFile] {
        &self.files
    }

    pub fn get(&self, key: &FileKey) -> Option<&WatchedFile> {
        self.by_key.get(key).map(|&i| &self.files[i])
    }

    pub fn by_id(&self, id: u32) -> Option<&WatchedFile> {
        self.files.get(id as usize)
    }

    /// The watched file at `path` (symlinks followed), if any.
    pub fn lookup_path(&self, path: &Path) -> Option<&WatchedFile> {
        let meta = std::fs::metadata(path).ok()?;
        self.get(&FileKey {
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
        })
    }

    fn add_user_path(&mut self, path: &Path) -> Result<(), WatchError> {
        let err = |err| WatchError::Path {
            path: path.display().to_string(),
            err,
        };
        let meta = std::fs::metadata(path).map_err(err)?;
        if !meta.is_dir() {
            return self.add_file(path).map_err(err);
        }
        let mut added = 0;
        for entry in walkdir::WalkDir::new(path).max_depth(MAX_DEPTH) {
            let Ok(entry) = entry else {
                self.skipped += 1;
                continue;
            };
            if !entry.file_type().is_file() {
                continue;
            }
            added += 1;
            if added > MAX_FILES_PER_DIR {
                return Err(WatchError::TooMany(path.display().to_string()));
            }
            if self.add_file(entry.path()).is_err() {
                self.skipped += 1;
            }
        }
        Ok(())
    }

    fn add_file(&mut self, path: &Path) -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let key = FileKey {
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
        };
        if self.by_key.contains_key(&key) {
            return Ok(());
        }
        let path = std::path::absolute(path)?;
        let id = u32::try_from(self.files.len()).map_err(io::Error::other)?;
        self.by_key.insert(key, self.files.len());
        self.files.push(WatchedFile {
            id,
            secret_id: secret_id(&path),
            secret_type: classify_path(&path),
            path,
            key,
        });
        Ok(())
    }
}

/// Homes of every account in an /etc/passwd text (field 6), deduplicated.
/// Malformed lines are skipped.
pub fn homes_from_passwd(passwd: &str) -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(':').nth(5))
        .filter(|h| h.starts_with('/') && *h != "/")
        .map(PathBuf::from)
        .collect();
    homes.sort();
    homes.dedup();
    homes
}

fn catalog_patterns(homes: &[PathBuf]) -> Vec<String> {
    let mut patterns = Vec::new();
    for home in homes {
        let home = glob::Pattern::escape(&home.to_string_lossy());
        for rel in HOME_PATTERNS {
            patterns.push(format!("{home}/{rel}"));
        }
    }
    patterns.extend(HOST_PATTERNS.iter().map(|p| p.to_string()));
    patterns
}

fn is_public_key(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "pub")
}

/// `stat(2)`'s `st_dev` to the kernel's internal `dev_t` (`major << 20 |
/// minor`), which is what `inode->i_sb->s_dev` holds.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = u64::from(libc::major(st_dev));
    let minor = u64::from(libc::minor(st_dev));
    (major << 20) | minor
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
# a comment
broken line without fields
ana:x:1000:1000:Ana,,,:/home/ana:/bin/zsh
dup:x:1001:1001::/home/ana:/bin/sh
rootless:x:1002:1002::/:/bin/sh
";

    #[test]
    fn homes_are_parsed_and_deduplicated() {
        let homes = homes_from_passwd(PASSWD);
        assert_eq!(
            homes,
            ["/home/ana", "/nonexistent", "/root", "/usr/sbin"].map(PathBuf::from)
        );
    }

    #[test]
    fn kernel_dev_encoding() {
        // 254:1 (virtio disk partition) as stat encodes it.
        let st_dev = libc::makedev(254, 1);
        assert_eq!(kernel_dev(st_dev), (254 << 20) | 1);
        // A minor above 255 uses the split encoding in st_dev.
        let st_dev = libc::makedev(8, 300);
        assert_eq!(kernel_dev(st_dev), (8 << 20) | 300);
    }

    #[test]
    fn catalog_and_user_paths() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home with [brackets]");
        for rel in [".aws", ".ssh", ".kube"] {
            std::fs::create_dir_all(home.join(rel)).unwrap();
        }
        std::fs::write(home.join(".aws/credentials"), "x").unwrap();
        std::fs::write(home.join(".ssh/id_ed25519"), "x").unwrap();
        std::fs::write(home.join(".ssh/id_ed25519.pub"), "x").unwrap();
        std::os::unix::fs::symlink(home.join(".aws/credentials"), home.join(".kube/config"))
            .unwrap();
        let extra_dir = dir.path().join("extra");
        std::fs::create_dir_all(extra_dir.join("nested")).unwrap();
        std::fs::write(extra_dir.join("nested/api.token"), "x").unwrap();

        let passwd = format!("u:x:1:1::{}:/bin/sh\n", home.display());
        let list = WatchList::build(&passwd, std::slice::from_ref(&extra_dir)).unwrap();
        let mut names: Vec<_> = list
            .files()
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // The symlinked kubeconfig is the same inode as the credentials.
        assert_eq!(names, ["api.token", "credentials", "id_ed25519"]);
        let creds = list
            .files()
            .iter()
            .find(|f| f.path.ends_with(".aws/credentials"))
            .unwrap();
        assert_eq!(list.get(&creds.key).unwrap().id, creds.id);
        assert_eq!(creds.secret_type, SecretType::AwsCredentials);
    }

    #[test]
    fn missing_user_path_is_an_error_naming_it() {
        let err = WatchList::build("", &[PathBuf::from("/no/such/secret")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("--watch /no/such/secret:"), "{msg}");
    }
}
