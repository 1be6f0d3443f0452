//! What a candidate file holds: its secret type, a lifetime verdict with its
//! reason, and a safe hint. Pure: bytes and facts in, a verdict out; no I/O.
//! Values are looked at, never kept: the result holds only fixed labels and
//! the catalog's safe prefixes.

use std::time::Duration;

use base64::{
    Engine as _,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    catalog::{Catalog, FileRule, Parse},
    settings::Policy,
};
use crate::secret::{Lifetime, SecretType};

/// What is known about the file besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub rule: &'a FileRule,
    /// Time since the last modification.
    pub age: Duration,
    /// Reached through the kubelet's `..data` symlink.
    pub atomic_writer: bool,
    /// Its fingerprint changed while it was watched.
    pub rotated: bool,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub secret_type: SecretType,
    pub lifetime: Lifetime,
    pub reason: String,
    pub hint: Option<String>,
    /// When the token or certificate inside stops being valid.
    pub expires: Option<DateTime<Utc>>,
}

/// The classification of a file, or `None` when its content holds no
/// secret (a config without keys, a certificate without its key).
pub fn classify(
    bytes: &[u8],
    facts: &Facts,
    catalog: &Catalog,
    policy: &Policy,
) -> Option<Classification> {
    let cx = Cx {
        catalog,
        policy,
        now: facts.now,
        rule_type: facts.rule.secret_type,
    };
    let ev = cx.evidence(facts.rule.parse, bytes)?;
    let hint = ev.hint.clone().or_else(|| cx.shape(bytes).map(|s| s.hint));
    let definite = ev
        .verdict
        .as_ref()
        .filter(|v| v.lifetime != Lifetime::Unknown)
        .cloned();
    let verdict = definite
        .or_else(|| {
            facts.atomic_writer.then(|| {
                Verdict::dynamic("kubelet atomic-writer volume (..data): updated in place")
            })
        })
        .or_else(|| {
            facts
                .rotated
                .then(|| Verdict::dynamic("fingerprint changed while watched (rotated)"))
        })
        .or_else(|| {
            facts.rule.lifetime.map(|lifetime| Verdict {
                lifetime,
                reason: facts
                    .rule
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("catalog: {}", facts.rule.glob)),
            })
        })
        .or_else(|| {
            // A key, or a file of no known kind (a `--watch` path): no
            // rotation in all that time is evidence of a long-lived secret.
            let generic = ev.secret_type == SecretType::Generic;
            ((ev.key_material || generic) && facts.age > policy.static_after).then(|| {
                let what = if ev.key_material { "key" } else { "value" };
                Verdict::long_lived(format!("{what} unchanged for {}", approx(facts.age)))
            })
        })
        .or(ev.verdict)
        .unwrap_or_else(|| Verdict::unknown("no lifetime evidence"));
    Some(Classification {
        secret_type: ev.secret_type,
        lifetime: verdict.lifetime,
        reason: verdict.reason,
        hint,
        expires: ev.expires,
    })
}

/// A duration rounded down to its largest unit: `195d`, `5h`, `12m`, `40s`.
pub fn approx(d: Duration) -> String {
    let secs = d.as_secs();
    let (unit, suffix) = [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(u, _)| secs >= *u)
        .unwrap_or((1, "s"));
    format!("{}{suffix}", secs / unit)
}

#[derive(Debug, Clone)]
struct Verdict {
    lifetime: Lifetime,
    reason: String,
}

impl Verdict {
    fn long_lived(reason: impl Into<String>) -> Self {
        Self {
            lifetime: Lifetime::Static,
            reason: reason.into(),
        }
    }
    fn dynamic(reason: impl Into<String>) -> Self {
        Self {
            lifetime: Lifetime::Dynamic,
            reason: reason.into(),
        }
    }
    fn unknown(reason: impl Into<String>) -> Self {
        Self {
            lifetime: Lifetime::Unknown,
            reason: reason.into(),
        }
    }
}

/// What a parser found in a file that holds a secret.
#[derive(Debug)]
struct Evidence {
    secret_type: SecretType,
    hint: Option<String>,
    verdict: Option<Verdict>,
    expires: Option<DateTime<Utc>>,
    /// A private key: unchanged for long means static.
    key_material: bool,
}

impl Evidence {
    fn new(secret_type: SecretType, verdict: Option<Verdict>) -> Self {
        Self {
            secret_type,
            hint: None,
            verdict,
            expires: None,
            key_material: false,
        }
    }
    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    fn with(mut self, verdict: Verdict) -> Self {
        self.verdict = Some(verdict);
        self
    }
}

/// A value shape found in the content.
struct ShapeHit {
    hint: String,
    verdict: Option<Verdict>,
    expires: Option<DateTime<Utc>>,
}

struct Cx<'a> {
    catalog: &'a Catalog,
    policy: &'a Policy,
    now: DateTime<Utc>,
    rule_type: SecretType,
}

impl Cx<'_> {
    fn evidence(&self, parse: Parse, bytes: &[u8]) -> Option<Evidence> {
        match parse {
            Parse::Aws => self.aws(bytes),
            Parse::Gcp => self.json(bytes, |v| self.gcp(v)),
            Parse::Azure => self.json(bytes, |v| self.azure(v)),
            Parse::Kubeconfig => self.kubeconfig(bytes),
            Parse::Docker => self.json(bytes, |v| self.docker(v)),
            Parse::Terraform => self.json(bytes, |v| self.terraform(v)),
            Parse::Cargo => self.cargo(bytes),
            Parse::Netrc => self.netrc(bytes),
            Parse::Pgpass => self.count(pgpass_entries(bytes), "stored password"),
            Parse::IniPassword => self.count(ini_passwords(bytes), "stored password"),
            Parse::GitCredentials => self.count(git_credentials(bytes), "stored password"),
            Parse::Npmrc => self.count(npm_tokens(bytes), "registry token"),
            Parse::Vault => self.vault(bytes),
            Parse::Pem => self.pem(bytes),
            Parse::Jwt => Some(self.jwt_file(bytes)),
            Parse::Env => self.env(bytes),
            Parse::Opaque => Some(self.opaque(bytes)),
            Parse::Auto => self.auto(bytes),
        }
    }

    /// The first value shape in `bytes`; the first one with a verdict wins
    /// over one without.
    fn shape(&self, bytes: &[u8]) -> Option<ShapeHit> {
        let mut first: Option<ShapeHit> = None;
        for shape in self.catalog.shapes() {
            let Some(m) = shape.regex.find(bytes) else {
                continue;
            };
            let mut hit = ShapeHit {
                hint: shape.hint(m.as_bytes()),
                verdict: shape.lifetime.map(|lifetime| Verdict {
                    lifetime,
                    reason: shape.reason.clone().unwrap_or_else(|| shape.name.clone()),
                }),
                expires: None,
            };
            if shape.jwt
                && let Some(claims) = jwt_claims(m.as_bytes())
            {
                let (verdict, expires) = self.jwt_verdict(&claims, false);
                hit.verdict = Some(verdict);
                hit.expires = expires;
            }
            if hit.verdict.is_some() {
                return Some(hit);
            }
            first.get_or_insert(hit);
        }
        first
    }

    fn json(&self, bytes: &[u8], f: impl FnOnce(&Value) -> Option<Evidence>) -> Option<Evidence> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => f(&v),
            Err(_) => Some(Evidence::new(
                self.rule_type,
                Some(Verdict::unknown("not valid JSON")),
            )),
        }
    }

    /// A file of `n` stored passwords or tokens, none meaning no secret.
    fn count(&self, n: usize, what: &str) -> Option<Evidence> {
        if n == 0 {
            return None;
        }
        let plural = if n == 1 { "" } else { "s" };
        Some(Evidence::new(
            self.rule_type,
            Some(Verdict::long_lived(format!(
                "{n} {what}{plural}, no expiry"
            ))),
        ))
    }

    fn aws(&self, bytes: &[u8]) -> Option<Evidence> {
        let text = String::from_utf8_lossy(bytes);
        let (mut akia, mut asia, mut secrets, mut sessions) = (0, 0, 0, 0);
        for (key, value) in ini_pairs(&text) {
            match key.to_ascii_lowercase().as_str() {
                "aws_access_key_id" if value.starts_with("AKIA") => akia += 1,
                "aws_access_key_id" if value.starts_with("ASIA") => asia += 1,
                "aws_secret_access_key" if !value.is_empty() => secrets += 1,
                "aws_session_token" if !value.is_empty() => sessions += 1,
                _ => {}
            }
        }
        if secrets == 0 && sessions == 0 {
            return None;
        }
        let ev = Evidence::new(SecretType::AwsCredentials, None);
        Some(if akia > 0 {
            ev.hint("AKIA…")
                .with(Verdict::long_lived("AKIA long-term IAM access key"))
        } else if asia > 0 || sessions > 0 {
            ev.hint("ASIA…").with(Verdict::dynamic(
                "temporary STS credentials (session token)",
            ))
        } else {
            ev.with(Verdict::unknown("no access key id beside the secret key"))
        })
    }

    fn gcp(&self, v: &Value) -> Option<Evidence> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        let ev = Evidence::new(SecretType::GcpCredentials, None);
        Some(match kind {
            "service_account" if v.get("private_key").is_some() => ev
                .hint("service_account")
                .with(Verdict::long_lived("service-account key, no expiry")),
            "authorized_user" if v.get("refresh_token").is_some() => ev
                .hint("authorized_user")
                .with(Verdict::long_lived("user refresh token, no expiry")),
            "external_account" => ev.hint("external_account").with(Verdict::dynamic(
                "workload identity federation: tokens exchanged at use",
            )),
            "impersonated_service_account" => ev
                .hint("impersonated_service_account")
                .with(Verdict::unknown("impersonation; source credentials inside")),
            _ => return None,
        })
    }

    fn azure(&self, v: &Value) -> Option<Evidence> {
        // MSAL caches keep maps per kind; the old CLI cache is a list.
        let count = |name: &str| {
            v.get(name)
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
        };
        let (refresh, access) = match v.as_array() {
            Some(entries) => (
                entries
                    .iter()
                    .filter(|e| e.get("refreshToken").is_some())
                    .count(),
                entries
                    .iter()
                    .filter(|e| e.get("accessToken").is_some())
                    .count(),
            ),
            None => (count("RefreshToken"), count("AccessToken")),
        };
        let ev = Evidence::new(SecretType::AzureTokenCache, None);
        if refresh > 0 {
            Some(ev.hint("refresh tokens").with(Verdict::long_lived(format!(
                "{refresh} refresh token(s): long-lived, renewed at use"
            ))))
        } else if access > 0 {
            Some(ev.hint("access tokens").with(Verdict::dynamic(
                "access tokens only (they live about an hour)",
            )))
        } else {
            None
        }
    }

    fn kubeconfig(&self, bytes: &[u8]) -> Option<Evidence> {
        let Ok(doc) = serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(bytes) else {
            return Some(Evidence::new(
                SecretType::Kubeconfig,
                Some(Verdict::unknown("not valid YAML")),
            ));
        };
        let users = doc
            .get("users")
            .and_then(|u| u.as_sequence())
            .cloned()
            .unwrap_or_default();
        let (mut tokens, mut keys, mut passwords, mut plugins) = (0, 0, 0, 0);
        let mut jwt = None;
        for user in users.iter().filter_map(|u| u.get("user")) {
            let has = |k: &str| user.get(k).is_some_and(|v| !v.is_null());
            if let Some(token) = user.get("token").and_then(|t| t.as_str()) {
                tokens += 1;
                jwt = jwt.or_else(|| jwt_claims(token.as_bytes()));
            }
            keys += usize::from(has("client-key-data") || has("client-key"));
            passwords += usize::from(has("password"));
            plugins += usize::from(has("exec") || has("auth-provider"));
        }
        let ev = Evidence::new(SecretType::Kubeconfig, None);
        if let Some(claims) = jwt {
            let (verdict, expires) = self.jwt_verdict(&claims, false);
            let mut ev = ev.hint("token").with(verdict);
            ev.expires = expires;
            return Some(ev);
        }
        Some(if tokens > 0 {
            ev.hint("token")
                .with(Verdict::long_lived("embedded bearer token"))
        } else if keys > 0 {
            ev.hint("client key")
                .with(Verdict::long_lived("embedded client certificate key"))
        } else if passwords > 0 {
            ev.hint("password")
                .with(Verdict::long_lived("embedded password"))
        } else if plugins > 0 {
            ev.hint("exec plugin").with(Verdict::dynamic(
                "exec/auth-provider plugin: credentials fetched at use",
            ))
        } else {
            return None;
        })
    }

    fn docker(&self, v: &Value) -> Option<Evidence> {
        let inline = v
            .get("auths")
            .and_then(Value::as_object)
            .map(|auths| {
                auths
                    .values()
                    .filter(|a| {
                        ["auth", "identitytoken", "registrytoken", "password"]
                            .iter()
                            .any(|k| {
                                a.get(k)
                                    .and_then(Value::as_str)
                                    .is_some_and(|s| !s.is_empty())
                            })
                    })
                    .count()
            })
            .unwrap_or(0);
        // With a credsStore or credHelpers and no inline auth, the file
        // holds no secret: the helper does.
        (inline > 0).then(|| {
            Evidence::new(SecretType::DockerAuth, None)
                .hint(format!(
                    "{inline} registr{}",
                    if inline == 1 { "y" } else { "ies" }
                ))
                .with(Verdict::long_lived("inline registry auth, no expiry"))
        })
    }

    fn terraform(&self, v: &Value) -> Option<Evidence> {
        let n = v
            .get("credentials")
            .and_then(Value::as_object)
            .map_or(0, |c| {
                c.values().filter(|h| h.get("token").is_some()).count()
            });
        self.count(n, "API token")
    }

    fn cargo(&self, bytes: &[u8]) -> Option<Evidence> {
        let text = String::from_utf8_lossy(bytes);
        let Ok(doc) = text.parse::<toml::Table>() else {
            return Some(Evidence::new(
                SecretType::CargoCredentials,
                Some(Verdict::unknown("not valid TOML")),
            ));
        };
        let has_token = |t: Option<&toml::Value>| t.and_then(|r| r.get("token")).is_some();
        let mut n = usize::from(has_token(doc.get("registry")));
        if let Some(regs) = doc.get("registries").and_then(toml::Value::as_table) {
            n += regs.values().filter(|r| has_token(Some(r))).count();
        }
        self.count(n, "registry token")
    }

    fn netrc(&self, bytes: &[u8]) -> Option<Evidence> {
        let text = String::from_utf8_lossy(bytes);
        let words: Vec<&str> = text.split_whitespace().collect();
        let n = words
            .windows(2)
            .filter(|w| w[0] == "password" && !w[1].is_empty())
            .count();
        self.count(n, "stored password")
    }

    fn vault(&self, bytes: &[u8]) -> Option<Evidence> {
        if bytes.trim_ascii().is_empty() {
            return None;
        }
        let hit = self.shape(bytes);
        let mut ev = Evidence::new(SecretType::VaultToken, None);
        ev.verdict = Some(
            hit.as_ref()
                .and_then(|h| h.verdict.clone())
                .unwrap_or_else(|| {
                    Verdict::unknown("Vault token: its TTL is kept by the Vault server")
                }),
        );
        ev.hint = hit.map(|h| h.hint);
        Some(ev)
    }

    fn opaque(&self, bytes: &[u8]) -> Evidence {
        let mut ev = Evidence::new(self.rule_type, None);
        ev.key_material = self.rule_type == SecretType::Pkcs12;
        if let Some(hit) = self.shape(bytes) {
            ev.hint = Some(hit.hint);
            ev.verdict = hit.verdict;
            ev.expires = hit.expires;
        }
        ev
    }

    fn auto(&self, bytes: &[u8]) -> Option<Evidence> {
        if contains(bytes, b"-----BEGIN ") {
            return self.pem(bytes);
        }
        if jwt_claims(bytes.trim_ascii()).is_some() {
            return Some(self.jwt_file(bytes));
        }
        if let Some(mut ev) = self.env(bytes) {
            ev.secret_type = self.rule_type;
            return Some(ev);
        }
        Some(self.opaque(bytes))
    }

    fn pem(&self, bytes: &[u8]) -> Option<Evidence> {
        use x509_cert::der::Decode as _;
        let text = String::from_utf8_lossy(bytes);
        let blocks = pem_blocks(&text);
        let keys: Vec<PemKey> = blocks.iter().filter_map(private_key).collect();
        // The first certificate is the leaf: its expiry is the file's.
        let leaf_der = blocks
            .iter()
            .filter(|b| b.label == "CERTIFICATE")
            .find_map(|b| pem_der(b.body));
        let leaf = leaf_der
            .as_deref()
            .and_then(|der| x509_cert::Certificate::from_der(der).ok());
        // A URI SAN is stored as plain text in the DER.
        let spiffe = leaf.is_some() && leaf_der.is_some_and(|der| contains(&der, b"spiffe://"));
        if keys.is_empty() && !spiffe {
            // A certificate, a public key or no PEM at all.
            return None;
        }
        let secret_type = if spiffe || self.rule_type == SecretType::SpiffeSvid {
            SecretType::SpiffeSvid
        } else if keys.iter().any(|k| k.openssh) || self.rule_type == SecretType::SshPrivateKey {
            SecretType::SshPrivateKey
        } else {
            self.rule_type
        };
        let mut ev = Evidence::new(secret_type, None);
        ev.key_material = !keys.is_empty();
        ev.hint = keys
            .first()
            .map(|k| k.hint())
            .or(spiffe.then(|| "X.509-SVID".into()));
        if let Some(cert) = &leaf {
            let not_after = cert.tbs_certificate.validity.not_after.to_unix_duration();
            let expires = DateTime::from_timestamp(not_after.as_secs() as i64, 0);
            if let Some(expires) = expires {
                ev.verdict = Some(self.expiry_verdict("certificate", expires));
                ev.expires = Some(expires);
            }
        }
        Some(ev)
    }

    /// A file that should hold a JWT (a service-account token).
    fn jwt_file(&self, bytes: &[u8]) -> Evidence {
        let mut ev = Evidence::new(self.rule_type, None);
        let Some(claims) = jwt_claims(bytes.trim_ascii()) else {
            ev.verdict = Some(Verdict::unknown("not a JWT"));
            return ev;
        };
        let k8s = self.rule_type == SecretType::K8sSaToken;
        let (verdict, expires) = self.jwt_verdict(&claims, k8s);
        ev.verdict = Some(verdict);
        ev.expires = expires;
        ev.hint = Some(if !k8s {
            "JWT".into()
        } else if claims.get("kubernetes.io").is_some() {
            "projected".into()
        } else {
            "legacy".into()
        });
        ev
    }

    fn jwt_verdict(&self, claims: &Value, k8s: bool) -> (Verdict, Option<DateTime<Utc>>) {
        let time = |v: Option<&Value>| {
            v.and_then(Value::as_i64)
                .and_then(|s| DateTime::from_timestamp(s, 0))
        };
        let exp = time(claims.get("exp"));
        let warn_after = time(claims.pointer("/kubernetes.io/warnafter"));
        if let Some(warn) = warn_after {
            // Kubelet-projected tokens carry an extended exp for old
            // clients, but are refreshed long before: warnafter says when.
            let reason = format!(
                "projected token refreshed by the kubelet (warnafter {})",
                self.relative(warn)
            );
            return (Verdict::dynamic(reason), exp);
        }
        match exp {
            None if k8s => (
                Verdict::long_lived("legacy service-account token: no exp, never expires"),
                None,
            ),
            None => (Verdict::long_lived("JWT without exp: never expires"), None),
            Some(exp) => (self.expiry_verdict("JWT", exp), Some(exp)),
        }
    }

    fn expiry_verdict(&self, what: &str, expires: DateTime<Utc>) -> Verdict {
        let left = (expires - self.now).to_std().unwrap_or_default();
        let when = self.relative(expires);
        if expires <= self.now {
            Verdict::unknown(format!("{what} expired {when}"))
        } else if left <= self.policy.near_expiry {
            Verdict::dynamic(format!("{what} expires {when}"))
        } else if left > self.policy.static_after {
            Verdict::long_lived(format!("{what} expires {when}"))
        } else {
            Verdict::unknown(format!("{what} expires {when}"))
        }
    }

    fn relative(&self, t: DateTime<Utc>) -> String {
        match (t - self.now).to_std() {
            Ok(d) => format!("in {}", approx(d)),
            Err(_) => format!(
                "{} ago",
                approx((self.now - t).to_std().unwrap_or_default())
            ),
        }
    }

    fn env(&self, bytes: &[u8]) -> Option<Evidence> {
        let text = String::from_utf8_lossy(bytes);
        let mut names: Vec<&str> = Vec::new();
        let mut password = false;
        let mut shape: Option<ShapeHit> = None;
        for (name, value) in env_pairs(&text) {
            if value.is_empty() || value.starts_with('$') {
                continue;
            }
            let url_password = self.catalog.is_url_env_name(name) && url_has_password(value);
            let hit = self.shape(value.as_bytes());
            if self.catalog.is_secret_env_name(name) || url_password || hit.is_some() {
                names.push(name);
                password |= url_password || name.ends_with("PASSWORD") || name.ends_with("_PWD");
                if shape.as_ref().is_none_or(|s| s.verdict.is_none()) && hit.is_some() {
                    shape = hit;
                }
            }
        }
        if names.is_empty() {
            return None;
        }
        let mut ev = Evidence::new(SecretType::EnvFile, None);
        let more = names.len().saturating_sub(3);
        let mut hint = names[..names.len().min(3)].join(", ");
        if more > 0 {
            hint.push_str(&format!(" +{more}"));
        }
        ev.hint = Some(hint);
        ev.verdict = match shape.and_then(|s| s.verdict) {
            Some(v) => Some(v),
            None if password => Some(Verdict::long_lived("stored password, no expiry")),
            None => Some(Verdict::unknown("API tokens: expiry kept by their issuers")),
        };
        Some(ev)
    }
}

/// A PEM private-key block.
struct PemKey {
    label: String,
    openssh: bool,
    encrypted: bool,
    algorithm: Option<String>,
    truncated: bool,
}

impl PemKey {
    fn hint(&self) -> String {
        let mut hint = match (&self.algorithm, self.label.as_str()) {
            (Some(alg), _) => alg.clone(),
            (None, "OPENSSH PRIVATE KEY") => "OpenSSH key".into(),
            (None, "PRIVATE KEY" | "ENCRYPTED PRIVATE KEY") => "PKCS#8 key".into(),
            // Only known labels: the file's own text is never echoed.
            (None, "RSA PRIVATE KEY") => "RSA key".into(),
            (None, "EC PRIVATE KEY") => "EC key".into(),
            (None, "DSA PRIVATE KEY") => "DSA key".into(),
            (None, _) => "private key".into(),
        };
        if self.encrypted {
            hint.push_str(", encrypted");
        }
        if self.truncated {
            hint.push_str(", truncated");
        }
        hint
    }
}

/// OpenSSH public key types, certificates included.
const SSH_PUBLIC_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The file holds public keys and nothing else: OpenSSH public key lines
/// (`ssh-ed25519 AAAA… comment`, with `authorized_keys` options or not,
/// certificates too), or PEM `PUBLIC KEY` blocks. Public keys are no
/// secret, whatever the file is called or whoever watches it.
pub fn public_key_only(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    if text.contains("-----BEGIN ") {
        let blocks = pem_blocks(text);
        return !blocks.is_empty() && blocks.iter().all(|b| b.label.ends_with("PUBLIC KEY"));
    }
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    lines.peek().is_some() && lines.all(ssh_public_key_line)
}

fn ssh_public_key_line(line: &str) -> bool {
    let is_type = |t: &str| {
        let base = t.strip_suffix("-cert-v01@openssh.com").unwrap_or(t);
        SSH_PUBLIC_KEY_TYPES
            .iter()
            .any(|k| *k == t || k.strip_suffix("@openssh.com").unwrap_or(k) == base)
    };
    let tokens: Vec<&str> = line.split_whitespace().take(3).collect();
    // `type key [comment]`, or `options type key [comment]`.
    tokens
        .windows(2)
        .take(2)
        .any(|w| is_type(w[0]) && w[1].starts_with("AAAA"))
}

/// One `-----BEGIN label-----` block; `truncated` when its END is missing.
struct PemBlock<'a> {
    label: &'a str,
    body: &'a str,
    truncated: bool,
}

fn pem_blocks(text: &str) -> Vec<PemBlock<'_>> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let (body, truncated, next) = match body_start.find(&end_marker) {
            Some(i) => (&body_start[..i], false, &body_start[i + end_marker.len()..]),
            None => (body_start, true, ""),
        };
        blocks.push(PemBlock {
            label,
            body,
            truncated,
        });
        rest = next;
    }
    blocks
}

fn private_key(block: &PemBlock) -> Option<PemKey> {
    if !block.label.ends_with("PRIVATE KEY") {
        return None;
    }
    let openssh = block.label == "OPENSSH PRIVATE KEY";
    let mut key = PemKey {
        label: block.label.into(),
        openssh,
        encrypted: block.label.starts_with("ENCRYPTED") || block.body.contains("ENCRYPTED"),
        algorithm: None,
        truncated: block.truncated,
    };
    if openssh && let Some((alg, encrypted)) = openssh_header(block.body) {
        key.algorithm = Some(alg);
        key.encrypted = encrypted;
    }
    Some(key)
}

/// The DER of a PEM block, ignoring a torn last line.
fn pem_der(body: &str) -> Option<Vec<u8>> {
    let b64: String = body
        .lines()
        .filter(|l| !l.contains(':'))
        .flat_map(str::split_whitespace)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&b64[..b64.len() / 4 * 4])
        .ok()
}

/// The key type and whether it is encrypted, from an `openssh-key-v1`
/// body: both are in the clear, before the private part.
fn openssh_header(body: &str) -> Option<(String, bool)> {
    let raw = pem_der(body)?;
    let mut r = raw.strip_prefix(b"openssh-key-v1\0")?;
    let cipher = ssh_string(&mut r)?;
    ssh_string(&mut r)?; // kdf name
    ssh_string(&mut r)?; // kdf options
    r = r.get(4..)?; // number of keys
    let mut public = ssh_string(&mut r)?;
    let alg = ssh_string(&mut public)?;
    let alg = std::str::from_utf8(alg).ok()?;
    // An algorithm name is short and printable; anything else is garbage.
    if alg.len() > 40 || !alg.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((alg.to_string(), cipher != b"none"))
}

fn ssh_string<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(r.get(..4)?.try_into().ok()?) as usize;
    let s = r.get(4..4 + len)?;
    *r = &r[4 + len..];
    Some(s)
}

/// The claims of a compact JWT, decoded and never verified.
fn jwt_claims(token: &[u8]) -> Option<Value> {
    const B64: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let mut parts = token.split(|&b| b == b'.');
    let header = B64.decode(parts.next()?).ok()?;
    let claims = B64.decode(parts.next()?).ok()?;
    parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice::<Value>(&header).ok()?.get("alg")?;
    serde_json::from_slice::<Value>(&claims)
        .ok()
        .filter(Value::is_object)
}

/// `key = value` lines of an INI file, sections ignored.
fn ini_pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.starts_with(['#', ';', '[']) {
            return None;
        }
        let (k, v) = line.split_once('=')?;
        Some((k.trim(), v.trim()))
    })
}

fn ini_passwords(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    ini_pairs(&text)
        .filter(|(k, v)| k.eq_ignore_ascii_case("password") && !v.is_empty())
        .count()
}

/// `hostname:port:database:username:password` lines with a password.
fn pgpass_entries(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| {
            // `\:` is a literal colon inside a field.
            let fields = l.replace("\\:", "").replace("\\\\", "");
            let parts: Vec<&str> = fields.split(':').collect();
            parts.len() >= 5 && !parts[4..].join(":").is_empty()
        })
        .count()
}

/// `scheme://user:password@host` lines.
fn git_credentials(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    text.lines().filter(|l| url_has_password(l.trim())).count()
}

fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return false;
    };
    userinfo
        .split_once(':')
        .is_some_and(|(_, password)| !password.is_empty())
}

/// `_authToken=`, `_auth=` and `_password=` lines with an inline value.
fn npm_tokens(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    ini_pairs(&text)
        .filter(|(k, v)| {
            [
                ":_authToken",
                ":_auth",
                ":_password",
                "_authToken",
                "_auth",
                "_password",
            ]
            .iter()
            .any(|s| k.ends_with(s))
                && !v.is_empty()
                && !v.starts_with("${")
        })
        .count()
}

/// `NAME=value` and `export NAME="value"` lines; quotes stripped.
fn env_pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.starts_with('#') {
            return None;
        }
        let (name, value) = line.split_once('=')?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some((name, value))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::inventory::settings::Settings;

    const HOMES: [&str; 3] = ["/home/ana", "/home/bob", "/root"];
    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> DateTime<Utc> {
        // Within a day of when the fixture's SVID was made.
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn fixture(shown: &str) -> Vec<u8> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory");
        std::fs::read(root.join(&shown[1..])).unwrap_or_else(|e| panic!("{shown}: {e}"))
    }

    struct Case<'a> {
        rule: &'a FileRule,
        age: Duration,
        atomic_writer: bool,
        rotated: bool,
    }

    fn catalog() -> Catalog {
        Catalog::new(&Settings::default()).unwrap()
    }

    fn rule<'a>(c: &'a Catalog, shown: &str) -> Option<&'a FileRule> {
        let path = Path::new(shown);
        let home = HOMES.iter().find_map(|h| path.strip_prefix(h).ok());
        c.rule_for(path, home)
    }

    fn run(c: &Catalog, case: Case, bytes: &[u8]) -> Option<Classification> {
        let facts = Facts {
            rule: case.rule,
            age: case.age,
            atomic_writer: case.atomic_writer,
            rotated: case.rotated,
            now: now(),
        };
        classify(bytes, &facts, c, &Settings::default().policy())
    }

    /// A fixture file, classified as the scan would, unchanged for 400 days.
    fn file(c: &Catalog, shown: &str) -> Option<Classification> {
        let rule = rule(c, shown).unwrap_or_else(|| panic!("no rule for {shown}"));
        let case = Case {
            rule,
            age: 400 * DAY,
            atomic_writer: false,
            rotated: false,
        };
        run(c, case, &fixture(shown))
    }

    #[test]
    fn every_fixture_type() {
        use Lifetime::{Dynamic as D, Static as S, Unknown as U};
        use SecretType as T;
        let c = catalog();
        let cases: &[(&str, SecretType, Lifetime, Option<&str>)] = &[
            (
                "/home/ana/.aws/credentials",
                T::AwsCredentials,
                S,
                Some("AKIA…"),
            ),
            (
                "/root/.aws/credentials",
                T::AwsCredentials,
                D,
                Some("ASIA…"),
            ),
            (
                "/home/ana/.config/gcloud/application_default_credentials.json",
                T::GcpCredentials,
                S,
                Some("authorized_user"),
            ),
            (
                "/home/ana/.config/gcloud/legacy_credentials/ana@example.com/adc.json",
                T::GcpCredentials,
                S,
                Some("service_account"),
            ),
            (
                "/home/ana/.config/gcloud/credentials.db",
                T::GcpCredentials,
                S,
                None,
            ),
            (
                "/home/ana/.config/gcloud/access_tokens.db",
                T::GcpCredentials,
                D,
                None,
            ),
            (
                "/home/ana/.azure/msal_token_cache.json",
                T::AzureTokenCache,
                S,
                Some("refresh tokens"),
            ),
            (
                "/root/.azure/accessTokens.json",
                T::AzureTokenCache,
                D,
                Some("access tokens"),
            ),
            ("/home/ana/.kube/config", T::Kubeconfig, S, Some("token")),
            ("/root/.kube/config", T::Kubeconfig, D, Some("exec plugin")),
            (
                "/etc/kubernetes/admin.conf",
                T::Kubeconfig,
                S,
                Some("client key"),
            ),
            (
                "/home/ana/.docker/config.json",
                T::DockerAuth,
                S,
                Some("2 registries"),
            ),
            ("/home/ana/.netrc", T::Netrc, S, None),
            ("/home/ana/.pgpass", T::Pgpass, S, None),
            ("/home/ana/.my.cnf", T::MysqlCnf, S, None),
            ("/etc/mysql/debian.cnf", T::MysqlCnf, S, None),
            (
                "/home/ana/.git-credentials",
                T::GitCredentials,
                S,
                Some("ghp_…"),
            ),
            ("/home/ana/.npmrc", T::Npmrc, S, Some("npm_…")),
            ("/home/ana/.pypirc", T::Pypirc, S, Some("pypi-…")),
            (
                "/home/ana/.cargo/credentials.toml",
                T::CargoCredentials,
                S,
                None,
            ),
            (
                "/home/ana/.terraform.d/credentials.tfrc.json",
                T::TerraformCredentials,
                S,
                None,
            ),
            ("/home/ana/.vault-token", T::VaultToken, U, Some("hvs.…")),
            (
                "/home/ana/.ssh/id_ed25519",
                T::SshPrivateKey,
                S,
                Some("ssh-ed25519"),
            ),
            (
                "/home/ana/.ssh/id_ed25519_encrypted",
                T::SshPrivateKey,
                S,
                Some("ssh-ed25519, encrypted"),
            ),
            (
                "/etc/ssh/ssh_host_ed25519_key",
                T::SshPrivateKey,
                S,
                Some("ssh-ed25519"),
            ),
            (
                "/home/ana/tls/server.key",
                T::PrivateKey,
                S,
                Some("PKCS#8 key"),
            ),
            (
                "/home/ana/tls/bundle.pem",
                T::PrivateKey,
                S,
                Some("PKCS#8 key"),
            ),
            ("/home/ana/tls/client.p12", T::Pkcs12, S, None),
            ("/home/ana/tls/client.pfx", T::Pkcs12, S, None),
            (
                "/home/ana/src/app/.env",
                T::EnvFile,
                S,
                Some("GITHUB_TOKEN, DATABASE_URL"),
            ),
            (
                "/home/ana/src/app/.env.ci",
                T::EnvFile,
                D,
                Some("AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN"),
            ),
            (
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
                T::K8sSaToken,
                D,
                Some("projected"),
            ),
            (
                "/var/lib/kubelet/pods/11111111-2222-3333-4444-555555555555/volumes/kubernetes.io~projected/kube-api-access-abcde/token",
                T::K8sSaToken,
                D,
                Some("projected"),
            ),
            (
                "/run/secrets/kubernetes.io/serviceaccount/token",
                T::K8sSaToken,
                S,
                Some("legacy"),
            ),
            (
                "/var/lib/kubelet/pods/11111111-2222-3333-4444-555555555555/volumes/kubernetes.io~secret/api-credentials/api-key",
                T::Generic,
                S,
                None,
            ),
            ("/run/secrets/db_password", T::Generic, S, None),
            ("/run/spire/svid.pem", T::SpiffeSvid, D, Some("X.509-SVID")),
            (
                "/run/spire/svid_key.pem",
                T::SpiffeSvid,
                D,
                Some("PKCS#8 key"),
            ),
        ];
        for &(path, ty, lifetime, hint) in cases {
            let got = file(&c, path).unwrap_or_else(|| panic!("{path}: no secret found"));
            assert_eq!(
                (got.secret_type, got.lifetime, got.hint.as_deref()),
                (ty, lifetime, hint),
                "{path}: {}",
                got.reason
            );
            assert!(!got.reason.is_empty(), "{path}");
            for text in [&got.reason, got.hint.as_deref().unwrap_or("")] {
                assert!(!text.contains("PLANTED"), "{path}: value in {text}");
            }
        }
    }

    #[test]
    fn files_without_a_secret_are_not_inventoried() {
        let c = catalog();
        for path in [
            "/home/ana/.aws/config",
            "/root/.docker/config.json",
            "/home/ana/.ssh/config",
            "/home/ana/tls/ca.pem",
            "/home/bob/.env",
        ] {
            assert_eq!(file(&c, path), None, "{path}");
        }
        // Templates and public material match no rule at all.
        for path in [
            "/home/ana/src/app/.env.example",
            "/home/ana/src/app/.env.sample",
            "/home/ana/.ssh/known_hosts",
            "/home/ana/.ssh/id_ed25519.pub",
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
        ] {
            assert!(rule(&c, path).is_none(), "{path}");
        }
    }

    #[test]
    fn public_keys_are_no_secret() {
        let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLANTEDpublic ana@laptop\n";
        let cert = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQ ana\n";
        let opts = "no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ backup\n";
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n";
        for text in [ed, cert, opts, pem, &format!("# keys\n{ed}\n{opts}")] {
            assert!(public_key_only(text.as_bytes()), "{text}");
        }
        let private = String::from_utf8(fixture("/home/ana/.ssh/id_ed25519")).unwrap();
        for text in [
            "",
            "hunter2\n",
            "ssh-ed25519 not-base64\n",
            &format!("{ed}{private}"),
            &private,
            &format!("{pem}-----BEGIN PRIVATE KEY-----\nMC4\n-----END PRIVATE KEY-----\n"),
            &format!("{ed}GITHUB_TOKEN=ghp_x\n"),
        ] {
            assert!(!public_key_only(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn malformed_input_is_classified_without_panics() {
        let c = catalog();
        let got = file(&c, "/home/ana/tls/truncated.key").unwrap();
        assert_eq!(got.hint.as_deref(), Some("PKCS#8 key, truncated"));
        let got = file(&c, "/home/bob/.docker/config.json").unwrap();
        assert_eq!(
            (got.lifetime, got.reason.as_str()),
            (Lifetime::Unknown, "not valid JSON")
        );
        let got = file(&c, "/home/bob/.kube/config").unwrap();
        assert_eq!(
            (got.lifetime, got.reason.as_str()),
            (Lifetime::Unknown, "not valid YAML")
        );

        let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let torn = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW".as_slice();
        for shown in [
            "/home/ana/.aws/credentials",
            "/home/ana/.kube/config",
            "/home/ana/.docker/config.json",
            "/home/ana/.cargo/credentials.toml",
            "/home/ana/.azure/msal_token_cache.json",
            "/home/ana/.config/gcloud/application_default_credentials.json",
            "/home/ana/.ssh/id_rsa",
            "/home/ana/src/.env",
            "/home/ana/.netrc",
            "/home/ana/.vault-token",
            "/run/secrets/x",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ] {
            let rule = rule(&c, shown).unwrap();
            for bytes in [
                b"".as_slice(),
                &garbage,
                torn,
                b"\xff\xfe\x00=\n[\n{",
                b"-----BEGIN ",
            ] {
                let case = Case {
                    rule,
                    age: DAY,
                    atomic_writer: false,
                    rotated: false,
                };
                // Whatever the verdict, it must not panic nor echo input.
                if let Some(got) = run(&c, case, bytes) {
                    assert!(got.hint.as_deref().is_none_or(|h| h.len() < 40), "{shown}");
                }
            }
        }
        // A torn OpenSSH key is still an SSH key.
        let rule = rule(&c, "/home/ana/.ssh/id_rsa").unwrap();
        let case = Case {
            rule,
            age: DAY,
            atomic_writer: false,
            rotated: false,
        };
        let got = run(&c, case, torn).unwrap();
        assert_eq!(got.secret_type, SecretType::SshPrivateKey);
        assert!(got.hint.unwrap().ends_with("truncated"));
    }

    fn jwt(claims: &str) -> Vec<u8> {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
        .into_bytes()
    }

    #[test]
    fn jwt_and_expiry_windows() {
        let c = catalog();
        let rule = rule(&c, "/run/secrets/api-token").unwrap();
        let at = |d: chrono::TimeDelta| (now() + d).timestamp();
        let cases = [
            (
                format!(r#"{{"exp":{}}}"#, at(chrono::TimeDelta::hours(1))),
                Lifetime::Dynamic,
            ),
            (
                format!(r#"{{"exp":{}}}"#, at(chrono::TimeDelta::days(400))),
                Lifetime::Static,
            ),
            (
                format!(r#"{{"exp":{}}}"#, at(chrono::TimeDelta::days(30))),
                Lifetime::Unknown,
            ),
            (
                format!(r#"{{"exp":{}}}"#, at(-chrono::TimeDelta::days(1))),
                Lifetime::Unknown,
            ),
            (r#"{"sub":"svc"}"#.to_string(), Lifetime::Static),
        ];
        for (claims, want) in cases {
            let case = Case {
                rule,
                age: DAY,
                atomic_writer: false,
                rotated: false,
            };
            let got = run(&c, case, &jwt(&claims)).unwrap();
            assert_eq!(got.lifetime, want, "{claims}: {}", got.reason);
            assert_eq!(got.hint.as_deref(), Some("JWT"));
        }
        // A kubeconfig token that is a JWT about to expire is dynamic.
        let kube = format!(
            "users:\n- name: u\n  user:\n    token: {}\n",
            String::from_utf8(jwt(&format!(
                r#"{{"exp":{}}}"#,
                at(chrono::TimeDelta::minutes(30))
            )))
            .unwrap()
        );
        let rule = self::rule(&c, "/root/.kube/config").unwrap();
        let case = Case {
            rule,
            age: DAY,
            atomic_writer: false,
            rotated: false,
        };
        let got = run(&c, case, kube.as_bytes()).unwrap();
        assert_eq!(got.lifetime, Lifetime::Dynamic, "{}", got.reason);
        assert!(got.expires.is_some());
    }

    #[test]
    fn evidence_order() {
        let c = catalog();
        let generic = rule(&c, "/run/secrets/opaque").unwrap();
        let base = |atomic_writer, rotated| Case {
            rule: generic,
            age: DAY,
            atomic_writer,
            rotated,
        };
        let opaque = b"just-some-opaque-value";
        assert_eq!(
            run(&c, base(false, false), opaque).unwrap().lifetime,
            Lifetime::Unknown
        );
        let got = run(&c, base(true, false), opaque).unwrap();
        assert_eq!(got.lifetime, Lifetime::Dynamic);
        assert!(got.reason.contains("..data"), "{}", got.reason);
        let got = run(&c, base(false, true), opaque).unwrap();
        assert!(got.reason.contains("rotated"), "{}", got.reason);
        // Content that says "long-term key" wins over the layout.
        let akia = b"AKIAPLANTED000000000";
        let got = run(&c, base(true, true), akia).unwrap();
        assert_eq!(
            (got.lifetime, got.hint.as_deref()),
            (Lifetime::Static, Some("AKIA…"))
        );
        // A key changed recently is not yet known to be static.
        let key = rule(&c, "/home/ana/tls/server.key").unwrap();
        let fresh = Case {
            rule: key,
            age: DAY,
            atomic_writer: false,
            rotated: false,
        };
        let got = run(&c, fresh, &fixture("/home/ana/tls/server.key")).unwrap();
        assert_eq!(got.lifetime, Lifetime::Unknown);
    }

    #[test]
    fn approx_rounds_down_to_one_unit() {
        assert_eq!(approx(Duration::from_secs(3 * 86_400 + 7_000)), "3d");
        assert_eq!(approx(Duration::from_secs(7_300)), "2h");
        assert_eq!(approx(Duration::from_secs(61)), "1m");
        assert_eq!(approx(Duration::ZERO), "0s");
    }
}
