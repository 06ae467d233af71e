use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

/// A log file in a directory of its own.
struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Log {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        Self { _dir: dir, path }
    }

    fn append(&self, text: &str) {
        append(&self.path, text);
    }

    fn sibling(&self, name: &str) -> PathBuf {
        self.path.with_file_name(name)
    }

    fn source(&self, extra: &[(&str, &str)], resume_after: Option<&SourceRecord>) -> FileSource {
        let mut pairs = vec![("path", self.path.to_str().unwrap())];
        pairs.extend_from_slice(extra);
        FileSource::init(
            pairs.into_iter().collect(),
            resume_after.map(|record| record.position.clone()),
        )
        .unwrap()
    }
}

fn append(path: &Path, text: &str) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn values(records: &[SourceRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.record.value.clone().unwrap()).unwrap())
        .collect()
}

fn offset_of(record: &SourceRecord) -> u64 {
    Position::decode(&record.position).unwrap().offset
}

#[test]
fn reads_lines_across_polls_and_waits_for_a_partial_line() {
    let log = Log::new();
    log.append("one\ntwo\r\nthr");
    let mut source = log.source(&[], None);
    let first = source.poll(10).unwrap();
    assert_eq!(values(&first), ["one", "two"]);
    assert_eq!(
        offset_of(&first[1]),
        9,
        "the position is right after the newline"
    );
    assert_eq!(
        first[0].record.header("file"),
        log.path.to_str().map(str::as_bytes)
    );
    assert_eq!(first[0].record.key, None);
    assert!(first[0].record.timestamp > 0);
    assert!(
        source.poll(10).unwrap().is_empty(),
        "`thr` has no newline yet"
    );

    log.append("ee\n\nfour\nfive\n");
    assert_eq!(values(&source.poll(2).unwrap()), ["three", ""]);
    assert_eq!(values(&source.poll(10).unwrap()), ["four", "five"]);
    assert!(source.poll(10).unwrap().is_empty());
}

#[test]
fn a_restart_resumes_at_the_next_byte() {
    let log = Log::new();
    log.append("a\nbb\nccc\n");
    let mut source = log.source(&[], None);
    let read = source.poll(2).unwrap();
    assert_eq!(values(&read), ["a", "bb"]);
    log.append("dddd\n");

    let mut restarted = log.source(&[], Some(&read[1]));
    assert_eq!(values(&restarted.poll(10).unwrap()), ["ccc", "dddd"]);

    // A position past a file over 1024 bytes: the fingerprint covers the first 1024.
    let long = "x".repeat(2000);
    log.append(&format!("{long}\nlast\n"));
    let all = restarted.poll(10).unwrap();
    assert_eq!(all.len(), 2);
    let position = Position::decode(&all[0].position).unwrap();
    assert_eq!(position.fingerprint.len, 1024);
    let mut again = log.source(&[], Some(&all[0]));
    assert_eq!(values(&again.poll(10).unwrap()), ["last"]);
}

#[test]
fn follows_a_rename_and_reads_what_the_old_file_got_before_it() {
    let log = Log::new();
    log.append("1\n2\n");
    let mut source = log.source(&[], None);
    assert_eq!(values(&source.poll(10).unwrap()), ["1", "2"]);

    // The writer appends, the file is renamed, the writer still appends to it (it has not
    // reopened yet), ending without a newline.
    log.append("3\n");
    let rotated = log.sibling("app.log.1");
    fs::rename(&log.path, &rotated).unwrap();
    assert_eq!(
        values(&source.poll(10).unwrap()),
        ["3"],
        "no file at the path yet: the old one is still read"
    );
    append(&rotated, "4\n5");
    log.append("new 1\nnew 2\n");
    let read = source.poll(10).unwrap();
    assert_eq!(values(&read), ["4", "5", "new 1", "new 2"]);
    let old = Position::decode(&read[1].position).unwrap();
    let new = Position::decode(&read[3].position).unwrap();
    assert_eq!(
        old.offset, 9,
        "the last line of the old file ends at its end"
    );
    assert_eq!(new.offset, 12);
    assert_ne!(old.fingerprint, new.fingerprint);
    assert!(source.poll(10).unwrap().is_empty());
}

#[test]
fn a_restart_after_a_rotation_finds_the_rotated_file_by_its_fingerprint() {
    let log = Log::new();
    log.append("old 1\nold 2\nold 3\n");
    let mut source = log.source(&[], None);
    let read = source.poll(1).unwrap();
    assert_eq!(values(&read), ["old 1"]);
    drop(source);

    // While the task is stopped: rotated twice over by name, the old file gets a last line.
    // A compressed copy sorts first and looks alike, but is not read.
    fs::write(log.sibling("app.log-2026.gz"), "old 1\nold 2\nold 3\n").unwrap();
    fs::write(log.sibling("app.log.0"), "other\n").unwrap();
    fs::rename(&log.path, log.sibling("app.log-20261123")).unwrap();
    append(&log.sibling("app.log-20261123"), "old 4\n");
    log.append("new 1\n");

    let mut restarted = log.source(&[], Some(&read[0]));
    assert_eq!(
        values(&restarted.poll(10).unwrap()),
        ["old 2", "old 3", "old 4", "new 1"]
    );
}

#[test]
fn a_restart_whose_file_is_gone_reads_the_path_from_its_start() {
    let log = Log::new();
    log.append("old\n");
    let mut source = log.source(&[], None);
    let read = source.poll(1).unwrap();
    fs::remove_file(&log.path).unwrap();
    log.append("brand new\n");
    let mut restarted = log.source(&[], Some(&read[0]));
    assert_eq!(values(&restarted.poll(10).unwrap()), ["brand new"]);
}

#[test]
fn copytruncate_reads_the_rest_from_the_copy_then_the_file_again() {
    let log = Log::new();
    log.append("1\n2\n");
    let mut source = log.source(&[], None);
    assert_eq!(values(&source.poll(10).unwrap()), ["1", "2"]);

    // Written but not read yet when logrotate copies and truncates the file.
    log.append("3\n4");
    fs::copy(&log.path, log.sibling("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log.path)
        .unwrap()
        .set_len(0)
        .unwrap();
    log.append("x\n");
    assert_eq!(values(&source.poll(10).unwrap()), ["3", "4", "x"]);

    // Truncated and written past where the task was, between two polls.
    fs::copy(&log.path, log.sibling("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log.path)
        .unwrap()
        .set_len(0)
        .unwrap();
    log.append("a longer first line\n");
    assert_eq!(values(&source.poll(10).unwrap()), ["a longer first line"]);

    // Truncated without a copy: starts again at 0.
    OpenOptions::new()
        .write(true)
        .open(&log.path)
        .unwrap()
        .set_len(0)
        .unwrap();
    fs::remove_file(log.sibling("app.log.1")).unwrap();
    log.append("y\n");
    assert_eq!(values(&source.poll(10).unwrap()), ["y"]);
}

#[test]
fn long_lines_are_cut_at_max_line_bytes() {
    let log = Log::new();
    log.append("abcdefghij\nabcd\nabcd\r\nabcde\r\n");
    let mut source = log.source(&[("max.line.bytes", "4")], None);
    let read = source.poll(2).unwrap();
    assert_eq!(values(&read), ["abcd", "efgh"]);
    assert_eq!(
        offset_of(&read[1]),
        8,
        "a cut record's position is inside the line"
    );

    let mut restarted = log.source(&[("max.line.bytes", "4")], Some(&read[1]));
    assert_eq!(
        values(&restarted.poll(10).unwrap()),
        ["ij", "abcd", "abcd", "abcd", "e"]
    );

    log.append("abc");
    assert!(restarted.poll(10).unwrap().is_empty());
    log.append("defghijk");
    assert_eq!(values(&restarted.poll(10).unwrap()), ["abcd", "efgh"]);
}

#[test]
fn a_file_that_appears_later_is_read_from_its_start() {
    let log = Log::new();
    let mut source = log.source(&[("start.at", "end")], None);
    assert!(source.poll(10).unwrap().is_empty());
    log.append("first\n");
    assert_eq!(values(&source.poll(10).unwrap()), ["first"]);
}

#[test]
fn start_at_end_skips_what_is_there_but_not_a_line_being_written() {
    let log = Log::new();
    log.append("old 1\nold 2\nnew ");
    let mut source = log.source(&[("start.at", "end")], None);
    log.append("1\nnew 2\n");
    assert_eq!(values(&source.poll(10).unwrap()), ["new 1", "new 2"]);
}

#[test]
fn plan_gives_each_file_a_task() {
    let config: Config = [
        ("paths", "/logs/a.log|/logs/b.log"),
        ("paths", "/logs/c.log"),
        ("max.line.bytes", "100"),
    ]
    .into_iter()
    .collect();
    let tasks = FileSource::plan(config.clone(), 3).unwrap();
    let paths: Vec<_> = tasks.iter().map(|t| t.get("path").unwrap()).collect();
    assert_eq!(paths, ["/logs/a.log", "/logs/b.log", "/logs/c.log"]);
    assert!(tasks.iter().all(|t| t.get("max.line.bytes") == Some("100")));
    assert!(tasks.iter().all(|t| t.list("paths").is_empty()));
    assert_eq!(
        FileSource::plan(config, 2).unwrap_err(),
        "3 files need 3 tasks: raise tasks.max (`--tasks`; it is 2)"
    );
}

#[test]
fn bad_config_and_positions_are_rejected() {
    let plan = |pairs: &[(&str, &str)]| FileSource::plan(pairs.iter().copied().collect(), 10);
    assert!(
        plan(&[])
            .unwrap_err()
            .contains("missing required key `path`")
    );
    assert!(
        plan(&[("path", "relative.log")])
            .unwrap_err()
            .contains("absolute")
    );
    assert!(plan(&[("paths", "/a|/a")]).unwrap_err().contains("twice"));
    assert!(
        plan(&[("path", "/a"), ("colour", "x")])
            .unwrap_err()
            .contains("unknown key")
    );
    assert!(plan(&[("path", "/a"), ("start.at", "middle")]).is_err());
    assert!(plan(&[("path", "/a"), ("max.line.bytes", "0")]).is_err());

    let log = Log::new();
    let path = log.path.to_str().unwrap();
    let init = |pairs: &[(&str, &str)], position: Option<Vec<u8>>| {
        FileSource::init(pairs.iter().copied().collect(), position).map(|_| ())
    };
    assert!(
        init(&[("paths", "/a|/b")], None)
            .unwrap_err()
            .contains("one file")
    );
    assert!(
        init(&[("path", "/not/granted/app.log")], None)
            .unwrap_err()
            .contains("wasi.dir=/not/granted")
    );
    assert!(
        init(&[("path", path)], Some(vec![1, 2, 3]))
            .unwrap_err()
            .contains("21 bytes")
    );
    assert!(
        init(&[("path", path)], Some(vec![9; 21]))
            .unwrap_err()
            .contains("version 9")
    );
}
