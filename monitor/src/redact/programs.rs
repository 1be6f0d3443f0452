//! The per-program table (`programs.toml`): what the generic rules cannot
//! know about particular programs' options and positional arguments.

use std::{collections::HashMap, sync::LazyLock};

use serde::Deserialize;

const TABLE: &str = include_str!("programs.toml");

/// What an option's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Secret,
    Attached,
    Switch,
    Plain,
    UserSecret,
    OpensslPass,
    Assignment,
    Cookie,
    SlashPassword,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionRule {
    pub name: String,
    pub value: Value,
    #[serde(default = "colon")]
    pub separator: char,
    pub after: Option<String>,
}

fn colon() -> char {
    ':'
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionalRule {
    pub after: Option<String>,
    #[serde(default)]
    pub skip: usize,
    pub index: Option<usize>,
    #[serde(default)]
    pub rest: bool,
    #[serde(default)]
    pub last: bool,
    pub when: Option<char>,
    #[serde(default)]
    pub all: bool,
    #[serde(default = "secret")]
    pub value: Value,
}

fn secret() -> Value {
    Value::Secret
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    pub names: Vec<String>,
    #[serde(default)]
    pub options: Vec<OptionRule>,
    #[serde(default)]
    pub positionals: Vec<PositionalRule>,
    #[serde(default)]
    pub name_value: Vec<String>,
    #[serde(default)]
    pub single_dash_long: bool,
    /// Short options that take no value, which a cluster may hold before
    /// one that does (`curl -su user:V`).
    #[serde(default)]
    pub switches: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    program: Vec<Program>,
}

struct Index {
    programs: Vec<Program>,
    by_name: HashMap<String, usize>,
}

static INDEX: LazyLock<Index> = LazyLock::new(|| {
    // The table is part of the binary and checked by a unit test: a broken
    // one is a build defect, and no rules is the safe reading of it (the
    // generic rules still apply).
    let programs = toml::from_str::<Table>(TABLE)
        .map(|t| t.program)
        .unwrap_or_default();
    let by_name = programs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.names.iter().map(move |n| (n.clone(), i)))
        .collect();
    Index { programs, by_name }
});

/// The rules for the program `word` names (`/usr/bin/mysql`, `mysql`).
pub fn lookup(word: &str) -> Option<&'static Program> {
    let base = word.rsplit('/').next().unwrap_or(word);
    let index = &*INDEX;
    index.by_name.get(base).map(|&i| &index.programs[i])
}

impl OptionRule {
    /// Whether this option's subcommand condition holds, given the
    /// positional words seen so far.
    pub fn applies(&self, positionals: &[String]) -> bool {
        self.after
            .as_ref()
            .is_none_or(|w| positionals.iter().any(|p| p.eq_ignore_ascii_case(w)))
    }
}

impl Program {
    /// The option `word` is, and the byte where its attached value starts
    /// (`-pV` → 2, `--password=V` → 11), if any.
    pub fn option(
        &self,
        word: &str,
        positionals: &[String],
    ) -> Option<(&OptionRule, Option<usize>)> {
        self.options
            .iter()
            .filter(|o| o.applies(positionals))
            .find_map(|o| {
                let name = o.name.as_str();
                if word == name {
                    return Some((o, None));
                }
                let rest = word.strip_prefix(name)?;
                let attached =
                    if rest.starts_with('=') || (name.starts_with('/') && rest.starts_with(':')) {
                        name.len() + 1
                    } else if is_short(name) && !rest.is_empty() && !self.single_dash_long {
                        name.len()
                    } else {
                        return None;
                    };
                Some((o, Some(attached)))
            })
            .or_else(|| self.in_cluster(word, positionals))
    }

    /// A short option that takes a value at the end of a cluster of
    /// switches: `-su` is `-s -u`, `-sSuV` is `-s -S -u V`.
    fn in_cluster(
        &self,
        word: &str,
        positionals: &[String],
    ) -> Option<(&OptionRule, Option<usize>)> {
        let letters = word.strip_prefix('-').filter(|w| !w.starts_with('-'))?;
        if self.single_dash_long || self.switches.is_empty() {
            return None;
        }
        for (i, c) in letters.char_indices() {
            if self.switches.contains(c) {
                continue;
            }
            let short = format!("-{c}");
            let opt = self
                .options
                .iter()
                .find(|o| o.name == short && o.applies(positionals))?;
            let at = 1 + i + c.len_utf8();
            return Some((opt, (at < word.len()).then_some(at)));
        }
        None
    }
}

/// `-p`: one dash, one letter; its value may be attached (`-pV`).
fn is_short(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 2 && b[0] == b'-' && b[1].is_ascii_alphanumeric()
}

/// Whether `pattern` (a word, or a prefix ending in `*`) matches `word`.
pub fn word_matches(pattern: &str, word: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => word.starts_with(prefix),
        None => word.eq_ignore_ascii_case(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_names_are_unique() {
        let table: Table = toml::from_str(TABLE).expect("programs.toml");
        let mut seen = std::collections::HashSet::new();
        for p in &table.program {
            for n in &p.names {
                assert!(seen.insert(n.clone()), "{n} twice");
            }
            assert!(
                !p.options.is_empty() || !p.positionals.is_empty() || !p.name_value.is_empty(),
                "{:?}",
                p.names
            );
        }
        assert_eq!(INDEX.programs.len(), table.program.len());
    }

    #[test]
    fn options_attached_and_scoped() {
        let mysql = lookup("/usr/bin/mysql").unwrap();
        let (o, at) = mysql.option("-pS3cret", &[]).unwrap();
        assert_eq!((o.value, at), (Value::Attached, Some(2)));
        assert_eq!(mysql.option("-p", &[]).unwrap().1, None);
        assert!(mysql.option("--port", &[]).is_none());
        let curl = lookup("curl").unwrap();
        assert_eq!(curl.option("--user=a:b", &[]).unwrap().1, Some(7));
        let (o, at) = curl.option("-sSu", &[]).unwrap();
        assert_eq!((o.name.as_str(), at), ("-u", None));
        assert_eq!(curl.option("-suana:x", &[]).unwrap().1, Some(3));
        assert!(
            curl.option("-sX", &[]).is_none(),
            "-X takes a value that is no secret"
        );
        assert!(mysql.option("-uapp", &[]).is_none(), "-u takes the rest");
        let docker = lookup("docker").unwrap();
        assert!(
            docker.option("-p", &["run".into()]).is_none(),
            "-p publishes a port"
        );
        assert!(docker.option("-p", &["login".into()]).is_some());
        let openssl = lookup("openssl").unwrap();
        assert!(openssl.option("-key", &[]).is_none(), "not -k with `ey`");
        assert!(openssl.option("-k", &[]).is_some());
        let rdp = lookup("xfreerdp").unwrap();
        assert_eq!(rdp.option("/p:x", &[]).unwrap().1, Some(3));
        assert!(lookup("cat").is_none());
    }
}
