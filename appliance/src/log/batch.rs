//! Kafka RecordBatch v2: the one format records have from the producer to disk to the link.
//!
//! The log itself only needs the fixed 61-byte batch header (offsets, timestamps, length, CRC)
//! and never decompresses records, so appends and reads stay copies of bytes. Encoding and
//! decoding are written here (the hot path of every producer, consumer, pipeline, connector
//! and query): the bytes are those of `kafka-protocol`'s records module (property tests
//! compare the two), without its per-record maps and copies, with repeated header keys kept,
//! and with every length checked against the bytes there are (bounded decompression, record
//! counts against sizes). The compressors are zstd, lz4 frame and gzip.
//!
//! ```text
//! offset  size  field                 covered by CRC-32C
//!      0     8  base offset           no  (the log assigns it on append)
//!      8     4  batch length          no  (bytes after this field)
//!     12     4  partition leader epoch no
//!     16     1  magic (= 2)           no
//!     17     4  crc                   -
//!     21     2  attributes            yes (bits 0-2 compression, 3 timestamp type)
//!     23     4  last offset delta     yes
//!     27     8  base timestamp        yes
//!     35     8  max timestamp         yes
//!     43     8  producer id           yes
//!     51     2  producer epoch        yes
//!     53     4  base sequence         yes
//!     57     4  record count          yes
//!     61     -  records (compressed as a whole when attributes say so)
//! ```

use std::io::{Read, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records as kp;
use serde::{Deserialize, Serialize};

use super::types::{Offset, Timestamp};

/// Length of the fixed batch header that precedes the records.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before the `batch length` field's coverage starts.
const LENGTH_PREFIX: usize = 12;
const CRC_COVERAGE_START: usize = 21;
const MAGIC_V2: u8 = 2;
/// The smallest encoding of one record: length, attributes, timestamp delta, offset delta,
/// key length, value length and header count, one byte each.
const MIN_RECORD_LEN: usize = 7;
/// Decompressed records of one batch may not exceed this, so that a small hostile batch cannot
/// expand into an unbounded allocation.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// What is wrong with a batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field {length} is out of range")]
    BadLength { length: i64 },
    #[error("batch has magic byte {magic}; only RecordBatch v2 (magic 2) is supported")]
    UnsupportedMagic { magic: u8 },
    #[error("batch CRC-32C mismatch: header says {stored:#010x}, content gives {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch holds {record_count} records but its last offset delta is {last_offset_delta}")]
    BadRecordCount {
        record_count: i64,
        last_offset_delta: i64,
    },
    #[error("batch has a negative base offset {base_offset}")]
    NegativeOffset { base_offset: i64 },
    #[error("batch uses compression codec {codec}; supported are none, gzip, lz4 and zstd")]
    UnsupportedCompression { codec: i16 },
    #[error("batch is a transactional or control batch, which the appliance does not accept")]
    Transactional,
    #[error("batch decompresses to more than {limit} bytes")]
    DecompressionLimit { limit: usize },
    #[error("batch holds {byte_count} bytes of records, too few for {record_count} records")]
    RecordsTooShort {
        record_count: usize,
        byte_count: usize,
    },
    #[error("{extra} bytes follow the batch; send exactly one batch per append")]
    TrailingBytes { extra: usize },
    #[error("batch is empty: a batch needs at least one record")]
    Empty,
    #[error("batch records are malformed: {detail}")]
    Malformed { detail: String },
    #[error(
        "record timestamp {timestamp} ms is outside the years 1 to 9999 ({} to {} ms since \
         1970, or -1 for none)",
        Timestamp::EARLIEST.0,
        Timestamp::LATEST.0
    )]
    TimestampOutOfRange { timestamp: i64 },
}

/// How the records of a batch are compressed (attribute bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Lz4,
    Zstd,
    /// Kafka's snappy: snappy-java's framing (what Java producers write) or one raw block
    /// (what librdkafka writes); the appliance writes the framing.
    Snappy,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        match attributes & 0x7 {
            0 => Ok(Self::None),
            1 => Ok(Self::Gzip),
            2 => Ok(Self::Snappy),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            codec => Err(BatchError::UnsupportedCompression { codec }),
        }
    }

    fn to_kafka(self) -> kp::Compression {
        match self {
            Self::None => kp::Compression::None,
            Self::Gzip => kp::Compression::Gzip,
            Self::Lz4 => kp::Compression::Lz4,
            Self::Zstd => kp::Compression::Zstd,
            Self::Snappy => kp::Compression::Snappy,
        }
    }
}

/// The fixed header of a RecordBatch v2, as the log needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    /// The whole batch, header included.
    pub total_len: usize,
    pub stored_crc: u32,
    pub compression: Compression,
    pub last_offset_delta: u32,
    pub base_timestamp: Timestamp,
    pub max_timestamp: Timestamp,
    pub record_count: u32,
    /// An idempotent producer's id, epoch and the sequence of the first record; -1 when the
    /// producer is not one.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `bytes` (which may hold more than this batch) and checks
    /// every field that can be checked without the records.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: bytes.len(),
            });
        }
        let mut buf = bytes;
        let base_offset = buf.get_i64();
        let length = i64::from(buf.get_i32());
        let _partition_leader_epoch = buf.get_i32();
        let magic = buf.get_u8();
        let stored_crc = buf.get_u32();
        let attributes = buf.get_i16();
        let last_offset_delta = i64::from(buf.get_i32());
        let base_timestamp = buf.get_i64();
        let max_timestamp = buf.get_i64();
        let producer_id = buf.get_i64();
        let producer_epoch = buf.get_i16();
        let base_sequence = buf.get_i32();
        let record_count = i64::from(buf.get_i32());

        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic { magic });
        }
        if length < (BATCH_HEADER_LEN - LENGTH_PREFIX) as i64 || length > i64::from(i32::MAX) {
            return Err(BatchError::BadLength { length });
        }
        if base_offset < 0 {
            return Err(BatchError::NegativeOffset { base_offset });
        }
        // A compacted batch keeps its offset range with fewer records: more offsets than
        // records is valid in the log; appends that assign offsets require them dense
        // ([`BatchHeader::check_dense`]).
        if record_count <= 0 || last_offset_delta < record_count - 1 {
            return Err(if record_count == 0 {
                BatchError::Empty
            } else {
                BatchError::BadRecordCount {
                    record_count,
                    last_offset_delta,
                }
            });
        }
        if attributes & (0b11 << 4) != 0 {
            return Err(BatchError::Transactional);
        }
        let compression = Compression::from_attributes(attributes)?;
        Ok(Self {
            base_offset: Offset(base_offset.unsigned_abs()),
            total_len: LENGTH_PREFIX + length as usize,
            stored_crc,
            compression,
            last_offset_delta: last_offset_delta as u32,
            base_timestamp: Timestamp(base_timestamp),
            max_timestamp: Timestamp(max_timestamp),
            record_count: record_count as u32,
            producer_id,
            producer_epoch,
            base_sequence,
        })
    }

    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.last_offset_delta))
    }

    /// Refuses a batch whose timestamps (first and greatest) no query or index could use.
    /// Checked when a batch is appended, not when stored ones are read.
    pub fn check_timestamps(&self) -> Result<(), BatchError> {
        for timestamp in [self.base_timestamp, self.max_timestamp] {
            timestamp.check()?;
        }
        Ok(())
    }

    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }

    /// Refuses a batch whose records do not number every offset of its range, as producers'
    /// batches do; only compaction leaves offsets without records.
    pub fn check_dense(&self) -> Result<(), BatchError> {
        if self.last_offset_delta != self.record_count - 1 {
            return Err(BatchError::BadRecordCount {
                record_count: i64::from(self.record_count),
                last_offset_delta: i64::from(self.last_offset_delta),
            });
        }
        Ok(())
    }
}

/// Checks that `bytes` is exactly one whole batch with a correct CRC, and returns its header.
pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if bytes.len() < header.total_len {
        return Err(BatchError::Truncated {
            needed: header.total_len,
            available: bytes.len(),
        });
    }
    verify_crc(&header, &bytes[..header.total_len])?;
    Ok(header)
}

/// Checks the CRC-32C of a whole batch against its header.
pub fn verify_crc(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    let computed = crc32c::crc32c(&batch[CRC_COVERAGE_START..header.total_len]);
    if computed == header.stored_crc {
        Ok(())
    } else {
        Err(BatchError::CrcMismatch {
            stored: header.stored_crc,
            computed,
        })
    }
}

/// Sets the base offset of a batch in place. The CRC does not cover it, so nothing else changes:
/// this is what lets the log assign offsets without re-encoding.
pub fn set_base_offset(batch: &mut [u8], offset: Offset) {
    batch[..8].copy_from_slice(&offset.0.to_be_bytes());
}

/// One record header: Kafka allows a null value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as a producer hands it in: key, value (`None` is a tombstone), headers, timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    pub timestamp: Timestamp,
}

impl Record {
    /// The bytes of its key, value and headers: what quotas count of a record delivered.
    pub fn payload_len(&self) -> usize {
        let bytes = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        bytes(&self.key)
            + bytes(&self.value)
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + bytes(&h.value))
                .sum::<usize>()
    }
}

/// A record as read back from the log, with the offset it was stored at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: Offset,
    pub record: Record,
}

/// Encodes records as one batch with base offset 0; the log assigns the real offsets on append.
///
/// Written directly rather than through `kafka-protocol`'s encoder, which needs a record
/// structure of its own for every record (headers in a map, keys copied): the byte layout is
/// the same (a property test compares the two), at a fraction of the cost, and repeated
/// header keys, which Kafka allows, are kept.
pub fn encode(records: &[Record], compression: Compression) -> Result<BytesMut, BatchError> {
    let count = u32::try_from(records.len())
        .map_err(|_| malformed(anyhow::anyhow!("{} records in one batch", records.len())))?;
    encode_range(
        records
            .iter()
            .enumerate()
            .map(|(index, record)| (index as u32, record)),
        count.saturating_sub(1),
        compression,
    )
}

/// Encodes records at the given offset deltas (increasing) as one batch covering the deltas 0
/// to `last_offset_delta`, with base offset 0: what compaction writes, where offsets without a
/// record keep their place in the range.
pub fn encode_sparse(
    records: &[(u32, Record)],
    last_offset_delta: u32,
    compression: Compression,
) -> Result<BytesMut, BatchError> {
    encode_range(
        records.iter().map(|(delta, record)| (*delta, record)),
        last_offset_delta,
        compression,
    )
}

fn encode_range<'a>(
    records: impl Iterator<Item = (u32, &'a Record)> + Clone,
    last_offset_delta: u32,
    compression: Compression,
) -> Result<BytesMut, BatchError> {
    let (Some(min_timestamp), Some(max_timestamp)) = (
        records.clone().map(|(_, r)| r.timestamp.0).min(),
        records.clone().map(|(_, r)| r.timestamp.0).max(),
    ) else {
        return Err(BatchError::Empty);
    };
    let count = i32::try_from(records.clone().count())
        .map_err(|_| malformed(anyhow::anyhow!("too many records in one batch")))?;
    let last_offset_delta = i32::try_from(last_offset_delta)
        .map_err(|_| malformed(anyhow::anyhow!("offset delta {last_offset_delta}")))?;
    let sizes: Vec<usize> = records
        .clone()
        .map(|(delta, record)| record_body_len(record, delta, record.timestamp.0 - min_timestamp))
        .collect();
    let records_len: usize = sizes
        .iter()
        .map(|size| varint_len(*size as i64) + size)
        .sum();
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_LEN + records_len);
    buf.put_i64(0);
    buf.put_i32(0); // batch length, filled in below
    buf.put_i32(kp::NO_PARTITION_LEADER_EPOCH);
    buf.put_u8(MAGIC_V2);
    buf.put_u32(0); // crc, filled in below
    buf.put_i16(compression.to_kafka() as i16);
    buf.put_i32(last_offset_delta);
    buf.put_i64(min_timestamp);
    buf.put_i64(max_timestamp);
    buf.put_i64(kp::NO_PRODUCER_ID);
    buf.put_i16(kp::NO_PRODUCER_EPOCH);
    buf.put_i32(kp::NO_SEQUENCE);
    buf.put_i32(count);
    let write_records = |out: &mut BytesMut| -> Result<(), BatchError> {
        for ((delta, record), size) in records.clone().zip(&sizes) {
            put_record(
                out,
                record,
                delta,
                record.timestamp.0 - min_timestamp,
                *size,
            )?;
        }
        Ok(())
    };
    if compression == Compression::None {
        write_records(&mut buf)?;
    } else {
        let mut plain = BytesMut::with_capacity(records_len);
        write_records(&mut plain)?;
        compress(compression, &mut plain, &mut buf).map_err(malformed)?;
    }
    let batch_len = i32::try_from(buf.len() - LENGTH_PREFIX)
        .map_err(|_| malformed(anyhow::anyhow!("batch of {} bytes", buf.len())))?;
    buf[8..LENGTH_PREFIX].copy_from_slice(&batch_len.to_be_bytes());
    let crc = crc32c::crc32c(&buf[CRC_COVERAGE_START..]);
    buf[17..CRC_COVERAGE_START].copy_from_slice(&crc.to_be_bytes());
    Ok(buf)
}

/// The bytes of one record after its length field.
fn record_body_len(record: &Record, offset_delta: u32, timestamp_delta: i64) -> usize {
    let bytes = |field: Option<&Bytes>| {
        field.map_or(varint_len(-1), |b| varint_len(b.len() as i64) + b.len())
    };
    1 + varint_len(timestamp_delta)
        + varint_len(i64::from(offset_delta))
        + bytes(record.key.as_ref())
        + bytes(record.value.as_ref())
        + varint_len(record.headers.len() as i64)
        + record
            .headers
            .iter()
            .map(|h| varint_len(h.key.len() as i64) + h.key.len() + bytes(h.value.as_ref()))
            .sum::<usize>()
}

fn put_record(
    out: &mut BytesMut,
    record: &Record,
    offset_delta: u32,
    timestamp_delta: i64,
    size: usize,
) -> Result<(), BatchError> {
    let too_large = || malformed(anyhow::anyhow!("a record of {size} bytes"));
    i32::try_from(size).map_err(|_| too_large())?;
    put_varint(out, size as i64);
    out.put_u8(0); // record attributes: none are defined
    put_varint(out, timestamp_delta);
    put_varint(out, i64::from(offset_delta));
    let put_bytes = |out: &mut BytesMut, field: Option<&Bytes>| match field {
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.put_slice(bytes);
        }
        None => put_varint(out, -1),
    };
    put_bytes(out, record.key.as_ref());
    put_bytes(out, record.value.as_ref());
    put_varint(out, record.headers.len() as i64);
    for header in &record.headers {
        put_varint(out, header.key.len() as i64);
        out.put_slice(header.key.as_bytes());
        put_bytes(out, header.value.as_ref());
    }
    Ok(())
}

/// Zigzag variable-length integer, as Kafka's records use.
fn put_varint(out: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8(zigzag as u8 | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

fn varint_len(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    (64 - zigzag.max(1).leading_zeros() as usize).div_ceil(7)
}

fn compress(
    compression: Compression,
    records: &mut BytesMut,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    let mut writer = out.writer();
    match compression {
        Compression::None => writer.write_all(records)?,
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::default());
            encoder.write_all(records)?;
            encoder.finish()?;
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(writer);
            encoder.write_all(records)?;
            encoder.finish()?;
        }
        Compression::Zstd => zstd::stream::copy_encode(&records[..], writer, 3)?,
        Compression::Snappy => snappy_framed(records, &mut writer)?,
    }
    Ok(())
}

/// The start of snappy-java's framing: a magic, its version and the oldest compatible one.
const SNAPPY_JAVA_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// snappy-java's block size: each block is compressed on its own after its length.
const SNAPPY_JAVA_BLOCK: usize = 32 * 1024;

/// `records` in snappy-java's framing, which every Kafka client reads.
fn snappy_framed(records: &[u8], out: &mut impl Write) -> anyhow::Result<()> {
    out.write_all(SNAPPY_JAVA_HEADER)?;
    let mut encoder = snap::raw::Encoder::new();
    for block in records.chunks(SNAPPY_JAVA_BLOCK) {
        let compressed = encoder.compress_vec(block)?;
        out.write_all(&u32::try_from(compressed.len())?.to_be_bytes())?;
        out.write_all(&compressed)?;
    }
    Ok(())
}

/// Snappy records, framed or one raw block, decompressed to at most `limit` bytes.
fn snappy_decompressed(compressed: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut decoder = snap::raw::Decoder::new();
    let mut plain = Vec::new();
    let mut block = |bytes: &[u8], plain: &mut Vec<u8>| -> Result<(), String> {
        let len = snap::raw::decompress_len(bytes).map_err(|e| e.to_string())?;
        if plain.len() + len > limit {
            return Err(format!("it decompresses to more than {limit} bytes"));
        }
        let start = plain.len();
        plain.resize(start + len, 0);
        decoder
            .decompress(bytes, &mut plain[start..])
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let Some(mut blocks) = compressed.strip_prefix(SNAPPY_JAVA_HEADER) else {
        block(compressed, &mut plain)?;
        return Ok(plain);
    };
    while !blocks.is_empty() {
        let (len, rest) = blocks
            .split_first_chunk::<4>()
            .ok_or("a snappy block's length is cut off")?;
        let len = u32::from_be_bytes(*len) as usize;
        let data = rest.get(..len).ok_or("a snappy block is cut off")?;
        block(data, &mut plain)?;
        blocks = &rest[len..];
    }
    Ok(plain)
}

/// Decodes every whole batch in `bytes` into records, validating each batch first.
pub fn decode_all(bytes: Bytes) -> Result<Vec<StoredRecord>, BatchError> {
    let mut out = Vec::new();
    visit_all(bytes, |record| out.push(record.to_stored()))?;
    Ok(out)
}

/// Decodes one validated batch, appending its records to `out`.
pub fn decode_batch(
    header: &BatchHeader,
    batch: Bytes,
    out: &mut Vec<StoredRecord>,
) -> Result<(), BatchError> {
    out.reserve(header.record_count as usize);
    visit_batch(header, batch, |record| out.push(record.to_stored()))
}

/// Calls `visit` with every record of every whole batch in `bytes`, validating each batch
/// first; the records borrow the batches' bytes, so nothing is copied.
pub fn visit_all(
    mut bytes: Bytes,
    mut visit: impl FnMut(RecordView<'_>),
) -> Result<(), BatchError> {
    while !bytes.is_empty() {
        let header = validate(&bytes)?;
        let batch = bytes.split_to(header.total_len);
        visit_batch(&header, batch, &mut visit)?;
    }
    Ok(())
}

/// One record of a batch as stored, borrowing the bytes it was read from.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: Offset,
    pub timestamp: Timestamp,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    header_count: usize,
    /// The record's headers, already checked by `visit_batch`.
    headers: &'a [u8],
    /// The (decompressed) records every slice above points into.
    records: &'a Bytes,
}

impl<'a> RecordView<'a> {
    /// The record's headers in order, repeated keys included.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + use<'a> {
        let mut cursor = Cursor(self.headers);
        (0..self.header_count).map_while(move |_| cursor.header().ok())
    }

    /// The record with its own handles on the bytes (no copies).
    pub fn to_stored(&self) -> StoredRecord {
        let bytes = |field: Option<&[u8]>| field.map(|slice| self.records.slice_ref(slice));
        StoredRecord {
            offset: self.offset,
            record: Record {
                key: bytes(self.key),
                value: bytes(self.value),
                headers: self
                    .headers()
                    .map(|(key, value)| Header {
                        key: key.to_owned(),
                        value: bytes(value),
                    })
                    .collect(),
                timestamp: self.timestamp,
            },
        }
    }
}

/// Calls `visit` with every record of one validated batch, in order. Every length, count and
/// varint is checked against the bytes there are, so a hostile batch that carries a valid CRC
/// gets an error, never a panic or an allocation it asks for.
pub fn visit_batch(
    header: &BatchHeader,
    batch: Bytes,
    mut visit: impl FnMut(RecordView<'_>),
) -> Result<(), BatchError> {
    let record_count = header.record_count as usize;
    let stored = batch.slice(BATCH_HEADER_LEN..header.total_len);
    let records = if header.compression == Compression::None {
        stored
    } else {
        decompress_bounded(header.compression, &stored)?
    };
    check_room_for_records(record_count, records.len())?;
    let base_offset = header.base_offset.0 as i64;
    let mut cursor = Cursor(&records);
    let mut previous_delta = -1;
    for index in 0..record_count {
        let size = cursor.length("record length")?;
        let mut record = Cursor(cursor.take(size, "record")?);
        record.take(1, "record attributes")?;
        let timestamp_delta = record.varint("timestamp delta")?;
        let offset_delta = record.int("offset delta")?;
        let key = record.nullable("key")?;
        let value = record.nullable("value")?;
        let header_count = record.length("header count")?;
        let headers = record.0;
        for _ in 0..header_count {
            record.header()?;
        }
        if !record.0.is_empty() {
            return Err(malformed_detail(format!(
                "record {index} has {} bytes after its headers",
                record.0.len()
            )));
        }
        if offset_delta <= previous_delta
            || offset_delta as i64 > i64::from(header.last_offset_delta)
        {
            return Err(malformed_detail(format!(
                "record {index} has offset delta {offset_delta}, after {previous_delta} and \
                 within 0 to {} expected",
                header.last_offset_delta
            )));
        }
        previous_delta = offset_delta;
        let offset = base_offset
            .checked_add(i64::from(offset_delta))
            .filter(|offset| *offset >= 0)
            .ok_or(BatchError::NegativeOffset {
                base_offset: base_offset.wrapping_add(i64::from(offset_delta)),
            })?;
        visit(RecordView {
            offset: Offset(offset as u64),
            timestamp: Timestamp(header.base_timestamp.0.saturating_add(timestamp_delta)),
            key,
            value,
            header_count,
            headers,
            records: &records,
        });
    }
    if !cursor.0.is_empty() {
        return Err(malformed_detail(format!(
            "{} bytes follow the last of {record_count} records",
            cursor.0.len()
        )));
    }
    Ok(())
}

/// Reads the fields of a record: Kafka's zigzag varints and length-prefixed bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], BatchError> {
        if len > self.0.len() {
            return Err(malformed_detail(format!(
                "{what} needs {len} bytes, {} are left",
                self.0.len()
            )));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn varint(&mut self, what: &str) -> Result<i64, BatchError> {
        let mut zigzag: u64 = 0;
        for (index, byte) in self.0.iter().enumerate().take(10) {
            zigzag |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.0 = &self.0[index + 1..];
                return Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64));
            }
        }
        Err(malformed_detail(format!("{what} is not a complete varint")))
    }

    fn int(&mut self, what: &str) -> Result<i32, BatchError> {
        let value = self.varint(what)?;
        i32::try_from(value)
            .map_err(|_| malformed_detail(format!("{what} {value} is out of range")))
    }

    fn length(&mut self, what: &str) -> Result<usize, BatchError> {
        let value = self.int(what)?;
        usize::try_from(value).map_err(|_| malformed_detail(format!("{what} {value} is negative")))
    }

    /// Bytes behind a length, where -1 means null.
    fn nullable(&mut self, what: &str) -> Result<Option<&'a [u8]>, BatchError> {
        match self.int(what)? {
            -1 => Ok(None),
            len if len < -1 => Err(malformed_detail(format!("{what} length {len} is negative"))),
            len => self.take(len as usize, what).map(Some),
        }
    }

    fn header(&mut self) -> Result<(&'a str, Option<&'a [u8]>), BatchError> {
        let len = self.length("header key length")?;
        let key = std::str::from_utf8(self.take(len, "header key")?)
            .map_err(|e| malformed_detail(format!("header key is not UTF-8: {e}")))?;
        Ok((key, self.nullable("header value")?))
    }
}

fn check_room_for_records(record_count: usize, byte_count: usize) -> Result<(), BatchError> {
    if record_count.saturating_mul(MIN_RECORD_LEN) > byte_count {
        return Err(BatchError::RecordsTooShort {
            record_count,
            byte_count,
        });
    }
    Ok(())
}

fn decompress_bounded(compression: Compression, records: &Bytes) -> Result<Bytes, BatchError> {
    let limit = MAX_DECOMPRESSED_BATCH_BYTES;
    let mut plain = Vec::new();
    let read = match compression {
        Compression::None => return Ok(records.clone()),
        Compression::Gzip => flate2::read::GzDecoder::new(&records[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut plain),
        Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(&records[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut plain),
        Compression::Zstd => zstd::stream::read::Decoder::new(&records[..])
            .and_then(|decoder| decoder.take(limit as u64 + 1).read_to_end(&mut plain)),
        Compression::Snappy => {
            plain =
                snappy_decompressed(records, limit).map_err(|detail| BatchError::Malformed {
                    detail: format!("snappy decompression failed: {detail}"),
                })?;
            Ok(plain.len())
        }
    };
    read.map_err(|error| BatchError::Malformed {
        detail: format!("{compression:?} decompression failed: {error}"),
    })?;
    if plain.len() > limit {
        return Err(BatchError::DecompressionLimit { limit });
    }
    Ok(Bytes::from(plain))
}

fn malformed(error: anyhow::Error) -> BatchError {
    malformed_detail(format!("{error:#}"))
}

fn malformed_detail(detail: String) -> BatchError {
    BatchError::Malformed { detail }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    use super::*;

    const MAGIC_POS: usize = 16;
    const CRC_POS: usize = 17;

    fn record(value: &[u8]) -> Record {
        Record {
            key: None,
            value: Some(Bytes::copy_from_slice(value)),
            headers: vec![],
            timestamp: Timestamp(1_700_000_000_000),
        }
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::btree_map(
                "[a-z]{1,8}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                0..4,
            ),
            0i64..4_000_000_000_000,
        )
            .prop_map(|(key, value, headers, timestamp)| Record {
                key: key.map(Bytes::from),
                value: value.map(Bytes::from),
                headers: headers
                    .into_iter()
                    .map(|(key, value)| Header {
                        key,
                        value: value.map(Bytes::from),
                    })
                    .collect(),
                timestamp: Timestamp(timestamp),
            })
    }

    fn arb_compression() -> impl Strategy<Value = Compression> {
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Gzip),
            Just(Compression::Lz4),
            Just(Compression::Zstd),
            Just(Compression::Snappy),
        ]
    }

    /// The batch `kafka-protocol`'s encoder makes of the same records.
    fn kafka_encode(records: &[Record], compression: Compression) -> BytesMut {
        let kafka_records: Vec<kp::Record> = records
            .iter()
            .enumerate()
            .map(|(index, record)| kp::Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: kp::NO_PARTITION_LEADER_EPOCH,
                producer_id: kp::NO_PRODUCER_ID,
                producer_epoch: kp::NO_PRODUCER_EPOCH,
                timestamp_type: kp::TimestampType::Creation,
                offset: index as i64,
                sequence: index as i32 - 1,
                timestamp: record.timestamp.0,
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record
                    .headers
                    .iter()
                    .map(|h| (StrBytes::from_string(h.key.clone()), h.value.clone()))
                    .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = kp::RecordEncodeOptions {
            version: 2,
            compression: compression.to_kafka(),
        };
        kp::RecordBatchEncoder::encode(&mut buf, &kafka_records, &options).expect("encode");
        buf
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            8191,
            8192,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }

    #[test]
    fn snappy_reads_librdkafkas_raw_block_and_javas_framing_within_the_limit() {
        let plain: Vec<u8> = (0..100_000u32)
            .flat_map(|n| (n % 251).to_be_bytes())
            .collect();
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(snappy_decompressed(&raw, plain.len()).unwrap(), plain);
        let mut framed = Vec::new();
        snappy_framed(&plain, &mut framed).unwrap();
        assert!(framed.starts_with(SNAPPY_JAVA_HEADER));
        assert_eq!(snappy_decompressed(&framed, plain.len()).unwrap(), plain);
        let over = snappy_decompressed(&framed, plain.len() - 1).unwrap_err();
        assert!(over.contains("more than"), "{over}");
        let cut = snappy_decompressed(&framed[..framed.len() - 1], plain.len()).unwrap_err();
        assert!(cut.contains("cut off"), "{cut}");
    }

    proptest! {
        #[test]
        fn batches_are_byte_for_byte_what_kafkas_encoder_makes(
            records in proptest::collection::vec(arb_record(), 1..50),
        ) {
            prop_assert_eq!(
                encode(&records, Compression::None).expect("encode"),
                kafka_encode(&records, Compression::None)
            );
        }

        #[test]
        fn encode_then_decode_gives_the_records_back(
            records in proptest::collection::vec(arb_record(), 1..50),
            compression in arb_compression(),
            base in 0u64..1 << 40,
        ) {
            let mut bytes = encode(&records, compression).expect("encode");
            set_base_offset(&mut bytes, Offset(base));
            let header = validate(&bytes).expect("valid");
            prop_assert_eq!(header.base_offset, Offset(base));
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(header.compression, compression);
            let max_ts = records.iter().map(|r| r.timestamp).max().expect("non-empty");
            prop_assert_eq!(header.max_timestamp, max_ts);
            let decoded = decode_all(bytes.freeze()).expect("decode");
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (stored, original)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(stored.offset, Offset(base + i as u64));
                prop_assert_eq!(&stored.record, original);
            }
        }

        #[test]
        fn kafkas_batches_decode_as_kafkas_decoder_reads_them(
            records in proptest::collection::vec(arb_record(), 1..50),
        ) {
            // Uncompressed: the crate is built without its codecs (the round trip above covers
            // ours).
            let bytes = kafka_encode(&records, Compression::None).freeze();
            let theirs = kp::RecordBatchDecoder::decode(&mut bytes.clone()).expect("decode");
            let ours = decode_all(bytes).expect("decode");
            prop_assert_eq!(ours.len(), theirs.records.len());
            for (ours, theirs) in ours.iter().zip(&theirs.records) {
                prop_assert_eq!(ours.offset.0 as i64, theirs.offset);
                prop_assert_eq!(ours.record.timestamp.0, theirs.timestamp);
                prop_assert_eq!(&ours.record.key, &theirs.key);
                prop_assert_eq!(&ours.record.value, &theirs.value);
                let their_headers: Vec<(String, Option<Bytes>)> = theirs
                    .headers
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.clone()))
                    .collect();
                let our_headers: Vec<(String, Option<Bytes>)> = ours
                    .record
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                prop_assert_eq!(our_headers, their_headers);
            }
        }

        #[test]
        fn a_resealed_corruption_of_the_records_is_an_error_or_harmless(
            records in proptest::collection::vec(arb_record(), 1..10),
            position in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            // The CRC made valid again: only the record parser stands between these bytes
            // and a panic.
            let mut bytes = encode(&records, Compression::None).expect("encode");
            let at = BATCH_HEADER_LEN + position.index(bytes.len() - BATCH_HEADER_LEN);
            bytes[at] = byte;
            reseal(&mut bytes);
            let _ = decode_all(bytes.freeze());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_all(Bytes::from(bytes));
        }

        #[test]
        fn a_flipped_bit_is_detected_or_harmless(
            records in proptest::collection::vec(arb_record(), 1..10),
            compression in arb_compression(),
            position in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = encode(&records, compression).expect("encode");
            let at = position.index(bytes.len());
            bytes[at] ^= 1 << bit;
            // Only the fields outside the CRC's coverage may change without an error, and none
            // of them may panic the decoder.
            if decode_all(bytes.freeze()).is_ok() {
                prop_assert!(at < CRC_COVERAGE_START, "flip at {} went unnoticed", at);
            }
        }
    }

    /// Re-seals a hand-edited batch so the CRC no longer protects the decoder from it.
    fn reseal(bytes: &mut [u8]) {
        let crc = crc32c::crc32c(&bytes[CRC_COVERAGE_START..]);
        bytes[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn repeated_header_keys_are_kept_in_order() {
        let header = |key: &str, value: &'static [u8]| Header {
            key: key.to_owned(),
            value: Some(Bytes::from_static(value)),
        };
        let mut original = record(b"v");
        original.headers = vec![
            header("trace", b"1"),
            header("hop", b"a"),
            header("hop", b"b"),
        ];
        let decoded = decode_all(
            encode(std::slice::from_ref(&original), Compression::None)
                .unwrap()
                .freeze(),
        )
        .expect("decode");
        assert_eq!(decoded[0].record, original);
    }

    #[test]
    fn a_huge_record_count_with_a_valid_crc_is_refused_not_allocated() {
        let mut bytes = encode(&[record(b"x")], Compression::None).expect("encode");
        bytes[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        bytes[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        reseal(&mut bytes);
        let err = decode_all(bytes.freeze()).expect_err("must refuse");
        assert!(matches!(err, BatchError::RecordsTooShort { .. }), "{err}");
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let big = vec![0u8; MAX_DECOMPRESSED_BATCH_BYTES + 1024];
        let mut bytes = encode(&[record(&big)], Compression::Zstd).expect("encode");
        assert!(bytes.len() < 1024 * 1024, "zeros compress well");
        reseal(&mut bytes);
        let err = decode_all(bytes.freeze()).expect_err("must refuse");
        assert!(
            matches!(err, BatchError::DecompressionLimit { .. }),
            "{err}"
        );
    }

    #[test]
    fn magic_and_truncation_are_reported() {
        let bytes = encode(&[record(b"hello")], Compression::None).expect("encode");
        let err = validate(&bytes[..bytes.len() - 1]).expect_err("truncated");
        assert!(matches!(err, BatchError::Truncated { .. }));
        let mut old = bytes.clone();
        old[MAGIC_POS] = 1;
        assert_eq!(
            validate(&old),
            Err(BatchError::UnsupportedMagic { magic: 1 })
        );
    }
}
