//! Which part of a record a transform works on: Kafka Connect's `$Value` and `$Key` variants of
//! a transform become `on=value` (the default) and `on=key`.

use std::fmt;

use crate::{Config, Record};
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
pub enum Side {
    Value,
    Key,
}

impl Side {
    /// The side named by the `on` key.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        match config.get("on").unwrap_or("value") {
            "value" => Ok(Self::Value),
            "key" => Ok(Self::Key),
            other => Err(format!("`on` is value or key, not {other:?}")),
        }
    }

    /// This side of `record` as JSON; `None` for a tombstone's value or a missing key, which
    /// transforms pass through unchanged as Kafka does.
    pub fn read(self, record: &Record) -> Result<Option<Value>, String> {
        match self {
            Self::Value => record.json_value(),
            Self::Key => record.json_key(),
        }
        .map_err(|e| format!("the {self} is {e}"))
    }

    /// This side as a JSON object, as [`Side::read`]; an error when it is JSON but no object.
    pub fn read_object(self, record: &Record) -> Result<Option<Value>, String> {
        match self.read(record)? {
            Some(value) if !value.is_object() => Err(format!("the {self} is not a JSON object")),
            other => Ok(other),
        }
    }

    /// This side's bytes; `None` for a tombstone's value or a missing key.
    pub fn bytes(self, record: &Record) -> Option<&[u8]> {
        match self {
            Self::Value => record.value.as_deref(),
            Self::Key => record.key.as_deref(),
        }
    }

    /// Replaces this side's bytes (JSON rewritten in place, [`crate::json::field_spans`]).
    pub fn set_bytes(self, record: &mut Record, bytes: Vec<u8>) {
        match self {
            Self::Value => record.value = Some(bytes),
            Self::Key => record.key = Some(bytes),
        }
    }

    pub fn write(self, record: &mut Record, json: &Value) {
        match self {
            Self::Value => record.set_json_value(json),
            Self::Key => record.set_json_key(json),
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Value => "value",
            Self::Key => "key",
        })
    }
}
