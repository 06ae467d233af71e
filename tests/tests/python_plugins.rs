//! Plugins written in Python with the SDK in sdk/python, built from source with componentize-py
//! (installed from PyPI into tests/python/.venv) as docs/plugin-guide.md does, added over
//! gRPC to a real `appliance run`, and checked record by record: the transform template in a
//! pipeline, the source example in a connector; and Python plugins that raise, loop forever or
//! hoard memory fail only their own pipeline, with the reason. Also `appliance plugin new` in
//! every language (Rust, Python, JavaScript) and kind: the printed commands build projects
//! that load.

use std::time::Duration;

use appliance_e2e::plugins::{FaultTest, add_plugin, faults_fail_only_their_own_pipeline, names};
use appliance_e2e::python::build_python_plugin;
use appliance_e2e::{Daemon, cli_ok, fetch_topic, wait_pipeline_caught_up};
use appliance_proto::v1 as pb;

const WAIT: Duration = Duration::from_secs(120);

/// Topic `names` and pipeline `shout` from it to `loud` through `plugin` on field `name`.
fn create_shout(daemon: &Daemon, root: &std::path::Path, plugin: &str) -> anyhow::Result<()> {
    cli_ok(daemon, root, &["topic", "create", "names"], b"")?;
    let transform = format!("{plugin}:field=name");
    cli_ok(
        daemon,
        root,
        &[
            "pipeline",
            "create",
            "shout",
            "--from",
            "names",
            "--to",
            "loud",
            "--transform",
            &transform,
        ],
        b"",
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_template_transforms_every_record_in_a_pipeline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let wasm = root.join("template-python.wasm");
    build_python_plugin("plugins/template-python", "transform", &wasm)?;
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    let added = add_plugin(&channel, "upper-py", &wasm).await?;
    assert_eq!(added.kind, pb::PluginKind::Transform as i32);
    create_shout(&daemon, root, "upper-py")?;
    const RECORDS: usize = 500;
    cli_ok(
        &daemon,
        root,
        &["produce", "names"],
        names(0..RECORDS).as_bytes(),
    )?;
    wait_pipeline_caught_up(&channel, "shout", 1).await?;
    let out = fetch_topic(&channel, "loud").await?;
    assert_eq!(out.len(), RECORDS);
    for (i, record) in out.iter().enumerate() {
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        assert_eq!(
            value,
            serde_json::json!({"name": format!("SENSOR-{i}"), "i": i}),
            "record {i}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_source_example_produces_every_number_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let wasm = root.join("source-python.wasm");
    build_python_plugin("plugins/source-python", "source", &wasm)?;
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    let added = add_plugin(&channel, "numbers-py", &wasm).await?;
    assert_eq!(added.kind, pb::PluginKind::Source as i32);
    const COUNT: u64 = 300;
    cli_ok(
        &daemon,
        root,
        &[
            "connector",
            "create",
            "numbers",
            "--plugin",
            "numbers-py",
            "--topic",
            "numbers",
            "--config",
            &format!("count={COUNT}"),
            "--config",
            "keys=3",
        ],
        b"",
    )?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let records = loop {
        // The topic is made by the connector's first append.
        let records: Vec<pb::ConsumedRecord> =
            fetch_topic(&channel, "numbers").await.unwrap_or_default();
        if records.len() as u64 >= COUNT {
            break records;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} of {COUNT} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut numbers: Vec<u64> = records
        .iter()
        .map(|r| {
            let value: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("JSON");
            let n = value["n"].as_u64().expect("a number");
            assert_eq!(
                r.key.as_deref(),
                Some(format!("key-{}", n % 3).as_bytes()),
                "the key of {n}"
            );
            n
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=COUNT).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn python_plugins_that_raise_loop_or_hoard_fail_only_their_own_pipeline() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let faults = root.join("faults-python.wasm");
    build_python_plugin("tests/plugins/faults-python", "transform", &faults)?;
    let template = root.join("template-python.wasm");
    build_python_plugin("plugins/template-python", "transform", &template)?;
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    add_plugin(&channel, "faulty-py", &faults).await?;
    add_plugin(&channel, "upper-py", &template).await?;
    let test = FaultTest {
        faulty: "faulty-py",
        fail_mode: "raise",
        told_to_fail: "faults-python was told to fail",
        upper: "upper-py",
    };
    faults_fail_only_their_own_pipeline(&daemon, &channel, root, &test).await?;

    // A configuration the plugin rejects, and a record its `apply` cannot read.
    let rejected = daemon.cli(
        root,
        &[
            "pipeline",
            "create",
            "bare",
            "--from",
            "in",
            "--to",
            "bare-out",
            "--transform",
            "upper-py",
        ],
        b"",
    )?;
    let said = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        !rejected.status.success() && said.contains("`field` is required"),
        "{said}"
    );
    cli_ok(&daemon, root, &["topic", "create", "mixed"], b"")?;
    cli_ok(
        &daemon,
        root,
        &[
            "pipeline",
            "create",
            "picky",
            "--from",
            "mixed",
            "--to",
            "picky-out",
            "--transform",
            "upper-py:field=name",
            "--errors",
            "dlq",
            "--dlq-topic",
            "picky-dead",
        ],
        b"",
    )?;
    let mixed = format!("{}not json\n{}", names(0..2), names(0..1));
    cli_ok(&daemon, root, &["produce", "mixed"], mixed.as_bytes())?;
    wait_pipeline_caught_up(&channel, "picky", 1).await?;
    assert_eq!(fetch_topic(&channel, "picky-out").await?.len(), 3);
    let dead = fetch_topic(&channel, "picky-dead").await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&b"not json"[..]));
    Ok(())
}

/// The Python plugins' own unit tests, natively under plain CPython, as the guide runs them.
#[test]
fn the_python_plugins_unit_tests_pass_natively() -> anyhow::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    for plugin in ["plugins/template-python", "plugins/source-python"] {
        let output = std::process::Command::new("python3")
            .current_dir(repo.join(plugin))
            .env("PYTHONPATH", repo.join("sdk/python"))
            .args(["-m", "unittest", "-v"])
            .output()?;
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && said.contains("OK"),
            "{plugin}: {said}"
        );
    }
    Ok(())
}

fn kind_of(kind: &str) -> pb::PluginKind {
    match kind {
        "source" => pb::PluginKind::Source,
        "sink" => pb::PluginKind::Sink,
        _ => pb::PluginKind::Transform,
    }
}

/// `appliance plugin new NAME --lang LANG --kind KIND --dir PROJECTS`: what it printed, and
/// the project's directory.
fn plugin_new(
    root: &std::path::Path,
    projects: &std::path::Path,
    name: &str,
    lang: &str,
    kind: &str,
) -> anyhow::Result<(String, std::path::PathBuf)> {
    let dir = projects.to_str().expect("a UTF-8 path");
    let said = appliance_e2e::run_to_end(
        root,
        &[
            "plugin", "new", name, "--lang", lang, "--kind", kind, "--dir", dir,
        ],
    )?;
    Ok((String::from_utf8(said.stdout)?, projects.join(name)))
}

/// The command of `appliance plugin new`'s instructions that starts with `program`, as
/// arguments (the project's venv replaced by the tests' one for componentize-py).
fn printed_command<'s>(said: &'s str, program: &str) -> Vec<&'s str> {
    let line = said
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(program))
        .unwrap_or_else(|| panic!("no `{program}` command in:\n{said}"));
    line.split('#')
        .next()
        .unwrap_or(line)
        .split_whitespace()
        .skip(1)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_new_writes_projects_in_every_language_that_build_and_load() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let channel = daemon.channel().await?;
    let projects = root.join("projects");
    std::fs::create_dir(&projects)?;
    for (name, kind) in [
        ("shout-py", "transform"),
        ("numbers-py", "source"),
        ("log-py", "sink"),
    ] {
        let (said, project) = plugin_new(root, &projects, name, "python", kind)?;
        let unittest = std::process::Command::new("python3")
            .current_dir(&project)
            .args(printed_command(&said, "python3 -m unittest"))
            .output()?;
        assert!(
            unittest.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&unittest.stderr)
        );
        appliance_e2e::python::componentize_py(
            &project,
            &printed_command(&said, ".venv/bin/componentize-py"),
        )?;
        let add = printed_command(&said, "appliance plugin add");
        let wasm = project.join(add[add.len() - 1]);
        let added = add_plugin(&channel, name, &wasm).await?;
        assert_eq!(added.kind, kind_of(kind) as i32, "{name}");
    }
    create_shout(&daemon, root, "shout-py")?;
    cli_ok(&daemon, root, &["produce", "names"], names(0..3).as_bytes())?;
    wait_pipeline_caught_up(&channel, "shout", 1).await?;
    let loud = fetch_topic(&channel, "loud").await?;
    assert_eq!(
        loud.iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect::<Vec<_>>(),
        (0..3)
            .map(|i| format!(r#"{{"name":"SENSOR-{i}","i":{i}}}"#))
            .collect::<Vec<_>>()
    );

    // JavaScript: componentize-js from the tests' node_modules instead of the project's.
    for (name, kind) in [
        ("shout-js", "transform"),
        ("numbers-js", "source"),
        ("log-js", "sink"),
    ] {
        let (said, project) = plugin_new(root, &projects, name, "js", kind)?;
        let tested = std::process::Command::new("node")
            .current_dir(&project)
            .args(printed_command(&said, "node --test"))
            .output()?;
        assert!(
            tested.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&tested.stdout)
        );
        let build = printed_command(&said, "npx componentize-js");
        appliance_e2e::node::componentize_js(&project, &build[1..])?;
        let wasm = project.join(build[build.len() - 1]);
        let added = add_plugin(&channel, name, &wasm).await?;
        assert_eq!(added.kind, kind_of(kind) as i32, "{name}");
    }

    // Rust: built with cargo outside this workspace, against the SDK copy each was given,
    // with the commands printed (one target directory, so dependencies build once).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from)
        .join("plugin-new");
    for (name, kind) in [
        ("shout-rs", "transform"),
        ("numbers-rs", "source"),
        ("log-rs", "sink"),
    ] {
        let (said, project) = plugin_new(root, &projects, name, "rust", kind)?;
        for command in ["cargo test", "cargo build"] {
            let run = std::process::Command::new("cargo")
                .current_dir(&project)
                .env("CARGO_TARGET_DIR", &target)
                .args(printed_command(&said, command))
                .output()?;
            assert!(
                run.status.success(),
                "{name}: {command}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
        let wasm = target.join(format!(
            "wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ));
        let added = add_plugin(&channel, name, &wasm).await?;
        assert_eq!(added.kind, kind_of(kind) as i32, "{name}");
    }
    Ok(())
}
