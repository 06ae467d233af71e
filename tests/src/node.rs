//! JavaScript clients the end-to-end tests drive (kafkajs): `tests/js/node_modules` from
//! `tests/js/package-lock.json`, installed on first use (`.ci/run` installs it beforehand);
//! and componentize-js, which builds the JavaScript plugins from source.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// `node tests/js/SCRIPT`, with the packages installed (by `setup.sh`).
pub fn script(script: &str) -> anyhow::Result<Command> {
    let dir = js_dir();
    crate::set_up(&dir, ".setup.lock", "node and npm, and the npm registry")?;
    let mut command = Command::new("node");
    command.arg(dir.join(script));
    Ok(command)
}

/// Lays out the JavaScript plugin in `source` (relative to the repository) as
/// `appliance plugin new` does, in `project`: its files, the SDK in `appliance_sdk/` and the
/// WIT in `wit/`.
pub fn lay_out_js_plugin(source: &str, project: &Path) -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate is in the repository")?;
    for (from, to) in [
        (repo.join(source), project.to_owned()),
        (
            repo.join("sdk/js/appliance_sdk"),
            project.join("appliance_sdk"),
        ),
        (repo.join("sdk/wit"), project.join("wit")),
    ] {
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Runs componentize-js (from tests/js/node_modules) in `project` with `args`.
pub fn componentize_js(project: &Path, args: &[&str]) -> anyhow::Result<()> {
    let dir = js_dir();
    crate::set_up(&dir, ".setup.lock", "node and npm, and the npm registry")?;
    let componentize = dir.join("node_modules/.bin/componentize-js");
    let output = Command::new(&componentize)
        .current_dir(project)
        .args(args)
        .output()
        .with_context(|| format!("running {}", componentize.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "componentize-js {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The command that builds a JavaScript plugin for `world` into `out` (as `plugin new`
/// prints it, without the program's name).
pub fn componentize_js_args<'a>(world: &'a str, out: &'a str) -> [&'a str; 11] {
    [
        "app.js",
        "--wit",
        "wit",
        "--world-name",
        world,
        "-d",
        "http",
        "-d",
        "fetch-event",
        "-o",
        out,
    ]
}
