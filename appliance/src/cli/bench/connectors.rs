//! `appliance bench connectors`: records through connectors, beside the log's own figures for
//! the same records, in one run.
//!
//! 1. The log alone: durable appends of 200-byte records by one writer, awaiting each batch of
//!    4096 as a source task does; then reading and decoding them all.
//! 2. Source: the built-in `generator` (200-byte readings, no rate limit) into a topic, with no
//!    transform and through `mask-field`: poll, sandbox, transforms, durable append, position.
//! 3. Sink: a topic of 200-byte records through the built-in `file-sink` into a file: read,
//!    put, flush (fsync), commit the group offset. A sink writes every byte durably, so it is
//!    also shown against the disk's own bound for those bytes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;

use super::{PluginHost, open_plugin_host, print_header, scratch_dir};
use crate::connect::{ConnectorOffsets, Connectors, NewConnector};
use crate::group::Coordinator;
use crate::log::{
    self, Compression, Log, Offset, PartitionId, Record, Timestamp, TopicConfig, TopicName,
};
use crate::plugin::Limits;
use crate::runtime::{RestartPolicies, RestartPolicy};
use crate::transform::{ErrorPolicy, TransformSpec};

#[derive(Debug, Args)]
pub struct ConnectorBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Records for each case.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

const RECORD_BYTES: usize = 200;
/// Records per append in the log-only case: what one source poll brings at most.
const BATCH: usize = 4096;
/// The plugins the cases run.
const PLUGINS: [&str; 3] = ["generator", "mask-field", "file-sink"];

#[derive(Debug, serde::Serialize)]
struct Figure {
    case: &'static str,
    records_s: f64,
    /// Against the log's own durable append of the same records.
    of_log_append: f64,
    /// Against the log's own read of the same records.
    of_log_read: f64,
}

pub async fn connector_bench(args: ConnectorBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.records >= BATCH, "--records must be at least {BATCH}");
    let scratch = scratch_dir(&args.dir)?;
    let disk = print_header(
        scratch.path(),
        format_args!(
            "connector bench: {} records of {RECORD_BYTES} B per case, 1 partition, durable",
            args.records
        ),
    )?;
    let PluginHost {
        shutdown,
        meta,
        log,
        plugins,
    } = open_plugin_host(scratch.path()).await?;
    // A connector runs for hours on a plugin compiled once (and cached across restarts), so
    // the plugins are compiled before the clock starts, and that time is shown on its own.
    let started = Instant::now();
    for plugin in PLUGINS {
        plugins.get(plugin).await?;
    }
    let compile = started.elapsed();
    let connectors = Connectors::open(
        log.clone(),
        meta.clone(),
        plugins,
        Coordinator::new(log.clone(), meta),
        Limits::default(),
        RestartPolicies::all(RestartPolicy::TASKS),
        shutdown.clone(),
    )
    .await?;

    let stored = TopicName::new("bench-log")?;
    log.create_topic(stored.clone(), TopicConfig::default())
        .await?;
    let started = Instant::now();
    append_all(&log, &stored, args.records).await?;
    let append = args.records as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let read = read_all(&log, &stored)?;
    anyhow::ensure!(
        read == args.records,
        "read {read} of {} records",
        args.records
    );
    let read = args.records as f64 / started.elapsed().as_secs_f64();
    let disk_bound = disk * super::MB / (RECORD_BYTES as f64 + 1.0);
    println!();
    println!(
        "{:<42} {:>12} {:>10} {:>10}",
        "case", "records/s", "of append", "of read"
    );
    println!(
        "{:<42} {:>12.0}",
        "disk: the records' bytes at its fsync'd speed", disk_bound
    );
    println!(
        "{:<42} {:>12.0}",
        "log: durable append, batches of 4096", append
    );
    println!("{:<42} {:>12.0}", "log: read and decode", read);
    println!(
        "{:<42} {:>11.2}s",
        "compiling the plugins, once (not timed below)",
        compile.as_secs_f64()
    );

    let mut figures = Vec::new();
    let generator = |bytes: String, count: String| {
        vec![
            ("rate".to_owned(), "10000000".to_owned()),
            ("bytes".to_owned(), bytes),
            ("count".to_owned(), count),
        ]
    };
    let mask = TransformSpec {
        plugin: "mask-field".to_owned(),
        config: vec![("fields".to_owned(), "sensor".to_owned())],
    };
    for (case, transforms) in [
        ("source: generator -> log", vec![]),
        ("source: generator -> mask-field -> log", vec![mask]),
    ] {
        let topic = TopicName::new(format!("bench-source-{}", figures.len()))?;
        let config = generator(RECORD_BYTES.to_string(), args.records.to_string());
        let started = Instant::now();
        let name = format!("bench-{}", figures.len());
        connectors
            .create(connector(&name, "generator", &topic, config, transforms))
            .await?;
        wait(&connectors, &name, args.records).await?;
        let records_s = args.records as f64 / started.elapsed().as_secs_f64();
        connectors.delete(&name).await?;
        figures.push(Figure {
            case,
            records_s,
            of_log_append: records_s / append,
            of_log_read: records_s / read,
        });
    }

    let out = scratch.path().join("sink-out");
    std::fs::create_dir_all(&out)?;
    let file = out.join("records.ndjson");
    let config = vec![
        ("path".to_owned(), file.display().to_string()),
        ("wasi.dir-rw".to_owned(), out.display().to_string()),
    ];
    let started = Instant::now();
    connectors
        .create(connector(
            "bench-sink",
            "file-sink",
            &stored,
            config,
            vec![],
        ))
        .await?;
    wait_committed(&connectors, "bench-sink", args.records as u64).await?;
    let records_s = args.records as f64 / started.elapsed().as_secs_f64();
    figures.push(Figure {
        case: "sink: log -> file-sink (fsync'd file)",
        records_s,
        of_log_append: records_s / append,
        of_log_read: records_s / read,
    });
    for figure in &figures {
        println!(
            "{:<42} {:>12.0} {:>9.0}% {:>9.0}%",
            figure.case,
            figure.records_s,
            figure.of_log_append * 100.0,
            figure.of_log_read * 100.0
        );
    }
    connectors.stop_all().await;
    shutdown.cancel();
    log.close().await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "disk_mb_s": disk,
                "disk_bound_records_s": disk_bound,
                "log_append_records_s": append,
                "log_read_records_s": read,
                "plugin_compile_s": compile.as_secs_f64(),
                "connectors": figures,
            })
        );
    }
    Ok(())
}

fn connector(
    name: &str,
    plugin: &str,
    topic: &TopicName,
    config: Vec<(String, String)>,
    transforms: Vec<TransformSpec>,
) -> NewConnector {
    NewConnector {
        name: name.to_owned(),
        plugin: plugin.to_owned(),
        topic: topic.clone(),
        config,
        tasks_max: 1,
        transforms,
        errors: ErrorPolicy::Fail,
        dlq_topic: None,
    }
}

/// A 200-byte value shaped like a generator reading.
fn value(seq: usize) -> Bytes {
    let mut text = format!(
        r#"{{"sensor":"sensor-{:04}","seq":{seq},"temp":{:.2},"humidity":{:.1},"note":""#,
        seq % 10,
        (seq * 37 % 5000) as f64 / 100.0,
        (seq * 13 % 1000) as f64 / 10.0,
    );
    while text.len() < RECORD_BYTES - 2 {
        text.push('.');
    }
    text.push_str(r#""}"#);
    Bytes::from(text)
}

/// Appends `count` records in batches of [`BATCH`], one at a time, each durable before the next.
async fn append_all(log: &Log, topic: &TopicName, count: usize) -> anyhow::Result<()> {
    let partition = log.partition(topic, PartitionId(0))?;
    let mut seq = 0;
    while seq < count {
        let records: Vec<Record> = (seq..(seq + BATCH).min(count))
            .map(|n| Record {
                key: None,
                value: Some(value(n)),
                headers: Vec::new(),
                timestamp: Timestamp::now(),
            })
            .collect();
        seq += records.len();
        partition
            .append(log::encode(&records, Compression::None)?)
            .await?;
    }
    Ok(())
}

fn read_all(log: &Log, topic: &TopicName) -> anyhow::Result<usize> {
    let mut count = 0;
    log.partition(topic, PartitionId(0))?
        .scan(Offset(0), |_| count += 1)?;
    Ok(count)
}

async fn wait(connectors: &Connectors, name: &str, records: usize) -> anyhow::Result<()> {
    loop {
        let status = connectors.get(name).await?;
        if let Some(task) = status.tasks.first() {
            if let Some(failure) = task.state.failure() {
                anyhow::bail!("connector {name} failed: {}", failure.reason);
            }
            if task.records_out as usize >= records {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_committed(connectors: &Connectors, name: &str, records: u64) -> anyhow::Result<()> {
    loop {
        if let Some(task) = connectors.get(name).await?.tasks.first()
            && let Some(failure) = task.state.failure()
        {
            anyhow::bail!("connector {name} failed: {}", failure.reason);
        }
        if let ConnectorOffsets::Sink(offsets) = connectors.offsets(name).await?
            && offsets.first().and_then(|o| o.committed) == Some(Offset(records))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
