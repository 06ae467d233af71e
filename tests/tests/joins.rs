//! Stream-table joins (`table-join`) on a real `appliance run` process: readings enriched
//! with device metadata from a compacted topic, the enrichment following a change of the
//! metadata, a table with another partition count refused with what to do, and a global
//! join on a field over every partition of a table.

use std::time::Duration;

use anyhow::Context;
use appliance_e2e::{Channel, Daemon, cli_ok, fetch_all};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;

const DEVICES: usize = 10;

async fn create_topic(
    channel: &Channel,
    name: &str,
    partitions: u32,
    compacted: bool,
) -> anyhow::Result<()> {
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            config: Some(pb::TopicConfig {
                partitions: Some(partitions),
                cleanup_policy: compacted.then(|| "compact".to_owned()),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// Produces `(key, value)` records, partitioned by key.
async fn produce(
    channel: &Channel,
    topic: &str,
    records: &[(String, String)],
) -> anyhow::Result<()> {
    RecordsClient::new(channel.clone())
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            partition: None,
            records: records
                .iter()
                .map(|(key, value)| pb::Record {
                    key: Some(key.clone().into_bytes().into()),
                    value: Some(value.clone().into_bytes().into()),
                    headers: Vec::new(),
                    timestamp_ms: 0,
                })
                .collect(),
        })
        .await?;
    Ok(())
}

fn metadata(site: &str) -> Vec<(String, String)> {
    (0..DEVICES)
        .map(|d| {
            (
                format!("dev-{d}"),
                format!(r#"{{"site":"{site}","model":"m{d}"}}"#),
            )
        })
        .collect()
}

/// Readings `seq` of every device, and one of a device the table does not know.
fn readings(seq: usize) -> Vec<(String, String)> {
    (0..DEVICES)
        .map(|d| format!("dev-{d}"))
        .chain(["dev-unknown".to_owned()])
        .map(|device| {
            let value = format!(r#"{{"device":"{device}","seq":{seq},"temp":{seq}}}"#);
            (device, value)
        })
        .collect()
}

/// Every value of every partition of `topic`, parsed, once there are `count` of them.
async fn wait_values(
    channel: &Channel,
    topic: &str,
    partitions: u32,
    count: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut values = Vec::new();
        for partition in 0..partitions {
            if let Ok(records) = fetch_all(channel, topic, partition).await {
                for record in records {
                    values.push(serde_json::from_slice(
                        record.value.as_deref().context("value")?,
                    )?);
                }
            }
        }
        if values.len() >= count {
            return Ok(values);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{topic} holds {} of {count} records",
            values.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn create_pipeline(
    daemon: &Daemon,
    root: &std::path::Path,
    name: &str,
    to: &str,
    join: &str,
) -> anyhow::Result<std::process::Output> {
    daemon.cli(
        root,
        &[
            "pipeline",
            "create",
            name,
            "--from",
            "readings",
            "--to",
            to,
            "--transform",
            join,
        ],
        b"",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readings_are_enriched_from_a_table_that_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    create_topic(&channel, "readings", 2, false).await?;
    create_topic(&channel, "devices", 2, true).await?;
    create_topic(&channel, "devices3", 3, true).await?;
    create_topic(&channel, "plain", 2, false).await?;
    produce(&channel, "devices", &metadata("north")).await?;
    produce(&channel, "devices3", &metadata("east")).await?;

    let refused = create_pipeline(
        &daemon,
        root,
        "wrong",
        "x",
        "table-join:table=devices3,into=device",
    )?;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains("not co-partitioned")
            && said.contains("3 partitions")
            && said.contains("global=true"),
        "{said}"
    );
    let not_a_table =
        create_pipeline(&daemon, root, "wrong", "x", "table-join:table=plain,into=d")?;
    let said = String::from_utf8_lossy(&not_a_table.stderr);
    assert!(said.contains("not compacted"), "{said}");

    cli_ok(
        &daemon,
        root,
        &[
            "pipeline",
            "create",
            "enrich",
            "--from",
            "readings",
            "--to",
            "readings.enriched",
            "--transform",
            "table-join:table=devices,into=device",
        ],
        b"",
    )?;
    cli_ok(
        &daemon,
        root,
        &[
            "pipeline",
            "create",
            "enrich-global",
            "--from",
            "readings",
            "--to",
            "readings.global",
            "--transform",
            "table-join:table=devices3,global=true,key-field=device,into=meta,missing=drop",
        ],
        b"",
    )?;
    produce(&channel, "readings", &readings(0)).await?;
    let per_round = DEVICES + 1;
    let enriched = wait_values(&channel, "readings.enriched", 2, per_round).await?;
    // The field `device` of a reading is replaced by the table's value of its key; the
    // unknown device keeps its reading with null there (missing=null, a left join).
    for value in &enriched {
        match value["device"]["site"].as_str() {
            Some(site) => assert_eq!(site, "north", "{value}"),
            None => assert!(value["device"].is_null(), "{value}"),
        }
    }
    assert_eq!(
        enriched.iter().filter(|v| v["device"].is_null()).count(),
        1,
        "{enriched:?}"
    );

    // The metadata changes: readings after it are enriched with the new value.
    produce(&channel, "devices", &metadata("south")).await?;
    produce(&channel, "readings", &readings(1)).await?;
    let enriched = wait_values(&channel, "readings.enriched", 2, 2 * per_round).await?;
    for value in enriched.iter().filter(|v| !v["device"].is_null()) {
        let want = if value["seq"] == 0 { "north" } else { "south" };
        assert_eq!(value["device"]["site"], want, "{value}");
    }

    // The global join reads all three partitions of devices3, on the `device` field; the
    // unknown device is dropped (missing=drop).
    let global = wait_values(&channel, "readings.global", 2, 2 * DEVICES).await?;
    assert_eq!(global.len(), 2 * DEVICES, "{global:?}");
    for value in &global {
        let device = value["device"].as_str().context("device")?;
        let d = device.trim_start_matches("dev-");
        assert_eq!(value["meta"]["site"], "east", "{value}");
        assert_eq!(value["meta"]["model"], format!("m{d}"), "{value}");
    }
    Ok(())
}
