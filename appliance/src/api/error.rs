//! The one place subsystem errors become gRPC statuses, each with a message that says what to
//! fix.

use tonic::{Code, Status};

use crate::connect::ConnectError;
#[cfg(feature = "hub")]
use crate::export::ExportError;
use crate::group::GroupError;
use crate::link::LinkError;
use crate::log::LogError;
use crate::meta::MetaError;
use crate::pipeline::PipelineError;
use crate::plugin::PluginError;
#[cfg(feature = "hub")]
use crate::query::QueryError;
use crate::security::{SecurityError, secrets};

impl From<LogError> for Status {
    fn from(error: LogError) -> Self {
        let code = match &error {
            LogError::InvalidTopicName { .. }
            | LogError::InvalidTopicConfig { .. }
            | LogError::UnknownPartition { .. }
            | LogError::InvalidBatch(_)
            | LogError::KeylessRecordInCompactedTopic { .. } => Code::InvalidArgument,
            LogError::UnknownTopic { .. } => Code::NotFound,
            LogError::TopicExists { .. } => Code::AlreadyExists,
            LogError::OrphanTopicDirectory { .. }
            | LogError::NotNextOffset { .. }
            | LogError::ReadOnlyMirror { .. }
            | LogError::NotAMirror { .. }
            | LogError::RestartBeforeEnd { .. }
            | LogError::NotCompacted { .. } => Code::FailedPrecondition,
            LogError::OffsetOutOfRange { .. } => Code::OutOfRange,
            LogError::RecordTooLarge { .. } | LogError::TooManyKeys { .. } => {
                Code::ResourceExhausted
            }
            // Says what the budget is and what makes room, unlike a full disk.
            LogError::DiskBudgetReached { .. } => {
                return Status::resource_exhausted(error.to_string());
            }
            LogError::Corrupt { .. } => Code::DataLoss,
            LogError::Unavailable { .. } | LogError::ShuttingDown => Code::Unavailable,
            LogError::AppendFailed { .. } | LogError::Io { .. } => Code::Internal,
            LogError::Meta(_) => Code::Internal,
        };
        if error.is_disk_full() {
            return disk_full(&error);
        }
        Status::new(code, error.to_string())
    }
}

impl From<SecurityError> for Status {
    fn from(error: SecurityError) -> Self {
        let code = match &error {
            SecurityError::InvalidPrincipal { .. }
            | SecurityError::InvalidAcl { .. }
            | SecurityError::InvalidTokenId { .. }
            | SecurityError::DescriptionTooLong { .. }
            | SecurityError::InvalidMappingRule { .. }
            | SecurityError::WeakPassword { .. }
            | SecurityError::InvalidJoinToken { .. } => Code::InvalidArgument,
            SecurityError::JoinTokenRefused { .. } => Code::PermissionDenied,
            SecurityError::ClientCertificate { .. } => Code::Unauthenticated,
            SecurityError::UnknownToken { .. } | SecurityError::UnknownUser { .. } => {
                Code::NotFound
            }
            SecurityError::UserExists { .. } => Code::AlreadyExists,
            SecurityError::Meta(error) if error.is_disk_full() => return disk_full(&error),
            SecurityError::Randomness { .. }
            | SecurityError::AdminTokenFile { .. }
            | SecurityError::Meta(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

/// What a call that needed to write gets while the data directory's disk is full.
fn disk_full(error: &dyn std::fmt::Display) -> Status {
    Status::resource_exhausted(format!(
        "{error}: the data directory's disk is full; delete topics or lower their retention \
         to make room (reads and deletes still work)"
    ))
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
        if error.is_disk_full() {
            return disk_full(&error);
        }
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
            GroupError::NotOwner { .. }
            | GroupError::GroupActive { .. }
            | GroupError::InconsistentProtocol { .. }
            | GroupError::IllegalGeneration { .. } => Some(Code::FailedPrecondition),
            GroupError::RebalanceInProgress { .. } => Some(Code::Unavailable),
            GroupError::GroupFull { .. } => Some(Code::ResourceExhausted),
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
        if let PluginError::Meta(error) = error {
            return error.into();
        }
        let code = match &error {
            PluginError::InvalidName { .. }
            | PluginError::InvalidComponent { .. }
            | PluginError::WrongKind { .. }
            | PluginError::InvalidGrant { .. }
            | PluginError::ConfigRejected { .. }
            | PluginError::Secret(_) => Code::InvalidArgument,
            PluginError::NotFound { .. } => Code::NotFound,
            PluginError::AlreadyExists { .. } => Code::AlreadyExists,
            PluginError::BuiltIn { .. } => Code::FailedPrecondition,
            PluginError::TooLarge { .. } => Code::ResourceExhausted,
            PluginError::Fault { .. } | PluginError::Contract { .. } => Code::Aborted,
            PluginError::Io { .. } => Code::Internal,
            PluginError::Meta(_) => unreachable!("converted above"),
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

#[cfg(feature = "hub")]
impl From<ExportError> for Status {
    fn from(error: ExportError) -> Self {
        match error {
            ExportError::Log(error) => error.into(),
            ExportError::Meta(error) => error.into(),
            ExportError::InvalidName { .. } | ExportError::InvalidSpec { .. } => {
                Status::invalid_argument(error.to_string())
            }
            ExportError::NotFound { .. } => Status::not_found(error.to_string()),
            ExportError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            ExportError::Table(_) | ExportError::Rows(_) => Status::internal(error.to_string()),
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
            LinkError::Security(error) => error.into(),
            LinkError::InvalidEdgeId { .. }
            | LinkError::ReservedEdgeId { .. }
            | LinkError::InvalidSpec { .. }
            | LinkError::Certificate { .. }
            | LinkError::Certs(_) => Status::invalid_argument(error.to_string()),
            LinkError::UnknownLink { .. } => Status::not_found(error.to_string()),
            LinkError::LinkExists { .. } => Status::already_exists(error.to_string()),
            LinkError::NotHub | LinkError::EnrollmentOff => {
                Status::failed_precondition(error.to_string())
            }
            LinkError::Refused { .. } | LinkError::NotEnrolled { .. } => {
                Status::permission_denied(error.to_string())
            }
            LinkError::Io { .. } | LinkError::Bind { .. } => Status::internal(error.to_string()),
        }
    }
}

#[cfg(feature = "hub")]
impl From<QueryError> for Status {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Syntax(_) | QueryError::Invalid(_) => {
                Status::invalid_argument(error.to_string())
            }
            QueryError::UnknownTable(_) => Status::not_found(error.to_string()),
            QueryError::Data(_) => Status::data_loss(error.to_string()),
            QueryError::ResourcesExhausted(_) => Status::resource_exhausted(error.to_string()),
            QueryError::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
            QueryError::ShuttingDown => Status::unavailable(error.to_string()),
            QueryError::Failed(_) | QueryError::Render(_) => Status::internal(error.to_string()),
        }
    }
}

/// Longest quoted input an error message repeats whole.
const MAX_QUOTED_CHARS: usize = 64;
/// Longest error message sent: gRPC carries messages in HTTP/2 headers, which many clients
/// (grpcio's default is 8 KiB of headers) refuse beyond a few KiB, leaving their users no
/// message at all.
const MAX_MESSAGE_CHARS: usize = 1024;

/// Every error answer the API sends, as it leaves: tonic's refusal of a request past the
/// decoding limit (OUT_OF_RANGE in tonic's words) becomes RESOURCE_EXHAUSTED saying what to
/// change, and quoted input in a message is cut to its start so the message stays readable
/// and fits any client.
pub(super) fn outgoing_error<B>(mut response: hyper::Response<B>) -> hyper::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() == Code::Ok {
        return response;
    }
    let replacement = if status.code() == Code::OutOfRange
        && status
            .message()
            .starts_with("Error, decoded message length too large")
    {
        Status::resource_exhausted(format!(
            "the request is larger than the API accepts ({} MiB a message): send fewer or \
             smaller records a request",
            super::MAX_REQUEST_BYTES >> 20
        ))
    } else {
        let bounded = bounded_message(status.message());
        let message = secrets::redact(&bounded);
        if message == status.message() {
            return response;
        }
        Status::new(status.code(), message)
    };
    if replacement.add_header(response.headers_mut()).is_err() {
        tracing::warn!(code = ?status.code(), "an error message could not be shortened");
    }
    response
}

/// `message` with each quoted string (Rust's `{:?}` quoting) longer than
/// [`MAX_QUOTED_CHARS`] cut to its start, saying how long it was, and the whole no longer than
/// [`MAX_MESSAGE_CHARS`].
fn bounded_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS));
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = closing_quote(after) else {
            rest = after;
            break;
        };
        let quoted = &after[..close];
        let chars = quoted.chars().count();
        if chars > MAX_QUOTED_CHARS {
            out.extend(quoted.chars().take(MAX_QUOTED_CHARS));
            out.push_str(&format!("…\" ({} bytes)", quoted.len()));
        } else {
            out.push_str(quoted);
            out.push('"');
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if out.chars().count() > MAX_MESSAGE_CHARS {
        out = out.chars().take(MAX_MESSAGE_CHARS).collect();
        out.push('…');
    }
    out
}

/// Where the quoted string at the start of `text` ends: the first `"` not escaped.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(at),
            _ => escaped = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::TopicName;

    #[test]
    fn quoted_input_is_cut_and_messages_are_bounded() {
        let long = "g".repeat(10_000);
        let message = format!("invalid group id {long:?}: use 1 to 255 characters");
        let bounded = bounded_message(&message);
        assert_eq!(
            bounded,
            format!(
                "invalid group id \"{}…\" (10000 bytes): use 1 to 255 characters",
                "g".repeat(64)
            )
        );
        let escaped = format!("{:?} and {:?}", "a\"b", "é".repeat(100));
        assert_eq!(
            bounded_message(&escaped),
            format!("\"a\\\"b\" and \"{}…\" (200 bytes)", "é".repeat(64))
        );
        assert_eq!(bounded_message("no quotes"), "no quotes");
        assert_eq!(bounded_message("one \" open"), "one \" open");
        assert_eq!(bounded_message(&"x".repeat(5000)).chars().count(), 1025);
    }

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
