//! What a process says about itself on its command line, its `comm` and a
//! memfd's name, made safe to print: fail closed. Every argument goes
//! through every rule, and a part any rule calls secret is cut to at most a
//! safe prefix (`--password=…`, `AKIA…`, `postgres://app:…@db`).
//!
//! The rules, narrowest first:
//! - token shapes (the catalog's `[[shape]]`, keeping their fixed prefix)
//!   and private key blocks;
//! - the per-program table (`programs.toml`): `mysql -pV`, `sshpass -p V`,
//!   `curl -u user:V`, `openssl -passin pass:V`, `htpasswd -b F U V`…;
//! - options whose name says secret, in every spelling (`--password=V`,
//!   `--password V`, `-password V`, `--db-password`, `--apiKey`), the value
//!   taken whatever it starts with (`--password -V`);
//! - `NAME=VALUE` whose name says secret, or is one of the catalog's (and
//!   the config's) secret environment variable names;
//! - HTTP auth headers (`Authorization: Bearer V`, `X-Api-Key: V`,
//!   `Cookie:`), URL userinfo (`scheme://user:V@host`, `user:V@host`),
//!   query and form parameters (`?token=V`, `sig=`, `X-Amz-Signature=`),
//!   and secret keys in JSON, YAML and `k=v;k=v` text;
//! - command strings (`sh -c "…"`, `ssh host "…"`) read as commands;
//! - a high-entropy fallback ([`entropy`]) for a credential in no context.
//!
//! The last argument of a command line the kernel cut at 4 KiB is unknown,
//! and hidden whole.

mod argv;
pub mod entropy;
mod names;
mod programs;
mod shell;
mod text;

use std::{ops::Range, sync::LazyLock};

use serde::{Deserialize, Serialize};

use crate::inventory::{
    catalog::{Catalog, Shape},
    settings::Settings,
};

const ELLIPSIS: &str = "…";

/// How much of a command line events show (`[process] args`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ArgsPolicy {
    /// Every argument, with what the rules call secret cut out.
    #[default]
    Redacted,
    /// No arguments at all (`args` is empty).
    None,
    /// Arguments as the process passed them, secrets included. Events are
    /// then as sensitive as the secrets on the host's command lines.
    Full,
}

/// `[process]`: what events show of a process.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessSettings {
    /// `redacted` (default), `none` or `full`.
    pub args: ArgsPolicy,
}

/// One secret found in argv.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArgSecret {
    /// The rule that found it: a token shape (`aws_access_key_id`,
    /// `github_token`), `program_flag`, `program_argument`, `secret_flag`,
    /// `secret_assignment`, `auth_header`, `url_password`, `url_query`,
    /// `key_value` or `high_entropy`.
    pub kind: String,
    /// The redacted text, e.g. `AKIA…`, `--token …` or
    /// `postgres://app:…@db`.
    #[serde(rename = "match")]
    pub redacted: String,
    /// Index in argv.
    pub arg: usize,
}

/// argv made safe to print, and the secrets found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactedArgs {
    pub args: Vec<String>,
    pub found: Vec<ArgSecret>,
}

/// Which rule found a secret; the order is the order of precedence when
/// two rules find the same part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    /// A catalog shape, by index.
    Shape(usize),
    ProgramFlag,
    ProgramArgument,
    SecretFlag,
    SecretAssignment,
    AuthHeader,
    UrlPassword,
    UrlQuery,
    KeyValue,
    HighEntropy,
    /// The cut end of a truncated argv: unknown, not known to be secret.
    Truncated,
}

/// A part of a word that must not be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hit {
    range: Range<usize>,
    rule: Rule,
}

impl Hit {
    fn new(range: Range<usize>, rule: Rule) -> Self {
        Self { range, rule }
    }
}

/// What the rules found in one word.
#[derive(Debug, Default)]
struct Found {
    hits: Vec<Hit>,
    /// Safe prefixes of token shapes, (start, length): a hidden part that
    /// starts there shows them.
    prefixes: Vec<(usize, usize)>,
    /// The word is the value of the word before (`--token` `V`).
    value_of_previous: bool,
}

/// Residual length of a run the entropy fallback judges in argv.
const MIN_CREDENTIAL_LEN: usize = 16;
/// The same in a `comm` or memfd name, which hold at most 15 and 249
/// bytes: a cut credential is shorter.
const MIN_CREDENTIAL_LEN_IN_NAME: usize = 8;
/// Bytes of context a `match` shows before the hidden part.
const MATCH_CONTEXT: usize = 40;

/// The built-in catalog: its shapes and secret environment variable names.
/// It is part of the binary, and its own tests and the agent's start (which
/// fails on a bad one) check it; without it the other rules still apply.
static CATALOG: LazyLock<Option<Catalog>> =
    LazyLock::new(|| Catalog::new(&Settings::default()).ok());

/// The redaction rules, with the policy and the config's extra secret
/// environment variable names.
#[derive(Debug, Clone)]
pub struct Redactor {
    policy: ArgsPolicy,
    env: names::EnvNames,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(ArgsPolicy::default(), &[])
    }
}

impl Redactor {
    /// `extra_env_names`: the config's `env_names` (`NAME` or `*_SUFFIX`),
    /// secret names besides the catalog's.
    pub fn new(policy: ArgsPolicy, extra_env_names: &[String]) -> Self {
        let builtin = CATALOG
            .as_ref()
            .map(Catalog::env_watch_names)
            .unwrap_or_default();
        Self {
            policy,
            env: names::EnvNames::new(builtin.iter().chain(extra_env_names)),
        }
    }

    fn shapes(&self) -> &'static [Shape] {
        CATALOG.as_ref().map(Catalog::shapes).unwrap_or_default()
    }

    /// argv as events show it under the policy, and the secrets in it
    /// (found whatever the policy). `truncated`: the kernel cut argv, so
    /// its last argument may be cut too.
    pub fn argv(&self, args: &[String], truncated: bool) -> RedactedArgs {
        let tokens: Vec<argv::Tok<'_>> = args.iter().map(|a| argv::Tok::Word(a)).collect();
        let mut found = argv::walk(self, &tokens, 0);
        if truncated
            && let (Some(last), Some(f)) = (args.last(), found.last_mut())
            && !last.is_empty()
        {
            f.hits.push(Hit::new(0..last.len(), Rule::Truncated));
        }
        let mut shown: Vec<String> = Vec::with_capacity(args.len());
        let mut secrets = Vec::new();
        for (i, (arg, mut f)) in args.iter().zip(found).enumerate() {
            fallback(arg, &mut f, MIN_CREDENTIAL_LEN);
            let regions = regions(arg, &f.hits);
            let (rendered, spans) = render(arg, &regions, &f.prefixes);
            for (region, span) in regions.iter().zip(spans) {
                let Some(kind) = self.kind(region.rule) else {
                    continue;
                };
                let redacted = match (self.policy, shown.last()) {
                    (ArgsPolicy::None, _) => ELLIPSIS.to_string(),
                    (_, Some(flag)) if f.value_of_previous && region.range == (0..arg.len()) => {
                        let start = floor(flag, flag.len().saturating_sub(MATCH_CONTEXT));
                        format!("{} {ELLIPSIS}", &flag[start..])
                    }
                    _ => match_text(&rendered, region, span),
                };
                secrets.push(ArgSecret {
                    kind,
                    redacted,
                    arg: i,
                });
            }
            shown.push(rendered);
        }
        let args = match self.policy {
            ArgsPolicy::Redacted => shown,
            ArgsPolicy::None => Vec::new(),
            ArgsPolicy::Full => args.to_vec(),
        };
        RedactedArgs {
            args,
            found: secrets,
        }
    }

    /// A thread's `comm` as events show it. `exec_name` is the name the
    /// kernel gave it at exec (the file's base name, cut to 15 bytes): that
    /// one is shown. Any other was set by the process (prctl, or a write to
    /// /proc/self/comm) and is treated as an argument would be; under
    /// `none` it is not shown.
    pub fn comm(&self, comm: &str, exec_name: Option<&str>) -> String {
        if self.policy == ArgsPolicy::Full || exec_name == Some(comm) {
            return comm.to_string();
        }
        if self.policy == ArgsPolicy::None {
            return ELLIPSIS.to_string();
        }
        self.name(comm)
    }

    /// An executable path as events show it: a memfd's name
    /// (`/memfd:NAME (deleted)`) is the process's own text, treated as a
    /// `comm` is; a path on a filesystem is shown as it is.
    pub fn exe(&self, exe: String) -> String {
        if self.policy == ArgsPolicy::Full {
            return exe;
        }
        let Some(name) = exe.strip_prefix("/memfd:") else {
            return exe;
        };
        let (name, deleted) = match name.strip_suffix(" (deleted)") {
            Some(n) => (n, " (deleted)"),
            None => (name, ""),
        };
        format!("/memfd:{}{deleted}", self.name(name))
    }

    /// A name a process chose: the rules of one argument, with a fallback
    /// for shorter credentials.
    fn name(&self, name: &str) -> String {
        let tokens = [argv::Tok::Word(name)];
        let mut found = argv::walk(self, &tokens, 0);
        let Some(mut f) = found.pop() else {
            return name.to_string();
        };
        fallback(name, &mut f, MIN_CREDENTIAL_LEN_IN_NAME);
        render(name, &regions(name, &f.hits), &f.prefixes).0
    }

    /// The `kind` a region's rule reports, if any: the cut end of argv is
    /// hidden, not reported.
    fn kind(&self, rule: Rule) -> Option<String> {
        let kind = match rule {
            Rule::Shape(i) => return self.shapes().get(i).map(|s| s.name.clone()),
            Rule::ProgramFlag => "program_flag",
            Rule::ProgramArgument => "program_argument",
            Rule::SecretFlag => "secret_flag",
            Rule::SecretAssignment => "secret_assignment",
            Rule::AuthHeader => "auth_header",
            Rule::UrlPassword => "url_password",
            Rule::UrlQuery => "url_query",
            Rule::KeyValue => "key_value",
            Rule::HighEntropy => "high_entropy",
            Rule::Truncated => return None,
        };
        Some(kind.to_string())
    }
}

/// The entropy fallback over what no other rule hid.
fn fallback(text: &str, f: &mut Found, min_len: usize) {
    for run in entropy::credential_runs(text, min_len) {
        let covered = f
            .hits
            .iter()
            .any(|h| h.range.start <= run.start && run.end <= h.range.end);
        if !covered {
            f.hits.push(Hit::new(run, Rule::HighEntropy));
        }
    }
}

/// The hidden parts of a word: hits merged where they touch, each with the
/// rule of highest precedence among them, widened to character boundaries.
fn regions(text: &str, hits: &[Hit]) -> Vec<Hit> {
    let mut hits: Vec<Hit> = hits
        .iter()
        .filter(|h| h.range.start < h.range.end)
        .map(|h| Hit::new(floor(text, h.range.start)..ceil(text, h.range.end), h.rule))
        .collect();
    hits.sort_by_key(|h| h.range.start);
    let mut out: Vec<Hit> = Vec::new();
    for h in hits {
        match out.last_mut() {
            Some(last) if h.range.start <= last.range.end => {
                last.range.end = last.range.end.max(h.range.end);
                last.rule = last.rule.min(h.rule);
            }
            _ => out.push(h),
        }
    }
    out
}

/// `text` with each region replaced by the safe prefix that starts it, if
/// any, and `…`; and where each region is in the result.
fn render(text: &str, regions: &[Hit], prefixes: &[(usize, usize)]) -> (String, Vec<Range<usize>>) {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::with_capacity(regions.len());
    let mut at = 0;
    for r in regions {
        out.push_str(&text[at..r.range.start]);
        let start = out.len();
        out.push_str(prefix_at(text, r, prefixes));
        out.push_str(ELLIPSIS);
        spans.push(start..out.len());
        at = r.range.end;
    }
    out.push_str(&text[at..]);
    (out, spans)
}

/// The safe prefix of a token shape that starts `region`, if one does and
/// fits in it.
fn prefix_at<'t>(text: &'t str, region: &Hit, prefixes: &[(usize, usize)]) -> &'t str {
    prefixes
        .iter()
        .find(|&&(start, len)| start == region.range.start && start + len <= region.range.end)
        .and_then(|&(start, len)| text.get(start..start + len))
        .unwrap_or("")
}

/// What `match` shows of a region, from the rendered word: a shape's hint
/// (`ghp_…`), else the hidden part with up to [`MATCH_CONTEXT`] bytes of
/// what is shown before it (`--password=…`, `Authorization: Bearer …`).
fn match_text(rendered: &str, region: &Hit, span: Range<usize>) -> String {
    let start = if matches!(region.rule, Rule::Shape(_)) && span.len() > ELLIPSIS.len() {
        span.start
    } else {
        floor(rendered, span.start.saturating_sub(MATCH_CONTEXT))
    };
    rendered[start..span.end].to_string()
}

fn floor(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
