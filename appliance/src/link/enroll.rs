//! Enrollment of an edge by join token (`security::join`), over the hub's link endpoint.
//!
//! ```text
//! edge: key + certificate request made here, the join token
//!   --QUIC, no client certificate; the hub's certificate must be the one the token pins-->
//! hub:  EnrollRequest -> token redeemed (once, unexpired) -> certificate for the token's
//!       edge, signed by the link CA -> EnrollResponse (certificate, CA) | Refusal
//! edge: writes EDGE.pem, EDGE.key (0600) and ca.pem: the files of `link create`
//! ```
//!
//! A connection without a client certificate gets this exchange and nothing else: one
//! request of bounded size within [`EXCHANGE_TIMEOUT`], then the connection is closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use appliance_proto::link::v1 as wire;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::tls::{self, ALPN, DEFAULT_IDLE_TIMEOUT};
use super::{EdgeId, LinkError, SessionError, frame};
use crate::security::certs::{self, CaFiles};
use crate::security::join::{JoinToken, JoinTokens};

/// How long the whole exchange may take, on either side.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request: a token and a certificate request.
const REQUEST_LIMIT: usize = 16 * 1024;
/// The largest answer: a certificate and the CA.
const RESPONSE_LIMIT: usize = 64 * 1024;

/// The hub's side: answers one enrollment on a connection that came without a certificate.
/// The edge enrolled, or why it was refused; an error when the exchange itself failed.
pub async fn answer(
    connection: &quinn::Connection,
    tokens: &JoinTokens,
    ca: Option<&CaFiles>,
) -> Result<Result<EdgeId, String>, SessionError> {
    let exchange = async {
        let (mut send, mut receive) = connection.accept_bi().await?;
        let request = frame::read::<wire::EnrollRequest>(&mut receive, REQUEST_LIMIT)
            .await?
            .ok_or_else(|| SessionError::Protocol("no enrollment request".into()))?;
        let outcome = enroll(&request, tokens, ca).await;
        let response = match &outcome {
            Ok((_, certificate, ca_pem)) => wire::EnrollResponse {
                certificate_pem: certificate.clone(),
                ca_pem: ca_pem.clone(),
                refusal: String::new(),
            },
            Err(refusal) => wire::EnrollResponse {
                refusal: refusal.clone(),
                ..Default::default()
            },
        };
        send.write_all(&frame::encode(&response)).await?;
        send.finish()
            .map_err(|_| SessionError::Protocol("the edge left".into()))?;
        let _ = send.stopped().await;
        Ok(outcome.map(|(edge, _, _)| edge))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| SessionError::Protocol("the enrollment took too long".into()))?
}

/// The edge the token names, its new certificate and the CA (PEM), or why not.
async fn enroll(
    request: &wire::EnrollRequest,
    tokens: &JoinTokens,
    ca: Option<&CaFiles>,
) -> Result<(EdgeId, String, String), String> {
    let ca = ca.ok_or("this hub does not enroll edges: it runs without --link-ca-key")?;
    let ca_pem = ca.cert_pem().map_err(|e| e.to_string())?;
    let token = JoinToken::parse(&request.token).map_err(|e| e.to_string())?;
    let edge = tokens.redeem(&token).await.map_err(|e| e.to_string())?;
    let edge = EdgeId::new(&edge).map_err(|e| e.to_string())?;
    let certificate = certs::sign_edge_request(ca, edge.as_str(), &request.certificate_request_der)
        .map_err(|e| format!("the certificate request: {e}"))?;
    Ok((edge, certificate, ca_pem))
}

/// What an enrollment wrote.
#[derive(Debug)]
pub struct Enrolled {
    pub edge: EdgeId,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The edge's side: enrolls with the hub at `hub` (HOST:PORT) by `token`, and writes the
/// certificate, its key and the CA into `dir`.
pub async fn enroll_with(hub: &str, token: &str, dir: &Path) -> Result<Enrolled, LinkError> {
    let token = JoinToken::parse(token)?;
    let failed = |reason: String| LinkError::NotEnrolled {
        hub: hub.to_owned(),
        reason,
    };
    let (key_pem, request) = certs::edge_request()?;
    let endpoint = pinned_endpoint(token.hub_pin)?;
    let exchange = async {
        let addr = tls::resolve(hub).await?;
        let connection = endpoint.connect(addr, "appliance-hub")?.await?;
        let (mut send, mut receive) = connection.open_bi().await?;
        let request = wire::EnrollRequest {
            token: token.to_string(),
            certificate_request_der: request.into(),
        };
        send.write_all(&frame::encode(&request)).await?;
        let response = frame::read::<wire::EnrollResponse>(&mut receive, RESPONSE_LIMIT)
            .await?
            .ok_or_else(|| SessionError::Protocol("the hub sent no answer".into()))?;
        connection.close(0u32.into(), b"enrolled");
        Ok::<_, SessionError>(response)
    };
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| failed("the hub did not answer in time".into()))?
        .map_err(|e| failed(super::describe(&e)))?;
    endpoint.wait_idle().await;
    if !response.refusal.is_empty() {
        return Err(failed(response.refusal));
    }
    let edge = tls::edge_of_certificate_pem(&response.certificate_pem)?;
    let written = certs::write_enrolled(
        dir,
        edge.as_str(),
        &response.certificate_pem,
        &key_pem,
        &response.ca_pem,
    )?;
    Ok(Enrolled {
        edge,
        ca: written.ca,
        cert: written.cert,
        key: written.key,
    })
}

/// A client endpoint without a certificate that trusts exactly the hub certificate pinned.
pub(super) fn pinned_endpoint(pin: [u8; 32]) -> Result<quinn::Endpoint, LinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedHub {
        pin,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| pinning_error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).map_err(|e| pinning_error(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(tls::transport(DEFAULT_IDLE_TIMEOUT, tls::Congestion::Bbr)?);
    let any: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint =
        quinn::Endpoint::client(any).map_err(|source| LinkError::Bind { addr: any, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

fn pinning_error(reason: String) -> LinkError {
    LinkError::Certificate {
        what: "the enrollment's TLS".into(),
        reason,
    }
}

/// Trusts the one certificate whose SHA-256 the join token carries, and checks that the hub
/// holds its key (the handshake's signature) as any verifier does.
#[derive(Debug)]
struct PinnedHub {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedHub {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the hub's certificate is not the one the join token names: wrong hub, or the \
                 hub's certificate changed since the token was made"
                    .into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SHA-256 of a certificate file's first certificate: what a join token pins.
pub fn pin_of(cert: &Path) -> Result<[u8; 32], LinkError> {
    let chain = certs::read_chain(cert)?;
    Ok(Sha256::digest(chain[0].as_ref()).into())
}
