//! The scan of a table: one DataFusion partition per topic partition, each a stream that reads
//! the log in chunks from its first offset to the end it had when the query started and turns
//! each chunk's records into one Arrow batch (virtual columns + the JSON values' fields).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;
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
use super::columns::{self, Source, VIRTUAL_COLUMNS};
use super::json::ValueDecoder;
use crate::log::{self, Offset, Partition, RecordView};

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
        let decoder = BatchDecoder::new(&scan, &self.schema, self.projection.as_ref())?;
        let stream = futures_util::stream::unfold(
            (scan, decoder, false),
            |(scan, mut decoder, done)| async move {
                if done || scan.from >= scan.end {
                    return None;
                }
                let mut next = scan.clone();
                let outcome = read_chunk(&scan, &mut decoder).map(|(batch, after)| {
                    next.from = after;
                    batch
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
    let mut decoder = BatchDecoder::new(scan, schema, None)?;
    let mut next = scan.clone();
    let mut batches = Vec::new();
    while next.from < next.end {
        let (batch, after) = read_chunk(&next, &mut decoder)?;
        if batch.num_rows() > 0 {
            batches.push(batch);
        }
        next.from = after;
    }
    Ok(batches)
}

/// The records of the next chunk of a scan (at most up to its end) as one batch, and where
/// the next chunk starts.
fn read_chunk(scan: &PartitionScan, decoder: &mut BatchDecoder) -> Result<(RecordBatch, Offset)> {
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
    let wanted = scan.from..scan.end;
    log::visit_all(chunk.batches, |record| {
        if wanted.contains(&record.offset) {
            decoder.push(&record);
        }
    })
    .map_err(|e| damaged(format!("a stored batch is damaged: {e}")))?;
    Ok((decoder.finish()?, chunk.next_offset.min(scan.end)))
}

/// Turns records into Arrow batches of a table's schema, projected: only the columns a query
/// asks for are gathered, and only the value fields it names are decoded from the JSON.
struct BatchDecoder {
    /// Indices into the table's schema, in the order of the batches made.
    columns: Vec<usize>,
    projected: SchemaRef,
    source: Source,
    partition: i32,
    rows: usize,
    offsets: Option<Vec<i64>>,
    timestamps: Option<Vec<i64>>,
    keys: Option<StringBuilder>,
    /// The projected value fields, in the order `columns` names them; none when the query
    /// names no value field.
    values: Option<ValueDecoder>,
}

impl BatchDecoder {
    fn new(
        scan: &PartitionScan,
        schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
    ) -> Result<Self> {
        let columns: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let value_indices: Vec<usize> = columns
            .iter()
            .copied()
            .filter(|&index| index >= VIRTUAL_COLUMNS.len())
            .collect();
        let wants = |column: usize| columns.contains(&column);
        let values = (!value_indices.is_empty())
            .then(|| schema.project(&value_indices))
            .transpose()?
            .map(|values| ValueDecoder::new(&Arc::new(values)));
        Ok(Self {
            projected: Arc::new(schema.project(&columns)?),
            values,
            offsets: wants(columns::OFFSET).then(Vec::new),
            timestamps: wants(columns::TIMESTAMP).then(Vec::new),
            keys: wants(columns::KEY).then(StringBuilder::new),
            columns,
            source: scan.source.clone(),
            partition: scan.partition.id().0 as i32,
            rows: 0,
        })
    }

    fn push(&mut self, record: &RecordView<'_>) {
        self.rows += 1;
        if let Some(offsets) = &mut self.offsets {
            offsets.push(record.offset.0 as i64);
        }
        if let Some(timestamps) = &mut self.timestamps {
            timestamps.push(record.timestamp.0);
        }
        if let Some(keys) = &mut self.keys {
            keys.append_option(record.key.map(String::from_utf8_lossy));
        }
        if let Some(values) = &mut self.values {
            values.push(record.value);
        }
    }

    /// The batch of the records pushed since the last one.
    fn finish(&mut self) -> Result<RecordBatch> {
        let rows = std::mem::take(&mut self.rows);
        let mut values = match &mut self.values {
            Some(values) => values.finish()?.columns().to_vec().into_iter(),
            None => Vec::new().into_iter(),
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for &index in &self.columns {
            let column: ArrayRef = match index {
                columns::EDGE => match &self.source.edge {
                    Some(edge) => Arc::new(StringArray::new_repeated(edge, rows)),
                    None => Arc::new(StringArray::new_null(rows)),
                },
                columns::TOPIC => {
                    Arc::new(StringArray::new_repeated(self.source.topic.as_str(), rows))
                }
                columns::PARTITION => Arc::new(Int32Array::from_value(self.partition, rows)),
                columns::OFFSET => Arc::new(Int64Array::from(take(&mut self.offsets))),
                columns::TIMESTAMP => Arc::new(
                    TimestampMillisecondArray::from(take(&mut self.timestamps))
                        .with_timezone("UTC"),
                ),
                columns::KEY => match &mut self.keys {
                    Some(keys) => Arc::new(keys.finish()),
                    None => Arc::new(StringArray::new_null(rows)),
                },
                _ => values.next().ok_or_else(|| {
                    DataFusionError::Internal("a value column was not decoded".into())
                })?,
            };
            columns.push(column);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.projected),
            columns,
            &options,
        )?)
    }
}

/// The values gathered for a column, leaving an empty vector to gather the next batch's.
fn take(gathered: &mut Option<Vec<i64>>) -> Vec<i64> {
    gathered.as_mut().map(std::mem::take).unwrap_or_default()
}
