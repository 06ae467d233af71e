//! The sparse offset index and the time index of one segment.
//!
//! Both are derived data: kept in memory for lookups, appended to their files as the segment
//! grows, and rebuilt from the segment itself whenever a file is missing or fails its checks.
//! Entry layouts follow Kafka's `.index` and `.timeindex` files, big-endian:
//!
//! ```text
//! .index      8 bytes  relative offset u32, byte position u32
//! .timeindex 12 bytes  max timestamp so far i64, relative offset u32
//! ```

use bytes::{Buf, BufMut};

use super::batch::BatchHeader;
use super::types::{Offset, Timestamp};

const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp: Timestamp,
    pub relative_offset: u32,
}

/// Both indexes of a segment plus what is needed to extend them batch by batch.
#[derive(Debug, Clone, Default)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    bytes_since_entry: u64,
    /// Largest timestamp of any batch so far, and the offset where it was seen.
    max_timestamp: Option<(Timestamp, u32)>,
}

impl SegmentIndex {
    /// Records a batch appended at `position`; adds entries every `interval_bytes`.
    pub fn note_batch(
        &mut self,
        segment_base: Offset,
        position: u64,
        header: &BatchHeader,
        interval_bytes: u64,
    ) {
        let relative_offset = (header.base_offset.0 - segment_base.0) as u32;
        self.note_unindexed_batch(segment_base, header);
        if self.offsets.is_empty() || self.bytes_since_entry >= interval_bytes {
            self.offsets.push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            self.bytes_since_entry = 0;
            if let Some((max_timestamp, at)) = self.max_timestamp
                && self
                    .times
                    .last()
                    .is_none_or(|t| max_timestamp > t.max_timestamp)
            {
                self.times.push(TimeEntry {
                    max_timestamp,
                    relative_offset: at,
                });
            }
        }
        self.bytes_since_entry += header.total_len as u64;
    }

    /// Takes in a batch past the last entry of a loaded index, which moves no entry.
    pub fn note_unindexed_batch(&mut self, segment_base: Offset, header: &BatchHeader) {
        let relative_offset = (header.base_offset.0 - segment_base.0) as u32;
        if self
            .max_timestamp
            .is_none_or(|(max, _)| header.max_timestamp > max)
        {
            self.max_timestamp = Some((header.max_timestamp, relative_offset));
        }
    }

    /// The largest timestamp in the segment, if it holds any batch.
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.max_timestamp.map(|(ts, _)| ts)
    }

    /// Position of the last indexed batch at or before `relative_offset`.
    pub fn floor_position(&self, relative_offset: u32) -> u64 {
        let after = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        after
            .checked_sub(1)
            .map_or(0, |i| u64::from(self.offsets[i].position))
    }

    /// An offset from which a scan finds the first record with timestamp >= `target`: every
    /// record before the returned entry is older than `target`.
    pub fn time_floor(&self, target: Timestamp) -> Option<u32> {
        let after = self.times.partition_point(|e| e.max_timestamp < target);
        after.checked_sub(1).map(|i| self.times[i].relative_offset)
    }

    pub fn encode_offsets(entries: &[OffsetEntry]) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.len() * OFFSET_ENTRY_LEN);
        for e in entries {
            out.put_u32(e.relative_offset);
            out.put_u32(e.position);
        }
        out
    }

    pub fn encode_times(entries: &[TimeEntry]) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.len() * TIME_ENTRY_LEN);
        for e in entries {
            out.put_i64(e.max_timestamp.0);
            out.put_u32(e.relative_offset);
        }
        out
    }

    /// Loads index files written for a sealed segment of `segment_len` bytes, or says why they
    /// cannot be trusted. The caller still checks that the last entry points at a batch.
    pub fn load(
        offset_bytes: &[u8],
        time_bytes: &[u8],
        segment_len: u64,
    ) -> Result<Self, &'static str> {
        if !offset_bytes.len().is_multiple_of(OFFSET_ENTRY_LEN)
            || !time_bytes.len().is_multiple_of(TIME_ENTRY_LEN)
        {
            return Err("size is not a whole number of entries");
        }
        let mut offsets = Vec::with_capacity(offset_bytes.len() / OFFSET_ENTRY_LEN);
        let mut buf = offset_bytes;
        while buf.has_remaining() {
            let entry = OffsetEntry {
                relative_offset: buf.get_u32(),
                position: buf.get_u32(),
            };
            if let Some(prev) = offsets.last() {
                let prev: &OffsetEntry = prev;
                if entry.relative_offset <= prev.relative_offset || entry.position <= prev.position
                {
                    return Err("offset entries are not increasing");
                }
            } else if entry.position != 0 || entry.relative_offset != 0 {
                return Err("first offset entry does not point at the segment start");
            }
            if u64::from(entry.position) >= segment_len {
                return Err("offset entry points past the end of the segment");
            }
            offsets.push(entry);
        }
        if offsets.is_empty() && segment_len > 0 {
            return Err("offset index is empty but the segment is not");
        }
        let mut times = Vec::with_capacity(time_bytes.len() / TIME_ENTRY_LEN);
        let mut buf = time_bytes;
        while buf.has_remaining() {
            let entry = TimeEntry {
                max_timestamp: Timestamp(buf.get_i64()),
                relative_offset: buf.get_u32(),
            };
            if let Some(prev) = times.last() {
                let prev: &TimeEntry = prev;
                if entry.max_timestamp <= prev.max_timestamp
                    || entry.relative_offset < prev.relative_offset
                {
                    return Err("time entries are not increasing");
                }
            }
            times.push(entry);
        }
        let max_timestamp = times.last().map(|t| (t.max_timestamp, t.relative_offset));
        Ok(Self {
            offsets,
            times,
            bytes_since_entry: 0,
            max_timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::Compression;

    fn header(base: u64, len: usize, max_ts: i64) -> BatchHeader {
        BatchHeader {
            base_offset: Offset(base),
            total_len: len,
            stored_crc: 0,
            compression: Compression::None,
            last_offset_delta: 0,
            base_timestamp: Timestamp(max_ts),
            max_timestamp: Timestamp(max_ts),
            record_count: 1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    #[test]
    fn entries_are_sparse_and_round_trip_through_their_files() {
        let mut index = SegmentIndex::default();
        let mut position = 0;
        for i in 0..100u64 {
            index.note_batch(
                Offset(1000),
                position,
                &header(1000 + i, 100, i as i64 * 10),
                1000,
            );
            position += 100;
        }
        assert_eq!(index.offsets.len(), 10);
        assert_eq!(index.floor_position(0), 0);
        assert_eq!(index.floor_position(15), 1000);
        assert_eq!(index.time_floor(Timestamp(0)), None);
        assert_eq!(index.time_floor(Timestamp(505)), Some(50));
        let loaded = SegmentIndex::load(
            &SegmentIndex::encode_offsets(&index.offsets),
            &SegmentIndex::encode_times(&index.times),
            position,
        )
        .expect("valid files load");
        assert_eq!(loaded.offsets, index.offsets);
        assert_eq!(loaded.times, index.times);
    }

    #[test]
    fn damaged_files_are_rejected() {
        let entries = [
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            },
            OffsetEntry {
                relative_offset: 5,
                position: 400,
            },
        ];
        let good = SegmentIndex::encode_offsets(&entries);
        assert!(SegmentIndex::load(&good, &[], 500).is_ok());
        assert!(SegmentIndex::load(&good[..7], &[], 500).is_err());
        assert!(SegmentIndex::load(&good, &[], 300).is_err());
        let mut swapped = good.clone();
        swapped[12] = 0;
        swapped[13] = 0;
        swapped[14] = 0;
        swapped[15] = 0;
        assert!(SegmentIndex::load(&swapped, &[], 500).is_err());
    }
}
