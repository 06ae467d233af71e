//! `appliance produce` and `appliance consume`: records from stdin to a topic, and from a
//! topic (alone or as a member of a consumer group) to stdout.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_proto::v1 as pb;
use appliance_proto::v1::groups_client::GroupsClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use base64::Engine;
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Failure;
use super::client::{ApiChannel, status};

/// Records sent per produce request.
const PRODUCE_CHUNK_RECORDS: usize = 1000;

const PRODUCE_CHUNK_BYTES: usize = 1024 * 1024;

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

pub async fn produce(channel: ApiChannel, args: ProduceArgs) -> Result<(), Failure> {
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

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// A compacted topic (cleanup policy compact).
    topic: String,
    key: String,
    /// Look in this partition rather than the key's (Kafka's murmur2 partitioner).
    #[arg(long)]
    partition: Option<u32>,
    /// Print a JSON object with key, value, partition, offset, timestamp and headers.
    #[arg(long)]
    json: bool,
}

/// Prints the newest value of a key of a compacted topic; fails when there is none.
pub async fn lookup(channel: ApiChannel, args: LookupArgs) -> Result<(), Failure> {
    let found = RecordsClient::new(channel)
        .lookup(pb::LookupRequest {
            topic: args.topic.clone(),
            key: args.key.clone().into_bytes().into(),
            partition: args.partition,
        })
        .await
        .map_err(status)?
        .into_inner()
        .record;
    let Some(record) = found else {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} has no record for key {:?} (or its newest is a tombstone)",
            args.topic,
            args.key
        )));
    };
    emit(&mut std::io::stdout().lock(), &[record], args.json).map(|_| ())
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

pub async fn consume(channel: ApiChannel, args: ConsumeArgs) -> Result<(), Failure> {
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
    channel: ApiChannel,
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
    mut groups: GroupsClient<ApiChannel>,
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
    channel: ApiChannel,
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
