//! The page itself. Everything from the ledger or the store goes through
//! [`esc`]; the only markup is ours. The Content-Security-Policy allows
//! exactly the inline style and script below (by hash) and nothing from
//! anywhere, so even a mistake here could not load or send anything.

use std::{collections::BTreeMap, fmt::Write as _, io};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::{CARDS, FINDINGS_PER_TYPE, GRAPH_NODES, Page, PageFinding, PageSecret, ROWS};
use crate::{
    findings::{Severity, rfc3339},
    fleet::rules::NextStep,
};

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em;color:#222}
h1{font-size:1.5em;margin:.2em 0}h2{margin-top:1.5em;border-bottom:1px solid #ccc}
.meta{color:#555}.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.3em .6em;margin:.3em 0}
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f5f5f5}.high{color:#b00020;font-weight:bold}.medium{color:#b36b00;font-weight:bold}.low{color:#00639b}
.step{display:inline-block;padding:0 .4em;border-radius:3px;background:#e8eef7}
.charts{display:flex;flex-wrap:wrap;gap:2em}.secret{border:1px solid #ddd;border-radius:4px;padding:.5em 1em;margin:1em 0}
.secret h3{margin:.2em 0;word-break:break-all}.read{color:#1b7f3b}.unused{color:#b00020}.unknown{color:#777}
figure{margin:.5em 2em .5em 0}figcaption{font-weight:bold}
code{word-break:break-all}svg text{font:11px system-ui,sans-serif}input{font:inherit;padding:.2em;width:20em}
";

const SCRIPT: &str = "
document.getElementById('filter').addEventListener('input', function (e) {
  var q = e.target.value.toLowerCase();
  document.querySelectorAll('[data-text]').forEach(function (el) {
    el.hidden = q !== '' && el.getAttribute('data-text').indexOf(q) < 0;
  });
});
";

/// Text and attribute values, escaped for HTML (and SVG).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (a path may hold any byte but / and NUL)
            // are shown, not passed on.
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn hash(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn severity_class(s: Severity) -> &'static str {
    s.as_str()
}

/// Write `page` as one HTML document.
pub fn write(page: &Page, out: &mut impl io::Write) -> io::Result<()> {
    let started = std::time::Instant::now();
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src {}; script-src {}; img-src data:; base-uri 'none'; form-action 'none'\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        hash(STYLE),
        hash(SCRIPT),
        esc(&page.title)
    );
    let _ = writeln!(
        h,
        "<h1>{}</h1><p class=\"meta\">{}<br>generated {}; reads looked for since {}</p>",
        esc(&page.title),
        esc(&page.scope),
        rfc3339(page.generated),
        rfc3339(page.window_start)
    );
    for note in &page.notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(note));
    }
    summary(page, &mut h);
    findings(page, &mut h);
    secrets(page, &mut h);
    let _ = writeln!(h, "<script>{SCRIPT}</script></body></html>");
    out.write_all(h.as_bytes())?;
    tracing::debug!(
        "report page: {} bytes made in {:.2?}",
        h.len(),
        started.elapsed()
    );
    Ok(())
}

/// Bar charts: the secrets by lifetime, and by finding.
fn summary(page: &Page, h: &mut String) {
    let mut lifetimes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_finding: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &page.secrets {
        *lifetimes.entry(s.lifetime.as_str()).or_default() += 1;
        let types: std::collections::BTreeSet<&str> =
            s.findings.iter().map(|(t, _)| t.as_str()).collect();
        for t in types {
            *by_finding.entry(t).or_default() += 1;
        }
    }
    let _ = write!(
        h,
        "<h2>Summary</h2><p>{} secrets, {} findings.</p><div class=\"charts\">",
        page.secrets.len(),
        page.findings.len()
    );
    bars(h, "Secrets by lifetime", &lifetimes);
    bars(h, "Secrets by finding", &by_finding);
    h.push_str("</div>\n");
}

fn bars(h: &mut String, title: &str, counts: &BTreeMap<&str, usize>) {
    const ROW: usize = 22;
    const LABEL: usize = 150;
    const WIDTH: usize = 260;
    let max = counts.values().copied().max().unwrap_or(1).max(1);
    let height = ROW * counts.len().max(1) + 26;
    let _ = write!(
        h,
        "<figure><figcaption>{}</figcaption><svg role=\"img\" width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">",
        esc(title),
        LABEL + WIDTH + 60,
        LABEL + WIDTH + 60
    );
    if counts.is_empty() {
        h.push_str("<text x=\"0\" y=\"16\">none</text>");
    }
    for (i, (label, n)) in counts.iter().enumerate() {
        let y = i * ROW + 4;
        let w = (n * WIDTH).div_ceil(max).max(1);
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{LABEL}\" y=\"{y}\" width=\"{w}\" height=\"{}\" fill=\"#5b8def\"></rect><text x=\"{}\" y=\"{}\">{n}</text>",
            y + 13,
            esc(label),
            ROW - 6,
            LABEL + w + 4,
            y + 13
        );
    }
    h.push_str("</svg></figure>");
}

fn anchor(i: usize) -> String {
    format!("secret-{i}")
}

fn findings(page: &Page, h: &mut String) {
    let _ = writeln!(h, "<h2>Findings ({})</h2>", page.findings.len());
    if page.findings.is_empty() {
        h.push_str("<p>none</p>\n");
        return;
    }
    let mut steps: BTreeMap<NextStep, usize> = BTreeMap::new();
    for f in &page.findings {
        *steps.entry(f.next_step).or_default() += 1;
    }
    h.push_str("<p>Next steps: ");
    let parts: Vec<String> = steps
        .iter()
        .map(|(s, n)| format!("<span class=\"step\">{}</span> ×{n}", esc(s.as_str())))
        .collect();
    h.push_str(&parts.join(", "));
    let (shown, left_out) = listed(&page.findings);
    h.push_str("</p>\n<table><tr><th>severity</th><th>finding</th><th>secret</th><th>why</th><th>next step</th></tr>\n");
    for f in shown {
        let subject = match f.secret {
            Some(i) if i < CARDS + ROWS => {
                format!("<a href=\"#{}\">{}</a>", anchor(i), esc(&f.subject))
            }
            _ => esc(&f.subject),
        };
        let _ = writeln!(
            h,
            "<tr><td class=\"{}\">{}</td><td>{}</td><td><code>{subject}</code></td><td>{}</td><td><span class=\"step\">{}</span><br>{}</td></tr>",
            severity_class(f.severity),
            f.severity.as_str(),
            esc(&f.finding_type),
            esc(&f.reason),
            esc(f.next_step.as_str()),
            esc(&f.recommendation)
        );
    }
    h.push_str("</table>\n");
    if !left_out.is_empty() {
        let counts: Vec<String> = left_out.iter().map(|(t, n)| format!("{n} {t}")).collect();
        let _ = writeln!(
            h,
            "<p>{} more findings not listed ({}); the widest {FINDINGS_PER_TYPE} of each type are. The same report with <code>--json</code> has every one.</p>",
            left_out.values().sum::<usize>(),
            esc(&counts.join(", "))
        );
    }
}

/// The findings listed one by one: of each type, the ones about the most
/// hosts, up to [`FINDINGS_PER_TYPE`], in the page's order; and how many
/// of each type are left out.
fn listed(findings: &[PageFinding]) -> (Vec<&PageFinding>, BTreeMap<&str, usize>) {
    let mut by_type: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, f) in findings.iter().enumerate() {
        by_type.entry(f.finding_type.as_str()).or_default().push(i);
    }
    let mut keep = Vec::new();
    let mut left_out = BTreeMap::new();
    for (t, mut of_type) in by_type {
        // Stable: among equally wide ones, the page's order.
        of_type.sort_by_key(|&i| std::cmp::Reverse(findings[i].hosts));
        if of_type.len() > FINDINGS_PER_TYPE {
            left_out.insert(t, of_type.len() - FINDINGS_PER_TYPE);
            of_type.truncate(FINDINGS_PER_TYPE);
        }
        keep.extend(of_type);
    }
    keep.sort_unstable();
    (keep.into_iter().map(|i| &findings[i]).collect(), left_out)
}

fn secrets(page: &Page, h: &mut String) {
    let _ = writeln!(
        h,
        "<h2>Secrets ({})</h2><p><label>Filter: <input id=\"filter\" type=\"search\" placeholder=\"path, identity, host, finding\"></label></p>",
        page.secrets.len()
    );
    for (i, s) in page.secrets.iter().take(CARDS).enumerate() {
        card(page, i, s, h);
    }
    let rest = &page.secrets[page.secrets.len().min(CARDS)..];
    if rest.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<h3>{} more secrets</h3><table><tr><th>secret</th><th>type</th><th>hosts</th><th>readers</th><th>findings</th></tr>",
        rest.len()
    );
    for (j, s) in rest.iter().take(ROWS).enumerate() {
        let hosts: std::collections::BTreeSet<&str> =
            s.copies.iter().map(|c| c.host.as_str()).collect();
        let _ = writeln!(
            h,
            "<tr id=\"{}\" data-text=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            anchor(CARDS + j),
            esc(&search_text(s)),
            esc(&s.title),
            esc(&s.secret_type),
            hosts.len(),
            s.readers.len(),
            esc(&finding_list(s))
        );
    }
    h.push_str("</table>\n");
    if rest.len() > ROWS {
        let _ = writeln!(
            h,
            "<p>{} more not shown: see <code>secretmon report --json</code>.</p>",
            rest.len() - ROWS
        );
    }
}

fn finding_list(s: &PageSecret) -> String {
    s.findings
        .iter()
        .map(|(t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the filter box matches: lower case.
fn search_text(s: &PageSecret) -> String {
    let mut parts = vec![s.title.clone(), s.secret_type.clone(), finding_list(s)];
    parts.extend(s.readers.iter().map(|r| r.identity.clone()));
    parts.extend(s.copies.iter().take(50).map(|c| c.host.clone()));
    parts.join(" ").to_lowercase()
}

fn card(page: &Page, i: usize, s: &PageSecret, h: &mut String) {
    let _ = write!(
        h,
        "<section class=\"secret\" id=\"{}\" data-text=\"{}\"><h3><code>{}</code></h3><p>{} · {}",
        anchor(i),
        esc(&search_text(s)),
        esc(&s.title),
        esc(&s.secret_type),
        esc(&s.lifetime)
    );
    if let Some(fp) = &s.fingerprint {
        let _ = write!(h, " · <code>{}</code>", esc(fp));
    }
    for (t, sev) in &s.findings {
        let _ = write!(
            h,
            " · <span class=\"{}\">{}</span>",
            severity_class(*sev),
            esc(t)
        );
    }
    h.push_str("</p>\n");
    graph(s, h);
    timeline(page, s, h);
    copies(s, h);
    h.push_str("</section>\n");
}

/// Secret → identities → hosts, as three columns of nodes.
fn graph(s: &PageSecret, h: &mut String) {
    const ROW: usize = 24;
    const COL: [usize; 3] = [10, 290, 600];
    const WIDTH: usize = 860;
    let mut readers: Vec<&super::PageReader> = s.readers.iter().collect();
    readers.sort_by(|a, b| {
        b.reads
            .cmp(&a.reads)
            .then_with(|| a.identity.cmp(&b.identity))
    });
    let more_readers = readers.len().saturating_sub(GRAPH_NODES);
    readers.truncate(GRAPH_NODES);
    let mut hosts: Vec<&str> = Vec::new();
    for r in &readers {
        for host in &r.hosts {
            if !hosts.contains(&host.as_str()) {
                hosts.push(host);
            }
        }
    }
    let all_hosts: std::collections::BTreeSet<&str> = s
        .readers
        .iter()
        .flat_map(|r| r.hosts.iter().map(String::as_str))
        .collect();
    let more_hosts = all_hosts.len().saturating_sub(hosts.len().min(GRAPH_NODES));
    hosts.truncate(GRAPH_NODES);
    let rows =
        readers.len().max(hosts.len()).max(1) + usize::from(more_readers > 0 || more_hosts > 0);
    let height = rows * ROW + 10;
    let y = |i: usize| i * ROW + 17;
    let _ = write!(
        h,
        "<figure><figcaption>Readers</figcaption><svg role=\"img\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\">"
    );
    let secret_y = y(0);
    let _ = write!(
        h,
        "<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"#b00020\"></circle><text x=\"{}\" y=\"{}\">{}</text>",
        COL[0],
        secret_y - 4,
        COL[0] + 8,
        secret_y,
        esc(&short(&s.title, 40))
    );
    if readers.is_empty() {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{secret_y}\">no reader in the window</text>",
            COL[1]
        );
    }
    for (i, r) in readers.iter().enumerate() {
        let ry = y(i);
        let _ = write!(
            h,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"></line>",
            COL[0] + 5,
            secret_y - 4,
            COL[1] - 5,
            ry - 4
        );
        for host in &r.hosts {
            if let Some(j) = hosts.iter().position(|x| x == host) {
                let _ = write!(
                    h,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\"></line>",
                    COL[1] + 5,
                    ry - 4,
                    COL[2] - 5,
                    y(j) - 4
                );
            }
        }
        let fill = if r.human > 0 { "#b36b00" } else { "#1b7f3b" };
        let _ = write!(
            h,
            "<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"{fill}\"></circle><text x=\"{}\" y=\"{ry}\">{} ×{}</text>",
            COL[1],
            ry - 4,
            COL[1] + 8,
            esc(&short(&r.identity, 40)),
            r.reads
        );
    }
    for (j, host) in hosts.iter().enumerate() {
        let _ = write!(
            h,
            "<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"#5b8def\"></circle><text x=\"{}\" y=\"{}\">{}</text>",
            COL[2],
            y(j) - 4,
            COL[2] + 8,
            y(j),
            esc(&short(host, 32))
        );
    }
    let last = y(rows - 1);
    if more_readers > 0 {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{last}\">and {more_readers} more identities</text>",
            COL[1]
        );
    }
    if more_hosts > 0 {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{last}\">and {more_hosts} more hosts</text>",
            COL[2]
        );
    }
    h.push_str("</svg></figure>\n");
}

/// Each reader's first to last read in the window, on one time axis.
fn timeline(page: &Page, s: &PageSecret, h: &mut String) {
    if s.readers.is_empty() {
        return;
    }
    const ROW: usize = 18;
    const LABEL: usize = 280;
    const WIDTH: usize = 560;
    let (start, end) = (page.window_start, page.generated.max(page.window_start));
    let span = (end - start).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| -> f64 {
        let t = t.clamp(start, end);
        LABEL as f64 + (t - start).num_milliseconds() as f64 / span * WIDTH as f64
    };
    let readers: Vec<_> = s.readers.iter().take(GRAPH_NODES).collect();
    let height = readers.len() * ROW + 24;
    let _ = write!(
        h,
        "<figure><figcaption>Reads over time (first to last read of each reader)</figcaption><svg role=\"img\" width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">",
        LABEL + WIDTH + 10,
        LABEL + WIDTH + 10
    );
    for (i, r) in readers.iter().enumerate() {
        let y = i * ROW + 12;
        let (x1, x2) = (x(r.first_seen), x(r.last_seen));
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{}\">{}</text><line x1=\"{x1:.1}\" y1=\"{y}\" x2=\"{:.1}\" y2=\"{y}\" stroke=\"#5b8def\" stroke-width=\"6\"></line><circle cx=\"{x2:.1}\" cy=\"{y}\" r=\"4\" fill=\"#1b3f8b\"></circle>",
            y + 4,
            esc(&short(&format!("{} ×{}", r.identity, r.reads), 44)),
            x2.max(x1 + 2.0)
        );
    }
    let axis = readers.len() * ROW + 18;
    let _ = writeln!(
        h,
        "<text x=\"{LABEL}\" y=\"{axis}\">{}</text><text x=\"{}\" y=\"{axis}\" text-anchor=\"end\">{}</text></svg></figure>",
        rfc3339(start),
        LABEL + WIDTH,
        rfc3339(end)
    );
}

fn copies(s: &PageSecret, h: &mut String) {
    const SHOWN: usize = 20;
    h.push_str("<table><tr><th>host</th><th>path</th><th>use in the window</th></tr>");
    for c in s.copies.iter().take(SHOWN) {
        let status = if c.status.is_empty() {
            String::new()
        } else {
            format!("<span class=\"{0}\">{0}</span>", esc(&c.status))
        };
        let note = c
            .note
            .as_ref()
            .map(|n| format!(" ({})", esc(n)))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{status}{note}</td></tr>",
            esc(&c.host),
            esc(&c.path)
        );
    }
    h.push_str("</table>");
    if s.copies.len() > SHOWN {
        let _ = write!(h, "<p>and {} more copies</p>", s.copies.len() - SHOWN);
    }
    h.push('\n');
}

/// At most `n` characters, with an ellipsis.
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::html::{PageCopy, PageFinding, PageReader};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    const HOSTILE: &str = "/srv/<script>alert(1)</script>/\"'&\u{1b}[31m.env";

    fn page() -> Page {
        Page {
            title: "secretmon report: <b>web</b>".into(),
            scope: "host <b>web</b>".into(),
            generated: t(100),
            window_start: t(0),
            notes: vec!["note <i>x</i>".into()],
            secrets: vec![PageSecret {
                title: HOSTILE.into(),
                secret_type: "env_file".into(),
                lifetime: "static".into(),
                fingerprint: Some("hmac-sha256:00".into()),
                copies: vec![PageCopy {
                    host: "<img src=x onerror=alert(1)>".into(),
                    path: HOSTILE.into(),
                    status: "unused".into(),
                    note: None,
                }],
                readers: vec![PageReader {
                    identity: "user:<svg onload=alert(1)>:/bin/cat".into(),
                    hosts: vec!["<img src=x onerror=alert(1)>".into()],
                    reads: 3,
                    human: 1,
                    first_seen: t(10),
                    last_seen: t(90),
                }],
                findings: vec![("human_use".into(), Severity::Medium)],
            }],
            findings: vec![PageFinding {
                severity: Severity::Medium,
                finding_type: "human_use".into(),
                hosts: 1,
                secret: Some(0),
                subject: HOSTILE.into(),
                reason: "by <u>ana</u>".into(),
                next_step: NextStep::Rotate,
                recommendation: "rotate \"it\"".into(),
            }],
        }
    }

    #[test]
    fn everything_from_the_host_is_escaped() {
        let mut out = Vec::new();
        write(&page(), &mut out).unwrap();
        let html = String::from_utf8(out).unwrap();
        for raw in [
            "<script>alert",
            "<img src=x",
            "<svg onload",
            "<b>web",
            "<i>x",
            "<u>ana",
            "\u{1b}",
        ] {
            assert!(!html.contains(raw), "{raw} unescaped");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("\\u{1b}[31m"));
        // Our own script is the only one, allowed by its hash.
        assert_eq!(html.matches("<script>").count(), 1);
        assert!(html.contains(&hash(SCRIPT)) && html.contains(&hash(STYLE)));
        assert!(html.contains("default-src 'none'"));
        for fetch in ["http://", "https://", "src=\"", "href=\"http", "url("] {
            assert!(!html.contains(fetch), "{fetch}");
        }
        assert!(html.contains("rotate"));
    }

    #[test]
    fn large_reports_are_cut_to_cards_and_rows() {
        let mut p = page();
        let one = p.secrets[0].clone();
        p.secrets = (0..CARDS + ROWS + 10)
            .map(|i| PageSecret {
                title: format!("/srv/{i}"),
                ..one.clone()
            })
            .collect();
        let mut out = Vec::new();
        write(&p, &mut out).unwrap();
        let html = String::from_utf8(out).unwrap();
        assert_eq!(html.matches("<section class=\"secret\"").count(), CARDS);
        assert!(html.contains("10 more not shown"));
    }

    /// Of each finding type, the widest are listed, in the page's order;
    /// the rest are counted.
    #[test]
    fn findings_are_listed_up_to_a_cap_per_type() {
        let one = page().findings[0].clone();
        let finding = |finding_type: &str, hosts: usize| PageFinding {
            finding_type: finding_type.into(),
            hosts,
            subject: format!("/srv/{finding_type}/{hosts}"),
            ..one.clone()
        };
        let mut findings = vec![finding("human_use", 1)];
        findings.extend((0..FINDINGS_PER_TYPE + 5).map(|n| finding("shared_secret", n)));
        let (shown, left_out) = listed(&findings);
        assert_eq!(shown.len(), 1 + FINDINGS_PER_TYPE);
        assert_eq!(shown[0].finding_type, "human_use");
        let widest: Vec<usize> = shown[1..].iter().map(|f| f.hosts).collect();
        assert_eq!(widest, (5..FINDINGS_PER_TYPE + 5).collect::<Vec<_>>());
        assert_eq!(left_out, BTreeMap::from([("shared_secret", 5)]));

        let mut p = page();
        p.findings = findings;
        let mut out = Vec::new();
        write(&p, &mut out).unwrap();
        let html = String::from_utf8(out).unwrap();
        assert!(html.contains("5 more findings not listed (5 shared_secret)"));
        assert!(
            !html.contains("/srv/shared_secret/4<"),
            "a narrow one is left out"
        );
    }
}
