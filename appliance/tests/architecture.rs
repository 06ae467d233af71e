//! The module map of docs/architecture.md, enforced: a module uses only modules of layers
//! below its own, never one beside it. Test code may reach across (a link test queries the
//! hub it filled), so files named `tests.rs` and everything after a `#[cfg(test)]` are left
//! out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first. Keep in step with the map in docs/architecture.md.
const LAYERS: &[&[&str]] = &[
    &["meta", "runtime"],
    &["log", "security"],
    &["plugin", "group"],
    &["transform"],
    &["pipeline", "connect", "link", "query"],
    &["export"],
    &["api"],
    &["kafka", "console"],
    &["config"],
    &["app"],
    &["cli"],
    &["main"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("a readable source folder") {
            rust_files(&entry.expect("a readable entry").path(), files);
        }
    } else if path.extension().is_some_and(|e| e == "rs")
        && path.file_name().is_some_and(|n| n != "tests.rs")
    {
        files.push(path.to_owned());
    }
}

/// The modules of this crate that `source` names (`crate::x` or, in main.rs, `appliance::x`),
/// up to its tests.
fn used_modules(source: &str) -> Vec<String> {
    let code = source.split("\n#[cfg(test)]").next().unwrap_or_default();
    let mut used = Vec::new();
    for prefix in ["crate::", "appliance::"] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.push(name);
            }
        }
    }
    used
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        if module == "lib" || module == "build" {
            continue;
        }
        let own = layer_of(&module).unwrap_or_else(|| {
            panic!("module {module} is not on the map: give it a layer in LAYERS and docs/architecture.md")
        });
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            for used in used_modules(&source) {
                let Some(layer) = layer_of(&used) else {
                    continue;
                };
                if used != module && layer >= own {
                    violations
                        .entry(format!(
                            "{} uses {used}",
                            file.strip_prefix(&src).unwrap().display()
                        ))
                        .or_insert(());
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the direction of docs/architecture.md:\n{}",
        violations.into_keys().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_reader_finds_crate_paths_and_skips_tests() {
    let source = "use crate::log::Log;\nfn f() { crate::meta::x(); my_crate::nope(); }\n\
                  #[cfg(test)]\nmod tests { use crate::cli; }";
    assert_eq!(used_modules(source), ["log", "meta"]);
}
