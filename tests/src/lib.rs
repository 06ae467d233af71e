//! Harness for end-to-end tests: starts real `appliance` processes and talks to them as an
//! operator does (command line, signals, files), and stops them when a test ends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;

pub mod cluster;
pub mod node;
pub mod plugins;
pub mod python;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process gets to become ready or to stop.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The target directory's profile directory this test binary was built into.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("test binary is not in a cargo target directory")
}

/// The `appliance` binary of this build: `APPLIANCE_BIN`, or the one beside the test's own
/// target directory (`cargo test --workspace` builds it).
pub fn appliance_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("APPLIANCE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let bin = profile_dir()?.join("appliance");
    anyhow::ensure!(
        bin.exists(),
        "{} does not exist: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    Ok(bin)
}

/// The WebAssembly component of the plugin crate `crate_name` (e.g. `plugin_template`), which
/// the appliance's build script builds from plugins/ into `<profile>/plugins/`.
pub fn plugin_wasm(crate_name: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir()?
        .join("plugins")
        .join(format!("{crate_name}.wasm"));
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: `cargo test --workspace` builds the plugins",
        path.display()
    );
    Ok(path)
}

/// A command for the appliance binary, run in `dir`.
pub fn appliance(dir: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(appliance_bin()?);
    command.current_dir(dir).env_remove("APPLIANCE_LOG");
    Ok(command)
}

/// Runs the appliance to completion with `args`, in `dir`.
pub fn run_to_end(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(appliance(dir)?.args(args).stdin(Stdio::null()).output()?)
}

/// A gRPC channel that sends a bearer token with every request.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to each request.
#[derive(Debug, Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(format!("Bearer {token}").parse()?))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel to `url` that sends `token`.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<Channel> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())?
        .connect()
        .await?;
    Ok(InterceptedService::new(channel, Bearer::new(token)?))
}

/// A running `appliance run` process; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// `http://ADDR` of its gRPC API.
    pub grpc_url: String,
    /// `ADDR` of its metrics endpoint.
    pub metrics_addr: String,
    /// `ADDR` of its Kafka listener, when it runs one.
    pub kafka_addr: Option<String>,
    /// `ADDR` of its web console, when it serves one.
    pub console_addr: Option<String>,
    /// Its admin token (from the admin.token file it logs at start).
    pub token: String,
}

/// The value of `field=` in a log line.
fn log_field(line: &str, field: &str) -> Option<String> {
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    Some(line[start..].split_whitespace().next()?.to_owned())
}

impl Daemon {
    /// Starts `appliance run ARGS` in `dir` with the gRPC and metrics endpoints on free ports.
    pub fn start_on_free_ports(dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on_free_ports_with_env(dir, args, &[])
    }

    /// [`Daemon::start_on_free_ports`], with these environment variables set.
    pub fn start_on_free_ports_with_env(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut all = vec![
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(args);
        Self::start_with_env(dir, &all, env)
    }

    /// Starts `appliance run ARGS` in `dir` and waits until it logs that it is ready.
    pub fn start(dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(dir, args, &[])
    }

    /// [`Daemon::start`], with these environment variables set.
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_program(appliance(dir)?, dir, args, env)
    }

    /// `program run ARGS` in `dir`, where `program` is this build's appliance or another's
    /// (an ARM build under an emulator); waits until it logs that it is ready.
    pub fn start_program(
        mut program: Command,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        // Each daemon's Kafka listener and console on ports of their own, unless the test
        // chose them.
        let kafka_addr: &[&str] = match args.contains(&"--kafka-addr") {
            true => &[],
            false => &["--kafka-addr", "127.0.0.1:0"],
        };
        let console_addr: &[&str] = match args.contains(&"--console-addr") {
            true => &[],
            false => &["--console-addr", "127.0.0.1:0"],
        };
        let mut child = program
            .current_dir(dir)
            .env_remove("APPLIANCE_LOG")
            .arg("run")
            .args(args)
            .args(kafka_addr)
            .args(console_addr)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ready = line.contains("appliance ready").then(|| {
                    (
                        log_field(&line, "grpc_addr"),
                        log_field(&line, "metrics_addr"),
                        log_field(&line, "admin_token_file"),
                        log_field(&line, "tls"),
                        log_field(&line, "kafka_addr"),
                        log_field(&line, "console_addr"),
                    )
                });
                collected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
                if let Some(addresses) = ready {
                    let _ = ready_tx.send(addresses);
                }
            }
        });
        let mut daemon = Self {
            child,
            log,
            grpc_url: String::new(),
            metrics_addr: String::new(),
            kafka_addr: None,
            console_addr: None,
            token: String::new(),
        };
        match ready_rx.recv_timeout(PROCESS_TIMEOUT) {
            Ok((Some(grpc), Some(metrics), Some(token_file), tls, kafka, console)) => {
                daemon.kafka_addr = kafka.map(|addr| addr.trim_matches('"').to_owned());
                daemon.console_addr = console.map(|addr| addr.trim_matches('"').to_owned());
                let scheme = if tls.as_deref() == Some("true") {
                    "https"
                } else {
                    "http"
                };
                daemon.grpc_url = format!("{scheme}://{grpc}");
                daemon.metrics_addr = metrics;
                let token_file = dir.join(token_file.trim_matches('"'));
                daemon.token = std::fs::read_to_string(&token_file)
                    .with_context(|| format!("reading {}", token_file.display()))?
                    .trim()
                    .to_owned();
                Ok(daemon)
            }
            _ => {
                let status = daemon.child.try_wait()?;
                bail!(
                    "appliance did not become ready (exit: {status:?}); its log:\n{}",
                    daemon.log_text()
                )
            }
        }
    }

    /// Runs the appliance CLI against this daemon (`--server` set) as its admin, in `dir`.
    pub fn cli(&self, dir: &Path, args: &[&str], stdin: &[u8]) -> anyhow::Result<Output> {
        self.cli_as(dir, &self.token, args, stdin)
    }

    /// Runs the appliance CLI against this daemon with `token`, in `dir`.
    pub fn cli_as(
        &self,
        dir: &Path,
        token: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> anyhow::Result<Output> {
        let mut child = appliance(dir)?
            .args(args)
            .env("APPLIANCE_SERVER", &self.grpc_url)
            .env("APPLIANCE_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut input = child.stdin.take().context("stdin")?;
        std::io::Write::write_all(&mut input, stdin)?;
        drop(input);
        Ok(child.wait_with_output()?)
    }

    /// A gRPC channel to this daemon, with its admin token.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        connect(&self.grpc_url, &self.token).await
    }

    /// `GET /metrics` with the admin token: the whole HTTP response, which must be 200.
    pub async fn scrape_metrics(&self) -> anyhow::Result<String> {
        let response = self.get_metrics(Some(&self.token)).await?;
        anyhow::ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
        Ok(response)
    }

    /// `GET /metrics` with `token` (none: no credentials): the whole HTTP response.
    pub async fn get_metrics(&self, token: Option<&str>) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr).await?;
        let authorization = token.map_or(String::new(), |token| {
            format!("Authorization: Bearer {token}\r\n")
        });
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\n{authorization}Connection: close\r\n\r\n",
            self.metrics_addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// CPU seconds the process used so far (utime + stime from /proc).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("a /proc stat line")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let per_second: u64 =
            String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
                .trim()
                .parse()?;
        Ok(ticks as f64 / per_second as f64)
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop_with(mut self, signal: Signal) -> anyhow::Result<(ExitStatus, String)> {
        kill(self.pid(), signal)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Ok((status, self.log_text()));
            }
            if started.elapsed() > PROCESS_TIMEOUT {
                bail!(
                    "appliance did not exit after {signal}; its log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of one partition, fetched over gRPC from offset 0 to the high watermark.
pub async fn fetch_all(
    channel: &Channel,
    topic: &str,
    partition: u32,
) -> anyhow::Result<Vec<appliance_proto::v1::ConsumedRecord>> {
    fetch_from(channel, topic, partition, 0).await
}

/// The records of one partition from `offset` to the high watermark, fetched over gRPC.
pub async fn fetch_from(
    channel: &Channel,
    topic: &str,
    partition: u32,
    mut offset: u64,
) -> anyhow::Result<Vec<appliance_proto::v1::ConsumedRecord>> {
    use appliance_proto::v1 as pb;
    let mut client = pb::records_client::RecordsClient::new(channel.clone());
    let mut out = Vec::new();
    loop {
        let response = client
            .fetch(pb::FetchRequest {
                topic: topic.into(),
                partition,
                offset,
                max_bytes: 256 * 1024,
                max_wait_ms: 0,
            })
            .await?
            .into_inner();
        out.extend(response.records);
        offset = response.next_offset;
        if offset >= response.high_watermark {
            return Ok(out);
        }
    }
}

/// Whether the server closed `stream` (end of stream or reset) within `within`; what it
/// sends before (an HTTP/2 server's settings) is read and ignored.
pub fn closed_by_server(
    stream: &mut std::net::TcpStream,
    within: Duration,
) -> anyhow::Result<bool> {
    use std::io::Read;
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(true),
            Ok(_) => continue,
            Err(error) => {
                return Ok(!matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ));
            }
        }
    }
}

/// How long the cluster tests wait for something to happen before they fail.
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs the CLI against `daemon`, from inside a multi-threaded tokio runtime, without
/// holding up the runtime's other tasks.
/// Every record of every partition of `topic`, partition by partition.
pub async fn fetch_topic(
    channel: &Channel,
    topic: &str,
) -> anyhow::Result<Vec<appliance_proto::v1::ConsumedRecord>> {
    use appliance_proto::v1 as pb;
    let info = pb::topics_client::TopicsClient::new(channel.clone())
        .get_topic(pb::GetTopicRequest { name: topic.into() })
        .await?
        .into_inner();
    let mut records = Vec::new();
    for partition in 0..info.partitions.len() as u32 {
        records.extend(fetch_all(channel, topic, partition).await?);
    }
    Ok(records)
}

/// Waits (up to two minutes) until pipeline `name` runs on `partitions` partitions, each
/// having transformed all its source holds; fails at once if a partition failed.
pub async fn wait_pipeline_caught_up(
    channel: &Channel,
    name: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    use appliance_proto::v1 as pb;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pipeline = pb::pipelines_client::PipelinesClient::new(channel.clone())
            .get_pipeline(pb::GetPipelineRequest { name: name.into() })
            .await?
            .into_inner();
        for partition in &pipeline.partitions {
            anyhow::ensure!(
                partition.state != pb::PipelineState::Failed as i32,
                "the pipeline failed: {pipeline:?}"
            );
        }
        if pipeline.partitions.len() == partitions as usize
            && pipeline
                .partitions
                .iter()
                .all(|p| p.lag == 0 && p.state == pb::PipelineState::Running as i32)
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "pipeline {name} lags: {pipeline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn cli_in_runtime(
    daemon: &Daemon,
    dir: &Path,
    args: &[&str],
    stdin: &[u8],
) -> anyhow::Result<Output> {
    tokio::task::block_in_place(|| daemon.cli(dir, args, stdin))
}

/// [`cli_in_runtime`] that requires success; its standard output.
pub fn cli_ok(daemon: &Daemon, dir: &Path, args: &[&str], stdin: &[u8]) -> anyhow::Result<String> {
    let output = cli_in_runtime(daemon, dir, args, stdin)?;
    anyhow::ensure!(
        output.status.success(),
        "appliance {} failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Starts `appliance run ARGS` on free ports from inside a multi-threaded tokio runtime.
pub fn start_in_runtime(dir: &Path, args: &[String]) -> anyhow::Result<Daemon> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| Daemon::start_on_free_ports(dir, &args))
}

/// Gives up [`WAIT`] after it was made, saying what it waited for and the last state seen.
#[derive(Debug)]
pub struct Deadline {
    at: tokio::time::Instant,
    what: String,
}

impl Deadline {
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            at: tokio::time::Instant::now() + WAIT,
            what: what.into(),
        }
    }

    /// Fails once the deadline passed; otherwise pauses before the next look.
    pub async fn pause(&self, state: impl std::fmt::Debug) -> anyhow::Result<()> {
        anyhow::ensure!(
            tokio::time::Instant::now() < self.at,
            "{}: still not there after {WAIT:?}; last seen: {state:#?}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }
}

/// Whether `needle` occurs in any file under `dir`.
pub fn found_in_files(dir: &Path, needle: &[u8]) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let found = if path.is_dir() {
            found_in_files(&path, needle)?
        } else {
            std::fs::read(&path)?
                .windows(needle.len())
                .any(|window| window == needle)
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A UDP port that is free now (a hub binds it, and binds it again after a SIGKILL).
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `appliance certs init --dir DIR` in `root`, then `certs issue EDGE --dir DIR` for each edge.
pub fn make_certs(root: &Path, dir: &str, edges: &[&str]) -> anyhow::Result<()> {
    let mut commands = vec![vec!["certs", "init", "--dir", dir]];
    for edge in edges {
        commands.push(vec!["certs", "issue", edge, "--dir", dir]);
    }
    for args in commands {
        let output = run_to_end(root, &args)?;
        anyhow::ensure!(
            output.status.success(),
            "appliance {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The name every cluster test gives an edge's link to the hub.
pub const LINK: &str = "to-hub";

/// One directory with the link's certificates (`certs/`) and every appliance's data and
/// configuration; the hub's link endpoint on a loopback UDP port free when the test starts,
/// kept across restarts of the hub.
#[derive(Debug)]
pub struct Deployment {
    dir: tempfile::TempDir,
    port: u16,
    /// The edges whose certificates it made, which the hub lets fill their mirrors.
    edges: Vec<String>,
    /// The edges' `[link] idle-timeout-ms`, when a test wants cuts to end connections sooner.
    edge_idle_timeout_ms: Option<u64>,
    /// Environment variables of the hub (secrets it reads as `${env:NAME}`).
    hub_env: Vec<(String, String)>,
}

impl Deployment {
    /// Certificates for the hub and `edges`.
    pub fn new(edges: &[&str]) -> anyhow::Result<Self> {
        let deployment = Self {
            dir: tempfile::tempdir()?,
            port: free_udp_port()?,
            edges: edges.iter().map(|edge| edge.to_string()).collect(),
            edge_idle_timeout_ms: None,
            hub_env: Vec::new(),
        };
        make_certs(deployment.root(), "certs", edges)?;
        Ok(deployment)
    }

    /// Edges started afterwards close a link silent for `ms` (a connection takes the smaller
    /// of its two ends' idle timeouts, so this one applies).
    pub fn with_edge_idle_timeout_ms(mut self, ms: u64) -> Self {
        self.edge_idle_timeout_ms = Some(ms);
        self
    }

    /// Hubs started afterwards have `name=value` in their environment.
    pub fn with_hub_env(mut self, name: &str, value: &str) -> Self {
        self.hub_env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root().join(relative)
    }

    pub fn hub_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (or, on the same data directory, restarts) the hub on its link address; each
    /// edge may fill its mirrors there (write on `EDGE.*`) and receive every hub topic.
    pub fn start_hub(&self) -> anyhow::Result<Daemon> {
        let hub = self.start_hub_without_acls()?;
        for edge in &self.edges {
            let principal = format!("Edge:{edge}");
            let mirrors = format!("{edge}.");
            let grants: [&[&str]; 2] = [
                &["--topic", &mirrors, "--prefixed", "--operation", "write"],
                &["--topic", "*", "--operation", "read"],
            ];
            for grant in grants {
                let mut args = vec!["acl", "add", "--principal", &principal];
                args.extend_from_slice(grant);
                cli_ok(&hub, self.root(), &args, b"")?;
            }
        }
        Ok(hub)
    }

    /// [`Deployment::start_hub`] without granting the edges anything. Either hub enrolls
    /// edges by join token (it has the CA's key).
    pub fn start_hub_without_acls(&self) -> anyhow::Result<Daemon> {
        let link_addr = self.hub_addr();
        let args = [
            "--data-dir",
            "hub-data",
            "--role",
            "hub",
            "--link-addr",
            &link_addr,
            "--link-ca",
            "certs/ca.pem",
            "--link-cert",
            "certs/hub.pem",
            "--link-key",
            "certs/hub.key",
            "--link-ca-key",
            "certs/ca.key",
        ];
        let env: Vec<(&str, &str)> = self
            .hub_env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let hub = tokio::task::block_in_place(|| {
            Daemon::start_on_free_ports_with_env(self.root(), &args, &env)
        })?;
        let log = hub.log_text();
        anyhow::ensure!(
            log.contains(&format!("link_addr=\"{link_addr}\"")),
            "the hub is not on its link address:\n{log}"
        );
        Ok(hub)
    }

    /// `appliance run` of an edge `name` with a topic `sensors` of `sensors_partitions`
    /// partitions, on its own data directory.
    pub fn edge_args(&self, name: &str, sensors_partitions: u32) -> anyhow::Result<Vec<String>> {
        let config = format!("{name}.toml");
        let link = self
            .edge_idle_timeout_ms
            .map(|ms| format!("[link]\nidle-timeout-ms = {ms}\n"))
            .unwrap_or_default();
        std::fs::write(
            self.path(&config),
            format!("{link}[topics.sensors]\npartitions = {sensors_partitions}\n"),
        )?;
        Ok(vec![
            "--config".into(),
            config,
            "--data-dir".into(),
            format!("{name}-data"),
        ])
    }

    /// Starts an edge appliance (see [`Deployment::edge_args`]).
    pub fn start_edge(&self, name: &str, sensors_partitions: u32) -> anyhow::Result<Daemon> {
        start_in_runtime(self.root(), &self.edge_args(name, sensors_partitions)?)
    }

    /// `appliance link create` [`LINK`] `--topics sensors` on `edge` to `hub`, with the
    /// certificate of `cert` (in certs/) and `extra` options.
    pub fn link(
        &self,
        edge: &Daemon,
        cert: &str,
        hub: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        self.link_named(edge, LINK, cert, hub, extra)
    }

    /// [`Deployment::link`] of another name: one edge process with several links.
    pub fn link_named(
        &self,
        edge: &Daemon,
        link: &str,
        cert: &str,
        hub: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let (cert, key) = (format!("certs/{cert}.pem"), format!("certs/{cert}.key"));
        let mut args = vec![
            "link",
            "create",
            link,
            "--hub",
            hub,
            "--topics",
            "sensors",
            "--ca",
            "certs/ca.pem",
            "--cert",
            &cert,
            "--key",
            &key,
        ];
        args.extend_from_slice(extra);
        cli_ok(edge, self.root(), &args, b"")
    }
}

/// A tmpfs of a few MiB to fill, for tests of a full disk. Mounting needs root (CI runs as
/// root); elsewhere [`SmallDisk::mount`] gives `None` and those tests say so and skip it.
#[derive(Debug)]
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size_mb: u64) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then(|| Self(at.to_path_buf()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file until the disk is full; its path.
    pub fn fill(&self) -> anyhow::Result<PathBuf> {
        let path = self.0.join("filler");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)?;
        let block = vec![0u8; 1 << 20];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        let small = [0u8; 512];
        while std::io::Write::write_all(&mut file, &small).is_ok() {}
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `dir/setup.sh` under the lock file `lock` (test binaries run at once: one installs
/// while the others wait); `needs` says what it needs, for its error.
pub(crate) fn set_up(dir: &Path, lock: &str, needs: &str) -> anyhow::Result<()> {
    let lock_file = std::fs::File::create(dir.join(lock))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("locking {}: {errno}", dir.join(lock).display()))?;
    let setup = dir.join("setup.sh");
    let output = Command::new("sh")
        .arg(&setup)
        .output()
        .with_context(|| format!("running {}", setup.display()))?;
    if !output.status.success() {
        bail!(
            "{} ({needs} are needed) failed: {}{}",
            setup.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs kcat (librdkafka) against the daemon's Kafka listener as `user` over SASL `mechanism`,
/// with the connection's settings in `security` (e.g. `-X security.protocol=SASL_PLAINTEXT`).
pub fn kcat_with(
    daemon: &Daemon,
    security: &[&str],
    mechanism: &str,
    user: &str,
    password: &str,
    args: &[&str],
    stdin: &[u8],
) -> anyhow::Result<Output> {
    let broker = daemon.kafka_addr.clone().context("no Kafka listener")?;
    let mut child = Command::new("kcat")
        .args(["-b", &broker])
        .args(security)
        .args(["-X", &format!("sasl.mechanism={mechanism}")])
        .args(["-X", &format!("sasl.username={user}")])
        .args(["-X", &format!("sasl.password={password}")])
        .args(["-m", "30"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kcat (install the Debian package `kcat`)")?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}
