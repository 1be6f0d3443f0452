//! Property test: random secret values planted in every form the rules
//! know, in random combinations and positions, with noise around them, and
//! cut by the kernel's 4 KiB limit (a real `ExecEvent`, decoded as the
//! agent decodes it) at a random byte inside one of them. No run of
//! [`MIN_LEAK`] characters of any value may be printed: in `args` or in
//! any `match`.

use monitor_common::{ARGS_LEN, EventKind, ExecEvent};
use proptest::{prelude::*, string::string_regex};

use super::*;
use crate::probes::{KernelEvent, decode};

/// The shortest run of a value whose appearance counts as a leak. Shorter
/// runs are shown by design: a token's fixed prefix (`AKIA`), and chance
/// (`ab` of a random value is anywhere).
const MIN_LEAK: usize = 6;

/// What a value may hold in a form: the characters the form lets a value
/// have without quoting it (a URL's password cannot hold `/` unescaped).
#[derive(Debug, Clone, Copy)]
enum Alphabet {
    /// A whole argument, or the end of one: anything.
    Any,
    /// To the end of a line.
    Line,
    /// Inside shell single quotes.
    Quoted,
    /// A URL's userinfo.
    Userinfo,
    /// `user:V@host` without a scheme.
    BareUserinfo,
    /// A query parameter, URL-encoded.
    Query,
    /// A `k=v` connection string or option list.
    ConnString,
}

impl Alphabet {
    fn strategy(self) -> BoxedStrategy<String> {
        let re = match self {
            Alphabet::Any => r"[\PC\t\n]{8,40}",
            Alphabet::Line => r"[\PC]{8,40}",
            Alphabet::Quoted => r"[\PC&&[^'\n]]{8,40}",
            Alphabet::Userinfo => r"[A-Za-z0-9._~!$&()*+,;=:@%-]{8,40}",
            Alphabet::BareUserinfo => r"[A-Za-z0-9._~!$&()*+=%-]{8,40}",
            Alphabet::Query => r"[A-Za-z0-9._~%+/=-]{8,40}",
            Alphabet::ConnString => r"[A-Za-z0-9._~!$*+/=:@%^-]{8,40}",
        };
        string_regex(re).expect("valid regex").boxed()
    }
}

/// Where a form may go in a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    /// Options and assignments of no particular program: anywhere before
    /// the programs (after one, its own option table applies).
    Generic,
    /// Starts with a program the table knows, and its options.
    Program,
    /// Depends on being the program's last argument (`htpasswd -b F U V`):
    /// last.
    Last,
}

/// A way to put a value on a command line.
struct Form {
    alphabet: Alphabet,
    place: Place,
    build: fn(&str) -> Vec<String>,
}

fn v(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

const ENV_NAMES: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "GITHUB_TOKEN",
    "DB_PASSWORD",
    "PGPASSWORD",
    "MYSQL_PWD",
    "OPENAI_API_KEY",
    "APP_SECRET",
    "VAULT_TOKEN",
];

const FORMS: &[Form] = &[
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| v(&["--password", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| vec![format!("--password={x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| v(&["-password", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| v(&["--db-password", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| vec![format!("--api_key={x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| v(&["--client-secret", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| v(&["--token", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| v(&["--auth", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| vec!["--passwd".into(), format!("-{x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| vec![format!("-Djavax.net.ssl.keyStorePassword={x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| vec!["-e".into(), format!("ansible_password={x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| vec![format!("{}={x}", ENV_NAMES[x.len() % ENV_NAMES.len()])],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Generic,
        build: |x| {
            vec![
                "env".into(),
                format!("{}={x}", ENV_NAMES[x.len() % ENV_NAMES.len()]),
                "true".into(),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Line,
        place: Place::Generic,
        build: |x| vec!["-e".into(), format!("password: {x}")],
    },
    Form {
        alphabet: Alphabet::Userinfo,
        place: Place::Generic,
        build: |x| vec![format!("https://ana:{x}@host.example/path")],
    },
    Form {
        alphabet: Alphabet::Userinfo,
        place: Place::Generic,
        build: |x| vec![format!("redis://:{x}@cache:6379/0")],
    },
    Form {
        alphabet: Alphabet::BareUserinfo,
        place: Place::Generic,
        build: |x| vec![format!("ana:{x}@backup.example.com")],
    },
    Form {
        alphabet: Alphabet::Query,
        place: Place::Generic,
        build: |x| vec![format!("https://api.example/v1?token={x}&page=2")],
    },
    Form {
        alphabet: Alphabet::Query,
        place: Place::Generic,
        build: |x| vec![format!("https://b.s3.example/k?X-Amz-Signature={x}")],
    },
    Form {
        alphabet: Alphabet::ConnString,
        place: Place::Generic,
        build: |x| vec![format!("Server=db;User Id=sa;Password={x};Database=shop")],
    },
    Form {
        alphabet: Alphabet::ConnString,
        place: Place::Generic,
        build: |x| vec![format!("jdbc:postgresql://db/shop?user=app&password={x}")],
    },
    Form {
        alphabet: Alphabet::Quoted,
        place: Place::Generic,
        build: |x| {
            vec![
                "sh".into(),
                "-c".into(),
                format!("cd /srv && DB_PASSWORD='{x}' ./run"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Quoted,
        place: Place::Generic,
        build: |x| {
            vec![
                "sh".into(),
                "-c".into(),
                format!("mysql -uroot -p'{x}' shop < dump.sql"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Quoted,
        place: Place::Generic,
        build: |x| {
            vec![
                "bash".into(),
                "-c".into(),
                format!("curl -su admin:'{x}' https://x | jq ."),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Quoted,
        place: Place::Generic,
        build: |x| {
            vec![
                "ssh".into(),
                "web1".into(),
                format!("redis-cli -a '{x}' info"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Quoted,
        place: Place::Program,
        build: |x| {
            vec![
                "psql".into(),
                "-c".into(),
                format!("ALTER USER app PASSWORD '{x}'"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| vec!["mysql".into(), format!("-p{x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| vec!["mariadb".into(), format!("--password={x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["sshpass", "-p", x, "ssh", "host"]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["redis-cli", "-a", x, "ping"]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| vec!["curl".into(), "-u".into(), format!("admin:{x}")],
    },
    Form {
        alphabet: Alphabet::Line,
        place: Place::Program,
        build: |x| {
            vec![
                "curl".into(),
                "-H".into(),
                format!("Authorization: Bearer {x}"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Line,
        place: Place::Program,
        build: |x| vec!["curl".into(), "-H".into(), format!("X-Api-Key: {x}")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| {
            vec![
                "curl".into(),
                "-d".into(),
                serde_json::json!({"client_id": "app", "client_secret": x}).to_string(),
            ]
        },
    },
    Form {
        alphabet: Alphabet::ConnString,
        place: Place::Program,
        build: |x| {
            vec![
                "psql".into(),
                format!("host=db user=app password={x} dbname=shop"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| {
            vec![
                "openssl".into(),
                "rsa".into(),
                "-passin".into(),
                format!("pass:{x}"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Line,
        place: Place::Program,
        build: |x| {
            vec![
                "git".into(),
                "-c".into(),
                format!("http.extraHeader=Authorization: Basic {x}"),
                "fetch".into(),
            ]
        },
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["docker", "login", "-u", "ci", "-p", x, "registry.example"]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["kubectl", "--token", x, "get", "pods"]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["aws", "configure", "set", "aws_secret_access_key", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["smbclient", "-U", &format!("ana%{x}"), "//fs/share"]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["ldapsearch", "-x", "-w", x, "-b", "dc=example"]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["keytool", "-list", "-storepass", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["zip", "-P", x, "out.zip"]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["mongosh", "-u", "admin", "-p", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| {
            vec![
                "sudo".into(),
                "-u".into(),
                "app".into(),
                "mysql".into(),
                format!("-p{x}"),
            ]
        },
    },
    Form {
        alphabet: Alphabet::BareUserinfo,
        place: Place::Program,
        build: |x| vec!["sqlplus".into(), "-s".into(), format!("scott/{x}@orcl")],
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Program,
        build: |x| v(&["vault", "login", x]),
    },
    Form {
        alphabet: Alphabet::Any,
        place: Place::Last,
        build: |x| v(&["htpasswd", "-b", "/etc/nginx/.htpasswd", "ana", x]),
    },
];

/// Token shapes: a fixed prefix and a random body of the shape's length.
const SHAPES: &[(&str, &str)] = &[
    ("AKIA", "[A-Z0-9]{16}"),
    ("ghp_", "[A-Za-z0-9]{36}"),
    ("glpat-", "[A-Za-z0-9_-]{20,30}"),
    ("xoxb-", "[A-Za-z0-9-]{12,40}"),
    ("sk_live_", "[A-Za-z0-9]{16,40}"),
    ("hvs.", "[A-Za-z0-9_-]{20,40}"),
    ("npm_", "[A-Za-z0-9]{36}"),
    ("sk-ant-", "[A-Za-z0-9_-]{20,40}"),
];

// `STRIPE_KEY`, `--key`, `--credentials`: a value that looks like a path is
// shown, by design; the unit tests hold those forms.

/// One planted value: the arguments it came in and the part that must not
/// show (a shape's body, not its prefix).
#[derive(Debug, Clone)]
struct Planted {
    words: Vec<String>,
    secret: String,
    place: Place,
}

fn form() -> impl Strategy<Value = Planted> {
    let forms = (0..FORMS.len()).prop_flat_map(|i| {
        let f = &FORMS[i];
        f.alphabet.strategy().prop_map(move |x| Planted {
            words: (f.build)(&x),
            secret: x,
            place: f.place,
        })
    });
    let shapes = (0..SHAPES.len(), 0..3usize).prop_flat_map(|(i, context)| {
        let (prefix, body) = SHAPES[i];
        string_regex(body).expect("valid regex").prop_map(move |b| {
            let token = format!("{prefix}{b}");
            let words = match context {
                0 => vec![token],
                1 => vec!["-H".into(), format!("Authorization: token {token}")],
                _ => vec![format!("https://example/x?q={token}")],
            };
            Planted {
                words,
                secret: b,
                place: Place::Generic,
            }
        })
    });
    let pem = string_regex("[A-Za-z0-9+/]{40,64}")
        .expect("valid regex")
        .prop_map(|body| Planted {
            words: vec![
                "--data".into(),
                format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"),
            ],
            secret: body,
            place: Place::Generic,
        });
    prop_oneof![8 => forms, 2 => shapes, 1 => pem]
}

/// Words that hold nothing secret, put between forms.
fn noise() -> impl Strategy<Value = Vec<String>> {
    let word = prop_oneof![
        Just("-v".to_string()),
        Just("--verbose".to_string()),
        Just("--".to_string()),
        Just("--output=/tmp/out.json".to_string()),
        Just("/etc/hosts".to_string()),
        Just("https://example.com/a/b".to_string()),
        Just("3f9c1e7a5b2d4c6e8f0a1b3c5d7e9f2a4b6c8d0e".to_string()),
        Just("-n".to_string()),
        string_regex("[a-z]{1,12}").expect("valid regex"),
    ];
    prop::collection::vec(word, 0..3)
}

/// A command line: `app`, forms in an order a command line can have, noise
/// between them; and, when `cut` is some, padding that puts the kernel's
/// 4 KiB cut inside the value of form `cut.0`, `cut.1` bytes in.
fn command_line() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    (
        prop::collection::vec((form(), noise()), 1..5),
        prop::option::of((any::<prop::sample::Index>(), any::<prop::sample::Index>())),
    )
        .prop_map(|(mut parts, cut)| {
            // After a program, its own option table applies, and the
            // generic forms assume none; a positional form must end.
            parts.sort_by_key(|(p, _)| p.place);
            if let Some(last) = parts.iter().position(|(p, _)| p.place == Place::Last) {
                parts.truncate(last + 1);
            }
            let n = parts.len();
            let mut argv = vec!["app".to_string()];
            for (i, (p, noise)) in parts.iter().enumerate() {
                argv.extend(p.words.iter().cloned());
                if i + 1 < n {
                    argv.extend(noise.iter().cloned());
                }
            }
            let secrets: Vec<String> = parts.iter().map(|(p, _)| p.secret.clone()).collect();
            if let Some((which, at)) = cut {
                pad_to_cut(&mut argv, &secrets[which.index(secrets.len())], at);
            }
            (argv, secrets)
        })
}

/// Insert a filler argument after argv[0] so that byte [`ARGS_LEN`] of the
/// NUL-separated argv falls inside `secret`.
fn pad_to_cut(argv: &mut Vec<String>, secret: &str, at: prop::sample::Index) {
    let joined = argv.join("\0");
    let Some(offset) = joined.find(secret) else {
        return;
    };
    let inside = 1 + at.index(secret.len().saturating_sub(1).max(1));
    // The filler and its NUL go before the value.
    let Some(filler) = ARGS_LEN.checked_sub(offset + inside + 1) else {
        return;
    };
    argv.insert(1, "f".repeat(filler));
}

/// `argv` as the kernel reports it: NUL-separated, cut at [`ARGS_LEN`]
/// bytes, in a real exec record decoded as the agent decodes it.
fn through_the_kernel(argv: &[String]) -> (Vec<String>, bool) {
    let mut bytes = Vec::new();
    for a in argv {
        bytes.extend_from_slice(a.as_bytes());
        bytes.push(0);
    }
    // SAFETY: ExecEvent is a plain #[repr(C)] struct of integers and byte
    // arrays, for which all zeroes is a valid value.
    let mut ev: ExecEvent = unsafe { std::mem::zeroed() };
    ev.header.kind = EventKind::Exec as u32;
    let n = bytes.len().min(ARGS_LEN);
    ev.args[..n].copy_from_slice(&bytes[..n]);
    ev.args_len = n as u32;
    ev.args_truncated = u32::from(bytes.len() > ARGS_LEN);
    // SAFETY: the bytes of a plain #[repr(C)] value, in a test.
    let record =
        unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<ExecEvent>()) };
    match decode(record) {
        Some(KernelEvent::Exec(exec)) => (exec.args, exec.args_truncated),
        other => panic!("not an exec: {other:?}"),
    }
}

/// Every run of [`MIN_LEAK`] characters of `secret` found in `printed`.
fn leaks(secret: &str, printed: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(MIN_LEAK)
        .map(|w| w.iter().collect::<String>())
        .find(|run| printed.contains(run.as_str()))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        max_shrink_iters: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_planted_value_is_printed((argv, secrets) in command_line()) {
        let (args, truncated) = through_the_kernel(&argv);
        let r = Redactor::default();
        let out = r.argv(&args, truncated);
        let printed = format!(
            "{}\n{}",
            out.args.join("\u{0}"),
            out.found.iter().map(|f| f.redacted.as_str()).collect::<Vec<_>>().join("\u{0}")
        );
        for secret in &secrets {
            if let Some(run) = leaks(secret, &printed) {
                prop_assert!(false, "{run:?} of {secret:?} printed\nargv: {argv:?}\nprinted: {printed}");
            }
        }
        prop_assert_eq!(out.args.len(), args.len());
    }

    #[test]
    fn any_argv_is_handled(argv in prop::collection::vec(r"[\PC\t\n\u{0}-\u{1f}]{0,60}", 0..12), truncated: bool) {
        for policy in [ArgsPolicy::Redacted, ArgsPolicy::None, ArgsPolicy::Full] {
            let out = Redactor::new(policy, &[]).argv(&argv, truncated);
            let expected = if policy == ArgsPolicy::None { 0 } else { argv.len() };
            prop_assert_eq!(out.args.len(), expected);
            prop_assert!(out.found.iter().all(|f| f.arg < argv.len()));
        }
    }
}
