//! The bounded walk: homes, the catalog's base directories and `--watch`
//! paths, with every candidate file read once to classify and fingerprint
//! it. Odd files (unreadable, too big, FIFOs, loops) are counted, never
//! fatal, and never opened when their type says reading could block.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use monitor_common::FileKey;
use zeroize::Zeroizing;

use super::{
    Record,
    catalog::{Catalog, FileRule, Parse},
    classify::{Classification, Facts, classify, public_key_only},
    fingerprint::Key,
    kernel_dev,
    settings::{Limits, Policy},
};
use crate::secret::{Lifetime, SecretType, secret_id};

/// How often the progress line is redrawn, in entries.
const PROGRESS_EVERY: usize = 256;

/// What a scan saw besides secrets.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Directory entries looked at.
    pub entries: usize,
    /// Files a catalog rule or `--watch` path matched.
    pub candidates: usize,
    pub secrets: usize,
    /// Candidates whose content holds no secret.
    pub no_secret: usize,
    pub unreadable: usize,
    pub too_big: usize,
    /// FIFOs, sockets, devices: never opened.
    pub special: usize,
    /// A second path to a file already inventoried.
    pub duplicates: usize,
    pub timed_out: bool,
    pub elapsed_ms: u128,
}

/// Why a candidate was not inventoried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NoSecret,
    Unreadable,
    TooBig,
    Special,
}

/// The directories to keep watching after a scan.
#[derive(Debug, Default)]
pub struct WatchPlan {
    /// Watched with every directory below them.
    pub trees: Vec<PathBuf>,
    /// Watched alone.
    pub dirs: Vec<PathBuf>,
    /// Home directories not made yet (`~/.aws` before `aws configure`),
    /// watched once they appear.
    pub planned: Vec<PathBuf>,
}

/// Finds and inspects secrets under one filesystem root.
#[derive(Debug)]
pub struct Scanner {
    root: PathBuf,
    catalog: Catalog,
    /// Homes as shown, deepest first.
    homes: Vec<PathBuf>,
    /// `--watch` paths as shown.
    user: Vec<PathBuf>,
    /// The rule of a `--watch` file no catalog rule types.
    generic: FileRule,
    key: Key,
    limits: Limits,
    policy: Policy,
}

impl Scanner {
    /// `root` is the filesystem to scan ("/" for this host); every path
    /// shown is relative to it. Homes come from `<root>/etc/passwd`, plus
    /// `/root`. `user` paths must be absolute.
    pub fn new(
        root: &Path,
        catalog: Catalog,
        user: Vec<PathBuf>,
        key: Key,
        limits: Limits,
        policy: Policy,
    ) -> Self {
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        let mut homes = homes_from_passwd(&passwd);
        homes.push(PathBuf::from("/root"));
        homes.sort_by(|a, b| b.as_os_str().len().cmp(&a.as_os_str().len()).then(a.cmp(b)));
        homes.dedup();
        Self {
            root: root.to_path_buf(),
            catalog,
            homes,
            user,
            generic: FileRule {
                glob: "--watch".into(),
                secret_type: SecretType::Generic,
                parse: Parse::Auto,
                lifetime: None,
                reason: None,
            },
            key,
            limits,
            policy,
        }
    }

    /// Walk everything once, within the limits. `progress` is drawn only
    /// when it is visible (a terminal).
    pub fn scan(&self, progress: &ProgressBar) -> (Vec<Record>, Stats, WatchPlan) {
        let start = Instant::now();
        let mut walk = Walk {
            scanner: self,
            start,
            records: Vec::new(),
            keys: HashSet::new(),
            stats: Stats::default(),
            progress,
        };
        let mut plan = WatchPlan::default();
        for path in &self.user {
            if fs::metadata(self.fs_path(path)).is_ok_and(|m| m.is_dir()) {
                plan.trees.push(path.clone());
            } else if let Some(parent) = path.parent() {
                plan.dirs.push(parent.to_path_buf());
            }
            walk.tree(path);
        }
        for home in &self.homes {
            plan.dirs.push(home.clone());
            for rel in self.catalog.home_dirs() {
                for dir in rel.ancestors().filter(|d| !d.as_os_str().is_empty()) {
                    plan.planned.push(home.join(dir));
                }
            }
            walk.tree(home);
        }
        for base in self.catalog.bases() {
            plan.trees.push(base.clone());
            walk.tree(base);
        }
        plan.dirs.extend(
            walk.records
                .iter()
                .filter_map(|r| r.path.parent().map(Path::to_path_buf)),
        );
        for list in [&mut plan.trees, &mut plan.dirs, &mut plan.planned] {
            list.sort();
            list.dedup();
        }
        walk.stats.secrets = walk.records.len();
        walk.stats.elapsed_ms = start.elapsed().as_millis();
        progress.finish_and_clear();
        (walk.records, walk.stats, plan)
    }

    /// The rule for a file as shown, and whether it is inventoried even
    /// when its content holds nothing recognizable (a `--watch` path).
    /// Below a watched directory the catalog's exclusions (templates,
    /// public keys) hold as everywhere; a file `--watch` names is taken.
    pub fn rule_for(&self, shown: &Path) -> Option<(&FileRule, bool)> {
        if self.user.iter().any(|u| shown.starts_with(u)) {
            let named = self.user.iter().any(|u| u == shown);
            if !named && self.catalog.excludes(shown) {
                return None;
            }
            let rule = self.catalog.rule_for_tail(shown).unwrap_or(&self.generic);
            return Some((rule, true));
        }
        let home_rel = self.homes.iter().find_map(|h| shown.strip_prefix(h).ok());
        self.catalog.rule_for(shown, home_rel).map(|r| (r, false))
    }

    /// Inspect a file found outside the scan (by the kernel's name rules):
    /// with the catalog's rule for its name, else the generic one. Content
    /// decides: a file that holds nothing secret-shaped is `NoSecret`.
    pub fn inspect_discovered(&self, shown: &Path) -> Result<Record, Skip> {
        let rule = self.catalog.rule_for_tail(shown).unwrap_or(&self.generic);
        self.inspect(shown, rule, false, None, false)
    }

    pub fn skips_dir(&self, shown: &Path) -> bool {
        self.catalog.skips_dir(shown)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The id of the key fingerprints are made with.
    pub fn key_id(&self) -> String {
        self.key.id()
    }

    /// Read, classify and fingerprint one candidate. The bytes are wiped
    /// before this returns. `previous` is the fingerprint it had when last
    /// seen, `rotated` whether it changed before: both are evidence of a
    /// dynamic secret.
    pub fn inspect(
        &self,
        shown: &Path,
        rule: &FileRule,
        forced: bool,
        previous: Option<&str>,
        rotated: bool,
    ) -> Result<Record, Skip> {
        let path = self.fs_path(shown);
        let link = fs::symlink_metadata(&path).map_err(|_| Skip::Unreadable)?;
        // The kubelet's atomic writer: `token -> ..data/token`.
        let atomic_writer =
            link.is_symlink() && fs::read_link(&path).is_ok_and(|t| t.starts_with("..data"));
        let meta = fs::metadata(&path).map_err(|_| Skip::Unreadable)?;
        if !meta.is_file() {
            return Err(Skip::Special);
        }
        if meta.len() > self.limits.max_file_size {
            return Err(Skip::TooBig);
        }
        let file = open_quietly(&path).map_err(|_| Skip::Unreadable)?;
        // Checked again on the open file: the path may have changed since.
        let meta = file.metadata().map_err(|_| Skip::Unreadable)?;
        if !meta.is_file() {
            return Err(Skip::Special);
        }
        let max = self.limits.max_file_size;
        let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len().min(max) as usize + 1));
        (&file)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| Skip::Unreadable)?;
        if bytes.len() as u64 > max {
            return Err(Skip::TooBig);
        }
        // Whatever the name or the rule: a public key is no secret.
        if public_key_only(&bytes) {
            return Err(Skip::NoSecret);
        }
        let fingerprint = self.key.fingerprint(&bytes);
        let rotated = rotated || previous.is_some_and(|p| p != fingerprint);
        let now = Utc::now();
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let facts = Facts {
            rule,
            age: SystemTime::now()
                .duration_since(mtime)
                .unwrap_or(Duration::ZERO),
            atomic_writer,
            rotated,
            now,
        };
        let class = match classify(&bytes, &facts, &self.catalog, &self.policy) {
            Some(c) => c,
            None if forced => Classification {
                secret_type: rule.secret_type,
                lifetime: Lifetime::Unknown,
                reason: "watched as configured; no known secret inside".into(),
                hint: None,
                expires: None,
            },
            None => return Err(Skip::NoSecret),
        };
        drop(bytes);
        Ok(Record {
            id: secret_id(shown),
            path: shown.to_path_buf(),
            key: FileKey {
                dev: kernel_dev(meta.dev()),
                ino: meta.ino(),
            },
            slot: 0,
            secret_type: class.secret_type,
            lifetime: class.lifetime,
            reason: class.reason,
            fingerprint,
            hint: class.hint,
            expires: class.expires,
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            size: meta.len(),
            mtime: DateTime::<Utc>::from(mtime),
        })
    }

    /// Where a path as shown is on this machine.
    pub fn fs_path(&self, shown: &Path) -> PathBuf {
        self.root.join(shown.strip_prefix("/").unwrap_or(shown))
    }

    /// A path on this machine as shown (relative to the root).
    pub fn shown(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => path.to_path_buf(),
        }
    }
}

/// Open for reading without blocking on a FIFO swapped in since the stat,
/// without taking a controlling tty, and without touching atime (so the
/// scan does not look like a reader), where the kernel allows it.
fn open_quietly(path: &Path) -> io::Result<File> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | flags)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
}

struct Walk<'a> {
    scanner: &'a Scanner,
    start: Instant,
    records: Vec<Record>,
    keys: HashSet<FileKey>,
    stats: Stats,
    progress: &'a ProgressBar,
}

impl Walk<'_> {
    fn tree(&mut self, top: &Path) {
        let s = self.scanner;
        let fs_top = s.fs_path(top);
        if self.stats.timed_out || !fs_top.exists() {
            return;
        }
        let walker = walkdir::WalkDir::new(&fs_top)
            .max_depth(s.limits.max_depth)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                // The kubelet's `..data` internals are reached through
                // the stable names beside them.
                let internal = e.depth() > 0 && e.file_name().as_encoded_bytes().starts_with(b"..");
                !internal && !(e.file_type().is_dir() && s.skips_dir(&s.shown(e.path())))
            });
        for entry in walker {
            if self.start.elapsed() > s.limits.timeout {
                self.stats.timed_out = true;
                return;
            }
            self.stats.entries += 1;
            if self.stats.entries.is_multiple_of(PROGRESS_EVERY) {
                self.progress.set_message(format!(
                    "{} entries, {} secrets: {}",
                    self.stats.entries,
                    self.records.len(),
                    top.display()
                ));
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // A vanished entry is a race, not a problem.
                    if e.io_error()
                        .is_none_or(|io| io.kind() != io::ErrorKind::NotFound)
                    {
                        self.stats.unreadable += 1;
                    }
                    continue;
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let shown = s.shown(entry.path());
            let Some((rule, forced)) = s.rule_for(&shown) else {
                continue;
            };
            if entry.file_type().is_symlink()
                && fs::metadata(entry.path()).is_ok_and(|m| m.is_dir())
            {
                continue;
            }
            self.stats.candidates += 1;
            match s.inspect(&shown, rule, forced, None, false) {
                Ok(record) => {
                    if self.keys.insert(record.key) {
                        self.records.push(record);
                    } else {
                        self.stats.duplicates += 1;
                    }
                }
                Err(Skip::NoSecret) => {
                    if forced && s.user.contains(&shown) {
                        tracing::warn!(
                            "--watch {}: holds no secret (a public key): not watched",
                            shown.display()
                        );
                    }
                    self.stats.no_secret += 1;
                }
                Err(Skip::Unreadable) => self.stats.unreadable += 1,
                Err(Skip::TooBig) => self.stats.too_big += 1,
                Err(Skip::Special) => self.stats.special += 1,
            }
        }
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, ffi::OsStr, os::unix::ffi::OsStrExt as _, process::Command};

    use super::*;
    use crate::inventory::settings::Settings;

    /// The fixture tree copied, plus what git cannot hold: a 1 GiB sparse
    /// file, a FIFO, symlink loops, non-UTF-8 names, and old mtimes.
    fn odd_fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/.");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(dir.path())
            .status();
        assert!(cp.unwrap().success());
        let root = dir.path();
        let tls = root.join("home/ana/tls");
        File::create(tls.join("huge.key"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let fifo = Command::new("mkfifo").arg(tls.join("pipe.key")).status();
        assert!(fifo.unwrap().success());
        std::os::unix::fs::symlink("loop.key", tls.join("loop.key")).unwrap();
        std::os::unix::fs::symlink("..", root.join("home/ana/src/up")).unwrap();
        let odd = tls.join(OsStr::from_bytes(b"\xff\xfe.key"));
        fs::copy(tls.join("server.key"), odd).unwrap();
        let odd_dir = root
            .join("home/ana/src")
            .join(OsStr::from_bytes(b"caf\xe9"));
        fs::create_dir(&odd_dir).unwrap();
        fs::write(
            odd_dir.join(".env"),
            "GITLAB_TOKEN=glpat-PLANTED000000000000000\n",
        )
        .unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600); // 2025-01-01
        for entry in walkdir::WalkDir::new(root) {
            let entry = entry.unwrap();
            if entry.file_type().is_file() {
                File::options()
                    .write(true)
                    .open(entry.path())
                    .and_then(|f| f.set_modified(old))
                    .unwrap();
            }
        }
        dir
    }

    fn scanner(root: &Path, state: &Path, limits: Limits) -> Scanner {
        let settings = Settings::default();
        let (key, _) = Key::load(&settings, state).unwrap();
        let catalog = Catalog::new(&settings).unwrap();
        Scanner::new(root, catalog, Vec::new(), key, limits, settings.policy())
    }

    #[test]
    fn scans_the_fixture_root_and_counts_odd_files() {
        let dir = odd_fixture();
        let state = tempfile::tempdir().unwrap();
        let s = scanner(dir.path(), state.path(), Settings::default().limits());
        let (records, stats, plan) = s.scan(&ProgressBar::hidden());
        eprintln!("fixture scan: {stats:?}");

        let types: BTreeSet<&str> = records.iter().map(|r| r.secret_type.as_str()).collect();
        assert_eq!(types.len(), 21, "every secret type is found: {types:?}");
        assert_eq!(
            records.len(),
            43,
            "{:#?}",
            records.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
        assert_eq!(stats.too_big, 1, "{stats:?}");
        assert_eq!(stats.special, 1, "the FIFO: {stats:?}");
        assert_eq!(stats.unreadable, 1, "the symlink loop: {stats:?}");
        assert_eq!(stats.no_secret, 5, "{stats:?}");
        assert!(!stats.timed_out);
        // Non-UTF-8 names are found and shown lossily, never dropped.
        let odd: Vec<_> = records
            .iter()
            .filter(|r| r.path.to_str().is_none())
            .map(|r| r.secret_type)
            .collect();
        assert_eq!(odd.len(), 2, "{odd:?}");
        // Paths are shown relative to the root; the kubelet's stable name,
        // not its timestamped internals.
        let sa = records
            .iter()
            .find(|r| r.path == Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token"))
            .unwrap();
        assert_eq!(sa.lifetime, Lifetime::Dynamic);
        assert!(
            records
                .iter()
                .all(|r| !r.path.to_string_lossy().contains("/.."))
        );
        let creds = records
            .iter()
            .find(|r| r.path == Path::new("/home/ana/.aws/credentials"))
            .unwrap();
        let meta = fs::metadata(dir.path().join("home/ana/.aws/credentials")).unwrap();
        assert_eq!(creds.key.ino, meta.ino());
        assert_eq!(creds.key.dev, kernel_dev(meta.dev()));
        assert_eq!(creds.id, secret_id(Path::new("/home/ana/.aws/credentials")));
        assert!(creds.fingerprint.starts_with("hmac-sha256:"));
        // What sync will follow.
        assert!(plan.dirs.contains(&PathBuf::from("/home/ana/.aws")));
        assert!(plan.trees.contains(&PathBuf::from("/var/run/secrets")));
        assert!(plan.planned.contains(&PathBuf::from("/home/bob/.aws")));
    }

    /// Public keys are no secret: not below a `--watch` directory, not by
    /// content under another name, not even named by `--watch`.
    #[test]
    fn public_keys_below_a_watched_directory_are_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let keys = dir.path().join("srv/keys");
        fs::create_dir_all(&keys).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/inventory/home/ana/.ssh/id_ed25519");
        fs::copy(&fixture, keys.join("id_ed25519")).unwrap();
        let public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLANTEDpublic ana@laptop\n";
        fs::write(keys.join("id_ed25519.pub"), public).unwrap();
        fs::write(keys.join("deploy_key"), public).unwrap();
        fs::write(keys.join("authorized_keys"), public).unwrap();
        fs::write(keys.join("api.token"), "PLANTED-token-value\n").unwrap();
        let settings = Settings::default();
        let (key, _) = Key::load(&settings, state.path()).unwrap();
        let user = vec![
            PathBuf::from("/srv/keys"),
            PathBuf::from("/srv/keys/id_ed25519.pub"),
        ];
        let s = Scanner::new(
            dir.path(),
            Catalog::new(&settings).unwrap(),
            user,
            key,
            settings.limits(),
            settings.policy(),
        );
        let (records, _, _) = s.scan(&ProgressBar::hidden());
        let mut names: Vec<_> = records
            .iter()
            .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["api.token", "id_ed25519"]);
    }

    #[test]
    fn a_scan_stops_at_its_timeout() {
        let dir = odd_fixture();
        let state = tempfile::tempdir().unwrap();
        let limits = Limits {
            timeout: Duration::ZERO,
            ..Settings::default().limits()
        };
        let (records, stats, _) =
            scanner(dir.path(), state.path(), limits).scan(&ProgressBar::hidden());
        assert!(stats.timed_out && records.is_empty(), "{stats:?}");
    }

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
}
