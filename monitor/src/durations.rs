//! Durations as people write them in the configuration files (`90d`,
//! `36h`) and read them in reports and messages (`1d 3h`), for every
//! section's settings: a leaf module, so that the sections' types need not
//! import the configuration or the findings that use them.

/// A duration as a person writes it in the files: the largest unit that
/// divides it (`90d`, `36h`, `90s`, `250ms`), which humantime reads back.
pub fn text(d: std::time::Duration) -> String {
    const UNITS: [(u128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    for (unit, name) in UNITS {
        if ms >= unit && ms.is_multiple_of(unit) {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

/// `30d`, `2h 5m`, `3s`: a duration as a person reads it, in its two
/// largest units (days, not humantime's 30.44-day months).
pub fn human_duration(d: std::time::Duration) -> String {
    let mut left = d.as_secs();
    let mut parts = Vec::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= secs {
            parts.push(format!("{}{unit}", left / secs));
            left %= secs;
        }
    }
    if parts.is_empty() {
        return "0s".into();
    }
    parts.truncate(2);
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_written() {
        use std::time::Duration;
        for (d, written) in [
            (Duration::from_secs(90 * 86_400), "90d"),
            (Duration::from_secs(36 * 3600), "36h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_millis(250), "250ms"),
            (Duration::ZERO, "0ms"),
        ] {
            assert_eq!(text(d), written);
            assert_eq!(humantime::parse_duration(written).unwrap(), d);
        }
    }

    #[test]
    fn durations_for_people() {
        let d = |s| human_duration(std::time::Duration::from_secs(s));
        assert_eq!(d(90 * 86_400), "90d");
        assert_eq!(d(86_400 + 3 * 3_600 + 7), "1d 3h");
        assert_eq!(d(125), "2m 5s");
        assert_eq!(d(0), "0s");
    }
}
