//! Why a pipeline or connector task stopped, and what a restart can do about it.

use crate::group::GroupError;
use crate::log::{BatchError, LogError, TopicName};
use crate::meta::MetaError;
use crate::plugin::PluginError;
use crate::runtime::{Classified, Recovery};

use super::Rejection;

/// An error that stops a pipeline partition or a connector task. Each says what the task
/// was doing; [`Classified::recovery`] tells the runtime whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{doing}: {source}")]
    Log {
        doing: String,
        #[source]
        source: LogError,
    },
    #[error("{doing}: {source}")]
    Meta {
        doing: String,
        #[source]
        source: MetaError,
    },
    /// Records that cannot be encoded or decoded: the same data fails the same way again.
    #[error("{doing}: {source}")]
    Batch {
        doing: String,
        #[source]
        source: BatchError,
    },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("committing offsets: {0}")]
    Commit(#[source] GroupError),
    #[error(
        "plugin {:?} rejected the record at offset {}: {} (errors=fail stops here; \
         skip or dlq would go on)",
        .0.plugin, .0.offset, .0.message
    )]
    Rejected(Rejection),
    /// A plugin returned an error of its own from a call (its message).
    #[error("{plugin} failed: {message}")]
    PluginFailed { plugin: String, message: String },
    /// The configuration or the data makes the task fail the same way on every try.
    #[error("{0}")]
    Permanent(String),
    /// A task's stage that runs on a tokio task of its own was cancelled under it, which only
    /// the runtime's own shutdown does.
    #[error("{0} was stopped")]
    StageStopped(&'static str),
}

/// The helpers for `map_err` below describe what the task was doing only once it failed:
/// they sit on the per-batch path, where a description built for every success would be
/// wasted.
impl TaskError {
    /// A log error while `doing` something.
    pub fn log(doing: &'static str) -> impl FnOnce(LogError) -> Self {
        Self::log_with(move || doing.to_owned())
    }

    /// A log error while doing what `doing` describes.
    pub fn log_with(doing: impl FnOnce() -> String) -> impl FnOnce(LogError) -> Self {
        move |source| Self::Log {
            doing: doing(),
            source,
        }
    }

    /// A log error while opening `topic` or one of its partitions.
    pub fn opening(topic: &TopicName) -> impl FnOnce(LogError) -> Self + '_ {
        Self::log_with(move || format!("opening {topic}"))
    }

    /// Records that could not be encoded or decoded while doing what `doing` describes.
    pub fn batch(doing: impl FnOnce() -> String) -> impl FnOnce(BatchError) -> Self {
        move |source| Self::Batch {
            doing: doing(),
            source,
        }
    }

    /// A metadata store error while `doing` something.
    pub fn meta(doing: &'static str) -> impl FnOnce(MetaError) -> Self {
        move |source| Self::Meta {
            doing: doing.to_owned(),
            source,
        }
    }
}

impl Classified for TaskError {
    fn recovery(&self) -> Recovery {
        match self {
            Self::Log { source, .. } if source.is_disk_full() => Recovery::WhenDiskFreed,
            Self::Meta { source, .. } if source.is_disk_full() => Recovery::WhenDiskFreed,
            Self::Rejected(_) | Self::Batch { .. } | Self::Permanent(_) => Recovery::Never,
            Self::Log { .. }
            | Self::Meta { .. }
            | Self::Plugin(_)
            | Self::PluginFailed { .. }
            | Self::Commit(_)
            | Self::StageStopped(_) => Recovery::Restart,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_waits_for_room_and_a_rejection_for_the_operator() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let full = TaskError::log("appending")(LogError::Io {
            op: "appending to",
            path: "segment".into(),
            source: full,
        });
        assert_eq!(full.recovery(), Recovery::WhenDiskFreed);
        assert!(full.to_string().starts_with("appending: "), "{full}");
        let broken = TaskError::log("appending")(LogError::Io {
            op: "appending to",
            path: "segment".into(),
            source: std::io::Error::other("bad sector"),
        });
        assert_eq!(broken.recovery(), Recovery::Restart);
        let rejected = TaskError::Rejected(Rejection {
            offset: 7,
            plugin: "mask".into(),
            message: "no field".into(),
        });
        assert_eq!(rejected.recovery(), Recovery::Never);
        assert_eq!(
            TaskError::Permanent("fans out too far".into()).recovery(),
            Recovery::Never
        );
        let stopped = TaskError::StageStopped("the source's poll");
        assert_eq!(stopped.recovery(), Recovery::Restart);
        assert_eq!(stopped.to_string(), "the source's poll was stopped");
    }
}
