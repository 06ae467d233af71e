use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::log::{
    CleanupPolicy, Compression, Durability, Header, Log, LogConfig, LogError, Offset, PartitionId,
    Record, StoredRecord, Timestamp, TopicConfig, TopicName, decode_all, encode,
};
use crate::meta::Meta;

const KEEP_TOMBSTONES: u64 = 3_600_000;

async fn open(dir: &Path) -> Log {
    let meta = Meta::open(&dir.join("meta")).expect("meta opens");
    let config = LogConfig {
        durability: Durability::Os,
        retention_check_interval: Duration::from_secs(3600),
        ..LogConfig::new(dir.to_path_buf())
    };
    Log::open(config, meta).await.expect("log opens")
}

fn compacted(delete_retention_ms: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes: 1024,
        max_message_bytes: 1024,
        retention_ms: None,
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms,
        ..TopicConfig::default()
    }
}

/// A data directory with an open log holding the compacted topic `table`.
async fn table_topic(delete_retention_ms: u64) -> (tempfile::TempDir, Log, TopicName) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let name = TopicName::new("table").expect("name");
    log.create_topic(name.clone(), compacted(delete_retention_ms))
        .await
        .expect("create");
    (dir, log, name)
}

/// `(key, value)`: `None` is a tombstone.
type Write = (u8, Option<u16>);

fn record((key, value): Write) -> Record {
    Record {
        key: Some(Bytes::from(format!("key-{key}"))),
        value: value.map(|v| Bytes::from(format!("value-{v}"))),
        headers: vec![Header {
            key: "h".into(),
            value: None,
        }],
        timestamp: Timestamp(1_000),
    }
}

fn read_all(log: &Log, name: &TopicName) -> Vec<StoredRecord> {
    let partition = log.partition(name, PartitionId(0)).expect("partition");
    let mut out = Vec::new();
    let mut offset = partition.log_start();
    while offset < partition.high_watermark() {
        let chunk = partition.read(offset, 700).expect("read");
        assert!(!chunk.batches.is_empty(), "no progress at {offset}");
        out.extend(
            decode_all(chunk.batches.clone())
                .expect("decodes")
                .into_iter()
                .filter(|r| r.offset >= offset),
        );
        offset = chunk.next_offset;
    }
    out
}

/// Every stored batch of partition 0, as (base offset, bytes).
fn stored_batches(log: &Log, name: &TopicName) -> Vec<(Offset, Bytes)> {
    let partition = log.partition(name, PartitionId(0)).expect("partition");
    let mut batches = Vec::new();
    let mut offset = Offset(0);
    while offset < partition.high_watermark() {
        let chunk = partition.read(offset, 1 << 16).expect("read");
        let mut rest = chunk.batches.clone();
        while !rest.is_empty() {
            let header = crate::log::batch::validate(&rest).expect("valid");
            batches.push((header.base_offset, rest.split_to(header.total_len)));
        }
        offset = chunk.next_offset;
    }
    batches
}

fn segment_bases(dir: &Path, name: &str) -> Vec<Offset> {
    let mut bases: Vec<Offset> = std::fs::read_dir(dir.join("topics").join(name).join("0"))
        .expect("list")
        .filter_map(|e| {
            crate::log::segment::parse_log_file_name(e.expect("entry").file_name().to_str()?)
        })
        .collect();
    bases.sort();
    bases
}

async fn write_all(log: &Log, name: &TopicName, batches: &[Vec<Write>]) -> Vec<StoredRecord> {
    for writes in batches {
        let records: Vec<Record> = writes.iter().copied().map(record).collect();
        log.append(
            name,
            PartitionId(0),
            encode(&records, Compression::None).expect("encodes"),
        )
        .await
        .expect("append");
    }
    read_all(log, name)
}

/// Checks what a pass kept of `before` against the rule: the newest record of each key, and
/// everything from `untouched_from` (the newest sealed segment and the active one); a sealed
/// segment where nothing else is kept keeps its last record as a tombstone. Tombstones
/// survive unless `tombstones_dropped`.
fn check_kept(
    before: &[StoredRecord],
    after: &[StoredRecord],
    untouched_from: Offset,
    bases: &[Offset],
    tombstones_dropped: bool,
) -> Result<(), TestCaseError> {
    let newest: BTreeMap<&Bytes, Offset> = before
        .iter()
        .map(|r| (r.record.key.as_ref().expect("keyed"), r.offset))
        .collect();
    let by_offset: BTreeMap<Offset, &StoredRecord> = before.iter().map(|r| (r.offset, r)).collect();
    prop_assert!(
        after.windows(2).all(|w| w[0].offset < w[1].offset),
        "offsets ascend"
    );
    for kept in after {
        let original = by_offset
            .get(&kept.offset)
            .expect("kept records keep their offsets");
        if kept.record != original.record {
            // The filler of a segment of which nothing else is kept: a tombstone of the key.
            prop_assert!(kept.record.value.is_none() && kept.record.headers.is_empty());
            prop_assert_eq!(&kept.record.key, &original.record.key);
        }
    }
    let kept: BTreeMap<Offset, &StoredRecord> = after.iter().map(|r| (r.offset, r)).collect();
    for record in before {
        let is_newest = newest[record.record.key.as_ref().expect("keyed")] == record.offset;
        let segment = bases.partition_point(|b| *b <= record.offset) - 1;
        let segment_end = bases.get(segment + 1).copied().unwrap_or(Offset(u64::MAX));
        let alone_in_segment = after
            .iter()
            .filter(|r| r.offset >= bases[segment] && r.offset < segment_end)
            .count()
            == 1;
        let expected = record.offset >= untouched_from
            || (is_newest && !(tombstones_dropped && record.record.value.is_none()));
        if expected {
            prop_assert!(
                kept.contains_key(&record.offset),
                "{} must be kept",
                record.offset
            );
        } else if kept.contains_key(&record.offset) {
            prop_assert!(alone_in_segment, "{} must be removed", record.offset);
        }
    }
    Ok(())
}

fn arb_batches() -> impl Strategy<Value = Vec<Vec<Write>>> {
    let write = (0u8..12, proptest::option::weighted(0.85, any::<u16>()));
    proptest::collection::vec(proptest::collection::vec(write, 1..12), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// After a pass, a partition holds exactly what compaction promises, at the same offsets;
    /// it reads the same after a restart, and a mirror fed its batches at their own offsets
    /// (what a link does) ends byte-identical.
    #[test]
    fn compaction_keeps_the_newest_record_per_key_at_its_offset(
        batches in arb_batches(),
        drop_tombstones in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = open(dir.path()).await;
            let name = TopicName::new("table").expect("name");
            let retention = if drop_tombstones { 0 } else { KEEP_TOMBSTONES };
            log.create_topic(name.clone(), compacted(retention)).await.expect("create");
            let before = write_all(&log, &name, &batches).await;
            let bases = segment_bases(dir.path(), "table");
            let partition = log.partition(&name, PartitionId(0)).expect("partition");
            let report = partition.compact(SystemTime::now() + Duration::from_millis(1)).expect("compacts");
            let after = read_all(&log, &name);
            let untouched_from = bases[bases.len().saturating_sub(2)];
            check_kept(&before, &after, untouched_from, &bases, drop_tombstones)?;
            prop_assert_eq!(report.records_removed as usize, before.len() - after.len());
            prop_assert_eq!(segment_bases(dir.path(), "table"), bases.clone());

            let mirror = TopicName::new("mirror").expect("name");
            log.create_topic(mirror.clone(), compacted(retention)).await.expect("create");
            let target = log.partition(&mirror, PartitionId(0)).expect("partition");
            for (_, bytes) in stored_batches(&log, &name) {
                target.append_at_own_offset(BytesMut::from(&bytes[..])).await.expect("next batch");
            }
            prop_assert_eq!(stored_batches(&log, &mirror), stored_batches(&log, &name));

            log.close().await.expect("close");
            drop((log, partition, target));
            let log = open(dir.path()).await;
            prop_assert_eq!(read_all(&log, &name), after);
            log.close().await.expect("close");
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_compacted_topic_refuses_records_without_a_key_and_dense_offsets_are_required() {
    let (_dir, log, name) = table_topic(KEEP_TOMBSTONES).await;
    let keyless = Record {
        key: None,
        ..record((1, Some(1)))
    };
    let error = log
        .append(
            &name,
            PartitionId(0),
            encode(&[keyless], Compression::None).expect("encodes"),
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(error, LogError::KeylessRecordInCompactedTopic { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("every record needs a key"),
        "{error}"
    );

    let sparse = crate::log::encode_sparse(&[(3, record((1, Some(1))))], 3, Compression::None)
        .expect("encodes");
    let error = log
        .append(&name, PartitionId(0), sparse)
        .await
        .expect_err("a producer's batch must be dense");
    assert!(
        error.to_string().contains("last offset delta is 3"),
        "{error}"
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn records_carrying_progress_tags_survive_compaction() {
    let (_dir, log, name) = table_topic(0).await;
    let mut tagged = record((1, Some(1)));
    tagged.headers.push(Header {
        key: crate::log::KEPT_BY_COMPACTION[0].into(),
        value: Some(Bytes::from_static(b"7:0:0:1")),
    });
    log.append(
        &name,
        PartitionId(0),
        encode(&[tagged], Compression::None).expect("encodes"),
    )
    .await
    .expect("append");
    for round in 0..40u16 {
        write_all(&log, &name, &[vec![(1, Some(round)), (2, Some(round))]]).await;
    }
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    partition.compact(SystemTime::now()).expect("compacts");
    let after = read_all(&log, &name);
    assert_eq!(after[0].offset, Offset(0), "the tagged record stays");
    assert!(after.len() < 41, "the rest is compacted: {}", after.len());
    log.close().await.expect("close");
}

/// A stop at any point of a pass leaves a valid partition: before the rename the old segment
/// (with its index files possibly deleted) and an unfinished replacement; after it, the new
/// segment without index files.
#[tokio::test]
async fn an_interrupted_compaction_leaves_a_valid_partition() {
    let (dir, log, name) = table_topic(KEEP_TOMBSTONES).await;
    let batches: Vec<Vec<Write>> = (0..60u16).map(|i| vec![((i % 5) as u8, Some(i))]).collect();
    let before = write_all(&log, &name, &batches).await;
    log.close().await.expect("close");
    drop(log);
    let partition_dir = dir.path().join("topics/table/0");
    let base = Offset(0);
    // Before the rename: the replacement is half written and the old indexes are gone.
    std::fs::write(
        crate::log::segment::compacting_path(&partition_dir, base),
        b"half a segment",
    )
    .expect("write");
    crate::log::segment::delete_index_files(&partition_dir, base).expect("delete");
    let log = open(dir.path()).await;
    assert_eq!(read_all(&log, &name), before, "the old segment serves");
    assert!(!crate::log::segment::compacting_path(&partition_dir, base).exists());
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    partition.compact(SystemTime::now()).expect("compacts");
    let after = read_all(&log, &name);
    assert!(after.len() < before.len());
    log.close().await.expect("close");
    drop((log, partition));
    // After the rename: the new segment's indexes were not written yet.
    for segment in segment_bases(dir.path(), "table") {
        crate::log::segment::delete_index_files(&partition_dir, segment).expect("delete");
    }
    let log = open(dir.path()).await;
    assert_eq!(read_all(&log, &name), after, "the compacted segments serve");
    log.close().await.expect("close");
}

/// Compaction runs when enough was sealed since the last pass, not on every check.
#[tokio::test]
async fn a_pass_is_due_when_enough_was_sealed_since_the_last() {
    let (_dir, log, name) = table_topic(KEEP_TOMBSTONES).await;
    let batches: Vec<Vec<Write>> = (0..60u16).map(|i| vec![((i % 3) as u8, Some(i))]).collect();
    write_all(&log, &name, &batches).await;
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    let now = SystemTime::now();
    assert!(
        partition.compact_if_due(now).expect("pass").is_some(),
        "first pass"
    );
    assert!(
        partition.compact_if_due(now).expect("pass").is_none(),
        "nothing new"
    );
    log.close().await.expect("close");
}

/// A compacted topic read as a table: the newest value of each key, none for a deleted key,
/// the same before and after a pass and after a restart; other topics are refused.
#[tokio::test]
async fn lookups_by_key_answer_the_newest_value_and_none_after_a_tombstone() {
    let (dir, log, name) = table_topic(KEEP_TOMBSTONES).await;
    let rounds: Vec<Vec<Write>> = (0..30u16)
        .map(|round| (0..6).map(|key| (key, Some(round))).collect())
        .chain([vec![(2, None)]])
        .collect();
    write_all(&log, &name, &rounds).await;
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    let value_of = |key: u8| {
        partition
            .lookup(format!("key-{key}").as_bytes())
            .expect("lookup")
            .map(|stored| stored.record.value.expect("a value"))
    };
    let expected = |key: u8| (key != 2).then(|| Bytes::from("value-29"));
    for key in 0..7 {
        assert_eq!(
            value_of(key),
            if key < 6 { expected(key) } else { None },
            "key {key}"
        );
    }
    write_all(&log, &name, &[vec![(6, Some(1))]]).await;
    assert_eq!(
        value_of(6),
        Some(Bytes::from("value-1")),
        "appended since the last lookup"
    );
    partition.compact(SystemTime::now()).expect("compacts");
    for key in 0..6 {
        assert_eq!(value_of(key), expected(key), "key {key} after a pass");
    }
    log.close().await.expect("close");
    drop((log, partition));
    let log = open(dir.path()).await;
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    assert_eq!(
        partition
            .lookup(b"key-5")
            .expect("lookup")
            .and_then(|s| s.record.value),
        Some(Bytes::from("value-29")),
        "after a restart"
    );
    let plain = TopicName::new("plain").expect("name");
    log.create_topic(plain.clone(), TopicConfig::default())
        .await
        .expect("create");
    let error = log
        .partition(&plain, PartitionId(0))
        .expect("partition")
        .lookup(b"key")
        .expect_err("not a table");
    assert!(error.to_string().contains("not compacted"), "{error}");
    log.close().await.expect("close");
}

/// What a link has not acknowledged stays as written: it resumes there, at a batch boundary
/// it compares with its mirror.
#[tokio::test]
async fn segments_a_retention_hold_keeps_are_not_compacted() {
    let (dir, log, name) = table_topic(KEEP_TOMBSTONES).await;
    let batches: Vec<Vec<Write>> = (0..60u16).map(|i| vec![((i % 3) as u8, Some(i))]).collect();
    let before = write_all(&log, &name, &batches).await;
    let bases = segment_bases(dir.path(), "table");
    assert!(bases.len() > 4, "{bases:?}");
    let keep_from = bases[2];
    log.set_retention_hold(&name, PartitionId(0), "link", keep_from, u64::MAX)
        .expect("hold");
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    partition.compact(SystemTime::now()).expect("compacts");
    let after = read_all(&log, &name);
    let held = |records: &[StoredRecord]| -> Vec<StoredRecord> {
        records
            .iter()
            .filter(|r| r.offset >= bases[1])
            .cloned()
            .collect()
    };
    assert_eq!(
        held(&after),
        held(&before),
        "the segment before the hold's and after"
    );
    assert!(
        after.len() < before.len(),
        "the segments before it are compacted"
    );
    log.close().await.expect("close");
}
