//! `secretmon run`: attach the probes, then turn ring-buffer records into
//! events until SIGINT, SIGTERM or SIGQUIT, and drain what is left before
//! exiting. SIGHUP reopens the file outputs and reloads what can change
//! without reattaching probes ([`crate::reload`]); SIGUSR1 logs a status
//! line. The agent owns the outputs: what the pipeline, the discovery
//! worker and the findings engine produce is routed to them here.

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    discovery,
    event::{Agent, AgentStatus, Body, Capture, Event, FindingBody, Host, ReloadSummary},
    features::ActiveHooks,
    findings::{
        engine::{Engine, Scope},
        rules::watch_overflow,
    },
    fleet,
    identity::IdentityResolver,
    inventory::{
        Inventory, InventoryChange, MapEdit, Record,
        catalog::Catalog,
        fingerprint::Key,
        listing,
        scan::{Scanner, WatchPlan},
        sync::Follower,
    },
    ledger::StateLock,
    metrics::Metrics,
    ocsf,
    outputs::{Outputs, Report, Staged, Stager},
    pipeline::Pipeline,
    plan::RunPlan,
    preflight,
    probes::{KernelCounters, Probes},
    redact::{ArgsPolicy, Redactor},
    reload::{Candidate, Reloader},
    service::Notifier,
    watch_map::{Classifier, MapOp, Overflow, WatchBudget},
};

/// How often the ring buffer is read without a wake-up from the kernel.
const RING_POLL: Duration = Duration::from_millis(20);

/// Inventory changes queued between the sync task and the agent.
const CHANGES_QUEUE: usize = 1024;

pub async fn run(mut plan: RunPlan, mut reloader: Reloader) -> anyhow::Result<()> {
    // First of all: a signal during the seconds of start-up (a stop, a
    // logrotate's SIGHUP) waits for the loop instead of killing the agent.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let metrics = Metrics::new(ocsf::VERSION);
    if let Some(addr) = plan.metrics.listen {
        let bound = metrics.serve(addr)?;
        tracing::info!("metrics at http://{bound}/metrics");
    }
    let kernel = preflight::check()?;
    // One agent per state dir, checked before any work.
    let lock = StateLock::acquire(&plan.state_dir)?;
    // One key for every scanner of this run, a one-time key included.
    let key = listing::load_key(&plan.inventory, &plan.state_dir)?;
    let scanner = host_scanner(&plan, key.clone())?;
    let key_id = scanner.key_id();
    let classifier = Classifier::new(scanner.homes(), &plan.watch);
    let (records, stats, scan_plan) = scanner.scan(&indicatif::ProgressBar::hidden());
    tracing::info!("inventory: {}", listing::summary(&stats));
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let mut outputs = Outputs::start(plan.outputs.clone(), &plan.state_dir, &metrics, reports_tx)?;

    let mut probes = Probes::attach(
        kernel,
        plan.capture.ring_buffer_size,
        plan.capture.map_entries(),
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
        plan.ledger.retention.get(),
        &watch,
        &key_id,
    )?;
    // What fits in the kernel's map, by priority; the same choice at every
    // start.
    let mut budget = WatchBudget::new(plan.capture.max_watched, classifier);
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
    let fleet = start_fleet(plan.fleet.take(), &plan, &key_id)?;
    let (changes_tx, mut changes) = mpsc::channel(CHANGES_QUEUE);
    let mut sync_task = tokio::spawn(sync.run(changes_tx.clone()));
    for pattern in &plan.env_patterns {
        probes.watch_env(pattern)?;
    }
    let mut ring = probes
        .take_events()
        .context("ring buffer already taken")?
        .context("cannot poll the ring buffer")?;
    let watched = watch.len() - budget.unwatched();
    let identities = IdentityResolver::for_host(plan.naming.clone(), plan.identity.clone());
    let (found_tx, mut found) = mpsc::unbounded_channel();
    let discovery = discovery::spawn(host_scanner(&plan, key.clone())?, found_tx)
        .context("cannot start a thread")?;
    if plan.process_args == ArgsPolicy::Full {
        tracing::warn!(
            "process.args = full: events show command lines as processes passed them, \
             secrets included"
        );
    }
    let mut pipeline = Pipeline::new(watch, plan.host.clone(), identities)?
        .with_discoverer(discovery)
        .with_redactor(Redactor::new(plan.process_args, &plan.capture.env_names));
    tracing::info!("watching {watched} files");
    let message = format!(
        "probes attached ({} hooks; opens seen by {}, denied opens by {}{}); \
         watching {watched} files; {io_uring}",
        probes.hooks,
        probes.active.opens(),
        probes.active.denied_opens(),
        match (probes.active, probes.from_registers) {
            (ActiveHooks::Fexit, _) => "",
            (_, true) => ", arguments from saved registers",
            (_, false) => ", arguments from enter hooks",
        }
    );
    let capture = Capture {
        opens: probes.active.opens(),
        denied_opens: probes.active.denied_opens(),
        io_uring_opens: io_uring,
    };
    emit_agent(
        &mut outputs,
        &pipeline.host,
        Agent {
            capture: Some(capture),
            ..agent_body(AgentStatus::Started, message, &KernelCounters::default())
        },
    );
    let mut overflow = Overflow::default();
    report_overflow(
        &mut budget,
        &pipeline,
        &mut engine,
        &mut outputs,
        &mut overflow,
        &KernelCounters::default(),
    );
    metrics.set_ready();
    let mut service = Notifier::from_env();
    service.ready(&format!("watching {watched} files"));

    // The kernel side wakes us only when the ring fills up (a wake-up costs
    // the process that sends the event ~10 µs on a VM): the rest is read
    // on this poll, so an event waits at most this long.
    let mut poll = tokio::time::interval(RING_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Folded reads go out on this tick, so within a second of the first.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The clock-driven rules and the inventory refresh; the first tick is
    // at once.
    let mut findings_interval = plan.findings_interval;
    let mut periodic = tokio::time::interval(findings_interval);
    // Per-program kernel statistics, for the metrics.
    let mut program_stats = tokio::time::interval(PROGRAM_STATS_INTERVAL);
    let mut programs = ProgramStats::default();
    let mut reported = KernelCounters::default();
    // The watchdog's keep-alive, from this loop: a stalled drain stops it.
    let keepalive = service.keepalive_period();
    let mut watchdog = tokio::time::interval(keepalive.unwrap_or(Duration::from_secs(3600)));
    // A reload reads and rescans off this loop, which keeps draining; its
    // result comes back here to be applied.
    let (reload_tx, mut reloads) = mpsc::channel(1);
    let mut reload_running = false;
    let mut reload_again = false;
    // The file outputs SIGHUP reopened, for the `reloaded` event.
    let mut reopened = Vec::new();
    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), &mut pipeline, &mut probes, &mut budget, &mut outputs)?;
                guard.clear_ready();
            }
            _ = poll.tick() => {
                drain(ring.get_mut(), &mut pipeline, &mut probes, &mut budget, &mut outputs)?;
            }
            Some(change) = changes.recv() => apply(&mut probes, &mut pipeline, &mut budget, change),
            Some(report) = found.recv() => {
                let events = pipeline.discovered(report);
                for edit in pipeline.take_edits() {
                    apply_edit(&mut probes, &mut budget, &pipeline.watch, edit);
                }
                outputs.route(events);
            }
            Some(report) = reports.recv() => report_output(&mut outputs, &pipeline.host, report),
            _ = tick.tick() => {
                outputs.route(pipeline.flush_folds());
                record(&mut pipeline, &mut engine, &mut outputs, Scope::Events);
                reported = report_kernel_counters(&probes, &mut outputs, &pipeline.host, &metrics, &reported)?;
                if let Some(fleet) = &fleet {
                    fleet.lost(reported.lost);
                }
                report_spool_drops(&mut outputs, &pipeline.host);
                report_overflow(&mut budget, &pipeline, &mut engine, &mut outputs, &mut overflow, &reported);
                metrics.kernel_errors(reported.total_errors());
                metrics.watched_secrets.set(pipeline.watch.len() as i64);
                metrics.tracked_processes.set(pipeline.tracked_processes() as i64);
                metrics.tick();
            }
            _ = periodic.tick() => {
                let now = chrono::Utc::now();
                engine.refresh(&pipeline.watch, now);
                engine.check_liveness(now);
                engine.prune_daily(now);
                record(&mut pipeline, &mut engine, &mut outputs, Scope::All);
            }
            _ = program_stats.tick(), if plan.metrics.listen.is_some() => {
                programs.update(&probes, &metrics);
            }
            _ = watchdog.tick(), if keepalive.is_some() => service.alive(),
            _ = sighup.recv() => {
                service.reloading();
                // First: what was queued so far goes to the files logrotate
                // moved; from now on events go to new files at the
                // configured paths.
                for path in outputs.reopen() {
                    // Several SIGHUPs may come before one reload is done.
                    if !reopened.contains(&path) {
                        reopened.push(path);
                    }
                }
                if reload_running {
                    reload_again = true;
                } else {
                    reload_running = true;
                    start_reload(&reloader, &key, outputs.stager(), &reload_tx);
                }
            }
            Some(prepared) = reloads.recv() => {
                reload_running = false;
                match prepared {
                    Ok(mut prepared) => {
                        let staged = prepared.outputs.take();
                        let applied = apply_reload(
                            prepared,
                            Reload {
                                probes: &mut probes,
                                pipeline: &mut pipeline,
                                budget: &mut budget,
                                engine: &mut engine,
                                scanned: &mut scanned,
                                sync_task: &mut sync_task,
                                changes_tx: &changes_tx,
                                reloader: &mut reloader,
                                key: &key,
                            },
                        )?;
                        if applied.findings_interval != findings_interval {
                            findings_interval = applied.findings_interval;
                            periodic = tokio::time::interval(findings_interval);
                        }
                        // The one point where events stop going to the
                        // replaced outputs and go to the new ones.
                        let summary = ReloadSummary {
                            reopened: std::mem::take(&mut reopened),
                            outputs: staged.map(|s| outputs.swap(s)).unwrap_or_default(),
                            ..applied.summary
                        };
                        emit_reloaded(&mut outputs, &pipeline.host, &reported, summary);
                    }
                    Err(e) => {
                        let why = crate::errors::error_text(e.as_ref());
                        let message =
                            format!("reload failed, the running configuration stays: {why}");
                        tracing::warn!("{message}");
                        reopened.clear();
                        let body = agent_body(AgentStatus::ReloadFailed, message, &reported);
                        emit_agent(&mut outputs, &pipeline.host, body);
                    }
                }
                if reload_again {
                    reload_again = false;
                    reload_running = true;
                    start_reload(&reloader, &key, outputs.stager(), &reload_tx);
                } else {
                    service.ready(&format!("watching {} files", watched_count(&pipeline, &budget)));
                }
            }
            _ = sigusr1.recv() => {
                let line = status_line(&probes, &pipeline, &budget);
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

    drain(
        ring.get_mut(),
        &mut pipeline,
        &mut probes,
        &mut budget,
        &mut outputs,
    )?;
    outputs.route(pipeline.flush_folds());
    record(&mut pipeline, &mut engine, &mut outputs, Scope::Events);
    reported = report_kernel_counters(&probes, &mut outputs, &pipeline.host, &metrics, &reported)?;
    report_spool_drops(&mut outputs, &pipeline.host);
    let ledger = engine.close();
    // The ledger is complete now: the fleet gets its last rows.
    if let Some(fleet) = fleet {
        fleet.lost(reported.lost);
        fleet.finish().await;
    }
    let stats = pipeline.stats;
    let cache = pipeline.identities.cache_stats();
    emit_agent(
        &mut outputs,
        &pipeline.host,
        Agent {
            identity_cache: Some(cache),
            ..agent_body(
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
                &reported,
            )
        },
    );
    outputs.close();
    Ok(())
}

/// How often per-program kernel statistics are read for the metrics.
const PROGRAM_STATS_INTERVAL: Duration = Duration::from_secs(5);

/// The kernel's per-program run time and count as last read, so that the
/// metrics' counters grow by what was added since.
#[derive(Default)]
struct ProgramStats {
    last: HashMap<String, (Duration, u64)>,
}

impl ProgramStats {
    /// Only while `kernel.bpf_stats_enabled` is 1 does the kernel count.
    fn update(&mut self, probes: &Probes, metrics: &Metrics) {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|s| s.trim() == "1");
        if !enabled {
            return;
        }
        for (name, run_time, runs) in probes.program_stats() {
            let (last_time, last_runs) = self.last.get(&name).copied().unwrap_or_default();
            metrics.program_ran(
                &name,
                run_time.saturating_sub(last_time),
                runs.saturating_sub(last_runs),
            );
            self.last.insert(name, (run_time, runs));
        }
    }
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

/// A configuration read again and the host scanned with it, ready to apply.
struct Prepared {
    candidate: Candidate,
    /// The outputs the new configuration adds or changes, started; taken
    /// out to be swapped in.
    outputs: Option<Staged>,
    scanner: Scanner,
    records: Vec<Record>,
    watch_plan: WatchPlan,
}

/// Read the configuration, start the outputs it adds or changes and rescan,
/// in a blocking task; the result comes back on `done`.
fn start_reload(
    reloader: &Reloader,
    key: &Key,
    outputs: Stager,
    done: &mpsc::Sender<anyhow::Result<Prepared>>,
) {
    let reloader = reloader.clone();
    let key = key.clone();
    let done = done.clone();
    tokio::task::spawn_blocking(move || {
        let prepared = reloader
            .read()
            .map_err(anyhow::Error::from)
            .and_then(|candidate| {
                let staged = outputs.stage(candidate.plan.outputs.clone())?;
                let scanner = host_scanner(&candidate.plan, key)?;
                let (records, stats, watch_plan) = scanner.scan(&indicatif::ProgressBar::hidden());
                tracing::info!("reload: inventory: {}", listing::summary(&stats));
                Ok(Prepared {
                    candidate,
                    outputs: Some(staged),
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
    budget: &'a mut WatchBudget,
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
        ..
    } = prepared;
    let scanned = &*at.scanned;
    let changes = at
        .pipeline
        .watch
        .rescan_changes(records.clone(), |p| scanned.rule_for(p).is_some());
    let mut summary = ReloadSummary::default();
    for change in changes {
        match &change {
            InventoryChange::Upsert(r) if !at.pipeline.watch.has_path(&r.path) => {
                summary.added += 1
            }
            InventoryChange::Remove(_) => summary.removed += 1,
            InventoryChange::Upsert(_) => {}
        }
        apply(at.probes, at.pipeline, at.budget, change);
    }
    summary.watched = watched_count(at.pipeline, at.budget);
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
        .reconfigure(plan.findings.clone(), plan.ledger.retention.get());
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
fn emit_reloaded(
    outputs: &mut Outputs,
    host: &Host,
    counters: &KernelCounters,
    summary: ReloadSummary,
) {
    let list = |keys: &[String]| {
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    };
    let changed = &summary.outputs;
    let message = format!(
        "reloaded: {}{}policy read again, inventory rescanned \
         ({} watched, {} added, {} removed); changed and applied: {}; \
         changed, applied at the next restart: {}",
        match summary.reopened.as_slice() {
            [] => String::new(),
            files => format!("{} reopened, ", files.join(", ")),
        },
        if changed.is_empty() {
            String::new()
        } else {
            format!(
                "outputs added: {}, changed: {}, removed: {}; ",
                list(&changed.added),
                list(&changed.changed),
                list(&changed.removed)
            )
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
        reload: Some(summary),
        ..agent_body(AgentStatus::Reloaded, message, counters)
    };
    emit_agent(outputs, host, body);
}

/// Secrets the kernel watches: the inventory less what did not fit.
fn watched_count(pipeline: &Pipeline, budget: &WatchBudget) -> usize {
    pipeline.watch.len() - budget.unwatched()
}

/// SIGUSR1's line: what the agent has done so far.
fn status_line(probes: &Probes, pipeline: &Pipeline, budget: &WatchBudget) -> String {
    let stats = &pipeline.stats;
    let cache = pipeline.identities.cache_stats();
    format!(
        "watching {} files; {} records, {} secret reads, {} malformed, {} lost; \
         identity cache {}/{} entries, {:.0}% hits",
        watched_count(pipeline, budget),
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
fn apply(
    probes: &mut Probes,
    pipeline: &mut Pipeline,
    budget: &mut WatchBudget,
    change: InventoryChange,
) {
    let edit = pipeline.inventory_change(change);
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
    outputs: &mut Outputs,
) -> anyhow::Result<()> {
    while let Some(record) = ring.next() {
        outputs.route(pipeline.handle(&record));
    }
    // Files already inventoried by another name are watched from now on.
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
    pipeline: &Pipeline,
    engine: &mut Engine,
    outputs: &mut Outputs,
    reported: &mut Overflow,
    counters: &KernelCounters,
) {
    if !budget.take_changed() {
        return;
    }
    let now = budget.overflow();
    if now == *reported {
        return;
    }
    engine.record_overflow(&now);
    if now.unwatched > reported.unwatched {
        tracing::warn!("{}", now.message());
        emit_agent(
            outputs,
            &pipeline.host,
            Agent {
                watch_overflow: Some(now.clone()),
                ..agent_body(AgentStatus::WatchOverflow, now.message(), counters)
            },
        );
    }
    let at = chrono::Utc::now();
    let new = engine.raise(watch_overflow(&now), at);
    outputs.route(
        new.into_iter()
            .map(|finding| Event::new(at, &pipeline.host, Body::Finding(FindingBody { finding }))),
    );
    *reported = now;
}

/// Hand what the pipeline observed to the ledger, and route the findings
/// that now hold for the first time.
fn record(pipeline: &mut Pipeline, engine: &mut Engine, outputs: &mut Outputs, scope: Scope) {
    for o in pipeline.observed.drain(..) {
        engine.observe(&o);
    }
    let now = chrono::Utc::now();
    let new = engine.check(now, scope);
    outputs
        .route(new.into_iter().map(|finding| {
            Event::new(now, &pipeline.host, Body::Finding(FindingBody { finding }))
        }));
}

/// Emit an `agent` event when the kernel dropped events (`lost`) or
/// counted failed reads (`kernel_errors`) since the last report. Returns
/// the new totals.
fn report_kernel_counters(
    probes: &Probes,
    outputs: &mut Outputs,
    host: &Host,
    metrics: &Metrics,
    reported: &KernelCounters,
) -> anyhow::Result<KernelCounters> {
    let now = probes.counters()?;
    if now.lost > reported.lost {
        let delta = now.lost - reported.lost;
        metrics.kernel_lost.inc_by(delta);
        tracing::warn!(
            "ring buffer full: {delta} events lost ({} in all)",
            now.lost
        );
        emit_agent(
            outputs,
            host,
            agent_body(
                AgentStatus::Lost,
                format!("ring buffer full: {delta} events lost since the last report"),
                &now,
            ),
        );
    }
    if now.total_errors() > reported.total_errors() {
        let before = reported.errors_by_program();
        let new: Vec<String> = now
            .errors_by_program()
            .into_iter()
            .filter_map(|(program, n)| {
                let delta = n - before.get(program).copied().unwrap_or(0);
                (delta > 0).then(|| format!("{program} {delta}"))
            })
            .collect();
        let message = format!(
            "kernel reads failed since the last report (events may be incomplete): {}",
            new.join(", ")
        );
        tracing::warn!("{message}");
        emit_agent(
            outputs,
            host,
            agent_body(AgentStatus::KernelErrors, message, &now),
        );
    }
    Ok(now)
}

/// Spool drops are reported as kernel losses are: a warning and an `agent`
/// event with the total.
fn report_spool_drops(outputs: &mut Outputs, host: &Host) {
    for (name, delta, total) in outputs.spool_drops() {
        tracing::warn!("output {name}: spool full: {delta} oldest events dropped ({total} in all)");
        let ev = Event::new(
            chrono::Utc::now(),
            host,
            Body::Agent(Agent {
                status: AgentStatus::SpoolDropped,
                message: format!(
                    "output {name}: spool full: {delta} undelivered events dropped, oldest first"
                ),
                lost: total,
                kernel_errors: Default::default(),
                output: Some(name),
                identity_cache: None,
                capture: None,
                watch_overflow: None,
                reload: None,
            }),
        );
        outputs.route([ev]);
    }
}

/// An output's receiver went away or came back: say so in the events too.
fn report_output(outputs: &mut Outputs, host: &Host, report: Report) {
    let (status, output, message) = match report {
        Report::Down { output, reason } => (
            AgentStatus::OutputDown,
            output.clone(),
            format!("output {output}: receiver unreachable ({reason}); spooling until it is back"),
        ),
        Report::Up { output, pending } => (
            AgentStatus::OutputUp,
            output.clone(),
            format!("output {output}: receiver is back; {pending} spooled events to deliver"),
        ),
    };
    let ev = Event::new(
        chrono::Utc::now(),
        host,
        Body::Agent(Agent {
            status,
            message,
            lost: 0,
            kernel_errors: Default::default(),
            output: Some(output),
            identity_cache: None,
            capture: None,
            watch_overflow: None,
            reload: None,
        }),
    );
    outputs.route([ev]);
}

/// An `agent` event with the kernel's counters; callers add the fields
/// their status is about.
fn agent_body(status: AgentStatus, message: String, counters: &KernelCounters) -> Agent {
    Agent {
        status,
        message,
        lost: counters.lost,
        kernel_errors: counters.errors_by_program(),
        output: None,
        identity_cache: None,
        capture: None,
        watch_overflow: None,
        reload: None,
    }
}

fn emit_agent(outputs: &mut Outputs, host: &Host, body: Agent) {
    outputs.route([Event::new(chrono::Utc::now(), host, Body::Agent(body))]);
}
