//! One segment: a file of whole RecordBatch v2 batches starting at a base offset, with its
//! indexes. Readers use positioned reads (`pread`) on a shared file handle, so they never block
//! the partition's writer; the writer appends with positioned writes to the same handle.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};

use super::batch::{self, BATCH_HEADER_LEN, BatchError, BatchHeader};
use super::index::SegmentIndex;
use super::types::{Offset, Timestamp};
use super::{Corruption, LogError, io_error};

/// Scans read the file in windows of this size, so recovery does few large reads.
const SCAN_WINDOW: usize = 1024 * 1024;

pub fn log_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.log", base.0))
}

/// Where compaction writes a segment's replacement before renaming it over the segment; a file
/// of this name found at start is a compaction a stop interrupted, and is deleted.
pub fn compacting_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.log.compacting", base.0))
}

/// Whether a file name is a compaction's unfinished replacement ([`compacting_path`]).
pub fn is_compacting_file_name(name: &str) -> bool {
    name.strip_suffix(".log.compacting")
        .is_some_and(|digits| parse_log_file_name(&format!("{digits}.log")).is_some())
}

fn offset_index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.index", base.0))
}

fn time_index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.timeindex", base.0))
}

/// Where a reader may keep a columnar form of the sealed segment at `base` (the hub's query
/// engine does, query/sidecar.rs). The log knows only its name: it deletes the file with the
/// segment's indexes, so that it goes with the segment and never outlives a rewrite of it.
pub fn columns_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.columns", base.0))
}

/// Where the columnar form is written before it is renamed to [`columns_path`].
pub fn columns_temp_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.columns.tmp", base.0))
}

/// The base offset of a segment's columnar form named by a file name ([`columns_path`] or
/// [`columns_temp_path`]), and whether it is the unfinished one.
pub fn parse_columns_file_name(name: &str) -> Option<(Offset, bool)> {
    let (digits, unfinished) = match name.strip_suffix(".columns.tmp") {
        Some(digits) => (digits, true),
        None => (name.strip_suffix(".columns")?, false),
    };
    Some((parse_log_file_name(&format!("{digits}.log"))?, unfinished))
}

/// The base offset named by a segment file name, or `None` for other files.
pub fn parse_log_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Offset))
        .flatten()
}

#[derive(Debug)]
struct SegmentState {
    index: SegmentIndex,
    /// Bytes of the file that readers may see: durable (or written, with `durability = "os"`).
    visible_len: u64,
    /// The offset after the last visible batch.
    next_offset: Offset,
}

#[derive(Debug)]
pub struct Segment {
    base: Offset,
    dir: PathBuf,
    path: PathBuf,
    file: File,
    state: Mutex<SegmentState>,
}

/// Where a scan of batches stopped.
#[derive(Debug)]
struct ScanEnd {
    position: u64,
    next_offset: Offset,
    problem: Option<Corruption>,
}

impl Segment {
    /// Creates a new, empty segment file and makes its directory entry durable.
    pub fn create(dir: &Path, base: Offset) -> Result<Self, LogError> {
        let path = log_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path, "create segment"))?;
        // Not left behind when its entry cannot be made durable, so that a later roll (once
        // the disk has room) can create it.
        sync_dir(dir).inspect_err(|_| {
            let _ = fs::remove_file(&path);
        })?;
        Ok(Self::new(
            dir,
            base,
            path,
            file,
            SegmentIndex::default(),
            0,
            base,
        ))
    }

    fn new(
        dir: &Path,
        base: Offset,
        path: PathBuf,
        file: File,
        index: SegmentIndex,
        visible_len: u64,
        next_offset: Offset,
    ) -> Self {
        Self {
            base,
            dir: dir.to_path_buf(),
            path,
            file,
            state: Mutex::new(SegmentState {
                index,
                visible_len,
                next_offset,
            }),
        }
    }

    fn open_file(path: &Path) -> Result<File, LogError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path, "open segment"))
    }

    /// Opens a sealed segment: loads its indexes when they pass their checks and rebuilds them
    /// from the data otherwise. Every byte of a sealed segment was durable before the next
    /// segment was created, so anything invalid in it is corruption, never a torn write.
    pub fn open_sealed(dir: &Path, base: Offset) -> Result<Self, LogError> {
        let path = log_path(dir, base);
        let file = Self::open_file(&path)?;
        let len = file_len(&file, &path)?;
        if let Some((index, next_offset)) = load_index(dir, base, &file, &path, len)? {
            return Ok(Self::new(dir, base, path, file, index, len, next_offset));
        }
        let (index, end) = rebuild(&file, &path, base, len)?;
        if let Some(problem) = end.problem {
            return Err(LogError::Corrupt {
                path,
                position: end.position,
                problem,
            });
        }
        let segment = Self::new(dir, base, path, file, index, len, end.next_offset);
        segment.write_index_files()?;
        Ok(segment)
    }

    /// Opens the replacement compaction wrote for the sealed segment at `base` at `written`
    /// (synced), checking every batch, before it is renamed over the segment: the result is
    /// the segment as it will be at its own path.
    pub fn open_replacement(dir: &Path, base: Offset, written: &Path) -> Result<Self, LogError> {
        let file = Self::open_file(written)?;
        let len = file_len(&file, written)?;
        let (index, end) = rebuild(&file, written, base, len)?;
        if let Some(problem) = end.problem {
            return Err(LogError::Corrupt {
                path: written.to_path_buf(),
                position: end.position,
                problem,
            });
        }
        Ok(Self::new(
            dir,
            base,
            log_path(dir, base),
            file,
            index,
            len,
            end.next_offset,
        ))
    }

    /// When the segment's data file was last written: for a sealed segment, when it was sealed
    /// (compaction keeps the time on the segments it rewrites).
    pub fn modified(&self) -> Result<std::time::SystemTime, LogError> {
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .map_err(io_error(&self.path, "stat segment"))
    }

    /// Opens the last segment after a start: validates every batch and cuts a torn tail.
    /// `durable_len` is how many bytes were known durable before the stop; an invalid batch
    /// inside them is corruption, past them it is a write the stop interrupted.
    pub fn recover_active(dir: &Path, base: Offset, durable_len: u64) -> Result<Self, LogError> {
        let path = log_path(dir, base);
        let file = Self::open_file(&path)?;
        let len = file_len(&file, &path)?;
        if len < durable_len {
            return Err(LogError::Corrupt {
                path,
                position: len,
                problem: Corruption::MissingDurableBytes { durable_len },
            });
        }
        let (index, end) = rebuild(&file, &path, base, len)?;
        if let Some(problem) = end.problem {
            if end.position < durable_len {
                return Err(LogError::Corrupt {
                    path,
                    position: end.position,
                    problem,
                });
            }
            tracing::warn!(
                segment = %path.display(),
                position = end.position,
                removed_bytes = len - end.position,
                %problem,
                "truncating a torn tail left by an interrupted write (never acknowledged)"
            );
            file.set_len(end.position)
                .and_then(|()| file.sync_all())
                .map_err(io_error(&path, "truncate torn tail"))?;
        }
        Ok(Self::new(
            dir,
            base,
            path,
            file,
            index,
            end.position,
            end.next_offset,
        ))
    }

    pub fn base(&self) -> Offset {
        self.base
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> MutexGuard<'_, SegmentState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn visible_len(&self) -> u64 {
        self.state().visible_len
    }

    pub fn next_offset(&self) -> Offset {
        self.state().next_offset
    }

    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.state().index.max_timestamp()
    }

    /// Writes batch bytes at `position`; they stay invisible until [`Segment::publish`].
    pub fn write_at(&self, position: u64, bytes: &[u8]) -> Result<(), LogError> {
        self.file
            .write_all_at(bytes, position)
            .map_err(io_error(&self.path, "append to segment"))
    }

    pub fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(io_error(&self.path, "fsync segment"))
    }

    /// Cuts written-but-unpublished bytes after a failed write.
    pub fn truncate_to(&self, len: u64) -> Result<(), LogError> {
        self.file
            .set_len(len)
            .map_err(io_error(&self.path, "truncate after failed write"))
    }

    /// Makes batches written up to `len` visible to readers and indexes them.
    pub fn publish(
        &self,
        len: u64,
        next_offset: Offset,
        batches: &[(u64, BatchHeader)],
        interval: u64,
    ) {
        let mut state = self.state();
        for (position, header) in batches {
            state
                .index
                .note_batch(self.base, *position, header, interval);
        }
        state.visible_len = len;
        state.next_offset = next_offset;
    }

    /// Writes both index files from memory and makes them durable; done when the segment is
    /// sealed and at a clean shutdown.
    pub fn write_index_files(&self) -> Result<(), LogError> {
        let (offsets, times) = {
            let state = self.state();
            (
                SegmentIndex::encode_offsets(&state.index.offsets),
                SegmentIndex::encode_times(&state.index.times),
            )
        };
        for (path, bytes) in [
            (offset_index_path(&self.dir, self.base), offsets),
            (time_index_path(&self.dir, self.base), times),
        ] {
            write_durably(&path, &bytes)?;
        }
        Ok(())
    }

    /// Deletes the segment's files; readers holding the segment keep reading the open handle.
    pub fn delete_files(&self) -> Result<(), LogError> {
        delete_files(&self.dir, self.base)
    }

    fn corrupt(&self, position: u64, problem: Corruption) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            position,
            problem,
        }
    }

    fn read_header(&self, position: u64) -> Result<BatchHeader, LogError> {
        let mut buf = [0u8; BATCH_HEADER_LEN];
        self.file
            .read_exact_at(&mut buf, position)
            .map_err(io_error(&self.path, "read batch header"))?;
        BatchHeader::parse(&buf).map_err(|e| self.corrupt(position, Corruption::Batch(e)))
    }

    /// Position of the visible batch that holds `offset`, or `None` when it is past the end.
    pub fn locate(&self, offset: Offset) -> Result<Option<u64>, LogError> {
        let (mut position, visible_len, mut expected) = {
            let state = self.state();
            if offset >= state.next_offset {
                return Ok(None);
            }
            let relative = (offset.0.saturating_sub(self.base.0)).min(u64::from(u32::MAX)) as u32;
            let position = state.index.floor_position(relative);
            let entry_offset = state
                .index
                .offsets
                .iter()
                .rev()
                .find(|e| u64::from(e.position) == position)
                .map_or(self.base, |e| self.base.plus(u64::from(e.relative_offset)));
            (position, state.visible_len, entry_offset)
        };
        while position < visible_len {
            let header = self.read_header(position)?;
            if header.base_offset != expected {
                return Err(self.corrupt(
                    position,
                    Corruption::OffsetGap {
                        expected,
                        found: header.base_offset,
                    },
                ));
            }
            if header.next_offset() > offset {
                return Ok(Some(position));
            }
            position += header.total_len as u64;
            expected = header.next_offset();
        }
        Ok(None)
    }

    /// Reads whole, CRC-checked batches starting at `position`: about `max_bytes` of them, but
    /// always the first whole batch, and none at or past `high_watermark`.
    pub fn read_batches(
        &self,
        position: u64,
        max_bytes: usize,
        high_watermark: Offset,
    ) -> Result<(Bytes, Offset), LogError> {
        let visible_len = self.visible_len();
        let first = self.read_header(position)?;
        let available = visible_len.saturating_sub(position) as usize;
        if first.base_offset < high_watermark && first.total_len > available {
            return Err(self.corrupt(
                position,
                Corruption::Batch(BatchError::Truncated {
                    needed: first.total_len,
                    available,
                }),
            ));
        }
        let want = max_bytes.max(first.total_len).min(available);
        let mut buf = BytesMut::zeroed(want);
        self.file
            .read_exact_at(&mut buf, position)
            .map_err(io_error(&self.path, "read batches"))?;
        let mut used = 0;
        let mut expected = first.base_offset;
        while used + BATCH_HEADER_LEN <= buf.len() {
            let at = position + used as u64;
            let header = BatchHeader::parse(&buf[used..])
                .map_err(|e| self.corrupt(at, Corruption::Batch(e)))?;
            if header.base_offset >= high_watermark || used + header.total_len > buf.len() {
                break;
            }
            if header.base_offset != expected {
                return Err(self.corrupt(
                    at,
                    Corruption::OffsetGap {
                        expected,
                        found: header.base_offset,
                    },
                ));
            }
            batch::verify_crc(&header, &buf[used..used + header.total_len])
                .map_err(|e| self.corrupt(at, Corruption::Batch(e)))?;
            used += header.total_len;
            expected = header.next_offset();
        }
        buf.truncate(used);
        Ok((buf.freeze(), expected))
    }

    /// Visits the headers of visible batches from the one holding `from`, until `visit` says stop.
    pub fn visit_headers(
        &self,
        from: Offset,
        mut visit: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<(), LogError> {
        let Some(mut position) = self.locate(from)? else {
            return Ok(());
        };
        let visible_len = self.visible_len();
        while position < visible_len {
            let header = self.read_header(position)?;
            if !visit(position, &header) {
                break;
            }
            position += header.total_len as u64;
        }
        Ok(())
    }

    /// Reads one whole batch at `position`, checking its CRC.
    pub fn read_batch(&self, position: u64, header: &BatchHeader) -> Result<Bytes, LogError> {
        let mut buf = BytesMut::zeroed(header.total_len);
        self.file
            .read_exact_at(&mut buf, position)
            .map_err(io_error(&self.path, "read batch"))?;
        batch::verify_crc(header, &buf)
            .map_err(|e| self.corrupt(position, Corruption::Batch(e)))?;
        Ok(buf.freeze())
    }

    /// The offset index's time floor for `target`, as an absolute offset.
    pub fn time_floor(&self, target: Timestamp) -> Offset {
        self.state()
            .index
            .time_floor(target)
            .map_or(self.base, |relative| self.base.plus(u64::from(relative)))
    }
}

/// Loads a sealed segment's index files and checks them against the data: the batches after
/// the last entry must run, valid, to the end of the file. `None` means: rebuild them.
fn load_index(
    dir: &Path,
    base: Offset,
    file: &File,
    path: &Path,
    len: u64,
) -> Result<Option<(SegmentIndex, Offset)>, LogError> {
    let loaded = match (
        fs::read(offset_index_path(dir, base)),
        fs::read(time_index_path(dir, base)),
    ) {
        (Ok(offsets), Ok(times)) => SegmentIndex::load(&offsets, &times, len),
        _ => Err("an index file is missing"),
    };
    let mut index = match loaded {
        Ok(index) => index,
        Err(reason) => {
            tracing::warn!(segment = %path.display(), reason, "rebuilding segment index");
            return Ok(None);
        }
    };
    let (tail_start, tail_offset) = index.offsets.last().map_or((0, base), |e| {
        (
            u64::from(e.position),
            base.plus(u64::from(e.relative_offset)),
        )
    });
    let end = scan(file, path, tail_start, len, tail_offset, |_, header| {
        index.note_unindexed_batch(base, header)
    })?;
    if let Some(problem) = end.problem {
        tracing::warn!(segment = %path.display(), %problem, "index does not match the data; rebuilding it");
        return Ok(None);
    }
    Ok(Some((index, end.next_offset)))
}

/// Scans the whole segment and builds its index.
fn rebuild(
    file: &File,
    path: &Path,
    base: Offset,
    len: u64,
) -> Result<(SegmentIndex, ScanEnd), LogError> {
    let mut index = SegmentIndex::default();
    let interval = super::INDEX_INTERVAL_BYTES;
    let end = scan(file, path, 0, len, base, |position, header| {
        index.note_batch(base, position, header, interval)
    })?;
    Ok((index, end))
}

/// Reads batches from `start` to `end` in large windows, checking structure, offset continuity
/// and CRC, and calls `visit` for each valid batch. Stops at the first problem.
fn scan(
    file: &File,
    path: &Path,
    start: u64,
    end: u64,
    first_offset: Offset,
    mut visit: impl FnMut(u64, &BatchHeader),
) -> Result<ScanEnd, LogError> {
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = start;
    let mut position = start;
    let mut expected = first_offset;
    let stop = |position, expected, problem| {
        Ok(ScanEnd {
            position,
            next_offset: expected,
            problem: Some(problem),
        })
    };
    while position < end {
        let remaining = end - position;
        let in_window = (position - window_start) as usize;
        if window.len() < in_window + BATCH_HEADER_LEN.min(remaining as usize) {
            window = read_window(file, path, position, SCAN_WINDOW, end)?;
            window_start = position;
        }
        let offset_in_window = (position - window_start) as usize;
        let header = match BatchHeader::parse(&window[offset_in_window..]) {
            Ok(header) => header,
            Err(e) => return stop(position, expected, Corruption::Batch(e)),
        };
        if header.base_offset != expected {
            return stop(
                position,
                expected,
                Corruption::OffsetGap {
                    expected,
                    found: header.base_offset,
                },
            );
        }
        if header.total_len as u64 > remaining {
            return stop(
                position,
                expected,
                Corruption::Batch(BatchError::Truncated {
                    needed: header.total_len,
                    available: remaining as usize,
                }),
            );
        }
        if window.len() < offset_in_window + header.total_len {
            window = read_window(file, path, position, SCAN_WINDOW.max(header.total_len), end)?;
            window_start = position;
        }
        let offset_in_window = (position - window_start) as usize;
        if let Err(e) = batch::verify_crc(
            &header,
            &window[offset_in_window..offset_in_window + header.total_len],
        ) {
            return stop(position, expected, Corruption::Batch(e));
        }
        visit(position, &header);
        position += header.total_len as u64;
        expected = header.next_offset();
    }
    Ok(ScanEnd {
        position,
        next_offset: expected,
        problem: None,
    })
}

fn read_window(
    file: &File,
    path: &Path,
    position: u64,
    size: usize,
    end: u64,
) -> Result<Vec<u8>, LogError> {
    let len = (size as u64).min(end - position) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, position)
        .map_err(io_error(path, "scan segment"))?;
    Ok(buf)
}

fn file_len(file: &File, path: &Path) -> Result<u64, LogError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(io_error(path, "stat segment"))
}

/// Deletes the files of the segment at `base` in `dir`, those that exist.
pub fn delete_files(dir: &Path, base: Offset) -> Result<(), LogError> {
    remove_if_present(&log_path(dir, base))?;
    delete_index_files(dir, base)
}

/// Deletes the index files (and the columnar form) of the segment at `base` in `dir`, those
/// that exist: they are rebuilt from the data when the segment is next opened (or read).
pub fn delete_index_files(dir: &Path, base: Offset) -> Result<(), LogError> {
    for path in [
        offset_index_path(dir, base),
        time_index_path(dir, base),
        columns_path(dir, base),
        columns_temp_path(dir, base),
    ] {
        remove_if_present(&path)?;
    }
    Ok(())
}

pub fn remove_if_present(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error(path, "delete segment file")(e))
        }
        _ => Ok(()),
    }
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "fsync directory"))
}

/// Replaces a small file so that a crash leaves either the old or the new content.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        file.write_all_at(bytes, 0)?;
        file.sync_data()?;
        fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .map_err(io_error(path, "write file"))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}
