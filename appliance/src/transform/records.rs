//! Records between the log and the plugins, output batches cut by size, and dead letters.

use bytes::Bytes;

use super::{ERROR_HEADERS, HOPS_HEADER, Rejection, is_tag_header};
use crate::log::{self, Header, Log, LogError, PartitionId, StoredRecord, Timestamp, TopicName};
use crate::plugin;

/// Per-record overhead of the batch format, for cutting output batches by size.
const RECORD_OVERHEAD: usize = 32;
/// Error messages in dead-letter headers are cut to this length.
const MAX_ERROR_HEADER: usize = 1024;

/// Source offsets `first..=last` of one source batch.
pub type SourceRange = (u64, u64);

/// Creates `topic` with the default settings unless it exists.
pub async fn ensure_topic(log: &Log, topic: &TopicName) -> Result<(), LogError> {
    if log.topic_config(topic).is_ok() {
        return Ok(());
    }
    match log
        .create_topic(topic.clone(), log.topic_defaults().clone())
        .await
    {
        Ok(()) | Err(LogError::TopicExists { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

pub fn record_size<'a>(
    key: Option<&Bytes>,
    value: Option<&Bytes>,
    headers: impl Iterator<Item = (&'a String, Option<&'a Bytes>)>,
) -> usize {
    RECORD_OVERHEAD
        + key.map_or(0, Bytes::len)
        + value.map_or(0, Bytes::len)
        + headers
            .map(|(k, v)| k.len() + v.map_or(0, Bytes::len))
            .sum::<usize>()
}

/// Splits a destination's records into batches of about `budget` bytes, in order, never
/// between two records of the same source offset. Each batch comes with the source range it
/// completes for this destination: from where the previous batch's range ended (the first:
/// from the start of the source batch) to its last record's offset (the last: to the end of
/// the source batch, whose remaining records have no output here).
pub fn cut_by_size(
    entries: Vec<(i64, log::Record)>,
    budget: usize,
    source: SourceRange,
) -> Vec<(SourceRange, Vec<(i64, log::Record)>)> {
    let mut batches: Vec<Vec<(i64, log::Record)>> = Vec::new();
    let mut current: Vec<(i64, log::Record)> = Vec::new();
    let mut size = 0;
    for entry in entries {
        let record = &entry.1;
        let record_size = record_size(
            record.key.as_ref(),
            record.value.as_ref(),
            record.headers.iter().map(|h| (&h.key, h.value.as_ref())),
        );
        let new_offset = current.last().is_some_and(|(last, _)| *last != entry.0);
        if new_offset && size + record_size > budget {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += record_size;
        current.push(entry);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    let count = batches.len();
    let mut from = source.0;
    batches
        .into_iter()
        .enumerate()
        .map(|(index, batch)| {
            let last = batch.last().map_or(source.1, |(offset, _)| *offset as u64);
            let to = if index + 1 == count { source.1 } else { last };
            let range = (from, to);
            from = to + 1;
            (range, batch)
        })
        .collect()
}

pub fn to_plugin_record(stored: &StoredRecord) -> plugin::Record {
    let record = &stored.record;
    plugin::Record {
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record
            .headers
            .iter()
            .filter(|h| !is_tag_header(&h.key))
            .map(|h| plugin::Header {
                key: h.key.clone(),
                value: h.value.clone().unwrap_or_default(),
            })
            .collect(),
        timestamp: record.timestamp.0,
        offset: stored.offset.0 as i64,
        topic: None,
    }
}

/// The hop count a record carries ([`HOPS_HEADER`]), if it came out of a pipeline.
pub fn hops(record: &log::Record) -> Option<u32> {
    let header = record.headers.iter().find(|h| h.key == HOPS_HEADER)?;
    std::str::from_utf8(header.value.as_deref()?)
        .ok()?
        .parse()
        .ok()
}

pub fn to_log_record(record: plugin::Record) -> log::Record {
    log::Record {
        key: record.key,
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .filter(|h| !is_tag_header(&h.key))
            .map(|h| Header {
                key: h.key,
                value: Some(h.value),
            })
            .collect(),
        timestamp: Timestamp(record.timestamp),
    }
}

/// The original record with headers that say what went wrong where: `owner` is the pipeline
/// or connector, `source` the topic and partition the record was read from (for a source
/// connector, its topic and the partition it writes) and `offset` its offset there (for a
/// source connector, its index in the poll).
pub fn dead_letter(
    owner: &str,
    source: (&TopicName, PartitionId),
    offset: i64,
    original: &log::Record,
    rejection: &Rejection,
) -> log::Record {
    let mut letter = original.clone();
    letter.headers.retain(|h| !is_tag_header(&h.key));
    let mut message = rejection.message.clone();
    if message.len() > MAX_ERROR_HEADER {
        let mut end = MAX_ERROR_HEADER;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    let values = [
        owner.to_owned(),
        rejection.plugin.clone(),
        message,
        source.0.to_string(),
        source.1.0.to_string(),
        offset.to_string(),
    ];
    for (key, value) in ERROR_HEADERS.iter().zip(values) {
        letter.headers.push(Header {
            key: (*key).to_owned(),
            value: Some(Bytes::from(value)),
        });
    }
    letter
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the output looks like, the batches keep every record in order, never split
        /// one source record's output, and their ranges tile the source batch exactly, so a
        /// lost batch is always a hole in the ranges a restart finds.
        #[test]
        fn batches_tile_the_source_range(
            outputs in proptest::collection::vec((0u64..4, 1usize..300), 0..60),
            budget in 1usize..2000,
            start in 0u64..1000,
            tail in 0u64..5,
        ) {
            let mut offset = start;
            let mut entries = Vec::new();
            for (step, size) in &outputs {
                offset += step;
                entries.push(entry(offset as i64, *size));
            }
            let source = (start, offset + tail);
            let expected: Vec<i64> = entries.iter().map(|(o, _)| *o).collect();
            let batches = cut_by_size(entries, budget, source);
            let offsets: Vec<i64> = batches
                .iter()
                .flat_map(|(_, batch)| batch.iter().map(|(o, _)| *o))
                .collect();
            prop_assert_eq!(offsets, expected);
            let mut next = source.0;
            for (range, batch) in &batches {
                prop_assert_eq!(range.0, next);
                prop_assert!(range.0 <= range.1);
                for (o, _) in batch {
                    prop_assert!((range.0..=range.1).contains(&(*o as u64)));
                }
                next = range.1 + 1;
            }
            if !batches.is_empty() {
                prop_assert_eq!(next, source.1 + 1);
            }
        }
    }

    fn entry(offset: i64, bytes: usize) -> (i64, log::Record) {
        (
            offset,
            log::Record {
                key: None,
                value: Some(Bytes::from(vec![b'x'; bytes])),
                headers: Vec::new(),
                timestamp: Timestamp(0),
            },
        )
    }

    #[test]
    fn batches_never_split_one_source_record_and_their_ranges_tile_the_source_batch() {
        let entries = vec![entry(10, 60), entry(10, 60), entry(12, 60), entry(15, 60)];
        let batches = cut_by_size(entries, 100, (10, 20));
        let shape: Vec<(SourceRange, Vec<i64>)> = batches
            .iter()
            .map(|(range, batch)| (*range, batch.iter().map(|(o, _)| *o).collect()))
            .collect();
        assert_eq!(
            shape,
            [
                ((10, 10), vec![10, 10]),
                ((11, 12), vec![12]),
                ((13, 20), vec![15]),
            ]
        );
    }
}
