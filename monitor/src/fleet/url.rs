//! The fleet store's address: a `postgres://` URL as libpq reads it, with
//! the TLS parameters tokio-postgres does not know (`sslmode=verify-ca`,
//! `verify-full`, `sslrootcert`) taken out and honoured here. A URL that
//! carries a password is refused: the password comes from a file or the
//! environment, never from a command line or a config value that
//! `secretmon config` prints.

use std::{fmt, path::PathBuf, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// libpq's `sslmode`, default `prefer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, unverified (as libpq does).
    #[default]
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, the certificate chain verified, not the name.
    VerifyCa,
    /// TLS, the chain and the server's name verified.
    VerifyFull,
}

impl SslMode {
    const NAMES: [(&'static str, Self); 5] = [
        ("disable", Self::Disable),
        ("prefer", Self::Prefer),
        ("require", Self::Require),
        ("verify-ca", Self::VerifyCa),
        ("verify-full", Self::VerifyFull),
    ];

    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// Where the certificates that verify the server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The system's store (`sslrootcert=system`, and the default).
    System,
    /// A PEM file (`sslrootcert=FILE`).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the fleet URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error(
        "the fleet URL carries a password: put it in fleet.password_file or the PGPASSWORD \
         environment variable instead, never on a command line or in the URL"
    )]
    Password,
    #[error(
        "the fleet URL's sslmode `{0}` is none of disable, prefer, require, verify-ca, verify-full"
    )]
    SslMode(String),
    #[error("the fleet URL: {0}")]
    Invalid(String),
}

/// A parsed fleet URL. It holds no password, so it may be shown.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// As written.
    text: String,
    /// The URL without the TLS parameters, for tokio-postgres.
    base: String,
    pub ssl_mode: SslMode,
    pub root_certs: RootCerts,
}

impl StoreUrl {
    /// The connection settings for tokio-postgres; its own `sslmode` is set
    /// from ours (it knows disable, prefer and require).
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config =
            tokio_postgres::Config::from_str(&self.base).expect("checked when the URL was parsed");
        config.ssl_mode(match self.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        config
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let rest = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|scheme| text.strip_prefix(scheme))
            .ok_or(UrlError::Scheme)?;
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let authority = before_query.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(UrlError::Password);
        }
        let mut ssl_mode = SslMode::default();
        let mut root_certs = RootCerts::System;
        let mut kept = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "password" => return Err(UrlError::Password),
                "sslmode" => {
                    ssl_mode = SslMode::NAMES
                        .iter()
                        .find(|(name, _)| *name == value)
                        .map(|(_, mode)| *mode)
                        .ok_or_else(|| UrlError::SslMode(value.to_string()))?;
                }
                "sslrootcert" if value == "system" => root_certs = RootCerts::System,
                "sslrootcert" => root_certs = RootCerts::File(PathBuf::from(&*value)),
                _ => {
                    kept.append_pair(&key, &value);
                }
            }
        }
        let kept = kept.finish();
        let scheme_len = text.len() - rest.len();
        let base = if kept.is_empty() {
            format!("{}{before_query}", &text[..scheme_len])
        } else {
            format!("{}{before_query}?{kept}", &text[..scheme_len])
        };
        // tokio-postgres's own checks (port, options); its messages name
        // the option, not the URL.
        tokio_postgres::Config::from_str(&base).map_err(|e| UrlError::Invalid(e.to_string()))?;
        Ok(Self {
            text: text.to_string(),
            base,
            ssl_mode,
            root_certs,
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.text)
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The message never repeats the value: it may hold a password.
        String::deserialize(d)?
            .parse()
            .map_err(|e: UrlError| serde::de::Error::custom(e))
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreUrl, UrlError> {
        text.parse()
    }

    #[test]
    fn tls_parameters_are_ours_and_the_rest_is_tokio_postgres_s() {
        let u = parse(
            "postgres://secretmon@db.example:6432/fleet?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(u.ssl_mode, SslMode::VerifyFull);
        assert_eq!(u.root_certs, RootCerts::File("/etc/ca.pem".into()));
        let c = u.config();
        assert_eq!(c.get_user(), Some("secretmon"));
        assert_eq!(c.get_dbname(), Some("fleet"));
        assert_eq!(c.get_ports(), [6432]);
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(u.to_string(), u.as_str());

        let plain = parse("postgresql://localhost/fleet").unwrap();
        assert_eq!(plain.ssl_mode, SslMode::Prefer);
        assert_eq!(plain.root_certs, RootCerts::System);
        let off = parse("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(
            off.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn a_password_is_refused_without_being_repeated() {
        for url in [
            "postgres://user:hunter2-secret@db/fleet",
            "postgres://db/fleet?password=hunter2-secret",
            "postgresql://user:hunter2-secret@db:5432/fleet?sslmode=require",
        ] {
            let err = parse(url).unwrap_err();
            assert_eq!(err, UrlError::Password, "{url}");
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("password_file"), "{text}");
        }
        // An `@` in a path or a user name alone is no password.
        assert!(parse("postgres://user@db/fleet").is_ok());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert_eq!(parse("mysql://db/x").unwrap_err(), UrlError::Scheme);
        assert_eq!(
            parse("postgres://db/x?sslmode=verify").unwrap_err(),
            UrlError::SslMode("verify".into())
        );
        assert!(matches!(
            parse("postgres://db:notaport/x").unwrap_err(),
            UrlError::Invalid(_)
        ));
    }
}
