//! Pipelines over a real log, real plugins (built from plugins/) and a real metadata store.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::log::{Compression, Durability, LogConfig, Offset, Record, Timestamp, TopicConfig};
use crate::runtime::{RestartPolicy, State};
use crate::security::secrets::SecretProviders;
use crate::transform::HOPS_HEADER;

struct Setup {
    log: Log,
    meta: Meta,
    plugins: Plugins,
    pipelines: Pipelines,
    shutdown: CancellationToken,
}

/// A log with the empty source topic `in`, the plugin host and the pipelines.
async fn setup(dir: &Path) -> Setup {
    let meta = Meta::open(&dir.join("meta")).unwrap();
    let config = LogConfig {
        durability: Durability::Os,
        ..LogConfig::new(dir.to_path_buf())
    };
    let log = Log::open(config, meta.clone()).await.unwrap();
    let shutdown = CancellationToken::new();
    let plugins = Plugins::open(
        dir,
        meta.clone(),
        SecretProviders::default(),
        shutdown.clone(),
    )
    .unwrap();
    let pipelines = Pipelines::open(
        log.clone(),
        meta.clone(),
        plugins.clone(),
        Limits {
            max_memory_mb: 32,
            timeout_ms: 500,
        },
        RestartPolicies::all(RestartPolicy::TASKS),
        shutdown.clone(),
    )
    .await
    .unwrap();
    log.create_topic(topic("in"), TopicConfig::default())
        .await
        .unwrap();
    Setup {
        log,
        meta,
        plugins,
        pipelines,
        shutdown,
    }
}

impl Setup {
    /// Rolls a pipeline partition's progress back to source offset `next`, with partition 0
    /// of `destination` recorded as ending at 0: as if the process died before its progress
    /// reached the disk (the destination registered at its start, nothing recorded as done).
    async fn lose_progress(
        &self,
        pipeline_id: u64,
        partition: PartitionId,
        next: u64,
        destination: &str,
    ) {
        let key = progress::key(pipeline_id, partition);
        let mut lost: progress::Progress = self
            .meta
            .get(Table::PipelineProgress, &key)
            .unwrap()
            .unwrap();
        lost.next = next;
        lost.set_end(
            &progress::Destination {
                topic: topic(destination),
                partition: PartitionId(0),
            },
            Offset(0),
        );
        self.meta
            .put(Table::PipelineProgress, &key, &lost)
            .await
            .unwrap();
    }

    async fn add_faulty(&self) {
        self.plugins
            .add("faulty", test_plugin("plugin_fault_injector"))
            .await
            .unwrap();
    }

    async fn close(self) {
        self.pipelines.stop_all().await;
        self.shutdown.cancel();
        self.log.close().await.unwrap();
    }
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

async fn produce(log: &Log, name: &str, values: impl IntoIterator<Item = String>) {
    produce_to(log, name, PartitionId(0), values).await;
}

async fn produce_to(
    log: &Log,
    name: &str,
    partition: PartitionId,
    values: impl IntoIterator<Item = String>,
) {
    let records: Vec<Record> = values
        .into_iter()
        .map(|v| Record {
            key: None,
            value: Some(Bytes::from(v)),
            headers: Vec::new(),
            timestamp: Timestamp(1_700_000_000_000),
        })
        .collect();
    for chunk in records.chunks(500) {
        let batch = crate::log::encode(chunk, Compression::None).unwrap();
        log.append(&topic(name), partition, batch).await.unwrap();
    }
}

async fn values(log: &Log, name: &str) -> Vec<String> {
    values_of(log, name, PartitionId(0)).await
}

async fn values_of(log: &Log, name: &str, partition: PartitionId) -> Vec<String> {
    read_partition(log, name, partition)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.record.value.unwrap().to_vec()).unwrap())
        .collect()
}

async fn read_all(log: &Log, name: &str) -> Vec<crate::log::StoredRecord> {
    read_partition(log, name, PartitionId(0)).await
}

async fn read_partition(
    log: &Log,
    name: &str,
    partition: PartitionId,
) -> Vec<crate::log::StoredRecord> {
    let partition = log.partition(&topic(name), partition).unwrap();
    let mut out = Vec::new();
    partition
        .scan(Offset(0), |record| out.push(record))
        .unwrap();
    out
}

fn step(plugin: &str, config: &[(&str, &str)]) -> TransformSpec {
    TransformSpec {
        plugin: plugin.to_owned(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn new_pipeline(name: &str, from: &str, to: &str, transforms: Vec<TransformSpec>) -> NewPipeline {
    NewPipeline {
        name: name.to_owned(),
        from: topic(from),
        to: topic(to),
        transforms,
        errors: ErrorPolicy::Fail,
        dlq_topic: None,
    }
}

/// Polls the pipeline until `done` holds for its first partition, or panics with its status.
/// Waits until partition 0 of `name` is as `done` wants it, and returns it as it was then.
async fn wait_for(
    pipelines: &Pipelines,
    name: &str,
    done: impl Fn(&PartitionStatus) -> bool,
) -> PartitionStatus {
    wait_for_partition(pipelines, name, 0, done).await
}

async fn wait_for_partition(
    pipelines: &Pipelines,
    name: &str,
    index: usize,
    done: impl Fn(&PartitionStatus) -> bool,
) -> PartitionStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = pipelines.get(name).await.unwrap();
        if let Some(partition) = status.partitions.get(index).filter(|p| done(p)) {
            return partition.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_pipeline_transforms_continuously() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    produce(&s.log, "in", (0..1000).map(|i| format!(r#"{{"i":{i}}}"#))).await;
    let filter = step("filter", &[("field", "i"), ("less-than", "500")]);
    s.pipelines
        .create(new_pipeline("evens", "in", "out", vec![filter]))
        .await
        .unwrap();
    wait_for(&s.pipelines, "evens", |p| p.next_offset == 1000).await;
    produce(
        &s.log,
        "in",
        (1000..1100).map(|i| format!(r#"{{"i":{i}}}"#)),
    )
    .await;
    wait_for(&s.pipelines, "evens", |p| {
        p.next_offset == 1100 && p.lag() == 0
    })
    .await;
    let out = values(&s.log, "out").await;
    assert_eq!(out.len(), 600);
    assert_eq!(out[0], r#"{"i":500}"#);
    assert_eq!(out[599], r#"{"i":1099}"#);
    let status = s.pipelines.get("evens").await.unwrap();
    assert_eq!(status.partitions[0].records_in, 1100);
    assert_eq!(status.partitions[0].records_out, 600);
    s.close().await;
}

/// A backlog of several reads, growing while the pipeline runs: each read after the first is
/// made ahead, while the chunk before it is transformed, and the output is the input, in
/// order, each record once.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_read_ahead_comes_out_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    let padding = "x".repeat(300);
    let value = |i: usize| format!(r#"{{"i":{i},"pad":"{padding}"}}"#);
    produce(&s.log, "in", (0..12_000).map(value)).await;
    let keep_all = step("filter", &[("field", "i"), ("action", "keep")]);
    s.pipelines
        .create(new_pipeline("all", "in", "out", vec![keep_all]))
        .await
        .unwrap();
    produce(&s.log, "in", (12_000..15_000).map(value)).await;
    wait_for(&s.pipelines, "all", |p| {
        p.next_offset == 15_000 && p.lag() == 0
    })
    .await;
    let expected: Vec<String> = (0..15_000).map(value).collect();
    assert!(
        values(&s.log, "out").await == expected,
        "output differs from input"
    );
    let status = s.pipelines.get("all").await.unwrap();
    assert_eq!(status.partitions[0].records_in, 15_000);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_progress_never_duplicates_output() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    produce(
        &s.log,
        "in",
        (0..3000).map(|i| format!(r#"{{"s":"v{i}"}}"#)),
    )
    .await;
    let upper = step("filter", &[("field", "s"), ("equals", "none")]);
    let created = s
        .pipelines
        .create(new_pipeline("copy", "in", "out", vec![upper]))
        .await
        .unwrap();
    wait_for(&s.pipelines, "copy", |p| p.next_offset == 3000).await;
    s.pipelines.pause("copy").await.unwrap();
    s.lose_progress(created.spec.id, PartitionId(0), 1000, "out")
        .await;
    s.pipelines.resume("copy").await.unwrap();
    produce(
        &s.log,
        "in",
        (3000..3500).map(|i| format!(r#"{{"s":"v{i}"}}"#)),
    )
    .await;
    wait_for(&s.pipelines, "copy", |p| p.next_offset == 3500).await;
    let out = values(&s.log, "out").await;
    let expected: Vec<String> = (0..3500).map(|i| format!(r#"{{"s":"v{i}"}}"#)).collect();
    assert_eq!(out, expected, "every record exactly once, in order");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_gained_partitions_gets_no_duplicates_after_lost_progress() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    let two = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    s.log.create_topic(topic("in2"), two.clone()).await.unwrap();
    s.log
        .create_topic(topic("out2"), TopicConfig::default())
        .await
        .unwrap();
    let reading = |i| format!(r#"{{"s":"v{i}"}}"#);
    produce_to(&s.log, "in2", PartitionId(1), (0..2000).map(reading)).await;
    let all = step("filter", &[("field", "s"), ("equals", "none")]);
    let created = s
        .pipelines
        .create(new_pipeline("grow", "in2", "out2", vec![all]))
        .await
        .unwrap();
    wait_for_partition(&s.pipelines, "grow", 1, |p| p.next_offset == 2000).await;
    s.pipelines.pause("grow").await.unwrap();
    // Progress lost as if by a crash, and meanwhile out2 grows: source partition 1 now maps to
    // out2/1, which holds none of the output already in out2/0.
    s.lose_progress(created.spec.id, PartitionId(1), 500, "out2")
        .await;
    s.log
        .update_topic_config(&topic("out2"), two)
        .await
        .unwrap();
    s.pipelines.resume("grow").await.unwrap();
    produce_to(&s.log, "in2", PartitionId(1), (2000..2500).map(reading)).await;
    wait_for_partition(&s.pipelines, "grow", 1, |p| p.next_offset == 2500).await;
    let old: Vec<String> = (0..2000).map(reading).collect();
    let new: Vec<String> = (2000..2500).map(reading).collect();
    assert_eq!(values_of(&s.log, "out2", PartitionId(0)).await, old);
    assert_eq!(values_of(&s.log, "out2", PartitionId(1)).await, new);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_to_the_source_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    produce(&s.log, "in", (0..10).map(|i| format!(r#"{{"i":{i}}}"#))).await;
    let all = step("filter", &[("field", "i"), ("less-than", "0")]);
    s.pipelines
        .create(new_pipeline("widen", "in", "wide", vec![all]))
        .await
        .unwrap();
    wait_for(&s.pipelines, "widen", |p| p.next_offset == 10).await;
    let two = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    s.log.update_topic_config(&topic("in"), two).await.unwrap();
    produce_to(
        &s.log,
        "in",
        PartitionId(1),
        (10..15).map(|i| format!(r#"{{"i":{i}}}"#)),
    )
    .await;
    wait_for_partition(&s.pipelines, "widen", 1, |p| p.next_offset == 5).await;
    assert_eq!(
        values(&s.log, "wide").await.len(),
        15,
        "wide has 1 partition: 1 mod 1 = 0"
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_predicate_limits_a_transform_to_the_records_it_matches() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    let records: Vec<Record> = [("a", true), ("b", false), ("c", true)]
        .into_iter()
        .map(|(name, personal)| Record {
            key: None,
            value: Some(Bytes::from(format!(r#"{{"name":"{name}"}}"#))),
            headers: personal
                .then(|| crate::log::Header {
                    key: "pii".into(),
                    value: None,
                })
                .into_iter()
                .collect(),
            timestamp: Timestamp(1_700_000_000_000),
        })
        .collect();
    let batch = crate::log::encode(&records, Compression::None).unwrap();
    s.log
        .append(&topic("in"), PartitionId(0), batch)
        .await
        .unwrap();
    let mask = step(
        "mask-field",
        &[
            ("fields", "name"),
            ("predicate", "has-header-key"),
            ("predicate.name", "pii"),
        ],
    );
    s.pipelines
        .create(new_pipeline("mask", "in", "masked", vec![mask]))
        .await
        .unwrap();
    wait_for(&s.pipelines, "mask", |p| p.next_offset == 3).await;
    assert_eq!(
        values(&s.log, "masked").await,
        [r#"{"name":""}"#, r#"{"name":"b"}"#, r#"{"name":""}"#]
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_records_are_skipped_or_dead_lettered_or_stop_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    s.add_faulty().await;
    let values_in = ["a", "poison-1", "b", "poison-2", "c"].map(String::from);
    produce(&s.log, "in", values_in.clone()).await;
    let poison = || vec![step("faulty", &[("mode", "poison")])];

    let mut skip = new_pipeline("skip", "in", "skipped", poison());
    skip.errors = ErrorPolicy::Skip;
    s.pipelines.create(skip).await.unwrap();
    let mut dlq = new_pipeline("dlq", "in", "kept", poison());
    dlq.errors = ErrorPolicy::Dlq;
    dlq.dlq_topic = Some(topic("dead"));
    s.pipelines.create(dlq).await.unwrap();
    s.pipelines
        .create(new_pipeline("strict", "in", "strict-out", poison()))
        .await
        .unwrap();

    wait_for(&s.pipelines, "skip", |p| p.next_offset == 5).await;
    wait_for(&s.pipelines, "dlq", |p| p.next_offset == 5).await;
    wait_for(&s.pipelines, "strict", |p| p.state.failure().is_some()).await;
    assert_eq!(values(&s.log, "skipped").await, ["a", "b", "c"]);
    assert_eq!(values(&s.log, "kept").await, ["a", "b", "c"]);
    let dead = read_all(&s.log, "dead").await;
    assert_eq!(dead.len(), 2);
    let header = |key: &str| {
        dead[1]
            .record
            .headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value.clone())
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    assert_eq!(dead[1].record.value.as_deref(), Some(&b"poison-2"[..]));
    assert_eq!(header("appliance.error.offset").as_deref(), Some("3"));
    assert_eq!(header("appliance.error.plugin").as_deref(), Some("faulty"));
    assert!(
        header("appliance.error.message")
            .unwrap()
            .contains("poison")
    );
    let strict = s.pipelines.get("strict").await.unwrap();
    let strict_state = &strict.partitions[0].state;
    let restarting = matches!(strict_state, State::Restarting { .. });
    let reason = &strict_state.failure().unwrap().reason;
    assert!(
        reason.contains("rejected the record at offset 1"),
        "{reason}"
    );
    assert!(!restarting, "the same record would be rejected again");
    assert_eq!(strict.partitions[0].next_offset, 0);
    assert_eq!(
        s.pipelines.user_of("faulty").await.as_deref(),
        Some("dlq"),
        "a plugin in use is reported"
    );
    s.close().await;
}

/// One worker thread: a looping guest occupies it until its deadline, which must come anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_trapping_plugin_fails_only_its_own_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    s.add_faulty().await;
    produce(&s.log, "in", (0..10).map(|i| format!(r#"{{"i":{i}}}"#))).await;
    for (name, mode) in [("trap", "trap"), ("spin", "loop"), ("hog", "allocate")] {
        s.pipelines
            .create(new_pipeline(
                name,
                "in",
                &format!("{name}-out"),
                vec![step("faulty", &[("mode", mode)])],
            ))
            .await
            .unwrap();
    }
    s.pipelines
        .create(new_pipeline(
            "healthy",
            "in",
            "ok",
            vec![step("filter", &[("field", "nope")])],
        ))
        .await
        .unwrap();
    for (name, expected) in [
        ("trap", "trapping on purpose"),
        ("spin", "limit of 500 ms"),
        ("hog", "memory limit of 32 MiB"),
    ] {
        let failed = wait_for(&s.pipelines, name, |p| p.state.failure().is_some()).await;
        let restarting = matches!(failed.state, State::Restarting { .. });
        let reason = &failed.state.failure().unwrap().reason;
        assert!(
            reason.contains("\"faulty\"") && reason.contains(expected),
            "{reason}"
        );
        assert!(restarting, "a plugin's trap or limit may pass: {reason}");
    }
    produce(&s.log, "in", (10..20).map(|i| format!(r#"{{"i":{i}}}"#))).await;
    wait_for(&s.pipelines, "healthy", |p| p.next_offset == 20).await;
    assert_eq!(values(&s.log, "ok").await.len(), 20);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pipelines_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    let error = |result: Result<PipelineStatus, PipelineError>| result.unwrap_err().to_string();
    let rejected = error(
        s.pipelines
            .create(new_pipeline("p", "in", "out", vec![step("filter", &[])]))
            .await,
    );
    assert!(
        rejected.contains("rejected its configuration"),
        "{rejected}"
    );
    let missing = error(
        s.pipelines
            .create(new_pipeline("p", "in", "out", vec![step("nope", &[])]))
            .await,
    );
    assert!(missing.contains("no plugin named \"nope\""), "{missing}");
    let no_source = error(
        s.pipelines
            .create(new_pipeline("p", "absent", "out", vec![]))
            .await,
    );
    assert!(no_source.contains("absent"), "{no_source}");
    let mut no_dlq = new_pipeline("p", "in", "out", vec![]);
    no_dlq.errors = ErrorPolicy::Dlq;
    assert!(error(s.pipelines.create(no_dlq).await).contains("dead-letter topic"));
    let bad_predicate = error(
        s.pipelines
            .create(new_pipeline(
                "p",
                "in",
                "out",
                vec![step("filter", &[("field", "a"), ("predicate", "maybe")])],
            ))
            .await,
    );
    assert!(
        bad_predicate.contains("unknown predicate"),
        "{bad_predicate}"
    );
    assert!(s.pipelines.list().await.is_empty());
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cycles_are_refused_at_create_and_the_hop_limit_ends_those_it_cannot_see() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    s.pipelines
        .create(new_pipeline("forth", "in", "c2", vec![]))
        .await
        .unwrap();
    let back = s
        .pipelines
        .create(new_pipeline("back", "c2", "in", vec![]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        back.contains("cycle of pipelines, c2 -> in (this pipeline) -> c2 (pipeline forth)"),
        "{back}"
    );
    let routed_back = s
        .pipelines
        .create(new_pipeline(
            "back",
            "c2",
            "elsewhere",
            vec![step(
                "regex-router",
                &[("regex", "c2"), ("replacement", "in")],
            )],
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        routed_back.contains("c2 -> in (this pipeline)"),
        "{routed_back}"
    );

    // A route built from the topic's own name cannot be known at create: the hop count
    // stops the record after MAX_HOPS pipelines.
    s.log
        .create_topic(topic("loop-a"), TopicConfig::default())
        .await
        .unwrap();
    let mut forth = new_pipeline("loop-forth", "loop-a", "loop-b", vec![]);
    forth.errors = ErrorPolicy::Skip;
    s.pipelines.create(forth).await.unwrap();
    let mut back = new_pipeline(
        "loop-back",
        "loop-b",
        "elsewhere",
        vec![step(
            "regex-router",
            &[("regex", "(loop-)b"), ("replacement", "$1a")],
        )],
    );
    back.errors = ErrorPolicy::Skip;
    s.pipelines.create(back).await.unwrap();
    produce(&s.log, "loop-a", ["round".to_owned()]).await;
    wait_for(&s.pipelines, "loop-forth", |p| p.next_offset == 9).await;
    wait_for(&s.pipelines, "loop-back", |p| p.next_offset == 8).await;
    let hops = |stored: &crate::log::StoredRecord| {
        stored
            .record
            .headers
            .iter()
            .find(|h| h.key == HOPS_HEADER)
            .map(|h| String::from_utf8(h.value.clone().unwrap().to_vec()).unwrap())
    };
    let around: Vec<Option<String>> = read_all(&s.log, "loop-a").await.iter().map(hops).collect();
    let expected: Vec<Option<String>> = std::iter::once(None)
        .chain((1..=8).map(|round| Some((2 * round).to_string())))
        .collect();
    assert_eq!(around, expected);
    assert_eq!(
        read_all(&s.log, "loop-b").await.len(),
        8,
        "the record past the hop limit is dropped (errors=skip)"
    );
    s.close().await;
}

fn test_plugin(crate_name: &str) -> Vec<u8> {
    let path = Path::new(env!("APPLIANCE_PLUGINS_DIR")).join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_failing_for_a_while_is_restarted_with_backoff_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    s.add_faulty().await;
    produce(&s.log, "in", (0..10).map(|i| format!(r#"{{"i":{i}}}"#))).await;
    let until = std::time::SystemTime::now() + Duration::from_millis(2500);
    let until = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let flaky = vec![step("faulty", &[("mode", "trap-until"), ("until", &until)])];
    s.pipelines
        .create(new_pipeline("flaky", "in", "out", flaky))
        .await
        .unwrap();
    let failed = wait_for(&s.pipelines, "flaky", |p| {
        matches!(p.state, State::Restarting { .. })
    })
    .await;
    assert_eq!(failed.next_offset, 0);
    let caught_up = wait_for(&s.pipelines, "flaky", |p| p.next_offset == 10).await;
    assert!(caught_up.restarts >= 1, "{caught_up:?}");
    assert_eq!(caught_up.state, State::Running);
    assert_eq!(values(&s.log, "out").await.len(), 10, "each record once");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_pipeline_waiting_to_restart_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    s.add_faulty().await;
    produce(&s.log, "in", ["{}".to_owned()].into_iter()).await;
    let broken = vec![step("faulty", &[("mode", "trap")])];
    s.pipelines
        .create(new_pipeline("broken", "in", "out", broken))
        .await
        .unwrap();
    wait_for(&s.pipelines, "broken", |p| {
        matches!(p.state, State::Restarting { .. })
    })
    .await;
    assert_eq!(s.pipelines.running_tasks(), 1);
    s.pipelines.delete("broken").await.unwrap();
    assert_eq!(s.pipelines.running_tasks(), 0);
    assert!(s.pipelines.list().await.is_empty());
    s.close().await;
}
