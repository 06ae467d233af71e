//! Helpers of the cluster tests (linking, chaos): records that vary in every field, producers
//! that remember what was acknowledged, mirrors compared record for record, link status.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::Channel;
use anyhow::{Context, ensure};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::{Daemon, Deadline, LINK, cli_ok, fetch_all};

// ---------------------------------------------------------------------------------------
// Running the CLI and polling

pub fn cli_json(daemon: &Daemon, dir: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let stdout = cli_ok(daemon, dir, args, b"")?;
    serde_json::from_str(&stdout).with_context(|| format!("appliance {}: {stdout}", args.join(" ")))
}

// ---------------------------------------------------------------------------------------
// Records

/// Record `n` of an edge's partition: keys, values, headers and timestamps vary (some keys
/// and header values absent, some tombstones, some timestamps given by the appliance).
pub fn record(origin: &str, partition: u32, n: u64) -> pb::Record {
    let key =
        (!n.is_multiple_of(6)).then(|| format!("{origin}-sensor-{}", n % 13).into_bytes().into());
    let value = (n % 97 != 13).then(|| {
        format!(
            r#"{{"origin":"{origin}","partition":{partition},"n":{n},"reading":{}}}{}"#,
            n * 7919 % 1000,
            "~".repeat((n % 61) as usize)
        )
        .into_bytes()
        .into()
    });
    let mut headers = Vec::new();
    if !n.is_multiple_of(4) {
        headers.push(pb::Header {
            key: "origin".into(),
            value: Some(origin.as_bytes().to_vec().into()),
        });
        headers.push(pb::Header {
            key: "seq".into(),
            value: Some(n.to_string().into_bytes().into()),
        });
    }
    if n.is_multiple_of(5) {
        headers.push(pb::Header {
            key: "empty".into(),
            value: None,
        });
    }
    pb::Record {
        key,
        value,
        headers,
        timestamp_ms: if n.is_multiple_of(2) {
            1_700_000_000_000 + n as i64 * 10
        } else {
            0
        },
    }
}

/// Produces records `range` of `origin`'s partition over gRPC, in requests of 500; the
/// offsets the appliance gave them.
pub async fn produce(
    channel: &Channel,
    topic: &str,
    origin: &str,
    partition: u32,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<u64>> {
    let mut client = RecordsClient::new(channel.clone());
    let mut offsets = Vec::new();
    let numbers: Vec<u64> = range.collect();
    for chunk in numbers.chunks(500) {
        let response = client
            .produce(pb::ProduceRequest {
                topic: topic.into(),
                partition: Some(partition),
                records: chunk
                    .iter()
                    .map(|&n| record(origin, partition, n))
                    .collect(),
            })
            .await?
            .into_inner();
        offsets.extend(response.positions.iter().map(|p| p.offset));
    }
    Ok(offsets)
}

/// A record a producer got acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub partition: u32,
    pub offset: u64,
    pub record: pb::Record,
}

/// A producer writing `chunk` records to each partition of `sensors` in turn, until stopped
/// or refused (its appliance went away).
#[derive(Debug)]
pub struct Producer {
    stop: Arc<AtomicBool>,
    /// Records acknowledged so far.
    acked: Arc<AtomicU64>,
    task: JoinHandle<(Vec<Acked>, Option<String>)>,
}

impl Producer {
    /// Records are numbered per partition from `from[partition]`.
    pub fn start(
        channel: Channel,
        origin: &str,
        from: Vec<u64>,
        chunk: u64,
        pause: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let acked_count = Arc::new(AtomicU64::new(0));
        let counter = acked_count.clone();
        let origin = origin.to_owned();
        let task = tokio::spawn(async move {
            let mut client = RecordsClient::new(channel);
            let mut next = from;
            let mut acked = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                for (partition, n) in next.iter_mut().enumerate() {
                    let partition = partition as u32;
                    let records: Vec<pb::Record> = (*n..*n + chunk)
                        .map(|n| record(&origin, partition, n))
                        .collect();
                    let produced = client
                        .produce(pb::ProduceRequest {
                            topic: "sensors".into(),
                            partition: Some(partition),
                            records: records.clone(),
                        })
                        .await;
                    match produced {
                        Ok(response) => {
                            for (position, record) in
                                response.into_inner().positions.iter().zip(records)
                            {
                                acked.push(Acked {
                                    partition: position.partition,
                                    offset: position.offset,
                                    record,
                                });
                            }
                            *n += chunk;
                            counter.fetch_add(chunk, Ordering::Relaxed);
                        }
                        Err(status) => return (acked, Some(status.to_string())),
                    }
                }
                tokio::time::sleep(pause).await;
            }
            (acked, None)
        });
        Self {
            stop,
            acked: acked_count,
            task,
        }
    }

    /// Waits until at least `records` were acknowledged.
    pub async fn wait_for(&self, records: u64) -> anyhow::Result<()> {
        let deadline = Deadline::new(format!("a producer's {records} records acknowledged"));
        loop {
            let acked = self.acked.load(Ordering::Relaxed);
            if acked >= records {
                return Ok(());
            }
            ensure!(!self.task.is_finished(), "the producer stopped");
            deadline.pause(acked).await?;
        }
    }

    pub async fn finish(self) -> anyhow::Result<(Vec<Acked>, Option<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

// ---------------------------------------------------------------------------------------
// Topics and mirrors over gRPC

/// Each partition's (log start, high watermark); none while the topic does not exist.
pub async fn positions(channel: &Channel, topic: &str) -> anyhow::Result<Option<Vec<(u64, u64)>>> {
    match TopicsClient::new(channel.clone())
        .get_topic(pb::GetTopicRequest { name: topic.into() })
        .await
    {
        Ok(topic) => Ok(Some(
            topic
                .into_inner()
                .partitions
                .iter()
                .map(|p| (p.log_start_offset, p.high_watermark))
                .collect(),
        )),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

pub async fn topic_names(channel: &Channel) -> anyhow::Result<Vec<String>> {
    Ok(TopicsClient::new(channel.clone())
        .list_topics(pb::ListTopicsRequest {})
        .await?
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect())
}

pub async fn mirrored_records(channel: &Channel, topic: &str) -> anyhow::Result<u64> {
    Ok(positions(channel, topic)
        .await?
        .unwrap_or_default()
        .iter()
        .map(|(_, end)| end)
        .sum())
}

/// Waits until `mirror` on `mirror_side` has the partitions and the high watermarks of
/// `topic` on `origin` (the origin must not be written meanwhile).
pub async fn wait_mirrored(
    origin: &Channel,
    topic: &str,
    mirror_side: &Channel,
    mirror: &str,
) -> anyhow::Result<()> {
    let deadline = Deadline::new(format!("{mirror} catching up with {topic}"));
    loop {
        let want = positions(origin, topic)
            .await?
            .with_context(|| format!("{topic} does not exist at its origin"))?;
        let have = positions(mirror_side, mirror).await?;
        let ends = |p: &[(u64, u64)]| p.iter().map(|(_, end)| *end).collect::<Vec<_>>();
        if have.as_deref().map(ends) == Some(ends(&want)) {
            return Ok(());
        }
        deadline.pause((&want, &have)).await?;
    }
}

/// The fields a mirror must keep of each record (the topic name is the mirror's own).
pub fn fields(record: &pb::ConsumedRecord) -> impl PartialEq + std::fmt::Debug + '_ {
    (
        record.partition,
        record.offset,
        &record.key,
        &record.value,
        &record.headers,
        record.timestamp_ms,
    )
}

/// Every partition of `mirror` holds exactly the records of `topic`, at the same offsets;
/// the number of records compared.
pub async fn assert_identical(
    origin: &Channel,
    topic: &str,
    mirror_side: &Channel,
    mirror: &str,
) -> anyhow::Result<usize> {
    let want = positions(origin, topic).await?.context("no origin topic")?;
    let have = positions(mirror_side, mirror)
        .await?
        .with_context(|| format!("no mirror {mirror}"))?;
    assert_eq!(
        have, want,
        "{mirror} and {topic}: (log start, high watermark) per partition"
    );
    let mut compared = 0;
    for partition in 0..want.len() as u32 {
        let original = fetch_all(origin, topic, partition).await?;
        let copy = fetch_all(mirror_side, mirror, partition).await?;
        assert_eq!(
            copy.len(),
            original.len(),
            "{mirror}/{partition}: records, against {topic}/{partition}"
        );
        for (a, b) in original.iter().zip(&copy) {
            assert_eq!(
                fields(b),
                fields(a),
                "{mirror}/{partition} differs from {topic}/{partition} at offset {}",
                a.offset
            );
        }
        // Offsets are dense from the log start: nothing skipped, nothing twice.
        let start = want[partition as usize].0;
        for (i, record) in original.iter().enumerate() {
            assert_eq!(record.offset, start + i as u64, "{topic}/{partition}");
        }
        compared += original.len();
    }
    Ok(compared)
}

// ---------------------------------------------------------------------------------------
// Link status

pub fn link_status(edge: &Daemon, dir: &Path, link: &str) -> anyhow::Result<Value> {
    cli_json(edge, dir, &["link", "status", link, "--json"])
}

/// The partitions of a status (an edge's link or a hub's edge) in one direction and topic.
pub fn status_partitions<'a>(status: &'a Value, direction: &str, topic: &str) -> Vec<&'a Value> {
    status["partitions"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|p| p["direction"] == direction && p["topic"] == topic)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the edge's link is connected and, for each listed (direction, topic,
/// partitions), reports every partition in sync with no gap.
pub async fn wait_link_in_sync(
    edge: &Daemon,
    dir: &Path,
    mirrored: &[(&str, &str, usize)],
) -> anyhow::Result<Value> {
    let deadline = Deadline::new("the link status showing every partition in sync");
    loop {
        let status = link_status(edge, dir, LINK)?;
        let mut done = status["state"] == "connected";
        for &(direction, topic, partitions) in mirrored {
            let listed = status_partitions(&status, direction, topic);
            for partition in &listed {
                assert_eq!(partition["gap_records"], 0, "a gap: {status:#}");
            }
            done &= listed.len() == partitions
                && listed.iter().all(|p| {
                    p["lag_records"] == 0
                        && p["last_error"] == ""
                        && p["origin_high_watermark"] == p["mirror_acknowledged"]
                });
        }
        if done {
            return Ok(status);
        }
        deadline.pause(&status).await?;
    }
}

/// The hub's view of one edge (`appliance link edges --json`).
pub fn hub_edge(hub: &Daemon, dir: &Path, edge: &str) -> anyhow::Result<Option<Value>> {
    let edges = cli_json(hub, dir, &["link", "edges", "--json"])?;
    Ok(edges
        .as_array()
        .context("link edges --json is an array")?
        .iter()
        .find(|e| e["edge_id"] == edge)
        .cloned())
}

pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}
