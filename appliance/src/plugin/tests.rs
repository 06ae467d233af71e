use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::meta::Meta;

fn test_plugin(crate_name: &str) -> Vec<u8> {
    let path = Path::new(env!("APPLIANCE_PLUGINS_DIR")).join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn open(dir: &Path) -> Plugins {
    let meta = Meta::open(&dir.join("meta")).unwrap();
    Plugins::open(dir, meta, CancellationToken::new()).unwrap()
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
        value: Some(value.as_bytes().to_vec()),
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
        .unwrap();
    let out = instance
        .process(&info(), &[record(7, r#"{"t":1}"#), record(8, r#"{"t":9}"#)])
        .unwrap()
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].offset, 7);
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("plugin-cache"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1, "one compiled component in the cache");
    let rejected = plugins
        .instantiate_transform(
            &filter,
            &config(&[("colour", "red")]),
            Limits::default(),
            "p/1",
        )
        .unwrap_err();
    assert!(
        rejected
            .to_string()
            .contains("rejected its configuration: unknown key(s) colour"),
        "{rejected}"
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
        .unwrap();
    let out = instance
        .process(&info(), &[record(0, r#"{"s":"abc"}"#)])
        .unwrap()
        .unwrap();
    assert_eq!(out[0].value.as_deref(), Some(&br#"{"s":"ABC"}"#[..]));
    let counters = plugins.counters();
    assert_eq!(counters[0].1.snapshot(), [("uppercased".to_owned(), 1)]);
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
        .unwrap();
    tokio::task::spawn_blocking(move || instance.process(&info(), &[record(0, "x")]).unwrap_err())
        .await
        .unwrap()
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
    let memory = fault("allocate", limits).await.to_string();
    assert!(memory.contains("memory limit of 16 MiB"), "{memory}");
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
        .unwrap();
    let error = plugins
        .instantiate_transform(
            &filter,
            &config(&[("wasi.net", "x")]),
            Limits::default(),
            "p/0",
        )
        .unwrap_err();
    assert!(error.to_string().contains("unknown capability"), "{error}");
    let error = plugins
        .instantiate_transform(
            &filter,
            &config(&[("timeout-ms", "0")]),
            Limits::default(),
            "p/0",
        )
        .unwrap_err();
    assert!(error.to_string().contains("timeout-ms"), "{error}");
}
