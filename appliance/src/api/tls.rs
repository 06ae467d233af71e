//! TLS of the gRPC API, the metrics endpoint and the Kafka listener: one certificate and key
//! (PEM) for all three, and
//! optionally a CA whose client certificates authenticate their holders on the gRPC API (as
//! `security::PrincipalRules` map them). Handshakes run concurrently, each within
//! [`HANDSHAKE_TIMEOUT`], so a peer that stalls one holds only its own connection slot, and
//! only until then.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ApiError;
use crate::security::certs;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `stream` once its TLS handshake completed within [`HANDSHAKE_TIMEOUT`]; none, logged for
/// the listener `what`, when it failed or stalled. Run in the connection's own task, so a peer
/// that stalls a handshake holds only its own slot.
pub async fn handshake<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
    what: &'static str,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(what, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(what, "TLS handshake timed out");
            None
        }
    }
}

/// The API's TLS files.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    /// Client certificates chaining to this CA authenticate (optional: tokens still do).
    pub client_ca: Option<&'a Path>,
}

/// TLS settings of the four endpoints.
#[derive(Clone)]
pub struct ApiTls {
    pub grpc: ServerTlsConfig,
    /// HTTP/1.1: the metrics endpoint and the web console.
    pub http: tokio_rustls::TlsAcceptor,
    /// Kafka clients (SASL_SSL) negotiate no application protocol.
    pub kafka: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiTls")
    }
}

impl ApiTls {
    /// Loads and checks the files: a bad one fails the start, saying which and why.
    pub fn load(files: TlsFiles<'_>) -> Result<Self, ApiError> {
        let chain = certs::read_chain(files.cert)?;
        let key = certs::read_key(files.key)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| certs::CertError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut grpc = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(files.cert)?, read(files.key)?))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = files.client_ca {
            certs::read_roots(ca)?;
            grpc = grpc
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .client_auth_optional(true);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let kafka = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| certs::unusable(files.cert, e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| certs::unusable(files.cert, e))?;
        let mut http = kafka.clone();
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            grpc,
            http: tokio_rustls::TlsAcceptor::from(Arc::new(http)),
            kafka: tokio_rustls::TlsAcceptor::from(Arc::new(kafka)),
        })
    }
}
