//! The link protocol as state machines without I/O: events in, actions out. The async
//! drivers (`session.rs`, `transfer.rs`, `hub.rs`, `edge.rs`) read frames and the log, feed
//! them in, and carry the actions out; everything here is tested without QUIC, certificates
//! or a disk.
//!
//! ```text
//! edge                                   hub
//! Handshake: Hello  ------------------>  Admissions::hello: Welcome (fencing the same link's
//!            Welcome | Refusal <-------      older session) | Refusal
//! Control (sending side)                 (receiving side: the driver creates mirrors)
//!   tick: Topic (new or changed) ------>  Positions: where each mirror partition continues
//!   positions -> Start a sender  <------
//!   SendCursor: Batch | Gap ----------->  gap_restart: the mirror continues at the log start
//!   ack -> acknowledged          <------  Ack (durable next offset)
//!   tick: Hold at acknowledged, Watermarks
//!   sender ended: diverged (waits for a new partition) | failed (announced again)
//! ```
//!
//! Invariants: one sender per partition at a time; a partition that does not continue its
//! mirror is not sent again until the partition here is another one (deleted and created
//! again); retention holds follow only what the peer acknowledged as durable; offsets never
//! shift: a gap moves both sides to the origin's log start.

use std::collections::{BTreeMap, HashMap, HashSet};

use appliance_proto::link::v1 as wire;
use regex::Regex;

use super::progress::{Direction, Mirrors};
use super::{EdgeId, pattern};
use crate::log::{MirrorName, MirrorOwner, Offset, PartitionId, TopicName};

/// Where a receiver's mirror of a partition stands, as its Positions frame tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorEnd {
    /// The mirror's next offset.
    pub next: Offset,
    /// The CRC-32C of the mirror's last batch, if it holds one.
    pub previous_batch_crc: Option<u32>,
}

/// The edge's side of the handshake: what the hub's first answer means.
pub fn answer_to_hello(frame: Option<wire::ControlFrame>) -> Result<(), HandshakeError> {
    match frame.and_then(|frame| frame.kind) {
        Some(wire::control_frame::Kind::Welcome(_)) => Ok(()),
        Some(wire::control_frame::Kind::Refusal(refusal)) => {
            Err(HandshakeError::Refused(refusal.reason))
        }
        _ => Err(HandshakeError::NoWelcome),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("protocol: the hub did not answer Welcome")]
    NoWelcome,
}

/// One accepted connection of an edge on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u64);

/// The hub's admissions: which session of each edge is current. A mirror has one writer, so
/// a newer session of an edge's link fences the older one; another link of the same edge is
/// refused while one is connected (two links would fence each other forever).
#[derive(Debug, Default)]
pub struct Admissions {
    edges: BTreeMap<EdgeId, Current>,
    next_session: u64,
}

#[derive(Debug)]
struct Current {
    link: String,
    session: SessionId,
    connected: bool,
}

/// The hub's answer to a Hello.
#[derive(Debug)]
pub enum Admission {
    Welcome {
        session: SessionId,
        /// The edge's older session, to end now.
        fenced: Option<SessionId>,
        /// The hub topics the edge asked for.
        downstream: Option<Regex>,
    },
    Refuse(String),
}

impl Admissions {
    /// A Hello on a connection whose certificate names `certified`.
    pub fn hello(&mut self, certified: &EdgeId, hello: &wire::Hello) -> Admission {
        if hello.edge_id != certified.as_str() {
            return Admission::Refuse(format!(
                "the certificate is edge {certified}'s, but the hello claims {:?}",
                hello.edge_id
            ));
        }
        let downstream = match pattern(&hello.downstream_pattern) {
            Ok(downstream) => downstream,
            Err(error) => return Admission::Refuse(format!("the downstream pattern: {error}")),
        };
        if let Some(current) = self.edges.get(certified)
            && current.connected
            && current.link != hello.link_name
        {
            return Admission::Refuse(format!(
                "edge {certified} is linked to this hub already by its link {:?}; a hub serves \
                 one link per edge: mirror these topics through that link (its topic pattern \
                 can name them all), or delete it first",
                current.link
            ));
        }
        self.next_session += 1;
        let session = SessionId(self.next_session);
        let previous = self.edges.insert(
            certified.clone(),
            Current {
                link: hello.link_name.clone(),
                session,
                connected: true,
            },
        );
        Admission::Welcome {
            session,
            fenced: previous
                .filter(|previous| previous.connected)
                .map(|previous| previous.session),
            downstream,
        }
    }

    /// A session ended; true when it was the edge's current one (not fenced before).
    pub fn ended(&mut self, edge: &EdgeId, session: SessionId) -> bool {
        match self.edges.get_mut(edge) {
            Some(current) if current.session == session => {
                current.connected = false;
                true
            }
            _ => false,
        }
    }

    /// The edge's current connection closed before its session noticed: the edge holds no
    /// link here any more.
    pub fn connection_lost(&mut self, edge: &EdgeId) {
        if let Some(current) = self.edges.get_mut(edge) {
            current.connected = false;
        }
    }

    /// Whether `session` is its edge's current one.
    #[cfg(test)]
    pub fn is_current(&self, edge: &EdgeId, session: SessionId) -> bool {
        self.edges
            .get(edge)
            .is_some_and(|current| current.session == session && current.connected)
    }
}

/// A sender's position in its partition, deciding what each read means for the stream.
#[derive(Debug, Clone, Copy)]
pub struct SendCursor {
    next: Offset,
}

/// What to do with one stored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchStep {
    /// The receiver has it already (a resend).
    Skip,
    /// Send it; the cursor moved past it.
    Send,
    /// `next` falls inside it: this log is not the one the mirror was made from.
    Diverged(String),
}

impl SendCursor {
    pub fn new(from: Offset) -> Self {
        Self { next: from }
    }

    pub fn next(&self) -> Offset {
        self.next
    }

    /// Retention here starts the partition at `log_start`: when that is past what the
    /// receiver has, the stream carries a Gap and goes on from there.
    pub fn deleted_before(&mut self, log_start: Offset) -> Option<wire::Gap> {
        if self.next >= log_start {
            return None;
        }
        self.next = log_start;
        Some(wire::Gap {
            log_start: log_start.0,
        })
    }

    /// A stored batch from `base` up to (not including) `next_offset`.
    pub fn batch(&mut self, base: Offset, next_offset: Offset) -> BatchStep {
        if next_offset <= self.next {
            return BatchStep::Skip;
        }
        if base < self.next {
            return BatchStep::Diverged(format!(
                "offset {} falls inside a batch here ({base} to {next_offset})",
                self.next
            ));
        }
        self.next = next_offset;
        BatchStep::Send
    }
}

/// A receiver's answer to a Gap: the offset the mirror restarts at, unless it has that much
/// already.
pub fn gap_restart(gap: &wire::Gap, mirror_next: Offset) -> Option<Offset> {
    let start = Offset(gap.log_start);
    (start > mirror_next).then_some(start)
}

/// The acknowledgement of a mirror partition that is durable up to `next`.
pub fn ack(origin_topic: &str, partition: PartitionId, next: Offset) -> wire::ControlFrame {
    wire::ControlFrame {
        kind: Some(wire::control_frame::Kind::Ack(wire::Ack {
            topic: origin_topic.to_owned(),
            partition: partition.0,
            durable_next_offset: next.0,
        })),
    }
}

/// One partition sender, as the driver knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenderId(u64);

/// A topic of this side that matches the outgoing pattern, as the log has it now. `P` is the
/// log's handle of a partition: a topic deleted and created again has new handles.
#[derive(Debug, Clone)]
pub struct OwnTopic<P> {
    pub state: wire::TopicState,
    /// Per partition (by index): its handle and offsets, `None` where it cannot be opened.
    pub partitions: Vec<Option<OwnPartition<P>>>,
}

#[derive(Debug, Clone)]
pub struct OwnPartition<P> {
    pub handle: P,
    pub high_watermark: Offset,
    pub log_start: Offset,
}

/// How a sender ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEnd {
    /// This partition does not continue its mirror; the error says why.
    Diverged(String),
    /// Anything else (a stream reset, a read error); the error says what.
    Failed(String),
}

/// What the sending side's driver does.
#[derive(Debug, PartialEq)]
pub enum Action<P> {
    Send(wire::control_frame::Kind),
    StartSender {
        id: SenderId,
        topic: TopicName,
        partition: PartitionId,
        source: P,
        end: MirrorEnd,
    },
    StopSender(SenderId),
    /// Retention of this partition keeps everything from `keep_from` (what the peer has).
    Hold {
        topic: TopicName,
        partition: PartitionId,
        keep_from: Offset,
    },
}

#[derive(Debug)]
struct Sending<P> {
    id: SenderId,
    handle: P,
}

/// The control stream of one session, the side that sends its topics: announcements,
/// senders, acknowledgements and holds. Progress for status goes to [`Mirrors`] directly.
#[derive(Debug)]
pub struct Control<P> {
    direction: Direction,
    /// The owner of the peer's mirrors of this side's topics: this side.
    mirrored_as: MirrorOwner,
    mirrors: Mirrors,
    /// Topics announced in this session, as announced (a change is announced again).
    announced: HashMap<String, wire::TopicState>,
    /// Topics the peer refused to mirror.
    refused: HashSet<String>,
    sending: HashMap<(String, u32), Sending<P>>,
    /// Partitions that stopped because they do not continue their mirror, with the handle
    /// they had: tried again only once the partition here is another.
    diverged: HashMap<(String, u32), P>,
    next_sender: u64,
}

impl<P: Clone + PartialEq> Control<P> {
    pub fn new(direction: Direction, mirrored_as: MirrorOwner, mirrors: Mirrors) -> Self {
        Self {
            direction,
            mirrored_as,
            mirrors,
            announced: HashMap::new(),
            refused: HashSet::new(),
            sending: HashMap::new(),
            diverged: HashMap::new(),
            next_sender: 0,
        }
    }

    /// What the peer calls its mirror of `topic`, for status.
    fn peer_mirror(&self, topic: &str) -> String {
        MirrorName::new(&self.mirrored_as, topic)
            .map_or_else(|_| topic.to_owned(), |m| m.to_string())
    }

    /// Whether `topic` was announced in this session (its group offsets may go out).
    pub fn announced(&self, topic: &str) -> bool {
        self.announced.contains_key(topic)
    }

    /// Every second: `topics` are this side's topics the pattern matches. Stops senders of
    /// partitions that are gone or were replaced, announces what is new or changed, holds
    /// retention at what the peer acknowledged, and tells the high watermarks.
    pub fn tick(&mut self, topics: &[OwnTopic<P>]) -> Vec<Action<P>> {
        let mut actions = self.stop_replaced(topics);
        let mut marks = Vec::new();
        for topic in topics {
            let name = &topic.state.topic;
            if self.refused.contains(name) {
                continue;
            }
            let Ok(topic_name) = TopicName::new(name.as_str()) else {
                continue;
            };
            if self.announced.get(name) != Some(&topic.state) {
                self.announced.insert(name.clone(), topic.state.clone());
                actions.push(Action::Send(wire::control_frame::Kind::Topic(
                    topic.state.clone(),
                )));
            }
            for (p, partition) in topic.partitions.iter().enumerate() {
                let Some(partition) = partition else { continue };
                let p = p as u32;
                marks.push(wire::PartitionWatermark {
                    topic: name.clone(),
                    partition: p,
                    high_watermark: partition.high_watermark.0,
                    log_start: partition.log_start.0,
                });
                if let Some(progress) = self.mirrors.get(self.direction, name, p) {
                    progress.set_origin_high_watermark(partition.high_watermark.0);
                    actions.push(Action::Hold {
                        topic: topic_name.clone(),
                        partition: PartitionId(p),
                        keep_from: progress.acknowledged(),
                    });
                }
            }
        }
        actions.push(Action::Send(wire::control_frame::Kind::Watermarks(
            wire::Watermarks { partitions: marks },
        )));
        actions
    }

    /// Senders whose partition is no longer the one here (its topic deleted, or deleted and
    /// created again) stop; the topic is announced anew, and the peer's answer says whether
    /// the new partition continues the mirror.
    fn stop_replaced(&mut self, topics: &[OwnTopic<P>]) -> Vec<Action<P>> {
        let current = |topic: &str, partition: u32| {
            topics
                .iter()
                .find(|t| t.state.topic == topic)
                .and_then(|t| t.partitions.get(partition as usize))
                .and_then(Option::as_ref)
                .map(|p| &p.handle)
        };
        let replaced: Vec<(String, u32)> = self
            .sending
            .iter()
            .filter(|((topic, partition), sending)| {
                current(topic, *partition) != Some(&sending.handle)
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut actions = Vec::new();
        for key in replaced {
            if let Some(sending) = self.sending.remove(&key) {
                actions.push(Action::StopSender(sending.id));
            }
            let (topic, partition) = key;
            tracing::warn!(%topic, partition, "a mirrored partition was deleted here while it was sent");
            if let Some(progress) = self.mirrors.get(self.direction, &topic, partition) {
                progress.set_error(Some(
                    "the topic was deleted here while it was mirrored".to_owned(),
                ));
            }
            self.announced.remove(&topic);
        }
        actions
    }

    /// The peer's Positions: a sender for each partition not being sent, unless it is
    /// quarantined there or diverged here. `current` gives the partition's handle here.
    pub fn positions(
        &mut self,
        positions: wire::Positions,
        current: impl Fn(&TopicName, PartitionId) -> Option<P>,
    ) -> Vec<Action<P>> {
        let direction = self.direction;
        if !positions.refused_topic.is_empty() {
            let topic = positions.refused_topic;
            let partitions = self.announced.get(&topic).map_or(0, |t| t.partitions);
            let mirror = self.peer_mirror(&topic);
            for p in 0..partitions {
                let progress = self.mirrors.entry(direction, &topic, &mirror, p);
                progress.set_error(Some(format!("refused by the peer: {}", positions.refusal)));
            }
            self.refused.insert(topic);
            return Vec::new();
        }
        let mut actions = Vec::new();
        for position in positions.positions {
            let key = (position.topic.clone(), position.partition);
            if self.sending.contains_key(&key) {
                continue;
            }
            let Ok(topic) = TopicName::new(position.topic.as_str()) else {
                continue;
            };
            let partition = PartitionId(position.partition);
            let Some(source) = current(&topic, partition) else {
                continue;
            };
            if self.diverged.get(&key) == Some(&source) {
                continue;
            }
            self.diverged.remove(&key);
            let mirror = self.peer_mirror(&position.topic);
            let progress =
                self.mirrors
                    .entry(direction, &position.topic, &mirror, position.partition);
            progress.set_acknowledged(position.next_offset);
            if !position.quarantine.is_empty() {
                progress.quarantine(position.quarantine);
                continue;
            }
            progress.lift_quarantine();
            progress.set_error(None);
            self.next_sender += 1;
            let id = SenderId(self.next_sender);
            self.sending.insert(
                key,
                Sending {
                    id,
                    handle: source.clone(),
                },
            );
            actions.push(Action::StartSender {
                id,
                topic,
                partition,
                source,
                end: MirrorEnd {
                    next: Offset(position.next_offset),
                    previous_batch_crc: position.previous_batch_crc,
                },
            });
        }
        actions
    }

    /// The peer acknowledged a partition durable up to an offset.
    pub fn ack(&self, ack: &wire::Ack) {
        if let Some(progress) = self.mirrors.get(self.direction, &ack.topic, ack.partition) {
            progress.set_acknowledged(ack.durable_next_offset);
        }
    }

    /// A sender ended on its own. One that was stopped, or that has a successor, is ignored.
    pub fn sender_ended(&mut self, id: SenderId, topic: &str, partition: u32, end: SenderEnd) {
        let key = (topic.to_owned(), partition);
        if self
            .sending
            .get(&key)
            .is_none_or(|sending| sending.id != id)
        {
            return;
        }
        let Some(sending) = self.sending.remove(&key) else {
            return;
        };
        let error = match end {
            SenderEnd::Diverged(error) => {
                // Sending it again would fail the same way: it waits for the partition to
                // change.
                tracing::warn!(%topic, partition, %error, "a mirrored partition stopped");
                self.diverged.insert(key, sending.handle);
                error
            }
            SenderEnd::Failed(error) => {
                // Announced again at the next tick: the peer says where the partition stands
                // and it is sent anew from there, while the others go on.
                tracing::warn!(%topic, partition, %error, "a mirrored partition stopped sending");
                self.announced.remove(topic);
                error
            }
        };
        if let Some(progress) = self.mirrors.get(self.direction, topic, partition) {
            progress.set_error(Some(error));
        }
    }
}

#[cfg(test)]
mod tests;
