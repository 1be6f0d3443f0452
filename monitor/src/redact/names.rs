//! Whether a name says "secret": of an option (`--db-password`), a variable
//! (`AWS_SECRET_ACCESS_KEY`), a JSON key (`clientSecret`), a header
//! (`X-Api-Key`) or a query parameter (`sig`).
//!
//! A name is split into lower-case words (`keyStorePassword` → key, store,
//! password). It is secret when a word says so, unless its last word says
//! the value only points at the secret (`--password-file`, `--token-ttl`).

use globset::{Glob, GlobSet, GlobSetBuilder};

/// What a value named so is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass {
    /// Not known to be secret: the value is read as text.
    Plain,
    /// The value is a secret.
    Secret,
    /// A key or credentials, given inline or as a file: a value that looks
    /// like a path is shown (`--key ./tls.key`), anything else is not.
    SecretOrPath,
    /// An option that takes no value although its name says secret
    /// (`--no-password`, `--ask-pass`): the next argument is not its value.
    Switch,
}

/// Where a name was found: query strings and headers use a few more words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// An option, a variable, a key in JSON, YAML or `k=v` text.
    Name,
    /// A URL query or form parameter, or an HTTP header.
    Query,
}

/// Words that make a name secret wherever they are in it.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pass",
    "pwd",
    "pw",
    "secret",
    "secrets",
    "token",
    "apikey",
    "bearer",
    "jwt",
    "cookie",
    "otp",
    "totp",
    "mnemonic",
];

/// Words that make a name secret when they end it (`--basic-auth`,
/// `masterauth`), not before (`--auth-type`).
const SECRET_LAST_WORDS: &[&str] = &[
    "psk",
    "auth",
    "authorization",
    "signature",
    "sig",
    "pin",
    "sas",
];

/// More last words, in query strings and headers only (`?code=`, `?key=`).
const QUERY_LAST_WORDS: &[&str] = &["key", "code", "session", "sessionid", "sid", "ticket"];

/// Words inside one compound word (`PGPASSWORD`, `keystorepassword`);
/// `secret` and `token` only end one (`clientsecret`, `accesstoken`), as
/// `secretmon` and `tokenizer` are none.
const SECRET_STEMS: &[&str] = &["password", "passwd", "passphrase", "apikey", "bearer"];

/// A compound word ending so is secret (`storepass`, `requirepass`,
/// `masterauth`), unless it is one of [`NOT_SECRET_COMPOUNDS`].
const SECRET_ENDINGS: &[&str] = &["pass", "pwd", "auth", "token", "secret", "apikey"];
const NOT_SECRET_COMPOUNDS: &[&str] = &[
    "bypass",
    "compass",
    "surpass",
    "trespass",
    "overpass",
    "underpass",
    "oauth",
    "noauth",
    "subpass",
    "sshpass",
];

/// Words after `key` that make it a secret key rather than a key file.
const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "secret",
    "access",
    "auth",
    "master",
    "encryption",
    "encrypt",
    "decryption",
    "signing",
    "sign",
    "license",
    "licence",
    "subscription",
    "account",
    "storage",
    "shared",
    "psk",
    "session",
    "hmac",
    "admin",
    "root",
    "app",
    "service",
    "sse",
    "customer",
    "write",
    "read",
    "ingest",
    "deploy",
];

/// Words whose value is a key or credentials inline, or a file holding
/// them.
const SECRET_OR_PATH_WORDS: &[&str] = &[
    "key",
    "credential",
    "credentials",
    "creds",
    "cred",
    "privatekey",
];

/// A last word that makes the value a reference to the secret, or a
/// property of it, not the secret (`--password-file`, `--token-ttl`).
const REFERENCE_WORDS: &[&str] = &[
    "file",
    "files",
    "filename",
    "path",
    "paths",
    "dir",
    "directory",
    "folder",
    "stdin",
    "fd",
    "env",
    "envvar",
    "var",
    "variable",
    "cmd",
    "command",
    "helper",
    "prompt",
    "program",
    "script",
    "id",
    "ids",
    "name",
    "names",
    "type",
    "kind",
    "length",
    "len",
    "size",
    "ttl",
    "lifetime",
    "expiry",
    "expires",
    "expiration",
    "expire",
    "timeout",
    "policy",
    "mode",
    "format",
    "algo",
    "algorithm",
    "method",
    "mechanism",
    "provider",
    "source",
    "store",
    "manager",
    "hint",
    "required",
    "require",
    "reset",
    "min",
    "max",
    "count",
    "rotation",
    "version",
    "header",
    "field",
    "column",
    "location",
    "url",
    "uri",
    "dsn",
    "endpoint",
    "host",
    "server",
    "user",
    "username",
    "login",
    "audience",
    "scope",
    "scopes",
    "issuer",
    "realm",
    "prefix",
    "suffix",
    "pattern",
    "regex",
    "label",
    "description",
    "ref",
    "arn",
    "jar",
    "output",
    "out",
    "dump",
    "cache",
    "handle",
    "generator",
    "generate",
    "check",
    "strength",
    "complexity",
    "domain",
    "fds",
    "authentication",
];

/// A word ending so is a reference too (`passwordfile`, `tokenfile`).
const REFERENCE_ENDINGS: &[&str] = &[
    "file", "path", "dir", "fd", "env", "stdin", "cmd", "command",
];

/// A first word that makes a secret-named option a switch.
const SWITCH_PREFIXES: &[&str] = &[
    "no", "ask", "prompt", "skip", "without", "disable", "enable", "use", "show", "hide", "reset",
    "require", "forget", "clear", "change", "generate",
];

/// Names that are a password in a connection string (`PWD=`) and the
/// working directory in an environment (`PWD=/home/ana`).
const PATH_OR_SECRET_NAMES: &[&str] = &["pwd", "oldpwd"];

/// `true`, `false` and their kin: a secret-named option or variable set so
/// is a switch, and shows no secret (`--anonymous-auth=false`).
pub fn is_switch_value(value: &str) -> bool {
    ["true", "false", "yes", "no", "on", "off"]
        .iter()
        .any(|b| value.eq_ignore_ascii_case(b))
}

/// The lower-case words of a name: split at anything not a letter or
/// digit, at lower→upper case changes (`keyStore`), before the last capital
/// of a capital run followed by a lower-case letter (`HTTPServer`), and
/// between letters and digits (`oauth2`). Digit-only words are dropped.
pub fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            push_word(&mut out, &mut word);
            continue;
        }
        if let Some(&prev) = i.checked_sub(1).and_then(|j| chars.get(j)) {
            let next = chars.get(i + 1).copied();
            let boundary = (prev.is_ascii_lowercase() && c.is_ascii_uppercase())
                || (prev.is_ascii_uppercase()
                    && c.is_ascii_uppercase()
                    && next.is_some_and(|n| n.is_ascii_lowercase()))
                || (prev.is_ascii_digit() != c.is_ascii_digit() && prev.is_ascii_alphanumeric());
            if boundary {
                push_word(&mut out, &mut word);
            }
        }
        word.push(c.to_ascii_lowercase());
    }
    push_word(&mut out, &mut word);
    out
}

fn push_word(out: &mut Vec<String>, word: &mut String) {
    if !word.is_empty() && !word.bytes().all(|b| b.is_ascii_digit()) {
        out.push(std::mem::take(word));
    }
    word.clear();
}

/// Classify `name` (an option with its dashes, a variable, a key).
pub fn classify(name: &str, context: Context) -> NameClass {
    let words = words(name);
    let Some(last) = words.last().map(String::as_str) else {
        return NameClass::Plain;
    };
    if words.len() == 1 && PATH_OR_SECRET_NAMES.contains(&last) {
        return NameClass::SecretOrPath;
    }
    let secret_word = |w: &str| SECRET_WORDS.contains(&w) || is_secret_compound(w);
    let any_secret = words.iter().any(|w| secret_word(w));
    let class = if is_reference(last) {
        // `secret_id` (Vault AppRole) is the secret half of a pair.
        if last == "id" && words.len() >= 2 && words[words.len() - 2] == "secret" {
            NameClass::Secret
        } else {
            NameClass::Plain
        }
    } else if SECRET_OR_PATH_WORDS.contains(&last) || (last.ends_with("key") && !secret_word(last))
    {
        let before = words.len().checked_sub(2).map(|i| words[i].as_str());
        if before.is_some_and(|w| KEY_QUALIFIERS.contains(&w) || secret_word(w))
            || (context == Context::Query && last == "key")
        {
            NameClass::Secret
        } else {
            NameClass::SecretOrPath
        }
    } else if secret_word(last)
        || SECRET_LAST_WORDS.contains(&last)
        || (context == Context::Query && QUERY_LAST_WORDS.contains(&last))
    {
        NameClass::Secret
    } else if any_secret {
        // A secret word not at the end, and an end that is no reference:
        // `DB_PASSWORD_PROD`, `--secret-string`, `--password-hash`.
        NameClass::Secret
    } else {
        NameClass::Plain
    };
    let switch = words.len() > 1 && SWITCH_PREFIXES.contains(&words[0].as_str());
    match class {
        NameClass::Secret | NameClass::SecretOrPath if switch => NameClass::Switch,
        other => other,
    }
}

fn is_reference(word: &str) -> bool {
    REFERENCE_WORDS.contains(&word)
        || REFERENCE_ENDINGS
            .iter()
            .any(|e| word.len() > e.len() && word.ends_with(e))
}

/// One word that holds a secret word: `pgpassword`, `storepass`.
fn is_secret_compound(word: &str) -> bool {
    if NOT_SECRET_COMPOUNDS.contains(&word) {
        return false;
    }
    SECRET_STEMS.iter().any(|s| word.contains(s))
        || SECRET_ENDINGS
            .iter()
            .any(|e| word.len() > e.len() && word.ends_with(e))
}

/// The catalog's secret environment variable names and patterns (and the
/// config's), which may name a secret no word gives away (`MYSQL_PWD` does,
/// `OPENAI_API_KEY` does; a config's `*_CREDS` may not).
#[derive(Debug, Clone)]
pub struct EnvNames(GlobSet);

impl EnvNames {
    /// `patterns` as the catalog writes them: `NAME` or `*_SUFFIX`. One that
    /// is no valid glob is left out: the catalog and the config checked them.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a String>) -> Self {
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            if let Ok(glob) = Glob::new(p) {
                set.add(glob);
            }
        }
        Self(set.build().unwrap_or_else(|_| GlobSet::empty()))
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name)
    }

    /// `class` of `name`, made secret when the name is one of these, unless
    /// it names where a secret is (`DATABASE_URL`: its value is read as a
    /// URL, whose password the URL rule hides).
    /// An option matches as the variable it spells (`--wallet-seed` as
    /// `WALLET_SEED`).
    pub fn upgrade(&self, name: &str, class: NameClass) -> NameClass {
        let bare = name.trim_start_matches('-');
        let reference = words(bare).last().is_some_and(|w| is_reference(w));
        let as_variable = bare.to_ascii_uppercase().replace(['-', '.'], "_");
        match class {
            NameClass::Plain if !reference && self.is_match(&as_variable) => NameClass::Secret,
            class => class,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_reader() {
        assert_eq!(words("keyStorePassword"), ["key", "store", "password"]);
        assert_eq!(words("--db-password"), ["db", "password"]);
        assert_eq!(
            words("AWS_SECRET_ACCESS_KEY"),
            ["aws", "secret", "access", "key"]
        );
        assert_eq!(words("HTTPServer2x"), ["http", "server", "x"]);
        assert_eq!(words("X-Amz-Signature"), ["x", "amz", "signature"]);
        assert_eq!(words("oauth2_token"), ["oauth", "token"]);
        assert!(words("--").is_empty());
    }

    #[test]
    fn secret_names() {
        use NameClass::*;
        let cases = [
            ("--password", Secret),
            ("-password", Secret),
            ("--passwd", Secret),
            ("--pass", Secret),
            ("--db-password", Secret),
            ("--api_key", Secret),
            ("--apiKey", Secret),
            ("--api-key", Secret),
            ("--client-secret", Secret),
            ("--token", Secret),
            ("--auth", Secret),
            ("--basic-auth", Secret),
            ("--oauth2-bearer", Secret),
            ("--secret-access-key", Secret),
            ("--secret-string", Secret),
            ("--password-hash", Secret),
            ("-storepass", Secret),
            ("-keypass", Secret),
            ("requirepass", Secret),
            ("masterauth", Secret),
            ("PGPASSWORD", Secret),
            ("MYSQL_PWD", Secret),
            ("AWS_SECRET_ACCESS_KEY", Secret),
            ("AWS_SESSION_TOKEN", Secret),
            ("DB_PASSWORD_PROD", Secret),
            ("client_secret", Secret),
            ("clientSecret", Secret),
            ("access_token", Secret),
            ("refresh_token", Secret),
            ("secret_id", Secret),
            ("Djavax.net.ssl.keyStorePassword", Secret),
            ("spring.datasource.password", Secret),
            ("_authToken", Secret),
            ("--license-key", Secret),
            ("--key", SecretOrPath),
            ("--private-key", SecretOrPath),
            ("--tls-key", SecretOrPath),
            ("--credentials", SecretOrPath),
            ("--creds", SecretOrPath),
            ("GOOGLE_APPLICATION_CREDENTIALS", SecretOrPath),
            ("--password-file", Plain),
            ("--passwordfile", Plain),
            ("--password-stdin", Plain),
            ("--token-ttl", Plain),
            ("--auth-type", Plain),
            ("--authenticationDatabase", Plain),
            ("--secret-name", Plain),
            ("--key-id", Plain),
            ("aws_access_key_id", Plain),
            ("--cookie-jar", Plain),
            ("PasswordAuthentication", Plain),
            ("--max-tokens", Plain),
            ("--tokenizer", Plain),
            ("--bypass", Plain),
            ("--passive", Plain),
            ("--compass", Plain),
            ("DATABASE_URL", Plain),
            ("PWD", SecretOrPath),
            ("OLDPWD", SecretOrPath),
            ("--verbose", Plain),
            ("secretmon", Plain),
            ("hmac", Plain),
            ("clientsecret", Secret),
            ("--secretkey", SecretOrPath),
            ("--output", Plain),
            ("--no-password", Switch),
            ("--ask-pass", Switch),
            ("--ask-password", Switch),
            ("--prompt-password", Switch),
        ];
        for (name, class) in cases {
            assert_eq!(classify(name, Context::Name), class, "{name}");
        }
    }

    #[test]
    fn query_words() {
        for name in [
            "sig",
            "X-Amz-Signature",
            "key",
            "code",
            "X-Amz-Security-Token",
        ] {
            assert_eq!(classify(name, Context::Query), NameClass::Secret, "{name}");
        }
        assert_eq!(classify("code", Context::Name), NameClass::Plain);
        assert_eq!(
            classify("X-Amz-Credential", Context::Query),
            NameClass::SecretOrPath
        );
        assert_eq!(classify("X-Amz-Date", Context::Query), NameClass::Plain);
    }

    #[test]
    fn env_names_from_the_catalog() {
        let names = EnvNames::new(&["OPENAI_API_KEY".to_string(), "*_CREDS".to_string()]);
        assert!(names.is_match("OPENAI_API_KEY"));
        assert!(names.is_match("MY_CREDS"));
        assert!(!names.is_match("HOME"));
        let urls = EnvNames::new(&["DATABASE_URL".to_string(), "*_CREDS".to_string()]);
        assert_eq!(
            urls.upgrade("DATABASE_URL", NameClass::Plain),
            NameClass::Plain
        );
        assert_eq!(
            urls.upgrade("--MY_CREDS", NameClass::Plain),
            NameClass::Secret
        );
    }
}
