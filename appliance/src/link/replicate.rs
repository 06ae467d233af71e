//! The replication sessions of a link connection, upstream (edge -> hub):
//!
//! ```text
//! edge: connect -> control stream: Hello (edge id, topics) -> Welcome (hub's next offsets)
//!       -> per partition: uni stream, PartitionHeader, Batch frames read from the log as stored
//! hub:  accept -> edge id from the certificate, must equal Hello's -> mirror topics
//!       `<edge>.<topic>` (same partitions) -> Welcome -> per partition stream: each batch
//!       appended at its own offsets, Ack (durable next offset) on the control stream
//! ```
//!
//! A batch the hub already holds (a resend) is skipped; anything else out of place ends the
//! partition's stream with an error, and the edge's next session resumes from the hub's
//! position. The edge retries a lost connection with backoff, forever.
//!
//! Not yet here (issue 6 continues): topics that appear during a session (the next session
//! picks them up), wire compression, rate limits, retention holds and gaps, consumer offsets,
//! downstream topics, the gRPC/CLI surface.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance_proto::link::v1 as wire;
use bytes::{Bytes, BytesMut};
use regex::Regex;
use tokio_util::sync::CancellationToken;

use super::{EdgeId, frame, tls};
use crate::log::{self, Log, LogError, Offset, PartitionId, TopicConfig, TopicName};

/// Control frames are small; batches travel on their own streams.
const CONTROL_LIMIT: usize = 1 << 20;
const READ_BYTES: usize = 1 << 20;
const READ_WAIT: Duration = Duration::from_millis(500);
/// How long a refusal may take to reach the edge before the hub closes the connection.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("writing to the peer: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading from the peer: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error(transparent)]
    Link(#[from] super::LinkError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// The hub's mirror of an edge's topic: `<edge-id>.<topic>`.
pub fn mirror_name(edge: &EdgeId, topic: &str) -> Result<TopicName, SessionError> {
    TopicName::new(format!("{edge}.{topic}"))
        .map_err(|e| SessionError::Protocol(format!("no mirror name for topic {topic:?}: {e}")))
}

/// Serves edges on `endpoint` until `shutdown`, one task per connection.
pub async fn serve_hub(endpoint: quinn::Endpoint, log: Log, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let log = log.clone();
        let stop = shutdown.child_token();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            tokio::select! {
                outcome = hub_session(incoming, log) => {
                    if let Err(error) = outcome {
                        tracing::warn!(%peer, %error, "link session ended");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    endpoint.close(0u32.into(), b"hub shutting down");
}

async fn hub_session(incoming: quinn::Incoming, log: Log) -> Result<(), SessionError> {
    let connection = incoming.await?;
    let edge = tls::edge_of(&connection)?;
    let (mut control_out, mut control_in) = connection.accept_bi().await?;
    let hello = match read_control::<wire::EdgeFrame>(&mut control_in).await?.kind {
        Some(wire::edge_frame::Kind::Hello(hello)) => hello,
        _ => {
            return Err(SessionError::Protocol(
                "the first frame is not Hello".into(),
            ));
        }
    };
    if hello.edge_id != edge.as_str() {
        let reason = format!(
            "the certificate is edge {edge}'s, but the hello claims {:?}",
            hello.edge_id
        );
        let refusal = wire::HubFrame {
            kind: Some(wire::hub_frame::Kind::Refusal(wire::Refusal {
                reason: reason.clone(),
            })),
        };
        control_out.write_all(&frame::encode(&refusal)).await?;
        // The refusal is delivered before the connection goes: closing at once would drop it.
        if control_out.finish().is_ok() {
            let _ = tokio::time::timeout(REFUSAL_GRACE, control_out.stopped()).await;
        }
        connection.close(1u32.into(), b"refused");
        return Err(SessionError::Protocol(reason));
    }
    let mut positions = Vec::new();
    for topic in &hello.topics {
        let mirror = mirror_name(&edge, &topic.topic)?;
        ensure_mirror(&log, &mirror, topic).await?;
        for p in 0..topic.partitions {
            let partition = log.partition(&mirror, PartitionId(p))?;
            positions.push(wire::PartitionPosition {
                topic: topic.topic.clone(),
                partition: p,
                next_offset: partition.high_watermark().0,
                log_start: partition.log_start().0,
            });
        }
    }
    let welcome = wire::HubFrame {
        kind: Some(wire::hub_frame::Kind::Welcome(wire::Welcome { positions })),
    };
    control_out.write_all(&frame::encode(&welcome)).await?;
    tracing::info!(%edge, topics = hello.topics.len(), "edge linked");
    let (acks, mut pending) = tokio::sync::mpsc::channel::<wire::Ack>(1024);
    let send_acks = async {
        while let Some(ack) = pending.recv().await {
            let frame = wire::HubFrame {
                kind: Some(wire::hub_frame::Kind::Ack(ack)),
            };
            control_out.write_all(&frame::encode(&frame)).await?;
        }
        Ok::<_, SessionError>(())
    };
    let receive = async {
        loop {
            let stream = connection.accept_uni().await?;
            let (log, edge, acks) = (log.clone(), edge.clone(), acks.clone());
            tokio::spawn(async move {
                if let Err(error) = receive_partition(stream, log, edge.clone(), acks).await {
                    tracing::warn!(%edge, %error, "link partition stream ended");
                }
            });
        }
    };
    tokio::select! {
        sent = send_acks => sent,
        received = receive => received,
    }
}

/// Creates the mirror of an edge topic, or grows its partitions to the edge's.
async fn ensure_mirror(
    log: &Log,
    mirror: &TopicName,
    topic: &wire::TopicState,
) -> Result<(), SessionError> {
    match log.topic_config(mirror) {
        Ok(config) if config.partitions >= topic.partitions => Ok(()),
        Ok(mut config) => {
            config.partitions = topic.partitions;
            Ok(log.update_topic_config(mirror, config).await?)
        }
        Err(LogError::UnknownTopic { .. }) => {
            let defaults = log.topic_defaults();
            let config = TopicConfig {
                partitions: topic.partitions,
                // A mirror keeps what its origin keeps; its own retention would shift nothing
                // but could delete what the edge still holds.
                retention_ms: None,
                retention_bytes: None,
                max_message_bytes: topic.max_message_bytes.max(defaults.max_message_bytes),
                segment_bytes: topic.segment_bytes.max(1 << 20),
                ..defaults.clone()
            };
            match log.create_topic(mirror.clone(), config).await {
                Ok(()) | Err(LogError::TopicExists { .. }) => Ok(()),
                Err(error) => Err(error.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}

async fn receive_partition(
    mut stream: quinn::RecvStream,
    log: Log,
    edge: EdgeId,
    acks: tokio::sync::mpsc::Sender<wire::Ack>,
) -> Result<(), SessionError> {
    let header = read_control::<wire::PartitionHeader>(&mut stream).await?;
    let mirror = mirror_name(&edge, &header.topic)?;
    let partition = log.partition(&mirror, PartitionId(header.partition))?;
    let limit = log.topic_config(&mirror)?.max_message_bytes as usize + frame::ENVELOPE_BYTES;
    while let Some(batch) = frame::read::<wire::Batch>(&mut stream, limit).await? {
        if batch.compression != wire::WireCompression::None as i32 {
            return Err(SessionError::Protocol(
                "wire compression is not supported by this hub yet".into(),
            ));
        }
        match partition
            .append_at_own_offset(BytesMut::from(&batch.data[..]))
            .await
        {
            Ok(outcome) => {
                let ack = wire::Ack {
                    topic: header.topic.clone(),
                    partition: header.partition,
                    durable_next_offset: outcome.last_offset.0 + 1,
                };
                if acks.send(ack).await.is_err() {
                    return Ok(());
                }
            }
            // A resend of a batch the mirror holds already.
            Err(LogError::NotNextOffset { expected, got, .. }) if got < expected => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// An edge's link to a hub, as far as replication needs it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub edge: EdgeId,
    pub hub: SocketAddr,
    /// The name the hub's certificate must carry.
    pub hub_name: String,
    /// Edge topics to mirror.
    pub topics: Regex,
}

/// What the hub acknowledged: (topic, partition) -> durable next offset on the hub.
pub type Acknowledged = Arc<Mutex<BTreeMap<(String, u32), u64>>>;

/// Keeps the link up until `shutdown`: a session, and after it ends, another one after a
/// backoff that doubles up to 30 s.
pub async fn run_edge(
    endpoint: quinn::Endpoint,
    upstream: Upstream,
    log: Log,
    acknowledged: Acknowledged,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let session = edge_session(&endpoint, &upstream, &log, &acknowledged);
        let outcome = tokio::select! {
            outcome = session => outcome,
            _ = shutdown.cancelled() => break,
        };
        if let Err(error) = outcome {
            tracing::warn!(hub = %upstream.hub, %error, "link to the hub lost; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    endpoint.close(0u32.into(), b"edge shutting down");
}

async fn edge_session(
    endpoint: &quinn::Endpoint,
    upstream: &Upstream,
    log: &Log,
    acknowledged: &Acknowledged,
) -> Result<(), SessionError> {
    let connection = endpoint.connect(upstream.hub, &upstream.hub_name)?.await?;
    let (mut control_out, mut control_in) = connection.open_bi().await?;
    let topics: Vec<wire::TopicState> = log
        .list_topics()
        .into_iter()
        .filter(|topic| upstream.topics.is_match(topic.name.as_str()))
        .map(|topic| wire::TopicState {
            topic: topic.name.to_string(),
            partitions: topic.config.partitions,
            max_message_bytes: topic.config.max_message_bytes,
            segment_bytes: topic.config.segment_bytes,
        })
        .collect();
    let hello = wire::EdgeFrame {
        kind: Some(wire::edge_frame::Kind::Hello(wire::Hello {
            edge_id: upstream.edge.to_string(),
            topics,
            downstream_pattern: String::new(),
        })),
    };
    control_out.write_all(&frame::encode(&hello)).await?;
    let positions = match read_control::<wire::HubFrame>(&mut control_in).await?.kind {
        Some(wire::hub_frame::Kind::Welcome(welcome)) => welcome.positions,
        Some(wire::hub_frame::Kind::Refusal(refusal)) => {
            return Err(SessionError::Protocol(format!(
                "the hub refused the link: {}",
                refusal.reason
            )));
        }
        _ => {
            return Err(SessionError::Protocol(
                "the hub did not answer Welcome".into(),
            ));
        }
    };
    let mut senders = tokio::task::JoinSet::new();
    for position in positions {
        let (connection, log) = (connection.clone(), log.clone());
        senders.spawn(async move { send_partition(connection, log, position).await });
    }
    loop {
        tokio::select! {
            frame = frame::read::<wire::HubFrame>(&mut control_in, CONTROL_LIMIT) => {
                match frame?.and_then(|frame| frame.kind) {
                    Some(wire::hub_frame::Kind::Ack(ack)) => {
                        acknowledged
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((ack.topic, ack.partition), ack.durable_next_offset);
                    }
                    Some(_) => {}
                    None => return Err(SessionError::Protocol("the hub closed the control stream".into())),
                }
            }
            Some(sent) = senders.join_next() => {
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error),
                    Err(join) => return Err(SessionError::Protocol(format!("a partition sender stopped: {join}"))),
                }
            }
        }
    }
}

/// Streams one partition to the hub from the hub's next offset, batches as stored.
async fn send_partition(
    connection: quinn::Connection,
    log: Log,
    position: wire::PartitionPosition,
) -> Result<(), SessionError> {
    let topic = TopicName::new(position.topic.as_str())?;
    let source = log.partition(&topic, PartitionId(position.partition))?;
    let mut stream = connection.open_uni().await?;
    let header = wire::PartitionHeader {
        topic: position.topic.clone(),
        partition: position.partition,
        from_offset: position.next_offset,
    };
    stream.write_all(&frame::encode(&header)).await?;
    let mut next = Offset(position.next_offset);
    loop {
        let chunk = source.read_wait(next, READ_BYTES, READ_WAIT).await?;
        let mut batches: Bytes = chunk.batches;
        while !batches.is_empty() {
            let header = log::validate_batch(&batches).map_err(LogError::from)?;
            let batch = batches.split_to(header.total_len);
            if header.base_offset < next {
                continue;
            }
            let frame = wire::Batch {
                stored_length: batch.len() as u32,
                data: batch,
                compression: wire::WireCompression::None as i32,
            };
            stream.write_all(&frame::encode(&frame)).await?;
            next = header.next_offset();
        }
    }
}

async fn read_control<M: prost::Message + Default>(
    stream: &mut quinn::RecvStream,
) -> Result<M, SessionError> {
    frame::read::<M>(stream, CONTROL_LIMIT)
        .await?
        .ok_or_else(|| SessionError::Protocol("the stream ended before its first frame".into()))
}

#[cfg(test)]
mod tests;
