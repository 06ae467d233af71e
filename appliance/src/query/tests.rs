//! SQL over a log holding two edges' mirrors of `sensors`, with answers computed here from
//! the records written.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, Float64Type, Int64Type};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::log::{
    Compression, Durability, LogConfig, Offset, PartitionId, Record, Timestamp, TopicConfig,
    TopicName,
};
use crate::meta::Meta;

const BASE: i64 = 1_700_000_000_000;

/// A record written: partition, offset, timestamp, device, temp.
type Row = (u32, u64, i64, String, f64);

struct Fixture {
    _dir: tempfile::TempDir,
    log: Log,
    /// Every record written, per edge.
    written: BTreeMap<String, Vec<Row>>,
}

/// The log of a data directory, acknowledging without fsync.
async fn open_log(dir: &std::path::Path) -> Log {
    let meta = Meta::open(&dir.join("meta")).unwrap();
    let config = LogConfig {
        durability: Durability::Os,
        ..LogConfig::new(dir.to_path_buf())
    };
    Log::open(config, meta).await.unwrap()
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let mut written = BTreeMap::new();
    for (e, edge) in ["edge-1", "edge-2"].into_iter().enumerate() {
        let topic = TopicName::new(format!("{edge}.sensors")).unwrap();
        let config = TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        };
        log.create_mirror_topic(topic.clone(), config, format!("edge {edge}"))
            .await
            .unwrap();
        let mut rows = Vec::new();
        for p in 0..2u32 {
            let partition = log.partition(&topic, PartitionId(p)).unwrap();
            let mut next = 0u64;
            for chunk in 0..10 {
                let records: Vec<Record> = (0..100)
                    .map(|i| {
                        let n = chunk * 100 + i;
                        // One reading a second, per partition, over ~17 minutes.
                        let timestamp = BASE + n * 1000 + i64::from(p) * 7;
                        let device = format!("d{}", n % 5);
                        let temp = (n % 40) as f64 + 0.5 * e as f64;
                        rows.push((p, next + i as u64, timestamp, device.clone(), temp));
                        Record {
                            key: Some(Bytes::from(device.clone())),
                            value: Some(Bytes::from(format!(
                                "{{\"device\":\"{device}\",\"temp\":{temp},\"site\":\"{edge}\"}}"
                            ))),
                            headers: Vec::new(),
                            timestamp: Timestamp(timestamp),
                        }
                    })
                    .collect();
                let mut batch: BytesMut = crate::log::encode(&records, Compression::None).unwrap();
                crate::log::set_base_offset(&mut batch, Offset(next));
                partition.append_at_own_offset(batch).await.unwrap();
                next += 100;
            }
        }
        written.insert(edge.to_owned(), rows);
    }
    Fixture {
        _dir: dir,
        log,
        written,
    }
}

impl Fixture {
    /// A local topic declaring `temp: Float64, device: Utf8`, holding one record per value in
    /// one batch.
    async fn declared_topic(&self, name: &str, values: &[Option<&str>]) {
        let topic = TopicName::new(name).unwrap();
        let config = TopicConfig {
            schema: Some(
                r#"[{"name": "temp", "type": "Float64"}, {"name": "device", "type": "Utf8"}]"#
                    .to_owned(),
            ),
            ..TopicConfig::default()
        };
        self.log.create_topic(topic.clone(), config).await.unwrap();
        let records: Vec<Record> = values
            .iter()
            .zip(BASE..)
            .map(|(value, timestamp)| Record {
                key: None,
                value: value.map(|v| Bytes::from(v.to_owned())),
                headers: Vec::new(),
                timestamp: Timestamp(timestamp),
            })
            .collect();
        let batch = crate::log::encode(&records, Compression::None).unwrap();
        self.log
            .append(&topic, PartitionId(0), batch)
            .await
            .unwrap();
    }
}

fn strings(answer: &Answer, column: usize) -> Vec<String> {
    answer
        .batches
        .iter()
        .flat_map(|b| {
            let array = b
                .column(column)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            (0..array.len())
                .map(|i| array.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The values of a primitive column, across the answer's batches.
fn values<T: ArrowPrimitiveType>(answer: &Answer, column: usize) -> Vec<T::Native> {
    answer
        .batches
        .iter()
        .flat_map(|b| b.column(column).as_primitive::<T>().values().to_vec())
        .collect()
}

fn integers(answer: &Answer, column: usize) -> Vec<i64> {
    values::<Int64Type>(answer, column)
}

fn floats(answer: &Answer, column: usize) -> Vec<f64> {
    values::<Float64Type>(answer, column)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_of_a_topic_name_unites_every_edges_mirror() {
    let fixture = fixture().await;
    let query = Query::new(fixture.log.clone());
    let answer = query
        .execute(
            "SELECT _edge, count(*) AS n, sum(temp) AS total, avg(temp) AS mean \
             FROM sensors GROUP BY _edge ORDER BY _edge",
        )
        .await
        .unwrap();
    assert_eq!(strings(&answer, 0), ["edge-1", "edge-2"]);
    assert_eq!(integers(&answer, 1), [2000, 2000]);
    for (i, rows) in fixture.written.values().enumerate() {
        let total: f64 = rows.iter().map(|r| r.4).sum();
        assert!((floats(&answer, 2)[i] - total).abs() < 1e-6);
        assert!((floats(&answer, 3)[i] - total / rows.len() as f64).abs() < 1e-9);
    }
    // One edge's mirror by its own name, and the JSON of an answer.
    let one = query
        .execute("SELECT count(*) AS n FROM \"edge-2.sensors\" WHERE _partition = 1")
        .await
        .unwrap();
    assert_eq!(one.to_json().unwrap(), "[{\"n\":1000}]");
}

/// The names of the topics `sql` scans.
fn scanned_topics(query: &Query, sql: &str) -> Vec<String> {
    query
        .scanned_topics(sql)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_scans_every_mirror_its_tables_unite_and_nothing_else() {
    let fixture = fixture().await;
    let query = Query::new(fixture.log.clone());
    let scanned = |sql: &str| scanned_topics(&query, sql);
    assert_eq!(
        scanned("SELECT count(*) FROM sensors"),
        ["edge-1.sensors", "edge-2.sensors"]
    );
    assert_eq!(
        scanned("WITH s AS (SELECT * FROM \"edge-2.sensors\") SELECT count(*) FROM s"),
        ["edge-2.sensors"]
    );
    assert_eq!(
        scanned(
            "SELECT * FROM (SELECT _edge FROM sensors) WHERE _edge IN (SELECT _edge FROM \"edge-1.sensors\")"
        ),
        ["edge-1.sensors", "edge-2.sensors"]
    );
    assert!(scanned("SELECT 1").is_empty());
    assert!(query.scanned_topics("SELEC nonsense").is_err());

    // An exported table needs read on what it exports, even once those topics are gone.
    let lake = LakeCatalog::default();
    let location = super::LakeLocation::new("/nowhere/lake", Vec::new()).unwrap();
    lake.insert(
        "history",
        location.clone(),
        TopicName::new("sensors").unwrap(),
    );
    lake.insert("old", location, TopicName::new("retired").unwrap());
    let query = query.with_lake(lake);
    let scanned = |sql: &str| scanned_topics(&query, sql);
    assert_eq!(
        scanned("SELECT count(*) FROM lake.history"),
        ["edge-1.sensors", "edge-2.sensors", "sensors"]
    );
    assert_eq!(scanned("SELECT count(*) FROM lake.old"), ["retired"]);
    assert!(scanned("SELECT count(*) FROM lake.unknown").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_latest_values_and_time_filters_agree_with_the_records() {
    let fixture = fixture().await;
    let query = Query::new(fixture.log.clone());
    let answer = query
        .execute(
            "SELECT _edge, date_bin(INTERVAL '1 minute', _timestamp) AS minute, count(*) AS n, \
             avg(temp) AS mean FROM sensors GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .await
        .unwrap();
    let mut expected: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
    for (edge, rows) in &fixture.written {
        for row in rows {
            let minute = row.2.div_euclid(60_000) * 60_000;
            let entry = expected.entry((edge.clone(), minute)).or_default();
            entry.0 += 1;
            entry.1 += row.4;
        }
    }
    let counts = integers(&answer, 2);
    let means = floats(&answer, 3);
    assert_eq!(counts.len(), expected.len());
    for (i, (n, sum)) in expected.values().enumerate() {
        assert_eq!(counts[i], *n);
        assert!((means[i] - sum / *n as f64).abs() < 1e-9);
    }

    // The latest reading of every device (the newest timestamp wins).
    let latest = query
        .execute(
            "SELECT device, last_value(temp ORDER BY _timestamp) AS temp FROM sensors \
             WHERE _edge = 'edge-1' GROUP BY device ORDER BY device",
        )
        .await
        .unwrap();
    let mut newest: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for row in &fixture.written["edge-1"] {
        let entry = newest.entry(row.3.clone()).or_insert((i64::MIN, 0.0));
        if row.2 > entry.0 {
            *entry = (row.2, row.4);
        }
    }
    assert_eq!(
        strings(&latest, 0),
        newest.keys().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        floats(&latest, 1),
        newest.values().map(|v| v.1).collect::<Vec<_>>()
    );

    // The 99th percentile per edge (continuous: interpolated between neighbours).
    let p99 = query
        .execute(
            "SELECT _edge, percentile_cont(0.99) WITHIN GROUP (ORDER BY temp) AS p99 \
             FROM sensors GROUP BY _edge ORDER BY _edge",
        )
        .await
        .unwrap();
    let expected: Vec<f64> = fixture
        .written
        .values()
        .map(|rows| {
            let mut temps: Vec<f64> = rows.iter().map(|r| r.4).collect();
            temps.sort_by(f64::total_cmp);
            let rank = 0.99 * (temps.len() - 1) as f64;
            let (low, high) = (temps[rank.floor() as usize], temps[rank.ceil() as usize]);
            low + (high - low) * rank.fract()
        })
        .collect();
    let got = floats(&p99, 1);
    assert_eq!(got.len(), expected.len());
    for (got, expected) in got.iter().zip(&expected) {
        assert!((got - expected).abs() < 1e-9, "{got} != {expected}");
    }

    // The last minute of data, found through the time index.
    let since = BASE + 960_000;
    let recent = query
        .execute(&format!(
            "SELECT count(*) AS n FROM sensors WHERE _timestamp >= to_timestamp_millis({since})"
        ))
        .await
        .unwrap();
    let expected = fixture
        .written
        .values()
        .flatten()
        .filter(|r| r.2 >= since)
        .count();
    assert_eq!(integers(&recent, 0), [expected as i64]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_unknown_tables_and_corrupt_segments_are_errors() {
    let fixture = fixture().await;
    let query = Query::new(fixture.log.clone());
    let error = query.execute("SELEC 1").await.unwrap_err();
    assert!(matches!(error, QueryError::Syntax(_)), "{error}");
    let error = query.execute("SELECT * FROM nowhere").await.unwrap_err();
    assert!(matches!(error, QueryError::UnknownTable(_)), "{error}");
    assert!(error.to_string().contains("nowhere"), "{error}");
    let error = query.execute("DROP TABLE sensors").await.unwrap_err();
    assert!(
        matches!(error, QueryError::Invalid(_) | QueryError::Failed(_)),
        "{error}"
    );

    // Damage the oldest batch of one partition: the query says so rather than answering
    // with the rest.
    let dir = fixture
        .log
        .partition(&TopicName::new("edge-1.sensors").unwrap(), PartitionId(0))
        .unwrap();
    let segment = std::fs::read_dir(fixture._dir.path().join("topics"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("edge-1.sensors"))
        .map(|topic| topic.join("0"))
        .and_then(|p| {
            std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "log"))
        })
        .unwrap();
    drop(dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    for byte in &mut bytes[200..260] {
        *byte ^= 0xff;
    }
    std::fs::write(&segment, bytes).unwrap();
    let error = query
        .execute("SELECT avg(temp) FROM sensors")
        .await
        .unwrap_err();
    assert!(matches!(error, QueryError::Data(_)), "{error}");
    assert!(error.to_string().contains("edge-1.sensors/0"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_the_topics_and_the_inferred_columns() {
    let fixture = fixture().await;
    let description = Query::new(fixture.log.clone()).describe("sensors").unwrap();
    assert_eq!(description.topics, ["edge-1.sensors", "edge-2.sensors"]);
    let columns: Vec<&str> = description
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "_edge",
            "_topic",
            "_partition",
            "_offset",
            "_timestamp",
            "_key",
            "device",
            "site",
            "temp"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_query_answers_again_with_the_records_that_arrive() {
    let fixture = fixture().await;
    let query = Query::new(fixture.log.clone());
    let stop = CancellationToken::new();
    let mut answers = query.follow(
        "SELECT _edge, count(*) AS n, max(temp) AS top FROM sensors \
         WHERE _timestamp >= to_timestamp_millis(0) GROUP BY _edge ORDER BY _edge"
            .to_owned(),
        stop.clone(),
    );
    let first = answers.recv().await.unwrap().unwrap();
    assert_eq!(integers(&first, 1), [2000, 2000]);

    // New readings on edge-2, one hotter than any before.
    let topic = TopicName::new("edge-2.sensors").unwrap();
    let partition = fixture.log.partition(&topic, PartitionId(1)).unwrap();
    let records: Vec<Record> = (0..50)
        .map(|i| Record {
            key: None,
            value: Some(Bytes::from(format!("{{\"temp\":{}}}", 100 + i))),
            headers: Vec::new(),
            timestamp: Timestamp(BASE + 2_000_000 + i),
        })
        .collect();
    mirror(&partition, &records).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = counted(&mut answers, deadline, &[2000, 2050]).await;
    assert_eq!(floats(&answer, 2)[1], 149.0);

    // An edge whose first mirror appears while the query follows is counted too.
    let topic = TopicName::new("edge-3.sensors").unwrap();
    let config = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    fixture
        .log
        .create_mirror_topic(topic.clone(), config, "edge edge-3".into())
        .await
        .unwrap();
    let partition = fixture.log.partition(&topic, PartitionId(0)).unwrap();
    mirror(&partition, &records).await;
    counted(&mut answers, deadline, &[2000, 2050, 50]).await;
    stop.cancel();
}

/// Appends `records` to a mirror's partition at its next offset.
async fn mirror(partition: &crate::log::Partition, records: &[Record]) {
    let mut batch: BytesMut = crate::log::encode(records, Compression::None).unwrap();
    crate::log::set_base_offset(&mut batch, partition.high_watermark());
    partition.append_at_own_offset(batch).await.unwrap();
}

/// The first answer of a live query whose per-edge counts (its second column) are `counts`.
async fn counted(
    answers: &mut mpsc::Receiver<Result<Answer, QueryError>>,
    deadline: tokio::time::Instant,
    counts: &[i64],
) -> Answer {
    loop {
        let answer = tokio::time::timeout_at(deadline, answers.recv())
            .await
            .unwrap_or_else(|_| panic!("the live query never counted {counts:?}"))
            .unwrap()
            .unwrap();
        if integers(&answer, 1) == counts {
            return answer;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_schema_gives_the_columns_and_their_types() {
    let fixture = fixture().await;
    // Whole numbers only: inference would make temp an Int64 column.
    let values: Vec<String> = (0..10)
        .map(|n| format!("{{\"temp\":{n},\"device\":\"d{n}\",\"extra\":1}}"))
        .collect();
    let values: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_str())).collect();
    fixture.declared_topic("readings", &values).await;
    let query = Query::new(fixture.log.clone());
    let description = query.describe("readings").unwrap();
    assert!(description.declared);
    let value_columns: Vec<String> = description.schema.fields()[6..]
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(value_columns, ["temp:Float64", "device:Utf8"]);
    let answer = query
        .execute("SELECT avg(temp) AS mean, count(device) AS n FROM readings")
        .await
        .unwrap();
    assert_eq!(floats(&answer, 0), [4.5]);
    assert_eq!(integers(&answer, 1), [10]);
    let bad = TopicConfig {
        schema: Some("[{\"name\": \"temp\"}]".to_owned()),
        ..TopicConfig::default()
    };
    let refused = fixture
        .log
        .create_topic(TopicName::new("bad").unwrap(), bad)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("schema"), "{refused}");
}

#[tokio::test]
async fn values_that_are_not_objects_or_do_not_fit_give_nulls_not_errors() {
    let fixture = fixture().await;
    let values = [
        Some(r#"{"temp": 1.5, "device": "a"}"#),
        Some(r#"{"temp": "hot", "device": "b"}"#),
        Some("not json {"),
        Some("[1, 2]"),
        None,
        Some(r#"{"temp": 2.5, "device": "c"}"#),
    ];
    fixture.declared_topic("mixed", &values).await;
    let query = Query::new(fixture.log.clone());
    let answer = query
        .execute("SELECT count(*), count(temp), sum(temp), count(device) FROM mixed")
        .await
        .unwrap();
    assert_eq!(integers(&answer, 0), [6]);
    // The string temperature is a null in its column only: its device still counts.
    assert_eq!(integers(&answer, 1), [2]);
    assert_eq!(floats(&answer, 2), [4.0]);
    assert_eq!(integers(&answer, 3), [3]);
}

/// A join whose answer (4,000 x 4,000 rows) or whose work (x 4,000 again) is far beyond
/// what the tests' limits allow.
const SELF_JOIN: &str = "SELECT a._offset, b._offset FROM sensors a CROSS JOIN sensors b";
const ENDLESS_JOIN: &str =
    "SELECT count(*) FROM sensors a CROSS JOIN sensors b CROSS JOIN sensors c";

fn bounded(fixture: &Fixture, limits: QueryLimits) -> Query {
    Query::with_limits(
        fixture.log.clone(),
        limits,
        tokio::runtime::Handle::current(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_memory_fails_naming_the_setting_and_frees_what_it_took() {
    let fixture = fixture().await;
    let query = bounded(
        &fixture,
        QueryLimits {
            memory_per_query: 8 * MIB,
            ..QueryLimits::default()
        },
    );
    let error = query.execute(SELF_JOIN).await.unwrap_err();
    assert!(
        matches!(error, QueryError::ResourcesExhausted(_)),
        "{error}"
    );
    assert!(error.to_string().contains("query.memory-mb"), "{error}");
    // Operators on tasks of their own give their memory back as those tasks wind down.
    let freed = tokio::time::timeout(Duration::from_secs(30), async {
        while query.memory_reserved() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(
        freed.await.is_ok(),
        "{} bytes still reserved",
        query.memory_reserved()
    );
    let error = query
        .execute("SELECT * FROM sensors ORDER BY temp, device")
        .await
        .map(drop);
    assert!(error.is_ok(), "a query within the budget runs: {error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_time_limit_fails_and_leaves_its_slot_free() {
    let fixture = fixture().await;
    let query = bounded(
        &fixture,
        QueryLimits {
            timeout: Duration::from_millis(300),
            concurrent: 1,
            ..QueryLimits::default()
        },
    );
    let error = query.execute(ENDLESS_JOIN).await.unwrap_err();
    assert!(matches!(error, QueryError::Timeout { .. }), "{error}");
    assert!(
        error.to_string().contains("query.timeout-ms (300 ms"),
        "{error}"
    );
    let answer = query.execute("SELECT count(*) FROM sensors").await.unwrap();
    assert_eq!(integers(&answer, 0), [4000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_client_went_away_stops() {
    let fixture = fixture().await;
    let query = bounded(
        &fixture,
        QueryLimits {
            concurrent: 1,
            ..QueryLimits::default()
        },
    );
    let abandoned = tokio::time::timeout(Duration::from_millis(300), query.execute(ENDLESS_JOIN));
    assert!(abandoned.await.is_err(), "the join cannot finish that soon");
    // With one slot, the next query runs only once the abandoned one has let go of it.
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        query.execute("SELECT count(*) FROM sensors"),
    )
    .await
    .expect("the abandoned join still holds the only slot")
    .unwrap();
    assert_eq!(integers(&answer, 0), [4000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_allowed_is_refused_naming_the_setting() {
    let fixture = fixture().await;
    let query = Query::new(fixture.log.clone());
    let answer = query.execute("SELECT * FROM sensors").await.unwrap();
    let error = answer.render(AnswerFormat::Json, 64 * 1024).unwrap_err();
    assert!(
        matches!(error, QueryError::ResourcesExhausted(_)),
        "{error}"
    );
    assert!(error.to_string().contains("query.max-answer-mb"), "{error}");
    let arrow_only = answer.render(AnswerFormat::Arrow, usize::MAX).unwrap();
    assert!(arrow_only.json.is_empty() && !arrow_only.arrow_ipc.is_empty());
    let both = answer
        .render(AnswerFormat::ArrowAndJson, usize::MAX)
        .unwrap();
    assert_eq!(both.json, answer.to_json().unwrap());
}

// Columnar forms of sealed segments (sidecar.rs): the answers they give are the JSON's.

/// A log with one topic `t` of small segments, holding `values` (one record each, a second
/// apart, batches of 8) in one partition; its segment files' directory.
async fn small_segments(values: &[Option<String>]) -> (tempfile::TempDir, Log, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let topic = TopicName::new("t").unwrap();
    let config = TopicConfig {
        partitions: 1,
        segment_bytes: 2048,
        ..TopicConfig::default()
    };
    log.create_topic(topic.clone(), config).await.unwrap();
    let partition = log.partition(&topic, PartitionId(0)).unwrap();
    for (n, batch) in values.chunks(8).enumerate() {
        let records: Vec<Record> = batch
            .iter()
            .enumerate()
            .map(|(i, value)| Record {
                key: Some(Bytes::from(format!("k{}", i % 3))),
                value: value.clone().map(Bytes::from),
                headers: Vec::new(),
                timestamp: Timestamp(BASE + ((n * 8 + i) as i64) * 1000),
            })
            .collect();
        mirror(&partition, &records).await;
    }
    let segments = dir.path().join("topics/t/0");
    assert!(segments.is_dir(), "the partition's directory moved");
    (dir, log, segments)
}

/// Every answer of `queries`, as JSON.
async fn answers(query: &Query, queries: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for sql in queries {
        let answer = query
            .execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        out.push(answer.to_json().unwrap());
    }
    out
}

/// Waits until every columnar form asked for is written; how many were.
async fn forms_written(query: &Query) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (idle, written) = query.columnar_forms();
        if idle {
            return written;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forms were never written"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn forms(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains(".columns"))
        .collect();
    found.sort();
    found
}

fn sensor_queries(a: i64, b: f64, at: i64) -> Vec<String> {
    vec![
        "SELECT _partition, _offset, _timestamp, _key, a, b, s FROM t ORDER BY _offset".into(),
        format!("SELECT count(*) AS n, sum(a) AS total, min(b) AS low FROM t WHERE a > {a}"),
        format!("SELECT count(*) AS n FROM t WHERE a = {a}"),
        format!(
            "SELECT s, count(*) AS n FROM t WHERE b < {b:?} AND _timestamp <= \
             to_timestamp_millis({at}) GROUP BY s ORDER BY s"
        ),
        format!(
            "SELECT _offset FROM t WHERE _timestamp >= to_timestamp_millis({at}) ORDER BY _offset"
        ),
    ]
}

fn sensor_value() -> impl proptest::strategy::Strategy<Value = Option<String>> {
    use proptest::prelude::*;
    prop_oneof![
        8 => (0i64..100, -50.0f64..50.0, "[a-c]{1,2}").prop_map(|(a, b, s)| {
            Some(format!(r#"{{"a":{a},"b":{b},"s":"{s}"}}"#))
        }),
        1 => (0i64..100).prop_map(|a| Some(format!(r#"{{"a":{a}.5,"other":[1,2],"flag":true}}"#))),
        1 => Just(None),
        1 => Just(Some("not json".into())),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
    #[test]
    fn columnar_forms_give_the_answers_the_json_gives(
        values in proptest::collection::vec(sensor_value(), 40..300),
        a in 0i64..100,
        b in -50.0f64..50.0,
        second in 0i64..300,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // The newest records name every field, so that the inferred schema has them all.
        let mut values = values;
        values.extend((0..8).map(|n| Some(format!(r#"{{"a":{n},"b":0.5,"s":"a"}}"#))));
        runtime.block_on(async {
            let (_dir, log, segments) = small_segments(&values).await;
            let queries = sensor_queries(a, b, BASE + second * 1000);
            let json = answers(&Query::new(log.clone()).with_columnar(false), &queries).await;
            let query = Query::new(log.clone());
            let first = answers(&query, &queries).await;
            let written = forms_written(&query).await;
            assert!(written > 0 && !forms(&segments).is_empty(), "no form written");
            let from_forms = answers(&query, &queries).await;
            assert_eq!(first, json);
            assert_eq!(from_forms, json);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_missing_or_unfinished_form_is_not_used_and_is_written_again() {
    let values: Vec<Option<String>> = (0..400)
        .map(|n| {
            Some(format!(
                r#"{{"a":{},"b":{}.5,"s":"s{}"}}"#,
                n % 97,
                n % 13,
                n % 4
            ))
        })
        .collect();
    let (dir, log, segments) = small_segments(&values).await;
    let queries = sensor_queries(40, 3.0, BASE + 200_000);
    let json = answers(&Query::new(log.clone()).with_columnar(false), &queries).await;
    let query = Query::new(log.clone());
    answers(&query, &queries).await;
    forms_written(&query).await;
    let written = forms(&segments);
    assert!(
        written.len() >= 4,
        "{written:?} in {:?}",
        std::fs::read_dir(&segments)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    let good: Vec<Vec<u8>> = written.iter().map(|p| std::fs::read(p).unwrap()).collect();

    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 6] = [
        ("cut short", |bytes| bytes.truncate(bytes.len() / 2)),
        ("a flipped bit in a frame's values", |bytes| {
            bytes[200] ^= 0x10
        }),
        ("a flipped bit in a frame header", |bytes| bytes[5] ^= 0x01),
        ("a flipped bit in the trailer", |bytes| {
            let at = bytes.len() - 40;
            bytes[at] ^= 0x04;
        }),
        ("emptied", Vec::clear),
        ("another segment's form", |bytes| {
            bytes.extend_from_slice(b"")
        }),
    ];
    for (what, damage) in damages {
        for (n, (path, bytes)) in written.iter().zip(&good).enumerate() {
            let mut bytes = if what == "another segment's form" {
                good[(n + 1) % good.len()].clone()
            } else {
                bytes.clone()
            };
            damage(&mut bytes);
            std::fs::write(path, bytes).unwrap();
        }
        assert_eq!(answers(&query, &queries).await, json, "{what}");
        forms_written(&query).await;
        let again: Vec<Vec<u8>> = written.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert_eq!(again, good, "{what}: the forms were not written again");
    }

    for path in &written {
        std::fs::remove_file(path).unwrap();
    }
    assert_eq!(answers(&query, &queries).await, json, "missing");
    forms_written(&query).await;
    assert_eq!(forms(&segments), written, "missing forms are written again");

    // A stop during a write leaves an unfinished form, and possibly one renamed into place
    // for a segment deleted meanwhile: the log deletes both when it opens the partition.
    let unfinished = segments.join(format!("{:020}.columns.tmp", 0));
    std::fs::write(&unfinished, &good[0][..100]).unwrap();
    let orphan = segments.join(format!("{:020}.columns", 999_999));
    std::fs::write(&orphan, &good[0]).unwrap();
    log.close().await.unwrap();
    drop((query, log));
    let log = open_log(dir.path()).await;
    assert!(!unfinished.exists() && !orphan.exists());
    assert_eq!(forms(&segments), written);
    let reopened = Query::new(log.clone());
    assert_eq!(answers(&reopened, &queries).await, json, "after a restart");
    assert_eq!(forms_written(&reopened).await, 0, "the forms were whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_a_segments_form_with_it() {
    let values: Vec<Option<String>> = (0..400)
        .map(|n| Some(format!(r#"{{"a":{},"b":1.5,"s":"x"}}"#, n % 7)))
        .collect();
    let (_dir, log, segments) = small_segments(&values).await;
    let query = Query::new(log.clone());
    let count = "SELECT count(*) AS n, sum(a) AS total FROM t".to_owned();
    answers(&query, std::slice::from_ref(&count)).await;
    forms_written(&query).await;
    let before = forms(&segments);
    assert!(before.len() >= 4);

    let topic = TopicName::new("t").unwrap();
    let mut config = log.topic_config(&topic).unwrap();
    config.retention_bytes = Some(8192);
    log.update_topic_config(&topic, config).await.unwrap();
    log.apply_retention().await;
    let partition = log.partition(&topic, PartitionId(0)).unwrap();
    let sealed = partition.sealed_segments();
    let after = forms(&segments);
    assert!(after.len() < before.len(), "retention deleted segments");
    for form in &after {
        assert!(
            sealed.iter().any(|s| s.columns_path == *form),
            "{form:?} outlived its segment"
        );
    }
    let json = answers(
        &Query::new(log.clone()).with_columnar(false),
        std::slice::from_ref(&count),
    )
    .await;
    assert_eq!(answers(&query, std::slice::from_ref(&count)).await, json);
}
