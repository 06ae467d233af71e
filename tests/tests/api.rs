//! The gRPC API and the CLI that speaks it, against a real `appliance run` process: topics,
//! 100,000 keyed records produced and consumed back, consumer groups splitting partitions and
//! rebalancing without losing or repeating a record, committed offsets across a restart, the
//! status of every kind of bad input, health, reflection and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use appliance_e2e::Channel;
use appliance_e2e::{Daemon, fetch_all};
use appliance_proto::v1 as pb;
use appliance_proto::v1::groups_client::GroupsClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use nix::sys::signal::Signal;
use tonic::Code;

fn record(key: &str, value: &str) -> pb::Record {
    pb::Record {
        key: Some(key.as_bytes().to_vec().into()),
        value: Some(value.as_bytes().to_vec().into()),
        headers: vec![],
        timestamp_ms: 0,
    }
}

async fn create_topic(channel: &Channel, name: &str, partitions: u32) -> anyhow::Result<()> {
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            config: Some(pb::TopicConfig {
                partitions: Some(partitions),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// Produces `count` records numbered from `from`, keyed over 1000 keys, in requests of 1000.
async fn produce_numbered(
    channel: &Channel,
    topic: &str,
    from: usize,
    count: usize,
) -> anyhow::Result<u64> {
    let requests: Vec<pb::ProduceRequest> = (from..from + count)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| pb::ProduceRequest {
            topic: topic.into(),
            partition: None,
            records: chunk
                .iter()
                .map(|i| record(&format!("key-{}", i % 1000), &i.to_string()))
                .collect(),
        })
        .collect();
    let response = RecordsClient::new(channel.clone())
        .produce_stream(tokio_stream::iter(requests))
        .await?
        .into_inner();
    Ok(response.records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_100k_keyed_records_and_consume_them_back_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let created = daemon.cli(
        dir.path(),
        &["topic", "create", "events", "--partitions", "4"],
        b"",
    )?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let channel = daemon.channel().await?;

    // Keys land where Kafka's murmur2 partitioner puts them (Kafka's own test vectors).
    let placed = RecordsClient::new(channel.clone())
        .produce(pb::ProduceRequest {
            topic: "events".into(),
            partition: None,
            records: vec![record("21", "a"), record("foobar", "b"), record("abc", "c")],
        })
        .await?
        .into_inner();
    let partitions: Vec<u32> = placed.positions.iter().map(|p| p.partition).collect();
    assert_eq!(
        partitions,
        [0, 2, 3],
        "(murmur2 & 0x7fffffff) % 4 for 21, foobar, abc"
    );

    assert_eq!(
        produce_numbered(&channel, "events", 0, 100_000).await?,
        100_000
    );

    let mut total = 0;
    let mut last_per_key: BTreeMap<String, i64> = BTreeMap::new();
    for partition in 0..4 {
        let records = fetch_all(&channel, "events", partition).await?;
        for (expected, record) in records.iter().enumerate() {
            assert_eq!(
                record.offset, expected as u64,
                "offsets are dense in partition {partition}"
            );
        }
        for record in records
            .iter()
            .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"key-")))
        {
            let key = String::from_utf8(record.key.clone().context("key")?.to_vec())?;
            let number: i64 =
                String::from_utf8(record.value.clone().context("value")?.to_vec())?.parse()?;
            let previous = last_per_key.insert(key.clone(), number).unwrap_or(-1);
            assert!(number > previous, "{key}: {number} after {previous}");
            assert_eq!(
                number % 1000,
                key[4..].parse::<i64>()?,
                "record under its own key"
            );
            total += 1;
        }
    }
    assert_eq!(total, 100_000);
    assert_eq!(
        last_per_key.len(),
        1000,
        "every key seen, each in one partition"
    );

    // The CLI reads the same data.
    let consumed = daemon.cli(
        dir.path(),
        &[
            "consume",
            "events",
            "--partition",
            "1",
            "--from-beginning",
            "--max",
            "10",
            "--json",
        ],
        b"",
    )?;
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(consumed.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 10);
    assert!(lines.iter().all(|l| l["partition"] == 1));
    assert_eq!(lines[0]["offset"], 0);

    let listed = daemon.cli(dir.path(), &["topic", "list", "--json"], b"")?;
    let topics: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let events = topics
        .as_array()
        .and_then(|topics| topics.iter().find(|topic| topic["name"] == "events"))
        .context("events listed")?;
    let records: u64 = events["partitions"]
        .as_array()
        .context("partitions")?
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap_or_default())
        .sum();
    assert_eq!(records, 100_003);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_produces_stdin_lines_with_keys_from_a_json_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    daemon.cli(
        dir.path(),
        &["topic", "create", "readings", "--partitions", "3"],
        b"",
    )?;
    let input: String = (0..50)
        .map(|i| format!("{{\"device\":\"d{}\",\"t\":{i}}}\n", i % 5))
        .collect();
    let produced = daemon.cli(
        dir.path(),
        &["produce", "readings", "--key-field", "device"],
        input.as_bytes(),
    )?;
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    assert_eq!(String::from_utf8(produced.stdout)?.trim(), "50");
    let consumed = daemon.cli(
        dir.path(),
        &[
            "consume",
            "readings",
            "--from-beginning",
            "--timeout-ms",
            "1500",
            "--json",
        ],
        b"",
    )?;
    let records: Vec<serde_json::Value> = String::from_utf8(consumed.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(records.len(), 50);
    let mut partition_of: BTreeMap<String, u64> = BTreeMap::new();
    for record in &records {
        let key = record["key"].as_str().context("key")?.to_owned();
        let partition = record["partition"].as_u64().context("partition")?;
        assert_eq!(
            *partition_of.entry(key).or_insert(partition),
            partition,
            "one key, one partition"
        );
    }
    let bad = daemon.cli(
        dir.path(),
        &["produce", "readings", "--key-field", "device"],
        b"{\"device\":\"x\"}\nnot json\n",
    )?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    Ok(())
}

/// Each member's id and partitions, at every assignment it received.
type Assignments = Arc<Mutex<Vec<(String, Vec<u32>)>>>;

/// A consumer-group member driven like an application: prints (records) and commits each
/// message before taking the next.
async fn member(
    channel: Channel,
    group: &'static str,
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
    assignments: Assignments,
    stop: tokio_util_stop::Stop,
) -> anyhow::Result<()> {
    let mut stream = RecordsClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {
            group: group.into(),
            topics: vec!["work".into()],
            start: pb::StartPosition::Earliest as i32,
            max_bytes: 4096,
            session_timeout_ms: 0,
        })
        .await?
        .into_inner();
    let mut groups = GroupsClient::new(channel);
    let mut member_id = String::new();
    loop {
        let message = tokio::select! {
            () = stop.wait() => return Ok(()),
            message = stream.message() => message?,
        };
        let Some(message) = message.and_then(|m| m.message) else {
            return Ok(());
        };
        match message {
            pb::subscribe_response::Message::Assignment(assignment) => {
                member_id = assignment.member_id.clone();
                let partitions = assignment.partitions.iter().map(|p| p.partition).collect();
                assignments
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((member_id.clone(), partitions));
            }
            pb::subscribe_response::Message::Records(batch) => {
                let last = batch.records.last().context("non-empty batch")?;
                let commit = pb::OffsetCommit {
                    topic: last.topic.clone(),
                    partition: last.partition,
                    offset: last.offset + 1,
                    metadata: String::new(),
                };
                seen.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .extend(batch.records.iter().map(|r| (r.partition, r.offset)));
                groups
                    .commit_offsets(pb::CommitOffsetsRequest {
                        group: group.into(),
                        member_id: member_id.clone(),
                        offsets: vec![commit],
                    })
                    .await?;
            }
        }
    }
}

/// A tiny stop signal shared by the members of a test.
mod tokio_util_stop {
    #[derive(Clone)]
    pub struct Stop(tokio::sync::watch::Receiver<bool>);
    impl Stop {
        pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
            let (tx, rx) = tokio::sync::watch::channel(false);
            (tx, Self(rx))
        }
        pub async fn wait(&self) {
            let mut rx = self.0.clone();
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    for _ in 0..600 {
        if condition() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_partitions_and_a_rebalance_loses_and_repeats_nothing()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    create_topic(&channel, "work", 6).await?;
    produce_numbered(&channel, "work", 0, 6000).await?;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let assignments = Arc::new(Mutex::new(Vec::new()));
    let (stop_all, stop) = tokio_util_stop::Stop::new();
    let spawn_member = || {
        tokio::spawn(member(
            channel.clone(),
            "workers",
            seen.clone(),
            assignments.clone(),
            stop.clone(),
        ))
    };
    let a = spawn_member();
    let b = spawn_member();
    let count = |seen: &Arc<Mutex<Vec<(u32, u64)>>>| seen.lock().map_or(0, |s| s.len());
    wait_until("two members sharing the work", || count(&seen) >= 1500).await?;
    let described = GroupsClient::new(channel.clone())
        .describe_group(pb::DescribeGroupRequest {
            group: "workers".into(),
        })
        .await?
        .into_inner();
    assert_eq!(described.members.len(), 2);
    let owned: Vec<usize> = described.members.iter().map(|m| m.assigned.len()).collect();
    assert_eq!(owned, [3, 3], "range assignment splits 6 partitions");

    // A third member joins while records keep coming.
    let c = spawn_member();
    produce_numbered(&channel, "work", 6000, 6000).await?;
    wait_until("all 12000 records", || count(&seen) >= 12_000).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_all.send(true);
    for member in [a, b, c] {
        member.await??;
    }

    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let unique: BTreeSet<(u32, u64)> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no record delivered twice");
    assert_eq!(unique.len(), 12_000, "no record lost");
    let per_partition: BTreeMap<u32, u64> = unique.iter().fold(BTreeMap::new(), |mut m, (p, _)| {
        *m.entry(*p).or_default() += 1;
        m
    });
    for partition in 0..6 {
        let hw = fetch_all(&channel, "work", partition).await?.len() as u64;
        assert_eq!(
            per_partition.get(&partition),
            Some(&hw),
            "partition {partition} complete"
        );
    }
    let assignments = assignments
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let members: BTreeSet<&String> = assignments.iter().map(|(m, _)| m).collect();
    assert_eq!(members.len(), 3);
    assert!(
        assignments.iter().any(|(_, p)| p.len() == 2),
        "after the third member joined, members own 2 partitions each: {assignments:?}"
    );
    let described = GroupsClient::new(channel.clone())
        .describe_group(pb::DescribeGroupRequest {
            group: "workers".into(),
        })
        .await?
        .into_inner();
    assert!(
        described.offsets.iter().all(|o| o.lag == 0),
        "{:?}",
        described.offsets
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &["--data-dir", "data"])?;
    daemon.cli(
        dir.path(),
        &["topic", "create", "jobs", "--partitions", "2"],
        b"",
    )?;
    let lines: String = (0..20).map(|i| format!("job-{i}\n")).collect();
    daemon.cli(dir.path(), &["produce", "jobs"], lines.as_bytes())?;
    let first = daemon.cli(
        dir.path(),
        &[
            "consume",
            "jobs",
            "--group",
            "g",
            "--from-beginning",
            "--timeout-ms",
            "1500",
        ],
        b"",
    )?;
    assert_eq!(String::from_utf8(first.stdout)?.lines().count(), 20);
    let before = daemon.cli(dir.path(), &["group", "describe", "g", "--json"], b"")?;
    let before: serde_json::Value = serde_json::from_slice(&before.stdout)?;
    let (status, log) = daemon.stop_with(Signal::SIGTERM)?;
    assert!(status.success(), "{log}");

    let daemon = Daemon::start_on_free_ports(dir.path(), &["--data-dir", "data"])?;
    let after = daemon.cli(dir.path(), &["group", "describe", "g", "--json"], b"")?;
    let after: serde_json::Value = serde_json::from_slice(&after.stdout)?;
    assert_eq!(before["offsets"], after["offsets"]);
    let committed: u64 = after["offsets"]
        .as_array()
        .context("offsets")?
        .iter()
        .map(|o| o["committed_offset"].as_u64().unwrap_or_default())
        .sum();
    assert_eq!(committed, 20);
    daemon.cli(dir.path(), &["produce", "jobs"], b"job-20\njob-21\n")?;
    let second = daemon.cli(
        dir.path(),
        &["consume", "jobs", "--group", "g", "--timeout-ms", "1500"],
        b"",
    )?;
    let mut values: Vec<String> = String::from_utf8(second.stdout)?
        .lines()
        .map(str::to_owned)
        .collect();
    values.sort();
    assert_eq!(
        values,
        ["job-20", "job-21"],
        "only what came after the commit"
    );

    let reset = daemon.cli(
        dir.path(),
        &[
            "group",
            "reset",
            "g",
            "--topic",
            "jobs",
            "--to-earliest",
            "--json",
        ],
        b"",
    )?;
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let reset: serde_json::Value = serde_json::from_slice(&reset.stdout)?;
    let offsets = reset.as_array().context("offsets")?;
    assert!(
        offsets.iter().all(|o| o["committed_offset"] == 0),
        "{reset}"
    );
    let lag: u64 = offsets
        .iter()
        .map(|o| o["lag"].as_u64().unwrap_or_default())
        .sum();
    assert_eq!(lag, 22, "{reset}");
    Ok(())
}

fn code_of<T>(result: Result<T, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    let mut topics = TopicsClient::new(channel.clone());
    let mut records = RecordsClient::new(channel.clone());
    let mut groups = GroupsClient::new(channel.clone());
    topics
        .create_topic(pb::CreateTopicRequest {
            name: "small".into(),
            config: Some(pb::TopicConfig {
                partitions: Some(2),
                max_message_bytes: Some(1024),
                ..Default::default()
            }),
        })
        .await?;
    records
        .produce(pb::ProduceRequest {
            topic: "small".into(),
            partition: Some(0),
            records: vec![record("k", "v")],
        })
        .await?;

    let cases: Vec<(&str, (Code, String), Code, &str)> = vec![
        (
            "bad topic name",
            code_of(
                topics
                    .create_topic(pb::CreateTopicRequest {
                        name: "no spaces".into(),
                        config: None,
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "name: invalid topic name",
        ),
        (
            "too many partitions",
            code_of(
                topics
                    .create_topic(pb::CreateTopicRequest {
                        name: "t".into(),
                        config: Some(pb::TopicConfig {
                            partitions: Some(5000),
                            ..Default::default()
                        }),
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "partitions must be 1 to 1024",
        ),
        (
            "bad retention",
            code_of(
                topics
                    .create_topic(pb::CreateTopicRequest {
                        name: "t".into(),
                        config: Some(pb::TopicConfig {
                            retention_ms: Some(-5),
                            ..Default::default()
                        }),
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "config.retention_ms",
        ),
        (
            "existing topic",
            code_of(
                topics
                    .create_topic(pb::CreateTopicRequest {
                        name: "small".into(),
                        config: None,
                    })
                    .await,
            ),
            Code::AlreadyExists,
            "already exists",
        ),
        (
            "missing topic",
            code_of(
                topics
                    .get_topic(pb::GetTopicRequest {
                        name: "nope".into(),
                    })
                    .await,
            ),
            Code::NotFound,
            "does not exist",
        ),
        (
            "produce to a missing topic",
            code_of(
                records
                    .produce(pb::ProduceRequest {
                        topic: "nope".into(),
                        partition: None,
                        records: vec![record("k", "v")],
                    })
                    .await,
            ),
            Code::NotFound,
            "does not exist",
        ),
        (
            "shrinking partitions",
            code_of(
                topics
                    .update_topic_config(pb::UpdateTopicConfigRequest {
                        name: "small".into(),
                        config: Some(pb::TopicConfig {
                            partitions: Some(1),
                            ..Default::default()
                        }),
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "partitions can be added, not removed",
        ),
        (
            "unknown partition",
            code_of(
                records
                    .produce(pb::ProduceRequest {
                        topic: "small".into(),
                        partition: Some(9),
                        records: vec![record("k", "v")],
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "has partitions 0 to 1, not 9",
        ),
        (
            "no records",
            code_of(
                records
                    .produce(pb::ProduceRequest {
                        topic: "small".into(),
                        partition: None,
                        records: vec![],
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "records:",
        ),
        (
            "oversized batch",
            code_of(
                records
                    .produce(pb::ProduceRequest {
                        topic: "small".into(),
                        partition: Some(0),
                        records: vec![record("k", &"x".repeat(2000))],
                    })
                    .await,
            ),
            Code::ResourceExhausted,
            "exceeds max-message-bytes 1024",
        ),
        (
            "fetch past the end",
            code_of(
                records
                    .fetch(pb::FetchRequest {
                        topic: "small".into(),
                        partition: 0,
                        offset: 50,
                        max_bytes: 0,
                        max_wait_ms: 0,
                    })
                    .await,
            ),
            Code::OutOfRange,
            "valid offsets are 0 to 1",
        ),
        (
            "bad group id",
            code_of(
                groups
                    .describe_group(pb::DescribeGroupRequest {
                        group: String::new(),
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "group: invalid group id",
        ),
        (
            "commit past the end",
            code_of(
                groups
                    .commit_offsets(pb::CommitOffsetsRequest {
                        group: "g".into(),
                        member_id: String::new(),
                        offsets: vec![pb::OffsetCommit {
                            topic: "small".into(),
                            partition: 0,
                            offset: 99,
                            metadata: String::new(),
                        }],
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "past the high watermark",
        ),
        (
            "commit by an unknown member",
            code_of(
                groups
                    .commit_offsets(pb::CommitOffsetsRequest {
                        group: "g".into(),
                        member_id: "ghost".into(),
                        offsets: vec![pb::OffsetCommit {
                            topic: "small".into(),
                            partition: 0,
                            offset: 1,
                            metadata: String::new(),
                        }],
                    })
                    .await,
            ),
            Code::NotFound,
            "member ghost is not in group g",
        ),
        (
            "reset without a target",
            code_of(
                groups
                    .reset_offsets(pb::ResetOffsetsRequest {
                        group: "g".into(),
                        topic: "small".into(),
                        partitions: vec![],
                        to: None,
                    })
                    .await,
            ),
            Code::InvalidArgument,
            "to:",
        ),
    ];
    for (what, (code, message), expected_code, expected_text) in cases {
        assert_eq!(code, expected_code, "{what}: {message}");
        assert!(
            message.contains(expected_text),
            "{what}: {message:?} lacks {expected_text:?}"
        );
    }

    // A member is active: the group's offsets cannot be reset under it.
    let mut stream = records
        .subscribe(pb::SubscribeRequest {
            group: "busy".into(),
            topics: vec!["small".into()],
            start: 0,
            max_bytes: 0,
            session_timeout_ms: 0,
        })
        .await?
        .into_inner();
    stream.message().await?;
    let (code, message) = code_of(
        groups
            .reset_offsets(pb::ResetOffsetsRequest {
                group: "busy".into(),
                topic: "small".into(),
                partitions: vec![],
                to: Some(pb::reset_offsets_request::To::Earliest(true)),
            })
            .await,
    );
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("active members"), "{message}");
    drop(stream);

    // The CLI: usage errors exit 2, failures exit 1, each with one line on stderr.
    for (args, code, text) in [
        (
            &["consume", "small", "--offset", "3"][..],
            2,
            "--offset needs --partition",
        ),
        (
            &["topic", "describe", "nope"][..],
            1,
            "topic nope does not exist",
        ),
        (&["topic", "create", "small"][..], 1, "already exists"),
        (&["topic", "frobnicate"][..], 2, "unrecognized subcommand"),
        (
            &["group", "reset", "g", "--topic", "small"][..],
            2,
            "required",
        ),
    ] {
        let output = daemon.cli(dir.path(), args, b"")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(text), "{args:?}: {stderr}");
    }
    let unreachable = appliance_e2e::run_to_end(
        dir.path(),
        &["topic", "list", "--server", "http://127.0.0.1:1"],
    )?;
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unreachable.stderr)
            .contains("cannot reach the appliance at http://127.0.0.1:1")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_answer_stock_clients() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;

    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let records_health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "appliance.v1.Records".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        records_health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // What `grpcurl -plaintext ADDR list` asks.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.next().await.context("a reflection response")??;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection response");
    };
    let services: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "appliance.v1.Topics",
        "appliance.v1.Records",
        "appliance.v1.Groups",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(expected),
            "{expected} missing from {services:?}"
        );
    }

    // Older tools (grpcurl before 1.8.8, Python's grpcio-reflection) ask v1alpha.
    {
        use tonic_reflection::pb::v1alpha as alpha;
        let request = alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut responses =
            alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
                .server_reflection_info(tokio_stream::iter(vec![request]))
                .await?
                .into_inner();
        let response = responses.next().await.context("a v1alpha response")??;
        let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            response.message_response
        else {
            anyhow::bail!("unexpected v1alpha reflection response");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "appliance.v1.Records")
        );
    }

    create_topic(&channel, "m", 2).await?;
    produce_numbered(&channel, "m", 0, 10).await?;
    let _ = daemon.cli(
        dir.path(),
        &[
            "consume",
            "m",
            "--group",
            "lagging",
            "--from-beginning",
            "--max",
            "1",
        ],
        b"",
    )?;
    let metrics = daemon.scrape_metrics().await?;
    for expected in [
        "appliance_log_appended_records_total{topic=\"m\",partition=\"0\"}",
        "appliance_log_high_watermark{topic=\"m\",partition=\"1\"}",
        "appliance_group_lag{group=\"lagging\",topic=\"m\"",
        "appliance_grpc_request_duration_seconds_count{method=\"ProduceStream\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    Ok(())
}
