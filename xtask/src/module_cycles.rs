//! Import cycles among the top-level modules of a crate's `src/`, which
//! `lint` refuses. An edge A -> B is any `crate::B` path in a file of module
//! A (`src/A.rs` or `src/A/**`): a `use crate::...` item, each head of a
//! `use crate::{a::.., b::..}` group, or an inline `crate::B::` path. Test
//! code counts too: it is compiled into the same module. The crate roots
//! (`lib.rs`, `main.rs`) are not modules here.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use anyhow::{Context as _, Result, bail};
use petgraph::{algo::tarjan_scc, graphmap::DiGraphMap};
use regex::Regex;

const ROOTS: &[&str] = &["lib", "main"];

static LINE_COMMENT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"//[^\n]*").unwrap());
static GROUP_HEAD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:^|,)\s*(\w+)").unwrap());
static CRATE_PATH: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bcrate::(\w+)").unwrap());

/// A source file: its path under `src/`, and its text.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// Modules that import each other, with the imports (`file:line`) that
/// close the loop.
#[derive(Debug, PartialEq, Eq)]
pub struct Cycle {
    pub modules: Vec<String>,
    pub edges: Vec<(String, String, Vec<String>)>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.modules.join(", "))?;
        for (from, to, at) in &self.edges {
            write!(f, "; {from} -> {to} at {}", at.join(" "))?;
        }
        Ok(())
    }
}

/// Fail naming every cycle among the modules of `src`.
pub fn check(src: &Path) -> Result<()> {
    let found = cycles(&read(src)?);
    if found.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = found.iter().map(|c| format!("[{c}]")).collect();
    bail!(
        "import cycles among the modules of {}: {}",
        src.display(),
        list.join(" ")
    )
}

/// Every `.rs` file under `src`, by path relative to it.
fn read(src: &Path) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    for entry in walkdir::WalkDir::new(src).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {}", src.display()))?;
        let path = entry.path();
        if !entry.file_type().is_file() || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        sources.push(Source {
            path: path.strip_prefix(src)?.to_path_buf(),
            text,
        });
    }
    Ok(sources)
}

/// The top-level module a file belongs to.
fn module_of(path: &Path) -> String {
    let mut parts = path.components();
    let first = parts
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    match (first, parts.next()) {
        (Some(dir), Some(_)) => dir,
        _ => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// The top-level names in the body of a `use crate::{...}` group.
fn group_heads(body: &str) -> Vec<String> {
    let mut depth = 0i32;
    let mut outer = String::new();
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && ch != '}' {
            outer.push(ch);
        }
    }
    GROUP_HEAD
        .captures_iter(&outer)
        .map(|c| c[1].to_string())
        .collect()
}

/// The modules `text` names after `crate::`, each with its byte offset.
fn imports(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for m in text.match_indices("crate::{") {
        let body_start = m.0 + m.1.len();
        let mut depth = 1;
        let mut end = body_start;
        for (i, ch) in text[body_start..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = body_start + i;
                break;
            }
        }
        for head in group_heads(&text[body_start..end]) {
            found.push((head, m.0));
        }
    }
    for c in CRATE_PATH.captures_iter(text) {
        found.push((c[1].to_string(), c.get(0).map_or(0, |m| m.start())));
    }
    found
}

/// The cycles among the modules of `sources`, each module list sorted.
pub fn cycles(sources: &[Source]) -> Vec<Cycle> {
    // (from, to) -> where, as `file:line`.
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for source in sources {
        let here = module_of(&source.path);
        if ROOTS.contains(&here.as_str()) {
            continue;
        }
        modules.insert(here.clone());
        // Line comments only: a `crate::` in a doc comment is not an import.
        let text = LINE_COMMENT.replace_all(&source.text, "");
        for (to, at) in imports(&text) {
            if to != here {
                let line = text[..at].matches('\n').count() + 1;
                edges
                    .entry((here.clone(), to))
                    .or_default()
                    .insert(format!("{}:{line}", source.path.display()));
            }
        }
    }
    let mut graph: DiGraphMap<&str, ()> = DiGraphMap::new();
    for m in &modules {
        graph.add_node(m.as_str());
    }
    for (from, to) in edges.keys() {
        if modules.contains(to) {
            graph.add_edge(from.as_str(), to.as_str(), ());
        }
    }
    let mut cycles: Vec<Cycle> = tarjan_scc(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let mut modules: Vec<String> = scc.iter().map(|m| m.to_string()).collect();
            modules.sort();
            let edges = edges
                .iter()
                .filter(|((from, to), _)| modules.contains(from) && modules.contains(to))
                .map(|((from, to), at)| (from.clone(), to.clone(), at.iter().cloned().collect()))
                .collect();
            Cycle { modules, edges }
        })
        .collect();
    cycles.sort_by(|a, b| a.modules.cmp(&b.modules));
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(files: &[(&str, &str)]) -> Vec<Source> {
        files
            .iter()
            .map(|(path, text)| Source {
                path: PathBuf::from(path),
                text: text.to_string(),
            })
            .collect()
    }

    /// `a` and `b` import each other (a group with a nested group, and an
    /// inline path in a submodule); `c` and `d` only go one way, and a
    /// comment naming `a` in `c` is no import.
    fn fixture(b_imports_a: bool) -> Vec<Source> {
        let b = if b_imports_a {
            "fn f() {\n    crate::a::g();\n}\n"
        } else {
            "fn f() {}\n"
        };
        sources(&[
            ("lib.rs", "pub mod a;\nuse crate::a::g;\n"),
            (
                "a.rs",
                "use crate::{\n    b::{X, Y},\n    c::Z,\n};\npub fn g() {}\n",
            ),
            ("b/mod.rs", "mod inner;\n"),
            ("b/inner.rs", b),
            ("c.rs", "// crate::a is only named here\nuse crate::d::W;\n"),
            ("d.rs", "pub struct W;\n"),
        ])
    }

    #[test]
    fn a_cycle_is_named_with_the_imports_that_close_it() {
        assert_eq!(
            cycles(&fixture(true)),
            vec![Cycle {
                modules: vec!["a".into(), "b".into()],
                edges: vec![
                    ("a".into(), "b".into(), vec!["a.rs:1".into()]),
                    ("b".into(), "a".into(), vec!["b/inner.rs:2".into()]),
                ],
            }]
        );
        assert_eq!(
            cycles(&fixture(true))[0].to_string(),
            "a, b; a -> b at a.rs:1; b -> a at b/inner.rs:2"
        );
    }

    #[test]
    fn imports_one_way_are_no_cycle() {
        assert_eq!(cycles(&fixture(false)), vec![]);
    }

    #[test]
    fn group_heads_are_the_top_level_names() {
        assert_eq!(
            group_heads("a::{x, y::{z}}, b, c::d"),
            vec!["a".to_string(), "b".into(), "c".into()]
        );
    }
}
