//! The records as they cross into a plugin and out of it: the host's own, the WIT types
//! lowered from borrowed host data, and the output read from the plugin's memory with every
//! byte counted before it is copied.

use appliance_sdk::encoded::{self, DecodeError, RecordRef};

use super::*;

/// A record as the host holds it between the log and the plugins: byte fields share the
/// buffers they were read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The source offset the record descends from.
    pub offset: i64,
    /// Where a transform re-routed the record, if one did.
    pub topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

/// `record` of the WIT types, lowered from borrowed host data.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(super) struct RecordIn<'a> {
    pub(super) key: Option<&'a [u8]>,
    pub(super) value: Option<&'a [u8]>,
    pub(super) headers: Vec<HeaderIn<'a>>,
    pub(super) timestamp: i64,
    pub(super) offset: i64,
    pub(super) topic: Option<&'a str>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
pub(super) struct HeaderIn<'a> {
    pub(super) key: &'a str,
    pub(super) value: &'a [u8],
}

/// `record` of the WIT types, left in the plugin's memory until read (during `emit`).
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RecordOut {
    pub(super) key: Option<WasmList<u8>>,
    pub(super) value: Option<WasmList<u8>>,
    pub(super) headers: WasmList<HeaderOut>,
    pub(super) timestamp: i64,
    pub(super) offset: i64,
    pub(super) topic: Option<WasmStr>,
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct HeaderOut {
    pub(super) key: WasmStr,
    pub(super) value: WasmList<u8>,
}

/// `source-record` of the WIT types, read like [`RecordOut`].
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct SourceRecordOut {
    #[component(name = "record")]
    pub(super) record: RecordOut,
    pub(super) position: WasmList<u8>,
}

/// The parameters and results of `transformer.process` and `sink-connector.put`.
pub(super) type BatchParams<'a> = (&'a BatchInfo, &'a [RecordIn<'a>]);

/// The parameters of `encoded-transformer.process`.
pub(super) type EncodedParams<'a> = (&'a BatchInfo, &'a [u8]);

pub(super) type BatchResults = (Result<(), RecordError>,);

pub(super) fn record_in(record: &Record) -> RecordIn<'_> {
    RecordIn {
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: record
            .headers
            .iter()
            .map(|h| HeaderIn {
                key: &h.key,
                value: &h.value,
            })
            .collect(),
        timestamp: record.timestamp,
        offset: record.offset,
        topic: record.topic.as_deref(),
    }
}

/// Copies emitted records out of the plugin's memory, counting their bytes against the
/// batch's [`MAX_OUTPUT_BYTES`] before copying any. Keys, values and header values go into one
/// buffer per call, which the records share.
pub(super) fn read_records(
    store: &mut StoreContextMut<'_, InstanceState>,
    emitted: Vec<RecordOut>,
) -> wasmtime::Result<Vec<Record>> {
    let mut headers_of = Vec::with_capacity(emitted.len());
    let mut arena_len = 0usize;
    for out in &emitted {
        let mut text_bytes = 0usize;
        // Most records have no headers; reading an empty list still costs a lift context.
        let headers: Vec<HeaderOut> = if out.headers.len() == 0 {
            Vec::new()
        } else {
            out.headers
                .iter(&mut *store)?
                .collect::<wasmtime::Result<_>>()?
        };
        // Strings are borrowed from the plugin's memory to be measured before being copied.
        if let Some(topic) = &out.topic {
            text_bytes = text_bytes.saturating_add(topic.to_str(&*store)?.len());
        }
        let mut bytes =
            out.key.as_ref().map_or(0, WasmList::len) + out.value.as_ref().map_or(0, WasmList::len);
        for header in &headers {
            text_bytes = text_bytes.saturating_add(header.key.to_str(&*store)?.len());
            bytes = bytes.saturating_add(header.value.len());
        }
        charge(store.data_mut(), text_bytes.saturating_add(bytes))?;
        arena_len += bytes;
        headers_of.push(headers);
    }
    let mut arena = BytesMut::with_capacity(arena_len);
    let mut copy = |list: &WasmList<u8>| {
        let start = arena.len();
        arena.extend_from_slice(list.as_le_slice(&*store));
        start..arena.len()
    };
    let mut spans = Vec::with_capacity(emitted.len());
    for (out, headers) in emitted.iter().zip(&headers_of) {
        let key = out.key.as_ref().map(&mut copy);
        let value = out.value.as_ref().map(&mut copy);
        let header_values: Vec<_> = headers.iter().map(|h| copy(&h.value)).collect();
        spans.push((key, value, header_values));
    }
    let arena = arena.freeze();
    let text = |string: &WasmStr| string.to_str(&*store).map(|t| t.into_owned());
    let mut records = Vec::with_capacity(emitted.len());
    for ((out, headers), (key, value, header_values)) in emitted.iter().zip(&headers_of).zip(spans)
    {
        let headers = headers
            .iter()
            .zip(header_values)
            .map(|(h, span)| {
                Ok(Header {
                    key: text(&h.key)?,
                    value: arena.slice(span),
                })
            })
            .collect::<wasmtime::Result<_>>()?;
        records.push(Record {
            key: key.map(|span| arena.slice(span)),
            value: value.map(|span| arena.slice(span)),
            headers,
            timestamp: out.timestamp,
            offset: out.offset,
            topic: out.topic.as_ref().map(text).transpose()?,
        });
    }
    Ok(records)
}

/// A host record as the encoded batch borrows it.
pub(super) fn record_ref(record: &Record) -> RecordRef<'_> {
    RecordRef {
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: record
            .headers
            .iter()
            .map(|h| (h.key.as_str(), &h.value[..]))
            .collect(),
        timestamp: record.timestamp,
        offset: record.offset,
        topic: record.topic.as_deref(),
    }
}

/// Copies an encoded batch out of the plugin's memory, counting it against the batch's
/// [`MAX_OUTPUT_BYTES`] first, and decodes it into records that share the one copy.
pub(super) fn read_encoded(
    store: &mut StoreContextMut<'_, InstanceState>,
    list: &WasmList<u8>,
) -> wasmtime::Result<Vec<Record>> {
    charge(store.data_mut(), list.len())?;
    let encoded = Bytes::copy_from_slice(list.as_le_slice(&*store));
    decode_records(&encoded).map_err(|error| {
        let detail = format!("its encoded output is {error}");
        store.data_mut().output_refused = Some(detail.clone());
        wasmtime::Error::msg(detail)
    })
}

/// The records of an encoded batch, their byte fields slices of `encoded`.
fn decode_records(encoded: &Bytes) -> Result<Vec<Record>, DecodeError> {
    Ok(encoded::decode(encoded)?
        .into_iter()
        .map(|record| Record {
            key: record.key.map(|key| encoded.slice_ref(key)),
            value: record.value.map(|value| encoded.slice_ref(value)),
            headers: record
                .headers
                .into_iter()
                .map(|(key, value)| Header {
                    key: key.to_owned(),
                    value: encoded.slice_ref(value),
                })
                .collect(),
            timestamp: record.timestamp,
            offset: record.offset,
            topic: record.topic.map(str::to_owned),
        })
        .collect())
}

/// Counts `len` more bytes of output against the batch's budget.
pub(super) fn charge(state: &mut InstanceState, len: usize) -> wasmtime::Result<()> {
    state.output_bytes = state.output_bytes.saturating_add(len);
    if state.output_bytes > MAX_OUTPUT_BYTES {
        let detail = format!(
            "it emitted more than {} MiB for one batch",
            MAX_OUTPUT_BYTES >> 20
        );
        state.output_refused = Some(detail.clone());
        return Err(wasmtime::Error::msg(detail));
    }
    Ok(())
}

/// Output of one call larger than this fails the call, before the host holds it.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
