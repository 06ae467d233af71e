//! Metadata that is not the log, in sled: topic configs and consumer-group committed offsets.
//!
//! Every change is flushed to disk before the call that made it returns, so an acknowledged
//! topic creation or offset commit survives a crash. Values are JSON, so a store can be read
//! with sled's own tools when something needs explaining.
//!
//! ```text
//! tree "topics"   key: topic name                               value: topic config (JSON)
//! tree "offsets"  key: group \0 topic \0 partition (u32 BE)     value: CommittedOffset (JSON)
//! tree "plugins"            key: plugin name                    value: plugin record (JSON)
//! tree "pipelines"          key: pipeline name                  value: pipeline spec (JSON)
//! tree "pipeline-progress"  key: pipeline id / partition        value: progress (JSON)
//! tree "tokens"             key: token id                       value: principal, SHA-256 of the secret, expiry
//! tree "acls"               key: the ACL (JSON)                 value: the ACL (JSON)
//! ```
//!
//! The last three are [`Table`]s of JSON documents owned by the subsystem that writes them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

const TOPICS: &str = "topics";
const OFFSETS: &str = "offsets";
/// How long `Meta::open` waits for a lock released by a handle this process just dropped.
const LOCK_WAIT: Duration = Duration::from_secs(3);
const LOCK_RETRY: Duration = Duration::from_millis(50);
/// Group ids share Kafka's length bound for names.
pub const MAX_GROUP_ID_LEN: usize = 249;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(
        "metadata store at {} is locked: another appliance process uses this data directory",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("metadata store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("metadata store {op} failed: {source}")]
    Store {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("metadata entry {key:?} cannot be decoded: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid group id {group:?}: {reason}")]
    InvalidGroupId { group: String, reason: &'static str },
}

impl MetaError {
    /// Whether the store failed because its disk (or the user's quota on it) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Open {
                source: sled::Error::Io(io),
                ..
            }
            | Self::Store {
                source: sled::Error::Io(io),
                ..
            } => is_disk_full(io),
            _ => false,
        }
    }
}

/// Whether an I/O error says the disk (or the user's quota on it) is full.
pub fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// A validated consumer group id: 1 to 249 characters, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(String);

impl GroupId {
    pub fn new(group: impl Into<String>) -> Result<Self, MetaError> {
        let group = group.into();
        let reason = if group.is_empty() {
            Some("it is empty")
        } else if group.len() > MAX_GROUP_ID_LEN {
            Some("it is longer than 249 bytes")
        } else if group.contains('\0') || group.chars().any(char::is_control) {
            Some("control characters are not allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(MetaError::InvalidGroupId { group, reason }),
            None => Ok(Self(group)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A group's committed position in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: u64,
    /// Free text a consumer stores with its commit, as Kafka's offset metadata.
    #[serde(default)]
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One offset to commit or read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: u32,
    pub committed: CommittedOffset,
}

/// A tree of JSON documents keyed by text, owned by one subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Plugins = 0,
    Pipelines = 1,
    PipelineProgress = 2,
    Connectors = 3,
    ConnectorProgress = 4,
    Links = 5,
    LinkAcks = 6,
    Tokens = 7,
    Acls = 8,
    Quotas = 9,
    Users = 10,
    RevokedEdges = 11,
    JoinTokens = 12,
    KafkaProducerIds = 13,
    Exports = 14,
}

impl Table {
    const ALL: [Table; 15] = [
        Table::Plugins,
        Table::Pipelines,
        Table::PipelineProgress,
        Table::Connectors,
        Table::ConnectorProgress,
        Table::Links,
        Table::LinkAcks,
        Table::Tokens,
        Table::Acls,
        Table::Quotas,
        Table::Users,
        Table::RevokedEdges,
        Table::JoinTokens,
        Table::KafkaProducerIds,
        Table::Exports,
    ];

    fn tree_name(self) -> &'static str {
        match self {
            Table::Plugins => "plugins",
            Table::Pipelines => "pipelines",
            Table::PipelineProgress => "pipeline-progress",
            Table::Connectors => "connectors",
            Table::ConnectorProgress => "connector-progress",
            Table::Links => "links",
            Table::LinkAcks => "link-acks",
            Table::Tokens => "tokens",
            Table::Acls => "acls",
            Table::Quotas => "quotas",
            Table::Users => "users",
            Table::RevokedEdges => "revoked-edges",
            Table::JoinTokens => "join-tokens",
            Table::KafkaProducerIds => "kafka-producer-ids",
            Table::Exports => "exports",
        }
    }
}

/// Handle to the metadata store; cheap to clone.
///
/// sled stops for good after one I/O error (a full disk, say): every later call returns
/// that error until the database is opened again. So a call that fails on the store reopens
/// it (what was flushed is all there; what was not was never acknowledged) and is tried once
/// more on the new one; a store that cannot be reopened yet is tried again by the next call.
#[derive(Debug, Clone)]
pub struct Meta {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// `None` while a failed store could not be reopened.
    stores: RwLock<Option<Arc<Stores>>>,
}

/// One open sled database and its trees.
#[derive(Debug)]
struct Stores {
    db: sled::Db,
    topics: sled::Tree,
    offsets: sled::Tree,
    tables: [sled::Tree; Table::ALL.len()],
}

impl Stores {
    /// Opens the store in `dir`. sled releases its exclusive lock from a background thread
    /// just after the last handle of a previous open in this process is dropped, so a held
    /// lock is waited for briefly before it is reported as another process's.
    fn open(dir: &Path) -> Result<Self, MetaError> {
        let mut waited = Duration::ZERO;
        loop {
            match Self::try_open(dir) {
                Err(MetaError::Locked { .. }) if waited < LOCK_WAIT => {
                    std::thread::sleep(LOCK_RETRY);
                    waited += LOCK_RETRY;
                }
                opened => return opened,
            }
        }
    }

    fn try_open(dir: &Path) -> Result<Self, MetaError> {
        let open_error = |source| match source {
            // sled reports its exclusive file lock only as text.
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                MetaError::Locked {
                    path: dir.to_path_buf(),
                }
            }
            source => MetaError::Open {
                path: dir.to_path_buf(),
                source,
            },
        };
        let db = sled::open(dir).map_err(open_error)?;
        let topics = db.open_tree(TOPICS).map_err(open_error)?;
        let offsets = db.open_tree(OFFSETS).map_err(open_error)?;
        let opened: Vec<sled::Tree> = Table::ALL
            .iter()
            .map(|table| db.open_tree(table.tree_name()).map_err(open_error))
            .collect::<Result<_, _>>()?;
        let tables: [sled::Tree; Table::ALL.len()] = opened
            .try_into()
            .unwrap_or_else(|_| unreachable!("one tree per table"));
        Ok(Self {
            db,
            topics,
            offsets,
            tables,
        })
    }

    fn table(&self, table: Table) -> &sled::Tree {
        &self.tables[table as usize]
    }

    /// Removes the committed offsets under `prefix` whose key `matches`, in one batch.
    fn remove_offsets(
        &self,
        prefix: &[u8],
        matches: impl Fn(&[u8]) -> bool,
    ) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        for entry in self.offsets.scan_prefix(prefix) {
            let (key, _) = entry.map_err(store_error("scan offsets"))?;
            if matches(&key) {
                batch.remove(key);
            }
        }
        self.offsets
            .apply_batch(batch)
            .map_err(store_error("remove offsets"))
    }
}

fn store_error(op: &'static str) -> impl FnOnce(sled::Error) -> MetaError {
    move |source| MetaError::Store { op, source }
}

fn decode_error(key: impl Into<String>) -> impl FnOnce(serde_json::Error) -> MetaError {
    move |source| MetaError::Decode {
        key: key.into(),
        source,
    }
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(value).map_err(decode_error(key))
}

/// Every document of `tree` with its key, in key order; `what` names the scan in errors.
fn decode_all<T: DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
) -> Result<Vec<(String, T)>, MetaError> {
    tree.iter()
        .map(|entry| {
            let (key, value) = entry.map_err(store_error(what))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let value = decode(&key, &value)?;
            Ok((key, value))
        })
        .collect()
}

impl Meta {
    /// Opens the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let stores = Stores::open(dir)?;
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                stores: RwLock::new(Some(Arc::new(stores))),
            }),
        })
    }

    fn current(&self) -> Result<Arc<Stores>, MetaError> {
        let stores = self
            .shared
            .stores
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match stores {
            Some(stores) => Ok(stores),
            None => self.reopen(None),
        }
    }

    /// Replaces the store that `failed` (or the missing one) with a newly opened one, unless
    /// another call already did.
    fn reopen(&self, failed: Option<Arc<Stores>>) -> Result<Arc<Stores>, MetaError> {
        let mut current = self
            .shared
            .stores
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stores) = current.as_ref()
            && failed
                .as_ref()
                .is_none_or(|failed| !Arc::ptr_eq(failed, stores))
        {
            return Ok(Arc::clone(stores));
        }
        *current = None;
        drop(failed);
        let stores = Arc::new(Stores::open(&self.shared.dir)?);
        tracing::warn!(
            dir = %self.shared.dir.display(),
            "the metadata store failed and was reopened"
        );
        *current = Some(Arc::clone(&stores));
        Ok(stores)
    }

    /// Runs `op` on the store; after a store error, on a reopened store once more.
    fn with_store<T>(&self, op: impl Fn(&Stores) -> Result<T, MetaError>) -> Result<T, MetaError> {
        let stores = self.current()?;
        match op(&stores) {
            Err(MetaError::Store { .. }) => op(&*self.reopen(Some(stores))?),
            done => done,
        }
    }

    /// Runs `change` and makes it durable; after a store error, on a reopened store once
    /// more. sled 0.34's `flush_async` deadlocks when several callers flush at once (sled
    /// issue #1308, fixed only after 0.34), so the blocking flush runs on the blocking pool.
    async fn durably(
        &self,
        change: impl Fn(&Stores) -> Result<(), MetaError>,
    ) -> Result<(), MetaError> {
        let mut stores = self.current()?;
        let mut retried = false;
        loop {
            let applied = match change(&stores) {
                Ok(()) => Self::flush_stores(Arc::clone(&stores)).await,
                failed => failed,
            };
            match applied {
                Err(MetaError::Store { .. }) if !retried => {
                    retried = true;
                    stores = self.reopen(Some(stores))?;
                }
                done => return done,
            }
        }
    }

    /// Makes every change durable.
    pub async fn flush(&self) -> Result<(), MetaError> {
        self.durably(|_| Ok(())).await
    }

    async fn flush_stores(stores: Arc<Stores>) -> Result<(), MetaError> {
        tokio::task::spawn_blocking(move || stores.db.flush())
            .await
            .map_err(|join| MetaError::Store {
                op: "flush",
                source: sled::Error::Io(std::io::Error::other(join.to_string())),
            })?
            .map_err(store_error("flush"))?;
        Ok(())
    }

    /// Stores a topic's config, durably.
    pub async fn put_topic<T: Serialize>(&self, name: &str, config: &T) -> Result<(), MetaError> {
        let value = serde_json::to_vec(config).map_err(decode_error(name))?;
        self.durably(|stores| {
            stores
                .topics
                .insert(name.as_bytes(), value.as_slice())
                .map(drop)
                .map_err(store_error("insert topic"))
        })
        .await
    }

    /// Removes a topic's config and every offset committed in it, durably.
    pub async fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        self.durably(|stores| {
            stores
                .topics
                .remove(name.as_bytes())
                .map_err(store_error("remove topic"))?;
            stores.remove_offsets(&[], |key| {
                split_offset_key(key).is_some_and(|(_, topic, _)| topic == name)
            })
        })
        .await
    }

    /// Every stored topic with its config.
    pub fn topics<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, MetaError> {
        self.with_store(|stores| decode_all(&stores.topics, "scan topics"))
    }

    /// Commits a group's offsets, all or none, durably.
    pub async fn commit_offsets(
        &self,
        group: &GroupId,
        offsets: &[PartitionOffset],
    ) -> Result<(), MetaError> {
        let mut entries = Vec::with_capacity(offsets.len());
        for offset in offsets {
            let value =
                serde_json::to_vec(&offset.committed).map_err(decode_error(&offset.topic))?;
            entries.push((offset_key(group, &offset.topic, offset.partition), value));
        }
        self.durably(|stores| {
            let mut batch = sled::Batch::default();
            for (key, value) in &entries {
                batch.insert(key.as_slice(), value.as_slice());
            }
            stores
                .offsets
                .apply_batch(batch)
                .map_err(store_error("commit offsets"))
        })
        .await
    }

    /// A group's committed offset of one partition, if it committed one.
    pub fn committed_offset(
        &self,
        group: &GroupId,
        topic: &str,
        partition: u32,
    ) -> Result<Option<CommittedOffset>, MetaError> {
        let key = offset_key(group, topic, partition);
        let value =
            self.with_store(|stores| stores.offsets.get(&key).map_err(store_error("read offset")))?;
        value
            .map(|value| decode(&format!("{group}/{topic}/{partition}"), &value))
            .transpose()
    }

    /// A group's committed offsets, in topic and partition order.
    pub fn committed_offsets(&self, group: &GroupId) -> Result<Vec<PartitionOffset>, MetaError> {
        let prefix = group_prefix(group);
        self.with_store(|stores| {
            stores
                .offsets
                .scan_prefix(&prefix)
                .map(|entry| {
                    let (key, value) = entry.map_err(store_error("scan offsets"))?;
                    let (_, topic, partition) = split_offset_key(&key).unwrap_or_default();
                    let committed = decode(&format!("{group}/{topic}/{partition}"), &value)?;
                    Ok(PartitionOffset {
                        topic: topic.to_owned(),
                        partition,
                        committed,
                    })
                })
                .collect()
        })
    }

    /// Forgets every offset a group committed.
    pub async fn delete_group_offsets(&self, group: &GroupId) -> Result<(), MetaError> {
        let prefix = group_prefix(group);
        self.durably(|stores| stores.remove_offsets(&prefix, |_| true))
            .await
    }

    /// Every group that has committed offsets.
    pub fn groups(&self) -> Result<Vec<GroupId>, MetaError> {
        self.with_store(|stores| {
            let mut groups: Vec<GroupId> = Vec::new();
            for entry in stores.offsets.iter() {
                let (key, _) = entry.map_err(store_error("scan offsets"))?;
                if let Some((group, _, _)) = split_offset_key(&key)
                    && groups.last().is_none_or(|last| last.as_str() != group)
                {
                    groups.push(GroupId(group.to_owned()));
                }
            }
            Ok(groups)
        })
    }

    /// Stores a document and makes it durable before returning.
    pub async fn put<T: Serialize>(
        &self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<(), MetaError> {
        let encoded = serde_json::to_vec(value).map_err(decode_error(key))?;
        self.durably(|stores| insert(stores, table, key, &encoded))
            .await
    }

    /// Stores a document without waiting for the disk: sled writes it within about half a
    /// second, and a crash before that keeps the previous version. For progress markers whose
    /// older versions are still correct, only less recent.
    pub fn put_unflushed<T: Serialize>(
        &self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<(), MetaError> {
        let encoded = serde_json::to_vec(value).map_err(decode_error(key))?;
        self.with_store(|stores| insert(stores, table, key, &encoded))
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, MetaError> {
        let value = self.with_store(|stores| {
            stores
                .table(table)
                .get(key.as_bytes())
                .map_err(store_error("read"))
        })?;
        value.map(|value| decode(key, &value)).transpose()
    }

    /// Removes one document, durably.
    pub async fn remove(&self, table: Table, key: &str) -> Result<(), MetaError> {
        self.durably(|stores| {
            stores
                .table(table)
                .remove(key.as_bytes())
                .map(drop)
                .map_err(store_error("remove"))
        })
        .await
    }

    /// Removes every document whose key starts with `prefix`, durably.
    pub async fn remove_prefix(&self, table: Table, prefix: &str) -> Result<(), MetaError> {
        self.durably(|stores| {
            let tree = stores.table(table);
            let mut batch = sled::Batch::default();
            for entry in tree.scan_prefix(prefix.as_bytes()) {
                let (key, _) = entry.map_err(store_error("scan"))?;
                batch.remove(key);
            }
            tree.apply_batch(batch).map_err(store_error("remove"))
        })
        .await
    }

    /// Every document of the table, in key order.
    pub fn entries<T: DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<Vec<(String, T)>, MetaError> {
        self.with_store(|stores| decode_all(stores.table(table), "scan"))
    }
}

fn insert(stores: &Stores, table: Table, key: &str, encoded: &[u8]) -> Result<(), MetaError> {
    stores
        .table(table)
        .insert(key.as_bytes(), encoded)
        .map(drop)
        .map_err(store_error("insert"))
}

fn group_prefix(group: &GroupId) -> Vec<u8> {
    let mut prefix = group.as_str().as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn offset_key(group: &GroupId, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.0.len() + topic.len() + 6);
    key.extend_from_slice(group.0.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn split_offset_key(key: &[u8]) -> Option<(&str, &str, u32)> {
    let (rest, partition) = key.split_at_checked(key.len().checked_sub(4)?)?;
    let rest = rest.strip_suffix(&[0])?;
    let separator = rest.iter().position(|&b| b == 0)?;
    let group = std::str::from_utf8(&rest[..separator]).ok()?;
    let topic = std::str::from_utf8(&rest[separator + 1..]).ok()?;
    Some((group, topic, u32::from_be_bytes(partition.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(offset: u64) -> CommittedOffset {
        CommittedOffset {
            offset,
            metadata: String::new(),
            commit_timestamp_ms: 1,
        }
    }

    /// Many concurrent flushes all complete (sled's own `flush_async` deadlocks here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Meta::open(dir.path()).expect("open");
        let group = GroupId::new("g").expect("valid");
        let mut commits = tokio::task::JoinSet::new();
        for partition in 0..64 {
            let meta = meta.clone();
            let group = group.clone();
            commits.spawn(async move {
                let offset = PartitionOffset {
                    topic: "t".into(),
                    partition,
                    committed: committed(u64::from(partition)),
                };
                meta.commit_offsets(&group, &[offset]).await
            });
        }
        let all = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(done) = commits.join_next().await {
                done.expect("join").expect("commit");
            }
        });
        all.await.expect("every commit completes");
        assert_eq!(meta.committed_offsets(&group).expect("read").len(), 64);
    }

    #[tokio::test]
    async fn offsets_and_topics_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = GroupId::new("g1").expect("valid");
        {
            let meta = Meta::open(dir.path()).expect("open");
            meta.put_topic("t", &serde_json::json!({"partitions": 3}))
                .await
                .expect("put");
            let offsets: Vec<PartitionOffset> = (0..3)
                .map(|p| PartitionOffset {
                    topic: "t".into(),
                    partition: p,
                    committed: committed(u64::from(p) * 10),
                })
                .collect();
            meta.commit_offsets(&group, &offsets).await.expect("commit");
            meta.commit_offsets(&GroupId::new("g2").expect("valid"), &offsets[..1])
                .await
                .expect("commit");
        }
        let meta = Meta::open(dir.path()).expect("reopen");
        let topics: Vec<(String, serde_json::Value)> = meta.topics().expect("topics");
        assert_eq!(topics.len(), 1);
        let back = meta.committed_offsets(&group).expect("read");
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].partition, 2);
        assert_eq!(back[2].committed.offset, 20);
        assert_eq!(meta.groups().expect("groups").len(), 2);
        let one = meta.committed_offset(&group, "t", 2).expect("read");
        assert_eq!(one.map(|c| c.offset), Some(20));
        assert_eq!(meta.committed_offset(&group, "t", 9).expect("read"), None);
        meta.delete_topic("t").await.expect("delete");
        assert!(meta.committed_offsets(&group).expect("read").is_empty());
    }

    #[test]
    fn group_ids_are_validated() {
        assert!(GroupId::new("").is_err());
        assert!(GroupId::new("a\0b").is_err());
        assert!(GroupId::new("x".repeat(250)).is_err());
        assert!(GroupId::new("readers-1").is_ok());
    }
}
