//! `appliance connector ...`: manage connectors of a running appliance over gRPC.

use appliance_proto::v1 as pb;
use appliance_proto::v1::connectors_client::ConnectorsClient;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::manage::{
    ErrorsArg, errors_name, failure_text, parse_transforms, transform_line, transforms_json,
    worst_state,
};
use super::output::{print_json, print_table};

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Create and start a connector: a source plugin writing TOPIC, or a sink plugin reading it.
    Create {
        name: String,
        /// The source or sink plugin (`appliance plugin list`).
        #[arg(long)]
        plugin: String,
        /// The topic a source writes (created with the defaults when missing) or a sink reads.
        #[arg(long)]
        topic: String,
        /// A plugin setting, or a grant: wasi.dir=DIR, wasi.dir-rw=DIR, wasi.net=HOST:PORT,
        /// wasi.env.NAME=VALUE (nothing is granted by default); or max-memory-mb, timeout-ms.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// At most this many tasks.
        #[arg(long, default_value_t = 1)]
        tasks: u32,
        /// A transform, in order: PLUGIN or PLUGIN:key=value,key=value.
        #[arg(long = "transform", value_name = "PLUGIN[:key=value,...]")]
        transforms: Vec<String>,
        /// What to do with a record a transform or the sink rejects.
        #[arg(long, value_enum, default_value = "fail")]
        errors: ErrorsArg,
        /// Dead-letter topic, with --errors dlq.
        #[arg(long)]
        dlq_topic: Option<String>,
    },
    /// List connectors with their state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a connector's configuration and the state of each task.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a connector's tasks (it stays paused across restarts).
    Pause { name: String },
    /// Start a paused connector's tasks again.
    Resume { name: String },
    /// Stop and start a connector's tasks: failed tasks get a fresh round of restarts.
    Restart { name: String },
    /// Stop and forget a connector with its positions and offsets.
    Delete { name: String },
    /// Show each source task's position, or a sink's committed offsets.
    Offsets {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a paused connector: a source starts anew; a sink to the start or end of its topic.
    ResetOffsets {
        name: String,
        #[arg(long, value_enum)]
        to: ResetArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ResetArg {
    Earliest,
    Latest,
}

pub async fn connector(channel: ApiChannel, command: ConnectorCommand) -> Result<(), Failure> {
    let mut client = ConnectorsClient::new(channel);
    match command {
        ConnectorCommand::Create {
            name,
            plugin,
            topic,
            config,
            tasks,
            transforms,
            errors,
            dlq_topic,
        } => {
            let config = config_entries("--config", &config)?;
            let connector = client
                .create_connector(pb::CreateConnectorRequest {
                    name,
                    plugin,
                    topic,
                    config,
                    tasks,
                    transforms: parse_transforms(&transforms)?,
                    errors: errors.policy() as i32,
                    dlq_topic: dlq_topic.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "created {} connector {} ({} {} {}, up to {} task(s))",
                kind_name(connector.kind),
                connector.name,
                connector.plugin,
                if kind_name(connector.kind) == "sink" {
                    "<-"
                } else {
                    "->"
                },
                connector.topic,
                connector.tasks_max
            );
        }
        ConnectorCommand::List { json } => {
            let connectors = client
                .list_connectors(pb::ListConnectorsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .connectors;
            if json {
                print_json(&json!(
                    connectors.iter().map(connector_json).collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = connectors
                    .iter()
                    .map(|c| {
                        vec![
                            c.name.clone(),
                            kind_name(c.kind).to_owned(),
                            c.plugin.clone(),
                            c.topic.clone(),
                            summary_state(c).to_owned(),
                            c.tasks.len().to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &["CONNECTOR", "KIND", "PLUGIN", "TOPIC", "STATE", "TASKS"],
                    &rows,
                );
            }
        }
        ConnectorCommand::Status { name, json } => {
            let connector = client
                .get_connector(pb::GetConnectorRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&connector_json(&connector));
            } else {
                print_status(&connector);
            }
        }
        ConnectorCommand::Pause { name } => {
            let c = client
                .pause_connector(pb::PauseConnectorRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("paused connector {}", c.name);
        }
        ConnectorCommand::Resume { name } => {
            let c = client
                .resume_connector(pb::ResumeConnectorRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("resumed connector {}", c.name);
        }
        ConnectorCommand::Restart { name } => {
            let c = client
                .restart_connector(pb::RestartConnectorRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("restarted connector {}", c.name);
        }
        ConnectorCommand::Delete { name } => {
            client
                .delete_connector(pb::DeleteConnectorRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted connector {name}");
        }
        ConnectorCommand::Offsets { name, json } => {
            let offsets = client
                .get_connector_offsets(pb::GetConnectorOffsetsRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            print_offsets(&offsets, json);
        }
        ConnectorCommand::ResetOffsets { name, to } => {
            let to = match to {
                ResetArg::Earliest => pb::ResetTo::Earliest,
                ResetArg::Latest => pb::ResetTo::Latest,
            };
            let offsets = client
                .reset_connector_offsets(pb::ResetConnectorOffsetsRequest {
                    name,
                    to: to as i32,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_offsets(&offsets, false);
        }
    }
    Ok(())
}

fn kind_name(kind: i32) -> &'static str {
    match pb::ConnectorKind::try_from(kind) {
        Ok(pb::ConnectorKind::Source) => "source",
        Ok(pb::ConnectorKind::Sink) => "sink",
        _ => "unknown",
    }
}

fn state_name(state: i32) -> &'static str {
    match pb::ConnectorState::try_from(state) {
        Ok(pb::ConnectorState::Starting) => "starting",
        Ok(pb::ConnectorState::Running) => "running",
        Ok(pb::ConnectorState::Paused) => "paused",
        Ok(pb::ConnectorState::Failed) => "failed",
        _ => "unknown",
    }
}

/// The connector's own state when it failed or is paused, else the worst state of a task.
fn summary_state(connector: &pb::Connector) -> &'static str {
    let own = state_name(connector.state);
    if own == "failed" || own == "paused" || connector.tasks.is_empty() {
        return own;
    }
    let states: Vec<&str> = connector
        .tasks
        .iter()
        .map(|t| state_name(t.state))
        .collect();
    worst_state(&states).unwrap_or(own)
}

fn print_status(connector: &pb::Connector) {
    println!(
        "{} connector {}: plugin {} {} topic {}  state={}  errors={}{}",
        kind_name(connector.kind),
        connector.name,
        connector.plugin,
        if kind_name(connector.kind) == "sink" {
            "<-"
        } else {
            "->"
        },
        connector.topic,
        summary_state(connector),
        errors_name(connector.errors),
        if connector.dlq_topic.is_empty() {
            String::new()
        } else {
            format!(" dlq-topic={}", connector.dlq_topic)
        },
    );
    if !connector.failure.is_empty() {
        println!("  failure: {}", connector.failure);
    }
    println!("  config: {}", config_text(&connector.config));
    for (index, transform) in connector.transforms.iter().enumerate() {
        println!("  transform {}. {}", index + 1, transform_line(transform));
    }
    let rows: Vec<Vec<String>> = connector
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.task.to_string(),
                state_name(t.state).to_owned(),
                t.restarts.to_string(),
                t.records_in.to_string(),
                t.records_out.to_string(),
                (t.skipped + t.dead_lettered).to_string(),
                failure_text(&t.failure, t.restarting, t.next_try_unix_ms),
            ]
        })
        .collect();
    print_table(
        &[
            "TASK", "STATE", "RESTARTS", "IN", "OUT", "REJECTED", "FAILURE",
        ],
        &rows,
    );
}

fn connector_json(connector: &pb::Connector) -> serde_json::Value {
    json!({
        "name": connector.name,
        "kind": kind_name(connector.kind),
        "plugin": connector.plugin,
        "topic": connector.topic,
        "config": connector.config.iter().map(|e| json!([e.key, e.value])).collect::<Vec<_>>(),
        "tasks_max": connector.tasks_max,
        "errors": errors_name(connector.errors),
        "dlq_topic": connector.dlq_topic,
        "paused": connector.paused,
        "state": summary_state(connector),
        "failure": connector.failure,
        "transforms": transforms_json(&connector.transforms),
        "tasks": connector.tasks.iter().map(|t| json!({
            "task": t.task,
            "state": state_name(t.state),
            "failure": t.failure,
            "restarting": t.restarting,
            "next_try_unix_ms": t.next_try_unix_ms,
            "restarts": t.restarts,
            "records_in": t.records_in,
            "records_out": t.records_out,
            "skipped": t.skipped,
            "dead_lettered": t.dead_lettered,
        })).collect::<Vec<_>>(),
    })
}

fn print_offsets(offsets: &pb::ConnectorOffsets, json: bool) {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if json {
        print_json(&json!({
            "name": offsets.name,
            "source_tasks": offsets.source_tasks.iter().map(|t| json!({
                "task": t.task,
                "partition": t.partition,
                "end": t.end,
                "position_hex": t.position.as_deref().map(hex),
            })).collect::<Vec<_>>(),
            "sink_partitions": offsets.sink_partitions.iter().map(|p| json!({
                "partition": p.partition,
                "committed": p.committed,
                "high_watermark": p.high_watermark,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    if !offsets.source_tasks.is_empty() {
        let rows: Vec<Vec<String>> = offsets
            .source_tasks
            .iter()
            .map(|t| {
                vec![
                    t.task.to_string(),
                    t.partition.to_string(),
                    t.end.to_string(),
                    t.position.as_deref().map_or("-".to_owned(), hex),
                ]
            })
            .collect();
        print_table(&["TASK", "PARTITION", "END", "POSITION (hex)"], &rows);
    }
    if !offsets.sink_partitions.is_empty() {
        let rows: Vec<Vec<String>> = offsets
            .sink_partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    p.committed.map_or("-".to_owned(), |c| c.to_string()),
                    p.high_watermark.to_string(),
                ]
            })
            .collect();
        print_table(&["PARTITION", "COMMITTED", "END"], &rows);
    }
}

/// `KEY=VALUE` arguments of `flag` as settings.
pub(super) fn config_entries(
    flag: &str,
    entries: &[String],
) -> Result<Vec<pb::ConfigEntry>, Failure> {
    entries
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(pb::ConfigEntry {
                key: key.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(Failure::Usage(anyhow::anyhow!(
                "{flag} {entry:?}: expected KEY=VALUE"
            ))),
        })
        .collect()
}

/// Settings as `KEY=VALUE` words, as they are given.
pub(super) fn config_text(entries: &[pb::ConfigEntry]) -> String {
    let words: Vec<String> = entries
        .iter()
        .map(|e| format!("{}={}", e.key, e.value))
        .collect();
    words.join(" ")
}
