//! One partition: its segments, its single writer task (group commit) and its readers.
//!
//! ```text
//! mod.rs        the handle: appends queued to the writer, reads, offsets by time
//! writer.rs     the only writer: group commit, pipelined fdatasync, rolls, restarts
//! recovery.rs   opening: segments listed and checked, the recovery point, a restart's log start
//! retention.rs  what retention deletes, and the holds that keep what links still need
//! compaction.rs the newest record per key, sealed segments rewritten at the same offsets
//! lookup.rs     a compacted topic read as a table: the newest record of a key
//! ```

mod compaction;
mod lookup;
mod recovery;
mod retention;
mod writer;

pub use compaction::{
    CompactionReport, KEPT_BY_COMPACTION, MAX_COMPACTION_KEYS, RECENT_SEGMENTS_LEFT_WHOLE,
};
#[cfg(test)]
pub(super) use recovery::write_log_start;
pub(super) use retention::RetentionHold;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::recovery::recover;
use self::writer::Writer;
use super::batch::{self, BatchHeader};
use super::segment::{self, Segment};
use super::types::{Offset, PartitionId, Timestamp, TopicName};
use super::{Corruption, DiskBudget, Durability, LogError, PartitionState, TopicConfig, read_lock};

/// Appends waiting for the writer; beyond this, producers wait (backpressure).
const APPEND_QUEUE: usize = 1024;
/// How much one read of [`Partition::scan`] takes.
const SCAN_BYTES: usize = 1 << 20;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: Offset,
    pub last_offset: Offset,
}

/// Whole batches read from a partition. The first batch may start before the offset asked
/// for (a batch is never split); readers skip the records before it.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    pub batches: Bytes,
    /// The offset to read from next.
    pub next_offset: Offset,
    pub high_watermark: Offset,
    pub log_start: Offset,
}

/// What the writer is asked to do, in the order asked.
enum Request {
    Append(AppendRequest),
    RestartAt {
        offset: Offset,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

struct AppendRequest {
    batch: BytesMut,
    header: BatchHeader,
    placement: Placement,
    reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
}

/// Where an appended batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// At the partition's next offset, whatever its base offset says (a producer's batch).
    Next,
    /// At its own base offset, which must be the partition's next offset (a mirrored batch,
    /// which keeps the offsets it has at its origin).
    Own,
}

#[derive(Debug)]
pub struct Partition {
    topic: TopicName,
    id: PartitionId,
    dir: PathBuf,
    config: Arc<RwLock<TopicConfig>>,
    /// The origin of the topic's records while it is a mirror, shared with the topic (and so
    /// with every partition): producers are refused while it is set.
    mirror_of: Arc<RwLock<Option<String>>>,
    /// The data directory's budget, which admits each append; `None` for a topic outside it.
    budget: Option<Arc<DiskBudget>>,
    /// Ordered by base offset; the last one is active. Never empty.
    segments: RwLock<Vec<Arc<Segment>>>,
    high_watermark: watch::Sender<Offset>,
    requests: mpsc::Sender<Request>,
    /// Retention holds by holder; in memory only, their holders register them again after a
    /// restart.
    holds: Mutex<BTreeMap<String, RetentionHold>>,
    compaction: Mutex<compaction::CompactionState>,
    key_index: Mutex<lookup::KeyIndex>,
    /// Set when the writer stopped on an error it cannot recover from (a failed fsync).
    failure: OnceLock<Arc<LogError>>,
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
}

/// A sealed segment as a reader sees it: the offsets it holds, its size, and where its
/// columnar form is kept (deleted by the log with the segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    pub base: Offset,
    /// The offset after its last record.
    pub next: Offset,
    pub bytes: u64,
    pub columns_path: PathBuf,
    pub columns_temp_path: PathBuf,
}

impl Partition {
    /// Opens (or, with `create`, creates) the partition in `dir`, recovers it and starts its
    /// writer on `writers`, stopping when `shutdown` is cancelled.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open(
        topic: TopicName,
        id: PartitionId,
        dir: PathBuf,
        config: Arc<RwLock<TopicConfig>>,
        mirror_of: Arc<RwLock<Option<String>>>,
        budget: Option<Arc<DiskBudget>>,
        durability: Durability,
        create: bool,
        shutdown: &CancellationToken,
        writers: &TaskTracker,
    ) -> Result<Arc<Self>, LogError> {
        let recover_dir = dir.clone();
        let (segments, recovery_point) =
            tokio::task::spawn_blocking(move || recover(&recover_dir, create))
                .await
                .map_err(|e| LogError::Io {
                    op: "recover partition",
                    path: dir.clone(),
                    source: std::io::Error::other(e),
                })??;
        let active = segments.last().cloned().ok_or(LogError::ShuttingDown)?;
        let (sender, requests) = mpsc::channel(APPEND_QUEUE);
        let partition = Arc::new(Self {
            topic,
            id,
            dir,
            config,
            mirror_of,
            budget,
            high_watermark: watch::Sender::new(active.next_offset()),
            segments: RwLock::new(segments),
            requests: sender,
            holds: Mutex::new(BTreeMap::new()),
            compaction: Mutex::default(),
            key_index: Mutex::default(),
            failure: OnceLock::new(),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
        });
        if let Some(budget) = &partition.budget {
            budget.register(&partition);
        }
        let writer = Writer::new(partition.clone(), active, durability, recovery_point);
        writers.spawn(writer.run(requests, shutdown.clone()));
        Ok(partition)
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    pub fn log_start(&self) -> Offset {
        read_lock(&self.segments)
            .first()
            .map_or(Offset(0), |s| s.base())
    }

    /// The sealed segments, oldest first: what a reader may keep a columnar form of.
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        let segments = read_lock(&self.segments);
        segments[..segments.len().saturating_sub(1)]
            .iter()
            .map(|s| SealedSegment {
                base: s.base(),
                next: s.next_offset(),
                bytes: s.visible_len(),
                columns_path: segment::columns_path(&self.dir, s.base()),
                columns_temp_path: segment::columns_temp_path(&self.dir, s.base()),
            })
            .collect()
    }

    pub(super) fn state(&self) -> PartitionState {
        if let Some(cause) = self.failure.get() {
            return PartitionState::Failed {
                reason: cause.to_string(),
            };
        }
        let segments = read_lock(&self.segments);
        PartitionState::Online {
            log_start: segments.first().map_or(Offset(0), |s| s.base()),
            high_watermark: self.high_watermark(),
            size_bytes: segments.iter().map(|s| s.visible_len()).sum(),
            segments: segments.len(),
        }
    }

    fn unavailable(&self) -> LogError {
        LogError::Unavailable {
            topic: self.topic.clone(),
            partition: self.id,
            cause: self
                .failure
                .get()
                .cloned()
                .unwrap_or_else(|| Arc::new(LogError::ShuttingDown)),
        }
    }

    /// Appends one encoded batch and waits until it is durable. The batch's base offset is
    /// replaced by the partition's next offset. A mirror's partitions refuse it with
    /// [`LogError::ReadOnlyMirror`].
    pub async fn append(&self, batch: BytesMut) -> Result<AppendOutcome, LogError> {
        self.submit(batch).await?.await
    }

    /// Appends one batch at its own base offset and waits until it is durable: what a mirror
    /// does, so that every record keeps the offset it has at its origin and the stored bytes
    /// are the origin's. A batch that does not start at the partition's next offset is
    /// refused with [`LogError::NotNextOffset`], which names the offset expected. The only
    /// append a mirror topic takes.
    pub async fn append_at_own_offset(&self, batch: BytesMut) -> Result<AppendOutcome, LogError> {
        self.submit_at_own_offset(batch).await?.await
    }

    /// Queues a batch to be stored at its own offsets, as [`Partition::append_at_own_offset`];
    /// the returned future resolves once it is durable, so a mirror can receive the next
    /// batch while this one is written.
    pub async fn submit_at_own_offset(
        &self,
        batch: BytesMut,
    ) -> Result<impl std::future::Future<Output = Result<AppendOutcome, LogError>> + use<>, LogError>
    {
        self.queue(batch, Placement::Own).await
    }

    /// Validates and queues one batch; the returned future resolves once it is durable.
    /// Batches submitted one after the other are stored in that order, so a producer can
    /// submit its next batch before the previous one is durable. A mirror's partitions refuse
    /// it with [`LogError::ReadOnlyMirror`].
    pub async fn submit(
        &self,
        batch: BytesMut,
    ) -> Result<impl std::future::Future<Output = Result<AppendOutcome, LogError>> + use<>, LogError>
    {
        self.queue(batch, Placement::Next).await
    }

    async fn queue(
        &self,
        batch: BytesMut,
        placement: Placement,
    ) -> Result<impl std::future::Future<Output = Result<AppendOutcome, LogError>> + use<>, LogError>
    {
        // Checked here rather than by the writer: a topic only ever stops being a mirror, so a
        // batch that passed cannot end up in a mirror.
        if placement == Placement::Next
            && let Some(origin) = read_lock(&self.mirror_of).clone()
        {
            return Err(LogError::ReadOnlyMirror {
                topic: self.topic.clone(),
                origin,
            });
        }
        let max = read_lock(&self.config).max_message_bytes;
        if batch.len() > max as usize {
            return Err(LogError::RecordTooLarge {
                topic: self.topic.clone(),
                size: batch.len(),
                max,
            });
        }
        let header = batch::validate(&batch)?;
        header.check_timestamps()?;
        if placement == Placement::Next {
            header.check_dense()?;
            if read_lock(&self.config).cleanup_policy.compacts() {
                self.check_keyed(&header, &batch)?;
            }
        }
        if header.total_len != batch.len() {
            return Err(LogError::InvalidBatch(batch::BatchError::TrailingBytes {
                extra: batch.len() - header.total_len,
            }));
        }
        if let Some(budget) = &self.budget {
            budget.admit(batch.len() as u64).await?;
        }
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request::Append(AppendRequest {
                batch,
                header,
                placement,
                reply,
            }))
            .await
            .map_err(|_| self.unavailable())?;
        let unavailable = self.unavailable();
        Ok(async move { outcome.await.map_err(|_| unavailable)? })
    }

    /// Refuses a batch with a record without a key: a compacted topic keeps the newest record
    /// per key, so a keyless record could never be replaced or deleted.
    fn check_keyed(&self, header: &BatchHeader, batch: &BytesMut) -> Result<(), LogError> {
        let mut keyless = false;
        batch::visit_batch(header, Bytes::copy_from_slice(batch), |record| {
            keyless |= record.key.is_none();
        })?;
        if keyless {
            return Err(LogError::KeylessRecordInCompactedTopic {
                topic: self.topic.clone(),
                policy: read_lock(&self.config).cleanup_policy.as_str(),
            });
        }
        Ok(())
    }

    /// Empties the partition and moves its start and end to `offset`, which must be at or past
    /// the high watermark (at it, nothing changes): the next batch kept at its own offsets
    /// must start there, and reads below it are out of range. A mirror does this when its
    /// origin's retention deleted records it never received, so that it continues at the
    /// origin's new log start with every offset unchanged. Durable when it returns; ordered
    /// with appends, as it is done by the writer.
    pub async fn restart_at(&self, offset: Offset) -> Result<(), LogError> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request::RestartAt { offset, reply })
            .await
            .map_err(|_| self.unavailable())?;
        outcome.await.map_err(|_| self.unavailable())?
    }

    /// Records and stored bytes appended since the appliance started.
    pub fn appended(&self) -> (u64, u64) {
        (
            self.appended_records.load(Ordering::Relaxed),
            self.appended_bytes.load(Ordering::Relaxed),
        )
    }

    /// A receiver that sees every change of the high watermark.
    pub fn watch_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    /// Decodes and visits every record from `from` (or the log start, if later) up to the high
    /// watermark as it is when called, in offset order: the start-up scan of a partition's
    /// tail that pipelines and source connectors make to find their own tags.
    pub fn scan(
        &self,
        from: Offset,
        mut visit: impl FnMut(batch::StoredRecord),
    ) -> Result<(), LogError> {
        self.visit_records(from, |record| visit(record.to_stored()))
            .map(|_| ())
    }

    /// [`Partition::scan`] with each record borrowed from its batch; returns the offset it
    /// read to.
    fn visit_records(
        &self,
        from: Offset,
        mut visit: impl FnMut(batch::RecordView<'_>),
    ) -> Result<Offset, LogError> {
        let end = self.high_watermark();
        let mut offset = from.max(self.log_start());
        while offset < end {
            let chunk = match self.read(offset, SCAN_BYTES) {
                // Retention moved the log start past us meanwhile.
                Err(LogError::OffsetOutOfRange { log_start, .. }) if offset < log_start => {
                    offset = log_start;
                    continue;
                }
                chunk => chunk?,
            };
            if chunk.batches.is_empty() {
                break;
            }
            batch::visit_all(chunk.batches, |record| {
                if record.offset >= offset {
                    visit(record);
                }
            })?;
            offset = chunk.next_offset;
        }
        Ok(offset)
    }

    /// Visits the header of every batch below the high watermark in the newest `segments`
    /// segments, in offset order: where the recent batches of Kafka's idempotent producers are.
    pub fn visit_recent_headers(
        &self,
        segments: usize,
        mut visit: impl FnMut(&BatchHeader),
    ) -> Result<(), LogError> {
        let high_watermark = self.high_watermark();
        let recent: Vec<Arc<Segment>> = {
            let all = read_lock(&self.segments);
            all[all.len().saturating_sub(segments)..].to_vec()
        };
        for segment in recent {
            segment.visit_headers(segment.base(), |_, header| {
                if header.base_offset >= high_watermark {
                    return false;
                }
                visit(header);
                true
            })?;
        }
        Ok(())
    }

    /// Reads whole batches from `offset`, at most about `max_bytes` (always at least one batch).
    /// Returns an empty chunk at the high watermark.
    pub fn read(&self, offset: Offset, max_bytes: usize) -> Result<ReadChunk, LogError> {
        let high_watermark = self.high_watermark();
        let (log_start, segments): (Offset, Vec<Arc<Segment>>) = {
            let all = read_lock(&self.segments);
            let first_needed = all
                .partition_point(|s| s.base() <= offset)
                .saturating_sub(1);
            (
                all.first().map_or(Offset(0), |s| s.base()),
                all[first_needed..].to_vec(),
            )
        };
        let chunk = |batches, next_offset| ReadChunk {
            batches,
            next_offset,
            high_watermark,
            log_start,
        };
        if offset > high_watermark || (offset < log_start && offset < high_watermark) {
            return Err(LogError::OffsetOutOfRange {
                topic: self.topic.clone(),
                partition: self.id,
                offset,
                log_start,
                high_watermark,
            });
        }
        for segment in &segments {
            if offset >= high_watermark {
                break;
            }
            if let Some(position) = segment.locate(offset)? {
                let (batches, next_offset) =
                    segment.read_batches(position, max_bytes, high_watermark)?;
                if !batches.is_empty() {
                    return Ok(chunk(batches, next_offset));
                }
            }
        }
        Ok(chunk(Bytes::new(), offset))
    }

    /// [`Partition::read`], but at the high watermark waits up to `max_wait` for new data.
    pub async fn read_wait(
        &self,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadChunk, LogError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut changes = self.high_watermark.subscribe();
        loop {
            let chunk = self.read(offset, max_bytes)?;
            if !chunk.batches.is_empty() || max_wait.is_zero() {
                return Ok(chunk);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Err(_elapsed) => return Ok(chunk),
                Ok(Err(_closed)) => return Err(self.unavailable()),
                Ok(Ok(())) => {}
            }
        }
    }

    /// The first offset whose record has a timestamp at or after `target`, if any.
    pub fn offset_for_timestamp(&self, target: Timestamp) -> Result<Option<Offset>, LogError> {
        let high_watermark = self.high_watermark();
        let segments: Vec<Arc<Segment>> = read_lock(&self.segments).clone();
        for segment in segments {
            if segment.max_timestamp().is_none_or(|max| max < target) {
                continue;
            }
            let mut found = None;
            segment.visit_headers(segment.time_floor(target), |position, header| {
                if header.base_offset >= high_watermark {
                    return false;
                }
                if header.max_timestamp >= target {
                    found = Some((position, *header));
                    return false;
                }
                true
            })?;
            if let Some((position, header)) = found {
                let bytes = segment.read_batch(position, &header)?;
                let mut records = Vec::new();
                batch::decode_batch(&header, bytes, &mut records).map_err(|e| {
                    LogError::Corrupt {
                        path: segment.path().to_path_buf(),
                        position,
                        problem: Corruption::Batch(e),
                    }
                })?;
                return Ok(records
                    .iter()
                    .find(|r| r.record.timestamp >= target)
                    .map(|r| r.offset));
            }
        }
        Ok(None)
    }
}
