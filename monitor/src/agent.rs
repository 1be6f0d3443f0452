//! `secretmon run`: attach the probes, then turn ring-buffer records into
//! events until SIGINT or SIGTERM, and drain what is left before exiting.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    env_names,
    event::{Agent, AgentStatus, Capture, Event, Host},
    findings::{
        FindingsConfig,
        engine::{self, Engine, Scope},
    },
    identity::{CacheStats, IdentityConfig, IdentityResolver, Naming},
    inventory::{
        self, Inventory, InventoryChange, MapEdit, catalog::Catalog, listing, scan::Scanner,
        settings::Settings, sync::Follower,
    },
    ledger::LedgerConfig,
    name_rules::{self, NameRuleSpec},
    offsets,
    pipeline::Pipeline,
    preflight,
    probes::{ActiveHooks, Probes},
    sink::Sink,
};

/// Inventory changes queued between the sync task and the agent.
const CHANGES_QUEUE: usize = 1024;

pub struct RunOptions {
    pub watch: Vec<PathBuf>,
    pub state: PathBuf,
    pub inventory: Settings,
    pub env_names: Vec<String>,
    pub name_rules: Vec<NameRuleSpec>,
    pub output: Option<PathBuf>,
    pub ring_buffer_bytes: Option<u32>,
    pub opens: crate::probes::OpenHooks,
    pub trust_domain: Option<String>,
    pub identity: IdentityConfig,
    pub ledger: LedgerConfig,
    pub findings: FindingsConfig,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let host = Host {
        name: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    // A bad trust domain is a configuration error: say so before anything
    // else is checked.
    let naming = Naming::new(opts.trust_domain.as_deref(), &host.name)?;
    let settings = opts.findings.settings()?;
    preflight::check()?;
    let offsets = offsets::from_btf_file(std::path::Path::new(offsets::VMLINUX_BTF))?;
    let user = inventory::user_paths(&opts.watch)?;
    let catalog = Catalog::new(&opts.inventory)?;
    let env_patterns = env_names::watch_list(catalog.env_watch_names(), &opts.env_names)?;
    let key = listing::load_key(&opts.inventory, &opts.state)?;
    let scanner = Scanner::new(
        std::path::Path::new("/"),
        catalog,
        user,
        key,
        opts.inventory.limits(),
        opts.inventory.policy(),
    );
    let (records, stats, plan) = scanner.scan(&indicatif::ProgressBar::hidden());
    tracing::info!("inventory: {}", listing::summary(&stats));
    let sink = Sink::open(opts.output.as_deref()).with_context(|| {
        format!(
            "cannot open --output {}",
            opts.output
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
                .display()
        )
    })?;

    let tracefs = preflight::tracefs_dir().ok_or(preflight::PreflightError::NoTracefs)?;
    let name_rules = name_rules::rules(&opts.name_rules)?;
    let mut probes = Probes::attach(
        offsets,
        opts.ring_buffer_bytes,
        &tracefs,
        &name_rules,
        opts.opens,
    )?;
    let io_uring = match probes.io_uring {
        _ if probes.active != ActiveHooks::Tracepoints => {
            format!("io_uring opens seen by {}", probes.active.opens())
        }
        Some(tp) => format!("io_uring open submitters reported (io_uring:{tp})"),
        None => {
            tracing::warn!(
                "this kernel has no io_uring submit tracepoint: io_uring opens are not seen"
            );
            "io_uring opens NOT seen (no io_uring tracepoint)".to_string()
        }
    };
    let sync = Follower::new(scanner, plan, &records).context("cannot start inotify")?;
    if sync.unwatched > 0 {
        tracing::warn!(
            "{} directories cannot be watched for new or rotated secrets",
            sync.unwatched
        );
    }
    tracing::debug!("following {} directories", sync.watched());
    let watch = Inventory::new(records);
    // Before the probes watch anything: taking the inventory reads the files.
    let mut engine = Engine::start(&opts.state, settings, opts.ledger.retention.get(), &watch)?;
    for record in watch.records() {
        probes.watch(record.key, record.slot)?;
    }
    let (changes_tx, mut changes) = tokio::sync::mpsc::channel(CHANGES_QUEUE);
    tokio::spawn(sync.run(changes_tx));
    for pattern in &env_patterns {
        probes.watch_env(pattern)?;
    }
    let mut ring = probes
        .take_events()
        .context("ring buffer already taken")?
        .context("cannot poll the ring buffer")?;
    let watched = watch.len();
    let identities = IdentityResolver::for_host(naming, opts.identity);
    let discoverer = Scanner::new(
        std::path::Path::new("/"),
        Catalog::new(&opts.inventory)?,
        inventory::user_paths(&opts.watch)?,
        listing::load_key(&opts.inventory, &opts.state)?,
        opts.inventory.limits(),
        opts.inventory.policy(),
    );
    let mut pipeline = Pipeline::new(watch, host, identities, sink)?.with_discoverer(discoverer);
    tracing::info!("watching {watched} files");
    emit_agent(
        &mut pipeline,
        AgentStatus::Started,
        format!(
            "probes attached ({} hooks; opens seen by {}, denied opens by {}{}); \
             watching {watched} files; {io_uring}",
            probes.hooks + usize::from(probes.io_uring.is_some()),
            probes.active.opens(),
            probes.active.denied_opens(),
            match (probes.active, probes.from_registers) {
                (ActiveHooks::Fexit, _) => "",
                (_, true) => ", arguments from saved registers",
                (_, false) => ", arguments from enter hooks",
            }
        ),
        0,
        None,
        Some(Capture {
            opens: probes.active.opens(),
            denied_opens: probes.active.denied_opens(),
            io_uring_opens: io_uring,
        }),
    )?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // Folded reads go out on this tick, so within a second of the first.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The clock-driven rules and the inventory refresh; the first tick is
    // at once.
    let mut periodic = tokio::time::interval(opts.findings.interval.get());
    let mut lost_reported = 0;
    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), &mut pipeline, &mut probes)?;
                guard.clear_ready();
                pipeline.sink.flush()?;
            }
            Some(change) = changes.recv() => apply(&mut probes, &mut pipeline, change),
            _ = tick.tick() => {
                pipeline.flush_folds().context("writing events")?;
                record(&mut pipeline, &mut engine, Scope::Events)?;
                pipeline.sink.flush()?;
                lost_reported = report_lost(&probes, &mut pipeline, lost_reported)?;
            }
            _ = periodic.tick() => {
                let now = chrono::Utc::now();
                engine.refresh(&pipeline.watch, now);
                engine.check_liveness(now);
                engine.prune_daily(now);
                record(&mut pipeline, &mut engine, Scope::All)?;
                pipeline.sink.flush()?;
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };

    drain(ring.get_mut(), &mut pipeline, &mut probes)?;
    pipeline.flush_folds().context("writing events")?;
    record(&mut pipeline, &mut engine, Scope::Events)?;
    lost_reported = report_lost(&probes, &mut pipeline, lost_reported)?;
    let ledger = engine.close();
    let stats = pipeline.stats;
    let cache = pipeline.identities.cache_stats();
    emit_agent(
        &mut pipeline,
        AgentStatus::Stopped,
        format!(
            "stopped on {reason}: {} records, {} secret reads, {} malformed, \
             {} denied opens unresolved, {} environments partly scanned; \
             identity cache {}/{} entries, {:.0}% hits; \
             ledger {} rows in {} commits, {} dropped, {} failed",
            stats.records,
            stats.secret_reads,
            stats.malformed,
            stats.denied_unresolved,
            stats.env_truncated,
            cache.size,
            cache.capacity,
            cache.hit_rate * 100.0,
            ledger.rows,
            ledger.batches,
            ledger.dropped,
            ledger.failed,
        ),
        lost_reported,
        Some(cache),
        None,
    )?;
    pipeline.sink.flush()?;
    Ok(())
}

/// Follow a created, rotated or removed secret: watch its new inode before
/// unwatching the old one. A full map only loses that one file.
fn apply(probes: &mut Probes, pipeline: &mut Pipeline, change: InventoryChange) {
    let edit = pipeline.watch.apply(change);
    apply_edit(probes, edit);
}

fn apply_edit(probes: &mut Probes, edit: MapEdit) {
    if let Some((key, slot)) = edit.add
        && let Err(e) = probes.watch(key, slot)
    {
        tracing::warn!(
            "cannot watch a new secret: {}",
            crate::errors::error_text(&e)
        );
    }
    if let Some(key) = edit.remove
        && let Err(e) = probes.unwatch(&key)
    {
        tracing::warn!(
            "cannot unwatch a removed secret: {}",
            crate::errors::error_text(&e)
        );
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    probes: &mut Probes,
) -> anyhow::Result<()> {
    while let Some(record) = ring.next() {
        pipeline.handle(&record).context("writing events")?;
    }
    // Files the name rules found are watched by inode from now on.
    for edit in pipeline.take_edits() {
        apply_edit(probes, edit);
    }
    Ok(())
}

/// Hand what the pipeline observed to the ledger, and emit the findings
/// that now hold for the first time.
fn record(pipeline: &mut Pipeline, engine: &mut Engine, scope: Scope) -> anyhow::Result<()> {
    for o in pipeline.observed.drain(..) {
        engine.observe(&o);
    }
    let new = engine.check(chrono::Utc::now(), scope);
    engine::emit(&mut pipeline.sink, &pipeline.host, &new).context("writing events")
}

/// Emit an `agent` event with `lost` when the kernel dropped events since
/// the last report. Returns the new total.
fn report_lost(probes: &Probes, pipeline: &mut Pipeline, reported: u64) -> anyhow::Result<u64> {
    let total = probes.lost()?;
    if total > reported {
        let delta = total - reported;
        tracing::warn!("ring buffer full: {delta} events lost ({total} in all)");
        emit_agent(
            pipeline,
            AgentStatus::Lost,
            format!("ring buffer full: {delta} events lost since the last report"),
            total,
            None,
            None,
        )?;
        pipeline.sink.flush()?;
    }
    Ok(total)
}

fn emit_agent(
    pipeline: &mut Pipeline,
    status: AgentStatus,
    message: String,
    lost: u64,
    identity_cache: Option<CacheStats>,
    capture: Option<Capture>,
) -> anyhow::Result<()> {
    let body = Agent {
        status,
        message,
        lost,
        identity_cache,
        capture,
    };
    let ev = Event::new("agent", chrono::Utc::now(), &pipeline.host, body);
    pipeline.sink.emit(&ev).context("writing events")?;
    pipeline.sink.flush().context("writing events")
}
