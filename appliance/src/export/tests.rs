//! Exports over a real log and metadata store into real Delta tables on disk, read back with
//! delta-rs and the parquet crate.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use deltalake_core::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::rows::{self, RowBuilder};
use super::table::LakeTable;
use super::*;
use crate::log::{
    Compression, Durability, LogConfig, Record, StoredRecord, Timestamp, TopicConfig,
};
use crate::runtime::RestartPolicy;
use crate::security::secrets::SecretProviders;

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn stored(offset: u64, value: Option<&str>) -> StoredRecord {
    StoredRecord {
        offset: Offset(offset),
        record: Record {
            key: Some(Bytes::from(format!("k{offset}"))),
            value: value.map(|v| Bytes::from(v.to_owned())),
            headers: Vec::new(),
            timestamp: Timestamp(1_700_000_000_000 + offset as i64),
        },
    }
}

#[test]
fn rows_take_new_fields_and_send_what_does_not_fit_away() {
    let builder = RowBuilder::new(Some("plant-1".into()), 2);
    let mut values = Vec::new();
    let records = vec![
        stored(0, Some(r#"{"temp":21.5,"site":"a"}"#)),
        stored(1, Some(r#"{"temp":22,"site":"b"}"#)),
        stored(2, Some("[1,2]")),
        stored(3, Some("{not json")),
        stored(4, None),
    ];
    let built = builder.build(&mut values, &records).unwrap();
    let names: Vec<&str> = values.iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["site", "temp"]);
    assert_eq!(values[1].data_type(), &DataType::Float64);
    let reasons: Vec<(u64, &str)> = built
        .misfits
        .iter()
        .map(|m| (m.record.offset.0, m.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].0 == 2 && reasons[0].1.contains("not a JSON object"));
    assert!(reasons[1].0 == 3 && reasons[1].1.contains("not JSON"));
    let batch = built.batch;
    assert_eq!(batch.num_rows(), 3);
    let offsets = batch
        .column_by_name(rows::OFFSET)
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(offsets.values().to_vec(), vec![0, 1, 4]);
    let temp = batch.column_by_name("temp").unwrap();
    assert!(temp.is_null(2), "a tombstone's values are null");
    let edge = batch.column_by_name(rows::EDGE).unwrap().as_string::<i32>();
    assert_eq!(edge.value(0), "plant-1");
    let day = batch.column_by_name(rows::DAY).unwrap();
    assert_eq!(day.data_type(), &DataType::Date32);

    // The next chunk: a known field of the wrong type is a misfit, a new one widens again.
    let records = vec![
        stored(5, Some(r#"{"temp":"warm","site":"c"}"#)),
        stored(6, Some(r#"{"temp":20.0,"site":"d","door":true}"#)),
        stored(7, Some(r#"{"temp":19.0,"bad name":1}"#)),
    ];
    let built = builder.build(&mut values, &records).unwrap();
    let names: Vec<&str> = values.iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["site", "temp", "door"]);
    let misfits: Vec<(u64, &str)> = built
        .misfits
        .iter()
        .map(|m| (m.record.offset.0, m.reason.as_str()))
        .collect();
    assert_eq!(misfits.len(), 2, "{misfits:?}");
    assert!(
        misfits
            .iter()
            .any(|(o, r)| *o == 5 && r.contains("does not fit"))
    );
    assert!(
        misfits
            .iter()
            .any(|(o, r)| *o == 7 && r.contains("cannot be a column"))
    );
    assert_eq!(built.batch.num_rows(), 1);
}

struct Setup {
    log: Log,
    meta: Meta,
    shutdown: CancellationToken,
}

async fn setup(dir: &Path) -> Setup {
    let meta = Meta::open(&dir.join("meta")).unwrap();
    let config = LogConfig {
        durability: Durability::Os,
        ..LogConfig::new(dir.join("log"))
    };
    let log = Log::open(config, meta.clone()).await.unwrap();
    let config = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    log.create_topic(topic("sensors"), config).await.unwrap();
    Setup {
        log,
        meta,
        shutdown: CancellationToken::new(),
    }
}

impl Setup {
    async fn exports(&self) -> Exports {
        Exports::open(
            self.log.clone(),
            self.meta.clone(),
            RestartPolicies::all(RestartPolicy::TASKS),
            crate::query::LakeCatalog::default(),
            self.shutdown.child_token(),
        )
        .await
        .unwrap()
    }

    async fn produce(&self, partition: u32, range: std::ops::Range<u64>) {
        let records: Vec<Record> = range
            .map(|i| Record {
                key: Some(Bytes::from(format!("s{}", i % 7))),
                value: Some(Bytes::from(format!(r#"{{"i":{i},"temp":{}.5}}"#, i % 30))),
                headers: Vec::new(),
                timestamp: Timestamp(1_700_000_000_000 + i as i64 * 1_000),
            })
            .collect();
        let batch = crate::log::encode(&records, Compression::None).unwrap();
        self.log
            .append(&topic("sensors"), PartitionId(partition), batch)
            .await
            .unwrap();
    }
}

fn new_export(table: &Path) -> NewExport {
    NewExport {
        name: "lake".into(),
        from: topic("sensors"),
        to: table.display().to_string(),
        storage: Vec::new(),
        partition_by: None,
        start: StartAt::Earliest,
        target_file_bytes: None,
        flush_interval: Some(Duration::from_millis(200)),
        maintenance_interval: None,
        dead_letter_topic: None,
    }
}

/// Waits until every source partition of the export is exported up to `ends`.
async fn wait_exported(exports: &Exports, ends: &[u64]) -> ExportStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = exports.get("lake").await.unwrap();
        let exported: Vec<u64> = status
            .progress
            .sources
            .iter()
            .map(|s| s.exported.0)
            .collect();
        if exported == ends {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not exported: {:?}",
            status.progress
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open_table(dir: &Path) -> LakeTable {
    let location = LakeLocation::new(dir.to_str().unwrap(), Vec::new()).unwrap();
    LakeTable::open(&location, &SecretProviders::default())
        .await
        .unwrap()
}

/// The (partition, offset) of every row of the table's current version.
async fn rows_in(table: &Path) -> Vec<(i32, i64)> {
    let lake = open_table(table).await;
    let mut rows = Vec::new();
    for uri in lake.file_uris().unwrap() {
        let path = url::Url::parse(&uri)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .unwrap_or_else(|| uri.into());
        let file = std::fs::File::open(path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let partitions = batch
                .column_by_name(rows::PARTITION)
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
            let offsets = batch
                .column_by_name(rows::OFFSET)
                .unwrap()
                .as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                rows.push((partitions.value(row), offsets.value(row)));
            }
        }
    }
    rows.sort_unstable();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_writes_every_record_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let setup = setup(dir.path()).await;
    setup.produce(0, 0..300).await;
    setup.produce(1, 0..200).await;
    let exports = setup.exports().await;
    exports.create(new_export(&table)).await.unwrap();
    let status = wait_exported(&exports, &[300, 200]).await;
    assert_eq!(status.progress.rows, 500);
    assert!(status.progress.table_version.is_some());

    // Stopped and started again (as after a crash): it goes on from what the table holds.
    exports.stop_all().await;
    setup.produce(0, 300..450).await;
    let exports = setup.exports().await;
    wait_exported(&exports, &[450, 200]).await;
    exports.pause("lake").await.unwrap();
    setup.produce(1, 200..260).await;
    exports.resume("lake").await.unwrap();
    wait_exported(&exports, &[450, 260]).await;

    let rows = rows_in(&table).await;
    let unique: BTreeSet<(i32, i64)> = rows.iter().copied().collect();
    assert_eq!(rows.len(), unique.len(), "a row written twice");
    let expected: BTreeSet<(i32, i64)> = (0..450)
        .map(|o| (0, o))
        .chain((0..260).map(|o| (1, o)))
        .collect();
    assert_eq!(unique, expected);
    exports.stop_all().await;

    // Maintenance compacts the many small files; the rows stay the same.
    let mut lake = open_table(&table).await;
    let (files_before, _) = lake.files_and_bytes();
    let done = lake
        .maintain(DEFAULT_TARGET_FILE_BYTES, VACUUM_RETENTION, &[None])
        .await
        .unwrap();
    let (files_after, _) = lake.files_and_bytes();
    assert!(
        files_before > files_after,
        "{files_before} -> {files_after}: {done:?}"
    );
    assert!(done.files_compacted >= files_before - files_after);
    assert_eq!(rows_in(&table).await, rows);
    setup.log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_do_not_fit_go_to_the_dead_letter_topic_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let setup = setup(dir.path()).await;
    setup.produce(0, 0..10).await;
    let odd = [r#"{"i":"ten"}"#, "plain text"].map(|v| Record {
        key: None,
        value: Some(Bytes::from(v)),
        headers: Vec::new(),
        timestamp: Timestamp(1_700_000_000_000),
    });
    let batch = crate::log::encode(&odd, Compression::None).unwrap();
    setup
        .log
        .append(&topic("sensors"), PartitionId(0), batch)
        .await
        .unwrap();
    let exports = setup.exports().await;
    exports.create(new_export(&table)).await.unwrap();
    let status = wait_exported(&exports, &[12, 0]).await;
    assert_eq!(status.progress.rows, 10);
    assert_eq!(status.progress.dead_lettered, 2);
    let dead = setup
        .log
        .partition(&topic("lake.dead-letters"), PartitionId(0))
        .unwrap();
    let chunk = dead.read(Offset(0), 1 << 20).unwrap();
    let letters = crate::log::decode_all(chunk.batches).unwrap();
    assert_eq!(letters.len(), 2);
    let message = |letter: &StoredRecord| {
        letter
            .record
            .headers
            .iter()
            .find(|h| h.key == "appliance.error.message")
            .and_then(|h| h.value.clone())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap()
    };
    assert!(
        message(&letters[0]).contains("does not fit"),
        "{}",
        message(&letters[0])
    );
    assert!(message(&letters[1]).contains("not a JSON object"));
    exports.stop_all().await;
    setup.log.close().await.unwrap();
}

#[tokio::test]
async fn specs_that_cannot_work_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    let exports = setup.exports().await;
    let refused = |new: NewExport| {
        let exports = exports.clone();
        async move { exports.create(new).await.unwrap_err().to_string() }
    };
    let table = dir.path().join("t");
    let relative = NewExport {
        to: "tables/t".into(),
        ..new_export(&table)
    };
    assert!(refused(relative).await.contains("file:///path"));
    let gcs = NewExport {
        to: "gs://bucket/t".into(),
        ..new_export(&table)
    };
    assert!(refused(gcs).await.contains("s3://bucket/prefix"));
    let s3 = |storage: &[(&str, &str)]| NewExport {
        to: "s3://bucket/t".into(),
        storage: storage
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..new_export(&table)
    };
    let literal_secret = refused(s3(&[("secret-access-key", "hunter22")])).await;
    assert!(literal_secret.contains("${env:NAME}"), "{literal_secret}");
    assert!(!literal_secret.contains("hunter22"), "{literal_secret}");
    let plain_http = refused(s3(&[("endpoint", "http://127.0.0.1:9000")])).await;
    assert!(plain_http.contains("allow-http=true"), "{plain_http}");
    let unknown = refused(s3(&[("bucket-key", "x")])).await;
    assert!(unknown.contains("endpoint, region"), "{unknown}");
    let unreadable = refused(s3(&[(
        "secret-access-key",
        "${env:APPLIANCE_SECRET_NONE_SUCH}",
    )]))
    .await;
    assert!(
        unreadable.contains("APPLIANCE_SECRET_NONE_SUCH"),
        "{unreadable}"
    );
    let directory_with_settings = NewExport {
        storage: vec![("region".into(), "eu-west-1".into())],
        ..new_export(&table)
    };
    assert!(
        refused(directory_with_settings)
            .await
            .contains("s3:// tables only")
    );
    let bad_column = NewExport {
        partition_by: Some(vec!["temp".into()]),
        ..new_export(&table)
    };
    assert!(
        refused(bad_column)
            .await
            .contains("_edge, _day, _partition")
    );
    let tiny = NewExport {
        target_file_bytes: Some(10),
        ..new_export(&table)
    };
    assert!(refused(tiny).await.contains("at least"));
    exports.create(new_export(&table)).await.unwrap();
    let twice = NewExport {
        name: "again".into(),
        ..new_export(&table)
    };
    assert!(refused(twice).await.contains("writes"));
    exports.stop_all().await;
    setup.log.close().await.unwrap();
}
