//! Windowed aggregation (`window-aggregate`) on real `appliance run` processes: a pipeline
//! downsamples known readings, out of order and with late ones, to per-device, per-minute
//! count/avg/min/max; the results are exactly what this test computes, each window once
//! through three SIGKILLs; the late readings are in the side topic, and a device whose clock
//! is an hour fast lands there too without closing anyone's window. Snapshots of the state
//! are taken every 200 ms, so the restarts restore from a snapshot and the changelog after it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use appliance_e2e::cluster::cli_json;
use appliance_e2e::{Channel, Daemon, cli_ok, fetch_topic, wait_pipeline_caught_up};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use nix::sys::signal::Signal;

const DEVICES: u64 = 24;
const MINUTES: u64 = 24;
const READINGS_PER_MINUTE: u64 = 6;
const MINUTE_MS: i64 = 60_000;
const PARTITIONS: u32 = 3;
/// Phases produced between SIGKILLs.
const PHASES_PER_RUN: u64 = MINUTES / 4;

/// The window of one device and minute: (count, sum, min, max) of its temperatures.
type Expected = BTreeMap<(String, i64), (u64, i64, i64, i64)>;

fn device(n: u64) -> String {
    format!("dev-{n:02}")
}

/// The temperature of reading `i` of `device` in `minute`: whole degrees, so sums are exact.
fn temperature(device: u64, minute: u64, i: u64) -> i64 {
    ((device * 7 + minute * 3 + i * 5) % 40) as i64 - 5
}

/// A small deterministic shuffle (the test must not depend on a random seed to reproduce).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (state >> 33) as usize % (i + 1));
    }
}

struct Reading {
    device: String,
    ts: i64,
    temp: i64,
}

/// Phase `minute`: every device's readings of that minute in shuffled order, the first reading
/// of each device held back to the end (out of order, within the grace); then from the third
/// minute on, a reading of three devices from two minutes before (late: its window closed).
fn phase(base: i64, minute: u64, expected: &mut Expected, late: &mut Vec<String>) -> Vec<Reading> {
    let mut on_time = Vec::new();
    let mut held_back = Vec::new();
    for d in 0..DEVICES {
        for i in 0..READINGS_PER_MINUTE {
            let ts = base
                + minute as i64 * MINUTE_MS
                + (i * 10_000) as i64
                + ((d * 13 + i * 7) % 10_000) as i64;
            let temp = temperature(d, minute, i);
            let window = base + minute as i64 * MINUTE_MS;
            let entry = expected
                .entry((device(d), window))
                .or_insert((0, 0, i64::MAX, i64::MIN));
            entry.0 += 1;
            entry.1 += temp;
            entry.2 = entry.2.min(temp);
            entry.3 = entry.3.max(temp);
            let reading = Reading {
                device: device(d),
                ts,
                temp,
            };
            if i == 0 {
                held_back.push(reading);
            } else {
                on_time.push(reading);
            }
        }
    }
    shuffle(&mut on_time, minute);
    on_time.extend(held_back);
    if minute >= 2 {
        for d in [
            minute % DEVICES,
            (minute * 5) % DEVICES,
            (minute * 11) % DEVICES,
        ] {
            let ts = base + (minute as i64 - 2) * MINUTE_MS + 30_000 + d as i64;
            late.push(format!("{}@{ts}", device(d)));
            on_time.push(Reading {
                device: device(d),
                ts,
                temp: 1000,
            });
        }
    }
    on_time
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Produces readings keyed by device (partitioned by key) to `readings`, with the device
/// `fast` whose clock is an hour ahead interleaved every 50 readings.
async fn produce(
    channel: &Channel,
    readings: &[Reading],
    fast: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut records = Vec::new();
    for (n, reading) in readings.iter().enumerate() {
        records.push(record(&reading.device, reading.ts, reading.temp));
        if n % 50 == 0 {
            let ts = now_ms() + 3_600_000;
            fast.push(format!("fast@{ts}"));
            records.push(record("fast", ts, 20));
        }
    }
    produce_to(channel, "readings", records).await
}

async fn produce_to(
    channel: &Channel,
    topic: &str,
    records: Vec<pb::Record>,
) -> anyhow::Result<()> {
    for chunk in records.chunks(500) {
        RecordsClient::new(channel.clone())
            .produce(pb::ProduceRequest {
                topic: topic.into(),
                partition: None,
                records: chunk.to_vec(),
            })
            .await?;
    }
    Ok(())
}

fn record(device: &str, ts: i64, temp: i64) -> pb::Record {
    pb::Record {
        key: Some(device.as_bytes().to_vec().into()),
        value: Some(
            format!(r#"{{"ts":{ts},"temp":{temp}}}"#)
                .into_bytes()
                .into(),
        ),
        headers: Vec::new(),
        // The appliance stamps the time it received the reading: the gateway's clock.
        timestamp_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downsampling_counts_every_window_once_through_sigkills() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let mut daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: "readings".into(),
            config: Some(pb::TopicConfig {
                partitions: Some(PARTITIONS),
                ..Default::default()
            }),
        })
        .await?;
    let window = "window-aggregate:window=tumbling,size=1m,grace=10s,time-field=ts,\
                  aggregates=count;avg(temp);min(temp);max(temp),late-topic=readings.late,\
                  snapshot-interval=200ms";
    let missing_grace = daemon.cli(
        root,
        &[
            "pipeline",
            "create",
            "nograce",
            "--from",
            "readings",
            "--to",
            "x",
            "--transform",
            "window-aggregate:window=tumbling,size=1m,aggregates=count,late-topic=l",
        ],
        b"",
    )?;
    let said = String::from_utf8_lossy(&missing_grace.stderr);
    assert!(
        !missing_grace.status.success() && said.contains("`grace` is required"),
        "{said}"
    );
    cli_ok(
        &daemon,
        root,
        &[
            "pipeline",
            "create",
            "downsample",
            "--from",
            "readings",
            "--to",
            "readings.1m",
            "--transform",
            window,
        ],
        b"",
    )?;
    let described = cli_json(
        &daemon,
        root,
        &["topic", "describe", "downsample.window.changelog", "--json"],
    )?;
    assert_eq!(
        described["config"]["cleanup_policy"], "compact",
        "{described}"
    );

    let base = (now_ms() / MINUTE_MS - 2 * MINUTES as i64) * MINUTE_MS;
    let mut expected = Expected::new();
    let mut late = Vec::new();
    let mut fast = Vec::new();
    for minute in 0..MINUTES {
        let readings = phase(base, minute, &mut expected, &mut late);
        produce(&daemon.channel().await?, &readings, &mut fast).await?;
        if minute % PHASES_PER_RUN == PHASES_PER_RUN - 1 && minute + 1 < MINUTES {
            let kill = minute / PHASES_PER_RUN;
            // The first and last kills come once the pipeline has caught up, with windows
            // open that only the changelog holds then; the second right after producing,
            // while the pipeline is at work.
            if kill != 1 {
                wait_pipeline_caught_up(&daemon.channel().await?, "downsample", PARTITIONS).await?;
                // Long enough for a snapshot (every 200 ms) of the caught-up state.
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            daemon.stop_with(Signal::SIGKILL)?;
            daemon = Daemon::start_on_free_ports(root, &[])?;
        }
    }
    // A last reading per device two minutes on closes every window of the run.
    let flush: Vec<Reading> = (0..DEVICES)
        .map(|d| Reading {
            device: device(d),
            ts: base + (MINUTES as i64 + 2) * MINUTE_MS,
            temp: 0,
        })
        .collect();
    let restored = daemon.log_text();
    assert!(
        restored.contains("state restored") && restored.contains("from_snapshot=true"),
        "the last start did not restore from a snapshot:\n{restored}"
    );
    let channel = daemon.channel().await?;
    produce(&channel, &flush, &mut fast).await?;
    wait_pipeline_caught_up(&channel, "downsample", PARTITIONS).await?;

    let mut results: BTreeMap<(String, i64), Vec<serde_json::Value>> = BTreeMap::new();
    for record in fetch_topic(&channel, "readings.1m").await? {
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().context("value")?)?;
        let device = String::from_utf8(record.key.context("key")?.to_vec())?;
        let start = value["window_start"].as_i64().context("window_start")?;
        results.entry((device, start)).or_default().push(value);
    }
    let duplicated: Vec<_> = results.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "windows counted twice: {duplicated:?}"
    );
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !results.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "windows never emitted: {missing:?}");
    assert_eq!(
        results.len(),
        expected.len(),
        "windows nobody wrote a reading for"
    );
    for (window, (count, sum, min, max)) in &expected {
        let got = &results[window][0];
        let want_avg = *sum as f64 / *count as f64;
        assert!(
            got["count"] == *count
                && (got["avg_temp"].as_f64().unwrap_or(f64::NAN) - want_avg).abs() < 1e-9
                && got["min_temp"].as_f64() == Some(*min as f64)
                && got["max_temp"].as_f64() == Some(*max as f64)
                && got["window_end"] == window.1 + MINUTE_MS,
            "window {window:?}: got {got}, want count {count} avg {want_avg} min {min} max {max}"
        );
    }

    let mut side: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in fetch_topic(&channel, "readings.late").await? {
        let why = record
            .headers
            .iter()
            .find(|h| h.key == "appliance.window.late")
            .and_then(|h| h.value.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .context("the late header")?;
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().context("value")?)?;
        let device = String::from_utf8(record.key.context("key")?.to_vec())?;
        side.entry(why)
            .or_default()
            .push(format!("{device}@{}", value["ts"]));
    }
    for list in [&mut late, &mut fast] {
        list.sort();
    }
    for list in side.values_mut() {
        list.sort();
    }
    assert_eq!(side.get("late"), Some(&late), "every late reading, once");
    assert_eq!(
        side.get("future"),
        Some(&fast),
        "every reading of the fast device, once"
    );
    eprintln!(
        "{} windows exact through 3 SIGKILLs; {} late and {} future readings in the side topic",
        expected.len(),
        late.len(),
        fast.len()
    );
    Ok(())
}

/// Counts of the window results in `topic`, as (key, window start) -> count.
async fn window_counts(
    channel: &Channel,
    topic: &str,
) -> anyhow::Result<BTreeMap<(String, i64), Vec<u64>>> {
    let mut counts: BTreeMap<(String, i64), Vec<u64>> = BTreeMap::new();
    for record in fetch_topic(channel, topic).await? {
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().context("value")?)?;
        let key = String::from_utf8(record.key.context("key")?.to_vec())?;
        let start = value["window_start"].as_i64().context("window_start")?;
        counts
            .entry((key, start))
            .or_default()
            .push(value["count"].as_u64().context("count")?);
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_partition_closes_its_windows_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    cli_ok(&daemon, root, &["topic", "create", "quiet"], b"")?;
    cli_ok(
        &daemon,
        root,
        &[
            "pipeline",
            "create",
            "idle",
            "--from",
            "quiet",
            "--to",
            "quiet.2s",
            "--transform",
            "window-aggregate:window=tumbling,size=2s,grace=0s,aggregates=count,\
             late-topic=quiet.late,idle-advance=1s",
        ],
        b"",
    )?;
    let channel = daemon.channel().await?;
    let records = (0..10).map(|n| record("dev", 0, n)).collect();
    produce_to(&channel, "quiet", records).await?;
    // No more readings: the windows close by the idle advance alone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let counts = window_counts(&channel, "quiet.2s").await?;
        let total: u64 = counts.values().flatten().sum();
        if total >= 10 {
            break counts;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no window closed while idle: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(counts.values().all(|c| c.len() == 1), "{counts:?}");
    assert_eq!(counts.values().flatten().sum::<u64>(), 10, "{counts:?}");
    // A restart neither closes them again nor loses them.
    daemon.stop_with(Signal::SIGKILL)?;
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(window_counts(&channel, "quiet.2s").await?, counts);
    Ok(())
}
