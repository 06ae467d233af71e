//! The hub's side of links: it listens on UDP (`--link-addr`), knows each edge by its
//! certificate, mirrors the edge's topics as `<edge-id>.<topic>` and sends the hub topics the
//! edge asks for downstream, each as the edge's ACLs (`Edge:ID`) allow: write on a mirror to
//! fill it, read on a hub topic to receive it.
//!
//! ```text
//! accept -> edge id from the certificate -> Hello (must claim the same id) -> Welcome
//!        -> a newer connection of the same link ends the older one (one writer per mirror);
//!           while one link of an edge is connected, another link of that edge is refused
//!        -> session::run (mirrors in, downstream out, group offsets applied)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use appliance_proto::link::v1 as wire;
use regex::Regex;
use tokio_util::sync::CancellationToken;

use super::progress::{Direction, MirrorStatus, Mirrors};
use super::protocol::{Admission, Admissions, SessionId};
use super::session::{self, CONTROL_LIMIT, GroupSync, Hold, PeerAccess, Side};
use super::transfer::{RateLimit, SendOptions, WireCompression};
use super::{EdgeId, LinkError, SessionError, describe, enroll, frame, tls};
use crate::group::Coordinator;
use crate::log::{Log, MirrorOwner, Timestamp};
use crate::security::certs::CaFiles;
use crate::security::join::JoinToken;
use crate::security::{Security, SecurityError};

/// How long a refusal may take to reach the edge before the hub closes the connection.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);
/// Retention of hub topics sent downstream waits for edges up to this much per partition.
const DOWNSTREAM_HOLD_BYTES: u64 = 1 << 30;

/// Where the hub listens and the files it authenticates with.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA's key, which signs the certificates of edges enrolling by join token; without
    /// it the hub enrolls no edge.
    pub ca_key: Option<PathBuf>,
    pub idle_timeout: Duration,
}

/// The hub's link endpoint and what it knows of its edges; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    local_addr: SocketAddr,
    edges: Arc<Mutex<Edges>>,
    /// Which topics each edge (`Edge:ID`) may mirror here and receive downstream, which
    /// edges' certificates are revoked, and the join tokens.
    security: Security,
    enrollment: Arc<Enrollment>,
}

/// What enrolling edges need of the hub.
#[derive(Debug)]
struct Enrollment {
    /// The CA that signs their certificates; none: the hub enrolls no edge.
    ca: Option<CaFiles>,
    /// The SHA-256 of the hub's certificate, which join tokens carry.
    pin: [u8; 32],
}

#[derive(Debug, Default)]
struct Edges {
    /// Which session of each edge is current (the protocol's decisions).
    admissions: Admissions,
    entries: BTreeMap<EdgeId, EdgeEntry>,
}

#[derive(Debug)]
struct EdgeEntry {
    /// The live connection, if any: its address follows the edge when it moves.
    connection: Option<quinn::Connection>,
    address: SocketAddr,
    last_seen: Timestamp,
    /// Ends the current session when a newer connection of the same edge arrives.
    session: CancellationToken,
    mirrors: Mirrors,
}

/// An edge as `appliance link edges` shows it.
#[derive(Debug, Clone)]
pub struct EdgeStatus {
    pub edge: EdgeId,
    pub connected: bool,
    pub address: SocketAddr,
    pub last_seen: Timestamp,
    pub lag_records: u64,
    pub partitions: Vec<MirrorStatus>,
}

impl Hub {
    /// Binds the endpoint and serves edges until `shutdown`.
    pub fn start(
        options: &HubOptions,
        log: Log,
        coordinator: Coordinator,
        security: Security,
        shutdown: CancellationToken,
    ) -> Result<Self, LinkError> {
        let files = tls::TlsFiles {
            ca: &options.ca,
            cert: &options.cert,
            key: &options.key,
        };
        let endpoint = tls::hub_endpoint(options.addr, &files, options.idle_timeout)?;
        let local_addr = endpoint.local_addr().map_err(|source| LinkError::Bind {
            addr: options.addr,
            source,
        })?;
        let enrollment = Enrollment {
            ca: options.ca_key.clone().map(|key| CaFiles {
                cert: options.ca.clone(),
                key,
            }),
            pin: enroll::pin_of(&options.cert)?,
        };
        let hub = Self {
            local_addr,
            edges: Arc::default(),
            security,
            enrollment: Arc::new(enrollment),
        };
        tokio::spawn(hub.clone().serve(endpoint, log, coordinator, shutdown));
        Ok(hub)
    }

    /// The UDP address edges dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every edge that connected since the hub started.
    pub fn edges(&self) -> Vec<EdgeStatus> {
        let edges = self.lock();
        edges
            .entries
            .iter()
            .map(|(edge, entry)| {
                let partitions: Vec<MirrorStatus> =
                    entry.mirrors.all().iter().map(|p| p.snapshot()).collect();
                let connected = entry.connection.is_some();
                EdgeStatus {
                    edge: edge.clone(),
                    connected,
                    address: entry
                        .connection
                        .as_ref()
                        .map_or(entry.address, quinn::Connection::remote_address),
                    last_seen: if connected {
                        Timestamp::now()
                    } else {
                        entry.last_seen
                    },
                    lag_records: partitions
                        .iter()
                        .filter(|p| p.direction == Direction::Upstream)
                        .map(|p| p.lag_records)
                        .sum(),
                    partitions,
                }
            })
            .collect()
    }

    /// A one-time token for `edge` to enroll with, valid for `lifetime`; with its expiry.
    pub async fn create_join_token(
        &self,
        edge: &EdgeId,
        lifetime: Duration,
    ) -> Result<(JoinToken, SystemTime), LinkError> {
        if self.enrollment.ca.is_none() {
            return Err(LinkError::EnrollmentOff);
        }
        let made = self
            .security
            .join_tokens
            .create(edge.as_str(), lifetime, self.enrollment.pin)
            .await?;
        tracing::info!(%edge, id = made.0.id(), "join token made");
        Ok(made)
    }

    /// Revokes every certificate of `edge` issued until now and closes its open session.
    pub async fn revoke(&self, edge: &EdgeId) -> Result<SystemTime, SecurityError> {
        let revoked = self.security.revocations.revoke(edge.as_str()).await?;
        if let Some(entry) = self.lock().entries.get(edge) {
            entry.session.cancel();
            if let Some(connection) = &entry.connection {
                connection.close(2u32.into(), b"certificate revoked");
            }
        }
        tracing::info!(%edge, "edge revoked: its session is closed and its certificates refused");
        Ok(revoked)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Edges> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve(
        self,
        endpoint: quinn::Endpoint,
        log: Log,
        coordinator: Coordinator,
        shutdown: CancellationToken,
    ) {
        tracing::info!(addr = %self.local_addr, "link endpoint listening");
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => incoming,
                _ = shutdown.cancelled() => break,
                Some(_) = sessions.join_next() => continue,
            };
            let Some(incoming) = incoming else { break };
            let (hub, log, coordinator) = (self.clone(), log.clone(), coordinator.clone());
            sessions.spawn(async move {
                let peer = incoming.remote_address();
                if let Err(error) = hub.session(incoming, log, coordinator).await {
                    let error = describe(&error);
                    tracing::warn!(%peer, %error, "link session ended");
                }
            });
        }
        endpoint.close(0u32.into(), b"hub shutting down");
        sessions.shutdown().await;
    }

    async fn session(
        &self,
        incoming: quinn::Incoming,
        log: Log,
        coordinator: Coordinator,
    ) -> Result<(), SessionError> {
        let connection = incoming.await?;
        if connection.peer_identity().is_none() {
            let enrolled = enroll::answer(
                &connection,
                &self.security.join_tokens,
                self.enrollment.ca.as_ref(),
            )
            .await;
            connection.close(0u32.into(), b"enrollment done");
            let address = connection.remote_address();
            match enrolled? {
                Ok(edge) => tracing::info!(%edge, %address, "edge enrolled by join token"),
                Err(reason) => tracing::warn!(%address, %reason, "refused an enrollment"),
            }
            return Ok(());
        }
        let edge = tls::edge_of(&connection)?;
        let (mut control_out, mut control_in) = connection.accept_bi().await?;
        let hello = match frame::read::<wire::ControlFrame>(&mut control_in, CONTROL_LIMIT)
            .await?
            .and_then(|frame| frame.kind)
        {
            Some(wire::control_frame::Kind::Hello(hello)) => hello,
            _ => {
                return Err(SessionError::Protocol(
                    "the first frame is not Hello".into(),
                ));
            }
        };
        let (downstream, stop, mirrors, session_id) =
            match self.connected(&edge, &hello, &connection) {
                Ok(admitted) => admitted,
                Err(reason) => {
                    let refusal = wire::ControlFrame {
                        kind: Some(wire::control_frame::Kind::Refusal(wire::Refusal {
                            reason: reason.clone(),
                        })),
                    };
                    control_out.write_all(&frame::encode(&refusal)).await?;
                    // The refusal is delivered before the connection goes: closing at once would
                    // drop it.
                    if control_out.finish().is_ok() {
                        let _ = tokio::time::timeout(REFUSAL_GRACE, control_out.stopped()).await;
                    }
                    connection.close(1u32.into(), b"refused");
                    return Err(SessionError::Refused(reason));
                }
            };
        let welcome = wire::ControlFrame {
            kind: Some(wire::control_frame::Kind::Welcome(wire::Welcome {})),
        };
        control_out.write_all(&frame::encode(&welcome)).await?;
        tracing::info!(%edge, address = %connection.remote_address(), "edge linked");
        let side = Side {
            log,
            outgoing: downstream,
            outgoing_direction: Direction::Downstream,
            send: SendOptions {
                compression: WireCompression::from_wire(hello.compression as i32)
                    .unwrap_or_default(),
                limit: Arc::new(RateLimit::new(hello.max_bytes_per_sec)),
            },
            mirrors_of: MirrorOwner::Edge(edge.to_string()),
            mirrored_as: MirrorOwner::Hub,
            peer: format!("edge {edge}"),
            hold: Some(Hold {
                holder: format!("edge:{edge}"),
                max_bytes: DOWNSTREAM_HOLD_BYTES,
                store: None,
            }),
            groups: GroupSync::Receive(coordinator),
            mirrors,
            access: Some(PeerAccess {
                authorizer: self.security.authorizer.clone(),
                principal: edge.principal(),
            }),
        };
        let outcome = tokio::select! {
            outcome = session::run(side, connection.clone(), control_out, control_in) => outcome,
            _ = stop.cancelled() => Err(SessionError::Protocol("a newer connection of this edge replaced it".into())),
        };
        self.disconnected(&edge, session_id, &connection);
        connection.close(0u32.into(), b"session ended");
        outcome
    }

    /// Admits a new connection of `edge` (ending the same link's previous session) or says
    /// why not: the protocol's [`Admissions`] decide.
    fn connected(
        &self,
        edge: &EdgeId,
        hello: &wire::Hello,
        connection: &quinn::Connection,
    ) -> Result<(Option<Regex>, CancellationToken, Mirrors, SessionId), String> {
        // A certificate whose issue cannot be read is as old as can be.
        let issued = tls::issued_unix_s(connection).unwrap_or(i64::MIN);
        if let Some(revoked) = self.security.revocations.revoked(edge.as_str(), issued) {
            return Err(format!(
                "the certificates of edge {edge} issued until {} are revoked on the hub; issue it \
                 a new one (`appliance certs issue {edge}`)",
                humantime::format_rfc3339_seconds(revoked)
            ));
        }
        let mut edges = self.lock();
        let Edges {
            admissions,
            entries,
        } = &mut *edges;
        // A connection that died before its session noticed holds the edge no longer.
        if let Some(entry) = entries.get(edge)
            && entry
                .connection
                .as_ref()
                .is_some_and(|current| current.close_reason().is_some())
        {
            admissions.connection_lost(edge);
        }
        let (session_id, downstream) = match admissions.hello(edge, hello) {
            Admission::Refuse(reason) => return Err(reason),
            Admission::Welcome {
                session,
                downstream,
                ..
            } => (session, downstream),
        };
        let stop = CancellationToken::new();
        let entry = entries.entry(edge.clone()).or_insert_with(|| EdgeEntry {
            connection: None,
            address: connection.remote_address(),
            last_seen: Timestamp::now(),
            session: CancellationToken::new(),
            mirrors: Mirrors::default(),
        });
        // The fenced session, if the edge had one, ends here.
        entry.session.cancel();
        entry.session = stop.clone();
        entry.connection = Some(connection.clone());
        entry.address = connection.remote_address();
        entry.last_seen = Timestamp::now();
        Ok((downstream, stop, entry.mirrors.clone(), session_id))
    }

    fn disconnected(&self, edge: &EdgeId, session_id: SessionId, connection: &quinn::Connection) {
        let mut edges = self.lock();
        if edges.admissions.ended(edge, session_id)
            && let Some(entry) = edges.entries.get_mut(edge)
        {
            entry.address = connection.remote_address();
            entry.connection = None;
            entry.last_seen = Timestamp::now();
        }
    }
}
