//! The `Topics` service.

use appliance_proto::v1 as pb;
use appliance_proto::v1::topics_server::Topics;
use tonic::{Request, Response, Status};

use super::access::Calls;
use super::convert::{topic_config, topic_config_message, topic_name};
use crate::log::{Log, PartitionState, TopicInfo, TopicName};
use crate::security::Rpc;

#[derive(Debug)]
pub struct TopicsService {
    pub log: Log,
    pub calls: Calls,
}

fn topic_message(info: TopicInfo) -> pb::Topic {
    pb::Topic {
        name: info.name.to_string(),
        config: Some(topic_config_message(&info.config)),
        mirror_of: info.mirror_of,
        partitions: info
            .partitions
            .into_iter()
            .map(|p| match p.state {
                PartitionState::Online {
                    log_start,
                    high_watermark,
                    size_bytes,
                    segments,
                } => pb::PartitionStatus {
                    partition: p.id.0,
                    log_start_offset: log_start.0,
                    high_watermark: high_watermark.0,
                    size_bytes,
                    segments: segments as u32,
                    error: String::new(),
                },
                PartitionState::Failed { reason } => pb::PartitionStatus {
                    partition: p.id.0,
                    error: reason,
                    ..Default::default()
                },
            })
            .collect(),
    }
}

impl TopicsService {
    fn describe(&self, name: &TopicName) -> Result<pb::Topic, Status> {
        Ok(topic_message(self.log.topic_info(name)?))
    }
}

#[tonic::async_trait]
impl Topics for TopicsService {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreateTopic)?;
        let name = topic_name("name", &request.name)?;
        call.authorize(name.as_str())?;
        let config = topic_config(self.log.topic_defaults().clone(), request.config)?;
        self.log.create_topic(name.clone(), config).await?;
        Ok(Response::new(self.describe(&name)?))
    }

    async fn get_topic(
        &self,
        request: Request<pb::GetTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let (call, request) = self.calls.start(request, Rpc::GetTopic)?;
        let name = topic_name("name", &request.name)?;
        call.authorize(name.as_str())?;
        Ok(Response::new(self.describe(&name)?))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListTopics)?;
        Ok(Response::new(pb::ListTopicsResponse {
            topics: self
                .log
                .list_topics()
                .into_iter()
                .filter(|topic| call.may_describe(topic.name.as_str()))
                .map(topic_message)
                .collect(),
        }))
    }

    async fn update_topic_config(
        &self,
        request: Request<pb::UpdateTopicConfigRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let (call, request) = self.calls.start(request, Rpc::UpdateTopicConfig)?;
        let name = topic_name("name", &request.name)?;
        call.authorize(name.as_str())?;
        let config = topic_config(self.log.topic_config(&name)?, request.config)?;
        self.log.update_topic_config(&name, config).await?;
        Ok(Response::new(self.describe(&name)?))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeleteTopic)?;
        let name = topic_name("name", &request.name)?;
        call.authorize(name.as_str())?;
        self.log.delete_topic(&name).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }
}
