//! The partitioned log: topic -> partition -> segment files. The only writer of data files.
//!
//! # Data flow
//!
//! ```text
//! Log::append(topic, partition, batch)
//!   -> Partition::append: size limit, header and CRC checks, the data directory's disk
//!      budget (budget.rs; in the caller's task)
//!   -> bounded channel -> the partition's one writer task
//!        drains every request waiting (group commit), assigns offsets by rewriting each
//!        batch's base offset (outside the CRC), writes them, rolls segments by size and age,
//!        one fdatasync for the whole group, then publishes the new high watermark and answers
//!        every request of the group
//! Log::read(topic, partition, offset) -> whole batches below the high watermark, CRC-checked;
//!   a reader at the end waits on the high watermark's watch channel (long-poll, no busy loop)
//! retention task -> deletes whole sealed segments by age and by total size, short of what
//!   retention holds (in memory, per holder) still need, unless a partition exceeds their cap;
//!   then compacts compacted topics' sealed segments to the newest record per key, offsets
//!   unchanged (partition/compaction.rs)
//! Partition::restart_at(offset) -> through the writer: an empty partition from `offset` on
//! ```
//!
//! # On disk
//!
//! ```text
//! <data>/topics/<topic>/<partition>/
//!     00000000000000000000.log        RecordBatch v2 batches, back to back (see batch.rs)
//!     00000000000000000000.index      sparse offset index, one entry per ~4 KiB (index.rs)
//!     00000000000000000000.timeindex  time index
//!     recovery-point                  base offset and length of the active segment known to
//!                                     be durable (20 bytes with a CRC-32C)
//!     log-start                       where the last restart moved the partition (8 bytes and
//!                                     a CRC-32C); only once it was restarted
//! ```
//!
//! # Invariants
//!
//! - Offsets are never reused and batches tile them: each batch starts where the one before
//!   it ends, and segment `N` starts where segment `N-1` ends. Only a restart jumps ahead, and
//!   it leaves no segment before its new start. Producers' batches number every offset of
//!   their range; a compacted batch keeps its range with fewer records.
//! - The high watermark is the offset after the last durable batch; no reader sees past it,
//!   and an append is acknowledged only once the high watermark covers it (with
//!   `durability = "os"`, once it is written).
//! - Sealed segments were fsynced, with their indexes, before the next segment was created:
//!   anything invalid in them is corruption and is reported with file and position.
//! - On start the active segment is checked batch by batch. An invalid batch inside the
//!   recovery point is corruption; past it, it is a torn write from the stop and is cut.
//!   A partition with corruption refuses to serve instead of dropping data.

mod batch;
mod budget;
mod index;
mod mirror;
mod partition;
mod partitioner;
mod reserve;
pub mod schema;
mod segment;
mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use batch::{
    BatchError, BatchHeader, Compression, Header, MAX_DECOMPRESSED_BATCH_BYTES, Record, RecordView,
    StoredRecord, decode_all, encode, encode_sparse, set_base_offset, validate as validate_batch,
    visit_all, visit_batch,
};
pub use budget::{BudgetPolicy, DiskBudget};
pub use mirror::{HUB_MIRROR_PREFIX, MirrorName, MirrorOwner};
pub use partition::{
    AppendOutcome, CompactionReport, KEPT_BY_COMPACTION, MAX_COMPACTION_KEYS, Partition,
    RECENT_SEGMENTS_LEFT_WHOLE, ReadChunk, SealedSegment,
};
pub use partitioner::partition_for_key;
pub use reserve::DiskReserve;
pub use types::{MAX_TOPIC_NAME_LEN, Offset, PartitionId, Timestamp, TopicName};

use crate::meta::{Meta, MetaError};

/// Index entries are added every this many bytes of batches, as Kafka's `index.interval.bytes`.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
/// A topic may have at most this many partitions.
pub const MAX_PARTITIONS: u32 = 1024;
/// Segment positions are 32-bit in the index, as in Kafka.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
const MIN_SEGMENT_BYTES: u64 = 1024;
/// A batch larger than the segment size gets a segment of its own, so this bound is
/// independent of `segment-bytes`.
pub const MAX_MESSAGE_BYTES: u32 = 1 << 30;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After fdatasync: survives power loss. The default.
    #[default]
    Fsync,
    /// After the write reaches the OS: survives a crash of the process, not of the machine.
    Os,
}

/// Per-topic settings, persisted in the metadata store. Defaults come from the `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TopicConfig {
    /// Number of partitions, 1 to 1024.
    pub partitions: u32,
    /// Delete a sealed segment once its newest record is older than this; none keeps forever.
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while a partition holds more than this; none is unbounded.
    pub retention_bytes: Option<u64>,
    /// Roll to a new segment when the active one would exceed this size.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one's first append is older than this.
    pub segment_ms: u64,
    /// Largest batch accepted, in bytes as stored (after compression), as Kafka's setting.
    pub max_message_bytes: u32,
    /// Compression the appliance's own producers use for this topic.
    pub compression: Compression,
    /// What happens to old records: deleted by retention, compacted to the latest per key,
    /// or both (Kafka's `cleanup.policy`).
    pub cleanup_policy: CleanupPolicy,
    /// How long compaction keeps a tombstone (a record without a value) after its segment was
    /// sealed, so that a reader behind by less than this still sees the delete.
    pub delete_retention_ms: u64,
    /// The JSON values' declared schema (a JSON Schema object or a list of fields, as text;
    /// see [`schema`]): queries take their value columns from it instead of inferring them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 1024 * 1024,
            compression: Compression::None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 3600 * 1000,
            schema: None,
        }
    }
}

impl TopicConfig {
    /// Every problem with the settings, each naming the field and the allowed range.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &'static str, allowed: &'static str| {
            if !ok {
                problems.push(ConfigProblem { field, allowed });
            }
        };
        check(
            (1..=MAX_PARTITIONS).contains(&self.partitions),
            "partitions",
            "1 to 1024",
        );
        check(
            (MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes),
            "segment-bytes",
            "1024 to 2147483647",
        );
        check(self.segment_ms >= 1, "segment-ms", "at least 1");
        check(
            self.schema
                .as_deref()
                .is_none_or(|text| schema::parse_schema(text).is_ok()),
            "schema",
            "a JSON Schema object with properties of type string, integer, number or boolean, or a list of {name, type: Utf8|Int64|Float64|Boolean|Timestamp, nullable} fields",
        );
        check(
            (64..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes),
            "max-message-bytes",
            "64 to 1073741824",
        );
        check(
            self.retention_ms.is_none_or(|ms| ms >= 1),
            "retention-ms",
            "at least 1, or absent to keep forever",
        );
        problems
    }
}

/// Kafka's `cleanup.policy`: what becomes of records older than the newest ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// Retention deletes whole segments by age and size.
    #[default]
    Delete,
    /// Compaction keeps the newest record per key; retention deletes nothing.
    Compact,
    /// Both: compacted, and segments past retention deleted.
    CompactDelete,
}

impl CleanupPolicy {
    pub fn compacts(self) -> bool {
        matches!(self, Self::Compact | Self::CompactDelete)
    }

    pub fn deletes(self) -> bool {
        matches!(self, Self::Delete | Self::CompactDelete)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
            Self::CompactDelete => "compact,delete",
        }
    }
}

impl std::str::FromStr for CleanupPolicy {
    type Err = String;

    /// Kafka's spellings: `delete`, `compact`, and both separated by a comma in either order.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts: Vec<&str> = text.split(',').map(str::trim).collect();
        parts.sort_unstable();
        parts.dedup();
        match parts.as_slice() {
            ["delete"] => Ok(Self::Delete),
            ["compact"] => Ok(Self::Compact),
            ["compact", "delete"] => Ok(Self::CompactDelete),
            _ => Err(format!(
                "cleanup policy {text:?} is not one of delete, compact, compact,delete"
            )),
        }
    }
}

impl Serialize for CleanupPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CleanupPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: &'static str,
    pub allowed: &'static str,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} must be {}", self.field, self.allowed)
    }
}

/// What makes stored data unusable, found while reading or recovering a segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("expected a batch at offset {expected}, found one at offset {found}")]
    OffsetGap { expected: Offset, found: Offset },
    #[error("{durable_len} bytes were durable before the stop but the file is shorter")]
    MissingDurableBytes { durable_len: u64 },
    #[error("segments do not follow each other: the next one was expected at offset {expected}")]
    SegmentGap { expected: Offset },
    #[error(
        "the log start file fails its check; removing it loses nothing (it matters only while a \
         restart of the partition is unfinished, and then recovery reports the gap it leaves)"
    )]
    DamagedLogStart,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid topic config: {}", join(problems))]
    InvalidTopicConfig { problems: Vec<ConfigProblem> },
    #[error("topic {topic} does not exist")]
    UnknownTopic { topic: TopicName },
    #[error("topic {topic} already exists")]
    TopicExists { topic: TopicName },
    #[error(
        "directory {} holds data of a topic the metadata does not know; move it away before creating {topic}", path.display()
    )]
    OrphanTopicDirectory { topic: TopicName, path: PathBuf },
    #[error("topic {topic} has partitions 0 to {}, not {partition}", partitions - 1)]
    UnknownPartition {
        topic: TopicName,
        partition: PartitionId,
        partitions: u32,
    },
    #[error(
        "offset {offset} is out of range for {topic}/{partition}: valid offsets are {log_start} to {high_watermark}"
    )]
    OffsetOutOfRange {
        topic: TopicName,
        partition: PartitionId,
        offset: Offset,
        log_start: Offset,
        high_watermark: Offset,
    },
    #[error("batch of {size} bytes exceeds max-message-bytes {max} of topic {topic}")]
    RecordTooLarge {
        topic: TopicName,
        size: usize,
        max: u32,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error(
        "topic {topic} is compacted (cleanup policy {policy}), so every record needs a key; \
         give the record a key or produce to a topic with cleanup policy delete"
    )]
    KeylessRecordInCompactedTopic {
        topic: TopicName,
        policy: &'static str,
    },
    #[error("corrupt data in {} at byte {position}: {problem}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        problem: Corruption,
    },
    #[error("partition {topic}/{partition} is unavailable: {cause}")]
    Unavailable {
        topic: TopicName,
        partition: PartitionId,
        cause: Arc<LogError>,
    },
    #[error("append failed: {cause}")]
    AppendFailed { cause: Arc<LogError> },
    #[error(
        "the batch for {topic}/{partition} starts at offset {got}, but the partition's next \
         offset is {expected}: a batch kept at its own offsets goes exactly there"
    )]
    NotNextOffset {
        topic: TopicName,
        partition: PartitionId,
        expected: Offset,
        got: Offset,
    },
    #[error(
        "topic {topic} is a mirror of {origin}, written only by its link; run `appliance link \
         promote {topic}` on this appliance to make it writable"
    )]
    ReadOnlyMirror { topic: TopicName, origin: String },
    #[error("topic {topic} is not a mirror, so there is nothing to promote: it is writable")]
    NotAMirror { topic: TopicName },
    #[error(
        "cannot restart {topic}/{partition} at offset {offset}: its high watermark is already \
         {high_watermark}, and a partition restarts only at or after its end"
    )]
    RestartBeforeEnd {
        topic: TopicName,
        partition: PartitionId,
        offset: Offset,
        high_watermark: Offset,
    },
    #[error(
        "topic {topic} is not compacted, so it is not a table: lookups by key serve topics \
         with cleanup policy compact"
    )]
    NotCompacted { topic: TopicName },
    #[error(
        "partition {topic}/{partition} holds more than {max} distinct keys, more than a lookup \
         index holds; give the topic more partitions"
    )]
    TooManyKeys {
        topic: TopicName,
        partition: PartitionId,
        max: usize,
    },
    #[error(
        "the data directory holds {used} bytes, at its budget of {max} (log.max-disk-bytes): \
         delete topics or lower their retention to make room, or raise the budget (reads and \
         deletes still work)"
    )]
    DiskBudgetReached { used: u64, max: u64 },
    #[error("the log is shutting down")]
    ShuttingDown,
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl LogError {
    /// Whether this failed for want of disk space (ENOSPC, or a quota).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Io { source, .. } => crate::meta::is_disk_full(source),
            Self::AppendFailed { cause } | Self::Unavailable { cause, .. } => cause.is_disk_full(),
            Self::Meta(meta) => meta.is_disk_full(),
            Self::DiskBudgetReached { .. } => true,
            _ => false,
        }
    }
}

/// Builds the `map_err` closure for an I/O error on `path`.
pub(crate) fn io_error(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

/// Settings of the log as a whole.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `<data>/topics` lives here.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// How often retention looks for segments to delete.
    pub retention_check_interval: Duration,
    /// Settings for topics created without their own.
    pub topic_defaults: TopicConfig,
    /// Bytes of disk held back in the data directory for a full disk ([`DiskReserve`]).
    pub disk_reserve_bytes: u64,
    /// The most bytes the data directory holds ([`DiskBudget`]); `None`: no budget.
    pub max_disk_bytes: Option<u64>,
    /// What an append that would pass the budget does.
    pub budget_policy: BudgetPolicy,
    /// Topics whose appends the budget does not refuse (the audit topic).
    pub unbudgeted_topics: Vec<TopicName>,
}

impl LogConfig {
    /// The log of `data_dir` with the daemon's defaults: fsync durability, retention checked
    /// every 5 minutes, default topic settings.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            durability: Durability::Fsync,
            retention_check_interval: Duration::from_secs(300),
            topic_defaults: TopicConfig::default(),
            disk_reserve_bytes: 0,
            max_disk_bytes: None,
            budget_policy: BudgetPolicy::Refuse,
            unbudgeted_topics: Vec::new(),
        }
    }

    pub fn disk_reserve(&self) -> DiskReserve {
        DiskReserve::new(&self.data_dir, self.disk_reserve_bytes)
    }
}

/// A topic as stored in the metadata: its settings and whether it is a mirror. Topics stored
/// before mirrors existed are plain settings, which read as a topic that is no mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct StoredTopic {
    #[serde(flatten)]
    config: TopicConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mirror_of: Option<String>,
}

/// A topic's partitions; a partition that could not be opened keeps the reason.
#[derive(Debug)]
struct Topic {
    config: Arc<RwLock<TopicConfig>>,
    /// The origin while the topic is a mirror; shared with its partitions, which refuse
    /// producers while it is set.
    mirror_of: Arc<RwLock<Option<String>>>,
    partitions: Vec<Result<Arc<Partition>, Arc<LogError>>>,
    shutdown: CancellationToken,
    writers: TaskTracker,
}

/// A topic as listed.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: TopicName,
    pub config: TopicConfig,
    /// Where the records of a mirror topic come from (e.g. "edge plant-7"); none when the
    /// topic is written by producers.
    pub mirror_of: Option<String>,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub id: PartitionId,
    pub state: PartitionState,
}

#[derive(Debug, Clone)]
pub enum PartitionState {
    Online {
        log_start: Offset,
        high_watermark: Offset,
        size_bytes: u64,
        segments: usize,
    },
    /// Refusing to serve, with the reason (corruption names file and position).
    Failed { reason: String },
}

/// Handle to the log; cheap to clone.
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    config: LogConfig,
    budget: Arc<DiskBudget>,
    meta: Meta,
    topics: RwLock<BTreeMap<TopicName, Arc<Topic>>>,
    /// Serialises topic creation and deletion, which do I/O between map updates.
    admin: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Directory beside `topics/` where a topic being deleted is moved, under its own name, by one
/// atomic rename: whatever a crash interrupts afterwards, the name under `topics/` is free.
const DELETING_DIR: &str = "deleting";

impl Log {
    /// Opens every topic the metadata knows, recovering each partition, and starts the writers
    /// and the retention task. Partitions that fail to open are reported, not fatal.
    pub async fn open(config: LogConfig, meta: Meta) -> Result<Self, LogError> {
        let topics_dir = config.data_dir.join("topics");
        std::fs::create_dir_all(&topics_dir).map_err(io_error(&topics_dir, "create directory"))?;
        let deleting_dir = config.data_dir.join(DELETING_DIR);
        std::fs::create_dir_all(&deleting_dir)
            .map_err(io_error(&deleting_dir, "create directory"))?;
        let budget = Arc::new(DiskBudget::new(
            &config.data_dir,
            config.max_disk_bytes,
            config.budget_policy,
        ));
        let inner = Arc::new(LogInner {
            config,
            budget,
            meta,
            topics: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let log = Self { inner };
        log.finish_interrupted_deletions().await?;
        let stored: Vec<(String, StoredTopic)> = log.inner.meta.topics()?;
        for (name, stored) in stored {
            let name = TopicName::new(name)?;
            let topic = log.open_topic(&name, stored, false).await?;
            log.write_topics().insert(name, topic);
        }
        log.warn_about_orphans()?;
        log.spawn_retention();
        Ok(log)
    }

    fn topics_dir(&self) -> PathBuf {
        self.inner.config.data_dir.join("topics")
    }

    fn topic_dir(&self, name: &TopicName) -> PathBuf {
        self.topics_dir().join(name.as_str())
    }

    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TopicName, Arc<Topic>>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_topics(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<TopicName, Arc<Topic>>> {
        self.inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deleting_dir(&self) -> PathBuf {
        self.inner.config.data_dir.join(DELETING_DIR)
    }

    /// Finishes deletions a crash interrupted: every directory under `deleting/` is a topic
    /// whose deletion began (its rename is the commit point), so its metadata and files go.
    async fn finish_interrupted_deletions(&self) -> Result<(), LogError> {
        // Versions before deleting/ marked a topic being deleted with this file in its directory.
        let topics = self.topics_dir();
        for entry in std::fs::read_dir(&topics).map_err(io_error(&topics, "list topics"))? {
            let path = entry.map_err(io_error(&topics, "list topics"))?.path();
            if let Some(name) = path.file_name().filter(|_| path.join(".deleting").exists()) {
                let tombstone = self.deleting_dir().join(name);
                std::fs::rename(&path, &tombstone).map_err(io_error(&path, "move to deleting/"))?;
            }
        }
        let dir = self.deleting_dir();
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir, "list topics"))? {
            let path = entry.map_err(io_error(&dir, "list topics"))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            tracing::info!(topic = name, "finishing an interrupted topic deletion");
            self.inner.meta.delete_topic(name).await?;
            remove_dir(&path)?;
        }
        Ok(())
    }

    /// Moves a topic's directory out of `topics/` (durably, so a crash cannot bring it back),
    /// then deletes its files and forgets its metadata.
    async fn remove_topic_files_and_metadata(&self, name: &TopicName) -> Result<(), LogError> {
        let dir = self.topic_dir(name);
        let tombstone = self.deleting_dir().join(name.as_str());
        remove_dir(&tombstone)?;
        match std::fs::rename(&dir, &tombstone) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error(&dir, "move to deleting/")(e));
            }
            _ => {}
        }
        segment::sync_dir(&self.topics_dir())?;
        segment::sync_dir(&self.deleting_dir())?;
        // The files go before the metadata: on a full disk the metadata store needs the room
        // they free to record the deletion. The emptied tombstone still marks it as begun.
        remove_contents(&tombstone)?;
        self.inner.meta.delete_topic(name.as_str()).await?;
        remove_dir(&tombstone)
    }

    fn warn_about_orphans(&self) -> Result<(), LogError> {
        let dir = self.topics_dir();
        let topics = self.read_topics();
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir, "list topics"))? {
            let entry = entry.map_err(io_error(&dir, "list topics"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = TopicName::new(name.clone()).is_ok_and(|n| topics.contains_key(&n));
            if !known {
                tracing::warn!(
                    path = %entry.path().display(),
                    "directory under topics/ belongs to no topic in the metadata; it is not served"
                );
            }
        }
        Ok(())
    }

    async fn open_topic(
        &self,
        name: &TopicName,
        stored: StoredTopic,
        create: bool,
    ) -> Result<Arc<Topic>, LogError> {
        let StoredTopic { config, mirror_of } = stored;
        let writers = TaskTracker::new();
        writers.close();
        let mut topic = Topic {
            partitions: Vec::with_capacity(config.partitions as usize),
            config: Arc::new(RwLock::new(config.clone())),
            mirror_of: Arc::new(RwLock::new(mirror_of)),
            shutdown: self.inner.shutdown.child_token(),
            writers,
        };
        if let Err(cause) = self
            .open_partitions(name, &mut topic, config.partitions, create)
            .await
        {
            // The partitions that did open have writers running: stop them before the caller
            // removes their files.
            topic.shutdown.cancel();
            topic.writers.wait().await;
            return Err(cause);
        }
        Ok(Arc::new(topic))
    }

    /// Opens partitions from `topic.partitions.len()` up to `count`. With `create`, a partition
    /// that fails is an error; otherwise it is kept as failed and the others still open.
    async fn open_partitions(
        &self,
        name: &TopicName,
        topic: &mut Topic,
        count: u32,
        create: bool,
    ) -> Result<(), LogError> {
        let dir = self.topic_dir(name);
        for id in topic.partitions.len() as u32..count {
            let id = PartitionId(id);
            let budget = (!self.inner.config.unbudgeted_topics.contains(name))
                .then(|| self.inner.budget.clone());
            let opened = Partition::open(
                name.clone(),
                id,
                dir.join(id.0.to_string()),
                topic.config.clone(),
                topic.mirror_of.clone(),
                budget,
                self.inner.config.durability,
                create,
                &topic.shutdown,
                &topic.writers,
            )
            .await;
            topic.partitions.push(match opened {
                Ok(partition) => Ok(partition),
                Err(cause) => {
                    tracing::error!(topic = %name, partition = %id, error = %cause, "partition refuses to serve");
                    if create {
                        return Err(cause);
                    }
                    Err(Arc::new(cause))
                }
            });
        }
        Ok(())
    }

    /// Changes a topic's settings, durably; partitions may grow, never shrink (offsets and
    /// key placement of existing partitions stay as they are).
    pub async fn update_topic_config(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<(), LogError> {
        let _admin = self.inner.admin.lock().await;
        self.replace_topic_config(name, config).await
    }

    /// Grows a topic to `partitions`, keeping its other settings as they are at that moment
    /// (read under the same lock as every change, so a concurrent change is not undone);
    /// the count it had.
    pub async fn add_partitions(&self, name: &TopicName, partitions: u32) -> Result<u32, LogError> {
        let _admin = self.inner.admin.lock().await;
        let mut config = self.topic_config(name)?;
        let before = config.partitions;
        config.partitions = partitions;
        self.replace_topic_config(name, config).await?;
        Ok(before)
    }

    /// [`Log::update_topic_config`], with the admin lock held by the caller.
    async fn replace_topic_config(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<(), LogError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(LogError::InvalidTopicConfig { problems });
        }
        let current = self.topic(name)?;
        let partitions = current.partitions.len() as u32;
        if config.partitions < partitions {
            return Err(LogError::InvalidTopicConfig {
                problems: vec![ConfigProblem {
                    field: "partitions",
                    allowed: "at least the current count: partitions can be added, not removed",
                }],
            });
        }
        let stored = StoredTopic {
            config: config.clone(),
            mirror_of: read_lock(&current.mirror_of).clone(),
        };
        self.inner.meta.put_topic(name.as_str(), &stored).await?;
        *current
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config.clone();
        if config.partitions > partitions {
            let mut grown = Topic {
                config: current.config.clone(),
                mirror_of: current.mirror_of.clone(),
                partitions: current.partitions.clone(),
                shutdown: current.shutdown.clone(),
                writers: current.writers.clone(),
            };
            self.open_partitions(name, &mut grown, config.partitions, true)
                .await?;
            self.write_topics().insert(name.clone(), Arc::new(grown));
            tracing::info!(topic = %name, from = partitions, to = config.partitions, "partitions added");
        }
        Ok(())
    }

    /// Creates a topic: the config is stored durably first, then the partition directories.
    pub async fn create_topic(&self, name: TopicName, config: TopicConfig) -> Result<(), LogError> {
        self.create(
            name,
            StoredTopic {
                config,
                mirror_of: None,
            },
        )
        .await
    }

    /// Creates a mirror topic: read-only to producers ([`LogError::ReadOnlyMirror`]), written
    /// only with [`Partition::append_at_own_offset`] by the link that copies it from `origin`
    /// (a description for people, such as "edge plant-7"), until [`Log::promote`].
    pub async fn create_mirror_topic(
        &self,
        name: TopicName,
        config: TopicConfig,
        origin: String,
    ) -> Result<(), LogError> {
        self.create(
            name,
            StoredTopic {
                config,
                mirror_of: Some(origin),
            },
        )
        .await
    }

    async fn create(&self, name: TopicName, stored: StoredTopic) -> Result<(), LogError> {
        let problems = stored.config.problems();
        if !problems.is_empty() {
            return Err(LogError::InvalidTopicConfig { problems });
        }
        let _admin = self.inner.admin.lock().await;
        if self.inner.shutdown.is_cancelled() {
            return Err(LogError::ShuttingDown);
        }
        if self.read_topics().contains_key(&name) {
            return Err(LogError::TopicExists { topic: name });
        }
        let dir = self.topic_dir(&name);
        if dir.exists() {
            return Err(LogError::OrphanTopicDirectory {
                topic: name,
                path: dir,
            });
        }
        self.inner.meta.put_topic(name.as_str(), &stored).await?;
        let mirror_of = stored.mirror_of.clone();
        let opened = match self.open_topic(&name, stored, true).await {
            Ok(topic) => segment::sync_dir(&self.topics_dir()).map(|()| topic),
            Err(cause) => Err(cause),
        };
        let topic = match opened {
            Ok(topic) => topic,
            Err(cause) => {
                // Half a topic is worse than none: it would fail at every start. Roll back
                // the metadata and whatever partitions were made, and report the cause.
                if let Err(rollback) = self.remove_topic_files_and_metadata(&name).await {
                    tracing::error!(topic = %name, error = %rollback, "rolling back a failed topic creation failed; the next start finishes it");
                }
                return Err(cause);
            }
        };
        self.write_topics().insert(name.clone(), topic);
        tracing::info!(topic = %name, mirror_of, "topic created");
        Ok(())
    }

    /// Makes a mirror topic writable by producers, durably: they append at its high
    /// watermark, so offsets continue where the mirror stopped. The link must no longer write
    /// it.
    pub async fn promote(&self, name: &TopicName) -> Result<(), LogError> {
        let _admin = self.inner.admin.lock().await;
        let topic = self.topic(name)?;
        let Some(origin) = read_lock(&topic.mirror_of).clone() else {
            return Err(LogError::NotAMirror {
                topic: name.clone(),
            });
        };
        let stored = StoredTopic {
            config: read_lock(&topic.config).clone(),
            mirror_of: None,
        };
        self.inner.meta.put_topic(name.as_str(), &stored).await?;
        *topic
            .mirror_of
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        tracing::info!(topic = %name, origin, "mirror topic promoted: producers may write it");
        Ok(())
    }

    /// Where a mirror topic's records come from; none for a topic producers write, or one
    /// that does not exist.
    pub fn mirror_of(&self, name: &TopicName) -> Option<String> {
        self.topic(name)
            .ok()
            .and_then(|topic| read_lock(&topic.mirror_of).clone())
    }

    /// Registers `holder`'s retention hold on a partition, replacing its previous one there:
    /// retention keeps every segment that holds an offset at or after `keep_from` (the
    /// smallest of all holders'), except that while the partition holds more than `max_bytes`
    /// (the smallest cap) its oldest segments still go, as far as the topic's retention
    /// allows, with a warning naming the offsets lost. A hold never makes retention delete
    /// more. Holds live in memory: a holder registers them again after a restart; those of a
    /// deleted topic are gone with it.
    pub fn set_retention_hold(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        holder: &str,
        keep_from: Offset,
        max_bytes: u64,
    ) -> Result<(), LogError> {
        self.partition(topic, partition)?.set_retention_hold(
            holder,
            partition::RetentionHold {
                keep_from,
                max_bytes,
            },
        );
        Ok(())
    }

    /// Removes every retention hold `holder` registered, in every topic.
    pub fn release_retention_holds(&self, holder: &str) {
        for topic in self.read_topics().values() {
            for partition in topic.partitions.iter().flatten() {
                partition.release_retention_hold(holder);
            }
        }
    }

    /// Deletes a topic and all its data. A crash midway is finished on the next start.
    pub async fn delete_topic(&self, name: &TopicName) -> Result<(), LogError> {
        let _admin = self.inner.admin.lock().await;
        let topic = self
            .write_topics()
            .remove(name)
            .ok_or_else(|| LogError::UnknownTopic {
                topic: name.clone(),
            })?;
        topic.shutdown.cancel();
        topic.writers.wait().await;
        // Its open files hold their disk space until they are closed.
        drop(topic);
        self.remove_topic_files_and_metadata(name).await?;
        tracing::info!(topic = %name, "topic deleted");
        // The room it made is there for the next append.
        self.inner.budget.remeasure().await;
        Ok(())
    }

    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, LogError> {
        self.read_topics()
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic {
                topic: name.clone(),
            })
    }

    /// The partition, or why it cannot be used.
    pub fn partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> Result<Arc<Partition>, LogError> {
        let entry = self.topic(topic)?;
        match entry.partitions.get(partition.0 as usize) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(cause)) => Err(LogError::Unavailable {
                topic: topic.clone(),
                partition,
                cause: cause.clone(),
            }),
            None => Err(LogError::UnknownPartition {
                topic: topic.clone(),
                partition,
                partitions: entry.partitions.len() as u32,
            }),
        }
    }

    /// Appends one encoded batch; returns once it is durable (see [`Durability`]).
    pub async fn append(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        batch: bytes::BytesMut,
    ) -> Result<AppendOutcome, LogError> {
        self.partition(topic, partition)?.append(batch).await
    }

    /// Reads whole batches from `offset`, waiting up to `max_wait` for data at the end.
    pub async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadChunk, LogError> {
        self.partition(topic, partition)?
            .read_wait(offset, max_bytes, max_wait)
            .await
    }

    /// The data directory's disk budget: bytes used and the most it may hold.
    pub fn disk_budget(&self) -> &Arc<DiskBudget> {
        &self.inner.budget
    }

    /// Settings of topics created without their own.
    pub fn topic_defaults(&self) -> &TopicConfig {
        &self.inner.config.topic_defaults
    }

    pub fn topic_config(&self, name: &TopicName) -> Result<TopicConfig, LogError> {
        Ok(read_lock(&self.topic(name)?.config).clone())
    }

    /// Every topic with its partitions' state.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        self.read_topics()
            .iter()
            .map(|(name, topic)| topic_info(name, topic))
            .collect()
    }

    /// One topic with its partitions' state.
    pub fn topic_info(&self, name: &TopicName) -> Result<TopicInfo, LogError> {
        Ok(topic_info(name, &*self.topic(name)?))
    }

    fn spawn_retention(&self) {
        let log = self.clone();
        let interval = self.inner.config.retention_check_interval;
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            log.restore_disk_reserve().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {
                        log.apply_retention().await;
                        log.restore_disk_reserve().await;
                    }
                }
            }
        });
    }

    /// Allocates the disk reserve if it is missing and the disk has room for it again.
    async fn restore_disk_reserve(&self) {
        let reserve = self.inner.config.disk_reserve();
        match tokio::task::spawn_blocking(move || reserve.restore_if_room()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the disk reserve could not be allocated"),
            Err(error) => tracing::error!(%error, "the disk reserve task panicked"),
        }
    }

    /// Deletes segments past retention in every partition now, and compacts the partitions of
    /// compacted topics where enough was sealed since their last pass.
    pub async fn apply_retention(&self) {
        let partitions: Vec<Arc<Partition>> = self
            .read_topics()
            .values()
            .flat_map(|t| t.partitions.iter().filter_map(|p| p.as_ref().ok().cloned()))
            .collect();
        let now = Timestamp::now();
        let budget = self.inner.budget.clone();
        let result = tokio::task::spawn_blocking(move || {
            for partition in partitions {
                if let Err(error) = partition.apply_retention(now) {
                    tracing::warn!(%error, "retention failed");
                }
                if let Err(error) = partition.compact_if_due(std::time::SystemTime::now()) {
                    tracing::warn!(%error, "compaction failed");
                }
            }
            budget.measure();
        })
        .await;
        if let Err(error) = result {
            tracing::error!(%error, "retention task panicked");
        }
    }

    /// Stops accepting appends, lets every writer commit what it holds, writes the indexes and
    /// flushes the metadata store.
    pub async fn close(&self) -> Result<(), LogError> {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        let topics: Vec<Arc<Topic>> = self.read_topics().values().cloned().collect();
        for topic in topics {
            topic.writers.wait().await;
        }
        self.inner.meta.flush().await?;
        Ok(())
    }
}

fn topic_info(name: &TopicName, topic: &Topic) -> TopicInfo {
    TopicInfo {
        name: name.clone(),
        config: read_lock(&topic.config).clone(),
        mirror_of: read_lock(&topic.mirror_of).clone(),
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionInfo {
                id: PartitionId(i as u32),
                state: match p {
                    Ok(p) => p.state(),
                    Err(cause) => PartitionState::Failed {
                        reason: cause.to_string(),
                    },
                },
            })
            .collect(),
    }
}

pub(crate) fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes what `dir` holds, but not `dir` itself.
fn remove_contents(dir: &Path) -> Result<(), LogError> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries.map_err(io_error(dir, "list directory"))?,
    };
    for entry in entries {
        let path = entry.map_err(io_error(dir, "list directory"))?.path();
        if path.is_dir() {
            remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(io_error(&path, "remove file"))?;
        }
    }
    Ok(())
}

fn remove_dir(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error(path, "remove directory")(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
