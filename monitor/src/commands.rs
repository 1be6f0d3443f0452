//! One parsed command line, run: each subcommand's wiring.

use std::{io::IsTerminal as _, process::ExitCode};

use crate::{
    agent, check,
    cli::{Cli, Command},
    config, findings, inventory,
};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
                capture: config.capture,
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
