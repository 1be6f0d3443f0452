//! The vocabulary of secrets shared by the inventory and the events: what
//! a secret is, how long it lives, and its stable id.

use std::{fmt, path::Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The design's secret types, as they appear in `secret.type` and in the
/// catalog's `type = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretType {
    AwsCredentials,
    GcpCredentials,
    AzureTokenCache,
    SshPrivateKey,
    Kubeconfig,
    DockerAuth,
    Netrc,
    Pgpass,
    MysqlCnf,
    GitCredentials,
    Npmrc,
    Pypirc,
    CargoCredentials,
    TerraformCredentials,
    VaultToken,
    K8sSaToken,
    SpiffeSvid,
    EnvFile,
    PrivateKey,
    Pkcs12,
    Generic,
}

impl SecretType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsCredentials => "aws_credentials",
            Self::GcpCredentials => "gcp_credentials",
            Self::AzureTokenCache => "azure_token_cache",
            Self::SshPrivateKey => "ssh_private_key",
            Self::Kubeconfig => "kubeconfig",
            Self::DockerAuth => "docker_auth",
            Self::Netrc => "netrc",
            Self::Pgpass => "pgpass",
            Self::MysqlCnf => "mysql_cnf",
            Self::GitCredentials => "git_credentials",
            Self::Npmrc => "npmrc",
            Self::Pypirc => "pypirc",
            Self::CargoCredentials => "cargo_credentials",
            Self::TerraformCredentials => "terraform_credentials",
            Self::VaultToken => "vault_token",
            Self::K8sSaToken => "k8s_sa_token",
            Self::SpiffeSvid => "spiffe_svid",
            Self::EnvFile => "env_file",
            Self::PrivateKey => "private_key",
            Self::Pkcs12 => "pkcs12",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for SecretType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a secret is long-lived (`static`), rotated or short-lived by
/// construction (`dynamic`), or neither is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    Static,
    Dynamic,
    Unknown,
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Static => "static",
            Self::Dynamic => "dynamic",
            Self::Unknown => "unknown",
        })
    }
}

/// A stable id for the secret at `path`: the same path keeps its id across
/// restarts and rotations (a rotated file is the same secret, new value).
pub fn secret_id(path: &Path) -> String {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    format!("sec-{}", hex::encode(&digest[..8]))
}

/// The id of a file known only by its device and inode, when its path is
/// not known whole (the kernel cut it): two files never share it, as two
/// cut paths may.
pub fn file_secret_id(dev: u64, ino: u64) -> String {
    let digest = Sha256::digest(format!("file:{dev}:{ino}"));
    format!("sec-{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde() {
        use SecretType::*;
        for t in [
            AwsCredentials,
            GcpCredentials,
            AzureTokenCache,
            SshPrivateKey,
            Kubeconfig,
            DockerAuth,
            Netrc,
            Pgpass,
            MysqlCnf,
            GitCredentials,
            Npmrc,
            Pypirc,
            CargoCredentials,
            TerraformCredentials,
            VaultToken,
            K8sSaToken,
            SpiffeSvid,
            EnvFile,
            PrivateKey,
            Pkcs12,
            Generic,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for l in [Lifetime::Static, Lifetime::Dynamic, Lifetime::Unknown] {
            assert_eq!(serde_json::to_value(l).unwrap(), l.to_string());
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = secret_id(Path::new("/root/.aws/credentials"));
        assert_eq!(a, secret_id(Path::new("/root/.aws/credentials")));
        assert_ne!(a, secret_id(Path::new("/home/ana/.aws/credentials")));
        assert!(a.starts_with("sec-") && a.len() == 4 + 16);
        let f = file_secret_id(1, 2);
        assert_eq!(f, file_secret_id(1, 2));
        assert_ne!(f, file_secret_id(1, 3));
        assert_ne!(f, file_secret_id(2, 2));
        assert!(f.starts_with("sec-") && f.len() == 4 + 16);
    }
}
