use appliance_sdk::Header;
use appliance_sdk::json::serde_json::{Value, json};

use super::*;

/// An output file in a directory of its own.
struct Out {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Out {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        Self { _dir: dir, path }
    }

    fn sink(&self, format: &str) -> FileSink {
        FileSink::init(self.config(format)).unwrap()
    }

    fn config(&self, format: &str) -> Config {
        [("path", self.path.to_str().unwrap()), ("format", format)]
            .into_iter()
            .collect()
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.path).unwrap()
    }
}

fn info() -> BatchInfo {
    BatchInfo::new("readings", 0)
}

/// Records with values `v<offset>` at `offsets`.
fn records(offsets: std::ops::Range<i64>) -> Vec<Record> {
    offsets
        .map(|offset| {
            let mut record = Record::from_value(format!("v{offset}"));
            record.offset = offset;
            record
        })
        .collect()
}

#[test]
fn value_format_writes_each_value_on_a_line_and_tombstones_not_at_all() {
    let out = Out::new();
    let mut sink = out.sink("value");
    let mut batch = records(0..3);
    batch[1].value = None;
    sink.put(&info(), batch).unwrap();
    sink.flush().unwrap();
    assert_eq!(out.text(), "v0\nv2\n");
}

#[test]
fn json_format_writes_text_as_strings_and_other_bytes_as_base64() {
    let out = Out::new();
    let mut sink = out.sink("json");
    let mut text = Record::from_value("héllo");
    text.key = Some(b"k".to_vec());
    text.timestamp = 1_700_000_000_000;
    text.offset = 7;
    text.headers.push(Header {
        key: "h".to_owned(),
        value: vec![0xff],
    });
    let mut binary = Record::from_value(vec![0xff, 0x00]);
    binary.offset = 8;
    let mut tombstone = Record::from_value("");
    tombstone.value = None;
    tombstone.offset = 9;
    sink.put(&BatchInfo::new("t", 2), vec![text, binary, tombstone])
        .unwrap();
    sink.flush().unwrap();

    let lines: Vec<Value> = out
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        json!({"topic": "t", "partition": 2, "offset": 7, "timestamp": 1_700_000_000_000i64,
               "key": "k", "value": "héllo", "headers": [{"key": "h", "value": {"base64": "/w=="}}]})
    );
    assert_eq!(lines[1]["value"], json!({"base64": "/wA="}));
    assert_eq!(lines[1]["key"], Value::Null);
    assert_eq!(lines[2]["value"], Value::Null);
    assert!(
        out.text()
            .starts_with(r#"{"topic":"t","partition":2,"offset":7,"#)
    );
}

#[test]
fn a_restart_after_a_crash_before_flush_drops_the_unflushed_writes() {
    let out = Out::new();
    let mut sink = out.sink("value");
    sink.put(&info(), records(0..3)).unwrap();
    sink.flush().unwrap();
    sink.put(&info(), records(3..5)).unwrap();
    assert_eq!(out.text(), "v0\nv1\nv2\nv3\nv4\n", "written, not flushed");
    drop(sink); // the crash: the worker committed offsets up to 3

    let mut restarted = out.sink("value");
    assert_eq!(out.text(), "v0\nv1\nv2\n");
    restarted.put(&info(), records(3..6)).unwrap();
    restarted.flush().unwrap();
    assert_eq!(out.text(), "v0\nv1\nv2\nv3\nv4\nv5\n");
}

#[test]
fn records_below_the_flushed_offsets_are_skipped() {
    let out = Out::new();
    let mut sink = out.sink("value");
    sink.put(&info(), records(0..3)).unwrap();
    sink.put(&BatchInfo::new("other", 0), records(0..1))
        .unwrap();
    sink.flush().unwrap();
    drop(sink); // a crash after the flush, before the worker committed

    let mut restarted = out.sink("value");
    restarted.put(&info(), records(0..5)).unwrap();
    restarted
        .put(&BatchInfo::new("other", 0), records(0..2))
        .unwrap();
    restarted
        .put(&BatchInfo::new("readings", 1), records(0..1))
        .unwrap();
    restarted.flush().unwrap();
    assert_eq!(out.text(), "v0\nv1\nv2\nv0\nv3\nv4\nv1\nv0\n");

    // The same batch twice in one run is written once, and a split record (two records with
    // one offset) is written whole.
    let mut split = records(5..6);
    split.push(split[0].clone());
    restarted.put(&info(), split.clone()).unwrap();
    restarted.put(&info(), split).unwrap();
    assert!(out.text().ends_with("v0\nv5\nv5\n"));
}

#[test]
fn a_file_there_before_the_first_start_is_kept_and_a_crash_before_the_first_flush_is_undone() {
    let out = Out::new();
    fs::write(&out.path, "kept\n").unwrap();
    let mut sink = out.sink("value");
    sink.put(&info(), records(0..2)).unwrap();
    drop(sink);
    out.sink("value");
    assert_eq!(out.text(), "kept\n");
}

#[test]
fn a_file_changed_behind_the_sinks_back_is_an_error() {
    let out = Out::new();
    let mut sink = out.sink("value");
    sink.put(&info(), records(0..2)).unwrap();
    sink.flush().unwrap();
    drop(sink);
    fs::write(&out.path, "x").unwrap();
    let error = FileSink::init(out.config("value")).unwrap_err();
    assert!(error.contains("changed by something else"), "{error}");
    fs::remove_file(&out.path).unwrap();
    let error = FileSink::init(out.config("value")).unwrap_err();
    assert!(error.contains("is missing"), "{error}");
    fs::write(with_suffix(&out.path, ".offsets"), "{}").unwrap();
    let error = FileSink::init(out.config("value")).unwrap_err();
    assert!(error.contains("not a file-sink offsets file"), "{error}");
}

#[test]
fn plan_runs_one_task_and_bad_config_is_rejected() {
    let config: Config = [("path", "/out/a.log")].into_iter().collect();
    assert_eq!(FileSink::plan(config.clone(), 8).unwrap(), vec![config]);
    let plan = |pairs: &[(&str, &str)]| FileSink::plan(pairs.iter().copied().collect(), 1);
    assert!(
        plan(&[])
            .unwrap_err()
            .contains("missing required key `path`")
    );
    assert!(
        plan(&[("path", "out.log")])
            .unwrap_err()
            .contains("absolute")
    );
    assert!(plan(&[("path", "/a"), ("format", "xml")]).is_err());
    assert!(plan(&[("path", "/a"), ("colour", "x")]).is_err());

    let error =
        FileSink::init([("path", "/not/granted/out.log")].into_iter().collect()).unwrap_err();
    assert!(error.contains("wasi.dir-rw=/not/granted"), "{error}");
}
