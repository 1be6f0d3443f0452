//! `secretmon report --fleet URL`: the fleet's findings as one JSON
//! document (`secretmon/fleet-report/v1`) or as tables that fit a
//! terminal.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_HORIZONTAL_ONLY};

use super::{
    Connection,
    rules::{self, CopyStatus, FleetReport, Settings},
    store::{Store, StoreError},
    view,
};
use crate::{durations::human_duration, findings::Severity};

/// Off a terminal: as wide as a terminal usually is.
const NON_TERMINAL_WIDTH: u16 = 120;
/// Hosts, paths and identities named in one cell.
const SHOWN: usize = 3;

/// Read the store and judge the fleet as `settings` say.
pub async fn build(
    connection: &Connection,
    settings: &Settings,
) -> Result<FleetReport, StoreError> {
    let store = Store::connect(
        &connection.url,
        connection.password.as_ref(),
        connection.timeout,
    )
    .await?;
    store.check_schema(&connection.url).await?;
    // Phases timed for `--log-level debug` (the fleet bench prints them).
    let started = Instant::now();
    let view = view::load(&store, settings.window_start()).await?;
    tracing::debug!(
        "fleet report: read {} hosts, {} copies, {} readers in {:.2?}",
        view.hosts.len(),
        view.copies.len(),
        view.readers.len(),
        started.elapsed()
    );
    let judged = Instant::now();
    let report = rules::evaluate(&view, settings);
    tracing::debug!(
        "fleet report: judged {} secrets, {} findings in {:.2?}",
        report.secrets.len(),
        report.findings.len(),
        judged.elapsed()
    );
    Ok(report)
}

/// The document is hundreds of MiB for a large fleet, written in small
/// pieces: buffered here, not a line (stdout's buffer) at a time.
pub fn write_json(report: &FleetReport, out: &mut impl Write) -> std::io::Result<()> {
    let started = Instant::now();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    serde_json::to_writer(&mut out, report)?;
    writeln!(out)?;
    out.flush()?;
    tracing::debug!("fleet report: JSON written in {:.2?}", started.elapsed());
    Ok(())
}

fn severity_cell(s: Severity, terminal: bool) -> Cell {
    let cell = Cell::new(s.as_str().to_uppercase());
    if !terminal {
        return cell;
    }
    cell.fg(match s {
        Severity::High => Color::Red,
        Severity::Medium => Color::Yellow,
        Severity::Low => Color::Cyan,
    })
}

fn table(header: &[&str], terminal: bool) -> Table {
    let mut t = Table::new();
    if !terminal {
        t.force_no_tty().set_width(NON_TERMINAL_WIDTH);
    }
    t.load_style(UTF8_HORIZONTAL_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

fn names(items: &[String]) -> String {
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    rules::list(&refs, SHOWN)
}

/// The tables for people; `terminal`: fit its width, and colour.
pub fn write_text(r: &FleetReport, out: &mut impl Write, terminal: bool) -> std::io::Result<()> {
    let blind: Vec<_> = r.hosts.iter().filter(|h| !h.observed_window).collect();
    writeln!(
        out,
        "secretmon fleet report: {} hosts, {} secrets; reads looked for since {} ({}); long-lived after {}",
        r.hosts.len(),
        r.secrets.len(),
        r.window_start,
        human_duration(Duration::from_secs(r.window_secs)),
        human_duration(Duration::from_secs(r.max_age_secs)),
    )?;
    if let Some(reason) = &r.grouping.reason {
        writeln!(out, "note: {reason}")?;
    }
    if !blind.is_empty() {
        writeln!(
            out,
            "\nBLIND SPOTS ({}): these hosts cannot prove a secret unused; their unread copies are unknown",
            blind.len()
        )?;
        let mut t = table(&["HOST", "WHY", "LAST SYNC"], terminal);
        for h in &blind {
            t.add_row(vec![
                h.name.clone(),
                h.blind_spot.clone().unwrap_or_default(),
                h.last_sync.clone(),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    writeln!(out, "\nFINDINGS ({})", r.findings.len())?;
    if r.findings.is_empty() {
        writeln!(out, "none")?;
    } else {
        let mut t = table(
            &[
                "SEVERITY",
                "FINDING",
                "SECRET",
                "WHERE",
                "EVIDENCE",
                "NEXT STEP",
            ],
            terminal,
        );
        for f in &r.findings {
            t.add_row(vec![
                severity_cell(f.severity, terminal),
                Cell::new(format!(
                    "{}\n{}",
                    f.finding_type.as_str(),
                    f.owasp.join(", ")
                )),
                Cell::new(format!(
                    "{}\n{}",
                    names(&f.secret.paths),
                    f.secret.secret_type
                )),
                Cell::new(names(&f.hosts)),
                Cell::new(&f.evidence.reason),
                Cell::new(f.next_step.as_str()),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    writeln!(out, "\nSECRETS ({})", r.secrets.len())?;
    let mut t = table(
        &[
            "SECRET",
            "TYPE",
            "HOSTS",
            "READ ON",
            "UNUSED ON",
            "UNKNOWN ON",
            "READERS",
        ],
        terminal,
    );
    for s in &r.secrets {
        let on = |status: CopyStatus| {
            let hosts: Vec<String> = s
                .copies
                .iter()
                .filter(|c| c.status == status)
                .map(|c| c.host.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if hosts.is_empty() {
                "-".to_string()
            } else {
                names(&hosts)
            }
        };
        let readers: Vec<String> = s
            .readers
            .iter()
            .map(|r| format!("{} ({} hosts)", r.identity, r.hosts.len()))
            .collect();
        t.add_row(vec![
            Cell::new(format!(
                "{}\n{}",
                names(&s.paths),
                s.fingerprint.as_deref().unwrap_or("")
            )),
            Cell::new(&s.secret_type),
            Cell::new(s.hosts),
            Cell::new(on(CopyStatus::Read)),
            Cell::new(on(CopyStatus::Unused)),
            Cell::new(on(CopyStatus::Unknown)),
            Cell::new(if readers.is_empty() {
                "none".to_string()
            } else {
                names(&readers)
            }),
        ]);
    }
    writeln!(out, "{t}")?;
    Ok(())
}
