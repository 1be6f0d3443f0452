//! Reading the sources and merging them with figment: the main file, its
//! drop-ins, then the command line, each a figment provider whose metadata
//! names the file or the flag, so that an error and `secretmon config` can
//! say where a value came from.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use figment::{
    Figment, Metadata, Profile, Provider,
    error::Kind,
    value::{Dict, Map, Value},
};

use super::{DROP_IN_DIR, Settings};
use crate::secure_fs;

/// A configuration file larger than this is refused, not read.
/// The metadata name of every command-line layer.
const COMMAND_LINE: &str = "command line";

/// What to merge, besides the defaults.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The main file. When `required` is false (the default path) a missing
    /// file means "no settings"; a file named with `--config` must exist.
    pub main: PathBuf,
    pub required: bool,
    /// The command line's settings, one layer per flag.
    pub command_line: Vec<Layer>,
}

/// One setting given on the command line.
#[derive(Debug, Clone)]
pub struct Layer {
    /// As the user typed it: `--opens`, `--set findings.interval`.
    pub flag: String,
    /// The setting's dotted key.
    pub key: String,
    pub value: Value,
}

impl Layer {
    pub fn new(flag: impl Into<String>, key: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            flag: flag.into(),
            key: key.into(),
            value: value.into(),
        }
    }

    /// `--set KEY=VALUE`: the value is read as TOML (`30`, `true`,
    /// `["a", "b"]`, `"text"`), and as a plain string when it is not TOML.
    pub fn parse_set(arg: &str) -> Result<Self, String> {
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}` is not KEY=VALUE"))?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .split('.')
                .all(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!(
                "`{key}` is not a setting's dotted key (e.g. findings.interval)"
            ));
        }
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => Value::serialize(t.remove("v")).map_err(|e| e.to_string())?,
            Err(_) => Value::from(raw.to_string()),
        };
        Ok(Self::new(format!("--set {key}"), key, value))
    }
}

/// The merged settings and what they were merged from.
pub struct Loaded {
    pub settings: Settings,
    /// The files read, in the order they were merged (later wins).
    pub files: Vec<PathBuf>,
    figment: Figment,
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// A file, and the line of the key in it when it can be found.
    File {
        path: PathBuf,
        line: Option<usize>,
    },
    CommandLine {
        flag: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Self::File { path, line: None } => write!(f, "{}", path.display()),
            Self::CommandLine { flag } => f.write_str(flag),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {}", crate::errors::error_text(err))]
    Read { path: String, err: io::Error },
    #[error("config {path}: {err}")]
    Untrusted {
        path: String,
        err: secure_fs::TrustError,
    },
    #[error("config {path}: not UTF-8")]
    NotUtf8 { path: String },
    #[error("config {path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config {at}: unknown key `{key}`{}", suggestion(.nearest))]
    UnknownKey {
        at: String,
        key: String,
        nearest: Option<String>,
    },
    #[error("config {at}: `{key}`: {message}")]
    Invalid {
        at: String,
        key: String,
        message: String,
    },
}

fn suggestion(nearest: &Option<String>) -> String {
    match nearest {
        Some(n) => format!(" (did you mean `{n}`?)"),
        None => String::new(),
    }
}

impl Sources {
    /// The default main file, no command-line settings.
    pub fn system() -> Self {
        Self {
            main: PathBuf::from(super::DEFAULT_CONFIG),
            required: false,
            command_line: Vec::new(),
        }
    }

    /// Merge the defaults, the main file, its drop-ins and the command line.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let mut files = Vec::new();
        match read_config_file(&self.main) {
            Ok(text) => files.push(ConfigFile::parse(self.main.clone(), text)?),
            Err(ConfigError::Untrusted { err, .. }) if err.is_not_found() && !self.required => {}
            Err(e) => return Err(e),
        }
        for path in drop_ins(&self.main)? {
            let text = read_config_file(&path)?;
            files.push(ConfigFile::parse(path, text)?);
        }
        let mut figment = Figment::new();
        for file in &files {
            figment = figment.merge(file);
        }
        for layer in &self.command_line {
            figment = figment.merge(layer);
        }
        let settings = figment
            .extract::<Settings>()
            .map_err(|e| explain(e, &files))?;
        Ok(Loaded {
            settings,
            files: files.into_iter().map(|f| f.path).collect(),
            figment,
        })
    }
}

impl Loaded {
    /// Where the effective value of `key` (dotted) came from.
    pub fn origin(&self, key: &str) -> Origin {
        let Some(meta) = self.figment.find_metadata(key) else {
            return Origin::Default;
        };
        match (&meta.source, meta.name.as_ref()) {
            (Some(figment::Source::File(path)), _) => Origin::File {
                line: fs::read_to_string(path)
                    .ok()
                    .and_then(|text| key_line(&text, &key_path(key))),
                path: path.clone(),
            },
            (Some(figment::Source::Custom(flag)), COMMAND_LINE) => {
                Origin::CommandLine { flag: flag.clone() }
            }
            _ => Origin::Default,
        }
    }
}

/// The drop-ins next to `main`: `config.d/*.toml`, in file-name order.
fn drop_ins(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = main
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join(DROP_IN_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(ConfigError::Read {
                path: dir.display().to_string(),
                err,
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// A configuration file's text: a regular file no larger than
/// [`secure_fs::CONFIG`] allows, owned by root or this user and writable by
/// nobody else, through directories nobody else can write (a config names
/// what is watched and where events go).
pub fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let shown = || path.display().to_string();
    let bytes = secure_fs::read_trusted(path, secure_fs::CONFIG)
        .map_err(|err| ConfigError::Untrusted { path: shown(), err })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ConfigError::NotUtf8 { path: shown() })
}

/// One parsed file, as a figment provider.
struct ConfigFile {
    path: PathBuf,
    text: String,
    data: Dict,
}

impl ConfigFile {
    fn parse(path: PathBuf, text: String) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.display().to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let data = match Value::serialize(table) {
            Ok(Value::Dict(_, dict)) => dict,
            _ => Dict::new(),
        };
        Ok(Self { path, text, data })
    }
}

impl Provider for &ConfigFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("config file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

impl Provider for &Layer {
    fn metadata(&self) -> Metadata {
        Metadata::from(COMMAND_LINE, figment::Source::Custom(self.flag.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        figment::providers::Serialized::default(&self.key, &self.value).data()
    }
}

/// A figment error as one line that names the file and line, or the flag.
fn explain(err: figment::Error, files: &[ConfigFile]) -> ConfigError {
    let mut path = err.path.clone();
    let at = |path: &[String]| -> String {
        match err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            Some(figment::Source::File(file)) => {
                let line = files
                    .iter()
                    .find(|f| &f.path == file)
                    .and_then(|f| key_line(&f.text, path));
                match line {
                    Some(l) => format!("{}:{l}", file.display()),
                    None => file.display().to_string(),
                }
            }
            Some(figment::Source::Custom(flag)) => flag.clone(),
            _ => "(defaults)".to_string(),
        }
    };
    match &err.kind {
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            let nearest = nearest(field, expected).map(|n| {
                let mut full = path[..path.len() - 1].to_vec();
                full.push(n.to_string());
                full.join(".")
            });
            ConfigError::UnknownKey {
                at: at(&path),
                key: path.join("."),
                nearest,
            }
        }
        kind => ConfigError::Invalid {
            at: at(&path),
            key: path.join("."),
            message: kind.to_string(),
        },
    }
}

/// The valid key closest to a misspelt one, if any is close.
fn nearest<'a>(field: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(field, e), *e))
        .filter(|(d, e)| *d <= (e.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

fn key_path(key: &str) -> Vec<String> {
    key.split('.').map(str::to_string).collect()
}

/// The 1-based line of the key at `path` in TOML `text`.
fn key_line(text: &str, path: &[String]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    let mut segments = path.iter().peekable();
    while let Some(segment) = segments.next() {
        let (key, value) = table.get_key_value(segment.as_str())?;
        span = Some(key.span());
        let mut value = value.get_ref();
        // An array of tables: the next segment is the index.
        if let DeValue::Array(items) = value
            && let Some(index) = segments.peek().and_then(|s| s.parse::<usize>().ok())
        {
            segments.next();
            let item = items.get(index)?;
            span = Some(item.span());
            value = item.get_ref();
        }
        match value {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    span.map(|s| line_col(text, s.start).0)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::config::LogLevel;

    fn sources(main: &Path, command_line: Vec<Layer>) -> Sources {
        Sources {
            main: main.to_path_buf(),
            required: true,
            command_line,
        }
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn command_line_then_drop_ins_then_main_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        write(
            &main,
            "[agent]\nhost_name = \"main\"\ntrust_domain = \"main.td\"\nstate_dir = \"/main\"\n",
        );
        write(
            &dir.path().join("config.d/10-a.toml"),
            "[agent]\nhost_name = \"a\"\ntrust_domain = \"a.td\"\n",
        );
        write(
            &dir.path().join("config.d/20-b.toml"),
            "[agent]\nhost_name = \"b\"\n",
        );
        // Not a drop-in: only *.toml are read.
        write(
            &dir.path().join("config.d/30-c.toml.dpkg-old"),
            "[agent]\nhost_name = \"c\"\n",
        );
        let cli = vec![Layer::new("--log-level", "log.level", "debug")];
        let loaded = sources(&main, cli).load().unwrap();
        let s = &loaded.settings;
        assert_eq!(s.agent.host_name.as_deref(), Some("b"));
        assert_eq!(s.agent.trust_domain.as_deref(), Some("a.td"));
        assert_eq!(s.agent.state_dir, PathBuf::from("/main"));
        assert_eq!(s.log.level, LogLevel::Debug);
        assert_eq!(loaded.files.len(), 3);

        let b = dir.path().join("config.d/20-b.toml");
        assert_eq!(
            loaded.origin("agent.host_name"),
            Origin::File {
                path: b,
                line: Some(2)
            }
        );
        assert_eq!(
            loaded.origin("agent.state_dir"),
            Origin::File {
                path: main.clone(),
                line: Some(4)
            }
        );
        assert_eq!(
            loaded.origin("log.level"),
            Origin::CommandLine {
                flag: "--log-level".into()
            }
        );
        assert_eq!(loaded.origin("log.format"), Origin::Default);
        assert_eq!(
            loaded
                .origin("agent.host_name")
                .to_string()
                .rsplit(':')
                .next(),
            Some("2")
        );
    }

    #[test]
    fn unknown_keys_name_file_line_and_the_nearest_key() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        write(
            &main,
            "# comment\n[agent]\nstate_dir = \"/x\"\ntrust_domian = \"x\"\n",
        );
        let err = sources(&main, vec![]).load().err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "config {}:4: unknown key `agent.trust_domian` (did you mean `agent.trust_domain`?)",
                main.display()
            )
        );
        write(&main, "\n\nbogus_section_name = 1\n");
        let err = sources(&main, vec![]).load().err().unwrap().to_string();
        assert!(
            err.starts_with(&format!(
                "config {}:3: unknown key `bogus_section_name`",
                main.display()
            )),
            "{err}"
        );
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn bad_types_name_the_key_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        write(&main, "[capture]\n\nring_buffer_size = \"big\"\n");
        let err = sources(&main, vec![]).load().err().unwrap().to_string();
        assert!(
            err.starts_with(&format!(
                "config {}:3: `capture.ring_buffer_size`: ",
                main.display()
            )),
            "{err}"
        );
        write(&main, "");
        let cli = vec![Layer::new("--opens", "capture.opens", "sometimes")];
        let err = sources(&main, cli).load().err().unwrap().to_string();
        assert!(
            err.starts_with("config --opens: `capture.opens`: "),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_are_one_line_with_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        write(&main, "[agent]\nhost_name = \"x\"\nwatch = [\n");
        let err = sources(&main, vec![]).load().err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("config {}:", main.display())),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn missing_files_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let err = sources(&missing, vec![]).load().err().unwrap().to_string();
        assert_eq!(
            err,
            format!("config {}: No such file or directory", missing.display())
        );
        // The default path may be absent.
        let optional = Sources {
            required: false,
            ..sources(&missing, vec![])
        };
        assert!(optional.load().unwrap().files.is_empty());
        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = sources(&fifo, vec![]).load().err().unwrap().to_string();
        assert!(
            err.ends_with("not a regular file but a FIFO; refused"),
            "{err}"
        );
        let err = read_config_file(Path::new("/dev/zero"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let big = dir.path().join("big.toml");
        let f = fs::File::create(&big).unwrap();
        f.set_len(secure_fs::CONFIG.max_bytes + 1).unwrap();
        fs::set_permissions(&big, fs::Permissions::from_mode(0o600)).unwrap();
        let err = sources(&big, vec![]).load().err().unwrap().to_string();
        assert!(
            err.ends_with("the most a config file may be; refused"),
            "{err}"
        );
    }

    #[test]
    fn set_takes_toml_values_or_plain_text() {
        let l = Layer::parse_set("findings.interval=30s").unwrap();
        assert_eq!(
            (l.key.as_str(), l.flag.as_str()),
            ("findings.interval", "--set findings.interval")
        );
        assert_eq!(l.value, Value::from("30s".to_string()));
        let l = Layer::parse_set("capture.ring_buffer_size=65536").unwrap();
        assert_eq!(l.value.to_i128(), Some(65536));
        let l = Layer::parse_set("agent.watch=[\"/a\", \"/b\"]").unwrap();
        assert_eq!(l.value.as_array().map(|a| a.len()), Some(2));
        assert!(Layer::parse_set("novalue").is_err());
        assert!(Layer::parse_set("bad key=1").is_err());
        assert!(Layer::parse_set(".x=1").is_err());

        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        write(&main, "");
        let cli = vec![
            Layer::parse_set("capture.ring_buffer_size=65536").unwrap(),
            Layer::parse_set("agent.watch=[\"/a\"]").unwrap(),
        ];
        let loaded = sources(&main, cli).load().unwrap();
        assert_eq!(loaded.settings.capture.ring_buffer_size, 65536);
        assert_eq!(loaded.settings.agent.watch, [PathBuf::from("/a")]);
        let cli = vec![Layer::parse_set("capture.ring_bufer_size=65536").unwrap()];
        let err = sources(&main, cli).load().err().unwrap().to_string();
        assert_eq!(
            err,
            "config --set capture.ring_bufer_size: unknown key `capture.ring_bufer_size` (did you mean `capture.ring_buffer_size`?)"
        );
    }

    #[test]
    fn a_url_with_a_password_fails_the_configuration_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        fs::write(
            &main,
            "[fleet]\nurl = \"postgres://u:topsecretpw@db/fleet\"\n",
        )
        .unwrap();
        for command_line in [
            vec![],
            vec![Layer::new(
                "--fleet",
                "fleet.url",
                "postgres://u:topsecretpw@other/fleet",
            )],
        ] {
            let Err(err) = sources(&main, command_line).load() else {
                panic!("a URL with a password was taken");
            };
            let err = err.to_string();
            assert!(err.contains("password_file"), "{err}");
            assert!(!err.contains("topsecretpw"), "{err}");
        }
    }
}
