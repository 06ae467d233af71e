//! `appliance link ...`: manage cluster links of a running appliance over gRPC (an edge's
//! links to hubs; a hub's edges and mirror promotion).

use std::path::PathBuf;
use std::time::Duration;

use appliance_proto::v1 as pb;
use appliance_proto::v1::links_client::LinksClient;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::{print_json, print_table, seconds_since, seconds_until, time_text};

#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Link this edge to a hub: topics matching --topics appear there as `<edge-id>.<topic>`,
    /// at the same offsets; hub topics matching --downstream appear here as `hub.<topic>`.
    Create {
        name: String,
        /// HOST:PORT of the hub's link endpoint (UDP).
        #[arg(long)]
        hub: String,
        /// Edge topics to mirror: a regular expression over whole topic names.
        #[arg(long)]
        topics: String,
        /// Hub topics to mirror to this edge.
        #[arg(long)]
        downstream: Option<String>,
        /// The link CA (ca.pem of `appliance certs init`).
        #[arg(long)]
        ca: PathBuf,
        /// This edge's certificate and key (`appliance certs issue EDGE_ID`); the edge id is
        /// the one the certificate names.
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// How batches that are not compressed already travel.
        #[arg(long, value_enum, default_value = "zstd")]
        compression: CompressionArg,
        /// Cap on the bytes the link sends per second.
        #[arg(long)]
        max_bytes_per_sec: Option<u64>,
        /// Congestion control of what this edge sends: bbr keeps its rate through random loss
        /// (cellular, satellite); cubic is faster on a clean, fast network.
        #[arg(long, value_enum, default_value = "bbr")]
        congestion: CongestionArg,
        /// Retention keeps what the hub has not acknowledged while a partition holds at most
        /// this many bytes [default: 1 GiB].
        #[arg(long)]
        hold_max_bytes: Option<u64>,
    },
    /// List links with their state and lag.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a link (or every link) with each mirrored partition.
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Close a link's connection; it stays paused across restarts.
    Pause { name: String },
    /// Connect a paused link again.
    Resume { name: String },
    /// Stop and forget a link; mirrors stay where they are.
    Delete { name: String },
    /// On a hub: the edges that connected since it started, with their lag.
    Edges {
        #[arg(long)]
        json: bool,
    },
    /// On the side that holds a mirror: make it a writable topic of its own (its origin is
    /// gone for good). Producers continue at its high watermark; its link stops writing it.
    Promote { topic: String },
    /// On a hub: refuse every certificate of EDGE issued until now and close its session.
    /// A certificate issued for it afterwards (`certs issue`) links again.
    Revoke { edge: String },
    /// On a hub: one-time tokens with which edges enroll.
    JoinToken {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// On an edge: get a link certificate from the hub with a join token. The key is made
    /// here and never leaves; writes EDGE.pem, EDGE.key and ca.pem into --dir. Needs no
    /// running appliance.
    Enroll(EnrollArgs),
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// A token for EDGE; printed once (the hub keeps only its hash).
    Create {
        edge: String,
        /// How long it may be used, such as 1h or 30m (at most 7 days).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        expires: Duration,
    },
}

#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// HOST:PORT of the hub's link endpoint (UDP).
    #[arg(long)]
    hub: String,
    /// The token `link join-token create` printed on the hub (`--token` is the API's).
    #[arg(long, env = "APPLIANCE_JOIN_TOKEN", hide_env_values = true)]
    join_token: String,
    /// Where the certificate, its key and the CA are written.
    #[arg(long, default_value = "link")]
    dir: PathBuf,
}

/// `appliance link enroll`: talks to the hub's link endpoint, not to an appliance's API.
pub fn enroll(args: EnrollArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let enrolled = runtime
        .block_on(crate::link::enroll::enroll_with(
            &args.hub,
            &args.join_token,
            &args.dir,
        ))
        .map_err(|e| Failure::Runtime(e.into()))?;
    println!(
        "enrolled as edge {}; link with:\n  appliance link create to-hub --hub {} --topics TOPICS \\\n    --ca {} --cert {} --key {}",
        enrolled.edge,
        args.hub,
        enrolled.ca.display(),
        enrolled.cert.display(),
        enrolled.key.display()
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CongestionArg {
    Bbr,
    Cubic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    Zstd,
    Lz4,
    None,
}

pub async fn link(channel: ApiChannel, command: LinkCommand) -> Result<(), Failure> {
    let mut client = LinksClient::new(channel);
    match command {
        LinkCommand::Create {
            name,
            hub,
            topics,
            downstream,
            ca,
            cert,
            key,
            compression,
            max_bytes_per_sec,
            congestion,
            hold_max_bytes,
        } => {
            let absolute = |path: PathBuf| {
                std::path::absolute(&path)
                    .unwrap_or(path)
                    .display()
                    .to_string()
            };
            let link = client
                .create_link(pb::CreateLinkRequest {
                    name,
                    hub,
                    topics,
                    downstream: downstream.unwrap_or_default(),
                    // The daemon may run elsewhere: paths are the operator's, made absolute.
                    ca: absolute(ca),
                    cert: absolute(cert),
                    key: absolute(key),
                    compression: match compression {
                        CompressionArg::Zstd => pb::WireCompression::Zstd,
                        CompressionArg::Lz4 => pb::WireCompression::Lz4,
                        CompressionArg::None => pb::WireCompression::None,
                    } as i32,
                    max_bytes_per_sec: max_bytes_per_sec.unwrap_or(0),
                    hold_max_bytes: hold_max_bytes.unwrap_or(0),
                    congestion: match congestion {
                        CongestionArg::Bbr => pb::Congestion::Bbr,
                        CongestionArg::Cubic => pb::Congestion::Cubic,
                    } as i32,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "created link {} as edge {} to hub {} (topics {:?})",
                link.name, link.edge_id, link.hub, link.topics
            );
        }
        LinkCommand::List { json } => {
            let links = list(&mut client).await?;
            if json {
                print_json(&json!(links.iter().map(link_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = links
                    .iter()
                    .map(|l| {
                        vec![
                            l.name.clone(),
                            l.edge_id.clone(),
                            l.hub.clone(),
                            state_name(l.state).to_owned(),
                            l.partitions.len().to_string(),
                            lag(&l.partitions).to_string(),
                            l.last_error.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "LINK",
                        "EDGE",
                        "HUB",
                        "STATE",
                        "PARTITIONS",
                        "LAG",
                        "LAST ERROR",
                    ],
                    &rows,
                );
            }
        }
        LinkCommand::Status { name, json } => {
            let links = match name {
                Some(name) => vec![
                    client
                        .get_link(pb::GetLinkRequest { name })
                        .await
                        .map_err(status)?
                        .into_inner(),
                ],
                None => list(&mut client).await?,
            };
            if json {
                let links: Vec<_> = links.iter().map(link_json).collect();
                print_json(&if links.len() == 1 {
                    links[0].clone()
                } else {
                    json!(links)
                });
            } else {
                for link in &links {
                    print_link(link);
                }
            }
        }
        LinkCommand::Pause { name } => {
            let link = client
                .pause_link(pb::PauseLinkRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("paused link {}", link.name);
        }
        LinkCommand::Resume { name } => {
            let link = client
                .resume_link(pb::ResumeLinkRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("resumed link {}", link.name);
        }
        LinkCommand::Delete { name } => {
            client
                .delete_link(pb::DeleteLinkRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted link {name}");
        }
        LinkCommand::Edges { json } => {
            let edges = client
                .list_edges(pb::ListEdgesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .edges;
            if json {
                print_json(&json!(edges.iter().map(edge_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = edges
                    .iter()
                    .map(|e| {
                        vec![
                            e.edge_id.clone(),
                            if e.connected { "connected" } else { "gone" }.to_owned(),
                            e.address.clone(),
                            format!("{} s ago", seconds_since(e.last_seen_ms)),
                            e.partitions.len().to_string(),
                            e.lag_records.to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &["EDGE", "STATE", "ADDRESS", "LAST SEEN", "PARTITIONS", "LAG"],
                    &rows,
                );
            }
        }
        LinkCommand::Promote { topic } => {
            client
                .promote_topic(pb::PromoteTopicRequest {
                    topic: topic.clone(),
                })
                .await
                .map_err(status)?;
            println!("promoted {topic}: it is a writable topic of this appliance now");
        }
        LinkCommand::JoinToken {
            command: JoinTokenCommand::Create { edge, expires },
        } => {
            let created = client
                .create_join_token(pb::CreateJoinTokenRequest {
                    edge: edge.clone(),
                    lifetime_ms: expires.as_millis() as u64,
                })
                .await
                .map_err(status)?
                .into_inner();
            eprintln!(
                "join token {} for edge {edge}, usable once until {}; it is shown only now:",
                created.id,
                time_text(created.expires_unix_ms)
            );
            println!("{}", created.token);
        }
        LinkCommand::Enroll(_) => {
            return Err(Failure::Usage(anyhow::anyhow!(
                "link enroll runs on its own, without --server"
            )));
        }
        LinkCommand::Revoke { edge } => {
            client
                .revoke_edge(pb::RevokeEdgeRequest { edge: edge.clone() })
                .await
                .map_err(status)?;
            println!(
                "revoked edge {edge}: its session is closed and its certificates issued until now are refused"
            );
        }
    }
    Ok(())
}

async fn list(client: &mut LinksClient<ApiChannel>) -> Result<Vec<pb::Link>, Failure> {
    Ok(client
        .list_links(pb::ListLinksRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .links)
}

fn lag(partitions: &[pb::MirrorPartition]) -> u64 {
    partitions.iter().map(|p| p.lag_records).sum()
}

pub(super) fn state_name(state: i32) -> &'static str {
    match pb::LinkState::try_from(state) {
        Ok(pb::LinkState::Connecting) => "connecting",
        Ok(pb::LinkState::Connected) => "connected",
        Ok(pb::LinkState::Retrying) => "retrying",
        Ok(pb::LinkState::Paused) => "paused",
        Ok(pb::LinkState::Failed) => "failed",
        _ => "unknown",
    }
}

fn compression_name(compression: i32) -> &'static str {
    match pb::WireCompression::try_from(compression) {
        Ok(pb::WireCompression::None) => "none",
        Ok(pb::WireCompression::Lz4) => "lz4",
        _ => "zstd",
    }
}

fn congestion_name(congestion: i32) -> &'static str {
    match pb::Congestion::try_from(congestion) {
        Ok(pb::Congestion::Cubic) => "cubic",
        _ => "bbr",
    }
}

fn direction_name(direction: i32) -> &'static str {
    match pb::MirrorDirection::try_from(direction) {
        Ok(pb::MirrorDirection::Downstream) => "down",
        _ => "up",
    }
}

fn print_link(link: &pb::Link) {
    println!(
        "link {} (edge {} -> hub {})",
        link.name, link.edge_id, link.hub
    );
    if link.next_try_unix_ms > 0 {
        println!(
            "  state: {} (next attempt in {} s)",
            state_name(link.state),
            seconds_until(link.next_try_unix_ms)
        );
    } else {
        println!("  state: {}", state_name(link.state));
    }
    if link.connected_seconds > 0 {
        println!("  connected for: {} s", link.connected_seconds);
    }
    if !link.last_error.is_empty() {
        println!("  last error: {}", link.last_error);
    }
    println!(
        "  topics: {:?}{}",
        link.topics,
        if link.downstream.is_empty() {
            String::new()
        } else {
            format!(", downstream: {:?}", link.downstream)
        }
    );
    println!(
        "  compression: {}, congestion: {}, cap: {}, retention hold up to {} bytes per partition",
        compression_name(link.compression),
        congestion_name(link.congestion),
        if link.max_bytes_per_sec == 0 {
            "none".to_owned()
        } else {
            format!("{} bytes/s", link.max_bytes_per_sec)
        },
        link.hold_max_bytes
    );
    print_partitions(&link.partitions);
}

fn print_partitions(partitions: &[pb::MirrorPartition]) {
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            vec![
                direction_name(p.direction).to_owned(),
                p.topic.clone(),
                p.mirror.clone(),
                p.partition.to_string(),
                p.origin_high_watermark.to_string(),
                p.mirror_acknowledged.to_string(),
                p.lag_records.to_string(),
                format!("{:.1}", p.lag_seconds),
                format!("{:.0}", p.bytes_per_second),
                p.gap_records.to_string(),
                if p.last_error.is_empty() {
                    p.state.clone()
                } else {
                    format!("{}: {}", p.state, p.last_error)
                },
            ]
        })
        .collect();
    print_table(
        &[
            "DIR",
            "TOPIC",
            "MIRROR",
            "PARTITION",
            "ORIGIN END",
            "MIRRORED",
            "LAG",
            "LAG S",
            "BYTES/S",
            "GAP",
            "STATE",
        ],
        &rows,
    );
}

fn partition_json(p: &pb::MirrorPartition) -> serde_json::Value {
    json!({
        "direction": direction_name(p.direction),
        "topic": p.topic,
        "mirror": p.mirror,
        "partition": p.partition,
        "origin_high_watermark": p.origin_high_watermark,
        "mirror_acknowledged": p.mirror_acknowledged,
        "lag_records": p.lag_records,
        "lag_seconds": p.lag_seconds,
        "bytes_per_second": p.bytes_per_second,
        "gap_records": p.gap_records,
        "state": p.state,
        "last_error": p.last_error,
    })
}

fn link_json(link: &pb::Link) -> serde_json::Value {
    json!({
        "name": link.name,
        "edge_id": link.edge_id,
        "hub": link.hub,
        "topics": link.topics,
        "downstream": link.downstream,
        "compression": compression_name(link.compression),
        "congestion": congestion_name(link.congestion),
        "max_bytes_per_sec": link.max_bytes_per_sec,
        "hold_max_bytes": link.hold_max_bytes,
        "state": state_name(link.state),
        "next_try_unix_ms": link.next_try_unix_ms,
        "last_error": link.last_error,
        "connected_seconds": link.connected_seconds,
        "lag_records": lag(&link.partitions),
        "partitions": link.partitions.iter().map(partition_json).collect::<Vec<_>>(),
    })
}

fn edge_json(edge: &pb::Edge) -> serde_json::Value {
    json!({
        "edge_id": edge.edge_id,
        "connected": edge.connected,
        "address": edge.address,
        "last_seen_ms": edge.last_seen_ms,
        "lag_records": edge.lag_records,
        "partitions": edge.partitions.iter().map(partition_json).collect::<Vec<_>>(),
    })
}

/// On a hub: lets `edge` fill its mirrors (`Edge:EDGE` may write `EDGE.*`), for the demo and
/// the benches, which make their edges' certificates themselves.
pub(super) async fn allow_edge_mirrors(hub: ApiChannel, edge: &str) -> anyhow::Result<()> {
    appliance_proto::v1::security_client::SecurityClient::new(hub)
        .create_acl(pb::Acl {
            principal: format!("Edge:{edge}"),
            resource_type: pb::ResourceType::Topic.into(),
            pattern_type: pb::PatternType::Prefixed.into(),
            pattern: format!("{edge}."),
            operation: pb::AclOperation::Write.into(),
            permission: pb::AclPermission::Allow.into(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("allowing {edge} on the hub: {}", status.message()))?;
    Ok(())
}
