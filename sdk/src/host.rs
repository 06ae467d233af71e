//! What the appliance offers a plugin: logging, the wall clock and counters. Outside a
//! WebAssembly host (in a plugin's native unit tests) these do nothing and the clock reads the
//! system time.

use crate::wit::appliance::plugin::host as imports;

pub use imports::Level;

/// Logs through the appliance's log, tagged with the plugin instance.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    imports::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    let _ = (level, message);
}

/// Wall-clock time, milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    #[cfg(target_family = "wasm")]
    return imports::now_ms();
    #[cfg(not(target_family = "wasm"))]
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Adds `delta` to this instance's counter `name`, exported by the appliance as
/// `appliance_plugin_counter_total`.
pub fn counter_add(name: &str, delta: u64) {
    #[cfg(target_family = "wasm")]
    imports::counter_add(name, delta);
    #[cfg(not(target_family = "wasm"))]
    let _ = (name, delta);
}
