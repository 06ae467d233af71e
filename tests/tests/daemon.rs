//! `appliance run` and `appliance bench` as an operator uses them: defaults with no file,
//! configuration, signals, a SIGKILL and a restart (also in the middle of creating and
//! deleting a topic), bad input.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use appliance_e2e::{Daemon, run_to_end, start_in_runtime};
use appliance_proto::v1 as pb;
use appliance_proto::v1::topics_client::TopicsClient;
use nix::sys::signal::Signal;

#[test]
fn runs_on_defaults_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(dir.path(), &[])?;
    let (status, log) = daemon.stop_with(Signal::SIGTERM)?;
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("SIGTERM received") && log.contains("shutdown complete"),
        "{log}"
    );
    assert!(dir.path().join("appliance-data/meta").is_dir());
    assert!(dir.path().join("appliance-data/topics").is_dir());
    Ok(())
}

#[test]
fn declared_topics_are_created_and_survive_a_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("appliance.toml");
    std::fs::write(
        &config,
        "data-dir = \"data\"\n[topics.sensors]\npartitions = 3\nretention-ms = 3600000\n",
    )?;
    let config_arg = config.to_str().expect("utf-8 path");
    let daemon = Daemon::start_on_free_ports(dir.path(), &["--config", config_arg])?;
    for partition in 0..3 {
        let segment = dir.path().join(format!(
            "data/topics/sensors/{partition}/00000000000000000000.log"
        ));
        assert!(segment.exists(), "{} missing", segment.display());
    }
    let (status, _) = daemon.stop_with(Signal::SIGKILL)?;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));

    // The flag overrides the file; the same data directory comes back with its topic.
    let data = dir.path().join("data");
    let daemon = Daemon::start_on_free_ports(
        dir.path(),
        &[
            "--config",
            config_arg,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ],
    )?;
    assert!(
        // sensors, and the `_audit` topic every appliance has
        daemon.log_text().contains("topics=2"),
        "{}",
        daemon.log_text()
    );
    let (status, log) = daemon.stop_with(Signal::SIGINT)?;
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    Ok(())
}

#[test]
fn a_second_appliance_on_the_same_data_directory_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = Daemon::start_on_free_ports(dir.path(), &["--data-dir", "data"])?;
    let second = run_to_end(
        dir.path(),
        &[
            "run",
            "--data-dir",
            "data",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )?;
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another appliance process uses this data directory"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn bad_configuration_exits_2_naming_every_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &[&str]); 3] = [
        ("data-dri = \"x\"\n", &["unknown field `data-dri`"]),
        (
            "[topics.\"bad name\"]\n[topics.ok]\npartitions = 0\n",
            &[
                "topics.bad name: invalid topic name",
                "topics.ok.partitions must be 1 to 1024",
            ],
        ),
        (
            "[log]\ndurability = \"maybe\"\n",
            &["unknown variant `maybe`"],
        ),
    ];
    for (text, expected) in cases {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text)?;
        let output = run_to_end(dir.path(), &["run", "--config", "bad.toml"])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        for needle in expected {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    }
    let missing = run_to_end(dir.path(), &["run", "--config", "nope.toml"])?;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file nope.toml"));
    let usage = run_to_end(dir.path(), &["run", "--durability", "sometimes"])?;
    assert_eq!(usage.status.code(), Some(2));
    Ok(())
}

/// Runs `appliance bench ARGS --json` in a fresh directory and checks that it succeeds,
/// prints `table_text`, gives every figure in `figures` above zero and cleans up after itself.
fn run_bench(
    args: &[&str],
    table_text: &[&str],
    figures: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", ".", "--json"]);
    let output = run_to_end(dir.path(), &all)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for text in table_text {
        assert!(stdout.contains(text), "{text:?} not in {stdout}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    for key in figures {
        let figure = summary[key].as_f64().unwrap_or_default();
        assert!(figure > 0.0, "{key} = {figure} in {summary}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path())?.count(),
        0,
        "scratch directory removed"
    );
    Ok(summary)
}

#[test]
fn bench_log_prints_a_table_and_a_json_summary() -> anyhow::Result<()> {
    let summary = run_bench(
        &["log", "--seconds", "0.05"],
        &["disk MB/s", "records/s"],
        &[
            "disk_mb_s",
            "append_mb_s_1k_64p",
            "append_rps_100b_8p",
            "read_mb_s",
        ],
    )?;
    assert_eq!(summary["cases"].as_array().map(Vec::len), Some(8));
    Ok(())
}

#[test]
fn bench_grpc_prints_figures_beside_the_log() -> anyhow::Result<()> {
    run_bench(
        &[
            "grpc",
            "--seconds",
            "0.2",
            "--streams",
            "2",
            "--batch-records",
            "100",
        ],
        &["gRPC ProduceStream", "NATS JetStream"],
        &[
            "log_append_rps",
            "grpc_produce_rps",
            "log_read_rps",
            "grpc_fetch_rps",
            "grpc_subscribe_rps",
        ],
    )?;
    Ok(())
}

#[test]
fn bench_kafka_prints_librdkafkas_figures_beside_grpc_and_the_log() -> anyhow::Result<()> {
    run_bench(
        &[
            "kafka",
            "--records",
            "2000",
            "--seconds",
            "0.2",
            "--partitions",
            "2",
        ],
        &["Kafka Produce, librdkafka", "Kafka Fetch, librdkafka"],
        &[
            "log_append_rps",
            "kafka_produce_rps",
            "grpc_produce_rps",
            "grpc_fetch_rps",
            "kafka_fetch_rps",
        ],
    )?;
    Ok(())
}

/// Whether topic `big` exists now; if it does, every one of its partitions must serve.
async fn whole_or_absent(daemon: &Daemon, partitions: usize) -> anyhow::Result<bool> {
    let topics = TopicsClient::new(daemon.channel().await?)
        .list_topics(pb::ListTopicsRequest {})
        .await?
        .into_inner()
        .topics;
    let Some(big) = topics.iter().find(|topic| topic.name == "big") else {
        return Ok(false);
    };
    anyhow::ensure!(
        big.partitions.len() == partitions && big.partitions.iter().all(|p| p.error.is_empty()),
        "a half-made topic: {big:#?}"
    );
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_topic_create_or_delete_leaves_the_whole_topic_or_none()
-> anyhow::Result<()> {
    const PARTITIONS: u32 = 256;
    let dir = tempfile::tempdir()?;
    let args = ["--data-dir".to_owned(), "data".to_owned()];
    let mut daemon = start_in_runtime(dir.path(), &args)?;
    for delay_ms in [2, 10, 30, 80, 200, 2, 10, 30, 80, 200] {
        let exists = whole_or_absent(&daemon, PARTITIONS as usize).await?;
        let mut topics = TopicsClient::new(daemon.channel().await?);
        let operation = tokio::spawn(async move {
            if exists {
                topics
                    .delete_topic(pb::DeleteTopicRequest { name: "big".into() })
                    .await
                    .map(drop)
            } else {
                topics
                    .create_topic(pb::CreateTopicRequest {
                        name: "big".into(),
                        config: Some(pb::TopicConfig {
                            partitions: Some(PARTITIONS),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(drop)
            }
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        tokio::task::block_in_place(|| daemon.stop_with(Signal::SIGKILL))?;
        let _ = operation.await?;
        daemon = start_in_runtime(dir.path(), &args)?;
    }
    // Whatever the last kill interrupted, the name can be used again.
    if whole_or_absent(&daemon, PARTITIONS as usize).await? {
        TopicsClient::new(daemon.channel().await?)
            .delete_topic(pb::DeleteTopicRequest { name: "big".into() })
            .await?;
    }
    TopicsClient::new(daemon.channel().await?)
        .create_topic(pb::CreateTopicRequest {
            name: "big".into(),
            config: Some(pb::TopicConfig {
                partitions: Some(4),
                ..Default::default()
            }),
        })
        .await?;
    anyhow::ensure!(whole_or_absent(&daemon, 4).await?);
    Ok(())
}
