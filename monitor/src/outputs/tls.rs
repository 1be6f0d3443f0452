//! TLS for the network outputs, with rustls: the system's roots or a
//! configured CA, and an optional client certificate for mutual TLS.

use std::{path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::{OutputError, config::TlsSettings};

fn bad(path: &Path, why: impl std::fmt::Display) -> OutputError {
    OutputError::Tls(format!("{}: {why}", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, OutputError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, OutputError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad(path, format!("no usable private key: {e}")))
}

/// The roots that verify the receiver: `ca` alone when given, else the
/// system's.
fn roots(settings: &TlsSettings) -> Result<Vec<CertificateDer<'static>>, OutputError> {
    if let Some(ca) = &settings.ca {
        return certificates(ca);
    }
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(OutputError::Tls(format!(
            "no system CA certificates found ({}); install ca-certificates or set `ca`",
            found
                .errors
                .first()
                .map(ToString::to_string)
                .unwrap_or_else(|| "none".into())
        )));
    }
    Ok(found.certs)
}

/// A rustls client configuration, for syslog over TLS.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, OutputError> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(roots(settings)?);
    if added == 0 {
        return Err(OutputError::Tls("no usable CA certificate".into()));
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(store);
    let config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| bad(cert, e))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The same, as ureq wants it, for HTTPS.
pub fn ureq_config(settings: &TlsSettings) -> Result<ureq::tls::TlsConfig, OutputError> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts};
    let roots: Vec<Certificate<'static>> = roots(settings)?
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let mut builder = ureq::tls::TlsConfig::builder().root_certs(RootCerts::new_with_certs(&roots));
    if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
        let chain: Vec<Certificate<'static>> = certificates(cert)?
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let pem = zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| bad(key, e))?);
        let key = PrivateKey::from_pem(&pem)
            .map_err(|e| bad(key, format!("no usable private key: {e}")))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}
