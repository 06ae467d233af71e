//! Kafka's idempotent producer: the ids InitProducerId hands out, and the sequence checks
//! that keep a retried batch from being written twice.
//!
//! Each partition keeps, per producer id, its epoch and its last five batches (Kafka's
//! `max.in.flight.requests.per.connection` bound) as first and last sequence and base offset.
//! A batch that repeats one of them is a retry: it is answered with the offset it got the
//! first time and not stored again. The state is rebuilt from the headers of the partition's
//! newest segments the first time the partition sees an idempotent batch after a start (or
//! after an append failed), so a restart does not forget what is in the log.
//!
//! [`Sequences`] decides without I/O; the handlers take its lock, decide, queue the append,
//! and record the batch before the next one is decided.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use kafka_protocol::ResponseError;

use crate::log::{BatchHeader, LogError, Offset, Partition, PartitionId, TopicName};
use crate::meta::{Meta, MetaError, Table};

/// The batches remembered per producer and partition.
const RECENT_BATCHES: usize = 5;
/// How many newest segments the state is rebuilt from: the active one and those compaction
/// leaves whole, so that the producer ids and sequences of their batches are as written.
pub const REBUILD_SEGMENTS: usize = 1 + crate::log::RECENT_SEGMENTS_LEFT_WHOLE;
/// Producer ids are reserved in blocks, each made durable before its first id is handed out,
/// so no id is handed out twice across restarts.
const ID_BLOCK: i64 = 1000;
const NEXT_ID_KEY: &str = "next";

/// Hands out producer ids.
#[derive(Debug)]
pub struct ProducerIds {
    meta: Meta,
    next: AtomicI64,
    /// The first id not yet reserved durably.
    reserved: tokio::sync::Mutex<i64>,
}

impl ProducerIds {
    pub fn open(meta: Meta) -> Result<Self, MetaError> {
        let reserved = meta
            .get::<i64>(Table::KafkaProducerIds, NEXT_ID_KEY)?
            .unwrap_or(0);
        Ok(Self {
            meta,
            next: AtomicI64::new(reserved),
            reserved: tokio::sync::Mutex::new(reserved),
        })
    }

    /// A producer id never handed out before.
    pub async fn next(&self) -> Result<i64, MetaError> {
        let mut reserved = self.reserved.lock().await;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if id >= *reserved {
            let until = id + ID_BLOCK;
            self.meta
                .put(Table::KafkaProducerIds, NEXT_ID_KEY, &until)
                .await?;
            *reserved = until;
        }
        Ok(id)
    }
}

/// What to do with one idempotent batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// A retry of a batch stored at this offset.
    Duplicate(Offset),
    Refuse(ResponseError, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: Offset,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    recent: VecDeque<Stored>,
}

/// The sequence state of one partition.
#[derive(Debug, Default)]
pub struct Sequences {
    producers: HashMap<i64, Producer>,
}

impl Sequences {
    /// The state a partition's batch headers (in offset order) leave.
    pub fn rebuilt(headers: impl IntoIterator<Item = BatchHeader>) -> Self {
        let mut sequences = Self::default();
        for header in headers {
            if header.producer_id >= 0 {
                sequences.record(&header);
            }
        }
        sequences
    }

    /// The verdict on an idempotent batch (its producer id is not negative).
    pub fn check(&self, header: &BatchHeader) -> Verdict {
        let first = header.base_sequence;
        if first < 0 {
            return Verdict::Refuse(
                ResponseError::InvalidRecord,
                "an idempotent batch has a sequence number".to_owned(),
            );
        }
        let Some(producer) = self.producers.get(&header.producer_id) else {
            // Unknown here (new, or idle since before the newest segments): its first batch.
            return Verdict::Append;
        };
        if header.producer_epoch < producer.epoch {
            return Verdict::Refuse(
                ResponseError::InvalidProducerEpoch,
                format!(
                    "producer epoch {} is older than {}: another producer with this id took over",
                    header.producer_epoch, producer.epoch
                ),
            );
        }
        if header.producer_epoch > producer.epoch {
            return match first {
                0 => Verdict::Append,
                _ => Verdict::Refuse(
                    ResponseError::OutOfOrderSequenceNumber,
                    format!("a new epoch starts at sequence 0, not {first}"),
                ),
            };
        }
        let last = last_sequence(header);
        if let Some(stored) = producer
            .recent
            .iter()
            .find(|stored| stored.first_sequence == first && stored.last_sequence == last)
        {
            return Verdict::Duplicate(stored.base_offset);
        }
        let expected = producer
            .recent
            .back()
            .map_or(0, |stored| next_sequence(stored.last_sequence, 1));
        if first == expected {
            Verdict::Append
        } else {
            Verdict::Refuse(
                ResponseError::OutOfOrderSequenceNumber,
                format!("expected sequence {expected}, got {first}"),
            )
        }
    }

    /// Records a batch that was stored (`header.base_offset` is where).
    pub fn record(&mut self, header: &BatchHeader) {
        let producer = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != producer.epoch {
            producer.epoch = header.producer_epoch;
            producer.recent.clear();
        }
        if producer.recent.len() == RECENT_BATCHES {
            producer.recent.pop_front();
        }
        producer.recent.push_back(Stored {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset: header.base_offset,
        });
    }
}

/// The sequence of a batch's last record: sequences wrap from i32::MAX to 0.
fn last_sequence(header: &BatchHeader) -> i32 {
    next_sequence(header.base_sequence, header.record_count as i64 - 1)
}

fn next_sequence(sequence: i32, by: i64) -> i32 {
    ((i64::from(sequence) + by) % (i64::from(i32::MAX) + 1)) as i32
}

/// One partition's sequence state behind its lock, with the partition it was read from (a
/// topic deleted and made again is another partition); none until rebuilt from the log.
pub type SequenceCell = Arc<tokio::sync::Mutex<Option<(Weak<Partition>, Sequences)>>>;

/// The sequence state of every partition.
#[derive(Debug, Default)]
pub struct PartitionSequences {
    partitions: Mutex<HashMap<(TopicName, PartitionId), SequenceCell>>,
}

impl PartitionSequences {
    pub fn of(&self, topic: &TopicName, partition: PartitionId) -> SequenceCell {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((topic.clone(), partition))
            .or_default()
            .clone()
    }
}

/// A log error while rebuilding, as the handlers report it.
pub fn rebuild_failed(error: &LogError) -> String {
    format!("the idempotent producers' state could not be read from the log: {error}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::log::{Compression, Timestamp};

    fn batch(producer_id: i64, epoch: i16, first: i32, count: u32, offset: u64) -> BatchHeader {
        BatchHeader {
            base_offset: Offset(offset),
            total_len: 100,
            stored_crc: 0,
            compression: Compression::None,
            last_offset_delta: count - 1,
            base_timestamp: Timestamp(0),
            max_timestamp: Timestamp(0),
            record_count: count,
            producer_id,
            producer_epoch: epoch,
            base_sequence: first,
        }
    }

    #[test]
    fn retries_are_duplicates_gaps_and_old_epochs_are_refused() {
        let mut state = Sequences::default();
        let first = batch(7, 0, 0, 10, 100);
        assert_eq!(state.check(&first), Verdict::Append);
        state.record(&first);
        assert_eq!(
            state.check(&batch(7, 0, 0, 10, 999)),
            Verdict::Duplicate(Offset(100))
        );
        assert!(matches!(
            state.check(&batch(7, 0, 11, 5, 0)),
            Verdict::Refuse(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        let second = batch(7, 0, 10, 5, 110);
        assert_eq!(state.check(&second), Verdict::Append);
        state.record(&second);
        // A new epoch starts again at 0; the old one is fenced.
        let bumped = batch(7, 1, 0, 1, 115);
        assert_eq!(state.check(&bumped), Verdict::Append);
        state.record(&bumped);
        assert!(matches!(
            state.check(&batch(7, 0, 15, 1, 0)),
            Verdict::Refuse(ResponseError::InvalidProducerEpoch, _)
        ));
        assert!(matches!(
            state.check(&batch(7, 2, 3, 1, 0)),
            Verdict::Refuse(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        // Another producer is independent.
        assert_eq!(state.check(&batch(8, 0, 0, 1, 0)), Verdict::Append);
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        let mut state = Sequences::default();
        let near_end = batch(1, 0, i32::MAX - 1, 2, 0);
        state.record(&near_end);
        assert_eq!(state.check(&batch(1, 0, 0, 1, 2)), Verdict::Append);
    }

    proptest! {
        /// Rebuilding from the stored headers gives the verdicts the live state gives.
        #[test]
        fn a_rebuilt_state_judges_as_the_live_one(
            counts in proptest::collection::vec(1u32..20, 1..30),
            retry_back in 0usize..8,
        ) {
            let mut live = Sequences::default();
            let mut stored = Vec::new();
            let (mut sequence, mut offset) = (0i32, 0u64);
            for count in &counts {
                let header = batch(3, 0, sequence, *count, offset);
                prop_assert_eq!(live.check(&header), Verdict::Append);
                live.record(&header);
                stored.push(header);
                sequence += *count as i32;
                offset += u64::from(*count);
            }
            let rebuilt = Sequences::rebuilt(stored.clone());
            let retried = stored[stored.len().saturating_sub(retry_back + 1)];
            prop_assert_eq!(rebuilt.check(&retried), live.check(&retried));
            let next = batch(3, 0, sequence, 1, offset);
            prop_assert_eq!(rebuilt.check(&next), Verdict::Append);
        }
    }
}
