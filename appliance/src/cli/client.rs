//! Client commands' connection: `--server`, the gRPC channel, one small runtime per command,
//! and a gRPC status as the CLI's failure. The commands live beside it by group (topics,
//! records, groups, plugins and pipelines, connectors, links, query); output.rs prints.

use anyhow::Context;
use clap::Args;
use tonic::transport::Channel;

use super::Failure;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The appliance's gRPC address.
    #[arg(
        long,
        env = "APPLIANCE_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    server: String,
}

impl ServerArgs {
    async fn channel(&self) -> anyhow::Result<Channel> {
        connect(&self.server).await
    }
}

/// A channel to the appliance at `url`, with the server's large HTTP/2 windows so that big
/// requests and responses are not held back by flow control.
pub(super) async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(url.to_owned())
        .with_context(|| format!("--server {url:?} is not a valid URL"))?
        .initial_stream_window_size(crate::api::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::api::CONNECTION_WINDOW_BYTES);
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the appliance at {url}"))
}

/// Runs a client command on a small runtime of its own.
pub fn run<F>(server: &ServerArgs, command: impl FnOnce(Channel) -> F) -> Result<(), Failure>
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(async {
        let channel = server.channel().await.map_err(Failure::Runtime)?;
        command(channel).await
    })
}

/// A gRPC status as a failure: the server's message and the code's name.
pub(super) fn status(status: tonic::Status) -> Failure {
    Failure::Runtime(anyhow::anyhow!(
        "{} ({:?})",
        status.message(),
        status.code()
    ))
}
