//! A table over one or more topics: its schema (virtual columns, then the JSON value's fields
//! inferred from the newest records) and the filters its scan uses to read less.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::array::{RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    BinaryExpr, Cast, Expr, Operator, TableProviderFilterPushDown, TryCast,
};
use datafusion::physical_plan::ExecutionPlan;

use super::QueryError;
use super::columns::{self, Source, VIRTUAL_COLUMNS, virtual_fields};
use super::scan::{PartitionScan, TopicScanExec, read_all};
use super::sidecar::{Bound, Columnar, Comparison};
use crate::log::schema::{DeclaredField, FieldType, parse_schema};
use crate::log::{self, Log, Offset, Partition, PartitionId, Timestamp, TopicName};

/// Records read from the end of each partition to infer the value columns.
const SAMPLE_RECORDS: u64 = 256;

#[derive(Debug)]
pub struct TopicTable {
    log: Log,
    sources: Vec<Source>,
    schema: OnceLock<std::result::Result<SchemaRef, String>>,
    /// A live query's decoded records, kept between its runs (None: read the log each time).
    cache: Option<Arc<ScanCache>>,
    /// Bytes of stored batches the scans read.
    read: Arc<AtomicU64>,
    /// Sealed segments' columnar forms; none: the scans read only JSON.
    columnar: Option<Arc<Columnar>>,
}

/// The Arrow batches a live query has decoded so far, per topic partition: each run reads
/// only what was appended since the last one.
#[derive(Debug, Default)]
pub struct ScanCache(Mutex<HashMap<(TopicName, u32), CachedPartition>>);

#[derive(Debug)]
struct CachedPartition {
    /// The offset the next read starts at.
    next: Offset,
    /// Full-schema batches, with the newest timestamp of each.
    batches: Vec<(i64, RecordBatch)>,
}

fn arrow_type(field_type: FieldType) -> DataType {
    match field_type {
        FieldType::String => DataType::Utf8,
        FieldType::Int => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

impl TopicTable {
    pub fn new(
        log: Log,
        sources: Vec<Source>,
        read: Arc<AtomicU64>,
        columnar: Option<Arc<Columnar>>,
    ) -> Self {
        Self {
            log,
            sources,
            schema: OnceLock::new(),
            cache: None,
            read,
            columnar,
        }
    }

    /// A table whose scans keep what they decoded in `cache` and read only what is new.
    pub fn cached(
        log: Log,
        sources: Vec<Source>,
        read: Arc<AtomicU64>,
        columnar: Option<Arc<Columnar>>,
        cache: Arc<ScanCache>,
    ) -> Self {
        Self {
            cache: Some(cache),
            ..Self::new(log, sources, read, columnar)
        }
    }

    /// The table's schema, inferred once from the newest records of every partition.
    pub fn inferred_schema(&self) -> std::result::Result<SchemaRef, QueryError> {
        self.schema
            .get_or_init(|| self.infer().map_err(|e| e.to_string()))
            .clone()
            .map_err(QueryError::Data)
    }

    /// The schema declared on the first of the table's topics that has one.
    pub fn declared(&self) -> Option<Vec<DeclaredField>> {
        self.sources
            .iter()
            .find_map(|source| self.log.topic_config(&source.topic).ok()?.schema)
            .and_then(|text| parse_schema(&text).ok())
    }

    fn infer(&self) -> std::result::Result<SchemaRef, Box<dyn std::error::Error>> {
        let mut fields = virtual_fields();
        if let Some(declared) = self.declared() {
            // Nullable whatever the declaration says: a record without the field gives a
            // null rather than failing the query.
            fields.extend(
                declared
                    .iter()
                    .filter(|f| !VIRTUAL_COLUMNS.contains(&f.name.as_str()))
                    .map(|f| Field::new(&f.name, arrow_type(f.field_type), true)),
            );
            return Ok(Arc::new(Schema::new(fields)));
        }
        let mut values = Vec::new();
        for source in &self.sources {
            let partitions = self.log.topic_config(&source.topic)?.partitions;
            for p in 0..partitions {
                // A partition whose tail cannot be read gives no sample; its scan says why.
                if let Ok(partition) = self.log.partition(&source.topic, PartitionId(p)) {
                    let _ = sample(&partition, &mut values);
                }
            }
        }
        let inferred = infer_json_schema_from_iterator(values.iter().map(Ok::<_, ArrowError>))?;
        // A value field named like a virtual column is shadowed by it.
        fields.extend(
            inferred
                .fields()
                .iter()
                .filter(|f| !VIRTUAL_COLUMNS.contains(&f.name().as_str()))
                .map(|f| f.as_ref().clone()),
        );
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// The JSON objects among the newest records of a partition.
fn sample(
    partition: &Partition,
    values: &mut Vec<serde_json::Value>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let end = partition.high_watermark();
    let from = Offset(end.0.saturating_sub(SAMPLE_RECORDS)).max(partition.log_start());
    let mut offset = from;
    while offset < end {
        let chunk = partition.read(offset, 1 << 20)?;
        for stored in log::decode_all(chunk.batches)? {
            if stored.offset < from {
                continue;
            }
            let value = stored.record.value.as_deref().unwrap_or_default();
            if let Ok(object @ serde_json::Value::Object(_)) = serde_json::from_slice(value) {
                values.push(object);
            }
        }
        offset = chunk.next_offset;
    }
    Ok(())
}

/// What the filters of a query allow a scan to skip. A scan may return more (DataFusion
/// filters again above it), never less.
#[derive(Debug, Clone, Default)]
pub struct Pruning {
    pub min_timestamp: Option<i64>,
    pub edge: Option<String>,
    pub partition: Option<u32>,
    /// `_timestamp` and value fields compared with a number: what the statistics of sealed
    /// segments' columnar forms can rule segments out with.
    pub comparisons: Vec<Comparison>,
}

impl Pruning {
    fn from_filters(filters: &[Expr]) -> Self {
        let mut pruning = Self::default();
        for filter in filters {
            let column = split(filter).map(|(name, operator, value)| {
                let index = VIRTUAL_COLUMNS.iter().position(|column| *column == name);
                (index, operator, value)
            });
            match column {
                // The time index finds where records at or after a time start; an upper bound
                // would need timestamps in offset order, which producers do not promise.
                Some((Some(columns::TIMESTAMP), Operator::Gt | Operator::GtEq, value)) => {
                    if let Some(t) = timestamp_ms(value) {
                        pruning.min_timestamp = Some(pruning.min_timestamp.map_or(t, |m| m.max(t)));
                    }
                }
                Some((Some(columns::EDGE), Operator::Eq, value)) => {
                    if let Some(Some(edge)) = value.try_as_str() {
                        pruning.edge = Some(edge.to_owned());
                    }
                }
                Some((Some(columns::PARTITION), Operator::Eq, value)) => {
                    pruning.partition = integer(value).and_then(|p| u32::try_from(p).ok());
                }
                _ => {}
            }
            pruning.comparisons.extend(comparison(filter));
        }
        pruning
    }

    fn is_none(&self) -> bool {
        self.min_timestamp.is_none()
            && self.edge.is_none()
            && self.partition.is_none()
            && self.comparisons.is_empty()
    }
}

/// `_timestamp` or a value field (not through a cast, which may change how values compare)
/// compared with a number or a timestamp in whole milliseconds.
fn comparison(filter: &Expr) -> Option<Comparison> {
    let Expr::BinaryExpr(BinaryExpr { left, right, .. }) = filter else {
        return None;
    };
    let (name, op, value) = split(filter)?;
    if !matches!(
        op,
        Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
    ) {
        return None;
    }
    let timestamp = name == VIRTUAL_COLUMNS[columns::TIMESTAMP];
    let bare = [left, right]
        .iter()
        .any(|side| matches!(side.as_ref(), Expr::Column(_)));
    if (!timestamp && (VIRTUAL_COLUMNS.contains(&name) || !bare)) || value.is_null() {
        return None;
    }
    let bound = match value {
        ScalarValue::Float64(Some(v)) => Bound::Float(*v),
        ScalarValue::Float32(Some(v)) => Bound::Float(f64::from(*v)),
        ScalarValue::TimestampSecond(..) | ScalarValue::TimestampMillisecond(..) => {
            Bound::Int(timestamp_ms(value)?)
        }
        ScalarValue::TimestampMicrosecond(Some(us), _) if us % 1000 == 0 => Bound::Int(us / 1000),
        ScalarValue::TimestampNanosecond(Some(ns), _) if ns % 1_000_000 == 0 => {
            Bound::Int(ns / 1_000_000)
        }
        other => Bound::Int(integer(other)?),
    };
    Some(Comparison {
        column: name.to_owned(),
        op,
        value: bound,
    })
}

fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(column) => Some(column.name.as_str()),
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => column_name(expr),
        _ => None,
    }
}

/// `column op literal`, with the column turned to the left.
fn split(expr: &Expr) -> Option<(&str, Operator, &ScalarValue)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    match (left.as_ref(), right.as_ref()) {
        (column, Expr::Literal(value, _)) => Some((column_name(column)?, *op, value)),
        (Expr::Literal(value, _), column) => Some((column_name(column)?, op.swap()?, value)),
        _ => None,
    }
}

fn timestamp_ms(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(ms), _) => Some(*ms),
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(us.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(ns.div_euclid(1_000_000)),
        _ => None,
    }
}

fn integer(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::UInt8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// Whether the scan reads less for `expr`.
fn prunes(expr: &Expr) -> bool {
    !Pruning::from_filters(std::slice::from_ref(expr)).is_none()
}

#[async_trait::async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        // Planning needs a schema even when the sample cannot be read; the scan then reports
        // why (a corrupt segment, a partition that failed to open).
        self.inferred_schema()
            .unwrap_or_else(|_| Arc::new(Schema::new(virtual_fields())))
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                if prunes(filter) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self
            .inferred_schema()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let pruning = Pruning::from_filters(filters);
        let comparisons = Arc::new(pruning.comparisons.clone());
        let mut partitions = Vec::new();
        for source in &self.sources {
            if pruning
                .edge
                .as_ref()
                .is_some_and(|edge| source.edge.as_ref() != Some(edge))
            {
                continue;
            }
            let count = self
                .log
                .topic_config(&source.topic)
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .partitions;
            for p in 0..count {
                if pruning.partition.is_some_and(|only| only != p) {
                    continue;
                }
                let partition = self
                    .log
                    .partition(&source.topic, PartitionId(p))
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let end = partition.high_watermark();
                let from = match pruning.min_timestamp {
                    Some(min) => partition
                        .offset_for_timestamp(Timestamp(min))
                        .map_err(|e| DataFusionError::External(Box::new(e)))?
                        .unwrap_or(end),
                    None => partition.log_start(),
                };
                partitions.push(PartitionScan {
                    partition,
                    source: source.clone(),
                    from,
                    end,
                    read: Arc::clone(&self.read),
                    columnar: self.columnar.clone(),
                    comparisons: Arc::clone(&comparisons),
                });
            }
        }
        match &self.cache {
            None => Ok(Arc::new(TopicScanExec::try_new(
                schema, partitions, projection,
            )?)),
            Some(cache) => {
                let mut cached = cache.catch_up(&schema, &partitions, pruning.min_timestamp)?;
                if cached.is_empty() {
                    cached.push(Vec::new());
                }
                Ok(MemorySourceConfig::try_new_exec(
                    &cached,
                    schema,
                    projection.cloned(),
                )?)
            }
        }
    }
}

impl ScanCache {
    /// Reads what each partition gained since the last run, forgets batches wholly older
    /// than the query's time bound, and returns every partition's batches.
    fn catch_up(
        &self,
        schema: &SchemaRef,
        partitions: &[PartitionScan],
        min_timestamp: Option<i64>,
    ) -> Result<Vec<Vec<RecordBatch>>> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(partitions.len());
        for scan in partitions {
            let key = (scan.source.topic.clone(), scan.partition.id().0);
            let cached = cache.entry(key).or_insert_with(|| CachedPartition {
                next: scan.from,
                batches: Vec::new(),
            });
            if cached.next < scan.end {
                let new = PartitionScan {
                    from: cached.next.max(scan.from),
                    ..scan.clone()
                };
                for batch in read_all(&new, schema)? {
                    cached.batches.push((newest_timestamp(&batch), batch));
                }
                cached.next = scan.end;
            }
            if let Some(min) = min_timestamp {
                cached.batches.retain(|(newest, _)| *newest >= min);
            }
            out.push(cached.batches.iter().map(|(_, b)| b.clone()).collect());
        }
        Ok(out)
    }
}

/// The newest `_timestamp` of a full-schema batch.
fn newest_timestamp(batch: &RecordBatch) -> i64 {
    batch
        .column(columns::TIMESTAMP)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .and_then(datafusion::arrow::compute::max)
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn filters_on_time_edge_and_partition_prune() {
        let at = ScalarValue::TimestampMillisecond(Some(1_700_000_000_000), Some("UTC".into()));
        let filters = vec![
            col("_timestamp").gt_eq(lit(at.clone())),
            lit(at).gt(col("_timestamp")),
            col("_edge").eq(lit("plant-7")),
            col("_partition").eq(lit(3i32)),
            col("temp").gt(lit(20)),
            col("sensor").eq(lit("s-1")),
            datafusion::prelude::cast(col("temp"), DataType::Utf8).eq(lit("20")),
        ];
        let pruning = Pruning::from_filters(&filters);
        assert_eq!(pruning.min_timestamp, Some(1_700_000_000_000));
        assert_eq!(pruning.edge.as_deref(), Some("plant-7"));
        assert_eq!(pruning.partition, Some(3));
        // The time index gives no upper bound (timestamps need not follow offsets); the
        // statistics of columnar forms do, and bounds on value fields.
        let compared: Vec<(&str, Operator, Bound)> = pruning
            .comparisons
            .iter()
            .map(|c| (c.column.as_str(), c.op, c.value))
            .collect();
        let at = Bound::Int(1_700_000_000_000);
        assert_eq!(
            compared,
            [
                ("_timestamp", Operator::GtEq, at),
                ("_timestamp", Operator::Lt, at),
                ("temp", Operator::Gt, Bound::Int(20)),
            ],
            "no statistics for strings, nor through a cast"
        );
        assert!(!prunes(&filters[5]));
        assert!(!prunes(&filters[6]));
    }
}
