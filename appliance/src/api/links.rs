//! The `Links` service: an edge's links to hubs, a hub's edges, promotion of mirrors.

use std::path::PathBuf;

use appliance_proto::v1 as pb;
use appliance_proto::v1::links_server::Links as LinksApi;
use tonic::{Request, Response, Status};

use super::access::Calls;
use super::convert::{state_fields, topic_name, unix_ms};
use crate::link::edge::{LinkSpec, LinkStatus, Links};
use crate::link::hub::{EdgeStatus, Hub};
use crate::link::progress::{Direction, MirrorStatus};
use crate::link::tls::Congestion;
use crate::link::transfer::WireCompression;
use crate::link::{EdgeId, LinkError};
use crate::log::Log;
use crate::security::{CLUSTER, Rpc};

#[derive(Debug)]
pub struct LinksService {
    pub links: Links,
    pub hub: Option<Hub>,
    pub log: Log,
    pub calls: Calls,
}

fn compression_message(compression: WireCompression) -> pb::WireCompression {
    match compression {
        WireCompression::None => pb::WireCompression::None,
        WireCompression::Zstd => pb::WireCompression::Zstd,
        WireCompression::Lz4 => pb::WireCompression::Lz4,
    }
}

fn mirror_message(status: MirrorStatus) -> pb::MirrorPartition {
    let state = status.state();
    let problem = status.problem();
    pb::MirrorPartition {
        direction: match status.direction {
            Direction::Upstream => pb::MirrorDirection::Upstream,
            Direction::Downstream => pb::MirrorDirection::Downstream,
        } as i32,
        topic: status.topic,
        mirror: status.mirror,
        partition: status.partition,
        origin_high_watermark: status.origin_high_watermark.0,
        mirror_acknowledged: status.acknowledged.0,
        lag_records: status.lag_records,
        lag_seconds: status.behind_for.as_secs_f64(),
        bytes_per_second: status.bytes_per_second,
        bytes: status.bytes,
        gap_records: status.gap_records,
        state: state.to_owned(),
        last_error: problem.unwrap_or_default(),
    }
}

fn link_message(status: LinkStatus) -> pb::Link {
    let spec = status.spec;
    let state = state_fields(
        status.state,
        [
            pb::LinkState::Connecting,
            pb::LinkState::Connected,
            pb::LinkState::Paused,
            pb::LinkState::Retrying,
            pb::LinkState::Failed,
        ],
    );
    pb::Link {
        name: spec.name,
        edge_id: status.edge.map(|e| e.to_string()).unwrap_or_default(),
        hub: spec.hub,
        topics: spec.topics,
        downstream: spec.downstream,
        compression: compression_message(spec.compression) as i32,
        max_bytes_per_sec: spec.max_bytes_per_sec,
        hold_max_bytes: spec.hold_max_bytes,
        state: state.state as i32,
        next_try_unix_ms: state.next_try_unix_ms,
        last_error: status.last_error.unwrap_or_default(),
        connected_seconds: status.connected_for.map_or(0, |d| d.as_secs()),
        partitions: status.partitions.into_iter().map(mirror_message).collect(),
        congestion: match spec.congestion {
            Congestion::Bbr => pb::Congestion::Bbr,
            Congestion::Cubic => pb::Congestion::Cubic,
        } as i32,
        ca: spec.ca.display().to_string(),
        cert: spec.cert.display().to_string(),
        key: spec.key.display().to_string(),
    }
}

fn edge_message(status: EdgeStatus) -> pb::Edge {
    pb::Edge {
        edge_id: status.edge.to_string(),
        connected: status.connected,
        address: status.address.to_string(),
        last_seen_ms: status.last_seen.0,
        lag_records: status.lag_records,
        partitions: status.partitions.into_iter().map(mirror_message).collect(),
    }
}

fn link_spec(request: pb::CreateLinkRequest) -> Result<LinkSpec, Status> {
    let compression = match pb::WireCompression::try_from(request.compression) {
        Ok(pb::WireCompression::Unspecified | pb::WireCompression::Zstd) => WireCompression::Zstd,
        Ok(pb::WireCompression::None) => WireCompression::None,
        Ok(pb::WireCompression::Lz4) => WireCompression::Lz4,
        Err(_) => {
            return Err(super::invalid(
                "compression",
                "use WIRE_COMPRESSION_ZSTD, _LZ4 or _NONE",
            ));
        }
    };
    for (field, value) in [
        ("ca", &request.ca),
        ("cert", &request.cert),
        ("key", &request.key),
    ] {
        if value.is_empty() {
            return Err(super::invalid(
                field,
                "name the PEM file (appliance certs init / certs issue make them)",
            ));
        }
    }
    let congestion = match pb::Congestion::try_from(request.congestion) {
        Ok(pb::Congestion::Unspecified | pb::Congestion::Bbr) => Congestion::Bbr,
        Ok(pb::Congestion::Cubic) => Congestion::Cubic,
        Err(_) => {
            return Err(super::invalid(
                "congestion",
                "use CONGESTION_BBR or CONGESTION_CUBIC",
            ));
        }
    };
    Ok(LinkSpec {
        name: request.name,
        hub: request.hub,
        topics: request.topics,
        downstream: request.downstream,
        ca: PathBuf::from(request.ca),
        cert: PathBuf::from(request.cert),
        key: PathBuf::from(request.key),
        compression,
        max_bytes_per_sec: request.max_bytes_per_sec,
        congestion,
        hold_max_bytes: request.hold_max_bytes,
        paused: false,
    })
}

#[tonic::async_trait]
impl LinksApi for LinksService {
    async fn create_link(
        &self,
        request: Request<pb::CreateLinkRequest>,
    ) -> Result<Response<pb::Link>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreateLink)?;
        let spec = link_spec(request)?;
        call.authorize(&spec.name)?;
        let status = self.links.create(spec).await?;
        Ok(Response::new(link_message(status)))
    }

    async fn get_link(
        &self,
        request: Request<pb::GetLinkRequest>,
    ) -> Result<Response<pb::Link>, Status> {
        let (call, request) = self.calls.start(request, Rpc::GetLink)?;
        call.authorize(&request.name)?;
        let status = self.links.get(&request.name).await?;
        Ok(Response::new(link_message(status)))
    }

    async fn list_links(
        &self,
        request: Request<pb::ListLinksRequest>,
    ) -> Result<Response<pb::ListLinksResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListLinks)?;
        Ok(Response::new(pb::ListLinksResponse {
            links: self
                .links
                .list()
                .await
                .into_iter()
                .filter(|link| call.may_describe(&link.spec.name))
                .map(link_message)
                .collect(),
        }))
    }

    async fn pause_link(
        &self,
        request: Request<pb::PauseLinkRequest>,
    ) -> Result<Response<pb::Link>, Status> {
        let (call, request) = self.calls.start(request, Rpc::PauseLink)?;
        call.authorize(&request.name)?;
        let status = self.links.pause(&request.name).await?;
        Ok(Response::new(link_message(status)))
    }

    async fn resume_link(
        &self,
        request: Request<pb::ResumeLinkRequest>,
    ) -> Result<Response<pb::Link>, Status> {
        let (call, request) = self.calls.start(request, Rpc::ResumeLink)?;
        call.authorize(&request.name)?;
        let status = self.links.resume(&request.name).await?;
        Ok(Response::new(link_message(status)))
    }

    async fn delete_link(
        &self,
        request: Request<pb::DeleteLinkRequest>,
    ) -> Result<Response<pb::DeleteLinkResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeleteLink)?;
        call.authorize(&request.name)?;
        self.links.delete(&request.name).await?;
        Ok(Response::new(pb::DeleteLinkResponse {}))
    }

    async fn list_edges(
        &self,
        request: Request<pb::ListEdgesRequest>,
    ) -> Result<Response<pb::ListEdgesResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListEdges)?;
        call.authorize(CLUSTER)?;
        let hub = self.hub.as_ref().ok_or(LinkError::NotHub)?;
        Ok(Response::new(pb::ListEdgesResponse {
            edges: hub.edges().into_iter().map(edge_message).collect(),
        }))
    }

    async fn revoke_edge(
        &self,
        request: Request<pb::RevokeEdgeRequest>,
    ) -> Result<Response<pb::RevokeEdgeResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::RevokeEdge)?;
        call.authorize(CLUSTER)?;
        let hub = self.hub.as_ref().ok_or(LinkError::NotHub)?;
        let edge = EdgeId::new(&request.edge)?;
        let revoked = hub.revoke(&edge).await?;
        call.note_change(format_args!("certificates of edge {edge}"));
        Ok(Response::new(pb::RevokeEdgeResponse {
            revoked_unix_ms: unix_ms(revoked),
        }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreatedJoinToken>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreateJoinToken)?;
        call.authorize(CLUSTER)?;
        let hub = self.hub.as_ref().ok_or(LinkError::NotHub)?;
        let edge = EdgeId::new(&request.edge)?;
        let lifetime = std::time::Duration::from_millis(request.lifetime_ms);
        let (token, expires) = hub.create_join_token(&edge, lifetime).await?;
        call.note_change(format_args!("join token {} for edge {edge}", token.id()));
        Ok(Response::new(pb::CreatedJoinToken {
            id: token.id().to_owned(),
            token: token.to_string(),
            expires_unix_ms: unix_ms(expires),
        }))
    }

    async fn promote_topic(
        &self,
        request: Request<pb::PromoteTopicRequest>,
    ) -> Result<Response<pb::PromoteTopicResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::PromoteTopic)?;
        let topic = topic_name("topic", &request.topic)?;
        call.authorize(topic.as_str())?;
        self.log.promote(&topic).await?;
        tracing::info!(%topic, "mirror promoted to a topic of its own");
        Ok(Response::new(pb::PromoteTopicResponse {}))
    }
}
