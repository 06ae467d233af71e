//! Plugins written in JavaScript with the SDK in sdk/js, built from source with
//! componentize-js (installed from npm into tests/js/node_modules) as docs/plugin-guide.md
//! does, added over gRPC to a real `appliance run`, and checked record by record: the
//! transform template in a pipeline, the sink example in a connector; their native unit
//! tests under Node; and a JavaScript transform that is given a record it cannot read
//! dead-letters it while the rest go through.

use std::time::Duration;

use appliance_e2e::node::{componentize_js, componentize_js_args, lay_out_js_plugin};
use appliance_e2e::plugins::{FaultTest, add_plugin, faults_fail_only_their_own_pipeline, names};
use appliance_e2e::{Channel, Daemon, cli_ok, fetch_topic, wait_pipeline_caught_up};
use appliance_proto::v1 as pb;

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
    add_plugin(channel, name, &project.join("plugin.wasm")).await
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
    let test = FaultTest {
        faulty: "faulty-js",
        fail_mode: "throw",
        told_to_fail: "faults-js was told to fail",
        upper: "upper-js",
    };
    faults_fail_only_their_own_pipeline(&daemon, &channel, root, &test).await?;
    Ok(())
}
