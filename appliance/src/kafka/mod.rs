//! The Kafka listener: Kafka's wire protocol over TCP, so unmodified Kafka clients produce to
//! and consume from the appliance's log (docs/kafka.md).
//!
//! ```text
//! accept (at most kafka.max-connections) -> TLS with the API's certificate, if configured
//!   -> connection.rs: frame (size checked first) -> header -> versions.rs: served?
//!   -> SASL (sasl.rs) until authenticated
//!   -> handlers.rs: ACLs and quotas of security/, idempotent producers' sequences
//!      (producers.rs), then the log; admin.rs: topic administration; groups.rs: the group
//!      APIs over group/'s coordinator; the audit log's records of denials and changes
//!   -> response, in order (a Produce's once its batches are durable)
//! ```
//!
//! Invariants: nothing is decoded before its size is known to be within the limit (64 KiB
//! before authentication); only the versions in `versions::SUPPORTED` are decoded; a client is
//! authenticated only once SASL verified its password or proof; every topic a request names is
//! authorized for its operation; a record batch is stored as it came, after its CRC and record
//! layout were checked, and Produce answers (acks 1 and all) once it is durable. Decoding uses
//! the protocol crate patched to bound its allocations by the request's size
//! (vendor/README.md).

mod admin;
mod connection;
mod error;
mod groups;
mod handlers;
mod producers;
mod sasl;
mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio_rustls::TlsAcceptor;

use tonic::transport::server::Connected;

use crate::api::{Audit, ConnectionLimits, Metrics, handshake, incoming};
use crate::group::Coordinator;
use crate::log::Log;
use crate::security::Security;

pub use error::KafkaError;
pub use producers::{PartitionSequences, ProducerIds};
pub use versions::SUPPORTED;

/// How the listener behaves (`[kafka]` of the configuration).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// What Metadata tells clients to connect to; none: the address each client reached.
    pub advertised: Option<SocketAddr>,
    /// The largest request an authenticated client may send.
    pub max_request_bytes: usize,
    /// Connections open at once, and how long one may send nothing before it is closed.
    pub limits: ConnectionLimits,
}

/// What the handlers work with; cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    pub log: Log,
    pub security: Security,
    pub coordinator: Coordinator,
    pub audit: Audit,
    pub metrics: Metrics,
    pub settings: Arc<KafkaSettings>,
    pub producer_ids: Arc<ProducerIds>,
    /// Idempotent producers' sequences, per partition.
    pub sequences: Arc<PartitionSequences>,
}

/// Accepts Kafka clients on `listener` (over TLS with `tls`) within the connection limits
/// until `shutdown`, then waits for their connections to end.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let limits = broker.settings.limits;
    let mut accepted = std::pin::pin!(incoming(listener, limits, "Kafka listener"));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            next = accepted.next() => match next {
                Some(Ok(connection)) => connection,
                _ => break,
            },
        };
        let info = stream.connect_info();
        let (Some(peer), Some(local)) = (info.remote_addr(), info.local_addr()) else {
            continue;
        };
        let _ = stream.set_nodelay();
        let (broker, tls, shutdown) = (broker.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => connection::serve(stream, peer, local, broker, shutdown).await,
                Some(tls) => {
                    if let Some(stream) = handshake(&tls, stream, "Kafka listener").await {
                        connection::serve(stream, peer, local, broker, shutdown).await;
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
