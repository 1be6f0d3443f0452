//! The `[inventory]` section of the config file, and the limits and policy
//! it resolves to.

use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize, Serializer};

use super::catalog::FileRule;

use crate::bounded::{Bounded, Period, Span};

/// Files larger than this are counted, never read.
const MAX_FILE_SIZE: u64 = 1024 * 1024;
/// Directory levels below a home or a catalog base.
const MAX_DEPTH: u64 = 8;
const SCAN_TIMEOUT: Period = Period::from_secs(60);
const STATIC_AFTER_DAYS: u64 = 90;
const NEAR_EXPIRY: Span = Span::from_secs(7 * 24 * 3600);

/// `max_file_size`: a file is read whole into memory to fingerprint it.
pub type FileSize = Bounded<1, { 64 * 1024 * 1024 }>;
/// `max_depth`: directory levels.
pub type Depth = Bounded<1, 64>;
/// `static_after_days`: up to a century.
pub type Days = Bounded<1, 36_500>;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Catalog rules of the user's, tried before the built-in ones.
    pub extra: Vec<FileRule>,
    /// More places that hold secrets (absolute, or `~/` for every home),
    /// typed by content.
    pub globs: Vec<String>,
    /// A key shared by a fleet, so that fingerprints match across hosts.
    pub fleet_key: Option<FleetKey>,
    /// A file holding the fleet key (wins over `fleet_key`).
    pub fleet_key_file: Option<PathBuf>,
    pub max_file_size: Option<FileSize>,
    pub max_depth: Option<Depth>,
    pub scan_timeout: Option<Period>,
    /// A private key unchanged for longer than this is static.
    pub static_after_days: Option<Days>,
    /// An expiry closer than this makes a token or certificate dynamic.
    pub near_expiry: Option<Span>,
}

/// A fleet key from the config file; never shown.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct FleetKey(pub String);

/// `secretmon config` shows that a fleet key is set, never the key.
impl Serialize for FleetKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetKey(<redacted>)")
    }
}

/// How far a scan may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_size: u64,
    pub max_depth: usize,
    pub timeout: Duration,
}

/// What turns evidence into a lifetime verdict.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub static_after: Duration,
    pub near_expiry: Duration,
}

impl Settings {
    /// Fingerprints are keyed by the fleet key (loading fails otherwise).
    pub fn has_fleet_key(&self) -> bool {
        self.fleet_key_file.is_some() || self.fleet_key.is_some()
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_file_size: self.max_file_size.map_or(MAX_FILE_SIZE, FileSize::get),
            max_depth: self.max_depth.map_or(MAX_DEPTH, Depth::get) as usize,
            timeout: self.scan_timeout.unwrap_or(SCAN_TIMEOUT).get(),
        }
    }

    pub fn policy(&self) -> Policy {
        let days = self.static_after_days.map_or(STATIC_AFTER_DAYS, Days::get);
        Policy {
            static_after: Duration::from_secs(days * 24 * 3600),
            near_expiry: self.near_expiry.unwrap_or(NEAR_EXPIRY).get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        let s: Settings = toml::from_str("").unwrap();
        assert_eq!(s.limits().max_file_size, MAX_FILE_SIZE);
        assert_eq!(s.policy().static_after, Duration::from_secs(90 * 86400));
        let s: Settings = toml::from_str(
            "scan_timeout = \"5s\"\nnear_expiry = \"2h\"\nfleet_key = \"fleet-secret-1234\"\n",
        )
        .unwrap();
        assert_eq!(s.limits().timeout, Duration::from_secs(5));
        assert_eq!(s.policy().near_expiry, Duration::from_secs(7200));
        assert!(!format!("{s:?}").contains("fleet-secret-1234"));
        let err = toml::from_str::<Settings>("near_expiry = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn sizes_and_durations_out_of_range_are_refused() {
        let err = |text: &str| {
            toml::from_str::<Settings>(text)
                .unwrap_err()
                .message()
                .to_string()
        };
        assert_eq!(
            err("max_file_size = 0"),
            "`0` is out of range: from 1 to 67108864"
        );
        assert_eq!(
            err("max_file_size = 4294967296000"),
            "`4294967296000` is out of range: from 1 to 67108864"
        );
        assert_eq!(err("max_depth = 0"), "`0` is out of range: from 1 to 64");
        assert_eq!(
            err("static_after_days = 18446744073709551615"),
            "`18446744073709551615` is out of range: from 1 to 36500"
        );
        assert_eq!(
            err("scan_timeout = \"0s\""),
            "`0s` is out of range: from 1s to 1d"
        );
        assert_eq!(
            err("near_expiry = \"99999999999d\""),
            "`99999999999d` is out of range: from 0s to 36500d"
        );
    }
}
