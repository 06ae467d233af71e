//! Plugins and pipelines against a real `appliance run` process, over gRPC and the CLI: a
//! plugin built from plugins/ transforming 100,000 records, misbehaving plugins contained to
//! their own pipeline, SIGKILL in the middle of a pipeline without a duplicate or a gap, and
//! the errors an operator gets for an invalid component or a rejected configuration.

use std::time::Duration;

use anyhow::Context;
use appliance_e2e::Channel;
use appliance_e2e::{Daemon, fetch_all, plugin_wasm};
use appliance_proto::v1 as pb;
use appliance_proto::v1::pipelines_client::PipelinesClient;
use appliance_proto::v1::plugins_client::PluginsClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use nix::sys::signal::Signal;
use tonic::Code;

async fn create_topic(channel: &Channel, name: &str) -> anyhow::Result<()> {
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            config: None,
        })
        .await?;
    Ok(())
}

/// Produces `{"n":N,"name":"sensor-N"}` for N in `range`, to partition 0.
async fn produce(
    channel: &Channel,
    topic: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let requests: Vec<pb::ProduceRequest> = range
        .collect::<Vec<_>>()
        .chunks(2000)
        .map(|chunk| pb::ProduceRequest {
            topic: topic.into(),
            partition: Some(0),
            records: chunk
                .iter()
                .map(|n| pb::Record {
                    key: None,
                    value: Some(
                        format!(r#"{{"n":{n},"name":"sensor-{n}"}}"#)
                            .into_bytes()
                            .into(),
                    ),
                    headers: vec![],
                    timestamp_ms: 0,
                })
                .collect(),
        })
        .collect();
    let count = requests.iter().map(|r| r.records.len() as u64).sum::<u64>();
    let response = RecordsClient::new(channel.clone())
        .produce_stream(tokio_stream::iter(requests))
        .await?
        .into_inner();
    anyhow::ensure!(response.records == count, "{response:?}");
    Ok(())
}

/// Every value of partition 0 of `topic`.
async fn values(channel: &Channel, topic: &str) -> anyhow::Result<Vec<String>> {
    fetch_all(channel, topic, 0)
        .await?
        .into_iter()
        .map(|r| Ok(String::from_utf8(r.value.unwrap_or_default().to_vec())?))
        .collect()
}

fn transform(plugin: &str, config: &[(&str, &str)]) -> pb::Transform {
    pb::Transform {
        plugin: plugin.into(),
        config: config
            .iter()
            .map(|(k, v)| pb::ConfigEntry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

async fn create_pipeline(
    channel: &Channel,
    name: &str,
    from: &str,
    to: &str,
    transforms: Vec<pb::Transform>,
) -> Result<pb::Pipeline, tonic::Status> {
    Ok(PipelinesClient::new(channel.clone())
        .create_pipeline(pb::CreatePipelineRequest {
            name: name.into(),
            from_topic: from.into(),
            to_topic: to.into(),
            transforms,
            errors: pb::ErrorPolicy::Fail as i32,
            dlq_topic: String::new(),
        })
        .await?
        .into_inner())
}

async fn pipeline(channel: &Channel, name: &str) -> anyhow::Result<pb::Pipeline> {
    Ok(PipelinesClient::new(channel.clone())
        .get_pipeline(pb::GetPipelineRequest { name: name.into() })
        .await?
        .into_inner())
}

/// Polls until `done` holds for the pipeline's partition 0; fails with its status otherwise.
async fn wait_until(
    channel: &Channel,
    name: &str,
    done: impl Fn(&pb::PipelinePartition) -> bool,
) -> anyhow::Result<pb::PipelinePartition> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = pipeline(channel, name).await?;
        let partition = status.partitions.first().context("no partitions")?;
        if done(partition) {
            return Ok(partition.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "pipeline {name} did not get there: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expected_upper(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|n| format!(r#"{{"n":{n},"name":"SENSOR-{n}"}}"#))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_added_over_grpc_transforms_100k_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    let added = PluginsClient::new(channel.clone())
        .add_plugin(pb::AddPluginRequest {
            name: "upper".into(),
            wasm: std::fs::read(plugin_wasm("plugin_template")?)?.into(),
        })
        .await?
        .into_inner();
    assert_eq!(added.kind, pb::PluginKind::Transform as i32);
    create_topic(&channel, "readings").await?;
    produce(&channel, "readings", 0..50_000).await?;
    create_pipeline(
        &channel,
        "shout",
        "readings",
        "loud",
        vec![transform("upper", &[("field", "name")])],
    )
    .await?;
    produce(&channel, "readings", 50_000..100_000).await?;
    let done = wait_until(&channel, "shout", |p| p.next_offset == 100_000).await?;
    assert_eq!(done.lag, 0);
    assert_eq!(done.records_out, 100_000);
    assert_eq!(values(&channel, "loud").await?, expected_upper(0..100_000));

    let metrics = daemon.scrape_metrics().await?;
    assert!(
        metrics.contains(r#"appliance_plugin_counter_total{plugin="upper",instance="shout/0/0",name="uppercased"} 100000"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"appliance_pipeline_lag{pipeline="shout",partition="0"} 0"#));

    let listed = daemon.cli(dir.path(), &["plugin", "list", "--json"], b"")?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let names: Vec<&str> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for builtin in [
        "filter",
        "mask-field",
        "regex-router",
        "timestamp-router",
        "header-from",
    ] {
        assert!(names.contains(&builtin), "{names:?}");
    }
    assert!(names.contains(&"upper"));
    let in_use = daemon.cli(dir.path(), &["plugin", "delete", "upper"], b"")?;
    assert_eq!(in_use.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("used by pipeline \"shout\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_plugins_fail_only_their_own_pipeline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("appliance.toml");
    std::fs::write(&config, "[plugins]\nmax-memory-mb = 32\ntimeout-ms = 300\n")?;
    let daemon = Daemon::start_on_free_ports(
        dir.path(),
        &["--config", config.to_str().context("utf-8 path")?],
    )?;
    let channel = daemon.channel().await?;
    let added = daemon.cli(
        dir.path(),
        &[
            "plugin",
            "add",
            "faulty",
            plugin_wasm("plugin_fault_injector")?
                .to_str()
                .context("utf-8 path")?,
        ],
        b"",
    )?;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    create_topic(&channel, "in").await?;
    produce(&channel, "in", 0..100).await?;
    for (name, mode) in [
        ("trap", "trap"),
        ("spin", "loop"),
        ("nap", "sleep"),
        ("hog", "allocate"),
    ] {
        let created = daemon.cli(
            dir.path(),
            &[
                "pipeline",
                "create",
                name,
                "--from",
                "in",
                "--to",
                &format!("{name}-out"),
                "--transform",
                &format!("faulty:mode={mode}"),
            ],
            b"",
        )?;
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    create_pipeline(
        &channel,
        "healthy",
        "in",
        "copied",
        vec![transform("filter", &[("field", "n"), ("less-than", "0")])],
    )
    .await?;
    for (name, reason) in [
        ("trap", "trapping on purpose"),
        ("spin", "ran longer than its limit of 300 ms"),
        ("nap", "ran longer than its limit of 300 ms"),
        ("hog", "more than its memory limit of 32 MiB"),
    ] {
        let failed = wait_until(&channel, name, |p| {
            p.state == pb::PipelineState::Failed as i32
        })
        .await?;
        assert!(
            failed.failure.contains("plugin \"faulty\"") && failed.failure.contains(reason),
            "{name}: {}",
            failed.failure
        );
        assert_eq!(failed.next_offset, 0, "nothing of {name} counts as done");
    }
    // Between its automatic restarts the partition runs (and spins) again, so the table is
    // read until it shows the failure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = daemon.cli(dir.path(), &["pipeline", "status", "spin"], b"")?;
        let status = String::from_utf8_lossy(&status.stdout).into_owned();
        if status.contains("timeout-ms") && status.contains("(restarting in ") {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&channel, "in", 100..200).await?;
    wait_until(&channel, "healthy", |p| p.next_offset == 200).await?;
    assert_eq!(values(&channel, "copied").await?.len(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_pipeline_yields_every_output_record_exactly_once() -> anyhow::Result<()> {
    const ROUND: usize = 100_000;
    const ROUNDS: usize = 3;
    let dir = tempfile::tempdir()?;
    let mut daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    create_topic(&channel, "readings").await?;
    PluginsClient::new(channel.clone())
        .add_plugin(pb::AddPluginRequest {
            name: "upper".into(),
            wasm: std::fs::read(plugin_wasm("plugin_template")?)?.into(),
        })
        .await?;
    create_pipeline(
        &channel,
        "shout",
        "readings",
        "loud",
        vec![transform("upper", &[("field", "name")])],
    )
    .await
    .map_err(|s| anyhow::anyhow!("{s}"))?;
    // Each round gives the pipeline fresh work and kills the process once it has made some
    // progress on it, so the kill lands while batches are being transformed and appended.
    for round in 0..ROUNDS {
        let channel = daemon.channel().await?;
        let before = wait_until(&channel, "shout", |p| {
            p.state == pb::PipelineState::Running as i32
        })
        .await?
        .next_offset;
        produce(&channel, "readings", round * ROUND..(round + 1) * ROUND).await?;
        let at_kill = wait_until(&channel, "shout", |p| p.next_offset > before).await?;
        eprintln!(
            "round {round}: SIGKILL at source offset {} with {} records to go",
            at_kill.next_offset, at_kill.lag
        );
        daemon.stop_with(Signal::SIGKILL)?;
        daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    }
    let channel = daemon.channel().await?;
    let total = ROUND * ROUNDS;
    wait_until(&channel, "shout", |p| p.next_offset as usize == total).await?;
    let out = values(&channel, "loud").await?;
    assert_eq!(out.len(), total);
    assert!(
        out == expected_upper(0..total),
        "every record once, in order"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_components_and_rejected_configs_get_clear_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x0d\0\x01\0 definitely not a component")?;
    let added = daemon.cli(
        dir.path(),
        &[
            "plugin",
            "add",
            "bogus",
            bogus.to_str().context("utf-8 path")?,
        ],
        b"",
    )?;
    assert_eq!(added.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(
        stderr.contains("not a usable WebAssembly component") && stderr.contains("InvalidArgument"),
        "{stderr}"
    );
    let plain_module = PluginsClient::new(channel.clone())
        .add_plugin(pb::AddPluginRequest {
            name: "module".into(),
            wasm: b"\0asm\x01\0\0\0".to_vec().into(),
        })
        .await
        .expect_err("a core module is not a component");
    assert_eq!(plain_module.code(), Code::InvalidArgument);

    create_topic(&channel, "in").await?;
    let rejected = daemon.cli(
        dir.path(),
        &[
            "pipeline",
            "create",
            "p",
            "--from",
            "in",
            "--to",
            "out",
            "--transform",
            "mask-field:colour=red",
        ],
        b"",
    )?;
    assert_eq!(rejected.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        stderr.contains("plugin \"mask-field\" rejected its configuration")
            && stderr.contains("colour"),
        "{stderr}"
    );
    let malformed = daemon.cli(
        dir.path(),
        &[
            "pipeline",
            "create",
            "p",
            "--from",
            "in",
            "--to",
            "out",
            "--transform",
            "filter:field",
        ],
        b"",
    )?;
    assert_eq!(malformed.status.code(), Some(2));
    let missing = create_pipeline(&channel, "p", "nope", "out", vec![]).await;
    assert_eq!(missing.expect_err("no source").code(), Code::NotFound);
    let unknown = create_pipeline(&channel, "p", "in", "out", vec![transform("nope", &[])]).await;
    assert_eq!(unknown.expect_err("no plugin").code(), Code::NotFound);
    let listed = daemon.cli(dir.path(), &["pipeline", "list", "--json"], b"")?;
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    Ok(())
}
