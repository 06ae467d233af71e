//! `appliance bench log`: the disk's own sequential write bandwidth with fdatasync, then the
//! log's durable append throughput and its read throughput, all in one run on the same disk,
//! so the figures can be compared with each other.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Args;

use super::{MB, open_log, scratch_dir};

use crate::log::{
    Compression, Log, Offset, Partition, PartitionId, Record, Timestamp, TopicConfig, TopicName,
};

#[derive(Debug, Args)]
pub struct LogBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Seconds each append case runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Size of each producer's batches, in KiB (as a Kafka producer's batch.size). Each
    /// producer has one batch per partition in flight, so this sets how much data one fsync
    /// can cover.
    #[arg(long, default_value_t = 256)]
    batch_kib: usize,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

/// What durable appends reached in one case.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(super) struct AppendFigures {
    pub mb_s: f64,
    pub records_s: f64,
}

#[derive(Debug, serde::Serialize)]
struct CaseResult {
    record_bytes: usize,
    producers: usize,
    partitions: u32,
    #[serde(flatten)]
    appended: AppendFigures,
    /// The disk's own bandwidth, measured just before the case with one file per partition.
    disk_mb_s: f64,
}

/// The disk baseline writes in chunks of this size, each followed by fdatasync: the pattern
/// of a group commit that has gathered a few MiB.
const DISK_CHUNK: usize = 4 * 1024 * 1024;

pub async fn log_bench(args: LogBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(args.batch_kib >= 1, "--batch-kib must be at least 1");
    let scratch = scratch_dir(&args.dir)?;
    let case_time = Duration::from_secs_f64(args.seconds);
    let baseline_time = case_time / 2;
    let batch_bytes = args.batch_kib * 1024;

    println!(
        "appliance bench log: {} s per case, producer batches of {} KiB, in {}",
        args.seconds,
        args.batch_kib,
        scratch.path().display()
    );
    println!(
        "disk: sequential write + fdatasync every 4 MiB, measured right before each case with as"
    );
    println!("many files as the case has partitions (this machine's disk speed drifts over time)");
    println!();

    let log = open_log(scratch.path()).await?;

    println!(
        "{:>8} {:>10} {:>11} {:>10} {:>14} {:>11} {:>8}",
        "record", "producers", "partitions", "MB/s", "records/s", "disk MB/s", "of disk"
    );
    let mut cases = Vec::new();
    for record_bytes in [100, 1024] {
        for partitions in [1, 8] {
            for producers in [1, 64] {
                let disk_mb_s = disk_baseline(scratch.path(), partitions as usize, baseline_time)?;
                let appended = append_case(
                    &log,
                    record_bytes,
                    producers,
                    partitions,
                    batch_bytes,
                    case_time,
                )
                .await?;
                let result = CaseResult {
                    record_bytes,
                    producers,
                    partitions,
                    appended,
                    disk_mb_s,
                };
                println!(
                    "{:>6} B {:>10} {:>11} {:>10.1} {:>14.0} {:>11.1} {:>7.0}%",
                    result.record_bytes,
                    result.producers,
                    result.partitions,
                    appended.mb_s,
                    appended.records_s,
                    disk_mb_s,
                    100.0 * appended.mb_s / disk_mb_s
                );
                cases.push(result);
            }
        }
    }

    let read_topic = case_topic(1024, 64, 1)?;
    let (read_mb_s, read_bytes) = read_case(&log, &read_topic)?;
    println!();
    println!(
        "read: sequential, whole batches with CRC check, {:.0} MB from page cache: {read_mb_s:>10.1} MB/s",
        read_bytes as f64 / MB
    );
    let compaction = compaction_case(&log).await?;
    println!(
        "compaction: {:.0} MB of sealed segments ({} keys, each written {} times) in {:.2} s: \
         {:.1} MB/s, {:.0}% of a plain read of the same partition ({:.1} MB/s); {:.1} MB left",
        compaction.sealed_bytes as f64 / MB,
        COMPACTION_KEYS,
        COMPACTION_WRITES_PER_KEY,
        compaction.seconds,
        compaction.mb_s,
        100.0 * compaction.mb_s / compaction.plain_read_mb_s,
        compaction.plain_read_mb_s,
        compaction.bytes_after as f64 / MB,
    );
    log.close().await?;

    let find = |record_bytes, producers, partitions| {
        cases.iter().find(|c| {
            c.record_bytes == record_bytes && c.producers == producers && c.partitions == partitions
        })
    };
    let (append_mb_s_1k_64p, disk_mb_s) =
        find(1024, 64, 1).map_or((0.0, 0.0), |c| (c.appended.mb_s, c.disk_mb_s));
    let append_rps_100b_8p = find(100, 64, 8).map_or(0.0, |c| c.appended.records_s);
    println!();
    println!("targets:");
    println!(
        "  1 KiB records, 64 producers, 1 partition: {append_mb_s_1k_64p:.1} MB/s, {:.0}% of the disk's {disk_mb_s:.1} MB/s (target >= 80%)",
        100.0 * append_mb_s_1k_64p / disk_mb_s,
    );
    println!(
        "  100 B records, 64 producers, 8 partitions: {append_rps_100b_8p:.0} records/s (target >= 1000000)"
    );
    println!("  sequential read: {read_mb_s:.0} MB/s (target >= 1000)");
    if args.json {
        let summary = serde_json::json!({
            "disk_mb_s": disk_mb_s,
            "append_mb_s_1k_64p": append_mb_s_1k_64p,
            "append_rps_100b_8p": append_rps_100b_8p,
            "read_mb_s": read_mb_s,
            "compaction": compaction,
            "batch_kib": args.batch_kib,
            "seconds_per_case": args.seconds,
            "cases": cases,
        });
        println!("{summary}");
    }
    Ok(())
}

const COMPACTION_KEYS: usize = 50_000;
const COMPACTION_WRITES_PER_KEY: usize = 12;

#[derive(Debug, serde::Serialize)]
struct CompactionFigures {
    sealed_bytes: u64,
    bytes_after: u64,
    seconds: f64,
    mb_s: f64,
    plain_read_mb_s: f64,
}

/// A compacted topic of [`COMPACTION_KEYS`] keys, each written [`COMPACTION_WRITES_PER_KEY`]
/// times in 16 MiB segments; one compaction pass over its sealed segments, beside a plain
/// read of the partition (both from the page cache).
async fn compaction_case(log: &Log) -> anyhow::Result<CompactionFigures> {
    let topic = TopicName::new("bench-compaction")?;
    log.create_topic(
        topic.clone(),
        TopicConfig {
            segment_bytes: 16 * 1024 * 1024,
            retention_ms: None,
            cleanup_policy: crate::log::CleanupPolicy::Compact,
            ..TopicConfig::default()
        },
    )
    .await?;
    let now = Timestamp::now();
    let writes: Vec<usize> = (0..COMPACTION_KEYS * COMPACTION_WRITES_PER_KEY).collect();
    for chunk in writes.chunks(2000) {
        let records: Vec<Record> = chunk
            .iter()
            .map(|n| Record {
                key: Some(Bytes::from(format!("device-{}", n % COMPACTION_KEYS))),
                value: Some(Bytes::from(format!(
                    r#"{{"reading":{n},"unit":"C","site":"plant-7","pad":"{}"}}"#,
                    "x".repeat(40)
                ))),
                headers: Vec::new(),
                timestamp: now,
            })
            .collect();
        log.append(
            &topic,
            PartitionId(0),
            crate::log::encode(&records, Compression::None)?,
        )
        .await?;
    }
    let (plain_read_mb_s, _) = read_case(log, &topic)?;
    let partition = log.partition(&topic, PartitionId(0))?;
    let started = Instant::now();
    let report = partition.compact(std::time::SystemTime::now())?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(CompactionFigures {
        sealed_bytes: report.bytes_before,
        bytes_after: report.bytes_after,
        seconds,
        mb_s: report.bytes_before as f64 / MB / seconds,
        plain_read_mb_s,
    })
}

/// Appends `DISK_CHUNK`s to `streams` growing files at once, each with fdatasync after every
/// chunk, for `duration` (at least one chunk each); returns the total MB/s.
pub(super) fn disk_baseline(dir: &Path, streams: usize, duration: Duration) -> anyhow::Result<f64> {
    let chunks: Vec<Vec<u8>> = (0..streams).map(|s| baseline_chunk(s as u64)).collect();
    let results: Vec<anyhow::Result<(u64, Duration)>> = std::thread::scope(|scope| {
        let writers: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(stream, chunk)| {
                scope.spawn(move || -> anyhow::Result<(u64, Duration)> {
                    let path = dir.join(format!("disk-baseline-{stream}"));
                    let file = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let started = Instant::now();
                    let mut written = 0u64;
                    loop {
                        file.write_all_at(chunk, written)?;
                        file.sync_data()?;
                        written += chunk.len() as u64;
                        if started.elapsed() >= duration {
                            break;
                        }
                    }
                    let elapsed = started.elapsed();
                    drop(file);
                    std::fs::remove_file(&path)?;
                    Ok((written, elapsed))
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("baseline writer panicked")))
            })
            .collect()
    });
    let mut total = 0u64;
    let mut longest = Duration::ZERO;
    for result in results {
        let (written, elapsed) = result?;
        total += written;
        longest = longest.max(elapsed);
    }
    Ok(total as f64 / MB / longest.as_secs_f64())
}

/// Pseudo-random bytes, so no layer below can shortcut a constant pattern.
fn baseline_chunk(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..DISK_CHUNK / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

fn case_topic(record_bytes: usize, producers: usize, partitions: u32) -> anyhow::Result<TopicName> {
    Ok(TopicName::new(format!(
        "bench-{record_bytes}-{producers}-{partitions}"
    ))?)
}

/// One pre-encoded batch per case: producers append copies of it, the log assigns offsets.
pub(super) fn template_batch(record_bytes: usize, batch_bytes: usize) -> anyhow::Result<Bytes> {
    let value = Bytes::from(vec![b'x'; record_bytes]);
    let records: Vec<Record> = (0..(batch_bytes / (record_bytes + 10)).max(1))
        .map(|_| Record {
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp: Timestamp::now(),
        })
        .collect();
    Ok(crate::log::encode(&records, Compression::None)?.freeze())
}

pub(super) async fn append_case(
    log: &Log,
    record_bytes: usize,
    producers: usize,
    partitions: u32,
    batch_bytes: usize,
    duration: Duration,
) -> anyhow::Result<AppendFigures> {
    let topic = case_topic(record_bytes, producers, partitions)?;
    log.create_topic(
        topic.clone(),
        TopicConfig {
            partitions,
            max_message_bytes: (batch_bytes as u32).saturating_mul(2).max(1024 * 1024),
            ..TopicConfig::default()
        },
    )
    .await?;
    let template = template_batch(record_bytes, batch_bytes)?;
    let records_per_batch = crate::log::BatchHeader::parse(&template)?.record_count as u64;
    let bytes_total = Arc::new(AtomicU64::new(0));
    let records_total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for producer in 0..producers {
        let partitions: Vec<Arc<Partition>> = assigned_partitions(producer, producers, partitions)
            .map(|p| log.partition(&topic, PartitionId(p)))
            .collect::<Result<_, _>>()?;
        let template = template.clone();
        let bytes_total = bytes_total.clone();
        let records_total = records_total.clone();
        tasks.spawn(async move {
            while Instant::now() < deadline {
                // One request in flight, with a batch for each of the producer's partitions,
                // as a Kafka producer with max.in.flight.requests = 1.
                let mut request = tokio::task::JoinSet::new();
                for partition in &partitions {
                    let partition = partition.clone();
                    let batch = BytesMut::from(&template[..]);
                    request.spawn(async move { partition.append(batch).await });
                }
                while let Some(acked) = request.join_next().await {
                    acked??;
                    bytes_total.fetch_add(template.len() as u64, Ordering::Relaxed);
                    records_total.fetch_add(records_per_batch, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(AppendFigures {
        mb_s: bytes_total.load(Ordering::Relaxed) as f64 / MB / elapsed,
        records_s: records_total.load(Ordering::Relaxed) as f64 / elapsed,
    })
}

/// The partitions a producer writes to: with fewer producers than partitions each producer
/// covers several, otherwise each producer writes to one.
fn assigned_partitions(
    producer: usize,
    producers: usize,
    partitions: u32,
) -> impl Iterator<Item = u32> {
    (0..partitions).filter(move |&p| {
        if producers >= partitions as usize {
            p as usize == producer % partitions as usize
        } else {
            p as usize % producers == producer
        }
    })
}

/// Reads a whole partition from offset 0 to its high watermark, 1 MiB at a time.
fn read_case(log: &Log, topic: &TopicName) -> anyhow::Result<(f64, u64)> {
    let partition = log.partition(topic, PartitionId(0))?;
    let end = partition.high_watermark();
    // One untimed pass brings the data into the page cache, as a consumer close behind the
    // producers finds it.
    let pass = || -> anyhow::Result<u64> {
        let mut offset = Offset(0);
        let mut bytes = 0u64;
        while offset < end {
            let chunk = partition.read(offset, 1024 * 1024)?;
            bytes += chunk.batches.len() as u64;
            offset = chunk.next_offset;
        }
        Ok(bytes)
    };
    pass()?;
    let started = Instant::now();
    let bytes = pass()?;
    Ok((bytes as f64 / MB / started.elapsed().as_secs_f64(), bytes))
}
