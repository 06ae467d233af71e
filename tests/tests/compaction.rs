//! Compacted topics (`cleanup-policy = "compact"`) on real `appliance run` processes: an edge
//! keeps the newest value of every key at its offset through SIGKILLs and restarts, answers
//! `appliance lookup` by key, kcat (librdkafka) and kafka-python read the compacted partition
//! from the beginning, and the link mirrors it to a hub record for record at the same offsets, where
//! the mirror is compacted too and answers lookups as well.

use std::collections::BTreeMap;
use std::path::Path;

use appliance_e2e::cluster::{cli_json, fields, wait_link_in_sync};
use appliance_e2e::{Channel, Daemon, Deadline, Deployment, cli_ok, fetch_all, kcat_with};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use nix::sys::signal::Signal;

const KEYS: u64 = 40;
const ROUNDS: u64 = 30;
const BOB_PASSWORD: &str = "correct horse battery";

/// The edge's configuration: `sensors` compacted in small segments, checked often.
const EDGE_CONFIG: &str = r#"
[log]
retention-check-interval-ms = 200

[topics.sensors]
partitions = 1
cleanup-policy = "compact"
segment-bytes = 4096
"#;

fn start_edge(root: &Path) -> anyhow::Result<Daemon> {
    Daemon::start_on_free_ports(
        root,
        &["--config", "edge-1.toml", "--data-dir", "edge-1-data"],
    )
}

/// Writes round `round` of every key: `value(key, round)`, or a tombstone for the keys the
/// round deletes.
async fn write_round(channel: &Channel, round: u64) -> anyhow::Result<()> {
    let records = (0..KEYS)
        .map(|key| pb::Record {
            key: Some(format!("device-{key}").into_bytes().into()),
            value: value(key, round).map(|v| v.into_bytes().into()),
            headers: Vec::new(),
            timestamp_ms: 0,
        })
        .collect();
    RecordsClient::new(channel.clone())
        .produce(pb::ProduceRequest {
            topic: "sensors".into(),
            partition: Some(0),
            records,
        })
        .await?;
    Ok(())
}

/// Keys divisible by 7 are deleted in the last round.
fn value(key: u64, round: u64) -> Option<String> {
    (round + 1 < ROUNDS || !key.is_multiple_of(7)).then(|| {
        format!(
            r#"{{"device":{key},"round":{round},"pad":"{}"}}"#,
            "x".repeat(40)
        )
    })
}

/// Key -> (offset, value) of the newest record of each key in what `records` holds.
fn newest(records: &[pb::ConsumedRecord]) -> BTreeMap<String, (u64, Option<String>)> {
    records
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
                (
                    r.offset,
                    r.value
                        .as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                ),
            )
        })
        .collect()
}

fn expected_newest() -> BTreeMap<String, (u64, Option<String>)> {
    (0..KEYS)
        .map(|key| {
            let offset = (ROUNDS - 1) * KEYS + key;
            (format!("device-{key}"), (offset, value(key, ROUNDS - 1)))
        })
        .collect()
}

fn kcat(edge: &Daemon, args: &[&str], stdin: &[u8]) -> anyhow::Result<std::process::Output> {
    kcat_with(
        edge,
        &["-X", "security.protocol=SASL_PLAINTEXT"],
        "SCRAM-SHA-256",
        "bob",
        BOB_PASSWORD,
        args,
        stdin,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compacted_topic_keeps_the_newest_value_per_key_through_kills_and_mirrors_to_the_hub()
-> anyhow::Result<()> {
    let deployment = Deployment::new(&["edge-1"])?;
    let root = deployment.root();
    std::fs::write(root.join("edge-1.toml"), EDGE_CONFIG)?;
    let edge = start_edge(root)?;
    let channel = edge.channel().await?;
    let described = cli_json(&edge, root, &["topic", "describe", "sensors", "--json"])?;
    assert_eq!(
        described["config"]["cleanup_policy"], "compact",
        "{described}"
    );

    for round in 0..ROUNDS / 2 {
        write_round(&channel, round).await?;
    }
    // SIGKILL halfway: what was acknowledged stays, compacted or not.
    edge.stop_with(Signal::SIGKILL)?;
    let edge = start_edge(root)?;
    let channel = edge.channel().await?;
    for round in ROUNDS / 2..ROUNDS {
        write_round(&channel, round).await?;
    }
    let written = ROUNDS * KEYS;
    // Compacted, and settled: no pass is due once nothing more is sealed.
    let deadline = Deadline::new("the edge compacting sensors");
    let mut previous = Vec::new();
    let compacted = loop {
        let records = fetch_all(&channel, "sensors", 0).await?;
        if records.len() as u64 <= written / 3 && records == previous {
            break records;
        }
        deadline.pause(records.len()).await?;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        previous = records;
    };
    assert_eq!(
        newest(&compacted),
        expected_newest(),
        "newest value per key"
    );
    assert!(
        compacted.windows(2).all(|w| w[0].offset < w[1].offset),
        "offsets ascend"
    );

    // Read as a table: the newest value of a key, none for a deleted one.
    let looked_up = cli_ok(&edge, root, &["lookup", "sensors", "device-3"], b"")?;
    assert_eq!(Some(looked_up.trim().to_owned()), value(3, ROUNDS - 1));
    let deleted = edge.cli(root, &["lookup", "sensors", "device-7"], b"")?;
    assert!(!deleted.status.success(), "{deleted:?}");
    assert!(
        String::from_utf8_lossy(&deleted.stderr).contains("no record for key"),
        "{deleted:?}"
    );

    // A keyless record is refused with what to fix; a Kafka client reads the compacted
    // partition from the start, gaps in offsets and all.
    let refused = edge.cli(root, &["produce", "sensors"], b"no key\n")?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("every record needs a key"), "{stderr}");
    cli_ok(
        &edge,
        root,
        &["user", "create", "bob"],
        format!("{BOB_PASSWORD}\n").as_bytes(),
    )?;
    cli_ok(
        &edge,
        root,
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--topic",
            "sensors",
            "--operation",
            "all",
        ],
        b"",
    )?;
    let read = kcat(
        &edge,
        &[
            "-C",
            "-t",
            "sensors",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%k|%S\n",
        ],
        b"",
    )?;
    anyhow::ensure!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let kafka_view: BTreeMap<String, u64> = String::from_utf8_lossy(&read.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '|');
            let offset = fields.next()?.parse().ok()?;
            Some((fields.next()?.to_owned(), offset))
        })
        .collect();
    let want: BTreeMap<String, u64> = expected_newest()
        .into_iter()
        .map(|(key, (offset, _))| (key, offset))
        .collect();
    assert_eq!(kafka_view, want, "kcat's newest offset per key");
    let lines = String::from_utf8_lossy(&read.stdout).lines().count();
    assert_eq!(lines, compacted.len(), "kcat reads every kept record");
    // kafka-python, a Kafka client with a decoder of its own, reads the same.
    let python = appliance_e2e::python::python()?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kafka_read_partition.py");
    let options = serde_json::json!({
        "bootstrap": edge.kafka_addr.clone().unwrap_or_default(),
        "mechanism": "SCRAM-SHA-256",
        "user": "bob",
        "password": BOB_PASSWORD,
        "topic": "sensors",
        "partition": 0,
    });
    let read = std::process::Command::new(python)
        .arg(&script)
        .arg(options.to_string())
        .output()?;
    anyhow::ensure!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let kafka_python: Vec<(u64, Option<String>, Option<String>)> =
        String::from_utf8_lossy(&read.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
    let over_grpc: Vec<(u64, Option<String>, Option<String>)> = compacted
        .iter()
        .map(|r| {
            let text = |b: &Option<bytes::Bytes>| {
                b.as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            (r.offset, text(&r.key), text(&r.value))
        })
        .collect();
    assert_eq!(
        kafka_python, over_grpc,
        "kafka-python reads every kept record"
    );
    let keyless = kcat(&edge, &["-P", "-t", "sensors", "-p", "0"], b"no key\n")?;
    let stderr = String::from_utf8_lossy(&keyless.stderr);
    assert!(
        stderr.contains("Broker failed to validate record"),
        "kcat, told INVALID_RECORD: {stderr}"
    );

    // A restart reads the same; then the link mirrors it to the hub at the same offsets.
    edge.stop_with(Signal::SIGKILL)?;
    let edge = start_edge(root)?;
    let channel = edge.channel().await?;
    assert_eq!(
        fetch_all(&channel, "sensors", 0).await?,
        compacted,
        "after a restart"
    );
    let hub = deployment.start_hub()?;
    let hub_channel = hub.channel().await?;
    deployment.link(&edge, "edge-1", &deployment.hub_addr(), &[])?;
    wait_link_in_sync(&edge, root, &[("up", "sensors", 1)]).await?;
    let mirrored = fetch_all(&hub_channel, "edge-1.sensors", 0).await?;
    assert_eq!(mirrored.len(), compacted.len(), "the hub's mirror");
    for (copy, original) in mirrored.iter().zip(&compacted) {
        assert_eq!(
            fields(copy),
            fields(original),
            "the hub's mirror, record for record"
        );
    }
    let mirror = cli_json(
        &hub,
        root,
        &["topic", "describe", "edge-1.sensors", "--json"],
    )?;
    assert_eq!(mirror["config"]["cleanup_policy"], "compact", "{mirror}");
    let on_the_hub = cli_ok(&hub, root, &["lookup", "edge-1.sensors", "device-3"], b"")?;
    assert_eq!(Some(on_the_hub.trim().to_owned()), value(3, ROUNDS - 1));
    Ok(())
}
