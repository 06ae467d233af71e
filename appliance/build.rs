//! Builds every plugin crate in `plugins/` to a `wasm32-wasip2` component and generates the
//! table of built-in plugins that the binary embeds (`builtin_plugins.rs` in OUT_DIR).
//!
//! The plugins are built by a nested cargo with its own target directory next to this
//! profile's (`<target>/wasm-plugins`), because the outer cargo holds the lock of its own. The
//! components are also copied to `<target>/<profile>/plugins/<crate>.wasm`, where the
//! end-to-end tests and benches find the plugins that are not built in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const WASM_TARGET: &str = "wasm32-wasip2";
const PLUGIN_PROFILE: &str = "plugin";

struct PluginCrate {
    package: String,
    builtin: Option<String>,
    /// The world it exports (`transform`, `source` or `sink`), from the same metadata.
    kind: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("the appliance crate is not inside the workspace")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("plugins").display()
    );
    // Libraries plugins share (plugin-libs/) and the SDK are built into them too.
    for shared in ["sdk", "plugin-libs"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(shared).display()
        );
    }

    let plugins = plugin_crates(&workspace.join("plugins"))?;
    let profile_dir = profile_dir(&out_dir)?;
    let wasm_target_dir = profile_dir
        .parent()
        .ok_or("no target directory above the profile directory")?
        .join("wasm-plugins");
    build(workspace, &wasm_target_dir, &plugins)?;

    let built = wasm_target_dir.join(WASM_TARGET).join(PLUGIN_PROFILE);
    let published = profile_dir.join("plugins");
    fs::create_dir_all(&published)?;
    println!(
        "cargo:rustc-env=APPLIANCE_PLUGINS_DIR={}",
        published.display()
    );
    let mut table = String::from("&[\n");
    for plugin in &plugins {
        let file = format!("{}.wasm", plugin.package.replace('-', "_"));
        let component = built.join(&file);
        fs::copy(&component, published.join(&file))?;
        if let Some(name) = &plugin.builtin {
            let kind = match plugin.kind.as_str() {
                "transform" => "Transform",
                "source" => "Source",
                "sink" => "Sink",
                other => {
                    return Err(format!("{}: unknown plugin kind {other:?}", plugin.package).into());
                }
            };
            table.push_str(&format!(
                "    ({name:?}, PluginKind::{kind}, include_bytes!({:?})),\n",
                component.display().to_string()
            ));
        }
    }
    table.push_str("]\n");
    fs::write(out_dir.join("builtin_plugins.rs"), table)?;
    Ok(())
}

/// Every crate under `plugins/`, with the built-in name and kind its manifest declares
/// (`[package.metadata.appliance] builtin = "NAME"`, `kind = "source"`; transform by
/// default), sorted for a stable table.
fn plugin_crates(dir: &Path) -> Result<Vec<PluginCrate>, Box<dyn std::error::Error>> {
    let mut crates = Vec::new();
    for entry in fs::read_dir(dir)? {
        let manifest = entry?.path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let parsed: toml::Table = fs::read_to_string(&manifest)?.parse()?;
        let package = parsed
            .get("package")
            .and_then(|p| p.as_table())
            .ok_or_else(|| format!("{} has no [package]", manifest.display()))?;
        let name = package
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| format!("{} has no package name", manifest.display()))?;
        let metadata = package.get("metadata").and_then(|m| m.get("appliance"));
        let field = |key: &str| {
            metadata
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        crates.push(PluginCrate {
            package: name.to_owned(),
            builtin: field("builtin"),
            kind: field("kind").unwrap_or_else(|| "transform".to_owned()),
        });
    }
    crates.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(crates)
}

/// `<target>/<profile>` (or `<target>/<triple>/<profile>`): the directory above `build/`.
fn profile_dir(out_dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "OUT_DIR {} is not under a build/ directory",
                out_dir.display()
            )
            .into()
        })
}

fn build(
    workspace: &Path,
    target_dir: &Path,
    plugins: &[PluginCrate],
) -> Result<(), Box<dyn std::error::Error>> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "--locked",
            "--target",
            WASM_TARGET,
            "--profile",
            PLUGIN_PROFILE,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    for plugin in plugins {
        command.args(["-p", &plugin.package]);
    }
    // The outer build's flags and wrappers (clippy's, for one) are for the host target.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    let status = command.status()?;
    if !status.success() {
        return Err(format!(
            "building the plugins in plugins/ for {WASM_TARGET} failed ({status}); if the target \
             is missing, run `rustup target add {WASM_TARGET}`"
        )
        .into());
    }
    Ok(())
}
