//! The `Query` service: SQL over topics (query::Query).

use appliance_proto::v1 as pb;
use appliance_proto::v1::query_server::Query as QueryApi;
use datafusion::arrow::datatypes::Schema;
use tonic::{Request, Response, Status};

use super::access::{Call, Calls};
use crate::security::Rpc;
use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::query::{Answer, AnswerFormat, Query, VIRTUAL_COLUMNS};

fn answer_format(request: &pb::ExecuteRequest) -> AnswerFormat {
    match request.format() {
        pb::AnswerFormat::ArrowAndJson => AnswerFormat::ArrowAndJson,
        pb::AnswerFormat::Arrow => AnswerFormat::Arrow,
        pb::AnswerFormat::Json => AnswerFormat::Json,
    }
}

#[derive(Debug)]
pub struct QueryService {
    pub query: Query,
    pub calls: Calls,
    /// Ends live queries when the appliance stops.
    pub shutdown: CancellationToken,
}

fn response(
    answer: &Answer,
    format: AnswerFormat,
    max_bytes: usize,
) -> Result<pb::ExecuteResponse, Status> {
    let rendered = answer.render(format, max_bytes)?;
    Ok(pb::ExecuteResponse {
        arrow_ipc: rendered.arrow_ipc.into(),
        json: rendered.json,
        rows: answer.rows() as u64,
        columns: columns(&answer.schema, false),
    })
}

fn columns(schema: &Schema, declared: bool) -> Vec<pb::Column> {
    schema
        .fields()
        .iter()
        .map(|field| {
            let is_virtual = VIRTUAL_COLUMNS.contains(&field.name().as_str());
            pb::Column {
                name: field.name().clone(),
                r#type: field.data_type().to_string(),
                nullable: field.is_nullable(),
                r#virtual: is_virtual,
                declared: declared && !is_virtual,
            }
        })
        .collect()
}

impl QueryService {
    /// A query needs read on every topic it scans: on a hub, on each edge's mirror a table
    /// unites.
    fn authorize_scans(&self, call: &Call, sql: &str) -> Result<(), Status> {
        for topic in self.query.scanned_topics(sql)? {
            call.authorize(topic.as_str())?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl QueryApi for QueryService {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Execute)?;
        self.authorize_scans(&call, &request.sql)?;
        let answer = self.query.execute(&request.sql).await?;
        let format = answer_format(&request);
        Ok(Response::new(response(
            &answer,
            format,
            self.query.max_answer_bytes(),
        )?))
    }

    type FollowStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<pb::ExecuteResponse, Status>> + Send>>;

    async fn follow(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Follow)?;
        self.authorize_scans(&call, &request.sql)?;
        let format = answer_format(&request);
        let max_bytes = self.query.max_answer_bytes();
        let answers = self.query.follow(request.sql, self.shutdown.child_token());
        let stream =
            ReceiverStream::new(answers).map(move |answer| response(&answer?, format, max_bytes));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::TableDescription>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Describe)?;
        let description = self.query.describe(&request.table)?;
        for topic in &description.topics {
            call.authorize(topic)?;
        }
        Ok(Response::new(pb::TableDescription {
            table: description.table,
            topics: description.topics,
            columns: columns(&description.schema, description.declared),
        }))
    }
}
