//! Fleet: each agent syncs its ledger to a PostgreSQL store, and
//! `report --fleet` answers across hosts from it.
//!
//! `sync` sends what changed since the store last acknowledged it (the
//! cursor lives in the local ledger, which stays the source of truth);
//! `store` holds the tables and the upserts; `view` loads what a report
//! needs; `rules` are the fleet's findings as pure functions; `report`
//! prints them.

pub mod report;
pub mod rules;
pub mod store;
pub mod sync;
mod tls;
pub mod url;
pub mod view;

use std::{fmt, fs, io::Read as _, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use self::url::StoreUrl;

/// The environment variable libpq reads a password from.
pub const PASSWORD_ENV: &str = "PGPASSWORD";
/// A password file larger than this is no password file.
const MAX_PASSWORD_FILE: u64 = 4096;

/// `[fleet]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSettings {
    /// The fleet store, `postgres://USER@HOST/DB?sslmode=verify-full`;
    /// unset: no sync. Never with a password in it.
    pub url: Option<StoreUrl>,
    /// A file holding the store's password [default: the PGPASSWORD
    /// environment variable].
    pub password_file: Option<PathBuf>,
    /// How often the agent syncs (and once more at shutdown).
    pub interval: crate::bounded::Period,
    /// How long a connection and one sync may take.
    pub timeout: crate::bounded::Period,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            url: None,
            password_file: None,
            interval: crate::bounded::Period::from_secs(30),
            timeout: crate::bounded::Period::from_secs(10),
        }
    }
}

/// The store's password; never shown, wiped when dropped.
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet.password_file {path}: {}", crate::errors::error_text(err))]
    PasswordFile { path: String, err: std::io::Error },
    #[error("fleet.password_file {0}: not a regular file of at most {MAX_PASSWORD_FILE} bytes")]
    PasswordFileShape(String),
}

/// What the agent and `report` need to reach the store.
#[derive(Debug)]
pub struct Connection {
    pub url: StoreUrl,
    pub password: Option<Password>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl FleetSettings {
    /// The store to use, with `url` (a `--fleet` flag) winning over the
    /// setting's; `None` when there is none. Reads the password.
    pub fn connection(&self, url: Option<&StoreUrl>) -> Result<Option<Connection>, FleetError> {
        let Some(url) = url.or(self.url.as_ref()) else {
            return Ok(None);
        };
        Ok(Some(Connection {
            url: url.clone(),
            password: self.password()?,
            interval: self.interval.get(),
            timeout: self.timeout.get(),
        }))
    }

    /// From `password_file`, else from `PGPASSWORD`, else none (a server
    /// that trusts the client, or a certificate).
    fn password(&self) -> Result<Option<Password>, FleetError> {
        let Some(path) = &self.password_file else {
            return Ok(std::env::var(PASSWORD_ENV)
                .ok()
                .filter(|p| !p.is_empty())
                .map(|p| Password(Zeroizing::new(p))));
        };
        let shown = || path.display().to_string();
        let err = |err| FleetError::PasswordFile { path: shown(), err };
        let file = fs::File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() || meta.len() > MAX_PASSWORD_FILE {
            return Err(FleetError::PasswordFileShape(shown()));
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_PASSWORD_FILE)
            .read_to_string(&mut text)
            .map_err(err)?;
        let password = text.trim_end_matches(['\n', '\r']).to_string();
        Ok(Some(Password(Zeroizing::new(password))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_comes_from_the_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        fs::write(&file, "s3cret with spaces\n").unwrap();
        let settings = FleetSettings {
            url: Some("postgres://agent@db/fleet".parse().unwrap()),
            password_file: Some(file),
            ..FleetSettings::default()
        };
        let c = settings.connection(None).unwrap().unwrap();
        assert_eq!(c.password.as_ref().unwrap().expose(), "s3cret with spaces");
        assert_eq!(format!("{c:?}").matches("s3cret").count(), 0, "{c:?}");
        assert_eq!(c.interval, Duration::from_secs(30));

        let missing = FleetSettings {
            password_file: Some(dir.path().join("absent")),
            ..settings
        };
        let err = missing.connection(None).unwrap_err().to_string();
        assert!(err.contains("absent"), "{err}");
        assert!(FleetSettings::default().connection(None).unwrap().is_none());
    }
}
