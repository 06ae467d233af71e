//! One member of a consumer group: what a Subscribe stream drives. Leaving the group is
//! dropping the membership.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::select_all;
use tokio::sync::watch;

use super::{Coordinator, GroupError, TopicPartition};
use crate::log::{Offset, Partition, PartitionId, StoredRecord, TopicName, decode_all};
use crate::meta::GroupId;

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
}

/// What a member receives next.
#[derive(Debug)]
pub enum Delivery {
    /// The partitions the member consumes now (sent first, and after every change).
    Assignment {
        member_id: String,
        generation: u64,
        partitions: Vec<TopicPartition>,
        /// Heartbeat or commit within this, or be removed from the group.
        session_timeout: Duration,
    },
    /// Records of one partition, in offset order.
    Records {
        topic: TopicName,
        partition: PartitionId,
        records: Vec<StoredRecord>,
    },
}

/// A member of a group, made by `Coordinator::join`; dropping it leaves the group.
#[derive(Debug)]
pub struct Membership {
    pub(super) coordinator: Coordinator,
    pub(super) group: GroupId,
    pub(super) member_id: String,
    pub(super) changes: watch::Receiver<u64>,
    pub(super) start: StartPosition,
    pub(super) max_bytes: usize,
    pub(super) session_timeout: Duration,
    /// Start positions of owned partitions that have no committed offset, fixed when the
    /// partition was first seen so that `Latest` does not move while waiting.
    pub(super) start_positions: HashMap<TopicPartition, Offset>,
    pub(super) announced: Option<Vec<TopicPartition>>,
    /// Round-robin over deliverable partitions, so a busy one does not starve the others.
    pub(super) cursor: usize,
}

impl Membership {
    /// Waits for the next assignment change or records to deliver.
    pub async fn next(&mut self) -> Result<Delivery, GroupError> {
        loop {
            self.changes.borrow_and_update();
            let (generation, owned) = self.coordinator.owned(&self.group, &self.member_id)?;
            let partitions: Vec<TopicPartition> = owned.iter().map(|(p, _)| p.clone()).collect();
            if self.announced.as_ref() != Some(&partitions) {
                self.start_positions.retain(|p, _| partitions.contains(p));
                self.announced = Some(partitions.clone());
                return Ok(Delivery::Assignment {
                    member_id: self.member_id.clone(),
                    generation,
                    partitions,
                    session_timeout: self.session_timeout,
                });
            }
            let deliverable: Vec<TopicPartition> = owned
                .into_iter()
                .filter_map(|(partition, free)| free.then_some(partition))
                .collect();
            let mut watches = Vec::with_capacity(deliverable.len());
            for i in 0..deliverable.len() {
                let index = (self.cursor + i) % deliverable.len();
                let partition = &deliverable[index];
                let handle = self
                    .coordinator
                    .log()
                    .partition(&partition.0, partition.1)?;
                let watch = handle.watch_high_watermark();
                let position = self.position(partition, &handle)?;
                if !self
                    .coordinator
                    .claim(&self.group, &self.member_id, partition, position)
                {
                    continue;
                }
                let read = read_from(&handle, position, self.max_bytes);
                let delivered_until = read
                    .as_ref()
                    .ok()
                    .and_then(|r| r.as_ref().map(|(_, end)| *end));
                self.coordinator
                    .release(&self.group, &self.member_id, partition, delivered_until);
                match read? {
                    Some((records, _)) => {
                        self.cursor = index + 1;
                        return Ok(Delivery::Records {
                            topic: partition.0.clone(),
                            partition: partition.1,
                            records,
                        });
                    }
                    None => watches.push(watch),
                }
            }
            self.wait(watches).await?;
        }
    }

    /// The committed offset, or the start position, kept within what the partition holds.
    fn position(
        &mut self,
        partition: &TopicPartition,
        handle: &Partition,
    ) -> Result<Offset, GroupError> {
        let position = match self.coordinator.committed(&self.group, partition)? {
            Some(committed) => Offset(committed.offset),
            None => *self
                .start_positions
                .entry(partition.clone())
                .or_insert_with(|| match self.start {
                    StartPosition::Earliest => handle.log_start(),
                    StartPosition::Latest => handle.high_watermark(),
                }),
        };
        Ok(position
            .max(handle.log_start())
            .min(handle.high_watermark()))
    }

    /// Until the group changes or one of the partitions gets new records.
    async fn wait(
        &mut self,
        mut watches: Vec<watch::Receiver<crate::log::Offset>>,
    ) -> Result<(), GroupError> {
        let gone = || {
            self.coordinator
                .unknown_member(&self.group, &self.member_id)
        };
        if watches.is_empty() {
            return self.changes.changed().await.map_err(|_| gone());
        }
        let records = select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            changed = self.changes.changed() => changed.map_err(|_| gone()),
            _ = records => Ok(()),
        }
    }
}

/// Records of `handle` from `position`, and the offset after them; `None` at the end.
fn read_from(
    handle: &Partition,
    position: Offset,
    max_bytes: usize,
) -> Result<Option<(Vec<StoredRecord>, Offset)>, GroupError> {
    let chunk = handle.read(position, max_bytes)?;
    if chunk.batches.is_empty() {
        return Ok(None);
    }
    let mut records = decode_all(chunk.batches).map_err(crate::log::LogError::InvalidBatch)?;
    records.retain(|r| r.offset >= position);
    Ok(Some((records, chunk.next_offset)))
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.coordinator.leave(&self.group, &self.member_id);
    }
}
