//! TLS on the proxy's own listener (`--tls-cert-file`, `--tls-key-file`): the certificate chain
//! and its key from PEM files, read again on SIGHUP; files that do not read or do not match keep
//! the certificate as it was.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client connection: plain TCP, or TLS over it.
pub(crate) type MaybeTls = tokio_util::either::Either<TcpStream, TlsStream<TcpStream>>;

/// The certificate the listener presents: each handshake takes the current one.
#[derive(Debug)]
pub(crate) struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    /// Reads both files; an error names the flag and the file.
    pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        // ring's provider, as the library's (rustls 0.23.48 deprecates it for its lack of
        // post-quantum key exchange; aws-lc-rs would need a C and CMake build).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read(cert_file, key_file, &provider)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Reads both files again; on an error the certificate stays as it was.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let fresh = read(&self.cert_file, &self.key_file, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// What accepts TLS connections with this certificate (HTTP/2 or HTTP/1.1 by ALPN).
    pub(crate) fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS: {error}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn read(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let cert_error =
        |error: &dyn std::fmt::Display| format!("--tls-cert-file {}: {error}", cert_file.display());
    let key_error =
        |error: &dyn std::fmt::Display| format!("--tls-key-file {}: {error}", key_file.display());
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|error| cert_error(&error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| cert_error(&error))?;
    if chain.is_empty() {
        return Err(cert_error(&"no `BEGIN CERTIFICATE` block"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| key_error(&error))?;
    // Checks that the key is usable and belongs to the first certificate.
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|error| key_error(&error))?;
    Ok(Arc::new(certified))
}
