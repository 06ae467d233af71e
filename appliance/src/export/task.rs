//! One export's task: reads every source partition from where the table says it is, turns
//! the records into rows, and commits them in files of the target size or at the flush
//! interval, whichever comes first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Field;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rows::{self, RowBuilder};
use super::table::LakeTable;
use super::{ExportError, ExportProgress, ExportSpec, SourceProgress, StartAt};
use crate::log::{self, Log, Offset, PartitionId, Timestamp, TopicName};
use crate::runtime::{RestartPolicy, State, StatusCell, supervise};
use crate::security::secrets::SecretProviders;
use crate::transform::{Rejection, dead_letter};

/// Stored bytes read from one source partition at a time.
const CHUNK_BYTES: usize = 4 << 20;
/// How long an export with nothing new waits before it looks again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often the sources of the table (new edges' mirrors, new partitions) are looked up.
const SOURCE_CHECK: Duration = Duration::from_secs(2);

pub struct ExportTask {
    pub spec: ExportSpec,
    pub log: Log,
    pub secrets: SecretProviders,
    pub progress: Arc<StatusCell<ExportProgress>>,
    pub stop: CancellationToken,
    pub restart: RestartPolicy,
}

/// One source partition: where it is read, and how its records become rows.
struct Source {
    app_id: String,
    topic: TopicName,
    edge: Option<String>,
    partition: PartitionId,
    /// The next offset to read.
    next: Offset,
    /// The next offset the table holds (what was committed).
    committed: Offset,
    rows: RowBuilder,
    lost: u64,
}

/// Rows read but not committed yet.
#[derive(Default)]
struct Pending {
    batches: Vec<RecordBatch>,
    rows: u64,
    /// Arrow bytes buffered: a bound on memory, and close to the Parquet files' size times
    /// the compression ratio.
    bytes: u64,
    /// Application id -> the next offset the commit covers.
    covered: BTreeMap<String, (Offset, Offset)>,
    since: Option<Instant>,
}

impl ExportTask {
    pub async fn run(self) {
        let what = format!("export {}", self.spec.name);
        supervise(&self.progress, &self.stop, self.restart, &what, || {
            self.attempt()
        })
        .await;
    }

    async fn attempt(&self) -> Result<(), ExportError> {
        let location = self.spec.location()?;
        let mut table = LakeTable::open(&location, &self.secrets).await?;
        let mut values: Vec<Field> = if table.exists() {
            rows::value_fields(table.schema()?.as_ref())
        } else {
            Vec::new()
        };
        let mut sources: BTreeMap<String, Source> = BTreeMap::new();
        let mut pending = Pending::default();
        let mut sources_checked: Option<Instant> = None;
        let mut maintained = Instant::now();
        let maintenance_interval = Duration::from_millis(self.spec.maintenance_interval_ms);
        let flush_interval = Duration::from_millis(self.spec.flush_interval_ms);
        self.progress.update(|p| {
            p.state = State::Running;
            p.table_version = table.version();
        });
        loop {
            if self.stop.is_cancelled() {
                return Ok(());
            }
            if sources_checked.is_none_or(|at| at.elapsed() >= SOURCE_CHECK) {
                self.discover(&table, &mut sources).await?;
                sources_checked = Some(Instant::now());
            }
            let mut read_any = false;
            for source in sources.values_mut() {
                if self.read(source, &mut values, &mut pending).await? {
                    read_any = true;
                }
                if pending.bytes >= self.spec.target_file_bytes {
                    break;
                }
            }
            let due = pending
                .since
                .is_some_and(|since| since.elapsed() >= flush_interval);
            if pending.bytes >= self.spec.target_file_bytes || (due && !pending.covered.is_empty())
            {
                self.commit(&mut table, &values, &mut pending, &mut sources)
                    .await?;
                if maintained.elapsed() >= maintenance_interval {
                    let edges: BTreeSet<Option<&str>> =
                        sources.values().map(|s| s.edge.as_deref()).collect();
                    let edges: Vec<Option<&str>> = edges.into_iter().collect();
                    let done = table
                        .maintain(self.spec.target_file_bytes, super::VACUUM_RETENTION, &edges)
                        .await?;
                    maintained = Instant::now();
                    self.progress.update(|p| {
                        p.files_compacted += done.files_compacted;
                        p.files_vacuumed += done.files_deleted;
                        p.table_version = table.version();
                    });
                }
                continue;
            }
            if !read_any {
                let wait = pending.since.map_or(IDLE_POLL, |since| {
                    flush_interval
                        .saturating_sub(since.elapsed())
                        .min(IDLE_POLL)
                });
                tokio::select! {
                    _ = self.stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// Adds the source partitions the table has now and the task does not, each from what the
    /// Delta table holds of it (or from the export's start).
    async fn discover(
        &self,
        table: &LakeTable,
        sources: &mut BTreeMap<String, Source>,
    ) -> Result<(), ExportError> {
        for found in crate::query::sources_of(&self.log, self.spec.from.as_str()) {
            let Ok(config) = self.log.topic_config(&found.topic) else {
                continue;
            };
            for p in 0..config.partitions {
                let partition = PartitionId(p);
                let app_id = app_id(&found.topic, partition);
                if sources.contains_key(&app_id) {
                    continue;
                }
                let handle = self.log.partition(&found.topic, partition)?;
                let committed = match table.committed(&app_id).await? {
                    Some(next) => next,
                    None => match self.spec.start {
                        StartAt::Earliest => handle.log_start(),
                        StartAt::Time(ms) => handle
                            .offset_for_timestamp(Timestamp(ms))?
                            .unwrap_or_else(|| handle.high_watermark()),
                    },
                };
                sources.insert(
                    app_id.clone(),
                    Source {
                        app_id,
                        topic: found.topic.clone(),
                        edge: found.edge.clone(),
                        partition,
                        next: committed,
                        committed,
                        rows: RowBuilder::new(found.edge.clone(), p),
                        lost: 0,
                    },
                );
            }
        }
        self.report_sources(sources);
        Ok(())
    }

    /// Reads one chunk of a source partition into `pending`; whether there was anything.
    async fn read(
        &self,
        source: &mut Source,
        values: &mut Vec<Field>,
        pending: &mut Pending,
    ) -> Result<bool, ExportError> {
        let partition = self.log.partition(&source.topic, source.partition)?;
        let start = partition.log_start();
        if source.next < start {
            let lost = start.0 - source.next.0;
            tracing::warn!(
                export = %self.spec.name,
                topic = %source.topic,
                partition = source.partition.0,
                lost,
                "retention deleted records before they were exported; going on after them"
            );
            source.lost += lost;
            source.next = start;
        }
        let end = partition.high_watermark();
        if source.next >= end {
            return Ok(false);
        }
        let from = source.next;
        let chunk = partition.read(from, CHUNK_BYTES)?;
        let mut records = Vec::new();
        log::visit_all(chunk.batches, |view| {
            if view.offset >= from && view.offset < end {
                records.push(view.to_stored());
            }
        })
        .map_err(|e| {
            ExportError::Rows(format!(
                "{}/{} from offset {from}: a stored batch is damaged: {e}",
                source.topic, source.partition.0
            ))
        })?;
        let next = chunk.next_offset.min(end);
        if next <= from {
            return Ok(false);
        }
        let rows = source
            .rows
            .build(values, &records)
            .map_err(|e| ExportError::Rows(e.to_string()))?;
        if !rows.misfits.is_empty() {
            self.dead_letter(source, &rows.misfits).await?;
        }
        let count = rows.batch.num_rows() as u64;
        pending.rows += count;
        pending.bytes += rows.batch.get_array_memory_size() as u64;
        if count > 0 {
            pending.batches.push(rows.batch);
        }
        pending
            .covered
            .entry(source.app_id.clone())
            .and_modify(|(_, to)| *to = next)
            .or_insert((from, next));
        pending.since.get_or_insert_with(Instant::now);
        source.next = next;
        Ok(true)
    }

    /// Appends the records that do not fit to the dead-letter topic, durably, before the
    /// commit that goes past them.
    async fn dead_letter(
        &self,
        source: &Source,
        misfits: &[rows::Misfit],
    ) -> Result<(), ExportError> {
        let topic = &self.spec.dead_letter_topic;
        crate::transform::ensure_topic(&self.log, topic).await?;
        let config = self.log.topic_config(topic)?;
        let letters: Vec<log::Record> = misfits
            .iter()
            .map(|misfit| {
                let rejection = Rejection {
                    offset: misfit.record.offset.0 as i64,
                    plugin: "export".to_owned(),
                    message: misfit.reason.clone(),
                };
                dead_letter(
                    &self.spec.name,
                    (&source.topic, source.partition),
                    misfit.record.offset.0 as i64,
                    &misfit.record.record,
                    &rejection,
                )
            })
            .collect();
        let batch = log::encode(&letters, config.compression)
            .map_err(|e| ExportError::Rows(format!("a dead letter cannot be encoded: {e}")))?;
        let partition = PartitionId(source.partition.0 % config.partitions.max(1));
        self.log.append(topic, partition, batch).await?;
        let count = misfits.len() as u64;
        self.progress.update(|p| p.dead_lettered += count);
        Ok(())
    }

    /// Writes the pending rows as files and commits them with the offsets they cover.
    async fn commit(
        &self,
        table: &mut LakeTable,
        values: &[Field],
        pending: &mut Pending,
        sources: &mut BTreeMap<String, Source>,
    ) -> Result<(), ExportError> {
        let schema = rows::table_schema(values);
        if table.exists() {
            table.add_columns(values).await?;
        } else {
            table.create(&schema, &self.spec.partition_by).await?;
        }
        let covered: Vec<(String, Offset)> = pending
            .covered
            .iter()
            .map(|(app_id, (_, to))| (app_id.clone(), *to))
            .collect();
        let ranges: Vec<serde_json::Value> = pending
            .covered
            .iter()
            .filter_map(|(app_id, (from, to))| {
                let source = sources.get(app_id)?;
                Some(serde_json::json!({
                    "edge": source.edge,
                    "topic": source.topic.as_str(),
                    "partition": source.partition.0,
                    "from": from.0,
                    "to": to.0,
                }))
            })
            .collect();
        let info = serde_json::json!({ "export": self.spec.name, "ranges": ranges });
        let committed = table
            .commit(
                &pending.batches,
                &covered,
                info,
                self.spec.target_file_bytes,
            )
            .await?;
        for (app_id, next) in &covered {
            if let Some(source) = sources.get_mut(app_id) {
                source.committed = *next;
            }
        }
        let rows = pending.rows;
        *pending = Pending::default();
        self.progress.update(|p| {
            p.table_version = Some(committed.version);
            p.rows += rows;
            p.files += committed.files;
            p.bytes += committed.bytes;
            p.last_commit_unix_ms = Some(Timestamp::now().0);
        });
        self.report_sources(sources);
        Ok(())
    }

    fn report_sources(&self, sources: &BTreeMap<String, Source>) {
        let listed: Vec<SourceProgress> = sources
            .values()
            .map(|source| SourceProgress {
                topic: source.topic.clone(),
                edge: source.edge.clone(),
                partition: source.partition,
                exported: source.committed,
                high_watermark: self
                    .log
                    .partition(&source.topic, source.partition)
                    .map_or(source.committed, |p| p.high_watermark()),
                lost: source.lost,
            })
            .collect();
        self.progress.update(|p| p.sources = listed);
    }
}

/// The Delta application id of a source partition: the topic (a mirror's name carries its
/// edge) and the partition, the same on every hub that exports it.
pub fn app_id(topic: &TopicName, partition: PartitionId) -> String {
    format!("appliance:{topic}:{}", partition.0)
}
