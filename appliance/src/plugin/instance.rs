//! One sandboxed plugin instance: its own `Store` with a WASI context that grants only what its
//! config grants, a memory limiter, an epoch deadline per call, a captured stderr (a Rust
//! guest's panic message lands there) and the host functions of `appliance:plugin/host`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{EPOCH_TICK, Fault, Limits, PluginError, PluginKind, lock};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "appliance:plugin/transform",
    });
}

use bindings::appliance::plugin::host::{Host, Level};
pub use bindings::appliance::plugin::types::{BatchInfo, Header, Record, RecordError};

pub type TransformPre = bindings::TransformPre<InstanceState>;

const STDERR_CAPACITY: usize = 64 * 1024;
/// How much of a trapped plugin's stderr goes into its status.
const STDERR_IN_STATUS: usize = 1024;
const MAX_LOG_MESSAGE: usize = 4096;
const MAX_COUNTERS: usize = 64;
const MAX_COUNTER_NAME: usize = 128;
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The export names of the plugin worlds, as they appear in a component's type.
const WORLD_EXPORTS: [(&str, PluginKind); 3] = [
    ("appliance:plugin/transformer@0.1.0", PluginKind::Transform),
    (
        "appliance:plugin/source-connector@0.1.0",
        PluginKind::Source,
    ),
    ("appliance:plugin/sink-connector@0.1.0", PluginKind::Sink),
];

/// The counters an instance keeps through `counter-add`.
#[derive(Debug, Default)]
pub struct InstanceCounters(Mutex<BTreeMap<String, u64>>);

impl InstanceCounters {
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        lock(&self.0).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[derive(Debug)]
struct MemoryLimiter {
    max_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The host side of one instance.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
    plugin: Arc<str>,
    label: Arc<str>,
    counters: Arc<InstanceCounters>,
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState")
            .field("plugin", &self.plugin)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::appliance::plugin::types::Host for InstanceState {}

impl Host for InstanceState {
    fn log(&mut self, level: Level, message: String) {
        let message = truncate(&message, MAX_LOG_MESSAGE);
        let (plugin, instance) = (&*self.plugin, &*self.label);
        match level {
            Level::Error => tracing::error!(plugin, instance, "{message}"),
            Level::Warn => tracing::warn!(plugin, instance, "{message}"),
            Level::Info => tracing::info!(plugin, instance, "{message}"),
            Level::Debug => tracing::debug!(plugin, instance, "{message}"),
            Level::Trace => tracing::trace!(plugin, instance, "{message}"),
        }
    }

    fn now_ms(&mut self) -> i64 {
        crate::log::Timestamp::now().0
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        let mut counters = lock(&self.counters.0);
        let name = truncate(&name, MAX_COUNTER_NAME);
        if let Some(value) = counters.get_mut(name) {
            *value = value.saturating_add(delta);
        } else if counters.len() < MAX_COUNTERS {
            counters.insert(name.to_owned(), delta);
        }
    }
}

/// The linker every instance is created from: WASI (which grants nothing by itself: each
/// store's context decides) and the appliance's host functions.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    bindings::Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// Which plugin world a component exports, if any.
pub fn kind_of(engine: &Engine, component: &Component) -> Option<PluginKind> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    WORLD_EXPORTS
        .iter()
        .find(|(export, _)| exports.iter().any(|name| name == export))
        .map(|(_, kind)| *kind)
}

/// Resolves a transform's imports and exports once, so each instance starts quickly.
pub fn pre_instantiate(
    linker: &Linker<InstanceState>,
    component: &Component,
) -> Result<TransformPre, String> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("its imports cannot be satisfied: {e:#}"))?;
    TransformPre::new(pre)
        .map_err(|e| format!("its exports do not match the transform world: {e:#}"))
}

/// A running transform instance. After a [`PluginError::Fault`] it must be dropped.
pub struct TransformInstance {
    store: Store<InstanceState>,
    bindings: bindings::Transform,
    limits: Limits,
}

impl std::fmt::Debug for TransformInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformInstance")
            .field("state", self.store.data())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TransformInstance {
    /// Instantiates and calls `init`. `config` may carry the host's keys `max-memory-mb`,
    /// `timeout-ms` and `wasi.*`, which are taken out before the plugin sees the rest.
    pub(super) fn start(
        engine: &Engine,
        pre: &TransformPre,
        plugin: &str,
        label: &str,
        config: &[(String, String)],
        default_limits: Limits,
        counters: Arc<InstanceCounters>,
    ) -> Result<Self, PluginError> {
        let grant_error = |key: &str, reason: String| PluginError::InvalidGrant {
            plugin: plugin.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let mut limits = default_limits;
        let mut wasi = WasiCtxBuilder::new();
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        wasi.stderr(stderr.clone());
        let mut plugin_config = Vec::with_capacity(config.len());
        for (key, value) in config {
            match key.as_str() {
                "max-memory-mb" => {
                    limits.max_memory_mb =
                        parse_limit(value, 1, 4096).map_err(|reason| grant_error(key, reason))?;
                }
                "timeout-ms" => {
                    limits.timeout_ms = parse_limit(value, 1, 3_600_000)
                        .map_err(|reason| grant_error(key, reason))?;
                }
                "wasi.dir" | "wasi.dir-rw" => {
                    let (host, guest) = value.split_once(':').unwrap_or((value, value));
                    let perms = if key == "wasi.dir" {
                        FsPerms::ReadOnly
                    } else {
                        FsPerms::ReadWrite
                    };
                    wasi.preopened_dir(host, guest, perms)
                        .map_err(|e| grant_error(key, format!("cannot open {host:?}: {e}")))?;
                }
                other => match other.strip_prefix("wasi.env.") {
                    Some(name) if !name.is_empty() => {
                        wasi.env(name, value);
                    }
                    _ if other.starts_with("wasi.") => {
                        return Err(grant_error(
                            key,
                            "unknown capability; grants are wasi.dir, wasi.dir-rw and wasi.env.NAME"
                                .to_owned(),
                        ));
                    }
                    _ => plugin_config.push((key.clone(), value.clone())),
                },
            }
        }
        let state = InstanceState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: usize::try_from(limits.max_memory_mb << 20).unwrap_or(usize::MAX),
                exceeded: false,
            },
            stderr,
            plugin: plugin.into(),
            label: label.into(),
            counters,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        arm(&mut store, limits);
        let bindings = pre
            .instantiate(&mut store)
            .map_err(|error| classify(&store, limits, error))?;
        arm(&mut store, limits);
        bindings
            .appliance_plugin_transformer()
            .call_init(&mut store, &plugin_config)
            .map_err(|error| classify(&store, limits, error))?
            .map_err(|message| PluginError::ConfigRejected {
                plugin: plugin.to_owned(),
                message,
            })?;
        Ok(Self {
            store,
            bindings,
            limits,
        })
    }

    /// Transforms one batch. `Ok(Err(_))` is the plugin's verdict on one record; `Err(_)` is a
    /// fault after which this instance must be dropped.
    pub fn process(
        &mut self,
        info: &BatchInfo,
        records: &[Record],
    ) -> Result<Result<Vec<Record>, RecordError>, PluginError> {
        arm(&mut self.store, self.limits);
        let result = self.bindings.appliance_plugin_transformer().call_process(
            &mut self.store,
            info,
            records,
        );
        result.map_err(|error| classify(&self.store, self.limits, error))
    }

    pub fn plugin(&self) -> &str {
        &self.store.data().plugin
    }
}

/// Gives the next call `timeout-ms` from now, in epoch ticks (rounded up, plus the tick in
/// progress).
fn arm(store: &mut Store<InstanceState>, limits: Limits) {
    let tick_ms = EPOCH_TICK.as_millis() as u64;
    store.set_epoch_deadline(limits.timeout_ms.div_ceil(tick_ms) + 1);
}

/// Names why a call failed: the memory limit, the deadline, or a trap (with the end of what
/// the plugin wrote to stderr, where a Rust guest's panic message goes).
fn classify(store: &Store<InstanceState>, limits: Limits, error: wasmtime::Error) -> PluginError {
    let state = store.data();
    let fault = if state.limiter.exceeded {
        Fault::OutOfMemory {
            limit_mb: limits.max_memory_mb,
        }
    } else if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        Fault::Timeout {
            limit_ms: limits.timeout_ms,
        }
    } else {
        let cause = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        let stderr = state.stderr.contents();
        let tail =
            String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(STDERR_IN_STATUS)..]);
        let tail = tail.trim();
        Fault::Trap {
            message: if tail.is_empty() {
                cause
            } else {
                format!("{cause}; plugin stderr: {tail}")
            },
        }
    };
    PluginError::Fault {
        plugin: state.plugin.to_string(),
        fault,
    }
}

fn parse_limit(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from {min} to {max}, not {value:?}"
        )),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
