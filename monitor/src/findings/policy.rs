//! The reader policy: per secret glob, the identities allowed to read it.
//!
//! ```toml
//! [[secret]]
//! glob = "/srv/app/**"
//! allow = ["systemd:app.service", "k8s:prod/api", "container:docker:*"]
//!
//! [[secret]]
//! glob = "env:GITHUB_TOKEN"      # a variable in an environment
//! allow = ["systemd:ci-runner.service"]
//! ```
//!
//! A path glob's `*` stays within a directory and `**` crosses them; an
//! identity pattern's `*` matches anything. A secret no rule covers falls
//! back to the learned baseline.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub glob: String,
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    secret: Vec<PolicyRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {err}")]
    Read {
        path: String,
        err: crate::secure_fs::TrustError,
    },
    #[error("policy {path}: not UTF-8")]
    Encoding { path: String },
    #[error("policy {path}: {message}")]
    Parse { path: String, message: String },
    #[error("policy: `{pattern}`: {err}")]
    Glob {
        pattern: String,
        err: globset::Error,
    },
}

/// The rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<(globset::GlobMatcher, GlobSet)>,
}

pub fn load(path: &Path) -> Result<Vec<PolicyRule>, PolicyError> {
    let shown = path.display().to_string();
    let bytes = crate::secure_fs::read_trusted(path, crate::secure_fs::POLICY).map_err(|err| {
        PolicyError::Read {
            path: shown.clone(),
            err,
        }
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| PolicyError::Encoding {
        path: shown.clone(),
    })?;
    let file: PolicyFile = toml::from_str(text).map_err(|err| PolicyError::Parse {
        message: crate::errors::toml_error(text, &err),
        path: shown,
    })?;
    Policy::compile(&file.secret)?;
    Ok(file.secret)
}

impl Policy {
    pub fn compile(rules: &[PolicyRule]) -> Result<Self, PolicyError> {
        let bad = |pattern: &str| {
            let pattern = pattern.to_string();
            move |err| PolicyError::Glob { pattern, err }
        };
        let mut compiled = Vec::new();
        for rule in rules {
            let path = GlobBuilder::new(&rule.glob)
                .literal_separator(true)
                .build()
                .map_err(bad(&rule.glob))?
                .compile_matcher();
            let mut allow = GlobSetBuilder::new();
            for a in &rule.allow {
                allow.add(Glob::new(a).map_err(bad(a))?);
            }
            compiled.push((path, allow.build().map_err(bad(&rule.glob))?));
        }
        Ok(Self { rules: compiled })
    }

    /// Whether `identity` may read the secret at `path`: `None` when no
    /// rule covers the path. Rules covering it add up.
    pub fn allows(&self, path: &str, identity: &str) -> Option<bool> {
        let mut covered = false;
        for (glob, allow) in &self.rules {
            if glob.is_match(path) {
                covered = true;
                if allow.is_match(identity) {
                    return Some(true);
                }
            }
        }
        covered.then_some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Policy {
        let file: PolicyFile = toml::from_str(text).unwrap();
        Policy::compile(&file.secret).unwrap()
    }

    #[test]
    fn globs_cover_paths_and_identities() {
        let p = rules(
            r#"
[[secret]]
glob = "/srv/app/**"
allow = ["systemd:app.service", "k8s:prod/api"]
[[secret]]
glob = "/srv/app/*.key"
allow = ["container:docker:*"]
[[secret]]
glob = "env:GITHUB_TOKEN"
allow = ["user:ci:/usr/bin/*"]
"#,
        );
        assert_eq!(
            p.allows("/srv/app/db/pass", "systemd:app.service"),
            Some(true)
        );
        assert_eq!(
            p.allows("/srv/app/tls.key", "container:docker:3f4a9c1b2d8e"),
            Some(true)
        );
        assert_eq!(
            p.allows("/srv/app/db/x.key", "container:docker:3f4a9c1b2d8e"),
            Some(false)
        );
        assert_eq!(
            p.allows("/srv/app/db/pass", "user:root:/usr/bin/cat"),
            Some(false)
        );
        assert_eq!(p.allows("/etc/other", "user:root:/usr/bin/cat"), None);
        assert_eq!(
            p.allows("env:GITHUB_TOKEN", "user:ci:/usr/bin/git"),
            Some(true)
        );
        assert_eq!(
            p.allows("env:GITHUB_TOKEN", "user:ana:/usr/bin/git"),
            Some(false)
        );
    }

    #[test]
    fn files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[[secret]]\nglob = \"/a/**\"\nalow = []\n").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("alow"));
        std::fs::write(&path, "[[secret]]\nglob = \"/a/[\"\nallow = []\n").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("/a/["));
        std::fs::write(&path, "[[secret]]\nglob = \"/a/**\"\nallow = [\"x\"]\n").unwrap();
        assert_eq!(load(&path).unwrap().len(), 1);
        let err = load(&dir.path().join("none.toml")).unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
    }
}
