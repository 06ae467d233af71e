//! The encoded batch of `appliance:plugin/encoded-transformer`: a whole batch of records in
//! one buffer, so that a batch crosses into a plugin as one copy of one list instead of one
//! allocation in the plugin per field of every record. The host and the Rust SDK both use
//! this module; `docs/plugin-abi.md` gives the figures and the reasons.
//!
//! The format, all integers little-endian:
//!
//! ```text
//! batch   = count:u32 record{count}
//! record  = timestamp:i64 offset:i64 key:opt value:opt topic:opt
//!           header-count:u32 (key-len:u32 key value-len:u32 value){header-count}
//! opt     = len:u32 bytes{len}, or len = 0xFFFF_FFFF for none
//! ```
//!
//! Topics and header keys are UTF-8. A decoder trusts nothing: every length is checked
//! against the bytes left, the record count against the least a record takes (so a claimed
//! count never sizes an allocation beyond what the bytes could hold), strings are checked as
//! UTF-8, and trailing bytes are an error.

use std::fmt;

/// The length that marks an absent optional field.
const NONE: u32 = u32::MAX;
/// The fewest bytes a record takes: two i64s, three absent options and no headers.
const MIN_RECORD_BYTES: usize = 8 + 8 + 4 * 3 + 4;

/// A record borrowed from wherever it lives: the host's buffers, the plugin's records, or an
/// encoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub timestamp: i64,
    pub offset: i64,
    pub topic: Option<&'a str>,
}

impl<'a> From<&'a crate::Record> for RecordRef<'a> {
    fn from(record: &'a crate::Record) -> Self {
        Self {
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: record
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_slice()))
                .collect(),
            timestamp: record.timestamp,
            offset: record.offset,
            topic: record.topic.as_deref(),
        }
    }
}

impl From<RecordRef<'_>> for crate::Record {
    fn from(record: RecordRef<'_>) -> Self {
        Self {
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record
                .headers
                .into_iter()
                .map(|(key, value)| crate::Header {
                    key: key.to_owned(),
                    value: value.to_vec(),
                })
                .collect(),
            timestamp: record.timestamp,
            offset: record.offset,
            topic: record.topic.map(str::to_owned),
        }
    }
}

/// Why bytes are not an encoded batch, and where decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub position: usize,
    pub reason: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed at byte {}: {}", self.position, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Why a batch cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    pub index: usize,
    pub reason: &'static str,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} cannot be encoded: {}",
            self.index, self.reason
        )
    }
}

impl std::error::Error for EncodeError {}

/// Encodes `records` as one batch. A field of 4 GiB or more, or more than `u32::MAX`
/// records or headers, cannot be encoded.
pub fn encode<'a>(
    records: impl ExactSizeIterator<Item = RecordRef<'a>>,
) -> Result<Vec<u8>, EncodeError> {
    let count = records.len();
    let too_long = |index, reason| EncodeError { index, reason };
    let count = u32::try_from(count).map_err(|_| too_long(0, "more than 2^32-1 records"))?;
    let mut out = Vec::with_capacity(4 + count as usize * (MIN_RECORD_BYTES + 64));
    out.extend_from_slice(&count.to_le_bytes());
    for (index, record) in records.enumerate() {
        let field_len = |bytes: &[u8]| {
            u32::try_from(bytes.len())
                .ok()
                .filter(|len| *len != NONE)
                .ok_or(too_long(index, "a field of 4 GiB or more"))
        };
        let optional = |out: &mut Vec<u8>, bytes: Option<&[u8]>| -> Result<(), EncodeError> {
            match bytes {
                Some(bytes) => {
                    out.extend_from_slice(&field_len(bytes)?.to_le_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(&NONE.to_le_bytes()),
            }
            Ok(())
        };
        let payload = record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len);
        out.reserve(MIN_RECORD_BYTES + payload);
        out.extend_from_slice(&record.timestamp.to_le_bytes());
        out.extend_from_slice(&record.offset.to_le_bytes());
        optional(&mut out, record.key)?;
        optional(&mut out, record.value)?;
        optional(&mut out, record.topic.map(str::as_bytes))?;
        let headers = u32::try_from(record.headers.len())
            .map_err(|_| too_long(index, "more than 2^32-1 headers"))?;
        out.extend_from_slice(&headers.to_le_bytes());
        for (key, value) in &record.headers {
            optional(&mut out, Some(key.as_bytes()))?;
            optional(&mut out, Some(value))?;
        }
    }
    Ok(out)
}

/// Decodes a batch, borrowing every field from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordRef<'_>>, DecodeError> {
    let mut reader = Reader { bytes, position: 0 };
    let count = reader.u32()? as usize;
    if count > reader.left() / MIN_RECORD_BYTES {
        return Err(reader.error("more records claimed than the bytes could hold"));
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let timestamp = reader.i64()?;
        let offset = reader.i64()?;
        let key = reader.optional()?;
        let value = reader.optional()?;
        let topic = reader.optional_text()?;
        let header_count = reader.u32()? as usize;
        if header_count > reader.left() / 8 {
            return Err(reader.error("more headers claimed than the bytes could hold"));
        }
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let key = reader
                .optional_text()?
                .ok_or_else(|| reader.error("a header key is absent"))?;
            let value = reader
                .optional()?
                .ok_or_else(|| reader.error("a header value is absent"))?;
            headers.push((key, value));
        }
        records.push(RecordRef {
            key,
            value,
            headers,
            timestamp,
            offset,
            topic,
        });
    }
    if reader.left() != 0 {
        return Err(reader.error("bytes after the last record"));
    }
    Ok(records)
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn error(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            position: self.position,
            reason,
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.left() {
            return Err(self.error("a length runs past the end"));
        }
        let taken = &self.bytes[self.position..self.position + len];
        self.position += len;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_le_bytes)
    }

    fn optional(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.u32()? {
            NONE => Ok(None),
            len => self.take(len as usize).map(Some),
        }
    }

    fn optional_text(&mut self) -> Result<Option<&'a str>, DecodeError> {
        let start = self.position;
        let bytes = self.optional()?;
        bytes
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| DecodeError {
                position: start,
                reason: "a topic or header key is not UTF-8",
            })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Header, Record};

    fn record() -> impl Strategy<Value = Record> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        (
            proptest::option::of(bytes()),
            proptest::option::of(bytes()),
            proptest::collection::vec((".{0,8}", bytes()), 0..3),
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(".{0,12}"),
        )
            .prop_map(|(key, value, headers, timestamp, offset, topic)| Record {
                key,
                value,
                headers: headers
                    .into_iter()
                    .map(|(key, value)| Header { key, value })
                    .collect(),
                timestamp,
                offset,
                topic,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_batch_decodes_to_what_was_encoded(
            records in proptest::collection::vec(record(), 0..20),
        ) {
            let originals: Vec<RecordRef<'_>> = records.iter().map(RecordRef::from).collect();
            let encoded = encode(originals.iter().cloned()).unwrap();
            let decoded = decode(&encoded).unwrap();
            prop_assert_eq!(&decoded, &originals);
            let owned: Vec<Record> = decoded.into_iter().map(Record::from).collect();
            let owned: Vec<RecordRef<'_>> = owned.iter().map(RecordRef::from).collect();
            prop_assert_eq!(owned, originals);
        }

        #[test]
        fn damaged_bytes_decode_or_fail_without_panicking(
            records in proptest::collection::vec(record(), 1..8),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let encoded = encode(records.iter().map(RecordRef::from)).unwrap();
            let cut = cut.index(encoded.len());
            prop_assert!(decode(&encoded[..cut]).is_err());
            let mut flipped = encoded;
            for (at, byte) in flips {
                let at = at.index(flipped.len());
                flipped[at] ^= byte;
            }
            let _ = decode(&flipped);
        }

        #[test]
        fn arbitrary_bytes_decode_or_fail_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_claimed_count_beyond_the_bytes_is_refused_before_allocating() {
        let error = decode(&u32::MAX.to_le_bytes()).unwrap_err();
        assert_eq!(
            error.reason,
            "more records claimed than the bytes could hold"
        );
        let mut one = encode(std::iter::once(RecordRef::from(&Record::from_value("x")))).unwrap();
        let headers_at = one.len() - 4;
        one[headers_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decode(&one).unwrap_err();
        assert_eq!(
            error.reason,
            "more headers claimed than the bytes could hold"
        );
    }

    #[test]
    fn trailing_bytes_and_bad_strings_are_refused() {
        let record = Record {
            topic: Some("t".into()),
            ..Record::from_value("v")
        };
        let mut encoded = encode(std::iter::once(RecordRef::from(&record))).unwrap();
        encoded.push(0);
        assert_eq!(
            decode(&encoded).unwrap_err().reason,
            "bytes after the last record"
        );
        encoded.pop();
        let topic_at = encoded.len() - 4 - 1;
        encoded[topic_at] = 0xff;
        assert_eq!(
            decode(&encoded).unwrap_err().reason,
            "a topic or header key is not UTF-8"
        );
    }
}
