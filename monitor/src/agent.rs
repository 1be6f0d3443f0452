//! `secretmon run`: attach the probes, then turn ring-buffer records into
//! events until SIGINT or SIGTERM, and drain what is left before exiting.

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    event::{Agent, AgentStatus, Capture, Event},
    findings::engine::{self, Engine, Scope},
    fleet,
    identity::{CacheStats, IdentityResolver},
    inventory::{
        Inventory, InventoryChange, MapEdit, catalog::Catalog, listing, scan::Scanner,
        sync::Follower,
    },
    ledger::StateLock,
    offsets,
    pipeline::Pipeline,
    plan::RunPlan,
    preflight,
    probes::{ActiveHooks, Probes},
    redact::{ArgsPolicy, Redactor},
    sink::Sink,
};

/// Inventory changes queued between the sync task and the agent.
const CHANGES_QUEUE: usize = 1024;

pub async fn run(mut plan: RunPlan) -> anyhow::Result<()> {
    preflight::check()?;
    // One agent per state dir, checked before any work.
    let lock = StateLock::acquire(&plan.state_dir)?;
    let offsets = offsets::from_btf_file(std::path::Path::new(offsets::VMLINUX_BTF))?;
    let scanner = host_scanner(&plan)?;
    let key_id = scanner.key_id();
    let (records, stats, scan_plan) = scanner.scan(&indicatif::ProgressBar::hidden());
    tracing::info!("inventory: {}", listing::summary(&stats));
    let sink = Sink::open(plan.output.as_deref()).with_context(|| {
        format!(
            "cannot open --output {}",
            plan.output
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
                .display()
        )
    })?;

    let tracefs = preflight::tracefs_dir().ok_or(preflight::PreflightError::NoTracefs)?;
    let mut probes = Probes::attach(
        offsets,
        Some(plan.capture.ring_buffer_size),
        &tracefs,
        &plan.name_rules,
        plan.capture.opens,
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
    let sync = Follower::new(scanner, scan_plan, &records).context("cannot start inotify")?;
    if sync.unwatched > 0 {
        tracing::warn!(
            "{} directories cannot be watched for new or rotated secrets",
            sync.unwatched
        );
    }
    tracing::debug!("following {} directories", sync.watched());
    let watch = Inventory::new(records);
    // Before the probes watch anything: taking the inventory reads the files.
    let mut engine = Engine::start(
        &plan.state_dir,
        lock,
        plan.findings.clone(),
        plan.ledger.retention,
        &watch,
        &key_id,
    )?;
    for record in watch.records() {
        probes.watch(record.key, record.slot)?;
    }
    let fleet = start_fleet(plan.fleet.take(), &plan, &key_id)?;
    let (changes_tx, mut changes) = tokio::sync::mpsc::channel(CHANGES_QUEUE);
    tokio::spawn(sync.run(changes_tx));
    for pattern in &plan.env_patterns {
        probes.watch_env(pattern)?;
    }
    let mut ring = probes
        .take_events()
        .context("ring buffer already taken")?
        .context("cannot poll the ring buffer")?;
    let watched = watch.len();
    let identities = IdentityResolver::for_host(plan.naming.clone(), plan.identity.clone());
    let discoverer = host_scanner(&plan)?;
    if plan.process_args == ArgsPolicy::Full {
        tracing::warn!(
            "process.args = full: events show command lines as processes passed them, \
             secrets included"
        );
    }
    let mut pipeline = Pipeline::new(watch, plan.host.clone(), identities, sink)?
        .with_discoverer(discoverer)
        .with_redactor(Redactor::new(plan.process_args, &plan.capture.env_names));
    tracing::info!("watching {watched} files");
    // Before `started`: a script that stops the agent as soon as it says
    // so must get a drained, orderly stop.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
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

    // Folded reads go out on this tick, so within a second of the first.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The clock-driven rules and the inventory refresh; the first tick is
    // at once.
    let mut periodic = tokio::time::interval(plan.findings_interval);
    let mut lost_reported = 0;
    let mut losses = Losses::default();
    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), &mut pipeline, &mut probes, &mut losses)?;
                guard.clear_ready();
                pipeline.sink.flush()?;
            }
            Some(change) = changes.recv() => apply(&mut probes, &mut pipeline, change),
            _ = tick.tick() => {
                pipeline.flush_folds().context("writing events")?;
                record(&mut pipeline, &mut engine, Scope::Events)?;
                pipeline.sink.flush()?;
                lost_reported = report_lost(&probes, &mut pipeline, lost_reported)?;
                if let Some(fleet) = &fleet {
                    fleet.lost(lost_reported);
                }
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

    drain(ring.get_mut(), &mut pipeline, &mut probes, &mut losses)?;
    pipeline.flush_folds().context("writing events")?;
    record(&mut pipeline, &mut engine, Scope::Events)?;
    lost_reported = report_lost(&probes, &mut pipeline, lost_reported)?;
    let ledger = engine.close();
    // The ledger is complete now: the fleet gets its last rows.
    if let Some(fleet) = fleet {
        fleet.lost(lost_reported);
        fleet.finish().await;
    }
    let stats = pipeline.stats;
    let cache = pipeline.identities.cache_stats();
    emit_agent(
        &mut pipeline,
        AgentStatus::Stopped,
        format!(
            "stopped on {reason}: {} records, {} secret reads, {} malformed, \
             {} denied opens unresolved, {} environments partly scanned; \
             identity cache {}/{} entries, {:.0}% hits; \
             ledger {} rows in {} commits, {} dropped, {} failed commits (retried), {} rows lost",
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
            ledger.lost,
        ),
        lost_reported,
        Some(cache),
        None,
    )?;
    pipeline.sink.flush()?;
    Ok(())
}

/// Start syncing the ledger to the fleet store, when the plan names one.
/// Its fingerprints are comparable across hosts only when keyed with the
/// fleet key: the store learns that key's id (`key_id`), never the key.
fn start_fleet(
    connection: Option<fleet::Connection>,
    plan: &RunPlan,
    key_id: &str,
) -> anyhow::Result<Option<fleet::sync::Handle>> {
    let Some(connection) = connection else {
        return Ok(None);
    };
    let who = fleet::sync::Identity {
        host: plan.host.name.clone(),
        fleet_key_id: plan.inventory.has_fleet_key().then(|| key_id.to_string()),
    };
    tracing::info!("syncing the ledger to the fleet store {}", connection.url);
    Ok(Some(fleet::sync::spawn(connection, who, &plan.state_dir)?))
}

/// The inventory's scanner of the whole host, as the plan configures it.
fn host_scanner(plan: &RunPlan) -> anyhow::Result<Scanner> {
    Ok(Scanner::new(
        std::path::Path::new("/"),
        Catalog::new(&plan.inventory)?,
        plan.watch.clone(),
        listing::load_key(&plan.inventory, &plan.state_dir)?,
        plan.inventory.limits(),
        plan.inventory.policy(),
    ))
}

/// Follow a created, rotated or removed secret: watch its new inode before
/// unwatching the old one. A full map only loses that one file.
fn apply(probes: &mut Probes, pipeline: &mut Pipeline, change: InventoryChange) {
    let edit = pipeline.inventory_change(change);
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

/// What the drain knows of the kernel's lost events.
#[derive(Default)]
struct Losses {
    seen: u64,
}

impl Losses {
    /// Tell the pipeline when the kernel lost events since the last look:
    /// before the records after the loss are handled, since a lost exec
    /// or fork makes what the process table knows stale.
    fn check(&mut self, probes: &Probes, pipeline: &mut Pipeline) -> anyhow::Result<()> {
        let total = probes.lost()?;
        if total > self.seen {
            self.seen = total;
            let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
            let boot_ns = u64::try_from(boot.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(boot.tv_nsec()).unwrap_or(0);
            pipeline.events_lost(boot_ns);
        }
        Ok(())
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    probes: &mut Probes,
    losses: &mut Losses,
) -> anyhow::Result<()> {
    while let Some(record) = ring.next() {
        // Looked at with each record in hand: a loss counted before it was
        // made is known before it is attributed (a loss noticed only
        // every few records let a forked child pass as its parent).
        losses.check(probes, pipeline)?;
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
