//! A full disk: the append that hits ENOSPC fails with a clear error and leaves nothing
//! behind; every acknowledged record stays readable; once there is room again the partition
//! continues at the next offset, also after a restart. Uses a small tmpfs, which needs root
//! (CI runs as root); elsewhere the test says it was skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use appliance::log::{
    Compression, Log, LogConfig, LogError, Offset, PartitionId, Record, Timestamp, TopicConfig,
    TopicName, decode_all, encode,
};
use appliance::meta::Meta;
use bytes::Bytes;

/// A tmpfs mounted for the test's lifetime.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(at.to_path_buf()))
    }

    fn resize(&self, size: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn batch(first: usize) -> bytes::BytesMut {
    let records: Vec<Record> = (first..first + 8)
        .map(|i| Record {
            key: None,
            value: Some(Bytes::from(format!("{i:04096}"))),
            headers: Vec::new(),
            timestamp: Timestamp::now(),
        })
        .collect();
    encode(&records, Compression::None).expect("encodes")
}

async fn open(data: &Path, meta: &Path) -> anyhow::Result<Log> {
    let mut config = LogConfig::new(data.to_path_buf());
    config.retention_check_interval = Duration::from_secs(3600);
    Ok(Log::open(config, Meta::open(meta)?).await?)
}

async fn read_values(log: &Log, topic: &TopicName) -> anyhow::Result<Vec<String>> {
    let partition = log.partition(topic, PartitionId(0))?;
    let mut offset = Offset(0);
    let mut values = Vec::new();
    while offset < partition.high_watermark() {
        let chunk = partition.read(offset, 64 * 1024)?;
        for record in decode_all(chunk.batches)? {
            values.push(String::from_utf8(
                record.record.value.unwrap_or_default().to_vec(),
            )?);
        }
        offset = chunk.next_offset;
    }
    Ok(values)
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_keeps_everything_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(disk) = SmallDisk::mount(&dir.path().join("data"), "1m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return Ok(());
    };
    let meta_dir = dir.path().join("meta");
    let topic = TopicName::new("full")?;
    let log = open(&disk.0, &meta_dir).await?;
    log.create_topic(
        topic.clone(),
        TopicConfig {
            max_message_bytes: 64 * 1024,
            ..TopicConfig::default()
        },
    )
    .await?;

    let mut acknowledged = 0;
    let error = loop {
        match log
            .append(&topic, PartitionId(0), batch(acknowledged))
            .await
        {
            Ok(outcome) => {
                assert_eq!(outcome.base_offset, Offset(acknowledged as u64));
                acknowledged += 8;
            }
            Err(error) => break error,
        }
        anyhow::ensure!(acknowledged < 10_000, "the 1 MiB disk never filled up");
    };
    assert!(matches!(error, LogError::AppendFailed { .. }), "{error}");
    assert!(
        error.to_string().contains("No space left on device"),
        "{error}"
    );
    assert!(acknowledged > 0);

    let partition = log.partition(&topic, PartitionId(0))?;
    assert_eq!(partition.high_watermark(), Offset(acknowledged as u64));
    let expected: Vec<String> = (0..acknowledged).map(|i| format!("{i:04096}")).collect();
    assert_eq!(
        read_values(&log, &topic).await?,
        expected,
        "every acknowledged record"
    );

    // Room again: the partition goes on at the next offset, with nothing torn in between.
    assert!(disk.resize("8m"), "remount with more room");
    let next = log
        .append(&topic, PartitionId(0), batch(acknowledged))
        .await?;
    assert_eq!(next.base_offset, Offset(acknowledged as u64));
    log.close().await?;
    drop(log);

    let log = open(&disk.0, &meta_dir).await?;
    let values = read_values(&log, &topic).await?;
    assert_eq!(values.len(), acknowledged + 8);
    assert_eq!(values[..acknowledged], expected[..]);
    log.close().await?;
    Ok(())
}
