//! SQL over topics with Apache DataFusion: a topic is a table, and on a hub the table `T` is
//! the union of every edge's mirror `<edge>.T` (and a local topic `T`, if any).
//!
//! ```text
//! SQL -> SessionContext with one TopicTable per table name (schema inferred lazily, only
//!        for the tables a query names) -> DataFusion plans; filters on _timestamp, _edge and
//!        _partition reach TopicTable::scan -> one scan partition per (topic, partition) kept:
//!        read from the time index's offset to the end: a sealed segment with a columnar form
//!        from its Arrow frames (or skipped by its statistics; sidecar.rs), the rest decoded
//!        from the log, the named JSON fields -> Arrow (scan.rs, json.rs) -> DataFusion's
//!        operators -> Answer (batches + schema) -> table/JSON/CSV/IPC
//! scan of a sealed segment's JSON -> Columnar writes its form after the query, one at a time
//! ```
//!
//! Columns: `_edge` (the edge a mirror belongs to, null for a local topic), `_topic`,
//! `_partition`, `_offset`, `_timestamp`, `_key`, then the fields of the JSON values as
//! inferred from the newest records of each partition (`appliance query --describe TABLE`).
//! A value that is not a JSON object gives nulls in the value columns; a corrupt segment
//! fails the query with the log's error rather than returning part of the answer.

mod columns;
mod json;
mod lake;
mod limits;
mod scan;
mod sidecar;
mod table;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::log::{Log, MirrorName, TopicName};
use limits::{Governor, YieldBetweenBatches};
pub use limits::{QueryLimits, query_runtime};
use sidecar::Columnar;

const MIB: usize = 1024 * 1024;
pub use columns::{Source, VIRTUAL_COLUMNS};
pub use json::decode_rates;
pub use lake::{LAKE, LakeCatalog, LakeLocation};
pub use table::{ScanCache, TopicTable};

/// How often a live query looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("the SQL does not parse: {0}")]
    Syntax(String),
    #[error("{0} (appliance topic list shows the topics; a hub's table T unites every <edge>.T)")]
    UnknownTable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the query could not read the log: {0}")]
    Data(String),
    #[error("the query failed: {0}")]
    Failed(String),
    #[error("{0}")]
    Render(String),
    #[error("{0}")]
    ResourcesExhausted(String),
    #[error(
        "the query did not finish within query.timeout-ms ({} ms, waiting for one of \
         query.max-concurrent = {concurrent} slots included): narrow it or raise the setting",
        limit.as_millis()
    )]
    Timeout { limit: Duration, concurrent: usize },
    #[error("the appliance is shutting down")]
    ShuttingDown,
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        match error.find_root() {
            DataFusionError::SQL(parse, _) => Self::Syntax(parse.to_string()),
            DataFusionError::Plan(message)
                if message.starts_with("table '") && message.ends_with("' not found") =>
            {
                // DataFusion names it in its default catalog and schema, which nobody typed.
                Self::UnknownTable(message.replacen("'datafusion.public.", "'", 1))
            }
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => Self::Invalid(error.strip_backtrace()),
            DataFusionError::ResourcesExhausted(message) => {
                Self::ResourcesExhausted(message.clone())
            }
            DataFusionError::External(inner) => match inner.downcast_ref::<QueryError>() {
                Some(Self::Data(message)) => Self::Data(message.clone()),
                _ => Self::Failed(error.strip_backtrace()),
            },
            _ => Self::Failed(error.strip_backtrace()),
        }
    }
}

/// What a query returned; its batches stay reserved in the query's memory pool until it is
/// dropped.
#[derive(Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    _memory: MemoryReservation,
}

impl Answer {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Arrow IPC stream bytes: what tools read without knowing the schema in advance.
    pub fn to_ipc(&self) -> Result<Vec<u8>, QueryError> {
        self.ipc_within(usize::MAX)
    }

    /// The rows as a JSON array of objects (absent keys for nulls).
    pub fn to_json(&self) -> Result<String, QueryError> {
        self.json_within(usize::MAX)
    }

    /// The renderings `format` asks for, refused once together they pass `max_bytes`, so
    /// that an answer too large for any client fails with the setting to change rather than
    /// being encoded whole first.
    pub fn render(&self, format: AnswerFormat, max_bytes: usize) -> Result<Rendered, QueryError> {
        let mut rendered = Rendered::default();
        if format.arrow() {
            rendered.arrow_ipc = self.ipc_within(max_bytes)?;
        }
        if format.json() {
            rendered.json = self.json_within(max_bytes - rendered.arrow_ipc.len())?;
        }
        Ok(rendered)
    }

    fn ipc_within(&self, max_bytes: usize) -> Result<Vec<u8>, QueryError> {
        let mut writer = StreamWriter::try_new(Vec::new(), &self.schema).map_err(render_error)?;
        for batch in &self.batches {
            writer.write(batch).map_err(render_error)?;
            check_answer_size(writer.get_ref().len(), max_bytes)?;
        }
        writer.finish().map_err(render_error)?;
        writer.into_inner().map_err(render_error)
    }

    fn json_within(&self, max_bytes: usize) -> Result<String, QueryError> {
        let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
        for batch in &self.batches {
            writer.write(batch).map_err(render_error)?;
            check_answer_size(writer.get_ref().len(), max_bytes)?;
        }
        writer.finish().map_err(render_error)?;
        String::from_utf8(writer.into_inner()).map_err(|e| QueryError::Render(e.to_string()))
    }
}

/// Which renderings of an answer a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFormat {
    ArrowAndJson,
    Arrow,
    Json,
}

impl AnswerFormat {
    fn arrow(self) -> bool {
        matches!(self, Self::ArrowAndJson | Self::Arrow)
    }

    fn json(self) -> bool {
        matches!(self, Self::ArrowAndJson | Self::Json)
    }
}

/// An answer encoded for a client.
#[derive(Debug, Default)]
pub struct Rendered {
    pub arrow_ipc: Vec<u8>,
    pub json: String,
}

fn render_error(error: datafusion::arrow::error::ArrowError) -> QueryError {
    QueryError::Render(error.to_string())
}

fn check_answer_size(bytes: usize, max_bytes: usize) -> Result<(), QueryError> {
    if bytes > max_bytes {
        return Err(QueryError::ResourcesExhausted(format!(
            "the answer is larger than query.max-answer-mb allows ({} MiB): add a LIMIT, select \
             fewer columns or rows, aggregate, or raise the setting",
            max_bytes / MIB
        )));
    }
    Ok(())
}

/// A table's sources and columns, as `--describe` shows them.
#[derive(Debug, Clone)]
pub struct TableDescription {
    pub table: String,
    pub topics: Vec<String>,
    pub schema: SchemaRef,
    /// Whether the value columns are declared (`topic create --schema`) or inferred.
    pub declared: bool,
}

/// Runs SQL over the log's topics within its limits; cheap to clone.
#[derive(Debug, Clone)]
pub struct Query {
    log: Log,
    read: Arc<AtomicU64>,
    governor: Arc<Governor>,
    lake: LakeCatalog,
    /// Sealed segments' columnar forms; none: every scan parses the JSON values.
    columnar: Option<Arc<Columnar>>,
}

/// The writer of sealed segments' columnar forms; none, when its thread cannot start, and
/// every scan parses the JSON values.
fn start_columnar() -> Option<Arc<Columnar>> {
    Columnar::new()
        .inspect_err(|error| tracing::warn!(%error, "columnar forms are off"))
        .ok()
        .map(Arc::new)
}

impl Query {
    /// An engine with the default limits that runs queries on the current runtime.
    pub fn new(log: Log) -> Self {
        Self::with_limits(
            log,
            QueryLimits::default(),
            tokio::runtime::Handle::current(),
        )
    }

    /// An engine bounded by `limits` that runs queries on `runtime` (see [`query_runtime`]).
    pub fn with_limits(log: Log, limits: QueryLimits, runtime: tokio::runtime::Handle) -> Self {
        Self {
            log,
            read: Arc::default(),
            columnar: start_columnar(),
            governor: Arc::new(Governor::new(limits, runtime)),
            lake: LakeCatalog::default(),
        }
    }

    /// The engine, reading (and writing) sealed segments' columnar forms or not (`false`:
    /// every scan parses the JSON values).
    pub fn with_columnar(self, enabled: bool) -> Self {
        Self {
            columnar: if enabled { start_columnar() } else { None },
            ..self
        }
    }

    /// Whether every columnar form asked for so far is written (or given up); the count of
    /// those written.
    pub fn columnar_forms(&self) -> (bool, u64) {
        self.columnar
            .as_ref()
            .map_or((true, 0), |columnar| (columnar.idle(), columnar.written()))
    }

    /// The engine, with the exported Delta tables of `lake` as the schema `lake`.
    pub fn with_lake(self, lake: LakeCatalog) -> Self {
        Self { lake, ..self }
    }

    /// Largest encoded answer ([`Answer::render`]).
    pub fn max_answer_bytes(&self) -> usize {
        self.governor.limits.answer_bytes
    }

    /// Memory the queries running now have reserved.
    pub fn memory_reserved(&self) -> usize {
        self.governor.memory_reserved()
    }

    /// Bytes of stored batches this engine's scans have read (what pruning saves shows here).
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Every table name and the topics behind it: each topic by its own name, and on a hub
    /// each `T` of the mirrors `<edge>.T` (with a local `T`, if any).
    fn tables(&self) -> BTreeMap<String, Vec<Source>> {
        tables_of(self.log.list_topics())
    }

    /// A context with every table; `live` tables keep what their scans decoded for the next
    /// run of the same query.
    fn context(&self, live: bool) -> Result<SessionContext, QueryError> {
        let config = SessionConfig::new().with_target_partitions(
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        );
        // No spill directory: a query that needs more memory than its pool fails instead.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(self.governor.memory_pool())
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(YieldBetweenBatches))
            .build();
        let context = SessionContext::new_with_state(state);
        for (name, sources) in self.tables() {
            let read = Arc::clone(&self.read);
            let table = if live {
                TopicTable::cached(
                    self.log.clone(),
                    sources,
                    read,
                    self.columnar.clone(),
                    Arc::default(),
                )
            } else {
                TopicTable::new(self.log.clone(), sources, read, self.columnar.clone())
            };
            context.register_table(TableReference::bare(name), Arc::new(table))?;
        }
        Ok(context)
    }

    /// Runs one read-only SQL statement within the limits; dropping the future stops it.
    pub async fn execute(&self, sql: &str) -> Result<Answer, QueryError> {
        let query = self.clone();
        let sql = sql.to_owned();
        self.governor
            .run(async move {
                let context = query.context(false)?;
                if lake::names_lake(&sql) {
                    query.lake.register(&context, &sql).await?;
                }
                run(&context, &sql).await
            })
            .await
    }

    /// Runs `sql` now and again whenever the log gains records (checked every 200 ms), each
    /// answer on the channel, until the receiver is dropped, `stop` is cancelled or a run
    /// fails. Runs after the first read only the records appended since the one before (the
    /// decoded ones stay in memory, less those older than a `_timestamp >=` bound); the tables
    /// are the ones that exist when the live query starts. Each run is bounded like
    /// [`Query::execute`]; a receiver dropped during a run stops it.
    pub fn follow(
        &self,
        sql: String,
        stop: CancellationToken,
    ) -> mpsc::Receiver<Result<Answer, QueryError>> {
        let (answers, receiver) = mpsc::channel(2);
        let query = self.clone();
        tokio::spawn(async move {
            let mut context: Option<SessionContext> = None;
            let mut seen: Option<BTreeMap<TopicName, Vec<u64>>> = None;
            loop {
                let marks = query.high_watermarks();
                if seen.as_ref() != Some(&marks) {
                    // A topic that appeared or went (an edge's first mirror on a hub) changes
                    // what the tables unite: the next run plans on a new context.
                    if seen
                        .as_ref()
                        .is_none_or(|seen| !seen.keys().eq(marks.keys()))
                    {
                        context = None;
                    }
                    seen = Some(marks);
                    let current = match &context {
                        Some(current) => current.clone(),
                        None => match query.context(true) {
                            Ok(made) => context.insert(made).clone(),
                            Err(error) => {
                                let _ = answers.send(Err(error)).await;
                                return;
                            }
                        },
                    };
                    let sql = sql.clone();
                    let this_run = query.governor.run(async move { run(&current, &sql).await });
                    let answer = tokio::select! {
                        answer = this_run => answer,
                        () = stop.cancelled() => return,
                        () = answers.closed() => return,
                    };
                    let failed = answer.is_err();
                    if answers.send(answer).await.is_err() || failed {
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                    () = stop.cancelled() => return,
                    () = answers.closed() => return,
                }
            }
        });
        receiver
    }

    /// Every topic's partitions' high watermarks: a live query runs again when one moves.
    fn high_watermarks(&self) -> BTreeMap<TopicName, Vec<u64>> {
        self.log
            .list_topics()
            .into_iter()
            .map(|topic| {
                let marks = (0..topic.config.partitions)
                    .map(|p| {
                        self.log
                            .partition(&topic.name, crate::log::PartitionId(p))
                            .map_or(0, |partition| partition.high_watermark().0)
                    })
                    .collect();
                (topic.name, marks)
            })
            .collect()
    }

    /// The topics `sql` reads: every topic behind every table it names (so on a hub, every
    /// edge's mirror a table unites); for `lake.NAME`, the table export NAME exports (by its
    /// name too, so a table whose topics are gone still needs read on them). Names that are no
    /// table are left to the query to report.
    pub fn scanned_topics(&self, sql: &str) -> Result<Vec<TopicName>, QueryError> {
        let state = SessionStateBuilder::new().with_default_features().build();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        let tables = self.tables();
        let mut topics: Vec<TopicName> = Vec::new();
        for reference in state.resolve_table_references(&statement)? {
            let table = match reference.schema() {
                Some(LAKE) => match self.lake.exported(reference.table()) {
                    Some(exported) => {
                        topics.push(exported.clone());
                        exported.to_string()
                    }
                    None => continue,
                },
                _ => reference.table().to_owned(),
            };
            if let Some(sources) = tables.get(&table) {
                topics.extend(sources.iter().map(|source| source.topic.clone()));
            }
        }
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    /// A table's topics and columns (the value columns as inferred now).
    pub fn describe(&self, table: &str) -> Result<TableDescription, QueryError> {
        let sources = self
            .tables()
            .remove(table)
            .ok_or_else(|| QueryError::UnknownTable(format!("table '{table}' not found")))?;
        let topics = sources.iter().map(|s| s.topic.to_string()).collect();
        let table_provider = TopicTable::new(
            self.log.clone(),
            sources,
            Arc::clone(&self.read),
            self.columnar.clone(),
        );
        Ok(TableDescription {
            table: table.to_owned(),
            topics,
            schema: table_provider.inferred_schema()?,
            declared: table_provider.declared().is_some(),
        })
    }
}

async fn run(context: &SessionContext, sql: &str) -> Result<Answer, QueryError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = context.sql_with_options(sql, options).await?;
    let schema = Arc::clone(frame.schema().inner());
    let memory = MemoryConsumer::new("answer").register(&context.runtime_env().memory_pool);
    let mut stream = frame.execute_stream().await?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        memory.try_grow(batch.get_array_memory_size())?;
        batches.push(batch);
        // Operators that always have a batch ready would otherwise never let the time limit
        // or a cancellation in.
        tokio::task::consume_budget().await;
    }
    Ok(Answer {
        schema,
        batches,
        _memory: memory,
    })
}

/// The topics behind table `name`: a topic, and on a hub every edge's mirror of it.
pub fn sources_of(log: &Log, name: &str) -> Vec<Source> {
    tables_of(log.list_topics())
        .remove(name)
        .unwrap_or_default()
}

/// The tables of these topics. A name means one thing: a topic's own name is that topic
/// alone, even where mirrors of another edge's topic of that name exist (a hub refuses to
/// make new ones, see `link::session`); those are read through their own names then.
fn tables_of(topics: Vec<crate::log::TopicInfo>) -> BTreeMap<String, Vec<Source>> {
    let mut tables: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    let mut unions: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    for info in topics {
        let name = info.name.to_string();
        let mirror = info
            .mirror_of
            .as_ref()
            .and_then(|_| MirrorName::parse(&info.name));
        let edge = mirror.as_ref().and_then(MirrorName::edge);
        let source = Source {
            topic: info.name.clone(),
            edge: edge.map(str::to_owned),
        };
        match mirror.as_ref().filter(|mirror| mirror.edge().is_some()) {
            Some(mirror) => {
                let base = mirror.origin().to_owned();
                unions.entry(base).or_default().push(source.clone());
                tables.insert(name, vec![source]);
            }
            None => {
                unions.entry(name.clone()).or_default().push(source.clone());
                tables.insert(name, vec![source]);
            }
        }
    }
    for (name, sources) in unions {
        let own = tables.get(&name);
        let is_mirror = own.is_some_and(|own| own.iter().all(|s| s.edge.is_some()));
        if is_mirror {
            continue;
        }
        tables.insert(name, sources);
    }
    tables
}

#[cfg(test)]
#[test]
fn a_table_name_means_one_thing() {
    let topic = |name: &str, mirror_of: Option<&str>| crate::log::TopicInfo {
        name: crate::log::TopicName::new(name).unwrap(),
        config: crate::log::TopicConfig::default(),
        mirror_of: mirror_of.map(str::to_owned),
        partitions: Vec::new(),
    };
    let tables = tables_of(vec![
        topic("readings", None),
        topic("edge-1.readings", Some("edge edge-1")),
        topic("edge-2.readings", Some("edge edge-2")),
        // edge-1's own topic "edge-2.readings", mirrored before edge-2 was known here.
        topic("edge-1.edge-2.readings", Some("edge edge-1")),
        topic("hub.commands", Some("the hub")),
    ]);
    let names = |table: &str| -> Vec<String> {
        tables[table].iter().map(|s| s.topic.to_string()).collect()
    };
    assert_eq!(
        names("readings"),
        ["readings", "edge-1.readings", "edge-2.readings"]
    );
    assert_eq!(names("edge-2.readings"), ["edge-2.readings"]);
    assert_eq!(names("edge-1.edge-2.readings"), ["edge-1.edge-2.readings"]);
    assert_eq!(names("hub.commands"), ["hub.commands"]);
    assert!(
        !tables.contains_key("commands"),
        "an edge's mirrors of hub topics are no union"
    );
}

#[cfg(test)]
mod tests;
