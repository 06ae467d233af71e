//! Conversions between protobuf messages and the subsystems' typed values.

use std::time::SystemTime;

use appliance_proto::v1 as pb;
use tonic::Status;

use super::error::invalid;
use crate::log::{
    Compression, Header, PartitionId, Record, StoredRecord, Timestamp, TopicConfig, TopicName,
};
use crate::meta::GroupId;
use crate::runtime::State;
use crate::security::secrets;

/// A time as milliseconds since the Unix epoch, as the API's `*_unix_ms` fields carry it.
pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

pub fn topic_name(field: &str, name: &str) -> Result<TopicName, Status> {
    TopicName::new(name).map_err(|e| invalid(field, e))
}

pub fn group_id(field: &str, group: &str) -> Result<GroupId, Status> {
    GroupId::new(group).map_err(|e| invalid(field, e))
}

/// Applies the fields set in `patch` over `base`.
pub fn topic_config(
    base: TopicConfig,
    patch: Option<pb::TopicConfig>,
) -> Result<TopicConfig, Status> {
    let Some(patch) = patch else {
        return Ok(base);
    };
    let mut config = base;
    if let Some(partitions) = patch.partitions {
        config.partitions = partitions;
    }
    if let Some(ms) = patch.retention_ms {
        config.retention_ms = match ms {
            -1 => None,
            ms if ms >= 1 => Some(ms as u64),
            _ => {
                return Err(invalid(
                    "config.retention_ms",
                    "must be -1 (keep forever) or at least 1",
                ));
            }
        };
    }
    if let Some(bytes) = patch.retention_bytes {
        config.retention_bytes = match bytes {
            -1 => None,
            bytes if bytes >= 0 => Some(bytes as u64),
            _ => {
                return Err(invalid(
                    "config.retention_bytes",
                    "must be -1 (unbounded) or at least 0",
                ));
            }
        };
    }
    if let Some(bytes) = patch.segment_bytes {
        config.segment_bytes = bytes;
    }
    if let Some(ms) = patch.segment_ms {
        config.segment_ms = ms;
    }
    if let Some(bytes) = patch.max_message_bytes {
        config.max_message_bytes = bytes;
    }
    if let Some(schema) = patch.schema {
        // An empty schema removes the declaration: queries infer the columns again.
        if schema.trim().is_empty() {
            config.schema = None;
        } else {
            crate::log::schema::parse_schema(&schema)
                .map_err(|problem| invalid("config.schema", problem))?;
            config.schema = Some(schema);
        }
    }
    if let Some(policy) = patch.cleanup_policy {
        config.cleanup_policy = policy
            .parse()
            .map_err(|problem: String| invalid("config.cleanup_policy", problem))?;
    }
    if let Some(ms) = patch.delete_retention_ms {
        config.delete_retention_ms = ms;
    }
    config.compression = match pb::Compression::try_from(patch.compression) {
        Ok(pb::Compression::Unspecified) => config.compression,
        Ok(pb::Compression::None) => Compression::None,
        Ok(pb::Compression::Gzip) => Compression::Gzip,
        Ok(pb::Compression::Lz4) => Compression::Lz4,
        Ok(pb::Compression::Zstd) => Compression::Zstd,
        Ok(pb::Compression::Snappy) => Compression::Snappy,
        Err(_) => return Err(invalid("config.compression", "unknown compression")),
    };
    Ok(config)
}

pub fn topic_config_message(config: &TopicConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        partitions: Some(config.partitions),
        retention_ms: Some(config.retention_ms.map_or(-1, |ms| ms as i64)),
        retention_bytes: Some(config.retention_bytes.map_or(-1, |b| b as i64)),
        segment_bytes: Some(config.segment_bytes),
        segment_ms: Some(config.segment_ms),
        max_message_bytes: Some(config.max_message_bytes),
        compression: match config.compression {
            Compression::None => pb::Compression::None,
            Compression::Gzip => pb::Compression::Gzip,
            Compression::Lz4 => pb::Compression::Lz4,
            Compression::Zstd => pb::Compression::Zstd,
            Compression::Snappy => pb::Compression::Snappy,
        } as i32,
        schema: config.schema.clone(),
        cleanup_policy: Some(config.cleanup_policy.as_str().to_owned()),
        delete_retention_ms: Some(config.delete_retention_ms),
    }
}

/// A record to store; a zero timestamp means now.
pub fn record(record: pb::Record, now: Timestamp) -> Record {
    Record {
        key: record.key,
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .map(|h| Header {
                key: h.key,
                value: h.value,
            })
            .collect(),
        timestamp: if record.timestamp_ms == 0 {
            now
        } else {
            Timestamp(record.timestamp_ms)
        },
    }
}

pub fn consumed(
    topic: &TopicName,
    partition: PartitionId,
    stored: StoredRecord,
) -> pb::ConsumedRecord {
    pb::ConsumedRecord {
        topic: topic.to_string(),
        partition: partition.0,
        offset: stored.offset.0,
        key: stored.record.key,
        value: stored.record.value,
        headers: stored
            .record
            .headers
            .into_iter()
            .map(|h| pb::Header {
                key: h.key,
                value: h.value,
            })
            .collect(),
        timestamp_ms: stored.record.timestamp.0,
    }
}

pub fn topic_partition(topic: &TopicName, partition: PartitionId) -> pb::TopicPartition {
    pb::TopicPartition {
        topic: topic.to_string(),
        partition: partition.0,
    }
}

/// A runtime state in the fields every component message carries: the kind's enum value
/// for it (`[starting, running, paused, restarting, failed]`; kinds without a state of their
/// own for restarting report it as failed with `restarting` set), the failure, whether a
/// restart is pending, and when it begins (Unix milliseconds, 0 when none is).
pub fn state_fields<S>(
    state: State,
    [starting, running, paused, restarting, failed]: [S; 5],
) -> StateFields<S> {
    let (state, failure, next_try) = match state {
        State::Starting => (starting, None, None),
        State::Running => (running, None, None),
        State::Paused => (paused, None, None),
        State::Restarting {
            next_try, failure, ..
        } => (restarting, Some(failure), Some(next_try)),
        State::Failed { failure } => (failed, Some(failure), None),
    };
    StateFields {
        state,
        failure: failure.map_or_else(String::new, |f| secrets::redact(&f.reason).into_owned()),
        restarting: next_try.is_some(),
        next_try_unix_ms: next_try.map_or(0, |at| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64)
        }),
    }
}

pub struct StateFields<S> {
    pub state: S,
    pub failure: String,
    pub restarting: bool,
    pub next_try_unix_ms: u64,
}
