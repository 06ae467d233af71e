//! Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup): the members
//! assign partitions among themselves, the coordinator gathers them into generations.
//!
//! ```text
//! Empty --join--> PreparingRebalance --every member rejoined, or the rebalance timeout-->
//!   CompletingRebalance (the leader got every member's metadata)
//!   --the leader's SyncGroup (assignments)--> Stable
//! Stable | CompletingRebalance --a member joins, leaves or goes silent--> PreparingRebalance
//! ```
//!
//! A state machine without I/O: every call is given the time, and the JoinGroup and SyncGroup
//! calls that must wait are answered through the oneshot senders kept with their member, so
//! the caller awaits the receiver outside the coordinator's lock. Offsets are not kept here:
//! a classic member commits into the store every group shares (`Coordinator::commit_classic`),
//! so what it commits is what `appliance group describe` and gRPC members see.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{GroupError, TopicPartition};
use crate::log::TopicName;
use crate::meta::GroupId;

/// The most members a group takes (Kafka's `group.max.size`): a client joining again and
/// again without its member id must not grow the coordinator without bound.
const MAX_MEMBERS: usize = 1000;

/// Where a classic group is in its rebalance, named as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassicState {
    #[default]
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl ClassicState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// A JoinGroup, as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct ClassicJoin {
    /// None for a member joining for the first time.
    pub member_id: Option<String>,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// The assignment protocols the member speaks, preferred first, with its metadata for each.
    pub protocols: Vec<(String, Bytes)>,
    /// The topics it subscribes to, when its metadata says (shown by describe).
    pub topics: Vec<TopicName>,
}

/// What a JoinGroup is answered with once its generation is formed.
#[derive(Debug, Clone)]
pub struct Joined {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol; for the leader only.
    pub members: Vec<JoinedMember>,
}

#[derive(Debug, Clone)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The leader's assignment for one member.
#[derive(Debug, Clone)]
pub struct MemberAssignment {
    pub member_id: String,
    /// As the client encoded it; handed back unchanged.
    pub assignment: Bytes,
    /// The partitions it names, when the protocol is Kafka's consumer protocol.
    pub partitions: Vec<TopicPartition>,
}

pub type JoinAnswer = oneshot::Receiver<Result<Joined, GroupError>>;
pub type SyncAnswer = oneshot::Receiver<Result<Bytes, GroupError>>;

/// One classic member, as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct ClassicMemberInfo {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct ClassicDescription {
    pub state: ClassicState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<ClassicMemberInfo>,
}

#[derive(Debug)]
pub(super) struct ClassicMember {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    pub(super) topics: Vec<TopicName>,
    assignment: Bytes,
    pub(super) assigned: Vec<TopicPartition>,
    last_seen: Instant,
    joining: Option<oneshot::Sender<Result<Joined, GroupError>>>,
    syncing: Option<oneshot::Sender<Result<Bytes, GroupError>>>,
}

impl ClassicMember {
    /// When it is removed for silence; never while its JoinGroup or SyncGroup waits.
    fn deadline(&self) -> Option<Instant> {
        (self.joining.is_none() && self.syncing.is_none())
            .then(|| self.last_seen + self.session_timeout)
    }

    fn speaks(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }
}

#[derive(Debug, Default)]
pub(super) struct ClassicGroup {
    state: ClassicState,
    pub(super) generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    pub(super) members: BTreeMap<String, ClassicMember>,
    /// When a rebalance stops waiting for members that did not rejoin.
    rebalance_deadline: Option<Instant>,
}

impl ClassicGroup {
    pub(super) fn state(&self) -> ClassicState {
        self.state
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds or rejoins a member (a new one gets `new_id`) and starts a rebalance; the
    /// receiver is answered when the generation is formed.
    pub(super) fn join(
        &mut self,
        group: &GroupId,
        request: ClassicJoin,
        new_id: String,
        now: Instant,
    ) -> Result<(String, JoinAnswer), GroupError> {
        if request.protocols.is_empty() {
            return Err(GroupError::InconsistentProtocol {
                group: group.clone(),
                reason: "the member names no assignment protocol".into(),
            });
        }
        let member_id = match request.member_id {
            Some(id) if !self.members.contains_key(&id) => {
                return Err(GroupError::UnknownMember {
                    group: group.clone(),
                    member: id,
                });
            }
            Some(id) => id,
            None if self.members.len() >= MAX_MEMBERS => {
                return Err(GroupError::GroupFull {
                    group: group.clone(),
                    max: MAX_MEMBERS,
                });
            }
            None => {
                // A static member restarting replaces its old self, whose calls are fenced.
                if let Some(instance) = &request.instance_id {
                    self.members
                        .retain(|_, m| m.instance_id.as_ref() != Some(instance));
                }
                new_id
            }
        };
        let others = || self.members.iter().filter(|(id, _)| **id != member_id);
        if others().next().is_some() {
            if request.protocol_type != self.protocol_type {
                return Err(GroupError::InconsistentProtocol {
                    group: group.clone(),
                    reason: format!(
                        "its members use protocol type {:?}, the member asks for {:?}",
                        self.protocol_type, request.protocol_type
                    ),
                });
            }
            let shared = request
                .protocols
                .iter()
                .any(|(name, _)| others().all(|(_, m)| m.speaks(name)));
            if !shared {
                return Err(GroupError::InconsistentProtocol {
                    group: group.clone(),
                    reason: "the member shares no assignment protocol with the others".into(),
                });
            }
        }
        self.protocol_type = request.protocol_type;
        let (sender, receiver) = oneshot::channel();
        let member = ClassicMember {
            instance_id: request.instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            protocols: request.protocols,
            topics: request.topics,
            assignment: Bytes::new(),
            assigned: Vec::new(),
            last_seen: now,
            joining: Some(sender),
            syncing: None,
        };
        self.members.insert(member_id.clone(), member);
        self.prepare_rebalance(group, now);
        self.try_complete_join(now);
        Ok((member_id, receiver))
    }

    /// Hands the leader's assignments out, or answers with the member's own.
    pub(super) fn sync(
        &mut self,
        group: &GroupId,
        member_id: &str,
        generation: i32,
        assignments: Vec<MemberAssignment>,
        now: Instant,
    ) -> Result<SyncAnswer, GroupError> {
        self.check_generation(group, member_id, generation)?;
        let (sender, receiver) = oneshot::channel();
        match self.state {
            ClassicState::Empty | ClassicState::PreparingRebalance => {
                return Err(GroupError::RebalanceInProgress {
                    group: group.clone(),
                });
            }
            ClassicState::Stable => {
                let member = self.member(group, member_id)?;
                member.last_seen = now;
                let _ = sender.send(Ok(member.assignment.clone()));
            }
            ClassicState::CompletingRebalance => {
                self.member(group, member_id)?.syncing = Some(sender);
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: BTreeMap<String, MemberAssignment> = assignments
                        .into_iter()
                        .map(|a| (a.member_id.clone(), a))
                        .collect();
                    for (id, member) in &mut self.members {
                        let assignment = given.remove(id);
                        member.assignment = assignment
                            .as_ref()
                            .map_or_else(Bytes::new, |a| a.assignment.clone());
                        member.assigned = assignment.map(|a| a.partitions).unwrap_or_default();
                        member.last_seen = now;
                        if let Some(waiting) = member.syncing.take() {
                            let _ = waiting.send(Ok(member.assignment.clone()));
                        }
                    }
                    self.state = ClassicState::Stable;
                }
            }
        }
        Ok(receiver)
    }

    /// A member's heartbeat: its session starts again; it learns of a rebalance here.
    pub(super) fn heartbeat(
        &mut self,
        group: &GroupId,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        self.seen(group, member_id, generation, now, |state| {
            state != ClassicState::PreparingRebalance
        })
    }

    /// Whether a member may commit now, as Kafka decides it: while stable, and while a
    /// rebalance gathers the members (consumers commit what they processed before they
    /// rejoin), not while the leader assigns. Its session starts again.
    pub(super) fn check_commit(
        &mut self,
        group: &GroupId,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        self.seen(group, member_id, generation, now, |state| {
            matches!(
                state,
                ClassicState::Stable | ClassicState::PreparingRebalance
            )
        })
    }

    /// Starts a member's session again, then checks that it is of the current generation and
    /// that the group is in a state `allowed` accepts (else it is rebalancing).
    fn seen(
        &mut self,
        group: &GroupId,
        member_id: &str,
        generation: i32,
        now: Instant,
        allowed: fn(ClassicState) -> bool,
    ) -> Result<(), GroupError> {
        self.member(group, member_id)?.last_seen = now;
        self.check_generation(group, member_id, generation)?;
        if allowed(self.state) {
            Ok(())
        } else {
            Err(GroupError::RebalanceInProgress {
                group: group.clone(),
            })
        }
    }

    /// Removes a member, named by its id or (a static member) by its instance id; the others
    /// rebalance without it.
    pub(super) fn leave(
        &mut self,
        group: &GroupId,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        let by_instance = instance_id
            .filter(|_| member_id.is_empty())
            .and_then(|instance| {
                self.members
                    .iter()
                    .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
                    .map(|(id, _)| id.clone())
            });
        let member_id = by_instance.as_deref().unwrap_or(member_id);
        if self.members.remove(member_id).is_none() {
            return Err(GroupError::UnknownMember {
                group: group.clone(),
                member: member_id.to_owned(),
            });
        }
        self.prepare_rebalance(group, now);
        self.try_complete_join(now);
        Ok(())
    }

    /// Removes members silent past their session timeout and ends a rebalance whose time is
    /// up; the members removed.
    pub(super) fn expire(&mut self, group: &GroupId, now: Instant) -> Vec<String> {
        let silent: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.deadline().is_some_and(|deadline| deadline <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &silent {
            self.members.remove(id);
        }
        if !silent.is_empty() {
            self.prepare_rebalance(group, now);
        }
        if self
            .rebalance_deadline
            .is_some_and(|deadline| deadline <= now)
        {
            self.complete_join(now);
        } else {
            self.try_complete_join(now);
        }
        silent
    }

    /// The next time `expire` has something to do.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.members
            .values()
            .filter_map(ClassicMember::deadline)
            .chain(self.rebalance_deadline)
            .min()
    }

    pub(super) fn describe(&self) -> ClassicDescription {
        ClassicDescription {
            state: self.state,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            members: self
                .members
                .iter()
                .map(|(id, m)| ClassicMemberInfo {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&self.protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    fn member(
        &mut self,
        group: &GroupId,
        member_id: &str,
    ) -> Result<&mut ClassicMember, GroupError> {
        self.members
            .get_mut(member_id)
            .ok_or_else(|| GroupError::UnknownMember {
                group: group.clone(),
                member: member_id.to_owned(),
            })
    }

    fn check_generation(
        &mut self,
        group: &GroupId,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        self.member(group, member_id)?;
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration {
                group: group.clone(),
                member: member_id.to_owned(),
                generation,
                current: self.generation,
            });
        }
        Ok(())
    }

    /// Starts a rebalance: members learn of it from their next heartbeat and rejoin; those
    /// waiting for their assignment are told to rejoin now.
    fn prepare_rebalance(&mut self, group: &GroupId, now: Instant) {
        if self.state == ClassicState::PreparingRebalance {
            return;
        }
        for member in self.members.values_mut() {
            if let Some(waiting) = member.syncing.take() {
                let _ = waiting.send(Err(GroupError::RebalanceInProgress {
                    group: group.clone(),
                }));
            }
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.state = ClassicState::PreparingRebalance;
        self.rebalance_deadline = Some(now + longest);
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state == ClassicState::PreparingRebalance
            && self.members.values().all(|m| m.joining.is_some())
        {
            self.complete_join(now);
        }
    }

    /// Forms the next generation of the members that rejoined (the others are removed): the
    /// protocol every one of them speaks that most prefer, a leader, and their answers.
    fn complete_join(&mut self, now: Instant) {
        self.members.retain(|_, m| m.joining.is_some());
        self.rebalance_deadline = None;
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.state = ClassicState::Empty;
            self.leader = None;
            self.protocol.clear();
            return;
        }
        self.protocol = self.chosen_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|leader| self.members.contains_key(leader))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let everyone: Vec<JoinedMember> = self
            .members
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata(&self.protocol),
            })
            .collect();
        for (id, member) in &mut self.members {
            member.last_seen = now;
            member.assignment = Bytes::new();
            member.assigned.clear();
            if let Some(waiting) = member.joining.take() {
                let _ = waiting.send(Ok(Joined {
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                }));
            }
        }
        self.state = ClassicState::CompletingRebalance;
    }

    /// Of the protocols every member speaks, the one most members prefer (Kafka's vote); ties
    /// go to the one named first.
    fn chosen_protocol(&self) -> String {
        let Some(first) = self.members.values().next() else {
            return String::new();
        };
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| self.members.values().all(|m| m.speaks(name)))
            .collect();
        let votes = |candidate: &String| {
            self.members
                .values()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .map(|(name, _)| name)
                        .find(|name| candidates.contains(name))
                        == Some(candidate)
                })
                .count()
        };
        candidates
            .iter()
            .rev()
            .max_by_key(|candidate| votes(candidate))
            .map(|name| (*name).clone())
            .unwrap_or_default()
    }
}

impl ClassicMember {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupId {
        GroupId::new("g").unwrap()
    }

    fn request(member_id: Option<&str>, protocols: &[&str]) -> ClassicJoin {
        ClassicJoin {
            member_id: member_id.map(str::to_owned),
            instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| ((*p).to_owned(), Bytes::from(p.to_string())))
                .collect(),
            topics: Vec::new(),
        }
    }

    fn joined(mut answer: JoinAnswer) -> Joined {
        answer.try_recv().expect("answered").expect("joined")
    }

    #[test]
    fn a_second_member_rebalances_the_first_which_rejoins_into_one_generation() {
        let now = Instant::now();
        let mut g = ClassicGroup::default();
        let (a, answer) = g
            .join(&group(), request(None, &["range"]), "a".into(), now)
            .unwrap();
        let first = joined(answer);
        assert_eq!((first.generation, first.leader.as_str()), (1, "a"));
        assert_eq!(first.members.len(), 1);
        let assignment = MemberAssignment {
            member_id: a.clone(),
            assignment: Bytes::from_static(b"all"),
            partitions: Vec::new(),
        };
        let mut synced = g.sync(&group(), &a, 1, vec![assignment], now).unwrap();
        assert_eq!(
            synced.try_recv().unwrap().unwrap(),
            Bytes::from_static(b"all")
        );
        assert_eq!(g.state(), ClassicState::Stable);

        let (b, mut waiting) = g
            .join(&group(), request(None, &["range"]), "b".into(), now)
            .unwrap();
        assert!(waiting.try_recv().is_err(), "b waits for a to rejoin");
        assert!(matches!(
            g.heartbeat(&group(), &a, 1, now),
            Err(GroupError::RebalanceInProgress { .. })
        ));
        let (_, answer) = g
            .join(&group(), request(Some(&a), &["range"]), String::new(), now)
            .unwrap();
        let leader = joined(answer);
        let follower = joined(waiting);
        assert_eq!(leader.generation, 2);
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        assert_eq!(follower.member_id, b);

        let mut follower_sync = g.sync(&group(), &b, 2, Vec::new(), now).unwrap();
        assert!(follower_sync.try_recv().is_err(), "waits for the leader");
        let assignments = vec![MemberAssignment {
            member_id: b.clone(),
            assignment: Bytes::from_static(b"half"),
            partitions: Vec::new(),
        }];
        g.sync(&group(), &a, 2, assignments, now).unwrap();
        assert_eq!(
            follower_sync.try_recv().unwrap().unwrap(),
            Bytes::from_static(b"half")
        );
        assert!(matches!(
            g.heartbeat(&group(), &a, 1, now),
            Err(GroupError::IllegalGeneration { current: 2, .. })
        ));
    }

    #[test]
    fn a_silent_member_is_removed_and_a_rebalance_stops_waiting_for_it() {
        let now = Instant::now();
        let mut g = ClassicGroup::default();
        let (a, answer) = g
            .join(&group(), request(None, &["range"]), "a".into(), now)
            .unwrap();
        joined(answer);
        g.sync(&group(), &a, 1, Vec::new(), now).unwrap();
        let (_, waiting) = g
            .join(&group(), request(None, &["range"]), "b".into(), now)
            .unwrap();
        assert_eq!(g.next_deadline(), Some(now + Duration::from_secs(10)));
        assert_eq!(g.expire(&group(), now + Duration::from_secs(10)), ["a"]);
        let b = joined(waiting);
        assert_eq!((b.generation, b.leader.as_str()), (2, "b"));
        g.leave(&group(), "b", None, now).unwrap();
        assert_eq!(g.state(), ClassicState::Empty);
        assert!(g.is_empty());
    }

    #[test]
    fn a_static_member_restarting_replaces_its_old_self() {
        let now = Instant::now();
        let mut g = ClassicGroup::default();
        let mut first = request(None, &["range"]);
        first.instance_id = Some("gateway-1".into());
        let (old, answer) = g.join(&group(), first.clone(), "old".into(), now).unwrap();
        joined(answer);
        let (new, answer) = g.join(&group(), first, "new".into(), now).unwrap();
        assert_eq!((old.as_str(), new.as_str()), ("old", "new"));
        let rejoined = joined(answer);
        assert_eq!(
            rejoined.members.len(),
            1,
            "the old member is gone, not waited for"
        );
        g.leave(&group(), "", Some("gateway-1"), now).unwrap();
        assert!(g.is_empty());
    }

    #[test]
    fn a_group_takes_at_most_max_members() {
        let now = Instant::now();
        let mut g = ClassicGroup::default();
        for n in 0..MAX_MEMBERS {
            g.join(&group(), request(None, &["range"]), format!("m{n}"), now)
                .unwrap();
        }
        assert!(matches!(
            g.join(&group(), request(None, &["range"]), "one-more".into(), now),
            Err(GroupError::GroupFull { .. })
        ));
        assert!(
            g.join(
                &group(),
                request(Some("m0"), &["range"]),
                String::new(),
                now
            )
            .is_ok(),
            "a member rejoins"
        );
    }

    #[test]
    fn members_must_share_a_protocol_and_the_preferred_one_wins() {
        let now = Instant::now();
        let mut g = ClassicGroup::default();
        let (_, first) = g
            .join(
                &group(),
                request(None, &["cooperative-sticky", "range"]),
                "a".into(),
                now,
            )
            .unwrap();
        assert_eq!(joined(first).protocol, "cooperative-sticky");
        assert!(matches!(
            g.join(&group(), request(None, &["roundrobin"]), "b".into(), now),
            Err(GroupError::InconsistentProtocol { .. })
        ));
        assert!(matches!(
            g.join(
                &group(),
                request(Some("nobody"), &["range"]),
                String::new(),
                now
            ),
            Err(GroupError::UnknownMember { .. })
        ));
        let (_, _waiting) = g
            .join(&group(), request(None, &["range"]), "b".into(), now)
            .unwrap();
        let (_, answer) = g
            .join(
                &group(),
                request(Some("a"), &["cooperative-sticky", "range"]),
                String::new(),
                now,
            )
            .unwrap();
        assert_eq!(joined(answer).protocol, "range");
    }
}
