//! Credential-file name rules the kernel applies to opens of files the
//! inventory does not know yet: `credentials` under `.aws/`, `*.pem`, ...

use monitor_common::{
    NameFilter, NameRule, RULE_NAME_LEN, RULE_PARENT_LEN, SUFFIX_RULES_MAX, SuffixRule,
};
use serde::Deserialize;

/// One rule, as written in config: exactly one of `name`, `prefix`,
/// `suffix`; `parent` and `not_suffix` narrow `name` and `prefix` rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NameRuleSpec {
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub parent: Option<String>,
    pub not_suffix: Option<String>,
}

/// The built-in rules, as data in the config's own syntax.
const DEFAULTS: &str = r#"
rules = [
    { name = "credentials", parent = ".aws" },
    { prefix = "id_", parent = ".ssh", not_suffix = ".pub" },
    { suffix = ".pem" },
    { suffix = ".key" },
    { name = ".env" },
    { name = ".netrc" },
    { name = ".pgpass" },
    { name = ".git-credentials" },
    { name = "config.json", parent = ".docker" },
    { name = "token", parent = "serviceaccount" },
]
"#;

pub fn defaults() -> Vec<NameRuleSpec> {
    #[derive(Deserialize)]
    struct Defaults {
        rules: Vec<NameRuleSpec>,
    }
    toml::from_str::<Defaults>(DEFAULTS)
        .expect("the built-in name rules parse")
        .rules
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadNameRule {
    #[error("name rule {0}: give exactly one of name, prefix, suffix")]
    Shape(usize),
    #[error(
        "name rule {0}: {1:?} is empty, has a / or NUL, or is too long (name/prefix < {RULE_NAME_LEN}, parent < {RULE_PARENT_LEN}, suffix and not_suffix <= 8 bytes)"
    )]
    Text(usize, String),
    #[error("name rule {0}: a suffix rule takes no parent or not_suffix")]
    SuffixExtras(usize),
    #[error("more than {SUFFIX_RULES_MAX} suffix rules")]
    TooManySuffixes,
}

/// What the kernel gets: the pre-filter, and the trie entries
/// (prefix length in bits, key bytes, rule).
pub struct CompiledRules {
    pub filter: NameFilter,
    pub trie: Vec<(u32, [u8; RULE_NAME_LEN], NameRule)>,
}

fn fixed<const N: usize>(i: usize, s: &str, max: usize) -> Result<[u8; N], BadNameRule> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > max || b.contains(&0) || b.contains(&b'/') {
        return Err(BadNameRule::Text(i, s.to_string()));
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

pub fn compile(specs: Vec<NameRuleSpec>) -> Result<CompiledRules, BadNameRule> {
    let mut filter = NameFilter::default();
    let mut trie = Vec::new();
    let mut suffixes = 0;
    for (i, spec) in specs.iter().enumerate() {
        let id = i as u32;
        match (&spec.name, &spec.prefix, &spec.suffix) {
            (Some(text), None, None) | (None, Some(text), None) => {
                let exact = spec.name.is_some();
                let key = fixed::<RULE_NAME_LEN>(i, text, RULE_NAME_LEN - 2)?;
                // Exact names keep their NUL so they match whole names only.
                let bytes = text.len() + usize::from(exact);
                let mut rule = NameRule {
                    id,
                    ..NameRule::default()
                };
                if let Some(parent) = &spec.parent {
                    rule.parent = fixed(i, parent, RULE_PARENT_LEN - 1)?;
                }
                if let Some(ns) = &spec.not_suffix {
                    rule.not_suffix = fixed(i, ns, 8)?;
                    rule.not_suffix_len = ns.len() as u32;
                }
                let first = text.as_bytes()[0];
                filter.first_bytes[usize::from(first >> 6)] |= 1 << (first & 63);
                trie.push(((bytes * 8) as u32, key, rule));
            }
            (None, None, Some(suffix)) => {
                if spec.parent.is_some() || spec.not_suffix.is_some() {
                    return Err(BadNameRule::SuffixExtras(i));
                }
                let slot = filter
                    .suffixes
                    .get_mut(suffixes)
                    .ok_or(BadNameRule::TooManySuffixes)?;
                *slot = SuffixRule {
                    len: suffix.len() as u32,
                    id,
                    bytes: fixed(i, suffix, 8)?,
                };
                suffixes += 1;
            }
            _ => return Err(BadNameRule::Shape(i)),
        }
    }
    Ok(CompiledRules { filter, trie })
}

/// The built-in rules and those of config.
pub fn rules(extra: &[NameRuleSpec]) -> Result<CompiledRules, BadNameRule> {
    let mut all = defaults();
    all.extend_from_slice(extra);
    compile(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compile() {
        let c = rules(&[]).unwrap();
        assert_eq!(c.trie.len(), 8);
        assert_eq!(c.filter.suffixes.iter().filter(|s| s.len > 0).count(), 2);
        let creds = c
            .trie
            .iter()
            .find(|(_, k, _)| k.starts_with(b"credentials"))
            .unwrap();
        assert_eq!(creds.0, 12 * 8, "exact names include their NUL");
        assert_eq!(&creds.2.parent[..5], b".aws\0");
        let id = c
            .trie
            .iter()
            .find(|(_, k, _)| k.starts_with(b"id_"))
            .unwrap();
        assert_eq!(id.0, 3 * 8, "prefixes do not");
        assert_eq!(id.2.not_suffix_len, 4);
        for b in *b"ci.t" {
            assert_ne!(
                c.filter.first_bytes[usize::from(b >> 6)] & (1 << (b & 63)),
                0
            );
        }
        assert_eq!(
            c.filter.first_bytes[usize::from(b'l' >> 6)] & (1 << (b'l' & 63)),
            0
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        let spec = |name: Option<&str>, suffix: Option<&str>, parent: Option<&str>| NameRuleSpec {
            name: name.map(str::to_string),
            suffix: suffix.map(str::to_string),
            parent: parent.map(str::to_string),
            ..NameRuleSpec::default()
        };
        assert_eq!(
            compile(vec![NameRuleSpec::default()]).err(),
            Some(BadNameRule::Shape(0))
        );
        assert!(matches!(
            compile(vec![spec(Some("a/b"), None, None)]),
            Err(BadNameRule::Text(0, _))
        ));
        assert!(matches!(
            compile(vec![spec(None, Some(".toolongsuffix"), None)]),
            Err(BadNameRule::Text(0, _))
        ));
        assert_eq!(
            compile(vec![spec(None, Some(".jks"), Some("x"))]).err(),
            Some(BadNameRule::SuffixExtras(0))
        );
        let many = (0..9)
            .map(|i| spec(None, Some(&format!(".s{i}")), None))
            .collect();
        assert_eq!(compile(many).err(), Some(BadNameRule::TooManySuffixes));
    }
}
