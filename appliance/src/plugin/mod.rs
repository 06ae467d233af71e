//! The WebAssembly plugin host: one `wasmtime::Engine`, the registry of plugins (built-in
//! ones embedded in the binary and ones operators add), the compiled-component cache, and
//! sandboxed instances with memory and time limits.
//!
//! ```text
//! AddPlugin bytes -> validate + compile (cache/<sha256>-<engine>.cwasm) -> plugins/<sha256>.wasm
//!                    -> meta "plugins" (name -> digest, kind)            (durable, then acked)
//! pipeline -> Plugins::transform(name) -> Loaded (compiled once, pre-instantiated)
//!          -> Plugins::instantiate_transform(config, limits) -> TransformInstance (own Store,
//!             WASI context) -> TransformInstance::process(batch), async, under a deadline
//! ```
//!
//! A background task advances the engine's epoch every [`EPOCH_TICK`]: at each tick a running
//! guest yields to the executor, and once its `timeout-ms` of ticks are spent it traps. A trap,
//! a missed deadline or memory growth past `max-memory-mb` ends that call with a [`Fault`]
//! naming the plugin and the reason; the instance is then discarded, nothing else is affected.
//! Adds and deletes are serialised, and a component is compiled at most once at a time.

mod cache;
mod instance;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::meta::{Meta, MetaError, Table};

pub use instance::{BatchInfo, Header, InstanceCounters, Record, RecordError, TransformInstance};

/// How often the engine's epoch advances: the granularity of `timeout-ms`.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Plugins larger than this are refused before compiling.
pub const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;
const MAX_NAME_LEN: usize = 64;

const BUILTIN_PLUGINS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("invalid plugin name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no plugin named {name:?} (`appliance plugin list` shows them)")]
    NotFound { name: String },
    #[error("a plugin named {name:?} exists already; delete it first to replace it")]
    AlreadyExists { name: String },
    #[error("plugin {name:?} is built in: it cannot be added, replaced or deleted")]
    BuiltIn { name: String },
    #[error("plugin {name:?} is {size} bytes; the limit is {MAX_PLUGIN_BYTES} bytes")]
    TooLarge { name: String, size: usize },
    #[error(
        "plugin {name:?} is not a usable WebAssembly component (build it with `cargo build \
         --target wasm32-wasip2` against appliance-sdk): {reason}"
    )]
    InvalidComponent { name: String, reason: String },
    #[error("plugin {name:?} is a {actual} plugin; a {wanted} plugin is needed here")]
    WrongKind {
        name: String,
        actual: PluginKind,
        wanted: PluginKind,
    },
    #[error("plugin {plugin:?}: invalid setting {key:?}: {reason}")]
    InvalidGrant {
        plugin: String,
        key: String,
        reason: String,
    },
    #[error("plugin {plugin:?} rejected its configuration: {message}")]
    ConfigRejected { plugin: String, message: String },
    #[error("plugin {plugin:?} {fault}")]
    Fault { plugin: String, fault: Fault },
    #[error("plugin {plugin:?} broke the transform contract: {detail}")]
    Contract { plugin: String, detail: String },
    #[error("plugin store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Why a plugin call ended abnormally. The instance is unusable afterwards.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fault {
    #[error("trapped: {message}")]
    Trap { message: String },
    #[error("ran longer than its limit of {limit_ms} ms (timeout-ms) and was stopped")]
    Timeout { limit_ms: u64 },
    #[error("needed more than its memory limit of {limit_mb} MiB (max-memory-mb) and was stopped")]
    OutOfMemory { limit_mb: u64 },
}

/// What a component implements: the WIT world it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Transform,
    Source,
    Sink,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Transform => "transform",
            PluginKind::Source => "source",
            PluginKind::Sink => "sink",
        })
    }
}

/// A plugin as listed to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub kind: PluginKind,
    /// Hex SHA-256 of the component's bytes.
    pub digest: String,
    pub size: u64,
    pub builtin: bool,
}

/// Per-instance sandbox limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_memory_mb: u64,
    pub timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_mb: 64,
            timeout_ms: 5_000,
        }
    }
}

/// A validated plugin name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), PluginError> {
    let invalid = |reason| PluginError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid("must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(invalid("use only a-z, 0-9, '.', '_' and '-'"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or digit"));
    }
    Ok(())
}

/// A compiled, pre-instantiated plugin.
pub struct Loaded {
    pub info: PluginInfo,
    transform: Option<instance::PreparedTransform>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Handle to the plugin host; cheap to clone.
#[derive(Debug, Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

struct Inner {
    engine: wasmtime::Engine,
    linker: wasmtime::component::Linker<instance::InstanceState>,
    store_dir: PathBuf,
    cache: cache::ComponentCache,
    meta: Meta,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Serialises add, delete and loading, so a name never maps to bytes it no longer has.
    admin: tokio::sync::Mutex<()>,
    counters: Mutex<BTreeMap<(String, String), Arc<InstanceCounters>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("store_dir", &self.store_dir)
            .finish_non_exhaustive()
    }
}

impl Plugins {
    /// Sets up the engine and the stores under `data_dir` (`plugins/`, `plugin-cache/`), and
    /// starts the epoch ticker. Cancel `ticker` only once no plugin runs any more: without
    /// ticks a looping guest never yields.
    pub fn open(
        data_dir: &Path,
        meta: Meta,
        ticker: CancellationToken,
    ) -> Result<Self, PluginError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).map_err(|e| PluginError::Io {
            path: data_dir.to_path_buf(),
            source: std::io::Error::other(format!("cannot set up the WebAssembly engine: {e}")),
        })?;
        let linker = instance::linker(&engine).map_err(|e| PluginError::Io {
            path: data_dir.to_path_buf(),
            source: std::io::Error::other(format!("cannot link the plugin host: {e}")),
        })?;
        let store_dir = data_dir.join("plugins");
        create_dir(&store_dir)?;
        let cache = cache::ComponentCache::open(&engine, data_dir.join("plugin-cache"))?;
        let ticking = engine.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(EPOCH_TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.cancelled() => return,
                    _ = interval.tick() => ticking.increment_epoch(),
                }
            }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                store_dir,
                cache,
                meta,
                loaded: Mutex::new(HashMap::new()),
                admin: tokio::sync::Mutex::new(()),
                counters: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Validates, compiles and stores a plugin; durable when this returns.
    pub async fn add(&self, name: &str, bytes: Vec<u8>) -> Result<PluginInfo, PluginError> {
        validate_name(name)?;
        if builtin(name).is_some() {
            return Err(PluginError::BuiltIn {
                name: name.to_owned(),
            });
        }
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(PluginError::TooLarge {
                name: name.to_owned(),
                size: bytes.len(),
            });
        }
        let _admin = self.inner.admin.lock().await;
        if self.stored(name)?.is_some() {
            return Err(PluginError::AlreadyExists {
                name: name.to_owned(),
            });
        }
        let this = self.clone();
        let owned_name = name.to_owned();
        let loaded = tokio::task::spawn_blocking(move || {
            let digest = hex_digest(&bytes);
            let loaded = this.load(&owned_name, &bytes, digest.clone(), false)?;
            let path = this.inner.store_dir.join(format!("{digest}.wasm"));
            write_durably(&path, &bytes)?;
            Ok::<_, PluginError>(loaded)
        })
        .await
        .map_err(|join| PluginError::InvalidComponent {
            name: name.to_owned(),
            reason: format!("compilation stopped: {join}"),
        })??;
        self.inner
            .meta
            .put(Table::Plugins, name, &loaded.info)
            .await?;
        lock(&self.inner.loaded).insert(name.to_owned(), loaded.clone());
        Ok(loaded.info.clone())
    }

    /// Every plugin: the built-in ones first, then the added ones, each by name.
    pub fn list(&self) -> Result<Vec<PluginInfo>, PluginError> {
        let mut plugins: Vec<PluginInfo> = BUILTIN_PLUGINS
            .iter()
            .map(|(name, bytes)| builtin_info(name, bytes))
            .collect();
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        plugins.extend(
            self.inner
                .meta
                .entries::<PluginInfo>(Table::Plugins)?
                .into_iter()
                .map(|(_, info)| info),
        );
        Ok(plugins)
    }

    /// Removes an added plugin. Whether something still uses it is the caller's question.
    pub async fn delete(&self, name: &str) -> Result<(), PluginError> {
        let _admin = self.inner.admin.lock().await;
        if builtin(name).is_some() {
            return Err(PluginError::BuiltIn {
                name: name.to_owned(),
            });
        }
        let info = self.stored(name)?.ok_or_else(|| PluginError::NotFound {
            name: name.to_owned(),
        })?;
        self.inner.meta.remove(Table::Plugins, name).await?;
        lock(&self.inner.loaded).remove(name);
        let still_used = self
            .inner
            .meta
            .entries::<PluginInfo>(Table::Plugins)?
            .iter()
            .any(|(_, other)| other.digest == info.digest);
        if !still_used {
            let path = self.inner.store_dir.join(format!("{}.wasm", info.digest));
            std::fs::remove_file(&path)
                .or_else(ignore_missing)
                .map_err(|source| PluginError::Io { path, source })?;
            self.inner.cache.forget(&info.digest)?;
        }
        Ok(())
    }

    /// The plugin, compiled and pre-instantiated (from the on-disk cache when it is there).
    pub async fn get(&self, name: &str) -> Result<Arc<Loaded>, PluginError> {
        if let Some(loaded) = lock(&self.inner.loaded).get(name) {
            return Ok(loaded.clone());
        }
        let _admin = self.inner.admin.lock().await;
        if let Some(loaded) = lock(&self.inner.loaded).get(name) {
            return Ok(loaded.clone());
        }
        let this = self.clone();
        let owned_name = name.to_owned();
        let loaded = tokio::task::spawn_blocking(move || this.load_by_name(&owned_name))
            .await
            .map_err(|join| PluginError::InvalidComponent {
                name: name.to_owned(),
                reason: format!("compilation stopped: {join}"),
            })??;
        lock(&self.inner.loaded).insert(name.to_owned(), loaded.clone());
        Ok(loaded)
    }

    /// Starts an instance of a transform plugin and calls its `init` with `config`. Keys
    /// starting with `wasi.` grant capabilities and are not passed on (see
    /// docs/plugin-guide.md). `label` names the instance in logs and metrics.
    pub async fn instantiate_transform(
        &self,
        loaded: &Loaded,
        config: &[(String, String)],
        limits: Limits,
        label: &str,
    ) -> Result<TransformInstance, PluginError> {
        let prepared = loaded
            .transform
            .as_ref()
            .ok_or_else(|| PluginError::WrongKind {
                name: loaded.info.name.clone(),
                actual: loaded.info.kind,
                wanted: PluginKind::Transform,
            })?;
        let counters = lock(&self.inner.counters)
            .entry((loaded.info.name.clone(), label.to_owned()))
            .or_default()
            .clone();
        TransformInstance::start(
            &self.inner.engine,
            prepared,
            &loaded.info.name,
            label,
            config,
            limits,
            counters,
        )
        .await
    }

    /// Every instance's counters, for the metrics endpoint: (plugin, instance) -> counters.
    pub fn counters(&self) -> Vec<((String, String), Arc<InstanceCounters>)> {
        lock(&self.inner.counters)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Forgets the counters of instances whose label starts with `prefix` (a deleted pipeline).
    pub fn forget_counters(&self, prefix: &str) {
        lock(&self.inner.counters).retain(|(_, label), _| !label.starts_with(prefix));
    }

    fn stored(&self, name: &str) -> Result<Option<PluginInfo>, PluginError> {
        Ok(self.inner.meta.get(Table::Plugins, name)?)
    }

    fn load_by_name(&self, name: &str) -> Result<Arc<Loaded>, PluginError> {
        if let Some(bytes) = builtin(name) {
            return self.load(name, bytes, hex_digest(bytes), true);
        }
        let info = self.stored(name)?.ok_or_else(|| PluginError::NotFound {
            name: name.to_owned(),
        })?;
        let path = self.inner.store_dir.join(format!("{}.wasm", info.digest));
        let bytes = std::fs::read(&path).map_err(|source| PluginError::Io { path, source })?;
        self.load(name, &bytes, info.digest, false)
    }

    fn load(
        &self,
        name: &str,
        bytes: &[u8],
        digest: String,
        builtin: bool,
    ) -> Result<Arc<Loaded>, PluginError> {
        let component = self.inner.cache.component(name, bytes, &digest)?;
        let kind = instance::kind_of(&self.inner.engine, &component).ok_or_else(|| {
            PluginError::InvalidComponent {
                name: name.to_owned(),
                reason: "it exports none of the worlds appliance:plugin/transform, source or sink \
                         of sdk/wit/plugin.wit (version 0.1.0)"
                    .to_owned(),
            }
        })?;
        let transform = match kind {
            PluginKind::Transform => Some(
                instance::pre_instantiate(&self.inner.linker, &component).map_err(|reason| {
                    PluginError::InvalidComponent {
                        name: name.to_owned(),
                        reason,
                    }
                })?,
            ),
            PluginKind::Source | PluginKind::Sink => None,
        };
        Ok(Arc::new(Loaded {
            info: PluginInfo {
                name: name.to_owned(),
                kind,
                digest,
                size: bytes.len() as u64,
                builtin,
            },
            transform,
        }))
    }
}

fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTIN_PLUGINS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, bytes)| *bytes)
}

fn builtin_info(name: &str, bytes: &[u8]) -> PluginInfo {
    PluginInfo {
        name: name.to_owned(),
        kind: PluginKind::Transform,
        digest: hex_digest(bytes),
        size: bytes.len() as u64,
        builtin: true,
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn create_dir(dir: &Path) -> Result<(), PluginError> {
    std::fs::create_dir_all(dir).map_err(|source| PluginError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes a file under a temporary name of its own, fsyncs it and renames it into place, so a
/// crash or a concurrent writer of the same file leaves either no file or a whole one.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut partial = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut partial, bytes).map_err(io)?;
    partial.as_file().sync_data().map_err(io)?;
    partial.persist(path).map_err(|e| io(e.error))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

fn ignore_missing(error: std::io::Error) -> std::io::Result<()> {
    if error.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(error)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
