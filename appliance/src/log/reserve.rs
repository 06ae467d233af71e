//! A reserve of disk space for the day the data directory's disk fills up (CockroachDB's
//! "ballast file"): a file of `log.disk-reserve-mb` allocated in the data directory.
//!
//! At start, when the disk has less free than the reserve's size, the reserve is deleted
//! before anything else opens, so that the metadata store can open and the appliance starts:
//! it serves reads and deletes, and writes are refused with RESOURCE_EXHAUSTED until the
//! operator made room (deleted topics, lowered retention). Retention puts the reserve back
//! once the disk has twice its size free.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub(super) const FILE_NAME: &str = "disk-reserve";

/// The reserve file of one data directory.
#[derive(Debug, Clone)]
pub struct DiskReserve {
    path: PathBuf,
    bytes: u64,
}

impl DiskReserve {
    /// The reserve of `data_dir`, `bytes` large; 0 keeps none.
    pub fn new(data_dir: &Path, bytes: u64) -> Self {
        Self {
            path: data_dir.join(FILE_NAME),
            bytes,
        }
    }

    /// Deletes the reserve when the disk has less free than its size; whether it did.
    pub fn release_if_short(&self) -> io::Result<bool> {
        if !self.path.exists() || free_bytes(&self.path)? >= self.bytes {
            return Ok(false);
        }
        std::fs::remove_file(&self.path)?;
        tracing::warn!(
            path = %self.path.display(),
            reserve_mb = self.bytes >> 20,
            "the data directory's disk is full: released the disk reserve so the appliance can \
             start; writes fail until there is room (delete topics or lower their retention)"
        );
        Ok(true)
    }

    /// Allocates the reserve when it is missing and the disk has twice its size free.
    pub fn restore_if_room(&self) -> io::Result<()> {
        if self.bytes == 0 || self.path.exists() {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if free_bytes(dir)? < self.bytes.saturating_mul(2) {
            return Ok(());
        }
        let allocate = |file: &File| -> io::Result<()> {
            let len = i64::try_from(self.bytes).map_err(io::Error::other)?;
            nix::fcntl::posix_fallocate(file, 0, len)?;
            file.sync_all()
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)?;
        if let Err(error) = allocate(&file) {
            drop(file);
            std::fs::remove_file(&self.path)?;
            return Err(error);
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
#[allow(
    clippy::useless_conversion,
    reason = "the counts are u32 on 32-bit ARM gateways' C libraries"
)]
pub(super) fn free_bytes(path: &Path) -> io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    Ok(u64::from(stats.blocks_available()) * u64::from(stats.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_when_there_is_room_and_released_only_when_short() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::new(dir.path(), 1 << 20);
        reserve.restore_if_room().unwrap();
        let file = dir.path().join(FILE_NAME);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
        assert!(!reserve.release_if_short().unwrap(), "the disk has room");
        assert!(file.exists());

        let huge = DiskReserve::new(dir.path(), u64::MAX / 4);
        assert!(
            huge.release_if_short().unwrap(),
            "no disk has that much free"
        );
        assert!(!file.exists());
        huge.restore_if_room().unwrap();
        assert!(!file.exists(), "not put back without twice its size free");
        DiskReserve::new(dir.path(), 0).restore_if_room().unwrap();
        assert!(!file.exists(), "a reserve of 0 is none");
    }
}
