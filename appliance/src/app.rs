//! Wires the subsystems together and runs them until shutdown. The only place that knows them
//! all; tests call [`start`] the way `main` does.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiError, Metrics};
use crate::config::Config;
use crate::connect::{ConnectError, Connectors};
use crate::console;
#[cfg(feature = "hub")]
use crate::export::{ExportError, Exports};
use crate::group::Coordinator;
use crate::kafka;
use crate::link::LinkError;
use crate::link::edge::Links;
use crate::link::hub::Hub;
use crate::log::{Log, LogError, TopicName};
use crate::meta::{Meta, MetaError};
use crate::pipeline::{PipelineError, Pipelines};
use crate::plugin::{PluginError, Plugins};
#[cfg(feature = "hub")]
use crate::query;
use crate::security::{Security, SecurityError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[cfg(feature = "hub")]
    #[error("cannot start the query engine's threads: {source}")]
    QueryRuntime {
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} task failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[cfg(feature = "hub")]
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Connector(#[from] ConnectError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// An appliance that is up: its endpoints are listening.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The Kafka listener's address, when it runs.
    pub kafka_addr: Option<SocketAddr>,
    /// The web console's address, when it is served.
    pub console_addr: Option<SocketAddr>,
    /// A hub's UDP endpoint for edges.
    pub link_addr: Option<SocketAddr>,
    /// The admin token made at first start, unless an operator removed it.
    pub admin_token_file: Option<std::path::PathBuf>,
    stopped: tokio::task::JoinHandle<Result<(), AppError>>,
}

impl Running {
    /// Waits until the appliance stopped after its `shutdown` was cancelled.
    pub async fn stopped(self) -> Result<(), AppError> {
        self.stopped.await.map_err(|source| AppError::Task {
            what: "appliance",
            source,
        })?
    }
}

/// Opens everything and starts serving; returns once the endpoints listen.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, AppError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AppError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let mut log_config = config.log_config();
    // The deletes that make room under the disk budget must stay acknowledged, so their audit
    // records are written past it.
    log_config
        .unbudgeted_topics
        .push(TopicName::new(api::AUDIT_TOPIC)?);
    if let Err(error) = log_config.disk_reserve().release_if_short() {
        tracing::warn!(%error, "cannot check the disk reserve");
    }
    let meta = Meta::open(&config.data_dir.join("meta"))?;
    let security = Security::open(
        meta.clone(),
        config.security.super_users(),
        config.security.client_principals()?,
    )?;
    let tls = config.api.tls_files().map(api::ApiTls::load).transpose()?;
    let admin_token_file = security.bootstrap_admin(&config.data_dir).await?;
    let log = Log::open(log_config, meta.clone()).await?;
    let declared = config.declared_topics().unwrap_or_default();
    for (name, topic_config) in declared {
        match log.create_topic(name.clone(), topic_config).await {
            Ok(()) | Err(LogError::TopicExists { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let (grpc_listener, grpc_addr) = listen("gRPC API", config.api.grpc_addr).await?;
    let (metrics_listener, metrics_addr) =
        listen("metrics endpoint", config.api.metrics_addr).await?;
    let console_listener = match config.api.console {
        true => Some(listen("console", config.api.console_addr).await?),
        false => None,
    };
    let kafka_listener = match config.kafka.enabled {
        true => Some(listen("Kafka listener", config.kafka.addr).await?),
        false => None,
    };
    // The epoch ticker outlives the pipelines: a guest only yields (and stops) on its ticks.
    let ticker = CancellationToken::new();
    let plugins = Plugins::open(
        &config.data_dir,
        meta.clone(),
        config.security.secret_providers(),
        ticker.clone(),
    )?;
    let pipelines = Pipelines::open(
        log.clone(),
        meta.clone(),
        plugins.clone(),
        config.plugins.limits(),
        config.restart.pipelines(),
        shutdown.clone(),
    )
    .await?;
    let coordinator =
        Coordinator::new(log.clone(), meta.clone()).with_sessions(config.groups.session_limits());
    tokio::spawn(coordinator.clone().expire_sessions(shutdown.clone()));
    let hub = config
        .link
        .hub()
        .map(|options| {
            Hub::start(
                &options,
                log.clone(),
                coordinator.clone(),
                security.clone(),
                shutdown.clone(),
            )
        })
        .transpose()?;
    let links = Links::open(
        log.clone(),
        meta.clone(),
        config.link.idle_timeout(),
        config.restart.links(),
        shutdown.clone(),
    )
    .await?;
    let connectors = Connectors::open(
        log.clone(),
        meta.clone(),
        plugins.clone(),
        coordinator.clone(),
        config.plugins.limits(),
        config.restart.connectors(),
        shutdown.clone(),
    )
    .await?;
    #[cfg(feature = "hub")]
    let lake = query::LakeCatalog::new(config.security.secret_providers());
    #[cfg(feature = "hub")]
    let exports = Exports::open(
        log.clone(),
        meta.clone(),
        config.restart.exports(),
        lake.clone(),
        shutdown.clone(),
    )
    .await?;
    let metrics = Metrics::new(
        log.clone(),
        coordinator.clone(),
        plugins.clone(),
        pipelines.clone(),
        connectors.clone(),
        links.clone(),
        hub.clone(),
    );
    let metrics_server = tokio::spawn(api::metrics::serve(
        metrics_listener,
        metrics.clone(),
        security.clone(),
        tls.as_ref().map(|tls| tls.http.clone()),
        config.api.connection_limits().idle_timeout,
        shutdown.clone(),
    ));
    #[cfg(feature = "hub")]
    let query_runtime = query::query_runtime(config.query.threads(), shutdown.clone())
        .map_err(|source| AppError::QueryRuntime { source })?;
    let audit = api::Audit::open(log.clone()).await?;
    let producer_ids = kafka::ProducerIds::open(meta.clone())?;
    let kafka_addr = kafka_listener.as_ref().map(|(_, addr)| *addr);
    let kafka_server = kafka_listener.map(|(listener, _)| {
        let broker = kafka::Broker {
            log: log.clone(),
            security: security.clone(),
            coordinator: coordinator.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            settings: Arc::new(config.kafka.settings()),
            producer_ids: Arc::new(producer_ids),
            sequences: Arc::default(),
        };
        let tls = tls.as_ref().map(|tls| tls.kafka.clone());
        tokio::spawn(kafka::serve(listener, broker, tls, shutdown.clone()))
    });
    #[cfg(feature = "hub")]
    let query = query::Query::with_limits(log.clone(), config.query.limits(), query_runtime)
        .with_lake(lake);
    let (local_api, local_incoming) = api::local_api();
    let console_addr = console_listener.as_ref().map(|(_, addr)| *addr);
    let console_server = console_listener.map(|(listener, _)| {
        let parts = console::Parts {
            api: local_api,
            security: security.clone(),
            audit: audit.clone(),
            hub: hub.clone(),
            pipelines: pipelines.clone(),
            connectors: connectors.clone(),
        };
        tokio::spawn(console::serve(
            listener,
            parts,
            tls.as_ref().map(|tls| tls.http.clone()),
            config.api.connection_limits(),
            shutdown.clone(),
        ))
    });
    let grpc_server = tokio::spawn(api::serve(
        grpc_listener,
        api::Subsystems {
            log: log.clone(),
            coordinator,
            plugins,
            pipelines: pipelines.clone(),
            connectors: connectors.clone(),
            #[cfg(feature = "hub")]
            exports: exports.clone(),
            links: links.clone(),
            hub: hub.clone(),
            metrics,
            #[cfg(feature = "hub")]
            query,
            security,
            audit,
        },
        config.api.connection_limits(),
        tls.map(|tls| tls.grpc),
        local_incoming,
        shutdown.clone(),
    ));
    let link_addr = hub.as_ref().map(Hub::local_addr);
    tracing::info!(
        data_dir = %config.data_dir.display(),
        topics = log.list_topics().len(),
        %grpc_addr,
        %metrics_addr,
        kafka_addr = kafka_addr.map(|a| a.to_string()),
        console_addr = console_addr.map(|a| a.to_string()),
        link_addr = link_addr.map(|a| a.to_string()),
        tls = config.api.tls_cert.is_some(),
        admin_token_file = admin_token_file.as_ref().map(|path| path.display().to_string()),
        "appliance ready"
    );
    let stopped = tokio::spawn(async move {
        shutdown.cancelled().await;
        tracing::info!("shutting down");
        if let Some(console_server) = console_server {
            let _ = console_server.await;
        }
        let served = grpc_server.await;
        let _ = metrics_server.await;
        if let Some(kafka_server) = kafka_server {
            let _ = kafka_server.await;
        }
        pipelines.stop_all().await;
        connectors.stop_all().await;
        #[cfg(feature = "hub")]
        exports.stop_all().await;
        links.stop_all().await;
        ticker.cancel();
        log.close().await?;
        tracing::info!("shutdown complete");
        served.map_err(|source| AppError::Task {
            what: "gRPC server",
            source,
        })??;
        Ok(())
    });
    Ok(Running {
        grpc_addr,
        metrics_addr,
        kafka_addr,
        console_addr,
        link_addr,
        admin_token_file,
        stopped,
    })
}

async fn listen(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), AppError> {
    let error = |source| AppError::Listen { what, addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}
