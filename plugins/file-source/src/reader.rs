//! One open file, read in chunks and cut into records.
//!
//! The reader keeps the file's first bytes (its fingerprint, see [`crate::position`]) and the
//! bytes read past the last record. A record's position is the offset right after it, so a
//! line is only taken once its newline is there: a restart never splits a line the writer
//! was still writing.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::position::{FINGERPRINT_BYTES, Fingerprint, Position};

/// How much one read takes from the file: bounds the buffer whatever the file's size.
const READ_CHUNK: u64 = 64 * 1024;

/// Where the reader is in the life of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The file at the configured path: a partial last line waits for its newline.
    Live,
    /// A file that is no longer at the path (rotated): read it to its end, the writer may
    /// have appended before it moved on.
    Draining,
    /// A rotated file read to its end: its unterminated last line is a record too, and after
    /// it the task moves to the file now at the path.
    Finishing,
}

/// What became of the file at the configured path since this reader opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Still the reader's file, or no file at all yet (the writer may still append to the
    /// reader's file, which keeps it).
    Same,
    /// Another file is there now: the reader's file was renamed away (logrotate's `create`).
    Replaced,
    /// The reader's own file shrank or was rewritten in place (logrotate's `copytruncate`).
    Truncated,
}

#[derive(Debug)]
pub struct Reader {
    file: File,
    /// The file's name, for messages (a rotated file's name once the task follows it).
    name: PathBuf,
    /// The file's first min(1024, bytes read) bytes.
    head: Vec<u8>,
    /// The fingerprint of the whole `head` once it is [`FINGERPRINT_BYTES`] long, which is
    /// every position's from then on.
    full: Option<Fingerprint>,
    /// The file offset of `pending[0]`.
    base: u64,
    /// Bytes read from the file and not yet handed out whole; `pending[..taken]` are handed
    /// out.
    pending: Vec<u8>,
    taken: usize,
    pub phase: Phase,
}

impl Reader {
    /// Reads `file` from `offset`, which must not be past its end.
    pub fn at(mut file: File, name: PathBuf, offset: u64, phase: Phase) -> io::Result<Self> {
        let mut head = vec![0; offset.min(FINGERPRINT_BYTES as u64) as usize];
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut head)?;
        file.seek(SeekFrom::Start(offset))?;
        let full = (head.len() == FINGERPRINT_BYTES).then(|| Fingerprint::of(&head));
        Ok(Self {
            file,
            name,
            head,
            full,
            base: offset,
            pending: Vec::new(),
            taken: 0,
            phase,
        })
    }

    pub fn name(&self) -> &Path {
        &self.name
    }

    /// Continues in `copy`, a copy of this reader's file holding at least the bytes read
    /// (what `copytruncate` leaves behind), from where this reader stopped reading.
    pub fn continue_in(&mut self, mut copy: File, name: PathBuf) -> io::Result<()> {
        copy.seek(SeekFrom::Start(self.read_to()))?;
        self.file = copy;
        self.name = name;
        self.phase = Phase::Draining;
        Ok(())
    }

    /// The offset right after the last byte read.
    fn read_to(&self) -> u64 {
        self.base + self.pending.len() as u64
    }

    /// The position at `offset`, which is no further than what was read.
    pub fn position(&self, offset: u64) -> Position {
        let len = offset.min(FINGERPRINT_BYTES as u64) as usize;
        let fingerprint = match self.full {
            Some(full) if len == FINGERPRINT_BYTES => full,
            _ => Fingerprint::of(&self.head[..len]),
        };
        Position {
            fingerprint,
            offset,
        }
    }

    /// The position right after everything read, for finding a copy of the file.
    pub fn read_position(&self) -> Position {
        self.position(self.read_to())
    }

    /// The next record: a whole line without its `\n` (and a `\r` before it), or `max_line`
    /// bytes of a longer line. With `at_end` the file will not grow: what is left of an
    /// unterminated last line is a record too.
    pub fn take(&mut self, max_line: usize, at_end: bool) -> Option<(Vec<u8>, Position)> {
        let rest = &self.pending[self.taken..];
        // A line of `max_line` bytes may be followed by `\r\n`: look that far for its end.
        let window = &rest[..rest.len().min(max_line + 2)];
        let (value, used) = match window.iter().position(|&b| b == b'\n') {
            Some(newline) => {
                let line = &rest[..newline];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() <= max_line {
                    (line, newline + 1)
                } else {
                    (&rest[..max_line], max_line)
                }
            }
            // No newline that far: the line is longer than `max_line` whatever follows.
            None if rest.len() >= max_line + 2 => (&rest[..max_line], max_line),
            None if at_end && !rest.is_empty() => {
                let len = rest.len().min(max_line);
                (&rest[..len], len)
            }
            None => return None,
        };
        let value = value.to_vec();
        self.taken += used;
        Some((value, self.position(self.base + self.taken as u64)))
    }

    /// Reads up to one chunk more; 0 at the end of the file.
    pub fn read_chunk(&mut self) -> io::Result<usize> {
        // Drop what was handed out, so the buffer holds at most a line and a chunk.
        self.pending.drain(..self.taken);
        self.base += self.taken as u64;
        self.taken = 0;
        let before = self.pending.len();
        let read = (&mut self.file)
            .take(READ_CHUNK)
            .read_to_end(&mut self.pending)?;
        // While the head is short, what was read so far is the whole file: the new bytes
        // continue it.
        let missing = FINGERPRINT_BYTES - self.head.len();
        if missing > 0 {
            let new = &self.pending[before..];
            self.head.extend_from_slice(&new[..new.len().min(missing)]);
            if self.head.len() == FINGERPRINT_BYTES {
                self.full = Some(Fingerprint::of(&self.head));
            }
        }
        Ok(read)
    }

    /// Whether the reader's own file shrank below what was read or no longer starts with the
    /// bytes read: truncated (and maybe written again) in place.
    pub fn truncated(&mut self) -> io::Result<bool> {
        if self.file.metadata()?.len() < self.read_to() {
            return Ok(true);
        }
        let same = starts_with(&mut self.file, &self.head)?;
        self.file.seek(SeekFrom::Start(self.read_to()))?;
        Ok(!same)
    }

    /// Compares the file now at `path` with the reader's, at the end of the reader's file.
    pub fn change(&mut self, path: &Path) -> io::Result<Change> {
        if self.truncated()? {
            return Ok(Change::Truncated);
        }
        let mut current = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Change::Same),
            Err(e) => return Err(e),
        };
        let len = current.metadata()?.len();
        if len < self.read_to() || !starts_with(&mut current, &self.head)? {
            return Ok(Change::Replaced);
        }
        // The same file is never shorter than it was a moment ago (truncation was ruled out
        // above): a longer file at the path is another file, even one that starts alike.
        if self.file.metadata()?.len() < len {
            return Ok(Change::Replaced);
        }
        Ok(Change::Same)
    }
}

/// Whether `file` starts with `head`. Moves the file's cursor.
fn starts_with(file: &mut File, head: &[u8]) -> io::Result<bool> {
    if head.is_empty() {
        return Ok(true);
    }
    let mut start = vec![0; head.len()];
    file.seek(SeekFrom::Start(0))?;
    match file.read_exact(&mut start) {
        Ok(()) => Ok(start == head),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
