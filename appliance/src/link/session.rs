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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance_proto::link::v1 as wire;
use regex::Regex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::frame;
use super::transfer::{self, Direction, MirrorEnd, MirrorProgress, SendOptions};
use crate::group::{Coordinator, GroupError};
use crate::log::{
    Log, LogError, MAX_MESSAGE_BYTES, Offset, Partition, PartitionId, TopicConfig, TopicName,
};
use crate::meta::{GroupId, Meta, Table};

/// Control frames are small; batches travel on their own streams.
pub const CONTROL_LIMIT: usize = 1 << 20;
const TICK: Duration = Duration::from_secs(1);
const CONTROL_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("writing to the peer: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading from the peer: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error(transparent)]
    Link(#[from] super::LinkError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(
        "{topic}/{partition} does not continue its mirror: {detail}; this side's log was reset \
         or replaced (the topic deleted and created again, or another appliance with the same \
         identity); delete the mirror on the other side to start it anew"
    )]
    Diverged {
        topic: TopicName,
        partition: PartitionId,
        detail: String,
    },
    #[error("quarantined: {reason}")]
    Quarantined { reason: String },
}

/// The code a receiver stops a partition stream with when it quarantines the partition.
const QUARANTINE_CODE: u32 = 2;

/// The error and its causes on one line: a QUIC read that failed says only "connection
/// lost"; why (a refused certificate, a timeout) is in its sources.
pub fn describe(error: &SessionError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let message = error.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = error.source();
    }
    text
}

/// Progress of every partition a side has mirrored in either direction, by direction, origin
/// topic and partition.
#[derive(Debug, Clone, Default)]
pub struct Mirrors(Arc<Mutex<MirrorTable>>);

type MirrorTable = BTreeMap<(Direction, String, u32), Arc<MirrorProgress>>;

impl Mirrors {
    pub fn entry(
        &self,
        direction: Direction,
        topic: &str,
        mirror: &str,
        partition: u32,
    ) -> Arc<MirrorProgress> {
        self.lock()
            .entry((direction, topic.to_owned(), partition))
            .or_insert_with(|| Arc::new(MirrorProgress::new(direction, topic, mirror, partition)))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<MirrorProgress>> {
        self.lock().values().cloned().collect()
    }

    fn get(
        &self,
        direction: Direction,
        topic: &str,
        partition: u32,
    ) -> Option<Arc<MirrorProgress>> {
        self.lock()
            .get(&(direction, topic.to_owned(), partition))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MirrorTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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
    /// What this side's mirrors are called: `<edge-id>.` on the hub, `hub.` on an edge.
    pub mirror_prefix: String,
    /// What the peer calls the mirrors of this side's topics (for status).
    pub peer_prefix: String,
    /// Who the mirrors this side receives come from, in words ("edge plant-7", "the hub").
    pub peer: String,
    pub hold: Option<Hold>,
    pub groups: GroupSync,
    pub mirrors: Mirrors,
}

impl Side {
    fn incoming_direction(&self) -> Direction {
        match self.outgoing_direction {
            Direction::Upstream => Direction::Downstream,
            Direction::Downstream => Direction::Upstream,
        }
    }

    fn mirror_name(&self, topic: &str) -> Result<TopicName, SessionError> {
        TopicName::new(format!("{}{topic}", self.mirror_prefix))
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
        announced: HashMap::new(),
        refused: HashSet::new(),
        sending: HashMap::new(),
        diverged: HashMap::new(),
        senders: JoinSet::new(),
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
            Some(sent) = state.senders.join_next_with_id() => state.on_sender_end(sent),
            Some(_) = state.receivers.join_next() => {}
        }
    }
}

type SenderOutcome = ((String, u32), Result<(), SessionError>);

/// A partition being sent: the handle it reads (a topic deleted and created again has a new
/// one) and how to stop it.
struct Sending {
    partition: Arc<Partition>,
    task: tokio::task::AbortHandle,
}

struct State<'a> {
    side: &'a Side,
    frames: &'a mpsc::Sender<wire::ControlFrame>,
    connection: &'a quinn::Connection,
    /// Own topics announced in this session, as announced (a change is announced again).
    announced: HashMap<String, wire::TopicState>,
    /// Own topics the peer refused to mirror.
    refused: HashSet<String>,
    sending: HashMap<(String, u32), Sending>,
    /// Partitions that stopped because they do not continue their mirror, with the handle
    /// they had: tried again only once the partition here is another (re-created).
    diverged: HashMap<(String, u32), Arc<Partition>>,
    senders: JoinSet<SenderOutcome>,
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

    async fn on_frame(&mut self, frame: wire::ControlFrame) -> Result<(), SessionError> {
        use wire::control_frame::Kind;
        match frame.kind {
            Some(Kind::Topic(topic)) => self.on_topic(topic).await,
            Some(Kind::Positions(positions)) => {
                self.on_positions(positions);
                Ok(())
            }
            Some(Kind::Ack(ack)) => {
                if let Some(progress) =
                    self.side
                        .mirrors
                        .get(self.side.outgoing_direction, &ack.topic, ack.partition)
                {
                    progress.set_acknowledged(ack.durable_next_offset);
                }
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
        let reply = match ensure_mirror(&self.side.log, &mirror, &topic, &self.side.peer).await? {
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
                    let end = MirrorEnd::of(&partition)?;
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

    fn on_positions(&mut self, positions: wire::Positions) {
        let direction = self.side.outgoing_direction;
        if !positions.refused_topic.is_empty() {
            let topic = positions.refused_topic;
            let partitions = self.announced.get(&topic).map_or(0, |t| t.partitions);
            let mirror = format!("{}{topic}", self.side.peer_prefix);
            for p in 0..partitions {
                let progress = self.side.mirrors.entry(direction, &topic, &mirror, p);
                progress.set_error(Some(format!("refused by the peer: {}", positions.refusal)));
            }
            self.refused.insert(topic);
            return;
        }
        for position in positions.positions {
            let key = (position.topic.clone(), position.partition);
            if self.sending.contains_key(&key) {
                continue;
            }
            let Ok(topic) = TopicName::new(position.topic.as_str()) else {
                continue;
            };
            let Ok(source) = self
                .side
                .log
                .partition(&topic, PartitionId(position.partition))
            else {
                continue;
            };
            if self
                .diverged
                .get(&key)
                .is_some_and(|stopped| Arc::ptr_eq(stopped, &source))
            {
                continue;
            }
            self.diverged.remove(&key);
            let mirror = format!("{}{}", self.side.peer_prefix, position.topic);
            let progress =
                self.side
                    .mirrors
                    .entry(direction, &position.topic, &mirror, position.partition);
            progress.set_acknowledged(position.next_offset);
            if !position.quarantine.is_empty() {
                progress.quarantine(position.quarantine);
                continue;
            }
            progress.lift_quarantine();
            progress.set_error(None);
            let (connection, options) = (self.connection.clone(), self.side.send.clone());
            let end = MirrorEnd {
                next: Offset(position.next_offset),
                previous_batch_crc: position.previous_batch_crc,
            };
            let task = self.senders.spawn({
                let (key, source) = (key.clone(), source.clone());
                async move {
                    let sent =
                        transfer::send_partition(connection, source, topic, end, options, progress)
                            .await;
                    (key, sent)
                }
            });
            self.sending.insert(
                key,
                Sending {
                    partition: source,
                    task,
                },
            );
        }
    }

    fn on_sender_end(
        &mut self,
        ended: Result<(tokio::task::Id, SenderOutcome), tokio::task::JoinError>,
    ) {
        // An aborted sender was taken out of `sending` by whoever aborted it, and one that
        // ended just before it was aborted may have a successor under its key.
        let Ok((id, ((topic, partition), outcome))) = ended else {
            return;
        };
        let key = (topic.clone(), partition);
        if self
            .sending
            .get(&key)
            .is_none_or(|sending| sending.task.id() != id)
        {
            return;
        }
        let Some(sending) = self.sending.remove(&key) else {
            return;
        };
        if let Err(error @ SessionError::Diverged { .. }) = &outcome {
            // Sending it again would fail the same way: it waits for the partition to change.
            let error = describe(error);
            tracing::warn!(%topic, partition, %error, "a mirrored partition stopped");
            if let Some(progress) =
                self.side
                    .mirrors
                    .get(self.side.outgoing_direction, &topic, partition)
            {
                progress.set_error(Some(error));
            }
            self.diverged.insert((topic, partition), sending.partition);
            return;
        }
        if let Err(error) = outcome {
            // Announced again at the next tick: the peer says where the partition stands and
            // it is sent anew from there, while the others go on.
            self.announced.remove(&topic);
            let error = describe(&error);
            tracing::warn!(%topic, partition, %error, "a mirrored partition stopped sending");
            if let Some(progress) =
                self.side
                    .mirrors
                    .get(self.side.outgoing_direction, &topic, partition)
            {
                progress.set_error(Some(error));
            }
        }
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
        let Some(pattern) = self.side.outgoing.clone() else {
            return Ok(());
        };
        self.stop_senders_of_replaced_partitions();
        let mut marks = Vec::new();
        for info in self.side.log.list_topics() {
            let name = info.name.to_string();
            if info.mirror_of.is_some() || !pattern.is_match(&name) || self.refused.contains(&name)
            {
                continue;
            }
            let partitions = info.config.partitions;
            let state = wire::TopicState {
                topic: name.clone(),
                partitions,
                max_message_bytes: info.config.max_message_bytes,
                segment_bytes: info.config.segment_bytes,
                schema: info.config.schema.clone().unwrap_or_default(),
            };
            if self.announced.get(&name) != Some(&state) {
                self.announced.insert(name.clone(), state.clone());
                self.send(wire::control_frame::Kind::Topic(state)).await?;
            }
            for p in 0..partitions {
                let Ok(partition) = self.side.log.partition(&info.name, PartitionId(p)) else {
                    continue;
                };
                let high_watermark = partition.high_watermark();
                marks.push(wire::PartitionWatermark {
                    topic: name.clone(),
                    partition: p,
                    high_watermark: high_watermark.0,
                    log_start: partition.log_start().0,
                });
                if let Some(progress) =
                    self.side
                        .mirrors
                        .get(self.side.outgoing_direction, &name, p)
                {
                    progress.set_origin_high_watermark(high_watermark.0);
                    self.hold(&info.name, PartitionId(p), progress.acknowledged());
                }
            }
        }
        self.send(wire::control_frame::Kind::Watermarks(wire::Watermarks {
            partitions: marks,
        }))
        .await?;
        if let GroupSync::Send(meta) = &self.side.groups {
            for offsets in self.changed_group_offsets(meta) {
                self.send(wire::control_frame::Kind::Offsets(offsets))
                    .await?;
            }
        }
        Ok(())
    }

    /// Stops the senders whose partition is no longer the one here (its topic was deleted, or
    /// deleted and created again): the topic is announced anew, and the peer's answer says
    /// whether the new partition continues the mirror.
    fn stop_senders_of_replaced_partitions(&mut self) {
        let replaced: Vec<(String, u32)> = self
            .sending
            .iter()
            .filter(|((topic, partition), sending)| {
                let current = TopicName::new(topic.as_str())
                    .ok()
                    .and_then(|name| self.side.log.partition(&name, PartitionId(*partition)).ok());
                !current.is_some_and(|current| Arc::ptr_eq(&current, &sending.partition))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in replaced {
            if let Some(sending) = self.sending.remove(&key) {
                sending.task.abort();
            }
            let (topic, partition) = key;
            tracing::warn!(%topic, partition, "a mirrored partition was deleted here while it was sent");
            if let Some(progress) =
                self.side
                    .mirrors
                    .get(self.side.outgoing_direction, &topic, partition)
            {
                progress.set_error(Some(
                    "the topic was deleted here while it was mirrored".to_owned(),
                ));
            }
            self.announced.remove(&topic);
        }
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
                if !self.announced.contains_key(&entry.topic) {
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

/// The `<edge>.` a topic name begins with when mirrors of that edge live here: a mirror of
/// such a topic would be read under the same table name as that edge's mirror.
fn claimed_prefix(log: &Log, topic: &str) -> Option<String> {
    let (first, _) = topic.split_once('.')?;
    let prefix = format!("{first}.");
    log.list_topics()
        .iter()
        .any(|info| info.mirror_of.is_some() && info.name.as_str().starts_with(&prefix))
        .then_some(prefix)
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
                ..info.config.clone()
            };
            if config != info.config {
                log.update_topic_config(mirror, config).await?;
            }
            Ok(Ok(false))
        }
        Err(LogError::UnknownTopic { .. }) => {
            if let Some(claimed) = claimed_prefix(log, &topic.topic) {
                return Ok(Err(format!(
                    "the topic name {:?} begins with {claimed:?}, which names the mirrors of an \
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
