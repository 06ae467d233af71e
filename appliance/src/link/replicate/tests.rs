//! Upstream replication between two logs in this process, over QUIC on loopback with the
//! certificates `appliance certs` makes.

use std::path::Path;

use super::*;
use crate::link::certs;
use crate::link::tls::{TlsFiles, edge_endpoint, hub_endpoint};
use crate::log::{Compression, Durability, LogConfig, Record, Timestamp};
use crate::meta::Meta;

async fn open_log(dir: &Path) -> Log {
    let meta = Meta::open(&dir.join("meta")).unwrap();
    let config = LogConfig {
        durability: Durability::Os,
        ..LogConfig::new(dir.to_path_buf())
    };
    Log::open(config, meta).await.unwrap()
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

async fn produce(log: &Log, name: &str, partition: u32, from: usize, count: usize) {
    let records: Vec<Record> = (from..from + count)
        .map(|n| Record {
            key: None,
            value: Some(Bytes::from(format!("reading-{n}"))),
            headers: Vec::new(),
            timestamp: Timestamp(1_700_000_000_000 + n as i64),
        })
        .collect();
    for chunk in records.chunks(97) {
        let batch = log::encode(chunk, Compression::None).unwrap();
        log.append(&topic(name), PartitionId(partition), batch)
            .await
            .unwrap();
    }
}

/// Every stored byte of a partition, from offset 0.
fn stored(log: &Log, name: &str, partition: u32) -> Vec<u8> {
    let partition = log.partition(&topic(name), PartitionId(partition)).unwrap();
    let mut bytes = Vec::new();
    let mut offset = Offset(0);
    while offset < partition.high_watermark() {
        let chunk = partition.read(offset, 1 << 16).unwrap();
        bytes.extend_from_slice(&chunk.batches);
        offset = chunk.next_offset;
    }
    bytes
}

/// Waits until the hub's mirror partitions hold exactly what the edge's partitions hold.
async fn wait_identical(edge: &Log, hub: &Log, partitions: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let same = (0..partitions).all(|p| {
            hub.partition(&topic("plant-7.sensors"), PartitionId(p))
                .is_ok_and(|_| stored(edge, "sensors", p) == stored(hub, "plant-7.sensors", p))
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
}

async fn side() -> Side {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    Side { _dir: dir, log }
}

/// A link CA with the edge `plant-7`, a hub serving its log on loopback, and an edge log.
struct Deployment {
    certs: tempfile::TempDir,
    edge: Side,
    hub: Side,
    hub_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Deployment {
    async fn start() -> Self {
        let certs = tempfile::tempdir().unwrap();
        certs::init(certs.path(), &[]).unwrap();
        certs::issue(certs.path(), &EdgeId::new("plant-7").unwrap()).unwrap();
        let (edge, hub) = (side().await, side().await);
        let file = |name: &str| certs.path().join(name);
        let (ca, cert, key) = (file("ca.pem"), file("hub.pem"), file("hub.key"));
        let files = TlsFiles {
            ca: &ca,
            cert: &cert,
            key: &key,
        };
        let endpoint = hub_endpoint(([127, 0, 0, 1], 0).into(), &files).unwrap();
        let hub_addr = endpoint.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_hub(endpoint, hub.log.clone(), shutdown.clone()));
        Self {
            certs,
            edge,
            hub,
            hub_addr,
            shutdown,
        }
    }

    /// The edge's endpoint, with plant-7's certificate.
    fn edge_endpoint(&self) -> quinn::Endpoint {
        let file = |name: &str| self.certs.path().join(name);
        let (ca, cert, key) = (file("ca.pem"), file("plant-7.pem"), file("plant-7.key"));
        let files = TlsFiles {
            ca: &ca,
            cert: &cert,
            key: &key,
        };
        edge_endpoint(&files).unwrap()
    }

    /// The link of edge `claiming` (plant-7's own id, or another) to topics matching `topics`.
    fn upstream(&self, claiming: &str, topics: &str) -> Upstream {
        Upstream {
            edge: EdgeId::new(claiming).unwrap(),
            hub: self.hub_addr,
            hub_name: "localhost".to_owned(),
            topics: Regex::new(topics).unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_topic_appears_on_the_hub_byte_for_byte_and_resumes_after_reconnecting() {
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

    let upstream = deployment.upstream("plant-7", "^sensors$");
    let shutdown = deployment.shutdown.clone();
    let link = |stop: CancellationToken| {
        let endpoint = deployment.edge_endpoint();
        let acknowledged = Acknowledged::default();
        let task = tokio::spawn(run_edge(
            endpoint,
            upstream.clone(),
            edge.log.clone(),
            acknowledged.clone(),
            stop,
        ));
        (task, acknowledged)
    };
    let first = CancellationToken::new();
    let (task, acknowledged) = link(first.clone());
    wait_identical(&edge.log, &hub.log, 2).await;
    produce(&edge.log, "sensors", 0, 1000, 500).await;
    wait_identical(&edge.log, &hub.log, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acknowledged.lock().unwrap().get(&("sensors".to_owned(), 0)) != Some(&1500) {
        assert!(tokio::time::Instant::now() < deadline, "{acknowledged:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        hub.log.topic_config(&topic("plant-7.private")).is_err(),
        "only topics matching the pattern are mirrored"
    );

    // The link goes away; the edge keeps producing; a new link resumes where the hub is.
    first.cancel();
    task.await.unwrap();
    produce(&edge.log, "sensors", 1, 300, 700).await;
    let (task, _) = link(shutdown.clone());
    wait_identical(&edge.log, &hub.log, 2).await;
    let mirror = hub
        .log
        .partition(&topic("plant-7.sensors"), PartitionId(1))
        .unwrap();
    assert_eq!(
        mirror.high_watermark(),
        Offset(1000),
        "nothing twice, nothing skipped"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_claiming_another_edges_id_is_refused() {
    let deployment = Deployment::start().await;
    let (edge, hub) = (&deployment.edge, &deployment.hub);
    edge.log
        .create_topic(topic("sensors"), TopicConfig::default())
        .await
        .unwrap();
    let refused = edge_session(
        &deployment.edge_endpoint(),
        &deployment.upstream("plant-8", ".*"),
        &edge.log,
        &Acknowledged::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("the hub refused the link"), "{refused}");
    assert!(refused.contains("edge plant-7's"), "{refused}");
    assert!(
        hub.log.list_topics().is_empty(),
        "no mirror for an impostor"
    );
    deployment.shutdown.cancel();
}
