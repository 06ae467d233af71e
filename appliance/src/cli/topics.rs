//! `appliance topic`: create, list, describe, alter and delete topics over gRPC.

use std::path::PathBuf;

use appliance_proto::v1 as pb;
use appliance_proto::v1::topics_client::TopicsClient;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::{print_json, print_table};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long)]
        partitions: Option<u32>,
        /// Keep records this long; -1 keeps forever.
        #[arg(long, allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Keep at least this many bytes per partition; -1 is unbounded.
        #[arg(long, allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
        #[arg(long)]
        segment_bytes: Option<u64>,
        #[arg(long, value_enum)]
        compression: Option<CompressionArg>,
        /// What becomes of older records: delete (retention), compact (the newest record per
        /// key is kept; every record needs a key) or compact,delete.
        #[arg(long, value_name = "POLICY")]
        cleanup_policy: Option<String>,
        /// How long compaction keeps a tombstone after its segment was sealed.
        #[arg(long)]
        delete_retention_ms: Option<u64>,
        /// A file with the JSON values' schema for queries: a JSON Schema object, or a list of
        /// {"name", "type": Utf8|Int64|Float64|Boolean|Timestamp, "nullable"} fields.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
    },
    /// List topics.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a topic's settings and partitions.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and all its records.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Lz4,
    Zstd,
    Snappy,
}

pub async fn topic(channel: ApiChannel, command: TopicCommand) -> Result<(), Failure> {
    let mut client = TopicsClient::new(channel);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            segment_bytes,
            compression,
            cleanup_policy,
            delete_retention_ms,
            schema,
        } => {
            let schema = schema
                .map(|path| {
                    std::fs::read_to_string(&path).map_err(|e| {
                        Failure::Usage(anyhow::anyhow!("--schema {}: {e}", path.display()))
                    })
                })
                .transpose()?;
            let config = pb::TopicConfig {
                schema,
                cleanup_policy,
                delete_retention_ms,
                partitions,
                retention_ms,
                retention_bytes,
                segment_bytes,
                compression: compression.map_or(pb::Compression::Unspecified, |c| match c {
                    CompressionArg::None => pb::Compression::None,
                    CompressionArg::Gzip => pb::Compression::Gzip,
                    CompressionArg::Lz4 => pb::Compression::Lz4,
                    CompressionArg::Zstd => pb::Compression::Zstd,
                    CompressionArg::Snappy => pb::Compression::Snappy,
                }) as i32,
                ..Default::default()
            };
            let topic = client
                .create_topic(pb::CreateTopicRequest {
                    name,
                    config: Some(config),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "created topic {} with {} partitions",
                topic.name,
                topic.partitions.len()
            );
        }
        TopicCommand::List { json } => {
            let topics = client
                .list_topics(pb::ListTopicsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .topics;
            if json {
                print_json(&json!(topics.iter().map(topic_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.partitions.len().to_string(),
                            t.partitions
                                .iter()
                                .map(|p| p.high_watermark - p.log_start_offset)
                                .sum::<u64>()
                                .to_string(),
                            t.partitions
                                .iter()
                                .map(|p| p.size_bytes)
                                .sum::<u64>()
                                .to_string(),
                            t.mirror_of.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(
                    &["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "MIRROR-OF"],
                    &rows,
                );
            }
        }
        TopicCommand::Describe { name, json } => {
            let topic = client
                .get_topic(pb::GetTopicRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&topic_json(&topic));
            } else {
                let config = topic.config.unwrap_or_default();
                println!("topic {}", topic.name);
                if let Some(origin) = &topic.mirror_of {
                    println!(
                        "  mirror of {origin}: read-only, written by its link \
                         (`appliance link promote {}` makes it writable)",
                        topic.name
                    );
                }
                println!(
                    "  retention-ms {}  retention-bytes {}  segment-bytes {}  max-message-bytes {}  compression {}",
                    config.retention_ms.unwrap_or(-1),
                    config.retention_bytes.unwrap_or(-1),
                    config.segment_bytes.unwrap_or_default(),
                    config.max_message_bytes.unwrap_or_default(),
                    compression_name(config.compression),
                );
                println!(
                    "  cleanup-policy {}  delete-retention-ms {}",
                    config.cleanup_policy.as_deref().unwrap_or("delete"),
                    config.delete_retention_ms.unwrap_or_default(),
                );
                if let Some(schema) = &config.schema {
                    println!("  declared schema (for queries): {schema}");
                }
                let rows: Vec<Vec<String>> = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.log_start_offset.to_string(),
                            p.high_watermark.to_string(),
                            p.size_bytes.to_string(),
                            p.segments.to_string(),
                            if p.error.is_empty() {
                                "online".into()
                            } else {
                                p.error.clone()
                            },
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "PARTITION",
                        "LOG-START",
                        "HIGH-WATERMARK",
                        "BYTES",
                        "SEGMENTS",
                        "STATE",
                    ],
                    &rows,
                );
            }
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(pb::DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn compression_name(value: i32) -> &'static str {
    match pb::Compression::try_from(value) {
        Ok(pb::Compression::Gzip) => "gzip",
        Ok(pb::Compression::Lz4) => "lz4",
        Ok(pb::Compression::Zstd) => "zstd",
        Ok(pb::Compression::Snappy) => "snappy",
        _ => "none",
    }
}

fn topic_json(topic: &pb::Topic) -> serde_json::Value {
    let config = topic.config.clone().unwrap_or_default();
    json!({
        "name": topic.name,
        "mirror_of": topic.mirror_of,
        "config": {
            "partitions": config.partitions,
            "retention_ms": config.retention_ms,
            "retention_bytes": config.retention_bytes,
            "segment_bytes": config.segment_bytes,
            "segment_ms": config.segment_ms,
            "max_message_bytes": config.max_message_bytes,
            "compression": compression_name(config.compression),
            "cleanup_policy": config.cleanup_policy,
            "delete_retention_ms": config.delete_retention_ms,
            "schema": config.schema,
        },
        "partitions": topic.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "segments": p.segments,
            "error": (!p.error.is_empty()).then_some(&p.error),
        })).collect::<Vec<_>>(),
    })
}
