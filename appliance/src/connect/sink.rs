//! A sink task: read the task's partitions from the group's committed offsets, run the
//! transforms, put, flush, commit.
//!
//! Task `i` of `n` takes the partitions `p` with `p mod n = i` (partitions added later are
//! picked up as they appear). Batches are put as they are read; `flush` runs once
//! [`FLUSH_BYTES`] were put, [`FLUSH_INTERVAL`] passed, or the task caught up, so a sink's own
//! durability work (an fsync, a request) is spread over many batches. Offsets are committed
//! under the group `connect-NAME` only after `flush` succeeded, so a crash puts the records
//! after the last commit again (at least once; the plugin gets topic, partition and offset to
//! write idempotently). A `put` that fails at a
//! record is retried from that record with backoff; after [`MAX_PUT_RETRIES`] the error
//! policy decides (fail the task, skip the record, or dead-letter it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Idle, Task, append_elsewhere, retry_backoff};
use crate::log::{self, LogError, Offset, PartitionId, StoredRecord};
use crate::meta::GroupId;
use crate::plugin::{self, BatchInfo, PluginError, RecordError};
use crate::runtime::State;
use crate::transform::{self, ChainOutput, ErrorPolicy, Rejection, TaskError};

/// How much of a partition one batch reads.
const READ_BYTES: usize = 1 << 20;
/// Tries of the same record before the error policy applies.
const MAX_PUT_RETRIES: u32 = 8;
/// Put this much, and the sink is flushed and the offsets committed.
const FLUSH_BYTES: usize = 8 << 20;
/// At the latest this long after the first unflushed put, the same.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

pub(super) async fn run(task: &Task) -> Result<(), TaskError> {
    let context = &task.context;
    let (loaded, label, steps) = task.prepare().await?;
    let instance = context
        .plugins
        .instantiate_sink(&loaded, &task.config, context.limits, &label)
        .await?;
    let group = task
        .spec
        .group()
        .map_err(|e| TaskError::Permanent(e.to_string()))?;
    let mut worker = Worker {
        task,
        steps,
        instance,
        group,
        next: BTreeMap::new(),
        unflushed: Unflushed::default(),
    };
    task.cell.update(|s| s.state = State::Running);
    worker.run().await
}

struct Worker<'t> {
    task: &'t Task,
    steps: Vec<transform::Step>,
    instance: plugin::SinkInstance,
    group: GroupId,
    /// Partition -> the next offset to deliver.
    next: BTreeMap<u32, u64>,
    unflushed: Unflushed,
}

/// What was put since the last flush.
#[derive(Debug, Default)]
struct Unflushed {
    /// Partition -> the offset to commit once flushed.
    commit: BTreeMap<u32, u64>,
    bytes: usize,
    records: u64,
    since: Option<Instant>,
}

impl Worker<'_> {
    async fn run(&mut self) -> Result<(), TaskError> {
        let mut idle = Idle::default();
        loop {
            self.assign()?;
            let mut delivered = false;
            let partitions: Vec<(u32, u64)> = self.next.iter().map(|(p, o)| (*p, *o)).collect();
            for (partition, offset) in partitions {
                delivered |= self.deliver_from(PartitionId(partition), offset).await?;
            }
            let due = self.unflushed.bytes >= FLUSH_BYTES
                || self
                    .unflushed
                    .since
                    .is_some_and(|since| since.elapsed() >= FLUSH_INTERVAL);
            if !self.unflushed.commit.is_empty() && (due || !delivered) {
                self.flush_and_commit().await?;
            }
            if delivered {
                idle.reset();
            } else {
                idle.wait().await;
            }
        }
    }

    /// Takes on the task's partitions it does not have yet, from the committed offsets.
    fn assign(&mut self) -> Result<(), TaskError> {
        let task = self.task;
        let log = &task.context.log;
        let partitions = log
            .topic_config(&task.spec.topic)
            .map_err(TaskError::opening(&task.spec.topic))?
            .partitions;
        for p in (task.index..partitions).step_by(task.tasks.max(1) as usize) {
            if self.next.contains_key(&p) {
                continue;
            }
            let committed = task
                .context
                .meta
                .committed_offset(&self.group, task.spec.topic.as_str(), p)
                .map_err(TaskError::meta("reading the committed offsets"))?;
            let start = match committed {
                Some(committed) => committed.offset,
                None => {
                    log.partition(&task.spec.topic, PartitionId(p))
                        .map_err(TaskError::opening(&task.spec.topic))?
                        .log_start()
                        .0
                }
            };
            self.next.insert(p, start);
        }
        Ok(())
    }

    /// Delivers one read of a partition; false when there was nothing new.
    async fn deliver_from(
        &mut self,
        partition: PartitionId,
        offset: u64,
    ) -> Result<bool, TaskError> {
        let task = self.task;
        let topic = &task.spec.topic;
        let source = task
            .context
            .log
            .partition(topic, partition)
            .map_err(TaskError::opening(topic))?;
        let chunk = match source.read(Offset(offset), READ_BYTES) {
            Err(LogError::OffsetOutOfRange { log_start, .. }) if Offset(offset) < log_start => {
                tracing::warn!(
                    connector = %task.spec.name,
                    partition = partition.0,
                    from = offset,
                    to = log_start.0,
                    "records were deleted by retention before this sink delivered them"
                );
                self.next.insert(partition.0, log_start.0);
                return Ok(true);
            }
            chunk => chunk.map_err(TaskError::log_with(|| format!("reading {topic}")))?,
        };
        if chunk.batches.is_empty() {
            return Ok(false);
        }
        let bytes = chunk.batches.len();
        let records: Vec<StoredRecord> = log::decode_all(chunk.batches)
            .map_err(TaskError::batch(|| format!("reading {topic}")))?
            .into_iter()
            .filter(|r| r.offset.0 >= offset)
            .collect();
        let Some(last) = records.last().map(|r| r.offset.0) else {
            self.next
                .insert(partition.0, chunk.next_offset.0.max(offset));
            return Ok(false);
        };
        task.cell.update(|s| s.records_in += records.len() as u64);
        let info = BatchInfo {
            topic: topic.to_string(),
            partition: partition.0,
        };
        let input: Vec<plugin::Record> = records.iter().map(transform::to_plugin_record).collect();
        let ChainOutput {
            records: output,
            rejected,
        } = transform::run_chain(&mut self.steps, &info, input, task.spec.errors).await?;
        self.reject(&records, partition, &rejected).await?;
        let put = self.put(&info, &records, output).await?;
        self.next.insert(partition.0, last + 1);
        let unflushed = &mut self.unflushed;
        unflushed.commit.insert(partition.0, last + 1);
        unflushed.bytes += bytes;
        unflushed.records += put;
        unflushed.since.get_or_insert_with(Instant::now);
        Ok(true)
    }

    /// Puts the output, retrying from the record the plugin did not take. Returns how many
    /// records were taken.
    async fn put(
        &mut self,
        info: &BatchInfo,
        source: &[StoredRecord],
        output: Vec<plugin::Record>,
    ) -> Result<u64, TaskError> {
        let mut from = 0;
        let mut taken = 0;
        let mut attempt = 0;
        while from < output.len() {
            let rest = &output[from..];
            let verdict = self.instance.put(info, rest).await?;
            let RecordError { index, message } = match verdict {
                Ok(()) => {
                    taken += rest.len() as u64;
                    break;
                }
                Err(error) => error,
            };
            let index = index as usize;
            if index >= rest.len() {
                return Err(TaskError::Plugin(PluginError::Contract {
                    plugin: self.instance.plugin().to_owned(),
                    detail: format!("it named record {index} of a batch of {}", rest.len()),
                }));
            }
            taken += index as u64;
            from += index;
            attempt += 1;
            let record = &output[from];
            if attempt <= MAX_PUT_RETRIES {
                tracing::debug!(
                    connector = %self.task.spec.name,
                    offset = record.offset,
                    attempt,
                    %message,
                    "sink put failed; retrying"
                );
                tokio::time::sleep(retry_backoff(attempt)).await;
                continue;
            }
            let rejection = Rejection {
                offset: record.offset,
                plugin: self.instance.plugin().to_owned(),
                message: format!("{message} (after {} tries)", MAX_PUT_RETRIES + 1),
            };
            if self.task.spec.errors == ErrorPolicy::Fail {
                return Err(TaskError::Rejected(rejection));
            }
            self.reject(source, PartitionId(info.partition), &[rejection])
                .await?;
            from += 1;
            attempt = 0;
        }
        Ok(taken)
    }

    /// Applies the error policy to rejected records: fail, count them skipped, or write their
    /// originals to the dead-letter topic (durably, before the offsets move past them).
    async fn reject(
        &mut self,
        source: &[StoredRecord],
        partition: PartitionId,
        rejected: &[Rejection],
    ) -> Result<(), TaskError> {
        let Some(first) = rejected.first() else {
            return Ok(());
        };
        let spec = &self.task.spec;
        let count = rejected.len() as u64;
        match (spec.errors, &spec.dlq_topic) {
            (ErrorPolicy::Dlq, Some(dlq)) => {
                let letters: Vec<log::Record> = rejected
                    .iter()
                    .filter_map(|rejection| {
                        let original = source
                            .iter()
                            .find(|r| r.offset.0 as i64 == rejection.offset)?;
                        Some(transform::dead_letter(
                            &spec.name,
                            (&spec.topic, partition),
                            rejection.offset,
                            &original.record,
                            rejection,
                        ))
                    })
                    .collect();
                append_elsewhere(&self.task.context.log, dlq, partition.0, letters).await?;
                self.task.cell.update(|s| s.dead_lettered += count);
                Ok(())
            }
            (ErrorPolicy::Skip, _) => {
                self.task.cell.update(|s| s.skipped += count);
                Ok(())
            }
            _ => Err(TaskError::Rejected(first.clone())),
        }
    }

    /// Flushes the sink, then commits the offsets after everything it was given.
    async fn flush_and_commit(&mut self) -> Result<(), TaskError> {
        let task = self.task;
        if let Err(message) = self.instance.flush().await? {
            return Err(TaskError::PluginFailed {
                plugin: format!("sink plugin {:?} flushing", self.instance.plugin()),
                message,
            });
        }
        let unflushed = std::mem::take(&mut self.unflushed);
        let offsets = unflushed
            .commit
            .iter()
            .map(|(partition, next)| {
                let partition = (task.spec.topic.clone(), PartitionId(*partition));
                (partition, Offset(*next), String::new())
            })
            .collect();
        task.context
            .groups
            .commit(&self.group, None, offsets)
            .await
            .map_err(TaskError::Commit)?;
        task.cell.update(|s| s.records_out += unflushed.records);
        Ok(())
    }
}
