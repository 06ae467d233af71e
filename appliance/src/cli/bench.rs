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
use clap::{Args, Subcommand};

use crate::log::{
    Compression, Durability, Log, LogConfig, Offset, Partition, PartitionId, Record, Timestamp,
    TopicConfig, TopicName,
};
use crate::meta::Meta;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Disk baseline, durable append throughput and read throughput of the log.
    Log(LogBenchArgs),
}

#[derive(Debug, Args)]
pub struct LogBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Seconds each append case runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Size of each producer's batches, in KiB (as a Kafka producer's batch.size).
    #[arg(long, default_value_t = 64)]
    batch_kib: usize,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Log(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(log_bench(args))
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct CaseResult {
    record_bytes: usize,
    producers: usize,
    partitions: u32,
    mb_s: f64,
    records_s: f64,
}

const MB: f64 = 1_000_000.0;
/// The disk baseline writes in chunks of this size, each followed by fdatasync: the pattern
/// of a group commit that has gathered a few MiB.
const DISK_CHUNK: usize = 4 * 1024 * 1024;
/// The parallel disk baseline uses as many files as the multi-partition cases use partitions.
const PARALLEL_STREAMS: usize = 8;

async fn log_bench(args: LogBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(args.batch_kib >= 1, "--batch-kib must be at least 1");
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("appliance-bench-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a scratch directory in {}", args.dir.display()))?;
    let case_time = Duration::from_secs_f64(args.seconds);
    let batch_bytes = args.batch_kib * 1024;

    println!(
        "appliance bench log: {} s per case, producer batches of {} KiB, in {}",
        args.seconds,
        args.batch_kib,
        scratch.path().display()
    );
    let disk_before = DiskBaseline::measure(scratch.path(), case_time)?;
    println!("disk baseline, sequential write + fdatasync every 4 MiB (before the cases):");
    disk_before.print();
    println!();

    let meta = Meta::open(&scratch.path().join("meta"))?;
    let log = Log::open(
        LogConfig {
            data_dir: scratch.path().to_path_buf(),
            durability: Durability::Fsync,
            retention_check_interval: Duration::from_secs(3600),
            topic_defaults: TopicConfig::default(),
        },
        meta,
    )
    .await?;

    println!(
        "{:>8} {:>10} {:>11} {:>10} {:>14} {:>10}",
        "record", "producers", "partitions", "MB/s", "records/s", "of disk"
    );
    println!(
        "(\"of disk\": against the 1-file baseline for 1 partition, the {PARALLEL_STREAMS}-file one for {PARALLEL_STREAMS})"
    );
    let mut cases = Vec::new();
    for record_bytes in [100, 1024] {
        for partitions in [1, 8] {
            for producers in [1, 64] {
                let topic =
                    TopicName::new(format!("bench-{record_bytes}-{producers}-{partitions}"))?;
                let result = append_case(
                    &log,
                    topic,
                    record_bytes,
                    producers,
                    partitions,
                    batch_bytes,
                    case_time,
                )
                .await?;
                println!(
                    "{:>6} B {:>10} {:>11} {:>10.1} {:>14.0} {:>9.0}%",
                    result.record_bytes,
                    result.producers,
                    result.partitions,
                    result.mb_s,
                    result.records_s,
                    100.0 * result.mb_s / disk_before.for_partitions(partitions)
                );
                cases.push(result);
            }
        }
    }

    let read_topic = TopicName::new("bench-1024-64-1")?;
    let (read_mb_s, read_bytes) = read_case(&log, &read_topic)?;
    println!();
    println!(
        "read: sequential, whole batches with CRC check, {:.0} MB from page cache: {read_mb_s:>10.1} MB/s",
        read_bytes as f64 / MB
    );
    log.close().await?;

    // Virtual and flash disks change speed as their caches fill: measure again, and judge
    // the log against the better of the two figures.
    let disk_after = DiskBaseline::measure(scratch.path(), case_time)?;
    println!();
    println!("disk baseline again (after the cases):");
    disk_after.print();
    let disk = disk_before.best(&disk_after);

    let find = |record_bytes, producers, partitions| {
        cases.iter().find(|c| {
            c.record_bytes == record_bytes && c.producers == producers && c.partitions == partitions
        })
    };
    let append_mb_s_1k_64p = find(1024, 64, 1).map_or(0.0, |c| c.mb_s);
    let append_rps_100b_8p = find(100, 64, 8).map_or(0.0, |c| c.records_s);
    println!();
    println!("targets (against the better disk baseline):");
    println!(
        "  1 KiB records, 64 producers, 1 partition: {append_mb_s_1k_64p:.1} MB/s, {:.0}% of {:.1} MB/s (target >= 80%)",
        100.0 * append_mb_s_1k_64p / disk.single,
        disk.single
    );
    println!(
        "  100 B records, 64 producers, 8 partitions: {append_rps_100b_8p:.0} records/s (target >= 1000000)"
    );
    println!("  sequential read: {read_mb_s:.0} MB/s (target >= 1000)");
    if args.json {
        let summary = serde_json::json!({
            "disk_mb_s": disk.single,
            "disk_mb_s_parallel": disk.parallel,
            "disk_mb_s_before": disk_before.single,
            "disk_mb_s_after": disk_after.single,
            "append_mb_s_1k_64p": append_mb_s_1k_64p,
            "append_rps_100b_8p": append_rps_100b_8p,
            "read_mb_s": read_mb_s,
            "batch_kib": args.batch_kib,
            "seconds_per_case": args.seconds,
            "cases": cases,
        });
        println!("{summary}");
    }
    Ok(())
}

/// The disk's own write bandwidth, from one file and from several at once.
#[derive(Debug, Clone, Copy)]
struct DiskBaseline {
    single: f64,
    parallel: f64,
}

impl DiskBaseline {
    fn measure(dir: &Path, duration: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            single: disk_baseline(dir, 1, duration)?,
            parallel: disk_baseline(dir, PARALLEL_STREAMS, duration)?,
        })
    }

    fn print(&self) {
        println!("  1 file:                 {:>10.1} MB/s", self.single);
        println!(
            "  {PARALLEL_STREAMS} files in parallel:    {:>10.1} MB/s",
            self.parallel
        );
    }

    fn for_partitions(&self, partitions: u32) -> f64 {
        if partitions == 1 {
            self.single
        } else {
            self.parallel
        }
    }

    fn best(&self, other: &Self) -> Self {
        Self {
            single: self.single.max(other.single),
            parallel: self.parallel.max(other.parallel),
        }
    }
}

/// Appends `DISK_CHUNK`s to `streams` growing files at once, each with fdatasync after every
/// chunk, for `duration`; returns the total MB/s.
fn disk_baseline(dir: &Path, streams: usize, duration: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let written: u64 = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..streams)
            .map(|stream| {
                scope.spawn(move || -> anyhow::Result<u64> {
                    let path = dir.join(format!("disk-baseline-{stream}"));
                    let file = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let chunk = vec![0xA5u8; DISK_CHUNK];
                    let mut written = 0u64;
                    while started.elapsed() < duration {
                        file.write_all_at(&chunk, written)?;
                        file.sync_data()?;
                        written += chunk.len() as u64;
                    }
                    drop(file);
                    std::fs::remove_file(&path)?;
                    Ok(written)
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("baseline writer panicked")))
            })
            .sum::<anyhow::Result<u64>>()
    })?;
    Ok(written as f64 / MB / started.elapsed().as_secs_f64())
}

/// One pre-encoded batch per case: producers append copies of it, the log assigns offsets.
fn template_batch(record_bytes: usize, batch_bytes: usize) -> anyhow::Result<Bytes> {
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

async fn append_case(
    log: &Log,
    topic: TopicName,
    record_bytes: usize,
    producers: usize,
    partitions: u32,
    batch_bytes: usize,
    duration: Duration,
) -> anyhow::Result<CaseResult> {
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
    Ok(CaseResult {
        record_bytes,
        producers,
        partitions,
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
