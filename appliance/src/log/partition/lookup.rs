//! Lookups by key in compacted topics: the topic read as a table, the newest record of each
//! key (a tombstone deletes it).
//!
//! A partition keeps, once looked up, an index of key digests to the offset of their newest
//! record, brought up to the high watermark at each lookup by reading what was appended
//! since; the record itself is read from the log. Compaction never moves the newest record of
//! a key, so the index stays true across passes; where a pass removed an expired tombstone,
//! the key is simply absent. The index holds at most [`MAX_COMPACTION_KEYS`] keys, the bound
//! compaction itself needs.

use std::sync::PoisonError;

use super::Partition;
use super::compaction::{MAX_COMPACTION_KEYS, NewestOffsets};
use crate::log::batch::{self, StoredRecord};
use crate::log::{LogError, Offset, read_lock};

#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    newest: NewestOffsets,
    /// The index covers every record below this offset.
    indexed_to: Offset,
}

impl Partition {
    /// The newest record of `key`, unless it is a tombstone or there is none. Only compacted
    /// topics are tables: others are refused with [`LogError::NotCompacted`].
    pub fn lookup(&self, key: &[u8]) -> Result<Option<StoredRecord>, LogError> {
        if !read_lock(&self.config).cleanup_policy.compacts() {
            return Err(LogError::NotCompacted {
                topic: self.topic.clone(),
            });
        }
        let Some(offset) = self.newest_offset(key)? else {
            return Ok(None);
        };
        let chunk = match self.read(offset, 1) {
            Ok(chunk) => chunk,
            // Retention (compact,delete) took it meanwhile.
            Err(LogError::OffsetOutOfRange { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut found = None;
        batch::visit_all(chunk.batches, |record| {
            if record.offset == offset && record.key == Some(key) {
                found = Some(record.to_stored());
            }
        })?;
        Ok(found.filter(|stored| stored.record.value.is_some()))
    }

    /// The offset of the newest record of `key`, after bringing the index up to the high
    /// watermark.
    fn newest_offset(&self, key: &[u8]) -> Result<Option<Offset>, LogError> {
        let log_start = self.log_start();
        let mut index = self
            .key_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if index.indexed_to < log_start {
            // New, or the partition restarted past what it indexed.
            *index = KeyIndex {
                newest: NewestOffsets::default(),
                indexed_to: log_start,
            };
        }
        let KeyIndex { newest, indexed_to } = &mut *index;
        *indexed_to = self.note_newest(newest, *indexed_to)?;
        if newest.overflowed() {
            *index = KeyIndex::default();
            return Err(LogError::TooManyKeys {
                topic: self.topic.clone(),
                partition: self.id,
                max: MAX_COMPACTION_KEYS,
            });
        }
        Ok(newest.get(key))
    }
}
