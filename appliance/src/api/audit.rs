//! The audit log: the `_audit` topic, one JSON record per failed authentication, denied
//! authorization and successful change (create, delete, alter, pause, resume, restart, reset,
//! revoke), with the principal, the source address, the method, the resource, the operation,
//! the result and the time. A change's record is durable before the change is acknowledged:
//! [`access::Guard`](super::access) appends it after the method succeeded and before the answer
//! leaves. The topic is an ordinary one: queried with SQL, fetched, linked to a hub.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde::Serialize;

use crate::log::{
    Compression, Log, LogError, PartitionId, Record, Timestamp, TopicConfig, TopicName, encode,
};
use crate::security::{Operation, Principal, ResourceType, Rpc};

/// The audit topic's name.
pub const AUDIT_TOPIC: &str = "_audit";

/// What one audit record says.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub time_unix_ms: i64,
    /// `User:NAME`; absent when authentication failed.
    pub principal: Option<String>,
    pub source: Option<String>,
    /// The gRPC method (`CreateTopic`), or the gRPC path when it is no method of ours.
    pub method: String,
    pub resource_type: Option<ResourceType>,
    pub resource: Option<String>,
    pub operation: Option<Operation>,
    pub result: Outcome,
    /// What a change made or removed, when the resource does not say.
    pub detail: Option<String>,
    /// Why it failed or was denied.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    Denied,
    Unauthenticated,
}

/// What a call's method tells the guard for its audit record: the resource it was authorized
/// (or denied) on, and what it changed when the resource alone does not say (the token or ACL
/// a security call made or removed).
#[derive(Debug, Clone, Default)]
pub struct Note(Arc<Mutex<Noted>>);

#[derive(Debug, Default)]
struct Noted {
    resource: Option<(ResourceType, String, Operation)>,
    detail: Option<String>,
}

impl Note {
    /// Keeps the first resource a call names (the one its method is about), unless a later
    /// check of the call is denied: that one is what the record must say.
    pub fn resource(
        &self,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
        denied: bool,
    ) {
        let mut noted = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if noted.resource.is_none() || denied {
            noted.resource = Some((resource_type, name.to_owned(), operation));
        }
    }

    pub fn detail(&self, detail: String) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).detail = Some(detail);
    }

    fn take(&self) -> Noted {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// How many failed authentications a second are recorded: each record is an fsynced append,
/// and a client without credentials must not be able to fill the disk with them.
const UNAUTHENTICATED_PER_SECOND: u32 = 20;
/// How many Kafka requests' denials a second are recorded: Kafka clients retry a denied topic's
/// metadata on their own, many times a second.
const KAFKA_DENIALS_PER_SECOND: u32 = 20;

/// Appends audit records; cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    log: Log,
    topic: TopicName,
    unauthenticated: PerSecond,
    kafka_denials: PerSecond,
}

/// Admits at most a number of records a second.
#[derive(Debug, Clone)]
struct PerSecond {
    limit: u32,
    /// The second (since the epoch) and how many records it admitted.
    counted: Arc<Mutex<(i64, u32)>>,
}

impl PerSecond {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            counted: Arc::default(),
        }
    }

    fn admits(&self) -> bool {
        let second = Timestamp::now().0.div_euclid(1000);
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        if counted.0 != second {
            *counted = (second, 0);
        }
        counted.1 += 1;
        counted.1 <= self.limit
    }
}

impl Audit {
    /// Creates the `_audit` topic (one partition, the log's defaults otherwise) when missing.
    pub async fn open(log: Log) -> Result<Self, LogError> {
        let topic = TopicName::new(AUDIT_TOPIC)?;
        let config = TopicConfig {
            partitions: 1,
            ..log.topic_defaults().clone()
        };
        match log.create_topic(topic.clone(), config).await {
            Ok(()) | Err(LogError::TopicExists { .. }) => Ok(Self {
                log,
                topic,
                unauthenticated: PerSecond::new(UNAUTHENTICATED_PER_SECOND),
                kafka_denials: PerSecond::new(KAFKA_DENIALS_PER_SECOND),
            }),
            Err(error) => Err(error),
        }
    }

    /// Whether a failed authentication now is recorded: up to [`UNAUTHENTICATED_PER_SECOND`].
    pub fn admits_unauthenticated(&self) -> bool {
        self.unauthenticated.admits()
    }

    /// Whether a Kafka request's denial now is recorded: up to [`KAFKA_DENIALS_PER_SECOND`].
    pub fn admits_kafka_denial(&self) -> bool {
        self.kafka_denials.admits()
    }

    /// The record of a call, durable when this returns.
    pub async fn append(&self, entry: &Entry) -> Result<(), LogError> {
        let value = serde_json::to_vec(entry).unwrap_or_default();
        let record = Record {
            key: entry.principal.clone().map(Bytes::from),
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
            timestamp: Timestamp(entry.time_unix_ms),
        };
        let batch = encode(&[record], Compression::None).map_err(LogError::InvalidBatch)?;
        self.log
            .append(&self.topic, PartitionId(0), batch)
            .await
            .map(drop)
    }
}

/// An audit entry of a call of `method` from `source`.
pub fn entry(
    method: &str,
    rpc: Option<Rpc>,
    principal: Option<&Principal>,
    source: Option<SocketAddr>,
    note: Option<&Note>,
    result: Outcome,
    reason: Option<String>,
) -> Entry {
    let noted = note.map(Note::take).unwrap_or_default();
    let resource = noted.resource;
    let requirement = rpc.map(Rpc::requirement);
    Entry {
        time_unix_ms: Timestamp::now().0,
        principal: principal.map(ToString::to_string),
        source: source.map(|addr| addr.to_string()),
        method: rpc.map_or_else(|| method.to_owned(), |rpc| format!("{rpc:?}")),
        resource_type: resource
            .as_ref()
            .map(|r| r.0)
            .or(requirement.map(|r| r.resource_type)),
        operation: resource
            .as_ref()
            .map(|r| r.2)
            .or(requirement.map(|r| r.operation)),
        resource: resource.map(|r| r.1),
        detail: noted.detail,
        result,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_names_the_denied_resource_else_the_first() {
        let note = Note::default();
        note.resource(ResourceType::Topic, "a", Operation::Read, false);
        note.resource(ResourceType::Topic, "b", Operation::Read, false);
        let first = entry(
            "/x/Execute",
            Rpc::from_method("Execute"),
            None,
            None,
            Some(&note),
            Outcome::Done,
            None,
        );
        assert_eq!(first.resource.as_deref(), Some("a"));
        assert_eq!(first.method, "Execute");

        note.resource(ResourceType::Topic, "a", Operation::Read, false);
        note.resource(ResourceType::Topic, "secret", Operation::Read, true);
        note.detail("why".to_owned());
        let denied = entry(
            "/x/Execute",
            None,
            None,
            None,
            Some(&note),
            Outcome::Denied,
            None,
        );
        assert_eq!(denied.resource.as_deref(), Some("secret"));
        assert_eq!(denied.detail.as_deref(), Some("why"));
        assert_eq!(denied.method, "/x/Execute", "not one of ours: the path");
    }
}
