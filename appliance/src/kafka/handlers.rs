//! What each served API does, for an authenticated principal: the same log, ACLs and quotas
//! the gRPC API uses. Every topic an answer names was authorized for the operation; a denied
//! one gets TOPIC_AUTHORIZATION_FAILED and the rest of the request goes on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, join_all};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FetchResponse,
    FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, ProduceResponse, ProducerId, SyncGroupRequest,
    TopicName as WireTopic,
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
use crate::api::{AUDIT_TOPIC, Entry, Outcome};
use crate::log::{
    AppendOutcome, BatchHeader, LogError, Offset, Partition, PartitionId, Timestamp, TopicName,
    validate_batch, visit_batch,
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
    reply: Reply,
    pub throttle: Duration,
}

/// The frame a request is answered with, once it is known.
pub enum Reply {
    /// Known now; none for a Produce with acks=0.
    Now(Option<BytesMut>),
    /// A Produce whose batches are queued on their partitions in the order it came: its
    /// frame once they are durable. Later requests are read meanwhile, and answered after it.
    Durable(BoxFuture<'static, Result<Option<BytesMut>, KafkaError>>),
}

impl Reply {
    /// The frame to send, once there is one.
    pub async fn frame(self) -> Result<Option<BytesMut>, KafkaError> {
        match self {
            Self::Now(frame) => Ok(frame),
            Self::Durable(frame) => frame.await,
        }
    }
}

impl Answer {
    /// An answer to send at once.
    pub fn now(frame: BytesMut) -> Self {
        Self {
            reply: Reply::Now(Some(frame)),
            throttle: Duration::ZERO,
        }
    }

    pub fn reply(self) -> Reply {
        self.reply
    }
}

/// A partition's part of a Produce after its batches were queued.
enum Appending {
    /// Where the first batch landed and the partition's log start, or why not.
    Done(Result<(Offset, Offset), (ResponseError, String)>),
    /// Queued on `target`: each batch's outcome once durable.
    Queued {
        target: Arc<Partition>,
        pending: Vec<BoxFuture<'static, Result<AppendOutcome, LogError>>>,
    },
}

/// A Produce whose batches are queued, per topic and partition.
pub struct QueuedProduce {
    topics: Vec<(WireTopic, Vec<(i32, Appending)>)>,
}

impl QueuedProduce {
    /// The answer once every batch is durable, and how many partitions failed.
    async fn durable(self) -> (ProduceResponse, u32) {
        let mut failed = 0;
        let mut topics = Vec::with_capacity(self.topics.len());
        for (name, partitions) in self.topics {
            let mut responses = Vec::with_capacity(partitions.len());
            for (index, appending) in partitions {
                let outcome = match appending {
                    Appending::Done(outcome) => outcome,
                    Appending::Queued { target, pending } => {
                        let mut first = Ok(None);
                        for durable in pending {
                            match durable.await {
                                Ok(outcome) => {
                                    if let Ok(first) = &mut first {
                                        first.get_or_insert(outcome.base_offset);
                                    }
                                }
                                Err(error) => {
                                    first = Err((log_code(&error), error.to_string()));
                                }
                            }
                        }
                        first.map(|first| (first.unwrap_or_default(), target.log_start()))
                    }
                };
                let response = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_log_append_time_ms(-1);
                responses.push(match outcome {
                    Ok((base_offset, log_start)) => response
                        .with_base_offset(base_offset.0 as i64)
                        .with_log_start_offset(log_start.0 as i64),
                    Err((code, message)) => {
                        failed += 1;
                        response
                            .with_error_code(code.code())
                            .with_base_offset(-1)
                            .with_log_start_offset(-1)
                            .with_error_message(Some(StrBytes::from_string(message)))
                    }
                });
            }
            topics.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(responses),
            );
        }
        (ProduceResponse::default().with_responses(topics), failed)
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
    let timer = broker.metrics.time_kafka(name);
    let context = Context {
        broker,
        principal: caller.principal,
        started: Instant::now(),
        errors: AtomicU32::new(0),
        audited: Mutex::default(),
    };
    let local = caller.local;
    let requests = context.charge(Usage::Requests, 1);
    macro_rules! answer {
        ($response:expr, $throttle:expr) => {{
            let throttle: Duration = $throttle;
            let mut response = $response;
            response.throttle_time_ms = millis(throttle);
            Answer {
                reply: Reply::Now(Some(encode(api, version, correlation_id, &response)?)),
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
            let (queued, throttle) = context.produce(request).await;
            context.audit(name, caller).await;
            let throttle = throttle.max(requests);
            let refused = context.errors.load(Ordering::Relaxed);
            let metrics = broker.metrics.clone();
            let frame = async move {
                let _timer = timer;
                let (mut response, failed) = queued.durable().await;
                if refused + failed > 0 {
                    metrics.kafka_error(name, false);
                }
                if acks == 0 {
                    return Ok(None);
                }
                response.throttle_time_ms = millis(throttle);
                encode(api, version, correlation_id, &response).map(Some)
            };
            return Ok(Answer {
                reply: Reply::Durable(Box::pin(frame)),
                throttle,
            });
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
        ApiKey::CreatePartitions => {
            let request: CreatePartitionsRequest = decode(name, body, version)?;
            answer!(context.create_partitions(request).await, requests)
        }
        ApiKey::DescribeConfigs => {
            let request: DescribeConfigsRequest = decode(name, body, version)?;
            answer!(context.describe_configs(request), requests)
        }
        _ => return Err(KafkaError::UnknownApi { key: api as i16 }),
    };
    context.audit(name, caller).await;
    if context.errors.load(Ordering::Relaxed) > 0 {
        broker.metrics.kafka_error(name, false);
    }
    drop(timer);
    Ok(answer)
}

pub(super) struct Context<'a> {
    pub(super) broker: &'a Broker,
    principal: &'a Principal,
    started: Instant,
    /// Error codes the answer carries so far.
    errors: AtomicU32,
    /// What the audit log must record of the request.
    audited: Mutex<Audited>,
}

/// A request's audit records: its first denial, and the changes it made.
#[derive(Default)]
struct Audited {
    /// The resource, and why it was denied.
    denied: Option<((ResourceType, String, Operation), String)>,
    changes: Vec<((ResourceType, String, Operation), String)>,
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

    /// Whether the principal may do `operation` on a resource the request names; a denial is
    /// recorded in the audit log.
    pub(super) fn may_on(&self, resource: ResourceType, name: &str, operation: Operation) -> bool {
        let decision =
            self.broker
                .security
                .authorizer
                .authorize(self.principal, resource, name, operation);
        if let Err(denied) = &decision {
            self.audited().denied.get_or_insert_with(|| {
                (
                    (resource, name.to_owned(), operation),
                    denied.explain(self.principal, resource, name, operation),
                )
            });
        }
        decision.is_ok()
    }

    /// Whether the principal may do `operation` on a resource, for a listing that shows only
    /// what it may see: not a denial.
    pub(super) fn can(&self, resource: ResourceType, name: &str, operation: Operation) -> bool {
        self.broker
            .security
            .authorizer
            .authorize(self.principal, resource, name, operation)
            .is_ok()
    }

    /// Records a change the request made, for the audit log.
    pub(super) fn changed(
        &self,
        resource: ResourceType,
        name: &str,
        operation: Operation,
        detail: String,
    ) {
        self.audited()
            .changes
            .push(((resource, name.to_owned(), operation), detail));
    }

    fn audited(&self) -> std::sync::MutexGuard<'_, Audited> {
        self.audited.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the request's audit records, durably: its changes, and its first denial (at
    /// most `DENIALS_PER_SECOND` a second, so a client retrying a denied topic cannot fill
    /// the disk with them).
    async fn audit(&self, api: &'static str, caller: &Caller<'_>) {
        let Audited { denied, changes } = std::mem::take(&mut *self.audited());
        let audit = &self.broker.audit;
        let denied = denied.filter(|_| audit.admits_kafka_denial());
        let records = changes
            .into_iter()
            .map(|(resource, detail)| {
                let detail = Some(detail).filter(|d| !d.is_empty());
                (resource, Outcome::Done, detail, None)
            })
            .chain(
                denied.map(|(resource, reason)| (resource, Outcome::Denied, None, Some(reason))),
            );
        for ((resource_type, resource, operation), result, detail, reason) in records {
            let entry = Entry {
                time_unix_ms: Timestamp::now().0,
                principal: Some(self.principal.to_string()),
                source: Some(caller.peer.to_string()),
                method: format!("Kafka {api}"),
                resource_type: Some(resource_type),
                resource: Some(resource),
                operation: Some(operation),
                result,
                detail,
                reason,
            };
            if let Err(error) = audit.append(&entry).await {
                tracing::warn!(%error, "cannot write an audit record of a Kafka request");
            }
        }
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
                .filter(|info| {
                    self.can(ResourceType::Topic, info.name.as_str(), Operation::Describe)
                })
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

    /// Checks, authorizes and queues every batch of a Produce on its partition, in the order
    /// the request holds them; what is left is to wait for them to be durable.
    async fn produce(&self, request: ProduceRequest) -> (QueuedProduce, Duration) {
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
                    let appending = match topic_refusal {
                        Some((code, message)) => Appending::Done(Err((code, message.to_owned()))),
                        None => self.append(name, index, partition.records).await,
                    };
                    (index, appending)
                }
            });
            topics.push((topic.name, join_all(partitions).await));
        }
        let throttle = self.charge(Usage::ProduceBytes, bytes);
        (QueuedProduce { topics }, throttle)
    }

    /// Checks the batches of one partition's records (CRC, record layout, no transactions)
    /// and queues them as they came; an idempotent producer's are stored here already, each
    /// judged by its sequence.
    async fn append(&self, topic: &str, partition: i32, records: Option<Bytes>) -> Appending {
        let failed = |error: LogError| (log_code(&error), error.to_string());
        let queued = async {
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
            if batches.iter().any(|(header, _)| header.producer_id >= 0) {
                let first = self.append_idempotent(topic, &target, batches).await?;
                return Ok(Appending::Done(Ok((first, target.log_start()))));
            }
            let mut pending = Vec::with_capacity(batches.len());
            for (_, batch) in batches {
                let durable = target.submit(BytesMut::from(batch)).await.map_err(failed)?;
                pending.push(Box::pin(durable) as BoxFuture<'static, _>);
            }
            Ok(Appending::Queued { target, pending })
        };
        queued
            .await
            .unwrap_or_else(|refused| Appending::Done(Err(refused)))
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

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
