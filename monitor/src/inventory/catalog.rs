//! The catalog: the embedded `catalog.toml` plus the config's `[inventory]`
//! rules, compiled into matchers for paths, variable names and values.

use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::settings::Settings;
use crate::secret::{Lifetime, SecretType};

const BUILTIN: &str = include_str!("catalog.toml");
/// A hint never shows more than this many characters of a value.
const MAX_HINT_CHARS: usize = 12;

/// How a file's content is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parse {
    Aws,
    Gcp,
    Azure,
    Kubeconfig,
    Docker,
    Netrc,
    Pgpass,
    IniPassword,
    GitCredentials,
    Npmrc,
    Cargo,
    Terraform,
    Vault,
    Pem,
    Jwt,
    Env,
    /// Binary or unparseable: present means secret.
    Opaque,
    /// Sniff the content.
    #[default]
    Auto,
}

/// Where a kind of secret lives and how to read it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    pub glob: String,
    #[serde(rename = "type")]
    pub secret_type: SecretType,
    #[serde(default)]
    pub parse: Parse,
    pub lifetime: Option<Lifetime>,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    skip_dirs: Vec<String>,
    exclude: Vec<String>,
    file: Vec<FileRule>,
    env: EnvData,
    shape: Vec<ShapeData>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvData {
    names: Vec<String>,
    patterns: Vec<String>,
    url_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapeData {
    name: String,
    regex: String,
    #[serde(default)]
    hint: usize,
    label: Option<String>,
    lifetime: Option<Lifetime>,
    reason: Option<String>,
    #[serde(default)]
    jwt: bool,
}

/// A value shape: a regex whose match is a secret wherever it appears.
#[derive(Debug)]
pub struct Shape {
    pub name: String,
    pub regex: regex::bytes::Regex,
    hint: usize,
    label: Option<String>,
    pub lifetime: Option<Lifetime>,
    pub reason: Option<String>,
    /// The match is a JWT whose claims decide the lifetime.
    pub jwt: bool,
}

impl Shape {
    /// The safe hint for a match: its fixed prefix and an ellipsis, or the
    /// shape's label.
    pub fn hint(&self, matched: &[u8]) -> String {
        if let Some(label) = &self.label {
            return label.clone();
        }
        let n = self.hint.min(MAX_HINT_CHARS).min(matched.len());
        format!("{}…", String::from_utf8_lossy(&matched[..n]))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the built-in catalog is invalid")]
    Builtin(#[source] toml::de::Error),
    #[error("inventory glob `{glob}`: {reason}")]
    Glob { glob: String, reason: String },
    #[error("inventory shape `{name}`")]
    Regex {
        name: String,
        #[source]
        err: regex::Error,
    },
}

/// The compiled catalog.
#[derive(Debug)]
pub struct Catalog {
    rules: Vec<FileRule>,
    home: GlobSet,
    home_rules: Vec<usize>,
    absolute: GlobSet,
    absolute_rules: Vec<usize>,
    exclude: GlobSet,
    skip_dirs: GlobSet,
    env_names: GlobSet,
    url_names: GlobSet,
    /// Every env name and pattern, for the kernel's exec-time watch list.
    env_watch: Vec<String>,
    shapes: Vec<Shape>,
    bases: Vec<PathBuf>,
    home_dirs: Vec<PathBuf>,
}

impl Catalog {
    /// The built-in catalog extended by `settings`: its `extra` rules come
    /// first, its `globs` last.
    pub fn new(settings: &Settings) -> Result<Self, CatalogError> {
        let data: Data = toml::from_str(BUILTIN).map_err(CatalogError::Builtin)?;
        let mut rules = settings.extra.clone();
        rules.extend(data.file);
        rules.extend(settings.globs.iter().map(|glob| FileRule {
            glob: glob.clone(),
            secret_type: SecretType::Generic,
            parse: Parse::Auto,
            lifetime: None,
            reason: None,
        }));

        let mut home = GlobSetBuilder::new();
        let mut absolute = GlobSetBuilder::new();
        let (mut home_rules, mut absolute_rules) = (Vec::new(), Vec::new());
        let (mut bases, mut home_dirs) = (Vec::new(), Vec::new());
        for (i, rule) in rules.iter().enumerate() {
            if let Some(rel) = rule.glob.strip_prefix("~/") {
                home.add(glob(rel)?);
                home_rules.push(i);
                home_dirs.push(literal_dir(rel));
            } else if rule.glob.starts_with('/') {
                absolute.add(glob(&rule.glob)?);
                absolute_rules.push(i);
                bases.push(literal_dir(&rule.glob));
            } else {
                return Err(CatalogError::Glob {
                    glob: rule.glob.clone(),
                    reason: "must be absolute or start with `~/`".into(),
                });
            }
        }
        let shapes = data
            .shape
            .into_iter()
            .map(|s| {
                let regex =
                    regex::bytes::Regex::new(&s.regex).map_err(|err| CatalogError::Regex {
                        name: s.name.clone(),
                        err,
                    })?;
                Ok(Shape {
                    name: s.name,
                    regex,
                    hint: s.hint,
                    label: s.label,
                    lifetime: s.lifetime,
                    reason: s.reason,
                    jwt: s.jwt,
                })
            })
            .collect::<Result<_, CatalogError>>()?;
        home_dirs.sort();
        home_dirs.dedup();
        Ok(Self {
            home: build(home)?,
            absolute: build(absolute)?,
            home_rules,
            absolute_rules,
            exclude: set(&data.exclude)?,
            skip_dirs: set(&data.skip_dirs)?,
            env_names: set(data.env.names.iter().chain(&data.env.patterns))?,
            url_names: set(&data.env.url_names)?,
            env_watch: data
                .env
                .names
                .iter()
                .chain(&data.env.patterns)
                .chain(&data.env.url_names)
                .cloned()
                .collect(),
            shapes,
            bases: outermost(bases),
            home_dirs,
            rules,
        })
    }

    /// The first rule for a file at `path` (absolute, as shown), which is
    /// `home_rel` below one of the homes.
    pub fn rule_for(&self, path: &Path, home_rel: Option<&Path>) -> Option<&FileRule> {
        if self.exclude.is_match(path) {
            return None;
        }
        let abs = self
            .absolute
            .matches(path)
            .into_iter()
            .map(|i| self.absolute_rules[i]);
        let home = home_rel
            .map(|rel| self.home.matches(rel))
            .unwrap_or_default()
            .into_iter()
            .map(|i| self.home_rules[i]);
        abs.chain(home).min().map(|i| &self.rules[i])
    }

    /// The first home rule matching any tail of `path`: a `--watch` path
    /// outside the homes is typed as if it were in one
    /// (`/srv/app/.aws/credentials` is AWS credentials).
    pub fn rule_for_tail(&self, path: &Path) -> Option<&FileRule> {
        if self.exclude.is_match(path) {
            return None;
        }
        let parts: Vec<Component> = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        (0..parts.len())
            .flat_map(|i| {
                let tail: PathBuf = parts[i..].iter().collect();
                self.home.matches(tail)
            })
            .map(|i| self.home_rules[i])
            .min()
            .map(|i| &self.rules[i])
    }

    /// Whether a file (absolute, as shown) is never inventoried: templates,
    /// public keys.
    pub fn excludes(&self, path: &Path) -> bool {
        self.exclude.is_match(path)
    }

    /// Whether a directory (absolute, as shown) is never entered.
    pub fn skips_dir(&self, path: &Path) -> bool {
        self.skip_dirs.is_match(path)
    }

    /// The names and `*_SUFFIX` patterns of secret environment variables,
    /// URL-valued ones included: what the kernel reports at exec.
    pub fn env_watch_names(&self) -> &[String] {
        &self.env_watch
    }

    /// Whether an environment variable of this name holds a secret.
    pub fn is_secret_env_name(&self, name: &str) -> bool {
        self.env_names.is_match(name)
    }

    /// Whether a variable of this name holds a secret when its value is a
    /// URL with a password.
    pub fn is_url_env_name(&self, name: &str) -> bool {
        self.url_names.is_match(name)
    }

    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The directories absolute rules look in, none inside another.
    pub fn bases(&self) -> &[PathBuf] {
        &self.bases
    }

    /// The directories, relative to a home, that home rules look in.
    pub fn home_dirs(&self) -> &[PathBuf] {
        &self.home_dirs
    }
}

fn glob(pattern: &str) -> Result<globset::Glob, CatalogError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| CatalogError::Glob {
            glob: pattern.into(),
            reason: e.kind().to_string(),
        })
}

fn set<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Result<GlobSet, CatalogError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(glob(p.as_ref())?);
    }
    build(b)
}

fn build(b: GlobSetBuilder) -> Result<GlobSet, CatalogError> {
    b.build().map_err(|e| CatalogError::Glob {
        glob: e.glob().unwrap_or("").into(),
        reason: e.kind().to_string(),
    })
}

/// The directory part of a glob before its first wildcard component:
/// `/var/run/secrets/**/token` → `/var/run/secrets`; `.aws/credentials` →
/// `.aws`.
fn literal_dir(pattern: &str) -> PathBuf {
    let parts: Vec<&str> = pattern.split('/').collect();
    let wild = parts
        .iter()
        .position(|p| p.contains(['*', '?', '[', '{', '\\']))
        .unwrap_or(parts.len() - 1);
    let dir = parts[..wild].join("/");
    if dir.is_empty() && pattern.starts_with('/') {
        PathBuf::from("/")
    } else {
        PathBuf::from(dir)
    }
}

/// `dirs` without duplicates and without any inside another.
fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.sort();
    dirs.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !out.iter().any(|o| d.starts_with(o)) {
            out.push(d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Catalog {
        Catalog::new(&Settings::default()).unwrap()
    }

    fn type_of(c: &Catalog, path: &str, home: Option<&str>) -> Option<SecretType> {
        let rel = home.map(|h| Path::new(path).strip_prefix(h).unwrap());
        c.rule_for(Path::new(path), rel).map(|r| r.secret_type)
    }

    #[test]
    fn builtin_rules_match_where_secrets_live() {
        let c = builtin();
        let h = Some("/home/ana");
        let cases = [
            (
                "/home/ana/.aws/credentials",
                h,
                Some(SecretType::AwsCredentials),
            ),
            (
                "/home/ana/.ssh/id_ed25519",
                h,
                Some(SecretType::SshPrivateKey),
            ),
            ("/home/ana/.ssh/id_ed25519.pub", h, None),
            ("/home/ana/.ssh/known_hosts", h, None),
            ("/home/ana/src/app/.env", h, Some(SecretType::EnvFile)),
            ("/home/ana/.env.production", h, Some(SecretType::EnvFile)),
            ("/home/ana/.env.example", h, None),
            ("/home/ana/tls/server.key", h, Some(SecretType::PrivateKey)),
            ("/home/ana/certs/client.p12", h, Some(SecretType::Pkcs12)),
            ("/home/ana/.aws/credentials.bak", h, None),
            (
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
                None,
                Some(SecretType::K8sSaToken),
            ),
            (
                "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                None,
                None,
            ),
            ("/run/secrets/db_password", None, Some(SecretType::Generic)),
            (
                "/etc/ssh/ssh_host_ed25519_key",
                None,
                Some(SecretType::SshPrivateKey),
            ),
            (
                "/etc/ssl/private/site.key",
                None,
                Some(SecretType::PrivateKey),
            ),
            (
                "/etc/kubernetes/admin.conf",
                None,
                Some(SecretType::Kubeconfig),
            ),
            ("/etc/passwd", None, None),
            // A home rule does not match outside a home.
            ("/srv/.aws/credentials", None, None),
        ];
        for (path, home, want) in cases {
            assert_eq!(type_of(&c, path, home), want, "{path}");
        }
    }

    #[test]
    fn tails_type_paths_outside_homes() {
        let c = builtin();
        let t = |p: &str| c.rule_for_tail(Path::new(p)).map(|r| r.secret_type);
        assert_eq!(
            t("/tmp/x/.aws/credentials"),
            Some(SecretType::AwsCredentials)
        );
        assert_eq!(t("/srv/app/.env"), Some(SecretType::EnvFile));
        assert_eq!(t("/srv/app/notes.txt"), None);
    }

    #[test]
    fn bases_are_outermost_literal_dirs() {
        let c = builtin();
        let bases: Vec<_> = c.bases().iter().map(|b| b.to_str().unwrap()).collect();
        assert!(bases.contains(&"/etc"), "{bases:?}");
        assert!(bases.contains(&"/var/run/secrets"), "{bases:?}");
        assert!(bases.contains(&"/var/lib/kubelet/pods"), "{bases:?}");
        assert!(!bases.contains(&"/etc/kubernetes"), "{bases:?}");
        assert!(c.home_dirs().contains(&PathBuf::from(".aws")));
        assert!(c.home_dirs().contains(&PathBuf::from("")));
        assert_eq!(
            literal_dir("/etc/mysql/debian.cnf"),
            Path::new("/etc/mysql")
        );
    }

    #[test]
    fn config_extends_the_catalog() {
        let settings: Settings = toml::from_str(
            r#"
globs = ["/srv/*/secret.txt"]
[[extra]]
glob = "~/.aws/credentials"
type = "generic"
parse = "opaque"
"#,
        )
        .unwrap();
        let c = Catalog::new(&settings).unwrap();
        // `extra` wins over the built-in rule for the same place.
        assert_eq!(
            type_of(&c, "/root/.aws/credentials", Some("/root")),
            Some(SecretType::Generic)
        );
        assert_eq!(
            type_of(&c, "/srv/app/secret.txt", None),
            Some(SecretType::Generic)
        );
        assert!(c.bases().contains(&PathBuf::from("/srv")));

        let bad: Settings = toml::from_str("globs = [\"relative/*\"]").unwrap();
        let err = Catalog::new(&bad).unwrap_err().to_string();
        assert!(err.contains("relative/*"), "{err}");
        let typo = toml::from_str::<Settings>("[[extra]]\nglob = \"/x\"\ntype = \"aws\"\n");
        assert!(typo.is_err());
    }

    #[test]
    fn env_names_and_shapes() {
        let c = builtin();
        for name in [
            "AWS_SECRET_ACCESS_KEY",
            "GH_TOKEN",
            "MY_APP_PASSWORD",
            "X_API_KEY",
        ] {
            assert!(c.is_secret_env_name(name), "{name}");
        }
        for name in ["PATH", "HOME", "TOKEN_URL", "DATABASE_URL"] {
            assert!(!c.is_secret_env_name(name), "{name}");
        }
        assert!(c.is_url_env_name("DATABASE_URL"));
        let aws = c
            .shapes()
            .iter()
            .find(|s| s.name == "aws_access_key_id")
            .unwrap();
        assert_eq!(aws.hint(b"AKIAFAKEFAKEFAKE0000"), "AKIA…");
    }
}
