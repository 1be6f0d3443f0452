//! Errors as an SRE reads them: one line, the whole cause chain, no noise.

/// An error and its sources on one line, without the `(os error N)` noise
/// that io errors append.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    let text = parts
        .iter()
        .map(|p| one_line(p))
        .collect::<Vec<_>>()
        .join(": ");
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// A multi-line message (a verifier log can run to megabytes) cut to its
/// last lines, where the verifier states its verdict, on one line.
pub fn one_line(text: &str) -> String {
    const KEEP_LINES: usize = 4;
    const MAX_CHARS: usize = 1000;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = if lines.len() > KEEP_LINES {
        format!("... {}", lines[lines.len() - KEEP_LINES..].join(" | "))
    } else {
        lines.join(" | ")
    };
    if out.chars().count() > MAX_CHARS {
        out = out.chars().take(MAX_CHARS).collect::<String>() + "...";
    }
    out
}

/// A TOML error in one line: the line, the key and why. Never the line's
/// text, which may hold a secret (a fleet key).
pub fn toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = one_line(err.message());
    let Some(before) = err.span().and_then(|s| text.get(..s.start)) else {
        return message;
    };
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match key {
        Some(key) => format!("line {line_no}, `{key}`: {message}"),
        None => format!("line {line_no}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_say_where_but_not_the_line() {
        let text = "[inventory]\nfleet_key = \"PLANTED-fleet-key\" junk\n";
        let err = toml::from_str::<toml::Table>(text).unwrap_err();
        assert!(err.to_string().contains("PLANTED"), "toml shows the line");
        let shown = toml_error(text, &err);
        assert!(shown.starts_with("line 2, `fleet_key`: "), "{shown}");
        assert!(
            !shown.contains("PLANTED") && !shown.contains('\n'),
            "{shown}"
        );
        let err = toml::from_str::<toml::Table>("[inventory\n").unwrap_err();
        assert!(toml_error("[inventory\n", &err).starts_with("line 1: "));
    }

    #[test]
    fn long_errors_become_one_short_line() {
        let log = (0..10_000)
            .map(|i| format!("{i}: insn"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = one_line(&format!("{log}\nprocessed 1000001 insns"));
        assert!(!text.contains('\n'));
        assert!(text.ends_with("processed 1000001 insns"), "{text}");
        assert!(text.len() < 1100);
        assert_eq!(one_line("plain"), "plain");
    }
}
