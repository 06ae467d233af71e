//! `appliance bench grpc`: the appliance serving its gRPC API on loopback (in this process),
//! with producers and consumers as gRPC clients, beside the log's own append and read figures
//! measured in the same run, and NATS JetStream when `nats-server` is installed. Then the same
//! produce and fetch over TLS by a user whose ACLs are checked, against the plaintext run by
//! the super-user, and the cost of one ACL check.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use appliance_proto::v1 as pb;
use appliance_proto::v1::groups_client::GroupsClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::security_client::SecurityClient;
use appliance_proto::v1::topics_client::TopicsClient;
use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::super::client::{ApiChannel, Local};
use super::log::append_case;
#[cfg(feature = "bench-peers")]
use super::nats;
use super::{NatsFigures, loopback_config, open_log, scratch_dir};
use crate::log::{Offset, PartitionId, TopicName, decode_all};
use crate::meta::Meta;
use crate::security::{
    Acl, Authorizer, Operation, PatternType, Permission, Principal, ResourceType, certs,
};

const RECORD_BYTES: usize = 100;
pub(super) const TOPIC: &str = "bench";

#[derive(Debug, Args)]
pub struct GrpcBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Seconds each produce measurement runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent producers and consumers, and partitions of the topic.
    #[arg(long, default_value_t = 8)]
    streams: u32,
    /// 100-byte records per produce request.
    #[arg(long, default_value_t = 1000)]
    batch_records: usize,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

pub async fn grpc_bench(args: GrpcBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(args.streams >= 1, "--streams must be at least 1");
    anyhow::ensure!(
        args.batch_records >= 1,
        "--batch-records must be at least 1"
    );
    let scratch = scratch_dir(&args.dir)?;
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "appliance bench grpc: {}-byte records, {} producers and consumers over {} partitions, {} records per request, durable acks, loopback, in {}",
        RECORD_BYTES,
        args.streams,
        args.streams,
        args.batch_records,
        scratch.path().display()
    );

    // The log's own figures, on the same disk, through the library.
    let log_dir = scratch.path().join("log");
    let log = open_log(&log_dir).await?;
    let batch_bytes = args.batch_records * (RECORD_BYTES + 10);
    let log_append = append_case(
        &log,
        RECORD_BYTES,
        args.streams as usize,
        args.streams,
        batch_bytes,
        duration,
    )
    .await?;
    let log_read_rps = log_read_decode(&log, args.streams).await?;
    log.close().await?;
    drop(log);

    // The appliance as a server.
    let config = loopback_config(scratch.path().join("appliance"));
    let shutdown = CancellationToken::new();
    let running = crate::app::start(config, shutdown.clone()).await?;
    let local = Local::of(&running)?;
    let figures = async {
        create_topic(local.connect().await?, args.streams).await?;
        let (produced, produce_rps) = produce(
            &local,
            args.streams,
            args.batch_records,
            RECORD_BYTES,
            duration,
        )
        .await?;
        let fetch_rps = fetch(&local, args.streams).await?;
        let subscribe_rps = subscribe(&local, args.streams, produced).await?;
        anyhow::Ok((produce_rps, fetch_rps, subscribe_rps))
    }
    .await;
    shutdown.cancel();
    running.stopped().await?;
    let (produce_rps, fetch_rps, subscribe_rps) = figures?;
    let (secured_produce_rps, secured_fetch_rps) = secured(scratch.path(), &args, duration).await?;
    let acl_check_ns = acl_check_ns(scratch.path()).await?;

    let nats = nats_figures(scratch.path(), args.streams as usize, duration).await;

    println!();
    println!("{:<44} {:>14} {:>10}", "", "records/s", "of log");
    let row = |what: &str, rps: f64, base: Option<f64>| {
        let share = base.map_or(String::new(), |b| format!("{:.0}%", 100.0 * rps / b));
        println!("{what:<44} {rps:>14.0} {share:>10}");
    };
    row("log: durable append (library)", log_append.records_s, None);
    row(
        "gRPC ProduceStream, durable",
        produce_rps,
        Some(log_append.records_s),
    );
    row("log: read + decode (library)", log_read_rps, None);
    row("gRPC Fetch", fetch_rps, Some(log_read_rps));
    row(
        "gRPC Subscribe (group, commit per message)",
        subscribe_rps,
        Some(log_read_rps),
    );
    if let Some(nats) = nats {
        row(
            "NATS JetStream publish, acknowledged",
            nats.publish_rps,
            None,
        );
        row("NATS JetStream pull consume", nats.consume_rps, None);
        println!();
        println!(
            "appliance / NATS: produce {:.2}x, fetch {:.2}x, subscribe {:.2}x",
            produce_rps / nats.publish_rps,
            fetch_rps / nats.consume_rps,
            subscribe_rps / nats.consume_rps
        );
        println!(
            "note: JetStream file storage acknowledges before fsync (it syncs every 2 minutes by default); the appliance acknowledges after fdatasync"
        );
    }
    println!();
    println!("{:<44} {:>14} {:>10}", "", "records/s", "of above");
    row(
        "gRPC ProduceStream over TLS, token + ACLs",
        secured_produce_rps,
        Some(produce_rps),
    );
    row(
        "gRPC Fetch over TLS, token + ACLs",
        secured_fetch_rps,
        Some(fetch_rps),
    );
    println!(
        "ACL check: {acl_check_ns:.0} ns per request ({ACL_BENCH_ACLS} ACLs in force; produce and fetch check one topic a request)"
    );
    println!();
    println!(
        "targets: ProduceStream >= 500000 records/s and >= 50% of the log; Fetch/Subscribe >= 1000000 records/s and >= 50% of the log; over TLS with token and ACLs >= 80% of plaintext"
    );
    if args.json {
        let summary = serde_json::json!({
            "log_append_rps": log_append.records_s,
            "grpc_produce_rps": produce_rps,
            "log_read_rps": log_read_rps,
            "grpc_fetch_rps": fetch_rps,
            "grpc_subscribe_rps": subscribe_rps,
            "grpc_tls_acl_produce_rps": secured_produce_rps,
            "grpc_tls_acl_fetch_rps": secured_fetch_rps,
            "acl_check_ns": acl_check_ns,
            "nats": nats,
            "streams": args.streams,
            "batch_records": args.batch_records,
            "seconds": args.seconds,
        });
        println!("{summary}");
    }
    Ok(())
}

/// ACLs in force while one check is timed: other users' prefixes, and the one that allows.
const ACL_BENCH_ACLS: usize = 101;

/// Produce and fetch over TLS by User:bench, whose token and ACLs the admin makes.
async fn secured(
    scratch: &Path,
    args: &GrpcBenchArgs,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let tls_dir = scratch.join("tls");
    certs::init(&tls_dir, &[])?;
    let server = certs::issue_server(&tls_dir, "api", &[])?;
    let mut config = loopback_config(scratch.join("secured"));
    config.api.tls_cert = Some(server.cert);
    config.api.tls_key = Some(server.key);
    let shutdown = CancellationToken::new();
    let running = crate::app::start(config, shutdown.clone()).await?;
    let admin = Local::of(&running)?.over_tls(&std::fs::read(tls_dir.join(certs::CA_CERT))?);
    let figures = async {
        let channel = admin.connect().await?;
        create_topic(channel.clone(), args.streams).await?;
        let token = SecurityClient::new(channel.clone())
            .create_token(pb::CreateTokenRequest {
                name: "bench".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .secret;
        for operation in [pb::AclOperation::Write, pb::AclOperation::Read] {
            SecurityClient::new(channel.clone())
                .create_acl(pb::Acl {
                    principal: "User:bench".into(),
                    resource_type: pb::ResourceType::Topic.into(),
                    pattern_type: pb::PatternType::Literal.into(),
                    pattern: TOPIC.into(),
                    operation: operation.into(),
                    permission: pb::AclPermission::Allow.into(),
                })
                .await?;
        }
        let bench = admin.as_holder_of(token);
        let (_, produce_rps) = produce(
            &bench,
            args.streams,
            args.batch_records,
            RECORD_BYTES,
            duration,
        )
        .await?;
        let fetch_rps = fetch(&bench, args.streams).await?;
        anyhow::Ok((produce_rps, fetch_rps))
    }
    .await;
    shutdown.cancel();
    running.stopped().await?;
    figures
}

/// The time of one authorization of a user's write among [`ACL_BENCH_ACLS`] ACLs.
async fn acl_check_ns(scratch: &Path) -> anyhow::Result<f64> {
    let authorizer = Authorizer::open(Meta::open(&scratch.join("acl-bench"))?, HashSet::new())?;
    let acl = |principal: &str, pattern: String, pattern_type| -> anyhow::Result<Acl> {
        Ok(Acl {
            grantee: principal.parse()?,
            resource_type: ResourceType::Topic,
            pattern_type,
            pattern,
            operation: Operation::Write,
            permission: Permission::Allow,
        })
    };
    for n in 1..ACL_BENCH_ACLS {
        authorizer
            .add(acl(
                &format!("User:user-{n}"),
                format!("plant-{n}-"),
                PatternType::Prefixed,
            )?)
            .await?;
    }
    authorizer
        .add(acl("User:bench", TOPIC.to_owned(), PatternType::Literal)?)
        .await?;
    let principal: Principal = "User:bench".parse()?;
    let checks = 200_000;
    let started = Instant::now();
    for _ in 0..checks {
        std::hint::black_box(authorizer.authorize(
            &principal,
            ResourceType::Topic,
            std::hint::black_box(TOPIC),
            Operation::Write,
        ))
        .map_err(|denial| anyhow::anyhow!("denied: {denial:?}"))?;
    }
    Ok(started.elapsed().as_nanos() as f64 / f64::from(checks))
}

pub(super) async fn create_topic(channel: ApiChannel, partitions: u32) -> anyhow::Result<()> {
    TopicsClient::new(channel)
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            config: Some(pb::TopicConfig {
                partitions: Some(partitions),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// Reads every partition of the log bench's topic and decodes every record.
async fn log_read_decode(log: &crate::log::Log, partitions: u32) -> anyhow::Result<f64> {
    let topic = TopicName::new(format!("bench-{RECORD_BYTES}-{partitions}-{partitions}"))?;
    let started = Instant::now();
    let mut records = 0u64;
    for partition in 0..partitions {
        let handle = log.partition(&topic, PartitionId(partition))?;
        let mut offset = Offset(0);
        while offset < handle.high_watermark() {
            let chunk = handle.read(offset, 1024 * 1024)?;
            records += decode_all(chunk.batches)?.len() as u64;
            offset = chunk.next_offset;
        }
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

/// `streams` ProduceStream calls, one connection and partition each, for `duration`.
/// One ProduceStream per partition, `batch_records` records of `record_bytes` a request, for
/// `duration`: the records produced and their rate.
pub(super) async fn produce(
    local: &Local,
    partitions: u32,
    batch_records: usize,
    record_bytes: usize,
    duration: Duration,
) -> anyhow::Result<(u64, f64)> {
    let value = Bytes::from(vec![b'x'; record_bytes]);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let request = pb::ProduceRequest {
            topic: TOPIC.into(),
            partition: Some(partition),
            records: (0..batch_records)
                .map(|_| pb::Record {
                    key: None,
                    value: Some(value.clone()),
                    headers: Vec::new(),
                    timestamp_ms: 0,
                })
                .collect(),
        };
        let local = local.clone();
        tasks.spawn(async move {
            let channel = local.connect().await?;
            let requests = futures_util::stream::repeat_with(move || request.clone())
                .take_while(move |_| std::future::ready(Instant::now() < deadline));
            let response = RecordsClient::new(channel).produce_stream(requests).await?;
            anyhow::Ok(response.into_inner().records)
        });
    }
    let mut produced = 0;
    while let Some(joined) = tasks.join_next().await {
        produced += joined??;
    }
    Ok((produced, produced as f64 / started.elapsed().as_secs_f64()))
}

/// One Fetch loop per partition, from offset 0 to the end, 1 MiB at a time.
pub(super) async fn fetch(local: &Local, partitions: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let local = local.clone();
        tasks.spawn(async move {
            let mut client = RecordsClient::new(local.connect().await?);
            let mut offset = 0;
            let mut records = 0u64;
            loop {
                let response = client
                    .fetch(pb::FetchRequest {
                        topic: TOPIC.into(),
                        partition,
                        offset,
                        max_bytes: 1024 * 1024,
                        max_wait_ms: 0,
                    })
                    .await?
                    .into_inner();
                records += response.records.len() as u64;
                offset = response.next_offset;
                if offset >= response.high_watermark {
                    return anyhow::Ok(records);
                }
            }
        });
    }
    let mut records = 0;
    while let Some(joined) = tasks.join_next().await {
        records += joined??;
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

/// `members` group members consuming everything, committing after every message.
async fn subscribe(local: &Local, members: u32, total: u64) -> anyhow::Result<f64> {
    let consumed = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..members {
        let local = local.clone();
        let consumed = consumed.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let channel = local.connect().await?;
            let mut groups = GroupsClient::new(channel.clone());
            let mut stream = RecordsClient::new(channel)
                .subscribe(pb::SubscribeRequest {
                    group: "bench".into(),
                    topics: vec![TOPIC.into()],
                    start: pb::StartPosition::Earliest as i32,
                    max_bytes: 1024 * 1024,
                    session_timeout_ms: 0,
                })
                .await?
                .into_inner();
            let mut member_id = String::new();
            loop {
                let message = tokio::select! {
                    () = done.cancelled() => return anyhow::Ok(()),
                    message = stream.message() => message?,
                };
                match message.and_then(|m| m.message) {
                    Some(pb::subscribe_response::Message::Assignment(assignment)) => {
                        member_id = assignment.member_id;
                    }
                    Some(pb::subscribe_response::Message::Records(batch)) => {
                        let last = batch.records.last().context("a non-empty batch")?;
                        groups
                            .commit_offsets(pb::CommitOffsetsRequest {
                                group: "bench".into(),
                                member_id: member_id.clone(),
                                offsets: vec![pb::OffsetCommit {
                                    topic: last.topic.clone(),
                                    partition: last.partition,
                                    offset: last.offset + 1,
                                    metadata: String::new(),
                                }],
                            })
                            .await?;
                        let so_far = consumed
                            .fetch_add(batch.records.len() as u64, Ordering::Relaxed)
                            + batch.records.len() as u64;
                        if so_far >= total {
                            done.cancel();
                        }
                    }
                    None => return anyhow::Ok(()),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(consumed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// NATS JetStream's figures for the same workload, when `nats-server` is installed.
#[cfg(feature = "bench-peers")]
async fn nats_figures(dir: &Path, streams: usize, duration: Duration) -> Option<NatsFigures> {
    if nats::available() {
        let measured = nats::measure(dir, streams, RECORD_BYTES, duration).await;
        match measured {
            Ok(figures) => Some(figures),
            Err(error) => {
                println!("NATS JetStream: no figures: {error:#}");
                None
            }
        }
    } else {
        println!(
            "NATS JetStream: skipped, nats-server is not installed (apt-get install nats-server)"
        );
        None
    }
}

/// The lean edge build carries no NATS client.
#[cfg(not(feature = "bench-peers"))]
async fn nats_figures(_: &Path, _: usize, _: Duration) -> Option<NatsFigures> {
    println!("NATS JetStream: skipped, this build has no NATS client (feature `bench-peers`)");
    None
}
