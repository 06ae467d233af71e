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
//! source topic get their task within [`PARTITION_CHECK`]. A pipeline with a stateful step
//! (`window-aggregate`, or a plugin with a state store) commits that state through its
//! changelog topic, last of a batch's output ([`state`]).

mod graph;
mod progress;
mod state;
mod task;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::log::{Log, LogError, PartitionId, TopicName};
use crate::meta::{Meta, MetaError, Table};
use crate::plugin::{Limits, PluginError, Plugins};
use crate::runtime::{
    self, Component, Components, Registry, ResourceName, RestartPolicies, State, StatusCell,
    Supervised,
};
use crate::transform::{
    self, ErrorPolicy, TransformSpec, TransformsError, check_error_policy, validate_transforms,
};

/// How often pipelines look for partitions added to their source topic.
const PARTITION_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

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

/// One source partition's view of a pipeline.
#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    pub state: State,
    /// The next source offset to transform.
    pub next_offset: u64,
    pub high_watermark: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    /// Automatic restarts after failures since the partition's task started.
    pub restarts: u32,
    /// What the last start of a stateful partition read back from its changelog.
    pub state_restored: Option<StateRestored>,
}

/// A stateful step's state as restored from its changelog at a partition's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRestored {
    pub bytes: u64,
    /// The open windows of `window-aggregate`, or the entries of a stateful plugin's store.
    pub entries: usize,
    pub took: std::time::Duration,
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

impl Supervised for PartitionStatus {
    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    fn count_restart(&mut self) {
        self.restarts += 1;
    }
}

/// What the registry keeps of a pipeline.
#[derive(Debug)]
struct Running {
    spec: PipelineSpec,
    partitions: Vec<Arc<StatusCell<PartitionStatus>>>,
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
    restarts: RestartPolicies,
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
        restarts: RestartPolicies,
        shutdown: CancellationToken,
    ) -> Result<Self, PipelineError> {
        let this = Self {
            inner: Arc::new(Inner {
                log,
                meta,
                plugins,
                limits,
                restarts,
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
        let source = self.inner.log.topic_info(&new.from)?;
        let window = transform::window::stage(&new.transforms).map_err(invalid)?;
        let window_topics = match &window {
            None => None,
            Some(window) => {
                let changelog = window.changelog_topic(&new.name).map_err(invalid)?;
                for (topic, what) in [
                    (&window.late_topic, "late-topic"),
                    (&changelog, "changelog"),
                ] {
                    if *topic == new.from || *topic == new.to {
                        return Err(invalid(format!(
                            "the window's {what} {topic} must differ from the source and the \
                             destination"
                        )));
                    }
                }
                if window.late_topic == changelog || new.dlq_topic.as_ref() == Some(&changelog) {
                    return Err(invalid(format!(
                        "{changelog} is the window's changelog, which only window-aggregate \
                         writes; choose another late or dead-letter topic"
                    )));
                }
                Some((window.late_topic.clone(), changelog))
            }
        };
        let stream = transform::StreamContext {
            log: &self.inner.log,
            stream: &new.from,
        };
        let stateful_plugin = validate_transforms(
            &self.inner.plugins,
            self.inner.limits,
            &new.transforms,
            Some(stream),
        )
        .await
        .map_err(|e| match e {
            TransformsError::Plugin(e) => PipelineError::Plugin(e),
            TransformsError::Invalid(problem) => invalid(problem),
        })?;
        let changelog = match (&window_topics, stateful_plugin) {
            (Some((_, changelog)), _) => Some(changelog.clone()),
            (None, Some(plugin)) => {
                let changelog = transform::plugin_changelog(&new.name, &plugin).map_err(invalid)?;
                if [Some(&new.from), Some(&new.to), new.dlq_topic.as_ref()]
                    .contains(&Some(&changelog))
                {
                    return Err(invalid(format!(
                        "{changelog} keeps the state of {plugin}, which only the appliance \
                         writes; choose other topics"
                    )));
                }
                Some(changelog)
            }
            (None, None) => None,
        };
        let mut pipelines = self.inner.pipelines.lock().await;
        if pipelines.contains(&new.name) {
            return Err(PipelineError::AlreadyExists { name: new.name });
        }
        let existing: Vec<graph::Edges<'_>> = pipelines
            .states()
            .map(|running| graph::Edges::of_spec(&running.spec))
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
        for (theirs, running) in existing.iter().zip(pipelines.states()) {
            let their_changelog = self.changelog_of(&running.spec).await;
            if let Some(topic) = their_changelog
                .as_ref()
                .filter(|c| edges.targets.contains(c) || changelog.as_ref() == Some(*c))
            {
                return Err(invalid(format!(
                    "{topic} keeps the state of pipeline {}, which only it writes; choose \
                     other topics (or another pipeline name)",
                    theirs.pipeline
                )));
            }
            if let Some(topic) = changelog.as_ref().filter(|c| theirs.targets.contains(c)) {
                return Err(invalid(format!(
                    "{topic}, where this pipeline would keep its state, is written by pipeline \
                     {}; choose another pipeline name",
                    theirs.pipeline
                )));
            }
        }
        if let Some(changelog) = &changelog {
            state::check_changelog_policy(&self.inner.log, changelog).map_err(invalid)?;
        }
        let late_topic = window_topics.as_ref().map(|(late, _)| late);
        for topic in std::iter::once(&new.to)
            .chain(new.dlq_topic.as_ref())
            .chain(late_topic)
        {
            transform::ensure_topic(&self.inner.log, topic).await?;
        }
        if let Some(changelog) = &changelog {
            state::ensure_changelog(&self.inner.log, changelog, source.partitions.len() as u32)
                .await?;
        }
        let spec = PipelineSpec {
            id: runtime::unique_id(&new.name),
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

    /// The changelog topic of a pipeline's stateful step (its last), if it has one.
    async fn changelog_of(&self, spec: &PipelineSpec) -> Option<TopicName> {
        let last = spec.transforms.last()?;
        if last.plugin == transform::window::WINDOW_AGGREGATE {
            let window = transform::window::WindowSpec::parse(&last.config).ok()?;
            return window.changelog_topic(&spec.name).ok();
        }
        let loaded = self.inner.plugins.get(&last.plugin).await.ok()?;
        loaded
            .uses_state()
            .then(|| transform::plugin_changelog(&spec.name, &last.plugin).ok())
            .flatten()
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
            .states()
            .map(status_of)
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
        Some(pipelines.states().map(status_of).collect())
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
            .states()
            .map(|running| &running.spec)
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
            State::Paused
        } else {
            State::Starting
        };
        for p in component.state.partitions.len() as u32..partition_count {
            let running = &component.state;
            let status = Arc::new(StatusCell::new(PartitionStatus {
                partition: PartitionId(p),
                state: initial.clone(),
                next_offset: 0,
                high_watermark: 0,
                records_in: 0,
                records_out: 0,
                skipped: 0,
                dead_lettered: 0,
                restarts: 0,
                state_restored: None,
            }));
            if !running.spec.paused {
                let context = task::PartitionTask {
                    spec: running.spec.clone(),
                    partition: PartitionId(p),
                    log: self.inner.log.clone(),
                    meta: self.inner.meta.clone(),
                    plugins: self.inner.plugins.clone(),
                    limits: self.inner.limits,
                    restart: self.inner.restarts.of(&running.spec.name),
                    status: status.clone(),
                    stop: stop.clone(),
                };
                component.spawn(context.run());
            }
            component.state.partitions.push(status);
        }
    }
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

fn validate_name(name: &str) -> Result<(), PipelineError> {
    ResourceName::new(name)
        .map(drop)
        .ok_or_else(|| PipelineError::InvalidName {
            name: name.to_owned(),
        })
}

#[cfg(test)]
mod tests;
