//! Which environment variables are secrets, by name. The kernel reports the
//! names of those a process starts with; values never leave it.

/// A watched name: exact, or `*_SUFFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvPattern {
    Exact(String),
    /// The part after `*`, starting with `_`.
    Suffix(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "environment variable pattern {0:?}: use NAME or *_SUFFIX (letters, digits and _, the suffix one or two _-words)"
)]
pub struct BadEnvPattern(pub String);

impl EnvPattern {
    pub fn parse(s: &str) -> Result<Self, BadEnvPattern> {
        let bad = || BadEnvPattern(s.to_string());
        let valid =
            |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match s.strip_prefix('*') {
            Some(suffix) => {
                // The kernel checks the text from a name's last or second
                // last `_`, so a suffix is `_WORD` or `_WORD_WORD`.
                let words: Vec<&str> = suffix.split('_').skip(1).collect();
                let well_formed = suffix.starts_with('_')
                    && valid(suffix)
                    && (1..=2).contains(&words.len())
                    && words.iter().all(|w| !w.is_empty());
                if !well_formed {
                    return Err(bad());
                }
                Ok(Self::Suffix(suffix.to_string()))
            }
            None if valid(s) => Ok(Self::Exact(s.to_string())),
            None => Err(bad()),
        }
    }
}

/// The catalog's names (its `[env]` section) plus `extra` from config.
pub fn watch_list(catalog: &[String], extra: &[String]) -> Result<Vec<EnvPattern>, BadEnvPattern> {
    catalog
        .iter()
        .chain(extra)
        .map(|s| EnvPattern::parse(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_names_parse() {
        let catalog = crate::inventory::catalog::Catalog::new(&Default::default()).unwrap();
        let list = watch_list(catalog.env_watch_names(), &["*_CREDS".into()]).unwrap();
        assert!(list.contains(&EnvPattern::Exact("GITHUB_TOKEN".into())));
        assert!(list.contains(&EnvPattern::Suffix("_API_KEY".into())));
        assert!(list.contains(&EnvPattern::Suffix("_DATABASE_URL".into())));
        assert!(list.contains(&EnvPattern::Suffix("_CREDS".into())));
    }

    #[test]
    fn patterns() {
        assert_eq!(
            EnvPattern::parse("MY_KEY"),
            Ok(EnvPattern::Exact("MY_KEY".into()))
        );
        assert_eq!(
            EnvPattern::parse("*_CREDS"),
            Ok(EnvPattern::Suffix("_CREDS".into()))
        );
        for bad in ["", "*", "*TOKEN", "*_A_B_C", "A=B", "A B", "*_"] {
            assert!(EnvPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
