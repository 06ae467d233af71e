//! The web console in a real browser: a hub with three linked edges, as an operator sets
//! them up, and Debian's headless Chromium driven by Selenium (`tests/python/console_browser.py`)
//! through the hub's console: sign in with the admin token, see the three edges and their
//! lag, a topic's newest records, a GROUP BY drawn as a table and a bar chart, a followed
//! query that changes while an edge produces, a pipeline paused and resumed, and a user
//! without the ACL refused with the API's message shown. Screenshots of each page, at
//! 1280x800 and at a phone's 390x844, land in `$CARGO_TARGET_DIR/console-screenshots`.
//!
//! Beside it, the console's HTTP surface as a hostile client sees it: security headers, the
//! session cookie's attributes, CSRF and cross-origin refusals.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use appliance_e2e::python::drive_console;
use appliance_e2e::{Daemon, Deadline, Deployment, cli_ok};
use appliance_proto::v1 as pb;
use appliance_proto::v1::links_client::LinksClient;
use appliance_proto::v1::records_client::RecordsClient;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const EDGES: [&str; 3] = ["edge-a", "edge-b", "edge-c"];
const VIEWER: &str = "viewer";
const VIEWER_PASSWORD: &str = "correct horse battery staple";
const PIPELINE: &str = "hot-readings";

fn reading(edge: usize, i: u64) -> pb::Record {
    let value = serde_json::json!({
        "device": format!("d{}", i % 4),
        "temp": 15.0 + (edge as f64) * 3.0 + (i % 10) as f64,
    });
    pb::Record {
        key: Some(format!("d{}", i % 4).into_bytes().into()),
        value: Some(value.to_string().into_bytes().into()),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

async fn produce(edge: &Daemon, index: usize, from: u64, count: u64) -> anyhow::Result<()> {
    RecordsClient::new(edge.channel().await?)
        .produce(pb::ProduceRequest {
            topic: "sensors".into(),
            partition: Some(0),
            records: (from..from + count).map(|i| reading(index, i)).collect(),
        })
        .await?;
    Ok(())
}

fn screenshots() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_in_chromium_sees_the_fleet_queries_follows_acts_and_is_refused_without_an_acl()
-> anyhow::Result<()> {
    let deployment = Deployment::new(&EDGES)?;
    let root = deployment.root();
    let hub = deployment.start_hub()?;
    let mut edges = Vec::new();
    for (index, name) in EDGES.iter().enumerate() {
        let edge = deployment.start_edge(name, 1)?;
        produce(&edge, index, 0, 40 + index as u64 * 10).await?;
        deployment.link(&edge, name, &deployment.hub_addr(), &[])?;
        edges.push(edge);
    }
    let deadline = Deadline::new("every edge's mirror on the hub");
    loop {
        let rows = cli_ok(
            &hub,
            root,
            &[
                "query",
                "--format",
                "json",
                "SELECT count(*) AS n FROM sensors",
            ],
            b"",
        )
        .unwrap_or_default();
        if rows.contains("\"n\":150") {
            break;
        }
        deadline.pause(&rows).await?;
    }

    // A pipeline on the hub to pause and resume, and a user who may see it but not alter it.
    cli_ok(
        &hub,
        root,
        &["topic", "create", "hot", "--partitions", "1"],
        b"",
    )?;
    cli_ok(
        &hub,
        root,
        &[
            "pipeline",
            "create",
            PIPELINE,
            "--from",
            "edge-a.sensors",
            "--to",
            "hot",
            "--transform",
            "filter:field=device,equals=d1",
        ],
        b"",
    )?;
    cli_ok(
        &hub,
        root,
        &["user", "create", VIEWER],
        format!("{VIEWER_PASSWORD}\n").as_bytes(),
    )?;
    let principal = format!("User:{VIEWER}");
    for grant in [
        &["--pipeline", "*", "--operation", "describe"][..],
        &["--topic", "*", "--operation", "read"][..],
        &["--cluster", "--operation", "describe"][..],
    ] {
        let mut args = vec!["acl", "add", "--principal", &principal];
        args.extend_from_slice(grant);
        cli_ok(&hub, root, &args, b"")?;
    }

    // edge-a produces the whole time, so the followed query has something to follow.
    let producing = CancellationToken::new();
    let producer = {
        let producing = producing.clone();
        let channel = edges[0].channel().await?;
        tokio::spawn(async move {
            let mut records = RecordsClient::new(channel);
            let mut next = 1000;
            while !producing.is_cancelled() {
                let _ = records
                    .produce(pb::ProduceRequest {
                        topic: "sensors".into(),
                        partition: Some(0),
                        records: vec![reading(0, next)],
                    })
                    .await;
                next += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let console = hub
        .console_addr
        .clone()
        .context("the hub serves no console")?;
    let shots = screenshots()?;
    let driven = drive_console(&serde_json::json!({
        "url": format!("http://{console}/"),
        "token": hub.token,
        "viewer": VIEWER,
        "password": VIEWER_PASSWORD,
        "edges": EDGES,
        "pipeline": PIPELINE,
        "shots": shots,
    }));
    producing.cancel();
    producer.await?;
    let figures = driven?;
    println!("console in Chromium: {figures}");
    for page in [
        "overview",
        "overview-phone",
        "topics",
        "topic",
        "sql",
        "sql-follow",
        "pipelines",
        "refused",
    ] {
        let shot = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot)
            .with_context(|| format!("no screenshot {}", shot.display()))?
            .len();
        assert!(size > 1000, "{} is {size} bytes", shot.display());
    }

    // What the console did is in the audit topic, as the principal who did it.
    let audit = cli_ok(
        &hub,
        root,
        &[
            "query",
            "--format",
            "json",
            "SELECT principal, method, result FROM \"_audit\" ORDER BY _offset",
        ],
        b"",
    )?;
    for expected in ["ConsoleSignIn", "PausePipeline", "ResumePipeline"] {
        assert!(audit.contains(expected), "{expected} not audited:\n{audit}");
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&audit)?;
    assert!(
        rows.iter().any(|row| row["principal"] == principal.as_str()
            && row["method"] == "PausePipeline"
            && row["result"] == "denied"),
        "the viewer's refused pause is not audited:\n{audit}"
    );
    Ok(())
}

/// One HTTP/1.1 exchange with the console: the status, the head (status line and headers)
/// and the body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, head.to_owned(), body.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_refuses_what_a_hostile_page_or_client_tries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Plaintext on an address other machines reach is refused at start, as for the API.
    let refused = appliance_e2e::run_to_end(
        dir.path(),
        &["run", "--data-dir", "data", "--console-addr", "0.0.0.0:0"],
    )?;
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("api.console-addr") && why.contains("--api-cert"),
        "{why}"
    );

    let daemon = Daemon::start_on_free_ports(dir.path(), &["--data-dir", "data"])?;
    let addr = daemon.console_addr.clone().context("no console")?;

    // The page, with its policy: nothing inline, nothing from elsewhere, never framed.
    let (status, head, page) = http(&addr, "GET", "/", &[], "").await?;
    assert_eq!(status, 200);
    assert!(page.contains("/assets/console.js"), "{page}");
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
    ] {
        assert!(
            head.to_ascii_lowercase().contains(header),
            "{header} missing:\n{head}"
        );
    }
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "inline code in {page}"
    );

    // No session, no data; a wrong token is refused with its reason.
    let (status, _, body) = http(&addr, "GET", "/api/overview", &[], "").await?;
    assert_eq!(status, 401, "{body}");
    let json = [("Content-Type", "application/json")];
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/sign-in",
        &json,
        r#"{"token":"apl_0000000000000000_nope"}"#,
    )
    .await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token was refused"), "{body}");

    // A cross-site form can send neither JSON nor this origin.
    let sign_in = serde_json::json!({ "token": daemon.token }).to_string();
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/sign-in",
        &[("Content-Type", "text/plain")],
        &sign_in,
    )
    .await?;
    assert_eq!(status, 415, "{body}");
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/sign-in",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        &sign_in,
    )
    .await?;
    assert_eq!(status, 403, "{body}");

    let (status, head, body) = http(&addr, "POST", "/api/sign-in", &json, &sign_in).await?;
    assert_eq!(status, 200, "{body}");
    let cookie_line = head
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .context("no cookie")?;
    let attributes = cookie_line.to_ascii_lowercase();
    assert!(
        attributes.contains("httponly") && attributes.contains("samesite=strict"),
        "{cookie_line}"
    );
    assert!(!body.contains(&daemon.token), "the token came back: {body}");
    let session: Value = serde_json::from_str(&body)?;
    let csrf = session["csrf"].as_str().context("no csrf")?.to_owned();
    let cookie_value = cookie_line["set-cookie:".len()..]
        .trim()
        .split(';')
        .next()
        .context("cookie")?
        .to_owned();
    let cookie = ("Cookie", cookie_value.as_str());

    let (status, _, body) = http(&addr, "GET", "/api/overview", &[cookie], "").await?;
    assert_eq!(status, 200, "{body}");
    let overview: Value = serde_json::from_str(&body)?;
    assert_eq!(overview["principal"], "User:admin", "{overview}");
    assert!(overview["topics"].is_array(), "{overview}");

    // A change needs the CSRF token and this origin.
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/pipelines/nope/pause",
        &[cookie, json[0]],
        "{}",
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let with_csrf = [cookie, json[0], ("x-csrf-token", csrf.as_str())];
    let mut cross_site = with_csrf.to_vec();
    cross_site.push(("Origin", "http://evil.example"));
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/pipelines/nope/pause",
        &cross_site,
        "{}",
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) =
        http(&addr, "POST", "/api/pipelines/nope/pause", &with_csrf, "{}").await?;
    assert_eq!(status, 404, "the API's own answer: {body}");
    assert!(body.contains("nope"), "{body}");

    // Revoking the token ends the session at once.
    let listed = cli_ok(&daemon, dir.path(), &["token", "list", "--json"], b"")?;
    let listed: Value = serde_json::from_str(&listed)?;
    let admin_id = listed
        .as_array()
        .context("tokens")?
        .iter()
        .find(|token| token["principal"] == "User:admin")
        .and_then(|token| token["id"].as_str())
        .context("the admin token")?
        .to_owned();
    cli_ok(&daemon, dir.path(), &["token", "revoke", &admin_id], b"")?;
    let (status, _, body) = http(&addr, "GET", "/api/overview", &[cookie], "").await?;
    assert_eq!(status, 401, "{body}");
    Ok(())
}

/// What the issue asks of a fleet: the overview of a hub with 50 linked edges, loaded in
/// Chromium. Fifty edges are fifty links from one edge process, each with its own edge
/// certificate, so the hub sees fifty edges. Prints the figures; asserts only that every
/// edge was drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_overview_of_fifty_edges_loads_in_chromium() -> anyhow::Result<()> {
    const FLEET: usize = 50;
    let names: Vec<String> = (0..FLEET).map(|i| format!("edge-{i:02}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let deployment = Deployment::new(&name_refs)?;
    let hub = deployment.start_hub()?;
    let edge = deployment.start_edge("fleet", 1)?;
    produce(&edge, 0, 0, 100).await?;
    let hub_addr = deployment.hub_addr();
    for name in &names {
        deployment.link_named(&edge, &format!("to-hub-{name}"), name, &hub_addr, &[])?;
    }
    let mut links = LinksClient::new(hub.channel().await?);
    let deadline = Deadline::new("fifty edges connected and caught up");
    loop {
        let edges = links
            .list_edges(pb::ListEdgesRequest {})
            .await?
            .into_inner()
            .edges;
        let ready = edges
            .iter()
            .filter(|edge| edge.connected && edge.lag_records == 0 && !edge.partitions.is_empty())
            .count();
        if ready == FLEET {
            break;
        }
        deadline.pause(format!("{ready} of {FLEET}")).await?;
    }

    let console = hub
        .console_addr
        .clone()
        .context("the hub serves no console")?;
    let figures = drive_console(&serde_json::json!({
        "url": format!("http://{console}/"),
        "token": hub.token,
        "edges": names,
        "loads": 5,
        "shots": screenshots()?,
    }))?;
    println!(
        "overview of {FLEET} edges in Chromium, seconds from navigation to every edge drawn: {figures}"
    );
    Ok(())
}
