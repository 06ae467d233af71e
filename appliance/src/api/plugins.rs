//! The `Plugins` service.

use appliance_proto::v1 as pb;
use appliance_proto::v1::plugins_server::Plugins as PluginsApi;
use tonic::{Request, Response, Status};

use super::access::Calls;
use crate::connect::{ConnectError, Connectors};
use crate::pipeline::{PipelineError, Pipelines};
use crate::plugin::{PluginInfo, PluginKind, Plugins};
use crate::security::Rpc;

#[derive(Debug)]
pub struct PluginsService {
    pub plugins: Plugins,
    pub pipelines: Pipelines,
    pub connectors: Connectors,
    pub calls: Calls,
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
        let (call, request) = self.calls.start(request, Rpc::AddPlugin)?;
        call.authorize(&request.name)?;
        let info = self
            .plugins
            .add(&request.name, request.wasm.to_vec())
            .await?;
        Ok(Response::new(plugin_message(info)))
    }

    async fn list_plugins(
        &self,
        request: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListPlugins)?;
        Ok(Response::new(pb::ListPluginsResponse {
            plugins: self
                .plugins
                .list()?
                .into_iter()
                .filter(|plugin| call.may_describe(&plugin.name))
                .map(plugin_message)
                .collect(),
        }))
    }

    async fn delete_plugin(
        &self,
        request: Request<pb::DeletePluginRequest>,
    ) -> Result<Response<pb::DeletePluginResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeletePlugin)?;
        let name = request.name;
        call.authorize(&name)?;
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
