//! The guest side of the appliance's plugin ABI: what plugin authors depend on.
//!
//! A transform is a plain Rust type implementing [`Transform`], exported with
//! [`#[transform]`](transform) (a stateful one keeps its state in [`state`]); connectors implement [`Source`] or [`Sink`] and are exported
//! with [`#[source]`](source) or [`#[sink]`](sink). The appliance hands it batches of [`Record`]s; the default
//! [`Transform::process`] calls [`Transform::apply`] once per record, so most transforms only
//! write `apply`. Build with `cargo build --target wasm32-wasip2 --release` and load the
//! resulting `.wasm` with `appliance plugin add`.
//!
//! The WIT worlds in `sdk/wit/` are the single source of truth of the ABI: the host's bindings
//! and the ones in [`wit`] are generated from the same file. A transform exported here takes
//! its batches encoded in one buffer ([`encoded`], world `encoded-transform`) as well as typed,
//! which the host prefers; the plugin's code is the same for both. Records, headers and batch
//! information are the generated WIT types, extended here with helpers ([`json`] for values,
//! header accessors on [`Record`]).

mod config;
mod connector;
pub mod encoded;
pub mod host;
#[cfg(feature = "java-date-format")]
pub mod java_date_format;
pub mod json;
mod record;
mod side;
pub mod state;
pub mod testing;

pub use appliance_sdk_macros::{sink, source, transform};
pub use config::Config;
pub use connector::{Sink, Source};
pub use side::Side;

/// Bindings generated from `sdk/wit/plugin.wit`: the shared types and the host's imports.
#[allow(unsafe_code, missing_debug_implementations, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package appliance:sdk;
            world imports {
                import appliance:plugin/types@0.1.0;
                import appliance:plugin/host@0.1.0;
                import appliance:plugin/state@0.1.0;
            }
        ",
        world: "appliance:sdk/imports",
        generate_all,
    });
}

pub use wit::appliance::plugin::types::{BatchInfo, Header, Record, RecordError, SourceRecord};

/// A single-message transform. One instance serves one partition of one pipeline, so it may
/// keep state between batches.
pub trait Transform: Sized + Send + 'static {
    /// The configuration keys whose values are secrets (passwords, tokens). The appliance
    /// accepts them only as references (`${file:PATH}`, `${env:NAME}`) and hands `init` the
    /// resolved value, so the secret is never stored, shown or logged.
    const SECRET_KEYS: &'static [&'static str] = &[];

    /// Builds the instance from the operator's configuration; an error rejects it and its
    /// message is shown to the operator, so say which key is wrong and what it expects.
    fn init(config: Config) -> Result<Self, String>;

    /// Transforms one record: `Ok(None)` drops it, an error hands it to the pipeline's error
    /// policy (fail, skip or dead-letter).
    fn apply(&mut self, info: &BatchInfo, record: Record) -> Result<Option<Record>, String>;

    /// Transforms one batch. Override it to split records or to work on the batch as a whole;
    /// every output record must keep the `offset` of the input record it came from.
    fn process(
        &mut self,
        info: &BatchInfo,
        records: Vec<Record>,
    ) -> Result<Vec<Record>, RecordError> {
        apply_each(self, info, records)
    }
}

/// [`Transform::apply`] on each record of a batch, in order: the default
/// [`Transform::process`], for overrides that handle only some batches themselves.
pub fn apply_each<T: Transform>(
    transform: &mut T,
    info: &BatchInfo,
    records: Vec<Record>,
) -> Result<Vec<Record>, RecordError> {
    let mut out = Vec::with_capacity(records.len());
    for (index, record) in records.into_iter().enumerate() {
        match transform.apply(info, record) {
            Ok(Some(record)) => out.push(record),
            Ok(None) => {}
            Err(message) => {
                return Err(RecordError {
                    index: index as u32,
                    message,
                });
            }
        }
    }
    Ok(out)
}

/// What the export macro expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::sync::Mutex;

    pub use wit_bindgen;

    use super::{BatchInfo, Config, Record, RecordError, Sink, Source, SourceRecord, Transform};

    /// A configuration as it crosses the ABI.
    pub type Pairs = Vec<(String, String)>;

    /// The instance of the exported type: one per WebAssembly instance.
    pub struct Slot<T>(Mutex<Option<T>>);

    impl<T> Slot<T> {
        pub const fn new() -> Self {
            Self(Mutex::new(None))
        }

        fn set(&self, value: T) {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        }

        /// Runs `call` on the instance; before a successful init there is none.
        fn with<R>(&self, call: impl FnOnce(&mut T) -> R) -> Result<R, String> {
            let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
            guard
                .as_mut()
                .map(call)
                .ok_or_else(|| "called before a successful init".to_owned())
        }
    }

    impl<T> Default for Slot<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<T> std::fmt::Debug for Slot<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Slot")
        }
    }

    pub fn transform_init<T: Transform>(slot: &Slot<T>, config: Pairs) -> Result<(), String> {
        slot.set(T::init(Config::new(config))?);
        Ok(())
    }

    pub fn transform_process<T: Transform>(
        slot: &Slot<T>,
        info: BatchInfo,
        records: Vec<Record>,
    ) -> Result<Vec<Record>, RecordError> {
        slot.with(|instance| instance.process(&info, records))
            .unwrap_or_else(|message| Err(RecordError { index: 0, message }))
    }

    /// `transform_process` on a batch encoded as [`crate::encoded`] describes, with the output
    /// encoded the same way. Bytes the host sent that do not decode, or output that cannot be
    /// encoded (a field of 4 GiB), trap: neither is a verdict on a record.
    pub fn transform_process_encoded<T: Transform>(
        slot: &Slot<T>,
        info: BatchInfo,
        encoded: &[u8],
    ) -> Result<Vec<u8>, RecordError> {
        let records = crate::encoded::decode(encoded)
            .unwrap_or_else(|e| panic!("the host sent a batch the SDK cannot read: {e}"))
            .into_iter()
            .map(Record::from)
            .collect();
        let output = transform_process(slot, info, records)?;
        Ok(
            crate::encoded::encode(output.iter().map(crate::encoded::RecordRef::from))
                .unwrap_or_else(|e| panic!("the output cannot be encoded: {e}")),
        )
    }

    fn pairs_of(configs: Vec<Config>) -> Vec<Pairs> {
        configs.into_iter().map(Config::into_pairs).collect()
    }

    pub fn source_plan<T: Source>(config: Pairs, max_tasks: u32) -> Result<Vec<Pairs>, String> {
        T::plan(Config::new(config), max_tasks).map(pairs_of)
    }

    pub fn source_init<T: Source>(
        slot: &Slot<T>,
        config: Pairs,
        resume_after: Option<Vec<u8>>,
    ) -> Result<(), String> {
        slot.set(T::init(Config::new(config), resume_after)?);
        Ok(())
    }

    pub fn source_poll<T: Source>(slot: &Slot<T>, max: u32) -> Result<Vec<SourceRecord>, String> {
        slot.with(|instance| instance.poll(max))?
    }

    pub fn source_polls_ahead<T: Source>(slot: &Slot<T>) -> bool {
        slot.with(|instance| instance.polls_ahead())
            .unwrap_or(false)
    }

    pub fn source_acknowledge<T: Source>(slot: &Slot<T>, position: Vec<u8>) -> Result<(), String> {
        slot.with(|instance| instance.acknowledge(position))?
    }

    pub fn sink_plan<T: Sink>(config: Pairs, max_tasks: u32) -> Result<Vec<Pairs>, String> {
        T::plan(Config::new(config), max_tasks).map(pairs_of)
    }

    pub fn sink_init<T: Sink>(slot: &Slot<T>, config: Pairs) -> Result<(), String> {
        slot.set(T::init(Config::new(config))?);
        Ok(())
    }

    pub fn sink_put<T: Sink>(
        slot: &Slot<T>,
        info: BatchInfo,
        records: Vec<Record>,
    ) -> Result<(), RecordError> {
        slot.with(|instance| instance.put(&info, records))
            .unwrap_or_else(|message| Err(RecordError { index: 0, message }))
    }

    pub fn sink_flush<T: Sink>(slot: &Slot<T>) -> Result<(), String> {
        slot.with(|instance| instance.flush())?
    }
}
