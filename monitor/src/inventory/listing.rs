//! `secretmon inventory`: scan once and print what was found, as a table
//! or as JSON lines. The summary and the progress go to stderr.

use std::{
    io::{self, IsTerminal as _, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::terminal::escape;

use super::{
    Record,
    catalog::Catalog,
    classify::approx,
    fingerprint::{Key, KeySource},
    scan::{Scanner, Stats},
    settings::Settings,
};

pub struct Options {
    pub json: bool,
    pub root: PathBuf,
    pub state: PathBuf,
    pub settings: Settings,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let catalog = Catalog::new(&opts.settings)?;
    let key = load_key(&opts.settings, &opts.state)?;
    let root = std::fs::canonicalize(&opts.root)
        .with_context(|| format!("--root {}", opts.root.display()))?;
    let scanner = Scanner::new(
        &root,
        catalog,
        Vec::new(),
        key,
        opts.settings.limits(),
        opts.settings.policy(),
    );
    let (mut records, stats, _) = scanner.scan(&progress());
    records.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = io::stdout().lock();
    if opts.json {
        for r in &records {
            serde_json::to_writer(&mut out, &Row::from(r))?;
            out.write_all(b"\n")?;
        }
    } else {
        write_table(&mut out, &records)?;
    }
    out.flush()?;
    eprintln!("secretmon: {}", summary(&stats));
    Ok(())
}

/// The fingerprint key, saying in one line when it is a one-time key.
pub fn load_key(settings: &Settings, state: &std::path::Path) -> anyhow::Result<Key> {
    let (key, source) = Key::load(settings, state)?;
    match source {
        KeySource::Ephemeral(e) => eprintln!(
            "secretmon: {}; fingerprints use a one-time key and match no other run",
            crate::errors::error_text(&e)
        ),
        KeySource::Host(path) => tracing::debug!("fingerprints keyed by {}", path.display()),
        KeySource::Fleet => tracing::debug!("fingerprints keyed by the fleet key"),
    }
    Ok(key)
}

/// A spinner on stderr when it is a terminal; nothing otherwise.
pub fn progress() -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} scanning: {msg}").expect("valid"));
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

pub fn summary(s: &Stats) -> String {
    let mut text = format!(
        "{} secrets in {} entries ({} candidates) in {:.1}s",
        s.secrets,
        s.entries,
        s.candidates,
        s.elapsed_ms as f64 / 1000.0
    );
    let skipped: Vec<String> = [
        (s.no_secret, "without a secret"),
        (s.unreadable, "unreadable"),
        (s.too_big, "too big"),
        (s.special, "not regular files"),
        (s.duplicates, "other paths to a secret"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if !skipped.is_empty() {
        text.push_str(&format!("; skipped {}", skipped.join(", ")));
    }
    if s.timed_out {
        text.push_str("; stopped at the scan timeout (raise [inventory] scan_timeout)");
    }
    text
}

/// One secret in `--json` output.
#[derive(Debug, Serialize)]
struct Row<'a> {
    id: &'a str,
    path: String,
    #[serde(rename = "type")]
    secret_type: crate::secret::SecretType,
    lifetime: crate::secret::Lifetime,
    reason: &'a str,
    fingerprint: &'a str,
    hint: Option<&'a str>,
    expires: Option<String>,
    uid: u32,
    gid: u32,
    mode: String,
    size: u64,
    mtime: String,
    dev: u64,
    ino: u64,
}

impl<'a> From<&'a Record> for Row<'a> {
    fn from(r: &'a Record) -> Self {
        Self {
            id: &r.id,
            path: r.path.to_string_lossy().into_owned(),
            secret_type: r.secret_type,
            lifetime: r.lifetime,
            reason: &r.reason,
            fingerprint: &r.fingerprint,
            hint: r.hint.as_deref(),
            expires: r
                .expires
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            uid: r.uid,
            gid: r.gid,
            mode: format!("{:04o}", r.mode),
            size: r.size,
            mtime: r.mtime.to_rfc3339_opts(SecondsFormat::Secs, true),
            dev: r.key.dev,
            ino: r.key.ino,
        }
    }
}

fn write_table(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    let now = Utc::now();
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            // Names and hints come from whoever made the file: escaped, so
            // they cannot drive the terminal or forge a row.
            [
                escape(&r.path.to_string_lossy()).into_owned(),
                r.secret_type.to_string(),
                r.lifetime.to_string(),
                approx((now - r.mtime).to_std().unwrap_or_default()),
                format!("{:04o}", r.mode),
                r.hint
                    .as_deref()
                    .map_or_else(|| "-".into(), |h| escape(h).into_owned()),
            ]
        })
        .collect();
    let header = ["PATH", "TYPE", "LIFETIME", "AGE", "MODE", "HINT"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn hostile_names_and_hints_are_escaped_in_the_table() {
        let mut evil = super::super::test_record(
            Path::new("/home/ana/\u{1b}[2J\u{1b}[31mred\n/root/.ssh/id_rsa ssh_private_key\r.env"),
            1,
        );
        evil.hint = Some("GITHUB_TOKEN\u{1b}]0;pwned\u{7}".into());
        let mut out = Vec::new();
        write_table(&mut out, &[evil]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{7}'));
        assert_eq!(text.lines().count(), 2, "a header and one row:\n{text}");
        assert!(
            text.contains(
                "/home/ana/\\x1b[2J\\x1b[31mred\\n/root/.ssh/id_rsa ssh_private_key\\r.env"
            ),
            "{text}"
        );
        assert!(text.contains("GITHUB_TOKEN\\x1b]0;pwned\\x07"), "{text}");
    }
}
