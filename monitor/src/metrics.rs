//! The agent's health for Prometheus: `--metrics ADDR` serves `/metrics`
//! (OpenMetrics text, encoded by `prometheus-client`), `/healthz` (the
//! event loop is turning) and `/readyz` (the probes are attached). Off by
//! default.

use std::{
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use serde::Deserialize;

/// `[metrics]` of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics here, e.g. `127.0.0.1:9464`; off when unset.
    pub listen: Option<SocketAddr>,
}

/// The event loop is not turning when it has not ticked for this long.
const STALL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabel {
    pub output: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    ocsf_version: &'static str,
}

/// How long each ledger commit took. The ledger's writer thread observes
/// it; a static, so the ledger needs no handle to the metrics.
pub static LEDGER_COMMIT_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14)));

/// One output's counters, taken once so the hot path takes no lock.
#[derive(Clone)]
pub struct OutputMetrics {
    pub queued: Gauge,
    pub delivered: Counter,
    pub failed_sends: Counter,
    pub rejected: Counter,
    pub dropped: Counter,
    pub spool_bytes: Gauge,
    pub spool_dropped: Counter,
}

/// Every metric of the agent. Cheap to clone: the values are shared.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub events: Family<KindLabel, Counter>,
    pub kernel_lost: Counter,
    pub watched_secrets: Gauge,
    pub tracked_processes: Gauge,
    pub program_run_time: Family<ProgramLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub program_runs: Family<ProgramLabel, Counter>,
    output_queued: Family<OutputLabel, Gauge>,
    output_delivered: Family<OutputLabel, Counter>,
    output_failed_sends: Family<OutputLabel, Counter>,
    output_rejected: Family<OutputLabel, Counter>,
    output_dropped: Family<OutputLabel, Counter>,
    output_spool_bytes: Family<OutputLabel, Gauge>,
    output_spool_dropped: Family<OutputLabel, Counter>,
    ready: Arc<AtomicBool>,
    /// Unix seconds of the event loop's last tick.
    last_tick: Arc<AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("secretmon");
        let events = Family::<KindLabel, Counter>::default();
        r.register("events", "Events produced, by kind", events.clone());
        let kernel_lost = Counter::default();
        r.register(
            "kernel_events_lost",
            "Events the kernel dropped because the ring buffer was full",
            kernel_lost.clone(),
        );
        let watched_secrets = Gauge::default();
        r.register(
            "watched_secrets",
            "Secret files watched by inode",
            watched_secrets.clone(),
        );
        let tracked_processes = Gauge::default();
        r.register(
            "tracked_processes",
            "Processes in the agent's process table",
            tracked_processes.clone(),
        );
        let program_run_time = Family::default();
        r.register(
            "bpf_program_run_time_seconds",
            "Time the kernel spent in each program, while kernel.bpf_stats_enabled is 1",
            program_run_time.clone(),
        );
        let program_runs = Family::default();
        r.register(
            "bpf_program_runs",
            "Runs of each program, while kernel.bpf_stats_enabled is 1",
            program_runs.clone(),
        );
        let output_queued = Family::default();
        r.register(
            "output_queued_events",
            "Events accepted by an output and not delivered yet (in memory and spooled)",
            output_queued.clone(),
        );
        let output_delivered = Family::default();
        r.register(
            "output_delivered_events",
            "Events an output delivered",
            output_delivered.clone(),
        );
        let output_failed_sends = Family::default();
        r.register(
            "output_failed_sends",
            "Sends that failed and will be tried again",
            output_failed_sends.clone(),
        );
        let output_rejected = Family::default();
        r.register(
            "output_rejected_events",
            "Events the receiver refused for good, or that could not be written",
            output_rejected.clone(),
        );
        let output_dropped = Family::default();
        r.register(
            "output_dropped_events",
            "Events dropped because an output's in-memory queue was full",
            output_dropped.clone(),
        );
        let output_spool_bytes = Family::default();
        r.register(
            "output_spool_bytes",
            "Bytes in an output's on-disk spool",
            output_spool_bytes.clone(),
        );
        let output_spool_dropped = Family::default();
        r.register(
            "output_spool_dropped_events",
            "Undelivered events dropped, oldest first, because the spool was full",
            output_spool_dropped.clone(),
        );
        r.register(
            "ledger_commit_duration_seconds",
            "Time each ledger commit took",
            LEDGER_COMMIT_SECONDS.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                ocsf_version: crate::ocsf::VERSION,
            })
            .set(1);
        r.register("build_info", "The agent's version; always 1", build);
        Self {
            registry: Arc::new(r),
            events,
            kernel_lost,
            watched_secrets,
            tracked_processes,
            program_run_time,
            program_runs,
            output_queued,
            output_delivered,
            output_failed_sends,
            output_rejected,
            output_dropped,
            output_spool_bytes,
            output_spool_dropped,
            ready: Arc::new(AtomicBool::new(false)),
            last_tick: Arc::new(AtomicI64::new(chrono::Utc::now().timestamp())),
        }
    }

    pub fn output(&self, name: &str) -> OutputMetrics {
        let l = OutputLabel {
            output: name.to_string(),
        };
        OutputMetrics {
            queued: self.output_queued.get_or_create_owned(&l),
            delivered: self.output_delivered.get_or_create_owned(&l),
            failed_sends: self.output_failed_sends.get_or_create_owned(&l),
            rejected: self.output_rejected.get_or_create_owned(&l),
            dropped: self.output_dropped.get_or_create_owned(&l),
            spool_bytes: self.output_spool_bytes.get_or_create_owned(&l),
            spool_dropped: self.output_spool_dropped.get_or_create_owned(&l),
        }
    }

    /// The probes are attached and events flow.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The event loop turned.
    pub fn tick(&self) {
        self.last_tick
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        let last = self.last_tick.load(Ordering::Relaxed);
        chrono::Utc::now().timestamp() - last <= STALL.as_secs() as i64
    }

    /// The exposition, as `/metrics` serves it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` on `addr` from a thread
    /// of their own.
    pub fn serve(&self, addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MetricsError::Bind {
            addr,
            why: e.to_string(),
        })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let metrics = self.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let (status, content_type, body) = metrics.answer(request.url());
                    let header = tiny_http::Header::from_bytes("Content-Type", content_type)
                        .expect("a valid header");
                    let response = tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header);
                    // A scraper that hung up is its own problem.
                    let _ = request.respond(response);
                }
            })
            .map_err(|e| MetricsError::Bind {
                addr,
                why: e.to_string(),
            })?;
        Ok(bound)
    }

    fn answer(&self, url: &str) -> (u16, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match url.split('?').next().unwrap_or_default() {
            "/metrics" => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.encode(),
            ),
            "/healthz" if self.healthy() => (200, TEXT, "ok\n".into()),
            "/healthz" => (503, TEXT, "the event loop is stalled\n".into()),
            "/readyz" if self.ready.load(Ordering::Relaxed) => (200, TEXT, "ready\n".into()),
            "/readyz" => (503, TEXT, "probes not attached yet\n".into()),
            _ => (404, TEXT, "try /metrics, /healthz or /readyz\n".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics {addr}: cannot listen: {why}")]
    Bind { addr: SocketAddr, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_and_probes() {
        let m = Metrics::new();
        m.events
            .get_or_create(&KindLabel {
                kind: "secret_read",
            })
            .inc_by(3);
        m.output("siem").delivered.inc_by(2);
        LEDGER_COMMIT_SECONDS.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains("secretmon_events_total{kind=\"secret_read\"} 3"),
            "{text}"
        );
        assert!(text.contains("secretmon_output_delivered_events_total{output=\"siem\"} 2"));
        assert!(text.contains("secretmon_build_info{version=\""));
        assert!(text.contains("secretmon_ledger_commit_duration_seconds_bucket"));
        assert_eq!(m.answer("/readyz").0, 503);
        m.set_ready();
        assert_eq!(m.answer("/readyz").0, 200);
        assert_eq!(m.answer("/healthz").0, 200);
        assert_eq!(m.answer("/nope").0, 404);
    }
}
