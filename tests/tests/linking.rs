//! Cluster linking between real `appliance run` processes on loopback, driven as an operator
//! does (`appliance certs`, `appliance link`, `produce`, `consume`, `group`) and checked over
//! gRPC: every record of every mirror partition (offset, key, value, headers, timestamp) is
//! the one of its origin at the same offset.
//!
//! - One hub and three edges; edge-3 reaches the hub through a lossy UDP proxy (5% loss, a
//!   few ms of delay) on a rate-capped link, which the test cuts again and again (once for
//!   longer than the idle timeout, so the connection is lost and made anew) and rebinds while
//!   edge-3 produces. Around that: impostors refused (a certificate of another CA claiming
//!   edge-1, the hub's own certificate presented as a client's), a consumer group moving from
//!   edge-1 to the hub at the committed offsets, a hub topic sent down to every edge, mirrors
//!   refusing producers until promoted, a promoted mirror refused to its edge afterwards.
//! - The hub, then an edge, SIGKILLed while a rate-capped link catches up a backlog of
//!   21,000 records and a producer keeps writing: nothing lost, nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_e2e::Channel;
use appliance_e2e::cluster::{
    Acked, Producer, assert_identical, count, fields, hub_edge, link_status, mirrored_records,
    positions, produce, status_partitions, topic_names, wait_link_in_sync, wait_mirrored,
};
use appliance_e2e::{
    Daemon, Deadline, Deployment, LINK, cli_in_runtime, cli_ok, fetch_all, make_certs,
    start_in_runtime,
};
use appliance_proto::v1 as pb;
use lossy_udp::{Impairment, Proxy};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The link idle timeout of the edges: a longer cut loses the connection.
const IDLE_TIMEOUT_MS: u64 = 2000;

// ---------------------------------------------------------------------------------------
// One hub, three edges, one of them on a lossy, cut, rebound uplink

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_edges_mirror_record_for_record_through_loss_cuts_and_a_rebind() -> anyhow::Result<()>
{
    let deployment = Deployment::new(&["edge-1", "edge-2", "edge-3"])?
        .with_edge_idle_timeout_ms(IDLE_TIMEOUT_MS);
    let root = deployment.root();
    let hub = deployment.start_hub()?;
    let hub_channel = hub.channel().await?;

    // A hub topic that goes down to every edge as hub.commands.
    cli_ok(
        &hub,
        root,
        &["topic", "create", "commands", "--partitions", "2"],
        b"",
    )?;
    for partition in 0..2 {
        produce(&hub_channel, "commands", "hub", partition, 0..400).await?;
    }

    // Three edges, different partitions and records each.
    let layout: [(&str, u32, u64); 3] =
        [("edge-1", 3, 1200), ("edge-2", 2, 1500), ("edge-3", 3, 800)];
    let mut edges = Vec::new();
    for (name, partitions, records) in layout {
        let edge = deployment.start_edge(name, partitions)?;
        let channel = edge.channel().await?;
        for partition in 0..partitions {
            let offsets = produce(&channel, "sensors", name, partition, 0..records).await?;
            assert_eq!(offsets, (0..records).collect::<Vec<_>>());
        }
        edges.push((name, partitions, edge, channel));
    }

    // Impostors, trying all along: a certificate of another CA that claims edge-1, and the
    // hub's own server certificate presented as a client's (it names "localhost").
    make_certs(deployment.root(), "other-ca", &["edge-1"])?;
    let impostor = deployment.start_edge("impostor", 1)?;
    let impostor_channel = impostor.channel().await?;
    produce(&impostor_channel, "sensors", "impostor", 0, 0..300).await?;
    let ca = "certs/ca.pem";
    for (link, cert, key) in [
        ("stolen-id", "other-ca/edge-1.pem", "other-ca/edge-1.key"),
        ("hub-cert", "certs/hub.pem", "certs/hub.key"),
    ] {
        cli_ok(
            &impostor,
            root,
            &[
                "link",
                "create",
                link,
                "--hub",
                &deployment.hub_addr(),
                "--topics",
                "sensors",
                "--ca",
                ca,
                "--cert",
                cert,
                "--key",
                key,
            ],
            b"",
        )?;
    }

    // edge-3's uplink: 5% loss each way, 3 ms each way, cut and rebound below.
    let hub_link_addr: SocketAddr = deployment.hub_addr().parse()?;
    let proxy = Proxy::start(
        "127.0.0.1:0".parse()?,
        hub_link_addr,
        Impairment {
            loss: 0.05,
            delay: Duration::from_millis(3),
            seed: 7,
        },
    )
    .await?;
    let proxy_addr = proxy.local_addr().to_string();
    for (name, _, edge, _) in &edges {
        // edge-3's link is capped too, so that its cuts always interrupt a transfer.
        let created = if *name == "edge-3" {
            deployment.link(
                edge,
                name,
                &proxy_addr,
                &[
                    "--downstream",
                    "commands",
                    "--compression",
                    "none",
                    "--max-bytes-per-sec",
                    "200000",
                ],
            )?
        } else {
            deployment.link(
                edge,
                name,
                &deployment.hub_addr(),
                &["--downstream", "commands"],
            )?
        };
        assert!(created.contains(&format!("as edge {name}")), "{created}");
    }
    // More downstream records while the links run.
    for partition in 0..2 {
        produce(&hub_channel, "commands", "hub", partition, 400..600).await?;
    }

    // edge-3 keeps producing while its uplink is cut again and again.
    let (_, edge3_partitions, edge3, edge3_channel) = &edges[2];
    let producer = Producer::start(
        edge3_channel.clone(),
        "edge-3",
        vec![800; *edge3_partitions as usize],
        40,
        Duration::from_millis(50),
    );
    let cut = |length: Duration| {
        let (proxy, hub_channel, edge3_channel) = (&proxy, &hub_channel, edge3_channel);
        async move {
            eprintln!(
                "cut of {length:?} with {} of edge-3's {} records on the hub",
                mirrored_records(hub_channel, "edge-3.sensors").await?,
                mirrored_records(edge3_channel, "sensors").await?
            );
            proxy.set_blackhole(true);
            tokio::time::sleep(length).await;
            proxy.set_blackhole(false);
            anyhow::Ok(())
        }
    };
    // After a cut, the link works again once the hub's mirror grows (the producer and the
    // cap keep a backlog): only then does the next cut start.
    let flowing = || {
        let hub_channel = &hub_channel;
        async move {
            let from = mirrored_records(hub_channel, "edge-3.sensors").await?;
            let deadline = Deadline::new("edge-3's mirror growing after a cut");
            loop {
                let now = mirrored_records(hub_channel, "edge-3.sensors").await?;
                if now >= from + 200 {
                    return anyhow::Ok(());
                }
                deadline.pause(now).await?;
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut(Duration::from_millis(700)).await?;
    flowing().await?;
    cut(Duration::from_millis(500)).await?;
    flowing().await?;

    // A new address (NAT rebinding): the hub follows the connection there, no new session.
    let before = hub_edge(&hub, root, "edge-3")?.context("the hub lists edge-3")?;
    assert_eq!(before["connected"], true, "{before:#}");
    let before = before["address"].clone();
    let sessions = count(&edge3.log_text(), "linked to the hub");
    proxy.rebind().await?;
    let deadline = Deadline::new(format!(
        "the hub seeing edge-3 at another address than {before}"
    ));
    let after = loop {
        let seen = hub_edge(&hub, root, "edge-3")?;
        if let Some(edge) = seen.as_ref().filter(|e| e["address"] != before) {
            break edge["address"].clone();
        }
        deadline.pause(&seen).await?;
    };
    flowing().await?;
    eprintln!("edge-3 seen by the hub at {before}, after the rebind at {after}");
    assert_eq!(
        count(&edge3.log_text(), "linked to the hub"),
        sessions,
        "the connection followed the new address without a new session; edge-3:\n{}",
        edge3.log_text()
    );
    cut(Duration::from_millis(800)).await?;
    flowing().await?;

    // A cut longer than the idle timeout: the connection is given up and made anew.
    let sessions = count(&edge3.log_text(), "linked to the hub");
    cut(Duration::from_millis(IDLE_TIMEOUT_MS + 1500)).await?;
    let deadline = Deadline::new("edge-3 linking again after the long cut");
    while count(&edge3.log_text(), "linked to the hub") <= sessions {
        deadline.pause(link_status(edge3, root, LINK)?).await?;
    }
    assert!(
        edge3.log_text().contains("link to the hub lost; retrying"),
        "{}",
        edge3.log_text()
    );
    flowing().await?;
    cut(Duration::from_millis(600)).await?;
    flowing().await?;
    let (acked, failure) = producer.finish().await?;
    assert_eq!(failure, None, "edge-3's producer");
    assert!(!acked.is_empty());
    let stats = proxy.stats();
    eprintln!(
        "edge-3: {} records produced during the cuts; proxy: {stats:?}",
        acked.len()
    );
    assert!(stats.to_upstream.dropped_packets > 0 && stats.to_client.dropped_packets > 0);

    // Every mirror partition is its edge partition, record for record; no gap anywhere.
    for (name, partitions, edge, channel) in &edges {
        let mirror = format!("{name}.sensors");
        wait_mirrored(channel, "sensors", &hub_channel, &mirror).await?;
        let compared = assert_identical(channel, "sensors", &hub_channel, &mirror).await?;
        eprintln!("{mirror}: {compared} records identical");
        wait_link_in_sync(edge, root, &[("up", "sensors", *partitions as usize)]).await?;
        let seen = hub_edge(&hub, root, name)?.context("the hub lists the edge")?;
        assert_eq!(seen["connected"], true, "{seen:#}");
        for partition in status_partitions(&seen, "up", "sensors") {
            assert_eq!(partition["gap_records"], 0, "{seen:#}");
        }
    }

    // Downstream: the hub's commands on every edge as hub.commands, read-only there.
    for (name, _, edge, channel) in &edges {
        wait_mirrored(&hub_channel, "commands", channel, "hub.commands").await?;
        let compared = assert_identical(&hub_channel, "commands", channel, "hub.commands").await?;
        assert_eq!(compared, 1200, "{name}");
        wait_link_in_sync(edge, root, &[("down", "commands", 2)]).await?;
    }
    let (_, _, edge2, edge2_channel) = &edges[1];
    let refused = cli_in_runtime(
        edge2,
        root,
        &["produce", "hub.commands"],
        b"not from the hub\n",
    )?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("mirror") && stderr.contains("promote"),
        "{stderr}"
    );
    assert_identical(&hub_channel, "commands", edge2_channel, "hub.commands").await?;

    // The impostors never got in, and edge-1's mirror is edge-1's alone.
    for link in ["stolen-id", "hub-cert"] {
        let deadline = Deadline::new(format!("the impostor's link {link} retrying"));
        loop {
            let status = link_status(&impostor, root, link)?;
            if status["state"] == "retrying" && status["last_error"] != "" {
                // The edge's operator sees why, not only that the connection was lost.
                let error = status["last_error"].as_str().unwrap_or_default();
                assert!(
                    error.contains("invalid peer certificate"),
                    "{link}: {error}"
                );
                break;
            }
            deadline.pause(&status).await?;
        }
    }
    let hub_topics = topic_names(&hub_channel).await?;
    assert!(
        hub_topics.iter().all(|t| !t.starts_with("localhost.")),
        "{hub_topics:?}"
    );
    assert!(
        hub_edge(&hub, root, "localhost")?.is_none(),
        "the hub lists the hub certificate as an edge"
    );
    let hub_log = hub.log_text();
    assert!(
        hub_log.contains("invalid peer certificate: BadSignature")
            && count(&hub_log, "invalid peer certificate") >= 2,
        "the hub logs why it refused:\n{hub_log}"
    );
    let (_, _, edge1, edge1_channel) = &edges[0];
    assert_identical(edge1_channel, "sensors", &hub_channel, "edge-1.sensors").await?;
    drop(impostor);

    consumer_moves_from_edge_to_hub(&hub, edge1, edge1_channel, root).await?;

    promoted_mirror_takes_producers_at_its_end(&hub, &hub_channel, edge1, edge1_channel, root).await
}

/// Producing to edge-1's mirror on the hub is refused until `appliance link promote`; then
/// producers continue at the mirror's end, and edge-1's next session is refused the topic.
async fn promoted_mirror_takes_producers_at_its_end(
    hub: &Daemon,
    hub_channel: &Channel,
    edge1: &Daemon,
    edge1_channel: &Channel,
    root: &Path,
) -> anyhow::Result<()> {
    let refused = cli_in_runtime(hub, root, &["produce", "edge-1.sensors"], b"from the hub\n")?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("mirror") && stderr.contains("promote"),
        "{stderr}"
    );
    let ends = positions(hub_channel, "edge-1.sensors")
        .await?
        .context("mirror")?;
    let promoted = cli_ok(hub, root, &["link", "promote", "edge-1.sensors"], b"")?;
    assert!(promoted.contains("promoted edge-1.sensors"), "{promoted}");
    let produced = cli_ok(
        hub,
        root,
        &["produce", "edge-1.sensors", "--partition", "0"],
        b"hub-1\nhub-2\nhub-3\n",
    )?;
    assert_eq!(produced.trim(), "3");
    let partition0 = fetch_all(hub_channel, "edge-1.sensors", 0).await?;
    let edge1_partition0 = fetch_all(edge1_channel, "sensors", 0).await?;
    let end = ends[0].1 as usize;
    assert_eq!(partition0.len(), end + 3);
    assert_eq!(edge1_partition0.len(), end);
    for (a, b) in edge1_partition0.iter().zip(&partition0) {
        assert_eq!(fields(b), fields(a));
    }
    let added: Vec<(u64, &[u8])> = partition0[end..]
        .iter()
        .map(|r| (r.offset, r.value.as_deref().unwrap_or_default()))
        .collect();
    let end = end as u64;
    assert_eq!(
        added,
        vec![
            (end, &b"hub-1"[..]),
            (end + 1, &b"hub-2"[..]),
            (end + 2, &b"hub-3"[..])
        ]
    );

    // edge-1 writes on; in its next session the hub refuses the promoted topic, and the
    // hub's topic keeps only its own records after the mirror's end.
    produce(edge1_channel, "sensors", "edge-1", 0, end..end + 10).await?;
    cli_ok(edge1, root, &["link", "pause", LINK], b"")?;
    cli_ok(edge1, root, &["link", "resume", LINK], b"")?;
    let deadline = Deadline::new("edge-1's link showing sensors refused by the hub");
    loop {
        let status = link_status(edge1, root, LINK)?;
        let partitions = status_partitions(&status, "up", "sensors");
        let refused = partitions.len() == 3
            && partitions.iter().all(|p| {
                p["last_error"].as_str().is_some_and(|e| {
                    e.contains("refused by the peer") && e.contains("not a mirror")
                })
            });
        if status["state"] == "connected" && refused {
            break;
        }
        deadline.pause(&status).await?;
    }
    let partition0 = fetch_all(hub_channel, "edge-1.sensors", 0).await?;
    assert_eq!(partition0.len() as u64, end + 3);
    Ok(())
}

/// `appliance consume --group dash` reads half of edge-1's sensors; the same group on the
/// hub's mirror continues at the offsets the edge committed: together every record once.
async fn consumer_moves_from_edge_to_hub(
    hub: &Daemon,
    edge: &Daemon,
    edge_channel: &Channel,
    root: &Path,
) -> anyhow::Result<()> {
    let ends = positions(edge_channel, "sensors")
        .await?
        .context("sensors")?;
    let total: u64 = ends.iter().map(|(_, end)| end).sum();
    let half = total / 2;
    let consume = |daemon: &Daemon, topic: &str, max: u64| -> anyhow::Result<Vec<(u32, u64)>> {
        let max = max.to_string();
        let stdout = cli_ok(
            daemon,
            root,
            &[
                "consume",
                topic,
                "--group",
                "dash",
                "--from-beginning",
                "--max",
                &max,
                "--json",
                "--timeout-ms",
                "20000",
            ],
            b"",
        )?;
        stdout
            .lines()
            .map(|line| {
                let record: Value = serde_json::from_str(line)?;
                Ok((
                    record["partition"].as_u64().context("partition")? as u32,
                    record["offset"].as_u64().context("offset")?,
                ))
            })
            .collect()
    };
    let on_edge = consume(edge, "sensors", half)?;
    assert_eq!(on_edge.len() as u64, half);

    // The committed offsets reach the hub's group on the mirror.
    let committed = |daemon: &Daemon, topic: &str| -> anyhow::Result<BTreeMap<u64, u64>> {
        let output = cli_in_runtime(daemon, root, &["group", "describe", "dash", "--json"], b"")?;
        if !output.status.success() {
            return Ok(BTreeMap::new());
        }
        let description: Value = serde_json::from_slice(&output.stdout)?;
        Ok(description["offsets"]
            .as_array()
            .context("offsets")?
            .iter()
            .filter(|o| o["topic"] == topic)
            .filter_map(|o| Some((o["partition"].as_u64()?, o["committed_offset"].as_u64()?)))
            .collect())
    };
    let on_edge_committed = committed(edge, "sensors")?;
    assert!(!on_edge_committed.is_empty());
    let deadline = Deadline::new("the group's offsets reaching the hub");
    loop {
        let on_hub = committed(hub, "edge-1.sensors")?;
        if on_hub == on_edge_committed {
            break;
        }
        deadline.pause((&on_edge_committed, &on_hub)).await?;
    }

    let on_hub = consume(hub, "edge-1.sensors", total - half)?;
    let mut seen = BTreeSet::new();
    for position in on_edge.iter().chain(&on_hub) {
        assert!(seen.insert(*position), "{position:?} consumed twice");
    }
    let all: BTreeSet<(u32, u64)> = ends
        .iter()
        .enumerate()
        .flat_map(|(p, (start, end))| (*start..*end).map(move |o| (p as u32, o)))
        .collect();
    assert_eq!(
        seen, all,
        "edge and hub consumers together read the topic once"
    );
    eprintln!(
        "group dash: {} records on edge-1, {} on the hub",
        on_edge.len(),
        on_hub.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// SIGKILL of the hub, then of an edge, mid-transfer

/// Waits until the hub's mirror holds at least `at_least` records, to kill mid-transfer.
async fn wait_for_mirrored(hub: &Channel, mirror: &str, at_least: u64) -> anyhow::Result<u64> {
    let deadline = Deadline::new(format!("{mirror} reaching {at_least} records"));
    loop {
        let have = mirrored_records(hub, mirror).await?;
        if have >= at_least {
            return Ok(have);
        }
        deadline.pause(have).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_and_edge_killed_mid_transfer_lose_and_repeat_nothing() -> anyhow::Result<()> {
    const PARTITIONS: u32 = 3;
    const BACKLOG: u64 = 7000; // per partition, per round: 21,000 records
    let deployment = Deployment::new(&["edge-1"])?.with_edge_idle_timeout_ms(IDLE_TIMEOUT_MS);
    let root = deployment.root();
    let mut hub = deployment.start_hub()?;
    let mut hub_channel = hub.channel().await?;
    let edge_args = deployment.edge_args("edge-1", PARTITIONS)?;
    let mut edge = start_in_runtime(root, &edge_args)?;
    let mut edge_channel = edge.channel().await?;
    for partition in 0..PARTITIONS {
        produce(&edge_channel, "sensors", "edge-1", partition, 0..BACKLOG).await?;
    }
    // A cap on the link, so that the backlog takes a few seconds to cross.
    deployment.link(
        &edge,
        "edge-1",
        &deployment.hub_addr(),
        &["--compression", "none", "--max-bytes-per-sec", "1500000"],
    )?;
    let producer = Producer::start(
        edge_channel.clone(),
        "edge-1",
        vec![BACKLOG; PARTITIONS as usize],
        20,
        Duration::from_millis(100),
    );

    // The hub dies mid-transfer and comes back on its data directory and port.
    let at_kill = wait_for_mirrored(&hub_channel, "edge-1.sensors", BACKLOG / 2).await?;
    producer.wait_for(100).await?;
    let (status, _) = tokio::task::block_in_place(|| hub.stop_with(Signal::SIGKILL))?;
    assert!(!status.success());
    eprintln!(
        "hub SIGKILLed with {at_kill} of {} records mirrored",
        mirrored_records(&edge_channel, "sensors").await?
    );
    hub = deployment.start_hub()?;
    hub_channel = hub.channel().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (acked, failure) = producer.finish().await?;
    assert_eq!(failure, None, "the edge's producer");
    eprintln!(
        "{} records produced while the hub was down or catching up",
        acked.len()
    );
    wait_mirrored(&edge_channel, "sensors", &hub_channel, "edge-1.sensors").await?;
    let compared =
        assert_identical(&edge_channel, "sensors", &hub_channel, "edge-1.sensors").await?;
    eprintln!("after the hub's restart: {compared} records identical");
    wait_link_in_sync(&edge, root, &[("up", "sensors", PARTITIONS as usize)]).await?;

    // Another backlog, made while the link is paused; the edge dies mid-transfer after the
    // link resumes, while a producer writes to it.
    cli_ok(&edge, root, &["link", "pause", LINK], b"")?;
    let ends: Vec<u64> = positions(&edge_channel, "sensors")
        .await?
        .context("sensors")?
        .iter()
        .map(|(_, end)| *end)
        .collect();
    for (partition, end) in ends.iter().enumerate() {
        produce(
            &edge_channel,
            "sensors",
            "edge-1",
            partition as u32,
            *end..end + BACKLOG,
        )
        .await?;
    }
    let mut acknowledged = acked;
    let producer = Producer::start(
        edge_channel.clone(),
        "edge-1",
        ends.iter().map(|end| end + BACKLOG).collect(),
        20,
        Duration::from_millis(20),
    );
    cli_ok(&edge, root, &["link", "resume", LINK], b"")?;
    producer.wait_for(100).await?;
    let before = ends.iter().sum::<u64>();
    let at_kill = wait_for_mirrored(&hub_channel, "edge-1.sensors", before + BACKLOG / 2).await?;
    let (status, _) = tokio::task::block_in_place(|| edge.stop_with(Signal::SIGKILL))?;
    assert!(!status.success());
    let (acked, failure) = producer.finish().await?;
    eprintln!(
        "edge SIGKILLed with {at_kill} records mirrored; its producer had {} records \
         acknowledged, then: {failure:?}",
        acked.len()
    );
    acknowledged.extend(acked);

    // The edge comes back with its stored link, and the link catches up by itself.
    edge = start_in_runtime(root, &edge_args)?;
    edge_channel = edge.channel().await?;
    wait_mirrored(&edge_channel, "sensors", &hub_channel, "edge-1.sensors").await?;
    let compared =
        assert_identical(&edge_channel, "sensors", &hub_channel, "edge-1.sensors").await?;
    eprintln!("after the edge's restart: {compared} records identical");
    wait_link_in_sync(&edge, root, &[("up", "sensors", PARTITIONS as usize)]).await?;

    // Every record a producer got acknowledged is in the mirror, at its offset.
    let mut mirror: Vec<Vec<pb::ConsumedRecord>> = Vec::new();
    for partition in 0..PARTITIONS {
        mirror.push(fetch_all(&hub_channel, "edge-1.sensors", partition).await?);
    }
    for Acked {
        partition,
        offset,
        record,
    } in &acknowledged
    {
        let Some(stored) = mirror[*partition as usize].get(*offset as usize) else {
            bail!("acknowledged record {partition}/{offset} is not in the mirror");
        };
        assert_eq!(stored.offset, *offset);
        assert_eq!(
            (&stored.key, &stored.value, &stored.headers),
            (&record.key, &record.value, &record.headers),
            "{partition}/{offset}"
        );
        if record.timestamp_ms != 0 {
            assert_eq!(stored.timestamp_ms, record.timestamp_ms);
        }
    }
    eprintln!(
        "{} acknowledged records found in the mirror",
        acknowledged.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// What an edge may mirror to the hub and receive from it: its ACLs on the hub

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_takes_and_sends_only_what_an_edges_acls_allow() -> anyhow::Result<()> {
    let deployment = Deployment::new(&["plant-1"])?;
    let root = deployment.root();
    let hub = deployment.start_hub_without_acls()?;
    let hub_channel = hub.channel().await?;
    for topic in ["commands", "secrets"] {
        cli_ok(&hub, root, &["topic", "create", topic], b"")?;
        produce(&hub_channel, topic, "hub", 0, 0..5).await?;
    }
    let edge = deployment.start_edge("plant-1", 1)?;
    let edge_channel = edge.channel().await?;
    produce(&edge_channel, "sensors", "plant-1", 0, 0..20).await?;
    deployment.link(
        &edge,
        "plant-1",
        &deployment.hub_addr(),
        &["--downstream", "commands|secrets"],
    )?;

    // Nothing granted: the hub refuses the mirror, saying what would grant it, and sends
    // nothing down.
    let deadline = Deadline::new("plant-1's sensors refused by the hub");
    loop {
        let status = link_status(&edge, root, LINK)?;
        let refused = status_partitions(&status, "up", "sensors").iter().any(|p| {
            p["last_error"].as_str().is_some_and(|e| {
                e.contains("on the hub: Edge:plant-1 may not write topic \"plant-1.sensors\"")
                    && e.contains("appliance acl add")
            })
        });
        if status["state"] == "connected" && refused {
            break;
        }
        deadline.pause(&status).await?;
    }
    assert!(
        !topic_names(&hub_channel)
            .await?
            .contains(&"plant-1.sensors".to_owned())
    );
    assert!(
        topic_names(&edge_channel)
            .await?
            .iter()
            .all(|t| !t.starts_with("hub."))
    );

    // Write on its mirrors and read on `commands`: those flow from the next session on;
    // `secrets` stays on the hub.
    let grants: [&[&str]; 2] = [
        &["--topic", "plant-1.", "--prefixed", "--operation", "write"],
        &["--topic", "commands", "--operation", "read"],
    ];
    for grant in grants {
        let mut args = vec!["acl", "add", "--principal", "Edge:plant-1"];
        args.extend_from_slice(grant);
        cli_ok(&hub, root, &args, b"")?;
    }
    cli_ok(&edge, root, &["link", "pause", LINK], b"")?;
    cli_ok(&edge, root, &["link", "resume", LINK], b"")?;
    wait_mirrored(&edge_channel, "sensors", &hub_channel, "plant-1.sensors").await?;
    let deadline = Deadline::new("hub.commands on plant-1");
    while mirrored_records(&edge_channel, "hub.commands")
        .await
        .unwrap_or(0)
        < 5
    {
        deadline.pause("waiting").await?;
    }
    assert!(
        !topic_names(&edge_channel)
            .await?
            .contains(&"hub.secrets".to_owned()),
        "a hub topic the edge may not read is not sent down"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_edge_is_cut_off_and_a_new_certificate_links_again() -> anyhow::Result<()> {
    let deployment = Deployment::new(&["plant-2"])?;
    let root = deployment.root();
    let hub = deployment.start_hub()?;
    let hub_channel = hub.channel().await?;
    let edge = deployment.start_edge("plant-2", 1)?;
    let edge_channel = edge.channel().await?;
    produce(&edge_channel, "sensors", "plant-2", 0, 0..10).await?;
    deployment.link(&edge, "plant-2", &deployment.hub_addr(), &[])?;
    wait_mirrored(&edge_channel, "sensors", &hub_channel, "plant-2.sensors").await?;

    // Revoked: its session is closed within seconds and its handshakes refused after.
    cli_ok(&hub, root, &["link", "revoke", "plant-2"], b"")?;
    let deadline = Deadline::new("plant-2 cut off and refused");
    loop {
        let status = link_status(&edge, root, LINK)?;
        let edge_on_hub = hub_edge(&hub, root, "plant-2")?;
        let refused = status.to_string().contains("revoked on the hub");
        if refused && edge_on_hub.is_some_and(|e| e["connected"] == false) {
            break;
        }
        deadline.pause(&status).await?;
    }
    produce(&edge_channel, "sensors", "plant-2", 0, 10..20).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mirrored_records(&hub_channel, "plant-2.sensors").await?, 10);

    // A certificate issued after the revocation (a second later, at least) links again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for file in ["certs/plant-2.pem", "certs/plant-2.key"] {
        std::fs::remove_file(root.join(file))?;
    }
    let issued = appliance_e2e::run_to_end(root, &["certs", "issue", "plant-2", "--dir", "certs"])?;
    assert!(issued.status.success(), "{issued:?}");
    cli_ok(&edge, root, &["link", "delete", LINK], b"")?;
    deployment.link(&edge, "plant-2", &deployment.hub_addr(), &[])?;
    wait_mirrored(&edge_channel, "sensors", &hub_channel, "plant-2.sensors").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_enrolled_by_join_token_links_and_a_token_works_once() -> anyhow::Result<()> {
    let deployment = Deployment::new(&[])?;
    let root = deployment.root();
    let hub = deployment.start_hub()?;
    let hub_channel = hub.channel().await?;
    cli_ok(
        &hub,
        root,
        &[
            "acl",
            "add",
            "--principal",
            "Edge:plant-9",
            "--topic",
            "plant-9.",
            "--prefixed",
            "--operation",
            "write",
        ],
        b"",
    )?;
    let token = cli_ok(
        &hub,
        root,
        &["link", "join-token", "create", "plant-9"],
        b"",
    )?;
    let token = token.trim();
    let edge = deployment.start_edge("plant-9", 2)?;
    let edge_channel = edge.channel().await?;
    produce(&edge_channel, "sensors", "plant-9", 1, 0..50).await?;

    // The edge makes its key, the hub signs its certificate: nothing secret was copied.
    let enroll = |token: &str, dir: &str| {
        appliance_e2e::run_to_end(
            root,
            &[
                "link",
                "enroll",
                "--hub",
                &deployment.hub_addr(),
                "--join-token",
                token,
                "--dir",
                dir,
            ],
        )
    };
    let enrolled = enroll(token, "plant-9-link")?;
    let said = String::from_utf8_lossy(&enrolled.stdout);
    assert!(enrolled.status.success(), "{enrolled:?}");
    assert!(said.contains("enrolled as edge plant-9"), "{said}");
    let key = root.join("plant-9-link/plant-9.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    cli_ok(
        &edge,
        root,
        &[
            "link",
            "create",
            LINK,
            "--hub",
            &deployment.hub_addr(),
            "--topics",
            "sensors",
            "--ca",
            "plant-9-link/ca.pem",
            "--cert",
            "plant-9-link/plant-9.pem",
            "--key",
            "plant-9-link/plant-9.key",
        ],
        b"",
    )?;
    wait_mirrored(&edge_channel, "sensors", &hub_channel, "plant-9.sensors").await?;

    // A used token, an expired one and a malformed one are refused, each saying why.
    let reused = enroll(token, "again")?;
    assert!(!reused.status.success());
    assert!(
        String::from_utf8_lossy(&reused.stderr).contains("used already"),
        "{reused:?}"
    );
    let short = cli_ok(
        &hub,
        root,
        &["link", "join-token", "create", "plant-9", "--expires", "1s"],
        b"",
    )?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = enroll(short.trim(), "late")?;
    assert!(
        String::from_utf8_lossy(&expired.stderr).contains("expired"),
        "{expired:?}"
    );
    let malformed = enroll("apj_nonsense", "bad")?;
    assert!(
        String::from_utf8_lossy(&malformed.stderr).contains("apj_<id>_<secret>_<pin>"),
        "{malformed:?}"
    );
    assert!(!root.join("again").exists() && !root.join("late").exists());

    // The hub's log and audit show the token's id, never the token.
    assert!(!hub.log_text().contains(token));
    Ok(())
}
