//! Why a link session, or one partition of it, ended.

use super::LinkError;
use super::frame;
use super::protocol::HandshakeError;
use crate::log::{LogError, PartitionId, TopicName};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("writing to the peer: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading from the peer: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(
        "{topic}/{partition} does not continue its mirror: {detail}; this side's log was reset \
         or replaced (the topic deleted and created again, or another appliance with the same \
         identity); delete the mirror on the other side to start it anew"
    )]
    Diverged {
        topic: TopicName,
        partition: PartitionId,
        detail: String,
    },
    #[error("quarantined: {reason}")]
    Quarantined { reason: String },
}

/// The error and its causes on one line: a QUIC read that failed says only "connection
/// lost"; why (a refused certificate, a timeout) is in its sources.
pub fn describe(error: &SessionError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let message = error.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = error.source();
    }
    text
}

impl From<HandshakeError> for SessionError {
    fn from(error: HandshakeError) -> Self {
        match error {
            HandshakeError::Refused(reason) => Self::Refused(reason),
            HandshakeError::NoWelcome => Self::Protocol("the hub did not answer Welcome".into()),
        }
    }
}
