//! The `Records` service: produce (unary and streaming), fetch, and group subscriptions.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use appliance_proto::v1 as pb;
use appliance_proto::v1::records_server::Records;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::access::{Call, Calls};
use super::convert::{consumed, group_id, record, topic_name, topic_partition};
use super::error::invalid;
use crate::group::{Coordinator, Delivery, StartPosition};
use crate::log::{
    AppendOutcome, Log, LogError, Offset, PartitionId, Timestamp, decode_all, encode,
    partition_for_key,
};
use crate::security::{Operation, ResourceType, Rpc, Usage};

/// Fetches return about this much unless the request asks for less.
const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// The longest long-poll a fetch may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Batches one ProduceStream may have submitted and not yet durable.
const STREAM_IN_FLIGHT: usize = 64;
/// Messages a subscription may have queued for a slow client.
const SUBSCRIBE_QUEUE: usize = 4;

/// A request's `max_bytes`, where 0 means the default.
fn max_bytes(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_MAX_BYTES,
        n => n as usize,
    }
}

type Durable = Pin<Box<dyn Future<Output = Result<AppendOutcome, LogError>> + Send>>;

/// One batch of a produce request, submitted to its partition.
struct Submitted {
    partition: PartitionId,
    /// Positions of the batch's records in the request.
    indices: Vec<usize>,
    durable: Durable,
}

#[derive(Debug)]
pub struct RecordsService {
    pub log: Log,
    pub coordinator: Coordinator,
    pub calls: Calls,
    /// Keyless records go to partitions in turn, one request (one batch) at a time.
    pub round_robin: Arc<AtomicU32>,
    /// Ends subscriptions and long-polls, so that shutdown does not wait for clients.
    pub shutdown: CancellationToken,
}

impl RecordsService {
    /// Splits the request by partition and submits one batch per partition, in order.
    async fn submit(
        &self,
        call: &Call,
        request: pb::ProduceRequest,
    ) -> Result<Vec<Submitted>, Status> {
        let topic = topic_name("topic", &request.topic)?;
        call.authorize(topic.as_str())?;
        if request.records.is_empty() {
            return Err(invalid(
                "records",
                "a produce request needs at least one record",
            ));
        }
        let config = self.log.topic_config(&topic)?;
        let mut by_partition: BTreeMap<PartitionId, Vec<usize>> = BTreeMap::new();
        let keyless =
            PartitionId(self.round_robin.fetch_add(1, Ordering::Relaxed) % config.partitions);
        for (index, record) in request.records.iter().enumerate() {
            let partition = match (request.partition, &record.key) {
                (Some(partition), _) => PartitionId(partition),
                (None, Some(key)) => partition_for_key(key, config.partitions),
                (None, None) => keyless,
            };
            by_partition.entry(partition).or_default().push(index);
        }
        let now = Timestamp::now();
        let mut records: Vec<Option<pb::Record>> = request.records.into_iter().map(Some).collect();
        let mut submitted = Vec::with_capacity(by_partition.len());
        for (partition, indices) in by_partition {
            let batch: Vec<_> = indices
                .iter()
                .filter_map(|&i| records[i].take().map(|r| record(r, now)))
                .collect();
            let encoded = encode(&batch, config.compression).map_err(LogError::InvalidBatch)?;
            let handle = self.log.partition(&topic, partition)?;
            call.throttle()
                .charge(Usage::ProduceBytes, encoded.len() as u64)
                .await;
            let durable = handle.submit(encoded).await?;
            submitted.push(Submitted {
                partition,
                indices,
                durable: Box::pin(durable),
            });
        }
        Ok(submitted)
    }
}

#[tonic::async_trait]
impl Records for RecordsService {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Produce)?;
        let count = request.records.len();
        let submitted = self.submit(&call, request).await?;
        let mut positions = vec![pb::RecordPosition::default(); count];
        for batch in submitted {
            let outcome = batch.durable.await?;
            for (k, index) in batch.indices.into_iter().enumerate() {
                positions[index] = pb::RecordPosition {
                    partition: batch.partition.0,
                    offset: outcome.base_offset.0 + k as u64,
                };
            }
        }
        Ok(Response::new(pb::ProduceResponse { positions }))
    }

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<pb::ProduceStreamResponse>, Status> {
        let (call, mut stream) = self.calls.start(request, Rpc::ProduceStream)?;
        let mut in_flight: VecDeque<Submitted> = VecDeque::new();
        let mut last: BTreeMap<PartitionId, Offset> = BTreeMap::new();
        let mut records = 0u64;
        let mut settle = |batch: Submitted, outcome: AppendOutcome| {
            records += batch.indices.len() as u64;
            let entry = last.entry(batch.partition).or_default();
            *entry = (*entry).max(outcome.last_offset);
        };
        while let Some(message) = stream.next().await {
            in_flight.extend(self.submit(&call, message?).await?);
            while in_flight.len() > STREAM_IN_FLIGHT {
                if let Some(mut oldest) = in_flight.pop_front() {
                    let outcome = (&mut oldest.durable).await?;
                    settle(oldest, outcome);
                }
            }
        }
        for mut batch in in_flight {
            let outcome = (&mut batch.durable).await?;
            settle(batch, outcome);
        }
        Ok(Response::new(pb::ProduceStreamResponse {
            records,
            last_positions: last
                .into_iter()
                .map(|(partition, offset)| pb::RecordPosition {
                    partition: partition.0,
                    offset: offset.0,
                })
                .collect(),
        }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Fetch)?;
        let topic = topic_name("topic", &request.topic)?;
        call.authorize(topic.as_str())?;
        let partition = PartitionId(request.partition);
        let max_bytes = max_bytes(request.max_bytes);
        let wait = Duration::from_millis(u64::from(request.max_wait_ms)).min(MAX_WAIT);
        let offset = Offset(request.offset);
        let chunk = tokio::select! {
            chunk = self.log.read(&topic, partition, offset, max_bytes, wait) => chunk?,
            () = self.shutdown.cancelled() => return Err(Status::unavailable("the appliance is shutting down")),
        };
        call.throttle()
            .charge(Usage::FetchBytes, chunk.batches.len() as u64)
            .await;
        let records = decode_all(chunk.batches).map_err(LogError::InvalidBatch)?;
        Ok(Response::new(pb::FetchResponse {
            records: records
                .into_iter()
                .filter(|r| r.offset >= offset)
                .map(|r| consumed(&topic, partition, r))
                .collect(),
            next_offset: chunk.next_offset.0,
            high_watermark: chunk.high_watermark.0,
            log_start_offset: chunk.log_start.0,
        }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Lookup)?;
        let topic = topic_name("topic", &request.topic)?;
        call.authorize(topic.as_str())?;
        let partitions = self.log.topic_config(&topic)?.partitions;
        let partition = request
            .partition
            .map_or_else(|| partition_for_key(&request.key, partitions), PartitionId);
        let handle = self.log.partition(&topic, partition)?;
        let key = request.key;
        let found = tokio::task::spawn_blocking(move || handle.lookup(&key))
            .await
            .map_err(|e| Status::internal(format!("lookup failed: {e}")))??;
        if let Some(stored) = &found {
            call.throttle()
                .charge(Usage::FetchBytes, stored.record.payload_len() as u64)
                .await;
        }
        Ok(Response::new(pb::LookupResponse {
            record: found.map(|stored| consumed(&topic, partition, stored)),
        }))
    }

    type SubscribeStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (call, request) = self.calls.start(request, Rpc::Subscribe)?;
        let group = group_id("group", &request.group)?;
        let topics = request
            .topics
            .iter()
            .map(|t| topic_name("topics", t))
            .collect::<Result<Vec<_>, _>>()?;
        call.authorize(group.as_str())?;
        for topic in &topics {
            call.authorize_on(ResourceType::Topic, topic.as_str(), Operation::Read)?;
        }
        let start = match pb::StartPosition::try_from(request.start) {
            Ok(pb::StartPosition::Latest) => StartPosition::Latest,
            Ok(pb::StartPosition::Earliest | pb::StartPosition::Unspecified) => {
                StartPosition::Earliest
            }
            Err(_) => return Err(invalid("start", "unknown start position")),
        };
        let max_bytes = max_bytes(request.max_bytes);
        let session_timeout = (request.session_timeout_ms != 0)
            .then(|| Duration::from_millis(request.session_timeout_ms.into()));
        let mut membership =
            self.coordinator
                .join(group, topics, start, max_bytes, session_timeout)?;
        let (sender, receiver) = mpsc::channel(SUBSCRIBE_QUEUE);
        let shutdown = self.shutdown.clone();
        let throttle = call.throttle().clone();
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = sender.closed() => break,
                    () = shutdown.cancelled() => break,
                    delivery = membership.next() => delivery,
                };
                if let Ok(Delivery::Records { records, .. }) = &delivery {
                    let bytes: usize = records.iter().map(|r| r.record.payload_len()).sum();
                    tokio::select! {
                        () = sender.closed() => break,
                        () = shutdown.cancelled() => break,
                        () = throttle.charge(Usage::FetchBytes, bytes as u64) => {}
                    }
                }
                let message = delivery
                    .map_err(Status::from)
                    .map(|delivery| match delivery {
                        Delivery::Assignment {
                            member_id,
                            generation,
                            partitions,
                            session_timeout,
                        } => pb::subscribe_response::Message::Assignment(pb::Assignment {
                            member_id,
                            generation,
                            partitions: partitions
                                .iter()
                                .map(|(topic, partition)| topic_partition(topic, *partition))
                                .collect(),
                            session_timeout_ms: u32::try_from(session_timeout.as_millis())
                                .unwrap_or(u32::MAX),
                        }),
                        Delivery::Records {
                            topic,
                            partition,
                            records,
                        } => pb::subscribe_response::Message::Records(pb::RecordBatch {
                            records: records
                                .into_iter()
                                .map(|r| consumed(&topic, partition, r))
                                .collect(),
                        }),
                    });
                let failed = message.is_err();
                let response = message.map(|message| pb::SubscribeResponse {
                    message: Some(message),
                });
                if sender.send(response).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
