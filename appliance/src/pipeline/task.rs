//! The task that runs one source partition of a pipeline: read, transform on a blocking
//! thread, route, append, record progress. The appends of one batch are in flight while the
//! next batch is read and transformed; its progress is recorded once they are durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;

use super::chain::{self, ChainOutput, Failure, Rejection, Step};
use super::progress::{self, Destination, Progress};
use super::{ErrorPolicy, PartitionState, PipelineSpec, Predicate, StatusCell};
use crate::log::{
    self, AppendOutcome, Header, Log, LogError, Offset, PartitionId, StoredRecord, Timestamp,
    TopicName,
};
use crate::meta::{Meta, Table};
use crate::plugin::{self, BatchInfo, Limits, Plugins};

/// How much of the source one batch reads.
const READ_BYTES: usize = 1 << 20;
const READ_WAIT: Duration = Duration::from_millis(500);
/// Output batches are cut well below the destination's `max-message-bytes`.
const OUTPUT_BATCH_SHARE: usize = 2;
/// Per-record overhead of the batch format, for cutting output batches by size.
const RECORD_OVERHEAD: usize = 32;

pub const ERROR_HEADERS: [&str; 6] = [
    "appliance.error.pipeline",
    "appliance.error.plugin",
    "appliance.error.message",
    "appliance.error.topic",
    "appliance.error.partition",
    "appliance.error.offset",
];

type Pending = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Destination, AppendOutcome), LogError>> + Send>,
>;

/// Appends submitted for one source batch, and what to record once they are durable.
struct InFlight {
    appends: Vec<Pending>,
    next: u64,
    records_out: u64,
}

pub(super) struct PartitionTask {
    pub spec: PipelineSpec,
    pub partition: PartitionId,
    pub log: Log,
    pub meta: Meta,
    pub plugins: Plugins,
    pub limits: Limits,
    pub status: Arc<StatusCell>,
    pub stop: tokio_util::sync::CancellationToken,
}

impl PartitionTask {
    pub async fn run(self) {
        if let Err(reason) = self.transform_until_stopped().await {
            tracing::warn!(
                pipeline = %self.spec.name,
                partition = self.partition.0,
                %reason,
                "pipeline partition failed"
            );
            self.status
                .update(|s| s.state = PartitionState::Failed { reason });
        } else {
            self.status.update(|s| s.state = PartitionState::Paused);
        }
    }

    async fn transform_until_stopped(&self) -> Result<(), String> {
        let steps = self.start_chain().await?;
        let progress_key = progress::key(self.spec.id, self.partition);
        let mut progress: Progress = self
            .meta
            .get(Table::PipelineProgress, &progress_key)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let mut written = HashMap::new();
        for (destination, end) in progress.destinations() {
            let upto =
                progress::written_up_to(&self.log, &destination, end, self.spec.id, self.partition)
                    .await
                    .map_err(|e| {
                        format!("scanning {} for earlier output: {e}", destination.topic)
                    })?;
            if let Some(upto) = upto {
                written.insert(destination, upto);
            }
        }
        let source = self
            .log
            .partition(&self.spec.from, self.partition)
            .map_err(|e| e.to_string())?;
        if progress.next < source.log_start().0 {
            tracing::warn!(
                pipeline = %self.spec.name,
                partition = self.partition.0,
                from = progress.next,
                to = source.log_start().0,
                "source records were deleted by retention before this pipeline transformed them"
            );
            progress.next = source.log_start().0;
        }
        let mut worker = Worker {
            task: self,
            steps: Some(steps),
            progress,
            progress_key,
            written,
        };
        worker.run(&source).await
    }

    async fn start_chain(&self) -> Result<Vec<Step>, String> {
        let mut steps = Vec::with_capacity(self.spec.transforms.len());
        for (index, transform) in self.spec.transforms.iter().enumerate() {
            let loaded = self
                .plugins
                .get(&transform.plugin)
                .await
                .map_err(|e| e.to_string())?;
            let (predicate, config) = Predicate::split_config(&transform.config)?;
            let plugins = self.plugins.clone();
            let limits = self.limits;
            let label = format!("{}/{}/{index}", self.spec.name, self.partition.0);
            let instance = tokio::task::spawn_blocking(move || {
                plugins.instantiate_transform(&loaded, &config, limits, &label)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            steps.push(Step {
                predicate,
                instance,
            });
        }
        Ok(steps)
    }
}

struct Worker<'t> {
    task: &'t PartitionTask,
    /// Away on a blocking thread while a batch is transformed.
    steps: Option<Vec<Step>>,
    progress: Progress,
    progress_key: String,
    /// Destination -> the highest source offset it already holds (found by the start scan).
    written: HashMap<Destination, u64>,
}

impl Worker<'_> {
    async fn run(&mut self, source: &log::Partition) -> Result<(), String> {
        let task = self.task;
        let mut next = self.progress.next;
        let mut in_flight: Option<InFlight> = None;
        task.status.update(|s| {
            s.state = PartitionState::Running;
            s.next_offset = next;
        });
        loop {
            let chunk = tokio::select! {
                _ = task.stop.cancelled() => break,
                chunk = source.read_wait(Offset(next), READ_BYTES, READ_WAIT) => {
                    chunk.map_err(|e| e.to_string())?
                }
            };
            task.status
                .update(|s| s.high_watermark = chunk.high_watermark.0);
            if chunk.batches.is_empty() {
                if let Some(done) = in_flight.take() {
                    self.finish(done).await?;
                }
                continue;
            }
            let records: Vec<StoredRecord> = log::decode_all(chunk.batches)
                .map_err(|e| format!("reading {}: {e}", task.spec.from))?
                .into_iter()
                .filter(|r| r.offset.0 >= next)
                .collect();
            let Some(last) = records.last().map(|r| r.offset.0) else {
                next = chunk.next_offset.0;
                continue;
            };
            let output = self.transform(&records).await.map_err(|f| f.to_string())?;
            let appends = self.append(&records, output).await?;
            if let Some(done) = in_flight.take() {
                self.finish(done).await?;
            }
            in_flight = Some(InFlight {
                records_out: appends.1,
                appends: appends.0,
                next: last + 1,
            });
            task.status.update(|s| s.records_in += records.len() as u64);
            next = last + 1;
        }
        if let Some(done) = in_flight.take() {
            self.finish(done).await?;
        }
        Ok(())
    }

    async fn transform(&mut self, records: &[StoredRecord]) -> Result<ChainOutput, Failure> {
        let info = BatchInfo {
            topic: self.task.spec.from.to_string(),
            partition: self.task.partition.0,
        };
        let input: Vec<plugin::Record> = records.iter().map(to_plugin_record).collect();
        let mut steps = self.steps.take().unwrap_or_default();
        let policy = self.task.spec.errors;
        let (steps, output) = tokio::task::spawn_blocking(move || {
            let output = chain::run(&mut steps, &info, input, policy);
            (steps, output)
        })
        .await
        .map_err(|join| {
            Failure::Plugin(plugin::PluginError::Contract {
                plugin: "(chain)".to_owned(),
                detail: format!("the transform thread stopped: {join}"),
            })
        })?;
        self.steps = Some(steps);
        output
    }

    /// Routes the output to destination partitions, adds dead letters, and submits the
    /// appends. Returns them with the number of records submitted.
    async fn append(
        &mut self,
        source: &[StoredRecord],
        output: ChainOutput,
    ) -> Result<(Vec<Pending>, u64), String> {
        let task = self.task;
        let ChainOutput {
            records,
            mut rejected,
        } = output;
        let mut routed: BTreeMap<Destination, Vec<(i64, log::Record)>> = BTreeMap::new();
        let mut partitions_of: HashMap<TopicName, u32> = HashMap::new();
        let mut resolved = Vec::with_capacity(records.len());
        for record in records {
            match self.destination_topic(&record) {
                Ok(topic) => resolved.push((topic, record)),
                Err(message) => rejected.push(Rejection {
                    offset: record.offset,
                    plugin: "(routing)".to_owned(),
                    message,
                }),
            }
        }
        if task.spec.errors == ErrorPolicy::Fail
            && let Some(rejection) = rejected.first()
        {
            return Err(Failure::Rejected(rejection.clone()).to_string());
        }
        let rejected_offsets: Vec<i64> = rejected.iter().map(|r| r.offset).collect();
        for (topic, record) in resolved {
            if rejected_offsets.contains(&record.offset) {
                continue;
            }
            let destination = destination_partition(task, &mut partitions_of, topic)
                .await
                .map_err(|e| e.to_string())?;
            routed
                .entry(destination)
                .or_default()
                .push((record.offset, to_log_record(record)));
        }
        match (task.spec.errors, &task.spec.dlq_topic) {
            (ErrorPolicy::Dlq, Some(dlq)) => {
                for rejection in &rejected {
                    let Some(original) = source
                        .iter()
                        .find(|r| r.offset.0 as i64 == rejection.offset)
                    else {
                        continue;
                    };
                    let destination = destination_partition(task, &mut partitions_of, dlq.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    let letter = dead_letter(&task.spec, task.partition, original, rejection);
                    let entries = routed.entry(destination).or_default();
                    let at = entries.partition_point(|(offset, _)| *offset <= rejection.offset);
                    entries.insert(at, (rejection.offset, letter));
                }
                let count = rejected.len() as u64;
                task.status.update(|s| s.dead_lettered += count);
            }
            _ => {
                let count = rejected.len() as u64;
                task.status.update(|s| s.skipped += count);
            }
        }
        let mut appends: Vec<Pending> = Vec::new();
        let mut submitted = 0;
        for (destination, mut entries) in routed {
            if let Some(upto) = self.written.get(&destination) {
                entries.retain(|(offset, _)| *offset as u64 > *upto);
            }
            if entries.is_empty() {
                continue;
            }
            if !self.progress.knows(&destination) {
                self.register(&destination).await?;
            }
            let target = task
                .log
                .partition(&destination.topic, destination.partition)
                .map_err(|e| e.to_string())?;
            let topic_config = task
                .log
                .topic_config(&destination.topic)
                .map_err(|e| e.to_string())?;
            let budget = topic_config.max_message_bytes as usize / OUTPUT_BATCH_SHARE;
            for mut batch in cut_by_size(entries, budget) {
                submitted += batch.len() as u64;
                let (last_offset, last) = batch.last_mut().ok_or("empty output batch")?;
                last.headers.retain(|h| h.key != progress::TAG_HEADER);
                last.headers.push(Header {
                    key: progress::TAG_HEADER.to_owned(),
                    value: Some(progress::tag(task.spec.id, task.partition, *last_offset)),
                });
                let records: Vec<log::Record> = batch.into_iter().map(|(_, r)| r).collect();
                let encoded = log::encode(&records, topic_config.compression)
                    .map_err(|e| format!("encoding output for {}: {e}", destination.topic))?;
                let durable = target
                    .submit(encoded)
                    .await
                    .map_err(|e| format!("appending to {}: {e}", destination.topic))?;
                let destination = destination.clone();
                appends.push(Box::pin(async move {
                    durable.await.map(|outcome| (destination, outcome))
                }));
            }
        }
        Ok((appends, submitted))
    }

    /// Waits until a batch's appends are durable, then records its progress (without waiting
    /// for the metadata store: an older progress is still correct, see [`progress`]).
    async fn finish(&mut self, done: InFlight) -> Result<(), String> {
        let outcomes = try_join_all(done.appends)
            .await
            .map_err(|e| format!("appending output: {e}"))?;
        for (destination, outcome) in outcomes {
            self.progress
                .set_end(&destination, outcome.last_offset.next());
        }
        self.progress.next = done.next;
        self.task
            .meta
            .put_unflushed(Table::PipelineProgress, &self.progress_key, &self.progress)
            .map_err(|e| e.to_string())?;
        let next = done.next;
        self.task.status.update(|s| {
            s.next_offset = next;
            s.records_out += done.records_out;
        });
        Ok(())
    }

    /// Enters a destination into the progress, durably, before anything is appended to it.
    async fn register(&mut self, destination: &Destination) -> Result<(), String> {
        let end = self
            .task
            .log
            .partition(&destination.topic, destination.partition)
            .map_err(|e| e.to_string())?
            .high_watermark();
        self.progress.set_end(destination, end);
        self.task
            .meta
            .put(Table::PipelineProgress, &self.progress_key, &self.progress)
            .await
            .map_err(|e| e.to_string())
    }

    fn destination_topic(&self, record: &plugin::Record) -> Result<TopicName, String> {
        let Some(routed) = &record.topic else {
            return Ok(self.task.spec.to.clone());
        };
        let topic = TopicName::new(routed.as_str())
            .map_err(|e| format!("routed to an invalid topic name: {e}"))?;
        if topic == self.task.spec.from {
            return Err(format!(
                "routed back to the source topic {topic}, which would loop"
            ));
        }
        Ok(topic)
    }
}

/// The destination partition for `topic` (created with the defaults if it does not exist):
/// the source partition modulo the topic's partitions, so order per key is kept. A free
/// function: the worker holds plugin stores, which must not be shared across an await.
async fn destination_partition(
    task: &PartitionTask,
    partitions_of: &mut HashMap<TopicName, u32>,
    topic: TopicName,
) -> Result<Destination, LogError> {
    let partitions = match partitions_of.get(&topic) {
        Some(n) => *n,
        None => {
            ensure_topic(&task.log, &topic).await?;
            let n = task.log.topic_config(&topic)?.partitions.max(1);
            partitions_of.insert(topic.clone(), n);
            n
        }
    };
    Ok(Destination {
        topic,
        partition: PartitionId(task.partition.0 % partitions),
    })
}

/// Creates `topic` with the default settings unless it exists.
pub async fn ensure_topic(log: &Log, topic: &TopicName) -> Result<(), LogError> {
    if log.topic_config(topic).is_ok() {
        return Ok(());
    }
    match log
        .create_topic(topic.clone(), log.topic_defaults().clone())
        .await
    {
        Ok(()) | Err(LogError::TopicExists { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Splits a destination's records into batches of about `budget` bytes, in order.
fn cut_by_size(entries: Vec<(i64, log::Record)>, budget: usize) -> Vec<Vec<(i64, log::Record)>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for entry in entries {
        let record = &entry.1;
        let record_size = RECORD_OVERHEAD
            + record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>();
        if !current.is_empty() && size + record_size > budget {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += record_size;
        current.push(entry);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

fn to_plugin_record(stored: &StoredRecord) -> plugin::Record {
    let record = &stored.record;
    plugin::Record {
        key: record.key.as_ref().map(|k| k.to_vec()),
        value: record.value.as_ref().map(|v| v.to_vec()),
        headers: record
            .headers
            .iter()
            .map(|h| plugin::Header {
                key: h.key.clone(),
                value: h.value.as_ref().map_or_else(Vec::new, |v| v.to_vec()),
            })
            .collect(),
        timestamp: record.timestamp.0,
        offset: stored.offset.0 as i64,
        topic: None,
    }
}

fn to_log_record(record: plugin::Record) -> log::Record {
    log::Record {
        key: record.key.map(Bytes::from),
        value: record.value.map(Bytes::from),
        headers: record
            .headers
            .into_iter()
            .map(|h| Header {
                key: h.key,
                value: Some(Bytes::from(h.value)),
            })
            .collect(),
        timestamp: Timestamp(record.timestamp),
    }
}

/// The original record with headers that say what went wrong where.
fn dead_letter(
    spec: &PipelineSpec,
    partition: PartitionId,
    original: &StoredRecord,
    rejection: &Rejection,
) -> log::Record {
    let mut letter = original.record.clone();
    let values = [
        spec.name.clone(),
        rejection.plugin.clone(),
        rejection.message.clone(),
        spec.from.to_string(),
        partition.0.to_string(),
        original.offset.0.to_string(),
    ];
    for (key, value) in ERROR_HEADERS.iter().zip(values) {
        letter.headers.push(Header {
            key: (*key).to_owned(),
            value: Some(Bytes::from(value)),
        });
    }
    letter
}
