//! The group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups and ListGroups, over the appliance's one group
//! coordinator, so a Kafka consumer's offsets are the ones `appliance group` shows.
//!
//! ACLs as Kafka checks them: Read on the group to be a member or commit (and Read on each
//! topic committed), Describe on the group to find its coordinator, fetch its offsets (and
//! Describe on each topic) or describe it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId as WireGroup,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName as WireTopic,
    describe_groups_response::{DescribedGroup, DescribedGroupMember},
    find_coordinator_response::Coordinator as WireCoordinator,
    join_group_response::JoinGroupResponseMember,
    leave_group_response::MemberResponse,
    list_groups_response::ListedGroup,
    offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
    offset_fetch_request::OffsetFetchRequestGroup,
    offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    },
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::error::group_code;
use super::handlers::{Caller, Context, NODE_ID};
use crate::group::{
    ClassicJoin, ClassicState, GroupError, GroupState, MemberAssignment, TopicPartition,
};
use crate::log::{Offset, PartitionId, TopicName};
use crate::meta::{CommittedOffset, GroupId};
use crate::security::{Operation, ResourceType};

type PartitionRefusal = (i32, Option<ResponseError>);

/// FindCoordinator's key type for a transactional id.
const TRANSACTION_KEY: i8 = 1;
/// The protocol type of Kafka's consumers, whose metadata and assignments name topics.
const CONSUMER_PROTOCOL: &str = "consumer";

fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

impl Context<'_> {
    fn may_group(&self, operation: Operation, group: &str) -> bool {
        self.may_on(ResourceType::Group, group, operation)
    }

    /// The group a request names, if it is valid and the principal may do `operation` on it.
    fn group(&self, name: &WireGroup, operation: Operation) -> Result<GroupId, ResponseError> {
        let group = GroupId::new(name.0.as_str()).map_err(|_| ResponseError::InvalidGroupId)?;
        if !self.may_group(operation, group.as_str()) {
            return Err(ResponseError::GroupAuthorizationFailed);
        }
        Ok(group)
    }

    /// A group error's code, counted.
    fn group_code(&self, error: &GroupError) -> i16 {
        self.code(group_code(error))
    }

    pub(super) fn find_coordinator(
        &self,
        request: FindCoordinatorRequest,
        version: i16,
        caller: &Caller<'_>,
    ) -> FindCoordinatorResponse {
        let advertised = self.advertised(caller.local);
        let keys = if version >= 4 {
            request.coordinator_keys
        } else {
            vec![request.key]
        };
        let coordinators: Vec<WireCoordinator> = keys
            .into_iter()
            .map(|key| {
                let found = WireCoordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(str_bytes(advertised.ip().to_string()))
                    .with_port(i32::from(advertised.port()));
                let refused = if request.key_type == TRANSACTION_KEY {
                    Some(ResponseError::TransactionalIdAuthorizationFailed)
                } else if !self.may_group(Operation::Describe, key.as_str()) {
                    Some(ResponseError::GroupAuthorizationFailed)
                } else {
                    None
                };
                match refused {
                    None => found,
                    Some(error) => found
                        .with_node_id(BrokerId(-1))
                        .with_host(StrBytes::default())
                        .with_port(-1)
                        .with_error_code(self.code(error))
                        .with_error_message(Some(StrBytes::from_static_str(
                            if request.key_type == TRANSACTION_KEY {
                                "transactions are not supported"
                            } else {
                                "not authorized for the group"
                            },
                        ))),
                }
            })
            .collect();
        if version >= 4 {
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        let only = coordinators.into_iter().next().unwrap_or_default();
        FindCoordinatorResponse::default()
            .with_error_code(only.error_code)
            .with_error_message(only.error_message)
            .with_node_id(only.node_id)
            .with_host(only.host)
            .with_port(only.port)
    }

    pub(super) async fn join_group(
        &self,
        request: JoinGroupRequest,
        caller: &Caller<'_>,
    ) -> JoinGroupResponse {
        let failed = |code: i16, member_id: StrBytes| {
            JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1)
                .with_protocol_name(Some(StrBytes::default()))
                .with_member_id(member_id)
        };
        let group = match self.group(&request.group_id, Operation::Read) {
            Ok(group) => group,
            Err(error) => return failed(self.code(error), request.member_id),
        };
        let session_timeout =
            Duration::from_millis(u64::try_from(request.session_timeout_ms).unwrap_or(0));
        let rebalance_timeout = u64::try_from(request.rebalance_timeout_ms)
            .map_or(session_timeout, Duration::from_millis);
        let topics = if request.protocol_type.as_str() == CONSUMER_PROTOCOL {
            request
                .protocols
                .first()
                .map(|p| subscribed_topics(&p.metadata))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let join = ClassicJoin {
            member_id: (!request.member_id.is_empty()).then(|| request.member_id.to_string()),
            instance_id: request.group_instance_id.as_ref().map(ToString::to_string),
            client_id: caller.client_id.to_owned(),
            client_host: format!("/{}", caller.peer.ip()),
            session_timeout,
            rebalance_timeout,
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            topics,
        };
        match self.broker.coordinator.join_classic(&group, join).await {
            Ok(joined) => JoinGroupResponse::default()
                .with_generation_id(joined.generation)
                .with_protocol_type(Some(str_bytes(joined.protocol_type)))
                .with_protocol_name(Some(str_bytes(joined.protocol)))
                .with_leader(str_bytes(joined.leader))
                .with_member_id(str_bytes(joined.member_id))
                .with_members(
                    joined
                        .members
                        .into_iter()
                        .map(|m| {
                            JoinGroupResponseMember::default()
                                .with_member_id(str_bytes(m.member_id))
                                .with_group_instance_id(m.instance_id.map(str_bytes))
                                .with_metadata(m.metadata)
                        })
                        .collect(),
                ),
            Err(error) => failed(self.group_code(&error), request.member_id),
        }
    }

    pub(super) async fn sync_group(&self, request: SyncGroupRequest) -> SyncGroupResponse {
        let failed = |code: i16| SyncGroupResponse::default().with_error_code(code);
        let group = match self.group(&request.group_id, Operation::Read) {
            Ok(group) => group,
            Err(error) => return failed(self.code(error)),
        };
        let consumer = request
            .protocol_type
            .as_ref()
            .is_none_or(|t| t.as_str() == CONSUMER_PROTOCOL);
        let assignments = request
            .assignments
            .into_iter()
            .map(|a| MemberAssignment {
                member_id: a.member_id.to_string(),
                partitions: if consumer {
                    assigned_partitions(&a.assignment)
                } else {
                    Vec::new()
                },
                assignment: a.assignment,
            })
            .collect();
        match self
            .broker
            .coordinator
            .sync_classic(
                &group,
                request.member_id.as_str(),
                request.generation_id,
                assignments,
            )
            .await
        {
            Ok(assignment) => SyncGroupResponse::default()
                .with_protocol_type(request.protocol_type)
                .with_protocol_name(request.protocol_name)
                .with_assignment(assignment),
            Err(error) => failed(self.group_code(&error)),
        }
    }

    pub(super) fn heartbeat(&self, request: HeartbeatRequest) -> HeartbeatResponse {
        let outcome = self
            .group(&request.group_id, Operation::Read)
            .map_err(|error| self.code(error))
            .and_then(|group| {
                self.broker
                    .coordinator
                    .heartbeat_classic(&group, request.member_id.as_str(), request.generation_id)
                    .map_err(|error| self.group_code(&error))
            });
        HeartbeatResponse::default().with_error_code(outcome.err().unwrap_or(0))
    }

    pub(super) fn leave_group(
        &self,
        request: LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        let group = match self.group(&request.group_id, Operation::Read) {
            Ok(group) => group,
            Err(error) => return LeaveGroupResponse::default().with_error_code(self.code(error)),
        };
        let leaving: Vec<(StrBytes, Option<StrBytes>)> = if version >= 3 {
            request
                .members
                .into_iter()
                .map(|m| (m.member_id, m.group_instance_id))
                .collect()
        } else {
            vec![(request.member_id, None)]
        };
        let members: Vec<MemberResponse> = leaving
            .into_iter()
            .map(|(member_id, instance_id)| {
                let code = self
                    .broker
                    .coordinator
                    .leave_classic(&group, member_id.as_str(), instance_id.as_deref())
                    .err()
                    .map_or(0, |error| self.group_code(&error));
                MemberResponse::default()
                    .with_member_id(member_id)
                    .with_group_instance_id(instance_id)
                    .with_error_code(code)
            })
            .collect();
        if version >= 3 {
            LeaveGroupResponse::default().with_members(members)
        } else {
            let code = members.first().map_or(0, |m| m.error_code);
            LeaveGroupResponse::default().with_error_code(code)
        }
    }

    pub(super) async fn offset_commit(&self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        let group = self.group(&request.group_id, Operation::Read);
        let member = (request.generation_id_or_member_epoch >= 0 || !request.member_id.is_empty())
            .then(|| {
                (
                    request.member_id.as_str(),
                    request.generation_id_or_member_epoch,
                )
            });
        // Per topic, each partition and why it is refused, if it is.
        let mut answers: Vec<(WireTopic, Vec<PartitionRefusal>)> = Vec::new();
        let mut offsets: Vec<(TopicPartition, Offset, String)> = Vec::new();
        for topic in request.topics {
            let name = TopicName::new(topic.name.0.as_str());
            let allowed = self.may(Operation::Read, topic.name.0.as_str());
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for partition in topic.partitions {
                let refused = match (&group, &name) {
                    (Err(error), _) => Some(*error),
                    (Ok(_), _) if !allowed => Some(ResponseError::TopicAuthorizationFailed),
                    (Ok(_), Err(_)) => Some(ResponseError::UnknownTopicOrPartition),
                    (Ok(_), Ok(name))
                        if u32::try_from(partition.partition_index)
                            .ok()
                            .and_then(|index| {
                                self.broker.log.partition(name, PartitionId(index)).ok()
                            })
                            .is_none() =>
                    {
                        Some(ResponseError::UnknownTopicOrPartition)
                    }
                    (Ok(_), Ok(_)) if partition.committed_offset < 0 => {
                        Some(ResponseError::InvalidCommitOffsetSize)
                    }
                    (Ok(_), Ok(name)) => {
                        offsets.push((
                            (
                                name.clone(),
                                PartitionId(partition.partition_index.unsigned_abs()),
                            ),
                            Offset(partition.committed_offset.unsigned_abs()),
                            partition
                                .committed_metadata
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                        ));
                        None
                    }
                };
                partitions.push((partition.partition_index, refused));
            }
            answers.push((topic.name, partitions));
        }
        let committed = match (&group, offsets.is_empty()) {
            (Ok(group), false) => self
                .broker
                .coordinator
                .commit_classic(group, member, offsets)
                .await
                .err(),
            _ => None,
        };
        let topics = answers
            .into_iter()
            .map(|(name, partitions)| {
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, refused)| {
                                let code = match (refused, &committed) {
                                    (Some(error), _) => self.code(error),
                                    (None, Some(error)) => self.group_code(error),
                                    (None, None) => 0,
                                };
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetCommitResponse::default().with_topics(topics)
    }

    pub(super) fn offset_fetch(
        &self,
        request: OffsetFetchRequest,
        version: i16,
    ) -> OffsetFetchResponse {
        if version >= 8 {
            let groups = request
                .groups
                .into_iter()
                .map(|group| self.offset_fetch_group(group))
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let topics = request.topics.map(|topics| {
            topics
                .into_iter()
                .map(|t| {
                    kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopics::default()
                        .with_name(t.name)
                        .with_partition_indexes(t.partition_indexes)
                })
                .collect()
        });
        let answer = self.offset_fetch_group(
            OffsetFetchRequestGroup::default()
                .with_group_id(request.group_id)
                .with_topics(topics),
        );
        let topics = answer
            .topics
            .into_iter()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_committed_offset(p.committed_offset)
                                    .with_committed_leader_epoch(p.committed_leader_epoch)
                                    .with_metadata(p.metadata)
                                    .with_error_code(p.error_code)
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponse::default()
            .with_error_code(answer.error_code)
            .with_topics(topics)
    }

    /// One group's committed offsets: of the partitions asked, or of every partition it
    /// committed when none are named.
    fn offset_fetch_group(&self, request: OffsetFetchRequestGroup) -> OffsetFetchResponseGroup {
        let answer = OffsetFetchResponseGroup::default().with_group_id(request.group_id.clone());
        let group = match self.group(&request.group_id, Operation::Describe) {
            Ok(group) => group,
            Err(error) => return answer.with_error_code(self.code(error)),
        };
        let committed: BTreeMap<(String, i32), CommittedOffset> =
            match self.broker.coordinator.lags(&group) {
                Ok(lags) => lags
                    .into_iter()
                    .filter_map(|lag| {
                        let partition = i32::try_from(lag.partition.0).ok()?;
                        Some(((lag.topic.to_string(), partition), lag.committed?))
                    })
                    .collect(),
                Err(error) => return answer.with_error_code(self.group_code(&error)),
            };
        let offset_of = |topic: &str, partition: i32| committed.get(&(topic.to_owned(), partition));
        let wanted: Vec<(String, Vec<i32>)> = match request.topics {
            Some(topics) => topics
                .into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect(),
            None => {
                let mut all: Vec<(String, Vec<i32>)> = Vec::new();
                for (topic, index) in committed.keys() {
                    match all.last_mut() {
                        Some((last, partitions)) if last == topic => partitions.push(*index),
                        _ => all.push((topic.clone(), vec![*index])),
                    }
                }
                all.retain(|(topic, _)| self.can(ResourceType::Topic, topic, Operation::Describe));
                all
            }
        };
        let topics = wanted
            .into_iter()
            .map(|(topic, partitions)| {
                let allowed = self.may(Operation::Describe, &topic);
                let partitions = partitions
                    .into_iter()
                    .map(|index| {
                        let answer = OffsetFetchResponsePartitions::default()
                            .with_partition_index(index)
                            .with_committed_offset(-1)
                            .with_committed_leader_epoch(-1);
                        if !allowed {
                            return answer.with_error_code(
                                self.code(ResponseError::TopicAuthorizationFailed),
                            );
                        }
                        match offset_of(&topic, index) {
                            Some(committed) => answer
                                .with_committed_offset(
                                    i64::try_from(committed.offset).unwrap_or(i64::MAX),
                                )
                                .with_metadata(Some(str_bytes(committed.metadata.clone()))),
                            None => answer.with_metadata(Some(StrBytes::default())),
                        }
                    })
                    .collect();
                OffsetFetchResponseTopics::default()
                    .with_name(WireTopic(str_bytes(topic)))
                    .with_partitions(partitions)
            })
            .collect();
        answer.with_topics(topics)
    }

    pub(super) fn describe_groups(&self, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let groups = request
            .groups
            .into_iter()
            .map(|name| {
                let described = DescribedGroup::default().with_group_id(name.clone());
                let group = match self.group(&name, Operation::Describe) {
                    Ok(group) => group,
                    Err(error) => {
                        return described
                            .with_error_code(self.code(error))
                            .with_group_state(StrBytes::from_static_str("Dead"));
                    }
                };
                if let Some(classic) = self.broker.coordinator.describe_classic(&group) {
                    let protocol_data = match classic.state {
                        ClassicState::Stable | ClassicState::CompletingRebalance => {
                            classic.protocol
                        }
                        _ => String::new(),
                    };
                    return described
                        .with_group_state(StrBytes::from_static_str(classic.state.name()))
                        .with_protocol_type(str_bytes(classic.protocol_type))
                        .with_protocol_data(str_bytes(protocol_data))
                        .with_members(
                            classic
                                .members
                                .into_iter()
                                .map(|m| {
                                    DescribedGroupMember::default()
                                        .with_member_id(str_bytes(m.member_id))
                                        .with_group_instance_id(m.instance_id.map(str_bytes))
                                        .with_client_id(str_bytes(m.client_id))
                                        .with_client_host(str_bytes(m.client_host))
                                        .with_member_metadata(m.metadata)
                                        .with_member_assignment(m.assignment)
                                })
                                .collect(),
                        );
                }
                match self.broker.coordinator.describe(&group) {
                    Ok(description)
                        if description.members.is_empty() && description.offsets.is_empty() =>
                    {
                        described.with_group_state(StrBytes::from_static_str("Dead"))
                    }
                    Ok(description) => described
                        .with_group_state(StrBytes::from_static_str(state_name(description.state)))
                        .with_protocol_type(StrBytes::from_static_str(
                            if description.members.is_empty() {
                                ""
                            } else {
                                "appliance"
                            },
                        ))
                        .with_members(
                            description
                                .members
                                .into_iter()
                                .map(|m| {
                                    DescribedGroupMember::default()
                                        .with_member_id(str_bytes(m.member_id))
                                })
                                .collect(),
                        ),
                    Err(error) => described.with_error_code(self.group_code(&error)),
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    pub(super) fn list_groups(&self, request: ListGroupsRequest) -> ListGroupsResponse {
        let summaries = match self.broker.coordinator.list() {
            Ok(summaries) => summaries,
            Err(error) => {
                return ListGroupsResponse::default().with_error_code(self.group_code(&error));
            }
        };
        let groups = summaries
            .into_iter()
            .filter(|g| self.can(ResourceType::Group, g.group.as_str(), Operation::Describe))
            .filter_map(|g| {
                let (state, protocol_type) =
                    match self.broker.coordinator.describe_classic(&g.group) {
                        Some(classic) => (classic.state.name(), classic.protocol_type),
                        None => (state_name(g.state), String::new()),
                    };
                let wanted = request.states_filter.is_empty()
                    || request.states_filter.iter().any(|s| s.as_str() == state);
                wanted.then(|| {
                    ListedGroup::default()
                        .with_group_id(WireGroup(str_bytes(g.group.as_str())))
                        .with_protocol_type(str_bytes(protocol_type))
                        .with_group_state(StrBytes::from_static_str(state))
                        .with_group_type(StrBytes::from_static_str("classic"))
                })
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }
}

/// Kafka's name of a group state of the appliance's own members.
fn state_name(state: GroupState) -> &'static str {
    match state {
        GroupState::Empty => "Empty",
        GroupState::Stable => "Stable",
        GroupState::Rebalancing => "PreparingRebalance",
    }
}

/// Decodes a consumer protocol message: its version, then its body in that version (newer
/// versions read as the newest known, as Kafka's own clients do).
fn consumer_message<T: Decodable>(bytes: &Bytes, newest: i16) -> Option<T> {
    let mut buffer = bytes.clone();
    if buffer.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([buffer[0], buffer[1]]);
    bytes::Buf::advance(&mut buffer, 2);
    T::decode(&mut buffer, version.clamp(0, newest)).ok()
}

/// The topics a consumer's subscription names.
fn subscribed_topics(metadata: &Bytes) -> Vec<TopicName> {
    consumer_message::<ConsumerProtocolSubscription>(metadata, 3)
        .map(|s| {
            s.topics
                .iter()
                .filter_map(|t| TopicName::new(t.as_str()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The partitions a consumer's assignment names.
fn assigned_partitions(assignment: &Bytes) -> Vec<TopicPartition> {
    consumer_message::<ConsumerProtocolAssignment>(assignment, 3)
        .map(|a| {
            a.assigned_partitions
                .iter()
                .filter_map(|t| {
                    TopicName::new(t.topic.0.as_str())
                        .ok()
                        .map(|name| (name, &t.partitions))
                })
                .flat_map(|(name, partitions)| {
                    partitions.iter().filter_map(move |p| {
                        Some((name.clone(), PartitionId(u32::try_from(*p).ok()?)))
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
