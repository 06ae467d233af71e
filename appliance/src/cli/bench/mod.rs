//! `appliance bench`: measurements an operator runs on the machine itself, each printing its
//! figures beside the machine's own limits measured in the same run.
//!
//! - `bench log`: the disk's bandwidth with fdatasync, durable appends, reads (`log.rs`).
//! - `bench grpc`: produce, fetch and subscribe over the gRPC API on loopback, beside the
//!   log's own figures and, when `nats-server` is installed, NATS JetStream (`grpc.rs`).
//! - `bench kafka`: librdkafka (kcat) producing and consuming on the Kafka listener, beside
//!   gRPC and the log's own append (`kafka.rs`).
//! - `bench pipeline`: pipelines with built-in WebAssembly transforms, the same transforms
//!   compiled natively, and the cost of a call into the sandbox (`pipeline.rs`).
//! - `bench connectors`: a generator source and a file sink beside the log's own append and
//!   read figures (`connectors.rs`).
//! - `bench link`: raw QUIC, the hub's durable append, link replication and catch-up, and a
//!   lossy uplink through a userspace UDP proxy (`link.rs`).
//! - `bench footprint`: an edge's resident memory idle and under load, its startup time and
//!   the binary's size, hub and edge as separate processes (`footprint.rs`).
//! - `bench query`: SQL over a hub's mirrors beside a plain read of the log, a time-restricted
//!   query's bytes read, a live query's update latency (`query.rs`).

mod connectors;
mod footprint;
mod grpc;
mod kafka;
mod link;
mod log;
#[cfg(feature = "bench-peers")]
mod nats;
mod pipeline;
#[cfg(feature = "hub")]
mod query;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::log::{Log, LogConfig};
use crate::meta::Meta;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Disk baseline, durable append throughput and read throughput of the log.
    Log(log::LogBenchArgs),
    /// gRPC produce, fetch and subscribe on loopback, beside the log and NATS JetStream.
    Grpc(grpc::GrpcBenchArgs),
    /// librdkafka (kcat) producing and consuming 1 KiB records on the Kafka listener, beside
    /// gRPC and the log's own append.
    Kafka(kafka::KafkaBenchArgs),
    /// Pipelines with the built-in filter and mask-field, beside native builds of both.
    Pipeline(pipeline::PipelineBenchArgs),
    /// The generator source and the file sink, beside the log's own append and read.
    Connectors(connectors::ConnectorBenchArgs),
    /// Cluster-link replication on loopback beside raw QUIC and the hub's durable append,
    /// catch-up of a backlog, and a lossy uplink (2% loss, 40 ms RTT).
    Link(link::LinkBenchArgs),
    /// An edge's RSS idle and under load, startup time to ready, binary size (10 topics, 2
    /// pipelines, 1 connector, 1 link to a hub in another process).
    Footprint(footprint::FootprintBenchArgs),
    /// SQL over mirrors (GROUP BY over 10 million JSON records) beside a plain read of the
    /// log, a query over the last 1% of the time, a live query's update latency.
    #[cfg(feature = "hub")]
    Query(query::QueryBenchArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        BenchCommand::Log(args) => runtime.block_on(log::log_bench(args)),
        BenchCommand::Grpc(args) => runtime.block_on(grpc::grpc_bench(args)),
        BenchCommand::Kafka(args) => runtime.block_on(kafka::kafka_bench(args)),
        BenchCommand::Pipeline(args) => runtime.block_on(pipeline::pipeline_bench(args)),
        BenchCommand::Connectors(args) => runtime.block_on(connectors::connector_bench(args)),
        BenchCommand::Link(args) => runtime.block_on(link::link_bench(args)),
        BenchCommand::Footprint(args) => runtime.block_on(footprint::footprint_bench(args)),
        #[cfg(feature = "hub")]
        BenchCommand::Query(args) => runtime.block_on(query::query_bench(args)),
    }
}

const MB: f64 = 1_000_000.0;

/// An appliance with its data in `data_dir` and every endpoint on a free loopback port.
/// Records per second NATS JetStream reached (`bench grpc`'s peer).
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct NatsFigures {
    publish_rps: f64,
    consume_rps: f64,
}

fn loopback_config(data_dir: PathBuf) -> Config {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config {
        data_dir,
        ..Config::default()
    };
    config.api.grpc_addr = loopback;
    config.api.metrics_addr = loopback;
    config.api.console_addr = loopback;
    config.kafka.addr = loopback;
    config
}

/// A temporary directory inside `dir`, removed when dropped.
fn scratch_dir(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix("appliance-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a scratch directory in {}", dir.display()))
}

/// What the plugin benches run on: a durable log, its metadata store and the plugin host,
/// in `dir`. Cancel `shutdown` when done (it stops the plugin host's epoch ticker).
struct PluginHost {
    shutdown: tokio_util::sync::CancellationToken,
    meta: Meta,
    log: Log,
    plugins: crate::plugin::Plugins,
}

async fn open_plugin_host(dir: &Path) -> anyhow::Result<PluginHost> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let meta = Meta::open(&dir.join("meta"))?;
    let log = Log::open(LogConfig::new(dir.to_path_buf()), meta.clone()).await?;
    let plugins = crate::plugin::Plugins::open(
        dir,
        meta.clone(),
        crate::security::secrets::SecretProviders::default(),
        shutdown.clone(),
    )?;
    Ok(PluginHost {
        shutdown,
        meta,
        log,
        plugins,
    })
}

/// Prints the first lines of a bench: what it measures, and the disk's own speed, which it
/// returns (MB/s).
fn print_header(dir: &Path, what: std::fmt::Arguments<'_>) -> anyhow::Result<f64> {
    let disk = log::disk_baseline(dir, 1, std::time::Duration::from_secs(1))?;
    println!(
        "{what}; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("disk (fdatasync per 4 MiB): {disk:.0} MB/s");
    Ok(disk)
}

/// The median of figures from rounds of one case: on a shared virtual machine a single run
/// drifts with the host's other guests.
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        len if len.is_multiple_of(2) => (values[middle - 1] + values[middle]) / 2.0,
        _ => values[middle],
    }
}

/// A durable log in `dir`, as the daemon opens it.
async fn open_log(dir: &Path) -> anyhow::Result<Log> {
    let meta = Meta::open(&dir.join("meta"))?;
    Ok(Log::open(LogConfig::new(dir.to_path_buf()), meta).await?)
}
