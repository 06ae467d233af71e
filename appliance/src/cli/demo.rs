//! `appliance demo`: the whole product in one command, with nothing installed. A hub and
//! three edges run in this process, each a full appliance on its own data directory and
//! loopback ports; the demo drives them over gRPC as an operator would:
//!
//! ```text
//! edge-N: generator connector (synthetic readings) -> insert-field transform (site) -> readings
//!         -> pipeline `downsample` (window-aggregate: per sensor and window, count, avg, min,
//!            max) -> downsampled
//!         -> link (QUIC, mTLS with certificates made for the demo) -> hub: edge-N.downsampled
//! hub:    every second, SQL over the table `downsampled` (every edge's mirror) -> a live
//!         table, and the bytes the links carried beside the raw readings' bytes
//! ```
//!
//! Only the aggregates cross the uplink: the raw readings stay on the edge.
//!
//! Ctrl-C (or `--seconds`) stops everything cleanly; the data directories go with a
//! temporary `--dir` (the default) and stay in one the operator named.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use appliance_proto::v1 as pb;
use appliance_proto::v1::connectors_client::ConnectorsClient;
use appliance_proto::v1::links_client::LinksClient;
use appliance_proto::v1::pipelines_client::PipelinesClient;
use appliance_proto::v1::query_client::QueryClient;
use appliance_proto::v1::topics_client::TopicsClient;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::client::{ApiChannel, Local};
use super::links::allow_edge_mirrors;
use super::query::render_table;
use crate::app::{self, Running};
use crate::config::Config;
use crate::link::{EdgeId, Role};
use crate::security::certs;

const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
/// The edges' output: one record per sensor and window.
const DOWNSAMPLED: &str = "downsampled";
const SQL: &str = "SELECT _edge AS edge, site, sum(\"count\") AS readings, count(*) AS windows, \
    round(sum(avg_temp * \"count\") / sum(\"count\"), 2) AS avg_temp, \
    round(max(max_temp), 2) AS max_temp, to_timestamp_millis(max(window_end)) AS latest \
    FROM downsampled GROUP BY _edge, site ORDER BY _edge";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the hub's and the edges' data go [default: a temporary directory, removed after].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Readings each edge's generator makes per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Stop after this many seconds [default: at Ctrl-C].
    #[arg(long)]
    seconds: Option<u64>,
    /// The windows each edge downsamples its readings to, per sensor.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    window: Duration,
}

/// Where to watch the demo in a browser: the hub's console, and the token to sign in with.
fn console_line(hub: &Running) -> String {
    let Some(addr) = hub.console_addr else {
        return String::new();
    };
    let token = hub
        .admin_token_file
        .as_ref()
        .map(|file| format!(" (sign in with the token in {})", file.display()))
        .unwrap_or_default();
    format!("the hub's web console: http://{addr}/{token}\n")
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("appliance-demo-")
                .tempdir()?;
            (temporary.path().to_path_buf(), Some(temporary))
        }
    };
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        std::fs::create_dir_all(&certs)?;
        certs::init(&certs, &[])?;
        for edge in EDGES {
            certs::issue_client(&certs, EdgeId::new(edge)?.as_str())?;
        }
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });

    println!(
        "appliance demo: a hub and {} edges in this process, data in {}",
        EDGES.len(),
        dir.display()
    );
    let hub = start(&dir, "hub", Some(&certs), &shutdown).await?;
    let hub_link = hub.link_addr.context("the hub has no link endpoint")?;
    let hub_channel = Local::of(&hub)?.connect().await?;
    for edge in EDGES {
        allow_edge_mirrors(hub_channel.clone(), edge).await?;
    }
    let mut edges = Vec::new();
    for (n, edge) in EDGES.iter().enumerate() {
        let running = start(&dir, edge, None, &shutdown).await?;
        let channel = Local::of(&running)?.connect().await?;
        configure_edge(channel, edge, n, &certs, hub_link, args.rate, args.window).await?;
        edges.push(running);
    }
    let window = humantime::format_duration(args.window);
    let intro = format!(
        "each edge: generator ({} readings/s) -> insert-field (site) -> readings\n\
         \x20 -> pipeline downsample (window-aggregate: per sensor and {window} window: count, avg, min, max) -> {DOWNSAMPLED}\n\
         \x20 -> link to the hub at {hub_link}: only the aggregates cross the uplink\n\
         the hub, every second: {SQL}\n{console}",
        args.rate,
        console = console_line(&hub),
    );
    let mut edge_channels = Vec::new();
    for running in &edges {
        edge_channels.push(Local::of(running)?.connect().await?);
    }
    println!("{intro}");
    let terminal = std::io::stdout().is_terminal();

    let mut query = QueryClient::new(Local::of(&hub)?.connect().await?);
    let deadline = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shown = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        shown += 1;
        let answer = query
            .execute(pb::ExecuteRequest {
                sql: SQL.to_owned(),
                format: pb::AnswerFormat::Arrow.into(),
            })
            .await;
        let table = match answer {
            Ok(answer) => render_table(&answer.into_inner())
                .map_err(|_| anyhow::anyhow!("the hub's answer did not decode"))?,
            Err(status) if status.code() == tonic::Code::NotFound => {
                format!(
                    "waiting for the edges' first {window} windows to close and reach the hub..."
                )
            }
            Err(status) => format!("the query failed: {}", status.message()),
        };
        // On a terminal the table updates in place; piped, each second is printed in turn.
        if terminal {
            println!("\x1b[2J\x1b[H{intro}");
        }
        let uplink = match uplink_bytes(&edge_channels).await {
            Ok((linked, raw)) => format!(
                "the links carried {linked} bytes for {raw} bytes of raw readings{}",
                if linked > 0 {
                    format!(" ({:.0}x less)", raw as f64 / linked as f64)
                } else {
                    String::new()
                }
            ),
            Err(error) => format!("uplink bytes unavailable: {error:#}"),
        };
        println!("[{shown} s] readings per edge on the hub (Ctrl-C to stop)\n{table}\n{uplink}\n");
    }

    shutdown.cancel();
    for running in std::iter::once(hub).chain(edges) {
        running.stopped().await?;
    }
    println!("demo stopped");
    drop(temporary);
    Ok(())
}

/// The bytes the edges' links sent to the hub, and the bytes of the raw readings they keep.
async fn uplink_bytes(edges: &[ApiChannel]) -> anyhow::Result<(u64, u64)> {
    let (mut linked, mut raw) = (0, 0);
    for channel in edges {
        let link = LinksClient::new(channel.clone())
            .get_link(pb::GetLinkRequest {
                name: "to-hub".to_owned(),
            })
            .await?
            .into_inner();
        linked += link.partitions.iter().map(|p| p.bytes).sum::<u64>();
        let readings = TopicsClient::new(channel.clone())
            .get_topic(pb::GetTopicRequest {
                name: "readings".to_owned(),
            })
            .await?
            .into_inner();
        raw += readings
            .partitions
            .iter()
            .map(|p| p.size_bytes)
            .sum::<u64>();
    }
    Ok((linked, raw))
}

/// Starts one appliance of the demo on its own data directory and loopback ports; the hub
/// also listens for links.
async fn start(
    dir: &Path,
    name: &str,
    hub_certs: Option<&Path>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Running> {
    let mut config = Config {
        data_dir: dir.join(name),
        ..Config::default()
    };
    config.api.grpc_addr = ([127, 0, 0, 1], 0).into();
    config.api.metrics_addr = ([127, 0, 0, 1], 0).into();
    config.api.console_addr = ([127, 0, 0, 1], 0).into();
    config.kafka.addr = ([127, 0, 0, 1], 0).into();
    if let Some(certs) = hub_certs {
        config.link.role = Role::Hub;
        config.link.addr = ([127, 0, 0, 1], 0).into();
        config.link.ca = Some(certs.join("ca.pem"));
        config.link.cert = Some(certs.join("hub.pem"));
        config.link.key = Some(certs.join("hub.key"));
    }
    config.validate()?;
    app::start(config, shutdown.child_token())
        .await
        .with_context(|| format!("starting the demo's {name}"))
}

/// The edge's generator connector, its downsampling pipeline and its link to the hub, unless
/// they exist from an earlier run in the same `--dir`.
async fn configure_edge(
    channel: ApiChannel,
    edge: &str,
    n: usize,
    certs: &Path,
    hub_link: std::net::SocketAddr,
    rate: u32,
    window: Duration,
) -> anyhow::Result<()> {
    let entry = |key: &str, value: String| pb::ConfigEntry {
        key: key.to_owned(),
        value,
    };
    let created = ConnectorsClient::new(channel.clone())
        .create_connector(pb::CreateConnectorRequest {
            name: "readings".to_owned(),
            plugin: "generator".to_owned(),
            topic: "readings".to_owned(),
            config: vec![
                entry("rate", rate.to_string()),
                entry("sensors", "5".to_owned()),
            ],
            tasks: 1,
            transforms: vec![pb::Transform {
                plugin: "insert-field".to_owned(),
                config: vec![
                    entry("static.field", "site".to_owned()),
                    entry("static.value", format!("plant-{}", n + 1)),
                ],
            }],
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => anyhow::bail!("{edge}: creating the generator: {}", status.message()),
    }
    let size = format!("{}ms", window.as_millis());
    let settings = [
        ("window", "tumbling"),
        ("size", size.as_str()),
        ("grace", "2s"),
        ("group-by", "site;sensor"),
        ("aggregates", "count;avg(temp);min(temp);max(temp)"),
        ("late-topic", "readings.late"),
    ];
    let created = PipelinesClient::new(channel.clone())
        .create_pipeline(pb::CreatePipelineRequest {
            name: "downsample".to_owned(),
            from_topic: "readings".to_owned(),
            to_topic: DOWNSAMPLED.to_owned(),
            transforms: vec![pb::Transform {
                plugin: "window-aggregate".to_owned(),
                config: settings
                    .iter()
                    .map(|(key, value)| entry(key, (*value).to_owned()))
                    .collect(),
            }],
            errors: pb::ErrorPolicy::Fail.into(),
            dlq_topic: String::new(),
        })
        .await;
    match created {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => anyhow::bail!("{edge}: creating the pipeline: {}", status.message()),
    }
    let file = |name: &str| certs.join(name).display().to_string();
    let mut links = LinksClient::new(channel);
    // The hub listens on a new port each run: a link kept from an earlier run is made anew.
    let _ = links
        .delete_link(pb::DeleteLinkRequest {
            name: "to-hub".to_owned(),
        })
        .await;
    links
        .create_link(pb::CreateLinkRequest {
            name: "to-hub".to_owned(),
            hub: hub_link.to_string(),
            topics: DOWNSAMPLED.to_owned(),
            ca: file("ca.pem"),
            cert: file(&format!("{edge}.pem")),
            key: file(&format!("{edge}.key")),
            ..Default::default()
        })
        .await
        .map_err(|status| anyhow::anyhow!("{edge}: linking to the hub: {}", status.message()))?;
    Ok(())
}
