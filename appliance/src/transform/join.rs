//! `table-join`, the built-in stream-table join: each record of a pipeline is enriched with
//! the newest value of its key in a compacted topic read as a table (Kafka Streams'
//! KStream-KTable join, and with `global=true` the KStream-GlobalKTable join).
//!
//! ```text
//! record --its key (or `key-field` of its JSON value)--> table partition p (co-partitioned)
//!     or every table partition (global) --newest value of the key--> JSON value["into"]
//! ```
//!
//! Invariants: a co-partitioned join reads partition p of the table for partition p of the
//! stream, so the two must have as many partitions; that is checked when the pipeline is
//! created and when each partition starts, and refused with what to do. The table is read as
//! it is when the record is transformed (a change to the table applies to the records after
//! it), through the log's key index, with a cache per step that a table append invalidates.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use super::Settings;
use crate::log::{Log, LogError, Offset, PartitionId, TopicName};
use crate::plugin::{Record, RecordError};

/// The transform name that selects this built-in in a pipeline's chain.
pub const TABLE_JOIN: &str = "table-join";
/// The cache holds at most this many keys; it starts empty again past it.
const MAX_CACHED_KEYS: usize = 100_000;

/// What a record whose key the table does not hold becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The field is set to null (a left join).
    Null,
    /// The record is dropped (an inner join).
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSpec {
    pub table: TopicName,
    pub key_field: Option<String>,
    pub into: String,
    pub global: bool,
    pub missing: Missing,
}

const KEYS: [&str; 5] = ["table", "key-field", "into", "global", "missing"];

impl JoinSpec {
    pub fn parse(config: &[(String, String)]) -> Result<Self, String> {
        let settings = Settings::of(TABLE_JOIN, config, &KEYS)?;
        let get = |key: &str| settings.get(key);
        let table =
            TopicName::new(get("table").ok_or("`table` names the compacted topic to join")?)
                .map_err(|e| format!("`table`: {e}"))?;
        let into = get("into")
            .filter(|v| !v.is_empty())
            .ok_or("`into` names the field the table's value is written to")?
            .to_owned();
        let global = match get("global") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("`global` is true or false, not {other:?}")),
        };
        let key_field = get("key-field").map(str::to_owned);
        if key_field.is_some() && !global {
            return Err(
                "`key-field` joins on a field, which does not say which partition of the table \
                 holds it; use it with global=true, or join on the record key"
                    .to_owned(),
            );
        }
        let missing = match get("missing") {
            None | Some("null") => Missing::Null,
            Some("drop") => Missing::Drop,
            Some(other) => return Err(format!("`missing` is null or drop, not {other:?}")),
        };
        Ok(Self {
            table,
            key_field,
            into,
            global,
            missing,
        })
    }

    /// Checks the table against the stream `stream`: a compacted topic, with as many
    /// partitions as the stream unless the join is global.
    pub fn check(&self, log: &Log, stream: &TopicName) -> Result<(), String> {
        let table = log
            .topic_config(&self.table)
            .map_err(|_| format!("the table {} does not exist", self.table))?;
        if !table.cleanup_policy.compacts() {
            return Err(format!(
                "{} is not compacted, so it is not a table (create it with cleanup-policy \
                 compact)",
                self.table
            ));
        }
        let stream_partitions = log
            .topic_config(stream)
            .map_err(|e| e.to_string())?
            .partitions;
        if !self.global && table.partitions != stream_partitions {
            return Err(format!(
                "the table {} has {} partitions and the stream {stream} has {}: they are not \
                 co-partitioned, and partition p of the stream is joined with partition p of \
                 the table; give both the same partition count and keys, or set global=true to \
                 read every partition of the table",
                self.table, table.partitions, stream_partitions
            ));
        }
        Ok(())
    }
}

/// A running join for one source partition.
#[derive(Debug)]
pub struct TableJoin {
    spec: JoinSpec,
    log: Log,
    partitions: Vec<PartitionId>,
    /// Key -> the table's value (`None`: absent), as of `cached_at`.
    cache: HashMap<Bytes, Option<Value>>,
    /// The high watermarks of `partitions` when the cache was filled.
    cached_at: Vec<Offset>,
}

impl TableJoin {
    pub fn start(
        spec: JoinSpec,
        log: Log,
        stream: &TopicName,
        partition: PartitionId,
    ) -> Result<Self, String> {
        spec.check(&log, stream)?;
        let partitions = if spec.global {
            let count = log
                .topic_config(&spec.table)
                .map_err(|e| e.to_string())?
                .partitions;
            (0..count).map(PartitionId).collect()
        } else {
            vec![partition]
        };
        Ok(Self {
            spec,
            log,
            partitions,
            cache: HashMap::new(),
            cached_at: Vec::new(),
        })
    }

    pub fn process(
        &mut self,
        records: &[Record],
    ) -> Result<Result<Vec<Record>, RecordError>, LogError> {
        self.invalidate_if_appended()?;
        let mut output = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let reject = |message: String| RecordError {
                index: index as u32,
                message,
            };
            let Some(value) = record.value.as_deref() else {
                output.push(record.clone());
                continue;
            };
            let mut object = match serde_json::from_slice::<Value>(value) {
                Ok(Value::Object(object)) => object,
                Ok(_) => return Ok(Err(reject("the value is JSON but not an object".into()))),
                Err(e) => return Ok(Err(reject(format!("the value is not JSON: {e}")))),
            };
            let key = match &self.spec.key_field {
                None => record.key.clone(),
                Some(field) => match object.get(field) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(text)) => Some(Bytes::copy_from_slice(text.as_bytes())),
                    Some(other) => Some(Bytes::from(other.to_string())),
                },
            };
            let found = match key {
                Some(key) => self.lookup(key)?,
                None => None,
            };
            if found.is_none() && self.spec.missing == Missing::Drop {
                continue;
            }
            object.insert(self.spec.into.clone(), found.unwrap_or(Value::Null));
            let mut joined = record.clone();
            joined.value = Some(Bytes::from(
                serde_json::to_vec(&Value::Object(object)).expect("JSON serializes"),
            ));
            output.push(joined);
        }
        Ok(Ok(output))
    }

    /// Empties the cache when the table was appended to since it was filled.
    fn invalidate_if_appended(&mut self) -> Result<(), LogError> {
        let ends = self
            .partitions
            .iter()
            .map(|p| Ok(self.log.partition(&self.spec.table, *p)?.high_watermark()))
            .collect::<Result<Vec<Offset>, LogError>>()?;
        if ends != self.cached_at || self.cache.len() > MAX_CACHED_KEYS {
            self.cache.clear();
            self.cached_at = ends;
        }
        Ok(())
    }

    /// The table's value of `key`: a JSON value, or the text of a value that is not JSON. In
    /// a global join the newest of the partitions that hold the key.
    fn lookup(&mut self, key: Bytes) -> Result<Option<Value>, LogError> {
        if let Some(value) = self.cache.get(&key) {
            return Ok(value.clone());
        }
        let mut newest = None;
        for partition in &self.partitions {
            let found = self
                .log
                .partition(&self.spec.table, *partition)?
                .lookup(&key)?;
            if let Some(stored) = found
                && newest
                    .as_ref()
                    .is_none_or(|(t, _)| stored.record.timestamp.0 > *t)
            {
                newest = Some((stored.record.timestamp.0, stored.record.value));
            }
        }
        let value = newest.and_then(|(_, value)| value).map(|bytes| {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        });
        self.cache.insert(key, value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(settings: &[(&str, &str)]) -> Result<JoinSpec, String> {
        let config: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        JoinSpec::parse(&config)
    }

    #[test]
    fn settings_are_checked_with_reasons() {
        let spec = parse(&[("table", "devices"), ("into", "device")]).unwrap();
        assert_eq!(spec.missing, Missing::Null);
        assert!(!spec.global && spec.key_field.is_none());
        for (settings, says) in [
            (&[("into", "d")][..], "`table`"),
            (&[("table", "t")][..], "`into`"),
            (
                &[("table", "t"), ("into", "d"), ("key-field", "id")][..],
                "global=true",
            ),
            (
                &[("table", "t"), ("into", "d"), ("missing", "maybe")][..],
                "null or drop",
            ),
            (
                &[("table", "t"), ("into", "d"), ("colour", "red")][..],
                "unknown setting",
            ),
        ] {
            let problem = parse(settings).unwrap_err();
            assert!(problem.contains(says), "{settings:?}: {problem}");
        }
        let global = parse(&[
            ("table", "t"),
            ("into", "d"),
            ("key-field", "id"),
            ("global", "true"),
            ("missing", "drop"),
        ])
        .unwrap();
        assert!(global.global && global.missing == Missing::Drop);
    }
}
