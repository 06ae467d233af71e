//! `appliance bench query`: SQL on a hub's mirrors beside a plain read of the same bytes from
//! the log, in one run:
//!
//! 1. Mirrors `edge-N.sensors` (2 partitions each) filled with JSON readings (~60-byte
//!    values, one day of timestamps), as a hub holds them.
//! 2. The log alone: every batch read and checked, every record parsed (no JSON, no SQL).
//! 3. `SELECT _edge, avg(temp) FROM sensors GROUP BY _edge`: records scanned per second
//!    (the field's decoding alone beside arrow-json's, the decoder before the projected
//!    one), then the same again once the sealed segments' columnar forms are
//!    written; and DuckDB's `read_json` over the same records as one NDJSON file (when the
//!    Python module `duckdb` is installed: `--python`).
//! 4. The same restricted to the last 1% of the time: the time index keeps the bytes read
//!    near 1% (printed beside the full scan's).
//! 5. A live query: the time from appending a batch to the answer that counts it.
//! 6. An export of `sensors` (every mirror) to a Delta table in the scratch directory: records
//!    and MB of Parquet per second until every partition is committed, on one task, beside
//!    the plain read of step 2; the Parquet bytes beside the log's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{open_log, print_header, scratch_dir};
use crate::export::{Exports, NewExport, StartAt};
use crate::log::{
    self, Compression, Log, Offset, PartitionId, Record, Timestamp, TopicConfig, TopicName,
};
use crate::meta::Meta;
use crate::query::{LakeCatalog, Query};
use crate::runtime::{RestartPolicies, RestartPolicy, State};

#[derive(Debug, Args)]
pub struct QueryBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Records across all mirrors.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Edges (mirrors of `sensors`).
    #[arg(long, default_value_t = 4)]
    edges: u32,
    /// Segment size of the mirrors: sealed segments get columnar forms, the active one not.
    #[arg(long, default_value_t = 8 << 20)]
    segment_bytes: u64,
    /// Python with the `duckdb` module, for DuckDB's figure (default: tests/python/.venv's
    /// if there is one, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
}

const PARTITIONS: u32 = 2;
const BATCH: u64 = 4096;
const DAY_MS: i64 = 24 * 3600 * 1000;
const START_MS: i64 = 1_700_000_000_000;

#[derive(Debug, serde::Serialize)]
struct Figures {
    records: u64,
    stored_bytes: u64,
    log_read_records_s: f64,
    group_by_records_s: f64,
    group_by_s: f64,
    decode_projected_records_s: f64,
    decode_arrow_json_records_s: f64,
    columnar_forms_written_s: f64,
    repeated_group_by_s: f64,
    duckdb_read_json_s: Option<f64>,
    recent_s: f64,
    recent_bytes_read: u64,
    full_bytes_read: u64,
    live_update_ms: f64,
    export_records_s: f64,
    export_parquet_mb_s: f64,
    parquet_bytes: u64,
}

pub async fn query_bench(args: QueryBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.edges >= 1, "--edges must be at least 1");
    let scratch = scratch_dir(&args.dir)?;
    print_header(
        scratch.path(),
        format_args!(
            "query bench: {} JSON readings in {} mirrors of sensors ({PARTITIONS} partitions each)",
            args.records, args.edges
        ),
    )?;
    let log = open_log(scratch.path()).await?;
    let per_partition = args.records / u64::from(args.edges * PARTITIONS);
    let started = Instant::now();
    let mut stored_bytes = 0;
    for edge in 1..=args.edges {
        stored_bytes += fill(&log, edge, per_partition, args.segment_bytes).await?;
    }
    let records = per_partition * u64::from(args.edges * PARTITIONS);
    println!(
        "filled {records} records, {:.0} MB stored, in {:.1} s",
        stored_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let (read_records, read_s) = plain_read(&log, args.edges)?;
    let log_read = read_records as f64 / read_s;
    println!("log read + parse (no SQL):                 {log_read:>12.0} records/s");

    let query = Query::new(log.clone());
    let group_by = "SELECT _edge, avg(temp) AS mean FROM sensors GROUP BY _edge";
    let started = Instant::now();
    let answer = query.execute(group_by).await?;
    let group_by_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(answer.rows() == args.edges as usize, "one row per edge");
    let full_bytes = query.bytes_read();
    println!(
        "SELECT _edge, avg(temp) ... GROUP BY _edge: {:>12.0} records/s ({group_by_s:.2} s, {:.2}x the plain read)",
        records as f64 / group_by_s,
        (records as f64 / group_by_s) / log_read
    );
    let (projected, arrow_json) = crate::query::decode_rates(&sample_values(1_000_000), "temp")?;
    println!(
        "  decoding temp alone, one thread:         {projected:>12.0} records/s, arrow-json {arrow_json:.0} ({:.1}x)",
        projected / arrow_json
    );

    let started = Instant::now();
    loop {
        let (idle, _) = query.columnar_forms();
        if idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let forms_s = started.elapsed().as_secs_f64();
    let (forms_bytes, forms) = columnar_bytes(scratch.path())?;
    println!(
        "columnar forms of the sealed segments:     {forms_s:>12.2} s after the query, {forms} files, {:.0} MB",
        forms_bytes as f64 / 1e6
    );
    let started = Instant::now();
    query.execute(group_by).await?;
    let repeated_s = started.elapsed().as_secs_f64();
    println!(
        "the same GROUP BY again:                   {:>12.0} records/s ({repeated_s:.2} s, {:.1}x the first run, {:.2}x the plain read)",
        records as f64 / repeated_s,
        group_by_s / repeated_s,
        (records as f64 / repeated_s) / log_read
    );
    let duckdb = duckdb_read_json(&log, args.edges, scratch.path(), args.python.as_deref())?;
    if let Some(duckdb_s) = duckdb {
        println!(
            "DuckDB read_json, the same GROUP BY:       {:>12.0} records/s ({duckdb_s:.2} s; the appliance's first run {:.2}x, again {:.2}x DuckDB's)",
            records as f64 / duckdb_s,
            duckdb_s / group_by_s,
            duckdb_s / repeated_s
        );
    }

    let since = START_MS + DAY_MS * 99 / 100;
    let read_before = query.bytes_read();
    let started = Instant::now();
    query
        .execute(&format!(
            "SELECT _edge, avg(temp) AS mean FROM sensors \
             WHERE _timestamp >= to_timestamp_millis({since}) GROUP BY _edge"
        ))
        .await?;
    let recent_s = started.elapsed().as_secs_f64();
    let recent_bytes = query.bytes_read() - read_before;
    println!(
        "the same over the last 1% of the time:     {recent_s:>12.3} s, {:.1} MB read ({:.2}% of the full scan's {:.0} MB)",
        recent_bytes as f64 / 1e6,
        100.0 * recent_bytes as f64 / full_bytes as f64,
        full_bytes as f64 / 1e6
    );

    let live_ms = live_update(&log, &query, since).await?;
    println!("live query, append -> updated answer:      {live_ms:>12.0} ms");

    let exported = export_all(&log, scratch.path()).await?;
    let export_records_s = exported.rows as f64 / exported.seconds;
    let export_parquet_mb_s = exported.parquet_bytes as f64 / 1e6 / exported.seconds;
    println!(
        "export to Delta Lake (one task):           {export_records_s:>12.0} records/s, {export_parquet_mb_s:.1} MB/s of Parquet ({:.0}% of the plain read's records/s)",
        100.0 * export_records_s / log_read
    );
    println!(
        "Parquet beside the log:                    {:>12.1} MB for {:.1} MB stored ({:.1}x smaller), {} files",
        exported.parquet_bytes as f64 / 1e6,
        stored_bytes as f64 / 1e6,
        stored_bytes as f64 / exported.parquet_bytes.max(1) as f64,
        exported.files
    );
    log.close().await?;
    if args.json {
        let figures = Figures {
            records,
            stored_bytes,
            log_read_records_s: log_read,
            group_by_records_s: records as f64 / group_by_s,
            group_by_s,
            decode_projected_records_s: projected,
            decode_arrow_json_records_s: arrow_json,
            columnar_forms_written_s: forms_s,
            repeated_group_by_s: repeated_s,
            duckdb_read_json_s: duckdb,
            recent_s,
            recent_bytes_read: recent_bytes,
            full_bytes_read: full_bytes,
            live_update_ms: live_ms,
            export_records_s,
            export_parquet_mb_s,
            parquet_bytes: exported.parquet_bytes,
        };
        println!("{}", serde_json::to_string(&figures)?);
    }
    Ok(())
}

/// JSON values as the mirrors hold them.
fn sample_values(count: u64) -> Vec<Bytes> {
    (0..count)
        .filter_map(|n| reading(1, n, START_MS).value)
        .collect()
}

/// Bytes and count of the columnar forms under `dir`.
fn columnar_bytes(dir: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let mut total = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "columns") {
                total.0 += entry.metadata()?.len();
                total.1 += 1;
            }
        }
    }
    Ok(total)
}

const DUCKDB_GROUP_BY: &str = r#"
import sys, time, duckdb
path = sys.argv[1]
con = duckdb.connect()
best = None
for _ in range(2):
    started = time.perf_counter()
    rows = con.execute(
        f"SELECT edge, avg(temp) AS mean FROM read_json('{path}', format='newline_delimited') GROUP BY edge"
    ).fetchall()
    elapsed = time.perf_counter() - started
    best = elapsed if best is None else min(best, elapsed)
print(len(rows), best)
"#;

/// The same records as one NDJSON file (each with its edge as a field) and DuckDB's
/// `read_json` running the same GROUP BY over it: the better of two runs' seconds, or `None`
/// when no Python with `duckdb` is at hand.
fn duckdb_read_json(
    log: &Log,
    edges: u32,
    dir: &std::path::Path,
    python: Option<&std::path::Path>,
) -> anyhow::Result<Option<f64>> {
    let python = python.map(PathBuf::from).unwrap_or_else(|| {
        let venv = PathBuf::from("tests/python/.venv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let probe = std::process::Command::new(&python)
        .args(["-c", "import duckdb"])
        .output();
    if !probe.is_ok_and(|out| out.status.success()) {
        println!(
            "DuckDB read_json: skipped, {} has no duckdb module (pip install duckdb; --python)",
            python.display()
        );
        return Ok(None);
    }
    let path = dir.join("sensors.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for edge in 1..=edges {
        for p in 0..PARTITIONS {
            let partition = log.partition(&mirror(edge)?, PartitionId(p))?;
            let mut offset = partition.log_start();
            while offset < partition.high_watermark() {
                let chunk = partition.read(offset, 4 << 20)?;
                let mut failed = None;
                log::visit_all(chunk.batches, |record| {
                    let value = record.value.unwrap_or_default();
                    let line = value.strip_prefix(b"{").map(|rest| {
                        [
                            format!("{{\"edge\":\"edge-{edge}\",").as_bytes(),
                            rest,
                            b"\n",
                        ]
                        .concat()
                    });
                    if let Some(line) = line
                        && let Err(e) = std::io::Write::write_all(&mut file, &line)
                    {
                        failed = Some(e);
                    }
                })?;
                if let Some(e) = failed {
                    return Err(e.into());
                }
                offset = chunk.next_offset;
            }
        }
    }
    std::io::Write::flush(&mut file)?;
    drop(file);
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(DUCKDB_GROUP_BY)
        .arg(&path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "DuckDB failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let rows: usize = words.next().unwrap_or_default().parse()?;
    anyhow::ensure!(
        rows == edges as usize,
        "DuckDB gave {rows} rows for {edges} edges"
    );
    std::fs::remove_file(&path)?;
    Ok(Some(words.next().unwrap_or_default().parse()?))
}

struct Exported {
    rows: u64,
    parquet_bytes: u64,
    files: u64,
    seconds: f64,
}

/// Exports `sensors` (every mirror) to a Delta table in `dir` and waits until all of it is
/// committed.
async fn export_all(log: &Log, dir: &std::path::Path) -> anyhow::Result<Exported> {
    let shutdown = CancellationToken::new();
    let exports = Exports::open(
        log.clone(),
        Meta::open(&dir.join("export-meta"))?,
        RestartPolicies::all(RestartPolicy::LINKS),
        LakeCatalog::default(),
        shutdown.clone(),
    )
    .await?;
    let started = Instant::now();
    exports
        .create(NewExport {
            name: "bench".into(),
            from: TopicName::new("sensors")?,
            to: dir.join("lake").display().to_string(),
            storage: Vec::new(),
            partition_by: None,
            start: StartAt::Earliest,
            target_file_bytes: None,
            flush_interval: Some(Duration::from_secs(1)),
            maintenance_interval: None,
            dead_letter_topic: None,
        })
        .await?;
    loop {
        let status = exports.get("bench").await?;
        if let State::Failed { failure } = &status.progress.state {
            anyhow::bail!("the export failed: {}", failure.reason);
        }
        let sources = &status.progress.sources;
        if !sources.is_empty() && sources.iter().all(|s| s.lag() == 0) {
            let seconds = started.elapsed().as_secs_f64();
            exports.stop_all().await;
            shutdown.cancel();
            return Ok(Exported {
                rows: status.progress.rows,
                parquet_bytes: status.progress.bytes,
                files: status.progress.files,
                seconds,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mirror(edge: u32) -> anyhow::Result<TopicName> {
    Ok(TopicName::new(format!("edge-{edge}.sensors"))?)
}

fn reading(edge: u32, n: u64, timestamp: i64) -> Record {
    let temp = 15.0 + ((n * 37 + u64::from(edge) * 11) % 300) as f64 / 10.0;
    Record {
        key: None,
        value: Some(Bytes::from(format!(
            "{{\"sensor\":\"s-{:04}\",\"temp\":{temp:.1},\"humidity\":{},\"seq\":{n}}}",
            n % 1000,
            n % 100
        ))),
        headers: Vec::new(),
        timestamp: Timestamp(timestamp),
    }
}

/// One edge's mirror with `per_partition` readings in each partition, timestamps spread
/// evenly over a day; returns the bytes stored.
async fn fill(log: &Log, edge: u32, per_partition: u64, segment_bytes: u64) -> anyhow::Result<u64> {
    let topic = mirror(edge)?;
    let config = TopicConfig {
        partitions: PARTITIONS,
        retention_ms: None,
        segment_bytes,
        ..TopicConfig::default()
    };
    log.create_mirror_topic(topic.clone(), config, format!("edge edge-{edge}"))
        .await?;
    let step = (DAY_MS / per_partition.max(1) as i64).max(1);
    let mut stored = 0;
    for p in 0..PARTITIONS {
        let partition = log.partition(&topic, PartitionId(p))?;
        let mut pending = Vec::new();
        let mut next = 0;
        while next < per_partition {
            let count = BATCH.min(per_partition - next);
            let records: Vec<Record> = (next..next + count)
                .map(|n| reading(edge, n, START_MS + n as i64 * step))
                .collect();
            let mut batch: BytesMut = log::encode(&records, Compression::None)?;
            log::set_base_offset(&mut batch, Offset(next));
            stored += batch.len() as u64;
            pending.push(partition.submit_at_own_offset(batch).await?);
            next += count;
        }
        for durable in pending {
            durable.await?;
        }
    }
    Ok(stored)
}

/// Every record of every mirror read and decoded, the partitions in parallel.
fn plain_read(log: &Log, edges: u32) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut partitions = Vec::new();
    for edge in 1..=edges {
        for p in 0..PARTITIONS {
            partitions.push(log.partition(&mirror(edge)?, PartitionId(p))?);
        }
    }
    let counts = std::thread::scope(|scope| {
        let readers: Vec<_> = partitions
            .iter()
            .map(|partition| {
                scope.spawn(move || -> anyhow::Result<u64> {
                    let mut offset = partition.log_start();
                    let mut count = 0;
                    while offset < partition.high_watermark() {
                        let chunk = partition.read(offset, 4 << 20)?;
                        log::visit_all(chunk.batches, |_| count += 1)?;
                        offset = chunk.next_offset;
                    }
                    Ok(count)
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|reader| {
                reader
                    .join()
                    .map_err(|_| anyhow::anyhow!("a reader panicked"))?
            })
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok((counts.iter().sum(), started.elapsed().as_secs_f64()))
}

/// A live query over the last 1% of the time; then one batch appended to edge-1's mirror:
/// the milliseconds until the answer counts it.
async fn live_update(log: &Log, query: &Query, since: i64) -> anyhow::Result<f64> {
    let stop = CancellationToken::new();
    let mut answers = query.follow(
        format!(
            "SELECT count(*) AS n FROM sensors WHERE _timestamp >= to_timestamp_millis({since})"
        ),
        stop.clone(),
    );
    let count = |answer: &crate::query::Answer| -> anyhow::Result<i64> {
        let rows: Vec<serde_json::Value> = serde_json::from_str(&answer.to_json()?)?;
        Ok(rows.first().and_then(|row| row["n"].as_i64()).unwrap_or(0))
    };
    let first = answers
        .recv()
        .await
        .ok_or_else(|| anyhow::anyhow!("the live query ended"))??;
    let before = count(&first)?;
    let partition = log.partition(&mirror(1)?, PartitionId(0))?;
    let next = partition.high_watermark();
    let records: Vec<Record> = (0..100)
        .map(|n| reading(1, next.0 + n, START_MS + DAY_MS))
        .collect();
    let mut batch: BytesMut = log::encode(&records, Compression::None)?;
    log::set_base_offset(&mut batch, next);
    let appended = Instant::now();
    partition.append_at_own_offset(batch).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = tokio::time::timeout_at(deadline, answers.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the live query ended"))??;
        if count(&answer)? == before + 100 {
            break;
        }
    }
    stop.cancel();
    Ok(appended.elapsed().as_secs_f64() * 1000.0)
}
