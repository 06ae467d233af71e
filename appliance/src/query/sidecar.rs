//! The columnar form of a sealed segment (`<base>.columns` beside it): its records' `_offset`,
//! `_timestamp`, `_key` and JSON value fields as Arrow columns, so that a query that reads the
//! segment again reads columns instead of parsing JSON, and skips the segment altogether when
//! the statistics say no row can pass its filters.
//!
//! ```text
//! file    = frame* trailer
//! frame   = len u32 | first offset u64 | next offset u64 | crc32c of the body u32
//!           | crc32c of the header before it u32 | body: an Arrow IPC stream (schema + one
//!           batch of the records from first to next, len bytes)
//! trailer = JSON (segment bytes and next offset, the fields and their types, min/max per
//!           column) | len u32 | crc32c u32 | "APLCOLS1"
//! ```
//!
//! Invariants:
//! - It is a cache: written after a scan of the segment (off the query's path, one at a time,
//!   on a thread at the lowest CPU priority, to `<base>.columns.tmp` then renamed), never
//!   needed. A file that is missing, cut short, fails a checksum, was made for another form of
//!   the segment (its size or end differ: a compaction rewrote it) or lacks a field the query
//!   names is not used: the query reads the JSON, and the file is written again. A frame found damaged during a scan hands the rest of
//!   the segment back to the JSON decoder at that frame's first offset.
//! - The log deletes it with the segment's indexes (retention, compaction, truncation) and
//!   deletes unfinished or orphaned ones when it opens the partition (log/segment.rs).
//! - It is never larger than the segment (or 64 KiB): a form that would be is not kept, and
//!   not tried again while the process runs.
//! - No fsync: a crash leaves at worst a file whose checksums fail, which is rebuilt.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, SchemaRef, TimestampMillisecondType,
};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::logical_expr::Operator;
use serde::{Deserialize, Serialize};

use super::columns;
use crate::log::{Offset, Partition, SealedSegment};

const MAGIC: &[u8; 8] = b"APLCOLS1";
const TRAILER_TAIL: usize = 4 + 4 + MAGIC.len();
const FRAME_HEADER: usize = 4 + 8 + 8 + 4 + 4;
/// Larger frames or trailers than this are damage, not data (a frame holds one chunk read).
const MAX_FRAME_BYTES: u32 = 256 << 20;
/// A form may be as large as its segment, or this: a small segment's form is mostly Arrow's
/// per-frame metadata.
const MIN_FORM_BOUND: u64 = 64 << 10;

/// The columns a form holds before the value fields, by their index in a table's schema.
pub const STORED_VIRTUAL: [usize; 3] = [columns::OFFSET, columns::TIMESTAMP, columns::KEY];

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{path}: {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a form was made from and what it holds, written last.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trailer {
    segment_bytes: u64,
    segment_next: u64,
    /// Every stored column: name and Arrow type (as `DataType`'s display).
    fields: Vec<(String, String)>,
    /// What the numeric and timestamp columns hold; a column missing here has no statistics
    /// (another type, or a NaN somewhere).
    stats: BTreeMap<String, ColumnRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum ColumnRange {
    /// No value in the segment: no record passes a comparison with it.
    AllNull,
    /// Min and max of the non-null values.
    Range(Bound, Bound),
}

/// A value of a column's statistics.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
pub enum Bound {
    Int(i64),
    Float(f64),
}

/// A filter a form's statistics can rule a segment out with: `column op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub column: String,
    pub op: Operator,
    pub value: Bound,
}

/// One frame read: the segment's records up to `next`.
pub struct Frame {
    pub next: Offset,
    pub batch: RecordBatch,
}

/// An open form, validated up to its trailer; frames are checked as they are read.
pub struct SidecarReader {
    file: File,
    path: PathBuf,
    trailer: Trailer,
    position: u64,
    frames_end: u64,
    /// The first offset the next frame must hold.
    expected: Offset,
}

impl SidecarReader {
    /// The form of `segment`, or `None` when there is none usable (missing, damaged or made
    /// for another form of the segment).
    pub fn open(segment: &SealedSegment) -> Option<Self> {
        let path = segment.columns_path.clone();
        let file = File::open(&path).ok()?;
        match Self::validate(file, path.clone(), segment) {
            Ok(reader) => Some(reader),
            Err(error) => {
                tracing::debug!(%error, "not using a segment's columnar form; it is rebuilt");
                None
            }
        }
    }

    fn validate(file: File, path: PathBuf, segment: &SealedSegment) -> Result<Self, SidecarError> {
        let damaged = |problem: &str| SidecarError::Damaged {
            path: path.clone(),
            problem: problem.to_owned(),
        };
        let len = file.metadata().map_err(|source| io(&path, source))?.len();
        let mut tail = [0u8; TRAILER_TAIL];
        if len < TRAILER_TAIL as u64 {
            return Err(damaged("shorter than its trailer"));
        }
        file.read_exact_at(&mut tail, len - TRAILER_TAIL as u64)
            .map_err(|source| io(&path, source))?;
        if &tail[8..] != MAGIC {
            return Err(damaged("no trailer (cut short?)"));
        }
        let trailer_len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4")));
        let crc = u32::from_le_bytes(tail[4..8].try_into().expect("4"));
        let Some(frames_end) = (len - TRAILER_TAIL as u64)
            .checked_sub(trailer_len)
            .filter(|_| trailer_len <= u64::from(MAX_FRAME_BYTES))
        else {
            return Err(damaged("trailer longer than the file"));
        };
        let mut text = vec![0u8; trailer_len as usize];
        file.read_exact_at(&mut text, frames_end)
            .map_err(|source| io(&path, source))?;
        if crc32c::crc32c(&text) != crc {
            return Err(damaged("trailer checksum"));
        }
        let trailer: Trailer =
            serde_json::from_slice(&text).map_err(|e| damaged(&format!("trailer: {e}")))?;
        if trailer.segment_bytes != segment.bytes || trailer.segment_next != segment.next.0 {
            return Err(damaged("made for another form of the segment"));
        }
        Ok(Self {
            file,
            path,
            trailer,
            position: 0,
            frames_end,
            expected: segment.base,
        })
    }

    /// Whether every field of `fields` is stored, with the same type.
    pub fn covers<'a>(&self, mut fields: impl Iterator<Item = &'a Field>) -> bool {
        fields.all(|field| {
            let data_type = field.data_type().to_string();
            self.trailer
                .fields
                .iter()
                .any(|(name, stored)| name == field.name() && *stored == data_type)
        })
    }

    /// Whether the statistics show that no record passes every one of `filters`.
    pub fn rules_out(&self, filters: &[Comparison]) -> bool {
        filters
            .iter()
            .any(|filter| match self.trailer.stats.get(&filter.column) {
                Some(ColumnRange::AllNull) => true,
                Some(ColumnRange::Range(min, max)) => excludes(*min, *max, filter),
                None => false,
            })
    }

    /// The next frame that holds records at or after `from` (those before it are skipped
    /// unread), `None` after the last; with the bytes read.
    pub fn next_frame(&mut self, from: Offset) -> Result<Option<(Frame, u64)>, SidecarError> {
        loop {
            let at = self.position;
            if at >= self.frames_end {
                if self.expected.0 != self.trailer.segment_next {
                    return Err(SidecarError::Damaged {
                        path: self.path.clone(),
                        problem: format!("the frames end at offset {}", self.expected),
                    });
                }
                return Ok(None);
            }
            let damaged = |problem: &str| SidecarError::Damaged {
                path: self.path.clone(),
                problem: format!("frame at byte {at}: {problem}"),
            };
            let mut header = [0u8; FRAME_HEADER];
            self.file
                .read_exact_at(&mut header, at)
                .map_err(|source| io(&self.path, source))?;
            let word = |range: std::ops::Range<usize>| -> u64 {
                let mut bytes = [0u8; 8];
                bytes[..range.len()].copy_from_slice(&header[range]);
                u64::from_le_bytes(bytes)
            };
            if crc32c::crc32c(&header[..24]) != word(24..28) as u32 {
                return Err(damaged("header checksum"));
            }
            let len = word(0..4);
            let (first, next) = (Offset(word(4..12)), Offset(word(12..20)));
            let body_at = at + FRAME_HEADER as u64;
            if len > u64::from(MAX_FRAME_BYTES) || body_at + len > self.frames_end {
                return Err(damaged("bad length"));
            }
            if first != self.expected || next < first {
                return Err(damaged("offsets do not follow the frame before"));
            }
            self.position = body_at + len;
            self.expected = next;
            if next <= from {
                continue;
            }
            let mut body = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut body, body_at)
                .map_err(|source| io(&self.path, source))?;
            if crc32c::crc32c(&body) != word(20..24) as u32 {
                return Err(damaged("checksum"));
            }
            let mut reader = StreamReader::try_new(body.as_slice(), None)
                .map_err(|e| damaged(&e.to_string()))?;
            let batch = reader
                .next()
                .ok_or_else(|| damaged("no batch"))?
                .map_err(|e| damaged(&e.to_string()))?;
            return Ok(Some((Frame { next, batch }, FRAME_HEADER as u64 + len)));
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

fn io(path: &std::path::Path, source: std::io::Error) -> SidecarError {
    SidecarError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether no value within `min..=max` passes `filter`.
fn excludes(min: Bound, max: Bound, filter: &Comparison) -> bool {
    use std::cmp::Ordering::{Greater, Less};
    let (Some(min), Some(max)) = (compare(min, filter.value), compare(max, filter.value)) else {
        return false;
    };
    match filter.op {
        Operator::Eq => min == Greater || max == Less,
        Operator::Gt => max != Greater,
        Operator::GtEq => max == Less,
        Operator::Lt => min != Less,
        Operator::LtEq => min == Greater,
        _ => false,
    }
}

/// How `bound` compares with `value`: integers as integers, floats as floats, and mixed kinds
/// only where the integer is exact as a float; `None` when that cannot be said exactly.
fn compare(bound: Bound, value: Bound) -> Option<std::cmp::Ordering> {
    match (bound, value) {
        (Bound::Int(bound), Bound::Int(value)) => Some(bound.cmp(&value)),
        (bound, value) => exact(bound)?.partial_cmp(&exact(value)?),
    }
}

/// A bound as a float, when that is exact.
fn exact(bound: Bound) -> Option<f64> {
    match bound {
        Bound::Float(value) => Some(value),
        Bound::Int(value) => (value.unsigned_abs() <= 1 << 53).then_some(value as f64),
    }
}

/// The statistics kept of a column: min and max of its non-null values, if they can prune.
fn column_stats(column: &dyn Array) -> Option<(Bound, Bound)> {
    use datafusion::arrow::compute::{max, min};
    match column.data_type() {
        DataType::Int64 => {
            let values = column.as_primitive::<Int64Type>();
            Some((Bound::Int(min(values)?), Bound::Int(max(values)?)))
        }
        DataType::Timestamp(..) => {
            let values = column.as_primitive::<TimestampMillisecondType>();
            Some((Bound::Int(min(values)?), Bound::Int(max(values)?)))
        }
        DataType::Float64 => {
            let values = column.as_primitive::<Float64Type>();
            if values.iter().flatten().any(f64::is_nan) {
                return None;
            }
            Some((Bound::Float(min(values)?), Bound::Float(max(values)?)))
        }
        _ => None,
    }
}

/// The statistics of one column as its batches are written.
#[derive(Debug, Default)]
struct ColumnStats {
    range: Option<(Bound, Bound)>,
    /// A type without statistics, or a NaN seen.
    unusable: bool,
}

impl ColumnStats {
    fn add(&mut self, column: &dyn Array) {
        if self.unusable || column.null_count() == column.len() {
            return;
        }
        let Some((low, high)) = column_stats(column) else {
            self.unusable = true;
            return;
        };
        self.range = Some(match self.range {
            None => (low, high),
            Some((min, max)) => (
                if low < min { low } else { min },
                if high > max { high } else { max },
            ),
        });
    }

    fn range(&self) -> Option<ColumnRange> {
        match (self.unusable, self.range) {
            (true, _) => None,
            (false, None) => Some(ColumnRange::AllNull),
            (false, Some((min, max))) => Some(ColumnRange::Range(min, max)),
        }
    }
}

/// Writes the form of `segment` from the full-schema batches `chunks` gives, one frame each.
/// `Ok(false)`: not kept (larger than the segment, or the segment left meanwhile).
pub fn write(
    partition: &Partition,
    segment: &SealedSegment,
    schema: &SchemaRef,
    chunks: impl Iterator<Item = datafusion::error::Result<(Offset, Offset, RecordBatch)>>,
) -> Result<bool, SidecarError> {
    let temp = &segment.columns_temp_path;
    let written = write_temp(segment, schema, chunks);
    if !matches!(written, Ok(true)) {
        let _ = std::fs::remove_file(temp);
        return written;
    }
    std::fs::rename(temp, &segment.columns_path).map_err(|source| io(temp, source))?;
    // Retention may have deleted the segment while the form was written.
    if !partition.sealed_segments().contains(segment) {
        let _ = std::fs::remove_file(&segment.columns_path);
        return Ok(false);
    }
    Ok(true)
}

fn write_temp(
    segment: &SealedSegment,
    schema: &SchemaRef,
    chunks: impl Iterator<Item = datafusion::error::Result<(Offset, Offset, RecordBatch)>>,
) -> Result<bool, SidecarError> {
    let path = &segment.columns_temp_path;
    let damaged = |problem: String| SidecarError::Damaged {
        path: path.clone(),
        problem,
    };
    let mut file = std::io::BufWriter::new(File::create(path).map_err(|source| io(path, source))?);
    let mut written = 0u64;
    let mut stats: BTreeMap<String, ColumnStats> = BTreeMap::new();
    for chunk in chunks {
        let (first, next, batch) = chunk.map_err(|e| damaged(e.to_string()))?;
        let mut body = Vec::with_capacity(batch.get_array_memory_size());
        let mut writer =
            StreamWriter::try_new(&mut body, schema).map_err(|e| damaged(e.to_string()))?;
        writer.write(&batch).map_err(|e| damaged(e.to_string()))?;
        writer.finish().map_err(|e| damaged(e.to_string()))?;
        drop(writer);
        written += (FRAME_HEADER + body.len()) as u64;
        if written > segment.bytes.max(MIN_FORM_BOUND) {
            return Ok(false);
        }
        let len = u32::try_from(body.len())
            .ok()
            .filter(|len| *len <= MAX_FRAME_BYTES)
            .ok_or_else(|| damaged("frame too large".into()))?;
        let mut header = Vec::with_capacity(FRAME_HEADER);
        header.extend_from_slice(&len.to_le_bytes());
        header.extend_from_slice(&first.0.to_le_bytes());
        header.extend_from_slice(&next.0.to_le_bytes());
        header.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        header.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
        file.write_all(&header)
            .and_then(|()| file.write_all(&body))
            .map_err(|source| io(path, source))?;
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            stats
                .entry(field.name().clone())
                .or_default()
                .add(column.as_ref());
        }
    }
    let trailer = Trailer {
        segment_bytes: segment.bytes,
        segment_next: segment.next.0,
        fields: schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect(),
        stats: stats
            .into_iter()
            .filter_map(|(name, stats)| Some((name, stats.range()?)))
            .collect(),
    };
    let text = serde_json::to_vec(&trailer).map_err(|e| damaged(e.to_string()))?;
    let len = u32::try_from(text.len()).map_err(|_| damaged("trailer too large".into()))?;
    file.write_all(&text)
        .and_then(|()| file.write_all(&len.to_le_bytes()))
        .and_then(|()| file.write_all(&crc32c::crc32c(&text).to_le_bytes()))
        .and_then(|()| file.write_all(MAGIC))
        .and_then(|()| file.flush())
        .map_err(|source| io(path, source))?;
    Ok(true)
}

/// A form to write: the segment's form path, and the work that writes it.
type FormJob = (
    PathBuf,
    Box<dyn FnOnce() -> Result<bool, SidecarError> + Send>,
);

/// Writes the forms scans asked for, one at a time, each segment once at a time, on a thread
/// of its own at the lowest CPU priority: a form is upkeep, and the queries that asked for it
/// (and every later one) go first; on an idle hub it runs at full speed.
#[derive(Debug)]
pub struct Columnar {
    jobs: std::sync::mpsc::Sender<FormJob>,
    state: Arc<WriterState>,
}

#[derive(Debug, Default)]
struct WriterState {
    building: Mutex<HashSet<PathBuf>>,
    /// Forms not tried again while the process runs: larger than their segment, or whose
    /// writing panicked.
    given_up: Mutex<HashSet<PathBuf>>,
    written: std::sync::atomic::AtomicU64,
}

/// The nice value of the form writer's thread: the lowest priority.
const WRITER_NICE: i32 = 19;

impl Columnar {
    /// Starts the writer's thread, which ends when this is dropped (after the form it is
    /// writing, if any).
    pub fn new() -> Result<Self, SidecarError> {
        let (jobs, queue) = std::sync::mpsc::channel::<FormJob>();
        let state = Arc::new(WriterState::default());
        let writer = Arc::clone(&state);
        std::thread::Builder::new()
            .name("columnar-forms".to_owned())
            .spawn(move || {
                lower_priority();
                for (path, write) in queue {
                    // A form whose writing panics is given up; the others are still written.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(write))
                        .unwrap_or_else(|_| {
                            tracing::warn!(path = %path.display(), "writing a columnar form panicked; the segment is read as JSON");
                            Ok(false)
                        });
                    writer.finish(&path, outcome);
                }
            })
            .map_err(|source| SidecarError::Io {
                path: PathBuf::from("columnar-forms thread"),
                source,
            })?;
        Ok(Self { jobs, state })
    }

    /// Forms written since the engine started.
    pub fn written(&self) -> u64 {
        self.state
            .written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether no form is being written or waits to be.
    pub fn idle(&self) -> bool {
        lock(&self.state.building).is_empty()
    }

    /// Queues `write` (which writes the form of `segment`, decoding its JSON), unless that
    /// form is being written already or waits to be.
    pub fn request(
        &self,
        segment: &SealedSegment,
        write: impl FnOnce() -> Result<bool, SidecarError> + Send + 'static,
    ) {
        let path = segment.columns_path.clone();
        if lock(&self.state.given_up).contains(&path)
            || !lock(&self.state.building).insert(path.clone())
        {
            return;
        }
        if self.jobs.send((path.clone(), Box::new(write))).is_err() {
            lock(&self.state.building).remove(&path);
        }
    }
}

impl WriterState {
    fn finish(&self, path: &PathBuf, outcome: Result<bool, SidecarError>) {
        match outcome {
            Ok(true) => {
                self.written
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(false) => {
                lock(&self.given_up).insert(path.clone());
            }
            Err(error) => {
                tracing::warn!(%error, "could not write a segment's columnar form; queries read its JSON");
            }
        }
        lock(&self.building).remove(path);
    }
}

/// Gives the calling thread the lowest CPU priority. Linux keeps a nice value per thread
/// (`setpriority` with the thread's id); where it cannot be lowered, forms are written at
/// the process's priority.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), WRITER_NICE) {
        tracing::debug!(%error, "the columnar forms' writer keeps the process's priority");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn segment(name: &str) -> SealedSegment {
        SealedSegment {
            base: Offset(0),
            next: Offset(1),
            bytes: 1,
            columns_path: PathBuf::from(format!("{name}.columns")),
            columns_temp_path: PathBuf::from(format!("{name}.columns.tmp")),
        }
    }

    fn wait_idle(columnar: &Columnar) {
        let started = Instant::now();
        while !columnar.idle() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the writer never finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn statistics_compare_integers_exactly_beyond_what_floats_hold() {
        let big = 1_i64 << 53;
        let filter = |op, value| Comparison {
            column: "seq".to_owned(),
            op,
            value,
        };
        let (min, max) = (Bound::Int(0), Bound::Int(big + 1));
        assert!(!excludes(min, max, &filter(Operator::Gt, Bound::Int(big))));
        assert!(excludes(
            min,
            max,
            &filter(Operator::Gt, Bound::Int(big + 1))
        ));
        assert!(!excludes(
            min,
            max,
            &filter(Operator::Eq, Bound::Int(big + 1))
        ));
        assert!(excludes(
            min,
            max,
            &filter(Operator::GtEq, Bound::Int(big + 2))
        ));
        assert!(excludes(min, max, &filter(Operator::Lt, Bound::Int(0))));
        assert!(!excludes(min, max, &filter(Operator::LtEq, Bound::Int(0))));
        // A float beside an integer that a float cannot hold exactly says nothing.
        assert!(!excludes(
            min,
            max,
            &filter(Operator::Gt, Bound::Float(1e300))
        ));
        assert!(excludes(
            Bound::Int(1),
            Bound::Int(5),
            &filter(Operator::Gt, Bound::Float(5.0))
        ));
        assert!(!excludes(
            Bound::Float(0.5),
            Bound::Float(f64::NAN),
            &filter(Operator::Lt, Bound::Float(1.0))
        ));
    }

    #[test]
    fn the_writer_runs_at_the_lowest_priority_and_outlives_a_form_that_panics() {
        let columnar = Columnar::new().expect("the writer starts");
        let (priority, seen) = std::sync::mpsc::channel();
        columnar.request(&segment("a"), move || {
            let thread = rustix::thread::gettid();
            let _ = priority.send(rustix::process::getpriority_process(Some(thread)));
            panic!("a form that cannot be written");
        });
        columnar.request(&segment("b"), || Ok(true));
        wait_idle(&columnar);
        assert_eq!(columnar.written(), 1, "the form after the panic is written");
        assert_eq!(
            seen.recv()
                .expect("the first form ran")
                .expect("getpriority"),
            WRITER_NICE
        );
        // The form that panicked is given up: asking again queues nothing.
        columnar.request(&segment("a"), || Ok(true));
        assert!(columnar.idle());
        assert_eq!(columnar.written(), 1);
    }
}
