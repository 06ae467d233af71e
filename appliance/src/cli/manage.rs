//! Client commands that manage plugins and pipelines of a running appliance over gRPC.

use std::path::PathBuf;

use anyhow::{Context, bail};
use appliance_proto::v1 as pb;
use appliance_proto::v1::pipelines_client::PipelinesClient;
use appliance_proto::v1::plugins_client::PluginsClient;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::{print_json, print_table, seconds_until};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Add a WebAssembly component (built for wasm32-wasip2 with appliance-sdk).
    Add { name: String, file: PathBuf },
    /// List the built-in and added plugins.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete an added plugin that no pipeline uses.
    Delete { name: String },
    /// Write a new plugin project (with the SDK and WIT it builds against) into DIR/NAME and
    /// print the commands that build and load it. Needs no running appliance.
    New(super::scaffold::NewPlugin),
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Create and start a pipeline: FROM -> transforms -> TO, per partition, exactly once.
    Create {
        name: String,
        /// The source topic.
        #[arg(long)]
        from: String,
        /// The destination topic (created with the defaults when missing).
        #[arg(long)]
        to: String,
        /// A transform, in order: PLUGIN or PLUGIN:key=value,key=value. A list value is
        /// separated by `|` or given as a repeated key; `\,` is a literal comma.
        #[arg(long = "transform", value_name = "PLUGIN[:key=value,...]")]
        transforms: Vec<String>,
        /// What to do with a record a transform rejects.
        #[arg(long, value_enum, default_value = "fail")]
        errors: ErrorsArg,
        /// Dead-letter topic, with --errors dlq.
        #[arg(long)]
        dlq_topic: Option<String>,
    },
    /// List pipelines with their state and total lag.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a pipeline's state, position and lag per source partition.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a pipeline after the batch in flight (it stays paused across restarts).
    Pause { name: String },
    /// Restart a paused pipeline, or the failed partitions of a running one.
    Resume { name: String },
    /// Stop and forget a pipeline; its output stays in its topics.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ErrorsArg {
    Fail,
    Skip,
    Dlq,
}

pub async fn plugin(channel: ApiChannel, command: PluginCommand) -> Result<(), Failure> {
    let mut client = PluginsClient::new(channel);
    match command {
        PluginCommand::Add { name, file } => {
            let wasm = std::fs::read(&file)
                .with_context(|| format!("cannot read {}", file.display()))
                .map_err(Failure::Usage)?;
            let plugin = client
                .add_plugin(pb::AddPluginRequest {
                    name,
                    wasm: wasm.into(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "added {} plugin {} ({} bytes, sha256 {})",
                kind_name(plugin.kind),
                plugin.name,
                plugin.size_bytes,
                plugin.sha256
            );
        }
        PluginCommand::List { json } => {
            let plugins = client
                .list_plugins(pb::ListPluginsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .plugins;
            if json {
                print_json(&json!(
                    plugins
                        .iter()
                        .map(|p| json!({
                            "name": p.name,
                            "kind": kind_name(p.kind),
                            "sha256": p.sha256,
                            "size_bytes": p.size_bytes,
                            "builtin": p.builtin,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = plugins
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            kind_name(p.kind).to_owned(),
                            if p.builtin { "built-in" } else { "added" }.to_owned(),
                            p.size_bytes.to_string(),
                            p.sha256.chars().take(12).collect(),
                        ]
                    })
                    .collect();
                print_table(&["PLUGIN", "KIND", "ORIGIN", "BYTES", "SHA256"], &rows);
            }
        }
        PluginCommand::New(args) => super::scaffold::run(args)?,
        PluginCommand::Delete { name } => {
            client
                .delete_plugin(pb::DeletePluginRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted plugin {name}");
        }
    }
    Ok(())
}

impl ErrorsArg {
    pub(super) fn policy(self) -> pb::ErrorPolicy {
        match self {
            ErrorsArg::Fail => pb::ErrorPolicy::Fail,
            ErrorsArg::Skip => pb::ErrorPolicy::Skip,
            ErrorsArg::Dlq => pb::ErrorPolicy::Dlq,
        }
    }
}

/// Parses every `--transform` argument.
pub(super) fn parse_transforms(specs: &[String]) -> Result<Vec<pb::Transform>, Failure> {
    specs
        .iter()
        .map(|spec| parse_transform(spec))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(Failure::Usage)
}

pub async fn pipeline(channel: ApiChannel, command: PipelineCommand) -> Result<(), Failure> {
    let mut client = PipelinesClient::new(channel);
    match command {
        PipelineCommand::Create {
            name,
            from,
            to,
            transforms,
            errors,
            dlq_topic,
        } => {
            let transforms = parse_transforms(&transforms)?;
            let pipeline = client
                .create_pipeline(pb::CreatePipelineRequest {
                    name,
                    from_topic: from,
                    to_topic: to,
                    transforms,
                    errors: errors.policy() as i32,
                    dlq_topic: dlq_topic.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "created pipeline {}: {} -> {} transform(s) -> {}, {} partition(s)",
                pipeline.name,
                pipeline.from_topic,
                pipeline.transforms.len(),
                pipeline.to_topic,
                pipeline.partitions.len()
            );
        }
        PipelineCommand::List { json } => {
            let pipelines = client
                .list_pipelines(pb::ListPipelinesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .pipelines;
            if json {
                print_json(&json!(
                    pipelines.iter().map(pipeline_json).collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = pipelines
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.from_topic.clone(),
                            p.to_topic.clone(),
                            summary_state(p).to_owned(),
                            p.partitions.iter().map(|q| q.lag).sum::<u64>().to_string(),
                        ]
                    })
                    .collect();
                print_table(&["PIPELINE", "FROM", "TO", "STATE", "LAG"], &rows);
            }
        }
        PipelineCommand::Status { name, json } => {
            let pipeline = client
                .get_pipeline(pb::GetPipelineRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&pipeline_json(&pipeline));
            } else {
                print_status(&pipeline);
            }
        }
        PipelineCommand::Pause { name } => {
            let pipeline = client
                .pause_pipeline(pb::PausePipelineRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("paused pipeline {}", pipeline.name);
        }
        PipelineCommand::Resume { name } => {
            let pipeline = client
                .resume_pipeline(pb::ResumePipelineRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("resumed pipeline {}", pipeline.name);
        }
        PipelineCommand::Delete { name } => {
            client
                .delete_pipeline(pb::DeletePipelineRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted pipeline {name}");
        }
    }
    Ok(())
}

/// `PLUGIN` or `PLUGIN:key=value,key=value`; `\,` and `\\` escape a comma and a backslash.
pub(super) fn parse_transform(spec: &str) -> anyhow::Result<pb::Transform> {
    let (plugin, config) = spec.split_once(':').unwrap_or((spec, ""));
    if plugin.is_empty() {
        bail!("--transform {spec:?}: name a plugin before the ':'");
    }
    let mut entries = Vec::new();
    let mut item = String::new();
    let mut chars = config.chars();
    let mut items = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ (',' | '\\')) => item.push(escaped),
                Some(other) => {
                    item.push('\\');
                    item.push(other);
                }
                None => item.push('\\'),
            },
            ',' => items.push(std::mem::take(&mut item)),
            c => item.push(c),
        }
    }
    if !config.is_empty() {
        items.push(item);
    }
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            bail!("--transform {spec:?}: {item:?} is not key=value");
        };
        if key.trim().is_empty() {
            bail!("--transform {spec:?}: {item:?} has an empty key");
        }
        entries.push(pb::ConfigEntry {
            key: key.trim().to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(pb::Transform {
        plugin: plugin.to_owned(),
        config: entries,
    })
}

pub(super) fn kind_name(kind: i32) -> &'static str {
    match pb::PluginKind::try_from(kind) {
        Ok(pb::PluginKind::Transform) => "transform",
        Ok(pb::PluginKind::Source) => "source",
        Ok(pb::PluginKind::Sink) => "sink",
        _ => "unknown",
    }
}

/// A failure as status tables print it, with when the automatic restart pending, if one
/// is, begins (`next_try_unix_ms`, 0 when none is).
pub(super) fn failure_text(failure: &str, restarting: bool, next_try_unix_ms: u64) -> String {
    if !restarting {
        return failure.to_owned();
    }
    format!(
        "{failure} (restarting in {} s)",
        seconds_until(next_try_unix_ms)
    )
}

fn state_name(state: i32) -> &'static str {
    match pb::PipelineState::try_from(state) {
        Ok(pb::PipelineState::Starting) => "starting",
        Ok(pb::PipelineState::Running) => "running",
        Ok(pb::PipelineState::Paused) => "paused",
        Ok(pb::PipelineState::Failed) => "failed",
        _ => "unknown",
    }
}

pub(super) fn errors_name(policy: i32) -> &'static str {
    match pb::ErrorPolicy::try_from(policy) {
        Ok(pb::ErrorPolicy::Skip) => "skip",
        Ok(pb::ErrorPolicy::Dlq) => "dlq",
        _ => "fail",
    }
}

/// The worst of `states`: failed, then starting, then paused, then running.
pub(super) fn worst_state(states: &[&str]) -> Option<&'static str> {
    ["failed", "starting", "paused", "running"]
        .into_iter()
        .find(|s| states.contains(s))
}

/// The worst state of any partition.
fn summary_state(pipeline: &pb::Pipeline) -> &'static str {
    let states: Vec<&str> = pipeline
        .partitions
        .iter()
        .map(|p| state_name(p.state))
        .collect();
    worst_state(&states).unwrap_or(if pipeline.paused { "paused" } else { "running" })
}

/// A transform as the status shows it: `PLUGIN key=value,key=value`.
pub(super) fn transform_line(transform: &pb::Transform) -> String {
    let config: Vec<String> = transform
        .config
        .iter()
        .map(|e| format!("{}={}", e.key, e.value))
        .collect();
    format!("{} {}", transform.plugin, config.join(","))
}

pub(super) fn transforms_json(transforms: &[pb::Transform]) -> serde_json::Value {
    json!(
        transforms
            .iter()
            .map(|t| json!({
                "plugin": t.plugin,
                "config": t.config.iter().map(|e| json!([e.key, e.value])).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()
    )
}

fn print_status(pipeline: &pb::Pipeline) {
    println!(
        "pipeline {}: {} -> {}  errors={}{}{}",
        pipeline.name,
        pipeline.from_topic,
        pipeline.to_topic,
        errors_name(pipeline.errors),
        if pipeline.dlq_topic.is_empty() {
            String::new()
        } else {
            format!(" dlq-topic={}", pipeline.dlq_topic)
        },
        if pipeline.paused { "  (paused)" } else { "" }
    );
    for (index, transform) in pipeline.transforms.iter().enumerate() {
        println!("  {}. {}", index + 1, transform_line(transform));
    }
    let rows: Vec<Vec<String>> = pipeline
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                state_name(p.state).to_owned(),
                p.next_offset.to_string(),
                p.high_watermark.to_string(),
                p.lag.to_string(),
                p.records_in.to_string(),
                p.records_out.to_string(),
                (p.skipped + p.dead_lettered).to_string(),
                p.restarts.to_string(),
                failure_text(&p.failure, p.restarting, p.next_try_unix_ms),
            ]
        })
        .collect();
    print_table(
        &[
            "PARTITION",
            "STATE",
            "NEXT",
            "END",
            "LAG",
            "IN",
            "OUT",
            "REJECTED",
            "RESTARTS",
            "FAILURE",
        ],
        &rows,
    );
}

fn pipeline_json(pipeline: &pb::Pipeline) -> serde_json::Value {
    json!({
        "name": pipeline.name,
        "from": pipeline.from_topic,
        "to": pipeline.to_topic,
        "errors": errors_name(pipeline.errors),
        "dlq_topic": pipeline.dlq_topic,
        "paused": pipeline.paused,
        "state": summary_state(pipeline),
        "transforms": transforms_json(&pipeline.transforms),
        "partitions": pipeline.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "state": state_name(p.state),
            "failure": p.failure,
            "restarting": p.restarting,
            "next_try_unix_ms": p.next_try_unix_ms,
            "restarts": p.restarts,
            "next_offset": p.next_offset,
            "high_watermark": p.high_watermark,
            "lag": p.lag,
            "records_in": p.records_in,
            "records_out": p.records_out,
            "skipped": p.skipped,
            "dead_lettered": p.dead_lettered,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(transform: &pb::Transform) -> Vec<(String, String)> {
        transform
            .config
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn transform_specs_parse_with_escapes_and_repeated_keys() {
        let t = parse_transform(r"mask-field:fields=a|b,fields=c,replacement=x\,y").unwrap();
        assert_eq!(t.plugin, "mask-field");
        assert_eq!(
            pairs(&t),
            [
                ("fields".to_owned(), "a|b".to_owned()),
                ("fields".to_owned(), "c".to_owned()),
                ("replacement".to_owned(), "x,y".to_owned()),
            ]
        );
        assert_eq!(parse_transform("flatten").unwrap().config.len(), 0);
        assert_eq!(
            pairs(&parse_transform("regex-router:regex=(.*)=x,replacement=$1").unwrap())[0],
            ("regex".to_owned(), "(.*)=x".to_owned())
        );
        assert!(parse_transform(":a=b").is_err());
        assert!(parse_transform("filter:field").is_err());
    }
}
