//! Behaviour of the log as a whole: appends, reads, rolls, recovery, corruption, retention.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn log_config(dir: &Path, durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        retention_check_interval: Duration::from_secs(3600),
        ..LogConfig::new(dir.to_path_buf())
    }
}

fn open_meta(dir: &Path) -> Meta {
    Meta::open(&dir.join("meta")).expect("meta opens")
}

async fn open(dir: &Path) -> Log {
    let meta = open_meta(dir);
    Log::open(log_config(dir, Durability::Fsync), meta)
        .await
        .expect("log opens")
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid name")
}

fn small_segments(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        segment_bytes: 4096,
        max_message_bytes: 4096,
        retention_ms: None,
        ..TopicConfig::default()
    }
}

fn records(values: &[String], timestamp: i64) -> Vec<Record> {
    values
        .iter()
        .map(|v| Record {
            key: Some(Bytes::from(format!("k-{v}"))),
            value: Some(Bytes::from(v.clone())),
            headers: vec![Header {
                key: "h".into(),
                value: None,
            }],
            timestamp: Timestamp(timestamp),
        })
        .collect()
}

fn batch_of(values: &[String], timestamp: i64) -> BytesMut {
    encode(&records(values, timestamp), Compression::None).expect("encodes")
}

fn values(from: usize, count: usize) -> Vec<String> {
    (from..from + count).map(|i| format!("value-{i}")).collect()
}

/// Every record of the partition from `from` to the high watermark, in order.
fn read_all(partition: &Partition, from: Offset) -> Result<Vec<StoredRecord>, LogError> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < partition.high_watermark() {
        let chunk = partition.read(offset, 1500)?;
        assert!(!chunk.batches.is_empty(), "no progress at {offset}");
        out.extend(
            decode_all(chunk.batches)
                .expect("decodes")
                .into_iter()
                .filter(|r| r.offset >= offset),
        );
        offset = chunk.next_offset;
    }
    Ok(out)
}

fn partition_dir(dir: &Path, topic: &str, partition: u32) -> PathBuf {
    dir.join("topics").join(topic).join(partition.to_string())
}

fn segment_files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// A data directory with topic `t`, its partition 0 filled by [`fill`], written by a log
/// that was then closed.
async fn written_topic(config: TopicConfig, batches: usize, per_batch: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let name = topic("t");
    log.create_topic(name.clone(), config)
        .await
        .expect("create");
    fill(&log, &name, batches, per_batch).await;
    log.close().await.expect("close");
    dir
}

/// The active (last) segment file of `t`/0.
fn last_segment(dir: &Path) -> PathBuf {
    segment_files(&partition_dir(dir, "t", 0), "log")
        .pop()
        .expect("segment")
}

/// Appends `batches` batches of `per_batch` records to partition 0, numbering values from 0.
async fn fill(log: &Log, name: &TopicName, batches: usize, per_batch: usize) {
    for b in 0..batches {
        log.append(
            name,
            PartitionId(0),
            batch_of(&values(b * per_batch, per_batch), 1000 + b as i64),
        )
        .await
        .expect("append");
    }
}

#[tokio::test]
async fn appended_records_read_back_in_order_across_rolled_segments_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = topic("t");
    {
        let log = open(dir.path()).await;
        log.create_topic(name.clone(), small_segments(2))
            .await
            .expect("create");
        let outcome = log
            .append(&name, PartitionId(1), batch_of(&values(0, 3), 5))
            .await
            .expect("append");
        assert_eq!(
            (outcome.base_offset, outcome.last_offset),
            (Offset(0), Offset(2))
        );
        fill(&log, &name, 60, 5).await;
        let partition = log.partition(&name, PartitionId(0)).expect("partition");
        assert_eq!(partition.high_watermark(), Offset(300));
        let all = read_all(&partition, Offset(0)).expect("read");
        assert_eq!(all.len(), 300);
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, r)| r.offset == Offset(i as u64)
                    && r.record.value == Some(Bytes::from(format!("value-{i}"))))
        );
        log.close().await.expect("close");
    }
    let segments = segment_files(&partition_dir(dir.path(), "t", 0), "log");
    assert!(
        segments.len() > 3,
        "4 KiB segments must have rolled: {segments:?}"
    );
    let log = open(dir.path()).await;
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    assert_eq!(partition.high_watermark(), Offset(300));
    let later_segment = partition.read(Offset(250), 100).expect("read");
    assert_eq!(
        later_segment.log_start,
        Offset(0),
        "the partition's start, not the segment's"
    );
    let from_middle = read_all(&partition, Offset(123)).expect("read");
    assert_eq!(from_middle.first().map(|r| r.offset), Some(Offset(123)));
    assert_eq!(from_middle.len(), 177);
    let next = log
        .append(&name, PartitionId(0), batch_of(&values(300, 1), 5))
        .await
        .expect("append after restart");
    assert_eq!(next.base_offset, Offset(300));
    assert_eq!(
        log.partition(&name, PartitionId(1))
            .expect("p1")
            .high_watermark(),
        Offset(3)
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_reader_at_the_end_waits_for_new_data_and_times_out_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let name = topic("t");
    log.create_topic(name.clone(), TopicConfig::default())
        .await
        .expect("create");
    let empty = log
        .read(
            &name,
            PartitionId(0),
            Offset(0),
            1024,
            Duration::from_millis(50),
        )
        .await
        .expect("read");
    assert!(empty.batches.is_empty());
    let reader = {
        let log = log.clone();
        let name = name.clone();
        tokio::spawn(async move {
            log.read(
                &name,
                PartitionId(0),
                Offset(0),
                1024,
                Duration::from_secs(30),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append(&name, PartitionId(0), batch_of(&values(0, 2), 1))
        .await
        .expect("append");
    let chunk = reader.await.expect("join").expect("read");
    assert_eq!(decode_all(chunk.batches).expect("decode").len(), 2);
    assert_eq!(chunk.next_offset, Offset(2));
    log.close().await.expect("close");
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let name = topic("t");
    let err = log
        .create_topic(
            name.clone(),
            TopicConfig {
                partitions: 0,
                ..TopicConfig::default()
            },
        )
        .await
        .expect_err("0 partitions");
    assert!(
        err.to_string().contains("partitions must be 1 to 1024"),
        "{err}"
    );
    log.create_topic(name.clone(), small_segments(1))
        .await
        .expect("create");
    assert!(matches!(
        log.create_topic(name.clone(), small_segments(1)).await,
        Err(LogError::TopicExists { .. })
    ));
    let big = batch_of(&[("x".repeat(5000))], 1);
    let err = log
        .append(&name, PartitionId(0), big)
        .await
        .expect_err("too large");
    assert!(
        matches!(err, LogError::RecordTooLarge { max: 4096, .. }),
        "{err}"
    );
    let mut flipped = batch_of(&values(0, 1), 1);
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    let err = log
        .append(&name, PartitionId(0), flipped)
        .await
        .expect_err("bad crc");
    assert!(err.to_string().contains("CRC-32C mismatch"), "{err}");
    let mut two = batch_of(&values(0, 1), 1);
    two.extend_from_slice(&batch_of(&values(1, 1), 1));
    assert!(matches!(
        log.append(&name, PartitionId(0), two).await,
        Err(LogError::InvalidBatch(BatchError::TrailingBytes { .. }))
    ));
    assert!(matches!(
        log.append(&name, PartitionId(7), batch_of(&values(0, 1), 1))
            .await,
        Err(LogError::UnknownPartition { partitions: 1, .. })
    ));
    assert!(matches!(
        log.append(&topic("nope"), PartitionId(0), batch_of(&values(0, 1), 1))
            .await,
        Err(LogError::UnknownTopic { .. })
    ));
    let err = log
        .read(&name, PartitionId(0), Offset(5), 100, Duration::ZERO)
        .await
        .expect_err("past the end");
    assert!(
        err.to_string().contains("valid offsets are 0 to 0"),
        "{err}"
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_nothing_after_it_is_served() {
    let name = topic("t");
    let dir = written_topic(TopicConfig::default(), 10, 3).await;
    let active = last_segment(dir.path());
    let mut partial = batch_of(&values(30, 5), 9).to_vec();
    partial.truncate(partial.len() / 2);
    let mut bytes = std::fs::read(&active).expect("read");
    let durable_len = bytes.len();
    bytes.extend_from_slice(&partial);
    std::fs::write(&active, &bytes).expect("write torn tail");

    let log = open(dir.path()).await;
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    assert_eq!(partition.high_watermark(), Offset(30));
    assert_eq!(read_all(&partition, Offset(0)).expect("read").len(), 30);
    assert_eq!(
        std::fs::metadata(&active).expect("stat").len() as usize,
        durable_len
    );
    let next = log
        .append(&name, PartitionId(0), batch_of(&values(30, 1), 9))
        .await
        .expect("append");
    assert_eq!(next.base_offset, Offset(30));
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_flipped_byte_in_a_sealed_segment_is_reported_with_file_and_position() {
    let name = topic("t");
    let dir = written_topic(
        TopicConfig {
            segment_bytes: 64 * 1024,
            ..small_segments(1)
        },
        80,
        50,
    )
    .await;
    let segments = segment_files(&partition_dir(dir.path(), "t", 0), "log");
    assert!(segments.len() >= 3, "{segments:?}");
    let sealed = &segments[1];
    let mut bytes = std::fs::read(sealed).expect("read");
    let position = 200;
    bytes[position] ^= 0x01;
    std::fs::write(sealed, &bytes).expect("flip");

    let log = open(dir.path()).await;
    let partition = log
        .partition(&name, PartitionId(0))
        .expect("index files pass their checks");
    let before = partition
        .read(Offset(0), 100)
        .expect("the first segment is fine");
    assert!(!before.batches.is_empty());
    let error = read_all(&partition, Offset(0)).expect_err("corruption must surface");
    let message = error.to_string();
    assert!(matches!(error, LogError::Corrupt { .. }), "{message}");
    assert!(message.contains(&sealed.display().to_string()), "{message}");
    assert!(message.contains("CRC-32C mismatch"), "{message}");
    log.close().await.expect("close");
    drop(log);

    // With its index gone, the damaged segment cannot be re-indexed: the partition refuses to
    // serve, and says where the damage is.
    for index in segment_files(&partition_dir(dir.path(), "t", 0), "index") {
        std::fs::remove_file(index).expect("remove index");
    }
    let log = open(dir.path()).await;
    let error = log
        .partition(&name, PartitionId(0))
        .expect_err("refuses to serve");
    assert!(
        error.to_string().contains(&sealed.display().to_string()),
        "{error}"
    );
    assert!(matches!(
        log.list_topics()[0].partitions[0].state,
        PartitionState::Failed { .. }
    ));
    log.close().await.expect("close");
}

#[tokio::test]
async fn corruption_inside_the_durable_part_of_the_active_segment_is_not_truncated() {
    let name = topic("t");
    let dir = written_topic(TopicConfig::default(), 10, 3).await;
    let active = last_segment(dir.path());
    let mut bytes = std::fs::read(&active).expect("read");
    let length = bytes.len();
    bytes[length / 2] ^= 0x10;
    std::fs::write(&active, &bytes).expect("flip");
    let log = open(dir.path()).await;
    let error = log
        .partition(&name, PartitionId(0))
        .expect_err("refuses to serve");
    assert!(error.to_string().contains("corrupt data in"), "{error}");
    assert_eq!(
        std::fs::metadata(&active).expect("stat").len() as usize,
        length,
        "nothing cut"
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn missing_or_damaged_index_files_are_rebuilt() {
    let name = topic("t");
    let dir = written_topic(small_segments(1), 40, 5).await;
    let pdir = partition_dir(dir.path(), "t", 0);
    let indexes = segment_files(&pdir, "index");
    let original = std::fs::read(&indexes[0]).expect("read index");
    std::fs::remove_file(&indexes[0]).expect("delete index");
    std::fs::write(&indexes[1], b"garbage!garbage!").expect("damage index");
    let time_indexes = segment_files(&pdir, "timeindex");
    std::fs::write(&time_indexes[2], [0xff; 7]).expect("damage time index");

    let log = open(dir.path()).await;
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    assert_eq!(read_all(&partition, Offset(0)).expect("read").len(), 200);
    assert_eq!(std::fs::read(&indexes[0]).expect("rebuilt"), original);
    assert_ne!(
        std::fs::read(&indexes[1]).expect("rebuilt"),
        b"garbage!garbage!"
    );
    assert_eq!(
        partition
            .offset_for_timestamp(Timestamp(1020))
            .expect("lookup"),
        Some(Offset(100))
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn segments_roll_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let name = topic("t");
    log.create_topic(
        name.clone(),
        TopicConfig {
            segment_ms: 20,
            ..small_segments(1)
        },
    )
    .await
    .expect("create");
    for b in 0..3 {
        log.append(&name, PartitionId(0), batch_of(&values(b, 1), 1))
            .await
            .expect("append");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let segments = segment_files(&partition_dir(dir.path(), "t", 0), "log");
    assert_eq!(segments.len(), 3, "{segments:?}");
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    assert_eq!(read_all(&partition, Offset(0)).expect("read").len(), 3);
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_damaged_length_field_in_a_sealed_segment_is_an_error_not_an_empty_read() {
    let name = topic("t");
    let dir = written_topic(small_segments(1), 40, 5).await;
    let first = segment_files(&partition_dir(dir.path(), "t", 0), "log").remove(0);
    let mut bytes = std::fs::read(&first).expect("read");
    // The batch length is outside the CRC: make the first batch claim to run past the file.
    bytes[8..12].copy_from_slice(&0x00ff_ffffu32.to_be_bytes());
    std::fs::write(&first, &bytes).expect("write");
    let log = open(dir.path()).await;
    match log.partition(&name, PartitionId(0)) {
        Err(error) => assert!(error.to_string().contains("corrupt data in"), "{error}"),
        Ok(partition) => {
            let error = partition
                .read(Offset(0), 1024)
                .expect_err("must not read empty");
            assert!(error.to_string().contains("batch is truncated"), "{error}");
        }
    }
    log.close().await.expect("close");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever bytes the segment and index files hold, opening and reading the log returns
    /// data or errors; it never panics.
    #[test]
    fn hostile_files_never_panic(
        sealed in proptest::collection::vec(any::<u8>(), 0..3000),
        active in proptest::collection::vec(any::<u8>(), 0..3000),
        index in proptest::collection::vec(any::<u8>(), 0..64),
        time_index in proptest::collection::vec(any::<u8>(), 0..64),
        recovery_point in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let name = topic("t");
            {
                let log = open(dir.path()).await;
                log.create_topic(name.clone(), small_segments(1)).await.expect("create");
                log.close().await.expect("close");
            }
            let pdir = partition_dir(dir.path(), "t", 0);
            std::fs::write(pdir.join("00000000000000000000.log"), &sealed).expect("write");
            std::fs::write(pdir.join("00000000000000000000.index"), &index).expect("write");
            std::fs::write(pdir.join("00000000000000000000.timeindex"), &time_index).expect("write");
            std::fs::write(pdir.join("00000000000000000100.log"), &active).expect("write");
            std::fs::write(pdir.join("recovery-point"), &recovery_point).expect("write");
            let log = open(dir.path()).await;
            if let Ok(partition) = log.partition(&name, PartitionId(0)) {
                let _ = partition.read(Offset(0), 4096);
                let _ = partition.read(Offset(100), 4096);
                let _ = partition.offset_for_timestamp(Timestamp(0));
                let _ = log.append(&name, PartitionId(0), batch_of(&values(0, 1), 1)).await;
            }
            log.close().await.expect("close");
        });
    }
}

#[tokio::test]
async fn lookup_by_timestamp_finds_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let name = topic("t");
    log.create_topic(name.clone(), small_segments(1))
        .await
        .expect("create");
    fill(&log, &name, 40, 5).await;
    let partition = log.partition(&name, PartitionId(0)).expect("partition");
    for (target, expected) in [
        (0, Some(0)),
        (1000, Some(0)),
        (1001, Some(5)),
        (1039, Some(195)),
        (1040, None),
    ] {
        assert_eq!(
            partition
                .offset_for_timestamp(Timestamp(target))
                .expect("lookup"),
            expected.map(Offset),
            "timestamp {target}"
        );
    }
    log.close().await.expect("close");
}

#[tokio::test]
async fn retention_deletes_whole_old_segments_by_age_and_by_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let now = Timestamp::now().0;
    let aged = topic("aged");
    log.create_topic(
        aged.clone(),
        TopicConfig {
            retention_ms: Some(3_600_000),
            ..small_segments(1)
        },
    )
    .await
    .expect("create");
    for b in 0..40 {
        let age = if b < 20 { 2 * 3_600_000 } else { 0 };
        log.append(
            &aged,
            PartitionId(0),
            batch_of(&values(b * 5, 5), now - age),
        )
        .await
        .expect("append");
    }
    let sized = topic("sized");
    log.create_topic(
        sized.clone(),
        TopicConfig {
            retention_ms: None,
            retention_bytes: Some(8192),
            ..small_segments(1)
        },
    )
    .await
    .expect("create");
    fill(&log, &sized, 100, 5).await;

    let aged_partition = log.partition(&aged, PartitionId(0)).expect("partition");
    let sized_partition = log.partition(&sized, PartitionId(0)).expect("partition");
    let segments_before = segment_files(&partition_dir(dir.path(), "aged", 0), "log").len();
    log.apply_retention().await;

    let aged_start = aged_partition.log_start();
    assert!(aged_start > Offset(0), "old segments deleted");
    assert!(
        aged_start <= Offset(100),
        "only segments wholly older than retention go"
    );
    let remaining = read_all(&aged_partition, aged_start).expect("read");
    assert!(remaining.iter().all(|r| r.offset >= aged_start));
    assert_eq!(remaining.last().map(|r| r.offset), Some(Offset(199)));
    assert!(segment_files(&partition_dir(dir.path(), "aged", 0), "log").len() < segments_before);
    let err = aged_partition
        .read(Offset(0), 100)
        .expect_err("deleted offsets");
    assert!(matches!(err, LogError::OffsetOutOfRange { .. }), "{err}");

    let PartitionState::Online { size_bytes, .. } = sized_partition.state() else {
        panic!("partition online");
    };
    assert!(
        (8192..8192 + 4096 + 4096).contains(&size_bytes),
        "{size_bytes}"
    );
    assert!(sized_partition.log_start() > Offset(0));
    log.close().await.expect("close");
}

async fn assert_name_can_be_used_again(log: &Log, name: &TopicName) {
    log.create_topic(name.clone(), small_segments(1))
        .await
        .expect("the name can be used again");
    assert_eq!(
        log.partition(name, PartitionId(0))
            .expect("p")
            .high_watermark(),
        Offset(0),
        "the new topic starts empty"
    );
}

#[tokio::test]
async fn deleted_topics_are_gone_after_restart_and_can_be_created_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = topic("t");
    {
        let log = open(dir.path()).await;
        log.create_topic(name.clone(), small_segments(3))
            .await
            .expect("create");
        fill(&log, &name, 5, 5).await;
        log.delete_topic(&name).await.expect("delete");
        assert!(!dir.path().join("topics/t").exists());
        assert!(!dir.path().join("deleting/t").exists());
        log.close().await.expect("close");
    }
    let log = open(dir.path()).await;
    assert!(log.list_topics().is_empty());
    assert_name_can_be_used_again(&log, &name).await;
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_deletion_a_crash_interrupted_is_finished_at_start_and_frees_the_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = topic("t");
    {
        let log = open(dir.path()).await;
        log.create_topic(name.clone(), small_segments(3))
            .await
            .expect("create");
        fill(&log, &name, 5, 5).await;
        log.create_topic(topic("old"), small_segments(2))
            .await
            .expect("create");
        log.close().await.expect("close");
    }
    // What a SIGKILL leaves after the rename (the commit point) and part of the removal, before
    // the metadata was forgotten.
    let tombstone = dir.path().join("deleting/t");
    std::fs::rename(dir.path().join("topics/t"), &tombstone).expect("rename");
    std::fs::remove_dir_all(tombstone.join("0")).expect("remove one partition");
    // And one interrupted by an earlier version, which marked the directory instead.
    std::fs::write(dir.path().join("topics/old/.deleting"), b"").expect("marker");
    std::fs::remove_dir_all(dir.path().join("topics/old/0")).expect("remove one partition");

    let log = open(dir.path()).await;
    assert!(log.list_topics().is_empty(), "the deletion was finished");
    assert!(!tombstone.exists(), "its files are gone");
    assert!(!dir.path().join("topics/old").exists());
    assert_name_can_be_used_again(&log, &name).await;
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_creation_that_fails_midway_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = topic("t");
    {
        let log = open(dir.path()).await;
        // A dangling link where the topic's directory goes: no partition can be made there.
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("topics/t"))
            .expect("symlink");
        log.create_topic(name.clone(), small_segments(3))
            .await
            .expect_err("no partition directory can be made");
        assert!(log.list_topics().is_empty());
        log.close().await.expect("close");
    }
    let log = open(dir.path()).await;
    assert!(log.list_topics().is_empty(), "nothing of it was kept");
    log.create_topic(name.clone(), small_segments(3))
        .await
        .expect("the name can be used");
    log.close().await.expect("close");
}

#[tokio::test]
async fn os_durability_acknowledges_and_recovers_on_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = topic("t");
    for round in 0..2 {
        let meta = open_meta(dir.path());
        let log = Log::open(log_config(dir.path(), Durability::Os), meta)
            .await
            .expect("open");
        if round == 0 {
            log.create_topic(name.clone(), small_segments(1))
                .await
                .expect("create");
        }
        fill(&log, &name, 10, 5).await;
        assert_eq!(
            log.partition(&name, PartitionId(0))
                .expect("p")
                .high_watermark(),
            Offset(50 * (round + 1))
        );
        log.close().await.expect("close");
    }
}

/// Operations of the model check.
#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        compression: Compression,
    },
    Reopen,
    /// A stop in the middle of a write: a prefix of one more batch lands past the durable end.
    TornWrite {
        keep_per_mille: u16,
    },
    Read {
        from_per_mille: u16,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..20, prop_oneof![Just(Compression::None), Just(Compression::Lz4), Just(Compression::Zstd)])
            .prop_map(|(records, compression)| Op::Append { records, compression }),
        1 => Just(Op::Reopen),
        1 => (0u16..1000).prop_map(|keep_per_mille| Op::TornWrite { keep_per_mille }),
        2 => (0u16..1000).prop_map(|from_per_mille| Op::Read { from_per_mille }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The log against a plain vector of values: whatever mix of appends, restarts and torn
    /// writes, every acknowledged record reads back at its offset and nothing else appears.
    #[test]
    fn the_log_behaves_like_a_vector(ops in proptest::collection::vec(arb_op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let name = topic("model");
            let mut log = open(dir.path()).await;
            log.create_topic(name.clone(), TopicConfig { segment_bytes: 2048, max_message_bytes: 2048, ..small_segments(1) })
                .await
                .expect("create");
            let mut model: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Append { records, compression } => {
                        let new = values(model.len(), records);
                        let batch = encode(&records_of(&new), compression).expect("encode");
                        let outcome = log.append(&name, PartitionId(0), batch).await.expect("append");
                        prop_assert_eq!(outcome.base_offset, Offset(model.len() as u64));
                        model.extend(new);
                    }
                    Op::Reopen => {
                        log.close().await.expect("close");
                        drop(log);
                        log = open(dir.path()).await;
                    }
                    Op::TornWrite { keep_per_mille } => {
                        log.close().await.expect("close");
                        drop(log);
                        let active = segment_files(&partition_dir(dir.path(), "model", 0), "log")
                            .pop()
                            .expect("segment");
                        let torn = batch_of(&values(model.len(), 3), 1);
                        let keep = (torn.len() * usize::from(keep_per_mille) / 1000).max(1);
                        let mut bytes = std::fs::read(&active).expect("read");
                        bytes.extend_from_slice(&torn[..keep]);
                        std::fs::write(&active, bytes).expect("write");
                        log = open(dir.path()).await;
                    }
                    Op::Read { from_per_mille } => {
                        let from = model.len() * usize::from(from_per_mille) / 1000;
                        let partition = log.partition(&name, PartitionId(0)).expect("partition");
                        let read = read_all(&partition, Offset(from as u64)).expect("read");
                        let got: Vec<String> = read
                            .iter()
                            .map(|r| String::from_utf8_lossy(r.record.value.as_deref().unwrap_or_default()).into_owned())
                            .collect();
                        prop_assert_eq!(&got[..], &model[from..]);
                    }
                }
                let partition = log.partition(&name, PartitionId(0)).expect("partition");
                prop_assert_eq!(partition.high_watermark(), Offset(model.len() as u64));
            }
            log.close().await.expect("close");
            Ok(())
        })?;
    }
}

fn records_of(values: &[String]) -> Vec<Record> {
    records(values, 1)
}

/// Every stored byte of partition 0 of `name`, batch by batch, from offset 0.
fn stored_bytes(log: &Log, name: &TopicName) -> Vec<u8> {
    let partition = log.partition(name, PartitionId(0)).expect("partition");
    let mut bytes = Vec::new();
    let mut offset = Offset(0);
    while offset < partition.high_watermark() {
        let chunk = partition.read(offset, 1 << 16).expect("read");
        bytes.extend_from_slice(&chunk.batches);
        offset = chunk.next_offset;
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A mirror fed the origin's batches at their own offsets, in any order, with repeats
    /// (what a link delivers after resends), ends up with the origin's bytes at the origin's
    /// offsets: batches that are not next are refused with the offset that is, and nothing
    /// is written twice or out of place.
    #[test]
    fn batches_kept_at_their_own_offsets_make_an_identical_copy(
        sizes in proptest::collection::vec(1usize..30, 1..25),
        deliveries in proptest::collection::vec(any::<proptest::sample::Index>(), 0..80),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let meta = open_meta(dir.path());
            let log = Log::open(log_config(dir.path(), Durability::Os), meta).await.expect("log opens");
            let (origin, mirror) = (topic("origin"), topic("mirror"));
            for name in [&origin, &mirror] {
                log.create_topic(name.clone(), small_segments(1)).await.expect("create");
            }
            let mut count = 0;
            for size in &sizes {
                let batch = batch_of(&values(count, *size), 1000);
                log.append(&origin, PartitionId(0), batch).await.expect("append");
                count += size;
            }
            let source = log.partition(&origin, PartitionId(0)).expect("partition");
            let mut batches = Vec::new();
            let mut offset = Offset(0);
            while offset < source.high_watermark() {
                let chunk = source.read(offset, 1 << 16).expect("read");
                let mut rest = chunk.batches.clone();
                while !rest.is_empty() {
                    let header = crate::log::batch::validate(&rest).expect("valid");
                    batches.push((header.base_offset, rest.split_to(header.total_len)));
                }
                offset = chunk.next_offset;
            }
            let target = log.partition(&mirror, PartitionId(0)).expect("partition");
            let deliver = |index: usize| {
                let (base, bytes) = batches[index].clone();
                let target = &target;
                async move { (base, target.append_at_own_offset(BytesMut::from(&bytes[..])).await) }
            };
            // Random deliveries first (repeats, gaps), then in order until complete, as a
            // link resending from the offset the mirror asks for.
            for index in deliveries {
                let (base, outcome) = deliver(index.index(batches.len())).await;
                match outcome {
                    Ok(appended) => prop_assert_eq!(appended.base_offset, base),
                    Err(LogError::NotNextOffset { expected, got, .. }) => {
                        prop_assert_eq!(got, base);
                        prop_assert_eq!(expected, target.high_watermark());
                    }
                    Err(other) => prop_assert!(false, "unexpected error: {other}"),
                }
            }
            let missing: Vec<usize> = (0..batches.len())
                .filter(|index| batches[*index].0 >= target.high_watermark())
                .collect();
            for index in missing {
                deliver(index).await.1.expect("the next batch is taken");
            }
            prop_assert_eq!(target.high_watermark(), source.high_watermark());
            prop_assert!(stored_bytes(&log, &mirror) == stored_bytes(&log, &origin), "byte-identical");
            log.close().await.expect("close");
            Ok(())
        })?;
    }
}

/// Base offsets of the segment files of `topic`/0, oldest first.
fn segment_bases(dir: &Path, topic: &str) -> Vec<Offset> {
    segment_files(&partition_dir(dir, topic, 0), "log")
        .iter()
        .filter_map(|path| segment::parse_log_file_name(path.file_name()?.to_str()?))
        .collect()
}

/// The base of the segment file of `topic`/0 that holds `offset`.
fn segment_holding(dir: &Path, topic: &str, offset: Offset) -> Offset {
    segment_bases(dir, topic)
        .into_iter()
        .rfind(|base| *base <= offset)
        .expect("a segment holds the offset")
}

/// Creates `name` with `config`, and fills partition 0 with
/// 100 batches of 5 records that are two hours old.
async fn old_records_topic(log: &Log, name: &TopicName, config: TopicConfig) {
    log.create_topic(name.clone(), config)
        .await
        .expect("create");
    let two_hours_ago = Timestamp::now().0 - 2 * 3_600_000;
    for b in 0..100 {
        log.append(
            name,
            PartitionId(0),
            batch_of(&values(b * 5, 5), two_hours_ago),
        )
        .await
        .expect("append");
    }
}

fn expire_after_an_hour() -> TopicConfig {
    TopicConfig {
        retention_ms: Some(3_600_000),
        ..small_segments(1)
    }
}

fn size_bytes(partition: &Partition) -> u64 {
    match partition.state() {
        PartitionState::Online { size_bytes, .. } => size_bytes,
        PartitionState::Failed { reason } => panic!("partition failed: {reason}"),
    }
}

fn segment_count(partition: &Partition) -> usize {
    match partition.state() {
        PartitionState::Online { segments, .. } => segments,
        PartitionState::Failed { reason } => panic!("partition failed: {reason}"),
    }
}

#[tokio::test]
async fn retention_holds_keep_what_their_holders_still_need_by_age_and_by_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let (aged, sized) = (topic("aged"), topic("sized"));
    old_records_topic(&log, &aged, expire_after_an_hour()).await;
    old_records_topic(
        &log,
        &sized,
        TopicConfig {
            retention_bytes: Some(8192),
            ..small_segments(1)
        },
    )
    .await;
    let start_of = |name: &TopicName| {
        log.partition(name, PartitionId(0))
            .expect("partition")
            .log_start()
    };
    let holding = |name: &str, offset: u64| segment_holding(dir.path(), name, Offset(offset));
    let (aged_100, sized_100) = (holding("aged", 100), holding("sized", 100));
    assert!(
        aged_100 > Offset(0),
        "the test needs a segment below offset 100"
    );
    let (aged_200, aged_300) = (holding("aged", 200), holding("aged", 300));

    for name in [&aged, &sized] {
        log.set_retention_hold(name, PartitionId(0), "link-a", Offset(100), u64::MAX)
            .expect("hold");
    }
    log.apply_retention().await;
    assert_eq!(
        start_of(&aged),
        aged_100,
        "kept from the segment holding 100"
    );
    assert_eq!(
        start_of(&sized),
        sized_100,
        "kept from the segment holding 100"
    );
    let kept = read_all(
        &log.partition(&aged, PartitionId(0)).expect("p"),
        Offset(100),
    )
    .expect("the held offset is readable");
    assert_eq!(kept.first().map(|r| r.offset), Some(Offset(100)));

    // A second holder further on changes nothing; the first one moving on does.
    log.set_retention_hold(&aged, PartitionId(0), "link-b", Offset(300), u64::MAX)
        .expect("hold");
    log.set_retention_hold(&aged, PartitionId(0), "link-a", Offset(200), u64::MAX)
        .expect("hold moves");
    log.apply_retention().await;
    assert_eq!(
        start_of(&aged),
        aged_200,
        "the smallest offset of all holders"
    );

    log.release_retention_holds("link-a");
    log.apply_retention().await;
    assert_eq!(start_of(&aged), aged_300, "link-b's hold remains");

    log.release_retention_holds("link-b");
    log.apply_retention().await;
    assert_eq!(
        segment_count(&log.partition(&aged, PartitionId(0)).expect("p")),
        1,
        "without holds every expired sealed segment goes"
    );
    assert!(
        size_bytes(&log.partition(&sized, PartitionId(0)).expect("p")) < 8192 + 4096 + 4096,
        "without holds retention by size applies"
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_partition_over_its_holds_cap_loses_held_offsets_but_never_more_than_retention_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let (aged, forever) = (topic("aged"), topic("forever"));
    old_records_topic(&log, &aged, expire_after_an_hour()).await;
    old_records_topic(&log, &forever, small_segments(1)).await;
    for name in [&aged, &forever] {
        log.set_retention_hold(name, PartitionId(0), "link", Offset(0), 10_000)
            .expect("hold");
    }
    log.apply_retention().await;

    let partition = log.partition(&aged, PartitionId(0)).expect("p");
    let size = size_bytes(&partition);
    assert!(
        size <= 10_000 && size > 10_000 - 4096,
        "oldest segments went until within the cap: {size}"
    );
    // What the holder sees: its position is now before the log start.
    let err = partition.read(Offset(0), 100).expect_err("lost offsets");
    assert!(
        matches!(err, LogError::OffsetOutOfRange { log_start, .. } if log_start == partition.log_start() && log_start > Offset(0)),
        "{err}"
    );
    let forever_partition = log.partition(&forever, PartitionId(0)).expect("p");
    assert_eq!(
        forever_partition.log_start(),
        Offset(0),
        "a topic whose retention keeps everything loses nothing to a hold's cap"
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn retention_holds_go_with_their_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).await;
    let name = topic("t");
    old_records_topic(&log, &name, expire_after_an_hour()).await;
    log.set_retention_hold(&name, PartitionId(0), "link", Offset(0), u64::MAX)
        .expect("hold");
    let err = log
        .set_retention_hold(&name, PartitionId(1), "link", Offset(0), u64::MAX)
        .expect_err("no partition 1");
    assert!(matches!(err, LogError::UnknownPartition { .. }), "{err}");
    log.delete_topic(&name).await.expect("delete");
    old_records_topic(&log, &name, expire_after_an_hour()).await;
    log.apply_retention().await;
    assert_eq!(
        segment_count(&log.partition(&name, PartitionId(0)).expect("p")),
        1,
        "the deleted topic's hold does not hold the new one"
    );
    log.close().await.expect("close");
}

/// An encoded batch of `values` whose base offset is `base`, as a mirror receives it.
fn batch_at(values: &[String], base: Offset) -> BytesMut {
    let mut batch = batch_of(values, 1000);
    batch::set_base_offset(&mut batch, base);
    batch
}

#[tokio::test]
async fn a_partition_restarted_past_its_end_is_empty_and_continues_there_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = topic("t");
    {
        let log = open(dir.path()).await;
        log.create_topic(name.clone(), small_segments(1))
            .await
            .expect("create");
        fill(&log, &name, 30, 5).await;
        let partition = log.partition(&name, PartitionId(0)).expect("p");
        assert!(segment_bases(dir.path(), "t").len() > 1);

        let err = partition
            .restart_at(Offset(149))
            .await
            .expect_err("before the end");
        assert!(
            matches!(
                err,
                LogError::RestartBeforeEnd {
                    high_watermark: Offset(150),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("restarts only at or after its end"),
            "{err}"
        );
        partition
            .restart_at(Offset(150))
            .await
            .expect("at the end: nothing to do");
        assert_eq!(
            (partition.log_start(), partition.high_watermark()),
            (Offset(0), Offset(150))
        );

        // Ordered with appends: the batch submitted first counts.
        let appended = partition
            .submit(batch_of(&values(150, 5), 1000))
            .await
            .expect("queued");
        let err = partition
            .restart_at(Offset(152))
            .await
            .expect_err("the append came first");
        assert!(
            matches!(
                err,
                LogError::RestartBeforeEnd {
                    high_watermark: Offset(155),
                    ..
                }
            ),
            "{err}"
        );
        appended.await.expect("appended");

        partition.restart_at(Offset(1000)).await.expect("restart");
        assert_eq!(
            (partition.log_start(), partition.high_watermark()),
            (Offset(1000), Offset(1000))
        );
        assert_eq!(size_bytes(&partition), 0);
        assert_eq!(segment_bases(dir.path(), "t"), vec![Offset(1000)]);
        assert_eq!(
            segment_files(&partition_dir(dir.path(), "t", 0), "index").len(),
            0,
            "the old segments' indexes are gone too"
        );
        let err = partition.read(Offset(10), 100).expect_err("deleted");
        assert!(
            matches!(
                err,
                LogError::OffsetOutOfRange {
                    log_start: Offset(1000),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            partition
                .read(Offset(1000), 100)
                .expect("at the end")
                .batches
                .is_empty()
        );
        let err = partition
            .append_at_own_offset(batch_at(&values(0, 3), Offset(999)))
            .await
            .expect_err("not next");
        assert!(
            matches!(
                err,
                LogError::NotNextOffset {
                    expected: Offset(1000),
                    ..
                }
            ),
            "{err}"
        );
        let outcome = partition
            .append_at_own_offset(batch_at(&values(0, 3), Offset(1000)))
            .await
            .expect("the next batch starts at the new start");
        assert_eq!(outcome.base_offset, Offset(1000));
        log.close().await.expect("close");
    }
    let log = open(dir.path()).await;
    let partition = log.partition(&name, PartitionId(0)).expect("p");
    assert_eq!(
        (partition.log_start(), partition.high_watermark()),
        (Offset(1000), Offset(1003))
    );
    let records = read_all(&partition, Offset(1000)).expect("read");
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![Offset(1000), Offset(1001), Offset(1002)]
    );
    let next = log
        .append(&name, PartitionId(0), batch_of(&values(3, 1), 1000))
        .await
        .expect("append");
    assert_eq!(next.base_offset, Offset(1003));
    log.close().await.expect("close");
}

#[tokio::test]
async fn recovery_finishes_a_restart_that_a_crash_interrupted_after_its_start_was_written() {
    for new_segment_created in [false, true] {
        let dir = written_topic(small_segments(1), 30, 5).await;
        let partition_dir = partition_dir(dir.path(), "t", 0);
        partition::write_log_start(&partition_dir, Offset(1000)).expect("log start");
        if new_segment_created {
            std::fs::File::create(segment::log_path(&partition_dir, Offset(1000)))
                .expect("new segment");
        }
        let log = open(dir.path()).await;
        let partition = log.partition(&topic("t"), PartitionId(0)).expect("p");
        assert_eq!(
            (partition.log_start(), partition.high_watermark()),
            (Offset(1000), Offset(1000)),
            "new segment created: {new_segment_created}"
        );
        assert_eq!(segment_bases(dir.path(), "t"), vec![Offset(1000)]);
        partition
            .append_at_own_offset(batch_at(&values(0, 2), Offset(1000)))
            .await
            .expect("append at the new start");
        log.close().await.expect("close");
    }
}

#[tokio::test]
async fn recovery_does_not_guess_a_restart_from_the_segments_alone() {
    // An empty segment after a gap, with no log start saying a restart happened, is what a
    // lost segment file looks like too: refused, nothing deleted.
    let dir = written_topic(small_segments(1), 30, 5).await;
    let partition_dir = partition_dir(dir.path(), "t", 0);
    std::fs::File::create(segment::log_path(&partition_dir, Offset(1000))).expect("segment");
    let bases = segment_bases(dir.path(), "t");
    let log = open(dir.path()).await;
    let err = log
        .partition(&topic("t"), PartitionId(0))
        .expect_err("refused");
    assert!(err.to_string().contains("segments do not follow"), "{err}");
    log.close().await.expect("close");
    drop(log);
    assert_eq!(segment_bases(dir.path(), "t"), bases);

    // A damaged log start is refused too, with what to do about it.
    std::fs::remove_file(segment::log_path(&partition_dir, Offset(1000))).expect("remove");
    std::fs::write(partition_dir.join("log-start"), b"garbage").expect("write");
    let log = open(dir.path()).await;
    let err = log
        .partition(&topic("t"), PartitionId(0))
        .expect_err("refused");
    assert!(
        err.to_string().contains("log start file fails its check"),
        "{err}"
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn mirror_topics_take_only_batches_at_their_own_offsets_until_promoted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = topic("plant-7.temps");
    {
        let log = open(dir.path()).await;
        log.create_mirror_topic(name.clone(), small_segments(1), "edge plant-7".into())
            .await
            .expect("create");
        assert_eq!(log.mirror_of(&name).as_deref(), Some("edge plant-7"));
        assert_eq!(
            log.topic_info(&name).expect("info").mirror_of.as_deref(),
            Some("edge plant-7")
        );
        let err = log
            .append(&name, PartitionId(0), batch_of(&values(0, 1), 1000))
            .await
            .expect_err("read-only");
        assert!(matches!(err, LogError::ReadOnlyMirror { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "topic plant-7.temps is a mirror of edge plant-7, written only by its link; run \
             `appliance link promote plant-7.temps` on this appliance to make it writable"
        );
        let partition = log.partition(&name, PartitionId(0)).expect("p");
        assert!(matches!(
            partition.submit(batch_of(&values(0, 1), 1000)).await,
            Err(LogError::ReadOnlyMirror { .. })
        ));
        for base in [0, 5] {
            partition
                .append_at_own_offset(batch_at(&values(base, 5), Offset(base as u64)))
                .await
                .expect("the link writes a mirror");
        }

        log.update_topic_config(&name, small_segments(2))
            .await
            .expect("grow");
        assert_eq!(log.mirror_of(&name).as_deref(), Some("edge plant-7"));
        let err = log
            .append(&name, PartitionId(1), batch_of(&values(0, 1), 1000))
            .await
            .expect_err("a new partition of a mirror is read-only too");
        assert!(matches!(err, LogError::ReadOnlyMirror { .. }), "{err}");
        log.close().await.expect("close");
    }
    {
        let log = open(dir.path()).await;
        assert_eq!(log.mirror_of(&name).as_deref(), Some("edge plant-7"));
        let err = log
            .append(&name, PartitionId(0), batch_of(&values(0, 1), 1000))
            .await
            .expect_err("still read-only after a restart");
        assert!(matches!(err, LogError::ReadOnlyMirror { .. }), "{err}");
        log.partition(&name, PartitionId(0))
            .expect("p")
            .append_at_own_offset(batch_at(&values(10, 5), Offset(10)))
            .await
            .expect("the link continues");

        log.promote(&name).await.expect("promote");
        assert_eq!(log.mirror_of(&name), None);
        let outcome = log
            .append(&name, PartitionId(0), batch_of(&values(15, 5), 1000))
            .await
            .expect("writable");
        assert_eq!(
            outcome.base_offset,
            Offset(15),
            "offsets continue at the end"
        );
        let err = log.promote(&name).await.expect_err("promoted already");
        assert!(matches!(err, LogError::NotAMirror { .. }), "{err}");
        assert!(err.to_string().contains("is not a mirror"), "{err}");
        log.close().await.expect("close");
    }
    let log = open(dir.path()).await;
    assert_eq!(log.topic_info(&name).expect("info").mirror_of, None);
    let outcome = log
        .append(&name, PartitionId(0), batch_of(&values(20, 1), 1000))
        .await
        .expect("still writable after a restart");
    assert_eq!(outcome.base_offset, Offset(20));

    let other = topic("hub.orders");
    log.create_mirror_topic(other.clone(), small_segments(1), "the hub".into())
        .await
        .expect("create");
    log.delete_topic(&other)
        .await
        .expect("a mirror can be deleted");
    assert!(log.list_topics().iter().all(|t| t.name != other));
    log.close().await.expect("close");
}

#[tokio::test]
async fn topics_stored_before_mirrors_existed_still_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = open_meta(dir.path());
    // Exactly what earlier versions stored: the bare settings.
    meta.put_topic("old", &small_segments(2))
        .await
        .expect("store");
    let log = Log::open(log_config(dir.path(), Durability::Fsync), meta)
        .await
        .expect("log opens");
    let info = log.topic_info(&topic("old")).expect("info");
    assert_eq!((info.config, info.mirror_of), (small_segments(2), None));
    log.append(&topic("old"), PartitionId(1), batch_of(&values(0, 1), 1000))
        .await
        .expect("writable");
    log.close().await.expect("close");
}

#[tokio::test]
async fn at_the_budget_delete_oldest_makes_room_from_the_oldest_segments_of_deleting_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta_dir = tempfile::tempdir().expect("tempdir");
    let max = 48 * 1024;
    let config = LogConfig {
        max_disk_bytes: Some(max),
        budget_policy: BudgetPolicy::DeleteOldest,
        ..log_config(dir.path(), Durability::Fsync)
    };
    let log = Log::open(config, open_meta(meta_dir.path()))
        .await
        .expect("log opens");
    let table = TopicConfig {
        cleanup_policy: CleanupPolicy::Compact,
        ..small_segments(1)
    };
    for (name, config) in [
        ("table", table),
        ("old", small_segments(1)),
        ("new", small_segments(1)),
    ] {
        log.create_topic(topic(name), config).await.expect("create");
    }
    let names = ["table", "old", "new"].map(topic);
    let append = |name: usize, from: usize, timestamp: i64| {
        log.append(
            &names[name],
            PartitionId(0),
            batch_of(&values(from, 20), timestamp),
        )
    };
    // Oldest first: the table, then `old`, whose head a link has not sent yet.
    for b in 0..20 {
        append(0, b * 20, 500).await.expect("table appends");
    }
    for b in 0..40 {
        append(1, b * 20, 1000 + b as i64)
            .await
            .expect("old appends");
    }
    log.set_retention_hold(&topic("old"), PartitionId(0), "link", Offset(0), u64::MAX)
        .expect("hold");

    // Far more than the budget: every append fits, made room for by deleting.
    for b in 0..200 {
        append(2, b * 20, 10_000 + b as i64)
            .await
            .expect("appends go on past the budget");
    }
    let budget = log.disk_budget();
    assert!(budget.evicted_segments() > 0);
    budget.measure();
    assert!(budget.used() <= max, "{} of {max}", budget.used());

    let start = |name: &str| {
        log.partition(&topic(name), PartitionId(0))
            .expect("partition")
            .log_start()
    };
    assert_eq!(
        start("table"),
        Offset(0),
        "a compacted topic keeps its segments"
    );
    assert!(start("old") > Offset(0), "the hold does not keep them");
    assert!(start("new") > Offset(0));
    // What is left reads back whole, up to the last acknowledged record.
    let new = log.partition(&topic("new"), PartitionId(0)).expect("new");
    let kept = read_all(&new, new.log_start()).expect("reads");
    assert_eq!(kept.last().map(|r| r.offset), Some(Offset(3999)));
    assert_eq!(kept.len() as u64, 4000 - new.log_start().0);
    log.close().await.expect("close");
}
