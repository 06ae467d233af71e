//! `appliance bench`: measurements an operator runs on the machine itself, each printing its
//! figures beside the machine's own limits measured in the same run.
//!
//! - `bench log`: the disk's bandwidth with fdatasync, durable appends, reads (`log.rs`).
//! - `bench grpc`: produce, fetch and subscribe over the gRPC API on loopback, beside the
//!   log's own figures and, when `nats-server` is installed, NATS JetStream (`grpc.rs`).
//! - `bench pipeline`: pipelines with built-in WebAssembly transforms, the same transforms
//!   compiled natively, and the cost of a call into the sandbox (`pipeline.rs`).

mod grpc;
mod log;
mod nats;
mod pipeline;

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;

use crate::log::{Log, LogConfig};
use crate::meta::Meta;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Disk baseline, durable append throughput and read throughput of the log.
    Log(log::LogBenchArgs),
    /// gRPC produce, fetch and subscribe on loopback, beside the log and NATS JetStream.
    Grpc(grpc::GrpcBenchArgs),
    /// Pipelines with the built-in filter and mask-field, beside native builds of both.
    Pipeline(pipeline::PipelineBenchArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        BenchCommand::Log(args) => runtime.block_on(log::log_bench(args)),
        BenchCommand::Grpc(args) => runtime.block_on(grpc::grpc_bench(args)),
        BenchCommand::Pipeline(args) => runtime.block_on(pipeline::pipeline_bench(args)),
    }
}

const MB: f64 = 1_000_000.0;

/// A temporary directory inside `dir`, removed when dropped.
fn scratch_dir(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix("appliance-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a scratch directory in {}", dir.display()))
}

/// A durable log in `dir`, as the daemon opens it.
async fn open_log(dir: &Path) -> anyhow::Result<Log> {
    let meta = Meta::open(&dir.join("meta"))?;
    Ok(Log::open(LogConfig::new(dir.to_path_buf()), meta).await?)
}
