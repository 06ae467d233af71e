//! A request as the Kafka listener reads it once its frame is in: the header, then the body
//! of an API version the listener serves (its one table, `versions.rs`, included as is),
//! decoded by the protocol crate with the appliance's bound on claimed lengths. Any bytes
//! must give a request or an error: never a panic, and never an allocation beyond what the
//! bytes could hold (libFuzzer's `-malloc_limit_mb` catches one).

#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../appliance/src/kafka/versions.rs"]
mod versions;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let key = i16::from_be_bytes([data[0], data[1]]);
    let version = i16::from_be_bytes([data[2], data[3]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return;
    };
    if !versions::serves(api, version) {
        return;
    }
    let mut frame = Bytes::copy_from_slice(data);
    if RequestHeader::decode(&mut frame, api.request_header_version(version)).is_ok() {
        let _ = RequestKind::decode(api, &mut frame, version);
    }
});
