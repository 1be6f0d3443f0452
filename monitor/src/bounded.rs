//! Settings that carry their bounds. A duration or a count outside its
//! range is refused where it is parsed (a config file, a flag), in one line
//! that names the range, before anything starts; nothing downstream copes
//! with an `interval` of `0s` or a window reaching before year 1.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const DAY: u64 = 86_400;
/// A day in seconds: the longest period of something that repeats.
pub const ONE_DAY: u64 = DAY;
/// 100 years of 365 days in seconds: the widest window back from now.
/// Dates that far back are well inside what chrono represents.
pub const CENTURY: u64 = 36_500 * DAY;

/// A window back from now (orphaned, long-lived, retention): 1 s to 100
/// years.
pub type Window = BoundedDuration<1, CENTURY>;
/// A span that may be empty (a baseline, an expiry margin): 0 to 100 years.
pub type Span = BoundedDuration<0, CENTURY>;
/// How often something runs, or how long it may take: 1 s to a day.
pub type Period = BoundedDuration<1, ONE_DAY>;

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    #[error("`{text}`: {why} (write e.g. \"90d\", \"24h\", \"30s\")")]
    Syntax { text: String, why: String },
    #[error("`{text}` is out of range: {range}")]
    OutOfRange { text: String, range: String },
}

/// A duration of at least `MIN_SECS` and at most `MAX_SECS` seconds,
/// written as humantime text (`"90d"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoundedDuration<const MIN_SECS: u64, const MAX_SECS: u64>(Duration);

impl<const MIN_SECS: u64, const MAX_SECS: u64> BoundedDuration<MIN_SECS, MAX_SECS> {
    /// For defaults, in a `const`: a value out of range fails the build.
    pub const fn from_secs(secs: u64) -> Self {
        assert!(secs >= MIN_SECS && secs <= MAX_SECS, "default out of range");
        Self(Duration::from_secs(secs))
    }

    pub fn new(d: Duration) -> Result<Self, BoundError> {
        let (min, max) = (Duration::from_secs(MIN_SECS), Duration::from_secs(MAX_SECS));
        if d < min || d > max {
            return Err(BoundError::OutOfRange {
                text: humantime::format_duration(d).to_string(),
                range: Self::range(),
            });
        }
        Ok(Self(d))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    fn range() -> String {
        let show = |s| crate::durations::human_duration(Duration::from_secs(s));
        format!("from {} to {}", show(MIN_SECS), show(MAX_SECS))
    }
}

impl<const MIN_SECS: u64, const MAX_SECS: u64> FromStr for BoundedDuration<MIN_SECS, MAX_SECS> {
    type Err = BoundError;

    fn from_str(text: &str) -> Result<Self, BoundError> {
        let d = humantime::parse_duration(text).map_err(|e| BoundError::Syntax {
            text: text.into(),
            why: e.to_string(),
        })?;
        Self::new(d).map_err(|e| match e {
            BoundError::OutOfRange { range, .. } => BoundError::OutOfRange {
                text: text.into(),
                range,
            },
            other => other,
        })
    }
}

impl<'de, const MIN_SECS: u64, const MAX_SECS: u64> Deserialize<'de>
    for BoundedDuration<MIN_SECS, MAX_SECS>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// As a person writes it, and as it reads back: `90d`, `36h`.
impl<const MIN_SECS: u64, const MAX_SECS: u64> Serialize for BoundedDuration<MIN_SECS, MAX_SECS> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::durations::text(self.0))
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Bounded<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<const MIN_SECS: u64, const MAX_SECS: u64> fmt::Display
    for BoundedDuration<MIN_SECS, MAX_SECS>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::durations::human_duration(self.0))
    }
}

/// A count or a size of at least `MIN` and at most `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// For defaults, in a `const`: a value out of range fails the build.
    pub const fn from_const(n: u64) -> Self {
        assert!(n >= MIN && n <= MAX, "default out of range");
        Self(n)
    }

    pub fn new(n: u64) -> Result<Self, BoundError> {
        if n < MIN || n > MAX {
            return Err(BoundError::OutOfRange {
                text: n.to_string(),
                range: format!("from {MIN} to {MAX}"),
            });
        }
        Ok(Self(n))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Negative numbers are out of range too, not a type error. Not
        // i128: figment's values do not deserialize as one.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Int {
            Unsigned(u64),
            Signed(i64),
        }
        let bounded = match Int::deserialize(d)? {
            Int::Unsigned(n) => Self::new(n),
            Int::Signed(n) => Err(BoundError::OutOfRange {
                text: n.to_string(),
                range: format!("from {MIN} to {MAX}"),
            }),
        };
        bounded.map_err(serde::de::Error::custom)
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for Bounded<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `now` minus `d`, or the earliest date chrono holds: never a panic, even
/// for a duration that bypassed the bounds (settings stored by an older
/// agent).
pub fn before(now: chrono::DateTime<chrono::Utc>, d: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// `t` plus `d`, or the latest date chrono holds.
pub fn after(t: chrono::DateTime<chrono::Utc>, d: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        interval: Option<Period>,
        window: Option<Window>,
        baseline: Option<Span>,
        size: Option<Bounded<1, 1024>>,
    }

    fn doc(text: &str) -> Result<Doc, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn durations_in_range_parse() {
        let d =
            doc("interval = \"60s\"\nwindow = \"30d\"\nbaseline = \"0s\"\nsize = 1024\n").unwrap();
        assert_eq!(d.interval.unwrap().get(), Duration::from_secs(60));
        assert_eq!(d.window.unwrap().get(), Duration::from_secs(30 * DAY));
        assert_eq!(d.baseline.unwrap().get(), Duration::ZERO);
        assert_eq!(d.size.unwrap().get(), 1024);
        assert_eq!(d.window.unwrap().to_string(), "30d");
    }

    #[test]
    fn out_of_range_values_name_the_range() {
        assert_eq!(
            doc("interval = \"0s\"").unwrap_err(),
            "`0s` is out of range: from 1s to 1d"
        );
        assert_eq!(
            doc("interval = \"1ns\"").unwrap_err(),
            "`1ns` is out of range: from 1s to 1d"
        );
        assert_eq!(
            doc("window = \"99999999999d\"").unwrap_err(),
            "`99999999999d` is out of range: from 1s to 36500d"
        );
        assert_eq!(
            doc("size = 0").unwrap_err(),
            "`0` is out of range: from 1 to 1024"
        );
        assert_eq!(
            doc("size = -5").unwrap_err(),
            "`-5` is out of range: from 1 to 1024"
        );
        assert!(doc("size = 18446744073709551616").is_err());
        let err = doc("window = \"soon\"").unwrap_err();
        assert!(err.starts_with("`soon`: "), "{err}");
        // humantime's own overflow is a syntax error, not a panic.
        assert!(doc("window = \"999999999999999999999d\"").is_err());
    }

    #[test]
    fn flags_parse_through_from_str() {
        assert_eq!(
            "7d".parse::<Window>().unwrap().get(),
            Duration::from_secs(7 * DAY)
        );
        assert_eq!(
            "99999999999d".parse::<Window>().unwrap_err().to_string(),
            "`99999999999d` is out of range: from 1s to 36500d"
        );
    }

    #[test]
    fn date_arithmetic_saturates() {
        let now = chrono::Utc::now();
        assert_eq!(
            before(now, Duration::MAX),
            chrono::DateTime::<chrono::Utc>::MIN_UTC
        );
        assert_eq!(
            after(now, Duration::MAX),
            chrono::DateTime::<chrono::Utc>::MAX_UTC
        );
        let far = Duration::from_secs(CENTURY);
        assert!(before(now, far) < now && after(now, far) > now);
        assert_eq!(
            before(now, Duration::from_secs(60)),
            now - chrono::TimeDelta::seconds(60)
        );
    }
}
