//! Pipelines: a source topic, a chain of transform plugins, a destination topic, running
//! continuously, one task per source partition, exactly once.
//!
//! ```text
//! source partition p --read--> chain (plugin instances, on a blocking thread)
//!     --> outputs grouped by destination partition (p mod partitions; a transform may re-route
//!         a record to another topic; rejected records go to the dead-letter topic)
//!     --> append, the last record of each batch tagged `appliance.pipeline: ID:p:OFFSET`
//!     --> progress (next source offset, destination ends) in meta "pipeline-progress"
//! ```
//!
//! Exactly once without transactions ([`progress`]): the progress is written after the
//! appends are durable, and on start each destination's tail past the recorded end is scanned
//! for this pipeline's tags, so output a crash left behind is never written twice and nothing
//! is skipped. Each pipeline's spec lives in meta "pipelines"; a pipeline's state (running,
//! paused, failed with a reason) and lag are reported per partition. Partitions added to a
//! source topic get their task within [`PARTITION_CHECK`].

mod chain;
mod graph;
mod progress;
mod task;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::log::{Log, LogError, PartitionId, TopicName};
use crate::meta::{Meta, MetaError, Table};
use crate::plugin::{Limits, PluginError, PluginKind, Plugins};
use crate::runtime::{Component, Components, Registry};

pub(crate) use chain::run as run_chain;
pub use chain::{ChainOutput, Predicate, Rejection, Step};
pub(crate) use task::{
    cut_by_size, dead_letter, ensure_topic, record_size, to_log_record, to_plugin_record,
};

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
    progress::TAG_HEADER,
    crate::connect::SOURCE_TAG_HEADER,
    crate::connect::POSITION_HEADER,
    HOPS_HEADER,
];

pub(crate) fn is_tag_header(key: &str) -> bool {
    TAG_HEADERS.contains(&key)
}

const MAX_NAME_LEN: usize = 128;
/// How often pipelines look for partitions added to their source topic.
const PARTITION_CHECK: std::time::Duration = std::time::Duration::from_secs(2);
const MAX_TRANSFORMS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid pipeline name {name:?}: use 1 to 128 of a-z, A-Z, 0-9, '.', '_' and '-'")]
    InvalidName { name: String },
    #[error("no pipeline named {name:?}")]
    NotFound { name: String },
    #[error("a pipeline named {name:?} exists already")]
    AlreadyExists { name: String },
    #[error("pipeline {name:?}: {problem}")]
    InvalidSpec { name: String, problem: String },
    #[error("plugin {plugin:?} is used by pipeline {pipeline:?}; delete the pipeline first")]
    PluginInUse { plugin: String, pipeline: String },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

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

/// A pipeline as created; stored in meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub name: String,
    /// Distinguishes this pipeline from an earlier one of the same name in destination tags.
    pub id: u64,
    pub from: TopicName,
    pub to: TopicName,
    pub transforms: Vec<TransformSpec>,
    pub errors: ErrorPolicy,
    pub dlq_topic: Option<TopicName>,
    pub paused: bool,
}

/// What a caller asks for; becomes a [`PipelineSpec`].
#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub name: String,
    pub from: TopicName,
    pub to: TopicName,
    pub transforms: Vec<TransformSpec>,
    pub errors: ErrorPolicy,
    pub dlq_topic: Option<TopicName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionState {
    Starting,
    Running,
    Paused,
    /// Stopped on an error; `restarting` while an automatic restart is pending.
    Failed {
        reason: String,
        restarting: bool,
    },
}

/// One source partition's view of a pipeline.
#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    pub state: PartitionState,
    /// The next source offset to transform.
    pub next_offset: u64,
    pub high_watermark: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    /// Automatic restarts after failures since the partition's task started.
    pub restarts: u32,
}

impl PartitionStatus {
    pub fn lag(&self) -> u64 {
        self.high_watermark.saturating_sub(self.next_offset)
    }
}

#[derive(Debug, Clone)]
pub struct PipelineStatus {
    pub spec: PipelineSpec,
    pub partitions: Vec<PartitionStatus>,
}

/// Shared between a partition task (which writes it) and status readers.
#[derive(Debug)]
struct StatusCell(Mutex<PartitionStatus>);

impl StatusCell {
    fn update(&self, change: impl FnOnce(&mut PartitionStatus)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn get(&self) -> PartitionStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the registry keeps of a pipeline.
#[derive(Debug)]
struct Running {
    spec: PipelineSpec,
    partitions: Vec<Arc<StatusCell>>,
}

/// Handle to the pipelines; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pipelines {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Log,
    meta: Meta,
    plugins: Plugins,
    limits: Limits,
    pipelines: Registry<Running>,
    shutdown: CancellationToken,
}

impl Pipelines {
    /// Starts every stored pipeline that is not paused.
    pub async fn open(
        log: Log,
        meta: Meta,
        plugins: Plugins,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Result<Self, PipelineError> {
        let this = Self {
            inner: Arc::new(Inner {
                log,
                meta,
                plugins,
                limits,
                pipelines: Registry::new(shutdown.clone()),
                shutdown,
            }),
        };
        let stored: Vec<(String, PipelineSpec)> = this.inner.meta.entries(Table::Pipelines)?;
        let mut pipelines = this.inner.pipelines.lock().await;
        for (name, spec) in stored {
            let running = this.launch(spec);
            pipelines.insert(name, running).await;
        }
        drop(pipelines);
        let watcher = this.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(PARTITION_CHECK);
            loop {
                tokio::select! {
                    _ = watcher.inner.shutdown.cancelled() => return,
                    _ = interval.tick() => {
                        let mut pipelines = watcher.inner.pipelines.lock().await;
                        for running in pipelines.iter_mut() {
                            watcher.grow(running);
                        }
                    }
                }
            }
        });
        Ok(this)
    }

    /// Validates, stores durably and starts a pipeline. Each transform is instantiated once
    /// here, so a configuration its plugin rejects is reported to the caller.
    pub async fn create(&self, new: NewPipeline) -> Result<PipelineStatus, PipelineError> {
        validate_name(&new.name)?;
        let invalid = |problem: String| PipelineError::InvalidSpec {
            name: new.name.clone(),
            problem,
        };
        if new.from == new.to {
            return Err(invalid(
                "the destination must differ from the source".to_owned(),
            ));
        }
        check_error_policy(new.errors, new.dlq_topic.as_ref(), Some(&new.from)).map_err(invalid)?;
        self.inner.log.topic_info(&new.from)?;
        validate_transforms(&self.inner.plugins, self.inner.limits, &new.transforms)
            .await
            .map_err(|e| match e {
                TransformsError::Plugin(e) => PipelineError::Plugin(e),
                TransformsError::Invalid(problem) => invalid(problem),
            })?;
        let mut pipelines = self.inner.pipelines.lock().await;
        if pipelines.contains(&new.name) {
            return Err(PipelineError::AlreadyExists { name: new.name });
        }
        let existing: Vec<graph::Edges<'_>> = pipelines
            .iter()
            .map(|(_, running)| graph::Edges::of_spec(&running.state.spec))
            .collect();
        let edges = graph::Edges::of(
            &new.name,
            &new.from,
            &new.to,
            new.dlq_topic.as_ref(),
            &new.transforms,
        );
        if let Some(cycle) = graph::cycle_closed_by(&existing, &edges) {
            return Err(invalid(format!(
                "it would close a cycle of pipelines, {cycle}, that sends records round \
                 forever; write to a topic that does not lead back to {}",
                new.from
            )));
        }
        for topic in std::iter::once(&new.to).chain(new.dlq_topic.as_ref()) {
            task::ensure_topic(&self.inner.log, topic).await?;
        }
        let spec = PipelineSpec {
            id: unique_id(&new.name),
            name: new.name,
            from: new.from,
            to: new.to,
            transforms: new.transforms,
            errors: new.errors,
            dlq_topic: new.dlq_topic,
            paused: false,
        };
        self.inner
            .meta
            .put(Table::Pipelines, &spec.name, &spec)
            .await?;
        let running = self.launch(spec);
        let status = status_of(&running.state);
        pipelines.insert(status.spec.name.clone(), running).await;
        Ok(status)
    }

    pub async fn get(&self, name: &str) -> Result<PipelineStatus, PipelineError> {
        let pipelines = self.inner.pipelines.lock().await;
        pipelines
            .get(name)
            .map(|running| status_of(&running.state))
            .ok_or_else(|| PipelineError::NotFound {
                name: name.to_owned(),
            })
    }

    pub async fn list(&self) -> Vec<PipelineStatus> {
        self.inner
            .pipelines
            .lock()
            .await
            .iter()
            .map(|(_, running)| status_of(&running.state))
            .collect()
    }

    /// Partition tasks still running, including any that outlived their pipeline.
    pub fn running_tasks(&self) -> usize {
        self.inner.pipelines.running_tasks()
    }

    /// Every pipeline, unless one is being created or changed right now (for metrics, which
    /// must not wait).
    pub fn try_list(&self) -> Option<Vec<PipelineStatus>> {
        let pipelines = self.inner.pipelines.try_lock()?;
        Some(
            pipelines
                .iter()
                .map(|(_, running)| status_of(&running.state))
                .collect(),
        )
    }

    /// Stops a pipeline's tasks after the batch in flight; it stays stopped across restarts.
    pub async fn pause(&self, name: &str) -> Result<PipelineStatus, PipelineError> {
        self.set_paused(name, true).await
    }

    /// Restarts a paused pipeline, or the failed partitions of a running one.
    pub async fn resume(&self, name: &str) -> Result<PipelineStatus, PipelineError> {
        self.set_paused(name, false).await
    }

    /// Stops a pipeline and forgets it and its progress. Its output stays in its topics.
    pub async fn delete(&self, name: &str) -> Result<(), PipelineError> {
        let mut pipelines = self.inner.pipelines.lock().await;
        let running = take_stopped(&mut pipelines, name).await?.state;
        self.inner.meta.remove(Table::Pipelines, name).await?;
        self.inner
            .meta
            .remove_prefix(
                Table::PipelineProgress,
                &progress::key_prefix(running.spec.id),
            )
            .await?;
        self.inner.plugins.forget_counters(&format!("{name}/"));
        Ok(())
    }

    /// The first pipeline that uses `plugin`, if any.
    pub async fn user_of(&self, plugin: &str) -> Option<String> {
        self.inner
            .pipelines
            .lock()
            .await
            .iter()
            .map(|(_, running)| &running.state.spec)
            .find(|spec| spec.transforms.iter().any(|t| t.plugin == plugin))
            .map(|spec| spec.name.clone())
    }

    /// Stops every pipeline's tasks (at shutdown).
    pub async fn stop_all(&self) {
        self.inner.pipelines.stop_all().await;
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<PipelineStatus, PipelineError> {
        let mut pipelines = self.inner.pipelines.lock().await;
        let mut spec = take_stopped(&mut pipelines, name).await?.state.spec;
        spec.paused = paused;
        let stored = self.inner.meta.put(Table::Pipelines, name, &spec).await;
        let relaunched = self.launch(spec);
        let status = status_of(&relaunched.state);
        pipelines.insert(name.to_owned(), relaunched).await;
        stored?;
        Ok(status)
    }

    /// Starts one task per source partition (none when paused).
    fn launch(&self, spec: PipelineSpec) -> Component<Running> {
        let mut running = self.inner.pipelines.component(Running {
            spec,
            partitions: Vec::new(),
        });
        self.grow(&mut running);
        running
    }

    /// Gives every source partition without one a status and, unless the pipeline is paused,
    /// a task: at launch, and when the source topic gains partitions.
    fn grow(&self, component: &mut Component<Running>) {
        let stop = component.stop_token();
        let running = &component.state;
        let partition_count = self
            .inner
            .log
            .topic_config(&running.spec.from)
            .map_or(0, |config| config.partitions);
        let initial = if running.spec.paused {
            PartitionState::Paused
        } else {
            PartitionState::Starting
        };
        for p in component.state.partitions.len() as u32..partition_count {
            let running = &component.state;
            let status = Arc::new(StatusCell(Mutex::new(PartitionStatus {
                partition: PartitionId(p),
                state: initial.clone(),
                next_offset: 0,
                high_watermark: 0,
                records_in: 0,
                records_out: 0,
                skipped: 0,
                dead_lettered: 0,
                restarts: 0,
            })));
            if !running.spec.paused {
                let context = task::PartitionTask {
                    spec: running.spec.clone(),
                    partition: PartitionId(p),
                    log: self.inner.log.clone(),
                    meta: self.inner.meta.clone(),
                    plugins: self.inner.plugins.clone(),
                    limits: self.inner.limits,
                    status: status.clone(),
                    stop: stop.clone(),
                };
                component.spawn(context.run());
            }
            component.state.partitions.push(status);
        }
    }
}

/// Checks that a dead-letter topic is given exactly when the policy is `dlq`, and differs from
/// the topic records are read from.
pub(crate) fn check_error_policy(
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
pub(crate) enum TransformsError {
    Plugin(PluginError),
    Invalid(String),
}

/// Instantiates each transform of a chain once, so a configuration its plugin rejects is
/// reported to whoever creates the chain.
pub(crate) async fn validate_transforms(
    plugins: &Plugins,
    limits: Limits,
    transforms: &[TransformSpec],
) -> Result<(), TransformsError> {
    if transforms.len() > MAX_TRANSFORMS {
        return Err(TransformsError::Invalid(format!(
            "at most {MAX_TRANSFORMS} transforms"
        )));
    }
    for transform in transforms {
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
        let (_, plugin_config) = Predicate::split_config(&transform.config).map_err(|problem| {
            TransformsError::Invalid(format!("transform {}: {problem}", transform.plugin))
        })?;
        plugins
            .instantiate_transform(&loaded, &plugin_config, limits, "validation")
            .await
            .map_err(TransformsError::Plugin)?;
    }
    Ok(())
}

/// Starts one instance of each transform of a chain; `label` prefixes the instances' labels.
pub(crate) async fn start_chain(
    plugins: &Plugins,
    limits: Limits,
    transforms: &[TransformSpec],
    label: &str,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::with_capacity(transforms.len());
    for (index, transform) in transforms.iter().enumerate() {
        let loaded = plugins
            .get(&transform.plugin)
            .await
            .map_err(|e| e.to_string())?;
        let (predicate, config) = Predicate::split_config(&transform.config)?;
        let instance = plugins
            .instantiate_transform(&loaded, &config, limits, &format!("{label}/{index}"))
            .await
            .map_err(|e| e.to_string())?;
        steps.push(Step {
            predicate,
            instance,
        });
    }
    Ok(steps)
}

/// A practically unique id: the name and the current time, hashed with a per-process random
/// key. Tags carry it, so output of an earlier pipeline or connector of the same name is
/// never taken for this one's.
pub(crate) fn unique_id(name: &str) -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((name, now))
}

/// Takes a pipeline out of the map once its tasks have stopped.
async fn take_stopped(
    pipelines: &mut Components<Running>,
    name: &str,
) -> Result<Component<Running>, PipelineError> {
    pipelines
        .take_stopped(name)
        .await
        .ok_or_else(|| PipelineError::NotFound {
            name: name.to_owned(),
        })
}

fn status_of(running: &Running) -> PipelineStatus {
    PipelineStatus {
        spec: running.spec.clone(),
        partitions: running.partitions.iter().map(|cell| cell.get()).collect(),
    }
}

/// A pipeline or connector name: 1 to 128 of `a-z A-Z 0-9 . _ -`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn validate_name(name: &str) -> Result<(), PipelineError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(PipelineError::InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
