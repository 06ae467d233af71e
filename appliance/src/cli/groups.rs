//! `appliance group`: list and describe consumer groups, and move their offsets.

use appliance_proto::v1 as pb;
use appliance_proto::v1::groups_client::GroupsClient;
use clap::{Args, Subcommand};
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::{print_json, print_table};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Members, committed offsets and lag of a group.
    Describe {
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a group's committed offsets (the group must have no members).
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_timestamp"])))]
pub struct ResetArgs {
    group: String,
    #[arg(long)]
    topic: String,
    /// Only these partitions (repeatable); all by default.
    #[arg(long)]
    partition: Vec<u32>,
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    #[arg(long)]
    to_offset: Option<u64>,
    /// The first record at or after this time, in ms since the epoch.
    #[arg(long)]
    to_timestamp: Option<i64>,
    #[arg(long)]
    json: bool,
}

fn group_state(value: i32) -> &'static str {
    match pb::GroupState::try_from(value) {
        Ok(pb::GroupState::Stable) => "stable",
        Ok(pb::GroupState::Rebalancing) => "rebalancing",
        _ => "empty",
    }
}

fn offsets_json(offsets: &[pb::PartitionOffset]) -> serde_json::Value {
    json!(
        offsets
            .iter()
            .map(|o| json!({
                "topic": o.topic,
                "partition": o.partition,
                "committed_offset": o.committed_offset,
                "high_watermark": o.high_watermark,
                "lag": o.lag,
            }))
            .collect::<Vec<_>>()
    )
}

fn print_offsets(offsets: &[pb::PartitionOffset]) {
    let rows: Vec<Vec<String>> = offsets
        .iter()
        .map(|o| {
            vec![
                o.topic.clone(),
                o.partition.to_string(),
                o.committed_offset.map_or("-".into(), |c| c.to_string()),
                o.high_watermark.to_string(),
                o.lag.to_string(),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"],
        &rows,
    );
}

pub async fn group(channel: ApiChannel, command: GroupCommand) -> Result<(), Failure> {
    let mut client = GroupsClient::new(channel);
    match command {
        GroupCommand::List { json } => {
            let groups = client
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .groups;
            if json {
                print_json(&json!(
                    groups
                        .iter()
                        .map(|g| json!({
                            "group": g.group,
                            "state": group_state(g.state),
                            "members": g.members,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group.clone(),
                            group_state(g.state).into(),
                            g.members.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["GROUP", "STATE", "MEMBERS"], &rows);
            }
        }
        GroupCommand::Describe { group, json } => {
            let description = client
                .describe_group(pb::DescribeGroupRequest { group })
                .await
                .map_err(status)?
                .into_inner();
            let assigned = |m: &pb::GroupMember| {
                m.assigned
                    .iter()
                    .map(|p| format!("{}/{}", p.topic, p.partition))
                    .collect::<Vec<_>>()
            };
            if json {
                print_json(&json!({
                    "group": description.group,
                    "state": group_state(description.state),
                    "generation": description.generation,
                    "members": description.members.iter().map(|m| json!({
                        "member_id": m.member_id,
                        "topics": m.topics,
                        "assigned": assigned(m),
                    })).collect::<Vec<_>>(),
                    "offsets": offsets_json(&description.offsets),
                }));
            } else {
                println!(
                    "group {} ({}, generation {})",
                    description.group,
                    group_state(description.state),
                    description.generation
                );
                for member in &description.members {
                    println!(
                        "  member {}: {}",
                        member.member_id,
                        assigned(member).join(" ")
                    );
                }
                print_offsets(&description.offsets);
            }
        }
        GroupCommand::Reset(args) => {
            let to = match (
                args.to_earliest,
                args.to_latest,
                args.to_offset,
                args.to_timestamp,
            ) {
                (true, _, _, _) => pb::reset_offsets_request::To::Earliest(true),
                (_, true, _, _) => pb::reset_offsets_request::To::Latest(true),
                (_, _, Some(offset), _) => pb::reset_offsets_request::To::Offset(offset),
                (_, _, _, Some(ms)) => pb::reset_offsets_request::To::TimestampMs(ms),
                _ => {
                    return Err(Failure::Usage(anyhow::anyhow!(
                        "say where to: --to-earliest, --to-latest, --to-offset or --to-timestamp"
                    )));
                }
            };
            let offsets = client
                .reset_offsets(pb::ResetOffsetsRequest {
                    group: args.group,
                    topic: args.topic,
                    partitions: args.partition,
                    to: Some(to),
                })
                .await
                .map_err(status)?
                .into_inner()
                .offsets;
            if args.json {
                print_json(&offsets_json(&offsets));
            } else {
                print_offsets(&offsets);
            }
        }
    }
    Ok(())
}
