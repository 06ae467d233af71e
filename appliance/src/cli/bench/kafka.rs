//! `appliance bench kafka`: librdkafka (kcat, the Debian package) producing 1 KiB records
//! with acks=all to the appliance's Kafka listener (in this process, on loopback), beside
//! gRPC ProduceStream of the same records and the log's own durable append, measured in the
//! same run on the same disk; then librdkafka consuming everything beside gRPC Fetch.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance_proto::v1 as pb;
use appliance_proto::v1::security_client::SecurityClient;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::super::client::Local;
use super::grpc::{TOPIC, create_topic, fetch, produce};
use super::log::append_case;
use super::{loopback_config, open_log, scratch_dir};

const RECORD_BYTES: usize = 1024;
const USER: &str = "bench";
const PASSWORD: &str = "bench password of the kafka bench";
/// The producer's settings: what the figures are for.
const PRODUCER_SETTINGS: [&str; 4] = [
    "acks=all",
    "linger.ms=5",
    "batch.size=1000000",
    "compression.type=none",
];

#[derive(Debug, Args)]
pub struct KafkaBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Records librdkafka produces.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Seconds the log's append and gRPC ProduceStream run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Partitions of the topic, and concurrent gRPC producers and log writers.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

pub async fn kafka_bench(args: KafkaBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.records >= 1, "--records must be at least 1");
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    let kcat_version = Command::new("kcat")
        .arg("-V")
        .output()
        .map_err(|_| anyhow::anyhow!("kcat (librdkafka) is not installed: apt-get install kcat"))?;
    let librdkafka = String::from_utf8_lossy(&kcat_version.stdout)
        .split_whitespace()
        .skip_while(|word| *word != "librdkafka")
        .nth(1)
        .unwrap_or("?")
        .to_owned();
    let scratch = scratch_dir(&args.dir)?;
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "appliance bench kafka: {RECORD_BYTES}-byte records, {} partitions, durable acks, loopback, librdkafka {librdkafka} with {}, in {}",
        args.partitions,
        PRODUCER_SETTINGS.join(" "),
        scratch.path().display()
    );

    let log = open_log(&scratch.path().join("log")).await?;
    let batch_records = 1_000_000 / (RECORD_BYTES + 10);
    let log_append = append_case(
        &log,
        RECORD_BYTES,
        args.partitions as usize,
        args.partitions,
        batch_records * (RECORD_BYTES + 10),
        duration,
    )
    .await?;
    log.close().await?;
    drop(log);

    let lines = scratch.path().join("records.txt");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&lines)?);
    let line = "x".repeat(RECORD_BYTES);
    for _ in 0..args.records {
        writeln!(file, "{line}")?;
    }
    file.flush()?;
    drop(file);

    let config = loopback_config(scratch.path().join("appliance"));
    let shutdown = CancellationToken::new();
    let running = crate::app::start(config, shutdown.clone()).await?;
    let kafka_addr = running
        .kafka_addr
        .ok_or_else(|| anyhow::anyhow!("the Kafka listener did not start"))?
        .to_string();
    let local = Local::of(&running)?;
    let figures = async {
        let channel = local.connect().await?;
        create_topic(channel.clone(), args.partitions).await?;
        SecurityClient::new(channel.clone())
            .create_user(pb::SetPasswordRequest {
                name: USER.into(),
                password: PASSWORD.into(),
            })
            .await?;
        SecurityClient::new(channel)
            .create_acl(pb::Acl {
                principal: format!("User:{USER}"),
                resource_type: pb::ResourceType::Topic.into(),
                pattern_type: pb::PatternType::Literal.into(),
                pattern: TOPIC.into(),
                operation: pb::AclOperation::All.into(),
                permission: pb::AclPermission::Allow.into(),
            })
            .await?;
        let kafka_produce_rps = kcat_produce(&kafka_addr, &lines, args.records)?;
        let (grpc_records, grpc_produce_rps) = produce(
            &local,
            args.partitions,
            batch_records,
            RECORD_BYTES,
            duration,
        )
        .await?;
        let total = args.records as u64 + grpc_records;
        let grpc_fetch_rps = fetch(&local, args.partitions).await?;
        let kafka_fetch_rps = kcat_consume(&kafka_addr, total)?;
        anyhow::Ok((
            kafka_produce_rps,
            grpc_produce_rps,
            grpc_fetch_rps,
            kafka_fetch_rps,
        ))
    }
    .await;
    shutdown.cancel();
    running.stopped().await?;
    let (kafka_produce_rps, grpc_produce_rps, grpc_fetch_rps, kafka_fetch_rps) = figures?;

    println!();
    println!(
        "{:<48} {:>12} {:>10} {:>10}",
        "", "records/s", "MiB/s", "ratio"
    );
    let row = |what: &str, rps: f64, base: Option<f64>| {
        let ratio = base.map_or(String::new(), |b| format!("{:.2}x", rps / b));
        let mib = rps * RECORD_BYTES as f64 / (1024.0 * 1024.0);
        println!("{what:<48} {rps:>12.0} {mib:>10.1} {ratio:>10}");
    };
    row("log: durable append (library)", log_append.records_s, None);
    row(
        "Kafka Produce, librdkafka, acks=all (of log)",
        kafka_produce_rps,
        Some(log_append.records_s),
    );
    row(
        "gRPC ProduceStream, durable (of log)",
        grpc_produce_rps,
        Some(log_append.records_s),
    );
    row("gRPC Fetch", grpc_fetch_rps, None);
    row(
        "Kafka Fetch, librdkafka consumer (of gRPC)",
        kafka_fetch_rps,
        Some(grpc_fetch_rps),
    );
    println!();
    println!(
        "targets: Kafka Produce >= 0.7x of the log's own append; Kafka Fetch >= 1x of gRPC Fetch"
    );
    if args.json {
        let summary = serde_json::json!({
            "log_append_rps": log_append.records_s,
            "kafka_produce_rps": kafka_produce_rps,
            "grpc_produce_rps": grpc_produce_rps,
            "grpc_fetch_rps": grpc_fetch_rps,
            "kafka_fetch_rps": kafka_fetch_rps,
            "record_bytes": RECORD_BYTES,
            "partitions": args.partitions,
            "librdkafka": librdkafka,
        });
        println!("{summary}");
    }
    Ok(())
}

fn kcat(addr: &str) -> Command {
    let mut command = Command::new("kcat");
    command
        .args(["-b", addr, "-q"])
        .args(["-X", "security.protocol=SASL_PLAINTEXT"])
        .args(["-X", "sasl.mechanism=SCRAM-SHA-256"])
        .args(["-X", &format!("sasl.username={USER}")])
        .args(["-X", &format!("sasl.password={PASSWORD}")]);
    command
}

/// librdkafka producing every line of `lines`: records per second, start to last ack.
fn kcat_produce(addr: &str, lines: &std::path::Path, records: usize) -> anyhow::Result<f64> {
    let mut command = kcat(addr);
    command.args(["-P", "-t", TOPIC, "-l"]).arg(lines);
    for setting in PRODUCER_SETTINGS {
        command.args(["-X", setting]);
    }
    let started = Instant::now();
    let out = command.stderr(Stdio::piped()).output()?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success() && out.stderr.is_empty(),
        "kcat -P: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(records as f64 / elapsed)
}

/// librdkafka consuming `total` records from the start of every partition.
fn kcat_consume(addr: &str, total: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = kcat(addr)
        .args([
            "-C",
            "-t",
            TOPIC,
            "-o",
            "beginning",
            "-e",
            "-c",
            &total.to_string(),
        ])
        .args(["-f", "%o\n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    let elapsed = started.elapsed().as_secs_f64();
    let consumed = out.stdout.iter().filter(|b| **b == b'\n').count() as u64;
    anyhow::ensure!(
        consumed == total,
        "kcat -C read {consumed} of {total} records: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(total as f64 / elapsed)
}
