//! One sandboxed plugin instance: its own `Store` with a WASI context that grants only what its
//! config grants, a memory limiter over all of its memories, a deadline per call, a captured
//! stderr (a Rust guest's panic message lands there) and the host functions of
//! `appliance:plugin/host`.
//!
//! Calls are async. The epoch callback makes a running guest yield to the executor at every
//! tick, so a busy plugin shares its thread, and traps it once its `timeout-ms` of ticks are
//! spent; a timer around the call catches a guest that waits inside a host call instead (a WASI
//! sleep). A transform that exports `encoded-transformer` (every Rust one) gets each batch
//! encoded in one buffer and emits its output the same way through `encoded-output.emit`;
//! otherwise (or with `batch-abi=typed`) records cross typed, in borrowed form on the way in
//! (lowered straight from the log's buffers, no copy on the host), and the output arrives
//! through the `output.emit` import. Either way the host reads output while the call runs,
//! straight from the plugin's memory, counting bytes before copying them, so no plugin can
//! make the host allocate more than [`abi::MAX_OUTPUT_BYTES`] per batch (lists in a plugin's memory
//! may overlap, so its output could otherwise be far larger than its memory).
//!
//! ```text
//! mod.rs      the kinds of instance (transform, source, sink) and the plan call
//! abi.rs      records across the boundary, in and out
//! host.rs     the store's state, host functions, stderr, the linker
//! sandbox.rs  grants, memory and time limits, and how a failed call is named
//! state.rs    the state store of a stateful transform (`appliance:plugin/state`)
//! ```

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use appliance_sdk::encoded;
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

mod abi;
mod host;
mod sandbox;
mod state;

use self::abi::record_ref;
pub use self::abi::{Header, Record};
pub use self::host::{InstanceCounters, InstanceState, linker};
pub(super) use self::sandbox::InstanceSpec;
pub use self::sandbox::is_host_key;
use self::sandbox::{BatchAbi, CallError, Sandbox};
pub use self::state::{StateChanges, StateStore};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        // One world with the imports and exports of all three plugin worlds, so they share
        // one set of types and host traits; an instance loads only its own world's exports.
        inline: "
            package appliance:host;
            world plugins {
                include appliance:plugin/stateful-transform@0.1.0;
                include appliance:plugin/acknowledging-source@0.1.0;
                include appliance:plugin/sink@0.1.0;
            }
        ",
        world: "appliance:host/plugins",
        imports: { "appliance:plugin/state": trappable },
        exports: { default: async },
        with: { "appliance:plugin/state.bucket": crate::plugin::instance::state::Bucket },
    });
}

use bindings::appliance::plugin::host::{Host, Level};
pub use bindings::appliance::plugin::types::{BatchInfo, RecordError};
use bindings::exports::appliance::plugin::{
    config_schema, sink_connector, source_acknowledger, source_connector, transformer,
};

const STATE_IMPORT: &str = "appliance:plugin/state@0.1.0";
const CONFIG_SCHEMA_EXPORT: &str = "appliance:plugin/config-schema@0.1.0";
/// The most keys a plugin may declare secret, and the longest such key.
const MAX_SECRET_KEYS: usize = 256;
const MAX_KEY_LEN: usize = 256;
const TRANSFORMER_EXPORT: &str = "appliance:plugin/transformer@0.1.0";
const ENCODED_TRANSFORMER_EXPORT: &str = "appliance:plugin/encoded-transformer@0.1.0";
const SINK_EXPORT: &str = "appliance:plugin/sink-connector@0.1.0";
const SOURCE_ACKNOWLEDGER_EXPORT: &str = "appliance:plugin/source-acknowledger@0.1.0";
/// The export names of the plugin worlds, as they appear in a component's type.
const WORLD_EXPORTS: [(&str, PluginKind); 3] = [
    (TRANSFORMER_EXPORT, PluginKind::Transform),
    (
        "appliance:plugin/source-connector@0.1.0",
        PluginKind::Source,
    ),
    (SINK_EXPORT, PluginKind::Sink),
];

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
    /// Whether the component imports `appliance:plugin/state`: a stateful transform.
    uses_state: bool,
    exports: Exports,
    /// None when the component declares nothing about its configuration.
    config_schema: Option<config_schema::GuestIndices>,
}

/// Where the functions of the plugin's world are, found once per component.
enum Exports {
    Transform {
        indices: transformer::GuestIndices,
        process: ComponentExportIndex,
        /// `encoded-transformer.process`, where the component exports it.
        encoded: Option<ComponentExportIndex>,
    },
    Source {
        indices: source_connector::GuestIndices,
        /// `source-acknowledger`, where the component exports it.
        acknowledger: Option<source_acknowledger::GuestIndices>,
    },
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
            encoded: component
                .get_export_index(None, ENCODED_TRANSFORMER_EXPORT)
                .map(|_| function(ENCODED_TRANSFORMER_EXPORT, "process"))
                .transpose()?,
        },
        PluginKind::Source => Exports::Source {
            indices: source_connector::GuestIndices::new(&pre).map_err(mismatch)?,
            acknowledger: optional_export(component, SOURCE_ACKNOWLEDGER_EXPORT, || {
                source_acknowledger::GuestIndices::new(&pre)
            })?,
        },
        PluginKind::Sink => Exports::Sink {
            indices: sink_connector::GuestIndices::new(&pre).map_err(mismatch)?,
            put: function(SINK_EXPORT, "put")?,
        },
    };
    let config_schema = optional_export(component, CONFIG_SCHEMA_EXPORT, || {
        config_schema::GuestIndices::new(&pre)
    })?;
    let uses_state = component
        .component_type()
        .imports(linker.engine())
        .any(|(name, _)| name == STATE_IMPORT);
    if uses_state && kind != PluginKind::Transform {
        return Err(format!(
            "it imports {STATE_IMPORT}, which only transforms have (world stateful-transform)"
        ));
    }
    Ok(Prepared {
        pre,
        uses_state,
        exports,
        config_schema,
    })
}

/// The indices of an interface the component may export: none when it does not, an error
/// when it does with functions of other types than the ABI's.
fn optional_export<T>(
    component: &Component,
    export: &str,
    indices: impl FnOnce() -> wasmtime::Result<T>,
) -> Result<Option<T>, String> {
    component
        .get_export_index(None, export)
        .map(|_| indices())
        .transpose()
        .map_err(|e| format!("its export {export} does not match the ABI: {e:#}"))
}

/// The configuration keys the plugin declares secret, asked of an instance of its own.
pub(super) async fn secret_keys(
    engine: &Engine,
    prepared: &Prepared,
    spec: InstanceSpec<'_>,
) -> Result<Vec<String>, PluginError> {
    let Some(indices) = &prepared.config_schema else {
        return Ok(Vec::new());
    };
    let plugin = spec.plugin.to_owned();
    let (_, _, keys) = Sandbox::start(engine, prepared, spec, async |store, instance, _| {
        let guest = indices.load(&mut *store, instance)?;
        Ok((guest.call_secret_keys(&mut *store).await?, Ok(())))
    })
    .await?;
    if keys.len() > MAX_SECRET_KEYS || keys.iter().any(|key| key.len() > MAX_KEY_LEN) {
        return Err(PluginError::Contract {
            plugin,
            detail: format!(
                "it declares more than {MAX_SECRET_KEYS} secret keys or one longer than \
                 {MAX_KEY_LEN} bytes"
            ),
        });
    }
    Ok(keys)
}

impl Prepared {
    pub fn uses_state(&self) -> bool {
        self.uses_state
    }

    pub fn kind(&self) -> PluginKind {
        match self.exports {
            Exports::Transform { .. } => PluginKind::Transform,
            Exports::Source { .. } => PluginKind::Source,
            Exports::Sink { .. } => PluginKind::Sink,
        }
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
    /// `encoded-transformer.process`, used instead of `process` where the plugin exports it
    /// and the instance's `batch-abi` allows it.
    process_encoded: Option<Func>,
    stateful: bool,
}

impl TransformInstance {
    /// Instantiates and calls `init`.
    pub(super) async fn start(
        engine: &Engine,
        prepared: &Prepared,
        spec: InstanceSpec<'_>,
    ) -> Result<Self, PluginError> {
        let Exports::Transform {
            indices,
            process,
            encoded,
        } = &prepared.exports
        else {
            return Err(wrong_world(prepared, spec.plugin, PluginKind::Transform));
        };
        let (mut sandbox, _, (process, process_encoded)) =
            Sandbox::start(engine, prepared, spec, async |store, instance, config| {
                let guest = indices.load(&mut *store, instance)?;
                let function = |store: &mut Store<InstanceState>, index| {
                    instance
                        .get_func(store, index)
                        .ok_or_else(|| CallError::Contract("it has no process function".to_owned()))
                };
                let process = function(&mut *store, process)?;
                let process_encoded = encoded
                    .as_ref()
                    .map(|index| function(&mut *store, index))
                    .transpose()?;
                let verdict = guest.call_init(&mut *store, config).await?;
                Ok(((process, process_encoded), verdict))
            })
            .await?;
        // The store is restored after `init`: what `init` wrote would overwrite it.
        sandbox.store.data_mut().state.discard_call();
        let process_encoded = process_encoded.filter(|_| sandbox.batch_abi == BatchAbi::Auto);
        Ok(Self {
            sandbox,
            process,
            process_encoded,
            stateful: prepared.uses_state,
        })
    }

    /// Transforms one batch. `Ok(Err(_))` is the plugin's verdict on one record; `Err(_)` is a
    /// fault or a broken contract, after which this instance must be dropped.
    pub async fn process(
        &mut self,
        info: &BatchInfo,
        records: &[Record],
    ) -> Result<Result<Vec<Record>, RecordError>, PluginError> {
        let encoded = self.process_encoded.and_then(|function| {
            Some((
                function,
                encoded::encode(records.iter().map(record_ref)).ok()?,
            ))
        });
        let verdict = match encoded {
            Some((function, encoded)) => self.sandbox.call_encoded(function, info, &encoded).await,
            // A batch with a field of 4 GiB or more has no encoding; it crosses typed.
            None => self.sandbox.call_batch(self.process, info, records).await,
        };
        let state = &mut self.sandbox.store.data_mut().state;
        match verdict {
            Ok(Ok(_)) => state.keep_call(),
            _ => state.discard_call(),
        }
        verdict
    }

    /// The bytes of memory the instance holds (its linear memories and tables).
    pub fn memory_bytes(&self) -> usize {
        self.sandbox.store.data().limiter.total_bytes
    }

    /// Whether the plugin keeps state (imports `appliance:plugin/state`).
    pub fn is_stateful(&self) -> bool {
        self.stateful
    }

    /// The instance's state store, between calls.
    pub fn state(&mut self) -> &mut StateStore {
        &mut self.sandbox.store.data_mut().state
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
        Exports::Source { indices, .. } => {
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
    /// The plugin's `source-acknowledger`, kept only when it answered that it polls ahead.
    acknowledger: Option<source_acknowledger::Guest>,
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
        let Exports::Source {
            indices,
            acknowledger,
        } = &prepared.exports
        else {
            return Err(wrong_world(prepared, spec.plugin, PluginKind::Source));
        };
        let (sandbox, _, (guest, acknowledger)) =
            Sandbox::start(engine, prepared, spec, async |store, instance, config| {
                let guest = indices.load(&mut *store, instance)?;
                let verdict = guest.call_init(&mut *store, config, resume_after).await?;
                let acknowledger = match acknowledger {
                    Some(indices) if verdict.is_ok() => {
                        let acknowledger = indices.load(&mut *store, instance)?;
                        let polls_ahead = acknowledger.call_polls_ahead(&mut *store).await?;
                        polls_ahead.then_some(acknowledger)
                    }
                    _ => None,
                };
                Ok(((guest, acknowledger), verdict))
            })
            .await?;
        Ok(Self {
            sandbox,
            guest,
            acknowledger,
        })
    }

    /// Whether the task may poll again before the last poll's records are durable
    /// (`source-acknowledger.polls-ahead`).
    pub fn polls_ahead(&self) -> bool {
        self.acknowledger.is_some()
    }

    /// Tells a source that polls ahead that the records of its polls up to the one that ended
    /// at `position` are durable. `Ok(Err(_))` is the plugin's own error.
    pub async fn acknowledge(
        &mut self,
        position: &[u8],
    ) -> Result<Result<(), String>, PluginError> {
        let Some(acknowledger) = &self.acknowledger else {
            return Ok(Ok(()));
        };
        self.sandbox
            .call(async |store| {
                let verdict = acknowledger.call_acknowledge(&mut *store, position).await?;
                if !store.data().output.is_empty() {
                    return Err(CallError::Contract(
                        "it emitted records in acknowledge; a source emits only in poll".to_owned(),
                    ));
                }
                Ok(verdict)
            })
            .await
            .map(|verdict| verdict.map_err(|message| self.sandbox.refused.explain(message)))
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
