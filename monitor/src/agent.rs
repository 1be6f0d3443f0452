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
    watch_map::{CaptureConfig, Classifier, MapOp, Overflow, WatchBudget},
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
    pub capture: CaptureConfig,
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
        user.clone(),
        key,
        opts.inventory.limits(),
        opts.inventory.policy(),
    );
    let classifier = Classifier::new(scanner.homes(), &user);
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
        opts.capture.map_entries(),
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
    // What fits in the kernel's map, by priority; the same choice at every
    // start.
    let mut budget = WatchBudget::new(opts.capture.max_watched, classifier);
    let mut by_path: Vec<_> = watch.records().collect();
    by_path.sort_by(|a, b| a.path.cmp(&b.path));
    for record in by_path {
        budget.insert(record.key, record.slot, &record.path);
    }
    let planned: Vec<MapOp> = budget
        .watched()
        .map(|(key, slot)| MapOp::Watch(key, slot))
        .collect();
    run_ops(&mut probes, &mut budget, &planned);
    let (changes_tx, mut changes) = tokio::sync::mpsc::channel(CHANGES_QUEUE);
    tokio::spawn(sync.run(changes_tx));
    for pattern in &env_patterns {
        probes.watch_env(pattern)?;
    }
    let mut ring = probes
        .take_events()
        .context("ring buffer already taken")?
        .context("cannot poll the ring buffer")?;
    let watched = watch.len() - budget.unwatched();
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
        None,
    )?;
    let mut overflow = Overflow::default();
    report_overflow(&mut budget, &mut pipeline, &mut engine, &mut overflow, 0)?;

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
                drain(guard.get_inner_mut(), &mut pipeline, &mut probes, &mut budget)?;
                guard.clear_ready();
                pipeline.sink.flush()?;
            }
            Some(change) = changes.recv() => apply(&mut probes, &mut pipeline, &mut budget, change),
            _ = tick.tick() => {
                pipeline.flush_folds().context("writing events")?;
                record(&mut pipeline, &mut engine, Scope::Events)?;
                pipeline.sink.flush()?;
                lost_reported = report_lost(&probes, &mut pipeline, lost_reported)?;
                report_overflow(&mut budget, &mut pipeline, &mut engine, &mut overflow, lost_reported)?;
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

    drain(ring.get_mut(), &mut pipeline, &mut probes, &mut budget)?;
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
        None,
    )?;
    pipeline.sink.flush()?;
    Ok(())
}

fn apply(
    probes: &mut Probes,
    pipeline: &mut Pipeline,
    budget: &mut WatchBudget,
    change: InventoryChange,
) {
    let edit = pipeline.watch.apply(change);
    apply_edit(probes, budget, &pipeline.watch, edit);
}

/// Follow a created, rotated or removed secret through the watch budget:
/// a rotated file's new inode is watched before its old one is dropped; a
/// full map watches by priority and never stops the agent.
fn apply_edit(probes: &mut Probes, budget: &mut WatchBudget, watch: &Inventory, edit: MapEdit) {
    let added = edit
        .add
        .and_then(|(key, _)| watch.get(&key))
        .map(|r| r.path.clone());
    let ops = budget.apply(&edit, added.as_deref());
    run_ops(probes, budget, &ops);
}

/// Carry `ops` out on the kernel's map. A secret the kernel refuses waits
/// like one that did not fit, and is reported with them; one warning per
/// batch.
fn run_ops(probes: &mut Probes, budget: &mut WatchBudget, ops: &[MapOp]) {
    let mut refused = 0;
    let mut last = None;
    for op in ops {
        let result = match *op {
            MapOp::Watch(key, slot) => probes.watch(key, slot).inspect_err(|_| {
                budget.failed(key);
                refused += 1;
            }),
            MapOp::Unwatch(key) => probes.unwatch(&key),
        };
        if let Err(e) = result {
            last = Some(e);
        }
    }
    if let Some(e) = last {
        tracing::warn!(
            "watch map: {refused} secrets could not be watched: {}",
            crate::errors::error_text(&e)
        );
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    probes: &mut Probes,
    budget: &mut WatchBudget,
) -> anyhow::Result<()> {
    while let Some(record) = ring.next() {
        pipeline.handle(&record).context("writing events")?;
    }
    // Files the name rules found are watched by inode from now on.
    for edit in pipeline.take_edits() {
        apply_edit(probes, budget, &pipeline.watch, edit);
    }
    Ok(())
}

/// When the watch budget changed: leave its overflow in the ledger for
/// `report`, emit an `agent` event when more secrets are unwatched than
/// last said, and a `watch_overflow` finding per directory the first time.
fn report_overflow(
    budget: &mut WatchBudget,
    pipeline: &mut Pipeline,
    engine: &mut Engine,
    reported: &mut Overflow,
    lost: u64,
) -> anyhow::Result<()> {
    if !budget.take_changed() {
        return Ok(());
    }
    let now = budget.overflow();
    if now == *reported {
        return Ok(());
    }
    engine.record_overflow(&now);
    if now.unwatched > reported.unwatched {
        tracing::warn!("{}", now.message());
        emit_agent(
            pipeline,
            AgentStatus::WatchOverflow,
            now.message(),
            lost,
            None,
            None,
            Some(now.clone()),
        )?;
    }
    let new = engine.raise(now.findings(), chrono::Utc::now());
    engine::emit(&mut pipeline.sink, &pipeline.host, &new).context("writing events")?;
    pipeline.sink.flush()?;
    *reported = now;
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
    watch_overflow: Option<Overflow>,
) -> anyhow::Result<()> {
    let body = Agent {
        status,
        message,
        lost,
        identity_cache,
        capture,
        watch_overflow,
    };
    let ev = Event::new("agent", chrono::Utc::now(), &pipeline.host, body);
    pipeline.sink.emit(&ev).context("writing events")?;
    pipeline.sink.flush().context("writing events")
}
