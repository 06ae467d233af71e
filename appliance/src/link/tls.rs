//! QUIC endpoints of a link, with mutual TLS 1.3 over rustls (ring provider) and the link
//! protocol's version in ALPN.
//!
//! The hub accepts only clients whose certificate chains to the link CA; the edge accepts only
//! a hub whose certificate chains to it and names the address it dials. Which edge is speaking
//! is what its certificate names ([`edge_of`]): an edge can only ever claim its own id.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;

use super::{EdgeId, LinkError, SessionError};
use crate::security::certs;

/// The link protocol's version, as ALPN names it: peers that speak another one do not connect.
pub const ALPN: &[u8] = b"appliance-link/1";

/// Where the PEM files of one side of a link are.
#[derive(Debug, Clone)]
pub struct TlsFiles<'a> {
    /// The CA the peer's certificate must chain to.
    pub ca: &'a Path,
    /// This side's certificate and its key.
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// How long a link connection may hear nothing from its peer before it is given up (and the
/// edge dials again); keep-alives go at a third of it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Enough for every partition of many topics, each on its own stream.
const MAX_PARTITION_STREAMS: u32 = 100_000;

/// How a sender paces what it sends (a sender-side choice: the edge's for upstream, the
/// hub's for downstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Model-based: keeps its rate through random loss. A 2% random loss keeps loss-based
    /// control well under 1 MB/s; BBR moves tens of MB/s. The default: edge uplinks are lossy.
    #[default]
    Bbr,
    /// Loss-based (quinn's default): faster than BBR on a clean, fast network (a LAN, a
    /// datacenter), where it wastes less CPU pacing.
    Cubic,
}

impl Congestion {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bbr => "bbr",
            Self::Cubic => "cubic",
        }
    }
}

/// QUIC transport settings of both sides: the congestion control, windows large enough for
/// long fat links, keep-alives so a NAT mapping stays open.
pub(super) fn transport(
    idle_timeout: Duration,
    congestion: Congestion,
) -> Result<Arc<quinn::TransportConfig>, LinkError> {
    let mut transport = quinn::TransportConfig::default();
    match congestion {
        Congestion::Bbr => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
        Congestion::Cubic => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
    };
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(idle_timeout).map_err(
            |_| LinkError::Certificate {
                what: "idle timeout".into(),
                reason: format!("{idle_timeout:?} is too long"),
            },
        )?))
        .keep_alive_interval(Some(idle_timeout / 3))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_PARTITION_STREAMS))
        .stream_receive_window(quinn::VarInt::from_u32(16 << 20))
        .receive_window(quinn::VarInt::from_u32(256 << 20))
        .send_window(256 << 20);
    Ok(Arc::new(transport))
}

/// The hub's endpoint, listening on `addr` (UDP) for edges with certificates of the CA.
pub fn hub_endpoint(
    addr: SocketAddr,
    files: &TlsFiles<'_>,
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, LinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A connection without a certificate may only enroll (`enroll.rs`): the hub answers it
    // nothing else.
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(certs::read_roots(files.ca)?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls_error(files.ca, e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(files.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs::read_chain(files.cert)?, certs::read_key(files.key)?)
        .map_err(|e| tls_error(files.cert, e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| tls_error(files.cert, e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(idle_timeout, Congestion::Bbr)?);
    quinn::Endpoint::server(config, addr).map_err(|source| LinkError::Bind { addr, source })
}

/// An edge's endpoint: dials hubs whose certificates chain to the CA, presenting its own.
pub fn edge_endpoint(
    files: &TlsFiles<'_>,
    idle_timeout: Duration,
    congestion: Congestion,
) -> Result<quinn::Endpoint, LinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(files.cert, e))?
        .with_root_certificates(certs::read_roots(files.ca)?)
        .with_client_auth_cert(certs::read_chain(files.cert)?, certs::read_key(files.key)?)
        .map_err(|e| tls_error(files.cert, e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| tls_error(files.cert, e))?;
    let any: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint =
        quinn::Endpoint::client(any).map_err(|source| LinkError::Bind { addr: any, source })?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(idle_timeout, congestion)?);
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The edge a connection accepted by the hub belongs to: the id its verified client
/// certificate names (its only DNS name).
pub fn edge_of(connection: &quinn::Connection) -> Result<EdgeId, LinkError> {
    let refused = |reason: &str| LinkError::Refused {
        peer: connection.remote_address(),
        reason: reason.to_owned(),
    };
    let identity = connection
        .peer_identity()
        .ok_or_else(|| refused("it presented no certificate"))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| refused("its certificate is not X.509"))?;
    let leaf = chain
        .first()
        .ok_or_else(|| refused("it presented no certificate"))?;
    edge_named_by(leaf).map_err(refused)
}

/// When the peer's certificate was made (Unix seconds), if it can be told.
pub fn issued_unix_s(connection: &quinn::Connection) -> Option<i64> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs::issued_unix_s(chain.first()?)
}

/// The edge id a PEM certificate names (the one a hub signed in an enrollment).
pub fn edge_of_certificate_pem(pem: &str) -> Result<EdgeId, LinkError> {
    let cert =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| LinkError::Certificate {
            what: "the certificate the hub signed".into(),
            reason: e.to_string(),
        })?;
    edge_named_by(&cert).map_err(|reason| LinkError::Certificate {
        what: "the certificate the hub signed".into(),
        reason: reason.to_owned(),
    })
}

/// The address of a hub given as `HOST:PORT`.
pub async fn resolve(hub: &str) -> Result<SocketAddr, SessionError> {
    let (host, port) = split_host_port(hub)?;
    tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| SessionError::Protocol(format!("{host} resolves to no address")))
}

/// `HOST:PORT` (a bracketed IPv6 address as HOST) as its parts.
pub fn split_host_port(hub: &str) -> Result<(String, u16), LinkError> {
    let invalid = |reason: &str| LinkError::InvalidSpec {
        what: "hub".into(),
        reason: format!("{hub:?}: {reason}"),
    };
    let (host, port) = hub
        .rsplit_once(':')
        .ok_or_else(|| invalid("use HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(invalid("use HOST:PORT"));
    }
    Ok((host.to_owned(), port))
}

/// The edge id a certificate file of this side names (the edge's own, for its links).
pub fn edge_of_certificate(cert: &Path) -> Result<EdgeId, LinkError> {
    let chain = certs::read_chain(cert)?;
    edge_named_by(&chain[0]).map_err(|reason| tls_error(cert, reason))
}

fn edge_named_by(cert: &CertificateDer<'_>) -> Result<EdgeId, &'static str> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| "its certificate cannot be read")?;
    let names: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(*dns),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match names.as_slice() {
        [id] => EdgeId::new(id).map_err(|_| "its certificate names no valid edge id"),
        _ => Err("its certificate must name exactly one edge id (appliance certs issue makes one)"),
    }
}

fn tls_error(path: &Path, error: impl std::fmt::Display) -> LinkError {
    certs::unusable(path, error).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_addresses_are_host_and_port() {
        assert_eq!(
            split_host_port("hub.example.net:7443").unwrap(),
            ("hub.example.net".to_owned(), 7443)
        );
        assert_eq!(
            split_host_port("[::1]:7443").unwrap(),
            ("::1".to_owned(), 7443)
        );
        for bad in ["hub", "hub:", ":7443", "hub:0", "hub:99999", "hub:x"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    struct Deployment {
        dir: tempfile::TempDir,
    }

    impl Deployment {
        fn new(edges: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            certs::init(dir.path(), &[]).unwrap();
            for edge in edges {
                certs::issue_client(dir.path(), EdgeId::new(edge).unwrap().as_str()).unwrap();
            }
            Self { dir }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn hub(&self) -> quinn::Endpoint {
            let (ca, cert, key) = (
                self.path("ca.pem"),
                self.path("hub.pem"),
                self.path("hub.key"),
            );
            let files = TlsFiles {
                ca: &ca,
                cert: &cert,
                key: &key,
            };
            hub_endpoint(([127, 0, 0, 1], 0).into(), &files, DEFAULT_IDLE_TIMEOUT).unwrap()
        }

        /// An edge endpoint trusting `ca_of`'s CA, with `edge`'s certificate from `cert_of`.
        fn edge(ca_of: &Deployment, cert_of: &Deployment, edge: &str) -> quinn::Endpoint {
            let ca = ca_of.path("ca.pem");
            let (cert, key) = (
                cert_of.path(&format!("{edge}.pem")),
                cert_of.path(&format!("{edge}.key")),
            );
            let files = TlsFiles {
                ca: &ca,
                cert: &cert,
                key: &key,
            };
            edge_endpoint(&files, DEFAULT_IDLE_TIMEOUT, Congestion::Bbr).unwrap()
        }
    }

    /// Dials the hub as `edge` and returns what the hub made of it.
    async fn dial(hub: &quinn::Endpoint, edge: &quinn::Endpoint) -> Result<EdgeId, String> {
        let addr = hub.local_addr().unwrap();
        let accepting = async {
            let incoming = hub.accept().await.ok_or("hub closed")?;
            let connection = incoming.await.map_err(|e| format!("hub side: {e}"))?;
            edge_of(&connection).map_err(|e| e.to_string())
        };
        let dialing = async {
            let connection = edge
                .connect(addr, "localhost")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| format!("edge side: {e}"))?;
            Ok::<_, String>(connection)
        };
        let run = async {
            let (accepted, dialed) = tokio::join!(accepting, dialing);
            let _connection = dialed?;
            accepted
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    #[tokio::test]
    async fn the_hub_knows_an_edge_by_its_certificate() {
        let deployment = Deployment::new(&["plant-7"]);
        let hub = deployment.hub();
        let edge = Deployment::edge(&deployment, &deployment, "plant-7");
        assert_eq!(dial(&hub, &edge).await.unwrap().as_str(), "plant-7");
    }

    #[tokio::test]
    async fn an_edge_with_a_certificate_of_another_ca_is_refused() {
        let ours = Deployment::new(&[]);
        let theirs = Deployment::new(&["intruder"]);
        let hub = ours.hub();
        let edge = Deployment::edge(&ours, &theirs, "intruder");
        let refused = dial(&hub, &edge).await.unwrap_err();
        assert!(refused.contains("hub side"), "{refused}");
        assert!(refused.contains("invalid peer certificate"), "{refused}");
    }

    #[tokio::test]
    async fn a_server_certificate_does_not_pass_for_an_edge() {
        let deployment = Deployment::new(&[]);
        let hub = deployment.hub();
        let impostor = Deployment::edge(&deployment, &deployment, "hub");
        let refused = dial(&hub, &impostor).await.unwrap_err();
        assert!(refused.contains("hub side"), "{refused}");
        assert!(refused.contains("invalid peer certificate"), "{refused}");
    }

    #[tokio::test]
    async fn an_edge_does_not_talk_to_a_hub_of_another_ca() {
        let ours = Deployment::new(&["plant-7"]);
        let theirs = Deployment::new(&[]);
        let hub = theirs.hub();
        let edge = Deployment::edge(&ours, &ours, "plant-7");
        let refused = dial(&hub, &edge).await.unwrap_err();
        assert!(refused.contains("edge side"), "{refused}");
        assert!(refused.contains("invalid peer certificate"), "{refused}");
    }
}
