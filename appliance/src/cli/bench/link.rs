//! `appliance bench link`: cluster-link replication on loopback, beside the limits it runs
//! into, in one run:
//!
//! 1. Raw QUIC: one quinn stream with the link's windows and TLS 1.3, quinn's default
//!    congestion control (cubic), no log.
//! 2. The hub's durable append: 1 KiB records in batches as the edge stores them, one writer
//!    per partition, 8 partitions: the ceiling of replication on this machine.
//! 3. Replication: an edge with a backlog (1 GiB by default) across 8 partitions links to a
//!    hub; the time until the hub's mirrors are complete is the catch-up time, and the
//!    backlog over it the link's throughput: cubic and BBR without wire compression
//!    (loopback has no bandwidth to save), BBR with zstd.
//! 4. The ends on separate CPUs: the edge's threads pinned to one CPU and the hub's to
//!    another (as `taskset -c` pins two processes), the catch-up beside the hub's durable
//!    append pinned to one CPU (BBR, no compression), and what each end spends in CPU seconds
//!    per GB replicated, in `--rounds` rounds (3 by default) of the append then the catch-up,
//!    with the median of each figure: the pinned append moves by up to 2x between minutes on
//!    a shared virtual machine (docs/performance.md#cluster-links).
//!    Each end runs in a runtime of its own with one worker thread; its CPU time is what its
//!    threads used (`getrusage(RUSAGE_THREAD)`, summed as they stop).
//! 5. A lossy uplink: the same through a userspace UDP proxy dropping 2% of packets each way
//!    with 40 ms of round trip, for a fixed time: BBR with zstd wire compression and without,
//!    and cubic for comparison.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::log::{AppendFigures, append_case};
use super::{MB, median, print_header, scratch_dir};
use crate::group::Coordinator;
use crate::link::edge::{LinkSpec, Links};
use crate::link::hub::{Hub, HubOptions};
use crate::link::tls::{self, Congestion, DEFAULT_IDLE_TIMEOUT, TlsFiles};
use crate::link::transfer::WireCompression;
use crate::log::{
    self, Compression, Log, LogConfig, PartitionId, Record, Timestamp, TopicConfig, TopicName,
};
use crate::meta::Meta;
use crate::runtime::{RestartPolicies, RestartPolicy};
use crate::security::certs;

#[derive(Debug, Args)]
pub struct LinkBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The edge's backlog for the catch-up case, in MiB.
    #[arg(long, default_value_t = 1024)]
    backlog_mib: u64,
    /// Seconds of each lossy-uplink case and of the raw QUIC case.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Packet loss of the lossy uplink, each way, in percent.
    #[arg(long, default_value_t = 2.0)]
    loss_percent: f64,
    /// Round trip of the lossy uplink, in milliseconds.
    #[arg(long, default_value_t = 40)]
    rtt_ms: u64,
    /// Rounds of the case with the ends on separate CPUs, each the hub's durable append on one
    /// CPU and then the catch-up; the medians are reported, since on a shared machine either
    /// figure drifts from one minute to the next.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

const RECORD_BYTES: usize = 1024;
const PARTITIONS: u32 = 8;
/// The edge's producer batches: what travels as one frame.
const BATCH_BYTES: usize = 256 * 1024;
const GB: f64 = 1e9;
/// How long the hub's durable append is measured.
const APPEND_CASE: Duration = Duration::from_secs(3);
/// The CPUs the ends are pinned to when each has one of its own.
const EDGE_CPU: usize = 0;
const HUB_CPU: usize = 1;

#[derive(Debug, serde::Serialize)]
struct Figures {
    quic_mb_s: f64,
    hub_append_mb_s: f64,
    hub_append_records_s: f64,
    /// Catch-up: cubic without compression, BBR without, BBR with zstd.
    link_mb_s: f64,
    link_records_s: f64,
    catch_up_s: f64,
    link_bbr_mb_s: f64,
    link_bbr_zstd_mb_s: f64,
    backlog_bytes: u64,
    /// The ends on separate CPUs; none on a machine with one.
    separate_cpus: Option<SeparateCpusRounds>,
    /// Lossy uplink: BBR without compression, BBR with zstd, cubic without.
    lossy_mb_s: f64,
    lossy_wire_mb_s: f64,
    lossy_compressed_mb_s: f64,
    lossy_compressed_wire_mb_s: f64,
    lossy_cubic_mb_s: f64,
}

/// Every round of the ends on separate CPUs, and the median of each figure over them.
#[derive(Debug, serde::Serialize)]
struct SeparateCpusRounds {
    median: SeparateCpus,
    rounds: Vec<SeparateCpus>,
}

/// The catch-up with the edge and the hub on CPUs of their own, beside the hub's durable
/// append on one CPU.
#[derive(Debug, serde::Serialize)]
struct SeparateCpus {
    hub_append_mb_s: f64,
    hub_append_cpu_s_per_gb: f64,
    link_mb_s: f64,
    link_over_hub_append: f64,
    edge_cpu_s_per_gb: f64,
    hub_cpu_s_per_gb: f64,
}

pub async fn link_bench(args: LinkBenchArgs) -> anyhow::Result<()> {
    let scratch = scratch_dir(&args.dir)?;
    let disk = print_header(
        scratch.path(),
        format_args!(
            "link bench: {RECORD_BYTES} B JSON records, {PARTITIONS} partitions, batches of {} KiB, loopback",
            BATCH_BYTES / 1024
        ),
    )?;
    let certs = scratch.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    certs::init(&certs, &[])?;
    certs::issue_client(&certs, "bench-edge")?;
    let seconds = Duration::from_secs_f64(args.seconds);

    let quic = raw_quic(&certs, seconds).await?;
    println!("raw QUIC, one quinn stream (TLS 1.3, cubic):  {quic:>8.0} MB/s");

    let append = hub_append(scratch.path().join("append")).await?;
    println!(
        "hub durable append ({PARTITIONS} writers):      {:>8.0} MB/s  {:>10.0} records/s",
        append.mb_s, append.records_s
    );

    let backlog = args.backlog_mib * 1024 * 1024;
    let edge_dir = scratch.path().join("edge");
    let edge = open_log(&edge_dir).await?;
    let produced = fill(&edge, backlog).await?;
    let mut catch_up = Vec::new();
    for (congestion, compression) in [
        (Congestion::Cubic, WireCompression::None),
        (Congestion::Bbr, WireCompression::None),
        (Congestion::Bbr, WireCompression::Zstd),
    ] {
        let elapsed = replicate(
            &certs,
            scratch.path(),
            &edge,
            &Ends::here(),
            None,
            congestion,
            compression,
            None,
        )
        .await?
        .elapsed;
        let mb_s = produced.bytes as f64 / MB / elapsed.as_secs_f64();
        let records_s = produced.records as f64 / elapsed.as_secs_f64();
        println!(
            "link catch-up of {} MiB, {:<5} {:<4}:   {mb_s:>8.0} MB/s  {records_s:>10.0} records/s  in {:.1} s = {:.0}% of the hub's durable append, {:.0}% of raw QUIC",
            args.backlog_mib,
            congestion.name(),
            compression.name(),
            elapsed.as_secs_f64(),
            100.0 * mb_s / append.mb_s,
            100.0 * mb_s / quic,
        );
        catch_up.push((mb_s, records_s, elapsed.as_secs_f64()));
    }
    let separate_cpus = if std::thread::available_parallelism().map_or(1, usize::from) > HUB_CPU {
        Some(separate_cpus_rounds(&certs, scratch.path(), &edge, produced, args.rounds).await?)
    } else {
        println!("one CPU: the ends cannot have one each; that case is left out");
        None
    };
    let impairment = lossy_udp::Impairment {
        loss: args.loss_percent / 100.0,
        delay: Duration::from_millis(args.rtt_ms / 2),
        seed: 7,
    };
    let mut lossy = Vec::new();
    for (congestion, compression) in [
        (Congestion::Bbr, WireCompression::None),
        (Congestion::Bbr, WireCompression::Zstd),
        (Congestion::Cubic, WireCompression::None),
    ] {
        let run = replicate(
            &certs,
            scratch.path(),
            &edge,
            &Ends::here(),
            Some(impairment),
            congestion,
            compression,
            Some(seconds),
        )
        .await?;
        let mb_s = run.mirrored_bytes as f64 / MB / run.elapsed.as_secs_f64();
        let wire_mb_s = run.wire_bytes as f64 / MB / run.elapsed.as_secs_f64();
        println!(
            "lossy uplink ({}% loss, {} ms RTT), {:<5} {:<4}: {mb_s:>8.1} MB/s of records ({wire_mb_s:.1} MB/s on the wire)",
            args.loss_percent,
            args.rtt_ms,
            congestion.name(),
            compression.name(),
        );
        lossy.push((mb_s, wire_mb_s));
    }
    edge.close().await?;
    println!(
        "disk bound (fdatasync per 4 MiB, measured above): {disk:.0} MB/s; the hub's durable append is the ceiling here"
    );
    if args.json {
        let figures = Figures {
            quic_mb_s: quic,
            hub_append_mb_s: append.mb_s,
            hub_append_records_s: append.records_s,
            link_mb_s: catch_up[0].0,
            link_records_s: catch_up[0].1,
            catch_up_s: catch_up[0].2,
            link_bbr_mb_s: catch_up[1].0,
            link_bbr_zstd_mb_s: catch_up[2].0,
            backlog_bytes: produced.bytes,
            separate_cpus,
            lossy_mb_s: lossy[0].0,
            lossy_wire_mb_s: lossy[0].1,
            lossy_compressed_mb_s: lossy[1].0,
            lossy_compressed_wire_mb_s: lossy[1].1,
            lossy_cubic_mb_s: lossy[2].0,
        };
        println!("{}", serde_json::to_string(&figures)?);
    }
    Ok(())
}

/// `rounds` of [`separate_cpus`], and the median of each figure. Each round's ratio is its
/// catch-up over the append measured just before it, so the median ratio pairs figures taken
/// a few seconds apart.
async fn separate_cpus_rounds(
    certs: &Path,
    scratch: &Path,
    edge: &Log,
    produced: Produced,
    rounds: u32,
) -> anyhow::Result<SeparateCpusRounds> {
    println!(
        "the ends on separate CPUs (threads pinned as `taskset -c` pins a process; edge on CPU {EDGE_CPU}, hub on CPU {HUB_CPU}), {rounds} rounds:"
    );
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.push(separate_cpus(certs, scratch, edge, produced).await?);
    }
    let median_of = |figure: fn(&SeparateCpus) -> f64| median(all.iter().map(figure));
    let median = SeparateCpus {
        hub_append_mb_s: median_of(|r| r.hub_append_mb_s),
        hub_append_cpu_s_per_gb: median_of(|r| r.hub_append_cpu_s_per_gb),
        link_mb_s: median_of(|r| r.link_mb_s),
        link_over_hub_append: median_of(|r| r.link_over_hub_append),
        edge_cpu_s_per_gb: median_of(|r| r.edge_cpu_s_per_gb),
        hub_cpu_s_per_gb: median_of(|r| r.hub_cpu_s_per_gb),
    };
    println!(
        "median of {rounds} rounds: hub durable append on one CPU {:.0} MB/s, catch-up {:.0} MB/s, each round's catch-up over its append {:.2}x; edge {:.2} CPU-s/GB, hub {:.2} CPU-s/GB",
        median.hub_append_mb_s,
        median.link_mb_s,
        median.link_over_hub_append,
        median.edge_cpu_s_per_gb,
        median.hub_cpu_s_per_gb,
    );
    Ok(SeparateCpusRounds {
        median,
        rounds: all,
    })
}

/// The hub's durable append on one CPU, then the catch-up with the edge on [`EDGE_CPU`] and
/// the hub on [`HUB_CPU`], and the CPU time of each.
async fn separate_cpus(
    certs: &Path,
    scratch: &Path,
    edge: &Log,
    produced: Produced,
) -> anyhow::Result<SeparateCpus> {
    let hub = PinnedRuntime::new("bench-hub", HUB_CPU)?;
    let append = hub
        .handle()
        .spawn(hub_append(scratch.join("append-one-cpu")))
        .await??;
    // Opening and closing the log are counted too: a small share of the case's CPU time.
    let append_cpu = hub.finish().await?;
    let append_cpu_s_per_gb = append_cpu / (append.mb_s * MB * APPEND_CASE.as_secs_f64() / GB);
    println!(
        "hub durable append on one CPU ({PARTITIONS} writers): {:>8.0} MB/s  {:>10.0} records/s, {append_cpu_s_per_gb:.2} CPU-s/GB",
        append.mb_s, append.records_s
    );

    let (edge_runtime, hub_runtime) = (
        PinnedRuntime::new("bench-edge", EDGE_CPU)?,
        PinnedRuntime::new("bench-hub", HUB_CPU)?,
    );
    let ends = Ends {
        edge: edge_runtime.handle(),
        hub: hub_runtime.handle(),
    };
    let run = replicate(
        certs,
        scratch,
        edge,
        &ends,
        None,
        Congestion::Bbr,
        WireCompression::None,
        None,
    )
    .await?;
    let (edge_cpu, hub_cpu) = (edge_runtime.finish().await?, hub_runtime.finish().await?);
    let gb = produced.bytes as f64 / GB;
    let link_mb_s = produced.bytes as f64 / MB / run.elapsed.as_secs_f64();
    let figures = SeparateCpus {
        hub_append_mb_s: append.mb_s,
        hub_append_cpu_s_per_gb: append_cpu_s_per_gb,
        link_mb_s,
        link_over_hub_append: link_mb_s / append.mb_s,
        edge_cpu_s_per_gb: edge_cpu / gb,
        hub_cpu_s_per_gb: hub_cpu / gb,
    };
    println!(
        "link catch-up, bbr none, ends on separate CPUs: {:>8.0} MB/s in {:.1} s = {:.2}x the hub's durable append on one CPU; edge {:.2} CPU-s/GB, hub {:.2} CPU-s/GB",
        figures.link_mb_s,
        run.elapsed.as_secs_f64(),
        figures.link_over_hub_append,
        figures.edge_cpu_s_per_gb,
        figures.hub_cpu_s_per_gb,
    );
    Ok(figures)
}

/// Where the ends of a replication run: both in the bench's runtime, or each in a
/// [`PinnedRuntime`].
struct Ends {
    edge: Handle,
    hub: Handle,
}

impl Ends {
    fn here() -> Self {
        Self {
            edge: Handle::current(),
            hub: Handle::current(),
        }
    }
}

/// A runtime whose threads all run on one CPU, counting the CPU time they use.
struct PinnedRuntime {
    runtime: tokio::runtime::Runtime,
    cpu: usize,
    cpu_micros: Arc<AtomicU64>,
    unpinned: Arc<AtomicBool>,
}

impl PinnedRuntime {
    fn new(name: &str, cpu: usize) -> anyhow::Result<Self> {
        use nix::sys::resource::{UsageWho, getrusage};
        let cpu_micros = Arc::new(AtomicU64::new(0));
        let unpinned = Arc::new(AtomicBool::new(false));
        let (used, failed) = (cpu_micros.clone(), unpinned.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .on_thread_start(move || {
                let mut cpus = nix::sched::CpuSet::new();
                let pinned = cpus.set(cpu).and_then(|()| {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
                });
                if pinned.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
            })
            .on_thread_stop(move || {
                if let Ok(usage) = getrusage(UsageWho::RUSAGE_THREAD) {
                    let micros = |time: nix::sys::time::TimeVal| {
                        (time.tv_sec() * 1_000_000 + time.tv_usec()).unsigned_abs()
                    };
                    used.fetch_add(
                        micros(usage.user_time()) + micros(usage.system_time()),
                        Ordering::Relaxed,
                    );
                }
            })
            .build()?;
        Ok(Self {
            runtime,
            cpu,
            cpu_micros,
            unpinned,
        })
    }

    fn handle(&self) -> Handle {
        self.runtime.handle().clone()
    }

    /// Shuts the runtime down and returns the CPU seconds its threads used.
    async fn finish(self) -> anyhow::Result<f64> {
        let Self {
            runtime,
            cpu,
            cpu_micros,
            unpinned,
        } = self;
        // Dropping a runtime blocks until its threads have stopped, and counted their time.
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(30)))
            .await?;
        anyhow::ensure!(
            !unpinned.load(Ordering::Relaxed),
            "could not pin a thread to CPU {cpu}"
        );
        Ok(cpu_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// The hub's durable append of the edge's batches, 8 writers, in a log made in `dir` and
/// removed after.
async fn hub_append(dir: PathBuf) -> anyhow::Result<AppendFigures> {
    let hub_log = open_log(&dir).await?;
    let append = append_case(
        &hub_log,
        RECORD_BYTES,
        PARTITIONS as usize,
        PARTITIONS,
        BATCH_BYTES,
        APPEND_CASE,
    )
    .await?;
    hub_log.close().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(append)
}

async fn open_log(dir: &Path) -> anyhow::Result<Log> {
    let meta = Meta::open(&dir.join("meta"))?;
    Ok(Log::open(LogConfig::new(dir.to_path_buf()), meta).await?)
}

/// One quinn stream from an edge endpoint to a hub endpoint, as fast as it goes, with quinn's
/// default congestion control.
async fn raw_quic(certs: &Path, duration: Duration) -> anyhow::Result<f64> {
    let file = |name: &str| certs.join(name);
    let (ca, hub_cert, hub_key) = (file("ca.pem"), file("hub.pem"), file("hub.key"));
    let hub_files = TlsFiles {
        ca: &ca,
        cert: &hub_cert,
        key: &hub_key,
    };
    let hub = tls::hub_endpoint(([127, 0, 0, 1], 0).into(), &hub_files, DEFAULT_IDLE_TIMEOUT)?;
    let (edge_cert, edge_key) = (file("bench-edge.pem"), file("bench-edge.key"));
    let edge_files = TlsFiles {
        ca: &ca,
        cert: &edge_cert,
        key: &edge_key,
    };
    let edge = tls::edge_endpoint(&edge_files, DEFAULT_IDLE_TIMEOUT, Congestion::Cubic)?;
    let addr = hub.local_addr()?;
    let receiver = tokio::spawn(async move {
        let connection = hub
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("the hub endpoint closed"))?
            .await?;
        let mut stream = connection.accept_uni().await?;
        let mut received = 0u64;
        let mut buffer = vec![0u8; 1 << 20];
        let started = Instant::now();
        while let Some(n) = stream.read(&mut buffer).await? {
            received += n as u64;
        }
        anyhow::Ok(received as f64 / MB / started.elapsed().as_secs_f64())
    });
    let connection = edge.connect(addr, "localhost")?.await?;
    let mut stream = connection.open_uni().await?;
    let chunk = Bytes::from(vec![0x5a; 1 << 20]);
    let deadline = Instant::now() + duration.min(Duration::from_secs(5));
    while Instant::now() < deadline {
        stream.write_chunk(chunk.clone()).await?;
    }
    stream.finish()?;
    let rate = receiver.await??;
    connection.close(0u32.into(), b"done");
    Ok(rate)
}

#[derive(Debug, Clone, Copy)]
struct Produced {
    bytes: u64,
    records: u64,
}

/// 1 KiB JSON readings, each with its own figures, so compression finds what telemetry
/// usually offers and no more.
fn reading(n: u64) -> Record {
    let mut value = format!(
        "{{\"sensor\":\"s-{:04}\",\"site\":\"plant-{}\",\"seq\":{n}",
        n % 5000,
        n % 7
    );
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut field = 0;
    while value.len() < RECORD_BYTES - 40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        value.push_str(&format!(
            ",\"m{field}\":{}.{:03}",
            x % 1000,
            (x >> 20) % 1000
        ));
        field += 1;
    }
    value.push('}');
    Record {
        key: None,
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
        timestamp: Timestamp::now(),
    }
}

/// Fills `sensors` on the edge with `bytes` of readings across the partitions.
async fn fill(edge: &Log, bytes: u64) -> anyhow::Result<Produced> {
    let topic = TopicName::new("sensors")?;
    edge.create_topic(
        topic.clone(),
        TopicConfig {
            partitions: PARTITIONS,
            retention_ms: None,
            ..TopicConfig::default()
        },
    )
    .await?;
    let per_batch = (BATCH_BYTES / RECORD_BYTES) as u64;
    let mut produced = Produced {
        bytes: 0,
        records: 0,
    };
    let mut n = 0u64;
    while produced.bytes < bytes {
        let mut appends = tokio::task::JoinSet::new();
        for partition in 0..PARTITIONS {
            let records: Vec<Record> = (n..n + per_batch).map(reading).collect();
            n += per_batch;
            let batch: BytesMut = log::encode(&records, Compression::None)?;
            produced.bytes += batch.len() as u64;
            produced.records += per_batch;
            let handle = edge.partition(&topic, PartitionId(partition))?;
            appends.spawn(async move { handle.append(batch).await });
        }
        while let Some(appended) = appends.join_next().await {
            appended??;
        }
    }
    Ok(produced)
}

struct Replicated {
    elapsed: Duration,
    /// Stored bytes of the mirrored batches.
    mirrored_bytes: u64,
    /// Bytes of batch frames that crossed the link.
    wire_bytes: u64,
}

/// Links `edge` to a fresh hub (through a lossy proxy when `impairment` is given) and waits
/// until the mirrors are complete, or for `limit`. The hub and the link run where `ends` says.
#[expect(clippy::too_many_arguments, reason = "one bench case's settings")]
async fn replicate(
    certs: &Path,
    scratch: &Path,
    edge: &Log,
    ends: &Ends,
    impairment: Option<lossy_udp::Impairment>,
    congestion: Congestion,
    compression: WireCompression,
    limit: Option<Duration>,
) -> anyhow::Result<Replicated> {
    let hub_dir = tempfile::tempdir_in(scratch)?;
    let shutdown = CancellationToken::new();
    let options = HubOptions {
        addr: ([127, 0, 0, 1], 0).into(),
        ca_key: None,
        ca: certs.join("ca.pem"),
        cert: certs.join("hub.pem"),
        key: certs.join("hub.key"),
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
    };
    let (hub_path, hub_shutdown) = (hub_dir.path().to_path_buf(), shutdown.clone());
    let (hub_log, hub) = ends
        .hub
        .spawn(async move {
            let hub_meta = Meta::open(&hub_path.join("meta"))?;
            let hub_log = Log::open(LogConfig::new(hub_path), hub_meta.clone()).await?;
            // The bench's edge is a super-user of the hub: replication is measured, not ACLs.
            let bench_edge: crate::security::Principal = "Edge:bench-edge".parse()?;
            let hub = Hub::start(
                &options,
                hub_log.clone(),
                Coordinator::new(hub_log.clone(), hub_meta.clone()),
                crate::security::Security::open(
                    hub_meta,
                    [bench_edge].into(),
                    crate::security::PrincipalRules::default(),
                )?,
                hub_shutdown,
            )?;
            anyhow::Ok((hub_log, hub))
        })
        .await??;
    let proxy = match impairment {
        Some(impairment) => Some(
            lossy_udp::Proxy::start(([127, 0, 0, 1], 0).into(), hub.local_addr(), impairment)
                .await?,
        ),
        None => None,
    };
    let target = proxy
        .as_ref()
        .map_or(hub.local_addr(), lossy_udp::Proxy::local_addr);
    let edge_meta_dir = tempfile::tempdir_in(scratch)?;
    let spec = LinkSpec {
        name: "bench".to_owned(),
        hub: target.to_string(),
        topics: "sensors".to_owned(),
        downstream: String::new(),
        ca: certs.join("ca.pem"),
        cert: certs.join("bench-edge.pem"),
        key: certs.join("bench-edge.key"),
        compression,
        max_bytes_per_sec: 0,
        congestion,
        hold_max_bytes: 0,
        paused: false,
    };
    let (edge_log, edge_meta, edge_shutdown) = (
        edge.clone(),
        Meta::open(edge_meta_dir.path())?,
        shutdown.clone(),
    );
    let started = Instant::now();
    let links = ends
        .edge
        .spawn(async move {
            let links = Links::open(
                edge_log,
                edge_meta,
                DEFAULT_IDLE_TIMEOUT,
                RestartPolicies::all(RestartPolicy::LINKS),
                edge_shutdown,
            )
            .await?;
            links.create(spec).await?;
            anyhow::Ok(links)
        })
        .await??;
    let topic = TopicName::new("sensors")?;
    let mirror = TopicName::new("bench-edge.sensors")?;
    let ends: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            edge.partition(&topic, PartitionId(p))
                .map(|p| p.high_watermark())
        })
        .collect::<Result<_, _>>()?;
    let deadline = limit.map(|limit| started + limit);
    loop {
        let done = (0..PARTITIONS).all(|p| {
            hub_log
                .partition(&mirror, PartitionId(p))
                .is_ok_and(|m| m.high_watermark() >= ends[p as usize])
        });
        if done || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    // What the hub received: batch frames as they crossed the link, compressed or not.
    let wire_bytes = hub
        .edges()
        .iter()
        .flat_map(|edge| edge.partitions.iter())
        .map(|p| p.bytes)
        .sum();
    let mirrored_bytes = hub_log
        .list_topics()
        .iter()
        .filter(|t| t.name == mirror)
        .flat_map(|t| t.partitions.iter())
        .map(|p| match p.state {
            log::PartitionState::Online { size_bytes, .. } => size_bytes,
            _ => 0,
        })
        .sum();
    shutdown.cancel();
    links.stop_all().await;
    drop(proxy);
    hub_log.close().await?;
    Ok(Replicated {
        elapsed,
        mirrored_bytes,
        wire_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_about_a_kib_and_distinct() {
        let (a, b) = (reading(1), reading(2));
        let len = a.value.as_ref().map_or(0, Bytes::len);
        assert!((RECORD_BYTES - 60..=RECORD_BYTES).contains(&len), "{len}");
        assert_ne!(a.value, b.value);
        let _: serde_json::Value = serde_json::from_slice(a.value.as_deref().unwrap()).unwrap();
    }
}
