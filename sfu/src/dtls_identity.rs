//! The SFU's DTLS identity: the self-signed certificate (and key) every transport presents in
//! its DTLS handshake, whose SHA-256 fingerprint goes into each SDP (`a=fingerprint`).
//!
//! Made once when the SFU starts, on the thread that starts it, and shared by reference by
//! every worker (`Advertised::dtls`): str0m would otherwise generate a fresh key pair for every
//! `Rtc`, i.e. on the media thread for every join (~1 ms each, during which the worker forwards
//! nothing). Browsers authenticate the certificate only through the fingerprint signaling
//! carries, so one per process is as good as one per participant; it lives in memory only and
//! is new on each start.

use std::sync::Arc;

use str0m::config::DtlsCert;

/// The certificate of the SFU's transports; clones share it.
#[derive(Clone)]
pub struct DtlsIdentity(Arc<DtlsCert>);

impl DtlsIdentity {
    /// A fresh self-signed certificate from str0m's crypto backend.
    pub fn generate() -> Result<DtlsIdentity, String> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .map(|c| DtlsIdentity(Arc::new(c)))
            .ok_or_else(|| "the crypto backend cannot generate a DTLS certificate".to_owned())
    }

    /// The certificate, as str0m's config takes it (a copy of a few hundred bytes).
    pub fn cert(&self) -> DtlsCert {
        (*self.0).clone()
    }
}

impl Default for DtlsIdentity {
    /// A fresh certificate (tests and benchmarks build their workers' `Advertised` this way).
    fn default() -> Self {
        DtlsIdentity::generate().expect("str0m's crypto backend generates certificates")
    }
}

impl std::fmt::Debug for DtlsIdentity {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DtlsIdentity({} byte certificate)",
            self.0.certificate.len()
        )
    }
}
