//! The host side of an instance: its state in the store, the host functions of
//! `appliance:plugin/host` (log, counters), the captured stderr, and the linker every instance
//! is made from (with `appliance:plugin/state`, in [`super::state`]).

use super::abi::{RecordOut, SourceRecordOut, charge, read_encoded, read_records};
use super::sandbox::MemoryLimiter;
use super::*;

/// How much of a trapped plugin's stderr goes into its status.
const STDERR_IN_STATUS: usize = 1024;
/// The last this many bytes a plugin wrote to stderr are kept.
const STDERR_KEPT: usize = 4096;
const MAX_LOG_MESSAGE: usize = 4096;
const MAX_COUNTERS: usize = 64;
const MAX_COUNTER_NAME: usize = 128;
const OUTPUT_IMPORT: &str = "appliance:plugin/output@0.1.0";
const ENCODED_OUTPUT_IMPORT: &str = "appliance:plugin/encoded-output@0.1.0";
const SOURCE_OUTPUT_IMPORT: &str = "appliance:plugin/source-output@0.1.0";

/// The counters an instance keeps through `counter-add`.
#[derive(Debug, Default)]
pub struct InstanceCounters(Mutex<BTreeMap<String, u64>>);

impl InstanceCounters {
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        lock(&self.0).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The end of what a plugin wrote to stderr; writes never fail, old bytes are dropped.
#[derive(Debug, Clone, Default)]
pub(super) struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

impl StderrTail {
    pub(super) fn text(&self) -> String {
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
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) stderr: StderrTail,
    /// Epoch ticks the call in progress may still run.
    pub(super) ticks_left: u64,
    /// What the call in progress emitted so far (and a source, the position after each
    /// record), and its size.
    pub(super) output: Vec<Record>,
    pub(super) positions: Vec<Bytes>,
    pub(super) output_bytes: usize,
    /// Why the host refused what the call in progress emitted (more than
    /// [`MAX_OUTPUT_BYTES`], or encoded output that does not decode): a broken contract.
    pub(super) output_refused: Option<String>,
    pub(super) plugin: Arc<str>,
    pub(super) label: Arc<str>,
    pub(super) counters: Arc<InstanceCounters>,
    /// A stateful transform's state store (empty for any other instance).
    pub(super) state: super::StateStore,
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
/// store's context decides), the appliance's host functions, and the `emit`s of the output
/// interfaces, defined here rather than through the generated bindings so that they read
/// their argument lazily.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::appliance::plugin::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    bindings::appliance::plugin::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    bindings::appliance::plugin::state::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
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
    linker.instance(ENCODED_OUTPUT_IMPORT)?.func_wrap(
        "emit",
        |mut store: StoreContextMut<'_, InstanceState>, (list,): (WasmList<u8>,)| {
            let records = read_encoded(&mut store, &list)?;
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

pub(super) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
