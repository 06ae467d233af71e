//! Consumer groups: who consumes which partition, and committed offsets.
//!
//! A group's members are of one kind at a time: the appliance's own (`member.rs`, below: the
//! coordinator assigns and delivers) or Kafka consumers (`classic.rs`: Kafka's classic
//! protocol, the members assign among themselves and fetch for themselves). Both commit into
//! the one store of offsets in meta, so a group's offsets are the same whoever reads them.
//!
//! The coordinator keeps each group's live members in memory and its committed offsets in
//! the metadata store. Partitions of the topics a group subscribes to are divided among its
//! members by Kafka's range assignment (per topic, sorted members, contiguous ranges),
//! recomputed whenever a member joins or leaves.
//!
//! # Delivery and hand-over
//!
//! ```text
//! member stream --next()--> owned partition with nothing outstanding?
//!                              yes: read from its position, mark [position, end) outstanding
//!                              no:  wait for records, a commit or an assignment change
//! CommitOffsets(member) --> meta (flushed) --> outstanding cleared, position = committed
//!                       --> partition assigned elsewhere? hand it over now
//! member leaves         --> its partitions go to their new owners at once (what it did
//!                           not commit is delivered again: at least once for a crash)
//! ```
//!
//! A partition's next records are delivered only after the previous ones were committed, and
//! a partition changes owner only when nothing delivered is uncommitted. So members that
//! commit what they receive see every record exactly once across any rebalance.
//!
//! # Liveness
//!
//! A member's stream stays open while its process is frozen (stopped, or cut off without a
//! FIN), and records sent to it fill buffers without it reading them: delivery says nothing
//! about the member being alive. So, as Kafka's `session.timeout.ms`, a member must call
//! Heartbeat or CommitOffsets within its session timeout (asked at join, within the broker's
//! `[groups]` bounds); `expire_sessions` removes one that did not, as if it had left, so its
//! partitions move at once. Its stream ends and its next call fails with `SessionExpired`,
//! which tells it to subscribe again.

mod classic;
mod member;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::log::{Log, LogError, Offset, PartitionId, Timestamp, TopicName};
use crate::meta::{CommittedOffset, GroupId, Meta, MetaError, PartitionOffset};
use classic::ClassicGroup;

pub use classic::{
    ClassicDescription, ClassicJoin, ClassicMemberInfo, ClassicState, Joined, JoinedMember,
    MemberAssignment,
};
pub use member::{Delivery, Membership, StartPosition};

/// A topic and one of its partitions.
pub type TopicPartition = (TopicName, PartitionId);

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("member {member} is not in group {group} (it left, or its stream ended)")]
    UnknownMember { group: GroupId, member: String },
    #[error(
        "member {member} was removed from group {group}: no heartbeat or commit came within its session timeout of {timeout_ms} ms; subscribe again to rejoin"
    )]
    SessionExpired {
        group: GroupId,
        member: String,
        timeout_ms: u64,
    },
    #[error(
        "session timeout {requested_ms} ms is outside the broker's bounds {min_ms} to {max_ms} ms ([groups] min-session-timeout-ms and max-session-timeout-ms)"
    )]
    InvalidSessionTimeout {
        requested_ms: u64,
        min_ms: u64,
        max_ms: u64,
    },
    #[error("partition {topic}/{partition} is not owned by member {member} of group {group}")]
    NotOwner {
        group: GroupId,
        member: String,
        topic: TopicName,
        partition: PartitionId,
    },
    #[error(
        "group {group} has {members} active members: stop them first, or commit with a member_id"
    )]
    GroupActive { group: GroupId, members: usize },
    #[error("offset {offset} of {topic}/{partition} is past the high watermark {high_watermark}")]
    OffsetBeyondEnd {
        topic: TopicName,
        partition: PartitionId,
        offset: Offset,
        high_watermark: Offset,
    },
    #[error("a subscription needs at least one topic")]
    NoTopics,
    #[error("group {group} cannot take the member: {reason}")]
    InconsistentProtocol { group: GroupId, reason: String },
    #[error(
        "member {member} of group {group} is in generation {generation}, the group in {current}: rejoin"
    )]
    IllegalGeneration {
        group: GroupId,
        member: String,
        generation: i32,
        current: i32,
    },
    #[error("group {group} is rebalancing: rejoin")]
    RebalanceInProgress { group: GroupId },
    #[error("group {group} has {max} members, the most a group takes")]
    GroupFull { group: GroupId, max: usize },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Session timeouts: the one a member gets when it asks for none, and the bounds of what it
/// may ask for (Kafka's `group.min/max.session.timeout.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(45),
            min: Duration::from_secs(6),
            max: Duration::from_secs(30 * 60),
        }
    }
}

impl SessionLimits {
    /// The session timeout for a member asking for `requested` (the default when `None`).
    fn grant(&self, requested: Option<Duration>) -> Result<Duration, GroupError> {
        let timeout = requested.unwrap_or(self.default);
        if timeout < self.min || timeout > self.max {
            return Err(GroupError::InvalidSessionTimeout {
                requested_ms: millis(timeout),
                min_ms: millis(self.min),
                max_ms: millis(self.max),
            });
        }
        Ok(timeout)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How many removed members are remembered, so that their next call says why.
const EXPIRED_REMEMBERED: usize = 1024;

/// A member removed for its silence.
#[derive(Debug)]
struct ExpiredMember {
    group: GroupId,
    member: String,
    timeout: Duration,
}

/// A group's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    Stable,
    Rebalancing,
}

#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub member_id: String,
    pub topics: Vec<TopicName>,
    /// Partitions the member consumes now.
    pub owned: Vec<TopicPartition>,
}

#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub group: GroupId,
    pub state: GroupState,
    pub members: usize,
}

#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub group: GroupId,
    pub state: GroupState,
    pub generation: u64,
    pub members: Vec<MemberInfo>,
    pub offsets: Vec<PartitionLag>,
}

/// A partition's committed offset and how far behind the end it is.
#[derive(Debug, Clone)]
pub struct PartitionLag {
    pub topic: TopicName,
    pub partition: PartitionId,
    pub committed: Option<CommittedOffset>,
    pub high_watermark: Offset,
    pub lag: u64,
}

/// Where to move a group's offsets.
#[derive(Debug, Clone, Copy)]
pub enum ResetTarget {
    Earliest,
    Latest,
    Offset(Offset),
    Timestamp(Timestamp),
}

#[derive(Debug)]
struct MemberState {
    topics: Vec<TopicName>,
    /// Bumped whenever something the member waits on changes.
    changed: watch::Sender<u64>,
    session_timeout: Duration,
    /// The member's last Heartbeat or CommitOffsets (or its join).
    last_seen: Instant,
}

impl MemberState {
    fn deadline(&self) -> Instant {
        self.last_seen + self.session_timeout
    }
}

#[derive(Debug, Default)]
struct Lease {
    owner: Option<String>,
    target: Option<String>,
    /// End of the records delivered to the owner and not yet committed.
    outstanding: Option<Offset>,
}

#[derive(Debug, Default)]
struct GroupEntry {
    generation: u64,
    members: BTreeMap<String, MemberState>,
    leases: BTreeMap<TopicPartition, Lease>,
    /// Members of Kafka's classic protocol. A group has members of one kind at a time: the
    /// coordinator assigns partitions to its own, Kafka's assign among themselves.
    classic: ClassicGroup,
}

impl GroupEntry {
    fn is_unused(&self) -> bool {
        self.members.is_empty() && self.classic.is_empty()
    }

    fn state(&self) -> GroupState {
        if !self.classic.is_empty() {
            return match self.classic.state() {
                ClassicState::Empty => GroupState::Empty,
                ClassicState::Stable => GroupState::Stable,
                ClassicState::PreparingRebalance | ClassicState::CompletingRebalance => {
                    GroupState::Rebalancing
                }
            };
        }
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.leases.values().any(|l| l.owner != l.target) {
            GroupState::Rebalancing
        } else {
            GroupState::Stable
        }
    }

    fn notify_all(&self) {
        for member in self.members.values() {
            member.changed.send_modify(|n| *n += 1);
        }
    }

    /// Hands a partition to its target when nothing delivered to its owner is uncommitted.
    fn settle(&mut self, partition: &TopicPartition) {
        if let Some(lease) = self.leases.get_mut(partition)
            && lease.owner != lease.target
            && (lease.outstanding.is_none() || lease.owner.is_none())
        {
            lease.owner = lease.target.clone();
            lease.outstanding = None;
        }
    }
}

/// Who commits offsets, which decides what must be true of the group.
#[derive(Debug, Clone, Copy)]
enum Committer<'a> {
    /// An operator or a consumer without a group: the group must have no members.
    Admin,
    /// A member of the coordinator's own protocol: it must own the partitions.
    Member(&'a str),
    /// A Kafka consumer: a member of the group's current generation.
    Classic { member: &'a str, generation: i32 },
}

/// Handle to the coordinator; cheap to clone.
#[derive(Debug, Clone)]
pub struct Coordinator {
    log: Log,
    meta: Meta,
    groups: Arc<Mutex<BTreeMap<GroupId, GroupEntry>>>,
    next_member: Arc<std::sync::atomic::AtomicU64>,
    sessions: SessionLimits,
    /// The latest members removed for silence, oldest first, at most `EXPIRED_REMEMBERED`.
    expired: Arc<Mutex<VecDeque<ExpiredMember>>>,
}

impl Coordinator {
    pub fn new(log: Log, meta: Meta) -> Self {
        Self {
            log,
            meta,
            groups: Arc::default(),
            next_member: Arc::default(),
            sessions: SessionLimits::default(),
            expired: Arc::default(),
        }
    }

    /// The same coordinator with other session timeouts.
    pub fn with_sessions(mut self, sessions: SessionLimits) -> Self {
        self.sessions = sessions;
        self
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    fn groups(&self) -> MutexGuard<'_, BTreeMap<GroupId, GroupEntry>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a member subscribed to `topics` and rebalances the group. The member is removed
    /// when it neither heartbeats nor commits within `session_timeout` (the default if `None`).
    pub fn join(
        &self,
        group: GroupId,
        topics: Vec<TopicName>,
        start: StartPosition,
        max_bytes: usize,
        session_timeout: Option<Duration>,
    ) -> Result<Membership, GroupError> {
        if topics.is_empty() {
            return Err(GroupError::NoTopics);
        }
        let session_timeout = self.sessions.grant(session_timeout)?;
        for topic in &topics {
            self.log.topic_config(topic)?;
        }
        let number = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let member_id = format!("{group}-{}-{number}", std::process::id());
        let (changed, changes) = watch::channel(0);
        {
            let mut groups = self.groups();
            let entry = groups.entry(group.clone()).or_default();
            if !entry.classic.is_empty() {
                return Err(GroupError::InconsistentProtocol {
                    group,
                    reason: "its members are Kafka consumers (the classic group protocol)".into(),
                });
            }
            entry.members.insert(
                member_id.clone(),
                MemberState {
                    topics: topics.clone(),
                    changed,
                    session_timeout,
                    last_seen: Instant::now(),
                },
            );
            self.rebalance(entry);
        }
        tracing::info!(%group, member = %member_id, ?topics, "member joined");
        Ok(Membership {
            coordinator: self.clone(),
            group,
            member_id,
            changes,
            start,
            max_bytes,
            session_timeout,
            start_positions: Default::default(),
            announced: None,
            cursor: 0,
        })
    }

    fn leave(&self, group: &GroupId, member_id: &str) {
        if self.remove(&mut self.groups(), group, member_id) {
            tracing::info!(%group, member = %member_id, "member left");
        }
    }

    /// Removes a member, hands its partitions on at once (what it did not commit is delivered
    /// again) and rebalances; false when it was not a member.
    fn remove(
        &self,
        groups: &mut BTreeMap<GroupId, GroupEntry>,
        group: &GroupId,
        member_id: &str,
    ) -> bool {
        let Some(entry) = groups.get_mut(group) else {
            return false;
        };
        if entry.members.remove(member_id).is_none() {
            return false;
        }
        for lease in entry.leases.values_mut() {
            if lease.owner.as_deref() == Some(member_id) {
                lease.owner = None;
                lease.outstanding = None;
            }
        }
        self.rebalance(entry);
        if entry.is_unused() {
            groups.remove(group);
        }
        true
    }

    /// Removes members whose session timed out, until `shutdown`. Wakes at the earliest
    /// deadline, and at least once per minimum session timeout so that a member joining in
    /// between is not overslept.
    pub async fn expire_sessions(self, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let next = self.expire_overdue(now);
            let wake = next.map_or(now + self.sessions.min, |deadline| {
                deadline.min(now + self.sessions.min)
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Removes every member silent past its deadline at `now`; the earliest deadline left.
    fn expire_overdue(&self, now: Instant) -> Option<Instant> {
        let mut groups = self.groups();
        let overdue: Vec<(GroupId, String, Duration)> = groups
            .iter()
            .flat_map(|(group, entry)| {
                entry
                    .members
                    .iter()
                    .filter(|(_, member)| member.deadline() <= now)
                    .map(|(id, member)| (group.clone(), id.clone(), member.session_timeout))
            })
            .collect();
        for (group, member, timeout) in overdue {
            tracing::warn!(
                %group,
                %member,
                session_timeout_ms = millis(timeout),
                "member removed: no heartbeat or commit within its session timeout"
            );
            // Remembered before the removal wakes the member's stream, so that it says why.
            {
                let mut expired = self.expired.lock().unwrap_or_else(PoisonError::into_inner);
                if expired.len() == EXPIRED_REMEMBERED {
                    expired.pop_front();
                }
                expired.push_back(ExpiredMember {
                    group: group.clone(),
                    member: member.clone(),
                    timeout,
                });
            }
            self.remove(&mut groups, &group, &member);
        }
        for (group, entry) in groups.iter_mut() {
            for member in entry.classic.expire(group, now) {
                tracing::warn!(
                    %group,
                    %member,
                    "Kafka group member removed: no heartbeat within its session timeout"
                );
            }
        }
        groups.retain(|_, entry| !entry.is_unused());
        groups
            .values()
            .flat_map(|entry| {
                entry
                    .members
                    .values()
                    .map(MemberState::deadline)
                    .chain(entry.classic.next_deadline())
            })
            .min()
    }

    /// The error for a member that is not in the group: why, when it was removed for silence.
    fn unknown_member(&self, group: &GroupId, member: &str) -> GroupError {
        let expired = self.expired.lock().unwrap_or_else(PoisonError::into_inner);
        match expired
            .iter()
            .find(|e| &e.group == group && e.member == member)
        {
            Some(e) => GroupError::SessionExpired {
                group: group.clone(),
                member: member.to_owned(),
                timeout_ms: millis(e.timeout),
            },
            None => GroupError::UnknownMember {
                group: group.clone(),
                member: member.to_owned(),
            },
        }
    }

    /// Records that `member` is alive: its session timeout starts again.
    pub fn heartbeat(&self, group: &GroupId, member: &str) -> Result<(), GroupError> {
        let mut groups = self.groups();
        match groups
            .get_mut(group)
            .and_then(|entry| entry.members.get_mut(member))
        {
            Some(state) => {
                state.last_seen = Instant::now();
                Ok(())
            }
            None => Err(self.unknown_member(group, member)),
        }
    }

    /// Joins a Kafka consumer to a group, and waits until its generation is formed (every
    /// member rejoined, or the rebalance timeout passed).
    pub async fn join_classic(
        &self,
        group: &GroupId,
        mut request: ClassicJoin,
    ) -> Result<Joined, GroupError> {
        request.session_timeout = self.sessions.grant(Some(request.session_timeout))?;
        let number = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let new_id = format!("{}-{}-{number}", request.client_id, std::process::id());
        let answer = {
            let mut groups = self.groups();
            let entry = groups.entry(group.clone()).or_default();
            if !entry.members.is_empty() {
                return Err(GroupError::InconsistentProtocol {
                    group: group.clone(),
                    reason: "its members consume through the appliance's Subscribe".into(),
                });
            }
            let joined = entry.classic.join(group, request, new_id, Instant::now());
            if entry.is_unused() {
                groups.remove(group);
            }
            let (member, answer) = joined?;
            tracing::info!(%group, %member, "Kafka group member joining");
            answer
        };
        answer.await.unwrap_or_else(|_| {
            Err(GroupError::RebalanceInProgress {
                group: group.clone(),
            })
        })
    }

    /// A Kafka consumer's SyncGroup: the leader hands out the assignments; every member
    /// waits for its own.
    pub async fn sync_classic(
        &self,
        group: &GroupId,
        member: &str,
        generation: i32,
        assignments: Vec<MemberAssignment>,
    ) -> Result<Bytes, GroupError> {
        let answer = self.with_classic(group, member, |classic, now| {
            classic.sync(group, member, generation, assignments, now)
        })?;
        answer.await.unwrap_or_else(|_| {
            Err(GroupError::RebalanceInProgress {
                group: group.clone(),
            })
        })
    }

    pub fn heartbeat_classic(
        &self,
        group: &GroupId,
        member: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        self.with_classic(group, member, |classic, now| {
            classic.heartbeat(group, member, generation, now)
        })
    }

    /// Removes a Kafka consumer, named by its member id or (static membership, with an empty
    /// member id) its instance id.
    pub fn leave_classic(
        &self,
        group: &GroupId,
        member: &str,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        let left = self.with_classic(group, member, |classic, now| {
            classic.leave(group, member, instance, now)
        });
        if left.is_ok() {
            tracing::info!(%group, %member, "Kafka group member left");
        }
        left
    }

    /// The classic protocol's view of a group; None when it has no Kafka members.
    pub fn describe_classic(&self, group: &GroupId) -> Option<ClassicDescription> {
        self.groups()
            .get(group)
            .filter(|entry| !entry.classic.is_empty())
            .map(|entry| entry.classic.describe())
    }

    /// Runs `call` on the classic side of an existing group, dropping the group if it ends
    /// up without members.
    fn with_classic<T>(
        &self,
        group: &GroupId,
        member: &str,
        call: impl FnOnce(&mut ClassicGroup, Instant) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        let mut groups = self.groups();
        let entry = groups
            .get_mut(group)
            .ok_or_else(|| GroupError::UnknownMember {
                group: group.clone(),
                member: member.to_owned(),
            })?;
        let result = call(&mut entry.classic, Instant::now());
        if entry.is_unused() {
            groups.remove(group);
        }
        result
    }

    /// Range assignment per topic over the sorted members subscribed to it.
    fn rebalance(&self, entry: &mut GroupEntry) {
        let mut targets: BTreeMap<TopicPartition, String> = BTreeMap::new();
        let topics: BTreeSet<&TopicName> = entry
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .collect();
        for topic in topics {
            let members: Vec<&String> = entry
                .members
                .iter()
                .filter(|(_, m)| m.topics.contains(topic))
                .map(|(id, _)| id)
                .collect();
            let partitions = self
                .log
                .topic_config(topic)
                .map_or(0, |config| config.partitions);
            for (member, range) in members
                .iter()
                .zip(range_assignment(partitions, members.len()))
            {
                for partition in range {
                    targets.insert((topic.clone(), PartitionId(partition)), (*member).clone());
                }
            }
        }
        entry
            .leases
            .retain(|partition, lease| targets.contains_key(partition) || lease.owner.is_some());
        for lease in entry.leases.values_mut() {
            lease.target = None;
        }
        for (partition, member) in targets {
            entry.leases.entry(partition).or_default().target = Some(member);
        }
        let partitions: Vec<TopicPartition> = entry.leases.keys().cloned().collect();
        for partition in &partitions {
            entry.settle(partition);
        }
        entry
            .leases
            .retain(|_, lease| lease.owner.is_some() || lease.target.is_some());
        entry.generation += 1;
        entry.notify_all();
    }

    /// Partitions `member` owns now, and which of them may deliver (nothing outstanding).
    fn owned(
        &self,
        group: &GroupId,
        member: &str,
    ) -> Result<(u64, Vec<(TopicPartition, bool)>), GroupError> {
        let groups = self.groups();
        let entry = groups
            .get(group)
            .filter(|e| e.members.contains_key(member))
            .ok_or_else(|| self.unknown_member(group, member))?;
        let owned = entry
            .leases
            .iter()
            .filter(|(_, lease)| lease.owner.as_deref() == Some(member))
            .map(|(partition, lease)| (partition.clone(), lease.outstanding.is_none()))
            .collect();
        Ok((entry.generation, owned))
    }

    /// Reserves `partition` for a read by `member`: it must own it with nothing outstanding.
    /// While reserved the partition cannot change owner, so records read under the
    /// reservation go to exactly one member.
    fn claim(
        &self,
        group: &GroupId,
        member: &str,
        partition: &TopicPartition,
        from: Offset,
    ) -> bool {
        let mut groups = self.groups();
        match groups
            .get_mut(group)
            .and_then(|e| e.leases.get_mut(partition))
            .filter(|l| l.owner.as_deref() == Some(member) && l.outstanding.is_none())
        {
            Some(lease) => {
                lease.outstanding = Some(from);
                true
            }
            None => false,
        }
    }

    /// Ends a reservation: with records sent up to `end`, they stay outstanding until
    /// committed; with nothing sent, the partition is free again (and may move on).
    fn release(
        &self,
        group: &GroupId,
        member: &str,
        partition: &TopicPartition,
        delivered_until: Option<Offset>,
    ) {
        let mut groups = self.groups();
        let Some(entry) = groups.get_mut(group) else {
            return;
        };
        if let Some(lease) = entry
            .leases
            .get_mut(partition)
            .filter(|l| l.owner.as_deref() == Some(member))
        {
            lease.outstanding = delivered_until;
        }
        if delivered_until.is_none() {
            let before = entry.leases.get(partition).and_then(|l| l.owner.clone());
            entry.settle(partition);
            if entry.leases.get(partition).and_then(|l| l.owner.clone()) != before {
                entry.notify_all();
            }
        }
    }

    /// The committed offset of one partition, if any.
    pub fn committed(
        &self,
        group: &GroupId,
        partition: &TopicPartition,
    ) -> Result<Option<CommittedOffset>, GroupError> {
        Ok(self
            .meta
            .committed_offset(group, partition.0.as_str(), partition.1.0)?)
    }

    /// Commits offsets durably. With a member, each partition must be one it owns; without,
    /// the group must have no members.
    pub async fn commit(
        &self,
        group: &GroupId,
        member: Option<&str>,
        offsets: Vec<(TopicPartition, Offset, String)>,
    ) -> Result<(), GroupError> {
        let committer = member.map_or(Committer::Admin, Committer::Member);
        self.commit_as(group, committer, offsets).await
    }

    /// Commits offsets of a Kafka consumer durably into the store every group shares: a
    /// member of the group's current generation, or, with no member, a group without members
    /// (a consumer that assigns itself its partitions).
    pub async fn commit_classic(
        &self,
        group: &GroupId,
        member: Option<(&str, i32)>,
        offsets: Vec<(TopicPartition, Offset, String)>,
    ) -> Result<(), GroupError> {
        let committer = member.map_or(Committer::Admin, |(member, generation)| {
            Committer::Classic { member, generation }
        });
        self.commit_as(group, committer, offsets).await
    }

    async fn commit_as(
        &self,
        group: &GroupId,
        committer: Committer<'_>,
        offsets: Vec<(TopicPartition, Offset, String)>,
    ) -> Result<(), GroupError> {
        for ((topic, partition), offset, _) in &offsets {
            let high_watermark = self.log.partition(topic, *partition)?.high_watermark();
            // Kafka takes any offset a consumer commits; the appliance's own are checked.
            let checked = !matches!(committer, Committer::Classic { .. });
            if checked && *offset > high_watermark {
                return Err(GroupError::OffsetBeyondEnd {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    high_watermark,
                });
            }
        }
        if let Committer::Member(member) = committer {
            self.heartbeat(group, member)?;
        }
        self.check_may_commit(group, committer, &offsets)?;
        let now = Timestamp::now().0;
        let records: Vec<PartitionOffset> = offsets
            .iter()
            .map(|((topic, partition), offset, metadata)| PartitionOffset {
                topic: topic.to_string(),
                partition: partition.0,
                committed: CommittedOffset {
                    offset: offset.0,
                    metadata: metadata.clone(),
                    commit_timestamp_ms: now,
                },
            })
            .collect();
        self.meta.commit_offsets(group, &records).await?;
        if let Committer::Member(_) = committer {
            let mut groups = self.groups();
            if let Some(entry) = groups.get_mut(group) {
                for (partition, _, _) in &offsets {
                    if let Some(lease) = entry.leases.get_mut(partition) {
                        lease.outstanding = None;
                    }
                    entry.settle(partition);
                }
                entry.notify_all();
            }
        }
        Ok(())
    }

    fn check_may_commit(
        &self,
        group: &GroupId,
        committer: Committer<'_>,
        offsets: &[(TopicPartition, Offset, String)],
    ) -> Result<(), GroupError> {
        let mut groups = self.groups();
        let entry = groups.get_mut(group);
        match committer {
            Committer::Admin => {
                match entry.map_or(0, |e| e.members.len() + e.classic.members.len()) {
                    0 => Ok(()),
                    members => Err(GroupError::GroupActive {
                        group: group.clone(),
                        members,
                    }),
                }
            }
            Committer::Classic { member, generation } => match entry {
                Some(entry) => {
                    entry
                        .classic
                        .check_commit(group, member, generation, Instant::now())
                }
                None => Err(self.unknown_member(group, member)),
            },
            Committer::Member(member) => {
                let entry = entry
                    .filter(|e| e.members.contains_key(member))
                    .ok_or_else(|| self.unknown_member(group, member))?;
                for ((topic, partition), _, _) in offsets {
                    let owns = entry
                        .leases
                        .get(&(topic.clone(), *partition))
                        .is_some_and(|l| l.owner.as_deref() == Some(member));
                    if !owns {
                        return Err(GroupError::NotOwner {
                            group: group.clone(),
                            member: member.to_owned(),
                            topic: topic.clone(),
                            partition: *partition,
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// Moves the committed offsets of `topic`'s `partitions` (all when empty); the group must
    /// have no members.
    pub async fn reset(
        &self,
        group: &GroupId,
        topic: &TopicName,
        partitions: &[PartitionId],
        target: ResetTarget,
    ) -> Result<Vec<PartitionLag>, GroupError> {
        let count = self.log.topic_config(topic)?.partitions;
        let chosen: Vec<PartitionId> = if partitions.is_empty() {
            (0..count).map(PartitionId).collect()
        } else {
            partitions.to_vec()
        };
        let mut offsets = Vec::with_capacity(chosen.len());
        for partition in chosen {
            let handle = self.log.partition(topic, partition)?;
            let offset = match target {
                ResetTarget::Earliest => handle.log_start(),
                ResetTarget::Latest => handle.high_watermark(),
                ResetTarget::Offset(offset) => {
                    offset.max(handle.log_start()).min(handle.high_watermark())
                }
                ResetTarget::Timestamp(ts) => handle
                    .offset_for_timestamp(ts)?
                    .unwrap_or_else(|| handle.high_watermark()),
            };
            offsets.push(((topic.clone(), partition), offset, String::new()));
        }
        self.commit(group, None, offsets).await?;
        Ok(self
            .lags(group)?
            .into_iter()
            .filter(|lag| &lag.topic == topic)
            .collect())
    }

    /// Every group with members or committed offsets.
    pub fn list(&self) -> Result<Vec<GroupSummary>, GroupError> {
        let mut summaries: BTreeMap<GroupId, GroupSummary> = self
            .meta
            .groups()?
            .into_iter()
            .map(|group| {
                (
                    group.clone(),
                    GroupSummary {
                        group,
                        state: GroupState::Empty,
                        members: 0,
                    },
                )
            })
            .collect();
        for (group, entry) in self.groups().iter() {
            summaries.insert(
                group.clone(),
                GroupSummary {
                    group: group.clone(),
                    state: entry.state(),
                    members: entry.members.len(),
                },
            );
        }
        Ok(summaries.into_values().collect())
    }

    pub fn describe(&self, group: &GroupId) -> Result<GroupDescription, GroupError> {
        let offsets = self.lags(group)?;
        let groups = self.groups();
        let entry = groups.get(group);
        let members = entry.map_or_else(Vec::new, |entry| {
            let classic = entry.classic.members.iter().map(|(id, member)| MemberInfo {
                member_id: id.clone(),
                topics: member.topics.clone(),
                owned: member.assigned.clone(),
            });
            entry
                .members
                .iter()
                .map(|(id, member)| MemberInfo {
                    member_id: id.clone(),
                    topics: member.topics.clone(),
                    owned: entry
                        .leases
                        .iter()
                        .filter(|(_, l)| l.owner.as_deref() == Some(id))
                        .map(|(p, _)| p.clone())
                        .collect(),
                })
                .chain(classic)
                .collect()
        });
        let generation = |entry: &GroupEntry| {
            if entry.classic.is_empty() {
                entry.generation
            } else {
                u64::try_from(entry.classic.generation).unwrap_or_default()
            }
        };
        Ok(GroupDescription {
            group: group.clone(),
            state: entry.map_or(GroupState::Empty, GroupEntry::state),
            generation: entry.map_or(0, generation),
            members,
            offsets,
        })
    }

    /// Committed offsets and lag of every partition the group committed or is assigned.
    pub fn lags(&self, group: &GroupId) -> Result<Vec<PartitionLag>, GroupError> {
        let mut committed: BTreeMap<TopicPartition, Option<CommittedOffset>> = BTreeMap::new();
        for offset in self.meta.committed_offsets(group)? {
            if let Ok(topic) = TopicName::new(offset.topic) {
                committed.insert(
                    (topic, PartitionId(offset.partition)),
                    Some(offset.committed),
                );
            }
        }
        if let Some(entry) = self.groups().get(group) {
            let classic = entry
                .classic
                .members
                .values()
                .flat_map(|m| m.assigned.iter());
            for partition in entry.leases.keys().chain(classic) {
                committed.entry(partition.clone()).or_insert(None);
            }
        }
        Ok(committed
            .into_iter()
            .filter_map(|((topic, partition), committed)| {
                let handle = self.log.partition(&topic, partition).ok()?;
                let high_watermark = handle.high_watermark();
                let from = committed
                    .as_ref()
                    .map_or(handle.log_start(), |c| Offset(c.offset));
                Some(PartitionLag {
                    lag: high_watermark.0.saturating_sub(from.0),
                    topic,
                    partition,
                    committed,
                    high_watermark,
                })
            })
            .collect())
    }
}

/// Kafka's range assignment of one topic: `partitions` split into contiguous ranges for
/// `members` sorted members, in order, the first `partitions % members` one partition larger.
fn range_assignment(partitions: u32, members: usize) -> Vec<std::ops::Range<u32>> {
    let Ok(members_u32) = u32::try_from(members) else {
        return Vec::new();
    };
    if members_u32 == 0 {
        return Vec::new();
    }
    let per_member = partitions / members_u32;
    let extra = partitions % members_u32;
    let mut next = 0;
    (0..members_u32)
        .map(|index| {
            let start = next;
            next += per_member + u32::from(index < extra);
            start..next
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ranges_are_contiguous_and_the_first_members_take_the_remainder() {
        assert_eq!(range_assignment(7, 3), [0..3, 3..5, 5..7]);
        assert_eq!(range_assignment(2, 3), [0..1, 1..2, 2..2]);
        assert_eq!(range_assignment(0, 2), [0..0, 0..0]);
        assert!(range_assignment(5, 0).is_empty());
    }

    async fn coordinator(dir: &std::path::Path) -> Coordinator {
        let meta = Meta::open(&dir.join("meta")).unwrap();
        let config = crate::log::LogConfig {
            durability: crate::log::Durability::Os,
            ..crate::log::LogConfig::new(dir.to_path_buf())
        };
        let log = Log::open(config, meta.clone()).await.unwrap();
        let topic = TopicName::new("t").unwrap();
        let config = crate::log::TopicConfig {
            partitions: 2,
            ..Default::default()
        };
        log.create_topic(topic, config).await.unwrap();
        Coordinator::new(log, meta)
    }

    fn kafka_join(member_id: Option<String>) -> ClassicJoin {
        ClassicJoin {
            member_id,
            instance_id: None,
            client_id: "kafka".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            topics: vec![TopicName::new("t").unwrap()],
        }
    }

    /// A group's members are of one kind at a time, and a Kafka member's commit is the
    /// group's offset whoever reads it.
    #[tokio::test]
    async fn kafka_and_appliance_members_share_offsets_but_not_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let groups = coordinator(dir.path()).await;
        let group = GroupId::new("g").unwrap();
        let topic = TopicName::new("t").unwrap();
        let joined = groups.join_classic(&group, kafka_join(None)).await.unwrap();
        let refused = groups.join(
            group.clone(),
            vec![topic.clone()],
            StartPosition::Earliest,
            1024,
            None,
        );
        assert!(matches!(
            refused,
            Err(GroupError::InconsistentProtocol { .. })
        ));

        let offsets = vec![((topic.clone(), PartitionId(0)), Offset(0), String::new())];
        let stale = groups
            .commit_classic(
                &group,
                Some((&joined.member_id, joined.generation)),
                offsets.clone(),
            )
            .await;
        assert!(
            matches!(stale, Err(GroupError::RebalanceInProgress { .. })),
            "no commit before the leader's SyncGroup: {stale:?}"
        );
        groups
            .sync_classic(&group, &joined.member_id, joined.generation, Vec::new())
            .await
            .unwrap();
        let wrong = groups
            .commit_classic(
                &group,
                Some((&joined.member_id, joined.generation + 1)),
                offsets.clone(),
            )
            .await;
        assert!(matches!(wrong, Err(GroupError::IllegalGeneration { .. })));
        assert!(matches!(
            groups.commit(&group, None, offsets.clone()).await,
            Err(GroupError::GroupActive { members: 1, .. })
        ));
        groups
            .commit_classic(
                &group,
                Some((&joined.member_id, joined.generation)),
                offsets,
            )
            .await
            .unwrap();
        let committed = groups
            .committed(&group, &(topic.clone(), PartitionId(0)))
            .unwrap();
        assert_eq!(committed.map(|c| c.offset), Some(0));

        groups
            .leave_classic(&group, &joined.member_id, None)
            .unwrap();
        let membership = groups.join(
            group.clone(),
            vec![topic],
            StartPosition::Earliest,
            1024,
            None,
        );
        assert!(
            membership.is_ok(),
            "the group is free for the appliance's members once empty"
        );
        assert!(matches!(
            groups.join_classic(&group, kafka_join(None)).await,
            Err(GroupError::InconsistentProtocol { .. })
        ));
    }

    proptest! {
        /// Every partition goes to exactly one member, in order, and no member has more than
        /// one partition more than another.
        #[test]
        fn every_partition_once_and_evenly(partitions in 0u32..5000, members in 1usize..300) {
            let ranges = range_assignment(partitions, members);
            prop_assert_eq!(ranges.len(), members);
            let assigned: Vec<u32> = ranges.iter().cloned().flatten().collect();
            prop_assert_eq!(assigned, (0..partitions).collect::<Vec<_>>());
            let sizes: Vec<u32> = ranges.iter().map(|r| r.end - r.start).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(max - min <= 1);
        }
    }
}
