//! Exports: a table's records continuously written to a Delta Lake table (Parquet files and
//! a transaction log) that Spark, DuckDB, Trino or pandas read without the appliance.
//!
//! ```text
//! table T (a topic; on a hub every edge's mirror <edge>.T too, found as they appear)
//!   --> one task per export: each source partition read from what the Delta table holds
//!       (its txn version) --> rows (rows.rs: virtual columns, the JSON values' fields,
//!       `_day`; misfits to the dead-letter topic) --> buffered until target-file-bytes or
//!       flush-interval --> Parquet files + one Delta commit whose txn actions carry the next
//!       offset of every source partition covered (table.rs)
//! ```
//!
//! Exactly once without a second system: the table's own commits say how far each source
//! partition is exported, so a start (after a crash, a pause, on another hub) reads that and
//! goes on from there; rows written but not committed are read again and their files never
//! referenced. An export lives in the runtime's registry like a pipeline: one supervised task,
//! the same states, restart policy and shutdown path. Specs live in meta "exports".
//! Delta Lake through delta-rs was chosen over Iceberg because delta-rs shares the appliance's
//! Arrow and DataFusion versions (docs/lake.md).

mod rows;
mod table;
mod task;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::log::{Log, LogError, Offset, PartitionId, TopicName};
use crate::meta::{Meta, MetaError, Table};
use crate::query::{LakeCatalog, LakeLocation};
use crate::runtime::{
    self, Classified, Component, Components, Recovery, Registry, ResourceName, RestartPolicies,
    State, StatusCell, Supervised,
};

/// The columns a table may be partitioned by.
pub const PARTITION_COLUMNS: [&str; 3] = [rows::EDGE, rows::DAY, rows::PARTITION];
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 << 20;
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);
/// Unreferenced files younger than this stay (a reader of an older version may want them).
pub const VACUUM_RETENTION: Duration = Duration::from_secs(7 * 86_400);
const MIN_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
const MIN_TARGET_FILE_BYTES: u64 = 1 << 20;
const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid export name {name:?}: {}", ResourceName::RULE)]
    InvalidName { name: String },
    #[error("no export named {name:?}")]
    NotFound { name: String },
    #[error("an export named {name:?} exists already")]
    AlreadyExists { name: String },
    #[error("export {name:?}: {problem}")]
    InvalidSpec { name: String, problem: String },
    #[error("the Delta table: {0}")]
    Table(String),
    #[error("records cannot become rows: {0}")]
    Rows(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl Classified for ExportError {
    fn recovery(&self) -> Recovery {
        match self {
            Self::Log(error) if error.is_disk_full() => Recovery::WhenDiskFreed,
            Self::InvalidName { .. }
            | Self::NotFound { .. }
            | Self::AlreadyExists { .. }
            | Self::InvalidSpec { .. }
            // A damaged batch is damaged the next time too.
            | Self::Rows(_) => Recovery::Never,
            Self::Table(_) | Self::Log(_) | Self::Meta(_) => Recovery::Restart,
        }
    }
}

/// Where an export starts in a source partition the table holds nothing of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartAt {
    /// The log's start: everything the partition still has (a backfill), then what comes.
    Earliest,
    /// The first record at or after this time (Unix milliseconds).
    Time(i64),
}

/// An export as created; stored in meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    pub name: String,
    pub id: u64,
    /// The table exported: a topic, and on a hub every edge's mirror of it.
    pub from: TopicName,
    /// The Delta table's location, as a URL (`file:///...`, `s3://bucket/prefix`).
    pub to: String,
    /// The object store's settings (`endpoint`, `region`, ...); secrets as references.
    #[serde(default)]
    pub storage: Vec<(String, String)>,
    pub partition_by: Vec<String>,
    pub start: StartAt,
    pub target_file_bytes: u64,
    pub flush_interval_ms: u64,
    /// How often small files are compacted and unreferenced ones deleted.
    pub maintenance_interval_ms: u64,
    /// Where records that do not fit the table's schema go, with the reason.
    pub dead_letter_topic: TopicName,
    pub paused: bool,
}

/// What a caller asks for; becomes an [`ExportSpec`]. `None` takes the default.
#[derive(Debug, Clone)]
pub struct NewExport {
    pub name: String,
    pub from: TopicName,
    pub to: String,
    pub storage: Vec<(String, String)>,
    pub partition_by: Option<Vec<String>>,
    pub start: StartAt,
    pub target_file_bytes: Option<u64>,
    pub flush_interval: Option<Duration>,
    pub maintenance_interval: Option<Duration>,
    pub dead_letter_topic: Option<TopicName>,
}

/// One source partition as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProgress {
    pub topic: TopicName,
    /// The edge whose mirror the topic is, if it is one.
    pub edge: Option<String>,
    pub partition: PartitionId,
    /// The next offset the table does not hold yet.
    pub exported: Offset,
    pub high_watermark: Offset,
    /// Offsets retention deleted before they were exported (said once, in the log too).
    pub lost: u64,
}

impl SourceProgress {
    pub fn lag(&self) -> u64 {
        self.high_watermark.0.saturating_sub(self.exported.0)
    }
}

/// What an export's task reports.
#[derive(Debug, Clone)]
pub struct ExportProgress {
    pub state: State,
    pub sources: Vec<SourceProgress>,
    pub table_version: Option<u64>,
    /// Rows, files and Parquet bytes this appliance committed since the task started.
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub dead_lettered: u64,
    pub last_commit_unix_ms: Option<i64>,
    /// Small files rewritten into bigger ones, and unreferenced files deleted, by maintenance.
    pub files_compacted: u64,
    pub files_vacuumed: u64,
    pub restarts: u32,
}

impl Supervised for ExportProgress {
    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    fn count_restart(&mut self) {
        self.restarts += 1;
    }
}

impl ExportSpec {
    /// Where the table lives; checked when the export was created.
    pub fn location(&self) -> Result<LakeLocation, ExportError> {
        LakeLocation::new(&self.to, self.storage.clone()).map_err(|problem| {
            ExportError::InvalidSpec {
                name: self.name.clone(),
                problem,
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct ExportStatus {
    pub spec: ExportSpec,
    pub progress: ExportProgress,
}

/// What the registry keeps of an export.
#[derive(Debug)]
struct Running {
    spec: ExportSpec,
    progress: Arc<StatusCell<ExportProgress>>,
}

/// Handle to the exports; cheap to clone.
#[derive(Debug, Clone)]
pub struct Exports {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Log,
    meta: Meta,
    restarts: RestartPolicies,
    exports: Registry<Running>,
    /// The query engine's `lake` schema: every export's table, and the secret providers
    /// that resolve the object stores' credentials each time a table is opened.
    lake: LakeCatalog,
}

impl Exports {
    /// Starts every stored export that is not paused; lists each table in `lake`.
    pub async fn open(
        log: Log,
        meta: Meta,
        restarts: RestartPolicies,
        lake: LakeCatalog,
        shutdown: CancellationToken,
    ) -> Result<Self, ExportError> {
        let this = Self {
            inner: Arc::new(Inner {
                log,
                meta,
                restarts,
                exports: Registry::new(shutdown),
                lake,
            }),
        };
        let stored: Vec<(String, ExportSpec)> = this.inner.meta.entries(Table::Exports)?;
        let mut exports = this.inner.exports.lock().await;
        for (name, spec) in stored {
            let running = this.launch(spec);
            exports.insert(name, running).await;
        }
        drop(exports);
        Ok(this)
    }

    /// Validates, stores durably and starts an export.
    pub async fn create(&self, new: NewExport) -> Result<ExportStatus, ExportError> {
        if ResourceName::new(&new.name).is_none() {
            return Err(ExportError::InvalidName { name: new.name });
        }
        let invalid = |problem: String| ExportError::InvalidSpec {
            name: new.name.clone(),
            problem,
        };
        let location = LakeLocation::new(&new.to, new.storage).map_err(invalid)?;
        // Settings whose references cannot be resolved, or that the object store refuses,
        // are said now rather than by the task's first failure.
        location
            .builder(self.inner.lake.secrets())
            .map_err(invalid)?;
        let to = location.url();
        let partition_by = new
            .partition_by
            .unwrap_or_else(|| vec![rows::EDGE.to_owned(), rows::DAY.to_owned()]);
        if let Some(other) = partition_by
            .iter()
            .find(|c| !PARTITION_COLUMNS.contains(&c.as_str()))
        {
            return Err(invalid(format!(
                "cannot partition by {other:?}: use any of {}",
                PARTITION_COLUMNS.join(", ")
            )));
        }
        let target_file_bytes = new.target_file_bytes.unwrap_or(DEFAULT_TARGET_FILE_BYTES);
        if target_file_bytes < MIN_TARGET_FILE_BYTES {
            return Err(invalid(format!(
                "target-file-bytes must be at least {MIN_TARGET_FILE_BYTES}"
            )));
        }
        let flush_interval = new.flush_interval.unwrap_or(DEFAULT_FLUSH_INTERVAL);
        if flush_interval < MIN_FLUSH_INTERVAL {
            return Err(invalid(format!(
                "the flush interval must be at least {} ms",
                MIN_FLUSH_INTERVAL.as_millis()
            )));
        }
        let maintenance_interval = new
            .maintenance_interval
            .unwrap_or(DEFAULT_MAINTENANCE_INTERVAL);
        if maintenance_interval < MIN_MAINTENANCE_INTERVAL {
            return Err(invalid(format!(
                "the maintenance interval must be at least {} s",
                MIN_MAINTENANCE_INTERVAL.as_secs()
            )));
        }
        let dead_letter_topic = match new.dead_letter_topic {
            Some(topic) => topic,
            None => TopicName::new(format!("{}.dead-letters", new.name))
                .map_err(|e| invalid(e.to_string()))?,
        };
        if dead_letter_topic == new.from {
            return Err(invalid(
                "the dead-letter topic must differ from the exported topic".to_owned(),
            ));
        }
        let mut exports = self.inner.exports.lock().await;
        if exports.contains(&new.name) {
            return Err(ExportError::AlreadyExists { name: new.name });
        }
        if let Some(other) = exports.states().find(|r| r.spec.to == to.as_str()) {
            return Err(invalid(format!(
                "export {} writes {to} already; two exports of one appliance would write the \
                 same source partitions twice",
                other.spec.name
            )));
        }
        crate::transform::ensure_topic(&self.inner.log, &dead_letter_topic).await?;
        let spec = ExportSpec {
            id: runtime::unique_id(&new.name),
            name: new.name,
            from: new.from,
            to: to.to_string(),
            storage: location.storage().to_vec(),
            partition_by,
            start: new.start,
            target_file_bytes,
            flush_interval_ms: flush_interval.as_millis() as u64,
            maintenance_interval_ms: maintenance_interval.as_millis() as u64,
            dead_letter_topic,
            paused: false,
        };
        self.inner
            .meta
            .put(Table::Exports, &spec.name, &spec)
            .await?;
        let running = self.launch(spec);
        let status = status_of(&running.state);
        exports.insert(status.spec.name.clone(), running).await;
        Ok(status)
    }

    pub async fn get(&self, name: &str) -> Result<ExportStatus, ExportError> {
        let exports = self.inner.exports.lock().await;
        exports
            .get(name)
            .map(|running| status_of(&running.state))
            .ok_or_else(|| ExportError::NotFound {
                name: name.to_owned(),
            })
    }

    pub async fn list(&self) -> Vec<ExportStatus> {
        self.inner
            .exports
            .lock()
            .await
            .states()
            .map(status_of)
            .collect()
    }

    /// Every export, unless one is being changed right now (for metrics, which must not wait).
    pub fn try_list(&self) -> Option<Vec<ExportStatus>> {
        let exports = self.inner.exports.try_lock()?;
        Some(exports.states().map(status_of).collect())
    }

    /// Stops an export after its commit in flight; it stays stopped across restarts. Rows not
    /// committed yet are read again when it resumes.
    pub async fn pause(&self, name: &str) -> Result<ExportStatus, ExportError> {
        self.set_paused(name, true).await
    }

    /// Restarts a paused or failed export.
    pub async fn resume(&self, name: &str) -> Result<ExportStatus, ExportError> {
        self.set_paused(name, false).await
    }

    /// Stops an export and forgets it. The table stays where it is, whole.
    pub async fn delete(&self, name: &str) -> Result<(), ExportError> {
        let mut exports = self.inner.exports.lock().await;
        take_stopped(&mut exports, name).await?;
        self.inner.meta.remove(Table::Exports, name).await?;
        self.inner.lake.remove(name);
        Ok(())
    }

    /// Export tasks still running, including any that outlived their export.
    pub fn running_tasks(&self) -> usize {
        self.inner.exports.running_tasks()
    }

    /// Stops every export's task (at shutdown).
    pub async fn stop_all(&self) {
        self.inner.exports.stop_all().await;
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<ExportStatus, ExportError> {
        let mut exports = self.inner.exports.lock().await;
        let mut spec = take_stopped(&mut exports, name).await?.state.spec;
        spec.paused = paused;
        let stored = self.inner.meta.put(Table::Exports, name, &spec).await;
        let relaunched = self.launch(spec);
        let status = status_of(&relaunched.state);
        exports.insert(name.to_owned(), relaunched).await;
        stored?;
        Ok(status)
    }

    fn launch(&self, spec: ExportSpec) -> Component<Running> {
        if let Ok(location) = spec.location() {
            self.inner
                .lake
                .insert(&spec.name, location, spec.from.clone());
        }
        let progress = Arc::new(StatusCell::new(ExportProgress {
            state: if spec.paused {
                State::Paused
            } else {
                State::Starting
            },
            sources: Vec::new(),
            table_version: None,
            rows: 0,
            files: 0,
            bytes: 0,
            dead_lettered: 0,
            last_commit_unix_ms: None,
            files_compacted: 0,
            files_vacuumed: 0,
            restarts: 0,
        }));
        let component = self.inner.exports.component(Running {
            spec: spec.clone(),
            progress: progress.clone(),
        });
        if !spec.paused {
            let task = task::ExportTask {
                restart: self.inner.restarts.of(&spec.name),
                spec,
                log: self.inner.log.clone(),
                secrets: self.inner.lake.secrets().clone(),
                progress,
                stop: component.stop_token(),
            };
            component.spawn(task.run());
        }
        component
    }
}

async fn take_stopped(
    exports: &mut Components<Running>,
    name: &str,
) -> Result<Component<Running>, ExportError> {
    exports
        .take_stopped(name)
        .await
        .ok_or_else(|| ExportError::NotFound {
            name: name.to_owned(),
        })
}

fn status_of(running: &Running) -> ExportStatus {
    ExportStatus {
        spec: running.spec.clone(),
        progress: running.progress.get(),
    }
}

#[cfg(test)]
mod tests;
