//! The data directory's disk budget (`log.max-disk-bytes`): a gateway whose uplink is down for
//! days must not fill its disk until every write on the machine fails.
//!
//! The budget counts the bytes of every file under the data directory (segments, indexes, the
//! metadata store, plugins' caches) but the disk reserve, which is ballast held back for a
//! full disk. It is measured by walking the directory at start and after each retention pass;
//! between walks each admitted append adds its size. An append that would pass the budget is
//! measured again first (at most every [`REMEASURE`]), so room made by deleting topics or
//! lowering retention is seen by the next append, without a restart.
//!
//! When the budget is reached, the policy (`log.disk-budget-policy`) decides:
//! - `refuse` (the default): appends are refused before they are queued: nothing acknowledged
//!   is lost, and the refusal names the budget and what makes room;
//! - `delete-oldest`: the oldest sealed segment of all partitions whose topic's cleanup
//!   deletes (never a compacted topic: tables and state) goes, one at a time under one lock,
//!   until the append fits; retention holds do not keep it, and a link that had not sent it
//!   reports the gap. Only with nothing left to delete is the append refused.
//!
//! Reads, deletes and the topics the log is told to leave outside the budget (the audit topic,
//! so that the deletes that make room stay acknowledged) go on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::partition::Partition;
use super::{LogError, reserve};

/// What happens to an append that would pass the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetPolicy {
    /// Refuse it (RESOURCE_EXHAUSTED, KAFKA_STORAGE_ERROR) until space is freed.
    #[default]
    Refuse,
    /// Delete the oldest segments of topics whose cleanup deletes until it fits.
    DeleteOldest,
}

/// The shortest time between two walks of the data directory for appends that would pass the
/// budget.
const REMEASURE: Duration = Duration::from_millis(200);

/// The budget of one data directory and what it holds now.
#[derive(Debug)]
pub struct DiskBudget {
    dir: PathBuf,
    max: Option<u64>,
    policy: BudgetPolicy,
    used: AtomicU64,
    measured: Mutex<Option<Instant>>,
    /// The partitions under the budget, for `delete-oldest` to choose from.
    partitions: Mutex<Vec<Weak<Partition>>>,
    /// Held while `delete-oldest` deletes, so that concurrent appends free space once.
    evicting: tokio::sync::Mutex<()>,
    evicted_segments: AtomicU64,
}

impl DiskBudget {
    /// The budget of `dir`, `max` bytes (`None`: no budget) kept by `policy`, measured now.
    pub fn new(dir: &Path, max: Option<u64>, policy: BudgetPolicy) -> Self {
        let budget = Self {
            dir: dir.to_path_buf(),
            max,
            policy,
            used: AtomicU64::new(0),
            measured: Mutex::new(None),
            partitions: Mutex::default(),
            evicting: tokio::sync::Mutex::new(()),
            evicted_segments: AtomicU64::new(0),
        };
        budget.measure();
        budget
    }

    pub fn policy(&self) -> BudgetPolicy {
        self.policy
    }

    /// Segments `delete-oldest` deleted since the start.
    pub fn evicted_segments(&self) -> u64 {
        self.evicted_segments.load(Ordering::Relaxed)
    }

    /// Puts `partition` among those `delete-oldest` may take segments from.
    pub(super) fn register(&self, partition: &Arc<Partition>) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        partitions.retain(|p| p.strong_count() > 0);
        partitions.push(Arc::downgrade(partition));
    }

    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// Bytes the data directory holds, as last measured plus what was appended since.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Free bytes on the data directory's file system; 0 when it cannot be asked.
    pub fn free(&self) -> u64 {
        reserve::free_bytes(&self.dir).unwrap_or(0)
    }

    /// Walks the data directory and takes what it holds as the bytes used.
    pub fn measure(&self) {
        self.used.store(bytes_under(&self.dir), Ordering::Relaxed);
        *self.measured.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// [`DiskBudget::measure`] on the blocking pool, for async callers.
    pub async fn remeasure(self: &Arc<Self>) {
        let budget = Arc::clone(self);
        if let Err(error) = tokio::task::spawn_blocking(move || budget.measure()).await {
            tracing::error!(%error, "measuring the data directory panicked");
        }
    }

    /// Admits `bytes` more, or refuses them with the budget when they would pass it. The walk
    /// that measures again runs on the blocking pool, not on the appending task's thread.
    pub async fn admit(self: &Arc<Self>, bytes: u64) -> Result<(), LogError> {
        let Some(max) = self.max else {
            return Ok(());
        };
        if self.used().saturating_add(bytes) > max && self.measured_long_ago() {
            self.remeasure().await;
        }
        if self.used().saturating_add(bytes) > max && self.policy == BudgetPolicy::DeleteOldest {
            self.make_room(bytes, max).await;
        }
        let used = self.used();
        if used.saturating_add(bytes) > max {
            return Err(LogError::DiskBudgetReached { used, max });
        }
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes oldest segments until `bytes` more fit under `max`, or none is left to delete;
    /// then measures again. File deletions run on the blocking pool.
    async fn make_room(self: &Arc<Self>, bytes: u64, max: u64) {
        let _one_at_a_time = self.evicting.lock().await;
        let budget = Arc::clone(self);
        let evicted = tokio::task::spawn_blocking(move || {
            let mut evicted = 0;
            while budget.used().saturating_add(bytes) > max {
                let Some(partition) = budget.oldest_partition() else {
                    break;
                };
                match partition.evict_oldest_segment() {
                    Ok(Some(freed)) => {
                        evicted += 1;
                        let _ = budget.used.fetch_update(
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                            |used| Some(used.saturating_sub(freed)),
                        );
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(%error, "the disk budget cannot delete a segment");
                        break;
                    }
                }
            }
            if evicted > 0 {
                budget.measure();
            }
            evicted
        })
        .await;
        match evicted {
            Ok(evicted) => {
                self.evicted_segments.fetch_add(evicted, Ordering::Relaxed);
            }
            Err(error) => tracing::error!(%error, "making room in the disk budget panicked"),
        }
    }

    /// Of the partitions whose oldest sealed segment may go, the one where it is oldest.
    fn oldest_partition(&self) -> Option<Arc<Partition>> {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        partitions
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|partition| Some((partition.oldest_sealed_segment()?, partition)))
            .min_by_key(|(oldest, _)| *oldest)
            .map(|(_, partition)| partition)
    }

    fn measured_long_ago(&self) -> bool {
        self.measured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| at.elapsed() >= REMEASURE)
    }
}

/// The bytes of the files under `dir` but the disk reserve; what cannot be read counts 0 (a
/// file deleted while the walk passes it).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
            Ok(kind) if kind.is_file() && entry.file_name() != reserve::FILE_NAME => {
                entry.metadata().map_or(0, |m| m.len())
            }
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_past_the_budget_are_refused_until_files_go() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("topics")).unwrap();
        std::fs::write(dir.path().join("topics/a"), vec![0u8; 600]).unwrap();
        std::fs::write(dir.path().join(reserve::FILE_NAME), vec![0u8; 5000]).unwrap();
        let budget = Arc::new(DiskBudget::new(
            dir.path(),
            Some(1000),
            BudgetPolicy::Refuse,
        ));
        assert_eq!(budget.used(), 600, "the reserve is outside the budget");
        budget.admit(300).await.unwrap();
        let refused = budget.admit(200).await.unwrap_err();
        assert!(
            refused.to_string().contains("log.max-disk-bytes"),
            "{refused}"
        );
        assert!(matches!(
            refused,
            LogError::DiskBudgetReached { max: 1000, .. }
        ));
        assert!(refused.is_disk_full());

        std::fs::remove_file(dir.path().join("topics/a")).unwrap();
        std::thread::sleep(REMEASURE);
        budget.admit(200).await.unwrap();
        assert_eq!(budget.used(), 200);
    }

    #[tokio::test]
    async fn no_budget_admits_everything() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(DiskBudget::new(dir.path(), None, BudgetPolicy::Refuse));
        budget.admit(u64::MAX).await.unwrap();
    }
}
