//! Plugins written in JavaScript with the SDK in sdk/js, built from source with
//! componentize-js (installed from npm into tests/js/node_modules) as docs/plugin-guide.md
//! does, added over gRPC to a real `appliance run`, and checked record by record: the
//! transform template in a pipeline, the sink example in a connector; their native unit
//! tests under Node; and a JavaScript transform that is given a record it cannot read
//! dead-letters it while the rest go through.

use std::time::Duration;

use appliance_e2e::node::{componentize_js, componentize_js_args, lay_out_js_plugin};
use appliance_e2e::{Channel, Daemon, cli_ok, fetch_topic, wait_pipeline_caught_up};
use appliance_proto::v1 as pb;
use appliance_proto::v1::plugins_client::PluginsClient;

async fn build_and_add(
    channel: &Channel,
    root: &std::path::Path,
    (source, world, name): (&str, &str, &str),
) -> anyhow::Result<pb::Plugin> {
    let project = root.join(name);
    lay_out_js_plugin(source, &project)?;
    let tested = std::process::Command::new("node")
        .current_dir(&project)
        .arg("--test")
        .output()?;
    anyhow::ensure!(
        tested.status.success(),
        "{source}: node --test: {}",
        String::from_utf8_lossy(&tested.stdout)
    );
    componentize_js(&project, &componentize_js_args(world, "plugin.wasm"))?;
    Ok(PluginsClient::new(channel.clone())
        .add_plugin(pb::AddPluginRequest {
            name: name.into(),
            wasm: std::fs::read(project.join("plugin.wasm"))?.into(),
        })
        .await?
        .into_inner())
}

fn names(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("{{\"name\":\"sensor-{i}\",\"i\":{i}}}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_template_and_sink_carry_every_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    let upper = build_and_add(
        &channel,
        root,
        ("plugins/template-js", "transform", "upper-js"),
    )
    .await?;
    assert_eq!(upper.kind, pb::PluginKind::Transform as i32);
    let sink = build_and_add(&channel, root, ("plugins/sink-js", "sink", "log-js")).await?;
    assert_eq!(sink.kind, pb::PluginKind::Sink as i32);

    cli_ok(&daemon, root, &["topic", "create", "names"], b"")?;
    cli_ok(
        &daemon,
        root,
        &[
            "pipeline",
            "create",
            "shout",
            "--from",
            "names",
            "--to",
            "loud",
            "--transform",
            "upper-js:field=name",
            "--errors",
            "dlq",
            "--dlq-topic",
            "shout-dead",
        ],
        b"",
    )?;
    let rejected = daemon.cli(
        root,
        &[
            "pipeline",
            "create",
            "bare",
            "--from",
            "names",
            "--to",
            "x",
            "--transform",
            "upper-js",
        ],
        b"",
    )?;
    let said = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        !rejected.status.success() && said.contains("`field` is required"),
        "{said}"
    );
    const RECORDS: usize = 300;
    let input = format!("{}not json\n{}", names(0..150), names(150..RECORDS));
    cli_ok(&daemon, root, &["produce", "names"], input.as_bytes())?;
    wait_pipeline_caught_up(&channel, "shout", 1).await?;
    let loud = fetch_topic(&channel, "loud").await?;
    assert_eq!(loud.len(), RECORDS);
    for (i, record) in loud.iter().enumerate() {
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        assert_eq!(
            value,
            serde_json::json!({"name": format!("SENSOR-{i}"), "i": i}),
            "record {i}"
        );
    }
    let dead = fetch_topic(&channel, "shout-dead").await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&b"not json"[..]));

    cli_ok(
        &daemon,
        root,
        &[
            "connector",
            "create",
            "export",
            "--plugin",
            "log-js",
            "--topic",
            "loud",
        ],
        b"",
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let log = daemon.log_text();
        let delivered: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("delivered loud@"))
            .collect();
        if delivered.len() >= RECORDS {
            for (i, record) in loud.iter().enumerate() {
                let line = format!(
                    "delivered loud@{i}: {}",
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                );
                assert_eq!(
                    delivered.iter().filter(|l| l.contains(&line)).count(),
                    1,
                    "{line}"
                );
            }
            assert_eq!(delivered.len(), RECORDS);
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} of {RECORDS} records delivered",
            delivered.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Waits until partition 0 of pipeline `name` has failed, and returns its failure.
async fn failure_of(channel: &Channel, name: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pipeline = appliance_proto::v1::pipelines_client::PipelinesClient::new(channel.clone())
            .get_pipeline(pb::GetPipelineRequest { name: name.into() })
            .await?
            .into_inner();
        if let Some(failed) = pipeline
            .partitions
            .iter()
            .find(|p| p.state == pb::PipelineState::Failed as i32)
        {
            return Ok(failed.failure.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{name} did not fail: {pipeline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_plugins_that_throw_loop_or_hoard_fail_only_their_own_pipeline()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    build_and_add(
        &channel,
        root,
        ("tests/plugins/faults-js", "transform", "faulty-js"),
    )
    .await?;
    build_and_add(
        &channel,
        root,
        ("plugins/template-js", "transform", "upper-js"),
    )
    .await?;
    cli_ok(&daemon, root, &["topic", "create", "in"], b"")?;
    cli_ok(&daemon, root, &["produce", "in"], names(0..50).as_bytes())?;
    for (name, transform) in [
        ("throw", "faulty-js:mode=throw"),
        ("spin", "faulty-js:mode=loop,timeout-ms=500"),
        ("hoard", "faulty-js:mode=alloc,max-memory-mb=96"),
        ("healthy", "upper-js:field=name"),
    ] {
        cli_ok(
            &daemon,
            root,
            &[
                "pipeline",
                "create",
                name,
                "--from",
                "in",
                "--to",
                &format!("{name}-out"),
                "--transform",
                transform,
            ],
            b"",
        )?;
    }
    for (name, reason) in [
        ("throw", "faults-js was told to fail"),
        ("spin", "ran longer than its limit of 500 ms"),
        ("hoard", "more than its memory limit of 96 MiB"),
    ] {
        let failure = failure_of(&channel, name).await?;
        assert!(
            failure.contains("plugin \"faulty-js\"") && failure.contains(reason),
            "{name}: {failure}"
        );
    }
    cli_ok(&daemon, root, &["produce", "in"], names(50..100).as_bytes())?;
    wait_pipeline_caught_up(&channel, "healthy", 1).await?;
    assert_eq!(fetch_topic(&channel, "healthy-out").await?.len(), 100);
    Ok(())
}
