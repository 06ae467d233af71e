//! What retention deletes of a partition, and the holds that keep what links still need.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Partition;
use crate::log::segment::{self, Segment};
use crate::log::{LogError, Offset, Timestamp, TopicConfig, read_lock};

/// What one holder asks retention to keep of a partition (see [`Partition::apply_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::log) struct RetentionHold {
    /// Keep every segment holding an offset at or after this one...
    pub keep_from: Offset,
    /// ...unless the partition holds more than this many bytes.
    pub max_bytes: u64,
}

impl Partition {
    /// Registers or replaces `holder`'s retention hold.
    pub(in crate::log) fn set_retention_hold(&self, holder: &str, hold: RetentionHold) {
        self.lock_holds().insert(holder.to_owned(), hold);
    }

    pub(in crate::log) fn release_retention_hold(&self, holder: &str) {
        self.lock_holds().remove(holder);
    }

    fn lock_holds(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RetentionHold>> {
        self.holds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What all holds together keep: from the smallest offset, up to the smallest cap.
    pub(super) fn binding_hold(&self) -> Option<RetentionHold> {
        self.lock_holds()
            .values()
            .copied()
            .reduce(|a, b| RetentionHold {
                keep_from: a.keep_from.min(b.keep_from),
                max_bytes: a.max_bytes.min(b.max_bytes),
            })
    }

    /// Deletes sealed segments past the topic's retention by age, then by size, oldest first.
    /// Retention holds keep every segment holding an offset at or after the smallest
    /// `keep_from`, unless the partition is over the smallest cap; what the cap then forces
    /// out is logged as a warning. Returns how many segments were deleted.
    pub fn apply_retention(&self, now: Timestamp) -> Result<usize, LogError> {
        let config = read_lock(&self.config).clone();
        if !config.cleanup_policy.deletes() {
            return Ok(0);
        }
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
        self.delete_segments(&doomed, "retention deleted segment")?;
        Ok(doomed.len())
    }

    /// When the topic's cleanup deletes and the partition has a sealed segment: the newest
    /// timestamp of its oldest one, by which the disk budget's `delete-oldest` policy picks the
    /// partition to take a segment from (no timestamp sorts first).
    pub(in crate::log) fn oldest_sealed_segment(&self) -> Option<Option<Timestamp>> {
        if !read_lock(&self.config).cleanup_policy.deletes() {
            return None;
        }
        let segments = read_lock(&self.segments);
        (segments.len() > 1).then(|| segments[0].max_timestamp())
    }

    /// Deletes the oldest sealed segment whatever the topic's retention and the holds say: the
    /// disk budget's `delete-oldest` policy. What a hold (a link not yet caught up) wanted kept
    /// is logged, and the link reports it as a gap. Returns the bytes freed, or `None` when
    /// there is no sealed segment left to delete.
    pub(in crate::log) fn evict_oldest_segment(&self) -> Result<Option<u64>, LogError> {
        let hold = self.binding_hold();
        let doomed = {
            let mut segments = self
                .segments
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if segments.len() < 2 {
                return Ok(None);
            }
            let segment = segments.remove(0);
            if let Some(hold) = hold
                && segment.next_offset() > hold.keep_from
            {
                tracing::warn!(
                    topic = %self.topic,
                    partition = %self.id,
                    lost_from = %hold.keep_from.max(segment.base()),
                    lost_to = %segment.next_offset(),
                    "the disk budget (delete-oldest) deletes offsets a retention hold asked to \
                     keep: the holder sees a gap"
                );
            }
            segment
        };
        let freed = doomed.visible_len();
        self.delete_segments(
            std::slice::from_ref(&doomed),
            "the disk budget deleted the oldest segment",
        )?;
        Ok(Some(freed))
    }

    fn delete_segments(&self, doomed: &[Arc<Segment>], what: &'static str) -> Result<(), LogError> {
        for segment in doomed {
            segment.delete_files()?;
            tracing::info!(
                topic = %self.topic,
                partition = %self.id,
                segment = %segment.path().display(),
                "{what}"
            );
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests;
