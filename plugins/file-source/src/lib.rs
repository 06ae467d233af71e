//! `file-source`: tails text files, one record per line, through log rotation.
//!
//! Config: `path=FILE` or `paths=A|B` (absolute paths inside the sandbox, whose directories
//! the operator grants with `wasi.dir`), `start.at=beginning|end` (first start only, default
//! beginning), `max.line.bytes` (default 1 MiB: a longer line becomes several records of that
//! size). `plan` gives each file a task of its own. A record's value is the line without its
//! `\n` (nor a `\r` before it), it has no key, a header `file` with the configured path, and
//! the time it was read as its timestamp.
//!
//! Positions. WASI offers no inode numbers, so a file is known by a fingerprint of its first
//! bytes; a task's position is that fingerprint and the offset right after its last record
//! (`position.rs` has the encoding). A partial last line is not a record until its newline
//! arrives, so a restart resumes at exactly the next byte of a whole line.
//!
//! Rotation. The task keeps its file open. At the end of it, it compares the file now at the
//! path with its own (`Reader::change`): a different file there means the old one
//! was renamed (`app.log` to `app.log.1`): the task reads the old file to its end (the writer
//! may have appended before moving on), takes its unterminated last line as a record, and
//! starts the new file at 0. A file shrunk or rewritten in place means `copytruncate`: the
//! task finishes the line it had from the copy next to the file (or from memory) and starts
//! again at 0. On a restart, a position whose file is no longer at the path is looked for
//! among the rotated files next to it (`app.log.1`, `app.log-20261123`, not compressed ones),
//! whose rest is read before the file at the path.
//!
//! A poll never waits: it reads what is there, 64 KiB at a time, up to `max` records or
//! 4 MiB of values, and returns nothing when there is nothing new (or no file yet).

mod position;
mod reader;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use appliance_sdk::host::{self, Level};
use appliance_sdk::{Config, Record, Source, SourceRecord, source};

use position::Position;
use reader::{Change, Phase, Reader};

const KNOWN_KEYS: &[&str] = &["path", "paths", "start.at", "max.line.bytes"];
const DEFAULT_MAX_LINE: usize = 1 << 20;
/// A record must fit the instance's memory several times over (buffer, record, the call's
/// output), within the default 64 MiB limit.
const MAX_MAX_LINE: usize = 8 << 20;
/// Bytes of values one poll returns at most: keeps a poll of long lines within memory and
/// the host's bound on one call's output.
const POLL_BYTES: usize = 4 << 20;
/// Rotated files with these suffixes are compressed, not lines to read.
const COMPRESSED: &[&str] = &[".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"];

#[source]
#[derive(Debug)]
pub struct FileSource {
    settings: Settings,
    /// None while there is no file at the path.
    reader: Option<Reader>,
}

/// Where a task starts when it has no position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartAt {
    Beginning,
    End,
}

/// The settings every task of a connector shares.
#[derive(Debug, Clone)]
struct Options {
    start_at: StartAt,
    max_line: usize,
}

impl Options {
    fn parse(config: &Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let start_at = match config.get("start.at").map(str::trim) {
            None | Some("beginning") => StartAt::Beginning,
            Some("end") => StartAt::End,
            Some(other) => {
                return Err(format!(
                    "key `start.at` is `beginning` or `end`, not {other:?}"
                ));
            }
        };
        let max_line: usize = config.parse_or("max.line.bytes", DEFAULT_MAX_LINE)?;
        if !(1..=MAX_MAX_LINE).contains(&max_line) {
            return Err(format!(
                "key `max.line.bytes` is 1 to {MAX_MAX_LINE}, not {max_line}"
            ));
        }
        Ok(Self { start_at, max_line })
    }
}

/// The files a connector configuration names, checked.
fn files(config: &Config) -> Result<Vec<&str>, String> {
    let files: Vec<&str> = config
        .get("path")
        .into_iter()
        .chain(config.list("paths"))
        .collect();
    if files.is_empty() {
        return Err(
            "missing required key `path` (the file to read) or `paths` (several, separated by `|`)"
                .to_owned(),
        );
    }
    for (i, file) in files.iter().enumerate() {
        if !Path::new(file).is_absolute() {
            return Err(format!(
                "{file:?} is not an absolute path; name the file as the sandbox sees it \
                 (its directory granted with wasi.dir)"
            ));
        }
        if files[..i].contains(file) {
            return Err(format!(
                "{file} is named twice; each file is read by one task"
            ));
        }
    }
    Ok(files)
}

/// A task's settings: one file.
#[derive(Debug)]
struct Settings {
    path: PathBuf,
    /// The configured path as given: the `file` header of every record.
    label: String,
    options: Options,
}

impl Settings {
    fn record(&self, value: Vec<u8>, position: Position, now_ms: i64) -> SourceRecord {
        let mut record = Record::from_value(value);
        record.add_header("file", self.label.as_bytes());
        record.timestamp = now_ms;
        SourceRecord {
            record,
            position: position.encode(),
        }
    }

    /// The file at the path from its start, or none while there is none.
    fn open_live(&self) -> Result<Option<Reader>, String> {
        let Some(file) = open_if_there(&self.path)? else {
            return Ok(None);
        };
        Reader::at(file, self.path.clone(), 0, Phase::Live)
            .map(Some)
            .map_err(|e| format!("cannot read {}: {e}", self.label))
    }
}

impl Source for FileSource {
    fn plan(config: Config, max_tasks: u32) -> Result<Vec<Config>, String> {
        Options::parse(&config)?;
        let files = files(&config)?;
        if files.len() > max_tasks as usize {
            let n = files.len();
            return Err(format!(
                "{n} files need {n} tasks: raise tasks.max (`--tasks`; it is {max_tasks})"
            ));
        }
        let shared: Vec<(String, String)> = config
            .pairs()
            .iter()
            .filter(|(key, _)| key != "path" && key != "paths")
            .cloned()
            .collect();
        Ok(files
            .into_iter()
            .map(|file| {
                let mut pairs = shared.clone();
                pairs.push(("path".to_owned(), file.to_owned()));
                Config::new(pairs)
            })
            .collect())
    }

    fn init(config: Config, resume_after: Option<Vec<u8>>) -> Result<Self, String> {
        let options = Options::parse(&config)?;
        let label = match files(&config)?.as_slice() {
            [file] => (*file).to_owned(),
            several => {
                return Err(format!(
                    "a file-source task reads one file, not {} (plan gives each its own task)",
                    several.len()
                ));
            }
        };
        let path = PathBuf::from(&label);
        let dir = parent(&path);
        // A directory that is not granted looks like one that does not exist: say so now
        // rather than wait for a file that cannot appear.
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(e) => {
                return Err(format!(
                    "cannot read directory {dir}: {e}; grant it with wasi.dir={dir}",
                    dir = dir.display()
                ));
            }
        }
        let settings = Settings {
            path,
            label,
            options,
        };
        let reader = match resume_after {
            Some(position) => resume(&settings, Position::decode(&position)?)?,
            None => first_start(&settings)?,
        };
        Ok(Self { settings, reader })
    }

    fn poll(&mut self, max: u32) -> Result<Vec<SourceRecord>, String> {
        let now_ms = host::now_ms();
        let settings = &self.settings;
        let mut out = Vec::new();
        let mut bytes = 0;
        // One move to the next file per poll: however the files churn, a poll ends.
        let mut switched = false;
        if let Some(reader) = &mut self.reader
            && reader.phase == Phase::Live
        {
            // Truncated and written again since the last poll: the bytes past what was read
            // are the new file's, not lines of the old one.
            if reader.truncated().map_err(|e| read_error(reader, &e))? {
                after_truncation(settings, reader)?;
            }
        }
        while out.len() < max as usize && bytes < POLL_BYTES {
            let Some(reader) = &mut self.reader else {
                match settings.open_live()? {
                    Some(reader) => self.reader = Some(reader),
                    None => break,
                }
                continue;
            };
            let at_end = reader.phase == Phase::Finishing;
            if let Some((value, position)) = reader.take(settings.options.max_line, at_end) {
                bytes += value.len();
                out.push(settings.record(value, position, now_ms));
                continue;
            }
            match reader.phase {
                Phase::Finishing => {
                    host::counter_add("rotations", 1);
                    self.reader = None;
                    if switched {
                        break;
                    }
                    switched = true;
                }
                Phase::Draining => {
                    if reader.read_chunk().map_err(|e| read_error(reader, &e))? == 0 {
                        reader.phase = Phase::Finishing;
                    }
                }
                Phase::Live => {
                    if reader.read_chunk().map_err(|e| read_error(reader, &e))? > 0 {
                        continue;
                    }
                    match reader
                        .change(&settings.path)
                        .map_err(|e| read_error(reader, &e))?
                    {
                        Change::Same => break,
                        Change::Replaced => {
                            host::log(
                                Level::Info,
                                &format!(
                                    "{} was rotated: reading the rest of the old file, then \
                                     the new one",
                                    settings.label
                                ),
                            );
                            reader.phase = Phase::Draining;
                        }
                        Change::Truncated => after_truncation(settings, reader)?,
                    }
                }
            }
        }
        if !out.is_empty() {
            host::counter_add("lines", out.len() as u64);
        }
        Ok(out)
    }
}

/// A reader whose file was truncated in place goes on in the copy next to it, which holds
/// the lines written after the last read; without one, it ends with what it has.
fn after_truncation(settings: &Settings, reader: &mut Reader) -> Result<(), String> {
    match find_rotated(&settings.path, &reader.read_position())? {
        Some((copy, name)) => {
            host::log(
                Level::Info,
                &format!(
                    "{} was truncated: reading the rest from its copy {}, then the file again \
                     from its start",
                    settings.label,
                    name.display()
                ),
            );
            reader
                .continue_in(copy, name)
                .map_err(|e| read_error(reader, &e))?;
        }
        None => {
            host::log(
                Level::Warn,
                &format!(
                    "{} was truncated and no copy of it is next to it: reading it again from \
                     its start (lines written just before the truncation may be missing)",
                    settings.label
                ),
            );
            reader.phase = Phase::Finishing;
        }
    }
    Ok(())
}

/// The reader of a task that starts without a position.
fn first_start(settings: &Settings) -> Result<Option<Reader>, String> {
    let Some(mut file) = open_if_there(&settings.path)? else {
        // A file that appears later is new: all of it is read, whatever `start.at` says.
        return Ok(None);
    };
    let offset = match settings.options.start_at {
        StartAt::Beginning => 0,
        StartAt::End => last_line_start(&mut file, settings.options.max_line)
            .map_err(|e| format!("cannot read {}: {e}", settings.label))?,
    };
    Reader::at(file, settings.path.clone(), offset, Phase::Live)
        .map(Some)
        .map_err(|e| format!("cannot read {}: {e}", settings.label))
}

/// Where `start.at=end` starts: the end of the file, or the start of a line still being
/// written at its end, so that line is read whole.
fn last_line_start(file: &mut File, max_line: usize) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let window = len.min(max_line as u64 + 1);
    let mut tail = vec![0; window as usize];
    file.seek(SeekFrom::Start(len - window))?;
    file.read_exact(&mut tail)?;
    Ok(match tail.iter().rposition(|&b| b == b'\n') {
        Some(newline) => len - window + newline as u64 + 1,
        // One line so far, however long: all of it is new.
        None if window == len => 0,
        // A line longer than a record began before the window: skip it.
        None => len,
    })
}

/// The reader of a task resuming after `position`: in the file at the path if it is the
/// position's, else in the rotated file that is; the file at the path from its start if none
/// is.
fn resume(settings: &Settings, position: Position) -> Result<Option<Reader>, String> {
    let cannot_read = |e: io::Error| format!("cannot read {}: {e}", settings.label);
    if let Some(mut file) = open_if_there(&settings.path)?
        && position.is_in(&mut file).map_err(cannot_read)?
    {
        return Reader::at(file, settings.path.clone(), position.offset, Phase::Live)
            .map(Some)
            .map_err(cannot_read);
    }
    if let Some((file, name)) = find_rotated(&settings.path, &position)? {
        host::log(
            Level::Info,
            &format!(
                "{} was rotated while the task was stopped: reading the rest of {} first",
                settings.label,
                name.display()
            ),
        );
        return Reader::at(file, name.clone(), position.offset, Phase::Draining)
            .map(Some)
            .map_err(|e| format!("cannot read {}: {e}", name.display()));
    }
    host::log(
        Level::Warn,
        &format!(
            "neither {} nor a rotated file next to it is the file the task stopped in (at byte \
             {}): reading {} from its start",
            settings.label, position.offset, settings.label
        ),
    );
    settings.open_live()
}

/// The rotated file next to `path` (its name starts with the file's name; compressed ones
/// are left out) that `position` is in, opened.
fn find_rotated(path: &Path, position: &Position) -> Result<Option<(File, PathBuf)>, String> {
    let dir = parent(path);
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| format!("{} does not name a file", path.display()))?;
    let entries = fs::read_dir(dir).map_err(|e| {
        format!(
            "cannot list {dir} to find rotated files: {e}; grant it with wasi.dir={dir}",
            dir = dir.display()
        )
    })?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file_name = entry.file_name().into_string().ok()?;
            let rotated = file_name.len() > name.len()
                && file_name.starts_with(name)
                && !COMPRESSED.iter().any(|ext| file_name.ends_with(ext));
            rotated.then(|| entry.path())
        })
        .collect();
    // The same file every time, when copies look alike.
    candidates.sort();
    for candidate in candidates {
        // A file that went away or cannot be read is not the one.
        let Ok(mut file) = File::open(&candidate) else {
            continue;
        };
        if position.is_in(&mut file).unwrap_or(false) {
            return Ok(Some((file, candidate)));
        }
    }
    Ok(None)
}

/// `path` opened for reading, or none when there is no such file.
fn open_if_there(path: &Path) -> Result<Option<File>, String> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot open {}: {e}", path.display())),
    }
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

fn read_error(reader: &Reader, e: &io::Error) -> String {
    format!("cannot read {}: {e}", reader.name().display())
}

#[cfg(test)]
mod tests;
