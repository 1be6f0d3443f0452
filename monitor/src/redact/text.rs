//! Rules that find a secret inside any text, whatever argument it is: token
//! shapes, private key blocks, URL userinfo, and secret-named keys in query
//! strings, headers, JSON, YAML and `k=v;k=v` connection strings.

use std::{ops::Range, sync::LazyLock};

use regex::Regex;

use super::{
    Hit, Rule,
    names::{self, Context, NameClass},
};
use crate::inventory::catalog::Shape;

/// `scheme://`: an authority follows.
static SCHEME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b[a-z][a-z0-9+.-]*://").expect("valid regex"));

/// `user:password@host` without a scheme (`redis-cli -u`, rsync, ssh-ish
/// tools): at the start of the text or after a separator.
static BARE_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?:^|[\s,;'"(=])[A-Za-z0-9._%+~-]*:([^\s@/:]+)@[A-Za-z0-9._-]+"#)
        .expect("valid regex")
});

/// A key, bare or quoted, and its separator: `password=`, `"token": `,
/// `Authorization: `, `X-Api-Key:`, `--db-pass=`.
static KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?P<q>["']?)(?P<key>-{0,2}[A-Za-z_$@][A-Za-z0-9_.$\[\]-]*)["']?[ \t]*(?P<sep>:=|=|:)[ \t]*"#,
    )
    .expect("valid regex")
});

/// SQL that sets a password: `PASSWORD 'V'`, `PASSWORD = "V"`,
/// `IDENTIFIED BY V`, `IDENTIFIED WITH plugin BY 'V'`.
static SQL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b(?:password\s*(?:=\s*)?(?:'(?P<a>(?:[^']|'')*)|"(?P<b>[^"]*))|identified\s+(?:with\s+\S+\s+)?by\s+(?:password\s+)?(?:'(?P<c>(?:[^']|'')*)|"(?P<d>[^"]*)|(?P<e>[^\s;,)'"]+)))"#,
    )
    .expect("valid regex")
});

/// The rest of a private key block: its body goes with its header.
static PEM_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"-----END [A-Z0-9 ]*-----").expect("valid regex"));

/// Every secret the text rules find in `text`, and the safe prefixes
/// (`AKIA`) of token shapes as (start, length).
pub fn hits(
    text: &str,
    shapes: &[Shape],
    env: &names::EnvNames,
    hits: &mut Vec<Hit>,
    prefixes: &mut Vec<(usize, usize)>,
) {
    shape_hits(text, shapes, hits, prefixes);
    url_hits(text, hits);
    key_value_hits(text, env, hits);
    for c in SQL_PASSWORD.captures_iter(text) {
        if let Some(v) = ["a", "b", "c", "d", "e"].iter().find_map(|g| c.name(g))
            && !v.is_empty()
        {
            hits.push(Hit::new(v.range(), Rule::KeyValue));
        }
    }
}

fn shape_hits(
    text: &str,
    shapes: &[Shape],
    hits: &mut Vec<Hit>,
    prefixes: &mut Vec<(usize, usize)>,
) {
    for (i, shape) in shapes.iter().enumerate() {
        for m in shape.regex.find_iter(text.as_bytes()) {
            let hint = shape.hint(m.as_bytes());
            let keep = hint
                .strip_suffix('…')
                .filter(|p| m.as_bytes().starts_with(p.as_bytes()))
                .map_or(0, str::len);
            let mut end = m.end();
            let mut keep = keep;
            // A private key's header line is a label; its body runs to the
            // end line.
            if text[m.start()..m.end()].starts_with("-----BEGIN") {
                keep = m.len();
                end = PEM_END
                    .find_at(text, m.end())
                    .map_or(text.len(), |e| e.start());
            }
            if m.start() + keep < end {
                hits.push(Hit::new(m.start() + keep..end, Rule::Shape(i)));
                if keep > 0 && end == m.end() {
                    prefixes.push((m.start(), keep));
                }
            }
        }
    }
}

fn url_hits(text: &str, hits: &mut Vec<Hit>) {
    for m in SCHEME.find_iter(text) {
        let rest = &text[m.end()..];
        let authority_len = rest
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        if let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            let start = m.end() + colon + 1;
            hits.push(Hit::new(start..m.end() + at, Rule::UrlPassword));
        }
    }
    for c in BARE_USERINFO.captures_iter(text) {
        let password = c.get(1).expect("group 1");
        // Not a URL's own userinfo, found above with its scheme, nor an
        // image's tag and digest (`nginx:1.25@sha256:…`).
        let digest = ["@sha256:", "@sha512:"]
            .iter()
            .any(|d| text[password.end()..].starts_with(d));
        if !digest && !text[..password.start()].ends_with("//") {
            hits.push(Hit::new(password.range(), Rule::UrlPassword));
        }
    }
}

fn key_value_hits(text: &str, env: &names::EnvNames, hits: &mut Vec<Hit>) {
    let bytes = text.as_bytes();
    for c in KEY.captures_iter(text) {
        let whole = c.get(0).expect("group 0");
        let key = c.name("key").expect("key");
        // A key starts the text or follows a separator, not a word it is
        // part of (the `b` of `ab=`).
        if let Some(&before) = whole.start().checked_sub(1).and_then(|i| bytes.get(i))
            && (before.is_ascii_alphanumeric() || before == b'_')
        {
            continue;
        }
        let quoted = !c["q"].is_empty();
        let sep = &c["sep"];
        let before = whole.start().checked_sub(1).map(|i| bytes[i]);
        let query = matches!(before, Some(b'?' | b'&'));
        let header_like = sep == ":" && !quoted;
        // A header or YAML key starts a line or follows a space or an
        // opening: `user:` in `https://user:pw@host` is userinfo.
        if header_like
            && before.is_some_and(|b| {
                !matches!(
                    b,
                    b'\n' | b' ' | b'\t' | b'{' | b',' | b';' | b'(' | b'"' | b'\'' | b'='
                )
            })
        {
            continue;
        }
        // `scheme://`: a URL, not a key.
        if sep == ":" && text[whole.end()..].starts_with("//") {
            continue;
        }
        let context = if query || header_like {
            Context::Query
        } else {
            Context::Name
        };
        let name = key.as_str();
        let class = env.upgrade(name, names::classify(name, context));
        if !matches!(class, NameClass::Secret | NameClass::SecretOrPath) {
            continue;
        }
        let value = value_range(text, whole.end(), quoted, sep);
        let mut value = value.start..value.end;
        if value.is_empty() || names::is_switch_value(&text[value.clone()]) {
            continue;
        }
        if class == NameClass::SecretOrPath && super::argv::path_like(&text[value.clone()]) {
            continue;
        }
        let words = names::words(name);
        let last = words.last().map(String::as_str);
        let auth = matches!(last, Some("authorization" | "auth"));
        if auth {
            value.start = after_scheme(text, value.clone());
        }
        let rule = if query {
            Rule::UrlQuery
        } else if header_like && (auth || name.contains('-') || last == Some("cookie")) {
            Rule::AuthHeader
        } else {
            Rule::KeyValue
        };
        if !value.is_empty() {
            hits.push(Hit::new(value, rule));
        }
    }
}

/// Where the value after a key ends: a header's or YAML's (a bare key and
/// `:`) at the end of the line; any other at the first separator (a space,
/// `&`, `;`, `,`, a closing bracket) outside quotes, so that `"a b"c` is
/// one value.
fn value_range(text: &str, start: usize, key_quoted: bool, sep: &str) -> Range<usize> {
    let rest = &text[start..];
    if sep == ":" && !key_quoted {
        return start..start + rest.find(['\n', '\r']).unwrap_or(rest.len());
    }
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'&' | b';' | b',' | b'}' | b']' | b')' | b'#' => break,
            _ => i += 1,
        }
    }
    start..start + i.min(b.len())
}

/// `Bearer xyz`, `Basic xyz`: the scheme stays readable.
fn after_scheme(text: &str, value: Range<usize>) -> usize {
    let v = &text[value.clone()];
    let scheme_len = v
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(v.len());
    let spaces = v[scheme_len..].len() - v[scheme_len..].trim_start_matches([' ', '\t']).len();
    if scheme_len > 0 && scheme_len <= 24 && spaces > 0 && scheme_len + spaces < v.len() {
        value.start + scheme_len + spaces
    } else {
        value.start
    }
}
