//! One sandboxed plugin instance: its own `Store` with a WASI context that grants only what its
//! config grants, a memory limiter over all of its memories, a deadline per call, a captured
//! stderr (a Rust guest's panic message lands there) and the host functions of
//! `appliance:plugin/host`.
//!
//! Calls are async. The epoch callback makes a running guest yield to the executor at every
//! tick, so a busy plugin shares its thread, and traps it once its `timeout-ms` of ticks are
//! spent; a timer around the call catches a guest that waits inside a host call instead (a WASI
//! sleep). Records cross in borrowed form on the way in (lowered straight from the log's
//! buffers, no copy on the host). The output arrives through the `output.emit` import while
//! the call runs: the host reads it straight from the plugin's memory, counting bytes before
//! copying them, so no plugin can make the host allocate more than [`MAX_OUTPUT_BYTES`] per
//! batch (lists in a plugin's memory may overlap, so its output could otherwise be far larger
//! than its memory).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, Func, HasSelf, Instance, InstancePre, Lift,
    Linker, Lower, ResourceTable, WasmList, WasmStr,
};
use wasmtime::{Engine, ResourceLimiter, Store, StoreContextMut, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{EPOCH_TICK, Fault, Limits, PluginError, PluginKind, lock};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        // One world with the imports and exports of all three plugin worlds, so they share
        // one set of types and host traits; an instance loads only its own world's exports.
        inline: "
            package appliance:host;
            world plugins {
                include appliance:plugin/transform@0.1.0;
                include appliance:plugin/source@0.1.0;
                include appliance:plugin/sink@0.1.0;
            }
        ",
        world: "appliance:host/plugins",
        exports: { default: async },
    });
}

use bindings::appliance::plugin::host::{Host, Level};
pub use bindings::appliance::plugin::types::{BatchInfo, RecordError};
use bindings::exports::appliance::plugin::{sink_connector, source_connector, transformer};

/// Output of one call larger than this fails the call, before the host holds it.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// The last this many bytes a plugin wrote to stderr are kept.
const STDERR_KEPT: usize = 4096;
/// How much of a trapped plugin's stderr goes into its status.
const STDERR_IN_STATUS: usize = 1024;
const MAX_LOG_MESSAGE: usize = 4096;
const MAX_COUNTERS: usize = 64;
const MAX_COUNTER_NAME: usize = 128;
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Beyond `timeout-ms`, how long the timer around a call waits for the epoch deadline.
const TIMER_GRACE: Duration = Duration::from_millis(500);
const TRANSFORMER_EXPORT: &str = "appliance:plugin/transformer@0.1.0";
const SINK_EXPORT: &str = "appliance:plugin/sink-connector@0.1.0";
const OUTPUT_IMPORT: &str = "appliance:plugin/output@0.1.0";
const SOURCE_OUTPUT_IMPORT: &str = "appliance:plugin/source-output@0.1.0";
/// The export names of the plugin worlds, as they appear in a component's type.
const WORLD_EXPORTS: [(&str, PluginKind); 3] = [
    (TRANSFORMER_EXPORT, PluginKind::Transform),
    (
        "appliance:plugin/source-connector@0.1.0",
        PluginKind::Source,
    ),
    (SINK_EXPORT, PluginKind::Sink),
];

/// A record as the host holds it between the log and the plugins: byte fields share the
/// buffers they were read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The source offset the record descends from.
    pub offset: i64,
    /// Where a transform re-routed the record, if one did.
    pub topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

/// `record` of the WIT types, lowered from borrowed host data.
#[derive(ComponentType, Lower)]
#[component(record)]
struct RecordIn<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Vec<HeaderIn<'a>>,
    timestamp: i64,
    offset: i64,
    topic: Option<&'a str>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct HeaderIn<'a> {
    key: &'a str,
    value: &'a [u8],
}

/// `record` of the WIT types, left in the plugin's memory until read (during `emit`).
#[derive(ComponentType, Lift)]
#[component(record)]
struct RecordOut {
    key: Option<WasmList<u8>>,
    value: Option<WasmList<u8>>,
    headers: WasmList<HeaderOut>,
    timestamp: i64,
    offset: i64,
    topic: Option<WasmStr>,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct HeaderOut {
    key: WasmStr,
    value: WasmList<u8>,
}

/// `source-record` of the WIT types, read like [`RecordOut`].
#[derive(ComponentType, Lift)]
#[component(record)]
struct SourceRecordOut {
    #[component(name = "record")]
    record: RecordOut,
    position: WasmList<u8>,
}

/// The parameters and results of `transformer.process` and `sink-connector.put`.
type BatchParams<'a> = (&'a BatchInfo, &'a [RecordIn<'a>]);
type BatchResults = (Result<(), RecordError>,);

/// The counters an instance keeps through `counter-add`.
#[derive(Debug, Default)]
pub struct InstanceCounters(Mutex<BTreeMap<String, u64>>);

impl InstanceCounters {
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        lock(&self.0).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Limits the total of all of an instance's memories.
#[derive(Debug)]
struct MemoryLimiter {
    max_bytes: usize,
    total_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total_bytes - current.min(self.total_bytes) + desired;
        if total > self.max_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        self.total_bytes = total;
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

/// The end of what a plugin wrote to stderr; writes never fail, old bytes are dropped.
#[derive(Debug, Clone, Default)]
struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

impl StderrTail {
    fn text(&self) -> String {
        let kept = lock(&self.0);
        let bytes: Vec<u8> = kept.iter().copied().collect();
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(STDERR_IN_STATUS)..])
            .trim()
            .to_owned()
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut kept = lock(&self.0);
        kept.extend(&buf[buf.len().saturating_sub(STDERR_KEPT)..]);
        let excess = kept.len().saturating_sub(STDERR_KEPT);
        kept.drain(..excess);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The host side of one instance.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    stderr: StderrTail,
    /// Epoch ticks the call in progress may still run.
    ticks_left: u64,
    /// What the call in progress emitted so far (and a source, the position after each
    /// record), and its size.
    output: Vec<Record>,
    positions: Vec<Bytes>,
    output_bytes: usize,
    /// Set when the call in progress emitted more than [`MAX_OUTPUT_BYTES`].
    output_overflow: bool,
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
/// store's context decides), the appliance's host functions, and `output.emit`, defined here
/// rather than through the generated bindings so that it reads its argument lazily.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::appliance::plugin::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    bindings::appliance::plugin::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    linker.instance(OUTPUT_IMPORT)?.func_wrap(
        "emit",
        |mut store: StoreContextMut<'_, InstanceState>, (list,): (WasmList<RecordOut>,)| {
            let emitted: Vec<RecordOut> =
                list.iter(&mut store)?.collect::<wasmtime::Result<_>>()?;
            let records = read_records(&mut store, emitted)?;
            store.data_mut().output.extend(records);
            Ok(())
        },
    )?;
    linker.instance(SOURCE_OUTPUT_IMPORT)?.func_wrap(
        "emit",
        |mut store: StoreContextMut<'_, InstanceState>, (list,): (WasmList<SourceRecordOut>,)| {
            let emitted: Vec<SourceRecordOut> =
                list.iter(&mut store)?.collect::<wasmtime::Result<_>>()?;
            let mut records = Vec::with_capacity(emitted.len());
            let mut positions = Vec::with_capacity(emitted.len());
            for out in emitted {
                charge(store.data_mut(), out.position.len())?;
                positions.push(Bytes::copy_from_slice(out.position.as_le_slice(&store)));
                records.push(out.record);
            }
            let records = read_records(&mut store, records)?;
            let state = store.data_mut();
            state.output.extend(records);
            state.positions.extend(positions);
            Ok(())
        },
    )?;
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

/// A plugin resolved against the linker once, so each instance starts quickly.
pub struct Prepared {
    pre: InstancePre<InstanceState>,
    exports: Exports,
}

/// Where the functions of the plugin's world are, found once per component.
enum Exports {
    Transform {
        indices: transformer::GuestIndices,
        process: ComponentExportIndex,
    },
    Source(source_connector::GuestIndices),
    Sink {
        indices: sink_connector::GuestIndices,
        put: ComponentExportIndex,
    },
}

/// Resolves a plugin's imports and the exports of its world once.
pub fn prepare(
    linker: &Linker<InstanceState>,
    component: &Component,
    kind: PluginKind,
) -> Result<Prepared, String> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("its imports cannot be satisfied: {e:#}"))?;
    let mismatch = |e: wasmtime::Error| format!("its exports do not match the {kind} world: {e:#}");
    let function = |interface: &str, name: &str| {
        component
            .get_export_index(None, interface)
            .and_then(|interface| component.get_export_index(Some(&interface), name))
            .ok_or_else(|| format!("it does not export {interface}#{name}"))
    };
    let exports = match kind {
        PluginKind::Transform => Exports::Transform {
            indices: transformer::GuestIndices::new(&pre).map_err(mismatch)?,
            process: function(TRANSFORMER_EXPORT, "process")?,
        },
        PluginKind::Source => {
            Exports::Source(source_connector::GuestIndices::new(&pre).map_err(mismatch)?)
        }
        PluginKind::Sink => Exports::Sink {
            indices: sink_connector::GuestIndices::new(&pre).map_err(mismatch)?,
            put: function(SINK_EXPORT, "put")?,
        },
    };
    Ok(Prepared { pre, exports })
}

impl Prepared {
    pub fn kind(&self) -> PluginKind {
        match self.exports {
            Exports::Transform { .. } => PluginKind::Transform,
            Exports::Source(_) => PluginKind::Source,
            Exports::Sink { .. } => PluginKind::Sink,
        }
    }
}

/// Who an instance is, and what it may use.
#[derive(Debug)]
pub(super) struct InstanceSpec<'a> {
    pub plugin: &'a str,
    pub label: &'a str,
    /// The plugin's config, possibly with the host's keys (`max-memory-mb`, `timeout-ms`,
    /// `wasi.*`), which are taken out before the plugin sees the rest.
    pub config: &'a [(String, String)],
    pub default_limits: Limits,
    pub counters: Arc<InstanceCounters>,
}

/// One store with its limits: what every kind of instance runs in.
struct Sandbox {
    store: Store<InstanceState>,
    limits: Limits,
    refused: RefusedConnection,
}

impl Sandbox {
    /// Builds the store and instantiates the component, then runs `init` on the instance
    /// with the plugin's part of the config; `init` returns the plugin's verdict on it.
    async fn start<G>(
        engine: &Engine,
        prepared: &Prepared,
        spec: InstanceSpec<'_>,
        init: impl AsyncFnOnce(
            &mut Store<InstanceState>,
            &Instance,
            &Vec<(String, String)>,
        ) -> Result<(G, Result<(), String>), CallError>,
    ) -> Result<(Self, Instance, G), PluginError> {
        let (limits, mut wasi, plugin_config, refused) =
            sandbox(spec.plugin, spec.config, spec.default_limits).await?;
        let stderr = StderrTail::default();
        wasi.stderr(stderr.clone());
        let state = InstanceState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: usize::try_from(limits.max_memory_mb << 20).unwrap_or(usize::MAX),
                total_bytes: 0,
                exceeded: false,
            },
            stderr,
            ticks_left: 0,
            output: Vec::new(),
            positions: Vec::new(),
            output_bytes: 0,
            output_overflow: false,
            plugin: spec.plugin.into(),
            label: spec.label.into(),
            counters: spec.counters,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(|mut context| {
            let state = context.data_mut();
            if state.ticks_left == 0 {
                return Err(Trap::Interrupt.into());
            }
            state.ticks_left -= 1;
            Ok(UpdateDeadline::Yield(1))
        });
        let mut sandbox = Self {
            store,
            limits,
            refused,
        };
        let (instance, guest, verdict) = sandbox
            .call(async |store| {
                let instance = prepared.pre.instantiate_async(&mut *store).await?;
                let (guest, verdict) = init(store, &instance, &plugin_config).await?;
                Ok((instance, guest, verdict))
            })
            .await?;
        verdict.map_err(|message| PluginError::ConfigRejected {
            plugin: spec.plugin.to_owned(),
            message: sandbox.refused.explain(message),
        })?;
        Ok((sandbox, instance, guest))
    }

    /// Runs one call under the instance's limits and names how it failed, if it did.
    async fn call<R>(
        &mut self,
        call: impl AsyncFnOnce(&mut Store<InstanceState>) -> Result<R, CallError>,
    ) -> Result<R, PluginError> {
        let result = guarded(&mut self.store, self.limits, call).await;
        result.map_err(|error| classify(&self.store, self.limits, error))
    }

    /// Calls a batch function (`process`, `put`): a batch of borrowed records in, a verdict on
    /// one record out, with what the call emitted.
    async fn call_batch(
        &mut self,
        function: Func,
        info: &BatchInfo,
        records: &[Record],
    ) -> Result<Result<Vec<Record>, RecordError>, PluginError> {
        let inputs: Vec<RecordIn<'_>> = records.iter().map(record_in).collect();
        self.call(async |store| {
            let typed = function.typed::<BatchParams<'_>, BatchResults>(&*store)?;
            let (verdict,) = typed.call_async(&mut *store, (info, &inputs)).await?;
            let output = std::mem::take(&mut store.data_mut().output);
            Ok(verdict.map(|()| output))
        })
        .await
    }

    fn plugin(&self) -> &str {
        &self.store.data().plugin
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("state", self.store.data())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn wrong_world(prepared: &Prepared, plugin: &str, wanted: PluginKind) -> PluginError {
    PluginError::WrongKind {
        name: plugin.to_owned(),
        actual: prepared.kind(),
        wanted,
    }
}

/// A running transform instance. After a [`PluginError::Fault`] or
/// [`PluginError::Contract`] it must be dropped.
#[derive(Debug)]
pub struct TransformInstance {
    sandbox: Sandbox,
    process: Func,
}

/// How a call ended when it did not return normally.
enum CallError {
    Wasm(wasmtime::Error),
    TimerExpired,
    Contract(String),
}

impl From<wasmtime::Error> for CallError {
    fn from(error: wasmtime::Error) -> Self {
        Self::Wasm(error)
    }
}

impl TransformInstance {
    /// Instantiates and calls `init`.
    pub(super) async fn start(
        engine: &Engine,
        prepared: &Prepared,
        spec: InstanceSpec<'_>,
    ) -> Result<Self, PluginError> {
        let Exports::Transform { indices, process } = &prepared.exports else {
            return Err(wrong_world(prepared, spec.plugin, PluginKind::Transform));
        };
        let (sandbox, _, process) =
            Sandbox::start(engine, prepared, spec, async |store, instance, config| {
                let guest = indices.load(&mut *store, instance)?;
                let process = instance
                    .get_func(&mut *store, process)
                    .ok_or_else(|| CallError::Contract("it has no process function".to_owned()))?;
                Ok((process, guest.call_init(&mut *store, config).await?))
            })
            .await?;
        Ok(Self { sandbox, process })
    }

    /// Transforms one batch. `Ok(Err(_))` is the plugin's verdict on one record; `Err(_)` is a
    /// fault or a broken contract, after which this instance must be dropped.
    pub async fn process(
        &mut self,
        info: &BatchInfo,
        records: &[Record],
    ) -> Result<Result<Vec<Record>, RecordError>, PluginError> {
        self.sandbox.call_batch(self.process, info, records).await
    }

    pub fn plugin(&self) -> &str {
        self.sandbox.plugin()
    }
}

/// Runs a connector's `plan` in an instance of its own, which is dropped afterwards.
pub(super) async fn plan(
    engine: &Engine,
    prepared: &Prepared,
    spec: InstanceSpec<'_>,
    max_tasks: u32,
) -> Result<Vec<Vec<(String, String)>>, PluginError> {
    let plugin = spec.plugin.to_owned();
    let (_, _, planned) = match &prepared.exports {
        Exports::Source(indices) => {
            Sandbox::start(engine, prepared, spec, async |store, instance, config| {
                let guest = indices.load(&mut *store, instance)?;
                let planned = guest.call_plan(&mut *store, config, max_tasks).await?;
                Ok((planned, Ok(())))
            })
            .await?
        }
        Exports::Sink { indices, .. } => {
            Sandbox::start(engine, prepared, spec, async |store, instance, config| {
                let guest = indices.load(&mut *store, instance)?;
                let planned = guest.call_plan(&mut *store, config, max_tasks).await?;
                Ok((planned, Ok(())))
            })
            .await?
        }
        Exports::Transform { .. } => {
            return Err(wrong_world(prepared, &plugin, PluginKind::Source));
        }
    };
    planned.map_err(|message| PluginError::ConfigRejected { plugin, message })
}

/// What one `poll` of a source produced: records (their `offset` is their index in the
/// poll) and the position after each.
#[derive(Debug, Default)]
pub struct Polled {
    pub records: Vec<Record>,
    pub positions: Vec<Bytes>,
}

/// A running source task.
pub struct SourceInstance {
    sandbox: Sandbox,
    guest: source_connector::Guest,
}

impl std::fmt::Debug for SourceInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SourceInstance")
            .field(&self.sandbox)
            .finish()
    }
}

impl SourceInstance {
    /// Instantiates and calls `init` with the position to resume after.
    pub(super) async fn start(
        engine: &Engine,
        prepared: &Prepared,
        spec: InstanceSpec<'_>,
        resume_after: Option<&[u8]>,
    ) -> Result<Self, PluginError> {
        let Exports::Source(indices) = &prepared.exports else {
            return Err(wrong_world(prepared, spec.plugin, PluginKind::Source));
        };
        let (sandbox, _, guest) =
            Sandbox::start(engine, prepared, spec, async |store, instance, config| {
                let guest = indices.load(&mut *store, instance)?;
                let verdict = guest.call_init(&mut *store, config, resume_after).await?;
                Ok((guest, verdict))
            })
            .await?;
        Ok(Self { sandbox, guest })
    }

    /// Polls for up to `max` records. `Ok(Err(_))` is the plugin's own error (its task
    /// fails with it); `Err(_)` is a fault.
    pub async fn poll(&mut self, max: u32) -> Result<Result<Polled, String>, PluginError> {
        let guest = &self.guest;
        self.sandbox
            .call(async |store| {
                let verdict = guest.call_poll(&mut *store, max).await?;
                let state = store.data_mut();
                let mut polled = Polled {
                    records: std::mem::take(&mut state.output),
                    positions: std::mem::take(&mut state.positions),
                };
                for (index, record) in polled.records.iter_mut().enumerate() {
                    record.offset = index as i64;
                }
                Ok(verdict.map(|()| polled))
            })
            .await
            .map(|verdict| verdict.map_err(|message| self.sandbox.refused.explain(message)))
    }

    pub fn plugin(&self) -> &str {
        self.sandbox.plugin()
    }
}

/// A running sink task.
pub struct SinkInstance {
    sandbox: Sandbox,
    guest: sink_connector::Guest,
    put: Func,
}

impl std::fmt::Debug for SinkInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SinkInstance").field(&self.sandbox).finish()
    }
}

impl SinkInstance {
    pub(super) async fn start(
        engine: &Engine,
        prepared: &Prepared,
        spec: InstanceSpec<'_>,
    ) -> Result<Self, PluginError> {
        let Exports::Sink { indices, put } = &prepared.exports else {
            return Err(wrong_world(prepared, spec.plugin, PluginKind::Sink));
        };
        let (sandbox, _, (guest, put)) =
            Sandbox::start(engine, prepared, spec, async |store, instance, config| {
                let guest = indices.load(&mut *store, instance)?;
                let put = instance
                    .get_func(&mut *store, put)
                    .ok_or_else(|| CallError::Contract("it has no put function".to_owned()))?;
                let verdict = guest.call_init(&mut *store, config).await?;
                Ok(((guest, put), verdict))
            })
            .await?;
        Ok(Self {
            sandbox,
            guest,
            put,
        })
    }

    /// Delivers a batch. `Ok(Err(e))`: the records before `e.index` are taken, that one is not.
    pub async fn put(
        &mut self,
        info: &BatchInfo,
        records: &[Record],
    ) -> Result<Result<(), RecordError>, PluginError> {
        let verdict = self.sandbox.call_batch(self.put, info, records).await?;
        Ok(verdict.map(drop).map_err(|error| RecordError {
            message: self.sandbox.refused.explain(error.message),
            ..error
        }))
    }

    pub async fn flush(&mut self) -> Result<Result<(), String>, PluginError> {
        let guest = &self.guest;
        self.sandbox
            .call(async |store| Ok(guest.call_flush(&mut *store).await?))
            .await
            .map(|verdict| verdict.map_err(|message| self.sandbox.refused.explain(message)))
    }

    pub fn plugin(&self) -> &str {
        self.sandbox.plugin()
    }
}

/// Runs one call under the instance's deadline: `timeout-ms` of epoch ticks, and a timer for
/// a guest that waits in the host instead of running.
async fn guarded<R>(
    store: &mut Store<InstanceState>,
    limits: Limits,
    call: impl AsyncFnOnce(&mut Store<InstanceState>) -> Result<R, CallError>,
) -> Result<R, CallError> {
    let tick_ms = EPOCH_TICK.as_millis() as u64;
    let state = store.data_mut();
    state.ticks_left = limits.timeout_ms.div_ceil(tick_ms);
    state.limiter.exceeded = false;
    state.output.clear();
    state.positions.clear();
    state.output_bytes = 0;
    state.output_overflow = false;
    store.set_epoch_deadline(1);
    let timer = Duration::from_millis(limits.timeout_ms) + TIMER_GRACE;
    match tokio::time::timeout(timer, call(store)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::TimerExpired),
    }
}

fn record_in(record: &Record) -> RecordIn<'_> {
    RecordIn {
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: record
            .headers
            .iter()
            .map(|h| HeaderIn {
                key: &h.key,
                value: &h.value,
            })
            .collect(),
        timestamp: record.timestamp,
        offset: record.offset,
        topic: record.topic.as_deref(),
    }
}

/// Copies emitted records out of the plugin's memory, counting their bytes against the
/// batch's [`MAX_OUTPUT_BYTES`] before copying any. Keys, values and header values go into one
/// buffer per call, which the records share.
fn read_records(
    store: &mut StoreContextMut<'_, InstanceState>,
    emitted: Vec<RecordOut>,
) -> wasmtime::Result<Vec<Record>> {
    let mut headers_of = Vec::with_capacity(emitted.len());
    let mut arena_len = 0usize;
    for out in &emitted {
        let mut text_bytes = 0usize;
        // Most records have no headers; reading an empty list still costs a lift context.
        let headers: Vec<HeaderOut> = if out.headers.len() == 0 {
            Vec::new()
        } else {
            out.headers
                .iter(&mut *store)?
                .collect::<wasmtime::Result<_>>()?
        };
        // Strings are borrowed from the plugin's memory to be measured before being copied.
        if let Some(topic) = &out.topic {
            text_bytes = text_bytes.saturating_add(topic.to_str(&*store)?.len());
        }
        let mut bytes =
            out.key.as_ref().map_or(0, WasmList::len) + out.value.as_ref().map_or(0, WasmList::len);
        for header in &headers {
            text_bytes = text_bytes.saturating_add(header.key.to_str(&*store)?.len());
            bytes = bytes.saturating_add(header.value.len());
        }
        charge(store.data_mut(), text_bytes.saturating_add(bytes))?;
        arena_len += bytes;
        headers_of.push(headers);
    }
    let mut arena = BytesMut::with_capacity(arena_len);
    let mut copy = |list: &WasmList<u8>| {
        let start = arena.len();
        arena.extend_from_slice(list.as_le_slice(&*store));
        start..arena.len()
    };
    let mut spans = Vec::with_capacity(emitted.len());
    for (out, headers) in emitted.iter().zip(&headers_of) {
        let key = out.key.as_ref().map(&mut copy);
        let value = out.value.as_ref().map(&mut copy);
        let header_values: Vec<_> = headers.iter().map(|h| copy(&h.value)).collect();
        spans.push((key, value, header_values));
    }
    let arena = arena.freeze();
    let text = |string: &WasmStr| string.to_str(&*store).map(|t| t.into_owned());
    let mut records = Vec::with_capacity(emitted.len());
    for ((out, headers), (key, value, header_values)) in emitted.iter().zip(&headers_of).zip(spans)
    {
        let headers = headers
            .iter()
            .zip(header_values)
            .map(|(h, span)| {
                Ok(Header {
                    key: text(&h.key)?,
                    value: arena.slice(span),
                })
            })
            .collect::<wasmtime::Result<_>>()?;
        records.push(Record {
            key: key.map(|span| arena.slice(span)),
            value: value.map(|span| arena.slice(span)),
            headers,
            timestamp: out.timestamp,
            offset: out.offset,
            topic: out.topic.as_ref().map(text).transpose()?,
        });
    }
    Ok(records)
}

/// Counts `len` more bytes of output against the batch's budget.
fn charge(state: &mut InstanceState, len: usize) -> wasmtime::Result<()> {
    state.output_bytes = state.output_bytes.saturating_add(len);
    if state.output_bytes > MAX_OUTPUT_BYTES {
        state.output_overflow = true;
        wasmtime::bail!("output over {} MiB", MAX_OUTPUT_BYTES >> 20);
    }
    Ok(())
}

/// Whether a config key is the host's (a limit or a grant) rather than the plugin's.
pub fn is_host_key(key: &str) -> bool {
    matches!(key, "max-memory-mb" | "timeout-ms") || key.starts_with("wasi.")
}

/// Splits the host's keys (limits and WASI grants) from the plugin's configuration.
#[allow(clippy::type_complexity)]
async fn sandbox(
    plugin: &str,
    config: &[(String, String)],
    default_limits: Limits,
) -> Result<
    (
        Limits,
        WasiCtxBuilder,
        Vec<(String, String)>,
        RefusedConnection,
    ),
    PluginError,
> {
    let grant_error = |key: &str, reason: String| PluginError::InvalidGrant {
        plugin: plugin.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let mut keys = HashSet::new();
    for (key, _) in config {
        if !matches!(key.as_str(), "wasi.dir" | "wasi.dir-rw") && !keys.insert(key.as_str()) {
            return Err(grant_error(
                key,
                "is given more than once; give each key once (only wasi.dir and wasi.dir-rw \
                 may repeat)"
                    .to_owned(),
            ));
        }
    }
    let mut limits = default_limits;
    let mut wasi = WasiCtxBuilder::new();
    let mut plugin_config = Vec::with_capacity(config.len());
    let mut outbound: HashSet<SocketAddr> = HashSet::new();
    for (key, value) in config {
        match key.as_str() {
            "max-memory-mb" => {
                limits.max_memory_mb =
                    parse_limit(value, 1, 4096).map_err(|reason| grant_error(key, reason))?;
            }
            "timeout-ms" => {
                limits.timeout_ms =
                    parse_limit(value, 1, 3_600_000).map_err(|reason| grant_error(key, reason))?;
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
            "wasi.net" => {
                for target in value.split('|').map(str::trim).filter(|t| !t.is_empty()) {
                    let resolved = tokio::net::lookup_host(target).await.map_err(|e| {
                        grant_error(key, format!("{target:?} is not a reachable HOST:PORT: {e}"))
                    })?;
                    outbound.extend(resolved);
                }
            }
            other => match other.strip_prefix("wasi.env.") {
                Some(name) if !name.is_empty() => {
                    wasi.env(name, value);
                }
                _ if other.starts_with("wasi.") => {
                    return Err(grant_error(
                        key,
                        "unknown capability; grants are wasi.dir, wasi.dir-rw, wasi.net and \
                         wasi.env.NAME"
                            .to_owned(),
                    ));
                }
                _ => plugin_config.push((key.clone(), value.clone())),
            },
        }
    }
    // Outbound TCP to the granted addresses only: the implicit bind a connect makes (to the
    // wildcard address) and the connect itself. No listening, no UDP, and name lookups only
    // for a plugin granted somewhere to connect to. A refused connect is remembered: the guest
    // only learns "access denied" (which a Rust guest prints as "Permission denied (os error
    // 2)"), so the host names the address and the grant in the plugin's next error.
    let refused = RefusedConnection::default();
    let remembered = refused.clone();
    wasi.allow_tcp(true)
        .allow_udp(false)
        .allow_ip_name_lookup(!outbound.is_empty())
        .socket_addr_check(move |addr, use_| {
            let allowed = match use_ {
                SocketAddrUse::TcpConnect => outbound.contains(&addr),
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            if !allowed && matches!(use_, SocketAddrUse::TcpConnect) {
                remembered.remember(addr);
            }
            Box::pin(async move { allowed })
        });
    Ok((limits, wasi, plugin_config, refused))
}

/// The last address the sandbox refused a plugin instance a connection to.
#[derive(Debug, Clone, Default)]
struct RefusedConnection(Arc<Mutex<Option<SocketAddr>>>);

impl RefusedConnection {
    fn remember(&self, addr: SocketAddr) {
        *lock(&self.0) = Some(addr);
    }

    /// `message` (the plugin's own error) with the refused connection named, if there was
    /// one since the last error.
    fn explain(&self, message: String) -> String {
        match lock(&self.0).take() {
            Some(addr) => format!(
                "{message} (the sandbox refused it a connection to {addr}, which it was not \
                 granted: add wasi.net={addr} to its config)"
            ),
            None => message,
        }
    }
}

/// Names why a call failed: the memory limit, the deadline, a broken contract, or a trap (with
/// the end of what the plugin wrote to stderr, where a Rust guest's panic message goes).
fn classify(store: &Store<InstanceState>, limits: Limits, error: CallError) -> PluginError {
    let state = store.data();
    let plugin = state.plugin.to_string();
    let fault = match error {
        CallError::Contract(detail) => return PluginError::Contract { plugin, detail },
        CallError::Wasm(_) if state.output_overflow => {
            return PluginError::Contract {
                plugin,
                detail: format!(
                    "it emitted more than {} MiB for one batch",
                    MAX_OUTPUT_BYTES >> 20
                ),
            };
        }
        CallError::TimerExpired => Fault::Timeout {
            limit_ms: limits.timeout_ms,
        },
        CallError::Wasm(_) if state.limiter.exceeded => Fault::OutOfMemory {
            limit_mb: limits.max_memory_mb,
        },
        CallError::Wasm(error) if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
            Fault::Timeout {
                limit_ms: limits.timeout_ms,
            }
        }
        CallError::Wasm(error) => {
            let cause = match error.downcast_ref::<Trap>() {
                Some(trap) => trap.to_string(),
                None => format!("{error:#}"),
            };
            let tail = state.stderr.text();
            Fault::Trap {
                message: if tail.is_empty() {
                    cause
                } else {
                    format!("{cause}; plugin stderr: {tail}")
                },
            }
        }
    };
    PluginError::Fault { plugin, fault }
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
