//! Kubernetes metadata of a pod without an API server: from the kubelet's
//! pod directory (`<kubelet_root>/pods/<uid>/…`), the claims of the pod's
//! service-account token, and the pod log directory
//! (`<pod_log_root>/<namespace>_<pod>_<uid>/<container>/`).
//!
//! The token is decoded to read its claims and nothing else: it is never
//! verified (the kubelet wrote it; it is as trustworthy as the host), and
//! neither it nor its claims' raw text ever reach an error, a log line or an
//! event. Names taken from it are checked to be Kubernetes names before use.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde::Deserialize;

/// A projected token is about 1 KiB; anything far larger is not one.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Token volumes looked at per pod.
const MAX_TOKEN_VOLUMES: usize = 32;

/// What the node knows of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub service_account: Option<String>,
    /// Container names from the pod log directory, sorted.
    pub containers: Vec<String>,
}

/// The service-account facts of a token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub namespace: String,
    pub service_account: String,
    /// Only bound (projected) tokens name their pod.
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
}

/// Why a token was not usable. Carries nothing of the token itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a JWT (expected three dot-separated parts)")]
    NotJwt,
    #[error("JWT payload is not base64url")]
    Base64,
    #[error("JWT payload is not a JSON object of the expected shape")]
    Json,
    #[error("JWT claims name no Kubernetes service account")]
    NoServiceAccount,
}

/// Read `<kubelet_root>/pods/<uid>` and `<pod_log_root>/*_<uid>/` for the
/// pod `uid` (a checked pod uid, so it cannot climb out of either root).
pub fn pod_meta(kubelet_root: &Path, pod_log_root: &Path, uid: &str) -> PodMeta {
    let claims = pod_token_claims(&kubelet_root.join("pods").join(uid), uid);
    let logs = pod_log_dir(pod_log_root, uid);
    let (log_ns, log_pod, containers) = match logs {
        Some((ns, pod, dir)) => (Some(ns), Some(pod), list_dirs(&dir)),
        None => (None, None, Vec::new()),
    };
    match claims {
        Some(c) => PodMeta {
            namespace: Some(c.namespace),
            pod: c.pod.or(log_pod),
            service_account: Some(c.service_account),
            containers,
        },
        None => PodMeta {
            namespace: log_ns,
            pod: log_pod,
            service_account: None,
            containers,
        },
    }
}

/// The claims of the first readable service-account token of the pod,
/// projected volumes first (legacy secret-volume tokens after), skipping
/// any whose claims name another pod.
fn pod_token_claims(pod_dir: &Path, uid: &str) -> Option<TokenClaims> {
    let volumes = pod_dir.join("volumes");
    ["kubernetes.io~projected", "kubernetes.io~secret"]
        .iter()
        .flat_map(|kind| {
            list_dirs(&volumes.join(kind))
                .into_iter()
                .map(move |v| (kind, v))
        })
        .take(MAX_TOKEN_VOLUMES)
        .find_map(|(kind, volume)| {
            let token = read_bounded(&volumes.join(kind).join(volume).join("token"))?;
            let claims = decode_claims(&token).ok()?;
            match claims.pod_uid.as_deref() {
                Some(other) if other != uid => None,
                _ => Some(claims),
            }
        })
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_TOKEN_BYTES)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// Projected tokens carry a `kubernetes.io` object; legacy secret tokens
/// flat `kubernetes.io/serviceaccount/…` keys.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<BoundClaims>,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    legacy_namespace: Option<String>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    legacy_service_account: Option<String>,
}

#[derive(Deserialize)]
struct BoundClaims {
    namespace: Option<String>,
    pod: Option<NamedRef>,
    serviceaccount: Option<NamedRef>,
}

#[derive(Deserialize)]
struct NamedRef {
    name: Option<String>,
    uid: Option<String>,
}

/// The service-account claims of a JWT, payload decoded, never verified.
pub fn decode_claims(token: &[u8]) -> Result<TokenClaims, TokenError> {
    let token = token.trim_ascii();
    let mut parts = token.split(|&b| b == b'.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::NotJwt);
    };
    // base64url without padding is the JWT form; tolerate padding anyway.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let json = engine.decode(payload).map_err(|_| TokenError::Base64)?;
    let raw: RawClaims = serde_json::from_slice(&json).map_err(|_| TokenError::Json)?;
    let (namespace, service_account, pod, pod_uid) = match raw.kubernetes {
        Some(k) => (
            k.namespace,
            k.serviceaccount.and_then(|s| s.name),
            k.pod.as_ref().and_then(|p| p.name.clone()),
            k.pod.and_then(|p| p.uid),
        ),
        None => (raw.legacy_namespace, raw.legacy_service_account, None, None),
    };
    match (namespace, service_account) {
        (Some(ns), Some(sa)) if is_k8s_name(&ns) && is_k8s_name(&sa) => Ok(TokenClaims {
            namespace: ns,
            service_account: sa,
            pod: pod.filter(|p| is_k8s_name(p)),
            pod_uid,
        }),
        _ => Err(TokenError::NoServiceAccount),
    }
}

/// A DNS-1123 subdomain, which namespace, pod, service-account and
/// container names all are: so no `/`, no `_`, nothing to escape.
pub fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `<root>/<namespace>_<pod>_<uid>`: names cannot hold `_`, so the split
/// is unambiguous.
fn pod_log_dir(root: &Path, uid: &str) -> Option<(String, String, PathBuf)> {
    let suffix = format!("_{uid}");
    list_dirs(root).into_iter().find_map(|name| {
        let (ns, pod) = name.strip_suffix(&suffix)?.split_once('_')?;
        (is_k8s_name(ns) && is_k8s_name(pod))
            .then(|| (ns.to_string(), pod.to_string(), root.join(&name)))
    })
}

/// Names of the subdirectories of `dir`, sorted; empty when unreadable.
fn list_dirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Which of the pod's containers a process runs in. One container: that
/// one. Several: the kubelet bind-mounts `pods/<uid>/containers/<name>/…`
/// as the container's termination log, so the process's mount roots name
/// it.
pub fn container_name<'a>(
    containers: &[String],
    pod_uid: &str,
    mount_roots: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    if let [only] = containers {
        return Some(only.clone());
    }
    let marker = format!("pods/{pod_uid}/containers/");
    mount_roots.into_iter().find_map(|root| {
        let rest = &root[root.find(&marker)? + marker.len()..];
        let name = rest.split('/').next()?;
        containers.iter().find(|c| *c == name).cloned()
    })
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const UID: &str = "7d3c4a5e-1b2f-4c6d-8e9f-0a1b2c3d4e5f";

    fn jwt(claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k1"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{payload}.c2lnbmF0dXJlLW5vdC1jaGVja2Vk")
    }

    fn bound(ns: &str, pod: &str, uid: &str, sa: &str) -> serde_json::Value {
        serde_json::json!({
            "aud": ["https://kubernetes.default.svc"],
            "exp": 1_900_000_000u64,
            "iss": "https://kubernetes.default.svc",
            "kubernetes.io": {
                "namespace": ns,
                "node": {"name": "node-1", "uid": "0b1c"},
                "pod": {"name": pod, "uid": uid},
                "serviceaccount": {"name": sa, "uid": "5e6f"},
                "warnafter": 1_800_000_000u64
            },
            "sub": format!("system:serviceaccount:{ns}:{sa}")
        })
    }

    #[test]
    fn bound_token_claims() {
        let c = decode_claims(jwt(&bound("payments", "api-7f9c", UID, "api")).as_bytes()).unwrap();
        assert_eq!(
            c,
            TokenClaims {
                namespace: "payments".into(),
                service_account: "api".into(),
                pod: Some("api-7f9c".into()),
                pod_uid: Some(UID.into()),
            }
        );
        // A trailing newline, as a file may have.
        let with_nl = format!("{}\n", jwt(&bound("a", "b", UID, "c")));
        assert!(decode_claims(with_nl.as_bytes()).is_ok());
    }

    #[test]
    fn legacy_token_claims() {
        let c = decode_claims(
            jwt(&serde_json::json!({
                "iss": "kubernetes/serviceaccount",
                "kubernetes.io/serviceaccount/namespace": "kube-system",
                "kubernetes.io/serviceaccount/secret.name": "builder-token-x1",
                "kubernetes.io/serviceaccount/service-account.name": "builder",
                "sub": "system:serviceaccount:kube-system:builder"
            }))
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.service_account.as_str()),
            ("kube-system", "builder")
        );
        assert_eq!(c.pod, None);
    }

    #[test]
    fn bad_tokens_are_typed_errors_without_content() {
        let secretish = "eyJzZWNyZXQiOiJ2YWx1ZSJ9";
        let cases: Vec<(String, TokenError)> = vec![
            ("".into(), TokenError::NotJwt),
            ("only.two".into(), TokenError::NotJwt),
            ("a.b.c.d".into(), TokenError::NotJwt),
            (format!("h.{secretish}!.s"), TokenError::Base64),
            (
                format!("h.{}.s", URL_SAFE_NO_PAD.encode("[1,2]")),
                TokenError::Json,
            ),
            (format!("h.{secretish}.s"), TokenError::NoServiceAccount),
            (
                jwt(&bound("Bad_NS", "p", UID, "sa")),
                TokenError::NoServiceAccount,
            ),
            (
                jwt(&bound("ns", "p", UID, "../sa")),
                TokenError::NoServiceAccount,
            ),
        ];
        for (token, want) in cases {
            let err = decode_claims(token.as_bytes()).unwrap_err();
            assert_eq!(err, want, "{token}");
            assert!(!err.to_string().contains(secretish));
        }
    }

    #[test]
    fn names() {
        for ok in ["default", "kube-system", "a", "api.v2", "x1"] {
            assert!(is_k8s_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "..", &"a".repeat(254)] {
            assert!(!is_k8s_name(bad), "{bad}");
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn pod_meta_from_kubelet_and_log_dirs() {
        let kubelet = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let vols = kubelet.path().join("pods").join(UID).join("volumes");
        // A token for another pod (a copied volume) and a garbled one are skipped.
        write(
            &vols.join("kubernetes.io~projected/a-other/token"),
            &jwt(&bound(
                "evil",
                "x",
                "11111111-2222-3333-4444-555555555555",
                "root",
            )),
        );
        write(
            &vols.join("kubernetes.io~projected/b-garbled/token"),
            "garbage",
        );
        write(
            &vols.join("kubernetes.io~projected/kube-api-access-q8x2k/token"),
            &jwt(&bound("payments", "api-7f9c", UID, "api")),
        );
        write(
            &vols.join("kubernetes.io~projected/kube-api-access-q8x2k/ca.crt"),
            "",
        );
        for c in ["api", "sidecar"] {
            std::fs::create_dir_all(logs.path().join(format!("payments_api-7f9c_{UID}/{c}")))
                .unwrap();
        }
        std::fs::create_dir_all(
            logs.path()
                .join("other_pod_11111111-2222-3333-4444-555555555555/x"),
        )
        .unwrap();
        let meta = pod_meta(kubelet.path(), logs.path(), UID);
        assert_eq!(
            meta,
            PodMeta {
                namespace: Some("payments".into()),
                pod: Some("api-7f9c".into()),
                service_account: Some("api".into()),
                containers: vec!["api".into(), "sidecar".into()],
            }
        );
    }

    #[test]
    fn pod_meta_without_a_token_uses_the_log_dir() {
        let kubelet = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(logs.path().join(format!("batch_job-1_{UID}/worker"))).unwrap();
        let meta = pod_meta(kubelet.path(), logs.path(), UID);
        assert_eq!(meta.namespace.as_deref(), Some("batch"));
        assert_eq!(meta.pod.as_deref(), Some("job-1"));
        assert_eq!(meta.service_account, None);
        assert_eq!(meta.containers, ["worker"]);
        assert_eq!(
            pod_meta(kubelet.path(), logs.path(), "none"),
            PodMeta::default()
        );
    }

    #[test]
    fn container_names() {
        let one = vec!["api".to_string()];
        assert_eq!(container_name(&one, UID, []).as_deref(), Some("api"));
        let two = vec!["api".to_string(), "sidecar".to_string()];
        assert_eq!(container_name(&two, UID, ["/", "/etc/hosts"]), None);
        let roots = [
            "/".to_string(),
            format!("/var/lib/kubelet/pods/{UID}/etc-hosts"),
            format!("/var/lib/kubelet/pods/{UID}/containers/sidecar/5f2a9c1e"),
        ];
        assert_eq!(
            container_name(&two, UID, roots.iter().map(String::as_str)).as_deref(),
            Some("sidecar")
        );
        // A mount naming a container the pod does not have is not believed.
        let odd = [format!("/pods/{UID}/containers/ghost/1")];
        assert_eq!(
            container_name(&two, UID, odd.iter().map(String::as_str)),
            None
        );
    }
}
