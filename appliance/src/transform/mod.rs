//! Transforms: what pipelines and source and sink connectors share between reading a
//! record and writing it. It owns the transform chain ([`chain`]: plugin instances with
//! predicates and per-record error isolation), the error policy and dead letters, the
//! conversions between the log's records and the plugins' records, and the name of every
//! `appliance.*` header.
//!
//! ```text
//! log::Record --to_plugin_record--> plugin::Record --chain (steps)--> plugin::Record
//!     --to_log_record--> log::Record (tag headers stripped both ways)
//! rejected records --error policy--> fail | skip | dead_letter() to the dead-letter topic
//! ```
//!
//! Invariant: no record leaves this module carrying a tag header ([`TAG_HEADERS`]) that the
//! appliance did not write itself; pipelines and connectors add their own tags after the
//! chain. `pipeline/` and `connect/` both use this module and neither uses the other.

mod chain;
mod error;
pub mod join;
mod records;
pub mod window;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::TopicName;
use crate::plugin::{Limits, PluginError, PluginKind, Plugins};

pub use chain::{
    ChainOutput, Predicate, Rejection, Step, Transformer, on_own_task, run as run_chain,
    run_apart as run_chain_apart,
};
pub use error::TaskError;
pub use records::{
    SourceRange, cut_by_size, dead_letter, ensure_topic, hops, record_size, to_log_record,
    to_plugin_record,
};

const MAX_TRANSFORMS: usize = 32;

/// Built-in transforms that only pipelines run: they keep state or read other topics.
pub const PIPELINE_ONLY: [&str; 2] = [window::WINDOW_AGGREGATE, join::TABLE_JOIN];

/// How often a stateful step's state is snapshotted (`window-aggregate`'s setting, and a host
/// key of a stateful plugin's config).
pub const SNAPSHOT_INTERVAL: &str = "snapshot-interval";
const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);

/// The `snapshot-interval` a step's config gives: at least 100ms, by default 30s.
pub(crate) fn snapshot_interval(text: Option<&str>) -> Result<Duration, String> {
    match text
        .map(|text| window::parse_ms(SNAPSHOT_INTERVAL, text.trim()))
        .transpose()?
    {
        None => Ok(DEFAULT_SNAPSHOT_INTERVAL),
        Some(ms) if ms >= 100 => Ok(Duration::from_millis(ms as u64)),
        Some(_) => Err(format!("`{SNAPSHOT_INTERVAL}` is at least 100ms")),
    }
}

/// The last value given for `key` in a transform's config: a later `key=value` overrides.
pub(crate) fn last_value<'c>(config: &'c [(String, String)], key: &str) -> Option<&'c str> {
    config
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A built-in transform's settings, checked against the keys it takes.
pub(crate) struct Settings<'c>(&'c [(String, String)]);

impl<'c> Settings<'c> {
    /// Refuses a key `transform` does not take, naming those it does.
    pub fn of(
        transform: &str,
        config: &'c [(String, String)],
        known: &[&str],
    ) -> Result<Self, String> {
        match config.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((key, _)) => Err(format!(
                "unknown setting {key:?}; {transform} takes {}",
                known.join(", ")
            )),
            None => Ok(Self(config)),
        }
    }

    /// The last value given for `key`, without surrounding spaces.
    pub fn get(&self, key: &str) -> Option<&'c str> {
        last_value(self.0, key).map(str::trim)
    }
}

/// What the built-ins that read other topics need: the log, and the stream they transform.
#[derive(Debug, Clone, Copy)]
pub struct StreamContext<'a> {
    pub log: &'a crate::log::Log,
    pub stream: &'a TopicName,
}

/// The header on the last record of each batch a pipeline appends: `ID:PARTITION:OFFSET`.
pub const PIPELINE_TAG_HEADER: &str = "appliance.pipeline";
/// The header on the last record of each batch a source task appends: `ID:TASK` in hex and
/// decimal, naming the connector (by its id, which changes when offsets are reset) and task.
pub const SOURCE_TAG_HEADER: &str = "appliance.source";
/// The header beside [`SOURCE_TAG_HEADER`] holding the source position after that record.
pub const POSITION_HEADER: &str = "appliance.source.position";

/// How many pipelines a record has passed through, as decimal digits; written on every
/// pipeline output record. A record past [`MAX_HOPS`] is rejected (to the pipeline's error
/// policy): the safety net for cycles that routing per record makes and the check at create
/// cannot see.
pub const HOPS_HEADER: &str = "appliance.hops";
pub const MAX_HOPS: u32 = 16;

/// Headers the appliance writes to account for its own output (pipeline and source
/// connector tags, hop counts). They are taken off every record a plugin emits or receives,
/// so no record carries a tag that the appliance did not put there itself.
pub const TAG_HEADERS: [&str; 4] = [
    PIPELINE_TAG_HEADER,
    SOURCE_TAG_HEADER,
    POSITION_HEADER,
    HOPS_HEADER,
];

pub(crate) fn is_tag_header(key: &str) -> bool {
    TAG_HEADERS.contains(&key)
}

/// The headers of a dead letter, in the order [`dead_letter`] writes them.
pub const ERROR_HEADERS: [&str; 6] = [
    "appliance.error.pipeline",
    "appliance.error.plugin",
    "appliance.error.message",
    "appliance.error.topic",
    "appliance.error.partition",
    "appliance.error.offset",
];

/// What happens to a record a transform rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Stop the partition with the error as its status. The default.
    #[default]
    Fail,
    /// Drop the record and go on.
    Skip,
    /// Write the original record to the dead-letter topic with headers naming the error.
    Dlq,
}

/// One transform of a chain: a plugin and its instance configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformSpec {
    pub plugin: String,
    pub config: Vec<(String, String)>,
}

/// Checks that a dead-letter topic is given exactly when the policy is `dlq`, and differs from
/// the topic records are read from.
pub fn check_error_policy(
    errors: ErrorPolicy,
    dlq_topic: Option<&TopicName>,
    source: Option<&TopicName>,
) -> Result<(), String> {
    match (errors, dlq_topic) {
        (ErrorPolicy::Dlq, None) => Err("errors=dlq needs a dead-letter topic".to_owned()),
        (ErrorPolicy::Dlq, Some(dlq)) if Some(dlq) == source => {
            Err("the dead-letter topic must differ from the source".to_owned())
        }
        (ErrorPolicy::Fail | ErrorPolicy::Skip, Some(_)) => {
            Err("a dead-letter topic is only used with errors=dlq".to_owned())
        }
        _ => Ok(()),
    }
}

#[derive(Debug)]
pub enum TransformsError {
    Plugin(PluginError),
    Invalid(String),
}

/// Instantiates each transform of a chain once, so a configuration its plugin rejects is
/// reported to whoever creates the chain. The pipeline-only built-ins and stateful plugins
/// are checked against `stream`; without one (a connector's chain) they are refused. Returns
/// the name of the stateful plugin, if the chain has one.
pub async fn validate_transforms(
    plugins: &Plugins,
    limits: Limits,
    transforms: &[TransformSpec],
    stream: Option<StreamContext<'_>>,
) -> Result<Option<String>, TransformsError> {
    if transforms.len() > MAX_TRANSFORMS {
        return Err(TransformsError::Invalid(format!(
            "at most {MAX_TRANSFORMS} transforms"
        )));
    }
    if stream.is_none()
        && let Some(builtin) = transforms
            .iter()
            .find(|t| PIPELINE_ONLY.contains(&t.plugin.as_str()))
    {
        return Err(TransformsError::Invalid(format!(
            "{} runs in pipelines, which keep its state and read its topics; a connector's \
             transforms are stateless",
            builtin.plugin
        )));
    }
    window::stage(transforms).map_err(TransformsError::Invalid)?;
    let mut stateful_plugin = None;
    for (index, transform) in transforms.iter().enumerate() {
        if transform.plugin == window::WINDOW_AGGREGATE {
            continue;
        }
        if transform.plugin == join::TABLE_JOIN {
            let invalid = |problem: String| {
                TransformsError::Invalid(format!("transform {}: {problem}", join::TABLE_JOIN))
            };
            let (_, config) = Predicate::split_config(&transform.config).map_err(invalid)?;
            let spec = join::JoinSpec::parse(&config).map_err(invalid)?;
            if let Some(stream) = stream {
                spec.check(stream.log, stream.stream).map_err(invalid)?;
            }
            continue;
        }
        let loaded = plugins
            .get(&transform.plugin)
            .await
            .map_err(TransformsError::Plugin)?;
        if loaded.info.kind != PluginKind::Transform {
            return Err(TransformsError::Plugin(PluginError::WrongKind {
                name: transform.plugin.clone(),
                actual: loaded.info.kind,
                wanted: PluginKind::Transform,
            }));
        }
        if loaded.uses_state() {
            if stream.is_none() {
                return Err(TransformsError::Invalid(format!(
                    "{} keeps state, which pipelines keep; a connector's transforms are \
                     stateless",
                    transform.plugin
                )));
            }
            snapshot_interval(last_value(&transform.config, SNAPSHOT_INTERVAL)).map_err(
                |problem| {
                    TransformsError::Invalid(format!("transform {}: {problem}", transform.plugin))
                },
            )?;
            if index + 1 != transforms.len() {
                return Err(TransformsError::Invalid(format!(
                    "{} keeps state, so it must be the last transform (and a pipeline keeps \
                     state in one step, a stateful plugin or window-aggregate): a record a \
                     later transform rejected would stay counted, and one changelog batch \
                     commits a source batch; chain a second pipeline through a topic",
                    transform.plugin
                )));
            }
            stateful_plugin = Some(transform.plugin.clone());
        }
        let (_, plugin_config) = Predicate::split_config(&transform.config).map_err(|problem| {
            TransformsError::Invalid(format!("transform {}: {problem}", transform.plugin))
        })?;
        plugins
            .instantiate_transform(&loaded, &plugin_config, limits, "validation")
            .await
            .map_err(TransformsError::Plugin)?;
    }
    Ok(stateful_plugin)
}

/// `<pipeline>.<plugin>.changelog`: the compacted topic a stateful plugin's store is kept in.
pub fn plugin_changelog(pipeline: &str, plugin: &str) -> Result<TopicName, String> {
    TopicName::new(format!("{pipeline}.{plugin}.changelog"))
        .map_err(|e| format!("the changelog topic of {plugin}'s state: {e}"))
}

/// Starts each step of a chain but the built-in `window-aggregate` (the pipeline's to run):
/// plugin instances, and `table-join` over partition `partition` of `stream`; `label`
/// prefixes the instances' labels.
pub async fn start_chain(
    plugins: &Plugins,
    limits: Limits,
    transforms: &[TransformSpec],
    label: &str,
    stream: Option<(StreamContext<'_>, crate::log::PartitionId)>,
) -> Result<Vec<Step>, TaskError> {
    let mut steps = Vec::with_capacity(transforms.len());
    let steps_of_chain = transforms
        .iter()
        .filter(|t| t.plugin != window::WINDOW_AGGREGATE);
    for (index, transform) in steps_of_chain.enumerate() {
        let (predicate, config) =
            Predicate::split_config(&transform.config).map_err(TaskError::Permanent)?;
        let transformer = if transform.plugin == join::TABLE_JOIN {
            let (stream, partition) = stream.ok_or_else(|| {
                TaskError::Permanent(format!("{} runs in pipelines only", join::TABLE_JOIN))
            })?;
            let join = join::JoinSpec::parse(&config)
                .and_then(|spec| {
                    join::TableJoin::start(spec, stream.log.clone(), stream.stream, partition)
                })
                .map_err(|problem| {
                    TaskError::Permanent(format!("transform {}: {problem}", join::TABLE_JOIN))
                })?;
            Transformer::TableJoin(join)
        } else {
            let loaded = plugins.get(&transform.plugin).await?;
            let instance = plugins
                .instantiate_transform(&loaded, &config, limits, &format!("{label}/{index}"))
                .await?;
            Transformer::Plugin(instance)
        };
        steps.push(Step {
            predicate,
            transformer,
        });
    }
    Ok(steps)
}
