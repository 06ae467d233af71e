//! A real `appliance run` process whose data directory's disk (a small tmpfs) fills up: it
//! starts anyway on the space its disk reserve held back, serves what it stored, refuses
//! writes with RESOURCE_EXHAUSTED saying the disk is full, deletes topics, and takes writes
//! again once there is room, without a restart (segment rolls and index writes that failed
//! for want of space are tried again, the metadata store is reopened). And the same for a
//! data directory at its budget (`log.max-disk-bytes`) on a disk with room; with the
//! `delete-oldest` policy, an edge whose hub is down keeps taking records within its budget,
//! and its link reports the records it deleted unsent as a gap once the hub is back.

use anyhow::{Context, ensure};
use appliance_e2e::Channel;
use appliance_e2e::cluster::{hub_edge, positions, status_partitions, wait_mirrored};
use appliance_e2e::{
    Daemon, Deadline, Deployment, SmallDisk, cli_ok, fetch_all, fetch_from, start_in_runtime,
};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use nix::sys::signal::Signal;
use tonic::Code;

/// Small segments, so that filling the disk rolls them (and writes their index files).
const SEGMENT_BYTES: u64 = 256 * 1024;

async fn create_topic(channel: &Channel, name: &str) -> anyhow::Result<()> {
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            config: Some(pb::TopicConfig {
                partitions: Some(1),
                segment_bytes: Some(SEGMENT_BYTES),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

async fn update_retention(channel: &Channel, topic: &str, ms: i64) -> Result<(), tonic::Status> {
    TopicsClient::new(channel.clone())
        .update_topic_config(pb::UpdateTopicConfigRequest {
            name: topic.into(),
            config: Some(pb::TopicConfig {
                retention_ms: Some(ms),
                ..Default::default()
            }),
        })
        .await
        .map(drop)
}

/// Produces one batch of 64 records of 1 KiB; the status if it was refused.
async fn produce_batch(channel: &Channel, topic: &str, n: u64) -> Result<(), tonic::Status> {
    let records = (0..64)
        .map(|i| pb::Record {
            value: Some(format!("{n}-{i}-{}", "x".repeat(1024)).into_bytes().into()),
            ..Default::default()
        })
        .collect();
    RecordsClient::new(channel.clone())
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            partition: Some(0),
            records,
        })
        .await
        .map(drop)
}

/// Produces batches until one is refused; how many were acknowledged, and the refusal.
async fn produce_until_refused(
    channel: &Channel,
    topic: &str,
) -> anyhow::Result<(u64, tonic::Status)> {
    for n in 0..100_000 {
        if let Err(status) = produce_batch(channel, topic, n).await {
            return Ok((n, status));
        }
    }
    anyhow::bail!("the disk never filled up")
}

fn start(dir: &std::path::Path, data: &std::path::Path) -> anyhow::Result<Daemon> {
    start_with(dir, data, "[log]\ndisk-reserve-mb = 8\n")
}

fn start_with(dir: &std::path::Path, data: &std::path::Path, toml: &str) -> anyhow::Result<Daemon> {
    let config = dir.join("appliance.toml");
    std::fs::write(&config, toml)?;
    tokio::task::block_in_place(|| {
        Daemon::start_on_free_ports(
            dir,
            &[
                "--config",
                config.to_str().context("utf-8 path")?,
                "--data-dir",
                data.to_str().context("utf-8 path")?,
            ],
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_but_not_the_start_reads_or_deletes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(disk) = SmallDisk::mount(&dir.path().join("data"), 48) else {
        eprintln!("no tmpfs could be mounted (not root?): the full-disk test needs one; skipped");
        return Ok(());
    };

    let daemon = start(dir.path(), disk.path())?;
    let channel = daemon.channel().await?;
    create_topic(&channel, "readings").await?;
    create_topic(&channel, "bulk").await?;
    for n in 0..40 {
        produce_batch(&channel, "readings", n).await?;
        produce_batch(&channel, "bulk", n).await?;
    }
    daemon.stop_with(Signal::SIGTERM)?;

    // Full to the last block: without the reserve, the metadata store cannot open.
    let filler = disk.fill()?;
    let daemon = start(dir.path(), disk.path())?;
    ensure!(
        daemon.log_text().contains("released the disk reserve"),
        "{}",
        daemon.log_text()
    );
    let channel = daemon.channel().await?;
    let stored = fetch_all(&channel, "readings", 0).await?;
    ensure!(
        stored.len() == 40 * 64,
        "{} records read back",
        stored.len()
    );

    // Writes take what the reserve freed, then are refused saying why.
    let (accepted, refusal) = produce_until_refused(&channel, "readings").await?;
    ensure!(refusal.code() == Code::ResourceExhausted, "{refusal:?}");
    ensure!(refusal.message().contains("disk is full"), "{refusal:?}");
    let stored = fetch_all(&channel, "readings", 0).await?;
    ensure!(
        stored.len() as u64 == (40 + accepted) * 64,
        "{} records stored, {} acknowledged",
        stored.len(),
        (40 + accepted) * 64
    );

    // A change of metadata is refused the same way, and is taken once there is room again
    // (the metadata store stops after its failed write; it is reopened, not left broken).
    // (The store's last page may still hold a few changes.)
    let mut refused = None;
    for n in 0..10_000 {
        if let Err(status) = update_retention(&channel, "readings", 3_600_000 + n).await {
            refused = Some(status);
            break;
        }
    }
    let refusal = refused.context("topic config changes on a full disk were never refused")?;
    ensure!(refusal.code() == Code::ResourceExhausted, "{refusal:?}");
    ensure!(refusal.message().contains("disk is full"), "{refusal:?}");

    // Deleting works on a full disk, and once there is room again the same partition takes
    // writes (its failed segment roll is tried again), with no restart.
    TopicsClient::new(channel.clone())
        .delete_topic(pb::DeleteTopicRequest {
            name: "bulk".into(),
        })
        .await
        .context("deleting a topic on a full disk")?;
    std::fs::remove_file(filler)?;
    for n in 0..40 {
        produce_batch(&channel, "readings", 1_000_000 + n)
            .await
            .context("producing once there is room")?;
    }
    let stored = fetch_all(&channel, "readings", 0).await?;
    ensure!(stored.len() as u64 == (80 + accepted) * 64);
    update_retention(&channel, "readings", 7_200_000)
        .await
        .context("changing a topic's config once there is room")?;
    create_topic(&channel, "later")
        .await
        .context("creating a topic once there is room")?;

    // What was changed after the disk filled is still there after a restart.
    daemon.stop_with(Signal::SIGKILL)?;
    let daemon = start(dir.path(), disk.path())?;
    let channel = daemon.channel().await?;
    let topics = TopicsClient::new(channel.clone())
        .list_topics(pb::ListTopicsRequest::default())
        .await?
        .into_inner()
        .topics;
    let readings = topics
        .iter()
        .find(|topic| topic.name == "readings")
        .context("readings survived")?;
    let retention = readings
        .config
        .as_ref()
        .and_then(|config| config.retention_ms);
    ensure!(retention == Some(7_200_000), "{readings:?}");
    ensure!(
        topics.iter().any(|topic| topic.name == "later"),
        "{topics:?}"
    );
    ensure!(
        !topics.iter().any(|topic| topic.name == "bulk"),
        "{topics:?}"
    );
    Ok(())
}

/// The budget of the budget test: 24 MiB.
const BUDGET: u64 = 24 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_at_its_budget_refuses_appends_naming_it_until_there_is_room()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let toml = format!("[log]\ndisk-reserve-mb = 8\nmax-disk-bytes = {BUDGET}\n");
    let daemon = start_with(dir.path(), &data, &toml)?;
    let channel = daemon.channel().await?;
    create_topic(&channel, "readings").await?;
    create_topic(&channel, "bulk").await?;
    for n in 0..10 {
        produce_batch(&channel, "readings", n).await?;
    }

    let (accepted, refusal) = produce_until_refused(&channel, "bulk").await?;
    ensure!(refusal.code() == Code::ResourceExhausted, "{refusal:?}");
    ensure!(
        refusal.message().contains("log.max-disk-bytes")
            && refusal.message().contains(&BUDGET.to_string()),
        "{refusal:?}"
    );
    ensure!(accepted > 100, "only {accepted} batches before the budget");
    let stored = fetch_all(&channel, "bulk", 0).await?;
    ensure!(
        stored.len() as u64 == accepted * 64,
        "{} records stored, {} acknowledged",
        stored.len(),
        accepted * 64
    );
    let metrics = daemon.scrape_metrics().await?;
    ensure!(
        metrics.contains(&format!("appliance_disk_budget_bytes {BUDGET}")),
        "{metrics}"
    );
    let used: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("appliance_disk_used_bytes "))
        .context("appliance_disk_used_bytes")?
        .trim()
        .parse()?;
    ensure!(
        used <= BUDGET && used > BUDGET / 2,
        "{used} bytes used of {BUDGET}"
    );
    ensure!(
        produce_batch(&channel, "readings", 100).await.is_err(),
        "every topic is under the one budget"
    );
    let screen = daemon.cli(dir.path(), &["status"], b"")?;
    let screen = String::from_utf8(screen.stdout)?;
    ensure!(
        screen.contains("of a 24.0 MiB budget") && screen.contains("topics   3 (3 partitions"),
        "{screen}"
    );

    // The delete that makes room is acknowledged (its audit record is outside the budget),
    // and the next append sees the room, with no restart.
    TopicsClient::new(channel.clone())
        .delete_topic(pb::DeleteTopicRequest {
            name: "bulk".into(),
        })
        .await
        .context("deleting a topic at the budget")?;
    for n in 0..10 {
        produce_batch(&channel, "readings", 1_000 + n)
            .await
            .context("producing once there is room")?;
    }

    // A start measures the directory again: what was there is, and the budget holds.
    daemon.stop_with(Signal::SIGKILL)?;
    let daemon = start_with(dir.path(), &data, &toml)?;
    let channel = daemon.channel().await?;
    let stored = fetch_all(&channel, "readings", 0).await?;
    ensure!(
        stored.len() == 20 * 64,
        "{} records read back",
        stored.len()
    );
    let (_, refusal) = produce_until_refused(&channel, "readings").await?;
    ensure!(refusal.code() == Code::ResourceExhausted, "{refusal:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_budget_delete_oldest_takes_records_and_a_lagging_link_reports_the_gap()
-> anyhow::Result<()> {
    let deployment = Deployment::new(&["edge-1"])?;
    let root = deployment.root();
    std::fs::write(
        root.join("edge.toml"),
        format!(
            "[log]\ndisk-reserve-mb = 8\nmax-disk-bytes = {BUDGET}\n\
             disk-budget-policy = \"delete-oldest\"\n\
             [topics.sensors]\npartitions = 1\nsegment-bytes = {SEGMENT_BYTES}\n"
        ),
    )?;
    let args = ["--config", "edge.toml", "--data-dir", "edge-1-data"].map(String::from);
    let edge = start_in_runtime(root, &args)?;
    let channel = edge.channel().await?;
    // Linked to a hub that is not up yet: the link's retention hold asks to keep everything.
    deployment.link(&edge, "edge-1", &deployment.hub_addr(), &[])?;

    // Twice the budget, every batch acknowledged.
    let batches = 2 * BUDGET / (64 * 1024);
    for n in 0..batches {
        produce_batch(&channel, "sensors", n)
            .await
            .with_context(|| format!("batch {n} at the budget with delete-oldest"))?;
    }
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&edge, root, &["status", "--json"], b"")?)?;
    let disk = &status["disk"];
    ensure!(disk["budget_policy"] == "delete-oldest", "{status:#}");
    ensure!(disk["evicted_segments"].as_u64() > Some(0), "{status:#}");
    ensure!(disk["used_bytes"].as_u64() <= Some(BUDGET), "{status:#}");
    let metrics = edge.scrape_metrics().await?;
    ensure!(
        !metrics.contains("appliance_disk_evicted_segments_total 0\n"),
        "{metrics}"
    );
    let (log_start, end) = positions(&channel, "sensors").await?.context("sensors")?[0];
    ensure!(end == batches * 64 && log_start > 0, "{log_start}..{end}");
    let kept = fetch_from(&channel, "sensors", 0, log_start).await?;
    ensure!(
        kept.len() as u64 == end - log_start,
        "{} records from the log start {log_start} to {end}",
        kept.len()
    );

    // The hub comes up: the mirror starts at the edge's log start, and the hub shows the
    // deleted records as the partition's gap.
    let hub = deployment.start_hub()?;
    let hub_channel = hub.channel().await?;
    wait_mirrored(&channel, "sensors", &hub_channel, "edge-1.sensors").await?;
    let deadline = Deadline::new("the hub reporting the gap");
    loop {
        let seen = hub_edge(&hub, root, "edge-1")?;
        let gap = seen.as_ref().and_then(|seen| {
            status_partitions(seen, "up", "sensors")
                .first()
                .and_then(|partition| partition["gap_records"].as_u64())
        });
        if gap == Some(log_start) {
            break;
        }
        deadline.pause(seen).await?;
    }
    Ok(())
}
