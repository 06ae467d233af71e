//! What the tests of plugins in other languages share: adding a built component over gRPC,
//! the JSON records they upper-case, and the check that a plugin that fails, loops or hoards
//! fails only its own pipeline.

use std::path::Path;
use std::time::Duration;

use appliance_proto::v1 as pb;
use appliance_proto::v1::pipelines_client::PipelinesClient;
use appliance_proto::v1::plugins_client::PluginsClient;

use crate::{Channel, Daemon, cli_ok, fetch_topic, wait_pipeline_caught_up};

/// How long a pipeline may take to fail (an interpreter-sized component compiles first).
const WAIT: Duration = Duration::from_secs(120);

pub async fn add_plugin(channel: &Channel, name: &str, wasm: &Path) -> anyhow::Result<pb::Plugin> {
    Ok(PluginsClient::new(channel.clone())
        .add_plugin(pb::AddPluginRequest {
            name: name.into(),
            wasm: std::fs::read(wasm)?.into(),
        })
        .await?
        .into_inner())
}

/// One JSON record a line, `{"name":"sensor-I","i":I}` for each I in `range`.
pub fn names(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("{{\"name\":\"sensor-{i}\",\"i\":{i}}}\n"))
        .collect()
}

/// Waits until partition 0 of pipeline `name` has failed, and returns its failure.
pub async fn failure_of(channel: &Channel, name: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pipeline = PipelinesClient::new(channel.clone())
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

/// The plugins a fault test runs, as added: `faulty` built from tests/plugins/faults-LANG,
/// `upper` from the language's template.
#[derive(Debug)]
pub struct FaultTest<'a> {
    pub faulty: &'a str,
    /// The mode that makes `faulty` fail its call (`raise`, `throw`), and what its failure says.
    pub fail_mode: &'a str,
    pub told_to_fail: &'a str,
    pub upper: &'a str,
}

/// Topic `in` with 100 records; `faulty` failing, looping and hoarding in three pipelines
/// fails each with its reason, while `upper` beside them carries every record.
pub async fn faults_fail_only_their_own_pipeline(
    daemon: &Daemon,
    channel: &Channel,
    root: &Path,
    test: &FaultTest<'_>,
) -> anyhow::Result<()> {
    let FaultTest {
        faulty,
        fail_mode,
        told_to_fail,
        upper,
    } = test;
    cli_ok(daemon, root, &["topic", "create", "in"], b"")?;
    cli_ok(daemon, root, &["produce", "in"], names(0..50).as_bytes())?;
    let pipelines = [
        (*fail_mode, format!("{faulty}:mode={fail_mode}")),
        ("spin", format!("{faulty}:mode=loop,timeout-ms=500")),
        ("hoard", format!("{faulty}:mode=alloc,max-memory-mb=96")),
        ("healthy", format!("{upper}:field=name")),
    ];
    for (name, transform) in &pipelines {
        let to = format!("{name}-out");
        cli_ok(
            daemon,
            root,
            &[
                "pipeline",
                "create",
                name,
                "--from",
                "in",
                "--to",
                &to,
                "--transform",
                transform,
            ],
            b"",
        )?;
    }
    for (name, reason) in [
        (*fail_mode, *told_to_fail),
        ("spin", "ran longer than its limit of 500 ms"),
        ("hoard", "more than its memory limit of 96 MiB"),
    ] {
        let failure = failure_of(channel, name).await?;
        assert!(
            failure.contains(&format!("plugin \"{faulty}\"")) && failure.contains(reason),
            "{name}: {failure}"
        );
    }
    cli_ok(daemon, root, &["produce", "in"], names(50..100).as_bytes())?;
    wait_pipeline_caught_up(channel, "healthy", 1).await?;
    assert_eq!(fetch_topic(channel, "healthy-out").await?.len(), 100);
    Ok(())
}
