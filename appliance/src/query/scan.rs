//! The scan of a table: one DataFusion partition per topic partition, each a stream that reads
//! the log in chunks from its first offset to the end it had when the query started and turns
//! each chunk's records into one Arrow batch (virtual columns + the JSON values' fields).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::common::project_schema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};

use super::QueryError;
use super::table::{Source, VIRTUAL_COLUMNS};
use crate::log::{self, Offset, Partition, StoredRecord};

/// Bytes of stored batches read (and turned into one Arrow batch) at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// One topic partition to read, from `from` up to `end`.
#[derive(Debug, Clone)]
pub struct PartitionScan {
    pub partition: Arc<Partition>,
    pub source: Source,
    pub from: Offset,
    pub end: Offset,
    /// Bytes of stored batches read, counted for the whole query engine.
    pub read: Arc<AtomicU64>,
}

#[derive(Debug)]
pub struct TopicScanExec {
    schema: SchemaRef,
    partitions: Vec<PartitionScan>,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl TopicScanExec {
    pub fn try_new(
        schema: SchemaRef,
        partitions: Vec<PartitionScan>,
        projection: Option<&Vec<usize>>,
    ) -> Result<Self> {
        let projected = project_schema(&schema, projection)?;
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(projected),
            // At least one partition, even when everything was pruned.
            Partitioning::UnknownPartitioning(partitions.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            schema,
            partitions,
            projection: projection.cloned(),
            properties,
        })
    }
}

impl DisplayAs for TopicScanExec {
    fn fmt_as(&self, format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match format {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "TopicScanExec: partitions={}", self.partitions.len())
            }
            DisplayFormatType::TreeRender => write!(f, "partitions={}", self.partitions.len()),
        }
    }
}

impl ExecutionPlan for TopicScanExec {
    fn name(&self) -> &str {
        "TopicScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _visit: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let projected = project_schema(&self.schema, self.projection.as_ref())?;
        let Some(scan) = self.partitions.get(partition).cloned() else {
            let empty = futures_util::stream::empty();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(projected, empty)));
        };
        let decoder = BatchDecoder::new(&scan, &self.schema, self.projection.clone());
        let stream = futures_util::stream::unfold(
            (scan, decoder, false),
            |(scan, decoder, done)| async move {
                if done || scan.from >= scan.end {
                    return None;
                }
                let mut next = scan.clone();
                let outcome = read_chunk(&scan).and_then(|(records, after)| {
                    next.from = after;
                    decoder.decode(&records)
                });
                let failed = outcome.is_err();
                Some((outcome, (next, decoder, failed)))
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(projected, stream)))
    }
}

/// Every record of a partition scan as full-schema batches, one per chunk read.
pub fn read_all(scan: &PartitionScan, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let decoder = BatchDecoder::new(scan, schema, None);
    let mut next = scan.clone();
    let mut batches = Vec::new();
    while next.from < next.end {
        let (records, after) = read_chunk(&next)?;
        if !records.is_empty() {
            batches.push(decoder.decode(&records)?);
        }
        next.from = after;
    }
    Ok(batches)
}

/// The records of the next chunk of a scan (at most up to its end) and where the next one
/// starts.
fn read_chunk(scan: &PartitionScan) -> Result<(Vec<StoredRecord>, Offset)> {
    let damaged = |what: String| {
        DataFusionError::External(Box::new(QueryError::Data(format!(
            "{}/{} from offset {}: {what}",
            scan.source.topic,
            scan.partition.id(),
            scan.from
        ))))
    };
    let chunk = scan
        .partition
        .read(scan.from, CHUNK_BYTES)
        .map_err(|e| damaged(e.to_string()))?;
    scan.read
        .fetch_add(chunk.batches.len() as u64, Ordering::Relaxed);
    let mut records = log::decode_all(chunk.batches)
        .map_err(|e| damaged(format!("a stored batch is damaged: {e}")))?;
    records.retain(|r| r.offset >= scan.from && r.offset < scan.end);
    Ok((records, chunk.next_offset.min(scan.end)))
}

/// Turns records into Arrow batches of a table's schema, projected.
struct BatchDecoder {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    source: Source,
    partition: i32,
}

impl BatchDecoder {
    fn new(scan: &PartitionScan, schema: &SchemaRef, projection: Option<Vec<usize>>) -> Self {
        Self {
            schema: Arc::clone(schema),
            projection,
            source: scan.source.clone(),
            partition: scan.partition.id().0 as i32,
        }
    }

    fn decode(&self, records: &[StoredRecord]) -> Result<RecordBatch> {
        let rows = records.len();
        let indices: Vec<usize> = match &self.projection {
            Some(projection) => projection.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let projected = Arc::new(self.schema.project(&indices)?);
        let values = if indices.iter().any(|&i| i >= VIRTUAL_COLUMNS.len()) {
            Some(self.values(records)?)
        } else {
            None
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(indices.len());
        for &index in &indices {
            let column: ArrayRef = match index {
                0 => Arc::new(StringArray::from(vec![self.source.edge.as_deref(); rows])),
                1 => Arc::new(StringArray::from(vec![
                    Some(self.source.topic.as_str());
                    rows
                ])),
                2 => Arc::new(Int32Array::from(vec![self.partition; rows])),
                3 => Arc::new(Int64Array::from_iter_values(
                    records.iter().map(|r| r.offset.0 as i64),
                )),
                4 => Arc::new(
                    TimestampMillisecondArray::from_iter_values(
                        records.iter().map(|r| r.record.timestamp.0),
                    )
                    .with_timezone("UTC"),
                ),
                5 => Arc::new(StringArray::from_iter(records.iter().map(|r| {
                    r.record
                        .key
                        .as_ref()
                        .map(|key| String::from_utf8_lossy(key).into_owned())
                }))),
                value => match &values {
                    Some(values) => Arc::clone(values.column(value - VIRTUAL_COLUMNS.len())),
                    None => {
                        return Err(DataFusionError::Internal(
                            "value columns were not decoded".into(),
                        ));
                    }
                },
            };
            columns.push(column);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            projected, columns, &options,
        )?)
    }

    /// The value columns of `records`: their JSON objects decoded in one pass; a value that is
    /// not a JSON object, or does not fit the inferred types, gives nulls.
    fn values(&self, records: &[StoredRecord]) -> Result<RecordBatch> {
        let schema = Arc::new(Schema::new(
            self.schema.fields()[VIRTUAL_COLUMNS.len()..].to_vec(),
        ));
        let mut lines =
            Vec::with_capacity(records.iter().map(value_len).sum::<usize>() + records.len());
        for record in records {
            lines.extend_from_slice(object_or_empty(record));
            lines.push(b'\n');
        }
        if let Ok(batch) = decode_json(&schema, &lines, records.len()) {
            return Ok(batch);
        }
        // One record that does not fit spoils the whole pass: decode them one by one.
        let mut batches = Vec::with_capacity(records.len());
        for record in records {
            let batch = decode_json(&schema, object_or_empty(record), 1)
                .or_else(|_| decode_json(&schema, b"{}", 1))?;
            batches.push(batch);
        }
        Ok(concat_batches(&schema, &batches)?)
    }
}

fn value_len(record: &StoredRecord) -> usize {
    record.record.value.as_ref().map_or(2, Bytes::len)
}

fn object_or_empty(record: &StoredRecord) -> &[u8] {
    match record.record.value.as_deref() {
        Some(value) if value.trim_ascii_start().first() == Some(&b'{') => value,
        _ => b"{}",
    }
}

/// Exactly `rows` rows of newline-separated JSON objects.
fn decode_json(schema: &SchemaRef, lines: &[u8], rows: usize) -> Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.max(1))
        .build_decoder()?;
    let mut consumed = 0;
    while consumed < lines.len() {
        let read = decoder.decode(&lines[consumed..])?;
        if read == 0 {
            break;
        }
        consumed += read;
    }
    let batch = decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    if batch.num_rows() != rows || consumed != lines.len() {
        return Err(DataFusionError::Execution(format!(
            "{} JSON rows decoded out of {rows}",
            batch.num_rows()
        )));
    }
    Ok(batch)
}
