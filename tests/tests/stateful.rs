//! A plugin author's stateful transform, as docs/plugin-guide.md builds and runs it: the
//! `running-count` plugin (the SDK's typed state store) counts records per key in a pipeline
//! on real `appliance run` processes. Through three SIGKILLs, one while the pipeline is at
//! work, every key's counts are exactly 1, 2, ... n: no record counted twice or lost. The
//! store is snapshotted every 200 ms, so restarts restore from a snapshot and the changelog
//! after it.

use std::collections::BTreeMap;

use appliance_e2e::cluster::cli_json;
use appliance_e2e::{Daemon, cli_ok, fetch_topic, plugin_wasm, wait_pipeline_caught_up};
use nix::sys::signal::Signal;

const KEYS: usize = 30;
const PHASES: usize = 8;
const PARTITIONS: u32 = 3;

fn word(n: usize) -> String {
    format!("w{n:02}")
}

/// The lines of phase `phase`: each key a few times, interleaved.
fn phase_lines(phase: usize, produced: &mut BTreeMap<String, u64>) -> String {
    let mut lines = String::new();
    for round in 0..6 {
        for key in 0..KEYS {
            if round < (phase + key) % 4 + 3 {
                *produced.entry(word(key)).or_default() += 1;
                lines.push_str(&format!(
                    "{{\"word\":\"{}\",\"round\":{round}}}\n",
                    word(key)
                ));
            }
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_count_counts_every_record_once_through_sigkills() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let mut daemon = Daemon::start_on_free_ports(root, &[])?;
    let wasm = plugin_wasm("plugin_running_count")?;
    let wasm = wasm.to_str().expect("a UTF-8 path");
    cli_ok(
        &daemon,
        root,
        &["plugin", "add", "running-count", wasm],
        b"",
    )?;
    let partitions = PARTITIONS.to_string();
    cli_ok(
        &daemon,
        root,
        &["topic", "create", "words", "--partitions", &partitions],
        b"",
    )?;

    let twice = daemon.cli(
        root,
        &[
            "pipeline",
            "create",
            "twice",
            "--from",
            "words",
            "--to",
            "x",
            "--transform",
            "running-count",
            "--transform",
            "running-count",
        ],
        b"",
    )?;
    let said = String::from_utf8_lossy(&twice.stderr);
    assert!(
        !twice.status.success() && said.contains("must be the last transform"),
        "{said}"
    );

    cli_ok(
        &daemon,
        root,
        &[
            "pipeline",
            "create",
            "count",
            "--from",
            "words",
            "--to",
            "counts",
            "--transform",
            "running-count:snapshot-interval=200ms",
        ],
        b"",
    )?;
    let described = cli_json(
        &daemon,
        root,
        &[
            "topic",
            "describe",
            "count.running-count.changelog",
            "--json",
        ],
    )?;
    assert_eq!(
        described["config"]["cleanup_policy"], "compact",
        "{described}"
    );

    let mut produced = BTreeMap::new();
    for phase in 0..PHASES {
        let lines = phase_lines(phase, &mut produced);
        cli_ok(
            &daemon,
            root,
            &["produce", "words", "--key-field", "word"],
            lines.as_bytes(),
        )?;
        if phase % 2 == 1 && phase + 1 < PHASES {
            // The second kill comes right after producing, while the pipeline is at work;
            // the others once it has caught up and snapshotted (every 200 ms).
            if phase != 3 {
                wait_pipeline_caught_up(&daemon.channel().await?, "count", PARTITIONS).await?;
                tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            }
            daemon.stop_with(Signal::SIGKILL)?;
            daemon = Daemon::start_on_free_ports(root, &[])?;
        }
    }
    let channel = daemon.channel().await?;
    wait_pipeline_caught_up(&channel, "count", PARTITIONS).await?;
    let restored = daemon.log_text();
    assert!(
        restored.contains("state restored") && restored.contains("from_snapshot=true"),
        "the last start did not restore from a snapshot:\n{restored}"
    );

    let mut counted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in fetch_topic(&channel, "counts").await? {
        let value: serde_json::Value = serde_json::from_slice(&record.value.unwrap_or_default())?;
        let key = value["key"].as_str().expect("a key").to_owned();
        counted
            .entry(key)
            .or_default()
            .push(value["count"].as_u64().expect("a count"));
    }
    assert_eq!(counted.len(), KEYS);
    for (key, counts) in &counted {
        let expected: Vec<u64> = (1..=produced[key]).collect();
        assert_eq!(counts, &expected, "the counts of {key}");
    }
    Ok(())
}
