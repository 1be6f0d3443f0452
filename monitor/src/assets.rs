//! What a package installs besides the binary, generated from the clap
//! definitions and the settings' schema so that it cannot drift from them:
//! man pages (clap_mangen), shell completions for bash, zsh and fish
//! (clap_complete) and the default configuration file. `secretmon assets
//! DIR` (hidden) writes them; `cargo xtask package` puts them in the .deb.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::{
    cli::Cli,
    config::{Sources, show},
};

/// Write `man/*.1`, `completions/{secretmon.bash,_secretmon,secretmon.fish}`
/// and `config.toml` under `dir`; returns the files written.
pub fn write(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    let mut written: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut Cli::command(),
            "secretmon",
            &completions,
        )?);
    }
    let config = dir.join("config.toml");
    written.push(config.clone());
    let defaults = Sources {
        main: dir.join("no-such-config.toml"),
        required: false,
        command_line: Vec::new(),
    }
    .load()
    .map_err(io::Error::other)?;
    let mut text = Vec::new();
    show::write_defaults(&defaults, &mut text)?;
    fs::write(config, text)?;
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_completions_and_a_default_config_that_sets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        for name in [
            "man/secretmon.1",
            "man/secretmon-run.1",
            "man/secretmon-check.1",
            "man/secretmon-config.1",
            "man/secretmon-inventory.1",
            "man/secretmon-report.1",
            "completions/secretmon.bash",
            "completions/_secretmon",
            "completions/secretmon.fish",
            "config.toml",
        ] {
            assert!(names.contains(&name.to_string()), "{name} not in {names:?}");
        }
        // The hidden command is not documented.
        assert!(!names.iter().any(|n| n.contains("assets")), "{names:?}");
        let page = fs::read_to_string(dir.path().join("man/secretmon.1")).unwrap();
        assert!(page.contains("SIGHUP"), "the signals are in the man page");
        let bash = fs::read_to_string(dir.path().join("completions/secretmon.bash")).unwrap();
        assert!(bash.contains("--ring-buffer-size"));

        // Every setting is in the file, commented out: it loads, sets
        // nothing, and names each key.
        let config = dir.path().join("config.toml");
        let loaded = Sources {
            main: config.clone(),
            required: true,
            command_line: Vec::new(),
        }
        .load()
        .unwrap();
        let text = fs::read_to_string(&config).unwrap();
        for e in show::entries(&loaded) {
            assert_eq!(e.origin, "default", "{} is set by the default file", e.key);
            // Top-level keys (`output`) have no section.
            let name = e
                .key
                .rsplit_once('.')
                .map_or(e.key.as_str(), |(_, name)| name);
            assert!(text.contains(&format!("# {name} = ")), "{} missing", e.key);
        }
    }
}
