//! The `secretmon` binary: a panic hook, the command line, and one line on
//! stderr for whatever went wrong. Everything else is the library.

use std::process::ExitCode;

use clap::Parser as _;
use secretmon::{cli::Cli, commands, errors::error_text};

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
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("secretmon: {}", error_text(e.as_ref()));
            ExitCode::FAILURE
        }
    }
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
