//! The TLS acceptor for "turns:" (TURN over TLS over TCP): rustls with the aws-lc-rs provider
//! the workspace already builds for str0m, certificates from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TurnError;

/// Loads `cert` (a PEM chain) and `key` (PEM) into an acceptor for TLS 1.2 and 1.3.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TurnError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| TurnError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(&cert.display().to_string(), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&cert.display().to_string(), &e))?;
    if certs.is_empty() {
        return Err(TurnError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(&key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate and key", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
