//! One mirrored partition on the wire: the sender streams its stored batches from the
//! receiver's next offset; the receiver appends each at its own offsets and reports what is
//! durable.
//!
//! ```text
//! sender:   read_wait(next) -> batch as stored -> compress for the wire unless compressed
//!           -> rate limit -> Batch frame          (retention deleted `next`: Gap frame first)
//! receiver: frame -> bounded decompress -> append_at_own_offset -> Ack on the control stream
//!           (Gap: the mirror restarts empty at the origin's new log start; offsets never shift)
//! ```
//!
//! A resend of a batch the mirror holds already is skipped; a batch that is not the next one
//! ends the stream with an error (the next session resumes from the receiver's position).
//!
//! Two checks keep a mirror from mixing two different logs. The sender starts only where its
//! own log continues the mirror: at a batch boundary, and with the same batch just before it
//! (the receiver tells its last batch's CRC), so a log that was reset or replaced on the origin
//! stops the partition with [`SessionError::Diverged`] instead of appending the new log's
//! records after the old one's. The receiver checks every record of every batch with the log's
//! own parser before it is stored: a batch that does not parse quarantines the partition
//! ([`SessionError::Quarantined`]) and nothing of it reaches the mirror or its queries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appliance_proto::link::v1 as wire;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::progress::MirrorProgress;
use super::protocol::{self, BatchStep, MirrorEnd, SendCursor};
use super::{SessionError, frame};
use crate::log::{self, Compression, Log, LogError, Offset, Partition, PartitionId, TopicName};

const READ_BYTES: usize = 1 << 20;
const READ_WAIT: Duration = Duration::from_millis(500);
/// zstd's fastest level: the link is usually limited by the uplink, rarely by this CPU.
const ZSTD_LEVEL: i32 = 1;

/// How batches that are not compressed already travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireCompression {
    None,
    #[default]
    Zstd,
    Lz4,
}

impl WireCompression {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
        }
    }

    pub fn to_wire(self) -> wire::WireCompression {
        match self {
            Self::None => wire::WireCompression::None,
            Self::Zstd => wire::WireCompression::Zstd,
            Self::Lz4 => wire::WireCompression::Lz4,
        }
    }

    pub fn from_wire(value: i32) -> Option<Self> {
        match wire::WireCompression::try_from(value).ok()? {
            wire::WireCompression::None => Some(Self::None),
            wire::WireCompression::Zstd => Some(Self::Zstd),
            wire::WireCompression::Lz4 => Some(Self::Lz4),
        }
    }

    fn compress(self, batch: Bytes, stored: Compression) -> wire::Batch {
        let stored_length = batch.len() as u32;
        let compressed = match self {
            // Compressing a compressed batch again costs CPU and saves nothing.
            _ if stored != Compression::None => None,
            Self::None => None,
            Self::Zstd => zstd::bulk::compress(&batch, ZSTD_LEVEL).ok(),
            Self::Lz4 => Some(lz4_flex::block::compress(&batch)),
        };
        match compressed {
            Some(data) if data.len() < batch.len() => wire::Batch {
                data: data.into(),
                compression: self.to_wire() as i32,
                stored_length,
            },
            _ => wire::Batch {
                data: batch,
                compression: wire::WireCompression::None as i32,
                stored_length,
            },
        }
    }
}

/// The batch as stored at its origin; never inflates past `limit`.
fn decompress(batch: wire::Batch, limit: usize) -> Result<BytesMut, SessionError> {
    let length = batch.stored_length as usize;
    if length > limit {
        return Err(SessionError::Protocol(format!(
            "a batch of {length} bytes is over this mirror's limit of {limit}"
        )));
    }
    let bytes = match WireCompression::from_wire(batch.compression) {
        // Without a copy: the frame's buffer is the batch's alone once decoded.
        Some(WireCompression::None) => BytesMut::from(batch.data),
        Some(WireCompression::Zstd) => zstd::bulk::decompress(&batch.data, length)
            .map_err(|e| SessionError::Protocol(format!("a zstd batch does not decompress: {e}")))?
            .as_slice()
            .into(),
        Some(WireCompression::Lz4) => lz4_flex::block::decompress(&batch.data, length)
            .map_err(|e| SessionError::Protocol(format!("an lz4 batch does not decompress: {e}")))?
            .as_slice()
            .into(),
        None => {
            return Err(SessionError::Protocol(format!(
                "unknown wire compression {}",
                batch.compression
            )));
        }
    };
    if bytes.len() != length {
        return Err(SessionError::Protocol(format!(
            "a batch decompressed to {} bytes, not the {length} announced",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Checks every record of a received batch with the log's own parser, so that what a mirror
/// stores can be read by every query later; a batch that does not parse is refused whole.
fn check_records(batch: BytesMut) -> Result<BytesMut, SessionError> {
    let batch = batch.freeze();
    let checked = log::validate_batch(&batch).and_then(|header| {
        if header.total_len != batch.len() {
            return Err(log::BatchError::TrailingBytes {
                extra: batch.len() - header.total_len,
            });
        }
        let mut wrong_time = None;
        log::visit_batch(&header, batch.clone(), |record| {
            if wrong_time.is_none() {
                wrong_time = record.timestamp.check().err();
            }
        })?;
        wrong_time.map_or(Ok(()), Err)
    });
    if let Err(error) = checked {
        let at = log::BatchHeader::parse(&batch).map_or(0, |header| header.base_offset.0);
        return Err(SessionError::Quarantined {
            reason: format!("the batch at offset {at} does not parse: {error}"),
        });
    }
    // The parser's handles are gone, so the bytes are this batch's alone again.
    Ok(batch
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..])))
}

/// A cap on the bytes a link sends per second, shared by its partition streams.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl RateLimit {
    /// `0` is no cap.
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more may be sent.
    async fn take(&self, bytes: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let due = {
            let mut next_free = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let due = (*next_free).max(Instant::now());
            *next_free = due + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            due
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// What a sender needs besides its partition.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub compression: WireCompression,
    pub limit: Arc<RateLimit>,
}

/// Where `mirror` stands now, to tell the sender in Positions.
pub fn mirror_end(mirror: &Partition) -> Result<MirrorEnd, LogError> {
    let next = mirror.high_watermark();
    let previous_batch_crc = match next.0.checked_sub(1) {
        Some(last) if Offset(last) >= mirror.log_start() => {
            Some(log::BatchHeader::parse(&mirror.read(Offset(last), 1)?.batches)?.stored_crc)
        }
        _ => None,
    };
    Ok(MirrorEnd {
        next,
        previous_batch_crc,
    })
}

/// Checks that `source` continues a mirror that ends at `end`: the mirror is not ahead, and
/// the batch before `end.next` here is the one the mirror holds last.
pub(super) fn check_continues(
    source: &Partition,
    topic: &TopicName,
    partition: PartitionId,
    end: MirrorEnd,
) -> Result<(), SessionError> {
    let diverged = |detail: String| SessionError::Diverged {
        topic: topic.clone(),
        partition,
        detail,
    };
    let here = source.high_watermark();
    if end.next > here {
        return Err(diverged(format!(
            "the mirror is ahead of it (next offset {}, here {here})",
            end.next
        )));
    }
    let Some(crc) = end.previous_batch_crc else {
        return Ok(());
    };
    let Some(last) = end.next.0.checked_sub(1).map(Offset) else {
        return Ok(());
    };
    // Retention deleted the batch here: nothing left to compare.
    if last < source.log_start() {
        return Ok(());
    }
    let chunk = match source.read(last, 1) {
        Ok(chunk) => chunk,
        Err(LogError::OffsetOutOfRange { .. }) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    let header = log::validate_batch(&chunk.batches).map_err(LogError::from)?;
    if header.next_offset() != end.next {
        return Err(diverged(format!(
            "the mirror's next offset {} falls inside a batch here ({} to {})",
            end.next,
            header.base_offset,
            header.next_offset()
        )));
    }
    if header.stored_crc != crc {
        return Err(diverged(format!(
            "the mirror's last batch (ending at {last}) is not the one here"
        )));
    }
    Ok(())
}

/// Streams one partition from the receiver's mirror end on a stream of its own, until the
/// connection ends.
pub async fn send_partition(
    connection: quinn::Connection,
    source: Arc<Partition>,
    topic: TopicName,
    end: MirrorEnd,
    options: SendOptions,
    progress: Arc<MirrorProgress>,
) -> Result<(), SessionError> {
    let partition = source.id();
    check_continues(&source, &topic, partition, end)?;
    let mut stream = connection.open_uni().await?;
    let header = wire::PartitionHeader {
        topic: topic.to_string(),
        partition: partition.0,
        from_offset: end.next.0,
    };
    stream.write_all(&frame::encode(&header)).await?;
    let mut cursor = SendCursor::new(end.next);
    loop {
        // A chunk that is ready at once never makes the loop wait: give the other tasks of
        // this worker their turn.
        tokio::task::consume_budget().await;
        let chunk = match source.read_wait(cursor.next(), READ_BYTES, READ_WAIT).await {
            Ok(chunk) => chunk,
            Err(error) => {
                let from = cursor.next();
                let gap = match &error {
                    LogError::OffsetOutOfRange { log_start, .. } => {
                        cursor.deleted_before(*log_start)
                    }
                    _ => None,
                };
                let Some(gap) = gap else {
                    return Err(error.into());
                };
                // Retention deleted records the receiver never had: say so in the stream, in
                // order, and go on from what is left.
                let to = cursor.next();
                tracing::warn!(%topic, %partition, %from, %to, "gap in a mirrored partition: retention deleted records before they were sent");
                progress.count_gap(to.0 - from.0);
                let gap = wire::PartitionFrame {
                    kind: Some(wire::partition_frame::Kind::Gap(gap)),
                };
                stream.write_all(&frame::encode(&gap)).await?;
                continue;
            }
        };
        let mut batches: Bytes = chunk.batches;
        while !batches.is_empty() {
            let header = log::validate_batch(&batches).map_err(LogError::from)?;
            let batch = batches.split_to(header.total_len);
            match cursor.batch(header.base_offset, header.next_offset()) {
                BatchStep::Skip => continue,
                BatchStep::Diverged(detail) => {
                    return Err(SessionError::Diverged {
                        topic: topic.clone(),
                        partition,
                        detail,
                    });
                }
                BatchStep::Send => {}
            }
            let mut frame =
                frame::encode_batch(options.compression.compress(batch, header.compression));
            let length = frame.iter().map(Bytes::len).sum();
            options.limit.take(length).await;
            stream.write_all_chunks(&mut frame).await?;
            progress.count_bytes(length);
        }
    }
}

/// Batches a receiver has queued for the disk and not yet acknowledged: the next frames are
/// read while these are written.
const IN_FLIGHT: usize = 16;

/// What the acknowledging half of a receiver waits for, in stream order.
enum Landing {
    Batch(
        std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<log::AppendOutcome, LogError>> + Send>,
        >,
    ),
    /// The mirror restarted at this offset after a gap (durable already).
    Restarted(Offset),
}

/// Receives one partition stream into `mirror`, acknowledging durable progress on `acks`.
/// One half reads, inflates and queues batches; the other awaits their durability in order
/// and acknowledges, so the link keeps sending while the disk writes.
pub async fn receive_partition(
    stream: &mut quinn::RecvStream,
    log: &Log,
    mirror: &TopicName,
    partition: PartitionId,
    progress: &MirrorProgress,
    acks: &mpsc::Sender<wire::ControlFrame>,
    origin_topic: &str,
) -> Result<(), SessionError> {
    let target = log.partition(mirror, partition)?;
    let limit = log.topic_config(mirror)?.max_message_bytes as usize + frame::ENVELOPE_BYTES;
    let (landings, mut landed) = mpsc::channel::<Landing>(IN_FLIGHT);
    let receive = async {
        while let Some(frame) = frame::read::<wire::PartitionFrame>(stream, limit).await? {
            if log.mirror_of(mirror).is_none() {
                return Err(SessionError::Protocol(format!(
                    "{mirror} was promoted to a topic of its own; its link no longer writes to it"
                )));
            }
            let landing = match frame.kind {
                Some(wire::partition_frame::Kind::Batch(batch)) => {
                    progress.count_bytes(batch.data.len());
                    let batch = check_records(decompress(batch, limit)?)?;
                    Landing::Batch(Box::pin(target.submit_at_own_offset(batch).await?))
                }
                Some(wire::partition_frame::Kind::Gap(gap)) => {
                    let before = target.high_watermark();
                    let Some(start) = protocol::gap_restart(&gap, before) else {
                        continue;
                    };
                    target.restart_at(start).await?;
                    progress.count_gap(start.0 - before.0);
                    tracing::warn!(%mirror, %partition, from = %before, to = %start, "gap: the origin's retention deleted records this mirror never had; it continues at the origin's log start");
                    Landing::Restarted(start)
                }
                None => {
                    return Err(SessionError::Protocol(
                        "an empty partition frame".to_owned(),
                    ));
                }
            };
            if landings.send(landing).await.is_err() {
                break;
            }
        }
        drop(landings);
        Ok(())
    };
    let acknowledge = async {
        while let Some(landing) = landed.recv().await {
            let next = match landing {
                Landing::Batch(durable) => match durable.await {
                    Ok(outcome) => outcome.last_offset.next(),
                    // A resend of a batch the mirror holds already (queued by a session
                    // that ended before it was written).
                    Err(LogError::NotNextOffset { expected, got, .. }) if got < expected => {
                        continue;
                    }
                    Err(error) => return Err(SessionError::from(error)),
                },
                Landing::Restarted(start) => start,
            };
            progress.set_acknowledged(next.0);
            if acks
                .send(protocol::ack(origin_topic, partition, next))
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(())
    };
    tokio::try_join!(receive, acknowledge)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Bytes {
        let records: Vec<log::Record> = (0..100)
            .map(|n| log::Record {
                key: None,
                value: Some(Bytes::from(format!("{{\"reading\":{n},\"unit\":\"C\"}}"))),
                headers: Vec::new(),
                timestamp: log::Timestamp(1_700_000_000_000 + n),
            })
            .collect();
        log::encode(&records, Compression::None).unwrap().freeze()
    }

    #[test]
    fn every_wire_compression_gives_back_the_stored_bytes() {
        let batch = stored();
        for compression in [
            WireCompression::None,
            WireCompression::Zstd,
            WireCompression::Lz4,
        ] {
            let on_wire = compression.compress(batch.clone(), Compression::None);
            if compression != WireCompression::None {
                assert!(on_wire.data.len() < batch.len(), "{compression:?}");
            }
            let back = decompress(on_wire, 1 << 20).unwrap();
            assert_eq!(&back[..], &batch[..], "{compression:?}");
        }
    }

    #[test]
    fn a_compressed_batch_travels_as_it_is() {
        let batch = stored();
        let on_wire = WireCompression::Zstd.compress(batch.clone(), Compression::Lz4);
        assert_eq!(on_wire.compression, wire::WireCompression::None as i32);
        assert_eq!(on_wire.data, batch);
    }

    #[test]
    fn hostile_batches_are_refused_not_inflated() {
        let batch = stored();
        let mut on_wire = WireCompression::Zstd.compress(batch.clone(), Compression::None);
        on_wire.stored_length = 10 << 20;
        assert!(decompress(on_wire.clone(), 1 << 20).is_err());
        on_wire.stored_length = 100;
        assert!(decompress(on_wire.clone(), 1 << 20).is_err());
        on_wire.compression = 9;
        assert!(decompress(on_wire, 1 << 20).is_err());
        let garbage = wire::Batch {
            data: Bytes::from_static(b"\x28\xb5\x2f\xfd not zstd"),
            compression: wire::WireCompression::Zstd as i32,
            stored_length: 1000,
        };
        assert!(decompress(garbage, 1 << 20).is_err());
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_sends() {
        let limit = RateLimit::new(1_000_000);
        let started = Instant::now();
        for _ in 0..5 {
            limit.take(100_000).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
}
