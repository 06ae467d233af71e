//! Kafka clients no one here wrote, against real `appliance run` processes: kcat (librdkafka)
//! produces with every codec and consumes by assignment over SASL/SCRAM and PLAIN; a record
//! reads the same through Kafka and gRPC both ways; a denied topic surfaces as kcat's
//! authorization error; hostile bytes at the Kafka port close only their own connection; a
//! Kafka consumer on a hub reads an edge's mirror at the edge's offsets; kafka-python 3's
//! default idempotent producer works, and a retried batch is stored once, across a SIGKILL;
//! kafka-python consumers share a group's partitions as members join, leave and crash, with
//! every record consumed once, and their commits are the appliance's and survive a SIGKILL;
//! confluent-kafka (PyPI) and kafkajs (npm) produce with every codec, consume in a group and
//! meet a denied topic as their authorization error; confluent-kafka's AdminClient grows a
//! topic and reads its settings, and the audit log records Kafka changes and denials.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context;
use appliance_e2e::{Daemon, Deployment, cli_ok, closed_by_server, fetch_all, kcat_with};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, ProducerId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use nix::sys::signal::Signal;

const BOB_PASSWORD: &str = "correct horse battery";
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// A daemon with topic `events` (3 partitions), user bob allowed everything on it, and user
/// carol allowed nothing.
fn daemon_with_users(dir: &Path) -> anyhow::Result<Daemon> {
    let daemon = Daemon::start_on_free_ports(dir, &[])?;
    for (args, stdin) in [
        (&["topic", "create", "events", "--partitions", "3"][..], ""),
        (&["user", "create", "bob"], BOB_PASSWORD),
        (&["user", "create", "carol"], "carol's own password"),
        (
            &[
                "acl",
                "add",
                "--principal",
                "User:bob",
                "--topic",
                "events",
                "--operation",
                "all",
            ],
            "",
        ),
    ] {
        let out = daemon.cli(dir, args, format!("{stdin}\n").as_bytes())?;
        anyhow::ensure!(out.status.success(), "{args:?}: {out:?}");
    }
    Ok(daemon)
}

/// Runs kcat against the daemon's Kafka listener as `user` over SASL `mechanism`.
fn kcat(
    daemon: &Daemon,
    mechanism: &str,
    user: &str,
    password: &str,
    args: &[&str],
    stdin: &[u8],
) -> anyhow::Result<Output> {
    kcat_with(
        daemon,
        &["-X", "security.protocol=SASL_PLAINTEXT"],
        mechanism,
        user,
        password,
        args,
        stdin,
    )
}

/// One line per record of partition `partition` of `events`, as bob reads it with kcat:
/// partition, offset, key, value, headers and timestamp.
fn partition_as_kcat_reads_it(
    daemon: &Daemon,
    mechanism: &str,
    partition: u32,
) -> anyhow::Result<String> {
    let partition = partition.to_string();
    let out = kcat(
        daemon,
        mechanism,
        "bob",
        BOB_PASSWORD,
        &[
            "-C",
            "-t",
            "events",
            "-p",
            &partition,
            "-o",
            "beginning",
            "-e",
        ]
        .into_iter()
        .chain(["-f", "%p|%o|%k|%s|%h|%T\n"])
        .collect::<Vec<_>>(),
        b"",
    )?;
    anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
    Ok(text(&out.stdout).trim().to_owned())
}

/// How many records the three partitions of `events` hold, read over gRPC.
async fn records_over_grpc(daemon: &Daemon) -> anyhow::Result<usize> {
    let channel = daemon.channel().await?;
    let mut total = 0;
    for partition in 0..3 {
        total += fetch_all(&channel, "events", partition).await?.len();
    }
    Ok(total)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn kcat_produces_with_every_codec_and_consumes_every_record_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_users(dir.path())?;
    let mut expected = BTreeSet::new();
    for (n, codec) in CODECS.iter().enumerate() {
        let mechanism = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"][n % 3];
        let lines: Vec<String> = (0..400)
            .map(|i| format!("{codec}-{i}:value {codec} {i}"))
            .collect();
        expected.extend(lines.iter().map(|line| line.replacen(':', "=", 1)));
        let out = kcat(
            &daemon,
            mechanism,
            "bob",
            BOB_PASSWORD,
            &[
                "-P",
                "-t",
                "events",
                "-K:",
                "-z",
                codec,
                "-X",
                "linger.ms=5",
            ],
            (lines.join("\n") + "\n").as_bytes(),
        )?;
        anyhow::ensure!(
            out.status.success() && out.stderr.is_empty(),
            "{codec}: {}",
            text(&out.stderr)
        );
    }
    let out = kcat(
        &daemon,
        "SCRAM-SHA-512",
        "bob",
        BOB_PASSWORD,
        &[
            "-C",
            "-t",
            "events",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k=%s\n",
        ],
        b"",
    )?;
    anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
    let consumed: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    let unique: BTreeSet<String> = consumed.iter().cloned().collect();
    assert_eq!(consumed.len(), expected.len(), "every record once");
    assert_eq!(unique, expected);

    // The same records through gRPC, whatever codec they were stored with.
    assert_eq!(records_over_grpc(&daemon).await?, expected.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_reads_the_same_through_kafka_and_grpc_both_ways() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_users(dir.path())?;
    let channel = daemon.channel().await?;

    // kcat -> gRPC.
    let out = kcat(
        &daemon,
        "SCRAM-SHA-256",
        "bob",
        BOB_PASSWORD,
        &[
            "-P",
            "-t",
            "events",
            "-p",
            "1",
            "-K:",
            "-H",
            "site=plant-7",
            "-H",
            "unit=kWh",
        ],
        b"meter-1:{\"power\":42}\n",
    )?;
    anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
    let stored = fetch_all(&channel, "events", 1).await?;
    assert_eq!(stored.len(), 1);
    let record = &stored[0];
    assert_eq!(record.key.as_deref(), Some(&b"meter-1"[..]));
    assert_eq!(record.value.as_deref(), Some(&b"{\"power\":42}"[..]));
    let headers: Vec<(String, Option<Vec<u8>>)> = record
        .headers
        .iter()
        .map(|h| (h.key.clone(), h.value.as_ref().map(|v| v.to_vec())))
        .collect();
    assert_eq!(
        headers,
        [
            ("site".to_owned(), Some(b"plant-7".to_vec())),
            ("unit".to_owned(), Some(b"kWh".to_vec()))
        ]
    );
    assert_eq!(
        partition_as_kcat_reads_it(&daemon, "SCRAM-SHA-256", 1)?,
        format!(
            "1|0|meter-1|{{\"power\":42}}|site=plant-7,unit=kWh|{}",
            record.timestamp_ms
        )
    );

    // gRPC -> kcat.
    RecordsClient::new(channel.clone())
        .produce(pb::ProduceRequest {
            topic: "events".into(),
            partition: Some(2),
            records: vec![pb::Record {
                key: Some(b"meter-2".to_vec().into()),
                value: Some(b"{\"power\":7}".to_vec().into()),
                headers: vec![pb::Header {
                    key: "site".into(),
                    value: Some(b"plant-9".to_vec().into()),
                }],
                timestamp_ms: 1_767_225_600_123,
            }],
        })
        .await?;
    assert_eq!(
        partition_as_kcat_reads_it(&daemon, "SCRAM-SHA-512", 2)?,
        "2|0|meter-2|{\"power\":7}|site=plant-9|1767225600123"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_topic_and_a_wrong_password_surface_as_kcats_own_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_users(dir.path())?;
    let carol = "carol's own password";
    let produced = kcat(
        &daemon,
        "SCRAM-SHA-256",
        "carol",
        carol,
        &["-P", "-t", "events"],
        b"not allowed\n",
    )?;
    assert!(
        text(&produced.stderr).contains("Topic authorization failed"),
        "{}",
        text(&produced.stderr)
    );
    let consumed = kcat(
        &daemon,
        "SCRAM-SHA-256",
        "carol",
        carol,
        &["-C", "-t", "events", "-p", "0", "-o", "beginning", "-e"],
        b"",
    )?;
    assert!(
        text(&consumed.stderr).contains("Topic authorization failed"),
        "{}",
        text(&consumed.stderr)
    );
    let listed = kcat(
        &daemon,
        "SCRAM-SHA-256",
        "bob",
        "not bob's password",
        &["-L"],
        b"",
    )?;
    assert!(!listed.status.success());
    assert!(
        text(&listed.stderr).contains("SASL authentication error"),
        "{}",
        text(&listed.stderr)
    );
    // Metadata lists only what a principal may describe.
    let listed = kcat(&daemon, "PLAIN", "carol", carol, &["-L"], b"")?;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stdout).contains("0 topics"),
        "{}",
        text(&listed.stdout)
    );
    assert_eq!(records_over_grpc(&daemon).await?, 0, "nothing was stored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_bytes_at_the_kafka_port_close_their_connection_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_users(dir.path())?;
    let addr = daemon.kafka_addr.clone().context("no Kafka listener")?;
    // A connection that stays open throughout, idle and well-behaved.
    let bystander = TcpStream::connect(&addr)?;
    let frame = |body: &[u8]| [&(body.len() as i32).to_be_bytes()[..], body].concat();
    let metadata_v1_huge_array = frame(&[
        0, 3, 0, 1, 0, 0, 0, 7, 0, 0, 0x7f, 0xff, 0xff, 0xff, b'x', b'y',
    ]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a negative size", (-1i32).to_be_bytes().to_vec()),
        ("a 2 GiB size", i32::MAX.to_be_bytes().to_vec()),
        (
            "an unknown API key",
            frame(&[0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0, 0]),
        ),
        ("Metadata before SASL", metadata_v1_huge_array),
        ("a size too small for a header", frame(&[0, 18])),
        (
            "random bytes",
            (0..4096u32)
                .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ];
    for (what, bytes) in cases {
        let mut stream = TcpStream::connect(&addr)?;
        stream.write_all(&bytes)?;
        assert!(
            closed_by_server(&mut stream, Duration::from_secs(10))?,
            "{what}: the connection stayed open"
        );
    }
    // A frame that announces more than it sends holds its connection only until the peer
    // goes away; the process keeps serving.
    let mut truncated = TcpStream::connect(&addr)?;
    truncated.write_all(&frame(&[0, 18, 0, 3, 0, 0, 0, 1])[..8])?;
    drop(truncated);

    let out = kcat(&daemon, "SCRAM-SHA-256", "bob", BOB_PASSWORD, &["-L"], b"")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("topic \"events\" with 3 partitions"),
        "{}",
        text(&out.stdout)
    );
    let metrics = daemon.scrape_metrics().await?;
    for line in [
        "appliance_kafka_errors_total{api=\"Metadata\",outcome=\"closed\"} 1",
        "appliance_kafka_errors_total{api=\"an unknown API\",outcome=\"closed\"} 1",
        "appliance_kafka_request_duration_seconds_count{api=\"Metadata\"}",
    ] {
        assert!(metrics.contains(line), "{line} is not in the metrics");
    }
    let mut bystander = bystander;
    bystander.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut byte = [0u8; 1];
    assert!(
        matches!(bystander.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the idle connection was not touched"
    );
    Ok(())
}

/// Grants `user` (made with `password`) everything on `topic`.
fn user_with_topic(
    daemon: &Daemon,
    dir: &Path,
    user: &str,
    password: &str,
    topic: &str,
) -> anyhow::Result<()> {
    cli_ok(
        daemon,
        dir,
        &["user", "create", user],
        format!("{password}\n").as_bytes(),
    )?;
    let principal = format!("User:{user}");
    cli_ok(
        daemon,
        dir,
        &[
            "acl",
            "add",
            "--principal",
            &principal,
            "--topic",
            topic,
            "--operation",
            "all",
        ],
        b"",
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_consumer_on_a_hub_reads_an_edges_mirror_at_the_edges_offsets() -> anyhow::Result<()>
{
    const RECORDS: usize = 300;
    let deployment = Deployment::new(&["plant-1"])?;
    let root = deployment.root();
    let hub = deployment.start_hub()?;
    let edge = deployment.start_edge("plant-1", 2)?;
    user_with_topic(&edge, root, "gateway", BOB_PASSWORD, "sensors")?;
    user_with_topic(&hub, root, "analyst", BOB_PASSWORD, "plant-1.sensors")?;
    let lines: Vec<String> = (0..RECORDS)
        .map(|i| format!("device-{}:reading {i}", i % 7))
        .collect();
    let out = kcat(
        &edge,
        "SCRAM-SHA-256",
        "gateway",
        BOB_PASSWORD,
        &["-P", "-t", "sensors", "-K:", "-z", "lz4"],
        (lines.join("\n") + "\n").as_bytes(),
    )?;
    anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
    deployment.link(&edge, "plant-1", &deployment.hub_addr(), &[])?;

    let read = |daemon: &Daemon, user: &str, topic: &str| -> anyhow::Result<Vec<String>> {
        let out = kcat(
            daemon,
            "SCRAM-SHA-512",
            user,
            BOB_PASSWORD,
            &[
                "-C",
                "-t",
                topic,
                "-o",
                "beginning",
                "-e",
                "-f",
                "%p|%o|%k|%s|%T\n",
            ],
            b"",
        )?;
        let mut lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        lines.sort();
        Ok(lines)
    };
    let at_edge = read(&edge, "gateway", "sensors")?;
    assert_eq!(at_edge.len(), RECORDS);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let at_hub = read(&hub, "analyst", "plant-1.sensors")?;
        if at_hub == at_edge {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the hub's mirror has {} of {RECORDS} records, or others",
            at_hub.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A mirror is read-only, to Kafka clients as to everyone.
    let refused = kcat(
        &hub,
        "SCRAM-SHA-256",
        "analyst",
        BOB_PASSWORD,
        &["-P", "-t", "plant-1.sensors"],
        b"not from the edge\n",
    )?;
    assert!(
        text(&refused.stderr).contains("Invalid topic"),
        "{}",
        text(&refused.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_over_tls_with_the_apis_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    // Without a certificate, a Kafka listener other machines reach is refused at start.
    let refused = appliance_e2e::run_to_end(
        root,
        &[
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--kafka-addr",
            "0.0.0.0:0",
        ],
    )?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("kafka.addr 0.0.0.0:0"),
        "{}",
        text(&refused.stderr)
    );

    for args in [
        &["certs", "init", "--dir", "tls"][..],
        &["certs", "server", "api", "--dir", "tls"],
    ] {
        let out = appliance_e2e::run_to_end(root, args)?;
        anyhow::ensure!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let daemon = Daemon::start_on_free_ports(
        root,
        &["--api-cert", "tls/api.pem", "--api-key", "tls/api.key"],
    )?;
    let ca = ["--server-ca", "tls/ca.pem"];
    for (args, stdin) in [
        (&["user", "create", "bob"][..], format!("{BOB_PASSWORD}\n")),
        (
            &[
                "acl",
                "add",
                "--principal",
                "User:bob",
                "--topic",
                "events",
                "--operation",
                "all",
            ],
            String::new(),
        ),
        (&["topic", "create", "events"], String::new()),
    ] {
        let out = daemon.cli(root, &[args, &ca[..]].concat(), stdin.as_bytes())?;
        anyhow::ensure!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let ca_file = root.join("tls/ca.pem");
    let ca_location = format!("ssl.ca.location={}", ca_file.display());
    let over_tls = ["-X", "security.protocol=SASL_SSL", "-X", &ca_location];
    let lines: Vec<String> = (0..50).map(|i| format!("over TLS {i}")).collect();
    let out = kcat_with(
        &daemon,
        &over_tls,
        "SCRAM-SHA-512",
        "bob",
        BOB_PASSWORD,
        &["-P", "-t", "events", "-z", "zstd"],
        (lines.join("\n") + "\n").as_bytes(),
    )?;
    anyhow::ensure!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out.stderr)
    );
    let out = kcat_with(
        &daemon,
        &over_tls,
        "SCRAM-SHA-256",
        "bob",
        BOB_PASSWORD,
        &["-C", "-t", "events", "-o", "beginning", "-e", "-f", "%s\n"],
        b"",
    )?;
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), lines);
    // The same listener in plaintext gets nowhere.
    let plaintext = kcat(
        &daemon,
        "SCRAM-SHA-256",
        "bob",
        BOB_PASSWORD,
        &["-L", "-m", "5"],
        b"",
    )?;
    assert!(!plaintext.status.success(), "{}", text(&plaintext.stdout));
    Ok(())
}

/// A Kafka client of a few requests, for what real clients do only on failures: a batch sent
/// again as a retry. Authenticates with SASL PLAIN.
struct RawKafka {
    stream: TcpStream,
    correlation_id: i32,
}

impl RawKafka {
    fn connect(addr: &str, user: &str, password: &str) -> anyhow::Result<Self> {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut client = Self {
            stream,
            correlation_id: 0,
        };
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let answer: kafka_protocol::messages::SaslHandshakeResponse =
            client.call(ApiKey::SaslHandshake, 1, &handshake)?;
        anyhow::ensure!(answer.error_code == 0, "SaslHandshake: {answer:?}");
        let auth = SaslAuthenticateRequest::default()
            .with_auth_bytes(format!("\0{user}\0{password}").into_bytes().into());
        let answer: kafka_protocol::messages::SaslAuthenticateResponse =
            client.call(ApiKey::SaslAuthenticate, 2, &auth)?;
        anyhow::ensure!(answer.error_code == 0, "SaslAuthenticate: {answer:?}");
        Ok(client)
    }

    fn call<Request: Encodable, Response: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Request,
    ) -> anyhow::Result<Response> {
        self.correlation_id += 1;
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("raw-test")))
            .encode(&mut frame, api.request_header_version(version))?;
        request.encode(&mut frame, version)?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&frame)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))?;
        anyhow::ensure!(header.correlation_id == self.correlation_id);
        Response::decode(&mut body, version)
    }

    /// Produces `batch` to partition 0 of `topic` (acks=all): the error code and base offset.
    fn produce(&mut self, topic: &str, batch: &Bytes) -> anyhow::Result<(i16, i64)> {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch.clone())),
                    ]),
            ]);
        let answer: ProduceResponse = self.call(ApiKey::Produce, 9, &request)?;
        let partition = &answer.responses[0].partition_responses[0];
        Ok((partition.error_code, partition.base_offset))
    }
}

/// A batch of `count` records of an idempotent producer, starting at `sequence`.
fn idempotent_batch(
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    count: i32,
) -> anyhow::Result<Bytes> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = (0..count)
        .map(|n| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(n),
            sequence: sequence + n,
            timestamp: 1_767_225_600_000 + i64::from(n),
            key: None,
            value: Some(Bytes::from(format!("retried? {}", sequence + n))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options)?;
    Ok(buf.freeze())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotent_producers_retried_batch_is_stored_once_even_across_a_restart()
-> anyhow::Result<()> {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    let dir = tempfile::tempdir()?;
    let mut daemon = daemon_with_users(dir.path())?;
    let addr = daemon.kafka_addr.clone().context("no Kafka listener")?;
    let mut client = RawKafka::connect(&addr, "bob", BOB_PASSWORD)?;
    let init: InitProducerIdResponse = client.call(
        ApiKey::InitProducerId,
        3,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    )?;
    assert_eq!(init.error_code, 0);
    let id = init.producer_id.0;
    let first = idempotent_batch(id, 0, 0, 3)?;
    assert_eq!(client.produce("events", &first)?, (0, 0));
    // The answer was lost, say: the producer sends the batch again, and gets the same offset.
    assert_eq!(client.produce("events", &first)?, (0, 0));
    let second = idempotent_batch(id, 0, 3, 2)?;
    assert_eq!(client.produce("events", &second)?, (0, 3));
    // A gap in the sequence is refused with Kafka's code.
    let (code, _) = client.produce("events", &idempotent_batch(id, 0, 9, 1)?)?;
    assert_eq!(code, ResponseError::OutOfOrderSequenceNumber.code());

    // After a SIGKILL the appliance reads its producers' sequences back from the log.
    daemon.stop_with(Signal::SIGKILL)?;
    daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let addr = daemon.kafka_addr.clone().context("no Kafka listener")?;
    let mut client = RawKafka::connect(&addr, "bob", BOB_PASSWORD)?;
    assert_eq!(client.produce("events", &second)?, (0, 3));
    assert_eq!(
        client.produce("events", &idempotent_batch(id, 0, 5, 1)?)?,
        (0, 5)
    );
    let init: InitProducerIdResponse = client.call(
        ApiKey::InitProducerId,
        3,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    )?;
    assert!(
        init.producer_id.0 > id,
        "ids are not handed out twice across restarts"
    );

    let channel = daemon.channel().await?;
    let values: Vec<String> = fetch_all(&channel, "events", 0)
        .await?
        .into_iter()
        .map(|r| text(&r.value.unwrap_or_default()))
        .collect();
    let expected: Vec<String> = (0..6).map(|n| format!("retried? {n}")).collect();
    assert_eq!(values, expected, "each record once, in order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_pythons_default_idempotent_producer_writes_every_record_once() -> anyhow::Result<()>
{
    const COUNT: usize = 2_000;
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_users(dir.path())?;
    let python = appliance_e2e::python::python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kafka_produce.py");
    let options = serde_json::json!({
        "bootstrap": daemon.kafka_addr.clone().context("no Kafka listener")?,
        "mechanism": "SCRAM-SHA-512",
        "user": "bob",
        "password": BOB_PASSWORD,
        "topic": "events",
        "count": COUNT,
        "compression": "gzip",
    });
    let out = tokio::task::block_in_place(|| {
        Command::new(python)
            .arg(&script)
            .arg(options.to_string())
            .output()
    })?;
    anyhow::ensure!(out.status.success(), "kafka-python: {}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        answer["idempotent"], true,
        "kafka-python 3 is idempotent by default"
    );
    let offsets: BTreeSet<(u64, u64)> = answer["offsets"]
        .as_array()
        .context("offsets")?
        .iter()
        .map(|pair| {
            (
                pair[0].as_u64().unwrap_or(99),
                pair[1].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(offsets.len(), COUNT, "every record at an offset of its own");
    assert_eq!(records_over_grpc(&daemon).await?, COUNT);
    Ok(())
}

/// One kafka-python group member running `kafka_group_consume.py`; it leaves its group when
/// its stop file appears.
struct GroupMember {
    child: std::process::Child,
    out: std::path::PathBuf,
    stop: std::path::PathBuf,
}

impl GroupMember {
    fn start(daemon: &Daemon, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let python = appliance_e2e::python::python()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kafka_group_consume.py");
        let out = dir.join(format!("{name}.jsonl"));
        let stop = dir.join(format!("{name}.stop"));
        let options = serde_json::json!({
            "bootstrap": daemon.kafka_addr.clone().context("no Kafka listener")?,
            "mechanism": "SCRAM-SHA-256",
            "user": "bob",
            "password": BOB_PASSWORD,
            "topic": "sensors",
            "group": "dashboards",
            "out": out,
            "stop": stop,
        });
        let child = Command::new(python)
            .arg(&script)
            .arg(options.to_string())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self { child, out, stop })
    }

    /// Kills the member's process (SIGKILL): it leaves nothing behind but its silence.
    fn crash(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Asks the member to leave and waits until it has.
    fn leave(mut self) -> anyhow::Result<()> {
        std::fs::write(&self.stop, b"")?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "member exited with {status}");
        Ok(())
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every (partition, offset, value) the members' output files hold.
fn consumed(outs: &[std::path::PathBuf]) -> anyhow::Result<Vec<(u64, u64, String)>> {
    let mut records = Vec::new();
    for out in outs {
        let Ok(text) = std::fs::read_to_string(out) else {
            continue;
        };
        for line in text.lines() {
            let (partition, offset, value): (u64, u64, String) = serde_json::from_str(line)?;
            records.push((partition, offset, value));
        }
    }
    Ok(records)
}

/// Waits until the members consumed `count` records in all.
fn wait_for_consumed(outs: &[std::path::PathBuf], count: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen = consumed(outs)?.len();
        if seen >= count {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the group consumed {seen} of {count} records"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `appliance group describe` shows `count` stable members of `dashboards`
/// sharing the six partitions of `sensors` evenly.
fn wait_for_members(daemon: &Daemon, dir: &Path, count: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = daemon.cli(dir, &["group", "describe", "dashboards", "--json"], b"")?;
        let described: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let members = described["members"].as_array().cloned().unwrap_or_default();
        let shares: Vec<usize> = members
            .iter()
            .map(|m| m["assigned"].as_array().map_or(0, Vec::len))
            .collect();
        let shared = described["state"] == "stable"
            && members.len() == count
            && shares.iter().sum::<usize>() == 6
            && shares
                .iter()
                .max()
                .zip(shares.iter().min())
                .is_some_and(|(max, min)| max - min <= 1);
        if shared {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the group did not settle on {count} members: {described}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produces `values` to `sensors` with kcat, keyed so that they spread over its partitions.
fn produce_sensors(daemon: &Daemon, values: std::ops::Range<usize>) -> anyhow::Result<()> {
    let lines: String = values.map(|n| format!("k{n}|reading {n}\n")).collect();
    let out = kcat(
        daemon,
        "SCRAM-SHA-256",
        "bob",
        BOB_PASSWORD,
        &["-P", "-t", "sensors", "-K", "|"],
        lines.as_bytes(),
    )?;
    anyhow::ensure!(out.status.success(), "kcat: {}", text(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_consumer_group_shares_partitions_and_offsets_with_the_appliances_groups()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut daemon = daemon_with_users(dir.path())?;
    for args in [
        &["topic", "create", "sensors", "--partitions", "6"][..],
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--topic",
            "sensors",
            "--operation",
            "all",
        ],
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--group",
            "dashboards",
            "--operation",
            "all",
        ],
    ] {
        cli_ok(&daemon, dir.path(), args, b"")?;
    }
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        // Three members share the six partitions; a fourth joins, the first leaves, the
        // second crashes.
        produce_sensors(&daemon, 0..300)?;
        let first = GroupMember::start(&daemon, dir.path(), "first")?;
        let second = GroupMember::start(&daemon, dir.path(), "second")?;
        let third = GroupMember::start(&daemon, dir.path(), "third")?;
        let mut outs = vec![first.out.clone(), second.out.clone(), third.out.clone()];
        wait_for_members(&daemon, dir.path(), 3)?;
        wait_for_consumed(&outs, 300)?;
        let fourth = GroupMember::start(&daemon, dir.path(), "fourth")?;
        outs.push(fourth.out.clone());
        produce_sensors(&daemon, 300..600)?;
        wait_for_members(&daemon, dir.path(), 4)?;
        wait_for_consumed(&outs, 600)?;
        first.leave()?;
        produce_sensors(&daemon, 600..900)?;
        wait_for_members(&daemon, dir.path(), 3)?;
        wait_for_consumed(&outs, 900)?;
        // A member that crashes (while idle, everything it read committed) is removed after
        // its session timeout, and the others take its partitions.
        second.crash()?;
        produce_sensors(&daemon, 900..1200)?;
        wait_for_members(&daemon, dir.path(), 2)?;
        wait_for_consumed(&outs, 1200)?;
        for member in [third, fourth] {
            member.leave()?;
        }
        let records = consumed(&outs)?;
        let distinct: BTreeSet<&(u64, u64, String)> = records.iter().collect();
        assert_eq!(distinct.len(), records.len(), "no record consumed twice");
        let values: BTreeSet<String> = records.iter().map(|r| r.2.clone()).collect();
        let expected: BTreeSet<String> = (0..1200).map(|n| format!("reading {n}")).collect();
        assert_eq!(values, expected, "every record consumed");
        Ok(())
    })?;

    // The Kafka group's commits are the appliance's: `appliance group describe` shows them.
    let described = cli_ok(
        &daemon,
        dir.path(),
        &["group", "describe", "dashboards", "--json"],
        b"",
    )?;
    let described: serde_json::Value = serde_json::from_str(&described)?;
    let offsets = described["offsets"].as_array().context("offsets")?;
    assert_eq!(offsets.len(), 6, "{described}");
    assert!(
        offsets
            .iter()
            .all(|o| o["lag"] == 0 && o["committed_offset"].as_u64().is_some()),
        "every partition committed to its end: {described}"
    );

    // Committed offsets survive a restart: a new member reads only what came after.
    daemon.stop_with(Signal::SIGKILL)?;
    daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        produce_sensors(&daemon, 1200..1260)?;
        let late = GroupMember::start(&daemon, dir.path(), "late")?;
        let outs = [late.out.clone()];
        wait_for_consumed(&outs, 60)?;
        std::thread::sleep(Duration::from_secs(2));
        late.leave()?;
        let values: BTreeSet<String> = consumed(&outs)?.into_iter().map(|r| r.2).collect();
        let expected: BTreeSet<String> = (1200..1260).map(|n| format!("reading {n}")).collect();
        assert_eq!(values, expected, "only the records after the commits");
        Ok(())
    })
}

/// A Kafka client no one here wrote, driven by a script that takes an action and options.
#[derive(Debug, Clone, Copy)]
enum ScriptedClient {
    /// confluent-kafka from PyPI (librdkafka).
    Confluent,
    /// kafkajs from npm.
    KafkaJs,
}

impl ScriptedClient {
    fn run(self, action: &str, options: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut command = match self {
            Self::Confluent => {
                let mut command = Command::new(appliance_e2e::python::python()?);
                command
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/confluent_client.py"));
                command
            }
            Self::KafkaJs => appliance_e2e::node::script("kafka_client.js")?,
        };
        let out = command.arg(action).arg(options.to_string()).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{self:?} {action}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{self:?} {action} printed {}", text(&out.stdout)))
    }
}

/// Produces with every codec, reads it all back over gRPC and in a consumer group with the
/// same client, and is refused a topic without an ACL with the client's authorization error.
async fn a_client_produces_every_codec_and_consumes_in_a_group(
    client: ScriptedClient,
) -> anyhow::Result<()> {
    const PER_CODEC: usize = 40;
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_users(dir.path())?;
    for args in [
        &["topic", "create", "secret"][..],
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--group",
            "readers",
            "--operation",
            "read",
        ],
    ] {
        cli_ok(&daemon, dir.path(), args, b"")?;
    }
    let options = |topic: &str| {
        serde_json::json!({
            "bootstrap": daemon.kafka_addr.clone().unwrap_or_default(),
            "mechanism": "SCRAM-SHA-256",
            "user": "bob",
            "password": BOB_PASSWORD,
            "topic": topic,
            "codecs": CODECS,
            "count": PER_CODEC,
            "group": "readers",
        })
    };
    let produced = tokio::task::block_in_place(|| client.run("produce", &options("events")))?;
    assert!(
        produced["error"].is_null() && produced["errors"].as_array().is_none_or(Vec::is_empty),
        "{client:?}: {produced}"
    );

    let channel = daemon.channel().await?;
    let mut stored = Vec::new();
    for partition in 0..3 {
        stored.extend(fetch_all(&channel, "events", partition).await?);
    }
    assert_eq!(stored.len(), CODECS.len() * PER_CODEC, "{client:?}");
    for record in &stored {
        let key = text(record.key.as_deref().unwrap_or_default());
        let (codec, n) = key.split_once('-').context("key")?;
        assert_eq!(
            text(record.value.as_deref().unwrap_or_default()),
            format!("{codec} record {n}"),
            "{client:?}"
        );
        let header = record.headers.first().context("the codec header")?;
        assert_eq!(
            (header.key.as_str(), header.value.as_deref()),
            ("codec", Some(codec.as_bytes())),
            "{client:?}"
        );
    }

    let mut consume = options("events");
    consume["count"] = serde_json::json!(CODECS.len() * PER_CODEC);
    let consumed = tokio::task::block_in_place(|| client.run("consume", &consume))?;
    let records: BTreeSet<(String, String)> = consumed["records"]
        .as_array()
        .context("records")?
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap_or_default().to_owned(),
                pair[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = CODECS
        .iter()
        .flat_map(|codec| {
            (0..PER_CODEC).map(move |n| (format!("{codec}-{n}"), format!("{codec} record {n}")))
        })
        .collect();
    assert_eq!(
        records, expected,
        "{client:?}: every record, once, in the group"
    );
    let described = cli_ok(
        &daemon,
        dir.path(),
        &["group", "describe", "readers", "--json"],
        b"",
    )?;
    let described: serde_json::Value = serde_json::from_str(&described)?;
    let committed: u64 = described["offsets"]
        .as_array()
        .context("offsets")?
        .iter()
        .filter_map(|o| o["committed_offset"].as_u64())
        .sum();
    assert_eq!(
        committed as usize,
        expected.len(),
        "{client:?}: {described}"
    );

    let mut denied = options("secret");
    denied["codecs"] = serde_json::json!(["none"]);
    let refused = tokio::task::block_in_place(|| client.run("produce", &denied))?;
    let error = match client {
        ScriptedClient::Confluent => refused["errors"][0].clone(),
        ScriptedClient::KafkaJs => refused["error"].clone(),
    };
    assert_eq!(error, "TOPIC_AUTHORIZATION_FAILED", "{client:?}: {refused}");
    Ok(())
}

/// Kafka's AdminClient (confluent-kafka) grows a topic and describes its settings, and the
/// audit log records the change and a denied produce as it records gRPC calls.
#[tokio::test(flavor = "multi_thread")]
async fn confluent_kafkas_admin_client_grows_a_topic_and_the_audit_log_records_kafka_requests()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_users(dir.path())?;
    cli_ok(&daemon, dir.path(), &["topic", "create", "secret"], b"")?;
    let options = |topic: &str| {
        serde_json::json!({
            "bootstrap": daemon.kafka_addr.clone().unwrap_or_default(),
            "mechanism": "SCRAM-SHA-512",
            "user": "bob",
            "password": BOB_PASSWORD,
            "topic": topic,
            "partitions": 5,
            "codecs": ["none"],
            "count": 1,
        })
    };
    let admin =
        tokio::task::block_in_place(|| ScriptedClient::Confluent.run("admin", &options("events")))?;
    assert_eq!(admin["partitions"], 5, "{admin}");
    assert_eq!(admin["configs"]["cleanup.policy"], "delete", "{admin}");
    assert_eq!(
        admin["configs"]["max.message.bytes"]
            .as_str()
            .map(str::is_empty),
        Some(false)
    );
    let described = cli_ok(
        &daemon,
        dir.path(),
        &["topic", "describe", "events", "--json"],
        b"",
    )?;
    let described: serde_json::Value = serde_json::from_str(&described)?;
    assert_eq!(
        described["partitions"].as_array().map(Vec::len),
        Some(5),
        "the appliance sees the partitions Kafka's AdminClient added: {described}"
    );

    tokio::task::block_in_place(|| ScriptedClient::Confluent.run("produce", &options("secret")))?;
    let channel = daemon.channel().await?;
    let audit: Vec<serde_json::Value> = fetch_all(&channel, "_audit", 0)
        .await?
        .iter()
        .map(|record| serde_json::from_slice(record.value.as_deref().unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    let grown = audit
        .iter()
        .find(|entry| entry["method"] == "Kafka CreatePartitions");
    let grown = grown.context("an audit record of the CreatePartitions")?;
    assert_eq!(
        (
            &grown["principal"],
            &grown["resource"],
            &grown["operation"],
            &grown["result"]
        ),
        (
            &serde_json::json!("User:bob"),
            &serde_json::json!("events"),
            &serde_json::json!("alter"),
            &serde_json::json!("done")
        ),
        "{grown}"
    );
    assert_eq!(grown["detail"], "partitions 3 -> 5", "{grown}");
    assert!(
        audit.iter().any(|entry| entry["resource"] == "secret"
            && entry["result"] == "denied"
            && entry["principal"] == "User:bob"
            && entry["method"]
                .as_str()
                .is_some_and(|m| m.starts_with("Kafka "))),
        "a denial of the secret topic: {audit:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn confluent_kafka_produces_every_codec_and_consumes_in_a_group() -> anyhow::Result<()> {
    a_client_produces_every_codec_and_consumes_in_a_group(ScriptedClient::Confluent).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kafkajs_produces_every_codec_and_consumes_in_a_group() -> anyhow::Result<()> {
    a_client_produces_every_codec_and_consumes_in_a_group(ScriptedClient::KafkaJs).await
}
