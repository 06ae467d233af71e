//! Exports of a hub's edges into a Delta Lake table, read by readers no one here wrote: the
//! deltalake package (delta-rs's Python reader), DuckDB's read_parquet over the committed
//! files and Apache Spark (pyspark, local mode, on the machine's Java), each counting and
//! summing per edge what three edges produced, through three SIGKILLs of the hub while the
//! export runs. Also: records that do not fit go to the dead-letter topic with the reason,
//! `appliance query` over `lake.NAME` agrees with the same query over the topic, and two hubs
//! exporting their own edges into one table concurrently leave every record of both once, in
//! a directory and in an S3-compatible object store (moto's server) with the credentials from
//! the secret providers.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use appliance_e2e::cluster::{cli_json, positions};
use appliance_e2e::python::S3Server;
use appliance_e2e::{Channel, Daemon, Deadline, Deployment, cli_ok, fetch_all, found_in_files};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use nix::sys::signal::Signal;
use serde_json::Value;

const PARTITIONS: u32 = 2;
/// Records per produce request.
const CHUNK: u64 = 50;

/// What one edge produced: rows, and the sum of `v`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    rows: u64,
    sum: u64,
}

/// Produces readings `from..to` on every partition of `sensors` on an edge; `v` is the index.
async fn produce(channel: &Channel, edge: &str, from: u64, to: u64, tally: &mut Tally) {
    let mut client = RecordsClient::new(channel.clone());
    for p in 0..PARTITIONS {
        let mut i = from;
        while i < to {
            let end = (i + CHUNK).min(to);
            let records = (i..end)
                .map(|v| pb::Record {
                    key: Some(format!("device-{}", v % 5).into_bytes().into()),
                    value: Some(
                        serde_json::json!({"site": edge, "v": v, "temp": (v % 40) as f64 / 2.0})
                            .to_string()
                            .into_bytes()
                            .into(),
                    ),
                    headers: Vec::new(),
                    timestamp_ms: 1_767_225_600_000 + v as i64 * 1_000,
                })
                .collect();
            client
                .produce(pb::ProduceRequest {
                    topic: "sensors".into(),
                    partition: Some(p),
                    records,
                })
                .await
                .expect("produce on the edge");
            tally.rows += end - i;
            tally.sum += (i..end).sum::<u64>();
            i = end;
        }
    }
}

/// `appliance export status NAME --json`.
fn export_status(hub: &Daemon, root: &Path, name: &str) -> anyhow::Result<Value> {
    cli_json(hub, root, &["export", "status", name, "--json"])
}

/// Waits until the export holds, of every edge's mirror partition, everything up to `ends`
/// (edge -> high watermarks of its sensors).
async fn wait_exported(
    hub: &Daemon,
    root: &Path,
    name: &str,
    ends: &BTreeMap<String, Vec<u64>>,
) -> anyhow::Result<Value> {
    let deadline = Deadline::new(format!("export {name} catching up"));
    loop {
        let status = export_status(hub, root, name)?;
        let mut exported: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for source in status["sources"].as_array().into_iter().flatten() {
            exported
                .entry(source["edge"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(source["exported"].as_u64().unwrap_or_default());
        }
        if &exported == ends {
            return Ok(status);
        }
        deadline
            .pause((&exported, &status["state"], &status["failure"]))
            .await?;
    }
}

/// The table at `table` (a directory, or `s3://...` with the S3 server's endpoint after it)
/// read by `reader` (tests/python/lake_read.py): edge -> tally, checked free of duplicates.
fn read_table(reader: &str, table: &[&str]) -> anyhow::Result<BTreeMap<String, Tally>> {
    let python = appliance_e2e::python::python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/lake_read.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(reader)
        .args(table)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "lake_read.py {reader}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said: BTreeMap<String, Value> = serde_json::from_slice(&output.stdout)?;
    let mut tallies = BTreeMap::new();
    for (edge, row) in said {
        let rows = row["rows"].as_u64().context("rows")?;
        assert_eq!(
            row["distinct"].as_u64(),
            Some(rows),
            "{reader}: a record of {edge} is in the table twice"
        );
        let sum = row["sum"].as_u64().context("sum")?;
        tallies.insert(edge, Tally { rows, sum });
    }
    Ok(tallies)
}

/// Three edges linked to a hub; the hub's export of `sensors`.
struct Fleet {
    deployment: Deployment,
    /// None only while it is being restarted.
    hub: Option<Daemon>,
    edges: Vec<(String, Daemon, Channel)>,
    tallies: BTreeMap<String, Tally>,
}

impl Fleet {
    async fn start(edges: &[&str], first: u64) -> anyhow::Result<Self> {
        Self::start_on(Deployment::new(edges)?, edges, first).await
    }

    /// [`Fleet::start`] on `deployment` (certificates for `edges`).
    async fn start_on(deployment: Deployment, edges: &[&str], first: u64) -> anyhow::Result<Self> {
        let hub = deployment.start_hub()?;
        let mut fleet = Self {
            deployment,
            hub: Some(hub),
            edges: Vec::new(),
            tallies: BTreeMap::new(),
        };
        for name in edges {
            let edge = fleet.deployment.start_edge(name, PARTITIONS)?;
            let channel = edge.channel().await?;
            let tally = fleet.tallies.entry((*name).to_owned()).or_default();
            produce(&channel, name, 0, first, tally).await;
            fleet
                .deployment
                .link(&edge, name, &fleet.deployment.hub_addr(), &[])?;
            fleet.edges.push(((*name).to_owned(), edge, channel));
        }
        Ok(fleet)
    }

    fn root(&self) -> &Path {
        self.deployment.root()
    }

    async fn produce(&mut self, from: u64, to: u64) {
        for (name, _, channel) in &self.edges {
            let tally = self.tallies.get_mut(name).expect("a tally per edge");
            produce(channel, name, from, to, tally).await;
        }
    }

    /// Each edge's sensors' high watermarks.
    async fn ends(&self) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
        let mut ends = BTreeMap::new();
        for (name, _, channel) in &self.edges {
            let positions = positions(channel, "sensors").await?.context("sensors")?;
            ends.insert(
                name.clone(),
                positions.iter().map(|(_, end)| *end).collect(),
            );
        }
        Ok(ends)
    }

    fn hub(&self) -> &Daemon {
        self.hub.as_ref().expect("the hub runs")
    }

    /// SIGKILLs the hub and starts it again on its data directory.
    fn kill_and_restart_hub(&mut self) -> anyhow::Result<()> {
        if let Some(hub) = self.hub.take() {
            hub.stop_with(Signal::SIGKILL)?;
        }
        self.hub = Some(self.deployment.start_hub_without_acls()?);
        Ok(())
    }
}

/// `export create lake --from sensors --to TO` with `more` arguments.
fn create_export(hub: &Daemon, root: &Path, to: &str, more: &[&str]) -> anyhow::Result<String> {
    let mut args = vec![
        "export",
        "create",
        "lake",
        "--from",
        "sensors",
        "--to",
        to,
        "--flush-interval",
        "300ms",
        "--maintenance-interval",
        "2s",
    ];
    args.extend_from_slice(more);
    cli_ok(hub, root, &args, b"")
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a UTF-8 path")
}

/// `SELECT _edge, count(*), sum(v) ... GROUP BY _edge` over `from` on `hub`, as JSON.
fn per_edge(hub: &Daemon, root: &Path, from: &str) -> anyhow::Result<Value> {
    let sql = format!(
        "SELECT _edge, count(*) AS n, sum(v) AS s FROM {from} GROUP BY _edge ORDER BY _edge"
    );
    let answer = cli_ok(hub, root, &["query", "--format", "json", &sql], b"")?;
    Ok(serde_json::from_str(&answer)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_exported_through_hub_kills_read_the_same_in_deltalake_duckdb_and_spark()
-> anyhow::Result<()> {
    let mut fleet = Fleet::start(&["edge-1", "edge-2", "edge-3"], 400).await?;
    let table = fleet.root().join("lake").join("sensors");
    let created = create_export(fleet.hub(), fleet.root(), utf8(&table)?, &[])?;
    assert!(created.contains("partitioned by _edge,_day"), "{created}");

    // Three SIGKILLs of the hub while the export (and the links) run, more readings between.
    for round in 0..3u64 {
        fleet.produce(400 + round * 300, 700 + round * 300).await;
        tokio::time::sleep(std::time::Duration::from_millis(700 + round * 400)).await;
        let status = export_status(fleet.hub(), fleet.root(), "lake")?;
        eprintln!(
            "round {round}: table version {} with {} rows before the SIGKILL",
            status["table_version"], status["rows"]
        );
        tokio::task::block_in_place(|| fleet.kill_and_restart_hub())?;
    }
    let ends = fleet.ends().await?;
    let status = wait_exported(fleet.hub(), fleet.root(), "lake", &ends).await?;
    assert_eq!(status["state"], "running", "{status}");
    eprintln!("exported: {status}");

    for reader in ["deltalake", "duckdb", "spark"] {
        let read = tokio::task::block_in_place(|| read_table(reader, &[utf8(&table)?]))?;
        assert_eq!(read, fleet.tallies, "{reader}");
    }

    // The hub's SQL over the table agrees with the same SQL over the topic.
    let over_topic = per_edge(fleet.hub(), fleet.root(), "sensors")?;
    let over_lake = per_edge(fleet.hub(), fleet.root(), "lake.lake")?;
    assert_eq!(over_lake, over_topic);
    assert_eq!(over_topic.as_array().map(Vec::len), Some(3), "{over_topic}");

    // A record whose `v` is text and one that is not JSON: both dead-lettered with the reason.
    let (_, _, channel) = &fleet.edges[0];
    let odd = ["{\"site\":\"edge-1\",\"v\":\"many\"}", "not json"].map(|value| pb::Record {
        key: None,
        value: Some(value.as_bytes().to_vec().into()),
        headers: Vec::new(),
        timestamp_ms: 1_767_225_600_000,
    });
    RecordsClient::new(channel.clone())
        .produce(pb::ProduceRequest {
            topic: "sensors".into(),
            partition: Some(0),
            records: odd.to_vec(),
        })
        .await?;
    let ends = fleet.ends().await?;
    let status = wait_exported(fleet.hub(), fleet.root(), "lake", &ends).await?;
    assert!(status["dead_lettered"].as_u64() >= Some(2), "{status}");
    let hub_channel = fleet.hub().channel().await?;
    let letters = fetch_all(&hub_channel, "lake.dead-letters", 0).await?;
    let reasons: Vec<String> = letters
        .iter()
        .flat_map(|letter| &letter.headers)
        .filter(|h| h.key == "appliance.error.message")
        .map(|h| String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("does not fit the table's schema"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("not a JSON object"), "{reasons:?}");
    let read = tokio::task::block_in_place(|| read_table("deltalake", &[utf8(&table)?]))?;
    assert_eq!(read, fleet.tallies, "the misfits are not in the table");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_exporting_into_one_table_leave_every_record_of_both_once() -> anyhow::Result<()> {
    let shared = tempfile::tempdir()?;
    let table = shared.path().join("sensors");
    let mut east = Fleet::start(&["east-1", "east-2"], 300).await?;
    let mut west = Fleet::start(&["west-1", "west-2"], 300).await?;
    create_export(east.hub(), east.root(), utf8(&table)?, &[])?;
    create_export(west.hub(), west.root(), utf8(&table)?, &[])?;
    for round in 0..4u64 {
        east.produce(300 + round * 200, 500 + round * 200).await;
        west.produce(300 + round * 200, 500 + round * 200).await;
    }
    let east_ends = east.ends().await?;
    let west_ends = west.ends().await?;
    wait_exported(east.hub(), east.root(), "lake", &east_ends).await?;
    wait_exported(west.hub(), west.root(), "lake", &west_ends).await?;
    let read = tokio::task::block_in_place(|| read_table("deltalake", &[utf8(&table)?]))?;
    let mut expected = east.tallies.clone();
    expected.extend(west.tallies.clone());
    assert_eq!(read, expected);
    Ok(())
}

/// The secret key the hubs sign their S3 requests with, from their environment.
const S3_SECRET: &str = "lake-test-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_exporting_into_one_s3_table_through_a_hub_kill_leave_every_record_once()
-> anyhow::Result<()> {
    let s3 = tokio::task::block_in_place(S3Server::start)?;
    s3.create_bucket("lake-bucket")?;
    let table = "s3://lake-bucket/fleet/sensors";
    let storage = [
        "--storage",
        &format!("endpoint={}", s3.endpoint),
        "--storage",
        "allow-http=true",
        "--storage",
        "access-key-id=lake-test",
        "--storage",
        "secret-access-key=${env:APPLIANCE_SECRET_S3_KEY}",
    ];
    let fleet = |edges: &'static [&'static str]| async move {
        let deployment = Deployment::new(edges)?.with_hub_env("APPLIANCE_SECRET_S3_KEY", S3_SECRET);
        Fleet::start_on(deployment, edges, 300).await
    };
    let mut east = fleet(&["east-1", "east-2"]).await?;
    let mut west = fleet(&["west-1", "west-2"]).await?;
    create_export(east.hub(), east.root(), table, &storage)?;
    create_export(west.hub(), west.root(), table, &storage)?;
    for round in 0..4u64 {
        east.produce(300 + round * 200, 500 + round * 200).await;
        west.produce(300 + round * 200, 500 + round * 200).await;
        if round == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            tokio::task::block_in_place(|| east.kill_and_restart_hub())?;
        }
    }
    let east_ends = east.ends().await?;
    let west_ends = west.ends().await?;
    wait_exported(east.hub(), east.root(), "lake", &east_ends).await?;
    let status = wait_exported(west.hub(), west.root(), "lake", &west_ends).await?;

    let mut expected = east.tallies.clone();
    expected.extend(west.tallies.clone());
    let read = tokio::task::block_in_place(|| read_table("deltalake", &[table, &s3.endpoint]))?;
    assert_eq!(read, expected);
    // A hub's SQL over the S3 table sees both hubs' edges.
    let over_lake = per_edge(west.hub(), west.root(), "lake.lake")?;
    let counted: BTreeMap<String, u64> = over_lake
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            (
                row["_edge"].as_str().unwrap_or_default().to_owned(),
                row["n"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let produced: BTreeMap<String, u64> = expected
        .iter()
        .map(|(edge, tally)| (edge.clone(), tally.rows))
        .collect();
    assert_eq!(counted, produced, "{over_lake}");

    // `appliance status` on a hub lists its edges.
    let screen = cli_json(west.hub(), west.root(), &["status", "--json"])?;
    assert_eq!(screen["role"], "hub", "{screen}");
    let edges: Vec<&str> = screen["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|edge| edge["edge"].as_str())
        .collect();
    assert_eq!(edges, ["west-1", "west-2"], "{screen}");

    // The secret is a reference wherever the export is stored or answered.
    let said = status["storage"].to_string();
    assert!(said.contains("${env:APPLIANCE_SECRET_S3_KEY}"), "{said}");
    assert!(!said.contains(S3_SECRET), "{said}");
    for fleet in [&east, &west] {
        assert!(
            !found_in_files(&fleet.root().join("hub-data"), S3_SECRET.as_bytes())?,
            "the S3 secret is in the hub's files"
        );
        assert!(
            !fleet.hub().log_text().contains(S3_SECRET),
            "the S3 secret is in the log"
        );
    }
    Ok(())
}
