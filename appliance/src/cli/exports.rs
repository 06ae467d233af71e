//! `appliance export`: Delta Lake tables continuously written from a table's topics.

use std::time::{Duration, SystemTime};

use appliance_proto::v1 as pb;
use appliance_proto::v1::exports_client::ExportsClient;
use clap::Subcommand;
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::connectors::{config_entries, config_text};
use super::manage::failure_text;
use super::output::{print_json, print_table};

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Create and start an export: the table FROM (a topic; on a hub every edge's mirror of
    /// it too) written continuously to the Delta table TO, exactly once.
    Create {
        name: String,
        /// The table exported: a topic name.
        #[arg(long)]
        from: String,
        /// Where the Delta table lives: an absolute directory, a file:/// URL, or
        /// s3://BUCKET/PREFIX in an S3-compatible object store.
        #[arg(long)]
        to: String,
        /// An s3:// table's object store (repeat): endpoint=URL, region=R, access-key-id=ID,
        /// secret-access-key='${env:NAME}' or '${file:PATH}', session-token=..., allow-http=true
        /// for a plain-HTTP endpoint, virtual-hosted-style=true (docs/lake.md).
        #[arg(long = "storage", value_name = "KEY=VALUE")]
        storage: Vec<String>,
        /// Partition columns, of _edge, _day and _partition (repeat or separate by commas), or
        /// `none`; default _edge,_day.
        #[arg(long, value_delimiter = ',')]
        partition_by: Vec<String>,
        /// Start a source partition the table holds nothing of at this time (RFC 3339)
        /// instead of the log's start.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        since: Option<SystemTime>,
        /// Parquet files of about this many bytes (default 128 MiB).
        #[arg(long)]
        target_file_bytes: Option<u64>,
        /// Commit at least this often while records come (default 60s).
        #[arg(long, value_parser = humantime::parse_duration)]
        flush_interval: Option<Duration>,
        /// Compact small files and delete unreferenced ones this often (default 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        maintenance_interval: Option<Duration>,
        /// Where records that do not fit the table's schema go (default NAME.dead-letters).
        #[arg(long)]
        dead_letter_topic: Option<String>,
    },
    /// List exports with their state, lag and table version.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show an export's state and, per source partition, what the table holds and the lag.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop an export after the commit in flight (it stays paused across restarts).
    Pause { name: String },
    /// Restart a paused or failed export.
    Resume { name: String },
    /// Stop and forget an export; the table stays whole.
    Delete { name: String },
}

pub async fn export(channel: ApiChannel, command: ExportCommand) -> Result<(), Failure> {
    let mut client = ExportsClient::new(channel);
    match command {
        ExportCommand::Create {
            name,
            from,
            to,
            storage,
            partition_by,
            since,
            target_file_bytes,
            flush_interval,
            maintenance_interval,
            dead_letter_topic,
        } => {
            let start_unix_ms = since.map_or(0, |at| {
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(1, |d| d.as_millis().max(1) as i64)
            });
            let export = client
                .create_export(pb::CreateExportRequest {
                    name,
                    from_topic: from,
                    to,
                    storage: config_entries("--storage", &storage)?,
                    partition_by,
                    start_unix_ms,
                    target_file_bytes: target_file_bytes.unwrap_or(0),
                    flush_interval_ms: flush_interval.map_or(0, |d| d.as_millis() as u64),
                    maintenance_interval_ms: maintenance_interval
                        .map_or(0, |d| d.as_millis() as u64),
                    dead_letter_topic: dead_letter_topic.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "created export {}: {} -> {} (partitioned by {}), dead letters to {}",
                export.name,
                export.from_topic,
                export.to,
                partitioning(&export),
                export.dead_letter_topic
            );
        }
        ExportCommand::List { json } => {
            let exports = client
                .list_exports(pb::ListExportsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .exports;
            if json {
                print_json(&json!(exports.iter().map(export_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = exports
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.from_topic.clone(),
                            e.to.clone(),
                            state_name(e.state).to_owned(),
                            e.sources.iter().map(|s| s.lag).sum::<u64>().to_string(),
                            version(e),
                        ]
                    })
                    .collect();
                print_table(&["EXPORT", "FROM", "TO", "STATE", "LAG", "VERSION"], &rows);
            }
        }
        ExportCommand::Status { name, json } => {
            let export = client
                .get_export(pb::GetExportRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&export_json(&export));
            } else {
                print_status(&export);
            }
        }
        ExportCommand::Pause { name } => {
            let export = client
                .pause_export(pb::PauseExportRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("paused export {}", export.name);
        }
        ExportCommand::Resume { name } => {
            let export = client
                .resume_export(pb::ResumeExportRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("resumed export {}", export.name);
        }
        ExportCommand::Delete { name } => {
            client
                .delete_export(pb::DeleteExportRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted export {name} (the table stays where it is)");
        }
    }
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    match pb::ExportState::try_from(state) {
        Ok(pb::ExportState::Starting) => "starting",
        Ok(pb::ExportState::Running) => "running",
        Ok(pb::ExportState::Paused) => "paused",
        Ok(pb::ExportState::Failed) => "failed",
        _ => "unknown",
    }
}

fn partitioning(export: &pb::Export) -> String {
    if export.partition_by.is_empty() {
        "nothing".to_owned()
    } else {
        export.partition_by.join(",")
    }
}

fn version(export: &pb::Export) -> String {
    if export.table_version < 0 {
        "-".to_owned()
    } else {
        export.table_version.to_string()
    }
}

fn export_json(export: &pb::Export) -> serde_json::Value {
    json!({
        "name": export.name,
        "from": export.from_topic,
        "to": export.to,
        "storage": export.storage.iter().map(|e| json!([e.key, e.value])).collect::<Vec<_>>(),
        "partition_by": export.partition_by,
        "start_unix_ms": export.start_unix_ms,
        "target_file_bytes": export.target_file_bytes,
        "flush_interval_ms": export.flush_interval_ms,
        "maintenance_interval_ms": export.maintenance_interval_ms,
        "dead_letter_topic": export.dead_letter_topic,
        "paused": export.paused,
        "state": state_name(export.state),
        "failure": export.failure,
        "restarting": export.restarting,
        "restarts": export.restarts,
        "table_version": export.table_version,
        "rows": export.rows,
        "files": export.files,
        "bytes": export.bytes,
        "dead_lettered": export.dead_lettered,
        "last_commit_unix_ms": export.last_commit_unix_ms,
        "files_compacted": export.files_compacted,
        "files_vacuumed": export.files_vacuumed,
        "sources": export.sources.iter().map(|s| json!({
            "topic": s.topic,
            "edge": s.edge,
            "partition": s.partition,
            "exported": s.exported,
            "high_watermark": s.high_watermark,
            "lag": s.lag,
            "lost": s.lost,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(export: &pb::Export) {
    println!(
        "export {}: {} -> {}  partitioned by {}, dead letters to {}{}",
        export.name,
        export.from_topic,
        export.to,
        partitioning(export),
        export.dead_letter_topic,
        if export.paused { "  (paused)" } else { "" }
    );
    println!(
        "state {}  table version {}  rows {}  files {}  bytes {}  dead-lettered {}  \
         compacted {}  vacuumed {}  restarts {}",
        state_name(export.state),
        version(export),
        export.rows,
        export.files,
        export.bytes,
        export.dead_lettered,
        export.files_compacted,
        export.files_vacuumed,
        export.restarts
    );
    if !export.storage.is_empty() {
        println!("storage: {}", config_text(&export.storage));
    }
    if !export.failure.is_empty() {
        println!(
            "failure: {}",
            failure_text(&export.failure, export.restarting, export.next_try_unix_ms)
        );
    }
    let rows: Vec<Vec<String>> = export
        .sources
        .iter()
        .map(|s| {
            vec![
                s.topic.clone(),
                if s.edge.is_empty() {
                    "-".to_owned()
                } else {
                    s.edge.clone()
                },
                s.partition.to_string(),
                s.exported.to_string(),
                s.high_watermark.to_string(),
                s.lag.to_string(),
                s.lost.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "TOPIC",
            "EDGE",
            "PARTITION",
            "EXPORTED",
            "END",
            "LAG",
            "LOST",
        ],
        &rows,
    );
}
