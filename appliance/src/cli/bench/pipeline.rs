//! `appliance bench pipeline`: records through pipelines with the built-in `filter` and
//! `mask-field` (and the step alone of `insert-field`) on 200-byte JSON records, the same transforms compiled natively and run in this
//! process, and the per-call cost of crossing into the sandbox, all in one run.
//!
//! Four measurements:
//! 1. Pipelines end to end (read, transform in WebAssembly, append durably): records per second
//!    of wall time and per CPU-second of the whole process (every thread: reader, plugin
//!    thread, log writer), beside a pipeline with no transform, which only copies. The plugins
//!    are compiled before the clock starts, as a running appliance finds them in its plugin
//!    cache.
//! 2. The transform step alone on one thread, on batches of 1000 decoded records: the plugin
//!    in its sandbox, with batches encoded in one buffer (the default) and as typed WIT
//!    records (`batch-abi=typed`), against the same crate compiled natively
//!    (`transform-filter`, `transform-mask-field`, `transform-insert-field` as ordinary
//!    dependencies), all starting from the host's records; five rounds in which the three
//!    alternate, and the medians, with the range of the encoded/native ratio over the rounds.
//! 3. Per-call overhead, encoded and typed: a filter on a header no record has (no JSON work)
//!    at batch sizes 1, 100 and 1000.
//!
//! 4. With `--template LANG=PATH` (components of the upper-case template built from
//!    plugins/template, plugins/template-python, plugins/template-js): each one's size, first
//!    instantiation (the one compile included), cached instantiation, memory per instance and transform step, beside the Rust
//!    template compiled natively.
//!
//! And after 1., as 1b.: `window-aggregate` (tumbling 1 minute on the records' `ts`, 1,000
//! sensors, avg/min/max of `temp`) end to end beside the `filter` pipeline, and the restore
//! of its state from the changelog at the next start, in MB/s of changelog entries read.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;

use super::{PluginHost, median, open_plugin_host, print_header, scratch_dir};
use crate::log::{Compression, Log, PartitionId, Record, Timestamp, TopicConfig, TopicName};
use crate::pipeline::{NewPipeline, PartitionStatus, Pipelines};
use crate::plugin::{self, BatchInfo, Limits, Plugins};
use crate::runtime::{RestartPolicies, RestartPolicy};
use crate::transform::{ErrorPolicy, TransformSpec};

#[derive(Debug, Args)]
pub struct PipelineBenchArgs {
    /// Directory to measure in (a temporary directory is made inside it and removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Source records for each pipeline case.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Seconds each in-process transform case runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// End with one JSON object holding every figure on the last line.
    #[arg(long)]
    json: bool,
    /// A component of the upper-case template in another language to measure (section 4),
    /// as LANG=PATH; repeat for each.
    #[arg(long = "template", value_name = "LANG=PATH")]
    templates: Vec<String>,
}

const RECORD_BYTES: usize = 200;
const BATCH: usize = 1000;
/// Rounds of the transform step: encoded, typed and native alternate within each, so that a
/// machine whose speed drifts moves all three alike, and the medians are reported.
const STEP_ROUNDS: u32 = 5;
const FILTER: &[(&str, &str)] = &[("field", "temp"), ("greater-than", "30")];
/// The host's setting that makes batches cross as typed WIT records.
const TYPED: (&str, &str) = ("batch-abi", "typed");
const SENSORS: usize = 1000;
const WINDOW: &[(&str, &str)] = &[
    ("window", "tumbling"),
    ("size", "1m"),
    ("grace", "10s"),
    ("time-field", "ts"),
    ("group-by", "sensor"),
    ("aggregates", "avg(temp);min(temp);max(temp)"),
    ("late-topic", "bench-late"),
];
const MASK: &[(&str, &str)] = &[("fields", "card|sensor")];
const INSERT: &[(&str, &str)] = &[
    ("offset.field", "offset"),
    ("static.field", "gateway"),
    ("static.value", "gw-7"),
];

#[derive(Debug, serde::Serialize)]
struct PipelineFigures {
    case: &'static str,
    records_s: f64,
    records_per_cpu_s: f64,
}

#[derive(Debug, serde::Serialize)]
struct WindowFigures {
    records_s: f64,
    records_per_cpu_s: f64,
    over_filter: f64,
    restore_mb: f64,
    restore_mb_s: f64,
    restored_windows: usize,
}

#[derive(Debug, serde::Serialize)]
struct StepFigures {
    transform: &'static str,
    /// Batches encoded in one buffer each way (`encoded-transformer`, the default).
    wasm_records_s: f64,
    /// Batches as typed WIT records (`batch-abi=typed`).
    typed_records_s: f64,
    native_records_s: f64,
    wasm_over_native: f64,
    typed_over_native: f64,
    /// The lowest and highest of the rounds' `wasm_over_native`.
    wasm_over_native_range: [f64; 2],
}

#[derive(Debug, serde::Serialize)]
struct TemplateFigures {
    language: String,
    component_bytes: u64,
    /// `plugin add` (the one compile) and the first instance.
    first_instantiation_s: f64,
    cached_instantiation_ms: f64,
    memory_per_instance_mib: f64,
    records_s: f64,
}

const UPPERCASE: &[(&str, &str)] = &[("field", "sensor")];

#[derive(Debug, serde::Serialize)]
struct CallFigures {
    batch: usize,
    wasm_us_per_call: f64,
    typed_us_per_call: f64,
    native_us_per_call: f64,
}

pub async fn pipeline_bench(args: PipelineBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.records >= BATCH, "--records must be at least {BATCH}");
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    let scratch = scratch_dir(&args.dir)?;
    let disk = print_header(
        scratch.path(),
        format_args!(
            "pipeline bench: {} JSON records of {RECORD_BYTES} B, 1 partition, durable appends",
            args.records
        ),
    )?;
    let PluginHost {
        shutdown,
        meta,
        log,
        plugins,
    } = open_plugin_host(scratch.path()).await?;
    let pipelines = Pipelines::open(
        log.clone(),
        meta,
        plugins.clone(),
        Limits::default(),
        RestartPolicies::all(RestartPolicy::TASKS),
        shutdown.clone(),
    )
    .await?;
    let source = TopicName::new("bench-source")?;
    log.create_topic(source.clone(), TopicConfig::default())
        .await?;
    fill(&log, &source, args.records).await?;
    for plugin in ["filter", "mask-field"] {
        plugins.get(plugin).await?;
    }

    println!();
    println!("1. pipelines end to end (source -> plugin in its sandbox -> durable append)");
    println!(
        "{:<22} {:>12} {:>16} {:>10}",
        "case", "records/s", "records/CPU-s", "of copy"
    );
    let mut pipeline_figures = Vec::new();
    for (case, transforms) in [
        ("copy (no transform)", vec![]),
        ("filter", vec![spec("filter", FILTER)]),
        ("mask-field", vec![spec("mask-field", MASK)]),
        (
            "filter, typed batches",
            vec![spec("filter", &[FILTER, &[TYPED]].concat())],
        ),
    ] {
        let figures = pipeline_case(&pipelines, &source, case, transforms, args.records).await?;
        pipelines.delete(&pipeline_name(case)).await?;
        let copy = pipeline_figures
            .first()
            .map_or(figures.records_s, |copy: &PipelineFigures| copy.records_s);
        println!(
            "{:<22} {:>12.0} {:>16.0} {:>9.2}x",
            figures.case,
            figures.records_s,
            figures.records_per_cpu_s,
            figures.records_s / copy
        );
        pipeline_figures.push(figures);
    }
    let window = window_case(&pipelines, &source, &pipeline_figures, args.records).await?;
    pipelines.stop_all().await;

    println!();
    println!(
        "2. the transform step alone, one thread, batches of {BATCH}, encoded and typed: medians of {STEP_ROUNDS} rounds"
    );
    println!(
        "{:<12} {:>14} {:>14} {:>14} {:>15} {:>13} {:>13}",
        "transform",
        "encoded rec/s",
        "typed rec/s",
        "native rec/s",
        "encoded/native",
        "rounds' range",
        "typed/native"
    );
    let batch = host_records(BATCH);
    let duration = Duration::from_secs_f64(args.seconds);
    let mut step_figures = Vec::new();
    for (transform, config) in [
        ("filter", FILTER),
        ("mask-field", MASK),
        ("insert-field", INSERT),
    ] {
        let mut wasm = instance(&plugins, transform, config).await?;
        let mut typed = instance(&plugins, transform, &[config, &[TYPED]].concat()).await?;
        let mut native = Native::new(transform, config)?;
        let round = duration / STEP_ROUNDS;
        let mut rounds = Vec::new();
        for _ in 0..STEP_ROUNDS {
            let wasm_rate = rate(round, BATCH, async || wasm_call(&mut wasm, &batch).await).await?;
            let typed_rate =
                rate(round, BATCH, async || wasm_call(&mut typed, &batch).await).await?;
            let native_rate = rate(round, BATCH, async || native.call(&batch)).await?;
            rounds.push((wasm_rate, typed_rate, native_rate));
        }
        let ratios: Vec<f64> = rounds.iter().map(|(w, _, n)| n / w).collect();
        let figures = StepFigures {
            transform,
            wasm_records_s: median(rounds.iter().map(|r| r.0)),
            typed_records_s: median(rounds.iter().map(|r| r.1)),
            native_records_s: median(rounds.iter().map(|r| r.2)),
            wasm_over_native: median(ratios.iter().copied()),
            typed_over_native: median(rounds.iter().map(|(_, t, n)| n / t)),
            wasm_over_native_range: [
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ],
        };
        println!(
            "{:<12} {:>14.0} {:>14.0} {:>14.0} {:>14.2}x {:>13} {:>12.2}x",
            figures.transform,
            figures.wasm_records_s,
            figures.typed_records_s,
            figures.native_records_s,
            figures.wasm_over_native,
            format!(
                "{:.2}-{:.2}x",
                figures.wasm_over_native_range[0], figures.wasm_over_native_range[1]
            ),
            figures.typed_over_native
        );
        step_figures.push(figures);
    }

    println!();
    println!("3. per-call overhead: filter on a header no record has (no JSON work)");
    println!(
        "{:>6} {:>15} {:>17} {:>13} {:>15} {:>16}",
        "batch",
        "encoded us/call",
        "encoded ns/record",
        "typed us/call",
        "typed ns/record",
        "native us/call"
    );
    let header_filter: &[(&str, &str)] = &[("header", "absent")];
    let mut wasm = instance(&plugins, "filter", header_filter).await?;
    let mut typed = instance(&plugins, "filter", &[header_filter, &[TYPED]].concat()).await?;
    let mut native = Native::new("filter", header_filter)?;
    let mut call_figures = Vec::new();
    for size in [1, 100, 1000] {
        let records = host_records(size);
        let wasm_rate = rate(duration / 2, size, async || {
            wasm_call(&mut wasm, &records).await
        })
        .await?;
        let typed_rate = rate(duration / 2, size, async || {
            wasm_call(&mut typed, &records).await
        })
        .await?;
        let native_rate = rate(duration / 2, size, async || native.call(&records)).await?;
        let figures = CallFigures {
            batch: size,
            wasm_us_per_call: size as f64 / wasm_rate * 1e6,
            typed_us_per_call: size as f64 / typed_rate * 1e6,
            native_us_per_call: size as f64 / native_rate * 1e6,
        };
        println!(
            "{:>6} {:>15.2} {:>17.0} {:>13.2} {:>15.0} {:>16.2}",
            size,
            figures.wasm_us_per_call,
            figures.wasm_us_per_call * 1000.0 / size as f64,
            figures.typed_us_per_call,
            figures.typed_us_per_call * 1000.0 / size as f64,
            figures.native_us_per_call
        );
        call_figures.push(figures);
    }
    let templates = template_cases(&plugins, &args.templates, &batch, duration).await?;
    shutdown.cancel();
    log.close().await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "disk_mb_s": disk,
                "pipelines": pipeline_figures,
                "transform_step": step_figures,
                "per_call": call_figures,
                "window_aggregate": window,
                "templates": templates,
            })
        );
    }
    Ok(())
}

/// Section 4: the upper-case template in each language given, and natively.
async fn template_cases(
    plugins: &Plugins,
    templates: &[String],
    batch: &[plugin::Record],
    duration: Duration,
) -> anyhow::Result<Vec<TemplateFigures>> {
    if templates.is_empty() {
        return Ok(Vec::new());
    }
    println!();
    println!(
        "4. the upper-case template by language (transform step, one thread, batches of {BATCH})"
    );
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>12} {:>12}",
        "language", "size", "first", "cached", "memory", "records/s"
    );
    let mut figures = Vec::new();
    for template in templates {
        let (language, path) = template
            .split_once('=')
            .with_context(|| format!("--template {template}: give LANG=PATH"))?;
        let wasm = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        let name = format!("template-{language}");
        let started = Instant::now();
        plugins.add(&name, wasm.clone()).await?;
        instance(plugins, &name, UPPERCASE).await?;
        let first_instantiation_s = started.elapsed().as_secs_f64();
        const INSTANCES: u32 = 5;
        let started = Instant::now();
        for _ in 0..INSTANCES {
            instance(plugins, &name, UPPERCASE).await?;
        }
        let cached_instantiation_ms =
            started.elapsed().as_secs_f64() * 1000.0 / f64::from(INSTANCES);
        let mut wasm_instance = instance(plugins, &name, UPPERCASE).await?;
        let records_s = rate(duration, BATCH, async || {
            wasm_call(&mut wasm_instance, batch).await
        })
        .await?;
        let row = TemplateFigures {
            language: language.to_owned(),
            component_bytes: wasm.len() as u64,
            first_instantiation_s,
            cached_instantiation_ms,
            memory_per_instance_mib: wasm_instance.memory_bytes() as f64 / f64::from(1 << 20),
            records_s,
        };
        println!(
            "{:<10} {:>10} B {:>10.2} s {:>11.2} ms {:>8.1} MiB {:>12.0}",
            row.language,
            row.component_bytes,
            row.first_instantiation_s,
            row.cached_instantiation_ms,
            row.memory_per_instance_mib,
            row.records_s
        );
        figures.push(row);
    }
    let mut native = Native::new("template", UPPERCASE)?;
    let native_rate = rate(duration, BATCH, async || native.call(batch)).await?;
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>12} {:>12.0}",
        "native", "-", "-", "-", "-", native_rate
    );
    figures.push(TemplateFigures {
        language: "native".to_owned(),
        component_bytes: 0,
        first_instantiation_s: 0.0,
        cached_instantiation_ms: 0.0,
        memory_per_instance_mib: 0.0,
        records_s: native_rate,
    });
    Ok(figures)
}

fn spec(plugin: &str, config: &[(&str, &str)]) -> TransformSpec {
    TransformSpec {
        plugin: plugin.to_owned(),
        config: pairs(config),
    }
}

fn pairs(config: &[(&str, &str)]) -> Vec<(String, String)> {
    config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A 200-byte JSON reading of one of 1,000 sensors, a reading a second each (`ts`, an hour
/// back); `temp` spreads over 0..50, so the filter drops about 40%.
fn json_record(seq: usize) -> String {
    let ts = Timestamp::now().0 - 3_600_000 + (seq / SENSORS) as i64 * 1000;
    let mut text = format!(
        r#"{{"sensor":"sensor-{:04}","ts":{ts},"site":"plant-{}","temp":{:.2},"humidity":{:.1},"status":"ok","card":"4111-1111-1111-{:04}","seq":{seq},"note":""#,
        seq % SENSORS,
        seq % 7,
        (seq * 37 % 5000) as f64 / 100.0,
        (seq * 13 % 1000) as f64 / 10.0,
        seq % 10_000,
    );
    while text.len() < RECORD_BYTES - 2 {
        text.push('.');
    }
    text.push_str(r#""}"#);
    text
}

async fn fill(log: &Log, topic: &TopicName, count: usize) -> anyhow::Result<()> {
    let mut seq = 0;
    while seq < count {
        let records: Vec<Record> = (seq..(seq + BATCH).min(count))
            .map(|n| Record {
                key: None,
                value: Some(Bytes::from(json_record(n))),
                headers: Vec::new(),
                timestamp: Timestamp::now(),
            })
            .collect();
        seq += records.len();
        let batch = crate::log::encode(&records, Compression::None)?;
        log.append(topic, PartitionId(0), batch).await?;
    }
    Ok(())
}

async fn pipeline_case(
    pipelines: &Pipelines,
    source: &TopicName,
    case: &'static str,
    transforms: Vec<TransformSpec>,
    records: usize,
) -> anyhow::Result<PipelineFigures> {
    let name = pipeline_name(case);
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    pipelines
        .create(NewPipeline {
            name: name.clone(),
            from: source.clone(),
            to: TopicName::new(format!("{name}-out"))?,
            transforms,
            errors: ErrorPolicy::Fail,
            dlq_topic: None,
        })
        .await?;
    first_partition_when(pipelines, &name, |p| {
        (p.next_offset as usize >= records).then_some(())
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;
    Ok(PipelineFigures {
        case,
        records_s: records as f64 / elapsed,
        records_per_cpu_s: records as f64 / cpu,
    })
}

/// Polls the pipeline's first partition until `done` returns something; fails if it fails.
async fn first_partition_when<T>(
    pipelines: &Pipelines,
    name: &str,
    done: impl Fn(&PartitionStatus) -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        let status = pipelines.get(name).await?;
        let partition = status.partitions.first().context("no partition")?;
        if let Some(failure) = partition.state.failure() {
            anyhow::bail!("pipeline {name} failed: {}", failure.reason);
        }
        if let Some(value) = done(partition) {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pipeline_name(case: &str) -> String {
    let words: Vec<&str> = case
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    format!("bench-{}", words.join("-"))
}

/// Section 1b: the window pipeline end to end, then its state restored by a pause and resume.
async fn window_case(
    pipelines: &Pipelines,
    source: &TopicName,
    earlier: &[PipelineFigures],
    records: usize,
) -> anyhow::Result<WindowFigures> {
    let case = "window-aggregate";
    let figures = pipeline_case(pipelines, source, case, vec![spec(case, WINDOW)], records).await?;
    let filter = earlier
        .iter()
        .find(|f| f.case == "filter")
        .map_or(f64::NAN, |f| f.records_s);
    let name = pipeline_name(case);
    pipelines.pause(&name).await?;
    pipelines.resume(&name).await?;
    let restored = first_partition_when(pipelines, &name, |p| p.state_restored).await?;
    pipelines.delete(&name).await?;
    let mb = restored.bytes as f64 / 1e6;
    let window = WindowFigures {
        records_s: figures.records_s,
        records_per_cpu_s: figures.records_per_cpu_s,
        over_filter: figures.records_s / filter,
        restore_mb: mb,
        restore_mb_s: mb / restored.took.as_secs_f64(),
        restored_windows: restored.entries,
    };
    println!();
    println!(
        "1b. window-aggregate: tumbling 1 minute on `ts`, {SENSORS} sensors, avg/min/max of temp"
    );
    println!(
        "{:<22} {:>12.0} {:>16.0}   {:.2}x the filter pipeline",
        case, window.records_s, window.records_per_cpu_s, window.over_filter
    );
    println!(
        "state restore: {:.1} MB of changelog entries in {:.3} s = {:.0} MB/s ({} open windows)",
        window.restore_mb,
        restored.took.as_secs_f64(),
        window.restore_mb_s,
        window.restored_windows
    );
    Ok(window)
}

/// User plus system CPU time of the whole process so far.
fn cpu_seconds() -> anyhow::Result<f64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

fn host_records(count: usize) -> Vec<plugin::Record> {
    (0..count)
        .map(|n| plugin::Record {
            key: None,
            value: Some(Bytes::from(json_record(n))),
            headers: Vec::new(),
            timestamp: 1_700_000_000_000,
            offset: n as i64,
            topic: None,
        })
        .collect()
}

fn info() -> BatchInfo {
    BatchInfo {
        topic: "bench-source".into(),
        partition: 0,
    }
}

async fn instance(
    plugins: &Plugins,
    name: &str,
    config: &[(&str, &str)],
) -> anyhow::Result<plugin::TransformInstance> {
    let loaded = plugins.get(name).await?;
    Ok(plugins
        .instantiate_transform(&loaded, &pairs(config), Limits::default(), "bench")
        .await?)
}

async fn wasm_call(
    instance: &mut plugin::TransformInstance,
    records: &[plugin::Record],
) -> anyhow::Result<usize> {
    let out = instance
        .process(&info(), records)
        .await?
        .map_err(|e| anyhow::anyhow!("record {} rejected: {}", e.index, e.message))?;
    Ok(out.len())
}

/// Records per second of `call`, each call handling `per_call` records, run for `duration`.
async fn rate(
    duration: Duration,
    per_call: usize,
    mut call: impl AsyncFnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < duration || calls == 0 {
        std::hint::black_box(call().await?);
        calls += 1;
    }
    Ok(calls as f64 * per_call as f64 / started.elapsed().as_secs_f64())
}

/// The same transform crates compiled into this binary: the native baseline.
enum Native {
    Filter(transform_filter::Filter),
    MaskField(transform_mask_field::MaskField),
    InsertField(transform_insert_field::InsertField),
    Template(plugin_template::Uppercase),
}

impl Native {
    fn new(name: &str, config: &[(&str, &str)]) -> anyhow::Result<Self> {
        use appliance_sdk::Transform;
        let config: appliance_sdk::Config = config.iter().copied().collect();
        let native = match name {
            "filter" => {
                Self::Filter(transform_filter::Filter::init(config).map_err(anyhow::Error::msg)?)
            }
            "mask-field" => Self::MaskField(
                transform_mask_field::MaskField::init(config).map_err(anyhow::Error::msg)?,
            ),
            "insert-field" => Self::InsertField(
                transform_insert_field::InsertField::init(config).map_err(anyhow::Error::msg)?,
            ),
            "template" => Self::Template(
                plugin_template::Uppercase::init(config).map_err(anyhow::Error::msg)?,
            ),
            other => anyhow::bail!("no native build of {other}"),
        };
        Ok(native)
    }

    /// Copies the host's records into the SDK's (as lowering copies them into the sandbox)
    /// and transforms them.
    fn call(&mut self, records: &[plugin::Record]) -> anyhow::Result<usize> {
        use appliance_sdk::Transform;
        let info = appliance_sdk::BatchInfo {
            topic: "bench-source".into(),
            partition: 0,
        };
        let batch: Vec<appliance_sdk::Record> = records
            .iter()
            .map(|r| appliance_sdk::Record {
                key: r.key.as_ref().map(|k| k.to_vec()),
                value: r.value.as_ref().map(|v| v.to_vec()),
                headers: r
                    .headers
                    .iter()
                    .map(|h| appliance_sdk::Header {
                        key: h.key.clone(),
                        value: h.value.to_vec(),
                    })
                    .collect(),
                timestamp: r.timestamp,
                offset: r.offset,
                topic: r.topic.clone(),
            })
            .collect();
        let out = match self {
            Self::Filter(filter) => filter.process(&info, batch),
            Self::MaskField(mask) => mask.process(&info, batch),
            Self::InsertField(insert) => insert.process(&info, batch),
            Self::Template(template) => template.process(&info, batch),
        }
        .map_err(|e| anyhow::anyhow!("record {} rejected: {}", e.index, e.message))?;
        Ok(out.len())
    }
}
