//! Compaction (`cleanup-policy = compact`): sealed segments rewritten to the newest record per
//! key, offsets unchanged.
//!
//! A pass first maps every key of the partition, up to the high watermark, to the offset of
//! its newest record (keys as 128-bit digests, at most [`MAX_COMPACTION_KEYS`] of them), then
//! rewrites each sealed segment that holds a record to remove. A record is removed when a
//! newer record of its key exists, or when it is a tombstone (no value) that is the newest of
//! its key and its segment was sealed more than `delete-retention-ms` ago. Kept always: records
//! without a key, and records carrying a progress tag ([`KEPT_BY_COMPACTION`]), by which
//! pipelines and source connectors find what they wrote.
//!
//! Offsets never change. The kept records of neighbouring batches are written as one batch
//! whose range (base offset, last offset delta) covers the offsets of the batches it replaces,
//! so batches still tile the offsets without gaps and every reader (consumers, the link's
//! mirrors, recovery's continuity checks) reads a compacted segment as any other. A segment of
//! which nothing would be kept keeps its last record, so that its range stays covered.
//!
//! Crash safety: the replacement is written to `<base>.log.compacting` and synced, the old
//! index files are deleted, and the replacement is renamed over `<base>.log` (the commit
//! point) and the directory synced; the new indexes follow. A stop before the rename leaves
//! the old segment (recovery deletes the unfinished file and rebuilds the indexes), one after
//! it the new one (recovery rebuilds its indexes). The rename and the swap in the segment list
//! happen under the list's lock, so a segment deleted meanwhile is not brought back; readers
//! holding the old segment keep reading its open file.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

#[cfg(test)]
mod tests;

use super::Partition;
use bytes::Bytes;

use crate::log::batch::{self, BatchHeader, RecordView, StoredRecord};
use crate::log::segment::{self, Segment};
use crate::log::{LogError, Offset, TopicConfig, io_error, read_lock};

/// A pass maps at most this many distinct keys of one partition (about 50 MB); a partition
/// with more is not compacted, with a warning, rather than exhausting a gateway's memory.
pub const MAX_COMPACTION_KEYS: usize = 1_000_000;

/// The newest sealed segments that compaction leaves whole: readers of the recent batch
/// headers (Kafka's idempotent producers, rebuilt after a restart from the active segment
/// and these) need their producer ids and sequences.
pub const RECENT_SEGMENTS_LEFT_WHOLE: usize = 1;

/// Records carrying one of these headers are never removed: they are how pipelines and source
/// connectors find, after a crash, what they already wrote.
pub const KEPT_BY_COMPACTION: [&str; 2] = ["appliance.pipeline", "appliance.source"];

/// A pass runs when at least this share of the sealed bytes was sealed since the last pass
/// (Kafka's `min.cleanable.dirty.ratio`), or when a tombstone kept by the last one expires.
const MIN_DIRTY_RATIO: f64 = 0.5;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
}

/// What a partition remembers between passes (in memory: the first pass after a start looks
/// at everything).
#[derive(Debug, Default)]
pub(super) struct CompactionState {
    /// The end of the sealed segments the last pass saw.
    cleaned_to: Offset,
    /// When the oldest tombstone the last pass kept may go.
    tombstone_expiry: Option<SystemTime>,
}

/// Key digests (128 bits of SHA-256) to the offset of their newest record, at most
/// [`MAX_COMPACTION_KEYS`] of them: what a pass keeps and a lookup finds.
#[derive(Debug, Default)]
pub(super) struct NewestOffsets(HashMap<[u8; 16], Offset>);

impl NewestOffsets {
    /// Notes a record read in offset order; past the bound, new keys are not taken.
    fn note(&mut self, record: &RecordView<'_>) {
        if let Some(key) = record.key
            && self.0.len() <= MAX_COMPACTION_KEYS
        {
            self.0.insert(digest(key), record.offset);
        }
    }

    /// Whether more keys were noted than the bound allows: the map is incomplete.
    pub(super) fn overflowed(&self) -> bool {
        self.0.len() > MAX_COMPACTION_KEYS
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<Offset> {
        self.0.get(&digest(key)).copied()
    }
}

fn digest(key: &[u8]) -> [u8; 16] {
    let hash = Sha256::digest(key);
    let mut out = [0; 16];
    out.copy_from_slice(&hash[..16]);
    out
}

impl Partition {
    fn lock_compaction(&self) -> std::sync::MutexGuard<'_, CompactionState> {
        self.compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Compacts the sealed segments when the topic's policy asks for it and enough was sealed
    /// since the last pass (or a kept tombstone expired). `None`: nothing was due.
    pub fn compact_if_due(&self, now: SystemTime) -> Result<Option<CompactionReport>, LogError> {
        if !read_lock(&self.config).cleanup_policy.compacts() {
            return Ok(None);
        }
        let segments = read_lock(&self.segments).clone();
        let sealed = self.compactable(&segments);
        let sealed_bytes: u64 = sealed.iter().map(|s| s.visible_len()).sum();
        let (cleaned_to, expiry) = {
            let state = self.lock_compaction();
            (state.cleaned_to, state.tombstone_expiry)
        };
        let dirty_bytes: u64 = sealed
            .iter()
            .filter(|s| s.base() >= cleaned_to)
            .map(|s| s.visible_len())
            .sum();
        let dirty = sealed_bytes > 0 && dirty_bytes as f64 >= MIN_DIRTY_RATIO * sealed_bytes as f64;
        let expired = expiry.is_some_and(|at| at <= now);
        if !dirty && !expired {
            return Ok(None);
        }
        self.compact(now).map(Some)
    }

    /// The sealed segments a pass may rewrite, oldest first: not the newest sealed one, where
    /// Kafka's idempotent producers' recent batches are found after a restart (their ids and
    /// sequences would be lost in a rewrite), and none holding an offset a retention hold
    /// keeps (a link that has not acknowledged it resumes there, at a batch boundary it
    /// already compared with its mirror).
    fn compactable<'a>(&self, segments: &'a [Arc<Segment>]) -> &'a [Arc<Segment>] {
        let sealed = &segments[..segments
            .len()
            .saturating_sub(1 + RECENT_SEGMENTS_LEFT_WHOLE)];
        let keep_from = self
            .binding_hold()
            .map_or(Offset(u64::MAX), |hold| hold.keep_from);
        let eligible = sealed.partition_point(|s| s.next_offset() < keep_from);
        &sealed[..eligible]
    }

    /// One compaction pass over the sealed segments it may rewrite, whatever the policy.
    pub fn compact(&self, now: SystemTime) -> Result<CompactionReport, LogError> {
        // Held for the pass: two passes of one partition would share replacement files.
        let mut state = self.lock_compaction();
        let config = read_lock(&self.config).clone();
        let segments = read_lock(&self.segments).clone();
        let mut report = CompactionReport::default();
        let Some(newest) = self.map_keys()? else {
            return Ok(report);
        };
        let sealed = self.compactable(&segments);
        let retention = Duration::from_millis(config.delete_retention_ms);
        let mut tombstone_expiry: Option<SystemTime> = None;
        for old in sealed {
            let modified = old.modified()?;
            let tombstones_expire_at = modified + retention;
            let plan = Plan {
                newest: &newest,
                drop_tombstones: tombstones_expire_at <= now,
            };
            let count = plan.count(old)?;
            if count.kept_tombstone {
                tombstone_expiry = Some(
                    tombstone_expiry.map_or(tombstones_expire_at, |t| t.min(tombstones_expire_at)),
                );
            }
            if count.removable == 0 || count.is_lone_filler() {
                continue;
            }
            let before = old.visible_len();
            if let Some(rewritten) = self.rewrite(old, &plan, &config, modified)? {
                report.segments_rewritten += 1;
                report.bytes_before += before;
                report.bytes_after += rewritten.len;
                report.records_removed += rewritten.removed;
            }
        }
        *state = CompactionState {
            cleaned_to: sealed.last().map_or(Offset(0), |s| s.next_offset()),
            tombstone_expiry,
        };
        if report.segments_rewritten > 0 {
            tracing::info!(
                topic = %self.topic,
                partition = %self.id,
                segments = report.segments_rewritten,
                records_removed = report.records_removed,
                bytes_before = report.bytes_before,
                bytes_after = report.bytes_after,
                "compacted"
            );
        }
        Ok(report)
    }

    /// The offset of the newest record of every key below the high watermark; `None` when
    /// there are more keys than a pass may map.
    fn map_keys(&self) -> Result<Option<NewestOffsets>, LogError> {
        let mut newest = NewestOffsets::default();
        self.note_newest(&mut newest, Offset(0))?;
        if newest.overflowed() {
            tracing::warn!(
                topic = %self.topic,
                partition = %self.id,
                max_keys = MAX_COMPACTION_KEYS,
                "not compacted: the partition holds more distinct keys than a compaction \
                 pass maps; give the topic more partitions"
            );
            return Ok(None);
        }
        Ok(Some(newest))
    }

    /// Notes in `newest` every record from `from` up to the high watermark; returns the offset
    /// it read to.
    pub(super) fn note_newest(
        &self,
        newest: &mut NewestOffsets,
        from: Offset,
    ) -> Result<Offset, LogError> {
        self.visit_records(from, |record| newest.note(&record))
    }

    /// Writes the kept records of `old` to its replacement and swaps it in. `None`: the
    /// segment left the partition meanwhile.
    fn rewrite(
        &self,
        old: &Arc<Segment>,
        plan: &Plan<'_>,
        config: &TopicConfig,
        modified: SystemTime,
    ) -> Result<Option<Rewritten>, LogError> {
        let base = old.base();
        let temp = segment::compacting_path(&self.dir, base);
        let written = self.write_replacement(old, plan, config, &temp, modified);
        let opened = written.and_then(|removed| {
            Segment::open_replacement(&self.dir, base, &temp).map(|segment| (segment, removed))
        });
        let (replacement, removed) = match opened {
            Ok(replacement) => replacement,
            Err(error) => {
                let _ = segment::remove_if_present(&temp);
                return Err(error);
            }
        };
        segment::delete_index_files(&self.dir, base)?;
        segment::sync_dir(&self.dir)?;
        let len = replacement.visible_len();
        {
            let mut all = self
                .segments
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(slot) = all.iter().position(|s| Arc::ptr_eq(s, old)) else {
                drop(all);
                segment::remove_if_present(&temp)?;
                return Ok(None);
            };
            std::fs::rename(&temp, segment::log_path(&self.dir, base))
                .map_err(io_error(&temp, "rename compacted segment"))?;
            all[slot] = Arc::new(replacement);
            let replacement = all[slot].clone();
            drop(all);
            // Until this sync a crash may bring the old segment back, which is as valid.
            segment::sync_dir(&self.dir)?;
            replacement.write_index_files()?;
        }
        Ok(Some(Rewritten { len, removed }))
    }

    fn write_replacement(
        &self,
        old: &Segment,
        plan: &Plan<'_>,
        config: &TopicConfig,
        temp: &std::path::Path,
        modified: SystemTime,
    ) -> Result<u64, LogError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)
            .map_err(io_error(temp, "create compacted segment"))?;
        let mut out = Output {
            file: &file,
            path: temp,
            position: 0,
            compression: config.compression,
            max_batch_bytes: (config.max_message_bytes as usize)
                .saturating_sub(BATCH_OVERHEAD)
                .min(1 << 20),
            group: Group::starting_at(old.base()),
        };
        let mut last_batch: Option<(u64, BatchHeader, Bytes)> = None;
        let mut removed = 0;
        let mut kept_any = false;
        for_each_batch(old, |position, header, bytes| {
            let mut kept = Vec::new();
            batch::visit_batch(header, bytes.clone(), |record| {
                if plan.keeps(&record) {
                    kept.push(detached(&record));
                } else {
                    removed += 1;
                }
            })
            .map_err(|e| corrupt(old, position, e))?;
            kept_any |= !kept.is_empty();
            last_batch = Some((position, *header, bytes));
            kept.into_iter().try_for_each(|record| out.add(record))
        })?;
        if !kept_any && let Some((position, header, bytes)) = last_batch {
            let mut records = Vec::new();
            batch::decode_batch(&header, bytes, &mut records)
                .map_err(|e| corrupt(old, position, e))?;
            if let Some(last) = records.pop() {
                out.add(filler(last))?;
                removed -= 1;
            }
        }
        out.finish(old.next_offset())?;
        file.set_modified(modified)
            .and_then(|()| file.sync_all())
            .map_err(io_error(temp, "sync compacted segment"))?;
        Ok(removed)
    }
}

/// A record of a batch with bytes of its own, so that a kept record does not hold its whole
/// (decompressed) batch in memory.
fn detached(record: &RecordView<'_>) -> StoredRecord {
    let copy = |field: Option<&[u8]>| field.map(Bytes::copy_from_slice);
    StoredRecord {
        offset: record.offset,
        record: batch::Record {
            key: copy(record.key),
            value: copy(record.value),
            headers: record
                .headers()
                .map(|(key, value)| batch::Header {
                    key: key.to_owned(),
                    value: copy(value),
                })
                .collect(),
            timestamp: record.timestamp,
        },
    }
}

/// What stands for a segment of which nothing is kept, so that its offsets stay covered: a
/// tombstone of its last record's key, which a newer record of the key outlives and which
/// cannot bring back a value that a newer tombstone deleted.
fn filler(last: StoredRecord) -> StoredRecord {
    StoredRecord {
        offset: last.offset,
        record: batch::Record {
            value: None,
            headers: Vec::new(),
            ..last.record
        },
    }
}

/// What a pass would do to one segment.
struct Count {
    records: u64,
    removable: u64,
    kept_tombstone: bool,
    /// The segment's only record is a tombstone: what a segment of which nothing is kept
    /// becomes, so rewriting it changes nothing.
    lone_tombstone: bool,
}

impl Count {
    fn is_lone_filler(&self) -> bool {
        self.records == 1 && self.lone_tombstone
    }
}

/// A segment's replacement: its size and how many records it has fewer.
struct Rewritten {
    len: u64,
    removed: u64,
}

/// Which records of a segment a pass keeps.
struct Plan<'a> {
    newest: &'a NewestOffsets,
    drop_tombstones: bool,
}

impl Plan<'_> {
    fn keeps(&self, record: &RecordView<'_>) -> bool {
        let Some(key) = record.key else {
            return true;
        };
        if record
            .headers()
            .any(|(key, _)| KEPT_BY_COMPACTION.contains(&key))
        {
            return true;
        }
        let is_newest = self.newest.get(key) == Some(record.offset);
        is_newest && (record.value.is_some() || !self.drop_tombstones)
    }

    /// How many records of `segment` the pass removes, and whether it keeps a tombstone.
    fn count(&self, segment: &Segment) -> Result<Count, LogError> {
        let mut count = Count {
            records: 0,
            removable: 0,
            kept_tombstone: false,
            lone_tombstone: false,
        };
        for_each_record(segment, |record| {
            count.records += 1;
            count.lone_tombstone = record.value.is_none();
            if self.keeps(&record) {
                count.kept_tombstone |= record.value.is_none() && record.key.is_some();
            } else {
                count.removable += 1;
            }
        })?;
        Ok(count)
    }
}

/// Calls `visit` with the position, header and bytes of every batch of `segment`, until it
/// returns an error.
fn for_each_batch(
    segment: &Segment,
    mut visit: impl FnMut(u64, &BatchHeader, Bytes) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut headers = Vec::new();
    segment.visit_headers(segment.base(), |position, header| {
        headers.push((position, *header));
        true
    })?;
    for (position, header) in headers {
        let bytes = segment.read_batch(position, &header)?;
        visit(position, &header, bytes)?;
    }
    Ok(())
}

/// Calls `visit` with every record of `segment`, borrowed from its batch.
fn for_each_record(
    segment: &Segment,
    mut visit: impl FnMut(RecordView<'_>),
) -> Result<(), LogError> {
    for_each_batch(segment, |position, header, bytes| {
        batch::visit_batch(header, bytes, &mut visit).map_err(|e| corrupt(segment, position, e))
    })
}

fn corrupt(segment: &Segment, position: u64, problem: batch::BatchError) -> LogError {
    LogError::Corrupt {
        path: segment.path().to_path_buf(),
        position,
        problem: crate::log::Corruption::Batch(problem),
    }
}

/// A batch's header and the slack of its compression's framing.
const BATCH_OVERHEAD: usize = 256;

/// A record's bytes in a batch, at most: its payload and every varint at its widest.
fn encoded_size(record: &batch::Record) -> usize {
    record.payload_len() + 40 + 10 * record.headers.len()
}

/// The kept records of consecutive batches, written as one batch covering their offsets.
struct Group {
    base: Offset,
    records: Vec<StoredRecord>,
    bytes: usize,
}

impl Group {
    fn starting_at(base: Offset) -> Self {
        Self {
            base,
            records: Vec::new(),
            bytes: 0,
        }
    }
}

/// The replacement file being written: groups of kept records, each written as one batch
/// once the next record would not fit, the last one covering the segment's remaining offsets.
struct Output<'a> {
    file: &'a std::fs::File,
    path: &'a std::path::Path,
    position: u64,
    compression: batch::Compression,
    /// What a written batch may hold at most: within the topic's `max-message-bytes`, so that
    /// a mirror takes it.
    max_batch_bytes: usize,
    group: Group,
}

impl Output<'_> {
    /// Adds a kept record (in offset order). The group is closed before it when the record
    /// would take the batch past its size, or its offset delta past what a batch holds.
    fn add(&mut self, stored: StoredRecord) -> Result<(), LogError> {
        let size = encoded_size(&stored.record);
        let too_big = self.group.bytes + size > self.max_batch_bytes;
        let too_far = stored.offset.0 - self.group.base.0 > i32::MAX as u64;
        if (too_big || too_far) && !self.group.records.is_empty() {
            // The group's batch covers the offsets up to this record, which starts the next.
            let group = std::mem::replace(&mut self.group, Group::starting_at(stored.offset));
            self.write(group, stored.offset)?;
        }
        self.group.bytes += size;
        self.group.records.push(stored);
        Ok(())
    }

    /// Writes the last group, its batch covering the offsets up to `end` (the segment's end),
    /// those of trailing batches without a kept record included.
    fn finish(mut self, end: Offset) -> Result<(), LogError> {
        let group = std::mem::replace(&mut self.group, Group::starting_at(end));
        self.write(group, end)
    }

    fn write(&mut self, group: Group, end: Offset) -> Result<(), LogError> {
        let records: Vec<(u32, batch::Record)> = group
            .records
            .into_iter()
            .map(|stored| ((stored.offset.0 - group.base.0) as u32, stored.record))
            .collect();
        let last_offset_delta = (end.0 - 1 - group.base.0) as u32;
        let mut bytes = batch::encode_sparse(&records, last_offset_delta, self.compression)?;
        batch::set_base_offset(&mut bytes, group.base);
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(&bytes, self.position)
            .map_err(io_error(self.path, "write compacted segment"))?;
        self.position += bytes.len() as u64;
        Ok(())
    }
}
