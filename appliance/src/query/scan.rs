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
use datafusion::arrow::datatypes::{Field, SchemaRef};
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
use super::sidecar::{self, Columnar, Comparison, STORED_VIRTUAL, SidecarError, SidecarReader};
use crate::log::{self, Offset, Partition, RecordView, SealedSegment};

/// Bytes of stored batches read (and turned into one Arrow batch) at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// One topic partition to read, from `from` up to `end`.
#[derive(Debug, Clone)]
pub struct PartitionScan {
    pub partition: Arc<Partition>,
    pub source: Source,
    pub from: Offset,
    pub end: Offset,
    /// Bytes of stored batches (and columnar forms) read, counted for the whole engine.
    pub read: Arc<AtomicU64>,
    /// Where sealed segments' columnar forms are read and asked for; none: JSON only.
    pub columnar: Option<Arc<Columnar>>,
    /// The query's filters the forms' statistics can rule a segment out with.
    pub comparisons: Arc<Vec<Comparison>>,
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
        let reader = PartitionReader::new(scan, &self.schema, self.projection.as_ref())?;
        let stream = futures_util::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next_batch() {
                Ok(Some(batch)) => Some((Ok(batch), Some(reader))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(projected, stream)))
    }
}

/// Every record of a partition scan as full-schema batches, one per chunk or frame read.
pub fn read_all(scan: &PartitionScan, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let mut reader = PartitionReader::new(scan.clone(), schema, None)?;
    let mut batches = Vec::new();
    while let Some(batch) = reader.next_batch()? {
        if batch.num_rows() > 0 {
            batches.push(batch);
        }
    }
    Ok(batches)
}

/// Reads one partition scan in batches: a sealed segment from its columnar form when it has
/// a usable one (and not at all when the form's statistics rule it out), the rest from the
/// log's JSON; a sealed segment read as JSON gets its form written afterwards.
struct PartitionReader {
    scan: PartitionScan,
    schema: SchemaRef,
    decoder: BatchDecoder,
    form: Option<(SidecarReader, SealedSegment)>,
    /// The partition's sealed segments when the scan started (none without columnar forms):
    /// those the scan may read forms of. One sealed later is read as JSON.
    sealed: Vec<SealedSegment>,
    /// The base of the sealed segment last looked at, so each is looked at once.
    looked_at: Option<Offset>,
}

impl PartitionReader {
    fn new(
        scan: PartitionScan,
        schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
    ) -> Result<Self> {
        let sealed = match scan.columnar {
            Some(_) => scan.partition.sealed_segments(),
            None => Vec::new(),
        };
        Ok(Self {
            decoder: BatchDecoder::new(&scan, schema, projection)?,
            scan,
            schema: Arc::clone(schema),
            form: None,
            sealed,
            looked_at: None,
        })
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let (from, end) = (self.scan.from, self.scan.end);
            if from >= end {
                return Ok(None);
            }
            if let Some((form, segment)) = &mut self.form {
                match form.next_frame(from) {
                    Ok(Some((frame, bytes))) => {
                        self.scan.read.fetch_add(bytes, Ordering::Relaxed);
                        self.scan.from = frame.next.min(end);
                        return self.decoder.frame_batch(&frame.batch, from, end).map(Some);
                    }
                    Ok(None) => {
                        self.scan.from = segment.next.max(from);
                        self.form = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a segment's columnar form is damaged; reading its records instead and writing it again");
                        let _ = std::fs::remove_file(form.path());
                        self.form = None;
                    }
                }
                continue;
            }
            if self.look_at_form(from) {
                continue;
            }
            let (batch, after) = read_chunk(&self.scan, &mut self.decoder)?;
            self.scan.from = after;
            return Ok(Some(batch));
        }
    }

    /// Opens the form of the sealed segment holding `from` if it serves this scan, or asks
    /// for one to be written; true when the scan should look again (it skipped the segment or
    /// will read its form).
    fn look_at_form(&mut self, from: Offset) -> bool {
        let Some(columnar) = self.scan.columnar.clone() else {
            return false;
        };
        let holding = self.sealed.partition_point(|s| s.next <= from);
        let Some(segment) = self.sealed.get(holding).filter(|s| s.base <= from).cloned() else {
            return false;
        };
        if self.looked_at == Some(segment.base) {
            return false;
        }
        self.looked_at = Some(segment.base);
        match SidecarReader::open(&segment) {
            Some(form) if form.covers(self.decoder.value_fields()) => {
                if form.rules_out(&self.scan.comparisons) {
                    self.scan.from = segment.next.max(from);
                } else {
                    self.form = Some((form, segment));
                }
                true
            }
            _ => {
                columnar.request(&segment, self.form_writer(segment.clone()));
                false
            }
        }
    }

    /// What writes the form of `segment`: its records decoded with every column of the table.
    fn form_writer(
        &self,
        segment: SealedSegment,
    ) -> impl FnOnce() -> std::result::Result<bool, SidecarError> + Send + 'static {
        let scan = PartitionScan {
            from: segment.base,
            end: segment.next,
            // Not a read of the query's: it happens after, and its bytes are not the query's.
            read: Arc::default(),
            ..self.scan.clone()
        };
        let schema = Arc::clone(&self.schema);
        move || {
            let damaged = |problem: String| SidecarError::Damaged {
                path: segment.columns_path.clone(),
                problem,
            };
            let stored: Vec<usize> = STORED_VIRTUAL
                .into_iter()
                .chain(VIRTUAL_COLUMNS.len()..schema.fields().len())
                .collect();
            let stored_schema = Arc::new(
                schema
                    .project(&stored)
                    .map_err(|e| damaged(e.to_string()))?,
            );
            let mut decoder = BatchDecoder::new(&scan, &schema, Some(&stored))
                .map_err(|e| damaged(e.to_string()))?;
            let mut next = scan.clone();
            let chunks = std::iter::from_fn(|| {
                if next.from >= next.end {
                    return None;
                }
                let first = next.from;
                Some(read_chunk(&next, &mut decoder).and_then(|(batch, after)| {
                    if after <= first {
                        return Err(DataFusionError::Execution(format!(
                            "no records at offset {first}"
                        )));
                    }
                    next.from = after;
                    Ok((first, after, batch))
                }))
            });
            sidecar::write(&scan.partition, &segment, &stored_schema, chunks)
        }
    }
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

    /// The value fields the batches hold.
    fn value_fields(&self) -> impl Iterator<Item = &Field> {
        self.projected
            .fields()
            .iter()
            .zip(&self.columns)
            .filter(|(_, index)| **index >= VIRTUAL_COLUMNS.len())
            .map(|(field, _)| field.as_ref())
    }

    /// The batch of a columnar form's frame's records from `from` to `end`.
    fn frame_batch(&self, stored: &RecordBatch, from: Offset, end: Offset) -> Result<RecordBatch> {
        let offsets = stored
            .column_by_name(VIRTUAL_COLUMNS[columns::OFFSET])
            .and_then(|column| column.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| DataFusionError::Internal("a columnar form without _offset".into()))?;
        let values = offsets.values();
        let first = values.partition_point(|&offset| offset < from.0 as i64);
        let last = values.partition_point(|&offset| offset < end.0 as i64);
        let stored = stored.slice(first, last - first);
        let rows = stored.num_rows();
        self.assemble(rows, |_, field| {
            stored.column_by_name(field.name()).cloned().ok_or_else(|| {
                DataFusionError::Internal(format!("a columnar form without {}", field.name()))
            })
        })
    }

    /// The batch of the records pushed since the last one.
    fn finish(&mut self) -> Result<RecordBatch> {
        let rows = std::mem::take(&mut self.rows);
        let mut values = match &mut self.values {
            Some(values) => values.finish()?.columns().to_vec().into_iter(),
            None => Vec::new().into_iter(),
        };
        let mut offsets = self.offsets.as_mut().map(std::mem::take);
        let mut timestamps = self.timestamps.as_mut().map(std::mem::take);
        let mut keys = self.keys.as_mut().map(StringBuilder::finish);
        self.assemble(rows, |index, _| {
            Ok(match index {
                columns::OFFSET => Arc::new(Int64Array::from(offsets.take().unwrap_or_default())),
                columns::TIMESTAMP => Arc::new(
                    TimestampMillisecondArray::from(timestamps.take().unwrap_or_default())
                        .with_timezone("UTC"),
                ),
                columns::KEY => match keys.take() {
                    Some(keys) => Arc::new(keys),
                    None => Arc::new(StringArray::new_null(rows)),
                },
                _ => values.next().ok_or_else(|| {
                    DataFusionError::Internal("a value column was not decoded".into())
                })?,
            })
        })
    }

    /// A batch of the projected columns: `_edge`, `_topic` and `_partition` made here, the
    /// others (by their index in the table's schema, and field) from `column`.
    fn assemble(
        &self,
        rows: usize,
        mut column: impl FnMut(usize, &Field) -> Result<ArrayRef>,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (&index, field) in self.columns.iter().zip(self.projected.fields()) {
            let made: ArrayRef = match index {
                columns::EDGE => match &self.source.edge {
                    Some(edge) => Arc::new(StringArray::new_repeated(edge, rows)),
                    None => Arc::new(StringArray::new_null(rows)),
                },
                columns::TOPIC => {
                    Arc::new(StringArray::new_repeated(self.source.topic.as_str(), rows))
                }
                columns::PARTITION => Arc::new(Int32Array::from_value(self.partition, rows)),
                _ => column(index, field)?,
            };
            columns.push(made);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.projected),
            columns,
            &options,
        )?)
    }
}
