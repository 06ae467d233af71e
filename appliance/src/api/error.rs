//! The one place subsystem errors become gRPC statuses, each with a message that says what to
//! fix.

use tonic::{Code, Status};

use crate::connect::ConnectError;
use crate::group::GroupError;
use crate::link::LinkError;
use crate::log::LogError;
use crate::meta::MetaError;
use crate::pipeline::PipelineError;
use crate::plugin::PluginError;
use crate::query::QueryError;

impl From<LogError> for Status {
    fn from(error: LogError) -> Self {
        let code = match &error {
            LogError::InvalidTopicName { .. }
            | LogError::InvalidTopicConfig { .. }
            | LogError::UnknownPartition { .. }
            | LogError::InvalidBatch(_) => Code::InvalidArgument,
            LogError::UnknownTopic { .. } => Code::NotFound,
            LogError::TopicExists { .. } => Code::AlreadyExists,
            LogError::OrphanTopicDirectory { .. }
            | LogError::NotNextOffset { .. }
            | LogError::ReadOnlyMirror { .. }
            | LogError::NotAMirror { .. }
            | LogError::RestartBeforeEnd { .. } => Code::FailedPrecondition,
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
            GroupError::UnknownMember { .. } | GroupError::SessionExpired { .. } => {
                Some(Code::NotFound)
            }
            GroupError::NotOwner { .. } | GroupError::GroupActive { .. } => {
                Some(Code::FailedPrecondition)
            }
            GroupError::OffsetBeyondEnd { .. }
            | GroupError::NoTopics
            | GroupError::InvalidSessionTimeout { .. } => Some(Code::InvalidArgument),
        };
        match (code, error) {
            (Some(code), error) => Status::new(code, error.to_string()),
            (None, GroupError::Log(error)) => error.into(),
            (None, GroupError::Meta(error)) => error.into(),
            (None, error) => Status::internal(error.to_string()),
        }
    }
}

impl From<PluginError> for Status {
    fn from(error: PluginError) -> Self {
        let code = match &error {
            PluginError::InvalidName { .. }
            | PluginError::InvalidComponent { .. }
            | PluginError::WrongKind { .. }
            | PluginError::InvalidGrant { .. }
            | PluginError::ConfigRejected { .. } => Code::InvalidArgument,
            PluginError::NotFound { .. } => Code::NotFound,
            PluginError::AlreadyExists { .. } => Code::AlreadyExists,
            PluginError::BuiltIn { .. } => Code::FailedPrecondition,
            PluginError::TooLarge { .. } => Code::ResourceExhausted,
            PluginError::Fault { .. } | PluginError::Contract { .. } => Code::Aborted,
            PluginError::Io { .. } => Code::Internal,
            PluginError::Meta(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

impl From<PipelineError> for Status {
    fn from(error: PipelineError) -> Self {
        match error {
            PipelineError::Plugin(error) => error.into(),
            PipelineError::Log(error) => error.into(),
            PipelineError::Meta(error) => error.into(),
            PipelineError::InvalidName { .. } | PipelineError::InvalidSpec { .. } => {
                Status::invalid_argument(error.to_string())
            }
            PipelineError::NotFound { .. } => Status::not_found(error.to_string()),
            PipelineError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            PipelineError::PluginInUse { .. } => Status::failed_precondition(error.to_string()),
        }
    }
}

impl From<ConnectError> for Status {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Plugin(error) => error.into(),
            ConnectError::Log(error) => error.into(),
            ConnectError::Meta(error) => error.into(),
            ConnectError::Group(error) => error.into(),
            ConnectError::InvalidName { .. } | ConnectError::InvalidSpec { .. } => {
                Status::invalid_argument(error.to_string())
            }
            ConnectError::NotFound { .. } => Status::not_found(error.to_string()),
            ConnectError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            ConnectError::NotPaused { .. } | ConnectError::PluginInUse { .. } => {
                Status::failed_precondition(error.to_string())
            }
        }
    }
}

/// INVALID_ARGUMENT naming the request field that is wrong.
pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

impl From<LinkError> for Status {
    fn from(error: LinkError) -> Self {
        match error {
            LinkError::Log(error) => error.into(),
            LinkError::Meta(error) => error.into(),
            LinkError::InvalidEdgeId { .. }
            | LinkError::ReservedEdgeId { .. }
            | LinkError::InvalidSpec { .. }
            | LinkError::Certificate { .. } => Status::invalid_argument(error.to_string()),
            LinkError::UnknownLink { .. } => Status::not_found(error.to_string()),
            LinkError::LinkExists { .. } | LinkError::Exists { .. } => {
                Status::already_exists(error.to_string())
            }
            LinkError::NotHub => Status::failed_precondition(error.to_string()),
            LinkError::Refused { .. } => Status::permission_denied(error.to_string()),
            LinkError::Io { .. } | LinkError::Bind { .. } => Status::internal(error.to_string()),
        }
    }
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Syntax(_) | QueryError::Invalid(_) => {
                Status::invalid_argument(error.to_string())
            }
            QueryError::UnknownTable(_) => Status::not_found(error.to_string()),
            QueryError::Data(_) => Status::data_loss(error.to_string()),
            QueryError::Failed(_) | QueryError::Render(_) => Status::internal(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::TopicName;

    #[test]
    fn producing_to_a_mirror_is_a_failed_precondition_that_says_how_to_promote_it() {
        let status = Status::from(LogError::ReadOnlyMirror {
            topic: TopicName::new("plant-7.temps").expect("valid name"),
            origin: "edge plant-7".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains("appliance link promote plant-7.temps"),
            "{}",
            status.message()
        );
    }
}
