//! Connectors against real `appliance run` processes and real external systems: a Mosquitto
//! broker (10,000 MQTT messages exactly once across a SIGKILL), files rotated under a
//! file-source (and a SIGKILL in the middle of the rotation), an HTTP server that fails 30%
//! of the requests an http-sink makes, a trapping plugin, and plugins reaching outside their
//! grants.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use appliance_e2e::Channel;
use appliance_e2e::{Daemon, fetch_all, found_in_files, plugin_wasm};
use appliance_proto::v1 as pb;
use appliance_proto::v1::connectors_client::ConnectorsClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(120);

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config(pairs: &[(&str, &str)]) -> Vec<pb::ConfigEntry> {
    pairs
        .iter()
        .map(|(k, v)| pb::ConfigEntry {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect()
}

async fn create_connector(
    channel: &Channel,
    name: &str,
    plugin: &str,
    topic: &str,
    pairs: &[(&str, &str)],
) -> Result<pb::Connector, tonic::Status> {
    Ok(ConnectorsClient::new(channel.clone())
        .create_connector(pb::CreateConnectorRequest {
            name: name.into(),
            plugin: plugin.into(),
            topic: topic.into(),
            config: config(pairs),
            tasks: 1,
            transforms: vec![],
            errors: pb::ErrorPolicy::Fail as i32,
            dlq_topic: String::new(),
        })
        .await?
        .into_inner())
}

/// Polls the connector until `done` holds for its first task; fails with its status otherwise.
async fn wait_for_task(
    channel: &Channel,
    name: &str,
    done: impl Fn(&pb::ConnectorTask) -> bool,
) -> anyhow::Result<pb::ConnectorTask> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let connector = ConnectorsClient::new(channel.clone())
            .get_connector(pb::GetConnectorRequest { name: name.into() })
            .await?
            .into_inner();
        if let Some(task) = connector.tasks.first().filter(|t| done(t)) {
            return Ok(task.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "connector {name} never got there: {connector:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn failed(task: &pb::ConnectorTask) -> bool {
    task.state == pb::ConnectorState::Failed as i32
}

/// Every value of partition 0 of `topic`, as text.
async fn values(channel: &Channel, topic: &str) -> anyhow::Result<Vec<String>> {
    fetch_all(channel, topic, 0)
        .await?
        .into_iter()
        .map(|r| Ok(String::from_utf8(r.value.unwrap_or_default().to_vec())?))
        .collect()
}

/// Waits until partition 0 of `topic` holds at least `count` values matching `wanted`.
async fn wait_for_values(
    channel: &Channel,
    topic: &str,
    count: usize,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = values(channel, topic).await.unwrap_or_default();
        let matching = all.iter().filter(|v| wanted(v)).count();
        if matching >= count {
            return Ok(all);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{topic} has {matching} of {count} values"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Mosquitto broker on a free loopback port, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    /// The user and password clients sign in with, when the broker requires them.
    login: Option<(String, String)>,
}

impl Mosquitto {
    /// A broker open to anonymous clients, with its defaults but for the listener and the
    /// lines of `settings`.
    fn start(dir: &Path, settings: &str) -> anyhow::Result<Self> {
        Self::launch(dir, &format!("allow_anonymous true\n{settings}"), None)
    }

    /// A broker that admits only `user` with `password`.
    fn start_with_password(dir: &Path, user: &str, password: &str) -> anyhow::Result<Self> {
        let passwords = dir.join("mosquitto.passwd");
        let made = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg("-c")
            .arg(&passwords)
            .args([user, password])
            .output()
            .context("running mosquitto_passwd (install the Debian package `mosquitto`)")?;
        anyhow::ensure!(made.status.success(), "mosquitto_passwd: {made:?}");
        let settings = format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        );
        Self::launch(dir, &settings, Some((user.into(), password.into())))
    }

    fn launch(dir: &Path, settings: &str, login: Option<(String, String)>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\n{settings}"))?;
        // Debian installs the broker in /usr/sbin, which a non-root PATH may lack.
        let program = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (install the Debian package `mosquitto`)")?;
        let broker = Self { child, port, login };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// Publishes each line of `lines` to `topic` with QoS 1 (mosquitto_pub -l).
    fn publish(&self, topic: &str, lines: &[String]) -> anyhow::Result<Child> {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-q", "1", "-t", topic, "-l"])
            .args(
                self.login
                    .iter()
                    .flat_map(|(user, password)| ["-u", user, "-P", password]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mosquitto_pub (install the Debian package `mosquitto-clients`)")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let text = lines.join("\n") + "\n";
        std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        Ok(child)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates connector `sensors` of mqtt-source into topic `mqtt`, subscribed to `topics` (with
/// the settings of `more`), and waits until its subscription exists: messages published
/// before it are not kept for it, so probes go to `sensors/probe` until one arrives.
async fn start_mqtt_source(
    channel: &Channel,
    broker: &Mosquitto,
    topics: &str,
    more: &[(&str, &str)],
) -> anyhow::Result<()> {
    let broker_addr = format!("127.0.0.1:{}", broker.port);
    let url = format!("mqtt://{broker_addr}");
    let mut pairs = vec![
        ("url", url.as_str()),
        ("topics", topics),
        ("wasi.net", &broker_addr),
    ];
    pairs.extend_from_slice(more);
    create_connector(channel, "sensors", "mqtt-source", "mqtt", &pairs).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        broker
            .publish("sensors/probe", &["probe".to_owned()])?
            .wait()?;
        if values(channel, "mqtt").await?.iter().any(|v| v == "probe") {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no probe arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The values of `topic` records whose value `wanted` takes, by record key.
async fn values_by_key(
    channel: &Channel,
    topic: &str,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in fetch_all(channel, topic, 0).await? {
        let key = String::from_utf8(record.key.unwrap_or_default().to_vec())?;
        let value = String::from_utf8(record.value.unwrap_or_default().to_vec())?;
        if wanted(&value) {
            by_key.entry(key).or_default().push(value);
        }
    }
    Ok(by_key)
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_messages_arrive_exactly_once_across_a_sigkill() -> anyhow::Result<()> {
    const PER_TOPIC: usize = 5_000;
    let dir = tempfile::tempdir()?;
    // Queue without limit for the appliance's persistent session while it is down.
    let broker = Mosquitto::start(dir.path(), "max_queued_messages 0\n")?;
    let mut daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    start_mqtt_source(&channel, &broker, "sensors/#", &[]).await?;
    let lines = |device: &str| -> Vec<String> {
        (0..PER_TOPIC).map(|n| format!("{device}-{n:05}")).collect()
    };
    let mut publishers = vec![
        broker.publish("sensors/a", &lines("a"))?,
        broker.publish("sensors/b", &lines("b"))?,
    ];
    let is_reading = |v: &str| v.starts_with("a-") || v.starts_with("b-");
    let at_kill = wait_for_values(&channel, "mqtt", 2_000, is_reading).await?;
    eprintln!(
        "SIGKILL with {} of {} messages in the log",
        at_kill.iter().filter(|v| is_reading(v)).count(),
        2 * PER_TOPIC
    );
    daemon.stop_with(Signal::SIGKILL)?;
    daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    for publisher in &mut publishers {
        anyhow::ensure!(publisher.wait()?.success(), "mosquitto_pub failed");
    }
    wait_for_values(&channel, "mqtt", 2 * PER_TOPIC, is_reading).await?;
    // A duplicate would arrive right behind the rest: give it the time to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_topic = values_by_key(&channel, "mqtt", is_reading).await?;
    assert_eq!(by_topic.len(), 2, "{:?}", by_topic.keys());
    assert_eq!(
        by_topic["sensors/a"],
        lines("a"),
        "every message once, in order"
    );
    assert_eq!(
        by_topic["sensors/b"],
        lines("b"),
        "every message once, in order"
    );
    Ok(())
}

/// A burst of 5,000 QoS 1 messages through a broker with Mosquitto's defaults (20 messages in
/// flight and 1,000 queued per MQTT 3.1.1 session) arrives whole and once, in order, though
/// the appliance freezes (SIGSTOP) in the middle of it and is then SIGKILLed: what the broker
/// sent meanwhile was received, or waits in the socket, but is neither durable nor
/// acknowledged, so the broker sends it again after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt_burst_through_a_stock_broker_arrives_whole_across_a_freeze_and_a_sigkill()
-> anyhow::Result<()> {
    const BURST: usize = 5_000;
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(dir.path(), "")?;
    let mut daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    start_mqtt_source(&channel, &broker, "sensors/#", &[]).await?;
    let lines: Vec<String> = (0..BURST).map(|n| format!("burst-{n:05}")).collect();
    let is_burst = |v: &str| v.starts_with("burst-");
    let mut publisher = broker.publish("sensors/burst", &lines)?;
    let at_stop = wait_for_values(&channel, "mqtt", BURST / 5, is_burst).await?;
    nix::sys::signal::kill(daemon.pid(), Signal::SIGSTOP)?;
    eprintln!(
        "SIGSTOP with {} of {BURST} messages in the log",
        at_stop.iter().filter(|v| is_burst(v)).count()
    );
    anyhow::ensure!(publisher.wait()?.success(), "mosquitto_pub failed");
    daemon.stop_with(Signal::SIGKILL)?;
    daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    wait_for_values(&channel, "mqtt", BURST, is_burst).await?;
    // A duplicate would arrive right behind the rest: give it the time to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_topic = values_by_key(&channel, "mqtt", is_burst).await?;
    assert_eq!(by_topic.len(), 1, "{:?}", by_topic.keys());
    assert_eq!(
        by_topic["sensors/burst"], lines,
        "every message once, in order"
    );
    Ok(())
}

/// mqtt-source declares `password` secret: the appliance refuses it as a literal, takes it
/// as a reference to a file, and the broker, which admits no one else, lets the connector in;
/// the password is in no answer, log line or file of the appliance.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_an_mqtt_source_declares_secret_is_taken_only_by_reference() -> anyhow::Result<()>
{
    const PASSWORD: &str = "Mq7-broker-password-4410";
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let broker = Mosquitto::start_with_password(root, "gateway", PASSWORD)?;
    std::fs::create_dir(root.join("secrets"))?;
    std::fs::write(root.join("secrets/mqtt"), format!("{PASSWORD}\n"))?;
    std::fs::write(
        root.join("appliance.toml"),
        "[security]\nsecret-dirs = [\"secrets\"]\n",
    )?;
    let daemon = Daemon::start_on_free_ports(root, &["--config", "appliance.toml"])?;
    let channel = daemon.channel().await?;

    let broker_addr = format!("127.0.0.1:{}", broker.port);
    let url = format!("mqtt://{broker_addr}");
    let literal = create_connector(
        &channel,
        "sensors",
        "mqtt-source",
        "mqtt",
        &[
            ("url", &url),
            ("topics", "sensors/#"),
            ("wasi.net", &broker_addr),
            ("username", "gateway"),
            ("password", PASSWORD),
        ],
    )
    .await
    .expect_err("a literal password is refused");
    assert_eq!(literal.code(), tonic::Code::InvalidArgument);
    assert!(
        literal
            .message()
            .contains("\"password\" is a secret of plugin \"mqtt-source\"")
            && literal.message().contains("${file:PATH}")
            && !literal.message().contains(PASSWORD),
        "{literal:?}"
    );

    let reference = format!("${{file:{}}}", root.join("secrets/mqtt").display());
    let login = [("username", "gateway"), ("password", reference.as_str())];
    start_mqtt_source(&channel, &broker, "sensors/#", &login).await?;
    let readings: Vec<String> = (0..100).map(|n| format!("reading-{n:03}")).collect();
    anyhow::ensure!(
        broker.publish("sensors/a", &readings)?.wait()?.success(),
        "mosquitto_pub failed"
    );
    wait_for_values(&channel, "mqtt", readings.len(), |v| {
        v.starts_with("reading-")
    })
    .await?;

    let connector = ConnectorsClient::new(channel.clone())
        .get_connector(pb::GetConnectorRequest {
            name: "sensors".into(),
        })
        .await?
        .into_inner();
    let shown = format!("{connector:?}");
    assert!(
        shown.contains(&reference) && !shown.contains(PASSWORD),
        "{shown}"
    );
    assert!(
        !daemon.log_text().contains(PASSWORD),
        "the password is in the log"
    );
    assert!(
        !found_in_files(&root.join("appliance-data"), PASSWORD.as_bytes())?,
        "the password is in the appliance's files"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_tailed_through_a_rotation_and_a_sigkill_loses_and_duplicates_nothing()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs)?;
    let path = logs.join("app.log");
    let line = |n: usize| format!("line {n:05} of the application's log");
    let write_lines = |file: &Path, range: std::ops::Range<usize>| -> anyhow::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        for n in range {
            writeln!(out, "{}", line(n))?;
        }
        Ok(())
    };
    write_lines(&path, 0..1000)?;
    let mut daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    create_connector(
        &channel,
        "app-log",
        "file-source",
        "app-log",
        &[
            ("path", path.to_str().context("path")?),
            ("wasi.dir", logs.to_str().context("path")?),
        ],
    )
    .await?;
    wait_for_values(&channel, "app-log", 1000, |_| true).await?;
    // logrotate's create mode: the writer appends a little more, the file is renamed, the
    // writer still appends to the renamed file, then a new file takes the name.
    write_lines(&path, 1000..1500)?;
    let rotated = logs.join("app.log.1");
    std::fs::rename(&path, &rotated)?;
    write_lines(&rotated, 1500..1600)?;
    wait_for_values(&channel, "app-log", 1200, |_| true).await?;
    daemon.stop_with(Signal::SIGKILL)?;
    write_lines(&path, 1600..2600)?;
    daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    wait_for_values(&channel, "app-log", 2600, |_| true).await?;
    write_lines(&path, 2600..3000)?;
    wait_for_values(&channel, "app-log", 3000, |_| true).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = values(&channel, "app-log").await?;
    let expected: Vec<String> = (0..3000).map(line).collect();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "every line once, in order");
    Ok(())
}

/// What the test's HTTP server received: request bodies it accepted, and how many requests
/// it failed on purpose.
#[derive(Debug, Default)]
struct Received {
    bodies: Vec<String>,
    failed: usize,
    requests: usize,
}

/// An HTTP/1.1 server on a free loopback port that answers 503 to 30% of the requests
/// (deterministically: requests 3, 6 and 9 of every 10) and keeps the bodies of the others.
async fn flaky_server() -> anyhow::Result<(u16, Arc<Mutex<Received>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let header = line.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let fail = {
                        let mut received = state.lock().unwrap_or_else(|e| e.into_inner());
                        received.requests += 1;
                        let fail = received.requests % 10 % 3 == 0 && received.requests % 10 != 0;
                        if fail {
                            received.failed += 1;
                        } else {
                            received
                                .bodies
                                .push(String::from_utf8_lossy(&body).into_owned());
                        }
                        fail
                    };
                    let response: &[u8] = if fail {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if write.write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, received))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_sink_delivers_every_record_through_a_server_failing_30_percent()
-> anyhow::Result<()> {
    const RECORDS: usize = 5_000;
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: "events".into(),
            config: None,
        })
        .await?;
    let requests: Vec<pb::ProduceRequest> = (0..RECORDS)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| pb::ProduceRequest {
            topic: "events".into(),
            partition: Some(0),
            records: chunk
                .iter()
                .map(|n| pb::Record {
                    key: None,
                    value: Some(format!(r#"{{"event":{n}}}"#).into_bytes().into()),
                    headers: vec![],
                    timestamp_ms: 0,
                })
                .collect(),
        })
        .collect();
    RecordsClient::new(channel.clone())
        .produce_stream(tokio_stream::iter(requests))
        .await?;
    let (port, received) = flaky_server().await?;
    let addr = format!("127.0.0.1:{port}");
    create_connector(
        &channel,
        "webhook",
        "http-sink",
        "events",
        &[
            ("url", &format!("http://{addr}/ingest")),
            ("format", "ndjson"),
            ("batch.max", "100"),
            ("wasi.net", &addr),
        ],
    )
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let delivered = loop {
        let offsets = ConnectorsClient::new(channel.clone())
            .get_connector_offsets(pb::GetConnectorOffsetsRequest {
                name: "webhook".into(),
            })
            .await?
            .into_inner();
        let committed = offsets.sink_partitions.first().and_then(|p| p.committed);
        if committed == Some(RECORDS as u64) {
            break received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bodies
                .clone();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "committed {committed:?} of {RECORDS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for body in &delivered {
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)?;
            *seen
                .entry(value["event"].as_u64().context("event")?)
                .or_default() += 1;
        }
    }
    let (failed, requests) = {
        let received = received.lock().unwrap_or_else(|e| e.into_inner());
        (received.failed, received.requests)
    };
    eprintln!("{requests} requests, {failed} answered 503");
    assert!(failed > 0, "the server failed some requests");
    assert_eq!(seen.len(), RECORDS, "every record delivered");
    assert!(seen.values().all(|n| *n == 1), "no record delivered twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_connector_shows_failed_with_the_reason_while_another_runs() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let wasm = plugin_wasm("plugin_fault_source")?;
    let cli = |args: &[&str]| daemon.cli(dir.path(), args, b"");
    let added = cli(&[
        "plugin",
        "add",
        "fault-source",
        wasm.to_str().context("path")?,
    ])?;
    anyhow::ensure!(added.status.success(), "{added:?}");
    for (name, plugin, setting) in [
        ("broken", "fault-source", "mode=trap"),
        ("readings", "generator", "rate=1000"),
    ] {
        let created = cli(&[
            "connector",
            "create",
            name,
            "--plugin",
            plugin,
            "--topic",
            name,
            "--config",
            setting,
        ])?;
        anyhow::ensure!(created.status.success(), "{created:?}");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let broken = loop {
        let status = cli(&["connector", "status", "broken", "--json"])?;
        let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        if status["state"] == "failed" {
            break status;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = broken["tasks"][0]["failure"].as_str().unwrap_or_default();
    assert!(reason.contains("trapped"), "{broken}");
    assert!(reason.contains("trapping on purpose"), "{broken}");
    let channel = daemon.channel().await?;
    let first = wait_for_task(&channel, "readings", |t| t.records_out > 0).await?;
    wait_for_task(&channel, "readings", |t| t.records_out > first.records_out).await?;
    // `appliance status` names the failed task and why, and only it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = cli(&["status", "--json"])?;
        let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        let failed = status["failed"].as_array().context("failed")?;
        if let Some(task) = failed.first() {
            assert_eq!(failed.len(), 1, "{status}");
            assert_eq!(task["kind"], "connector", "{status}");
            assert_eq!(task["name"], "broken task 0", "{status}");
            assert!(
                task["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("trapped"),
                "{status}"
            );
            // broken, readings and the audit topic.
            assert_eq!(status["topics"]["count"], 3, "{status}");
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = cli(&["connector", "list", "--json"])?;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    // The broken connector is restarted with backoff, so between its failures it shows
    // running again; what it never shows is a clean run.
    let states: Vec<(&str, &str)> = list
        .as_array()
        .context("a list")?
        .iter()
        .map(|c| {
            let restarted = c["tasks"][0]["restarts"].as_u64().unwrap_or(0) > 0;
            let state = match c["state"].as_str().unwrap_or("") {
                "running" if restarted => "failed and restarted",
                "failed" => "failed and restarted",
                other => other,
            };
            (c["name"].as_str().unwrap_or(""), state)
        })
        .collect();
    assert_eq!(
        states,
        [("broken", "failed and restarted"), ("readings", "running")],
        "{list}"
    );
    let bad = cli(&[
        "connector",
        "create",
        "x",
        "--plugin",
        "generator",
        "--topic",
        "x",
        "--config",
        "rate",
    ])?;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let missing = cli(&["connector", "status", "nope"])?;
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no connector named"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_reaching_outside_their_grants_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let granted = dir.path().join("granted");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&granted)?;
    std::fs::create_dir(&elsewhere)?;
    std::fs::write(elsewhere.join("secret.log"), "secret\n")?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    let secret = elsewhere.join("secret.log");
    let snoop = create_connector(
        &channel,
        "snoop",
        "file-source",
        "snoop",
        &[
            ("path", secret.to_str().context("path")?),
            ("wasi.dir", granted.to_str().context("path")?),
        ],
    )
    .await
    .expect_err("a file outside the granted directory");
    assert_eq!(snoop.code(), tonic::Code::InvalidArgument, "{snoop:?}");
    assert!(
        snoop.message().contains("grant it with wasi.dir="),
        "{snoop:?}"
    );
    let (port, received) = flaky_server().await?;
    let other_port = free_port()?;
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: "outbound".into(),
            config: None,
        })
        .await?;
    let exfiltrate = create_connector(
        &channel,
        "exfiltrate",
        "http-sink",
        "outbound",
        &[
            ("url", &format!("http://127.0.0.1:{port}/")),
            ("wasi.net", &format!("127.0.0.1:{other_port}")),
        ],
    )
    .await
    .expect_err("a server outside the granted address");
    assert_eq!(
        exfiltrate.code(),
        tonic::Code::InvalidArgument,
        "{exfiltrate:?}"
    );
    assert!(
        exfiltrate.message().contains("grant it with wasi.net="),
        "{exfiltrate:?}"
    );
    // A plugin that reaches out only once it runs is refused by the sandbox then: its task
    // fails with the error, and nothing reaches the server.
    let wasm = plugin_wasm("plugin_fault_source")?;
    appliance_proto::v1::plugins_client::PluginsClient::new(channel.clone())
        .add_plugin(pb::AddPluginRequest {
            name: "fault-source".into(),
            wasm: std::fs::read(wasm)?.into(),
        })
        .await?;
    create_connector(
        &channel,
        "phone-home",
        "fault-source",
        "phone-home",
        &[
            ("mode", "connect"),
            ("addr", &format!("127.0.0.1:{port}")),
            ("wasi.net", &format!("127.0.0.1:{other_port}")),
        ],
    )
    .await?;
    let refused = wait_for_task(&channel, "phone-home", failed).await?;
    assert!(
        refused
            .failure
            .contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{refused:?}"
    );
    assert!(values(&channel, "phone-home").await?.is_empty());
    assert_eq!(
        received.lock().unwrap_or_else(|e| e.into_inner()).requests,
        0,
        "no request reached the server outside the grant"
    );
    let refused = create_connector(
        &channel,
        "nowhere",
        "file-source",
        "nowhere",
        &[("path", "/x/app.log"), ("wasi.dir", "/does/not/exist")],
    )
    .await
    .expect_err("a grant of a missing directory");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("wasi.dir"), "{refused:?}");
    Ok(())
}

/// Measures, for the docs, the sustained rate of mqtt-source behind a stock Mosquitto and the
/// largest burst it passes without loss: bursts of 5,000 doubling up to 320,000 until one
/// loses messages. Run it in release (`-- --ignored --nocapture`); a debug build's figures
/// say little.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: minutes, and figures rather than a verdict"]
async fn mqtt_burst_benchmark() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(dir.path(), "")?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let channel = daemon.channel().await?;
    start_mqtt_source(&channel, &broker, "sensors/#", &[]).await?;
    let mut burst = 5_000;
    while burst <= 320_000 {
        let prefix = format!("b{burst}-");
        let lines: Vec<String> = (0..burst).map(|n| format!("{prefix}{n:06}")).collect();
        let started = std::time::Instant::now();
        anyhow::ensure!(
            broker.publish("sensors/bench", &lines)?.wait()?.success(),
            "mosquitto_pub failed"
        );
        // Until all arrived or nothing new came for 3 s.
        let (mut arrived, mut last_change) = (0, std::time::Instant::now());
        while arrived < burst && last_change.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = values(&channel, "mqtt")
                .await?
                .iter()
                .filter(|v| v.starts_with(&prefix))
                .count();
            if now > arrived {
                (arrived, last_change) = (now, std::time::Instant::now());
            }
        }
        let seconds = (last_change - started).as_secs_f64();
        eprintln!(
            "burst {burst}: {arrived} arrived in {seconds:.2} s ({:.0} messages/s)",
            arrived as f64 / seconds
        );
        if arrived < burst {
            eprintln!("largest burst without loss: {}", burst / 2);
            return Ok(());
        }
        burst *= 2;
    }
    eprintln!("no loss up to 320,000");
    Ok(())
}
