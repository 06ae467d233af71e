//! What an instance may use, and for how long and how much: its grants (WASI directories and
//! network addresses from the config's `wasi.*` keys), its memory limit, its deadline per
//! call, and how a call that failed is named.

use super::abi::{BatchParams, BatchResults, EncodedParams, RecordIn, record_in};
use super::host::StderrTail;
use super::*;

const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Beyond `timeout-ms`, how long the timer around a call waits for the epoch deadline.
const TIMER_GRACE: Duration = Duration::from_millis(500);

/// Limits the total of all of an instance's memories.
#[derive(Debug)]
pub(super) struct MemoryLimiter {
    pub(super) max_bytes: usize,
    pub(super) total_bytes: usize,
    pub(super) exceeded: bool,
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

/// Who an instance is, and what it may use.
#[derive(Debug)]
pub(in crate::plugin) struct InstanceSpec<'a> {
    pub plugin: &'a str,
    pub label: &'a str,
    /// The plugin's config, possibly with the host's keys (`max-memory-mb`, `timeout-ms`,
    /// `wasi.*`), which are taken out before the plugin sees the rest.
    pub config: &'a [(String, String)],
    pub default_limits: Limits,
    pub counters: Arc<InstanceCounters>,
}

/// One store with its limits: what every kind of instance runs in.
pub(super) struct Sandbox {
    pub(super) store: Store<InstanceState>,
    pub(super) limits: Limits,
    pub(super) batch_abi: BatchAbi,
    pub(super) refused: RefusedConnection,
}

impl Sandbox {
    /// Builds the store and instantiates the component, then runs `init` on the instance
    /// with the plugin's part of the config; `init` returns the plugin's verdict on it.
    pub(super) async fn start<G>(
        engine: &Engine,
        prepared: &Prepared,
        spec: InstanceSpec<'_>,
        init: impl AsyncFnOnce(
            &mut Store<InstanceState>,
            &Instance,
            &Vec<(String, String)>,
        ) -> Result<(G, Result<(), String>), CallError>,
    ) -> Result<(Self, Instance, G), PluginError> {
        let (limits, batch_abi, mut wasi, plugin_config, refused) =
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
            output_refused: None,
            plugin: spec.plugin.into(),
            label: spec.label.into(),
            counters: spec.counters,
            state: super::StateStore::default(),
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
            batch_abi,
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
    pub(super) async fn call<R>(
        &mut self,
        call: impl AsyncFnOnce(&mut Store<InstanceState>) -> Result<R, CallError>,
    ) -> Result<R, PluginError> {
        let result = guarded(&mut self.store, self.limits, call).await;
        result.map_err(|error| classify(&self.store, self.limits, error))
    }

    /// Calls a batch function (`process`, `put`): a batch of borrowed records in, a verdict on
    /// one record out, with what the call emitted.
    pub(super) async fn call_batch(
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

    /// Calls `encoded-transformer.process`: the batch encoded in one buffer, the output read
    /// through `encoded-output.emit`.
    pub(super) async fn call_encoded(
        &mut self,
        function: Func,
        info: &BatchInfo,
        encoded: &[u8],
    ) -> Result<Result<Vec<Record>, RecordError>, PluginError> {
        self.call(async |store| {
            let typed = function.typed::<EncodedParams<'_>, BatchResults>(&*store)?;
            let (verdict,) = typed.call_async(&mut *store, (info, encoded)).await?;
            let output = std::mem::take(&mut store.data_mut().output);
            Ok(verdict.map(|()| output))
        })
        .await
    }

    pub(super) fn plugin(&self) -> &str {
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

/// How a call ended when it did not return normally.
pub(super) enum CallError {
    Wasm(wasmtime::Error),
    TimerExpired,
    Contract(String),
}

impl From<wasmtime::Error> for CallError {
    fn from(error: wasmtime::Error) -> Self {
        Self::Wasm(error)
    }
}

/// Runs one call under the instance's deadline: `timeout-ms` of epoch ticks, and a timer for
/// a guest that waits in the host instead of running.
pub(super) async fn guarded<R>(
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
    state.output_refused = None;
    store.set_epoch_deadline(1);
    let timer = Duration::from_millis(limits.timeout_ms) + TIMER_GRACE;
    match tokio::time::timeout(timer, call(store)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::TimerExpired),
    }
}

/// Whether a config key is the host's (a limit or a grant) rather than the plugin's.
pub fn is_host_key(key: &str) -> bool {
    matches!(
        key,
        "max-memory-mb" | "timeout-ms" | "snapshot-interval" | "batch-abi"
    ) || key.starts_with("wasi.")
}

/// How batches cross into a transform (its `batch-abi` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BatchAbi {
    /// Encoded in one buffer where the plugin exports `encoded-transformer`, else typed.
    Auto,
    /// As typed WIT records always (`batch-abi=typed`).
    Typed,
}

/// Splits the host's keys (limits and WASI grants) from the plugin's configuration.
#[allow(clippy::type_complexity)]
pub(super) async fn sandbox(
    plugin: &str,
    config: &[(String, String)],
    default_limits: Limits,
) -> Result<
    (
        Limits,
        BatchAbi,
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
    let mut batch_abi = BatchAbi::Auto;
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
            "batch-abi" => {
                batch_abi = match value.as_str() {
                    "auto" => BatchAbi::Auto,
                    "typed" => BatchAbi::Typed,
                    _ => {
                        return Err(grant_error(
                            key,
                            format!("expected auto (the default) or typed, not {value:?}"),
                        ));
                    }
                };
            }
            // The pipeline's, for a stateful transform's snapshots.
            "snapshot-interval" => {}
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
    Ok((limits, batch_abi, wasi, plugin_config, refused))
}

/// The last address the sandbox refused a plugin instance a connection to.
#[derive(Debug, Clone, Default)]
pub(super) struct RefusedConnection(Arc<Mutex<Option<SocketAddr>>>);

impl RefusedConnection {
    pub(super) fn remember(&self, addr: SocketAddr) {
        *lock(&self.0) = Some(addr);
    }

    /// `message` (the plugin's own error) with the refused connection named, if there was
    /// one since the last error.
    pub(super) fn explain(&self, message: String) -> String {
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
pub(super) fn classify(
    store: &Store<InstanceState>,
    limits: Limits,
    error: CallError,
) -> PluginError {
    let state = store.data();
    let plugin = state.plugin.to_string();
    let fault = match error {
        CallError::Contract(detail) => return PluginError::Contract { plugin, detail },
        CallError::Wasm(_) if state.output_refused.is_some() => {
            return PluginError::Contract {
                plugin,
                detail: state.output_refused.clone().unwrap_or_default(),
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

pub(super) fn parse_limit(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from {min} to {max}, not {value:?}"
        )),
    }
}
