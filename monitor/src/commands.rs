//! One parsed command line, run: the configuration merged once, logging set
//! up from it, then the command.

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;

use crate::{
    agent, assets, check,
    cli::{Cli, Command, CommonArgs, ReportArgs},
    config::{self, Loaded, load::Origin},
    findings, fleet, html, inventory, logging,
    plan::RunPlan,
    reload::Reloader,
};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let sources = args.common.sources(args.agent.layers());
            let loaded = load_from(&sources)?;
            // SIGHUP reads the same sources again.
            let reloader = Reloader::new(sources, &loaded);
            let plan = RunPlan::resolve(loaded.settings)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent::run(plan, reloader))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory(args) => {
            let loaded = load(&args.common, Vec::new())?;
            inventory::listing::run(inventory::listing::Options {
                json: args.json,
                root: args.root,
                state: loaded.settings.agent.state_dir,
                settings: loaded.settings.inventory,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            use findings::report;
            let loaded = load(&args.common, args.layers())?;
            if args.fleet.is_some() {
                return fleet_report(&args, &loaded);
            }
            // A window the configuration sets counts as the user's choice;
            // otherwise the windows the agent ran with, kept in the ledger.
            let configured =
                |key: &str, value| (loaded.origin(key) != Origin::Default).then_some(value);
            let findings = &loaded.settings.findings;
            let opts = report::ReportOptions {
                window: args
                    .window
                    .or(configured("findings.orphan_window", findings.orphan_window)),
                max_age: args
                    .max_age
                    .or(configured("findings.max_age", findings.max_age)),
            };
            let r = report::build(&loaded.settings.agent.state_dir, &opts, chrono::Utc::now())?;
            if let Some(path) = &args.html {
                let host = crate::plan::host_name(loaded.settings.agent.host_name.as_deref());
                write_html(path, &html::Page::local(&r, &host))?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            let written = if args.json {
                report::write_json(&r, &mut out)
            } else {
                let terminal = out.is_terminal() && std::env::var_os("NO_COLOR").is_none();
                report::write_text(&r, &mut out, terminal)
            };
            finish(written.and_then(|()| std::io::Write::flush(&mut out)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            logging::init(&config::LogSettings::default());
            let items = check::probe();
            let mut out = std::io::stdout().lock();
            let ready = if args.json {
                check::write_json(&items, &mut out)?
            } else {
                check::print(&items, &mut out)?
            };
            Ok(if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Assets { dir } => {
            for path in assets::write(&dir)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(args) => {
            let loaded = load(&args.common, args.agent.layers())?;
            let mut out = std::io::stdout().lock();
            let written = if args.json {
                config::show::write_json(&loaded, &mut out)
            } else {
                config::show::write_text(&loaded, &mut out)
            };
            finish(written.and_then(|()| std::io::Write::flush(&mut out)))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `report --fleet`: the windows from the flags, else the configuration's.
fn fleet_report(args: &ReportArgs, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let connection =
        loaded.settings.fleet.connection(None)?.ok_or_else(|| {
            anyhow::anyhow!("--fleet needs a URL, or fleet.url in the configuration")
        })?;
    let configured = &loaded.settings.findings;
    let window = args.window.unwrap_or(configured.orphan_window).get();
    let settings = fleet::rules::Settings {
        now: chrono::Utc::now(),
        window,
        max_age: args
            .max_age
            .or(args.window)
            .unwrap_or(configured.max_age)
            .get(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(fleet::report::build(&connection, &settings))?;
    // A large fleet's report is millions of small allocations: freeing them
    // took a second per 200 hosts, and the process ends right after.
    let r = std::mem::ManuallyDrop::new(r);
    if let Some(path) = &args.html {
        write_html(path, &std::mem::ManuallyDrop::new(html::Page::fleet(&r)))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        fleet::report::write_json(&r, &mut out)
    } else {
        let terminal = out.is_terminal() && std::env::var_os("NO_COLOR").is_none();
        fleet::report::write_text(&r, &mut out, terminal)
    };
    finish(written.and_then(|()| std::io::Write::flush(&mut out)))?;
    Ok(ExitCode::SUCCESS)
}

/// The page, private to its owner (it names secrets and workloads).
fn write_html(path: &std::path::Path, page: &html::Page) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("--html {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    html::write(page, &mut out)
        .and_then(|()| std::io::Write::flush(&mut out))
        .with_context(|| format!("--html {}", path.display()))
}

/// Merge the configuration for a command, then start logging as it says.
fn load(
    common: &CommonArgs,
    layers: Vec<config::load::Layer>,
) -> Result<Loaded, config::ConfigError> {
    load_from(&common.sources(layers))
}

fn load_from(sources: &config::Sources) -> Result<Loaded, config::ConfigError> {
    let loaded = sources.load()?;
    logging::init(&loaded.settings.log);
    Ok(loaded)
}

/// `… | head` closed the pipe: nothing more to say.
fn finish(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
