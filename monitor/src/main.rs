//! secretmon: an eBPF monitor of static-secret use.
//!
//! Pipeline: `probes` (kernel) → `pipeline` (process table, inventory,
//! identity) → `ledger` → `findings` → `sink` (JSON lines). `agent` drives
//! it; `check` reports what the kernel supports; `findings::report` prints
//! the ledger's picture.

mod agent;
mod check;
mod cli;
mod config;
mod env_names;
mod event;
mod findings;
mod identity;
mod inventory;
mod ledger;
mod name_rules;
mod offsets;
mod pipeline;
mod preflight;
mod probes;
mod process;
mod redact;
mod secret;
mod sink;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // A panic must not print a backtrace at an SRE; one line, exit 101.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("secretmon: internal error{at}; please report it");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("SECRETMON_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("secretmon: {}", error_text(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources on one line, without the `(os error N)` noise
/// that io errors append.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    let text = parts
        .iter()
        .map(|p| one_line(p))
        .collect::<Vec<_>>()
        .join(": ");
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// A multi-line message (a verifier log can run to megabytes) cut to its
/// last lines, where the verifier states its verdict, on one line.
fn one_line(text: &str) -> String {
    const KEEP_LINES: usize = 4;
    const MAX_CHARS: usize = 1000;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = if lines.len() > KEEP_LINES {
        format!("... {}", lines[lines.len() - KEEP_LINES..].join(" | "))
    } else {
        lines.join(" | ")
    };
    if out.chars().count() > MAX_CHARS {
        out = out.chars().take(MAX_CHARS).collect::<String>() + "...";
    }
    out
}

/// Help and version go out as clap prints them; a usage error becomes one
/// line, as every other error does.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid usage");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("secretmon: {first} (see `secretmon --help`)");
    ExitCode::from(2)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let config = config::Config::load(args.config.as_deref())?;
            let mut watch = config.watch;
            watch.extend(args.watch);
            rt.block_on(agent::run(agent::RunOptions {
                watch,
                state: args.state,
                inventory: config.inventory,
                env_names: config.env_names,
                name_rules: config.name_rules,
                output: args.output,
                ring_buffer_bytes: Some(args.ring_buffer_size),
                opens: args.opens,
                trust_domain: args.trust_domain.or(config.trust_domain),
                identity: config.identity,
                ledger: config.ledger,
                findings: config.findings,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory(args) => {
            let config = config::Config::load(args.config.as_deref())?;
            inventory::listing::run(inventory::listing::Options {
                json: args.json,
                root: args.root,
                state: args.state,
                settings: config.inventory,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            use findings::report;
            let opts = report::ReportOptions {
                window: args.window,
                max_age: args.max_age,
            };
            let r = report::build(&args.state, &opts, chrono::Utc::now())?;
            let mut out = std::io::stdout().lock();
            let written = if args.json {
                report::write_json(&r, &mut out)
            } else {
                let terminal = out.is_terminal() && std::env::var_os("NO_COLOR").is_none();
                report::write_text(&r, &mut out, terminal)
            };
            match written.and_then(|()| std::io::Write::flush(&mut out)) {
                // `report | head` closed the pipe: nothing more to say.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let items = check::probe();
            let ready = check::print(&items, &mut std::io::stdout().lock())?;
            Ok(if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_become_one_short_line() {
        let log = (0..10_000)
            .map(|i| format!("{i}: insn"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = one_line(&format!("{log}\nprocessed 1000001 insns"));
        assert!(!text.contains('\n'));
        assert!(text.ends_with("processed 1000001 insns"), "{text}");
        assert!(text.len() < 1100);
        assert_eq!(one_line("plain"), "plain");
    }
}
