//! The gRPC API (package `appliance.v1`) and the metrics endpoint: thin adapters from
//! protobuf to the subsystems. Each service converts its request into typed values
//! (`convert.rs`), calls one subsystem handle, and maps errors to statuses in one place
//! (`error.rs`). Health (`grpc.health.v1`) and server reflection are served beside them, so
//! stock tools (grpcurl, grpc_health_probe) work.
//!
//! ```text
//! client --gRPC--> Topics  -> log::Log (create, describe, update, delete)
//!                  Records -> log::Log (produce: split by partition, encode, submit; fetch)
//!                          -> group::Coordinator (subscribe: membership stream)
//!                  Groups  -> group::Coordinator (describe, commit, reset)
//!                  Plugins -> plugin::Plugins (add, list; delete unless a pipeline uses it)
//!                  Pipelines -> pipeline::Pipelines (create, status, pause, resume, delete)
//!                  Connectors -> connect::Connectors (create, status, pause, restart, offsets)
//!                  Links   -> link::edge::Links (create, status, pause, delete),
//!                             link::hub::Hub (edges, revoke, join tokens),
//!                             log::Log (promote a mirror)
//!                  Query   -> query::Query (SQL over topics: Arrow IPC and JSON rows)
//!                  Exports -> export::Exports (create, status, pause, resume, delete)
//!                  Security -> security::Security (tokens, users, ACLs, quotas)
//!                  System  -> log::Log (version, role, uptime, disk use against the budget)
//! ```
//!
//! Every service but health sits behind an `access::Guard`, which turns the request's bearer
//! token or client certificate into a `security::Principal` (or answers UNAUTHENTICATED); each
//! method then starts an `access::Call`, which checks `security::Rpc::requirement` (and the
//! method's further needs) before the method does anything, and answers PERMISSION_DENIED
//! otherwise. The guard paces each principal by its quotas and appends failed authentications,
//! denials and successful changes to the `_audit` topic (`audit.rs`), a change's record durable
//! before the change is acknowledged.
//!
//! The web console calls these services too, over in-process connections (`local.rs`) that a
//! second server without TLS answers with the same guarded routes.
//!
//! ```text
//! Prometheus --HTTP GET /metrics--> metrics::Metrics
//! ```

mod access;
mod audit;
mod connectors;
mod convert;
mod error;
#[cfg(feature = "hub")]
mod exports;
mod groups;
mod links;
mod listener;
mod local;
pub mod metrics;
mod pipelines;
mod plugins;
#[cfg(feature = "hub")]
mod query;
mod records;
mod security;
mod system;
mod tls;
mod topics;

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use appliance_proto::v1::connectors_server::ConnectorsServer;
#[cfg(feature = "hub")]
use appliance_proto::v1::exports_server::ExportsServer;
use appliance_proto::v1::groups_server::GroupsServer;
use appliance_proto::v1::links_server::LinksServer;
use appliance_proto::v1::pipelines_server::PipelinesServer;
use appliance_proto::v1::plugins_server::PluginsServer;
#[cfg(feature = "hub")]
use appliance_proto::v1::query_server::QueryServer;
use appliance_proto::v1::records_server::RecordsServer;
use appliance_proto::v1::security_server::SecurityServer;
use appliance_proto::v1::system_server::SystemServer;
use appliance_proto::v1::topics_server::TopicsServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connect::Connectors;
use crate::group::Coordinator;
use crate::link::edge::Links;
use crate::link::hub::Hub;
use crate::log::Log;
use crate::pipeline::Pipelines;
use crate::plugin::Plugins;
use crate::security::Security;
pub use access::bearer;
pub use audit::{AUDIT_TOPIC, Audit, Entry, Outcome};
pub use error::invalid;
pub use listener::{Connection, ConnectionLimits, incoming};
pub use local::{CONSOLE_PEER_HEADER, LocalConnector, LocalIncoming, local_api};
pub use metrics::Metrics;
pub use tls::{ApiTls, TlsFiles, handshake};

/// Largest request the server decodes; bigger ones get RESOURCE_EXHAUSTED before any work.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 flow-control windows. The 64 KiB default stalls every produce request and fetch
/// response larger than that on a round trip; these let a whole 1 MiB fetch or a few
/// produce requests be in flight per stream.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the API's TLS files: {0}")]
    Tls(#[from] crate::security::certs::CertError),
}

/// The subsystems the API serves.
#[derive(Debug, Clone)]
pub struct Subsystems {
    pub log: Log,
    pub coordinator: Coordinator,
    pub plugins: Plugins,
    pub pipelines: Pipelines,
    pub connectors: Connectors,
    #[cfg(feature = "hub")]
    pub exports: crate::export::Exports,
    pub links: Links,
    /// Present when this appliance is a hub.
    pub hub: Option<Hub>,
    pub metrics: Metrics,
    #[cfg(feature = "hub")]
    pub query: crate::query::Query,
    pub security: Security,
    pub audit: Audit,
}

/// Serves the gRPC API on `listener`, and on the in-process connections of `local` (the
/// console's), until `shutdown`, then lets requests in progress finish.
/// HTTP/2 keepalive pings go every third of the idle timeout, so that live clients answer
/// well within it and dead ones are found.
pub async fn serve(
    listener: TcpListener,
    subsystems: Subsystems,
    connections: ConnectionLimits,
    tls: Option<tonic::transport::ServerTlsConfig>,
    local: LocalIncoming,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let Subsystems {
        log,
        coordinator,
        plugins,
        pipelines,
        connectors,
        #[cfg(feature = "hub")]
        exports,
        links,
        hub,
        metrics,
        #[cfg(feature = "hub")]
        query,
        security,
        audit,
    } = subsystems;
    let calls = access::Calls::new(metrics.clone(), security.authorizer.clone());
    let guards = access::Guards {
        security: security.clone(),
        audit,
        metrics,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TopicsServer<topics::TopicsService>>()
        .await;
    health
        .set_serving::<RecordsServer<records::RecordsService>>()
        .await;
    health
        .set_serving::<GroupsServer<groups::GroupsService>>()
        .await;
    health
        .set_serving::<PluginsServer<plugins::PluginsService>>()
        .await;
    health
        .set_serving::<PipelinesServer<pipelines::PipelinesService>>()
        .await;
    health
        .set_serving::<ConnectorsServer<connectors::ConnectorsService>>()
        .await;
    health
        .set_serving::<LinksServer<links::LinksService>>()
        .await;
    #[cfg(feature = "hub")]
    {
        health
            .set_serving::<QueryServer<query::QueryService>>()
            .await;
        health
            .set_serving::<ExportsServer<exports::ExportsService>>()
            .await;
    }
    health
        .set_serving::<SecurityServer<security::SecurityService>>()
        .await;
    health
        .set_serving::<SystemServer<system::SystemService>>()
        .await;
    // Both reflection versions: grpcurl asks v1 first, older tools (grpcurl before 1.8.8,
    // Python's grpcio-reflection) only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(appliance_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let topics = topics::TopicsService {
        log: log.clone(),
        calls: calls.clone(),
    };
    let system = system::SystemService {
        log: log.clone(),
        hub: hub.is_some(),
        started: std::time::Instant::now(),
        calls: calls.clone(),
    };
    let links = links::LinksService {
        links,
        hub,
        log: log.clone(),
        calls: calls.clone(),
    };
    let records = records::RecordsService {
        log,
        coordinator: coordinator.clone(),
        calls: calls.clone(),
        round_robin: Arc::new(AtomicU32::new(0)),
        shutdown: shutdown.clone(),
    };
    let groups = groups::GroupsService {
        coordinator,
        calls: calls.clone(),
    };
    let plugins = plugins::PluginsService {
        plugins,
        pipelines: pipelines.clone(),
        connectors: connectors.clone(),
        calls: calls.clone(),
    };
    let pipelines = pipelines::PipelinesService {
        pipelines,
        calls: calls.clone(),
    };
    let connectors = connectors::ConnectorsService {
        connectors,
        calls: calls.clone(),
    };
    #[cfg(feature = "hub")]
    let query = query::QueryService {
        query,
        calls: calls.clone(),
        shutdown: shutdown.clone(),
    };
    #[cfg(feature = "hub")]
    let exports = exports::ExportsService {
        exports,
        calls: calls.clone(),
    };
    let security = security::SecurityService { security, calls };
    let keepalive = connections.idle_timeout / 3;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(health_service)
        .add_service(guards.guard(reflection_v1))
        .add_service(guards.guard(reflection_v1alpha))
        .add_service(
            guards.guard(TopicsServer::new(topics).max_decoding_message_size(MAX_REQUEST_BYTES)),
        )
        .add_service(
            guards.guard(RecordsServer::new(records).max_decoding_message_size(MAX_REQUEST_BYTES)),
        )
        .add_service(
            guards.guard(GroupsServer::new(groups).max_decoding_message_size(MAX_REQUEST_BYTES)),
        )
        .add_service(
            guards.guard(PluginsServer::new(plugins).max_decoding_message_size(MAX_REQUEST_BYTES)),
        )
        .add_service(
            guards.guard(
                PipelinesServer::new(pipelines).max_decoding_message_size(MAX_REQUEST_BYTES),
            ),
        )
        .add_service(
            guards.guard(
                ConnectorsServer::new(connectors).max_decoding_message_size(MAX_REQUEST_BYTES),
            ),
        )
        .add_service(
            guards.guard(LinksServer::new(links).max_decoding_message_size(MAX_REQUEST_BYTES)),
        )
        .add_service(
            guards
                .guard(SecurityServer::new(security).max_decoding_message_size(MAX_REQUEST_BYTES)),
        )
        .add_service(
            guards.guard(SystemServer::new(system).max_decoding_message_size(MAX_REQUEST_BYTES)),
        );
    // A lean edge build serves neither: a call gets UNIMPLEMENTED, as for any unknown service.
    #[cfg(feature = "hub")]
    routes
        .add_service(
            guards.guard(QueryServer::new(query).max_decoding_message_size(MAX_REQUEST_BYTES)),
        )
        .add_service(
            guards.guard(ExportsServer::new(exports).max_decoding_message_size(MAX_REQUEST_BYTES)),
        );
    let routes = routes.routes();
    let server = || {
        tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(
                error::outgoing_error::<tonic::body::Body>,
            ))
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
    };
    let mut remote = server();
    if let Some(tls) = tls {
        remote = remote.tls_config(tls)?;
    }
    let remote = remote
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(
            listener::incoming(listener, connections, "gRPC API"),
            shutdown.clone().cancelled_owned(),
        );
    let local = server()
        .add_routes(routes)
        .serve_with_incoming_shutdown(local.into_stream(), shutdown.cancelled_owned());
    let (remote, local) = tokio::join!(remote, local);
    remote?;
    local?;
    Ok(())
}
