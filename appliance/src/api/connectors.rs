//! The `Connectors` service.

use appliance_proto::v1 as pb;
use appliance_proto::v1::connectors_server::Connectors as ConnectorsApi;
use tonic::{Request, Response, Status};

use super::access::Calls;
use super::convert::{state_fields, topic_name};
use super::error::invalid;
use super::pipelines::{
    config_entries, config_pairs, error_policy, policy_message, transform_message, transform_spec,
};
use crate::connect::{ConnectorOffsets, ConnectorStatus, Connectors, NewConnector, OffsetReset};
use crate::plugin::PluginKind;
use crate::security::{Operation, ResourceType, Rpc};

#[derive(Debug)]
pub struct ConnectorsService {
    pub connectors: Connectors,
    pub calls: Calls,
}

fn connector_message(status: ConnectorStatus) -> pb::Connector {
    let spec = status.spec;
    let states = [
        pb::ConnectorState::Starting,
        pb::ConnectorState::Running,
        pb::ConnectorState::Paused,
        pb::ConnectorState::Failed,
        pb::ConnectorState::Failed,
    ];
    let connector = state_fields(status.state, states);
    pb::Connector {
        name: spec.name,
        plugin: spec.plugin,
        kind: match spec.kind {
            PluginKind::Sink => pb::ConnectorKind::Sink,
            _ => pb::ConnectorKind::Source,
        } as i32,
        topic: spec.topic.to_string(),
        config: config_entries(spec.config),
        tasks_max: spec.tasks_max,
        transforms: spec.transforms.into_iter().map(transform_message).collect(),
        errors: policy_message(spec.errors) as i32,
        dlq_topic: spec.dlq_topic.map(|t| t.to_string()).unwrap_or_default(),
        paused: spec.paused,
        state: connector.state as i32,
        failure: connector.failure,
        tasks: status
            .tasks
            .into_iter()
            .map(|task| {
                let state = state_fields(task.state, states);
                pb::ConnectorTask {
                    task: task.task,
                    state: state.state as i32,
                    failure: state.failure,
                    restarting: state.restarting,
                    next_try_unix_ms: state.next_try_unix_ms,
                    restarts: task.restarts,
                    records_in: task.records_in,
                    records_out: task.records_out,
                    skipped: task.skipped,
                    dead_lettered: task.dead_lettered,
                }
            })
            .collect(),
    }
}

fn offsets_message(name: String, offsets: ConnectorOffsets) -> pb::ConnectorOffsets {
    let mut message = pb::ConnectorOffsets {
        name,
        ..Default::default()
    };
    match offsets {
        ConnectorOffsets::Source(tasks) => {
            message.source_tasks = tasks
                .into_iter()
                .map(|t| pb::SourceTaskOffset {
                    task: t.task,
                    partition: t.partition.0,
                    end: t.end.0,
                    position: t.position,
                })
                .collect();
        }
        ConnectorOffsets::Sink(partitions) => {
            message.sink_partitions = partitions
                .into_iter()
                .map(|p| pb::SinkPartitionOffset {
                    partition: p.partition.0,
                    committed: p.committed.map(|o| o.0),
                    high_watermark: p.high_watermark.0,
                })
                .collect();
        }
    }
    message
}

fn new_connector(request: pb::CreateConnectorRequest) -> Result<NewConnector, Status> {
    if request.plugin.is_empty() {
        return Err(invalid("plugin", "name the source or sink plugin to run"));
    }
    Ok(NewConnector {
        name: request.name,
        plugin: request.plugin,
        topic: topic_name("topic", &request.topic)?,
        config: config_pairs(request.config),
        tasks_max: request.tasks.max(1),
        transforms: request.transforms.into_iter().map(transform_spec).collect(),
        errors: error_policy(request.errors)?,
        dlq_topic: if request.dlq_topic.is_empty() {
            None
        } else {
            Some(topic_name("dlq_topic", &request.dlq_topic)?)
        },
    })
}

#[tonic::async_trait]
impl ConnectorsApi for ConnectorsService {
    async fn create_connector(
        &self,
        request: Request<pb::CreateConnectorRequest>,
    ) -> Result<Response<pb::Connector>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreateConnector)?;
        let new = new_connector(request)?;
        call.authorize(&new.name)?;
        // A source writes its topic and a sink reads it; which one the plugin is, is known
        // only once it loads, so its creator needs both.
        for operation in [Operation::Read, Operation::Write] {
            call.authorize_on(ResourceType::Topic, new.topic.as_str(), operation)?;
        }
        if let Some(dlq) = &new.dlq_topic {
            call.authorize_on(ResourceType::Topic, dlq.as_str(), Operation::Write)?;
        }
        let status = self.connectors.create(new).await?;
        Ok(Response::new(connector_message(status)))
    }

    async fn get_connector(
        &self,
        request: Request<pb::GetConnectorRequest>,
    ) -> Result<Response<pb::Connector>, Status> {
        let (call, request) = self.calls.start(request, Rpc::GetConnector)?;
        call.authorize(&request.name)?;
        let status = self.connectors.get(&request.name).await?;
        Ok(Response::new(connector_message(status)))
    }

    async fn list_connectors(
        &self,
        request: Request<pb::ListConnectorsRequest>,
    ) -> Result<Response<pb::ListConnectorsResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListConnectors)?;
        let connectors = self.connectors.list().await;
        Ok(Response::new(pb::ListConnectorsResponse {
            connectors: connectors
                .into_iter()
                .filter(|connector| call.may_describe(&connector.spec.name))
                .map(connector_message)
                .collect(),
        }))
    }

    async fn pause_connector(
        &self,
        request: Request<pb::PauseConnectorRequest>,
    ) -> Result<Response<pb::Connector>, Status> {
        let (call, request) = self.calls.start(request, Rpc::PauseConnector)?;
        call.authorize(&request.name)?;
        let status = self.connectors.pause(&request.name).await?;
        Ok(Response::new(connector_message(status)))
    }

    async fn resume_connector(
        &self,
        request: Request<pb::ResumeConnectorRequest>,
    ) -> Result<Response<pb::Connector>, Status> {
        let (call, request) = self.calls.start(request, Rpc::ResumeConnector)?;
        call.authorize(&request.name)?;
        let status = self.connectors.resume(&request.name).await?;
        Ok(Response::new(connector_message(status)))
    }

    async fn restart_connector(
        &self,
        request: Request<pb::RestartConnectorRequest>,
    ) -> Result<Response<pb::Connector>, Status> {
        let (call, request) = self.calls.start(request, Rpc::RestartConnector)?;
        call.authorize(&request.name)?;
        let status = self.connectors.restart(&request.name).await?;
        Ok(Response::new(connector_message(status)))
    }

    async fn delete_connector(
        &self,
        request: Request<pb::DeleteConnectorRequest>,
    ) -> Result<Response<pb::DeleteConnectorResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeleteConnector)?;
        call.authorize(&request.name)?;
        self.connectors.delete(&request.name).await?;
        Ok(Response::new(pb::DeleteConnectorResponse {}))
    }

    async fn get_connector_offsets(
        &self,
        request: Request<pb::GetConnectorOffsetsRequest>,
    ) -> Result<Response<pb::ConnectorOffsets>, Status> {
        let (call, request) = self.calls.start(request, Rpc::GetConnectorOffsets)?;
        let name = request.name;
        call.authorize(&name)?;
        let offsets = self.connectors.offsets(&name).await?;
        Ok(Response::new(offsets_message(name, offsets)))
    }

    async fn reset_connector_offsets(
        &self,
        request: Request<pb::ResetConnectorOffsetsRequest>,
    ) -> Result<Response<pb::ConnectorOffsets>, Status> {
        let (call, request) = self.calls.start(request, Rpc::ResetConnectorOffsets)?;
        call.authorize(&request.name)?;
        let to = match pb::ResetTo::try_from(request.to) {
            Ok(pb::ResetTo::Earliest) => OffsetReset::Earliest,
            Ok(pb::ResetTo::Latest) => OffsetReset::Latest,
            _ => return Err(invalid("to", "RESET_TO_EARLIEST or RESET_TO_LATEST")),
        };
        let offsets = self.connectors.reset_offsets(&request.name, to).await?;
        Ok(Response::new(offsets_message(request.name, offsets)))
    }
}
