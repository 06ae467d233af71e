//! Helpers on the WIT record type: headers and JSON values.

use serde_json::Value;

use crate::{BatchInfo, Header, Record};

impl BatchInfo {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl Record {
    /// A record with a value and nothing else, at offset 0 (for tests and sources).
    pub fn from_value(value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: 0,
            offset: 0,
            topic: None,
        }
    }

    /// The value of the last header named `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|h| h.key == key)
            .map(|h| h.value.as_slice())
    }

    /// Appends a header (Kafka headers may repeat a key).
    pub fn add_header(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
    }

    /// Removes every header named `key`.
    pub fn remove_headers(&mut self, key: &str) {
        self.headers.retain(|h| h.key != key);
    }

    /// The value parsed as JSON; `Ok(None)` for a tombstone.
    pub fn json_value(&self) -> Result<Option<Value>, String> {
        self.value.as_deref().map(parse_json).transpose()
    }

    /// The key parsed as JSON; `Ok(None)` without a key.
    pub fn json_key(&self) -> Result<Option<Value>, String> {
        self.key.as_deref().map(parse_json).transpose()
    }

    pub fn set_json_value(&mut self, value: &Value) {
        self.value = Some(to_json_bytes(value));
    }

    pub fn set_json_key(&mut self, key: &Value) {
        self.key = Some(to_json_bytes(key));
    }
}

/// Parses JSON bytes, with an error that says where they stop being JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))
}

pub fn to_json_bytes(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: its map keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}
