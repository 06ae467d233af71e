//! JavaScript clients the end-to-end tests drive (kafkajs): `tests/js/node_modules` from
//! `tests/js/package-lock.json`, installed on first use (`.ci/run` installs it beforehand).

use std::path::{Path, PathBuf};
use std::process::Command;

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
