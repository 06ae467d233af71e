//! What each served API does, for an authenticated principal: the same log, ACLs and quotas
//! the gRPC API uses. Every topic an answer names was authorized for the operation; a denied
//! one gets TOPIC_AUTHORIZATION_FAILED and the rest of the request goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeGroupsRequest, FetchRequest, FetchResponse,
    FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, ProduceResponse, ProducerId, SyncGroupRequest,
    TopicName as WireTopic,
    create_topics_response::CreatableTopicResult,
    delete_topics_response::DeletableTopicResult,
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
};
use kafka_protocol::protocol::StrBytes;

use super::Broker;
use super::connection::{api_name, decode, encode};
use super::error::{KafkaError, log_code};
use super::producers::{REBUILD_SEGMENTS, Sequences, Verdict, rebuild_failed};
use crate::api::AUDIT_TOPIC;
use crate::log::{
    AppendOutcome, BatchHeader, LogError, Offset, Partition, PartitionId, Timestamp, TopicConfig,
    TopicName, validate_batch, visit_batch,
};
use crate::security::{Operation, Principal, ResourceType, Usage};

/// This appliance's id as a Kafka broker: the only broker and the controller.
pub(super) const NODE_ID: i32 = 0;
/// The most a Fetch answers with, whatever the client asks.
const MAX_FETCH_BYTES: usize = 64 * 1024 * 1024;
/// The longest a Fetch waits for data.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

/// An answer and how long the client must wait before its next request (a quota's pacing).
pub struct Answer {
    frame: Option<BytesMut>,
    pub throttle: Duration,
}

impl Answer {
    /// An answer to send at once.
    pub fn now(frame: BytesMut) -> Self {
        Self {
            frame: Some(frame),
            throttle: Duration::ZERO,
        }
    }

    /// The frame to send; none for a Produce with acks=0.
    pub fn frame(self) -> Option<BytesMut> {
        self.frame
    }
}

/// Who sent a request, and where.
pub struct Caller<'a> {
    pub principal: &'a Principal,
    pub peer: SocketAddr,
    /// The address the client reached: what Metadata advertises unless configured.
    pub local: SocketAddr,
    /// As the request header names it.
    pub client_id: &'a str,
}

/// Serves one request of an authenticated client.
pub async fn handle(
    broker: &Broker,
    caller: &Caller<'_>,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &mut Bytes,
) -> Result<Answer, KafkaError> {
    let name = api_name(api);
    let _timer = broker.metrics.time_kafka(name);
    let context = Context {
        broker,
        principal: caller.principal,
        started: Instant::now(),
        errors: AtomicU32::new(0),
    };
    let local = caller.local;
    let requests = context.charge(Usage::Requests, 1);
    macro_rules! answer {
        ($response:expr, $throttle:expr) => {{
            let throttle: Duration = $throttle;
            let mut response = $response;
            response.throttle_time_ms = millis(throttle);
            Answer {
                frame: Some(encode(api, version, correlation_id, &response)?),
                throttle,
            }
        }};
    }
    let answer = match api {
        ApiKey::Metadata => {
            let request: MetadataRequest = decode(name, body, version)?;
            answer!(context.metadata(request, version, local), requests)
        }
        ApiKey::Produce => {
            let request: ProduceRequest = decode(name, body, version)?;
            let acks = request.acks;
            let (response, throttle) = context.produce(request).await;
            if acks == 0 {
                Answer {
                    frame: None,
                    throttle: throttle.max(requests),
                }
            } else {
                answer!(response, throttle.max(requests))
            }
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode(name, body, version)?;
            let (response, throttle) = context.fetch(request).await;
            answer!(response, throttle.max(requests))
        }
        ApiKey::ListOffsets => {
            let request: ListOffsetsRequest = decode(name, body, version)?;
            answer!(context.list_offsets(request), requests)
        }
        ApiKey::CreateTopics => {
            let request: CreateTopicsRequest = decode(name, body, version)?;
            answer!(context.create_topics(request).await, requests)
        }
        ApiKey::DeleteTopics => {
            let request: DeleteTopicsRequest = decode(name, body, version)?;
            answer!(context.delete_topics(request).await, requests)
        }
        ApiKey::InitProducerId => {
            let request: InitProducerIdRequest = decode(name, body, version)?;
            answer!(context.init_producer_id(request).await, requests)
        }
        ApiKey::FindCoordinator => {
            let request: FindCoordinatorRequest = decode(name, body, version)?;
            answer!(context.find_coordinator(request, version, caller), requests)
        }
        ApiKey::JoinGroup => {
            let request: JoinGroupRequest = decode(name, body, version)?;
            answer!(context.join_group(request, caller).await, requests)
        }
        ApiKey::SyncGroup => {
            let request: SyncGroupRequest = decode(name, body, version)?;
            answer!(context.sync_group(request).await, requests)
        }
        ApiKey::Heartbeat => {
            let request: HeartbeatRequest = decode(name, body, version)?;
            answer!(context.heartbeat(request), requests)
        }
        ApiKey::LeaveGroup => {
            let request: LeaveGroupRequest = decode(name, body, version)?;
            answer!(context.leave_group(request, version), requests)
        }
        ApiKey::OffsetCommit => {
            let request: OffsetCommitRequest = decode(name, body, version)?;
            answer!(context.offset_commit(request).await, requests)
        }
        ApiKey::OffsetFetch => {
            let request: OffsetFetchRequest = decode(name, body, version)?;
            answer!(context.offset_fetch(request, version), requests)
        }
        ApiKey::DescribeGroups => {
            let request: DescribeGroupsRequest = decode(name, body, version)?;
            answer!(context.describe_groups(request), requests)
        }
        ApiKey::ListGroups => {
            let request: ListGroupsRequest = decode(name, body, version)?;
            answer!(context.list_groups(request), requests)
        }
        _ => return Err(KafkaError::UnknownApi { key: api as i16 }),
    };
    if context.errors.load(Ordering::Relaxed) > 0 {
        broker.metrics.kafka_error(name, false);
    }
    Ok(answer)
}

pub(super) struct Context<'a> {
    pub(super) broker: &'a Broker,
    principal: &'a Principal,
    started: Instant,
    /// Error codes the answer carries so far.
    errors: AtomicU32,
}

impl Context<'_> {
    /// `error`'s code, counted for the metrics.
    pub(super) fn code(&self, error: ResponseError) -> i16 {
        self.errors.fetch_add(1, Ordering::Relaxed);
        error.code()
    }

    /// How long the principal must wait for `amount` more of `usage`; counted for the
    /// metrics as the gRPC API counts it.
    fn charge(&self, usage: Usage, amount: u64) -> Duration {
        let wait = self
            .broker
            .security
            .quotas
            .charge(self.principal, usage, amount, self.started);
        self.broker
            .metrics
            .used(self.principal, usage, amount, wait);
        wait
    }

    pub(super) fn may(&self, operation: Operation, topic: &str) -> bool {
        self.may_on(ResourceType::Topic, topic, operation)
    }

    pub(super) fn may_on(&self, resource: ResourceType, name: &str, operation: Operation) -> bool {
        self.broker
            .security
            .authorizer
            .authorize(self.principal, resource, name, operation)
            .is_ok()
    }

    /// Where clients are told to connect: configured, or the address this one reached.
    pub(super) fn advertised(&self, local: SocketAddr) -> SocketAddr {
        self.broker.settings.advertised.unwrap_or(local)
    }

    fn metadata(
        &self,
        request: MetadataRequest,
        version: i16,
        local: SocketAddr,
    ) -> MetadataResponse {
        let advertised = self.advertised(local);
        let broker = MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(advertised.ip().to_string()))
            .with_port(i32::from(advertised.port()));
        let log = &self.broker.log;
        // v0 asks for every topic with an empty list; later versions with none.
        let requested: Option<Vec<String>> = request
            .topics
            .filter(|topics| version > 0 || !topics.is_empty())
            .map(|topics| {
                topics
                    .into_iter()
                    .filter_map(|topic| topic.name.map(|name| name.0.to_string()))
                    .collect()
            });
        let topics = match requested {
            None => log
                .list_topics()
                .into_iter()
                .filter(|info| self.may(Operation::Describe, info.name.as_str()))
                .map(|info| described_topic(info.name.as_str(), info.partitions.len()))
                .collect(),
            Some(names) => names
                .iter()
                .map(|name| {
                    if !self.may(Operation::Describe, name) {
                        return described_topic(name, 0)
                            .with_error_code(self.code(ResponseError::TopicAuthorizationFailed));
                    }
                    match TopicName::new(name.as_str()).and_then(|topic| log.topic_info(&topic)) {
                        Ok(info) => described_topic(name, info.partitions.len()),
                        Err(error) => {
                            described_topic(name, 0).with_error_code(self.code(log_code(&error)))
                        }
                    }
                })
                .collect(),
        };
        MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_cluster_id(Some(StrBytes::from_static_str("appliance")))
            .with_controller_id(BrokerId(NODE_ID))
            .with_topics(topics)
    }

    async fn produce(&self, request: ProduceRequest) -> (ProduceResponse, Duration) {
        let mut bytes = 0u64;
        let mut topics = Vec::with_capacity(request.topic_data.len());
        let refused = request.transactional_id.is_some().then_some((
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported (docs/kafka.md)",
        ));
        let acks_invalid = !matches!(request.acks, -1..=1);
        for topic in request.topic_data {
            let name = topic.name.0.to_string();
            let topic_refusal = refused
                .or(acks_invalid.then_some((
                    ResponseError::InvalidRequiredAcks,
                    "acks is -1 (all), 0 or 1",
                )))
                .or(
                    (name == AUDIT_TOPIC || !self.may(Operation::Write, &name)).then_some((
                        ResponseError::TopicAuthorizationFailed,
                        "no ACL allows this principal to write the topic",
                    )),
                );
            let partitions = topic.partition_data.into_iter().map(|partition| {
                bytes += partition.records.as_ref().map_or(0, |r| r.len() as u64);
                let index = partition.index;
                let name = name.as_str();
                async move {
                    let outcome = match topic_refusal {
                        Some((code, message)) => Err((code, message.to_owned())),
                        None => self.append(name, index, partition.records).await,
                    };
                    let response = PartitionProduceResponse::default().with_index(index);
                    match outcome {
                        Ok((base_offset, log_start)) => response
                            .with_base_offset(base_offset.0 as i64)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(log_start.0 as i64),
                        Err((code, message)) => response
                            .with_error_code(self.code(code))
                            .with_base_offset(-1)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(-1)
                            .with_error_message(Some(StrBytes::from_string(message))),
                    }
                }
            });
            let partition_responses = join_all(partitions).await;
            topics.push(
                TopicProduceResponse::default()
                    .with_name(topic.name)
                    .with_partition_responses(partition_responses),
            );
        }
        let throttle = self.charge(Usage::ProduceBytes, bytes);
        (ProduceResponse::default().with_responses(topics), throttle)
    }

    /// Stores the batches of one partition's records as they came, each checked (CRC, record
    /// layout, no transactions, an idempotent producer's sequence); where the first landed
    /// (for a retried batch: where it landed the first time) and the partition's log start.
    async fn append(
        &self,
        topic: &str,
        partition: i32,
        records: Option<Bytes>,
    ) -> Result<(Offset, Offset), (ResponseError, String)> {
        let failed = |error: LogError| (log_code(&error), error.to_string());
        let target = self.partition(topic, partition).map_err(failed)?;
        let mut records = records.unwrap_or_default();
        let mut batches = Vec::new();
        while !records.is_empty() {
            let header = validate_batch(&records).map_err(|e| failed(e.into()))?;
            let batch = records.split_to(header.total_len);
            visit_batch(&header, batch.clone(), |_| {}).map_err(|e| failed(e.into()))?;
            batches.push((header, batch));
        }
        if batches.is_empty() {
            return Err((
                ResponseError::CorruptMessage,
                "the request holds no record batch for the partition".to_owned(),
            ));
        }
        let first = if batches.iter().any(|(header, _)| header.producer_id >= 0) {
            self.append_idempotent(topic, &target, batches).await?
        } else {
            let mut pending = Vec::with_capacity(batches.len());
            for (_, batch) in batches {
                pending.push(target.submit(BytesMut::from(batch)).await.map_err(failed)?);
            }
            let mut first = None;
            for appended in pending {
                let outcome: AppendOutcome = appended.await.map_err(failed)?;
                first.get_or_insert(outcome.base_offset);
            }
            first.expect("at least one batch")
        };
        Ok((first, target.log_start()))
    }

    /// [`Context::append`] of batches of which some come from idempotent producers: decided and
    /// stored one at a time under the partition's sequence lock, so that each is judged
    /// against every batch stored before it.
    async fn append_idempotent(
        &self,
        topic: &str,
        target: &Arc<Partition>,
        batches: Vec<(BatchHeader, Bytes)>,
    ) -> Result<Offset, (ResponseError, String)> {
        let failed = |error: LogError| (log_code(&error), error.to_string());
        let topic = TopicName::new(topic).map_err(failed)?;
        let cell = self.broker.sequences.of(&topic, target.id());
        let mut state = cell.lock().await;
        let current = state
            .as_ref()
            .is_some_and(|(read_from, _)| std::ptr::eq(read_from.as_ptr(), Arc::as_ptr(target)));
        if !current {
            let mut headers = Vec::new();
            target
                .visit_recent_headers(REBUILD_SEGMENTS, |header| headers.push(*header))
                .map_err(|e| (log_code(&e), rebuild_failed(&e)))?;
            *state = Some((Arc::downgrade(target), Sequences::rebuilt(headers)));
        }
        let mut first = None;
        for (mut header, batch) in batches {
            let (_, sequences) = state.as_mut().expect("rebuilt above");
            let verdict = match header.producer_id {
                id if id >= 0 => sequences.check(&header),
                _ => Verdict::Append,
            };
            let offset = match verdict {
                Verdict::Duplicate(offset) => offset,
                Verdict::Refuse(code, message) => return Err((code, message)),
                Verdict::Append => match target.append(BytesMut::from(batch)).await {
                    Ok(outcome) => {
                        header.base_offset = outcome.base_offset;
                        if header.producer_id >= 0 {
                            sequences.record(&header);
                        }
                        outcome.base_offset
                    }
                    Err(error) => {
                        // Whether it was stored is not known here: read it back next time.
                        *state = None;
                        return Err(failed(error));
                    }
                },
            };
            first.get_or_insert(offset);
        }
        Ok(first.expect("at least one batch"))
    }

    fn partition(&self, topic: &str, partition: i32) -> Result<Arc<Partition>, LogError> {
        let name = TopicName::new(topic)?;
        let id = u32::try_from(partition).map_err(|_| LogError::UnknownPartition {
            topic: name.clone(),
            partition: PartitionId(u32::MAX),
            partitions: 0,
        })?;
        self.broker.log.partition(&name, PartitionId(id))
    }

    async fn fetch(&self, request: FetchRequest) -> (FetchResponse, Duration) {
        let max_total = usize::try_from(request.max_bytes)
            .unwrap_or(MAX_FETCH_BYTES)
            .clamp(1, MAX_FETCH_BYTES);
        let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
        let max_wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
            .min(MAX_FETCH_WAIT);
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let (topics, bytes, watches) = self.fetch_once(&request, max_total);
            let waited_enough = tokio::time::Instant::now() >= deadline;
            if bytes >= min_bytes.max(1) || waited_enough || watches.is_empty() {
                let throttle = self.charge(Usage::FetchBytes, bytes as u64);
                return (FetchResponse::default().with_responses(topics), throttle);
            }
            let changed = watches.into_iter().map(|mut watch| {
                Box::pin(async move {
                    let _ = watch.changed().await;
                })
            });
            let _ =
                tokio::time::timeout_at(deadline, futures_util::future::select_all(changed)).await;
        }
    }

    /// One pass over the requested partitions: the answer, its record bytes, and a watch on
    /// the high watermark of every partition that answered without error.
    fn fetch_once(
        &self,
        request: &FetchRequest,
        max_total: usize,
    ) -> (
        Vec<FetchableTopicResponse>,
        usize,
        Vec<tokio::sync::watch::Receiver<Offset>>,
    ) {
        let mut total = 0usize;
        let mut watches = Vec::new();
        let mut topics = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let name = topic.topic.0.as_str();
            let allowed = self.may(Operation::Read, name);
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for wanted in &topic.partitions {
                let answer = PartitionData::default()
                    .with_partition_index(wanted.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_preferred_read_replica(BrokerId(-1));
                if !allowed {
                    partitions.push(
                        answer.with_error_code(self.code(ResponseError::TopicAuthorizationFailed)),
                    );
                    continue;
                }
                let read = self
                    .partition(name, wanted.partition)
                    .and_then(|partition| {
                        let offset = u64::try_from(wanted.fetch_offset).map_err(|_| {
                            LogError::OffsetOutOfRange {
                                topic: TopicName::new(name).expect("a partition was found"),
                                partition: partition.id(),
                                offset: Offset(0),
                                log_start: partition.log_start(),
                                high_watermark: partition.high_watermark(),
                            }
                        })?;
                        // The first partition always gets at least one batch, as Kafka's
                        // max.bytes promises, so a batch larger than the limit still flows.
                        let room = if total == 0 {
                            1
                        } else {
                            max_total.saturating_sub(total)
                        };
                        let partition_max =
                            usize::try_from(wanted.partition_max_bytes).unwrap_or(0);
                        let chunk = if room == 0 || partition_max == 0 {
                            None
                        } else {
                            Some(partition.read(Offset(offset), partition_max.min(room.max(1)))?)
                        };
                        Ok((partition, chunk))
                    });
                match read {
                    Ok((partition, chunk)) => {
                        watches.push(partition.watch_high_watermark());
                        let high_watermark = partition.high_watermark().0 as i64;
                        let records = chunk.map(|c| c.batches).unwrap_or_default();
                        total += records.len();
                        partitions.push(
                            answer
                                .with_high_watermark(high_watermark)
                                .with_last_stable_offset(high_watermark)
                                .with_log_start_offset(partition.log_start().0 as i64)
                                .with_records(Some(records)),
                        );
                    }
                    Err(error) => {
                        partitions.push(answer.with_error_code(self.code(log_code(&error))));
                    }
                }
            }
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(topic.topic.clone())
                    .with_partitions(partitions),
            );
        }
        (topics, total, watches)
    }

    fn list_offsets(&self, request: ListOffsetsRequest) -> ListOffsetsResponse {
        let topics = request
            .topics
            .into_iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let allowed = self.may(Operation::Describe, &name);
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|wanted| {
                        let answer = ListOffsetsPartitionResponse::default()
                            .with_partition_index(wanted.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1);
                        if !allowed {
                            return answer.with_error_code(
                                self.code(ResponseError::TopicAuthorizationFailed),
                            );
                        }
                        match self.offset_for(&name, wanted.partition_index, wanted.timestamp) {
                            Ok(Some(offset)) => answer.with_offset(offset.0 as i64),
                            Ok(None) => answer,
                            Err(code) => answer.with_error_code(self.code(code)),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect();
        ListOffsetsResponse::default().with_topics(topics)
    }

    /// The offset ListOffsets answers for `timestamp` (or earliest, or latest).
    fn offset_for(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<Offset>, ResponseError> {
        let partition = self.partition(topic, partition).map_err(|e| log_code(&e))?;
        match timestamp {
            EARLIEST => Ok(Some(partition.log_start())),
            LATEST => Ok(Some(partition.high_watermark())),
            target if target >= 0 => partition
                .offset_for_timestamp(Timestamp(target))
                .map_err(|e| log_code(&e)),
            _ => Err(ResponseError::InvalidRequest),
        }
    }

    async fn create_topics(&self, request: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut results = Vec::with_capacity(request.topics.len());
        for topic in request.topics {
            let name = topic.name.0.to_string();
            let outcome = self
                .create_topic(
                    &name,
                    topic.num_partitions,
                    topic.replication_factor,
                    &topic.configs,
                    request.validate_only,
                )
                .await;
            let mut result = CreatableTopicResult::default().with_name(topic.name);
            match outcome {
                Ok(partitions) => {
                    result = result
                        .with_num_partitions(partitions as i32)
                        .with_replication_factor(1);
                }
                Err((code, message)) => {
                    result = result
                        .with_error_code(self.code(code))
                        .with_error_message(Some(StrBytes::from_string(message)))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1);
                }
            }
            results.push(result);
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[kafka_protocol::messages::create_topics_request::CreatableTopicConfig],
        validate_only: bool,
    ) -> Result<u32, (ResponseError, String)> {
        if !self.may(Operation::Create, name) {
            return Err((
                ResponseError::TopicAuthorizationFailed,
                "no ACL allows this principal to create the topic".to_owned(),
            ));
        }
        if !matches!(replication_factor, -1 | 1) {
            return Err((
                ResponseError::InvalidReplicationFactor,
                "an appliance is one broker: the replication factor is 1 (or -1 for the default)"
                    .to_owned(),
            ));
        }
        let log = &self.broker.log;
        let mut config: TopicConfig = log.topic_defaults().clone();
        if partitions != -1 {
            config.partitions = u32::try_from(partitions).map_err(|_| {
                (
                    ResponseError::InvalidPartitions,
                    "partitions is 1 or more (or -1 for the default)".to_owned(),
                )
            })?;
        }
        for entry in configs {
            apply_config(&mut config, entry.name.as_str(), entry.value.as_deref())
                .map_err(|message| (ResponseError::InvalidConfig, message))?;
        }
        let failed = |error: LogError| (log_code(&error), error.to_string());
        let topic = TopicName::new(name).map_err(failed)?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(failed(LogError::InvalidTopicConfig { problems }));
        }
        let partitions = config.partitions;
        if validate_only {
            return match log.topic_info(&topic) {
                Ok(_) => Err(failed(LogError::TopicExists { topic })),
                Err(_) => Ok(partitions),
            };
        }
        log.create_topic(topic, config).await.map_err(failed)?;
        Ok(partitions)
    }

    /// A producer id for an idempotent producer, or the next epoch of the one it had.
    /// Transactions are refused: the log keeps no transaction markers.
    async fn init_producer_id(&self, request: InitProducerIdRequest) -> InitProducerIdResponse {
        let response = InitProducerIdResponse::default();
        if request.transactional_id.is_some() {
            return response
                .with_error_code(self.code(ResponseError::TransactionalIdAuthorizationFailed))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
        }
        if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
            // A producer that lost track of its sequences asks for a new epoch of its id.
            let epoch = request.producer_epoch.checked_add(1);
            if let Some(epoch) = epoch {
                return response
                    .with_producer_id(request.producer_id)
                    .with_producer_epoch(epoch);
            }
        }
        match self.broker.producer_ids.next().await {
            Ok(id) => response
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(error) => {
                tracing::warn!(%error, "no producer id could be reserved");
                response
                    .with_error_code(self.code(ResponseError::KafkaStorageError))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        }
    }

    async fn delete_topics(&self, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let mut names: Vec<WireTopic> = request.topic_names;
        names.extend(request.topics.into_iter().filter_map(|t| t.name));
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            let text = name.0.to_string();
            let outcome = if text == AUDIT_TOPIC || !self.may(Operation::Delete, &text) {
                Err((
                    ResponseError::TopicAuthorizationFailed,
                    "no ACL allows this principal to delete the topic".to_owned(),
                ))
            } else {
                match TopicName::new(text.as_str()) {
                    Ok(topic) => self.broker.log.delete_topic(&topic).await,
                    Err(error) => Err(error),
                }
                .map_err(|error| (log_code(&error), error.to_string()))
            };
            let mut result = DeletableTopicResult::default().with_name(Some(name));
            if let Err((code, message)) = outcome {
                result = result
                    .with_error_code(self.code(code))
                    .with_error_message(Some(StrBytes::from_string(message)));
            }
            results.push(result);
        }
        DeleteTopicsResponse::default().with_responses(results)
    }
}

fn described_topic(name: &str, partitions: usize) -> MetadataResponseTopic {
    let partitions = (0..partitions as i32)
        .map(|index| {
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(NODE_ID))
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(WireTopic(StrBytes::from_string(name.to_owned()))))
        .with_is_internal(name == AUDIT_TOPIC)
        .with_partitions(partitions)
}

/// A Kafka topic setting of CreateTopics, in the appliance's topic configuration.
fn apply_config(config: &mut TopicConfig, key: &str, value: Option<&str>) -> Result<(), String> {
    let Some(value) = value else {
        return Ok(());
    };
    let number = |value: &str| -> Result<i64, String> {
        value
            .parse()
            .map_err(|_| format!("{key} is a number, not {value:?}"))
    };
    let at_most_forever = |n: i64| u64::try_from(n).ok();
    match key {
        "retention.ms" => config.retention_ms = at_most_forever(number(value)?),
        "retention.bytes" => config.retention_bytes = at_most_forever(number(value)?),
        "segment.bytes" => {
            config.segment_bytes =
                u64::try_from(number(value)?).map_err(|_| format!("{key} is positive"))?;
        }
        "segment.ms" => {
            config.segment_ms =
                u64::try_from(number(value)?).map_err(|_| format!("{key} is positive"))?;
        }
        "max.message.bytes" => {
            config.max_message_bytes =
                u32::try_from(number(value)?).map_err(|_| format!("{key} is positive"))?;
        }
        "compression.type" => {
            config.compression = match value {
                "producer" | "uncompressed" => crate::log::Compression::None,
                "gzip" => crate::log::Compression::Gzip,
                "lz4" => crate::log::Compression::Lz4,
                "zstd" => crate::log::Compression::Zstd,
                "snappy" => crate::log::Compression::Snappy,
                other => return Err(format!("compression.type {other:?} is not known")),
            }
        }
        // Settings of replicated clusters: one broker has nothing to set.
        "min.insync.replicas" | "unclean.leader.election.enable" => {}
        other => {
            return Err(format!(
                "{other} is not a topic setting the appliance has (docs/kafka.md lists them)"
            ));
        }
    }
    Ok(())
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
