//! The `Pipelines` service.

use appliance_proto::v1 as pb;
use appliance_proto::v1::pipelines_server::Pipelines as PipelinesApi;
use tonic::{Request, Response, Status};

use super::access::Calls;
use super::convert::{state_fields, topic_name};
use super::error::invalid;
use crate::pipeline::{NewPipeline, PipelineStatus, Pipelines};
use crate::security::{Operation, ResourceType, Rpc};
use crate::transform::{ErrorPolicy, TransformSpec};

#[derive(Debug)]
pub struct PipelinesService {
    pub pipelines: Pipelines,
    pub calls: Calls,
}

pub(super) fn policy_message(policy: ErrorPolicy) -> pb::ErrorPolicy {
    match policy {
        ErrorPolicy::Fail => pb::ErrorPolicy::Fail,
        ErrorPolicy::Skip => pb::ErrorPolicy::Skip,
        ErrorPolicy::Dlq => pb::ErrorPolicy::Dlq,
    }
}

fn pipeline_message(status: PipelineStatus) -> pb::Pipeline {
    let spec = status.spec;
    pb::Pipeline {
        name: spec.name,
        from_topic: spec.from.to_string(),
        to_topic: spec.to.to_string(),
        transforms: spec.transforms.into_iter().map(transform_message).collect(),
        errors: policy_message(spec.errors) as i32,
        dlq_topic: spec.dlq_topic.map(|t| t.to_string()).unwrap_or_default(),
        paused: spec.paused,
        partitions: status
            .partitions
            .into_iter()
            .map(|p| {
                let lag = p.lag();
                let state = state_fields(
                    p.state,
                    [
                        pb::PipelineState::Starting,
                        pb::PipelineState::Running,
                        pb::PipelineState::Paused,
                        pb::PipelineState::Failed,
                        pb::PipelineState::Failed,
                    ],
                );
                pb::PipelinePartition {
                    partition: p.partition.0,
                    state: state.state as i32,
                    failure: state.failure,
                    next_offset: p.next_offset,
                    high_watermark: p.high_watermark,
                    lag,
                    records_in: p.records_in,
                    records_out: p.records_out,
                    skipped: p.skipped,
                    dead_lettered: p.dead_lettered,
                    restarting: state.restarting,
                    restarts: p.restarts,
                    next_try_unix_ms: state.next_try_unix_ms,
                }
            })
            .collect(),
    }
}

/// Settings as the API carries them (plugins', connectors', an export's storage).
pub(super) fn config_entries(config: Vec<(String, String)>) -> Vec<pb::ConfigEntry> {
    config
        .into_iter()
        .map(|(key, value)| pb::ConfigEntry { key, value })
        .collect()
}

pub(super) fn config_pairs(entries: Vec<pb::ConfigEntry>) -> Vec<(String, String)> {
    entries.into_iter().map(|e| (e.key, e.value)).collect()
}

pub(super) fn transform_message(transform: TransformSpec) -> pb::Transform {
    pb::Transform {
        plugin: transform.plugin,
        config: config_entries(transform.config),
    }
}

pub(super) fn transform_spec(transform: pb::Transform) -> TransformSpec {
    TransformSpec {
        plugin: transform.plugin,
        config: config_pairs(transform.config),
    }
}

pub(super) fn error_policy(errors: i32) -> Result<ErrorPolicy, Status> {
    match pb::ErrorPolicy::try_from(errors) {
        Ok(pb::ErrorPolicy::Unspecified | pb::ErrorPolicy::Fail) => Ok(ErrorPolicy::Fail),
        Ok(pb::ErrorPolicy::Skip) => Ok(ErrorPolicy::Skip),
        Ok(pb::ErrorPolicy::Dlq) => Ok(ErrorPolicy::Dlq),
        Err(_) => Err(invalid("errors", "unknown error policy")),
    }
}

fn new_pipeline(request: pb::CreatePipelineRequest) -> Result<NewPipeline, Status> {
    let errors = error_policy(request.errors)?;
    let dlq_topic = if request.dlq_topic.is_empty() {
        None
    } else {
        Some(topic_name("dlq_topic", &request.dlq_topic)?)
    };
    Ok(NewPipeline {
        name: request.name,
        from: topic_name("from_topic", &request.from_topic)?,
        to: topic_name("to_topic", &request.to_topic)?,
        transforms: request.transforms.into_iter().map(transform_spec).collect(),
        errors,
        dlq_topic,
    })
}

#[tonic::async_trait]
impl PipelinesApi for PipelinesService {
    async fn create_pipeline(
        &self,
        request: Request<pb::CreatePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreatePipeline)?;
        let new = new_pipeline(request)?;
        call.authorize(&new.name)?;
        call.authorize_on(ResourceType::Topic, new.from.as_str(), Operation::Read)?;
        for written in std::iter::once(&new.to).chain(&new.dlq_topic) {
            call.authorize_on(ResourceType::Topic, written.as_str(), Operation::Write)?;
        }
        let status = self.pipelines.create(new).await?;
        Ok(Response::new(pipeline_message(status)))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let (call, request) = self.calls.start(request, Rpc::GetPipeline)?;
        call.authorize(&request.name)?;
        let status = self.pipelines.get(&request.name).await?;
        Ok(Response::new(pipeline_message(status)))
    }

    async fn list_pipelines(
        &self,
        request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListPipelines)?;
        Ok(Response::new(pb::ListPipelinesResponse {
            pipelines: self
                .pipelines
                .list()
                .await
                .into_iter()
                .filter(|pipeline| call.may_describe(&pipeline.spec.name))
                .map(pipeline_message)
                .collect(),
        }))
    }

    async fn pause_pipeline(
        &self,
        request: Request<pb::PausePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let (call, request) = self.calls.start(request, Rpc::PausePipeline)?;
        call.authorize(&request.name)?;
        let status = self.pipelines.pause(&request.name).await?;
        Ok(Response::new(pipeline_message(status)))
    }

    async fn resume_pipeline(
        &self,
        request: Request<pb::ResumePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let (call, request) = self.calls.start(request, Rpc::ResumePipeline)?;
        call.authorize(&request.name)?;
        let status = self.pipelines.resume(&request.name).await?;
        Ok(Response::new(pipeline_message(status)))
    }

    async fn delete_pipeline(
        &self,
        request: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::DeletePipelineResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeletePipeline)?;
        call.authorize(&request.name)?;
        self.pipelines.delete(&request.name).await?;
        Ok(Response::new(pb::DeletePipelineResponse {}))
    }
}
