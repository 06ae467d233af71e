//! Power-cut style tests of the log: a child process appends with several producers and prints
//! every acknowledgement; the parent SIGKILLs it mid-stream, sometimes leaves a torn batch at
//! the end of a segment, reopens the data directory and checks that every acknowledged record
//! is there, at its offset, and that nothing after a torn tail is served.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::Context;
use appliance::log::{
    Compression, Log, LogConfig, LogError, Offset, PartitionId, Record, Timestamp, TopicConfig,
    TopicName, decode_all, encode,
};
use appliance::meta::Meta;
use bytes::Bytes;

const CHILD_DIR_ENV: &str = "APPLIANCE_CRASH_CHILD_DIR";
const PRODUCERS: u32 = 8;
const PARTITIONS: u32 = 2;
const TOPIC: &str = "crash";

fn value(producer: u32, sequence: u64, index: usize) -> String {
    format!("p{producer}-s{sequence}-r{index}")
}

fn records_for(producer: u32, sequence: u64) -> Vec<Record> {
    let count = 1 + (sequence as usize * 7 + producer as usize) % 20;
    (0..count)
        .map(|index| Record {
            key: Some(Bytes::from(format!("p{producer}"))),
            value: Some(Bytes::from(value(producer, sequence, index))),
            headers: Vec::new(),
            timestamp: Timestamp::now(),
        })
        .collect()
}

async fn open_log(dir: &Path) -> anyhow::Result<Log> {
    let meta = Meta::open(&dir.join("meta"))?;
    Ok(Log::open(LogConfig::new(dir.to_path_buf()), meta).await?)
}

/// The child: appends forever from several producers, printing `ACK partition base producer
/// sequence` once each append is acknowledged. Only runs when the parent starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sigkill_mid_batch_loses_no_acknowledged_record"]
async fn child_writer() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::var(CHILD_DIR_ENV).context("run by the parent test")?);
    let log = open_log(&dir).await?;
    let topic = TopicName::new(TOPIC)?;
    let config = TopicConfig {
        partitions: PARTITIONS,
        segment_bytes: 32 * 1024,
        retention_ms: None,
        ..TopicConfig::default()
    };
    match log.create_topic(topic.clone(), config).await {
        Ok(()) | Err(LogError::TopicExists { .. }) => {}
        Err(error) => return Err(error.into()),
    }
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut producers = tokio::task::JoinSet::new();
    for producer in 0..PRODUCERS {
        let log = log.clone();
        let topic = topic.clone();
        let stdout = stdout.clone();
        producers.spawn(async move {
            let partition = PartitionId(producer % PARTITIONS);
            for sequence in 0.. {
                let compression =
                    [Compression::None, Compression::Zstd, Compression::Lz4][sequence as usize % 3];
                let batch = encode(&records_for(producer, sequence), compression)?;
                let outcome = log.append(&topic, partition, batch).await?;
                let mut out = stdout
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                writeln!(
                    out,
                    "ACK {} {} {producer} {sequence}",
                    partition.0, outcome.base_offset
                )?;
                out.flush()?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = producers.join_next().await {
        joined??;
    }
    Ok(())
}

/// What the parent saw acknowledged: (partition, offset) -> value.
type Acknowledged = BTreeMap<(u32, u64), String>;

fn run_child_until_killed(
    dir: &Path,
    acks_before_kill: usize,
    acked: &mut Acknowledged,
) -> anyhow::Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut seen = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let fields: Vec<u64> = rest
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("ack line {line:?}"))?;
        let [partition, base, producer, sequence] = fields[..] else {
            anyhow::bail!("ack line {line:?}");
        };
        for index in 0..records_for(producer as u32, sequence).len() {
            acked.insert(
                (partition as u32, base + index as u64),
                value(producer as u32, sequence, index),
            );
        }
        seen += 1;
        if seen == acks_before_kill {
            break;
        }
    }
    // SIGKILL: no destructor, no flush, no shutdown path runs.
    child.kill()?;
    child.wait()?;
    anyhow::ensure!(seen == acks_before_kill, "child stopped after {seen} acks");
    Ok(())
}

fn active_segment(dir: &Path, partition: u32) -> anyhow::Result<PathBuf> {
    let partition_dir = dir.join("topics").join(TOPIC).join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(partition_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    logs.pop().context("no segment")
}

/// Every record of a partition, from its start to its high watermark.
async fn read_partition(log: &Log, partition: u32) -> anyhow::Result<Vec<(u64, String)>> {
    let topic = TopicName::new(TOPIC)?;
    let handle = log.partition(&topic, PartitionId(partition))?;
    let mut offset = Offset(0);
    let mut out = Vec::new();
    while offset < handle.high_watermark() {
        let chunk = handle.read(offset, 64 * 1024)?;
        anyhow::ensure!(!chunk.batches.is_empty(), "no progress at {offset}");
        for record in decode_all(chunk.batches)? {
            let value = record.record.value.context("value")?;
            out.push((record.offset.0, String::from_utf8(value.to_vec())?));
        }
        offset = chunk.next_offset;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut acked = Acknowledged::new();
    for round in 0..4 {
        let mut round_acks = Acknowledged::new();
        let dir_path = dir.path().to_path_buf();
        let acks = 150 + round * 100;
        round_acks = tokio::task::spawn_blocking(move || {
            run_child_until_killed(&dir_path, acks, &mut round_acks).map(|()| round_acks)
        })
        .await??;
        acked.extend(round_acks);

        let torn = round % 2 == 1;
        let mut high_watermarks = Vec::new();
        if torn {
            // What a cut in the middle of a write leaves: the first part of a batch.
            let log = open_log(dir.path()).await?;
            for partition in 0..PARTITIONS {
                let topic = TopicName::new(TOPIC)?;
                high_watermarks.push(
                    log.partition(&topic, PartitionId(partition))?
                        .high_watermark(),
                );
            }
            log.close().await?;
            drop(log);
            let segment = active_segment(dir.path(), 0)?;
            let mut bytes = std::fs::read(&segment)?;
            let batch = encode(&records_for(99, 0), Compression::None)?;
            bytes.extend_from_slice(&batch[..batch.len() * 2 / 3]);
            std::fs::write(&segment, bytes)?;
        }

        let log = open_log(dir.path()).await?;
        for partition in 0..PARTITIONS {
            let stored: BTreeMap<u64, String> =
                read_partition(&log, partition).await?.into_iter().collect();
            let expected_offsets: Vec<u64> = (0..stored.len() as u64).collect();
            assert_eq!(
                stored.keys().copied().collect::<Vec<_>>(),
                expected_offsets,
                "offsets are dense"
            );
            for ((p, offset), value) in acked.range((partition, 0)..(partition + 1, 0)) {
                assert_eq!(
                    stored.get(offset),
                    Some(value),
                    "acknowledged record {p}/{offset} after round {round}"
                );
            }
            if torn {
                let topic = TopicName::new(TOPIC)?;
                let handle = log.partition(&topic, PartitionId(partition))?;
                assert_eq!(
                    handle.high_watermark(),
                    high_watermarks[partition as usize],
                    "torn batch not served"
                );
                assert!(
                    stored.values().all(|v| !v.starts_with("p99-")),
                    "torn batch not served"
                );
            }
        }
        log.close().await?;
    }
    assert!(
        acked.len() > 1000,
        "the test acknowledged {} records",
        acked.len()
    );
    Ok(())
}
