//! Generated Rust for the appliance's protocols.
//!
//! The `.proto` files under `proto/appliance/v1/` are the source of truth of the gRPC management
//! API (package `appliance.v1`) and of the cluster-link protocol. Code generation (tonic/prost
//! through protox, no system `protoc`) arrives with the gRPC API; until then this crate only
//! reserves its place in the workspace.
