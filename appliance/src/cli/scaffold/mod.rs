//! `appliance plugin new`: writes a ready-to-build plugin project in a new directory, for
//! Rust or Python, with a copy of the SDK and of the WIT it builds against (so it builds
//! outside this repository, with nothing but crates.io or PyPI), and prints the commands
//! that build, test and load it. The templates are the repository's own examples, embedded
//! at compile time, so what `plugin new` writes is what the tests build.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::Failure;
use crate::plugin::MAX_NAME_LEN;

#[derive(Debug, Args)]
pub struct NewPlugin {
    name: String,
    #[arg(long, value_enum)]
    lang: Language,
    #[arg(long, value_enum, default_value = "transform")]
    kind: Kind,
    /// The directory the project's directory is made in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// `appliance plugin new`.
pub fn run(args: NewPlugin) -> Result<(), Failure> {
    let said = new_project(&args.name, args.lang, args.kind, &args.dir).map_err(Failure::Usage)?;
    print!("{said}");
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Language {
    Rust,
    Python,
    Js,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Transform,
    Source,
    Sink,
}

impl Kind {
    fn world(self) -> &'static str {
        match self {
            Self::Transform => "transform",
            Self::Source => "source",
            Self::Sink => "sink",
        }
    }
}

/// The componentize-py release the Python SDK is built and tested with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The componentize-js release the JavaScript SDK is built and tested with, and the
/// preview2-shim it needs at run time (it declares it for development only).
const COMPONENTIZE_JS: &str =
    "@bytecodealliance/componentize-js@0.23.0 @bytecodealliance/preview2-shim@0.25.0";

const WIT: &str = include_str!("../../../../sdk/wit/plugin.wit");

const PYTHON_SDK: [(&str, &str); 9] = [
    (
        "__init__.py",
        include_str!("../../../../sdk/python/appliance_sdk/__init__.py"),
    ),
    (
        "bindings.py",
        include_str!("../../../../sdk/python/appliance_sdk/bindings.py"),
    ),
    (
        "config.py",
        include_str!("../../../../sdk/python/appliance_sdk/config.py"),
    ),
    (
        "exports.py",
        include_str!("../../../../sdk/python/appliance_sdk/exports.py"),
    ),
    (
        "host.py",
        include_str!("../../../../sdk/python/appliance_sdk/host.py"),
    ),
    (
        "json.py",
        include_str!("../../../../sdk/python/appliance_sdk/json.py"),
    ),
    (
        "plugin.py",
        include_str!("../../../../sdk/python/appliance_sdk/plugin.py"),
    ),
    (
        "records.py",
        include_str!("../../../../sdk/python/appliance_sdk/records.py"),
    ),
    (
        "testing.py",
        include_str!("../../../../sdk/python/appliance_sdk/testing.py"),
    ),
];

const JS_SDK: [(&str, &str); 5] = [
    (
        "index.js",
        include_str!("../../../../sdk/js/appliance_sdk/index.js"),
    ),
    (
        "glue.js",
        include_str!("../../../../sdk/js/appliance_sdk/glue.js"),
    ),
    (
        "transform.js",
        include_str!("../../../../sdk/js/appliance_sdk/transform.js"),
    ),
    (
        "source.js",
        include_str!("../../../../sdk/js/appliance_sdk/source.js"),
    ),
    (
        "sink.js",
        include_str!("../../../../sdk/js/appliance_sdk/sink.js"),
    ),
];

const JS_PACKAGE: &str = include_str!("../../../../plugins/template-js/package.json");

const RUST_SDK: [(&str, &str); 13] = [
    ("src/lib.rs", include_str!("../../../../sdk/src/lib.rs")),
    (
        "src/config.rs",
        include_str!("../../../../sdk/src/config.rs"),
    ),
    (
        "src/connector.rs",
        include_str!("../../../../sdk/src/connector.rs"),
    ),
    (
        "src/encoded.rs",
        include_str!("../../../../sdk/src/encoded.rs"),
    ),
    ("src/host.rs", include_str!("../../../../sdk/src/host.rs")),
    (
        "src/java_date_format.rs",
        include_str!("../../../../sdk/src/java_date_format.rs"),
    ),
    ("src/json.rs", include_str!("../../../../sdk/src/json.rs")),
    (
        "src/record.rs",
        include_str!("../../../../sdk/src/record.rs"),
    ),
    ("src/side.rs", include_str!("../../../../sdk/src/side.rs")),
    ("src/state.rs", include_str!("../../../../sdk/src/state.rs")),
    (
        "src/testing.rs",
        include_str!("../../../../sdk/src/testing.rs"),
    ),
    (
        "macros/src/lib.rs",
        include_str!("../../../../sdk/macros/src/lib.rs"),
    ),
    ("wit/plugin.wit", WIT),
];

const RUST_SDK_MANIFEST: &str = r#"[package]
name = "appliance-sdk"
version = "0.1.0"
edition = "2024"

[features]
java-date-format = ["dep:chrono"]

[dependencies]
appliance-sdk-macros = { path = "macros" }
chrono = { version = "0.4", default-features = false, features = ["alloc", "std"], optional = true }
serde = { version = "1", features = ["derive"] }
serde_json = { version = "1", features = ["raw_value"] }
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
"#;

const RUST_MACROS_MANIFEST: &str = r#"[package]
name = "appliance-sdk-macros"
version = "0.1.0"
edition = "2024"

[lib]
proc-macro = true

[dependencies]
proc-macro2 = "1"
quote = "1"
syn = { version = "2", features = ["full"] }
"#;

/// Writes project `name` into `dir/name` and returns what to tell the user.
fn new_project(name: &str, language: Language, kind: Kind, dir: &Path) -> anyhow::Result<String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        bail!(
            "a plugin name is up to {MAX_NAME_LEN} lower-case letters, digits and '-', starting with a letter: {name:?}"
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} exists already; choose another name or directory",
            root.display()
        );
    }
    let files = match language {
        Language::Python => python_files(kind),
        Language::Rust => rust_files(name, kind),
        Language::Js => js_files(kind),
    };
    for (path, contents) in &files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(instructions(name, language, kind, &root))
}

fn python_files(kind: Kind) -> Vec<(PathBuf, String)> {
    let (app, test) = match kind {
        Kind::Transform => (
            include_str!("../../../../plugins/template-python/app.py"),
            include_str!("../../../../plugins/template-python/test_app.py"),
        ),
        Kind::Source => (
            include_str!("../../../../plugins/source-python/app.py"),
            include_str!("../../../../plugins/source-python/test_app.py"),
        ),
        Kind::Sink => (
            include_str!("python_sink.py.txt"),
            include_str!("python_sink_test.py.txt"),
        ),
    };
    let mut files = vec![
        (PathBuf::from("app.py"), app.to_owned()),
        (
            PathBuf::from("test_app.py"),
            test.replace(" (with sdk/python on PYTHONPATH)", ""),
        ),
        (PathBuf::from("wit/plugin.wit"), WIT.to_owned()),
    ];
    files.extend(
        PYTHON_SDK
            .iter()
            .map(|(file, text)| (Path::new("appliance_sdk").join(file), (*text).to_owned())),
    );
    files
}

fn js_files(kind: Kind) -> Vec<(PathBuf, String)> {
    let files: [(&str, &str); 3] = match kind {
        Kind::Transform => [
            (
                "uppercase.js",
                include_str!("../../../../plugins/template-js/uppercase.js"),
            ),
            (
                "app.js",
                include_str!("../../../../plugins/template-js/app.js"),
            ),
            (
                "test.js",
                include_str!("../../../../plugins/template-js/test.js"),
            ),
        ],
        Kind::Source => [
            ("numbers.js", include_str!("js_source.js.txt")),
            ("app.js", include_str!("js_source_app.js.txt")),
            ("test.js", include_str!("js_source_test.js.txt")),
        ],
        Kind::Sink => [
            (
                "logsink.js",
                include_str!("../../../../plugins/sink-js/logsink.js"),
            ),
            ("app.js", include_str!("../../../../plugins/sink-js/app.js")),
            (
                "test.js",
                include_str!("../../../../plugins/sink-js/test.js"),
            ),
        ],
    };
    let mut out: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(file, text)| (PathBuf::from(file), (*text).to_owned()))
        .collect();
    out.push((PathBuf::from("package.json"), JS_PACKAGE.to_owned()));
    out.push((PathBuf::from("wit/plugin.wit"), WIT.to_owned()));
    out.extend(
        JS_SDK
            .iter()
            .map(|(file, text)| (Path::new("appliance_sdk").join(file), (*text).to_owned())),
    );
    out
}

fn rust_files(name: &str, kind: Kind) -> Vec<(PathBuf, String)> {
    let code = match kind {
        Kind::Transform => include_str!("../../../../plugins/template/src/lib.rs"),
        Kind::Source => include_str!("rust_source.rs.txt"),
        Kind::Sink => include_str!("rust_sink.rs.txt"),
    };
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib", "rlib"]   # cdylib: the component; rlib: native unit tests

[workspace]                       # a project of its own, wherever it is made

[dependencies]
appliance-sdk = {{ path = "appliance-sdk" }}

[profile.release]                 # small, fast components
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#
    );
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), manifest),
        (PathBuf::from("src/lib.rs"), code.to_owned()),
        (
            PathBuf::from("appliance-sdk/Cargo.toml"),
            RUST_SDK_MANIFEST.to_owned(),
        ),
        (
            PathBuf::from("appliance-sdk/macros/Cargo.toml"),
            RUST_MACROS_MANIFEST.to_owned(),
        ),
    ];
    files.extend(
        RUST_SDK
            .iter()
            .map(|(file, text)| (Path::new("appliance-sdk").join(file), (*text).to_owned())),
    );
    files
}

fn instructions(name: &str, language: Language, kind: Kind, root: &Path) -> String {
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let build = match language {
        Language::Python => format!(
            "python3 -m venv .venv && .venv/bin/pip install {COMPONENTIZE_PY}\n  \
             python3 -m unittest                     # native unit tests\n  \
             .venv/bin/componentize-py -d wit -w appliance:plugin/{world}@0.1.0 componentize app -o {wasm}",
            world = kind.world()
        ),
        Language::Js => format!(
            "npm install --no-save {COMPONENTIZE_JS}\n  \
             node --test                             # native unit tests\n  \
             npx componentize-js app.js --wit wit --world-name {world} -d http -d fetch-event -o {wasm}",
            world = kind.world()
        ),
        Language::Rust => format!(
            "rustup target add wasm32-wasip2\n  \
             cargo test                              # native unit tests\n  \
             cargo build --target wasm32-wasip2 --release\n  \
             cp target/wasm32-wasip2/release/{wasm} ."
        ),
    };
    format!(
        "wrote the {kind} plugin {name} ({language}) in {root}\n\nbuild it:\n  cd {root}\n  {build}\n\nload it into a running appliance:\n  appliance plugin add {name} {wasm}\n",
        kind = kind.world(),
        language = match language {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        },
        root = root.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_has_its_sdk_and_wit_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let said = new_project("my-upper", Language::Python, Kind::Transform, dir.path()).unwrap();
        let root = dir.path().join("my-upper");
        for file in [
            "app.py",
            "test_app.py",
            "wit/plugin.wit",
            "appliance_sdk/exports.py",
        ] {
            assert!(root.join(file).exists(), "{file}");
        }
        assert!(
            said.contains("-w appliance:plugin/transform@0.1.0 componentize app -o my_upper.wasm")
        );
        assert!(new_project("my-upper", Language::Rust, Kind::Sink, dir.path()).is_err());
        new_project("log-sink", Language::Rust, Kind::Sink, dir.path()).unwrap();
        let sdk = dir.path().join("log-sink/appliance-sdk");
        assert!(sdk.join("macros/src/lib.rs").exists() && sdk.join("wit/plugin.wit").exists());
        assert!(new_project("Bad Name", Language::Rust, Kind::Sink, dir.path()).is_err());
    }

    /// A module added to the SDK must reach the projects too, or they do not build.
    #[test]
    fn the_rust_sdk_copy_has_every_source_file() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(sdk)
            .unwrap()
            .map(|entry| format!("src/{}", entry.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut copied: Vec<String> = RUST_SDK
            .iter()
            .map(|(path, _)| path.to_string())
            .filter(|path| path.starts_with("src/"))
            .collect();
        copied.sort();
        assert_eq!(copied, on_disk);
    }
}
