//! The `Groups` service.

use appliance_proto::v1 as pb;
use appliance_proto::v1::groups_server::Groups;
use tonic::{Request, Response, Status};

use super::access::Calls;
use super::convert::{group_id, topic_name, topic_partition};
use super::error::invalid;
use crate::group::{Coordinator, GroupState, PartitionLag, ResetTarget};
use crate::log::{Offset, PartitionId, Timestamp};
use crate::security::{Operation, ResourceType, Rpc};

#[derive(Debug)]
pub struct GroupsService {
    pub coordinator: Coordinator,
    pub calls: Calls,
}

fn state(state: GroupState) -> i32 {
    let state = match state {
        GroupState::Empty => pb::GroupState::Empty,
        GroupState::Stable => pb::GroupState::Stable,
        GroupState::Rebalancing => pb::GroupState::Rebalancing,
    };
    state as i32
}

fn offset_message(lag: PartitionLag) -> pb::PartitionOffset {
    pb::PartitionOffset {
        topic: lag.topic.to_string(),
        partition: lag.partition.0,
        committed_offset: lag.committed.as_ref().map(|c| c.offset),
        high_watermark: lag.high_watermark.0,
        lag: lag.lag,
        metadata: lag.committed.map(|c| c.metadata).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListGroups)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: self
                .coordinator
                .list()?
                .into_iter()
                .filter(|g| call.may_describe(g.group.as_str()))
                .map(|g| pb::GroupSummary {
                    group: g.group.to_string(),
                    state: state(g.state),
                    members: g.members as u32,
                })
                .collect(),
        }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DescribeGroup)?;
        let group = group_id("group", &request.group)?;
        call.authorize(group.as_str())?;
        let description = self.coordinator.describe(&group)?;
        Ok(Response::new(pb::GroupDescription {
            group: description.group.to_string(),
            state: state(description.state),
            generation: description.generation,
            members: description
                .members
                .into_iter()
                .map(|m| pb::GroupMember {
                    member_id: m.member_id,
                    topics: m.topics.iter().map(ToString::to_string).collect(),
                    assigned: m
                        .owned
                        .iter()
                        .map(|(topic, partition)| topic_partition(topic, *partition))
                        .collect(),
                })
                .collect(),
            offsets: description
                .offsets
                .into_iter()
                .map(offset_message)
                .collect(),
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CommitOffsets)?;
        let group = group_id("group", &request.group)?;
        call.authorize(group.as_str())?;
        if request.offsets.is_empty() {
            return Err(invalid("offsets", "nothing to commit"));
        }
        let offsets = request
            .offsets
            .into_iter()
            .map(|o| {
                Ok((
                    (
                        topic_name("offsets.topic", &o.topic)?,
                        PartitionId(o.partition),
                    ),
                    Offset(o.offset),
                    o.metadata,
                ))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        for ((topic, _), _, _) in &offsets {
            call.authorize_on(ResourceType::Topic, topic.as_str(), Operation::Read)?;
        }
        let member = (!request.member_id.is_empty()).then_some(request.member_id.as_str());
        self.coordinator.commit(&group, member, offsets).await?;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn reset_offsets(
        &self,
        request: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::ResetOffsets)?;
        let group = group_id("group", &request.group)?;
        let topic = topic_name("topic", &request.topic)?;
        call.authorize(group.as_str())?;
        call.authorize_on(ResourceType::Topic, topic.as_str(), Operation::Read)?;
        let target = match request.to {
            Some(pb::reset_offsets_request::To::Earliest(true)) => ResetTarget::Earliest,
            Some(pb::reset_offsets_request::To::Latest(true)) => ResetTarget::Latest,
            Some(pb::reset_offsets_request::To::Offset(offset)) => {
                ResetTarget::Offset(Offset(offset))
            }
            Some(pb::reset_offsets_request::To::TimestampMs(ms)) => {
                ResetTarget::Timestamp(Timestamp(ms))
            }
            _ => {
                return Err(invalid(
                    "to",
                    "set one of earliest, latest, offset or timestamp_ms",
                ));
            }
        };
        let partitions: Vec<PartitionId> =
            request.partitions.into_iter().map(PartitionId).collect();
        let offsets = self
            .coordinator
            .reset(&group, &topic, &partitions, target)
            .await?;
        Ok(Response::new(pb::ResetOffsetsResponse {
            offsets: offsets.into_iter().map(offset_message).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Heartbeat)?;
        let group = group_id("group", &request.group)?;
        call.authorize(group.as_str())?;
        self.coordinator.heartbeat(&group, &request.member_id)?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }
}
