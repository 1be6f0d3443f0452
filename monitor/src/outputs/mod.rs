//! Where events go. The agent hands every event to [`Outputs::route`],
//! which encodes it once per format and queues it to each output whose
//! filter takes it. Each output has its own queue and thread, so a slow or
//! dead one never holds up the ring-buffer drain or the other outputs: a
//! full queue drops and counts. Stdout and files write lines; network
//! outputs (syslog, HTTP) write to an on-disk [`spool`] first and deliver
//! from it in order, retrying with backoff and jitter while the receiver is
//! down, and say once when it went away and once when it is back. SIGHUP
//! swaps in a changed set of outputs without dropping an event (see `swap`).

pub mod config;
pub mod file;
pub mod http;
pub mod spool;
mod swap;

pub use swap::{Staged, Stager};
pub mod syslog;
pub mod tls;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use self::{
    config::{Destination, Format, OutputConfigError, OutputSpec},
    file::LineWriter,
    http::HttpSender,
    spool::Spool,
    syslog::SyslogSender,
};
use crate::{
    errors::error_text,
    event::{Event, Severity},
    metrics::{Metrics, OutputMetrics},
};

/// Events an output's in-memory queue holds before it drops.
const QUEUE: usize = 65_536;
/// On stop, how long a reachable receiver gets to take what is spooled.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Retry delays grow from this...
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// ...to at most this.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Records per syslog batch, and bytes per batch of any network output.
const SYSLOG_BATCH: usize = 1000;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// One event, encoded for one format: what an output needs of it.
#[derive(Debug)]
pub struct Record {
    pub id: String,
    pub kind: &'static str,
    pub severity: Severity,
    pub time: DateTime<Utc>,
    pub host: String,
    /// The event as one JSON object.
    pub json: String,
}

enum Message {
    Event(Arc<Record>),
    /// Reopen a file output (logrotate moved it).
    Reopen,
}

/// Why a send failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The receiver is unreachable or busy: the batch stays, to be retried.
    Retry(String),
    /// The receiver refused it for good: the batch is dropped and counted.
    Reject(String),
}

impl SendError {
    fn retry(e: std::io::Error) -> Self {
        Self::Retry(error_text(&e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Config(#[from] OutputConfigError),
    #[error("TLS: {0}")]
    Tls(String),
    // `err`, not `source`: said once, in this line, not again as its cause.
    #[error("output `{name}`: cannot open {what}: {}", error_text(.err))]
    Open {
        name: String,
        what: String,
        err: std::io::Error,
    },
}

/// What a network output tells the agent about its receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Down { output: String, reason: String },
    Up { output: String, pending: u64 },
}

/// The spool and the threads that share it.
struct Shared {
    spool: Mutex<Spool>,
    /// Signalled when records are appended or the output closes.
    wake: Condvar,
    closing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Spool> {
        // A thread that panicked with the lock held left a usable spool.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Handle {
    spec: OutputSpec,
    tx: SyncSender<Message>,
    /// Writes the output; joins what it started before it ends.
    thread: JoinHandle<()>,
    metrics: OutputMetrics,
    spool_dropped: Arc<AtomicU64>,
    spool_dropped_reported: u64,
    /// When the queue was last found full, so that is said once a minute.
    full_warned: Option<Instant>,
}

impl Handle {
    /// Write out what is queued and stop (see [`Outputs::close`]).
    fn close(self) {
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!("output {}: its thread panicked", self.spec.name);
        }
    }
}

/// What an output needs from the agent to start.
#[derive(Clone)]
struct Context {
    state: PathBuf,
    metrics: Metrics,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
}

pub struct Outputs {
    outputs: Vec<Handle>,
    context: Context,
    /// Outputs a reload replaced, still writing out their queues.
    retiring: Arc<swap::Retiring>,
}

impl Outputs {
    /// Open every output: files are created, spools recovered, TLS settings
    /// loaded, so that a mistake stops the agent before it starts. No
    /// receiver is contacted: one that is down is not an error.
    pub fn start(
        specs: Vec<OutputSpec>,
        state: &Path,
        metrics: &Metrics,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
    ) -> Result<Self, OutputError> {
        let context = Context {
            state: state.to_path_buf(),
            metrics: metrics.clone(),
            reports,
        };
        Ok(Self {
            outputs: start_all(specs, &context)?,
            context,
            retiring: Arc::default(),
        })
    }

    /// Queue each event to every output that takes it. Never blocks.
    pub fn route(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.context.metrics.event(event.kind());
            let severity = event.body.severity();
            let mut encoded: [Option<Arc<Record>>; 2] = [None, None];
            for out in &mut self.outputs {
                if !out.spec.filter.accepts(event.kind(), severity) {
                    continue;
                }
                let slot = &mut encoded[out.spec.format as usize];
                let record = slot.get_or_insert_with(|| Arc::new(encode(&event, out.spec.format)));
                match out.tx.try_send(Message::Event(record.clone())) {
                    Ok(()) => {
                        out.metrics.queued.inc();
                    }
                    Err(e) => {
                        out.metrics.dropped.inc();
                        if out
                            .full_warned
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                        {
                            // Not running: a reload could not open its target.
                            let why = match e {
                                TrySendError::Full(_) => "queue full",
                                TrySendError::Disconnected(_) => "not running",
                            };
                            tracing::warn!(
                                "output {}: {why}, events dropped (see \
                                 secretmon_output_dropped_events_total)",
                                out.spec.name
                            );
                            out.full_warned = Some(Instant::now());
                        }
                    }
                }
            }
        }
    }

    /// Reopen every file output, as logrotate's postrotate wants (SIGHUP):
    /// what is queued goes to the file as it was, what follows to a new
    /// file at its path. Returns the paths of the files asked to reopen.
    pub fn reopen(&self) -> Vec<String> {
        let mut reopened = Vec::new();
        for out in &self.outputs {
            if let Destination::File(path) = &out.spec.destination {
                // Behind the events already queued; a full queue reopens at
                // the next rotation signal.
                match out.tx.try_send(Message::Reopen) {
                    Ok(()) => reopened.push(path.display().to_string()),
                    Err(_) => tracing::warn!(
                        "output {}: queue full, not reopened until the next SIGHUP",
                        out.spec.name
                    ),
                }
            }
        }
        reopened
    }

    /// Spools that dropped events since the last call: (output, dropped
    /// since, dropped in all).
    pub fn spool_drops(&mut self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for h in &mut self.outputs {
            let total = h.spool_dropped.load(Ordering::Relaxed);
            if total > h.spool_dropped_reported {
                out.push((h.spec.name.clone(), total - h.spool_dropped_reported, total));
                h.spool_dropped_reported = total;
            }
        }
        out
    }

    /// Write out what is queued and stop: files are flushed, network
    /// outputs spool the rest and deliver for a few seconds more while
    /// their receiver takes it; what is left is sent after the next start.
    /// Outputs a reload replaced finish first.
    pub fn close(self) {
        self.retiring.wait();
        for h in self.outputs {
            h.close();
        }
    }
}

/// The event in `format`, with what the outputs need to frame it.
fn encode(event: &Event, format: Format) -> Record {
    let json = match format {
        Format::Native => serde_json::to_string(event).expect("events serialize"),
        Format::Ocsf => crate::ocsf::to_json(event),
    };
    Record {
        id: event.id.clone(),
        kind: event.kind(),
        severity: event.body.severity(),
        time: event.time,
        host: event.host.name.clone(),
        json,
    }
}

/// Start every output; on a mistake, close the ones already started.
fn start_all(specs: Vec<OutputSpec>, context: &Context) -> Result<Vec<Handle>, OutputError> {
    let mut outputs = Vec::with_capacity(specs.len());
    for spec in specs {
        match start_one(spec, context) {
            Ok(h) => outputs.push(h),
            Err(e) => {
                outputs.into_iter().for_each(Handle::close);
                return Err(e);
            }
        }
    }
    Ok(outputs)
}

fn start_one(spec: OutputSpec, context: &Context) -> Result<Handle, OutputError> {
    let sender = Sender::for_output(&spec)?;
    let m = context.metrics.output(&spec.name);
    let target = Target::open(&spec, &context.state, sender)?;
    if let Target::Network { spool, .. } = &target {
        m.queued.set(spool.pending() as i64);
        m.spool_bytes.set(spool.bytes() as i64);
    }
    launch(spec, m, context, move |run| run(target))
}

/// Start `spec`'s thread, which gets what it writes to from `open`: at
/// once, or once the outputs it replaces have let go of it.
fn launch(
    spec: OutputSpec,
    m: OutputMetrics,
    context: &Context,
    open: impl FnOnce(&dyn Fn(Target)) + Send + 'static,
) -> Result<Handle, OutputError> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let spool_dropped = Arc::new(AtomicU64::new(0));
    let name = spec.name.clone();
    let thread = {
        let (spec, m, dropped) = (spec.clone(), m.clone(), spool_dropped.clone());
        let reports = context.reports.clone();
        std::thread::Builder::new()
            .name(format!("out-{}", spec.name))
            .spawn(move || open(&|target| run(target, &spec, &rx, &m, &dropped, &reports)))
            .map_err(|err| OutputError::Open {
                name: name.clone(),
                what: "a thread".into(),
                err,
            })?
    };
    Ok(Handle {
        spec,
        tx,
        thread,
        metrics: m,
        spool_dropped,
        spool_dropped_reported: 0,
        full_warned: None,
    })
}

/// What an output writes to, open.
enum Target {
    Local(LineWriter),
    Network { spool: Spool, sender: Sender },
}

impl Target {
    /// Create the file or recover the spool. `sender` is the network
    /// output's connection, made beforehand.
    fn open(spec: &OutputSpec, state: &Path, sender: Option<Sender>) -> Result<Self, OutputError> {
        let open_err = |what: String| {
            let name = spec.name.clone();
            move |err| OutputError::Open { name, what, err }
        };
        Ok(match (&spec.destination, sender) {
            (Destination::File(path), _) => Self::Local(
                LineWriter::file(path, spec.max_size, spec.max_files)
                    .map_err(open_err(path.display().to_string()))?,
            ),
            (Destination::Stdout, _) => Self::Local(LineWriter::stdout()),
            (_, Some(sender)) => {
                let dir = config::spool_dir(state, &spec.name);
                let spool = Spool::open(&dir, spec.spool_bytes)
                    .map_err(open_err(format!("its spool {}", dir.display())))?;
                Self::Network { spool, sender }
            }
            (_, None) => unreachable!("network outputs are opened with their sender"),
        })
    }
}

/// An output's thread: write what comes on `rx` until the agent lets go of
/// the queue. A network output spools here and delivers from a thread of
/// its own, which gets a few seconds more to empty the spool.
fn run(
    target: Target,
    spec: &OutputSpec,
    rx: &Receiver<Message>,
    m: &OutputMetrics,
    dropped: &AtomicU64,
    reports: &tokio::sync::mpsc::UnboundedSender<Report>,
) {
    let name = &spec.name;
    let (spool, sender) = match target {
        Target::Local(writer) => return run_local(writer, rx, m, name),
        Target::Network { spool, sender } => (spool, sender),
    };
    let shared = Arc::new(Shared {
        spool: Mutex::new(spool),
        wake: Condvar::new(),
        closing: AtomicBool::new(false),
    });
    let delivery = {
        let (shared, m, name) = (shared.clone(), m.clone(), name.clone());
        let reports = reports.clone();
        std::thread::Builder::new()
            .name(format!("send-{name}"))
            .spawn(move || run_sender(sender, &shared, &m, &name, &reports))
    };
    let delivery = match delivery {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(
                "output {name}: cannot start a thread, events stay spooled: {}",
                error_text(&e)
            );
            None
        }
    };
    run_spooler(&Framer::new(spec), rx, &shared, m, dropped, name);
    if delivery.is_some_and(|t| t.join().is_err()) {
        tracing::error!("output {name}: its delivery thread panicked");
    }
    let pending = shared.lock().pending();
    if pending > 0 {
        tracing::info!("output {name}: {pending} events stay spooled for the next start");
    }
}

fn run_local(mut w: LineWriter, rx: &Receiver<Message>, m: &OutputMetrics, name: &str) {
    let mut failing = false;
    let mut handle = |w: &mut LineWriter, msg: Message| {
        let result = match msg {
            Message::Event(r) => {
                m.queued.dec();
                let written = w.write_line(&r.json);
                match &written {
                    Ok(()) => m.delivered.inc(),
                    Err(_) => m.rejected.inc(),
                };
                written
            }
            Message::Reopen => w.reopen(),
        };
        match (result, failing) {
            (Err(e), false) => {
                tracing::warn!("output {name}: {}", error_text(&e));
                failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("output {name}: writing again");
                failing = false;
            }
            _ => {}
        }
    };
    while let Ok(msg) = rx.recv() {
        handle(&mut w, msg);
        // A burst is written before the flush that `tail -f` sees.
        while let Ok(msg) = rx.try_recv() {
            handle(&mut w, msg);
        }
        if let Err(e) = w.flush() {
            tracing::debug!("output {name}: flush: {}", error_text(&e));
        }
    }
}

/// How a network output turns a record into spooled bytes.
enum Framer {
    Syslog { facility: u8, procid: u32 },
    Http(config::HttpSettings, Format),
}

impl Framer {
    fn new(spec: &OutputSpec) -> Self {
        match spec.destination {
            Destination::Http(_) => Self::Http(spec.http.clone(), spec.format),
            _ => Self::Syslog {
                facility: spec.facility.code(),
                procid: std::process::id(),
            },
        }
    }

    fn frame(&self, r: &Record) -> Vec<u8> {
        match self {
            Self::Syslog { facility, procid } => syslog::message(r, *facility, *procid),
            Self::Http(settings, format) => http::frame(r, settings, *format),
        }
    }
}

/// The connection of a network output.
enum Sender {
    Syslog(SyslogSender),
    Http(HttpSender, usize),
}

impl Sender {
    /// A network output's connection (TLS settings and tokens read); none
    /// for a local output.
    fn for_output(spec: &OutputSpec) -> Result<Option<Self>, OutputError> {
        Ok(Some(match &spec.destination {
            Destination::Syslog(target) => {
                let tls = match target {
                    config::SyslogTarget::Tls(..) => Some(tls::client_config(&spec.tls)?),
                    _ => None,
                };
                Self::Syslog(SyslogSender::new(target.clone(), tls))
            }
            Destination::Http(url) => {
                let tls = if url.scheme() == "https" {
                    tls::ureq_config(&spec.tls)?
                } else {
                    ureq::tls::TlsConfig::default()
                };
                Self::Http(
                    HttpSender::new(url, &spec.http, tls)?,
                    spec.http.batch_events,
                )
            }
            Destination::Stdout | Destination::File(_) => return Ok(None),
        }))
    }

    fn batch_records(&self) -> usize {
        match self {
            Self::Syslog(_) => SYSLOG_BATCH,
            Self::Http(_, n) => *n,
        }
    }

    fn send(&mut self, records: &[Vec<u8>]) -> Result<(), SendError> {
        match self {
            Self::Syslog(s) => s.send(records),
            Self::Http(h, _) => h.send(records),
        }
    }
}

/// Queue → spool, off the agent's thread.
fn run_spooler(
    framer: &Framer,
    rx: &Receiver<Message>,
    shared: &Shared,
    m: &OutputMetrics,
    dropped_total: &AtomicU64,
    name: &str,
) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut frames = Vec::new();
        for msg in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            if let Message::Event(r) = msg {
                frames.push(framer.frame(&r));
            }
            if frames.len() >= SYSLOG_BATCH {
                break;
            }
        }
        let n = frames.len() as u64;
        let mut spool = shared.lock();
        match spool.append(&frames) {
            Ok(dropped) => {
                if dropped > 0 {
                    dropped_total.fetch_add(dropped, Ordering::Relaxed);
                    m.spool_dropped.inc_by(dropped);
                    m.queued.sub(dropped as i64);
                }
                failing = false;
            }
            Err(e) => {
                m.rejected.inc_by(n);
                m.queued.sub(n as i64);
                if !failing {
                    tracing::warn!(
                        "output {name}: cannot write its spool, events lost: {}",
                        error_text(&e)
                    );
                    failing = true;
                }
            }
        }
        m.spool_bytes.set(spool.bytes() as i64);
        drop(spool);
        shared.wake.notify_all();
    }
    shared.closing.store(true, Ordering::Relaxed);
    shared.wake.notify_all();
}

/// The delay before retry `attempt`: doubling up to a cap, the second half
/// random, so that agents that lost the same receiver do not all come back
/// at once.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_MIN
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Spool → receiver, in order.
fn run_sender(
    mut sender: Sender,
    shared: &Shared,
    m: &OutputMetrics,
    name: &str,
    reports: &tokio::sync::mpsc::UnboundedSender<Report>,
) {
    let mut down = false;
    let mut attempt = 0;
    let mut close_by: Option<Instant> = None;
    loop {
        let batch = {
            let mut spool = shared.lock();
            loop {
                if shared.closing.load(Ordering::Relaxed) {
                    let deadline = *close_by.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
                    if spool.pending() == 0 || down || Instant::now() >= deadline {
                        return;
                    }
                }
                match spool.peek(sender.batch_records(), BATCH_BYTES) {
                    Ok(b) if !b.records.is_empty() => break b,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("output {name}: cannot read its spool: {}", error_text(&e));
                    }
                }
                spool = shared
                    .wake
                    .wait_timeout(spool, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let n = batch.records.len() as u64;
        match sender.send(&batch.records) {
            Ok(()) => {
                let mut spool = shared.lock();
                if let Err(e) = spool.ack(batch.end) {
                    tracing::warn!(
                        "output {name}: cannot save its spool cursor: {}",
                        error_text(&e)
                    );
                }
                m.delivered.inc_by(n);
                m.queued.sub(n as i64);
                m.spool_bytes.set(spool.bytes() as i64);
                let pending = spool.pending();
                drop(spool);
                attempt = 0;
                if down {
                    down = false;
                    tracing::info!("output {name}: receiver is back, delivering");
                    let _ = reports.send(Report::Up {
                        output: name.to_string(),
                        pending,
                    });
                }
            }
            Err(SendError::Reject(why)) => {
                tracing::warn!("output {name}: the receiver refused {n} events: {why}");
                let mut spool = shared.lock();
                if let Err(e) = spool.ack(batch.end) {
                    tracing::warn!(
                        "output {name}: cannot save its spool cursor: {}",
                        error_text(&e)
                    );
                }
                m.rejected.inc_by(n);
                m.queued.sub(n as i64);
            }
            Err(SendError::Retry(why)) => {
                m.failed_sends.inc();
                if !down {
                    down = true;
                    tracing::warn!(
                        "output {name}: receiver unreachable ({why}); spooling until it is back"
                    );
                    let _ = reports.send(Report::Down {
                        output: name.to_string(),
                        reason: why,
                    });
                }
                let until = Instant::now() + backoff(attempt);
                attempt = attempt.saturating_add(1);
                let mut spool = shared.lock();
                while !shared.closing.load(Ordering::Relaxed) && Instant::now() < until {
                    spool = shared
                        .wake
                        .wait_timeout(spool, until.saturating_duration_since(Instant::now()))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_to_a_cap() {
        for attempt in 0..30 {
            let d = backoff(attempt);
            let full = BACKOFF_MIN
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        assert!(backoff(20) >= BACKOFF_MAX / 2);
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(3)).collect();
        assert!(spread.len() > 1, "jittered");
    }
}
