//! The task that runs one source partition of a pipeline: read, transform, route, append,
//! record progress. Three batches move at once: one's chain runs on a tokio task of its own
//! while the batch before it is routed, encoded and submitted on the partition's task, and
//! the batch after it is read and decoded on a blocking thread; the appends of a few batches
//! are in flight beside them. A batch's progress is recorded, in order, once its appends are
//! durable, and its state changes (the window's, or a stateful plugin's) are appended to the
//! changelog after the rest of its output.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;

use super::progress::{self, Destination, Progress, SourceRange};
use super::{PartitionStatus, PipelineSpec, state};
use crate::log::{
    self, AppendOutcome, Header, Log, LogError, Offset, PartitionId, StoredRecord, Timestamp,
    TopicName,
};
use crate::meta::{Meta, Table};
use crate::plugin::{self, BatchInfo, Limits, Plugins};
use crate::runtime::{self, RestartPolicy, State, StatusCell};
use crate::transform::window::{self, WindowOperator};
use crate::transform::{
    self, ChainOutput, ErrorPolicy, HOPS_HEADER, MAX_HOPS, Rejection, Step, TaskError, Transformer,
    cut_by_size, dead_letter, ensure_topic, hops, record_size, to_log_record, to_plugin_record,
};

/// How much of the source one batch reads.
const READ_BYTES: usize = 1 << 20;
/// Source batches whose appends may be in flight at once: the next batches are transformed
/// while earlier ones wait for their fsync.
const MAX_IN_FLIGHT: usize = 4;
const READ_WAIT: Duration = Duration::from_millis(500);
/// Output batches are cut well below the destination's `max-message-bytes`.
const OUTPUT_BATCH_SHARE: usize = 2;
/// A pipeline partition writes to at most this many destination partitions (routers build
/// topic names from data; this keeps a bad rule from creating topics without end).
const MAX_DESTINATIONS: usize = 1024;

type Pending = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Destination, AppendOutcome), LogError>> + Send>,
>;

/// Output for one destination partition: (source offset, record), in source order.
type Routed = BTreeMap<Destination, Vec<(i64, log::Record)>>;

/// A changelog batch waiting for the rest of its source batch's output to be durable.
type ChangelogBatch = (Destination, Arc<log::Partition>, bytes::BytesMut);

/// Source records read from an offset on: those at or after it, decoded.
struct DecodedChunk {
    records: Vec<StoredRecord>,
    next_offset: Offset,
    high_watermark: Offset,
}

impl DecodedChunk {
    fn decode(chunk: log::ReadChunk, from: u64) -> Result<Self, log::BatchError> {
        let mut records = log::decode_all(chunk.batches)?;
        records.retain(|r| r.offset.0 >= from);
        Ok(Self {
            records,
            next_offset: chunk.next_offset,
            high_watermark: chunk.high_watermark,
        })
    }
}

/// The source's next chunk, read and decoded on a blocking thread while the task transforms
/// the chunk before it, so that with two cores decoding does not wait for the transform.
/// Only a chunk that has records is kept; an empty read, an error or a chunk that does not
/// start where the task goes on is read again in the task, which handles each case.
struct ReadAhead {
    from: u64,
    chunk: tokio::task::JoinHandle<Option<DecodedChunk>>,
}

impl ReadAhead {
    fn start(source: &Arc<log::Partition>, from: u64) -> Self {
        let source = Arc::clone(source);
        let chunk = tokio::task::spawn_blocking(move || {
            let chunk = source.read(Offset(from), READ_BYTES).ok()?;
            if chunk.batches.is_empty() {
                return None;
            }
            DecodedChunk::decode(chunk, from)
                .ok()
                .filter(|decoded| !decoded.records.is_empty())
        });
        Self { from, chunk }
    }
}

/// A source batch through its chain, not yet submitted: it is routed and submitted while the
/// next batch's chain runs.
struct Transformed {
    records: Vec<StoredRecord>,
    range: SourceRange,
    output: ChainOutput,
}

/// Appends submitted for one source batch, and what to record once they are durable.
struct InFlight {
    appends: Vec<Pending>,
    /// The changelog's batch, appended once the other appends are durable.
    changelog: Vec<ChangelogBatch>,
    next: u64,
    records_out: u64,
}

/// A pipeline's `window-aggregate` step.
struct WindowStage {
    operator: WindowOperator,
    /// Set at start when an idle advance was stopped midway: the results destination's end
    /// before its results.
    unfinished_idle_advance: Option<u64>,
}

/// Where a stateful pipeline keeps its state ([`state`]): the changelog, and the snapshots.
struct StateLog {
    changelog: TopicName,
    /// The chain step whose plugin keeps its store here (none: the window step's state).
    plugin_step: Option<usize>,
    snapshot_key: String,
    snapshot_taken: Instant,
    snapshot_interval: Duration,
    /// Where the source resumes and the changelog's end by the last snapshot this run stored:
    /// while both are unchanged, the state is too, and storing it again is skipped.
    snapshot_covers: Option<(u64, u64)>,
}

pub(super) struct PartitionTask {
    pub spec: PipelineSpec,
    pub partition: PartitionId,
    pub log: Log,
    pub meta: Meta,
    pub plugins: Plugins,
    pub limits: Limits,
    pub restart: RestartPolicy,
    pub status: Arc<StatusCell<PartitionStatus>>,
    pub stop: tokio_util::sync::CancellationToken,
}

impl PartitionTask {
    /// Transforms until stopped, restarted after failures under the pipeline's policy; a
    /// restart starts from the recorded progress, so it neither loses nor repeats output.
    pub async fn run(self) {
        let what = format!("pipeline {}/{}", self.spec.name, self.partition.0);
        runtime::supervise(&self.status, &self.stop, self.restart, &what, || {
            self.transform_until_stopped()
        })
        .await;
    }

    async fn transform_until_stopped(&self) -> Result<(), TaskError> {
        let mut steps = self.start_chain().await?;
        let progress_key = progress::key(self.spec.id, self.partition);
        let mut progress: Progress = self
            .meta
            .get(Table::PipelineProgress, &progress_key)
            .map_err(TaskError::meta("reading the progress"))?
            .unwrap_or_default();
        let mut written = HashMap::new();
        for (destination, end) in progress.destinations() {
            let ranges = progress::written_ranges(
                &self.log,
                &destination,
                end,
                self.spec.id,
                self.partition,
            )
            .await
            .map_err(TaskError::log_with(|| {
                format!("scanning {} for earlier output", destination.topic)
            }))?;
            if !ranges.is_empty() {
                written
                    .entry(destination.topic)
                    .or_insert_with(Vec::new)
                    .extend(ranges);
            }
        }
        let source = self
            .log
            .partition(&self.spec.from, self.partition)
            .map_err(TaskError::opening(&self.spec.from))?;
        let (window, state) = self.restore_state(&mut steps, &mut progress).await?;
        let mut worker = Worker {
            task: self,
            steps,
            window,
            state,
            progress,
            progress_key,
            written,
            last_input: Instant::now(),
        };
        worker.run(&source).await
    }

    /// The state of the pipeline's stateful step (`window-aggregate` or a stateful plugin),
    /// restored from its changelog; the source then resumes after what the changelog holds,
    /// if that is further than the progress.
    async fn restore_state(
        &self,
        steps: &mut [Step],
        progress: &mut Progress,
    ) -> Result<(Option<WindowStage>, Option<StateLog>), TaskError> {
        let window_spec = window::stage(&self.spec.transforms).map_err(TaskError::Permanent)?;
        let plugin_step = steps.iter().position(|step| {
            matches!(&step.transformer, Transformer::Plugin(instance) if instance.is_stateful())
        });
        let changelog = match (&window_spec, plugin_step) {
            (Some(spec), _) => spec.changelog_topic(&self.spec.name),
            (None, Some(step)) => {
                transform::plugin_changelog(&self.spec.name, steps[step].transformer.name())
            }
            (None, None) => return Ok((None, None)),
        }
        .map_err(TaskError::Permanent)?;
        state::check_changelog_policy(&self.log, &changelog).map_err(TaskError::Permanent)?;
        let partitions = self
            .log
            .topic_config(&self.spec.from)
            .map_err(TaskError::opening(&self.spec.from))?
            .partitions;
        state::ensure_changelog(&self.log, &changelog, partitions)
            .await
            .map_err(TaskError::opening(&changelog))?;
        let snapshot_key = state::snapshot_key(self.spec.id, self.partition);
        let writer = (self.spec.id, self.partition);
        let reading = TaskError::meta("reading the state snapshot");
        let (window, resume_at, report, snapshot_interval) = match (window_spec, plugin_step) {
            (Some(spec), _) => {
                let interval = Duration::from_millis(spec.snapshot_interval as u64);
                let snapshot = self
                    .meta
                    .get(Table::PipelineProgress, &snapshot_key)
                    .map_err(reading)?;
                let restored =
                    state::restore(&self.log, spec, changelog.clone(), writer, snapshot)?;
                let window = WindowStage {
                    operator: restored.operator,
                    unfinished_idle_advance: restored.unfinished_idle_advance,
                };
                (Some(window), restored.resume_at, restored.report, interval)
            }
            (None, step) => {
                let config = step.map_or(&[][..], |step| &self.spec.transforms[step].config);
                let interval = transform::snapshot_interval(transform::last_value(
                    config,
                    transform::SNAPSHOT_INTERVAL,
                ))
                .map_err(TaskError::Permanent)?;
                let snapshot = self
                    .meta
                    .get(Table::PipelineProgress, &snapshot_key)
                    .map_err(reading)?;
                let store = step
                    .and_then(|step| steps[step].transformer.state())
                    .ok_or_else(|| TaskError::Permanent("no stateful step".to_owned()))?;
                let (resume_at, report) =
                    state::restore_store(&self.log, &changelog, writer, snapshot, store)?;
                (None, resume_at, report, interval)
            }
        };
        if let Some(at) = resume_at {
            progress.next = progress.next.max(at);
        }
        self.status.update(|s| s.state_restored = Some(report));
        let state = StateLog {
            changelog,
            plugin_step,
            snapshot_key,
            snapshot_taken: Instant::now(),
            snapshot_interval,
            snapshot_covers: None,
        };
        Ok((window, Some(state)))
    }

    async fn start_chain(&self) -> Result<Vec<Step>, TaskError> {
        let label = format!("{}/{}", self.spec.name, self.partition.0);
        let stream = transform::StreamContext {
            log: &self.log,
            stream: &self.spec.from,
        };
        transform::start_chain(
            &self.plugins,
            self.limits,
            &self.spec.transforms,
            &label,
            Some((stream, self.partition)),
        )
        .await
    }
}

struct Worker<'t> {
    task: &'t PartitionTask,
    steps: Vec<Step>,
    window: Option<WindowStage>,
    state: Option<StateLog>,
    progress: Progress,
    progress_key: String,
    /// Destination topic -> the source ranges it already holds, in any of its partitions
    /// (found by the start scan). By topic, so output is not written again to another
    /// partition when the topic gained partitions since (source `p` goes to `p mod N`).
    /// Ranges the task has read past are dropped.
    written: HashMap<TopicName, Vec<SourceRange>>,
    /// When source records were last read (for a window's idle advance).
    last_input: Instant,
}

impl Worker<'_> {
    async fn run(&mut self, source: &Arc<log::Partition>) -> Result<(), TaskError> {
        let task = self.task;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut read_ahead: Option<ReadAhead> = None;
        let mut transformed: Option<Transformed> = None;
        self.skip_deleted(source);
        self.forget_written_before(self.progress.next);
        if let Some(end) = self
            .window
            .as_mut()
            .and_then(|w| w.unfinished_idle_advance.take())
        {
            self.finish_idle_advance(end).await?;
        }
        let mut next = self.progress.next;
        task.status.update(|s| {
            s.state = State::Running;
            s.next_offset = next;
        });
        loop {
            let next_is_decoded = read_ahead
                .as_ref()
                .is_some_and(|ahead| ahead.from == next && ahead.chunk.is_finished());
            if !next_is_decoded {
                // No batch to transform beside it yet: submitted now rather than after the read.
                self.submit(transformed.take(), &mut in_flight).await?;
            }
            let ahead = match read_ahead.take() {
                Some(ahead) if ahead.from == next => tokio::select! {
                    _ = task.stop.cancelled() => break,
                    joined = ahead.chunk => joined.ok().flatten(),
                },
                _ => None,
            };
            let chunk = match ahead {
                Some(chunk) => chunk,
                None => {
                    self.submit(transformed.take(), &mut in_flight).await?;
                    // With appends in flight, a read at the end of the source returns at once:
                    // their progress is recorded now, not after a wait for new records.
                    let wait = if in_flight.is_empty() {
                        self.idle_wait()
                    } else {
                        Duration::ZERO
                    };
                    let read = tokio::select! {
                        _ = task.stop.cancelled() => break,
                        read = source.read_wait(Offset(next), READ_BYTES, wait) => read,
                    };
                    let chunk = match read {
                        Err(LogError::OffsetOutOfRange { log_start, .. })
                            if Offset(next) < log_start =>
                        {
                            self.finish_all(&mut in_flight).await?;
                            self.skip_deleted(source);
                            next = self.progress.next;
                            continue;
                        }
                        read => read.map_err(TaskError::log_with(|| {
                            format!("reading {}", task.spec.from)
                        }))?,
                    };
                    if chunk.batches.is_empty() {
                        task.status
                            .update(|s| s.high_watermark = chunk.high_watermark.0);
                        self.finish_all(&mut in_flight).await?;
                        self.settle_ends()
                            .map_err(TaskError::meta("recording progress"))?;
                        self.advance_idle_if_due().await?;
                        if self.snapshot_due() && self.snapshot()? {
                            // The source is idle: the new snapshot goes to disk now rather
                            // than with the metadata store's next flush.
                            task.meta
                                .flush()
                                .await
                                .map_err(TaskError::meta("storing the state snapshot"))?;
                        }
                        continue;
                    }
                    DecodedChunk::decode(chunk, next)
                        .map_err(TaskError::batch(|| format!("reading {}", task.spec.from)))?
                }
            };
            task.status
                .update(|s| s.high_watermark = chunk.high_watermark.0);
            self.last_input = Instant::now();
            let records = chunk.records;
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                next = chunk.next_offset.0;
                continue;
            };
            let range = (first.offset.0, last.offset.0);
            read_ahead = Some(ReadAhead::start(source, range.1 + 1));
            // This batch's chain runs on a task of its own while the batch before it is routed,
            // encoded and submitted here.
            let input = records.iter().map(to_plugin_record).collect();
            let mut steps = std::mem::take(&mut self.steps);
            let chain =
                transform::run_chain_apart(&mut steps, self.batch_info(), input, task.spec.errors);
            let submitted = self.submit(transformed.take(), &mut in_flight);
            // The chain first: `join!` polls in order, and its first poll spawns the chain's task.
            let (output, submitted) = tokio::join!(chain, submitted);
            self.steps = steps;
            submitted?;
            let output = self.after_chain(&records, output?)?;
            task.status.update(|s| s.records_in += records.len() as u64);
            transformed = Some(Transformed {
                records,
                range,
                output,
            });
            next = range.1 + 1;
            if self.snapshot_due() {
                self.submit(transformed.take(), &mut in_flight).await?;
                self.finish_all(&mut in_flight).await?;
                self.snapshot()?;
            }
        }
        self.submit(transformed.take(), &mut in_flight).await?;
        self.finish_all(&mut in_flight).await
    }

    /// Submits the appends of the transformed batch, if there is one; with more than
    /// [`MAX_IN_FLIGHT`] batches in flight, waits until the oldest is durable and records its
    /// progress.
    async fn submit(
        &mut self,
        batch: Option<Transformed>,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<(), TaskError> {
        let Some(Transformed {
            records,
            range,
            output,
        }) = batch
        else {
            return Ok(());
        };
        let (appends, changelog, records_out) = self.append(&records, range, output).await?;
        in_flight.push_back(InFlight {
            appends,
            changelog,
            next: range.1 + 1,
            records_out,
        });
        if in_flight.len() > MAX_IN_FLIGHT
            && let Some(done) = in_flight.pop_front()
        {
            self.finish(done).await?;
        }
        Ok(())
    }

    async fn finish_all(&mut self, in_flight: &mut VecDeque<InFlight>) -> Result<(), TaskError> {
        while let Some(done) = in_flight.pop_front() {
            self.finish(done).await?;
        }
        Ok(())
    }

    /// Moves past source records retention deleted before this pipeline transformed them.
    fn skip_deleted(&mut self, source: &log::Partition) {
        let log_start = source.log_start().0;
        if self.progress.next < log_start {
            tracing::warn!(
                pipeline = %self.task.spec.name,
                partition = self.task.partition.0,
                from = self.progress.next,
                to = log_start,
                "source records were deleted by retention before this pipeline transformed them"
            );
            self.progress.next = log_start;
        }
    }

    fn batch_info(&self) -> BatchInfo {
        BatchInfo {
            topic: self.task.spec.from.to_string(),
            partition: self.task.partition.0,
        }
    }

    /// What follows the chain: the window step, and a stateful plugin's changes for the
    /// changelog.
    fn after_chain(
        &mut self,
        records: &[StoredRecord],
        mut output: ChainOutput,
    ) -> Result<ChainOutput, TaskError> {
        if let Some(window) = &mut self.window {
            let (records, rejected) = window
                .operator
                .process(std::mem::take(&mut output.records), Timestamp::now().0)
                .map_err(TaskError::Permanent)?;
            output.records = records;
            output.rejected.extend(rejected);
        }
        if let (Some(state), Some(last)) = (&self.state, records.last())
            && let Some(store) = state
                .plugin_step
                .and_then(|step| self.steps[step].transformer.state())
        {
            let changelog = state.changelog.as_str();
            if let Some(routed) = output
                .records
                .iter()
                .find(|r| r.topic.as_deref() == Some(changelog))
            {
                return Err(TaskError::Permanent(format!(
                    "the output of source offset {} is routed to {changelog}, the changelog of \
                     the pipeline's state, which only the appliance writes",
                    routed.offset
                )));
            }
            let offset = last.offset.0 as i64;
            let timestamp = Timestamp::now().0;
            output
                .records
                .extend(
                    store
                        .take_changes()
                        .into_iter()
                        .map(|(key, value)| plugin::Record {
                            key: Some(key),
                            value,
                            headers: Vec::new(),
                            timestamp,
                            offset,
                            topic: Some(changelog.to_owned()),
                        }),
                );
        }
        Ok(output)
    }

    /// Routes the output of the source records in `range` to destination partitions, adds
    /// dead letters, and submits the appends. Returns them, the changelog's batches (to be
    /// appended after them) and the number of records.
    async fn append(
        &mut self,
        source: &[StoredRecord],
        range: SourceRange,
        output: ChainOutput,
    ) -> Result<(Vec<Pending>, Vec<ChangelogBatch>, u64), TaskError> {
        let task = self.task;
        let ChainOutput {
            records,
            mut rejected,
        } = output;
        // The state's changelog entries go to the changelog whatever happens to the output
        // they share offsets with: they record what the state step already counted.
        let (state_entries, records): (Vec<plugin::Record>, Vec<plugin::Record>) = match &self.state
        {
            Some(state) => records
                .into_iter()
                .partition(|r| r.topic.as_deref() == Some(state.changelog.as_str())),
            None => (Vec::new(), records),
        };
        // Output by topic (`None`: the pipeline's destination), each in source order.
        let mut by_topic: HashMap<Option<TopicName>, Vec<(i64, log::Record)>> = HashMap::new();
        let mut max_bytes: HashMap<Option<TopicName>, usize> = HashMap::new();
        let hops_before: HashMap<i64, u32> = source
            .iter()
            .filter_map(|stored| Some((stored.offset.0 as i64, hops(&stored.record)?)))
            .collect();
        let rejected_before = rejected.len();
        for record in records {
            let hops = hops_before.get(&record.offset).map_or(1, |hops| hops + 1);
            if hops > MAX_HOPS {
                rejected.push(Rejection {
                    offset: record.offset,
                    plugin: "(hop limit)".to_owned(),
                    message: format!(
                        "the record has passed through {MAX_HOPS} pipelines: pipelines route \
                         it round a cycle of topics; change a route so that it ends"
                    ),
                });
                continue;
            }
            match self.check_output(&record, &mut max_bytes) {
                Ok(topic) => {
                    let offset = record.offset;
                    let mut output = to_log_record(record);
                    output.headers.push(Header {
                        key: HOPS_HEADER.to_owned(),
                        value: Some(Bytes::from(hops.to_string())),
                    });
                    by_topic.entry(topic).or_default().push((offset, output));
                }
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
            return Err(TaskError::Rejected(rejection.clone()));
        }
        // A stateful step has already counted these records (a window step closed windows
        // with them): dropping their output now would leave its state ahead of what is stored.
        if self.state.is_some()
            && let Some(rejection) = rejected.get(rejected_before)
        {
            return Err(TaskError::Permanent(format!(
                "output of source offset {} cannot be written ({}), and the pipeline's state \
                 counts it already; fix the cause and resume",
                rejection.offset, rejection.message
            )));
        }
        let mut routed: Routed = BTreeMap::new();
        let mut partitions_of: HashMap<TopicName, u32> = HashMap::new();
        for (topic, mut entries) in by_topic {
            if !rejected.is_empty() {
                entries.retain(|(offset, _)| rejected.iter().all(|r| r.offset != *offset));
            }
            let topic = topic.unwrap_or_else(|| task.spec.to.clone());
            let destination = destination_partition(task, &mut partitions_of, topic).await?;
            routed.entry(destination).or_default().extend(entries);
        }
        route_rejections(task, source, &rejected, &mut routed, &mut partitions_of).await?;
        if let (Some(state), false) = (&self.state, state_entries.is_empty()) {
            let changelog = state.changelog.clone();
            let destination = destination_partition(task, &mut partitions_of, changelog).await?;
            routed.entry(destination).or_default().extend(
                state_entries
                    .into_iter()
                    .map(|record| (record.offset, to_log_record(record))),
            );
        }
        for entries in routed.values_mut() {
            // Stable, and linear on the runs that are already in order.
            entries.sort_by_key(|(offset, _)| *offset);
        }
        let mut appends: Vec<Pending> = Vec::new();
        let mut changelog = Vec::new();
        let mut submitted = 0;
        for (destination, mut entries) in routed {
            if let Some(ranges) = self.written.get(&destination.topic) {
                entries.retain(|(offset, _)| !progress::covers(ranges, *offset as u64));
                if entries.is_empty() {
                    continue;
                }
            }
            if !self.progress.knows(&destination) {
                self.register(&destination).await?;
            }
            let target = task
                .log
                .partition(&destination.topic, destination.partition)
                .map_err(TaskError::opening(&destination.topic))?;
            let topic_config = task
                .log
                .topic_config(&destination.topic)
                .map_err(TaskError::opening(&destination.topic))?;
            let budget = topic_config.max_message_bytes as usize / OUTPUT_BATCH_SHARE;
            let is_changelog = self.is_changelog(&destination.topic);
            let batches = if is_changelog {
                // One batch: a source batch's state changes are stored together or not at all.
                check_changelog_size(&entries, &destination.topic, topic_config.max_message_bytes)?;
                vec![(range, entries)]
            } else {
                cut_by_size(entries, budget, range)
            };
            for (batch_range, mut batch) in batches {
                submitted += batch.len() as u64;
                let Some((_, last)) = batch.last_mut() else {
                    continue;
                };
                last.headers.push(Header {
                    key: progress::TAG_HEADER.to_owned(),
                    value: Some(progress::tag(task.spec.id, task.partition, batch_range)),
                });
                let records: Vec<log::Record> = batch.into_iter().map(|(_, r)| r).collect();
                let encoded = log::encode(&records, topic_config.compression).map_err(
                    TaskError::batch(|| format!("encoding output for {}", destination.topic)),
                )?;
                if is_changelog {
                    changelog.push((destination.clone(), target.clone(), encoded));
                    continue;
                }
                let durable = target
                    .submit(encoded)
                    .await
                    .map_err(TaskError::log_with(|| {
                        format!("appending to {}", destination.topic)
                    }))?;
                let destination = destination.clone();
                appends.push(Box::pin(async move {
                    durable.await.map(|outcome| (destination, outcome))
                }));
            }
        }
        Ok((appends, changelog, submitted))
    }

    /// Waits until a batch's appends are durable, then records its progress (without waiting
    /// for the metadata store: an older progress is still correct, see [`progress`]).
    async fn finish(&mut self, done: InFlight) -> Result<(), TaskError> {
        // Every append settles before a failure is reported, so that none is still being
        // written when the task starts again and scans its destinations.
        let outcomes = join_all(done.appends)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, LogError>>()
            .map_err(TaskError::log("appending output"))?;
        for (destination, outcome) in outcomes {
            self.progress
                .set_end(&destination, outcome.last_offset.next());
        }
        // The changelog commits the state with the output it came with: only after the rest.
        for (destination, target, batch) in done.changelog {
            let outcome = target
                .submit(batch)
                .await
                .map_err(TaskError::log("appending to the changelog"))?
                .await
                .map_err(TaskError::log("appending to the changelog"))?;
            self.progress
                .set_end(&destination, outcome.last_offset.next());
        }
        self.progress.next = done.next;
        self.forget_written_before(done.next);
        self.task
            .meta
            .put_unflushed(Table::PipelineProgress, &self.progress_key, &self.progress)
            .map_err(TaskError::meta("recording progress"))?;
        let next = done.next;
        self.task.status.update(|s| {
            s.next_offset = next;
            s.records_out += done.records_out;
        });
        Ok(())
    }

    fn is_changelog(&self, topic: &TopicName) -> bool {
        self.state.as_ref().is_some_and(|s| s.changelog == *topic)
    }

    fn snapshot_due(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.snapshot_taken.elapsed() >= s.snapshot_interval)
    }

    /// How long a read at the end of the source waits for new records: at most until the next
    /// snapshot falls due while the state has moved since the last one, so that a source that
    /// goes quiet has its state snapshotted within `snapshot-interval`.
    fn idle_wait(&self) -> Duration {
        match &self.state {
            Some(state)
                if state
                    .snapshot_covers
                    .is_none_or(|(resume_at, _)| resume_at != self.progress.next) =>
            {
                let due_in = state
                    .snapshot_interval
                    .saturating_sub(state.snapshot_taken.elapsed());
                due_in.min(READ_WAIT)
            }
            _ => READ_WAIT,
        }
    }

    /// Stores the state, which with nothing in flight is what the changelog holds, unless the
    /// last snapshot stored the same. Returns whether it stored one.
    fn snapshot(&mut self) -> Result<bool, TaskError> {
        let Some(state) = &mut self.state else {
            return Ok(false);
        };
        state.snapshot_taken = Instant::now();
        let changelog_next = self
            .task
            .log
            .partition(&state.changelog, self.task.partition)
            .map_err(TaskError::opening(&state.changelog))?
            .high_watermark()
            .0;
        let resume_at = self.progress.next;
        let covers = (resume_at, changelog_next);
        if state.snapshot_covers == Some(covers) {
            return Ok(false);
        }
        let (meta, key) = (&self.task.meta, &state.snapshot_key);
        let storing = TaskError::meta("storing the state snapshot");
        let stored = if let Some(window) = &self.window {
            let snapshot = state::Snapshot {
                changelog_next,
                resume_at,
                state: window.operator.state(),
            };
            meta.put_unflushed(Table::PipelineProgress, key, &snapshot)
                .map_err(storing)?;
            true
        } else if let Some(store) = state
            .plugin_step
            .and_then(|step| self.steps[step].transformer.state())
        {
            let snapshot = state::Snapshot {
                changelog_next,
                resume_at,
                state: state::StoreImage::of(store),
            };
            meta.put_unflushed(Table::PipelineProgress, key, &snapshot)
                .map_err(storing)?;
            true
        } else {
            false
        };
        if stored {
            state.snapshot_covers = Some(covers);
        }
        Ok(stored)
    }

    /// Drops the ranges found by the start scan that end before `next`: no record before it is
    /// read again, and output attributed to an earlier offset later (an idle advance's) is new.
    fn forget_written_before(&mut self, next: u64) {
        for ranges in self.written.values_mut() {
            ranges.retain(|(_, to)| *to >= next);
        }
    }

    /// With the source idle for the window's `idle-advance`, moves its watermark to the
    /// gateway's clock minus that and closes the windows it passes, in the three steps
    /// [`state`] describes. Nothing is in flight when this runs.
    async fn advance_idle_if_due(&mut self) -> Result<(), TaskError> {
        let next = self.progress.next;
        let Some(window) = &self.window else {
            return Ok(());
        };
        let Some(idle) = window.operator.spec().idle_advance else {
            return Ok(());
        };
        if next == 0 || self.last_input.elapsed() < Duration::from_millis(idle as u64) {
            return Ok(());
        }
        let results = results_partition(self.task).await?;
        let end = self
            .task
            .log
            .partition(&results.topic, results.partition)
            .map_err(TaskError::opening(&results.topic))?
            .high_watermark();
        let Some(window) = &mut self.window else {
            return Ok(());
        };
        let Some(decision) =
            window
                .operator
                .advance_idle(Timestamp::now().0 - idle, end.0, next as i64 - 1)
        else {
            return Ok(());
        };
        self.write_after_last_read(decision).await?;
        self.close_after_idle_advance(&HashSet::new()).await
    }

    /// Completes an idle advance a stop interrupted: results this partition already wrote to
    /// the destination past `end` (in batches it tagged) are not written again.
    async fn finish_idle_advance(&mut self, end: u64) -> Result<(), TaskError> {
        let results = results_partition(self.task).await?;
        let mut emitted = HashSet::new();
        let writer = (self.task.spec.id, self.task.partition);
        if let Ok(target) = self.task.log.partition(&results.topic, results.partition) {
            progress::scan_own_batches(&target, Offset(end), writer, |batch, _| {
                emitted.extend(batch.iter().filter_map(|record| {
                    window::result_identity(record.key.as_ref(), record.value.as_deref())
                }));
            })
            .map_err(TaskError::log_with(|| {
                format!("scanning {}", results.topic)
            }))?;
        }
        self.close_after_idle_advance(&emitted).await
    }

    async fn close_after_idle_advance(
        &mut self,
        emitted: &HashSet<(Option<Bytes>, i64)>,
    ) -> Result<(), TaskError> {
        let offset = self.progress.next as i64 - 1;
        let Some(window) = &mut self.window else {
            return Ok(());
        };
        let records = window.operator.close_pending(offset, emitted);
        if records.is_empty() {
            return Ok(());
        }
        self.write_after_last_read(records).await
    }

    /// Appends output that no new source record caused, attributed to the last one read,
    /// and waits until it is stored.
    async fn write_after_last_read(
        &mut self,
        records: Vec<plugin::Record>,
    ) -> Result<(), TaskError> {
        let next = self.progress.next;
        let range = (next - 1, next - 1);
        let output = ChainOutput {
            records,
            rejected: Vec::new(),
        };
        let (appends, changelog, records_out) = self.append(&[], range, output).await?;
        self.finish(InFlight {
            appends,
            changelog,
            next,
            records_out,
        })
        .await
    }

    /// With nothing in flight, every destination's tags up to its current end are accounted
    /// for: moving the ends there keeps the next start's scan short.
    fn settle_ends(&mut self) -> Result<(), crate::meta::MetaError> {
        let mut moved = false;
        for (destination, end) in self.progress.destinations() {
            if let Ok(target) = self
                .task
                .log
                .partition(&destination.topic, destination.partition)
                && target.high_watermark() > end
            {
                self.progress.set_end(&destination, target.high_watermark());
                moved = true;
            }
        }
        if moved {
            self.task.meta.put_unflushed(
                Table::PipelineProgress,
                &self.progress_key,
                &self.progress,
            )?;
        }
        Ok(())
    }

    /// Enters a destination into the progress, durably, before anything is appended to it.
    async fn register(&mut self, destination: &Destination) -> Result<(), TaskError> {
        if self.progress.destinations().len() >= MAX_DESTINATIONS {
            return Err(TaskError::Permanent(format!(
                "output would go to more than {MAX_DESTINATIONS} destination partitions; \
                 check the routing transforms"
            )));
        }
        let end = self
            .task
            .log
            .partition(&destination.topic, destination.partition)
            .map_err(TaskError::opening(&destination.topic))?
            .high_watermark();
        self.progress.set_end(destination, end);
        self.task
            .meta
            .put(Table::PipelineProgress, &self.progress_key, &self.progress)
            .await
            .map_err(TaskError::meta("recording a destination"))
    }

    /// The topic an output record goes to (`None`: the pipeline's destination), or why it
    /// cannot be written. `max_bytes` caches each topic's batch limit for the batch.
    fn check_output(
        &self,
        record: &plugin::Record,
        max_bytes: &mut HashMap<Option<TopicName>, usize>,
    ) -> Result<Option<TopicName>, String> {
        let topic = match &record.topic {
            None => None,
            Some(routed) => {
                let topic = TopicName::new(routed.as_str())
                    .map_err(|e| format!("routed to an invalid topic name: {e}"))?;
                if topic == self.task.spec.from {
                    return Err(format!(
                        "routed back to the source topic {topic}, which would loop"
                    ));
                }
                Some(topic)
            }
        };
        let log = &self.task.log;
        let max = *max_bytes.entry(topic.clone()).or_insert_with_key(|topic| {
            let name = topic.as_ref().unwrap_or(&self.task.spec.to);
            log.topic_config(name)
                .map_or(log.topic_defaults().max_message_bytes, |c| {
                    c.max_message_bytes
                }) as usize
        });
        let size = record_size(
            record.key.as_ref(),
            record.value.as_ref(),
            record.headers.iter().map(|h| (&h.key, Some(&h.value))),
        );
        if size > max / OUTPUT_BATCH_SHARE {
            let name = topic.as_ref().unwrap_or(&self.task.spec.to);
            return Err(format!(
                "the output record is {size} bytes; {name} takes batches of at most {max} \
                 bytes (max-message-bytes)"
            ));
        }
        Ok(topic)
    }
}

/// Refuses a source batch's changelog output that would not fit in one batch of the
/// changelog topic (uncompressed, an upper bound of what is stored).
fn check_changelog_size(
    entries: &[(i64, log::Record)],
    changelog: &TopicName,
    max_message_bytes: u32,
) -> Result<(), TaskError> {
    let size: usize = entries
        .iter()
        .map(|(_, r)| {
            record_size(
                r.key.as_ref(),
                r.value.as_ref(),
                r.headers.iter().map(|h| (&h.key, h.value.as_ref())),
            )
        })
        .sum();
    if size > max_message_bytes as usize {
        return Err(TaskError::Permanent(format!(
            "the state changes of one source batch take {size} bytes, more than {changelog} \
             takes in one batch ({max_message_bytes} bytes, max-message-bytes): raise the \
             topic's max-message-bytes, or use fewer windows per record"
        )));
    }
    Ok(())
}

/// Where window results go: the pipeline's destination partition for this source partition.
async fn results_partition(task: &PartitionTask) -> Result<Destination, TaskError> {
    destination_partition(task, &mut HashMap::new(), task.spec.to.clone()).await
}

/// Counts rejected records, and with `errors=dlq` routes their originals, with error
/// headers, to the dead-letter topic.
async fn route_rejections(
    task: &PartitionTask,
    source: &[StoredRecord],
    rejected: &[Rejection],
    routed: &mut Routed,
    partitions_of: &mut HashMap<TopicName, u32>,
) -> Result<(), TaskError> {
    let count = rejected.len() as u64;
    let (ErrorPolicy::Dlq, Some(dlq)) = (task.spec.errors, &task.spec.dlq_topic) else {
        task.status.update(|s| s.skipped += count);
        return Ok(());
    };
    for rejection in rejected {
        let Some(original) = source
            .iter()
            .find(|r| r.offset.0 as i64 == rejection.offset)
        else {
            continue;
        };
        let destination = destination_partition(task, partitions_of, dlq.clone()).await?;
        let letter = dead_letter(
            &task.spec.name,
            (&task.spec.from, task.partition),
            original.offset.0 as i64,
            &original.record,
            rejection,
        );
        let entries = routed.entry(destination).or_default();
        let at = entries.partition_point(|(offset, _)| *offset <= rejection.offset);
        entries.insert(at, (rejection.offset, letter));
    }
    task.status.update(|s| s.dead_lettered += count);
    Ok(())
}

/// The destination partition for `topic` (created with the defaults if it does not exist):
/// the source partition modulo the topic's partitions, so order per key is kept.
async fn destination_partition(
    task: &PartitionTask,
    partitions_of: &mut HashMap<TopicName, u32>,
    topic: TopicName,
) -> Result<Destination, TaskError> {
    let partitions = match partitions_of.get(&topic) {
        Some(n) => *n,
        None => {
            ensure_topic(&task.log, &topic)
                .await
                .map_err(TaskError::opening(&topic))?;
            let n = task
                .log
                .topic_config(&topic)
                .map_err(TaskError::opening(&topic))?
                .partitions
                .max(1);
            partitions_of.insert(topic.clone(), n);
            n
        }
    };
    Ok(Destination {
        topic,
        partition: PartitionId(task.partition.0 % partitions),
    })
}
