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
//! ```
//!
//! The last three are [`Table`]s of JSON documents owned by the subsystem that writes them.

use std::path::{Path, PathBuf};
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
}

impl Table {
    const ALL: [Table; 7] = [
        Table::Plugins,
        Table::Pipelines,
        Table::PipelineProgress,
        Table::Connectors,
        Table::ConnectorProgress,
        Table::Links,
        Table::LinkAcks,
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
        }
    }
}

/// Handle to the metadata store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Meta {
    db: sled::Db,
    topics: sled::Tree,
    offsets: sled::Tree,
    tables: [sled::Tree; Table::ALL.len()],
}

impl Meta {
    /// Opens the store in `dir`. sled releases its exclusive lock from a background thread
    /// just after the last handle of a previous open in this process is dropped, so a held
    /// lock is waited for briefly before it is reported as another process's.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
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

    /// Makes every change durable. sled 0.34's `flush_async` deadlocks when several callers
    /// flush at once (sled issue #1308, fixed only after 0.34), so the blocking flush runs on
    /// the blocking pool instead.
    pub async fn flush(&self) -> Result<(), MetaError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|join| MetaError::Store {
                op: "flush",
                source: sled::Error::Io(std::io::Error::other(join.to_string())),
            })?
            .map_err(|source| MetaError::Store {
                op: "flush",
                source,
            })?;
        Ok(())
    }

    /// Stores a topic's config, durably.
    pub async fn put_topic<T: Serialize>(&self, name: &str, config: &T) -> Result<(), MetaError> {
        let value = serde_json::to_vec(config).map_err(|source| MetaError::Decode {
            key: name.to_owned(),
            source,
        })?;
        self.topics
            .insert(name.as_bytes(), value)
            .map_err(|source| MetaError::Store {
                op: "insert topic",
                source,
            })?;
        self.flush().await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        self.topics
            .remove(name.as_bytes())
            .map_err(|source| MetaError::Store {
                op: "remove topic",
                source,
            })?;
        self.remove_offsets(self.offsets.iter(), |key| {
            split_offset_key(key).is_some_and(|(_, topic, _)| topic == name)
        })
        .await
    }

    /// Removes the committed offsets in `scan` whose key `matches`, durably.
    async fn remove_offsets(
        &self,
        scan: sled::Iter,
        matches: impl Fn(&[u8]) -> bool,
    ) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        for entry in scan {
            let (key, _) = entry.map_err(|source| MetaError::Store {
                op: "scan offsets",
                source,
            })?;
            if matches(&key) {
                batch.remove(key);
            }
        }
        self.offsets
            .apply_batch(batch)
            .map_err(|source| MetaError::Store {
                op: "remove offsets",
                source,
            })?;
        self.flush().await
    }

    /// Every stored topic with its config.
    pub fn topics<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, MetaError> {
        self.topics
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(|source| MetaError::Store {
                    op: "scan topics",
                    source,
                })?;
                let name = String::from_utf8_lossy(&key).into_owned();
                let config =
                    serde_json::from_slice(&value).map_err(|source| MetaError::Decode {
                        key: name.clone(),
                        source,
                    })?;
                Ok((name, config))
            })
            .collect()
    }

    /// Commits a group's offsets, all or none, durably.
    pub async fn commit_offsets(
        &self,
        group: &GroupId,
        offsets: &[PartitionOffset],
    ) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        for offset in offsets {
            let value =
                serde_json::to_vec(&offset.committed).map_err(|source| MetaError::Decode {
                    key: offset.topic.clone(),
                    source,
                })?;
            batch.insert(offset_key(group, &offset.topic, offset.partition), value);
        }
        self.offsets
            .apply_batch(batch)
            .map_err(|source| MetaError::Store {
                op: "commit offsets",
                source,
            })?;
        self.flush().await
    }

    /// A group's committed offset of one partition, if it committed one.
    pub fn committed_offset(
        &self,
        group: &GroupId,
        topic: &str,
        partition: u32,
    ) -> Result<Option<CommittedOffset>, MetaError> {
        let key = offset_key(group, topic, partition);
        let value = self.offsets.get(&key).map_err(|source| MetaError::Store {
            op: "read offset",
            source,
        })?;
        value
            .map(|value| {
                serde_json::from_slice(&value).map_err(|source| MetaError::Decode {
                    key: format!("{group}/{topic}/{partition}"),
                    source,
                })
            })
            .transpose()
    }

    /// A group's committed offsets, in topic and partition order.
    pub fn committed_offsets(&self, group: &GroupId) -> Result<Vec<PartitionOffset>, MetaError> {
        let mut prefix = group.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.offsets
            .scan_prefix(prefix)
            .map(|entry| {
                let (key, value) = entry.map_err(|source| MetaError::Store {
                    op: "scan offsets",
                    source,
                })?;
                let (_, topic, partition) = split_offset_key(&key).unwrap_or_default();
                let committed =
                    serde_json::from_slice(&value).map_err(|source| MetaError::Decode {
                        key: format!("{group}/{topic}/{partition}"),
                        source,
                    })?;
                Ok(PartitionOffset {
                    topic: topic.to_owned(),
                    partition,
                    committed,
                })
            })
            .collect()
    }

    /// Forgets every offset a group committed.
    pub async fn delete_group_offsets(&self, group: &GroupId) -> Result<(), MetaError> {
        let mut prefix = group.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.remove_offsets(self.offsets.scan_prefix(prefix), |_| true)
            .await
    }

    /// Every group that has committed offsets.
    pub fn groups(&self) -> Result<Vec<GroupId>, MetaError> {
        let mut groups: Vec<GroupId> = Vec::new();
        for entry in self.offsets.iter() {
            let (key, _) = entry.map_err(|source| MetaError::Store {
                op: "scan offsets",
                source,
            })?;
            if let Some((group, _, _)) = split_offset_key(&key)
                && groups.last().is_none_or(|last| last.as_str() != group)
            {
                groups.push(GroupId(group.to_owned()));
            }
        }
        Ok(groups)
    }
}

impl Meta {
    fn table(&self, table: Table) -> &sled::Tree {
        &self.tables[table as usize]
    }

    /// Stores a document and makes it durable before returning.
    pub async fn put<T: Serialize>(
        &self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<(), MetaError> {
        self.put_unflushed(table, key, value)?;
        self.flush().await
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
        let encoded = serde_json::to_vec(value).map_err(|source| MetaError::Decode {
            key: key.to_owned(),
            source,
        })?;
        self.table(table)
            .insert(key.as_bytes(), encoded)
            .map_err(|source| MetaError::Store {
                op: "insert",
                source,
            })?;
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, MetaError> {
        let value = self
            .table(table)
            .get(key.as_bytes())
            .map_err(|source| MetaError::Store { op: "read", source })?;
        value
            .map(|value| {
                serde_json::from_slice(&value).map_err(|source| MetaError::Decode {
                    key: key.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    /// Removes one document, durably.
    pub async fn remove(&self, table: Table, key: &str) -> Result<(), MetaError> {
        self.table(table)
            .remove(key.as_bytes())
            .map_err(|source| MetaError::Store {
                op: "remove",
                source,
            })?;
        self.flush().await
    }

    /// Removes every document whose key starts with `prefix`, durably.
    pub async fn remove_prefix(&self, table: Table, prefix: &str) -> Result<(), MetaError> {
        let tree = self.table(table);
        let mut batch = sled::Batch::default();
        for entry in tree.scan_prefix(prefix.as_bytes()) {
            let (key, _) = entry.map_err(|source| MetaError::Store { op: "scan", source })?;
            batch.remove(key);
        }
        tree.apply_batch(batch).map_err(|source| MetaError::Store {
            op: "remove",
            source,
        })?;
        self.flush().await
    }

    /// Every document of the table, in key order.
    pub fn entries<T: DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<Vec<(String, T)>, MetaError> {
        self.table(table)
            .iter()
            .map(|entry| {
                let (key, value) =
                    entry.map_err(|source| MetaError::Store { op: "scan", source })?;
                let key = String::from_utf8_lossy(&key).into_owned();
                let value = serde_json::from_slice(&value).map_err(|source| MetaError::Decode {
                    key: key.clone(),
                    source,
                })?;
                Ok((key, value))
            })
            .collect()
    }
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
