//! Client commands: talk gRPC to a running appliance at `--server`, as any client would.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_proto::v1 as pb;
use appliance_proto::v1::groups_client::GroupsClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::Failure;

/// Records sent per produce request.
const PRODUCE_CHUNK_RECORDS: usize = 1000;
const PRODUCE_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The appliance's gRPC address.
    #[arg(
        long,
        env = "APPLIANCE_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    server: String,
}

impl ServerArgs {
    async fn channel(&self) -> anyhow::Result<Channel> {
        connect(&self.server).await
    }
}

/// A channel to the appliance at `url`, with the server's large HTTP/2 windows so that big
/// requests and responses are not held back by flow control.
pub(super) async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(url.to_owned())
        .with_context(|| format!("--server {url:?} is not a valid URL"))?
        .initial_stream_window_size(crate::api::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::api::CONNECTION_WINDOW_BYTES);
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the appliance at {url}"))
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long)]
        partitions: Option<u32>,
        /// Keep records this long; -1 keeps forever.
        #[arg(long, allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Keep at least this many bytes per partition; -1 is unbounded.
        #[arg(long, allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
        #[arg(long)]
        segment_bytes: Option<u64>,
        #[arg(long, value_enum)]
        compression: Option<CompressionArg>,
        /// A file with the JSON values' schema for queries: a JSON Schema object, or a list of
        /// {"name", "type": Utf8|Int64|Float64|Boolean|Timestamp, "nullable"} fields.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
    },
    /// List topics.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a topic's settings and partitions.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and all its records.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Lz4,
    Zstd,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    topic: String,
    /// Key of every record.
    #[arg(long, conflicts_with = "key_field")]
    key: Option<String>,
    /// Take each record's key from this field of the line, read as a JSON object.
    #[arg(long)]
    key_field: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Consume as a member of this consumer group, committing what was printed.
    #[arg(long)]
    group: Option<String>,
    /// Start at the first stored record (without a group or committed offset).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (needs --partition).
    #[arg(long)]
    offset: Option<u64>,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Exit after this many records.
    #[arg(long)]
    max: Option<u64>,
    /// Exit when no record arrived for this long.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print JSON objects with key, value, partition, offset, timestamp and headers.
    #[arg(long)]
    json: bool,
    /// With --group: the group gives this member's partitions to others when its heartbeats
    /// stop for this long (default: the server's `groups.session-timeout-ms`).
    #[arg(long, requires = "group")]
    session_timeout_ms: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Members, committed offsets and lag of a group.
    Describe {
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a group's committed offsets (the group must have no members).
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_timestamp"])))]
pub struct ResetArgs {
    group: String,
    #[arg(long)]
    topic: String,
    /// Only these partitions (repeatable); all by default.
    #[arg(long)]
    partition: Vec<u32>,
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    #[arg(long)]
    to_offset: Option<u64>,
    /// The first record at or after this time, in ms since the epoch.
    #[arg(long)]
    to_timestamp: Option<i64>,
    #[arg(long)]
    json: bool,
}

/// Runs a client command on a small runtime of its own.
pub fn run<F>(server: &ServerArgs, command: impl FnOnce(Channel) -> F) -> Result<(), Failure>
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(async {
        let channel = server.channel().await.map_err(Failure::Runtime)?;
        command(channel).await
    })
}

/// A gRPC status as a failure: the server's message and the code's name.
pub(super) fn status(status: tonic::Status) -> Failure {
    Failure::Runtime(anyhow::anyhow!(
        "{} ({:?})",
        status.message(),
        status.code()
    ))
}

pub async fn topic(channel: Channel, command: TopicCommand) -> Result<(), Failure> {
    let mut client = TopicsClient::new(channel);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            segment_bytes,
            compression,
            schema,
        } => {
            let schema = schema
                .map(|path| {
                    std::fs::read_to_string(&path).map_err(|e| {
                        Failure::Usage(anyhow::anyhow!("--schema {}: {e}", path.display()))
                    })
                })
                .transpose()?;
            let config = pb::TopicConfig {
                schema,
                partitions,
                retention_ms,
                retention_bytes,
                segment_bytes,
                compression: compression.map_or(pb::Compression::Unspecified, |c| match c {
                    CompressionArg::None => pb::Compression::None,
                    CompressionArg::Gzip => pb::Compression::Gzip,
                    CompressionArg::Lz4 => pb::Compression::Lz4,
                    CompressionArg::Zstd => pb::Compression::Zstd,
                }) as i32,
                ..Default::default()
            };
            let topic = client
                .create_topic(pb::CreateTopicRequest {
                    name,
                    config: Some(config),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "created topic {} with {} partitions",
                topic.name,
                topic.partitions.len()
            );
        }
        TopicCommand::List { json } => {
            let topics = client
                .list_topics(pb::ListTopicsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .topics;
            if json {
                print_json(&json!(topics.iter().map(topic_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.partitions.len().to_string(),
                            t.partitions
                                .iter()
                                .map(|p| p.high_watermark - p.log_start_offset)
                                .sum::<u64>()
                                .to_string(),
                            t.partitions
                                .iter()
                                .map(|p| p.size_bytes)
                                .sum::<u64>()
                                .to_string(),
                            t.mirror_of.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(
                    &["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "MIRROR-OF"],
                    &rows,
                );
            }
        }
        TopicCommand::Describe { name, json } => {
            let topic = client
                .get_topic(pb::GetTopicRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&topic_json(&topic));
            } else {
                let config = topic.config.unwrap_or_default();
                println!("topic {}", topic.name);
                if let Some(origin) = &topic.mirror_of {
                    println!(
                        "  mirror of {origin}: read-only, written by its link \
                         (`appliance link promote {}` makes it writable)",
                        topic.name
                    );
                }
                println!(
                    "  retention-ms {}  retention-bytes {}  segment-bytes {}  max-message-bytes {}  compression {}",
                    config.retention_ms.unwrap_or(-1),
                    config.retention_bytes.unwrap_or(-1),
                    config.segment_bytes.unwrap_or_default(),
                    config.max_message_bytes.unwrap_or_default(),
                    compression_name(config.compression),
                );
                if let Some(schema) = &config.schema {
                    println!("  declared schema (for queries): {schema}");
                }
                let rows: Vec<Vec<String>> = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.log_start_offset.to_string(),
                            p.high_watermark.to_string(),
                            p.size_bytes.to_string(),
                            p.segments.to_string(),
                            if p.error.is_empty() {
                                "online".into()
                            } else {
                                p.error.clone()
                            },
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "PARTITION",
                        "LOG-START",
                        "HIGH-WATERMARK",
                        "BYTES",
                        "SEGMENTS",
                        "STATE",
                    ],
                    &rows,
                );
            }
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(pb::DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn compression_name(value: i32) -> &'static str {
    match pb::Compression::try_from(value) {
        Ok(pb::Compression::Gzip) => "gzip",
        Ok(pb::Compression::Lz4) => "lz4",
        Ok(pb::Compression::Zstd) => "zstd",
        _ => "none",
    }
}

fn topic_json(topic: &pb::Topic) -> serde_json::Value {
    let config = topic.config.clone().unwrap_or_default();
    json!({
        "name": topic.name,
        "mirror_of": topic.mirror_of,
        "config": {
            "partitions": config.partitions,
            "retention_ms": config.retention_ms,
            "retention_bytes": config.retention_bytes,
            "segment_bytes": config.segment_bytes,
            "segment_ms": config.segment_ms,
            "max_message_bytes": config.max_message_bytes,
            "compression": compression_name(config.compression),
            "schema": config.schema,
        },
        "partitions": topic.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "segments": p.segments,
            "error": (!p.error.is_empty()).then_some(&p.error),
        })).collect::<Vec<_>>(),
    })
}

/// Reads stdin lines into produce requests on a thread of its own.
fn read_stdin(
    args: &ProduceArgs,
    requests: mpsc::Sender<pb::ProduceRequest>,
) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut chunk = Vec::with_capacity(PRODUCE_CHUNK_RECORDS);
    let mut chunk_bytes = 0;
    let request = |records| pb::ProduceRequest {
        topic: args.topic.clone(),
        partition: args.partition,
        records,
    };
    for (number, line) in stdin.lock().split(b'\n').enumerate() {
        let mut line = line.context("reading standard input")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let key = match (&args.key, &args.key_field) {
            (Some(key), _) => Some(Bytes::from(key.clone())),
            (None, Some(field)) => Some(
                key_from_field(&line, field)
                    .with_context(|| format!("line {}: --key-field {field}", number + 1))?,
            ),
            (None, None) => None,
        };
        chunk_bytes += line.len();
        chunk.push(pb::Record {
            key,
            value: Some(Bytes::from(line)),
            headers: Vec::new(),
            timestamp_ms: 0,
        });
        if chunk.len() >= PRODUCE_CHUNK_RECORDS || chunk_bytes >= PRODUCE_CHUNK_BYTES {
            chunk_bytes = 0;
            if requests
                .blocking_send(request(std::mem::take(&mut chunk)))
                .is_err()
            {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = requests.blocking_send(request(chunk));
    }
    Ok(())
}

fn key_from_field(line: &[u8], field: &str) -> anyhow::Result<Bytes> {
    let value: serde_json::Value = serde_json::from_slice(line).context("the line is not JSON")?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(Bytes::from(s.clone())),
        Some(serde_json::Value::Null) | None => bail!("the line has no field {field:?}"),
        Some(other) => Ok(Bytes::from(other.to_string())),
    }
}

pub async fn produce(channel: Channel, args: ProduceArgs) -> Result<(), Failure> {
    let mut client = RecordsClient::new(channel);
    let (sender, receiver) = mpsc::channel(8);
    let reader = tokio::task::spawn_blocking(move || read_stdin(&args, sender));
    let sent = client.produce_stream(ReceiverStream::new(receiver)).await;
    let read = reader.await.map_err(|e| Failure::Runtime(e.into()))?;
    let acknowledged = sent.map_err(status)?.into_inner().records;
    println!("{acknowledged}");
    read.map_err(|e| {
        Failure::Runtime(e.context(format!(
            "stopped after {acknowledged} records were acknowledged"
        )))
    })
}

/// Prints one consumed record, as its value or as a JSON object.
fn print_record(
    out: &mut impl Write,
    record: &pb::ConsumedRecord,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let bytes_json = |bytes: &Option<Bytes>| match bytes {
            None => serde_json::Value::Null,
            Some(b) => match std::str::from_utf8(b) {
                Ok(text) => json!(text),
                Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)}),
            },
        };
        let headers: serde_json::Map<String, serde_json::Value> = record
            .headers
            .iter()
            .map(|h| (h.key.clone(), bytes_json(&h.value)))
            .collect();
        let object = json!({
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "key": bytes_json(&record.key),
            "value": bytes_json(&record.value),
            "headers": headers,
        });
        writeln!(out, "{object}")
    } else {
        out.write_all(record.value.as_deref().unwrap_or_default())?;
        out.write_all(b"\n")
    }
}

/// Prints records; `false` when the reader went away (a closed pipe ends consuming quietly).
fn emit(out: &mut impl Write, records: &[pb::ConsumedRecord], json: bool) -> Result<bool, Failure> {
    let written = records
        .iter()
        .try_for_each(|record| print_record(out, record, json))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(Failure::Runtime(
            anyhow::Error::new(error).context("writing records"),
        )),
    }
}

/// Counts records against --max and --timeout-ms.
struct Limits {
    remaining: Option<u64>,
    idle: Option<Duration>,
}

impl Limits {
    fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// How many of `available` records may still be printed.
    fn take(&mut self, available: usize) -> usize {
        match &mut self.remaining {
            None => available,
            Some(remaining) => {
                let n = (*remaining).min(available as u64);
                *remaining -= n;
                n as usize
            }
        }
    }

    /// Waits for `next` unless --timeout-ms passes first (then `None`).
    async fn wait<T>(&self, next: impl std::future::Future<Output = T>) -> Option<T> {
        match self.idle {
            Some(idle) => tokio::time::timeout(idle, next).await.ok(),
            None => Some(next.await),
        }
    }
}

pub async fn consume(channel: Channel, args: ConsumeArgs) -> Result<(), Failure> {
    let mut limits = Limits {
        remaining: args.max,
        idle: args.timeout_ms.map(Duration::from_millis),
    };
    if args.group.is_some() && (args.offset.is_some() || args.partition.is_some()) {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--group consumes the partitions the group assigns from its committed offsets; --offset and --partition are for consuming without a group"
        )));
    }
    if args.offset.is_some() && args.partition.is_none() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--offset needs --partition"
        )));
    }
    match &args.group {
        Some(group) => consume_in_group(channel, &args, group, &mut limits).await,
        None => consume_partitions(channel, &args, &mut limits).await,
    }
}

async fn consume_in_group(
    channel: Channel,
    args: &ConsumeArgs,
    group: &str,
    limits: &mut Limits,
) -> Result<(), Failure> {
    let mut groups = GroupsClient::new(channel.clone());
    let mut stream = RecordsClient::new(channel)
        .subscribe(pb::SubscribeRequest {
            group: group.to_owned(),
            topics: vec![args.topic.clone()],
            start: if args.from_beginning {
                pb::StartPosition::Earliest
            } else {
                pb::StartPosition::Latest
            } as i32,
            max_bytes: 0,
            session_timeout_ms: args.session_timeout_ms.unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut member_id = String::new();
    let mut heartbeats: Option<Pin<Box<dyn Future<Output = tonic::Status> + Send>>> = None;
    let mut out = std::io::stdout().lock();
    while !limits.done() {
        let failed_heartbeat = async {
            match heartbeats.as_mut() {
                Some(heartbeats) => heartbeats.await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            next = limits.wait(stream.message()) => next,
            failed = failed_heartbeat => return Err(status(failed)),
        };
        let Some(message) = next else {
            break;
        };
        let Some(message) = message.map_err(status)? else {
            break;
        };
        match message.message {
            Some(pb::subscribe_response::Message::Assignment(assignment)) => {
                member_id = assignment.member_id;
                if heartbeats.is_none() && assignment.session_timeout_ms > 0 {
                    heartbeats = Some(Box::pin(heartbeat(
                        groups.clone(),
                        group.to_owned(),
                        member_id.clone(),
                        Duration::from_millis(assignment.session_timeout_ms.into()),
                    )));
                }
            }
            Some(pb::subscribe_response::Message::Records(batch)) => {
                let printed = limits.take(batch.records.len());
                let records = &batch.records[..printed];
                let reader_left = !emit(&mut out, records, args.json)?;
                let mut last: BTreeMap<(String, u32), u64> = BTreeMap::new();
                for record in records {
                    last.insert((record.topic.clone(), record.partition), record.offset + 1);
                }
                if reader_left {
                    break;
                }
                if !last.is_empty() {
                    groups
                        .commit_offsets(pb::CommitOffsetsRequest {
                            group: group.to_owned(),
                            member_id: member_id.clone(),
                            offsets: last
                                .into_iter()
                                .map(|((topic, partition), offset)| pb::OffsetCommit {
                                    topic,
                                    partition,
                                    offset,
                                    metadata: String::new(),
                                })
                                .collect(),
                        })
                        .await
                        .map_err(status)?;
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// Keeps `member_id` in `group` with a heartbeat every third of its session timeout; the
/// first failure (such as the member having been removed while frozen) ends it.
async fn heartbeat(
    mut groups: GroupsClient<Channel>,
    group: String,
    member_id: String,
    session_timeout: Duration,
) -> tonic::Status {
    let mut ticks = tokio::time::interval(session_timeout / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let request = pb::HeartbeatRequest {
            group: group.clone(),
            member_id: member_id.clone(),
        };
        if let Err(failed) = groups.heartbeat(request).await {
            return failed;
        }
    }
}

async fn consume_partitions(
    channel: Channel,
    args: &ConsumeArgs,
    limits: &mut Limits,
) -> Result<(), Failure> {
    let topic = TopicsClient::new(channel.clone())
        .get_topic(pb::GetTopicRequest {
            name: args.topic.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let partitions: Vec<&pb::PartitionStatus> = topic
        .partitions
        .iter()
        .filter(|p| args.partition.is_none_or(|wanted| wanted == p.partition))
        .collect();
    if partitions.is_empty() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "topic {} has partitions 0 to {}",
            topic.name,
            topic.partitions.len().saturating_sub(1)
        )));
    }
    // One long-polling fetcher per partition, merged in arrival order.
    let (sender, mut receiver) =
        mpsc::channel::<Result<Vec<pb::ConsumedRecord>, tonic::Status>>(16);
    for partition in partitions {
        let start = match (args.offset, args.from_beginning) {
            (Some(offset), _) => offset,
            (None, true) => partition.log_start_offset,
            (None, false) => partition.high_watermark,
        };
        let mut client = RecordsClient::new(channel.clone());
        let sender = sender.clone();
        let request = pb::FetchRequest {
            topic: topic.name.clone(),
            partition: partition.partition,
            offset: start,
            max_bytes: 0,
            max_wait_ms: 1000,
        };
        tokio::spawn(async move {
            let mut request = request;
            loop {
                let fetched = client.fetch(request.clone()).await.map(|r| r.into_inner());
                let next = fetched.as_ref().map_or(request.offset, |f| f.next_offset);
                // An empty long-poll is not activity: only records and errors reach the
                // printer, so --timeout-ms measures time without records.
                let failed = fetched.is_err();
                let records = fetched.map(|f| f.records);
                if records.as_ref().is_ok_and(Vec::is_empty) {
                    continue;
                }
                if sender.send(records).await.is_err() || failed {
                    break;
                }
                request.offset = next;
            }
        });
    }
    drop(sender);
    let mut out = std::io::stdout().lock();
    while !limits.done() {
        let Some(fetched) = limits.wait(receiver.recv()).await.flatten() else {
            break;
        };
        let records = fetched.map_err(status)?;
        let printed = limits.take(records.len());
        if !emit(&mut out, &records[..printed], args.json)? {
            break;
        }
    }
    Ok(())
}

fn group_state(value: i32) -> &'static str {
    match pb::GroupState::try_from(value) {
        Ok(pb::GroupState::Stable) => "stable",
        Ok(pb::GroupState::Rebalancing) => "rebalancing",
        _ => "empty",
    }
}

fn offsets_json(offsets: &[pb::PartitionOffset]) -> serde_json::Value {
    json!(
        offsets
            .iter()
            .map(|o| json!({
                "topic": o.topic,
                "partition": o.partition,
                "committed_offset": o.committed_offset,
                "high_watermark": o.high_watermark,
                "lag": o.lag,
            }))
            .collect::<Vec<_>>()
    )
}

fn print_offsets(offsets: &[pb::PartitionOffset]) {
    let rows: Vec<Vec<String>> = offsets
        .iter()
        .map(|o| {
            vec![
                o.topic.clone(),
                o.partition.to_string(),
                o.committed_offset.map_or("-".into(), |c| c.to_string()),
                o.high_watermark.to_string(),
                o.lag.to_string(),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"],
        &rows,
    );
}

pub async fn group(channel: Channel, command: GroupCommand) -> Result<(), Failure> {
    let mut client = GroupsClient::new(channel);
    match command {
        GroupCommand::List { json } => {
            let groups = client
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .groups;
            if json {
                print_json(&json!(
                    groups
                        .iter()
                        .map(|g| json!({
                            "group": g.group,
                            "state": group_state(g.state),
                            "members": g.members,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group.clone(),
                            group_state(g.state).into(),
                            g.members.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["GROUP", "STATE", "MEMBERS"], &rows);
            }
        }
        GroupCommand::Describe { group, json } => {
            let description = client
                .describe_group(pb::DescribeGroupRequest { group })
                .await
                .map_err(status)?
                .into_inner();
            let assigned = |m: &pb::GroupMember| {
                m.assigned
                    .iter()
                    .map(|p| format!("{}/{}", p.topic, p.partition))
                    .collect::<Vec<_>>()
            };
            if json {
                print_json(&json!({
                    "group": description.group,
                    "state": group_state(description.state),
                    "generation": description.generation,
                    "members": description.members.iter().map(|m| json!({
                        "member_id": m.member_id,
                        "topics": m.topics,
                        "assigned": assigned(m),
                    })).collect::<Vec<_>>(),
                    "offsets": offsets_json(&description.offsets),
                }));
            } else {
                println!(
                    "group {} ({}, generation {})",
                    description.group,
                    group_state(description.state),
                    description.generation
                );
                for member in &description.members {
                    println!(
                        "  member {}: {}",
                        member.member_id,
                        assigned(member).join(" ")
                    );
                }
                print_offsets(&description.offsets);
            }
        }
        GroupCommand::Reset(args) => {
            let to = match (
                args.to_earliest,
                args.to_latest,
                args.to_offset,
                args.to_timestamp,
            ) {
                (true, _, _, _) => pb::reset_offsets_request::To::Earliest(true),
                (_, true, _, _) => pb::reset_offsets_request::To::Latest(true),
                (_, _, Some(offset), _) => pb::reset_offsets_request::To::Offset(offset),
                (_, _, _, Some(ms)) => pb::reset_offsets_request::To::TimestampMs(ms),
                _ => {
                    return Err(Failure::Usage(anyhow::anyhow!(
                        "say where to: --to-earliest, --to-latest, --to-offset or --to-timestamp"
                    )));
                }
            };
            let offsets = client
                .reset_offsets(pb::ResetOffsetsRequest {
                    group: args.group,
                    topic: args.topic,
                    partitions: args.partition,
                    to: Some(to),
                })
                .await
                .map_err(status)?
                .into_inner()
                .offsets;
            if args.json {
                print_json(&offsets_json(&offsets));
            } else {
                print_offsets(&offsets);
            }
        }
    }
    Ok(())
}

pub(super) fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// An aligned table: a header row, then one row per entry.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(header.to_vec()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}
