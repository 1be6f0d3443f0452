//! The `[inventory]` section of the config file, and the limits and policy
//! it resolves to.

use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::catalog::FileRule;

/// Files larger than this are counted, never read.
const MAX_FILE_SIZE: u64 = 1024 * 1024;
/// Directory levels below a home or a catalog base.
const MAX_DEPTH: usize = 8;
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
const STATIC_AFTER_DAYS: u64 = 90;
const NEAR_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

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
    pub max_file_size: Option<u64>,
    pub max_depth: Option<usize>,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub scan_timeout: Option<Duration>,
    /// A private key unchanged for longer than this is static.
    pub static_after_days: Option<u64>,
    /// An expiry closer than this makes a token or certificate dynamic.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub near_expiry: Option<Duration>,
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
    pub fn limits(&self) -> Limits {
        Limits {
            max_file_size: self.max_file_size.unwrap_or(MAX_FILE_SIZE),
            max_depth: self.max_depth.unwrap_or(MAX_DEPTH),
            timeout: self.scan_timeout.unwrap_or(SCAN_TIMEOUT),
        }
    }

    pub fn policy(&self) -> Policy {
        let days = self.static_after_days.unwrap_or(STATIC_AFTER_DAYS);
        Policy {
            static_after: Duration::from_secs(days * 24 * 3600),
            near_expiry: self.near_expiry.unwrap_or(NEAR_EXPIRY),
        }
    }
}

/// `"90s"`, `"7d"`, `"1h 30m"`: humantime's syntax.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
}

fn show_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::durations::text(*d)),
        None => s.serialize_none(),
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
}
