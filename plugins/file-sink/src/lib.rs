//! `file-sink`: appends records to a file, one line each, exactly once across crashes.
//!
//! Config: `path=FILE` (an absolute path inside the sandbox; its directory granted read-write
//! with `wasi.dir-rw`), `format=value|json` (default `value`). One task writes the file,
//! whatever `tasks.max` is: two writers would interleave.
//!
//! - `value`: the record's value bytes as they are, then `\n`. A tombstone (no value) writes
//!   nothing: an empty line would be an empty value.
//! - `json`: one object per line, `{"topic","partition","offset","timestamp","key","value",
//!   "headers":[{"key","value"}]}`; key, value and header values are a string when they are
//!   UTF-8, `{"base64":"..."}` when they are not, and null when absent.
//!
//! Exactly once. `flush` fsyncs the file, then replaces `<path>.offsets` atomically (a
//! temporary file, synced, renamed over it, the directory synced) with the file's length and,
//! per topic and partition, the next offset expected. On start the sink cuts the file back to
//! that length (what was written after the last flush is not committed and comes again) and
//! `put` skips records below the next offset (flushed, but maybe not committed by the worker
//! before a crash). A first start writes the sidecar at once with the file's current length,
//! so a crash before the first flush cannot leave its writes behind either.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use appliance_sdk::host::{self, Level};
use appliance_sdk::{BatchInfo, Config, Record, RecordError, Sink, sink};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

const KNOWN_KEYS: &[&str] = &["path", "format"];

/// How each record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Value,
    Json,
}

impl Format {
    /// Appends `record`'s line to `out`; a tombstone in `value` format appends nothing.
    fn write(self, info: &BatchInfo, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Format::Value => {
                if let Some(value) = &record.value {
                    out.extend_from_slice(value);
                    out.push(b'\n');
                }
            }
            Format::Json => {
                let line = JsonLine {
                    topic: &info.topic,
                    partition: info.partition,
                    offset: record.offset,
                    timestamp: record.timestamp,
                    key: Bytes(record.key.as_deref()),
                    value: Bytes(record.value.as_deref()),
                    headers: record
                        .headers
                        .iter()
                        .map(|header| JsonHeader {
                            key: &header.key,
                            value: Bytes(Some(&header.value)),
                        })
                        .collect(),
                };
                serde_json::to_writer(&mut *out, &line)
                    .map_err(|e| format!("cannot write the record as JSON: {e}"))?;
                out.push(b'\n');
            }
        }
        Ok(())
    }
}

/// A record in `json` format.
#[derive(Serialize)]
struct JsonLine<'a> {
    topic: &'a str,
    partition: u32,
    offset: i64,
    timestamp: i64,
    key: Bytes<'a>,
    value: Bytes<'a>,
    headers: Vec<JsonHeader<'a>>,
}

#[derive(Serialize)]
struct JsonHeader<'a> {
    key: &'a str,
    value: Bytes<'a>,
}

/// Bytes in JSON: a string when they are UTF-8, `{"base64": ...}` when not, null when absent.
struct Bytes<'a>(Option<&'a [u8]>);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(bytes) = self.0 else {
            return serializer.serialize_none();
        };
        match std::str::from_utf8(bytes) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("base64", &STANDARD.encode(bytes))?;
                map.end()
            }
        }
    }
}

/// The sidecar `<path>.offsets`: what the data file held at the last flush.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Offsets {
    version: u32,
    /// The data file's length: bytes past it were written after the flush.
    length: u64,
    next: Vec<NextOffset>,
}

impl Offsets {
    const VERSION: u32 = 1;

    /// The sidecar at `path`, or none when there is none yet.
    fn read(path: &Path) -> Result<Option<Self>, String> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let offsets: Self = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a file-sink offsets file: {e}", path.display()))?;
        if offsets.version != Self::VERSION {
            return Err(format!(
                "{} has version {}; this plugin reads version {}",
                path.display(),
                offsets.version,
                Self::VERSION
            ));
        }
        Ok(Some(offsets))
    }
}

/// The next offset expected from one topic partition.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextOffset {
    topic: String,
    partition: u32,
    offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TopicPartition {
    topic: String,
    partition: u32,
}

/// The configuration, checked.
#[derive(Debug)]
struct Settings {
    path: PathBuf,
    format: Format,
}

impl Settings {
    fn parse(config: &Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let path = PathBuf::from(config.require("path", "the file to append to")?);
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(format!(
                "{} is not an absolute path of a file; name it as the sandbox sees it (its \
                 directory granted with wasi.dir-rw)",
                path.display()
            ));
        }
        let format = match config.get("format").map(str::trim) {
            None | Some("value") => Format::Value,
            Some("json") => Format::Json,
            Some(other) => {
                return Err(format!("key `format` is `value` or `json`, not {other:?}"));
            }
        };
        Ok(Self { path, format })
    }
}

#[sink]
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    /// `<path>.offsets` and the temporary file it is written to first.
    offsets_path: PathBuf,
    offsets_tmp: PathBuf,
    format: Format,
    /// The data file, positioned at its end, `length`.
    file: File,
    length: u64,
    /// The next offset expected per topic partition: everything below is in the file.
    next: BTreeMap<TopicPartition, i64>,
    /// Whether the file or `next` changed since the last flush.
    dirty: bool,
    /// Why the file's state is unknown (a write that could not be taken back, a failed
    /// fsync): every call fails until the task restarts, which cuts the file back to the
    /// last flush.
    broken: Option<String>,
}

impl Sink for FileSink {
    fn plan(config: Config, _max_tasks: u32) -> Result<Vec<Config>, String> {
        Settings::parse(&config)?;
        Ok(vec![config])
    }

    fn init(config: Config) -> Result<Self, String> {
        let Settings { path, format } = Settings::parse(&config)?;
        let offsets_path = with_suffix(&path, ".offsets");
        let offsets_tmp = with_suffix(&path, ".offsets.tmp");
        let dir = path.parent().unwrap_or(Path::new("/"));
        let offsets = Offsets::read(&offsets_path)?;
        let mut file = OpenOptions::new()
            .write(true)
            // With a sidecar the file must be there: a new empty one would not be the file
            // the sidecar describes.
            .create(offsets.is_none())
            .truncate(false)
            .open(&path)
            .map_err(|e| match &offsets {
                Some(offsets) if e.kind() == io::ErrorKind::NotFound => format!(
                    "{} is missing but {} says it held {} bytes: remove {} as well to start a \
                     new file",
                    path.display(),
                    offsets_path.display(),
                    offsets.length,
                    offsets_path.display()
                ),
                _ => format!(
                    "cannot open {} for writing: {e}; grant the directory with wasi.dir-rw={}",
                    path.display(),
                    dir.display()
                ),
            })?;
        let cannot = |what: &str, e: io::Error| format!("cannot {what} {}: {e}", path.display());
        let found = file.metadata().map_err(|e| cannot("read", e))?.len();
        let length = match &offsets {
            None => found,
            Some(offsets) if found < offsets.length => {
                return Err(format!(
                    "{} has {found} bytes but held {} at the last flush: it was changed by \
                     something else; move it and {} away to start a new file",
                    path.display(),
                    offsets.length,
                    offsets_path.display()
                ));
            }
            Some(offsets) => {
                if found > offsets.length {
                    file.set_len(offsets.length)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| cannot("truncate", e))?;
                    host::log(
                        Level::Info,
                        &format!(
                            "dropped the last {} bytes of {}, written after the last flush: \
                             their records come again",
                            found - offsets.length,
                            path.display()
                        ),
                    );
                }
                offsets.length
            }
        };
        file.seek(SeekFrom::Start(length))
            .map_err(|e| cannot("write to", e))?;
        let next = offsets
            .as_ref()
            .map(|offsets| {
                offsets
                    .next
                    .iter()
                    .map(|next| {
                        let partition = TopicPartition {
                            topic: next.topic.clone(),
                            partition: next.partition,
                        };
                        (partition, next.offset)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sink = Self {
            path,
            offsets_path,
            offsets_tmp,
            format,
            file,
            length,
            next,
            dirty: false,
            broken: None,
        };
        if offsets.is_none() {
            // The file's length now is where a crash before the first flush cuts back to.
            sink.write_offsets()?;
        }
        Ok(sink)
    }

    fn put(&mut self, info: &BatchInfo, records: Vec<Record>) -> Result<(), RecordError> {
        if let Some(why) = &self.broken {
            return Err(RecordError {
                index: 0,
                message: why.clone(),
            });
        }
        let partition = TopicPartition {
            topic: info.topic.clone(),
            partition: info.partition,
        };
        // Fixed for the batch: a transform may turn one record into several with its offset.
        let written_below = self.next.get(&partition).copied();
        let mut skipped = 0;
        // The first record written and the offset after the last.
        let mut first = None;
        let mut next = None;
        let mut failure = None;
        let mut lines = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if written_below.is_some_and(|below| record.offset < below) {
                skipped += 1;
                continue;
            }
            let before = lines.len();
            if let Err(message) = self.format.write(info, record, &mut lines) {
                lines.truncate(before);
                failure = Some(RecordError {
                    index: index as u32,
                    message,
                });
                break;
            }
            first.get_or_insert(index);
            next = Some(record.offset.saturating_add(1));
        }
        if skipped > 0 {
            host::counter_add("records_skipped", skipped);
        }
        if let (Some(first), Some(next)) = (first, next) {
            self.append(&lines).map_err(|message| RecordError {
                index: first as u32,
                message,
            })?;
            self.next.insert(partition, next);
            self.dirty = true;
        }
        failure.map_or(Ok(()), Err)
    }

    fn flush(&mut self) -> Result<(), String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if !self.dirty {
            return Ok(());
        }
        if let Err(e) = self.file.sync_all() {
            // After a failed fsync the system may have dropped the pages it could not write,
            // and a second fsync can succeed without them: only a restart (which cuts the
            // file back to the last flush) is safe.
            let message = format!(
                "cannot sync {}: {e}; the task must restart",
                self.path.display()
            );
            self.broken = Some(message.clone());
            return Err(message);
        }
        self.write_offsets()?;
        self.dirty = false;
        Ok(())
    }
}

impl FileSink {
    /// Appends `bytes` to the file; on an error, takes back what part was written so the
    /// records can be put again whole.
    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Err(e) = self.file.write_all(bytes) else {
            self.length += bytes.len() as u64;
            return Ok(());
        };
        let message = format!("cannot write to {}: {e}", self.path.display());
        let undo = self
            .file
            .set_len(self.length)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.length)));
        if let Err(undo) = undo {
            self.broken = Some(format!(
                "{message}, nor take the partial write back ({undo}); the task must restart"
            ));
        }
        Err(message)
    }

    /// Durably replaces the sidecar with the file's length and the next offsets.
    fn write_offsets(&self) -> Result<(), String> {
        let offsets = Offsets {
            version: Offsets::VERSION,
            length: self.length,
            next: self
                .next
                .iter()
                .map(|(partition, &offset)| NextOffset {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    offset,
                })
                .collect(),
        };
        let write = || -> io::Result<()> {
            let mut tmp = File::create(&self.offsets_tmp)?;
            serde_json::to_writer_pretty(&mut tmp, &offsets)?;
            tmp.write_all(b"\n")?;
            tmp.sync_all()?;
            fs::rename(&self.offsets_tmp, &self.offsets_path)?;
            // The rename (and the data file's creation) last only once the directory is synced.
            File::open(self.path.parent().unwrap_or(Path::new("/")))?.sync_all()
        };
        write().map_err(|e| {
            format!(
                "cannot record the flushed offsets in {}: {e}",
                self.offsets_path.display()
            )
        })
    }
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests;
