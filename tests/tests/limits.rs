//! The bounds a real `appliance run` process keeps against clients that take too much: SQL
//! that would need more memory than `[query]` allows, or whose client went away; TCP
//! connections past `api.max-connections`, silent ones, and an accept loop at the open-file
//! limit.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use appliance_e2e::Channel;
use appliance_e2e::{Daemon, Deadline, cli_ok, closed_by_server};
use appliance_proto::v1 as pb;
use appliance_proto::v1::query_client::QueryClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use tonic::Code;

/// Starts a daemon in `dir` with `config` as its configuration file.
fn start_with_config(dir: &Path, config: &str) -> anyhow::Result<Daemon> {
    let path = dir.join("appliance.toml");
    std::fs::write(&path, config)?;
    tokio::task::block_in_place(|| {
        Daemon::start_on_free_ports(dir, &["--config", path.to_str().context("utf-8 path")?])
    })
}

/// Creates `topic` with one partition and produces `count` records of about 1.2 KB each.
async fn fill(channel: &Channel, topic: &str, count: usize) -> anyhow::Result<()> {
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: topic.into(),
            config: Some(pb::TopicConfig {
                partitions: Some(1),
                ..Default::default()
            }),
        })
        .await?;
    let padding = "x".repeat(1200);
    let records: Vec<pb::Record> = (0..count)
        .map(|n| pb::Record {
            key: None,
            value: Some(
                format!(r#"{{"n":{n},"padding":"{padding}"}}"#)
                    .into_bytes()
                    .into(),
            ),
            headers: vec![],
            timestamp_ms: 0,
        })
        .collect();
    // Batches well within the topic's max-message-bytes (1 MiB).
    for batch in records.chunks(500) {
        RecordsClient::new(channel.clone())
            .produce(pb::ProduceRequest {
                topic: topic.into(),
                partition: Some(0),
                records: batch.to_vec(),
            })
            .await?;
    }
    Ok(())
}

fn sql(statement: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        sql: statement.into(),
        format: pb::AnswerFormat::Json.into(),
    }
}

const ENDLESS_JOIN: &str =
    "SELECT count(*) FROM readings a CROSS JOIN readings b CROSS JOIN readings c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_stay_within_their_memory_and_stop_when_their_client_goes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = start_with_config(
        dir.path(),
        "[query]\nmemory-mb = 16\nmax-concurrent = 1\ntimeout-ms = 10000\n",
    )?;
    let channel = daemon.channel().await?;
    fill(&channel, "readings", 4000).await?;
    let mut query = QueryClient::new(channel.clone()).max_decoding_message_size(usize::MAX);

    // 16 million rows of answer: refused once the answer passes the query's memory.
    let refused = query
        .execute(sql("SELECT a.n, b.n FROM readings a CROSS JOIN readings b"))
        .await
        .expect_err("the self join's answer exceeds 16 MiB");
    ensure!(refused.code() == Code::ResourceExhausted, "{refused:?}");
    ensure!(refused.message().contains("query.memory-mb"), "{refused:?}");

    // 64 billion rows to count: past the time limit.
    let slow = query
        .execute(sql(ENDLESS_JOIN))
        .await
        .expect_err("the triple join cannot finish in 10 s");
    ensure!(slow.code() == Code::DeadlineExceeded, "{slow:?}");
    ensure!(slow.message().contains("query.timeout-ms"), "{slow:?}");

    // A client that gives up on the join frees the only slot long before the time limit
    // would have.
    let mut abandoning = query.clone();
    let abandoned = tokio::spawn(async move { abandoning.execute(sql(ENDLESS_JOIN)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandoned.abort();
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        query.execute(sql("SELECT count(*) AS n FROM readings")),
    )
    .await
    .context("the abandoned join still holds the only query slot")??
    .into_inner();
    ensure!(next.json == r#"[{"n":4000}]"#, "{}", next.json);

    // The CLI takes answers past gRPC's 4 MB default.
    let out = tokio::task::block_in_place(|| {
        cli_ok(
            &daemon,
            dir.path(),
            &[
                "query",
                "--format",
                "json",
                "SELECT n, padding FROM readings",
            ],
            b"",
        )
    })?;
    ensure!(out.len() > 4 << 20, "{} bytes", out.len());
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    ensure!(rows.len() == 4000, "{} rows", rows.len());
    Ok(())
}

fn grpc_addr(daemon: &Daemon) -> &str {
    daemon.grpc_url.trim_start_matches("http://")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_silent_ones_closed_but_live_streams_kept()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = start_with_config(
        dir.path(),
        "[api]\nmax-connections = 3\nidle-timeout-ms = 1000\n",
    )?;
    let channel = daemon.channel().await?;
    fill(&channel, "readings", 1).await?;

    // A live query on one connection, silent for longer than the idle timeout.
    let mut answers = QueryClient::new(channel.clone())
        .follow(sql("SELECT count(*) AS n FROM readings"))
        .await?
        .into_inner();
    let first = answers.message().await?.context("a first answer")?;
    ensure!(first.json == r#"[{"n":1}]"#, "{}", first.json);

    let addr = grpc_addr(&daemon);
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr))
        .collect::<Result<_, _>>()?;
    let mut over_limit = TcpStream::connect(addr)?;
    ensure!(
        tokio::task::block_in_place(|| closed_by_server(&mut over_limit, Duration::from_secs(5)))?,
        "a fourth connection is closed at once"
    );
    let logged = Deadline::new("the refusal is logged");
    while !daemon.log_text().contains("connection limit reached") {
        logged.pause(daemon.log_text()).await?;
    }
    for stream in &mut silent {
        ensure!(
            tokio::task::block_in_place(|| closed_by_server(stream, Duration::from_secs(5)))?,
            "a connection that sent nothing is closed after the idle timeout"
        );
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let producer = daemon.channel().await?;
    RecordsClient::new(producer)
        .produce(pb::ProduceRequest {
            topic: "readings".into(),
            partition: Some(0),
            records: vec![pb::Record {
                value: Some(br#"{"n":1}"#.to_vec().into()),
                ..Default::default()
            }],
        })
        .await?;
    let second = tokio::time::timeout(Duration::from_secs(20), answers.message())
        .await
        .context("the live query's next answer")??
        .context("the live query ended")?;
    ensure!(second.json == r#"[{"n":2}]"#, "{}", second.json);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_the_listener_backs_off_and_recovers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = start_with_config(dir.path(), "[api]\nidle-timeout-ms = 60000\n")?;
    let open_files = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))?.count();
    let usual = soft_open_file_limit(&daemon)?;
    // Room for a few more connections, then accept fails with EMFILE.
    set_soft_open_file_limit(&daemon, open_files + 4)?;

    let addr = grpc_addr(&daemon).to_owned();
    let held: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&addr))
        .collect::<Result<_, _>>()?;
    let deadline = Deadline::new("the accept failure to be logged");
    while !daemon.log_text().contains("cannot accept connections") {
        deadline.pause(daemon.log_text()).await?;
    }
    let before = daemon.cpu_seconds()?;
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let share = (daemon.cpu_seconds()? - before) / window.as_secs_f64();
    eprintln!("{:.1}% of a core at the open-file limit", share * 100.0);
    ensure!(share < 0.3, "the accept loop spins: {share:.2} of a core");

    drop(held);
    set_soft_open_file_limit(&daemon, usual)?;
    let channel = daemon.channel().await?;
    TopicsClient::new(channel)
        .list_topics(pb::ListTopicsRequest {})
        .await
        .context("the API answers again once files are free")?;
    Ok(())
}

/// The process's soft limit of open files, from /proc.
fn soft_open_file_limit(daemon: &Daemon) -> anyhow::Result<usize> {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid()))?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open-file limit in /proc")?;
    Ok(line
        .split_whitespace()
        .nth(3)
        .context("a soft limit")?
        .parse()?)
}

fn set_soft_open_file_limit(daemon: &Daemon, limit: usize) -> anyhow::Result<()> {
    let set = Command::new("prlimit")
        .arg(format!("--pid={}", daemon.pid()))
        .arg(format!("--nofile={limit}:"))
        .status()
        .context("prlimit (util-linux)")?;
    ensure!(set.success(), "prlimit failed: {set}");
    Ok(())
}
