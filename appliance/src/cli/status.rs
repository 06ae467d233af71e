//! `appliance status`: one screen of what matters on a gateway or a hub: version, role,
//! uptime, disk use against the budget, topics, links (an edge's) or edges (a hub's) with
//! their lag, and every component that failed, with why. A list the caller may not read is
//! said so in its place; the rest is still shown.

use std::time::Duration;

use appliance_proto::v1 as pb;
use appliance_proto::v1::connectors_client::ConnectorsClient;
use appliance_proto::v1::exports_client::ExportsClient;
use appliance_proto::v1::links_client::LinksClient;
use appliance_proto::v1::pipelines_client::PipelinesClient;
use appliance_proto::v1::system_client::SystemClient;
use appliance_proto::v1::topics_client::TopicsClient;
use clap::Args;
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::{print_json, print_table};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead.
    #[arg(long)]
    json: bool,
}

/// A failed component: what it is and why.
struct Failed {
    kind: &'static str,
    name: String,
    reason: String,
}

pub async fn status_screen(channel: ApiChannel, args: StatusArgs) -> Result<(), Failure> {
    let system = SystemClient::new(channel.clone())
        .get_system_status(pb::GetSystemStatusRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let topics = TopicsClient::new(channel.clone())
        .list_topics(pb::ListTopicsRequest {})
        .await
        .map(|r| r.into_inner().topics);
    let mut links = LinksClient::new(channel.clone());
    let links_list = links
        .list_links(pb::ListLinksRequest {})
        .await
        .map(|r| r.into_inner().links);
    let edges = match system.role.as_str() {
        "hub" => Some(
            links
                .list_edges(pb::ListEdgesRequest {})
                .await
                .map(|r| r.into_inner().edges),
        ),
        _ => None,
    };
    let failed = failed_components(&channel, links_list.as_deref().unwrap_or_default()).await;

    if args.json {
        print_json(&json!({
            "version": system.version,
            "role": system.role,
            "build": system.build,
            "uptime_ms": system.uptime_ms,
            "disk": {
                "used_bytes": system.disk_used_bytes,
                "budget_bytes": system.disk_budget_bytes,
                "budget_policy": system.disk_budget_policy,
                "evicted_segments": system.disk_evicted_segments,
                "free_bytes": system.disk_free_bytes,
            },
            "topics": topics.as_ref().map(|t| json!({
                "count": t.len(),
                "partitions": t.iter().map(|t| t.partitions.len()).sum::<usize>(),
                "bytes": topic_bytes(t),
            })).unwrap_or_else(|s| json!({"error": s.message()})),
            "links": links_list.as_ref().map(|l| l.iter().map(|link| json!({
                "name": link.name,
                "state": super::links::state_name(link.state),
                "lag_records": link.partitions.iter().map(|p| p.lag_records).sum::<u64>(),
            })).collect::<Vec<_>>()).map(Into::into).unwrap_or_else(|s| json!({"error": s.message()})),
            "edges": edges.as_ref().map(|e| match e {
                Ok(edges) => json!(edges.iter().map(|edge| json!({
                    "edge": edge.edge_id,
                    "connected": edge.connected,
                    "lag_records": edge.lag_records,
                })).collect::<Vec<_>>()),
                Err(s) => json!({"error": s.message()}),
            }),
            "failed": failed.iter().map(|f| json!({
                "kind": f.kind, "name": f.name, "reason": f.reason,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }

    println!(
        "appliance {}  {} ({} build)  up {}",
        system.version,
        system.role,
        system.build,
        humantime::format_duration(Duration::from_secs(system.uptime_ms / 1000))
    );
    let budget = match system.disk_budget_bytes {
        0 => "used, no budget (log.max-disk-bytes)".to_owned(),
        max => format!(
            "used of a {} budget ({}%, at it: {}{})",
            bytes_text(max),
            system.disk_used_bytes.saturating_mul(100) / max,
            system.disk_budget_policy,
            match system.disk_evicted_segments {
                0 => String::new(),
                n => format!(", {n} segments deleted"),
            }
        ),
    };
    println!(
        "disk     {} {budget}, {} free on its file system",
        bytes_text(system.disk_used_bytes),
        bytes_text(system.disk_free_bytes)
    );
    match &topics {
        Ok(topics) => println!(
            "topics   {} ({} partitions, {})",
            topics.len(),
            topics.iter().map(|t| t.partitions.len()).sum::<usize>(),
            bytes_text(topic_bytes(topics))
        ),
        Err(refused) => println!("topics   {}", refused.message()),
    }
    match &links_list {
        Ok(links) if links.is_empty() => println!("links    none"),
        Ok(links) => {
            println!("links");
            let rows: Vec<Vec<String>> = links
                .iter()
                .map(|link| {
                    vec![
                        link.name.clone(),
                        super::links::state_name(link.state).to_owned(),
                        link.partitions
                            .iter()
                            .map(|p| p.lag_records)
                            .sum::<u64>()
                            .to_string(),
                        format!(
                            "{:.1}",
                            link.partitions
                                .iter()
                                .map(|p| p.lag_seconds)
                                .fold(0.0, f64::max)
                        ),
                    ]
                })
                .collect();
            print_table(&["LINK", "STATE", "LAG", "LAG SECONDS"], &rows);
        }
        Err(refused) => println!("links    {}", refused.message()),
    }
    match &edges {
        Some(Ok(edges)) if edges.is_empty() => println!("edges    none"),
        Some(Ok(edges)) => {
            println!("edges");
            let rows: Vec<Vec<String>> = edges
                .iter()
                .map(|edge| {
                    vec![
                        edge.edge_id.clone(),
                        if edge.connected {
                            "connected"
                        } else {
                            "disconnected"
                        }
                        .to_owned(),
                        edge.lag_records.to_string(),
                    ]
                })
                .collect();
            print_table(&["EDGE", "STATE", "LAG"], &rows);
        }
        Some(Err(refused)) => println!("edges    {}", refused.message()),
        None => {}
    }
    if failed.is_empty() {
        println!("failed   none");
    } else {
        println!("failed");
        let rows: Vec<Vec<String>> = failed
            .into_iter()
            .map(|f| vec![f.kind.to_owned(), f.name, f.reason])
            .collect();
        print_table(&["KIND", "NAME", "WHY"], &rows);
    }
    Ok(())
}

fn topic_bytes(topics: &[pb::Topic]) -> u64 {
    topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.size_bytes)
        .sum()
}

/// Pipelines, connectors, exports and links that failed; a list the caller may not read is
/// one entry saying so.
async fn failed_components(channel: &ApiChannel, links: &[pb::Link]) -> Vec<Failed> {
    let mut failed = Vec::new();
    let refused = |kind: &'static str, s: tonic::Status| Failed {
        kind,
        name: "-".to_owned(),
        reason: format!("cannot list: {}", s.message()),
    };
    match PipelinesClient::new(channel.clone())
        .list_pipelines(pb::ListPipelinesRequest {})
        .await
    {
        Ok(answer) => {
            for pipeline in answer.into_inner().pipelines {
                for partition in &pipeline.partitions {
                    if partition.state == pb::PipelineState::Failed as i32 {
                        failed.push(Failed {
                            kind: "pipeline",
                            name: format!("{} partition {}", pipeline.name, partition.partition),
                            reason: partition.failure.clone(),
                        });
                    }
                }
            }
        }
        Err(s) => failed.push(refused("pipeline", s)),
    }
    match ConnectorsClient::new(channel.clone())
        .list_connectors(pb::ListConnectorsRequest {})
        .await
    {
        Ok(answer) => {
            for connector in answer.into_inner().connectors {
                for task in &connector.tasks {
                    if task.state == pb::ConnectorState::Failed as i32 {
                        failed.push(Failed {
                            kind: "connector",
                            name: format!("{} task {}", connector.name, task.task),
                            reason: task.failure.clone(),
                        });
                    }
                }
            }
        }
        Err(s) => failed.push(refused("connector", s)),
    }
    match ExportsClient::new(channel.clone())
        .list_exports(pb::ListExportsRequest {})
        .await
    {
        Ok(answer) => {
            for export in answer.into_inner().exports {
                if export.state == pb::ExportState::Failed as i32 {
                    failed.push(Failed {
                        kind: "export",
                        name: export.name,
                        reason: export.failure,
                    });
                }
            }
        }
        // A lean edge build serves no exports.
        Err(s) if s.code() == tonic::Code::Unimplemented => {}
        Err(s) => failed.push(refused("export", s)),
    }
    for link in links {
        if link.state == pb::LinkState::Failed as i32 {
            failed.push(Failed {
                kind: "link",
                name: link.name.clone(),
                reason: link.last_error.clone(),
            });
        }
    }
    failed
}

/// Bytes in the largest binary unit that keeps the number at least 1.
fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}
