//! Rules over a command's words in order: an option and its value (the next
//! word, or attached), `NAME=VALUE`, the per-program table, and command
//! strings (`sh -c "…"`) read as commands of their own.

use std::ops::Range;

use super::{
    Found, Hit, Redactor, Rule, entropy,
    names::{self, Context, NameClass},
    programs::{self, Program, Value},
    shell, text,
};

/// How deep command strings are read inside command strings
/// (`ssh h "sh -c 'mysql -pV'"` is two).
const MAX_DEPTH: usize = 3;

/// A token of a command: argv's are all words; a command string's may end
/// a command (`;`, `&&`) or redirect (`>`).
#[derive(Debug, Clone, Copy)]
pub enum Tok<'a> {
    Word(&'a str),
    Separator,
    Redirect,
}

/// What the next word is, when a previous one said so.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// A secret's value, by this rule.
    Value(Value, char, Rule),
    /// A key or credentials inline, or a file.
    SecretOrPath(Rule),
    /// A value that is not secret (a file): not a positional argument.
    Plain,
}

/// The program whose rules apply, and what its command has shown so far.
#[derive(Default)]
struct Command {
    program: Option<&'static Program>,
    positionals: Vec<String>,
    /// The letters of its short option clusters (`-bc` → `bc`).
    short_letters: String,
    /// The word index of its last positional argument.
    last_positional: Option<usize>,
}

/// Hits in each word of `tokens` (one [`Found`] per word, in order), in
/// the word's own coordinates.
pub fn walk(r: &Redactor, tokens: &[Tok<'_>], depth: usize) -> Vec<Found> {
    let words: Vec<&str> = tokens
        .iter()
        .filter_map(|t| match t {
            Tok::Word(w) => Some(*w),
            _ => None,
        })
        .collect();
    let mut found: Vec<Found> = words.iter().map(|_| Found::default()).collect();
    let mut cmd = Command::default();
    let mut pending: Option<Pending> = None;
    let mut k = 0;
    for tok in tokens {
        let word = match tok {
            Tok::Word(w) => *w,
            Tok::Separator => {
                cmd.finish(&words, &mut found);
                cmd = Command::default();
                pending = None;
                continue;
            }
            Tok::Redirect => {
                pending = Some(Pending::Plain);
                continue;
            }
        };
        match pending.take() {
            Some(Pending::Value(value, sep, rule)) => {
                push_value(&mut found[k], word, 0, value, sep, rule);
                found[k].value_of_previous = true;
            }
            Some(Pending::SecretOrPath(rule)) => {
                if !path_like(word) {
                    push_value(&mut found[k], word, 0, Value::Secret, ':', rule);
                }
                found[k].value_of_previous = true;
            }
            Some(Pending::Plain) => {}
            None => pending = cmd.word(r, &words, k, &mut found),
        }
        let f = &mut found[k];
        text::hits(word, r.shapes(), &r.env, &mut f.hits, &mut f.prefixes);
        if depth < MAX_DEPTH && is_command_string(word) {
            nested(r, word, depth, f);
        }
        k += 1;
    }
    cmd.finish(&words, &mut found);
    found
}

/// Read `word` as a command string, and add what its words hide, mapped
/// back to `word`.
fn nested(r: &Redactor, word: &str, depth: usize, f: &mut Found) {
    let lexed = shell::lex(word);
    let tokens: Vec<Tok<'_>> = lexed
        .iter()
        .map(|t| match t {
            shell::Token::Word(w) => Tok::Word(&w.text),
            shell::Token::Separator => Tok::Separator,
            shell::Token::Redirect => Tok::Redirect,
        })
        .collect();
    let inner = walk(r, &tokens, depth + 1);
    let inner_words = lexed.iter().filter_map(|t| match t {
        shell::Token::Word(w) => Some(w),
        _ => None,
    });
    for (w, found) in inner_words.zip(inner) {
        for hit in found.hits {
            f.hits.push(Hit::new(w.raw_range(hit.range), hit.rule));
        }
        for (start, len) in found.prefixes {
            let raw = w.raw_range(start..start + len);
            if word.get(raw.start..raw.start + len) == w.text.get(start..start + len) {
                f.prefixes.push((raw.start, len));
            }
        }
    }
}

/// A word a shell would split further: whitespace or a command separator.
fn is_command_string(word: &str) -> bool {
    word.bytes()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b';' | b'|' | b'&'))
}

impl Command {
    /// One word that no earlier word claimed: an option or a positional
    /// argument. Returns what the next word is, if this one says.
    fn word(
        &mut self,
        r: &Redactor,
        words: &[&str],
        k: usize,
        found: &mut [Found],
    ) -> Option<Pending> {
        let word = words[k];
        let f = &mut found[k];
        // `--` ends a program's options, but what follows is often another
        // program's (`kubectl exec pod -- mysql -pV`): options are read on.
        if let Some(p) = self.program
            && let Some((opt, attached)) = p.option(word, &self.positionals)
        {
            return match (opt.value, attached) {
                (Value::Switch, _) | (Value::Plain, Some(_)) | (Value::Attached, None) => None,
                (Value::Plain, None) => Some(Pending::Plain),
                (value, Some(at)) => {
                    push_value(f, word, at, value, opt.separator, Rule::ProgramFlag);
                    None
                }
                (value, None) => Some(Pending::Value(value, opt.separator, Rule::ProgramFlag)),
            };
        }
        if is_option(word) {
            return self.option(r, word, f);
        }
        self.positional(r, words, k, found)
    }

    /// A generic option: its name says whether its value is secret.
    fn option(&mut self, r: &Redactor, word: &str, f: &mut Found) -> Option<Pending> {
        if !word.starts_with("--") && word[1..].bytes().all(|b| b.is_ascii_alphanumeric()) {
            self.short_letters.push_str(&word[1..]);
        }
        let (name, value) = match word.find('=') {
            Some(eq) => (&word[..eq], Some(eq + 1)),
            None => (word, None),
        };
        match (class(r, name), value) {
            // `--anonymous-auth=false`: a switch's setting, not a secret.
            (_, Some(at)) if names::is_switch_value(&word[at..]) => None,
            (NameClass::Secret, Some(at)) => {
                push_value(f, word, at, Value::Secret, ':', Rule::SecretFlag);
                None
            }
            (NameClass::SecretOrPath, Some(at)) => {
                if !path_like(&word[at..]) {
                    push_value(f, word, at, Value::Secret, ':', Rule::SecretFlag);
                }
                None
            }
            (NameClass::Secret, None) => Some(Pending::Value(Value::Secret, ':', Rule::SecretFlag)),
            (NameClass::SecretOrPath, None) => Some(Pending::SecretOrPath(Rule::SecretFlag)),
            _ => None,
        }
    }

    fn positional(
        &mut self,
        r: &Redactor,
        words: &[&str],
        k: usize,
        found: &mut [Found],
    ) -> Option<Pending> {
        let word = words[k];
        let f = &mut found[k];
        // NAME=VALUE: `env DB_PASSWORD=V cmd`, `-var` values, `--set` ones.
        if let Some(eq) = word.find('=')
            && is_name(&word[..eq])
            && !names::is_switch_value(&word[eq + 1..])
        {
            match class(r, &word[..eq]) {
                NameClass::Secret => {
                    push_value(f, word, eq + 1, Value::Secret, ':', Rule::SecretAssignment)
                }
                NameClass::SecretOrPath if !path_like(&word[eq + 1..]) => {
                    push_value(f, word, eq + 1, Value::Secret, ':', Rule::SecretAssignment)
                }
                _ => {}
            }
        }
        let mut next = None;
        if let Some(p) = self.program {
            let index = self.positionals.len() + 1;
            for rule in &p.positionals {
                let applies = if rule.all {
                    true
                } else if let Some(i) = rule.index {
                    i == index
                } else if let Some(after) = &rule.after {
                    self.positionals
                        .iter()
                        .rposition(|w| programs::word_matches(after, w))
                        .is_some_and(|j| {
                            let nth = index - (j + 1);
                            if rule.rest {
                                nth > rule.skip
                            } else {
                                nth == rule.skip + 1
                            }
                        })
                } else {
                    false
                };
                // `vault kv put PATH k=V`: the path is no assignment.
                let assignment_without_value =
                    rule.value == Value::Assignment && !word.contains('=');
                if applies && !assignment_without_value {
                    push_value(f, word, 0, rule.value, ':', Rule::ProgramArgument);
                }
            }
            let settings = p.name_value.iter().any(|w| {
                self.positionals
                    .iter()
                    .any(|seen| seen.eq_ignore_ascii_case(w))
            });
            if settings && is_setting_name(word) && class(r, word) == NameClass::Secret {
                next = Some(Pending::Value(Value::Secret, ':', Rule::ProgramArgument));
            }
        }
        // A word naming a program in the table starts its rules (`sudo -u
        // app mysql -pV`), even one a rule hid: what follows is read as
        // that program's arguments, and hidden by its rules too.
        if let Some(p) = programs::lookup(word) {
            self.finish(words, found);
            *self = Command {
                program: Some(p),
                ..Command::default()
            };
            return None;
        }
        self.last_positional = Some(k);
        self.positionals.push(word.to_string());
        next
    }

    /// The command ended: a rule on its last positional argument applies.
    fn finish(&mut self, words: &[&str], found: &mut [Found]) {
        let (Some(p), Some(k)) = (self.program, self.last_positional) else {
            return;
        };
        for rule in p.positionals.iter().filter(|r| r.last) {
            if rule.when.is_none_or(|c| self.short_letters.contains(c)) {
                push_value(
                    &mut found[k],
                    words[k],
                    0,
                    rule.value,
                    ':',
                    Rule::ProgramArgument,
                );
            }
        }
        self.last_positional = None;
    }
}

/// `-x`, `--name`, `--name=value`: one or two dashes, then a name that
/// starts with a letter and holds no space. `-----BEGIN PRIVATE KEY-----…`
/// and `-1` are positional arguments.
fn is_option(word: &str) -> bool {
    let name = word.split('=').next().unwrap_or(word);
    let bare = name.strip_prefix("--").or_else(|| name.strip_prefix('-'));
    bare.is_some_and(|n| {
        n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && !n.contains(|c: char| c.is_whitespace())
    })
}

/// The class of an option or variable name, the catalog's and config's
/// environment names included.
fn class(r: &Redactor, name: &str) -> NameClass {
    r.env.upgrade(name, names::classify(name, Context::Name))
}

/// The name of a setting (`user.password`, `aws_secret_access_key`,
/// npm's `//registry.example.com/:_authToken`), not a path.
fn is_setting_name(word: &str) -> bool {
    is_name(word) && (word.starts_with("//") || !(word.starts_with('/') || word.starts_with('.')))
}

/// A name, not text that happens to hold `=`: no space, quote or URL.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("://")
        && !s
            .bytes()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'?' | b'&'))
}

fn push_value(f: &mut Found, word: &str, at: usize, value: Value, sep: char, rule: Rule) {
    if let Some(range) = value_hit(&word[at..], value, sep) {
        f.hits
            .push(Hit::new(at + range.start..at + range.end, rule));
    }
}

/// The part of `value` that is secret, by the table's value kinds.
fn value_hit(value: &str, kind: Value, sep: char) -> Option<Range<usize>> {
    let all = (!value.is_empty()).then_some(0..value.len());
    match kind {
        Value::Switch | Value::Plain => None,
        Value::Secret | Value::Attached => all,
        Value::UserSecret => match value.find(sep) {
            // `user:` with nothing after: the user is the token (`curl -u
            // sk_live_…:`).
            Some(i) if i + sep.len_utf8() == value.len() => Some(0..i),
            Some(i) => Some(i + sep.len_utf8()..value.len()),
            None => None,
        },
        Value::OpensslPass => {
            if let Some(rest) = value.strip_prefix("pass:") {
                (!rest.is_empty()).then_some(5..value.len())
            } else if ["env:", "file:", "fd:"]
                .iter()
                .any(|p| value.starts_with(p))
                || value == "stdin"
            {
                None
            } else {
                all
            }
        }
        Value::Assignment => match value.find('=') {
            Some(i) => (i + 1 < value.len()).then_some(i + 1..value.len()),
            None => all,
        },
        Value::Cookie => value
            .find('=')
            .map(|i| i + 1..value.len())
            .filter(|r| !r.is_empty()),
        Value::SlashPassword => {
            // `user/SECRET@db`, or `userid=user/SECRET@db`.
            let body = value
                .find('=')
                .filter(|&i| !value[..i].contains('/'))
                .map_or(0, |i| i + 1);
            let slash = body + value[body..].find('/')?;
            let user = &value[body..slash];
            if user.is_empty() || user.contains(|c: char| c == '@' || c.is_whitespace()) {
                return None;
            }
            let end = value[slash..].find('@').map_or(value.len(), |i| slash + i);
            (end > slash + 1).then_some(slash + 1..end)
        }
    }
}

/// Noisy characters that make a path-looking value a key (`/K7MDENG/bPx…`).
const MIN_NOISY_PATH: usize = 8;

/// A value that names a file rather than holding a secret: `./tls.key`,
/// `/etc/ssl/private/x.pem`, `~/.ssh/id_ed25519`, `@body.json`, `key.pem`.
pub fn path_like(value: &str) -> bool {
    const EXTENSIONS: &[&str] = &[
        "pem", "key", "crt", "cer", "json", "p12", "pfx", "jks", "der", "txt", "asc", "gpg", "pub",
        "enc", "yaml", "yml", "conf", "cfg", "ini", "env", "kdbx", "keystore", "bks", "ppk", "csr",
    ];
    let path_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/~@+:%,=-".contains(&b));
    // A key that starts with `/` (base64 does, one time in 64) is noise.
    if value.is_empty()
        || !path_chars
        || !entropy::credential_runs(value, MIN_NOISY_PATH).is_empty()
    {
        return false;
    }
    if ["/", "./", "../", "~/", "@", "file:"]
        .iter()
        .any(|p| value.starts_with(p))
    {
        return true;
    }
    value.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
            && stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    })
}
