use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::meta::Meta;
use crate::security::secrets::SecretProviders;

fn test_plugin(crate_name: &str) -> Vec<u8> {
    let path = Path::new(env!("APPLIANCE_PLUGINS_DIR")).join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn open(dir: &Path) -> Plugins {
    let meta = Meta::open(&dir.join("meta")).unwrap();
    Plugins::open(
        dir,
        meta,
        SecretProviders::default(),
        CancellationToken::new(),
    )
    .unwrap()
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn info() -> BatchInfo {
    BatchInfo {
        topic: "in".into(),
        partition: 0,
    }
}

fn record(offset: i64, value: &str) -> Record {
    Record {
        key: None,
        value: Some(bytes::Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
        timestamp: 0,
        offset,
        topic: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_builtin_filter_runs_and_is_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = open(dir.path());
    let filter = plugins.get("filter").await.unwrap();
    assert!(filter.info.builtin);
    let mut instance = plugins
        .instantiate_transform(
            &filter,
            &config(&[("field", "t"), ("greater-than", "5")]),
            Limits::default(),
            "p/0",
        )
        .await
        .unwrap();
    let out = instance
        .process(&info(), &[record(7, r#"{"t":1}"#), record(8, r#"{"t":9}"#)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].offset, 7);
    let cache = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        std::fs::read_dir(dir.path().join("plugin-cache"))
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (entry.path(), entry.metadata().unwrap().modified().unwrap())
            })
            .collect()
    };
    let compiled = cache();
    assert_eq!(compiled.len(), 1, "one compiled component in the cache");
    let rejected = plugins
        .instantiate_transform(
            &filter,
            &config(&[("colour", "red")]),
            Limits::default(),
            "p/1",
        )
        .await
        .unwrap_err();
    assert!(
        rejected
            .to_string()
            .contains("rejected its configuration: unknown key(s) colour"),
        "{rejected}"
    );
    drop((instance, filter, plugins));
    let stale = ["0123-00000000000000ff.cwasm", ".tmpAbC123"];
    for name in stale {
        std::fs::write(dir.path().join("plugin-cache").join(name), b"stale").unwrap();
    }
    let restarted = open(dir.path());
    restarted.get("filter").await.unwrap();
    assert_eq!(
        cache(),
        compiled,
        "a restart loads the compiled code, not compiling again, and deletes what another \
         engine compiled or a killed write left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn added_plugins_survive_a_restart_and_bad_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let plugins = open(dir.path());
        let info = plugins
            .add("upper", test_plugin("plugin_template"))
            .await
            .unwrap();
        assert_eq!(info.kind, PluginKind::Transform);
        let error = plugins
            .add("junk", b"\0asm not really".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(error, PluginError::InvalidComponent { .. }),
            "{error}"
        );
        let error = plugins
            .add("filter", test_plugin("plugin_template"))
            .await
            .unwrap_err();
        assert!(matches!(error, PluginError::BuiltIn { .. }), "{error}");
        let error = plugins.add("Bad Name", Vec::new()).await.unwrap_err();
        assert!(matches!(error, PluginError::InvalidName { .. }), "{error}");
    }
    let plugins = open(dir.path());
    let names: Vec<String> = plugins
        .list()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(names.contains(&"upper".to_owned()) && names.contains(&"filter".to_owned()));
    let upper = plugins.get("upper").await.unwrap();
    let mut instance = plugins
        .instantiate_transform(&upper, &config(&[("field", "s")]), Limits::default(), "p/0")
        .await
        .unwrap();
    let out = instance
        .process(&info(), &[record(0, r#"{"s":"abc"}"#)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out[0].value.as_deref(), Some(&br#"{"s":"ABC"}"#[..]));
    let counters = plugins.counters();
    assert_eq!(counters[0].1.snapshot(), [("uppercased".to_owned(), 1)]);
    let generator = plugins.get("generator").await.unwrap();
    assert_eq!(
        generator.info.kind,
        PluginKind::Source,
        "the built-in source is one"
    );
    let wrong = plugins
        .instantiate_transform(&generator, &[], Limits::default(), "p/0")
        .await
        .unwrap_err();
    assert!(matches!(wrong, PluginError::WrongKind { .. }), "{wrong}");
    plugins.delete("upper").await.unwrap();
    assert!(matches!(
        plugins.get("nope").await.unwrap_err(),
        PluginError::NotFound { .. }
    ));
}

async fn fault(mode: &str, limits: Limits) -> PluginError {
    let dir = tempfile::tempdir().unwrap();
    let plugins = open(dir.path());
    plugins
        .add("faulty", test_plugin("plugin_fault_injector"))
        .await
        .unwrap();
    let loaded = plugins.get("faulty").await.unwrap();
    let mut instance = plugins
        .instantiate_transform(&loaded, &config(&[("mode", mode)]), limits, "p/0")
        .await
        .unwrap();
    instance
        .process(&info(), &[record(0, "x")])
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn traps_loops_and_runaway_memory_end_the_call_with_a_reason() {
    let limits = Limits {
        max_memory_mb: 16,
        timeout_ms: 200,
    };
    let trap = fault("trap", limits).await.to_string();
    assert!(
        trap.contains("\"faulty\" trapped") && trap.contains("trapping on purpose"),
        "{trap}"
    );
    let timeout = fault("loop", limits).await.to_string();
    assert!(timeout.contains("limit of 200 ms"), "{timeout}");
    let sleep = fault("sleep", limits).await.to_string();
    assert!(sleep.contains("limit of 200 ms"), "{sleep}");
    let flood = fault(
        "flood",
        // Emitting 80 MiB takes longer than 200 ms on a loaded machine; the flood is finite,
        // so a generous time limit lets the output limit be the one that answers.
        Limits {
            max_memory_mb: 512,
            timeout_ms: 30_000,
        },
    )
    .await
    .to_string();
    assert!(flood.contains("emitted more than 64 MiB"), "{flood}");
    let memory = fault("allocate", limits).await.to_string();
    assert!(memory.contains("memory limit of 16 MiB"), "{memory}");
    let garbage = fault("garbage", limits).await.to_string();
    assert!(
        garbage.contains("broke the plugin contract")
            && garbage.contains("its encoded output is malformed at byte 4"),
        "{garbage}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_and_limits_are_host_keys_the_plugin_never_sees() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = open(dir.path());
    let filter = plugins.get("filter").await.unwrap();
    let keys = config(&[
        ("field", "t"),
        ("timeout-ms", "50"),
        ("max-memory-mb", "8"),
        ("wasi.env.ZONE", "a"),
    ]);
    plugins
        .instantiate_transform(&filter, &keys, Limits::default(), "p/0")
        .await
        .unwrap();
    for (pair, expected) in [
        (("wasi.gpu", "x"), "unknown capability"),
        (("timeout-ms", "0"), "timeout-ms"),
        (
            ("batch-abi", "fast"),
            "expected auto (the default) or typed",
        ),
    ] {
        let error = plugins
            .instantiate_transform(&filter, &config(&[pair]), Limits::default(), "p/0")
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{pair:?}: {error}");
    }
}

/// Every built-in transform, compiled to WebAssembly and run in the sandbox, does its job on
/// one record (its semantics in detail are unit-tested natively in its own crate).
#[tokio::test(flavor = "multi_thread")]
async fn every_builtin_runs_in_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = open(dir.path());
    let value = r#"{"id":7,"user":{"name":"ann","card":"1234"},"ts":86400000,"temp":"21.5"}"#;
    let input = Record {
        key: Some(bytes::Bytes::from_static(br#"{"k":1}"#)),
        value: Some(bytes::Bytes::copy_from_slice(value.as_bytes())),
        headers: vec![Header {
            key: "trace".into(),
            value: bytes::Bytes::from_static(b"abc"),
        }],
        timestamp: 1_700_000_000_000,
        offset: 42,
        topic: None,
    };
    let json = |r: &Record| -> serde_json::Value {
        serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()
    };
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        Box<dyn Fn(&Record)>,
    );
    let cases: Vec<Case> = vec![
        (
            "filter",
            vec![("field", "id"), ("equals", "8")],
            Box::new(|r| assert_eq!(r.offset, 42)),
        ),
        (
            "insert-field",
            vec![
                ("offset.field", "meta.offset"),
                ("static.field", "site"),
                ("static.value", "x"),
            ],
            Box::new(move |r| {
                assert_eq!(json(r)["meta"]["offset"], 42);
                assert_eq!(json(r)["site"], "x");
            }),
        ),
        (
            "replace-field",
            vec![("exclude", "user"), ("renames", "id:sensor")],
            Box::new(move |r| {
                assert_eq!(json(r)["sensor"], 7);
                assert!(json(r).get("user").is_none());
            }),
        ),
        (
            "mask-field",
            vec![("fields", "user.card"), ("replacement", "****")],
            Box::new(move |r| assert_eq!(json(r)["user"]["card"], "****")),
        ),
        (
            "value-to-key",
            vec![("fields", "id")],
            Box::new(|r| assert_eq!(r.key.as_deref(), Some(&br#"{"id":7}"#[..]))),
        ),
        (
            "extract-field",
            vec![("field", "user.name")],
            Box::new(|r| assert_eq!(r.value.as_deref(), Some(&br#""ann""#[..]))),
        ),
        (
            "hoist-field",
            vec![("field", "payload")],
            Box::new(move |r| assert_eq!(json(r)["payload"]["id"], 7)),
        ),
        (
            "flatten",
            vec![("delimiter", "_")],
            Box::new(move |r| assert_eq!(json(r)["user_name"], "ann")),
        ),
        (
            "cast",
            vec![("spec", "temp:float64|id:string")],
            Box::new(move |r| {
                assert_eq!(json(r)["temp"], 21.5);
                assert_eq!(json(r)["id"], "7");
            }),
        ),
        (
            "timestamp-converter",
            vec![
                ("field", "ts"),
                ("target.type", "string"),
                ("format", "yyyy-MM-dd"),
            ],
            Box::new(move |r| assert_eq!(json(r)["ts"], "1970-01-02")),
        ),
        (
            "regex-router",
            vec![("regex", "(.*)"), ("replacement", "$1-routed")],
            Box::new(|r| assert_eq!(r.topic.as_deref(), Some("in-routed"))),
        ),
        (
            "timestamp-router",
            vec![],
            Box::new(|r| assert_eq!(r.topic.as_deref(), Some("in-20231114"))),
        ),
        (
            "insert-header",
            vec![("header", "origin"), ("value.literal", "edge-1")],
            Box::new(|r| {
                assert!(
                    r.headers
                        .iter()
                        .any(|h| h.key == "origin" && h.value == b"edge-1"[..])
                )
            }),
        ),
        (
            "drop-headers",
            vec![("headers", "trace")],
            Box::new(|r| assert!(r.headers.is_empty())),
        ),
        (
            "header-from",
            vec![
                ("fields", "user.name"),
                ("headers", "who"),
                ("operation", "copy"),
            ],
            Box::new(|r| {
                assert!(
                    r.headers
                        .iter()
                        .any(|h| h.key == "who" && h.value == b"ann"[..])
                )
            }),
        ),
    ];
    let builtins: Vec<String> = plugins
        .list()
        .unwrap()
        .into_iter()
        .filter(|p| p.builtin && p.kind == PluginKind::Transform)
        .map(|p| p.name)
        .collect();
    assert_eq!(
        builtins.len(),
        cases.len(),
        "a case for every built-in transform: {builtins:?}"
    );
    for (name, pairs, check) in cases {
        let loaded = plugins.get(name).await.unwrap();
        // Batches cross encoded in one buffer by default, or as typed records: the same
        // output either way.
        let mut outputs = Vec::new();
        for abi in ["auto", "typed"] {
            let pairs = [&pairs[..], &[("batch-abi", abi)]].concat();
            let mut instance = plugins
                .instantiate_transform(&loaded, &config(&pairs), Limits::default(), "smoke")
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let out = instance
                .process(&info(), std::slice::from_ref(&input))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            if name == "filter" {
                assert_eq!(out.len(), 1, "filter keeps what does not match");
            }
            check(&out[0]);
            outputs.push(out);
        }
        assert_eq!(outputs[0], outputs[1], "{name}: encoded and typed outputs");
    }
}

/// Outbound connections need a `wasi.net` grant naming the address; nothing else gets out.
#[tokio::test(flavor = "multi_thread")]
async fn network_access_is_granted_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = open(dir.path());
    plugins
        .add("faulty", test_plugin("plugin_fault_injector"))
        .await
        .unwrap();
    let loaded = plugins.get("faulty").await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let granted = listener.local_addr().unwrap().to_string();
    let connect_to = |addr: &str, grant: Option<&str>| {
        let mut pairs = vec![("mode", "connect"), ("addr", addr)];
        pairs.extend(grant.map(|g| ("wasi.net", g)));
        config(&pairs)
    };
    let outcome = async |pairs: Vec<(String, String)>| {
        let mut instance = plugins
            .instantiate_transform(&loaded, &pairs, Limits::default(), "net")
            .await
            .unwrap();
        instance.process(&info(), &[record(0, "x")]).await.unwrap()
    };
    let allowed = outcome(connect_to(&granted, Some(&granted))).await;
    assert!(allowed.is_ok(), "{allowed:?}");
    let denied = outcome(connect_to(&granted, None)).await.unwrap_err();
    assert!(denied.message.contains("cannot connect"), "{denied:?}");
    let elsewhere = other.local_addr().unwrap().to_string();
    let outside = outcome(connect_to(&elsewhere, Some(&granted)))
        .await
        .unwrap_err();
    assert!(outside.message.contains("cannot connect"), "{outside:?}");
    let bad = plugins
        .instantiate_transform(
            &loaded,
            &connect_to(&granted, Some("no-port")),
            Limits::default(),
            "net",
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("wasi.net"), "{bad}");
}

#[tokio::test]
async fn keys_a_plugin_declares_secret_are_refused_as_literals() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = open(dir.path());
    let mqtt = plugins.get("mqtt-source").await.unwrap();
    assert_eq!(mqtt.secret_keys, ["password"]);
    let literal = config(&[("url", "mqtt://127.0.0.1:1883"), ("password", "hunter22")]);
    let refused = plugins
        .plan(&mqtt, &literal, Limits::default(), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, PluginError::Secret(SecretError::Literal { key, .. }) if key == "password"),
        "{refused}"
    );
    let filter = plugins.get("filter").await.unwrap();
    assert!(filter.secret_keys.is_empty(), "a plugin declaring none");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stateful_plugin_keeps_its_store_and_a_new_instance_restores_it_from_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = open(dir.path());
    plugins
        .add("counter", test_plugin("plugin_running_count"))
        .await
        .unwrap();
    let counter = plugins.get("counter").await.unwrap();
    assert!(counter.uses_state());
    assert!(!plugins.get("filter").await.unwrap().uses_state());
    let keyed = |offset: i64, key: &str| Record {
        key: Some(bytes::Bytes::copy_from_slice(key.as_bytes())),
        ..record(offset, "{}")
    };
    let counts = |out: Vec<Record>| -> Vec<String> {
        out.iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    };
    let mut first = plugins
        .instantiate_transform(&counter, &[], Limits::default(), "p/0")
        .await
        .unwrap();
    let out = first
        .process(&info(), &[keyed(0, "a"), keyed(1, "b"), keyed(2, "a")])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        counts(out),
        [
            r#"{"count":1,"key":"a"}"#,
            r#"{"count":1,"key":"b"}"#,
            r#"{"count":2,"key":"a"}"#
        ]
    );
    let changes = first.state().take_changes();
    assert_eq!(changes.len(), 3, "a, b and the commit entry: {changes:?}");
    let mut second = plugins
        .instantiate_transform(&counter, &[], Limits::default(), "p/0")
        .await
        .unwrap();
    for (key, value) in &changes {
        second.state().restore(key, value.as_deref()).unwrap();
    }
    let out = second
        .process(&info(), &[keyed(3, "a")])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts(out), [r#"{"count":3,"key":"a"}"#]);
}
