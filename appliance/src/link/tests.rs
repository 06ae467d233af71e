//! Links between an edge and a hub in this process, over QUIC on loopback with the
//! certificates `appliance certs` makes: the edge's `Links` and the hub's `Hub`, each over a
//! log of its own.

use std::path::Path;
use std::time::Duration;

use appliance_proto::link::v1 as wire;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::edge::{LinkSpec, LinkStatus, Links};
use super::enroll;
use super::hub::{Hub, HubOptions};
use super::progress::Direction;
use super::protocol::MirrorEnd;
use super::tls::{Congestion, DEFAULT_IDLE_TIMEOUT, TlsFiles, edge_endpoint};
use super::transfer::{self, WireCompression};
use super::{EdgeId, LinkError, SessionError, frame};
use crate::group::Coordinator;
use crate::log::{
    self, Compression, Durability, Log, LogConfig, LogError, Offset, PartitionId, Record,
    Timestamp, TopicConfig, TopicName,
};
use crate::meta::{GroupId, Meta};
use crate::runtime::{RestartPolicies, RestartPolicy, State};
use crate::security::certs;
use crate::security::{PrincipalRules, Security};

async fn open_log(dir: &Path) -> (Log, Meta) {
    let meta = Meta::open(&dir.join("meta")).unwrap();
    let config = LogConfig {
        durability: Durability::Os,
        ..LogConfig::new(dir.to_path_buf())
    };
    (Log::open(config, meta.clone()).await.unwrap(), meta)
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn record(n: usize) -> Record {
    Record {
        key: None,
        value: Some(Bytes::from(format!("reading-{n}"))),
        headers: Vec::new(),
        timestamp: Timestamp(1_700_000_000_000 + n as i64),
    }
}

async fn produce(log: &Log, name: &str, partition: u32, from: usize, count: usize) {
    let records: Vec<Record> = (from..from + count).map(record).collect();
    for chunk in records.chunks(97) {
        let batch = log::encode(chunk, Compression::None).unwrap();
        log.append(&topic(name), PartitionId(partition), batch)
            .await
            .unwrap();
    }
}

/// Every stored byte of a partition, from its log start.
fn stored(log: &Log, name: &str, partition: u32) -> Vec<u8> {
    let partition = log.partition(&topic(name), PartitionId(partition)).unwrap();
    let mut bytes = Vec::new();
    let mut offset = partition.log_start();
    while offset < partition.high_watermark() {
        let chunk = partition.read(offset, 1 << 16).unwrap();
        bytes.extend_from_slice(&chunk.batches);
        offset = chunk.next_offset;
    }
    bytes
}

/// Waits until `mirror`'s partitions on `to` hold exactly what `origin`'s hold on `from`.
async fn wait_identical(from: &Log, origin: &str, to: &Log, mirror: &str, partitions: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let same = (0..partitions).all(|p| {
            to.partition(&topic(mirror), PartitionId(p))
                .is_ok_and(|_| stored(from, origin, p) == stored(to, mirror, p))
        });
        if same {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mirror never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Side {
    _dir: tempfile::TempDir,
    log: Log,
    meta: Meta,
}

async fn side() -> Side {
    let dir = tempfile::tempdir().unwrap();
    let (log, meta) = open_log(dir.path()).await;
    Side {
        _dir: dir,
        log,
        meta,
    }
}

/// A link CA with the edge `plant-7`, a hub serving its log on loopback, and an edge with its
/// links.
struct Deployment {
    certs: tempfile::TempDir,
    edge: Side,
    links: Links,
    hub: Side,
    hub_link: Hub,
    shutdown: CancellationToken,
}

impl Deployment {
    async fn start() -> Self {
        let certs = tempfile::tempdir().unwrap();
        certs::init(certs.path(), &[]).unwrap();
        certs::issue_client(certs.path(), "plant-7").unwrap();
        let (edge, hub) = (side().await, side().await);
        let file = |name: &str| certs.path().join(name);
        let shutdown = CancellationToken::new();
        let options = HubOptions {
            addr: ([127, 0, 0, 1], 0).into(),
            ca_key: None,
            ca: file("ca.pem"),
            cert: file("hub.pem"),
            key: file("hub.key"),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        };
        let coordinator = Coordinator::new(hub.log.clone(), hub.meta.clone());
        // The edge is a super-user of the hub here: the ACLs of links have a test of their own.
        let edge_principal = "Edge:plant-7".parse().unwrap();
        let security = Security::open(
            hub.meta.clone(),
            [edge_principal].into(),
            PrincipalRules::default(),
        )
        .unwrap();
        let hub_link = Hub::start(
            &options,
            hub.log.clone(),
            coordinator,
            security,
            shutdown.clone(),
        )
        .unwrap();
        let links = Links::open(
            edge.log.clone(),
            edge.meta.clone(),
            DEFAULT_IDLE_TIMEOUT,
            RestartPolicies::all(RestartPolicy::LINKS),
            shutdown.clone(),
        )
        .await
        .unwrap();
        Self {
            certs,
            edge,
            links,
            hub,
            hub_link,
            shutdown,
        }
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.certs.path().join(name)
    }

    /// A link of plant-7 mirroring `topics` up and `downstream` down.
    fn spec(&self, topics: &str, downstream: &str) -> LinkSpec {
        LinkSpec {
            name: "to-hub".to_owned(),
            hub: self.hub_link.local_addr().to_string(),
            topics: topics.to_owned(),
            downstream: downstream.to_owned(),
            ca: self.file("ca.pem"),
            cert: self.file("plant-7.pem"),
            key: self.file("plant-7.key"),
            compression: WireCompression::Zstd,
            max_bytes_per_sec: 0,
            congestion: Congestion::Bbr,
            hold_max_bytes: 0,
            paused: false,
        }
    }
}

/// Waits until the link `name` is as `done` wants it.
async fn link_until(links: &Links, name: &str, what: &str, done: impl Fn(&LinkStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&links.get(name).await.unwrap()) {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_topic_appears_on_the_hub_byte_for_byte_and_resumes_after_a_pause() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    let config = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    edge.log
        .create_topic(topic("sensors"), config)
        .await
        .unwrap();
    edge.log
        .create_topic(topic("private"), TopicConfig::default())
        .await
        .unwrap();
    produce(&edge.log, "sensors", 0, 0, 1000).await;
    produce(&edge.log, "sensors", 1, 0, 300).await;

    deployment
        .links
        .create(deployment.spec("sensors|later", ""))
        .await
        .unwrap();
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 2).await;
    produce(&edge.log, "sensors", 0, 1000, 500).await;
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 2).await;
    link_until(
        &deployment.links,
        "to-hub",
        "the edge sees the hub's acknowledgements",
        |status| {
            status.state == State::Running
                && status.partitions.len() == 2
                && status.partitions.iter().all(|p| p.lag_records == 0)
                && status.partitions[0].acknowledged == Offset(1500)
        },
    )
    .await;
    assert!(
        hub.log.topic_config(&topic("plant-7.private")).is_err(),
        "only topics matching the pattern are mirrored"
    );
    let produced = hub
        .log
        .append(
            &topic("plant-7.sensors"),
            PartitionId(0),
            log::encode(&[record(0)], Compression::None).unwrap(),
        )
        .await;
    assert!(
        matches!(produced, Err(LogError::ReadOnlyMirror { .. })),
        "a mirror is read-only to producers: {produced:?}"
    );

    // A topic that appears and partitions that are added reach the hub without a restart.
    edge.log
        .create_topic(topic("later"), TopicConfig::default())
        .await
        .unwrap();
    produce(&edge.log, "later", 0, 0, 50).await;
    wait_identical(&edge.log, "later", &hub.log, "plant-7.later", 1).await;
    edge.log
        .update_topic_config(
            &topic("later"),
            TopicConfig {
                partitions: 3,
                max_message_bytes: 2 << 20,
                schema: Some(r#"[{"name": "temp", "type": "Float64"}]"#.to_owned()),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    produce(&edge.log, "later", 2, 0, 20).await;
    wait_identical(&edge.log, "later", &hub.log, "plant-7.later", 3).await;
    assert_eq!(
        hub.log
            .topic_config(&topic("plant-7.later"))
            .unwrap()
            .max_message_bytes,
        2 << 20,
        "the mirror takes batches as large as its origin's"
    );
    assert_eq!(
        hub.log
            .topic_config(&topic("plant-7.later"))
            .unwrap()
            .schema,
        edge.log.topic_config(&topic("later")).unwrap().schema,
        "the mirror takes its origin's declared schema"
    );

    // The link pauses; the edge keeps producing; resumed, it continues where the hub is.
    deployment.links.pause("to-hub").await.unwrap();
    produce(&edge.log, "sensors", 1, 300, 700).await;
    deployment.links.resume("to-hub").await.unwrap();
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 2).await;
    let mirror = hub
        .log
        .partition(&topic("plant-7.sensors"), PartitionId(1))
        .unwrap();
    assert_eq!(
        mirror.high_watermark(),
        Offset(1000),
        "nothing twice, nothing skipped"
    );
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_topics_reach_the_edge_and_group_offsets_reach_the_hub() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    hub.log
        .create_topic(topic("commands"), TopicConfig::default())
        .await
        .unwrap();
    produce(&hub.log, "commands", 0, 0, 40).await;
    edge.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    produce(&edge.log, "sensors", 0, 0, 400).await;
    let group = GroupId::new("dashboard").unwrap();
    let edge_groups = Coordinator::new(edge.log.clone(), edge.meta.clone());
    edge_groups
        .commit(
            &group,
            None,
            vec![(
                (topic("sensors"), PartitionId(0)),
                Offset(200),
                "half".to_owned(),
            )],
        )
        .await
        .unwrap();

    deployment
        .links
        .create(deployment.spec(".*", "commands"))
        .await
        .unwrap();
    wait_identical(&hub.log, "commands", &edge.log, "hub.commands", 1).await;
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 1).await;
    assert!(
        hub.log
            .topic_config(&topic("plant-7.hub.commands"))
            .is_err(),
        "a mirror is never mirrored again"
    );
    let hub_groups = Coordinator::new(hub.log.clone(), hub.meta.clone());
    let mirrored = (topic("plant-7.sensors"), PartitionId(0));
    eventually("the group's offset reaches the hub", || {
        hub_groups
            .committed(&group, &mirrored)
            .unwrap()
            .is_some_and(|c| c.offset == 200 && c.metadata == "half")
    })
    .await;
    eventually(
        "the hub lists the edge with its downstream partition",
        || {
            deployment.hub_link.edges().iter().any(|e| {
                e.edge.as_str() == "plant-7"
                    && e.connected
                    && e.partitions
                        .iter()
                        .any(|p| p.direction == Direction::Downstream && p.lag_records == 0)
            })
        },
    )
    .await;
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_retention_deleted_before_the_hub_had_it_is_a_gap_at_the_same_offsets() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    let config = TopicConfig {
        segment_bytes: 4096,
        retention_bytes: Some(8192),
        ..TopicConfig::default()
    };
    edge.log
        .create_topic(topic("sensors"), config)
        .await
        .unwrap();
    produce(&edge.log, "sensors", 0, 0, 100).await;
    let spec = LinkSpec {
        hold_max_bytes: 16 * 1024,
        ..deployment.spec("sensors", "")
    };
    deployment.links.create(spec).await.unwrap();
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 1).await;
    deployment.links.pause("to-hub").await.unwrap();

    // While the hub is unreachable, retention waits up to the hold's cap, then deletes.
    produce(&edge.log, "sensors", 0, 100, 2000).await;
    edge.log.apply_retention().await;
    let origin = edge
        .log
        .partition(&topic("sensors"), PartitionId(0))
        .unwrap();
    assert!(origin.log_start() > Offset(100), "the cap forced deletion");
    deployment.links.resume("to-hub").await.unwrap();
    let mirror = hub
        .log
        .partition(&topic("plant-7.sensors"), PartitionId(0))
        .unwrap();
    eventually("the mirror continues after the gap", || {
        mirror.high_watermark() == origin.high_watermark()
    })
    .await;
    assert_eq!(
        mirror.log_start(),
        origin.log_start(),
        "offsets never shift"
    );
    let status = deployment.links.get("to-hub").await.unwrap();
    assert_eq!(
        status.partitions[0].gap_records,
        origin.log_start().0 - 100,
        "{status:?}"
    );
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_mirror_takes_producers_and_the_link_stops_writing_it() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    edge.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    produce(&edge.log, "sensors", 0, 0, 100).await;
    deployment
        .links
        .create(deployment.spec("sensors", ""))
        .await
        .unwrap();
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 1).await;
    deployment.links.pause("to-hub").await.unwrap();
    hub.log.promote(&topic("plant-7.sensors")).await.unwrap();
    let outcome = hub
        .log
        .append(
            &topic("plant-7.sensors"),
            PartitionId(0),
            log::encode(&[record(7)], Compression::None).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.base_offset,
        Offset(100),
        "producers continue at the end"
    );
    produce(&edge.log, "sensors", 0, 100, 10).await;
    deployment.links.resume("to-hub").await.unwrap();
    link_until(
        &deployment.links,
        "to-hub",
        "the edge reports the refusal",
        |status| {
            status.partitions.iter().any(|p| {
                p.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("not a mirror"))
            })
        },
    )
    .await;
    let promoted = hub
        .log
        .partition(&topic("plant-7.sensors"), PartitionId(0))
        .unwrap();
    assert_eq!(promoted.high_watermark(), Offset(101));
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_claiming_another_edges_id_is_refused() {
    let deployment = Deployment::start().await;
    let (_connection, answer, _, _) = hello_with_plant_7s_certificate(&deployment, "plant-8").await;
    let Some(wire::control_frame::Kind::Refusal(refusal)) = answer else {
        panic!("not refused: {answer:?}");
    };
    assert!(
        refusal.reason.contains("edge plant-7's"),
        "{}",
        refusal.reason
    );
    assert!(
        deployment.hub.log.list_topics().is_empty(),
        "no mirror for an impostor"
    );
    deployment.shutdown.cancel();
}

#[test]
fn edge_ids_are_dns_labels() {
    for good in ["edge-1", "a", "plant7", &"x".repeat(63)] {
        assert!(EdgeId::new(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "-edge",
        "edge-",
        "Edge",
        "edge.1",
        "edge_1",
        &"x".repeat(64),
        "hub",
    ] {
        assert!(EdgeId::new(bad).is_err(), "{bad}");
    }
}

/// Connects with plant-7's certificate and says Hello as `edge_id`: the connection, the
/// hub's answer and the control stream.
async fn hello_with_plant_7s_certificate(
    deployment: &Deployment,
    edge_id: &str,
) -> (
    quinn::Connection,
    Option<wire::control_frame::Kind>,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let (ca, cert, key) = (
        deployment.file("ca.pem"),
        deployment.file("plant-7.pem"),
        deployment.file("plant-7.key"),
    );
    let files = TlsFiles {
        ca: &ca,
        cert: &cert,
        key: &key,
    };
    let endpoint = edge_endpoint(&files, DEFAULT_IDLE_TIMEOUT, Congestion::Bbr).unwrap();
    let connection = endpoint
        .connect(deployment.hub_link.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut receive) = connection.open_bi().await.unwrap();
    let hello = wire::ControlFrame {
        kind: Some(wire::control_frame::Kind::Hello(wire::Hello {
            edge_id: edge_id.to_owned(),
            link_name: "raw".to_owned(),
            ..Default::default()
        })),
    };
    send.write_all(&frame::encode(&hello)).await.unwrap();
    let answer = frame::read::<wire::ControlFrame>(&mut receive, 1 << 20)
        .await
        .unwrap()
        .and_then(|f| f.kind);
    (connection, answer, send, receive)
}

/// A raw QUIC session of plant-7 with the hub, past Welcome: a test speaks the protocol
/// itself to send what a well-behaved edge never would.
async fn raw_session(
    deployment: &Deployment,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let (connection, welcome, send, receive) =
        hello_with_plant_7s_certificate(deployment, "plant-7").await;
    assert!(
        matches!(welcome, Some(wire::control_frame::Kind::Welcome(_))),
        "{welcome:?}"
    );
    (connection, send, receive)
}

/// Announces `name` with `partitions` and returns the hub's positions.
async fn announce(
    send: &mut quinn::SendStream,
    receive: &mut quinn::RecvStream,
    name: &str,
    partitions: u32,
) -> wire::Positions {
    let state = wire::ControlFrame {
        kind: Some(wire::control_frame::Kind::Topic(wire::TopicState {
            topic: name.to_owned(),
            partitions,
            max_message_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            schema: String::new(),
            ..Default::default()
        })),
    };
    send.write_all(&frame::encode(&state)).await.unwrap();
    loop {
        let frame = frame::read::<wire::ControlFrame>(receive, 1 << 20)
            .await
            .unwrap()
            .and_then(|f| f.kind);
        if let Some(wire::control_frame::Kind::Positions(positions)) = frame {
            return positions;
        }
    }
}

/// Sends `batch` as partition `partition` of `name` from offset 0 on a stream of its own.
async fn send_batch(connection: &quinn::Connection, name: &str, partition: u32, batch: Bytes) {
    let mut stream = connection.open_uni().await.unwrap();
    let header = wire::PartitionHeader {
        topic: name.to_owned(),
        partition,
        from_offset: 0,
    };
    stream.write_all(&frame::encode(&header)).await.unwrap();
    let stored_length = batch.len() as u32;
    let mut frames = frame::encode_batch(wire::Batch {
        data: batch,
        compression: wire::WireCompression::None as i32,
        stored_length,
    });
    // The hub may stop the stream as soon as it has read the batch.
    let _ = stream.write_all_chunks(&mut frames).await;
    let _ = stream.finish();
}

/// A batch whose CRC is right but whose first record's length says more than there is.
fn malformed_batch() -> Bytes {
    let mut batch = log::encode(&[record(0), record(1)], Compression::None).unwrap();
    // The first record's length varint sits right after the 61-byte batch header.
    batch[61] = 0x7e;
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(
        log::validate_batch(&batch).is_ok(),
        "the header and CRC are valid"
    );
    batch.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_records_do_not_parse_quarantines_its_partition_only() {
    let deployment = Deployment::start().await;
    let hub = &deployment.hub;
    let (connection, mut send, mut receive) = raw_session(&deployment).await;
    let positions = announce(&mut send, &mut receive, "sensors", 2).await;
    assert!(positions.positions.iter().all(|p| p.quarantine.is_empty()));

    send_batch(&connection, "sensors", 0, malformed_batch()).await;
    let good = log::encode(&[record(7)], Compression::None)
        .unwrap()
        .freeze();
    send_batch(&connection, "sensors", 1, good.clone()).await;
    let status = |partition: u32| {
        deployment.hub_link.edges()[0]
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .cloned()
    };
    eventually("the hub quarantines partition 0", || {
        status(0).is_some_and(|p| p.quarantine.is_some())
    })
    .await;
    eventually("partition 1 is mirrored", || {
        stored(&hub.log, "plant-7.sensors", 1) == good[..]
    })
    .await;
    let quarantined = status(0).unwrap();
    assert_eq!(quarantined.state(), "quarantined");
    assert!(
        quarantined
            .problem()
            .is_some_and(|p| p.contains("offset 0 does not parse")),
        "{quarantined:?}"
    );
    assert!(status(1).unwrap().quarantine.is_none());
    assert!(
        stored(&hub.log, "plant-7.sensors", 0).is_empty(),
        "nothing of the refused batch is stored"
    );
    #[cfg(feature = "hub")]
    {
        let query = crate::query::Query::new(hub.log.clone())
            .execute("SELECT count(*) AS n FROM sensors")
            .await;
        assert!(
            query.is_ok(),
            "queries over the union still answer: {:?}",
            query.err()
        );
    }

    // Announced again (as after a reconnect), the partition stays quarantined and says why.
    let positions = announce(&mut send, &mut receive, "sensors", 2).await;
    let zero = positions
        .positions
        .iter()
        .find(|p| p.partition == 0)
        .unwrap();
    assert!(zero.quarantine.contains("does not parse"), "{zero:?}");
    assert!(
        positions
            .positions
            .iter()
            .find(|p| p.partition == 1)
            .unwrap()
            .quarantine
            .is_empty()
    );
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_starts_only_where_its_log_continues_the_mirror() {
    let side = side().await;
    side.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    // Batches of 97 records: 0..97, 97..194, ...
    produce(&side.log, "sensors", 0, 0, 1000).await;
    let partition = side
        .log
        .partition(&topic("sensors"), PartitionId(0))
        .unwrap();
    let at = |next: u64| {
        transfer::mirror_end(&partition).map(|end| MirrorEnd {
            next: Offset(next),
            ..end
        })
    };
    let check = |end: MirrorEnd| {
        transfer::check_continues(&partition, &topic("sensors"), PartitionId(0), end)
    };
    let boundary = {
        let chunk = partition.read(Offset(193), 1).unwrap();
        let header = log::BatchHeader::parse(&chunk.batches).unwrap();
        assert_eq!(header.next_offset(), Offset(194));
        MirrorEnd {
            next: Offset(194),
            previous_batch_crc: Some(header.stored_crc),
        }
    };
    assert!(
        check(boundary).is_ok(),
        "the same batch before the mirror's end"
    );
    assert!(
        check(transfer::mirror_end(&partition).unwrap()).is_ok(),
        "a mirror in sync"
    );
    assert!(
        check(MirrorEnd {
            next: Offset(0),
            previous_batch_crc: None
        })
        .is_ok(),
        "an empty mirror"
    );
    let diverged = |end: MirrorEnd, expected: &str| match check(end) {
        Err(error @ SessionError::Diverged { .. }) => {
            let text = error.to_string();
            assert!(text.contains(expected), "{text}");
            assert!(text.contains("delete the mirror"), "{text}");
        }
        other => panic!("not diverged ({expected}): {other:?}"),
    };
    diverged(
        MirrorEnd {
            previous_batch_crc: boundary.previous_batch_crc.map(|crc| crc ^ 1),
            ..boundary
        },
        "last batch",
    );
    diverged(at(150).unwrap(), "inside a batch");
    diverged(
        MirrorEnd {
            next: Offset(1001),
            previous_batch_crc: None,
        },
        "ahead",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_while_linked_stops_its_partition_and_the_link_answers() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    edge.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    produce(&edge.log, "sensors", 0, 0, 970).await;
    deployment
        .links
        .create(deployment.spec("sensors", ""))
        .await
        .unwrap();
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 1).await;
    let mirrored = stored(&hub.log, "plant-7.sensors", 0);

    // The same offsets, other records: 970 is a batch boundary in both logs.
    edge.log.delete_topic(&topic("sensors")).await.unwrap();
    edge.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    produce(&edge.log, "sensors", 0, 5000, 97 * 20).await;
    let failed = |status: &LinkStatus| {
        status
            .partitions
            .first()
            .and_then(|p| p.problem())
            .is_some_and(|problem| problem.contains("reset or replaced"))
    };
    link_until(
        &deployment.links,
        "to-hub",
        "the edge says the log was replaced",
        failed,
    )
    .await;
    // Pausing and resuming answer while the partition is stopped.
    for _ in 0..2 {
        let paused =
            tokio::time::timeout(Duration::from_secs(10), deployment.links.pause("to-hub"));
        paused.await.expect("pause answers").unwrap();
        let resumed =
            tokio::time::timeout(Duration::from_secs(10), deployment.links.resume("to-hub"));
        resumed.await.expect("resume answers").unwrap();
    }
    link_until(
        &deployment.links,
        "to-hub",
        "the edge says the log was replaced after a resume",
        failed,
    )
    .await;
    assert_eq!(
        stored(&hub.log, "plant-7.sensors", 0),
        mirrored,
        "the mirror keeps the old log's records, and nothing of the new log follows them"
    );

    // A mirror ahead of its origin is not "in sync" on the hub.
    edge.log.delete_topic(&topic("sensors")).await.unwrap();
    edge.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    produce(&edge.log, "sensors", 0, 0, 10).await;
    eventually("the hub sees its mirror ahead of the origin", || {
        deployment.hub_link.edges()[0]
            .partitions
            .iter()
            .any(|p| p.state() == "diverged")
    })
    .await;
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edge_has_one_link_to_a_hub() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    edge.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    deployment
        .links
        .create(deployment.spec("sensors", ""))
        .await
        .unwrap();
    link_until(
        &deployment.links,
        "to-hub",
        "the first link connects",
        |status| status.state == State::Running,
    )
    .await;
    let again = LinkSpec {
        name: "again".to_owned(),
        ..deployment.spec("other", "")
    };
    let refused = deployment.links.create(again.clone()).await;
    assert!(
        matches!(&refused, Err(LinkError::InvalidSpec { reason, .. }) if reason.contains("to-hub")),
        "{refused:?}"
    );

    // Another spelling of the same hub gets past the edge; the hub refuses it.
    let port = deployment.hub_link.local_addr().port();
    let spelled = LinkSpec {
        hub: format!("localhost:{port}"),
        ..again
    };
    deployment.links.create(spelled).await.unwrap();
    link_until(
        &deployment.links,
        "again",
        "the hub refuses the second link",
        |status| {
            status
                .last_error
                .as_deref()
                .is_some_and(|error| error.contains("one link per edge"))
        },
    )
    .await;
    let first = deployment.links.get("to-hub").await.unwrap();
    assert_eq!(first.state, State::Running);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = deployment.links.get("to-hub").await.unwrap();
    assert!(
        later.connected_for > first.connected_for,
        "the first link's connection was never replaced: {:?} then {:?}",
        first.connected_for,
        later.connected_for
    );
    produce(&edge.log, "sensors", 0, 0, 100).await;
    wait_identical(&edge.log, "sensors", &hub.log, "plant-7.sensors", 1).await;
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_topic_named_like_another_edges_mirror_is_refused() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    edge.log
        .create_topic(topic("readings"), TopicConfig::default())
        .await
        .unwrap();
    deployment
        .links
        .create(deployment.spec("readings|plant-7[.]readings", ""))
        .await
        .unwrap();
    eventually("the first mirror exists", || {
        hub.log.topic_config(&topic("plant-7.readings")).is_ok()
    })
    .await;
    edge.log
        .create_topic(topic("plant-7.readings"), TopicConfig::default())
        .await
        .unwrap();
    link_until(
        &deployment.links,
        "to-hub",
        "the edge shows the refusal",
        |status| {
            status.partitions.iter().any(|p| {
                p.topic == "plant-7.readings"
                    && p.problem()
                        .is_some_and(|e| e.contains("would mean two things"))
            })
        },
    )
    .await;
    assert!(
        hub.log
            .topic_config(&topic("plant-7.plant-7.readings"))
            .is_err()
    );
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_fifty_concurrent_creates_of_one_name_one_link_runs_and_no_task_is_orphaned() {
    let deployment = Deployment::start().await;
    let creates = (0..50).map(|_| deployment.links.create(deployment.spec("sensors", "")));
    let outcomes = futures_util::future::join_all(creates).await;
    let created = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(created, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().err())
            .all(|error| matches!(error, LinkError::LinkExists { .. })),
        "{outcomes:?}"
    );
    assert_eq!(deployment.links.list().await.len(), 1);
    assert_eq!(deployment.links.running_tasks(), 1);
    link_until(&deployment.links, "to-hub", "the link connects", |status| {
        status.state == State::Running
    })
    .await;
    deployment.links.delete("to-hub").await.unwrap();
    assert_eq!(deployment.links.running_tasks(), 0);
    deployment.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_link_waiting_to_reconnect_leaves_nothing_of_it_running() {
    let deployment = Deployment::start().await;
    deployment
        .links
        .create(deployment.spec("sensors", ""))
        .await
        .unwrap();
    link_until(&deployment.links, "to-hub", "the link connects", |status| {
        status.state == State::Running
    })
    .await;
    // The hub refuses a second link of plant-7 each time it tries, so it waits to retry.
    let port = deployment.hub_link.local_addr().port();
    let refused = LinkSpec {
        name: "refused".to_owned(),
        hub: format!("localhost:{port}"),
        ..deployment.spec("other", "")
    };
    deployment.links.create(refused).await.unwrap();
    link_until(
        &deployment.links,
        "refused",
        "the hub refuses it",
        |status| {
            matches!(status.state, State::Restarting { .. })
                && status
                    .last_error
                    .as_deref()
                    .is_some_and(|error| error.contains("one link per edge"))
        },
    )
    .await;
    assert_eq!(deployment.links.running_tasks(), 2);
    deployment.links.delete("refused").await.unwrap();
    assert_eq!(deployment.links.running_tasks(), 1);
    let names: Vec<String> = deployment
        .links
        .list()
        .await
        .into_iter()
        .map(|status| status.spec.name)
        .collect();
    assert_eq!(names, ["to-hub"]);
    deployment.shutdown.cancel();
}

/// A connection without a certificate gets one bounded enrollment exchange: silent or sending
/// garbage, it is closed, and the hub goes on serving its edges.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_a_certificate_gets_one_bounded_exchange() {
    let deployment = Deployment::start().await;
    let hub = deployment.hub_link.local_addr();
    let pin = enroll::pin_of(&deployment.file("hub.pem")).unwrap();
    let endpoint = enroll::pinned_endpoint(pin).unwrap();
    let bound = enroll::EXCHANGE_TIMEOUT * 3;

    let silent = endpoint
        .connect(hub, "appliance-hub")
        .unwrap()
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(bound, silent.closed()).await.is_ok(),
        "a silent connection held past its exchange's time"
    );

    let noisy = endpoint
        .connect(hub, "appliance-hub")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _receive) = noisy.open_bi().await.unwrap();
    send.write_all(&[0xff; 64]).await.unwrap();
    send.finish().unwrap();
    assert!(
        tokio::time::timeout(bound, noisy.closed()).await.is_ok(),
        "garbage held its connection"
    );

    // A hub without the CA's key refuses to enroll, before looking at the token.
    let token = "apj_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA_".to_owned()
        + &base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, pin);
    let dir = tempfile::tempdir().unwrap();
    let refused = enroll::enroll_with(&hub.to_string(), &token, dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("does not enroll edges"), "{refused}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    deployment.shutdown.cancel();
}
