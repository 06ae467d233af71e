//! Connectors: Kafka Connect's model in the appliance. A connector is a source or sink plugin
//! with its configuration; the plugin's `plan` splits it into at most `tasks.max` task
//! configurations, and the worker here runs one task per configuration and owns everything
//! operational: starting, restarting with backoff, pausing, status, positions and offsets,
//! the transform chain and the error policy.
//!
//! ```text
//! source task: plugin.poll -> transforms -> one append to partition (task mod N) of the
//!              connector's topic, its last record tagged with the task and the position
//!              -> progress (partition, end, position) in meta "connector-progress"
//! sink task:   partitions p with p mod tasks = task, from the group `connect-NAME`'s
//!              committed offset -> transforms -> plugin.put -> plugin.flush -> commit
//! ```
//!
//! Exactly once for sources without transactions ([`source`]): the position travels in the
//! same append as the records, and a restarting task takes the newest position it finds in
//! its partition's tail, so a crash at any point neither loses nor duplicates records. Sinks
//! are at least once; they get each record's topic, partition and offset to write
//! idempotently. Specs live in meta "connectors"; the connectors run in the runtime's
//! registry, and a task that fails is restarted by [`runtime::supervise`] under the connector's
//! restart policy (by default [`RestartPolicy::TASKS`]: after about 1, 2, 4, 8 and 16 s), then
//! stays FAILED with its reason until the operator restarts it.

mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::group::{Coordinator, GroupError, ResetTarget};
use crate::log::{Log, LogError, Offset, PartitionId, TopicName};
use crate::meta::{GroupId, Meta, MetaError, Table};
use crate::plugin::{Limits, Loaded, PluginError, PluginKind, Plugins, is_host_key};
use crate::runtime::{
    self, Component, Components, Failure, Recovery, Registry, ResourceName, RestartPolicies,
    RestartPolicy, State, StatusCell, Supervised,
};
use crate::transform::{self, ErrorPolicy, TaskError, TransformSpec, TransformsError};

pub use crate::transform::{POSITION_HEADER, SOURCE_TAG_HEADER};

pub const MAX_TASKS: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid connector name {name:?}: use 1 to 128 of a-z, A-Z, 0-9, '.', '_' and '-'")]
    InvalidName { name: String },
    #[error("no connector named {name:?}")]
    NotFound { name: String },
    #[error("a connector named {name:?} exists already")]
    AlreadyExists { name: String },
    #[error("connector {name:?}: {problem}")]
    InvalidSpec { name: String, problem: String },
    #[error("connector {name:?} is running; pause it before resetting its offsets")]
    NotPaused { name: String },
    #[error("plugin {plugin:?} is used by connector {connector:?}; delete the connector first")]
    PluginInUse { plugin: String, connector: String },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Group(#[from] GroupError),
}

/// A connector as created; stored in meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorSpec {
    pub name: String,
    /// Changes when a source's offsets are reset, so tags written before are not resumed from.
    pub id: u64,
    pub plugin: String,
    pub kind: PluginKind,
    /// The topic a source writes or a sink reads.
    pub topic: TopicName,
    /// The plugin's config with the operator's grants (`wasi.*`) and limits.
    pub config: Vec<(String, String)>,
    pub tasks_max: u32,
    pub transforms: Vec<TransformSpec>,
    pub errors: ErrorPolicy,
    pub dlq_topic: Option<TopicName>,
    pub paused: bool,
}

impl ConnectorSpec {
    /// The consumer group a sink connector commits its offsets under.
    pub fn group(&self) -> Result<GroupId, MetaError> {
        GroupId::new(format!("connect-{}", self.name))
    }
}

/// What a caller asks for; becomes a [`ConnectorSpec`].
#[derive(Debug, Clone)]
pub struct NewConnector {
    pub name: String,
    pub plugin: String,
    pub topic: TopicName,
    pub config: Vec<(String, String)>,
    pub tasks_max: u32,
    pub transforms: Vec<TransformSpec>,
    pub errors: ErrorPolicy,
    pub dlq_topic: Option<TopicName>,
}

#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub task: u32,
    pub state: State,
    pub restarts: u32,
    /// Records polled (source) or read (sink).
    pub records_in: u64,
    /// Records appended (source) or put and committed (sink).
    pub records_out: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
}

impl Supervised for TaskStatus {
    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    fn count_restart(&mut self) {
        self.restarts += 1;
    }
}

#[derive(Debug, Clone)]
pub struct ConnectorStatus {
    pub spec: ConnectorSpec,
    /// The connector as a whole: planning its tasks, or why it could not.
    pub state: State,
    pub tasks: Vec<TaskStatus>,
}

/// Where a connector's tasks are: each source task's stored position, or a sink's committed
/// offsets.
#[derive(Debug, Clone)]
pub enum ConnectorOffsets {
    Source(Vec<SourceOffset>),
    Sink(Vec<SinkOffset>),
}

#[derive(Debug, Clone)]
pub struct SourceOffset {
    pub task: u32,
    pub partition: PartitionId,
    /// The log offset up to which the task's output is accounted for.
    pub end: Offset,
    pub position: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct SinkOffset {
    pub partition: PartitionId,
    pub committed: Option<Offset>,
    pub high_watermark: Offset,
}

/// Where [`Connectors::reset_offsets`] moves a connector.
#[derive(Debug, Clone, Copy)]
pub enum OffsetReset {
    /// A source starts from scratch; a sink from the earliest offset.
    Earliest,
    /// A sink skips to the end of its topic (not available for sources).
    Latest,
}

/// A connector's live state, written by its runner: its own, and each planned task's.
#[derive(Debug, Clone)]
struct Live {
    state: State,
    tasks: Vec<Arc<StatusCell<TaskStatus>>>,
}

/// What the registry keeps of a connector.
#[derive(Debug)]
struct Running {
    spec: ConnectorSpec,
    live: Arc<StatusCell<Live>>,
}

/// What every task needs of the appliance.
#[derive(Debug, Clone)]
struct Context {
    log: Log,
    meta: Meta,
    plugins: Plugins,
    /// Sink tasks commit their group's offsets through it, as every consumer does.
    groups: Coordinator,
    limits: Limits,
    restarts: RestartPolicies,
}

/// Handle to the connectors; cheap to clone.
#[derive(Debug, Clone)]
pub struct Connectors {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    context: Context,
    connectors: Registry<Running>,
}

impl Connectors {
    /// Starts every stored connector that is not paused.
    pub async fn open(
        log: Log,
        meta: Meta,
        plugins: Plugins,
        groups: Coordinator,
        limits: Limits,
        restarts: RestartPolicies,
        shutdown: CancellationToken,
    ) -> Result<Self, ConnectError> {
        let stored: Vec<(String, ConnectorSpec)> = meta.entries(Table::Connectors)?;
        let this = Self {
            inner: Arc::new(Inner {
                context: Context {
                    log,
                    meta,
                    plugins,
                    groups,
                    limits,
                    restarts,
                },
                connectors: Registry::new(shutdown),
            }),
        };
        let mut connectors = this.inner.connectors.lock().await;
        for (name, spec) in stored {
            connectors.insert(name, this.launch(spec)).await;
        }
        drop(connectors);
        Ok(this)
    }

    /// Validates, stores durably and starts a connector. Its plan runs and each task is
    /// started once here, so a configuration the plugin rejects is reported to the caller.
    pub async fn create(&self, new: NewConnector) -> Result<ConnectorStatus, ConnectError> {
        validate_name(&new.name)?;
        let invalid = |problem: String| ConnectError::InvalidSpec {
            name: new.name.clone(),
            problem,
        };
        if !(1..=MAX_TASKS).contains(&new.tasks_max) {
            return Err(invalid(format!("tasks is 1 to {MAX_TASKS}")));
        }
        let context = &self.inner.context;
        let loaded = context.plugins.get(&new.plugin).await?;
        let kind = loaded.info.kind;
        if kind == PluginKind::Transform {
            return Err(invalid(format!(
                "plugin {:?} is a transform; a connector runs a source or sink plugin (use it \
                 with --transform)",
                new.plugin
            )));
        }
        let read_from = (kind == PluginKind::Sink).then_some(&new.topic);
        transform::check_error_policy(new.errors, new.dlq_topic.as_ref(), read_from)
            .map_err(invalid)?;
        if new.dlq_topic.as_ref() == Some(&new.topic) {
            return Err(invalid(
                "the dead-letter topic must differ from the connector's topic".to_owned(),
            ));
        }
        if kind == PluginKind::Sink {
            context.log.topic_info(&new.topic)?;
        }
        transform::validate_transforms(&context.plugins, context.limits, &new.transforms, None)
            .await
            .map_err(|e| match e {
                TransformsError::Plugin(e) => ConnectError::Plugin(e),
                TransformsError::Invalid(problem) => invalid(problem),
            })?;
        for config in plan_tasks(context, &loaded, &new.config, new.tasks_max).await? {
            match kind {
                PluginKind::Source => {
                    context
                        .plugins
                        .instantiate_source(&loaded, &config, context.limits, "validation", None)
                        .await?;
                }
                _ => {
                    context
                        .plugins
                        .instantiate_sink(&loaded, &config, context.limits, "validation")
                        .await?;
                }
            }
        }
        let mut connectors = self.inner.connectors.lock().await;
        if connectors.contains(&new.name) {
            return Err(ConnectError::AlreadyExists { name: new.name });
        }
        if kind == PluginKind::Source {
            transform::ensure_topic(&context.log, &new.topic).await?;
        }
        if let Some(dlq) = &new.dlq_topic {
            transform::ensure_topic(&context.log, dlq).await?;
        }
        let spec = ConnectorSpec {
            id: runtime::unique_id(&new.name),
            name: new.name,
            plugin: new.plugin,
            kind,
            topic: new.topic,
            config: new.config,
            tasks_max: new.tasks_max,
            transforms: new.transforms,
            errors: new.errors,
            dlq_topic: new.dlq_topic,
            paused: false,
        };
        context
            .meta
            .put(Table::Connectors, &spec.name, &spec)
            .await?;
        let running = self.launch(spec);
        let status = status_of(&running.state);
        connectors.insert(status.spec.name.clone(), running).await;
        Ok(status)
    }

    pub async fn get(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        let connectors = self.inner.connectors.lock().await;
        connectors
            .get(name)
            .map(|running| status_of(&running.state))
            .ok_or_else(|| ConnectError::NotFound {
                name: name.to_owned(),
            })
    }

    pub async fn list(&self) -> Vec<ConnectorStatus> {
        let connectors = self.inner.connectors.lock().await;
        connectors.states().map(status_of).collect()
    }

    /// Every connector, unless one is being changed right now (for metrics, which must not
    /// wait).
    pub fn try_list(&self) -> Option<Vec<ConnectorStatus>> {
        let connectors = self.inner.connectors.try_lock()?;
        Some(connectors.states().map(status_of).collect())
    }

    /// Stops a connector's tasks; it stays stopped across restarts of the appliance.
    pub async fn pause(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        self.relaunch(name, |spec| spec.paused = true).await
    }

    pub async fn resume(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        self.relaunch(name, |spec| spec.paused = false).await
    }

    /// Stops the connector and starts it again: plans anew, and failed tasks get a fresh
    /// round of restarts.
    pub async fn restart(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        self.relaunch(name, |_| {}).await
    }

    /// Stops a connector and forgets it, its positions and (for a sink) its group's offsets.
    /// What it wrote stays in its topic.
    pub async fn delete(&self, name: &str) -> Result<(), ConnectError> {
        let mut connectors = self.inner.connectors.lock().await;
        let running = take_stopped(&mut connectors, name).await?.state;
        let meta = &self.inner.context.meta;
        meta.remove(Table::Connectors, name).await?;
        meta.remove_prefix(
            Table::ConnectorProgress,
            &source::key_prefix(running.spec.id),
        )
        .await?;
        if running.spec.kind == PluginKind::Sink {
            meta.delete_group_offsets(&running.spec.group()?).await?;
        }
        self.inner
            .context
            .plugins
            .forget_counters(&format!("connector/{name}/"));
        Ok(())
    }

    /// Each source task's stored position, or the sink group's committed offsets.
    pub async fn offsets(&self, name: &str) -> Result<ConnectorOffsets, ConnectError> {
        let spec = self.get(name).await?.spec;
        let context = &self.inner.context;
        match spec.kind {
            PluginKind::Sink => {
                let group = spec.group()?;
                let partitions = context.log.topic_config(&spec.topic)?.partitions;
                let mut offsets = Vec::with_capacity(partitions as usize);
                for p in 0..partitions {
                    let committed = context
                        .meta
                        .committed_offset(&group, spec.topic.as_str(), p)?
                        .map(|c| Offset(c.offset));
                    let high_watermark = context
                        .log
                        .partition(&spec.topic, PartitionId(p))?
                        .high_watermark();
                    offsets.push(SinkOffset {
                        partition: PartitionId(p),
                        committed,
                        high_watermark,
                    });
                }
                Ok(ConnectorOffsets::Sink(offsets))
            }
            _ => Ok(ConnectorOffsets::Source(source::stored_offsets(
                &context.meta,
                spec.id,
            )?)),
        }
    }

    /// Moves a paused connector: a source forgets its positions (the next start begins anew,
    /// as on its first start); a sink's group moves to the start or end of the topic.
    pub async fn reset_offsets(
        &self,
        name: &str,
        to: OffsetReset,
    ) -> Result<ConnectorOffsets, ConnectError> {
        {
            let mut connectors = self.inner.connectors.lock().await;
            let running = &mut connectors
                .get_mut(name)
                .ok_or_else(|| ConnectError::NotFound {
                    name: name.to_owned(),
                })?
                .state;
            if !running.spec.paused {
                return Err(ConnectError::NotPaused {
                    name: name.to_owned(),
                });
            }
            let meta = &self.inner.context.meta;
            match (running.spec.kind, to) {
                (PluginKind::Sink, to) => {
                    let target = match to {
                        OffsetReset::Earliest => ResetTarget::Earliest,
                        OffsetReset::Latest => ResetTarget::Latest,
                    };
                    let group = running.spec.group()?;
                    self.inner
                        .context
                        .groups
                        .reset(&group, &running.spec.topic, &[], target)
                        .await?;
                }
                (_, OffsetReset::Latest) => {
                    return Err(ConnectError::InvalidSpec {
                        name: name.to_owned(),
                        problem: "a source's position is the plugin's own; it can only be \
                                  reset to earliest (start anew)"
                            .to_owned(),
                    });
                }
                (_, OffsetReset::Earliest) => {
                    let old = running.spec.id;
                    running.spec.id = runtime::unique_id(name);
                    meta.put(Table::Connectors, name, &running.spec).await?;
                    meta.remove_prefix(Table::ConnectorProgress, &source::key_prefix(old))
                        .await?;
                }
            }
        }
        self.offsets(name).await
    }

    /// The first connector that uses `plugin`, as its connector or in its transforms.
    pub async fn user_of(&self, plugin: &str) -> Option<String> {
        let connectors = self.inner.connectors.lock().await;
        connectors
            .states()
            .map(|running| &running.spec)
            .find(|spec| {
                spec.plugin == plugin || spec.transforms.iter().any(|t| t.plugin == plugin)
            })
            .map(|spec| spec.name.clone())
    }

    /// Stops every connector's tasks (at shutdown).
    pub async fn stop_all(&self) {
        self.inner.connectors.stop_all().await;
    }

    async fn relaunch(
        &self,
        name: &str,
        change: impl FnOnce(&mut ConnectorSpec),
    ) -> Result<ConnectorStatus, ConnectError> {
        let mut connectors = self.inner.connectors.lock().await;
        let mut spec = take_stopped(&mut connectors, name).await?.state.spec;
        change(&mut spec);
        let stored = self
            .inner
            .context
            .meta
            .put(Table::Connectors, name, &spec)
            .await;
        let running = self.launch(spec);
        let status = status_of(&running.state);
        connectors.insert(name.to_owned(), running).await;
        stored?;
        Ok(status)
    }

    fn launch(&self, spec: ConnectorSpec) -> Component<Running> {
        let state = if spec.paused {
            State::Paused
        } else {
            State::Starting
        };
        let live = Arc::new(StatusCell::new(Live {
            state,
            tasks: Vec::new(),
        }));
        let running = self.inner.connectors.component(Running { spec, live });
        if !running.state.spec.paused {
            running.spawn(run_connector(
                self.inner.context.clone(),
                Arc::new(running.state.spec.clone()),
                running.state.live.clone(),
                running.stop_token(),
            ));
        }
        running
    }
}

/// Plans the connector's tasks and runs them until stopped.
async fn run_connector(
    context: Context,
    spec: Arc<ConnectorSpec>,
    live: Arc<StatusCell<Live>>,
    stop: CancellationToken,
) {
    let planned = tokio::select! {
        planned = plan(&context, &spec) => planned,
        _ = stop.cancelled() => return,
    };
    let tasks = match planned {
        Ok(tasks) => tasks,
        Err(error) => {
            tracing::warn!(connector = %spec.name, %error, "connector could not plan its tasks");
            let failure = Failure {
                recovery: Recovery::Never,
                ..Failure::of(&error)
            };
            live.update(|live| live.state = State::Failed { failure });
            return;
        }
    };
    let cells: Vec<Arc<StatusCell<TaskStatus>>> = (0..tasks.len() as u32)
        .map(|task| {
            Arc::new(StatusCell::new(TaskStatus {
                task,
                state: State::Starting,
                restarts: 0,
                records_in: 0,
                records_out: 0,
                skipped: 0,
                dead_lettered: 0,
            }))
        })
        .collect();
    live.update(|live| {
        live.tasks = cells.clone();
        live.state = State::Running;
    });
    let count = tasks.len() as u32;
    let restart = context.restarts.of(&spec.name);
    let handles: Vec<_> = tasks
        .into_iter()
        .zip(cells)
        .enumerate()
        .map(|(index, (config, cell))| {
            let task = Task {
                context: context.clone(),
                spec: spec.clone(),
                index: index as u32,
                tasks: count,
                config,
                cell,
                stop: stop.clone(),
            };
            tokio::spawn(task.supervise(restart))
        })
        .collect();
    for handle in handles {
        if let Err(error) = handle.await {
            tracing::error!(connector = %spec.name, %error, "a connector task ended abnormally");
        }
    }
    live.update(|live| live.state = State::Paused);
}

async fn plan(
    context: &Context,
    spec: &ConnectorSpec,
) -> Result<Vec<Vec<(String, String)>>, TaskError> {
    let loaded = context.plugins.get(&spec.plugin).await?;
    Ok(plan_tasks(context, &loaded, &spec.config, spec.tasks_max).await?)
}

/// The plugin's task configurations, each as its instance gets it: the operator's grants and
/// limits from the connector's config, then the task's own keys from the plan.
async fn plan_tasks(
    context: &Context,
    loaded: &Loaded,
    config: &[(String, String)],
    tasks_max: u32,
) -> Result<Vec<Vec<(String, String)>>, PluginError> {
    let tasks = context
        .plugins
        .plan(loaded, config, context.limits, tasks_max)
        .await?;
    let host_keys: Vec<&(String, String)> =
        config.iter().filter(|(key, _)| is_host_key(key)).collect();
    Ok(tasks
        .into_iter()
        .map(|task| host_keys.iter().copied().cloned().chain(task).collect())
        .collect())
}

/// One task of a connector, restarted with backoff when it fails.
struct Task {
    context: Context,
    spec: Arc<ConnectorSpec>,
    index: u32,
    /// How many tasks the plan made (sink tasks divide the partitions among them).
    tasks: u32,
    config: Vec<(String, String)>,
    cell: Arc<StatusCell<TaskStatus>>,
    stop: CancellationToken,
}

impl Task {
    async fn supervise(self, policy: RestartPolicy) {
        let what = format!("connector {}/{}", self.spec.name, self.index);
        runtime::supervise(&self.cell, &self.stop, policy, &what, || self.run()).await;
    }

    async fn run(&self) -> Result<(), TaskError> {
        match self.spec.kind {
            PluginKind::Sink => sink::run(self).await,
            _ => source::run(self).await,
        }
    }

    /// The task's plugin, the label of its instances in logs and metrics, and its transforms.
    async fn prepare(&self) -> Result<(Arc<Loaded>, String, Vec<transform::Step>), TaskError> {
        let context = &self.context;
        let loaded = context.plugins.get(&self.spec.plugin).await?;
        let label = format!("connector/{}/{}", self.spec.name, self.index);
        let steps = transform::start_chain(
            &context.plugins,
            context.limits,
            &self.spec.transforms,
            &label,
            None,
        )
        .await?;
        Ok((loaded, label, steps))
    }
}

/// Takes a connector out of the registry once its tasks have stopped.
async fn take_stopped(
    connectors: &mut Components<Running>,
    name: &str,
) -> Result<Component<Running>, ConnectError> {
    connectors
        .take_stopped(name)
        .await
        .ok_or_else(|| ConnectError::NotFound {
            name: name.to_owned(),
        })
}

fn status_of(running: &Running) -> ConnectorStatus {
    running.live.read(|live| ConnectorStatus {
        spec: running.spec.clone(),
        state: live.state.clone(),
        tasks: live.tasks.iter().map(|cell| cell.get()).collect(),
    })
}

fn validate_name(name: &str) -> Result<(), ConnectError> {
    ResourceName::new(name)
        .map(drop)
        .ok_or_else(|| ConnectError::InvalidName {
            name: name.to_owned(),
        })
}

/// Output batches are cut well below the topic's `max-message-bytes`.
const OUTPUT_BATCH_SHARE: usize = 2;

/// Appends `entries` (a source index and a record each) to `partition` of `topic`, durably, in
/// batches cut well below the topic's `max-message-bytes`, never between two records of one
/// source index. `seal` may add to each batch's last record, given the last source index the
/// batch completes (the last batch completes up to `last`). Returns the offset after the last
/// batch, if anything was written.
async fn append_in_batches(
    log: &Log,
    topic: &TopicName,
    partition: PartitionId,
    entries: Vec<(i64, crate::log::Record)>,
    last: u64,
    mut seal: impl FnMut(u64, &mut crate::log::Record) -> Result<(), TaskError>,
) -> Result<Option<Offset>, TaskError> {
    let config = log.topic_config(topic).map_err(TaskError::opening(topic))?;
    let target = log
        .partition(topic, partition)
        .map_err(TaskError::opening(topic))?;
    let budget = config.max_message_bytes as usize / OUTPUT_BATCH_SHARE;
    let mut end = None;
    for ((_, to), mut batch) in transform::cut_by_size(entries, budget, (0, last)) {
        let Some((_, record)) = batch.last_mut() else {
            continue;
        };
        seal(to, record)?;
        let records: Vec<crate::log::Record> = batch.into_iter().map(|(_, r)| r).collect();
        let encoded = crate::log::encode(&records, config.compression)
            .map_err(TaskError::batch(|| format!("encoding records for {topic}")))?;
        let outcome = target
            .append(encoded)
            .await
            .map_err(TaskError::log_with(|| format!("appending to {topic}")))?;
        end = Some(outcome.last_offset.next());
    }
    Ok(end)
}

/// Appends records to partition `index mod N` of `topic` (created with the topic defaults
/// when missing), durably: records a transform re-routed, and dead letters.
async fn append_elsewhere(
    log: &Log,
    topic: &TopicName,
    index: u32,
    records: Vec<crate::log::Record>,
) -> Result<(), TaskError> {
    if records.is_empty() {
        return Ok(());
    }
    transform::ensure_topic(log, topic)
        .await
        .map_err(TaskError::opening(topic))?;
    let partitions = log
        .topic_config(topic)
        .map_err(TaskError::opening(topic))?
        .partitions;
    let last = records.len() as u64 - 1;
    let entries = (0..).zip(records).collect();
    let partition = PartitionId(index % partitions.max(1));
    append_in_batches(log, topic, partition, entries, last, |_, _| Ok(())).await?;
    Ok(())
}

/// The wait before a connector task looks for work again after finding none: from 10 ms,
/// doubling up to 250 ms while it goes on finding none.
#[derive(Debug)]
struct Idle(Duration);

impl Idle {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(250);

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }

    fn reset(&mut self) {
        self.0 = Self::MIN;
    }
}

impl Default for Idle {
    fn default() -> Self {
        Self(Self::MIN)
    }
}

/// Backoff after the `attempt`th failed try of something the task retries itself.
fn retry_backoff(attempt: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(5);
    (Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(16))).min(MAX)
}

#[cfg(test)]
mod tests;
