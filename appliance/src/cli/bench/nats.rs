//! The peer an operator would pick instead: NATS JetStream with file storage, run from the
//! machine's own `nats-server` on loopback and driven by the async-nats client with the same
//! record size, concurrency and acknowledged publishes as the appliance's bench.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::NatsFigures;

/// Publishes one publisher sends before awaiting their acknowledgements.
const PUBLISH_WINDOW: usize = 256;
/// The NATS measurement is abandoned (and reported) if it takes longer than this beyond its
/// publishing time: a bench must end.
const GRACE: Duration = Duration::from_secs(60);

/// A `nats-server` child process, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `nats-server` can be run here.
pub fn available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the same workload against JetStream: `publishers` concurrent publishers of
/// `record_bytes`-byte messages for `duration`, each awaiting its acknowledgements, then one
/// pull consumer reading everything back.
pub async fn measure(
    dir: &Path,
    publishers: usize,
    record_bytes: usize,
    duration: Duration,
) -> anyhow::Result<NatsFigures> {
    tokio::time::timeout(
        duration + GRACE,
        run(dir, publishers, record_bytes, duration),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "NATS JetStream did not finish within {:?}",
            duration + GRACE
        )
    })?
}

async fn run(
    dir: &Path,
    publishers: usize,
    record_bytes: usize,
    duration: Duration,
) -> anyhow::Result<NatsFigures> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let store = dir.join("nats");
    let _server = Server(
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?,
    );
    let client = connect(port).await?;
    let context = jetstream::new(client);
    let stream = context
        .get_or_create_stream(stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the JetStream stream: {e}"))?;
    tracing::debug!("JetStream stream created");

    let payload = Bytes::from(vec![b'x'; record_bytes]);
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for publisher in 0..publishers {
        let context = context.clone();
        let payload = payload.clone();
        let published = published.clone();
        tasks.spawn(async move {
            let subject = format!("bench.{publisher}");
            while Instant::now() < deadline {
                let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
                for _ in 0..PUBLISH_WINDOW {
                    acks.push(context.publish(subject.clone(), payload.clone()).await?);
                }
                for ack in acks {
                    ack.await?;
                }
                published.fetch_add(PUBLISH_WINDOW as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined?.map_err(|e| anyhow::anyhow!("publishing to JetStream: {e}"))?;
    }
    let published = published.load(Ordering::Relaxed);
    tracing::debug!(published, "JetStream publishing done");
    let publish_rps = published as f64 / started.elapsed().as_secs_f64();

    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the JetStream consumer: {e}"))?;
    tracing::debug!("JetStream consumer created");
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(PUBLISH_WINDOW)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("consuming from JetStream: {e}"))?;
    let mut consumed = 0u64;
    while consumed < published {
        match messages.next().await {
            Some(message) => {
                message.map_err(|e| anyhow::anyhow!("consuming from JetStream: {e}"))?;
                consumed += 1;
            }
            None => break,
        }
    }
    Ok(NatsFigures {
        publish_rps,
        consume_rps: consumed as f64 / started.elapsed().as_secs_f64(),
    })
}

async fn connect(port: u16) -> anyhow::Result<async_nats::Client> {
    let started = Instant::now();
    loop {
        match async_nats::connect(format!("127.0.0.1:{port}")).await {
            Ok(client) => return Ok(client),
            Err(error) if started.elapsed() > Duration::from_secs(10) => {
                return Err(anyhow::anyhow!("nats-server did not come up: {error}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
