//! The one place the Kafka listener's errors are decided: why a connection is closed
//! ([`KafkaError`]) and which Kafka error code a subsystem's error becomes.

use kafka_protocol::ResponseError;

use crate::group::GroupError;
use crate::log::LogError;

/// Why a connection ends. Kafka answers a request it cannot read by closing the connection,
/// so every one of these closes it, logged with the peer's address.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("a request of {size} bytes is over the limit of {limit} (kafka.max-request-bytes)")]
    TooLarge { size: i64, limit: usize },
    #[error("a request of {size} bytes cannot hold a request header")]
    TooSmall { size: i64 },
    #[error("no complete request within {seconds} s")]
    Slow { seconds: u64 },
    #[error("API key {key} is not one this listener serves (docs/kafka.md lists them)")]
    UnknownApi { key: i16 },
    #[error("{api} v{version} is not served (docs/kafka.md lists the versions)")]
    UnsupportedVersion { api: &'static str, version: i16 },
    #[error("the {api} request cannot be read: {reason}")]
    Malformed { api: &'static str, reason: String },
    #[error("{api} before SASL authentication: only ApiVersions and SASL may come first")]
    NotAuthenticated { api: &'static str },
    #[error("SASL authentication failed: {0}")]
    Authentication(String),
    #[error("the {api} response cannot be encoded: {reason}")]
    Encode { api: &'static str, reason: String },
}

/// The Kafka error code of a log error, and whether its message helps the client (it is sent
/// where the protocol has a field for it).
pub fn log_code(error: &LogError) -> ResponseError {
    if error.is_disk_full() {
        return ResponseError::KafkaStorageError;
    }
    match error {
        LogError::UnknownTopic { .. } | LogError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        LogError::InvalidTopicName { .. } | LogError::ReadOnlyMirror { .. } => {
            ResponseError::InvalidTopicException
        }
        LogError::InvalidTopicConfig { .. } => ResponseError::InvalidConfig,
        LogError::TopicExists { .. } => ResponseError::TopicAlreadyExists,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::InvalidBatch(_) => ResponseError::CorruptMessage,
        LogError::KeylessRecordInCompactedTopic { .. } => ResponseError::InvalidRecord,
        LogError::Unavailable { .. } | LogError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        LogError::Corrupt { .. }
        | LogError::AppendFailed { .. }
        | LogError::Io { .. }
        | LogError::DiskBudgetReached { .. }
        | LogError::OrphanTopicDirectory { .. } => ResponseError::KafkaStorageError,
        LogError::NotNextOffset { .. }
        | LogError::NotAMirror { .. }
        | LogError::RestartBeforeEnd { .. }
        | LogError::NotCompacted { .. }
        | LogError::TooManyKeys { .. }
        | LogError::Meta(_) => ResponseError::UnknownServerError,
    }
}

/// The Kafka error code of a group coordinator's error.
pub fn group_code(error: &GroupError) -> ResponseError {
    match error {
        GroupError::UnknownMember { .. }
        | GroupError::SessionExpired { .. }
        | GroupError::GroupActive { .. } => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration { .. } | GroupError::NotOwner { .. } => {
            ResponseError::IllegalGeneration
        }
        GroupError::RebalanceInProgress { .. } => ResponseError::RebalanceInProgress,
        GroupError::GroupFull { .. } => ResponseError::GroupMaxSizeReached,
        GroupError::InconsistentProtocol { .. } => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        GroupError::OffsetBeyondEnd { .. } => ResponseError::OffsetOutOfRange,
        GroupError::NoTopics => ResponseError::InvalidRequest,
        GroupError::Log(error) => log_code(error),
        GroupError::Meta(_) => ResponseError::CoordinatorNotAvailable,
    }
}
