//! Secret-shaped values on command lines: find them, and redact them to a
//! safe prefix before anything is printed.

use std::sync::LazyLock;

use regex::Regex;

/// One secret found in argv.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArgSecret {
    /// What it looks like, e.g. `aws_access_key`, `github_token`.
    pub kind: &'static str,
    /// The redacted text, e.g. `AKIA…` or `postgres://app:…@db`.
    #[serde(rename = "match")]
    pub redacted: String,
    /// Index in argv.
    pub arg: usize,
}

struct Shape {
    kind: &'static str,
    re: Regex,
    /// Bytes of the match that may be shown.
    keep: usize,
}

/// Token shapes with a fixed, recognisable prefix.
static SHAPES: LazyLock<Vec<Shape>> = LazyLock::new(|| {
    let shape = |kind, re: &str, keep| Shape {
        kind,
        re: Regex::new(re).expect("valid regex"),
        keep,
    };
    vec![
        shape("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 4),
        shape("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", 4),
        shape("github_token", r"\bgithub_pat_[A-Za-z0-9_]{22,}", 11),
        shape("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}", 6),
        shape("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", 5),
        shape("stripe_key", r"\bsk_live_[A-Za-z0-9]{16,}", 8),
        shape("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}", 4),
        shape("vault_token", r"\bhvs\.[A-Za-z0-9_-]{20,}", 4),
        shape(
            "jwt",
            r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            3,
        ),
        shape(
            "private_key",
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*",
            10,
        ),
    ]
});

/// `scheme://user:password@host`: the password goes.
static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)([^/\s@]+)(@)").expect("valid regex")
});

/// `--password=VALUE` and friends; `--password VALUE` is handled by index.
static SECRET_FLAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(--?(?:password|passwd|pass|token|secret|api-?key|access-?key|auth-?token|client-?secret)=)(.+)$")
        .expect("valid regex")
});

const ELLIPSIS: &str = "…";

/// Redact every secret-shaped part of `args`; return the redacted argv and
/// what was found.
pub fn redact_args(args: &[String]) -> (Vec<String>, Vec<ArgSecret>) {
    let mut out = Vec::with_capacity(args.len());
    let mut found = Vec::new();
    let mut value_follows = false;
    for (i, arg) in args.iter().enumerate() {
        if value_follows && !arg.starts_with('-') && !arg.is_empty() {
            value_follows = false;
            out.push(ELLIPSIS.to_string());
            found.push(ArgSecret {
                kind: "secret_flag",
                redacted: format!("{} {ELLIPSIS}", args[i - 1]),
                arg: i,
            });
            continue;
        }
        value_follows = is_secret_flag_name(arg);
        let (redacted, kinds) = redact_one(arg);
        for (kind, shown) in kinds {
            found.push(ArgSecret {
                kind,
                redacted: shown,
                arg: i,
            });
        }
        out.push(redacted);
    }
    (out, found)
}

fn is_secret_flag_name(arg: &str) -> bool {
    let name = arg.trim_start_matches('-').to_ascii_lowercase();
    arg.starts_with("--")
        && matches!(
            name.as_str(),
            "password" | "passwd" | "token" | "secret" | "api-key" | "apikey" | "client-secret"
        )
}

/// One argument, redacted, and the (kind, shown text) of each secret in it.
fn redact_one(arg: &str) -> (String, Vec<(&'static str, String)>) {
    let mut found = Vec::new();
    if let Some(c) = SECRET_FLAG.captures(arg) {
        let shown = format!("{}{ELLIPSIS}", &c[1]);
        found.push(("secret_flag", shown.clone()));
        return (shown, found);
    }
    let mut text = URL_PASSWORD
        .replace_all(arg, |c: &regex::Captures| {
            let shown = format!("{}{ELLIPSIS}{}", &c[1], &c[3]);
            found.push(("url_password", shown.clone()));
            shown
        })
        .into_owned();
    for shape in SHAPES.iter() {
        text = shape
            .re
            .replace_all(&text, |c: &regex::Captures| {
                let m = &c[0];
                let keep = floor_char_boundary(m, shape.keep);
                let shown = format!("{}{ELLIPSIS}", &m[..keep]);
                found.push((shape.kind, shown.clone()));
                shown
            })
            .into_owned();
    }
    (text, found)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn token_shapes_are_found_and_redacted() {
        let secrets = [
            ("AKIAFAKEFAKEFAKE0000", "aws_access_key", "AKIA…"),
            (
                "ghp_FAKEfakeFAKEfakeFAKEfakeFAKEfake0000",
                "github_token",
                "ghp_…",
            ),
            (
                "github_pat_FAKE0000fake1111FAKE2222",
                "github_token",
                "github_pat_…",
            ),
            ("glpat-FAKEfakeFAKEfake0000", "gitlab_token", "glpat-…"),
            ("xoxb-0000-FAKEfakeFAKE", "slack_token", "xoxb-…"),
            ("sk_live_FAKEfakeFAKEfake0000", "stripe_key", "sk_live_…"),
            (
                "AIzaFAKEfakeFAKEfakeFAKEfakeFAKEfake000",
                "google_api_key",
                "AIza…",
            ),
            ("hvs.FAKEfakeFAKEfakeFAKEfake", "vault_token", "hvs.…"),
            (
                "eyJhbGciOiJub25lIn0.eyJzdWIiOiJmYWtlIn0.c2ln",
                "jwt",
                "eyJ…",
            ),
        ];
        for (secret, kind, shown) in secrets {
            let (out, found) = redact_args(&argv(&[
                "curl",
                "-H",
                &format!("Authorization: Bearer {secret}"),
            ]));
            assert_eq!(found.len(), 1, "{secret}: {found:?}");
            assert_eq!(found[0].kind, kind);
            assert_eq!(found[0].redacted, shown);
            assert_eq!(found[0].arg, 2);
            assert_eq!(out[2], format!("Authorization: Bearer {shown}"));
            assert!(!out.join(" ").contains(secret));
        }
    }

    #[test]
    fn url_passwords_and_flags() {
        let (out, found) = redact_args(&argv(&[
            "psql",
            "postgres://app:Fake-Pass-0000@db.internal:5432/app",
            "--password=Fake-0001",
            "--token",
            "Fake-0002",
            "--verbose",
        ]));
        assert_eq!(out[1], "postgres://app:…@db.internal:5432/app");
        assert_eq!(out[2], "--password=…");
        assert_eq!(out[3], "--token");
        assert_eq!(out[4], "…");
        assert_eq!(out[5], "--verbose");
        let kinds: Vec<_> = found.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["url_password", "secret_flag", "secret_flag"]);
        let all = format!("{out:?}{found:?}");
        for planted in ["Fake-Pass-0000", "Fake-0001", "Fake-0002"] {
            assert!(!all.contains(planted), "{planted} leaked");
        }
    }

    #[test]
    fn ordinary_argv_is_untouched() {
        let args = argv(&[
            "git",
            "commit",
            "-m",
            "AKIA is a prefix",
            "--password-file=/x",
            "--token",
        ]);
        let (out, found) = redact_args(&args);
        assert_eq!(out, args);
        assert!(found.is_empty());
    }

    #[test]
    fn pem_on_the_command_line() {
        let (out, found) = redact_args(&argv(&[
            "x",
            "-----BEGIN PRIVATE KEY-----\nFAKE\n-----END PRIVATE KEY-----",
        ]));
        assert_eq!(found[0].kind, "private_key");
        assert_eq!(out[1], "-----BEGIN…");
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let long = "A".repeat(100_000);
        let (out, _) = redact_args(&argv(&[&long, "\u{1F600}\u{0}\n", "://:@", "--password="]));
        assert_eq!(out.len(), 4);
    }
}
