//! A source task: poll the plugin, run the transforms, append, record the position.
//!
//! Exactly once without transactions. A task writes each poll's records to one partition of
//! the connector's topic (task index mod partitions, fixed at its first start), so a poll's
//! output is one append (more only when it exceeds the topic's batch size). The last record
//! of each append carries [`SOURCE_TAG_HEADER`] = `ID:TASK` and [`POSITION_HEADER`] = the
//! source position after the last source record the append completes. After the append is
//! durable, [`SourceProgress`] (partition, end of what is accounted for, position) is written
//! to meta without waiting for it. On start, the partition's tail past the recorded end is
//! scanned for this task's tags: the newest one found is where the plugin resumes. A crash
//! before an append is durable replays those records from the plugin; after, they are found.
//! The plugin is polled again only once the previous poll's records are durable, which is
//! also the backpressure: a slow or full disk stops the polling, nothing more is buffered. A
//! plugin that polls ahead (`source-acknowledger.polls-ahead`) runs in three stages instead:
//! it is polled while its previous poll is transformed and the one before that appended, two
//! polls in flight at most, and is told in `acknowledge` when a poll's records are durable;
//! its position alone says where to resume, so a crash with polls in flight replays them from
//! the plugin like any other. Its poll and its transforms then run on tokio tasks of their own,
//! spawned for each poll and aborted with the source task, so that with two cores polling,
//! transforms and appends run side by side rather than on the task's one thread.
//!
//! Records a transform re-routes to another topic are appended before the connector's own
//! batch; after a crash between the two they are written again (at least once for those).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    Idle, OUTPUT_BATCH_SHARE, POSITION_HEADER, SOURCE_TAG_HEADER, SourceOffset, Task,
    append_elsewhere, append_in_batches,
};
use crate::log::{self, Header, Offset, PartitionId, TopicName};
use crate::meta::{Meta, MetaError, Table};
use crate::plugin::{self, BatchInfo, PluginError, Polled};
use crate::runtime::State;
use crate::transform::{self, ChainOutput, ErrorPolicy, Rejection, TaskError};

/// At most this many records per poll.
const MAX_POLL: u32 = 4096;

/// What a source task has durably done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// The partition of the connector's topic the task writes.
    pub partition: u32,
    /// The offset up to which the partition's tags are accounted for.
    pub end: u64,
    /// The position after the last record the log holds, if any.
    pub position: Option<Vec<u8>>,
}

pub fn key_prefix(connector_id: u64) -> String {
    format!("{connector_id:016x}/")
}

fn key(connector_id: u64, task: u32) -> String {
    format!("{}{task:05}", key_prefix(connector_id))
}

fn tag(connector_id: u64, task: u32) -> String {
    format!("{connector_id:016x}:{task}")
}

/// Every task's stored progress, for `GetOffsets`.
pub fn stored_offsets(meta: &Meta, connector_id: u64) -> Result<Vec<SourceOffset>, MetaError> {
    let prefix = key_prefix(connector_id);
    let entries: Vec<(String, SourceProgress)> = meta.entries(Table::ConnectorProgress)?;
    Ok(entries
        .into_iter()
        .filter_map(|(key, progress)| {
            let task = key.strip_prefix(&prefix)?.parse().ok()?;
            Some(SourceOffset {
                task,
                partition: PartitionId(progress.partition),
                end: Offset(progress.end),
                position: progress.position.map(Bytes::from),
            })
        })
        .collect())
}

pub(super) async fn run(task: &Task) -> Result<(), TaskError> {
    let context = &task.context;
    let (loaded, label, steps) = task.prepare().await?;
    let progress = recover(task).await?;
    let instance = context
        .plugins
        .instantiate_source(
            &loaded,
            &task.config,
            context.limits,
            &label,
            progress.position.as_deref(),
        )
        .await?;
    let worker = Worker {
        task,
        steps,
        partition: progress.partition,
    };
    let appender = Appender {
        task,
        progress,
        key: key(task.spec.id, task.index),
        tag: Bytes::from(tag(task.spec.id, task.index)),
    };
    task.cell.update(|s| s.state = State::Running);
    worker.run(appender, instance).await
}

/// The task's progress: the stored one, moved up to the newest tag in the partition's tail.
/// On the very first start the partition is chosen and entered durably before anything is
/// written, so the scan always has a starting point.
async fn recover(task: &Task) -> Result<SourceProgress, TaskError> {
    let context = &task.context;
    let spec = &task.spec;
    let key = key(spec.id, task.index);
    let stored: Option<SourceProgress> = context
        .meta
        .get(Table::ConnectorProgress, &key)
        .map_err(TaskError::meta("reading the task's progress"))?;
    let mut progress = match stored {
        Some(progress) => progress,
        None => {
            let partitions = context
                .log
                .topic_config(&spec.topic)
                .map_err(TaskError::opening(&spec.topic))?
                .partitions
                .max(1);
            let partition = task.index % partitions;
            let end = context
                .log
                .partition(&spec.topic, PartitionId(partition))
                .map_err(TaskError::opening(&spec.topic))?
                .high_watermark();
            let progress = SourceProgress {
                partition,
                end: end.0,
                position: None,
            };
            context
                .meta
                .put(Table::ConnectorProgress, &key, &progress)
                .await
                .map_err(TaskError::meta("recording the task's partition"))?;
            return Ok(progress);
        }
    };
    let partition = context
        .log
        .partition(&spec.topic, PartitionId(progress.partition))
        .map_err(TaskError::opening(&spec.topic))?;
    let tag = tag(spec.id, task.index);
    let mut newest = None;
    partition
        .scan(Offset(progress.end), |stored| {
            let header = |name: &str| {
                stored
                    .record
                    .headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value.clone())
            };
            if header(SOURCE_TAG_HEADER).is_some_and(|value| value.as_ref() == tag.as_bytes()) {
                newest = Some((stored.offset, header(POSITION_HEADER)));
            }
        })
        .map_err(TaskError::log_with(|| {
            format!("scanning {} for positions", spec.topic)
        }))?;
    if let Some((offset, position)) = newest {
        progress.end = offset.0 + 1;
        progress.position = position.map(|p| p.to_vec());
    }
    Ok(progress)
}

/// Runs the transforms over the plugin's polls.
struct Worker<'t> {
    task: &'t Task,
    steps: Vec<transform::Step>,
    /// The partition of the connector's topic the task writes.
    partition: u32,
}

/// Appends prepared polls and records the task's progress.
struct Appender<'t> {
    task: &'t Task,
    progress: SourceProgress,
    key: String,
    tag: Bytes,
}

/// One poll's records, transformed and routed, ready to be appended.
struct Prepared {
    /// Records for the connector's topic, by their index in the poll.
    own: Vec<(i64, log::Record)>,
    /// Records a transform re-routed, and dead letters.
    routed: Vec<(TopicName, log::Record)>,
    /// The position after each record of the poll (one at least).
    positions: Vec<Bytes>,
}

impl Worker<'_> {
    /// Polls, transforms and appends until an error.
    async fn run(
        self,
        appender: Appender<'_>,
        instance: plugin::SourceInstance,
    ) -> Result<(), TaskError> {
        if instance.polls_ahead() {
            self.run_ahead(appender, instance).await
        } else {
            self.run_in_step(appender, instance).await
        }
    }

    /// Each poll is appended before the next: only once its records are durable may the
    /// plugin acknowledge them upstream, which it does in its next poll.
    async fn run_in_step(
        mut self,
        mut appender: Appender<'_>,
        mut instance: plugin::SourceInstance,
    ) -> Result<(), TaskError> {
        let mut idle = Idle::default();
        loop {
            let Some(polled) = poll(&mut instance).await? else {
                idle.wait().await;
                continue;
            };
            idle.reset();
            let prepared = self.prepare(Some(polled), false).await?;
            appender.append(prepared).await?;
        }
    }

    /// Polls while the previous poll is transformed and the one before it appended, and
    /// acknowledges each poll once its records are durable.
    async fn run_ahead(
        mut self,
        mut appender: Appender<'_>,
        mut instance: plugin::SourceInstance,
    ) -> Result<(), TaskError> {
        let mut idle = Idle::default();
        let mut polled = None;
        let mut prepared = None;
        loop {
            // `join!` polls in order: the stages on tasks of their own first, so that they are
            // spawned before the append's work holds this thread.
            let (lent, transformed, appended) = tokio::join!(
                transform::on_own_task("the source's poll", async move {
                    let next = poll(&mut instance).await;
                    (instance, next)
                }),
                self.prepare(polled.take(), true),
                appender.append(prepared.take()),
            );
            let next;
            (instance, next) = lent?;
            if let Some(position) = appended? {
                let verdict = instance.acknowledge(&position).await?;
                verdict.map_err(|message| plugin_failed(&instance, message))?;
            }
            prepared = transformed?;
            polled = next?;
            if polled.is_some() {
                idle.reset();
            } else if prepared.is_none() {
                idle.wait().await;
            }
        }
    }

    /// Transforms and routes one poll's records, applying the error policy; the transforms
    /// on a task of their own when `apart`.
    async fn prepare(
        &mut self,
        polled: Option<Polled>,
        apart: bool,
    ) -> Result<Option<Prepared>, TaskError> {
        let Some(polled) = polled else {
            return Ok(None);
        };
        let task = self.task;
        let spec = &task.spec;
        let count = polled.records.len();
        task.cell.update(|s| s.records_in += count as u64);
        let info = BatchInfo {
            topic: spec.topic.to_string(),
            partition: self.partition,
        };
        let originals: Vec<log::Record> = if spec.errors == ErrorPolicy::Dlq {
            polled
                .records
                .iter()
                .cloned()
                .map(transform::to_log_record)
                .collect()
        } else {
            Vec::new()
        };
        let ChainOutput {
            records,
            mut rejected,
        } = self.transform(info, polled.records, apart).await?;
        let mut own: Vec<(i64, log::Record)> = Vec::with_capacity(records.len());
        let mut routed: Vec<(TopicName, log::Record)> = Vec::new();
        let mut max_bytes = HashMap::new();
        for record in records {
            let offset = record.offset;
            match self.destination(&record, &mut max_bytes) {
                Ok(None) => own.push((offset, transform::to_log_record(record))),
                Ok(Some(topic)) => routed.push((topic, transform::to_log_record(record))),
                Err(message) => rejected.push(Rejection {
                    offset,
                    plugin: "(routing)".to_owned(),
                    message,
                }),
            }
        }
        if let Some(rejection) = rejected.first() {
            match spec.errors {
                ErrorPolicy::Fail => return Err(TaskError::Rejected(rejection.clone())),
                ErrorPolicy::Skip => {
                    task.cell.update(|s| s.skipped += rejected.len() as u64);
                }
                ErrorPolicy::Dlq => self.dead_letter(&originals, &rejected, &mut routed)?,
            }
            own.retain(|(offset, _)| rejected.iter().all(|r| r.offset != *offset));
        }
        Ok(Some(Prepared {
            own,
            routed,
            positions: polled.positions,
        }))
    }

    /// Runs the transforms over a poll's records, on a task of their own when `apart` (the
    /// steps lent to it and given back with its output), so that they can run on another core
    /// than the polls and appends beside them.
    async fn transform(
        &mut self,
        info: BatchInfo,
        records: Vec<plugin::Record>,
        apart: bool,
    ) -> Result<ChainOutput, TaskError> {
        let policy = self.task.spec.errors;
        if apart {
            transform::run_chain_apart(&mut self.steps, info, records, policy).await
        } else {
            transform::run_chain(&mut self.steps, &info, records, policy).await
        }
    }

    fn dead_letter(
        &self,
        originals: &[log::Record],
        rejected: &[Rejection],
        routed: &mut Vec<(TopicName, log::Record)>,
    ) -> Result<(), TaskError> {
        let spec = &self.task.spec;
        let dlq = spec.dlq_topic.clone().ok_or_else(|| {
            TaskError::Permanent("errors=dlq without a dead-letter topic".to_owned())
        })?;
        for rejection in rejected {
            let Some(original) = originals.get(rejection.offset as usize) else {
                continue;
            };
            let letter = transform::dead_letter(
                &spec.name,
                (&spec.topic, PartitionId(self.partition)),
                rejection.offset,
                original,
                rejection,
            );
            routed.push((dlq.clone(), letter));
        }
        self.task
            .cell
            .update(|s| s.dead_lettered += rejected.len() as u64);
        Ok(())
    }

    /// Where an output record goes: `None` for the connector's topic, or the topic a
    /// transform re-routed it to; or why it cannot be written. `max_bytes` caches each
    /// topic's batch limit for the poll.
    fn destination(
        &self,
        record: &plugin::Record,
        max_bytes: &mut HashMap<Option<TopicName>, usize>,
    ) -> Result<Option<TopicName>, String> {
        let spec = &self.task.spec;
        let log = &self.task.context.log;
        let topic = match &record.topic {
            None => None,
            Some(name) if name == spec.topic.as_str() => None,
            Some(name) => Some(
                TopicName::new(name.as_str())
                    .map_err(|e| format!("routed to an invalid topic name: {e}"))?,
            ),
        };
        let max = *max_bytes.entry(topic.clone()).or_insert_with_key(|topic| {
            log.topic_config(topic.as_ref().unwrap_or(&spec.topic))
                .map_or(log.topic_defaults().max_message_bytes, |c| {
                    c.max_message_bytes
                }) as usize
        });
        let size = transform::record_size(
            record.key.as_ref(),
            record.value.as_ref(),
            record.headers.iter().map(|h| (&h.key, Some(&h.value))),
        );
        if size > max / OUTPUT_BATCH_SHARE {
            return Err(format!(
                "the record is {size} bytes; the topic takes batches of at most {max} bytes \
                 (max-message-bytes)"
            ));
        }
        Ok(topic)
    }
}

impl Appender<'_> {
    /// Appends a prepared poll durably and records the position after it, which it returns.
    async fn append(&mut self, prepared: Option<Prepared>) -> Result<Option<Bytes>, TaskError> {
        let Some(Prepared {
            own,
            routed,
            positions,
        }) = prepared
        else {
            return Ok(None);
        };
        let task = self.task;
        for (topic, records) in group_by_topic(routed) {
            append_elsewhere(&task.context.log, &topic, task.index, records).await?;
        }
        let written = own.len() as u64;
        let last = positions.len() as u64 - 1;
        self.append_own(own, last, &positions).await?;
        task.context
            .meta
            .put_unflushed(Table::ConnectorProgress, &self.key, &self.progress)
            .map_err(TaskError::meta("recording the task's position"))?;
        task.cell.update(|s| s.records_out += written);
        Ok(positions.get(last as usize).cloned())
    }

    /// Appends the records for the connector's topic, durably, each batch tagged with the
    /// position after the last source record it completes.
    async fn append_own(
        &mut self,
        own: Vec<(i64, log::Record)>,
        last: u64,
        positions: &[Bytes],
    ) -> Result<(), TaskError> {
        let task = self.task;
        let partition = PartitionId(self.progress.partition);
        let tag = &self.tag;
        let end = append_in_batches(
            &task.context.log,
            &task.spec.topic,
            partition,
            own,
            last,
            |to, record| {
                let position = positions
                    .get(to as usize)
                    .ok_or_else(|| TaskError::Permanent("a batch ends past the poll".to_owned()))?;
                record.headers.push(Header {
                    key: SOURCE_TAG_HEADER.to_owned(),
                    value: Some(tag.clone()),
                });
                record.headers.push(Header {
                    key: POSITION_HEADER.to_owned(),
                    value: Some(position.clone()),
                });
                Ok(())
            },
        )
        .await?;
        if let Some(end) = end {
            self.progress.end = end.0;
        }
        self.progress.position = positions.get(last as usize).map(|p| p.to_vec());
        Ok(())
    }
}

/// One poll of the plugin; none when it brought nothing.
async fn poll(instance: &mut plugin::SourceInstance) -> Result<Option<Polled>, TaskError> {
    let polled = instance
        .poll(MAX_POLL)
        .await?
        .map_err(|message| plugin_failed(instance, message))?;
    if polled.records.is_empty() {
        return Ok(None);
    }
    if polled.positions.len() != polled.records.len() || polled.records.len() > MAX_POLL as usize {
        return Err(TaskError::Plugin(PluginError::Contract {
            plugin: instance.plugin().to_owned(),
            detail: format!(
                "it emitted {} records for a poll of at most {MAX_POLL}",
                polled.records.len()
            ),
        }));
    }
    Ok(Some(polled))
}

/// The plugin's own error, which fails the task with its message.
fn plugin_failed(instance: &plugin::SourceInstance, message: String) -> TaskError {
    TaskError::PluginFailed {
        plugin: format!("source plugin {:?}", instance.plugin()),
        message,
    }
}

/// Records grouped by topic, each group in its original order.
fn group_by_topic(records: Vec<(TopicName, log::Record)>) -> Vec<(TopicName, Vec<log::Record>)> {
    let mut groups: Vec<(TopicName, Vec<log::Record>)> = Vec::new();
    for (topic, record) in records {
        match groups.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, group)) => group.push(record),
            None => groups.push((topic, vec![record])),
        }
    }
    groups
}
