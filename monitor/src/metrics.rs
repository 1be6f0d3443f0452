//! The agent's health for Prometheus: `--metrics ADDR` serves `/metrics`
//! (the Prometheus text format, encoded by the `prometheus` crate, which
//! `promtool check metrics` reads), `/healthz` (the event loop is turning)
//! and `/readyz` (the probes are attached). Off by default.

use std::{
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};

/// `[metrics]` of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics here, e.g. `127.0.0.1:9464`; off when unset.
    pub listen: Option<SocketAddr>,
}

/// The event loop is not turning when it has not ticked for this long.
const STALL: Duration = Duration::from_secs(10);

/// How long each ledger commit took. The ledger's writer thread observes
/// it; a static, so the ledger needs no handle to the metrics.
pub static LEDGER_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "ledger_commit_duration_seconds",
        "Time each ledger commit took",
    )
    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets"));
    Histogram::with_opts(opts).expect("a valid histogram")
});

/// One output's counters, taken once so the hot path takes no lock.
#[derive(Clone)]
pub struct OutputMetrics {
    pub queued: IntGauge,
    pub delivered: IntCounter,
    pub failed_sends: IntCounter,
    pub rejected: IntCounter,
    pub dropped: IntCounter,
    pub spool_bytes: IntGauge,
    pub spool_dropped: IntCounter,
}

/// Every metric of the agent. Cheap to clone: the values are shared.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    pub kernel_lost: IntCounter,
    kernel_errors: IntCounter,
    pub watched_secrets: IntGauge,
    pub tracked_processes: IntGauge,
    program_run_time: CounterVec,
    program_runs: IntCounterVec,
    output_queued: IntGaugeVec,
    output_delivered: IntCounterVec,
    output_failed_sends: IntCounterVec,
    output_rejected: IntCounterVec,
    output_dropped: IntCounterVec,
    output_spool_bytes: IntGaugeVec,
    output_spool_dropped: IntCounterVec,
    ready: Arc<AtomicBool>,
    /// Unix seconds of the event loop's last tick.
    last_tick: Arc<AtomicI64>,
}

/// Register `metric` in `registry` and hand it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<M, prometheus::Error>,
) -> M {
    let metric = metric.expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric registered once");
    metric
}

impl Metrics {
    /// `ocsf_version` is the OCSF version the events name, for
    /// `build_info`; the caller passes it so that metrics, which the ledger
    /// reports into, imports nothing from the event formats above it.
    pub fn new(ocsf_version: &str) -> Self {
        let r = Registry::new_custom(Some("secretmon".into()), None).expect("a valid prefix");
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let output = |name: &str, help: &str| (opts(name, help), ["output"]);
        let counters = |(o, l): (Opts, [&str; 1])| registered(&r, IntCounterVec::new(o, &l));
        let gauges = |(o, l): (Opts, [&str; 1])| registered(&r, IntGaugeVec::new(o, &l));
        let m = Self {
            events: registered(
                &r,
                IntCounterVec::new(opts("events_total", "Events produced, by kind"), &["kind"]),
            ),
            kernel_lost: registered(
                &r,
                IntCounter::with_opts(opts(
                    "kernel_events_lost_total",
                    "Events the kernel dropped because the ring buffer was full",
                )),
            ),
            kernel_errors: registered(
                &r,
                IntCounter::with_opts(opts(
                    "kernel_errors_total",
                    "Kernel program runs that stopped part-way (a read of kernel or user memory \
                     failed): the event they were making was not sent",
                )),
            ),
            watched_secrets: registered(
                &r,
                IntGauge::with_opts(opts("watched_secrets", "Secret files watched by inode")),
            ),
            tracked_processes: registered(
                &r,
                IntGauge::with_opts(opts(
                    "tracked_processes",
                    "Processes in the agent's process table",
                )),
            ),
            program_run_time: registered(
                &r,
                CounterVec::new(
                    opts(
                        "bpf_program_run_time_seconds_total",
                        "Time the kernel spent in each program while kernel.bpf_stats_enabled is 1",
                    ),
                    &["program"],
                ),
            ),
            program_runs: registered(
                &r,
                IntCounterVec::new(
                    opts(
                        "bpf_program_runs_total",
                        "Runs of each program while kernel.bpf_stats_enabled is 1",
                    ),
                    &["program"],
                ),
            ),
            output_queued: gauges(output(
                "output_queued_events",
                "Events an output accepted and has not delivered yet (in memory and spooled)",
            )),
            output_delivered: counters(output(
                "output_delivered_events_total",
                "Events an output delivered",
            )),
            output_failed_sends: counters(output(
                "output_failed_sends_total",
                "Sends that failed and will be tried again",
            )),
            output_rejected: counters(output(
                "output_rejected_events_total",
                "Events the receiver refused for good, or that could not be written",
            )),
            output_dropped: counters(output(
                "output_dropped_events_total",
                "Events dropped because an output's in-memory queue was full",
            )),
            output_spool_bytes: gauges(output(
                "output_spool_bytes",
                "Bytes in an output's on-disk spool",
            )),
            output_spool_dropped: counters(output(
                "output_spool_dropped_events_total",
                "Undelivered events dropped, oldest first, because the spool was full",
            )),
            ready: Arc::new(AtomicBool::new(false)),
            last_tick: Arc::new(AtomicI64::new(chrono::Utc::now().timestamp())),
            registry: r.clone(),
        };
        let build = registered(
            &r,
            IntGaugeVec::new(
                opts("build_info", "The agent's version; always 1"),
                &["version", "ocsf_version"],
            ),
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), ocsf_version])
            .set(1);
        registered(&r, Ok(LEDGER_COMMIT_SECONDS.clone()));
        m
    }

    /// An event of `kind` was produced.
    pub fn event(&self, kind: &str) {
        self.events.with_label_values(&[kind]).inc();
    }

    /// The kernel's count of failed program runs is now `total`.
    pub fn kernel_errors(&self, total: u64) {
        self.kernel_errors
            .inc_by(total.saturating_sub(self.kernel_errors.get()));
    }

    /// The kernel's counts for `program` grew by this much.
    pub fn program_ran(&self, program: &str, run_time: Duration, runs: u64) {
        self.program_run_time
            .with_label_values(&[program])
            .inc_by(run_time.as_secs_f64());
        self.program_runs.with_label_values(&[program]).inc_by(runs);
    }

    pub fn output(&self, name: &str) -> OutputMetrics {
        let l = [name];
        OutputMetrics {
            queued: self.output_queued.with_label_values(&l),
            delivered: self.output_delivered.with_label_values(&l),
            failed_sends: self.output_failed_sends.with_label_values(&l),
            rejected: self.output_rejected.with_label_values(&l),
            dropped: self.output_dropped.with_label_values(&l),
            spool_bytes: self.output_spool_bytes.with_label_values(&l),
            spool_dropped: self.output_spool_dropped.with_label_values(&l),
        }
    }

    /// An output a reload removed: its series go, so that a scrape shows
    /// only the outputs that run.
    pub fn forget_output(&self, name: &str) {
        let l = [name];
        // A series never touched is not there to remove: nothing to do.
        let _ = self.output_queued.remove_label_values(&l);
        let _ = self.output_delivered.remove_label_values(&l);
        let _ = self.output_failed_sends.remove_label_values(&l);
        let _ = self.output_rejected.remove_label_values(&l);
        let _ = self.output_dropped.remove_label_values(&l);
        let _ = self.output_spool_bytes.remove_label_values(&l);
        let _ = self.output_spool_dropped.remove_label_values(&l);
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
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!("metrics: {e}");
        }
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
                "text/plain; version=0.0.4; charset=utf-8",
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
        let m = Metrics::new("1.5.0");
        for _ in 0..3 {
            m.event("secret_read");
        }
        m.output("siem").delivered.inc_by(2);
        m.kernel_errors(4);
        m.kernel_errors(5);
        LEDGER_COMMIT_SECONDS.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains("secretmon_events_total{kind=\"secret_read\"} 3"),
            "{text}"
        );
        assert!(text.contains("secretmon_output_delivered_events_total{output=\"siem\"} 2"));
        m.forget_output("siem");
        assert!(!m.encode().contains("output=\"siem\""));
        assert!(text.contains("secretmon_kernel_errors_total 5"), "{text}");
        assert!(
            text.contains("secretmon_build_info{ocsf_version=\"1.5.0\",version=\""),
            "{text}"
        );
        assert!(text.contains("secretmon_ledger_commit_duration_seconds_bucket"));
        assert_eq!(m.answer("/readyz").0, 503);
        m.set_ready();
        assert_eq!(m.answer("/readyz").0, 200);
        assert_eq!(m.answer("/healthz").0, 200);
        assert_eq!(m.answer("/nope").0, 404);
    }
}
