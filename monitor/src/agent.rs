//! `secretmon run`: attach the probes, then turn ring-buffer records into
//! events until SIGINT, SIGTERM or SIGQUIT, and drain what is left before
//! exiting. SIGHUP reopens the output and reloads what can change without
//! reattaching probes ([`crate::reload`]); SIGUSR1 logs a status line.

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    event::{Agent, AgentStatus, Capture, Event, ReloadSummary},
    findings::engine::{self, Engine, Scope},
    identity::{CacheStats, IdentityResolver},
    inventory::{
        Inventory, InventoryChange, MapEdit, Record,
        catalog::Catalog,
        fingerprint::Key,
        listing,
        scan::{Scanner, WatchPlan},
        sync::Follower,
    },
    ledger::StateLock,
    offsets,
    pipeline::Pipeline,
    plan::RunPlan,
    preflight,
    probes::{ActiveHooks, Probes},
    redact::{ArgsPolicy, Redactor},
    reload::{Candidate, Reloader},
    service::Notifier,
    sink::Sink,
};

/// Inventory changes queued between the sync task and the agent.
const CHANGES_QUEUE: usize = 1024;

pub async fn run(plan: RunPlan, mut reloader: Reloader) -> anyhow::Result<()> {
    // First of all: a signal during the seconds of start-up (a stop, a
    // logrotate's SIGHUP) waits for the loop instead of killing the agent.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    preflight::check()?;
    // One agent per state dir, checked before any work.
    let lock = StateLock::acquire(&plan.state_dir)?;
    let offsets = offsets::from_btf_file(std::path::Path::new(offsets::VMLINUX_BTF))?;
    // One key for every scanner of this run, a one-time key included.
    let key = listing::load_key(&plan.inventory, &plan.state_dir)?;
    let scanner = host_scanner(&plan, key.clone())?;
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
    // What the inventory's rules covered, to tell on reload which secrets
    // a changed configuration no longer covers.
    let mut scanned = host_scanner(&plan, key.clone())?;
    let sync = follower(scanner, scan_plan, &records).context("cannot start inotify")?;
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
    let (changes_tx, mut changes) = mpsc::channel(CHANGES_QUEUE);
    let mut sync_task = tokio::spawn(sync.run(changes_tx.clone()));
    for pattern in &plan.env_patterns {
        probes.watch_env(pattern)?;
    }
    let mut ring = probes
        .take_events()
        .context("ring buffer already taken")?
        .context("cannot poll the ring buffer")?;
    let watched = watch.len();
    let identities = IdentityResolver::for_host(plan.naming.clone(), plan.identity.clone());
    let discoverer = host_scanner(&plan, key.clone())?;
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
    let mut service = Notifier::from_env();
    service.ready(&format!("watching {watched} files"));

    // Folded reads go out on this tick, so within a second of the first.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The clock-driven rules and the inventory refresh; the first tick is
    // at once.
    let mut findings_interval = plan.findings_interval;
    let mut periodic = tokio::time::interval(findings_interval);
    // The watchdog's keep-alive, from this loop: a stalled drain stops it.
    let keepalive = service.keepalive_period();
    let mut watchdog = tokio::time::interval(keepalive.unwrap_or(Duration::from_secs(3600)));
    // A reload reads and rescans off this loop, which keeps draining; its
    // result comes back here to be applied.
    let (reload_tx, mut reloads) = mpsc::channel(1);
    let mut reload_running = false;
    let mut reload_again = false;
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
            }
            _ = periodic.tick() => {
                let now = chrono::Utc::now();
                engine.refresh(&pipeline.watch, now);
                engine.check_liveness(now);
                engine.prune_daily(now);
                record(&mut pipeline, &mut engine, Scope::All)?;
                pipeline.sink.flush()?;
            }
            _ = watchdog.tick(), if keepalive.is_some() => service.alive(),
            _ = sighup.recv() => {
                service.reloading();
                reopen(&mut pipeline.sink);
                if reload_running {
                    reload_again = true;
                } else {
                    reload_running = true;
                    start_reload(&reloader, &key, &reload_tx);
                }
            }
            Some(prepared) = reloads.recv() => {
                reload_running = false;
                match prepared {
                    Ok(prepared) => {
                        let summary = apply_reload(
                            prepared,
                            Reload {
                                probes: &mut probes,
                                pipeline: &mut pipeline,
                                engine: &mut engine,
                                scanned: &mut scanned,
                                sync_task: &mut sync_task,
                                changes_tx: &changes_tx,
                                reloader: &mut reloader,
                                key: &key,
                            },
                        )?;
                        if summary.findings_interval != findings_interval {
                            findings_interval = summary.findings_interval;
                            periodic = tokio::time::interval(findings_interval);
                        }
                        emit_reloaded(&mut pipeline, summary.summary)?;
                    }
                    Err(e) => {
                        let why = crate::errors::error_text(e.as_ref());
                        tracing::warn!("reload failed, the running configuration stays: {why}");
                        emit_agent(
                            &mut pipeline,
                            AgentStatus::ReloadFailed,
                            format!("reload failed, the running configuration stays: {why}"),
                            lost_reported,
                            None,
                            None,
                        )?;
                    }
                }
                if reload_again {
                    reload_again = false;
                    reload_running = true;
                    start_reload(&reloader, &key, &reload_tx);
                } else {
                    service.ready(&format!("watching {} files", pipeline.watch.len()));
                }
            }
            _ = sigusr1.recv() => {
                let line = status_line(&probes, &pipeline);
                tracing::info!("status: {line}");
                service.status(&line);
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sigquit.recv() => break "SIGQUIT",
        }
    };
    service.stopping(&format!("stopping on {reason}: draining the ring buffer"));
    sync_task.abort();

    drain(ring.get_mut(), &mut pipeline, &mut probes, &mut losses)?;
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

/// The inventory's scanner of the whole host, as the plan configures it.
fn host_scanner(plan: &RunPlan, key: Key) -> anyhow::Result<Scanner> {
    Ok(Scanner::new(
        std::path::Path::new("/"),
        Catalog::new(&plan.inventory)?,
        plan.watch.clone(),
        key,
        plan.inventory.limits(),
        plan.inventory.policy(),
    ))
}

/// inotify on what a scan planned, saying what it cannot watch.
fn follower(scanner: Scanner, plan: WatchPlan, records: &[Record]) -> std::io::Result<Follower> {
    let sync = Follower::new(scanner, plan, records)?;
    if sync.unwatched > 0 {
        tracing::warn!(
            "{} directories cannot be watched for new or rotated secrets",
            sync.unwatched
        );
    }
    tracing::debug!("following {} directories", sync.watched());
    Ok(sync)
}

/// SIGHUP, first: what was written so far stays in the file logrotate
/// moved; from now on events go to a new file at the configured path. A
/// file that cannot be opened again leaves the old one in use.
fn reopen(sink: &mut Sink) {
    match sink.reopen() {
        Ok(Some(path)) => tracing::info!("reopened {}", path.display()),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "cannot reopen the output, still writing to the old file: {}",
            crate::errors::error_text(&e)
        ),
    }
}

/// A configuration read again and the host scanned with it, ready to apply.
struct Prepared {
    candidate: Candidate,
    scanner: Scanner,
    records: Vec<Record>,
    watch_plan: WatchPlan,
}

/// Read the configuration and rescan in a blocking task; the result comes
/// back on `done`.
fn start_reload(reloader: &Reloader, key: &Key, done: &mpsc::Sender<anyhow::Result<Prepared>>) {
    let reloader = reloader.clone();
    let key = key.clone();
    let done = done.clone();
    tokio::task::spawn_blocking(move || {
        let prepared = reloader
            .read()
            .map_err(anyhow::Error::from)
            .and_then(|candidate| {
                let scanner = host_scanner(&candidate.plan, key)?;
                let (records, stats, watch_plan) = scanner.scan(&indicatif::ProgressBar::hidden());
                tracing::info!("reload: inventory: {}", listing::summary(&stats));
                Ok(Prepared {
                    candidate,
                    scanner,
                    records,
                    watch_plan,
                })
            });
        // The agent is gone when no one receives: nothing to reload.
        let _ = done.blocking_send(prepared);
    });
}

/// What applying a reload touches.
struct Reload<'a> {
    probes: &'a mut Probes,
    pipeline: &'a mut Pipeline,
    engine: &'a mut Engine,
    /// The scanner of the running configuration (its rules).
    scanned: &'a mut Scanner,
    sync_task: &'a mut JoinHandle<()>,
    changes_tx: &'a mpsc::Sender<InventoryChange>,
    reloader: &'a mut Reloader,
    key: &'a Key,
}

struct Applied {
    summary: ReloadSummary,
    findings_interval: Duration,
}

/// Watch what the new scan found, unwatch what the new rules no longer
/// cover, follow the new places, and give the findings their new settings.
fn apply_reload(prepared: Prepared, at: Reload<'_>) -> anyhow::Result<Applied> {
    let Prepared {
        candidate,
        scanner,
        records,
        watch_plan,
    } = prepared;
    let scanned = &*at.scanned;
    let changes = at
        .pipeline
        .watch
        .rescan_changes(records.clone(), |p| scanned.rule_for(p).is_some());
    let mut summary = ReloadSummary {
        reopened: at.pipeline.sink.path().map(|p| p.display().to_string()),
        ..ReloadSummary::default()
    };
    for change in changes {
        match &change {
            InventoryChange::Upsert(r) if !at.pipeline.watch.has_path(&r.path) => {
                summary.added += 1
            }
            InventoryChange::Remove(_) => summary.removed += 1,
            InventoryChange::Upsert(_) => {}
        }
        apply(at.probes, at.pipeline, change);
    }
    summary.watched = at.pipeline.watch.len();
    match follower(scanner, watch_plan, &records) {
        Ok(sync) => {
            at.sync_task.abort();
            *at.sync_task = tokio::spawn(sync.run(at.changes_tx.clone()));
        }
        Err(e) => tracing::warn!(
            "reload: cannot follow the new places, the old ones stay followed: {}",
            crate::errors::error_text(&e)
        ),
    }
    let plan = &candidate.plan;
    *at.scanned = host_scanner(plan, at.key.clone())?;
    at.engine
        .reconfigure(plan.findings.clone(), plan.ledger.retention);
    at.engine.refresh(&at.pipeline.watch, chrono::Utc::now());
    at.reloader.applied(&candidate);
    summary.applied = candidate.changes.applied;
    summary.restart_needed = candidate.changes.restart_needed;
    Ok(Applied {
        summary,
        findings_interval: candidate.plan.findings_interval,
    })
}

/// The `reloaded` event and its log line.
fn emit_reloaded(pipeline: &mut Pipeline, summary: ReloadSummary) -> anyhow::Result<()> {
    let list = |keys: &[String]| {
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    };
    let message = format!(
        "reloaded: {}policy read again, inventory rescanned \
         ({} watched, {} added, {} removed); changed and applied: {}; \
         changed, applied at the next restart: {}",
        match &summary.reopened {
            Some(path) => format!("{path} reopened, "),
            None => String::new(),
        },
        summary.watched,
        summary.added,
        summary.removed,
        list(&summary.applied),
        list(&summary.restart_needed),
    );
    tracing::info!("{message}");
    if !summary.restart_needed.is_empty() {
        tracing::warn!(
            "restart secretmon for these to take effect: {}",
            summary.restart_needed.join(", ")
        );
    }
    let body = Agent {
        status: AgentStatus::Reloaded,
        message,
        lost: 0,
        identity_cache: None,
        capture: None,
        reload: Some(summary),
    };
    let ev = Event::new("agent", chrono::Utc::now(), &pipeline.host, body);
    pipeline.sink.emit(&ev).context("writing events")?;
    pipeline.sink.flush().context("writing events")
}

/// SIGUSR1's line: what the agent has done so far.
fn status_line(probes: &Probes, pipeline: &Pipeline) -> String {
    let stats = &pipeline.stats;
    let cache = pipeline.identities.cache_stats();
    format!(
        "watching {} files; {} records, {} secret reads, {} malformed, {} lost; \
         identity cache {}/{} entries, {:.0}% hits",
        pipeline.watch.len(),
        stats.records,
        stats.secret_reads,
        stats.malformed,
        probes.lost().unwrap_or_default(),
        cache.size,
        cache.capacity,
        cache.hit_rate * 100.0,
    )
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
        reload: None,
    };
    let ev = Event::new("agent", chrono::Utc::now(), &pipeline.host, body);
    pipeline.sink.emit(&ev).context("writing events")?;
    pipeline.sink.flush().context("writing events")
}
