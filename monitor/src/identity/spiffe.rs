//! SPIFFE ids: the trust domain and the rules for path segments.

/// The trust domain and host every SPIFFE id is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    trust_domain: String,
    host: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeError {
    #[error(
        "trust domain `{0}` is not valid: use lowercase letters, digits, `.`, `-` and `_` \
         (for example prod.example.com)"
    )]
    TrustDomain(String),
}

impl Naming {
    /// `trust_domain` as configured, checked; without one, the host name
    /// made into a valid trust domain.
    pub fn new(trust_domain: Option<&str>, host: &str) -> Result<Self, SpiffeError> {
        let trust_domain = match trust_domain {
            Some(td) if is_trust_domain(td) => td.to_string(),
            Some(td) => return Err(SpiffeError::TrustDomain(td.to_string())),
            None => {
                let td: String = host
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| if is_td_char(c) { c } else { '-' })
                    .collect();
                if td.is_empty() {
                    "localhost".into()
                } else {
                    td
                }
            }
        };
        Ok(Self {
            trust_domain,
            host: host.to_string(),
        })
    }

    /// `spiffe://<trust domain>/<path>`; `path` is made of [`segment`]s.
    pub fn spiffe(&self, path: &str) -> String {
        format!("spiffe://{}/{path}", self.trust_domain)
    }

    pub fn host_segment(&self) -> String {
        segment(&self.host)
    }
}

fn is_td_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_trust_domain(td: &str) -> bool {
    !td.is_empty() && td.len() <= 255 && td.chars().all(is_td_char)
}

/// One SPIFFE path segment: characters outside `[A-Za-z0-9._-]` become
/// `_`, and `.`/`..`/empty (not allowed as segments) become underscores.
pub fn segment(s: &str) -> String {
    let seg: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match seg.as_str() {
        "" | "." | ".." => "_".repeat(seg.len().max(1)),
        _ => seg,
    }
}

/// A path (such as an executable's) as SPIFFE segments.
pub fn segments(path: &str) -> String {
    let parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(segment)
        .collect();
    if parts.is_empty() {
        "_".into()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domains() {
        let n = Naming::new(None, "Web_1.Example").unwrap();
        assert_eq!(n.spiffe("x"), "spiffe://web_1.example/x");
        assert_eq!(
            Naming::new(None, "").unwrap().spiffe("x"),
            "spiffe://localhost/x"
        );
        assert_eq!(
            Naming::new(None, "host name").unwrap().spiffe("x"),
            "spiffe://host-name/x"
        );
        assert!(Naming::new(Some("prod.example.com"), "h").is_ok());
        for bad in ["", "Prod", "a/b", "spiffe://x", "a b"] {
            assert_eq!(
                Naming::new(Some(bad), "h"),
                Err(SpiffeError::TrustDomain(bad.into()))
            );
        }
    }

    #[test]
    fn path_segments() {
        assert_eq!(segment("nginx.service"), "nginx.service");
        assert_eq!(segment("getty@tty1.service"), "getty_tty1.service");
        assert_eq!(segment(".."), "__");
        assert_eq!(segment(""), "_");
        assert_eq!(segments("/usr/bin/cat"), "usr/bin/cat");
        assert_eq!(segments("/opt/my app/../run"), "opt/my_app/__/run");
        assert_eq!(segments("cat"), "cat");
        assert_eq!(segments("/"), "_");
    }
}
