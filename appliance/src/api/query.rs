//! The `Query` service: SQL over topics (query::Query).

use appliance_proto::v1 as pb;
use appliance_proto::v1::query_server::Query as QueryApi;
use datafusion::arrow::datatypes::Schema;
use tonic::{Request, Response, Status};

use super::metrics::{Metrics, Rpc};
use crate::query::{Query, VIRTUAL_COLUMNS};

#[derive(Debug)]
pub struct QueryService {
    pub query: Query,
    pub metrics: Metrics,
}

fn columns(schema: &Schema) -> Vec<pb::Column> {
    schema
        .fields()
        .iter()
        .map(|field| pb::Column {
            name: field.name().clone(),
            r#type: field.data_type().to_string(),
            nullable: field.is_nullable(),
            r#virtual: VIRTUAL_COLUMNS.contains(&field.name().as_str()),
        })
        .collect()
}

#[tonic::async_trait]
impl QueryApi for QueryService {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let _timer = self.metrics.time(Rpc::Execute);
        let answer = self.query.execute(&request.into_inner().sql).await?;
        Ok(Response::new(pb::ExecuteResponse {
            arrow_ipc: answer.to_ipc()?.into(),
            json: answer.to_json()?,
            rows: answer.rows() as u64,
            columns: columns(&answer.schema),
        }))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::TableDescription>, Status> {
        let _timer = self.metrics.time(Rpc::Describe);
        let description = self.query.describe(&request.into_inner().table)?;
        Ok(Response::new(pb::TableDescription {
            table: description.table,
            topics: description.topics,
            columns: columns(&description.schema),
        }))
    }
}
