//! `appliance bench footprint`: what an edge costs a gateway. This binary runs as two separate
//! processes, a hub and an edge, as on real machines; the edge holds 10 topics, 2 pipelines
//! (the built-in filter and mask-field), 1 connector (the built-in generator) and 1 link to
//! the hub (its three busy topics). Measured, beside the binary's size:
//!
//! 1. idle RSS: the edge with every component created and the generator stopped, settled;
//! 2. startup: a restart of the edge until it tells systemd it is ready (`READY=1` on
//!    `NOTIFY_SOCKET`), its plugins compiled and cached by the first run;
//! 3. RSS under load: the generator at `--rate` records/s through both pipelines and the link
//!    for `--load-seconds`, sampled every `--sample-seconds`; growth compares the mean of the
//!    last fifth of the samples with the first fifth's (after a warm-up of one sample).
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
    idle_rss_kib: u64,
    startup_ms: f64,
    first_startup_ms: f64,
    load_rss_kib: Vec<u64>,
    load_rss_growth_percent: f64,
    load_records: u64,
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
        "binary:                      {:>8.1} MB ({})",
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
    let idle_rss = edge.rss_kib()?;
    println!(
        "idle RSS:                    {:>8.1} MB",
        idle_rss as f64 / 1024.0
    );

    edge.stop()?;
    let edge = Appliance::start(&exe, root, "edge", &edge_args)?;
    let startup = edge.ready_after;
    println!(
        "startup to ready:            {:>8.0} ms (first start, empty: {:.0} ms)",
        startup.as_secs_f64() * 1e3,
        first_startup.as_secs_f64() * 1e3
    );

    let channel = edge.local()?.connect().await?;
    let before = generated(channel.clone()).await?;
    pause_generator(channel.clone(), false).await?;
    let mut samples = Vec::new();
    let started = Instant::now();
    let every = Duration::from_secs(args.sample_seconds.max(1));
    while started.elapsed() < Duration::from_secs(args.load_seconds) {
        tokio::time::sleep(every).await;
        samples.push(edge.rss_kib()?);
    }
    let records = generated(channel).await?.saturating_sub(before);
    let growth = growth_percent(&samples);
    println!(
        "RSS under load:              {:>8.1} MB at the end, {:.1} MB at most, {growth:+.1}% \
         from the first to the last fifth ({} samples over {} s, {records} records, {:.0}/s)",
        samples.last().copied().unwrap_or(0) as f64 / 1024.0,
        samples.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        samples.len(),
        args.load_seconds,
        records as f64 / started.elapsed().as_secs_f64()
    );
    edge.stop()?;
    hub.stop()?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&Footprint {
                binary_bytes,
                idle_rss_kib: idle_rss,
                startup_ms: startup.as_secs_f64() * 1e3,
                first_startup_ms: first_startup.as_secs_f64() * 1e3,
                load_rss_kib: samples,
                load_rss_growth_percent: growth,
                load_records: records,
            })?
        );
    }
    Ok(())
}

/// The mean of the last fifth of `samples` over the first fifth's, in percent; the first
/// sample (warm-up) is left out.
fn growth_percent(samples: &[u64]) -> f64 {
    let samples = samples.get(1..).unwrap_or_default();
    let fifth = (samples.len() / 5).max(1);
    if samples.len() < 2 {
        return 0.0;
    }
    let mean = |part: &[u64]| part.iter().sum::<u64>() as f64 / part.len() as f64;
    let first = mean(&samples[..fifth]);
    let last = mean(&samples[samples.len() - fifth..]);
    (last / first - 1.0) * 100.0
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
            .args(["--kafka-addr", "127.0.0.1:0"])
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

    /// Resident set size, from /proc.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .context("no VmRSS in /proc/PID/status")?
            .parse()
            .context("VmRSS")
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
