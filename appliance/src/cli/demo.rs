//! `appliance demo`: the whole product in one command, with nothing installed. A hub and
//! three edges run in this process, each a full appliance on its own data directory and
//! loopback ports; the demo drives them over gRPC as an operator would:
//!
//! ```text
//! edge-N: generator connector (synthetic readings) -> insert-field transform (site) -> readings
//!         -> link (QUIC, mTLS with certificates made for the demo) -> hub: edge-N.readings
//! hub:    every second, SQL over the table `readings` (every edge's mirror) -> a live table
//! ```
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
use appliance_proto::v1::query_client::QueryClient;
use appliance_proto::v1::security_client::SecurityClient;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::client::{ApiChannel, Local};
use super::query::render_table;
use crate::app::{self, Running};
use crate::config::Config;
use crate::link::{EdgeId, Role};
use crate::security::certs;

const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const SQL: &str = "SELECT _edge AS edge, site, count(*) AS readings, \
    round(avg(temp), 2) AS avg_temp, round(max(temp), 2) AS max_temp, \
    max(_timestamp) AS latest FROM readings GROUP BY _edge, site ORDER BY _edge";

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
    allow_edges(Local::of(&hub)?.connect().await?).await?;
    let mut edges = Vec::new();
    for (n, edge) in EDGES.iter().enumerate() {
        let running = start(&dir, edge, None, &shutdown).await?;
        let channel = Local::of(&running)?.connect().await?;
        configure_edge(channel, edge, n, &certs, hub_link, args.rate).await?;
        edges.push(running);
    }
    let intro = format!(
        "each edge: generator ({} readings/s) -> insert-field (site) -> readings -> link to the hub at {hub_link}\n\
         the hub, every second: {SQL}\n",
        args.rate
    );
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
                "waiting for the edges' first readings to reach the hub...".to_owned()
            }
            Err(status) => format!("the query failed: {}", status.message()),
        };
        // On a terminal the table updates in place; piped, each second is printed in turn.
        if terminal {
            println!("\x1b[2J\x1b[H{intro}");
        }
        println!("[{shown} s] readings per edge on the hub (Ctrl-C to stop)\n{table}\n");
    }

    shutdown.cancel();
    for running in std::iter::once(hub).chain(edges) {
        running.stopped().await?;
    }
    println!("demo stopped");
    drop(temporary);
    Ok(())
}

/// Lets each edge fill its mirrors on the hub (`Edge:edge-N` may write `edge-N.*`).
async fn allow_edges(hub: ApiChannel) -> anyhow::Result<()> {
    let mut security = SecurityClient::new(hub);
    for edge in EDGES {
        security
            .create_acl(pb::Acl {
                principal: format!("Edge:{edge}"),
                resource_type: pb::ResourceType::Topic.into(),
                pattern_type: pb::PatternType::Prefixed.into(),
                pattern: format!("{edge}."),
                operation: pb::AclOperation::Write.into(),
                permission: pb::AclPermission::Allow.into(),
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!("allowing {edge} on the hub: {}", status.message())
            })?;
    }
    Ok(())
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

/// The edge's generator connector and its link to the hub, unless they exist from an earlier
/// run in the same `--dir`.
async fn configure_edge(
    channel: ApiChannel,
    edge: &str,
    n: usize,
    certs: &Path,
    hub_link: std::net::SocketAddr,
    rate: u32,
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
            topics: "readings".to_owned(),
            ca: file("ca.pem"),
            cert: file(&format!("{edge}.pem")),
            key: file(&format!("{edge}.key")),
            ..Default::default()
        })
        .await
        .map_err(|status| anyhow::anyhow!("{edge}: linking to the hub: {}", status.message()))?;
    Ok(())
}
