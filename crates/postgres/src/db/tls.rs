//! rustls client configurations for libpq's `sslmode` semantics.
//!
//! - `require` (and `prefer` when the server offers TLS): encrypted, certificate not checked,
//!   unless `sslrootcert` is given, in which case the chain is checked as for `verify-ca`
//!   (libpq does the same when a root file exists);
//! - `verify-ca`: the chain must lead to a trusted root; the host name is not checked;
//! - `verify-full`: the chain and the host name are checked.
//!
//! The SQL connections use these through tokio-postgres-rustls, the replication connection
//! (see `wal::source`) through tokio-rustls: the same configuration for both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::conninfo::{SslMode, TlsOptions};
use crate::error::{Error, Result};

/// `sslrootcert=system`: libpq's word for the platform's trusted roots (here: the bundled
/// Mozilla set, as the container images this runs in often have no CA bundle).
pub const SYSTEM_ROOTS: &str = "system";

impl TlsOptions {
    /// The mode in force: `require` with a root file checks the chain, as in libpq.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    /// The root file the verifying modes use: `sslrootcert`, else libpq's default
    /// `~/.postgresql/root.crt`. An error says what to set when there is none.
    pub fn root_cert_path(&self) -> Result<PathBuf> {
        if let Some(path) = &self.root_cert {
            return Ok(path.clone());
        }
        let default = std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".postgresql/root.crt"))
            .filter(|p| p.exists());
        default.ok_or_else(|| {
            Error::invalid(format!(
                "sslmode={} needs the certificate of the CA that signed the server's \
                 certificate: add sslrootcert=/path/to/ca.pem to the database URL (or \
                 sslrootcert=system for the public web roots), or put it in \
                 ~/.postgresql/root.crt",
                self.mode.as_str()
            ))
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The client configuration for `options`; `None` for `disable`.
pub fn client_config(options: &TlsOptions) -> Result<Option<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(format!("configuring TLS: {e}")))?;
    let config = match options.effective_mode() {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let roots = root_store(&options.root_cert_path()?)?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::invalid(format!("configuring TLS verification: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => builder
            .with_root_certificates(root_store(&options.root_cert_path()?)?)
            .with_no_client_auth(),
    };
    Ok(Some(config))
}

fn root_store(path: &Path) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if path == Path::new(SYSTEM_ROOTS) {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let what = || format!("reading sslrootcert {}", path.display());
    let pem = std::fs::read(path).map_err(|e| Error::io(what(), e))?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| Error::invalid(format!("{}: not PEM: {e}", what())))?;
        store
            .add(cert)
            .map_err(|e| Error::invalid(format!("{}: a certificate is unusable: {e}", what())))?;
    }
    if store.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            what()
        )));
    }
    Ok(store)
}

/// `require`: encryption against passive listeners; the handshake signatures are still
/// checked, the identity is not (that is what verify-full is for).
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full webpki check, minus the host name (checked last, so a name
/// error means the chain, validity period and usage already passed).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_need_roots_and_say_where_to_put_them() {
        let options = TlsOptions {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let err = client_config(&options).unwrap_err().to_string();
        assert!(
            err.contains("reading sslrootcert /nonexistent/ca.pem"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let options = TlsOptions {
            mode: SslMode::VerifyCa,
            root_cert: Some(empty),
        };
        let err = client_config(&options).unwrap_err().to_string();
        assert!(err.contains("no certificate in it"), "{err}");

        let system = TlsOptions {
            mode: SslMode::VerifyFull,
            root_cert: Some(SYSTEM_ROOTS.into()),
        };
        assert!(client_config(&system).unwrap().is_some());
        assert!(
            client_config(&TlsOptions {
                mode: SslMode::Disable,
                root_cert: None
            })
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn require_with_a_root_file_checks_the_chain() {
        let options = TlsOptions {
            mode: SslMode::Require,
            root_cert: Some("/etc/ca.pem".into()),
        };
        assert_eq!(options.effective_mode(), SslMode::VerifyCa);
        let options = TlsOptions {
            mode: SslMode::Require,
            root_cert: None,
        };
        assert_eq!(options.effective_mode(), SslMode::Require);
    }
}
