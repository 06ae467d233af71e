//! The `Exports` service.

use std::time::Duration;

use appliance_proto::v1 as pb;
use appliance_proto::v1::exports_server::Exports as ExportsApi;
use tonic::{Request, Response, Status};

use super::access::Calls;
use super::convert::{state_fields, topic_name};
use super::pipelines::{config_entries, config_pairs};
use crate::export::{ExportStatus, Exports, NewExport, StartAt};
use crate::security::{Operation, ResourceType, Rpc};

#[derive(Debug)]
pub struct ExportsService {
    pub exports: Exports,
    pub calls: Calls,
}

fn export_message(status: ExportStatus) -> pb::Export {
    let spec = status.spec;
    let progress = status.progress;
    let state = state_fields(
        progress.state,
        [
            pb::ExportState::Starting,
            pb::ExportState::Running,
            pb::ExportState::Paused,
            pb::ExportState::Failed,
            pb::ExportState::Failed,
        ],
    );
    pb::Export {
        name: spec.name,
        from_topic: spec.from.to_string(),
        to: spec.to,
        storage: config_entries(spec.storage),
        partition_by: spec.partition_by,
        start_unix_ms: match spec.start {
            StartAt::Earliest => 0,
            StartAt::Time(ms) => ms,
        },
        target_file_bytes: spec.target_file_bytes,
        flush_interval_ms: spec.flush_interval_ms,
        maintenance_interval_ms: spec.maintenance_interval_ms,
        dead_letter_topic: spec.dead_letter_topic.to_string(),
        paused: spec.paused,
        state: state.state as i32,
        failure: state.failure,
        restarting: state.restarting,
        restarts: progress.restarts,
        next_try_unix_ms: state.next_try_unix_ms,
        sources: progress
            .sources
            .into_iter()
            .map(|source| pb::ExportSource {
                lag: source.lag(),
                topic: source.topic.to_string(),
                edge: source.edge.unwrap_or_default(),
                partition: source.partition.0,
                exported: source.exported.0,
                high_watermark: source.high_watermark.0,
                lost: source.lost,
            })
            .collect(),
        table_version: progress.table_version.map_or(-1, |v| v as i64),
        rows: progress.rows,
        files: progress.files,
        bytes: progress.bytes,
        dead_lettered: progress.dead_lettered,
        last_commit_unix_ms: progress.last_commit_unix_ms.unwrap_or(0),
        files_compacted: progress.files_compacted,
        files_vacuumed: progress.files_vacuumed,
    }
}

fn new_export(request: pb::CreateExportRequest) -> Result<NewExport, Status> {
    let positive = |value: u64| (value > 0).then_some(value);
    let partition_by = match request.partition_by.as_slice() {
        [] => None,
        [none] if none == "none" => Some(Vec::new()),
        columns => Some(columns.to_vec()),
    };
    Ok(NewExport {
        name: request.name,
        from: topic_name("from_topic", &request.from_topic)?,
        to: request.to,
        storage: config_pairs(request.storage),
        partition_by,
        start: match request.start_unix_ms {
            0 => StartAt::Earliest,
            ms => StartAt::Time(ms),
        },
        target_file_bytes: positive(request.target_file_bytes),
        flush_interval: positive(request.flush_interval_ms).map(Duration::from_millis),
        maintenance_interval: positive(request.maintenance_interval_ms).map(Duration::from_millis),
        dead_letter_topic: if request.dead_letter_topic.is_empty() {
            None
        } else {
            Some(topic_name("dead_letter_topic", &request.dead_letter_topic)?)
        },
    })
}

#[tonic::async_trait]
impl ExportsApi for ExportsService {
    async fn create_export(
        &self,
        request: Request<pb::CreateExportRequest>,
    ) -> Result<Response<pb::Export>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreateExport)?;
        let new = new_export(request)?;
        call.authorize(&new.name)?;
        call.authorize_on(ResourceType::Topic, new.from.as_str(), Operation::Read)?;
        if let Some(dead_letters) = &new.dead_letter_topic {
            call.authorize_on(ResourceType::Topic, dead_letters.as_str(), Operation::Write)?;
        }
        let status = self.exports.create(new).await?;
        Ok(Response::new(export_message(status)))
    }

    async fn get_export(
        &self,
        request: Request<pb::GetExportRequest>,
    ) -> Result<Response<pb::Export>, Status> {
        let (call, request) = self.calls.start(request, Rpc::GetExport)?;
        call.authorize(&request.name)?;
        let status = self.exports.get(&request.name).await?;
        Ok(Response::new(export_message(status)))
    }

    async fn list_exports(
        &self,
        request: Request<pb::ListExportsRequest>,
    ) -> Result<Response<pb::ListExportsResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListExports)?;
        Ok(Response::new(pb::ListExportsResponse {
            exports: self
                .exports
                .list()
                .await
                .into_iter()
                .filter(|export| call.may_describe(&export.spec.name))
                .map(export_message)
                .collect(),
        }))
    }

    async fn pause_export(
        &self,
        request: Request<pb::PauseExportRequest>,
    ) -> Result<Response<pb::Export>, Status> {
        let (call, request) = self.calls.start(request, Rpc::PauseExport)?;
        call.authorize(&request.name)?;
        let status = self.exports.pause(&request.name).await?;
        Ok(Response::new(export_message(status)))
    }

    async fn resume_export(
        &self,
        request: Request<pb::ResumeExportRequest>,
    ) -> Result<Response<pb::Export>, Status> {
        let (call, request) = self.calls.start(request, Rpc::ResumeExport)?;
        call.authorize(&request.name)?;
        let status = self.exports.resume(&request.name).await?;
        Ok(Response::new(export_message(status)))
    }

    async fn delete_export(
        &self,
        request: Request<pb::DeleteExportRequest>,
    ) -> Result<Response<pb::DeleteExportResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeleteExport)?;
        call.authorize(&request.name)?;
        self.exports.delete(&request.name).await?;
        Ok(Response::new(pb::DeleteExportResponse {}))
    }
}
