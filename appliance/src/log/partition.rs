//! One partition: its segments, its single writer task (group commit) and its readers.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batch::{self, BatchHeader};
use super::segment::{self, Segment};
use super::types::{Offset, PartitionId, Timestamp, TopicName};
use super::{
    Corruption, Durability, INDEX_INTERVAL_BYTES, LogError, PartitionState, TopicConfig, io_error,
    read_lock,
};

/// Appends waiting for the writer; beyond this, producers wait (backpressure).
const APPEND_QUEUE: usize = 1024;
/// One group takes at most this many bytes, so a flood of appends is written and
/// acknowledged in steps rather than after one giant write.
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;
/// Bytes written but not yet durable; beyond this the writer waits for the fsync in flight
/// before taking more appends, which bounds how long an acknowledgement can take.
const MAX_UNSYNCED_BYTES: u64 = 64 * 1024 * 1024;
/// How much one read of [`Partition::scan`] takes.
const SCAN_BYTES: usize = 1 << 20;
const RECOVERY_POINT_FILE: &str = "recovery-point";
const RECOVERY_POINT_LEN: usize = 20;
const LOG_START_FILE: &str = "log-start";
const LOG_START_LEN: usize = 12;

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

/// What one holder asks retention to keep of a partition (see [`Partition::apply_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RetentionHold {
    /// Keep every segment holding an offset at or after this one...
    pub keep_from: Offset,
    /// ...unless the partition holds more than this many bytes.
    pub max_bytes: u64,
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
    /// Ordered by base offset; the last one is active. Never empty.
    segments: RwLock<Vec<Arc<Segment>>>,
    high_watermark: watch::Sender<Offset>,
    requests: mpsc::Sender<Request>,
    /// Retention holds by holder; in memory only, their holders register them again after a
    /// restart.
    holds: Mutex<BTreeMap<String, RetentionHold>>,
    /// Set when the writer stopped on an error it cannot recover from (a failed fsync).
    failure: OnceLock<Arc<LogError>>,
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
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
            high_watermark: watch::Sender::new(active.next_offset()),
            segments: RwLock::new(segments),
            requests: sender,
            holds: Mutex::new(BTreeMap::new()),
            failure: OnceLock::new(),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
        });
        let writer = Writer {
            partition: partition.clone(),
            write_len: active.visible_len(),
            next_offset: active.next_offset(),
            active,
            active_since: None,
            durability,
            recovery_point,
            unsynced: VecDeque::new(),
            in_flight: None,
        };
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
        if header.total_len != batch.len() {
            return Err(LogError::InvalidBatch(batch::BatchError::TrailingBytes {
                extra: batch.len() - header.total_len,
            }));
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

    /// Registers or replaces `holder`'s retention hold.
    pub(super) fn set_retention_hold(&self, holder: &str, hold: RetentionHold) {
        self.lock_holds().insert(holder.to_owned(), hold);
    }

    pub(super) fn release_retention_hold(&self, holder: &str) {
        self.lock_holds().remove(holder);
    }

    fn lock_holds(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RetentionHold>> {
        self.holds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What all holds together keep: from the smallest offset, up to the smallest cap.
    fn binding_hold(&self) -> Option<RetentionHold> {
        self.lock_holds()
            .values()
            .copied()
            .reduce(|a, b| RetentionHold {
                keep_from: a.keep_from.min(b.keep_from),
                max_bytes: a.max_bytes.min(b.max_bytes),
            })
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
            batch::decode_all(chunk.batches)?
                .into_iter()
                .filter(|record| record.offset >= offset)
                .for_each(&mut visit);
            offset = chunk.next_offset;
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

    /// Deletes sealed segments past the topic's retention by age, then by size, oldest first.
    /// Retention holds keep every segment holding an offset at or after the smallest
    /// `keep_from`, unless the partition is over the smallest cap; what the cap then forces
    /// out is logged as a warning. Returns how many segments were deleted.
    pub fn apply_retention(&self, now: Timestamp) -> Result<usize, LogError> {
        let config = read_lock(&self.config).clone();
        let hold = self.binding_hold();
        let doomed: Vec<Arc<Segment>> = {
            let mut segments = self
                .segments
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let total_bytes = segments.iter().map(|s| s.visible_len()).sum();
            let sealed: Vec<SealedSegment> = segments[..segments.len().saturating_sub(1)]
                .iter()
                .map(|s| SealedSegment {
                    end: s.next_offset(),
                    len: s.visible_len(),
                    max_timestamp: s.max_timestamp(),
                })
                .collect();
            let count = segments_to_delete(&sealed, total_bytes, &config, now, hold);
            if let (Some(hold), Some(first), Some(new_start)) = (
                hold,
                segments.first(),
                segments.get(count).map(|s| s.base()),
            ) && count > 0
                && new_start > hold.keep_from
            {
                tracing::warn!(
                    topic = %self.topic,
                    partition = %self.id,
                    lost_from = %hold.keep_from.max(first.base()),
                    lost_to = %new_start,
                    max_bytes = hold.max_bytes,
                    "retention deletes offsets a retention hold asked to keep: the partition \
                     exceeds the hold's cap (the holder sees its position before the log start)"
                );
            }
            segments.drain(..count).collect()
        };
        for segment in &doomed {
            segment.delete_files()?;
            tracing::info!(
                topic = %self.topic,
                partition = %self.id,
                segment = %segment.path().display(),
                "retention deleted segment"
            );
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }
}

/// What retention needs to know of a sealed segment.
#[derive(Debug, Clone, Copy)]
struct SealedSegment {
    /// The offset after its last batch.
    end: Offset,
    len: u64,
    max_timestamp: Option<Timestamp>,
}

/// How many of the oldest sealed segments retention deletes: those past `retention-ms` or
/// beyond `retention-bytes`, but with a hold only those wholly below its `keep_from`, or as
/// many as bring the partition within its cap. A hold never adds to what the topic's
/// retention deletes.
fn segments_to_delete(
    sealed: &[SealedSegment],
    total_bytes: u64,
    config: &TopicConfig,
    now: Timestamp,
    hold: Option<RetentionHold>,
) -> usize {
    let mut remaining = total_bytes;
    let by_retention = sealed
        .iter()
        .take_while(|segment| {
            let expired = config.retention_ms.is_some_and(|ms| {
                segment
                    .max_timestamp
                    .is_some_and(|max| max.0 < now.0.saturating_sub(ms as i64))
            });
            let oversized = config
                .retention_bytes
                .is_some_and(|max| remaining.saturating_sub(segment.len) >= max);
            remaining = remaining.saturating_sub(segment.len);
            expired || oversized
        })
        .count();
    let Some(hold) = hold else {
        return by_retention;
    };
    let unheld = sealed
        .iter()
        .take_while(|segment| segment.end <= hold.keep_from)
        .count();
    let mut remaining = total_bytes;
    let over_cap = sealed
        .iter()
        .take_while(|segment| {
            let over = remaining > hold.max_bytes;
            remaining = remaining.saturating_sub(segment.len);
            over
        })
        .count();
    by_retention.min(unheld.max(over_cap))
}

/// Lists the segments in `dir`, opens the sealed ones and recovers the active one.
fn recover(dir: &Path, create: bool) -> Result<(Vec<Arc<Segment>>, RecoveryPointFile), LogError> {
    if !dir.exists() {
        if !create {
            tracing::warn!(dir = %dir.display(), "partition directory is missing; starting it empty");
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir, "create partition directory"))?;
        if let Some(parent) = dir.parent() {
            segment::sync_dir(parent)?;
        }
    }
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir, "list partition"))? {
        let entry = entry.map_err(io_error(dir, "list partition"))?;
        if let Some(base) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_log_file_name)
        {
            bases.push(base);
        }
    }
    bases.sort();
    let log_start = read_log_start(dir)?;
    if let Some(start) = log_start {
        let below = bases.partition_point(|&base| base < start);
        finish_restart(dir, start, bases.drain(..below))?;
    }
    let recovery_point = RecoveryPointFile::open(dir)?;
    let Some((&active_base, sealed_bases)) = bases.split_last() else {
        let base = recovery_point
            .last
            .map_or(Offset(0), |p| p.base)
            .max(log_start.unwrap_or(Offset(0)));
        let first = Segment::create(dir, base)?;
        return Ok((vec![Arc::new(first)], recovery_point));
    };
    let mut segments = Vec::with_capacity(bases.len());
    let mut expected: Option<Offset> = None;
    for &base in sealed_bases {
        let segment = Segment::open_sealed(dir, base)?;
        check_follows(&segment, expected)?;
        expected = Some(segment.next_offset());
        segments.push(Arc::new(segment));
    }
    let durable_len = match recovery_point.last {
        Some(point) if point.base == active_base => point.durable_len,
        Some(point) if point.base > active_base => {
            return Err(LogError::Corrupt {
                path: segment::log_path(dir, point.base),
                position: 0,
                problem: Corruption::MissingDurableBytes {
                    durable_len: point.durable_len,
                },
            });
        }
        _ => 0,
    };
    let active = Segment::recover_active(dir, active_base, durable_len)?;
    check_follows(&active, expected)?;
    segments.push(Arc::new(active));
    Ok((segments, recovery_point))
}

/// Deletes the segments a restart of the partition at `start` left behind when the process
/// stopped midway (see [`Writer::restart_at`]).
///
/// Why a `log-start` file rather than inferring the restart from the segments (older ones,
/// then an empty one starting after their end): that shape is also what losing a segment file
/// looks like, and recovery must never delete data on a guess. Why not a field of the
/// recovery point: that file is overwritten in place without an fsync and ignored when torn,
/// which is harmless for what it says (it only narrows checks) but not for a value that
/// decides what to delete; `log-start` is replaced atomically and synced.
///
/// Segments below `start` are deleted by their base offset alone: a restart writes the file
/// only when every segment ends at or before `start`, and after it every new segment starts
/// at or after it.
fn finish_restart(
    dir: &Path,
    start: Offset,
    leftovers: impl Iterator<Item = Offset>,
) -> Result<(), LogError> {
    let mut deleted = false;
    for base in leftovers {
        tracing::warn!(
            segment = %segment::log_path(dir, base).display(),
            log_start = %start,
            "finishing an interrupted restart of the partition: deleting a segment below its new start"
        );
        segment::delete_files(dir, base)?;
        deleted = true;
    }
    if deleted {
        segment::sync_dir(dir)?;
    }
    Ok(())
}

/// The start a restart of the partition moved it to, if it was ever restarted.
fn read_log_start(dir: &Path) -> Result<Option<Offset>, LogError> {
    let path = dir.join(LOG_START_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, "read log start")(e)),
    };
    let valid = bytes.len() == LOG_START_LEN && {
        let (body, mut crc) = bytes.split_at(8);
        crc32c::crc32c(body) == crc.get_u32()
    };
    if !valid {
        return Err(LogError::Corrupt {
            path,
            position: 0,
            problem: Corruption::DamagedLogStart,
        });
    }
    Ok(Some(Offset((&bytes[..8]).get_u64())))
}

/// Durably replaces the `log-start` file: an offset and its CRC-32C.
pub(super) fn write_log_start(dir: &Path, start: Offset) -> Result<(), LogError> {
    let mut buf = Vec::with_capacity(LOG_START_LEN);
    buf.put_u64(start.0);
    let crc = crc32c::crc32c(&buf);
    buf.put_u32(crc);
    segment::write_durably(&dir.join(LOG_START_FILE), &buf)
}

fn check_follows(segment: &Segment, expected: Option<Offset>) -> Result<(), LogError> {
    match expected {
        Some(expected) if segment.base() != expected => Err(LogError::Corrupt {
            path: segment.path().to_path_buf(),
            position: 0,
            problem: Corruption::SegmentGap { expected },
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecoveryPoint {
    base: Offset,
    durable_len: u64,
}

/// The `recovery-point` file: overwritten in place after each durable commit, never fsynced on
/// its own. Whatever value reached the disk was true when written, because it is written only
/// after the data it describes was fsynced.
#[derive(Debug)]
struct RecoveryPointFile {
    file: File,
    path: PathBuf,
    last: Option<RecoveryPoint>,
}

impl RecoveryPointFile {
    fn open(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(RECOVERY_POINT_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path, "open recovery point"))?;
        let mut buf = [0u8; RECOVERY_POINT_LEN];
        let last = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => {
                let (body, mut crc) = buf.split_at(16);
                if crc32c::crc32c(body) == crc.get_u32() {
                    let mut body = body;
                    Some(RecoveryPoint {
                        base: Offset(body.get_u64()),
                        durable_len: body.get_u64(),
                    })
                } else {
                    tracing::warn!(file = %path.display(), "recovery point is damaged; checking the whole active segment as a possible torn tail");
                    None
                }
            }
            Err(_) => None,
        };
        Ok(Self { file, path, last })
    }

    fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_all()
            .map_err(io_error(&self.path, "fsync recovery point"))
    }

    fn write(&mut self, point: RecoveryPoint) -> Result<(), LogError> {
        if self.last == Some(point) {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(RECOVERY_POINT_LEN);
        buf.put_u64(point.base.0);
        buf.put_u64(point.durable_len);
        let crc = crc32c::crc32c(&buf);
        buf.put_u32(crc);
        self.file
            .write_all_at(&buf, 0)
            .map_err(io_error(&self.path, "write recovery point"))?;
        self.last = Some(point);
        Ok(())
    }
}

/// The partition's only writer: owns the active segment's write position.
///
/// Commits are pipelined: while one fdatasync is in flight, the next group of batches is
/// already being written, and the next fdatasync starts as soon as the previous one returns.
/// So the disk never waits for the writer, and one fdatasync covers every batch written
/// while the previous one ran.
struct Writer {
    partition: Arc<Partition>,
    active: Arc<Segment>,
    /// Bytes written to the active segment, durable or not.
    write_len: u64,
    next_offset: Offset,
    /// When the active segment got its first append since it was opened; drives `segment-ms`.
    active_since: Option<Instant>,
    durability: Durability,
    recovery_point: RecoveryPointFile,
    /// Written to the active segment, waiting to be durable, oldest first.
    unsynced: VecDeque<Written>,
    in_flight: Option<InFlightSync>,
}

/// A batch written to the active segment whose producer waits for its acknowledgement.
struct Written {
    position: u64,
    header: BatchHeader,
    reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
}

/// An fdatasync running on the blocking pool, covering the first `covered` unsynced batches.
struct InFlightSync {
    job: tokio::task::JoinHandle<Result<(), LogError>>,
    covered: usize,
}

/// What woke the writer.
enum Event {
    Synced(Result<(), LogError>),
    Requests(Vec<Request>),
    Stop,
}

impl Writer {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        loop {
            let room = self.unsynced_bytes() < MAX_UNSYNCED_BYTES;
            let event = tokio::select! {
                biased;
                synced = wait_for(&mut self.in_flight) => Event::Synced(synced),
                () = shutdown.cancelled() => Event::Stop,
                request = requests.recv(), if room => match request {
                    Some(first) => Event::Requests(take_group(first, &mut requests)),
                    None => Event::Stop,
                },
            };
            let step = match event {
                Event::Synced(result) => {
                    let covered = self.in_flight.take().map_or(0, |sync| sync.covered);
                    result.map(|()| self.complete(covered))
                }
                Event::Requests(group) => self.handle_group(group).await,
                Event::Stop => break,
            };
            if let Err(error) = step.and_then(|()| self.start_sync_if_idle()) {
                self.fail(error);
                return;
            }
        }
        requests.close();
        let mut rest = Vec::new();
        while let Ok(request) = requests.try_recv() {
            rest.push(request);
        }
        let finished = async {
            self.handle_group(rest).await?;
            self.sync_now().await?;
            let active = self.active.clone();
            blocking(move || active.write_index_files()).await?;
            self.recovery_point.write(RecoveryPoint {
                base: self.active.base(),
                durable_len: self.write_len,
            })?;
            self.recovery_point.sync()
        };
        if let Err(error) = finished.await {
            tracing::error!(topic = %self.partition.topic, partition = %self.partition.id, %error, "final flush failed");
            self.fail(error);
        }
    }

    /// Assigns offsets to the group's batches and writes them, rolling segments between them
    /// where needed, and restarts the partition where asked, in the order of the requests.
    /// Batches become durable and acknowledged later, in [`Writer::complete`].
    async fn handle_group(&mut self, group: Vec<Request>) -> Result<(), LogError> {
        let mut run: Vec<(u64, BatchHeader, AppendRequest)> = Vec::with_capacity(group.len());
        for request in group {
            let mut request = match request {
                Request::Append(request) => request,
                Request::RestartAt { offset, reply } => {
                    self.write_run(std::mem::take(&mut run)).await?;
                    self.restart_at(offset, reply).await?;
                    continue;
                }
            };
            if request.placement == Placement::Own && request.header.base_offset != self.next_offset
            {
                let _ = request.reply.send(Err(LogError::NotNextOffset {
                    topic: self.partition.topic.clone(),
                    partition: self.partition.id,
                    expected: self.next_offset,
                    got: request.header.base_offset,
                }));
                continue;
            }
            if self.should_roll(&request.header) {
                self.write_run(std::mem::take(&mut run)).await?;
                if let Err(cause) = self.roll().await? {
                    let _ = request.reply.send(Err(LogError::AppendFailed {
                        cause: Arc::new(cause),
                    }));
                    continue;
                }
            }
            let position = self.write_len;
            batch::set_base_offset(&mut request.batch, self.next_offset);
            let mut header = request.header;
            header.base_offset = self.next_offset;
            self.write_len += header.total_len as u64;
            self.next_offset = header.next_offset();
            self.active_since.get_or_insert_with(Instant::now);
            run.push((position, header, request));
        }
        self.write_run(run).await
    }

    /// Writes consecutive batches of the active segment on the blocking pool. A failed write
    /// (a full disk, say) cuts what it left and fails that batch and the ones after it; the
    /// partition stays as it was before them. Only an error of the pool itself is returned.
    async fn write_run(
        &mut self,
        run: Vec<(u64, BatchHeader, AppendRequest)>,
    ) -> Result<(), LogError> {
        if run.is_empty() {
            return Ok(());
        }
        let segment = self.active.clone();
        let (run, failure) = blocking(move || {
            let failure = run
                .iter()
                .enumerate()
                .find_map(|(i, (position, _, request))| {
                    segment
                        .write_at(*position, &request.batch)
                        .err()
                        .map(|error| {
                            let _ = segment.truncate_to(*position);
                            (i, error)
                        })
                });
            Ok((run, failure))
        })
        .await?;
        let written = failure.as_ref().map_or(run.len(), |(i, _)| *i);
        let mut run = run.into_iter();
        for (position, header, request) in run.by_ref().take(written) {
            self.unsynced.push_back(Written {
                position,
                header,
                reply: request.reply,
            });
        }
        if let Some((_, error)) = failure {
            let error = Arc::new(error);
            let mut rest = run.peekable();
            if let Some((position, header, _)) = rest.peek() {
                self.write_len = *position;
                self.next_offset = header.base_offset;
            }
            for (_, _, request) in rest {
                let _ = request.reply.send(Err(LogError::AppendFailed {
                    cause: error.clone(),
                }));
            }
        }
        if self.durability == Durability::Os {
            self.complete(self.unsynced.len());
        }
        Ok(())
    }

    fn unsynced_bytes(&self) -> u64 {
        self.unsynced
            .front()
            .map_or(0, |oldest| self.write_len - oldest.position)
    }

    fn start_sync_if_idle(&mut self) -> Result<(), LogError> {
        if self.durability == Durability::Fsync
            && self.in_flight.is_none()
            && !self.unsynced.is_empty()
        {
            let segment = self.active.clone();
            self.in_flight = Some(InFlightSync {
                job: tokio::task::spawn_blocking(move || segment.sync()),
                covered: self.unsynced.len(),
            });
        }
        Ok(())
    }

    /// Waits for the sync in flight, then makes everything written durable.
    async fn sync_now(&mut self) -> Result<(), LogError> {
        if let Some(sync) = self.in_flight.take() {
            join(sync.job).await?;
            self.complete(sync.covered);
        }
        let segment = self.active.clone();
        blocking(move || segment.sync()).await?;
        self.complete(self.unsynced.len());
        Ok(())
    }

    /// Publishes the first `covered` unsynced batches (now durable) and acknowledges them.
    fn complete(&mut self, covered: usize) {
        let done: Vec<Written> = self
            .unsynced
            .drain(..covered.min(self.unsynced.len()))
            .collect();
        let Some(last) = done.last() else {
            return;
        };
        let durable_len = last.position + last.header.total_len as u64;
        let high_watermark = last.header.next_offset();
        let published: Vec<(u64, BatchHeader)> =
            done.iter().map(|w| (w.position, w.header)).collect();
        self.active.publish(
            durable_len,
            high_watermark,
            &published,
            INDEX_INTERVAL_BYTES,
        );
        self.partition.high_watermark.send_replace(high_watermark);
        let records: u64 = done.iter().map(|w| u64::from(w.header.record_count)).sum();
        let bytes: u64 = done.iter().map(|w| w.header.total_len as u64).sum();
        self.partition
            .appended_records
            .fetch_add(records, Ordering::Relaxed);
        self.partition
            .appended_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if self.durability == Durability::Fsync
            && let Err(error) = self.recovery_point.write(RecoveryPoint {
                base: self.active.base(),
                durable_len,
            })
        {
            // The data is durable; a stale recovery point only makes the next start check more.
            tracing::warn!(%error, "recovery point not updated");
        }
        for written in done {
            let _ = written.reply.send(Ok(AppendOutcome {
                base_offset: written.header.base_offset,
                last_offset: written.header.last_offset(),
            }));
        }
    }

    fn should_roll(&self, header: &BatchHeader) -> bool {
        if self.write_len == 0 {
            return false;
        }
        let config = read_lock(&self.partition.config);
        let too_big = self.write_len + header.total_len as u64 > config.segment_bytes;
        let too_old = self
            .active_since
            .is_some_and(|since| since.elapsed() >= Duration::from_millis(config.segment_ms));
        let relative_end =
            self.next_offset.0 - self.active.base().0 + u64::from(header.record_count);
        too_big || too_old || relative_end > u64::from(u32::MAX)
    }

    /// Seals the active segment (data and indexes durable) and starts the next one.
    /// `Ok(Err(_))`: the index files or the next segment could not be written (a full disk);
    /// the active segment stays active, and the next append tries again, so the partition
    /// recovers by itself once there is room. `Err(_)`: the sync before failed, which stops
    /// the writer (what a failed fsync left on disk is unknown).
    async fn roll(&mut self) -> Result<Result<(), LogError>, LogError> {
        self.sync_now().await?;
        let sealed = self.active.clone();
        let dir = self.partition.dir.clone();
        let base = self.next_offset;
        let started = blocking(move || {
            sealed.write_index_files()?;
            Segment::create(&dir, base)
        })
        .await;
        let next = match started {
            Ok(next) => next,
            Err(error) => return Ok(Err(error)),
        };
        let next = Arc::new(next);
        self.partition
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(next.clone());
        self.active = next;
        self.write_len = 0;
        self.active_since = None;
        if let Err(error) = self.recovery_point.write(RecoveryPoint {
            base: self.active.base(),
            durable_len: 0,
        }) {
            // A stale recovery point only makes the next start check more.
            tracing::warn!(%error, "recovery point not updated");
        }
        Ok(Ok(()))
    }

    /// Empties the partition and starts it again at `offset` (see [`Partition::restart_at`]),
    /// answering on `reply`; an error returned stops the writer.
    ///
    /// The new start is written to the `log-start` file first (replaced atomically): that is
    /// the commit point, as recovery deletes every segment below it. Then the new, empty
    /// segment is created and synced, and only then are the old segments deleted. So a crash
    /// before the commit point leaves the partition as it was, and one after it is finished at
    /// the next start. An error stops the writer, before the commit point too: whether a
    /// failed replacement of `log-start` reached the disk is unknown, and only recovery can
    /// tell.
    async fn restart_at(
        &mut self,
        offset: Offset,
        reply: oneshot::Sender<Result<(), LogError>>,
    ) -> Result<(), LogError> {
        self.sync_now().await?;
        if offset <= self.next_offset {
            let _ = reply.send(if offset == self.next_offset {
                Ok(())
            } else {
                Err(LogError::RestartBeforeEnd {
                    topic: self.partition.topic.clone(),
                    partition: self.partition.id,
                    offset,
                    high_watermark: self.next_offset,
                })
            });
            return Ok(());
        }
        let dir = self.partition.dir.clone();
        let next = blocking(move || {
            write_log_start(&dir, offset)?;
            Segment::create(&dir, offset)
        })
        .await?;
        let next = Arc::new(next);
        let old = std::mem::replace(
            &mut *self
                .partition
                .segments
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            vec![next.clone()],
        );
        let old_start = old.first().map_or(offset, |s| s.base());
        self.active = next;
        self.write_len = 0;
        self.next_offset = offset;
        self.active_since = None;
        self.partition.high_watermark.send_replace(offset);
        self.recovery_point.write(RecoveryPoint {
            base: offset,
            durable_len: 0,
        })?;
        let dir = self.partition.dir.clone();
        blocking(move || {
            for segment in &old {
                segment.delete_files()?;
            }
            segment::sync_dir(&dir)
        })
        .await?;
        tracing::info!(
            topic = %self.partition.topic,
            partition = %self.partition.id,
            old_log_start = %old_start,
            log_start = %offset,
            "partition restarted past its end: its records are deleted, offsets continue"
        );
        let _ = reply.send(Ok(()));
        Ok(())
    }

    /// A failed fsync leaves the file's state unknown (the kernel may have dropped the dirty
    /// pages), so the partition stops taking writes until a restart recovers it from disk.
    fn fail(&mut self, error: LogError) {
        tracing::error!(topic = %self.partition.topic, partition = %self.partition.id, %error, "partition writer failed; restart to recover");
        let _ = self.partition.failure.set(Arc::new(error));
        for written in self.unsynced.drain(..) {
            let _ = written.reply.send(Err(self.partition.unavailable()));
        }
    }
}

/// Resolves when the sync in flight finishes; never, when there is none.
async fn wait_for(in_flight: &mut Option<InFlightSync>) -> Result<(), LogError> {
    match in_flight {
        Some(sync) => join(&mut sync.job).await,
        None => std::future::pending().await,
    }
}

async fn join<T>(
    job: impl std::future::Future<Output = Result<Result<T, LogError>, tokio::task::JoinError>>,
) -> Result<T, LogError> {
    job.await.map_err(|error| LogError::Io {
        op: "run blocking file operation",
        path: PathBuf::new(),
        source: std::io::Error::other(error.to_string()),
    })?
}

/// Runs a file operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    join(tokio::task::spawn_blocking(work)).await
}

fn take_group(first: Request, requests: &mut mpsc::Receiver<Request>) -> Vec<Request> {
    let bytes_of = |request: &Request| match request {
        Request::Append(append) => append.batch.len(),
        Request::RestartAt { .. } => 0,
    };
    let mut bytes = bytes_of(&first);
    let mut group = vec![first];
    while bytes < MAX_GROUP_BYTES {
        match requests.try_recv() {
            Ok(request) => {
                bytes += bytes_of(&request);
                group.push(request);
            }
            Err(_) => break,
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: i64 = 3_600_000;
    const NOW: Timestamp = Timestamp(1_000 * HOUR);

    /// Sealed segments (records, bytes, age in hours of the newest record) back to back from
    /// offset 0, and the partition's total bytes with an active segment.
    fn arb_partition() -> impl Strategy<Value = (Vec<SealedSegment>, u64)> {
        (
            proptest::collection::vec(
                (1u64..100, 1u64..1000, proptest::option::of(0i64..10)),
                0..12,
            ),
            0u64..1000,
        )
            .prop_map(|(specs, active_len)| {
                let mut end = 0;
                let sealed: Vec<SealedSegment> = specs
                    .into_iter()
                    .map(|(records, len, age)| {
                        end += records;
                        SealedSegment {
                            end: Offset(end),
                            len,
                            max_timestamp: age.map(|hours| Timestamp(NOW.0 - hours * HOUR)),
                        }
                    })
                    .collect();
                let total = active_len + sealed.iter().map(|s| s.len).sum::<u64>();
                (sealed, total)
            })
    }

    fn arb_config() -> impl Strategy<Value = TopicConfig> {
        (
            proptest::option::of(1u64..10),
            proptest::option::of(0u64..6000),
        )
            .prop_map(|(hours, bytes)| TopicConfig {
                retention_ms: hours.map(|h| h * HOUR as u64),
                retention_bytes: bytes,
                ..TopicConfig::default()
            })
    }

    fn arb_hold() -> impl Strategy<Value = RetentionHold> {
        (0u64..1200, prop_oneof![Just(u64::MAX), 0u64..12_000]).prop_map(
            |(keep_from, max_bytes)| RetentionHold {
                keep_from: Offset(keep_from),
                max_bytes,
            },
        )
    }

    proptest! {
        /// A hold only ever takes segments away from what retention deletes, and it stops
        /// retention exactly at the first segment it still needs while the partition is
        /// within its cap.
        #[test]
        fn a_hold_keeps_what_it_needs_within_its_cap_and_never_deletes_more(
            (sealed, total) in arb_partition(),
            config in arb_config(),
            hold in arb_hold(),
        ) {
            let without = segments_to_delete(&sealed, total, &config, NOW, None);
            let with = segments_to_delete(&sealed, total, &config, NOW, Some(hold));
            prop_assert!(with <= without);
            let bytes_before = |count: usize| total - sealed[..count].iter().map(|s| s.len).sum::<u64>();
            for (i, segment) in sealed[..with].iter().enumerate() {
                prop_assert!(
                    segment.end <= hold.keep_from || bytes_before(i) > hold.max_bytes,
                    "segment {} was needed by the hold and the partition was within the cap", i
                );
            }
            if with < without {
                prop_assert!(sealed[with].end > hold.keep_from, "stopped at a segment the hold needs");
                prop_assert!(bytes_before(with) <= hold.max_bytes, "stopped within the cap");
            }
        }
    }
}
