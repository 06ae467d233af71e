//! Chaos: a hub and two edges, each edge with a producer, edge-1 with a pipeline and its data
//! on a small disk, edge-2 behind a lossy UDP proxy, and a live query on the hub, while a
//! seeded random schedule SIGKILLs and restarts processes, cuts and rebinds edge-2's uplink,
//! pauses and resumes links and the pipeline, and fills and frees edge-1's disk. Afterwards:
//! every acknowledged record is on its edge at its offset and byte-identical at the same
//! offset on the hub, the pipeline's output holds every input record exactly once, every
//! daemon answers, the live query follows the hub, and no daemon burns CPU while idle.
//!
//! `CHAOS_SECONDS` (default 30) sets how long the schedule runs and `CHAOS_SEED` replays one:
//! `CHAOS_SECONDS=600 cargo test -p appliance-e2e --test chaos -- --nocapture` for a long run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use appliance_e2e::Channel;
use appliance_e2e::cluster::{assert_identical, wait_mirrored};
use appliance_e2e::{Daemon, Deadline, Deployment, SmallDisk, cli_ok, fetch_all};
use appliance_proto::v1 as pb;
use appliance_proto::v1::query_client::QueryClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use lossy_udp::{Impairment, Proxy};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::task::JoinHandle;

const EDGES: [&str; 2] = ["edge-1", "edge-2"];
const PARTITIONS: u32 = 2;
const LIVE_SQL: &str = "SELECT count(*) AS n FROM sensors";

/// A small xorshift generator: the schedule is replayed from its seed.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The value of record `n` of an edge's partition: JSON the pipeline can take apart again.
fn value(edge: &str, partition: u32, n: u64) -> String {
    format!(
        r#"{{"edge":"{edge}","partition":{partition},"n":{n},"temp":{}}}"#,
        n % 40
    )
}

/// Where a daemon's gRPC API is now (it moves when the daemon is restarted) and its token.
#[derive(Clone, Default)]
struct Address(Arc<Mutex<(String, String)>>);

impl Address {
    fn set(&self, daemon: &Daemon) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            (daemon.grpc_url.clone(), daemon.token.clone());
    }

    async fn channel(&self) -> Option<Channel> {
        let (url, token) = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        appliance_e2e::connect(&url, &token).await.ok()
    }
}

/// A record the producer got acknowledged: partition, offset, value.
type Acked = (u32, u64, String);

/// Produces to both partitions of `sensors` in turn until stopped; an error (the edge killed,
/// its disk full) is retried with the next records after a pause and a new connection.
fn producer(edge: &'static str, address: Address, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Acked>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut next = [0u64; PARTITIONS as usize];
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            let Some(records) = client.as_mut() else {
                client = address.channel().await.map(RecordsClient::new);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for partition in 0..PARTITIONS {
                let numbers = next[partition as usize]..next[partition as usize] + 25;
                next[partition as usize] = numbers.end;
                let values: Vec<String> = numbers.map(|n| value(edge, partition, n)).collect();
                let request = pb::ProduceRequest {
                    topic: "sensors".into(),
                    partition: Some(partition),
                    records: values
                        .iter()
                        .map(|v| pb::Record {
                            value: Some(v.clone().into_bytes().into()),
                            ..Default::default()
                        })
                        .collect(),
                };
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), records.produce(request)).await;
                match answer {
                    Ok(Ok(response)) => {
                        for (position, value) in response.into_inner().positions.iter().zip(values)
                        {
                            acked.push((position.partition, position.offset, value));
                        }
                    }
                    _ => {
                        client = None;
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        acked
    })
}

/// Follows `LIVE_SQL` on the hub, starting again whenever the stream ends (the hub killed);
/// the newest count it saw.
fn live_query(
    address: Address,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Option<u64>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Some(channel) = address.channel().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let followed = QueryClient::new(channel)
                .follow(pb::ExecuteRequest {
                    sql: LIVE_SQL.into(),
                    ..Default::default()
                })
                .await;
            let Ok(stream) = followed else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(answer)) = stream.message().await {
                let rows: Value = serde_json::from_str(&answer.json).unwrap_or_default();
                let count = rows[0]["n"].as_u64();
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = count;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
    })
}

struct Cluster {
    deployment: Deployment,
    /// None only while the hub is restarted.
    hub: Option<Daemon>,
    edges: BTreeMap<&'static str, Daemon>,
    addresses: BTreeMap<&'static str, Address>,
    proxy: Proxy,
}

impl Cluster {
    fn root(&self) -> &Path {
        self.deployment.root()
    }

    fn hub(&self) -> &Daemon {
        self.hub.as_ref().expect("the hub runs")
    }

    fn restart_hub(&mut self) -> anyhow::Result<()> {
        self.hub
            .take()
            .context("the hub runs")?
            .stop_with(Signal::SIGKILL)?;
        let hub = self.deployment.start_hub()?;
        self.addresses["hub"].set(&hub);
        self.hub = Some(hub);
        Ok(())
    }

    fn kill_and_restart_edge(&mut self, name: &'static str) -> anyhow::Result<()> {
        let edge = self.edges.remove(name).context("an edge")?;
        edge.stop_with(Signal::SIGKILL)?;
        let edge = self.deployment.start_edge(name, PARTITIONS)?;
        self.addresses[name].set(&edge);
        self.edges.insert(name, edge);
        Ok(())
    }

    fn cli(&self, daemon: &str, args: &[&str]) -> anyhow::Result<String> {
        let daemon = if daemon == "hub" {
            self.hub()
        } else {
            &self.edges[daemon]
        };
        cli_ok(daemon, self.root(), args, b"")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kills_cuts_pauses_and_a_full_disk() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("chaos for {seconds} s with CHAOS_SEED={seed}");
    let mut schedule = Schedule(seed);

    let deployment = Deployment::new(&EDGES)?.with_edge_idle_timeout_ms(2000);
    let disk = SmallDisk::mount(&deployment.path("edge-1-data"), 160);
    if disk.is_none() {
        eprintln!("no tmpfs could be mounted (not root?): edge-1's disk is not filled");
    }
    let hub = deployment.start_hub()?;
    let proxy = Proxy::start(
        "127.0.0.1:0".parse()?,
        deployment.hub_addr().parse()?,
        Impairment {
            loss: 0.02,
            delay: Duration::from_millis(2),
            seed,
        },
    )
    .await?;
    let mut cluster = Cluster {
        addresses: ["hub", "edge-1", "edge-2"]
            .into_iter()
            .map(|name| (name, Address::default()))
            .collect(),
        edges: BTreeMap::new(),
        hub: Some(hub),
        proxy,
        deployment,
    };
    cluster.addresses["hub"].set(cluster.hub());
    for name in EDGES {
        let edge = cluster.deployment.start_edge(name, PARTITIONS)?;
        cluster.addresses[name].set(&edge);
        let hub_addr = if name == "edge-2" {
            cluster.proxy.local_addr().to_string()
        } else {
            cluster.deployment.hub_addr()
        };
        cluster.deployment.link(&edge, name, &hub_addr, &[])?;
        cluster.edges.insert(name, edge);
    }
    cluster.cli(
        "edge-1",
        &[
            "pipeline",
            "create",
            "clean",
            "--from",
            "sensors",
            "--to",
            "sensors-clean",
            "--transform",
            "insert-field:static.field=site,static.value=edge-1",
        ],
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<(&str, JoinHandle<Vec<Acked>>)> = EDGES
        .into_iter()
        .map(|name| {
            (
                name,
                producer(name, cluster.addresses[name].clone(), stop.clone()),
            )
        })
        .collect();
    let live_count = Arc::new(Mutex::new(None));
    let live_stop = Arc::new(AtomicBool::new(false));
    let live = live_query(
        cluster.addresses["hub"].clone(),
        live_stop.clone(),
        live_count.clone(),
    );

    let started = Instant::now();
    let mut done = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(schedule.millis(500, 2000)).await;
        let action = schedule.below(8);
        let what = match action {
            0 => {
                cluster.restart_hub()?;
                "SIGKILL the hub"
            }
            1 | 2 => {
                let name = EDGES[(action - 1) as usize];
                cluster.kill_and_restart_edge(name)?;
                if name == "edge-1" {
                    "SIGKILL edge-1"
                } else {
                    "SIGKILL edge-2"
                }
            }
            3 => {
                cluster.proxy.set_blackhole(true);
                tokio::time::sleep(schedule.millis(300, 3000)).await;
                cluster.proxy.set_blackhole(false);
                "cut edge-2's uplink"
            }
            4 => {
                cluster.proxy.rebind().await?;
                "rebind edge-2's uplink"
            }
            5 => {
                let name = EDGES[schedule.below(2) as usize];
                cluster.cli(name, &["link", "pause", appliance_e2e::LINK])?;
                tokio::time::sleep(schedule.millis(100, 1500)).await;
                cluster.cli(name, &["link", "resume", appliance_e2e::LINK])?;
                "pause and resume a link"
            }
            6 => {
                cluster.cli("edge-1", &["pipeline", "pause", "clean"])?;
                tokio::time::sleep(schedule.millis(100, 1500)).await;
                cluster.cli("edge-1", &["pipeline", "resume", "clean"])?;
                "pause and resume the pipeline"
            }
            _ => match &disk {
                Some(disk) => {
                    let filler = disk.fill()?;
                    tokio::time::sleep(schedule.millis(500, 2000)).await;
                    std::fs::remove_file(filler)?;
                    "fill and free edge-1's disk"
                }
                None => "(no disk to fill)",
            },
        };
        eprintln!("{:>6.1} s: {what}", started.elapsed().as_secs_f64());
        done.push(what);
    }
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for (name, producer) in producers {
        let acked = producer.await?;
        eprintln!("{name}: {} records acknowledged", acked.len());
        ensure!(
            !acked.is_empty(),
            "{name}'s producer got nothing acknowledged"
        );
        acknowledged.insert(name, acked);
    }

    // Every acknowledged record is on its edge at its offset.
    let hub_channel = cluster.addresses["hub"]
        .channel()
        .await
        .context("the hub")?;
    for name in EDGES {
        let channel = cluster.addresses[name].channel().await.context("an edge")?;
        let mut stored = BTreeMap::new();
        for partition in 0..PARTITIONS {
            for record in fetch_all(&channel, "sensors", partition).await? {
                stored.insert((partition, record.offset), record.value.unwrap_or_default());
            }
        }
        for (partition, offset, value) in &acknowledged[name] {
            assert_eq!(
                stored.get(&(*partition, *offset)).map(|v| &v[..]),
                Some(value.as_bytes()),
                "{name}: the record acknowledged at {partition}/{offset}"
            );
        }
        // ...and byte-identical at the same offsets on the hub.
        let mirror = format!("{name}.sensors");
        wait_mirrored(&channel, "sensors", &hub_channel, &mirror).await?;
        let compared = assert_identical(&channel, "sensors", &hub_channel, &mirror).await?;
        eprintln!("{mirror}: {compared} records identical to {name}'s");
    }

    // The pipeline's output holds every input record exactly once.
    let edge1 = cluster.addresses["edge-1"]
        .channel()
        .await
        .context("edge-1")?;
    let inputs: u64 = end_offsets(&edge1, "sensors").await?.iter().sum();
    let deadline = Deadline::new("the pipeline catching up");
    loop {
        let outputs: u64 = end_offsets(&edge1, "sensors-clean").await?.iter().sum();
        if outputs >= inputs {
            break;
        }
        deadline.pause((outputs, inputs)).await?;
    }
    let mut seen = BTreeMap::new();
    for partition in 0..end_offsets(&edge1, "sensors-clean").await?.len() as u32 {
        for record in fetch_all(&edge1, "sensors-clean", partition).await? {
            let value: Value = serde_json::from_slice(&record.value.unwrap_or_default())?;
            let key = (value["partition"].as_u64(), value["n"].as_u64());
            *seen.entry(key).or_insert(0u32) += 1;
        }
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    ensure!(
        duplicated.is_empty(),
        "records the pipeline wrote twice: {duplicated:?}"
    );
    assert_eq!(
        seen.len() as u64,
        inputs,
        "every input record once in the output"
    );

    // The live query follows the hub to the union's full count.
    let total: u64 = mirrored(&hub_channel).await?;
    let deadline = Deadline::new("the live query reaching the hub's count");
    loop {
        let now = *live_count.lock().unwrap_or_else(|e| e.into_inner());
        if now == Some(total) {
            break;
        }
        deadline.pause((now, total)).await?;
    }
    live_stop.store(true, Ordering::Relaxed);
    live.abort();

    // Every daemon answers, and none burns CPU once the work is done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let daemons: Vec<(&str, &Daemon)> = std::iter::once(("hub", cluster.hub()))
        .chain(cluster.edges.iter().map(|(name, edge)| (*name, edge)))
        .collect();
    let before: Vec<f64> = daemons
        .iter()
        .map(|(_, d)| d.cpu_seconds())
        .collect::<anyhow::Result<_>>()?;
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    for ((name, daemon), before) in daemons.iter().zip(before) {
        let used = daemon.cpu_seconds()? - before;
        let share = used / window.as_secs_f64();
        eprintln!("{name}: {:.1}% of a core while idle", share * 100.0);
        // A spinning thread would take a whole core.
        ensure!(
            share < 0.3,
            "{name} used {used:.2} s of CPU in {window:?} while idle"
        );
        let channel = cluster.addresses[*name]
            .channel()
            .await
            .context("answers")?;
        TopicsClient::new(channel)
            .list_topics(pb::ListTopicsRequest {})
            .await
            .with_context(|| format!("{name} answers"))?;
    }
    eprintln!("chaos done: {}", done.join(", "));
    drop(disk);
    Ok(())
}

/// Each partition's high watermark.
async fn end_offsets(channel: &Channel, topic: &str) -> anyhow::Result<Vec<u64>> {
    Ok(TopicsClient::new(channel.clone())
        .get_topic(pb::GetTopicRequest { name: topic.into() })
        .await?
        .into_inner()
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .collect())
}

/// Records in every edge's mirror of `sensors` on the hub.
async fn mirrored(hub: &Channel) -> anyhow::Result<u64> {
    let mut total = 0;
    for name in EDGES {
        total += end_offsets(hub, &format!("{name}.sensors"))
            .await?
            .iter()
            .sum::<u64>();
    }
    Ok(total)
}
