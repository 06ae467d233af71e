//! The one place subsystem errors become gRPC statuses, each with a message that says what to
//! fix.

use tonic::{Code, Status};

use crate::group::GroupError;
use crate::log::LogError;
use crate::meta::MetaError;

impl From<LogError> for Status {
    fn from(error: LogError) -> Self {
        let code = match &error {
            LogError::InvalidTopicName { .. }
            | LogError::InvalidTopicConfig { .. }
            | LogError::UnknownPartition { .. }
            | LogError::InvalidBatch(_) => Code::InvalidArgument,
            LogError::UnknownTopic { .. } => Code::NotFound,
            LogError::TopicExists { .. } => Code::AlreadyExists,
            LogError::OrphanTopicDirectory { .. } => Code::FailedPrecondition,
            LogError::OffsetOutOfRange { .. } => Code::OutOfRange,
            LogError::RecordTooLarge { .. } => Code::ResourceExhausted,
            LogError::Corrupt { .. } => Code::DataLoss,
            LogError::Unavailable { .. } | LogError::ShuttingDown => Code::Unavailable,
            LogError::AppendFailed { .. } | LogError::Io { .. } => Code::Internal,
            LogError::Meta(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

impl From<MetaError> for Status {
    fn from(error: MetaError) -> Self {
        let code = match &error {
            MetaError::InvalidGroupId { .. } => Code::InvalidArgument,
            MetaError::Locked { .. }
            | MetaError::Open { .. }
            | MetaError::Store { .. }
            | MetaError::Decode { .. } => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

impl From<GroupError> for Status {
    fn from(error: GroupError) -> Self {
        let code = match &error {
            GroupError::Log(_) | GroupError::Meta(_) => None,
            GroupError::UnknownMember { .. } => Some(Code::NotFound),
            GroupError::NotOwner { .. } | GroupError::GroupActive { .. } => {
                Some(Code::FailedPrecondition)
            }
            GroupError::OffsetBeyondEnd { .. } | GroupError::NoTopics => {
                Some(Code::InvalidArgument)
            }
        };
        match (code, error) {
            (Some(code), error) => Status::new(code, error.to_string()),
            (None, GroupError::Log(error)) => error.into(),
            (None, GroupError::Meta(error)) => error.into(),
            (None, error) => Status::internal(error.to_string()),
        }
    }
}

/// INVALID_ARGUMENT naming the request field that is wrong.
pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}
