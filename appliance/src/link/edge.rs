//! The edge's links to hubs: specs in the metadata store, one task per link that keeps a
//! connection up and runs its sessions.
//!
//! ```text
//! create -> spec checked (patterns, hub address, certificate files: the edge id is the one
//!           the certificate names) -> stored -> task
//! task:  retention holds from the stored acknowledged positions -> loop {
//!            resolve the hub's address (it may move) -> connect -> Hello -> Welcome
//!            -> session::run (topics up, `hub.<topic>` down, group offsets up)
//!            -> lost: retry after a backoff that doubles up to 30 s }
//! ```
//!
//! Pausing or deleting cancels the task; retention holds stay while paused (the hub will want
//! the records) and go with the link.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use appliance_proto::link::v1 as wire;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::progress::{Direction, MirrorStatus, Mirrors};
use super::session::{self, CONTROL_LIMIT, GroupSync, Hold, Side};
use super::transfer::{RateLimit, SendOptions, WireCompression};
use super::{EdgeId, LinkError, SessionError, describe, frame, pattern, protocol, tls};
use crate::log::{BatchHeader, Log, MirrorOwner, Offset, PartitionId, Timestamp, TopicName};
use crate::meta::{Meta, Table};
use crate::runtime::{
    Component, Failure, Recovery, Registry, ResourceName, RestartPolicies, Restarts, State,
    StatusCell,
};

/// A partition's retention waits for the hub up to this size unless the link says otherwise.
pub const DEFAULT_HOLD_MAX_BYTES: u64 = 1 << 30;

/// A link as the operator made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LinkSpec {
    pub name: String,
    /// `HOST:PORT` of the hub's link endpoint.
    pub hub: String,
    /// Edge topics to mirror up (a regular expression over whole names).
    pub topics: String,
    /// Hub topics to mirror down as `hub.<topic>` (empty: none).
    #[serde(default)]
    pub downstream: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub compression: WireCompression,
    /// 0: no cap.
    #[serde(default)]
    pub max_bytes_per_sec: u64,
    /// The congestion control of what this edge sends.
    #[serde(default)]
    pub congestion: tls::Congestion,
    pub hold_max_bytes: u64,
    #[serde(default)]
    pub paused: bool,
}

/// A link's spec and how it is doing.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub spec: LinkSpec,
    /// What the link's certificate names (none when the file cannot be read).
    pub edge: Option<EdgeId>,
    /// Starting while connecting, running while connected, restarting while it waits for
    /// the next attempt, failed when it cannot try (its certificate or key is unusable).
    pub state: State,
    /// The last failure, kept until the link connects again.
    pub last_error: Option<String>,
    pub connected_for: Option<Duration>,
    pub partitions: Vec<MirrorStatus>,
}

/// The edge's links; cheap to clone.
#[derive(Debug, Clone)]
pub struct Links {
    log: Log,
    meta: Meta,
    idle_timeout: Duration,
    restarts: Arc<RestartPolicies>,
    running: Registry<Running>,
}

/// What the registry keeps of a link.
#[derive(Debug)]
struct Running {
    spec: LinkSpec,
    edge: Option<EdgeId>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    phase: StatusCell<Phase>,
    mirrors: Mirrors,
}

#[derive(Debug, Clone)]
struct Phase {
    state: State,
    last_error: Option<String>,
    connected_at: Option<Instant>,
}

impl Shared {
    fn set(&self, state: State) {
        self.phase.update(|phase| {
            let connected = state == State::Running;
            phase.connected_at = connected.then(Instant::now);
            if let Some(failure) = state.failure() {
                phase.last_error = Some(failure.reason.clone());
            } else if connected {
                phase.last_error = None;
            }
            phase.state = state;
        });
    }

    /// The link cannot try at all until the operator fixes what `error` names.
    fn cannot_try(&self, error: &impl ToString) {
        self.set(State::Failed {
            failure: Failure {
                reason: error.to_string(),
                recovery: Recovery::Never,
            },
        });
    }
}

impl Links {
    /// Loads the stored links and starts those not paused.
    pub async fn open(
        log: Log,
        meta: Meta,
        idle_timeout: Duration,
        restarts: RestartPolicies,
        shutdown: CancellationToken,
    ) -> Result<Self, LinkError> {
        let links = Self {
            log,
            meta,
            idle_timeout,
            restarts: Arc::new(restarts),
            running: Registry::new(shutdown),
        };
        let mut running = links.running.lock().await;
        for (name, spec) in links.meta.entries::<LinkSpec>(Table::Links)? {
            running.insert(name, links.launch(spec)).await;
        }
        drop(running);
        Ok(links)
    }

    pub async fn create(&self, mut spec: LinkSpec) -> Result<LinkStatus, LinkError> {
        if ResourceName::new(&spec.name).is_none() {
            return Err(LinkError::InvalidSpec {
                what: "name".into(),
                reason: format!("{:?}: {}", spec.name, ResourceName::RULE),
            });
        }
        for (what, text) in [("topics", &spec.topics), ("downstream", &spec.downstream)] {
            pattern(text).map_err(|e| LinkError::InvalidSpec {
                what: what.into(),
                reason: e.to_string(),
            })?;
        }
        if spec.topics.is_empty() {
            return Err(LinkError::InvalidSpec {
                what: "topics".into(),
                reason: "a pattern of the topics to mirror is required".into(),
            });
        }
        tls::split_host_port(&spec.hub)?;
        if spec.hold_max_bytes == 0 {
            spec.hold_max_bytes = DEFAULT_HOLD_MAX_BYTES;
        }
        let edge = tls::edge_of_certificate(&spec.cert)?;
        // Checked and created under one lock, so of two creates of one name exactly one wins.
        let mut running = self.running.lock().await;
        if running.contains(&spec.name) {
            return Err(LinkError::LinkExists { name: spec.name });
        }
        if let Some(other) = running
            .states()
            .find(|link| link.edge.as_ref() == Some(&edge) && link.spec.hub == spec.hub)
        {
            return Err(LinkError::InvalidSpec {
                what: "hub".into(),
                reason: format!(
                    "the link {:?} links edge {edge} to {} already; a hub serves one link per \
                     edge: give that link's topic pattern these topics too",
                    other.spec.name, spec.hub
                ),
            });
        }
        // Builds the endpoint once to check the CA and the key before anything is stored.
        tls::edge_endpoint(&files(&spec), self.idle_timeout, spec.congestion)?;
        self.meta.put(Table::Links, &spec.name, &spec).await?;
        let link = self.launch(spec);
        let status = self.status(&link.state);
        running.insert(status.spec.name.clone(), link).await;
        Ok(status)
    }

    pub async fn get(&self, name: &str) -> Result<LinkStatus, LinkError> {
        let running = self.running.lock().await;
        let link = running.get(name).ok_or_else(|| unknown(name))?;
        Ok(self.status(&link.state))
    }

    pub async fn list(&self) -> Vec<LinkStatus> {
        let running = self.running.lock().await;
        running.states().map(|link| self.status(link)).collect()
    }

    /// Every link, unless one is being changed right now (for metrics, which must not wait).
    pub fn try_list(&self) -> Option<Vec<LinkStatus>> {
        let running = self.running.try_lock()?;
        Some(running.states().map(|link| self.status(link)).collect())
    }

    /// Tasks of links still running, including any that outlived their link.
    pub fn running_tasks(&self) -> usize {
        self.running.running_tasks()
    }

    pub async fn pause(&self, name: &str) -> Result<LinkStatus, LinkError> {
        self.set_paused(name, true).await
    }

    pub async fn resume(&self, name: &str) -> Result<LinkStatus, LinkError> {
        self.set_paused(name, false).await
    }

    /// Stops and forgets a link, its stored positions and its retention holds.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let mut running = self.running.lock().await;
        running
            .take_stopped(name)
            .await
            .ok_or_else(|| unknown(name))?;
        let holder = holder(name);
        self.log.release_retention_holds(&holder);
        self.meta
            .remove_prefix(Table::LinkAcks, &format!("{holder}\0"))
            .await?;
        self.meta.remove(Table::Links, name).await?;
        Ok(())
    }

    /// Stops every link (at shutdown).
    pub async fn stop_all(&self) {
        self.running.stop_all().await;
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<LinkStatus, LinkError> {
        let mut running = self.running.lock().await;
        let link = running
            .take_stopped(name)
            .await
            .ok_or_else(|| unknown(name))?;
        let spec = LinkSpec {
            paused,
            ..link.state.spec
        };
        let stored = self.meta.put(Table::Links, &spec.name, &spec).await;
        let link = self.launch(spec);
        let status = self.status(&link.state);
        running.insert(name.to_owned(), link).await;
        stored?;
        Ok(status)
    }

    /// A link as a component, its task started unless it is paused. A link whose certificate
    /// went missing stays listed, with the reason as its error.
    fn launch(&self, spec: LinkSpec) -> Component<Running> {
        let edge = tls::edge_of_certificate(&spec.cert);
        let shared = Arc::new(Shared {
            phase: StatusCell::new(Phase {
                state: State::Paused,
                last_error: None,
                connected_at: None,
            }),
            mirrors: Mirrors::default(),
        });
        let edge = match edge {
            Ok(edge) => Some(edge),
            Err(error) => {
                shared.cannot_try(&error);
                None
            }
        };
        let link = self.running.component(Running { spec, edge, shared });
        let Running { spec, edge, shared } = &link.state;
        if let Some(edge) = edge.as_ref().filter(|_| !spec.paused) {
            self.restore_holds(spec);
            shared.set(State::Starting);
            link.spawn(keep_up(
                spec.clone(),
                edge.clone(),
                self.clone(),
                shared.clone(),
                link.stop_token(),
            ));
        }
        link
    }

    /// Retention holds at what the hub acknowledged before the restart: they must be in place
    /// before retention runs, whether or not the hub is reachable.
    fn restore_holds(&self, spec: &LinkSpec) {
        let holder = holder(&spec.name);
        let Ok(acks) = self.meta.entries::<u64>(Table::LinkAcks) else {
            return;
        };
        for (key, acknowledged) in acks {
            let mut parts = key.split('\0');
            let (Some(owner), Some(topic), Some(partition)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(topic), Ok(partition)) = (TopicName::new(topic), partition.parse::<u32>())
            else {
                continue;
            };
            if owner == holder {
                // A topic deleted since has no partition to hold.
                let _ = self.log.set_retention_hold(
                    &topic,
                    PartitionId(partition),
                    &holder,
                    Offset(acknowledged),
                    spec.hold_max_bytes,
                );
            }
        }
    }

    fn status(&self, link: &Running) -> LinkStatus {
        let phase = link.shared.phase.get();
        let now = Timestamp::now();
        let partitions = link
            .shared
            .mirrors
            .all()
            .iter()
            .map(|progress| {
                let mut status = progress.snapshot();
                if status.direction == Direction::Upstream {
                    status.behind_for = self.age_at(&status, now);
                }
                status
            })
            .collect();
        LinkStatus {
            spec: link.spec.clone(),
            edge: link.edge.clone(),
            state: phase.state,
            last_error: phase.last_error,
            connected_for: phase.connected_at.map(|at| at.elapsed()),
            partitions,
        }
    }

    /// How old the oldest record the hub does not have is (the edge holds it, so it can look).
    fn age_at(&self, status: &MirrorStatus, now: Timestamp) -> Duration {
        if status.lag_records == 0 {
            return Duration::ZERO;
        }
        let oldest = TopicName::new(status.topic.as_str())
            .ok()
            .and_then(|topic| {
                self.log
                    .partition(&topic, PartitionId(status.partition))
                    .ok()
            })
            .and_then(|partition| partition.read(status.acknowledged, 1).ok())
            .and_then(|chunk| BatchHeader::parse(&chunk.batches).ok())
            .map(|header| header.base_timestamp);
        oldest.map_or(status.behind_for, |oldest| {
            Duration::from_millis(now.0.saturating_sub(oldest.0).max(0) as u64)
        })
    }
}

fn holder(link: &str) -> String {
    format!("link:{link}")
}

fn files(spec: &LinkSpec) -> tls::TlsFiles<'_> {
    tls::TlsFiles {
        ca: &spec.ca,
        cert: &spec.cert,
        key: &spec.key,
    }
}

fn unknown(name: &str) -> LinkError {
    LinkError::UnknownLink {
        name: name.to_owned(),
    }
}

/// Keeps the link's connection up until `stop`.
async fn keep_up(
    spec: LinkSpec,
    edge: EdgeId,
    links: Links,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let endpoint = match tls::edge_endpoint(&files(&spec), links.idle_timeout, spec.congestion) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            shared.cannot_try(&error);
            return;
        }
    };
    let side = Side {
        log: links.log.clone(),
        outgoing: pattern(&spec.topics).ok().flatten(),
        outgoing_direction: Direction::Upstream,
        send: SendOptions {
            compression: spec.compression,
            limit: Arc::new(RateLimit::new(spec.max_bytes_per_sec)),
        },
        mirrors_of: MirrorOwner::Hub,
        mirrored_as: MirrorOwner::Edge(edge.to_string()),
        peer: "the hub".to_owned(),
        hold: Some(Hold {
            holder: holder(&spec.name),
            max_bytes: spec.hold_max_bytes,
            store: Some(links.meta.clone()),
        }),
        groups: GroupSync::Send(links.meta.clone()),
        mirrors: shared.mirrors.clone(),
        // The edge chose its hub: what the hub sends down, it takes.
        access: None,
    };
    let mut restarts = links.restarts.of(&spec.name).restarts();
    loop {
        shared.set(State::Starting);
        let attempt = connect(
            &endpoint,
            &spec,
            &edge,
            side.clone(),
            &shared,
            &mut restarts,
        );
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = stop.cancelled() => break,
        };
        let error = outcome.err().map_or_else(
            || "the hub ended the session".to_owned(),
            |error| describe(&error),
        );
        let Some(wait) = restarts.failed(Duration::ZERO) else {
            tracing::warn!(link = %spec.name, hub = %spec.hub, %error, "link to the hub lost; restart budget spent");
            shared.cannot_try(&format!(
                "{error} (gave up after {} attempts in a row: the link's restart budget)",
                restarts.failures()
            ));
            endpoint.close(0u32.into(), b"edge giving up the link");
            return;
        };
        tracing::warn!(link = %spec.name, hub = %spec.hub, %error, "link to the hub lost; retrying");
        shared.set(State::Restarting {
            attempt: restarts.failures(),
            next_try: SystemTime::now() + wait,
            failure: Failure {
                reason: error,
                recovery: Recovery::Restart,
            },
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
    }
    shared.set(State::Paused);
    endpoint.close(0u32.into(), b"edge stopping the link");
}

async fn connect(
    endpoint: &quinn::Endpoint,
    spec: &LinkSpec,
    edge: &EdgeId,
    side: Side,
    shared: &Shared,
    restarts: &mut Restarts,
) -> Result<(), SessionError> {
    let (host, _) = tls::split_host_port(&spec.hub)?;
    let addr = tls::resolve(&spec.hub).await?;
    let connection = endpoint.connect(addr, &host)?.await?;
    let (mut control_out, mut control_in) = connection.open_bi().await?;
    let hello = wire::ControlFrame {
        kind: Some(wire::control_frame::Kind::Hello(wire::Hello {
            edge_id: edge.to_string(),
            downstream_pattern: spec.downstream.clone(),
            compression: spec.compression.to_wire() as i32,
            max_bytes_per_sec: spec.max_bytes_per_sec,
            link_name: spec.name.clone(),
        })),
    };
    control_out.write_all(&frame::encode(&hello)).await?;
    protocol::answer_to_hello(
        frame::read::<wire::ControlFrame>(&mut control_in, CONTROL_LIMIT).await?,
    )?;
    shared.set(State::Running);
    restarts.succeeded();
    tracing::info!(link = %spec.name, hub = %spec.hub, %edge, "linked to the hub");
    session::run(side, connection, control_out, control_in).await
}
