//! The guest side of the appliance's plugin ABI.
//!
//! Plugin authors depend on this crate and compile to `wasm32-wasip2`. The WIT worlds in
//! `sdk/wit/` are the single source of truth of the ABI; the bindings, the plugin traits and the
//! export macro arrive with the plugin host.
