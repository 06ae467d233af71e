//! SQL over topics on a hub, end to end: one hub and three edges linked as an operator does
//! (`appliance certs`, `appliance link create --topics sensors`), JSON readings produced over
//! gRPC to each edge's `sensors` (two partitions, keys = device, explicit timestamps spread
//! over several minutes and not in offset order), and, once the hub's mirrors `edge-N.sensors`
//! hold everything, `appliance query` and gRPC `Query.Execute` on the hub's table `sensors`
//! (the union of the mirrors), checked against values the test computes from what it produced:
//! aggregates per edge, per edge and minute (`date_bin`), the latest reading per device of one
//! edge, a count after a time; the table output, `--describe`, and refused statements.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use appliance_e2e::Channel;
use appliance_e2e::{Daemon, Deadline, Deployment, cli_in_runtime, cli_ok};
use appliance_proto::v1 as pb;
use appliance_proto::v1::query_client::QueryClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use serde_json::Value;

const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const PARTITIONS: u32 = 2;
/// 2023-11-14T22:13:00Z, on a minute.
const BASE_MS: i64 = 1_699_999_980_000;
/// Records per produce request: several batches per partition, for the time index.
const CHUNK: usize = 8;

// ---------------------------------------------------------------------------------------
// Running the CLI and polling

/// `appliance query --format json SQL`: its rows.
fn query_json(daemon: &Daemon, dir: &Path, sql: &str) -> anyhow::Result<Vec<Value>> {
    let stdout = cli_ok(daemon, dir, &["query", "--format", "json", sql], b"")?;
    let rows: Value =
        serde_json::from_str(&stdout).with_context(|| format!("query {sql}: {stdout}"))?;
    rows.as_array()
        .cloned()
        .with_context(|| format!("query {sql}: not an array: {stdout}"))
}

// ---------------------------------------------------------------------------------------
// Readings, and what the queries must answer

/// One reading the test produced.
#[derive(Debug, Clone)]
struct Reading {
    edge: &'static str,
    partition: u32,
    device: String,
    temp: f64,
    timestamp_ms: i64,
}

/// Readings per partition of edge number `e`: each edge a different number.
fn readings_per_partition(e: usize) -> u64 {
    40 + 12 * e as u64
}

/// Reading `i` of partition `p` of edge number `e`: devices d0-d2 on partition 0, d3-d5 on
/// partition 1; about one reading every 5 s per partition from `BASE_MS` (a little under 5
/// minutes for edge-1, over 5 for edge-3), each shifted by up to ±2.8 s, so that timestamps
/// are not in offset order; no two readings of a partition at the same millisecond.
fn reading(e: usize, p: u32, i: u64) -> Reading {
    let jitter = ((i * 5 + e as u64 * 3 + u64::from(p)) % 9) as i64 * 700 - 2800;
    Reading {
        edge: EDGES[e],
        partition: p,
        device: format!("d{}", p * 3 + (i % 3) as u32),
        temp: 15.0 + ((i * 37 + e as u64 * 13 + u64::from(p) * 7) % 250) as f64 / 10.0,
        timestamp_ms: BASE_MS + e as i64 * 1000 + i64::from(p) * 250 + i as i64 * 5000 + jitter,
    }
}

/// Late reading `k` of edge number `e` (of `LATE`): partition 0, produced after all others,
/// timestamped in the first seconds (a device that buffered them), at a millisecond no
/// other reading of the partition has; its temperature above every other, so that a latest
/// reading taken by offset rather than by timestamp shows.
fn late_reading(e: usize, k: u64) -> Reading {
    Reading {
        edge: EDGES[e],
        partition: 0,
        device: format!("d{}", k % 3),
        temp: 50.0 + k as f64 + e as f64 / 2.0,
        timestamp_ms: BASE_MS + 333 + k as i64 * 1000,
    }
}

/// Late readings per edge.
const LATE: u64 = 4;

impl Reading {
    fn record(&self) -> pb::Record {
        let value = serde_json::json!({
            "device": self.device,
            "temp": self.temp,
            "site": self.edge,
        });
        pb::Record {
            key: Some(self.device.clone().into_bytes().into()),
            value: Some(value.to_string().into_bytes().into()),
            headers: Vec::new(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Produces `readings` (all of one partition) over gRPC, `CHUNK` a request; checks that they
/// got the offsets `first..`.
async fn produce(channel: &Channel, readings: &[Reading], first: u64) -> anyhow::Result<()> {
    let mut client = RecordsClient::new(channel.clone());
    let mut next = first;
    for chunk in readings.chunks(CHUNK) {
        let response = client
            .produce(pb::ProduceRequest {
                topic: "sensors".into(),
                partition: Some(chunk[0].partition),
                records: chunk.iter().map(Reading::record).collect(),
            })
            .await?
            .into_inner();
        let offsets: Vec<u64> = response.positions.iter().map(|p| p.offset).collect();
        assert_eq!(
            offsets,
            (next..next + chunk.len() as u64).collect::<Vec<_>>()
        );
        next += chunk.len() as u64;
    }
    Ok(())
}

/// The start of the minute `ms` is in, as the JSON output renders a UTC timestamp.
fn minute_text(ms: i64) -> String {
    let minute = ms.div_euclid(60_000);
    let (days, minute_of_day) = (minute.div_euclid(1440), minute.rem_euclid(1440));
    // Days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:00Z",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// Count and sum of temperatures.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    n: u64,
    total: f64,
}

impl Tally {
    fn add(&mut self, temp: f64) {
        self.n += 1;
        self.total += temp;
    }

    fn mean(self) -> f64 {
        self.total / self.n as f64
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn float(row: &Value, column: &str) -> f64 {
    row[column]
        .as_f64()
        .unwrap_or_else(|| panic!("{column} is not a number in {row}"))
}

fn integer(row: &Value, column: &str) -> u64 {
    row[column]
        .as_u64()
        .unwrap_or_else(|| panic!("{column} is not an integer in {row}"))
}

fn text<'a>(row: &'a Value, column: &str) -> &'a str {
    row[column]
        .as_str()
        .unwrap_or_else(|| panic!("{column} is not a string in {row}"))
}

// ---------------------------------------------------------------------------------------
// Topics over gRPC

/// Each partition's high watermark; none while the topic does not exist.
async fn ends(channel: &Channel, topic: &str) -> anyhow::Result<Option<Vec<u64>>> {
    match TopicsClient::new(channel.clone())
        .get_topic(pb::GetTopicRequest { name: topic.into() })
        .await
    {
        Ok(topic) => Ok(Some(
            topic
                .into_inner()
                .partitions
                .iter()
                .map(|p| p.high_watermark)
                .collect(),
        )),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

/// Waits until `mirror` on the hub has the partitions and high watermarks of the edge's
/// `sensors`.
async fn wait_mirrored(edge: &Channel, hub: &Channel, mirror: &str) -> anyhow::Result<()> {
    let want = ends(edge, "sensors").await?.context("the edge's sensors")?;
    let deadline = Deadline::new(format!("{mirror} catching up with its edge's sensors"));
    loop {
        let have = ends(hub, mirror).await?;
        if have.as_ref() == Some(&want) {
            return Ok(());
        }
        deadline.pause((&want, &have)).await?;
    }
}

// ---------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_answers_sql_over_every_edges_mirror() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let deployment = Deployment::new(&EDGES)?;
    let root = deployment.root();
    let hub = deployment.start_hub()?;
    let hub_channel = hub.channel().await?;

    // Every edge: two thirds of its readings before the link, the rest after.
    let mut readings: Vec<Reading> = Vec::new();
    let mut edges = Vec::new();
    for (e, name) in EDGES.iter().enumerate() {
        let edge = deployment.start_edge(name, PARTITIONS)?;
        let channel = edge.channel().await?;
        let count = readings_per_partition(e);
        let split = count * 2 / 3;
        for p in 0..PARTITIONS {
            let produced: Vec<Reading> = (0..split).map(|i| reading(e, p, i)).collect();
            produce(&channel, &produced, 0).await?;
            readings.extend(produced);
        }
        let created = deployment.link(&edge, name, &deployment.hub_addr(), &[])?;
        assert!(created.contains(&format!("as edge {name}")), "{created}");
        for p in 0..PARTITIONS {
            let produced: Vec<Reading> = (split..count).map(|i| reading(e, p, i)).collect();
            produce(&channel, &produced, split).await?;
            readings.extend(produced);
        }
        let late: Vec<Reading> = (0..LATE).map(|k| late_reading(e, k)).collect();
        produce(&channel, &late, count).await?;
        readings.extend(late);
        edges.push((name, edge, channel));
    }
    for (name, _, channel) in &edges {
        wait_mirrored(channel, &hub_channel, &format!("{name}.sensors")).await?;
    }
    eprintln!(
        "{} readings mirrored to the hub after {:?}",
        readings.len(),
        started.elapsed()
    );

    // Count, sum and mean per edge.
    let mut per_edge: BTreeMap<&str, Tally> = BTreeMap::new();
    for r in &readings {
        per_edge.entry(r.edge).or_default().add(r.temp);
    }
    let sql = "SELECT _edge, count(*) AS n, sum(temp) AS total, avg(temp) AS mean \
               FROM sensors GROUP BY _edge ORDER BY _edge";
    let rows = query_json(&hub, root, sql)?;
    assert_eq!(rows.len(), EDGES.len(), "{rows:#?}");
    for (row, (edge, tally)) in rows.iter().zip(&per_edge) {
        assert_eq!(text(row, "_edge"), *edge, "{row}");
        assert_eq!(integer(row, "n"), tally.n, "{row}");
        assert!(close(float(row, "total"), tally.total), "{row}: {tally:?}");
        assert!(close(float(row, "mean"), tally.mean()), "{row}: {tally:?}");
    }

    // The same over gRPC: rows, columns, the JSON and an Arrow IPC stream.
    let mut query = QueryClient::new(hub_channel.clone());
    let answer = query
        .execute(pb::ExecuteRequest {
            sql: sql.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(answer.rows, EDGES.len() as u64);
    let columns: Vec<&str> = answer.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["_edge", "n", "total", "mean"]);
    assert!(answer.columns[0].r#virtual && !answer.columns[1].r#virtual);
    let grpc_rows: Value = serde_json::from_str(&answer.json)?;
    assert_eq!(grpc_rows, Value::Array(rows.clone()));
    // An IPC stream starts with a continuation marker before the schema message.
    assert!(
        answer.arrow_ipc.len() > 8 && answer.arrow_ipc[..4] == [0xff; 4],
        "arrow_ipc: {} bytes",
        answer.arrow_ipc.len()
    );

    // Each mirror is a table of its own, its name quoted.
    for name in EDGES {
        let answer = query
            .execute(pb::ExecuteRequest {
                sql: format!(r#"SELECT count(*) AS n, min(_edge) AS e FROM "{name}.sensors""#),
                ..Default::default()
            })
            .await?
            .into_inner();
        let rows: Value = serde_json::from_str(&answer.json)?;
        let want = readings.iter().filter(|r| r.edge == name).count() as u64;
        assert_eq!(rows, serde_json::json!([{"n": want, "e": name}]));
    }

    // Count and mean per edge and minute.
    let mut per_minute: BTreeMap<(&str, i64), Tally> = BTreeMap::new();
    for r in &readings {
        let minute = r.timestamp_ms.div_euclid(60_000) * 60_000;
        per_minute.entry((r.edge, minute)).or_default().add(r.temp);
    }
    let rows = query_json(
        &hub,
        root,
        "SELECT _edge, date_bin(INTERVAL '1 minute', _timestamp) AS minute, count(*) AS n, \
         avg(temp) AS mean FROM sensors GROUP BY _edge, minute ORDER BY _edge, minute",
    )?;
    assert!(
        per_minute.len() >= EDGES.len() * 5,
        "windows: {per_minute:?}"
    );
    assert_eq!(rows.len(), per_minute.len(), "{rows:#?}");
    for (row, ((edge, minute), tally)) in rows.iter().zip(&per_minute) {
        assert_eq!(text(row, "_edge"), *edge, "{row}");
        assert_eq!(text(row, "minute"), minute_text(*minute), "{row}");
        assert_eq!(integer(row, "n"), tally.n, "{row}");
        assert!(close(float(row, "mean"), tally.mean()), "{row}: {tally:?}");
    }

    // The latest temperature of each of edge-2's devices (by timestamp, not by offset).
    let mut latest: BTreeMap<&str, (i64, f64)> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.edge == "edge-2") {
        let entry = latest.entry(&r.device).or_insert((i64::MIN, 0.0));
        assert_ne!(
            entry.0, r.timestamp_ms,
            "two readings of {} at once",
            r.device
        );
        if r.timestamp_ms > entry.0 {
            *entry = (r.timestamp_ms, r.temp);
        }
    }
    let mut last_by_offset: BTreeMap<&str, f64> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.edge == "edge-2") {
        last_by_offset.insert(&r.device, r.temp);
    }
    assert!(
        latest
            .iter()
            .any(|(device, (_, temp))| last_by_offset[device] != *temp),
        "the latest by timestamp differs from the last by offset somewhere"
    );
    let rows = query_json(
        &hub,
        root,
        "SELECT device, last_value(temp ORDER BY _timestamp) AS temp FROM sensors \
         WHERE _edge = 'edge-2' GROUP BY device ORDER BY device",
    )?;
    assert_eq!(rows.len(), latest.len(), "{rows:#?}");
    for (row, (device, (_, temp))) in rows.iter().zip(&latest) {
        assert_eq!(text(row, "device"), *device, "{row}");
        assert!(close(float(row, "temp"), *temp), "{row}: want {temp}");
    }

    // Readings at or after a time, in total and per edge: the scan starts each partition at
    // the time index's offset, and timestamps are not in offset order.
    for after in [
        BASE_MS + 1_500,
        BASE_MS + 150_000,
        BASE_MS + 151_234,
        BASE_MS + 290_000,
        BASE_MS - 10_000,
        BASE_MS + 3_600_000,
    ] {
        let want = readings.iter().filter(|r| r.timestamp_ms >= after).count() as u64;
        let rows = query_json(
            &hub,
            root,
            &format!(
                "SELECT count(*) AS n FROM sensors WHERE _timestamp >= to_timestamp_millis({after})"
            ),
        )?;
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(integer(&rows[0], "n"), want, "after {after}");
        let want = readings
            .iter()
            .filter(|r| r.timestamp_ms >= after && r.edge == "edge-3")
            .count() as u64;
        let rows = query_json(
            &hub,
            root,
            &format!(
                "SELECT count(*) AS n FROM sensors WHERE _edge = 'edge-3' \
                 AND _timestamp >= to_timestamp_millis({after})"
            ),
        )?;
        assert_eq!(integer(&rows[0], "n"), want, "edge-3 after {after}");
    }

    // The default format: an aligned table, its header the column names.
    let table = cli_ok(
        &hub,
        root,
        &[
            "query",
            "SELECT _edge, count(*) AS n FROM sensors GROUP BY _edge ORDER BY _edge",
        ],
        b"",
    )?;
    let lines: Vec<&str> = table.lines().collect();
    let header = lines
        .iter()
        .find(|line| line.contains("_edge"))
        .with_context(|| format!("no header:\n{table}"))?;
    let cells: Vec<&str> = header
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cells, ["_edge", "n"], "{table}");
    for (edge, tally) in &per_edge {
        let row = lines
            .iter()
            .find(|line| line.contains(edge))
            .with_context(|| format!("no row of {edge}:\n{table}"))?;
        let cells: Vec<&str> = row
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells, [edge.to_string(), tally.n.to_string()], "{table}");
        assert_eq!(row.len(), header.len(), "aligned:\n{table}");
    }
    assert_eq!(lines.last(), Some(&"(3 rows)"), "{table}");

    // --describe: the mirrors behind the table, and its columns.
    let described = cli_ok(&hub, root, &["query", "--describe", "sensors"], b"")?;
    let first = described.lines().next().unwrap_or_default();
    assert!(first.starts_with("table sensors"), "{described}");
    for edge in EDGES {
        assert!(first.contains(&format!("{edge}.sensors")), "{described}");
    }
    let column = |name: &str| -> Option<Vec<&str>> {
        described
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&name))
    };
    for (name, kind, from) in [
        ("_edge", "Utf8", "virtual"),
        ("_timestamp", "Timestamp", "virtual"),
        ("device", "Utf8", "inferred"),
        ("temp", "Float64", "inferred"),
        ("site", "Utf8", "inferred"),
    ] {
        let cells = column(name).with_context(|| format!("no column {name}:\n{described}"))?;
        assert!(cells[1].starts_with(kind), "{name}: {cells:?}\n{described}");
        assert_eq!(cells.last(), Some(&from), "{name}:\n{described}");
    }
    let description = query
        .describe(pb::DescribeRequest {
            table: "sensors".into(),
        })
        .await?
        .into_inner();
    let mut topics = description.topics.clone();
    topics.sort();
    assert_eq!(
        topics,
        ["edge-1.sensors", "edge-2.sensors", "edge-3.sensors"]
    );

    // Refused statements: a clear message, a failed exit, and the hub answers on.
    for (sql, says, code) in [
        (
            "SELEC 1",
            vec!["does not parse"],
            tonic::Code::InvalidArgument,
        ),
        (
            "SELECT * FROM nowhere",
            vec!["nowhere", "not found"],
            tonic::Code::NotFound,
        ),
    ] {
        let output = cli_in_runtime(&hub, root, &["query", sql], b"")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{sql}: {stderr}");
        assert!(output.stdout.is_empty(), "{sql}: {:?}", output.stdout);
        for phrase in says {
            assert!(stderr.contains(phrase), "{sql}: {stderr}");
        }
        eprintln!("{sql}: {}", stderr.trim());
        let status = query
            .execute(pb::ExecuteRequest {
                sql: sql.into(),
                ..Default::default()
            })
            .await
            .expect_err(sql);
        assert_eq!(status.code(), code, "{sql}: {status:?}");
    }
    let output = cli_in_runtime(&hub, root, &["query", "--describe", "nowhere"], b"")?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nowhere"));
    let rows = query_json(&hub, root, "SELECT count(*) AS n FROM sensors")?;
    assert_eq!(integer(&rows[0], "n"), readings.len() as u64);

    // On an edge, `sensors` is its own topic: no edge to name.
    let (_, edge1, _) = &edges[0];
    let rows = query_json(
        edge1,
        root,
        "SELECT _edge, count(*) AS n FROM sensors GROUP BY _edge",
    )?;
    let want = readings.iter().filter(|r| r.edge == "edge-1").count();
    assert_eq!(
        rows,
        [serde_json::json!({ "n": want })],
        "null _edge left out"
    );

    eprintln!("done after {:?}", started.elapsed());
    // A live query on the hub: the answer comes again when an edge's new readings arrive.
    let live = "SELECT _edge, count(*) AS n FROM sensors GROUP BY _edge ORDER BY _edge";
    let mut answers = query
        .follow(pb::ExecuteRequest {
            sql: live.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = answers.message().await?.context("no first live answer")?;
    let counts = |answer: &pb::ExecuteResponse| -> anyhow::Result<Vec<u64>> {
        let rows: Vec<Value> = serde_json::from_str(&answer.json)?;
        Ok(rows.iter().map(|row| integer(row, "n")).collect())
    };
    let before = counts(&first)?;
    assert_eq!(before, per_edge.values().map(|t| t.n).collect::<Vec<_>>());
    let (_, _, edge1_channel) = &edges[0];
    let fresh: Vec<Reading> = (0..5)
        .map(|i| reading(0, 1, readings_per_partition(0) + i))
        .collect();
    let produced_at = std::time::Instant::now();
    produce(edge1_channel, &fresh, readings_per_partition(0)).await?;
    let deadline = Deadline::new("the live query to count edge-1's new readings");
    loop {
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), answers.message())
            .await??
            .context("the live query ended")?;
        let now = counts(&answer)?;
        if now[0] == before[0] + 5 {
            assert_eq!(now[1..], before[1..]);
            eprintln!(
                "live answer updated {:?} after producing on edge-1",
                produced_at.elapsed()
            );
            break;
        }
        deadline.pause(&now).await?;
    }
    drop(answers);

    // A damaged segment on the hub: the query says where, rather than answering with the
    // partitions it could read.
    let segment_dir = root.join("hub-data/topics/edge-2.sensors/0");
    let segment = std::fs::read_dir(&segment_dir)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|x| x == "log"))
        .with_context(|| format!("no segment in {}", segment_dir.display()))?;
    let mut bytes = std::fs::read(&segment)?;
    for byte in &mut bytes[100..140] {
        *byte ^= 0xff;
    }
    std::fs::write(&segment, bytes)?;
    let output = cli_in_runtime(&hub, root, &["query", "SELECT avg(temp) FROM sensors"], b"")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "no partial answer");
    assert!(
        stderr.contains("edge-2.sensors/0")
            && stderr.contains("corrupt")
            && stderr.contains("DataLoss"),
        "{stderr}"
    );
    Ok(())
}
