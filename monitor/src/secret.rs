//! What a watched file is: its type, from where it lives, and a stable id.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The design's secret types, as they appear in `secret.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretType {
    AwsCredentials,
    SshPrivateKey,
    Kubeconfig,
    DockerAuth,
    Netrc,
    Pgpass,
    GitCredentials,
    K8sSaToken,
    EnvFile,
    PrivateKey,
    Generic,
}

/// Classify by location and name alone; content-based classification is the
/// inventory's job.
pub fn classify_path(path: &Path) -> SecretType {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    match (parent, name) {
        (".aws", "credentials") => SecretType::AwsCredentials,
        (".ssh", n) if n.starts_with("id_") && !n.ends_with(".pub") => SecretType::SshPrivateKey,
        (".kube", "config") => SecretType::Kubeconfig,
        (".docker", "config.json") => SecretType::DockerAuth,
        (_, ".netrc") => SecretType::Netrc,
        (_, ".pgpass") => SecretType::Pgpass,
        (_, ".git-credentials") => SecretType::GitCredentials,
        (_, "token") if path.components().any(|c| c.as_os_str() == "serviceaccount") => {
            SecretType::K8sSaToken
        }
        (_, ".env") => SecretType::EnvFile,
        (_, n) if n.ends_with(".pem") || n.ends_with(".key") => SecretType::PrivateKey,
        _ => SecretType::Generic,
    }
}

/// A stable id for the secret at `path`: the same path keeps its id across
/// restarts and rotations (a rotated file is the same secret, new value).
pub fn secret_id(path: &Path) -> String {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    format!("sec-{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_builtin_catalog() {
        let cases = [
            ("/home/ana/.aws/credentials", SecretType::AwsCredentials),
            ("/root/.ssh/id_ed25519", SecretType::SshPrivateKey),
            ("/root/.ssh/id_rsa", SecretType::SshPrivateKey),
            ("/root/.ssh/id_ed25519.pub", SecretType::Generic),
            ("/home/ana/.kube/config", SecretType::Kubeconfig),
            ("/home/ana/.docker/config.json", SecretType::DockerAuth),
            ("/home/ana/.netrc", SecretType::Netrc),
            ("/var/lib/postgresql/.pgpass", SecretType::Pgpass),
            ("/home/ana/.git-credentials", SecretType::GitCredentials),
            (
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
                SecretType::K8sSaToken,
            ),
            ("/srv/app/.env", SecretType::EnvFile),
            ("/etc/ssl/private/server.key", SecretType::PrivateKey),
            ("/etc/ssl/private/server.pem", SecretType::PrivateKey),
            ("/srv/app/api-token.txt", SecretType::Generic),
            ("/", SecretType::Generic),
        ];
        for (path, want) in cases {
            assert_eq!(classify_path(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = secret_id(Path::new("/root/.aws/credentials"));
        assert_eq!(a, secret_id(Path::new("/root/.aws/credentials")));
        assert_ne!(a, secret_id(Path::new("/home/ana/.aws/credentials")));
        assert!(a.starts_with("sec-") && a.len() == 4 + 16);
    }
}
