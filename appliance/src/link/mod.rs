//! Cluster linking, edge -> hub over QUIC with mutual TLS (see docs/linking.md).
//!
//! What is here so far: the identities a link authenticates with, the QUIC endpoints that
//! check them, and the framing of the link protocol's messages ([`frame`];
//! `proto/appliance/link/v1/link.proto`). A link's trust is one CA the operator makes with `appliance certs init`
//! ([`certs`]); the hub's certificate names the addresses edges dial, and each edge's client
//! certificate (`appliance certs issue EDGE_ID`) names the edge, which is how the hub knows
//! which edge is speaking ([`tls::edge_of`]) and what its mirror topics (`<edge-id>.<topic>`)
//! are called.

pub mod certs;
pub mod frame;
pub mod replicate;
pub mod tls;

/// An edge's name: a DNS label (1 to 63 of `a-z 0-9 -`, not starting or ending with `-`), so
/// it can stand in a certificate's subject alternative name and as the first part of the
/// hub's mirror topic names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeId(String);

impl EdgeId {
    pub fn new(id: &str) -> Result<Self, LinkError> {
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
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists already; certificates and keys are never overwritten (move it away first)", path.display())]
    Exists { path: std::path::PathBuf },
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_dns_labels() {
        for good in ["edge-1", "a", "plant7", &"x".repeat(63)] {
            assert!(EdgeId::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-edge",
            "edge-",
            "Edge",
            "edge.1",
            "edge_1",
            &"x".repeat(64),
        ] {
            assert!(EdgeId::new(bad).is_err(), "{bad}");
        }
    }
}
