//! A task's position: which file it read (by fingerprint, since WASI offers no inode numbers)
//! and the byte offset right after the last record.
//!
//! Encoding, version 1: 21 bytes, integers big-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0 | format version, 1 |
//! | 1..5 | K, how many leading bytes of the file the fingerprint covers (u32) |
//! | 5..13 | FNV-1a 64 hash of those K bytes (u64) |
//! | 13..21 | offset of the next byte to read (u64) |
//!
//! K is min(1024, offset): a file identifies itself by the bytes already read, so a file
//! shorter than 1024 bytes still has a fingerprint, one that grows with it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

/// How many leading bytes of a file identify it at most.
pub const FINGERPRINT_BYTES: usize = 1024;

/// Identifies a file by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// How many leading bytes it covers (K).
    pub len: usize,
    pub hash: u64,
}

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            len: bytes.len(),
            hash: fnv1a(bytes),
        }
    }
}

/// Where a task is in a file: right after the record that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub fingerprint: Fingerprint,
    pub offset: u64,
}

impl Position {
    const VERSION: u8 = 1;
    const ENCODED_LEN: usize = 21;

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::ENCODED_LEN);
        bytes.push(Self::VERSION);
        // K is at most FINGERPRINT_BYTES, so it fits.
        bytes.extend_from_slice(&(self.fingerprint.len as u32).to_be_bytes());
        bytes.extend_from_slice(&self.fingerprint.hash.to_be_bytes());
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let version = *bytes
            .first()
            .ok_or("a file-source position cannot be empty")?;
        if version != Self::VERSION {
            return Err(format!(
                "file-source position of version {version}; this plugin reads version {}",
                Self::VERSION
            ));
        }
        if bytes.len() != Self::ENCODED_LEN {
            return Err(format!(
                "a file-source position of version {version} is {} bytes, not {}",
                Self::ENCODED_LEN,
                bytes.len()
            ));
        }
        let len = be(&bytes[1..5]) as usize;
        let hash = be(&bytes[5..13]);
        let offset = be(&bytes[13..21]);
        if len > FINGERPRINT_BYTES || len as u64 > offset {
            return Err(format!(
                "malformed file-source position: a fingerprint of {len} bytes at offset \
                 {offset} (it covers at most {FINGERPRINT_BYTES} bytes, and no more than the \
                 offset)"
            ));
        }
        Ok(Self {
            fingerprint: Fingerprint { len, hash },
            offset,
        })
    }

    /// Whether `file` is the file this position is in: at least `offset` long, with the
    /// fingerprint's first bytes. Moves the file's cursor.
    pub fn is_in(&self, file: &mut File) -> io::Result<bool> {
        if file.metadata()?.len() < self.offset {
            return Ok(false);
        }
        let mut head = vec![0; self.fingerprint.len];
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut head)?;
        Ok(Fingerprint::of(&head) == self.fingerprint)
    }
}

/// A big-endian unsigned integer of up to 8 bytes.
fn be(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |value, &byte| value << 8 | u64::from(byte))
}

/// FNV-1a, 64 bits: tiny, no dependency, and ample to tell a handful of log files apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_positions() {
        let position = Position {
            fingerprint: Fingerprint::of(b"hello"),
            offset: 7,
        };
        let bytes = position.encode();
        assert_eq!(bytes.len(), 21);
        assert_eq!(bytes[0], 1, "the first byte is the version");
        assert_eq!(Position::decode(&bytes), Ok(position));

        assert!(Position::decode(&[]).unwrap_err().contains("empty"));
        assert!(
            Position::decode(&bytes[..20])
                .unwrap_err()
                .contains("21 bytes")
        );
        let mut future = bytes.clone();
        future[0] = 2;
        assert!(Position::decode(&future).unwrap_err().contains("version 2"));
        let too_long = Position {
            fingerprint: Fingerprint::of(b"hello"),
            offset: 3,
        };
        assert!(
            Position::decode(&too_long.encode())
                .unwrap_err()
                .contains("malformed")
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
