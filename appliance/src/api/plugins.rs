//! The `Plugins` service.

use appliance_proto::v1 as pb;
use appliance_proto::v1::plugins_server::Plugins as PluginsApi;
use tonic::{Request, Response, Status};

use super::metrics::{Metrics, Rpc};
use crate::connect::{ConnectError, Connectors};
use crate::pipeline::{PipelineError, Pipelines};
use crate::plugin::{PluginInfo, PluginKind, Plugins};

#[derive(Debug)]
pub struct PluginsService {
    pub plugins: Plugins,
    pub pipelines: Pipelines,
    pub connectors: Connectors,
    pub metrics: Metrics,
}

fn plugin_message(info: PluginInfo) -> pb::Plugin {
    let kind = match info.kind {
        PluginKind::Transform => pb::PluginKind::Transform,
        PluginKind::Source => pb::PluginKind::Source,
        PluginKind::Sink => pb::PluginKind::Sink,
    };
    pb::Plugin {
        name: info.name,
        kind: kind as i32,
        sha256: info.digest,
        size_bytes: info.size,
        builtin: info.builtin,
    }
}

#[tonic::async_trait]
impl PluginsApi for PluginsService {
    async fn add_plugin(
        &self,
        request: Request<pb::AddPluginRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        let _timer = self.metrics.time(Rpc::AddPlugin);
        let request = request.into_inner();
        let info = self
            .plugins
            .add(&request.name, request.wasm.to_vec())
            .await?;
        Ok(Response::new(plugin_message(info)))
    }

    async fn list_plugins(
        &self,
        _request: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let _timer = self.metrics.time(Rpc::ListPlugins);
        Ok(Response::new(pb::ListPluginsResponse {
            plugins: self
                .plugins
                .list()?
                .into_iter()
                .map(plugin_message)
                .collect(),
        }))
    }

    async fn delete_plugin(
        &self,
        request: Request<pb::DeletePluginRequest>,
    ) -> Result<Response<pb::DeletePluginResponse>, Status> {
        let _timer = self.metrics.time(Rpc::DeletePlugin);
        let name = request.into_inner().name;
        if let Some(pipeline) = self.pipelines.user_of(&name).await {
            return Err(PipelineError::PluginInUse {
                plugin: name,
                pipeline,
            }
            .into());
        }
        if let Some(connector) = self.connectors.user_of(&name).await {
            return Err(ConnectError::PluginInUse {
                plugin: name,
                connector,
            }
            .into());
        }
        self.plugins.delete(&name).await?;
        Ok(Response::new(pb::DeletePluginResponse {}))
    }
}
