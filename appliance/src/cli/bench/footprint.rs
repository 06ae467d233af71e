//! `appliance bench footprint`: what an edge costs a gateway. This binary runs as two separate
//! processes, a hub and an edge, as on real machines; the edge holds 10 topics, 2 pipelines
//! (the built-in filter and mask-field), 1 connector (the built-in generator) and 1 link to
//! the hub (its three busy topics). Measured, beside the binary's size:
//!
//! 1. startup: a restart of the edge until it tells systemd it is ready (`READY=1` on
//!    `NOTIFY_SOCKET`: the log recovered, every endpoint listening), its plugins compiled and
//!    cached by the first run; and until every pipeline partition runs its plugins and the
//!    link is connected to the hub;
//! 2. idle RSS of the restarted edge, every component running and the generator paused,
//!    settled (and of the first run, which compiled the plugins, for comparison);
//! 3. RSS under load: the generator at `--rate` records/s through both pipelines and the link
//!    for `--load-seconds`, sampled every `--sample-seconds`, with its anonymous part (heap,
//!    plugin memories) apart from mapped files; growth is given for the first and the second
//!    half of the run.
//!
//! Run it from the lean edge build to measure what a gateway runs (`--no-default-features`).

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use appliance_proto::v1 as pb;
use appliance_proto::v1::connectors_client::ConnectorsClient;
use appliance_proto::v1::links_client::LinksClient;
use appliance_proto::v1::pipelines_client::PipelinesClient;
use appliance_proto::v1::topics_client::TopicsClient;
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::super::client::{ApiChannel, Local};
use super::super::links::allow_edge_mirrors;
use super::scratch_dir;
use crate::security::certs;

#[derive(Debug, Args)]
pub struct FootprintBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Seconds of sustained load.
    #[arg(long, default_value_t = 300)]
    load_seconds: u64,
    /// Seconds between two RSS samples under load.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Records per second of the generator under load.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

const EDGE: &str = "edge-1";
const TOPICS: u32 = 10;
/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the idle edge is left alone before its RSS is read.
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Debug, serde::Serialize)]
struct Footprint {
    binary_bytes: u64,
    startup_ms: f64,
    all_running_ms: f64,
    first_startup_ms: f64,
    idle: Rss,
    idle_first_run: Rss,
    load: Vec<Rss>,
    load_growth_first_half_percent: f64,
    load_growth_second_half_percent: f64,
    load_records: u64,
}

/// Resident memory of a process, in KiB: all of it, and its anonymous part (heap, stacks,
/// plugin memories); the rest is mapped files (the binary's own pages first).
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Rss {
    kib: u64,
    anon_kib: u64,
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.1} MB ({:.1} MB anonymous)",
            self.kib as f64 / 1024.0,
            self.anon_kib as f64 / 1024.0
        )
    }
}

pub async fn footprint_bench(args: FootprintBenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let scratch = scratch_dir(&args.dir)?;
    let root = scratch.path();
    println!(
        "footprint bench: an edge with {TOPICS} topics, 2 pipelines, 1 connector, 1 link to a hub \
         (separate processes); {} cores, {} build",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if cfg!(feature = "hub") { "hub" } else { "edge" }
    );
    let binary_bytes = std::fs::metadata(&exe)?.len();
    println!(
        "binary:                      {:>6.1} MB ({})",
        binary_bytes as f64 / 1e6,
        exe.display()
    );

    let certs_dir = root.join("certs");
    std::fs::create_dir_all(&certs_dir)?;
    certs::init(&certs_dir, &[])?;
    certs::issue_client(&certs_dir, EDGE)?;
    let hub_link = free_udp_addr()?;
    let hub = Appliance::start(&exe, root, "hub", &hub_args(&certs_dir, hub_link))?;
    allow_edge_mirrors(hub.local()?.connect().await?, EDGE).await?;

    std::fs::write(root.join("edge.toml"), edge_config())?;
    let edge_args = [
        "--config".to_owned(),
        root.join("edge.toml").display().to_string(),
    ];
    let edge = Appliance::start(&exe, root, "edge", &edge_args)?;
    let first_startup = edge.ready_after;
    let channel = edge.local()?.connect().await?;
    configure_edge(channel.clone(), &certs_dir, hub_link, args.rate).await?;
    pause_generator(channel, true).await?;
    tokio::time::sleep(SETTLE).await;
    let idle_first_run = edge.rss()?;

    edge.stop()?;
    let edge = Appliance::start(&exe, root, "edge", &edge_args)?;
    let startup = edge.ready_after;
    let all_running = edge.ready_after + all_running(edge.local()?.connect().await?).await?;
    println!(
        "startup to ready:            {:>6.0} ms, every component running {:.0} ms (first \
         start, empty: {:.0} ms)",
        startup.as_secs_f64() * 1e3,
        all_running.as_secs_f64() * 1e3,
        first_startup.as_secs_f64() * 1e3
    );
    tokio::time::sleep(SETTLE).await;
    let idle = edge.rss()?;
    println!(
        "idle RSS:                    {idle} (first run, compiling the plugins: {idle_first_run})"
    );

    let channel = edge.local()?.connect().await?;
    let before = generated(channel.clone()).await?;
    pause_generator(channel.clone(), false).await?;
    let mut load = Vec::new();
    let started = Instant::now();
    let every = Duration::from_secs(args.sample_seconds.max(1));
    while started.elapsed() < Duration::from_secs(args.load_seconds) {
        tokio::time::sleep(every).await;
        load.push(edge.rss()?);
    }
    let records = generated(channel).await?.saturating_sub(before);
    let kib: Vec<u64> = load.iter().map(|rss| rss.kib).collect();
    let (first_half, second_half) = half_growths(&kib);
    if let Some(end) = load.last() {
        println!(
            "RSS under load:              {end} at the end, {:.1} MB at most; {first_half:+.1}% \
             in the first half, {second_half:+.1}% in the second ({} samples over {} s, {records} \
             records, {:.0}/s)",
            kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
            load.len(),
            args.load_seconds,
            records as f64 / started.elapsed().as_secs_f64()
        );
    }
    edge.stop()?;
    hub.stop()?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&Footprint {
                binary_bytes,
                startup_ms: startup.as_secs_f64() * 1e3,
                all_running_ms: all_running.as_secs_f64() * 1e3,
                first_startup_ms: first_startup.as_secs_f64() * 1e3,
                idle,
                idle_first_run,
                load,
                load_growth_first_half_percent: first_half,
                load_growth_second_half_percent: second_half,
                load_records: records,
            })?
        );
    }
    Ok(())
}

/// The change of RSS from the first sample to the middle one, and from the middle one to the
/// last, in percent.
fn half_growths(samples: &[u64]) -> (f64, f64) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return (0.0, 0.0);
    };
    let middle = samples[samples.len() / 2];
    let percent = |from: u64, to: u64| (to as f64 / from.max(1) as f64 - 1.0) * 100.0;
    (percent(*first, middle), percent(middle, *last))
}

fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn hub_args(certs: &Path, link: SocketAddr) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    [
        "--role".to_owned(),
        "hub".to_owned(),
        "--link-addr".to_owned(),
        link.to_string(),
        "--link-ca".to_owned(),
        file("ca.pem"),
        "--link-cert".to_owned(),
        file("hub.pem"),
        "--link-key".to_owned(),
        file("hub.key"),
    ]
    .into()
}

/// Ten topics of one partition, kept small by retention so a long load run does not fill
/// the disk.
fn edge_config() -> String {
    let mut config = String::from("[log]\nretention-check-interval-ms = 10000\n");
    for topic in 0..TOPICS {
        config.push_str(&format!(
            "[topics.t{topic}]\npartitions = 1\nsegment-bytes = 4194304\nretention-bytes = 33554432\n"
        ));
    }
    config
}

fn entry(key: &str, value: &str) -> pb::ConfigEntry {
    pb::ConfigEntry {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// The generator into t0, the filter t0 -> t1, mask-field t0 -> t2, and a link of t0..t2.
async fn configure_edge(
    channel: ApiChannel,
    certs: &Path,
    hub_link: SocketAddr,
    rate: u32,
) -> anyhow::Result<()> {
    ConnectorsClient::new(channel.clone())
        .create_connector(pb::CreateConnectorRequest {
            name: "readings".to_owned(),
            plugin: "generator".to_owned(),
            topic: "t0".to_owned(),
            config: vec![entry("rate", &rate.to_string()), entry("sensors", "50")],
            tasks: 1,
            ..Default::default()
        })
        .await?;
    for (name, to, plugin, config) in [
        (
            "hot",
            "t1",
            "filter",
            vec![entry("field", "temp"), entry("greater-than", "30")],
        ),
        (
            "masked",
            "t2",
            "mask-field",
            vec![entry("fields", "sensor")],
        ),
    ] {
        PipelinesClient::new(channel.clone())
            .create_pipeline(pb::CreatePipelineRequest {
                name: name.to_owned(),
                from_topic: "t0".to_owned(),
                to_topic: to.to_owned(),
                transforms: vec![pb::Transform {
                    plugin: plugin.to_owned(),
                    config,
                }],
                errors: pb::ErrorPolicy::Fail.into(),
                dlq_topic: String::new(),
            })
            .await?;
    }
    let file = |name: &str| certs.join(name).display().to_string();
    LinksClient::new(channel)
        .create_link(pb::CreateLinkRequest {
            name: "to-hub".to_owned(),
            hub: hub_link.to_string(),
            topics: "t[0-2]".to_owned(),
            ca: file("ca.pem"),
            cert: file(&format!("{EDGE}.pem")),
            key: file(&format!("{EDGE}.key")),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn pause_generator(channel: ApiChannel, pause: bool) -> anyhow::Result<()> {
    let mut connectors = ConnectorsClient::new(channel);
    let name = "readings".to_owned();
    if pause {
        connectors
            .pause_connector(pb::PauseConnectorRequest { name })
            .await?;
    } else {
        connectors
            .resume_connector(pb::ResumeConnectorRequest { name })
            .await?;
    }
    Ok(())
}

/// How long after the call every pipeline partition runs and the link is connected.
async fn all_running(channel: ApiChannel) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut pipelines = PipelinesClient::new(channel.clone());
    let mut links = LinksClient::new(channel);
    while started.elapsed() < READY_TIMEOUT {
        let listed = pipelines
            .list_pipelines(pb::ListPipelinesRequest {})
            .await?
            .into_inner()
            .pipelines;
        let running = listed.iter().all(|pipeline| {
            !pipeline.partitions.is_empty()
                && pipeline
                    .partitions
                    .iter()
                    .all(|p| p.state == pb::PipelineState::Running as i32)
        });
        let connected = links
            .list_links(pb::ListLinksRequest {})
            .await?
            .into_inner()
            .links
            .iter()
            .all(|link| link.state == pb::LinkState::Connected as i32);
        if running && connected && listed.len() == 2 {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("the edge's components did not all run within {READY_TIMEOUT:?}")
}

/// Records the generator wrote so far: t0's high watermark.
async fn generated(channel: ApiChannel) -> anyhow::Result<u64> {
    let topic = TopicsClient::new(channel)
        .get_topic(pb::GetTopicRequest {
            name: "t0".to_owned(),
        })
        .await?
        .into_inner();
    Ok(topic
        .partitions
        .iter()
        .map(|partition| partition.high_watermark)
        .sum())
}

/// One `appliance run` process with its data in `<root>/<name>`, on loopback ports.
struct Appliance {
    child: Child,
    /// Where it notifies, kept open until it stopped (it says STOPPING=1 there too).
    _notify: UnixDatagram,
    grpc: SocketAddr,
    data_dir: PathBuf,
    ready_after: Duration,
}

impl Appliance {
    /// Starts it and waits for `READY=1`, as systemd would; the status line that comes with
    /// it names the gRPC address.
    fn start(exe: &Path, root: &Path, name: &str, args: &[String]) -> anyhow::Result<Self> {
        let data_dir = root.join(name);
        let socket_path = root.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path)?;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .arg("run")
            .args(args)
            .args(["--data-dir", &data_dir.display().to_string()])
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--kafka-addr",
                "127.0.0.1:0",
                "--console-addr",
                "127.0.0.1:0",
            ])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("APPLIANCE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        socket.set_read_timeout(Some(READY_TIMEOUT))?;
        let mut buffer = [0u8; 4096];
        let message = match socket.recv(&mut buffer) {
            Ok(n) => String::from_utf8_lossy(&buffer[..n]).into_owned(),
            Err(error) => {
                let _ = child.kill();
                bail!("the {name} did not become ready: {error}");
            }
        };
        let ready_after = started.elapsed();
        let grpc = message
            .lines()
            .find_map(|line| line.strip_prefix("STATUS=serving gRPC on "))
            .and_then(|rest| rest.split(',').next())
            .with_context(|| format!("the {name}'s readiness names no address: {message:?}"))?
            .parse()?;
        Ok(Self {
            child,
            _notify: socket,
            grpc,
            data_dir,
            ready_after,
        })
    }

    fn local(&self) -> anyhow::Result<Local> {
        Local::at(self.grpc, &self.data_dir.join("admin.token"))
    }

    /// Resident set size and its anonymous part, from /proc.
    fn rss(&self) -> anyhow::Result<Rss> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.split_whitespace().next())
                .with_context(|| format!("no {name} in /proc/PID/status"))?
                .parse()
                .with_context(|| format!("{name} in /proc/PID/status"))
        };
        Ok(Rss {
            kib: field("VmRSS:")?,
            anon_kib: field("RssAnon:")?,
        })
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(mut self) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the appliance exited with {status}");
        Ok(())
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
