//! Cluster linking, edge -> hub over QUIC with mutual TLS (see docs/linking.md).
//!
//! A link's trust is one CA the operator makes with `appliance certs init` (`security::certs`); the
//! hub's certificate names the addresses edges dial, and each edge's client certificate
//! (`appliance certs issue EDGE_ID`) names the edge, which is how the hub knows which edge is
//! speaking ([`tls::edge_of`]) and what its mirror topics (`<edge-id>.<topic>`) are called.
//!
//! ```text
//! edge: Links (edge.rs) -- one task per link --> QUIC connection (tls.rs) -----+
//! hub:  Hub (hub.rs) <-- accepts, checks the certificate against the Hello ---+
//! both: session.rs: control stream (frame.rs, proto/appliance/link/v1) + one stream per
//!       mirrored partition (transfer.rs: batches as stored, at their own offsets)
//! ```
//!
//! What each side decides is in [`protocol`], state machines without I/O (handshake and
//! fencing, announcements, senders, gaps, acknowledgements and holds); `session.rs`,
//! `transfer.rs`, `hub.rs` and `edge.rs` are the async drivers around them, and
//! [`progress`] holds what status shows of each mirrored partition. Dependencies point one
//! way: drivers -> protocol -> progress, error.
//!
//! Mirrors are read-only topics of the receiving log; retention on the sending side waits
//! for acknowledgements (holds) up to a cap, and what it deletes anyway reaches the mirror as
//! a gap at the same offsets.

use regex::Regex;

use crate::security::{Principal, PrincipalKind};

pub mod edge;
pub mod enroll;
mod error;
pub mod frame;
pub mod hub;
pub mod progress;
pub mod protocol;
pub mod session;
pub mod tls;
pub mod transfer;

pub use error::{SessionError, describe};

/// An edge's name: a DNS label (1 to 63 of `a-z 0-9 -`, not starting or ending with `-`), so
/// it can stand in a certificate's subject alternative name and as the first part of the
/// hub's mirror topic names. `hub` is reserved: an edge's mirrors of hub topics are `hub.<topic>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeId(String);

/// Which links an appliance serves: an edge dials hubs; a hub also accepts edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Edge,
    Hub,
}

/// A topic pattern of a link: a regular expression matched against whole names, with a size
/// limit since a peer's pattern is untrusted. Empty: none.
pub fn pattern(text: &str) -> Result<Option<Regex>, regex::Error> {
    if text.is_empty() {
        return Ok(None);
    }
    regex::RegexBuilder::new(&format!("^(?:{text})$"))
        .size_limit(1 << 20)
        .build()
        .map(Some)
}

pub use crate::log::HUB_MIRROR_PREFIX;

impl EdgeId {
    /// The principal the edge authenticates as: `Edge:ID`.
    pub fn principal(&self) -> Principal {
        Principal::new(PrincipalKind::Edge, &self.0).expect("an edge id is a valid principal name")
    }

    pub fn new(id: &str) -> Result<Self, LinkError> {
        if id == HUB_MIRROR_PREFIX {
            return Err(LinkError::ReservedEdgeId { id: id.to_owned() });
        }
        let valid = (1..=63).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-')
            && !id.ends_with('-');
        if valid {
            Ok(Self(id.to_owned()))
        } else {
            Err(LinkError::InvalidEdgeId { id: id.to_owned() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EdgeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "invalid edge id {id:?}: use 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    InvalidEdgeId { id: String },
    #[error(
        "the edge id {id:?} is reserved (an edge names its mirrors of hub topics {id}.<topic>): \
         choose another"
    )]
    ReservedEdgeId { id: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Certs(#[from] crate::security::certs::CertError),
    #[error("{what}: {reason}")]
    Certificate { what: String, reason: String },
    #[error("cannot bind the link endpoint to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("refused the link from {peer}: {reason}")]
    Refused {
        peer: std::net::SocketAddr,
        reason: String,
    },
    #[error("invalid {what}: {reason}")]
    InvalidSpec { what: String, reason: String },
    #[error("no link named {name:?} (appliance link list shows them)")]
    UnknownLink { name: String },
    #[error("a link named {name:?} exists already")]
    LinkExists { name: String },
    #[error(
        "this appliance is not a hub: run it with --role hub --link-addr ADDR --link-cert F --link-key F --link-ca F"
    )]
    NotHub,
    #[error(
        "this hub enrolls no edges: run it with --link-ca-key (the key of --link-ca, which signs \
         the certificates of enrolling edges)"
    )]
    EnrollmentOff,
    #[error("the hub {hub} did not enroll this edge: {reason}")]
    NotEnrolled { hub: String, reason: String },
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
}

#[cfg(test)]
mod tests;
