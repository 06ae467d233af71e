//! Opening a partition: its segments listed and checked, the recovery point, and the log
//! start a restart moved it to.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BufMut};

use crate::log::segment::{self, Segment};
use crate::log::{Corruption, LogError, Offset, io_error};

const RECOVERY_POINT_FILE: &str = "recovery-point";
const RECOVERY_POINT_LEN: usize = 20;
const LOG_START_FILE: &str = "log-start";
const LOG_START_LEN: usize = 12;

/// Lists the segments in `dir`, opens the sealed ones and recovers the active one.
pub(super) fn recover(
    dir: &Path,
    create: bool,
) -> Result<(Vec<Arc<Segment>>, RecoveryPointFile), LogError> {
    if !dir.exists() {
        if !create {
            tracing::warn!(dir = %dir.display(), "partition directory is missing; starting it empty");
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir, "create partition directory"))?;
        if let Some(parent) = dir.parent() {
            segment::sync_dir(parent)?;
        }
    }
    let mut bases = Vec::new();
    let mut columnar = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir, "list partition"))? {
        let entry = entry.map_err(io_error(dir, "list partition"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_log_file_name(name) {
            bases.push(base);
        } else if segment::is_compacting_file_name(name) {
            tracing::warn!(file = %entry.path().display(), "deleting the unfinished replacement of a compaction the stop interrupted; the segment it was for is whole");
            segment::remove_if_present(&entry.path())?;
        } else if let Some((base, unfinished)) = segment::parse_columns_file_name(name) {
            columnar.push((base, unfinished, entry.path()));
        }
    }
    bases.sort();
    // A columnar form being written when the process stopped, or one renamed into place just
    // after retention deleted its segment, is of no use.
    for (base, unfinished, path) in columnar {
        if unfinished || bases.binary_search(&base).is_err() {
            segment::remove_if_present(&path)?;
        }
    }
    let log_start = read_log_start(dir)?;
    if let Some(start) = log_start {
        let below = bases.partition_point(|&base| base < start);
        finish_restart(dir, start, bases.drain(..below))?;
    }
    let recovery_point = RecoveryPointFile::open(dir)?;
    let Some((&active_base, sealed_bases)) = bases.split_last() else {
        let base = recovery_point
            .last
            .map_or(Offset(0), |p| p.base)
            .max(log_start.unwrap_or(Offset(0)));
        let first = Segment::create(dir, base)?;
        return Ok((vec![Arc::new(first)], recovery_point));
    };
    let mut segments = Vec::with_capacity(bases.len());
    let mut expected: Option<Offset> = None;
    for &base in sealed_bases {
        let segment = Segment::open_sealed(dir, base)?;
        check_follows(&segment, expected)?;
        expected = Some(segment.next_offset());
        segments.push(Arc::new(segment));
    }
    let durable_len = match recovery_point.last {
        Some(point) if point.base == active_base => point.durable_len,
        Some(point) if point.base > active_base => {
            return Err(LogError::Corrupt {
                path: segment::log_path(dir, point.base),
                position: 0,
                problem: Corruption::MissingDurableBytes {
                    durable_len: point.durable_len,
                },
            });
        }
        _ => 0,
    };
    let active = Segment::recover_active(dir, active_base, durable_len)?;
    check_follows(&active, expected)?;
    segments.push(Arc::new(active));
    Ok((segments, recovery_point))
}

/// Deletes the segments a restart of the partition at `start` left behind when the process
/// stopped midway (see [`Writer::restart_at`]).
///
/// Why a `log-start` file rather than inferring the restart from the segments (older ones,
/// then an empty one starting after their end): that shape is also what losing a segment file
/// looks like, and recovery must never delete data on a guess. Why not a field of the
/// recovery point: that file is overwritten in place without an fsync and ignored when torn,
/// which is harmless for what it says (it only narrows checks) but not for a value that
/// decides what to delete; `log-start` is replaced atomically and synced.
///
/// Segments below `start` are deleted by their base offset alone: a restart writes the file
/// only when every segment ends at or before `start`, and after it every new segment starts
/// at or after it.
fn finish_restart(
    dir: &Path,
    start: Offset,
    leftovers: impl Iterator<Item = Offset>,
) -> Result<(), LogError> {
    let mut deleted = false;
    for base in leftovers {
        tracing::warn!(
            segment = %segment::log_path(dir, base).display(),
            log_start = %start,
            "finishing an interrupted restart of the partition: deleting a segment below its new start"
        );
        segment::delete_files(dir, base)?;
        deleted = true;
    }
    if deleted {
        segment::sync_dir(dir)?;
    }
    Ok(())
}

/// The start a restart of the partition moved it to, if it was ever restarted.
fn read_log_start(dir: &Path) -> Result<Option<Offset>, LogError> {
    let path = dir.join(LOG_START_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, "read log start")(e)),
    };
    let valid = bytes.len() == LOG_START_LEN && {
        let (body, mut crc) = bytes.split_at(8);
        crc32c::crc32c(body) == crc.get_u32()
    };
    if !valid {
        return Err(LogError::Corrupt {
            path,
            position: 0,
            problem: Corruption::DamagedLogStart,
        });
    }
    Ok(Some(Offset((&bytes[..8]).get_u64())))
}

/// Durably replaces the `log-start` file: an offset and its CRC-32C.
pub(in crate::log) fn write_log_start(dir: &Path, start: Offset) -> Result<(), LogError> {
    let mut buf = Vec::with_capacity(LOG_START_LEN);
    buf.put_u64(start.0);
    let crc = crc32c::crc32c(&buf);
    buf.put_u32(crc);
    segment::write_durably(&dir.join(LOG_START_FILE), &buf)
}

fn check_follows(segment: &Segment, expected: Option<Offset>) -> Result<(), LogError> {
    match expected {
        Some(expected) if segment.base() != expected => Err(LogError::Corrupt {
            path: segment.path().to_path_buf(),
            position: 0,
            problem: Corruption::SegmentGap { expected },
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecoveryPoint {
    pub base: Offset,
    pub durable_len: u64,
}

/// The `recovery-point` file: overwritten in place after each durable commit, never fsynced on
/// its own. Whatever value reached the disk was true when written, because it is written only
/// after the data it describes was fsynced.
#[derive(Debug)]
pub(super) struct RecoveryPointFile {
    file: File,
    path: PathBuf,
    last: Option<RecoveryPoint>,
}

impl RecoveryPointFile {
    fn open(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(RECOVERY_POINT_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path, "open recovery point"))?;
        let mut buf = [0u8; RECOVERY_POINT_LEN];
        let last = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => {
                let (body, mut crc) = buf.split_at(16);
                if crc32c::crc32c(body) == crc.get_u32() {
                    let mut body = body;
                    Some(RecoveryPoint {
                        base: Offset(body.get_u64()),
                        durable_len: body.get_u64(),
                    })
                } else {
                    tracing::warn!(file = %path.display(), "recovery point is damaged; checking the whole active segment as a possible torn tail");
                    None
                }
            }
            Err(_) => None,
        };
        Ok(Self { file, path, last })
    }

    pub(super) fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_all()
            .map_err(io_error(&self.path, "fsync recovery point"))
    }

    pub(super) fn write(&mut self, point: RecoveryPoint) -> Result<(), LogError> {
        if self.last == Some(point) {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(RECOVERY_POINT_LEN);
        buf.put_u64(point.base.0);
        buf.put_u64(point.durable_len);
        let crc = crc32c::crc32c(&buf);
        buf.put_u32(crc);
        self.file
            .write_all_at(&buf, 0)
            .map_err(io_error(&self.path, "write recovery point"))?;
        self.last = Some(point);
        Ok(())
    }
}
