use std::time::Duration;

use super::*;
use crate::runtime::RestartPolicy;

fn edge(id: &str) -> EdgeId {
    EdgeId::new(id).unwrap()
}

fn hello(edge: &str, link: &str) -> wire::Hello {
    wire::Hello {
        edge_id: edge.to_owned(),
        link_name: link.to_owned(),
        ..Default::default()
    }
}

fn welcomed(admission: Admission) -> (SessionId, Option<SessionId>) {
    match admission {
        Admission::Welcome {
            session, fenced, ..
        } => (session, fenced),
        Admission::Refuse(reason) => panic!("refused: {reason}"),
    }
}

fn refused(admission: Admission) -> String {
    match admission {
        Admission::Refuse(reason) => reason,
        Admission::Welcome { .. } => panic!("welcomed"),
    }
}

#[test]
fn a_newer_session_of_a_link_fences_the_older_one() {
    let mut hub = Admissions::default();
    let plant = edge("plant-7");
    let (first, fenced) = welcomed(hub.hello(&plant, &hello("plant-7", "uplink")));
    assert_eq!(fenced, None);
    let (second, fenced) = welcomed(hub.hello(&plant, &hello("plant-7", "uplink")));
    assert_eq!(fenced, Some(first), "one writer per mirror");
    assert!(hub.is_current(&plant, second));
    assert!(!hub.is_current(&plant, first));
    assert!(
        !hub.ended(&plant, first),
        "the fenced session's end changes nothing"
    );
    assert!(hub.is_current(&plant, second));
    assert!(hub.ended(&plant, second));
    let (_, fenced) = welcomed(hub.hello(&plant, &hello("plant-7", "uplink")));
    assert_eq!(fenced, None, "nothing left to fence after the end");
}

#[test]
fn another_link_of_a_connected_edge_waits_until_the_first_disconnects() {
    let mut hub = Admissions::default();
    let plant = edge("plant-7");
    let (first, _) = welcomed(hub.hello(&plant, &hello("plant-7", "uplink")));
    let reason = refused(hub.hello(&plant, &hello("plant-7", "second")));
    assert!(reason.contains("by its link \"uplink\""), "{reason}");
    welcomed(hub.hello(&edge("plant-8"), &hello("plant-8", "second")));
    hub.ended(&plant, first);
    let (_, fenced) = welcomed(hub.hello(&plant, &hello("plant-7", "second")));
    assert_eq!(fenced, None);
}

#[test]
fn a_connection_lost_before_its_session_noticed_lets_another_link_in() {
    let mut hub = Admissions::default();
    let plant = edge("plant-7");
    let (first, _) = welcomed(hub.hello(&plant, &hello("plant-7", "uplink")));
    hub.connection_lost(&plant);
    assert!(!hub.is_current(&plant, first));
    let (_, fenced) = welcomed(hub.hello(&plant, &hello("plant-7", "second")));
    assert_eq!(fenced, None);
}

#[test]
fn a_hello_must_claim_the_certified_edge_and_a_valid_pattern() {
    let mut hub = Admissions::default();
    let plant = edge("plant-7");
    let reason = refused(hub.hello(&plant, &hello("plant-8", "uplink")));
    assert!(reason.contains("the hello claims \"plant-8\""), "{reason}");
    let bad_pattern = wire::Hello {
        downstream_pattern: "(".to_owned(),
        ..hello("plant-7", "uplink")
    };
    let reason = refused(hub.hello(&plant, &bad_pattern));
    assert!(reason.contains("the downstream pattern"), "{reason}");
    assert!(
        !hub.is_current(&plant, SessionId(1)),
        "nothing was admitted"
    );
}

#[test]
fn the_edge_reads_the_hubs_first_answer() {
    let frame = |kind| Some(wire::ControlFrame { kind: Some(kind) });
    assert_eq!(
        answer_to_hello(frame(wire::control_frame::Kind::Welcome(wire::Welcome {}))),
        Ok(())
    );
    assert_eq!(
        answer_to_hello(frame(wire::control_frame::Kind::Refusal(wire::Refusal {
            reason: "no".into()
        }))),
        Err(HandshakeError::Refused("no".into()))
    );
    assert_eq!(answer_to_hello(None), Err(HandshakeError::NoWelcome));
    assert_eq!(
        answer_to_hello(frame(wire::control_frame::Kind::Ack(wire::Ack::default()))),
        Err(HandshakeError::NoWelcome)
    );
}

#[test]
fn a_link_reconnects_with_a_backoff_that_a_welcome_starts_anew() {
    let mut restarts = RestartPolicy::LINKS.restarts();
    let waits: Vec<Duration> = (0..4)
        .map(|_| restarts.failed(Duration::ZERO).unwrap())
        .collect();
    for pair in waits.windows(2) {
        assert!(pair[1] > pair[0], "{waits:?}");
    }
    restarts.succeeded();
    let after_welcome = restarts.failed(Duration::ZERO).unwrap();
    assert!(
        after_welcome <= RestartPolicy::LINKS.first,
        "{after_welcome:?}"
    );
}

#[test]
fn a_gap_moves_both_sides_to_the_log_start_and_offsets_never_shift() {
    let mut cursor = SendCursor::new(Offset(10));
    assert_eq!(cursor.deleted_before(Offset(5)), None, "nothing missing");
    let gap = cursor.deleted_before(Offset(50)).unwrap();
    assert_eq!(gap.log_start, 50);
    assert_eq!(cursor.next(), Offset(50));
    assert_eq!(gap_restart(&gap, Offset(10)), Some(Offset(50)));
    assert_eq!(
        gap_restart(&gap, Offset(60)),
        None,
        "a mirror that has more already stays"
    );
    assert_eq!(cursor.batch(Offset(40), Offset(50)), BatchStep::Skip);
    assert_eq!(cursor.batch(Offset(50), Offset(60)), BatchStep::Send);
    assert_eq!(cursor.next(), Offset(60));
    let BatchStep::Diverged(detail) = cursor.batch(Offset(55), Offset(70)) else {
        panic!("a batch across the cursor is another log's")
    };
    assert!(detail.contains("offset 60 falls inside"), "{detail}");
}

/// One own topic `sensors` with one partition: its handle (a generation) and offsets.
fn sensors(handle: u32, log_start: u64, high_watermark: u64) -> Vec<OwnTopic<u32>> {
    vec![OwnTopic {
        state: wire::TopicState {
            topic: "sensors".into(),
            partitions: 1,
            max_message_bytes: 1 << 20,
            segment_bytes: 1 << 27,
            schema: String::new(),
            ..Default::default()
        },
        partitions: vec![Some(OwnPartition {
            handle,
            high_watermark: Offset(high_watermark),
            log_start: Offset(log_start),
        })],
    }]
}

fn positions(next: u64) -> wire::Positions {
    wire::Positions {
        positions: vec![wire::PartitionPosition {
            topic: "sensors".into(),
            partition: 0,
            next_offset: next,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn ack(next: u64) -> wire::Ack {
    wire::Ack {
        topic: "sensors".into(),
        partition: 0,
        durable_next_offset: next,
    }
}

fn control(mirrors: &Mirrors) -> Control<u32> {
    Control::new(
        Direction::Upstream,
        MirrorOwner::Edge("plant-7".into()),
        mirrors.clone(),
    )
}

fn announced(actions: &[Action<u32>]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Send(wire::control_frame::Kind::Topic(_))))
}

fn holds(actions: &[Action<u32>]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Hold { keep_from, .. } => Some(keep_from.0),
            _ => None,
        })
        .collect()
}

fn started(actions: &[Action<u32>]) -> Option<(SenderId, u64)> {
    actions.iter().find_map(|a| match a {
        Action::StartSender { id, end, .. } => Some((*id, end.next.0)),
        _ => None,
    })
}

#[test]
fn a_new_session_announces_again_and_sends_from_what_the_peer_has() {
    let mirrors = Mirrors::default();
    let mut first = control(&mirrors);
    assert!(announced(&first.tick(&sensors(1, 0, 100))));
    assert!(
        !announced(&first.tick(&sensors(1, 0, 100))),
        "announced once while unchanged"
    );
    let actions = first.positions(positions(0), |_, _| Some(1));
    assert_eq!(started(&actions).map(|(_, from)| from), Some(0));
    assert!(
        started(&first.positions(positions(0), |_, _| Some(1))).is_none(),
        "one sender per partition"
    );
    first.ack(&ack(40));
    drop(first);

    let mut second = control(&mirrors);
    let actions = second.tick(&sensors(1, 0, 100));
    assert!(
        announced(&actions),
        "a reconnect announces every topic anew"
    );
    assert_eq!(holds(&actions), [40], "the hold stays at what the hub has");
    let actions = second.positions(positions(40), |_, _| Some(1));
    assert_eq!(started(&actions).map(|(_, from)| from), Some(40));
}

#[test]
fn a_hold_follows_only_acknowledgements_and_a_capped_hold_ends_in_a_gap() {
    let mirrors = Mirrors::default();
    let mut edge = control(&mirrors);
    edge.tick(&sensors(1, 0, 100));
    edge.positions(positions(10), |_, _| Some(1));
    let actions = edge.tick(&sensors(1, 0, 100));
    assert_eq!(
        holds(&actions),
        [10],
        "not the high watermark: the hub has 10"
    );
    // The hold reaches its cap (hold-max-bytes): retention deletes up to 50 anyway.
    let mut cursor = SendCursor::new(Offset(10));
    let gap = cursor.deleted_before(Offset(50)).expect("a gap");
    let restarted = gap_restart(&gap, Offset(10)).expect("the mirror restarts");
    edge.ack(&ack(restarted.0));
    let actions = edge.tick(&sensors(1, 50, 100));
    assert_eq!(holds(&actions), [50]);
    let status = mirrors.all()[0].snapshot();
    assert_eq!(status.acknowledged, Offset(50));
    assert_eq!(status.lag_records, 50);
}

#[test]
fn a_diverged_partition_waits_for_a_new_one_and_a_failed_sender_is_announced_again() {
    let mirrors = Mirrors::default();
    let mut edge = control(&mirrors);
    edge.tick(&sensors(1, 0, 100));
    let (id, _) = started(&edge.positions(positions(0), |_, _| Some(1))).unwrap();
    edge.sender_ended(id, "sensors", 0, SenderEnd::Diverged("reset".into()));
    assert_eq!(
        mirrors.all()[0].snapshot().last_error.as_deref(),
        Some("reset")
    );
    assert!(
        started(&edge.positions(positions(0), |_, _| Some(1))).is_none(),
        "the same partition would diverge again"
    );
    let (id, _) = started(&edge.positions(positions(0), |_, _| Some(2)))
        .expect("a partition created anew is tried");
    assert_eq!(mirrors.all()[0].snapshot().last_error, None);
    edge.sender_ended(id, "sensors", 0, SenderEnd::Failed("stream reset".into()));
    assert!(
        announced(&edge.tick(&sensors(2, 0, 100))),
        "announced again so the hub says where it stands"
    );
    edge.sender_ended(id, "sensors", 0, SenderEnd::Failed("twice".into()));
    assert_eq!(
        mirrors.all()[0].snapshot().last_error.as_deref(),
        Some("stream reset"),
        "an ended sender is not ended again"
    );
}

#[test]
fn a_partition_replaced_while_sent_stops_its_sender_and_is_announced_anew() {
    let mirrors = Mirrors::default();
    let mut edge = control(&mirrors);
    edge.tick(&sensors(1, 0, 100));
    let (id, _) = started(&edge.positions(positions(0), |_, _| Some(1))).unwrap();
    let actions = edge.tick(&sensors(2, 0, 0));
    assert!(actions.contains(&Action::StopSender(id)), "{actions:?}");
    assert!(announced(&actions));
    let actions = edge.tick(&[]);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::StopSender(_))),
        "nothing is sent, nothing to stop"
    );
}

#[test]
fn a_refused_topic_is_not_announced_again() {
    let mirrors = Mirrors::default();
    let mut edge = control(&mirrors);
    edge.tick(&sensors(1, 0, 100));
    let refusal = wire::Positions {
        refused_topic: "sensors".into(),
        refusal: "a topic of its own there".into(),
        ..Default::default()
    };
    assert!(edge.positions(refusal, |_, _| Some(1)).is_empty());
    let status = mirrors.all()[0].snapshot();
    assert_eq!(
        status.last_error.as_deref(),
        Some("refused by the peer: a topic of its own there")
    );
    let actions = edge.tick(&sensors(1, 0, 200));
    assert!(!announced(&actions));
    assert!(holds(&actions).is_empty());
}

#[test]
fn a_quarantined_partition_is_not_sent() {
    let mirrors = Mirrors::default();
    let mut edge = control(&mirrors);
    edge.tick(&sensors(1, 0, 100));
    let mut quarantined = positions(7);
    quarantined.positions[0].quarantine = "a batch did not parse".into();
    assert!(started(&edge.positions(quarantined, |_, _| Some(1))).is_none());
    assert_eq!(
        mirrors.all()[0].snapshot().quarantine.as_deref(),
        Some("a batch did not parse")
    );
    assert!(started(&edge.positions(positions(7), |_, _| Some(1))).is_some());
    assert_eq!(mirrors.all()[0].snapshot().quarantine, None);
}
