//! Connectors over a real log, real plugins (built from plugins/) and a real metadata store.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::log::{Durability, LogConfig, StoredRecord};
use crate::runtime::{RestartPolicy, State};
use crate::security::secrets::SecretProviders;

struct Setup {
    log: Log,
    meta: Meta,
    plugins: Plugins,
    connectors: Connectors,
    shutdown: CancellationToken,
}

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
    let connectors = Connectors::open(
        log.clone(),
        meta.clone(),
        plugins.clone(),
        Coordinator::new(log.clone(), meta.clone()),
        Limits {
            max_memory_mb: 32,
            timeout_ms: 2000,
        },
        RestartPolicies::all(RestartPolicy::TASKS),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Setup {
        log,
        meta,
        plugins,
        connectors,
        shutdown,
    }
}

impl Setup {
    async fn add_fault_source(&self) {
        let path = Path::new(env!("APPLIANCE_PLUGINS_DIR")).join("plugin_fault_source.wasm");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.plugins.add("fault-source", bytes).await.unwrap();
    }

    async fn close(self) {
        self.connectors.stop_all().await;
        self.shutdown.cancel();
        self.log.close().await.unwrap();
    }
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn pairs(config: &[(&str, &str)]) -> Vec<(String, String)> {
    config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn source(name: &str, plugin: &str, topic_name: &str, config: &[(&str, &str)]) -> NewConnector {
    NewConnector {
        name: name.to_owned(),
        plugin: plugin.to_owned(),
        topic: topic(topic_name),
        config: pairs(config),
        tasks_max: 1,
        transforms: Vec::new(),
        errors: ErrorPolicy::Fail,
        dlq_topic: None,
    }
}

async fn read_all(log: &Log, name: &str) -> Vec<StoredRecord> {
    let partition = log.partition(&topic(name), PartitionId(0)).unwrap();
    let mut out = Vec::new();
    partition
        .scan(Offset(0), |record| out.push(record))
        .unwrap();
    out
}

/// The `seq` field of each generator reading in the topic, in log order.
async fn sequence(log: &Log, name: &str) -> Vec<u64> {
    read_all(log, name)
        .await
        .iter()
        .map(|r| {
            let value: serde_json::Value =
                serde_json::from_slice(r.record.value.as_deref().unwrap()).unwrap();
            value["seq"].as_u64().unwrap()
        })
        .collect()
}

async fn wait_for_task(
    connectors: &Connectors,
    name: &str,
    done: impl Fn(&TaskStatus) -> bool,
) -> TaskStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = connectors.get(name).await.unwrap();
        if let Some(task) = status.tasks.first().filter(|t| done(t)) {
            return task.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_writes_every_record_once_and_resumes_from_the_log_after_losing_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    let generator = source(
        "readings",
        "generator",
        "readings",
        &[("rate", "20000"), ("count", "6000")],
    );
    let created = setup.connectors.create(generator).await.unwrap();
    let id = created.spec.id;
    wait_for_task(&setup.connectors, "readings", |t| t.records_out >= 2000).await;
    setup.connectors.pause("readings").await.unwrap();
    let written = sequence(&setup.log, "readings").await;
    assert!(written.len() >= 2000);

    // As if the process died before its progress reached the disk: only the registration
    // (the partition and its end before anything was written) is left.
    let key = source::key_prefix(id) + "00000";
    let registered = source::SourceProgress {
        partition: 0,
        end: 0,
        position: None,
    };
    setup
        .meta
        .put(Table::ConnectorProgress, &key, &registered)
        .await
        .unwrap();
    setup.connectors.resume("readings").await.unwrap();
    wait_for_task(&setup.connectors, "readings", |t| t.records_in > 0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sequence(&setup.log, "readings").await.len() < 6000 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sequence(&setup.log, "readings").await,
        (0..6000).collect::<Vec<u64>>(),
        "every reading once, in order, across the lost progress"
    );
    let records = read_all(&setup.log, "readings").await;
    let last = records.last().unwrap();
    let tag = last
        .record
        .headers
        .iter()
        .find(|h| h.key == SOURCE_TAG_HEADER)
        .and_then(|h| h.value.clone());
    assert_eq!(tag.as_deref(), Some(format!("{id:016x}:0").as_bytes()));
    let ConnectorOffsets::Source(offsets) = setup.connectors.offsets("readings").await.unwrap()
    else {
        panic!("a source has source offsets");
    };
    assert_eq!(
        offsets[0].position.as_deref(),
        Some(&6000u64.to_be_bytes()[..])
    );
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_source_fails_with_its_reason_while_another_runs() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    setup.add_fault_source().await;
    setup
        .connectors
        .create(source(
            "broken",
            "fault-source",
            "broken",
            &[("mode", "trap")],
        ))
        .await
        .unwrap();
    setup
        .connectors
        .create(source("fine", "generator", "fine", &[("rate", "1000")]))
        .await
        .unwrap();
    let failed = wait_for_task(&setup.connectors, "broken", |t| t.state.failure().is_some()).await;
    let restarting = matches!(failed.state, State::Restarting { .. });
    let reason = &failed.state.failure().unwrap().reason;
    assert!(reason.contains("trapped"), "{reason}");
    assert!(reason.contains("trapping on purpose"), "{reason}");
    assert!(restarting, "a failed task is restarted with backoff");
    let before = wait_for_task(&setup.connectors, "fine", |t| t.records_out > 0).await;
    wait_for_task(&setup.connectors, "fine", |t| {
        t.records_out > before.records_out
    })
    .await;
    setup.close().await;
}

/// A source that polls ahead is polled while its previous poll is transformed and the one
/// before it appended, two polls in flight at most, and is told of each poll once its records
/// are durable, in order (the plugin fails its task otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_polls_ahead_is_acknowledged_each_poll_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    setup.add_fault_source().await;
    let mut ahead = source("ahead", "fault-source", "ahead", &[("mode", "ahead")]);
    // With a transform, which then runs on a task of its own.
    ahead.transforms = vec![TransformSpec {
        plugin: "insert-header".to_owned(),
        config: pairs(&[("header", "seen"), ("value.literal", "yes")]),
    }];
    setup.connectors.create(ahead).await.unwrap();
    let status = wait_for_task(&setup.connectors, "ahead", |t| {
        t.records_out >= 50 || t.state.failure().is_some()
    })
    .await;
    assert!(status.state.failure().is_none(), "{status:?}");
    setup.connectors.pause("ahead").await.unwrap();
    let records = read_all(&setup.log, "ahead").await;
    assert!(
        records.iter().all(|r| r
            .record
            .headers
            .iter()
            .any(|h| h.key == "seen" && h.value.as_deref() == Some(&b"yes"[..]))),
        "every record went through the transform"
    );
    let polls: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.record.value.as_deref().unwrap().to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (1..=polls.len() as u64)
        .map(|poll| {
            format!(
                "poll {poll} after acknowledgement {}",
                poll.saturating_sub(3)
            )
        })
        .collect();
    assert_eq!(
        polls, expected,
        "each poll came while the one before it was transformed and the one before that \
         appended, after the one before those was acknowledged"
    );
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connectors_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    setup.add_fault_source().await;
    let refused = |new: NewConnector| {
        let connectors = setup.connectors.clone();
        async move { connectors.create(new).await.unwrap_err().to_string() }
    };
    let grant = refused(source("g", "fault-source", "g", &[("mode", "plan-grant")])).await;
    assert!(grant.contains("host key \"wasi.dir\""), "{grant}");
    let rejected = refused(source(
        "r",
        "fault-source",
        "r",
        &[("mode", "reject-config")],
    ))
    .await;
    assert!(rejected.contains("rejected on purpose"), "{rejected}");
    let transform = refused(source("t", "filter", "t", &[])).await;
    assert!(transform.contains("is a transform"), "{transform}");
    let unknown = refused(source("u", "generator", "u", &[("rate", "fast")])).await;
    assert!(unknown.contains("rate"), "{unknown}");
    let mut dlq_without_topic = source("s", "generator", "missing", &[]);
    dlq_without_topic.errors = ErrorPolicy::Dlq;
    let dlq = refused(dlq_without_topic).await;
    assert!(dlq.contains("dead-letter topic"), "{dlq}");
    assert!(setup.connectors.list().await.is_empty());
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_reaching_outside_its_grant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    setup.add_fault_source().await;
    let granted = tempfile::tempdir().unwrap();
    std::fs::write(granted.path().join("inside"), b"hello").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let dir_grant = granted.path().to_str().unwrap();
    let inside = granted.path().join("inside");
    let secret = outside.path().join("secret");
    setup
        .connectors
        .create(source(
            "inside",
            "fault-source",
            "inside",
            &[
                ("mode", "read"),
                ("path", inside.to_str().unwrap()),
                ("wasi.dir", dir_grant),
            ],
        ))
        .await
        .unwrap();
    setup
        .connectors
        .create(source(
            "outside",
            "fault-source",
            "outside",
            &[
                ("mode", "read"),
                ("path", secret.to_str().unwrap()),
                ("wasi.dir", dir_grant),
            ],
        ))
        .await
        .unwrap();
    wait_for_task(&setup.connectors, "inside", |t| t.records_out > 0).await;
    let failed = wait_for_task(&setup.connectors, "outside", |t| {
        t.state.failure().is_some()
    })
    .await;
    let reason = &failed.state.failure().unwrap().reason;
    assert!(reason.contains("cannot read"), "{reason}");
    assert!(read_all(&setup.log, "outside").await.is_empty());
    setup.close().await;
}

/// Waits until the sink connector `name` has committed `offset` on partition 0.
async fn wait_committed(connectors: &Connectors, name: &str, offset: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ConnectorOffsets::Sink(offsets) = connectors.offsets(name).await.unwrap() else {
            panic!("a sink has sink offsets");
        };
        if offsets[0].committed == Some(Offset(offset)) {
            return;
        }
        let status = connectors.get(name).await.unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{offsets:?} {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_commits_what_it_flushed_and_its_offsets_move_only_while_paused() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    let events = topic("events");
    setup
        .log
        .create_topic(events.clone(), crate::log::TopicConfig::default())
        .await
        .unwrap();
    let records: Vec<crate::log::Record> = (0..100)
        .map(|n| crate::log::Record {
            key: None,
            value: Some(Bytes::from(format!("event-{n}"))),
            headers: Vec::new(),
            timestamp: crate::log::Timestamp(1_700_000_000_000),
        })
        .collect();
    let batch = crate::log::encode(&records, crate::log::Compression::None).unwrap();
    setup
        .log
        .append(&events, PartitionId(0), batch)
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("events.txt");
    let mut export = source("export", "file-sink", "events", &[]);
    export.config = pairs(&[
        ("path", file.to_str().unwrap()),
        ("wasi.dir-rw", out.path().to_str().unwrap()),
    ]);
    setup.connectors.create(export).await.unwrap();
    wait_committed(&setup.connectors, "export", 100).await;
    let lines = || std::fs::read_to_string(&file).unwrap().lines().count();
    assert_eq!(lines(), 100);
    let group = GroupId::new("connect-export").unwrap();
    assert_eq!(
        setup
            .meta
            .committed_offset(&group, "events", 0)
            .unwrap()
            .map(|c| c.offset),
        Some(100),
        "the sink's offsets are its group's"
    );

    let running = setup
        .connectors
        .reset_offsets("export", OffsetReset::Earliest)
        .await
        .unwrap_err();
    assert!(
        matches!(running, ConnectError::NotPaused { .. }),
        "{running}"
    );
    setup.connectors.pause("export").await.unwrap();
    let ConnectorOffsets::Sink(reset) = setup
        .connectors
        .reset_offsets("export", OffsetReset::Earliest)
        .await
        .unwrap()
    else {
        panic!("a sink has sink offsets");
    };
    assert_eq!(reset[0].committed, Some(Offset(0)));
    setup.connectors.resume("export").await.unwrap();
    wait_committed(&setup.connectors, "export", 100).await;
    assert_eq!(lines(), 100, "file-sink skips what it already wrote");

    setup.connectors.delete("export").await.unwrap();
    assert_eq!(
        setup.meta.committed_offset(&group, "events", 0).unwrap(),
        None
    );
    assert!(setup.connectors.get("export").await.is_err());
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_reset_to_earliest_starts_anew() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    let generator = source(
        "readings",
        "generator",
        "readings",
        &[("rate", "100000"), ("count", "50")],
    );
    let first_id = setup.connectors.create(generator).await.unwrap().spec.id;
    wait_for_task(&setup.connectors, "readings", |t| t.records_out == 50).await;
    let latest = setup
        .connectors
        .reset_offsets("readings", OffsetReset::Latest)
        .await
        .unwrap_err();
    assert!(matches!(latest, ConnectError::NotPaused { .. }), "{latest}");
    setup.connectors.pause("readings").await.unwrap();
    let latest = setup
        .connectors
        .reset_offsets("readings", OffsetReset::Latest)
        .await
        .unwrap_err();
    assert!(
        latest.to_string().contains("only be reset to earliest"),
        "{latest}"
    );
    let ConnectorOffsets::Source(reset) = setup
        .connectors
        .reset_offsets("readings", OffsetReset::Earliest)
        .await
        .unwrap()
    else {
        panic!("a source has source offsets");
    };
    assert!(reset.is_empty(), "{reset:?}");
    let resumed = setup.connectors.resume("readings").await.unwrap();
    assert_ne!(resumed.spec.id, first_id, "old tags are not resumed from");
    wait_for_task(&setup.connectors, "readings", |t| t.records_out == 50).await;
    let seq = sequence(&setup.log, "readings").await;
    let twice: Vec<u64> = (0..50).chain(0..50).collect();
    assert_eq!(
        seq, twice,
        "the generator started again from its first reading"
    );
    setup.close().await;
}
