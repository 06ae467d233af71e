//! Wires the subsystems together and runs them until shutdown. The only place that knows them
//! all; tests call [`run`] the way `main` does.

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::log::{Log, LogError};
use crate::meta::{Meta, MetaError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Opens the data directory, runs until `shutdown` is cancelled, then stops in data-flow
/// order: the log's writers commit what they hold, then the metadata store is flushed.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AppError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let meta = Meta::open(&config.data_dir.join("meta"))?;
    let log = Log::open(config.log_config(), meta).await?;
    let declared = config.declared_topics().unwrap_or_default();
    for (name, topic_config) in declared {
        match log.create_topic(name.clone(), topic_config).await {
            Ok(()) | Err(LogError::TopicExists { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    tracing::info!(
        data_dir = %config.data_dir.display(),
        topics = log.list_topics().len(),
        "appliance ready"
    );
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    log.close().await?;
    tracing::info!("shutdown complete");
    Ok(())
}
