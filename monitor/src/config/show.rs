//! `secretmon config`: the effective configuration, each value with where
//! it came from. Values come from the merged [`Settings`] serialized again,
//! so a secret-bearing type (a fleet key, a token) prints only what its own
//! `Serialize` allows: never its value.

use std::io::{self, Write};

use serde_json::{Map as JsonMap, Value as Json};

use super::load::Loaded;

/// One effective setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The dotted key, e.g. `capture.opens`.
    pub key: String,
    /// `None` when the setting is unset (its default is computed at start,
    /// e.g. the host name).
    pub value: Option<toml::Value>,
    /// `default`, `FILE:LINE` or the flag.
    pub origin: String,
}

/// Every leaf setting, in schema order.
pub fn entries(loaded: &Loaded) -> Vec<Entry> {
    let tree = serde_json::to_value(&loaded.settings).unwrap_or(Json::Null);
    let mut out = Vec::new();
    flatten(&tree, &mut Vec::new(), &mut |path, value| {
        let key = path.join(".");
        out.push(Entry {
            origin: loaded.origin(&key).to_string(),
            value: (!value.is_null()).then(|| json_to_toml(value)).flatten(),
            key,
        });
    });
    out
}

/// Leaves are scalars, arrays (a list is one setting) and nulls.
fn flatten(value: &Json, path: &mut Vec<String>, leaf: &mut impl FnMut(&[String], &Json)) {
    match value {
        Json::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                flatten(v, path, leaf);
                path.pop();
            }
        }
        other => leaf(path, other),
    }
}

/// TOML has no null: an unset field inside a table or list is left out.
fn json_to_toml(value: &Json) -> Option<toml::Value> {
    fn strip_nulls(v: &Json) -> Json {
        match v {
            Json::Object(m) => Json::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), strip_nulls(v)))
                    .collect(),
            ),
            Json::Array(a) => Json::Array(a.iter().map(strip_nulls).collect()),
            other => other.clone(),
        }
    }
    toml::Value::try_from(strip_nulls(value)).ok()
}

/// What an unset setting means at run time.
fn unset_means(key: &str) -> &'static str {
    match key {
        "agent.host_name" => "the kernel's host name",
        "agent.trust_domain" => "the host name",
        "inventory.fleet_key" | "inventory.fleet_key_file" => {
            "a key of this host's own (fingerprints match on no other host)"
        }
        "findings.policy" => "no policy: the learned baseline decides",
        _ => "the built-in default",
    }
}

/// TOML with a comment naming each value's source: it can be pasted back
/// into a file.
pub fn write_text(loaded: &Loaded, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "# secretmon's effective configuration; `# from` says where each value came from."
    )?;
    if loaded.files.is_empty() {
        writeln!(out, "# files read: none")?;
    } else {
        let files: Vec<String> = loaded
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        writeln!(out, "# files read, later wins: {}", files.join(", "))?;
    }
    write_sections(loaded, out, |e, name| match &e.value {
        Some(v) => format!("{name} = {v}  # from {}", e.origin),
        None => format!("# {name} is not set: {}", unset_means(&e.key)),
    })
}

/// The file a package installs as `/etc/secretmon/config.toml`: every
/// setting at its default, commented out, so that the file sets nothing
/// and shows everything that can be set.
pub fn write_defaults(loaded: &Loaded, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "# secretmon's configuration. Every setting is shown at its default, commented\n\
         # out: uncomment and change what you need, or put it in a drop-in,\n\
         # /etc/secretmon/config.d/NN-name.toml (read in order; a later file wins).\n\
         # The command line wins over both. `secretmon config` prints what is in effect\n\
         # and where each value came from; `man secretmon` says what each one means.\n\
         # A running agent reads this again on SIGHUP (`systemctl reload secretmon`)."
    )?;
    write_sections(loaded, out, |e, name| match &e.value {
        Some(v) => format!("# {name} = {v}"),
        None => format!("# {name} = ...  (not set: {})", unset_means(&e.key)),
    })
}

/// `[section]` headers, then a line per setting as `line` writes it.
fn write_sections(
    loaded: &Loaded,
    out: &mut impl Write,
    line: impl Fn(&Entry, &str) -> String,
) -> io::Result<()> {
    let mut section = String::new();
    // Top-level keys (`output`) before the first section, where TOML wants
    // them.
    let (top, sectioned): (Vec<Entry>, Vec<Entry>) = entries(loaded)
        .into_iter()
        .partition(|e| !e.key.contains('.'));
    for e in top.into_iter().chain(sectioned) {
        let (head, name) = e.key.rsplit_once('.').unwrap_or(("", e.key.as_str()));
        if head != section {
            section = head.to_string();
            writeln!(out, "\n[{section}]")?;
        }
        writeln!(out, "{}", line(&e, name))?;
    }
    Ok(())
}

/// `{"files": [...], "settings": {"agent.host_name": {"value": …, "from": …}}}`.
pub fn write_json(loaded: &Loaded, out: &mut impl Write) -> io::Result<()> {
    let mut settings = JsonMap::new();
    for e in entries(loaded) {
        let value = e
            .value
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(Json::Null);
        settings.insert(
            e.key,
            serde_json::json!({ "value": value, "from": e.origin }),
        );
    }
    let doc = serde_json::json!({
        "files": loaded.files,
        "settings": settings,
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{Sources, load::Layer};

    #[test]
    fn every_setting_with_its_origin_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "[agent]\nstate_dir = \"/srv/sm\"\n[inventory]\nfleet_key = \"fleet-key-PLANTED-0000\"\n",
        )
        .unwrap();
        let loaded = Sources {
            main: main.clone(),
            required: true,
            command_line: vec![Layer::new("--opens", "capture.opens", "tracepoints")],
        }
        .load()
        .unwrap();
        let all = entries(&loaded);
        let get = |k: &str| all.iter().find(|e| e.key == k).unwrap().clone();
        assert_eq!(
            get("agent.state_dir").origin,
            format!("{}:2", main.display())
        );
        assert_eq!(get("capture.opens").origin, "--opens");
        assert_eq!(
            get("capture.opens").value,
            Some(toml::Value::from("tracepoints"))
        );
        assert_eq!(get("log.level").origin, "default");
        assert_eq!(get("agent.host_name").value, None);
        assert_eq!(
            get("findings.interval").value,
            Some(toml::Value::from("1m"))
        );

        let mut text = Vec::new();
        write_text(&loaded, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("\n[agent]\n"), "{text}");
        assert!(
            text.contains(&format!(
                "state_dir = \"/srv/sm\"  # from {}:2",
                main.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("opens = \"tracepoints\"  # from --opens"),
            "{text}"
        );
        assert!(text.contains("fleet_key = \"<redacted>\""), "{text}");
        let mut json = Vec::new();
        write_json(&loaded, &mut json).unwrap();
        let json = String::from_utf8(json).unwrap();
        for out in [&text, &json] {
            assert!(!out.contains("PLANTED"), "{out}");
        }
        let v: Json = serde_json::from_str(&json).unwrap();
        assert_eq!(v["settings"]["capture.opens"]["from"], "--opens");
        assert_eq!(v["files"][0], Json::from(main.to_str().unwrap()));

        // What `config` prints is a configuration again.
        let reparsed: Result<crate::config::Settings, _> = toml::from_str(
            &text
                .lines()
                .filter(|l| !l.contains("fleet_key"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let reparsed = reparsed.unwrap();
        assert_eq!(reparsed.agent.state_dir, PathBuf::from("/srv/sm"));
        assert_eq!(
            reparsed.capture.opens,
            crate::features::OpenHooks::Tracepoints
        );
    }
}
