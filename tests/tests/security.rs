//! Security end to end: bearer tokens, ACLs and the metrics endpoint, against a real
//! appliance, with Python's grpcio as the client (and the appliance's own CLI to manage
//! tokens and ACLs, as an operator does).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use appliance_e2e::python::{CallOptions, grpc_call};
use appliance_e2e::{Daemon, found_in_files};
use appliance_proto::v1 as pb;
use appliance_proto::v1::records_client::RecordsClient;
use serde_json::{Value, json};

const CREATE_TOPIC: &str = "/appliance.v1.Topics/CreateTopic";
const LIST_TOPICS: &str = "/appliance.v1.Topics/ListTopics";
const PRODUCE: &str = "/appliance.v1.Records/Produce";
const EXECUTE: &str = "/appliance.v1.Query/Execute";

fn produce_request(topic: &str) -> Value {
    // bytes are base64 in protobuf's JSON mapping: "aGk=" is "hi".
    json!({"topic": topic, "records": [{"value": "aGk="}]})
}

/// Calls `method` as the holder of `token` (none: no credentials) and returns the status
/// code's name and the message or response.
fn call(
    daemon: &Daemon,
    token: Option<&str>,
    method: &str,
    request: Value,
) -> anyhow::Result<(String, Value)> {
    let answer = grpc_call(
        &daemon.grpc_url,
        method,
        &request,
        &CallOptions {
            token,
            ..CallOptions::default()
        },
    )?;
    let code = answer["code"].as_str().context("a code")?.to_owned();
    let detail = if code == "OK" {
        answer["response"].clone()
    } else {
        answer["message"].clone()
    };
    Ok((code, detail))
}

fn code(
    daemon: &Daemon,
    token: Option<&str>,
    method: &str,
    request: Value,
) -> anyhow::Result<String> {
    Ok(call(daemon, token, method, request)?.0)
}

/// `appliance ARGS` as the admin; its standard output.
fn admin(daemon: &Daemon, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = daemon.cli(dir, args, b"")?;
    anyhow::ensure!(
        output.status.success(),
        "appliance {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_acls_decide_every_call_of_a_grpcio_client() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    let admin_token = daemon.token.clone();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("appliance-data/admin.token"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The admin token made at first start works; no token or a wrong one does not.
    for topic in ["plant-1", "plant-secret", "office"] {
        let created = call(
            &daemon,
            Some(&admin_token),
            CREATE_TOPIC,
            json!({"name": topic}),
        )?;
        assert_eq!(created.0, "OK", "{created:?}");
    }
    let (no_token, why) = call(&daemon, None, LIST_TOPICS, json!({}))?;
    assert_eq!(no_token, "UNAUTHENTICATED");
    assert!(why.as_str().unwrap_or_default().contains("Bearer"), "{why}");
    let mut wrong = admin_token.clone();
    wrong.replace_range(wrong.len() - 4.., "AAAA");
    assert_eq!(
        code(&daemon, Some(&wrong), LIST_TOPICS, json!({}))?,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        code(&daemon, Some("not-a-token"), LIST_TOPICS, json!({}))?,
        "UNAUTHENTICATED"
    );

    // A token without ACLs authenticates but is allowed nothing, and sees no topics.
    let bob = admin(
        &daemon,
        dir.path(),
        &["token", "create", "bob", "--expires", "1h"],
    )?;
    let (denied, why) = call(&daemon, Some(&bob), PRODUCE, produce_request("plant-1"))?;
    assert_eq!(denied, "PERMISSION_DENIED");
    let why = why.as_str().unwrap_or_default().to_owned();
    assert!(
        why.contains("User:bob may not write topic \"plant-1\""),
        "{why}"
    );
    assert!(why.contains("appliance acl add"), "{why}");
    let (listed, topics) = call(&daemon, Some(&bob), LIST_TOPICS, json!({}))?;
    assert_eq!(listed, "OK");
    assert_eq!(topics, json!({}), "bob sees no topic");

    // A prefixed ACL allows what it covers, and a deny wins over it.
    admin(
        &daemon,
        dir.path(),
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--topic",
            "plant-",
            "--prefixed",
            "--operation",
            "write",
        ],
    )?;
    admin(
        &daemon,
        dir.path(),
        &[
            "acl",
            "add",
            "--principal",
            "*",
            "--topic",
            "plant-secret",
            "--operation",
            "write",
            "--deny",
        ],
    )?;
    assert_eq!(
        code(&daemon, Some(&bob), PRODUCE, produce_request("plant-1"))?,
        "OK"
    );
    assert_eq!(
        code(&daemon, Some(&bob), PRODUCE, produce_request("office"))?,
        "PERMISSION_DENIED"
    );
    let (denied, why) = call(
        &daemon,
        Some(&bob),
        PRODUCE,
        produce_request("plant-secret"),
    )?;
    assert_eq!(denied, "PERMISSION_DENIED");
    assert!(
        why.as_str()
            .unwrap_or_default()
            .contains("an ACL denies it"),
        "{why}"
    );
    let (_, topics) = call(&daemon, Some(&bob), LIST_TOPICS, json!({}))?;
    let names: Vec<&str> = topics["topics"]
        .as_array()
        .context("topics")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["plant-1", "plant-secret"],
        "what bob may write he may describe"
    );

    // A query needs read on every topic it scans.
    let sql =
        json!({"sql": "SELECT count(*) AS n FROM \"plant-1\"", "format": "ANSWER_FORMAT_JSON"});
    let (denied, why) = call(&daemon, Some(&bob), EXECUTE, sql.clone())?;
    assert_eq!(denied, "PERMISSION_DENIED", "{why}");
    assert!(
        why.as_str()
            .unwrap_or_default()
            .contains("may not read topic \"plant-1\""),
        "{why}"
    );
    admin(
        &daemon,
        dir.path(),
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--topic",
            "plant-1",
            "--operation",
            "read",
        ],
    )?;
    let (answered, answer) = call(&daemon, Some(&bob), EXECUTE, sql)?;
    assert_eq!(answered, "OK", "{answer}");
    assert!(
        answer["json"]
            .as_str()
            .unwrap_or_default()
            .contains("\"n\":1"),
        "{answer}"
    );

    // Only a super-user manages tokens and ACLs.
    let by_bob = daemon.cli_as(dir.path(), &bob, &["token", "list"], b"")?;
    assert_eq!(by_bob.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&by_bob.stderr).contains("PermissionDenied"));

    // A revoked token is refused from the next call on; so is an expired one.
    let listed = admin(&daemon, dir.path(), &["token", "list", "--json"])?;
    let listed: Value = serde_json::from_str(&listed)?;
    let bob_id = listed
        .as_array()
        .context("tokens")?
        .iter()
        .find(|t| t["principal"] == "User:bob")
        .and_then(|t| t["id"].as_str())
        .context("bob's token")?
        .to_owned();
    assert!(
        !listed.to_string().contains(&bob[21..]),
        "no secret in the list"
    );
    admin(&daemon, dir.path(), &["token", "revoke", &bob_id])?;
    assert_eq!(
        code(&daemon, Some(&bob), PRODUCE, produce_request("plant-1"))?,
        "UNAUTHENTICATED"
    );
    let carol = admin(
        &daemon,
        dir.path(),
        &["token", "create", "carol", "--expires", "1s"],
    )?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (expired, why) = call(&daemon, Some(&carol), LIST_TOPICS, json!({}))?;
    assert_eq!(expired, "UNAUTHENTICATED");
    assert!(
        why.as_str().unwrap_or_default().contains("expired"),
        "{why}"
    );

    // Failed authentications, denials and changes are in the `_audit` topic, queried with SQL.
    let audit_sql = json!({
        "sql": "SELECT principal, method, resource, detail, result FROM \"_audit\" ORDER BY _offset",
        "format": "ANSWER_FORMAT_JSON"
    });
    let (answered, answer) = call(&daemon, Some(&admin_token), EXECUTE, audit_sql.clone())?;
    assert_eq!(answered, "OK", "{answer}");
    let rows: Vec<Value> = serde_json::from_str(answer["json"].as_str().context("json rows")?)?;
    let has = |principal: Value, method: &str, resource: Value, result: &str| {
        rows.iter().any(|row| {
            row["principal"] == principal
                && row["method"] == method
                && row["resource"] == resource
                && row["result"] == result
        })
    };
    assert!(
        has(json!("User:admin"), "CreateTopic", json!("plant-1"), "done"),
        "{rows:?}"
    );
    assert!(
        has(json!("User:bob"), "Produce", json!("plant-1"), "denied"),
        "{rows:?}"
    );
    assert!(
        has(
            json!("User:bob"),
            "Produce",
            json!("plant-secret"),
            "denied"
        ),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|row| row["method"] == "RevokeToken"
            && row["result"] == "done"
            && row["detail"] == format!("token {bob_id} of User:bob")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|row| row["method"] == "CreateAcl"
            && row["detail"] == "deny * write topic plant-secret (literal)"),
        "{rows:?}"
    );
    assert!(
        has(Value::Null, "ListTopics", Value::Null, "unauthenticated"),
        "{rows:?}"
    );
    assert!(
        !rows
            .iter()
            .any(|row| row["method"] == "ListTopics" && row["result"] != "unauthenticated"),
        "reads that succeed are not audited: {rows:?}"
    );
    let (denied, _) = call(&daemon, Some(&carol), EXECUTE, audit_sql)?;
    assert_eq!(denied, "UNAUTHENTICATED");
    let (forged, why) = call(
        &daemon,
        Some(&admin_token),
        PRODUCE,
        produce_request("_audit"),
    )?;
    assert_eq!(
        forged, "PERMISSION_DENIED",
        "not even a super-user writes the audit"
    );
    assert!(
        why.as_str()
            .unwrap_or_default()
            .contains("written only by the appliance"),
        "{why}"
    );

    // The metrics endpoint wants a token too; health checks do not (probes send none).
    let unauthenticated = daemon.get_metrics(None).await?;
    assert!(
        unauthenticated.starts_with("HTTP/1.1 401"),
        "{unauthenticated}"
    );
    daemon.scrape_metrics().await?;
    let channel = tonic::transport::Channel::from_shared(daemon.grpc_url.clone())?
        .connect()
        .await?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // No secret reaches the log.
    let log = daemon.log_text();
    for secret in [&admin_token, &bob, &carol] {
        assert!(
            !log.contains(&secret[21..]),
            "a token's secret is in the log"
        );
    }
    Ok(())
}

/// `appliance ARGS` in `dir` (no server), which must succeed.
fn offline(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = appliance_e2e::run_to_end(dir, args)?;
    anyhow::ensure!(
        output.status.success(),
        "appliance {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_client_certificates_and_hostile_handshakes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();

    // Plaintext on an address other machines reach is refused at start, saying what to do.
    let refused = appliance_e2e::run_to_end(
        root,
        &[
            "run",
            "--grpc-addr",
            "0.0.0.0:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )?;
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("--api-cert") && why.contains("appliance certs server"),
        "{why}"
    );

    offline(root, &["certs", "init", "--dir", "tls"])?;
    offline(root, &["certs", "server", "api", "--dir", "tls"])?;
    // CN=alice.ops: the rule below maps it to User:alice.
    offline(root, &["certs", "client", "alice.ops", "--dir", "tls"])?;
    std::fs::write(
        root.join("appliance.toml"),
        "[api]\ntls-cert = \"tls/api.pem\"\ntls-key = \"tls/api.key\"\ntls-client-ca = \"tls/ca.pem\"\n\
         [security]\nclient-principal-rules = ['RULE:^CN=([a-z]+)\\.ops$/$1/', 'DEFAULT']\n",
    )?;
    let daemon = Daemon::start_on_free_ports(root, &["--config", "appliance.toml"])?;
    assert!(
        daemon.grpc_url.starts_with("https://"),
        "{}",
        daemon.grpc_url
    );
    let ca = root.join("tls/ca.pem");
    let (cert, key) = (
        root.join("tls/alice.ops.pem"),
        root.join("tls/alice.ops.key"),
    );
    let over_tls =
        |token: Option<&str>, client_cert: Option<(&Path, &Path)>, method: &str, request: Value| {
            let answer = grpc_call(
                &daemon.grpc_url,
                method,
                &request,
                &CallOptions {
                    token,
                    ca: Some(&ca),
                    client_cert,
                    server_name: Some("localhost"),
                },
            )?;
            anyhow::Ok((
                answer["code"].as_str().unwrap_or_default().to_owned(),
                answer,
            ))
        };

    // Over TLS with a token a call succeeds; the same call in plaintext does not get through.
    let (created, answer) = over_tls(
        Some(&daemon.token),
        None,
        CREATE_TOPIC,
        json!({"name": "plant-1"}),
    )?;
    assert_eq!(created, "OK", "{answer}");
    let plaintext = grpc_call(
        &daemon.grpc_url,
        LIST_TOPICS,
        &json!({}),
        &CallOptions {
            token: Some(&daemon.token),
            ..CallOptions::default()
        },
    )?;
    assert_eq!(plaintext["code"], "UNAVAILABLE", "{plaintext}");

    // A client certificate authenticates as the user its rule maps it to.
    let (denied, answer) = over_tls(
        None,
        Some((&cert, &key)),
        PRODUCE,
        produce_request("plant-1"),
    )?;
    assert_eq!(denied, "PERMISSION_DENIED", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("User:alice may not write"),
        "{answer}"
    );
    let granted = daemon.cli(
        root,
        &[
            "acl",
            "add",
            "--server-ca",
            "tls/ca.pem",
            "--principal",
            "User:alice",
            "--topic",
            "plant-1",
            "--operation",
            "write",
        ],
        b"",
    )?;
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    assert_eq!(
        over_tls(
            None,
            Some((&cert, &key)),
            PRODUCE,
            produce_request("plant-1")
        )?
        .0,
        "OK"
    );

    // Stalled and garbage handshakes on both endpoints are closed within the handshake
    // timeout, and the process serves on.
    let metrics_addr = daemon.metrics_addr.clone();
    let grpc_addr = daemon.grpc_url.trim_start_matches("https://").to_owned();
    let hostile = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::Write;
        let mut streams = Vec::new();
        for addr in [&grpc_addr, &metrics_addr] {
            // The first bytes of a ClientHello record, then nothing.
            let mut stalled = std::net::TcpStream::connect(addr)?;
            stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])?;
            let mut garbage = std::net::TcpStream::connect(addr)?;
            garbage.write_all(&[0x42; 300])?;
            streams.extend([stalled, garbage]);
        }
        for stream in &mut streams {
            anyhow::ensure!(
                appliance_e2e::closed_by_server(stream, Duration::from_secs(20))?,
                "a hostile handshake held its connection past the handshake timeout"
            );
        }
        Ok(())
    });
    hostile.await??;
    let (listed, answer) = over_tls(Some(&daemon.token), None, LIST_TOPICS, json!({}))?;
    assert_eq!(listed, "OK", "{answer}");
    Ok(())
}

/// Produces `request` as fast as answers come for `run`: the payload bytes a second.
async fn produce_for(
    channel: appliance_e2e::Channel,
    request: pb::ProduceRequest,
    run: Duration,
) -> anyhow::Result<f64> {
    let payload: usize = request
        .records
        .iter()
        .map(|record| record.value.as_ref().map_or(0, |value| value.len()))
        .sum();
    let mut client = RecordsClient::new(channel);
    let started = Instant::now();
    let mut bytes = 0;
    while started.elapsed() < run {
        client.produce(request.clone()).await?;
        bytes += payload;
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quota_paces_one_producer_and_not_another() -> anyhow::Result<()> {
    const QUOTA: f64 = 200_000.0;
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_on_free_ports(dir.path(), &[])?;
    admin(&daemon, dir.path(), &["topic", "create", "meters"])?;
    let slow = admin(&daemon, dir.path(), &["token", "create", "slow"])?;
    let fast = admin(&daemon, dir.path(), &["token", "create", "fast"])?;
    admin(
        &daemon,
        dir.path(),
        &[
            "acl",
            "add",
            "--principal",
            "*",
            "--topic",
            "meters",
            "--operation",
            "write",
        ],
    )?;
    admin(
        &daemon,
        dir.path(),
        &[
            "quota",
            "set",
            "User:slow",
            "--produce-bytes-per-sec",
            &QUOTA.to_string(),
        ],
    )?;
    let listed: Value =
        serde_json::from_str(&admin(&daemon, dir.path(), &["quota", "list", "--json"])?)?;
    assert_eq!(
        listed,
        json!([{"principal": "User:slow", "produce_bytes_per_sec": 200000,
                "fetch_bytes_per_sec": null, "requests_per_sec": null}])
    );

    // 20 records of 1000 bytes a request: a tenth of the quota.
    let request = pb::ProduceRequest {
        topic: "meters".into(),
        records: (0..20)
            .map(|_| pb::Record {
                value: Some(vec![b'x'; 1000].into()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let run = Duration::from_secs(5);
    let (slow_rate, fast_rate) = tokio::try_join!(
        produce_for(
            appliance_e2e::connect(&daemon.grpc_url, &slow).await?,
            request.clone(),
            run
        ),
        produce_for(
            appliance_e2e::connect(&daemon.grpc_url, &fast).await?,
            request,
            run
        ),
    )?;
    eprintln!("quota {QUOTA} B/s: slow produced {slow_rate:.0} B/s, fast {fast_rate:.0} B/s");
    assert!(
        (QUOTA * 0.8..=QUOTA * 1.2).contains(&slow_rate),
        "slow produced {slow_rate:.0} B/s against a quota of {QUOTA}"
    );
    assert!(
        fast_rate > QUOTA * 2.0,
        "fast, without a quota, produced only {fast_rate:.0} B/s"
    );

    let metrics = daemon.scrape_metrics().await?;
    let throttled = |principal: &str| {
        metrics.lines().any(|line| {
            line.starts_with(&format!(
                "appliance_principal_throttle_seconds_total{{principal=\"{principal}\",usage=\"ProduceBytes\"}}"
            ))
        })
    };
    assert!(throttled("User:slow"), "{metrics}");
    assert!(!throttled("User:fast"), "{metrics}");
    assert!(
        metrics.contains(
            "appliance_principal_usage_total{principal=\"User:fast\",usage=\"ProduceBytes\"}"
        ),
        "{metrics}"
    );

    admin(&daemon, dir.path(), &["quota", "remove", "User:slow"])?;
    assert_eq!(
        admin(&daemon, dir.path(), &["quota", "list", "--json"])?,
        "[]"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_from_providers_reach_plugins_and_nothing_else() -> anyhow::Result<()> {
    const FILE_SECRET: &str = "Fz7-file-secret-0193";
    const ENV_SECRET: &str = "Env-secret-55ab";
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    std::fs::create_dir(root.join("secrets"))?;
    std::fs::write(root.join("secrets/site"), format!("{FILE_SECRET}\n"))?;
    std::fs::write(
        root.join("appliance.toml"),
        "[security]\nsecret-dirs = [\"secrets\"]\n",
    )?;
    let daemon = Daemon::start_with_env(
        root,
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--config",
            "appliance.toml",
        ],
        &[("APPLIANCE_SECRET_RATE", ENV_SECRET)],
    )?;
    let reference = format!("${{file:{}}}", root.join("secrets/site").display());
    admin(&daemon, root, &["topic", "create", "readings"])?;

    // A transform of a connector gets the file's contents: it stamps them on every record.
    let transform = format!("insert-field:static.field=site,static.value={reference}");
    admin(
        &daemon,
        root,
        &[
            "connector",
            "create",
            "meters",
            "--plugin",
            "generator",
            "--topic",
            "readings",
            "--config",
            "rate=50",
            "--transform",
            &transform,
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let consumed = admin(
            &daemon,
            root,
            &[
                "consume",
                "readings",
                "--from-beginning",
                "--max",
                "1",
                "--json",
            ],
        )?;
        if consumed.contains(FILE_SECRET) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no stamped record: {consumed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What is stored and answered is the reference.
    let status = admin(&daemon, root, &["connector", "status", "meters", "--json"])?;
    assert!(status.contains(&reference), "{status}");
    assert!(!status.contains(FILE_SECRET), "{status}");

    // A plugin that quotes the value it refuses is answered with the value redacted.
    let refused = daemon.cli(
        root,
        &[
            "connector",
            "create",
            "rated",
            "--plugin",
            "generator",
            "--topic",
            "readings",
            "--config",
            "rate=${env:APPLIANCE_SECRET_RATE}",
        ],
        b"",
    )?;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        why.contains("[redacted]") && !why.contains(ENV_SECRET),
        "{why}"
    );

    // References outside the allowed directories and prefixes are refused, saying why.
    for (setting, fix) in [
        ("rate=${env:HOME}", "secret-env-prefixes"),
        ("rate=${file:/etc/hostname}", "secret-dirs"),
        (
            "rate=${env:APPLIANCE_SECRET_RATE",
            "is not a secret reference",
        ),
    ] {
        let refused = daemon.cli(
            root,
            &[
                "connector",
                "create",
                "x",
                "--plugin",
                "generator",
                "--topic",
                "readings",
                "--config",
                setting,
            ],
            b"",
        )?;
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && why.contains(fix),
            "{setting}: {why}"
        );
    }

    let log = daemon.log_text();
    for secret in [FILE_SECRET, ENV_SECRET] {
        assert!(!log.contains(secret), "{secret} in the log");
        assert!(
            !found_in_files(&root.join("appliance-data/meta"), secret.as_bytes())?,
            "{secret} in the metadata store"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn users_passwords_are_kept_as_credentials_only() -> anyhow::Result<()> {
    const PASSWORD: &str = "correct horse battery";
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let daemon = Daemon::start_on_free_ports(root, &[])?;

    // From standard input (never a flag), or from a file.
    let created = daemon.cli(
        root,
        &["user", "create", "bob"],
        format!("{PASSWORD}\n").as_bytes(),
    )?;
    assert!(created.status.success(), "{created:?}");
    std::fs::write(root.join("alice.pw"), "another good password\n")?;
    admin(
        &daemon,
        root,
        &["user", "create", "alice", "--password-file", "alice.pw"],
    )?;
    let again = daemon.cli(root, &["user", "create", "bob"], b"whatever it is\n")?;
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{again:?}"
    );
    let weak = daemon.cli(root, &["user", "password", "bob"], b"short\n")?;
    assert!(
        String::from_utf8_lossy(&weak.stderr).contains("fewer than 8"),
        "{weak:?}"
    );

    let listed: Value = serde_json::from_str(&admin(&daemon, root, &["user", "list", "--json"])?)?;
    let principals: Vec<&str> = listed
        .as_array()
        .context("users")?
        .iter()
        .filter_map(|u| u["principal"].as_str())
        .collect();
    assert_eq!(principals, ["User:alice", "User:bob"]);
    admin(&daemon, root, &["user", "delete", "alice"])?;

    // The password is nowhere: not in answers, the log, the metadata store or the audit.
    assert!(!listed.to_string().contains(PASSWORD));
    assert!(!daemon.log_text().contains(PASSWORD));
    let data = root.join("appliance-data");
    assert!(
        !found_in_files(&data, PASSWORD.as_bytes())?,
        "the password is stored"
    );
    let audit = json!({
        "sql": "SELECT method, detail FROM \"_audit\" WHERE result = 'done'",
        "format": "ANSWER_FORMAT_JSON"
    });
    let (answered, answer) = call(&daemon, Some(&daemon.token), EXECUTE, audit)?;
    assert_eq!(answered, "OK", "{answer}");
    let rows = answer["json"].as_str().unwrap_or_default();
    assert!(
        rows.contains("user User:bob") && rows.contains("DeleteUser"),
        "{rows}"
    );
    Ok(())
}
