//! Exactly-once bookkeeping of one pipeline partition, without transactions.
//!
//! Two records of what was done, written in this order:
//! 1. the output itself: the last record of every appended batch carries the header
//!    `appliance.pipeline: <id>:<source partition>:<from>:<to>`, the range of source offsets
//!    whose output for this destination the batch completes (a batch never splits the output
//!    of one source record, and the ranges of one destination follow each other);
//! 2. after those appends are durable, [`Progress`]: the next source offset, and for each
//!    destination partition the end offset up to which its tags are accounted for.
//!
//! After a crash the progress may be behind the output. On start, each destination's tail
//! from its recorded end is scanned for this partition's tags ([`written_ranges`]); output for
//! a source offset inside a range a destination already holds is not written again, and a
//! batch that never landed (its range is missing) is written, even when a later one did.
//! A destination is entered into the progress (durably) before the first batch is appended to
//! it, so no destination escapes the scan. Tags arriving from upstream on records are removed,
//! so only this pipeline's own batches carry its tags.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::log::{Log, LogError, Offset, PartitionId, TopicName};
pub use crate::transform::{PIPELINE_TAG_HEADER as TAG_HEADER, SourceRange};

/// A destination partition of a pipeline partition's output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    pub topic: TopicName,
    pub partition: PartitionId,
}

impl Destination {
    /// The progress map's key; topic names cannot contain '/'.
    fn key(&self) -> String {
        format!("{}/{}", self.topic, self.partition.0)
    }

    fn from_key(key: &str) -> Option<Self> {
        let (topic, partition) = key.rsplit_once('/')?;
        Some(Self {
            topic: TopicName::new(topic).ok()?,
            partition: PartitionId(partition.parse().ok()?),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The next source offset to transform.
    pub next: u64,
    /// Destination key -> the destination's end offset when its tags were last accounted for.
    ends: BTreeMap<String, u64>,
}

impl Progress {
    pub fn knows(&self, destination: &Destination) -> bool {
        self.ends.contains_key(&destination.key())
    }

    pub fn set_end(&mut self, destination: &Destination, end: Offset) {
        self.ends.insert(destination.key(), end.0);
    }

    /// Every destination with the end its scan starts from.
    pub fn destinations(&self) -> Vec<(Destination, Offset)> {
        self.ends
            .iter()
            .filter_map(|(key, end)| Some((Destination::from_key(key)?, Offset(*end))))
            .collect()
    }
}

pub fn key(pipeline_id: u64, partition: PartitionId) -> String {
    format!("{}{:010}", key_prefix(pipeline_id), partition.0)
}

pub fn key_prefix(pipeline_id: u64) -> String {
    format!("{pipeline_id:016x}/")
}

pub fn tag(pipeline_id: u64, partition: PartitionId, range: SourceRange) -> Bytes {
    Bytes::from(format!(
        "{pipeline_id:016x}:{}:{}:{}",
        partition.0, range.0, range.1
    ))
}

fn parse_tag(value: &[u8]) -> Option<(u64, u32, SourceRange)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(':');
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let partition = parts.next()?.parse().ok()?;
    let from = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    (parts.next().is_none() && from <= to).then_some((id, partition, (from, to)))
}

/// Whether `offset` lies in one of `ranges`.
pub fn covers(ranges: &[SourceRange], offset: u64) -> bool {
    ranges
        .iter()
        .any(|(from, to)| (*from..=*to).contains(&offset))
}

/// The source ranges of `(pipeline_id, partition)` tagged in `destination` at or after `from`,
/// reading up to the destination's current end. A destination that no longer exists holds
/// none.
pub async fn written_ranges(
    log: &Log,
    destination: &Destination,
    from: Offset,
    pipeline_id: u64,
    partition: PartitionId,
) -> Result<Vec<SourceRange>, LogError> {
    let target = match log.partition(&destination.topic, destination.partition) {
        Ok(target) => target,
        Err(LogError::UnknownTopic { .. } | LogError::UnknownPartition { .. }) => {
            return Ok(Vec::new());
        }
        Err(error) => return Err(error),
    };
    let mut ranges = Vec::new();
    target.scan(from, |stored| {
        ranges.extend(own_range(&stored.record, pipeline_id, partition));
    })?;
    Ok(ranges)
}

/// Reads `target` from `from` on in the batches `(pipeline_id, partition)` wrote: `batch` gets
/// the records up to and including each record this partition tagged, with the tag's range.
/// Records another pipeline tagged (an earlier one of the same name) are passed over with
/// their batch; records after the last tag are not passed on.
pub fn scan_own_batches(
    target: &crate::log::Partition,
    from: Offset,
    (pipeline_id, partition): (u64, PartitionId),
    mut batch: impl FnMut(Vec<crate::log::Record>, SourceRange),
) -> Result<(), LogError> {
    let mut pending = Vec::new();
    target.scan(from, |stored| {
        let own = own_range(&stored.record, pipeline_id, partition);
        let tagged = stored.record.headers.iter().any(|h| h.key == TAG_HEADER);
        pending.push(stored.record);
        match own {
            Some(range) => batch(std::mem::take(&mut pending), range),
            None if tagged => pending.clear(),
            None => {}
        }
    })
}

/// The source range `record` is tagged with by `(pipeline_id, partition)`, if it is.
pub fn own_range(
    record: &crate::log::Record,
    pipeline_id: u64,
    partition: PartitionId,
) -> Option<SourceRange> {
    record
        .headers
        .iter()
        .filter(|h| h.key == TAG_HEADER)
        .filter_map(|h| h.value.as_deref().and_then(parse_tag))
        .find(|(id, p, _)| *id == pipeline_id && *p == partition.0)
        .map(|(_, _, range)| range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_keys_round_trip() {
        let tag = tag(0xabc, PartitionId(3), (40, 42));
        assert_eq!(parse_tag(&tag), Some((0xabc, 3, (40, 42))));
        assert_eq!(parse_tag(b"0abc:3:4"), None);
        assert_eq!(parse_tag(b"0abc:3:5:4"), None, "an empty range");
        assert_eq!(parse_tag(b"zz:1:2:3"), None);
        assert!(covers(&[(1, 3), (7, 7)], 7) && !covers(&[(1, 3), (7, 7)], 5));
        let destination = Destination {
            topic: TopicName::new("out.v1").unwrap(),
            partition: PartitionId(2),
        };
        let mut progress = Progress::default();
        progress.set_end(&destination, Offset(9));
        assert!(progress.knows(&destination));
        assert_eq!(progress.destinations(), [(destination, Offset(9))]);
        assert!(key(1, PartitionId(2)).starts_with(&key_prefix(1)));
    }
}
