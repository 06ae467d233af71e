//! One link connection after its handshake, the same on both sides: each side may send
//! topics (the edge its topics upstream, the hub its topics downstream) and receives the
//! other side's into mirrors.
//!
//! ```text
//! every second    own topics matching, never mirrors -> TopicState when new or grown
//!                 -> Watermarks (lag on the other side); edge: GroupOffsets that changed;
//!                 retention holds at what the other side acknowledged
//! TopicState  ->  mirror `<prefix><topic>` created or grown -> Positions (its next offsets)
//! Positions   ->  a sender per partition not yet sending (transfer::send_partition)
//! uni stream  ->  transfer::receive_partition -> Ack
//! Ack         ->  progress (status, holds)
//! ```
//!
//! Everything a session starts ends with it (tasks in JoinSets); progress figures live in
//! [`Mirrors`], which outlives sessions so status shows the last known state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use appliance_proto::link::v1 as wire;
use regex::Regex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::progress::{Direction, Mirrors};
use super::protocol::{Action, Control, OwnPartition, OwnTopic, SenderEnd, SenderId};
use super::transfer::{self, SendOptions};
use super::{SessionError, describe, frame};
use crate::group::{Coordinator, GroupError};
use crate::log::{
    CleanupPolicy, Log, LogError, MAX_MESSAGE_BYTES, MirrorName, MirrorOwner, Offset, Partition,
    PartitionId, TopicConfig, TopicName,
};
use crate::meta::{GroupId, Meta, Table};
use crate::security::{Authorizer, Operation, Principal, ResourceType};

/// Control frames are small; batches travel on their own streams.
pub const CONTROL_LIMIT: usize = 1 << 20;
const TICK: Duration = Duration::from_secs(1);
const CONTROL_QUEUE: usize = 1024;

/// The code a receiver stops a partition stream with when it quarantines the partition.
const QUARANTINE_CODE: u32 = 2;

/// Retention keeps what the other side has not acknowledged, up to a size per partition.
#[derive(Debug, Clone)]
pub struct Hold {
    pub holder: String,
    pub max_bytes: u64,
    /// Where acknowledged positions are kept across restarts, so holds return before the
    /// first connection does.
    pub store: Option<Meta>,
}

/// Consumer-group offsets: the edge sends what its groups committed on mirrored topics; the
/// hub commits them to the same groups on the mirrors.
#[derive(Debug, Clone)]
pub enum GroupSync {
    None,
    Send(Meta),
    Receive(Coordinator),
}

/// One side of a connection: what it sends, and how it names what it receives.
#[derive(Debug, Clone)]
pub struct Side {
    pub log: Log,
    /// This side's topics to send (matched against the whole name); mirrors never are.
    pub outgoing: Option<Regex>,
    pub outgoing_direction: Direction,
    pub send: SendOptions,
    /// Whose topics this side's mirrors hold: the edge's on a hub, the hub's on an edge.
    pub mirrors_of: MirrorOwner,
    /// The owner of the peer's mirrors of this side's topics: this side.
    pub mirrored_as: MirrorOwner,
    /// Who the mirrors this side receives come from, in words ("edge plant-7", "the hub").
    pub peer: String,
    pub hold: Option<Hold>,
    pub groups: GroupSync,
    pub mirrors: Mirrors,
    /// The peer's ACLs, when this side checks them (a hub checks its edges').
    pub access: Option<PeerAccess>,
}

/// What a peer may do on this side: its principal (`Edge:ID`) under this side's ACLs.
#[derive(Debug, Clone)]
pub struct PeerAccess {
    pub authorizer: Authorizer,
    pub principal: Principal,
}

impl PeerAccess {
    /// Whether the peer may fill the mirror `mirror` here (write on it); why not, if not.
    fn may_receive(&self, mirror: &TopicName) -> Result<(), String> {
        self.authorizer
            .authorize(
                &self.principal,
                ResourceType::Topic,
                mirror.as_str(),
                Operation::Write,
            )
            .map_err(|denial| {
                let explained = denial.explain(
                    &self.principal,
                    ResourceType::Topic,
                    mirror.as_str(),
                    Operation::Write,
                );
                format!("on the hub: {explained}")
            })
    }

    /// Whether the peer may receive this side's `topic` (read on it).
    fn may_send(&self, topic: &TopicName) -> bool {
        self.authorizer
            .authorize(
                &self.principal,
                ResourceType::Topic,
                topic.as_str(),
                Operation::Read,
            )
            .is_ok()
    }
}

impl Side {
    fn incoming_direction(&self) -> Direction {
        match self.outgoing_direction {
            Direction::Upstream => Direction::Downstream,
            Direction::Downstream => Direction::Upstream,
        }
    }

    fn mirror_name(&self, topic: &str) -> Result<TopicName, SessionError> {
        MirrorName::new(&self.mirrors_of, topic)
            .map(|mirror| mirror.topic().clone())
            .map_err(|e| SessionError::Protocol(format!("no mirror name for topic {topic:?}: {e}")))
    }
}

/// The key of a stored acknowledged position: holder, topic, partition.
pub fn ack_key(holder: &str, topic: &str, partition: u32) -> String {
    format!("{holder}\0{topic}\0{partition}")
}

/// Runs the session until the connection or the control stream ends.
pub async fn run(
    side: Side,
    connection: quinn::Connection,
    mut control_out: quinn::SendStream,
    mut control_in: quinn::RecvStream,
) -> Result<(), SessionError> {
    let (frames, mut to_send) = mpsc::channel::<wire::ControlFrame>(CONTROL_QUEUE);
    let writer = async move {
        while let Some(frame) = to_send.recv().await {
            control_out.write_all(&frame::encode(&frame)).await?;
        }
        Ok::<_, SessionError>(())
    };
    tokio::pin!(writer);
    let mut state = State {
        side: &side,
        frames: &frames,
        connection: &connection,
        control: Control::new(
            side.outgoing_direction,
            side.mirrored_as.clone(),
            side.mirrors.clone(),
        ),
        senders: JoinSet::new(),
        stop_sender: HashMap::new(),
        receivers: JoinSet::new(),
        synced_offsets: HashMap::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            written = &mut writer => return written,
            frame = frame::read::<wire::ControlFrame>(&mut control_in, CONTROL_LIMIT) => {
                match frame? {
                    Some(frame) => state.on_frame(frame).await?,
                    None => return Err(SessionError::Protocol("the peer closed the control stream".into())),
                }
            }
            stream = connection.accept_uni() => state.on_stream(stream?),
            _ = tick.tick() => state.on_tick().await?,
            Some(ended) = state.senders.join_next() => state.on_sender_end(ended),
            Some(_) = state.receivers.join_next() => {}
        }
    }
}

/// The log's handle of a partition, equal only to itself: a topic deleted and created again
/// has new handles, so the protocol can tell the new partition from the old one.
#[derive(Debug, Clone)]
struct Handle(Arc<Partition>);

impl PartialEq for Handle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

struct SenderOutcome {
    id: SenderId,
    topic: TopicName,
    partition: PartitionId,
    outcome: Result<(), SessionError>,
}

struct State<'a> {
    side: &'a Side,
    frames: &'a mpsc::Sender<wire::ControlFrame>,
    connection: &'a quinn::Connection,
    control: Control<Handle>,
    senders: JoinSet<SenderOutcome>,
    stop_sender: HashMap<SenderId, tokio::task::AbortHandle>,
    receivers: JoinSet<()>,
    /// Offsets sent per (group, topic, partition), so only changes go out.
    synced_offsets: HashMap<(String, String, u32), u64>,
}

impl State<'_> {
    async fn send(&self, kind: wire::control_frame::Kind) -> Result<(), SessionError> {
        self.frames
            .send(wire::ControlFrame { kind: Some(kind) })
            .await
            .map_err(|_| SessionError::Protocol("the control stream is closed".into()))
    }

    /// Carries out what the protocol decided.
    async fn carry_out(&mut self, actions: Vec<Action<Handle>>) -> Result<(), SessionError> {
        for action in actions {
            match action {
                Action::Send(kind) => self.send(kind).await?,
                Action::StartSender {
                    id,
                    topic,
                    partition,
                    source,
                    end,
                } => {
                    let progress = self
                        .side
                        .mirrors
                        .get(self.side.outgoing_direction, topic.as_str(), partition.0)
                        .ok_or_else(|| {
                            SessionError::Protocol(format!("no progress of {topic}/{partition}"))
                        })?;
                    let (connection, options) = (self.connection.clone(), self.side.send.clone());
                    let task = self.senders.spawn(async move {
                        let outcome = transfer::send_partition(
                            connection,
                            source.0,
                            topic.clone(),
                            end,
                            options,
                            progress,
                        )
                        .await;
                        SenderOutcome {
                            id,
                            topic,
                            partition,
                            outcome,
                        }
                    });
                    self.stop_sender.insert(id, task);
                }
                Action::StopSender(id) => {
                    if let Some(task) = self.stop_sender.remove(&id) {
                        task.abort();
                    }
                }
                Action::Hold {
                    topic,
                    partition,
                    keep_from,
                } => self.hold(&topic, partition, keep_from),
            }
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: wire::ControlFrame) -> Result<(), SessionError> {
        use wire::control_frame::Kind;
        match frame.kind {
            Some(Kind::Topic(topic)) => self.on_topic(topic).await,
            Some(Kind::Positions(positions)) => {
                let log = &self.side.log;
                let actions = self.control.positions(positions, |topic, partition| {
                    log.partition(topic, partition).ok().map(Handle)
                });
                self.carry_out(actions).await
            }
            Some(Kind::Ack(ack)) => {
                self.control.ack(&ack);
                Ok(())
            }
            Some(Kind::Watermarks(watermarks)) => {
                for mark in watermarks.partitions {
                    if let Some(progress) = self.side.mirrors.get(
                        self.side.incoming_direction(),
                        &mark.topic,
                        mark.partition,
                    ) {
                        progress.set_origin_high_watermark(mark.high_watermark);
                    }
                }
                Ok(())
            }
            Some(Kind::Offsets(offsets)) => {
                self.on_group_offsets(offsets).await;
                Ok(())
            }
            Some(Kind::Refusal(refusal)) => Err(SessionError::Refused(refusal.reason)),
            Some(Kind::Hello(_) | Kind::Welcome(_)) | None => Err(SessionError::Protocol(
                "an unexpected frame on the control stream".into(),
            )),
        }
    }

    /// The peer announces a topic: create or grow its mirror and say where it continues.
    async fn on_topic(&mut self, topic: wire::TopicState) -> Result<(), SessionError> {
        let mirror = self.side.mirror_name(&topic.topic)?;
        let allowed = match &self.side.access {
            Some(access) => access.may_receive(&mirror),
            None => Ok(()),
        };
        let ensured = match allowed {
            Ok(()) => ensure_mirror(&self.side.log, &mirror, &topic, &self.side.peer).await?,
            Err(refusal) => Err(refusal),
        };
        let reply = match ensured {
            Ok(created) => {
                let mut positions = Vec::new();
                for p in 0..topic.partitions {
                    let partition = self.side.log.partition(&mirror, PartitionId(p))?;
                    let progress = self.side.mirrors.entry(
                        self.side.incoming_direction(),
                        &topic.topic,
                        mirror.as_str(),
                        p,
                    );
                    if created {
                        progress.lift_quarantine();
                    }
                    let end = transfer::mirror_end(&partition)?;
                    progress.set_acknowledged(end.next.0);
                    progress.set_error(None);
                    positions.push(wire::PartitionPosition {
                        topic: topic.topic.clone(),
                        partition: p,
                        next_offset: end.next.0,
                        log_start: partition.log_start().0,
                        previous_batch_crc: end.previous_batch_crc,
                        quarantine: progress.quarantined().unwrap_or_default(),
                    });
                }
                wire::Positions {
                    positions,
                    ..Default::default()
                }
            }
            Err(refusal) => {
                tracing::warn!(topic = %mirror, %refusal, "refused to mirror a topic");
                wire::Positions {
                    positions: Vec::new(),
                    refused_topic: topic.topic.clone(),
                    refusal,
                }
            }
        };
        self.send(wire::control_frame::Kind::Positions(reply)).await
    }

    fn on_sender_end(&mut self, ended: Result<SenderOutcome, tokio::task::JoinError>) {
        // An aborted sender was stopped by the protocol, which forgot it already.
        let Ok(SenderOutcome {
            id,
            topic,
            partition,
            outcome,
        }) = ended
        else {
            return;
        };
        self.stop_sender.remove(&id);
        let end = match outcome {
            Err(error @ SessionError::Diverged { .. }) => SenderEnd::Diverged(describe(&error)),
            Err(error) => SenderEnd::Failed(describe(&error)),
            Ok(()) => SenderEnd::Failed("the partition stream ended".to_owned()),
        };
        self.control
            .sender_ended(id, topic.as_str(), partition.0, end);
    }

    fn on_stream(&mut self, mut stream: quinn::RecvStream) {
        let side = self.side.clone();
        let acks = self.frames.clone();
        let connection = self.connection.clone();
        self.receivers.spawn(async move {
            let header = match frame::read::<wire::PartitionHeader>(&mut stream, CONTROL_LIMIT)
                .await
            {
                Ok(Some(header)) => header,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "a partition stream without a header");
                    return;
                }
            };
            let Ok(mirror) = side.mirror_name(&header.topic) else {
                return;
            };
            let progress = side.mirrors.entry(
                side.incoming_direction(),
                &header.topic,
                mirror.as_str(),
                header.partition,
            );
            if side.log.mirror_of(&mirror).is_none() {
                progress.set_error(Some(format!("{mirror} is not a mirror here")));
                return;
            }
            let received = transfer::receive_partition(
                &mut stream,
                &side.log,
                &mirror,
                PartitionId(header.partition),
                &progress,
                &acks,
                &header.topic,
            )
            .await;
            // A stream cut by the connection's end is the session's to report.
            if let Err(SessionError::Quarantined { reason }) = &received {
                tracing::warn!(%mirror, partition = header.partition, peer = %side.peer, %reason, "a mirrored partition is quarantined: its batches are refused");
                progress.quarantine(reason.clone());
                let _ = stream.stop(QUARANTINE_CODE.into());
            } else if let Err(error) = received
                && connection.close_reason().is_none()
            {
                let error = describe(&error);
                tracing::warn!(%mirror, partition = header.partition, %error, "a mirrored partition stream ended");
                progress.set_error(Some(error));
                let _ = stream.stop(1u32.into());
            }
        });
    }

    async fn on_tick(&mut self) -> Result<(), SessionError> {
        let Some(pattern) = &self.side.outgoing else {
            return Ok(());
        };
        let log = &self.side.log;
        let access = self.side.access.as_ref();
        let topics: Vec<OwnTopic<Handle>> = log
            .list_topics()
            .into_iter()
            .filter(|info| {
                info.mirror_of.is_none()
                    && pattern.is_match(info.name.as_str())
                    && access.is_none_or(|access| access.may_send(&info.name))
            })
            .map(|info| OwnTopic {
                partitions: (0..info.config.partitions)
                    .map(|p| {
                        let partition = log.partition(&info.name, PartitionId(p)).ok()?;
                        Some(OwnPartition {
                            high_watermark: partition.high_watermark(),
                            log_start: partition.log_start(),
                            handle: Handle(partition),
                        })
                    })
                    .collect(),
                state: wire::TopicState {
                    topic: info.name.to_string(),
                    partitions: info.config.partitions,
                    max_message_bytes: info.config.max_message_bytes,
                    segment_bytes: info.config.segment_bytes,
                    schema: info.config.schema.clone().unwrap_or_default(),
                    cleanup_policy: info.config.cleanup_policy.as_str().to_owned(),
                    delete_retention_ms: Some(info.config.delete_retention_ms),
                },
            })
            .collect();
        let actions = self.control.tick(&topics);
        self.carry_out(actions).await?;
        if let GroupSync::Send(meta) = &self.side.groups {
            for offsets in self.changed_group_offsets(meta) {
                self.send(wire::control_frame::Kind::Offsets(offsets))
                    .await?;
            }
        }
        Ok(())
    }

    fn hold(&self, topic: &TopicName, partition: PartitionId, acknowledged: Offset) {
        let Some(hold) = &self.side.hold else { return };
        if let Err(error) = self.side.log.set_retention_hold(
            topic,
            partition,
            &hold.holder,
            acknowledged,
            hold.max_bytes,
        ) {
            tracing::warn!(%topic, %partition, %error, "cannot hold retention for a link");
        }
        if let Some(store) = &hold.store {
            let key = ack_key(&hold.holder, topic.as_str(), partition.0);
            if let Err(error) = store.put_unflushed(Table::LinkAcks, &key, &acknowledged.0) {
                tracing::warn!(%error, "cannot store a link's acknowledged position");
            }
        }
    }

    /// Offsets committed on announced topics since the last tick, each at most what the
    /// peer has acknowledged (a commit beyond the mirror's end would be refused there; it
    /// goes once the mirror has caught up).
    fn changed_group_offsets(&mut self, meta: &Meta) -> Vec<wire::GroupOffsets> {
        let mut changed = Vec::new();
        let Ok(groups) = meta.groups() else {
            return changed;
        };
        for group in groups {
            let Ok(committed) = meta.committed_offsets(&group) else {
                continue;
            };
            let mut offsets = Vec::new();
            for entry in committed {
                if !self.control.announced(&entry.topic) {
                    continue;
                }
                let acknowledged = self
                    .side
                    .mirrors
                    .get(self.side.outgoing_direction, &entry.topic, entry.partition)
                    .map_or(0, |p| p.acknowledged().0);
                let offset = entry.committed.offset;
                let key = (group.to_string(), entry.topic.clone(), entry.partition);
                if offset > acknowledged || self.synced_offsets.get(&key) == Some(&offset) {
                    continue;
                }
                self.synced_offsets.insert(key, offset);
                offsets.push(wire::CommittedOffset {
                    topic: entry.topic,
                    partition: entry.partition,
                    offset,
                    metadata: entry.committed.metadata,
                });
            }
            if !offsets.is_empty() {
                changed.push(wire::GroupOffsets {
                    group: group.to_string(),
                    offsets,
                });
            }
        }
        changed
    }

    async fn on_group_offsets(&self, offsets: wire::GroupOffsets) {
        let GroupSync::Receive(coordinator) = &self.side.groups else {
            return;
        };
        let Ok(group) = GroupId::new(offsets.group.as_str()) else {
            return;
        };
        let mut commits = Vec::new();
        for offset in offsets.offsets {
            let Ok(mirror) = self.side.mirror_name(&offset.topic) else {
                continue;
            };
            if self.side.log.mirror_of(&mirror).is_none() {
                continue;
            }
            commits.push((
                (mirror, PartitionId(offset.partition)),
                Offset(offset.offset),
                offset.metadata,
            ));
        }
        match coordinator.commit(&group, None, commits).await {
            Ok(()) => {}
            // The group consumes here now: its own commits win over the origin's.
            Err(GroupError::GroupActive { .. }) => {}
            Err(error) => {
                tracing::warn!(%group, %error, "cannot apply a mirrored group's offsets");
            }
        }
    }
}

/// The schema a peer declared for its topic, if it is one this side can read (a peer's
/// text is untrusted: one that does not parse is left out rather than refusing the topic).
fn declared_schema(topic: &wire::TopicState) -> Option<String> {
    (!topic.schema.is_empty() && crate::log::schema::parse_schema(&topic.schema).is_ok())
        .then(|| topic.schema.clone())
}

/// A mirror is compacted when its origin is, `compact,delete` included (a mirror has no
/// retention of its own: it follows the origin's log start); a policy this side cannot read
/// leaves it uncompacted, which keeps everything.
fn mirrored_cleanup_policy(topic: &wire::TopicState) -> CleanupPolicy {
    match topic.cleanup_policy.parse::<CleanupPolicy>() {
        Ok(policy) if policy.compacts() => CleanupPolicy::Compact,
        _ => CleanupPolicy::Delete,
    }
}

/// The origin's tombstone retention; a peer that does not send one keeps `fallback`'s.
fn mirrored_delete_retention(topic: &wire::TopicState, fallback: &TopicConfig) -> u64 {
    topic
        .delete_retention_ms
        .unwrap_or(fallback.delete_retention_ms)
}

/// The edge whose mirrors live here that a topic name begins with (`<edge>.`): a mirror of
/// such a topic would be read under the same table name as that edge's mirror.
fn claimed_owner(log: &Log, topic: &str) -> Option<MirrorOwner> {
    let (first, _) = topic.split_once('.')?;
    log.list_topics()
        .iter()
        .filter(|info| info.mirror_of.is_some())
        .filter_map(|info| MirrorName::parse(&info.name))
        .map(|mirror| mirror.owner().clone())
        .find(|owner| owner.to_string() == first)
}

/// Creates the mirror of a peer's topic (`Ok(Ok(true))`), or grows its partitions to the
/// origin's. `Ok(Err)` is a refusal to tell the peer: a topic of that name exists here and is
/// not a mirror.
async fn ensure_mirror(
    log: &Log,
    mirror: &TopicName,
    topic: &wire::TopicState,
    peer: &str,
) -> Result<Result<bool, String>, SessionError> {
    match log.topic_info(mirror) {
        Ok(info) if info.mirror_of.is_none() => Ok(Err(format!(
            "{mirror} is a topic of its own on this side (promoted, or created here), not a mirror"
        ))),
        Ok(info) => {
            // Partitions and the batch size limit only grow: a mirror keeps what it holds.
            let config = TopicConfig {
                partitions: info.config.partitions.max(topic.partitions),
                max_message_bytes: info
                    .config
                    .max_message_bytes
                    .max(topic.max_message_bytes.min(MAX_MESSAGE_BYTES)),
                schema: declared_schema(topic).or(info.config.schema.clone()),
                cleanup_policy: mirrored_cleanup_policy(topic),
                delete_retention_ms: mirrored_delete_retention(topic, &info.config),
                ..info.config.clone()
            };
            if config != info.config {
                log.update_topic_config(mirror, config).await?;
            }
            Ok(Ok(false))
        }
        Err(LogError::UnknownTopic { .. }) => {
            if let Some(claimed) = claimed_owner(log, &topic.topic) {
                return Ok(Err(format!(
                    "the topic name {:?} begins with \"{claimed}.\", which names the mirrors of an \
                     edge here: its table on this side would mean two things; rename the topic \
                     or leave it out of the link's pattern",
                    topic.topic
                )));
            }
            let defaults = log.topic_defaults();
            let config = TopicConfig {
                partitions: topic.partitions,
                // A mirror keeps what its origin keeps: the origin's log start reaches it as
                // gaps; its own retention could delete what the origin still holds.
                retention_ms: None,
                retention_bytes: None,
                max_message_bytes: topic
                    .max_message_bytes
                    .clamp(defaults.max_message_bytes, MAX_MESSAGE_BYTES),
                segment_bytes: topic.segment_bytes.clamp(1 << 20, 1 << 30),
                schema: declared_schema(topic),
                cleanup_policy: mirrored_cleanup_policy(topic),
                delete_retention_ms: mirrored_delete_retention(topic, defaults),
                ..defaults.clone()
            };
            match log
                .create_mirror_topic(mirror.clone(), config, peer.to_owned())
                .await
            {
                Ok(()) => Ok(Ok(true)),
                Err(LogError::TopicExists { .. }) => Ok(Ok(false)),
                Err(error) => Err(error.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}
